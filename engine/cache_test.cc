// The step cache through the Processor: keys from params and input digests, hits that
// read the source's outputs, age and invalidation, tenants' separate caches, and the
// inputs a tenant may read.
#include <gtest/gtest.h>

#include <string>

#include "engine/decider_test_util.h"
#include "engine/snapshot.h"
#include "engine/views.h"

namespace epoch::engine {
namespace {

using test_util::CacheTest;
using test_util::kCached;
using test_util::TenantTest;

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
  EXPECT_EQ(state_.datasets.at("default/ds").count, 1);
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
  EXPECT_EQ(state_.models.at("default/m2").count, 1);  // the same model version
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

// Past cache.maxEntries the tick evicts the least recently used entries, recording
// why; a hit counts as a use, and a replay of the events holds the same entries.
TEST_F(CacheTest, PastMaxEntriesTheLeastRecentlyUsedAreEvictedAsEvents) {
  cfg_.cache_max_entries = 2;
  StartContainer();
  std::string r1 = Submit(kCachedNoRunId);  // prep and train entries
  Succeed(r1 + "/prep/1", "shard", 10, "shard-v1");
  Succeed(r1 + "/train/1", "model", 20, "model-v1");
  std::string prep_key = Find(r1, "prep", "JobQueued")->data["cache"]["key"];
  std::string train_key = Find(r1, "train", "JobQueued")->data["cache"]["key"];
  EXPECT_TRUE(DoTick().empty()) << "at the cap, nothing goes";

  // Later, r2 hits prep's entry (a use) and trains with another lr: a third entry.
  now_ += std::chrono::minutes(5);
  Json other = Json::parse(kCachedNoRunId);  // another workflow, another lr
  other["name"] = "cached3";
  other["params"]["lr"] = 0.2;
  std::string r2 = Submit(other.dump().c_str());
  ASSERT_NE(Find(r2, "prep", "JobCacheHit"), nullptr);
  EXPECT_EQ(state_.cache.at(prep_key).last_hit_at, now_);
  now_ += std::chrono::minutes(1);
  Succeed(r2 + "/train/1", "model", 30, "model-v2");
  ASSERT_EQ(state_.cache.size(), 3u);
  std::string train2_key = Find(r2, "train", "JobQueued")->data["cache"]["key"];

  // r1's train entry is the least recently used (created first, never hit).
  auto evs = DoTick();
  ASSERT_EQ(Types(evs), std::vector<std::string>{"CacheInvalidated"});
  EXPECT_EQ(evs[0].stream, "cache");
  EXPECT_EQ(evs[0].data["keys"], Json::array({train_key}));
  EXPECT_EQ(evs[0].data["by"], "cache.maxEntries");
  EXPECT_EQ(evs[0].data["tenant"], "default");
  EXPECT_EQ(evs[0].data["reason"],
            "evicted: the step cache held 3 entries, more than cache.maxEntries (2); these were "
            "used least recently");
  ASSERT_EQ(state_.cache.size(), 2u);
  EXPECT_EQ(state_.cache.count(prep_key), 1u) << "its hit kept it";
  EXPECT_EQ(state_.cache.count(train2_key), 1u);
  EXPECT_TRUE(DoTick().empty());
  Json listed = CacheEntries(state_, nullptr, "", "prep");
  ASSERT_EQ(listed.size(), 1u);
  EXPECT_EQ(listed[0]["last_hit_at"], FormatTime(state_.cache.at(prep_key).last_hit_at));

  // A run of r1's params now misses train (evicted), and the snapshot and a replay of
  // the events hold the same entries, last hits included.
  std::string r3 = Submit(kCachedNoRunId);
  const RecordedEvent* q3 = Find(r3, "train", "JobQueued");
  ASSERT_NE(q3, nullptr);
  EXPECT_EQ(q3->data["cache"]["miss"], "no entry");
  auto decoded = DecodeSnapshot(EncodeSnapshot(state_));
  ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
  EXPECT_EQ(decoded->cache.at(prep_key).last_hit_at, state_.cache.at(prep_key).last_hit_at);
  State replay;
  for (const auto& e : all_) ASSERT_TRUE(Evolve(replay, e).ok()) << e.type << " at " << e.position;
  ASSERT_EQ(replay.cache.size(), state_.cache.size());
  for (const auto& [k, e] : state_.cache) {
    ASSERT_EQ(replay.cache.count(k), 1u);
    EXPECT_EQ(replay.cache.at(k).last_hit_at, e.last_hit_at);
  }
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

}  // namespace
}  // namespace epoch::engine
