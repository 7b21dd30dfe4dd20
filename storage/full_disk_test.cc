// The event store on a full filesystem (issue 12, "Storage faults"): a real
// RocksDB on a small tmpfs that the test fills. RocksDB 7.8 as Debian builds it
// aborted the process on the second write to a file that had failed (its own
// info log first); these tests die with SIGABRT if that comes back.
#include <gtest/gtest.h>

#include <atomic>
#include <map>
#include <mutex>
#include <thread>

#include "common/sha256.h"
#include "storage/event_store.h"
#include "storage/small_fs_for_testing.h"

namespace epoch::storage {
namespace {

using epoch::testing::SmallFs;

constexpr char kTime[] = "2026-11-28T13:38:40.123456Z";

AppendBatch OneEvent(const std::string& stream, const std::string& data) {
  AppendBatch b;
  b.time = kTime;
  b.epoch = 1;
  b.appends.push_back(StreamAppend{stream, kNoStream, {NewEvent{"Filled", 1, "test", data}}});
  return b;
}

// A payload that differs per stream (so a test can tell events apart).
std::string Payload(const std::string& stream, size_t size) {
  std::string out = stream + ":";
  while (out.size() < size) out += Sha256Hex(out.substr(out.size() > 64 ? out.size() - 64 : 0));
  out.resize(size);
  return out;
}

Result<std::unique_ptr<EventStore>> Open(const std::string& path) {
  return OpenRocksDbEventStore(StoreOptions{path});
}

// What every appender learned: acknowledged events (stream -> position) and the
// first error.
struct Outcome {
  std::mutex mu;
  std::map<std::string, uint64_t> acked;
  Status first_error;
  int failures = 0;
};

// `threads` appenders write events of `size` bytes until every one has seen a
// failed append.
void AppendUntilFull(EventStore* store, int threads, size_t size, Outcome* out) {
  std::atomic<bool> stop{false};
  std::vector<std::thread> ts;
  for (int t = 0; t < threads; ++t) {
    ts.emplace_back([&, t] {
      for (int i = 0; !stop && i < 1000000; ++i) {
        std::string stream = "s-" + std::to_string(t) + "-" + std::to_string(i);
        auto r = store->Append(OneEvent(stream, Payload(stream, size)));
        std::lock_guard lock(out->mu);
        if (r.ok()) {
          out->acked[stream] = r->first_position;
          continue;
        }
        if (out->first_error.ok()) out->first_error = r.status();
        out->failures++;
        stop = true;
        return;
      }
    });
  }
  for (auto& t : ts) t.join();
}

// Every acknowledged event is in the store at its position with its bytes.
void ExpectAcknowledgedPresent(EventStore* store, const Outcome& out, size_t size) {
  for (const auto& [stream, position] : out.acked) {
    auto env = store->ReadAt(position);
    ASSERT_TRUE(env.ok()) << "acknowledged event " << position << " (" << stream
                          << ") is missing: " << env.status().ToString();
    EXPECT_EQ(env->stream, stream);
    EXPECT_EQ(env->data, Payload(stream, size)) << "at " << position;
  }
}

struct FullDiskCase {
  const char* fs_size;
  size_t event_size;
  int threads;
};

class FullDiskTest : public ::testing::TestWithParam<FullDiskCase> {};

// The disk fills under concurrent appends: the append that meets it fails with
// IsNoSpace, every later write (Append, PutMeta, PutSnapshot, ClaimEpoch) is
// refused with the same error without reaching RocksDB, reads go on, the store
// closes; once space returns, a reopen finds every acknowledged event and writes.
TEST_P(FullDiskTest, FailsTheWriteThenRefusesEveryWriteAndRecoversOnReopen) {
  EPOCH_REQUIRE_MOUNT();
  const FullDiskCase c = GetParam();
  SmallFs fs(c.fs_size);
  ASSERT_EQ(fs.error(), "");
  const std::string path = fs.path() + "/store";
  auto opened = Open(path);
  ASSERT_TRUE(opened.ok()) << opened.status().ToString();
  std::unique_ptr<EventStore> store = std::move(*opened);
  ASSERT_TRUE(store->WriteFailure().ok());
  auto avail = store->AvailableBytes();
  ASSERT_TRUE(avail.ok()) << avail.status().ToString();
  EXPECT_GT(*avail, 0u);
  EXPECT_LE(*avail, fs.AvailableBytes() + (1u << 20));

  Outcome out;
  AppendUntilFull(store.get(), c.threads, c.event_size, &out);
  ASSERT_FALSE(out.acked.empty()) << "nothing fitted: " << out.first_error.ToString();
  ASSERT_FALSE(out.first_error.ok());
  EXPECT_EQ(out.first_error.code(), StatusCode::kInternal) << out.first_error.ToString();
  EXPECT_TRUE(IsNoSpace(out.first_error)) << out.first_error.ToString();
  EXPECT_NE(out.first_error.message().find("No space left on device"), std::string::npos)
      << out.first_error.ToString();

  // Sticky: the store says why, and refuses every write with it.
  Status failure = store->WriteFailure();
  EXPECT_TRUE(IsNoSpace(failure)) << failure.ToString();
  EXPECT_NE(failure.message().find("refuses every write"), std::string::npos) << failure.ToString();
  uint64_t head = store->Head().position;
  auto again = store->Append(OneEvent("after", "x"));
  EXPECT_EQ(again.status().ToString(), failure.ToString());
  EXPECT_EQ(store->PutMeta("leader", "x").ToString(), failure.ToString());
  EXPECT_EQ(store->PutSnapshot(head, "snapshot").ToString(), failure.ToString());
  EXPECT_EQ(store->ClaimEpoch(7).ToString(), failure.ToString());
  EXPECT_EQ(store->Head().position, head);
  // Nothing unacknowledged is visible: the head is the last acknowledged event.
  uint64_t last_acked = 0;
  for (const auto& [stream, position] : out.acked) last_acked = std::max(last_acked, position);
  EXPECT_EQ(head, last_acked);
  EXPECT_EQ(store->Stats().appends, out.acked.size());
  ExpectAcknowledgedPresent(store.get(), out, c.event_size);
  auto all = store->ReadAll(0, 1u << 20);
  ASSERT_TRUE(all.ok()) << all.status().ToString();
  EXPECT_EQ(all->size(), out.acked.size());

  store.reset();  // closes RocksDB on the full disk
  {
    // Still full: a reopen may fail, but it must say so (no abort).
    auto full = Open(path);
    if (!full.ok()) {
      EXPECT_TRUE(IsNoSpace(full.status())) << full.status().ToString();
    }
  }

  ASSERT_EQ(fs.Resize("256m"), "");  // space returns
  auto reopened = Open(path);
  ASSERT_TRUE(reopened.ok()) << reopened.status().ToString();
  store = std::move(*reopened);
  EXPECT_TRUE(store->WriteFailure().ok());
  // The failed batches' outcome was unknown ("may be durable"): at most they add.
  EXPECT_GE(store->Head().position, last_acked);
  EXPECT_LE(store->Head().position, last_acked + static_cast<uint64_t>(out.failures));
  ExpectAcknowledgedPresent(store.get(), out, c.event_size);
  auto verified = store->VerifyChain(1);
  ASSERT_TRUE(verified.ok()) << verified.status().ToString();
  EXPECT_TRUE(verified->ok) << verified->problem;
  auto next = store->Append(OneEvent("after-recovery", "y"));
  ASSERT_TRUE(next.ok()) << next.status().ToString();
  EXPECT_EQ(next->first_position, store->Head().position);
}

// Small events fill the WAL; mid-size ones meet the full disk in a WAL write or in
// the flush of a full memtable (a RocksDB background error); large ones in a
// single write. One tmpfs small enough that the WAL's preallocation fails, one
// large enough that the memtable flush is what meets the full disk.
INSTANTIATE_TEST_SUITE_P(Sizes, FullDiskTest,
                         ::testing::Values(FullDiskCase{"16m", 2048, 4},
                                           FullDiskCase{"16m", 300 << 10, 2},
                                           FullDiskCase{"40m", 1024, 4},
                                           FullDiskCase{"40m", 64 << 10, 2}),
                         [](const ::testing::TestParamInfo<FullDiskCase>& info) {
                           return std::string("fs") + info.param.fs_size + "_event" +
                                  std::to_string(info.param.event_size) + "_threads" +
                                  std::to_string(info.param.threads);
                         });

// A snapshot is the largest write: when it is what meets the full disk, it fails
// with IsNoSpace and the store stops writing (RocksDB has stopped too; the next
// Append is refused by the store, not sent to RocksDB).
TEST(FullDiskStoreTest, ASnapshotThatMeetsTheFullDiskStopsEveryWrite) {
  EPOCH_REQUIRE_MOUNT();
  SmallFs fs("24m");
  ASSERT_EQ(fs.error(), "");
  const std::string path = fs.path() + "/store";
  auto opened = Open(path);
  ASSERT_TRUE(opened.ok()) << opened.status().ToString();
  std::unique_ptr<EventStore> store = std::move(*opened);
  for (int i = 0; i < 10; ++i) {
    std::string stream = "run-" + std::to_string(i);
    ASSERT_TRUE(store->Append(OneEvent(stream, Payload(stream, 1000))).ok());
  }
  Status snap = store->PutSnapshot(10, std::string(48u << 20, 's'));
  ASSERT_FALSE(snap.ok());
  EXPECT_TRUE(IsNoSpace(snap)) << snap.ToString();
  EXPECT_NE(snap.message().find("writing snapshot 10"), std::string::npos) << snap.ToString();
  EXPECT_EQ(store->WriteFailure().ToString(), snap.ToString());
  auto next = store->Append(OneEvent("run-10", "x"));
  EXPECT_EQ(next.status().ToString(), snap.ToString());
  EXPECT_EQ(store->Head().position, 10u);
  store.reset();

  ASSERT_EQ(fs.Resize("128m"), "");
  auto reopened = Open(path);
  ASSERT_TRUE(reopened.ok()) << reopened.status().ToString();
  store = std::move(*reopened);
  EXPECT_GE(store->Head().position, 10u);
  for (uint64_t p = 1; p <= 10; ++p) {
    auto env = store->ReadAt(p);
    ASSERT_TRUE(env.ok()) << env.status().ToString();
    EXPECT_EQ(env->stream, "run-" + std::to_string(p - 1));
  }
  ASSERT_TRUE(store->Append(OneEvent("run-10", "x")).ok());
}

// AvailableBytes is the free space of the store's filesystem, as statvfs says.
TEST(FullDiskStoreTest, AvailableBytesFollowsTheFilesystem) {
  EPOCH_REQUIRE_MOUNT();
  SmallFs fs("64m");
  ASSERT_EQ(fs.error(), "");
  auto opened = Open(fs.path() + "/store");
  ASSERT_TRUE(opened.ok()) << opened.status().ToString();
  auto before = (*opened)->AvailableBytes();
  ASSERT_TRUE(before.ok()) << before.status().ToString();
  EXPECT_LE(*before, 64u << 20);
  EXPECT_GT(*before, 16u << 20);
  ASSERT_EQ(fs.Fill("filler", 4u << 20), "");
  auto after = (*opened)->AvailableBytes();
  ASSERT_TRUE(after.ok());
  EXPECT_LE(*after, (4u << 20) + (64u << 10)) << *after;
  EXPECT_GE(*after, (4u << 20) - (1u << 20)) << *after;
  fs.Remove("filler");
  auto freed = (*opened)->AvailableBytes();
  ASSERT_TRUE(freed.ok());
  EXPECT_GT(*freed, *before - (1u << 20));
}

}  // namespace
}  // namespace epoch::storage
