#include "common/json_reader.h"

#include <limits>

namespace epoch {

JsonReader::JsonReader(const Json& object, std::string path) : j_(object), path_(std::move(path)) {}

Status JsonReader::Fail(std::string_view member, std::string_view must) const {
  std::string where = path_.empty() ? std::string(member) : path_ + "." + std::string(member);
  return InvalidArgument(where + ": " + std::string(must));
}

const Json* JsonReader::Find(std::string_view member, bool null_is_absent) const {
  auto it = j_.find(std::string(member));
  if (it == j_.end() || (null_is_absent && it->is_null())) return nullptr;
  return &*it;
}

Status JsonReader::String(std::string_view member, std::string* out) const {
  const Json* v = Find(member);
  if (!v) return Status::Ok();
  if (!v->is_string()) return Fail(member, "must be a string or null");
  *out = v->get<std::string>();
  return Status::Ok();
}

Status JsonReader::String(std::string_view member, std::optional<std::string>* out) const {
  const Json* v = Find(member);
  if (!v) return Status::Ok();
  if (!v->is_string()) return Fail(member, "must be a string or null");
  *out = v->get<std::string>();
  return Status::Ok();
}

Status JsonReader::Int(std::string_view member, std::optional<int>* out) const {
  const Json* v = Find(member);
  if (!v) return Status::Ok();
  if (!v->is_number_integer()) return Fail(member, "must be an integer or null");
  if (v->is_number_unsigned() && v->get<uint64_t>() > uint64_t{std::numeric_limits<int>::max()}) {
    return Fail(member, "must fit in 32 bits");
  }
  int64_t n = v->get<int64_t>();
  if (n < std::numeric_limits<int>::min() || n > std::numeric_limits<int>::max()) {
    return Fail(member, "must fit in 32 bits");
  }
  *out = static_cast<int>(n);
  return Status::Ok();
}

Status JsonReader::Int64(std::string_view member, int64_t* out) const {
  const Json* v = Find(member);
  if (!v) return Status::Ok();
  if (!v->is_number_integer() ||
      (v->is_number_unsigned() &&
       v->get<uint64_t>() > uint64_t{std::numeric_limits<int64_t>::max()})) {
    return Fail(member, "must be an integer or null");
  }
  *out = v->get<int64_t>();
  return Status::Ok();
}

Status JsonReader::Count(std::string_view member, std::optional<int64_t>* out) const {
  const Json* v = Find(member);
  if (!v) return Status::Ok();
  bool ok = v->is_number_unsigned()
                ? v->get<uint64_t>() <= uint64_t{std::numeric_limits<int64_t>::max()}
                : v->is_number_integer() && v->get<int64_t>() >= 0;
  if (!ok) return Fail(member, "must be a non-negative integer");
  *out = v->get<int64_t>();
  return Status::Ok();
}

Status JsonReader::Unsigned(std::string_view member, uint64_t* out) const {
  const Json* v = Find(member);
  if (!v) return Status::Ok();
  if (!v->is_number_unsigned()) return Fail(member, "must be a non-negative integer");
  *out = v->get<uint64_t>();
  return Status::Ok();
}

Status JsonReader::Bool(std::string_view member, std::optional<bool>* out) const {
  const Json* v = Find(member);
  if (!v) return Status::Ok();
  if (!v->is_boolean()) return Fail(member, "must be a boolean");
  *out = v->get<bool>();
  return Status::Ok();
}

Status JsonReader::Object(std::string_view member, Json* out) const {
  const Json* v = Find(member);
  if (!v) return Status::Ok();
  if (!v->is_object()) return Fail(member, "must be an object");
  *out = *v;
  return Status::Ok();
}

Status JsonReader::SmallObject(std::string_view member, size_t max_bytes, Json* out) const {
  const Json* v = Find(member, /*null_is_absent=*/false);
  if (!v) return Status::Ok();
  if (!v->is_object() || v->dump().size() > max_bytes) {
    std::string most = max_bytes % 1024 == 0 ? std::to_string(max_bytes / 1024) + " KiB"
                                             : std::to_string(max_bytes) + " bytes";
    return Fail(member, "must be an object (at most " + most + ")");
  }
  *out = *v;
  return Status::Ok();
}

Status JsonReader::Array(std::string_view member, Json* out) const {
  const Json* v = Find(member);
  if (!v) return Status::Ok();
  if (!v->is_array()) return Fail(member, "must be an array");
  *out = *v;
  return Status::Ok();
}

Status JsonReader::ArrayOfObjects(std::string_view member, Json* out) const {
  const Json* v = Find(member);
  if (!v) return Status::Ok();
  if (!v->is_array()) return Fail(member, "must be an array of objects");
  for (size_t i = 0; i < v->size(); ++i) {
    if (!(*v)[i].is_object()) {
      return Fail(std::string(member) + "[" + std::to_string(i) + "]", "must be an object");
    }
  }
  *out = *v;
  return Status::Ok();
}

Status JsonReader::Strings(std::string_view member, std::vector<std::string>* out) const {
  const Json* v = Find(member);
  if (!v) return Status::Ok();
  if (!v->is_array()) return Fail(member, "must be an array of strings");
  for (size_t i = 0; i < v->size(); ++i) {
    if (!(*v)[i].is_string()) {
      return Fail(std::string(member) + "[" + std::to_string(i) + "]", "must be a string");
    }
    out->push_back((*v)[i].get<std::string>());
  }
  return Status::Ok();
}

}  // namespace epoch
