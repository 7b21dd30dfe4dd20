// JsonReader: reads the members of one JSON object received from outside (an API
// request body, an agent's report), one call per member. An absent member (and, unless
// said otherwise, a null one) leaves the output as it is; a member of the wrong type is
// kInvalidArgument naming it, "<path>.<member>: must be ...", e.g.
// "reports[0].exit_code: must be an integer or null". Nothing is substituted for a
// malformed member.
//
//   JsonReader r(body, "reports[0]");
//   RETURN_IF_ERROR(r.Int("exit_code", &report.exit_code));
//
// Field lists (common/fields.h) decode whole structs whose members are all data; this
// reader is for bodies whose members each need a check or a conversion of their own.
//
// Thread-safety: a reader is used by one thread; it refers to `object` and does not copy.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/json.h"
#include "common/status.h"

namespace epoch {

class JsonReader {
 public:
  // `path` names `object` in errors ("" for a body: members are named bare).
  JsonReader(const Json& object, std::string path = "");

  // kInvalidArgument "<path>.<member>: <must>".
  Status Fail(std::string_view member, std::string_view must) const;
  // The member, or null when absent (or null, with null_is_absent).
  const Json* Find(std::string_view member, bool null_is_absent = true) const;

  Status String(std::string_view member, std::string* out) const;
  Status String(std::string_view member, std::optional<std::string>* out) const;
  // An integer that fits in 32 bits.
  Status Int(std::string_view member, std::optional<int>* out) const;
  Status Int64(std::string_view member, int64_t* out) const;
  // A non-negative integer.
  Status Count(std::string_view member, std::optional<int64_t>* out) const;
  Status Unsigned(std::string_view member, uint64_t* out) const;
  Status Bool(std::string_view member, std::optional<bool>* out) const;
  Status Object(std::string_view member, Json* out) const;
  // An object of at most `max_bytes` serialised; null is refused, not absent.
  Status SmallObject(std::string_view member, size_t max_bytes, Json* out) const;
  Status Array(std::string_view member, Json* out) const;
  Status ArrayOfObjects(std::string_view member, Json* out) const;
  // Appends each string to *out.
  Status Strings(std::string_view member, std::vector<std::string>* out) const;

 private:
  const Json& j_;
  std::string path_;
};

}  // namespace epoch
