#include "common/logging.h"

#include <nlohmann/json.hpp>
#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <string>

#include "common/clock.h"

namespace epoch {

namespace {

// One JSON object a line: {"time","level","logger","thread","msg"}, the message
// escaped properly (a pattern string cannot escape quotes in %v).
class JsonFormatter final : public spdlog::formatter {
 public:
  void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override {
    auto us = std::chrono::duration_cast<std::chrono::microseconds>(msg.time.time_since_epoch());
    nlohmann::json j{{"time", FormatTime(FromMicros(us.count()))},
                     {"level", std::string(spdlog::level::to_string_view(msg.level).data(),
                                           spdlog::level::to_string_view(msg.level).size())},
                     {"logger", std::string(msg.logger_name.data(), msg.logger_name.size())},
                     {"thread", msg.thread_id},
                     {"msg", std::string(msg.payload.data(), msg.payload.size())}};
    std::string line = j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    line += '\n';
    dest.append(line.data(), line.data() + line.size());
  }
  std::unique_ptr<spdlog::formatter> clone() const override {
    return std::make_unique<JsonFormatter>();
  }
};

}  // namespace

Status SetupLogging(std::string_view format, std::string_view level, std::string_view name) {
  try {
    auto logger = spdlog::stderr_color_mt(std::string(name));
    if (format == "json") {
      logger->set_formatter(std::make_unique<JsonFormatter>());
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
