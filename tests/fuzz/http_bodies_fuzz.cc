// libFuzzer target: request bodies and query strings against a real, in-process epochd.
//
// Once (LLVMFuzzerInitialize): a RocksDB event store in a temp dir ($TMPDIR or /tmp),
// the engine (a pool of one container, c1, whose backend launches nothing: the fuzzer
// registers it itself with the credential the leader minted for it) and
// api::ApiServer (on its asynchronous Beast/Asio transport) on 127.0.0.1, port 0 (plain
// HTTP: the bodies are the subject, not TLS), with an admin token in its tokens file, a
// workflow "fuzz" registered and one run of it submitted. Then every input is one
// request, with that token, over one keep-alive httplib::Client:
//
//   byte 0, low 3 bits: the request, the rest of the input being its body or query
//     0  POST /v1/workflows            4  POST /v1/runs/{id}/retry
//     1  POST /v1/runs                 5  GET  /v1/events?<rest>
//     2  POST /v1/cache/invalidate     6  GET  /v1/runs?<rest>
//     3  POST /v1/runs/{id}/cancel     7  GET  /v1/runs/<rest, as one path segment>
//   byte 0, bit 0x40: send Idempotency-Key "k<byte 0 >> 7>" (so '0'..'7' are the eight
//     requests as is and 'p'..'w' the same with a key); {id} is the last run created.
//   byte 0, bits 0x38 == 0x08 or 0x10 (e.g. 'H' and 'P'): instead, the container
//     protocol, POST /v1/containers/c1/register (0x08) or /poll (0x10) with c1's own
//     credential and the rest as the body (reports, running lists, inventories).
//   Bodies go as Content-Type: application/json. Query bytes other than
//   [A-Za-z0-9-._~!$'()*,;:@/?&=+%] are %-escaped ('%' itself is sent raw, so malformed
//   escapes reach the server); a query that would decode to "follow" is skipped (a
//   followed stream never ends). EPOCH_FUZZ_VERBOSE=1 prints each request and answer.
//
// Invariants (abort() on violation): every request is answered (a dropped connection
// is retried once on a fresh one, then fails); the status is 2xx or 4xx, never 5xx
// (nor 1xx/3xx: this master leads); every answer is JSON; a 4xx is
// {"error": {"code": "<non-empty>", "message": "...", "details": [...]}}.
#include <httplib.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <stdlib.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <string>
#include <string_view>

#include "api/auth.h"
#include "api/config.h"
#include "api/server.h"
#include "common/clock.h"
#include "common/files.h"
#include "common/ids.h"
#include "common/json.h"
#include "engine/engine.h"
#include "engine/container_backend.h"
#include "storage/event_store.h"

namespace {

using epoch::Json;

[[noreturn]] void Fail(const std::string& what) {
  std::fprintf(stderr, "http_bodies_fuzz: invariant violated: %s\n", what.c_str());
  std::fflush(stderr);
  std::abort();
}

[[noreturn]] void SetupFailed(const std::string& what) {
  std::fprintf(stderr, "http_bodies_fuzz: setup failed: %s\n", what.c_str());
  std::exit(2);
}

// The pool's backend: launches nothing, keeps the credential the leader minted for
// each container, so the fuzzer can speak the container protocol as that container.
class CredentialKeeper : public epoch::engine::ContainerBackend {
 public:
  std::string Name() const override { return "local"; }
  epoch::Result<std::string> Launch(const epoch::engine::ContainerSpec& spec) override {
    std::lock_guard<std::mutex> lock(mu_);
    credentials_[spec.id] = spec.credential;
    return std::string("fuzz-" + spec.id);
  }
  epoch::Status Terminate(const std::string&, const std::string&) override {
    return epoch::Status::Ok();
  }
  epoch::Result<epoch::engine::ContainerDescription> Describe(const std::string&,
                                                               const std::string&) override {
    return epoch::engine::ContainerDescription{};
  }
  std::string CredentialOf(const std::string& id) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = credentials_.find(id);
    return it == credentials_.end() ? "" : it->second;
  }

 private:
  std::mutex mu_;
  std::map<std::string, std::string> credentials_;
};

// The whole in-process master; reachable from a global so LeakSanitizer sees it live.
struct Master {
  std::string dir;
  std::unique_ptr<epoch::storage::EventStore> store;
  std::unique_ptr<CredentialKeeper> backend;
  epoch::SystemClock clock;
  epoch::RandomIdGenerator ids;
  std::unique_ptr<epoch::engine::Engine> engine;
  std::unique_ptr<epoch::api::ApiServer> server;
  int port = 0;
  std::unique_ptr<httplib::Client> client;
  std::string last_run = "r-none";
  std::string token;  // an admin's
  std::unique_ptr<httplib::Client> agent;  // as container c1, with its credential
  std::string credential;

  void Connect() {
    client = std::make_unique<httplib::Client>("127.0.0.1", port);
    client->set_bearer_token_auth(token.c_str());
    client->set_keep_alive(true);
    client->set_tcp_nodelay(true);  // else Nagle and delayed ACKs cost 40 ms a request
    client->set_url_encode(false);  // the fuzzer escapes (or deliberately not) itself
    client->set_connection_timeout(std::chrono::seconds(5));
    client->set_read_timeout(std::chrono::seconds(8));  // under run.sh's -timeout=10
    client->set_write_timeout(std::chrono::seconds(8));
    agent = std::make_unique<httplib::Client>("127.0.0.1", port);
    agent->set_bearer_token_auth(credential.c_str());
    agent->set_keep_alive(true);
    agent->set_tcp_nodelay(true);
    agent->set_connection_timeout(std::chrono::seconds(5));
    agent->set_read_timeout(std::chrono::seconds(8));
    agent->set_write_timeout(std::chrono::seconds(8));
  }
};

Master* g = nullptr;
bool verbose = false;  // EPOCH_FUZZ_VERBOSE=1: print every request and its answer

void Shutdown() {
  if (!g) return;
  g->client.reset();
  g->agent.reset();
  g->server->Stop();
  g->engine->Stop();
  g->server.reset();
  g->engine.reset();
  g->store.reset();
  std::error_code ec;
  std::filesystem::remove_all(g->dir, ec);
  delete g;
  g = nullptr;
}

constexpr std::string_view kWorkflow =
    R"({"name": "fuzz", "params": {"n": 1, "who": null},
        "steps": [{"name": "a", "kind": "data_prep", "command": ["true", "{{params.n}}"],
                   "cache": true, "outputs": ["x"]},
                  {"name": "b", "kind": "train", "after": ["a"], "retry": {"limit": 1},
                   "command": ["echo", "{{steps.a.outputs.x}}", "{{params.who}}"],
                   "when": "params.n > 0"}]})";

using Answer = httplib::Result;

// One request; a connection the server dropped is retried once on a fresh one.
template <typename Send>
Answer Ask(const Send& send, const std::string& what) {
  Answer r = send(*g->client);
  if (!r) {
    httplib::Error first = r.error();
    g->Connect();
    r = send(*g->client);
    if (!r) {
      Fail(what + ": no answer (" + httplib::to_string(first) + ", then " +
           httplib::to_string(r.error()) + ")");
    }
  }
  return r;
}

std::string Escape(std::string_view in, bool segment) {
  static const std::string_view kRaw = "-._~!$'()*,;:@/?&=+%";
  std::string out;
  for (unsigned char c : in) {
    bool raw = std::isalnum(c) || (kRaw.find(static_cast<char>(c)) != std::string_view::npos &&
                                   !(segment && (c == '/' || c == '?')));
    if (raw) {
      out += static_cast<char>(c);
    } else {
      char buf[4];
      std::snprintf(buf, sizeof buf, "%%%02X", c);
      out += buf;
    }
  }
  return out;
}

int Hex(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// A superset of what the server's query decoding (api/http_server.h: %XX and '+') can
// make of s (%uXXXX too, as httplib's server once decoded it).
bool MayMeanFollow(std::string_view s) {
  std::string d;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%' && i + 2 < s.size() && Hex(s[i + 1]) >= 0 && Hex(s[i + 2]) >= 0) {
      d += static_cast<char>(Hex(s[i + 1]) * 16 + Hex(s[i + 2]));
      i += 2;
    } else if (s[i] == '%' && i + 5 < s.size() && s[i + 1] == 'u' && Hex(s[i + 2]) == 0 &&
               Hex(s[i + 3]) == 0 && Hex(s[i + 4]) >= 0 && Hex(s[i + 5]) >= 0) {
      d += static_cast<char>(Hex(s[i + 4]) * 16 + Hex(s[i + 5]));
      i += 5;
    } else {
      d += s[i];
    }
  }
  return d.find("follow") != std::string::npos;
}

void CheckAnswer(const httplib::Response& res, const std::string& what) {
  const int st = res.status;
  const bool ok = st >= 200 && st < 300;
  if (!ok && !(st >= 400 && st < 500)) {
    Fail(what + ": HTTP " + std::to_string(st) + " " + res.body.substr(0, 2000));
  }
  std::string ct = res.get_header_value("Content-Type");
  if (ct.rfind("application/json", 0) != 0) {
    Fail(what + ": HTTP " + std::to_string(st) + " with Content-Type '" + ct + "'");
  }
  auto j = epoch::ParseJson(res.body, 1000);
  if (!j.ok())
    Fail(what + ": HTTP " + std::to_string(st) + ", body is not JSON: " + res.body.substr(0, 2000));
  if (!j->is_object()) Fail(what + ": HTTP " + std::to_string(st) + ", body is not an object");
  if (res.get_header_value("Epoch-Role") != "leader") {
    Fail(what + ": Epoch-Role '" + res.get_header_value("Epoch-Role") + "'");
  }
  if (ok) return;
  auto e = j->find("error");
  if (e == j->end() || !e->is_object()) Fail(what + ": 4xx without an error object: " + res.body);
  auto code = e->find("code");
  auto message = e->find("message");
  auto details = e->find("details");
  if (code == e->end() || !code->is_string() || code->get_ref<const std::string&>().empty() ||
      message == e->end() || !message->is_string() ||
      (details != e->end() && !details->is_array())) {
    Fail(what + ": malformed error body: " + res.body);
  }
}

void Setup() {
  signal(SIGPIPE, SIG_IGN);
  verbose = std::getenv("EPOCH_FUZZ_VERBOSE") != nullptr;
  spdlog::set_level(spdlog::level::err);  // 500s and store failures still show
  g = new Master;
  const char* tmp = std::getenv("TMPDIR");
  std::string tmpl = std::string(tmp && *tmp ? tmp : "/tmp") + "/epoch-http-fuzz.XXXXXX";
  if (!mkdtemp(tmpl.data())) SetupFailed("mkdtemp " + tmpl);
  g->dir = tmpl;
  for (const char* sub : {"store", "runs", "logs", "containers"}) {
    if (auto st = epoch::MakeDirs(g->dir + "/" + sub); !st.ok()) SetupFailed(st.ToString());
  }
  auto store = epoch::storage::OpenRocksDbEventStore({g->dir + "/store", true, ""});
  if (!store.ok()) SetupFailed(store.status().ToString());
  g->store = std::move(*store);
  g->backend = std::make_unique<CredentialKeeper>();

  epoch::api::Config config;
  config.data_dir = g->dir;
  config.base_port = 0;
  config.max_replicas = 1;
  config.threads = 4;
  config.max_streams = 2;
  config.snapshot_every = 2000;  // so that snapshots are written while fuzzing, too
  config.plain_http = true;      // the bodies are the subject, not TLS
  auto token = epoch::api::CreateToken(g->dir + "/tokens.json", "fuzz", "fuzz",
                                       epoch::api::Role::kAdmin, epoch::FormatTime(g->clock.Now()));
  if (!token.ok()) SetupFailed(token.status().ToString());
  g->token = token->token;

  epoch::engine::EngineOptions eopts;
  eopts.node = "fuzz";
  eopts.snapshot_every = config.snapshot_every;
  eopts.config.data_dir = g->dir;
  eopts.config.max_replicas = 1;  // c1, kept: its lease outlives the fuzzing
  eopts.config.min_replicas = 1;
  eopts.config.lease = std::chrono::hours(24);
  eopts.config.register_timeout = std::chrono::hours(24);
  eopts.config.poll_timeout = std::chrono::milliseconds(20);
  // Large containers (never launched): definitions are refused for their content, not size.
  eopts.config.container_cpu_millis = 64000;
  eopts.config.container_memory_bytes = 256LL << 30;
  eopts.config.container_gpus = 8;
  g->engine =
      std::make_unique<epoch::engine::Engine>(eopts, g->store.get(), g->backend.get(), &g->clock);
  g->server = std::make_unique<epoch::api::ApiServer>(config, g->engine.get(), g->store.get(),
                                                      &g->ids, &g->clock);
  auto port = g->server->Bind("127.0.0.1", 0);
  if (!port.ok()) SetupFailed(port.status().ToString());
  g->port = *port;
  g->engine->SetAdvertiseUrl("http://127.0.0.1:" + std::to_string(g->port));
  if (auto st = g->engine->Start(); !st.ok()) SetupFailed(st.ToString());
  g->server->Serve();
  // The pool asks for c1 at its first tick; its credential is then the backend's.
  for (int i = 0; i < 500 && g->backend->CredentialOf("c1").empty(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  g->credential = g->backend->CredentialOf("c1");
  if (g->credential.empty()) SetupFailed("the pool never asked for container c1");
  g->Connect();
  std::atexit(Shutdown);
  auto registered = g->agent->Post(
      "/v1/containers/c1/register",
      R"({"backend": "local", "host": "fuzz", "cpu_millis": 64000, "memory_bytes": 274877906944})",
      "application/json");
  if (!registered || registered->status != 200) {
    SetupFailed("registering c1: " +
                (registered ? std::to_string(registered->status) + " " + registered->body
                            : httplib::to_string(registered.error())));
  }

  // Something to refer to: the workflow "fuzz" and one run of it.
  auto answer = [](const httplib::Result& r) {
    return r ? "HTTP " + std::to_string(r->status) + " " + r->body : httplib::to_string(r.error());
  };
  auto reg = g->client->Post("/v1/workflows", std::string(kWorkflow), "application/json");
  if (!reg || reg->status != 201) SetupFailed("registering the workflow: " + answer(reg));
  auto run = g->client->Post("/v1/runs", R"({"workflow": "fuzz", "params": {"who": "me"}})",
                             "application/json");
  if (!run || run->status != 201) SetupFailed("submitting a run: " + answer(run));
  g->last_run = run->get_header_value("Location").substr(std::string("/v1/runs/").size());
  std::fprintf(stderr, "http_bodies_fuzz: epochd in-process on 127.0.0.1:%d, data in %s\n", g->port,
               g->dir.c_str());
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  Setup();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const uint8_t op = data[0];
  const std::string rest(reinterpret_cast<const char*>(data) + 1, size - 1);
  httplib::Headers headers;
  if (op & 0x40) headers.emplace("Idempotency-Key", "k" + std::to_string(op >> 7));

  std::string method = "POST", path;
  const bool container = (op & 0x38) == 0x08 || (op & 0x38) == 0x10;
  switch (container ? 8 : op & 7) {
    case 8:
      path = (op & 0x38) == 0x08 ? "/v1/containers/c1/register" : "/v1/containers/c1/poll";
      break;
    case 0:
      path = "/v1/workflows";
      break;
    case 1:
      path = "/v1/runs";
      break;
    case 2:
      path = "/v1/cache/invalidate";
      break;
    case 3:
      path = "/v1/runs/" + g->last_run + "/cancel";
      break;
    case 4:
      path = "/v1/runs/" + g->last_run + "/retry";
      break;
    case 5:
    case 6: {
      std::string query = Escape(rest, /*segment=*/false);
      if (MayMeanFollow(query)) return 0;
      method = "GET";
      path = std::string((op & 7) == 5 ? "/v1/events" : "/v1/runs") + "?" + query;
      break;
    }
    default:
      if (rest.empty()) return 0;  // GET /v1/runs/ is another route
      method = "GET";
      path = "/v1/runs/" + Escape(rest, /*segment=*/true);
      break;
  }
  const std::string what = method + " " + path.substr(0, 300);
  Answer r = method == "GET"
                 ? Ask([&](httplib::Client& c) { return c.Get(path.c_str(), headers); }, what)
                 : Ask(
                       [&](httplib::Client& c) {
                         return (container ? *g->agent : c)
                             .Post(path.c_str(), headers, rest, "application/json");
                       },
                       what);
  if (verbose) {
    std::fprintf(stderr, "%s -> %d %s\n", what.c_str(), r->status, r->body.substr(0, 500).c_str());
  }
  std::string context = what;
  if (method == "POST") {  // the body as a JSON string: escaped, ASCII, one line
    context +=
        " with body " + Json(rest)
                            .dump(-1, ' ', /*ensure_ascii=*/true, Json::error_handler_t::replace)
                            .substr(0, 2000);
  }
  CheckAnswer(*r, context);
  // Later cancels and retries go to the newest run.
  if ((op & 7) == 1 && r->status == 201) {
    std::string loc = r->get_header_value("Location");
    if (loc.rfind("/v1/runs/", 0) == 0) g->last_run = loc.substr(9);
  }
  return 0;
}
