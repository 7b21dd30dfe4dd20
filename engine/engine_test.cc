// The engine with a real RocksDB store in a temp dir and a recording backend.
#include "engine/engine.h"
#include "engine/archive.h"
#include "engine/event_types.h"
#include "engine/retention.h"
#include "storage/forwarding_store_test_util.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <mutex>
#include <thread>

namespace epoch::engine {
namespace {

// Reports as the API edge parses them (engine/report.h).
std::vector<AttemptReport> Reports(const Json& j) {
  auto r = ParseAttemptReports(j);
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  return r.ok() ? *r : std::vector<AttemptReport>{};
}

class RecordingBackend : public ContainerBackend {
 public:
  std::string Name() const override { return "recording"; }
  Result<std::string> Launch(const ContainerSpec& spec) override {
    std::lock_guard<std::mutex> lock(mu);
    launched.push_back(spec);
    return "h-" + spec.id;
  }
  Status Terminate(const std::string& id, const std::string&) override {
    std::lock_guard<std::mutex> lock(mu);
    terminated.push_back(id);
    return Status::Ok();
  }
  Result<ContainerDescription> Describe(const std::string&, const std::string&) override {
    return ContainerDescription{ContainerDescription::State::kRunning, "ok", ""};
  }
  size_t Launched() {
    std::lock_guard<std::mutex> lock(mu);
    return launched.size();
  }
  std::mutex mu;
  std::vector<ContainerSpec> launched;
  std::vector<std::string> terminated;
};

class EngineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/epoch-engine-test.XXXXXX";
    dir_ = mkdtemp(tmpl);
    OpenStore();
  }
  void TearDown() override {
    engine_.reset();
    store_.reset();
    std::filesystem::remove_all(dir_);
  }
  void OpenStore() {
    auto s = storage::OpenRocksDbEventStore({dir_ + "/store", true});
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    store_ = std::move(*s);
  }
  void StartEngine(int replicas = 1) {
    EngineOptions o;
    o.config.data_dir = dir_;
    o.config.max_replicas = replicas;
    o.config.min_replicas = replicas;
    o.config.tick = std::chrono::milliseconds(20);
    o.advertise_url = "http://127.0.0.1:1";
    engine_ = std::make_unique<Engine>(o, store_.get(), &backend_, &clock_);
    ASSERT_TRUE(engine_->Start().ok());
  }
  bool WaitFor(const std::function<bool()>& f) {
    for (int i = 0; i < 500; ++i) {
      if (f()) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return f();
  }
  Json RunsJson() { return RunsJson(*engine_); }
  static Json RunsJson(const Engine& e) {
    return e.Read([&](const State& s) {
      Json j = Json::object();
      for (const auto& [id, r] : s.runs) j[id] = RunToJson(r, e.options().config);
      return j;
    });
  }

  std::string dir_;
  std::unique_ptr<storage::EventStore> store_;
  RecordingBackend backend_;
  SystemClock clock_;
  std::unique_ptr<Engine> engine_;
};

const char* kDef = R"({"name":"w","steps":[{"name":"a","command":["echo","{{run.id}}"]},
    {"name":"b","after":["a"],"command":["true"]}]})";

TEST_F(EngineTest, CommandsAreDurableBeforeTheyAreAnswered) {
  StartEngine();
  ASSERT_TRUE(WaitFor([&] { return backend_.Launched() == 1; }));
  EXPECT_EQ(backend_.launched[0].id, "c1");
  EXPECT_EQ(backend_.launched[0].master_url, "http://127.0.0.1:1");
  auto reg = engine_->Execute(RegisterContainer{.container = "c1", .cpu_millis = 1000,
                                                .memory_bytes = 1LL << 30});
  ASSERT_TRUE(reg.ok()) << reg.status().ToString();
  auto wf = engine_->Execute(RegisterWorkflow{*ParseJson(kDef), "alice"});
  ASSERT_TRUE(wf.ok()) << wf.status().ToString();
  auto run = engine_->Execute(SubmitRun{.run_id = "r1", .workflow = "w", .submitter = "alice"});
  ASSERT_TRUE(run.ok()) << run.status().ToString();
  // Answered => in the store, with the follow-ups of the same commit.
  auto evs = store_->ReadStream("run-r1", 1, 100);
  ASSERT_TRUE(evs.ok());
  std::vector<std::string> types;
  for (const auto& e : *evs) types.push_back(e.type);
  EXPECT_EQ(types, (std::vector<std::string>{"RunSubmitted", "StepReady", "JobQueued",
                                             "JobAssigned"}));
  EXPECT_EQ((*evs)[0].actor, "alice");
  EXPECT_GE(run->position, (*evs)[3].position);
  // The published state has it too.
  Json r = RunsJson()["r1"];
  EXPECT_EQ(r["steps"][0]["attempts"][0]["argv"], Json::array({"echo", "r1"}));
  EXPECT_EQ(r["steps"][0]["attempts"][0]["state"], "assigned");
  // The poll view hands the assignment out until the agent reports it running.
  DispatchView v = engine_->DispatchFor("c1", {}, {});
  ASSERT_EQ(v.assignments.size(), 1u);
  EXPECT_EQ(v.assignments[0]["attempt_id"], "r1/a/1");
  EXPECT_EQ(v.assignments[0]["log_path"], dir_ + "/logs/r1/a/1.log");
  EXPECT_TRUE(engine_->DispatchFor("c1", {"r1/a/1"}, {}).assignments.empty());
  // An agent running something the master does not know is told to cancel it.
  EXPECT_EQ(engine_->DispatchFor("c1", {"r9/x/1"}, {}).cancels, Json::array({"r9/x/1"}));
}

// Time in the engine is the injected clock's. With a ManualClock a retry timer and a
// container's lease fire when the test moves the clock past them, and not a tick
// before; the test waits for the tick it caused (AwaitTick), never for the real clock.
TEST_F(EngineTest, RetryTimersAndLeasesRunOnTheInjectedClock) {
  ManualClock clock(FromMicros(1'800'000'000'000'000));
  EngineOptions o;
  o.config.data_dir = dir_;
  o.config.max_replicas = 1;
  o.config.min_replicas = 1;
  o.config.tick = std::chrono::seconds(1);
  o.config.lease = std::chrono::seconds(10);
  o.advertise_url = "http://127.0.0.1:1";
  engine_ = std::make_unique<Engine>(o, store_.get(), &backend_, &clock);
  ASSERT_TRUE(engine_->Start().ok());
  ASSERT_TRUE(engine_->AwaitTick(clock.Now()));  // the first tick asks for c1
  ASSERT_TRUE(engine_
                  ->Execute(RegisterContainer{
                      .container = "c1", .cpu_millis = 1000, .memory_bytes = 1LL << 30})
                  .ok());
  engine_->Heartbeat("c1");
  ASSERT_TRUE(engine_
                  ->Execute(RegisterWorkflow{*ParseJson(R"({"name":"r","steps":[{"name":"a",
      "command":["false"],"retry":{"limit":1,"backoff":"fixed","initial":"5s"}}]})"),
                                             "a"})
                  .ok());
  ASSERT_TRUE(engine_->Execute(SubmitRun{.run_id = "r1", .workflow = "r"}).ok());
  PollContainer p;
  p.container = "c1";
  p.reports =
      Reports(Json::array({Json{{"attempt_id", "r1/a/1"}, {"state", "failed"}, {"exit_code", 1}}}));
  ASSERT_TRUE(engine_->Execute(p).ok());
  engine_->Heartbeat("c1");
  auto attempts = [&] {
    return engine_->Read([](const State& s) { return s.FindRun("r1")->steps[0].attempts.size(); });
  };
  auto container = [&] {
    return engine_->Read([](const State& s) { return s.containers.at("c1").phase; });
  };
  ASSERT_EQ(attempts(), 1u);

  clock.Advance(std::chrono::seconds(4));  // 1 s short of the retry
  ASSERT_TRUE(engine_->AwaitTick(clock.Now()));
  EXPECT_EQ(attempts(), 1u) << "retried before its timer";
  clock.Advance(std::chrono::seconds(1));
  ASSERT_TRUE(engine_->AwaitTick(clock.Now()));
  EXPECT_EQ(attempts(), 2u) << "the retry timer did not fire";

  // c1 was last heard from 5 s ago; its lease is 10 s.
  clock.Advance(std::chrono::seconds(5));
  ASSERT_TRUE(engine_->AwaitTick(clock.Now()));
  EXPECT_EQ(container(), ContainerPhase::kRegistered) << "lost at exactly its lease";
  clock.Advance(std::chrono::seconds(1));
  ASSERT_TRUE(engine_->AwaitTick(clock.Now()));
  EXPECT_EQ(container(), ContainerPhase::kLost);
  EXPECT_EQ(
      engine_->Read([](const State& s) { return s.FindRun("r1")->steps[0].attempts[1].phase; }),
      AttemptPhase::kLost);
  engine_.reset();  // its threads read the clock above: stop it first
}

TEST_F(EngineTest, ConcurrentCommandsShareCommits) {
  StartEngine(0);
  ASSERT_TRUE(engine_->Execute(RegisterWorkflow{*ParseJson(kDef), "a"}).ok());
  uint64_t commits_before = engine_->stats().commits.load();
  constexpr int kThreads = 16, kEach = 25;
  std::vector<std::thread> threads;
  std::atomic<int> ok{0};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kEach; ++i) {
        SubmitRun s{.run_id = "r" + std::to_string(t) + "-" + std::to_string(i), .workflow = "w"};
        if (engine_->Execute(s).ok()) ok++;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(ok.load(), kThreads * kEach);
  uint64_t commits = engine_->stats().commits.load() - commits_before;
  EXPECT_LT(commits, static_cast<uint64_t>(kThreads * kEach)) << "no group commit happened";
  EXPECT_EQ(RunsJson().size(), static_cast<size_t>(kThreads * kEach));
}

TEST_F(EngineTest, RestartReplaysToTheSameState) {
  StartEngine();
  ASSERT_TRUE(WaitFor([&] { return backend_.Launched() == 1; }));
  ASSERT_TRUE(engine_->Execute(RegisterContainer{.container = "c1", .cpu_millis = 1000,
                                                 .memory_bytes = 1LL << 30}).ok());
  ASSERT_TRUE(engine_->Execute(RegisterWorkflow{*ParseJson(kDef), "a"}).ok());
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(engine_->Execute(SubmitRun{.run_id = "r" + std::to_string(i), .workflow = "w"}).ok());
  }
  PollContainer p;
  p.container = "c1";
  p.reports = Reports(
      Json::array({Json{{"attempt_id", "r0/a/1"}, {"state", "succeeded"}, {"exit_code", 0}}}));
  auto pr = engine_->Execute(p);
  ASSERT_TRUE(pr.ok()) << pr.status().ToString();
  EXPECT_EQ(pr->ack, std::vector<std::string>{"r0/a/1"});
  ASSERT_TRUE(engine_->Execute(CancelRun{"r3", "bob"}).ok());
  Json before = RunsJson();
  uint64_t epoch_before = engine_->epoch();
  engine_->Stop();
  engine_.reset();
  store_.reset();
  OpenStore();
  StartEngine();
  EXPECT_EQ(RunsJson(), before);
  EXPECT_EQ(engine_->epoch(), epoch_before + 1);
  // The container registered before the restart is still known, with its attempts.
  bool known = engine_->Read([](const State& s) {
    auto it = s.containers.find("c1");
    return it != s.containers.end() && it->second.phase == ContainerPhase::kRegistered;
  });
  EXPECT_TRUE(known);
}

// --- HA ---

class HaEngineTest : public EngineTest {
 protected:
  EngineOptions Options(const std::string& node) {
    EngineOptions o;
    o.node = node;
    o.config.data_dir = dir_;
    o.config.max_replicas = 1;
    o.config.min_replicas = 1;
    o.config.tick = std::chrono::milliseconds(20);
    o.advertise_url = "http://" + node;
    return o;
  }
  std::unique_ptr<storage::EventStore> OpenSecondary() {
    auto s = storage::OpenRocksDbEventStore({dir_ + "/store", false, dir_ + "/secondary"});
    EXPECT_TRUE(s.ok()) << s.status().ToString();
    return s.ok() ? std::move(*s) : nullptr;
  }
  void Submit(Engine& e, const std::string& id) {
    auto r = e.Execute(SubmitRun{.run_id = id, .workflow = "w"});
    ASSERT_TRUE(r.ok()) << r.status().ToString();
  }
  static Json Digest(const Engine& e) {
    return e.Read([](const State& s) { return StateDigestJson(s); });
  }
  static uint64_t HeadOf(const Engine& e) {
    return e.Read([](const State& s) { return s.head; });
  }
};

TEST_F(HaEngineTest, StandbyFollowsTheLeaderAndPromotesWithoutReplay) {
  StartEngine();
  ASSERT_TRUE(engine_->Execute(RegisterWorkflow{*ParseJson(kDef), "a"}).ok());
  Submit(*engine_, "r1");
  auto secondary = OpenSecondary();
  ASSERT_TRUE(secondary);
  Engine standby(Options("b"), secondary.get(), &backend_, &clock_);
  ASSERT_TRUE(standby.StartStandby().ok());
  EXPECT_EQ(standby.role(), Role::kStandby);
  EXPECT_EQ(HeadOf(standby), HeadOf(*engine_));
  EXPECT_EQ(standby.Execute(CancelRun{"r1", "x"}).status().code(), StatusCode::kUnavailable);

  Submit(*engine_, "r2");
  uint64_t gen = standby.Generation();
  ASSERT_TRUE(secondary->CatchUp().ok());
  auto applied = standby.Follow();
  ASSERT_TRUE(applied.ok()) << applied.status().ToString();
  EXPECT_GE(*applied, 1u);
  EXPECT_NE(standby.Generation(), gen);  // long polls and streams wake up
  EXPECT_TRUE(standby.Read([](const State& s) { return s.FindRun("r2") != nullptr; }));
  EXPECT_EQ(standby.Read([](const State& s) { return s.leader_address; }), "http://127.0.0.1:1");

  // The leader goes; the standby's store becomes primary and it leads.
  Submit(*engine_, "r3");  // not yet tailed: Promote applies it from the store
  uint64_t old_epoch = engine_->epoch();
  engine_.reset();
  store_.reset();
  ASSERT_TRUE(secondary->Promote().ok());
  bool rebuilt = true;
  Status st = standby.Promote(&rebuilt);
  ASSERT_TRUE(st.ok()) << st.ToString();
  EXPECT_FALSE(rebuilt);
  EXPECT_EQ(standby.role(), Role::kLeader);
  EXPECT_TRUE(standby.ready());
  EXPECT_EQ(standby.epoch(), old_epoch + 1);
  EXPECT_TRUE(standby.Read([](const State& s) { return s.FindRun("r3") != nullptr; }));
  EXPECT_EQ(standby.Read([](const State& s) { return s.leader_address; }), "http://b");
  Submit(standby, "r4");
  // What it leads with equals a replay of the store from scratch.
  Json live = Digest(standby);
  standby.Stop();
  Engine replayed(Options("c"), secondary.get(), nullptr, &clock_);
  ASSERT_TRUE(replayed.StartStandby().ok());
  EXPECT_EQ(Digest(replayed), live);
}

TEST_F(HaEngineTest, PromotionRebuildsWhenTheStandbyReadWhatIsNotDurable) {
  StartEngine();
  ASSERT_TRUE(engine_->Execute(RegisterWorkflow{*ParseJson(kDef), "a"}).ok());
  Submit(*engine_, "kept");
  engine_.reset();
  store_.reset();
  // What will be "durable": a copy of the store as of now.
  std::filesystem::copy(dir_ + "/store", dir_ + "/durable", std::filesystem::copy_options::recursive);
  OpenStore();
  StartEngine();
  auto secondary = OpenSecondary();
  ASSERT_TRUE(secondary);
  Engine standby(Options("b"), secondary.get(), &backend_, &clock_);
  ASSERT_TRUE(standby.StartStandby().ok());
  Submit(*engine_, "lost");
  ASSERT_TRUE(secondary->CatchUp().ok());
  ASSERT_TRUE(standby.Follow().ok());
  ASSERT_TRUE(standby.Read([](const State& s) { return s.FindRun("lost") != nullptr; }));
  uint64_t seen = HeadOf(standby);
  // The leader dies and what it wrote after the copy never reached the disk.
  engine_.reset();
  store_.reset();
  std::filesystem::rename(dir_ + "/store", dir_ + "/gone");
  std::filesystem::rename(dir_ + "/durable", dir_ + "/store");
  ASSERT_TRUE(secondary->Promote().ok());
  ASSERT_LT(secondary->Head().position, seen);
  bool rebuilt = false;
  Status st = standby.Promote(&rebuilt);
  ASSERT_TRUE(st.ok()) << st.ToString();
  EXPECT_TRUE(rebuilt);
  EXPECT_TRUE(standby.Read([](const State& s) { return s.FindRun("kept") != nullptr; }));
  EXPECT_FALSE(standby.Read([](const State& s) { return s.FindRun("lost") != nullptr; }));
  EXPECT_EQ(HeadOf(standby), secondary->Head().position);
  Submit(standby, "after");
  auto all = secondary->ReadAll(0, 1000);
  ASSERT_TRUE(all.ok()) << all.status().ToString();
  EXPECT_EQ(all->back().position, secondary->Head().position);
}

TEST_F(HaEngineTest, ADeposedLeaderCannotAppend) {
  std::atomic<int> deposed{0};
  EngineOptions a = Options("a");
  a.start_pool = false;
  a.on_deposed = [&](const std::string&) { deposed++; };
  Engine old(a, store_.get(), nullptr, &clock_);
  ASSERT_TRUE(old.Start().ok());
  ASSERT_TRUE(old.Execute(RegisterWorkflow{*ParseJson(kDef), "a"}).ok());
  EngineOptions b = Options("b");
  b.start_pool = false;
  Engine successor(b, store_.get(), nullptr, &clock_);
  ASSERT_TRUE(successor.Start().ok());  // claims epoch 2 in the store
  uint64_t head = store_->Head().position;
  auto r = old.Execute(SubmitRun{.run_id = "stale", .workflow = "w"});
  EXPECT_EQ(r.status().code(), StatusCode::kUnavailable);
  EXPECT_EQ(old.role(), Role::kDeposed);
  EXPECT_EQ(deposed.load(), 1);
  EXPECT_NE(old.deposed_reason().find("fenced"), std::string::npos) << old.deposed_reason();
  EXPECT_FALSE(old.ready());
  EXPECT_EQ(store_->Head().position, head);
  EXPECT_EQ(old.Execute(CancelRun{"x", "y"}).status().code(), StatusCode::kUnavailable);
  // The successor is unaffected, and nothing of epoch 1 follows its election.
  Submit(successor, "fresh");
  auto all = store_->ReadAll(0, 1000);
  ASSERT_TRUE(all.ok());
  bool elected = false;
  for (const auto& e : *all) {
    if (e.type == "LeaderElected" && e.epoch == 2) elected = true;
    if (elected) {
      EXPECT_EQ(e.epoch, 2u) << e.type << " at " << e.position;
    }
  }
  EXPECT_TRUE(elected);
  old.Stop();
}

TEST_F(HaEngineTest, AContainersClaimOfAHigherEpochIsRefusedUntilALeaderPublishedOne) {
  std::atomic<uint64_t> published{0};
  EngineOptions o = Options("a");
  o.epoch_witness = [&] { return published.load(); };
  Engine leader(o, store_.get(), &backend_, &clock_);
  ASSERT_TRUE(leader.Start().ok());
  ASSERT_TRUE(leader.Execute(RegisterWorkflow{*ParseJson(kDef), "a"}).ok());
  const uint64_t head = leader.Read([](const State& s) { return s.head; });
  PollContainer p;
  p.container = "c1";
  p.epoch_seen = leader.epoch() + 3;
  // Nobody published a newer epoch (or only this leader's own): the claim is refused.
  for (uint64_t witnessed : {uint64_t{0}, leader.epoch()}) {
    published = witnessed;
    Status st = leader.ObserveEpoch(p.epoch_seen);
    EXPECT_EQ(st.code(), StatusCode::kConflict) << st.ToString();
    EXPECT_NE(st.message().find("epoch_seen"), std::string::npos) << st.message();
    EXPECT_EQ(leader.Execute(p).status().code(), StatusCode::kConflict);
    EXPECT_EQ(leader.role(), Role::kLeader);
  }
  EXPECT_EQ(leader.Read([](const State& s) { return s.head; }), head);  // nothing written
  EXPECT_TRUE(leader.Execute(RegisterWorkflow{*ParseJson(kDef), "b"}).ok());
  // A newer leader published itself: the same claim deposes this one.
  published = leader.epoch() + 1;
  EXPECT_EQ(leader.ObserveEpoch(p.epoch_seen).code(), StatusCode::kUnavailable);
  EXPECT_EQ(leader.role(), Role::kDeposed);
  leader.Stop();
}

TEST_F(HaEngineTest, AContainerThatSawAHigherEpochDeposesTheLeader) {
  EngineOptions o = Options("a");
  o.epoch_witness = [this] { return engine_->epoch() + 3; };  // a newer leader published
  engine_ = std::make_unique<Engine>(o, store_.get(), &backend_, &clock_);
  ASSERT_TRUE(engine_->Start().ok());
  PollContainer p;
  p.container = "c1";
  p.epoch_seen = engine_->epoch() + 3;
  auto r = engine_->Execute(p);
  EXPECT_EQ(r.status().code(), StatusCode::kUnavailable);
  EXPECT_EQ(engine_->role(), Role::kDeposed);
  EXPECT_NE(engine_->deposed_reason().find("epoch"), std::string::npos);
  EXPECT_EQ(engine_->Execute(RegisterWorkflow{*ParseJson(kDef), "a"}).status().code(),
            StatusCode::kUnavailable);
}

// Replay takes the log as facts: a definition registered under earlier rules is
// rebuilt as stored, and what cannot be applied stops the start, named.
class ReplayFactsTest : public EngineTest {
 protected:
  void AppendRaw(const std::string& stream, const std::string& type, const Json& data,
                 const std::string& time = "2026-01-02T03:04:05.000000Z") {
    storage::AppendBatch b;
    b.time = time;
    b.epoch = 1;
    b.appends.push_back({stream, storage::kAnyVersion, {{type, 1, "test", data.dump()}}});
    auto r = store_->Append(std::move(b));
    ASSERT_TRUE(r.ok()) << r.status().ToString();
  }
  Status StartOnStore() {
    EngineOptions o;
    o.config.data_dir = dir_;
    o.start_pool = false;
    engine_ = std::make_unique<Engine>(o, store_.get(), &backend_, &clock_);
    return engine_->Start();
  }
};

TEST_F(ReplayFactsTest, ADefinitionTodaysRulesRejectStillReplaysWithItsRuns) {
  // Written by a version that allowed a top-level "owner" field and EPOCH_* variables.
  Json def = *ParseJson(R"({"name": "old", "owner": "team-a",
      "steps": [{"name": "a", "command": ["true"], "env": {"EPOCH_LEGACY": "1"}},
                {"name": "b", "command": ["true"], "after": ["a"]}]})");
  ASSERT_FALSE(workflows::ParseDefinition(def).ok());  // registration refuses it today
  AppendRaw("workflow-old", "WorkflowRegistered",
            fields::Encode(ev::WorkflowRegistered{
                .name = "old", .version = 1, .definition = def, .tenant = "default"}));
  AppendRaw("run-r1", "RunSubmitted",
            fields::Encode(ev::RunSubmitted{
                .run = "r1", .workflow = "old", .version = 1, .tenant = "default"}));
  Status st = StartOnStore();
  ASSERT_TRUE(st.ok()) << st.ToString();
  engine_->Read([](const State& s) {
    const engine::Run* r = s.FindRun("r1");
    EXPECT_NE(r, nullptr);
    if (!r) return 0;
    EXPECT_EQ(r->workflow, "old");
    EXPECT_EQ(r->steps.size(), 2u);
    EXPECT_EQ(s.workflows.at("old").size(), 1u);
    return 0;
  });
}

TEST_F(ReplayFactsTest, ARunOfAWorkflowNeverRegisteredStopsReplayNamingTheField) {
  AppendRaw("run-r1", "RunSubmitted",
            fields::Encode(ev::RunSubmitted{.run = "r1", .workflow = "ghost", .version = 1}));
  Status st = StartOnStore();
  EXPECT_EQ(st.code(), StatusCode::kCorruption) << st.ToString();
  EXPECT_NE(st.message().find("event 1 (RunSubmitted): field workflow"), std::string::npos)
      << st.message();
}

TEST_F(ReplayFactsTest, ADefinitionThatCannotRunStopsReplayNamingTheField) {
  Json cyclic = *ParseJson(R"({"name": "loop", "steps": [
      {"name": "a", "command": ["true"], "after": ["b"]},
      {"name": "b", "command": ["true"], "after": ["a"]}]})");
  AppendRaw(
      "workflow-loop", "WorkflowRegistered",
      fields::Encode(ev::WorkflowRegistered{.name = "loop", .version = 1, .definition = cyclic}));
  Status st = StartOnStore();
  EXPECT_EQ(st.code(), StatusCode::kCorruption) << st.ToString();
  EXPECT_NE(st.message().find("event 1 (WorkflowRegistered): field definition"), std::string::npos)
      << st.message();
}

// A payload field that is missing or of the wrong type stops the start, naming the
// event and the field: replay never substitutes a default.
TEST_F(ReplayFactsTest, AMissingOrMistypedPayloadFieldStopsReplayNamingIt) {
  AppendRaw("master", "LeaderElected", Json{{"epoch", 1}, {"node", "a"}});  // no address
  Status st = StartOnStore();
  EXPECT_EQ(st.code(), StatusCode::kCorruption) << st.ToString();
  EXPECT_NE(st.message().find("event 1 (LeaderElected): field address: missing"), std::string::npos)
      << st.message();
}

TEST_F(ReplayFactsTest, AMistypedNestedFieldIsNamedByItsPath) {
  Json def = *ParseJson(R"({"name": "w", "steps": [{"name": "a", "command": ["true"]}]})");
  AppendRaw("workflow-w", "WorkflowRegistered",
            fields::Encode(ev::WorkflowRegistered{
                .name = "w", .version = 1, .definition = def, .tenant = "default"}));
  AppendRaw("run-r1", "RunSubmitted",
            fields::Encode(
                ev::RunSubmitted{.run = "r1", .workflow = "w", .version = 1, .tenant = "default"}));
  Json queued = fields::Encode(ev::JobQueued{.run = "r1", .step = "a", .attempt = 1});
  queued["resources"]["cpu_millis"] = "100m";  // what a definition says, not what is stored
  AppendRaw("run-r1", "JobQueued", queued);
  Status st = StartOnStore();
  EXPECT_EQ(st.code(), StatusCode::kCorruption) << st.ToString();
  EXPECT_NE(st.message().find("event 3 (JobQueued): field resources.cpu_millis: expected an "
                              "integer, got string"),
            std::string::npos)
      << st.message();
}

// Payloads of an older version are upcast on read: a v1 WorkflowRegistered without
// `tenant` and a v1 JobQueued without `workers` replay as the default tenant's
// workflow and a one-worker attempt.
TEST_F(ReplayFactsTest, OlderPayloadVersionsAreUpcastOnRead) {
  Json def = *ParseJson(R"({"name": "w", "steps": [{"name": "a", "command": ["true"]}]})");
  Json wf = fields::Encode(ev::WorkflowRegistered{.name = "w", .version = 1, .definition = def});
  wf.erase("tenant");
  AppendRaw("workflow-w", "WorkflowRegistered", wf);  // AppendRaw writes payload version 1
  AppendRaw("run-r1", "RunSubmitted",
            fields::Encode(
                ev::RunSubmitted{.run = "r1", .workflow = "w", .version = 1, .tenant = "default"}));
  Json queued = fields::Encode(ev::JobQueued{.run = "r1", .step = "a", .attempt = 1, .workers = 7});
  queued.erase("workers");
  AppendRaw("run-r1", "JobQueued", queued);
  Status st = StartOnStore();
  ASSERT_TRUE(st.ok()) << st.ToString();
  engine_->Read([](const State& s) {
    EXPECT_EQ(s.workflows.at("w").at(0).tenant, "default");
    const Attempt* a = s.FindAttempt("r1/a/1");
    EXPECT_NE(a, nullptr);
    if (a) {
      EXPECT_EQ(a->workers, 1);
    }
    return 0;
  });
  // At today's version the same payload is incomplete, not upcast.
  auto today = ev::Upcast("JobQueued", ev::JobQueued::kVersion, queued);
  ASSERT_TRUE(today.ok());
  EXPECT_FALSE(today->contains("workers"));
  auto v1 = ev::Upcast("JobQueued", 1, queued);
  ASSERT_TRUE(v1.ok());
  EXPECT_EQ((*v1)["workers"], 1);
  auto unknown = ev::Upcast("JobTeleported", 1, Json::object());
  EXPECT_EQ(unknown.status().code(), StatusCode::kFailedPrecondition);
}

TEST_F(ReplayFactsTest, ABadTimeOrDataIsNeverGuessed) {
  AppendRaw("master", "LeaderElected", Json{{"epoch", 1}, {"node", "a"}}, "yesterday-ish");
  Status st = StartOnStore();
  EXPECT_EQ(st.code(), StatusCode::kCorruption) << st.ToString();
  EXPECT_NE(st.message().find("event 1 (LeaderElected): field time"), std::string::npos)
      << st.message();
}

TEST_F(ReplayFactsTest, APayloadSchemaFromANewerEpochIsRefusedNotMisread) {
  storage::AppendBatch b;
  b.time = "2026-01-02T03:04:05.000000Z";
  b.epoch = 1;
  b.appends.push_back({"master",
                       storage::kAnyVersion,
                       {{"LeaderElected", ev::LeaderElected::kVersion + 1, "test",
                         Json{{"epoch", 1}, {"node", "a"}, {"address", "x"}}.dump()}}});
  ASSERT_TRUE(store_->Append(std::move(b)).ok());
  Status st = StartOnStore();
  EXPECT_EQ(st.code(), StatusCode::kFailedPrecondition) << st.ToString();
  EXPECT_NE(st.message().find("event 1 (LeaderElected): payload version 2 of LeaderElected; this "
                              "Epoch reads 1 to 1"),
            std::string::npos)
      << st.message();
}

TEST_F(ReplayFactsTest, DataThatIsNotAnObjectIsNeverGuessed) {
  AppendRaw("master", "LeaderElected", Json::array({1, 2}));
  Status st = StartOnStore();
  EXPECT_EQ(st.code(), StatusCode::kCorruption) << st.ToString();
  EXPECT_NE(st.message().find("event 1 (LeaderElected): field data"), std::string::npos)
      << st.message();
}

// Replay reads page after page (4096 events), the next on another thread while one is
// applied: every event of a log of several pages is applied, in order, and an event
// that cannot be read or applied in a page read ahead stops it as it would have at
// that event.
class ReplayPagesTest : public ReplayFactsTest {
 protected:
  // `count` LeaderElected events (epoch i + 1, address "a<i>"), through `edit` first.
  void AppendElections(int count, const std::function<void(int, Json*, std::string*)>& edit) {
    for (int from = 0; from < count; from += 1000) {
      storage::AppendBatch b;
      b.time = "2026-01-02T03:04:05.000000Z";
      b.epoch = 1;
      storage::StreamAppend sa{"master", storage::kAnyVersion, {}};
      for (int i = from; i < std::min(count, from + 1000); ++i) {
        Json data{{"epoch", i + 1}, {"node", "n"}, {"address", "a" + std::to_string(i)}};
        std::string type = "LeaderElected";
        edit(i, &data, &type);
        sa.events.push_back({type, 1, "test", data.dump()});
      }
      b.appends.push_back(std::move(sa));
      ASSERT_TRUE(store_->Append(std::move(b)).ok());
    }
  }
};

TEST_F(ReplayPagesTest, EveryEventOfSeveralPagesIsAppliedInOrder) {
  AppendElections(9000, [](int, Json*, std::string*) {});
  Status st = StartOnStore();
  ASSERT_TRUE(st.ok()) << st.ToString();
  HistoryCheck h = engine_->history();
  EXPECT_EQ(h.method, "replay");
  EXPECT_EQ(h.checked, 9000u);
  EXPECT_EQ(h.head_position, 9000u);
  auto at = store_->ReadAt(9000);
  ASSERT_TRUE(at.ok());
  EXPECT_EQ(h.head_hash, at->hash);
  // The last election applied was event 9000's; the start then elects its own leader.
  EXPECT_GE(engine_->epoch(), 9001u);
}

TEST_F(ReplayPagesTest, ABadTimeInAPageReadAheadStopsReplayAtIt) {
  // Event 8500 is in the third page, read while the second was applied.
  AppendElections(8499, [](int, Json*, std::string*) {});
  storage::AppendBatch bad;
  bad.time = "yesterday-ish";
  bad.epoch = 1;
  bad.appends.push_back(
      {"master",
       storage::kAnyVersion,
       {{"LeaderElected", 1, "test", Json{{"epoch", 1}, {"node", "n"}, {"address", "x"}}.dump()}}});
  ASSERT_TRUE(store_->Append(std::move(bad)).ok());
  AppendElections(100, [](int, Json*, std::string*) {});
  Status st = StartOnStore();
  EXPECT_EQ(st.code(), StatusCode::kCorruption) << st.ToString();
  EXPECT_NE(st.message().find("event 8500 (LeaderElected): field time"), std::string::npos)
      << st.message();
}

TEST_F(ReplayPagesTest, APayloadThatDoesNotApplyInAPageReadAheadStopsReplayAtIt) {
  // Event 6000 is in the second page, read while the first was applied.
  AppendElections(9000, [](int i, Json* data, std::string*) {
    if (i == 5999) data->erase("address");
  });
  Status st = StartOnStore();
  EXPECT_EQ(st.code(), StatusCode::kCorruption) << st.ToString();
  EXPECT_NE(st.message().find("event 6000 (LeaderElected): field address: missing"),
            std::string::npos)
      << st.message();
}

TEST_F(HaEngineTest, RestartLoadsTheLatestSnapshotAndReplaysOnlyTheTail) {
  EngineOptions o = Options("a");
  o.snapshot_every = 10;
  auto leader = std::make_unique<Engine>(o, store_.get(), &backend_, &clock_);
  ASSERT_TRUE(leader->Start().ok());
  ASSERT_TRUE(leader->Execute(RegisterWorkflow{*ParseJson(kDef), "a"}).ok());
  for (int i = 0; i < 12; ++i) Submit(*leader, "r" + std::to_string(i));
  // The background snapshotter catches up with the threshold.
  ASSERT_TRUE(WaitFor([&] {
    auto snap = store_->LatestSnapshot();
    return snap.ok() && snap->has_value() && (*snap)->first >= 30;
  }));
  auto explicit_snap = leader->WriteSnapshot();
  ASSERT_TRUE(explicit_snap.ok()) << explicit_snap.status().ToString();
  Submit(*leader, "after-snapshot");
  Json live = Digest(*leader);
  leader.reset();

  Engine from_snapshot(Options("b"), store_.get(), nullptr, &clock_);
  ASSERT_TRUE(from_snapshot.StartStandby().ok());
  auto [at, replayed] = from_snapshot.LoadedFrom();
  EXPECT_EQ(at, explicit_snap->position);
  EXPECT_GT(replayed, 0u);
  EXPECT_LT(replayed, 20u);
  EXPECT_EQ(Digest(from_snapshot), live);
  EngineOptions no = Options("c");
  no.load_snapshot = false;
  Engine full(no, store_.get(), nullptr, &clock_);
  ASSERT_TRUE(full.StartStandby().ok());
  EXPECT_EQ(full.LoadedFrom().first, 0u);
  EXPECT_EQ(Digest(full), live);

  // A snapshot that does not decode is skipped: the whole log is replayed.
  ASSERT_TRUE(store_->PutSnapshot(store_->Head().position, "garbage").ok());
  Engine fallback(Options("d"), store_.get(), nullptr, &clock_);
  ASSERT_TRUE(fallback.StartStandby().ok());
  EXPECT_EQ(fallback.LoadedFrom().first, 0u);
  EXPECT_EQ(Digest(fallback), live);
}

// --- Corrupt history ---

// A store whose event `bad` fails verification, as if one of its bytes had been
// flipped on disk: every read that reaches it is kCorruption naming it, and
// VerifyChain reports it. Everything else is the real store underneath.
class TamperedStore : public storage::test_util::ForwardingEventStore {
 public:
  TamperedStore(storage::EventStore* inner, uint64_t bad)
      : ForwardingEventStore(inner), bad_(bad) {}
  Status Broken() const { return Corruption("event " + std::to_string(bad_) + ": hash mismatch"); }

  Result<std::vector<storage::Envelope>> ReadStream(const std::string& stream, uint64_t from,
                                                    size_t limit) override {
    ASSIGN_OR_RETURN(auto events, inner_->ReadStream(stream, from, limit));
    for (const auto& e : events) {
      if (e.position == bad_) return Broken();
    }
    return events;
  }
  Result<std::vector<storage::Envelope>> ReadAll(uint64_t after, size_t limit,
                                                 const storage::ReadFilter& f) override {
    if (after == bad_) return Broken();  // the page's link is checked against it
    ASSIGN_OR_RETURN(auto events, inner_->ReadAll(after, limit, f));
    if (!events.empty() && after < bad_ && events.back().position >= bad_) return Broken();
    return events;
  }
  Result<storage::Envelope> ReadAt(uint64_t position) override {
    if (position == bad_) return Broken();
    return inner_->ReadAt(position);
  }
  Result<storage::ChainReport> VerifyChain(uint64_t from, const std::string& hash) override {
    ASSIGN_OR_RETURN(auto report, inner_->VerifyChain(from, hash));
    verified_++;
    if (report.ok && from <= bad_ && bad_ <= report.head_position) {
      report.ok = false;
      report.checked = bad_ - from;
      report.bad_position = bad_;
      report.problem = Broken().message();
      report.head_hash.clear();
    }
    return report;
  }

  std::atomic<int> verified_{0};

 private:
  uint64_t bad_;
};

class CorruptHistoryTest : public HaEngineTest {
 protected:
  // A history of a workflow and runs r0..r3 (an engine that leads and stops);
  // returns the position of r2's RunSubmitted.
  uint64_t WriteHistory(uint64_t snapshot_every = 0) {
    EngineOptions o = Options("writer");
    o.snapshot_every = snapshot_every;
    Engine e(o, store_.get(), &backend_, &clock_);
    EXPECT_TRUE(e.Start().ok());
    EXPECT_TRUE(e.Execute(RegisterWorkflow{*ParseJson(kDef), "a"}).ok());
    for (int i = 0; i < 4; ++i) Submit(e, "r" + std::to_string(i));
    if (snapshot_every > 0) {
      auto snap = e.WriteSnapshot();
      EXPECT_TRUE(snap.ok()) << snap.status().ToString();
    }
    e.Stop();
    auto r2 = store_->ReadStream("run-r2", 1, 1);
    EXPECT_TRUE(r2.ok() && r2->size() == 1);
    return r2.ok() && !r2->empty() ? (*r2)[0].position : 0;
  }
  // Every way in is refused with CorruptHistoryError naming `bad`.
  void ExpectRefused(Engine& e, uint64_t bad) {
    const std::string named = "corrupt at event " + std::to_string(bad) + " (event " +
                              std::to_string(bad) + ": hash mismatch)";
    for (Command c : std::vector<Command>{
             SubmitRun{.run_id = "new", .workflow = "w"}, RegisterWorkflow{*ParseJson(kDef), "a"},
             CancelRun{"r0"}, RetryRun{"r0"}, InvalidateCache{.workflow = "w"},
             RegisterContainer{.container = "c9", .cpu_millis = 1000, .memory_bytes = 1 << 30},
             PollContainer{.container = "c1"}, Tick{}}) {
      auto r = e.Execute(c);
      ASSERT_FALSE(r.ok()) << c.index();
      EXPECT_TRUE(IsCorruptHistory(r.status())) << r.status().ToString();
      EXPECT_NE(r.status().message().find(named), std::string::npos) << r.status().message();
    }
    Status poll = e.ObserveEpoch(0);
    EXPECT_TRUE(IsCorruptHistory(poll)) << poll.ToString();
    EXPECT_FALSE(e.WriteSnapshot().ok());
    DispatchView v = e.DispatchFor("c1", {"r0/a/1"}, {});
    EXPECT_TRUE(v.assignments.empty());
    EXPECT_TRUE(v.cancels.empty());
    EXPECT_FALSE(e.ready());
    EXPECT_TRUE(e.corrupt_history());
  }
};

TEST_F(CorruptHistoryTest, AStartRefusesABrokenChainOrServesItsSoundPrefixReadOnly) {
  uint64_t bad = WriteHistory();
  ASSERT_GT(bad, 0u);
  const uint64_t head = store_->Head().position;
  const size_t launched = backend_.Launched();
  TamperedStore tampered(store_.get(), bad);

  Engine refused(Options("a"), &tampered, &backend_, &clock_);
  Status st = refused.Start();
  EXPECT_EQ(st.code(), StatusCode::kCorruption) << st.ToString();
  EXPECT_EQ(st.message(), "event " + std::to_string(bad) + ": hash mismatch");
  HistoryCheck h = refused.history();
  EXPECT_EQ(h.state, HistoryCheck::State::kCorrupt);
  EXPECT_EQ(h.first_bad, bad);
  EXPECT_FALSE(refused.corrupt_history());  // it never served
  EXPECT_NE(refused.role(), Role::kLeader);

  EngineOptions o = Options("b");
  o.allow_corrupt_history = true;
  Engine e(o, &tampered, &backend_, &clock_);
  ASSERT_TRUE(e.Start().ok());
  EXPECT_EQ(e.role(), Role::kLeader);
  h = e.history();
  EXPECT_EQ(h.state, HistoryCheck::State::kCorrupt);
  EXPECT_EQ(h.method, "start");
  EXPECT_EQ(h.first_bad, bad);
  EXPECT_EQ(h.checked, bad - 1);
  Json hj = HistoryCheckToJson(h);
  EXPECT_EQ(hj["first_bad"], bad);
  EXPECT_EQ(hj["verified"], false);
  EXPECT_EQ(hj["read_only"], true);
  // The state is that of the events before the bad one: r0 and r1, not r2.
  EXPECT_EQ(HeadOf(e), bad - 1);
  Json runs = RunsJson(e);
  EXPECT_TRUE(runs.contains("r0"));
  EXPECT_TRUE(runs.contains("r1"));
  EXPECT_FALSE(runs.contains("r2"));
  EXPECT_EQ(e.epoch(), 1u) << "no epoch is claimed";
  ExpectRefused(e, bad);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // several ticks
  EXPECT_EQ(store_->Head().position, head) << "nothing was appended";
  EXPECT_EQ(backend_.Launched(), launched) << "no container was launched";
  e.Stop();
}

TEST_F(CorruptHistoryTest, ASnapshotStartVerifiesTheWholeChainInTheBackground) {
  uint64_t bad = WriteHistory(/*snapshot_every=*/1000);
  auto snap = store_->LatestSnapshot();
  ASSERT_TRUE(snap.ok() && snap->has_value());
  ASSERT_GT((*snap)->first, bad);

  {  // A sound chain: verified, and the leader keeps writing.
    Engine e(Options("a"), store_.get(), &backend_, &clock_);
    ASSERT_TRUE(e.Start().ok());
    EXPECT_EQ(e.LoadedFrom().first, (*snap)->first);
    ASSERT_TRUE(WaitFor([&] { return e.history().state != HistoryCheck::State::kVerifying; }));
    HistoryCheck h = e.history();
    EXPECT_EQ(h.state, HistoryCheck::State::kVerified);
    EXPECT_EQ(h.method, "background");
    EXPECT_GT(h.head_position, (*snap)->first);
    EXPECT_EQ(h.checked, h.head_position);
    EXPECT_FALSE(e.corrupt_history());
    Submit(e, "r4");
  }

  TamperedStore tampered(store_.get(), bad);
  Engine e(Options("b"), &tampered, &backend_, &clock_);
  ASSERT_TRUE(e.Start().ok()) << "the snapshot covers it: the start does not read it";
  ASSERT_TRUE(WaitFor([&] { return e.corrupt_history(); }));
  HistoryCheck h = e.history();
  EXPECT_EQ(h.state, HistoryCheck::State::kCorrupt);
  EXPECT_EQ(h.method, "background");
  EXPECT_EQ(h.first_bad, bad);
  EXPECT_EQ(tampered.verified_.load(), 1);
  EXPECT_EQ(e.role(), Role::kLeader);
  // The state stays what it loaded (snapshot + tail), r2 and r4 included.
  Json runs = RunsJson(e);
  EXPECT_TRUE(runs.contains("r2"));
  EXPECT_TRUE(runs.contains("r4"));
  const uint64_t head = store_->Head().position;
  ExpectRefused(e, bad);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // several ticks
  EXPECT_EQ(store_->Head().position, head) << "nothing more was appended";
  e.Stop();
}

// --- The read model (archive.h) ---

// Finished runs leave the state for the store's read model; what the API reads of them
// must not change: the same JSON as a state that keeps every run, after a restart from
// a snapshot, after the read model is deleted and rebuilt, and on a standby that
// follows and then leads.
class ReadModelTest : public HaEngineTest {
 protected:
  EngineOptions Archiving(const std::string& node) {
    EngineOptions o = Options(node);
    o.archive_runs = true;
    return o;
  }
  static void Report(Engine& e, const std::string& attempt, const std::string& state,
                     int exit_code = 0) {
    PollContainer p;
    p.container = "c1";
    p.reports = Reports(
        Json::array({Json{{"attempt_id", attempt}, {"state", state}, {"exit_code", exit_code}}}));
    auto r = e.Execute(p);
    ASSERT_TRUE(r.ok()) << attempt << ": " << r.status().ToString();
  }
  // Waits for the pool to launch c1 and registers it (4 CPUs, 8 GiB).
  void RegisterC1(Engine& e) {
    ASSERT_TRUE(WaitFor([&] { return backend_.Launched() >= 1; }));
    ASSERT_TRUE(e.Execute(RegisterContainer{
                              .container = "c1", .cpu_millis = 4000, .memory_bytes = 8LL << 30})
                    .ok());
  }
  // Starts an archiving leader "a" into *leader, with c1 registered and the workflow
  // `definition` (JSON) registered by "a".
  void StartLeader(std::unique_ptr<Engine>* leader, const std::string& definition) {
    *leader = std::make_unique<Engine>(Archiving("a"), store_.get(), &backend_, &clock_);
    ASSERT_TRUE((*leader)->Start().ok());
    ASSERT_NO_FATAL_FAILURE(RegisterC1(**leader));
    ASSERT_TRUE((*leader)->Execute(RegisterWorkflow{*ParseJson(definition), "a"}).ok());
  }
  // GET /v1/runs/{id}: the run's JSON, open or folded (null when there is none).
  static Json RunOf(const Engine& e, const std::string& id) {
    return e.ReadRun(id, [&](const State& s, const engine::Run* run) {
      return RunJson(s, e.options().config, run, nullptr);
    });
  }
  // r0 succeeded, r1 cancelled, r2 failed then retried and succeeded (folded twice),
  // r3 failed, r4 still running, r5 (workflow v, label team=b) succeeded.
  void WriteHistory(Engine& e) {
    ASSERT_NO_FATAL_FAILURE(RegisterC1(e));
    ASSERT_TRUE(e.Execute(RegisterWorkflow{*ParseJson(kDef), "a"}).ok());
    ASSERT_TRUE(
        e.Execute(RegisterWorkflow{
                      *ParseJson(R"({"name":"v","steps":[{"name":"a","command":["true"]}]})"), "a"})
            .ok());
    for (int i = 0; i < 5; ++i) {
      auto r = e.Execute(SubmitRun{.run_id = "r" + std::to_string(i),
                                   .workflow = "w",
                                   .labels = Json{{"team", i % 2 == 0 ? "a" : "b"}}});
      ASSERT_TRUE(r.ok()) << r.status().ToString();
    }
    ASSERT_TRUE(
        e.Execute(SubmitRun{.run_id = "r5", .workflow = "v", .labels = Json{{"team", "b"}}}).ok());
    Report(e, "r0/a/1", "succeeded");
    Report(e, "r0/b/1", "succeeded");
    ASSERT_TRUE(e.Execute(CancelRun{"r1", "bob"}).ok());
    Report(e, "r1/a/1", "cancelled");
    Report(e, "r2/a/1", "failed", 1);
    ASSERT_TRUE(e.Execute(RetryRun{"r2", "bob"}).ok());
    Report(e, "r2/a/2", "succeeded");
    Report(e, "r2/b/1", "succeeded");
    Report(e, "r3/a/1", "failed", 2);
    Report(e, "r5/a/1", "succeeded");
  }
  // What the API reads of runs: GET /v1/runs under each filter, in pages of 2 (cursor
  // to cursor), and GET /v1/runs/{id} of each run and of one that never was.
  static Json Reads(const Engine& e) {
    Json out = Json::object();
    std::vector<std::pair<std::string, RunQuery>> queries = {
        {"all", {}},
        {"succeeded", {.state = "succeeded"}},
        {"failed", {.state = "failed"}},
        {"running", {.state = "running"}},
        {"workflow w", {.workflow = "w"}},
        {"team b", {.labels = {{"team", "b"}}}},
        {"w and team a", {.workflow = "w", .labels = {{"team", "a"}}}},
    };
    for (auto& [name, q] : queries) {
      Json pages = Json::array();
      q.limit = 2;
      for (int i = 0; i < 10; ++i) {
        auto page = e.ListRuns(q);
        EXPECT_TRUE(page.ok()) << page.status().ToString();
        if (!page.ok()) break;
        pages.push_back(Json{{"items", page->items}, {"next", page->next_cursor}});
        if (page->next_cursor.is_null()) break;
        q.cursor = std::stoull(page->next_cursor.get<std::string>());
      }
      out["list " + name] = pages;
    }
    for (const char* id : {"r0", "r1", "r2", "r3", "r4", "r5", "r9"}) {
      out[std::string("get ") + id] = RunOf(e, id);
    }
    return out;
  }
  // The same reads from a standby that keeps every run in its state (no read model).
  Json ReferenceReads() {
    auto secondary = OpenSecondary();
    EXPECT_TRUE(secondary);
    if (!secondary) return Json();
    Engine plain(Options("plain"), secondary.get(), nullptr, &clock_);
    EXPECT_TRUE(plain.StartStandby().ok());
    EXPECT_EQ(plain.Read([](const State& s) { return s.runs.size(); }), 6u);
    Json reads = Reads(plain);
    plain.Stop();
    return reads;
  }
  static std::vector<std::string> OpenRuns(const Engine& e) {
    return e.Read([](const State& s) {
      std::vector<std::string> ids;
      for (const auto& [id, run] : s.runs) ids.push_back(id);
      return ids;
    });
  }
  static std::map<std::string, uint64_t> Archived(const Engine& e) {
    return e.Read([](const State& s) { return s.archived; });
  }
};

TEST_F(ReadModelTest, FinishedRunsLeaveTheStateAndReadTheSame) {
  auto leader = std::make_unique<Engine>(Archiving("a"), store_.get(), &backend_, &clock_);
  ASSERT_TRUE(leader->Start().ok());
  WriteHistory(*leader);
  ASSERT_FALSE(::testing::Test::HasFatalFailure());
  // Only the running run is left in the state; the others are counted by phase.
  EXPECT_EQ(OpenRuns(*leader), std::vector<std::string>{"r4"});
  const std::map<std::string, uint64_t> archived{{"cancelled", 1}, {"failed", 1}, {"succeeded", 3}};
  EXPECT_EQ(Archived(*leader), archived);
  Json expected = ReferenceReads();
  ASSERT_FALSE(expected.is_null());
  EXPECT_EQ(expected["get r9"], Json()) << "an unknown run reads as none";
  EXPECT_EQ(expected["list all"][0]["items"].size(), 2u);
  EXPECT_EQ(expected["list succeeded"].size(), 2u) << "3 succeeded runs in pages of 2";
  EXPECT_EQ(Reads(*leader), expected);

  // A restart from a snapshot: it holds the open run only, the rest is read back.
  ASSERT_TRUE(leader->WriteSnapshot().ok());
  leader->Stop();
  leader = std::make_unique<Engine>(Archiving("a"), store_.get(), &backend_, &clock_);
  ASSERT_TRUE(leader->Start().ok());
  EXPECT_GT(leader->LoadedFrom().first, 0u) << "started from the snapshot";
  EXPECT_EQ(OpenRuns(*leader), std::vector<std::string>{"r4"});
  EXPECT_EQ(Archived(*leader), archived);
  EXPECT_EQ(Reads(*leader), expected);

  // The read model's families deleted: the next start rebuilds them from the log.
  leader->Stop();
  leader.reset();
  ASSERT_TRUE(store_->ClearReadModel().ok());
  auto gone = store_->ScanReadModel(storage::ReadModelFamily::kIndex, "", "\xff", false, 10);
  ASSERT_TRUE(gone.ok());
  EXPECT_TRUE(gone->empty());
  leader = std::make_unique<Engine>(Archiving("a"), store_.get(), &backend_, &clock_);
  ASSERT_TRUE(leader->Start().ok());
  EXPECT_EQ(leader->LoadedFrom().first, 0u) << "a rebuild replays the whole log";
  EXPECT_EQ(OpenRuns(*leader), std::vector<std::string>{"r4"});
  EXPECT_EQ(Archived(*leader), archived);
  EXPECT_EQ(Reads(*leader), expected);
  // A run that comes back (a retry of the failed r3) leaves the read model's lists and
  // is read from the state; its record as it was stays in the store (the audit).
  ASSERT_TRUE(leader->Execute(RetryRun{"r3", "bob"}).ok());
  EXPECT_EQ(OpenRuns(*leader), (std::vector<std::string>{"r3", "r4"}));
  auto failed = leader->ListRuns({.state = "failed"});
  ASSERT_TRUE(failed.ok());
  EXPECT_TRUE(failed->items.empty()) << failed->items.dump();
  Json r3 = RunOf(*leader, "r3");
  EXPECT_EQ(r3["state"], "running") << r3.dump();
  leader->Stop();
}

// A gang's attempt ends when its first worker reports (here: cancelled); the other
// worker is still being stopped and holds its room. The run is over but must stay in
// the state until that worker reports, or its report would find no run, be acked and
// dropped, and the container's room would stay taken for ever (a retry never placed).
TEST_F(ReadModelTest, ACancelledGangStaysUntilItsLastWorkerReports) {
  std::unique_ptr<Engine> leader;
  ASSERT_NO_FATAL_FAILURE(StartLeader(
      &leader, R"({"name":"g","steps":[{"name":"t","workers":2,"command":["true"]}]})"));
  ASSERT_TRUE(leader->Execute(SubmitRun{.run_id = "g1", .workflow = "g"}).ok());
  auto used = [&] {
    return leader->Read([](const State& s) { return s.containers.at("c1").used_cpu; });
  };
  ASSERT_GT(used(), 0);
  PollContainer started;
  started.container = "c1";
  started.running = {"g1/t/1/0", "g1/t/1/1"};  // both workers run
  ASSERT_TRUE(leader->Execute(started).ok());
  ASSERT_TRUE(leader->Execute(CancelRun{"g1", "bob"}).ok());
  Report(*leader, "g1/t/1/1", "cancelled", 143);
  Json run = RunOf(*leader, "g1");
  EXPECT_EQ(run["state"], "cancelled") << run.dump();
  EXPECT_EQ(OpenRuns(*leader), std::vector<std::string>{"g1"}) << "worker 0 is still stopping";
  EXPECT_GT(used(), 0);
  Report(*leader, "g1/t/1/0", "cancelled", 143);
  EXPECT_EQ(used(), 0) << "worker 0's room is given back";
  EXPECT_TRUE(OpenRuns(*leader).empty()) << "folded once nothing of it runs";
  run = RunOf(*leader, "g1");
  EXPECT_EQ(run["steps"][0]["attempts"][0]["workers"][0]["state"], "cancelled") << run.dump();
  leader->Stop();
}

// A run's Idempotency-Key stays in the state while it is open only; once folded it is
// found in the read model, so a repeat still answers the first run, across a restart
// from a snapshot and a rebuild of the read model, and memory does not grow with keys.
TEST_F(ReadModelTest, IdempotencyKeysOfFoldedRunsAreFoundInTheReadModel) {
  std::unique_ptr<Engine> leader;
  ASSERT_NO_FATAL_FAILURE(
      StartLeader(&leader, R"({"name":"v","steps":[{"name":"a","command":["true"]}]})"));
  auto submit = [&](Engine& e, const std::string& id, const std::string& digest) {
    return e.Execute(SubmitRun{
        .run_id = id, .workflow = "v", .idempotency_key = "key-1", .request_digest = digest});
  };
  auto first = submit(*leader, "i1", "d1");
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  EXPECT_TRUE(first->created);
  Report(*leader, "i1/a/1", "succeeded");
  auto keys = [](const Engine& e) { return e.Read([](const State& s) { return s.idempotency; }); };
  EXPECT_TRUE(keys(*leader).empty()) << "i1 is folded: its key left the state";
  auto check = [&](Engine& e) {
    auto again = submit(e, "i2", "d1");
    ASSERT_TRUE(again.ok()) << again.status().ToString();
    EXPECT_EQ(again->id, "i1");
    EXPECT_FALSE(again->created);
    auto other = submit(e, "i3", "d2");
    ASSERT_FALSE(other.ok());
    EXPECT_EQ(other.status().code(), StatusCode::kInvalidArgument) << other.status().ToString();
    EXPECT_TRUE(e.Read([](const State& s) { return s.runs.empty(); })) << "nothing submitted";
  };
  check(*leader);
  ASSERT_TRUE(leader->WriteSnapshot().ok());
  leader->Stop();
  leader = std::make_unique<Engine>(Archiving("a"), store_.get(), &backend_, &clock_);
  ASSERT_TRUE(leader->Start().ok());
  check(*leader);
  leader->Stop();
  leader.reset();
  ASSERT_TRUE(store_->ClearReadModel().ok());
  leader = std::make_unique<Engine>(Archiving("a"), store_.get(), &backend_, &clock_);
  ASSERT_TRUE(leader->Start().ok());
  EXPECT_TRUE(keys(*leader).empty());
  check(*leader);
  leader->Stop();
}

// Data set and model versions leave the state for the read model as runs do: State
// keeps a count per name, and the lineage reads the same as a state that keeps every
// version, after a restart from a snapshot and after the read model is rebuilt; a
// version a later run registers again (the same digest) or validates is changed in
// the read model, and retention still finds what keeps a folder.
TEST_F(ReadModelTest, DataSetAndModelVersionsLiveInTheReadModelAndReadTheSame) {
  std::unique_ptr<Engine> leader;
  ASSERT_NO_FATAL_FAILURE(StartLeader(&leader, R"({"name":"l","steps":[
      {"name":"prep","kind":"data_prep","outputs":["rows"],"dataset":{"name":"rows"},
       "command":["true"]},
      {"name":"train","kind":"train","after":["prep"],"outputs":["model"],
       "model":{"name":"mlp"},"command":["true"]},
      {"name":"validate","kind":"validate","after":["train"],"command":["true"]}]})"));
  auto report = [&](const std::string& attempt, const std::string& out, const std::string& sha,
                    Json metrics = Json::object()) {
    PollContainer p;
    p.container = "c1";
    Json r{{"attempt_id", attempt}, {"state", "succeeded"}, {"exit_code", 0}, {"metrics", metrics}};
    if (!out.empty()) {
      r["outputs"] = Json::array({Json{{"name", out}, {"size", 3}, {"sha256", sha}}});
    }
    p.reports = Reports(Json::array({r}));
    auto done = leader->Execute(p);
    ASSERT_TRUE(done.ok()) << attempt << ": " << done.status().ToString();
  };
  // l1: rows A (v1), mlp M1 (v1) validated 0.8; l2: rows A again (still v1), mlp M2
  // (v2) validated 0.9; l3: rows B (v2), mlp M1 again (v1, validated again: 0.85);
  // l4: rows C (v3), still running.
  struct Plan {
    std::string rows, model;
    double accuracy;
  };
  std::vector<Plan> plans = {{"A", "M1", 0.8}, {"A", "M2", 0.9}, {"B", "M1", 0.85}};
  for (size_t i = 0; i < plans.size(); ++i) {
    std::string id = "l" + std::to_string(i + 1);
    ASSERT_TRUE(leader->Execute(SubmitRun{.run_id = id, .workflow = "l"}).ok());
    ASSERT_NO_FATAL_FAILURE(report(id + "/prep/1", "rows", plans[i].rows));
    ASSERT_NO_FATAL_FAILURE(report(id + "/train/1", "model", plans[i].model));
    ASSERT_NO_FATAL_FAILURE(
        report(id + "/validate/1", "", "", Json{{"accuracy", plans[i].accuracy}}));
    ASSERT_EQ(RunOf(*leader, id)["state"], "succeeded") << RunOf(*leader, id).dump();
  }
  ASSERT_TRUE(leader->Execute(SubmitRun{.run_id = "l4", .workflow = "l"}).ok());
  ASSERT_NO_FATAL_FAILURE(report("l4/prep/1", "rows", "C"));

  // State keeps a count per name and no version.
  auto counts = [](const Engine& e) {
    return e.Read([](const State& s) {
      std::map<std::string, std::pair<int, size_t>> out;
      for (const auto& [k, a] : s.datasets) out["dataset " + k] = {a.count, a.versions.size()};
      for (const auto& [k, a] : s.models) out["model " + k] = {a.count, a.versions.size()};
      return out;
    });
  };
  const std::map<std::string, std::pair<int, size_t>> expected_counts = {
      {"dataset default/rows", {3, 0}}, {"model default/mlp", {2, 0}}};
  EXPECT_EQ(counts(*leader), expected_counts);

  // What the API reads: the lists, every version of each name, and single versions.
  auto reads = [](const Engine& e) {
    return e.Read([&](const State& s) {
      Json out = Json::object();
      for (bool model : {false, true}) {
        auto list = ListArtifacts(s, model, nullptr, "", e.archive());
        out[model ? "models" : "datasets"] = list.ok() ? *list : Json(list.status().ToString());
        for (int v = 0; v <= 4; ++v) {
          auto found = FindArtifact(s, model, model ? "mlp" : "rows", v, "", "default", nullptr,
                                    e.archive());
          out[(model ? "mlp v" : "rows v") + std::to_string(v)] =
              found.ok() ? found->item : Json(found.status().ToString());
        }
      }
      return out;
    });
  };
  Json expected = [&] {
    auto secondary = OpenSecondary();
    EXPECT_TRUE(secondary);
    if (!secondary) return Json();
    Engine plain(Options("plain"), secondary.get(), nullptr, &clock_);
    EXPECT_TRUE(plain.StartStandby().ok());
    EXPECT_EQ(plain.Read([](const State& s) { return s.models.at("default/mlp").versions.size(); }),
              2u);
    Json r = reads(plain);
    plain.Stop();
    return r;
  }();
  ASSERT_FALSE(expected.is_null());
  const Json& mlp = expected["mlp v0"]["versions"];
  ASSERT_EQ(mlp.size(), 2u) << expected.dump();
  EXPECT_EQ(mlp[0]["run"], "l1");
  EXPECT_EQ(mlp[0]["metrics"]["accuracy"], 0.85) << "l3 validated v1 again";
  EXPECT_EQ(mlp[0]["validated_by"].size(), 2u);
  EXPECT_EQ(mlp[1]["run"], "l2");
  EXPECT_EQ(mlp[1]["datasets"], Json::parse(R"([{"name":"rows","step":"prep","version":1}])"));
  EXPECT_EQ(expected["rows v0"]["versions"].size(), 3u);
  EXPECT_EQ(expected["rows v3"]["run"], "l4");
  EXPECT_TRUE(expected["rows v4"].is_null());
  EXPECT_EQ(expected["models"][0]["versions"], 2);
  EXPECT_EQ(reads(*leader), expected);
  // An archiving standby that follows the leader reads the same from the records the
  // leader wrote with the events.
  {
    auto secondary = OpenSecondary();
    ASSERT_TRUE(secondary);
    Engine standby(Archiving("b"), secondary.get(), &backend_, &clock_);
    ASSERT_TRUE(standby.StartStandby().ok());
    ASSERT_TRUE(secondary->CatchUp().ok());
    ASSERT_TRUE(standby.Follow().ok());
    EXPECT_EQ(counts(standby), expected_counts);
    EXPECT_EQ(reads(standby), expected);
    standby.Stop();
  }

  // Retention asks the read model what keeps a folder.
  auto kept = [&](const Engine& e, const std::string& run, const std::string& step) {
    return e.Read([&](const State& s) {
      engine::Run r;
      r.id = run;
      return OutputsKeptBecause(s, e.options().config, r, step, 1, e.archive());
    });
  };
  EXPECT_EQ(kept(*leader, "l1", "train"), "model mlp v1");
  EXPECT_EQ(kept(*leader, "l3", "prep"), "data set rows v2");
  EXPECT_EQ(kept(*leader, "l3", "train"), "") << "l3's model is l1's v1: l1's folder holds it";

  // A restart from a snapshot, and a rebuild of the read model, read the same.
  ASSERT_TRUE(leader->WriteSnapshot().ok());
  leader->Stop();
  leader = std::make_unique<Engine>(Archiving("a"), store_.get(), &backend_, &clock_);
  ASSERT_TRUE(leader->Start().ok());
  EXPECT_GT(leader->LoadedFrom().first, 0u);
  EXPECT_EQ(counts(*leader), expected_counts);
  EXPECT_EQ(reads(*leader), expected);
  leader->Stop();
  leader.reset();
  ASSERT_TRUE(store_->ClearReadModel().ok());
  leader = std::make_unique<Engine>(Archiving("a"), store_.get(), &backend_, &clock_);
  ASSERT_TRUE(leader->Start().ok());
  EXPECT_EQ(leader->LoadedFrom().first, 0u) << "a rebuild replays the whole log";
  EXPECT_EQ(counts(*leader), expected_counts);
  EXPECT_EQ(reads(*leader), expected);
  EXPECT_EQ(kept(*leader, "l1", "train"), "model mlp v1");

  // l4 goes on after the rebuild: its model M2 is v2 again (the digest index), and
  // its validation changes v2 in the read model.
  ASSERT_NO_FATAL_FAILURE(report("l4/train/1", "model", "M2"));
  ASSERT_NO_FATAL_FAILURE(report("l4/validate/1", "", "", Json{{"accuracy", 0.95}}));
  Json after = reads(*leader);
  EXPECT_EQ(after["models"][0]["versions"], 2);
  EXPECT_EQ(after["mlp v2"]["metrics"]["accuracy"], 0.95);
  EXPECT_EQ(after["mlp v2"]["validated_by"].size(), 2u);
  EXPECT_EQ(counts(*leader).at("model default/mlp"), (std::pair<int, size_t>{2, 0}));
  leader->Stop();
}

TEST(RecordingArchiveTest, AKeyFoldedInThisGroupIsFoundBeforeItIsWritten) {
  char tmpl[] = "/tmp/epoch-archive-test.XXXXXX";
  std::string dir = mkdtemp(tmpl);
  {
    auto store = storage::OpenRocksDbEventStore({dir + "/store", true});
    ASSERT_TRUE(store.ok()) << store.status().ToString();
    RecordingArchive archive(store->get());
    engine::Run run;
    run.id = "r1";
    run.tenant = "t";
    run.idempotency_key = "k";
    run.phase = RunPhase::kSucceeded;
    auto none = archive.FindIdempotent("t", "k");
    ASSERT_TRUE(none.ok());
    EXPECT_FALSE(*none);
    ASSERT_TRUE(archive.Folded(run, 7).ok());
    auto found = archive.FindIdempotent("t", "k");
    ASSERT_TRUE(found.ok());
    EXPECT_EQ(*found, std::optional<std::string>("r1")) << "pending, not in the store yet";
    EXPECT_FALSE(*archive.FindIdempotent("u", "k")) << "another tenant's key";
    ASSERT_TRUE(archive.Unfolded(run, 8).ok());
    EXPECT_FALSE(*archive.FindIdempotent("t", "k")) << "unfolded: the key is the state's again";
  }
  std::filesystem::remove_all(dir);
}

TEST_F(ReadModelTest, AStandbyReadsFoldedRunsAndLeadsWithThem) {
  std::unique_ptr<Engine> leader;
  ASSERT_NO_FATAL_FAILURE(StartLeader(&leader, kDef));
  Submit(*leader, "s0");
  auto secondary = OpenSecondary();
  ASSERT_TRUE(secondary);
  Engine standby(Archiving("b"), secondary.get(), &backend_, &clock_);
  ASSERT_TRUE(standby.StartStandby().ok());
  // s0 ends while the standby follows: the leader folds it, and so does the standby,
  // reading the record the leader wrote with the events.
  Report(*leader, "s0/a/1", "succeeded");
  Report(*leader, "s0/b/1", "succeeded");
  Submit(*leader, "s1");
  ASSERT_TRUE(secondary->CatchUp().ok());
  ASSERT_TRUE(standby.Follow().ok());
  EXPECT_EQ(OpenRuns(standby), std::vector<std::string>{"s1"});
  Json s0 = RunOf(*leader, "s0");
  EXPECT_EQ(s0["state"], "succeeded");
  EXPECT_EQ(RunOf(standby, "s0"), s0);
  // A run the leader folded after what the standby applied is not shown as folded:
  // the standby lists s1 open, once.
  Report(*leader, "s1/a/1", "succeeded");
  Report(*leader, "s1/b/1", "succeeded");
  auto listed = standby.ListRuns({});
  ASSERT_TRUE(listed.ok());
  ASSERT_EQ(listed->items.size(), 2u) << listed->items.dump();
  EXPECT_EQ(listed->items[0]["id"], "s1");
  EXPECT_EQ(listed->items[0]["state"], "queued");
  // The leader goes; the standby leads with both runs folded.
  leader->Stop();
  leader.reset();
  store_.reset();
  ASSERT_TRUE(secondary->Promote().ok());
  ASSERT_TRUE(standby.Promote().ok());
  EXPECT_TRUE(OpenRuns(standby).empty());
  EXPECT_EQ(RunOf(standby, "s1")["state"], "succeeded");
  auto all = standby.ListRuns({});
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->items.size(), 2u);
  EXPECT_EQ(all->items[1], s0);
  standby.Stop();
}

}  // namespace
}  // namespace epoch::engine
