#include "executors/process.h"

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "common/fd.h"
#include "common/files.h"

// ThreadSanitizer cannot follow a child that runs instrumented code on the parent's
// memory (its interceptors update the parent thread's state, and it then reports races
// that are not there): under it, Spawn forks, as it did before the clone.
#if defined(__SANITIZE_THREAD__)
#define EPOCH_SPAWN_WITH_FORK 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define EPOCH_SPAWN_WITH_FORK 1
#endif
#endif
#ifndef EPOCH_SPAWN_WITH_FORK
#define EPOCH_SPAWN_WITH_FORK 0
#endif

namespace epoch::executors {

namespace {

// What the child writes to the error pipe when it fails before exec.
enum class Stage : int { kChdir = 1, kExec = 2, kDeathSignal = 3, kCgroup = 4, kOomScore = 5 };
struct PreExecError {
  int stage;
  int err;
  int index;  // kCgroup: which of spec.cgroup_procs
};

std::string DirOf(const std::string& path) {
  auto pos = path.find_last_of('/');
  if (pos == std::string::npos) return "";
  if (pos == 0) return "/";
  return path.substr(0, pos);
}

Status Errno(const std::string& what) { return Internal(what + ": " + std::strerror(errno)); }

// What the child needs, all prepared by the parent before the clone: the child shares
// the parent's memory (CLONE_VM) until it execs, so it allocates nothing and writes
// only its own stack, `sh_argv`'s slot 1 and errno.
struct ChildArgs {
  char* const* argv;
  char** envp;
  // Where execvp would look for argv[0], in its order: argv[0] itself when it names a
  // path, else each directory of the child's own PATH joined with it.
  const std::vector<std::string>* candidates;
  char** sh_argv;  // {"/bin/sh", <candidate>, argv[1..], null}: execvp's ENOEXEC fallback
  const char* working_dir;
  int devnull_fd, log_fd, err_fd;
  pid_t parent;
  const int* pass_fds;
  size_t n_pass;
  const int* cgroup_fds;
  size_t n_cgroup;
  const char* oom_score_adj;
};

// Runs in the child between clone and exec: async-signal-safe calls only. It starts
// with every signal blocked (the parent blocked them around the clone), so no handler
// of the parent's runs on the shared memory before the handlers are reset here.
[[noreturn]] void ChildMain(const ChildArgs& c) {
  auto fail = [&c](Stage stage, int index = 0) {
    PreExecError e{static_cast<int>(stage), errno, index};
    (void)WriteFully(c.err_fd, &e, sizeof(e));
    _exit(127);
  };
  // Ignored signals and the blocked mask survive exec; give the command a clean slate.
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  for (int sig = 1; sig < NSIG; ++sig) {
    if (sig == SIGKILL || sig == SIGSTOP) continue;
    sigaction(sig, &dfl, nullptr);
  }
  sigset_t empty;
  sigemptyset(&empty);
  sigprocmask(SIG_SETMASK, &empty, nullptr);
  // Into the attempt's cgroups first: everything from here on is charged there.
  for (size_t i = 0; i < c.n_cgroup; ++i) {
    if (write(c.cgroup_fds[i], "0", 1) != 1) fail(Stage::kCgroup, static_cast<int>(i));
  }
  if (c.oom_score_adj != nullptr) {
    int fd = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
    size_t len = strlen(c.oom_score_adj);
    if (fd < 0 || write(fd, c.oom_score_adj, len) != static_cast<ssize_t>(len)) {
      fail(Stage::kOomScore);
    }
    close(fd);
  }
  setpgid(0, 0);
  if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) fail(Stage::kDeathSignal);
  if (getppid() != c.parent) _exit(127);  // the spawner died before the prctl
  if (c.working_dir != nullptr && chdir(c.working_dir) != 0) fail(Stage::kChdir);
  dup2(c.devnull_fd, 0);
  dup2(c.log_fd, 1);
  dup2(c.log_fd, 2);
  // The parent placed every fd used here above 3 + n_pass, so these cannot clobber one
  // another (dup2 also clears CLOEXEC on the copies).
  for (size_t i = 0; i < c.n_pass; ++i) dup2(c.pass_fds[i], static_cast<int>(3 + i));
  // Everything else (sockets of the spawner, other children's pipes) stays behind.
  // err_fd is >= 3 + n_pass and CLOEXEC, so close around it.
  unsigned first = static_cast<unsigned>(3 + c.n_pass);
  if (c.err_fd > static_cast<int>(first))
    close_range(first, static_cast<unsigned>(c.err_fd - 1), 0);
  close_range(static_cast<unsigned>(c.err_fd + 1), ~0U, 0);
  // execvp's search, on the child's own PATH (the parent's environ is not touched): the
  // first candidate that execs; a file without a #! line runs under /bin/sh; EACCES
  // from any candidate is the error when none execs.
  bool denied = false;
  for (const auto& path : *c.candidates) {
    execve(path.c_str(), c.argv, c.envp);
    if (errno == ENOEXEC) {
      c.sh_argv[1] = const_cast<char*>(path.c_str());
      execve(c.sh_argv[0], c.sh_argv, c.envp);
      errno = ENOEXEC;
    }
    if (errno == EACCES) {
      denied = true;
    } else if (errno != ENOENT && errno != ENOTDIR && errno != ESTALE && errno != ENODEV &&
               errno != ETIMEDOUT) {
      break;
    }
  }
  if (denied) errno = EACCES;
  fail(Stage::kExec);
  _exit(127);
}

#if !EPOCH_SPAWN_WITH_FORK
int ChildEntry(void* args) { ChildMain(*static_cast<const ChildArgs*>(args)); }
#endif

// The candidates ChildMain tries for `file` with the child's PATH (`path`, or execvp's
// default when there is none), as execvp would.
std::vector<std::string> ExecCandidates(const std::string& file, const char* path) {
  if (file.find('/') != std::string::npos) return {file};
  std::string dirs = path != nullptr ? path : "/bin:/usr/bin";
  std::vector<std::string> out;
  size_t start = 0;
  while (true) {
    size_t colon = dirs.find(':', start);
    std::string dir =
        dirs.substr(start, colon == std::string::npos ? std::string::npos : colon - start);
    out.push_back(dir.empty() ? file : dir + "/" + file);  // empty: the working directory
    if (colon == std::string::npos) break;
    start = colon + 1;
  }
  return out;
}

std::string PreExecMessage(const PreExecError& e, const ProcessSpec& spec) {
  switch (static_cast<Stage>(e.stage)) {
    case Stage::kChdir:
      return "chdir " + spec.working_dir + " failed: " + std::strerror(e.err);
    case Stage::kDeathSignal:
      return std::string("prctl(PR_SET_PDEATHSIG) failed: ") + std::strerror(e.err);
    case Stage::kCgroup: {
      size_t i = static_cast<size_t>(e.index);
      return "joining cgroup " + (i < spec.cgroup_procs.size() ? spec.cgroup_procs[i] : "?") +
             " failed: " + std::strerror(e.err);
    }
    case Stage::kOomScore:
      return std::string("setting oom_score_adj failed: ") + std::strerror(e.err);
    case Stage::kExec:
      break;
  }
  return std::string("exec failed: ") + std::strerror(e.err);
}

}  // namespace

const std::vector<std::string>& InheritedEnvNames() {
  static const std::vector<std::string> kNames = {"PATH", "HOME",   "LANG", "LC_ALL",
                                                  "TZ",   "TMPDIR", "USER", "LD_LIBRARY_PATH"};
  return kNames;
}

std::vector<std::string> ChildEnvironment(const std::map<std::string, std::string>& extra) {
  std::map<std::string, std::string> env;
  for (const auto& name : InheritedEnvNames()) {
    if (const char* v = std::getenv(name.c_str())) env[name] = v;
  }
  if (!env.count("PATH")) env["PATH"] = "/usr/local/bin:/usr/bin:/bin";
  for (const auto& [k, v] : extra) env[k] = v;
  std::vector<std::string> out;
  out.reserve(env.size());
  for (const auto& [k, v] : env) out.push_back(k + "=" + v);
  return out;
}

std::string DescribeExit(const ExitInfo& e) {
  if (e.signal) return "killed by signal " + std::to_string(*e.signal);
  if (e.exit_code) return "exit code " + std::to_string(*e.exit_code);
  return "unknown";
}

Result<std::unique_ptr<ChildProcess>> Spawn(const ProcessSpec& spec) {
  if (spec.argv.empty() || spec.argv[0].empty()) return InvalidArgument("empty argv");

  // Everything the child needs is prepared before fork: no allocation after it.
  std::vector<std::string> env_strings = ChildEnvironment(spec.env);
  std::vector<char*> envp;
  for (auto& s : env_strings) envp.push_back(s.data());
  envp.push_back(nullptr);
  std::vector<std::string> argv_copy = spec.argv;
  std::vector<char*> argv;
  for (auto& s : argv_copy) argv.push_back(s.data());
  argv.push_back(nullptr);
  const char* child_path = nullptr;
  for (const auto& e : env_strings) {
    if (e.rfind("PATH=", 0) == 0) child_path = e.c_str() + 5;
  }
  std::vector<std::string> candidates = ExecCandidates(spec.argv[0], child_path);
  std::string shell = "/bin/sh";
  std::vector<char*> sh_argv{shell.data(), nullptr};
  for (size_t i = 1; i < argv_copy.size(); ++i) sh_argv.push_back(argv_copy[i].data());
  sh_argv.push_back(nullptr);

  // Every fd the child uses sits at or above `floor`, so its dup2s onto 0..2 and onto
  // 3.. (pass_fds) cannot clobber one another. Each is a CLOEXEC copy owned here.
  const int floor = 3 + static_cast<int>(spec.pass_fds.size());
  std::vector<UniqueFd> owned;     // closed on every return
  auto own = [&](int fd) -> int {  // takes fd, returns its copy at or above floor
    if (fd < 0) return -1;
    UniqueFd taken(fd);
    int copy = fcntl(fd, F_DUPFD_CLOEXEC, floor);
    int err = errno;
    taken.reset();
    errno = err;
    if (copy >= 0) owned.emplace_back(copy);
    return copy;
  };
  int log_fd = -1;
  if (spec.log_path.empty()) {
    log_fd = own(open("/dev/null", O_WRONLY | O_CLOEXEC));
  } else {
    std::string dir = DirOf(spec.log_path);
    if (!dir.empty()) RETURN_IF_ERROR(MakeDirs(dir));
    log_fd = own(
        open(spec.log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_NOFOLLOW | O_CLOEXEC, 0644));
  }
  if (log_fd < 0) return Errno("open log " + spec.log_path);
  int devnull_fd = own(open("/dev/null", O_RDONLY | O_CLOEXEC));
  if (devnull_fd < 0) return Errno("open /dev/null");
  std::vector<int> pass;
  for (int fd : spec.pass_fds) {
    int copy = fcntl(fd, F_DUPFD_CLOEXEC, floor);
    if (copy < 0) return Errno("fcntl F_DUPFD of fd " + std::to_string(fd));
    owned.emplace_back(copy);
    pass.push_back(copy);
  }
  std::vector<int> cgroup_fds;
  for (const auto& path : spec.cgroup_procs) {
    int fd = own(open(path.c_str(), O_WRONLY | O_CLOEXEC));
    if (fd < 0) return Errno("open " + path);
    cgroup_fds.push_back(fd);
  }
  int pipe_fds[2];
  if (pipe2(pipe_fds, O_CLOEXEC) != 0) return Errno("pipe2");
  int err_read = pipe_fds[0];
  owned.emplace_back(err_read);
  int err_fd = own(pipe_fds[1]);
  if (err_fd < 0) return Errno("fcntl");

  const char* wd = spec.working_dir.empty() ? nullptr : spec.working_dir.c_str();
  std::string oom_score = spec.oom_score_adj ? std::to_string(*spec.oom_score_adj) : "";
  ChildArgs args{argv.data(),
                 envp.data(),
                 &candidates,
                 sh_argv.data(),
                 wd,
                 devnull_fd,
                 log_fd,
                 err_fd,
                 getpid(),
                 pass.data(),
                 pass.size(),
                 cgroup_fds.data(),
                 cgroup_fds.size(),
                 spec.oom_score_adj ? oom_score.c_str() : nullptr};
  // The child shares this memory and this thread waits until it has exec'd (or died),
  // as posix_spawn does: no copy of the spawner's page tables per attempt (fork copied
  // them, then exec threw them away; for the agent that was most of a spawn's CPU). It
  // runs on a stack of its own, with every signal blocked until it has reset them.
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  auto started = std::chrono::steady_clock::now();
#if EPOCH_SPAWN_WITH_FORK
  pid_t pid = fork();
  if (pid == 0) ChildMain(args);
#else
  constexpr size_t kChildStack = 64 << 10;
  std::unique_ptr<char[]> stack(new char[kChildStack]);
  char* stack_top = stack.get() + kChildStack;
  stack_top -= reinterpret_cast<uintptr_t>(stack_top) % 16;
  pid_t pid = clone(ChildEntry, stack_top, CLONE_VM | CLONE_VFORK | SIGCHLD, &args);
#endif
  int fork_errno = errno;
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  // The write end must close here, or the read below never sees EOF.
  std::erase_if(owned, [&](const UniqueFd& fd) { return fd.get() == err_fd; });
  if (pid < 0) {
    errno = fork_errno;
    return Errno("clone");
  }
  // Also set the group from the parent, so a kill(-pid) right after Spawn returns
  // cannot miss the child (the classic setpgid race). EACCES after exec is fine.
  setpgid(pid, pid);

  auto child = std::unique_ptr<ChildProcess>(new ChildProcess());
  child->pid_ = pid;
  child->started_ = started;

  // EOF means exec succeeded (CLOEXEC); a record means the child failed before it.
  PreExecError e{};
  size_t got = 0;
  while (got < sizeof(e)) {
    ssize_t n = read(err_read, reinterpret_cast<char*>(&e) + got, sizeof(e) - got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    got += static_cast<size_t>(n);
  }
  if (got == sizeof(e)) {
    child->pre_exec_error_ = PreExecMessage(e, spec);
    std::string line = "epoch: " + spec.argv[0] + ": " + child->pre_exec_error_ + "\n";
    (void)WriteFully(log_fd, line.data(), line.size());
  }
  return child;
}

ChildProcess::~ChildProcess() {
  if (pid_ > 0 && !exit_) {
    kill(-pid_, SIGKILL);
    kill(pid_, SIGKILL);
    int status;
    while (waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
  }
}

ExitInfo ChildProcess::Finish(int status, const ::rusage& usage) {
  ExitInfo info;
  if (WIFEXITED(status)) {
    info.exit_code = WEXITSTATUS(status);
  } else if (WIFSIGNALED(status)) {
    info.signal = WTERMSIG(status);
  }
  if (!pre_exec_error_.empty() && info.exit_code == 127) {
    info.reason = pre_exec_error_;
  } else {
    info.reason = DescribeExit(info);
  }
  info.wall_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count();
  info.cpu_s = static_cast<double>(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) +
               static_cast<double>(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6;
  info.max_rss_kb = usage.ru_maxrss;  // KiB on Linux
  // The attempt owns its whole group: whatever the leader left running dies with it.
  // The group id cannot have been reused while members remain, so this is safe.
  kill(-pid_, SIGKILL);
  return info;
}

Result<std::optional<ExitInfo>> ChildProcess::TryWait() {
  if (exit_) return exit_;
  while (true) {
    int status = 0;
    struct rusage usage {};
    pid_t r = wait4(pid_, &status, WNOHANG, &usage);
    if (r == 0) return std::optional<ExitInfo>();
    if (r < 0) {
      if (errno == EINTR) continue;
      return Errno("wait4 " + std::to_string(pid_));
    }
    exit_ = Finish(status, usage);
    return exit_;
  }
}

Result<ExitInfo> ChildProcess::Wait() {
  if (exit_) return *exit_;
  while (true) {
    int status = 0;
    struct rusage usage {};
    pid_t r = wait4(pid_, &status, 0, &usage);
    if (r < 0) {
      if (errno == EINTR) continue;
      return Errno("wait4 " + std::to_string(pid_));
    }
    exit_ = Finish(status, usage);
    return *exit_;
  }
}

Status ChildProcess::SignalGroup(int sig) {
  if (exit_) return Status::Ok();  // reaped: the group was already SIGKILLed
  if (kill(-pid_, sig) != 0 && errno != ESRCH) {
    return Errno("kill -" + std::to_string(sig) + " group " + std::to_string(pid_));
  }
  return Status::Ok();
}

Result<ExitInfo> ChildProcess::Terminate(Micros grace) {
  if (exit_) return *exit_;
  RETURN_IF_ERROR(SignalGroup(SIGTERM));
  auto deadline = std::chrono::steady_clock::now() + grace;
  while (std::chrono::steady_clock::now() < deadline) {
    ASSIGN_OR_RETURN(auto done, TryWait());
    if (done) return *done;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  RETURN_IF_ERROR(SignalGroup(SIGKILL));
  return Wait();
}

bool GroupExists(pid_t pgid) { return kill(-pgid, 0) == 0 || errno == EPERM; }

Status KillGroup(pid_t pgid, Micros grace) {
  if (pgid <= 1) return InvalidArgument("refusing to signal group " + std::to_string(pgid));
  if (kill(-pgid, SIGTERM) != 0) {
    if (errno == ESRCH) return Status::Ok();
    return Errno("kill -TERM group " + std::to_string(pgid));
  }
  auto deadline = std::chrono::steady_clock::now() + grace;
  while (std::chrono::steady_clock::now() < deadline) {
    if (!GroupExists(pgid)) return Status::Ok();
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  if (kill(-pgid, SIGKILL) != 0 && errno != ESRCH) {
    return Errno("kill -KILL group " + std::to_string(pgid));
  }
  return Status::Ok();
}

}  // namespace epoch::executors
