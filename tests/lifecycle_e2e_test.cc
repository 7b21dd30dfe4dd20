// The lifecycle features end to end (step caching, hyperparameter sweeps): real epochd
// and agents, real files, RocksDB in a temp dir. Steps count their executions in files
// (outside the data dir for caching, across runs), so a cache hit is seen as a step
// that did not run.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <string>

#include "tests/harness.h"

namespace epoch::testing {
namespace {

int Count(const std::string& path) {
  std::ifstream in(path);
  int n = 0;
  std::string line;
  while (std::getline(in, line)) ++n;
  return n;
}

void Write(const std::string& path, const std::string& text) { std::ofstream(path) << text; }

const Json& StepOf(const Json& run, const std::string& name) {
  for (const auto& s : run["steps"]) {
    if (s["name"] == name) return s;
  }
  static const Json kNull;
  ADD_FAILURE() << "no step " << name;
  return kNull;
}

TEST(CacheE2ETest, HitsMissesInvalidationAndRestart) {
  TempDir dir;
  std::string work = dir.path() + "/work";
  std::filesystem::create_directories(work);
  std::string input = work + "/raw.txt";
  Write(input, "3\n4\n");
  // Its steps count their runs in one file across runs, outside every run: a sandboxed
  // step could not write it (executors/README.md), so this test runs them unsandboxed.
  // The declared input lies in `work`, which the tenant may read (inputRoots).
  Epochd d(dir.path() + "/data", {"executor.isolation=off", "tenants.default.inputRoots=" + work});
  d.Start();
  // prep sums its input file; train multiplies the sum by lr; validate checks the
  // model and reports it as a metric. prep and train are cached; validate is not.
  auto parsed = ParseJson(R"J({"name": "cached", "params": {"lr": 2, "input": ")J" + input +
                          R"J(", "work": ")J" + work + R"J("}, "steps": [
      {"name": "prep", "kind": "data_prep", "cache": true, "inputs": ["{{params.input}}"],
       "outputs": ["sum.txt"], "dataset": {"name": "sums"},
       "command": ["sh", "-c", "echo x >> {{params.work}}/prep.count; awk '{s+=$1} END {print s}' {{params.input}} > {{outputs}}/sum.txt"]},
      {"name": "train", "kind": "train", "after": ["prep"], "cache": {"maxAge": "7d"},
       "outputs": ["model.txt"], "model": {"name": "scaled"},
       "command": ["sh", "-c", "echo x >> {{params.work}}/train.count; echo $(( $(cat {{steps.prep.outputs.sum.txt}}) * {{params.lr}} )) > {{outputs}}/model.txt"]},
      {"name": "validate", "kind": "validate", "after": ["train"],
       "command": ["sh", "-c", "echo \"{\\\"model\\\": $(cat {{steps.train.outputs.model.txt}})}\" > $EPOCH_OUTPUTS/metrics.json"]}]})J");
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  const Json& def = *parsed;
  auto run_with = [&](Json params) {
    std::string id = d.RegisterAndSubmit(def, params);
    Json r = d.WaitForRun(id);
    EXPECT_EQ(r["state"], "succeeded") << r.dump(2);
    return r;
  };
  std::string prep_count = work + "/prep.count", train_count = work + "/train.count";

  Json r1 = run_with(Json::object());
  EXPECT_EQ(Count(prep_count), 1);
  EXPECT_EQ(Count(train_count), 1);
  EXPECT_EQ(StepOf(r1, "validate")["metrics"]["model"], 14);
  EXPECT_EQ(StepOf(r1, "prep")["attempts"][0]["cache_key"].get<std::string>().size(), 64u);

  // The same params: prep and train are reused, validate reads r1's model.
  Json r2 = run_with(Json::object());
  EXPECT_EQ(Count(prep_count), 1);
  EXPECT_EQ(Count(train_count), 1);
  EXPECT_EQ(StepOf(r2, "prep")["attempts"][0]["cached_from"], r1["id"].get<std::string>() + "/prep/1");
  EXPECT_EQ(StepOf(r2, "train")["attempts"][0]["cached_from"],
            r1["id"].get<std::string>() + "/train/1");
  EXPECT_EQ(StepOf(r2, "validate")["metrics"]["model"], 14);
  auto events = d.Get("/v1/runs/" + r2["id"].get<std::string>() + "/events").json()["items"];
  int hits = 0;
  for (const auto& e : events) hits += e["type"] == "JobCacheHit";
  EXPECT_EQ(hits, 2);
  // The reused model is the same model version.
  EXPECT_EQ(d.Get("/v1/models/scaled").json()["versions"].size(), 1u);

  // A changed param: prep is reused, train runs.
  Json r3 = run_with(Json{{"lr", 3}});
  EXPECT_EQ(Count(prep_count), 1);
  EXPECT_EQ(Count(train_count), 2);
  EXPECT_EQ(StepOf(r3, "validate")["metrics"]["model"], 21);

  // A changed input file: prep runs, and its new output makes train run too.
  Write(input, "3\n4\n5\n");
  Json r4 = run_with(Json::object());
  EXPECT_EQ(Count(prep_count), 2);
  EXPECT_EQ(Count(train_count), 3);
  EXPECT_EQ(StepOf(r4, "validate")["metrics"]["model"], 24);
  EXPECT_EQ(d.Get("/v1/datasets/sums").json()["versions"].size(), 2u);

  // The cache listing, filtered.
  Json entries = d.Get("/v1/cache?workflow=cached&step=prep").json()["items"];
  ASSERT_EQ(entries.size(), 2u) << entries.dump(2);  // one per input version
  for (const auto& e : entries) EXPECT_EQ(e["step"], "prep");

  // Bad invalidations change nothing.
  EXPECT_EQ(d.Post("/v1/cache/invalidate", R"({"key": 5})").status, 400);
  EXPECT_EQ(d.Post("/v1/cache/invalidate", R"({"keys": "x"})").status, 400);
  EXPECT_EQ(d.Post("/v1/cache/invalidate", "{").status, 400);
  EXPECT_EQ(d.Post("/v1/cache/invalidate", "{}").status, 422);
  HttpResult nf = d.Post("/v1/cache/invalidate", R"({"key": "abc"})");
  EXPECT_EQ(nf.status, 404);
  EXPECT_NE(nf.body.find("cache key 'abc' has no entry"), std::string::npos) << nf.body;
  // prep: 2 input versions; train: (sum 7, lr 2), (sum 7, lr 3), (sum 12, lr 2).
  EXPECT_EQ(d.Get("/v1/cache").json()["items"].size(), 5u);

  // Invalidating prep's entries by workflow and step: prep runs again, train is
  // reused (prep wrote the same sum, so train's key is unchanged).
  HttpResult inv = d.Post("/v1/cache/invalidate", R"({"workflow": "cached", "step": "prep"})");
  ASSERT_EQ(inv.status, 200) << inv.body;
  EXPECT_EQ(inv.json()["invalidated"], 2);
  Json r5 = run_with(Json::object());
  EXPECT_EQ(Count(prep_count), 3);
  EXPECT_EQ(Count(train_count), 3);
  EXPECT_EQ(StepOf(r5, "validate")["metrics"]["model"], 24);

  // Entries are events: they survive a restart.
  d.Terminate();
  d.Start();
  Json r6 = run_with(Json::object());
  EXPECT_EQ(Count(prep_count), 3);
  EXPECT_EQ(Count(train_count), 3);
  EXPECT_EQ(StepOf(r6, "prep")["attempts"][0]["cached_from"], r5["id"].get<std::string>() + "/prep/1");

  // Invalidating one key by the key itself.
  std::string key = StepOf(r6, "train")["attempts"][0]["cache_key"];
  inv = d.Post("/v1/cache/invalidate", Json{{"key", key}}.dump());
  ASSERT_EQ(inv.status, 200) << inv.body;
  EXPECT_EQ(inv.json()["keys"][0], key);
  run_with(Json::object());
  EXPECT_EQ(Count(train_count), 4);
}

// A grid of 4 trials, 2 at a time; one trial fails; the best by accuracy wins and
// the next step reads its params and outputs.
TEST(SweepE2ETest, GridOfFourTwoAtATimeToleratesAFailedTrialAndPassesOnTheBest) {
  TempDir dir;
  Epochd d(dir.path() + "/data");
  d.Start();
  // accuracy = hidden/100 + lr; the (16, 0.2) trial, which would win, fails instead.
  // Each trial logs its start and end in the run's workspace, which all trials share.
  auto parsed = ParseJson(R"J({"name": "swept", "steps": [
      {"name": "train", "kind": "train", "outputs": ["model.txt"], "model": {"name": "toy"},
       "sweep": {"method": "grid", "parameters": {"lr": [0.1, 0.2], "hidden": [8, 16]},
                 "parallel": 2, "objective": {"metric": "accuracy", "goal": "maximize"}},
       "command": ["sh", "-c", "echo start $(date +%s%N) >> {{workspace}}/t$EPOCH_TRIAL.log; sleep 0.5; if [ {{params.hidden}} = 16 ] && [ {{params.lr}} = 0.2 ]; then exit 3; fi; echo {{params.hidden}}-{{params.lr}} > {{outputs}}/model.txt; awk 'BEGIN { printf \"{\\\"accuracy\\\": %.2f}\", {{params.hidden}} / 100 + {{params.lr}} }' > {{outputs}}/metrics.json; echo end $(date +%s%N) >> {{workspace}}/t$EPOCH_TRIAL.log"]},
      {"name": "infer", "kind": "infer", "after": ["train"],
       "command": ["sh", "-c", "test $(cat {{steps.train.outputs.model.txt}}) = 8-0.2 && test {{steps.train.best.params.lr}} = 0.2 && test {{steps.train.best.params.hidden}} = 8"]}]})J");
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  std::string id = d.RegisterAndSubmit(*parsed);
  Json r = d.WaitForRun(id);
  ASSERT_EQ(r["state"], "succeeded") << r.dump(2);
  const Json& train = StepOf(r, "train");
  ASSERT_EQ(train["attempts"].size(), 4u);
  int failed = 0;
  for (const auto& a : train["attempts"]) failed += a["state"] == "failed";
  EXPECT_EQ(failed, 1);
  // Trials (hidden, lr): 0 (8, 0.1) 0.18; 1 (8, 0.2) 0.28; 2 (16, 0.1) 0.26; 3 failed.
  EXPECT_EQ(train["best"]["trial"], 1);
  EXPECT_EQ(train["best"]["params"], (Json{{"hidden", 8}, {"lr", 0.2}}));
  EXPECT_EQ(train["metrics"]["accuracy"], 0.28);
  EXPECT_EQ(StepOf(r, "infer")["state"], "succeeded");
  auto events = d.Get("/v1/runs/" + id + "/events").json()["items"];
  int completed = 0;
  for (const auto& e : events) {
    if (e["type"] != "StepSweepCompleted") continue;
    ++completed;
    EXPECT_EQ(e["data"]["best_value"], 0.28);
    EXPECT_EQ(e["data"]["failed"], 1);
  }
  EXPECT_EQ(completed, 1);
  EXPECT_EQ(d.Get("/v1/models/toy/versions/1").json()["params"]["hidden"], 8);

  // Never more than 2 trials at once, and 2 did overlap.
  std::vector<std::pair<int64_t, int>> edges;  // (time, +1 start / -1 end)
  for (int t = 0; t < 4; ++t) {
    std::ifstream in(d.data_dir() + "/runs/" + id + "/t" + std::to_string(t) + ".log");
    std::string what;
    int64_t ns;
    while (in >> what >> ns) edges.emplace_back(ns, what == "start" ? 1 : -1);
  }
  std::sort(edges.begin(), edges.end());
  int running = 0, most = 0;
  for (const auto& [t, delta] : edges) most = std::max(most, running += delta);
  EXPECT_EQ(most, 2);
}

// Outputs pass between steps by digest: an output changed after its step finished is
// refused by the agent of the step that reads it, which does not run.
TEST(OutputsE2ETest, AStepDoesNotRunOnAnUpstreamOutputThatChanged) {
  TempDir dir;
  Epochd d(dir.path() + "/data");
  d.Start();
  // make writes data.txt; while wait runs (make has ended), this test appends to it and
  // then lets wait end; use reads data.txt and must not run. (Nothing a step starts
  // outlives it, in its sandbox, so the tampering is the test's own.)
  auto parsed = ParseJson(R"J({"name": "tamper", "steps": [
      {"name": "make", "outputs": ["data.txt"], "command": ["sh", "-c", "echo 42 > {{outputs}}/data.txt"]},
      {"name": "wait", "after": ["make"],
       "command": ["sh", "-c", "while [ ! -e {{workspace}}/tampered ]; do sleep 0.05; done"]},
      {"name": "use", "after": ["wait"],
       "command": ["sh", "-c", "echo ran >> {{workspace}}/use.count; cat {{steps.make.outputs.data.txt}}"]}]})J");
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  std::string id = d.RegisterAndSubmit(*parsed);
  Json running =
      d.WaitForRunState(id, [](const Json& r) { return StepOf(r, "wait")["state"] == "running"; });
  ASSERT_EQ(StepOf(running, "make")["state"], "succeeded") << running.dump(2);
  std::string run_dir = d.data_dir() + "/runs/" + id;
  std::ofstream(run_dir + "/make/1/outputs/data.txt", std::ios::app) << "43\n";
  Write(run_dir + "/tampered", "");
  Json r = d.WaitForRun(id);
  EXPECT_EQ(r["state"], "failed") << r.dump(2);
  const Json& use = StepOf(r, "use");
  ASSERT_EQ(use["attempts"].size(), 1u) << r.dump(2);
  std::string reason = use["attempts"][0]["reason"];
  EXPECT_EQ(reason.rfind("input_mismatch: ", 0), 0u) << reason;
  EXPECT_NE(reason.find("/runs/" + id + "/make/1/outputs/data.txt has sha256 "), std::string::npos)
      << reason;
  EXPECT_EQ(Count(run_dir + "/use.count"), 0);  // it never ran

  // Untouched outputs pass: the same workflow without the tampering succeeds.
  auto clean = ParseJson(R"J({"name": "clean", "steps": [
      {"name": "make", "outputs": ["data.txt"], "command": ["sh", "-c", "echo 42 > {{outputs}}/data.txt"]},
      {"name": "use", "after": ["make"],
       "command": ["sh", "-c", "echo ran >> {{workspace}}/use.count; test $(cat {{steps.make.outputs.data.txt}}) = 42"]}]})J");
  ASSERT_TRUE(clean.ok());
  std::string id2 = d.RegisterAndSubmit(*clean);
  Json r2 = d.WaitForRun(id2);
  EXPECT_EQ(r2["state"], "succeeded") << r2.dump(2);
  EXPECT_EQ(Count(d.data_dir() + "/runs/" + id2 + "/use.count"), 1);
}

}  // namespace
}  // namespace epoch::testing
