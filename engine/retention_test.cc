// Retention (retention.h) with a real RocksDB store, real files in a temp data dir and
// a ManualClock: what expires when, what stays (a data set's files, another tenant's
// horizon), what the events and the run say, a cache hit that becomes a miss with the
// reason, a retry refused, files an earlier pass recorded but left, and the counts
// per tenant across a restart from a snapshot.
#include "engine/retention.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>

#include "common/sha256.h"
#include "engine/engine.h"
#include "engine/event_types.h"

namespace epoch::engine {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

class NoBackend : public ContainerBackend {
 public:
  std::string Name() const override { return "none"; }
  Result<std::string> Launch(const ContainerSpec& spec) override { return "h-" + spec.id; }
  Status Terminate(const std::string&, const std::string&) override { return Status::Ok(); }
  Result<ContainerDescription> Describe(const std::string&, const std::string&) override {
    return ContainerDescription{ContainerDescription::State::kRunning, "ok", ""};
  }
};

const TimePoint kT0 = TimePoint{} + std::chrono::hours(24 * 365 * 56);

class RetentionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/epoch-retention-test.XXXXXX";
    dir_ = mkdtemp(tmpl);
    auto s = storage::OpenRocksDbEventStore({dir_ + "/store", true});
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    store_ = std::move(*s);
  }
  void TearDown() override {
    engine_.reset();
    store_.reset();
    fs::remove_all(dir_);
  }
  EngineOptions Options() {
    EngineOptions o;
    o.config.data_dir = dir_;
    o.config.max_replicas = 1;
    o.config.min_replicas = 1;
    o.config.lease = 1000h;  // the clock jumps hours: c1 must not be lost meanwhile
    o.config.retention_outputs = 1h;
    o.config.retention_logs = 2h;
    o.config.tenant_retention_outputs["keep"] = Micros{0};  // for ever
    o.archive_runs = true;
    o.advertise_url = "http://127.0.0.1:1";
    return o;
  }
  void Start() {
    engine_ = std::make_unique<Engine>(Options(), store_.get(), &backend_, &clock_);
    ASSERT_TRUE(engine_->Start().ok());
    // sig.minReplicas = 1: the pool asks for c1 on its first tick.
    ASSERT_TRUE(engine_->AwaitTick(clock_.Now()));
    ASSERT_TRUE(engine_->Read([](const State& s) { return s.containers.count("c1") > 0; }));
  }
  void Ok(Command c) {
    auto r = engine_->Execute(std::move(c));
    ASSERT_TRUE(r.ok()) << r.status().ToString();
  }
  // A file of `size` bytes; returns its entry for a report.
  Json Write(const std::string& path, size_t size) {
    fs::create_directories(fs::path(path).parent_path());
    std::string body(size, 'x');
    std::ofstream(path) << body;
    return Json{
        {"name", fs::path(path).filename().string()}, {"size", size}, {"sha256", Sha256Hex(body)}};
  }
  std::string AttemptDir(const std::string& run, const std::string& step, int n) {
    return dir_ + "/runs/" + run + "/" + step + "/" + std::to_string(n);
  }
  std::string Log(const std::string& run, const std::string& step, int n) {
    return dir_ + "/logs/" + run + "/" + step + "/" + std::to_string(n) + ".log";
  }
  // The attempt ran: its outputs (name -> size) and a log of `log` bytes are on disk,
  // and it reports `state` with them.
  void Finish(const std::string& run, const std::string& step, int n,
              std::map<std::string, size_t> outputs, size_t log, const std::string& state) {
    Json outs = Json::array();
    for (const auto& [name, size] : outputs) {
      outs.push_back(Write(AttemptDir(run, step, n) + "/outputs/" + name, size));
    }
    Write(AttemptDir(run, step, n) + "/metrics.ndjson", 10);
    Write(Log(run, step, n), log);
    PollContainer p;
    p.container = "c1";
    auto reports =
        ParseAttemptReports(Json::array({Json{{"attempt_id", AttemptId(run, step, n)},
                                              {"state", state},
                                              {"exit_code", state == "succeeded" ? 0 : 1},
                                              {"outputs", outs},
                                              {"log", {{"bytes", log}, {"truncated", false}}}}}));
    ASSERT_TRUE(reports.ok()) << reports.status().ToString();
    p.reports = *reports;
    Ok(p);
  }
  std::vector<Json> Events(const std::string& run, std::string_view type) {
    auto evs = store_->ReadStream("run-" + run, 1, 10000);
    EXPECT_TRUE(evs.ok());
    std::vector<Json> out;
    for (const auto& e : *evs) {
      if (e.type == type) out.push_back(*ParseJson(e.data));
    }
    return out;
  }
  Json RunOf(const std::string& id) {
    return engine_->ReadRun(id, [&](const State& s, const engine::Run* run) {
      return run ? RunToJson(*run, engine_->options().config, &s) : Json();
    });
  }
  static Json AttemptOf(const Json& run, const std::string& step, int n) {
    for (const auto& s : run["steps"]) {
      if (s["name"] == step) return s["attempts"][n - 1];
    }
    return Json();
  }
  static Json StepOf(const Json& run, const std::string& step) {
    for (const auto& s : run["steps"]) {
      if (s["name"] == step) return s;
    }
    return Json();
  }

  std::string dir_;
  std::unique_ptr<storage::EventStore> store_;
  NoBackend backend_;
  ManualClock clock_{kT0};
  std::unique_ptr<Engine> engine_;
};

TEST_F(RetentionTest, FilesPastTheHorizonGoOnceTheEventIsDurable) {
  Start();
  Ok(RegisterContainer{.container = "c1", .cpu_millis = 8000, .memory_bytes = 16LL << 30});
  Ok(RegisterWorkflow{*ParseJson(R"({"name":"w","steps":[
      {"name":"prep","kind":"data_prep","cache":true,"outputs":["rows.txt"],
       "dataset":{"name":"rows"},
       "command":["true"]},
      {"name":"train","after":["prep"],"cache":true,"outputs":["model.txt"],"command":["true"]}]})"),
                      "alice"});
  Ok(RegisterWorkflow{*ParseJson(R"({"name":"x","steps":[
      {"name":"a","outputs":["a.txt"],"command":["true"]},
      {"name":"b","after":["a"],"command":["false"]}]})"),
                      "alice"});
  Ok(RegisterWorkflow{*ParseJson(R"({"name":"v","steps":[
      {"name":"a","outputs":["a.txt"],"command":["true"]}]})"),
                      "kim", "keep"});
  Ok(SubmitRun{.run_id = "r1", .workflow = "w"});
  Finish("r1", "prep", 1, {{"rows.txt", 6}}, 100, "succeeded");
  Write(dir_ + "/runs/r1/train/checkpoints/ckpt.pt", 1000);  // the step's checkpoints
  Finish("r1", "train", 1, {{"model.txt", 50}}, 200, "succeeded");
  Ok(SubmitRun{.run_id = "x1", .workflow = "x"});
  Finish("x1", "a", 1, {{"a.txt", 7}}, 30, "succeeded");
  Finish("x1", "b", 1, {}, 40, "failed");
  Ok(SubmitRun{.run_id = "k1", .workflow = "v", .tenant = "keep"});
  Finish("k1", "a", 1, {{"a.txt", 8}}, 50, "succeeded");
  ASSERT_EQ(RunOf("r1")["state"], "succeeded");
  ASSERT_EQ(RunOf("x1")["state"], "failed");
  ASSERT_EQ(RunOf("k1")["state"], "succeeded");

  // Within the horizon nothing goes, and a command that asks is refused.
  RetentionSweeper sweeper(engine_.get());
  clock_.Set(kT0 + 30min);
  SweepReport early = sweeper.SweepOnce();
  EXPECT_EQ(early.runs, 3u);
  EXPECT_EQ(early.outputs_expired + early.logs_expired + early.bytes_deleted, 0u);
  EXPECT_TRUE(early.errors.empty()) << early.errors[0];
  auto refused = engine_->Execute(ExpireFiles{.run_id = "r1", .files = {{"train", 1, 61}}});
  ASSERT_EQ(refused.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(refused.status().message().find("within retention.outputs (1h)"), std::string::npos)
      << refused.status().message();
  EXPECT_TRUE(fs::exists(AttemptDir("r1", "train", 1)));

  // Past retention.outputs (1h): attempt folders and checkpoints go, except what a
  // data set was registered from, and the tenant that keeps its outputs for ever.
  clock_.Set(kT0 + 61min);
  SweepReport out = sweeper.SweepOnce();
  EXPECT_TRUE(out.errors.empty()) << out.errors[0];
  EXPECT_EQ(out.outputs_expired, 4u);  // r1 train/1 and its checkpoints, x1 a/1 and b/1
  EXPECT_EQ(out.logs_expired, 0u);
  // model.txt 50 + metrics 10; the checkpoint 1000; a.txt 7 + 10; b's metrics 10.
  EXPECT_EQ(out.bytes_deleted, 60 + 1000 + 17 + 10);
  EXPECT_FALSE(fs::exists(AttemptDir("r1", "train", 1)));
  EXPECT_FALSE(fs::exists(dir_ + "/runs/r1/train"));  // emptied, then pruned
  EXPECT_TRUE(fs::exists(AttemptDir("r1", "prep", 1) + "/outputs/rows.txt"));
  EXPECT_FALSE(fs::exists(dir_ + "/runs/x1"));
  EXPECT_TRUE(fs::exists(AttemptDir("k1", "a", 1) + "/outputs/a.txt"));
  EXPECT_TRUE(fs::exists(Log("r1", "train", 1))) << "logs keep their own horizon";

  auto expired = Events("r1", ev::kOutputsExpired);
  ASSERT_EQ(expired.size(), 1u);
  EXPECT_EQ(expired[0]["bytes"], 1060);
  EXPECT_EQ(expired[0]["horizon"], "1h");
  EXPECT_EQ(expired[0]["files"], Json::parse(R"([{"step":"train","attempt":1,"bytes":60},
                                                  {"step":"train","attempt":0,"bytes":1000}])"));
  EXPECT_TRUE(Events("k1", ev::kOutputsExpired).empty());
  Json r1 = RunOf("r1");
  EXPECT_EQ(AttemptOf(r1, "train", 1)["outputs_expired"],
            (Json{{"at", FormatTime(kT0 + 61min)}, {"bytes", 60}}));
  EXPECT_EQ(StepOf(r1, "train")["checkpoints_expired"]["bytes"], 1000);
  EXPECT_FALSE(StepOf(r1, "train").contains("checkpoints"));
  EXPECT_FALSE(AttemptOf(r1, "prep", 1).contains("outputs_expired")) << "data set rows v1 keeps it";
  EXPECT_EQ(r1["state"], "succeeded") << "the run's record stays whole";

  // A retry that would reuse an expired step's outputs is refused, naming it.
  auto retry = engine_->Execute(RetryRun{"x1", "bob"});
  ASSERT_EQ(retry.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(retry.status().message().find("outputs of step 'a' of run 'x1' expired on"),
            std::string::npos)
      << retry.status().message();

  // The cache: prep's entry still hits (its files are kept); train's misses, saying why.
  Ok(SubmitRun{.run_id = "r2", .workflow = "w"});
  auto hits = Events("r2", ev::kJobCacheHit);
  ASSERT_EQ(hits.size(), 1u);
  EXPECT_EQ(hits[0]["source_run"], "r1");
  auto queued = Events("r2", ev::kJobQueued);
  ASSERT_EQ(queued.size(), 1u);
  EXPECT_EQ(queued[0]["step"], "train");
  EXPECT_EQ(queued[0]["cache"]["miss"],
            "outputs of r1/train/1 expired on " + FormatTime(kT0 + 61min) + " (retention.outputs)");

  // Files an earlier pass recorded but did not delete (its master died in between) go
  // on the next pass, with no second event.
  Write(AttemptDir("r1", "train", 1) + "/outputs/model.txt", 50);
  SweepReport again = sweeper.SweepOnce();
  EXPECT_EQ(again.deleted_again, 1u);
  EXPECT_EQ(again.outputs_expired, 0u);
  EXPECT_EQ(again.bytes_deleted, 50);
  EXPECT_FALSE(fs::exists(AttemptDir("r1", "train", 1)));
  EXPECT_EQ(Events("r1", ev::kOutputsExpired).size(), 1u);

  // Past retention.logs (2h): the logs of every finished run go; r2 is still running.
  Finish("r2", "train", 1, {{"model.txt", 50}}, 20, "succeeded");
  clock_.Set(kT0 + 120min);
  SweepReport logs = sweeper.SweepOnce();
  EXPECT_TRUE(logs.errors.empty()) << logs.errors[0];
  EXPECT_EQ(logs.logs_expired, 5u);  // r1 prep/1, train/1; x1 a/1, b/1; k1 a/1
  EXPECT_EQ(logs.outputs_expired, 0u) << "r2 ended within the hour";
  EXPECT_FALSE(fs::exists(dir_ + "/logs/r1"));
  EXPECT_FALSE(fs::exists(dir_ + "/logs/k1"));
  EXPECT_TRUE(fs::exists(Log("r2", "train", 1)));
  auto log_events = Events("k1", ev::kLogsExpired);
  ASSERT_EQ(log_events.size(), 1u);
  EXPECT_EQ(log_events[0]["files"], Json::parse(R"([{"step":"a","attempt":1,"bytes":50}])"));
  EXPECT_EQ(AttemptOf(RunOf("r1"), "train", 1)["log_expired"]["bytes"], 200);

  // Per tenant: what is on disk now, and what retention deleted.
  Json usage = UsageJson(*engine_, [](const std::string&) { return true; });
  const Json& d = usage["tenants"]["default"];
  EXPECT_EQ(d["expired"]["outputs_bytes"], 1060 + 27);
  EXPECT_EQ(d["expired"]["logs_bytes"], 100 + 200 + 30 + 40);
  EXPECT_EQ(d["expired"]["outputs_events"], 2);
  EXPECT_EQ(d["outputs_bytes"], 6 + 10 + 50 + 10) << "r1 prep/1 and r2 train/1 are on disk";
  EXPECT_EQ(d["logs_bytes"], 20);
  EXPECT_EQ(d["runs"], 2);
  EXPECT_EQ(d["retention"], (Json{{"outputs", "1h"}, {"logs", "2h"}}));
  const Json& k = usage["tenants"]["keep"];
  EXPECT_EQ(k["outputs_bytes"], 18);
  EXPECT_EQ(k["expired"]["logs_bytes"], 50);
  EXPECT_EQ(k["retention"]["outputs"], "0s");
  Json mine = UsageJson(*engine_, [](const std::string& t) { return t == "keep"; });
  EXPECT_EQ(mine["tenants"].size(), 1u) << mine.dump();

  // A restart from a snapshot reads the same.
  Json before = RunOf("r1");
  auto counts = engine_->Read([](const State& s) { return s.expired; });
  ASSERT_TRUE(engine_->WriteSnapshot().ok());
  engine_->Stop();
  Start();
  EXPECT_GT(engine_->LoadedFrom().first, 0u);
  EXPECT_EQ(RunOf("r1"), before);
  auto after = engine_->Read([](const State& s) { return s.expired; });
  ASSERT_EQ(after.size(), counts.size());
  EXPECT_EQ(after["default"].outputs_bytes, counts["default"].outputs_bytes);
  EXPECT_EQ(after["keep"].logs_events, 1u);
}

// A step can replace its own step folder with a link into another tenant's run. The
// sweeper measures and deletes beneath the data dir following no link, so what lies
// behind the link is neither counted nor deleted; the run's other files still go.
TEST_F(RetentionTest, AStepFolderSwappedForALinkKeepsWhatItPointsAt) {
  Start();
  Ok(RegisterContainer{.container = "c1", .cpu_millis = 8000, .memory_bytes = 16LL << 30});
  Ok(RegisterWorkflow{*ParseJson(R"({"name":"x","steps":[
      {"name":"a","outputs":["a.txt"],"command":["true"]},
      {"name":"b","after":["a"],"outputs":["b.txt"],"command":["true"]}]})"),
                      "alice"});
  Ok(RegisterWorkflow{*ParseJson(R"({"name":"v","steps":[
      {"name":"a","outputs":["a.txt"],"command":["true"]}]})"),
                      "kim", "keep"});
  Ok(SubmitRun{.run_id = "k1", .workflow = "v", .tenant = "keep"});
  Finish("k1", "a", 1, {{"a.txt", 8}}, 50, "succeeded");
  Ok(SubmitRun{.run_id = "x1", .workflow = "x"});
  Finish("x1", "a", 1, {{"a.txt", 7}}, 30, "succeeded");
  Finish("x1", "b", 1, {{"b.txt", 9}}, 30, "succeeded");
  ASSERT_EQ(RunOf("x1")["state"], "succeeded");
  // x1's step b now points at k1's step a (as a step that ran `ln -s` would leave it),
  // and a/1's outputs hold a link to k1's file.
  fs::remove_all(dir_ + "/runs/x1/b");
  fs::create_symlink(dir_ + "/runs/k1/a", dir_ + "/runs/x1/b");
  fs::create_symlink(AttemptDir("k1", "a", 1) + "/outputs/a.txt",
                     AttemptDir("x1", "a", 1) + "/outputs/stolen.txt");

  RetentionSweeper sweeper(engine_.get());
  clock_.Set(kT0 + 61min);
  SweepReport out = sweeper.SweepOnce();
  EXPECT_TRUE(out.errors.empty()) << out.errors[0];
  EXPECT_EQ(out.outputs_expired, 1u) << "x1 a/1; b/1 is behind a link, so not there";
  EXPECT_EQ(out.bytes_deleted, 7 + 10) << "a.txt and metrics; the link inside counts nothing";
  auto expired = Events("x1", ev::kOutputsExpired);
  ASSERT_EQ(expired.size(), 1u);
  EXPECT_EQ(expired[0]["files"], Json::parse(R"([{"step":"a","attempt":1,"bytes":17}])"));
  EXPECT_FALSE(fs::exists(AttemptDir("x1", "a", 1)));
  EXPECT_TRUE(fs::is_symlink(dir_ + "/runs/x1/b"));
  EXPECT_TRUE(fs::exists(AttemptDir("k1", "a", 1) + "/outputs/a.txt"));
  EXPECT_TRUE(fs::exists(AttemptDir("k1", "a", 1) + "/metrics.ndjson"));
  EXPECT_EQ(fs::file_size(AttemptDir("k1", "a", 1) + "/outputs/a.txt"), 8u);
  // Usage counts x1's folder as what it holds itself: nothing behind the link.
  Json usage = UsageJson(*engine_, [](const std::string&) { return true; });
  EXPECT_EQ(usage["tenants"]["default"]["outputs_bytes"], 0);
  EXPECT_EQ(usage["tenants"]["keep"]["outputs_bytes"], 18);
  // The next pass finds nothing more and reports no error.
  SweepReport again = sweeper.SweepOnce();
  EXPECT_TRUE(again.errors.empty()) << again.errors[0];
  EXPECT_EQ(again.outputs_expired + again.deleted_again + again.bytes_deleted, 0u);
}

TEST(RetentionHorizonTest, TenantsOverrideTheDefault) {
  EngineConfig c;
  EXPECT_FALSE(RetentionConfigured(c));
  c.tenant_retention_logs["a"] = std::chrono::hours(1);
  EXPECT_TRUE(RetentionConfigured(c));
  c.retention_outputs = std::chrono::hours(24);
  c.tenant_retention_outputs["keep"] = Micros{0};
  EXPECT_EQ(OutputsRetention(c, "b"), std::chrono::hours(24));
  EXPECT_EQ(OutputsRetention(c, "keep"), Micros{0});
  EXPECT_EQ(LogsRetention(c, "a"), std::chrono::hours(1));
  EXPECT_EQ(LogsRetention(c, "b"), Micros{0});
}

TEST(RetentionKeepTest, ModelsDataSetsAndOpenRunsKeepAFolder) {
  EngineConfig c;
  c.data_dir = "/d";
  State s;
  engine::Run old;
  old.id = "old";
  ArtifactVersion v;
  v.version = 2;
  v.run = "new";
  v.step = "train";
  v.attempt = 1;
  v.files_at = "old/train/3";  // a cache hit of old's attempt 3
  s.models["t/mlp"].versions.push_back(ArtifactVersion{.version = 1});
  s.models["t/mlp"].versions.push_back(v);
  s.models["t/mlp"].count = 2;
  EXPECT_EQ(OutputsKeptBecause(s, c, old, "train", 3), "model mlp v2");
  EXPECT_EQ(OutputsKeptBecause(s, c, old, "train", 2), "");
  engine::Run open;
  open.id = "o";
  open.phase = RunPhase::kRunning;
  StepRun st;
  st.name = "s";
  Attempt a;
  a.cached_from = "old/prep/1";
  a.mounts = Json::array({Json{{"path", "/d/runs/old/eval/2/outputs/x.bin"}, {"read_only", true}}});
  st.attempts.push_back(a);
  open.steps.push_back(st);
  s.runs["o"] = open;
  EXPECT_EQ(OutputsKeptBecause(s, c, old, "prep", 1), "run o reuses it");
  EXPECT_EQ(OutputsKeptBecause(s, c, old, "eval", 2), "run o mounts it");
  s.runs["o"].phase = RunPhase::kSucceeded;
  EXPECT_EQ(OutputsKeptBecause(s, c, old, "prep", 1), "") << "a finished run keeps nothing";
}

}  // namespace
}  // namespace epoch::engine
