#include "common/json.h"

namespace epoch {

namespace {
// Depth check done with the SAX-style callback parser.
}  // namespace

Result<Json> ParseJson(std::string_view text, int max_depth) {
  int depth = 0;
  bool too_deep = false;
  auto cb = [&](int d, Json::parse_event_t event, Json&) {
    (void)d;
    if (event == Json::parse_event_t::object_start || event == Json::parse_event_t::array_start) {
      if (++depth > max_depth) too_deep = true;
    } else if (event == Json::parse_event_t::object_end ||
               event == Json::parse_event_t::array_end) {
      --depth;
    }
    return !too_deep;
  };
  try {
    Json j = Json::parse(text.begin(), text.end(), cb, /*allow_exceptions=*/true);
    if (too_deep) {
      return InvalidArgument("JSON nested deeper than " + std::to_string(max_depth) + " levels");
    }
    return j;
  } catch (const Json::exception& e) {
    if (too_deep) {
      return InvalidArgument("JSON nested deeper than " + std::to_string(max_depth) + " levels");
    }
    // nlohmann quotes the bytes it stopped at ("last read: '...'"), which need not be UTF-8.
    return InvalidArgument("malformed JSON: " + ValidUtf8(e.what()));
  }
}

size_t Utf8SequenceLength(std::string_view s, size_t i) {
  if (i >= s.size()) return 0;
  auto at = [&](size_t k) { return i + k < s.size() ? static_cast<unsigned char>(s[i + k]) : 0; };
  const unsigned char b = at(0);
  if (b < 0x80) return 1;
  // The length from the lead byte, and the range its second byte must be in.
  size_t len = 0;
  unsigned char lo = 0x80, hi = 0xBF;
  if (b >= 0xC2 && b <= 0xDF) {
    len = 2;
  } else if (b >= 0xE0 && b <= 0xEF) {
    len = 3;
    if (b == 0xE0) lo = 0xA0;  // overlong
    if (b == 0xED) hi = 0x9F;  // surrogates
  } else if (b >= 0xF0 && b <= 0xF4) {
    len = 4;
    if (b == 0xF0) lo = 0x90;  // overlong
    if (b == 0xF4) hi = 0x8F;  // above U+10FFFF
  } else {
    return 0;
  }
  if (i + len > s.size() || at(1) < lo || at(1) > hi) return 0;
  for (size_t k = 2; k < len; ++k) {
    if (at(k) < 0x80 || at(k) > 0xBF) return 0;
  }
  return len;
}

std::string ValidUtf8(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    if (size_t len = Utf8SequenceLength(s, i)) {
      out.append(s.substr(i, len));
      i += len;
    } else {
      out += "\xEF\xBF\xBD";  // U+FFFD for this one byte
      ++i;
    }
  }
  return out;
}

std::string CanonicalDump(const Json& j) {
  return j.dump(-1, ' ', false, Json::error_handler_t::replace);
}

std::string JoinPath(std::string_view parent, std::string_view key) {
  if (parent.empty()) return std::string(key);
  std::string s(parent);
  s += '.';
  s += key;
  return s;
}

std::string IndexPath(std::string_view parent, size_t index) {
  return std::string(parent) + "[" + std::to_string(index) + "]";
}

}  // namespace epoch
