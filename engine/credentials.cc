#include "engine/credentials.h"

#include "common/ids.h"
#include "common/sha256.h"

namespace epoch::engine {

std::string ContainerCredentials::Mint(const std::string& container) {
  std::string secret = std::string(kContainerCredentialPrefix) + SecureRandomHex(32);
  std::string hash = Sha256Hex(secret);
  MutexLock lock(&mu_);
  secrets_[container] = std::move(secret);
  return hash;
}

std::optional<std::string> ContainerCredentials::Take(const std::string& container) {
  MutexLock lock(&mu_);
  auto it = secrets_.find(container);
  if (it == secrets_.end()) return std::nullopt;
  std::string secret = std::move(it->second);
  secrets_.erase(it);
  return secret;
}

bool CredentialMatches(std::string_view presented, std::string_view sha256_hex) {
  if (sha256_hex.size() != 64) return false;
  std::string got = Sha256Hex(presented);
  // Both are 64 hex digits: compare every byte whatever the first difference.
  unsigned char diff = 0;
  for (size_t i = 0; i < 64; ++i) {
    diff |= static_cast<unsigned char>(got[i] ^ sha256_hex[i]);
  }
  return diff == 0;
}

}  // namespace epoch::engine
