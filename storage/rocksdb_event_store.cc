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
// Append with kInternal; the process must reopen the store (and replay) to learn
// what is durable. Reads keep working.
//
// Reads: take the published head (never return events beyond it), read through a
// RocksDB snapshot, decode and re-hash every event, and check the chain links.

#include <rocksdb/db.h>
#include <rocksdb/options.h>
#include <rocksdb/slice.h>
#include <rocksdb/write_batch.h>

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <unordered_map>
#include <unordered_set>

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

Status FromRocks(const rocksdb::Status& s, std::string_view context) {
  std::string msg = std::string(context) + ": " + s.ToString();
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

class RocksDbEventStore final : public EventStore {
 public:
  RocksDbEventStore(rocksdb::DB* db, std::vector<rocksdb::ColumnFamilyHandle*> handles,
                    std::function<bool()> fail_write_for_testing)
      : db_(db),
        handles_(std::move(handles)),
        fail_write_for_testing_(std::move(fail_write_for_testing)) {
    // Order of the descriptors in Open().
    events_ = handles_[1];
    streams_ = handles_[2];
    meta_ = handles_[3];
    snapshots_ = handles_[4];
    idempotency_ = handles_[5];
  }

  ~RocksDbEventStore() override {
    {
      std::lock_guard lock(state_mu_);
      closing_ = true;
    }
    head_cv_.notify_all();
    for (rocksdb::ColumnFamilyHandle* h : handles_) {
      // Best effort at shutdown: a failure here leaves nothing for us to undo.
      (void)db_->DestroyColumnFamilyHandle(h);
    }
    (void)db_->Close();
    delete db_;
  }

  // Reads the head from the last event (verifying it) and cross-checks the `meta`
  // head record written with every batch (detects a truncated log).
  Status Recover() {
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), events_));
    it->SeekToLast();
    uint64_t position = 0;
    Digest hash = codec::ZeroDigest();
    if (it->Valid()) {
      ASSIGN_OR_RETURN(position, codec::DecodePositionKey(it->key().ToStringView()));
      Envelope env;
      RETURN_IF_ERROR(codec::DecodeEvent(position, it->value().ToStringView(), &env, &hash));
    }
    if (!it->status().ok()) return FromRocks(it->status(), "reading the last event");

    std::string meta;
    rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), meta_, codec::kHeadMetaKey, &meta);
    if (s.ok()) {
      uint64_t meta_pos = 0;
      Digest meta_hash{};
      RETURN_IF_ERROR(codec::DecodeHeadValue(meta, &meta_pos, &meta_hash));
      if (meta_pos != position || meta_hash != hash) {
        return Corruption("event " + std::to_string(std::max(meta_pos, position)) +
                          ": log ends at " + std::to_string(position) +
                          " but the head record says " + std::to_string(meta_pos));
      }
    } else if (!s.IsNotFound()) {
      return FromRocks(s, "reading the head record");
    }
    head_position_ = position;
    head_hash_ = hash;
    return Status::Ok();
  }

  Result<AppendResult> Append(AppendBatch batch) override {
    size_t bytes = 0;
    RETURN_IF_ERROR(ValidateBatch(batch, &bytes));
    Writer w;
    w.batch = std::move(batch);
    w.bytes = bytes;

    std::unique_lock lock(queue_mu_);
    writers_.push_back(&w);
    while (!w.done && &w != writers_.front()) w.cv.wait(lock);
    if (w.done) return std::move(w.result);

    // Leader: take a group from the front of the queue.
    std::vector<Writer*> group;
    size_t group_bytes = 0;
    for (Writer* x : writers_) {
      if (!group.empty() && group_bytes + x->bytes > kMaxGroupBytes) break;
      group.push_back(x);
      group_bytes += x->bytes;
    }
    Status failed = failed_;
    lock.unlock();

    uint64_t new_head = 0;
    if (failed.ok()) {
      new_head = CommitGroup(group);
    } else {
      for (Writer* x : group) x->pending = failed;
    }
    if (new_head != 0) NotifySubscribers(new_head);

    lock.lock();
    for (Writer* x : group) {
      writers_.pop_front();  // the group is exactly the queue's prefix
      if (x->pending.ok()) {
        x->result = std::move(x->staged);
      } else {
        x->result = std::move(x->pending);
      }
      x->done = true;
      if (x != &w) x->cv.notify_one();
    }
    if (!writers_.empty()) writers_.front()->cv.notify_one();
    lock.unlock();
    return std::move(w.result);
  }

  Result<std::vector<Envelope>> ReadStream(const std::string& stream, uint64_t from_version,
                                           size_t limit) override {
    RETURN_IF_ERROR(codec::ValidateName("stream name", stream));
    std::vector<Envelope> out;
    if (limit == 0) return out;
    const uint64_t head = Head().position;
    from_version = std::max<uint64_t>(from_version, 1);

    SnapshotReads snap(db_);
    std::vector<std::pair<uint64_t, uint64_t>> refs;  // (version, position)
    {
      std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(snap.options, streams_));
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
      RETURN_IF_ERROR(ReadVerified(snap.options, position, &env));
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

    SnapshotReads snap(db_);
    // The link into the page: the first event's prev_hash must be the hash of
    // event `after` (itself verified), or zeros for position 1.
    Digest expected_prev = codec::ZeroDigest();
    if (after > 0) {
      Envelope prev;
      RETURN_IF_ERROR(ReadVerified(snap.options, after, &prev, &expected_prev));
    }
    const std::string upper = codec::EventKey(head + 1);
    rocksdb::Slice upper_slice(upper);
    rocksdb::ReadOptions ro = snap.options;
    ro.iterate_upper_bound = &upper_slice;
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(ro, events_));
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

  Result<Envelope> ReadAt(uint64_t position) override {
    if (position == 0 || position > Head().position) {
      return NotFound("no event at position " + std::to_string(position));
    }
    Envelope env;
    RETURN_IF_ERROR(ReadVerified(rocksdb::ReadOptions(), position, &env));
    return env;
  }

  HeadInfo Head() override {
    std::lock_guard lock(state_mu_);
    return HeadInfo{head_position_, ToHex(head_hash_)};
  }

  uint64_t StreamVersion(const std::string& stream) override {
    {
      std::lock_guard lock(state_mu_);
      auto it = versions_.find(stream);
      if (it != versions_.end()) return it->second;
    }
    // Not cached: read the index. Readers never fill the cache (only the leader
    // does), so a reader racing a commit cannot plant a stale version in it.
    Result<uint64_t> v = LoadStreamVersion(stream);
    return v.ok() ? *v : 0;
  }

  uint64_t WaitForHead(uint64_t after, std::chrono::milliseconds timeout) override {
    std::unique_lock lock(state_mu_);
    head_cv_.wait_for(lock, timeout, [&] { return head_position_ > after || closing_; });
    return head_position_;
  }

  uint64_t Subscribe(std::function<void(uint64_t head)> fn) override {
    std::lock_guard lock(sub_mu_);
    uint64_t id = ++next_subscriber_;
    subscribers_.emplace(id, std::make_shared<std::function<void(uint64_t)>>(std::move(fn)));
    return id;
  }

  void Unsubscribe(uint64_t id) override {
    std::lock_guard lock(sub_mu_);
    subscribers_.erase(id);
  }

  Result<std::optional<std::string>> GetIdempotency(const std::string& tenant,
                                                    const std::string& key) override {
    RETURN_IF_ERROR(codec::ValidateName("idempotency tenant", tenant, /*allow_empty=*/true));
    return GetOptional(idempotency_, codec::IdempotencyKey(tenant, key), "idempotency key");
  }

  Result<std::optional<std::string>> GetMeta(const std::string& key) override {
    return GetOptional(meta_, key, "meta " + key);
  }

  Status PutMeta(const std::string& key, const std::string& value) override {
    if (key.empty()) return InvalidArgument("empty meta key");
    if (key == codec::kHeadMetaKey) return InvalidArgument("meta key 'head' is the store's own");
    if (Status f = AppendFailure(); !f.ok()) return f;
    rocksdb::WriteOptions wo;
    wo.sync = true;
    rocksdb::Status s = db_->Put(wo, meta_, key, value);
    if (!s.ok()) return FromRocks(s, "writing meta " + key);
    return Status::Ok();
  }

  Status PutSnapshot(uint64_t position, const std::string& bytes) override {
    if (position > Head().position) {
      return InvalidArgument("snapshot at " + std::to_string(position) + " is past the head");
    }
    rocksdb::WriteOptions wo;
    wo.sync = true;
    rocksdb::Status s = db_->Put(wo, snapshots_, codec::EventKey(position), bytes);
    if (!s.ok()) return FromRocks(s, "writing snapshot " + std::to_string(position));
    return Status::Ok();
  }

  Result<std::optional<std::pair<uint64_t, std::string>>> LatestSnapshot() override {
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), snapshots_));
    it->SeekToLast();
    if (!it->status().ok()) return FromRocks(it->status(), "reading snapshots");
    if (!it->Valid()) return std::optional<std::pair<uint64_t, std::string>>();
    ASSIGN_OR_RETURN(uint64_t position, codec::DecodePositionKey(it->key().ToStringView()));
    return std::optional<std::pair<uint64_t, std::string>>(
        std::make_pair(position, it->value().ToString()));
  }

  uint64_t ApproximateSizeBytes() override {
    uint64_t total = 0;
    for (rocksdb::ColumnFamilyHandle* h : handles_) {
      uint64_t v = 0;
      if (db_->GetIntProperty(h, "rocksdb.live-sst-files-size", &v)) total += v;
      if (db_->GetIntProperty(h, "rocksdb.cur-size-all-mem-tables", &v)) total += v;
    }
    return total;
  }

  StoreStats Stats() override {
    std::lock_guard lock(state_mu_);
    return stats_;
  }

 private:
  // One Append call waiting in the queue. Fields other than batch/bytes are
  // written by the leader that takes it; result/done under queue_mu_.
  struct Writer {
    AppendBatch batch;
    size_t bytes = 0;
    Status pending;                                     // leader: this writer's error
    Result<AppendResult> staged = AppendResult{};       // leader: its result if committed
    Result<AppendResult> result = Internal("not run");  // handed over under queue_mu_
    bool done = false;
    std::condition_variable cv;
  };

  // A consistent view across column families for one read call.
  struct SnapshotReads {
    explicit SnapshotReads(rocksdb::DB* db) : db(db), snapshot(db->GetSnapshot()) {
      options.snapshot = snapshot;
    }
    ~SnapshotReads() { db->ReleaseSnapshot(snapshot); }
    rocksdb::DB* db;
    const rocksdb::Snapshot* snapshot;
    rocksdb::ReadOptions options;
  };

  Status AppendFailure() {
    std::lock_guard lock(queue_mu_);
    return failed_;
  }

  Status ReadVerified(const rocksdb::ReadOptions& ro, uint64_t position, Envelope* env,
                      Digest* hash = nullptr) {
    rocksdb::PinnableSlice value;
    rocksdb::Status s = db_->Get(ro, events_, codec::EventKey(position), &value);
    if (s.IsNotFound()) return Corruption("event " + std::to_string(position) + ": missing");
    if (!s.ok()) return FromRocks(s, "reading event " + std::to_string(position));
    return codec::DecodeEvent(position, value.ToStringView(), env, hash);
  }

  Result<std::optional<std::string>> GetOptional(rocksdb::ColumnFamilyHandle* cf,
                                                 const std::string& key, std::string_view what) {
    std::string value;
    rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), cf, key, &value);
    if (s.IsNotFound()) return std::optional<std::string>();
    if (!s.ok()) return FromRocks(s, std::string("reading ") + std::string(what));
    return std::optional<std::string>(std::move(value));
  }

  // The stream's last version in the `streams` index (0 = no stream).
  Result<uint64_t> LoadStreamVersion(const std::string& stream) {
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), streams_));
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
      std::lock_guard lock(state_mu_);
      auto it = versions_.find(stream);
      if (it != versions_.end()) return it->second;
    }
    ASSIGN_OR_RETURN(uint64_t v, LoadStreamVersion(stream));
    std::lock_guard lock(state_mu_);
    versions_.emplace(stream, v);
    return v;
  }

  // Validates the writer against committed state plus the group so far
  // (group_versions, group_keys). On success: *mine holds the writer's new stream
  // versions (the caller merges them into the group), (*bases)[i] the version of
  // appends[i]'s stream before it, *keys the encoded idempotency keys.
  Status Validate(const Writer& w, const std::unordered_map<std::string, uint64_t>& group_versions,
                  const std::unordered_set<std::string>& group_keys,
                  std::unordered_map<std::string, uint64_t>* mine, std::vector<uint64_t>* bases,
                  std::vector<std::string>* keys) {
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
        ASSIGN_OR_RETURN(auto existing, GetOptional(idempotency_, k, "idempotency key"));
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
    uint64_t next;
    Digest prev;
    {
      std::lock_guard lock(state_mu_);
      if (versions_.size() > kMaxCachedStreams) versions_.clear();
      next = head_position_;
      prev = head_hash_;
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
      w->pending = Validate(*w, group_versions, group_keys, &mine, &bases, &keys);
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
          wb.Put(events_, codec::EventKey(next), value);
          wb.Put(streams_, codec::StreamKey(sa.stream, version), codec::PositionValue(next));
          prev = hash;
          ++events;
        }
        res.stream_versions.push_back(version);
      }
      res.last_position = next;
      for (size_t i = 0; i < keys.size(); ++i) {
        wb.Put(idempotency_, keys[i], w->batch.idempotency[i].second);
        group_keys.insert(std::move(keys[i]));
      }
      for (auto& [s, v] : mine) group_versions[s] = v;
      w->staged = std::move(res);
      ++committed;
    }

    if (committed == 0) {
      std::lock_guard lock(state_mu_);
      stats_.append_conflicts += conflicts;
      return 0;
    }
    wb.Put(meta_, codec::kHeadMetaKey, codec::HeadValue(next, prev));
    rocksdb::WriteOptions wo;
    wo.sync = true;
    rocksdb::Status s = fail_write_for_testing_ && fail_write_for_testing_()
                            ? rocksdb::Status::IOError("injected write failure")
                            : db_->Write(wo, &wb);
    if (!s.ok()) {
      Status err = Internal(
          "event store write failed (the batch may or may not be durable; the store refuses "
          "further appends until reopened): " +
          s.ToString());
      {
        std::lock_guard lock(queue_mu_);
        failed_ = err;
      }
      for (Writer* w : group) {
        if (w->pending.ok()) w->pending = err;
      }
      return 0;
    }
    {
      std::lock_guard lock(state_mu_);
      head_position_ = next;
      head_hash_ = prev;
      for (auto& [stream, v] : group_versions) versions_[stream] = v;
      stats_.appends += committed;
      stats_.append_conflicts += conflicts;
      stats_.events += events;
      stats_.commit_groups += 1;
    }
    head_cv_.notify_all();
    return next;
  }

  // On the leader's thread, no store lock held; serial across commits.
  void NotifySubscribers(uint64_t head) {
    std::vector<std::shared_ptr<std::function<void(uint64_t)>>> fns;
    {
      std::lock_guard lock(sub_mu_);
      fns.reserve(subscribers_.size());
      for (auto& [id, fn] : subscribers_) fns.push_back(fn);
    }
    for (auto& fn : fns) (*fn)(head);
  }

  rocksdb::DB* db_;
  std::vector<rocksdb::ColumnFamilyHandle*> handles_;
  rocksdb::ColumnFamilyHandle* events_;
  rocksdb::ColumnFamilyHandle* streams_;
  rocksdb::ColumnFamilyHandle* meta_;
  rocksdb::ColumnFamilyHandle* snapshots_;
  rocksdb::ColumnFamilyHandle* idempotency_;
  const std::function<bool()> fail_write_for_testing_;

  std::mutex queue_mu_;
  std::deque<Writer*> writers_;  // guarded by queue_mu_
  Status failed_;                // guarded by queue_mu_; non-OK after a failed write

  std::mutex state_mu_;
  std::condition_variable head_cv_;
  uint64_t head_position_ = 0;  // guarded by state_mu_; written only by the leader
  Digest head_hash_{};          // guarded by state_mu_
  std::unordered_map<std::string, uint64_t> versions_;  // guarded by state_mu_; committed
  StoreStats stats_;                                    // guarded by state_mu_
  bool closing_ = false;                                // guarded by state_mu_

  std::mutex sub_mu_;
  uint64_t next_subscriber_ = 0;  // guarded by sub_mu_
  std::map<uint64_t, std::shared_ptr<std::function<void(uint64_t)>>> subscribers_;  // sub_mu_
};

}  // namespace

Result<std::unique_ptr<EventStore>> OpenRocksDbEventStore(const StoreOptions& options) {
  if (options.path.empty()) return InvalidArgument("store path is empty");
  rocksdb::Options db_options;
  db_options.create_if_missing = options.create_if_missing;
  db_options.create_missing_column_families = true;
  rocksdb::ColumnFamilyOptions cf_options;
  std::vector<rocksdb::ColumnFamilyDescriptor> families = {
      {rocksdb::kDefaultColumnFamilyName, cf_options},
      {codec::kEventsFamily, cf_options},
      {codec::kStreamsFamily, cf_options},
      {codec::kMetaFamily, cf_options},
      {codec::kSnapshotsFamily, cf_options},
      {codec::kIdempotencyFamily, cf_options},
  };
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* db = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(db_options, options.path, families, &handles, &db);
  if (!s.ok()) return FromRocks(s, "opening event store at " + options.path);
  auto store =
      std::make_unique<RocksDbEventStore>(db, std::move(handles), options.fail_write_for_testing);
  RETURN_IF_ERROR(store->Recover().WithContext("opening event store at " + options.path));
  return std::unique_ptr<EventStore>(std::move(store));
}

}  // namespace epoch::storage
