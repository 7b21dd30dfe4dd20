// The engine with a real RocksDB store in a temp dir and a recording backend.
#include "engine/engine.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <mutex>
#include <thread>

namespace epoch::engine {
namespace {

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
    return ContainerDescription{ContainerDescription::State::kRunning, "ok"};
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
  Json RunsJson() {
    return engine_->Read([&](const State& s) {
      Json j = Json::object();
      for (const auto& [id, r] : s.runs) j[id] = RunToJson(r, engine_->options().config);
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
  p.reports = Json::array({Json{{"attempt_id", "r0/a/1"}, {"state", "succeeded"}, {"exit_code", 0}}});
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

}  // namespace
}  // namespace epoch::engine
