#include "executors/agent/agent.h"

#include <dirent.h>
#include <httplib.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <thread>

#include "common/files.h"
#include "common/sha256.h"
#include "common/units.h"
#include "executors/process.h"

namespace epoch::executors {

namespace {

using SteadyClock = std::chrono::steady_clock;
using SteadyTime = SteadyClock::time_point;
using std::chrono::milliseconds;

constexpr size_t kMaxMetricsBytes = 64 * 1024;
constexpr size_t kMaxOutputs = 10000;
constexpr auto kMinBackoff = milliseconds(100);
constexpr auto kMaxBackoff = milliseconds(1000);

// ---------------------------------------------------------------- small helpers

std::string JoinPathParts(const std::string& a, const std::string& b) {
  if (a.empty()) return b;
  if (!a.empty() && a.back() == '/') return a + b;
  return a + "/" + b;
}

// Absolute paths stay; relative ones are taken relative to the data dir.
std::string UnderDataDir(const std::string& data_dir, const std::string& p) {
  if (!p.empty() && p[0] == '/') return p;
  return JoinPathParts(data_dir, p);
}

std::string TrimUrl(std::string url) {
  while (!url.empty() && url.back() == '/') url.pop_back();
  if (url.find("://") == std::string::npos) url = "http://" + url;
  return url;
}

Json NullableInt(const std::optional<int>& v) { return v ? Json(*v) : Json(nullptr); }

std::string NowString() { return FormatTime(SystemClock().Now()); }

// Files (recursively, not following links) under dir as "a/b.bin" names, except
// metrics.json at the top; regular files only.
void WalkOutputs(const std::string& dir, const std::string& prefix, Json& out, bool& truncated) {
  DIR* d = opendir(dir.c_str());
  if (!d) return;
  std::vector<std::string> names;
  while (struct dirent* e = readdir(d)) {
    std::string n = e->d_name;
    if (n != "." && n != "..") names.push_back(n);
  }
  closedir(d);
  std::sort(names.begin(), names.end());
  for (const auto& n : names) {
    std::string path = dir + "/" + n;
    std::string rel = prefix.empty() ? n : prefix + "/" + n;
    struct stat st;
    if (lstat(path.c_str(), &st) != 0) continue;
    if (S_ISDIR(st.st_mode)) {
      WalkOutputs(path, rel, out, truncated);
    } else if (S_ISREG(st.st_mode)) {
      if (rel == "metrics.json") continue;
      if (out.size() >= kMaxOutputs) {
        truncated = true;
        return;
      }
      uint64_t size = 0;
      auto hex = Sha256FileHex(path, &size);
      Json entry{{"name", rel}, {"size", static_cast<uint64_t>(st.st_size)}};
      if (hex.ok()) {
        entry["size"] = size;
        entry["sha256"] = *hex;
      } else {
        entry["sha256"] = nullptr;
        entry["error"] = hex.status().message();
      }
      out.push_back(std::move(entry));
    }
    if (truncated) return;
  }
}

// Reads <outputs>/metrics.json: missing -> {}, else at most 64 KiB and an object.
Json ReadMetrics(const std::string& outputs_dir, std::string* error) {
  std::string path = outputs_dir + "/metrics.json";
  struct stat st;
  if (lstat(path.c_str(), &st) != 0) return Json::object();
  if (!S_ISREG(st.st_mode)) {
    *error = "metrics.json is not a regular file";
    return Json::object();
  }
  if (static_cast<size_t>(st.st_size) > kMaxMetricsBytes) {
    *error = "metrics.json is larger than " + std::to_string(kMaxMetricsBytes) + " bytes";
    return Json::object();
  }
  auto text = ReadFile(path, kMaxMetricsBytes);
  if (!text.ok()) {
    *error = "metrics.json: " + text.status().message();
    return Json::object();
  }
  auto j = ParseJson(*text);
  if (!j.ok()) {
    *error = "metrics.json: " + j.status().message();
    return Json::object();
  }
  if (!j->is_object()) {
    *error = "metrics.json is not a JSON object";
    return Json::object();
  }
  return std::move(*j);
}

// The error code of a {"error":{"code":...}} body, or "".
std::string ErrorCode(const std::string& body) {
  auto j = ParseJson(body);
  if (!j.ok() || !j->is_object()) return "";
  auto it = j->find("error");
  if (it == j->end()) return "";
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object()) {
    auto c = it->find("code");
    if (c != it->end() && c->is_string()) return c->get<std::string>();
  }
  return "";
}

std::string GetString(const Json& j, const char* key, const std::string& dflt = "") {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return dflt;
  if (it->is_string()) return it->get<std::string>();
  return it->dump();
}

// ---------------------------------------------------------------- assignment

struct Assignment {
  std::string attempt_id, run, step, attempt;
  std::vector<std::string> argv;
  std::map<std::string, std::string> env;
  std::string workspace, outputs_dir, log_path;
  int64_t timeout_ms = 0;
  std::vector<std::string> gpus;  // as sent: indices (or UUIDs) of this container's GPUs
  std::string cuda_visible_devices, gpu_uuids;  // resolved: comma-joined visible_ids, UUIDs
  // Upstream outputs the command reads, with the digests their producers recorded.
  std::vector<std::pair<std::string, std::string>> inputs;  // (path, sha256)
};

// Checks each input against its recorded digest; the first that differs or cannot be
// read, as the attempt's failure reason.
Status VerifyInputs(const Assignment& a) {
  for (const auto& [path, want] : a.inputs) {
    auto got = Sha256FileHex(path);
    if (!got.ok()) {
      return FailedPrecondition("input_missing: " + path + ": " + got.status().message());
    }
    if (*got != want) {
      return FailedPrecondition("input_mismatch: " + path + " has sha256 " + *got +
                                ", its producer recorded " + want);
    }
  }
  return Status::Ok();
}

// Maps the assignment's GPU indices to the child's CUDA_VISIBLE_DEVICES (visible_ids)
// and EPOCH_GPU_UUIDS. kInvalidArgument "unknown GPU index N" for one this container
// does not have (a UUID of one of its GPUs is accepted too), or one listed twice.
Status ResolveGpus(const gpu::Inventory& inventory, Assignment* a) {
  std::set<int> seen;
  for (const auto& want : a->gpus) {
    const gpu::GpuInfo* found = nullptr;
    for (const auto& g : inventory.gpus) {
      if (want == std::to_string(g.index) || (!g.uuid.empty() && want == g.uuid)) {
        found = &g;
        break;
      }
    }
    if (found == nullptr) return InvalidArgument("unknown GPU index " + want);
    if (!seen.insert(found->index).second) {
      return InvalidArgument("GPU index " + want + " is listed twice");
    }
    if (!found->healthy) {
      spdlog::warn("attempt {} is given GPU {} ({}), which is not healthy: {}", a->attempt_id,
                   found->index, found->uuid, found->reason);
    }
    const char* sep = a->cuda_visible_devices.empty() ? "" : ",";
    a->cuda_visible_devices += sep + found->visible_id;
    a->gpu_uuids += sep + found->uuid;
  }
  return Status::Ok();
}

Result<Assignment> ParseAssignment(const Json& j, const std::string& data_dir,
                                   const gpu::Inventory& inventory) {
  if (!j.is_object()) return InvalidArgument("assignment is not an object");
  Assignment a;
  a.attempt_id = GetString(j, "attempt_id");
  if (a.attempt_id.empty()) return InvalidArgument("assignment has no attempt_id");
  // "<run>/<step>/<attempt>" gives the defaults for the fields below.
  std::vector<std::string> parts;
  for (size_t i = 0, j2; i <= a.attempt_id.size(); i = j2 + 1) {
    j2 = a.attempt_id.find('/', i);
    if (j2 == std::string::npos) j2 = a.attempt_id.size();
    parts.push_back(a.attempt_id.substr(i, j2 - i));
  }
  a.run = GetString(j, "run", parts.size() > 0 ? parts[0] : "");
  a.step = GetString(j, "step", parts.size() > 1 ? parts[1] : "");
  a.attempt = GetString(j, "attempt", parts.size() > 2 ? parts[2] : "");
  auto argv = j.find("argv");
  if (argv == j.end() || !argv->is_array() || argv->empty()) {
    return InvalidArgument("argv must be a non-empty array of strings");
  }
  for (const auto& s : *argv) {
    if (!s.is_string()) return InvalidArgument("argv must be a non-empty array of strings");
    a.argv.push_back(s.get<std::string>());
  }
  if (auto env = j.find("env"); env != j.end() && !env->is_null()) {
    if (!env->is_object()) return InvalidArgument("env must be an object");
    for (auto it = env->begin(); it != env->end(); ++it) {
      a.env[it.key()] = it.value().is_string() ? it.value().get<std::string>() : it.value().dump();
    }
  }
  std::string run_dir = "runs/" + a.run;
  a.workspace = UnderDataDir(data_dir, GetString(j, "workspace", run_dir));
  a.outputs_dir = UnderDataDir(
      data_dir, GetString(j, "outputs_dir", run_dir + "/" + a.step + "/" + a.attempt + "/outputs"));
  a.log_path = UnderDataDir(
      data_dir,
      GetString(j, "log_path", "logs/" + a.run + "/" + a.step + "/" + a.attempt + ".log"));
  if (auto in = j.find("inputs"); in != j.end() && !in->is_null()) {
    if (!in->is_array()) return InvalidArgument("inputs must be an array");
    for (const auto& x : *in) {
      if (!x.is_object() || !x.contains("path") || !x["path"].is_string() ||
          !x.contains("sha256") || !x["sha256"].is_string()) {
        return InvalidArgument("inputs: each must be {\"path\", \"sha256\"}");
      }
      a.inputs.emplace_back(UnderDataDir(data_dir, x["path"].get<std::string>()),
                            x["sha256"].get<std::string>());
    }
  }
  if (auto t = j.find("timeout_ms"); t != j.end() && !t->is_null()) {
    if (!t->is_number()) return InvalidArgument("timeout_ms must be a number");
    a.timeout_ms = std::max<int64_t>(0, t->get<int64_t>());
  }
  if (auto g = j.find("gpus"); g != j.end() && !g->is_null()) {
    if (!g->is_array()) return InvalidArgument("gpus must be an array");
    for (const auto& x : *g) {
      if (x.is_string()) {
        a.gpus.push_back(x.get<std::string>());
      } else if (x.is_number_integer()) {
        a.gpus.push_back(std::to_string(x.get<int64_t>()));
      } else if (x.is_object() && x.contains("index")) {
        a.gpus.push_back(GetString(x, "index"));
      } else {
        return InvalidArgument("gpus entries must be indices or uuids");
      }
    }
  }
  RETURN_IF_ERROR(ResolveGpus(inventory, &a));
  return a;
}

}  // namespace

// ---------------------------------------------------------------- flags

std::string AgentUsage() {
  return "usage: epoch-agent --id ID --master URL --data-dir DIR --cpu-millis N "
         "--memory-bytes N\n"
         "                   [--gpus N] [--backend local] [--handle H] [--grace 5s]\n"
         "                   [--orphan-timeout 300s] [--log-format text|json] "
         "[--log-level info]\n"
         "                   [--ca-cert PEM]\n";
}

Result<AgentOptions> ParseAgentFlags(const std::vector<std::string>& args) {
  AgentOptions o;
  std::map<std::string, std::string> kv;
  static const std::set<std::string> kKnown = {
      "id",      "master", "data-dir", "cpu-millis",     "memory-bytes", "gpus",
      "backend", "handle", "grace",    "orphan-timeout", "log-format",   "log-level",
      "ca-cert"};
  for (size_t i = 0; i < args.size(); ++i) {
    std::string a = args[i];
    if (a == "--help" || a == "-h") return InvalidArgument(AgentUsage());
    if (a.rfind("--", 0) != 0) return InvalidArgument("unexpected argument '" + a + "'");
    std::string name = a.substr(2), value;
    auto eq = name.find('=');
    if (eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    }
    if (!kKnown.count(name)) return InvalidArgument("unknown flag --" + name);
    if (eq == std::string::npos) {
      if (i + 1 >= args.size()) return InvalidArgument("--" + name + " needs a value");
      value = args[++i];
    }
    kv[name] = value;
  }
  for (const char* required : {"id", "master", "data-dir", "cpu-millis", "memory-bytes"}) {
    if (!kv.count(required)) return InvalidArgument(std::string("--") + required + " is required");
  }
  o.id = kv["id"];
  if (o.id.empty() || o.id.find('/') != std::string::npos || o.id == "." || o.id == "..") {
    return InvalidArgument("--id '" + o.id + "' is not a valid container id");
  }
  o.master_url = kv["master"];
  o.data_dir = kv["data-dir"];
  auto cpu = ParseCpuMillis(kv["cpu-millis"].find_first_not_of("0123456789") == std::string::npos
                                ? kv["cpu-millis"] + "m"
                                : kv["cpu-millis"]);
  if (!cpu.ok()) return cpu.status().WithContext("--cpu-millis");
  o.cpu_millis = *cpu;
  auto mem = ParseBytes(kv["memory-bytes"]);
  if (!mem.ok()) return mem.status().WithContext("--memory-bytes");
  o.memory_bytes = *mem;
  if (kv.count("gpus")) {
    try {
      size_t used = 0;
      o.gpus = std::stoi(kv["gpus"], &used);
      if (used != kv["gpus"].size() || o.gpus < 0) throw std::invalid_argument("gpus");
    } catch (const std::exception&) {
      return InvalidArgument("--gpus must be a non-negative integer");
    }
  }
  if (kv.count("backend")) o.backend = kv["backend"];
  if (kv.count("handle")) o.handle = kv["handle"];
  if (kv.count("grace")) {
    auto d = ParseDuration(kv["grace"]);
    if (!d.ok()) return d.status().WithContext("--grace");
    o.grace = *d;
  }
  if (kv.count("orphan-timeout")) {
    auto d = ParseDuration(kv["orphan-timeout"]);
    if (!d.ok()) return d.status().WithContext("--orphan-timeout");
    o.orphan_timeout = *d;
  }
  if (kv.count("log-format")) o.log_format = kv["log-format"];
  if (o.log_format != "text" && o.log_format != "json") {
    return InvalidArgument("--log-format must be text or json");
  }
  if (kv.count("log-level")) o.log_level = kv["log-level"];
  if (kv.count("ca-cert")) o.ca_cert = kv["ca-cert"];
  return o;
}

std::string EscapeAttemptId(std::string_view id) {
  static const char* kHex = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : id) {
    if (std::isalnum(c) || c == '-' || c == '_') {
      out.push_back(static_cast<char>(c));
    } else {
      out.push_back('%');
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 15]);
    }
  }
  return out;
}

// ---------------------------------------------------------------- the agent

struct Agent::Impl {
  enum class Why { kNone, kTimeout, kCancel, kShutdown };

  // An attempt whose process runs; owned by the main loop thread.
  struct Running {
    Assignment a;
    std::unique_ptr<ChildProcess> child;
    std::string started_at;
    std::optional<SteadyTime> deadline;       // timeout_ms
    std::optional<SteadyTime> kill_deadline;  // SIGKILL after SIGTERM + grace
    bool killed = false;
    Why why = Why::kNone;
  };

  // An attempt that ended (or never started), waiting for its report to be built.
  struct Ended {
    Assignment a;
    std::optional<ExitInfo> exit;  // absent: never started
    Why why = Why::kNone;
    std::string reason;  // overrides, for attempts that never started
    std::string started_at, finished_at;
    bool failed_to_start = false;
  };

  Impl(AgentOptions o, std::atomic<bool>* stop) : opt(std::move(o)), stop_flag(stop) {
    dir = JoinPathParts(opt.data_dir, "containers/" + opt.id);
    reports_dir = dir + "/reports";
    attempts_dir = dir + "/attempts";
    master_url = TrimUrl(opt.master_url);
    if (opt.handle.empty()) opt.handle = std::to_string(getpid());
  }

  AgentOptions opt;
  std::atomic<bool>* stop_flag;
  std::string dir, reports_dir, attempts_dir;

  // ---- shared state, guarded by mu
  std::mutex mu;
  std::condition_variable main_cv, report_cv, poll_cv;
  std::string master_url;
  uint64_t url_generation = 0;
  int64_t epoch_seen = 0;
  int64_t poll_timeout_ms = 1000;
  bool registered = false;
  bool release = false;
  bool orphaned = false;
  bool threads_stop = false;  // poll and report threads end
  bool draining = false;      // report thread: finish, send once, end
  bool reports_dirty = false;
  SteadyTime last_contact = SteadyClock::now();
  std::set<std::string> known;           // every attempt ever accepted
  std::set<std::string> active;          // accepted and not yet reported
  std::deque<Json> inbox;                // assignments for the main loop
  std::deque<std::string> cancel_inbox;  // cancels for the main loop
  std::deque<Ended> ended;               // for the report thread
  std::map<std::string, Json> pending;   // unacknowledged reports
  httplib::Client* poll_http = nullptr;  // the poll thread's client, for stop()

  // ---- main loop only
  std::map<std::string, Running> running;

  std::string ReportPath(const std::string& id) {
    return reports_dir + "/" + EscapeAttemptId(id) + ".json";
  }
  std::string MarkerPath(const std::string& id) { return attempts_dir + "/" + EscapeAttemptId(id); }
  Status WriteMarker(const std::string& id, const char* state) {
    return WriteFileDurably(MarkerPath(id),
                            CanonicalDump(Json{{"attempt_id", id}, {"state", state}}));
  }

  Status WriteAgentJson() {  // callers hold mu or run before the threads start
    Json j{{"id", opt.id},
           {"pid", static_cast<int64_t>(getpid())},
           {"master_url", master_url},
           {"epoch_seen", epoch_seen},
           {"started_at", NowString()}};
    return WriteFileDurably(dir + "/agent.json", j.dump(2) + "\n");
  }

  // ---------------------------------------------------------- start-up recovery

  Status Recover() {
    RETURN_IF_ERROR(MakeDirs(reports_dir));
    RETURN_IF_ERROR(MakeDirs(attempts_dir));
    if (auto prev = ReadFile(dir + "/agent.json", 1 << 20); prev.ok()) {
      auto j = ParseJson(*prev);
      if (j.ok() && j->is_object()) {
        auto e = j->find("epoch_seen");
        if (e != j->end() && e->is_number_integer()) epoch_seen = e->get<int64_t>();
      }
    }
    for (const auto& name : ListFiles(reports_dir)) {
      if (name.size() < 5 || name.substr(name.size() - 5) != ".json") continue;
      std::string path = reports_dir + "/" + name;
      auto text = ReadFile(path);
      auto j = text.ok() ? ParseJson(*text) : Result<Json>(text.status());
      if (!j.ok() || !j->is_object() || GetString(*j, "attempt_id").empty()) {
        spdlog::error("unreadable report {} set aside: {}", path, j.status().ToString());
        if (rename(path.c_str(), (path + ".corrupt").c_str()) != 0) {
          spdlog::error("cannot set aside {}", path);
        }
        continue;
      }
      std::string id = GetString(*j, "attempt_id");
      known.insert(id);
      pending[id] = std::move(*j);
    }
    for (const auto& name : ListFiles(attempts_dir)) {
      if (name.size() > 4 && name.substr(name.size() - 4) == ".tmp") continue;
      auto text = ReadFile(attempts_dir + "/" + name, 1 << 20);
      auto j = text.ok() ? ParseJson(*text) : Result<Json>(text.status());
      if (!j.ok() || !j->is_object()) continue;
      std::string id = GetString(*j, "attempt_id");
      if (id.empty()) continue;
      known.insert(id);
      if (GetString(*j, "state") == "started" && !pending.count(id)) {
        // It ran under a previous agent that died; its process died with it
        // (PDEATHSIG). Say so rather than run it again.
        Json report{{"attempt_id", id},
                    {"state", "failed"},
                    {"exit_code", nullptr},
                    {"signal", nullptr},
                    {"reason", "agent restarted while the attempt was running"},
                    {"usage", {{"wall_s", 0.0}, {"cpu_s", 0.0}, {"max_rss_kb", 0}}},
                    {"metrics", Json::object()},
                    {"outputs", Json::array()},
                    {"finished_at", NowString()}};
        RETURN_IF_ERROR(WriteFileDurably(ReportPath(id), report.dump()));
        RETURN_IF_ERROR(WriteMarker(id, "finished"));
        pending[id] = std::move(report);
      }
    }
    if (!pending.empty()) {
      spdlog::info("loaded {} unacknowledged report(s) from {}", pending.size(), reports_dir);
      reports_dirty = true;
    }
    return WriteAgentJson();
  }

  // ---------------------------------------------------------- HTTP

  struct Client {
    std::unique_ptr<httplib::Client> http;
    uint64_t generation = ~uint64_t{0};
    std::string url;
  };

  // (Re)creates c when the master URL changed. Caller must not hold mu.
  void RefreshClient(Client& c, milliseconds read_timeout) {
    std::string url;
    uint64_t gen;
    {
      std::lock_guard<std::mutex> lock(mu);
      url = master_url;
      gen = url_generation;
    }
    if (!c.http || c.generation != gen) {
      c.http = std::make_unique<httplib::Client>(url);
      // The master's API needs the agents' token (the shared data dir's agent.token)
      // and, over HTTPS, trusts the data dir's certificate (or --ca-cert's).
      if (auto token = ReadFile(opt.data_dir + "/agent.token", 4096); token.ok()) {
        std::string t = *token;
        while (!t.empty() && (t.back() == '\n' || t.back() == '\r')) t.pop_back();
        c.http->set_bearer_token_auth(t);
      }
      if (url.rfind("https://", 0) == 0) {
        std::string ca = !opt.ca_cert.empty() ? opt.ca_cert : opt.data_dir + "/tls/cert.pem";
        if (PathExists(ca)) c.http->set_ca_cert_path(ca.c_str());
        c.http->enable_server_certificate_verification(true);
      }
      c.http->set_tcp_nodelay(true);
      c.http->set_connection_timeout(1, 0);
      c.http->set_write_timeout(5, 0);
      c.http->set_keep_alive(true);
      c.generation = gen;
      c.url = url;
    }
    auto ms = read_timeout.count();
    c.http->set_read_timeout(static_cast<time_t>(ms / 1000),
                             static_cast<time_t>((ms % 1000) * 1000));
  }

  struct Reply {
    int status = 0;  // 0: no answer (connection failed, timed out)
    std::string body;
    std::string location;
    std::string error;
  };

  Reply Post(Client& c, const std::string& path, const Json& body) {
    Reply r;
    if (!c.http || !c.http->is_valid()) {
      r.error = "invalid master URL " + c.url;
      return r;
    }
    auto res = c.http->Post(path, body.dump(), "application/json");
    if (!res) {
      r.error = httplib::to_string(res.error());
      return r;
    }
    r.status = res->status;
    r.body = res->body;
    r.location = res->get_header_value("Location");
    return r;
  }

  Json RunningIds() {  // holds mu
    Json ids = Json::array();
    for (const auto& id : active) ids.push_back(id);
    return ids;
  }
  Json PendingReports() {  // holds mu
    Json reps = Json::array();
    for (const auto& [id, rep] : pending) reps.push_back(rep);
    return reps;
  }

  // Moves to another master (a 307 or a newer leader.json) and registers there.
  void SwitchMaster(const std::string& url, const char* why) {  // holds mu
    std::string u = TrimUrl(url);
    if (u == master_url) return;
    spdlog::info("switching master {} -> {} ({})", master_url, u, why);
    master_url = u;
    ++url_generation;
    registered = false;
    if (Status st = WriteAgentJson(); !st.ok()) spdlog::warn("agent.json: {}", st.ToString());
  }

  // A redirect's Location "http://h:p/v1/..." gives the new master "http://h:p".
  void FollowRedirect(const std::string& location) {
    auto scheme = location.find("://");
    if (scheme == std::string::npos) return;
    auto slash = location.find('/', scheme + 3);
    std::lock_guard<std::mutex> lock(mu);
    SwitchMaster(location.substr(0, slash), "redirect");
  }

  // When the master does not answer: leader.json may name the new leader.
  void CheckLeaderFile() {
    auto text = ReadFile(JoinPathParts(opt.data_dir, "leader.json"), 1 << 20);
    if (!text.ok()) return;
    auto j = ParseJson(*text);
    if (!j.ok() || !j->is_object()) return;
    std::string addr = GetString(*j, "address");
    if (addr.empty()) addr = GetString(*j, "url");
    int64_t epoch = 0;
    if (auto e = j->find("epoch"); e != j->end() && e->is_number_integer()) {
      epoch = e->get<int64_t>();
    }
    std::lock_guard<std::mutex> lock(mu);
    if (!addr.empty() && epoch >= epoch_seen) SwitchMaster(addr, "leader.json");
  }

  // Applies a register or poll answer. False if it was fenced off or malformed.
  bool HandleAnswer(const std::string& body, bool is_register) {
    auto parsed = ParseJson(body);
    if (!parsed.ok() || !parsed->is_object()) {
      spdlog::warn("malformed answer from master: {}", parsed.status().ToString());
      return false;
    }
    const Json& j = *parsed;
    try {
      auto e = j.find("epoch");
      if (e == j.end() || !e->is_number_integer()) {
        spdlog::warn("answer without an epoch ignored");
        return false;
      }
      int64_t epoch = e->get<int64_t>();
      std::unique_lock<std::mutex> lock(mu);
      if (epoch < epoch_seen) {
        spdlog::warn("ignoring answer from epoch {} (highest seen {})", epoch, epoch_seen);
        return false;
      }
      if (epoch > epoch_seen) {
        if (epoch_seen > 0) spdlog::info("master epoch {} -> {}", epoch_seen, epoch);
        epoch_seen = epoch;
        if (Status st = WriteAgentJson(); !st.ok()) {
          spdlog::warn("agent.json: {}", st.ToString());
        }
      }
      last_contact = SteadyClock::now();
      if (is_register) {
        if (auto p = j.find("poll_timeout_ms"); p != j.end() && p->is_number_integer()) {
          poll_timeout_ms = std::clamp<int64_t>(p->get<int64_t>(), 0, 600000);
        }
        registered = true;
        report_cv.notify_all();
      }
      if (auto ack = j.find("ack"); ack != j.end() && ack->is_array()) {
        for (const auto& a : *ack) {
          if (!a.is_string()) continue;
          std::string id = a.get<std::string>();
          if (pending.erase(id)) {
            if (Status st = RemoveFile(ReportPath(id)); !st.ok()) {
              spdlog::warn("removing acknowledged report: {}", st.ToString());
            }
            spdlog::debug("report for {} acknowledged", id);
          }
        }
      }
      bool wake_main = false;
      if (auto as = j.find("assignments"); as != j.end() && as->is_array()) {
        for (const auto& a : *as) {
          std::string id = a.is_object() ? GetString(a, "attempt_id") : "";
          if (id.empty()) {
            spdlog::warn("assignment without attempt_id ignored");
            continue;
          }
          if (known.count(id)) {
            spdlog::info("duplicate assignment of {} ignored", id);
            continue;
          }
          known.insert(id);
          active.insert(id);
          inbox.push_back(a);
          wake_main = true;
        }
      }
      if (auto cs = j.find("cancels"); cs != j.end() && cs->is_array()) {
        for (const auto& c : *cs) {
          if (!c.is_string()) continue;
          cancel_inbox.push_back(c.get<std::string>());
          wake_main = true;
        }
      }
      if (auto rel = j.find("release"); rel != j.end() && rel->is_boolean() && rel->get<bool>()) {
        spdlog::info("released by the master");
        release = true;
        wake_main = true;
      }
      if (wake_main) main_cv.notify_all();
      return true;
    } catch (const Json::exception& ex) {
      spdlog::warn("unexpected answer from master: {}", ex.what());
      return false;
    }
  }

  bool NeedsRegister(const Reply& r) {
    if (r.status == 404) return true;
    if (r.status == 409 || r.status == 410) {
      std::string code = ErrorCode(r.body);
      return code == "unknown_container" || code == "register";
    }
    return false;
  }

  // Sleeps (interruptibly) for the backoff; returns false when the thread should end.
  bool Backoff(std::condition_variable& cv, milliseconds& backoff) {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait_for(lock, backoff, [&] { return threads_stop; });
    backoff = std::min(backoff * 2, kMaxBackoff);
    return !threads_stop;
  }

  void CheckOrphaned() {
    std::lock_guard<std::mutex> lock(mu);
    if (orphaned || SteadyClock::now() - last_contact <= opt.orphan_timeout) return;
    spdlog::error("master unreachable for more than {}; giving up",
                  FormatDuration(std::chrono::duration_cast<Micros>(opt.orphan_timeout)));
    orphaned = true;
    main_cv.notify_all();
  }

  Json RegisterBody() {  // holds mu
    Json inventory = gpu::ToJson(opt.gpu_inventory);
    char host[256] = {0};
    gethostname(host, sizeof(host) - 1);
    return Json{{"backend", opt.backend},       {"handle", opt.handle},
                {"host", std::string(host)},    {"pid", static_cast<int64_t>(getpid())},
                {"cpu_millis", opt.cpu_millis}, {"memory_bytes", opt.memory_bytes},
                {"epoch_seen", epoch_seen},     {"running", RunningIds()},
                {"gpus", inventory["gpus"]},    {"cuda", inventory["cuda"]}};
  }

  void PollThread() {
    Client client;
    struct ClearOnExit {  // destroyed before client: main never sees a dead pointer
      Impl* impl;
      ~ClearOnExit() {
        std::lock_guard<std::mutex> lock(impl->mu);
        impl->poll_http = nullptr;
      }
    } clear_on_exit{this};
    auto backoff = kMinBackoff;
    const std::string base = "/v1/containers/" + opt.id;
    while (true) {
      Json body;
      bool is_register;
      int64_t timeout_ms;
      size_t sent_reports = 0;
      {
        std::lock_guard<std::mutex> lock(mu);
        if (threads_stop) return;
        is_register = !registered;
        timeout_ms = poll_timeout_ms;
        if (is_register) {
          body = RegisterBody();
        } else {
          sent_reports = pending.size();
          body = Json{
              {"epoch_seen", epoch_seen}, {"reports", PendingReports()}, {"running", RunningIds()}};
        }
      }
      {
        std::lock_guard<std::mutex> lock(mu);
        poll_http = nullptr;  // RefreshClient may replace it
      }
      RefreshClient(client, milliseconds(is_register ? 10000 : timeout_ms + 5000));
      {
        std::lock_guard<std::mutex> lock(mu);
        if (threads_stop) return;
        poll_http = client.http.get();
      }
      Reply r = Post(client, base + (is_register ? "/register" : "/poll"), body);
      bool ok = false;
      if (r.status >= 200 && r.status < 300) {
        ok = HandleAnswer(r.body, is_register);
        if (ok && is_register) spdlog::info("registered with {} as {}", client.url, opt.id);
      } else if (!is_register && NeedsRegister(r)) {
        spdlog::info("master asks {} to register again ({})", opt.id, r.status);
        std::lock_guard<std::mutex> lock(mu);
        registered = false;
        last_contact = SteadyClock::now();
        backoff = kMinBackoff;
        continue;
      } else if (r.status == 307 || r.status == 308) {
        FollowRedirect(r.location);
      } else {
        if (r.status == 0) {
          spdlog::debug("master {} unreachable: {}", client.url, r.error);
        } else {
          spdlog::warn("{} answered {}: {}", is_register ? "register" : "poll", r.status,
                       r.body.substr(0, 200));
        }
        CheckLeaderFile();
      }
      if (ok) {
        backoff = kMinBackoff;
        // The master answers a poll with reports at once; if it did not acknowledge
        // them, do not resend in a tight loop.
        bool unacked;
        {
          std::lock_guard<std::mutex> lock(mu);
          unacked = sent_reports > 0 && pending.size() >= sent_reports;
        }
        if (unacked && !Backoff(poll_cv, backoff)) return;
        continue;
      }
      CheckOrphaned();
      if (!Backoff(poll_cv, backoff)) return;
    }
  }

  // ---------------------------------------------------------- reports

  Json BuildReport(const Ended& e) {
    std::string state, reason;
    if (!e.exit) {
      state = e.why == Why::kCancel ? "cancelled" : "failed";
      reason = e.reason;
    } else {
      std::string how = e.exit->reason;
      switch (e.why) {
        case Why::kTimeout:
          state = "timed_out";
          reason = "timed out after " + std::to_string(e.a.timeout_ms) + " ms (" + how + ")";
          break;
        case Why::kCancel:
          state = "cancelled";
          reason = "cancelled (" + how + ")";
          break;
        case Why::kShutdown:
          state = "failed";
          reason = e.reason + " (" + how + ")";
          break;
        case Why::kNone:
          state = e.exit->exit_code == 0 ? "succeeded" : "failed";
          reason = how;
          break;
      }
    }
    Json report{{"attempt_id", e.a.attempt_id},
                {"state", state},
                {"exit_code", e.exit ? NullableInt(e.exit->exit_code) : Json(nullptr)},
                {"signal", e.exit ? NullableInt(e.exit->signal) : Json(nullptr)},
                {"reason", reason},
                {"usage",
                 {{"wall_s", e.exit ? e.exit->wall_s : 0.0},
                  {"cpu_s", e.exit ? e.exit->cpu_s : 0.0},
                  {"max_rss_kb", e.exit ? e.exit->max_rss_kb : 0}}},
                {"finished_at", e.finished_at}};
    if (!e.started_at.empty()) report["started_at"] = e.started_at;
    std::string metrics_error;
    report["metrics"] = e.a.outputs_dir.empty() || !e.exit
                            ? Json::object()
                            : ReadMetrics(e.a.outputs_dir, &metrics_error);
    if (!metrics_error.empty()) report["metrics_error"] = metrics_error;
    Json outputs = Json::array();
    bool truncated = false;
    if (e.exit && !e.a.outputs_dir.empty()) WalkOutputs(e.a.outputs_dir, "", outputs, truncated);
    report["outputs"] = std::move(outputs);
    if (truncated) report["outputs_truncated"] = true;
    return report;
  }

  // Builds, stores and queues the report of every ended attempt. Report thread.
  // Takes every ended attempt queued so far and makes their reports durable
  // together (one flush for the batch, not two per report).
  void FinishEnded() {
    std::deque<Ended> batch;
    {
      std::lock_guard<std::mutex> lock(mu);
      batch.swap(ended);
    }
    if (batch.empty()) return;
    std::vector<std::pair<std::string, Json>> reports;
    std::vector<std::pair<std::string, std::string>> files;
    for (auto& e : batch) {
      Json report = BuildReport(e);
      const std::string& id = e.a.attempt_id;
      spdlog::info("attempt {} {}: {}", id, report["state"].get<std::string>(),
                   report["reason"].get<std::string>());
      files.push_back({ReportPath(id), report.dump()});
      files.push_back({MarkerPath(id), CanonicalDump(Json{{"attempt_id", id}, {"state", "finished"}})});
      reports.push_back({id, std::move(report)});
    }
    // Durable before they are sent: the master may ack them the moment they arrive.
    if (Status st = WriteFilesDurably(files); !st.ok()) {
      spdlog::error("storing {} report(s): {}", reports.size(), st.ToString());
    }
    std::lock_guard<std::mutex> lock(mu);
    for (auto& [id, report] : reports) {
      pending[id] = std::move(report);
      active.erase(id);
    }
    reports_dirty = true;
  }

  void ReportThread() {
    Client client;
    auto backoff = kMinBackoff;
    const std::string path = "/v1/containers/" + opt.id + "/poll";
    while (true) {
      bool drain;
      {
        std::unique_lock<std::mutex> lock(mu);
        report_cv.wait(lock, [&] {
          return threads_stop || draining || !ended.empty() ||
                 (reports_dirty && registered && !pending.empty());
        });
        if (threads_stop) return;
        drain = draining;
      }
      FinishEnded();
      Json body;
      {
        std::lock_guard<std::mutex> lock(mu);
        if (pending.empty() || !registered || orphaned) {
          reports_dirty = false;
          if (drain && ended.empty()) return;
          continue;
        }
        body = Json{
            {"epoch_seen", epoch_seen}, {"reports", PendingReports()}, {"running", RunningIds()}};
      }
      RefreshClient(client, milliseconds(drain ? 2000 : 5000));
      Reply r = Post(client, path, body);
      if (r.status >= 200 && r.status < 300 && HandleAnswer(r.body, false)) {
        backoff = kMinBackoff;
        std::lock_guard<std::mutex> lock(mu);
        reports_dirty = false;  // unacknowledged ones ride on the long polls
        if (drain && ended.empty()) return;
        continue;
      }
      if (NeedsRegister(r)) {
        std::lock_guard<std::mutex> lock(mu);
        registered = false;
        poll_cv.notify_all();
      }
      if (drain) return;  // one try at shutdown; the reports stay on disk
      if (!Backoff(report_cv, backoff)) return;
    }
  }

  // ---------------------------------------------------------- main loop

  void EndWithoutRunning(Assignment a, Why why, std::string reason, bool failed_to_start) {
    Ended e;
    e.a = std::move(a);
    e.why = why;
    e.reason = std::move(reason);
    e.failed_to_start = failed_to_start;
    e.finished_at = NowString();
    std::lock_guard<std::mutex> lock(mu);
    ended.push_back(std::move(e));
    report_cv.notify_all();
  }

  // marker_written: the caller already recorded this attempt as started, durably.
  void Start(const Json& j, bool marker_written) {
    auto parsed = ParseAssignment(j, opt.data_dir, opt.gpu_inventory);
    if (!parsed.ok()) {
      Assignment a;
      a.attempt_id = GetString(j, "attempt_id");
      EndWithoutRunning(std::move(a), Why::kNone,
                        "invalid assignment: " + parsed.status().message(), true);
      return;
    }
    Assignment a = std::move(*parsed);
    // Durable before the process starts: a restarted agent must know it ran.
    if (Status st = marker_written ? Status::Ok() : WriteMarker(a.attempt_id, "started");
        !st.ok()) {
      EndWithoutRunning(std::move(a), Why::kNone, "cannot record the attempt: " + st.ToString(),
                        true);
      return;
    }
    if (Status st = VerifyInputs(a); !st.ok()) {
      spdlog::warn("attempt {} not started: {}", a.attempt_id, st.message());
      EndWithoutRunning(std::move(a), Why::kNone, st.message(), true);
      return;
    }
    ProcessSpec spec;
    spec.argv = a.argv;
    spec.env = a.env;
    // Always set, empty when no GPU is assigned: a child must never see the agent's GPUs.
    spec.env["CUDA_VISIBLE_DEVICES"] = a.cuda_visible_devices;
    spec.env["EPOCH_GPU_UUIDS"] = a.gpu_uuids;
    spec.env["EPOCH_RUN_ID"] = a.run;
    spec.env["EPOCH_STEP"] = a.step;
    spec.env["EPOCH_ATTEMPT"] = a.attempt;
    spec.env["EPOCH_ATTEMPT_ID"] = a.attempt_id;
    spec.env["EPOCH_WORKSPACE"] = a.workspace;
    spec.env["EPOCH_OUTPUTS"] = a.outputs_dir;
    spec.env["EPOCH_CONTAINER_ID"] = opt.id;
    spec.working_dir = a.workspace;
    spec.log_path = a.log_path;
    Status st = MakeDirs(a.workspace);
    if (st.ok()) st = MakeDirs(a.outputs_dir);
    if (!st.ok()) {
      EndWithoutRunning(std::move(a), Why::kNone, "spawn failed: " + st.ToString(), true);
      return;
    }
    auto child = Spawn(spec);
    if (!child.ok()) {
      EndWithoutRunning(std::move(a), Why::kNone, "spawn failed: " + child.status().ToString(),
                        true);
      return;
    }
    Running r;
    r.child = std::move(*child);
    r.started_at = NowString();
    if (a.timeout_ms > 0) r.deadline = r.child->started() + milliseconds(a.timeout_ms);
    spdlog::info("attempt {} started: pid {}", a.attempt_id, r.child->pid());
    r.a = std::move(a);
    std::string id = r.a.attempt_id;
    running.emplace(id, std::move(r));
  }

  void BeginKill(Running& r, Why why) {
    if (r.why != Why::kNone) return;  // already being killed
    r.why = why;
    if (Status st = r.child->SignalGroup(SIGTERM); !st.ok()) {
      spdlog::warn("{}: {}", r.a.attempt_id, st.ToString());
    }
    r.kill_deadline = SteadyClock::now() + opt.grace;
  }

  void Cancel(const std::string& id) {
    if (auto it = running.find(id); it != running.end()) {
      spdlog::info("cancelling attempt {}", id);
      BeginKill(it->second, Why::kCancel);
      return;
    }
    // Not running here: still in the inbox, or never received (its assignment may
    // have been lost): report it cancelled so the master learns, and never run it.
    {
      std::lock_guard<std::mutex> lock(mu);
      bool was_queued = false;
      for (auto it = inbox.begin(); it != inbox.end(); ++it) {
        if (GetString(*it, "attempt_id") == id) {
          inbox.erase(it);
          was_queued = true;
          break;
        }
      }
      // Known and not queued: running, being reported, or finished; nothing to do.
      if (!was_queued && known.count(id)) return;
      known.insert(id);
      active.insert(id);
    }
    Assignment a;
    a.attempt_id = id;
    if (Status st = WriteMarker(id, "finished"); !st.ok()) {
      spdlog::warn("marking {}: {}", id, st.ToString());
    }
    EndWithoutRunning(std::move(a), Why::kCancel, "cancelled before it started", false);
  }

  // Reaps exited children and enforces timeouts and kill deadlines.
  void Tend() {
    auto now = SteadyClock::now();
    for (auto it = running.begin(); it != running.end();) {
      Running& r = it->second;
      auto done = r.child->TryWait();
      if (!done.ok()) {
        // wait4 itself failed (ECHILD: someone else reaped it). Retrying would spin;
        // end the attempt as failed with what we know.
        spdlog::error("{}: {}", r.a.attempt_id, done.status().ToString());
        (void)r.child->SignalGroup(SIGKILL);  // best effort: the group may be gone
        ExitInfo lost;
        lost.reason = "lost track of the process: " + done.status().message();
        done = std::optional<ExitInfo>(lost);
      }
      if (*done) {
        Ended e;
        e.exit = **done;
        e.why = r.why;
        e.reason = r.why == Why::kShutdown ? shutdown_reason : "";
        e.started_at = r.started_at;
        e.finished_at = NowString();
        e.a = std::move(r.a);
        it = running.erase(it);
        std::lock_guard<std::mutex> lock(mu);
        ended.push_back(std::move(e));
        report_cv.notify_all();
        continue;
      }
      if (r.why == Why::kNone && r.deadline && now >= *r.deadline) {
        spdlog::info("attempt {} timed out after {} ms", r.a.attempt_id, r.a.timeout_ms);
        BeginKill(r, Why::kTimeout);
      }
      if (r.kill_deadline && !r.killed && now >= *r.kill_deadline) {
        r.killed = true;
        if (Status st = r.child->SignalGroup(SIGKILL); !st.ok()) {
          spdlog::warn("{}: {}", r.a.attempt_id, st.ToString());
        }
      }
      ++it;
    }
  }

  std::string shutdown_reason;

  int MainLoop() {
    int code = kAgentExitOk;
    while (true) {
      std::deque<Json> starts;
      std::deque<std::string> cancels;
      {
        std::unique_lock<std::mutex> lock(mu);
        main_cv.wait_for(lock, opt.tick, [&] {
          return !inbox.empty() || !cancel_inbox.empty() || release || orphaned ||
                 stop_flag->load();
        });
        if (stop_flag->load()) {
          shutdown_reason = "container terminated";
        } else if (release) {
          shutdown_reason = "container released";
        } else if (orphaned) {
          shutdown_reason = "container orphaned: master unreachable";
          code = kAgentExitOrphaned;
        }
        if (!shutdown_reason.empty()) break;
        starts.swap(inbox);
        cancels.swap(cancel_inbox);
      }
      // Record every new attempt as started in one durable batch, then start them.
      std::vector<std::pair<std::string, std::string>> markers;
      for (const auto& j : starts) {
        std::string id = GetString(j, "attempt_id");
        if (id.empty()) continue;
        markers.push_back(
            {MarkerPath(id), CanonicalDump(Json{{"attempt_id", id}, {"state", "started"}})});
      }
      bool markers_ok = WriteFilesDurably(markers).ok();
      for (const auto& j : starts) Start(j, markers_ok && !GetString(j, "attempt_id").empty());
      for (const auto& id : cancels) Cancel(id);
      Tend();
    }
    // Shutdown: TERM every group, KILL after the grace, reap all.
    spdlog::info("{}: stopping {} attempt(s)", shutdown_reason, running.size());
    for (auto& [id, r] : running) BeginKill(r, Why::kShutdown);
    while (!running.empty()) {
      Tend();
      if (!running.empty()) std::this_thread::sleep_for(milliseconds(5));
    }
    {
      // Assignments that never started are dropped: they were not reported running
      // long enough to matter, and their markers were never written.
      std::lock_guard<std::mutex> lock(mu);
      for (const auto& j : inbox) active.erase(GetString(j, "attempt_id"));
      inbox.clear();
    }
    return code;
  }

  int RunAll() {
    std::thread poller([this] { PollThread(); });
    std::thread reporter([this] { ReportThread(); });
    int code = MainLoop();
    {
      std::lock_guard<std::mutex> lock(mu);
      draining = true;
      report_cv.notify_all();
    }
    reporter.join();  // builds every report, sends them once (bounded by timeouts)
    {
      // A long poll may be in flight: shut its socket so the thread ends now.
      std::lock_guard<std::mutex> lock(mu);
      threads_stop = true;
      if (poll_http != nullptr) poll_http->stop();
      poll_cv.notify_all();
    }
    poller.join();
    spdlog::info("agent {} exits with code {}", opt.id, code);
    return code;
  }
};

Agent::Agent(AgentOptions options) : impl_(std::make_unique<Impl>(std::move(options), &stop_)) {}
Agent::~Agent() = default;

Result<int> Agent::Run() {
  const AgentOptions& o = impl_->opt;
  if (o.id.empty() || o.master_url.empty() || o.data_dir.empty()) {
    return InvalidArgument("agent needs an id, a master URL and a data dir");
  }
  // httplib writes to sockets that the peer may have closed.
  signal(SIGPIPE, SIG_IGN);
  RETURN_IF_ERROR(impl_->Recover().WithContext("agent state in " + impl_->dir));
  spdlog::info("agent {} (pid {}) starting: master {}, {} mCPU, {} bytes, {} GPU(s) asked for, "
               "{} found",
               o.id, getpid(), impl_->master_url, o.cpu_millis, o.memory_bytes, o.gpus,
               o.gpu_inventory.gpus.size());
  return impl_->RunAll();
}

}  // namespace epoch::executors
