// The container pool end to end: demand-driven scaling in allocation units, idle
// release, GPU isolation with simulated GPUs, unschedulable requests.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "common/clock.h"
#include "tests/harness.h"

namespace epoch::testing {
namespace {

using namespace std::chrono_literals;

Json Items(Epochd& d, const std::string& path) {
  auto r = d.Get(path);
  EXPECT_EQ(r.status, 200) << r.body;
  Json j = r.json();
  return j["items"];
}

std::string Slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

TEST(PoolE2ETest, BurstScalesInUnitsPerIntervalThenIdleContainersAreReleased) {
  TempDir dir;
  Epochd d(dir.path(), {"sig.minReplicas=0", "sig.maxReplicas=5", "sig.ssAllocationUnit=2",
                        "sig.ssAllocationInterval=1s", "sig.idleTimeout=2s", "sig.cpu=1"});
  d.Start();
  EXPECT_TRUE(Items(d, "/v1/containers").empty());  // no demand, no containers
  ASSERT_EQ(d.PostJson("/v1/workflows", Json::parse(R"({"name": "burst", "steps": [
      {"name": "a", "command": ["sleep", "1"], "resources": {"cpu": "1"}}]})")).status, 201);
  std::vector<std::string> runs;
  for (int i = 0; i < 20; ++i) {
    auto r = d.PostJson("/v1/runs", Json{{"workflow", "burst"}});
    ASSERT_EQ(r.status, 201) << r.body;
    runs.push_back(r.json()["id"]);
  }
  for (const auto& id : runs) ASSERT_EQ(d.WaitForRun(id, 60s)["state"], "succeeded") << id;
  Json requested = Items(d, "/v1/events?type=ContainerRequested");
  ASSERT_EQ(requested.size(), 5u) << requested.dump(2);
  // Rounds: events committed together share a time.
  std::map<std::string, int> rounds;
  for (const auto& e : requested) {
    EXPECT_EQ(e["data"]["reason"], "demand");
    rounds[e["time"]]++;
  }
  std::vector<int> sizes;
  std::vector<TimePoint> times;
  for (const auto& [t, n] : rounds) {
    sizes.push_back(n);
    times.push_back(*ParseTime(t));
  }
  EXPECT_EQ(sizes, (std::vector<int>{2, 2, 1}));
  for (size_t i = 1; i < times.size(); ++i) {
    EXPECT_GE(times[i] - times[i - 1], std::chrono::seconds(1)) << "rounds closer than the interval";
  }
  // Idle for 2 s: every container is released and its agent exits.
  ASSERT_TRUE(WaitFor([&] { return Items(d, "/v1/events?type=ContainerReleased").size() == 5; },
                      15000ms));
  for (const auto& e : Items(d, "/v1/events?type=ContainerReleased")) {
    EXPECT_NE(e["data"]["reason"].get<std::string>().find("idle"), std::string::npos);
  }
  EXPECT_TRUE(WaitFor([&] { return d.AgentPids().empty(); }, 15000ms));
  EXPECT_TRUE(Items(d, "/v1/containers").empty());
}

TEST(PoolE2ETest, GpusAreIsolatedPerAttempt) {
  TempDir dir;
  setenv("EPOCH_FAKE_GPUS", "4", 1);
  Epochd d(dir.path(), {"sig.minReplicas=2", "sig.maxReplicas=2", "sig.gpu=4", "sig.cpu=4"});
  d.Start();
  unsetenv("EPOCH_FAKE_GPUS");
  ASSERT_TRUE(WaitFor([&] {
    Json cs = Items(d, "/v1/containers");
    int n = 0;
    for (const auto& c : cs) n += c["state"] == "registered" && c["gpus"].size() == 4;
    return n == 2;
  }, 15000ms));
  for (const auto& c : Items(d, "/v1/containers")) {
    EXPECT_EQ(c["gpus"][0]["simulated"], true) << c.dump();
  }
  const char* kStep = R"J({"name": "%s", "steps": [{"name": "a", "resources": {"gpus": %d, "cpu": "100m"},
      "command": ["sh", "-c", "echo $CUDA_VISIBLE_DEVICES > {{workspace}}/cvd; sleep 0.4"]}]})J";
  char buf[512];
  for (int g : {1, 2}) {
    std::snprintf(buf, sizeof(buf), kStep, g == 1 ? "one" : "two", g);
    ASSERT_EQ(d.PostJson("/v1/workflows", Json::parse(buf)).status, 201);
  }
  // More than can run at once: 12 jobs want 18 GPUs, the pool has 8.
  std::vector<std::string> runs;
  for (int i = 0; i < 12; ++i) {
    auto r = d.PostJson("/v1/runs", Json{{"workflow", i % 2 ? "two" : "one"}});
    ASSERT_EQ(r.status, 201) << r.body;
    runs.push_back(r.json()["id"]);
  }
  struct Use {
    std::string container;
    std::set<std::string> gpus;
    TimePoint start, end;
  };
  std::vector<Use> uses;
  for (const auto& id : runs) {
    Json r = d.WaitForRun(id, 60s);
    ASSERT_EQ(r["state"], "succeeded") << r.dump(2);
    const Json& a = r["steps"][0]["attempts"][0];
    Use u;
    u.container = a["container"];
    std::string visible;
    for (const auto& g : a["gpus"]) {
      u.gpus.insert(g.get<std::string>());
      visible += (visible.empty() ? "" : ",") + g.get<std::string>();
    }
    EXPECT_EQ(u.gpus.size(), r["workflow"] == "two" ? 2u : 1u);
    EXPECT_EQ(a["gpu_uuids"].size(), u.gpus.size());
    // What the step saw is exactly what it was given.
    EXPECT_EQ(Slurp(dir.path() + "/runs/" + id + "/cvd"), visible + "\n");
    u.start = *ParseTime(a["started_at"].get<std::string>());
    u.end = *ParseTime(a["finished_at"].get<std::string>());
    uses.push_back(u);
  }
  for (size_t i = 0; i < uses.size(); ++i) {
    for (size_t j = i + 1; j < uses.size(); ++j) {
      const Use &a = uses[i], &b = uses[j];
      bool overlap = a.start < b.end && b.start < a.end;
      if (!overlap || a.container != b.container) continue;
      for (const auto& g : a.gpus) {
        EXPECT_FALSE(b.gpus.count(g)) << "GPU " << g << " on " << a.container << " shared";
      }
    }
  }
  // Asking for more GPUs than any container has is refused at submission.
  uint64_t head = d.Head();
  auto bad = d.PostJson("/v1/runs", Json::parse(R"({"definition": {"name": "huge", "steps": [
      {"name": "a", "command": ["x"], "resources": {"gpus": 5}}]}})"));
  EXPECT_EQ(bad.status, 422) << bad.body;
  EXPECT_NE(bad.body.find("resources.gpus"), std::string::npos) << bad.body;
  EXPECT_EQ(d.Head(), head);
}

TEST(PoolE2ETest, GangWaitsForRoomRunsEveryRankAndRetriesAsAWhole) {
  TempDir dir;
  setenv("EPOCH_FAKE_GPUS", "1", 1);
  Epochd d(dir.path(), {"sig.minReplicas=2", "sig.maxReplicas=3", "sig.gpu=1", "sig.cpu=1",
                        "sig.ssAllocationUnit=1", "sig.ssAllocationInterval=0s"});
  d.Start();
  unsetenv("EPOCH_FAKE_GPUS");
  // Attempt 1: rank 1 fails at once while the others would sleep for a day; the
  // step retries as a whole and attempt 2 succeeds.
  auto reg = d.PostJson("/v1/workflows", Json::parse(R"J({"name": "ddp", "steps": [
      {"name": "train", "kind": "train", "workers": 3,
       "resources": {"gpus": 1, "cpu": "500m"}, "retry": {"limit": 1, "initial": "200ms"},
       "command": ["sh", "-c", "echo $RANK $WORLD_SIZE $LOCAL_RANK $MASTER_ADDR $MASTER_PORT $CUDA_VISIBLE_DEVICES > {{workspace}}/rank-$RANK-$EPOCH_ATTEMPT; if [ $EPOCH_ATTEMPT = 1 ]; then if [ $RANK = 1 ]; then exit 1; fi; sleep 100000; fi"]}]})J"));
  ASSERT_EQ(reg.status, 201) << reg.body;
  auto sub = d.PostJson("/v1/runs", Json{{"workflow", "ddp"}});
  ASSERT_EQ(sub.status, 201) << sub.body;
  std::string run = sub.json()["id"];
  // The survivors of attempt 1 sleep for a day unless stopped: the run can succeed in
  // this minute only if they were.
  Json r = d.WaitForRun(run, 60s);
  ASSERT_EQ(r["state"], "succeeded") << r.dump(2);
  const Json& attempts = r["steps"][0]["attempts"];
  ASSERT_EQ(attempts.size(), 2u);
  EXPECT_EQ(attempts[0]["state"], "failed");
  EXPECT_NE(attempts[0]["reason"].get<std::string>().find("worker 1"), std::string::npos);
  ASSERT_EQ(attempts[1]["workers"].size(), 3u);
  std::set<std::string> containers;
  std::string port;
  for (int rank = 0; rank < 3; ++rank) {
    const Json& w = attempts[1]["workers"][rank];
    EXPECT_EQ(w["state"], "succeeded");
    containers.insert(w["container"]);
    std::istringstream line(Slurp(dir.path() + "/runs/" + run + "/rank-" + std::to_string(rank) + "-2"));
    std::string r_, world, local, addr, p, cvd;
    line >> r_ >> world >> local >> addr >> p >> cvd;
    EXPECT_EQ(r_, std::to_string(rank));
    EXPECT_EQ(world, "3");
    EXPECT_EQ(local, "0");
    EXPECT_FALSE(addr.empty());
    EXPECT_EQ(cvd, "0");  // each container has one simulated GPU
    if (rank == 0) port = p;
    EXPECT_EQ(p, port);
  }
  // Three containers: the gang waited for the pool to add the third.
  EXPECT_EQ(containers.size(), 3u);
  Json requested = Items(d, "/v1/events?type=ContainerRequested");
  ASSERT_EQ(requested.size(), 3u);
  EXPECT_EQ(requested[2]["data"]["reason"], "demand");
}

// tenants.<name>.maxGpus end to end, with two tenants (operators' tokens): ml may
// hold one GPU. On a container of three, ml's two one-GPU steps run one after the
// other although a GPU stays free, cv's step runs beside them, and ml's waiting
// step does not make the pool grow.
TEST(PoolE2ETest, ATenantAtItsGpuQuotaWaitsWhileAnotherTenantRuns) {
  TempDir dir;
  setenv("EPOCH_FAKE_GPUS", "3", 1);
  Epochd d(dir.path(), {"sig.minReplicas=1", "sig.maxReplicas=3", "sig.gpu=3", "sig.cpu=2",
                        "sig.ssAllocationUnit=1", "sig.ssAllocationInterval=0s",
                        "tenants.ml.maxGpus=1"});
  d.Start();
  unsetenv("EPOCH_FAKE_GPUS");
  std::map<std::string, std::string> token{
      {"ml", AddToken(d.data_dir(), "alice", "ml", "operator")},
      {"cv", AddToken(d.data_dir(), "bob", "cv", "operator")}};
  ASSERT_TRUE(WaitFor([&] {
    Json cs = Items(d, "/v1/containers");
    return cs.size() == 1 && cs[0]["state"] == "registered" && cs[0]["gpus"].size() == 3;
  }, 15000ms));
  // Each step writes when it starts and ends (ns since the epoch) into its workspace.
  Json def = Json::parse(R"J({"name": "", "steps": [
      {"name": "a", "resources": {"gpus": 1, "cpu": "100m"},
       "command": ["sh", "-c", "date +%s%N > {{workspace}}/start; sleep 2; date +%s%N > {{workspace}}/end"]}]})J");
  auto submit = [&](const std::string& tenant) {
    auto r = HttpCall(d.url(), "POST", "/v1/runs",
                      Json{{"workflow", tenant + "-train"}}.dump(), token[tenant]);
    EXPECT_EQ(r.status, 201) << r.body;
    return r.json().value("id", "");
  };
  for (const std::string tenant : {"ml", "cv"}) {
    def["name"] = tenant + "-train";
    auto r = HttpCall(d.url(), "POST", "/v1/workflows", def.dump(), token[tenant]);
    ASSERT_EQ(r.status, 201) << r.body;
  }
  std::string ml0 = submit("ml"), ml1 = submit("ml"), cv0 = submit("cv");
  std::map<std::string, std::pair<int64_t, int64_t>> span;
  for (const auto& id : {ml0, ml1, cv0}) {
    Json r = d.WaitForRun(id, 60s);
    ASSERT_EQ(r["state"], "succeeded") << r.dump(2);
    EXPECT_EQ(r["tenant"], id == cv0 ? "cv" : "ml");
    EXPECT_EQ(r["steps"][0]["attempts"][0]["gpus"].size(), 1u);
    std::string ws = dir.path() + "/runs/" + id;
    span[id] = {std::stoll(Slurp(ws + "/start")), std::stoll(Slurp(ws + "/end"))};
  }
  auto overlap = [&](const std::string& a, const std::string& b) {
    return span[a].first < span[b].second && span[b].first < span[a].second;
  };
  auto show = [&](const std::string& id) {
    return "[" + std::to_string(span[id].first) + ", " + std::to_string(span[id].second) + "]";
  };
  // ml never held two GPUs, though the third was free all along.
  EXPECT_FALSE(overlap(ml0, ml1)) << "ml's steps overlapped: " << show(ml0) << " " << show(ml1);
  // cv, under no quota, ran beside ml.
  EXPECT_TRUE(overlap(cv0, ml0)) << "cv " << show(cv0) << " ml " << show(ml0);
  // ml's waiting step was no demand: only the minReplicas container was asked for.
  Json requested = Items(d, "/v1/events?type=ContainerRequested");
  ASSERT_EQ(requested.size(), 1u) << requested.dump(2);
  EXPECT_EQ(requested[0]["data"]["reason"], "minReplicas");
}

}  // namespace
}  // namespace epoch::testing
