// RocksDbEventStore (storage/rocksdb_event_store_internal.h): the EventStore over one
// RocksDB instance (storage/rocksdb_db.h). This file: opening and recovery, the
// standby, fencing, the failure policy, and the key-value records beside the log
// (meta, idempotency, snapshots). The group commit is in rocksdb_append.cc (its top
// comment says how writes work), reads in rocksdb_read.cc (how reads verify).
//
// Failure policy: if the synced write fails, the outcome of that batch is unknown
// (the WAL may hold it). Its callers get kInternal ("possibly written"), the
// in-memory head/versions are not advanced, and the store refuses every later
// write (Append, ClaimEpoch, PutMeta, PutSnapshot) with that error without
// calling RocksDB; the process must reopen the store (and replay) to learn what
// is durable. Reads keep working. The same happens when RocksDB reports a
// background error that stops writes (FaultListener in rocksdb_db.cc: a flush that
// found the disk full), and RocksDB's own recovery from it is turned off: one place
// (here) decides, and the answer is always "reopen". A full disk (ENOSPC, NoSpace)
// is marked with kNoSpaceDetail. Why nothing may write after a failure (RocksDB aborts
// on a write to a file that failed before, its info log included):
// storage/rocksdb_db.h.
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

#include <rocksdb/db.h>
#include <rocksdb/options.h>
#include <rocksdb/write_batch.h>
#include <sys/statvfs.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "common/mutex.h"
#include "storage/codec.h"
#include "storage/event_store.h"
#include "storage/rocksdb_db.h"
#include "storage/rocksdb_event_store_internal.h"

namespace epoch::storage {
namespace internal {
namespace {

// `meta` record of the highest claimed leader epoch (the fence).
constexpr char kEpochMetaKey[] = "epoch";

}  // namespace

RocksDbEventStore::RocksDbEventStore(std::shared_ptr<Db> db, StoreOptions options,
                                     std::shared_ptr<WriteFault> fault)
    : db_(std::move(db)), options_(std::move(options)), fault_(std::move(fault)) {}

RocksDbEventStore::~RocksDbEventStore() {
  {
    MutexLock lock(&state_mu_);
    closing_ = true;
  }
  head_cv_.SignalAll();
}

Status RocksDbEventStore::Recover() { return Recover(db()); }

Status RocksDbEventStore::Recover(const std::shared_ptr<Db>& d) {
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

bool RocksDbEventStore::read_only() { return db()->secondary; }

Result<HeadInfo> RocksDbEventStore::CatchUp() {
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

Status RocksDbEventStore::Promote() {
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

Status RocksDbEventStore::ClaimEpoch(uint64_t epoch) {
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

uint64_t RocksDbEventStore::ClaimedEpoch() {
  MutexLock lock(&state_mu_);
  return fence_epoch_;
}

std::pair<uint64_t, Result<Digest>> RocksDbEventStore::LoadHead(const Db& d) {
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

Result<std::pair<uint64_t, Digest>> RocksDbEventStore::CorruptHead(const Db& d,
                                                                   const Status& error) {
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

Result<uint64_t> RocksDbEventStore::LoadFence(const Db& d) {
  std::string v;
  rocksdb::Status s = d.db->Get(rocksdb::ReadOptions(), d.meta, kEpochMetaKey, &v);
  if (s.IsNotFound()) return uint64_t{0};
  if (!s.ok()) return FromRocks(s, "reading the claimed epoch");
  char* end = nullptr;
  uint64_t e = std::strtoull(v.c_str(), &end, 10);
  if (v.empty() || *end != '\0') return Corruption("meta epoch is not a number: '" + v + "'");
  return e;
}

Status RocksDbEventStore::Failed(Status err) {
  fault_->Set(err);
  return err;
}

Status RocksDbEventStore::WriteRefusal() {
  {
    MutexLock lock(&queue_mu_);
    if (!refused_.ok()) return refused_;
  }
  return fault_->Get();
}

Result<std::optional<std::string>> RocksDbEventStore::GetIdempotency(const std::string& tenant,
                                                                     const std::string& key) {
  RETURN_IF_ERROR(codec::ValidateName("idempotency tenant", tenant, /*allow_empty=*/true));
  std::shared_ptr<Db> d = db();
  return GetOptional(*d, d->idempotency, codec::IdempotencyKey(tenant, key), "idempotency key");
}

Result<std::optional<std::string>> RocksDbEventStore::GetMeta(const std::string& key) {
  std::shared_ptr<Db> d = db();
  return GetOptional(*d, d->meta, key, "meta " + key);
}

Status RocksDbEventStore::PutMeta(const std::string& key, const std::string& value) {
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

Result<std::optional<std::string>> RocksDbEventStore::GetOptional(const Db& d,
                                                                  rocksdb::ColumnFamilyHandle* cf,
                                                                  const std::string& key,
                                                                  std::string_view what) {
  std::string value;
  rocksdb::Status s = d.db->Get(rocksdb::ReadOptions(), cf, key, &value);
  if (s.IsNotFound()) return std::optional<std::string>();
  if (!s.ok()) return FromRocks(s, std::string("reading ") + std::string(what));
  return std::optional<std::string>(std::move(value));
}

Status RocksDbEventStore::PutSnapshot(uint64_t position, const std::string& bytes) {
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

Result<std::optional<std::pair<uint64_t, std::string>>> RocksDbEventStore::LatestSnapshot() {
  std::shared_ptr<Db> d = db();
  std::unique_ptr<rocksdb::Iterator> it(d->db->NewIterator(rocksdb::ReadOptions(), d->snapshots));
  it->SeekToLast();
  if (!it->status().ok()) return FromRocks(it->status(), "reading snapshots");
  if (!it->Valid()) return std::optional<std::pair<uint64_t, std::string>>();
  ASSIGN_OR_RETURN(uint64_t position, codec::DecodePositionKey(it->key().ToStringView()));
  return std::optional<std::pair<uint64_t, std::string>>(
      std::make_pair(position, it->value().ToString()));
}

uint64_t RocksDbEventStore::ApproximateSizeBytes() {
  uint64_t total = 0;
  std::shared_ptr<Db> d = db();
  for (rocksdb::ColumnFamilyHandle* h : d->handles) {
    uint64_t v = 0;
    if (d->db->GetIntProperty(h, "rocksdb.live-sst-files-size", &v)) total += v;
    if (d->db->GetIntProperty(h, "rocksdb.cur-size-all-mem-tables", &v)) total += v;
  }
  return total;
}

StoreStats RocksDbEventStore::Stats() {
  MutexLock lock(&state_mu_);
  return stats_;
}

Status RocksDbEventStore::WriteFailure() { return fault_->Get(); }

Result<uint64_t> RocksDbEventStore::AvailableBytes() {
  struct statvfs fs {};
  if (::statvfs(options_.path.c_str(), &fs) != 0) {
    return Internal("statvfs " + options_.path + ": " + std::strerror(errno));
  }
  return static_cast<uint64_t>(fs.f_bavail) * static_cast<uint64_t>(fs.f_frsize);
}

}  // namespace internal

Result<std::unique_ptr<EventStore>> OpenRocksDbEventStore(const StoreOptions& options) {
  if (options.path.empty()) return InvalidArgument("store path is empty");
  auto fault = std::make_shared<internal::WriteFault>();
  ASSIGN_OR_RETURN(auto db, internal::OpenDb(options.path, options.secondary_path,
                                             options.create_if_missing, fault));
  auto store =
      std::make_unique<internal::RocksDbEventStore>(std::move(db), options, std::move(fault));
  RETURN_IF_ERROR(store->Recover().WithContext("opening event store at " + options.path));
  return std::unique_ptr<EventStore>(std::move(store));
}

}  // namespace epoch::storage
