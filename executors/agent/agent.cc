// The agent's entry points (agent.h): its flags (ParseAgentFlags, AgentUsage),
// EscapeAttemptId, Agent::Run, and Agent::Impl's constructor and RunAll, which starts
// the poll and report threads around the main loop. Also the small helpers every part
// of the agent uses. The rest of Agent::Impl is in the files agent_internal.h lists.
#include "executors/agent/agent.h"

#include <limits.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cctype>
#include <map>
#include <set>
#include <thread>

#include "common/files.h"
#include "common/mutex.h"
#include "common/units.h"
#include "executors/agent/agent_internal.h"

namespace epoch::executors {
namespace agent_internal {

// ---------------------------------------------------------------- small helpers

std::string JoinPathParts(const std::string& a, const std::string& b) {
  if (a.empty()) return b;
  if (!a.empty() && a.back() == '/') return a + b;
  return a + "/" + b;
}

std::string NowString() { return FormatTime(SystemClock().Now()); }

std::string GetString(const Json& j, const char* key, const std::string& dflt) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return dflt;
  if (it->is_string()) return it->get<std::string>();
  return it->dump();
}

}  // namespace agent_internal

using agent_internal::JoinPathParts;
using agent_internal::TrimUrl;

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
      "id",      "master",    "data-dir",     "cpu-millis",      "memory-bytes", "gpus",
      "backend", "handle",    "grace",        "orphan-timeout",  "log-format",   "log-level",
      "ca-cert", "isolation", "sandbox-path", "credential-file", "enforce",      "cgroup-root",
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

Agent::Impl::Impl(AgentOptions o, std::atomic<bool>* stop) : opt(std::move(o)), stop_flag(stop) {
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

int Agent::Impl::RunAll() {
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
