// Internal to storage/: RocksDbEventStore, the EventStore (storage/event_store.h)
// over one RocksDB instance (storage/rocksdb_db.h), as primary or as a standby's
// secondary. Only OpenRocksDbEventStore makes one. Its members are defined in
//   rocksdb_event_store.cc  open and recovery, the standby (CatchUp, Promote),
//                           fencing (ClaimEpoch), the failure policy, meta,
//                           idempotency records, snapshots, stats;
//   rocksdb_append.cc       Append: the group commit (writer queue, validation,
//                           CommitGroup) and the notification of subscribers;
//   rocksdb_read_model.cc   the read model's families (reads, rebuild writes);
//   rocksdb_read.cc         reads (ReadStream, ReadAll, ReadPage, ReadAt), VerifyChain, the
//                           head and stream versions, WaitForHead, subscriptions.
// Each file's top comment says how its part works. Not an interface for anything
// outside storage/.
//
// Thread-safety: every public method may be called from any thread. The mutexes:
// db_mu_ (which instance), claim_mu_ (ClaimEpoch's read-modify-write), queue_mu_
// (the writer queue, the refusal), state_mu_ (the published head, the version
// cache, stats, the fence), sub_mu_ (the subscribers); what each guards is
// annotated below. A group's leader validates and writes with none held.
#pragma once

#include <rocksdb/db.h>

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "common/mutex.h"
#include "common/status.h"
#include "storage/codec.h"
#include "storage/event_store.h"
#include "storage/rocksdb_db.h"

namespace epoch::storage::internal {

class RocksDbEventStore final : public EventStore {
 public:
  RocksDbEventStore(std::shared_ptr<Db> db, StoreOptions options,
                    std::shared_ptr<WriteFault> fault);
  ~RocksDbEventStore() override;

  // Reads the head from the last event (verifying it) and cross-checks the `meta`
  // head record written with every batch (detects a truncated log). Also loads
  // the fencing epoch.
  Status Recover();
  Status Recover(const std::shared_ptr<Db>& d);

  // rocksdb_event_store.cc
  bool read_only() override;
  Result<HeadInfo> CatchUp() override;
  Status Promote() override;
  Status ClaimEpoch(uint64_t epoch) override;
  uint64_t ClaimedEpoch() override;
  Result<std::optional<std::string>> GetIdempotency(const std::string& tenant,
                                                    const std::string& key) override;
  Result<std::optional<std::string>> GetMeta(const std::string& key) override;
  Status PutMeta(const std::string& key, const std::string& value) override;
  Status PutSnapshot(uint64_t position, const std::string& bytes) override;
  Result<std::optional<std::pair<uint64_t, std::string>>> LatestSnapshot() override;
  uint64_t ApproximateSizeBytes() override;
  StoreStats Stats() override;
  Status WriteFailure() override;
  Result<uint64_t> AvailableBytes() override;

  // rocksdb_read_model.cc
  Status WriteReadModel(const std::vector<ReadModelWrite>& writes, bool sync) override;
  Result<std::optional<std::string>> GetReadModel(ReadModelFamily family,
                                                  const std::string& key) override;
  Result<std::vector<ReadModelEntry>> ScanReadModel(ReadModelFamily family, const std::string& from,
                                                    const std::string& to, bool reverse,
                                                    size_t limit) override;
  Status ClearReadModel() override;

  // rocksdb_append.cc
  Result<AppendResult> Append(AppendBatch batch) override;

  // rocksdb_read.cc
  Result<std::vector<Envelope>> ReadStream(const std::string& stream, uint64_t from_version,
                                           size_t limit) override;
  Result<std::vector<Envelope>> ReadAll(uint64_t after, size_t limit,
                                        const ReadFilter& filter) override;
  Status ReadPage(uint64_t after, size_t limit, EventPage* page) override;
  Result<ChainReport> VerifyChain(uint64_t from, const std::string& from_hash) override;
  Result<Envelope> ReadAt(uint64_t position) override;
  HeadInfo Head() override;
  uint64_t StreamVersion(const std::string& stream) override;
  uint64_t WaitForHead(uint64_t after, std::chrono::milliseconds timeout) override;
  uint64_t Subscribe(std::function<void(uint64_t head)> fn) override;
  void Unsubscribe(uint64_t id) override;

 private:
  // One Append call waiting in the queue. Fields other than batch/bytes are
  // written by the leader that takes it; result/done under queue_mu_. (They are not
  // GUARDED_BY: the analysis cannot name the store's queue_mu_ from a Writer, which
  // lives on its Append call's stack.)
  struct Writer {
    AppendBatch batch;
    size_t bytes = 0;
    Status pending;                                     // leader: this writer's error
    Result<AppendResult> staged = AppendResult{};       // leader: its result if committed
    Result<AppendResult> result = Internal("not run");  // handed over under queue_mu_
    bool done = false;                                  // queue_mu_
    CondVar cv;                                         // with queue_mu_
  };

  // A consistent view across column families for one read call. A secondary has
  // no snapshots; it needs none: events and index entries are never rewritten,
  // and reads stop at the published head, which CatchUp() moves only after the
  // records up to it are applied.
  struct SnapshotReads {
    explicit SnapshotReads(const Db& d)
        : db(d.db), snapshot(d.secondary ? nullptr : d.db->GetSnapshot()) {
      options.snapshot = snapshot;
    }
    ~SnapshotReads() {
      if (snapshot) db->ReleaseSnapshot(snapshot);
    }
    rocksdb::DB* db;
    const rocksdb::Snapshot* snapshot;
    rocksdb::ReadOptions options;
  };

  std::shared_ptr<Db> db() {
    MutexLock lock(&db_mu_);
    return db_;
  }

  // ReadAll's and ReadPage's walk of the log after `after` (rocksdb_read.cc).
  template <typename Take>
  Status ScanLog(uint64_t after, const rocksdb::ReadOptions& options, Take take);

  // Recovery (rocksdb_event_store.cc).
  // The last event's position and hash (verified), cross-checked with the head record.
  std::pair<uint64_t, Result<Digest>> LoadHead(const Db& d);
  // open_corrupt_head: LoadHead failed with `error`. When that is the last event
  // failing verification (not a missing one), its position and the hash the head
  // record kept for it; else `error`.
  Result<std::pair<uint64_t, Digest>> CorruptHead(const Db& d, const Status& error);
  Result<uint64_t> LoadFence(const Db& d);

  // The failure policy (rocksdb_event_store.cc).
  // A write failed with err: from now on the store refuses every write (the
  // first failure recorded is what later writes get). Returns err.
  Status Failed(Status err);
  // Why every write is refused: the corrupt head it opened on, or the write
  // failure (OK: writes go on).
  Status WriteRefusal();

  // Point reads of a family's record (rocksdb_event_store.cc).
  Result<std::optional<std::string>> GetOptional(const Db& d, rocksdb::ColumnFamilyHandle* cf,
                                                 const std::string& key, std::string_view what);

  // Reads (rocksdb_read.cc).
  Status ReadVerified(const Db& d, const rocksdb::ReadOptions& ro, uint64_t position, Envelope* env,
                      Digest* hash = nullptr);
  // The stream's last version in the `streams` index (0 = no stream).
  Result<uint64_t> LoadStreamVersion(const std::string& stream);

  // The group commit (rocksdb_append.cc).
  // Leader only: the committed version of a stream, from the cache or the index.
  Result<uint64_t> CommittedVersion(const std::string& stream);
  // Validates the writer against committed state plus the group so far
  // (group_versions, group_keys). On success: *mine holds the writer's new stream
  // versions (the caller merges them into the group), (*bases)[i] the version of
  // appends[i]'s stream before it, *keys the encoded idempotency keys.
  Status Validate(const Db& d, uint64_t fence, const Writer& w,
                  const std::unordered_map<std::string, uint64_t>& group_versions,
                  const std::unordered_set<std::string>& group_keys,
                  std::unordered_map<std::string, uint64_t>* mine, std::vector<uint64_t>* bases,
                  std::vector<std::string>* keys);
  // Leader only, no locks held on entry. Validates, encodes and commits the group;
  // sets each writer's pending/staged. Returns the new head, or 0 if nothing was
  // committed.
  uint64_t CommitGroup(const std::vector<Writer*>& group);
  // On the leader's thread, no store lock held; serial across commits.
  void NotifySubscribers(uint64_t head);

  Mutex db_mu_;
  std::shared_ptr<Db> db_ GUARDED_BY(db_mu_);  // replaced once, by Promote()
  const StoreOptions options_;
  Mutex claim_mu_;  // serializes ClaimEpoch (the meta "epoch" record's read-modify-write)

  Mutex queue_mu_;
  std::deque<Writer*> writers_ GUARDED_BY(queue_mu_);
  // Non-OK: opened on a corrupt head (open_corrupt_head).
  Status refused_ GUARDED_BY(queue_mu_);
  const std::shared_ptr<WriteFault> fault_;  // the sticky write failure (also the listeners')

  Mutex state_mu_;
  CondVar head_cv_;
  uint64_t head_position_ GUARDED_BY(state_mu_) = 0;  // written only by the leader
  Digest head_hash_ GUARDED_BY(state_mu_) = {};
  std::unordered_map<std::string, uint64_t> versions_ GUARDED_BY(state_mu_);  // committed
  StoreStats stats_ GUARDED_BY(state_mu_);
  bool closing_ GUARDED_BY(state_mu_) = false;
  uint64_t fence_epoch_ GUARDED_BY(state_mu_) = 0;

  Mutex sub_mu_;
  uint64_t next_subscriber_ GUARDED_BY(sub_mu_) = 0;
  std::map<uint64_t, std::shared_ptr<std::function<void(uint64_t)>>> subscribers_
      GUARDED_BY(sub_mu_);
};

}  // namespace epoch::storage::internal
