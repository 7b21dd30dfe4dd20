// End-to-end: real epochd, real epoch-agent containers, real child processes,
// HTTP over 127.0.0.1 on a kernel-chosen port, RocksDB in a temp dir.
#include <dirent.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <fstream>
#include <sstream>
#include <thread>

#include "common/clock.h"
#include "tests/harness.h"

namespace epoch::testing {
namespace {

using namespace std::chrono_literals;

Json Def(const char* text) {
  auto j = ParseJson(text);
  EXPECT_TRUE(j.ok()) << j.status().ToString();
  return *j;
}

// Events of a run, in order.
std::vector<Json> RunEvents(Epochd& d, const std::string& run) {
  auto r = d.Get("/v1/runs/" + run + "/events");
  EXPECT_EQ(r.status, 200) << r.body;
  std::vector<Json> out;
  Json body = r.json();
  for (const auto& e : body["items"]) out.push_back(e);
  return out;
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

// Host pids of the live processes one of whose arguments is exactly `arg`: a step in
// its sandbox knows only its own PID namespace's pids, so the test finds its processes
// by a unique argument.
std::vector<pid_t> PidsWithArg(const std::string& arg) {
  std::vector<pid_t> out;
  DIR* d = opendir("/proc");
  if (d == nullptr) return out;
  while (struct dirent* e = readdir(d)) {
    std::string name = e->d_name;
    if (name.empty() || name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream in("/proc/" + name + "/cmdline", std::ios::binary);
    std::string part;
    while (std::getline(in, part, '\0')) {
      if (part == arg) {
        pid_t pid = static_cast<pid_t>(std::stol(name));
        if (ProcessAlive(pid)) out.push_back(pid);
        break;
      }
    }
  }
  closedir(d);
  return out;
}

uint64_t PositionOf(const std::vector<Json>& evs, const std::string& type, const std::string& step) {
  auto v = OfType(evs, type, step);
  return v.empty() ? 0 : v.front()["position"].get<uint64_t>();
}

const Json& Step(const Json& run, const std::string& name) {
  for (const auto& s : run["steps"]) {
    if (s["name"] == name) return s;
  }
  static const Json kNull;
  ADD_FAILURE() << "no step " << name << " in " << run.dump();
  return kNull;
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

class E2ETest : public ::testing::Test {
 protected:
  TempDir dir_;
};

TEST_F(E2ETest, LifecycleRunsInOrderPassesFilesAndGatesOnMetrics) {
  Epochd d(dir_.path());
  d.Start();
  Json def = Def(R"J({
    "name": "life",
    "params": {"n": 5, "min": 0.5},
    "steps": [
      {"name": "prep", "kind": "data_prep",
       "command": ["sh", "-c", "seq 1 {{params.n}} > {{workspace}}/data.txt; echo '{\"rows\": {{params.n}}}' > {{outputs}}/metrics.json; echo prepared"]},
      {"name": "train", "kind": "train", "after": ["prep"],
       "command": ["sh", "-c", "awk '{s+=$1} END {print s}' {{workspace}}/data.txt > {{workspace}}/model.txt"]},
      {"name": "validate", "kind": "validate", "after": ["train"],
       "command": ["sh", "-c", "test $(cat {{workspace}}/model.txt) = 15 && echo '{\"accuracy\": 0.9}' > $EPOCH_OUTPUTS/metrics.json"]},
      {"name": "infer", "kind": "infer", "after": ["validate"],
       "when": "steps.validate.metrics.accuracy >= params.min",
       "command": ["sh", "-c", "echo predicted with $(cat {{workspace}}/model.txt)"]},
      {"name": "strict", "after": ["validate"], "when": "steps.validate.metrics.accuracy > 0.95",
       "command": ["false"]}
    ]})J");
  std::string run = d.RegisterAndSubmit(def);
  Json r = d.WaitForRun(run);
  ASSERT_EQ(r["state"], "succeeded") << r.dump(2);
  EXPECT_EQ(Step(r, "prep")["metrics"]["rows"], 5);
  EXPECT_EQ(Step(r, "validate")["metrics"]["accuracy"], 0.9);
  EXPECT_EQ(Step(r, "infer")["state"], "succeeded");
  EXPECT_EQ(Step(r, "strict")["state"], "skipped");
  EXPECT_EQ(Step(r, "train")["kind"], "train");
  // Order: each step starts only after its upstream succeeded.
  auto evs = RunEvents(d, run);
  EXPECT_LT(PositionOf(evs, "JobSucceeded", "prep"), PositionOf(evs, "JobQueued", "train"));
  EXPECT_LT(PositionOf(evs, "JobSucceeded", "train"), PositionOf(evs, "JobQueued", "validate"));
  EXPECT_LT(PositionOf(evs, "JobSucceeded", "validate"), PositionOf(evs, "JobQueued", "infer"));
  EXPECT_EQ(OfType(evs, "RunSucceeded").size(), 1u);
  // The step's output went to its log file, served by the API.
  auto log = d.Get("/v1/runs/" + run + "/steps/infer/logs");
  EXPECT_EQ(log.status, 200);
  EXPECT_EQ(log.body, "predicted with 15\n");
  EXPECT_EQ(ReadAll(dir_.path() + "/logs/" + run + "/infer/1.log"), "predicted with 15\n");
  // Attempt records carry usage and the container.
  const Json& a = Step(r, "train")["attempts"][0];
  EXPECT_EQ(a["exit_code"], 0);
  EXPECT_TRUE(a["container"].is_string());
  EXPECT_GE(a["usage"].value("wall_s", -1.0), 0.0);
}

TEST_F(E2ETest, FailingStepRetriesWithBackoffThenFailsTheRun) {
  Epochd d(dir_.path());
  d.Start();
  std::string run = d.RegisterAndSubmit(Def(R"J({"name": "flaky", "steps": [
      {"name": "a", "command": ["sh", "-c", "echo try >> {{workspace}}/tries; exit 3"],
       "retry": {"limit": 2, "backoff": "fixed", "initial": "300ms"}},
      {"name": "b", "after": ["a"], "command": ["true"]}]})J"));
  Json r = d.WaitForRun(run);
  ASSERT_EQ(r["state"], "failed") << r.dump(2);
  const Json& a = Step(r, "a");
  ASSERT_EQ(a["attempts"].size(), 3u);
  for (const auto& at : a["attempts"]) {
    EXPECT_EQ(at["state"], "failed");
    EXPECT_EQ(at["exit_code"], 3);
  }
  EXPECT_EQ(Step(r, "b")["state"], "cancelled");
  EXPECT_EQ(ReadAll(dir_.path() + "/runs/" + run + "/tries"), "try\ntry\ntry\n");
  auto evs = RunEvents(d, run);
  auto failed = OfType(evs, "JobFailed", "a");
  auto retries = OfType(evs, "JobRetryScheduled", "a");
  auto queued = OfType(evs, "JobQueued", "a");
  ASSERT_EQ(retries.size(), 2u);
  ASSERT_EQ(queued.size(), 3u);
  for (size_t i = 0; i < 2; ++i) {
    auto t_fail = *ParseTime(failed[i]["time"].get<std::string>());
    auto not_before = *ParseTime(retries[i]["data"]["not_before"].get<std::string>());
    auto t_queued = *ParseTime(queued[i + 1]["time"].get<std::string>());
    EXPECT_EQ(not_before - t_fail, std::chrono::milliseconds(300));
    EXPECT_GE(t_queued, not_before);
  }
  EXPECT_NE(r.value("reason", "").find("after 3 attempt(s)"), std::string::npos) << r.dump();
}

TEST_F(E2ETest, TimeoutKillsTheAttemptAndCountsAsFailure) {
  Epochd d(dir_.path());
  d.Start();
  std::string run = d.RegisterAndSubmit(Def(R"J({"name": "slow", "steps": [
      {"name": "a", "command": ["sleep", "30"], "timeout": "500ms"}]})J"));
  Json r = d.WaitForRun(run, 20s);
  ASSERT_EQ(r["state"], "failed") << r.dump(2);
  const Json& at = Step(r, "a")["attempts"][0];
  EXPECT_EQ(at["state"], "timed_out");
  EXPECT_LT(at["usage"].value("wall_s", 99.0), 10.0);
  EXPECT_EQ(OfType(RunEvents(d, run), "JobTimedOut").size(), 1u);
}

TEST_F(E2ETest, CancelKillsTheWholeProcessGroup) {
  Epochd d(dir_.path());
  d.Start();
  // The step's background sleep is found by its unique argument.
  const std::string arg = "300." + std::to_string(getpid());
  std::string def = R"J({"name": "long", "steps": [
      {"name": "a", "command": ["sh", "-c", "sleep )J" + arg + R"J( & touch {{workspace}}/started; wait"]},
      {"name": "b", "after": ["a"], "command": ["true"]}]})J";
  std::string run = d.RegisterAndSubmit(Def(def.c_str()));
  std::string started = dir_.path() + "/runs/" + run + "/started";
  ASSERT_TRUE(WaitFor([&] { return std::ifstream(started).good(); }, 20000ms));
  std::vector<pid_t> children;
  ASSERT_TRUE(WaitFor([&] { return (children = PidsWithArg(arg)).size() == 1; }, 5000ms));
  pid_t child = children[0];
  std::string alice = AddToken(d.data_dir(), "alice", "default", "operator");
  auto c = HttpCall(d.url(), "POST", "/v1/runs/" + run + "/cancel", "", alice);
  EXPECT_EQ(c.status, 202) << c.body;
  Json r = d.WaitForRun(run, 20s);
  EXPECT_EQ(r["state"], "cancelled") << r.dump(2);
  EXPECT_EQ(Step(r, "a")["attempts"][0]["state"], "cancelled");
  EXPECT_EQ(Step(r, "b")["state"], "cancelled");
  EXPECT_TRUE(WaitFor([&] { return !ProcessAlive(child); }, 5000ms)) << "grandchild survived";
  auto evs = RunEvents(d, run);
  auto req = OfType(evs, "RunCancelRequested");
  ASSERT_EQ(req.size(), 1u);
  EXPECT_EQ(req[0]["actor"], "alice@default");
  EXPECT_EQ(OfType(evs, "RunCancelled").size(), 1u);
  // Cancelling a finished run is a conflict and writes nothing.
  uint64_t head = d.Head();
  EXPECT_EQ(d.Post("/v1/runs/" + run + "/cancel", "").status, 409);
  EXPECT_EQ(d.Head(), head);
}

TEST_F(E2ETest, RetryRerunsOnlyTheStepsThatDidNotSucceed) {
  Epochd d(dir_.path());
  d.Start();
  // b passes once the file it names exists in the run's workspace (all a step sees of
  // the data dir).
  Json def = Def(R"J({"name": "fixme", "params": {"fix": ""}, "steps": [
      {"name": "a", "command": ["sh", "-c", "echo a >> {{workspace}}/a.count; echo '{\"v\": 1}' > {{outputs}}/metrics.json"]},
      {"name": "b", "after": ["a"], "command": ["test", "-e", "{{workspace}}/{{params.fix}}"]}]})J");
  std::string run = d.RegisterAndSubmit(def, Json{{"fix", "fixed"}});
  Json r = d.WaitForRun(run);
  ASSERT_EQ(r["state"], "failed");
  std::ofstream(dir_.path() + "/runs/" + run + "/fixed") << "ok";
  auto rr = d.Post("/v1/runs/" + run + "/retry", "");
  EXPECT_EQ(rr.status, 202) << rr.body;
  r = d.WaitForRun(run);
  ASSERT_EQ(r["state"], "succeeded") << r.dump(2);
  EXPECT_EQ(Step(r, "a")["attempts"].size(), 1u);
  EXPECT_EQ(Step(r, "a")["metrics"]["v"], 1);
  EXPECT_EQ(Step(r, "b")["attempts"].size(), 2u);
  EXPECT_EQ(ReadAll(dir_.path() + "/runs/" + run + "/a.count"), "a\n");
  EXPECT_EQ(OfType(RunEvents(d, run), "RunRetryRequested").size(), 1u);
  EXPECT_EQ(d.Post("/v1/runs/" + run + "/retry", "").status, 409);  // succeeded now
}

TEST_F(E2ETest, Kill9OfEpochdDuringARunningStepLosesNothingAndRunsNothingTwice) {
  Json def = Def(R"J({"name": "survive", "steps": [
      {"name": "long", "command": ["sh", "-c", "sleep 2; echo ran >> {{workspace}}/count"]},
      {"name": "after", "after": ["long"], "command": ["true"]}]})J");
  std::string run;
  {
    Epochd d(dir_.path());
    d.Start();
    run = d.RegisterAndSubmit(def);
    Json r = d.WaitForRunState(run, [](const Json& j) {
      return j["steps"][0]["state"] == "running";
    });
    ASSERT_EQ(r["steps"][0]["state"], "running") << r.dump(2);
    d.Kill9();
    // The agents outlive the master; keep them for the restarted one.
    ASSERT_FALSE(d.AgentPids().empty());
    Epochd restarted(dir_.path());
    restarted.Start();
    r = restarted.WaitForRun(run, 30s);
    ASSERT_EQ(r["state"], "succeeded") << r.dump(2);
    EXPECT_EQ(r["steps"][0]["attempts"].size(), 1u);
    EXPECT_EQ(ReadAll(dir_.path() + "/runs/" + run + "/count"), "ran\n");
    auto evs = RunEvents(restarted, run);
    EXPECT_EQ(OfType(evs, "JobSucceeded", "long").size(), 1u);
    EXPECT_EQ(OfType(evs, "JobStarted", "long").size(), 1u);
    auto leaders = restarted.Get("/v1/events?type=LeaderElected").json()["items"];
    EXPECT_EQ(leaders.size(), 2u);
  }
}

TEST_F(E2ETest, Kill9OfAnAgentRetriesTheAttemptOnAnotherContainer) {
  Epochd d(dir_.path());
  d.Start();
  std::string run = d.RegisterAndSubmit(Def(R"J({"name": "orphan", "steps": [
      {"name": "a", "command": ["sleep", "2"], "retry": {"limit": 2, "initial": "100ms"}}]})J"));
  Json r = d.WaitForRunState(run, [](const Json& j) { return j["steps"][0]["state"] == "running"; });
  std::string container = r["steps"][0]["attempts"][0]["container"];
  auto cs = d.Get("/v1/containers").json()["items"];
  pid_t agent = 0;
  for (const auto& c : cs) {
    if (c["id"] == container) agent = static_cast<pid_t>(c["pid"].get<int64_t>());
  }
  ASSERT_GT(agent, 0) << cs.dump(2);
  kill(agent, SIGKILL);
  r = d.WaitForRun(run, 40s);
  ASSERT_EQ(r["state"], "succeeded") << r.dump(2);
  const Json& attempts = r["steps"][0]["attempts"];
  ASSERT_EQ(attempts.size(), 2u);
  EXPECT_EQ(attempts[0]["state"], "lost");
  EXPECT_EQ(attempts[0]["reason"], "container_lost");
  EXPECT_NE(attempts[1]["container"], container);
  auto lost = d.Get("/v1/events?type=ContainerLost").json()["items"];
  ASSERT_EQ(lost.size(), 1u);
  EXPECT_EQ(lost[0]["data"]["container"], container);
}

TEST_F(E2ETest, BadInputGetsPreciseErrorsAndWritesNothing) {
  Epochd d(dir_.path());
  d.Start();
  ASSERT_EQ(d.PostJson("/v1/workflows", Def(R"J({"name": "ok", "params": {"need": null},
      "steps": [{"name": "a", "command": ["echo", "{{params.need}}"]}]})J")).status, 201);
  // Wait for the pool to settle so that only these requests could move the head.
  ASSERT_TRUE(WaitFor([&] {
    Json cs = d.Get("/v1/containers").json();
    int n = 0;
    for (const auto& c : cs["items"]) n += c["state"] == "registered";
    return n == 2;
  }, 10000ms));
  uint64_t head = d.Head();
  struct Case {
    std::string name, path, body, content_type;
    int status;
    std::string needle;
  };
  std::string big(2 << 20, 'x');
  std::vector<Case> cases = {
      {"malformed", "/v1/workflows", "{\"name\": ", "application/json", 400, "malformed JSON"},
      {"not object", "/v1/runs", "[1,2]", "application/json", 400, "JSON object"},
      {"content type", "/v1/runs", "{}", "text/plain", 415, "application/json"},
      {"too large", "/v1/runs", big, "application/json", 413, "maxBodyBytes"},
      {"cycle", "/v1/workflows",
       R"({"name":"cyc","steps":[{"name":"a","command":["x"],"after":["b"]},{"name":"b","command":["x"],"after":["a"]}]})",
       "application/json", 422, "cycle"},
      {"unknown after", "/v1/workflows",
       R"({"name":"u","steps":[{"name":"a","command":["x"],"after":["zz"]}]})", "application/json",
       422, "steps[0].after[0]"},
      {"unknown workflow", "/v1/runs", R"({"workflow":"nope"})", "application/json", 404,
       "not registered"},
      {"wrong type", "/v1/runs", R"({"workflow":"ok","params":5})", "application/json", 400,
       "params"},
      {"unknown field", "/v1/runs", R"({"workflow":"ok","bogus":1})", "application/json", 400,
       "bogus"},
      {"missing param", "/v1/runs", R"({"workflow":"ok"})", "application/json", 422, "need"},
      {"undeclared param", "/v1/runs", R"({"workflow":"ok","params":{"need":1,"x":2}})",
       "application/json", 422, "params.x"},
      {"unknown run cancel", "/v1/runs/nope/cancel", "", "application/json", 404, "nope"},
      {"not a container", "/v1/containers/zz/poll", "{}", "application/json", 401,
       "no valid credential"},
  };
  for (const auto& c : cases) {
    auto r = d.Post(c.path, c.body, c.content_type);
    EXPECT_EQ(r.status, c.status) << c.name << ": " << r.body;
    Json e = r.json();
    ASSERT_TRUE(e.contains("error")) << c.name << ": " << r.body;
    std::string text = e["error"]["message"].get<std::string>() + " " + e["error"]["details"].dump();
    EXPECT_NE(text.find(c.needle), std::string::npos) << c.name << ": " << r.body;
    EXPECT_EQ(d.Head(), head) << c.name << " wrote an event";
  }
  // A container's credential opens its own endpoints only.
  std::string credential;
  std::ifstream(dir_.path() + "/containers/c1/credential") >> credential;
  ASSERT_FALSE(credential.empty());
  auto other = HttpCall(d.url(), "POST", "/v1/containers/zz/poll", "{}", credential);
  EXPECT_EQ(other.status, 401) << other.body;
  EXPECT_NE(other.body.find("no valid credential"), std::string::npos) << other.body;
  EXPECT_EQ(d.Get("/v1/runs/nope").status, 404);
  EXPECT_EQ(d.Get("/v1/runs/nope/steps/a/logs").status, 404);
  EXPECT_EQ(d.Get("/v1/workflows/nope").status, 404);
  EXPECT_EQ(d.Get("/v1/runs?limit=0").status, 400);
  EXPECT_EQ(d.Get("/v1/events?after=x").status, 400);
  EXPECT_EQ(d.Head(), head);
}

TEST_F(E2ETest, EventsStreamOverSseAndMetricsCount) {
  Epochd d(dir_.path());
  d.Start();
  std::string run = d.RegisterAndSubmit(Def(R"J({"name": "sse", "steps": [
      {"name": "a", "command": ["true"]}, {"name": "b", "after": ["a"], "command": ["true"]}]})J"));
  // follow=true on a run ends when the run is finished.
  auto s = d.Get("/v1/runs/" + run + "/events?follow=true");
  ASSERT_EQ(s.status, 200);
  EXPECT_EQ(s.content_type, "text/event-stream");
  EXPECT_NE(s.body.find("event: RunSubmitted"), std::string::npos);
  EXPECT_NE(s.body.find("event: RunSucceeded"), std::string::npos) << s.body;
  auto runs = d.Get("/v1/runs?state=succeeded").json();
  ASSERT_EQ(runs["items"].size(), 1u);
  auto m = d.Get("/metrics");
  EXPECT_NE(m.body.find("epoch_runs{state=\"succeeded\"} 1"), std::string::npos) << m.body;
  EXPECT_NE(m.body.find("epoch_append_latency_seconds_count"), std::string::npos);
  EXPECT_NE(m.body.find("route=\"/v1/runs\",code=\"201\"} 1"), std::string::npos) << m.body;
}

TEST_F(E2ETest, RunListFiltersByLabelsAndPages) {
  Epochd d(dir_.path(), {"sig.minReplicas=0", "sig.maxReplicas=0"});  // runs stay queued
  d.Start();
  ASSERT_EQ(d.PostJson("/v1/workflows", Def(R"J({"name": "l", "steps": [{"name": "a", "command": ["true"]}]})J")).status, 201);
  std::vector<std::string> ids;
  for (auto [team, env] : std::vector<std::pair<std::string, std::string>>{
           {"a", "prod"}, {"a", "dev"}, {"b", "prod"}}) {
    auto r = d.PostJson("/v1/runs", Json{{"workflow", "l"}, {"labels", {{"team", team}, {"env", env}}}});
    ASSERT_EQ(r.status, 201) << r.body;
    ids.push_back(r.json()["id"]);
  }
  auto items = [&](const std::string& q) {
    auto r = d.Get("/v1/runs?" + q);
    EXPECT_EQ(r.status, 200) << r.body;
    return r.json();
  };
  EXPECT_EQ(items("label=team%3Da")["items"].size(), 2u);
  Json one = items("label=team%3Da&label=env%3Dprod")["items"];
  ASSERT_EQ(one.size(), 1u);
  EXPECT_EQ(one[0]["id"], ids[0]);
  EXPECT_EQ(items("state=queued")["items"].size(), 3u);
  EXPECT_EQ(items("state=succeeded")["items"].size(), 0u);
  // Pages of one, newest first, with no repeats.
  std::vector<std::string> seen;
  std::string cursor;
  for (int i = 0; i < 5; ++i) {
    Json page = items("limit=1" + (cursor.empty() ? "" : "&cursor=" + cursor));
    for (const auto& r : page["items"]) seen.push_back(r["id"]);
    if (page["next_cursor"].is_null()) break;
    cursor = page["next_cursor"];
  }
  EXPECT_EQ(seen, (std::vector<std::string>{ids[2], ids[1], ids[0]}));
  EXPECT_EQ(d.Get("/v1/runs?label=nokey").status, 400);
}

TEST_F(E2ETest, LogsFollowStreamsLinesUntilTheAttemptEnds) {
  Epochd d(dir_.path());
  d.Start();
  std::string run = d.RegisterAndSubmit(Def(R"J({"name": "chatty", "steps": [
      {"name": "a", "command": ["sh", "-c", "echo one; sleep 0.3; echo two; sleep 0.3; echo three"]}]})J"));
  d.WaitForRunState(run, [](const Json& j) {
    return !j["steps"][0]["attempts"].empty() && j["steps"][0]["attempts"][0]["state"] != "queued";
  });
  auto r = d.Get("/v1/runs/" + run + "/steps/a/logs?follow=true");
  ASSERT_EQ(r.status, 200);
  EXPECT_EQ(r.content_type, "text/event-stream");
  EXPECT_NE(r.body.find("event: log\ndata: one\n\n"), std::string::npos) << r.body;
  EXPECT_NE(r.body.find("event: log\ndata: three\n\n"), std::string::npos) << r.body;
  EXPECT_NE(r.body.find("event: end"), std::string::npos) << r.body;
  EXPECT_LT(r.body.find("data: one"), r.body.find("data: two"));
}

TEST_F(E2ETest, SigtermStopsCleanlyAndTheDataDirCanBeReopened) {
  Epochd d(dir_.path());
  d.Start();
  std::string run = d.RegisterAndSubmit(Def(R"J({"name": "q", "steps": [{"name": "a", "command": ["true"]}]})J"));
  ASSERT_EQ(d.WaitForRun(run)["state"], "succeeded");
  d.Terminate();
  EXPECT_EQ(d.exit_status(), 0);
  d.Start();  // the election lock and the store were released
  Json r = d.Get("/v1/runs/" + run).json();
  EXPECT_EQ(r["state"], "succeeded");
  auto leaders = d.Get("/v1/events?type=LeaderElected").json()["items"];
  ASSERT_EQ(leaders.size(), 2u);
  EXPECT_EQ(leaders[1]["data"]["epoch"], 2);
}

TEST_F(E2ETest, ASecondEpochdOnTheSameDataDirStandsByAndRedirectsWrites) {
  Epochd d(dir_.path(), {}, "a");
  d.Start();
  Epochd standby(dir_.path(), {}, "b");
  standby.StartStandby();
  Json cluster = standby.Get("/v1/cluster").json();
  EXPECT_EQ(cluster["role"], "standby");
  EXPECT_EQ(cluster["leader"]["address"], d.url());
  EXPECT_EQ(cluster["epoch"], 1);
  // A write to the standby is redirected to the leader, path and query kept;
  // nothing is written by the standby itself.
  HttpResult r = standby.Post("/v1/runs?x=1", R"({"workflow": "w"})");
  EXPECT_EQ(r.status, 307) << r.body;
  EXPECT_EQ(r.location, d.url() + "/v1/runs?x=1");
  EXPECT_EQ(r.json()["error"]["code"], "not_leader");
  EXPECT_EQ(r.role, "standby");
  // (The leader's own pool may write container events meanwhile: count runs only.)
  EXPECT_TRUE(d.Get("/v1/events?type=RunSubmitted").json()["items"].empty());
  EXPECT_EQ(d.Get("/readyz").status, 200);
  EXPECT_EQ(d.Get("/readyz").role, "leader");
  HttpResult ready = standby.Get("/readyz");
  EXPECT_EQ(ready.status, 503);
  EXPECT_EQ(ready.json()["role"], "standby");
}

TEST_F(E2ETest, DeclaredOutputsAndLineageOfDatasetsAndModels) {
  Epochd d(dir_.path());
  d.Start();
  Json def = Def(R"J({"name": "lineage", "params": {"lr": 0.5}, "steps": [
      {"name": "prep", "kind": "data_prep", "dataset": {"name": "numbers"},
       "outputs": ["data.txt"], "command": ["sh", "-c", "seq 1 100 > $EPOCH_OUTPUTS/data.txt"]},
      {"name": "train", "kind": "train", "after": ["prep"], "model": {"name": "summer"},
       "outputs": ["model.txt"],
       "command": ["sh", "-c", "awk '{s+=$1} END {print s}' {{steps.prep.outputs.data.txt}} > $EPOCH_OUTPUTS/model.txt"]},
      {"name": "validate", "kind": "validate", "after": ["train"],
       "command": ["sh", "-c", "test $(cat {{steps.train.outputs.model.txt}}) = 5050 && echo '{\"accuracy\": 0.91}' > $EPOCH_OUTPUTS/metrics.json"]}]})J");
  std::string run = d.RegisterAndSubmit(def);
  Json r = d.WaitForRun(run);
  ASSERT_EQ(r["state"], "succeeded") << r.dump(2);
  Json ds = d.Get("/v1/datasets/numbers").json();
  ASSERT_EQ(ds["versions"].size(), 1u) << ds.dump(2);
  EXPECT_EQ(ds["versions"][0]["run"], run);
  EXPECT_EQ(ds["versions"][0]["outputs"][0]["name"], "data.txt");
  EXPECT_EQ(ds["versions"][0]["outputs"][0]["size"], 292);
  HttpResult mv = d.Get("/v1/models/summer/versions/1");
  ASSERT_EQ(mv.status, 200) << mv.body;
  Json m = mv.json();
  EXPECT_EQ(m["run"], run);
  EXPECT_EQ(m["step"], "train");
  EXPECT_EQ(m["params"]["lr"], 0.5);
  EXPECT_EQ(m["workflow"], "lineage");
  EXPECT_EQ(m["datasets"][0]["name"], "numbers");
  EXPECT_EQ(m["datasets"][0]["version"], 1);
  EXPECT_EQ(m["metrics"]["accuracy"], 0.91);
  EXPECT_EQ(d.Get("/v1/models").json()["items"][0]["versions"], 1);
  EXPECT_EQ(d.Get("/v1/models/summer/versions/2").status, 404);
  EXPECT_EQ(d.Get("/v1/models/nothing").status, 404);
  EXPECT_EQ(d.Get("/v1/datasets/numbers/versions/0").status, 400);
  // Every version, a page at a time.
  Json page = d.Get("/v1/datasets/numbers?limit=1").json();
  EXPECT_EQ(page["count"], 1);
  EXPECT_EQ(page["versions"].size(), 1u);
  EXPECT_TRUE(page["next_cursor"].is_null()) << page.dump();
  EXPECT_TRUE(d.Get("/v1/datasets/numbers?cursor=1").json()["versions"].empty());
  HttpResult bad = d.Get("/v1/datasets/numbers?limit=0");
  EXPECT_EQ(bad.status, 400);
  EXPECT_NE(bad.body.find("limit"), std::string::npos) << bad.body;

  // epochctl shows the same lineage.
  std::string ctl = EpochctlPath() + " --server " + d.url() + " ";
  std::string out;
  auto has = [&out](const std::string& text) { return out.find(text) != std::string::npos; };
  std::string ds_digest = ds["versions"][0]["digest"].get<std::string>().substr(0, 12);
  ASSERT_EQ(RunCommand(ctl + "dataset list", &out), 0) << out;
  EXPECT_TRUE(has("\nnumbers  1       1         " + ds_digest + "  ")) << out;
  ASSERT_EQ(RunCommand(ctl + "dataset get numbers", &out), 0) << out;
  EXPECT_TRUE(has(run + "/prep  data.txt (292)\n")) << out;
  ASSERT_EQ(RunCommand(ctl + "model list", &out), 0) << out;
  EXPECT_TRUE(has("\nsummer  1       1         ")) << out;
  ASSERT_EQ(RunCommand(ctl + "model get summer", &out), 0) << out;
  EXPECT_TRUE(has("Versions: 1\n")) << out;
  for (const std::string& cell :
       {run + "/train", std::string("lineage@1"), std::string("numbers@1"),
        std::string("accuracy=0.91"), run + "/validate", std::string("{\"lr\":0.5}")}) {
    EXPECT_TRUE(has(cell)) << cell << " not in:\n" << out;
  }
  ASSERT_EQ(RunCommand(ctl + "model get summer 1", &out), 0) << out;
  EXPECT_TRUE(has("Run:          " + run + "\n")) << out;
  EXPECT_TRUE(has("Workflow:     lineage@1\n")) << out;
  EXPECT_TRUE(has("Data sets:    numbers@1\n")) << out;
  EXPECT_TRUE(has("Validated by: " + run + "/validate\n")) << out;
  EXPECT_TRUE(has("\naccuracy  0.91\n")) << out;
  EXPECT_TRUE(has("\nmodel.txt  5     ")) << out;  // "5050\n": 5 bytes
  EXPECT_EQ(RunCommand(ctl + "model get nothing", &out), 1) << out;
  EXPECT_TRUE(has("error: model 'nothing' not found")) << out;
  EXPECT_EQ(RunCommand(ctl + "model get summer 2", &out), 1) << out;
  EXPECT_TRUE(has("error: model 'summer' version 2 not found")) << out;

  // A declared output that is not written fails the attempt, naming it.
  Json missing = Def(R"J({"name": "forgetful", "steps": [
      {"name": "s", "outputs": ["model.bin"], "command": ["true"]}]})J");
  std::string run2 = d.RegisterAndSubmit(missing);
  Json r2 = d.WaitForRun(run2);
  EXPECT_EQ(r2["state"], "failed");
  EXPECT_EQ(r2["steps"][0]["attempts"][0]["reason"], "missing_output: model.bin") << r2.dump(2);
}

// A run that ends leaves epochd's memory for the read model (engine/archive.h); what
// the API reads of it is the same from the leader, from a standby, after a restart
// from a snapshot (which holds open work only), and after a retry brings it back.
TEST_F(E2ETest, FinishedRunsReadTheSameFromTheReadModelAcrossRestartsAndOnAStandby) {
  Epochd d(dir_.path(), {"storage.snapshotEvery=10"}, "a");
  d.Start();
  std::string ok = d.RegisterAndSubmit(Def(R"J({"name": "lineage", "steps": [
      {"name": "prep", "kind": "data_prep", "dataset": {"name": "numbers"},
       "outputs": ["data.txt"], "command": ["sh", "-c", "seq 1 10 > $EPOCH_OUTPUTS/data.txt; echo prepared"]},
      {"name": "train", "kind": "train", "after": ["prep"], "model": {"name": "summer"},
       "outputs": ["model.txt"], "command": ["sh", "-c", "echo 55 > $EPOCH_OUTPUTS/model.txt"]}]})J"));
  std::string bad = d.RegisterAndSubmit(Def(
      R"J({"name": "bad", "steps": [{"name": "a", "command": ["sh", "-c", "echo no; exit 3"]}]})J"));
  ASSERT_EQ(d.WaitForRun(ok)["state"], "succeeded");
  ASSERT_EQ(d.WaitForRun(bad)["state"], "failed");
  const std::vector<std::string> paths = {"/v1/runs",
                                          "/v1/runs?state=failed",
                                          "/v1/runs?workflow=lineage",
                                          "/v1/runs?limit=1",
                                          "/v1/runs/" + ok,
                                          "/v1/runs/" + bad,
                                          "/v1/runs/" + ok + "/history",
                                          "/v1/runs/" + bad + "/events",
                                          "/v1/runs/" + ok + "/steps/prep/logs",
                                          "/v1/runs/" + bad + "/steps/a/logs?follow=true",
                                          "/v1/datasets/numbers",
                                          "/v1/models/summer/versions/1",
                                          "/v1/runs/r-never"};
  auto reads = [&](Epochd& e) {
    Json out = Json::object();
    for (const auto& p : paths) out[p] = {e.Get(p).status, e.Get(p).body};
    return out;
  };
  Json before = reads(d);
  EXPECT_EQ(before["/v1/runs/" + ok][0], 200);
  EXPECT_EQ(Json::parse(before["/v1/runs"][1].get<std::string>())["items"].size(), 2u);
  EXPECT_NE(before["/v1/runs/" + ok + "/steps/prep/logs"][1].get<std::string>().find("prepared"),
            std::string::npos);
  EXPECT_NE(before["/v1/runs/" + bad + "/steps/a/logs?follow=true"][1].get<std::string>().find(
                "event: end"),
            std::string::npos);
  EXPECT_EQ(before["/v1/runs/r-never"][0], 404);

  Epochd standby(dir_.path(), {}, "b");
  standby.StartStandby();
  EXPECT_EQ(reads(standby), before);
  standby.Terminate();
  d.Terminate();
  d.Start();
  EXPECT_EQ(reads(d), before);
  // The failed run comes back with a retry and ends again: read as open, then as
  // folded anew.
  ASSERT_EQ(d.Post("/v1/runs/" + bad + "/retry", "").status, 202);
  Json again = d.WaitForRun(bad);
  EXPECT_EQ(again["state"], "failed");
  EXPECT_EQ(again["steps"][0]["attempts"].size(), 2u) << again.dump();
  Json failed = d.Get("/v1/runs?state=failed").json()["items"];
  ASSERT_EQ(failed.size(), 1u);
  EXPECT_EQ(failed[0], again);
}

TEST_F(E2ETest, EpochctlSubmitWaitsAndExitsByTheRunsOutcome) {
  Epochd d(dir_.path());
  d.Start();
  std::string file = dir_.path() + "/wf.json";
  std::ofstream(file) << R"J({"name": "ctl", "params": {"code": 0},
      "steps": [{"name": "a", "command": ["sh", "-c", "exit {{params.code}}"]}]})J";
  std::string ctl = EpochctlPath() + " --server " + d.url() + " ";
  std::string out;
  ASSERT_EQ(RunCommand(ctl + "workflow register " + file, &out), 0) << out;
  EXPECT_NE(out.find("version 1"), std::string::npos) << out;
  EXPECT_EQ(RunCommand(ctl + "run submit ctl --wait", &out), 0) << out;
  EXPECT_EQ(RunCommand(ctl + "run submit ctl -p code=4 --wait", &out), 1) << out;
  EXPECT_EQ(RunCommand(ctl + "run get no-such-run", &out), 1);
  EXPECT_NE(out.find("run 'no-such-run' not found"), std::string::npos) << out;
  EXPECT_EQ(RunCommand(ctl + "-o json run list --state failed", &out), 0) << out;
  auto list = ParseJson(out);
  ASSERT_TRUE(list.ok()) << out;
  ASSERT_EQ((*list)["items"].size(), 1u);
  EXPECT_EQ((*list)["items"][0]["params"]["code"], 4);
}

TEST_F(E2ETest, JsonLogsAreOneObjectPerLine) {
  Epochd d(dir_.path());
  d.AddArgs({"--log-format", "json"});
  d.Start();
  // A request whose path carries quotes must still log valid JSON.
  EXPECT_EQ(d.Get("/v1/runs/%22quoted%22").status, 404);
  d.Terminate();
  std::istringstream log(ReadAll(dir_.path() + "/epochd.log"));
  std::string line;
  int lines = 0;
  bool saw_request = false;
  while (std::getline(log, line)) {
    auto j = ParseJson(line);
    ASSERT_TRUE(j.ok()) << "not JSON: " << line;
    EXPECT_TRUE(j->contains("time") && j->contains("level") && j->contains("msg")) << line;
    if ((*j)["msg"].get<std::string>().find("route=/v1/runs/{id} status=404") != std::string::npos) {
      saw_request = true;
    }
    ++lines;
  }
  EXPECT_GT(lines, 2);
  EXPECT_TRUE(saw_request);
}

}  // namespace
}  // namespace epoch::testing
