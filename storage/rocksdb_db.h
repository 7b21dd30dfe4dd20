// Internal to storage/: one open RocksDB instance (Db) with the store's column
// families, how it is opened (OpenDb), and the store's sticky write failure
// (WriteFault) that RocksDB's background errors feed. Used by RocksDbEventStore
// (storage/rocksdb_event_store_internal.h); not an interface for anything outside
// storage/, and the only header here that includes RocksDB's.
//
// Why RocksDB's info log (the LOG file) is ours: RocksDB 7.8 (Debian's build keeps
// its assertions) aborts the process on any write to a file whose writer has
// failed before (WritableFileWriter::AssertFalseAndGetStatusForPrevError,
// "sync_without_flush_called_"). Its own info log is such a file, and RocksDB
// writes it from every thread, including the error handler that reports the first
// failure: on a full disk the second LOG line aborted epochd. So OpenDb gives
// RocksDB an info log of plain write(2) calls that drop a line the disk cannot
// take (InfoLog in rocksdb_db.cc). The WAL, MANIFEST and SST writers are never
// called again after their first failure because the store stops writing (the
// failure policy in rocksdb_event_store.cc).
//
// Background errors: a RocksDB EventListener (FaultListener in rocksdb_db.cc)
// turns a background error that stops writes (severity hard or worse: a flush that
// found the disk full) into the store's WriteFault, and turns RocksDB's own
// recovery from it off.
//
// Thread-safety: WriteFault is internally synchronised. A Db is immutable once
// opened; rocksdb::DB is thread-safe. A Db is shared (shared_ptr) by the store and
// its in-flight readers and closes with the last of them.
#pragma once

#include <rocksdb/db.h>

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/mutex.h"
#include "common/status.h"
#include "storage/event_store.h"

namespace epoch::storage::internal {

// A RocksDB status as the store reports it: NoSpace is kInternal with
// kNoSpaceDetail; Corruption, NotFound keep their codes; Busy/TimedOut/TryAgain
// and a LOCK file held by another process (the primary) are kUnavailable; the
// rest kInternal. `context` prefixes the message.
Status FromRocks(const rocksdb::Status& s, std::string_view context);

// A RocksDB error that stops writes, as the store reports it: kInternal (with
// kNoSpaceDetail on a full disk), saying that the store refuses every write until
// it is reopened.
Status WriteFailed(const rocksdb::Status& s, std::string_view what);

// The store's sticky write failure (the failure policy in rocksdb_event_store.cc),
// shared by the store and the RocksDB listeners of its instances (a listener may
// outlive the store while a reader holds the instance). The first failure stays.
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

// One open RocksDB instance (primary or secondary) with its column families.
struct Db {
  rocksdb::DB* db = nullptr;
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::ColumnFamilyHandle* events = nullptr;
  rocksdb::ColumnFamilyHandle* streams = nullptr;
  rocksdb::ColumnFamilyHandle* meta = nullptr;
  rocksdb::ColumnFamilyHandle* snapshots = nullptr;
  rocksdb::ColumnFamilyHandle* idempotency = nullptr;
  rocksdb::ColumnFamilyHandle* read_records = nullptr;  // the read model (event_store.h)
  rocksdb::ColumnFamilyHandle* read_index = nullptr;
  rocksdb::ColumnFamilyHandle* read_model(ReadModelFamily f) const {
    return f == ReadModelFamily::kRecords ? read_records : read_index;
  }
  bool secondary = false;

  Db() = default;
  Db(const Db&) = delete;
  Db& operator=(const Db&) = delete;
  ~Db();
};

// Opens path as primary, or as a secondary when secondary_path is not empty.
// Background errors that stop writes go to `fault`. Errors: FromRocks's (another
// process holding the primary is kUnavailable).
Result<std::shared_ptr<Db>> OpenDb(const std::string& path, const std::string& secondary_path,
                                   bool create_if_missing, std::shared_ptr<WriteFault> fault);

}  // namespace epoch::storage::internal
