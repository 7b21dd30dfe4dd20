// The one random number generator of fmnist: the prep shuffle, He initialisation and
// the per-epoch minibatch order all draw from it, so a seed fixes a run completely.
//
// xoshiro256** seeded through SplitMix64, with its own uniform, bounded and normal
// draws: std::uniform_int_distribution and std::normal_distribution are
// implementation-defined, and a seed must mean the same numbers with any standard
// library.
//
// Thread-safety: an Rng is a plain value; one per thread.
#pragma once

#include <cmath>
#include <cstdint>
#include <numbers>
#include <utility>
#include <vector>

namespace epoch::fmnist {

class Rng {
 public:
  explicit Rng(uint64_t seed) {
    for (auto& w : s_) {
      seed += 0x9e3779b97f4a7c15ULL;  // SplitMix64
      uint64_t z = seed;
      z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
      z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
      w = z ^ (z >> 31);
    }
  }

  uint64_t Next() {
    uint64_t result = Rotl(s_[1] * 5, 7) * 9;
    uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = Rotl(s_[3], 45);
    return result;
  }

  // Uniform in [0, n), n > 0 (Lemire's multiply-shift with rejection: unbiased).
  uint32_t Below(uint32_t n) {
    uint64_t m = (Next() >> 32) * n;
    if (static_cast<uint32_t>(m) < n) {
      uint32_t threshold = static_cast<uint32_t>(-n) % n;
      while (static_cast<uint32_t>(m) < threshold) m = (Next() >> 32) * n;
    }
    return static_cast<uint32_t>(m >> 32);
  }

  // Uniform in (0, 1).
  double Open01() { return (static_cast<double>(Next() >> 11) + 0.5) * 0x1.0p-53; }

  // Standard normal (Box-Muller; the second value of each pair is discarded).
  double Normal() {
    double r = std::sqrt(-2.0 * std::log(Open01()));
    return r * std::cos(2.0 * std::numbers::pi * Open01());
  }

  // Fisher-Yates.
  template <typename T>
  void Shuffle(std::vector<T>& v) {
    for (size_t i = v.size(); i > 1; --i) {
      std::swap(v[i - 1], v[Below(static_cast<uint32_t>(i))]);
    }
  }

 private:
  static uint64_t Rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  uint64_t s_[4];
};

}  // namespace epoch::fmnist
