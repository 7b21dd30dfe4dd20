// Fixtures and helpers shared by the engine's pure tests of decide/evolve through the
// Processor (decider_test.cc, container_protocol_test.cc, schedule_test.cc, cache_test.cc,
// lineage_test.cc, sweep_test.cc): no store, no threads. Internal to engine_test.
//
// They live in a named namespace, not an anonymous one: gtest requires every test of a
// suite to use the same fixture class, and suites such as DeciderTest span several files.
#pragma once

#include <gtest/gtest.h>

#include <map>
#include <set>
#include <string>
#include <vector>

#include "engine/decider.h"
#include "engine/engine.h"
#include "engine/event_types.h"
#include "engine/processor.h"
#include "engine/snapshot.h"

namespace epoch::engine::test_util {

// Reports as the API edge parses them (engine/report.h).
inline std::vector<AttemptReport> Reports(const Json& j) {
  auto r = ParseAttemptReports(j);
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  return r.ok() ? *r : std::vector<AttemptReport>{};
}

inline constexpr const char* kLifecycle = R"({
  "name": "life",
  "params": {"threshold": 0.5},
  "steps": [
    {"name": "prep", "kind": "data_prep", "command": ["sh", "-c", "echo prep"]},
    {"name": "train", "kind": "train", "after": ["prep"], "command": ["train", "{{params.threshold}}"],
     "retry": {"limit": 2, "backoff": "exponential", "initial": "2s", "max": "1m"}},
    {"name": "validate", "kind": "validate", "after": ["train"], "command": ["validate"]},
    {"name": "infer", "kind": "infer", "after": ["validate"], "command": ["infer"],
     "when": "steps.validate.metrics.accuracy >= params.threshold"}
  ]})";

class DeciderTest : public ::testing::Test {
 protected:
  DeciderTest() {
    cfg_.data_dir = "/data";
    cfg_.max_replicas = 1;
    cfg_.min_replicas = 1;
    cfg_.container_cpu_millis = 4000;
    cfg_.container_memory_bytes = 8LL << 30;
  }

  // Runs a command (and optionally a tick) at the current time; returns the events.
  std::vector<RecordedEvent> Do(const Command& c, Status* status = nullptr) {
    Processor p(&state_, DecideContext{now_, &cfg_, files_}, 1);
    auto r = p.Apply(c);
    if (status) *status = r.ok() ? Status::Ok() : r.status();
    if (r.ok()) last_ = *r;
    p.Settle();
    all_.insert(all_.end(), p.recorded().begin(), p.recorded().end());
    return p.recorded();
  }
  std::vector<RecordedEvent> DoTick(std::vector<std::string> expired = {}) {
    Processor p(&state_, DecideContext{now_, &cfg_, files_}, 1);
    p.Record(OnTick(state_, Tick{expired}, DecideContext{now_, &cfg_, files_}));
    p.Settle();
    all_.insert(all_.end(), p.recorded().begin(), p.recorded().end());
    return p.recorded();
  }
  static std::vector<std::string> Types(const std::vector<RecordedEvent>& evs) {
    std::vector<std::string> t;
    for (const auto& e : evs) t.push_back(e.type);
    return t;
  }
  void StartContainer() {
    DoTick();  // requests c1
    ASSERT_EQ(state_.containers.count("c1"), 1u);
    RegisterContainer reg;
    reg.container = "c1";
    reg.cpu_millis = 4000;
    reg.memory_bytes = 8LL << 30;
    Status st;
    Do(reg, &st);
    ASSERT_TRUE(st.ok()) << st.ToString();
  }
  std::string Submit(const char* def = kLifecycle, Json params = Json::object()) {
    Status st;
    Do(RegisterWorkflow{*ParseJson(def)}, &st);
    EXPECT_TRUE(st.ok()) << st.ToString();
    SubmitRun s;
    s.run_id = "r" + std::to_string(++runs_);
    s.workflow = (*ParseJson(def))["name"];
    s.params = params;
    Do(s, &st);
    EXPECT_TRUE(st.ok()) << st.ToString();
    return s.run_id;
  }
  std::vector<RecordedEvent> Report(const std::string& attempt, const std::string& st,
                                    Json metrics = Json::object(), int exit_code = 0) {
    PollContainer p;
    p.container = "c1";
    p.reports = Reports(Json::array({Json{{"attempt_id", attempt},
                                          {"state", st},
                                          {"exit_code", exit_code},
                                          {"metrics", metrics},
                                          {"usage", Json{{"wall_s", 1.0}}}}}));
    Status s;
    auto evs = Do(p, &s);
    EXPECT_TRUE(s.ok()) << s.ToString();
    return evs;
  }
  const engine::Run& R(const std::string& id) { return *state_.FindRun(id); }

  EngineConfig cfg_;
  State state_;
  FileAccess* files_ = nullptr;
  TimePoint now_ = FromMicros(1'800'000'000'000'000);
  CommandResult last_;
  std::vector<RecordedEvent> all_;  // every event recorded so far, in order
  int runs_ = 0;
};

// Files as the cache sees them, without a disk.
class FakeFiles : public FileAccess {
 public:
  Result<std::string> Sha256(const std::string& root, const std::string& path) override {
    roots[path] = root;
    if (pending.count(path)) return Unavailable(std::string(kHashPending));
    auto it = sha.find(path);
    if (it == sha.end()) return NotFound(path + ": No such file or directory");
    ++hashed;
    return it->second;
  }
  std::optional<uint64_t> Size(const std::string& path) override {
    auto it = size.find(path);
    if (it == size.end()) return std::nullopt;
    return it->second;
  }
  std::map<std::string, std::string> sha;
  std::map<std::string, uint64_t> size;
  std::set<std::string> pending;             // being hashed: Sha256 says so
  std::map<std::string, std::string> roots;  // path -> the root it was opened beneath
  int hashed = 0;
};

inline constexpr const char* kCached =
    R"({"name":"cached","params":{"lr":0.1,"raw":"/data/raw.csv"},
  "steps":[
    {"name":"prep","kind":"data_prep","command":["prep","{{params.raw}}","{{outputs}}"],
     "inputs":["{{params.raw}}"],"outputs":["shard"],"cache":true,"dataset":{"name":"ds"}},
    {"name":"train","kind":"train","after":["prep"],
     "command":["train","{{steps.prep.outputs.shard}}","{{params.lr}}","{{run.id}}x"],
     "outputs":["model"],"cache":{"maxAge":"1h"},"model":{"name":"m"}},
    {"name":"validate","kind":"validate","after":["train"],
     "command":["validate","{{steps.train.outputs.model}}"]}]})";

class CacheTest : public DeciderTest {
 protected:
  CacheTest() {
    files_ = &fake_;
    fake_.sha["/data/raw.csv"] = "raw-v1";
    // An admin lets the default tenant's steps declare inputs under /data.
    cfg_.tenant_input_roots["default"] = {"/data"};
  }
  // The attempt succeeds, writing `out` of `size` bytes with digest `sha`.
  std::vector<RecordedEvent> Succeed(const std::string& attempt, const std::string& out,
                                     uint64_t size, const std::string& sha,
                                     Json metrics = Json::object()) {
    PollContainer p;
    p.container = "c1";
    p.reports = Reports(Json::array(
        {Json{{"attempt_id", attempt},
              {"state", "succeeded"},
              {"exit_code", 0},
              {"metrics", metrics},
              {"outputs", Json::array({Json{{"name", out}, {"size", size}, {"sha256", sha}}})}}}));
    Status st;
    auto evs = Do(p, &st);
    EXPECT_TRUE(st.ok()) << st.ToString();
    if (!out.empty()) {
      std::string run, step;
      int n;
      ParseAttemptId(attempt, &run, &step, &n);
      fake_.size[OutputsDir(cfg_, run, step, n) + "/" + out] = size;
    }
    return evs;
  }
  // run -> step: the JobQueued or JobCacheHit event recorded for it.
  const RecordedEvent* Find(const std::string& run, const std::string& step, const char* type) {
    for (const auto& e : all_) {
      if (e.stream == RunStream(run) && e.type == type && e.data.value("step", "") == step) {
        return &e;
      }
    }
    return nullptr;
  }
  // A first run of kCached, every step executed.
  std::string RunOnce() {
    std::string run = Submit(kCached);
    Succeed(run + "/prep/1", "shard", 10, "shard-v1");
    Succeed(run + "/train/1", "model", 20, "model-v1");
    auto evs = Succeed(run + "/validate/1", "", 0, "", Json{{"accuracy", 0.9}});
    EXPECT_EQ(R(run).phase, RunPhase::kSucceeded);
    return run;
  }
  FakeFiles fake_;
};

// A pool of GPU containers that grows and shrinks with demand: for placement, quotas
// and gangs.
class ScalingTest : public ::testing::Test {
 protected:
  ScalingTest() {
    cfg_.data_dir = "/data";
    cfg_.min_replicas = 0;
    cfg_.max_replicas = 5;
    cfg_.allocation_unit = 2;
    cfg_.allocation_interval = std::chrono::seconds(1);
    cfg_.idle_timeout = std::chrono::seconds(30);
    cfg_.container_cpu_millis = 1000;
    cfg_.container_memory_bytes = 1LL << 30;
    cfg_.container_gpus = 4;
  }
  std::vector<RecordedEvent> Run(const Command& c, Status* st = nullptr) {
    Processor p(&s_, DecideContext{now_, &cfg_}, 1);
    auto r = p.Apply(c);
    if (st) *st = r.ok() ? Status::Ok() : r.status();
    p.Settle();
    return p.recorded();
  }
  std::vector<RecordedEvent> Tick() {
    Processor p(&s_, DecideContext{now_, &cfg_}, 1);
    p.Record(OnTick(s_, engine::Tick{}, DecideContext{now_, &cfg_}));
    p.Settle();
    return p.recorded();
  }
  static int Count(const std::vector<RecordedEvent>& evs, std::string_view type) {
    int n = 0;
    for (const auto& e : evs) n += e.type == type;
    return n;
  }
  void Register(const std::string& id, int gpus) {
    RegisterContainer r;
    r.container = id;
    r.cpu_millis = cfg_.container_cpu_millis;
    r.memory_bytes = cfg_.container_memory_bytes;
    for (int i = 0; i < gpus; ++i) {
      r.gpus.push_back(Json{{"index", i},
                            {"uuid", id + "-gpu" + std::to_string(i)},
                            {"healthy", true},
                            {"simulated", true}});
    }
    Status st;
    Run(r, &st);
    ASSERT_TRUE(st.ok()) << st.ToString();
  }
  int Live() {
    int n = 0;
    for (const auto& [id, c] : s_.containers) {
      n += c.phase == ContainerPhase::kRequested || c.phase == ContainerPhase::kRegistered;
    }
    return n;
  }
  void Submit(const std::string& def, int runs) {
    Status st;
    Run(RegisterWorkflow{*ParseJson(def)}, &st);
    ASSERT_TRUE(st.ok()) << st.ToString();
    std::string name = (*ParseJson(def))["name"];
    for (int i = 0; i < runs; ++i) {
      SubmitRun sr;
      sr.run_id = name + std::to_string(i);
      sr.workflow = name;
      Run(sr, &st);
      ASSERT_TRUE(st.ok()) << st.ToString();
    }
  }

  EngineConfig cfg_;
  State s_;
  TimePoint now_ = FromMicros(1'800'000'000'000'000);
};

// ---- Tenant isolation (issue 12) -------------------------------------------------

// A fixture whose runs can belong to different tenants, with two containers.
class TenantTest : public CacheTest {
 protected:
  std::string SubmitAs(const std::string& tenant, const std::string& def_text,
                       Json params = Json::object(), Status* status = nullptr) {
    Json def = *ParseJson(def_text);
    Status st;
    Do(RegisterWorkflow{def, "u@" + tenant, tenant}, &st);
    EXPECT_TRUE(st.ok()) << st.ToString();
    SubmitRun s;
    s.run_id = "r" + std::to_string(++runs_);
    s.workflow = def["name"];
    s.params = params;
    s.tenant = tenant;
    s.submitter = "u@" + tenant;
    Do(s, &st);
    if (status) *status = st;
    return s.run_id;
  }
};

}  // namespace epoch::engine::test_util
