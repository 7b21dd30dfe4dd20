// Pure tests of decide/evolve through the Processor: no store, no threads.
#include <gtest/gtest.h>

#include "engine/decider.h"
#include "engine/engine.h"
#include "engine/processor.h"

namespace epoch::engine {
namespace {

constexpr const char* kLifecycle = R"({
  "name": "life",
  "params": {"threshold": 0.5},
  "steps": [
    {"name": "prep", "kind": "data_prep", "command": ["sh", "-c", "echo prep"]},
    {"name": "train", "kind": "train", "after": ["prep"], "command": ["train", "{{params.threshold}}"],
     "retry": {"limit": 2, "backoff": "exponential", "initial": "2s", "max": "1m"}},
    {"name": "validate", "kind": "validate", "after": ["train"], "command": ["validate"]},
    {"name": "infer", "kind": "infer", "after": ["validate"], "command": ["infer"],
     "when": "steps.validate.metrics.accuracy >= params.threshold"}
  ]})";

class DeciderTest : public ::testing::Test {
 protected:
  DeciderTest() {
    cfg_.data_dir = "/data";
    cfg_.max_replicas = 1;
    cfg_.container_cpu_millis = 4000;
    cfg_.container_memory_bytes = 8LL << 30;
  }

  // Runs a command (and optionally a tick) at the current time; returns the events.
  std::vector<RecordedEvent> Do(const Command& c, Status* status = nullptr) {
    Processor p(&state_, DecideContext{now_, &cfg_}, 1);
    auto r = p.Apply(c);
    if (status) *status = r.ok() ? Status::Ok() : r.status();
    if (r.ok()) last_ = *r;
    p.Settle();
    all_.insert(all_.end(), p.recorded().begin(), p.recorded().end());
    return p.recorded();
  }
  std::vector<RecordedEvent> DoTick(std::vector<std::string> expired = {}) {
    Processor p(&state_, DecideContext{now_, &cfg_}, 1);
    p.Record(OnTick(state_, Tick{expired}, DecideContext{now_, &cfg_}));
    p.Settle();
    all_.insert(all_.end(), p.recorded().begin(), p.recorded().end());
    return p.recorded();
  }
  static std::vector<std::string> Types(const std::vector<RecordedEvent>& evs) {
    std::vector<std::string> t;
    for (const auto& e : evs) t.push_back(e.type);
    return t;
  }
  void StartContainer() {
    DoTick();  // requests c1
    ASSERT_EQ(state_.containers.count("c1"), 1u);
    RegisterContainer reg;
    reg.container = "c1";
    reg.cpu_millis = 4000;
    reg.memory_bytes = 8LL << 30;
    Status st;
    Do(reg, &st);
    ASSERT_TRUE(st.ok()) << st.ToString();
  }
  std::string Submit(const char* def = kLifecycle, Json params = Json::object()) {
    Status st;
    Do(RegisterWorkflow{*ParseJson(def)}, &st);
    EXPECT_TRUE(st.ok()) << st.ToString();
    SubmitRun s;
    s.run_id = "r" + std::to_string(++runs_);
    s.workflow = (*ParseJson(def))["name"];
    s.params = params;
    Do(s, &st);
    EXPECT_TRUE(st.ok()) << st.ToString();
    return s.run_id;
  }
  std::vector<RecordedEvent> Report(const std::string& attempt, const std::string& st,
                                    Json metrics = Json::object(), int exit_code = 0) {
    PollContainer p;
    p.container = "c1";
    p.reports = Json::array({Json{{"attempt_id", attempt},
                                  {"state", st},
                                  {"exit_code", exit_code},
                                  {"metrics", metrics},
                                  {"usage", Json{{"wall_s", 1.0}}}}});
    Status s;
    auto evs = Do(p, &s);
    EXPECT_TRUE(s.ok()) << s.ToString();
    return evs;
  }
  const engine::Run& R(const std::string& id) { return *state_.FindRun(id); }

  EngineConfig cfg_;
  State state_;
  TimePoint now_ = FromMicros(1'800'000'000'000'000);
  CommandResult last_;
  std::vector<RecordedEvent> all_;  // every event recorded so far, in order
  int runs_ = 0;
};

TEST_F(DeciderTest, HappyPathRunsStepsInOrderAndGatesInferOnMetric) {
  StartContainer();
  std::string run = Submit();
  const engine::Run& r = R(run);
  EXPECT_EQ(r.steps[0].phase, StepPhase::kQueued);
  // Placed at once on the registered container.
  ASSERT_EQ(r.steps[0].attempts.size(), 1u);
  EXPECT_EQ(r.steps[0].attempts[0].phase, AttemptPhase::kAssigned);
  EXPECT_EQ(r.steps[0].attempts[0].container, "c1");
  EXPECT_EQ(r.steps[1].phase, StepPhase::kPending);

  auto evs = Report(run + "/prep/1", "succeeded");
  EXPECT_EQ(Types(evs), (std::vector<std::string>{"JobStarted", "JobSucceeded", "StepReady",
                                                  "JobQueued", "JobAssigned"}));
  // The command was templated with the param's default.
  EXPECT_EQ(R(run).steps[1].attempts[0].argv, Json::array({"train", "0.5"}));
  Report(run + "/train/1", "succeeded");
  Report(run + "/validate/1", "succeeded", Json{{"accuracy", 0.9}});
  EXPECT_EQ(R(run).steps[3].phase, StepPhase::kQueued);
  evs = Report(run + "/infer/1", "succeeded");
  EXPECT_EQ(Types(evs).back(), "RunSucceeded");
  EXPECT_EQ(R(run).phase, RunPhase::kSucceeded);
  EXPECT_TRUE(state_.containers["c1"].attempts.empty());
  EXPECT_EQ(state_.containers["c1"].used_cpu, 0);
}

TEST_F(DeciderTest, FalseWhenSkipsStep) {
  StartContainer();
  std::string run = Submit();
  Report(run + "/prep/1", "succeeded");
  Report(run + "/train/1", "succeeded");
  auto evs = Report(run + "/validate/1", "succeeded", Json{{"accuracy", 0.2}});
  std::vector<std::string> want{"JobStarted", "JobSucceeded", "StepSkipped", "RunSucceeded"};
  EXPECT_EQ(Types(evs), want);
  EXPECT_EQ(R(run).steps[3].phase, StepPhase::kSkipped);
  EXPECT_NE(R(run).steps[3].reason.find("is false"), std::string::npos);
}

TEST_F(DeciderTest, SkipIsTransitive) {
  StartContainer();
  std::string run = Submit(R"({"name":"gate","params":{"go":"no"},"steps":[
      {"name":"a","command":["a"],"when":"params.go == 'yes'"},
      {"name":"b","after":["a"],"command":["b"]},
      {"name":"c","after":["b"],"command":["c"]}]})");
  const engine::Run& r = R(run);
  EXPECT_EQ(r.steps[0].phase, StepPhase::kSkipped);
  EXPECT_EQ(r.steps[1].phase, StepPhase::kSkipped);
  EXPECT_EQ(r.steps[2].phase, StepPhase::kSkipped);
  EXPECT_EQ(r.steps[2].reason, "upstream step 'b' was skipped");
  EXPECT_EQ(r.phase, RunPhase::kSucceeded);
}

TEST_F(DeciderTest, FailedAttemptRetriesWithExponentialBackoffThenFailsRun) {
  StartContainer();
  std::string run = Submit();
  Report(run + "/prep/1", "succeeded");
  auto evs = Report(run + "/train/1", "failed", Json::object(), 3);
  ASSERT_EQ(Types(evs).back(), "JobRetryScheduled");
  EXPECT_EQ(evs.back().data["not_before"], FormatTime(now_ + std::chrono::seconds(2)));
  // Not yet due.
  now_ += std::chrono::seconds(1);
  EXPECT_TRUE(Types(DoTick()).empty());
  now_ += std::chrono::seconds(1);
  evs = DoTick();
  EXPECT_EQ(Types(evs), (std::vector<std::string>{"JobQueued", "JobAssigned"}));
  EXPECT_EQ(evs[0].data["attempt"], 2);
  evs = Report(run + "/train/2", "failed", Json::object(), 1);
  EXPECT_EQ(evs.back().data["not_before"], FormatTime(now_ + std::chrono::seconds(4)));
  now_ += std::chrono::seconds(4);
  DoTick();
  evs = Report(run + "/train/3", "failed", Json::object(), 1);
  EXPECT_EQ(Types(evs).back(), "RunFailed");
  EXPECT_EQ(R(run).phase, RunPhase::kFailed);
  EXPECT_EQ(R(run).failed_step, "train");
  EXPECT_NE(R(run).reason.find("after 3 attempt(s)"), std::string::npos);
  EXPECT_EQ(R(run).steps[1].attempts.size(), 3u);
  EXPECT_EQ(R(run).steps[2].phase, StepPhase::kCancelled);
}

TEST_F(DeciderTest, RetryRunReRunsOnlyStepsThatDidNotSucceed) {
  StartContainer();
  std::string run = Submit(R"({"name":"two","steps":[
      {"name":"a","command":["a"]},{"name":"b","after":["a"],"command":["b"]}]})");
  Report(run + "/a/1", "succeeded", Json{{"x", 1}});
  Report(run + "/b/1", "failed", Json::object(), 2);
  ASSERT_EQ(R(run).phase, RunPhase::kFailed);
  Status st;
  auto evs = Do(RetryRun{run, "alice"}, &st);
  ASSERT_TRUE(st.ok()) << st.ToString();
  EXPECT_EQ(evs[0].type, "RunRetryRequested");
  EXPECT_EQ(evs[0].data["steps"], Json::array({"b"}));
  EXPECT_EQ(R(run).steps[0].attempts.size(), 1u);  // a kept
  EXPECT_EQ(R(run).steps[0].metrics["x"], 1);
  ASSERT_EQ(R(run).steps[1].attempts.size(), 2u);
  EXPECT_EQ(R(run).steps[1].attempts[1].phase, AttemptPhase::kAssigned);
  Report(run + "/b/2", "succeeded");
  EXPECT_EQ(R(run).phase, RunPhase::kSucceeded);
  // A succeeded run cannot be retried or cancelled.
  Do(RetryRun{run, "alice"}, &st);
  EXPECT_EQ(st.code(), StatusCode::kConflict);
  Do(CancelRun{run, "alice"}, &st);
  EXPECT_EQ(st.code(), StatusCode::kConflict);
}

TEST_F(DeciderTest, CancelEndsQueuedWorkAndWaitsForRunningAttempts) {
  StartContainer();
  std::string run = Submit(R"({"name":"par","steps":[
      {"name":"a","command":["a"],"resources":{"cpu":"3"}},
      {"name":"b","command":["b"],"resources":{"cpu":"3"}}]})");
  // a fits, b waits in the queue (4 CPUs in the container).
  EXPECT_EQ(R(run).steps[0].attempts[0].phase, AttemptPhase::kAssigned);
  EXPECT_EQ(R(run).steps[1].attempts[0].phase, AttemptPhase::kQueued);
  PollContainer p;
  p.container = "c1";
  p.running = {run + "/a/1"};
  Do(p);
  EXPECT_EQ(R(run).steps[0].attempts[0].phase, AttemptPhase::kRunning);
  auto evs = Do(CancelRun{run, "bob"});
  EXPECT_EQ(Types(evs), (std::vector<std::string>{"RunCancelRequested", "JobCancelled"}));
  EXPECT_EQ(R(run).phase, RunPhase::kRunning);
  evs = Report(run + "/a/1", "cancelled");
  EXPECT_EQ(Types(evs).back(), "RunCancelled");
  EXPECT_EQ(R(run).phase, RunPhase::kCancelled);
}

TEST_F(DeciderTest, LostContainerFailsItsAttemptsWhichRetry) {
  StartContainer();
  std::string run = Submit();
  auto evs = DoTick({"c1"});
  std::vector<std::string> types = Types(evs);
  ASSERT_GE(types.size(), 3u);
  EXPECT_EQ(types[0], "ContainerLost");
  EXPECT_EQ(types[1], "JobFailed");
  EXPECT_EQ(evs[1].data["reason"], "container_lost");
  EXPECT_EQ(R(run).steps[0].attempts[0].phase, AttemptPhase::kLost);
  // The pool asks for a replacement in the same tick.
  EXPECT_EQ(state_.containers.count("c2"), 1u);
  EXPECT_EQ(state_.containers["c1"].phase, ContainerPhase::kLost);
  // A lost container's agent is refused.
  PollContainer p;
  p.container = "c1";
  Status st;
  Do(p, &st);
  EXPECT_EQ(st.code(), StatusCode::kFailedPrecondition);
}

TEST_F(DeciderTest, DuplicateReportsAreNoOps) {
  StartContainer();
  std::string run = Submit();
  Report(run + "/prep/1", "succeeded");
  auto evs = Report(run + "/prep/1", "succeeded");
  EXPECT_TRUE(evs.empty());
  EXPECT_EQ(last_.ack, std::vector<std::string>{run + "/prep/1"});
}

TEST_F(DeciderTest, RejectsBadCommandsWithoutEvents) {
  Status st;
  EXPECT_TRUE(Do(SubmitRun{.run_id = "x", .workflow = "nope"}, &st).empty());
  EXPECT_EQ(st.code(), StatusCode::kNotFound);
  EXPECT_TRUE(Do(CancelRun{"nope", "a"}, &st).empty());
  EXPECT_EQ(st.code(), StatusCode::kNotFound);
  EXPECT_TRUE(Do(RegisterWorkflow{*ParseJson(R"({"name":"x","steps":[]})")}, &st).empty() ||
              !st.ok());
  Do(RegisterWorkflow{*ParseJson(kLifecycle)}, &st);
  ASSERT_TRUE(st.ok());
  SubmitRun s{.run_id = "r9", .workflow = "life"};
  s.params = Json{{"nope", 1}};
  EXPECT_TRUE(Do(s, &st).empty());
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
}

TEST_F(DeciderTest, SameDefinitionIsSameVersionAndChangedIsNext) {
  Status st;
  Do(RegisterWorkflow{*ParseJson(kLifecycle)}, &st);
  EXPECT_EQ(last_.version, 1);
  EXPECT_TRUE(last_.created);
  auto evs = Do(RegisterWorkflow{*ParseJson(kLifecycle)}, &st);
  EXPECT_TRUE(evs.empty());
  EXPECT_EQ(last_.version, 1);
  EXPECT_FALSE(last_.created);
  Json changed = *ParseJson(kLifecycle);
  changed["params"]["threshold"] = 0.7;
  Do(RegisterWorkflow{changed}, &st);
  EXPECT_EQ(last_.version, 2);
  EXPECT_NE(state_.FindWorkflow("life", 2)->digest, state_.FindWorkflow("life", 1)->digest);
}

TEST_F(DeciderTest, IdempotencyKeyReturnsTheFirstRun) {
  Status st;
  Do(RegisterWorkflow{*ParseJson(kLifecycle)}, &st);
  SubmitRun s{.run_id = "r-a", .workflow = "life"};
  s.idempotency_key = "k1";
  Do(s, &st);
  s.run_id = "r-b";
  EXPECT_TRUE(Do(s, &st).empty());
  EXPECT_EQ(last_.id, "r-a");
  EXPECT_FALSE(last_.created);
  EXPECT_EQ(state_.runs.size(), 1u);
}

TEST_F(DeciderTest, ReplayOfRecordedEventsGivesTheSameState) {
  StartContainer();
  std::string run = Submit();
  Report(run + "/prep/1", "succeeded");
  Report(run + "/train/1", "failed", Json::object(), 1);
  now_ += std::chrono::seconds(3);
  DoTick();
  State replay;
  for (const auto& e : all_) Evolve(replay, e);
  EXPECT_EQ(replay.head, all_.size());
  EXPECT_EQ(StateDigestJson(replay), StateDigestJson(state_));
  EXPECT_EQ(R(run).steps[1].attempts.size(), 2u);
}

}  // namespace
}  // namespace epoch::engine

namespace epoch::engine {
namespace {

TEST(PoolTest, LaunchFailuresBackOffExponentially) {
  EngineConfig cfg;
  cfg.max_replicas = 1;
  State s;
  TimePoint now = FromMicros(1'800'000'000'000'000);
  auto tick = [&] {
    Processor p(&s, DecideContext{now, &cfg}, 1);
    p.Record(OnTick(s, Tick{}, DecideContext{now, &cfg}));
    return p.recorded().size();
  };
  auto fail = [&](const std::string& id) {
    Processor p(&s, DecideContext{now, &cfg}, 1);
    auto r = p.Apply(ContainerLaunchResult{id, false, "", "no such file"});
    ASSERT_TRUE(r.ok());
  };
  EXPECT_EQ(tick(), 1u);  // c1 requested
  fail("c1");
  EXPECT_EQ(s.containers["c1"].reason, "launch failed: no such file");
  EXPECT_EQ(tick(), 0u);  // backing off 1 s
  now += std::chrono::seconds(1);
  EXPECT_EQ(tick(), 1u);  // c2
  fail("c2");
  now += std::chrono::seconds(1);
  EXPECT_EQ(tick(), 0u);  // 2 s now
  now += std::chrono::seconds(1);
  EXPECT_EQ(tick(), 1u);  // c3
  EXPECT_EQ(s.container_counter, 3u);
}

}  // namespace
}  // namespace epoch::engine
