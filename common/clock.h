// Clock: the only source of "now" in Epoch. The engine never reads the wall clock
// itself; time arrives in commands, taken from an injected Clock, so replay is
// deterministic and tests drive time by hand (ManualClock) instead of sleeping.
//
// Thread-safety: SystemClock is stateless; ManualClock is internally synchronised.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

#include "common/status.h"

namespace epoch {

using TimePoint = std::chrono::time_point<std::chrono::system_clock, std::chrono::microseconds>;
using Micros = std::chrono::microseconds;

class Clock {
 public:
  virtual ~Clock() = default;
  virtual TimePoint Now() const = 0;
};

class SystemClock final : public Clock {
 public:
  TimePoint Now() const override;
};

class ManualClock final : public Clock {
 public:
  explicit ManualClock(TimePoint start) : now_us_(start.time_since_epoch().count()) {}
  TimePoint Now() const override { return TimePoint(Micros(now_us_.load())); }
  void Advance(Micros d) { now_us_ += d.count(); }
  void Set(TimePoint t) { now_us_ = t.time_since_epoch().count(); }

 private:
  std::atomic<int64_t> now_us_;
};

// "2026-11-28T13:38:40.123456Z" (RFC 3339, UTC, microseconds).
std::string FormatTime(TimePoint t);
// Accepts RFC 3339 in UTC ('Z' or +00:00) with 0-9 fractional digits.
Result<TimePoint> ParseTime(std::string_view s);

inline int64_t ToMicros(TimePoint t) { return t.time_since_epoch().count(); }
inline TimePoint FromMicros(int64_t us) { return TimePoint(Micros(us)); }

}  // namespace epoch
