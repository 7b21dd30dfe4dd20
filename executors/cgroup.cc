#include "executors/cgroup.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <set>
#include <sstream>
#include <thread>

#include "common/fd.h"
#include "common/files.h"

namespace epoch::executors {

namespace {

constexpr long kCgroupMagic = 0x27e0eb;     // CGROUP_SUPER_MAGIC
constexpr long kCgroup2Magic = 0x63677270;  // CGROUP2_SUPER_MAGIC
constexpr int64_t kCfsPeriodUs = 100000;
constexpr const char* kEpochDir = "epoch";
// The v1 controllers Epoch uses; memory and cpu are required.
const std::vector<std::string> kV1Controllers = {"memory", "cpu", "cpuacct", "pids", "devices"};

std::string Errno() { return std::strerror(errno); }

std::string ReadControl(const std::string& path) {
  auto r = ReadFile(path, 1 << 20);
  return r.ok() ? *r : std::string();
}

int64_t ToInt(const std::string& s) {
  try {
    return std::stoll(s);
  } catch (...) {
    return 0;
  }
}

// The value of `key` in a flat-keyed file ("oom_kill 3\nmax 0\n").
int64_t KeyedValue(const std::string& text, const std::string& key) {
  std::istringstream in(text);
  std::string k, v;
  while (in >> k >> v) {
    if (k == key) return ToInt(v);
  }
  return 0;
}

long FsMagic(const std::string& dir) {
  struct statfs fs {};
  if (statfs(dir.c_str(), &fs) != 0) return 0;
  return static_cast<long>(fs.f_type);
}

bool IsDir(const std::string& path) {
  struct stat st {};
  return stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

std::vector<std::string> Split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::string cur;
  for (char c : s) {
    if (c == sep) {
      out.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  out.push_back(cur);
  return out;
}

std::vector<std::string> SubDirs(const std::string& dir) {
  std::vector<std::string> out;
  DIR* d = opendir(dir.c_str());
  if (!d) return out;
  while (dirent* e = readdir(d)) {
    std::string name = e->d_name;
    if (name == "." || name == "..") continue;
    if (IsDir(dir + "/" + name)) out.push_back(name);
  }
  closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<pid_t> ProcsIn(const std::string& dir) {
  std::vector<pid_t> out;
  std::istringstream in(ReadControl(dir + "/cgroup.procs"));
  long pid;
  while (in >> pid) out.push_back(static_cast<pid_t>(pid));
  return out;
}

// SIGKILLs everything in `dir` until it is empty, then rmdir; ENOENT is success.
Status KillAndRemoveDir(const std::string& dir, Micros wait) {
  auto deadline = std::chrono::steady_clock::now() + wait;
  bool killed_via_file = false;
  while (true) {
    if (rmdir(dir.c_str()) == 0 || errno == ENOENT) return Status::Ok();
    if (errno != EBUSY) return Internal("rmdir " + dir + ": " + Errno());
    std::vector<pid_t> procs = ProcsIn(dir);
    if (!procs.empty() && !killed_via_file && access((dir + "/cgroup.kill").c_str(), W_OK) == 0) {
      killed_via_file = WriteControl(dir + "/cgroup.kill", "1").ok();
    }
    for (pid_t p : procs) kill(p, SIGKILL);
    if (std::chrono::steady_clock::now() >= deadline) {
      return Internal("rmdir " + dir + ": still busy (" + std::to_string(procs.size()) +
                      " processes left)");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(procs.empty() ? 2 : 10));
  }
}

// Removes dir's child groups (deepest first), then dir.
Status RemoveTree(const std::string& dir, Micros wait) {
  for (const auto& sub : SubDirs(dir)) RETURN_IF_ERROR(RemoveTree(dir + "/" + sub, wait));
  return KillAndRemoveDir(dir, wait);
}

struct Mount {
  std::string root, point, fstype;
  std::set<std::string> options;  // super options: the v1 controllers
};

std::vector<Mount> CgroupMounts(const std::string& mountinfo) {
  std::vector<Mount> out;
  std::istringstream in(ReadControl(mountinfo));
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream f(line);
    std::vector<std::string> fields;
    std::string w;
    while (f >> w) fields.push_back(w);
    auto dash = std::find(fields.begin(), fields.end(), "-");
    if (fields.size() < 5 || dash == fields.end() || fields.end() - dash < 2) continue;
    Mount m;
    m.root = fields[3];
    m.point = fields[4];
    m.fstype = *(dash + 1);
    if (m.fstype != "cgroup" && m.fstype != "cgroup2") continue;
    if (fields.end() - dash > 3) {
      for (const auto& o : Split(*(dash + 3), ',')) m.options.insert(o);
    }
    out.push_back(std::move(m));
  }
  return out;
}

// /proc/self/cgroup: "4:memory:/a/b" -> {"memory": "/a/b"}, "0::/x" -> {"": "/x"}.
std::map<std::string, std::string> OwnPaths(const std::string& proc_cgroup) {
  std::map<std::string, std::string> out;
  std::istringstream in(ReadControl(proc_cgroup));
  std::string line;
  while (std::getline(in, line)) {
    auto a = line.find(':');
    auto b = a == std::string::npos ? a : line.find(':', a + 1);
    if (b == std::string::npos) continue;
    std::string path = line.substr(b + 1);
    std::string controllers = line.substr(a + 1, b - a - 1);
    if (controllers.empty()) {
      out[""] = path;
      continue;
    }
    for (const auto& c : Split(controllers, ',')) out[c] = path;
  }
  return out;
}

// Where `own` (a path in the hierarchy) is under a mount of it at point whose root is
// `root`; empty when the mount does not show it.
std::string DirFor(const Mount& m, const std::string& own) {
  if (m.root == "/") return own == "/" ? m.point : m.point + own;
  if (own == m.root) return m.point;
  if (own.rfind(m.root + "/", 0) == 0) return m.point + own.substr(m.root.size());
  return "";
}

// Makes <base>/epoch and a probe group inside it, then removes the probe.
Status ProbeBase(const std::string& base) {
  std::string parent = base + "/" + kEpochDir;
  if (mkdir(parent.c_str(), 0755) != 0 && errno != EEXIST) {
    return FailedPrecondition("cannot create a cgroup under " + base + ": " + Errno());
  }
  std::string probe = parent + "/probe-" + std::to_string(getpid());
  if (mkdir(probe.c_str(), 0755) != 0 && errno != EEXIST) {
    return FailedPrecondition("cannot create a cgroup under " + parent + ": " + Errno());
  }
  if (rmdir(probe.c_str()) != 0) {
    return FailedPrecondition("cannot remove the probe cgroup " + probe + ": " + Errno());
  }
  return Status::Ok();
}

std::set<std::string> Words(const std::string& text) {
  std::istringstream in(text);
  std::set<std::string> out;
  std::string w;
  while (in >> w) out.insert(w);
  return out;
}

// v2: the controllers must be available at base and handed down to base/epoch.
CgroupHost TryV2(const std::string& base) {
  CgroupHost h;
  auto have = Words(ReadControl(base + "/cgroup.controllers"));
  std::vector<std::string> missing;
  for (const char* c : {"cpu", "memory", "pids"}) {
    if (!have.count(c)) missing.push_back(c);
  }
  if (!missing.empty()) {
    std::string m;
    for (const auto& c : missing) m += (m.empty() ? "" : ", ") + c;
    h.reason = "cgroup v2 at " + base + " does not offer " + m;
    return h;
  }
  if (Status s = ProbeBase(base); !s.ok()) {
    h.reason = s.message();
    return h;
  }
  // Hand the controllers down: base -> base/epoch (-> containers, in Create).
  if (Status s = WriteControl(base + "/cgroup.subtree_control", "+cpu +memory +pids"); !s.ok()) {
    auto procs = ProcsIn(base);
    h.reason = "cgroup v2: cannot enable cpu, memory and pids below " + base +
               (procs.empty() ? ": " + s.message()
                              : " because processes live in it (cgroup v2 allows them only in "
                                "leaves): run epochd in a delegated cgroup of its own, or set "
                                "executor.cgroupRoot to one");
    return h;
  }
  if (Status s = WriteControl(base + "/" + kEpochDir + "/cgroup.subtree_control",
                              "+cpu +memory +pids");
      !s.ok()) {
    h.reason = "cgroup v2: " + s.message();
    return h;
  }
  h.version = CgroupVersion::kV2;
  h.bases["unified"] = base;
  return h;
}

CgroupHost TryV1(std::map<std::string, std::string> bases) {
  CgroupHost h;
  for (const char* need : {"memory", "cpu"}) {
    if (!bases.count(need)) {
      h.reason = std::string("no cgroup v1 ") + need + " controller is mounted";
      return h;
    }
  }
  std::vector<std::string> notes;
  std::map<std::string, Status> probed;  // per distinct dir
  for (auto it = bases.begin(); it != bases.end();) {
    const auto& [controller, dir] = *it;
    if (!probed.count(dir)) probed.emplace(dir, ProbeBase(dir));
    const Status& s = probed.at(dir);
    if (s.ok()) {
      ++it;
      continue;
    }
    if (controller == "memory" || controller == "cpu") {
      h.reason = s.message();
      return h;
    }
    notes.push_back("no " + controller + " (" + s.message() + ")");
    it = bases.erase(it);
  }
  for (const char* c : {"cpuacct", "pids", "devices"}) {
    bool noted = false;
    for (const auto& n : notes) noted |= n.rfind(std::string("no ") + c + " ", 0) == 0;
    if (!bases.count(c) && !noted) notes.push_back(std::string("no ") + c + " controller");
  }
  for (const auto& n : notes) h.reason += (h.reason.empty() ? "" : "; ") + n;
  h.version = CgroupVersion::kV1;
  h.bases = std::move(bases);
  return h;
}

}  // namespace

Status WriteControl(const std::string& path, const std::string& value) {
  UniqueFd fd(open(path.c_str(), O_WRONLY | O_CLOEXEC));
  if (!fd) return Internal("open " + path + ": " + Errno());
  ssize_t n;
  do {
    n = write(fd.get(), value.data(), value.size());
  } while (n < 0 && errno == EINTR);
  int err = errno;
  fd.reset();
  if (n < 0) return Internal("write '" + value + "' to " + path + ": " + std::strerror(err));
  return Status::Ok();
}

Status MoveToBases(const CgroupHost& host, pid_t pid) {
  std::set<std::string> done;
  for (const auto& [c, base] : host.bases) {
    if (done.insert(base).second) RETURN_IF_ERROR(WriteControl(base + "/cgroup.procs", std::to_string(pid)));
  }
  return Status::Ok();
}

std::string CgroupHost::Name() const {
  switch (version) {
    case CgroupVersion::kV2:
      return "cgroup2";
    case CgroupVersion::kV1:
      return "cgroup1";
    case CgroupVersion::kNone:
      break;
  }
  return "none";
}

CgroupHost DetectCgroups(const std::string& root, const std::string& mountinfo,
                         const std::string& proc_cgroup) {
  if (!root.empty()) {
    if (!IsDir(root)) return CgroupHost{CgroupVersion::kNone, root + " is not a directory", {}};
    if (FsMagic(root) == kCgroup2Magic) return TryV2(root);
    std::map<std::string, std::string> bases;
    for (const auto& c : kV1Controllers) {
      std::string dir = root + "/" + c;
      if (IsDir(dir) && FsMagic(dir) == kCgroupMagic) bases[c] = dir;
    }
    if (bases.empty()) {
      return CgroupHost{CgroupVersion::kNone,
                        root + " is neither a cgroup2 directory nor holds cgroup v1 hierarchies",
                        {}};
    }
    return TryV1(std::move(bases));
  }
  auto mounts = CgroupMounts(mountinfo);
  auto own = OwnPaths(proc_cgroup);
  std::string v2_reason;
  for (const auto& m : mounts) {
    if (m.fstype != "cgroup2" || !own.count("")) continue;
    std::string dir = DirFor(m, own[""]);
    if (dir.empty()) continue;
    auto have = Words(ReadControl(dir + "/cgroup.controllers"));
    if (!have.count("memory") && !have.count("cpu")) {
      v2_reason = "cgroup v2 at " + m.point + " has no cpu or memory controller";
      continue;  // a hybrid host: the controllers are on v1
    }
    return TryV2(dir);
  }
  std::map<std::string, std::string> bases;
  for (const auto& m : mounts) {
    if (m.fstype != "cgroup") continue;
    for (const auto& c : kV1Controllers) {
      if (!m.options.count(c) || bases.count(c)) continue;
      auto path = own.find(c);
      std::string dir = DirFor(m, path == own.end() ? "/" : path->second);
      if (!dir.empty() && IsDir(dir)) bases[c] = dir;
    }
  }
  if (bases.empty()) {
    return CgroupHost{CgroupVersion::kNone,
                      v2_reason.empty() ? "no cgroup hierarchy is mounted"
                                        : v2_reason + ", and no cgroup v1 controllers are mounted",
                      {}};
  }
  return TryV1(std::move(bases));
}

Result<std::unique_ptr<Cgroup>> Cgroup::Create(const CgroupHost& host, const Cgroup* parent,
                                               const std::string& name) {
  if (host.version == CgroupVersion::kNone) return FailedPrecondition("no cgroups: " + host.reason);
  if (name.empty() || name.find('/') != std::string::npos || name[0] == '.') {
    return InvalidArgument("bad cgroup name '" + name + "'");
  }
  auto g = std::unique_ptr<Cgroup>(new Cgroup());
  g->version_ = host.version;
  std::set<std::string> made;
  for (const auto& [controller, base] : host.bases) {
    std::string up = parent ? parent->dirs_.at(controller) : base + "/" + kEpochDir;
    std::string dir = up + "/" + name;
    if (!made.count(dir)) {
      if (host.version == CgroupVersion::kV2 && parent) {
        // Children of a container group get the controllers too (for their limits).
        RETURN_IF_ERROR(WriteControl(up + "/cgroup.subtree_control", "+cpu +memory +pids"));
      }
      if (mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) {
        return Internal("mkdir " + dir + ": " + Errno());
      }
      made.insert(dir);
    }
    g->dirs_[controller] = dir;
  }
  return g;
}

Status Cgroup::SetLimits(const CgroupLimits& l) {
  if (version_ == CgroupVersion::kV2) {
    const std::string& d = dirs_.at("unified");
    if (l.memory_bytes > 0) {
      RETURN_IF_ERROR(WriteControl(d + "/memory.max", std::to_string(l.memory_bytes)));
      if (access((d + "/memory.swap.max").c_str(), F_OK) == 0) {
        RETURN_IF_ERROR(WriteControl(d + "/memory.swap.max", "0"));
      }
    }
    if (l.cpu_millis > 0) {
      RETURN_IF_ERROR(WriteControl(d + "/cpu.max", std::to_string(l.cpu_millis * kCfsPeriodUs / 1000) +
                                                       " " + std::to_string(kCfsPeriodUs)));
    }
    if (l.cpu_weight_millis > 0) {
      // cpu.weight 1..10000, 100 = one core's worth by convention.
      int64_t w = std::clamp<int64_t>(l.cpu_weight_millis / 10, 1, 10000);
      RETURN_IF_ERROR(WriteControl(d + "/cpu.weight", std::to_string(w)));
    }
    if (l.pids > 0) RETURN_IF_ERROR(WriteControl(d + "/pids.max", std::to_string(l.pids)));
    return Status::Ok();
  }
  if (l.memory_bytes > 0) {
    const std::string& d = dirs_.at("memory");
    RETURN_IF_ERROR(WriteControl(d + "/memory.limit_in_bytes", std::to_string(l.memory_bytes)));
    // memory+swap at the same figure: no swap (absent where swap accounting is off).
    if (access((d + "/memory.memsw.limit_in_bytes").c_str(), F_OK) == 0) {
      RETURN_IF_ERROR(
          WriteControl(d + "/memory.memsw.limit_in_bytes", std::to_string(l.memory_bytes)));
    }
  }
  if (l.cpu_millis > 0 || l.cpu_weight_millis > 0) {
    const std::string& d = dirs_.at("cpu");
    if (l.cpu_millis > 0) {
      RETURN_IF_ERROR(WriteControl(d + "/cpu.cfs_period_us", std::to_string(kCfsPeriodUs)));
      RETURN_IF_ERROR(
          WriteControl(d + "/cpu.cfs_quota_us", std::to_string(l.cpu_millis * kCfsPeriodUs / 1000)));
    }
    if (l.cpu_weight_millis > 0) {
      int64_t shares = std::max<int64_t>(2, l.cpu_weight_millis * 1024 / 1000);
      RETURN_IF_ERROR(WriteControl(d + "/cpu.shares", std::to_string(shares)));
    }
  }
  if (l.pids > 0 && dirs_.count("pids")) {
    RETURN_IF_ERROR(WriteControl(dirs_.at("pids") + "/pids.max", std::to_string(l.pids)));
  }
  return Status::Ok();
}

std::vector<std::string> Cgroup::ProcsFiles() const {
  std::set<std::string> dirs;
  for (const auto& [c, d] : dirs_) dirs.insert(d);
  std::vector<std::string> out;
  for (const auto& d : dirs) out.push_back(d + "/cgroup.procs");
  return out;
}

Status Cgroup::AddProcess(pid_t pid) {
  for (const auto& f : ProcsFiles()) RETURN_IF_ERROR(WriteControl(f, std::to_string(pid)));
  return Status::Ok();
}

CgroupUsage Cgroup::Usage() const {
  CgroupUsage u;
  if (version_ == CgroupVersion::kV2) {
    const std::string& d = dirs_.at("unified");
    u.cpu_s = static_cast<double>(KeyedValue(ReadControl(d + "/cpu.stat"), "usage_usec")) / 1e6;
    u.memory_peak_bytes = ToInt(ReadControl(d + "/memory.peak"));
    std::string events = ReadControl(d + "/memory.events");
    u.memory_limit_hits = KeyedValue(events, "max");
    u.oom_events = KeyedValue(events, "oom");
    u.oom_kills = KeyedValue(events, "oom_kill");
    u.pids_refused = KeyedValue(ReadControl(d + "/pids.events"), "max");
    return u;
  }
  if (auto it = dirs_.find("cpuacct"); it != dirs_.end()) {
    u.cpu_s = static_cast<double>(ToInt(ReadControl(it->second + "/cpuacct.usage"))) / 1e9;
  }
  const std::string& m = dirs_.at("memory");
  u.memory_peak_bytes = ToInt(ReadControl(m + "/memory.max_usage_in_bytes"));
  // Either counter (the memory+swap one trips first when both limits are equal); some
  // kernels keep neither.
  u.memory_limit_hits = std::max(ToInt(ReadControl(m + "/memory.failcnt")),
                                 ToInt(ReadControl(m + "/memory.memsw.failcnt")));
  u.oom_kills = KeyedValue(ReadControl(m + "/memory.oom_control"), "oom_kill");
  if (auto it = dirs_.find("pids"); it != dirs_.end()) {
    u.pids_refused = KeyedValue(ReadControl(it->second + "/pids.events"), "max");
  }
  return u;
}

std::vector<pid_t> Cgroup::Processes() const {
  auto it = dirs_.find(version_ == CgroupVersion::kV2 ? "unified" : "memory");
  return it == dirs_.end() ? std::vector<pid_t>{} : ProcsIn(it->second);
}

Status Cgroup::DenyDevices(const std::vector<std::pair<int, int>>& char_devices) {
  auto it = dirs_.find("devices");
  if (version_ != CgroupVersion::kV1 || it == dirs_.end()) {
    return FailedPrecondition("no cgroup v1 devices controller");
  }
  for (const auto& [major, minor] : char_devices) {
    RETURN_IF_ERROR(WriteControl(it->second + "/devices.deny",
                                 "c " + std::to_string(major) + ":" + std::to_string(minor) + " rwm"));
  }
  return Status::Ok();
}

Status Cgroup::Remove(Micros wait) {
  std::set<std::string> dirs;
  for (const auto& [c, d] : dirs_) dirs.insert(d);
  // The memory hierarchy (or v2's) first: killing there empties the others.
  std::string first = dirs_.count("memory") ? dirs_.at("memory")
                                            : dirs_.count("unified") ? dirs_.at("unified") : "";
  Status result = Status::Ok();
  if (!first.empty()) {
    result = KillAndRemoveDir(first, wait);
    dirs.erase(first);
  }
  for (const auto& d : dirs) {
    Status s = KillAndRemoveDir(d, wait);
    if (result.ok()) result = s;
  }
  return result;
}

int SweepStaleCgroups(const CgroupHost& host) {
  int removed = 0;
  std::set<std::string> bases;
  for (const auto& [c, b] : host.bases) bases.insert(b + "/" + kEpochDir);
  for (const auto& parent : bases) {
    for (const auto& name : SubDirs(parent)) {
      auto dash = name.rfind('-');
      if (dash == std::string::npos || dash + 1 >= name.size()) continue;
      std::string digits = name.substr(dash + 1);
      if (!std::all_of(digits.begin(), digits.end(), ::isdigit) || digits.size() > 9) continue;
      pid_t pid = static_cast<pid_t>(std::stol(digits));
      if (pid <= 0 || kill(pid, 0) == 0 || errno != ESRCH) continue;
      if (RemoveTree(parent + "/" + name, std::chrono::seconds(2)).ok()) ++removed;
    }
  }
  return removed;
}

Result<std::pair<int, int>> NvidiaDeviceOf(const std::string& pci_bus_id) {
  if (pci_bus_id.empty() || pci_bus_id.find('/') != std::string::npos) {
    return NotFound("no PCI bus id");
  }
  std::string lower = pci_bus_id;
  std::transform(lower.begin(), lower.end(), lower.begin(), ::tolower);
  std::string text = ReadControl("/proc/driver/nvidia/gpus/" + lower + "/information");
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("Device Minor:", 0) == 0) return std::make_pair(195, static_cast<int>(ToInt(line.substr(13))));
  }
  return NotFound("/proc/driver/nvidia/gpus/" + lower + "/information names no device minor");
}

}  // namespace epoch::executors
