// Pure tests of decide/evolve through the Processor: no store, no threads.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <set>

#include "engine/decider.h"
#include "engine/engine.h"
#include "engine/event_types.h"
#include "engine/processor.h"
#include "engine/snapshot.h"

namespace epoch::engine {
namespace {

// Reports as the API edge parses them (engine/report.h).
std::vector<AttemptReport> Reports(const Json& j) {
  auto r = ParseAttemptReports(j);
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  return r.ok() ? *r : std::vector<AttemptReport>{};
}

constexpr const char* kLifecycle = R"({
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

TEST_F(DeciderTest, HappyPathRunsStepsInOrderAndGatesInferOnMetric) {
  StartContainer();
  std::string run = Submit();
  const engine::Run& r = R(run);
  EXPECT_EQ(r.steps[0].phase, StepPhase::kQueued);
  // Placed at once on the registered container.
  ASSERT_EQ(r.steps[0].attempts.size(), 1u);
  EXPECT_EQ(r.steps[0].attempts[0].phase, AttemptPhase::kAssigned);
  EXPECT_EQ(r.steps[0].attempts[0].container, "c1");
  EXPECT_EQ(r.steps[1].phase, StepPhase::kPending);

  auto evs = Report(run + "/prep/1", "succeeded");
  EXPECT_EQ(Types(evs), (std::vector<std::string>{"JobStarted", "JobSucceeded", "StepReady",
                                                  "JobQueued", "JobAssigned"}));
  // The command was templated with the param's default.
  EXPECT_EQ(R(run).steps[1].attempts[0].argv, Json::array({"train", "0.5"}));
  Report(run + "/train/1", "succeeded");
  Report(run + "/validate/1", "succeeded", Json{{"accuracy", 0.9}});
  EXPECT_EQ(R(run).steps[3].phase, StepPhase::kQueued);
  evs = Report(run + "/infer/1", "succeeded");
  EXPECT_EQ(Types(evs).back(), "RunSucceeded");
  EXPECT_EQ(R(run).phase, RunPhase::kSucceeded);
  EXPECT_TRUE(state_.containers["c1"].attempts.empty());
  EXPECT_EQ(state_.containers["c1"].used_cpu, 0);
}

TEST_F(DeciderTest, FalseWhenSkipsStep) {
  StartContainer();
  std::string run = Submit();
  Report(run + "/prep/1", "succeeded");
  Report(run + "/train/1", "succeeded");
  auto evs = Report(run + "/validate/1", "succeeded", Json{{"accuracy", 0.2}});
  std::vector<std::string> want{"JobStarted", "JobSucceeded", "StepSkipped", "RunSucceeded"};
  EXPECT_EQ(Types(evs), want);
  EXPECT_EQ(R(run).steps[3].phase, StepPhase::kSkipped);
  EXPECT_NE(R(run).steps[3].reason.find("is false"), std::string::npos);
}

TEST_F(DeciderTest, SkipIsTransitive) {
  StartContainer();
  std::string run = Submit(R"({"name":"gate","params":{"go":"no"},"steps":[
      {"name":"a","command":["a"],"when":"params.go == 'yes'"},
      {"name":"b","after":["a"],"command":["b"]},
      {"name":"c","after":["b"],"command":["c"]}]})");
  const engine::Run& r = R(run);
  EXPECT_EQ(r.steps[0].phase, StepPhase::kSkipped);
  EXPECT_EQ(r.steps[1].phase, StepPhase::kSkipped);
  EXPECT_EQ(r.steps[2].phase, StepPhase::kSkipped);
  EXPECT_EQ(r.steps[2].reason, "upstream step 'b' was skipped");
  EXPECT_EQ(r.phase, RunPhase::kSucceeded);
}

TEST_F(DeciderTest, FailedAttemptRetriesWithExponentialBackoffThenFailsRun) {
  StartContainer();
  std::string run = Submit();
  Report(run + "/prep/1", "succeeded");
  auto evs = Report(run + "/train/1", "failed", Json::object(), 3);
  ASSERT_EQ(Types(evs).back(), "JobRetryScheduled");
  EXPECT_EQ(evs.back().data["not_before"], FormatTime(now_ + std::chrono::seconds(2)));
  // Not yet due.
  now_ += std::chrono::seconds(1);
  EXPECT_TRUE(Types(DoTick()).empty());
  now_ += std::chrono::seconds(1);
  evs = DoTick();
  EXPECT_EQ(Types(evs), (std::vector<std::string>{"JobQueued", "JobAssigned"}));
  EXPECT_EQ(evs[0].data["attempt"], 2);
  evs = Report(run + "/train/2", "failed", Json::object(), 1);
  EXPECT_EQ(evs.back().data["not_before"], FormatTime(now_ + std::chrono::seconds(4)));
  now_ += std::chrono::seconds(4);
  DoTick();
  evs = Report(run + "/train/3", "failed", Json::object(), 1);
  EXPECT_EQ(Types(evs).back(), "RunFailed");
  EXPECT_EQ(R(run).phase, RunPhase::kFailed);
  EXPECT_EQ(R(run).failed_step, "train");
  EXPECT_NE(R(run).reason.find("after 3 attempt(s)"), std::string::npos);
  EXPECT_EQ(R(run).steps[1].attempts.size(), 3u);
  EXPECT_EQ(R(run).steps[2].phase, StepPhase::kCancelled);
}

TEST_F(DeciderTest, ADeclaredOutputThatWasNotWrittenFailsTheAttempt) {
  StartContainer();
  std::string run = Submit(R"({"name":"outs","steps":[{"name":"train","command":["x"],
      "outputs":["model.bin","metrics.json"],"retry":{"limit":1,"backoff":"fixed","initial":"1s"}}]})");
  // Only metrics.json written: the attempt fails with missing_output, naming the file.
  PollContainer p;
  p.container = "c1";
  p.reports = Reports(Json::array({Json{
      {"attempt_id", run + "/train/1"},
      {"state", "succeeded"},
      {"exit_code", 0},
      {"outputs", Json::array({Json{{"name", "metrics.json"}, {"size", 2}, {"sha256", "ab"}}})}}}));
  Status st;
  auto evs = Do(p, &st);
  ASSERT_TRUE(st.ok()) << st.ToString();
  auto types = Types(evs);
  EXPECT_EQ(std::count(types.begin(), types.end(), "JobSucceeded"), 0);
  ASSERT_EQ(std::count(types.begin(), types.end(), "JobFailed"), 1);
  for (const auto& e : evs) {
    if (e.type == "JobFailed") {
      EXPECT_EQ(e.data["reason"], "missing_output: model.bin");
    }
  }
  EXPECT_EQ(R(run).steps[0].attempts[0].phase, AttemptPhase::kFailed);
  EXPECT_EQ(R(run).steps[0].attempts[0].reason, "missing_output: model.bin");
  // The retry writes both and succeeds; the outputs are recorded with their digests.
  now_ += std::chrono::seconds(2);
  DoTick();
  ASSERT_EQ(R(run).steps[0].attempts.size(), 2u);
  p.reports = Reports(Json::array({Json{
      {"attempt_id", run + "/train/2"},
      {"state", "succeeded"},
      {"exit_code", 0},
      {"outputs", Json::array({Json{{"name", "model.bin"}, {"size", 9}, {"sha256", "cd"}},
                               Json{{"name", "metrics.json"}, {"size", 2}, {"sha256", "ab"}}})}}}));
  evs = Do(p, &st);
  ASSERT_TRUE(st.ok()) << st.ToString();
  EXPECT_EQ(R(run).steps[0].phase, StepPhase::kSucceeded);
  EXPECT_EQ(R(run).steps[0].outputs.size(), 2u);
  EXPECT_EQ(R(run).steps[0].outputs[0]["sha256"], "cd");
}

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
  std::set<std::string> pending;              // being hashed: Sha256 says so
  std::map<std::string, std::string> roots;  // path -> the root it was opened beneath
  int hashed = 0;
};

constexpr const char* kCached = R"({"name":"cached","params":{"lr":0.1,"raw":"/data/raw.csv"},
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

TEST_F(CacheTest, TheSameWorkHitsAndDownstreamReadsTheSourceOutputs) {
  StartContainer();
  std::string r1 = RunOnce();
  // train's command holds {{run.id}}: run-specific, so only prep's entry can hit.
  ASSERT_EQ(state_.cache.size(), 2u);
  const RecordedEvent* q = Find(r1, "prep", "JobQueued");
  ASSERT_NE(q, nullptr);
  EXPECT_EQ(q->data["cache"]["miss"], "no entry");
  EXPECT_EQ(q->data["cache"]["inputs"]["/data/raw.csv"], "raw-v1");
  std::string prep_key = q->data["cache"]["key"];
  EXPECT_EQ(prep_key.size(), 64u);
  EXPECT_EQ(state_.cache.at(prep_key).run, r1);
  EXPECT_EQ(state_.cache.at(prep_key).outputs[0]["sha256"], "shard-v1");

  std::string r2 = Submit(kCached);
  const RecordedEvent* hit = Find(r2, "prep", "JobCacheHit");
  ASSERT_NE(hit, nullptr);
  EXPECT_EQ(hit->data["key"], prep_key);
  EXPECT_EQ(hit->data["source_run"], r1);
  EXPECT_EQ(hit->data["source_attempt"], 1);
  EXPECT_EQ(Find(r2, "prep", "JobQueued"), nullptr);
  EXPECT_EQ(R(r2).steps[0].phase, StepPhase::kSucceeded);
  EXPECT_EQ(R(r2).steps[0].attempts[0].cached_from, r1 + "/prep/1");
  EXPECT_EQ(R(r2).steps[0].attempts[0].phase, AttemptPhase::kSucceeded);
  // train runs (its key has the run id) and reads prep's output where r1 wrote it.
  const RecordedEvent* tq = Find(r2, "train", "JobQueued");
  ASSERT_NE(tq, nullptr);
  EXPECT_EQ(tq->data["argv"][1], "/data/runs/" + r1 + "/prep/1/outputs/shard");
  // The same data set version: the digest of the same outputs.
  EXPECT_EQ(state_.datasets.at("default/ds").size(), 1u);
  EXPECT_EQ(R(r2).datasets.at("prep"), std::make_pair(std::string("ds"), 1));
}

constexpr const char* kCachedNoRunId = R"({"name":"cached2","params":{"lr":0.1},
  "steps":[
    {"name":"prep","kind":"data_prep","command":["prep","/data/raw.csv","{{outputs}}"],
     "inputs":["/data/raw.csv"],"outputs":["shard"],"cache":true},
    {"name":"train","kind":"train","after":["prep"],
     "command":["train","{{steps.prep.outputs.shard}}","{{params.lr}}","{{outputs}}"],
     "outputs":["model"],"cache":{"maxAge":"1h"},"model":{"name":"m2"}},
    {"name":"validate","kind":"validate","after":["train"],
     "command":["validate","{{steps.train.outputs.model}}"]}]})";

TEST_F(CacheTest, ChangedParamMissesTrainButHitsPrepAndChangedInputMissesBoth) {
  StartContainer();
  std::string r1 = Submit(kCachedNoRunId);
  Succeed(r1 + "/prep/1", "shard", 10, "shard-v1");
  Succeed(r1 + "/train/1", "model", 20, "model-v1");
  Succeed(r1 + "/validate/1", "", 0, "", Json{{"accuracy", 0.9}});
  ASSERT_EQ(R(r1).phase, RunPhase::kSucceeded);

  // Same params: prep and train both hit; validate runs on r1's model.
  std::string r2 = Submit(kCachedNoRunId);
  ASSERT_NE(Find(r2, "prep", "JobCacheHit"), nullptr);
  ASSERT_NE(Find(r2, "train", "JobCacheHit"), nullptr);
  EXPECT_EQ(R(r2).steps[1].metrics, Json::object());
  const RecordedEvent* vq = Find(r2, "validate", "JobQueued");
  ASSERT_NE(vq, nullptr);
  EXPECT_EQ(vq->data["argv"][1], "/data/runs/" + r1 + "/train/1/outputs/model");
  // What validate's agent verifies before it runs: r1's model, by its digest.
  EXPECT_EQ(UpstreamInputs(R(r2), *R(r2).def->FindStep("validate"), cfg_),
            Json::array({Json{{"path", "/data/runs/" + r1 + "/train/1/outputs/model"},
                              {"sha256", "model-v1"},
                              {"size", 20},
                              {"step", "train"},
                              {"name", "model"}}}));
  EXPECT_EQ(UpstreamInputs(R(r2), *R(r2).def->FindStep("prep"), cfg_), Json::array());
  EXPECT_EQ(state_.models.at("default/m2").size(), 1u);  // the same model version
  EXPECT_EQ(R(r2).models.at("train").second, 1);

  // A changed param: prep hits, train misses.
  std::string r3 = Submit(kCachedNoRunId, Json{{"lr", 0.2}});
  EXPECT_NE(Find(r3, "prep", "JobCacheHit"), nullptr);
  const RecordedEvent* tq = Find(r3, "train", "JobQueued");
  ASSERT_NE(tq, nullptr);
  EXPECT_EQ(tq->data["cache"]["miss"], "no entry");
  EXPECT_EQ(Find(r3, "train", "JobCacheHit"), nullptr);

  // A changed input file: prep misses (and so train would see a new shard digest).
  fake_.sha["/data/raw.csv"] = "raw-v2";
  std::string r4 = Submit(kCachedNoRunId);
  EXPECT_EQ(Find(r4, "prep", "JobCacheHit"), nullptr);
  const RecordedEvent* pq = Find(r4, "prep", "JobQueued");
  ASSERT_NE(pq, nullptr);
  EXPECT_EQ(pq->data["cache"]["inputs"]["/data/raw.csv"], "raw-v2");
  EXPECT_NE(pq->data["cache"]["key"], Find(r1, "prep", "JobQueued")->data["cache"]["key"]);
  // Same input again but a new shard digest: train's key differs, so it misses.
  Succeed(r4 + "/prep/1", "shard", 10, "shard-v2");
  const RecordedEvent* tq4 = Find(r4, "train", "JobQueued");
  ASSERT_NE(tq4, nullptr);
  EXPECT_EQ(tq4->data["cache"]["miss"], "no entry");

  // An unreadable input: a miss that says why, and no key to store a result under.
  fake_.sha.erase("/data/raw.csv");
  std::string r5 = Submit(kCachedNoRunId);
  const RecordedEvent* bad = Find(r5, "prep", "JobQueued");
  ASSERT_NE(bad, nullptr);
  EXPECT_NE(bad->data["cache"]["miss"].get<std::string>().find("No such file"), std::string::npos);
  EXPECT_FALSE(bad->data["cache"].contains("key"));
}

TEST_F(CacheTest, OldEntriesAndVanishedOutputsMissAndTheSnapshotKeepsTheCache) {
  StartContainer();
  std::string r1 = Submit(kCachedNoRunId);
  Succeed(r1 + "/prep/1", "shard", 10, "shard-v1");
  Succeed(r1 + "/train/1", "model", 20, "model-v1");
  Succeed(r1 + "/validate/1", "", 0, "");

  // Two hours later: train's entry is past its maxAge of 1h; prep has none.
  now_ += std::chrono::hours(2);
  std::string r2 = Submit(kCachedNoRunId);
  EXPECT_NE(Find(r2, "prep", "JobCacheHit"), nullptr);
  const RecordedEvent* tq = Find(r2, "train", "JobQueued");
  ASSERT_NE(tq, nullptr);
  EXPECT_NE(tq->data["cache"]["miss"].get<std::string>().find("older than maxAge 1h"),
            std::string::npos)
      << tq->data.dump();

  // prep's output file is deleted: the entry cannot be used.
  fake_.size.erase(OutputsDir(cfg_, r1, "prep", 1) + "/shard");
  std::string r3 = Submit(kCachedNoRunId);
  const RecordedEvent* pq = Find(r3, "prep", "JobQueued");
  ASSERT_NE(pq, nullptr);
  EXPECT_EQ(pq->data["cache"]["miss"], "output shard of " + r1 + "/prep/1 is gone");

  // The cache and the hit's source survive a snapshot.
  auto decoded = DecodeSnapshot(EncodeSnapshot(state_));
  ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
  EXPECT_EQ(decoded->cache.size(), state_.cache.size());
  for (const auto& [k, e] : state_.cache) {
    ASSERT_EQ(decoded->cache.count(k), 1u);
    EXPECT_EQ(CacheEntryToJson(k, decoded->cache.at(k)), CacheEntryToJson(k, e));
  }
  EXPECT_EQ(decoded->FindRun(r2)->steps[0].attempts[0].cached_from, r1 + "/prep/1");
  EXPECT_EQ(decoded->FindRun(r2)->steps[0].attempts[0].cache_key,
            state_.FindRun(r2)->steps[0].attempts[0].cache_key);
  // And a replay of the events gives the same cache.
  State replay;
  for (const auto& e : all_) ASSERT_TRUE(Evolve(replay, e).ok()) << e.type << " at " << e.position;
  EXPECT_EQ(StateDigestJson(replay)["cache"], StateDigestJson(state_)["cache"]);
}

TEST_F(CacheTest, InvalidateByKeyOrWorkflowAndRejectsWhatItCannotFind) {
  StartContainer();
  std::string r1 = Submit(kCachedNoRunId);
  Succeed(r1 + "/prep/1", "shard", 10, "shard-v1");
  Succeed(r1 + "/train/1", "model", 20, "model-v1");
  ASSERT_EQ(state_.cache.size(), 2u);
  std::string prep_key = Find(r1, "prep", "JobQueued")->data["cache"]["key"];

  Status st;
  auto evs = Do(InvalidateCache{"0000", "", "", "alice"}, &st);
  EXPECT_EQ(st.code(), StatusCode::kNotFound);
  EXPECT_TRUE(evs.empty());
  Do(InvalidateCache{"", "", "", "alice"}, &st);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  Do(InvalidateCache{"", "nope", "", "alice"}, &st);
  EXPECT_EQ(st.code(), StatusCode::kNotFound);
  EXPECT_EQ(state_.cache.size(), 2u);

  evs = Do(InvalidateCache{prep_key, "", "", "alice"}, &st);
  ASSERT_TRUE(st.ok()) << st.ToString();
  ASSERT_EQ(Types(evs), std::vector<std::string>{"CacheInvalidated"});
  EXPECT_EQ(evs[0].stream, "cache");
  EXPECT_EQ(evs[0].actor, "alice");
  EXPECT_EQ(last_.keys, std::vector<std::string>{prep_key});
  EXPECT_EQ(state_.cache.count(prep_key), 0u);

  evs = Do(InvalidateCache{"", "cached2", "train", "bob"}, &st);
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(last_.keys.size(), 1u);
  EXPECT_TRUE(state_.cache.empty());
  // Nothing left to forget: no event.
  evs = Do(InvalidateCache{"", "cached2", "", "bob"}, &st);
  ASSERT_TRUE(st.ok());
  EXPECT_TRUE(evs.empty());
  EXPECT_TRUE(last_.keys.empty());

  // The next run executes prep again.
  std::string r2 = Submit(kCachedNoRunId);
  EXPECT_EQ(Find(r2, "prep", "JobCacheHit"), nullptr);
  EXPECT_EQ(Find(r2, "prep", "JobQueued")->data["cache"]["miss"], "no entry");
}

constexpr const char* kSweep = R"({"name":"sweep","params":{"epochs":3},"steps":[
    {"name":"train","kind":"train","model":{"name":"swept"},"outputs":["model"],
     "command":["train","--lr={{params.lr}}","--hidden={{params.hidden}}","--epochs={{params.epochs}}"],
     "sweep":{"method":"grid","parameters":{"lr":[0.1,0.2],"hidden":[8,16]},"parallel":2,
              "objective":{"metric":"accuracy","goal":"maximize"}}},
    {"name":"infer","kind":"infer","after":["train"],
     "command":["infer","{{steps.train.best.params.lr}}","{{steps.train.outputs.model}}",
                "{{steps.train.metrics.accuracy}}"]}]})";

class SweepTest : public DeciderTest {
 protected:
  std::vector<RecordedEvent> Finish(const std::string& attempt, bool ok, double accuracy = 0) {
    PollContainer p;
    p.container = "c1";
    Json r{{"attempt_id", attempt}, {"state", ok ? "succeeded" : "failed"},
           {"exit_code", ok ? 0 : 1}};
    if (ok) {
      r["metrics"] = Json{{"accuracy", accuracy}};
      r["outputs"] = Json::array({Json{{"name", "model"}, {"size", 4}, {"sha256", attempt}}});
    }
    p.reports = Reports(Json::array({r}));
    Status st;
    auto evs = Do(p, &st);
    EXPECT_TRUE(st.ok()) << st.ToString();
    return evs;
  }
  int Active(const std::string& run) {
    int n = 0;
    for (const auto& a : R(run).steps[0].attempts) n += !IsTerminal(a.phase);
    return n;
  }
};

TEST_F(SweepTest, GridOfFourTrialsTwoAtATimeBestWinsAndAFailedTrialIsTolerated) {
  StartContainer();
  std::string run = Submit(kSweep);
  const auto& attempts = [&]() -> const std::vector<Attempt>& { return R(run).steps[0].attempts; };
  ASSERT_EQ(attempts().size(), 2u);  // parallel 2
  EXPECT_EQ(Active(run), 2);
  // Grid order: parameters by name (hidden, lr), the last varying fastest.
  EXPECT_EQ(attempts()[0].trial, 0);
  EXPECT_EQ(attempts()[0].trial_params, (Json{{"hidden", 8}, {"lr", 0.1}}));
  EXPECT_EQ(attempts()[0].argv, Json::array({"train", "--lr=0.1", "--hidden=8", "--epochs=3"}));
  EXPECT_EQ(attempts()[1].argv, Json::array({"train", "--lr=0.2", "--hidden=8", "--epochs=3"}));
  EXPECT_EQ(attempts()[1].env["EPOCH_TRIAL"], "1");

  Finish(run + "/train/1", true, 0.80);
  ASSERT_EQ(attempts().size(), 3u);  // the next trial took the free slot
  EXPECT_EQ(attempts()[2].trial_params, (Json{{"hidden", 16}, {"lr", 0.1}}));
  EXPECT_EQ(Active(run), 2);
  EXPECT_EQ(R(run).steps[0].phase, StepPhase::kRunning);
  Finish(run + "/train/2", false);  // a failed trial: not a failed step
  ASSERT_EQ(attempts().size(), 4u);
  EXPECT_EQ(R(run).steps[0].phase, StepPhase::kRunning);
  EXPECT_EQ(R(run).phase, RunPhase::kRunning);
  Finish(run + "/train/3", true, 0.91);
  EXPECT_EQ(attempts().size(), 4u);  // all four queued; no fifth
  EXPECT_EQ(R(run).steps[1].phase, StepPhase::kPending);
  auto evs = Finish(run + "/train/4", true, 0.85);

  const RecordedEvent* done = nullptr;
  for (const auto& e : evs) {
    if (e.type == "StepSweepCompleted") done = &e;
  }
  ASSERT_NE(done, nullptr);
  EXPECT_EQ(done->data["best_trial"], 2);
  EXPECT_EQ(done->data["best_attempt"], 3);
  EXPECT_EQ(done->data["best_params"], (Json{{"hidden", 16}, {"lr", 0.1}}));
  EXPECT_EQ(done->data["best_value"], 0.91);
  EXPECT_EQ(done->data["succeeded"], 3);
  EXPECT_EQ(done->data["failed"], 1);
  const StepRun& train = R(run).steps[0];
  EXPECT_EQ(train.phase, StepPhase::kSucceeded);
  EXPECT_EQ(train.metrics["accuracy"], 0.91);
  EXPECT_EQ(train.outputs[0]["sha256"], run + "/train/3");
  // Downstream reads the best trial: its params, outputs and metrics.
  ASSERT_EQ(R(run).steps[1].attempts.size(), 1u);
  EXPECT_EQ(R(run).steps[1].attempts[0].argv,
            Json::array({"infer", "0.1", "/data/runs/" + run + "/train/3/outputs/model", "0.91"}));
  // The model version is the best trial's, with its params.
  ASSERT_EQ(state_.models.at("default/swept").size(), 1u);
  EXPECT_EQ(state_.models.at("default/swept")[0].attempt, 3);
  EXPECT_EQ(state_.models.at("default/swept")[0].params,
            (Json{{"epochs", 3}, {"hidden", 16}, {"lr", 0.1}}));

  // Mid-sweep and finished states survive a snapshot and a replay.
  auto decoded = DecodeSnapshot(EncodeSnapshot(state_));
  ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
  EXPECT_EQ(StateDigestJson(*decoded), StateDigestJson(state_));
  EXPECT_EQ(decoded->FindRun(run)->steps[0].attempts[2].metrics["accuracy"], 0.91);
  State replay;
  for (const auto& e : all_) ASSERT_TRUE(Evolve(replay, e).ok()) << e.type << " at " << e.position;
  EXPECT_EQ(StateDigestJson(replay), StateDigestJson(state_));

  Finish(run + "/infer/1", true, 0);
  EXPECT_EQ(R(run).phase, RunPhase::kSucceeded);
}

TEST_F(SweepTest, AllTrialsFailingFailsTheStepAndTheRunWithoutRetries) {
  StartContainer();
  std::string run = Submit(kSweep);
  for (int n = 1; n <= 4; ++n) Finish(run + "/train/" + std::to_string(n), false);
  EXPECT_EQ(R(run).steps[0].attempts.size(), 4u);
  EXPECT_EQ(R(run).steps[0].phase, StepPhase::kFailed);
  EXPECT_EQ(R(run).steps[0].reason, "all 4 trials failed");
  EXPECT_EQ(R(run).phase, RunPhase::kFailed);
  EXPECT_NE(R(run).reason.find("all 4 trials failed"), std::string::npos) << R(run).reason;
  EXPECT_EQ(R(run).steps[1].phase, StepPhase::kCancelled);
}

TEST_F(SweepTest, CancelStopsEveryTrialAndQueuesNoMore) {
  StartContainer();
  std::string run = Submit(kSweep);
  // Both trials are assigned; the agent reports them running.
  PollContainer p;
  p.container = "c1";
  p.running = {run + "/train/1", run + "/train/2"};
  Do(p);
  Status st;
  Do(CancelRun{run, "alice"}, &st);
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(R(run).phase, RunPhase::kRunning);  // waits for the running trials
  PollContainer done;
  done.container = "c1";
  done.reports =
      Reports(Json::array({Json{{"attempt_id", run + "/train/1"}, {"state", "cancelled"}},
                           Json{{"attempt_id", run + "/train/2"}, {"state", "cancelled"}}}));
  Do(done, &st);
  EXPECT_EQ(R(run).phase, RunPhase::kCancelled);
  EXPECT_EQ(R(run).steps[0].attempts.size(), 2u);
  EXPECT_EQ(R(run).steps[0].phase, StepPhase::kCancelled);
  EXPECT_EQ(R(run).steps[0].reason, "run cancelled");
}

TEST_F(SweepTest, SweepParamsAndBestParamsAreCheckedAtRegistration) {
  Status st;
  Do(RegisterWorkflow{*ParseJson(R"({"name":"bad","steps":[
      {"name":"t","command":["t","{{params.lr}}"],
       "sweep":{"method":"random","parameters":{"lr":{"min":0.001,"max":0.1,"log":true}},
                "trials":3,"objective":{"metric":"loss","goal":"minimize"}}},
      {"name":"u","after":["t"],"command":["u","{{steps.t.best.params.momentum}}","{{params.lr}}"]}]})")},
     &st);
  ASSERT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(st.details(),
            (std::vector<std::string>{
                "steps[1].command[1]: unknown template variable 'steps.t.best.params.momentum' "
                "(step 't' has no sweep parameter 'momentum')",
                // A sweep parameter is a param of its own step only.
                "steps[1].command[2]: unknown template variable 'params.lr'"}));
  EXPECT_TRUE(state_.workflows.empty());
}

TEST_F(DeciderTest, LineageRegistersDatasetAndModelVersionsAndAttachesValidation) {
  StartContainer();
  const char* def = R"({"name":"lin","params":{"lr":0.1},"steps":[
      {"name":"prep","kind":"data_prep","command":["p"],"dataset":{"name":"fmnist"}},
      {"name":"train","kind":"train","after":["prep"],"command":["t"],"model":{"name":"mlp"}},
      {"name":"validate","kind":"validate","after":["train"],"command":["v"]}]})";
  auto succeed = [&](const std::string& attempt, Json outputs, Json metrics = Json::object()) {
    PollContainer p;
    p.container = "c1";
    p.reports = Reports(Json::array({Json{{"attempt_id", attempt},
                                          {"state", "succeeded"},
                                          {"exit_code", 0},
                                          {"outputs", outputs},
                                          {"metrics", metrics}}}));
    Status st;
    auto evs = Do(p, &st);
    EXPECT_TRUE(st.ok()) << st.ToString();
    return Types(evs);
  };
  Json shards = Json::array({Json{{"name", "train.bin"}, {"size", 10}, {"sha256", "aa"}}});
  Json model = Json::array({Json{{"name", "model.bin"}, {"size", 20}, {"sha256", "bb"}}});
  std::string r1 = Submit(def, Json{{"lr", 0.1}});
  auto t = succeed(r1 + "/prep/1", shards);
  EXPECT_EQ(std::count(t.begin(), t.end(), "DatasetVersionRegistered"), 1);
  succeed(r1 + "/train/1", model);
  t = succeed(r1 + "/validate/1", Json::array(), Json{{"accuracy", 0.9}});
  EXPECT_EQ(std::count(t.begin(), t.end(), "ModelVersionValidated"), 1);
  EXPECT_EQ(t.back(), "RunSucceeded");
  ASSERT_EQ(state_.datasets["default/fmnist"].size(), 1u);
  ASSERT_EQ(state_.models["default/mlp"].size(), 1u);
  const ArtifactVersion& m1 = state_.models["default/mlp"][0];
  EXPECT_EQ(m1.run, r1);
  EXPECT_EQ(m1.step, "train");
  EXPECT_EQ(m1.params["lr"], 0.1);
  EXPECT_EQ(m1.workflow, "lin");
  ASSERT_EQ(m1.datasets.size(), 1u);
  EXPECT_EQ(m1.datasets[0]["name"], "fmnist");
  EXPECT_EQ(m1.datasets[0]["version"], 1);
  EXPECT_EQ(m1.metrics["accuracy"], 0.9);
  EXPECT_EQ(m1.validated_by[0]["step"], "validate");

  // The same data again is the same data set version; a different model is version 2.
  std::string r2 = Submit(def, Json{{"lr", 0.01}});
  succeed(r2 + "/prep/1", shards);
  succeed(r2 + "/train/1",
          Json::array({Json{{"name", "model.bin"}, {"size", 20}, {"sha256", "cc"}}}));
  succeed(r2 + "/validate/1", Json::array(), Json{{"accuracy", 0.8}});
  EXPECT_EQ(state_.datasets["default/fmnist"].size(), 1u);
  ASSERT_EQ(state_.models["default/mlp"].size(), 2u);
  EXPECT_EQ(state_.models["default/mlp"][1].params["lr"], 0.01);
  EXPECT_EQ(state_.models["default/mlp"][1].metrics["accuracy"], 0.8);
  EXPECT_EQ(R(r2).datasets.at("prep"), std::make_pair(std::string("fmnist"), 1));
  EXPECT_EQ(R(r2).models.at("train"), std::make_pair(std::string("mlp"), 2));

  // Replay and a snapshot both keep the lineage.
  State replayed;
  for (const auto& e : all_)
    ASSERT_TRUE(Evolve(replayed, e).ok()) << e.type << " at " << e.position;
  EXPECT_EQ(EncodeSnapshot(replayed), EncodeSnapshot(state_));
  auto decoded = DecodeSnapshot(EncodeSnapshot(state_));
  ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
  EXPECT_EQ(decoded->models["default/mlp"][1].metrics["accuracy"], 0.8);
  EXPECT_EQ(decoded->FindRun(r2)->models.at("train").second, 2);
  EXPECT_EQ(decoded->FindRun(r1)->validated.count("validate"), 1u);
}

TEST_F(DeciderTest, LineageFieldsAreCheckedAtRegistration) {
  Status st;
  Do(RegisterWorkflow{*ParseJson(R"({"name":"bad","steps":[
      {"name":"t","kind":"train","command":["x"],"dataset":{"name":"d"}},
      {"name":"p","kind":"data_prep","command":["x"],"model":{"nme":"m"}}]})")}, &st);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  std::string all;
  for (const auto& d : st.details()) all += d + "\n";
  EXPECT_NE(all.find("steps[0].dataset: only a data_prep step registers a dataset"),
            std::string::npos) << all;
  EXPECT_NE(all.find("steps[1].model.nme: unknown field"), std::string::npos) << all;
}

TEST_F(DeciderTest, RetryRunReRunsOnlyStepsThatDidNotSucceed) {
  StartContainer();
  std::string run = Submit(R"({"name":"two","steps":[
      {"name":"a","command":["a"]},{"name":"b","after":["a"],"command":["b"]}]})");
  Report(run + "/a/1", "succeeded", Json{{"x", 1}});
  Report(run + "/b/1", "failed", Json::object(), 2);
  ASSERT_EQ(R(run).phase, RunPhase::kFailed);
  Status st;
  auto evs = Do(RetryRun{run, "alice"}, &st);
  ASSERT_TRUE(st.ok()) << st.ToString();
  EXPECT_EQ(evs[0].type, "RunRetryRequested");
  EXPECT_EQ(evs[0].data["steps"], Json::array({"b"}));
  EXPECT_EQ(R(run).steps[0].attempts.size(), 1u);  // a kept
  EXPECT_EQ(R(run).steps[0].metrics["x"], 1);
  ASSERT_EQ(R(run).steps[1].attempts.size(), 2u);
  EXPECT_EQ(R(run).steps[1].attempts[1].phase, AttemptPhase::kAssigned);
  Report(run + "/b/2", "succeeded");
  EXPECT_EQ(R(run).phase, RunPhase::kSucceeded);
  // A succeeded run cannot be retried or cancelled.
  Do(RetryRun{run, "alice"}, &st);
  EXPECT_EQ(st.code(), StatusCode::kConflict);
  Do(CancelRun{run, "alice"}, &st);
  EXPECT_EQ(st.code(), StatusCode::kConflict);
}

TEST_F(DeciderTest, CancelEndsQueuedWorkAndWaitsForRunningAttempts) {
  StartContainer();
  std::string run = Submit(R"({"name":"par","steps":[
      {"name":"a","command":["a"],"resources":{"cpu":"3"}},
      {"name":"b","command":["b"],"resources":{"cpu":"3"}}]})");
  // a fits, b waits in the queue (4 CPUs in the container).
  EXPECT_EQ(R(run).steps[0].attempts[0].phase, AttemptPhase::kAssigned);
  EXPECT_EQ(R(run).steps[1].attempts[0].phase, AttemptPhase::kQueued);
  PollContainer p;
  p.container = "c1";
  p.running = {run + "/a/1"};
  Do(p);
  EXPECT_EQ(R(run).steps[0].attempts[0].phase, AttemptPhase::kRunning);
  auto evs = Do(CancelRun{run, "bob"});
  EXPECT_EQ(Types(evs), (std::vector<std::string>{"RunCancelRequested", "JobCancelled"}));
  EXPECT_EQ(R(run).phase, RunPhase::kRunning);
  evs = Report(run + "/a/1", "cancelled");
  EXPECT_EQ(Types(evs).back(), "RunCancelled");
  EXPECT_EQ(R(run).phase, RunPhase::kCancelled);
}

TEST_F(DeciderTest, LostContainerFailsItsAttemptsWhichRetry) {
  StartContainer();
  std::string run = Submit();
  auto evs = DoTick({"c1"});
  std::vector<std::string> types = Types(evs);
  ASSERT_GE(types.size(), 3u);
  EXPECT_EQ(types[0], "ContainerLost");
  EXPECT_EQ(types[1], "JobFailed");
  EXPECT_EQ(evs[1].data["reason"], "container_lost");
  EXPECT_EQ(R(run).steps[0].attempts[0].phase, AttemptPhase::kLost);
  // The pool asks for a replacement in the same tick.
  EXPECT_EQ(state_.containers.count("c2"), 1u);
  EXPECT_EQ(state_.containers["c1"].phase, ContainerPhase::kLost);
  // A lost container's agent is refused.
  PollContainer p;
  p.container = "c1";
  Status st;
  Do(p, &st);
  EXPECT_EQ(st.code(), StatusCode::kFailedPrecondition);
}

TEST_F(DeciderTest, DuplicateReportsAreNoOps) {
  StartContainer();
  std::string run = Submit();
  Report(run + "/prep/1", "succeeded");
  auto evs = Report(run + "/prep/1", "succeeded");
  EXPECT_TRUE(evs.empty());
  EXPECT_EQ(last_.ack, std::vector<std::string>{run + "/prep/1"});
}

TEST_F(DeciderTest, RejectsBadCommandsWithoutEvents) {
  Status st;
  EXPECT_TRUE(Do(SubmitRun{.run_id = "x", .workflow = "nope"}, &st).empty());
  EXPECT_EQ(st.code(), StatusCode::kNotFound);
  EXPECT_TRUE(Do(CancelRun{"nope", "a"}, &st).empty());
  EXPECT_EQ(st.code(), StatusCode::kNotFound);
  EXPECT_TRUE(Do(RegisterWorkflow{*ParseJson(R"({"name":"x","steps":[]})")}, &st).empty() ||
              !st.ok());
  Do(RegisterWorkflow{*ParseJson(kLifecycle)}, &st);
  ASSERT_TRUE(st.ok());
  SubmitRun s{.run_id = "r9", .workflow = "life"};
  s.params = Json{{"nope", 1}};
  EXPECT_TRUE(Do(s, &st).empty());
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
}

TEST_F(DeciderTest, SameDefinitionIsSameVersionAndChangedIsNext) {
  Status st;
  Do(RegisterWorkflow{*ParseJson(kLifecycle)}, &st);
  EXPECT_EQ(last_.version, 1);
  EXPECT_TRUE(last_.created);
  auto evs = Do(RegisterWorkflow{*ParseJson(kLifecycle)}, &st);
  EXPECT_TRUE(evs.empty());
  EXPECT_EQ(last_.version, 1);
  EXPECT_FALSE(last_.created);
  Json changed = *ParseJson(kLifecycle);
  changed["params"]["threshold"] = 0.7;
  Do(RegisterWorkflow{changed}, &st);
  EXPECT_EQ(last_.version, 2);
  EXPECT_NE(state_.FindWorkflow("life", 2)->digest, state_.FindWorkflow("life", 1)->digest);
}

TEST_F(DeciderTest, IdempotencyKeyReturnsTheFirstRun) {
  Status st;
  Do(RegisterWorkflow{*ParseJson(kLifecycle)}, &st);
  SubmitRun s{.run_id = "r-a", .workflow = "life"};
  s.idempotency_key = "k1";
  Do(s, &st);
  s.run_id = "r-b";
  EXPECT_TRUE(Do(s, &st).empty());
  EXPECT_EQ(last_.id, "r-a");
  EXPECT_FALSE(last_.created);
  EXPECT_EQ(state_.runs.size(), 1u);
}

TEST_F(DeciderTest, ReplayOfRecordedEventsGivesTheSameState) {
  StartContainer();
  std::string run = Submit();
  Report(run + "/prep/1", "succeeded");
  Report(run + "/train/1", "failed", Json::object(), 1);
  now_ += std::chrono::seconds(3);
  DoTick();
  State replay;
  for (const auto& e : all_) ASSERT_TRUE(Evolve(replay, e).ok()) << e.type << " at " << e.position;
  EXPECT_EQ(replay.head, all_.size());
  EXPECT_EQ(StateDigestJson(replay), StateDigestJson(state_));
  EXPECT_EQ(R(run).steps[1].attempts.size(), 2u);
}

}  // namespace
}  // namespace epoch::engine

namespace epoch::engine {
namespace {

TEST(PoolTest, LaunchFailuresBackOffExponentially) {
  EngineConfig cfg;
  cfg.max_replicas = 1;
  cfg.min_replicas = 1;
  State s;
  TimePoint now = FromMicros(1'800'000'000'000'000);
  auto tick = [&] {
    Processor p(&s, DecideContext{now, &cfg}, 1);
    p.Record(OnTick(s, Tick{}, DecideContext{now, &cfg}));
    return p.recorded().size();
  };
  auto fail = [&](const std::string& id) {
    Processor p(&s, DecideContext{now, &cfg}, 1);
    auto r = p.Apply(ContainerLaunchResult{id, false, "", "no such file"});
    ASSERT_TRUE(r.ok());
  };
  EXPECT_EQ(tick(), 1u);  // c1 requested
  fail("c1");
  EXPECT_EQ(s.containers["c1"].reason, "launch failed: no such file");
  EXPECT_EQ(tick(), 0u);  // backing off 1 s
  now += std::chrono::seconds(1);
  EXPECT_EQ(tick(), 1u);  // c2
  fail("c2");
  now += std::chrono::seconds(1);
  EXPECT_EQ(tick(), 0u);  // 2 s now
  now += std::chrono::seconds(1);
  EXPECT_EQ(tick(), 1u);  // c3
  EXPECT_EQ(s.container_counter, 3u);
}

}  // namespace
}  // namespace epoch::engine

namespace epoch::engine {
namespace {

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
      r.gpus.push_back(Json{{"index", i}, {"uuid", id + "-gpu" + std::to_string(i)},
                            {"healthy", true}, {"simulated", true}});
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

TEST_F(ScalingTest, ARefusedLaunchFailsOnlyTheDemandNoContainerCouldEverHold) {
  // One registered container of 4 GPUs exists; a 1-GPU job fits it (when it is free),
  // a 4-GPU job waiting behind busy GPUs fits it too; nothing fits a 5-GPU ask
  // until the pool grows, and the backend refuses to grow it.
  cfg_.container_gpus = 8;
  cfg_.min_replicas = 1;
  ASSERT_EQ(Count(Tick(), ev::kContainerRequested), 1);
  Register("c1", 4);  // registered with 4 of the 8 GPUs a new container would have
  Submit(R"({"name":"small","steps":[{"name":"a","command":["x"],"resources":{"gpus":4},
      "retry":{"limit":3}}]})", 2);
  Submit(R"({"name":"big","steps":[{"name":"a","command":["x"],"resources":{"gpus":6},
      "retry":{"limit":3}}]})", 1);
  auto evs = Tick();
  ASSERT_EQ(Count(evs, ev::kContainerRequested), 2) << "demand: small1 and big0 wait";
  std::string id = evs[0].data["container"];
  ContainerLaunchResult lr{id, false, "", "slurm refused the job: Requested node configuration is not available"};
  lr.unschedulable = true;
  evs = Run(lr);
  ASSERT_EQ(Count(evs, ev::kContainerLost), 1);
  EXPECT_EQ(evs[0].data["unschedulable"], true);
  EXPECT_EQ(evs[0].data["reason"],
            "launch failed: unschedulable: slurm refused the job: Requested node configuration is not available");
  // Only big0 fails: small1 fits c1 once small0 is done there.
  ASSERT_EQ(Count(evs, ev::kJobFailed), 1);
  for (const auto& e : evs) {
    if (e.type == ev::kJobFailed) {
      EXPECT_EQ(e.stream, "run-big0");
      EXPECT_EQ(e.data["reason"],
                "unschedulable: slurm refused the job: Requested node configuration is not available");
    }
  }
  // Not retried although its policy allows 3 retries: the run fails.
  EXPECT_EQ(s_.runs["big0"].phase, RunPhase::kFailed);
  EXPECT_NE(s_.runs["big0"].reason.find("unschedulable"), std::string::npos) << s_.runs["big0"].reason;
  EXPECT_EQ(s_.runs["small1"].phase, RunPhase::kQueued);
  // A second refusal (the other container of the round) fails nothing more.
  ContainerLaunchResult lr2{"c" + std::to_string(s_.container_counter), false, "", "refused"};
  lr2.unschedulable = true;
  EXPECT_EQ(Count(Run(lr2), ev::kJobFailed), 0);
}

TEST_F(ScalingTest, AContainerTheBackendReportsGoneIsLostAndItsAttemptsFail) {
  cfg_.container_gpus = 0;
  cfg_.min_replicas = 1;
  ASSERT_EQ(Count(Tick(), ev::kContainerRequested), 1);
  Register("c1", 0);
  Run(ContainerLaunchResult{"c1", true, "77", ""});
  ASSERT_EQ(s_.containers["c1"].handle, "77");
  Submit(R"({"name":"w","steps":[{"name":"a","command":["x"],"retry":{"limit":1}}]})", 1);
  ASSERT_EQ(s_.runs["w0"].steps[0].Last()->phase, AttemptPhase::kAssigned);
  // An answer about another handle (an older launch) changes nothing.
  EXPECT_TRUE(Run(ContainerExited{"c1", "76", "slurm job 76 CANCELLED"}).empty());
  auto evs = Run(ContainerExited{"c1", "77", "slurm job 77 CANCELLED (exit code 0:15) on n1"});
  ASSERT_EQ(Count(evs, ev::kContainerLost), 1);
  EXPECT_EQ(evs[0].data["reason"], "slurm job 77 CANCELLED (exit code 0:15) on n1");
  EXPECT_EQ(s_.containers["c1"].phase, ContainerPhase::kLost);
  EXPECT_EQ(s_.runs["w0"].steps[0].attempts[0].phase, AttemptPhase::kLost);
  EXPECT_EQ(Count(evs, ev::kJobRetryScheduled), 1);
  // Told again: it is already lost.
  EXPECT_TRUE(Run(ContainerExited{"c1", "77", "again"}).empty());
}

TEST_F(ScalingTest, AContainerStillQueuedByTheBackendOutlivesTheRegisterTimeout) {
  cfg_.min_replicas = 1;
  cfg_.register_timeout = std::chrono::seconds(30);
  ASSERT_EQ(Count(Tick(), ev::kContainerRequested), 1);
  now_ += std::chrono::seconds(31);
  auto tick = [&](std::map<std::string, TimePoint> queued) {
    Processor p(&s_, DecideContext{now_, &cfg_}, 1);
    engine::Tick t;
    t.queued = std::move(queued);
    p.Record(OnTick(s_, t, DecideContext{now_, &cfg_}));
    p.Settle();
    return p.recorded();
  };
  // Its Slurm job was PENDING 1 s ago: the 30 s count from then.
  EXPECT_EQ(Count(tick({{"c1", now_ - std::chrono::seconds(1)}}), ev::kContainerLost), 0);
  EXPECT_EQ(s_.containers["c1"].phase, ContainerPhase::kRequested);
  now_ += std::chrono::seconds(28);
  EXPECT_EQ(Count(tick({{"c1", now_ - std::chrono::seconds(29)}}), ev::kContainerLost), 0);
  now_ += std::chrono::seconds(2);
  auto evs = tick({{"c1", now_ - std::chrono::seconds(31)}});
  ASSERT_EQ(Count(evs, ev::kContainerLost), 1);
  EXPECT_EQ(evs[0].data["reason"], "never registered (within 30s)");
}

TEST_F(ScalingTest, BurstGrowsThePoolInUnitsNoFasterThanTheInterval) {
  EXPECT_EQ(Count(Tick(), ev::kContainerRequested), 0);  // no demand, min 0: nothing
  // 20 jobs of 1 CPU each: each container holds one.
  Submit(R"({"name":"burst","steps":[{"name":"a","command":["x"],"resources":{"cpu":"1"}}]})", 20);
  auto evs = Tick();
  EXPECT_EQ(Count(evs, ev::kContainerRequested), 2);  // first round at once
  EXPECT_EQ(evs[0].data["reason"], "demand");
  EXPECT_EQ(Live(), 2);
  now_ += std::chrono::milliseconds(500);
  EXPECT_EQ(Count(Tick(), ev::kContainerRequested), 0);  // interval not yet over
  now_ += std::chrono::milliseconds(500);
  EXPECT_EQ(Count(Tick(), ev::kContainerRequested), 2);
  EXPECT_EQ(Live(), 4);
  now_ += std::chrono::seconds(1);
  EXPECT_EQ(Count(Tick(), ev::kContainerRequested), 1);  // capped by sig.maxReplicas
  EXPECT_EQ(Live(), 5);
  now_ += std::chrono::seconds(5);
  EXPECT_EQ(Count(Tick(), ev::kContainerRequested), 0);
  // Work is placed as containers register; when it is all done they go idle and
  // are released after sig.idleTimeout.
  for (int i = 1; i <= 5; ++i) Register("c" + std::to_string(i), 0);
  int done = 0;
  while (done < 20) {
    for (const auto& [id, r] : std::map<std::string, engine::Run>(s_.runs)) {
      const Attempt* a = r.steps[0].Last();
      if (a && a->phase == AttemptPhase::kAssigned) {
        PollContainer p;
        p.container = a->container;
        p.reports =
            Reports(Json::array({Json{{"attempt_id", id + "/a/1"}, {"state", "succeeded"}}}));
        Run(p);
        ++done;
      }
    }
  }
  EXPECT_TRUE(s_.queue.empty());
  now_ += std::chrono::seconds(29);
  EXPECT_EQ(Count(Tick(), ev::kContainerReleased), 0);
  now_ += std::chrono::seconds(2);
  evs = Tick();
  EXPECT_EQ(Count(evs, ev::kContainerReleased), 5);
  EXPECT_NE(evs[0].data["reason"].get<std::string>().find("idle for"), std::string::npos);
  EXPECT_EQ(Live(), 0);
}

TEST_F(ScalingTest, MinReplicasAreKeptAndNotReleased) {
  cfg_.min_replicas = 2;
  auto evs = Tick();
  EXPECT_EQ(Count(evs, ev::kContainerRequested), 2);
  EXPECT_EQ(evs[0].data["reason"], "minReplicas");
  Register("c1", 0);
  Register("c2", 0);
  now_ += std::chrono::hours(1);
  EXPECT_EQ(Count(Tick(), ev::kContainerReleased), 0);
  EXPECT_EQ(Live(), 2);
}

TEST_F(ScalingTest, GpusAreGivenToOneAttemptAtATimeWithBestFit) {
  cfg_.min_replicas = 2;
  Tick();
  Register("c1", 4);
  Register("c2", 4);
  // Six 1-GPU then three 2-GPU attempts ask for 12 GPUs; 2x4 hold 8. Best fit packs
  // the singles (4 on c1, 2 on c2), so one double still fits in c2's last two.
  Submit(R"({"name":"g1","steps":[{"name":"a","command":["x"],"resources":{"gpus":1,"cpu":"10m"}}]})", 6);
  Submit(R"({"name":"g2","steps":[{"name":"a","command":["x"],"resources":{"gpus":2,"cpu":"10m"}}]})", 3);
  std::map<std::string, std::set<std::string>> used;  // container -> gpu indices
  int placed = 0, waiting = 0;
  for (const auto& [id, r] : s_.runs) {
    const Attempt* a = r.steps[0].Last();
    if (a->phase == AttemptPhase::kQueued) {
      ++waiting;
      continue;
    }
    ++placed;
    ASSERT_EQ(static_cast<int>(a->gpus.size()), a->resources.gpus);
    ASSERT_EQ(a->gpu_uuids.size(), a->gpus.size());
    for (const auto& g : a->gpus) {
      EXPECT_TRUE(used[a->container].insert(g.get<std::string>()).second)
          << "GPU " << g << " of " << a->container << " given twice";
    }
  }
  EXPECT_EQ(used["c1"].size() + used["c2"].size(), 8u);
  EXPECT_EQ(placed, 7);
  EXPECT_EQ(waiting, 2);
  EXPECT_EQ(s_.containers["c1"].busy_gpus.size(), 4u);
  EXPECT_EQ(s_.containers["c2"].busy_gpus.size(), 4u);
}

TEST_F(ScalingTest, PriorityMovesARunAhead) {
  cfg_.min_replicas = 1;
  cfg_.container_gpus = 1;
  Tick();
  Register("c1", 1);
  Submit(R"({"name":"p","steps":[{"name":"a","command":["x"],"resources":{"gpus":1}}]})", 3);
  SubmitRun urgent;
  urgent.run_id = "urgent";
  urgent.workflow = "p";
  urgent.priority = 10;
  Run(urgent);
  // p0 holds the only GPU; when it finishes, the urgent run goes next, not p1.
  PollContainer p;
  p.container = "c1";
  p.reports = Reports(Json::array({Json{{"attempt_id", "p0/a/1"}, {"state", "succeeded"}}}));
  Run(p);
  EXPECT_EQ(s_.runs["urgent"].steps[0].Last()->phase, AttemptPhase::kAssigned);
  EXPECT_EQ(s_.runs["p1"].steps[0].Last()->phase, AttemptPhase::kQueued);
}

}  // namespace
}  // namespace epoch::engine

namespace epoch::engine {
namespace {

class GangTest : public ScalingTest {
 protected:
  void SetUp() override {
    cfg_.min_replicas = 2;
    cfg_.max_replicas = 3;
    cfg_.allocation_unit = 1;
    cfg_.container_gpus = 1;
    Tick();
    Register("c1", 1);
    Register("c2", 1);
    Submit(R"({"name":"ddp","steps":[{"name":"t","command":["train"],"workers":3,
        "resources":{"gpus":1,"cpu":"100m"},"retry":{"limit":1,"initial":"1s"}}]})", 1);
  }
  const Attempt& A() { return *s_.runs["ddp0"].steps[0].Last(); }
  std::vector<RecordedEvent> Report(const std::string& container, Json reports) {
    PollContainer p;
    p.container = container;
    p.reports = Reports(std::move(reports));
    Status st;
    auto evs = Run(p, &st);
    EXPECT_TRUE(st.ok()) << st.ToString();
    return evs;
  }
  static Json R(int rank, const std::string& state, int attempt = 1) {
    return Json{{"attempt_id", "ddp0/t/" + std::to_string(attempt) + "/" + std::to_string(rank)},
                {"state", state}, {"exit_code", state == "succeeded" ? 0 : 1}};
  }
};

TEST_F(GangTest, WaitsWithoutHoldingGpusThenPlacesAllWorkersTogether) {
  EXPECT_EQ(A().phase, AttemptPhase::kQueued);
  EXPECT_TRUE(s_.containers["c1"].busy_gpus.empty());  // nothing held while waiting
  EXPECT_TRUE(s_.containers["c2"].busy_gpus.empty());
  // The waiting gang is demand: the pool asks for a third container.
  auto evs = Tick();
  ASSERT_EQ(Count(evs, ev::kContainerRequested), 1);
  Register("c3", 1);
  const Attempt& a = A();
  ASSERT_EQ(a.phase, AttemptPhase::kAssigned);
  ASSERT_EQ(a.ranks.size(), 3u);
  std::set<std::string> containers;
  for (int r = 0; r < 3; ++r) {
    EXPECT_EQ(a.ranks[r].rank, r);
    EXPECT_EQ(a.ranks[r].local_rank, 0);  // one worker per container here
    EXPECT_EQ(a.ranks[r].gpus.size(), 1u);
    containers.insert(a.ranks[r].container);
  }
  EXPECT_EQ(containers.size(), 3u);
  EXPECT_GE(a.master_port, 29500);
  EXPECT_EQ(s_.containers["c3"].attempts.count("ddp0/t/1/" + std::to_string(
                [&] { for (const auto& w : a.ranks) if (w.container == "c3") return w.rank; return -1; }())),
            1u);
}

TEST_F(GangTest, AllWorkersSucceedingSucceedsTheAttemptOnce) {
  Tick();
  Register("c3", 1);
  const Attempt& a = A();
  std::map<std::string, Json> by_container;
  for (const auto& w : a.ranks) by_container[w.container].push_back(R(w.rank, "succeeded"));
  auto it = by_container.begin();
  auto evs = Report(it->first, it->second);
  EXPECT_EQ(Count(evs, ev::kJobSucceeded), 0);
  ++it;
  evs = Report(it->first, it->second);
  EXPECT_EQ(Count(evs, ev::kJobSucceeded), 0);
  ++it;
  evs = Report(it->first, it->second);
  EXPECT_EQ(Count(evs, ev::kJobSucceeded), 1);
  EXPECT_EQ(Count(evs, ev::kRunSucceeded), 1);
  for (const auto& id : {"c1", "c2", "c3"}) EXPECT_TRUE(s_.containers[id].busy_gpus.empty());
}

// Rank 0's metrics and outputs are the attempt's even when another rank ends last,
// and its declared outputs are checked like a single worker's.
TEST_F(GangTest, RankZerosResultsAreTheAttemptsWhicheverRankEndsLast) {
  Tick();
  Register("c3", 1);
  std::map<int, std::string> where;
  for (const auto& w : A().ranks) where[w.rank] = w.container;
  Json r0 = R(0, "succeeded");
  r0["metrics"] = Json{{"loss", 0.25}};
  r0["outputs"] = Json::array({Json{{"name", "model.pt"}, {"size", 7}, {"sha256", "ab"}}});
  Report(where[0], Json::array({r0}));
  Report(where[2], Json::array({R(2, "succeeded")}));
  auto evs = Report(where[1], Json::array({R(1, "succeeded")}));
  ASSERT_EQ(Count(evs, ev::kJobSucceeded), 1);
  const StepRun& t = s_.runs["ddp0"].steps[0];
  EXPECT_EQ(t.metrics, (Json{{"loss", 0.25}}));
  ASSERT_EQ(t.outputs.size(), 1u);
  EXPECT_EQ(t.outputs[0]["name"], "model.pt");
  // Rank 0's results survive a snapshot.
  auto decoded = DecodeSnapshot(EncodeSnapshot(s_));
  ASSERT_TRUE(decoded.ok());
  EXPECT_EQ(decoded->runs["ddp0"].steps[0].attempts[0].ranks[0].metrics, (Json{{"loss", 0.25}}));
}

TEST_F(GangTest, AGangWithoutItsDeclaredOutputFailsWithMissingOutput) {
  Tick();
  Register("c3", 1);
  for (const auto& w : std::vector<Worker>(A().ranks)) {
    Report(w.container, Json::array({R(w.rank, "succeeded")}));
  }
  ASSERT_EQ(s_.runs["ddp0"].phase, RunPhase::kSucceeded);
  Submit(R"({"name":"ddp2","steps":[{"name":"t","command":["train"],"workers":2,
      "outputs":["model.pt"],"resources":{"gpus":1,"cpu":"100m"}}]})", 1);
  const Attempt* a = s_.runs["ddp20"].steps[0].Last();
  ASSERT_NE(a, nullptr);
  ASSERT_EQ(a->ranks.size(), 2u);
  auto rep = [](int rank) {
    return Json{{"attempt_id", "ddp20/t/1/" + std::to_string(rank)}, {"state", "succeeded"},
                {"exit_code", 0}};
  };
  Report(a->ranks[1].container, Json::array({rep(1)}));
  auto evs = Report(a->ranks[0].container, Json::array({rep(0)}));
  EXPECT_EQ(Count(evs, ev::kJobSucceeded), 0);
  ASSERT_EQ(Count(evs, ev::kJobFailed), 1);
  EXPECT_EQ(s_.runs["ddp20"].steps[0].attempts[0].reason, "missing_output: model.pt");
}

TEST_F(GangTest, OneWorkerFailingFailsTheAttemptAndTheStepRetriesAsAWhole) {
  Tick();
  Register("c3", 1);
  std::map<int, std::string> where;
  for (const auto& w : A().ranks) where[w.rank] = w.container;
  for (const auto& [rank, c] : where) {  // every worker is running
    PollContainer p;
    p.container = c;
    p.running = {"ddp0/t/1/" + std::to_string(rank)};
    EXPECT_EQ(Count(Run(p), ev::kJobStarted), 1);
  }
  EXPECT_EQ(A().phase, AttemptPhase::kRunning);
  auto evs = Report(where[1], Json::array({R(1, "failed")}));
  EXPECT_EQ(Count(evs, ev::kJobWorkerFinished), 1);
  EXPECT_EQ(Count(evs, ev::kJobFailed), 1);
  EXPECT_EQ(Count(evs, ev::kJobRetryScheduled), 1);
  const Attempt& first = s_.runs["ddp0"].steps[0].attempts[0];
  EXPECT_EQ(first.phase, AttemptPhase::kFailed);
  EXPECT_NE(first.reason.find("worker 1"), std::string::npos);
  // Workers 0 and 2 still hold their GPUs until they report (they are being stopped).
  EXPECT_EQ(s_.containers[where[0]].busy_gpus.size(), 1u);
  EXPECT_TRUE(s_.containers[where[1]].busy_gpus.empty());
  now_ += std::chrono::seconds(1);
  Tick();  // the retry is queued but cannot be placed yet
  EXPECT_EQ(s_.runs["ddp0"].steps[0].attempts.size(), 2u);
  EXPECT_EQ(A().phase, AttemptPhase::kQueued);
  Report(where[0], Json::array({R(0, "cancelled")}));
  Report(where[2], Json::array({R(2, "cancelled")}));
  EXPECT_EQ(A().phase, AttemptPhase::kAssigned);  // the whole gang again
  EXPECT_EQ(A().ranks.size(), 3u);
  EXPECT_EQ(s_.runs["ddp0"].steps[0].attempts[0].ranks[0].phase, AttemptPhase::kCancelled);
}

}  // namespace
}  // namespace epoch::engine

namespace epoch::engine {
namespace {

// Tenants' GPU quotas (tenants.<name>.maxGpus) and fair share between tenants.
class QuotaTest : public ScalingTest {
 protected:
  void SetUp() override {
    cfg_.min_replicas = 1;
    cfg_.max_replicas = 1;
    cfg_.allocation_interval = std::chrono::seconds(0);
    cfg_.container_cpu_millis = 4000;
    cfg_.container_memory_bytes = 8LL << 30;
    Tick();  // requests c1 (minReplicas)
    ASSERT_EQ(s_.containers.count("c1"), 1u);
  }
  // `runs` runs, as `tenant`, of a one-step workflow asking for `gpus` GPUs per
  // worker and `workers` workers; returns their ids in submission order.
  std::vector<std::string> SubmitAs(const std::string& tenant, int runs, int gpus = 1,
                                    int workers = 1) {
    std::string wf = tenant + "-g" + std::to_string(gpus) + "w" + std::to_string(workers);
    Json step{{"name", "a"}, {"command", Json::array({"x"})},
              {"resources", Json{{"gpus", gpus}, {"cpu", "10m"}, {"memory", "10Mi"}}}};
    if (workers > 1) step["workers"] = workers;
    RegisterWorkflow rw;
    rw.definition = Json{{"name", wf}, {"steps", Json::array({step})}};
    rw.tenant = tenant;
    Status st;
    Run(rw, &st);
    EXPECT_TRUE(st.ok()) << st.ToString();
    std::vector<std::string> ids;
    for (int i = 0; i < runs; ++i) {
      SubmitRun sr;
      sr.run_id = wf + "-" + std::to_string(++submitted_);
      sr.workflow = wf;
      sr.tenant = tenant;
      Run(sr, &st);
      EXPECT_TRUE(st.ok()) << st.ToString();
      ids.push_back(sr.run_id);
    }
    return ids;
  }
  // Registers c1 with `gpus` GPUs without scheduling (no Settle): the queue waits.
  void RegisterOnly(int gpus) {
    RegisterContainer r;
    r.container = "c1";
    r.cpu_millis = cfg_.container_cpu_millis;
    r.memory_bytes = cfg_.container_memory_bytes;
    for (int i = 0; i < gpus; ++i) {
      r.gpus.push_back(Json{{"index", i}, {"uuid", "c1-gpu" + std::to_string(i)},
                            {"healthy", true}, {"simulated", true}});
    }
    Processor p(&s_, DecideContext{now_, &cfg_}, 1);
    ASSERT_TRUE(p.Apply(r).ok());
  }
  void Finish(const std::string& run) {
    const Attempt* a = s_.runs.at(run).steps[0].Last();
    ASSERT_NE(a, nullptr);
    ASSERT_TRUE(a->phase == AttemptPhase::kAssigned) << run << " is " << Name(a->phase);
    PollContainer p;
    p.container = a->container;
    p.reports = Reports(Json::array({Json{{"attempt_id", AttemptId(run, "a", a->number)},
                                          {"state", "succeeded"},
                                          {"exit_code", 0}}}));
    Status st;
    Run(p, &st);
    ASSERT_TRUE(st.ok()) << st.ToString();
  }
  int Held(const std::string& tenant) {
    auto held = TenantGpusHeld(s_);
    return held.count(tenant) ? held[tenant] : 0;
  }
  AttemptPhase Phase(const std::string& run) { return s_.runs.at(run).steps[0].Last()->phase; }
  int CountIn(const std::vector<std::string>& runs, AttemptPhase phase) {
    int n = 0;
    for (const auto& r : runs) n += Phase(r) == phase;
    return n;
  }
  // The attempt's "reason" as GET /v1/runs/{id} shows it (null when none).
  Json Reason(const std::string& run) {
    return RunToJson(s_.runs.at(run), cfg_, &s_)["steps"][0]["attempts"].back()["reason"];
  }

  int submitted_ = 0;
};

TEST_F(QuotaTest, AQuotaBlocksPlacementSaysWhyAndDoesNotGrowThePool) {
  cfg_.max_replicas = 3;
  cfg_.tenant_max_gpus = {{"ml", 2}};
  Register("c1", 4);
  auto ml = SubmitAs("ml", 5);
  EXPECT_EQ(CountIn(ml, AttemptPhase::kAssigned), 2);
  EXPECT_EQ(CountIn(ml, AttemptPhase::kQueued), 3);
  EXPECT_EQ(Held("ml"), 2);
  EXPECT_EQ(s_.containers["c1"].busy_gpus.size(), 2u);  // two GPUs stay free
  EXPECT_EQ(Reason(ml[4]), "tenant ml is at its GPU quota (2 of 2 GPUs)");
  EXPECT_TRUE(Reason(ml[0]).is_null());  // placed: no wait
  // Derived from state: without it the view has nothing to say, and digests keep.
  EXPECT_TRUE(RunToJson(s_.runs.at(ml[4]), cfg_)["steps"][0]["attempts"][0]["reason"].is_null());
  // Held back by the quota is no demand: the pool does not grow.
  now_ += std::chrono::seconds(5);
  EXPECT_EQ(Count(Tick(), ev::kContainerRequested), 0);
  EXPECT_EQ(Live(), 1);
  // As one ends, the next takes its GPU; never more than two at once.
  Finish(ml[0]);
  EXPECT_EQ(Phase(ml[2]), AttemptPhase::kAssigned);
  EXPECT_EQ(CountIn(ml, AttemptPhase::kQueued), 2);
  EXPECT_EQ(Held("ml"), 2);
  // The same work without a quota is demand: the pool asks for more.
  cfg_.tenant_max_gpus.clear();
  EXPECT_EQ(Count(Tick(), ev::kContainerRequested), 0);  // the free two take the last two
  EXPECT_EQ(CountIn(ml, AttemptPhase::kQueued), 0);
  auto more = SubmitAs("ml", 3);
  EXPECT_EQ(CountIn(more, AttemptPhase::kQueued), 3);
  EXPECT_GT(Count(Tick(), ev::kContainerRequested), 0);
}

TEST_F(QuotaTest, AQuotaOfZeroStillRunsCpuOnlySteps) {
  cfg_.tenant_max_gpus = {{"ml", 0}};
  Register("c1", 4);
  auto cpu = SubmitAs("ml", 2, /*gpus=*/0);
  auto gpu = SubmitAs("ml", 1, /*gpus=*/1);
  EXPECT_EQ(CountIn(cpu, AttemptPhase::kAssigned), 2);
  EXPECT_EQ(Phase(gpu[0]), AttemptPhase::kQueued);
  EXPECT_EQ(Reason(gpu[0]),
            "needs 1 GPU, more than tenant ml's GPU quota of 0 (tenants.ml.maxGpus): it waits "
            "until the quota is raised");
}

TEST_F(QuotaTest, AGangCountsEveryWorkersGpus) {
  cfg_.max_replicas = 3;
  cfg_.tenant_max_gpus = {{"ml", 3}};
  Register("c1", 4);
  // 2 workers x 2 GPUs = 4 > 3: it waits although c1 has room, and asks for nothing.
  auto big = SubmitAs("ml", 1, /*gpus=*/2, /*workers=*/2);
  EXPECT_EQ(Phase(big[0]), AttemptPhase::kQueued);
  EXPECT_TRUE(s_.containers["c1"].busy_gpus.empty());
  EXPECT_EQ(Reason(big[0]),
            "needs 4 GPUs, more than tenant ml's GPU quota of 3 (tenants.ml.maxGpus): it waits "
            "until the quota is raised");
  // A smaller gang behind it fits the quota (backfill): 2 workers x 1 GPU.
  auto pair = SubmitAs("ml", 2, /*gpus=*/1, /*workers=*/2);
  EXPECT_EQ(Phase(pair[0]), AttemptPhase::kAssigned);
  EXPECT_EQ(s_.runs.at(pair[0]).steps[0].Last()->ranks.size(), 2u);
  EXPECT_EQ(Held("ml"), 2);
  // The second pair would hold 4: it waits, though two GPUs are free.
  EXPECT_EQ(Phase(pair[1]), AttemptPhase::kQueued);
  EXPECT_EQ(Reason(pair[1]),
            "tenant ml holds 2 of its 3 GPUs (its quota) and this attempt needs 2");
  auto one = SubmitAs("ml", 1);
  EXPECT_EQ(Phase(one[0]), AttemptPhase::kAssigned);
  EXPECT_EQ(Held("ml"), 3);
  EXPECT_EQ(Reason(pair[1]), "tenant ml is at its GPU quota (3 of 3 GPUs)");
  now_ += std::chrono::seconds(5);
  EXPECT_EQ(Count(Tick(), ev::kContainerRequested), 0);
}

TEST_F(QuotaTest, FairShareSplitsFourGpusTwoAndTwoWhoeverSubmittedFirst) {
  // ml submits all ten before cv submits any; nothing runs until c1 registers.
  auto ml = SubmitAs("ml", 10);
  auto cv = SubmitAs("cv", 10);
  RegisterOnly(4);
  DecideContext ctx{now_, &cfg_};
  std::vector<Event> placed = Schedule(s_, ctx);
  ASSERT_EQ(placed.size(), 4u);
  // A pure function of state: a snapshot of it decides the same.
  auto copy = DecodeSnapshot(EncodeSnapshot(s_));
  ASSERT_TRUE(copy.ok());
  std::vector<Event> again = Schedule(*copy, ctx);
  ASSERT_EQ(again.size(), placed.size());
  for (size_t i = 0; i < placed.size(); ++i) {
    EXPECT_EQ(again[i].stream, placed[i].stream);
    EXPECT_EQ(again[i].data, placed[i].data);
  }
  // Turns: ml, cv, ml, cv (equal shares go by queue order).
  EXPECT_EQ(placed[0].stream, RunStream(ml[0]));
  EXPECT_EQ(placed[1].stream, RunStream(cv[0]));
  EXPECT_EQ(placed[2].stream, RunStream(ml[1]));
  EXPECT_EQ(placed[3].stream, RunStream(cv[1]));
  Processor p(&s_, ctx, 1);
  p.Record(std::move(placed));
  EXPECT_EQ(Held("ml"), 2);
  EXPECT_EQ(Held("cv"), 2);
  // Each GPU that frees goes to whoever then holds less: the split stays 2/2.
  Finish(ml[0]);
  EXPECT_EQ(Phase(ml[2]), AttemptPhase::kAssigned);
  Finish(cv[0]);
  EXPECT_EQ(Phase(cv[2]), AttemptPhase::kAssigned);
  EXPECT_EQ(Held("ml"), 2);
  EXPECT_EQ(Held("cv"), 2);
  EXPECT_EQ(CountIn(ml, AttemptPhase::kQueued), 7);
  EXPECT_EQ(CountIn(cv, AttemptPhase::kQueued), 7);
}

TEST_F(QuotaTest, ATenantThatTookEveryGpuGivesThemUpToTheOtherAsItsAttemptsEnd) {
  Register("c1", 4);
  auto ml = SubmitAs("ml", 10);
  EXPECT_EQ(Held("ml"), 4);  // nobody else was waiting: work-conserving
  auto cv = SubmitAs("cv", 10);
  EXPECT_EQ(Held("cv"), 0);
  Finish(ml[0]);  // ml 3, cv 0: cv
  Finish(ml[1]);  // ml 2, cv 1: cv
  EXPECT_EQ(Held("cv"), 2);
  EXPECT_EQ(Held("ml"), 2);
  Finish(ml[2]);  // ml 1, cv 2: ml
  EXPECT_EQ(Held("ml"), 2);
  EXPECT_EQ(Held("cv"), 2);
  // A higher priority moves a run ahead within its tenant, not past another tenant's
  // fair share.
  SubmitRun urgent;
  urgent.run_id = "urgent";
  urgent.workflow = "cv-g1w1";
  urgent.tenant = "cv";
  urgent.priority = 10;
  Run(urgent);
  Finish(ml[3]);  // ml 1, cv 2: ml, though cv's urgent run has the highest priority
  EXPECT_EQ(Phase("urgent"), AttemptPhase::kQueued);
  Finish(cv[0]);  // cv 1, ml 2: cv, and its urgent run first
  EXPECT_EQ(Phase("urgent"), AttemptPhase::kAssigned);
}

TEST_F(QuotaTest, ATenantUnderItsQuotaGetsTheGpusATenantAtItsQuotaCannotUse) {
  cfg_.tenant_max_gpus = {{"ml", 1}};
  Register("c1", 4);
  auto ml = SubmitAs("ml", 5);
  auto cv = SubmitAs("cv", 5);  // no quota
  EXPECT_EQ(Held("ml"), 1);
  EXPECT_EQ(Held("cv"), 3);
  EXPECT_EQ(s_.containers["c1"].busy_gpus.size(), 4u);
  EXPECT_EQ(Reason(ml[1]), "tenant ml is at its GPU quota (1 of 1 GPUs)");
  EXPECT_TRUE(Reason(cv[4]).is_null());  // waits for room, not for a quota
  // When cv's end, cv's next take the GPUs: ml stays at its quota.
  Finish(cv[0]);
  EXPECT_EQ(Phase(cv[3]), AttemptPhase::kAssigned);
  EXPECT_EQ(Held("ml"), 1);
  EXPECT_EQ(Held("cv"), 3);
}

TEST_F(QuotaTest, UnlimitedTenantsAndQuotasAboveThePoolShareAlike) {
  // No quota for cv and default; ml's 100 is more than the pool's 6 GPUs, so it
  // counts as 6: three equal shares.
  cfg_.tenant_max_gpus = {{"ml", 100}};
  auto cv = SubmitAs("cv", 6);
  auto ml = SubmitAs("ml", 6);
  auto other = SubmitAs("default", 6);
  RegisterOnly(6);
  Tick();
  EXPECT_EQ(Held("cv"), 2);
  EXPECT_EQ(Held("ml"), 2);
  EXPECT_EQ(Held("default"), 2);
  for (const auto& r : ml) EXPECT_TRUE(Reason(r).is_null()) << r;
}

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

TEST_F(TenantTest, AReportForAnotherContainersAttemptIsRefusedAndWritesNothing) {
  cfg_.max_replicas = 2;
  cfg_.min_replicas = 2;
  DoTick();  // c1, c2
  for (const char* id : {"c1", "c2"}) {
    RegisterContainer reg;
    reg.container = id;
    reg.cpu_millis = 4000;
    reg.memory_bytes = 8LL << 30;
    Do(reg);
  }
  std::string run = Submit();
  const Attempt& prep = R(run).steps[0].attempts[0];
  ASSERT_FALSE(prep.container.empty());
  std::string other = prep.container == "c1" ? "c2" : "c1";
  uint64_t head = state_.head;
  // The other container forges a success for it: refused, nothing recorded.
  PollContainer forged;
  forged.container = other;
  forged.reports = Reports(Json::array({Json{{"attempt_id", run + "/prep/1"},
                                             {"state", "succeeded"},
                                             {"exit_code", 0},
                                             {"metrics", Json{{"accuracy", 0.999}}}}}));
  Status st;
  auto evs = Do(forged, &st);
  EXPECT_EQ(st.code(), StatusCode::kPermissionDenied) << st.ToString();
  EXPECT_NE(st.message().find("not assigned to it"), std::string::npos) << st.message();
  EXPECT_EQ(state_.head, head);
  EXPECT_TRUE(evs.empty());
  EXPECT_EQ(R(run).steps[0].attempts[0].phase, AttemptPhase::kAssigned);
  // An attempt that does not exist is not the container's either.
  forged.reports[0].attempt_id = run + "/prep/7";
  Do(forged, &st);
  EXPECT_EQ(st.code(), StatusCode::kPermissionDenied);
  // Its own container's report goes through.
  forged.container = prep.container;
  forged.reports[0].attempt_id = run + "/prep/1";
  Do(forged, &st);
  EXPECT_TRUE(st.ok()) << st.ToString();
  EXPECT_EQ(R(run).steps[0].phase, StepPhase::kSucceeded);
}

TEST_F(TenantTest, ContainerRequestsCarryOnlyTheHashOfAMintedCredential) {
  ContainerCredentials mint;
  Processor p(&state_, DecideContext{now_, &cfg_, files_, &mint}, 1);
  p.Record(OnTick(state_, Tick{}, DecideContext{now_, &cfg_, files_, &mint}));
  ASSERT_EQ(p.recorded().size(), 1u);
  const RecordedEvent& req = p.recorded()[0];
  ASSERT_EQ(req.type, "ContainerRequested");
  std::string hash = req.data.value("credential_sha256", "");
  ASSERT_EQ(hash.size(), 64u);
  EXPECT_EQ(state_.containers.at("c1").credential_sha256, hash);
  auto secret = mint.Take("c1");
  ASSERT_TRUE(secret.has_value());
  EXPECT_TRUE(secret->starts_with(kContainerCredentialPrefix));
  EXPECT_EQ(req.data.dump().find(*secret), std::string::npos) << "the secret is in the event";
  EXPECT_TRUE(CredentialMatches(*secret, hash));
  EXPECT_FALSE(CredentialMatches(*secret + "x", hash));
  EXPECT_FALSE(CredentialMatches("", hash));
  EXPECT_FALSE(CredentialMatches(*secret, ""));
  EXPECT_FALSE(mint.Take("c1").has_value()) << "taken once";
}

TEST_F(TenantTest, CacheEntriesAreNeverSharedBetweenTenants) {
  StartContainer();
  cfg_.tenant_input_roots["a"] = {"/data"};
  cfg_.tenant_input_roots["b"] = {"/data"};
  // Tenant a's run fills the cache.
  std::string a1 = SubmitAs("a", kCachedNoRunId);
  Succeed(a1 + "/prep/1", "shard", 10, "shard-v1");
  ASSERT_EQ(state_.cache.size(), 1u);
  EXPECT_EQ(state_.cache.begin()->second.tenant, "a");
  std::string a_key = state_.cache.begin()->first;
  // Tenant b runs the very same work (its own workflow of the same steps): a miss.
  std::string def_b = kCachedNoRunId;
  def_b.replace(def_b.find("cached2"), 7, "cached3");
  std::string b1 = SubmitAs("b", def_b);
  const RecordedEvent* q = Find(b1, "prep", "JobQueued");
  ASSERT_NE(q, nullptr);
  EXPECT_EQ(q->data["cache"]["miss"], "no entry");
  EXPECT_NE(q->data["cache"]["key"], a_key);
  EXPECT_EQ(Find(b1, "prep", "JobCacheHit"), nullptr);
  // Tenant a's second run hits its own entry.
  std::string a2 = SubmitAs("a", kCachedNoRunId);
  ASSERT_NE(Find(a2, "prep", "JobCacheHit"), nullptr);
  // b cannot forget a's entry (it does not exist for b); a admin can.
  InvalidateCache inv{a_key, "", "", "u@b"};
  inv.tenant = "b";
  Status st;
  Do(inv, &st);
  EXPECT_EQ(st.code(), StatusCode::kNotFound);
  EXPECT_EQ(state_.cache.count(a_key), 1u);
  inv.any_tenant = true;
  Do(inv, &st);
  EXPECT_TRUE(st.ok()) << st.ToString();
  EXPECT_EQ(state_.cache.count(a_key), 0u);
}

TEST_F(TenantTest, TheSameModelNameInTwoTenantsIsTwoModels) {
  StartContainer();
  const char* def = R"({"name":"NAME","steps":[
      {"name":"train","kind":"train","command":["t"],"model":{"name":"mlp"}},
      {"name":"validate","kind":"validate","after":["train"],"command":["v"]}]})";
  auto run_as = [&](const std::string& tenant, const std::string& sha, double accuracy) {
    std::string text = def;
    text.replace(text.find("NAME"), 4, "wf-" + tenant);
    std::string run = SubmitAs(tenant, text);
    PollContainer p;
    p.container = "c1";
    p.reports = Reports(Json::array({Json{
        {"attempt_id", run + "/train/1"},
        {"state", "succeeded"},
        {"exit_code", 0},
        {"outputs", Json::array({Json{{"name", "model.bin"}, {"size", 5}, {"sha256", sha}}})}}}));
    Do(p);
    p.reports = Reports(Json::array({Json{{"attempt_id", run + "/validate/1"},
                                          {"state", "succeeded"},
                                          {"exit_code", 0},
                                          {"metrics", Json{{"accuracy", accuracy}}}}}));
    Do(p);
    EXPECT_EQ(R(run).phase, RunPhase::kSucceeded);
    return run;
  };
  // The same bytes in both tenants: still two models, each at version 1.
  std::string ra = run_as("a", "same", 0.7);
  std::string rb = run_as("b", "same", 0.999);
  ASSERT_EQ(state_.models.at("a/mlp").size(), 1u);
  ASSERT_EQ(state_.models.at("b/mlp").size(), 1u);
  EXPECT_EQ(state_.models.at("a/mlp")[0].run, ra);
  EXPECT_EQ(state_.models.at("b/mlp")[0].run, rb);
  // b's validation attached only to b's model.
  EXPECT_EQ(state_.models.at("a/mlp")[0].metrics["accuracy"], 0.7);
  EXPECT_EQ(state_.models.at("b/mlp")[0].metrics["accuracy"], 0.999);
  EXPECT_EQ(state_.models.at("a/mlp")[0].validated_by.size(), 1u);
  EXPECT_EQ(SplitArtifactKey("b/mlp"), std::make_pair(std::string("b"), std::string("mlp")));
}

TEST_F(TenantTest, ModelVersionsNumberedWhenNamesWereGlobalReplayPerTenant) {
  // A history written before names were per tenant: tenant b's first version of
  // "mlp" was numbered 2, after a's. Replayed, it is b's version 1, and its
  // validation attaches to it.
  auto apply = [&](const std::string& stream, const std::string& type, Json data) {
    RecordedEvent e;
    e.position = state_.head + 1;
    e.stream = stream;
    e.type = type;
    e.data = std::move(data);
    e.time = now_;
    Status st = Evolve(state_, e);
    ASSERT_TRUE(st.ok()) << st.ToString();
  };
  Json def = *ParseJson(R"({"name":"w","steps":[{"name":"train","kind":"train","command":["t"]}]})");
  apply("workflow-w", "WorkflowRegistered",
        fields::Encode(ev::WorkflowRegistered{
            .name = "w", .version = 1, .definition = def, .tenant = "default"}));
  for (const char* t : {"a", "b"}) {
    std::string run = std::string("old-") + t;
    apply("run-" + run, "RunSubmitted",
          fields::Encode(ev::RunSubmitted{.run = run, .workflow = "w", .version = 1, .tenant = t}));
  }
  apply("run-old-a", "ModelVersionRegistered",
        fields::Encode(ev::ModelVersionRegistered{
            .name = "mlp", .version = 1, .digest = "d1", .step = "train", .attempt = 1}));
  apply("run-old-b", "ModelVersionRegistered",
        fields::Encode(ev::ModelVersionRegistered{
            .name = "mlp", .version = 2, .digest = "d2", .step = "train", .attempt = 1}));
  apply("run-old-b", "ModelVersionValidated",
        fields::Encode(ev::ModelVersionValidated{
            .name = "mlp", .version = 2, .step = "v", .metrics = Json{{"acc", 0.5}}}));
  ASSERT_EQ(state_.models.at("b/mlp").size(), 1u);
  EXPECT_EQ(state_.models.at("b/mlp")[0].digest, "d2");
  EXPECT_EQ(state_.models.at("b/mlp")[0].metrics["acc"], 0.5);
  EXPECT_EQ(state_.FindRun("old-b")->models.at("train").second, 1);
  EXPECT_TRUE(state_.models.at("a/mlp")[0].metrics.empty());
}

constexpr const char* kInputs = R"({"name":"ins","params":{"path":"/data/raw.csv"},"steps":[
    {"name":"prep","command":["p","{{params.path}}"],"inputs":["{{params.path}}"],
     "outputs":["out"],"cache":true},
    {"name":"use","after":["prep"],"command":["u","{{steps.prep.outputs.out}}"],
     "inputs":["{{steps.prep.outputs.out}}"],"cache":true}]})";

TEST_F(TenantTest, InputsOutsideWhatTheTenantMayReadAreRefusedAtSubmission) {
  StartContainer();
  Status st;
  // Outside the data dir's runs and every allowed root.
  SubmitAs("a", kInputs, Json{{"path", "/etc/shadow"}}, &st);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << st.ToString();
  ASSERT_FALSE(st.details().empty());
  EXPECT_NE(st.details()[0].find("steps.prep.inputs[0]"), std::string::npos) << st.details()[0];
  EXPECT_NE(st.details()[0].find("/etc/shadow"), std::string::npos);
  // Climbing out of an allowed root by "..".
  cfg_.tenant_input_roots["a"] = {"/data"};
  SubmitAs("a", kInputs, Json{{"path", "/data/../etc/shadow"}}, &st);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  // Another tenant's run.
  fake_.sha["/data/raw.csv"] = "raw";
  std::string b1 = SubmitAs("b", R"({"name":"bw","steps":[{"name":"s","command":["s"],
      "outputs":["secret"]}]})");
  Succeed(b1 + "/s/1", "secret", 3, "s3");
  std::string secret = OutputsDir(cfg_, b1, "s", 1) + "/secret";
  fake_.sha[secret] = "s3";
  SubmitAs("a", kInputs, Json{{"path", secret}}, &st);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("outside what tenant 'a' may read"), std::string::npos)
      << st.message();
  EXPECT_EQ(state_.runs.size(), 1u);  // b's only
  // Its own run's outputs, and an allowed root: accepted, and each opened beneath its root.
  std::string a1 = SubmitAs("a", kInputs, Json{{"path", "/data/raw.csv"}}, &st);
  ASSERT_TRUE(st.ok()) << st.ToString();
  EXPECT_EQ(fake_.roots["/data/raw.csv"], "/data");
  Succeed(a1 + "/prep/1", "out", 1, "o1");
  std::string out = OutputsDir(cfg_, a1, "prep", 1) + "/out";
  EXPECT_EQ(fake_.roots[out], WorkspaceDir(cfg_, a1));
  // The step reads them through read-only mounts.
  const RecordedEvent* q = Find(a1, "use", "JobQueued");
  ASSERT_NE(q, nullptr);
  EXPECT_EQ(q->data["mounts"],
            Json::array({Json{{"path", OutputsDir(cfg_, a1, "prep", 1)}, {"read_only", true}},
                         Json{{"path", out}, {"read_only", true}}}));
}

TEST_F(TenantTest, AStepWaitsForItsInputsDigestInsteadOfBlocking) {
  StartContainer();
  cfg_.tenant_input_roots["default"] = {"/data"};
  fake_.pending.insert("/data/raw.csv");
  std::string run = Submit(kCachedNoRunId);
  // Ready, but nothing queued while the digest is being computed.
  EXPECT_EQ(R(run).steps[0].phase, StepPhase::kQueued);
  EXPECT_TRUE(R(run).steps[0].attempts.empty());
  EXPECT_EQ(Find(run, "prep", "JobQueued"), nullptr);
  // Nothing changes until the engine says a digest is known.
  DoTick();
  EXPECT_TRUE(R(run).steps[0].attempts.empty());
  fake_.pending.clear();
  Processor p(&state_, DecideContext{now_, &cfg_, files_}, 1);
  p.Touch(run);
  p.Settle();
  all_.insert(all_.end(), p.recorded().begin(), p.recorded().end());
  const RecordedEvent* q = Find(run, "prep", "JobQueued");
  ASSERT_NE(q, nullptr);
  EXPECT_EQ(q->data["cache"]["inputs"]["/data/raw.csv"], "raw-v1");
  ASSERT_EQ(R(run).steps[0].attempts.size(), 1u);
}

TEST_F(TenantTest, TheSameIdempotencyKeyWithAnotherRequestIsRefused) {
  Status st;
  Do(RegisterWorkflow{*ParseJson(kLifecycle)}, &st);
  SubmitRun s;
  s.run_id = "k1";
  s.workflow = "life";
  s.idempotency_key = "key";
  s.request_digest = "digest-1";
  Do(s, &st);
  ASSERT_TRUE(st.ok()) << st.ToString();
  // The same request again: the first result.
  s.run_id = "k2";
  Do(s, &st);
  ASSERT_TRUE(st.ok()) << st.ToString();
  EXPECT_EQ(last_.id, "k1");
  EXPECT_FALSE(last_.created);
  // Another request with the key: refused, nothing written.
  uint64_t head = state_.head;
  s.request_digest = "digest-2";
  Do(s, &st);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  ASSERT_FALSE(st.details().empty());
  EXPECT_EQ(st.details()[0], kIdempotencyKeyReused);
  EXPECT_EQ(state_.head, head);
  // Workflows too.
  Json def = *ParseJson(kLifecycle);
  def["name"] = "keyed";
  RegisterWorkflow w{def, "me", "default", "wkey"};
  w.request_digest = "w1";
  Do(w, &st);
  ASSERT_TRUE(st.ok());
  ASSERT_EQ(state_.workflows.at("keyed").size(), 1u);
  def["params"]["threshold"] = 0.9;
  RegisterWorkflow w2{def, "me", "default", "wkey"};
  w2.request_digest = "w2";
  Do(w2, &st);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(st.details().at(0), kIdempotencyKeyReused);
  EXPECT_EQ(state_.workflows.at("keyed").size(), 1u);
}

TEST_F(TenantTest, AWorkflowOfMoreStepsThanApiMaxStepsIsRefusedUnparsed) {
  cfg_.max_steps = 3;
  Json def{{"name", "wide"}, {"steps", Json::array()}};
  for (int i = 0; i < 4; ++i) {
    def["steps"].push_back(Json{{"name", "s" + std::to_string(i)}, {"command", {"x"}}});
  }
  Status st;
  Do(RegisterWorkflow{def}, &st);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  ASSERT_EQ(st.details().size(), 1u);
  EXPECT_EQ(st.details()[0], "steps: has 4 steps, more than api.maxSteps (3)");
  def["steps"].erase(3);
  Do(RegisterWorkflow{def}, &st);
  EXPECT_TRUE(st.ok()) << st.ToString();
}

TEST_F(TenantTest, TheAgentsLogFiguresAreRecordedAndUnreadableOutputsFailTheAttempt) {
  StartContainer();
  std::string run = Submit();
  // Figures of the wrong type are never recorded: the report is refused at the edge
  // (the API answers 400 naming the field), so the decider never sees it.
  auto refused = ParseAttemptReports(Json::array({Json{{"attempt_id", run + "/prep/1"},
                                                       {"state", "succeeded"},
                                                       {"exit_code", 0},
                                                       {"log_bytes", "lots"}}}));
  EXPECT_EQ(refused.status().message(), "reports[0].log_bytes: must be a non-negative integer");
  PollContainer p;
  p.container = "c1";
  p.reports = Reports(Json::array(
      {Json{{"attempt_id", run + "/prep/1"}, {"state", "succeeded"}, {"exit_code", 0}}}));
  Status st;
  Do(p, &st);
  ASSERT_TRUE(st.ok()) << st.ToString();
  EXPECT_TRUE(R(run).steps[0].attempts[0].log.empty());
  EXPECT_EQ(R(run).steps[0].phase, StepPhase::kSucceeded);
  p.reports =
      Reports(Json::array({Json{{"attempt_id", run + "/train/1"},
                                {"state", "succeeded"},
                                {"exit_code", 0},
                                {"log_bytes", 1024},
                                {"log_dropped_bytes", 5000},
                                {"log_truncated", true},
                                {"outputs_error", "the outputs folder is not a folder of its own"},
                                {"metrics", Json{{"accuracy", 1.0}}}}}));
  Do(p, &st);
  ASSERT_TRUE(st.ok()) << st.ToString();
  const Attempt& a = R(run).steps[1].attempts[0];
  EXPECT_EQ(a.phase, AttemptPhase::kFailed);
  EXPECT_EQ(a.reason, "outputs_error: the outputs folder is not a folder of its own");
  EXPECT_EQ(a.log, (Json{{"bytes", 1024}, {"dropped_bytes", 5000}, {"truncated", true}}));
  EXPECT_TRUE(R(run).steps[1].metrics.empty());
  EXPECT_EQ(RunToJson(R(run), cfg_)["steps"][1]["attempts"][0]["log"]["truncated"], true);
}

// A poll's metrics batches, parsed as the API edge parses them.
std::vector<MetricsBatch> Batches(const Json& j) {
  auto r = ParseMetricsBatches(j);
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  return r.ok() ? *r : std::vector<MetricsBatch>{};
}

Json Points(int from, int n) {
  Json pts = Json::array();
  for (int i = from; i < from + n; ++i)
    pts.push_back(Json{{"step", i * 10}, {"loss", 1.0 / (i + 1)}});
  return pts;
}

// Each point is recorded once, in order: a resend records only what is new, a batch
// past a gap is answered with what the master has (the agent resends from there), and
// the series' cap drops the rest, counted, marking it truncated.
TEST_F(DeciderTest, LiveMetricsAreRecordedOnceInOrderUpToTheSeriesCap) {
  cfg_.metrics_max_points = 7;
  StartContainer();
  std::string run = Submit();
  std::string id = run + "/prep/1";
  auto poll = [&](int from, int n, int skipped = 0) {
    PollContainer p;
    p.container = "c1";
    p.metrics = Batches(Json::array({Json{
        {"attempt_id", id}, {"from", from}, {"points", Points(from, n)}, {"skipped", skipped}}}));
    Status st;
    auto evs = Do(p, &st);
    EXPECT_TRUE(st.ok()) << st.ToString();
    return evs;
  };
  auto evs = poll(0, 3);
  ASSERT_EQ(Types(evs), (std::vector<std::string>{"MetricsRecorded"}));
  EXPECT_EQ(evs[0].data["from"], 0);
  EXPECT_EQ(evs[0].data["points"].size(), 3u);
  EXPECT_EQ(evs[0].data["points"][2], (Json{{"step", 20}, {"loss", 1.0 / 3}}));
  EXPECT_EQ(last_.metrics_next.at(id), 3);
  // A resend of the same points and two more: only the two are recorded.
  evs = poll(0, 5, 2);
  ASSERT_EQ(Types(evs), (std::vector<std::string>{"MetricsRecorded"}));
  EXPECT_EQ(evs[0].data["from"], 3);
  EXPECT_EQ(evs[0].data["points"], Points(3, 2));
  EXPECT_EQ(evs[0].data["skipped"], 2);
  EXPECT_EQ(last_.metrics_next.at(id), 5);
  // A pure resend writes nothing; a batch after a gap writes nothing and says 5.
  EXPECT_TRUE(poll(0, 5, 2).empty());
  EXPECT_TRUE(poll(9, 2, 2).empty());
  EXPECT_EQ(last_.metrics_next.at(id), 5);
  // The cap (7 points): 2 of 4 are recorded, 2 dropped, and the series is truncated.
  evs = poll(5, 4, 2);
  ASSERT_EQ(Types(evs), (std::vector<std::string>{"MetricsRecorded"}));
  EXPECT_EQ(evs[0].data["points"], Points(5, 2));
  EXPECT_EQ(evs[0].data["dropped"], 2);
  EXPECT_EQ(evs[0].data["truncated"], true);
  EXPECT_EQ(evs[0].data["next"], 9);
  EXPECT_EQ(last_.metrics_next.at(id), 9);
  // Capped: later points are dropped and counted, none recorded.
  evs = poll(9, 1, 2);
  ASSERT_EQ(Types(evs), (std::vector<std::string>{"MetricsRecorded"}));
  EXPECT_TRUE(evs[0].data["points"].empty());
  EXPECT_EQ(evs[0].data["dropped"], 3);
  const MetricSeries& m = R(run).steps[0].attempts[0].series.at(0);
  EXPECT_EQ(m.points, 7);
  EXPECT_EQ(m.next, 10);  // dropped points are consumed: never resent
  EXPECT_TRUE(m.capped);
  EXPECT_EQ(m.dropped, 3);
  EXPECT_EQ(m.skipped, 2);
  EXPECT_TRUE(m.truncated);
  int64_t bytes = 0;
  for (const auto& p : Points(0, 7)) bytes += static_cast<int64_t>(p.dump().size());
  EXPECT_EQ(m.bytes, bytes);
  // The run's JSON shows the series' totals; a snapshot keeps them.
  Json live = RunToJson(R(run), cfg_)["steps"][0]["attempts"][0]["live_metrics"];
  EXPECT_EQ(live, Json::parse(R"([{"rank":0,"points":7,"bytes":)" + std::to_string(bytes) +
                              R"(,"skipped":2,"dropped":3,"truncated":true}])"));
  auto decoded = DecodeSnapshot(EncodeSnapshot(state_));
  ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
  EXPECT_EQ(RunToJson(*decoded->FindRun(run), cfg_), RunToJson(R(run), cfg_));
  // The series' points are in the log: the view reads them back in order.
  std::vector<Json> recorded;
  for (const auto& e : all_) {
    if (e.type == "MetricsRecorded") recorded.push_back(e.data);
  }
  Json view = MetricSeriesView(recorded, MetricsQuery{.name = "loss"});
  ASSERT_EQ(view["series"].size(), 1u);
  EXPECT_EQ(view["series"][0]["points"].size(), 7u);
  EXPECT_EQ(view["series"][0]["points"][6], Json::array({60, 1.0 / 7}));
  EXPECT_EQ(view["last"], (Json{{"loss", 1.0 / 7}}));
}

// The byte cap counts points as JSON, like the point cap.
TEST_F(DeciderTest, LiveMetricsStopAtTheSeriesByteCap) {
  StartContainer();
  std::string run = Submit();
  cfg_.metrics_max_bytes = static_cast<int64_t>(Points(0, 1)[0].dump().size()) * 2 + 1;
  PollContainer p;
  p.container = "c1";
  p.metrics = Batches(
      Json::array({Json{{"attempt_id", run + "/prep/1"}, {"from", 0}, {"points", Points(0, 5)}}}));
  auto evs = Do(p);
  ASSERT_EQ(Types(evs), (std::vector<std::string>{"MetricsRecorded"}));
  EXPECT_EQ(evs[0].data["points"].size(), 2u);
  EXPECT_EQ(evs[0].data["dropped"], 3);
  EXPECT_EQ(evs[0].data["truncated"], true);
}

// Metrics of an attempt placed elsewhere (or of none) refuse the whole poll.
TEST_F(DeciderTest, ABatchForAnotherContainersAttemptRefusesThePoll) {
  StartContainer();
  std::string run = Submit();
  PollContainer p;
  p.container = "c1";
  p.metrics = Batches(Json::array({Json{{"attempt_id", run + "/train/1"}, {"from", 0}}}));
  Status st;
  EXPECT_TRUE(Do(p, &st).empty());
  EXPECT_EQ(st.code(), StatusCode::kPermissionDenied) << st.ToString();
  EXPECT_NE(st.message().find("train/1"), std::string::npos);
}

// A declared checkpoint is recorded once; the step's next attempt starts from the
// latest, and its record says so.
TEST_F(DeciderTest, ARetriedAttemptResumesFromTheLatestCheckpoint) {
  StartContainer();
  std::string run = Submit();
  Report(run + "/prep/1", "succeeded");
  std::string sha(64, 'a');
  auto checkpoint = [&](const std::string& file, int epoch) {
    PollContainer p;
    p.container = "c1";
    p.metrics = Batches(Json::array({Json{
        {"attempt_id", run + "/train/1"},
        {"from", 0},
        {"checkpoints",
         Json::array({Json{{"file", file}, {"sha256", sha}, {"size", 10}, {"epoch", epoch}}})}}}));
    Status st;
    auto evs = Do(p, &st);
    EXPECT_TRUE(st.ok()) << st.ToString();
    return evs;
  };
  auto evs = checkpoint("epoch-1.pt", 1);
  ASSERT_EQ(Types(evs), (std::vector<std::string>{"CheckpointSaved"}));
  EXPECT_EQ(evs[0].data["file"], "epoch-1.pt");
  EXPECT_TRUE(checkpoint("epoch-1.pt", 1).empty());  // the same one again: nothing new
  sha = std::string(64, 'b');
  EXPECT_EQ(Types(checkpoint("epoch-2.pt", 2)), (std::vector<std::string>{"CheckpointSaved"}));
  Json latest = R(run).steps[1].checkpoints.at(-1);
  EXPECT_EQ(latest["file"], "epoch-2.pt");
  EXPECT_EQ(latest["epoch"], 2);
  EXPECT_EQ(latest["attempt"], 1);
  evs = Report(run + "/train/1", "failed", Json::object(), 1);
  ASSERT_EQ(Types(evs).back(), "JobRetryScheduled");
  now_ += std::chrono::seconds(2);
  evs = DoTick();
  ASSERT_EQ(Types(evs), (std::vector<std::string>{"JobQueued", "JobAssigned"}));
  EXPECT_EQ(evs[1].data["checkpoint"]["file"], "epoch-2.pt");
  const Attempt& second = R(run).steps[1].attempts[1];
  EXPECT_EQ(second.resumed_from["file"], "epoch-2.pt");
  EXPECT_EQ(second.resumed_from["sha256"], sha);
  Json j = RunToJson(R(run), cfg_)["steps"][1];
  EXPECT_EQ(j["attempts"][1]["resumed_from"]["epoch"], 2);
  EXPECT_EQ(j["checkpoints"]["step"]["file"], "epoch-2.pt");
  EXPECT_FALSE(j["attempts"][0].contains("resumed_from"));
}

}  // namespace
}  // namespace epoch::engine
