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
// Console sessions: a token pasted once into a browser is exchanged (POST /v1/session)
// for a session, a random secret the browser keeps in an HttpOnly cookie, so no page
// holds the token. The server keeps only SHA-256 hashes of the secrets, in a sessions
// file (<data-dir>/sessions.json, mode 0600, on the shared data dir so a standby that
// takes over knows them). A session acts as its token (same user, tenant and role)
// while that token is in the tokens file: revoking the token ends its sessions. It
// also ends at its expiry (api.sessionTtl) or when signed out (DELETE /v1/session).
// Anything but a GET with a session needs the session's CSRF token in X-CSRF-Token:
// derived from the secret, it is what GET /v1/session tells a page of the console
// and what no other site can read or guess.
//
// Thread-safety: TokenStore and SessionStore are internally synchronised; the rest
// are pure.
#pragma once

#include <sys/types.h>

#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/clock.h"
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
  kPublic,   // /healthz, /readyz: probes
  kRead,     // GETs of tenant-scoped resources (handlers filter by tenant)
  kGlobal,   // whole-system reads: /v1/audit/verify (the chain), /metrics (all tenants' counts)
  kWrite,    // POSTs that change runs, workflows, the cache
  kAgent,    // the container protocol: a container's own credential, no token
  kSession,  // DELETE /v1/session: signing out, whatever the role
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

// What tells a file's versions apart for a reload: device, inode, size, mtime (all
// defaults when it does not exist).
struct FileVersion {
  dev_t dev = 0;
  ino_t ino = 0;
  off_t size = -1;
  int64_t mtime_ns = -1;
  bool operator==(const FileVersion&) const = default;
  static FileVersion Of(const std::string& path);
};

// The server's view of the tokens file, re-read whenever
// the file's identity, size or mtime changes.
class TokenStore {
 public:
  explicit TokenStore(std::string tokens_path);
  // kUnauthenticated for a missing, malformed or unknown token (never echoing it).
  Result<Principal> Authenticate(std::string_view authorization_header);
  // The principal of the token with this id, while it is in the file;
  // kUnauthenticated once it is revoked.
  Result<Principal> ById(std::string_view id);
  // How many tokens are configured (0: nobody can get in).
  size_t size();

 private:
  void ReloadIfChanged() REQUIRES(mu_);
  std::string path_;  // set in the constructor only
  Mutex mu_;
  std::map<std::string, Principal> by_hash_ GUARDED_BY(mu_);
  FileVersion seen_ GUARDED_BY(mu_);
};

// The session cookie's name, and the value of a cookie of that name in a Cookie header
// ("" if none).
inline constexpr std::string_view kSessionCookie = "epoch_session";
std::string CookieValue(std::string_view cookie_header, std::string_view name);
// The CSRF token of the session whose secret this is.
std::string SessionCsrf(std::string_view secret);
// Whether two strings are equal, in time that depends only on their lengths.
bool ConstantTimeEquals(std::string_view a, std::string_view b);

struct SessionEntry {
  std::string sha256;    // of the secret
  std::string token_id;  // the token it acts as
  TimePoint created{}, expires{};
};

struct NewSession {
  std::string secret;  // "es_" + 64 hex digits: the cookie's value
  std::string csrf;    // SessionCsrf(secret)
  TimePoint expires{};
};

// The sessions file. A missing file is an empty list.
Result<std::vector<SessionEntry>> LoadSessions(const std::string& path);

class SessionStore {
 public:
  SessionStore(std::string sessions_path, const Clock* clock);
  // A new session of the token `token_id` for `ttl`, in the file (fsynced) before it
  // returns. Expired sessions leave the file then.
  Result<NewSession> Create(const std::string& token_id, Micros ttl);
  // The live session of this secret; kUnauthenticated when the secret is malformed,
  // unknown (signed out) or expired.
  Result<SessionEntry> Find(std::string_view secret);
  // Signs out: the session leaves the file. kNotFound if it was not there.
  Status Delete(std::string_view secret);

 private:
  void ReloadIfChanged() REQUIRES(mu_);
  // Rewrites the file under its lock with `change` applied to what it holds now.
  Status Update(const std::function<Status(std::vector<SessionEntry>*)>& change);
  std::string path_;    // set in the constructor only
  const Clock* clock_;  // set in the constructor only
  Mutex mu_;
  std::map<std::string, SessionEntry> by_hash_ GUARDED_BY(mu_);
  FileVersion seen_ GUARDED_BY(mu_);
};

}  // namespace epoch::api
