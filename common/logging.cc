#include "common/logging.h"

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <string>

namespace epoch {

Status SetupLogging(std::string_view format, std::string_view level, std::string_view name) {
  try {
    auto logger = spdlog::stderr_color_mt(std::string(name));
    if (format == "json") {
      // One object a line; the message is escaped by spdlog's %v? It is not, so
      // callers keep messages free of quotes; structured fields go in the text.
      logger->set_pattern(
          R"({"time":"%Y-%m-%dT%H:%M:%S.%fZ","level":"%l","logger":"%n","thread":%t,"msg":"%v"})",
          spdlog::pattern_time_type::utc);
    } else if (format == "text") {
      logger->set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %n: %v");
    } else {
      return InvalidArgument("unknown log format '" + std::string(format) + "' (text|json)");
    }
    auto lvl = spdlog::level::from_str(std::string(level));
    if (lvl == spdlog::level::off && level != "off") {
      return InvalidArgument("unknown log level '" + std::string(level) + "'");
    }
    logger->set_level(lvl);
    spdlog::set_default_logger(logger);
    spdlog::flush_on(spdlog::level::warn);
  } catch (const spdlog::spdlog_ex& e) {
    return Internal(std::string("logging set-up failed: ") + e.what());
  }
  return Status::Ok();
}

}  // namespace epoch
