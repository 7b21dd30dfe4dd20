// Helpers shared by executors' tests: a temporary directory removed at the end, a
// bounded wait for a condition (real processes need real time), process checks, and
// the OS users that sandbox tests switch to.
//
// Thread-safety: test-only helpers; WaitFor's predicate runs on the calling thread.
#pragma once

#include <dirent.h>
#include <fcntl.h>
#include <pwd.h>
#include <sys/file.h>
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace epoch::executors::testing {

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "epoch-exec-XXXXXX").string();
    char* p = mkdtemp(tmpl.data());
    path_ = p ? p : "";
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& rel) const { return path_ + "/" + rel; }

 private:
  std::string path_;
};

// Polls pred every 5 ms until it holds or timeout passes; returns its last value.
inline bool WaitFor(const std::function<bool()>& pred,
                    std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (pred()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return pred();
}

inline std::string Slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

inline void WriteText(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

// Gone or a zombie (reparented away from us, waiting for someone else to reap it).
inline bool ProcessGone(pid_t pid) {
  std::string stat = Slurp("/proc/" + std::to_string(pid) + "/stat");
  if (stat.empty()) return true;
  auto close = stat.rfind(')');
  if (close == std::string::npos || close + 2 >= stat.size()) return true;
  char state = stat[close + 2];
  return state == 'Z' || state == 'X';
}

// The uid of the OS user `name`, created (a system user, no home, no login shell) when
// missing: sandbox tests switch steps to such users, and CI runs them as root. -1 when
// it neither exists nor can be made (not root). Test processes run in parallel (ctest
// -j): one at a time checks and creates, under a lock file.
inline int EnsureTestUser(const std::string& name) {
  if (struct passwd* pw = getpwnam(name.c_str())) return static_cast<int>(pw->pw_uid);
  if (geteuid() != 0) return -1;
  int lock = open("/tmp/epoch-test-users.lock", O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (lock < 0 || flock(lock, LOCK_EX) != 0) {
    if (lock >= 0) close(lock);
    return -1;
  }
  int uid = -1;
  if (struct passwd* pw = getpwnam(name.c_str())) {
    uid = static_cast<int>(pw->pw_uid);
  } else if (std::system(("useradd --system --no-create-home --shell /usr/sbin/nologin " + name +
                          " >/dev/null 2>&1")
                             .c_str()) == 0) {
    if (struct passwd* created = getpwnam(name.c_str())) uid = static_cast<int>(created->pw_uid);
  }
  close(lock);  // releases the lock
  return uid;
}

// Host pids of the live processes one of whose arguments is exactly `arg`: a step
// inside a PID namespace knows only its own pids, so tests find its processes by a
// unique argument (`sleep 1000.4711`).
inline std::vector<pid_t> PidsWithArg(const std::string& arg) {
  std::vector<pid_t> out;
  DIR* d = opendir("/proc");
  if (d == nullptr) return out;
  while (struct dirent* e = readdir(d)) {
    std::string name = e->d_name;
    if (name.empty() || name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::string cmdline = Slurp("/proc/" + name + "/cmdline");
    size_t start = 0;
    while (start < cmdline.size()) {
      size_t end = cmdline.find('\0', start);
      if (end == std::string::npos) end = cmdline.size();
      if (cmdline.compare(start, end - start, arg) == 0) {
        pid_t pid = static_cast<pid_t>(std::stol(name));
        if (!ProcessGone(pid)) out.push_back(pid);
        break;
      }
      start = end + 1;
    }
  }
  closedir(d);
  return out;
}

inline int CountLines(const std::string& path) {
  std::string s = Slurp(path);
  int n = 0;
  for (char c : s) n += c == '\n';
  return n;
}

}  // namespace epoch::executors::testing
