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
//   - the SHA-256 of each declared `inputs` file (read through FileAccess).
// A succeeded attempt that ran with a key leaves a CacheEntry; a later attempt with
// the same key reuses it (JobCacheHit) if it is younger than the step's maxAge and
// its output files are still there with their recorded sizes. Entries live in the
// event log and state, uncapped; CacheInvalidated removes them.
//
// Caching is opt-in because the key only covers what Epoch can see: a step that
// reads a file it does not declare (a database, a URL, a path in a param that is
// not in `inputs`) would be reused after that data changed.
//
// Thread-safety: the functions are pure; DiskFiles is used by the writer thread only.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "common/clock.h"
#include "common/json.h"
#include "common/status.h"

namespace epoch::engine {

// What the decider may learn about files on the shared data dir. It arrives through
// DecideContext, like the clock, so decisions stay testable; what it answered is
// recorded in the events (input digests in JobQueued), so a replay never asks again.
class FileAccess {
 public:
  virtual ~FileAccess() = default;
  // SHA-256 (hex) of the file's contents; an error if it cannot be read.
  virtual Result<std::string> Sha256(const std::string& path) = 0;
  // Size in bytes of a regular file, or nullopt if there is none.
  virtual std::optional<uint64_t> Size(const std::string& path) = 0;
};

// FileAccess on the local file system. Digests are remembered by (path, size,
// mtime, inode), so an unchanged multi-gigabyte input is hashed once per master.
class DiskFiles : public FileAccess {
 public:
  Result<std::string> Sha256(const std::string& path) override;
  std::optional<uint64_t> Size(const std::string& path) override;

 private:
  struct Seen {
    uint64_t size = 0, inode = 0;
    int64_t mtime_ns = 0;
    std::string sha256;
  };
  std::map<std::string, Seen> memo_;
};

// One reusable result: the attempt that ran with the key and what it produced.
struct CacheEntry {
  std::string run, step;
  int attempt = 0;
  std::string workflow;
  Json outputs = Json::array();  // [{"name","size","sha256"}] as in JobSucceeded
  Json metrics = Json::object();
  TimePoint created_at{};
};

// The key's basis (see the top of this file) and the key itself.
Json CacheKeyBasis(const Json& argv, const Json& env, int gpus, int workers,
                   const std::vector<std::string>& declared_outputs, const Json& input_digests);
std::string CacheKeyOf(const Json& basis);

}  // namespace epoch::engine
