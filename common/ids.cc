#include "common/ids.h"

#include <sys/random.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>

namespace epoch {

std::string SecureRandomHex(size_t bytes) {
  std::string raw(bytes, '\0');
  size_t got = 0;
  while (got < bytes) {
    ssize_t n = getrandom(raw.data() + got, bytes - got, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      std::fprintf(stderr, "getrandom: %s\n", std::strerror(errno));
      std::abort();
    }
    got += static_cast<size_t>(n);
  }
  static const char* kHex = "0123456789abcdef";
  std::string out;
  out.reserve(bytes * 2);
  for (unsigned char c : raw) {
    out += kHex[c >> 4];
    out += kHex[c & 15];
  }
  return out;
}

RandomIdGenerator::RandomIdGenerator() : rng_(std::random_device{}()) {}

std::string RandomIdGenerator::NewId(std::string_view prefix, TimePoint now) {
  static const char* kAlphabet = "0123456789abcdefghjkmnpqrstvwxyz";
  time_t secs = static_cast<time_t>(ToMicros(now) / 1000000);
  struct tm tm_utc;
  gmtime_r(&secs, &tm_utc);
  char ts[32];
  strftime(ts, sizeof(ts), "%Y%m%dt%H%M%S", &tm_utc);
  uint64_t r;
  {
    MutexLock lock(&mu_);
    r = rng_();
  }
  std::string suffix;
  for (int i = 0; i < 8; ++i) {
    suffix += kAlphabet[r & 31];
    r >>= 5;
  }
  return std::string(prefix) + ts + "-" + suffix;
}

std::string SequentialIdGenerator::NewId(std::string_view prefix, TimePoint) {
  return std::string(prefix) + "-" + std::to_string(next_++);
}

bool IsValidName(std::string_view s) {
  if (s.empty() || s.size() > 63) return false;
  auto alnum = [](char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); };
  if (!alnum(s.front()) || !alnum(s.back())) return false;
  for (char c : s) {
    if (!alnum(c) && c != '-' && c != '_') return false;
  }
  return true;
}

}  // namespace epoch
