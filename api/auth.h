// Authentication and authorisation: bearer tokens, roles, tenants.
//
// A token is "epoch_<id>_<secret>" (id: 8 hex digits, secret: 64). The server
// keeps only SHA-256 hashes of whole tokens, in a tokens file (JSON, default
// <data-dir>/tokens.json, mode 0600):
//
//   {"tokens": [{"id": "3f2a9c1d", "sha256": "<hex>", "user": "alice",
//                "tenant": "ml", "role": "operator", "created_at": "..."}]}
//
// `epochctl admin token create` appends to it and prints the token once; epochd
// re-reads the file when it changes, so tokens take effect (and revocations too)
// without a restart. Compute containers do not use tokens: each authenticates the
// container protocol with a credential of its own (engine/credentials.h), which the
// server checks against the engine's state, not this file.
//
// Roles: admin (everything), operator (submit, cancel, retry, invalidate in its
// tenant; read it), viewer (read its tenant), auditor (read every tenant and the
// whole history, verify; no writes).
//
// Thread-safety: TokenStore is internally synchronised; the rest are pure.
#pragma once

#include <sys/types.h>

#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/mutex.h"
#include "common/status.h"

namespace epoch::api {

enum class Role { kAdmin, kOperator, kViewer, kAuditor };
std::string_view Name(Role r);
std::optional<Role> ParseRole(std::string_view s);

struct Principal {
  std::string user;
  std::string tenant;
  Role role = Role::kViewer;
  std::string token_id;
  // The actor recorded on the events this principal causes: "user@tenant".
  std::string Actor() const { return user + "@" + tenant; }
  // Admins and auditors see every tenant; everyone else only their own.
  bool SeesAllTenants() const { return role == Role::kAdmin || role == Role::kAuditor; }
  bool Sees(const std::string& t) const { return SeesAllTenants() || t == tenant; }
};

struct TokenEntry {
  std::string id, sha256, user, tenant;
  Role role = Role::kViewer;
  std::string created_at;
};

// What a request needs, by method and path (the route table's classes).
enum class Access {
  kPublic,      // /healthz, /readyz: probes
  kRead,        // GETs of tenant-scoped resources (handlers filter by tenant)
  kGlobal,      // whole-system reads: /v1/audit/verify (the chain), /metrics (all tenants' counts)
  kWrite,       // POSTs that change runs, workflows, the cache
  kAgent,       // the container protocol: a container's own credential, no token
};
Access Classify(std::string_view method, std::string_view path);
// kPermissionDenied naming the role and what it may not do.
Status Authorize(const Principal& p, Access access);

// [a-z0-9][a-z0-9._-]{0,62}: user and tenant names.
bool IsValidName(std::string_view s);

// A new random token with its id; its hash is Sha256Hex(token).
struct NewToken {
  std::string token;
  std::string id;
};
NewToken GenerateToken();

// The tokens file. A missing file is an empty list.
Result<std::vector<TokenEntry>> LoadTokens(const std::string& path);
// Replaces the file atomically (temp, fsync, rename, fsync dir), mode 0600.
Status SaveTokens(const std::string& path, const std::vector<TokenEntry>& tokens);
// Appends a new token for (user, tenant, role) under an exclusive lock of
// <path>.lock (so concurrent creators do not lose each other's); returns it.
// kInvalidArgument for a bad name.
Result<NewToken> CreateToken(const std::string& path, const std::string& user,
                             const std::string& tenant, Role role, const std::string& now);
// Removes the token with this id; kNotFound if there is none.
Status RevokeToken(const std::string& path, const std::string& id);

// The server's view of the tokens file, re-read whenever
// the file's identity, size or mtime changes.
class TokenStore {
 public:
  explicit TokenStore(std::string tokens_path);
  // kUnauthenticated for a missing, malformed or unknown token (never echoing it).
  Result<Principal> Authenticate(std::string_view authorization_header);
  // How many tokens are configured (0: nobody can get in).
  size_t size();

 private:
  void ReloadIfChanged() REQUIRES(mu_);
  std::string path_;  // set in the constructor only
  Mutex mu_;
  std::map<std::string, Principal> by_hash_ GUARDED_BY(mu_);
  struct FileId {
    dev_t dev = 0;
    ino_t ino = 0;
    off_t size = -1;
    int64_t mtime_ns = -1;
    bool operator==(const FileId&) const = default;
  } seen_ GUARDED_BY(mu_);
};

}  // namespace epoch::api
