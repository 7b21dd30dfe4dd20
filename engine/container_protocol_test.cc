// The container protocol through the Processor: reports and what they may claim, the
// agent's credential and log figures, gang workers, live metrics and checkpoints.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "engine/decider_test_util.h"
#include "engine/snapshot.h"

namespace epoch::engine {
namespace {

using test_util::DeciderTest;
using test_util::Reports;
using test_util::ScalingTest;
using test_util::TenantTest;

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

TEST_F(DeciderTest, DuplicateReportsAreNoOps) {
  StartContainer();
  std::string run = Submit();
  Report(run + "/prep/1", "succeeded");
  auto evs = Report(run + "/prep/1", "succeeded");
  EXPECT_TRUE(evs.empty());
  EXPECT_EQ(last_.ack, std::vector<std::string>{run + "/prep/1"});
}

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
        "resources":{"gpus":1,"cpu":"100m"},"retry":{"limit":1,"initial":"1s"}}]})",
           1);
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
                {"state", state},
                {"exit_code", state == "succeeded" ? 0 : 1}};
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
  EXPECT_EQ(s_.containers["c3"].attempts.count("ddp0/t/1/" + std::to_string([&] {
                                                 for (const auto& w : a.ranks)
                                                   if (w.container == "c3") return w.rank;
                                                 return -1;
                                               }())),
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
      "outputs":["model.pt"],"resources":{"gpus":1,"cpu":"100m"}}]})",
         1);
  const Attempt* a = s_.runs["ddp20"].steps[0].Last();
  ASSERT_NE(a, nullptr);
  ASSERT_EQ(a->ranks.size(), 2u);
  auto rep = [](int rank) {
    return Json{{"attempt_id", "ddp20/t/1/" + std::to_string(rank)},
                {"state", "succeeded"},
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
  EXPECT_EQ(Count(Report(where[0], Json::array({R(0, "cancelled")})), ev::kJobWorkerFinished), 1);
  Report(where[2], Json::array({R(2, "cancelled")}));
  EXPECT_EQ(A().phase, AttemptPhase::kAssigned);  // the whole gang again
  EXPECT_EQ(A().ranks.size(), 3u);
  EXPECT_EQ(s_.runs["ddp0"].steps[0].attempts[0].ranks[0].phase, AttemptPhase::kCancelled);
  // A report sent again (its answer lost to a master that died) records nothing more.
  EXPECT_EQ(Count(Report(where[0], Json::array({R(0, "cancelled")})), ev::kJobWorkerFinished), 0);
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
