// Sweeps through the Processor: trials of a grid, run a few at a time, the best one
// winning, failures, cancel, and the checks at registration.
#include <gtest/gtest.h>

#include <string>

#include "engine/decider_test_util.h"
#include "engine/snapshot.h"

namespace epoch::engine {
namespace {

using test_util::DeciderTest;
using test_util::Reports;

constexpr const char* kSweep = R"({"name":"sweep","params":{"epochs":3},"steps":[
    {"name":"train","kind":"train","model":{"name":"swept"},"outputs":["model"],
     "command":["train","--lr={{params.lr}}","--hidden={{params.hidden}}","--epochs={{params.epochs}}"],
     "sweep":{"method":"grid","parameters":{"lr":[0.1,0.2],"hidden":[8,16]},"parallel":2,
              "objective":{"metric":"accuracy","goal":"maximize"}}},
    {"name":"infer","kind":"infer","after":["train"],
     "command":["infer","{{steps.train.best.params.lr}}","{{steps.train.outputs.model}}",
                "{{steps.train.metrics.accuracy}}"]}]})";

class SweepTest : public DeciderTest {
 protected:
  std::vector<RecordedEvent> Finish(const std::string& attempt, bool ok, double accuracy = 0) {
    PollContainer p;
    p.container = "c1";
    Json r{
        {"attempt_id", attempt}, {"state", ok ? "succeeded" : "failed"}, {"exit_code", ok ? 0 : 1}};
    if (ok) {
      r["metrics"] = Json{{"accuracy", accuracy}};
      r["outputs"] = Json::array({Json{{"name", "model"}, {"size", 4}, {"sha256", attempt}}});
    }
    p.reports = Reports(Json::array({r}));
    Status st;
    auto evs = Do(p, &st);
    EXPECT_TRUE(st.ok()) << st.ToString();
    return evs;
  }
  int Active(const std::string& run) {
    int n = 0;
    for (const auto& a : R(run).steps[0].attempts) n += !IsTerminal(a.phase);
    return n;
  }
};

TEST_F(SweepTest, GridOfFourTrialsTwoAtATimeBestWinsAndAFailedTrialIsTolerated) {
  StartContainer();
  std::string run = Submit(kSweep);
  const auto& attempts = [&]() -> const std::vector<Attempt>& { return R(run).steps[0].attempts; };
  ASSERT_EQ(attempts().size(), 2u);  // parallel 2
  EXPECT_EQ(Active(run), 2);
  // Grid order: parameters by name (hidden, lr), the last varying fastest.
  EXPECT_EQ(attempts()[0].trial, 0);
  EXPECT_EQ(attempts()[0].trial_params, (Json{{"hidden", 8}, {"lr", 0.1}}));
  EXPECT_EQ(attempts()[0].argv, Json::array({"train", "--lr=0.1", "--hidden=8", "--epochs=3"}));
  EXPECT_EQ(attempts()[1].argv, Json::array({"train", "--lr=0.2", "--hidden=8", "--epochs=3"}));
  EXPECT_EQ(attempts()[1].env["EPOCH_TRIAL"], "1");

  Finish(run + "/train/1", true, 0.80);
  ASSERT_EQ(attempts().size(), 3u);  // the next trial took the free slot
  EXPECT_EQ(attempts()[2].trial_params, (Json{{"hidden", 16}, {"lr", 0.1}}));
  EXPECT_EQ(Active(run), 2);
  EXPECT_EQ(R(run).steps[0].phase, StepPhase::kRunning);
  Finish(run + "/train/2", false);  // a failed trial: not a failed step
  ASSERT_EQ(attempts().size(), 4u);
  EXPECT_EQ(R(run).steps[0].phase, StepPhase::kRunning);
  EXPECT_EQ(R(run).phase, RunPhase::kRunning);
  Finish(run + "/train/3", true, 0.91);
  EXPECT_EQ(attempts().size(), 4u);  // all four queued; no fifth
  EXPECT_EQ(R(run).steps[1].phase, StepPhase::kPending);
  auto evs = Finish(run + "/train/4", true, 0.85);

  const RecordedEvent* done = nullptr;
  for (const auto& e : evs) {
    if (e.type == "StepSweepCompleted") done = &e;
  }
  ASSERT_NE(done, nullptr);
  EXPECT_EQ(done->data["best_trial"], 2);
  EXPECT_EQ(done->data["best_attempt"], 3);
  EXPECT_EQ(done->data["best_params"], (Json{{"hidden", 16}, {"lr", 0.1}}));
  EXPECT_EQ(done->data["best_value"], 0.91);
  EXPECT_EQ(done->data["succeeded"], 3);
  EXPECT_EQ(done->data["failed"], 1);
  const StepRun& train = R(run).steps[0];
  EXPECT_EQ(train.phase, StepPhase::kSucceeded);
  EXPECT_EQ(train.metrics["accuracy"], 0.91);
  EXPECT_EQ(train.outputs[0]["sha256"], run + "/train/3");
  // Downstream reads the best trial: its params, outputs and metrics.
  ASSERT_EQ(R(run).steps[1].attempts.size(), 1u);
  EXPECT_EQ(R(run).steps[1].attempts[0].argv,
            Json::array({"infer", "0.1", "/data/runs/" + run + "/train/3/outputs/model", "0.91"}));
  // The model version is the best trial's, with its params.
  ASSERT_EQ(state_.models.at("default/swept").count, 1);
  EXPECT_EQ(state_.models.at("default/swept").versions[0].attempt, 3);
  EXPECT_EQ(state_.models.at("default/swept").versions[0].params,
            (Json{{"epochs", 3}, {"hidden", 16}, {"lr", 0.1}}));

  // Mid-sweep and finished states survive a snapshot and a replay.
  auto decoded = DecodeSnapshot(EncodeSnapshot(state_));
  ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
  EXPECT_EQ(StateDigestJson(*decoded), StateDigestJson(state_));
  EXPECT_EQ(decoded->FindRun(run)->steps[0].attempts[2].metrics["accuracy"], 0.91);
  State replay;
  for (const auto& e : all_) ASSERT_TRUE(Evolve(replay, e).ok()) << e.type << " at " << e.position;
  EXPECT_EQ(StateDigestJson(replay), StateDigestJson(state_));

  Finish(run + "/infer/1", true, 0);
  EXPECT_EQ(R(run).phase, RunPhase::kSucceeded);
}

TEST_F(SweepTest, AllTrialsFailingFailsTheStepAndTheRunWithoutRetries) {
  StartContainer();
  std::string run = Submit(kSweep);
  for (int n = 1; n <= 4; ++n) Finish(run + "/train/" + std::to_string(n), false);
  EXPECT_EQ(R(run).steps[0].attempts.size(), 4u);
  EXPECT_EQ(R(run).steps[0].phase, StepPhase::kFailed);
  EXPECT_EQ(R(run).steps[0].reason, "all 4 trials failed");
  EXPECT_EQ(R(run).phase, RunPhase::kFailed);
  EXPECT_NE(R(run).reason.find("all 4 trials failed"), std::string::npos) << R(run).reason;
  EXPECT_EQ(R(run).steps[1].phase, StepPhase::kCancelled);
}

TEST_F(SweepTest, CancelStopsEveryTrialAndQueuesNoMore) {
  StartContainer();
  std::string run = Submit(kSweep);
  // Both trials are assigned; the agent reports them running.
  PollContainer p;
  p.container = "c1";
  p.running = {run + "/train/1", run + "/train/2"};
  Do(p);
  Status st;
  Do(CancelRun{run, "alice"}, &st);
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(R(run).phase, RunPhase::kRunning);  // waits for the running trials
  PollContainer done;
  done.container = "c1";
  done.reports =
      Reports(Json::array({Json{{"attempt_id", run + "/train/1"}, {"state", "cancelled"}},
                           Json{{"attempt_id", run + "/train/2"}, {"state", "cancelled"}}}));
  Do(done, &st);
  EXPECT_EQ(R(run).phase, RunPhase::kCancelled);
  EXPECT_EQ(R(run).steps[0].attempts.size(), 2u);
  EXPECT_EQ(R(run).steps[0].phase, StepPhase::kCancelled);
  EXPECT_EQ(R(run).steps[0].reason, "run cancelled");
}

// Each trial has its own checkpoint dir and its own latest checkpoint: one trial's does
// not become another's.
TEST_F(SweepTest, EachTrialKeepsItsOwnCheckpoint) {
  StartContainer();
  std::string run = Submit(kSweep);
  std::string trial0 = R(run).steps[0].attempts[0].trial == 0 ? run + "/train/1" : run + "/train/2";
  PollContainer p;
  p.container = "c1";
  auto batches = ParseMetricsBatches(Json::array({Json{
      {"attempt_id", trial0},
      {"from", 0},
      {"checkpoints",
       Json::array({Json{
           {"file", "t0.pt"}, {"sha256", std::string(64, 'c')}, {"size", 3}, {"epoch", 1}}})}}}));
  ASSERT_TRUE(batches.ok()) << batches.status().ToString();
  p.metrics = *batches;
  auto evs = Do(p);
  ASSERT_EQ(evs.size(), 1u);
  EXPECT_EQ(evs[0].type, "CheckpointSaved");
  EXPECT_EQ(evs[0].data["trial"], 0);
  const auto& checkpoints = R(run).steps[0].checkpoints;
  ASSERT_EQ(checkpoints.size(), 1u);
  EXPECT_EQ(checkpoints.at(0)["file"], "t0.pt");
  EXPECT_EQ(checkpoints.count(-1), 0u) << "not the step's own";
  // The dirs the trials are given differ.
  EXPECT_NE(CheckpointDir(cfg_, run, "train", 0), CheckpointDir(cfg_, run, "train", 1));
  EXPECT_EQ(CheckpointDir(cfg_, run, "train", 1),
            "/data/runs/" + run + "/train/checkpoints/trial-1");
}

TEST_F(SweepTest, SweepParamsAndBestParamsAreCheckedAtRegistration) {
  Status st;
  Do(RegisterWorkflow{*ParseJson(R"({"name":"bad","steps":[
      {"name":"t","command":["t","{{params.lr}}"],
       "sweep":{"method":"random","parameters":{"lr":{"min":0.001,"max":0.1,"log":true}},
                "trials":3,"objective":{"metric":"loss","goal":"minimize"}}},
      {"name":"u","after":["t"],"command":["u","{{steps.t.best.params.momentum}}","{{params.lr}}"]}]})")},
     &st);
  ASSERT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(st.details(),
            (std::vector<std::string>{
                "steps[1].command[1]: unknown template variable 'steps.t.best.params.momentum' "
                "(step 't' has no sweep parameter 'momentum')",
                // A sweep parameter is a param of its own step only.
                "steps[1].command[2]: unknown template variable 'params.lr'"}));
  EXPECT_TRUE(state_.workflows.empty());
}

}  // namespace
}  // namespace epoch::engine
