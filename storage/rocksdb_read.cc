// RocksDbEventStore's reads (storage/rocksdb_event_store_internal.h): ReadStream,
// ReadAll, ReadAt, VerifyChain, the head and stream versions, WaitForHead, and
// subscriptions (the subscribers are called by rocksdb_append.cc after a commit,
// and by CatchUp and Promote).
//
// Reads: take the published head (never return events beyond it), read through a
// RocksDB snapshot, decode and re-hash every event, and check the chain links.

#include <rocksdb/db.h>
#include <rocksdb/iterator.h>
#include <rocksdb/options.h>
#include <rocksdb/slice.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "common/mutex.h"
#include "storage/codec.h"
#include "storage/event_page.h"
#include "storage/event_store.h"
#include "storage/rocksdb_db.h"
#include "storage/rocksdb_event_store_internal.h"

namespace epoch::storage::internal {
namespace {

bool Matches(const codec::EventFields& env, const ReadFilter& filter) {
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

}  // namespace

Result<std::vector<Envelope>> RocksDbEventStore::ReadStream(const std::string& stream,
                                                            uint64_t from_version, size_t limit) {
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

// Walks the log from `after` + 1 to the head through one snapshot, checking that
// positions are dense, every event decodes with the hash of its bytes, and each links
// to the one before it (the first to event `after`, read again). Calls
// take(position, fields) for each event until it returns false; its views live until
// the next event.
template <typename Take>
Status RocksDbEventStore::ScanLog(uint64_t after, const rocksdb::ReadOptions& options, Take take) {
  const uint64_t head = Head().position;
  if (after >= head) return Status::Ok();
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
  rocksdb::ReadOptions ro = options;
  ro.snapshot = snap.options.snapshot;
  ro.iterate_upper_bound = &upper_slice;
  std::unique_ptr<rocksdb::Iterator> it(d->db->NewIterator(ro, d->events));
  uint64_t expected = after + 1;
  codec::EventFields f;
  for (it->Seek(codec::EventKey(after + 1)); it->Valid(); it->Next(), ++expected) {
    ASSIGN_OR_RETURN(uint64_t position, codec::DecodePositionKey(it->key().ToStringView()));
    if (position != expected) {
      return Corruption("event " + std::to_string(expected) + ": missing");
    }
    RETURN_IF_ERROR(codec::DecodeEventFields(position, it->value().ToStringView(), &f));
    if (f.prev_hash != expected_prev) {
      return Corruption("event " + std::to_string(position) +
                        ": prev_hash does not match the hash of event " +
                        std::to_string(position - 1));
    }
    expected_prev = f.hash;
    if (!take(position, f)) return Status::Ok();
  }
  if (!it->status().ok()) return FromRocks(it->status(), "reading the log");
  if (expected <= head) return Corruption("event " + std::to_string(expected) + ": missing");
  return Status::Ok();
}

Result<std::vector<Envelope>> RocksDbEventStore::ReadAll(uint64_t after, size_t limit,
                                                         const ReadFilter& filter) {
  std::vector<Envelope> out;
  if (limit == 0) return out;
  RETURN_IF_ERROR(
      ScanLog(after, rocksdb::ReadOptions(), [&](uint64_t position, const codec::EventFields& f) {
        if (!Matches(f, filter)) return true;
        Envelope& env = out.emplace_back();
        codec::AssignEventFields(position, f, &env);
        env.prev_hash = ToHex(f.prev_hash);
        env.hash = ToHex(f.hash);
        return out.size() < limit;
      }));
  return out;
}

Status RocksDbEventStore::ReadPage(uint64_t after, size_t limit, EventPage* page) {
  page->Clear();
  if (limit == 0) return Status::Ok();
  // A replay reads the log once, front to back: its blocks would only evict what
  // serving reads keep in the block cache.
  rocksdb::ReadOptions ro;
  ro.fill_cache = false;
  return ScanLog(after, ro, [&](uint64_t position, const codec::EventFields& f) {
    PageEvent& e = page->Add();
    codec::AssignEventFields(position, f, &e);
    e.prev_hash = f.prev_hash;
    e.hash = f.hash;
    return page->size() < limit;
  });
}

Result<ChainReport> RocksDbEventStore::VerifyChain(uint64_t from, const std::string& from_hash) {
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
    codec::EventFields f;
    Status st = codec::DecodeEventFields(expected, it->value().ToStringView(), &f);
    if (!st.ok()) return fail(expected, st.message());
    const Digest& hash = f.hash;
    const Digest& prev = f.prev_hash;
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

Result<Envelope> RocksDbEventStore::ReadAt(uint64_t position) {
  if (position == 0 || position > Head().position) {
    return NotFound("no event at position " + std::to_string(position));
  }
  Envelope env;
  RETURN_IF_ERROR(ReadVerified(*db(), rocksdb::ReadOptions(), position, &env));
  return env;
}

HeadInfo RocksDbEventStore::Head() {
  MutexLock lock(&state_mu_);
  return HeadInfo{head_position_, ToHex(head_hash_)};
}

uint64_t RocksDbEventStore::StreamVersion(const std::string& stream) {
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

uint64_t RocksDbEventStore::WaitForHead(uint64_t after, std::chrono::milliseconds timeout) {
  MutexLock lock(&state_mu_);
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!(head_position_ > after || closing_)) {
    if (!head_cv_.WaitUntil(&state_mu_, deadline)) break;  // timed out
  }
  return head_position_;
}

uint64_t RocksDbEventStore::Subscribe(std::function<void(uint64_t head)> fn) {
  MutexLock lock(&sub_mu_);
  uint64_t id = ++next_subscriber_;
  subscribers_.emplace(id, std::make_shared<std::function<void(uint64_t)>>(std::move(fn)));
  return id;
}

void RocksDbEventStore::Unsubscribe(uint64_t id) {
  MutexLock lock(&sub_mu_);
  subscribers_.erase(id);
}

Status RocksDbEventStore::ReadVerified(const Db& d, const rocksdb::ReadOptions& ro,
                                       uint64_t position, Envelope* env, Digest* hash) {
  rocksdb::PinnableSlice value;
  rocksdb::Status s = d.db->Get(ro, d.events, codec::EventKey(position), &value);
  if (s.IsNotFound()) return Corruption("event " + std::to_string(position) + ": missing");
  if (!s.ok()) return FromRocks(s, "reading event " + std::to_string(position));
  return codec::DecodeEvent(position, value.ToStringView(), env, hash);
}

Result<uint64_t> RocksDbEventStore::LoadStreamVersion(const std::string& stream) {
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

}  // namespace epoch::storage::internal
