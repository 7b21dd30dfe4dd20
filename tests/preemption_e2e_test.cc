// Preemption by priority end to end (issue 17), on a real epochd with a real agent and
// real processes: a low-priority run holds both (simulated) GPUs of the only container;
// a high-priority run arrives, and the low one is preempted (SIGTERM, its checkpoint
// kept), the high one starts at once, the low one resumes from its checkpoint when the
// GPUs are free, and both succeed; the preemption costs the low run none of its
// retries (its retry.limit is 0); and no GPU is ever held by two attempts, checked
// from the events.
#include <gtest/gtest.h>

#include <cstdlib>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "common/json.h"
#include "tests/harness.h"

namespace epoch::testing {
namespace {

using namespace std::chrono_literals;

// Six epochs of a second each, a checkpoint after each; resumes from checkpoint.json;
// says when SIGTERM comes and exits 143.
constexpr const char* kTraining = R"SH(e=0
if [ -f "$EPOCH_CHECKPOINT_DIR/checkpoint.json" ]; then
  e=$(sed 's/.*"epoch": *\([0-9]*\).*/\1/' "$EPOCH_CHECKPOINT_DIR/checkpoint.json")
  echo "resumed from epoch-$e.pt"
fi
trap 'echo "SIGTERM received in epoch $((e + 1))"; exit 143' TERM
while [ $e -lt 6 ]; do
  sleep 1 & wait $!
  e=$((e + 1))
  echo "weights $e" > "$EPOCH_CHECKPOINT_DIR/epoch-$e.pt"
  echo "{\"file\": \"epoch-$e.pt\", \"epoch\": $e}" > "$EPOCH_CHECKPOINT_DIR/.c" && mv "$EPOCH_CHECKPOINT_DIR/.c" "$EPOCH_CHECKPOINT_DIR/checkpoint.json"
  echo "epoch $e done"
done
)SH";

TEST(PreemptionE2ETest, AHighPriorityRunPreemptsALowOneWhichResumesFromItsCheckpoint) {
  TempDir dir;
  setenv("EPOCH_FAKE_GPUS", "2", 1);
  Epochd d(dir.path() + "/data",
           {"sig.minReplicas=1", "sig.maxReplicas=1", "sig.gpu=2", "sig.cpu=2",
            "scheduler.preemption=priority", "scheduler.preemptionMinRunTime=1s",
            "executor.metricsInterval=200ms", "executor.leaseTime=10s"});
  d.Start();
  unsetenv("EPOCH_FAKE_GPUS");
  Json low_def{{"name", "low"},
               {"steps", Json::array({Json{{"name", "train"},
                                           {"kind", "train"},
                                           {"resources", Json{{"gpus", 2}, {"cpu", "100m"}}},
                                           {"command", Json::array({"sh", "-c", kTraining})}}})}};
  Json high_def{
      {"name", "high"},
      {"steps", Json::array({Json{{"name", "infer"},
                                  {"kind", "infer"},
                                  {"resources", Json{{"gpus", 1}, {"cpu", "100m"}}},
                                  {"command", Json::array({"sh", "-c", "sleep 1; echo done"})}}})}};
  ASSERT_EQ(d.PostJson("/v1/workflows", high_def).status, 201);
  std::string low = d.RegisterAndSubmit(low_def);
  // Once the low run has a checkpoint (epoch 2 or later), the high one arrives.
  ASSERT_TRUE(WaitFor(
      [&] {
        Json step = d.Get("/v1/runs/" + low).json()["steps"][0];
        return step.contains("checkpoints") && step["checkpoints"]["step"].value("epoch", 0) >= 2;
      },
      30s));
  HttpResult sub = d.PostJson("/v1/runs", Json{{"workflow", "high"}, {"priority", 10}});
  ASSERT_EQ(sub.status, 201) << sub.body;
  std::string high = sub.json()["id"];
  EXPECT_EQ(d.WaitForRun(high, 60s)["state"], "succeeded");
  Json lr = d.WaitForRun(low, 60s);
  ASSERT_EQ(lr["state"], "succeeded") << lr.dump(1);

  // The low run: preempted once, by the high run's attempt, then resumed.
  const Json& attempts = lr["steps"][0]["attempts"];
  ASSERT_EQ(attempts.size(), 2u) << lr.dump(1);
  EXPECT_EQ(attempts[0]["state"], "cancelled");
  EXPECT_EQ(attempts[0]["preempted_by"], high + "/infer/1");
  EXPECT_EQ(attempts[0]["reason"], "preempted by " + high + "/infer/1");
  EXPECT_EQ(attempts[1]["state"], "succeeded");
  ASSERT_TRUE(attempts[1].contains("resumed_from")) << attempts[1].dump();
  int resumed = attempts[1]["resumed_from"]["epoch"];
  EXPECT_GE(resumed, 2);
  HttpResult log1 = d.Get("/v1/runs/" + low + "/steps/train/logs?attempt=1");
  EXPECT_NE(log1.body.find("SIGTERM received in epoch"), std::string::npos) << log1.body;
  HttpResult log2 = d.Get("/v1/runs/" + low + "/steps/train/logs?attempt=2");
  EXPECT_NE(log2.body.find("resumed from epoch-" + std::to_string(resumed) + ".pt"),
            std::string::npos)
      << log2.body;
  EXPECT_NE(log2.body.find("epoch 6 done"), std::string::npos) << log2.body;

  // From the log of events: the preemption, and then the high run's assignment once the
  // low attempt had ended; no GPU of c1 held by two attempts at any position.
  std::vector<Json> events = d.AllEvents();
  std::map<std::string, std::string> holder;             // "container/gpu" -> attempt id
  std::map<std::string, std::vector<std::string>> held;  // attempt id -> its keys
  int preempted = 0;
  uint64_t cancelled_at = 0, high_assigned_at = 0;
  for (const auto& e : events) {
    std::string stream = e["stream"];
    if (stream.rfind("run-", 0) != 0) continue;
    std::string run = stream.substr(4);
    const Json& p = e["data"];
    std::string id = run + "/" + p.value("step", "") + "/" + std::to_string(p.value("attempt", 0));
    std::string type = e["type"];
    if (type == "JobPreempted") {
      ++preempted;
      EXPECT_EQ(id, low + "/train/1");
      EXPECT_EQ(p["by"], high + "/infer/1");
      EXPECT_EQ(p["by_priority"], 10);
    } else if (type == "JobAssigned") {
      if (run == high) high_assigned_at = e["position"];
      for (const auto& g : p["gpus"]) {
        std::string key = p["container"].get<std::string>() + "/" + g.get<std::string>();
        EXPECT_EQ(holder.count(key), 0u)
            << key << " given to " << id << " while " << holder[key] << " holds it";
        holder[key] = id;
        held[id].push_back(key);
      }
    } else if (type == "JobSucceeded" || type == "JobFailed" || type == "JobCancelled" ||
               type == "JobTimedOut") {
      if (type == "JobCancelled" && run == low) cancelled_at = e["position"];
      for (const auto& key : held[id]) holder.erase(key);
      held.erase(id);
    }
  }
  EXPECT_EQ(preempted, 1);
  EXPECT_GT(high_assigned_at, cancelled_at);
  EXPECT_GT(cancelled_at, 0u);
}

}  // namespace
}  // namespace epoch::testing
