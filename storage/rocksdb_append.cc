// RocksDbEventStore::Append (storage/rocksdb_event_store_internal.h): the group
// commit, and the notification of subscribers after each commit.
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
// A failed write: the failure policy in rocksdb_event_store.cc.

#include <rocksdb/db.h>
#include <rocksdb/options.h>
#include <rocksdb/write_batch.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "common/mutex.h"
#include "storage/codec.h"
#include "storage/event_store.h"
#include "storage/rocksdb_db.h"
#include "storage/rocksdb_event_store_internal.h"

namespace epoch::storage::internal {
namespace {

// A group stops growing once it holds this many bytes of payload (the leader's own
// append always goes in).
constexpr size_t kMaxGroupBytes = 4u << 20;
// The stream-version cache is only a cache: past this size the leader drops it and
// reloads versions lazily from the `streams` family.
constexpr size_t kMaxCachedStreams = 1u << 20;

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
  for (const ReadModelWrite& w : batch.read_model) {
    if (w.key.empty()) return InvalidArgument("a read-model write has an empty key");
    total += w.key.size() + (w.value ? w.value->size() : 0) + 16;
  }
  *bytes = total;
  return Status::Ok();
}

}  // namespace

Result<AppendResult> RocksDbEventStore::Append(AppendBatch batch) {
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

Result<uint64_t> RocksDbEventStore::CommittedVersion(const std::string& stream) {
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

Status RocksDbEventStore::Validate(const Db& d, uint64_t fence, const Writer& w,
                                   const std::unordered_map<std::string, uint64_t>& group_versions,
                                   const std::unordered_set<std::string>& group_keys,
                                   std::unordered_map<std::string, uint64_t>* mine,
                                   std::vector<uint64_t>* bases, std::vector<std::string>* keys) {
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
    bool taken = group_keys.contains(k) || std::find(keys->begin(), keys->end(), k) != keys->end();
    if (!taken) {
      ASSIGN_OR_RETURN(auto existing, GetOptional(d, d.idempotency, k, "idempotency key"));
      taken = existing.has_value();
    }
    if (taken) {
      size_t nul = k.find('\0');
      return Conflict("idempotency key '" + k.substr(nul + 1) + "' of tenant '" + k.substr(0, nul) +
                      "' exists");
    }
    keys->push_back(k);
  }
  return Status::Ok();
}

uint64_t RocksDbEventStore::CommitGroup(const std::vector<Writer*>& group) {
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
    for (const ReadModelWrite& rw : w->batch.read_model) {
      if (rw.value) {
        wb.Put(d->read_model(rw.family), rw.key, *rw.value);
      } else {
        wb.Delete(d->read_model(rw.family), rw.key);
      }
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

void RocksDbEventStore::NotifySubscribers(uint64_t head) {
  std::vector<std::shared_ptr<std::function<void(uint64_t)>>> fns;
  {
    MutexLock lock(&sub_mu_);
    fns.reserve(subscribers_.size());
    for (auto& [id, fn] : subscribers_) fns.push_back(fn);
  }
  for (auto& fn : fns) (*fn)(head);
}

}  // namespace epoch::storage::internal
