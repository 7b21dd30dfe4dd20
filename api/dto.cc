#include "api/dto.h"

#include <cstdint>

#include "common/json_reader.h"

namespace epoch::api {
namespace {

constexpr size_t kMaxAgentObjectBytes = 4096;  // isolation, enforcement

}  // namespace

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
