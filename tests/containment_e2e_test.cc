// Compute containers that contain (issue 13), end to end on a real epochd whose agents
// put themselves and each attempt in this host's real cgroups: an attempt over its
// memory limit ends `oom_killed` (from the kernel's counters) while its neighbour
// finishes; a CPU quota holds four busy processes to half a core while a `cpu: 2`
// neighbour gets its share; a fork bomb stays under the pids limit and says so;
// a thousand attempts leave no cgroup behind; a cgroup root that cannot be written
// gives `none` with the kernel's reason, or, with `required`, no container at all.
// Runs as root (CI does). Each figure the tests assert is also printed.
#include <gtest/gtest.h>
#include <sys/mount.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "common/files.h"
#include "tests/harness.h"

namespace epoch::testing {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

// The file's text; empty when it cannot be read.
std::string Slurp(const std::string& path) {
  auto text = ReadFile(path);
  return text.ok() ? *text : "";
}

Json Items(Epochd& d, const std::string& path) {
  auto r = d.Get(path);
  EXPECT_EQ(r.status, 200) << r.body;
  return r.json()["items"];
}

// The cgroup directory that holds `pid` in the memory hierarchy (v1) or the unified
// one (v2); empty when it cannot be told.
std::string MemoryCgroupOf(pid_t pid) {
  std::istringstream in(Slurp("/proc/" + std::to_string(pid) + "/cgroup"));
  std::string line, v2;
  while (std::getline(in, line)) {
    auto a = line.find(':'), b = line.find(':', a + 1);
    if (a == std::string::npos || b == std::string::npos) continue;
    std::string controllers = line.substr(a + 1, b - a - 1), path = line.substr(b + 1);
    if (controllers == "memory") return "/sys/fs/cgroup/memory" + path;
    if (controllers.empty()) v2 = "/sys/fs/cgroup" + path;
  }
  return fs::exists(v2 + "/memory.max") ? v2 : "";
}

std::set<std::string> SubDirs(const std::string& dir) {
  std::set<std::string> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    if (e.is_directory()) out.insert(e.path().filename());
  }
  return out;
}

const Json& Step(const Json& run, const std::string& name) {
  for (const auto& s : run["steps"]) {
    if (s["name"] == name) return s;
  }
  static const Json kNone;
  ADD_FAILURE() << "no step " << name << " in " << run.dump();
  return kNone;
}

class ContainmentE2ETest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(geteuid(), 0u) << "the containment tests write cgroups and need root (CI is root)";
  }
  // One container that must enforce, with room for the tests' neighbours.
  std::unique_ptr<Epochd> Start(std::vector<std::string> extra = {}) {
    std::vector<std::string> sets = {"sig.minReplicas=0", "sig.maxReplicas=1", "sig.cpu=3",
                                     "sig.memory=1Gi", "executor.enforce=required"};
    sets.insert(sets.end(), extra.begin(), extra.end());
    auto d = std::make_unique<Epochd>(dir_.path() + "/data", sets);
    d->Start();
    return d;
  }
  TempDir dir_;
};

TEST_F(ContainmentE2ETest, AnAttemptOverItsMemoryIsOomKilledAndItsNeighbourIsUnharmed) {
  auto d = Start();
  // hog: 4x its 64 MiB (tail holds one endless line); the shell survives and exits
  // with tail's status, so only the cgroup's counters can say what happened.
  std::string run = d->RegisterAndSubmit(Json::parse(R"({"name": "oom", "steps": [
      {"name": "hog", "resources": {"memory": "64Mi"},
       "retry": {"limit": 1, "backoff": "fixed", "initial": "3s"},
       "command": ["sh", "-c", "head -c 268435456 /dev/zero | tail > /dev/null"]},
      {"name": "neighbour", "resources": {"memory": "64Mi"},
       "command": ["sh", "-c", "head -c 33554432 /dev/zero | tail > /dev/null; sleep 1; echo fine"]}
  ]})"));
  Json r = d->WaitForRun(run, 120s);
  EXPECT_EQ(r["state"], "failed") << r.dump(2);
  const Json& hog = Step(r, "hog");
  ASSERT_EQ(hog["attempts"].size(), 2u) << "the retry policy applies: " << hog.dump(2);
  for (const auto& a : hog["attempts"]) {
    std::string reason = a["reason"];
    EXPECT_EQ(reason.rfind("oom_killed: its memory limit (64 MiB) was reached", 0), 0u) << reason;
    EXPECT_GE(a["usage"]["oom_kills"].get<int>(), 1) << a.dump();
    EXPECT_EQ(a["usage"]["limits"]["memory_bytes"], 64 << 20);
    EXPECT_LE(a["usage"]["peak_memory_bytes"].get<int64_t>(), (64 << 20) + (1 << 20));
    EXPECT_EQ(a["resources"]["limits"]["memory_bytes"], 64 << 20);
    std::printf("hog attempt %d: %s; peak %.1f MiB\n", a["attempt"].get<int>(), reason.c_str(),
                a["usage"]["peak_memory_bytes"].get<double>() / (1 << 20));
  }
  const Json& neighbour = Step(r, "neighbour");
  EXPECT_EQ(neighbour["state"], "succeeded") << neighbour.dump(2);
  EXPECT_EQ(neighbour["attempts"].size(), 1u);
  EXPECT_EQ(neighbour["attempts"][0]["usage"]["oom_kills"], 0);
  EXPECT_GE(neighbour["attempts"][0]["usage"]["peak_memory_bytes"].get<int64_t>(), 32 << 20);
  // The history says it too, and the container says what enforced it.
  int oom_events = 0;
  auto events = d->Get("/v1/runs/" + run + "/events");
  ASSERT_EQ(events.status, 200) << events.body;
  Json ej = events.json();
  for (const auto& e : ej.is_array() ? ej : ej["items"]) {
    if (e.value("type", "") != "JobFailed") continue;
    oom_events += e["data"].value("reason", "").rfind("oom_killed:", 0) == 0;
  }
  EXPECT_EQ(oom_events, 2);
  Json containers = Items(*d, "/v1/containers");
  ASSERT_EQ(containers.size(), 1u);
  const Json& enf = containers[0]["enforcement"];
  EXPECT_EQ(enf["mode"], "required");
  EXPECT_TRUE(enf["mechanism"] == "cgroup1" || enf["mechanism"] == "cgroup2") << enf.dump();
  EXPECT_EQ(enf["memory_bytes"], int64_t{1} << 30);
  EXPECT_EQ(enf["cpu_millis"], 3000);
  EXPECT_EQ(enf["max_pids"], 4096);
  // epochctl shows the reason and requested vs used.
  std::string out;
  ASSERT_EQ(RunCommand(EpochctlPath() + " --server " + d->url() +
                           " run get " + run + " 2>&1",
                       &out),
            0)
      << out;
  EXPECT_NE(out.find("oom_killed"), std::string::npos) << out;
  EXPECT_NE(out.find("CPU REQ/USED"), std::string::npos) << out;
  EXPECT_NE(out.find("64Mi!/"), std::string::npos) << out;
}

// A step that declares no memory is bounded by its container's sig.memory: the kernel
// kills the step (never the agent, which shields itself), the attempt says whose limit
// it was, and the container lives on to run the next attempt.
TEST_F(ContainmentE2ETest, TheContainersOwnLimitKillsAStepNotTheAgentAndSaysSo) {
  auto d = Start({"sig.memory=256Mi"});
  std::string run = d->RegisterAndSubmit(Json::parse(R"({"name": "big", "steps": [
      {"name": "hog", "command": ["sh", "-c", "head -c 536870912 /dev/zero | tail > /dev/null"]}
  ]})"));
  Json r = d->WaitForRun(run, 120s);
  EXPECT_EQ(r["state"], "failed") << r.dump(2);
  const Json& a = Step(r, "hog")["attempts"][0];
  std::string reason = a["reason"];
  EXPECT_EQ(reason.rfind("oom_killed: the container's memory limit (sig.memory 256 MiB) was reached",
                         0),
            0u)
      << reason;
  EXPECT_TRUE(a["usage"]["limits"]["memory_bytes"].is_null()) << a.dump();
  std::printf("hog without a declared limit: %s\n", reason.c_str());
  // The agent survived: the same container runs the next attempt.
  Json containers = Items(*d, "/v1/containers");
  ASSERT_EQ(containers.size(), 1u);
  EXPECT_EQ(containers[0]["state"], "registered");
  std::string next = d->RegisterAndSubmit(
      Json::parse(R"({"name": "small", "steps": [{"name": "a", "command": ["true"]}]})"));
  EXPECT_EQ(d->WaitForRun(next, 60s)["state"], "succeeded");
  EXPECT_EQ(Items(*d, "/v1/events?type=ContainerLost").size(), 0u);
}

TEST_F(ContainmentE2ETest, ACpuQuotaHoldsHalfACoreWhileACpu2NeighbourGetsItsShare) {
  auto d = Start();
  const char* busy =
      "pids=''; for i in 1 2 3 4; do (while :; do :; done) & pids=\"$pids $!\"; done; "
      "sleep 5; kill $pids; exit 0";
  Json def = Json::parse(R"({"name": "cpu", "steps": [
      {"name": "capped", "resources": {"cpu": "500m"}, "command": ["sh", "-c", ""]},
      {"name": "wide", "resources": {"cpu": "2"}, "command": ["sh", "-c", ""]}]})");
  def["steps"][0]["command"][2] = busy;
  def["steps"][1]["command"][2] = busy;
  std::string run = d->RegisterAndSubmit(def);
  Json r = d->WaitForRun(run, 120s);
  ASSERT_EQ(r["state"], "succeeded") << r.dump(2);
  auto rate = [&](const std::string& step) {
    const Json& u = Step(r, step)["attempts"][0]["usage"];
    EXPECT_EQ(u["source"].get<std::string>().rfind("cgroup", 0), 0u) << u.dump();
    double cores = u["cpu_s"].get<double>() / u["wall_s"].get<double>();
    std::printf("%s: %.2f CPU-s in %.2f s = %.2f cores (wait4 saw %.2f CPU-s)\n", step.c_str(),
                u["cpu_s"].get<double>(), u["wall_s"].get<double>(), cores,
                u["wait4_cpu_s"].get<double>());
    return cores;
  };
  double capped = rate("capped"), wide = rate("wide");
  EXPECT_LE(capped, 0.55);
  EXPECT_GE(capped, 0.3);
  // Two cores here, the capped step holds at most half of one: the neighbour gets the
  // rest (less whatever else this machine runs meanwhile).
  EXPECT_GE(wide, 0.9);
  EXPECT_EQ(Step(r, "capped")["attempts"][0]["usage"]["limits"]["cpu_millis"], 500);
}

TEST_F(ContainmentE2ETest, AForkBombStaysUnderThePidsLimitAndSaysSo) {
  auto d = Start({"executor.maxPids=64"});
  std::string run = d->RegisterAndSubmit(Json::parse(R"({"name": "bomb", "steps": [
      {"name": "bomb", "command": ["sh", "-c", "b() { b | b & }; b; sleep 4; exit 1"]}]})"));
  // Meanwhile the master answers and the agent finishes a neighbour. It is a run of its
  // own: in the bomb's run it would be cancelled when the bomb's shell dies of a
  // refused fork before the neighbour starts (seen on a loaded machine).
  std::string neighbour = d->RegisterAndSubmit(Json::parse(R"({"name": "neighbour", "steps": [
      {"name": "neighbour", "command": ["sh", "-c", "sleep 1; echo fine"]}]})"));
  Json n = d->WaitForRun(neighbour, 60s);
  EXPECT_EQ(n["state"], "succeeded") << n.dump(2);
  EXPECT_EQ(d->Get("/healthz").status, 200);
  Json r = d->WaitForRun(run, 60s);
  ASSERT_EQ(r["state"], "failed") << r.dump(2);
  const Json& a = Step(r, "bomb")["attempts"][0];
  std::string reason = a["reason"];
  EXPECT_EQ(reason.rfind("pids_limit: the step reached its limit of 64 processes and threads", 0),
            0u)
      << reason;
  EXPECT_GT(a["usage"]["pids_refused"].get<int64_t>(), 0);
  std::printf("bomb: %s\n", reason.c_str());
}

TEST_F(ContainmentE2ETest, AThousandAttemptsLeaveNoCgroupBehind) {
  auto d = Start({"sig.idleTimeout=2s"});
  Json def{{"name", "many"}, {"steps", Json::array()}};
  for (int i = 0; i < 200; ++i) {
    def["steps"].push_back(Json{{"name", "s" + std::to_string(i)}, {"command", {"true"}}});
  }
  ASSERT_EQ(d->PostJson("/v1/workflows", def).status, 201);
  std::vector<std::string> runs;
  for (int i = 0; i < 5; ++i) {
    auto r = d->PostJson("/v1/runs", Json{{"workflow", "many"}});
    ASSERT_EQ(r.status, 201) << r.body;
    runs.push_back(r.json()["id"]);
  }
  for (const auto& id : runs) ASSERT_EQ(d->WaitForRun(id, 300s)["state"], "succeeded") << id;
  Json containers = Items(*d, "/v1/containers");
  ASSERT_EQ(containers.size(), 1u);
  pid_t agent = containers[0]["pid"].get<pid_t>();
  std::string leaf = MemoryCgroupOf(agent);
  ASSERT_FALSE(leaf.empty());
  ASSERT_EQ(fs::path(leaf).filename(), "agent") << leaf;
  std::string group = fs::path(leaf).parent_path();
  EXPECT_EQ(SubDirs(group), (std::set<std::string>{"agent"})) << "attempt cgroups left in " << group;
  EXPECT_EQ(Slurp(group + "/memory.limit_in_bytes").empty() ? Slurp(group + "/memory.max")
                                                            : Slurp(group + "/memory.limit_in_bytes"),
            std::to_string(int64_t{1} << 30) + "\n");
  // Released when idle: the agent removes its own groups as it exits.
  ASSERT_TRUE(WaitFor([&] { return !ProcessAlive(agent); }, 30000ms));
  EXPECT_TRUE(WaitFor([&] { return !fs::exists(group); }, 5000ms)) << group << " left behind";
}

// Read-only bind mounts of this host's v1 hierarchies: a cgroup root nobody may write.
class ReadOnlyCgroupRoot {
 public:
  explicit ReadOnlyCgroupRoot(const std::string& root) : root_(root) {
    for (const char* c : {"memory", "cpu", "cpuacct", "pids"}) {
      std::string src = "/sys/fs/cgroup/" + std::string(c), dst = root + "/" + c;
      if (!fs::exists(src)) continue;
      fs::create_directories(dst);
      if (mount(src.c_str(), dst.c_str(), nullptr, MS_BIND, nullptr) != 0) continue;
      mounted_.push_back(dst);
      mount(nullptr, dst.c_str(), nullptr, MS_BIND | MS_REMOUNT | MS_RDONLY, nullptr);
    }
  }
  ~ReadOnlyCgroupRoot() {
    for (const auto& m : mounted_) umount2(m.c_str(), MNT_DETACH);
  }
  bool ok() const { return mounted_.size() >= 2; }

 private:
  std::string root_;
  std::vector<std::string> mounted_;
};

TEST_F(ContainmentE2ETest, AnUnwritableCgroupRootIsNoneWithTheReasonOrNoContainer) {
  std::string root = dir_.path() + "/cgroot";
  ReadOnlyCgroupRoot ro(root);
  if (!ro.ok()) GTEST_SKIP() << "this host has no cgroup v1 memory and cpu hierarchies to bind";
  {
    auto d = Start({"executor.enforce=auto", "executor.cgroupRoot=" + root});
    std::string run = d->RegisterAndSubmit(
        Json::parse(R"({"name": "plain", "steps": [{"name": "a", "command": ["true"]}]})"));
    EXPECT_EQ(d->WaitForRun(run, 60s)["state"], "succeeded");
    Json containers = Items(*d, "/v1/containers");
    ASSERT_EQ(containers.size(), 1u);
    const Json& enf = containers[0]["enforcement"];
    EXPECT_EQ(enf["mode"], "auto");
    EXPECT_EQ(enf["mechanism"], "none");
    std::string reason = enf["reason"];
    EXPECT_NE(reason.find("cannot create a cgroup under " + root), std::string::npos) << reason;
    EXPECT_NE(reason.find("Read-only file system"), std::string::npos) << reason;
    d->Terminate();
  }
  // required: the agent refuses to register and says why; the container is lost.
  TempDir other;
  Epochd d(other.path() + "/data",
           {"sig.minReplicas=0", "sig.maxReplicas=1", "executor.enforce=required",
            "executor.cgroupRoot=" + root, "executor.registerTimeout=3s"});
  d.Start();
  std::string run = d.RegisterAndSubmit(
      Json::parse(R"({"name": "plain", "steps": [{"name": "a", "command": ["true"]}]})"));
  ASSERT_TRUE(WaitFor([&] { return !Items(d, "/v1/events?type=ContainerLost").empty(); }, 30000ms));
  EXPECT_TRUE(Items(d, "/v1/events?type=ContainerRegistered").empty());
  std::string id = Items(d, "/v1/events?type=ContainerLost")[0]["data"]["container"];
  std::string log = Slurp(other.path() + "/data/containers/" + id + "/agent.log");
  EXPECT_NE(log.find("--enforce required, but limits cannot be enforced per attempt: cannot "
                     "create a cgroup under " + root),
            std::string::npos)
      << log;
  Json r = d.Get("/v1/runs/" + run).json();
  EXPECT_NE(r["state"], "succeeded");
}

}  // namespace
}  // namespace epoch::testing
