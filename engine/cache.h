// Step caching (memoization): which earlier attempt's outputs a step may reuse.
//
// A step with `"cache": true` gets a cache key when it is queued: SHA-256 over the
// canonical JSON of
//   - its command and environment, rendered with every run-specific path replaced
//     by what it stands for: an upstream output becomes "sha256:<digest>" of the
//     file, {{outputs}} / {{workspace}} / {{attempt}} stay as written, so the same
//     work in another run has the same key while {{run.id}} keeps it run-specific;
//   - its resources class ("cpu" or "gpu") and number of workers;
//   - the names of its declared outputs;
//   - the SHA-256 of each declared `inputs` file (read through FileAccess);
//   - the tenant: an entry is reused only within the tenant whose run made it.
// A succeeded attempt that ran with a key leaves a CacheEntry; a later attempt with
// the same key reuses it (JobCacheHit) if it is younger than the step's maxAge and
// its output files are still there with their recorded sizes. Entries live in the
// event log and state; CacheInvalidated removes them, by request or, past
// cache.maxEntries, by the leader's tick, least recently used first (an eviction is
// an event like any other, so a replay holds the same entries).
//
// Caching is opt-in because the key only covers what Epoch can see: a step that
// reads a file it does not declare (a database, a URL, a path in a param that is
// not in `inputs`) would be reused after that data changed.
//
// Thread-safety: the functions are pure; DiskFiles: see below.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "common/clock.h"
#include "common/json.h"
#include "common/mutex.h"
#include "common/status.h"

namespace epoch::engine {

// What the decider may learn about files. It arrives through DecideContext, like
// the clock, so decisions stay testable; what it answered is recorded in the events
// (input digests in JobQueued), so a replay never asks again.
class FileAccess {
 public:
  virtual ~FileAccess() = default;
  // SHA-256 (hex) of the regular file `path`, opened beneath `root` so that no
  // symlink or ".." takes it out of root (OpenBeneath). kUnavailable with
  // kHashPending while the file is being hashed in the background: decide leaves
  // the step waiting, and the engine advances the run again once it is known.
  // kResourceExhausted for a file over the size cap; other errors say why it cannot
  // be read.
  virtual Result<std::string> Sha256(const std::string& root, const std::string& path) = 0;
  // Size in bytes of a regular file, or nullopt if there is none.
  virtual std::optional<uint64_t> Size(const std::string& path) = 0;
};

inline constexpr std::string_view kHashPending = "hash pending";
bool IsHashPending(const Status& st);

// FileAccess on the local file system. Sha256 never reads a file on the caller's
// thread (the engine's writer): it opens and fstats it, answers from a memo keyed by
// (path, device, inode, size, mtime), and otherwise queues it for its own hashing
// thread and answers kHashPending; `on_hashed` runs on that thread after each file
// (hashed or failed). So a huge or slow input delays only the steps that declare it,
// an unchanged one is hashed once per master, and one over `max_bytes` is refused
// without being read.
//
// Thread-safety: Sha256 and Size from one thread (the writer); the hashing thread
// shares only the memo and the queue, under mu_.
class DiskFiles : public FileAccess {
 public:
  explicit DiskFiles(uint64_t max_bytes = 16ULL << 30, std::function<void()> on_hashed = nullptr);
  ~DiskFiles() override;
  DiskFiles(const DiskFiles&) = delete;
  DiskFiles& operator=(const DiskFiles&) = delete;

  Result<std::string> Sha256(const std::string& root, const std::string& path) override;
  std::optional<uint64_t> Size(const std::string& path) override;
  // How many files the hashing thread has read in full (tests).
  uint64_t hashed() const;

 private:
  struct Identity {
    uint64_t dev = 0, inode = 0, size = 0;
    int64_t mtime_ns = 0;
    bool operator==(const Identity&) const = default;
  };
  struct Seen {
    Identity id;
    Status status;       // OK: sha256 holds the digest
    std::string sha256;
  };
  struct Job {
    std::string root, path;
    Identity id;
  };
  void HashLoop();

  const uint64_t max_bytes_;
  const std::function<void()> on_hashed_;
  mutable Mutex mu_;
  CondVar cv_;
  std::map<std::string, Seen> memo_ GUARDED_BY(mu_);
  std::set<std::string> pending_ GUARDED_BY(mu_);  // paths queued or being hashed
  std::deque<Job> jobs_ GUARDED_BY(mu_);
  bool stopping_ GUARDED_BY(mu_) = false;
  uint64_t hashed_ GUARDED_BY(mu_) = 0;
  // Started on the first job; touched only by the owner's thread (Sha256, the
  // destructor), never by the hashing thread, so it needs no lock.
  std::thread thread_;
};

// One reusable result: the attempt that ran with the key and what it produced.
struct CacheEntry {
  std::string tenant;  // of the run that made it: no other tenant's step reuses it
  std::string run, step;
  int attempt = 0;
  std::string workflow;
  Json outputs = Json::array();  // [{"name","size","sha256"}] as in JobSucceeded
  Json metrics = Json::object();
  TimePoint created_at{};
  // The last JobCacheHit that reused it ({} if none): past cache.maxEntries the least
  // recently used entries are evicted first (tick.cc).
  TimePoint last_hit_at{};
  // Retention deleted its outputs (OutputsExpired): a lookup misses, saying so.
  TimePoint expired_at{};
};

// The key's basis (see the top of this file) and the key itself.
Json CacheKeyBasis(const std::string& tenant, const Json& argv, const Json& env, int gpus,
                   int workers, const std::vector<std::string>& declared_outputs,
                   const Json& input_digests);
std::string CacheKeyOf(const Json& basis);

}  // namespace epoch::engine
