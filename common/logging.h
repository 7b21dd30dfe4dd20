// Logging set-up for Epoch's binaries (spdlog). Call once from main.
// format "text" (human-readable) or "json" (one JSON object a line);
// level one of trace, debug, info, warn, error.
#pragma once

#include <string_view>

#include "common/status.h"

namespace epoch {

Status SetupLogging(std::string_view format, std::string_view level, std::string_view name);

}  // namespace epoch
