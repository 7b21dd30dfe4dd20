#include <gtest/gtest.h>
#include <rocksdb/db.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <mutex>
#include <set>
#include <thread>

#include "common/sha256.h"
#include "storage/codec.h"
#include "storage/event_page.h"
#include "storage/event_store.h"
#include "storage/forwarding_store_test_util.h"

namespace epoch::storage {
namespace {

constexpr char kTime[] = "2026-11-28T13:38:40.123456Z";

class StoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/epoch-storage-test-XXXXXX";
    char* dir = mkdtemp(tmpl);
    ASSERT_NE(dir, nullptr);
    dir_ = dir;
    Open();
  }
  void TearDown() override {
    store_.reset();
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  void Open() {
    auto r = OpenRocksDbEventStore(StoreOptions{dir_ + "/store"});
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    store_ = std::move(r).value();
  }
  Status Reopen() {
    store_.reset();
    auto r = OpenRocksDbEventStore(StoreOptions{dir_ + "/store"});
    if (!r.ok()) return r.status();
    store_ = std::move(r).value();
    return Status::Ok();
  }

  static AppendBatch One(const std::string& stream, uint64_t expected,
                         std::vector<std::string> types, const std::string& data = "{}") {
    AppendBatch b;
    b.time = kTime;
    b.epoch = 1;
    StreamAppend sa{stream, expected, {}};
    for (auto& t : types) sa.events.push_back(NewEvent{t, 1, "system", data});
    b.appends.push_back(std::move(sa));
    return b;
  }

  // Opens the store's RocksDB directly (the store must be closed), applies fn to
  // the `events` family.
  void WithRawEvents(const std::function<void(rocksdb::DB*, rocksdb::ColumnFamilyHandle*)>& fn) {
    store_.reset();
    std::vector<rocksdb::ColumnFamilyDescriptor> cfs;
    for (const char* name : {"default", codec::kEventsFamily, codec::kStreamsFamily,
                             codec::kMetaFamily, codec::kSnapshotsFamily, codec::kIdempotencyFamily,
                             codec::kReadRecordsFamily, codec::kReadIndexFamily}) {
      cfs.emplace_back(name, rocksdb::ColumnFamilyOptions());
    }
    std::vector<rocksdb::ColumnFamilyHandle*> handles;
    rocksdb::DB* db = nullptr;
    ASSERT_TRUE(rocksdb::DB::Open(rocksdb::Options(), dir_ + "/store", cfs, &handles, &db).ok());
    fn(db, handles[1]);
    for (auto* h : handles) ASSERT_TRUE(db->DestroyColumnFamilyHandle(h).ok());
    ASSERT_TRUE(db->Close().ok());
    delete db;
  }

  std::string dir_;
  std::unique_ptr<EventStore> store_;
};

TEST_F(StoreTest, EmptyStore) {
  HeadInfo head = store_->Head();
  EXPECT_EQ(head.position, 0u);
  EXPECT_EQ(head.hash, std::string(64, '0'));
  auto all = store_->ReadAll(0, 100);
  ASSERT_TRUE(all.ok());
  EXPECT_TRUE(all->empty());
  EXPECT_EQ(store_->ReadAt(1).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(store_->StreamVersion("run-x"), 0u);
  auto snap = store_->LatestSnapshot();
  ASSERT_TRUE(snap.ok());
  EXPECT_FALSE(snap->has_value());
}

TEST_F(StoreTest, AppendReadStreamReadAllAndHead) {
  auto r1 = store_->Append(One("run-1", kNoStream, {"RunSubmitted", "StepReady", "JobQueued"}));
  ASSERT_TRUE(r1.ok()) << r1.status().ToString();
  EXPECT_EQ(r1->first_position, 1u);
  EXPECT_EQ(r1->last_position, 3u);
  EXPECT_EQ(r1->stream_versions, std::vector<uint64_t>{3});

  auto r2 = store_->Append(One("workflow-w", kNoStream, {"WorkflowRegistered"}, "{\"v\":1}"));
  ASSERT_TRUE(r2.ok());
  EXPECT_EQ(r2->first_position, 4u);
  EXPECT_EQ(r2->last_position, 4u);
  EXPECT_EQ(r2->stream_versions, std::vector<uint64_t>{1});

  auto r3 = store_->Append(One("run-1", 3, {"JobSucceeded"}));
  ASSERT_TRUE(r3.ok()) << r3.status().ToString();
  EXPECT_EQ(r3->first_position, 5u);
  EXPECT_EQ(r3->stream_versions, std::vector<uint64_t>{4});

  EXPECT_EQ(store_->StreamVersion("run-1"), 4u);
  EXPECT_EQ(store_->StreamVersion("workflow-w"), 1u);

  auto stream = store_->ReadStream("run-1", 2, 10);
  ASSERT_TRUE(stream.ok()) << stream.status().ToString();
  ASSERT_EQ(stream->size(), 3u);
  EXPECT_EQ((*stream)[0].version, 2u);
  EXPECT_EQ((*stream)[0].position, 2u);
  EXPECT_EQ((*stream)[0].type, "StepReady");
  EXPECT_EQ((*stream)[2].version, 4u);
  EXPECT_EQ((*stream)[2].position, 5u);
  EXPECT_EQ((*stream)[2].type, "JobSucceeded");
  auto limited = store_->ReadStream("run-1", 0, 2);
  ASSERT_TRUE(limited.ok());
  ASSERT_EQ(limited->size(), 2u);
  EXPECT_EQ((*limited)[0].version, 1u);
  auto none = store_->ReadStream("run-", 1, 10);  // a prefix is not a stream
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->empty());

  auto all = store_->ReadAll(0, 100);
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->size(), 5u);
  for (size_t i = 0; i < all->size(); ++i) EXPECT_EQ((*all)[i].position, i + 1);
  EXPECT_EQ((*all)[3].stream, "workflow-w");
  EXPECT_EQ((*all)[3].data, "{\"v\":1}");
  EXPECT_EQ((*all)[3].time, kTime);
  EXPECT_EQ((*all)[3].epoch, 1u);
  EXPECT_EQ((*all)[3].actor, "system");

  auto after = store_->ReadAll(2, 2);
  ASSERT_TRUE(after.ok());
  ASSERT_EQ(after->size(), 2u);
  EXPECT_EQ((*after)[0].position, 3u);
  EXPECT_EQ((*after)[1].position, 4u);

  auto runs = store_->ReadAll(0, 100, ReadFilter{"run-", {}});
  ASSERT_TRUE(runs.ok());
  ASSERT_EQ(runs->size(), 4u);
  for (const auto& e : *runs) EXPECT_EQ(e.stream, "run-1");

  auto typed = store_->ReadAll(0, 100, ReadFilter{"", {"JobQueued", "WorkflowRegistered"}});
  ASSERT_TRUE(typed.ok());
  ASSERT_EQ(typed->size(), 2u);
  EXPECT_EQ((*typed)[0].position, 3u);
  EXPECT_EQ((*typed)[1].position, 4u);

  auto both = store_->ReadAll(0, 1, ReadFilter{"run-", {"JobQueued", "JobSucceeded"}});
  ASSERT_TRUE(both.ok());
  ASSERT_EQ(both->size(), 1u);
  EXPECT_EQ((*both)[0].position, 3u);

  HeadInfo head = store_->Head();
  EXPECT_EQ(head.position, 5u);
  auto at = store_->ReadAt(5);
  ASSERT_TRUE(at.ok());
  EXPECT_EQ(at->hash, head.hash);
  EXPECT_EQ(store_->ReadAt(6).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(store_->ReadAt(0).status().code(), StatusCode::kNotFound);

  StoreStats stats = store_->Stats();
  EXPECT_EQ(stats.appends, 3u);
  EXPECT_EQ(stats.events, 5u);
  EXPECT_EQ(stats.commit_groups, 3u);
  EXPECT_GT(store_->ApproximateSizeBytes(), 0u);
}

// A store that leaves ReadPage to EventStore's default (through ReadAll), as a
// wrapping store (a test's tampered store) does; everything else is the real store.
using ReadAllOnlyStore = test_util::ForwardingEventStore;

// A PageReader's read: the store's ReadPage.
PageReader<EventPage>::Read PageReading(EventStore* store) {
  return [store](EventPage* page, uint64_t after, size_t limit) {
    return store->ReadPage(after, limit, page);
  };
}

// Twelve events of two streams, with payloads of growing length.
void AppendTwelve(EventStore* store) {
  for (int i = 0; i < 12; ++i) {
    AppendBatch b;
    b.time = kTime;
    b.epoch = 2;
    std::string stream = i % 3 == 0 ? "workflow-a-rather-long-stream-name" : "run-1";
    StreamAppend sa{stream, kAnyVersion, {}};
    sa.events.push_back(
        NewEvent{i % 2 ? "JobSucceeded" : "ContainerRegistered", static_cast<uint32_t>(1 + i % 2),
                 "user" + std::to_string(i) + "@tenant",
                 "{\"n\":\"" + std::string(static_cast<size_t>(10 * i), 'x') + "\"}"});
    b.appends.push_back(std::move(sa));
    ASSERT_TRUE(store->Append(std::move(b)).ok());
  }
}

// The page holds what ReadAll returns, hashes raw.
void ExpectPageIsReadAll(const EventPage& page, const std::vector<Envelope>& all) {
  ASSERT_EQ(page.size(), all.size());
  for (size_t i = 0; i < all.size(); ++i) {
    const PageEvent& e = page[i];
    const Envelope& env = all[i];
    EXPECT_EQ(e.position, env.position);
    EXPECT_EQ(e.stream, env.stream);
    EXPECT_EQ(e.version, env.version);
    EXPECT_EQ(e.type, env.type);
    EXPECT_EQ(e.schema, env.schema);
    EXPECT_EQ(e.time, env.time);
    EXPECT_EQ(e.epoch, env.epoch);
    EXPECT_EQ(e.actor, env.actor);
    EXPECT_EQ(e.data, env.data);
    EXPECT_EQ(ToHex(e.hash), env.hash);
    EXPECT_EQ(ToHex(e.prev_hash), env.prev_hash);
  }
}

TEST_F(StoreTest, ReadPageIsReadAllInPlaceWithRawDigests) {
  AppendTwelve(store_.get());
  auto all = store_->ReadAll(0, 100);
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->size(), 12u);
  EXPECT_EQ((*all)[11].data, "{\"n\":\"" + std::string(110, 'x') + "\"}");

  EventPage page;
  ASSERT_TRUE(store_->ReadPage(0, 100, &page).ok());
  ExpectPageIsReadAll(page, *all);
  EXPECT_EQ(page[0].prev_hash, Digest{});  // position 1 links to zeros
  EXPECT_EQ(page[4].prev_hash, page[3].hash);
  EXPECT_EQ(ToHex(page.back().hash), store_->Head().hash);

  // A refill reuses the slots and their strings: no slot is added, and slot 0's
  // payload buffer (event 12's 118 bytes) takes event 6's 58 in place.
  const size_t slots = page.capacity();
  ASSERT_TRUE(store_->ReadPage(5, 3, &page).ok());
  ExpectPageIsReadAll(page, std::vector<Envelope>(all->begin() + 5, all->begin() + 8));
  EXPECT_EQ(page.capacity(), slots);
  ASSERT_TRUE(store_->ReadPage(11, 1, &page).ok());
  ASSERT_EQ(page[0].data.size(), 118u);
  const char* buffer = page[0].data.data();
  ASSERT_TRUE(store_->ReadPage(5, 1, &page).ok());
  ASSERT_EQ(page.size(), 1u);
  EXPECT_EQ(page[0].position, 6u);
  EXPECT_EQ(page[0].data, (*all)[5].data);
  EXPECT_EQ(page[0].data.data(), buffer) << "slot 0 reallocated for a payload that fit";

  // Past the head, and a limit of 0: empty pages.
  ASSERT_TRUE(store_->ReadPage(12, 10, &page).ok());
  EXPECT_TRUE(page.empty());
  ASSERT_TRUE(store_->ReadPage(0, 0, &page).ok());
  EXPECT_TRUE(page.empty());

  // EventStore's default ReadPage (through ReadAll) fills the same page.
  ReadAllOnlyStore wrapped(store_.get());
  EventPage by_default;
  ASSERT_TRUE(wrapped.ReadPage(2, 7, &by_default).ok());
  ExpectPageIsReadAll(by_default, std::vector<Envelope>(all->begin() + 2, all->begin() + 9));
}

TEST_F(StoreTest, PageReaderReadsTheNextPageAheadIntoItsOtherPage) {
  AppendTwelve(store_.get());
  auto all = store_->ReadAll(0, 100);
  ASSERT_TRUE(all.ok());
  auto slice = [&](size_t from, size_t to) {
    return std::vector<Envelope>(all->begin() + static_cast<long>(from),
                                 all->begin() + static_cast<long>(to));
  };
  PageReader<EventPage> reader(PageReading(store_.get()));
  auto first = reader.Next(0, 5);
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  ExpectPageIsReadAll(**first, slice(0, 5));
  reader.ReadAhead(5, 5);
  auto second = reader.Next(5, 5);
  ASSERT_TRUE(second.ok());
  EXPECT_NE(*second, *first) << "the page read ahead is the other one";
  ExpectPageIsReadAll(**second, slice(5, 10));
  reader.ReadAhead(10, 5);
  auto third = reader.Next(10, 5);
  ASSERT_TRUE(third.ok());
  EXPECT_EQ(*third, *first);
  ExpectPageIsReadAll(**third, slice(10, 12));
  // A page read ahead that is not the one asked for is dropped; the asked one is read.
  reader.ReadAhead(12, 5);
  auto other = reader.Next(2, 3);
  ASSERT_TRUE(other.ok());
  ExpectPageIsReadAll(**other, slice(2, 5));
  // Through EventStore's default ReadPage, too.
  ReadAllOnlyStore wrapped(store_.get());
  PageReader<EventPage> by_default(PageReading(&wrapped));
  ASSERT_TRUE(by_default.Next(0, 6).ok());
  by_default.ReadAhead(6, 6);
  auto tail = by_default.Next(6, 6);
  ASSERT_TRUE(tail.ok());
  ExpectPageIsReadAll(**tail, slice(6, 12));
}

TEST_F(StoreTest, HashChainLinksAndMatchesCodec) {
  for (int i = 0; i < 4; ++i) {
    ASSERT_TRUE(store_->Append(One("s-" + std::to_string(i % 2), kAnyVersion, {"A", "B"})).ok());
  }
  auto all = store_->ReadAll(0, 100);
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->size(), 8u);
  EXPECT_EQ((*all)[0].prev_hash, std::string(64, '0'));
  for (size_t i = 0; i < all->size(); ++i) {
    const Envelope& e = (*all)[i];
    if (i > 0) {
      EXPECT_EQ(e.prev_hash, (*all)[i - 1].hash) << "position " << e.position;
    }
    std::string value;
    Digest hash{};
    ASSERT_TRUE(codec::EncodeEvent(e, &value, &hash).ok());
    EXPECT_EQ(ToHex(hash), e.hash);
    EXPECT_EQ(e.hash.size(), 64u);
    EXPECT_EQ(e.hash.find_first_not_of("0123456789abcdef"), std::string::npos);
  }
  EXPECT_EQ(store_->Head().hash, all->back().hash);
}

TEST_F(StoreTest, ConflictWritesNothing) {
  ASSERT_TRUE(store_->Append(One("run-1", kNoStream, {"RunSubmitted", "StepReady"})).ok());
  HeadInfo before = store_->Head();

  auto bad = store_->Append(One("run-1", 1, {"JobQueued"}));
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kConflict);
  EXPECT_NE(bad.status().message().find("stream is at 2"), std::string::npos)
      << bad.status().message();

  HeadInfo after = store_->Head();
  EXPECT_EQ(after.position, before.position);
  EXPECT_EQ(after.hash, before.hash);
  EXPECT_EQ(store_->StreamVersion("run-1"), 2u);
  auto all = store_->ReadAll(0, 100);
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(all->size(), 2u);
  EXPECT_EQ(store_->Stats().append_conflicts, 1u);
  EXPECT_EQ(store_->Stats().commit_groups, 1u);

  // The next append continues the chain from the unchanged head.
  auto ok = store_->Append(One("run-1", 2, {"JobQueued"}));
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(ok->first_position, 3u);
  auto third = store_->ReadAt(3);
  ASSERT_TRUE(third.ok());
  EXPECT_EQ(third->prev_hash, before.hash);
}

// The read model's writes ride in the events' batch: they land only if it commits,
// survive a reopen, scan in both directions within bounds, and clear as a whole.
TEST_F(StoreTest, ReadModelWritesCommitWithTheirEventsOrNotAtAll) {
  using F = ReadModelFamily;
  AppendBatch b = One("run-1", kNoStream, {"RunSubmitted"});
  b.read_model = {{F::kRecords, "r1", "one"},
                  {F::kIndex, "a\x01", "r1"},
                  {F::kIndex, "a\x02", "r2"},
                  {F::kIndex, "a\x03", "r3"},
                  {F::kIndex, "b\x01", "x"}};
  ASSERT_TRUE(store_->Append(std::move(b)).ok());
  // A batch that conflicts writes none of its read-model keys.
  AppendBatch bad = One("run-1", kNoStream, {"RunSubmitted"});
  bad.read_model = {{F::kRecords, "r1", std::nullopt}, {F::kRecords, "r9", "nine"}};
  EXPECT_EQ(store_->Append(std::move(bad)).status().code(), StatusCode::kConflict);
  ASSERT_TRUE(Reopen().ok());
  auto r1 = store_->GetReadModel(F::kRecords, "r1");
  ASSERT_TRUE(r1.ok());
  EXPECT_EQ(*r1, std::optional<std::string>("one"));
  auto r9 = store_->GetReadModel(F::kRecords, "r9");
  ASSERT_TRUE(r9.ok());
  EXPECT_FALSE(r9->has_value());
  auto keys = [](const Result<std::vector<ReadModelEntry>>& r) {
    std::vector<std::string> out;
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    if (r.ok()) {
      for (const auto& e : *r) out.push_back(e.key + "=" + e.value);
    }
    return out;
  };
  EXPECT_EQ(keys(store_->ScanReadModel(F::kIndex, "a", "b", false, 10)),
            (std::vector<std::string>{"a\x01=r1", "a\x02=r2", "a\x03=r3"}));
  EXPECT_EQ(keys(store_->ScanReadModel(F::kIndex, "a", "a\x03", true, 10)),
            (std::vector<std::string>{"a\x02=r2", "a\x01=r1"}));
  EXPECT_EQ(keys(store_->ScanReadModel(F::kIndex, "a", "", true, 2)),
            (std::vector<std::string>{"b\x01=x", "a\x03=r3"}));
  // Outside appends: a delete and a put; then everything goes at once.
  ASSERT_TRUE(
      store_->WriteReadModel({{F::kIndex, "a\x02", std::nullopt}, {F::kRecords, "r2", "two"}}, true)
          .ok());
  EXPECT_EQ(keys(store_->ScanReadModel(F::kIndex, "a", "b", false, 10)),
            (std::vector<std::string>{"a\x01=r1", "a\x03=r3"}));
  ASSERT_TRUE(store_->ClearReadModel().ok());
  EXPECT_TRUE(keys(store_->ScanReadModel(F::kIndex, "", "", false, 10)).empty());
  EXPECT_TRUE(keys(store_->ScanReadModel(F::kRecords, "", "", false, 10)).empty());
  // The log is untouched by all of it.
  EXPECT_EQ(store_->Head().position, 1u);
}

TEST_F(StoreTest, NoStreamSemantics) {
  auto first = store_->Append(One("run-1", kNoStream, {"RunSubmitted"}));
  ASSERT_TRUE(first.ok());
  auto again = store_->Append(One("run-1", kNoStream, {"RunSubmitted"}));
  EXPECT_EQ(again.status().code(), StatusCode::kConflict);
  EXPECT_NE(again.status().message().find("none (new stream)"), std::string::npos);
  auto any = store_->Append(One("run-1", kAnyVersion, {"StepReady"}));
  ASSERT_TRUE(any.ok());
  EXPECT_EQ(any->stream_versions, std::vector<uint64_t>{2});
  auto other_new = store_->Append(One("run-2", kNoStream, {"RunSubmitted"}));
  ASSERT_TRUE(other_new.ok());
  EXPECT_EQ(other_new->stream_versions, std::vector<uint64_t>{1});
  // Expecting version 1 of a stream that does not exist is a conflict too.
  EXPECT_EQ(store_->Append(One("run-3", 1, {"X"})).status().code(), StatusCode::kConflict);
  EXPECT_EQ(store_->StreamVersion("run-3"), 0u);
}

TEST_F(StoreTest, MultiStreamBatchIsAtomic) {
  ASSERT_TRUE(store_->Append(One("run-1", kNoStream, {"RunSubmitted"})).ok());
  ASSERT_TRUE(store_->Append(One("container-c", kNoStream, {"ContainerRegistered"})).ok());

  AppendBatch b;
  b.time = kTime;
  b.appends.push_back(StreamAppend{"run-1", 1, {NewEvent{"JobAssigned", 1, "system", "{}"}}});
  b.appends.push_back(StreamAppend{"container-c", 5, {NewEvent{"JobTaken", 1, "system", "{}"}}});
  b.idempotency.push_back({IdempotencyRecordKey("tenant", "key-1"), "run-1"});
  auto bad = store_->Append(b);
  ASSERT_EQ(bad.status().code(), StatusCode::kConflict);
  EXPECT_EQ(store_->Head().position, 2u);
  EXPECT_EQ(store_->StreamVersion("run-1"), 1u);
  EXPECT_EQ(store_->StreamVersion("container-c"), 1u);
  auto idem = store_->GetIdempotency("tenant", "key-1");
  ASSERT_TRUE(idem.ok());
  EXPECT_FALSE(idem->has_value());

  b.appends[1].expected_version = 1;
  auto good = store_->Append(b);
  ASSERT_TRUE(good.ok()) << good.status().ToString();
  EXPECT_EQ(good->first_position, 3u);
  EXPECT_EQ(good->last_position, 4u);
  EXPECT_EQ(good->stream_versions, (std::vector<uint64_t>{2, 2}));
  auto c = store_->ReadStream("container-c", 2, 10);
  ASSERT_TRUE(c.ok());
  ASSERT_EQ(c->size(), 1u);
  EXPECT_EQ((*c)[0].position, 4u);
}

TEST_F(StoreTest, SameStreamTwiceInOneBatch) {
  AppendBatch b;
  b.time = kTime;
  b.appends.push_back(StreamAppend{"run-1", kNoStream, {NewEvent{"A", 1, "u", "1"}}});
  b.appends.push_back(
      StreamAppend{"run-1", 1, {NewEvent{"B", 1, "u", "2"}, NewEvent{"C", 1, "u", "3"}}});
  auto r = store_->Append(b);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->stream_versions, (std::vector<uint64_t>{1, 3}));
  auto s = store_->ReadStream("run-1", 1, 10);
  ASSERT_TRUE(s.ok());
  ASSERT_EQ(s->size(), 3u);
  EXPECT_EQ((*s)[2].type, "C");
  EXPECT_EQ((*s)[2].version, 3u);
}

TEST_F(StoreTest, IdempotencyKeyConflict) {
  AppendBatch b = One("run-1", kNoStream, {"RunSubmitted"});
  b.idempotency.push_back({IdempotencyRecordKey("acme", "req-1"), "run-1"});
  ASSERT_TRUE(store_->Append(b).ok());
  auto got = store_->GetIdempotency("acme", "req-1");
  ASSERT_TRUE(got.ok());
  ASSERT_TRUE(got->has_value());
  EXPECT_EQ(**got, "run-1");

  AppendBatch retry = One("run-2", kNoStream, {"RunSubmitted"});
  retry.idempotency.push_back({IdempotencyRecordKey("acme", "req-1"), "run-2"});
  auto r = store_->Append(retry);
  EXPECT_EQ(r.status().code(), StatusCode::kConflict);
  EXPECT_EQ(r.status().message(), "idempotency key 'req-1' of tenant 'acme' exists");
  EXPECT_EQ(store_->Head().position, 1u);
  EXPECT_EQ(store_->StreamVersion("run-2"), 0u);
  auto still = store_->GetIdempotency("acme", "req-1");
  ASSERT_TRUE(still.ok() && still->has_value());
  EXPECT_EQ(**still, "run-1");

  // The same key of another tenant is independent.
  AppendBatch other = One("run-3", kNoStream, {"RunSubmitted"});
  other.idempotency.push_back({IdempotencyRecordKey("globex", "req-1"), "run-3"});
  EXPECT_TRUE(store_->Append(other).ok());

  // Malformed record keys are rejected.
  AppendBatch malformed = One("run-5", kNoStream, {"RunSubmitted"});
  malformed.idempotency.push_back({"no-separator", "run-5"});
  EXPECT_EQ(store_->Append(malformed).status().code(), StatusCode::kInvalidArgument);

  // A key repeated inside one batch conflicts with itself.
  AppendBatch dup = One("run-4", kNoStream, {"RunSubmitted"});
  dup.idempotency.push_back({IdempotencyRecordKey("acme", "req-9"), "run-4"});
  dup.idempotency.push_back({IdempotencyRecordKey("acme", "req-9"), "run-4"});
  EXPECT_EQ(store_->Append(dup).status().code(), StatusCode::kConflict);
  auto none = store_->GetIdempotency("acme", "req-9");
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_value());
}

TEST_F(StoreTest, RejectsInvalidBatches) {
  AppendBatch empty;
  EXPECT_EQ(store_->Append(empty).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(store_->Append(One("", kAnyVersion, {"A"})).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(store_->Append(One(std::string("a\0b", 3), kAnyVersion, {"A"})).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(store_->Append(One("run-1", kAnyVersion, {""})).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(store_->Append(One("run-1", kAnyVersion, {})).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(store_->Head().position, 0u);
}

TEST_F(StoreTest, GroupCommitUnderConcurrentAppenders) {
  constexpr int kThreads = 16;
  constexpr int kPerThread = 200;
  std::vector<std::vector<uint64_t>> positions(kThreads);
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      const std::string stream = "run-" + std::to_string(t);
      for (int i = 0; i < kPerThread; ++i) {
        auto r = store_->Append(One(stream, static_cast<uint64_t>(i), {"Tick"},
                                    std::to_string(t) + ":" + std::to_string(i)));
        if (!r.ok() || r->first_position != r->last_position ||
            r->stream_versions != std::vector<uint64_t>{static_cast<uint64_t>(i + 1)}) {
          ++failures;
          continue;
        }
        positions[t].push_back(r->first_position);
      }
    });
  }
  for (auto& th : threads) th.join();
  ASSERT_EQ(failures.load(), 0);

  constexpr uint64_t kTotal = kThreads * kPerThread;
  std::set<uint64_t> unique;
  for (auto& v : positions) unique.insert(v.begin(), v.end());
  ASSERT_EQ(unique.size(), kTotal);
  EXPECT_EQ(*unique.begin(), 1u);
  EXPECT_EQ(*unique.rbegin(), kTotal);
  EXPECT_EQ(store_->Head().position, kTotal);

  auto all = store_->ReadAll(0, kTotal + 10);  // verifies every hash and link
  ASSERT_TRUE(all.ok()) << all.status().ToString();
  ASSERT_EQ(all->size(), kTotal);
  for (int t = 0; t < kThreads; ++t) {
    for (int i = 0; i < kPerThread; ++i) {
      const Envelope& e = (*all)[positions[t][i] - 1];
      ASSERT_EQ(e.stream, "run-" + std::to_string(t));
      ASSERT_EQ(e.version, static_cast<uint64_t>(i + 1));
      ASSERT_EQ(e.data, std::to_string(t) + ":" + std::to_string(i));
    }
  }
  StoreStats stats = store_->Stats();
  EXPECT_EQ(stats.appends, kTotal);
  EXPECT_EQ(stats.events, kTotal);
  EXPECT_LT(stats.commit_groups, kTotal);
  EXPECT_GT(stats.commit_groups, 0u);
}

TEST_F(StoreTest, ConcurrentConflictFailsOnlyItself) {
  constexpr int kThreads = 16;
  std::atomic<int> ok{0}, conflicts{0}, other{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      // Everyone races to create the same stream; each also owns a stream of its own.
      AppendBatch race = One("run-shared", kNoStream, {"RunSubmitted"});
      auto r = store_->Append(race);
      if (r.ok()) {
        ++ok;
      } else if (r.status().code() == StatusCode::kConflict) {
        ++conflicts;
      } else {
        ++other;
      }
      if (!store_->Append(One("own-" + std::to_string(t), kNoStream, {"A"})).ok()) ++other;
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(ok.load(), 1);
  EXPECT_EQ(conflicts.load(), kThreads - 1);
  EXPECT_EQ(other.load(), 0);
  EXPECT_EQ(store_->StreamVersion("run-shared"), 1u);
  EXPECT_EQ(store_->Head().position, static_cast<uint64_t>(kThreads + 1));
  auto all = store_->ReadAll(0, 100);
  ASSERT_TRUE(all.ok()) << all.status().ToString();
  EXPECT_EQ(all->size(), static_cast<size_t>(kThreads + 1));
}

TEST_F(StoreTest, ReopenRecoversHeadVersionsAndChain) {
  ASSERT_TRUE(store_->Append(One("run-1", kNoStream, {"A", "B", "C"})).ok());
  ASSERT_TRUE(store_->Append(One("run-2", kNoStream, {"A"})).ok());
  ASSERT_TRUE(store_->ClaimEpoch(1).ok());
  ASSERT_TRUE(store_->PutMeta("leader", "7").ok());
  HeadInfo before = store_->Head();

  ASSERT_TRUE(Reopen().ok());
  HeadInfo after = store_->Head();
  EXPECT_EQ(after.position, 4u);
  EXPECT_EQ(after.hash, before.hash);
  EXPECT_EQ(store_->StreamVersion("run-1"), 3u);
  EXPECT_EQ(store_->StreamVersion("run-2"), 1u);
  auto meta = store_->GetMeta("leader");
  ASSERT_TRUE(meta.ok());
  ASSERT_TRUE(meta->has_value());
  EXPECT_EQ(**meta, "7");
  EXPECT_EQ(store_->ClaimedEpoch(), 1u);

  // Version checks use the recovered versions; the chain continues across reopen.
  EXPECT_EQ(store_->Append(One("run-1", 2, {"D"})).status().code(), StatusCode::kConflict);
  auto r = store_->Append(One("run-1", 3, {"D"}));
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->first_position, 5u);
  EXPECT_EQ(r->stream_versions, std::vector<uint64_t>{4});
  auto e = store_->ReadAt(5);
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e->prev_hash, before.hash);
  EXPECT_EQ(e->version, 4u);
}

TEST_F(StoreTest, SecondOpenOfSameDirectoryIsUnavailable) {
  auto second = OpenRocksDbEventStore(StoreOptions{dir_ + "/store"});
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), StatusCode::kUnavailable) << second.status().ToString();
}

TEST_F(StoreTest, FlippedByteIsCorruptionNamingThePosition) {
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(store_->Append(One("run-1", kAnyVersion, {"A"})).ok());
  WithRawEvents([](rocksdb::DB* db, rocksdb::ColumnFamilyHandle* events) {
    std::string value;
    ASSERT_TRUE(db->Get(rocksdb::ReadOptions(), events, codec::EventKey(3), &value).ok());
    value[value.size() / 2] = static_cast<char>(value[value.size() / 2] ^ 0x20);
    rocksdb::WriteOptions wo;
    wo.sync = true;
    ASSERT_TRUE(db->Put(wo, events, codec::EventKey(3), value).ok());
  });
  ASSERT_TRUE(Reopen().ok());
  EXPECT_EQ(store_->Head().position, 5u);

  auto all = store_->ReadAll(0, 100);
  ASSERT_EQ(all.status().code(), StatusCode::kCorruption);
  EXPECT_EQ(all.status().message().rfind("event 3: ", 0), 0u) << all.status().message();
  auto at = store_->ReadAt(3);
  ASSERT_EQ(at.status().code(), StatusCode::kCorruption);
  EXPECT_EQ(at.status().message().rfind("event 3: ", 0), 0u) << at.status().message();
  // The page after the bad event checks its link through it.
  auto page = store_->ReadAll(3, 10);
  ASSERT_EQ(page.status().code(), StatusCode::kCorruption);
  EXPECT_EQ(page.status().message().rfind("event 3: ", 0), 0u);
  auto stream = store_->ReadStream("run-1", 1, 10);
  ASSERT_EQ(stream.status().code(), StatusCode::kCorruption);
  EXPECT_EQ(stream.status().message().rfind("event 3: ", 0), 0u);
  // ReadPage, and a PageReader whose page read ahead reaches it, name it too.
  EventPage event_page;
  Status read_page = store_->ReadPage(0, 100, &event_page);
  EXPECT_EQ(read_page.code(), StatusCode::kCorruption);
  EXPECT_EQ(read_page.message(), all.status().message());
  PageReader<EventPage> reader(PageReading(store_.get()));
  auto first = reader.Next(0, 2);
  ASSERT_TRUE(first.ok());
  EXPECT_EQ((*first)->size(), 2u);
  reader.ReadAhead(2, 2);
  auto ahead = reader.Next(2, 2);
  EXPECT_EQ(ahead.status().code(), StatusCode::kCorruption);
  EXPECT_EQ(ahead.status().message(), all.status().message());
  // Untouched events still read; a page that ends before it is clean.
  EXPECT_TRUE(store_->ReadAt(2).ok());
  EXPECT_TRUE(store_->ReadAt(4).ok());
  auto head_page = store_->ReadAll(0, 2);
  ASSERT_TRUE(head_page.ok());
  EXPECT_EQ(head_page->size(), 2u);
}

TEST_F(StoreTest, BrokenLinkIsCorruptionNamingThePosition) {
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(store_->Append(One("run-1", kAnyVersion, {"A"})).ok());
  // Replace event 3 by a self-consistent event (valid hash) whose prev_hash is wrong.
  WithRawEvents([](rocksdb::DB* db, rocksdb::ColumnFamilyHandle* events) {
    std::string value;
    ASSERT_TRUE(db->Get(rocksdb::ReadOptions(), events, codec::EventKey(3), &value).ok());
    Envelope env;
    ASSERT_TRUE(codec::DecodeEvent(3, value, &env).ok());
    env.prev_hash = Sha256Hex("forged");
    env.data = "{\"forged\":true}";
    Digest hash{};
    ASSERT_TRUE(codec::EncodeEvent(env, &value, &hash).ok());
    ASSERT_TRUE(db->Put(rocksdb::WriteOptions(), events, codec::EventKey(3), value).ok());
  });
  ASSERT_TRUE(Reopen().ok());
  auto at = store_->ReadAt(3);  // its own hash is valid
  ASSERT_TRUE(at.ok());
  EXPECT_EQ(at->data, "{\"forged\":true}");
  auto all = store_->ReadAll(0, 100);
  ASSERT_EQ(all.status().code(), StatusCode::kCorruption);
  EXPECT_EQ(all.status().message(), "event 3: prev_hash does not match the hash of event 2");
  // Event 4 still names the original event 3 as predecessor.
  auto page = store_->ReadAll(3, 10);
  ASSERT_EQ(page.status().code(), StatusCode::kCorruption);
  EXPECT_EQ(page.status().message(), "event 4: prev_hash does not match the hash of event 3");
  EventPage event_page;
  Status st = store_->ReadPage(0, 100, &event_page);
  EXPECT_EQ(st.code(), StatusCode::kCorruption);
  EXPECT_EQ(st.message(), "event 3: prev_hash does not match the hash of event 2");
  st = store_->ReadPage(3, 10, &event_page);
  EXPECT_EQ(st.message(), "event 4: prev_hash does not match the hash of event 3");
  ASSERT_TRUE(store_->ReadPage(0, 2, &event_page).ok());
  EXPECT_EQ(event_page.size(), 2u);
}

TEST_F(StoreTest, ReadAllFiltersByActorAndTimeRange) {
  auto batch = [](const char* time, const char* actor) {
    AppendBatch b;
    b.time = time;
    b.epoch = 1;
    StreamAppend sa{"run-1", kAnyVersion, {}};
    sa.events.push_back(NewEvent{"A", 1, actor, "{}"});
    b.appends.push_back(std::move(sa));
    return b;
  };
  ASSERT_TRUE(store_->Append(batch("2026-11-28T10:00:00.000000Z", "alice")).ok());
  ASSERT_TRUE(store_->Append(batch("2026-11-28T11:00:00.000000Z", "bob")).ok());
  ASSERT_TRUE(store_->Append(batch("2026-11-28T12:00:00.000000Z", "alice")).ok());
  ReadFilter alice;
  alice.actor = "alice";
  auto a = store_->ReadAll(0, 100, alice);
  ASSERT_TRUE(a.ok());
  ASSERT_EQ(a->size(), 2u);
  EXPECT_EQ((*a)[0].position, 1u);
  EXPECT_EQ((*a)[1].position, 3u);
  ReadFilter range;
  range.since = "2026-11-28T11:00:00.000000Z";  // inclusive
  range.until = "2026-11-28T12:00:00.000000Z";  // exclusive
  auto r = store_->ReadAll(0, 100, range);
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->size(), 1u);
  EXPECT_EQ((*r)[0].actor, "bob");
  range.actor = "alice";
  auto none = store_->ReadAll(0, 100, range);
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->empty());
}

TEST_F(StoreTest, VerifyChainWalksEverythingOrFromACheckpoint) {
  auto empty = store_->VerifyChain();
  ASSERT_TRUE(empty.ok());
  EXPECT_TRUE(empty->ok);
  EXPECT_EQ(empty->checked, 0u);
  for (int i = 0; i < 40; ++i) {
    ASSERT_TRUE(store_->Append(One("run-" + std::to_string(i % 3), kAnyVersion, {"A", "B"})).ok());
  }
  auto full = store_->VerifyChain();
  ASSERT_TRUE(full.ok()) << full.status().ToString();
  EXPECT_TRUE(full->ok) << full->problem;
  EXPECT_EQ(full->checked, 80u);
  EXPECT_EQ(full->head_position, 80u);
  EXPECT_EQ(full->head_hash, store_->Head().hash);
  // From a trusted checkpoint: only the rest is walked.
  std::string h50 = store_->ReadAt(50)->hash;
  auto from = store_->VerifyChain(50, h50);
  ASSERT_TRUE(from.ok());
  EXPECT_TRUE(from->ok);
  EXPECT_EQ(from->checked, 31u);
  EXPECT_EQ(from->head_hash, store_->Head().hash);
  auto wrong = store_->VerifyChain(50, std::string(64, 'a'));
  ASSERT_TRUE(wrong.ok());
  EXPECT_FALSE(wrong->ok);
  EXPECT_EQ(wrong->bad_position, 50u);
  EXPECT_EQ(wrong->problem, "event 50: hash " + h50 + " is not the checkpoint's " +
                                std::string(64, 'a'));
  EXPECT_EQ(store_->VerifyChain(0).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(store_->VerifyChain(50).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(store_->VerifyChain(81, h50).status().code(), StatusCode::kNotFound);
}

TEST_F(StoreTest, VerifyChainNamesAFlippedByteAndARewrittenEvent) {
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(store_->Append(One("run-1", kAnyVersion, {"A"})).ok());
  WithRawEvents([](rocksdb::DB* db, rocksdb::ColumnFamilyHandle* events) {
    std::string value;
    ASSERT_TRUE(db->Get(rocksdb::ReadOptions(), events, codec::EventKey(7), &value).ok());
    value[value.size() - 40] = static_cast<char>(value[value.size() - 40] ^ 0x01);
    ASSERT_TRUE(db->Put(rocksdb::WriteOptions(), events, codec::EventKey(7), value).ok());
  });
  ASSERT_TRUE(Reopen().ok());
  auto flipped = store_->VerifyChain();
  ASSERT_TRUE(flipped.ok());
  EXPECT_FALSE(flipped->ok);
  EXPECT_EQ(flipped->bad_position, 7u);
  EXPECT_EQ(flipped->problem.rfind("event 7: ", 0), 0u) << flipped->problem;
  EXPECT_EQ(flipped->checked, 6u);

  // Rewritten consistently (its own hash valid) but chained to a forged predecessor:
  // the link names it.
  WithRawEvents([](rocksdb::DB* db, rocksdb::ColumnFamilyHandle* events) {
    std::string value;
    ASSERT_TRUE(db->Get(rocksdb::ReadOptions(), events, codec::EventKey(4), &value).ok());
    Envelope env;
    ASSERT_TRUE(codec::DecodeEvent(4, value, &env).ok());
    env.data = "{\"forged\":true}";
    Digest hash{};
    ASSERT_TRUE(codec::EncodeEvent(env, &value, &hash).ok());
    ASSERT_TRUE(db->Put(rocksdb::WriteOptions(), events, codec::EventKey(4), value).ok());
  });
  ASSERT_TRUE(Reopen().ok());
  auto rewritten = store_->VerifyChain();
  ASSERT_TRUE(rewritten.ok());
  EXPECT_FALSE(rewritten->ok);
  // Event 4 keeps its prev_hash and a valid hash of its new bytes, which event 5 does
  // not name: the walk stops at 5, before the flipped 7.
  EXPECT_EQ(rewritten->bad_position, 5u);
  EXPECT_EQ(rewritten->problem, "event 5: prev_hash does not match the hash of event 4");
}

TEST_F(StoreTest, MissingTailFailsOpen) {
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(store_->Append(One("run-1", kAnyVersion, {"A"})).ok());
  WithRawEvents([](rocksdb::DB* db, rocksdb::ColumnFamilyHandle* events) {
    ASSERT_TRUE(db->Delete(rocksdb::WriteOptions(), events, codec::EventKey(3)).ok());
  });
  Status st = Reopen();
  ASSERT_EQ(st.code(), StatusCode::kCorruption);
  EXPECT_NE(st.message().find("event 3"), std::string::npos) << st.message();
}

TEST_F(StoreTest, CorruptTailFailsOpen) {
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(store_->Append(One("run-1", kAnyVersion, {"A"})).ok());
  WithRawEvents([](rocksdb::DB* db, rocksdb::ColumnFamilyHandle* events) {
    std::string value;
    ASSERT_TRUE(db->Get(rocksdb::ReadOptions(), events, codec::EventKey(3), &value).ok());
    value.back() = static_cast<char>(value.back() ^ 0x01);  // a bit of the stored hash
    ASSERT_TRUE(db->Put(rocksdb::WriteOptions(), events, codec::EventKey(3), value).ok());
  });
  Status st = Reopen();
  ASSERT_EQ(st.code(), StatusCode::kCorruption);
  EXPECT_NE(st.message().find("event 3: hash mismatch"), std::string::npos) << st.message();
}

TEST_F(StoreTest, CorruptTailOpensRefusingWritesWhenAsked) {
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(store_->Append(One("run-1", kAnyVersion, {"A"})).ok());
  HeadInfo before = store_->Head();
  WithRawEvents([](rocksdb::DB* db, rocksdb::ColumnFamilyHandle* events) {
    std::string value;
    ASSERT_TRUE(db->Get(rocksdb::ReadOptions(), events, codec::EventKey(3), &value).ok());
    value[value.size() / 2] = static_cast<char>(value[value.size() / 2] ^ 0x01);
    ASSERT_TRUE(db->Put(rocksdb::WriteOptions(), events, codec::EventKey(3), value).ok());
  });
  ASSERT_EQ(Reopen().code(), StatusCode::kCorruption);
  StoreOptions options{dir_ + "/store"};
  options.open_corrupt_head = true;
  auto opened = OpenRocksDbEventStore(options);
  ASSERT_TRUE(opened.ok()) << opened.status().ToString();
  store_ = std::move(opened).value();
  // The head is the corrupt event, with the hash the head record kept.
  EXPECT_EQ(store_->Head().position, 3u);
  EXPECT_EQ(store_->Head().hash, before.hash);
  // Reads reach it as kCorruption naming it; what precedes it reads.
  EXPECT_EQ(store_->ReadAt(3).status().code(), StatusCode::kCorruption);
  auto all = store_->ReadAll(0, 10);
  ASSERT_EQ(all.status().code(), StatusCode::kCorruption);
  EXPECT_EQ(all.status().message().rfind("event 3: ", 0), 0u) << all.status().message();
  auto prefix = store_->ReadAll(0, 2);
  ASSERT_TRUE(prefix.ok());
  EXPECT_EQ(prefix->size(), 2u);
  auto report = store_->VerifyChain();
  ASSERT_TRUE(report.ok());
  EXPECT_FALSE(report->ok);
  EXPECT_EQ(report->bad_position, 3u);
  // Nothing is written on top of it.
  auto append = store_->Append(One("run-1", kAnyVersion, {"B"}));
  ASSERT_EQ(append.status().code(), StatusCode::kCorruption);
  EXPECT_EQ(append.status().message().rfind("event 3: ", 0), 0u) << append.status().message();
  EXPECT_EQ(store_->ClaimEpoch(9).code(), StatusCode::kCorruption);
  EXPECT_EQ(store_->PutMeta("leader", "x").code(), StatusCode::kCorruption);
  EXPECT_EQ(store_->PutSnapshot(2, "s").code(), StatusCode::kCorruption);
  EXPECT_EQ(store_->Head().position, 3u);

  // A missing tail does not open, even when asked.
  WithRawEvents([](rocksdb::DB* db, rocksdb::ColumnFamilyHandle* events) {
    ASSERT_TRUE(db->Delete(rocksdb::WriteOptions(), events, codec::EventKey(3)).ok());
  });
  auto missing = OpenRocksDbEventStore(options);
  ASSERT_EQ(missing.status().code(), StatusCode::kCorruption);
  EXPECT_NE(missing.status().message().find("event 3"), std::string::npos);
}

TEST_F(StoreTest, FailedWriteFailsTheBatchAndRefusesLaterAppends) {
  store_.reset();
  auto fail = std::make_shared<std::atomic<bool>>(false);
  StoreOptions options{dir_ + "/store"};
  options.fail_write_for_testing = [fail] { return fail->load(); };
  auto opened = OpenRocksDbEventStore(options);
  ASSERT_TRUE(opened.ok());
  store_ = std::move(opened).value();

  ASSERT_TRUE(store_->Append(One("run-1", kNoStream, {"A"})).ok());
  HeadInfo before = store_->Head();
  fail->store(true);
  auto r = store_->Append(One("run-1", 1, {"B"}));
  ASSERT_EQ(r.status().code(), StatusCode::kInternal);
  EXPECT_NE(r.status().message().find("injected write failure"), std::string::npos);
  // Nothing moved in memory, and the store now refuses appends even if I/O recovers.
  EXPECT_EQ(store_->Head().position, before.position);
  EXPECT_EQ(store_->StreamVersion("run-1"), 1u);
  fail->store(false);
  auto later = store_->Append(One("run-2", kNoStream, {"A"}));
  ASSERT_EQ(later.status().code(), StatusCode::kInternal);
  EXPECT_EQ(store_->PutMeta("leader", "2").code(), StatusCode::kInternal);
  EXPECT_EQ(store_->ClaimEpoch(2).code(), StatusCode::kInternal);
  // Reads still work; a reopen clears the refusal.
  ASSERT_TRUE(store_->ReadAt(1).ok());
  ASSERT_TRUE(Reopen().ok());
  auto again = store_->Append(One("run-1", 1, {"B"}));
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_EQ(again->first_position, 2u);
}

TEST_F(StoreTest, SubscribersAndWaitForHead) {
  std::mutex mu;
  std::vector<uint64_t> seen;
  uint64_t id = store_->Subscribe([&](uint64_t head) {
    std::lock_guard lock(mu);
    seen.push_back(head);
  });
  std::atomic<uint64_t> waited{0};
  std::thread waiter([&] { waited = store_->WaitForHead(1, std::chrono::seconds(30)); });

  ASSERT_TRUE(store_->Append(One("run-1", kAnyVersion, {"A"})).ok());
  ASSERT_TRUE(store_->Append(One("run-1", kAnyVersion, {"B", "C"})).ok());
  waiter.join();
  EXPECT_EQ(waited.load(), 3u);
  {
    // The leader calls subscribers before Append returns (single appender here).
    std::lock_guard lock(mu);
    EXPECT_EQ(seen, (std::vector<uint64_t>{1, 3}));
  }
  store_->Unsubscribe(id);
  ASSERT_TRUE(store_->Append(One("run-1", kAnyVersion, {"D"})).ok());
  {
    std::lock_guard lock(mu);
    EXPECT_EQ(seen.size(), 2u);
  }
  // Already past: returns at once; not reached: returns the head after the timeout.
  EXPECT_EQ(store_->WaitForHead(0, std::chrono::milliseconds(0)), 4u);
  EXPECT_EQ(store_->WaitForHead(4, std::chrono::milliseconds(1)), 4u);
}

TEST_F(StoreTest, MetaAndSnapshots) {
  auto missing = store_->GetMeta("leader");
  ASSERT_TRUE(missing.ok());
  EXPECT_FALSE(missing->has_value());
  ASSERT_TRUE(store_->PutMeta("leader", "{\"address\":\"h:1\"}").ok());
  auto got = store_->GetMeta("leader");
  ASSERT_TRUE(got.ok() && got->has_value());
  EXPECT_EQ(**got, "{\"address\":\"h:1\"}");
  EXPECT_EQ(store_->PutMeta("head", "x").code(), StatusCode::kInvalidArgument);

  for (int i = 0; i < 5; ++i) ASSERT_TRUE(store_->Append(One("run-1", kAnyVersion, {"A"})).ok());
  ASSERT_TRUE(store_->PutSnapshot(2, "state@2").ok());
  ASSERT_TRUE(store_->PutSnapshot(5, "state@5").ok());
  EXPECT_EQ(store_->PutSnapshot(6, "future").code(), StatusCode::kInvalidArgument);
  auto snap = store_->LatestSnapshot();
  ASSERT_TRUE(snap.ok());
  ASSERT_TRUE(snap->has_value());
  EXPECT_EQ((*snap)->first, 5u);
  EXPECT_EQ((*snap)->second, "state@5");

  ASSERT_TRUE(Reopen().ok());
  auto again = store_->LatestSnapshot();
  ASSERT_TRUE(again.ok() && again->has_value());
  EXPECT_EQ((*again)->first, 5u);
  auto leader = store_->GetMeta("leader");
  ASSERT_TRUE(leader.ok() && leader->has_value());
  EXPECT_EQ(**leader, "{\"address\":\"h:1\"}");
}


// --- HA: secondary, promotion, fencing ---

class SecondaryTest : public StoreTest {
 protected:
  Result<std::unique_ptr<EventStore>> OpenSecondary() {
    return OpenRocksDbEventStore(StoreOptions{dir_ + "/store", false, dir_ + "/secondary"});
  }
};

TEST_F(SecondaryTest, FollowsThePrimaryAndRefusesWrites) {
  ASSERT_TRUE(store_->Append(One("run-1", kNoStream, {"A", "B"})).ok());
  auto sec = OpenSecondary();
  ASSERT_TRUE(sec.ok()) << sec.status().ToString();
  EventStore& s = **sec;
  EXPECT_TRUE(s.read_only());
  EXPECT_FALSE(store_->read_only());
  EXPECT_EQ(s.Head().position, 2u);

  std::atomic<uint64_t> notified{0};
  s.Subscribe([&](uint64_t head) { notified = head; });
  ASSERT_TRUE(store_->Append(One("run-2", kNoStream, {"C"})).ok());
  EXPECT_EQ(s.Head().position, 2u);  // not until it catches up
  auto head = s.CatchUp();
  ASSERT_TRUE(head.ok()) << head.status().ToString();
  EXPECT_EQ(head->position, 3u);
  EXPECT_EQ(head->hash, store_->Head().hash);
  EXPECT_EQ(notified.load(), 3u);
  auto all = s.ReadAll(0, 10);
  ASSERT_TRUE(all.ok()) << all.status().ToString();
  ASSERT_EQ(all->size(), 3u);
  EXPECT_EQ((*all)[2].type, "C");
  auto stream = s.ReadStream("run-1", 1, 10);
  ASSERT_TRUE(stream.ok());
  EXPECT_EQ(stream->size(), 2u);
  EXPECT_EQ(s.StreamVersion("run-2"), 1u);

  EXPECT_EQ(s.Append(One("run-3", kNoStream, {"X"})).status().code(),
            StatusCode::kFailedPrecondition);
  EXPECT_EQ(s.PutMeta("leader", "x").code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(s.ClaimEpoch(9).code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(s.PutSnapshot(1, "x").code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(store_->Head().position, 3u);  // the refused writes left no trace
}

TEST_F(SecondaryTest, PromotionContinuesTheChainAndSeesTheFence) {
  ASSERT_TRUE(store_->ClaimEpoch(1).ok());
  ASSERT_TRUE(store_->Append(One("run-1", kNoStream, {"A", "B"})).ok());
  auto sec = OpenSecondary();
  ASSERT_TRUE(sec.ok()) << sec.status().ToString();
  ASSERT_TRUE(store_->Append(One("run-1", 2, {"C"})).ok());
  ASSERT_TRUE((*sec)->CatchUp().ok());
  EXPECT_EQ((*sec)->ClaimedEpoch(), 1u);
  HeadInfo before = store_->Head();
  store_.reset();  // the leader dies

  EventStore& s = **sec;
  ASSERT_TRUE(s.Promote().ok());
  EXPECT_FALSE(s.read_only());
  EXPECT_EQ(s.Head().position, before.position);
  EXPECT_EQ(s.Head().hash, before.hash);
  EXPECT_EQ(s.ClaimEpoch(1).code(), StatusCode::kConflict);  // already claimed
  ASSERT_TRUE(s.ClaimEpoch(2).ok());
  // A batch of the old epoch is fenced off and writes nothing.
  auto fenced = s.Append(One("run-1", 3, {"D"}));
  EXPECT_EQ(fenced.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(fenced.status().message().find("fenced"), std::string::npos);
  EXPECT_EQ(s.Head().position, 3u);
  AppendBatch b = One("run-1", 3, {"D"});
  b.epoch = 2;
  auto r = s.Append(b);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->first_position, 4u);
  EXPECT_EQ(s.StreamVersion("run-1"), 4u);
  auto all = s.ReadAll(0, 10);
  ASSERT_TRUE(all.ok()) << all.status().ToString();  // the chain verifies across the switch
  EXPECT_EQ(all->size(), 4u);
  EXPECT_EQ((*all)[3].epoch, 2u);
  EXPECT_EQ(s.Promote().code(), StatusCode::kOk);  // already primary: nothing to do
}

TEST_F(SecondaryTest, PromotionWhileTheOldPrimaryIsOpenFails) {
  auto sec = OpenSecondary();
  ASSERT_TRUE(sec.ok());
  Status st = (*sec)->Promote();
  EXPECT_FALSE(st.ok());  // RocksDB's own LOCK: never two primaries
  EXPECT_TRUE((*sec)->read_only());
  EXPECT_TRUE(store_->Append(One("run-1", kNoStream, {"A"})).ok());
}

TEST_F(SecondaryTest, OpeningASecondaryOfNoStoreFails) {
  auto s = OpenRocksDbEventStore(StoreOptions{dir_ + "/nothing", false, dir_ + "/sec2"});
  EXPECT_FALSE(s.ok());
}

}  // namespace
}  // namespace epoch::storage
