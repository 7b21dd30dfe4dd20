// The golden history generator, run as a test: a real epochd with real agents goes
// through every lifecycle Epoch records (a DAG with data set, model and validation;
// a cache hit and an invalidation; a skipped step; a failure, its retry and a
// requested rerun; a timeout; a cancellation; a sweep; one with early stopping; a gang;
// a run preempted by one of higher priority; an elastic gang that shrinks;
// live metrics and a
// checkpoint; a tenant's files deleted by retention; a container lost to kill -9; one
// released when idle). The test fails when the log it
// gets lacks any event type (engine/events.h, ev::kAllTypes) or does not replay without error.
//
// With EPOCH_WRITE_GOLDEN=<dir> it also writes the log (<dir>/<name>.ndjson, the
// format of `epochctl events export`) and the state it replays to
// (<dir>/<name>.state.json) for check-in under tests/golden/, where golden_test
// replays it from then on. A golden file, once checked in, never changes.
#include <gtest/gtest.h>
#include <signal.h>

#include <cstdlib>
#include <fstream>
#include <set>

#include "common/json.h"
#include "engine/engine.h"
#include "engine/events.h"
#include "engine/state.h"
#include "tests/exported_event.h"
#include "tests/harness.h"

namespace epoch::testing {
namespace {

using namespace std::chrono_literals;

std::set<std::string> TypesIn(Epochd& d) {
  std::set<std::string> types;
  for (const auto& e : d.AllEvents()) types.insert(e["type"].get<std::string>());
  return types;
}

std::string Submit(Epochd& d, const std::string& workflow) {
  HttpResult r = d.PostJson("/v1/runs", Json{{"workflow", workflow}});
  EXPECT_EQ(r.status, 201) << r.body;
  return r.status == 201 ? r.json()["id"].get<std::string>() : "";
}

void Register(Epochd& d, const char* text) {
  auto def = ParseJson(text);
  ASSERT_TRUE(def.ok()) << def.status().ToString() << "\n" << text;
  HttpResult r = d.PostJson("/v1/workflows", *def);
  ASSERT_TRUE(r.status == 200 || r.status == 201) << r.body;
}

TEST(GoldenHistoryE2ETest, ARealLifecycleRecordsEveryEventTypeAndReplays) {
  TempDir dir;
  // Containers come on demand (two at a time) and go when idle for 10 s; a killed
  // agent is lost within its 2 s lease, well before it could be released as idle.
  Epochd d(dir.path() + "/data",
           {"sig.minReplicas=0", "sig.maxReplicas=3", "sig.idleTimeout=10s",
            "sig.ssAllocationUnit=2", "sig.ssAllocationInterval=0s", "executor.leaseTime=2s",
            // Retention for tenant "old" only, so the lifecycle above keeps its files.
            "tenants.old.retention.outputs=1s", "tenants.old.retention.logs=1s",
            "retention.interval=200ms",
            // Preemption by priority, at once: only the "urgent" run below outranks others.
            "scheduler.preemption=priority", "scheduler.preemptionMinRunTime=0s"});
  d.Start();

  // A DAG: a cached data set, a model, its validation, and a step `when` skips.
  Register(d, R"J({"name": "lifecycle", "steps": [
      {"name": "prep", "kind": "data_prep", "cache": true, "outputs": ["rows.txt"],
       "dataset": {"name": "rows"}, "command": ["sh", "-c", "echo 1 2 3 > {{outputs}}/rows.txt"]},
      {"name": "train", "kind": "train", "after": ["prep"], "outputs": ["model.txt"],
       "model": {"name": "summer"},
       "command": ["sh", "-c", "wc -w < {{steps.prep.outputs.rows.txt}} > {{outputs}}/model.txt"]},
      {"name": "validate", "kind": "validate", "after": ["train"],
       "command": ["sh", "-c", "echo '{\"accuracy\": 0.75}' > $EPOCH_OUTPUTS/metrics.json"]},
      {"name": "deploy", "kind": "infer", "after": ["validate"],
       "when": "steps.validate.metrics.accuracy > 0.9", "command": ["true"]}]})J");
  std::string first = Submit(d, "lifecycle");
  EXPECT_EQ(d.WaitForRun(first)["state"], "succeeded");
  std::string second = Submit(d, "lifecycle");  // prep is a cache hit
  EXPECT_EQ(d.WaitForRun(second)["state"], "succeeded");
  HttpResult inv = d.PostJson("/v1/cache/invalidate", Json{{"workflow", "lifecycle"}});
  EXPECT_EQ(inv.status / 100, 2) << inv.body;

  // A step that always fails: retried once, the run fails; a rerun is asked for.
  Register(d, R"J({"name": "flaky", "steps": [
      {"name": "a", "retry": {"limit": 1, "backoff": "fixed", "initial": "100ms"},
       "command": ["sh", "-c", "exit 3"]}]})J");
  std::string flaky = Submit(d, "flaky");
  EXPECT_EQ(d.WaitForRun(flaky)["state"], "failed");
  HttpResult retry = d.PostJson("/v1/runs/" + flaky + "/retry", Json::object());
  EXPECT_EQ(retry.status / 100, 2) << retry.body;
  EXPECT_EQ(d.WaitForRun(flaky)["state"], "failed");

  // A timeout, and a cancellation of a running step.
  Register(d, R"J({"name": "slow", "steps": [
      {"name": "a", "timeout": "300ms", "command": ["sleep", "30"]}]})J");
  EXPECT_EQ(d.WaitForRun(Submit(d, "slow"))["state"], "failed");
  Register(d, R"J({"name": "long", "steps": [{"name": "a", "command": ["sleep", "60"]}]})J");
  std::string cancelled = Submit(d, "long");
  d.WaitForRunState(cancelled, [](const Json& r) { return r["state"] == "running"; });
  HttpResult c = d.PostJson("/v1/runs/" + cancelled + "/cancel", Json::object());
  EXPECT_EQ(c.status / 100, 2) << c.body;
  EXPECT_EQ(d.WaitForRun(cancelled)["state"], "cancelled");

  // A sweep, and a gang of two workers.
  Register(d, R"J({"name": "swept", "steps": [
      {"name": "train", "kind": "train",
       "sweep": {"method": "grid", "parameters": {"lr": [0.1, 0.2]},
                 "objective": {"metric": "accuracy", "goal": "maximize"}},
       "command": ["sh", "-c", "echo '{\"accuracy\": {{params.lr}}}' > $EPOCH_OUTPUTS/metrics.json"]}]})J");
  EXPECT_EQ(d.WaitForRun(Submit(d, "swept"))["state"], "succeeded");
  // Early stopping: two trials one after the other; the second is worse at the first
  // rung, stopped (TrialStopped) and cancelled while it waits; the first was promoted.
  Register(d, R"J({"name": "early", "steps": [
      {"name": "train", "kind": "train",
       "sweep": {"method": "asha", "parameters": {"q": [0.9, 0.1]}, "maxResource": 3,
                 "objective": {"metric": "accuracy", "goal": "maximize"}},
       "command": ["sh", "-c", "echo \"{\\\"epoch\\\": 1, \\\"accuracy\\\": {{params.q}}}\" >> $EPOCH_METRICS; sleep 1; if [ {{params.q}} = 0.1 ]; then sleep 30; fi; echo '{\"accuracy\": {{params.q}}}' > $EPOCH_OUTPUTS/metrics.json"]}]})J");
  EXPECT_EQ(d.WaitForRun(Submit(d, "early"))["state"], "succeeded");
  Register(d, R"J({"name": "gang", "steps": [
      {"name": "train", "kind": "train", "workers": 2, "resources": {"cpu": "100m"},
       "command": ["true"]}]})J");
  EXPECT_EQ(d.WaitForRun(Submit(d, "gang"))["state"], "succeeded");

  // Live metrics and a checkpoint: three points appended to $EPOCH_METRICS, one line
  // that is not a metric (skipped), a checkpoint declared in checkpoint.json.
  Register(d, R"J({"name": "curves", "steps": [
      {"name": "train", "kind": "train", "command": ["sh", "-c",
       "for i in 1 2 3; do echo \"{\\\"step\\\": $i, \\\"loss\\\": 0.$i}\" >> $EPOCH_METRICS; done; echo oops >> $EPOCH_METRICS; echo w > $EPOCH_CHECKPOINT_DIR/epoch-1.pt; echo '{\"file\": \"epoch-1.pt\", \"epoch\": 1}' > $EPOCH_CHECKPOINT_DIR/checkpoint.json; sleep 2"]}]})J");
  std::string curves = Submit(d, "curves");
  EXPECT_EQ(d.WaitForRun(curves)["state"], "succeeded");
  HttpResult m = d.Get("/v1/runs/" + curves + "/steps/train/metrics?name=loss");
  ASSERT_EQ(m.status, 200) << m.body;
  EXPECT_EQ(m.json()["series"][0]["points"], Json::parse("[[1, 0.1], [2, 0.2], [3, 0.3]]"))
      << m.body;

  // Retention: a run of tenant "old" loses its outputs and logs a second after it ends.
  const std::string olga = AddToken(d.data_dir(), "olga", "old", "operator");
  HttpResult wf = HttpCall(d.url(), "POST", "/v1/workflows", R"J({"name": "brief", "steps": [
      {"name": "a", "outputs": ["out.txt"], "command": ["sh", "-c", "echo x > {{outputs}}/out.txt"]}]})J",
                           olga);
  ASSERT_EQ(wf.status, 201) << wf.body;
  HttpResult brief = HttpCall(d.url(), "POST", "/v1/runs", R"({"workflow": "brief"})", olga);
  ASSERT_EQ(brief.status, 201) << brief.body;
  EXPECT_EQ(d.WaitForRun(brief.json()["id"])["state"], "succeeded");
  EXPECT_TRUE(WaitFor(
      [&] {
        std::set<std::string> t = TypesIn(d);
        return t.count("OutputsExpired") && t.count("LogsExpired");
      },
      30s));

  // Preemption: three runs fill the three containers (each takes all 2 CPUs); a run
  // of higher priority takes one's place (JobPreempted), which runs again after.
  Register(d, R"J({"name": "hog", "steps": [
      {"name": "a", "resources": {"cpu": "2"}, "command": ["sleep", "3"]}]})J");
  std::vector<std::string> hogs;
  for (int i = 0; i < 3; ++i) hogs.push_back(Submit(d, "hog"));
  for (const auto& h : hogs) {
    d.WaitForRunState(h, [](const Json& r) { return r["steps"][0]["state"] == "running"; });
  }
  HttpResult urgent = d.PostJson("/v1/runs", Json{{"workflow", "hog"}, {"priority", 5}});
  ASSERT_EQ(urgent.status, 201) << urgent.body;
  EXPECT_EQ(d.WaitForRun(urgent.json()["id"])["state"], "succeeded");
  for (const auto& h : hogs) EXPECT_EQ(d.WaitForRun(h)["state"], "succeeded");

  // An elastic gang (1 to 2 workers, each taking a whole container) loses a worker with
  // its container (agent killed): it shrinks (GangResized) and runs again, not failed.
  Register(d, R"J({"name": "elastic", "steps": [
      {"name": "train", "kind": "train", "workers": {"min": 1, "max": 2}, "resources": {"cpu": "2"},
       "command": ["sh", "-c", "if [ -f $EPOCH_CHECKPOINT_DIR/began ]; then exit 0; fi; touch $EPOCH_CHECKPOINT_DIR/began; sleep 60"]}]})J");
  std::string elastic = Submit(d, "elastic");
  Json er = d.WaitForRunState(elastic, [](const Json& r) {
    const Json& a = r["steps"][0]["attempts"];
    return !a.empty() && a[0]["state"] == "running" && a[0]["world_size"] == 2;
  });
  ASSERT_EQ(er["steps"][0]["attempts"][0]["workers"].size(), 2u) << er.dump();
  std::string lost = er["steps"][0]["attempts"][0]["workers"][1]["container"];
  pid_t agent = 0;
  Json containers = d.Get("/v1/containers").json()["items"];
  for (const auto& c : containers) {
    if (c["id"] == lost) agent = static_cast<pid_t>(c["pid"].get<int64_t>());
  }
  ASSERT_GT(agent, 0) << containers.dump();
  kill(agent, SIGKILL);
  EXPECT_EQ(d.WaitForRun(elastic)["state"], "succeeded");

  // A container lost (its agent killed), then the other released when idle.
  std::vector<pid_t> agents = d.AgentPids();
  ASSERT_GE(agents.size(), 2u) << "the gang ran on two containers";
  kill(agents[0], SIGKILL);
  EXPECT_TRUE(WaitFor(
      [&] {
        std::set<std::string> t = TypesIn(d);
        return t.count("ContainerLost") && t.count("ContainerReleased");
      },
      60s));

  std::vector<Json> log = d.AllEvents();
  ASSERT_FALSE(log.empty());
  std::set<std::string> types;
  engine::State state;
  for (const auto& e : log) {
    types.insert(e["type"].get<std::string>());
    auto r = FromExported(e);
    ASSERT_TRUE(r.ok()) << e.dump();
    Status st = engine::Evolve(state, *r);
    ASSERT_TRUE(st.ok()) << st.ToString();
  }
  for (std::string_view type : engine::ev::kAllTypes) {
    EXPECT_TRUE(types.count(std::string(type))) << "the lifecycle recorded no " << type;
  }
  EXPECT_EQ(state.head, log.back()["position"].get<uint64_t>());
  EXPECT_EQ(state.runs.size(), 15u);

  if (const char* out = std::getenv("EPOCH_WRITE_GOLDEN")) {
    // v2-every-event-type was written by this test before payloads had their own
    // versions; v3-typed-payloads after (WorkflowRegistered and JobQueued at v2);
    // v4-live-metrics once metrics and checkpoints were recorded; v5-retention with
    // OutputsExpired and LogsExpired; v6-early-stopping with TrialPromoted and
    // TrialStopped; v7-preemption with JobPreempted; v8-elastic with GangResized.
    const std::string name = "v8-elastic";
    std::ofstream events(std::string(out) + "/" + name + ".ndjson");
    for (const auto& e : log) events << CanonicalDump(e) << "\n";
    std::ofstream(std::string(out) + "/" + name + ".state.json")
        << engine::StateDigestJson(state).dump(1) << "\n";
  }
}

}  // namespace
}  // namespace epoch::testing
