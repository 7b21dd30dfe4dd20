// LiveMetrics: the agent's side of live metrics and checkpoints (agent.h, "Live metrics
// and checkpoints"). A running step appends JSON lines to $EPOCH_METRICS and declares
// checkpoints it wrote into $EPOCH_CHECKPOINT_DIR; this class follows those files for
// every watched attempt, numbers the points, counts what it skips or drops over the
// caps, hashes declared checkpoints, and hands out batches for the poll bodies until
// the master acknowledges them.
//
//   metrics line  := JSON object, one per '\n'-terminated line ("\r\n" too)
//   point         := the line's members whose value is a finite number (not a bool) and
//                    whose name is 1..128 bytes; numbered 0, 1, 2, ... in file order
//   skipped       := +1 per line that is not a JSON object (or is longer than 64 KiB)
//                    or holds no number, +1 per member left out (not a number, bad
//                    name); blank lines are ignored
//   declaration   := a line's "checkpoint": "<file>" (with its "epoch" if an integer),
//                    or checkpoint.json = {"file": "<file>", "epoch": N} rewritten in
//                    the checkpoint dir (seen by a changed inode, size or mtime)
//   batch         := {"attempt_id", "from", "points": [point...], "skipped", "dropped",
//                     "truncated", "checkpoints": [{"file","sha256","size"[,"epoch"]}]}
//   metrics_ack   := {"<attempt_id>": next, ...}: every point below next, and the
//                    checkpoints and totals of the batch that poll carried, are durable
//
// Memory: each collection reads at most 1 MiB of each file; only the points not yet
// acknowledged are kept (never more than the attempt's caps, max_points and
// max_bytes), with the last value of at most 1000 series and at most 1000 pending
// checkpoint records. Files are opened beneath the attempt's workspace (no symlink or
// ".." leads out of it), checkpoints without following a symlink at all; what a step
// writes wrong is logged and counted, never an error of the step.
//
// Thread-safety: every member function may be called from any thread; state is behind
// one mutex, released while checkpoint files are hashed.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "common/json.h"
#include "common/mutex.h"

namespace epoch::executors {

// What an assignment's "metrics" and "checkpoint_dir" ask the agent to follow.
struct LiveMetricsSpec {
  std::string root;            // the attempt's workspace; both paths below lie beneath it
  std::string metrics_path;    // empty: no metrics file (checkpoints only)
  std::string checkpoint_dir;  // empty: no checkpoint dir
  std::chrono::milliseconds interval{1000};
  int64_t max_points = 100000;
  int64_t max_bytes = 16 << 20;  // of serialized points
};

class LiveMetrics {
 public:
  using Clock = std::chrono::steady_clock;
  using Time = Clock::time_point;

  // Bounds of one collection and one poll body (tests shrink them).
  struct Limits {
    size_t read_bytes = 1 << 20;         // read per attempt per Collect
    size_t final_read_bytes = 1u << 30;  // read by Finish (the rest is ignored, logged)
    size_t body_points = 2000;           // per Collect, every attempt together
    size_t body_bytes = 256 << 10;       // of serialized points, per Collect
  };

  // What one Collect put in a poll body: Ack needs it to tell which checkpoint records
  // and totals the master's ack covers.
  struct Sent {
    struct Attempt {
      uint64_t checkpoints_through = 0;  // records numbered up to this one were sent
      int64_t skipped = 0, dropped = 0;
      bool truncated = false;
    };
    std::map<std::string, Attempt> attempts;
  };
  struct Collected {
    Json batches = Json::array();  // empty: put no "metrics" in the body
    Sent sent;
  };

  LiveMetrics() : LiveMetrics(Limits{}) {}
  explicit LiveMetrics(Limits limits) : limits_(limits) {}
  LiveMetrics(const LiveMetrics&) = delete;
  LiveMetrics& operator=(const LiveMetrics&) = delete;

  // Starts following an attempt (before its process starts): its metrics file from
  // offset 0, its checkpoint dir from checkpoint.json's present state (a checkpoint an
  // earlier attempt declared is not declared again). The first batch is due an
  // interval after `now`. A second Watch of the same id is ignored.
  void Watch(const std::string& attempt_id, const LiveMetricsSpec& spec, Time now) EXCLUDES(mu_);

  // Reads what is new in every watched attempt's files and returns the batches due at
  // `now`: an attempt's first batch after Finish, else at most one per interval (or at
  // once when the master acknowledged the previous batch and the caps of a body left
  // points behind). Every batch starts at the first unacknowledged point, so points
  // that were not acknowledged are sent again. Forgets finished attempts the master
  // has acknowledged entirely, or that it has not acknowledged for 10 minutes.
  Collected Collect(Time now) EXCLUDES(mu_);

  // Applies a poll answer's "metrics_ack" ({"<attempt_id>": next}) to what that poll
  // carried (`sent`). Anything malformed is ignored.
  void Ack(const Json& metrics_ack, const Sent& sent) EXCLUDES(mu_);

  // Stops following the attempts a refused request carried (the master answered it
  // 400 or 403: it will refuse them again, and reports must not wait behind them).
  void Abandon(const Sent& sent, const std::string& why) EXCLUDES(mu_);

  // The attempt ended: reads the rest of its metrics file (a last line without '\n'
  // included) and its checkpoint.json, and returns the last value of each series over
  // every point parsed, capped or not ({} for an attempt never watched). Its remaining
  // points are then due at once and sent until acknowledged.
  Json Finish(const std::string& attempt_id, Time now) EXCLUDES(mu_);

  // When Collect next has something to look at: the earliest of each attempt's last
  // look plus its interval, or `now`-ish for a finished attempt not yet sent. nullopt
  // when nothing is watched.
  std::optional<Time> NextCheck() const EXCLUDES(mu_);

  // For tests: attempts followed, and points held for an attempt (not yet acknowledged).
  size_t Watched() const EXCLUDES(mu_);
  size_t Unacked(const std::string& attempt_id) const EXCLUDES(mu_);

 private:
  struct Declaration {
    std::string file;
    std::optional<int64_t> epoch;
    std::string source;  // "checkpoint.json" or "metrics line", for the log
  };
  struct FileId {
    dev_t dev = 0;
    ino_t ino = 0;
    int64_t size = 0, mtime_ns = 0;
    bool operator==(const FileId&) const = default;
  };
  struct Series {
    LiveMetricsSpec spec;
    // The metrics file: where reading goes on, the line being assembled.
    std::optional<FileId> file;
    uint64_t offset = 0;
    std::string partial;
    bool discarding = false;  // inside a line over the length limit
    bool warned = false;      // about an unreadable file, once
    // The series: points accepted (numbered), totals, what is not acknowledged.
    int64_t next_index = 0, accepted_bytes = 0;
    int64_t skipped = 0, dropped = 0;
    bool truncated = false;
    std::deque<std::string> unacked;  // serialized points, the last unacked.size() numbers
    int64_t acked_floor = 0;          // the master's next: points below it are not kept
    std::map<std::string, Json> last;
    // Checkpoints.
    std::optional<FileId> checkpoint_json;
    std::vector<Declaration> declared;
    int resolving = 0;  // declarations being hashed outside the lock
    std::deque<std::pair<uint64_t, Json>> checkpoints;  // numbered records, not acked
    uint64_t checkpoint_seq = 0;
    std::set<std::string> recorded;  // "file\nsha256" already recorded by this attempt
    // Sending.
    Time last_sent, last_checked, finished_at;
    bool finished = false, sent_since_finish = false, more_waiting = false;
    int64_t sent_next = 0;  // after the last point of the latest batch
    Sent::Attempt acked;    // totals the master acknowledged
  };
  void ReadNew(const std::string& id, Series& s, size_t budget, bool final) REQUIRES(mu_);
  void Consume(const std::string& id, Series& s, std::string_view data) REQUIRES(mu_);
  void ProcessLine(const std::string& id, Series& s, std::string_view line) REQUIRES(mu_);
  void Accept(Series& s, Json point) REQUIRES(mu_);
  // A changed checkpoint.json is a declaration; `baseline` only notes its present state.
  void CheckCheckpointJson(const std::string& id, Series& s, bool baseline) REQUIRES(mu_);
  void Declare(const std::string& id, Series& s, Declaration d) REQUIRES(mu_);
  // Hashes every pending declaration with mu_ released, then queues the records.
  void ResolveDeclarations() EXCLUDES(mu_);
  static bool CanForget(const Series& s);
  static int64_t FirstUnacked(const Series& s) {
    return s.next_index - static_cast<int64_t>(s.unacked.size());
  }

  const Limits limits_{};
  mutable Mutex mu_;
  std::map<std::string, Series> series_ GUARDED_BY(mu_);
  std::string cursor_ GUARDED_BY(mu_);  // where the next Collect starts filling a body
};

}  // namespace epoch::executors
