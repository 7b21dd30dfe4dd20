// EventStore: Epoch's durable, totally ordered, hash-chained event log.
//
// The store moves bytes: an event's `data` is an opaque string (the engine puts
// canonical JSON there); the store knows nothing of runs or jobs. Every event has
// a global position (dense, from 1) and belongs to one stream, where it has a
// version (dense, from 1). Each envelope carries the SHA-256 of its predecessor
// (`prev_hash`) and of its own canonical encoding (`hash`), so any change to a
// stored event is detected on read.
//
// Durability: Append returns only after its events are in one RocksDB WriteBatch
// written with sync=true. Concurrent Append calls are group-committed: one caller
// leads, takes every queued append, writes them in one synced batch, and each
// caller learns its own positions or its own error (a version conflict fails only
// that caller's append).
//
// Storage faults: a write that fails (a full disk, an I/O error) makes the store
// refuse every later write with that error (WriteFailure()); it never writes to
// RocksDB again, which is what a RocksDB built with assertions needs (it aborts
// on a write to a file that already failed). A full disk is IsNoSpace.
//
// Thread-safety: all methods are safe to call from any thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/clock.h"
#include "common/status.h"

namespace epoch::storage {

class EventPage;  // storage/event_page.h

struct Envelope {
  uint64_t position = 0;
  std::string stream;
  uint64_t version = 0;
  std::string type;
  uint32_t schema = 1;
  std::string time;  // RFC 3339 UTC with microseconds
  uint64_t epoch = 0;
  std::string actor;
  std::string data;       // opaque bytes (canonical JSON by convention)
  std::string prev_hash;  // 64 hex digits; 64 zeros for position 1
  std::string hash;       // 64 hex digits
};

// An event to append: the store fills position, version, time, epoch, hashes.
struct NewEvent {
  std::string type;
  uint32_t schema = 1;
  std::string actor;
  std::string data;
};

// The detail that marks a store error caused by a full filesystem (ENOSPC, RocksDB's
// NoSpace): details()[0] of the error a write (or an open) returns then.
inline constexpr std::string_view kNoSpaceDetail = "no_space";
inline bool IsNoSpace(const Status& st) {
  return !st.ok() && !st.details().empty() && st.details()[0] == kNoSpaceDetail;
}

inline constexpr uint64_t kAnyVersion = std::numeric_limits<uint64_t>::max();
inline constexpr uint64_t kNoStream = 0;  // expected_version: the stream must not exist yet

struct StreamAppend {
  std::string stream;
  uint64_t expected_version = kAnyVersion;  // else the stream's current version must equal it
  std::vector<NewEvent> events;
};

// The read model: records derived from the log that readers query instead of a
// master's memory (the engine keeps finished runs there). Two column families of its
// own: `read_records` (the records) and `read_index` (keys that index them). The store
// gives them no meaning; whoever writes them can rebuild them from the log.
enum class ReadModelFamily { kRecords, kIndex };
struct ReadModelWrite {
  ReadModelFamily family = ReadModelFamily::kRecords;
  std::string key;                   // non-empty
  std::optional<std::string> value;  // nullopt: delete the key
};
struct ReadModelEntry {
  std::string key, value;
};

// One atomic unit: every stream append in it commits, or none does.
struct AppendBatch {
  std::vector<StreamAppend> appends;
  std::string time;    // stamped on every event of the batch (RFC 3339)
  uint64_t epoch = 0;  // leader term of the writer
  // Extra index records written in the same WriteBatch: (tenant, key) -> value in
  // the `idempotency` family. A key that already exists is a kConflict.
  // Each pair is {IdempotencyRecordKey(tenant, key), value}, i.e. first is
  // tenant + '\0' + key (the tenant has no NUL; the key is non-empty).
  std::vector<std::pair<std::string, std::string>> idempotency;
  // Read-model writes that must agree with these events: written in the same synced
  // WriteBatch (only if the batch commits), in order.
  std::vector<ReadModelWrite> read_model;
};

// The first member of an AppendBatch::idempotency pair: tenant, 0x00, key.
inline std::string IdempotencyRecordKey(const std::string& tenant, const std::string& key) {
  return tenant + std::string(1, '\0') + key;
}

struct AppendResult {
  uint64_t first_position = 0;  // position of the batch's first event
  uint64_t last_position = 0;
  std::vector<uint64_t> stream_versions;  // new version of each StreamAppend, in order
};

struct ReadFilter {
  std::string stream_prefix;       // empty = every stream
  std::vector<std::string> types;  // empty = every type
  std::string actor{};             // empty = every actor
  // Time range [since, until) as RFC 3339 UTC with microseconds (the envelopes' own
  // fixed-width form, so they compare as text); empty = unbounded.
  std::string since{}, until{};
};

struct HeadInfo {
  uint64_t position = 0;  // 0 = empty log
  std::string hash;       // hash of the head event (64 zeros when empty)
};

// What VerifyChain found.
struct ChainReport {
  bool ok = false;
  uint64_t from = 0;           // first position checked
  uint64_t checked = 0;        // events whose encoding, hash and link were checked
  uint64_t head_position = 0;  // the head the walk went to
  std::string head_hash;       // its hash (when ok)
  uint64_t bad_position = 0;   // when !ok: the first position that is wrong
  std::string problem;         // when !ok: what, e.g. "event 42: hash mismatch"
};

// Counters since open, for /metrics and tests.
struct StoreStats {
  uint64_t appends = 0;           // Append calls that committed
  uint64_t append_conflicts = 0;  // Append calls rejected with kConflict
  uint64_t events = 0;            // events committed
  uint64_t commit_groups = 0;     // synced WriteBatches written by Append (group commit:
                                  // commit_groups <= appends)
};

class EventStore {
 public:
  virtual ~EventStore() = default;

  // Appends atomically and durably (see the header comment). Errors:
  //   kConflict           a stream's version differs from expected_version, or an
  //                       idempotency key exists (nothing of the batch is written)
  //   kInvalidArgument    empty batch, empty stream name or type
  //   kFailedPrecondition the store is read-only (secondary) or closed
  //   kInternal           RocksDB failed to write or sync (IsNoSpace: the disk is
  //                       full), now or before: see WriteFailure()
  virtual Result<AppendResult> Append(AppendBatch batch) = 0;

  // Events of one stream with version >= from_version, at most limit.
  virtual Result<std::vector<Envelope>> ReadStream(const std::string& stream, uint64_t from_version,
                                                   size_t limit) = 0;
  // Events of the global log with position > after, matching filter, at most limit.
  // kCorruption (naming the position) when an event's bytes do not match its hash.
  virtual Result<std::vector<Envelope>> ReadAll(uint64_t after, size_t limit,
                                                const ReadFilter& filter = {}) = 0;
  virtual Result<Envelope> ReadAt(uint64_t position) = 0;
  // ReadAll for replay (event_page.h): the page is cleared and filled in place with
  // the events after `after`, at most limit, verified as ReadAll does. The default
  // goes through ReadAll (event_page.cc); the RocksDB store decodes into the page.
  virtual Status ReadPage(uint64_t after, size_t limit, EventPage* page);

  // Audit: walks the hash chain from position `from` to the head, checking that every
  // event is present, decodes, has the hash of its bytes, and names its predecessor's
  // hash. from = 1 checks everything; a later `from` trusts a checkpoint: the event
  // there must have hash `from_hash` (64 hex digits). A broken chain is a report with
  // ok = false naming the first bad position, not an error; errors are for I/O and
  // bad arguments (kInvalidArgument, kNotFound for a `from` past the head).
  virtual Result<ChainReport> VerifyChain(uint64_t from = 1, const std::string& from_hash = "") = 0;

  virtual HeadInfo Head() = 0;
  virtual uint64_t StreamVersion(const std::string& stream) = 0;

  // Blocks until the head passes `after` or the timeout elapses; returns the head.
  virtual uint64_t WaitForHead(uint64_t after, std::chrono::milliseconds timeout) = 0;
  // Calls fn(head) after every commit, on the committing thread; keep it short
  // (post work elsewhere). Returns an id for Unsubscribe.
  virtual uint64_t Subscribe(std::function<void(uint64_t head)> fn) = 0;
  virtual void Unsubscribe(uint64_t id) = 0;

  virtual Result<std::optional<std::string>> GetIdempotency(const std::string& tenant,
                                                            const std::string& key) = 0;
  // Small synced records in the `meta` family (e.g. "epoch", "leader").
  virtual Result<std::optional<std::string>> GetMeta(const std::string& key) = 0;
  virtual Status PutMeta(const std::string& key, const std::string& value) = 0;

  // Snapshots: opaque bytes describing state as of `position`. PutSnapshot keeps
  // only the latest (older ones are deleted in the same synced batch).
  virtual Status PutSnapshot(uint64_t position, const std::string& bytes) = 0;
  virtual Result<std::optional<std::pair<uint64_t, std::string>>> LatestSnapshot() = 0;

  // --- The read model (ReadModelFamily) ---
  // Writes outside any append: what a rebuild from the log derives. Synced when
  // `sync` (a rebuild writes unsynced batches, then one synced marker). Refused like
  // every write on a secondary, a refused store, or after a write failure.
  virtual Status WriteReadModel(const std::vector<ReadModelWrite>& writes, bool sync) {
    (void)writes;
    (void)sync;
    return FailedPrecondition("this event store has no read model");
  }
  virtual Result<std::optional<std::string>> GetReadModel(ReadModelFamily family,
                                                          const std::string& key) {
    (void)family;
    (void)key;
    return FailedPrecondition("this event store has no read model");
  }
  // Entries with from <= key < to (to empty: no upper bound), ascending, or descending
  // when `reverse`; at most `limit`.
  virtual Result<std::vector<ReadModelEntry>> ScanReadModel(ReadModelFamily family,
                                                            const std::string& from,
                                                            const std::string& to, bool reverse,
                                                            size_t limit) {
    (void)family;
    (void)from;
    (void)to;
    (void)reverse;
    (void)limit;
    return FailedPrecondition("this event store has no read model");
  }
  // Deletes every key of both families (synced): the next owner rebuilds them.
  virtual Status ClearReadModel() {
    return FailedPrecondition("this event store has no read model");
  }

  // Approximate size on disk, for /v1/cluster and /metrics.
  virtual uint64_t ApproximateSizeBytes() = 0;

  // Counters since open. Optional: the default reports zeros (e.g. in-memory fakes).
  virtual StoreStats Stats() { return {}; }

  // --- Storage faults ---
  // OK while the store can write. After the first write or sync that failed
  // (Append, ClaimEpoch, PutMeta, PutSnapshot), or a RocksDB background error that
  // stops writes (a flush or WAL write that found the disk full), that error
  // (kInternal; IsNoSpace when the filesystem is full): the outcome of the failed
  // batch is unknown (it may be durable), so the store issues no further write and
  // refuses every one with this error until it is reopened (the process restarts
  // and replays what is durable). Reads keep working. Sticky: the first one stays.
  virtual Status WriteFailure() { return Status::Ok(); }
  // Bytes this process may still write on the store's filesystem (statvfs
  // f_bavail * f_frsize). kInternal when statvfs fails; kFailedPrecondition for a
  // store that has no filesystem (the default, e.g. in-memory fakes).
  virtual Result<uint64_t> AvailableBytes() {
    return FailedPrecondition("this event store has no filesystem");
  }

  // --- HA (DESIGN.md, "HA") ---
  // Fencing: records `epoch` as the highest leader epoch (synced). kConflict when it
  // is not above the one claimed. From then on Append refuses batches stamped with
  // a lower epoch (kFailedPrecondition, "fenced"): a deposed leader cannot append.
  virtual Status ClaimEpoch(uint64_t epoch) = 0;
  virtual uint64_t ClaimedEpoch() = 0;
  // True while the store is a read-only secondary (a standby's view).
  virtual bool read_only() { return false; }
  // Secondary: reads what the primary committed since the last call, re-derives
  // the head (verified, as a reopen would), tells subscribers. Primary: Head().
  virtual Result<HeadInfo> CatchUp() { return Head(); }
  // Secondary: reopens the directory as primary; the caller holds the election
  // lock. The head is then what is durable, which may be *behind* what this
  // secondary had read (it can see writes the old primary never synced).
  virtual Status Promote() { return FailedPrecondition("the store is not a secondary"); }
};

struct StoreOptions {
  std::string path;  // RocksDB directory
  bool create_if_missing = true;
  // Non-empty: open as a RocksDB secondary (read-only, follows the primary with
  // CatchUp) keeping its own info files here.
  std::string secondary_path{};
  // Open even when the last event fails verification (its bytes were changed), so
  // that a corrupt history can still be read (epochd --allow-corrupt-history): the
  // head is then that event's position with the hash the head record kept, reads
  // that reach it are kCorruption naming it, and every write (Append, ClaimEpoch,
  // PutMeta, PutSnapshot) is refused with kCorruption. Without it such a store
  // does not open (kCorruption naming the event). A log that ends before its head
  // record (a missing tail) never opens.
  bool open_corrupt_head = false;
  // Tests only: called by the group leader before each synced write; returning true
  // makes that write fail as if RocksDB had returned an I/O error (nothing is
  // written). Exercises the kInternal-then-refuse policy of Append.
  std::function<bool()> fail_write_for_testing = nullptr;
  // Tests only: with fail_write_for_testing, the injected error is RocksDB's
  // NoSpace (a full disk) instead of a plain I/O error.
  bool fail_write_no_space_for_testing = false;
};

// Opens (creating if asked) the RocksDB store at options.path as primary.
Result<std::unique_ptr<EventStore>> OpenRocksDbEventStore(const StoreOptions& options);

}  // namespace epoch::storage
