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

// ASHA over four learning rates, two at a time: rungs at epoch 1 and 3, a trial runs
// in full at 9, each rung keeps the best third.
constexpr const char* kAsha = R"({"name":"asha","steps":[
    {"name":"train","kind":"train","outputs":["model"],
     "command":["train","--lr={{params.lr}}","--epochs=9"],
     "sweep":{"method":"asha","parameters":{"lr":[0.1,0.2,0.3,0.4]},"parallel":2,
              "maxResource":9,"reduction":3,
              "objective":{"metric":"accuracy","goal":"maximize"}}},
    {"name":"infer","kind":"infer","after":["train"],
     "command":["infer","{{steps.train.best.params.lr}}","{{steps.train.outputs.model}}"]}]})";

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
  // One poll carrying live metric points per attempt: {attempt id -> [points]}, each
  // series continuing from what the state has recorded.
  std::vector<RecordedEvent> Points(const std::string& run,
                                    const std::vector<std::pair<int, Json>>& batches) {
    Json j = Json::array();
    for (const auto& [n, points] : batches) {
      const Attempt& a = R(run).steps[0].attempts[static_cast<size_t>(n) - 1];
      auto it = a.series.find(0);
      j.push_back(Json{{"attempt_id", run + "/train/" + std::to_string(n)},
                       {"from", it == a.series.end() ? 0 : it->second.next},
                       {"points", points}});
    }
    auto parsed = ParseMetricsBatches(j);
    EXPECT_TRUE(parsed.ok()) << parsed.status().ToString();
    PollContainer p;
    p.container = "c1";
    if (parsed.ok()) p.metrics = *parsed;
    Status st;
    auto evs = Do(p, &st);
    EXPECT_TRUE(st.ok()) << st.ToString();
    return evs;
  }
  static std::vector<std::string> Judgements(const std::vector<RecordedEvent>& evs) {
    std::vector<std::string> out;
    for (const auto& e : evs) {
      if (e.type == "TrialPromoted" || e.type == "TrialStopped") {
        out.push_back(e.type + " trial " + e.data["trial"].dump() + " rung " +
                      e.data["rung"].dump() + ": " + e.data["reason"].get<std::string>());
      }
    }
    return out;
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

// Early stopping from scripted curves through the decider: every judgement is an event
// with its cutoff, two trials reporting in one poll see each other, a stopped trial is
// cancelled with its reason and frees its slot, a stopped trial that ends "succeeded"
// before the cancel reaches it is still no candidate, and the best of the rest wins.
TEST_F(SweepTest, AshaStopsTrialsBelowTheCutoffAndTheBestOfTheRestWins) {
  StartContainer();
  std::string run = Submit(kAsha);
  const auto& attempts = [&]() -> const std::vector<Attempt>& { return R(run).steps[0].attempts; };
  ASSERT_EQ(attempts().size(), 2u);
  // Trials 0 (lr 0.1) and 1 (lr 0.2) reach epoch 1 in the same poll. A point without the
  // objective (a progress line) is not judged.
  auto evs = Points(run, {{1, Json::array({Json{{"epoch", 0.5}, {"loss", 2.0}},
                                           Json{{"epoch", 1}, {"accuracy", 0.5}}})},
                          {2, Json::array({Json{{"epoch", 1}, {"accuracy", 0.3}}})}});
  EXPECT_EQ(Judgements(evs),
            (std::vector<std::string>{
                "TrialPromoted trial 0 rung 0: rung 0 (epoch 1): accuracy 0.5: the first trial at "
                "this rung goes on",
                "TrialStopped trial 1 rung 0: rung 0 (epoch 1): accuracy 0.3 is below the best 1/3 "
                "of the 2 trials judged here (cutoff 0.5): stopped"}));
  const RecordedEvent* stop = nullptr;
  for (const auto& e : evs) stop = e.type == "TrialStopped" ? &e : stop;
  ASSERT_NE(stop, nullptr);
  EXPECT_EQ(stop->data["attempt"], 2);
  EXPECT_EQ(stop->data["milestone"], 1.0);
  EXPECT_EQ(stop->data["progress"], 1.0);
  EXPECT_EQ(stop->data["point"], 0);
  EXPECT_EQ(stop->data["cutoff"], 0.5);
  EXPECT_EQ(stop->data["compared"], 1);
  EXPECT_EQ(stop->data["resource"], "epoch");
  EXPECT_EQ(attempts()[1].stopped,
            "rung 0 (epoch 1): accuracy 0.3 is below the best 1/3 of the 2 trials judged here "
            "(cutoff 0.5): stopped");
  EXPECT_TRUE(attempts()[0].stopped.empty());
  // A stopped trial is judged no more; it holds its slot until its process has ended.
  EXPECT_TRUE(
      Judgements(Points(run, {{2, Json::array({Json{{"epoch", 3}, {"accuracy", 0.9}}})}})).empty());
  EXPECT_EQ(attempts().size(), 2u);
  // The cancel reaches it after it succeeded: recorded as it ended, but no candidate.
  Finish(run + "/train/2", true, 0.99);
  EXPECT_EQ(attempts()[1].phase, AttemptPhase::kSucceeded);
  ASSERT_EQ(attempts().size(), 3u);
  EXPECT_EQ(attempts()[2].trial, 2);

  // Trial 0 passes rung 1 first; trial 2 passes rung 0 (cutoff: the 2/3 quantile of 0.3
  // and 0.5) and is stopped at rung 1 in the same batch.
  EXPECT_EQ(Judgements(Points(run, {{1, Json::array({Json{{"epoch", 3}, {"accuracy", 0.7}}})}})),
            (std::vector<std::string>{"TrialPromoted trial 0 rung 1: rung 1 (epoch 3): accuracy "
                                      "0.7: the first trial at this rung goes on"}));
  EXPECT_EQ(Judgements(Points(run, {{3, Json::array({Json{{"epoch", 1}, {"accuracy", 0.6}},
                                                     Json{{"epoch", 2}, {"accuracy", 0.62}},
                                                     Json{{"epoch", 3}, {"accuracy", 0.65}},
                                                     Json{{"epoch", 4}, {"accuracy", 0.66}}})}})),
            (std::vector<std::string>{
                "TrialPromoted trial 2 rung 0: rung 0 (epoch 1): accuracy 0.6 is within the best "
                "1/3 of the 3 trials judged here (cutoff 0.433333): goes on",
                "TrialStopped trial 2 rung 1: rung 1 (epoch 3): accuracy 0.65 is below the best "
                "1/3 of the 2 trials judged here (cutoff 0.7): stopped"}));
  PollContainer cancelled;
  cancelled.container = "c1";
  cancelled.reports =
      Reports(Json::array({Json{{"attempt_id", run + "/train/3"}, {"state", "cancelled"}}}));
  evs = Do(cancelled);
  // (It never said it was running: its report starts it first.) Trial 3 takes the slot.
  ASSERT_EQ(Types(evs),
            (std::vector<std::string>{"JobStarted", "JobCancelled", "JobQueued", "JobAssigned"}));
  EXPECT_EQ(evs[1].data["reason"],
            "stopped early: rung 1 (epoch 3): accuracy 0.65 is below the best 1/3 of the 2 trials "
            "judged here (cutoff 0.7): stopped");
  ASSERT_EQ(attempts().size(), 4u);

  // Trial 3's first point is past rung 1: judged once, at the highest rung it reached.
  EXPECT_EQ(Judgements(Points(run, {{4, Json::array({Json{{"epoch", 4}, {"accuracy", 0.9}}})}})),
            (std::vector<std::string>{
                "TrialPromoted trial 3 rung 1: rung 1 (epoch 3): accuracy 0.9 is within the best "
                "1/3 of the 3 trials judged here (cutoff 0.683333): goes on"}));
  Finish(run + "/train/1", true, 0.8);
  evs = Finish(run + "/train/4", true, 0.9);
  const RecordedEvent* done = nullptr;
  for (const auto& e : evs) done = e.type == "StepSweepCompleted" ? &e : done;
  ASSERT_NE(done, nullptr);
  EXPECT_EQ(done->data["best_trial"], 3);
  EXPECT_EQ(done->data["best_value"], 0.9);
  EXPECT_EQ(done->data["succeeded"], 2);
  EXPECT_EQ(done->data["stopped"], 2);
  EXPECT_EQ(done->data["failed"], 0);
  EXPECT_EQ(R(run).steps[1].attempts[0].argv,
            Json::array({"infer", "0.4", "/data/runs/" + run + "/train/4/outputs/model"}));

  // The run's JSON says where each trial stands; a snapshot and a replay agree.
  Json t1 = RunToJson(R(run), cfg_)["steps"][0]["attempts"][1];
  EXPECT_EQ(t1["rung"], 0);
  EXPECT_EQ(t1["bracket"], 0);
  EXPECT_EQ(t1["rungs"],
            Json::parse(R"([{"rung":0,"epoch":1.0,"value":0.3,"decision":"stopped"}])"));
  EXPECT_EQ(t1["stopped"], attempts()[1].stopped);
  Json t0 = RunToJson(R(run), cfg_)["steps"][0]["attempts"][0];
  EXPECT_EQ(t0["rung"], 1);
  EXPECT_FALSE(t0.contains("stopped"));
  ASSERT_EQ(R(run).steps[0].rungs.size(), 6u);
  auto decoded = DecodeSnapshot(EncodeSnapshot(state_));
  ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
  EXPECT_EQ(StateDigestJson(*decoded), StateDigestJson(state_));
  EXPECT_EQ(RunToJson(*decoded->FindRun(run), cfg_), RunToJson(R(run), cfg_));
  State replay;
  for (const auto& e : all_) ASSERT_TRUE(Evolve(replay, e).ok()) << e.type << " at " << e.position;
  EXPECT_EQ(StateDigestJson(replay), StateDigestJson(state_));
  EXPECT_EQ(RunToJson(*replay.FindRun(run), cfg_), RunToJson(R(run), cfg_));
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
