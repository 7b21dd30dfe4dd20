// SHA-256, the one hash Epoch uses: event hash chain, definition digests, output
// digests, token hashes. Wraps OpenSSL (linked PRIVATE into common only).
//
// Thread-safety: Sha256 objects are single-threaded; free functions are safe.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "common/status.h"

namespace epoch {

using Digest = std::array<uint8_t, 32>;

class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;
  void Update(std::string_view bytes);
  Digest Finish();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

Digest Sha256Of(std::string_view bytes);
// SHA-256 of first || second, without copying them together or allocating.
Digest Sha256Of(std::string_view first, std::string_view second);
std::string ToHex(const Digest& d);
std::string Sha256Hex(std::string_view bytes);
// Parses 64 hex digits.
Result<Digest> DigestFromHex(std::string_view hex);
// SHA-256 of a file's contents, streamed.
Result<std::string> Sha256FileHex(const std::string& path, uint64_t* size_out = nullptr);

}  // namespace epoch
