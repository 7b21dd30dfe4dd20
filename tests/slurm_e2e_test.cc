// executor.backend=slurm end to end, against the real Slurm daemons that
// tests/slurm/cluster.sh starts (CTest's `slurm` fixture starts and stops it): every
// container is a Slurm job running epoch-agent.
//
// Without a running test cluster these tests skip and say how to start one, unless
// EPOCH_REQUIRE_SLURM=1 (CI sets it), which makes a missing cluster a failure.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <thread>

#include "common/clock.h"
#include "tests/harness.h"

namespace epoch::testing {
namespace {

using namespace std::chrono_literals;

std::string Slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string Trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

// The client environment of the test cluster, from its env.sh; "" when it runs.
std::string LoadSlurmEnv() {
  const char* d = std::getenv("EPOCH_SLURM_DIR");
  std::string dir = d && *d ? d : "/tmp/epoch-slurm-" + std::to_string(getuid());
  std::ifstream in(dir + "/env.sh");
  if (!in) {
    return "no Slurm test cluster in " + dir +
           " (start one with `tests/slurm/cluster.sh start`, which needs the Debian "
           "packages slurm-wlm and munge; `ctest` starts it through the slurm fixture)";
  }
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("export ", 0) != 0) continue;
    auto eq = line.find('=');
    setenv(line.substr(7, eq - 7).c_str(), line.substr(eq + 1).c_str(), 1);
  }
  std::string out;
  if (RunCommand("scontrol ping", &out) != 0 || out.find("is UP") == std::string::npos) {
    return "the Slurm test cluster in " + dir + " does not answer: " + out;
  }
  return "";
}

// Slurm jobs in the queue: job id -> "name state".
std::map<std::string, std::string> Squeue() {
  std::string out;
  RunCommand("squeue -h -o '%i %j %T'", &out);
  std::map<std::string, std::string> jobs;
  std::istringstream in(out);
  std::string id, name, state;
  while (in >> id >> name >> state) jobs[id] = name + " " + state;
  return jobs;
}

void CancelAllJobs() {
  std::string out;
  RunCommand("scancel -u \"$(id -un)\"", &out);
  WaitFor([] { return Squeue().empty(); }, 30000ms);
}

class SlurmTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why = LoadSlurmEnv();
    if (!why.empty()) {
      const char* req = std::getenv("EPOCH_REQUIRE_SLURM");
      if (req && std::string(req) == "1") FAIL() << "EPOCH_REQUIRE_SLURM=1 but " << why;
      GTEST_SKIP() << why;
    }
    CancelAllJobs();
  }
  void TearDown() override {
    if (!IsSkipped()) CancelAllJobs();
    unsetenv("EPOCH_FAKE_GPUS");
  }

  static std::vector<std::string> Config(std::vector<std::string> extra) {
    std::vector<std::string> c = {"executor.backend=slurm", "executor.watchInterval=500ms",
                                  "sig.memory=512Mi", "executor.registerTimeout=60s"};
    for (auto& e : extra) c.push_back(std::move(e));
    return c;
  }

  Json Items(Epochd& d, const std::string& path) {
    auto r = d.Get(path);
    EXPECT_EQ(r.status, 200) << r.body;
    Json j = r.json();
    return j["items"];
  }

  TempDir dir_;
};

TEST_F(SlurmTest, TheCoreWorkflowRunsInContainersThatAreSlurmJobs) {
  Epochd d(dir_.path(), Config({"sig.cpu=1", "sig.maxReplicas=2", "sig.ssAllocationUnit=2"}));
  d.Start();
  Json def = Json::parse(R"J({"name": "lifecycle", "steps": [
      {"name": "prep", "kind": "data_prep", "dataset": {"name": "numbers"},
       "outputs": ["data.txt"], "command": ["sh", "-c", "seq 1 100 > $EPOCH_OUTPUTS/data.txt"]},
      {"name": "train", "kind": "train", "after": ["prep"], "model": {"name": "summer"},
       "outputs": ["model.txt"],
       "command": ["sh", "-c", "sleep 2; awk '{s+=$1} END {print s}' {{steps.prep.outputs.data.txt}} > $EPOCH_OUTPUTS/model.txt"]},
      {"name": "validate", "kind": "validate", "after": ["train"],
       "command": ["sh", "-c", "test $(cat {{steps.train.outputs.model.txt}}) = 5050 && echo '{\"accuracy\": 0.91}' > $EPOCH_OUTPUTS/metrics.json"]},
      {"name": "infer", "kind": "infer", "after": ["validate"],
       "command": ["sh", "-c", "echo inferred > {{workspace}}/out"]}]})J");
  std::string run = d.RegisterAndSubmit(def);
  std::string out = dir_.path() + "/runs/" + run + "/out";
  // While train runs, squeue lists the containers as Slurm jobs named after them.
  Json r = d.WaitForRunState(run, [](const Json& j) { return j["steps"][1]["state"] == "running"; });
  ASSERT_EQ(r["steps"][1]["state"], "running") << r.dump(2);
  std::map<std::string, std::string> jobs = Squeue();
  Json containers = Items(d, "/v1/containers");
  ASSERT_FALSE(containers.empty());
  for (const auto& c : containers) {
    EXPECT_EQ(c["backend"], "slurm");
    std::string handle = c["handle"];
    ASSERT_TRUE(jobs.count(handle)) << "container " << c.dump() << " is not in squeue";
    EXPECT_EQ(jobs[handle], "epoch-" + c["id"].get<std::string>() + " RUNNING");
  }
  r = d.WaitForRun(run, 60s);
  ASSERT_EQ(r["state"], "succeeded") << r.dump(2);
  EXPECT_EQ(r["steps"][2]["metrics"]["accuracy"], 0.91) << r.dump(2);
  EXPECT_EQ(Slurp(out), "inferred\n");
  // Each container is the job sbatch made of its job.sh, with its output in its dir.
  std::set<std::string> handles;
  for (const auto& c : Items(d, "/v1/containers?all=true")) {
    std::string cdir = dir_.path() + "/containers/" + c["id"].get<std::string>();
    handles.insert(c["handle"]);
    EXPECT_EQ(access((cdir + "/slurm-" + c["handle"].get<std::string>() + ".out").c_str(), F_OK), 0)
        << c.dump();
    EXPECT_NE(Slurp(cdir + "/job.sh").find("'--backend' 'slurm'"), std::string::npos);
  }
  // The job id is in the container's events, and its state in /v1/containers.
  Json launched = Items(d, "/v1/events?type=ContainerLaunched");
  ASSERT_FALSE(launched.empty());
  for (const auto& e : launched) EXPECT_TRUE(handles.count(e["data"]["handle"])) << e.dump();
  ASSERT_TRUE(WaitFor([&] {
    Json cs = Items(d, "/v1/containers");
    return !cs.empty() && cs[0].value("backend_state", "") == "RUNNING";
  }, 5000ms)) << Items(d, "/v1/containers").dump(2);
  // The agent nests its cgroups inside the job's (this cluster's slurmd runs jobs
  // without a cgroup plugin, so the job's cgroup is slurmd's, which root may write).
  for (const auto& c : Items(d, "/v1/containers")) {
    std::string mechanism = c["enforcement"].value("mechanism", "");
    EXPECT_TRUE(mechanism == "cgroup1" || mechanism == "cgroup2") << c.dump();
    EXPECT_EQ(c["enforcement"]["mode"], "auto") << c.dump();
  }
}

TEST_F(SlurmTest, GpusGrantedBySlurmAreIsolatedPerAttempt) {
  // The node has 4 (fake) GPUs; each container asks Slurm for 2 of them.
  setenv("EPOCH_FAKE_GPUS", "2", 1);
  Epochd d(dir_.path(), Config({"sig.minReplicas=2", "sig.maxReplicas=2", "sig.gpu=2", "sig.cpu=2"}));
  d.Start();
  ASSERT_TRUE(WaitFor([&] {
    Json cs = Items(d, "/v1/containers");
    int n = 0;
    for (const auto& c : cs) n += c["state"] == "registered" && c["gpus"].size() == 2;
    return n == 2;
  }, 30000ms)) << Items(d, "/v1/containers").dump(2);
  std::set<std::string> all_uuids;
  for (const auto& c : Items(d, "/v1/containers")) {
    for (const auto& g : c["gpus"]) all_uuids.insert(g["uuid"]);
  }
  EXPECT_EQ(all_uuids.size(), 4u) << "Slurm gave the two containers overlapping GPUs";
  ASSERT_EQ(d.PostJson("/v1/workflows", Json::parse(R"J({"name": "g", "steps": [{"name": "a",
      "resources": {"gpus": 1, "cpu": "100m"},
      "command": ["sh", "-c", "echo $CUDA_VISIBLE_DEVICES > {{workspace}}/cvd; sleep 0.5"]}]})J"))
                .status, 201);
  std::vector<std::string> runs;
  for (int i = 0; i < 8; ++i) {
    auto r = d.PostJson("/v1/runs", Json{{"workflow", "g"}});
    ASSERT_EQ(r.status, 201) << r.body;
    runs.push_back(r.json()["id"]);
  }
  struct Use {
    std::string uuid;
    TimePoint start, end;
  };
  std::vector<Use> uses;
  for (const auto& id : runs) {
    Json r = d.WaitForRun(id, 60s);
    ASSERT_EQ(r["state"], "succeeded") << r.dump(2);
    const Json& a = r["steps"][0]["attempts"][0];
    ASSERT_EQ(a["gpu_uuids"].size(), 1u) << a.dump();
    std::string uuid = a["gpu_uuids"][0];
    // The uuid names the node's device ordinal Slurm granted; the step saw exactly it.
    std::string ordinal = uuid.substr(uuid.rfind('-') + 1);
    EXPECT_EQ(Trim(Slurp(dir_.path() + "/runs/" + id + "/cvd")), ordinal) << uuid;
    uses.push_back({uuid, *ParseTime(a["started_at"].get<std::string>()),
                    *ParseTime(a["finished_at"].get<std::string>())});
  }
  for (size_t i = 0; i < uses.size(); ++i) {
    for (size_t j = i + 1; j < uses.size(); ++j) {
      bool overlap = uses[i].start < uses[j].end && uses[j].start < uses[i].end;
      if (overlap) {
        EXPECT_NE(uses[i].uuid, uses[j].uuid) << "one GPU ran two attempts at once";
      }
    }
  }
}

TEST_F(SlurmTest, ThePoolScalesUpInUnitsAndIdleContainersAreCancelled) {
  Epochd d(dir_.path(), Config({"sig.minReplicas=0", "sig.cpu=1", "sig.maxReplicas=4", "sig.ssAllocationUnit=2",
                                "sig.ssAllocationInterval=1s", "sig.idleTimeout=2s"}));
  d.Start();
  ASSERT_EQ(d.PostJson("/v1/workflows", Json::parse(R"J({"name": "burst", "steps": [
      {"name": "a", "command": ["sleep", "2"], "resources": {"cpu": "1"}}]})J")).status, 201);
  std::vector<std::string> runs;
  for (int i = 0; i < 8; ++i) {
    auto r = d.PostJson("/v1/runs", Json{{"workflow", "burst"}});
    ASSERT_EQ(r.status, 201) << r.body;
    runs.push_back(r.json()["id"]);
  }
  size_t peak = 0;
  ASSERT_TRUE(WaitFor([&] {
    size_t running = 0;
    for (const auto& [id, j] : Squeue()) running += j.find("RUNNING") != std::string::npos;
    peak = std::max(peak, running);
    return peak == 4;
  }, 30000ms)) << "peak " << peak;
  for (const auto& id : runs) ASSERT_EQ(d.WaitForRun(id, 60s)["state"], "succeeded") << id;
  Json requested = Items(d, "/v1/events?type=ContainerRequested");
  ASSERT_EQ(requested.size(), 4u) << requested.dump(2);
  std::map<std::string, int> rounds;
  for (const auto& e : requested) rounds[e["time"]]++;
  EXPECT_EQ(rounds.size(), 2u);
  for (const auto& [t, n] : rounds) EXPECT_EQ(n, 2) << t;
  // Idle for 2 s: all four are released and their Slurm jobs leave the queue.
  ASSERT_TRUE(WaitFor([&] { return Items(d, "/v1/events?type=ContainerReleased").size() == 4; },
                      20000ms))
      << Items(d, "/v1/containers?all=true").dump(2);
  EXPECT_TRUE(WaitFor([] { return Squeue().empty(); }, 20000ms)) << [] {
    std::string out;
    RunCommand("squeue; scontrol show job -o", &out);
    return out;
  }();
  EXPECT_TRUE(Items(d, "/v1/containers").empty());
}

TEST_F(SlurmTest, AContainerJobCancelledFromOutsideIsLostAndItsAttemptRetried) {
  Epochd d(dir_.path(), Config({"sig.cpu=1", "sig.maxReplicas=2", "sig.ssAllocationUnit=1",
                                "sig.ssAllocationInterval=1s"}));
  d.Start();
  Json def = Json::parse(R"J({"name": "victim", "steps": [{"name": "long",
      "retry": {"limit": 2, "backoff": "fixed", "initial": "100ms"}, "command": ["sleep", "4"]}]})J");
  std::string run = d.RegisterAndSubmit(def);
  Json r = d.WaitForRunState(run, [](const Json& j) { return j["steps"][0]["state"] == "running"; });
  ASSERT_EQ(r["steps"][0]["state"], "running") << r.dump(2);
  std::string container = r["steps"][0]["attempts"][0]["container"];
  std::string job;
  for (const auto& c : Items(d, "/v1/containers")) {
    if (c["id"] == container) job = c["handle"];
  }
  ASSERT_FALSE(job.empty());
  std::string out;
  ASSERT_EQ(RunCommand("scancel " + job, &out), 0) << out;
  r = d.WaitForRun(run, 60s);
  ASSERT_EQ(r["state"], "succeeded") << r.dump(2);
  const Json& attempts = r["steps"][0]["attempts"];
  ASSERT_GE(attempts.size(), 2u) << r.dump(2);
  EXPECT_NE(attempts[0]["state"], "succeeded");
  EXPECT_NE(attempts.back()["container"], container);
  Json lost = Items(d, "/v1/events?type=ContainerLost");
  bool found = false;
  for (const auto& e : lost) {
    if (e["data"]["container"] != container) continue;
    found = true;
    std::string reason = e["data"]["reason"];
    EXPECT_NE(reason.find("slurm job " + job + " CANCELLED"), std::string::npos) << reason;
  }
  EXPECT_TRUE(found) << lost.dump(2);
}

TEST_F(SlurmTest, AJobQueuedBehindOthersIsNotLostToTheRegisterTimeout) {
  // Someone else's job holds all 8 CPUs of the node for 6 s.
  std::string out;
  ASSERT_EQ(RunCommand("sbatch --parsable -c 8 --mem=1G -J outsider -o /dev/null --wrap 'sleep 6'", &out), 0)
      << out;
  ASSERT_TRUE(WaitFor([] {
    for (const auto& [id, j] : Squeue()) {
      if (j == "outsider RUNNING") return true;
    }
    return false;
  }, 10000ms));
  Epochd d(dir_.path(), Config({"sig.minReplicas=0", "sig.maxReplicas=1", "sig.cpu=1",
                                "executor.registerTimeout=2s"}));
  d.Start();
  std::string run = d.RegisterAndSubmit(
      Json::parse(R"J({"name": "patient", "steps": [{"name": "a", "command": ["true"]}]})J"));
  // The container's job waits (PENDING, reason Resources) longer than registerTimeout.
  ASSERT_TRUE(WaitFor([&] {
    Json cs = Items(d, "/v1/containers");
    return !cs.empty() && cs[0].value("backend_state", "") == "PENDING";
  }, 5000ms)) << Items(d, "/v1/containers").dump(2);
  Json r = d.WaitForRun(run, 60s);
  ASSERT_EQ(r["state"], "succeeded") << r.dump(2);
  EXPECT_TRUE(Items(d, "/v1/events?type=ContainerLost").empty())
      << Items(d, "/v1/events?type=ContainerLost").dump(2);
  EXPECT_EQ(Items(d, "/v1/events?type=ContainerRequested").size(), 1u);
  Json reg = Items(d, "/v1/events?type=ContainerRegistered");
  ASSERT_EQ(reg.size(), 1u);
  Json req = Items(d, "/v1/events?type=ContainerRequested");
  EXPECT_GT(*ParseTime(reg[0]["time"].get<std::string>()) - *ParseTime(req[0]["time"].get<std::string>()),
            std::chrono::seconds(2)) << "the job did not wait longer than registerTimeout";
}

TEST_F(SlurmTest, MoreGpusThanTheNodeHasIsUnschedulableNotRetriedForever) {
  // Containers of 8 GPUs; the only node has 4: sbatch refuses every one.
  Epochd d(dir_.path(), Config({"sig.gpu=8", "sig.cpu=1", "sig.minReplicas=0",
                                "sig.ssAllocationInterval=1s"}));
  d.Start();
  Json def = Json::parse(R"J({"name": "big", "steps": [{"name": "train",
      "retry": {"limit": 3, "backoff": "fixed", "initial": "100ms"},
      "resources": {"gpus": 8}, "command": ["true"]}]})J");
  std::string run = d.RegisterAndSubmit(def);
  Json r = d.WaitForRun(run, 30s);
  ASSERT_EQ(r["state"], "failed") << r.dump(2);
  std::string reason = r["reason"];
  EXPECT_NE(reason.find("unschedulable"), std::string::npos) << reason;
  EXPECT_NE(reason.find("Requested node configuration is not available"), std::string::npos)
      << reason;
  EXPECT_EQ(r["steps"][0]["attempts"].size(), 1u) << "an unschedulable attempt was retried";
  Json lost = Items(d, "/v1/events?type=ContainerLost");
  ASSERT_FALSE(lost.empty());
  EXPECT_EQ(lost[0]["data"]["unschedulable"], true) << lost.dump(2);
  // No demand is left: the pool stops asking.
  size_t asked = Items(d, "/v1/events?type=ContainerRequested").size();
  std::this_thread::sleep_for(3s);
  EXPECT_EQ(Items(d, "/v1/events?type=ContainerRequested").size(), asked);
  EXPECT_TRUE(Squeue().empty());
}

TEST_F(SlurmTest, TheNewLeaderAdoptsTheSlurmJobsOfTheOldOne) {
  std::vector<std::string> cfg = Config({"sig.cpu=1", "sig.maxReplicas=2"});
  Epochd a(dir_.path(), cfg, "a");
  a.Start();
  Epochd b(dir_.path(), cfg, "b");
  b.StartStandby();
  Json def = Json::parse(R"J({"name": "failover", "steps": [
      {"name": "long", "command": ["sh", "-c", "echo start >> {{workspace}}/starts; sleep 4"]},
      {"name": "after", "after": ["long"], "command": ["true"]}]})J");
  std::string run = a.RegisterAndSubmit(def);
  std::string starts = dir_.path() + "/runs/" + run + "/starts";
  Json r = a.WaitForRunState(run, [](const Json& j) { return j["steps"][0]["state"] == "running"; });
  ASSERT_EQ(r["steps"][0]["state"], "running") << r.dump(2);
  std::map<std::string, std::string> before = Squeue();
  ASSERT_FALSE(before.empty());
  uint64_t head = a.Head();
  ASSERT_TRUE(WaitFor([&] { return b.Get("/v1/cluster").position >= head; }, 2000ms));

  a.Kill9();
  ASSERT_TRUE(b.WaitUntilLeader(1000ms)) << b.Log();
  r = b.WaitForRun(run, 60s);
  ASSERT_EQ(r["state"], "succeeded") << r.dump(2);
  EXPECT_EQ(r["steps"][0]["attempts"].size(), 1u) << r.dump(2);
  // The step ran once, in one of the jobs that existed before the failover.
  EXPECT_EQ(Slurp(starts), "start\n");
  std::string container = r["steps"][0]["attempts"][0]["container"];
  std::string handle;
  for (const auto& c : Items(b, "/v1/containers")) {
    if (c["id"] == container) handle = c["handle"];
  }
  EXPECT_TRUE(before.count(handle)) << container << " " << handle;
  // The new leader kept the same containers: none lost, none launched again.
  Json events = Items(b, "/v1/events?limit=1000");
  int requested = 0, lost = 0;
  for (const auto& e : events) {
    requested += e["type"] == "ContainerRequested";
    lost += e["type"] == "ContainerLost";
  }
  EXPECT_EQ(lost, 0) << events.dump(2);
  EXPECT_EQ(static_cast<size_t>(requested), before.size());
  for (const auto& c : Items(b, "/v1/containers")) {
    EXPECT_TRUE(before.count(c["handle"])) << c.dump();
    EXPECT_EQ(c["state"], "registered");
  }
  // The adopted jobs are still Slurm's running jobs, watched by the new leader.
  ASSERT_TRUE(WaitFor([&] {
    Json cs = Items(b, "/v1/containers");
    for (const auto& c : cs) {
      if (c.value("backend_state", "") != "RUNNING") return false;
    }
    return !cs.empty();
  }, 5000ms)) << Items(b, "/v1/containers").dump(2);
  EXPECT_EQ(Squeue().size(), before.size());
}

}  // namespace
}  // namespace epoch::testing
