#include "engine/report.h"

#include <cmath>

#include "common/json_reader.h"

namespace epoch::engine {

std::string_view Name(ReportedState s) {
  switch (s) {
    case ReportedState::kSucceeded: return "succeeded";
    case ReportedState::kFailed: return "failed";
    case ReportedState::kTimedOut: return "timed_out";
    case ReportedState::kCancelled: return "cancelled";
  }
  return "?";
}

Result<AttemptReport> ParseAttemptReport(const Json& j, const std::string& path) {
  if (!j.is_object()) return InvalidArgument(path + ": must be an object");
  JsonReader r(j, path);
  AttemptReport out;
  std::optional<std::string> id, state;
  RETURN_IF_ERROR(r.String("attempt_id", &id));
  if (!id || id->empty()) return r.Fail("attempt_id", "required (a non-empty string)");
  out.attempt_id = std::move(*id);
  RETURN_IF_ERROR(r.String("state", &state));
  if (!state) return r.Fail("state", "required: succeeded, failed, timed_out or cancelled");
  if (*state == "succeeded") {
    out.state = ReportedState::kSucceeded;
  } else if (*state == "failed") {
    out.state = ReportedState::kFailed;
  } else if (*state == "timed_out") {
    out.state = ReportedState::kTimedOut;
  } else if (*state == "cancelled") {
    out.state = ReportedState::kCancelled;
  } else {
    return r.Fail("state", "must be succeeded, failed, timed_out or cancelled, not '" +
                               state->substr(0, 64) + "'");
  }
  RETURN_IF_ERROR(r.Int("exit_code", &out.exit_code));
  RETURN_IF_ERROR(r.Int("signal", &out.signal));
  RETURN_IF_ERROR(r.String("reason", &out.reason));
  RETURN_IF_ERROR(r.Object("usage", &out.usage));
  RETURN_IF_ERROR(r.Object("metrics", &out.metrics));
  RETURN_IF_ERROR(r.ArrayOfObjects("outputs", &out.outputs));
  std::optional<int64_t> log_bytes, dropped;
  std::optional<bool> truncated, outputs_truncated;
  RETURN_IF_ERROR(r.Count("log_bytes", &log_bytes));
  RETURN_IF_ERROR(r.Count("log_dropped_bytes", &dropped));
  RETURN_IF_ERROR(r.Bool("log_truncated", &truncated));
  if (log_bytes) out.log = ReportedLog{*log_bytes, truncated.value_or(false), dropped};
  RETURN_IF_ERROR(r.String("outputs_error", &out.outputs_error));
  RETURN_IF_ERROR(r.String("metrics_error", &out.metrics_error));
  RETURN_IF_ERROR(r.Bool("outputs_truncated", &outputs_truncated));
  std::optional<std::string> when;
  RETURN_IF_ERROR(r.String("started_at", &when));
  RETURN_IF_ERROR(r.String("finished_at", &when));
  return out;
}

Result<std::vector<AttemptReport>> ParseAttemptReports(const Json& reports) {
  std::vector<AttemptReport> out;
  if (reports.is_null()) return out;
  if (!reports.is_array()) return InvalidArgument("reports: must be an array");
  out.reserve(reports.size());
  for (size_t i = 0; i < reports.size(); ++i) {
    ASSIGN_OR_RETURN(AttemptReport r,
                     ParseAttemptReport(reports[i], "reports[" + std::to_string(i) + "]"));
    out.push_back(std::move(r));
  }
  return out;
}

namespace {

bool IsHex64(const std::string& s) {
  return s.size() == 64 && s.find_first_not_of("0123456789abcdef") == std::string::npos;
}

}  // namespace

Result<MetricsBatch> ParseMetricsBatch(const Json& j, const std::string& path) {
  if (!j.is_object()) return InvalidArgument(path + ": must be an object");
  JsonReader r(j, path);
  MetricsBatch out;
  std::optional<std::string> id;
  RETURN_IF_ERROR(r.String("attempt_id", &id));
  if (!id || id->empty()) return r.Fail("attempt_id", "required (a non-empty string)");
  out.attempt_id = std::move(*id);
  std::optional<int64_t> from, skipped, dropped;
  RETURN_IF_ERROR(r.Count("from", &from));
  if (!from) return r.Fail("from", "required (a non-negative integer)");
  out.from = *from;
  RETURN_IF_ERROR(r.Count("skipped", &skipped));
  RETURN_IF_ERROR(r.Count("dropped", &dropped));
  out.skipped = skipped.value_or(0);
  out.dropped = dropped.value_or(0);
  std::optional<bool> truncated;
  RETURN_IF_ERROR(r.Bool("truncated", &truncated));
  out.truncated = truncated.value_or(false);
  RETURN_IF_ERROR(r.ArrayOfObjects("points", &out.points));
  for (size_t i = 0; i < out.points.size(); ++i) {
    std::string at = "points[" + std::to_string(i) + "]";
    for (const auto& [name, value] : out.points[i].items()) {
      if (name.empty() || name.size() > kMaxMetricNameBytes) {
        return r.Fail(at, "metric names must be 1 to 128 bytes");
      }
      if (!value.is_number() || (value.is_number_float() && !std::isfinite(value.get<double>()))) {
        return r.Fail(at + "." + name, "must be a finite number");
      }
    }
  }
  Json checkpoints;
  RETURN_IF_ERROR(r.ArrayOfObjects("checkpoints", &checkpoints));
  for (size_t i = 0; i < checkpoints.size(); ++i) {
    JsonReader c(checkpoints[i], path + ".checkpoints[" + std::to_string(i) + "]");
    ReportedCheckpoint rc;
    std::optional<int64_t> size;
    RETURN_IF_ERROR(c.String("file", &rc.file));
    RETURN_IF_ERROR(c.String("sha256", &rc.sha256));
    RETURN_IF_ERROR(c.Count("size", &size));
    RETURN_IF_ERROR(c.Count("epoch", &rc.epoch));
    if (rc.file.empty() || rc.file.size() > 255 || rc.file == "." || rc.file == ".." ||
        rc.file.find('/') != std::string::npos || rc.file.find('\0') != std::string::npos) {
      return c.Fail("file", "must be a file name in the checkpoint dir");
    }
    if (!IsHex64(rc.sha256)) return c.Fail("sha256", "must be 64 lowercase hex digits");
    if (!size) return c.Fail("size", "required (a non-negative integer)");
    rc.size = *size;
    out.checkpoints.push_back(std::move(rc));
  }
  return out;
}

Result<std::vector<MetricsBatch>> ParseMetricsBatches(const Json& batches) {
  std::vector<MetricsBatch> out;
  if (batches.is_null()) return out;
  if (!batches.is_array()) return InvalidArgument("metrics: must be an array");
  out.reserve(batches.size());
  for (size_t i = 0; i < batches.size(); ++i) {
    ASSIGN_OR_RETURN(MetricsBatch b,
                     ParseMetricsBatch(batches[i], "metrics[" + std::to_string(i) + "]"));
    out.push_back(std::move(b));
  }
  return out;
}

Json AttemptReportToJson(const AttemptReport& r) {
  Json j{{"attempt_id", r.attempt_id},
         {"state", std::string(Name(r.state))},
         {"exit_code", r.exit_code ? Json(*r.exit_code) : Json(nullptr)},
         {"signal", r.signal ? Json(*r.signal) : Json(nullptr)},
         {"usage", r.usage},
         {"metrics", r.metrics},
         {"outputs", r.outputs}};
  if (r.reason) j["reason"] = *r.reason;
  if (r.log) {
    j["log_bytes"] = r.log->bytes;
    j["log_truncated"] = r.log->truncated;
    if (r.log->dropped_bytes) j["log_dropped_bytes"] = *r.log->dropped_bytes;
  }
  if (r.outputs_error) j["outputs_error"] = *r.outputs_error;
  if (r.metrics_error) j["metrics_error"] = *r.metrics_error;
  return j;
}

}  // namespace epoch::engine
