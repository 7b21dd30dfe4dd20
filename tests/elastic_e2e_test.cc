// Elastic gangs end to end (issue 17), on a real epochd with real agents and real
// processes: a gang of 2 to 3 workers, each taking a whole container, starts with 2
// while a third container is busy, grows to 3 when it frees, loses a worker with its
// container (agent killed) and goes on with 2, and finishes; each change is a
// GangResized, every restart resumes from the checkpoint with the new WORLD_SIZE, and
// the gang never runs below its minimum.
#include <gtest/gtest.h>
#include <signal.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "common/json.h"
#include "tests/harness.h"

namespace epoch::testing {
namespace {

using namespace std::chrono_literals;

// Ten epochs of a second; rank 0 checkpoints after each; every rank resumes from the
// checkpoint and says with which world size it starts.
constexpr const char* kWorker = R"SH(e=0
if [ -f "$EPOCH_CHECKPOINT_DIR/checkpoint.json" ]; then
  e=$(sed 's/.*"epoch": *\([0-9]*\).*/\1/' "$EPOCH_CHECKPOINT_DIR/checkpoint.json")
fi
echo "rank $RANK of $WORLD_SIZE starts at epoch $e"
trap 'echo "rank $RANK: SIGTERM"; exit 143' TERM
while [ $e -lt 10 ]; do
  sleep 1 & wait $!
  e=$((e + 1))
  if [ "$RANK" = 0 ]; then
    echo "weights $e" > "$EPOCH_CHECKPOINT_DIR/epoch-$e.pt"
    echo "{\"file\": \"epoch-$e.pt\", \"epoch\": $e}" > "$EPOCH_CHECKPOINT_DIR/.c" && mv "$EPOCH_CHECKPOINT_DIR/.c" "$EPOCH_CHECKPOINT_DIR/checkpoint.json"
  fi
done
echo "rank $RANK of $WORLD_SIZE done"
)SH";

Json Attempts(Epochd& d, const std::string& run) {
  return d.Get("/v1/runs/" + run).json()["steps"][0]["attempts"];
}

// Three containers of 2 CPUs (a worker takes a whole one); a gang grows after 1 s.
const std::vector<std::string> kThreeContainers = {"sig.minReplicas=3",
                                                   "sig.maxReplicas=3",
                                                   "sig.cpu=2",
                                                   "executor.leaseTime=2s",
                                                   "scheduler.elasticMinRunTime=1s",
                                                   "executor.metricsInterval=200ms"};

// Starts `d`, waits for its three containers, and keeps one busy for 3 s (the `hold`
// run, running when this returns): a gang of 2 to 3 starts with 2 and can grow to 3.
void StartWithOneContainerBusy(Epochd& d) {
  d.Start();
  ASSERT_TRUE(WaitFor(
      [&] {
        int n = 0;
        Json cs = d.Get("/v1/containers").json()["items"];
        for (const auto& c : cs) n += c["state"] == "registered";
        return n == 3;
      },
      30s));
  std::string hold = d.RegisterAndSubmit(Json::parse(R"({"name": "hold", "steps": [
      {"name": "a", "resources": {"cpu": "2"}, "command": ["sleep", "3"]}]})"));
  d.WaitForRunState(hold, [](const Json& r) {
    return !r.value("steps", Json::array()).empty() &&
           r["steps"][0].value("state", "") == "running";
  });
}

TEST(ElasticE2ETest, StartsWithTwoGrowsToThreeLosesOneAndFinishesWithTwo) {
  TempDir dir;
  Epochd d(dir.path() + "/data", kThreeContainers);
  StartWithOneContainerBusy(d);
  if (HasFatalFailure()) return;
  Json def{{"name", "elastic"},
           {"steps", Json::array({Json{{"name", "train"},
                                       {"kind", "train"},
                                       {"workers", Json{{"min", 2}, {"max", 3}}},
                                       {"resources", Json{{"cpu", "2"}}},
                                       {"command", Json::array({"sh", "-c", kWorker})}}})}};
  std::string run = d.RegisterAndSubmit(def);
  // It starts with the 2 that fit, and grows to 3 once `hold` has ended.
  Json a;
  ASSERT_TRUE(WaitFor(
      [&] {
        a = Attempts(d, run);
        return a.size() >= 2 && a[1]["state"] == "running" && a[1]["world_size"] == 3;
      },
      60s))
      << a.dump(1);
  EXPECT_EQ(a[0]["world_size"], 2);
  EXPECT_EQ(a[0]["resized_to"], 3);
  EXPECT_EQ(a[0]["reason"], "resized to 3 workers");
  // Rank 2's container is lost (its agent killed): the gang goes on with 2.
  std::string lost = a[1]["workers"][2]["container"];
  pid_t agent = 0;
  Json containers = d.Get("/v1/containers").json()["items"];
  for (const auto& c : containers) {
    if (c["id"] == lost) agent = static_cast<pid_t>(c["pid"].get<int64_t>());
  }
  ASSERT_GT(agent, 0);
  kill(agent, SIGKILL);
  Json r = d.WaitForRun(run, 90s);
  ASSERT_EQ(r["state"], "succeeded") << r.dump(1);

  // The history: 2 -> 3 (room freed), 3 -> 2 (a worker lost), maybe 2 -> 3 again once
  // the pool has replaced the lost container; never below 2.
  Json items = d.Get("/v1/runs/" + run + "/events").json()["items"];
  std::vector<std::string> resized;
  for (const auto& e : items) {
    if (e["type"] != "GangResized") continue;
    resized.push_back(e["data"]["from"].dump() + "->" + e["data"]["world_size"].dump());
    EXPECT_GE(e["data"]["world_size"].get<int>(), 2);
  }
  ASSERT_GE(resized.size(), 2u);
  EXPECT_EQ(resized[0], "2->3");
  EXPECT_EQ(resized[1], "3->2");
  Json all = r["steps"][0]["attempts"];
  ASSERT_EQ(all.size(), resized.size() + 1);
  EXPECT_EQ(all[1]["state"], "lost");
  EXPECT_EQ(all[2]["world_size"], 2);
  // Each attempt after the first resumed from a later checkpoint, with its world size.
  int last_epoch = 0;
  for (size_t i = 0; i < all.size(); ++i) {
    EXPECT_GE(all[i]["world_size"].get<int>(), 2);
    int n = all[i]["attempt"];
    HttpResult log = d.Get("/v1/runs/" + run + "/steps/train/logs?attempt=" + std::to_string(n));
    ASSERT_EQ(log.status, 200);
    std::string ws = all[i]["world_size"].dump();
    EXPECT_NE(log.body.find("rank 0 of " + ws + " starts at epoch"), std::string::npos) << log.body;
    if (i == 0) continue;
    ASSERT_TRUE(all[i].contains("resumed_from")) << all[i].dump();
    int epoch = all[i]["resumed_from"]["epoch"];
    EXPECT_GE(epoch, last_epoch);
    last_epoch = epoch;
  }
  EXPECT_GT(last_epoch, 0);
  EXPECT_EQ(all.back()["state"], "succeeded");
}

// A master kill -9 in the middle of a resize (the GangResized recorded, the old ranks
// still ending: their trap takes a second) doubles no worker: the new master neither
// decides the resize again nor places the next attempt before every old rank has ended.
TEST(ElasticE2ETest, AMasterKilledDuringAResizeDoublesNoWorker) {
  TempDir dir;
  Epochd d(dir.path() + "/data", kThreeContainers);
  StartWithOneContainerBusy(d);
  if (HasFatalFailure()) return;
  // The worker, with a SIGTERM trap that takes a second: the window for the kill.
  std::string worker = kWorker;
  const std::string fast = R"(trap 'echo "rank $RANK: SIGTERM"; exit 143' TERM)";
  worker.replace(worker.find(fast), fast.size(),
                 R"(trap 'echo "rank $RANK: SIGTERM"; sleep 1; exit 143' TERM)");
  Json def{{"name", "elastic"},
           {"steps", Json::array({Json{{"name", "train"},
                                       {"kind", "train"},
                                       {"workers", Json{{"min", 2}, {"max", 3}}},
                                       {"resources", Json{{"cpu", "2"}}},
                                       {"command", Json::array({"sh", "-c", worker})}}})}};
  std::string run = d.RegisterAndSubmit(def);
  Json a;
  ASSERT_TRUE(WaitFor(
      [&] {
        a = Attempts(d, run);
        return a.size() == 1 && a[0].contains("resized_to");
      },
      60s))
      << a.dump(1);
  d.Kill9();
  ASSERT_EQ(a[0]["state"], "running") << "killed while the old ranks still run: " << a.dump(1);
  d.Start();
  Json r = d.WaitForRun(run, 90s);
  ASSERT_EQ(r["state"], "succeeded") << r.dump(1);

  // From the events: one resize decision from 2 to 3; every rank of every attempt
  // started and finished once; each attempt placed only after every rank of the one
  // before had finished.
  std::map<int, uint64_t> assigned;                      // attempt -> JobAssigned
  std::map<std::pair<int, int>, int> started, finished;  // (attempt, rank) -> count
  std::map<int, uint64_t> last_finished;                 // attempt -> its last rank's end
  std::map<int, int> width;                              // attempt -> world size
  int resized_from_1 = 0;
  for (const auto& e : d.AllEvents()) {
    if (e["stream"] != "run-" + run) continue;
    const Json& data = e["data"];
    const std::string type = e["type"];
    const uint64_t pos = e["position"];
    if (type == "GangResized" && data["attempt"] == 1) ++resized_from_1;
    if (type == "JobAssigned") {
      assigned[data["attempt"]] = pos;
      width[data["attempt"]] = static_cast<int>(data["placements"].size());
    }
    if (type == "JobStarted" && data.contains("rank")) ++started[{data["attempt"], data["rank"]}];
    if (type == "JobWorkerFinished") {
      ++finished[{data["attempt"], data["rank"]}];
      uint64_t& last = last_finished[data["attempt"]];
      last = std::max(last, pos);
    }
  }
  EXPECT_EQ(resized_from_1, 1);
  ASSERT_GE(assigned.size(), 2u);
  EXPECT_EQ(width[1], 2);
  EXPECT_EQ(width[2], 3);
  for (const auto& [n, pos] : assigned) {
    for (int rank = 0; rank < width[n]; ++rank) {
      EXPECT_EQ((started[{n, rank}]), 1) << "attempt " << n << " rank " << rank;
      EXPECT_EQ((finished[{n, rank}]), 1) << "attempt " << n << " rank " << rank;
    }
    if (n > 1) {
      EXPECT_LT(last_finished[n - 1], pos) << "attempt " << n << " overlaps " << n - 1;
    }
  }
  Json all = r["steps"][0]["attempts"];
  EXPECT_EQ(all[0]["reason"], "resized to 3 workers");
  EXPECT_EQ(all.back()["state"], "succeeded");
}

}  // namespace
}  // namespace epoch::testing
