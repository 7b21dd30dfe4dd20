// epoch-sandbox: runs one job attempt's command for epoch-agent, inside its tenant's
// walls. The protocol (fds 3 and 4, exit status) is executors/sandbox/sandbox.h; what
// the step sees is described in executors/README.md ("The sandbox").
//
// Process tree with isolation (the agent is root):
//
//   epoch-agent
//    └─ epoch-sandbox        the agent's child: own process group, PDEATHSIG; root; in the
//        │                   step's mount namespace, not in its PID namespace. Pumps the
//        │                   step's output into the log (capped), forwards the agent's
//        │                   signals to init, reports, exits with the step's status.
//        └─ init             PID 1 of a new PID namespace, own session; PDEATHSIG from the
//            │               shim. Mounts /proc, forwards signals to every process of the
//            │               namespace, reaps, and exits when the step's main process
//            │               ends, which kills whatever else is left in the namespace.
//            └─ step         PID 2: the command, as the run_as user, no_new_privs.
//
// Without isolation (not root, or --isolation off) the step is the shim's direct child
// in the shim's process group, as the command itself used to be: the agent's signals
// reach it directly, and the agent's SIGKILL of the group after the shim ends takes
// whatever the step left behind.
//
// Links only libc and libstdc++: it starts once per attempt. Single-threaded, so the
// children may allocate between fork and exec.
#include <dirent.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "common/fd.h"
#include "executors/sandbox/sandbox.h"

extern char** environ;

namespace {

using epoch::executors::sandbox::Bind;
using epoch::executors::sandbox::SandboxSpec;
using epoch::executors::sandbox::SandboxStatus;

// Signals the agent may send that the step should see (the shim and init pass them on).
constexpr int kForwarded[] = {SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGUSR2, SIGQUIT};

std::string ErrnoText(int err) { return std::strerror(err); }

bool WriteAll(int fd, const char* p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

// Reads fd to EOF (or to an error).
std::string ReadAll(int fd) {
  std::string out;
  char buf[4096];
  while (true) {
    ssize_t n = read(fd, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

std::string ProcFd(int fd) { return "/proc/self/fd/" + std::to_string(fd); }

// The path an fd refers to, as the kernel sees it; "" if unknown.
std::string PathOf(int fd) {
  char buf[4096];
  ssize_t n = readlink(ProcFd(fd).c_str(), buf, sizeof(buf) - 1);
  if (n <= 0) return "";
  return std::string(buf, static_cast<size_t>(n));
}

bool IsBeneath(const std::string& path, const std::string& root) {
  if (root == "/") return !path.empty() && path[0] == '/';
  if (path.size() < root.size() || path.compare(0, root.size(), root) != 0) return false;
  return path.size() == root.size() || path[root.size()] == '/';
}

// ---------------------------------------------------------------- the view

// Everything the step may see, opened (O_PATH) before anything is hidden: the mounts
// below hide their own paths (a data dir under /tmp disappears with the private /tmp),
// so binds are made from /proc/self/fd/N of these.
struct Source {
  std::string target;  // where it appears: its canonical path
  epoch::UniqueFd fd;
  bool dir = false;
  bool read_only = true;
};

struct View {
  std::vector<Source> binds;
  std::vector<Source> devices;  // /dev/<name>
};

unsigned long PerMountFlags(int fd_or_minus1, const char* path) {
  struct statvfs st {};
  int rc = fd_or_minus1 >= 0 ? fstatvfs(fd_or_minus1, &st) : statvfs(path, &st);
  if (rc != 0) return 0;
  unsigned long f = 0;
  if (st.f_flag & ST_NODEV) f |= MS_NODEV;
  if (st.f_flag & ST_NOEXEC) f |= MS_NOEXEC;
  if (st.f_flag & ST_NOSUID) f |= MS_NOSUID;
  if (st.f_flag & ST_NOATIME) f |= MS_NOATIME;
  if (st.f_flag & ST_NODIRATIME) f |= MS_NODIRATIME;
  if (st.f_flag & ST_RELATIME) f |= MS_RELATIME;
  return f;
}

// Opens what a bind names and checks where it really is: `expect` when given (no
// symlink may redirect a path inside the data dir), else anywhere but the data dir,
// inside it or above it.
std::string OpenSource(const Bind& b, const std::string& data_dir, Source* out) {
  epoch::UniqueFd fd(open(b.path.c_str(), O_PATH | O_NOFOLLOW | O_CLOEXEC));
  if (!fd) return "mount failed: " + b.path + ": " + ErrnoText(errno);
  struct stat st {};
  if (fstat(fd.get(), &st) != 0 || S_ISLNK(st.st_mode)) {
    return "mount failed: " + b.path + " is a symbolic link";
  }
  std::string real = PathOf(fd.get());
  bool ok = b.expect.empty()
                ? !real.empty() && !IsBeneath(real, data_dir) && !IsBeneath(data_dir, real)
                : real == b.expect;
  if (!ok) return "mount failed: " + b.path + " resolves to " + real + ", which it may not";
  out->target = real;
  out->fd = std::move(fd);
  out->dir = S_ISDIR(st.st_mode);
  out->read_only = b.read_only;
  return "";
}

void OpenDevices(View* v) {
  std::vector<std::string> names = {"null", "zero", "full", "random", "urandom", "tty"};
  // GPUs: every NVIDIA node the host has (nvidia0.., nvidiactl, nvidia-uvm, the
  // nvidia-caps folder). Which GPUs a step uses is CUDA_VISIBLE_DEVICES's business.
  if (DIR* d = opendir("/dev")) {
    while (struct dirent* e = readdir(d)) {
      if (std::strncmp(e->d_name, "nvidia", 6) == 0) names.push_back(e->d_name);
    }
    closedir(d);
  }
  for (const auto& n : names) {
    std::string path = "/dev/" + n;
    epoch::UniqueFd fd(open(path.c_str(), O_PATH | O_NOFOLLOW | O_CLOEXEC));
    if (!fd) continue;  // this host has no such node
    struct stat st {};
    if (fstat(fd.get(), &st) != 0 || S_ISLNK(st.st_mode)) continue;
    v->devices.push_back(Source{path, std::move(fd), S_ISDIR(st.st_mode), false});
  }
}

// mountinfo escapes space, tab, newline and backslash in a mount point as \ooo.
std::string Unescape(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    bool octal = s[i] == '\\';
    for (size_t k = 1; octal && k <= 3; ++k) {
      octal = i + k < s.size() && s[i + k] >= '0' && s[i + k] <= '7';
    }
    if (octal) {
      out.push_back(
          static_cast<char>((s[i + 1] - '0') * 64 + (s[i + 2] - '0') * 8 + (s[i + 3] - '0')));
      i += 3;
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

std::vector<std::string> MountPoints() {
  std::vector<std::string> out;
  FILE* f = std::fopen("/proc/self/mountinfo", "re");
  if (f == nullptr) return out;
  char* line = nullptr;
  size_t cap = 0;
  while (getline(&line, &cap, f) > 0) {
    // "id parent major:minor root mount-point options ..."
    std::string l = line;
    size_t pos = 0;
    for (int field = 0; field < 4 && pos != std::string::npos; ++field) {
      pos = l.find(' ', pos);
      if (pos != std::string::npos) ++pos;
    }
    if (pos == std::string::npos) continue;
    size_t end = l.find(' ', pos);
    out.push_back(Unescape(l.substr(pos, end == std::string::npos ? end : end - pos)));
  }
  std::free(line);
  std::fclose(f);
  return out;
}

// Every mount of the host, as this namespace sees it, becomes read-only and nosuid
// (keeping its nodev/noexec/atime flags): in one call where the kernel has
// mount_setattr (5.12), which also reaches mounts hidden under others; else mount by
// mount.
std::string MakeHostReadOnly() {
#if defined(SYS_mount_setattr) && defined(MOUNT_ATTR_RDONLY)
  struct mount_attr attr {};
  attr.attr_set = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID;
  if (syscall(SYS_mount_setattr, AT_FDCWD, "/", AT_RECURSIVE, &attr, sizeof(attr)) == 0) {
    return "";
  }
  if (errno != ENOSYS) return "mount failed: make / read-only: " + ErrnoText(errno);
#endif
  for (const auto& mp : MountPoints()) {
    unsigned long flags = PerMountFlags(-1, mp.c_str());
    if (mount(nullptr, mp.c_str(), nullptr, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | flags,
              nullptr) != 0) {
      // Gone, or under another mount (only the top one is reachable, and it is in the
      // list too); anything else is a view we cannot promise.
      if (errno == ENOENT || errno == EACCES || errno == ESTALE) continue;
      return "mount failed: remount " + mp + " read-only: " + ErrnoText(errno);
    }
  }
  return "";
}

// mkdir -p of path's parents, then the leaf as a directory or an empty file.
std::string MakeMountPoint(const std::string& path, bool dir) {
  for (size_t i = 1; i <= path.size(); ++i) {
    if (i != path.size() && path[i] != '/') continue;
    std::string prefix = path.substr(0, i);
    bool leaf = i == path.size();
    if (leaf && !dir) {
      epoch::UniqueFd fd(open(prefix.c_str(), O_WRONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0644));
      if (!fd && errno != EEXIST && errno != EROFS && errno != EISDIR) {
        return "mount failed: create " + prefix + ": " + ErrnoText(errno);
      }
      continue;
    }
    if (mkdir(prefix.c_str(), 0755) != 0 && errno != EEXIST) {
      return "mount failed: mkdir " + prefix + ": " + ErrnoText(errno);
    }
  }
  return "";
}

// Binds src at its target, then sets the bind's own flags (unless keep_flags: a bind
// keeps its source mount's, which for the host's devices, read-only and nosuid by
// now, is right: a device node is written through, not changed).
std::string BindSource(const Source& src, unsigned long extra_flags, bool keep_flags = false) {
  if (std::string e = MakeMountPoint(src.target, src.dir); !e.empty()) return e;
  epoch::UniqueFd t(open(src.target.c_str(), O_PATH | O_NOFOLLOW | O_CLOEXEC));
  if (!t) return "mount failed: " + src.target + ": " + ErrnoText(errno);
  std::string where = PathOf(t.get());
  if (where != src.target) {
    return "mount failed: mount point " + src.target + " resolves to " + where;
  }
  int rc = mount(ProcFd(src.fd.get()).c_str(), ProcFd(t.get()).c_str(), nullptr, MS_BIND | MS_REC,
                 nullptr);
  if (rc != 0) return "mount failed: bind " + src.target + ": " + ErrnoText(errno);
  if (keep_flags) return "";
  // Reopen: the fd above names what is now underneath the bind.
  t.reset(open(src.target.c_str(), O_PATH | O_NOFOLLOW | O_CLOEXEC));
  if (!t) return "mount failed: " + src.target + ": " + ErrnoText(errno);
  unsigned long flags = MS_REMOUNT | MS_BIND | MS_NOSUID | extra_flags |
                        (PerMountFlags(src.fd.get(), nullptr) &
                         (MS_NOEXEC | MS_NOATIME | MS_NODIRATIME | MS_RELATIME | MS_NODEV)) |
                        (src.read_only ? MS_RDONLY : 0);
  rc = mount(nullptr, ProcFd(t.get()).c_str(), nullptr, flags, nullptr);
  if (rc != 0) return "mount failed: set flags of " + src.target + ": " + ErrnoText(errno);
  return "";
}

std::string MountTmpfs(const std::string& where, unsigned long flags, const std::string& options) {
  if (mount("tmpfs", where.c_str(), "tmpfs", flags, options.c_str()) != 0) {
    return "mount failed: tmpfs on " + where + ": " + ErrnoText(errno);
  }
  return "";
}

std::string RemountReadOnly(const std::string& where, unsigned long flags) {
  if (mount(nullptr, where.c_str(), nullptr, MS_REMOUNT | MS_BIND | MS_RDONLY | flags, nullptr) !=
      0) {
    return "mount failed: remount " + where + " read-only: " + ErrnoText(errno);
  }
  return "";
}

std::string MakeDev(const View& v) {
  if (std::string e = MountTmpfs("/dev", MS_NOSUID | MS_NOEXEC, "mode=755,size=65536");
      !e.empty()) {
    return e;
  }
  for (const auto& d : v.devices) {
    if (std::string e = BindSource(d, 0, true); !e.empty()) return e;
  }
  for (const char* dir : {"/dev/pts", "/dev/shm"}) {
    if (mkdir(dir, 0755) != 0)
      return std::string("mount failed: mkdir ") + dir + ": " + ErrnoText(errno);
  }
  if (mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC,
            "newinstance,ptmxmode=0666,mode=620") != 0) {
    return "mount failed: devpts on /dev/pts: " + ErrnoText(errno);
  }
  // PyTorch's DataLoader workers share tensors through /dev/shm.
  if (std::string e = MountTmpfs("/dev/shm", MS_NOSUID | MS_NODEV, "mode=1777"); !e.empty()) {
    return e;
  }
  const std::pair<const char*, const char*> links[] = {{"pts/ptmx", "/dev/ptmx"},
                                                       {"/proc/self/fd", "/dev/fd"},
                                                       {"/proc/self/fd/0", "/dev/stdin"},
                                                       {"/proc/self/fd/1", "/dev/stdout"},
                                                       {"/proc/self/fd/2", "/dev/stderr"}};
  for (const auto& [to, from] : links) {
    if (symlink(to, from) != 0) {
      return std::string("mount failed: symlink ") + from + ": " + ErrnoText(errno);
    }
  }
  return RemountReadOnly("/dev", MS_NOSUID | MS_NOEXEC);
}

// Builds the step's view in a new mount namespace (this process's: the shim's). The
// PID namespace's /proc is mounted by init (MountProc), from inside it.
std::string BuildView(const SandboxSpec& spec) {
  if (unshare(CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC) != 0) {
    return "sandbox failed: unshare: " + ErrnoText(errno);
  }
  // Nothing done here may reach the host's mounts, nor theirs reach us.
  if (mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) {
    return "sandbox failed: make / private: " + ErrnoText(errno);
  }
  // The agent's working dir may be inside the data dir: hold nothing of it.
  if (chdir("/") != 0) return "sandbox failed: chdir /: " + ErrnoText(errno);
  View v;
  for (const auto& b : spec.binds) {
    Source s;
    if (std::string e = OpenSource(b, spec.data_dir, &s); !e.empty()) return e;
    v.binds.push_back(std::move(s));
  }
  OpenDevices(&v);
  if (std::string e = MakeHostReadOnly(); !e.empty()) return e;
  std::string tmp_options = "mode=1777";
  if (spec.tmp_bytes > 0) tmp_options += ",size=" + std::to_string(spec.tmp_bytes);
  if (std::string e = MountTmpfs("/tmp", MS_NOSUID | MS_NODEV, tmp_options); !e.empty()) return e;
  // The data dir disappears (a data dir under /tmp already has, with the host's /tmp).
  struct stat st {};
  bool hide_data_dir = !spec.data_dir.empty() && stat(spec.data_dir.c_str(), &st) == 0;
  if (hide_data_dir) {
    if (std::string e =
            MountTmpfs(spec.data_dir, MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=755,size=65536");
        !e.empty()) {
      return e;
    }
  }
  if (std::string e = MakeDev(v); !e.empty()) return e;
  // Parents before children: a read-only upstream output inside the workspace lands on
  // top of the workspace's bind.
  std::vector<const Source*> binds;
  for (const auto& b : v.binds) binds.push_back(&b);
  std::stable_sort(binds.begin(), binds.end(), [](const Source* a, const Source* b) {
    return std::count(a->target.begin(), a->target.end(), '/') <
           std::count(b->target.begin(), b->target.end(), '/');
  });
  for (const Source* b : binds) {
    if (std::string e = BindSource(*b, MS_NODEV); !e.empty()) return e;
  }
  if (hide_data_dir) {
    if (std::string e = RemountReadOnly(spec.data_dir, MS_NOSUID | MS_NODEV | MS_NOEXEC);
        !e.empty()) {
      return e;
    }
  }
  return "";  // the sources' descriptors close with `v`
}

std::string MountProc() {
  // This namespace's /proc goes on top of the host's, which nothing in here can unmount
  // to reach. (Not unmounting it first spares an RCU grace period per attempt.)
  if (mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr) != 0) {
    return "mount failed: proc on /proc: " + ErrnoText(errno);
  }
  return "";
}

// ---------------------------------------------------------------- the step

void ResetSignals() {
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  for (int sig = 1; sig < NSIG; ++sig) {
    if (sig != SIGKILL && sig != SIGSTOP) sigaction(sig, &dfl, nullptr);
  }
  sigset_t empty;
  sigemptyset(&empty);
  sigprocmask(SIG_SETMASK, &empty, nullptr);
}

// Inside the sandbox no capability can come back through an exec (a setuid or
// file-capability binary), whatever the step's user. Needs CAP_SETPCAP: before setuid.
bool DropBoundingSet() {
  for (int cap = 0; cap <= 63; ++cap) {
    if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 && errno != EINVAL) return false;
  }
  return prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) == 0 || errno == EINVAL;
}

// root without a user to switch to, inside the sandbox: it keeps no capability either,
// so it cannot unmount what hides the data dir.
bool ClearCapabilities() {
  __user_cap_header_struct hdr{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct data[2] = {};
  return syscall(SYS_capset, &hdr, data) == 0;
}

[[noreturn]] void StepMain(const SandboxSpec& spec, int out_w, int err_w, pid_t shim,
                           bool in_shim_group) {
  auto fail = [err_w](const std::string& what) {
    (void)WriteAll(err_w, what.data(), what.size());
    _exit(127);
  };
  ResetSignals();
  if (in_shim_group) {
    // No init between us and the shim: die with it, as the command always did.
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0)
      fail("prctl(PR_SET_PDEATHSIG) failed: " + ErrnoText(errno));
    if (getppid() != shim) _exit(127);
  }
  if (dup2(out_w, 1) < 0 || dup2(out_w, 2) < 0) fail("dup2 failed: " + ErrnoText(errno));
  if (spec.isolate && geteuid() == 0 && !DropBoundingSet()) {
    fail("dropping the capability bounding set failed: " + ErrnoText(errno));
  }
  if (spec.switch_user) {
    std::vector<gid_t> groups(spec.groups.begin(), spec.groups.end());
    if (setgroups(groups.size(), groups.data()) != 0) fail("setgroups failed: " + ErrnoText(errno));
    if (setresgid(spec.gid, spec.gid, spec.gid) != 0) {
      fail("setgid " + std::to_string(spec.gid) + " failed: " + ErrnoText(errno));
    }
    if (setresuid(spec.uid, spec.uid, spec.uid) != 0) {
      fail("setuid " + std::to_string(spec.uid) + " failed: " + ErrnoText(errno));
    }
  } else if (spec.isolate && geteuid() == 0 && !ClearCapabilities()) {
    fail("dropping capabilities failed: " + ErrnoText(errno));
  }
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
    fail("prctl(PR_SET_NO_NEW_PRIVS) failed: " + ErrnoText(errno));
  }
  // As the user: a working dir it may not enter is its failure, not root's success.
  if (!spec.cwd.empty() && chdir(spec.cwd.c_str()) != 0) {
    fail("chdir " + spec.cwd + " failed: " + ErrnoText(errno));
  }
  // Nothing of the shim's stays open: spec, status, log, the other pipes' ends.
  if (err_w > 3) close_range(3, static_cast<unsigned>(err_w - 1), 0);
  close_range(static_cast<unsigned>(err_w + 1), ~0U, 0);
  std::vector<std::string> env = spec.env;
  std::vector<char*> envp;
  for (auto& e : env) envp.push_back(e.data());
  envp.push_back(nullptr);
  std::vector<std::string> args = spec.argv;
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  environ = envp.data();  // execvp searches the step's own PATH
  execvp(argv[0], argv.data());
  fail("exec failed: " + ErrnoText(errno));
  _exit(127);
}

// ---------------------------------------------------------------- init (PID 1)

void ForwardToNamespace(int sig) {
  int saved = errno;
  kill(-1, sig);  // from PID 1: every other process of the namespace
  errno = saved;
}

[[noreturn]] void InitMain(const SandboxSpec& spec, epoch::UniqueFd out_w, epoch::UniqueFd err_w,
                           int status_w, epoch::UniqueFd alive_r) {
  // The shim's death is ours, and with PID 1 gone the kernel kills the namespace.
  if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) _exit(127);
  struct pollfd alive {
    alive_r.get(), POLLIN, 0
  };
  if (poll(&alive, 1, 0) != 0) _exit(127);  // the shim died before the prctl (POLLHUP)
  alive_r.reset();
  setsid();  // out of the shim's group: the agent signals the shim, the shim signals us
  if (std::string e = MountProc(); !e.empty()) {
    (void)WriteAll(err_w.get(), e.data(), e.size());
    _exit(127);
  }
  // The forwarded signals stay blocked (from the shim) until the step exists, so none
  // is lost between here and its fork.
  struct sigaction fwd {};
  fwd.sa_handler = ForwardToNamespace;
  sigemptyset(&fwd.sa_mask);
  fwd.sa_flags = SA_RESTART;
  for (int sig : kForwarded) sigaction(sig, &fwd, nullptr);
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  sigaction(SIGCHLD, &dfl, nullptr);
  pid_t step = fork();
  if (step == 0) StepMain(spec, out_w.get(), err_w.get(), 0, false);
  if (step < 0) {
    std::string e = "fork failed: " + ErrnoText(errno);
    (void)WriteAll(err_w.get(), e.data(), e.size());
    _exit(127);
  }
  out_w.reset();
  err_w.reset();
  sigset_t empty;
  sigemptyset(&empty);
  sigprocmask(SIG_SETMASK, &empty, nullptr);
  int main_status = 0;
  while (true) {
    int st = 0;
    pid_t r = waitpid(-1, &st, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) break;  // ECHILD: cannot happen before the step is reaped
    if (r == step) {
      main_status = st;
      break;
    }
    // Anything else: an orphan the step left, reaped so it does not linger.
  }
  (void)WriteAll(status_w, reinterpret_cast<const char*>(&main_status), sizeof(main_status));
  // Exiting kills every process left in the namespace (a detached `setsid sleep &`).
  _exit(0);
}

// ---------------------------------------------------------------- the shim

struct LogPump {
  int fd = 1;  // the attempt's log (the agent opened it as our stdout)
  int64_t max = 0;
  int64_t written = 0, dropped = 0;
  bool truncated = false;
  bool ends_with_newline = true;

  void Write(const char* p, size_t n) {
    if (truncated) {
      dropped += static_cast<int64_t>(n);
      return;
    }
    size_t keep = n;
    if (max > 0 && written + static_cast<int64_t>(n) > max)
      keep = static_cast<size_t>(max - written);
    if (keep > 0) {
      if (WriteAll(fd, p, keep)) {
        written += static_cast<int64_t>(keep);
        ends_with_newline = p[keep - 1] == '\n';
      } else {
        dropped += static_cast<int64_t>(keep);  // a full disk must not stop the step
      }
    }
    if (keep < n) {
      truncated = true;
      dropped += static_cast<int64_t>(n - keep);
      std::string line = std::string(ends_with_newline ? "" : "\n") + "epoch: log truncated at " +
                         std::to_string(max) +
                         " bytes (max_log_bytes); the rest of the output is discarded\n";
      (void)WriteAll(fd, line.data(), line.size());
    }
  }
};

void Report(const SandboxStatus& s) {
  std::string bytes = epoch::executors::sandbox::EncodeStatus(s);
  (void)WriteAll(epoch::executors::sandbox::kStatusFd, bytes.data(), bytes.size());
}

// Ends the shim the way the step ended: the same exit code, or the same signal.
[[noreturn]] void ExitLike(int status) {
  if (WIFEXITED(status)) _exit(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    int sig = WTERMSIG(status);
    struct rlimit no_core {
      0, 0
    };
    setrlimit(RLIMIT_CORE, &no_core);  // the step dumped (or not); we do not
    signal(sig, SIG_DFL);
    sigset_t only;
    sigemptyset(&only);
    sigaddset(&only, sig);
    sigprocmask(SIG_UNBLOCK, &only, nullptr);
    kill(getpid(), sig);
    _exit(128 + sig);  // a signal whose default is not to terminate
  }
  _exit(127);
}

[[noreturn]] void Fail(const SandboxSpec& spec, SandboxStatus status, const std::string& error) {
  status.error = error;
  std::string line =
      "epoch: " + (spec.argv.empty() ? std::string("step") : spec.argv[0]) + ": " + error + "\n";
  (void)WriteAll(1, line.data(), line.size());
  Report(status);
  _exit(127);
}

int Probe() {
  if (geteuid() != 0) {
    std::puts("not root: steps run as the agent's user, without namespaces");
    return 1;
  }
  if (unshare(CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC) != 0) {
    std::printf("unshare(CLONE_NEWNS|CLONE_NEWPID|CLONE_NEWIPC): %s\n", std::strerror(errno));
    return 1;
  }
  if (mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) {
    std::printf("making / private: %s\n", std::strerror(errno));
    return 1;
  }
  if (mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777,size=65536") != 0) {
    std::printf("tmpfs on /tmp: %s\n", std::strerror(errno));
    return 1;
  }
  std::fflush(stdout);
  pid_t pid = fork();
  if (pid == 0) {
    std::string e = MountProc();
    if (!e.empty()) {
      std::printf("%s\n", e.c_str());
      std::fflush(stdout);
      _exit(1);
    }
    _exit(getpid() == 1 ? 0 : 1);
  }
  if (pid < 0) {
    std::printf("fork: %s\n", std::strerror(errno));
    return 1;
  }
  int st = 0;
  while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
  }
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) return 1;
  std::printf("%s\n", std::string(epoch::executors::sandbox::kProbeOk).c_str());
  return 0;
}

}  // namespace

// Under AddressSanitizer (CI's clang build) LeakSanitizer's exit-time check cannot
// stop the world inside the PID namespace this process creates: it dies there
// ("LeakSanitizer has encountered a fatal error"), failing every sandboxed step. The
// sandbox execs the step or exits at once, so there is nothing for it to find.
#if defined(__SANITIZE_ADDRESS__)
#define EPOCH_SANDBOX_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define EPOCH_SANDBOX_ASAN 1
#endif
#endif
#ifdef EPOCH_SANDBOX_ASAN
extern "C" int __lsan_is_turned_off() { return 1; }
#endif

int main(int argc, char** argv) {
  if (argc == 2 && std::strcmp(argv[1], "--probe") == 0) return Probe();
  if (argc != 1) {
    std::fprintf(stderr,
                 "usage: epoch-sandbox [--probe]\n"
                 "Started by epoch-agent with a spec on fd 3 (executors/sandbox/sandbox.h).\n");
    return 64;
  }
  // Signals are read from a signalfd: blocked from here on, and in every child until it
  // has set up its own handling.
  sigset_t handled;
  sigemptyset(&handled);
  for (int sig : kForwarded) sigaddset(&handled, sig);
  sigaddset(&handled, SIGCHLD);
  sigprocmask(SIG_BLOCK, &handled, nullptr);
  signal(SIGPIPE, SIG_IGN);

  using epoch::executors::sandbox::kSpecFd;
  using epoch::executors::sandbox::kStatusFd;
  SandboxSpec spec;
  SandboxStatus status;
  {
    std::string bytes = ReadAll(epoch::UniqueFd(kSpecFd).get());  // closed once read
    std::string error;
    if (fcntl(kStatusFd, F_SETFD, FD_CLOEXEC) != 0 ||
        !epoch::executors::sandbox::DecodeSpec(bytes, &spec, &error)) {
      if (error.empty()) error = "no status fd";
      std::fprintf(stderr, "epoch-sandbox: %s\n", error.c_str());
      Fail(spec, status, "sandbox failed: " + error);
    }
  }
  LogPump pump;
  pump.max = spec.max_log_bytes;

  // The step's output, its pre-exec errors, with isolation init's report of the step's
  // status and a pipe whose hang-up tells init that this process died.
  epoch::UniqueFd out_r, out_w, err_r, err_w, st_r, st_w, alive_r, alive_w;
  auto make_pipe = [](epoch::UniqueFd* r, epoch::UniqueFd* w) {
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) return false;
    r->reset(fds[0]);
    w->reset(fds[1]);
    return true;
  };
  if (!make_pipe(&out_r, &out_w) || !make_pipe(&err_r, &err_w)) {
    Fail(spec, status, "sandbox failed: pipe: " + ErrnoText(errno));
  }
  if (spec.isolate) {
    if (!make_pipe(&st_r, &st_w) || !make_pipe(&alive_r, &alive_w)) {
      Fail(spec, status, "sandbox failed: pipe: " + ErrnoText(errno));
    }
    if (std::string e = BuildView(spec); !e.empty()) Fail(spec, status, e);
  }
  epoch::UniqueFd sfd(signalfd(-1, &handled, SFD_CLOEXEC));
  if (!sfd) Fail(spec, status, "sandbox failed: signalfd: " + ErrnoText(errno));

  pid_t self = getpid();
  pid_t child = fork();
  if (child == 0) {  // each side keeps its own ends
    out_r.reset();
    err_r.reset();
    sfd.reset();
    if (spec.isolate) {
      st_r.reset();
      alive_w.reset();
      InitMain(spec, std::move(out_w), std::move(err_w), st_w.get(), std::move(alive_r));
    }
    StepMain(spec, out_w.get(), err_w.get(), self, true);
  }
  if (child < 0) Fail(spec, status, "sandbox failed: fork: " + ErrnoText(errno));
  out_w.reset();
  err_w.reset();
  st_w.reset();
  alive_r.reset();

  int child_status = 0;
  bool child_done = false, out_open = true;
  char buf[65536];
  while (out_open) {
    struct pollfd p[2] = {{sfd.get(), POLLIN, 0}, {out_r.get(), POLLIN, 0}};
    if (poll(p, 2, -1) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (p[1].revents != 0) {
      ssize_t n = read(out_r.get(), buf, sizeof(buf));
      if (n > 0) {
        pump.Write(buf, static_cast<size_t>(n));
      } else if (n == 0 || errno != EINTR) {
        out_open = false;
      }
    }
    if (p[0].revents & POLLIN) {
      struct signalfd_siginfo si {};
      if (read(sfd.get(), &si, sizeof(si)) == static_cast<ssize_t>(sizeof(si))) {
        int sig = static_cast<int>(si.ssi_signo);
        if (sig == SIGCHLD) {
          int ws = 0;
          if (!child_done && waitpid(child, &ws, WNOHANG) == child) {
            child_done = true;
            child_status = ws;
          }
        } else if (spec.isolate && !child_done) {
          kill(child, sig);  // to init, which passes it to the whole namespace
        }
        // Without isolation the step is in our group and got the signal itself.
      }
    }
    if (child_done) break;
  }
  if (!child_done) {
    while (waitpid(child, &child_status, 0) < 0 && errno == EINTR) {
    }
  }
  // Whatever is still in the pipe was written before the step ended. With isolation
  // nothing can write any more (the namespace is gone); without it, the step's
  // leftovers die with the agent's kill of our group, so do not wait for them.
  if (out_open) {
    fcntl(out_r.get(), F_SETFL, O_NONBLOCK);
    while (true) {
      ssize_t n = read(out_r.get(), buf, sizeof(buf));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      pump.Write(buf, static_cast<size_t>(n));
    }
  }
  status.log_bytes = pump.written;
  status.log_dropped_bytes = pump.dropped;
  status.log_truncated = pump.truncated;

  int step_status = child_status;
  if (spec.isolate) {
    // init's own status says only that it ran; the step's is in the pipe.
    std::string raw = ReadAll(st_r.get());
    if (raw.size() == sizeof(int)) std::memcpy(&step_status, raw.data(), sizeof(int));
  }
  std::string pre_exec = ReadAll(err_r.get());
  if (!pre_exec.empty() && WIFEXITED(step_status) && WEXITSTATUS(step_status) == 127) {
    status.error = pre_exec;
    std::string line = "epoch: " + spec.argv[0] + ": " + pre_exec + "\n";
    (void)WriteAll(1, line.data(), line.size());
  }
  Report(status);
  ExitLike(step_status);
}
