// Agent::Impl's main loop, the one thread that owns the attempts' processes: takes
// assignments and cancels from the poll thread, launches each attempt (its markers,
// inputs, user, folders, environment, cgroup, then the sandbox shim or the command
// itself), reaps them, enforces timeouts and kill deadlines, and at shutdown kills
// them all; every ended attempt goes to the report thread.
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <deque>
#include <thread>

#include "common/files.h"
#include "common/mutex.h"
#include "executors/agent/agent_internal.h"

namespace epoch::executors {

using agent_internal::Assignment;
using agent_internal::CheckPath;
using agent_internal::GetString;
using agent_internal::milliseconds;
using agent_internal::NowString;
using agent_internal::ParseAssignment;
using agent_internal::SteadyClock;
using agent_internal::VerifyInputs;

// ---------------------------------------------------------------- main loop

void Agent::Impl::EndWithoutRunning(Assignment a, Why why, std::string reason,
                                    bool failed_to_start) {
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
std::string Agent::Impl::CanonicalFor(const std::string& path) const {
  if (IsBeneath(path, opt.data_dir)) return data_dir_real + path.substr(opt.data_dir.size());
  auto real = CanonicalPath(path);
  return real.ok() ? *real : path;
}

// The attempt's folders and log file, owned by the user its step runs as (who must
// write them), never world-readable, created without following symlinks a step of
// this run may have left in the workspace.
Status Agent::Impl::PrepareFiles(const Assignment& a, const DirOwner& owner, bool set_owner) {
  auto depth = [](const std::string& rel) {
    return static_cast<int>(std::count(rel.begin(), rel.end(), '/'));
  };
  // runs/ and logs/ are the master's (only traversable, as epochd makes them: 0711);
  // runs/<run> and below, logs/<run> and below, the step user's.
  RETURN_IF_ERROR(EnsureDirs(opt.data_dir, a.workspace,
                             depth(a.workspace.substr(opt.data_dir.size())) - 1, 0711, owner, 0700,
                             set_owner));
  RETURN_IF_ERROR(EnsureDirs(a.workspace, a.outputs_dir, 0, 0700, owner, 0700, set_owner));
  std::string log_dir = a.log_path.substr(0, a.log_path.find_last_of('/'));
  RETURN_IF_ERROR(EnsureDirs(opt.data_dir, log_dir, 1, 0711, owner, 0750, set_owner));
  RETURN_IF_ERROR(EnsureFile(a.log_path, owner, 0640, set_owner));
  // Live metrics and checkpoints, inside the workspace: the step's, like its outputs.
  if (!a.checkpoint_dir.empty()) {
    RETURN_IF_ERROR(EnsureDirs(a.workspace, a.checkpoint_dir, 0, 0700, owner, 0700, set_owner));
  }
  if (!a.metrics_path.empty()) {
    std::string metrics_dir = a.metrics_path.substr(0, a.metrics_path.find_last_of('/'));
    RETURN_IF_ERROR(EnsureDirs(a.workspace, metrics_dir, 0, 0700, owner, 0700, set_owner));
    RETURN_IF_ERROR(EnsureFile(a.metrics_path, owner, 0640, set_owner));
  }
  return Status::Ok();
}

// What the step sees besides the host: its workspace (read-write), the assignment's
// mounts, and the upstream outputs it reads that are outside its workspace (a cache
// hit's source run), read-only.
std::vector<sandbox::Bind> Agent::Impl::BindsFor(const Assignment& a) const {
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
void Agent::Impl::Start(const Json& j, bool marker_written) {
  auto parsed = ParseAssignment(j, opt.data_dir, opt.gpu_inventory);
  if (!parsed.ok()) {
    Assignment a;
    a.attempt_id = GetString(j, "attempt_id");
    EndWithoutRunning(std::move(a), Why::kNone, "invalid assignment: " + parsed.status().message(),
                      true);
    return;
  }
  Assignment a = std::move(*parsed);
  // Durable before the process starts: a restarted agent must know it ran.
  if (Status st = marker_written ? Status::Ok() : WriteMarker(a.attempt_id, "started"); !st.ok()) {
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
                        "invalid assignment: mount " + m.path + ": " + std::strerror(errno), true);
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
  if (!a.metrics_path.empty()) env["EPOCH_METRICS"] = a.metrics_path;
  if (!a.checkpoint_dir.empty()) env["EPOCH_CHECKPOINT_DIR"] = a.checkpoint_dir;
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
  if (!a.metrics_path.empty() || !a.checkpoint_dir.empty()) {
    // Before the step starts: checkpoint.json as it is now was an earlier attempt's.
    live_metrics.Watch(a.attempt_id,
                       LiveMetricsSpec{a.workspace, a.metrics_path, a.checkpoint_dir,
                                       milliseconds(a.metrics_interval_ms), a.metrics_max_points,
                                       a.metrics_max_bytes},
                       SteadyClock::now());
    MutexLock lock(&mu);
    report_cv.SignalAll();  // the report thread's next look at the metrics may be sooner
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
    EndWithoutRunning(std::move(a), Why::kNone, "spawn failed: " + child.status().ToString(), true);
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

void Agent::Impl::BeginKill(Running& r, Why why) {
  if (r.why != Why::kNone) return;  // already being killed
  r.why = why;
  if (Status st = r.child->SignalGroup(SIGTERM); !st.ok()) {
    spdlog::warn("{}: {}", r.a.attempt_id, st.ToString());
  }
  r.kill_deadline = SteadyClock::now() + opt.grace;
}

void Agent::Impl::Cancel(const std::string& id) {
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
void Agent::Impl::Tend() {
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

int Agent::Impl::MainLoop() {
  int code = kAgentExitOk;
  while (true) {
    std::deque<Json> starts;
    std::deque<std::string> cancels;
    {
      MutexLock lock(&mu);
      const auto deadline = SteadyClock::now() + opt.tick;
      while (
          !(!inbox.empty() || !cancel_inbox.empty() || release || orphaned || stop_flag->load())) {
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

}  // namespace epoch::executors
