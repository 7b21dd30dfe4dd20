// ApiServer (api/server.h): its own methods, and ApiServer::Impl's routing: the route
// groups in order, each request's authentication and authorisation (Admit), and HA
// routing (a master that is not the leader redirects or refuses writes). Impl is
// defined in api/server_impl.h; the route groups are in api/routes_*.cc.
#include "api/server.h"

#include <spdlog/spdlog.h>

#include <string>
#include <string_view>
#include <thread>

#include "api/auth.h"
#include "api/http_server.h"
#include "api/http_util.h"
#include "api/leader_lock.h"
#include "api/server_impl.h"
#include "common/files.h"
#include "common/mutex.h"

namespace epoch::api {

// The caller of the request this pool thread is handling: set by the pre-routing
// handler (which authenticates every request), read by the handlers after it.
thread_local Principal t_caller;

// The transport tries a method's routes in the order they were added (the first match
// wins): this is that order.
void ApiServer::Impl::Routes() {
  HaRouting();
  OpsRoutes();
  WorkflowRoutes();
  ArtifactRoutes();
  AuditRoutes();
  CacheRoutes();
  RunsRoutes();
  LogRoutes();
  MetricsRoutes();
  EventRoutes();
  ContainerRoutes();
  SessionRoutes();
}

// The leader's address as this master knows it: leader.json on the shared data
// dir (written by each new leader), else the last LeaderElected it applied.
// Empty when that is this master itself (it is not leading) or unknown.
std::string ApiServer::Impl::LeaderAddress() {
  const std::string& self = engine->options().advertise_url;
  if (auto published = ReadPublishedLeader(config.data_dir);
      published.ok() && !published->address.empty() && published->address != self) {
    return published->address;
  }
  std::string a = engine->Read([](const engine::State& s) { return s.leader_address; });
  return a != self ? a : "";
}

// Only the leader writes. Anything else answers writes with 307 to the leader
// (clients and agents follow it) or 503 naming what it knows; every answer says
// who answered (Epoch-Role) and how far its state is (Epoch-Position).
bool ApiServer::Impl::Admit(const Request& req, Response& res) {
  t_caller = Principal{};
  Access access = Classify(req.method, req.path);
  if (access == Access::kPublic) return true;
  Result<Principal> who = Principal{};
  if (access == Access::kAgent) {
    // /v1/containers/{id}/...: that container's own credential, nothing else.
    std::string id = req.path.substr(std::string_view("/v1/containers/").size());
    id = id.substr(0, id.find('/'));
    std::string header = req.Header("Authorization");
    constexpr std::string_view kBearer = "Bearer ";
    Status ok = header.starts_with(kBearer)
                    ? engine->AuthenticateContainer(id, header.substr(kBearer.size()))
                    : Unauthenticated("the container protocol needs 'Authorization: Bearer "
                                      "<the container's credential>'");
    if (ok.ok()) {
      who = Principal{id, "", Role::kViewer, ""};
    } else {
      who = ok;
    }
  } else if (std::string secret = CookieValue(req.Header("Cookie"), kSessionCookie);
             !secret.empty() && !req.HasHeader("Authorization")) {
    who = SessionCaller(req, secret);
  } else {
    who = tokens->Authenticate(req.Header("Authorization"));
  }
  Status st = !who.ok() ? who.status() : access == Access::kAgent ? Status::Ok()
                                                                  : Authorize(*who, access);
  if (!st.ok()) {
    if (st.code() == StatusCode::kUnauthenticated) {
      res.SetHeader("WWW-Authenticate", "Bearer realm=\"epoch\"");
    }
    WriteError(res, FromStatus(st));
    MutexLock lock(&metrics_mu);
    requests[{"auth", res.status}]++;
    return false;
  }
  t_caller = std::move(*who);
  return true;
}

Result<Principal> ApiServer::Impl::SessionCaller(const Request& req, const std::string& secret) {
  ASSIGN_OR_RETURN(SessionEntry session, sessions->Find(secret));
  ASSIGN_OR_RETURN(Principal who, tokens->ById(session.token_id));
  if (req.method != "GET" && req.method != "HEAD" &&
      !ConstantTimeEquals(req.Header("X-CSRF-Token"), SessionCsrf(secret))) {
    return PermissionDenied(
        "a request with a session cookie that changes anything needs the session's CSRF "
        "token in the X-CSRF-Token header (GET /v1/session gives it)");
  }
  return who;
}

void ApiServer::Impl::HaRouting() {
  auto pre = [this](const Request& req, Response& res) {
    if (!Admit(req, res)) return true;
    if (req.method == "GET" || req.method == "HEAD") return false;
    engine::Role role = engine->role();
    if (role == engine::Role::kLeader) return false;
    std::string leader = LeaderAddress();
    std::string what = "this master is " + std::string(engine::Name(role)) + ", not the leader";
    if (!leader.empty() && role != engine::Role::kPromoting) {
      res.SetHeader("Location", leader + req.target);
      WriteError(res, {307, "not_leader", what + "; the leader is " + leader, {leader}});
      res.status = 307;
    } else {
      res.SetHeader("Retry-After", "1");
      WriteError(res, {503, "not_leader",
                       what + (role == engine::Role::kPromoting
                                   ? "; it is taking over, retry in a moment"
                                   : "; no leader is known (an election is in progress)"),
                       {}});
    }
    MutexLock lock(&metrics_mu);
    requests[{"not_leader", res.status}]++;
    return true;
  };
  auto post = [this](const Request&, Response& res) {
    res.SetHeader("Epoch-Role", std::string(engine::Name(engine->role())));
    res.SetHeader("Epoch-Position",
                  std::to_string(engine->Read([](const engine::State& s) { return s.head; })));
  };
  // The answers the transport makes itself (400 malformed, 404 no route, 413 too large).
  auto error_body = [](Response& res, int status, const std::string& code,
                       const std::string& message) {
    WriteError(res, {status, code, message, {}});
  };
  http.SetHooks(pre, post, error_body);
}

ApiServer::ApiServer(Config config, Engine* engine, storage::EventStore* store, IdGenerator* ids,
                     const Clock* clock)
    : impl_(std::make_unique<Impl>(std::move(config), engine, store, ids, clock)) {
  impl_->Routes();
}

ApiServer::~ApiServer() { Stop(); }

Result<int> ApiServer::Start(const std::string& host, int port) {
  ASSIGN_OR_RETURN(int bound, Bind(host, port));
  Serve();
  return bound;
}

void ApiServer::Serve() { impl_->http.Serve(); }

Result<int> ApiServer::Bind(const std::string& host, int port) {
  const Config& c = impl_->config;
  std::string tokens_path = c.tokens_file.empty() ? c.data_dir + "/tokens.json" : c.tokens_file;
  // A broken tokens file stops the start here, not the first request.
  ASSIGN_OR_RETURN(auto loaded, LoadTokens(tokens_path));
  if (loaded.empty()) {
    spdlog::warn("no tokens in {}: nobody can use the API until `epochctl admin token create "
                 "--tokens {} --user U --tenant T --role admin` makes one",
                 tokens_path, tokens_path);
  }
  impl_->tokens = std::make_unique<TokenStore>(tokens_path);
  impl_->sessions = std::make_unique<SessionStore>(c.data_dir + "/sessions.json", impl_->clock);
  return impl_->http.Bind(host, port);
}

void ApiServer::Stop() {
  if (!impl_ || impl_->stopping.exchange(true)) return;
  impl_->http.Stop();
}

}  // namespace epoch::api
