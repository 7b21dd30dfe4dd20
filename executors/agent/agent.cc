#include "executors/agent/agent.h"

#include <dirent.h>
#include <fcntl.h>
#include <httplib.h>
#include <limits.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <thread>

#include "common/files.h"
#include "common/mutex.h"
#include "common/sha256.h"
#include "common/units.h"
#include "executors/cgroup.h"
#include "executors/process.h"
#include "executors/sandbox_client.h"

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

// The origin (scheme://host:port, port explicit) of an http(s) URL; nullopt for
// anything else (another scheme, user info, no host, a bad port).
struct Origin {
  std::string scheme, host;
  int port = 0;
  bool operator==(const Origin&) const = default;
  std::string ToString() const { return scheme + "://" + host + ":" + std::to_string(port); }
};

std::optional<Origin> OriginOf(const std::string& url) {
  auto lower = [](std::string x) {
    for (auto& c : x) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return x;
  };
  auto sep = url.find("://");
  if (sep == std::string::npos) return std::nullopt;
  Origin o;
  o.scheme = lower(url.substr(0, sep));
  if (o.scheme != "http" && o.scheme != "https") return std::nullopt;
  size_t start = sep + 3;
  size_t end = url.find_first_of("/?#", start);
  std::string auth = url.substr(start, end == std::string::npos ? end : end - start);
  if (auth.empty() || auth.find('@') != std::string::npos) return std::nullopt;
  std::string port;
  if (auth[0] == '[') {
    auto close = auth.find(']');
    if (close == std::string::npos) return std::nullopt;
    o.host = auth.substr(0, close + 1);
    std::string rest = auth.substr(close + 1);
    if (!rest.empty() && rest[0] != ':') return std::nullopt;
    if (!rest.empty()) port = rest.substr(1);
  } else if (auto colon = auth.rfind(':'); colon != std::string::npos) {
    o.host = auth.substr(0, colon);
    port = auth.substr(colon + 1);
  } else {
    o.host = auth;
  }
  o.host = lower(o.host);
  if (o.host.empty()) return std::nullopt;
  if (port.empty()) {
    o.port = o.scheme == "https" ? 443 : 80;
  } else {
    if (port.size() > 5 || port.find_first_not_of("0123456789") != std::string::npos) {
      return std::nullopt;
    }
    o.port = std::stoi(port);
    if (o.port < 1 || o.port > 65535) return std::nullopt;
  }
  return o;
}

// The folder this program's binary is in ("" if unknown).
std::string SelfDir() {
  char buf[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n <= 0) return "";
  std::string p(buf, static_cast<size_t>(n));
  return p.substr(0, p.find_last_of('/'));
}

Json NullableInt(const std::optional<int>& v) { return v ? Json(*v) : Json(nullptr); }

std::string NowString() { return FormatTime(SystemClock().Now()); }

// SHA-256 (hex) of what fd reads, and how many bytes.
Result<std::string> HashFd(int fd, uint64_t* size) {
  Sha256 h;
  char buf[1 << 16];
  *size = 0;
  while (true) {
    ssize_t n = read(fd, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Internal(std::string("read: ") + std::strerror(errno));
    if (n == 0) break;
    h.Update(std::string_view(buf, static_cast<size_t>(n)));
    *size += static_cast<uint64_t>(n);
  }
  return ToHex(h.Finish());
}

// Files (recursively) under the folder dir_fd as "a/b.bin" names, except metrics.json
// at the top; regular files only. Walked by fd, never following a symlink: the step's
// user owns this folder, and another step of its run may still be running.
void WalkOutputs(int dir_fd, const std::string& prefix, Json& out, bool& truncated) {
  int dup_fd = dup(dir_fd);
  if (dup_fd < 0) return;
  DIR* d = fdopendir(dup_fd);
  if (!d) {
    close(dup_fd);
    return;
  }
  std::vector<std::string> names;
  while (struct dirent* e = readdir(d)) {
    std::string n = e->d_name;
    if (n != "." && n != "..") names.push_back(n);
  }
  closedir(d);
  std::sort(names.begin(), names.end());
  for (const auto& n : names) {
    std::string rel = prefix.empty() ? n : prefix + "/" + n;
    struct stat st;
    if (fstatat(dir_fd, n.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) continue;
    if (S_ISDIR(st.st_mode)) {
      int sub = openat(dir_fd, n.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
      if (sub < 0) continue;
      WalkOutputs(sub, rel, out, truncated);
      close(sub);
    } else if (S_ISREG(st.st_mode)) {
      if (rel == "metrics.json") continue;
      if (out.size() >= kMaxOutputs) {
        truncated = true;
        return;
      }
      Json entry{{"name", rel}, {"size", static_cast<uint64_t>(st.st_size)}};
      int fd = openat(dir_fd, n.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
      uint64_t size = 0;
      auto hex = fd >= 0 ? HashFd(fd, &size)
                         : Result<std::string>(Internal(rel + ": " + std::strerror(errno)));
      if (fd >= 0) close(fd);
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

// Reads metrics.json in the outputs folder dir_fd: missing -> {}, else at most 64 KiB
// and an object.
Json ReadMetrics(int dir_fd, std::string* error) {
  struct stat st;
  if (fstatat(dir_fd, "metrics.json", &st, AT_SYMLINK_NOFOLLOW) != 0) return Json::object();
  if (!S_ISREG(st.st_mode)) {
    *error = "metrics.json is not a regular file";
    return Json::object();
  }
  if (static_cast<size_t>(st.st_size) > kMaxMetricsBytes) {
    *error = "metrics.json is larger than " + std::to_string(kMaxMetricsBytes) + " bytes";
    return Json::object();
  }
  int fd = openat(dir_fd, "metrics.json", O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    *error = std::string("metrics.json: ") + std::strerror(errno);
    return Json::object();
  }
  std::string text;
  char buf[4096];
  while (text.size() <= kMaxMetricsBytes) {
    ssize_t n = read(fd, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    text.append(buf, static_cast<size_t>(n));
  }
  close(fd);
  if (text.size() > kMaxMetricsBytes) {
    *error = "metrics.json is larger than " + std::to_string(kMaxMetricsBytes) + " bytes";
    return Json::object();
  }
  auto j = ParseJson(text);
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

// "256 MiB", "2144 MiB", "2 GiB", "1000 bytes".
std::string MemoryText(int64_t b) {
  constexpr int64_t kMi = 1 << 20, kGi = int64_t{1} << 30;
  if (b >= kGi && b % kGi == 0) return std::to_string(b / kGi) + " GiB";
  if (b >= kMi && b % kMi == 0) return std::to_string(b / kMi) + " MiB";
  return std::to_string(b) + " bytes";
}

// ---------------------------------------------------------------- assignment

struct Mount {
  std::string path;
  bool read_only = true;
};

struct Assignment {
  std::string attempt_id, run, step, attempt;
  std::vector<std::string> argv;
  std::map<std::string, std::string> env;
  std::string workspace, outputs_dir, log_path;
  int64_t timeout_ms = 0;
  std::string tenant;
  std::string run_as;             // "user[:group]"; empty: the agent's own user
  std::vector<Mount> mounts;      // extra paths the step sees, beyond its workspace
  int64_t max_log_bytes = 0;      // 0: no cap
  std::vector<std::string> gpus;  // as sent: indices (or UUIDs) of this container's GPUs
  std::string cuda_visible_devices, gpu_uuids;  // resolved: comma-joined visible_ids, UUIDs
  // Upstream outputs the command reads, with the digests their producers recorded.
  std::vector<std::pair<std::string, std::string>> inputs;  // (path, sha256)
  // The CPU the scheduler reserved (the attempt's CPU weight), and what the kernel
  // enforces (0: only the container's limit).
  int64_t cpu_request_millis = 0;
  int64_t cpu_limit_millis = 0, memory_limit_bytes = 0;
};

// The canonical path `path` must have: inside the data dir, the data dir's own
// canonical path plus the rest, so no symlink a step planted can redirect it;
// elsewhere (the host, which steps see read-only), wherever it resolves.
using CanonicalOf = std::function<std::string(const std::string&)>;

// Checks each input against its recorded digest; the first that differs or cannot be
// read, as the attempt's failure reason. Read as the agent, without following a
// symlink (a step could otherwise swap an output for a link to a secret).
Status VerifyInputs(const Assignment& a, const CanonicalOf& canonical) {
  for (const auto& [path, want] : a.inputs) {
    auto got = Sha256OfExactFile(path, canonical(path));
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

// kInvalidArgument unless p is absolute, normalised and free of control characters.
Status CheckPath(const std::string& what, const std::string& p) {
  for (unsigned char c : p) {
    if (c < 0x20 || c == 0x7f) return InvalidArgument(what + " has a control character");
  }
  auto n = NormalizePath(p);
  if (!n.ok() || *n != p) {
    return InvalidArgument(what + " '" + p + "' is not an absolute, normalised path");
  }
  return Status::Ok();
}

// Where the assignment's paths may be: the workspace in <data-dir>/runs/, the outputs
// in the workspace, the log in <data-dir>/logs/, mounts anywhere but the control
// plane (inside the data dir only under runs/; never the data dir or a folder above it).
Status CheckPlaces(const Assignment& a, const std::string& data_dir) {
  const std::string runs = data_dir + "/runs", logs = data_dir + "/logs";
  RETURN_IF_ERROR(CheckPath("workspace", a.workspace));
  RETURN_IF_ERROR(CheckPath("outputs_dir", a.outputs_dir));
  RETURN_IF_ERROR(CheckPath("log_path", a.log_path));
  if (!IsBeneath(a.workspace, runs) || a.workspace == runs) {
    return InvalidArgument("workspace " + a.workspace + " is not inside " + runs);
  }
  if (!IsBeneath(a.outputs_dir, a.workspace) || a.outputs_dir == a.workspace) {
    return InvalidArgument("outputs_dir " + a.outputs_dir + " is not inside the workspace");
  }
  if (!IsBeneath(a.log_path, logs) || a.log_path == logs) {
    return InvalidArgument("log_path " + a.log_path + " is not inside " + logs);
  }
  for (const auto& m : a.mounts) {
    RETURN_IF_ERROR(CheckPath("mount", m.path));
    if (IsBeneath(data_dir, m.path)) {
      return InvalidArgument("mount " + m.path + " holds the data dir");
    }
    // The sandbox builds these itself; the host's would show its processes and devices.
    for (const char* own : {"/proc", "/sys", "/dev"}) {
      if (IsBeneath(m.path, own)) return InvalidArgument("mount " + m.path + " is under " + own);
    }
    if (IsBeneath(m.path, data_dir) && (!IsBeneath(m.path, runs) || m.path == runs)) {
      return InvalidArgument("mount " + m.path + " is in the data dir but not inside " + runs);
    }
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
  // {"cpu_millis", "memory_bytes"} under `key`, each a non-negative integer or null.
  auto quantity = [&](const char* key, const char* field, int64_t* out) -> Status {
    auto r = j.find(key);
    if (r == j.end() || r->is_null()) return Status::Ok();
    if (!r->is_object()) return InvalidArgument(std::string(key) + " must be an object");
    auto f = r->find(field);
    if (f == r->end() || f->is_null()) return Status::Ok();
    if (!f->is_number_integer() || f->get<int64_t>() < 0) {
      return InvalidArgument(std::string(key) + "." + field + " must be a non-negative integer");
    }
    *out = f->get<int64_t>();
    return Status::Ok();
  };
  RETURN_IF_ERROR(quantity("resources", "cpu_millis", &a.cpu_request_millis));
  RETURN_IF_ERROR(quantity("limits", "cpu_millis", &a.cpu_limit_millis));
  RETURN_IF_ERROR(quantity("limits", "memory_bytes", &a.memory_limit_bytes));
  if (auto t = j.find("timeout_ms"); t != j.end() && !t->is_null()) {
    if (!t->is_number()) return InvalidArgument("timeout_ms must be a number");
    a.timeout_ms = std::max<int64_t>(0, t->get<int64_t>());
  }
  a.tenant = GetString(j, "tenant");
  if (auto r = j.find("run_as"); r != j.end() && !r->is_null()) {
    if (!r->is_string()) return InvalidArgument("run_as must be a string");
    a.run_as = r->get<std::string>();
  }
  if (auto ms = j.find("mounts"); ms != j.end() && !ms->is_null()) {
    if (!ms->is_array()) return InvalidArgument("mounts must be an array");
    for (const auto& m : *ms) {
      if (!m.is_object() || !m.contains("path") || !m["path"].is_string()) {
        return InvalidArgument("mounts: each must be {\"path\", \"read_only\"}");
      }
      Mount mount{m["path"].get<std::string>(), true};
      if (auto ro = m.find("read_only"); ro != m.end() && !ro->is_null()) {
        if (!ro->is_boolean()) return InvalidArgument("mounts: read_only must be a boolean");
        mount.read_only = ro->get<bool>();
      }
      a.mounts.push_back(std::move(mount));
    }
  }
  if (auto cap = j.find("max_log_bytes"); cap != j.end() && !cap->is_null()) {
    if (!cap->is_number_integer() || cap->get<int64_t>() < 0) {
      return InvalidArgument("max_log_bytes must be a non-negative integer");
    }
    a.max_log_bytes = cap->get<int64_t>();
  }
  RETURN_IF_ERROR(CheckPlaces(a, data_dir));
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
         "                   [--ca-cert PEM] [--credential-file FILE]\n"
         "                   [--isolation auto|required|off] [--sandbox-path PATH]\n"
         "                   [--enforce auto|required|off] [--cgroup-root DIR] [--max-pids N]\n";
}

Result<AgentOptions> ParseAgentFlags(const std::vector<std::string>& args) {
  AgentOptions o;
  o.enforce = "auto";
  std::map<std::string, std::string> kv;
  static const std::set<std::string> kKnown = {
      "id",      "master",    "data-dir",     "cpu-millis",     "memory-bytes", "gpus",
      "backend", "handle",    "grace",        "orphan-timeout", "log-format",   "log-level",
      "ca-cert", "isolation", "sandbox-path", "credential-file", "enforce", "cgroup-root",
      "max-pids"};
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
  // A non-negative integer flag, if given.
  auto count = [&](const std::string& name, int64_t* out, const std::string& note) -> Status {
    if (!kv.count(name)) return Status::Ok();
    try {
      size_t used = 0;
      int64_t v = std::stoll(kv[name], &used);
      if (used != kv[name].size() || v < 0 || v > INT32_MAX) throw std::invalid_argument(name);
      *out = v;
      return Status::Ok();
    } catch (const std::exception&) {
      return InvalidArgument("--" + name + " must be a non-negative integer" + note);
    }
  };
  int64_t gpus = 0;
  RETURN_IF_ERROR(count("gpus", &gpus, ""));
  o.gpus = static_cast<int>(gpus);
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
  if (kv.count("isolation")) o.isolation = kv["isolation"];
  if (o.isolation != "auto" && o.isolation != "required" && o.isolation != "off") {
    return InvalidArgument("--isolation must be auto, required or off");
  }
  if (kv.count("sandbox-path")) o.sandbox_path = kv["sandbox-path"];
  if (kv.count("credential-file")) o.credential_file = kv["credential-file"];
  if (kv.count("enforce")) o.enforce = kv["enforce"];
  if (o.enforce != "auto" && o.enforce != "required" && o.enforce != "off") {
    return InvalidArgument("--enforce must be auto, required or off");
  }
  if (kv.count("cgroup-root")) o.cgroup_root = kv["cgroup-root"];
  RETURN_IF_ERROR(count("max-pids", &o.max_pids, " (0: no limit)"));
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
    std::unique_ptr<StepProcess> child;
    std::string started_at;
    std::optional<SteadyTime> deadline;       // timeout_ms
    std::optional<SteadyTime> kill_deadline;  // SIGKILL after SIGTERM + grace
    bool killed = false;
    Why why = Why::kNone;
    std::unique_ptr<Cgroup> group;  // its cgroup, when limits are enforced
    CgroupLimits limits;
  };

  // An attempt that ended (or never started), waiting for its report to be built.
  struct Ended {
    Assignment a;
    std::optional<ExitInfo> exit;  // absent: never started
    Why why = Why::kNone;
    std::string reason;  // overrides, for attempts that never started
    std::string started_at, finished_at;
    bool failed_to_start = false;
    // The kernel's account, when the attempt ran in a cgroup, and its limits.
    std::optional<CgroupUsage> usage;
    CgroupLimits limits;
  };

  Impl(AgentOptions o, std::atomic<bool>* stop) : opt(std::move(o)), stop_flag(stop) {
    // One spelling of the data dir, absolute and normalised, for every check below.
    if (!opt.data_dir.empty() && opt.data_dir[0] != '/') {
      char cwd[PATH_MAX];
      if (getcwd(cwd, sizeof(cwd)) != nullptr) opt.data_dir = std::string(cwd) + "/" + opt.data_dir;
    }
    if (auto n = NormalizePath(opt.data_dir); n.ok()) opt.data_dir = *n;
    dir = JoinPathParts(opt.data_dir, "containers/" + opt.id);
    reports_dir = dir + "/reports";
    attempts_dir = dir + "/attempts";
    master_url = TrimUrl(opt.master_url);
    if (opt.handle.empty()) opt.handle = std::to_string(getpid());
  }

  AgentOptions opt;
  std::atomic<bool>* stop_flag;
  std::string dir, reports_dir, attempts_dir;
  // Set by Run() before any thread starts, read-only after.
  IsolationState isolation;
  // Limits (executors/cgroup.h): what enforces them, and the container's groups. The
  // groups are touched by the main loop only (and by Prepare/RunAll around it); the
  // report thread only reads container_group's usage. The rest is set by Prepare()
  // before any thread starts, read-only after.
  CgroupHost cgroups;
  std::string enforce_mechanism = "none";  // cgroup2 | cgroup1 | slurm | none
  std::string enforce_reason;
  std::string devices_note;
  std::unique_ptr<Cgroup> container_group, agent_group;
  std::vector<std::unique_ptr<Cgroup>> leftover_groups;  // Remove failed; retried
  bool shielded = false;                                 // our oom_score_adj is -1000
  uint64_t attempt_groups_made = 0;                      // names them: a-1, a-2, ...
  // Set by Prepare() before any thread starts, read-only after.
  std::string sandbox_path;
  std::string data_dir_real;   // the data dir's canonical path
  std::string credential;      // never logged, never in an error, never in a step's env
  std::string initial_master;  // --master: trusted like leader.json's leader

  // ---- shared state, guarded by mu
  Mutex mu;
  CondVar main_cv, report_cv, poll_cv;
  std::string master_url GUARDED_BY(mu);
  uint64_t url_generation GUARDED_BY(mu) = 0;
  int64_t epoch_seen GUARDED_BY(mu) = 0;
  int64_t poll_timeout_ms GUARDED_BY(mu) = 1000;
  bool registered GUARDED_BY(mu) = false;
  bool release GUARDED_BY(mu) = false;
  bool orphaned GUARDED_BY(mu) = false;
  bool threads_stop GUARDED_BY(mu) = false;  // poll and report threads end
  bool draining GUARDED_BY(mu) = false;      // report thread: finish, send once, end
  bool reports_dirty GUARDED_BY(mu) = false;
  SteadyTime last_contact GUARDED_BY(mu) = SteadyClock::now();
  std::set<std::string> known GUARDED_BY(mu);           // every attempt ever accepted
  std::set<std::string> active GUARDED_BY(mu);          // accepted and not yet reported
  std::deque<Json> inbox GUARDED_BY(mu);                // assignments for the main loop
  std::deque<std::string> cancel_inbox GUARDED_BY(mu);  // cancels for the main loop
  std::deque<Ended> ended GUARDED_BY(mu);               // for the report thread
  std::map<std::string, Json> pending GUARDED_BY(mu);   // unacknowledged reports
  httplib::Client* poll_http GUARDED_BY(mu) = nullptr;  // the poll thread's client, for stop()

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

  Status WriteAgentJson() REQUIRES(mu) {
    Json j{{"id", opt.id},
           {"pid", static_cast<int64_t>(getpid())},
           {"master_url", master_url},
           {"epoch_seen", epoch_seen},
           {"started_at", NowString()}};
    return WriteFileDurably(dir + "/agent.json", j.dump(2) + "\n");
  }

  // ---------------------------------------------------------- start-up recovery

  // Before any thread starts: the data dir's canonical path, the credential, and what
  // isolation this host gives steps.
  Status Prepare() {
    {
      MutexLock lock(&mu);
      initial_master = master_url;
    }
    auto real = CanonicalPath(opt.data_dir);
    if (!real.ok()) return real.status().WithContext("data dir");
    data_dir_real = *real;
    if (!opt.credential_file.empty()) {
      // The error says where and why, never what the file holds.
      auto text = ReadFile(opt.credential_file, 4096);
      if (!text.ok()) {
        return FailedPrecondition("cannot read the credential file: " + text.status().message());
      }
      credential = *text;
      while (!credential.empty() && std::isspace(static_cast<unsigned char>(credential.back()))) {
        credential.pop_back();
      }
      if (credential.empty() || credential.find_first_of("\r\n") != std::string::npos) {
        return FailedPrecondition("the credential file " + opt.credential_file +
                                  " does not hold one credential");
      }
    }
    sandbox_path = !opt.sandbox_path.empty() ? opt.sandbox_path : SelfDir() + "/epoch-sandbox";
    // The shim starts in "/": a relative --sandbox-path must not depend on our cwd.
    if (auto abs = CanonicalPath(sandbox_path); abs.ok()) sandbox_path = *abs;
    ProbeResult probe = ProbeSandbox(sandbox_path);
    ASSIGN_OR_RETURN(isolation, DecideIsolation(opt.isolation, geteuid() == 0, probe));
    spdlog::info("isolation {}: sandbox {}, run_as {}{}{}", isolation.mode, isolation.sandbox,
                 isolation.run_as ? "yes" : "no", isolation.reason.empty() ? "" : ": ",
                 isolation.reason);
    RETURN_IF_ERROR(PrepareLimits());
    spdlog::info("limits {}: {}{}{}", opt.enforce, enforce_mechanism,
                 enforce_reason.empty() ? "" : ": ", enforce_reason);
    return Status::Ok();
  }

  // Decides what enforces the limits, makes the container's cgroup with sig.cpu and
  // sig.memory, and moves the agent into its leaf. auto: anything that fails leaves
  // "none" with the reason; required: it is an error.
  Status PrepareLimits() {
    if (opt.enforce == "off") {
      enforce_reason = "executor.enforce is off";
      return Status::Ok();
    }
    auto unavailable = [&](const std::string& why) -> Status {
      enforce_mechanism = "none";
      enforce_reason = why;
      auto own_text = ReadFile("/proc/self/cgroup", 1 << 16);
      std::string own = own_text.ok() ? *own_text : "";
      if (opt.backend == "slurm" && own.find("/slurm") != std::string::npos) {
        enforce_mechanism = "slurm";
        enforce_reason = "Slurm's cgroup plugin confines the job to what it asked for, not "
                         "each attempt (" + why + ")";
      }
      if (container_group) {
        if (agent_group) {
          (void)MoveToBases(cgroups, getpid());
          (void)agent_group->Remove();
        }
        (void)container_group->Remove();
        container_group.reset();
        agent_group.reset();
      }
      if (opt.enforce == "required") {
        return FailedPrecondition("--enforce required, but limits cannot be enforced per "
                                  "attempt: " + why);
      }
      return Status::Ok();
    };
    cgroups = DetectCgroups(opt.cgroup_root);
    if (cgroups.version == CgroupVersion::kNone) return unavailable(cgroups.reason);
    int swept = SweepStaleCgroups(cgroups);
    if (swept > 0) spdlog::info("removed {} cgroup(s) that dead agents left", swept);
    auto group = Cgroup::Create(cgroups, nullptr, opt.id + "-" + std::to_string(getpid()));
    if (!group.ok()) return unavailable(group.status().message());
    container_group = std::move(*group);
    CgroupLimits l;
    l.cpu_millis = opt.cpu_millis;
    l.cpu_weight_millis = opt.cpu_millis;
    l.memory_bytes = opt.memory_bytes;
    if (Status st = container_group->SetLimits(l); !st.ok()) return unavailable(st.message());
    auto leaf = Cgroup::Create(cgroups, container_group.get(), "agent");
    if (!leaf.ok()) return unavailable(leaf.status().message());
    agent_group = std::move(*leaf);
    if (Status st = agent_group->AddProcess(getpid()); !st.ok()) return unavailable(st.message());
    enforce_mechanism = cgroups.Name();
    enforce_reason = cgroups.reason;
    // The container's limit must kill a step, never the agent that reports it.
    shielded = WriteControl("/proc/self/oom_score_adj", "-1000").ok();
    bool any_pci = false;
    for (const auto& g : opt.gpu_inventory.gpus) any_pci |= !g.pci_bus_id.empty();
    if (opt.gpu_inventory.gpus.empty()) {
      devices_note = "no GPUs";
    } else if (!cgroups.has("devices")) {
      devices_note = "not enforced: no cgroup v1 devices controller (steps see only their "
                     "GPUs through CUDA_VISIBLE_DEVICES)";
    } else if (!any_pci) {
      devices_note = "not enforced: simulated GPUs have no device nodes";
    } else {
      devices_note = "cgroup1 devices: an attempt's cgroup denies the GPUs it was not given";
    }
    return Status::Ok();
  }

  Json EnforcementJson() const {
    Json j{{"mode", opt.enforce}, {"mechanism", enforce_mechanism}, {"reason", enforce_reason}};
    if (container_group) {
      j["cpu_millis"] = opt.cpu_millis;
      j["memory_bytes"] = opt.memory_bytes;
      j["max_pids"] = opt.max_pids;
      j["swap"] = false;
      j["devices"] = devices_note;
    }
    return j;
  }

  // Before any thread starts; it holds mu all the same (uncontended).
  Status Recover() {
    MutexLock lock(&mu);
    RETURN_IF_ERROR(MakeDirs(reports_dir));
    RETURN_IF_ERROR(MakeDirs(attempts_dir));
    if (chmod(dir.c_str(), 0700) != 0) {
      return Internal("chmod 0700 " + dir + ": " + std::strerror(errno));
    }
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
      MutexLock lock(&mu);
      url = master_url;
      gen = url_generation;
    }
    if (!c.http || c.generation != gen) {
      c.http = std::make_unique<httplib::Client>(url);
      // The master's container protocol needs this container's credential (SwitchMaster
      // let only a master of this data dir become `url`) and, over HTTPS, trusts the
      // data dir's certificate (or --ca-cert's).
      if (!credential.empty()) c.http->set_bearer_token_auth(credential);
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

  Json RunningIds() REQUIRES(mu) {
    Json ids = Json::array();
    for (const auto& id : active) ids.push_back(id);
    return ids;
  }
  Json PendingReports() REQUIRES(mu) {
    Json reps = Json::array();
    for (const auto& [id, rep] : pending) reps.push_back(rep);
    return reps;
  }

  // Moves to another master (a 307 or a newer leader.json) and registers there; never
  // from https to http (the credential would travel in clear).
  void SwitchMaster(const std::string& url, const char* why) REQUIRES(mu) {
    std::string u = TrimUrl(url);
    if (u == master_url) return;
    auto to = OriginOf(u);
    auto from = OriginOf(master_url);
    if (to && from && *to == *from) return;
    if (!to) {
      spdlog::warn("ignoring {} to '{}': not an http(s) origin", why, u);
      return;
    }
    if (from && from->scheme == "https" && to->scheme != "https") {
      spdlog::warn("ignoring {} from {} to {}: never from https to http", why, master_url, u);
      return;
    }
    spdlog::info("switching master {} -> {} ({})", master_url, u, why);
    master_url = u;
    ++url_generation;
    registered = false;
    if (Status st = WriteAgentJson(); !st.ok()) spdlog::warn("agent.json: {}", st.ToString());
  }

  // What the data dir's leader.json says: the leader's address and epoch.
  struct LeaderFile {
    std::string address;
    int64_t epoch = 0;
  };
  std::optional<LeaderFile> ReadLeaderFile() {
    auto text = ReadFile(JoinPathParts(opt.data_dir, "leader.json"), 1 << 20);
    if (!text.ok()) return std::nullopt;
    auto j = ParseJson(*text);
    if (!j.ok() || !j->is_object()) return std::nullopt;
    LeaderFile f;
    f.address = GetString(*j, "address");
    if (f.address.empty()) f.address = GetString(*j, "url");
    if (auto e = j->find("epoch"); e != j->end() && e->is_number_integer()) {
      f.epoch = e->get<int64_t>();
    }
    if (f.address.empty()) return std::nullopt;
    return f;
  }

  // A redirect's Location "http://h:p/v1/..." gives the new master "http://h:p": only
  // one of this data dir's masters (--master's origin, or the leader leader.json names)
  // is trusted with the credential.
  void FollowRedirect(const std::string& location) {
    auto to = OriginOf(location);
    if (!to) return;
    auto leader = ReadLeaderFile();
    auto leader_origin = leader ? OriginOf(leader->address) : std::nullopt;
    auto first = OriginOf(initial_master);
    if (!(first && *to == *first) && !(leader_origin && *to == *leader_origin)) {
      spdlog::warn("ignoring a redirect to {}: not a master of this data dir (leader.json: {})",
                   to->ToString(), leader ? leader->address : "none");
      return;
    }
    MutexLock lock(&mu);
    SwitchMaster(to->ToString(), "redirect");
  }

  // When the master does not answer: leader.json may name the new leader.
  void CheckLeaderFile() {
    auto leader = ReadLeaderFile();
    if (!leader) return;
    MutexLock lock(&mu);
    if (leader->epoch >= epoch_seen) SwitchMaster(leader->address, "leader.json");
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
      MutexLock lock(&mu);
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
        report_cv.SignalAll();
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
      if (wake_main) main_cv.SignalAll();
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
  bool Backoff(CondVar& cv, milliseconds& backoff) {
    MutexLock lock(&mu);
    const auto deadline = SteadyClock::now() + backoff;
    while (!threads_stop) {
      if (!cv.WaitUntil(&mu, deadline)) break;
    }
    backoff = std::min(backoff * 2, kMaxBackoff);
    return !threads_stop;
  }

  void CheckOrphaned() {
    MutexLock lock(&mu);
    if (orphaned || SteadyClock::now() - last_contact <= opt.orphan_timeout) return;
    spdlog::error("master unreachable for more than {}; giving up",
                  FormatDuration(std::chrono::duration_cast<Micros>(opt.orphan_timeout)));
    orphaned = true;
    main_cv.SignalAll();
  }

  Json RegisterBody() REQUIRES(mu) {
    Json inventory = gpu::ToJson(opt.gpu_inventory);
    char host[256] = {0};
    gethostname(host, sizeof(host) - 1);
    return Json{{"backend", opt.backend},
                {"handle", opt.handle},
                {"host", std::string(host)},
                {"pid", static_cast<int64_t>(getpid())},
                {"cpu_millis", opt.cpu_millis},
                {"memory_bytes", opt.memory_bytes},
                {"epoch_seen", epoch_seen},
                {"running", RunningIds()},
                {"gpus", inventory["gpus"]},
                {"cuda", inventory["cuda"]},
                {"isolation",
                 {{"mode", isolation.mode},
                  {"run_as", isolation.run_as},
                  {"sandbox", isolation.sandbox},
                  {"reason", isolation.reason}}},
                {"enforcement", EnforcementJson()}};
  }

  void PollThread() {
    Client client;
    struct ClearOnExit {  // destroyed before client: main never sees a dead pointer
      Impl* impl;
      ~ClearOnExit() {
        MutexLock lock(&impl->mu);
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
        MutexLock lock(&mu);
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
        MutexLock lock(&mu);
        poll_http = nullptr;  // RefreshClient may replace it
      }
      RefreshClient(client, milliseconds(is_register ? 10000 : timeout_ms + 5000));
      {
        MutexLock lock(&mu);
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
        MutexLock lock(&mu);
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
          MutexLock lock(&mu);
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

  // The kernel's figures replace wait4's (which miss what a step left running and what
  // the sandbox's PID 1 did not reap); wait4's CPU stays as a cross-check.
  void ApplyCgroupUsage(const Ended& e, Json* usage) const {
    const CgroupUsage& u = *e.usage;
    (*usage)["wait4_cpu_s"] = (*usage)["cpu_s"];
    (*usage)["cpu_s"] = u.cpu_s;
    if (u.memory_peak_bytes > 0) (*usage)["peak_memory_bytes"] = u.memory_peak_bytes;
    (*usage)["oom_kills"] = u.oom_kills;
    (*usage)["pids_refused"] = u.pids_refused;
    (*usage)["source"] = enforce_mechanism;
    Json limits = Json::object();
    limits["cpu_millis"] = e.limits.cpu_millis > 0 ? Json(e.limits.cpu_millis) : Json(nullptr);
    limits["memory_bytes"] = e.limits.memory_bytes > 0 ? Json(e.limits.memory_bytes) : Json(nullptr);
    limits["pids"] = e.limits.pids > 0 ? Json(e.limits.pids) : Json(nullptr);
    (*usage)["limits"] = std::move(limits);
  }

  // Whether a group's memory reached `limit`: v2 counts it (memory.events "oom"); v1
  // kernels may not keep memory.failcnt, but a group's high-water mark cannot pass its
  // limit, so one within 1 MiB of it reached it.
  bool AtLimit(const CgroupUsage& u, int64_t limit, bool own_events) const {
    if (limit <= 0) return false;
    if (own_events && (u.oom_events > 0 || u.memory_limit_hits > 0)) return true;
    return u.memory_peak_bytes > 0 && u.memory_peak_bytes + (1 << 20) >= limit;
  }

  // A failed attempt's reason from the cgroup's counters, not from its exit signal:
  // "oom_killed: ..." when the OOM killer killed any of its processes, "pids_limit: ..."
  // when it hit its process limit; else `reason` unchanged.
  std::string LimitReason(const Ended& e, const std::string& state, const std::string& reason) const {
    const CgroupUsage& u = *e.usage;
    if (u.oom_kills > 0 && state == "failed") {
      std::string whose;
      if (AtLimit(u, e.limits.memory_bytes, true)) {
        whose = "its memory limit (" + MemoryText(e.limits.memory_bytes) + ") was reached";
      } else if (container_group && AtLimit(container_group->Usage(), opt.memory_bytes, false)) {
        whose = "the container's memory limit (sig.memory " + MemoryText(opt.memory_bytes) +
                ") was reached";
      } else {
        whose = "the host ran out of memory";
      }
      return "oom_killed: " + whose + "; the kernel killed " + std::to_string(u.oom_kills) +
             " process(es) (" + reason + ")";
    }
    if (u.pids_refused > 0) {
      return "pids_limit: the step reached its limit of " + std::to_string(e.limits.pids) +
             " processes and threads (" + std::to_string(u.pids_refused) + " forks refused); " +
             reason;
    }
    return reason;
  }

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
    Json usage{{"wall_s", e.exit ? e.exit->wall_s : 0.0},
               {"cpu_s", e.exit ? e.exit->cpu_s : 0.0},
               {"max_rss_kb", e.exit ? e.exit->max_rss_kb : 0}};
    if (e.exit && e.usage) {
      ApplyCgroupUsage(e, &usage);
      if (state == "failed" || state == "timed_out") reason = LimitReason(e, state, reason);
    }
    Json report{{"attempt_id", e.a.attempt_id},
                {"state", state},
                {"exit_code", e.exit ? NullableInt(e.exit->exit_code) : Json(nullptr)},
                {"signal", e.exit ? NullableInt(e.exit->signal) : Json(nullptr)},
                {"reason", reason},
                {"usage", std::move(usage)},
                {"finished_at", e.finished_at}};
    if (!e.started_at.empty()) report["started_at"] = e.started_at;
    if (e.exit && e.exit->log_reported) {
      report["log_bytes"] = static_cast<uint64_t>(e.exit->log_bytes);
      report["log_dropped_bytes"] = static_cast<uint64_t>(e.exit->log_dropped_bytes);
      report["log_truncated"] = e.exit->log_truncated;
    }
    std::string metrics_error;
    Json metrics = Json::object();
    Json outputs = Json::array();
    bool truncated = false;
    if (e.exit && !e.a.outputs_dir.empty()) {
      // The outputs folder must be where it should be: a step that replaced it with a
      // symlink (to another run's outputs, to the agent's state) reports nothing.
      int dir_fd = open(e.a.outputs_dir.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
      std::string where;
      if (dir_fd >= 0) {
        char buf[PATH_MAX];
        std::string self = "/proc/self/fd/" + std::to_string(dir_fd);
        ssize_t n = readlink(self.c_str(), buf, sizeof(buf) - 1);
        if (n > 0) where.assign(buf, static_cast<size_t>(n));
      }
      struct stat st;
      if (dir_fd >= 0 && where == CanonicalFor(e.a.outputs_dir)) {
        metrics = ReadMetrics(dir_fd, &metrics_error);
        WalkOutputs(dir_fd, "", outputs, truncated);
      } else if (lstat(e.a.outputs_dir.c_str(), &st) == 0) {
        report["outputs_error"] = "the outputs folder is not a folder of its own (a symlink?)";
      }
      if (dir_fd >= 0) close(dir_fd);
    }
    report["metrics"] = std::move(metrics);
    if (!metrics_error.empty()) report["metrics_error"] = metrics_error;
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
      MutexLock lock(&mu);
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
    MutexLock lock(&mu);
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
        MutexLock lock(&mu);
        while (!(threads_stop || draining || !ended.empty() ||
                 (reports_dirty && registered && !pending.empty()))) {
          report_cv.Wait(&mu);
        }
        if (threads_stop) return;
        drain = draining;
      }
      FinishEnded();
      Json body;
      {
        MutexLock lock(&mu);
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
        MutexLock lock(&mu);
        reports_dirty = false;  // unacknowledged ones ride on the long polls
        if (drain && ended.empty()) return;
        continue;
      }
      if (NeedsRegister(r)) {
        MutexLock lock(&mu);
        registered = false;
        poll_cv.SignalAll();
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
    MutexLock lock(&mu);
    ended.push_back(std::move(e));
    report_cv.SignalAll();
  }

  // The canonical path `path` must have (see CanonicalOf).
  std::string CanonicalFor(const std::string& path) const {
    if (IsBeneath(path, opt.data_dir)) return data_dir_real + path.substr(opt.data_dir.size());
    auto real = CanonicalPath(path);
    return real.ok() ? *real : path;
  }

  // The attempt's folders and log file, owned by the user its step runs as (who must
  // write them), never world-readable, created without following symlinks a step of
  // this run may have left in the workspace.
  Status PrepareFiles(const Assignment& a, const DirOwner& owner, bool set_owner) {
    auto depth = [](const std::string& rel) {
      return static_cast<int>(std::count(rel.begin(), rel.end(), '/'));
    };
    // runs/ and logs/ are the master's (only traversable, as epochd makes them: 0711);
    // runs/<run> and below, logs/<run> and below, the step user's.
    RETURN_IF_ERROR(EnsureDirs(opt.data_dir, a.workspace,
                               depth(a.workspace.substr(opt.data_dir.size())) - 1, 0711, owner,
                               0700, set_owner));
    RETURN_IF_ERROR(EnsureDirs(a.workspace, a.outputs_dir, 0, 0700, owner, 0700, set_owner));
    std::string log_dir = a.log_path.substr(0, a.log_path.find_last_of('/'));
    RETURN_IF_ERROR(EnsureDirs(opt.data_dir, log_dir, 1, 0711, owner, 0750, set_owner));
    return EnsureFile(a.log_path, owner, 0640, set_owner);
  }

  // What the step sees besides the host: its workspace (read-write), the assignment's
  // mounts, and the upstream outputs it reads that are outside its workspace (a cache
  // hit's source run), read-only.
  std::vector<sandbox::Bind> BindsFor(const Assignment& a) const {
    std::vector<sandbox::Bind> binds;
    auto covered = [&](const std::string& p) {
      for (const auto& b : binds) {
        if (IsBeneath(p, b.path)) return true;
      }
      return false;
    };
    auto expect = [&](const std::string& p) {
      return IsBeneath(p, opt.data_dir) ? CanonicalFor(p) : std::string();
    };
    binds.push_back({a.workspace, false, expect(a.workspace)});
    for (const auto& m : a.mounts) binds.push_back({m.path, m.read_only, expect(m.path)});
    for (const auto& [path, digest] : a.inputs) {
      if (!covered(path) && IsBeneath(path, opt.data_dir + "/runs") &&
          CheckPath("input", path).ok()) {
        binds.push_back({path, true, expect(path)});
      }
    }
    return binds;
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
    if (Status st = VerifyInputs(a, [this](const std::string& p) { return CanonicalFor(p); });
        !st.ok()) {
      spdlog::warn("attempt {} not started: {}", a.attempt_id, st.message());
      EndWithoutRunning(std::move(a), Why::kNone, st.message(), true);
      return;
    }
    for (const auto& m : a.mounts) {
      struct stat st;
      if (lstat(m.path.c_str(), &st) != 0) {
        EndWithoutRunning(std::move(a), Why::kNone,
                          "invalid assignment: mount " + m.path + ": " + std::strerror(errno),
                          true);
        return;
      }
    }
    // The step's user: its run_as where this agent can switch users; else the agent's.
    StepUser user;
    bool switch_user = isolation.run_as && !a.run_as.empty();
    if (switch_user) {
      auto u = ResolveStepUser(a.run_as);
      if (!u.ok()) {
        EndWithoutRunning(std::move(a), Why::kNone, "invalid assignment: " + u.status().message(),
                          true);
        return;
      }
      user = std::move(*u);
    } else if (!a.run_as.empty()) {
      spdlog::debug("attempt {}: run_as {} not applied ({})", a.attempt_id, a.run_as,
                    isolation.reason);
    }
    DirOwner owner{switch_user ? user.uid : geteuid(), switch_user ? user.gid : getegid()};
    if (Status st = PrepareFiles(a, owner, switch_user); !st.ok()) {
      EndWithoutRunning(std::move(a), Why::kNone, "spawn failed: " + st.ToString(), true);
      return;
    }
    std::map<std::string, std::string> env = a.env;
    // Always set, empty when no GPU is assigned: a child must never see the agent's GPUs.
    env["CUDA_VISIBLE_DEVICES"] = a.cuda_visible_devices;
    env["EPOCH_GPU_UUIDS"] = a.gpu_uuids;
    env["EPOCH_RUN_ID"] = a.run;
    env["EPOCH_STEP"] = a.step;
    env["EPOCH_ATTEMPT"] = a.attempt;
    env["EPOCH_ATTEMPT_ID"] = a.attempt_id;
    env["EPOCH_WORKSPACE"] = a.workspace;
    env["EPOCH_OUTPUTS"] = a.outputs_dir;
    env["EPOCH_CONTAINER_ID"] = opt.id;
    if (switch_user) {
      env["HOME"] = user.home;
      env["USER"] = user.name;
      env["LOGNAME"] = user.name;
    }
    bool sandboxed = isolation.sandbox == "namespaces";
    if (sandboxed) env["TMPDIR"] = "/tmp";  // the private one
    std::unique_ptr<Cgroup> group;
    CgroupLimits limits;
    if (container_group) {
      auto made = MakeAttemptGroup(a, &limits);
      if (!made.ok()) {
        EndWithoutRunning(std::move(a), Why::kNone, "limits: " + made.status().message(), true);
        return;
      }
      group = std::move(*made);
    }
    std::vector<std::string> procs = group ? group->ProcsFiles() : std::vector<std::string>{};
    std::optional<int> oom_score = shielded ? std::optional<int>(0) : std::nullopt;
    Result<std::unique_ptr<StepProcess>> child = Internal("not started");
    if (isolation.shim) {
      sandbox::SandboxSpec spec;
      spec.isolate = sandboxed;
      spec.argv = a.argv;
      spec.env = ChildEnvironment(env);
      spec.cwd = a.workspace;
      spec.data_dir = data_dir_real;
      if (sandboxed) spec.binds = BindsFor(a);
      spec.switch_user = switch_user;
      spec.uid = static_cast<uint32_t>(user.uid);
      spec.gid = static_cast<uint32_t>(user.gid);
      for (gid_t g : user.groups) spec.groups.push_back(static_cast<uint32_t>(g));
      spec.max_log_bytes = a.max_log_bytes;
      spec.tmp_bytes = opt.memory_bytes;  // no step needs more /tmp than its container has RAM
      child = SpawnSandboxed(sandbox_path, spec, a.log_path, procs, oom_score);
    } else {
      ProcessSpec spec;
      spec.argv = a.argv;
      spec.env = env;
      spec.working_dir = a.workspace;
      spec.log_path = a.log_path;
      spec.cgroup_procs = procs;
      spec.oom_score_adj = oom_score;
      child = SpawnDirect(spec);
    }
    if (!child.ok()) {
      if (group) RemoveGroup(std::move(group));
      EndWithoutRunning(std::move(a), Why::kNone, "spawn failed: " + child.status().ToString(),
                        true);
      return;
    }
    Running r;
    r.group = std::move(group);
    r.limits = limits;
    r.child = std::move(*child);
    r.started_at = NowString();
    if (a.timeout_ms > 0) r.deadline = r.child->started() + milliseconds(a.timeout_ms);
    spdlog::info("attempt {} started: pid {}", a.attempt_id, r.child->pid());
    r.a = std::move(a);
    std::string id = r.a.attempt_id;
    running.emplace(id, std::move(r));
  }

  // The attempt's cgroup under the container's, with its limits: CPU quota and memory
  // as declared (never above the container's), the CPU weight of what was reserved,
  // --max-pids, and, where the devices controller exists, the GPUs it was not given
  // denied.
  Result<std::unique_ptr<Cgroup>> MakeAttemptGroup(const Assignment& a, CgroupLimits* limits) {
    // Named by a counter, not the attempt id: /sys/fs/cgroup is readable from every
    // step's sandbox, and attempt ids name other tenants' runs and steps.
    ASSIGN_OR_RETURN(auto g, Cgroup::Create(cgroups, container_group.get(),
                                            "a-" + std::to_string(++attempt_groups_made)));
    CgroupLimits l;
    if (a.cpu_limit_millis > 0) l.cpu_millis = std::min(a.cpu_limit_millis, opt.cpu_millis);
    l.cpu_weight_millis = a.cpu_request_millis > 0 ? a.cpu_request_millis : 100;
    if (a.memory_limit_bytes > 0) l.memory_bytes = std::min(a.memory_limit_bytes, opt.memory_bytes);
    l.pids = opt.max_pids;
    Status st = g->SetLimits(l);
    if (st.ok() && cgroups.has("devices")) {
      std::set<std::string> given(a.gpus.begin(), a.gpus.end());
      std::vector<std::pair<int, int>> deny;
      for (const auto& gpu : opt.gpu_inventory.gpus) {
        if (given.count(std::to_string(gpu.index)) || given.count(gpu.uuid)) continue;
        if (auto dev = NvidiaDeviceOf(gpu.pci_bus_id); dev.ok()) deny.push_back(*dev);
      }
      if (!deny.empty()) st = g->DenyDevices(deny);
    }
    if (!st.ok()) {
      (void)g->Remove();
      return st;
    }
    *limits = l;
    return g;
  }

  // Kills what is left in an attempt's group and removes it; one that cannot be
  // removed yet is retried on later ticks.
  void RemoveGroup(std::unique_ptr<Cgroup> g) {
    if (Status st = g->Remove(milliseconds(200)); !st.ok()) {
      spdlog::warn("cgroup not removed yet: {}", st.message());
      leftover_groups.push_back(std::move(g));
    }
  }

  void RetryLeftoverGroups() {
    for (auto it = leftover_groups.begin(); it != leftover_groups.end();) {
      if ((*it)->Remove(milliseconds(0)).ok()) {
        it = leftover_groups.erase(it);
      } else {
        ++it;
      }
    }
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
      MutexLock lock(&mu);
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
    if (!leftover_groups.empty()) RetryLeftoverGroups();
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
        if (r.group) {
          // The kernel's account first, then nothing of the attempt may outlive it.
          e.usage = r.group->Usage();
          e.limits = r.limits;
          RemoveGroup(std::move(r.group));
        }
        e.why = r.why;
        e.reason = r.why == Why::kShutdown ? shutdown_reason : "";
        e.started_at = r.started_at;
        e.finished_at = NowString();
        e.a = std::move(r.a);
        it = running.erase(it);
        MutexLock lock(&mu);
        ended.push_back(std::move(e));
        report_cv.SignalAll();
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

  std::string shutdown_reason;  // main loop only

  int MainLoop() {
    int code = kAgentExitOk;
    while (true) {
      std::deque<Json> starts;
      std::deque<std::string> cancels;
      {
        MutexLock lock(&mu);
        const auto deadline = SteadyClock::now() + opt.tick;
        while (!(!inbox.empty() || !cancel_inbox.empty() || release || orphaned ||
                 stop_flag->load())) {
          if (!main_cv.WaitUntil(&mu, deadline)) break;
        }
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
      MutexLock lock(&mu);
      for (const auto& j : inbox) active.erase(GetString(j, "attempt_id"));
      inbox.clear();
    }
    return code;
  }

  // At exit: the attempts' groups, then the agent's and the container's (after moving
  // out of them). Where that cannot be done (cgroup v2 gives no way back into a parent
  // that has controllers enabled), the next agent's SweepStaleCgroups removes them.
  void RemoveContainerGroups() {
    if (!container_group) return;
    RetryLeftoverGroups();
    if (!MoveToBases(cgroups, getpid()).ok()) return;
    if (agent_group && agent_group->Remove(milliseconds(500)).ok()) agent_group.reset();
    if (!agent_group && container_group->Remove(milliseconds(500)).ok()) container_group.reset();
  }

  int RunAll() {
    std::thread poller([this] { PollThread(); });
    std::thread reporter([this] { ReportThread(); });
    int code = MainLoop();
    {
      MutexLock lock(&mu);
      draining = true;
      report_cv.SignalAll();
    }
    reporter.join();  // builds every report, sends them once (bounded by timeouts)
    {
      // A long poll may be in flight: shut its socket so the thread ends now.
      MutexLock lock(&mu);
      threads_stop = true;
      if (poll_http != nullptr) poll_http->stop();
      poll_cv.SignalAll();
    }
    poller.join();
    RemoveContainerGroups();
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
  RETURN_IF_ERROR(impl_->Prepare());
  RETURN_IF_ERROR(impl_->Recover().WithContext("agent state in " + impl_->dir));
  std::string master_url;
  {
    MutexLock lock(&impl_->mu);  // no thread runs yet; taken for the analysis
    master_url = impl_->master_url;
  }
  spdlog::info(
      "agent {} (pid {}) starting: master {}, {} mCPU, {} bytes, {} GPU(s) asked for, "
      "{} found",
      o.id, getpid(), master_url, o.cpu_millis, o.memory_bytes, o.gpus,
      o.gpu_inventory.gpus.size());
  return impl_->RunAll();
}

}  // namespace epoch::executors
