// UniqueFd: owns one file descriptor and closes it when it goes out of scope, so
// that no early return leaks one and no path closes one twice.
//
//   UniqueFd fd(open(path, O_RDONLY | O_CLOEXEC));
//   if (!fd) return Internal("open " + path + ": " + strerror(errno));
//   read(fd.get(), ...);
//
// Move-only. release() hands the descriptor over (to a child's dup2, to a wrapper
// that owns it) without closing it; reset() closes the current one and takes another.
// Between fork and exec a child must not close through it (a destructor that runs
// there is one more thing to reason about): release() first, or _exit.
//
// Thread-safety: like an int, one owner at a time.
#pragma once

#include <unistd.h>

#include <utility>

namespace epoch {

class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  ~UniqueFd() { reset(); }
  UniqueFd(UniqueFd&& other) noexcept : fd_(other.release()) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept {
    if (this != &other) reset(other.release());
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  explicit operator bool() const { return valid(); }
  // The descriptor, no longer owned (-1 when there was none).
  [[nodiscard]] int release() { return std::exchange(fd_, -1); }
  // Closes the owned descriptor (if any) and owns `fd` instead.
  void reset(int fd = -1) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }
  // Closes now and reports close(2)'s result (0, or -1 with errno): for a written
  // file whose close can report a write error.
  int Close() {
    int rc = fd_ >= 0 ? ::close(fd_) : 0;
    fd_ = -1;
    return rc;
  }

 private:
  int fd_ = -1;
};

}  // namespace epoch
