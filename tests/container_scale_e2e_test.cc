// Many containers on one real epochd (issue 16): 500 simulated containers
// (bench/sim_containers.h: asynchronous clients in this process, with the credentials
// epochd minted and handed to its local backend) register, park 500 long polls
// without epochd growing a thread per poll, and run submitted runs to success.
#include <gtest/gtest.h>

#include <fstream>
#include <set>
#include <string>
#include <vector>

#include "bench/sim_containers.h"
#include "tests/harness.h"

namespace epoch::testing {
namespace {

using namespace std::chrono_literals;
using bench::SimContainers;

constexpr int kContainers = 500;
// epochd's own threads (HTTP workers and IO, engine, RocksDB) number about 40 whatever
// the load; one per parked poll would be over 500.
constexpr int64_t kThreadBound = 100;

TEST(ContainerScaleE2ETest, FiveHundredSimulatedContainersRegisterParkAndRunWork) {
  TempDir dir, sim_dir;
  const std::string handoff = sim_dir.path() + "/handoff";
  const std::string script = sim_dir.path() + "/fake-agent";
  ASSERT_TRUE(SimContainers::WriteFakeAgent(script, handoff).ok());
  // A long poll timeout keeps every poll parked while the test looks (the lease
  // outlasts it), and is longer than the test waits for a run: an assignment reaches its
  // container only if the commit woke that container's poll (epochd wakes only the polls
  // a commit concerns). minReplicas asks for all 500 containers at once.
  Epochd d(dir.path(), {"sig.minReplicas=" + std::to_string(kContainers),
                        "sig.maxReplicas=" + std::to_string(kContainers), "sig.cpu=1",
                        "executor.agentPath=" + script, "executor.registerTimeout=5m",
                        "executor.pollTimeout=120s", "executor.leaseTime=300s",
                        "api.maxConnectionsPerClient=2000"});
  d.Start();
  SimContainers sims({.master_url = d.url(), .handoff_file = handoff, .request_timeout = 180000ms});
  ASSERT_TRUE(sims.Start().ok());

  // Every container registers and parks a poll, on both sides.
  ASSERT_TRUE(WaitFor(
      [&] {
        auto s = sims.Stats();
        return s.registered == kContainers && s.in_flight == kContainers;
      },
      45000ms))
      << "registered " << sims.Stats().registered << ", polls in flight " << sims.Stats().in_flight
      << "; last error: " << sims.Stats().last_error;
  ASSERT_TRUE(WaitFor([&] { return Metric(d, "epoch_http_parked") >= kContainers; }, 10000ms))
      << "epoch_http_parked " << Metric(d, "epoch_http_parked");
  const int64_t threads = ProcStatus(d.pid(), "Threads");
  EXPECT_GT(threads, 0);
  EXPECT_LT(threads, kThreadBound)
      << "epochd runs " << threads << " threads with " << kContainers << " long polls parked";
  Json containers = d.Get("/v1/containers").json()["items"];
  ASSERT_EQ(containers.size(), static_cast<size_t>(kContainers));
  std::set<std::string> ids;
  for (const auto& c : containers) {
    EXPECT_EQ(c["state"], "registered") << c.dump();
    ids.insert(c["id"].get<std::string>());
  }

  // Runs go to the simulated containers and succeed on their reports.
  ASSERT_EQ(d.PostJson("/v1/workflows", Json::parse(R"({"name": "noop", "steps": [
      {"name": "noop", "command": ["true"], "resources": {"cpu": "1"}}]})"))
                .status,
            201);
  constexpr int kRuns = 20;
  std::vector<std::string> runs;
  for (int i = 0; i < kRuns; ++i) {
    auto r = d.PostJson("/v1/runs", Json{{"workflow", "noop"}});
    ASSERT_EQ(r.status, 201) << r.body;
    runs.push_back(r.json()["id"]);
  }
  for (const auto& id : runs) {
    Json run = d.WaitForRun(id, 60s);
    ASSERT_EQ(run["state"], "succeeded") << run.dump(2);
    const Json& attempt = run["steps"][0]["attempts"][0];
    EXPECT_EQ(attempt["exit_code"], 0) << attempt.dump();
    EXPECT_TRUE(ids.count(attempt["container"].get<std::string>())) << attempt.dump();
  }
  auto s = sims.Stats();
  EXPECT_EQ(s.assignments, kRuns);
  EXPECT_TRUE(WaitFor([&] { return sims.Stats().completed == kRuns; }, 10000ms))
      << sims.Stats().completed;
  // The work done, every container is still registered and polling.
  EXPECT_TRUE(WaitFor([&] { return Metric(d, "epoch_http_parked") >= kContainers; }, 10000ms));
  EXPECT_LT(ProcStatus(d.pid(), "Threads"), kThreadBound);
  EXPECT_EQ(sims.Stats().errors, 0) << sims.Stats().last_error;
}

}  // namespace
}  // namespace epoch::testing
