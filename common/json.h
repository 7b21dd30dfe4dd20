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

// Parses text; errors are kInvalidArgument "malformed JSON: ..." (valid UTF-8, whatever
// the text held).
// max_depth bounds nesting (a hostile body cannot blow the stack).
Result<Json> ParseJson(std::string_view text, int max_depth = 64);

// The length (1-4) of the well-formed UTF-8 sequence starting at s[i], or 0 if none does
// (RFC 3629: no overlong forms, surrogates or code points above U+10FFFF).
size_t Utf8SequenceLength(std::string_view s, size_t i);
// s with every byte that is not part of a well-formed UTF-8 sequence replaced by U+FFFD,
// for messages that quote input: JSON (and so every API error body) must be valid UTF-8.
std::string ValidUtf8(std::string_view s);

// Compact, key-sorted serialisation (nlohmann's object is a sorted map), used
// wherever bytes are hashed: the same value always gives the same bytes.
std::string CanonicalDump(const Json& j);

// "a.b[2].c" path helpers for error messages.
std::string JoinPath(std::string_view parent, std::string_view key);
std::string IndexPath(std::string_view parent, size_t index);

}  // namespace epoch
