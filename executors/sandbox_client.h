// The agent's side of epoch-sandbox (executors/sandbox/): what isolation this host can
// give steps (probed once at start), the directories an attempt writes (created
// without following symlinks, owned by the step's user), the step's user, and the
// step process itself, started through the shim or, where no shim runs, directly.
//
// Thread-safety: free functions are safe from any thread; a StepProcess is used by one
// thread at a time (the agent's main loop), like the ChildProcess it wraps.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/clock.h"
#include "common/fd.h"
#include "common/status.h"
#include "executors/process.h"
#include "executors/sandbox/sandbox.h"

namespace epoch::executors {

// What the agent's --isolation asked for and what is in force; registered as
// {"mode", "run_as", "sandbox", "reason"}.
struct IsolationState {
  std::string mode = "auto";     // auto | required | off
  bool run_as = false;           // steps switch to their assignment's run_as user
  std::string sandbox = "none";  // "namespaces" | "none"
  std::string reason;            // why not (or what limits it); empty when all is in force
  bool shim = false;             // attempts run through epoch-sandbox (their logs are capped)
};

// How `<shim> --probe` went.
struct ProbeResult {
  bool ran = false;  // the shim could be executed at all
  bool ok = false;   // it built a sandbox (namespaces, a tmpfs, a PID 1 with its /proc)
  std::string line;  // what it printed, or why it could not run
};

// Runs `shim_path --probe` (posix_spawn, stdout captured, killed after timeout).
ProbeResult ProbeSandbox(const std::string& shim_path, Micros timeout = std::chrono::seconds(10));

// What is in force for `mode` given whether the agent is root and how the probe went.
// kInvalidArgument for an unknown mode; kFailedPrecondition, saying why, when mode is
// "required" and steps could not be sandboxed and switched to their users.
Result<IsolationState> DecideIsolation(const std::string& mode, bool is_root,
                                       const ProbeResult& probe);

// A run_as ("user" or "user:group") resolved on this host.
struct StepUser {
  std::string name, home;
  uid_t uid = 0;
  gid_t gid = 0;
  std::vector<gid_t> groups;  // supplementary, the primary included
};
// kInvalidArgument "run_as: no user 'x' on this host" (or group, or a malformed name).
Result<StepUser> ResolveStepUser(const std::string& run_as);

struct DirOwner {
  uid_t uid = 0;
  gid_t gid = 0;
};

// Makes `path` (absolute, normalised, beneath `root`) exist as real directories,
// walking down from root without following any symlink (kFailedPrecondition naming a
// component that is one, or not a directory). The first `top_levels` components below
// root are created (if missing) as the agent's, mode top_mode; the others get `owner`
// and `mode` whether created now or not (fchown/fchmod by fd). chown only when
// `set_owner`. kInvalidArgument if path is not beneath root; kInternal for OS errors.
Status EnsureDirs(const std::string& root, const std::string& path, int top_levels, mode_t top_mode,
                  const DirOwner& owner, mode_t mode, bool set_owner);

// Creates (or opens) the regular file `path`, whose folder exists, without following a
// symlink at its name; then sets owner (when set_owner) and mode.
Status EnsureFile(const std::string& path, const DirOwner& owner, mode_t mode, bool set_owner);

// The canonical path of an existing `path` (realpath), or an error.
Result<std::string> CanonicalPath(const std::string& path);

// SHA-256 (hex) of the regular file at `path`, opened without following a symlink at any
// component: its canonical path must be `expect`. kNotFound / kFailedPrecondition.
Result<std::string> Sha256OfExactFile(const std::string& path, const std::string& expect);

// An attempt's process: the shim (whose report, read when it is reaped, fills ExitInfo's
// log fields and a precise pre-exec reason), or the command itself.
class StepProcess {
 public:
  ~StepProcess();
  StepProcess(const StepProcess&) = delete;
  StepProcess& operator=(const StepProcess&) = delete;

  pid_t pid() const { return child_->pid(); }
  std::chrono::steady_clock::time_point started() const { return child_->started(); }
  // As ChildProcess's.
  Result<std::optional<ExitInfo>> TryWait();
  Result<ExitInfo> Wait();
  Status SignalGroup(int sig) { return child_->SignalGroup(sig); }
  Result<ExitInfo> Terminate(Micros grace);

 private:
  friend Result<std::unique_ptr<StepProcess>> SpawnSandboxed(const std::string&,
                                                             const sandbox::SandboxSpec&,
                                                             const std::string&,
                                                             const std::vector<std::string>&,
                                                             std::optional<int>);
  friend Result<std::unique_ptr<StepProcess>> SpawnDirect(const ProcessSpec&);
  StepProcess() = default;
  ExitInfo Complete(ExitInfo info);

  std::unique_ptr<ChildProcess> child_;
  UniqueFd status_fd_;  // the shim's report (kStatusFd's other end); none: no shim
  std::optional<ExitInfo> done_;
};

// Starts `shim_path` with spec on its fd 3, its stdout+stderr appended to log_path,
// inside the cgroups whose cgroup.procs files are given, with that oom_score_adj
// (ProcessSpec's fields). Errors as Spawn's.
Result<std::unique_ptr<StepProcess>> SpawnSandboxed(const std::string& shim_path,
                                                    const sandbox::SandboxSpec& spec,
                                                    const std::string& log_path,
                                                    const std::vector<std::string>& cgroup_procs = {},
                                                    std::optional<int> oom_score_adj = {});
// Starts the command itself (no shim on this host): Spawn.
Result<std::unique_ptr<StepProcess>> SpawnDirect(const ProcessSpec& spec);

}  // namespace epoch::executors
