#include "api/dto.h"

#include <cstdint>

namespace epoch::api {
namespace {

constexpr size_t kMaxAgentObjectBytes = 4096;  // isolation, enforcement

Status StringField(const Json& b, const char* key, std::string* out) {
  auto it = b.find(key);
  if (it == b.end() || it->is_null()) return Status::Ok();
  if (!it->is_string()) return InvalidArgument(std::string(key) + ": must be a string");
  *out = it->get<std::string>();
  return Status::Ok();
}

Status IntField(const Json& b, const char* key, int64_t* out) {
  auto it = b.find(key);
  if (it == b.end() || it->is_null()) return Status::Ok();
  if (!it->is_number_integer() ||
      (it->is_number_unsigned() && it->get<uint64_t>() > uint64_t{INT64_MAX})) {
    return InvalidArgument(std::string(key) + ": must be an integer");
  }
  *out = it->get<int64_t>();
  return Status::Ok();
}

Status EpochField(const Json& b, uint64_t* out) {
  auto it = b.find("epoch_seen");
  if (it == b.end() || it->is_null()) return Status::Ok();
  if (!it->is_number_unsigned()) {
    return InvalidArgument("epoch_seen: must be a non-negative integer");
  }
  *out = it->get<uint64_t>();
  return Status::Ok();
}

Status Strings(const Json& b, const char* key, std::vector<std::string>* out) {
  auto it = b.find(key);
  if (it == b.end() || it->is_null()) return Status::Ok();
  if (!it->is_array()) return InvalidArgument(std::string(key) + ": must be an array of strings");
  for (size_t i = 0; i < it->size(); ++i) {
    if (!(*it)[i].is_string()) {
      return InvalidArgument(std::string(key) + "[" + std::to_string(i) + "]: must be a string");
    }
    out->push_back((*it)[i].get<std::string>());
  }
  return Status::Ok();
}

Status SmallObject(const Json& b, const char* key, Json* out) {
  auto it = b.find(key);
  if (it == b.end()) return Status::Ok();
  if (!it->is_object() || it->dump().size() > kMaxAgentObjectBytes) {
    return InvalidArgument(std::string(key) + ": must be an object (at most 4 KiB)");
  }
  *out = *it;
  return Status::Ok();
}

Status Kind(const Json& b, const char* key, bool (Json::*is)() const, const char* what, Json* out) {
  auto it = b.find(key);
  if (it == b.end() || it->is_null()) return Status::Ok();
  if (!((*it).*is)()) return InvalidArgument(std::string(key) + ": must be " + what);
  *out = *it;
  return Status::Ok();
}

}  // namespace

Result<engine::RegisterContainer> ParseRegisterBody(const std::string& container, const Json& b) {
  if (!b.is_object()) return InvalidArgument("body: must be a JSON object");
  engine::RegisterContainer cmd;
  cmd.container = container;
  RETURN_IF_ERROR(StringField(b, "backend", &cmd.backend));
  RETURN_IF_ERROR(StringField(b, "handle", &cmd.handle));
  RETURN_IF_ERROR(StringField(b, "host", &cmd.host));
  RETURN_IF_ERROR(IntField(b, "pid", &cmd.pid));
  RETURN_IF_ERROR(IntField(b, "cpu_millis", &cmd.cpu_millis));
  RETURN_IF_ERROR(IntField(b, "memory_bytes", &cmd.memory_bytes));
  RETURN_IF_ERROR(Kind(b, "gpus", &Json::is_array, "an array", &cmd.gpus));
  RETURN_IF_ERROR(Kind(b, "cuda", &Json::is_object, "an object", &cmd.cuda));
  RETURN_IF_ERROR(SmallObject(b, "isolation", &cmd.isolation));
  RETURN_IF_ERROR(SmallObject(b, "enforcement", &cmd.enforcement));
  RETURN_IF_ERROR(EpochField(b, &cmd.epoch_seen));
  RETURN_IF_ERROR(Strings(b, "running", &cmd.running));
  if (cmd.cpu_millis <= 0 || cmd.memory_bytes <= 0) {
    return InvalidArgument("cpu_millis and memory_bytes must be positive");
  }
  return cmd;
}

Result<engine::PollContainer> ParsePollBody(const std::string& container, const Json& b) {
  if (!b.is_object()) return InvalidArgument("body: must be a JSON object");
  engine::PollContainer cmd;
  cmd.container = container;
  RETURN_IF_ERROR(EpochField(b, &cmd.epoch_seen));
  if (auto it = b.find("reports"); it != b.end()) {
    ASSIGN_OR_RETURN(cmd.reports, engine::ParseAttemptReports(*it));
  }
  RETURN_IF_ERROR(Strings(b, "running", &cmd.running));
  return cmd;
}

}  // namespace epoch::api
