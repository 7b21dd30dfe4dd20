// Engine: the event-sourced core of the master.
//
// One writer thread owns the working State. Commands from any thread are queued;
// the writer drains everything queued, decides (decider.h), evolves its working
// state event by event until nothing more follows, and commits all the events in
// one synced append (group commit: one fsync acknowledges many commands). Only
// after the append is durable does it evolve the *published* State that readers
// see, answer the callers, and run reactors (launch or terminate containers).
// Readers take a shared lock on the published state and never see an event that
// is not durable.
//
// Start() loads the latest usable snapshot and replays the log after it (the whole
// log when there is none) into both states, appends LeaderElected with the
// next epoch, and reconciles: timers are re-armed from state, containers get a
// fresh lease to re-register, assignments not yet acknowledged are re-sent on the
// next poll. Replay never triggers a reactor.
//
// Storage faults: if the store fails an append, or reports a write failure of its
// own (storage::EventStore::WriteFailure: a snapshot that met a full disk, a
// RocksDB flush that did), the engine stops at once: the failed group's callers
// and everything queued are answered with StorageFaultStatus() (nothing of it is
// acknowledged), every later command and poll too, ready() and healthy() turn
// false, and storage_fault() says why. The process must then give up leadership
// (epochd releases the election lock and exits 74) and restart to replay what is
// durable. A full disk is InsufficientStorageError (the API's 507
// insufficient_storage), any other storage error kUnavailable (503). Before the
// disk is full, EngineOptions::min_free_bytes refuses new work (registering a
// workflow, submitting a run, retrying one) with InsufficientStorageError while
// the store's filesystem has less free space than that; the container protocol
// and cancels go on, so running work finishes and its reports are recorded.
//
// HA (DESIGN.md, "HA"): a standby runs StartStandby() over a secondary store and
// calls Follow() after each store CatchUp(): the published state follows the
// leader's log, nothing is decided and nothing runs. Promote(), once the store is
// primary, checks what was applied against what is durable (head position and
// hash: a secondary can read writes the old leader never synced), rebuilds from
// the store when they differ, and then takes leadership as Start() does. A leader
// steps down at once (role kDeposed, on_deposed called, every command refused)
// when its append is fenced by a higher epoch or an agent reports one.
//
// Corrupt history (README "Audit"): a log whose hash chain fails verification is
// never extended. Start() finds it when the replay fails (no snapshot covers the
// bad event): it fails with kCorruption naming the first bad position, or, with
// EngineOptions::allow_corrupt_history, serves the state of the sound prefix
// (the events before the first bad one, from a snapshot at or before it when
// there is one) in corrupt-history mode. A leader whose start loaded a snapshot
// did not replay the prefix under it, so it verifies the whole chain on a
// background thread and, if that fails, switches to the same mode while serving
// (its state stays what it loaded: snapshot + tail). In that mode every command
// and every container poll is refused with CorruptHistoryError (kUnavailable,
// IsCorruptHistory), nothing is appended (the writer stops: no ticks, no pool, no
// reactors, no snapshots), polls hand out nothing, ready() is false, and reads
// go on (agents, whose polls are refused, keep their reports and give up after
// their --orphan-timeout as if the master were unreachable). history() says what
// was verified and what was found.
//
// Thread-safety: every public method is safe from any thread.
#pragma once

#include <atomic>
#include <deque>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "common/clock.h"
#include "common/mutex.h"
#include "common/status.h"
#include "engine/archive.h"
#include "engine/commands.h"
#include "engine/container_backend.h"
#include "engine/decider.h"
#include "engine/state.h"
#include "engine/views.h"
#include "storage/event_store.h"

namespace epoch::engine {

struct EngineOptions {
  EngineConfig config;
  std::string node = "epochd";      // this master's name
  std::string advertise_url;        // where agents and clients reach it
  size_t max_group = 1024;          // commands decided per commit at most
  std::map<std::string, std::string> agent_env;  // handed to every container
  bool start_pool = true;           // false: no ContainerRequested (tests of the core)
  // The leader asks a Watched() backend what became of its live containers this
  // often (executor.watchInterval); 0: never.
  Micros watch_interval = std::chrono::seconds(2);
  // Called once, from the thread that noticed, when this leader is deposed.
  std::function<void(const std::string& reason)> on_deposed;
  // The highest epoch a leader has published where every master can read it
  // (epochd: leader.json on the shared data dir). A container that claims to have
  // seen an epoch above this leader's deposes it only when the witness confirms a
  // newer leader; an unconfirmed claim is refused (kConflict), so a lying
  // or confused container cannot take the control plane down. Unset: no claim is
  // ever confirmed.
  std::function<uint64_t()> epoch_witness;
  // Snapshots (snapshot.h): start from the latest one and replay only the events
  // after it; the leader writes one every `snapshot_every` events (0 = never), in
  // the background, from a copy of the published state.
  bool load_snapshot = true;
  uint64_t snapshot_every = 100000;
  // A history that fails verification at Start(): false fails the start (kCorruption
  // naming the first bad event); true serves it read-only (header comment).
  bool allow_corrupt_history = false;
  // storage.minFreeBytes (header comment, "Storage faults"): new work is refused
  // while the store's filesystem has fewer free bytes than this (0: never). The
  // free space is asked of the store (AvailableBytes, statvfs) at most once every
  // free_space_interval of the engine's clock.
  uint64_t min_free_bytes = 0;
  Micros free_space_interval = std::chrono::seconds(1);
  // Finished runs leave the state for the store's read model (archive.h), so that
  // memory follows open work. Start() rebuilds the read model from the log when it
  // is missing or in another format. false: every run stays in memory (tests of the
  // core that inspect finished runs in the state).
  bool archive_runs = false;
};

// What this master knows of its log's integrity (/v1/cluster "history").
struct HistoryCheck {
  enum class State {
    kUnverified,  // loaded from a snapshot and not (yet) walked: a standby
    kVerifying,   // the leader's background VerifyChain is walking it
    kVerified,    // the chain 1..head_position is sound
    kCorrupt,     // first_bad fails verification: corrupt-history mode
    kError,       // the verification itself failed (I/O): problem says why
  };
  State state = State::kUnverified;
  std::string method;          // "replay" (a full replay read it all), "background"
                               // (VerifyChain after a start from a snapshot), "start"
  uint64_t head_position = 0;  // kVerified: where the sound chain ends
  std::string head_hash;       // kVerified: its hash
  uint64_t checked = 0;        // events verified
  uint64_t first_bad = 0;      // kCorrupt: the first position whose bytes, hash or link is wrong
  std::string problem;         // kCorrupt: e.g. "event 5: hash mismatch"; kError: the error
};
std::string_view Name(HistoryCheck::State s);
Json HistoryCheckToJson(const HistoryCheck& h);

// The error code the API answers a refused write with in corrupt-history mode.
inline constexpr std::string_view kCorruptHistoryCode = "corrupt_history";
// kUnavailable whose first detail is kCorruptHistoryCode, naming the first bad
// position in its message; the second detail is the problem found.
Status CorruptHistoryError(uint64_t first_bad, const std::string& problem);
bool IsCorruptHistory(const Status& st);

// The error code the API answers 507 Insufficient Storage with: the event store's
// filesystem is full (an append failed with ENOSPC; the leader steps down), or has
// less free space than storage.minFreeBytes (new work is refused).
inline constexpr std::string_view kInsufficientStorageCode = "insufficient_storage";
// kResourceExhausted whose first detail is kInsufficientStorageCode.
Status InsufficientStorageError(const std::string& message);
bool IsInsufficientStorage(const Status& st);

struct SnapshotInfo {
  uint64_t position = 0;
  size_t bytes = 0;
};

enum class Role { kStarting, kStandby, kPromoting, kLeader, kDeposed, kStopped };
std::string_view Name(Role r);

// Counters for /metrics.
struct EngineStats {
  std::atomic<uint64_t> commits{0};
  std::atomic<uint64_t> events_appended{0};
  std::atomic<uint64_t> commands{0};
  std::atomic<uint64_t> rejected{0};
  // Append latency histogram: upper bounds in microseconds.
  static constexpr int kBuckets = 12;
  static constexpr int64_t kBoundsUs[kBuckets] = {250,   500,    1000,   2000,   5000,   10000,
                                                  25000, 50000, 100000, 250000, 1000000, 5000000};
  std::atomic<uint64_t> latency_buckets[kBuckets + 1] = {};
  std::atomic<uint64_t> latency_sum_us{0};
  std::atomic<uint64_t> latency_count{0};
};

// What a poll answers besides the acks (DESIGN.md, container protocol).
struct DispatchView {
  Json assignments = Json::array();
  Json cancels = Json::array();
};

class Engine {
 public:
  Engine(EngineOptions options, storage::EventStore* store, ContainerBackend* backend,
         const Clock* clock);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Where agents and clients reach this master; call before Start() (the API
  // may bind port 0 and learn its port only then).
  void SetAdvertiseUrl(std::string url) { options_.advertise_url = std::move(url); }

  // Replays the log, takes leadership (LeaderElected), starts the writer.
  Status Start();
  // Standby: replays the log into the published state; accepts no command.
  Status StartStandby();
  // Standby: applies the events the store has beyond the published state (call
  // after store()->CatchUp()). Returns how many it applied.
  Result<size_t> Follow();
  // Standby whose store was just promoted: verify against the store (rebuild if it
  // diverged), then lead as Start() does. *rebuilt tells which path it took.
  Status Promote(bool* rebuilt = nullptr);
  // Stops the writer and reactors; containers keep running (they outlive the master).
  void Stop();

  // Decides and commits one command; returns once its events are durable.
  // kUnavailable when this master does not lead or cannot write; in corrupt-history
  // mode CorruptHistoryError.
  Result<CommandResult> Execute(Command command);

  // Encodes the published state and stores it as the latest snapshot (the store
  // keeps only the latest). Leader only (the standby's store is read-only).
  Result<SnapshotInfo> WriteSnapshot();
  // Where the last Load() started: the snapshot position (0 = whole log) and how
  // many events it replayed after it.
  std::pair<uint64_t, uint64_t> LoadedFrom() const { return {loaded_from_, replayed_}; }

  // Runs fn(const State&) under the published state's shared lock.
  template <typename F>
  auto Read(F&& fn) const {
    ReaderLock lock(&published_mu_);
    return fn(published_);
  }

  // Runs fn(const State&, const Run*) under the published state's shared lock with
  // run `id`: open (in the state) or folded (read back from the read model); null
  // when there is neither (or its record cannot be read: logged).
  template <typename F>
  auto ReadRun(const std::string& id, F&& fn) const {
    ReaderLock lock(&published_mu_);
    if (const Run* run = published_.FindRun(id)) return fn(published_, run);
    std::optional<Run> folded = LoadFolded(published_, id);
    return fn(published_, folded ? &*folded : nullptr);
  }
  // GET /v1/runs: open and folded runs (views.h ListRuns).
  Result<RunPage> ListRuns(const RunQuery& q) const;
  // The read model, for readers (null without archive_runs).
  const RunArchive* archive() const { return reading_.get(); }

  // The backend's last word on each watched container (empty for an unwatched backend).
  std::map<std::string, ContainerDescription> BackendStates() const {
    MutexLock lock(&watch_mu_);
    return watched_;
  }

  // Assignments and cancels for a container's poll, from the published state.
  DispatchView DispatchFor(const std::string& container, const std::vector<std::string>& running,
                           const std::vector<std::string>& reported) const;
  // Long-poll support: the generation increments after every commit.
  uint64_t Generation() const { return generation_.load(); }
  // Waits until Generation() != seen or the timeout passes.
  void WaitForChange(uint64_t seen, Micros timeout) const;
  // Waits until the writer has ticked (OnTick: the pool, leases, retry timers,
  // timeouts) at `at` or later on the engine's clock, and published what the tick
  // decided; false if `timeout` of real time passed or the engine stopped first. With
  // a ManualClock a test moves the clock and waits for the tick it caused, instead of
  // sleeping: the writer's wait for its next tick is a timer on the injected clock.
  bool AwaitTick(TimePoint at, Micros timeout = std::chrono::seconds(30)) const;

  // The container protocol's authentication: OK when `credential` is the secret
  // minted for `container` (credentials.h) and the container is requested or
  // registered; kUnauthenticated otherwise (unknown, lost, released, or a wrong or
  // missing credential: one answer for all, so it tells nothing about which).
  Status AuthenticateContainer(const std::string& container, std::string_view credential) const;

  // Records that a container was heard from (polls and registrations are not
  // events; leases are tracked here and expire through Tick commands).
  void Heartbeat(const std::string& container);

  uint64_t epoch() const { return epoch_.load(); }
  Role role() const { return role_.load(); }
  // Leader: stop leading now (role kDeposed, every command refused, on_deposed).
  void StepDown(const std::string& reason);
  // An epoch seen elsewhere (an agent's epoch_seen): above ours, and confirmed by
  // options().epoch_witness, means a newer leader exists, so this one steps down
  // (kUnavailable); unconfirmed, the claim is refused (kConflict naming
  // epoch_seen) and nothing changes. The API calls it first
  // on every container poll: in corrupt-history mode it refuses the poll (a poll
  // is a write of the container protocol) with CorruptHistoryError.
  Status ObserveEpoch(uint64_t seen);
  // Why this master was deposed (empty otherwise).
  std::string deposed_reason() const;
  // False once a storage fault stopped this engine (header comment).
  bool healthy() const { return !failed_.load(); }
  // The store's error that stopped this engine (OK while healthy).
  Status storage_fault() const;
  // What commands are answered with once a storage fault stopped this engine:
  // InsufficientStorageError for a full disk, else kUnavailable.
  Status StorageFaultStatus() const;
  bool ready() const { return ready_.load(); }
  // Corrupt-history mode (header comment): every write refused.
  bool corrupt_history() const { return corrupt_.load(); }
  HistoryCheck history() const;
  const EngineStats& stats() const { return stats_; }
  const EngineOptions& options() const { return options_; }
  storage::EventStore* store() const { return store_; }
  const Clock* clock() const { return clock_; }

 private:
  struct Pending {
    Command command;
    std::promise<Result<CommandResult>> promise;
  };

  // Replays (from the latest snapshot) into working_; with `upto`, only the events
  // up to that position (from a snapshot at or before it).
  Status Load(uint64_t upto = kWholeLog);
  Status Lead();  // LeaderElected, reconcile, start the writer
  Status ApplyFromStore(bool mirror, uint64_t* count, uint64_t upto = kWholeLog);
  // Start() after Load() failed: a broken chain is refused, or served read-only.
  Status StartOnCorruptHistory(const Status& load_error);
  void VerifyInBackground();  // the verifier thread
  // Switches to corrupt-history mode; `serving`: a leader that was writing (stops
  // its writer) rather than a start.
  void EnterCorruptHistory(uint64_t first_bad, const std::string& problem, bool serving);
  void SetHistory(HistoryCheck h);
  Status CorruptHistoryStatus() const;
  // Storage faults: records the first fault, turns failed_ on, says so critically.
  void FailOnStorage(const Status& fault);
  // Writer thread: answers the group and everything queued with the storage fault
  // and stops the writer.
  void RefuseAfterStorageFault(std::vector<std::unique_ptr<Pending>>& group);
  // storage.minFreeBytes: OK, or InsufficientStorageError naming the free bytes and
  // the threshold. Asks the store at most once every free_space_interval.
  Status CheckFreeSpace();

  static constexpr uint64_t kWholeLog = ~uint64_t{0};
  // A folded run read back for readers (ReadRun); nullopt when none or unreadable.
  std::optional<Run> LoadFolded(const State& s, const std::string& id) const;
  // Whether the read model is complete for this format (its marker).
  bool ReadModelComplete();
  // Writes what the recording archive collected outside an append (a rebuild).
  Status FlushArchive();
  // After a rebuild: flushes, then marks the read model complete (synced).
  Status MarkReadModelComplete();
  void WriterLoop();
  std::vector<std::string> ExpiredLeases(TimePoint now);
  // Writer thread: every watch_interval, hands the live containers' handles to the
  // reactor, which asks the backend and reports the gone ones (ContainerExited).
  void MaybeWatch(TimePoint now);
  void ReactorLoop();
  void SnapshotLoop();
  void PostReactor(std::function<void()> task);

  EngineOptions options_;  // set before Start() (SetAdvertiseUrl too), read-only after
  storage::EventStore* store_;
  ContainerBackend* backend_;
  const Clock* clock_;
  std::atomic<uint64_t> epoch_{0};
  std::atomic<Role> role_{Role::kStarting};
  mutable Mutex deposed_mu_;
  std::string deposed_reason_ GUARDED_BY(deposed_mu_);
  std::string applied_hash_;    // hash of the event at published_.head (standby thread)

  State working_;  // writer thread only (before it starts: the Start/Follow/Promote caller's)
  // The read model (archive_runs): the leader's writer folds through recording_ (its
  // writes join each group's append), published_ and a standby through reading_; a
  // replay through either (recording_ when it rebuilds). working_archive_ is the one
  // working_ evolves through (null: no archive), owned like working_.
  std::unique_ptr<RecordingArchive> recording_;
  std::unique_ptr<ReadingArchive> reading_;
  RunArchive* working_archive_ = nullptr;
  std::atomic<bool> inputs_hashed_{false};  // set by files_' hashing thread (declared first)
  // What decide may read of files (declared inputs, cached outputs); hashes on a
  // thread of its own.
  DiskFiles files_;
  ContainerCredentials credentials_;  // minted by decide, taken by the pool reactor
  mutable SharedMutex published_mu_;
  State published_ GUARDED_BY(published_mu_);

  Mutex queue_mu_;
  CondVar queue_cv_;
  std::deque<std::unique_ptr<Pending>> queue_ GUARDED_BY(queue_mu_);
  bool stopping_ GUARDED_BY(queue_mu_) = false;

  // Guards nothing itself (generation_ and started_ are atomic): waiters check them
  // under it, and writers change generation_ under it, so that no wakeup is lost.
  mutable Mutex change_mu_;
  mutable CondVar change_cv_;
  std::atomic<uint64_t> generation_{0};
  // When (on clock_) the writer last ticked, set once the tick's events are published.
  TimePoint last_tick_ GUARDED_BY(change_mu_){};
  // The writer's subscription to clock_'s moves (a ManualClock's), which wake it.
  uint64_t clock_subscription_ = 0;

  Mutex lease_mu_;
  std::map<std::string, TimePoint> last_seen_ GUARDED_BY(lease_mu_);

  Mutex reactor_mu_;
  CondVar reactor_cv_;
  std::deque<std::function<void()>> reactor_tasks_ GUARDED_BY(reactor_mu_);
  bool reactor_stopping_ GUARDED_BY(reactor_mu_) = false;

  // The watch of a Watched() backend: the last answer per container (shown by
  // /v1/containers), and whether a round of Describe calls is still running.
  mutable Mutex watch_mu_;
  std::map<std::string, ContainerDescription> watched_ GUARDED_BY(watch_mu_);
  std::map<std::string, TimePoint> queued_seen_ GUARDED_BY(watch_mu_);  // last "pending" answer
  std::atomic<bool> watch_in_flight_{false};
  TimePoint next_watch_{};  // writer thread

  std::thread writer_, reactor_, snapshotter_, verifier_;
  mutable Mutex history_mu_;
  HistoryCheck history_ GUARDED_BY(history_mu_);
  std::atomic<bool> corrupt_{false};
  Mutex snapshot_mu_;
  CondVar snapshot_cv_;
  bool snapshot_due_ GUARDED_BY(snapshot_mu_) = false;
  bool snapshot_stopping_ GUARDED_BY(snapshot_mu_) = false;
  uint64_t last_snapshot_ = 0;          // writer thread
  std::atomic<uint64_t> loaded_from_{0}, replayed_{0};
  std::atomic<bool> failed_{false};
  mutable Mutex fault_mu_;
  Status storage_fault_ GUARDED_BY(fault_mu_);  // set once, with failed_
  Mutex space_mu_;
  bool space_checked_ GUARDED_BY(space_mu_) = false;
  TimePoint space_checked_at_ GUARDED_BY(space_mu_) = {};
  uint64_t free_bytes_ GUARDED_BY(space_mu_) = 0;  // the last answer
  std::atomic<bool> ready_{false};
  std::atomic<bool> started_{false};
  EngineStats stats_;
};

}  // namespace epoch::engine
