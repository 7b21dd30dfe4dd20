// LeaderLock: the election lock on the shared data dir (<data-dir>/leader.lock).
//
// An fcntl write lock (POSIX record lock: also honoured over NFSv4) held for the
// life of the process. Whoever holds it may open the store as primary; the
// kernel drops it when the process dies, even by kill -9. Epoch never polls
// RocksDB's own DB::Open lock: a failed open renames the live leader's LOG.
//
// Thread-safety: one owner.
#pragma once

#include <string>

#include "common/status.h"

namespace epoch::api {

class LeaderLock {
 public:
  LeaderLock() = default;
  ~LeaderLock();
  LeaderLock(const LeaderLock&) = delete;
  LeaderLock& operator=(const LeaderLock&) = delete;

  // Tries once, without blocking. kUnavailable when another process holds it.
  Status TryAcquire(const std::string& path);
  void Release();
  bool held() const { return fd_ >= 0; }
  // False when the lock file we hold is no longer the one at the path (deleted
  // or replaced by hand): another process could then lock the new file, so the
  // holder must step down.
  bool StillHeld() const;

 private:
  int fd_ = -1;
  std::string path_;
};

}  // namespace epoch::api
