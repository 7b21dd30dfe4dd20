#include "common/units.h"

#include <cctype>
#include <cmath>
#include <cstdlib>

namespace epoch {

namespace {

// Parses a non-negative decimal number prefix; returns chars consumed or 0.
size_t ParseNumber(std::string_view s, double* out) {
  size_t i = 0;
  bool digits = false;
  while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) {
    ++i;
    digits = true;
  }
  if (i < s.size() && s[i] == '.') {
    ++i;
    while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) {
      ++i;
      digits = true;
    }
  }
  if (!digits) return 0;
  *out = std::strtod(std::string(s.substr(0, i)).c_str(), nullptr);
  return i;
}

}  // namespace

Result<Micros> ParseDuration(std::string_view s) {
  auto bad = [&](std::string why) {
    return InvalidArgument("invalid duration '" + std::string(s) + "': " + why);
  };
  if (s.empty()) return bad("empty");
  double total_us = 0;
  size_t i = 0;
  bool any = false;
  while (i < s.size()) {
    double v = 0;
    size_t n = ParseNumber(s.substr(i), &v);
    if (n == 0) return bad("expected a number (e.g. 30s, 5m, 2h)");
    i += n;
    size_t u = i;
    while (u < s.size() && std::isalpha(static_cast<unsigned char>(s[u]))) ++u;
    std::string_view unit = s.substr(i, u - i);
    i = u;
    double mul;
    if (unit.empty()) {
      if (any || i != s.size()) return bad("a unit is required between terms");
      mul = 1e6;
    } else if (unit == "ms") {
      mul = 1e3;
    } else if (unit == "s") {
      mul = 1e6;
    } else if (unit == "m") {
      mul = 60e6;
    } else if (unit == "h") {
      mul = 3600e6;
    } else if (unit == "d") {
      mul = 86400e6;
    } else {
      return bad("unknown unit '" + std::string(unit) + "' (use ms, s, m, h or d)");
    }
    total_us += v * mul;
    any = true;
  }
  if (total_us > 9.2e18) return bad("too large");
  return Micros(static_cast<int64_t>(std::llround(total_us)));
}

std::string FormatDuration(Micros d) {
  int64_t us = d.count();
  if (us % 1000000 != 0) {
    return std::to_string(us / 1000) + "ms";
  }
  int64_t s = us / 1000000;
  std::string out;
  if (s >= 3600) {
    out += std::to_string(s / 3600) + "h";
    s %= 3600;
  }
  if (s >= 60) {
    out += std::to_string(s / 60) + "m";
    s %= 60;
  }
  if (s > 0 || out.empty()) out += std::to_string(s) + "s";
  return out;
}

Result<int64_t> ParseCpuMillis(std::string_view s) {
  auto bad = [&](std::string why) {
    return InvalidArgument("invalid cpu quantity '" + std::string(s) + "': " + why);
  };
  double v = 0;
  size_t n = ParseNumber(s, &v);
  if (n == 0) return bad("expected e.g. 500m, 1 or 1.5");
  std::string_view rest = s.substr(n);
  double millis;
  if (rest.empty()) {
    millis = v * 1000;
  } else if (rest == "m") {
    millis = v;
  } else {
    return bad("unknown suffix '" + std::string(rest) + "' (use m or none)");
  }
  if (millis < 1) return bad("must be at least 1m");
  if (millis > 1e12) return bad("too large");
  return static_cast<int64_t>(std::llround(millis));
}

Result<int64_t> ParseBytes(std::string_view s) {
  auto bad = [&](std::string why) {
    return InvalidArgument("invalid memory quantity '" + std::string(s) + "': " + why);
  };
  double v = 0;
  size_t n = ParseNumber(s, &v);
  if (n == 0) return bad("expected e.g. 128Mi, 2Gi or a number of bytes");
  std::string_view suf = s.substr(n);
  double mul;
  if (suf.empty()) mul = 1;
  else if (suf == "k" || suf == "K") mul = 1e3;
  else if (suf == "M") mul = 1e6;
  else if (suf == "G") mul = 1e9;
  else if (suf == "T") mul = 1e12;
  else if (suf == "Ki") mul = 1024.0;
  else if (suf == "Mi") mul = 1024.0 * 1024;
  else if (suf == "Gi") mul = 1024.0 * 1024 * 1024;
  else if (suf == "Ti") mul = 1024.0 * 1024 * 1024 * 1024;
  else return bad("unknown suffix '" + std::string(suf) + "' (use Ki, Mi, Gi, Ti, k, M, G, T)");
  double bytes = v * mul;
  if (bytes < 1) return bad("must be at least 1 byte");
  if (bytes > 9e18) return bad("too large");
  return static_cast<int64_t>(std::llround(bytes));
}

}  // namespace epoch
