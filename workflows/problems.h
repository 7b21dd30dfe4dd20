// Internal to workflows/: what the definition and sweep parsers share to report
// problems as "<json path>: <reason>" and to check fields. Not part of the API.
#pragma once

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/json.h"
#include "common/status.h"

namespace epoch::workflows::internal {

// Collects problems into a list: its own, or one the caller passed (its earlier
// entries are kept and not counted).
class Problems {
 public:
  Problems() : out_(&own_) {}
  explicit Problems(std::vector<std::string>* out) : out_(out), start_(out->size()) {}
  Problems(const Problems&) = delete;
  Problems& operator=(const Problems&) = delete;

  void Add(std::string_view path, std::string_view reason) {
    out_->push_back(std::string(path) + ": " + std::string(reason));
  }
  // A Status from a common/ parser: its message is the reason.
  void Add(std::string_view path, const Status& st) { Add(path, st.message()); }
  bool empty() const { return out_->size() == start_; }
  size_t size() const { return out_->size() - start_; }
  // The list, for a parser that appends to it directly (ParseSweep).
  std::vector<std::string>* list() { return out_; }
  std::vector<std::string> Take() { return std::move(*out_); }

 private:
  std::vector<std::string> own_;
  std::vector<std::string>* out_;
  size_t start_ = 0;
};

inline std::string Quote(std::string_view s) { return "'" + std::string(s) + "'"; }

// Reports every key of obj not in `known` as an unknown field.
inline void CheckKnownFields(const Json& obj, std::initializer_list<std::string_view> known,
                             std::string_view path, Problems* p) {
  for (auto it = obj.begin(); it != obj.end(); ++it) {
    if (std::find(known.begin(), known.end(), it.key()) == known.end()) {
      p->Add(JoinPath(path, it.key()), "unknown field");
    }
  }
}

// A workflow param name: 1-63 of A-Z a-z 0-9 '_' '-', not starting with a digit or '-'.
inline bool IsParamName(std::string_view s) {
  if (s.empty() || s.size() > 63) return false;
  auto alpha = [](char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; };
  if (!alpha(s.front())) return false;
  for (char c : s) {
    if (!alpha(c) && !(c >= '0' && c <= '9') && c != '-') return false;
  }
  return true;
}

// v as an integer in [lo, hi], or nullopt (not an integer, or out of range).
inline std::optional<int64_t> IntegerIn(const Json& v, int64_t lo, int64_t hi) {
  if (!v.is_number_integer()) return std::nullopt;
  if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(hi)) return std::nullopt;
  int64_t n = v.get<int64_t>();
  if (n < lo || n > hi) return std::nullopt;
  return n;
}

}  // namespace epoch::workflows::internal
