// Units shared by definitions and configuration: durations ("500ms", "2s", "1m",
// "2h", "7d", or a plain number of seconds) and Kubernetes-style quantities
// ("1000m" or "1.5" CPUs as millicores; "128Mi", "2Gi", "1G", "512" bytes).
//
// Thread-safety: pure functions.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "common/clock.h"
#include "common/status.h"

namespace epoch {

// Durations: one or more <number><unit> terms ("1h30m"); unit ms|s|m|h|d; a bare
// number is seconds. Negative and empty strings are rejected.
Result<Micros> ParseDuration(std::string_view s);
std::string FormatDuration(Micros d);  // "2s", "1m30s", "250ms"

// CPU: "1000m" -> 1000, "1.5" -> 1500, "2" -> 2000 millicores. Must be > 0.
Result<int64_t> ParseCpuMillis(std::string_view s);
// Memory: "128Mi", "2Gi", "1G", "1000k", plain bytes. Must be > 0.
Result<int64_t> ParseBytes(std::string_view s);

}  // namespace epoch
