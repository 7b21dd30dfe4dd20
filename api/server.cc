#include "api/server.h"

#include <httplib.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <limits>
#include <map>
#include <mutex>
#include <sstream>
#include <thread>

#include "api/auth.h"
#include "common/files.h"

namespace epoch::api {

using engine::Engine;
using httplib::Request;
using httplib::Response;

namespace {

constexpr int kMaxPageSize = 1000;

// An error that ends a request: HTTP status, machine code, message, details.
struct HttpError {
  int status;
  std::string code;
  std::string message;
  std::vector<std::string> details;
};

void WriteError(Response& res, const HttpError& e) {
  Json details = Json::array();
  for (const auto& d : e.details) details.push_back(d);
  res.status = e.status;
  // CanonicalDump, not dump(): messages quote the request (query values, path segments,
  // headers, bodies), which need not be UTF-8, and dump() would throw (a 500) on them.
  Json body{{"error", Json{{"code", e.code}, {"message", e.message}, {"details", details}}}};
  res.set_content(CanonicalDump(body), "application/json");
}

// Maps an engine/store Status to HTTP. kInvalidArgument from the engine means
// the request was well-formed but its content is invalid: 422.
HttpError FromStatus(const Status& st) {
  switch (st.code()) {
    case StatusCode::kInvalidArgument: return {422, "invalid", st.message(), st.details()};
    case StatusCode::kNotFound: return {404, "not_found", st.message(), st.details()};
    case StatusCode::kConflict: return {409, "conflict", st.message(), st.details()};
    case StatusCode::kFailedPrecondition:
      return {409, "failed_precondition", st.message(), st.details()};
    case StatusCode::kUnavailable:
      return {503, engine::IsCorruptHistory(st) ? std::string(engine::kCorruptHistoryCode)
                                                : "unavailable",
              st.message(), st.details()};
    case StatusCode::kResourceExhausted:
      return {429, "resource_exhausted", st.message(), st.details()};
    case StatusCode::kUnauthenticated: return {401, "unauthenticated", st.message(), {}};
    case StatusCode::kPermissionDenied: return {403, "permission_denied", st.message(), {}};
    case StatusCode::kCorruption: return {500, "corruption", st.message(), st.details()};
    default: return {500, "internal", st.message(), st.details()};
  }
}

// The container protocol's errors carry codes the agent acts on: re-register on
// "unknown_container", exit on "released".
HttpError ContainerError(const Status& st) {
  HttpError e = FromStatus(st);
  if (st.code() == StatusCode::kNotFound) e.code = "unknown_container";
  if (st.code() == StatusCode::kFailedPrecondition) e.code = "released";
  return e;
}

void WriteJson(Response& res, int status, const Json& j) {
  res.status = status;
  res.set_content(CanonicalDump(j), "application/json");
}

// Parses a JSON request body: 415 for another content type, 400 for bad JSON.
Result<Json> ParseBody(const Request& req, HttpError* err, bool allow_empty = false) {
  if (req.body.empty() && allow_empty) return Json::object();
  std::string ct = req.get_header_value("Content-Type");
  std::string lower = ct;
  std::transform(lower.begin(), lower.end(), lower.begin(), ::tolower);
  if (lower.rfind("application/json", 0) != 0) {
    *err = {415, "unsupported_media_type",
            "Content-Type must be application/json" + (ct.empty() ? "" : ", got '" + ct + "'"),
            {}};
    return InvalidArgument("content type");
  }
  auto j = ParseJson(req.body, 64);
  if (!j.ok()) {
    *err = {400, "malformed", j.status().message(), {}};
    return j.status();
  }
  if (!j->is_object()) {
    *err = {400, "malformed", "the request body must be a JSON object", {}};
    return InvalidArgument("not an object");
  }
  return j;
}

// Query parameter helpers; bad values are 400s naming the parameter.
Result<int64_t> QueryInt(const Request& req, const char* name, int64_t def, int64_t min,
                         int64_t max, HttpError* err) {
  if (!req.has_param(name)) return def;
  std::string v = req.get_param_value(name);
  try {
    size_t used = 0;
    int64_t n = std::stoll(v, &used);
    if (used == v.size() && n >= min && n <= max) return n;
  } catch (const std::exception&) {
  }
  *err = {400, "bad_parameter",
          std::string("query parameter '") + name + "' must be an integer in [" +
              std::to_string(min) + ", " + std::to_string(max) + "], got '" + v + "'",
          {}};
  return InvalidArgument(name);
}

bool QueryBool(const Request& req, const char* name) {
  if (!req.has_param(name)) return false;
  std::string v = req.get_param_value(name);
  return v == "true" || v == "1" || v == "yes";
}

std::vector<std::string> SplitComma(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

Json EnvelopeToJson(const storage::Envelope& e) {
  auto data = ParseJson(e.data, 256);
  return Json{{"position", e.position}, {"stream", e.stream},   {"version", e.version},
              {"type", e.type},         {"schema", e.schema},   {"time", e.time},
              {"epoch", e.epoch},       {"actor", e.actor},
              {"data", data.ok() ? *data : Json(e.data)},
              {"prev_hash", e.prev_hash}, {"hash", e.hash}};
}

std::string SseEvent(const storage::Envelope& e) {
  return "id: " + std::to_string(e.position) + "\nevent: " + e.type +
         "\ndata: " + CanonicalDump(EnvelopeToJson(e)) + "\n\n";
}

std::string EscapeLabel(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out;
}

}  // namespace

// The caller of the request this pool thread is handling: set by the pre-routing
// handler (which authenticates every request), read by the handlers after it.
thread_local Principal t_caller;

struct ApiServer::Impl {
  Config config;
  Engine* engine;
  storage::EventStore* store;
  IdGenerator* ids;
  const Clock* clock;
  std::unique_ptr<httplib::Server> server;  // an SSLServer unless config.plain_http
  httplib::Server& http;
  std::thread thread;
  std::atomic<bool> stopping{false};
  std::atomic<int> streams{0};
  std::unique_ptr<TokenStore> tokens;  // set by Bind

  std::mutex metrics_mu;
  std::map<std::pair<std::string, int>, uint64_t> requests;  // (route, status) -> count

  Impl(Config c, Engine* e, storage::EventStore* s, IdGenerator* i, const Clock* k)
      : config(std::move(c)),
        engine(e),
        store(s),
        ids(i),
        clock(k),
        server(config.plain_http ? std::make_unique<httplib::Server>()
                                 : std::make_unique<httplib::SSLServer>(
                                       config.tls_certificate.c_str(), config.tls_key.c_str())),
        http(*server) {}

  using Handler = std::function<void(const Request&, Response&)>;

  // Wraps a handler: exceptions become 500s, requests are counted and logged.
  Handler Wrap(std::string route, Handler h) {
    return [this, route = std::move(route), h = std::move(h)](const Request& req, Response& res) {
      auto t0 = std::chrono::steady_clock::now();
      try {
        h(req, res);
      } catch (const std::exception& e) {
        spdlog::error("{} {}: unhandled exception: {}", req.method, req.path, e.what());
        WriteError(res, {500, "internal", std::string("internal error: ") + e.what(), {}});
      }
      auto us = std::chrono::duration_cast<std::chrono::microseconds>(
                    std::chrono::steady_clock::now() - t0)
                    .count();
      {
        std::lock_guard<std::mutex> lock(metrics_mu);
        requests[{route, res.status}]++;
      }
      spdlog::debug("http {} {} route={} status={} duration_us={}", req.method, req.path, route,
                    res.status, us);
    };
  }

  void Routes();
  void HaRouting();
  std::string LeaderAddress();
  void RunsRoutes();
  void ContainerRoutes();
  void EventRoutes();
  void OpsRoutes();

  // Who made this request (authenticated before routing).
  static const Principal& Caller() { return t_caller; }
  std::string Actor(const Request&) { return Caller().Actor(); }
  // Authenticates and authorises a request; false (with the 401/403 written) to stop it.
  bool Admit(const Request& req, Response& res);
  // Tenants: the owner of a workflow name (empty if unknown) and of a run.
  static std::string WorkflowTenant(const engine::State& s, const std::string& name) {
    auto it = s.workflows.find(name);
    return it == s.workflows.end() || it->second.empty() ? "" : it->second.front().tenant;
  }
  // A data set or model version belongs to the tenant of the run that made it.
  static bool SeesArtifact(const engine::State& s, const engine::ArtifactVersion& v) {
    return SeesRun(s, v.run);
  }
  static bool SeesRun(const engine::State& s, const std::string& run_id,
                      const Principal& p = Caller()) {
    const engine::Run* r = s.FindRun(run_id);
    return r && p.Sees(r->tenant);
  }
  // An event `p` may read: admins and auditors all; others only their tenant's
  // runs and workflows.
  static bool SeesEvent(const engine::State& s, const storage::Envelope& e, const Principal& p) {
    if (p.SeesAllTenants()) return true;
    if (e.stream.rfind("run-", 0) == 0) return SeesRun(s, e.stream.substr(4), p);
    if (e.stream.rfind("workflow-", 0) == 0) {
      std::string owner = WorkflowTenant(s, e.stream.substr(9));
      return !owner.empty() && p.Sees(owner);
    }
    return false;
  }

  // Streams SSE with the events from `fetch(after)` that `keep` (all when null)
  // until `done()` or disconnect; the cursor moves past the ones not kept too.
  using Keep = std::function<bool(const storage::Envelope&)>;
  void StreamEvents(Response& res, uint64_t after,
                    std::function<Result<std::vector<storage::Envelope>>(uint64_t)> fetch,
                    std::function<bool()> done, Keep keep = nullptr);
};

void ApiServer::Impl::Routes() {
  http.set_tcp_nodelay(true);
  // httplib closes a keep-alive connection after 5 requests by default; clients
  // that reuse connections (epochctl, agents, load) would see spurious errors.
  http.set_keep_alive_max_count(1000000);
  // An idle keep-alive connection holds a pool thread, and a stopping server waits for
  // it to time out: short, so that SIGTERM stops epochd within a few seconds (agents
  // poll continuously; clients reconnect transparently).
  http.set_keep_alive_timeout(2);
  http.set_payload_max_length(config.max_body_bytes);
  http.set_read_timeout(std::chrono::seconds(30));
  http.set_write_timeout(std::chrono::seconds(30));
  int threads = config.threads + config.max_streams + config.max_replicas * 2;
  http.new_task_queue = [threads] { return new httplib::ThreadPool(static_cast<size_t>(threads)); };
  // httplib calls this for every status >= 400; only fill in bodies it left empty.
  http.set_error_handler([](const Request& req, Response& res) {
    if (!res.body.empty()) return;
    if (res.status == 413) {
      WriteError(res, {413, "too_large", "the request body is larger than api.maxBodyBytes", {}});
    } else if (res.status == 404) {
      WriteError(res, {404, "not_found", "no route for " + req.method + " " + req.path, {}});
    } else if (res.status == 400) {
      WriteError(res, {400, "malformed",
                       "malformed HTTP request (bad request line or headers, or headers over "
                       "8 KiB)",
                       {}});
    } else if (res.status == 405) {
      WriteError(res, {405, "method_not_allowed", req.method + " is not allowed here", {}});
    } else if (res.body.empty()) {
      WriteError(res, {res.status, "error", "HTTP " + std::to_string(res.status), {}});
    }
  });
  HaRouting();
  OpsRoutes();
  RunsRoutes();
  EventRoutes();
  ContainerRoutes();
}

// The leader's address as this master knows it: leader.json on the shared data
// dir (written by each new leader), else the last LeaderElected it applied.
// Empty when that is this master itself (it is not leading) or unknown.
std::string ApiServer::Impl::LeaderAddress() {
  const std::string& self = engine->options().advertise_url;
  auto text = ReadFile(config.data_dir + "/leader.json", 1 << 16);
  if (text.ok()) {
    auto j = ParseJson(*text);
    if (j.ok() && j->is_object() && (*j)["address"].is_string()) {
      std::string a = (*j)["address"];
      if (!a.empty() && a != self) return a;
    }
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
  auto who = tokens->Authenticate(req.get_header_value("Authorization"));
  Status st = who.ok() ? Authorize(*who, access) : who.status();
  if (!st.ok()) {
    if (st.code() == StatusCode::kUnauthenticated) {
      res.set_header("WWW-Authenticate", "Bearer realm=\"epoch\"");
    }
    WriteError(res, FromStatus(st));
    std::lock_guard<std::mutex> lock(metrics_mu);
    requests[{"auth", res.status}]++;
    return false;
  }
  t_caller = std::move(*who);
  return true;
}

void ApiServer::Impl::HaRouting() {
  http.set_pre_routing_handler([this](const Request& req, Response& res) {
    if (!Admit(req, res)) return httplib::Server::HandlerResponse::Handled;
    if (req.method == "GET" || req.method == "HEAD") return httplib::Server::HandlerResponse::Unhandled;
    engine::Role role = engine->role();
    if (role == engine::Role::kLeader) return httplib::Server::HandlerResponse::Unhandled;
    std::string leader = LeaderAddress();
    std::string what = "this master is " + std::string(engine::Name(role)) + ", not the leader";
    if (!leader.empty() && role != engine::Role::kPromoting) {
      res.set_header("Location", leader + req.target);
      WriteError(res, {307, "not_leader", what + "; the leader is " + leader, {leader}});
      res.status = 307;
    } else {
      res.set_header("Retry-After", "1");
      WriteError(res, {503, "not_leader",
                       what + (role == engine::Role::kPromoting
                                   ? "; it is taking over, retry in a moment"
                                   : "; no leader is known (an election is in progress)"),
                       {}});
    }
    std::lock_guard<std::mutex> lock(metrics_mu);
    requests[{"not_leader", res.status}]++;
    return httplib::Server::HandlerResponse::Handled;
  });
  http.set_post_routing_handler([this](const Request&, Response& res) {
    res.set_header("Epoch-Role", std::string(engine::Name(engine->role())));
    res.set_header("Epoch-Position",
                   std::to_string(engine->Read([](const engine::State& s) { return s.head; })));
  });
}

void ApiServer::Impl::OpsRoutes() {
  http.Get("/healthz", Wrap("/healthz", [](const Request&, Response& res) {
             WriteJson(res, 200, Json{{"status", "ok"}});
           }));
  http.Get("/readyz", Wrap("/readyz", [this](const Request&, Response& res) {
             bool ready = engine->ready() && engine->healthy();
             std::string role(engine::Name(engine->role()));
             if (!engine->healthy()) role = "failed";
             if (engine->corrupt_history()) role = engine::kCorruptHistoryCode;
             WriteJson(res, ready ? 200 : 503,
                       Json{{"ready", ready}, {"role", role}, {"epoch", engine->epoch()}});
           }));
  http.Get("/v1/cluster", Wrap("/v1/cluster", [this](const Request&, Response& res) {
             storage::HeadInfo head = store->Head();
             engine::Role role = engine->role();
             Json leader;
             if (role == engine::Role::kLeader) {
               leader = Json{{"address", engine->options().advertise_url},
                             {"node", config.master_name}};
             } else {
               auto [node, address] = engine->Read([](const engine::State& s) {
                 return std::make_pair(s.leader_node, s.leader_address);
               });
               std::string known = LeaderAddress();
               leader = Json{{"address", known.empty() ? Json(nullptr) : Json(known)},
                             {"node", known == address ? Json(node) : Json(nullptr)}};
             }
             uint64_t applied = engine->Read([](const engine::State& s) { return s.head; });
             Json j{{"role", std::string(engine::Name(role))},
                    {"node", config.master_name},
                    {"address", engine->options().advertise_url},
                    {"epoch", engine->epoch()},
                    {"leader", leader},
                    {"applied_position", applied},
                    {"deposed_reason", engine->deposed_reason()},
                    {"mode", engine->corrupt_history() ? "corrupt_history" : "normal"},
                    {"history", engine::HistoryCheckToJson(engine->history())},
                    {"head", Json{{"position", head.position}, {"hash", head.hash}}},
                    {"store_bytes", store->ApproximateSizeBytes()},
                    {"data_dir", config.data_dir},
                    {"ready", engine->ready()},
                    {"config", config.ToJson()}};
             WriteJson(res, 200, j);
           }));
  http.Get("/metrics", Wrap("/metrics", [this](const Request&, Response& res) {
             std::ostringstream o;
             std::map<std::string, int> runs, attempts, containers;
             size_t queue = 0;
             engine->Read([&](const engine::State& s) {
               for (const auto& [id, r] : s.runs) {
                 runs[std::string(engine::Name(r.phase))]++;
                 for (const auto& st : r.steps) {
                   for (const auto& a : st.attempts) attempts[std::string(engine::Name(a.phase))]++;
                 }
               }
               for (const auto& [id, c] : s.containers) {
                 containers[std::string(engine::Name(c.phase))]++;
               }
               queue = s.queue.size();
               return 0;
             });
             o << "# HELP epoch_runs Runs by state.\n# TYPE epoch_runs gauge\n";
             for (auto st : {"queued", "running", "succeeded", "failed", "cancelled"}) {
               o << "epoch_runs{state=\"" << st << "\"} " << runs[st] << "\n";
             }
             o << "# HELP epoch_jobs Job attempts by state.\n# TYPE epoch_jobs gauge\n";
             for (auto st : {"queued", "assigned", "running", "succeeded", "failed", "timed_out",
                             "cancelled", "lost"}) {
               o << "epoch_jobs{state=\"" << st << "\"} " << attempts[st] << "\n";
             }
             o << "# HELP epoch_api_streams Open SSE streams (api.maxStreams allowed).\n"
                  "# TYPE epoch_api_streams gauge\nepoch_api_streams "
               << streams.load() << "\n";
             o << "# HELP epoch_queue_length Attempts waiting for a container.\n"
                  "# TYPE epoch_queue_length gauge\nepoch_queue_length "
               << queue << "\n";
             o << "# HELP epoch_containers Containers by state.\n# TYPE epoch_containers gauge\n";
             for (auto st : {"requested", "registered", "lost", "released"}) {
               o << "epoch_containers{state=\"" << st << "\"} " << containers[st] << "\n";
             }
             const auto& stats = engine->stats();
             o << "# HELP epoch_events_appended_total Events appended by this master.\n"
                  "# TYPE epoch_events_appended_total counter\nepoch_events_appended_total "
               << stats.events_appended.load() << "\n";
             o << "# HELP epoch_commits_total Synced group commits.\n"
                  "# TYPE epoch_commits_total counter\nepoch_commits_total "
               << stats.commits.load() << "\n";
             o << "# HELP epoch_append_latency_seconds Latency of synced appends.\n"
                  "# TYPE epoch_append_latency_seconds histogram\n";
             uint64_t cum = 0;
             for (int b = 0; b < engine::EngineStats::kBuckets; ++b) {
               cum += stats.latency_buckets[b].load();
               o << "epoch_append_latency_seconds_bucket{le=\""
                 << engine::EngineStats::kBoundsUs[b] / 1e6 << "\"} " << cum << "\n";
             }
             cum += stats.latency_buckets[engine::EngineStats::kBuckets].load();
             o << "epoch_append_latency_seconds_bucket{le=\"+Inf\"} " << cum << "\n";
             o << "epoch_append_latency_seconds_sum " << stats.latency_sum_us.load() / 1e6 << "\n";
             o << "epoch_append_latency_seconds_count " << stats.latency_count.load() << "\n";
             o << "# HELP epoch_http_requests_total HTTP requests by route and status.\n"
                  "# TYPE epoch_http_requests_total counter\n";
             {
               std::lock_guard<std::mutex> lock(metrics_mu);
               for (const auto& [k, n] : requests) {
                 o << "epoch_http_requests_total{route=\"" << EscapeLabel(k.first)
                   << "\",code=\"" << k.second << "\"} " << n << "\n";
               }
             }
             res.set_content(o.str(), "text/plain; version=0.0.4");
           }));
}

void ApiServer::Impl::RunsRoutes() {
  http.Post("/v1/workflows", Wrap("/v1/workflows", [this](const Request& req, Response& res) {
              HttpError err;
              auto body = ParseBody(req, &err);
              if (!body.ok()) return WriteError(res, err);
              engine::RegisterWorkflow cmd{*body, Actor(req), Caller().tenant, ""};
              cmd.any_tenant = Caller().role == Role::kAdmin;
              cmd.idempotency_key = req.get_header_value("Idempotency-Key");
              if (cmd.idempotency_key.size() > 256) {
                return WriteError(res, {400, "malformed", "Idempotency-Key: at most 256 bytes", {}});
              }
              auto r = engine->Execute(std::move(cmd));
              if (!r.ok()) return WriteError(res, FromStatus(r.status()));
              WriteJson(res, r->created ? 201 : 200,
                        Json{{"name", r->id}, {"version", r->version}, {"digest", r->digest}});
            }));
  http.Get("/v1/workflows", Wrap("/v1/workflows", [this](const Request&, Response& res) {
             Json items = Json::array();
             engine->Read([&](const engine::State& s) {
               for (const auto& [name, versions] : s.workflows) {
                 if (!Caller().Sees(versions.front().tenant)) continue;
                 const auto& v = versions.back();
                 items.push_back(Json{{"name", name},
                                      {"version", v.version},
                                      {"digest", v.digest},
                                      {"versions", versions.size()},
                                      {"steps", v.def->steps.size()},
                                      {"tenant", versions.front().tenant},
                                      {"registered_at", FormatTime(v.registered_at)}});
               }
               return 0;
             });
             WriteJson(res, 200, Json{{"items", items}, {"next_cursor", nullptr}});
           }));
  auto get_workflow = [this](const Request& req, Response& res) {
    std::string name = req.matches[1];
    int version = 0;
    if (req.matches.size() > 2 && req.matches[2].matched) {
      try {
        version = std::stoi(req.matches[2]);
      } catch (const std::exception&) {
        return WriteError(res, {400, "bad_parameter", "version must be an integer", {}});
      }
      if (version < 1) return WriteError(res, {400, "bad_parameter", "version must be >= 1", {}});
    }
    Json out;
    bool found = engine->Read([&](const engine::State& s) {
      const engine::WorkflowVersion* v = s.FindWorkflow(name, version);
      if (!v || !Caller().Sees(WorkflowTenant(s, name))) return false;
      out = Json{{"name", name},
                 {"version", v->version},
                 {"digest", v->digest},
                 {"definition", v->def->source},
                 {"registered_at", FormatTime(v->registered_at)},
                 {"registered_by", v->actor},
                 {"tenant", WorkflowTenant(s, name)},
                 {"versions", s.workflows.at(name).size()}};
      return true;
    });
    if (!found) {
      return WriteError(res, {404, "not_found",
                              "workflow '" + name + "'" +
                                  (version ? " version " + std::to_string(version) : "") +
                                  " not found",
                              {}});
    }
    WriteJson(res, 200, out);
  };
  http.Get(R"(/v1/workflows/([^/]+))", Wrap("/v1/workflows/{name}", get_workflow));
  http.Get(R"(/v1/workflows/([^/]+)/versions/([^/]+))",
           Wrap("/v1/workflows/{name}/versions/{v}", get_workflow));

  // Lineage: data sets and models, each version with what produced it.
  for (bool model : {false, true}) {
    std::string base = model ? "/v1/models" : "/v1/datasets";
    auto all = [model](const engine::State& s) -> const auto& {
      return model ? s.models : s.datasets;
    };
    http.Get(base, Wrap(base, [this, all, model](const Request&, Response& res) {
               Json items = Json::array();
               engine->Read([&](const engine::State& s) {
                 for (const auto& [name, versions] : all(s)) {
                   const engine::ArtifactVersion* last = nullptr;
                   size_t visible = 0;
                   for (const auto& v : versions) {
                     if (!SeesArtifact(s, v)) continue;
                     last = &v;
                     ++visible;
                   }
                   if (!last) continue;
                   Json latest = engine::ArtifactToJson(name, *last, model);
                   latest["versions"] = visible;
                   items.push_back(std::move(latest));
                 }
                 return 0;
               });
               WriteJson(res, 200, Json{{"items", items}, {"next_cursor", nullptr}});
             }));
    auto one = [this, all, model](const Request& req, Response& res) {
      std::string name = req.matches[1];
      int version = 0;
      if (req.matches.size() > 2 && req.matches[2].matched) {
        try {
          version = std::stoi(req.matches[2]);
        } catch (const std::exception&) {
          version = -1;
        }
        if (version < 1) {
          return WriteError(res, {400, "bad_parameter", "version must be an integer >= 1", {}});
        }
      }
      Json out;
      bool found = engine->Read([&](const engine::State& s) {
        auto it = all(s).find(name);
        if (it == all(s).end()) return false;
        if (version > static_cast<int>(it->second.size())) return false;
        if (version > 0) {
          const auto& v = it->second[static_cast<size_t>(version - 1)];
          if (!SeesArtifact(s, v)) return false;
          out = engine::ArtifactToJson(name, v, model);
          return true;
        }
        Json versions = Json::array();
        for (const auto& v : it->second) {
          if (SeesArtifact(s, v)) versions.push_back(engine::ArtifactToJson(name, v, model));
        }
        if (versions.empty()) return false;
        out = Json{{"name", name}, {"versions", versions}};
        return true;
      });
      if (!found) {
        return WriteError(res, {404, "not_found",
                                std::string(model ? "model '" : "data set '") + name + "'" +
                                    (version ? " version " + std::to_string(version) : "") +
                                    " not found",
                                {}});
      }
      WriteJson(res, 200, out);
    };
    http.Get(base + R"(/([^/]+))", Wrap(base + "/{name}", one));
    http.Get(base + R"(/([^/]+)/versions/([^/]+))", Wrap(base + "/{name}/versions/{v}", one));
  }

  // Audit: the hash chain, walked from the first event (or a trusted checkpoint
  // `from=P&hash=H`); `against=P:H` also proves the history up to P is the one whose
  // hash at P was recorded. The answer is 200 either way: "ok" says.
  http.Get("/v1/audit/verify", Wrap("/v1/audit/verify", [this](const Request& req, Response& res) {
             HttpError err;
             auto from = QueryInt(req, "from", 1, 1, std::numeric_limits<int64_t>::max(), &err);
             if (!from.ok()) return WriteError(res, err);
             std::string from_hash = req.get_param_value("hash");
             uint64_t against_pos = 0;
             std::string against_hash;
             if (req.has_param("against")) {
               std::string a = req.get_param_value("against");
               size_t colon = a.find(':');
               try {
                 size_t used = 0;
                 if (colon != std::string::npos) against_pos = std::stoull(a.substr(0, colon), &used);
                 if (colon == std::string::npos || used != colon) against_pos = 0;
               } catch (const std::exception&) {
                 against_pos = 0;
               }
               against_hash = colon == std::string::npos ? "" : a.substr(colon + 1);
               if (against_pos == 0 || against_hash.size() != 64) {
                 return WriteError(res, {400, "bad_parameter",
                                         "against: must be POSITION:HASH (a position >= 1 and 64 "
                                         "hex digits), as `epochctl audit checkpoint` prints",
                                         {}});
               }
             }
             auto t0 = std::chrono::steady_clock::now();
             auto report = store->VerifyChain(static_cast<uint64_t>(*from), from_hash);
             if (!report.ok()) return WriteError(res, FromStatus(report.status()));
             double ms = std::chrono::duration<double, std::milli>(
                             std::chrono::steady_clock::now() - t0).count();
             Json out{{"ok", report->ok},
                      {"from", report->from},
                      {"checked", report->checked},
                      {"head", Json{{"position", report->head_position},
                                    {"hash", report->ok ? Json(report->head_hash) : Json()}}},
                      {"elapsed_ms", std::round(ms * 10) / 10}};
             if (!report->ok) {
               out["bad_position"] = report->bad_position;
               out["problem"] = report->problem;
             }
             if (against_pos > 0) {
               Json a{{"position", against_pos}, {"hash", against_hash}};
               if (against_pos > report->head_position) {
                 a["ok"] = false;
                 a["problem"] = "the log ends at " + std::to_string(report->head_position) +
                                ", before the checkpoint";
               } else if (!report->ok && report->bad_position <= against_pos) {
                 a["ok"] = false;
                 a["problem"] = "the chain breaks at " + std::to_string(report->bad_position);
               } else {
                 auto at = store->ReadAt(against_pos);
                 a["ok"] = at.ok() && at->hash == against_hash;
                 if (!at.ok()) {
                   a["problem"] = at.status().message();
                 } else if (at->hash != against_hash) {
                   a["problem"] = "event " + std::to_string(against_pos) + " has hash " + at->hash +
                                  ": the history up to it was rewritten";
                 }
               }
               bool against_ok = a.value("ok", false);
               out["against"] = std::move(a);
               if (!against_ok) out["ok"] = false;
             }
             WriteJson(res, 200, out);
           }));

  // The step cache (engine/cache.h): entries, and forgetting them.
  http.Get("/v1/cache", Wrap("/v1/cache", [this](const Request& req, Response& res) {
             std::string workflow = req.get_param_value("workflow");
             std::string step = req.get_param_value("step");
             Json items = Json::array();
             engine->Read([&](const engine::State& s) {
               for (const auto& [key, e] : s.cache) {
                 if (!Caller().Sees(WorkflowTenant(s, e.workflow))) continue;
                 if (!workflow.empty() && e.workflow != workflow) continue;
                 if (!step.empty() && e.step != step) continue;
                 items.push_back(engine::CacheEntryToJson(key, e));
               }
               return 0;
             });
             WriteJson(res, 200, Json{{"items", items}, {"next_cursor", nullptr}});
           }));
  http.Post("/v1/cache/invalidate",
            Wrap("/v1/cache/invalidate", [this](const Request& req, Response& res) {
              HttpError err;
              auto body = ParseBody(req, &err);
              if (!body.ok()) return WriteError(res, err);
              engine::InvalidateCache cmd;
              cmd.actor = Actor(req);
              for (const auto& [k, v] : body->items()) {
                std::string* field = k == "key"        ? &cmd.key
                                     : k == "workflow" ? &cmd.workflow
                                     : k == "step"     ? &cmd.step
                                                       : nullptr;
                if (!field) {
                  return WriteError(res, {400, "malformed",
                                          k + ": unknown field (expected key, workflow, step)", {}});
                }
                if (!v.is_string() || v.get_ref<const std::string&>().empty()) {
                  return WriteError(res,
                                    {400, "malformed", k + ": must be a non-empty string", {}});
                }
                *field = v.get<std::string>();
              }
              // Only the caller's tenant's entries (the same 404s as for ones that do
              // not exist: another tenant's names are not disclosed).
              std::string hidden = engine->Read([&](const engine::State& s) -> std::string {
                if (!cmd.key.empty()) {
                  auto it = s.cache.find(cmd.key);
                  if (it != s.cache.end() && !Caller().Sees(WorkflowTenant(s, it->second.workflow))) {
                    return "cache key '" + cmd.key + "' has no entry";
                  }
                }
                if (!cmd.workflow.empty() && s.workflows.count(cmd.workflow) &&
                    !Caller().Sees(WorkflowTenant(s, cmd.workflow))) {
                  return "workflow '" + cmd.workflow + "' is not registered";
                }
                return "";
              });
              if (!hidden.empty()) return WriteError(res, {404, "not_found", hidden, {}});
              auto r = engine->Execute(cmd);
              if (!r.ok()) return WriteError(res, FromStatus(r.status()));
              WriteJson(res, 200, Json{{"invalidated", r->keys.size()}, {"keys", r->keys}});
            }));

  http.Post("/v1/runs", Wrap("/v1/runs", [this](const Request& req, Response& res) {
              HttpError err;
              auto body = ParseBody(req, &err);
              if (!body.ok()) return WriteError(res, err);
              const Json& b = *body;
              static const std::set<std::string> kFields{"workflow", "version", "params",
                                                         "labels",   "definition", "priority"};
              for (auto& [k, v] : b.items()) {
                if (!kFields.count(k)) {
                  return WriteError(res, {400, "malformed", k + ": unknown field", {}});
                }
              }
              engine::SubmitRun cmd;
              if (b.contains("definition")) {
                if (!b["definition"].is_object()) {
                  return WriteError(res, {400, "malformed", "definition: must be an object", {}});
                }
                cmd.definition = b["definition"];
              } else if (!b.contains("workflow") || !b["workflow"].is_string()) {
                return WriteError(res, {400, "malformed",
                                        "workflow: required string (or give a definition)", {}});
              } else {
                cmd.workflow = b["workflow"];
              }
              if (b.contains("version")) {
                if (!b["version"].is_number_integer() || b["version"].get<int64_t>() < 1) {
                  return WriteError(res, {400, "malformed", "version: must be an integer >= 1", {}});
                }
                cmd.version = b["version"];
              }
              if (b.contains("params")) {
                if (!b["params"].is_object()) {
                  return WriteError(res, {400, "malformed", "params: must be an object", {}});
                }
                cmd.params = b["params"];
              }
              if (b.contains("labels")) {
                if (!b["labels"].is_object()) {
                  return WriteError(res, {400, "malformed", "labels: must be an object", {}});
                }
                for (auto& [k, v] : b["labels"].items()) {
                  if (!v.is_string()) {
                    return WriteError(res,
                                      {400, "malformed", "labels." + k + ": must be a string", {}});
                  }
                }
                cmd.labels = b["labels"];
              }
              if (b.contains("priority")) {
                if (!b["priority"].is_number_integer() || b["priority"].get<int64_t>() < -1000 ||
                    b["priority"].get<int64_t>() > 1000) {
                  return WriteError(res, {400, "malformed",
                                          "priority: must be an integer in [-1000, 1000]", {}});
                }
                cmd.priority = b["priority"];
              }
              cmd.idempotency_key = req.get_header_value("Idempotency-Key");
              if (cmd.idempotency_key.size() > 256) {
                return WriteError(res, {400, "malformed", "Idempotency-Key: at most 256 bytes", {}});
              }
              cmd.submitter = Actor(req);
              cmd.tenant = Caller().tenant;
              cmd.any_tenant = Caller().role == Role::kAdmin;
              cmd.run_id = ids->NewId("r", clock->Now());
              auto r = engine->Execute(cmd);
              if (!r.ok()) return WriteError(res, FromStatus(r.status()));
              Json run;
              engine->Read([&](const engine::State& s) {
                const engine::Run* found = s.FindRun(r->id);
                if (found) run = engine::RunToJson(*found, engine->options().config, &s);
                return 0;
              });
              res.set_header("Location", "/v1/runs/" + r->id);
              WriteJson(res, r->created ? 201 : 200, run);
            }));

  http.Get("/v1/runs", Wrap("/v1/runs", [this](const Request& req, Response& res) {
             HttpError err;
             auto limit = QueryInt(req, "limit", 100, 1, kMaxPageSize, &err);
             if (!limit.ok()) return WriteError(res, err);
             auto cursor = QueryInt(req, "cursor", 0, 0, INT64_MAX, &err);
             if (!cursor.ok()) return WriteError(res, err);
             std::string state = req.get_param_value("state");
             std::string workflow = req.get_param_value("workflow");
             // label=k=v, repeatable: a run must carry every one.
             std::vector<std::pair<std::string, std::string>> labels;
             auto range = req.params.equal_range("label");
             for (auto it = range.first; it != range.second; ++it) {
               auto eq = it->second.find('=');
               if (eq == std::string::npos || eq == 0) {
                 return WriteError(res, {400, "bad_parameter",
                                         "label must be key=value, got '" + it->second + "'", {}});
               }
               labels.push_back({it->second.substr(0, eq), it->second.substr(eq + 1)});
             }
             static const std::set<std::string> kStates{"queued", "running", "succeeded", "failed",
                                                        "cancelled"};
             if (!state.empty() && !kStates.count(state)) {
               return WriteError(res, {400, "bad_parameter", "state must be one of queued, "
                                       "running, succeeded, failed, cancelled", {}});
             }
             Json items = Json::array();
             Json next = nullptr;
             engine->Read([&](const engine::State& s) {
               auto it = *cursor > 0 ? s.runs_by_seq.lower_bound(static_cast<uint64_t>(*cursor))
                                     : s.runs_by_seq.end();
               while (it != s.runs_by_seq.begin()) {
                 --it;
                 const engine::Run& r = s.runs.at(it->second);
                 if (!Caller().Sees(r.tenant)) continue;
                 if (!state.empty() && engine::Name(r.phase) != state) continue;
                 if (!workflow.empty() && r.workflow != workflow) continue;
                 bool match = true;
                 for (const auto& [k, v] : labels) {
                   auto l = r.labels.find(k);
                   if (l == r.labels.end() || !l->is_string() || l->get<std::string>() != v) {
                     match = false;
                   }
                 }
                 if (!match) continue;
                 if (static_cast<int64_t>(items.size()) == *limit) {
                   next = std::to_string(it->first + 1);
                   break;
                 }
                 Json j = engine::RunToJson(r, engine->options().config, &s);
                 items.push_back(std::move(j));
               }
               return 0;
             });
             WriteJson(res, 200, Json{{"items", items}, {"next_cursor", next}});
           }));
  http.Get(R"(/v1/runs/([^/]+))", Wrap("/v1/runs/{id}", [this](const Request& req, Response& res) {
             std::string id = req.matches[1];
             Json run;
             bool found = engine->Read([&](const engine::State& s) {
               const engine::Run* r = s.FindRun(id);
               if (!r || !Caller().Sees(r->tenant)) return false;
               run = engine::RunToJson(*r, engine->options().config, &s);
               return true;
             });
             if (!found) return WriteError(res, {404, "not_found", "run '" + id + "' not found", {}});
             WriteJson(res, 200, run);
           }));
  auto run_command = [this](bool cancel) {
    return [this, cancel](const Request& req, Response& res) {
      HttpError err;
      auto body = ParseBody(req, &err, /*allow_empty=*/true);
      if (!body.ok()) return WriteError(res, err);
      std::string id = req.matches[1];
      if (!engine->Read([&](const engine::State& s) { return SeesRun(s, id); })) {
        return WriteError(res, {404, "not_found", "run '" + id + "' not found", {}});
      }
      Result<engine::CommandResult> r =
          cancel ? engine->Execute(engine::CancelRun{id, Actor(req)})
                 : engine->Execute(engine::RetryRun{id, Actor(req)});
      if (!r.ok()) return WriteError(res, FromStatus(r.status()));
      Json run;
      engine->Read([&](const engine::State& s) {
        const engine::Run* found = s.FindRun(id);
        if (found) run = engine::RunToJson(*found, engine->options().config, &s);
        return 0;
      });
      WriteJson(res, 202, run);
    };
  };
  http.Post(R"(/v1/runs/([^/]+)/cancel)", Wrap("/v1/runs/{id}/cancel", run_command(true)));
  http.Post(R"(/v1/runs/([^/]+)/retry)", Wrap("/v1/runs/{id}/retry", run_command(false)));

  http.Get(R"(/v1/runs/([^/]+)/steps/([^/]+)/logs)",
           Wrap("/v1/runs/{id}/steps/{step}/logs", [this](const Request& req, Response& res) {
             std::string id = req.matches[1], step = req.matches[2];
             HttpError err;
             auto attempt_q = QueryInt(req, "attempt", 0, 0, 1000000, &err);
             if (!attempt_q.ok()) return WriteError(res, err);
             int attempt = 0;
             std::string problem;
             engine->Read([&](const engine::State& s) {
               const engine::Run* r = s.FindRun(id);
               if (!r || !Caller().Sees(r->tenant)) return problem = "run '" + id + "' not found", 0;
               const engine::StepRun* st = r->FindStep(step);
               if (!st) return problem = "run '" + id + "' has no step '" + step + "'", 0;
               if (st->attempts.empty()) return problem = "step '" + step + "' has not run yet", 0;
               attempt = *attempt_q ? static_cast<int>(*attempt_q) : st->attempts.back().number;
               if (attempt > static_cast<int>(st->attempts.size())) {
                 problem = "step '" + step + "' has no attempt " + std::to_string(attempt);
               }
               return 0;
             });
             if (!problem.empty()) return WriteError(res, {404, "not_found", problem, {}});
             std::string path = engine::LogPath(engine->options().config, id, step, attempt);
             if (!QueryBool(req, "follow")) {
               std::ifstream in(path, std::ios::binary);
               std::stringstream ss;
               if (in) ss << in.rdbuf();
               res.set_content(ss.str(), "text/plain; charset=utf-8");
               return;
             }
             if (streams.fetch_add(1) >= config.max_streams) {
               streams--;
               return WriteError(res, {429, "too_many_streams", "too many open streams", {}});
             }
             std::string attempt_id = engine::AttemptId(id, step, attempt);
             auto offset = std::make_shared<std::streamoff>(0);
             auto partial = std::make_shared<std::string>();
             res.set_header("Cache-Control", "no-cache");
             res.set_chunked_content_provider(
                 "text/event-stream",
                 [this, path, attempt_id, offset, partial](size_t, httplib::DataSink& sink) {
                   while (!stopping) {
                     bool finished = engine->Read([&](const engine::State& s) {
                       const engine::Attempt* a = s.FindAttempt(attempt_id);
                       return !a || engine::IsTerminal(a->phase);
                     });
                     std::ifstream in(path, std::ios::binary);
                     std::string chunk;
                     if (in) {
                       in.seekg(*offset);
                       std::stringstream ss;
                       ss << in.rdbuf();
                       chunk = ss.str();
                       *offset += static_cast<std::streamoff>(chunk.size());
                     }
                     *partial += chunk;
                     std::string out;
                     size_t nl;
                     while ((nl = partial->find('\n')) != std::string::npos) {
                       out += "event: log\ndata: " + partial->substr(0, nl) + "\n\n";
                       partial->erase(0, nl + 1);
                     }
                     if (finished && chunk.empty()) {
                       if (!partial->empty()) out += "event: log\ndata: " + *partial + "\n\n";
                       out += "event: end\ndata: {}\n\n";
                       sink.write(out.data(), out.size());
                       sink.done();
                       return true;
                     }
                     if (!out.empty() && !sink.write(out.data(), out.size())) return false;
                     if (out.empty()) {
                       uint64_t gen = engine->Generation();
                       engine->WaitForChange(gen, std::chrono::milliseconds(200));
                     }
                     if (!sink.is_writable()) return false;
                   }
                   return false;
                 },
                 [this](bool) { streams--; });
           }));
}

void ApiServer::Impl::StreamEvents(
    Response& res, uint64_t after,
    std::function<Result<std::vector<storage::Envelope>>(uint64_t)> fetch,
    std::function<bool()> done, Keep keep) {
  auto cursor = std::make_shared<uint64_t>(after);
  res.set_header("Cache-Control", "no-cache");
  res.set_chunked_content_provider(
      "text/event-stream",
      [this, cursor, fetch, done, keep](size_t, httplib::DataSink& sink) {
        auto last_write = std::chrono::steady_clock::now();
        while (!stopping) {
          auto page = fetch(*cursor);
          if (!page.ok()) {
            std::string msg = "event: error\ndata: " +
                              CanonicalDump(Json{{"message", page.status().message()}}) + "\n\n";
            sink.write(msg.data(), msg.size());
            sink.done();
            return true;
          }
          std::string out;
          bool moved = !page->empty();
          for (const auto& e : *page) {
            if (!keep || keep(e)) out += SseEvent(e);
            *cursor = e.position;
          }
          if (moved && out.empty()) continue;  // a page of events this caller may not see
          if (!out.empty()) {
            if (!sink.write(out.data(), out.size())) return false;
            last_write = std::chrono::steady_clock::now();
            continue;  // there may be more pages
          }
          if (done()) {
            sink.done();
            return true;
          }
          if (std::chrono::steady_clock::now() - last_write > std::chrono::seconds(15)) {
            static const std::string kKeepAlive = ": keep-alive\n\n";
            if (!sink.write(kKeepAlive.data(), kKeepAlive.size())) return false;
            last_write = std::chrono::steady_clock::now();
          }
          store->WaitForHead(store->Head().position, std::chrono::milliseconds(500));
          if (!sink.is_writable()) return false;
        }
        return false;
      },
      [this](bool) { streams--; });
}

void ApiServer::Impl::EventRoutes() {
  http.Get("/v1/events", Wrap("/v1/events", [this](const Request& req, Response& res) {
             HttpError err;
             auto after = QueryInt(req, "after", 0, 0, INT64_MAX, &err);
             if (!after.ok()) return WriteError(res, err);
             auto limit = QueryInt(req, "limit", 100, 1, kMaxPageSize, &err);
             if (!limit.ok()) return WriteError(res, err);
             storage::ReadFilter filter;
             filter.types = SplitComma(req.get_param_value("type"));
             filter.actor = req.get_param_value("actor");
             for (auto [name, field] : {std::pair{"since", &filter.since}, {"until", &filter.until}}) {
               if (!req.has_param(name)) continue;
               auto t = ParseTime(req.get_param_value(name));
               if (!t.ok()) {
                 return WriteError(res, {400, "bad_parameter",
                                         std::string(name) + ": " + t.status().message(), {}});
               }
               *field = FormatTime(*t);
             }
             std::string stream = req.get_param_value("stream");
             if (req.has_param("run")) {
               if (!stream.empty()) {
                 return WriteError(res, {400, "bad_parameter", "run and stream: give one", {}});
               }
               stream = engine::RunStream(req.get_param_value("run"));
             }
             bool exact = !stream.empty() && stream.back() != '*';
             filter.stream_prefix = exact ? stream : stream.substr(0, stream.empty() ? 0 : stream.size() - 1);
             uint64_t from = static_cast<uint64_t>(*after);
             std::string last_id = req.get_header_value("Last-Event-ID");
             if (!last_id.empty()) {
               try {
                 from = std::stoull(last_id);
               } catch (const std::exception&) {
                 return WriteError(res, {400, "bad_parameter", "Last-Event-ID must be a position", {}});
               }
             }
             size_t lim = static_cast<size_t>(*limit);
             auto fetch = [this, filter, lim](uint64_t a) { return store->ReadAll(a, lim, filter); };
             // tenant=T: the events of T's runs and workflows.
             std::string tenant = req.get_param_value("tenant");
             if (req.has_param("tenant") && !IsValidName(tenant)) {
               return WriteError(res, {400, "bad_parameter", "tenant: not a tenant name", {}});
             }
             // The exact stream (not only its prefix), and only what the caller may read.
             Keep keep = [this, exact, stream, tenant, who = Caller()](const storage::Envelope& e) {
               if (exact && e.stream != stream) return false;
               return engine->Read([&](const engine::State& s) {
                 if (!SeesEvent(s, e, who)) return false;
                 if (tenant.empty()) return true;
                 return SeesEvent(s, e, Principal{"", tenant, Role::kViewer, ""});
               });
             };
             if (QueryBool(req, "follow")) {
               if (streams.fetch_add(1) >= config.max_streams) {
                 streams--;
                 return WriteError(res, {429, "too_many_streams", "too many open streams", {}});
               }
               return StreamEvents(res, from, fetch, [] { return false; }, keep);
             }
             auto page = fetch(from);
             if (!page.ok()) return WriteError(res, FromStatus(page.status()));
             Json items = Json::array();
             for (const auto& e : *page) {
               if (keep(e)) items.push_back(EnvelopeToJson(e));
             }
             // The cursor is the last event read, kept or not: the next page starts after it.
             Json next = page->size() == lim ? Json(std::to_string(page->back().position))
                                             : Json(nullptr);
             WriteJson(res, 200, Json{{"items", items}, {"next_cursor", next}});
           }));
  // A run's readable history: every event of its stream as a line of text (who did
  // what, where, with which GPUs and exit codes), and each step's attempts in brief.
  http.Get(R"(/v1/runs/([^/]+)/history)",
           Wrap("/v1/runs/{id}/history", [this](const Request& req, Response& res) {
             std::string id = req.matches[1];
             Json run;
             bool exists = engine->Read([&](const engine::State& s) {
               const engine::Run* r = s.FindRun(id);
               if (!r || !Caller().Sees(r->tenant)) return false;
               run = engine::RunToJson(*r, engine->options().config, &s);
               return true;
             });
             if (!exists) return WriteError(res, {404, "not_found", "run '" + id + "' not found", {}});
             Json timeline = Json::array();
             std::string stream = engine::RunStream(id);
             for (uint64_t version = 1;;) {
               auto page = store->ReadStream(stream, version, 1000);
               if (!page.ok()) return WriteError(res, FromStatus(page.status()));
               for (const auto& e : *page) {
                 auto data = ParseJson(e.data, 256);
                 Json d = data.ok() ? *data : Json::object();
                 Json item{{"position", e.position}, {"time", e.time}, {"type", e.type},
                           {"actor", e.actor},
                           {"text", engine::DescribeRunEvent(e.type, d, e.actor)}};
                 if (d.contains("step")) item["step"] = d["step"];
                 if (d.contains("attempt")) item["attempt"] = d["attempt"];
                 timeline.push_back(std::move(item));
               }
               if (page->size() < 1000) break;
               version = page->back().version + 1;
             }
             Json steps = Json::array();
             for (const auto& st : run["steps"]) {
               Json attempts = Json::array();
               for (const auto& a : st["attempts"]) {
                 Json brief{{"attempt", a["attempt"]},     {"state", a["state"]},
                            {"container", a["container"]}, {"gpus", a["gpu_uuids"].empty() ? a["gpus"] : a["gpu_uuids"]},
                            {"exit_code", a["exit_code"]}, {"reason", a["reason"]},
                            {"started_at", a["started_at"]}, {"finished_at", a["finished_at"]}};
                 if (a.contains("usage") && a["usage"].contains("wall_s")) {
                   brief["duration_s"] = a["usage"]["wall_s"];
                 }
                 for (const char* k : {"trial", "params", "cached_from"}) {
                   if (a.contains(k)) brief[k] = a[k];
                 }
                 attempts.push_back(std::move(brief));
               }
               steps.push_back(Json{{"name", st["name"]}, {"kind", st["kind"]}, {"state", st["state"]},
                                    {"attempts", attempts}});
             }
             WriteJson(res, 200, Json{{"run", id},
                                      {"workflow", run["workflow"]},
                                      {"version", run["version"]},
                                      {"state", run["state"]},
                                      {"tenant", run["tenant"]},
                                      {"submitter", run["submitter"]},
                                      {"submitted_at", run["submitted_at"]},
                                      {"finished_at", run["finished_at"]},
                                      {"steps", steps},
                                      {"timeline", timeline}});
           }));
  http.Get(R"(/v1/runs/([^/]+)/events)",
           Wrap("/v1/runs/{id}/events", [this](const Request& req, Response& res) {
             std::string id = req.matches[1];
             bool exists = engine->Read([&](const engine::State& s) { return SeesRun(s, id); });
             if (!exists) return WriteError(res, {404, "not_found", "run '" + id + "' not found", {}});
             HttpError err;
             auto after = QueryInt(req, "after", 0, 0, INT64_MAX, &err);
             if (!after.ok()) return WriteError(res, err);
             uint64_t from = static_cast<uint64_t>(*after);
             std::string last_id = req.get_header_value("Last-Event-ID");
             if (!last_id.empty()) {
               try {
                 from = std::stoull(last_id);
               } catch (const std::exception&) {
                 return WriteError(res, {400, "bad_parameter", "Last-Event-ID must be a position", {}});
               }
             }
             std::string stream = engine::RunStream(id);
             // Reads the run's stream by version, keeping events past the cursor position.
             auto fetch = [this, stream](uint64_t a) -> Result<std::vector<storage::Envelope>> {
               std::vector<storage::Envelope> out;
               uint64_t version = 1;
               while (true) {
                 ASSIGN_OR_RETURN(auto page, store->ReadStream(stream, version, 1000));
                 for (auto& e : page) {
                   if (e.position > a) out.push_back(std::move(e));
                 }
                 if (page.size() < 1000) break;
                 version = page.back().version + 1;
               }
               return out;
             };
             if (QueryBool(req, "follow")) {
               if (streams.fetch_add(1) >= config.max_streams) {
                 streams--;
                 return WriteError(res, {429, "too_many_streams", "too many open streams", {}});
               }
               // The stream ends once the run is finished and everything was sent.
               return StreamEvents(res, from, fetch, [this, id] {
                 return engine->Read([&](const engine::State& s) {
                   const engine::Run* r = s.FindRun(id);
                   return !r || engine::IsTerminal(r->phase);
                 });
               });
             }
             auto page = fetch(from);
             if (!page.ok()) return WriteError(res, FromStatus(page.status()));
             Json items = Json::array();
             for (const auto& e : *page) items.push_back(EnvelopeToJson(e));
             WriteJson(res, 200, Json{{"items", items}, {"next_cursor", nullptr}});
           }));
}

void ApiServer::Impl::ContainerRoutes() {
  http.Get("/v1/containers", Wrap("/v1/containers", [this](const Request& req, Response& res) {
             bool all = QueryBool(req, "all");
             Json items = Json::array();
             auto watched = engine->BackendStates();
             engine->Read([&](const engine::State& s) {
               for (const auto& [id, c] : s.containers) {
                 if (!all && (c.phase == engine::ContainerPhase::kLost ||
                              c.phase == engine::ContainerPhase::kReleased)) {
                   continue;
                 }
                 Json j = engine::ContainerToJson(c);
                 // The backend's own view (a Slurm job's state), when it is watched.
                 if (auto w = watched.find(id); w != watched.end()) {
                   j["backend_state"] = w->second.backend_state;
                   j["backend_detail"] = w->second.detail;
                 }
                 if (!Caller().SeesAllTenants()) {
                   // What runs where, only for the caller's tenant's attempts.
                   Json mine = Json::array();
                   for (const auto& a : j["attempts"]) {
                     std::string run, step;
                     int n;
                     if (engine::ParseAttemptId(a.get<std::string>(), &run, &step, &n) &&
                         SeesRun(s, run)) {
                       mine.push_back(a);
                     }
                   }
                   j["attempts"] = std::move(mine);
                 }
                 items.push_back(std::move(j));
               }
               return 0;
             });
             WriteJson(res, 200, Json{{"items", items}, {"next_cursor", nullptr}});
           }));
  auto strings = [](const Json& j, const char* key, std::vector<std::string>* out) -> bool {
    if (!j.contains(key)) return true;
    if (!j[key].is_array()) return false;
    for (const auto& v : j[key]) {
      if (!v.is_string()) return false;
      out->push_back(v);
    }
    return true;
  };
  http.Post(R"(/v1/containers/([^/]+)/register)",
            Wrap("/v1/containers/{id}/register", [this, strings](const Request& req, Response& res) {
              HttpError err;
              auto body = ParseBody(req, &err);
              if (!body.ok()) return WriteError(res, err);
              const Json& b = *body;
              engine::RegisterContainer cmd;
              cmd.container = req.matches[1];
              cmd.backend = b.value("backend", "");
              cmd.handle = b.value("handle", "");
              cmd.host = b.value("host", "");
              cmd.pid = b.value("pid", int64_t{0});
              cmd.cpu_millis = b.value("cpu_millis", int64_t{0});
              cmd.memory_bytes = b.value("memory_bytes", int64_t{0});
              cmd.gpus = b.value("gpus", Json::array());
              cmd.cuda = b.value("cuda", Json::object());
              cmd.epoch_seen = b.value("epoch_seen", uint64_t{0});
              if (!strings(b, "running", &cmd.running)) {
                return WriteError(res, {400, "malformed", "running: must be an array of strings", {}});
              }
              if (cmd.cpu_millis <= 0 || cmd.memory_bytes <= 0) {
                return WriteError(res, {400, "malformed",
                                        "cpu_millis and memory_bytes must be positive", {}});
              }
              auto r = engine->Execute(cmd);
              if (!r.ok()) return WriteError(res, ContainerError(r.status()));
              engine->Heartbeat(cmd.container);
              WriteJson(res, 200,
                        Json{{"epoch", engine->epoch()},
                             {"lease_ms", engine->options().config.lease.count() / 1000},
                             {"poll_timeout_ms",
                              engine->options().config.poll_timeout.count() / 1000}});
            }));
  http.Post(R"(/v1/containers/([^/]+)/poll)",
            Wrap("/v1/containers/{id}/poll", [this, strings](const Request& req, Response& res) {
              HttpError err;
              auto body = ParseBody(req, &err);
              if (!body.ok()) return WriteError(res, err);
              const Json& b = *body;
              engine::PollContainer cmd;
              cmd.container = req.matches[1];
              cmd.epoch_seen = b.value("epoch_seen", uint64_t{0});
              cmd.reports = b.value("reports", Json::array());
              if (!cmd.reports.is_array()) {
                return WriteError(res, {400, "malformed", "reports: must be an array", {}});
              }
              if (!strings(b, "running", &cmd.running)) {
                return WriteError(res, {400, "malformed", "running: must be an array of strings", {}});
              }
              if (Status st = engine->ObserveEpoch(cmd.epoch_seen); !st.ok()) {
                return WriteError(res, FromStatus(st));
              }
              engine->Heartbeat(cmd.container);
              // A poll that reports nothing new needs no command: check the
              // container's standing from the published state instead.
              bool needs_command = !cmd.reports.empty();
              std::string problem;
              engine->Read([&](const engine::State& s) {
                auto it = s.containers.find(cmd.container);
                if (it == s.containers.end() ||
                    it->second.phase == engine::ContainerPhase::kRequested) {
                  problem = "unknown_container";
                  return 0;
                }
                if (it->second.phase != engine::ContainerPhase::kRegistered) {
                  problem = "released";
                  return 0;
                }
                for (const auto& id : cmd.running) {
                  const engine::Attempt* a = s.FindAttempt(id);
                  if (a && a->phase == engine::AttemptPhase::kAssigned) needs_command = true;
                  const engine::Worker* w = s.FindWorker(id);
                  if (w && w->phase == engine::AttemptPhase::kAssigned) needs_command = true;
                }
                return 0;
              });
              if (problem == "unknown_container") {
                return WriteError(res, {404, problem,
                                        "container '" + cmd.container + "' must register", {}});
              }
              if (problem == "released") {
                return WriteError(res, {409, problem,
                                        "container '" + cmd.container + "' was released or lost",
                                        {}});
              }
              std::vector<std::string> ack;
              if (needs_command) {
                auto r = engine->Execute(cmd);
                if (!r.ok()) return WriteError(res, ContainerError(r.status()));
                ack = r->ack;
              }
              auto deadline = std::chrono::steady_clock::now() +
                              std::chrono::microseconds(engine->options().config.poll_timeout);
              engine::DispatchView view;
              while (true) {
                uint64_t gen = engine->Generation();
                view = engine->DispatchFor(cmd.container, cmd.running, ack);
                if (!ack.empty() || !view.assignments.empty() || !view.cancels.empty() ||
                    stopping) {
                  break;
                }
                auto left = deadline - std::chrono::steady_clock::now();
                if (left <= std::chrono::steady_clock::duration::zero()) break;
                engine->WaitForChange(gen, std::min<Micros>(
                    std::chrono::duration_cast<Micros>(left), std::chrono::milliseconds(250)));
              }
              Json ack_json = Json::array();
              for (const auto& a : ack) ack_json.push_back(a);
              WriteJson(res, 200, Json{{"epoch", engine->epoch()},
                                       {"ack", ack_json},
                                       {"assignments", view.assignments},
                                       {"cancels", view.cancels},
                                       {"grace_ms", engine->options().config.grace_ms}});
            }));
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

void ApiServer::Serve() {
  impl_->thread = std::thread([this] { impl_->http.listen_after_bind(); });
}

Result<int> ApiServer::Bind(const std::string& host, int port) {
  const Config& c = impl_->config;
  if (!impl_->http.is_valid()) {
    return FailedPrecondition("cannot serve HTTPS with " + c.tls_certificate + " and " +
                              c.tls_key + " (unreadable, or not a certificate and its key)");
  }
  ASSIGN_OR_RETURN(std::string agent_token, EnsureAgentToken(c.data_dir));
  std::string tokens_path = c.tokens_file.empty() ? c.data_dir + "/tokens.json" : c.tokens_file;
  // A broken tokens file stops the start here, not the first request.
  ASSIGN_OR_RETURN(auto loaded, LoadTokens(tokens_path));
  if (loaded.empty()) {
    spdlog::warn("no tokens in {}: nobody can use the API until `epochctl admin token create "
                 "--tokens {} --user U --tenant T --role admin` makes one",
                 tokens_path, tokens_path);
  }
  impl_->tokens = std::make_unique<TokenStore>(tokens_path, agent_token);
  int bound;
  if (port == 0) {
    bound = impl_->http.bind_to_any_port(host);
  } else {
    bound = impl_->http.bind_to_port(host, port) ? port : -1;
  }
  if (bound <= 0) {
    return Unavailable("cannot listen on " + host + ":" + std::to_string(port) +
                       " (is another epochd running?)");
  }
  return bound;
}

void ApiServer::Stop() {
  if (!impl_ || impl_->stopping.exchange(true)) return;
  impl_->http.stop();
  if (impl_->thread.joinable()) impl_->thread.join();
}

}  // namespace epoch::api
