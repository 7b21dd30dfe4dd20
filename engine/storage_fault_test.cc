// The engine on a store that fails (issue 12, "Storage faults"): a real RocksDB
// store whose synced write is made to fail (as on a full disk, or with another
// I/O error), and a store whose free space and write failure the test sets.
#include <gtest/gtest.h>

#include <atomic>
#include <filesystem>
#include <thread>

#include "engine/engine.h"
#include "storage/forwarding_store_test_util.h"

namespace epoch::engine {
namespace {

const char* kDef = R"({"name":"w","steps":[{"name":"a","command":["true"]}]})";

bool WaitFor(const std::function<bool()>& f) {
  for (int i = 0; i < 500; ++i) {
    if (f()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return f();
}

// The real store underneath, with the free space (AvailableBytes) and a write
// failure (WriteFailure: as a RocksDB background error sets it) set by the test.
class SpaceStore : public storage::test_util::ForwardingEventStore {
 public:
  explicit SpaceStore(storage::EventStore* inner) : ForwardingEventStore(inner) {}

  Result<uint64_t> AvailableBytes() override {
    asked++;
    return available.load();
  }
  Status WriteFailure() override {
    std::lock_guard<std::mutex> lock(mu_);
    return failure_.ok() ? inner_->WriteFailure() : failure_;
  }
  void SetFailure(Status st) {
    std::lock_guard<std::mutex> lock(mu_);
    failure_ = std::move(st);
  }

  Result<storage::AppendResult> Append(storage::AppendBatch b) override {
    if (Status f = WriteFailure(); !f.ok()) return f;
    return inner_->Append(std::move(b));
  }

  std::atomic<uint64_t> available{1ull << 40};
  std::atomic<int> asked{0};

 private:
  std::mutex mu_;
  Status failure_;  // guarded by mu_
};

class StorageFaultTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/epoch-storage-fault-test.XXXXXX";
    dir_ = mkdtemp(tmpl);
  }
  void TearDown() override {
    engine_.reset();
    store_.reset();
    std::filesystem::remove_all(dir_);
  }
  // The store fails its synced writes while fail_ is set: with NoSpace (a full
  // disk) when no_space.
  void OpenStore(bool no_space) {
    storage::StoreOptions o{dir_ + "/store"};
    o.fail_write_for_testing = [this] { return fail_.load(); };
    o.fail_write_no_space_for_testing = no_space;
    auto s = storage::OpenRocksDbEventStore(o);
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    store_ = std::move(*s);
  }
  EngineOptions Options() {
    EngineOptions o;
    o.config.data_dir = dir_;
    o.config.max_replicas = 0;
    o.config.min_replicas = 0;
    o.config.tick = std::chrono::milliseconds(20);
    o.advertise_url = "http://127.0.0.1:1";
    o.start_pool = false;
    o.snapshot_every = 0;
    return o;
  }
  void Start(storage::EventStore* store, EngineOptions o, const Clock* clock) {
    engine_ = std::make_unique<Engine>(o, store, nullptr, clock);
    ASSERT_TRUE(engine_->Start().ok());
    ASSERT_TRUE(engine_->Execute(RegisterWorkflow{*ParseJson(kDef), "alice"}).ok());
  }
  bool HasRun(const std::string& id) {
    return engine_->Read([&](const State& s) { return s.FindRun(id) != nullptr; });
  }

  std::string dir_;
  std::atomic<bool> fail_{false};
  std::unique_ptr<storage::EventStore> store_;
  SystemClock clock_;
  std::unique_ptr<Engine> engine_;
};

// A full disk fails the append: its callers get 507-class errors
// (IsInsufficientStorage), so does every later command and poll, the leader is
// neither healthy nor ready, and nothing of the failed group is published; what was
// acknowledged before is durable.
TEST_F(StorageFaultTest, AFullDiskStopsTheLeaderWithInsufficientStorage) {
  OpenStore(/*no_space=*/true);
  Start(store_.get(), Options(), &clock_);
  auto r1 = engine_->Execute(SubmitRun{.run_id = "r1", .workflow = "w"});
  ASSERT_TRUE(r1.ok()) << r1.status().ToString();
  EXPECT_TRUE(engine_->healthy());
  EXPECT_TRUE(engine_->storage_fault().ok());
  EXPECT_TRUE(engine_->StorageFaultStatus().ok());

  fail_ = true;
  auto r2 = engine_->Execute(SubmitRun{.run_id = "r2", .workflow = "w"});
  ASSERT_FALSE(r2.ok());
  EXPECT_TRUE(IsInsufficientStorage(r2.status())) << r2.status().ToString();
  EXPECT_EQ(r2.status().code(), StatusCode::kResourceExhausted);
  EXPECT_NE(r2.status().message().find("disk is full"), std::string::npos)
      << r2.status().ToString();
  EXPECT_NE(r2.status().message().find("injected write failure"), std::string::npos)
      << r2.status().ToString();
  EXPECT_FALSE(engine_->healthy());
  EXPECT_FALSE(engine_->ready());
  EXPECT_TRUE(storage::IsNoSpace(engine_->storage_fault()))
      << engine_->storage_fault().ToString();
  EXPECT_EQ(engine_->role(), Role::kLeader);  // epochd gives the lock up and exits

  // Everything after is refused the same way, without reaching the store, even
  // once its writes would work again.
  fail_ = false;
  auto commits = engine_->stats().commits.load();
  for (Command c : std::vector<Command>{SubmitRun{.run_id = "r3", .workflow = "w"},
                                        CancelRun{.run_id = "r1"},
                                        PollContainer{.container = "c1"},
                                        RegisterWorkflow{*ParseJson(kDef), "alice"}}) {
    auto r = engine_->Execute(c);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().ToString(), engine_->StorageFaultStatus().ToString());
  }
  EXPECT_EQ(engine_->stats().commits.load(), commits);
  EXPECT_TRUE(HasRun("r1"));
  EXPECT_FALSE(HasRun("r2"));

  // A restart replays what is durable: r1, not r2 (the injected failure wrote nothing).
  engine_.reset();
  store_.reset();
  OpenStore(true);
  Start(store_.get(), Options(), &clock_);
  EXPECT_TRUE(HasRun("r1"));
  EXPECT_FALSE(HasRun("r2"));
  EXPECT_TRUE(engine_->Execute(SubmitRun{.run_id = "r2", .workflow = "w"}).ok());
}

// Any other storage error stops the leader too, with kUnavailable (503) naming it.
TEST_F(StorageFaultTest, AnotherStorageErrorStopsTheLeaderWithUnavailable) {
  OpenStore(/*no_space=*/false);
  Start(store_.get(), Options(), &clock_);
  fail_ = true;
  auto r = engine_->Execute(SubmitRun{.run_id = "r1", .workflow = "w"});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kUnavailable) << r.status().ToString();
  EXPECT_FALSE(IsInsufficientStorage(r.status()));
  EXPECT_NE(r.status().message().find("event store failed"), std::string::npos)
      << r.status().ToString();
  EXPECT_NE(r.status().message().find("injected write failure"), std::string::npos);
  EXPECT_FALSE(engine_->healthy());
  EXPECT_FALSE(storage::IsNoSpace(engine_->storage_fault()));
}

// A write failure the store reports by itself (a RocksDB flush or a snapshot that
// met the full disk) stops the leader within a tick, with no command in flight.
TEST_F(StorageFaultTest, AStoreFailureWithoutAnAppendStopsTheLeader) {
  OpenStore(/*no_space=*/true);
  SpaceStore store(store_.get());
  Start(&store, Options(), &clock_);
  ASSERT_TRUE(engine_->healthy());
  store.SetFailure(Status(StatusCode::kInternal, "the filesystem is full: flush failed",
                          {std::string(storage::kNoSpaceDetail)}));
  ASSERT_TRUE(WaitFor([&] { return !engine_->healthy(); }));
  EXPECT_FALSE(engine_->ready());
  EXPECT_EQ(engine_->storage_fault().message(), "the filesystem is full: flush failed");
  auto r = engine_->Execute(SubmitRun{.run_id = "r1", .workflow = "w"});
  EXPECT_TRUE(IsInsufficientStorage(r.status())) << r.status().ToString();
  EXPECT_NE(r.status().message().find("flush failed"), std::string::npos);
  engine_.reset();  // its threads use the store and clock above: stop it before they go
}

// storage.minFreeBytes: below it, registering a workflow, submitting and retrying
// are refused (507-class, naming the free bytes and the threshold); cancels and
// the container protocol are not. The store is asked at most once a second of the
// engine's clock.
TEST_F(StorageFaultTest, MinFreeBytesRefusesNewWorkButNotCancelsOrPolls) {
  OpenStore(/*no_space=*/true);
  SpaceStore store(store_.get());
  store.available = 5000;
  ManualClock clock(TimePoint(std::chrono::seconds(1800000000)));
  EngineOptions o = Options();
  o.min_free_bytes = 1000;
  Start(&store, o, &clock);  // registers the workflow: asks once
  ASSERT_TRUE(engine_->Execute(SubmitRun{.run_id = "r1", .workflow = "w"}).ok());
  ASSERT_TRUE(engine_->Execute(SubmitRun{.run_id = "r2", .workflow = "w"}).ok());
  EXPECT_EQ(store.asked.load(), 1);

  // Within the interval the last answer stands.
  store.available = 10;
  ASSERT_TRUE(engine_->Execute(SubmitRun{.run_id = "r3", .workflow = "w"}).ok());
  EXPECT_EQ(store.asked.load(), 1);

  clock.Advance(std::chrono::seconds(1));
  auto refused = engine_->Execute(SubmitRun{.run_id = "r4", .workflow = "w"});
  ASSERT_FALSE(refused.ok());
  EXPECT_TRUE(IsInsufficientStorage(refused.status())) << refused.status().ToString();
  EXPECT_NE(refused.status().message().find("has 10 bytes free"), std::string::npos)
      << refused.status().ToString();
  EXPECT_NE(refused.status().message().find("storage.minFreeBytes (1000 bytes)"),
            std::string::npos)
      << refused.status().ToString();
  EXPECT_EQ(store.asked.load(), 2);
  EXPECT_FALSE(HasRun("r4"));
  auto wf = engine_->Execute(RegisterWorkflow{*ParseJson(kDef), "alice"});
  EXPECT_TRUE(IsInsufficientStorage(wf.status())) << wf.status().ToString();
  auto retry = engine_->Execute(RetryRun{.run_id = "r1"});
  EXPECT_TRUE(IsInsufficientStorage(retry.status())) << retry.status().ToString();
  EXPECT_EQ(store.asked.load(), 2);

  // Cancels and the container protocol go on (whatever decide says of them).
  auto cancel = engine_->Execute(CancelRun{.run_id = "r2"});
  ASSERT_TRUE(cancel.ok()) << cancel.status().ToString();
  EXPECT_TRUE(engine_->Read([](const State& s) { return s.FindRun("r2")->cancel_requested; }));
  auto poll = engine_->Execute(PollContainer{.container = "c9"});
  EXPECT_FALSE(IsInsufficientStorage(poll.status())) << poll.status().ToString();
  auto reg = engine_->Execute(RegisterContainer{.container = "c9"});
  EXPECT_FALSE(IsInsufficientStorage(reg.status())) << reg.status().ToString();
  EXPECT_TRUE(engine_->healthy());  // low space is no fault

  // Space returns: new work is admitted after the next check.
  store.available = 1000;
  ASSERT_FALSE(engine_->Execute(SubmitRun{.run_id = "r4", .workflow = "w"}).ok());
  clock.Advance(std::chrono::seconds(1));
  auto admitted = engine_->Execute(SubmitRun{.run_id = "r4", .workflow = "w"});
  ASSERT_TRUE(admitted.ok()) << admitted.status().ToString();
  EXPECT_TRUE(HasRun("r4"));
  EXPECT_EQ(store.asked.load(), 3);
  engine_.reset();  // its threads use the store and clock above: stop it before they go
}

// min_free_bytes 0 never asks the store.
TEST_F(StorageFaultTest, NoThresholdNeverAsks) {
  OpenStore(/*no_space=*/true);
  SpaceStore store(store_.get());
  store.available = 0;
  Start(&store, Options(), &clock_);
  ASSERT_TRUE(engine_->Execute(SubmitRun{.run_id = "r1", .workflow = "w"}).ok());
  EXPECT_EQ(store.asked.load(), 0);
  engine_.reset();  // its threads use the store and clock above: stop it before they go
}

}  // namespace
}  // namespace epoch::engine
