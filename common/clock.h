// Clock: the only source of "now" in Epoch. The engine never reads the wall clock
// itself; time arrives in commands, taken from an injected Clock, so replay is
// deterministic and tests drive time by hand (ManualClock) instead of sleeping.
//
// Thread-safety: SystemClock is stateless; ManualClock is internally synchronised.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <string_view>

#include "common/mutex.h"
#include "common/status.h"

namespace epoch {

using TimePoint = std::chrono::time_point<std::chrono::system_clock, std::chrono::microseconds>;
using Micros = std::chrono::microseconds;

class Clock {
 public:
  virtual ~Clock() = default;
  virtual TimePoint Now() const = 0;

  // Timers on this clock. A thread that waits for a time on it waits for the real
  // time to pass when the clock follows the real one, and for the clock to be moved
  // when it does not (Manual()): it subscribes, and each move calls it back to look
  // again. A SystemClock never moves by hand: Subscribe is a no-op.
  virtual bool Manual() const { return false; }
  // Calls `on_move` after every move of the clock, until Unsubscribe(id) returns
  // (after which it is never called again). Returns the id.
  virtual uint64_t Subscribe(std::function<void()> on_move) const {
    (void)on_move;
    return 0;
  }
  virtual void Unsubscribe(uint64_t id) const { (void)id; }
};

class SystemClock final : public Clock {
 public:
  TimePoint Now() const override;
};

// Time that moves only when a test says so: Advance and Set wake every subscriber,
// so a thread waiting for a time on this clock (the engine's ticks, retry timers,
// leases) runs as soon as the test moves past it, without the test sleeping.
class ManualClock final : public Clock {
 public:
  explicit ManualClock(TimePoint start) : now_us_(start.time_since_epoch().count()) {}
  TimePoint Now() const override { return TimePoint(Micros(now_us_.load())); }
  void Advance(Micros d) {
    now_us_ += d.count();
    Moved();
  }
  void Set(TimePoint t) {
    now_us_ = t.time_since_epoch().count();
    Moved();
  }

  bool Manual() const override { return true; }
  uint64_t Subscribe(std::function<void()> on_move) const override;
  void Unsubscribe(uint64_t id) const override;

 private:
  void Moved();

  std::atomic<int64_t> now_us_;
  // Held while callbacks run, so that none runs after Unsubscribe returns.
  mutable Mutex subscribers_mu_;
  mutable uint64_t next_id_ GUARDED_BY(subscribers_mu_) = 1;
  mutable std::map<uint64_t, std::function<void()>> subscribers_ GUARDED_BY(subscribers_mu_);
};

// "2026-11-28T13:38:40.123456Z" (RFC 3339, UTC, microseconds).
std::string FormatTime(TimePoint t);
// Accepts RFC 3339 in UTC ('Z' or +00:00) with 0-9 fractional digits.
Result<TimePoint> ParseTime(std::string_view s);

inline int64_t ToMicros(TimePoint t) { return t.time_since_epoch().count(); }
inline TimePoint FromMicros(int64_t us) { return TimePoint(Micros(us)); }

}  // namespace epoch
