#include "api/dto.h"

#include <cstdint>
#include <set>
#include <string>

#include "common/json_reader.h"

namespace epoch::api {
namespace {

constexpr size_t kMaxAgentObjectBytes = 4096;  // isolation, enforcement

}  // namespace

Result<engine::SubmitRun> ParseSubmitBody(const Json& b) {
  if (!b.is_object()) return InvalidArgument("body: must be a JSON object");
  static const std::set<std::string> kFields{"workflow", "version",    "params",
                                             "labels",   "definition", "priority"};
  for (const auto& [k, v] : b.items()) {
    if (!kFields.count(k)) return InvalidArgument(k + ": unknown field");
  }
  engine::SubmitRun cmd;
  if (b.contains("definition")) {
    if (!b["definition"].is_object()) return InvalidArgument("definition: must be an object");
    cmd.definition = b["definition"];
  } else if (!b.contains("workflow") || !b["workflow"].is_string()) {
    return InvalidArgument("workflow: required string (or give a definition)");
  } else {
    cmd.workflow = b["workflow"];
  }
  if (b.contains("version")) {
    if (!b["version"].is_number_integer() || b["version"].get<int64_t>() < 1) {
      return InvalidArgument("version: must be an integer >= 1");
    }
    cmd.version = b["version"];
  }
  if (b.contains("params")) {
    if (!b["params"].is_object()) return InvalidArgument("params: must be an object");
    cmd.params = b["params"];
  }
  if (b.contains("labels")) {
    if (!b["labels"].is_object()) return InvalidArgument("labels: must be an object");
    for (const auto& [k, v] : b["labels"].items()) {
      if (!v.is_string()) return InvalidArgument("labels." + k + ": must be a string");
    }
    cmd.labels = b["labels"];
  }
  if (b.contains("priority")) {
    if (!b["priority"].is_number_integer() || b["priority"].get<int64_t>() < -1000 ||
        b["priority"].get<int64_t>() > 1000) {
      return InvalidArgument("priority: must be an integer in [-1000, 1000]");
    }
    cmd.priority = b["priority"];
  }
  return cmd;
}

Result<engine::InvalidateCache> ParseInvalidateBody(const Json& b) {
  if (!b.is_object()) return InvalidArgument("body: must be a JSON object");
  engine::InvalidateCache cmd;
  for (const auto& [k, v] : b.items()) {
    std::string* field = k == "key"        ? &cmd.key
                         : k == "workflow" ? &cmd.workflow
                         : k == "step"     ? &cmd.step
                                           : nullptr;
    if (!field) return InvalidArgument(k + ": unknown field (expected key, workflow, step)");
    if (!v.is_string() || v.get_ref<const std::string&>().empty()) {
      return InvalidArgument(k + ": must be a non-empty string");
    }
    *field = v.get<std::string>();
  }
  return cmd;
}

Result<engine::RegisterContainer> ParseRegisterBody(const std::string& container, const Json& b) {
  if (!b.is_object()) return InvalidArgument("body: must be a JSON object");
  engine::RegisterContainer cmd;
  cmd.container = container;
  JsonReader r(b);
  RETURN_IF_ERROR(r.String("backend", &cmd.backend));
  RETURN_IF_ERROR(r.String("handle", &cmd.handle));
  RETURN_IF_ERROR(r.String("host", &cmd.host));
  RETURN_IF_ERROR(r.Int64("pid", &cmd.pid));
  RETURN_IF_ERROR(r.Int64("cpu_millis", &cmd.cpu_millis));
  RETURN_IF_ERROR(r.Int64("memory_bytes", &cmd.memory_bytes));
  RETURN_IF_ERROR(r.Array("gpus", &cmd.gpus));
  RETURN_IF_ERROR(r.Object("cuda", &cmd.cuda));
  RETURN_IF_ERROR(r.SmallObject("isolation", kMaxAgentObjectBytes, &cmd.isolation));
  RETURN_IF_ERROR(r.SmallObject("enforcement", kMaxAgentObjectBytes, &cmd.enforcement));
  RETURN_IF_ERROR(r.Unsigned("epoch_seen", &cmd.epoch_seen));
  RETURN_IF_ERROR(r.Strings("running", &cmd.running));
  if (cmd.cpu_millis <= 0 || cmd.memory_bytes <= 0) {
    return InvalidArgument("cpu_millis and memory_bytes must be positive");
  }
  return cmd;
}

Result<engine::PollContainer> ParsePollBody(const std::string& container, const Json& b) {
  if (!b.is_object()) return InvalidArgument("body: must be a JSON object");
  engine::PollContainer cmd;
  cmd.container = container;
  JsonReader r(b);
  RETURN_IF_ERROR(r.Unsigned("epoch_seen", &cmd.epoch_seen));
  if (auto it = b.find("reports"); it != b.end()) {
    ASSIGN_OR_RETURN(cmd.reports, engine::ParseAttemptReports(*it));
  }
  RETURN_IF_ERROR(r.Strings("running", &cmd.running));
  if (auto it = b.find("metrics"); it != b.end()) {
    ASSIGN_OR_RETURN(cmd.metrics, engine::ParseMetricsBatches(*it));
  }
  return cmd;
}

}  // namespace epoch::api
