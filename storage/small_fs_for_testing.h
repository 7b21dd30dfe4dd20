// SmallFs: a small tmpfs mounted on a fresh directory for the life of the object,
// for tests of what a full disk does (storage_test, tests/storage_fault_e2e_test).
// Test-only and header-only (it uses GoogleTest).
//
// Mounting needs root (CAP_SYS_ADMIN); CI runs the tests as root. Where that is not
// so, EPOCH_REQUIRE_MOUNT() fails the test loudly, unless EPOCH_SKIP_MOUNT_TESTS=1
// says to skip it.
//
// Thread-safety: one owner.
#pragma once

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mount.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

namespace epoch::testing {

// Why this process cannot mount a tmpfs ("" when it can try).
inline std::string MountUnavailableReason() {
  if (::geteuid() != 0) return "it mounts a tmpfs and needs root (CAP_SYS_ADMIN)";
  return "";
}

inline bool SkipMountTests() {
  const char* v = std::getenv("EPOCH_SKIP_MOUNT_TESTS");
  return v != nullptr && std::string(v) == "1";
}

// In a TEST body: skips the test where mounting is impossible and
// EPOCH_SKIP_MOUNT_TESTS=1, fails it where it is impossible otherwise.
#define EPOCH_REQUIRE_MOUNT()                                                              \
  do {                                                                                     \
    std::string why_ = ::epoch::testing::MountUnavailableReason();                        \
    if (!why_.empty()) {                                                                   \
      if (::epoch::testing::SkipMountTests()) {                                            \
        GTEST_SKIP() << "skipped (EPOCH_SKIP_MOUNT_TESTS=1): " << why_;                    \
      }                                                                                    \
      FAIL() << "this test cannot run: " << why_                                           \
             << ". Run it as root (CI does), or set EPOCH_SKIP_MOUNT_TESTS=1 to skip it."; \
    }                                                                                      \
  } while (0)

class SmallFs {
 public:
  // Mounts a tmpfs of `size` (tmpfs syntax: "64m") on `at` (created if missing),
  // or on a new directory under /tmp. error() says what failed (empty: mounted).
  explicit SmallFs(const std::string& size, const std::string& at = "") {
    if (at.empty()) {
      char tmpl[] = "/tmp/epoch-smallfs.XXXXXX";
      char* dir = ::mkdtemp(tmpl);
      if (dir == nullptr) {
        error_ = std::string("mkdtemp: ") + std::strerror(errno);
        return;
      }
      path_ = dir;
    } else {
      std::error_code ec;
      std::filesystem::create_directories(at, ec);
      if (ec) {
        error_ = "mkdir " + at + ": " + ec.message();
        return;
      }
      path_ = at;
    }
    std::string opts = "size=" + size + ",mode=0755";
    if (::mount("tmpfs", path_.c_str(), "tmpfs", 0, opts.c_str()) != 0) {
      error_ = "mount -t tmpfs -o " + opts + " tmpfs " + path_ + ": " + std::strerror(errno);
      return;
    }
    mounted_ = true;
  }
  // Unmounts (lazily, so a process that still has a file open there cannot keep
  // it mounted) and removes the mount point.
  ~SmallFs() {
    if (mounted_) (void)::umount2(path_.c_str(), MNT_DETACH);
    if (!path_.empty()) {
      std::error_code ec;
      std::filesystem::remove_all(path_, ec);
    }
  }
  SmallFs(const SmallFs&) = delete;
  SmallFs& operator=(const SmallFs&) = delete;

  const std::string& path() const { return path_; }
  const std::string& error() const { return error_; }

  // Bytes free for this process (statvfs f_bavail * f_frsize).
  uint64_t AvailableBytes() const {
    struct statvfs fs {};
    if (::statvfs(path_.c_str(), &fs) != 0) return 0;
    return static_cast<uint64_t>(fs.f_bavail) * fs.f_frsize;
  }

  // Writes the file <path>/<name> until about `leave` bytes are left free (0: until
  // the filesystem is full, ENOSPC). Returns "" or what failed.
  std::string Fill(const std::string& name, uint64_t leave = 0) {
    std::string file = path_ + "/" + name;
    int fd = ::open(file.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) return "open " + file + ": " + std::strerror(errno);
    std::vector<char> chunk(1 << 20, 'f');
    std::string problem;
    size_t size = chunk.size();
    while (size > 0) {
      uint64_t avail = AvailableBytes();
      if (avail <= leave) break;
      size_t n = static_cast<size_t>(std::min<uint64_t>(size, avail - leave));
      ssize_t w = ::write(fd, chunk.data(), n);
      if (w < 0 && errno == ENOSPC) {
        size /= 4;  // full at this granularity: try smaller writes
        continue;
      }
      if (w < 0) {
        problem = "write " + file + ": " + std::strerror(errno);
        break;
      }
      if (static_cast<size_t>(w) < n) size /= 4;
    }
    ::close(fd);
    return problem;
  }

  // Removes <path>/<name> (space returns).
  void Remove(const std::string& name) {
    std::error_code ec;
    std::filesystem::remove(path_ + "/" + name, ec);
  }

  // Grows (or shrinks) the filesystem to `size`. Returns "" or what failed.
  std::string Resize(const std::string& size) {
    std::string opts = "remount,size=" + size;
    if (::mount("tmpfs", path_.c_str(), "tmpfs", MS_REMOUNT, ("size=" + size).c_str()) != 0) {
      return "mount -o " + opts + " " + path_ + ": " + std::strerror(errno);
    }
    return "";
  }

 private:
  std::string path_;
  std::string error_;
  bool mounted_ = false;
};

}  // namespace epoch::testing
