// End-to-end HA (issue 4): two real epochd processes on one data dir, one leading
// and one standing by over a RocksDB secondary; kill -9 of the leader at any
// moment loses nothing and stops no running job.
#include <gtest/gtest.h>

#include <cstdio>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>

#include "tests/harness.h"

namespace epoch::testing {
namespace {

using namespace std::chrono_literals;
using SteadyClock = std::chrono::steady_clock;

Json Def(const char* text) {
  auto j = ParseJson(text);
  EXPECT_TRUE(j.ok()) << j.status().ToString();
  return *j;
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

int64_t MillisSince(SteadyClock::time_point t0) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(SteadyClock::now() - t0).count();
}

// Positions 1..n without a gap, each prev_hash the hash of the event before.
void ExpectUnbrokenChain(const std::vector<Json>& events) {
  std::string prev(64, '0');
  for (size_t i = 0; i < events.size(); ++i) {
    ASSERT_EQ(events[i]["position"], i + 1);
    ASSERT_EQ(events[i]["prev_hash"], prev) << "at position " << i + 1;
    prev = events[i]["hash"];
  }
}

std::vector<Json> OfType(const std::vector<Json>& evs, const std::string& type,
                         const std::string& step = "") {
  std::vector<Json> out;
  for (const auto& e : evs) {
    if (e["type"] == type && (step.empty() || e["data"].value("step", "") == step)) {
      out.push_back(e);
    }
  }
  return out;
}

// What a client does through a failover: try each master, follow a 307 once,
// retry on anything else until an answer comes. Returns the final answer.
HttpResult PostWithRetry(const std::vector<Epochd*>& masters, const std::string& path,
                         const std::string& body,
                         const std::vector<std::pair<std::string, std::string>>& headers,
                         std::chrono::seconds deadline = 60s) {
  auto until = SteadyClock::now() + deadline;
  HttpResult last;
  while (SteadyClock::now() < until) {
    for (Epochd* m : masters) {
      std::string url = m->url();
      if (url.empty()) continue;
      last = HttpPost(url, path, body, headers);
      if (last.status == 307 && !last.location.empty()) {
        auto scheme = last.location.find("://");
        auto slash = last.location.find('/', scheme + 3);
        last = HttpPost(last.location.substr(0, slash), last.location.substr(slash), body, headers);
      }
      if (last.status == 200 || last.status == 201) return last;
    }
    std::this_thread::sleep_for(20ms);
  }
  return last;
}

class HaTest : public ::testing::Test {
 protected:
  TempDir dir_;
};

TEST_F(HaTest, FailoverMidRunKeepsTheRunningStepAndTheChain) {
  Epochd a(dir_.path(), {}, "a");
  a.Start();
  Epochd b(dir_.path(), {}, "b");
  b.StartStandby();
  Json def = Def(R"J({"name": "failover", "steps": [
      {"name": "long", "command": ["sh", "-c", "echo start >> {{workspace}}/starts; sleep 3"]},
      {"name": "after", "after": ["long"], "command": ["true"]}]})J");
  std::string run = a.RegisterAndSubmit(def);
  Json r = a.WaitForRunState(run, [](const Json& j) { return j["steps"][0]["state"] == "running"; });
  ASSERT_EQ(r["steps"][0]["state"], "running") << r.dump(2);
  // The standby follows the leader's log.
  uint64_t head = a.Head();
  ASSERT_TRUE(WaitFor([&] { return b.Get("/v1/cluster").position >= head; }, 2000ms));

  a.Kill9();
  // How fast it takes over is measured by `epoch-bench failover`, not asserted here.
  auto t0 = SteadyClock::now();
  bool led = b.WaitUntilLeader(30000ms);
  ASSERT_TRUE(led) << "the standby did not lead; its log:\n" << b.Log();
  std::printf("the standby led %lld ms after the kill\n", static_cast<long long>(MillisSince(t0)));
  Json cluster = b.Get("/v1/cluster").json();
  EXPECT_EQ(cluster["role"], "leader");
  EXPECT_EQ(cluster["epoch"], 2);
  Json leader_json = *ParseJson(ReadAll(dir_.path() + "/leader.json"));
  EXPECT_EQ(leader_json["address"], b.url());
  EXPECT_EQ(leader_json["epoch"], 2);

  r = b.WaitForRun(run, 30s);
  ASSERT_EQ(r["state"], "succeeded") << r.dump(2);
  EXPECT_EQ(r["steps"][0]["attempts"].size(), 1u) << r.dump(2);
  EXPECT_EQ(ReadAll(dir_.path() + "/runs/" + run + "/starts"), "start\n");

  std::vector<Json> events = b.AllEvents();
  ExpectUnbrokenChain(events);
  auto leaders = OfType(events, "LeaderElected");
  ASSERT_EQ(leaders.size(), 2u);
  EXPECT_EQ(leaders[0]["data"]["node"], "a");
  EXPECT_EQ(leaders[0]["data"]["epoch"], 1);
  EXPECT_EQ(leaders[1]["data"]["node"], "b");
  EXPECT_EQ(leaders[1]["data"]["epoch"], 2);
  EXPECT_EQ(leaders[1]["data"]["address"], b.url());
  EXPECT_EQ(OfType(events, "JobStarted", "long").size(), 1u);
  EXPECT_EQ(OfType(events, "JobSucceeded", "long").size(), 1u);
  // Events after the takeover carry the new epoch.
  EXPECT_EQ(OfType(events, "JobSucceeded", "long")[0]["epoch"], 2);
}

TEST_F(HaTest, StandbyServesReadsWithin200msOfTheLeadersWrite) {
  Epochd a(dir_.path(), {}, "a");
  a.Start();
  Epochd b(dir_.path(), {}, "b");
  b.StartStandby();
  Json def = Def(R"J({"name": "reads", "steps": [{"name": "s", "command": ["true"]}]})J");
  ASSERT_EQ(a.PostJson("/v1/workflows", def).status, 201);
  for (int i = 0; i < 3; ++i) {
    HttpResult sub = a.PostJson("/v1/runs", Json{{"workflow", "reads"}});
    ASSERT_EQ(sub.status, 201) << sub.body;
    auto t0 = SteadyClock::now();
    std::string id = sub.json()["id"];
    HttpResult seen;
    bool ok = WaitFor(
        [&] {
          seen = b.Get("/v1/runs/" + id);
          return seen.status == 200;
        },
        10000ms);
    ASSERT_TRUE(ok) << "the standby never saw run " << id;
    std::printf("the standby saw run %s after %lld ms\n", id.c_str(),
                static_cast<long long>(MillisSince(t0)));
    EXPECT_EQ(seen.role, "standby");
    EXPECT_GE(seen.position, sub.position);
    EXPECT_EQ(seen.json()["id"], id);
  }
  // Reads of the log work on the standby too.
  HttpResult evs = b.Get("/v1/events?type=RunSubmitted");
  ASSERT_EQ(evs.status, 200);
  EXPECT_EQ(evs.json()["items"].size(), 3u);
}

TEST_F(HaTest, FiveHundredIdempotentSubmissionsThroughThreeLeaderKills) {
  constexpr int kRuns = 500;
  Epochd a(dir_.path(), {"sig.maxReplicas=4", "sig.minReplicas=2"}, "a");
  a.Start();
  Epochd b(dir_.path(), {"sig.maxReplicas=4", "sig.minReplicas=2"}, "b");
  b.StartStandby();
  Json def = Def(R"J({"name": "many", "steps": [{"name": "s", "command": ["true"]}]})J");
  ASSERT_EQ(a.PostJson("/v1/workflows", def).status, 201);

  std::mutex mu;
  std::map<std::string, std::string> run_of;  // key -> run id of the answer
  std::atomic<int> done{0};
  std::atomic<bool> failed{false};
  std::vector<Epochd*> masters{&a, &b};
  std::thread client([&] {
    std::string body = Json{{"workflow", "many"}}.dump();
    for (int i = 0; i < kRuns && !failed; ++i) {
      std::string key = "key-" + std::to_string(i);
      HttpResult r = PostWithRetry(masters, "/v1/runs", body, {{"Idempotency-Key", key}});
      if (r.status != 200 && r.status != 201) {
        failed = true;
        ADD_FAILURE() << key << ": " << r.status << " " << r.body;
        return;
      }
      std::lock_guard<std::mutex> lock(mu);
      run_of[key] = r.json()["id"];
      done++;
    }
  });
  // Three kill -9s of whoever leads, each restarted as a standby.
  Epochd* leader = &a;
  Epochd* standby = &b;
  for (int kill = 1; kill <= 3 && !failed; ++kill) {
    if (!WaitFor([&] { return done >= kill * 100 || failed; }, 60000ms)) {
      ADD_FAILURE() << "submissions stalled at " << done;
      failed = true;
      break;
    }
    leader->Kill9();
    if (!standby->WaitUntilLeader(5000ms)) {
      ADD_FAILURE() << "the standby did not take over; its log:\n" << standby->Log();
      failed = true;
      break;
    }
    leader->StartStandby();
    std::swap(leader, standby);
  }
  client.join();
  ASSERT_FALSE(failed);
  ASSERT_EQ(run_of.size(), static_cast<size_t>(kRuns));

  // Every key maps to exactly one run, and asking again answers the same run.
  std::set<std::string> ids;
  for (const auto& [key, id] : run_of) ids.insert(id);
  EXPECT_EQ(ids.size(), static_cast<size_t>(kRuns));
  for (int i = 0; i < kRuns; i += 7) {
    std::string key = "key-" + std::to_string(i);
    HttpResult again = leader->Post("/v1/runs", Json{{"workflow", "many"}}.dump(),
                                    "application/json", {{"Idempotency-Key", key}});
    ASSERT_EQ(again.status, 200) << again.body;
    EXPECT_EQ(again.json()["id"], run_of[key]);
  }
  // Exactly 500 runs exist, and all of them complete.
  bool all_done = WaitFor(
      [&] {
        HttpResult list = leader->Get("/v1/runs?limit=1000&state=succeeded");
        return list.status == 200 && list.json()["items"].size() == static_cast<size_t>(kRuns);
      },
      120000ms);
  HttpResult list = leader->Get("/v1/runs?limit=1000");
  ASSERT_EQ(list.status, 200);
  EXPECT_EQ(list.json()["items"].size(), static_cast<size_t>(kRuns));
  ASSERT_TRUE(all_done) << "not every run succeeded";
  for (const auto& item : list.json()["items"]) EXPECT_TRUE(ids.count(item["id"])) << item["id"];
  std::vector<Json> events = leader->AllEvents();
  ExpectUnbrokenChain(events);
  EXPECT_EQ(OfType(events, "RunSubmitted").size(), static_cast<size_t>(kRuns));
  EXPECT_EQ(OfType(events, "LeaderElected").size(), 4u);
}

TEST_F(HaTest, LoneMasterKill9LosesNoAcknowledgedSubmission) {
  Epochd a(dir_.path(), {}, "a");
  a.Start();
  Json def = Def(R"J({"name": "lone", "steps": [{"name": "s", "command": ["true"]}]})J");
  ASSERT_EQ(a.PostJson("/v1/workflows", def).status, 201);
  std::vector<std::string> acked;
  std::atomic<bool> stop{false};
  std::string url = a.url();
  std::thread client([&] {
    while (!stop) {
      HttpResult r = HttpPost(url, "/v1/runs", Json{{"workflow", "lone"}}.dump());
      if (r.status == 201) acked.push_back(r.json()["id"]);
      if (r.status == 0) return;  // the master is gone
    }
  });
  ASSERT_TRUE(WaitFor([&] { return a.Head() > 150; }, 20000ms));
  a.Kill9();
  stop = true;
  client.join();
  ASSERT_GT(acked.size(), 10u);
  a.Start();
  for (const auto& id : acked) EXPECT_EQ(a.Get("/v1/runs/" + id).status, 200) << id;
  ExpectUnbrokenChain(a.AllEvents());
}

TEST_F(HaTest, IdempotencyKeysAnswerTheFirstResultAcrossRestarts) {
  Epochd a(dir_.path(), {}, "a");
  a.Start();
  const char* v1 = R"J({"name": "idem", "steps": [{"name": "s", "command": ["true"]}]})J";
  const char* v2 = R"J({"name": "idem", "steps": [{"name": "s", "command": ["false"]}]})J";
  auto post = [&](const std::string& path, const std::string& body, const std::string& key) {
    return a.Post(path, body, "application/json", {{"Idempotency-Key", key}});
  };
  HttpResult w1 = post("/v1/workflows", v1, "wf-1");
  ASSERT_EQ(w1.status, 201) << w1.body;
  EXPECT_EQ(w1.json()["version"], 1);
  // The same key with the same body answers the first result; with another body it is
  // refused (422 idempotency_key_reused): no version 2 either way.
  HttpResult w1b = post("/v1/workflows", v1, "wf-1");
  EXPECT_EQ(w1b.status, 200) << w1b.body;
  EXPECT_EQ(w1b.json()["version"], 1);
  EXPECT_EQ(w1b.json()["digest"], w1.json()["digest"]);
  HttpResult w1x = post("/v1/workflows", v2, "wf-1");
  EXPECT_EQ(w1x.status, 422) << w1x.body;
  EXPECT_EQ(w1x.json()["error"]["code"], "idempotency_key_reused");
  EXPECT_EQ(a.Get("/v1/workflows/idem").json()["versions"], 1);

  HttpResult r1 = post("/v1/runs", R"({"workflow": "idem"})", "run-1");
  ASSERT_EQ(r1.status, 201) << r1.body;
  HttpResult r1b = post("/v1/runs", R"({"workflow": "idem"})", "run-1");
  EXPECT_EQ(r1b.status, 200);
  EXPECT_EQ(r1b.json()["id"], r1.json()["id"]);
  HttpResult r1x = post("/v1/runs", R"({"workflow": "idem", "labels": {"x": "y"}})", "run-1");
  EXPECT_EQ(r1x.status, 422) << r1x.body;
  // The same key from another tenant is another key.
  // (Tenants arrive with auth; until then every request is tenant "default".)

  a.Kill9();
  a.Start();
  HttpResult w1c = post("/v1/workflows", v1, "wf-1");
  EXPECT_EQ(w1c.status, 200);
  EXPECT_EQ(w1c.json()["version"], 1);
  EXPECT_EQ(post("/v1/workflows", v2, "wf-1").status, 422) << "the digest survives a restart";
  HttpResult r1c = post("/v1/runs", R"({"workflow": "idem"})", "run-1");
  EXPECT_EQ(r1c.status, 200);
  EXPECT_EQ(r1c.json()["id"], r1.json()["id"]);
  // A new key registers the changed definition as version 2.
  HttpResult w2 = post("/v1/workflows", v2, "wf-2");
  EXPECT_EQ(w2.status, 201);
  EXPECT_EQ(w2.json()["version"], 2);
  HttpResult list = a.Get("/v1/runs");
  EXPECT_EQ(list.json()["items"].size(), 1u);
}

TEST_F(HaTest, ALeaderWhoseLockFileIsRemovedStepsDownAndRejoinsTheElection) {
  Epochd a(dir_.path(), {}, "a");
  a.Start();
  std::string first = a.url();
  pid_t pid = a.pid();
  // Someone deletes the election lock: another epochd could now lock a new file,
  // so this leader must stop leading at once.
  std::filesystem::remove(dir_.path() + "/leader.lock");
  std::string address_file = dir_.path() + "/a.address";
  std::string second;
  bool rejoined = WaitFor(
      [&] {
        auto j = ParseJson(ReadAll(address_file));
        if (!j.ok() || !j->contains("address") || (*j)["address"] == first) return false;
        second = (*j)["address"];
        return true;
      },
      10000ms);
  ASSERT_TRUE(rejoined) << a.Log();
  EXPECT_NE(a.Log().find("stepping down"), std::string::npos) << a.Log();
  // The same process re-executed itself; alone on the data dir it leads again,
  // with the next epoch.
  EXPECT_TRUE(ProcessAlive(pid));
  bool leads = WaitFor([&] { return HttpGet(second, "/readyz").status == 200; }, 10000ms);
  ASSERT_TRUE(leads) << a.Log();
  Json cluster = HttpGet(second, "/v1/cluster").json();
  EXPECT_EQ(cluster["epoch"], 2);
  EXPECT_EQ(cluster["role"], "leader");
}

}  // namespace
}  // namespace epoch::testing
