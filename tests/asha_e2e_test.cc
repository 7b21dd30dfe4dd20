// Early stopping end to end (issue 17), on a real epochd with real agents and real
// processes: an ASHA sweep of six trials whose curves are scripted by one parameter,
// one trial at a time so that the order in which they reach each rung (and so every
// decision) is fixed. The bad trials are stopped at the first rung, two fair ones at
// the second; each stopped trial gets SIGTERM and writes a checkpoint before it exits;
// the best trial's outputs and parameters flow to the step after the sweep; the run's
// record and its history say where each trial stood and why it stopped. The same sweep
// with its master killed (-9) after the first TrialStopped and restarted on the same data
// dir makes the same decisions, each once, and runs each trial once.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "common/json.h"
#include "tests/harness.h"

namespace epoch::testing {
namespace {

using namespace std::chrono_literals;

// A trial: one epoch a second, up to 9; after each, a live point (epoch, accuracy =
// quality * epoch / 9) and a checkpoint. On SIGTERM it says so, declares a checkpoint of
// the epoch it is in and exits 143.
constexpr const char* kTrial = R"(e=0
trap 'echo "SIGTERM received at epoch $e"; echo "stopped at $e" > $EPOCH_CHECKPOINT_DIR/stop-$e.ckpt; echo "{\"file\": \"stop-$e.ckpt\", \"epoch\": $e}" > $EPOCH_CHECKPOINT_DIR/checkpoint.json; echo "checkpoint stop-$e.ckpt written"; exit 143' TERM
while [ $e -lt 9 ]; do
  sleep 1 & wait $!
  e=$((e + 1))
  echo "{\"epoch\": $e, \"accuracy\": $(awk "BEGIN { print {{params.quality}} * $e / 9 }")}" >> $EPOCH_METRICS
  echo "epoch $e" > $EPOCH_CHECKPOINT_DIR/epoch-$e.ckpt
  echo "{\"file\": \"epoch-$e.ckpt\", \"epoch\": $e}" > $EPOCH_CHECKPOINT_DIR/checkpoint.json
  echo "epoch $e done"
done
echo {{params.quality}} > {{outputs}}/model.txt
echo "{\"accuracy\": {{params.quality}}}" > $EPOCH_OUTPUTS/metrics.json
)";

Json Workflow() {
  return Json{
      {"name", "asha"},
      {"steps",
       Json::array({Json{{"name", "train"},
                         {"kind", "train"},
                         {"outputs", Json::array({"model.txt"})},
                         {"command", Json::array({"sh", "-c", kTrial})},
                         {"sweep",
                          Json{{"method", "asha"},
                               {"parameters",
                                Json{{"quality", Json::array({0.9, 0.3, 0.2, 0.8, 0.1, 0.85})}}},
                               {"parallel", 1},
                               {"resource", "epoch"},
                               {"minResource", 1},
                               {"maxResource", 9},
                               {"reduction", 3},
                               {"objective", Json{{"metric", "accuracy"}, {"goal", "maximize"}}}}}},
                    Json{{"name", "infer"},
                         {"kind", "infer"},
                         {"after", Json::array({"train"})},
                         {"command",
                          Json::array({"sh", "-c",
                                       "echo model $(cat {{steps.train.outputs.model.txt}}) best "
                                       "{{steps.train.best.params.quality}}"})}}})}};
}

TEST(AshaE2ETest, BadTrialsStopAtTheFirstRungWithACheckpointAndTheBestFlowsDownstream) {
  TempDir dir;
  std::string data = dir.path() + "/data";
  Epochd d(data, {"executor.metricsInterval=200ms", "executor.leaseTime=10s"});
  d.Start();
  std::string run = d.RegisterAndSubmit(Workflow());
  Json r = d.WaitForRun(run, 120s);
  ASSERT_EQ(r["state"], "succeeded") << r.dump(1);

  // Every decision, from the run's history.
  HttpResult evs = d.Get("/v1/runs/" + run + "/events");
  ASSERT_EQ(evs.status, 200) << evs.body;
  std::map<int, std::vector<std::string>> decisions;  // trial -> "promoted 0", "stopped 1"
  Json done;
  Json items = evs.json()["items"];  // (no range-for on a temporary)
  for (const auto& e : items) {
    const Json& p = e["data"];
    if (e["type"] == "TrialPromoted" || e["type"] == "TrialStopped") {
      decisions[p["trial"].get<int>()].push_back(
          std::string(e["type"] == "TrialStopped" ? "stopped " : "promoted ") + p["rung"].dump());
    }
    if (e["type"] == "StepSweepCompleted") done = p;
  }
  // Rung 0 (epoch 1) keeps the best third of those judged there before, rung 1 (epoch 3)
  // likewise: 0.3, 0.2 and 0.1 are below the cutoff at once; 0.8 and 0.85 pass rung 0 and
  // fall short of 0.9 at rung 1 (cutoffs 0.3 and 0.288889).
  using V = std::vector<std::string>;
  EXPECT_EQ(decisions, (std::map<int, V>{{0, V{"promoted 0", "promoted 1"}},
                                         {1, V{"stopped 0"}},
                                         {2, V{"stopped 0"}},
                                         {3, V{"promoted 0", "stopped 1"}},
                                         {4, V{"stopped 0"}},
                                         {5, V{"promoted 0", "stopped 1"}}}));
  EXPECT_EQ(done["best_trial"], 0) << done.dump();
  EXPECT_EQ(done["succeeded"], 1);
  EXPECT_EQ(done["stopped"], 5);
  EXPECT_EQ(done["failed"], 0);

  // Each stopped trial got SIGTERM (the agent's cancel) and wrote its checkpoint; the
  // record says where it stood and why it stopped.
  const Json& train = r["steps"][0];
  ASSERT_EQ(train["attempts"].size(), 6u);
  for (const auto& a : train["attempts"]) {
    int trial = a["trial"];
    int n = a["attempt"];
    HttpResult log = d.Get("/v1/runs/" + run + "/steps/train/logs?attempt=" + std::to_string(n));
    ASSERT_EQ(log.status, 200) << log.body;
    if (trial == 0) {
      EXPECT_EQ(a["state"], "succeeded");
      EXPECT_EQ(a["rung"], 1);
      EXPECT_FALSE(a.contains("stopped"));
      EXPECT_EQ(log.body.find("SIGTERM"), std::string::npos) << log.body;
      continue;
    }
    EXPECT_EQ(a["state"], "cancelled") << a.dump();
    EXPECT_EQ(a["rung"], static_cast<int>(decisions[trial].size()) - 1) << a.dump();
    ASSERT_TRUE(a.contains("stopped")) << a.dump();
    EXPECT_NE(a["stopped"].get<std::string>().find("is below the best 1/3"), std::string::npos);
    EXPECT_EQ(a["reason"], "stopped early: " + a["stopped"].get<std::string>());
    EXPECT_NE(log.body.find("SIGTERM received at epoch"), std::string::npos) << log.body;
    auto at = log.body.find("checkpoint stop-");
    ASSERT_NE(at, std::string::npos) << log.body;
    std::string file = log.body.substr(at + 11, log.body.find(' ', at + 11) - at - 11);
    EXPECT_TRUE(std::filesystem::exists(data + "/runs/" + run + "/train/checkpoints/trial-" +
                                        std::to_string(trial) + "/" + file))
        << file;
    // Stopped at the rung it was judged at, long before the end: 9 epochs never ran.
    EXPECT_EQ(log.body.find("epoch 9 done"), std::string::npos) << log.body;
  }

  // The best trial's model and parameters are what the next step gets.
  EXPECT_EQ(train["best"]["trial"], 0);
  EXPECT_EQ(train["best"]["params"], (Json{{"quality", 0.9}}));
  HttpResult infer = d.Get("/v1/runs/" + run + "/steps/infer/logs");
  ASSERT_EQ(infer.status, 200) << infer.body;
  EXPECT_NE(infer.body.find("model 0.9 best 0.9"), std::string::npos) << infer.body;
}

// Every TrialPromoted / TrialStopped of a run's history, as "promoted 0" / "stopped 1" by
// trial, in order; and the StepSweepCompleted payload, if there is one.
struct History {
  std::map<int, std::vector<std::string>> decisions;
  std::vector<Json> judgements;  // the events themselves
  Json done;
};

History ReadHistory(Epochd& d, const std::string& run) {
  History h;
  HttpResult evs = d.Get("/v1/runs/" + run + "/events");
  EXPECT_EQ(evs.status, 200) << evs.body;
  Json items = evs.json()["items"];
  for (const auto& e : items) {
    const Json& p = e["data"];
    if (e["type"] == "TrialPromoted" || e["type"] == "TrialStopped") {
      h.decisions[p["trial"].get<int>()].push_back(
          std::string(e["type"] == "TrialStopped" ? "stopped " : "promoted ") + p["rung"].dump());
      h.judgements.push_back(e);
    }
    if (e["type"] == "StepSweepCompleted") h.done = p;
  }
  return h;
}

// Replay: the master is killed (-9) just after its first TrialStopped is durable, while
// the stopped trial may still be running on its agent and the other trials wait; the
// restarted master replays the history and carries on. No trial runs twice, no trial is
// judged twice at a rung, and every decision is the one an uninterrupted sweep makes.
TEST(AshaE2ETest, ReplayAMasterKill9DuringASweepLeavesNoTrialDoubled) {
  TempDir dir;
  std::string data = dir.path() + "/data";
  std::vector<std::string> cfg = {"executor.metricsInterval=200ms", "executor.leaseTime=10s"};
  Epochd d(data, cfg);
  d.Start();
  std::string run = d.RegisterAndSubmit(Workflow());
  History before;
  ASSERT_TRUE(WaitFor(
      [&] {
        before = ReadHistory(d, run);
        for (const auto& [trial, ds] : before.decisions) {
          for (const auto& what : ds) {
            if (what.rfind("stopped ", 0) == 0) return true;
          }
        }
        return false;
      },
      60s))
      << "no TrialStopped; the log:\n"
      << d.Log();
  ASSERT_TRUE(before.done.is_null()) << "the sweep was still going when the master died";
  d.Kill9();

  Epochd again(data, cfg);
  again.Start();
  Json r = again.WaitForRun(run, 120s);
  ASSERT_EQ(r["state"], "succeeded") << r.dump(1);
  HttpResult leaders = again.Get("/v1/events?type=LeaderElected");
  ASSERT_EQ(leaders.status, 200) << leaders.body;
  EXPECT_EQ(leaders.json()["items"].size(), 2u) << "the master was restarted once";

  // Six attempts, one per trial, none repeated.
  const Json& train = r["steps"][0];
  ASSERT_EQ(train["name"], "train");
  ASSERT_EQ(train["attempts"].size(), 6u) << train.dump(1);
  std::map<int, int> runs_of;  // trial -> attempts
  for (const auto& a : train["attempts"]) ++runs_of[a["trial"].get<int>()];
  EXPECT_EQ(runs_of, (std::map<int, int>{{0, 1}, {1, 1}, {2, 1}, {3, 1}, {4, 1}, {5, 1}}));

  // One judgement per trial and rung, and the decisions of an uninterrupted sweep.
  History after = ReadHistory(again, run);
  std::map<std::pair<int, int>, int> judged;  // (trial, rung) -> events
  for (const Json& e : after.judgements) {
    int trial = e["data"]["trial"], rung = e["data"]["rung"];
    EXPECT_EQ(++judged[std::make_pair(trial, rung)], 1)
        << "trial " << trial << " judged twice at rung " << rung << ": " << e.dump();
  }
  using V = std::vector<std::string>;
  EXPECT_EQ(after.decisions, (std::map<int, V>{{0, V{"promoted 0", "promoted 1"}},
                                               {1, V{"stopped 0"}},
                                               {2, V{"stopped 0"}},
                                               {3, V{"promoted 0", "stopped 1"}},
                                               {4, V{"stopped 0"}},
                                               {5, V{"promoted 0", "stopped 1"}}}));
  // What the first master recorded is a prefix of the history, unchanged.
  for (const auto& [trial, ds] : before.decisions) {
    ASSERT_LE(ds.size(), after.decisions[trial].size()) << trial;
    EXPECT_TRUE(std::equal(ds.begin(), ds.end(), after.decisions[trial].begin())) << trial;
  }
  EXPECT_EQ(after.done["best_trial"], 0) << after.done.dump();
  EXPECT_EQ(after.done["succeeded"], 1);
  EXPECT_EQ(after.done["stopped"], 5);
  EXPECT_EQ(after.done["failed"], 0);
  EXPECT_EQ(train["best"]["trial"], 0);
  for (const auto& a : train["attempts"]) {
    EXPECT_EQ(a["state"], a["trial"] == 0 ? "succeeded" : "cancelled") << a.dump();
  }
}

}  // namespace
}  // namespace epoch::testing
