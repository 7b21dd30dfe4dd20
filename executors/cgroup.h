// Control groups: the kernel's limits on what a compute container and each of its
// attempts may use (CPU time, memory without swap, processes, devices), and the
// kernel's own account of what they used and why one was killed.
//
// Two interfaces, one model. cgroup v2 has one hierarchy with every controller
// (cpu.max, memory.max, memory.swap.max, pids.max, memory.events, memory.peak);
// cgroup v1 mounts each controller as a hierarchy of its own (memory.limit_in_bytes,
// memory.memsw.limit_in_bytes, cpu.cfs_quota_us, cpuacct.usage, pids.max,
// devices.deny). A Cgroup is one named group in every hierarchy that is used, so the
// agent does not care which it got.
//
// Layout, under each base (the cgroup the agent started in, per controller, or
// executor.cgroupRoot): epoch/<container id>-<agent pid>/ holds the container's
// limits (sig.cpu, sig.memory); inside it agent/ holds the agent itself (cgroup v2
// allows processes only in leaves) and a-<n>/ each attempt (numbered: a
// step can read /sys/fs/cgroup, and attempt ids would name other tenants' runs). The pid
// in the name makes a group that a dead agent left behind recognisable:
// SweepStaleCgroups removes those.
//
// Thread-safety: DetectCgroups and SweepStaleCgroups are safe from any thread. A Cgroup
// is used by one thread at a time.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "common/clock.h"
#include "common/status.h"

namespace epoch::executors {

enum class CgroupVersion { kNone, kV1, kV2 };

// What a group may use. 0 leaves that limit off (the parent's still applies).
struct CgroupLimits {
  int64_t cpu_millis = 0;         // CPU time per wall second, as a quota (cpu.max / CFS)
  int64_t cpu_weight_millis = 0;  // share of contended CPU (cpu.weight / cpu.shares)
  int64_t memory_bytes = 0;       // memory.max / limit_in_bytes; swap is then held at 0
  int64_t pids = 0;               // pids.max: processes and threads
};

// What the kernel counted for a group (it and everything below it).
struct CgroupUsage {
  double cpu_s = 0;               // user + system
  int64_t memory_peak_bytes = 0;  // high-water mark; 0 where the kernel keeps none
  int64_t memory_limit_hits = 0;  // v1 memory(.memsw).failcnt (0 where not kept); v2 memory.events "max"
  int64_t oom_events = 0;         // v2 memory.events "oom" (the group's own limit); v1: 0
  int64_t oom_kills = 0;          // processes of the group the OOM killer killed
  int64_t pids_refused = 0;       // forks refused at pids.max (pids.events "max")
};

// Where this host lets the agent make cgroups, as DetectCgroups found it.
struct CgroupHost {
  CgroupVersion version = CgroupVersion::kNone;
  // kNone: why limits cannot be enforced. Otherwise what is missing ("no pids
  // controller"), empty when everything is in force.
  std::string reason;
  // v2: {"unified": dir}. v1: controller (memory, cpu, cpuacct, pids, devices) -> dir;
  // two controllers mounted together share a dir.
  std::map<std::string, std::string> bases;
  bool has(const std::string& controller) const { return bases.count(controller) > 0; }
  std::string Name() const;  // "cgroup2" | "cgroup1" | "none"
};

// Finds the hierarchies in mountinfo and this process's place in them (proc_cgroup),
// then proves that a group can be made under each base (mkdir and rmdir of a probe).
// root: empty to use the mounts; otherwise a cgroup2 directory, or a directory holding
// one v1 hierarchy per controller (memory/, cpu/, cpuacct/, pids/, devices/), used as
// the bases themselves. v1 needs at least memory and cpu; v2 needs cpu, memory and
// pids available and delegable (a base that holds processes cannot hand controllers to
// child groups: cgroup v2's no-internal-process rule).
CgroupHost DetectCgroups(const std::string& root = "",
                         const std::string& mountinfo = "/proc/self/mountinfo",
                         const std::string& proc_cgroup = "/proc/self/cgroup");

// One group, in every hierarchy the host uses. The caller made it and removes it.
class Cgroup {
 public:
  // Makes <parent or the host's bases>/<name> (existing is fine), and for v2 hands the
  // controllers down to it (cgroup.subtree_control of the parent).
  static Result<std::unique_ptr<Cgroup>> Create(const CgroupHost& host, const Cgroup* parent,
                                                const std::string& name);
  // Removal is explicit (Remove): destroying the object leaves the group.
  ~Cgroup() = default;

  CgroupVersion version() const { return version_; }
  // controller -> dir ("unified" for v2).
  const std::map<std::string, std::string>& dirs() const { return dirs_; }

  // Writes the limits that are set; kInternal naming the file that refused.
  Status SetLimits(const CgroupLimits& limits);
  // The cgroup.procs files a process writes "0" to, to join this group (one per
  // distinct hierarchy): ProcessSpec::cgroup_procs.
  std::vector<std::string> ProcsFiles() const;
  // Moves pid into the group.
  Status AddProcess(pid_t pid);
  CgroupUsage Usage() const;
  // Pids of every process in the group (v1: the memory hierarchy's, else any).
  std::vector<pid_t> Processes() const;
  // v1 devices controller: denies read, write and mknod of these character devices
  // (major, minor). kFailedPrecondition where there is no devices controller (v2 needs an
  // eBPF program for it).
  Status DenyDevices(const std::vector<std::pair<int, int>>& char_devices);
  // SIGKILLs whatever still runs in the group until it is empty (at most `wait`), then
  // removes it from every hierarchy. Child groups must be removed first. OK when
  // already gone.
  Status Remove(Micros wait = std::chrono::seconds(5));

 private:
  Cgroup() = default;
  CgroupVersion version_ = CgroupVersion::kNone;
  std::map<std::string, std::string> dirs_;
};

// Writes `value` to a kernel control file (a cgroup's, /proc/self/oom_score_adj) in one
// write(2); kInternal naming the file and errno.
Status WriteControl(const std::string& path, const std::string& value);

// Moves pid back into the host's bases (where the agent started), so the groups it
// made can be removed. cgroup v2 refuses this where a base hands controllers down.
Status MoveToBases(const CgroupHost& host, pid_t pid);

// Removes groups under <base>/epoch/ named "<anything>-<pid>" whose pid is not alive
// (an agent that was killed): their processes are SIGKILLed, their child groups and
// then they are removed. Returns how many were removed.
int SweepStaleCgroups(const CgroupHost& host);

// The character device numbers of NVIDIA GPU `pci_bus_id` ("0000:17:00.0"): (195,
// minor) from /proc/driver/nvidia/gpus/<id>/information; kNotFound without it.
Result<std::pair<int, int>> NvidiaDeviceOf(const std::string& pci_bus_id);

}  // namespace epoch::executors
