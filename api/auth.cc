#include "api/auth.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <spdlog/spdlog.h>

#include "common/fd.h"
#include "common/files.h"
#include "common/ids.h"
#include "common/json.h"
#include "common/sha256.h"

namespace epoch::api {

namespace {

constexpr std::string_view kPrefix = "epoch_";

std::string RandomHex(size_t bytes) { return SecureRandomHex(bytes); }

bool StartsWith(std::string_view s, std::string_view p) { return s.substr(0, p.size()) == p; }

// Holds an exclusive flock on <path>.lock while alive.
class FileLock {
 public:
  explicit FileLock(const std::string& path) {
    fd_.reset(open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
    if (!fd_) {
      status_ = Internal("opening " + path + ": " + std::strerror(errno));
      return;
    }
    while (flock(fd_.get(), LOCK_EX) != 0) {
      if (errno == EINTR) continue;
      status_ = Internal("locking " + path + ": " + std::strerror(errno));
      return;
    }
  }
  FileLock(const FileLock&) = delete;
  FileLock& operator=(const FileLock&) = delete;
  const Status& status() const { return status_; }

 private:
  UniqueFd fd_;  // closing it drops the flock
  Status status_;
};

}  // namespace

std::string_view Name(Role r) {
  switch (r) {
    case Role::kAdmin: return "admin";
    case Role::kOperator: return "operator";
    case Role::kViewer: return "viewer";
    case Role::kAuditor: return "auditor";
  }
  return "?";
}

std::optional<Role> ParseRole(std::string_view s) {
  for (Role r : {Role::kAdmin, Role::kOperator, Role::kViewer, Role::kAuditor}) {
    if (Name(r) == s) return r;
  }
  return std::nullopt;
}

Access Classify(std::string_view method, std::string_view path) {
  bool read = method == "GET" || method == "HEAD";
  if (read && (path == "/healthz" || path == "/readyz")) return Access::kPublic;
  if (method == "POST" && StartsWith(path, "/v1/containers/")) {
    std::string_view rest = path.substr(std::string_view("/v1/containers/").size());
    size_t slash = rest.find('/');
    if (slash != std::string_view::npos && slash > 0) {
      std::string_view verb = rest.substr(slash + 1);
      if (verb == "register" || verb == "poll") return Access::kAgent;
    }
  }
  if (read && (path == "/v1/audit/verify" || path == "/metrics")) return Access::kGlobal;
  // Signing in authenticates with the token in its body; signing out is anyone's.
  if (path == "/v1/session" && method == "POST") return Access::kPublic;
  if (path == "/v1/session" && method == "DELETE") return Access::kSession;
  return read ? Access::kRead : Access::kWrite;
}

Status Authorize(const Principal& p, Access access) {
  auto deny = [&](std::string_view what) {
    return PermissionDenied("role " + std::string(Name(p.role)) + " may not " + std::string(what));
  };
  switch (access) {
    case Access::kPublic: return Status::Ok();
    case Access::kAgent:
      // Containers authenticate with their own credential, never with a token.
      return Unauthenticated("the container protocol takes a container's own credential, "
                             "not a token");
    case Access::kRead:
    case Access::kSession: return Status::Ok();
    case Access::kGlobal:
      return p.role == Role::kAdmin || p.role == Role::kAuditor
                 ? Status::Ok()
                 : deny("read every tenant's history or metrics");
    case Access::kWrite:
      return p.role == Role::kAdmin || p.role == Role::kOperator ? Status::Ok() : deny("write");
  }
  return deny("do this");
}

bool IsValidName(std::string_view s) {
  if (s.empty() || s.size() > 63) return false;
  for (size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    bool alnum = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
    if (!alnum && (i == 0 || (c != '.' && c != '_' && c != '-'))) return false;
  }
  return true;
}

NewToken GenerateToken() {
  NewToken t;
  t.id = RandomHex(4);
  t.token = std::string(kPrefix) + t.id + "_" + RandomHex(32);
  return t;
}

Result<std::vector<TokenEntry>> LoadTokens(const std::string& path) {
  std::vector<TokenEntry> out;
  if (!PathExists(path)) return out;
  ASSIGN_OR_RETURN(std::string text, ReadFile(path, 16u << 20));
  auto j = ParseJson(text);
  if (!j.ok()) return j.status().WithContext(path);
  if (!j->is_object() || !(*j)["tokens"].is_array()) {
    return InvalidArgument(path + ": expected {\"tokens\": [...]}");
  }
  const Json& tokens = (*j)["tokens"];
  for (size_t i = 0; i < tokens.size(); ++i) {
    const Json& t = tokens[i];
    std::string where = path + ": tokens[" + std::to_string(i) + "]";
    if (!t.is_object()) return InvalidArgument(where + ": must be an object");
    TokenEntry e;
    for (auto [key, field] : {std::pair{"id", &e.id}, {"sha256", &e.sha256}, {"user", &e.user},
                              {"tenant", &e.tenant}, {"created_at", &e.created_at}}) {
      auto it = t.find(key);
      if (it == t.end() || !it->is_string()) {
        if (std::string_view(key) == "created_at") continue;
        return InvalidArgument(where + "." + key + ": required string");
      }
      *field = it->get<std::string>();
    }
    if (e.sha256.size() != 64 || !DigestFromHex(e.sha256).ok()) {
      return InvalidArgument(where + ".sha256: must be 64 hex digits");
    }
    auto role = t.find("role");
    std::optional<Role> r;
    if (role != t.end() && role->is_string()) r = ParseRole(role->get<std::string>());
    if (!r) {
      return InvalidArgument(where +
                             ".role: must be one of admin, operator, viewer, auditor");
    }
    e.role = *r;
    out.push_back(std::move(e));
  }
  return out;
}

Status SaveTokens(const std::string& path, const std::vector<TokenEntry>& tokens) {
  Json arr = Json::array();
  for (const auto& t : tokens) {
    arr.push_back(Json{{"id", t.id},
                       {"sha256", t.sha256},
                       {"user", t.user},
                       {"tenant", t.tenant},
                       {"role", std::string(Name(t.role))},
                       {"created_at", t.created_at}});
  }
  return WriteFileDurably(path, Json{{"tokens", arr}}.dump(2) + "\n", 0600);
}

Result<NewToken> CreateToken(const std::string& path, const std::string& user,
                             const std::string& tenant, Role role, const std::string& now) {
  if (!IsValidName(user)) {
    return InvalidArgument("user: '" + user + "' is not a valid name ([a-z0-9][a-z0-9._-]{0,62})");
  }
  if (!IsValidName(tenant)) {
    return InvalidArgument("tenant: '" + tenant +
                           "' is not a valid name ([a-z0-9][a-z0-9._-]{0,62})");
  }
  FileLock lock(path + ".lock");
  RETURN_IF_ERROR(lock.status());
  ASSIGN_OR_RETURN(auto tokens, LoadTokens(path));
  NewToken t = GenerateToken();
  tokens.push_back(TokenEntry{t.id, Sha256Hex(t.token), user, tenant, role, now});
  RETURN_IF_ERROR(SaveTokens(path, tokens));
  return t;
}

Status RevokeToken(const std::string& path, const std::string& id) {
  FileLock lock(path + ".lock");
  RETURN_IF_ERROR(lock.status());
  ASSIGN_OR_RETURN(auto tokens, LoadTokens(path));
  auto n = std::erase_if(tokens, [&](const TokenEntry& e) { return e.id == id; });
  if (n == 0) return NotFound("no token with id '" + id + "' in " + path);
  return SaveTokens(path, tokens);
}

TokenStore::TokenStore(std::string tokens_path) : path_(std::move(tokens_path)) {}

FileVersion FileVersion::Of(const std::string& path) {
  struct stat st {};
  if (stat(path.c_str(), &st) != 0) return FileVersion{};
  return FileVersion{st.st_dev, st.st_ino, st.st_size,
                     static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec};
}

void TokenStore::ReloadIfChanged() {
  FileVersion now = FileVersion::Of(path_);
  if (now == seen_) return;
  auto tokens = LoadTokens(path_);
  if (!tokens.ok()) {
    // Keep serving with the tokens we had: a half-edited file must not lock
    // everyone out (nor let anyone in).
    spdlog::error("tokens file {}: {} (keeping the {} tokens loaded before)", path_,
                  tokens.status().ToString(), by_hash_.size());
    seen_ = now;
    return;
  }
  std::map<std::string, Principal> by_hash;
  for (const auto& t : *tokens) by_hash[t.sha256] = Principal{t.user, t.tenant, t.role, t.id};
  if (by_hash.size() != by_hash_.size()) {
    spdlog::info("tokens file {}: {} token(s)", path_, by_hash.size());
  }
  by_hash_ = std::move(by_hash);
  seen_ = now;
}

Result<Principal> TokenStore::Authenticate(std::string_view header) {
  constexpr std::string_view kBearer = "Bearer ";
  if (header.empty()) {
    return Unauthenticated("this API needs a token: send 'Authorization: Bearer <token>' "
                           "(epochctl --token or EPOCH_TOKEN; `epochctl admin token create` "
                           "makes one)");
  }
  if (!StartsWith(header, kBearer)) {
    return Unauthenticated("the Authorization header must be 'Bearer <token>'");
  }
  std::string_view token = header.substr(kBearer.size());
  if (!StartsWith(token, kPrefix) || token.size() > 256) {
    return Unauthenticated("the bearer token is not an Epoch token");
  }
  std::string hash = Sha256Hex(token);
  MutexLock lock(&mu_);
  ReloadIfChanged();
  auto it = by_hash_.find(hash);
  if (it == by_hash_.end()) return Unauthenticated("unknown or revoked token");
  return it->second;
}

Result<Principal> TokenStore::ById(std::string_view id) {
  MutexLock lock(&mu_);
  ReloadIfChanged();
  for (const auto& [hash, p] : by_hash_) {
    if (p.token_id == id) return p;
  }
  return Unauthenticated("the session's token was revoked: sign in again");
}

size_t TokenStore::size() {
  MutexLock lock(&mu_);
  ReloadIfChanged();
  return by_hash_.size();
}

// ---- console sessions ------------------------------------------------------------------

namespace {
constexpr std::string_view kSessionPrefix = "es_";
}  // namespace

std::string CookieValue(std::string_view header, std::string_view name) {
  while (!header.empty()) {
    size_t end = header.find(';');
    std::string_view pair = header.substr(0, end);
    header = end == std::string_view::npos ? std::string_view() : header.substr(end + 1);
    while (!pair.empty() && pair.front() == ' ') pair.remove_prefix(1);
    size_t eq = pair.find('=');
    if (eq != std::string_view::npos && pair.substr(0, eq) == name) {
      return std::string(pair.substr(eq + 1));
    }
  }
  return "";
}

std::string SessionCsrf(std::string_view secret) {
  return Sha256Hex("epoch session csrf\n" + std::string(secret));
}

bool ConstantTimeEquals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  }
  return diff == 0;
}

Result<std::vector<SessionEntry>> LoadSessions(const std::string& path) {
  std::vector<SessionEntry> out;
  if (!PathExists(path)) return out;
  ASSIGN_OR_RETURN(std::string text, ReadFile(path, 64u << 20));
  auto j = ParseJson(text);
  if (!j.ok()) return j.status().WithContext(path);
  if (!j->is_object() || !(*j)["sessions"].is_array()) {
    return InvalidArgument(path + ": expected {\"sessions\": [...]}");
  }
  const Json& sessions = (*j)["sessions"];
  for (size_t i = 0; i < sessions.size(); ++i) {
    const Json& s = sessions[i];
    std::string where = path + ": sessions[" + std::to_string(i) + "]";
    if (!s.is_object()) return InvalidArgument(where + ": must be an object");
    SessionEntry e;
    std::string created, expires;
    for (auto [key, field] : {std::pair{"sha256", &e.sha256},
                              {"token_id", &e.token_id},
                              {"created_at", &created},
                              {"expires_at", &expires}}) {
      auto it = s.find(key);
      if (it == s.end() || !it->is_string()) {
        return InvalidArgument(where + "." + key + ": required string");
      }
      *field = it->get<std::string>();
    }
    if (e.sha256.size() != 64 || !DigestFromHex(e.sha256).ok()) {
      return InvalidArgument(where + ".sha256: must be 64 hex digits");
    }
    auto c = ParseTime(created);
    auto x = ParseTime(expires);
    if (!c.ok()) return InvalidArgument(where + ".created_at: " + c.status().message());
    if (!x.ok()) return InvalidArgument(where + ".expires_at: " + x.status().message());
    e.created = *c;
    e.expires = *x;
    out.push_back(std::move(e));
  }
  return out;
}

SessionStore::SessionStore(std::string sessions_path, const Clock* clock)
    : path_(std::move(sessions_path)), clock_(clock) {}

void SessionStore::ReloadIfChanged() {
  FileVersion now = FileVersion::Of(path_);
  if (now == seen_) return;
  auto sessions = LoadSessions(path_);
  if (!sessions.ok()) {
    // Unreadable: nobody is signed in (a session is a convenience; the token remains).
    spdlog::error("sessions file {}: {} (no session is valid until it is rewritten)", path_,
                  sessions.status().ToString());
    by_hash_.clear();
    seen_ = now;
    return;
  }
  std::map<std::string, SessionEntry> by_hash;
  for (auto& s : *sessions) by_hash[s.sha256] = std::move(s);
  by_hash_ = std::move(by_hash);
  seen_ = now;
}

Status SessionStore::Update(const std::function<Status(std::vector<SessionEntry>*)>& change) {
  FileLock lock(path_ + ".lock");
  RETURN_IF_ERROR(lock.status());
  // A file that does not parse is started afresh: it held nothing anyone can use.
  auto loaded = LoadSessions(path_);
  std::vector<SessionEntry> sessions;
  if (loaded.ok()) sessions = std::move(*loaded);
  const TimePoint now = clock_->Now();
  std::erase_if(sessions, [&](const SessionEntry& s) { return s.expires <= now; });
  RETURN_IF_ERROR(change(&sessions));
  Json arr = Json::array();
  for (const auto& s : sessions) {
    arr.push_back(Json{{"sha256", s.sha256},
                       {"token_id", s.token_id},
                       {"created_at", FormatTime(s.created)},
                       {"expires_at", FormatTime(s.expires)}});
  }
  return WriteFileDurably(path_, Json{{"sessions", arr}}.dump(1) + "\n", 0600);
}

Result<NewSession> SessionStore::Create(const std::string& token_id, Micros ttl) {
  NewSession n;
  n.secret = std::string(kSessionPrefix) + RandomHex(32);
  n.csrf = SessionCsrf(n.secret);
  const TimePoint now = clock_->Now();
  n.expires = now + ttl;
  RETURN_IF_ERROR(Update([&](std::vector<SessionEntry>* sessions) {
    sessions->push_back(SessionEntry{Sha256Hex(n.secret), token_id, now, n.expires});
    return Status::Ok();
  }));
  return n;
}

Result<SessionEntry> SessionStore::Find(std::string_view secret) {
  if (!StartsWith(secret, kSessionPrefix) || secret.size() != kSessionPrefix.size() + 64) {
    return Unauthenticated("the session cookie is not an Epoch session: sign in again");
  }
  const std::string hash = Sha256Hex(secret);
  MutexLock lock(&mu_);
  ReloadIfChanged();
  auto it = by_hash_.find(hash);
  if (it == by_hash_.end())
    return Unauthenticated("signed out, or an unknown session: sign in again");
  if (it->second.expires <= clock_->Now())
    return Unauthenticated("the session expired: sign in again");
  return it->second;
}

Status SessionStore::Delete(std::string_view secret) {
  const std::string hash = Sha256Hex(secret);
  return Update([&](std::vector<SessionEntry>* sessions) {
    if (std::erase_if(*sessions, [&](const SessionEntry& s) { return s.sha256 == hash; }) == 0) {
      return NotFound("no such session (signed out already, or expired)");
    }
    return Status::Ok();
  });
}

}  // namespace epoch::api
