// RocksDbEventStore: the EventStore over one RocksDB instance opened as primary.
//
// Writes (group commit, LevelDB's writer queue): every Append call enqueues a
// Writer and waits. The writer at the front of the queue is the leader: it takes a
// group of queued writers (bounded by kMaxGroupBytes), and, without holding the
// queue lock, validates each one against the stream versions (an in-memory cache of
// committed versions, filled lazily from the `streams` family, plus the versions
// the group's earlier writers will create), assigns positions, extends the hash
// chain, and adds the accepted writers' records to ONE rocksdb::WriteBatch written
// with sync=true. Then it publishes the new head (state_mu_), calls the
// subscribers, hands every follower its own result and wakes the next leader. A
// writer that fails validation (kConflict) gets its error and contributes nothing;
// the rest of the group commits. Subscribers therefore run serially, in commit order.
//
// Failure policy: if the synced write fails, the outcome of that batch is unknown
// (the WAL may hold it). Its callers get kInternal ("possibly written"), the
// in-memory head/versions are not advanced, and the store refuses every later
// write (Append, ClaimEpoch, PutMeta, PutSnapshot) with that error without
// calling RocksDB; the process must reopen the store (and replay) to learn what
// is durable. Reads keep working. The same happens when RocksDB reports a
// background error that stops writes (FaultListener: a flush that found the disk
// full), and RocksDB's own recovery from it is turned off: one place (here)
// decides, and the answer is always "reopen". A full disk (ENOSPC, NoSpace) is
// marked with kNoSpaceDetail.
//
// Why nothing may write after a failure: RocksDB 7.8 (Debian's build keeps its
// assertions) aborts the process on any write to a file whose writer has failed
// before (WritableFileWriter::AssertFalseAndGetStatusForPrevError,
// "sync_without_flush_called_"). Its own info log (the LOG file) is such a file,
// and RocksDB writes it from every thread, including the error handler that
// reports the first failure: on a full disk the second LOG line aborted epochd.
// So the info log is ours (InfoLog): plain write(2) calls that drop a line the
// disk cannot take.
//
// Reads: take the published head (never return events beyond it), read through a
// RocksDB snapshot, decode and re-hash every event, and check the chain links.
//
// Standby (secondary): the same class over a RocksDB secondary instance. Append
// and the meta/snapshot writes answer kFailedPrecondition; CatchUp() tails the
// primary (TryCatchUpWithPrimary) and re-derives the head exactly as a reopen
// would. Promote() opens the directory as primary (the caller holds the election
// lock) and swaps the instance under the readers: every call takes a reference to
// the current `Db`, so a read that started on the secondary finishes on it.
//
// Fencing: the `meta` family's "epoch" record is the highest leader epoch claimed
// (ClaimEpoch). Append refuses a batch stamped with a lower epoch, so a deposed
// leader's engine that shares this store cannot append behind its successor.

#include <fcntl.h>
#include <rocksdb/db.h>
#include <rocksdb/env.h>
#include <rocksdb/listener.h>
#include <rocksdb/options.h>
#include <rocksdb/slice.h>
#include <rocksdb/write_batch.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <deque>
#include <map>
#include <unordered_map>
#include <unordered_set>

#include "common/fd.h"
#include "common/mutex.h"
#include "storage/codec.h"
#include "storage/event_store.h"

namespace epoch::storage {
namespace {

// A group stops growing once it holds this many bytes of payload (the leader's own
// append always goes in).
constexpr size_t kMaxGroupBytes = 4u << 20;
// The stream-version cache is only a cache: past this size the leader drops it and
// reloads versions lazily from the `streams` family.
constexpr size_t kMaxCachedStreams = 1u << 20;
// `meta` record of the highest claimed leader epoch (the fence).
constexpr char kEpochMetaKey[] = "epoch";

// RocksDB says the filesystem is full (ENOSPC surfaces as IOError/NoSpace).
bool RocksNoSpace(const rocksdb::Status& s) {
  return s.IsNoSpace() ||
         (s.IsIOError() && s.ToString().find("No space left on device") != std::string::npos);
}

Status FromRocks(const rocksdb::Status& s, std::string_view context) {
  std::string msg = std::string(context) + ": " + s.ToString();
  if (RocksNoSpace(s)) {
    return Status(StatusCode::kInternal, std::move(msg), {std::string(kNoSpaceDetail)});
  }
  if (s.IsCorruption()) return Corruption(std::move(msg));
  if (s.IsNotFound()) return NotFound(std::move(msg));
  if (s.IsBusy() || s.IsTimedOut() || s.IsTryAgain()) return Unavailable(std::move(msg));
  // Another process holds the DB's LOCK file: it is the primary (leader).
  if (s.IsIOError() && s.ToString().find("lock") != std::string::npos) {
    return Unavailable(std::move(msg));
  }
  return Internal(std::move(msg));
}

bool Matches(const Envelope& env, const ReadFilter& filter) {
  if (!filter.stream_prefix.empty() && !env.stream.starts_with(filter.stream_prefix)) {
    return false;
  }
  if (!filter.types.empty() &&
      std::find(filter.types.begin(), filter.types.end(), env.type) == filter.types.end()) {
    return false;
  }
  if (!filter.actor.empty() && env.actor != filter.actor) return false;
  if (!filter.since.empty() && env.time < filter.since) return false;
  if (!filter.until.empty() && env.time >= filter.until) return false;
  return true;
}

Status ValidateBatch(const AppendBatch& batch, size_t* bytes) {
  if (batch.appends.empty()) return InvalidArgument("empty append batch");
  constexpr size_t kMaxField = std::numeric_limits<uint32_t>::max();
  size_t total = batch.time.size();
  if (batch.time.size() > kMaxField) return ResourceExhausted("time too long");
  for (const StreamAppend& sa : batch.appends) {
    RETURN_IF_ERROR(codec::ValidateName("stream name", sa.stream));
    if (sa.stream.size() > kMaxField) return ResourceExhausted("stream name too long");
    if (sa.events.empty()) return InvalidArgument("append to " + sa.stream + " has no events");
    for (const NewEvent& e : sa.events) {
      if (e.type.empty()) return InvalidArgument("event of " + sa.stream + " has an empty type");
      if (e.type.size() > kMaxField || e.actor.size() > kMaxField || e.data.size() > kMaxField) {
        return ResourceExhausted("event of " + sa.stream + " is too large");
      }
      total += sa.stream.size() + e.type.size() + e.actor.size() + e.data.size() + 128;
    }
  }
  for (const auto& [record_key, value] : batch.idempotency) {
    size_t nul = record_key.find('\0');
    if (nul == std::string::npos || nul + 1 == record_key.size()) {
      return InvalidArgument("an idempotency record key must be tenant, NUL, non-empty key");
    }
    total += record_key.size() + value.size();
  }
  *bytes = total;
  return Status::Ok();
}

// RocksDB's info log, written by us (see the header comment): each line is one
// write(2) to <dir>/LOG, opened O_APPEND; a line the filesystem cannot take is
// dropped, and the next line is tried again (nothing is buffered, so nothing is
// left half-written behind a failure). A LOG past kMaxInfoLogBytes at
// open is renamed LOG.old (replacing the one before). Thread-safe: a line is one
// write(2) call.
class InfoLog final : public rocksdb::Logger {
 public:
  static constexpr off_t kMaxInfoLogBytes = 64 << 20;

  explicit InfoLog(const std::string& dir) : rocksdb::Logger(rocksdb::InfoLogLevel::INFO_LEVEL) {
    std::string path = dir + "/LOG";
    struct stat st {};
    if (::stat(path.c_str(), &st) == 0 && st.st_size > kMaxInfoLogBytes) {
      // Best effort: a LOG that cannot be renamed keeps growing.
      (void)::rename(path.c_str(), (dir + "/LOG.old").c_str());
    }
    // Unopenable (a full disk with no room for the file): every line is dropped.
    fd_.reset(::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644));
    if (!fd_) {
      std::fprintf(stderr, "the RocksDB info log %s cannot be opened (%s): its lines are dropped\n",
                   path.c_str(), std::strerror(errno));
    }
  }
  using rocksdb::Logger::Logv;
  void Logv(const char* format, va_list ap) override {
    if (!fd_) return;
    char buf[4096];
    struct timeval now {};
    ::gettimeofday(&now, nullptr);
    struct tm t {};
    ::localtime_r(&now.tv_sec, &t);
    int n = std::snprintf(buf, sizeof(buf), "%04d/%02d/%02d-%02d:%02d:%02d.%06ld %lx ",
                          t.tm_year + 1900, t.tm_mon + 1, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec,
                          static_cast<long>(now.tv_usec), static_cast<unsigned long>(::gettid()));
    if (n < 0) n = 0;
    size_t len = static_cast<size_t>(n);
    va_list copy;
    va_copy(copy, ap);
    int m = std::vsnprintf(buf + len, sizeof(buf) - len - 1, format, copy);
    va_end(copy);
    if (m > 0) len = std::min(sizeof(buf) - 2, len + static_cast<size_t>(m));
    if (len == 0 || buf[len - 1] != '\n') buf[len++] = '\n';
    ssize_t written = ::write(fd_.get(), buf, len);
    (void)written;  // a short or failed write (ENOSPC) drops the line: never fatal
  }

 private:
  UniqueFd fd_;
};

// The store's sticky write failure (see the header comment), shared by the store
// and the RocksDB listeners of its instances (a listener may outlive the store
// while a reader holds the instance). The first failure stays.
class WriteFault {
 public:
  Status Get() const {
    MutexLock lock(&mu_);
    return status_;
  }
  // Records st unless a failure is recorded already.
  void Set(Status st) {
    MutexLock lock(&mu_);
    if (status_.ok()) status_ = std::move(st);
  }

 private:
  mutable Mutex mu_;
  Status status_ GUARDED_BY(mu_);
};

// A RocksDB error that stops writes, as the store reports it.
Status WriteFailed(const rocksdb::Status& s, std::string_view what) {
  std::string msg = std::string(what) + ": " + s.ToString() +
                    " (the store refuses every write until it is reopened)";
  if (RocksNoSpace(s)) {
    return Status(StatusCode::kInternal, "the filesystem is full: " + msg,
                  {std::string(kNoSpaceDetail)});
  }
  return Internal(std::move(msg));
}

// RocksDB's background errors (a flush, a compaction, a WAL or MANIFEST write
// that failed) for the store: one that stops writes (severity hard or worse)
// becomes the store's write failure, and RocksDB's automatic recovery is turned
// off, because the store never writes again until it is reopened. A soft error (a
// compaction that found the disk full) changes nothing: writes still work.
class FaultListener final : public rocksdb::EventListener {
 public:
  explicit FaultListener(std::shared_ptr<WriteFault> fault) : fault_(std::move(fault)) {}

  void OnBackgroundError(rocksdb::BackgroundErrorReason reason, rocksdb::Status* error) override {
    if (error == nullptr || error->severity() < rocksdb::Status::Severity::kHardError) return;
    // A foreground write's own failure: the store's call records it with its
    // context as soon as RocksDB returns it.
    if (reason == rocksdb::BackgroundErrorReason::kWriteCallback ||
        reason == rocksdb::BackgroundErrorReason::kMemTable) {
      return;
    }
    fault_->Set(WriteFailed(*error, "RocksDB stopped writes after a background error (" +
                                        std::string(ReasonName(reason)) + ")"));
  }
  // Called right after OnBackgroundError when RocksDB would recover by itself (a
  // full disk: once space returns). After an error that stops writes the store
  // never writes again, so RocksDB need not flush and switch files behind it. A
  // soft error keeps its recovery: without it RocksDB would stop flushing, and
  // writes would stall for good.
  void OnErrorRecoveryBegin(rocksdb::BackgroundErrorReason, rocksdb::Status error,
                            bool* auto_recovery) override {
    if (error.severity() >= rocksdb::Status::Severity::kHardError) *auto_recovery = false;
    error.PermitUncheckedError();
  }

 private:
  static std::string_view ReasonName(rocksdb::BackgroundErrorReason r) {
    switch (r) {
      case rocksdb::BackgroundErrorReason::kFlush: return "flush";
      case rocksdb::BackgroundErrorReason::kCompaction: return "compaction";
      case rocksdb::BackgroundErrorReason::kWriteCallback: return "write";
      case rocksdb::BackgroundErrorReason::kMemTable: return "memtable";
      case rocksdb::BackgroundErrorReason::kManifestWrite: return "manifest write";
      case rocksdb::BackgroundErrorReason::kFlushNoWAL: return "flush";
      case rocksdb::BackgroundErrorReason::kManifestWriteNoWAL: return "manifest write";
    }
    return "background";
  }

  std::shared_ptr<WriteFault> fault_;
};

// One open RocksDB instance (primary or secondary) with its column families.
struct Db {
  rocksdb::DB* db = nullptr;
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::ColumnFamilyHandle* events = nullptr;
  rocksdb::ColumnFamilyHandle* streams = nullptr;
  rocksdb::ColumnFamilyHandle* meta = nullptr;
  rocksdb::ColumnFamilyHandle* snapshots = nullptr;
  rocksdb::ColumnFamilyHandle* idempotency = nullptr;
  bool secondary = false;

  Db() = default;
  Db(const Db&) = delete;
  Db& operator=(const Db&) = delete;
  ~Db() {
    if (!db) return;
    for (rocksdb::ColumnFamilyHandle* h : handles) {
      // Best effort at shutdown: a failure here leaves nothing for us to undo.
      (void)db->DestroyColumnFamilyHandle(h);
    }
    (void)db->Close();
    delete db;
  }
};

// Opens path as primary, or as a secondary when secondary_path is not empty.
// Background errors that stop writes go to `fault`.
Result<std::shared_ptr<Db>> OpenDb(const std::string& path, const std::string& secondary_path,
                                   bool create_if_missing, std::shared_ptr<WriteFault> fault) {
  rocksdb::Options db_options;
  db_options.listeners.push_back(std::make_shared<FaultListener>(std::move(fault)));
  db_options.create_if_missing = create_if_missing && secondary_path.empty();
  db_options.create_missing_column_families = secondary_path.empty();
  // The info log opens before RocksDB would create its directory (as RocksDB's own
  // logger does, it creates it); an error here is DB::Open's to report.
  if (!secondary_path.empty()) {
    (void)::mkdir(secondary_path.c_str(), 0755);
  } else if (create_if_missing) {
    (void)::mkdir(path.c_str(), 0755);
  }
  // The info log in the directory RocksDB would use (a secondary's own), written
  // so that a full disk drops lines instead of aborting (header comment).
  db_options.info_log = std::make_shared<InfoLog>(secondary_path.empty() ? path : secondary_path);
  // Failover opens the primary while clients wait: keep the WAL to replay small
  // (small memtables, a WAL bound) and replay it without flushing to SSTs.
  db_options.max_total_wal_size = 32u << 20;
  db_options.avoid_flush_during_recovery = true;
  if (!secondary_path.empty()) db_options.max_open_files = -1;  // required by secondaries
  rocksdb::ColumnFamilyOptions cf_options;
  cf_options.write_buffer_size = 16u << 20;
  std::vector<rocksdb::ColumnFamilyDescriptor> families = {
      {rocksdb::kDefaultColumnFamilyName, cf_options},
      {codec::kEventsFamily, cf_options},
      {codec::kStreamsFamily, cf_options},
      {codec::kMetaFamily, cf_options},
      {codec::kSnapshotsFamily, cf_options},
      {codec::kIdempotencyFamily, cf_options},
  };
  auto d = std::make_shared<Db>();
  rocksdb::Status s =
      secondary_path.empty()
          ? rocksdb::DB::Open(db_options, path, families, &d->handles, &d->db)
          : rocksdb::DB::OpenAsSecondary(db_options, path, secondary_path, families, &d->handles,
                                         &d->db);
  if (!s.ok()) {
    return FromRocks(s, std::string(secondary_path.empty() ? "opening" : "opening a secondary of") +
                            " event store at " + path);
  }
  // Order of the descriptors above.
  d->events = d->handles[1];
  d->streams = d->handles[2];
  d->meta = d->handles[3];
  d->snapshots = d->handles[4];
  d->idempotency = d->handles[5];
  d->secondary = !secondary_path.empty();
  return d;
}

class RocksDbEventStore final : public EventStore {
 public:
  RocksDbEventStore(std::shared_ptr<Db> db, StoreOptions options, std::shared_ptr<WriteFault> fault)
      : db_(std::move(db)), options_(std::move(options)), fault_(std::move(fault)) {}

  ~RocksDbEventStore() override {
    {
      MutexLock lock(&state_mu_);
      closing_ = true;
    }
    head_cv_.SignalAll();
  }

  // Reads the head from the last event (verifying it) and cross-checks the `meta`
  // head record written with every batch (detects a truncated log). Also loads
  // the fencing epoch.
  Status Recover() { return Recover(db()); }

  Status Recover(const std::shared_ptr<Db>& d) {
    auto [position, hash] = LoadHead(*d);
    if (!hash.ok() && options_.open_corrupt_head && !d->secondary) {
      Status error = hash.status();
      ASSIGN_OR_RETURN(auto head, CorruptHead(*d, error));
      position = head.first;
      hash = head.second;
      MutexLock lock(&queue_mu_);
      refused_ = Corruption(error.message() + " (the head event): the store refuses every write");
    }
    RETURN_IF_ERROR(hash.status());
    ASSIGN_OR_RETURN(uint64_t fence, LoadFence(*d));
    MutexLock lock(&state_mu_);
    head_position_ = position;
    head_hash_ = *hash;
    fence_epoch_ = fence;
    return Status::Ok();
  }

  bool read_only() override { return db()->secondary; }

  Result<HeadInfo> CatchUp() override {
    std::shared_ptr<Db> d = db();
    if (!d->secondary) return Head();
    rocksdb::Status s = d->db->TryCatchUpWithPrimary();
    if (!s.ok()) return FromRocks(s, "catching up with the primary");
    auto [position, hash] = LoadHead(*d);
    RETURN_IF_ERROR(hash.status());
    ASSIGN_OR_RETURN(uint64_t fence, LoadFence(*d));
    bool advanced = false;
    {
      MutexLock lock(&state_mu_);
      if (position < head_position_) {
        return Corruption("the primary's log ends at " + std::to_string(position) +
                          " but this secondary had read up to " + std::to_string(head_position_));
      }
      advanced = position > head_position_;
      head_position_ = position;
      head_hash_ = *hash;
      fence_epoch_ = std::max(fence_epoch_, fence);
    }
    if (advanced) {
      head_cv_.SignalAll();
      NotifySubscribers(position);
    }
    return HeadInfo{position, ToHex(*hash)};
  }

  Status Promote() override {
    std::shared_ptr<Db> old = db();
    if (!old->secondary) return Status::Ok();
    ASSIGN_OR_RETURN(auto primary, OpenDb(options_.path, "", false, fault_));
    RETURN_IF_ERROR(Recover(primary).WithContext("promoting the event store"));
    {
      MutexLock lock(&state_mu_);
      versions_.clear();  // the leader's cache: filled lazily from the primary
    }
    {
      MutexLock lock(&db_mu_);
      db_ = std::move(primary);
    }
    // Readers that took the secondary finish on it; it closes with the last one.
    head_cv_.SignalAll();
    NotifySubscribers(Head().position);
    return Status::Ok();
  }

  Status ClaimEpoch(uint64_t epoch) override {
    std::shared_ptr<Db> d = db();
    if (d->secondary) return FailedPrecondition("the event store is a read-only secondary");
    if (Status f = WriteRefusal(); !f.ok()) return f;
    MutexLock claim(&claim_mu_);
    ASSIGN_OR_RETURN(uint64_t current, LoadFence(*d));
    if (epoch <= current) {
      return Conflict("epoch " + std::to_string(epoch) + " is not above the claimed epoch " +
                      std::to_string(current));
    }
    rocksdb::WriteOptions wo;
    wo.sync = true;
    rocksdb::Status s = d->db->Put(wo, d->meta, kEpochMetaKey, std::to_string(epoch));
    if (!s.ok()) return Failed(WriteFailed(s, "claiming epoch " + std::to_string(epoch)));
    MutexLock lock(&state_mu_);
    fence_epoch_ = std::max(fence_epoch_, epoch);
    return Status::Ok();
  }

  uint64_t ClaimedEpoch() override {
    MutexLock lock(&state_mu_);
    return fence_epoch_;
  }

  // The last event's position and hash (verified), cross-checked with the head record.
  std::pair<uint64_t, Result<Digest>> LoadHead(const Db& d) {
    std::unique_ptr<rocksdb::Iterator> it(d.db->NewIterator(rocksdb::ReadOptions(), d.events));
    it->SeekToLast();
    uint64_t position = 0;
    Digest hash = codec::ZeroDigest();
    if (it->Valid()) {
      auto p = codec::DecodePositionKey(it->key().ToStringView());
      if (!p.ok()) return {0, p.status()};
      position = *p;
      Envelope env;
      Status st = codec::DecodeEvent(position, it->value().ToStringView(), &env, &hash);
      if (!st.ok()) return {0, st};
    }
    if (!it->status().ok()) return {0, FromRocks(it->status(), "reading the last event")};

    std::string meta;
    rocksdb::Status s = d.db->Get(rocksdb::ReadOptions(), d.meta, codec::kHeadMetaKey, &meta);
    if (s.ok()) {
      uint64_t meta_pos = 0;
      Digest meta_hash{};
      Status st = codec::DecodeHeadValue(meta, &meta_pos, &meta_hash);
      if (!st.ok()) return {0, st};
      if (meta_pos != position || meta_hash != hash) {
        return {0, Corruption("event " + std::to_string(std::max(meta_pos, position)) +
                              ": log ends at " + std::to_string(position) +
                              " but the head record says " + std::to_string(meta_pos))};
      }
    } else if (!s.IsNotFound()) {
      return {0, FromRocks(s, "reading the head record")};
    }
    return {position, hash};
  }

  // open_corrupt_head: LoadHead failed with `error`. When that is the last event
  // failing verification (not a missing one), its position and the hash the head
  // record kept for it; else `error`.
  Result<std::pair<uint64_t, Digest>> CorruptHead(const Db& d, const Status& error) {
    if (error.code() != StatusCode::kCorruption) return error;
    std::unique_ptr<rocksdb::Iterator> it(d.db->NewIterator(rocksdb::ReadOptions(), d.events));
    it->SeekToLast();
    if (!it->Valid()) return error;
    auto position = codec::DecodePositionKey(it->key().ToStringView());
    if (!position.ok()) return error;
    std::string meta;
    if (!d.db->Get(rocksdb::ReadOptions(), d.meta, codec::kHeadMetaKey, &meta).ok()) return error;
    uint64_t meta_pos = 0;
    Digest meta_hash{};
    if (!codec::DecodeHeadValue(meta, &meta_pos, &meta_hash).ok() || meta_pos != *position ||
        error.message().rfind("event " + std::to_string(*position) + ": ", 0) != 0) {
      return error;
    }
    return std::make_pair(*position, meta_hash);
  }

  Result<uint64_t> LoadFence(const Db& d) {
    std::string v;
    rocksdb::Status s = d.db->Get(rocksdb::ReadOptions(), d.meta, kEpochMetaKey, &v);
    if (s.IsNotFound()) return uint64_t{0};
    if (!s.ok()) return FromRocks(s, "reading the claimed epoch");
    char* end = nullptr;
    uint64_t e = std::strtoull(v.c_str(), &end, 10);
    if (v.empty() || *end != '\0') return Corruption("meta epoch is not a number: '" + v + "'");
    return e;
  }

  Result<AppendResult> Append(AppendBatch batch) override {
    size_t bytes = 0;
    RETURN_IF_ERROR(ValidateBatch(batch, &bytes));
    Writer w;
    w.batch = std::move(batch);
    w.bytes = bytes;

    std::vector<Writer*> group;
    Status failed;
    {
      MutexLock lock(&queue_mu_);
      writers_.push_back(&w);
      while (!w.done && &w != writers_.front()) w.cv.Wait(&queue_mu_);
      if (w.done) return std::move(w.result);

      // Leader: take a group from the front of the queue.
      size_t group_bytes = 0;
      for (Writer* x : writers_) {
        if (!group.empty() && group_bytes + x->bytes > kMaxGroupBytes) break;
        group.push_back(x);
        group_bytes += x->bytes;
      }
      failed = refused_.ok() ? fault_->Get() : refused_;
    }

    uint64_t new_head = 0;
    if (failed.ok()) {
      new_head = CommitGroup(group);
    } else {
      for (Writer* x : group) x->pending = failed;
    }
    if (new_head != 0) NotifySubscribers(new_head);

    {
      MutexLock lock(&queue_mu_);
      for (Writer* x : group) {
        writers_.pop_front();  // the group is exactly the queue's prefix
        if (x->pending.ok()) {
          x->result = std::move(x->staged);
        } else {
          x->result = std::move(x->pending);
        }
        x->done = true;
        if (x != &w) x->cv.Signal();
      }
      if (!writers_.empty()) writers_.front()->cv.Signal();
    }
    return std::move(w.result);
  }

  Result<std::vector<Envelope>> ReadStream(const std::string& stream, uint64_t from_version,
                                           size_t limit) override {
    RETURN_IF_ERROR(codec::ValidateName("stream name", stream));
    std::vector<Envelope> out;
    if (limit == 0) return out;
    const uint64_t head = Head().position;
    from_version = std::max<uint64_t>(from_version, 1);

    std::shared_ptr<Db> d = db();
    SnapshotReads snap(*d);
    std::vector<std::pair<uint64_t, uint64_t>> refs;  // (version, position)
    {
      std::unique_ptr<rocksdb::Iterator> it(d->db->NewIterator(snap.options, d->streams));
      const std::string prefix = stream + '\0';
      uint64_t expected = from_version;
      for (it->Seek(codec::StreamKey(stream, from_version)); it->Valid() && refs.size() < limit;
           it->Next()) {
        std::string_view key = it->key().ToStringView();
        if (!key.starts_with(prefix)) break;
        std::string s;
        uint64_t version = 0;
        RETURN_IF_ERROR(codec::DecodeStreamKey(key, &s, &version));
        ASSIGN_OR_RETURN(uint64_t position, codec::DecodePositionValue(it->value().ToStringView()));
        if (position > head) break;  // committed but not yet published
        if (version != expected) {
          return Corruption("stream " + stream + ": version " + std::to_string(expected) +
                            " missing from the index");
        }
        refs.emplace_back(version, position);
        ++expected;
      }
      if (!it->status().ok()) return FromRocks(it->status(), "reading stream " + stream);
    }
    out.reserve(refs.size());
    for (const auto& [version, position] : refs) {
      Envelope env;
      RETURN_IF_ERROR(ReadVerified(*d, snap.options, position, &env));
      if (env.stream != stream || env.version != version) {
        return Corruption("event " + std::to_string(position) + ": indexed as " + stream + "@" +
                          std::to_string(version) + " but is " + env.stream + "@" +
                          std::to_string(env.version));
      }
      out.push_back(std::move(env));
    }
    return out;
  }

  Result<std::vector<Envelope>> ReadAll(uint64_t after, size_t limit,
                                        const ReadFilter& filter) override {
    std::vector<Envelope> out;
    const uint64_t head = Head().position;
    if (limit == 0 || after >= head) return out;

    std::shared_ptr<Db> d = db();
    SnapshotReads snap(*d);
    // The link into the page: the first event's prev_hash must be the hash of
    // event `after` (itself verified), or zeros for position 1.
    Digest expected_prev = codec::ZeroDigest();
    if (after > 0) {
      Envelope prev;
      RETURN_IF_ERROR(ReadVerified(*d, snap.options, after, &prev, &expected_prev));
    }
    const std::string upper = codec::EventKey(head + 1);
    rocksdb::Slice upper_slice(upper);
    rocksdb::ReadOptions ro = snap.options;
    ro.iterate_upper_bound = &upper_slice;
    std::unique_ptr<rocksdb::Iterator> it(d->db->NewIterator(ro, d->events));
    uint64_t expected = after + 1;
    for (it->Seek(codec::EventKey(after + 1)); it->Valid(); it->Next(), ++expected) {
      ASSIGN_OR_RETURN(uint64_t position, codec::DecodePositionKey(it->key().ToStringView()));
      if (position != expected) {
        return Corruption("event " + std::to_string(expected) + ": missing");
      }
      Envelope env;
      Digest hash{}, prev{};
      RETURN_IF_ERROR(codec::DecodeEvent(position, it->value().ToStringView(), &env, &hash, &prev));
      if (prev != expected_prev) {
        return Corruption("event " + std::to_string(position) +
                          ": prev_hash does not match the hash of event " +
                          std::to_string(position - 1));
      }
      expected_prev = hash;
      if (Matches(env, filter)) {
        out.push_back(std::move(env));
        if (out.size() >= limit) return out;
      }
    }
    if (!it->status().ok()) return FromRocks(it->status(), "reading the log");
    if (expected <= head) return Corruption("event " + std::to_string(expected) + ": missing");
    return out;
  }

  Result<ChainReport> VerifyChain(uint64_t from, const std::string& from_hash) override {
    ChainReport report;
    const uint64_t head = Head().position;
    report.head_position = head;
    report.from = from;
    if (from == 0) return InvalidArgument("from: positions start at 1");
    if (from > 1 && from_hash.empty()) {
      return InvalidArgument("from_hash: a checkpoint needs the hash of event " +
                             std::to_string(from));
    }
    if (head == 0 && from == 1) {
      report.ok = true;
      report.head_hash = codec::ZeroHashHex();
      return report;
    }
    if (from > head) {
      return NotFound("no event at position " + std::to_string(from) + " (head is " +
                      std::to_string(head) + ")");
    }
    auto fail = [&](uint64_t position, std::string problem) {
      report.ok = false;
      report.bad_position = position;
      report.problem = std::move(problem);
      return report;
    };
    std::shared_ptr<Db> d = db();
    SnapshotReads snap(*d);
    const std::string upper = codec::EventKey(head + 1);
    rocksdb::Slice upper_slice(upper);
    rocksdb::ReadOptions ro = snap.options;
    ro.iterate_upper_bound = &upper_slice;
    ro.fill_cache = false;  // a full scan would evict what serving reads use
    ro.readahead_size = 4 << 20;
    std::unique_ptr<rocksdb::Iterator> it(d->db->NewIterator(ro, d->events));
    Digest expected_prev = codec::ZeroDigest();
    uint64_t expected = from;
    for (it->Seek(codec::EventKey(from)); it->Valid(); it->Next(), ++expected) {
      auto position = codec::DecodePositionKey(it->key().ToStringView());
      if (!position.ok()) return fail(expected, position.status().message());
      if (*position != expected) {
        return fail(expected, "event " + std::to_string(expected) + ": missing");
      }
      Envelope env;
      Digest hash{}, prev{};
      Status st = codec::DecodeEvent(expected, it->value().ToStringView(), &env, &hash, &prev);
      if (!st.ok()) return fail(expected, st.message());
      if (expected == from && from > 1) {
        if (ToHex(hash) != from_hash) {
          return fail(expected, "event " + std::to_string(expected) + ": hash " + ToHex(hash) +
                                    " is not the checkpoint's " + from_hash);
        }
      } else if (prev != expected_prev) {
        return fail(expected, "event " + std::to_string(expected) +
                                  ": prev_hash does not match the hash of event " +
                                  std::to_string(expected - 1));
      }
      expected_prev = hash;
      ++report.checked;
    }
    if (!it->status().ok()) return FromRocks(it->status(), "reading the log");
    if (expected <= head) return fail(expected, "event " + std::to_string(expected) + ": missing");
    report.ok = true;
    report.head_hash = ToHex(expected_prev);
    return report;
  }

  Result<Envelope> ReadAt(uint64_t position) override {
    if (position == 0 || position > Head().position) {
      return NotFound("no event at position " + std::to_string(position));
    }
    Envelope env;
    RETURN_IF_ERROR(ReadVerified(*db(), rocksdb::ReadOptions(), position, &env));
    return env;
  }

  HeadInfo Head() override {
    MutexLock lock(&state_mu_);
    return HeadInfo{head_position_, ToHex(head_hash_)};
  }

  uint64_t StreamVersion(const std::string& stream) override {
    {
      MutexLock lock(&state_mu_);
      auto it = versions_.find(stream);
      if (it != versions_.end()) return it->second;
    }
    // Not cached: read the index. Readers never fill the cache (only the leader
    // does), so a reader racing a commit cannot plant a stale version in it.
    Result<uint64_t> v = LoadStreamVersion(stream);
    return v.ok() ? *v : 0;
  }

  uint64_t WaitForHead(uint64_t after, std::chrono::milliseconds timeout) override {
    MutexLock lock(&state_mu_);
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (!(head_position_ > after || closing_)) {
      if (!head_cv_.WaitUntil(&state_mu_, deadline)) break;  // timed out
    }
    return head_position_;
  }

  uint64_t Subscribe(std::function<void(uint64_t head)> fn) override {
    MutexLock lock(&sub_mu_);
    uint64_t id = ++next_subscriber_;
    subscribers_.emplace(id, std::make_shared<std::function<void(uint64_t)>>(std::move(fn)));
    return id;
  }

  void Unsubscribe(uint64_t id) override {
    MutexLock lock(&sub_mu_);
    subscribers_.erase(id);
  }

  Result<std::optional<std::string>> GetIdempotency(const std::string& tenant,
                                                    const std::string& key) override {
    RETURN_IF_ERROR(codec::ValidateName("idempotency tenant", tenant, /*allow_empty=*/true));
    std::shared_ptr<Db> d = db();
    return GetOptional(*d, d->idempotency, codec::IdempotencyKey(tenant, key), "idempotency key");
  }

  Result<std::optional<std::string>> GetMeta(const std::string& key) override {
    std::shared_ptr<Db> d = db();
    return GetOptional(*d, d->meta, key, "meta " + key);
  }

  Status PutMeta(const std::string& key, const std::string& value) override {
    if (key.empty()) return InvalidArgument("empty meta key");
    if (key == codec::kHeadMetaKey || key == kEpochMetaKey) {
      return InvalidArgument("meta key '" + key + "' is the store's own");
    }
    std::shared_ptr<Db> d = db();
    if (d->secondary) return FailedPrecondition("the event store is a read-only secondary");
    if (Status f = WriteRefusal(); !f.ok()) return f;
    rocksdb::WriteOptions wo;
    wo.sync = true;
    rocksdb::Status s = d->db->Put(wo, d->meta, key, value);
    if (!s.ok()) return Failed(WriteFailed(s, "writing meta " + key));
    return Status::Ok();
  }

  Status PutSnapshot(uint64_t position, const std::string& bytes) override {
    if (position > Head().position) {
      return InvalidArgument("snapshot at " + std::to_string(position) + " is past the head");
    }
    std::shared_ptr<Db> d = db();
    if (d->secondary) return FailedPrecondition("the event store is a read-only secondary");
    if (Status f = WriteRefusal(); !f.ok()) return f;
    rocksdb::WriteOptions wo;
    wo.sync = true;
    // Only the latest snapshot is kept: older ones go in the same batch.
    rocksdb::WriteBatch wb;
    wb.DeleteRange(d->snapshots, codec::EventKey(0), codec::EventKey(position));
    wb.Put(d->snapshots, codec::EventKey(position), bytes);
    rocksdb::Status s = d->db->Write(wo, &wb);
    if (!s.ok()) {
      return Failed(WriteFailed(s, "writing snapshot " + std::to_string(position)));
    }
    return Status::Ok();
  }

  Result<std::optional<std::pair<uint64_t, std::string>>> LatestSnapshot() override {
    std::shared_ptr<Db> d = db();
    std::unique_ptr<rocksdb::Iterator> it(d->db->NewIterator(rocksdb::ReadOptions(), d->snapshots));
    it->SeekToLast();
    if (!it->status().ok()) return FromRocks(it->status(), "reading snapshots");
    if (!it->Valid()) return std::optional<std::pair<uint64_t, std::string>>();
    ASSIGN_OR_RETURN(uint64_t position, codec::DecodePositionKey(it->key().ToStringView()));
    return std::optional<std::pair<uint64_t, std::string>>(
        std::make_pair(position, it->value().ToString()));
  }

  uint64_t ApproximateSizeBytes() override {
    uint64_t total = 0;
    std::shared_ptr<Db> d = db();
    for (rocksdb::ColumnFamilyHandle* h : d->handles) {
      uint64_t v = 0;
      if (d->db->GetIntProperty(h, "rocksdb.live-sst-files-size", &v)) total += v;
      if (d->db->GetIntProperty(h, "rocksdb.cur-size-all-mem-tables", &v)) total += v;
    }
    return total;
  }

  StoreStats Stats() override {
    MutexLock lock(&state_mu_);
    return stats_;
  }

  Status WriteFailure() override { return fault_->Get(); }

  Result<uint64_t> AvailableBytes() override {
    struct statvfs fs {};
    if (::statvfs(options_.path.c_str(), &fs) != 0) {
      return Internal("statvfs " + options_.path + ": " + std::strerror(errno));
    }
    return static_cast<uint64_t>(fs.f_bavail) * static_cast<uint64_t>(fs.f_frsize);
  }

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

  // A write failed with err: from now on the store refuses every write (the
  // first failure recorded is what later writes get). Returns err.
  Status Failed(Status err) {
    fault_->Set(err);
    return err;
  }

  // Why every write is refused: the corrupt head it opened on, or the write
  // failure (OK: writes go on).
  Status WriteRefusal() {
    {
      MutexLock lock(&queue_mu_);
      if (!refused_.ok()) return refused_;
    }
    return fault_->Get();
  }

  std::shared_ptr<Db> db() {
    MutexLock lock(&db_mu_);
    return db_;
  }

  Status ReadVerified(const Db& d, const rocksdb::ReadOptions& ro, uint64_t position,
                      Envelope* env, Digest* hash = nullptr) {
    rocksdb::PinnableSlice value;
    rocksdb::Status s = d.db->Get(ro, d.events, codec::EventKey(position), &value);
    if (s.IsNotFound()) return Corruption("event " + std::to_string(position) + ": missing");
    if (!s.ok()) return FromRocks(s, "reading event " + std::to_string(position));
    return codec::DecodeEvent(position, value.ToStringView(), env, hash);
  }

  Result<std::optional<std::string>> GetOptional(const Db& d, rocksdb::ColumnFamilyHandle* cf,
                                                 const std::string& key, std::string_view what) {
    std::string value;
    rocksdb::Status s = d.db->Get(rocksdb::ReadOptions(), cf, key, &value);
    if (s.IsNotFound()) return std::optional<std::string>();
    if (!s.ok()) return FromRocks(s, std::string("reading ") + std::string(what));
    return std::optional<std::string>(std::move(value));
  }

  // The stream's last version in the `streams` index (0 = no stream).
  Result<uint64_t> LoadStreamVersion(const std::string& stream) {
    std::shared_ptr<Db> d = db();
    std::unique_ptr<rocksdb::Iterator> it(d->db->NewIterator(rocksdb::ReadOptions(), d->streams));
    it->SeekForPrev(codec::StreamKey(stream, std::numeric_limits<uint64_t>::max()));
    if (!it->status().ok()) return FromRocks(it->status(), "reading stream " + stream);
    if (!it->Valid()) return uint64_t{0};
    std::string s;
    uint64_t version = 0;
    if (!codec::DecodeStreamKey(it->key().ToStringView(), &s, &version).ok() || s != stream) {
      return uint64_t{0};
    }
    return version;
  }

  // Leader only: the committed version of a stream, from the cache or the index.
  Result<uint64_t> CommittedVersion(const std::string& stream) {
    {
      MutexLock lock(&state_mu_);
      auto it = versions_.find(stream);
      if (it != versions_.end()) return it->second;
    }
    ASSIGN_OR_RETURN(uint64_t v, LoadStreamVersion(stream));
    MutexLock lock(&state_mu_);
    versions_.emplace(stream, v);
    return v;
  }

  // Validates the writer against committed state plus the group so far
  // (group_versions, group_keys). On success: *mine holds the writer's new stream
  // versions (the caller merges them into the group), (*bases)[i] the version of
  // appends[i]'s stream before it, *keys the encoded idempotency keys.
  Status Validate(const Db& d, uint64_t fence, const Writer& w,
                  const std::unordered_map<std::string, uint64_t>& group_versions,
                  const std::unordered_set<std::string>& group_keys,
                  std::unordered_map<std::string, uint64_t>* mine, std::vector<uint64_t>* bases,
                  std::vector<std::string>* keys) {
    if (w.batch.epoch < fence) {
      return FailedPrecondition("fenced: this writer's epoch " + std::to_string(w.batch.epoch) +
                                " is older than the claimed epoch " + std::to_string(fence) +
                                " (another leader took over)");
    }
    for (const StreamAppend& sa : w.batch.appends) {
      uint64_t current = 0;
      if (auto it = mine->find(sa.stream); it != mine->end()) {
        current = it->second;
      } else if (auto g = group_versions.find(sa.stream); g != group_versions.end()) {
        current = g->second;
      } else {
        ASSIGN_OR_RETURN(current, CommittedVersion(sa.stream));
      }
      if (sa.expected_version != kAnyVersion && sa.expected_version != current) {
        return Conflict("stream " + sa.stream + ": expected version " +
                        (sa.expected_version == kNoStream ? std::string("none (new stream)")
                                                          : std::to_string(sa.expected_version)) +
                        ", stream is at " + std::to_string(current));
      }
      bases->push_back(current);
      (*mine)[sa.stream] = current + sa.events.size();
    }
    for (const auto& [record_key, value] : w.batch.idempotency) {
      const std::string& k = record_key;
      bool taken =
          group_keys.contains(k) || std::find(keys->begin(), keys->end(), k) != keys->end();
      if (!taken) {
        ASSIGN_OR_RETURN(auto existing, GetOptional(d, d.idempotency, k, "idempotency key"));
        taken = existing.has_value();
      }
      if (taken) {
        size_t nul = k.find('\0');
        return Conflict("idempotency key '" + k.substr(nul + 1) + "' of tenant '" +
                        k.substr(0, nul) + "' exists");
      }
      keys->push_back(k);
    }
    return Status::Ok();
  }

  // Leader only, no locks held on entry. Validates, encodes and commits the group;
  // sets each writer's pending/staged. Returns the new head, or 0 if nothing was
  // committed.
  uint64_t CommitGroup(const std::vector<Writer*>& group) {
    std::shared_ptr<Db> d = db();
    uint64_t next, fence;
    Digest prev;
    {
      MutexLock lock(&state_mu_);
      if (versions_.size() > kMaxCachedStreams) versions_.clear();
      next = head_position_;
      prev = head_hash_;
      fence = fence_epoch_;
    }
    if (d->secondary) {
      for (Writer* w : group) {
        w->pending = FailedPrecondition("the event store is a read-only secondary (a standby)");
      }
      return 0;
    }
    std::unordered_map<std::string, uint64_t> group_versions;
    std::unordered_set<std::string> group_keys;
    rocksdb::WriteBatch wb;
    std::string value;
    Digest hash{};
    size_t committed = 0, conflicts = 0, events = 0;

    for (Writer* w : group) {
      std::unordered_map<std::string, uint64_t> mine;
      std::vector<uint64_t> bases;
      std::vector<std::string> keys;
      w->pending = Validate(*d, fence, *w, group_versions, group_keys, &mine, &bases, &keys);
      if (!w->pending.ok()) {
        if (w->pending.code() == StatusCode::kConflict) ++conflicts;
        continue;
      }
      AppendResult res;
      res.first_position = next + 1;
      for (size_t i = 0; i < w->batch.appends.size(); ++i) {
        const StreamAppend& sa = w->batch.appends[i];
        uint64_t version = bases[i];
        for (const NewEvent& e : sa.events) {
          ++next;
          ++version;
          codec::EncodeEvent(next, sa.stream, version, e.type, e.schema, w->batch.time,
                             w->batch.epoch, e.actor, e.data, prev, &value, &hash);
          wb.Put(d->events, codec::EventKey(next), value);
          wb.Put(d->streams, codec::StreamKey(sa.stream, version), codec::PositionValue(next));
          prev = hash;
          ++events;
        }
        res.stream_versions.push_back(version);
      }
      res.last_position = next;
      for (size_t i = 0; i < keys.size(); ++i) {
        wb.Put(d->idempotency, keys[i], w->batch.idempotency[i].second);
        group_keys.insert(std::move(keys[i]));
      }
      for (auto& [s, v] : mine) group_versions[s] = v;
      w->staged = std::move(res);
      ++committed;
    }

    if (committed == 0) {
      MutexLock lock(&state_mu_);
      stats_.append_conflicts += conflicts;
      return 0;
    }
    wb.Put(d->meta, codec::kHeadMetaKey, codec::HeadValue(next, prev));
    rocksdb::WriteOptions wo;
    wo.sync = true;
    rocksdb::Status s;
    if (options_.fail_write_for_testing && options_.fail_write_for_testing()) {
      s = options_.fail_write_no_space_for_testing
              ? rocksdb::Status::NoSpace("injected write failure")
              : rocksdb::Status::IOError("injected write failure");
    } else {
      s = d->db->Write(wo, &wb);
    }
    if (!s.ok()) {
      // A caller that raced a background error gets the write's own error; later
      // writes get the first one recorded.
      Status err =
          Failed(WriteFailed(s, "event store write failed (the batch may or may not be durable)"));
      for (Writer* w : group) {
        if (w->pending.ok()) w->pending = err;
      }
      return 0;
    }
    {
      MutexLock lock(&state_mu_);
      head_position_ = next;
      head_hash_ = prev;
      for (auto& [stream, v] : group_versions) versions_[stream] = v;
      stats_.appends += committed;
      stats_.append_conflicts += conflicts;
      stats_.events += events;
      stats_.commit_groups += 1;
    }
    head_cv_.SignalAll();
    return next;
  }

  // On the leader's thread, no store lock held; serial across commits.
  void NotifySubscribers(uint64_t head) {
    std::vector<std::shared_ptr<std::function<void(uint64_t)>>> fns;
    {
      MutexLock lock(&sub_mu_);
      fns.reserve(subscribers_.size());
      for (auto& [id, fn] : subscribers_) fns.push_back(fn);
    }
    for (auto& fn : fns) (*fn)(head);
  }

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

}  // namespace

Result<std::unique_ptr<EventStore>> OpenRocksDbEventStore(const StoreOptions& options) {
  if (options.path.empty()) return InvalidArgument("store path is empty");
  auto fault = std::make_shared<WriteFault>();
  ASSIGN_OR_RETURN(auto db,
                   OpenDb(options.path, options.secondary_path, options.create_if_missing, fault));
  auto store = std::make_unique<RocksDbEventStore>(std::move(db), options, std::move(fault));
  RETURN_IF_ERROR(store->Recover().WithContext("opening event store at " + options.path));
  return std::unique_ptr<EventStore>(std::move(store));
}

}  // namespace epoch::storage
