// JSON helpers around nlohmann::json: parsing that returns Result instead of
// throwing, and typed field access that names the JSON path on error.
//
// Thread-safety: free functions over values.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "common/status.h"

namespace epoch {

using Json = nlohmann::json;

// Parses text; errors are kInvalidArgument "malformed JSON at byte N: ...".
// max_depth bounds nesting (a hostile body cannot blow the stack).
Result<Json> ParseJson(std::string_view text, int max_depth = 64);

// Compact, key-sorted serialisation (nlohmann's object is a sorted map), used
// wherever bytes are hashed: the same value always gives the same bytes.
std::string CanonicalDump(const Json& j);

// "a.b[2].c" path helpers for error messages.
std::string JoinPath(std::string_view parent, std::string_view key);
std::string IndexPath(std::string_view parent, size_t index);

}  // namespace epoch
