// Container credentials: each compute container authenticates the container
// protocol (/v1/containers/{id}/register|poll) with a secret of its own.
//
// The leader mints the secret when it decides to request the container: decide asks
// the CredentialMint of its DecideContext (like the clock and FileAccess, the mint is
// injected, so decide stays a function of its inputs) and records only the secret's
// SHA-256 in ContainerRequested {credential_sha256}. The pool reactor takes the
// secret out of the mint when it launches the container and gives it to the backend
// (ContainerSpec::credential), which hands it to that agent alone. The secret is in no
// event, log line or error; a container that is lost or released, or not known, is
// refused whatever it presents. A ContainerRequested whose secret this master did not
// mint (written by a leader that died before launching it) is never launched.
//
// Thread-safety: ContainerCredentials is internally synchronised (the writer mints,
// the reactor takes).
#pragma once

#include <map>
#include <optional>
#include <string>
#include <string_view>

#include "common/mutex.h"

namespace epoch::engine {

class CredentialMint {
 public:
  virtual ~CredentialMint() = default;
  // A new secret for `container`; returns its SHA-256 (hex) to record.
  virtual std::string Mint(const std::string& container) = 0;
};

// Prefix of every container credential ("epochc_<64 hex>"): recognisable in a leak
// scan, distinct from user tokens ("epoch_<id>_<secret>").
inline constexpr std::string_view kContainerCredentialPrefix = "epochc_";

class ContainerCredentials final : public CredentialMint {
 public:
  std::string Mint(const std::string& container) override;
  // The secret minted for `container` (once: it is forgotten as it is taken), or
  // nullopt when this master minted none.
  std::optional<std::string> Take(const std::string& container);

 private:
  Mutex mu_;
  // container -> secret, until launched
  std::map<std::string, std::string> secrets_ GUARDED_BY(mu_);
};

// Whether `presented` is the secret whose SHA-256 is `sha256_hex` (constant time in
// the secret's bytes). False for an empty hash.
bool CredentialMatches(std::string_view presented, std::string_view sha256_hex);

}  // namespace epoch::engine
