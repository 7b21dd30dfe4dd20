#include "api/server.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <sstream>
#include <thread>

#include "api/auth.h"
#include "api/dto.h"
#include "api/http_server.h"
#include "api/leader_lock.h"
#include "common/files.h"
#include "common/mutex.h"
#include "common/sha256.h"

namespace epoch::api {

using engine::Engine;
using Request = HttpRequest;
using Response = HttpResponse;

namespace {

constexpr int kMaxPageSize = 1000;
// SSE: a comment line after this long without an event (proxies and clients see a
// live stream); event streams re-check (and send it) at least every kSseTick.
constexpr auto kSseKeepAlive = std::chrono::seconds(15);
constexpr auto kSseTick = std::chrono::milliseconds(5000);
// A log follower looks for new bytes this often (a file growing is not an event).
constexpr auto kLogFollowTick = std::chrono::milliseconds(200);

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
  res.SetContent(CanonicalDump(body), "application/json");
}

// Maps an engine/store Status to HTTP. kInvalidArgument from the engine means
// the request was well-formed but its content is invalid: 422.
HttpError FromStatus(const Status& st) {
  switch (st.code()) {
    case StatusCode::kInvalidArgument:
      if (!st.details().empty() && st.details()[0] == engine::kIdempotencyKeyReused) {
        return {422, std::string(engine::kIdempotencyKeyReused), st.message(), {}};
      }
      return {422, "invalid", st.message(), st.details()};
    case StatusCode::kNotFound: return {404, "not_found", st.message(), st.details()};
    case StatusCode::kConflict: return {409, "conflict", st.message(), st.details()};
    case StatusCode::kFailedPrecondition:
      return {409, "failed_precondition", st.message(), st.details()};
    case StatusCode::kUnavailable:
      return {503, engine::IsCorruptHistory(st) ? std::string(engine::kCorruptHistoryCode)
                                                : "unavailable",
              st.message(), st.details()};
    case StatusCode::kResourceExhausted:
      if (engine::IsInsufficientStorage(st)) {
        return {507, std::string(engine::kInsufficientStorageCode), st.message(), st.details()};
      }
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
  res.SetContent(CanonicalDump(j), "application/json");
}

// Parses a JSON request body: 415 for another content type, 400 for bad JSON.
Result<Json> ParseBody(const Request& req, HttpError* err, bool allow_empty = false) {
  if (req.body.empty() && allow_empty) return Json::object();
  std::string ct = req.Header("Content-Type");
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
  if (!req.HasParam(name)) return def;
  std::string v = req.Param(name);
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
  if (!req.HasParam(name)) return false;
  std::string v = req.Param(name);
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

// Open SSE streams, at most `max_total` in all and `max_per_key` per principal (its
// token id), so that one viewer cannot take every stream. A slot is held by the
// stream's producer and freed when the stream ends or its client goes away.
class StreamSlots {
 public:
  class Slot {
   public:
    Slot(StreamSlots* owner, std::string key) : owner_(owner), key_(std::move(key)) {}
    ~Slot() { owner_->Release(key_); }
    Slot(const Slot&) = delete;
    Slot& operator=(const Slot&) = delete;

   private:
    StreamSlots* owner_;
    std::string key_;
  };

  StreamSlots(int max_total, int max_per_key) : max_total_(max_total), max_per_key_(max_per_key) {}

  // A slot for `key`, or null with *refused saying which cap is full.
  std::shared_ptr<Slot> Acquire(const std::string& key, const std::string& who,
                                std::string* refused) {
    MutexLock lock(&mu_);
    int& mine = per_key_[key];
    if (mine >= max_per_key_) {
      *refused = "too many open streams: " + who + " has " + std::to_string(mine) +
                 " (api.maxStreamsPerPrincipal is " + std::to_string(max_per_key_) + ")";
      return nullptr;
    }
    if (total_ >= max_total_) {
      if (mine == 0) per_key_.erase(key);
      *refused = "too many open streams: " + std::to_string(total_) +
                 " in all (api.maxStreams is " + std::to_string(max_total_) + ")";
      return nullptr;
    }
    ++mine;
    ++total_;
    return std::make_shared<Slot>(this, key);
  }

  int open() const {
    MutexLock lock(&mu_);
    return total_;
  }

 private:
  void Release(const std::string& key) {
    MutexLock lock(&mu_);
    auto it = per_key_.find(key);
    if (it != per_key_.end() && --it->second <= 0) per_key_.erase(it);
    --total_;
  }

  const int max_total_;
  const int max_per_key_;
  mutable Mutex mu_;
  std::map<std::string, int> per_key_ GUARDED_BY(mu_);
  int total_ GUARDED_BY(mu_) = 0;
};

// ---- step logs: read by range, never whole ----------------------------------------

// What one read of a log file covers.
constexpr size_t kLogBlock = 64 << 10;

// A log file open for reading; a missing file reads as empty (the step has not
// written yet).
class LogFile {
 public:
  explicit LogFile(const std::string& path) : fd_(::open(path.c_str(), O_RDONLY | O_CLOEXEC)) {}
  ~LogFile() {
    if (fd_ >= 0) ::close(fd_);
  }
  LogFile(const LogFile&) = delete;
  LogFile& operator=(const LogFile&) = delete;

  bool exists() const { return fd_ >= 0; }
  uint64_t Size() const {
    struct stat st {};
    if (fd_ < 0 || ::fstat(fd_, &st) != 0) return 0;
    return static_cast<uint64_t>(st.st_size);
  }
  // Up to n bytes at offset (fewer at the end of the file).
  Result<std::string> Read(uint64_t offset, size_t n) const {
    std::string out(n, '\0');
    size_t got = 0;
    while (fd_ >= 0 && got < n) {
      ssize_t r = ::pread(fd_, out.data() + got, n - got, static_cast<off_t>(offset + got));
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) return Internal(std::string("reading a step log: ") + std::strerror(errno));
      if (r == 0) break;
      got += static_cast<size_t>(r);
    }
    out.resize(got);
    return out;
  }
  // The first line start at or after `from`: from itself if a line ends just before
  // it, else just after the next '\n' (from itself if there is none before `size`).
  Result<uint64_t> LineStartFrom(uint64_t from, uint64_t size) const {
    if (from == 0) return uint64_t{0};
    for (uint64_t pos = from - 1; pos < size;) {
      // Within [0, size) only: the file may grow meanwhile.
      ASSIGN_OR_RETURN(std::string block,
                       Read(pos, static_cast<size_t>(std::min<uint64_t>(kLogBlock, size - pos))));
      if (block.empty()) break;
      if (size_t nl = block.find('\n'); nl != std::string::npos) return pos + nl + 1;
      pos += block.size();
    }
    return from;
  }
  // Where the last `lines` lines of [0, size) start, reading backwards from the end a
  // block at a time; never before size - cap (then at a line start after it).
  Result<uint64_t> TailStart(uint64_t size, uint64_t lines, uint64_t cap) const {
    if (size == 0 || lines == 0) return size;
    const uint64_t floor = size > cap ? size - cap : 0;
    uint64_t found = 0;
    for (uint64_t end = size; end > floor;) {
      uint64_t start = end - std::min<uint64_t>(kLogBlock, end - floor);
      ASSIGN_OR_RETURN(std::string block, Read(start, static_cast<size_t>(end - start)));
      if (block.size() != end - start) return size;  // truncated meanwhile: nothing to show
      for (size_t i = block.size(); i-- > 0;) {
        // The newline that ends the last line does not start one.
        if (block[i] != '\n' || start + i == size - 1) continue;
        if (++found == lines) return start + i + 1;
      }
      end = start;
    }
    return floor == 0 ? uint64_t{0} : LineStartFrom(floor, size);
  }

 private:
  int fd_;
};

// Range: bytes=a-b | a- | -n (one range). Sets [*first, *last] within size; false
// when unsatisfiable, an error when it does not parse.
Result<bool> ParseByteRange(const std::string& header, uint64_t size, uint64_t* first,
                            uint64_t* last) {
  auto bad = [&] {
    return InvalidArgument("Range: expected bytes=FIRST-LAST, bytes=FIRST- or bytes=-SUFFIX "
                           "(one range), got '" + header + "'");
  };
  if (header.rfind("bytes=", 0) != 0) return bad();
  std::string spec = header.substr(6);
  if (spec.find(',') != std::string::npos) return bad();
  size_t dash = spec.find('-');
  if (dash == std::string::npos) return bad();
  auto number = [](const std::string& t, uint64_t* out) {
    if (t.empty() || t.size() > 19 || t.find_first_not_of("0123456789") != std::string::npos) {
      return false;
    }
    *out = std::stoull(t);
    return true;
  };
  std::string a = spec.substr(0, dash), b = spec.substr(dash + 1);
  if (a.empty()) {  // the last n bytes
    uint64_t n;
    if (!number(b, &n)) return bad();
    if (n == 0 || size == 0) return false;
    *first = size - std::min(n, size);
    *last = size - 1;
    return true;
  }
  if (!number(a, first)) return bad();
  if (b.empty()) {
    *last = size == 0 ? 0 : size - 1;
  } else if (!number(b, last) || *last < *first) {
    return bad();
  }
  if (*first >= size) return false;
  *last = std::min(*last, size - 1);
  return true;
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
  HttpServer http;
  std::atomic<bool> stopping{false};
  StreamSlots streams;
  std::unique_ptr<TokenStore> tokens;  // set by Bind

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
    return o;
  }

  using Handler = std::function<void(const Request&, Response&)>;
  void Get(const std::string& pattern, Handler h) { http.Route("GET", pattern, std::move(h)); }
  void Post(const std::string& pattern, Handler h) { http.Route("POST", pattern, std::move(h)); }

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
                    res.streaming() ? " (stream)" : res.deferred() ? " (long poll)" : "");
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
  // Streams a step's log as SSE (one "log" event a line) from byte `from`, until its
  // attempt has finished and everything was sent ("end").
  void FollowLog(Response& res, const std::string& path, const std::string& attempt_id,
                 uint64_t from);
};

void ApiServer::Impl::Routes() {
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

void ApiServer::Impl::OpsRoutes() {
  Get("/healthz", Wrap("/healthz", [](const Request&, Response& res) {
             WriteJson(res, 200, Json{{"status", "ok"}});
           }));
  Get("/readyz", Wrap("/readyz", [this](const Request&, Response& res) {
             bool ready = engine->ready() && engine->healthy();
             std::string role(engine::Name(engine->role()));
             if (!engine->healthy()) role = "failed";
             if (engine->corrupt_history()) role = engine::kCorruptHistoryCode;
             WriteJson(res, ready ? 200 : 503,
                       Json{{"ready", ready}, {"role", role}, {"epoch", engine->epoch()}});
           }));
  Get("/v1/cluster", Wrap("/v1/cluster", [this](const Request&, Response& res) {
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
                    {"ready", engine->ready()}};
             // Where the data lives and the whole configuration (tenant names, key and
             // token paths) are for admins only.
             if (Caller().role == Role::kAdmin) {
               j["data_dir"] = config.data_dir;
               j["config"] = config.ToJson();
             }
             WriteJson(res, 200, j);
           }));
  Get("/metrics", Wrap("/metrics", [this](const Request&, Response& res) {
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
               << streams.open() << "\n";
             HttpServerStats hs = http.stats();
             o << "# HELP epoch_http_connections Open HTTP connections.\n"
                  "# TYPE epoch_http_connections gauge\nepoch_http_connections "
               << hs.open_connections << "\n";
             o << "# HELP epoch_http_parked Long polls and streams waiting for a change.\n"
                  "# TYPE epoch_http_parked gauge\nepoch_http_parked "
               << hs.parked << "\n";
             o << "# HELP epoch_http_connections_refused_total Connections closed at accept "
                  "(api.maxConnections, api.maxConnectionsPerClient).\n"
                  "# TYPE epoch_http_connections_refused_total counter\n"
                  "epoch_http_connections_refused_total "
               << hs.refused << "\n";
             o << "# HELP epoch_http_timeouts_total Connections closed at a deadline (TLS "
                  "handshake, request head, body, keep-alive idle, write).\n"
                  "# TYPE epoch_http_timeouts_total counter\nepoch_http_timeouts_total "
               << hs.timed_out << "\n";
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
               MutexLock lock(&metrics_mu);
               for (const auto& [k, n] : requests) {
                 o << "epoch_http_requests_total{route=\"" << EscapeLabel(k.first)
                   << "\",code=\"" << k.second << "\"} " << n << "\n";
               }
             }
             res.SetContent(o.str(), "text/plain; version=0.0.4");
           }));
}

void ApiServer::Impl::RunsRoutes() {
  Post("/v1/workflows", Wrap("/v1/workflows", [this](const Request& req, Response& res) {
              HttpError err;
              auto body = ParseBody(req, &err);
              if (!body.ok()) return WriteError(res, err);
              engine::RegisterWorkflow cmd{*body, Actor(req), Caller().tenant, ""};
              cmd.any_tenant = Caller().role == Role::kAdmin;
              cmd.idempotency_key = req.Header("Idempotency-Key");
              if (cmd.idempotency_key.size() > 256) {
                return WriteError(res, {400, "malformed", "Idempotency-Key: at most 256 bytes", {}});
              }
              if (!cmd.idempotency_key.empty()) {
                cmd.request_digest = Sha256Hex(CanonicalDump(cmd.definition));
              }
              auto r = engine->Execute(std::move(cmd));
              if (!r.ok()) return WriteError(res, FromStatus(r.status()));
              WriteJson(res, r->created ? 201 : 200,
                        Json{{"name", r->id}, {"version", r->version}, {"digest", r->digest}});
            }));
  Get("/v1/workflows", Wrap("/v1/workflows", [this](const Request&, Response& res) {
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
    if (req.matches.size() > 2) {
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
  Get(R"(/v1/workflows/([^/]+))", Wrap("/v1/workflows/{name}", get_workflow));
  Get(R"(/v1/workflows/([^/]+)/versions/([^/]+))",
           Wrap("/v1/workflows/{name}/versions/{v}", get_workflow));

  // Lineage: data sets and models, each version with what produced it.
  for (bool model : {false, true}) {
    std::string base = model ? "/v1/models" : "/v1/datasets";
    auto all = [model](const engine::State& s) -> const auto& {
      return model ? s.models : s.datasets;
    };
    // Names are per tenant (engine::ArtifactKey): each item says whose it is.
    Get(base, Wrap(base, [this, all, model](const Request& req, Response& res) {
               std::string only = req.Param("tenant");
               if (req.HasParam("tenant") && !IsValidName(only)) {
                 return WriteError(res, {400, "bad_parameter", "tenant: not a tenant name", {}});
               }
               Json items = Json::array();
               engine->Read([&](const engine::State& s) {
                 for (const auto& [key, versions] : all(s)) {
                   auto [tenant, name] = engine::SplitArtifactKey(key);
                   if (!Caller().Sees(tenant) || versions.empty()) continue;
                   if (!only.empty() && tenant != only) continue;
                   Json latest = engine::ArtifactToJson(name, versions.back(), model);
                   latest["tenant"] = tenant;
                   latest["versions"] = versions.size();
                   items.push_back(std::move(latest));
                 }
                 return 0;
               });
               WriteJson(res, 200, Json{{"items", items}, {"next_cursor", nullptr}});
             }));
    auto one = [this, all, model](const Request& req, Response& res) {
      std::string name = req.matches[1];
      int version = 0;
      if (req.matches.size() > 2) {
        try {
          version = std::stoi(req.matches[2]);
        } catch (const std::exception&) {
          version = -1;
        }
        if (version < 1) {
          return WriteError(res, {400, "bad_parameter", "version must be an integer >= 1", {}});
        }
      }
      std::string tenant = req.Param("tenant");
      if (req.HasParam("tenant") && !IsValidName(tenant)) {
        return WriteError(res, {400, "bad_parameter", "tenant: not a tenant name", {}});
      }
      Json out;
      std::vector<std::string> owners;  // tenants with the name, when it is ambiguous
      bool found = engine->Read([&](const engine::State& s) {
        const auto& named = all(s);
        // Whose: the tenant asked for; else the caller's own; else, for those who see
        // every tenant, the one tenant that has the name.
        if (tenant.empty() && named.count(engine::ArtifactKey(Caller().tenant, name))) {
          tenant = Caller().tenant;
        }
        if (tenant.empty() && Caller().SeesAllTenants()) {
          for (const auto& [key, versions] : named) {
            auto [t, n] = engine::SplitArtifactKey(key);
            if (n == name) owners.push_back(t);
          }
          if (owners.size() != 1) return false;
          tenant = owners.front();
          owners.clear();
        }
        if (tenant.empty() || !Caller().Sees(tenant)) return false;
        auto it = named.find(engine::ArtifactKey(tenant, name));
        if (it == named.end() || it->second.empty()) return false;
        if (version > static_cast<int>(it->second.size())) return false;
        if (version > 0) {
          out = engine::ArtifactToJson(name, it->second[static_cast<size_t>(version - 1)], model);
          out["tenant"] = tenant;
          return true;
        }
        Json versions = Json::array();
        for (const auto& v : it->second) versions.push_back(engine::ArtifactToJson(name, v, model));
        out = Json{{"name", name}, {"tenant", tenant}, {"versions", versions}};
        return true;
      });
      if (owners.size() > 1) {
        std::string list;
        for (const auto& t : owners) list += (list.empty() ? "" : ", ") + t;
        return WriteError(res, {409, "ambiguous",
                                std::string(model ? "model '" : "data set '") + name +
                                    "' exists in tenants " + list + ": add ?tenant=",
                                owners});
      }
      if (!found) {
        return WriteError(res, {404, "not_found",
                                std::string(model ? "model '" : "data set '") + name + "'" +
                                    (version ? " version " + std::to_string(version) : "") +
                                    " not found",
                                {}});
      }
      WriteJson(res, 200, out);
    };
    Get(base + R"(/([^/]+))", Wrap(base + "/{name}", one));
    Get(base + R"(/([^/]+)/versions/([^/]+))", Wrap(base + "/{name}/versions/{v}", one));
  }

  // Audit: the hash chain, walked from the first event (or a trusted checkpoint
  // `from=P&hash=H`); `against=P:H` also proves the history up to P is the one whose
  // hash at P was recorded. The answer is 200 either way: "ok" says.
  Get("/v1/audit/verify", Wrap("/v1/audit/verify", [this](const Request& req, Response& res) {
             HttpError err;
             auto from = QueryInt(req, "from", 1, 1, std::numeric_limits<int64_t>::max(), &err);
             if (!from.ok()) return WriteError(res, err);
             std::string from_hash = req.Param("hash");
             uint64_t against_pos = 0;
             std::string against_hash;
             if (req.HasParam("against")) {
               std::string a = req.Param("against");
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
  Get("/v1/cache", Wrap("/v1/cache", [this](const Request& req, Response& res) {
             std::string workflow = req.Param("workflow");
             std::string step = req.Param("step");
             Json items = Json::array();
             engine->Read([&](const engine::State& s) {
               for (const auto& [key, e] : s.cache) {
                 if (!Caller().Sees(e.tenant)) continue;
                 if (!workflow.empty() && e.workflow != workflow) continue;
                 if (!step.empty() && e.step != step) continue;
                 items.push_back(engine::CacheEntryToJson(key, e));
               }
               return 0;
             });
             WriteJson(res, 200, Json{{"items", items}, {"next_cursor", nullptr}});
           }));
  Post("/v1/cache/invalidate",
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
                  if (it != s.cache.end() && !Caller().Sees(it->second.tenant)) {
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
              cmd.tenant = Caller().tenant;
              cmd.any_tenant = Caller().role == Role::kAdmin;
              auto r = engine->Execute(cmd);
              if (!r.ok()) return WriteError(res, FromStatus(r.status()));
              WriteJson(res, 200, Json{{"invalidated", r->keys.size()}, {"keys", r->keys}});
            }));

  Post("/v1/runs", Wrap("/v1/runs", [this](const Request& req, Response& res) {
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
              cmd.idempotency_key = req.Header("Idempotency-Key");
              if (cmd.idempotency_key.size() > 256) {
                return WriteError(res, {400, "malformed", "Idempotency-Key: at most 256 bytes", {}});
              }
              // The request the key stands for (key order and spacing do not matter).
              if (!cmd.idempotency_key.empty()) cmd.request_digest = Sha256Hex(CanonicalDump(b));
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
              res.SetHeader("Location", "/v1/runs/" + r->id);
              WriteJson(res, r->created ? 201 : 200, run);
            }));

  Get("/v1/runs", Wrap("/v1/runs", [this](const Request& req, Response& res) {
             HttpError err;
             auto limit = QueryInt(req, "limit", 100, 1, kMaxPageSize, &err);
             if (!limit.ok()) return WriteError(res, err);
             auto cursor = QueryInt(req, "cursor", 0, 0, INT64_MAX, &err);
             if (!cursor.ok()) return WriteError(res, err);
             std::string state = req.Param("state");
             std::string workflow = req.Param("workflow");
             // label=k=v, repeatable: a run must carry every one.
             std::vector<std::pair<std::string, std::string>> labels;
             for (const std::string& label : req.Params("label")) {
               auto eq = label.find('=');
               if (eq == std::string::npos || eq == 0) {
                 return WriteError(res, {400, "bad_parameter",
                                         "label must be key=value, got '" + label + "'", {}});
               }
               labels.push_back({label.substr(0, eq), label.substr(eq + 1)});
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
  Get(R"(/v1/runs/([^/]+))", Wrap("/v1/runs/{id}", [this](const Request& req, Response& res) {
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
  Post(R"(/v1/runs/([^/]+)/cancel)", Wrap("/v1/runs/{id}/cancel", run_command(true)));
  Post(R"(/v1/runs/([^/]+)/retry)", Wrap("/v1/runs/{id}/retry", run_command(false)));

  Get(R"(/v1/runs/([^/]+)/steps/([^/]+)/logs)",
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
             const bool follow = QueryBool(req, "follow");
             const bool tail = req.HasParam("tail");
             auto lines = QueryInt(req, "tail", 0, 0, 100000000, &err);
             if (!lines.ok()) return WriteError(res, err);
             const std::string range = req.Header("Range");
             if (!range.empty() && (follow || tail)) {
               return WriteError(res, {400, "bad_parameter",
                                       "Range: not with tail or follow (give one of them)", {}});
             }
             const uint64_t cap = config.max_log_response_bytes;
             if (follow) {
               uint64_t from = 0;
               if (tail) {
                 LogFile f(path);
                 auto start = f.TailStart(f.Size(), static_cast<uint64_t>(*lines), cap);
                 if (!start.ok()) return WriteError(res, FromStatus(start.status()));
                 from = *start;
               }
               return FollowLog(res, path, engine::AttemptId(id, step, attempt), from);
             }
             // One answer holds at most api.maxLogResponseBytes, read with pread: never the
             // whole file. Epoch-Log-Size and Epoch-Log-Offset say which part it is.
             LogFile f(path);
             const uint64_t size = f.Size();
             res.SetHeader("Accept-Ranges", "bytes");
             res.SetHeader("Epoch-Log-Size", std::to_string(size));
             uint64_t first = 0, end = size;
             int status = 200;
             if (!range.empty()) {
               uint64_t last = 0;
               auto ok = ParseByteRange(range, size, &first, &last);
               if (!ok.ok()) return WriteError(res, {400, "bad_parameter", ok.status().message(), {}});
               if (!*ok) {
                 res.SetHeader("Content-Range", "bytes */" + std::to_string(size));
                 return WriteError(res, {416, "range_not_satisfiable",
                                         "Range '" + range + "' is outside the log (" +
                                             std::to_string(size) + " bytes)",
                                         {}});
               }
               end = std::min(last + 1, first + cap);  // a larger range is answered in part
               status = 206;
               res.SetHeader("Content-Range", "bytes " + std::to_string(first) + "-" +
                                                  std::to_string(end - 1) + "/" +
                                                  std::to_string(size));
             } else {
               // The last lines (tail=N), or the whole log; either way at most the last
               // `cap` bytes, from a line start.
               auto start = tail ? f.TailStart(size, static_cast<uint64_t>(*lines), cap)
                                 : f.LineStartFrom(size > cap ? size - cap : 0, size);
               if (!start.ok()) return WriteError(res, FromStatus(start.status()));
               first = *start;
             }
             auto data = f.Read(first, static_cast<size_t>(end - first));
             if (!data.ok()) return WriteError(res, FromStatus(data.status()));
             res.SetHeader("Epoch-Log-Offset", std::to_string(first));
             res.status = status;
             res.SetContent(std::move(*data), "text/plain; charset=utf-8");
           }));
}

void ApiServer::Impl::FollowLog(Response& res, const std::string& path,
                                const std::string& attempt_id, uint64_t from) {
  auto slot = AcquireStream(res);
  if (!slot) return;
  // One log event per line, read from `offset` a block per call; "end" once the
  // attempt has finished and everything it wrote was sent.
  struct State {
    std::string path, attempt_id;
    std::unique_ptr<LogFile> file;
    uint64_t offset = 0;
    std::string partial;  // an unfinished last line
    std::chrono::steady_clock::time_point last_write = std::chrono::steady_clock::now();
  };
  auto st = std::make_shared<State>();
  st->path = path;
  st->attempt_id = attempt_id;
  st->offset = from;
  auto line = [](std::string* out, std::string_view text) {
    *out += "event: log\ndata: ";
    *out += text;
    *out += "\n\n";
  };
  res.Stream(
      "text/event-stream",
      [this, st, slot, line](std::string* out, bool) {
        bool finished = engine->Read([&](const engine::State& s) {
          const engine::Attempt* a = s.FindAttempt(st->attempt_id);
          return !a || engine::IsTerminal(a->phase);
        });
        if (!st->file || !st->file->exists()) st->file = std::make_unique<LogFile>(st->path);
        auto chunk = st->file->Read(st->offset, kLogBlock);
        if (!chunk.ok()) {
          *out = "event: error\ndata: " +
                 CanonicalDump(Json{{"message", chunk.status().message()}}) + "\n\n";
          return StreamNext::kEnd;
        }
        st->offset += chunk->size();
        st->partial += *chunk;
        size_t start = 0;
        for (size_t nl; (nl = st->partial.find('\n', start)) != std::string::npos; start = nl + 1) {
          line(out, std::string_view(st->partial).substr(start, nl - start));
        }
        st->partial.erase(0, start);
        if (st->partial.size() >= kLogBlock) {  // a line longer than a block goes in parts
          line(out, st->partial);
          st->partial.clear();
        }
        auto now = std::chrono::steady_clock::now();
        if (!out->empty()) st->last_write = now;
        if (chunk->size() == kLogBlock) return StreamNext::kMore;
        if (finished && chunk->empty()) {
          if (!st->partial.empty()) line(out, st->partial);
          *out += "event: end\ndata: {}\n\n";
          return StreamNext::kEnd;
        }
        if (finished) return StreamNext::kMore;  // read on to the end
        if (out->empty() && now - st->last_write >= kSseKeepAlive) {
          *out = ": keep-alive\n\n";
          st->last_write = now;
        }
        return StreamNext::kWait;
      },
      kLogFollowTick);
}

void ApiServer::Impl::StreamEvents(Response& res, std::shared_ptr<StreamSlots::Slot> slot,
                                   Fetch fetch, std::function<bool()> done, Keep keep) {
  auto last_write = std::make_shared<std::chrono::steady_clock::time_point>(
      std::chrono::steady_clock::now());
  res.Stream(
      "text/event-stream",
      [slot, fetch = std::move(fetch), done = std::move(done), keep = std::move(keep),
       last_write](std::string* out, bool) {
        // Before the read: a run found finished here has all its events in the store.
        bool finished = done && done();
        auto page = fetch();
        if (!page.ok()) {
          *out = "event: error\ndata: " +
                 CanonicalDump(Json{{"message", page.status().message()}}) + "\n\n";
          return StreamNext::kEnd;
        }
        for (const auto& e : page->events) {
          if (!keep || keep(e)) *out += SseEvent(e);
        }
        auto now = std::chrono::steady_clock::now();
        if (!out->empty()) *last_write = now;
        if (page->more) return StreamNext::kMore;
        if (finished) return StreamNext::kEnd;
        if (out->empty() && now - *last_write >= kSseKeepAlive) {
          *out = ": keep-alive\n\n";
          *last_write = now;
        }
        return StreamNext::kWait;
      },
      kSseTick);
}

void ApiServer::Impl::EventRoutes() {
  Get("/v1/events", Wrap("/v1/events", [this](const Request& req, Response& res) {
             HttpError err;
             auto after = QueryInt(req, "after", 0, 0, INT64_MAX, &err);
             if (!after.ok()) return WriteError(res, err);
             auto limit = QueryInt(req, "limit", 100, 1, kMaxPageSize, &err);
             if (!limit.ok()) return WriteError(res, err);
             storage::ReadFilter filter;
             filter.types = SplitComma(req.Param("type"));
             filter.actor = req.Param("actor");
             for (auto [name, field] : {std::pair{"since", &filter.since}, {"until", &filter.until}}) {
               if (!req.HasParam(name)) continue;
               auto t = ParseTime(req.Param(name));
               if (!t.ok()) {
                 return WriteError(res, {400, "bad_parameter",
                                         std::string(name) + ": " + t.status().message(), {}});
               }
               *field = FormatTime(*t);
             }
             std::string stream = req.Param("stream");
             if (req.HasParam("run")) {
               if (!stream.empty()) {
                 return WriteError(res, {400, "bad_parameter", "run and stream: give one", {}});
               }
               stream = engine::RunStream(req.Param("run"));
             }
             bool exact = !stream.empty() && stream.back() != '*';
             filter.stream_prefix = exact ? stream : stream.substr(0, stream.empty() ? 0 : stream.size() - 1);
             uint64_t from = static_cast<uint64_t>(*after);
             std::string last_id = req.Header("Last-Event-ID");
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
             std::string tenant = req.Param("tenant");
             if (req.HasParam("tenant") && !IsValidName(tenant)) {
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
               auto slot = AcquireStream(res);
               if (!slot) return;
               // A position cursor: each read starts after the last position read, or
               // after the head seen before a read that came back short (so a filter
               // that matches little does not make every read rescan the log).
               auto cursor = std::make_shared<uint64_t>(from);
               Fetch follow = [this, filter, lim, cursor]() -> Result<EventPage> {
                 uint64_t head = store->Head().position;
                 ASSIGN_OR_RETURN(auto page, store->ReadAll(*cursor, lim, filter));
                 EventPage out;
                 out.more = page.size() == lim;
                 if (!page.empty()) *cursor = page.back().position;
                 if (!out.more) *cursor = std::max(*cursor, head);
                 out.events = std::move(page);
                 return out;
               };
               return StreamEvents(res, std::move(slot), std::move(follow), nullptr, keep);
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
  Get(R"(/v1/runs/([^/]+)/history)",
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
  Get(R"(/v1/runs/([^/]+)/events)",
           Wrap("/v1/runs/{id}/events", [this](const Request& req, Response& res) {
             std::string id = req.matches[1];
             bool exists = engine->Read([&](const engine::State& s) { return SeesRun(s, id); });
             if (!exists) return WriteError(res, {404, "not_found", "run '" + id + "' not found", {}});
             HttpError err;
             auto after = QueryInt(req, "after", 0, 0, INT64_MAX, &err);
             if (!after.ok()) return WriteError(res, err);
             uint64_t from = static_cast<uint64_t>(*after);
             std::string last_id = req.Header("Last-Event-ID");
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
               auto slot = AcquireStream(res);
               if (!slot) return;
               // A stream-version cursor: each read starts after the last version read
               // (only the first reads the run's stream from its start).
               auto version = std::make_shared<uint64_t>(1);
               Fetch follow = [this, stream, version, from]() -> Result<EventPage> {
                 ASSIGN_OR_RETURN(auto page, store->ReadStream(stream, *version, 1000));
                 EventPage out;
                 out.more = page.size() == 1000;
                 if (!page.empty()) *version = page.back().version + 1;
                 for (auto& e : page) {
                   if (e.position > from) out.events.push_back(std::move(e));
                 }
                 return out;
               };
               // The stream ends once the run is finished and everything was sent.
               return StreamEvents(res, std::move(slot), std::move(follow), [this, id] {
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
  Get("/v1/containers",
      Wrap("/v1/containers",
           [this](const Request& req, Response& res) {
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
  Post(R"(/v1/containers/([^/]+)/register)",
       Wrap("/v1/containers/{id}/register",
            [this](const Request& req, Response& res) {
              HttpError err;
              auto body = ParseBody(req, &err);
              if (!body.ok()) return WriteError(res, err);
              auto parsed = ParseRegisterBody(req.matches[1], *body);
              if (!parsed.ok()) {
                return WriteError(res, {400, "malformed", parsed.status().message(), {}});
              }
              const engine::RegisterContainer& cmd = *parsed;
              auto r = engine->Execute(cmd);
              if (!r.ok()) return WriteError(res, ContainerError(r.status()));
              engine->Heartbeat(cmd.container);
              WriteJson(res, 200,
                        Json{{"epoch", engine->epoch()},
                             {"lease_ms", engine->options().config.lease.count() / 1000},
                             {"poll_timeout_ms",
                              engine->options().config.poll_timeout.count() / 1000}});
            }));
  Post(R"(/v1/containers/([^/]+)/poll)",
       Wrap("/v1/containers/{id}/poll",
            [this](const Request& req, Response& res) {
              HttpError err;
              auto body = ParseBody(req, &err);
              if (!body.ok()) return WriteError(res, err);
              auto parsed = ParsePollBody(req.matches[1], *body);
              if (!parsed.ok()) {
                return WriteError(res, {400, "malformed", parsed.status().message(), {}});
              }
              const engine::PollContainer& cmd = *parsed;
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
              // The long poll parks (no thread waits): re-checked whenever the engine
              // commits, answered at the latest at executor.pollTimeout.
              auto deadline = std::chrono::steady_clock::now() +
                              std::chrono::microseconds(engine->options().config.poll_timeout);
              res.Defer(deadline, [this, container = cmd.container, running = cmd.running,
                                   ack = std::move(ack)](Response& res, bool expired) {
                engine::DispatchView view = engine->DispatchFor(container, running, ack);
                if (ack.empty() && view.assignments.empty() && view.cancels.empty() && !expired) {
                  return false;
                }
                Json ack_json = Json::array();
                for (const auto& a : ack) ack_json.push_back(a);
                WriteJson(res, 200, Json{{"epoch", engine->epoch()},
                                         {"ack", ack_json},
                                         {"assignments", view.assignments},
                                         {"cancels", view.cancels},
                                         {"grace_ms", engine->options().config.grace_ms}});
                return true;
              });
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
  return impl_->http.Bind(host, port);
}

void ApiServer::Stop() {
  if (!impl_ || impl_->stopping.exchange(true)) return;
  impl_->http.Stop();
}

}  // namespace epoch::api
