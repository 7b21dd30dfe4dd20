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
    return InvalidArgument(std::string("malformed JSON: ") + e.what());
  }
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
