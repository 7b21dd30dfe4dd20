#include "executors/sandbox_client.h"

#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>

#include "common/fd.h"
#include "common/files.h"
#include "common/sha256.h"

extern char** environ;

namespace epoch::executors {

namespace {

Status Errno(const std::string& what) { return Internal(what + ": " + std::strerror(errno)); }

bool ValidName(const std::string& s) {
  if (s.empty() || s.size() > 64 || s[0] == '-') return false;
  for (unsigned char c : s) {
    if (!std::isalnum(c) && c != '_' && c != '-' && c != '.' && c != '$') return false;
  }
  return true;
}

std::vector<std::string> Components(const std::string& rel) {
  std::vector<std::string> out;
  size_t i = 0;
  while (i < rel.size()) {
    size_t j = rel.find('/', i);
    if (j == std::string::npos) j = rel.size();
    if (j > i) out.push_back(rel.substr(i, j - i));
    i = j + 1;
  }
  return out;
}

}  // namespace

// ---------------------------------------------------------------- probe and policy

ProbeResult ProbeSandbox(const std::string& shim_path, Micros timeout) {
  ProbeResult out;
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) {
    out.line = std::string("pipe2: ") + std::strerror(errno);
    return out;
  }
  UniqueFd read_end(fds[0]), write_end(fds[1]);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&fa, write_end.get(), 1);
  posix_spawn_file_actions_adddup2(&fa, write_end.get(), 2);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t empty;
  sigemptyset(&empty);
  posix_spawnattr_setsigmask(&attr, &empty);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK);
  std::string path = shim_path;
  std::string flag = "--probe";
  char* argv[] = {path.data(), flag.data(), nullptr};
  char* envp[] = {nullptr};
  pid_t pid = -1;
  int rc = posix_spawn(&pid, path.c_str(), &fa, &attr, argv, envp);
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&attr);
  write_end.reset();
  if (rc != 0) {
    out.line = "cannot run " + shim_path + ": " + std::strerror(rc);
    return out;
  }
  out.ran = true;
  auto deadline = std::chrono::steady_clock::now() + timeout;
  std::string text;
  char buf[1024];
  bool timed_out = false;
  while (true) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      timed_out = true;
      kill(pid, SIGKILL);
      break;
    }
    pollfd p{read_end.get(), POLLIN, 0};
    int n = poll(&p, 1, static_cast<int>(left.count()));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) continue;
    ssize_t got = read(read_end.get(), buf, sizeof(buf));
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) break;
    if (text.size() < 4096) text.append(buf, static_cast<size_t>(got));
  }
  read_end.reset();
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) text.pop_back();
  if (auto nl = text.rfind('\n'); nl != std::string::npos) text = text.substr(nl + 1);
  out.ok = !timed_out && WIFEXITED(status) && WEXITSTATUS(status) == 0 && text == sandbox::kProbeOk;
  if (timed_out) {
    out.line = shim_path + " --probe did not answer";
  } else if (WIFEXITED(status) && WEXITSTATUS(status) == 127 && text.empty()) {
    out.ran = false;
    out.line = "cannot run " + shim_path;
  } else {
    out.line = text.empty()
                   ? shim_path + " --probe: " +
                         std::string(WIFSIGNALED(status) ? "killed by a signal" : "no answer")
                   : text;
  }
  return out;
}

Result<IsolationState> DecideIsolation(const std::string& mode, bool is_root,
                                       const ProbeResult& probe) {
  if (mode != "auto" && mode != "required" && mode != "off") {
    return InvalidArgument("--isolation must be auto, required or off, not '" + mode + "'");
  }
  IsolationState s;
  s.mode = mode;
  s.shim = probe.ran;
  if (mode == "off") {
    s.reason =
        probe.ran ? "isolation off" : "isolation off; " + probe.line + ": step logs are not capped";
    return s;
  }
  if (is_root && probe.ok) {
    s.run_as = true;
    s.sandbox = "namespaces";
    return s;
  }
  if (!probe.ran) {
    s.reason = probe.line + ": steps run as the agent's user, unsandboxed, logs not capped";
  } else if (!is_root) {
    s.reason = "the agent is not root: steps run as its user, without namespaces";
  } else {
    s.reason = "no sandbox here: " + probe.line;
  }
  if (mode == "required") {
    return FailedPrecondition("--isolation required, but " + s.reason);
  }
  return s;
}

// ---------------------------------------------------------------- users and dirs

Result<StepUser> ResolveStepUser(const std::string& run_as) {
  std::string user = run_as, group;
  if (auto colon = run_as.find(':'); colon != std::string::npos) {
    user = run_as.substr(0, colon);
    group = run_as.substr(colon + 1);
    if (!ValidName(group)) return InvalidArgument("run_as: '" + group + "' is not a group name");
  }
  if (!ValidName(user)) return InvalidArgument("run_as: '" + user + "' is not a user name");
  std::vector<char> buf(16384);
  struct passwd pw {};
  struct passwd* found = nullptr;
  int rc = getpwnam_r(user.c_str(), &pw, buf.data(), buf.size(), &found);
  if (rc != 0 || found == nullptr) {
    return InvalidArgument("run_as: no user '" + user + "' on this host");
  }
  StepUser u;
  u.name = pw.pw_name;
  u.home = pw.pw_dir != nullptr ? pw.pw_dir : "/";
  u.uid = pw.pw_uid;
  u.gid = pw.pw_gid;
  if (u.uid == 0) return InvalidArgument("run_as: '" + user + "' is root");
  if (!group.empty()) {
    std::vector<char> gbuf(16384);
    struct group gr {};
    struct group* gfound = nullptr;
    rc = getgrnam_r(group.c_str(), &gr, gbuf.data(), gbuf.size(), &gfound);
    if (rc != 0 || gfound == nullptr) {
      return InvalidArgument("run_as: no group '" + group + "' on this host");
    }
    u.gid = gr.gr_gid;
  }
  int n = 64;
  std::vector<gid_t> groups(static_cast<size_t>(n));
  while (getgrouplist(u.name.c_str(), u.gid, groups.data(), &n) < 0) {
    if (n <= static_cast<int>(groups.size())) n = static_cast<int>(groups.size()) * 2;
    if (n > 65536) return Internal("run_as: too many groups for " + u.name);
    groups.resize(static_cast<size_t>(n));
  }
  groups.resize(static_cast<size_t>(n));
  u.groups = std::move(groups);
  return u;
}

Status EnsureDirs(const std::string& root, const std::string& path, int top_levels, mode_t top_mode,
                  const DirOwner& owner, mode_t mode, bool set_owner) {
  if (!IsBeneath(path, root)) return InvalidArgument(path + " is not beneath " + root);
  UniqueFd dir(open(root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (dir.get() < 0) return Errno("open " + root);
  std::string at = root;
  int level = 0;
  for (const auto& name : Components(path.substr(root.size()))) {
    at += "/" + name;
    bool top = level++ < top_levels;
    mode_t want = top ? top_mode : mode;
    bool created = false;
    if (mkdirat(dir.get(), name.c_str(), want) == 0) {
      created = true;
    } else if (errno != EEXIST) {
      return Errno("mkdir " + at);
    }
    UniqueFd next(openat(dir.get(), name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (next.get() < 0) {
      if (errno == ELOOP || errno == ENOTDIR) {
        return FailedPrecondition(at + " is a symbolic link or not a directory");
      }
      return Errno("open " + at);
    }
    if (!top || created) {
      // fchmod too when created: mkdirat's mode went through the umask.
      if (!top && set_owner && fchown(next.get(), owner.uid, owner.gid) != 0) {
        return Errno("chown " + at);
      }
      if (fchmod(next.get(), want) != 0) return Errno("chmod " + at);
    }
    dir = std::move(next);
  }
  return Status::Ok();
}

Status EnsureFile(const std::string& path, const DirOwner& owner, mode_t mode, bool set_owner) {
  UniqueFd fd(open(path.c_str(),
                   O_WRONLY | O_CREAT | O_APPEND | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, mode));
  if (fd.get() < 0) {
    if (errno == ELOOP) return FailedPrecondition(path + " is a symbolic link");
    return Errno("open " + path);
  }
  struct stat st {};
  if (fstat(fd.get(), &st) != 0) return Errno("stat " + path);
  if (!S_ISREG(st.st_mode)) return FailedPrecondition(path + " is not a regular file");
  if (set_owner && fchown(fd.get(), owner.uid, owner.gid) != 0) return Errno("chown " + path);
  if (fchmod(fd.get(), mode) != 0) return Errno("chmod " + path);
  return Status::Ok();
}

Result<std::string> CanonicalPath(const std::string& path) {
  char buf[PATH_MAX];
  if (realpath(path.c_str(), buf) == nullptr) {
    if (errno == ENOENT || errno == ENOTDIR) return NotFound(path + ": " + std::strerror(errno));
    return Errno("realpath " + path);
  }
  return std::string(buf);
}

Result<std::string> Sha256OfExactFile(const std::string& path, const std::string& expect) {
  UniqueFd fd(open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC));
  if (fd.get() < 0) {
    if (errno == ENOENT || errno == ENOTDIR) return NotFound(std::strerror(errno));
    if (errno == ELOOP) return FailedPrecondition("is a symbolic link");
    return Internal(std::strerror(errno));
  }
  char where[PATH_MAX];
  std::string self = "/proc/self/fd/" + std::to_string(fd.get());
  ssize_t n = readlink(self.c_str(), where, sizeof(where) - 1);
  if (n <= 0 || std::string(where, static_cast<size_t>(n)) != expect) {
    return FailedPrecondition("resolves through a symbolic link");
  }
  struct stat st {};
  if (fstat(fd.get(), &st) != 0) return Internal(std::strerror(errno));
  if (!S_ISREG(st.st_mode)) return FailedPrecondition("is not a regular file");
  Sha256 h;
  char buf[1 << 16];
  while (true) {
    ssize_t got = read(fd.get(), buf, sizeof(buf));
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) return Internal(std::strerror(errno));
    if (got == 0) break;
    h.Update(std::string_view(buf, static_cast<size_t>(got)));
  }
  return ToHex(h.Finish());
}

// ---------------------------------------------------------------- the step process

StepProcess::~StepProcess() = default;

ExitInfo StepProcess::Complete(ExitInfo info) {
  if (!status_fd_) return info;
  // The shim wrote its report before it exited; nothing else holds the pipe's write
  // end, so this never blocks, but do not rely on it.
  fcntl(status_fd_.get(), F_SETFL, O_NONBLOCK);
  std::string bytes;
  char buf[4096];
  while (true) {
    ssize_t n = read(status_fd_.get(), buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    bytes.append(buf, static_cast<size_t>(n));
  }
  status_fd_.reset();
  sandbox::SandboxStatus st;
  if (bytes.empty() || !sandbox::DecodeStatus(bytes, &st)) {
    // Killed before it could say (SIGKILL after the grace), or it never ran.
    if (info.exit_code == 127) info.reason = "epoch-sandbox failed: " + info.reason;
    return info;
  }
  info.log_reported = true;
  info.log_bytes = st.log_bytes;
  info.log_dropped_bytes = st.log_dropped_bytes;
  info.log_truncated = st.log_truncated;
  if (!st.error.empty() && info.exit_code == 127) info.reason = st.error;
  return info;
}

Result<std::optional<ExitInfo>> StepProcess::TryWait() {
  if (done_) return done_;
  ASSIGN_OR_RETURN(auto r, child_->TryWait());
  if (r) done_ = Complete(*r);
  return done_;
}

Result<ExitInfo> StepProcess::Wait() {
  if (done_) return *done_;
  ASSIGN_OR_RETURN(ExitInfo r, child_->Wait());
  done_ = Complete(r);
  return *done_;
}

Result<ExitInfo> StepProcess::Terminate(Micros grace) {
  if (done_) return *done_;
  ASSIGN_OR_RETURN(ExitInfo r, child_->Terminate(grace));
  done_ = Complete(r);
  return *done_;
}

Result<std::unique_ptr<StepProcess>> SpawnSandboxed(const std::string& shim_path,
                                                    const sandbox::SandboxSpec& spec,
                                                    const std::string& log_path,
                                                    const std::vector<std::string>& cgroup_procs,
                                                    std::optional<int> oom_score_adj) {
  // The spec travels in a memfd: no size limit, never blocks, seen by nobody else.
  UniqueFd spec_fd(memfd_create("epoch-sandbox-spec", MFD_CLOEXEC));
  if (spec_fd.get() < 0) return Errno("memfd_create");
  std::string bytes = sandbox::EncodeSpec(spec);
  if (!WriteFully(spec_fd.get(), bytes.data(), bytes.size())) return Errno("writing the spec");
  if (lseek(spec_fd.get(), 0, SEEK_SET) != 0) return Errno("lseek");
  int status[2];
  if (pipe2(status, O_CLOEXEC) != 0) return Errno("pipe2");
  UniqueFd status_read(status[0]), status_write(status[1]);
  ProcessSpec ps;
  ps.argv = {shim_path};
  ps.working_dir = "/";
  ps.log_path = log_path;
  ps.pass_fds = {spec_fd.get(), status_write.get()};  // fds 3 and 4 of the shim
  ps.cgroup_procs = cgroup_procs;
  ps.oom_score_adj = oom_score_adj;
  ASSIGN_OR_RETURN(auto child, Spawn(ps));
  auto p = std::unique_ptr<StepProcess>(new StepProcess());
  p->child_ = std::move(child);
  p->status_fd_ = std::move(status_read);
  return p;
}

Result<std::unique_ptr<StepProcess>> SpawnDirect(const ProcessSpec& spec) {
  ASSIGN_OR_RETURN(auto child, Spawn(spec));
  auto p = std::unique_ptr<StepProcess>(new StepProcess());
  p->child_ = std::move(child);
  return p;
}

}  // namespace epoch::executors
