// AttemptReport: what an agent says about one ended attempt (or one gang
// worker), typed at the edge of the container protocol.
//
// The API parses each element of a poll's "reports" with ParseAttemptReport;
// a field of the wrong type refuses the whole poll (400 naming the field) and
// nothing is written. The decider sees only this struct, never the agent's
// JSON. Fields that are the agent's own account (usage, metrics, outputs) stay
// JSON, but of the shape the log records (object, object, array of objects).
//
// Wire form (executors/agent/agent.h), every field but the first two optional:
//   {"attempt_id": "<run>/<step>/<n>[/<rank>]",
//    "state": "succeeded" | "failed" | "timed_out" | "cancelled",
//    "exit_code": int|null, "signal": int|null, "reason": string|null,
//    "usage": {...}, "metrics": {...}, "outputs": [{"name", ...}, ...],
//    "log_bytes": uint, "log_dropped_bytes": uint, "log_truncated": bool,
//    "outputs_error": string, "metrics_error": string, "outputs_truncated": bool,
//    "started_at": string, "finished_at": string}
// Unknown fields are ignored (a newer agent may say more).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/json.h"
#include "common/status.h"

namespace epoch::engine {

enum class ReportedState { kSucceeded, kFailed, kTimedOut, kCancelled };
std::string_view Name(ReportedState s);

struct ReportedLog {
  int64_t bytes = 0;
  bool truncated = false;
  std::optional<int64_t> dropped_bytes;
};

struct AttemptReport {
  std::string attempt_id;
  ReportedState state = ReportedState::kFailed;
  std::optional<int> exit_code;
  std::optional<int> signal;
  std::optional<std::string> reason;
  Json usage = Json::object();
  Json metrics = Json::object();
  Json outputs = Json::array();
  std::optional<ReportedLog> log;
  std::optional<std::string> outputs_error;
  std::optional<std::string> metrics_error;
};

// A batch of live metric points of one attempt (or gang worker) and the checkpoints it
// declared, typed at the edge like a report. Wire form, in a poll's "metrics":
//   {"attempt_id", "from": uint (the first point's number in the series),
//    "points": [{"<name>": number, ...}, ...], "skipped": uint, "dropped": uint (the
//    agent's totals so far), "truncated": bool,
//    "checkpoints": [{"file", "sha256", "size": uint, "epoch": uint|null}]}
// A point is an object of finite numbers named by 1 to 128 bytes; a checkpoint's file
// is a plain file name in the step's checkpoint dir.
struct ReportedCheckpoint {
  std::string file;
  std::string sha256;
  int64_t size = 0;
  std::optional<int64_t> epoch;
};

struct MetricsBatch {
  std::string attempt_id;
  int64_t from = 0;
  Json points = Json::array();
  int64_t skipped = 0;
  int64_t dropped = 0;
  bool truncated = false;
  std::vector<ReportedCheckpoint> checkpoints;
};

inline constexpr size_t kMaxMetricNameBytes = 128;

Result<MetricsBatch> ParseMetricsBatch(const Json& j, const std::string& path);
// Every element of a poll's "metrics" (null or absent: none).
Result<std::vector<MetricsBatch>> ParseMetricsBatches(const Json& batches);

// Parses one report; `path` names it in errors ("reports[2]"). kInvalidArgument
// "<path>.<field>: <what it must be>" for a missing or mistyped field.
Result<AttemptReport> ParseAttemptReport(const Json& j, const std::string& path);
// Every element of a poll's "reports" (null or absent: none).
Result<std::vector<AttemptReport>> ParseAttemptReports(const Json& reports);

// The wire form back (tests, benchmarks, tools that replay an agent).
Json AttemptReportToJson(const AttemptReport& r);

}  // namespace epoch::engine
