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

namespace {

// Days from 1970-01-01 to y-m-d of the proleptic Gregorian calendar (m in 1..12; a
// day past the month's end counts on into the next, as timegm does).
int64_t DaysFromCivil(int64_t y, int m, int d) {
  y -= m <= 2;
  const int64_t era = (y >= 0 ? y : y - 399) / 400;
  const int64_t yoe = y - era * 400;
  const int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  const int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + doe - 719468;
}

// "YYYY-MM-DDTHH:MM:SS" with every digit in its place (how FormatTime writes, and
// so every stored event): read without sscanf, which replay would pay per event.
bool CanonicalDateTime(std::string_view s, int* y, int* mo, int* d, int* h, int* mi, int* se) {
  static constexpr char kShape[] = "dddd-dd-ddTdd:dd:dd";
  for (size_t i = 0; i < 19; ++i) {
    if (kShape[i] == 'd' ? (s[i] < '0' || s[i] > '9') : s[i] != kShape[i]) return false;
  }
  auto num = [&](size_t at, size_t len) {
    int v = 0;
    for (size_t i = at; i < at + len; ++i) v = v * 10 + (s[i] - '0');
    return v;
  };
  *y = num(0, 4);
  *mo = num(5, 2);
  *d = num(8, 2);
  *h = num(11, 2);
  *mi = num(14, 2);
  *se = num(17, 2);
  return true;
}

}  // namespace

Result<TimePoint> ParseTime(std::string_view s) {
  auto bad = [&] { return InvalidArgument("invalid RFC 3339 time '" + std::string(s) + "'"); };
  if (s.size() < 20) return bad();
  int y, mo, d, h, mi, se;
  const bool canonical = CanonicalDateTime(s, &y, &mo, &d, &h, &mi, &se);
  if (!canonical) {
    std::string str(s);
    if (std::sscanf(str.c_str(), "%4d-%2d-%2dT%2d:%2d:%2d", &y, &mo, &d, &h, &mi, &se) != 6) {
      return bad();
    }
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
  if (canonical) {
    int64_t secs = DaysFromCivil(y, mo, d) * 86400 + h * 3600 + mi * 60 + se;
    return FromMicros(secs * 1000000 + frac_us);
  }
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
