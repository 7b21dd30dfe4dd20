// Live metrics and checkpoints end to end, on a real epochd with real agents: points a
// running step appends to $EPOCH_METRICS are served while it runs, survive a master
// kill -9, and are capped (counted, never silently) with the master's memory bounded;
// lines that are not metrics are skipped and counted; a step killed with its container
// (or timed out) resumes on its next attempt from the last checkpoint it declared, and
// the attempt's record says which.
#include <gtest/gtest.h>
#include <signal.h>

#include <cstdlib>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "common/json.h"
#include "tests/harness.h"

namespace epoch::testing {
namespace {

using namespace std::chrono_literals;

// VmRSS of a process, in KiB (0 when unknown).
int64_t RssKiB(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::atoll(line.c_str() + 6);
  }
  return 0;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

Json Metrics(Epochd& d, const std::string& run, const std::string& query = "") {
  HttpResult r = d.Get("/v1/runs/" + run + "/steps/train/metrics" + query);
  EXPECT_EQ(r.status, 200) << r.body;
  return r.status == 200 ? r.json() : Json::object();
}

// The points of series `name` (attempt `attempt`), as [[x, y], ...].
Json Series(const Json& m, const std::string& name, int attempt = 1) {
  for (const auto& s : m.value("series", Json::array())) {
    if (s["name"] == name && s["attempt"] == attempt) return s["points"];
  }
  return Json::array();
}

class LiveMetricsE2ETest : public ::testing::Test {
 protected:
  TempDir dir_;
};

// A step writes a point every 100 ms for a few seconds: the API has at least three of
// them while it still runs; after a master kill -9 and restart the series is intact
// and goes on; at the end it holds every point, in order, and the step's metrics hold
// each series' last value (metrics.json wins where it names one).
TEST_F(LiveMetricsE2ETest, PointsAreServedWhileRunningAndSurviveAMasterKill) {
  std::string data = dir_.path() + "/data";
  std::vector<std::string> cfg = {"executor.metricsInterval=200ms", "executor.leaseTime=10s"};
  Epochd d(data, cfg);
  d.Start();
  std::string run = d.RegisterAndSubmit(Json::parse(R"({"name": "curve", "steps": [
      {"name": "train", "kind": "train", "command": ["sh", "-c",
       "for i in $(seq 1 60); do echo \"{\\\"step\\\": $i, \\\"loss\\\": $((1000 - i)), \\\"lr\\\": 0.5}\" >> $EPOCH_METRICS; sleep 0.1; done; echo '{\"lr\": 0.25}' > $EPOCH_OUTPUTS/metrics.json"]}]})"));
  Json running;
  ASSERT_TRUE(WaitFor(
      [&] {
        running = Metrics(d, run, "?name=loss");
        return Series(running, "loss").size() >= 3;
      },
      20s))
      << running.dump();
  EXPECT_EQ(d.Get("/v1/runs/" + run).json()["state"], "running") << "points came before the end";
  Json first = Series(running, "loss");
  EXPECT_EQ(first[0], Json::array({1, 999}));
  EXPECT_EQ(first[1], Json::array({2, 998}));

  d.Kill9();
  Epochd again(data, cfg);
  again.Start();
  Json after = Series(Metrics(again, run, "?name=loss"), "loss");
  ASSERT_GE(after.size(), first.size()) << "the series survived the restart";
  for (size_t i = 0; i < first.size(); ++i) EXPECT_EQ(after[i], first[i]) << i;
  EXPECT_EQ(again.WaitForRun(run)["state"], "succeeded");
  Json done = Metrics(again, run);
  Json loss = Series(done, "loss");
  ASSERT_EQ(loss.size(), 60u) << done.dump();
  for (int i = 0; i < 60; ++i) EXPECT_EQ(loss[i], Json::array({i + 1, 999 - i})) << i;
  EXPECT_EQ(done["last"]["loss"], 940);
  Json step = again.Get("/v1/runs/" + run).json()["steps"][0];
  EXPECT_EQ(step["metrics"]["loss"], 940) << "the last live value is the step's metric";
  EXPECT_EQ(step["metrics"]["lr"], 0.25) << "metrics.json wins";
  EXPECT_EQ(step["attempts"][0]["live_metrics"][0]["points"], 60);
  EXPECT_EQ(step["attempts"][0]["live_metrics"][0]["truncated"], false);

  // Followed (SSE): every batch as an event with its position, to the run's end; and
  // resumed after one of them, only what came later.
  HttpResult all = again.Get("/v1/runs/" + run + "/steps/train/metrics?follow=true");
  ASSERT_EQ(all.status, 200) << all.body;
  std::vector<uint64_t> ids;
  int64_t streamed = 0;
  std::istringstream lines(all.body);
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind("id: ", 0) == 0) ids.push_back(std::stoull(line.substr(4)));
    if (line.rfind("data: ", 0) == 0) {
      Json e = Json::parse(line.substr(6));
      EXPECT_EQ(e["type"], "MetricsRecorded");
      streamed += static_cast<int64_t>(e["data"]["points"].size());
    }
  }
  ASSERT_GE(ids.size(), 2u) << all.body;
  EXPECT_EQ(streamed, 60);
  HttpResult rest = again.Get("/v1/runs/" + run +
                              "/steps/train/metrics?follow=true&after=" + std::to_string(ids[0]));
  ASSERT_EQ(rest.status, 200) << rest.body;
  EXPECT_EQ(rest.body.find("id: " + std::to_string(ids[0]) + "\n"), std::string::npos);
  EXPECT_NE(rest.body.find("id: " + std::to_string(ids[1]) + "\n"), std::string::npos);
}

// A million points against a cap of 5,000: the series keeps the first 5,000, counts
// the rest as dropped and says it is truncated; the master's memory does not grow
// with what the step wrote. Lines that are not metrics are skipped and counted, and
// fail nothing.
TEST_F(LiveMetricsE2ETest, AMillionPointsAreCappedAndBadLinesCounted) {
  // A lease of 10 s, not the harness's 2 s: with another test hashing 10 GB beside it
  // (ctest -j2), c1 once went 2 s without a poll while the flood was read, was
  // declared lost, and the step failed with container_lost.
  Epochd d(dir_.path() + "/data", {"executor.metricsMaxPoints=5000",
                                   "executor.metricsInterval=200ms", "executor.leaseTime=10s"});
  d.Start();
  int64_t rss_before = RssKiB(d.pid());
  std::string script =
      R"S(printf '%s\n' 'not json' '[1, 2]' '{"loss": "high", "ok": 1}' '{"NAME": 1, "ok": 2}' >> $EPOCH_METRICS; seq 1 1000000 | awk '{print "{\"step\": " $1 ", \"loss\": 0.5}"}' >> $EPOCH_METRICS)S";
  script.replace(script.find("NAME"), 4, std::string(129, 'n'));
  Json def = Json::parse(R"({"name": "flood", "steps": [{"name": "train", "kind": "train"}]})");
  def["steps"][0]["command"] = Json::array({"sh", "-c", script});
  std::string run = d.RegisterAndSubmit(def);
  Json r = d.WaitForRun(run, 120s);
  EXPECT_EQ(r["state"], "succeeded") << r.dump();
  Json live;
  ASSERT_TRUE(WaitFor(
      [&] {
        live = d.Get("/v1/runs/" + run).json()["steps"][0]["attempts"][0]["live_metrics"][0];
        return live.value("dropped", 0) + live.value("points", 0) >= 1000002;
      },
      60s))
      << live.dump();
  EXPECT_EQ(live["points"], 5000);
  EXPECT_EQ(live["dropped"], 1000002 - 5000);
  EXPECT_EQ(live["truncated"], true);
  // Skipped: 2 lines that are not objects, a string value, a 129-byte name.
  EXPECT_EQ(live["skipped"], 4);
  Json m = Metrics(d, run, "?name=ok");
  EXPECT_EQ(Series(m, "ok"), Json::parse("[[0, 1], [1, 2]]"));
  EXPECT_EQ(Series(Metrics(d, run, "?name=loss"), "loss").size(), 4998u);
  int64_t rss_after = RssKiB(d.pid());
  EXPECT_LT(rss_after - rss_before, 64 * 1024) << "KiB: " << rss_before << " -> " << rss_after;
}

// A training that checkpoints after each of 5 epochs (3 s each) and resumes from
// checkpoint.json. `mode`: what ends its first attempt in epoch 3.
constexpr const char* kEpochs = R"(
start=1
if [ -f "$EPOCH_CHECKPOINT_DIR/checkpoint.json" ]; then
  last=$(sed 's/.*"epoch": *\([0-9]*\).*/\1/' "$EPOCH_CHECKPOINT_DIR/checkpoint.json")
  start=$((last + 1))
  echo "resumed from epoch-$last.pt at epoch $start"
fi
for e in $(seq $start 5); do
  sleep 3
  echo "weights $e" > "$EPOCH_CHECKPOINT_DIR/.epoch-$e.pt" && mv "$EPOCH_CHECKPOINT_DIR/.epoch-$e.pt" "$EPOCH_CHECKPOINT_DIR/epoch-$e.pt"
  echo "{\"file\": \"epoch-$e.pt\", \"epoch\": $e}" > "$EPOCH_CHECKPOINT_DIR/.c" && mv "$EPOCH_CHECKPOINT_DIR/.c" "$EPOCH_CHECKPOINT_DIR/checkpoint.json"
  echo "{\"epoch\": $e, \"loss\": 0.$((9 - e))}" >> "$EPOCH_METRICS"
  echo "epoch $e done"
done
)";

Json TrainingDef(const std::string& name, const std::string& extra) {
  Json def = Json::parse(R"({"steps": [{"name": "train", "kind": "train",
      "retry": {"limit": 3, "backoff": "fixed", "initial": "100ms"}}]})");
  def["name"] = name;
  def["steps"][0]["command"] = Json::array({"sh", "-c", kEpochs});
  if (!extra.empty()) def["steps"][0]["timeout"] = extra;
  return def;
}

// The epoch of the step's latest recorded checkpoint (0: none).
int CheckpointEpoch(Epochd& d, const std::string& run) {
  Json step = d.Get("/v1/runs/" + run).json()["steps"][0];
  if (!step.contains("checkpoints")) return 0;
  return step["checkpoints"]["step"].value("epoch", 0);
}

void ExpectResumedFromEpoch2(Epochd& d, const std::string& run) {
  Json r = d.WaitForRun(run, 120s);
  ASSERT_EQ(r["state"], "succeeded") << r.dump();
  Json attempts = r["steps"][0]["attempts"];
  ASSERT_GE(attempts.size(), 2u) << r.dump();
  EXPECT_FALSE(attempts[0].contains("resumed_from"));
  EXPECT_EQ(attempts[1]["resumed_from"]["file"], "epoch-2.pt") << attempts[1].dump();
  EXPECT_EQ(attempts[1]["resumed_from"]["epoch"], 2);
  EXPECT_EQ(attempts[1]["resumed_from"]["attempt"], 1);
  EXPECT_EQ(attempts[1]["resumed_from"]["sha256"].get<std::string>().size(), 64u);
  std::string log = ReadFile(d.data_dir() + "/logs/" + run + "/train/2.log");
  EXPECT_NE(log.find("resumed from epoch-2.pt at epoch 3"), std::string::npos) << log;
  EXPECT_EQ(log.find("epoch 2 done"), std::string::npos) << log;
  EXPECT_NE(log.find("epoch 3 done"), std::string::npos) << log;
}

// kill -9 of the container (its agent and the step) in the middle of epoch 3: the
// attempt is lost, the retry resumes from the epoch-2 checkpoint and the run succeeds.
TEST_F(LiveMetricsE2ETest, AKilledContainersStepResumesFromItsLastCheckpoint) {
  Epochd d(dir_.path() + "/data",
           {"executor.leaseTime=2s", "executor.metricsInterval=200ms", "sig.maxReplicas=2"});
  d.Start();
  std::string run = d.RegisterAndSubmit(TrainingDef("resume", ""));
  ASSERT_TRUE(WaitFor([&] { return CheckpointEpoch(d, run) >= 2; }, 30s));
  ASSERT_EQ(CheckpointEpoch(d, run), 2) << "killed in epoch 3";
  for (pid_t p : d.AgentPids()) KillProcessTree(p);
  ExpectResumedFromEpoch2(d, run);
  Json first = d.Get("/v1/runs/" + run).json()["steps"][0]["attempts"][0];
  EXPECT_EQ(first["state"], "lost") << first.dump();
}

// A timeout in epoch 3 (at 7 s): the retry resumes from the epoch-2 checkpoint.
TEST_F(LiveMetricsE2ETest, ATimedOutStepResumesFromItsLastCheckpoint) {
  Epochd d(dir_.path() + "/data", {"executor.metricsInterval=200ms"});
  d.Start();
  std::string run = d.RegisterAndSubmit(TrainingDef("timeout", "7s"));
  ExpectResumedFromEpoch2(d, run);
  Json first = d.Get("/v1/runs/" + run).json()["steps"][0]["attempts"][0];
  EXPECT_EQ(first["state"], "timed_out") << first.dump();
}

// A step that checkpoints when it is told to stop (SIGTERM, then executor.killGrace
// before SIGKILL): timed out in the middle of epoch 3, it saves where it was, and the
// retry resumes from that checkpoint rather than from epoch 2's.
constexpr const char* kGraceful = R"SH(
ck="$EPOCH_CHECKPOINT_DIR"
if [ -f "$ck/checkpoint.json" ]; then
  f=$(sed 's/.*"file": *"\([^"]*\)".*/\1/' "$ck/checkpoint.json")
  echo "resumed from $(cat "$ck/$f")"
  exit 0
fi
e=1; b=0
trap 'echo "epoch $e batch $b" > "$ck/term.pt"; echo "{\"file\": \"term.pt\", \"epoch\": $((e - 1))}" > "$ck/.c"; mv "$ck/.c" "$ck/checkpoint.json"; echo "saved on SIGTERM"; exit 143' TERM
while [ $e -le 5 ]; do
  b=0
  while [ $b -lt 15 ]; do sleep 0.2; b=$((b + 1)); done
  echo "epoch $e done"; e=$((e + 1))
done
)SH";

TEST_F(LiveMetricsE2ETest, AStepThatCheckpointsOnSigtermResumesFromThere) {
  Epochd d(dir_.path() + "/data", {"executor.metricsInterval=200ms"});
  d.Start();
  Json def = TrainingDef("graceful", "7s");
  def["steps"][0]["command"] = Json::array({"sh", "-c", kGraceful});
  std::string run = d.RegisterAndSubmit(def);
  Json r = d.WaitForRun(run, 60s);
  ASSERT_EQ(r["state"], "succeeded") << r.dump();
  Json attempts = r["steps"][0]["attempts"];
  ASSERT_EQ(attempts.size(), 2u) << r.dump();
  EXPECT_EQ(attempts[0]["state"], "timed_out");
  EXPECT_EQ(attempts[1]["resumed_from"]["file"], "term.pt") << attempts[1].dump();
  EXPECT_EQ(attempts[1]["resumed_from"]["epoch"], 2);
  std::string first = ReadFile(d.data_dir() + "/logs/" + run + "/train/1.log");
  EXPECT_NE(first.find("saved on SIGTERM"), std::string::npos) << first;
  std::string second = ReadFile(d.data_dir() + "/logs/" + run + "/train/2.log");
  EXPECT_NE(second.find("resumed from epoch 3 batch "), std::string::npos) << second;
}

// A gang of two: rank 1's container dies (agent and step, kill -9) in epoch 3. Rank
// 0 is stopped, the gang is placed again, both ranks resume from the epoch-2
// checkpoint rank 0 saved, and the run succeeds.
TEST_F(LiveMetricsE2ETest, AGangWhoseRankDiesRestartsFromTheLastCheckpoint) {
  Epochd d(dir_.path() + "/data", {"executor.leaseTime=2s", "executor.metricsInterval=200ms",
                                   "sig.maxReplicas=4", "sig.cpu=1"});
  d.Start();
  Json def = TrainingDef("gang", "");
  def["steps"][0]["workers"] = 2;
  def["steps"][0]["resources"] = Json{{"cpu", "1"}};
  // Only rank 0 writes checkpoints; both ranks resume from them.
  std::string script = kEpochs;
  script.replace(script.find("  echo \"weights"), 0, "  if [ \"$RANK\" = 0 ]; then\n");
  script.replace(script.find("  echo \"{\\\"epoch\\\""), 0, "  fi\n");
  def["steps"][0]["command"] = Json::array({"sh", "-c", script});
  std::string run = d.RegisterAndSubmit(def);
  ASSERT_TRUE(WaitFor([&] { return CheckpointEpoch(d, run) >= 2; }, 40s));
  ASSERT_EQ(CheckpointEpoch(d, run), 2) << "killed in epoch 3";
  Json workers = d.Get("/v1/runs/" + run).json()["steps"][0]["attempts"][0]["workers"];
  ASSERT_EQ(workers.size(), 2u) << workers.dump();
  std::string rank1 = workers[1]["container"];
  ASSERT_NE(rank1, workers[0]["container"].get<std::string>()) << "one rank per container";
  for (pid_t p : d.AgentPids()) {
    if (AgentContainerId(p) == rank1) KillProcessTree(p);
  }
  Json r = d.WaitForRun(run, 120s);
  ASSERT_EQ(r["state"], "succeeded") << r.dump();
  Json attempts = r["steps"][0]["attempts"];
  ASSERT_GE(attempts.size(), 2u) << r.dump();
  EXPECT_EQ(attempts[0]["workers"][1]["state"], "lost") << attempts[0].dump();
  EXPECT_EQ(attempts[1]["resumed_from"]["file"], "epoch-2.pt") << attempts[1].dump();
  for (const char* log : {"/train/2.log", "/train/2.1.log"}) {
    std::string text = ReadFile(d.data_dir() + "/logs/" + run + log);
    EXPECT_NE(text.find("resumed from epoch-2.pt at epoch 3"), std::string::npos) << log << text;
    EXPECT_NE(text.find("epoch 5 done"), std::string::npos) << log << text;
  }
}

}  // namespace
}  // namespace epoch::testing
