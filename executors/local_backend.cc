#include "executors/local_backend.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <map>
#include <thread>
#include <vector>

#include "common/fd.h"
#include "common/files.h"
#include "common/units.h"

namespace epoch::executors {

namespace {

Status Errno(const std::string& what) { return Internal(what + ": " + std::strerror(errno)); }

Result<pid_t> ParseHandle(const std::string& handle) {
  if (handle.empty() || handle.size() > 9 ||
      handle.find_first_not_of("0123456789") != std::string::npos) {
    return InvalidArgument("local handle '" + handle + "' is not a pid");
  }
  pid_t pid = static_cast<pid_t>(std::stol(handle));
  if (pid <= 1) return InvalidArgument("local handle '" + handle + "' is not a pid");
  return pid;
}

std::string Basename(const std::string& p) {
  auto pos = p.find_last_of('/');
  return pos == std::string::npos ? p : p.substr(pos + 1);
}

// Process state letter from /proc/<pid>/stat ('R', 'S', 'Z', ...), or 0 if gone.
char ProcState(pid_t pid) {
  auto stat = ReadFile("/proc/" + std::to_string(pid) + "/stat", 4096);
  if (!stat.ok()) return 0;
  // "pid (comm) S ...": comm may hold spaces and parentheses; the last ')' ends it.
  auto close = stat->rfind(')');
  if (close == std::string::npos || close + 2 >= stat->size()) return 0;
  return (*stat)[close + 2];
}

}  // namespace

bool IsAgentProcess(pid_t pid, const std::string& container_id) {
  char state = ProcState(pid);
  if (state == 0 || state == 'Z' || state == 'X' || state == 'x') return false;
  auto cmdline = ReadFile("/proc/" + std::to_string(pid) + "/cmdline", 1 << 20);
  if (!cmdline.ok() || cmdline->empty()) return false;
  std::vector<std::string> args;
  size_t start = 0;
  while (start < cmdline->size()) {
    size_t end = cmdline->find('\0', start);
    if (end == std::string::npos) end = cmdline->size();
    args.push_back(cmdline->substr(start, end - start));
    start = end + 1;
  }
  if (args.empty() || Basename(args[0]).find("epoch-agent") == std::string::npos) return false;
  for (size_t i = 1; i < args.size(); ++i) {
    if (args[i] == "--id=" + container_id) return true;
    if (args[i] == "--id" && i + 1 < args.size() && args[i + 1] == container_id) return true;
  }
  return false;
}

LocalBackend::LocalBackend(std::string agent_path, LocalBackendOptions options)
    : agent_path_(std::move(agent_path)), options_(std::move(options)) {}

Result<std::string> LocalBackend::Launch(const engine::ContainerSpec& spec) {
  RETURN_IF_ERROR(CheckContainerSpec(spec));
  std::string dir = spec.data_dir + "/containers/" + spec.id;
  RETURN_IF_ERROR(PrepareContainerDir(spec));

  // Everything is prepared before fork: the master is multi-threaded.
  std::vector<std::string> args = AgentCommandLine(agent_path_, spec, "local", options_);
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::vector<std::string> env_strings = EnvironmentWith(spec.env);
  std::vector<char*> envp;
  for (auto& s : env_strings) envp.push_back(s.data());
  envp.push_back(nullptr);

  std::string log_path = dir + "/agent.log";
  UniqueFd log(open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644));
  if (!log) return Errno("open " + log_path);
  UniqueFd null(open("/dev/null", O_RDONLY | O_CLOEXEC));
  int fds[2];
  if (!null || pipe2(fds, O_CLOEXEC) != 0) return Errno("pipe2");
  UniqueFd read_end(fds[0]);
  UniqueFd pipe_write(fds[1]);
  UniqueFd write_end(fcntl(pipe_write.get(), F_DUPFD_CLOEXEC, 3));  // keep it off 0..2
  pipe_write.reset();
  if (!write_end) return Errno("fcntl");
  // The child uses these numbers; it execs or _exits, so no destructor runs there.
  const int wfd = write_end.get(), null_fd = null.get(), log_fd = log.get();

  pid_t mid = fork();
  if (mid == 0) {
    // Intermediate child: new session, fork the agent, exit so init adopts it.
    // Only async-signal-safe calls from here on.
    setsid();
    pid_t agent = fork();
    if (agent != 0) _exit(agent < 0 ? 1 : 0);
    sigset_t empty;
    sigemptyset(&empty);
    sigprocmask(SIG_SETMASK, &empty, nullptr);
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    for (int sig = 1; sig < NSIG; ++sig) {
      if (sig != SIGKILL && sig != SIGSTOP) sigaction(sig, &dfl, nullptr);
    }
    pid_t self = getpid();
    (void)WriteFully(wfd, &self, sizeof(self));
    dup2(null_fd, 0);
    dup2(log_fd, 1);
    dup2(log_fd, 2);
    if (wfd > 3) close_range(3, static_cast<unsigned>(wfd - 1), 0);
    close_range(static_cast<unsigned>(wfd + 1), ~0U, 0);
    execve(argv[0], argv.data(), envp.data());
    int err = errno;
    (void)WriteFully(wfd, &err, sizeof(err));
    _exit(127);
  }
  int fork_errno = errno;
  write_end.reset();
  log.reset();
  null.reset();
  if (mid < 0) {
    errno = fork_errno;
    return Errno("fork");
  }
  int status;
  while (waitpid(mid, &status, 0) < 0 && errno == EINTR) {
  }
  // The pipe holds the agent's pid, then an errno if exec failed; EOF on exec.
  int buf[2] = {0, 0};
  size_t got = 0;
  while (got < sizeof(buf)) {
    ssize_t n = read(read_end.get(), reinterpret_cast<char*>(buf) + got, sizeof(buf) - got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    got += static_cast<size_t>(n);
  }
  read_end.reset();
  if (got < sizeof(pid_t)) {
    return Internal("starting epoch-agent for " + spec.id + " failed (fork in child)");
  }
  pid_t pid = buf[0];
  if (got == sizeof(buf)) {
    return Internal("exec " + agent_path_ + " failed: " + std::strerror(buf[1]));
  }
  return std::to_string(pid);
}

Status LocalBackend::Terminate(const std::string& container_id, const std::string& handle) {
  ASSIGN_OR_RETURN(pid_t pid, ParseHandle(handle));
  if (!IsAgentProcess(pid, container_id)) return Status::Ok();
  if (kill(pid, SIGTERM) != 0) {
    if (errno == ESRCH) return Status::Ok();
    return Errno("kill -TERM " + handle);
  }
  // Identity was checked above; from here on wait for the process itself to end
  // (an exiting process loses its cmdline before it becomes a zombie).
  auto exited = [pid] {
    char st = ProcState(pid);
    return st == 0 || st == 'Z' || st == 'X';
  };
  auto deadline = std::chrono::steady_clock::now() + options_.terminate_wait;
  while (std::chrono::steady_clock::now() < deadline) {
    if (exited()) return Status::Ok();
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  if (!exited() && kill(pid, SIGKILL) != 0 && errno != ESRCH) {
    return Errno("kill -KILL " + handle);
  }
  deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (!exited() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return Status::Ok();
}

Result<engine::ContainerDescription> LocalBackend::Describe(const std::string& container_id,
                                                            const std::string& handle) {
  ASSIGN_OR_RETURN(pid_t pid, ParseHandle(handle));
  engine::ContainerDescription d;
  if (IsAgentProcess(pid, container_id)) {
    d.state = engine::ContainerDescription::State::kRunning;
    d.detail = "pid " + handle + " running";
  } else {
    d.state = engine::ContainerDescription::State::kGone;
    d.detail = "pid " + handle + " is gone";
  }
  return d;
}

}  // namespace epoch::executors
