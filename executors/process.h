// Process runner: starts one command as a child process in its own process group,
// with stdout and stderr appended to a log file, and collects how it ended (exit
// code or signal) and what it used (wall time, user+system CPU, max RSS).
//
// The agent uses it to run job attempts; it is deliberately free of agent policy.
//
//   - Spawn() forks and execs. The child calls setpgid(0, 0), so its pid is also its
//     process group id, and PR_SET_PDEATHSIG=SIGKILL, so it dies if the *thread* that
//     spawned it dies (Linux ties the death signal to the forking thread: spawn from a
//     thread that lives as long as the children should).
//   - Failures between fork and exec (log file, working dir, exec itself, e.g. command
//     not found) make the child exit 127; ExitInfo::reason then says
//     "exec failed: <strerror>" (or "chdir ...", "open log ..."). Spawn never hangs.
//   - ChildProcess::TryWait() is non-blocking (wait4 with WNOHANG), so one loop can
//     manage many children. After the leader is reaped the rest of its group (the
//     grandchildren it left behind) is SIGKILLed: an attempt owns its whole group.
//
// Ownership: a ChildProcess owns its pid until it is reaped. Destroying one that has
// not been reaped kills its group with SIGKILL and reaps it (no zombies, no strays).
//
// Thread-safety: a ChildProcess is used by one thread at a time. Spawn() is safe to
// call from several threads (it only touches its own file descriptors), but see the
// PDEATHSIG note above.
#pragma once

#include <sys/resource.h>
#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/clock.h"
#include "common/status.h"

namespace epoch::executors {

// Environment variables a child inherits from the spawning process (when set there),
// before ProcessSpec::env is applied on top.
const std::vector<std::string>& InheritedEnvNames();  // PATH, HOME, LANG, ...

// The environment Spawn gives a child: the inherited names, a default PATH, then `env`
// over them; sorted "K=V" strings.
std::vector<std::string> ChildEnvironment(const std::map<std::string, std::string>& env);

struct ProcessSpec {
  std::vector<std::string> argv;           // argv[0] is looked up on the child's PATH
  std::map<std::string, std::string> env;  // added to (and overriding) the inherited env
  std::string working_dir;                 // empty: the caller's working dir
  std::string log_path;                    // stdout+stderr, appended; parent dirs created;
                                           // empty: /dev/null
  // Open fds the child gets as 3, 4, ... in this order (the caller keeps and closes its
  // own copies); every other fd of the spawner is closed in the child.
  std::vector<int> pass_fds;
  // cgroup.procs files (executors/cgroup.h) the child joins, by writing "0" to each,
  // after fork and before exec: the command starts already inside its limits. A
  // failed write fails the spawn like a failed exec ("joining cgroup ...").
  std::vector<std::string> cgroup_procs;
  // Written to the child's /proc/self/oom_score_adj before exec (the agent shields
  // itself from the OOM killer; its steps must not inherit that).
  std::optional<int> oom_score_adj;
};

struct ExitInfo {
  std::optional<int> exit_code;  // set when the child exited
  std::optional<int> signal;     // set when a signal killed it
  std::string reason;            // "exit code N", "killed by signal N", "exec failed: ..."
  double wall_s = 0;             // spawn to reap
  double cpu_s = 0;              // user + system, the child and its reaped descendants
  int64_t max_rss_kb = 0;
  // Set when the command ran through epoch-sandbox (executors/sandbox_client.h), which
  // pumps its output into the log with a cap, and reported.
  bool log_reported = false;
  int64_t log_bytes = 0;          // output written to the log
  int64_t log_dropped_bytes = 0;  // output discarded past the cap
  bool log_truncated = false;
};

class ChildProcess {
 public:
  ~ChildProcess();
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  pid_t pid() const { return pid_; }
  pid_t pgid() const { return pid_; }  // the child leads its own group
  std::chrono::steady_clock::time_point started() const { return started_; }
  bool reaped() const { return exit_.has_value(); }

  // Non-blocking: the exit info once the child has exited (and from then on), else
  // nullopt. kInternal if wait4 fails for a reason other than EINTR.
  Result<std::optional<ExitInfo>> TryWait();
  // Blocks until the child exits.
  Result<ExitInfo> Wait();
  // Sends sig to the whole group (ESRCH is not an error).
  Status SignalGroup(int sig);
  // SIGTERM to the group, waits up to grace for the leader to exit, then SIGKILL to the
  // group; returns how the leader ended. Blocks for at most about grace.
  Result<ExitInfo> Terminate(Micros grace);

 private:
  friend Result<std::unique_ptr<ChildProcess>> Spawn(const ProcessSpec& spec);
  ChildProcess() = default;
  ExitInfo Finish(int status, const ::rusage& usage);

  pid_t pid_ = -1;
  std::chrono::steady_clock::time_point started_;
  std::string pre_exec_error_;  // set when the child failed before exec
  std::optional<ExitInfo> exit_;
};

// Starts spec as a child process. kInvalidArgument for an empty argv; kInternal when
// fork/pipe fail. A command that cannot be executed is *not* an error here: the child
// exits 127 and TryWait/Wait report why.
Result<std::unique_ptr<ChildProcess>> Spawn(const ProcessSpec& spec);

// True while any process is in group pgid (zombies included).
bool GroupExists(pid_t pgid);

// SIGTERM to every process in group pgid, then SIGKILL after grace unless the group is
// gone before. For groups that are not the caller's unreaped child (an unreaped leader
// is a zombie that keeps the group "alive": this then waits the full grace). For your
// own children use ChildProcess::Terminate, which reaps as it waits. Blocks up to grace.
// A group that does not exist is OK; kInternal for other kill(2) errors.
Status KillGroup(pid_t pgid, Micros grace);

// "killed by signal 9" / "exit code 3" from a wait status.
std::string DescribeExit(const ExitInfo& e);

}  // namespace epoch::executors
