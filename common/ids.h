// Id generation, injected so tests get predictable ids.
//
// Run ids look like "r20261128t133840-k3f9q2" : sortable by creation time,
// [a-z0-9-] only, so they are safe in stream names, paths and URLs.
//
// Thread-safety: RandomIdGenerator is internally synchronised.
#pragma once

#include <atomic>
#include <random>
#include <string>
#include <string_view>

#include "common/clock.h"
#include "common/mutex.h"

namespace epoch {

class IdGenerator {
 public:
  virtual ~IdGenerator() = default;
  // A new id with the given one-letter-or-word prefix ("r" for runs, "c" for containers).
  virtual std::string NewId(std::string_view prefix, TimePoint now) = 0;
};

class RandomIdGenerator final : public IdGenerator {
 public:
  RandomIdGenerator();
  std::string NewId(std::string_view prefix, TimePoint now) override;

 private:
  Mutex mu_;
  std::mt19937_64 rng_ GUARDED_BY(mu_);
};

// prefix + "-" + counter: "r-1", "r-2", ... for tests.
class SequentialIdGenerator final : public IdGenerator {
 public:
  std::string NewId(std::string_view prefix, TimePoint now) override;

 private:
  std::atomic<uint64_t> next_{1};
};

// `bytes` random bytes from the kernel (getrandom), as lower-case hex: for secrets
// (tokens, container credentials). Aborts rather than fall back to a weak source
// (getrandom cannot fail on Linux >= 3.17 once the pool is ready).
std::string SecureRandomHex(size_t bytes);

// True for names made of [a-z0-9] and inner '-' or '_' , 1..63 chars, starting
// with a letter or digit. Used for step names, workflow names, ids in paths.
bool IsValidName(std::string_view s);

}  // namespace epoch
