// LeaderLock: the election lock on the shared data dir (<data-dir>/leader.lock).
//
// An fcntl write lock (POSIX record lock: also honoured over NFSv4) held for the
// life of the process. Whoever holds it may open the store as primary; the
// kernel drops it when the process dies, even by kill -9. Epoch never polls
// RocksDB's own DB::Open lock: a failed open renames the live leader's LOG.
//
// leader.json, next to it, is where each new leader publishes itself (address,
// epoch, node, pid), written durably after it took the epoch: agents find the
// leader there, standbys redirect to it, and a leader checks a container's claim
// of a newer epoch against it (EngineOptions::epoch_witness).
//
// Thread-safety: one owner.
#pragma once

#include <cstdint>
#include <string>

#include "common/fd.h"
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
  bool held() const { return fd_.valid(); }
  // False when the lock file we hold is no longer the one at the path (deleted
  // or replaced by hand): another process could then lock the new file, so the
  // holder must step down.
  bool StillHeld() const;

 private:
  UniqueFd fd_;
  std::string path_;
};

struct PublishedLeader {
  std::string address;
  uint64_t epoch = 0;
  std::string node;
};

// <data_dir>/leader.json as the last leader wrote it. Fields missing or of the
// wrong type read as empty / 0; kNotFound when there is no file, kInvalidArgument
// when it is not a JSON object.
Result<PublishedLeader> ReadPublishedLeader(const std::string& data_dir);
// Writes it durably (mode 0600), with this process's pid.
Status PublishLeader(const std::string& data_dir, const PublishedLeader& leader);

}  // namespace epoch::api
