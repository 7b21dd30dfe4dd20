#include "common/clock.h"

#include <cstdio>
#include <ctime>

namespace epoch {

TimePoint SystemClock::Now() const {
  return std::chrono::time_point_cast<Micros>(std::chrono::system_clock::now());
}

std::string FormatTime(TimePoint t) {
  int64_t us = ToMicros(t);
  // Floor division without overflow, even at INT64_MIN.
  int64_t secs = us / 1000000;
  int64_t frac = us % 1000000;
  if (frac < 0) {
    frac += 1000000;
    --secs;
  }
  time_t tt = static_cast<time_t>(secs);
  struct tm tm_utc {};
  char buf[96];
  if (gmtime_r(&tt, &tm_utc) == nullptr) {  // a year that does not fit an int
    std::snprintf(buf, sizeof(buf), "@%lld.%06lldZ", static_cast<long long>(secs),
                  static_cast<long long>(frac));
    return buf;
  }
  std::snprintf(buf, sizeof(buf), "%04lld-%02d-%02dT%02d:%02d:%02d.%06lldZ",
                static_cast<long long>(tm_utc.tm_year) + 1900, tm_utc.tm_mon + 1, tm_utc.tm_mday,
                tm_utc.tm_hour, tm_utc.tm_min, tm_utc.tm_sec, static_cast<long long>(frac));
  return buf;
}

Result<TimePoint> ParseTime(std::string_view s) {
  auto bad = [&] { return InvalidArgument("invalid RFC 3339 time '" + std::string(s) + "'"); };
  if (s.size() < 20) return bad();
  int y, mo, d, h, mi, se;
  std::string str(s);
  if (std::sscanf(str.c_str(), "%4d-%2d-%2dT%2d:%2d:%2d", &y, &mo, &d, &h, &mi, &se) != 6) {
    return bad();
  }
  if (mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || se > 60) return bad();
  size_t i = 19;
  int64_t frac_us = 0;
  if (i < s.size() && s[i] == '.') {
    ++i;
    int digits = 0;
    while (i < s.size() && s[i] >= '0' && s[i] <= '9') {
      if (digits < 6) frac_us = frac_us * 10 + (s[i] - '0');
      ++digits;
      ++i;
    }
    if (digits == 0) return bad();
    for (int k = digits; k < 6; ++k) frac_us *= 10;
  }
  std::string_view tz = s.substr(i);
  if (tz != "Z" && tz != "z" && tz != "+00:00") return bad();
  struct tm tm_utc = {};
  tm_utc.tm_year = y - 1900;
  tm_utc.tm_mon = mo - 1;
  tm_utc.tm_mday = d;
  tm_utc.tm_hour = h;
  tm_utc.tm_min = mi;
  tm_utc.tm_sec = se;
  time_t secs = timegm(&tm_utc);
  return FromMicros(static_cast<int64_t>(secs) * 1000000 + frac_us);
}

uint64_t ManualClock::Subscribe(std::function<void()> on_move) const {
  MutexLock lock(&subscribers_mu_);
  uint64_t id = next_id_++;
  subscribers_[id] = std::move(on_move);
  return id;
}

void ManualClock::Unsubscribe(uint64_t id) const {
  MutexLock lock(&subscribers_mu_);
  subscribers_.erase(id);
}

void ManualClock::Moved() {
  MutexLock lock(&subscribers_mu_);
  for (const auto& [id, f] : subscribers_) f();
}

}  // namespace epoch
