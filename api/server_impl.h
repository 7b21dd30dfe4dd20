// Internal to api/: ApiServer::Impl, the state behind ApiServer (api/server.h) that its
// route groups share: the transport, the engine and store, the stream caps, the
// request counters, and the helpers every group uses (Wrap, Caller, tenancy checks,
// SSE streams). Its members are defined in api/server.cc (routing, authentication, HA)
// and in one api/routes_*.cc file per route group.
#pragma once

#include <spdlog/spdlog.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "api/auth.h"
#include "api/config.h"
#include "api/http_server.h"
#include "api/http_util.h"
#include "api/server.h"
#include "api/stream_slots.h"
#include "common/mutex.h"
#include "engine/engine.h"
#include "storage/event_store.h"

namespace epoch::api {

using engine::Engine;

// The caller of the request this pool thread is handling (defined in api/server.cc).
extern thread_local Principal t_caller;

struct ApiServer::Impl {
  Config config;
  Engine* engine;
  storage::EventStore* store;
  IdGenerator* ids;
  const Clock* clock;
  HttpServer http;
  std::atomic<bool> stopping{false};
  StreamSlots streams;
  std::unique_ptr<TokenStore> tokens;      // set by Bind
  std::unique_ptr<SessionStore> sessions;  // set by Bind

  Mutex metrics_mu;
  // (route, status) -> count
  std::map<std::pair<std::string, int>, uint64_t> requests GUARDED_BY(metrics_mu);

  Impl(Config c, Engine* e, storage::EventStore* s, IdGenerator* i, const Clock* k)
      : config(std::move(c)),
        engine(e),
        store(s),
        ids(i),
        clock(k),
        http(TransportOptions(config, e)),
        streams(config.max_streams, config.max_streams_per_principal) {}

  static HttpServerOptions TransportOptions(const Config& c, Engine* e) {
    HttpServerOptions o;
    o.io_threads = c.io_threads;
    o.worker_threads = c.threads;
    o.max_body_bytes = c.max_body_bytes;
    o.max_connections = c.max_connections;
    o.max_connections_per_client = c.max_connections_per_client;
    o.tls_handshake_timeout = c.tls_handshake_timeout;
    o.header_timeout = c.header_timeout;
    o.body_timeout = c.body_timeout;
    o.idle_timeout = c.keep_alive_timeout;
    o.write_timeout = c.write_timeout;
    if (!c.plain_http) {
      o.tls_certificate = c.tls_certificate;
      o.tls_key = c.tls_key;
    }
    // Long polls and streams wake when the engine commits (or, on a standby, applies).
    o.change_counter = [e] { return e->Generation(); };
    o.wait_for_change = [e](uint64_t seen, std::chrono::milliseconds timeout) {
      e->WaitForChange(seen, std::chrono::duration_cast<Micros>(timeout));
    };
    // A parked container poll (routes_containers.cc) answers early only with assignments
    // or cancels (Engine::DispatchFor), which are attempts placed on its container: a
    // container with none placed sleeps through every other commit. Thousands of idle
    // containers then cost nothing per commit (issue 16).
    o.change_concerns = [e](const std::string& path) {
      constexpr std::string_view kPrefix = "/v1/containers/", kSuffix = "/poll";
      std::string_view p = path;
      if (p.size() <= kPrefix.size() + kSuffix.size() || !p.starts_with(kPrefix) ||
          !p.ends_with(kSuffix)) {
        return true;
      }
      std::string id(p.substr(kPrefix.size(), p.size() - kPrefix.size() - kSuffix.size()));
      return e->Read([&](const engine::State& s) {
        auto it = s.containers.find(id);
        return it == s.containers.end() || !it->second.attempts.empty();
      });
    };
    return o;
  }

  using Handler = std::function<void(const Request&, Response&)>;
  void Get(const std::string& pattern, Handler h) { http.Route("GET", pattern, std::move(h)); }
  void Post(const std::string& pattern, Handler h) { http.Route("POST", pattern, std::move(h)); }
  void Delete(const std::string& pattern, Handler h) {
    http.Route("DELETE", pattern, std::move(h));
  }

  // Wraps a handler: exceptions become 500s, requests are counted and logged.
  Handler Wrap(std::string route, Handler h) {
    return [this, route = std::move(route), h = std::move(h)](const Request& req, Response& res) {
      auto t0 = std::chrono::steady_clock::now();
      try {
        h(req, res);
      } catch (const std::exception& e) {
        spdlog::error("{} {}: unhandled exception: {}", req.method, req.path, e.what());
        res = Response{};
        WriteError(res, {500, "internal", std::string("internal error: ") + e.what(), {}});
      }
      auto us = std::chrono::duration_cast<std::chrono::microseconds>(
                    std::chrono::steady_clock::now() - t0)
                    .count();
      {
        MutexLock lock(&metrics_mu);
        requests[{route, res.status}]++;
      }
      spdlog::debug("http {} {} route={} status={} duration_us={}{}", req.method, req.path, route,
                    res.status, us,
                    res.streaming()  ? " (stream)"
                    : res.deferred() ? " (long poll)"
                                     : "");
    };
  }

  void Routes();
  void HaRouting();
  std::string LeaderAddress();
  // The route groups, one file each (api/routes_*.cc); Routes() adds them in order.
  void OpsRoutes();        // api/routes_ops.cc
  void WorkflowRoutes();   // api/routes_workflows.cc
  void ArtifactRoutes();   // api/routes_artifacts.cc
  void AuditRoutes();      // api/routes_ops.cc
  void CacheRoutes();      // api/routes_cache.cc
  void RunsRoutes();       // api/routes_runs.cc
  void LogRoutes();        // api/routes_logs.cc
  void MetricsRoutes();    // api/routes_metrics.cc
  void EventRoutes();      // api/routes_events.cc
  void ContainerRoutes();  // api/routes_containers.cc
  void SessionRoutes();    // api/routes_session.cc

  // Who made this request (authenticated before routing).
  static const Principal& Caller() { return t_caller; }
  std::string Actor(const Request&) { return Caller().Actor(); }
  // Authenticates and authorises a request; false (with the 401/403 written) to stop it.
  bool Admit(const Request& req, Response& res);
  // The principal of a request that carries a session cookie (`secret`) and no token:
  // its token's, while the session and the token live; anything but a GET also needs
  // the session's CSRF token in X-CSRF-Token.
  Result<Principal> SessionCaller(const Request& req, const std::string& secret);
  // What `p` may see, for the engine's views (engine/views.h): null for those who see
  // every tenant, else their own tenant's.
  static engine::TenantFilter Visible(const Principal& p = Caller()) {
    if (p.SeesAllTenants()) return nullptr;
    return [p](const std::string& tenant) { return p.Sees(tenant); };
  }

  // A stream slot for the caller, or null with a 429 written naming the cap.
  std::shared_ptr<StreamSlots::Slot> AcquireStream(Response& res) {
    const Principal& p = Caller();
    std::string refused;
    auto slot = streams.Acquire(p.token_id.empty() ? p.Actor() : p.token_id, p.Actor(), &refused);
    if (!slot) WriteError(res, {429, "too_many_streams", refused, {}});
    return slot;
  }

  // One read of an event stream: what was read past the cursor, and whether more is
  // there already (a full page).
  struct EventPage {
    std::vector<storage::Envelope> events;
    bool more = false;
  };
  // Reads on from where its last call stopped (it owns its cursor).
  using Fetch = std::function<Result<EventPage>()>;
  using Keep = std::function<bool(const storage::Envelope&)>;
  // Streams SSE with the events `fetch` reads that `keep` (all when null) until
  // `done()` (checked before each read, so the last events are sent) or the client
  // leaves. A page per call: the next is read only once the last one is written.
  void StreamEvents(Response& res, std::shared_ptr<StreamSlots::Slot> slot, Fetch fetch,
                    std::function<bool()> done, Keep keep = nullptr);
  // Where a follow of a run's stream resumes: after Last-Event-ID, else after ?after=
  // (0: from the start). Fills *err on a malformed one.
  Result<uint64_t> ResumeAfter(const Request& req, HttpError* err);
  // Reads `stream` from its start, a page per call (a version cursor: each read starts
  // after the last version read), keeping the events past position `after`.
  Fetch FollowStream(std::string stream, uint64_t after);
  // Every event of `stream` past position `after` that `keep` keeps (all when null),
  // read a page at a time.
  Result<std::vector<storage::Envelope>> ReadStreamAfter(const std::string& stream, uint64_t after,
                                                         const Keep& keep = nullptr);
  // Streams a step's log as SSE (one "log" event a line) from byte `from`, until its
  // attempt has finished and everything was sent ("end").
  void FollowLog(Response& res, const std::string& path, const std::string& attempt_id,
                 uint64_t from);
};

}  // namespace epoch::api
