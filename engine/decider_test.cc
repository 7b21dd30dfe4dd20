// Pure tests of decide/evolve through the Processor: no store, no threads. Workflows,
// submissions and the run lifecycle: advance, when, retries, cancel, rerun, idempotency,
// replay. The other concepts have their own files (decider_test_util.h lists them).
#include <gtest/gtest.h>

#include "engine/decider_test_util.h"
#include "engine/snapshot.h"

namespace epoch::engine {
namespace {

using test_util::DeciderTest;
using test_util::kLifecycle;
using test_util::TenantTest;

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
  for (const auto& e : all_) ASSERT_TRUE(Evolve(replay, e).ok()) << e.type << " at " << e.position;
  EXPECT_EQ(replay.head, all_.size());
  EXPECT_EQ(StateDigestJson(replay), StateDigestJson(state_));
  EXPECT_EQ(R(run).steps[1].attempts.size(), 2u);
}

TEST_F(TenantTest, TheSameIdempotencyKeyWithAnotherRequestIsRefused) {
  Status st;
  Do(RegisterWorkflow{*ParseJson(kLifecycle)}, &st);
  SubmitRun s;
  s.run_id = "k1";
  s.workflow = "life";
  s.idempotency_key = "key";
  s.request_digest = "digest-1";
  Do(s, &st);
  ASSERT_TRUE(st.ok()) << st.ToString();
  // The same request again: the first result.
  s.run_id = "k2";
  Do(s, &st);
  ASSERT_TRUE(st.ok()) << st.ToString();
  EXPECT_EQ(last_.id, "k1");
  EXPECT_FALSE(last_.created);
  // Another request with the key: refused, nothing written.
  uint64_t head = state_.head;
  s.request_digest = "digest-2";
  Do(s, &st);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  ASSERT_FALSE(st.details().empty());
  EXPECT_EQ(st.details()[0], kIdempotencyKeyReused);
  EXPECT_EQ(state_.head, head);
  // Workflows too.
  Json def = *ParseJson(kLifecycle);
  def["name"] = "keyed";
  RegisterWorkflow w{def, "me", "default", "wkey"};
  w.request_digest = "w1";
  Do(w, &st);
  ASSERT_TRUE(st.ok());
  ASSERT_EQ(state_.workflows.at("keyed").size(), 1u);
  def["params"]["threshold"] = 0.9;
  RegisterWorkflow w2{def, "me", "default", "wkey"};
  w2.request_digest = "w2";
  Do(w2, &st);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(st.details().at(0), kIdempotencyKeyReused);
  EXPECT_EQ(state_.workflows.at("keyed").size(), 1u);
}

TEST_F(TenantTest, AWorkflowOfMoreStepsThanApiMaxStepsIsRefusedUnparsed) {
  cfg_.max_steps = 3;
  Json def{{"name", "wide"}, {"steps", Json::array()}};
  for (int i = 0; i < 4; ++i) {
    def["steps"].push_back(Json{{"name", "s" + std::to_string(i)}, {"command", {"x"}}});
  }
  Status st;
  Do(RegisterWorkflow{def}, &st);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  ASSERT_EQ(st.details().size(), 1u);
  EXPECT_EQ(st.details()[0], "steps: has 4 steps, more than api.maxSteps (3)");
  def["steps"].erase(3);
  Do(RegisterWorkflow{def}, &st);
  EXPECT_TRUE(st.ok()) << st.ToString();
}

}  // namespace
}  // namespace epoch::engine
