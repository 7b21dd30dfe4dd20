// Agent::Impl's limits in cgroups (executors/cgroup.h; README "Limits"): what enforces
// them and the container's groups (PrepareLimits, EnforcementJson, which registers
// them), an attempt's group with its limits and denied GPUs (MakeAttemptGroup), and
// removing groups as attempts end and at exit.
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <set>

#include "common/files.h"
#include "executors/agent/agent_internal.h"

namespace epoch::executors {

using agent_internal::Assignment;
using agent_internal::milliseconds;

// Decides what enforces the limits, makes the container's cgroup with sig.cpu and
// sig.memory, and moves the agent into its leaf. auto: anything that fails leaves
// "none" with the reason; required: it is an error.
Status Agent::Impl::PrepareLimits() {
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
      enforce_reason =
          "Slurm's cgroup plugin confines the job to what it asked for, not "
          "each attempt (" +
          why + ")";
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
      return FailedPrecondition(
          "--enforce required, but limits cannot be enforced per "
          "attempt: " +
          why);
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
    devices_note =
        "not enforced: no cgroup v1 devices controller (steps see only their "
        "GPUs through CUDA_VISIBLE_DEVICES)";
  } else if (!any_pci) {
    devices_note = "not enforced: simulated GPUs have no device nodes";
  } else {
    devices_note = "cgroup1 devices: an attempt's cgroup denies the GPUs it was not given";
  }
  return Status::Ok();
}

Json Agent::Impl::EnforcementJson() const {
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

// The attempt's cgroup under the container's, with its limits: CPU quota and memory
// as declared (never above the container's), the CPU weight of what was reserved,
// --max-pids, and, where the devices controller exists, the GPUs it was not given
// denied.
Result<std::unique_ptr<Cgroup>> Agent::Impl::MakeAttemptGroup(const Assignment& a,
                                                              CgroupLimits* limits) {
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
void Agent::Impl::RemoveGroup(std::unique_ptr<Cgroup> g) {
  if (Status st = g->Remove(milliseconds(200)); !st.ok()) {
    spdlog::warn("cgroup not removed yet: {}", st.message());
    leftover_groups.push_back(std::move(g));
  }
}

void Agent::Impl::RetryLeftoverGroups() {
  for (auto it = leftover_groups.begin(); it != leftover_groups.end();) {
    if ((*it)->Remove(milliseconds(0)).ok()) {
      it = leftover_groups.erase(it);
    } else {
      ++it;
    }
  }
}

// At exit: the attempts' groups, then the agent's and the container's (after moving
// out of them). Where that cannot be done (cgroup v2 gives no way back into a parent
// that has controllers enabled), the next agent's SweepStaleCgroups removes them.
void Agent::Impl::RemoveContainerGroups() {
  if (!container_group) return;
  RetryLeftoverGroups();
  if (!MoveToBases(cgroups, getpid()).ok()) return;
  if (agent_group && agent_group->Remove(milliseconds(500)).ok()) agent_group.reset();
  if (!agent_group && container_group->Remove(milliseconds(500)).ok()) container_group.reset();
}

}  // namespace epoch::executors
