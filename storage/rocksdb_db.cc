// The RocksDB instance under the event store: opening it (OpenDb), its info log
// (InfoLog), and its background-error listener (FaultListener). Why each exists:
// storage/rocksdb_db.h.

#include "storage/rocksdb_db.h"

#include <fcntl.h>
#include <rocksdb/env.h>
#include <rocksdb/listener.h>
#include <rocksdb/options.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstring>

#include "common/fd.h"
#include "storage/codec.h"
#include "storage/event_store.h"

namespace epoch::storage::internal {
namespace {

// RocksDB says the filesystem is full (ENOSPC surfaces as IOError/NoSpace).
bool RocksNoSpace(const rocksdb::Status& s) {
  return s.IsNoSpace() ||
         (s.IsIOError() && s.ToString().find("No space left on device") != std::string::npos);
}

// RocksDB's info log, written by us (see rocksdb_db.h): each line is one
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

}  // namespace

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

Status WriteFailed(const rocksdb::Status& s, std::string_view what) {
  std::string msg = std::string(what) + ": " + s.ToString() +
                    " (the store refuses every write until it is reopened)";
  if (RocksNoSpace(s)) {
    return Status(StatusCode::kInternal, "the filesystem is full: " + msg,
                  {std::string(kNoSpaceDetail)});
  }
  return Internal(std::move(msg));
}

Db::~Db() {
  if (!db) return;
  for (rocksdb::ColumnFamilyHandle* h : handles) {
    // Best effort at shutdown: a failure here leaves nothing for us to undo.
    (void)db->DestroyColumnFamilyHandle(h);
  }
  (void)db->Close();
  delete db;
}

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
  // so that a full disk drops lines instead of aborting (rocksdb_db.h).
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
      {codec::kReadRecordsFamily, cf_options},
      {codec::kReadIndexFamily, cf_options},
  };
  auto d = std::make_shared<Db>();
  rocksdb::Status s = secondary_path.empty()
                          ? rocksdb::DB::Open(db_options, path, families, &d->handles, &d->db)
                          : rocksdb::DB::OpenAsSecondary(db_options, path, secondary_path, families,
                                                         &d->handles, &d->db);
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
  d->read_records = d->handles[6];
  d->read_index = d->handles[7];
  d->secondary = !secondary_path.empty();
  return d;
}

}  // namespace epoch::storage::internal
