// Snapshots: round trips of replayed and decided States, evolving on after a
// decode, and refusal of damaged bytes.
#include "engine/snapshot.h"
#include "engine/event_types.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <random>

#include "engine/decider.h"
#include "engine/engine.h"
#include "engine/processor.h"

namespace epoch::engine {
namespace {

std::vector<RecordedEvent> ReadHistory(const std::string& name) {
  std::ifstream in(std::string(EPOCH_SOURCE_DIR) + "/tests/golden/" + name + ".ndjson");
  EXPECT_TRUE(in.good()) << name;
  std::vector<RecordedEvent> events;
  std::string line;
  while (std::getline(in, line)) {
    auto j = ParseJson(line);
    EXPECT_TRUE(j.ok()) << line;
    if (!j.ok()) continue;
    RecordedEvent e;
    e.position = (*j)["position"];
    e.stream = (*j)["stream"];
    e.type = (*j)["type"];
    e.data = (*j)["data"];
    e.actor = (*j)["actor"];
    e.epoch = (*j)["epoch"];
    e.time = *ParseTime((*j)["time"].get<std::string>());
    e.schema = j->value("schema", 1u);  // as written: Evolve upcasts it
    events.push_back(std::move(e));
  }
  return events;
}

State Replay(const std::vector<RecordedEvent>& events, size_t from, size_t to, State s = {}) {
  for (size_t i = from; i < to; ++i) {
    Status st = Evolve(s, events[i]);
    EXPECT_TRUE(st.ok()) << st.ToString();
  }
  return s;
}

// Encodes, decodes and re-encodes `s`; the decoded State must give the same bytes
// and (unless its times are beyond what FormatTime prints) the same readable projection.
State RoundTrip(const State& s, bool compare_digest = true) {
  std::string bytes = EncodeSnapshot(s);
  auto decoded = DecodeSnapshot(bytes);
  EXPECT_TRUE(decoded.ok()) << decoded.status().ToString();
  if (!decoded.ok()) return State{};
  EXPECT_EQ(EncodeSnapshot(*decoded), bytes);
  if (compare_digest) {
    EXPECT_EQ(StateDigestJson(*decoded), StateDigestJson(s));
  }
  return std::move(decoded).value();
}

// The header's fields at their documented offsets, for tests that damage the body
// and then make the header agree again.
void SetBodyHeader(std::string& bytes) {
  std::string_view body = std::string_view(bytes).substr(kSnapshotHeaderSize);
  uint32_t crc = SnapshotCrc(body);
  uint64_t size = body.size();
  for (int i = 0; i < 4; ++i) bytes[12 + i] = static_cast<char>(crc >> (8 * i));
  for (int i = 0; i < 8; ++i) bytes[16 + i] = static_cast<char>(size >> (8 * i));
}

// Lost and released containers past kEndedContainersKept leave the state, oldest
// first (their story stays in the log); the live ones and the newest ended stay, and a
// snapshot keeps exactly that.
TEST(SnapshotTest, EndedContainersPastTheCapLeaveTheState) {
  State s;
  uint64_t pos = 0;
  auto apply = [&](auto payload, const std::string& id, int64_t second) {
    RecordedEvent e;
    e.position = ++pos;
    e.stream = ContainerStream(id);
    e.type = std::string(decltype(payload)::kType);
    e.data = fields::Encode(payload);
    e.time = TimePoint{} + std::chrono::seconds(1000000 + second);
    Status st = Evolve(s, e);
    ASSERT_TRUE(st.ok()) << st.ToString();
  };
  const int n = static_cast<int>(kEndedContainersKept) + 2;
  for (int i = 1; i <= n + 1; ++i) {
    std::string id = "c" + std::to_string(i);
    apply(ev::ContainerRequested{.container = id, .backend = "local", .reason = "demand"}, id, i);
  }
  for (int i = 1; i <= n; ++i) {  // c<n+1> stays requested
    std::string id = "c" + std::to_string(i);
    apply(ev::ContainerReleased{.container = id, .reason = "idle"}, id, n + i);
  }
  EXPECT_EQ(s.ended_containers.size(), kEndedContainersKept);
  EXPECT_EQ(s.containers.size(), kEndedContainersKept + 1);
  EXPECT_FALSE(s.containers.count("c1"));
  EXPECT_FALSE(s.containers.count("c2"));
  EXPECT_TRUE(s.containers.count("c3"));
  EXPECT_EQ(s.containers.at("c" + std::to_string(n + 1)).phase, ContainerPhase::kRequested);
  // Lost after being released (a late word from the backend): ended once, kept.
  apply(ev::ContainerLost{.container = "c3", .reason = "gone"}, "c3", 3 * n);
  EXPECT_EQ(s.ended_containers.size(), kEndedContainersKept);
  EXPECT_TRUE(s.containers.count("c3"));
  EXPECT_TRUE(s.containers.count("c4")) << "c3 moved to the newest end; nothing more left";
  EXPECT_EQ(s.ended_containers.rbegin()->second, "c3");
  State back = RoundTrip(s);
  EXPECT_EQ(back.ended_containers, s.ended_containers);
  EXPECT_EQ(back.containers.size(), s.containers.size());
}

TEST(SnapshotTest, CrcIsCrc32c) {
  EXPECT_EQ(SnapshotCrc("123456789"), 0xE3069283u);
  EXPECT_EQ(SnapshotCrc(""), 0u);
  // The 8-byte loop and the byte loop agree at every alignment and length.
  std::string s(100, '\0');
  for (size_t i = 0; i < s.size(); ++i) s[i] = static_cast<char>(i * 37 + 11);
  uint32_t bytewise = ~0u;
  for (char c : s.substr(3, 61)) {
    bytewise ^= static_cast<unsigned char>(c);
    for (int k = 0; k < 8; ++k) bytewise = (bytewise >> 1) ^ (0x82F63B78u & (~(bytewise & 1) + 1));
  }
  EXPECT_EQ(SnapshotCrc(std::string_view(s).substr(3, 61)), ~bytewise);
}

TEST(SnapshotTest, EmptyStateRoundTrips) {
  State s;
  std::string bytes = EncodeSnapshot(s);
  EXPECT_EQ(bytes.substr(0, 8), "EPOCHSNP");
  EXPECT_EQ(static_cast<uint8_t>(bytes[8]), kSnapshotFormatVersion);
  auto d = DecodeSnapshot(bytes);
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  EXPECT_EQ(d->head, 0u);
  EXPECT_EQ(d->next_run_seq, 1u);
  EXPECT_TRUE(d->runs.empty());
  EXPECT_EQ(EncodeSnapshot(*d), bytes);
}

TEST(SnapshotTest, GoldenHistoryRoundTripsWithEveryField) {
  auto events = ReadHistory("v1-history");
  ASSERT_EQ(events.size(), 82u);
  State s = Replay(events, 0, events.size());
  State d = RoundTrip(s);

  EXPECT_EQ(d.head, 82u);
  EXPECT_EQ(d.epoch, 1u);
  EXPECT_EQ(d.leader_node, "epoch-master");
  EXPECT_EQ(d.leader_address, "http://127.0.0.1:46687");
  EXPECT_EQ(d.next_run_seq, s.next_run_seq);
  EXPECT_EQ(d.next_queue_seq, s.next_queue_seq);
  EXPECT_EQ(d.container_counter, 2u);
  EXPECT_EQ(d.runs_by_seq, s.runs_by_seq);
  EXPECT_EQ(d.runs_by_seq.size(), 4u);
  ASSERT_EQ(d.idempotency.size(), 1u);
  EXPECT_EQ(d.idempotency.begin()->first, std::make_pair(std::string("default"),
                                                         std::string("golden-1")));
  EXPECT_EQ(d.idempotency.begin()->second, "r20261128t145304-2pwrar2p");

  // The flaky run: four attempts of step a, retried by hand after attempt 2.
  const engine::Run* flaky = d.FindRun("r20261128t145304-j0vrgpk4");
  ASSERT_NE(flaky, nullptr);
  EXPECT_EQ(flaky->phase, RunPhase::kFailed);
  EXPECT_EQ(flaky->reason, "step 'a' failed after 2 attempt(s): exit code 2");
  const StepRun* a = flaky->FindStep("a");
  ASSERT_NE(a, nullptr);
  ASSERT_EQ(a->attempts.size(), 4u);
  EXPECT_EQ(a->round_start, 3);
  EXPECT_EQ(a->next_attempt, 5);
  const Attempt& a2 = a->attempts[1];
  EXPECT_EQ(a2.number, 2);
  EXPECT_EQ(a2.phase, AttemptPhase::kFailed);
  EXPECT_EQ(a2.exit_code, 2);
  EXPECT_EQ(a2.signal, std::nullopt);
  EXPECT_EQ(a2.reason, "exit code 2");
  EXPECT_EQ(a2.argv, Json::array({"sh", "-c", "exit 2"}));
  EXPECT_EQ(a2.container, "c1");
  EXPECT_EQ(a2.resources.memory_bytes, 134217728);
  EXPECT_EQ(a2.usage["max_rss_kb"], 2504);
  EXPECT_EQ(a2.queued_at, events[56].time);    // JobQueued at position 57
  EXPECT_EQ(a2.finished_at, events[59].time);  // JobFailed at position 60
  EXPECT_NE(a2.queued_at, a2.finished_at);

  const engine::Run* cancelled = d.FindRun("r20261128t145304-63m2jrfa");
  ASSERT_NE(cancelled, nullptr);
  EXPECT_EQ(cancelled->steps[0].attempts[0].signal, 15);
  EXPECT_EQ(cancelled->steps[0].attempts[0].phase, AttemptPhase::kCancelled);
  EXPECT_TRUE(cancelled->cancel_requested);
  EXPECT_EQ(cancelled->started_at, s.FindRun(cancelled->id)->started_at);
  EXPECT_EQ(cancelled->finished_at, s.FindRun(cancelled->id)->finished_at);

  // Step outputs, metrics (floats stay floats) and the skipped step's reason.
  const engine::Run* first = d.FindRun("r20261128t145304-2pwrar2p");
  ASSERT_NE(first, nullptr);
  EXPECT_EQ(first->steps[3].outputs[0]["name"], "predictions.csv");
  EXPECT_EQ(first->steps[3].outputs[0]["size"], 24);
  EXPECT_TRUE(first->steps[2].metrics["accuracy"].is_number_float());
  EXPECT_EQ(first->steps[2].metrics["accuracy"].get<double>(), 0.948);
  const engine::Run* second = d.FindRun("r20261128t145304-cd2mn5t9");
  ASSERT_NE(second, nullptr);
  EXPECT_EQ(second->steps[3].phase, StepPhase::kSkipped);
  EXPECT_NE(second->steps[3].reason.find("is false"), std::string::npos);

  // Both hello-lifecycle runs and the registered version share one definition.
  const WorkflowVersion* hello = d.FindWorkflow("hello-lifecycle", 1);
  ASSERT_NE(hello, nullptr);
  ASSERT_NE(hello->def, nullptr);
  EXPECT_EQ(first->def.get(), hello->def.get());
  EXPECT_EQ(second->def.get(), hello->def.get());
  EXPECT_EQ(hello->def->digest, s.FindWorkflow("hello-lifecycle", 1)->digest);
  EXPECT_EQ(hello->def->source, s.FindWorkflow("hello-lifecycle", 1)->def->source);
  EXPECT_EQ(hello->def->steps.size(), 4u);
  EXPECT_EQ(hello->registered_at, s.FindWorkflow("hello-lifecycle", 1)->registered_at);
  EXPECT_EQ(hello->actor, s.FindWorkflow("hello-lifecycle", 1)->actor);
  EXPECT_NE(flaky->def.get(), hello->def.get());

  const Container& c1 = d.containers.at("c1");
  EXPECT_EQ(c1.phase, ContainerPhase::kRegistered);
  EXPECT_EQ(c1.handle, "27593");
  EXPECT_EQ(c1.pid, 27593);
  EXPECT_EQ(c1.memory_bytes, 2248146944);
  EXPECT_EQ(c1.request_reason, "minReplicas");
  EXPECT_EQ(c1.idle_since, s.containers.at("c1").idle_since);
  EXPECT_EQ(c1.registered_at, s.containers.at("c1").registered_at);
  EXPECT_TRUE(c1.attempts.empty());
}

// Every prefix of the history: the snapshot after event k round-trips, and the
// decoded State evolved with events k+1..n ends where the full replay ends.
TEST(SnapshotTest, EvolvingAfterDecodeMatchesFullReplay) {
  auto events = ReadHistory("v1-history");
  ASSERT_FALSE(events.empty());
  State full = Replay(events, 0, events.size());
  std::string full_bytes = EncodeSnapshot(full);
  Json full_digest = StateDigestJson(full);
  bool saw_queue = false, saw_timer = false, saw_busy = false;
  for (size_t k = 0; k <= events.size(); ++k) {
    SCOPED_TRACE("snapshot after event " + std::to_string(k));
    State prefix = Replay(events, 0, k);
    saw_queue |= !prefix.queue.empty();
    saw_timer |= !prefix.retry_timers.empty();
    saw_busy |= !prefix.containers.empty() && !prefix.containers.begin()->second.attempts.empty();
    State d = RoundTrip(prefix);
    EXPECT_EQ(d.queue, prefix.queue);
    EXPECT_EQ(d.retry_timers, prefix.retry_timers);
    State rest = Replay(events, k, events.size(), std::move(d));
    EXPECT_EQ(EncodeSnapshot(rest), full_bytes);
    EXPECT_EQ(StateDigestJson(rest), full_digest);
  }
  // The history passes through the states worth checking.
  EXPECT_TRUE(saw_queue);
  EXPECT_TRUE(saw_timer);
  EXPECT_TRUE(saw_busy);
}

constexpr const char* kRetrying = R"({
  "name": "life",
  "params": {"threshold": 0.5},
  "steps": [
    {"name": "prep", "kind": "data_prep", "command": ["sh", "-c", "echo prep"]},
    {"name": "train", "kind": "train", "after": ["prep"], "command": ["train", "{{params.threshold}}"],
     "retry": {"limit": 2, "backoff": "exponential", "initial": "2s", "max": "1m"}}
  ]})";
constexpr const char* kGpu = R"({"name": "gpu", "steps": [
    {"name": "a", "command": ["x"], "resources": {"gpus": 1, "cpu": "10m"}}]})";
constexpr const char* kGang = R"({"name": "ddp", "steps": [
    {"name": "t", "command": ["train"], "workers": 2, "resources": {"gpus": 1, "cpu": "100m"},
     "retry": {"limit": 1, "initial": "1s"}}]})";

// A State built by the decider: GPUs in use, a gang, a waiting queue with
// priorities, a retry timer, idempotency keys, a leader.
class DecidedStateTest : public ::testing::Test {
 protected:
  DecidedStateTest() {
    cfg_.data_dir = "/data";
    cfg_.min_replicas = 2;
    cfg_.max_replicas = 2;
    cfg_.allocation_unit = 1;
    cfg_.container_cpu_millis = 4000;
    cfg_.container_memory_bytes = 8LL << 30;
    cfg_.container_gpus = 2;
  }

  static std::vector<RecordedEvent> Do(State& s, const Command& c, TimePoint now,
                                       const EngineConfig& cfg) {
    Processor p(&s, DecideContext{now, &cfg}, 1);
    auto r = p.Apply(c);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    p.Settle();
    return p.recorded();
  }
  static std::vector<RecordedEvent> Tick(State& s, TimePoint now, const EngineConfig& cfg,
                                         CredentialMint* mint = nullptr) {
    Processor p(&s, DecideContext{now, &cfg, nullptr, mint}, 1);
    p.Record(OnTick(s, engine::Tick{}, DecideContext{now, &cfg, nullptr, mint}));
    p.Settle();
    return p.recorded();
  }
  std::vector<RecordedEvent> Do(const Command& c) { return Do(s_, c, now_, cfg_); }
  void Register(const std::string& id) {
    RegisterContainer r;
    r.container = id;
    r.host = "host-" + id;
    r.pid = 4000 + static_cast<int64_t>(id.back());
    r.cpu_millis = cfg_.container_cpu_millis;
    r.memory_bytes = cfg_.container_memory_bytes;
    for (int i = 0; i < 2; ++i) {
      r.gpus.push_back(Json{{"index", i}, {"uuid", id + "-gpu" + std::to_string(i)},
                            {"healthy", true}, {"simulated", true}});
    }
    r.cuda = Json{{"compiled", false}, {"reason", "simulated"}};
    r.isolation = Json{{"mode", "auto"}, {"run_as", true}, {"sandbox", "namespaces"}};
    r.enforcement = Json{{"mode", "auto"}, {"mechanism", "cgroup1"}, {"reason", ""}};
    Do(r);
  }
  void Submit(const std::string& workflow, const std::string& id, int priority = 0,
              const std::string& key = "") {
    SubmitRun sr;
    sr.run_id = id;
    sr.workflow = workflow;
    sr.priority = priority;
    sr.idempotency_key = key;
    if (!key.empty()) sr.request_digest = "digest-" + key;
    sr.labels = Json{{"team", "vision"}};
    Do(sr);
  }
  static PollContainer Report(const std::string& container, const std::string& attempt,
                              const std::string& state, int exit_code) {
    PollContainer p;
    p.container = container;
    auto reports = ParseAttemptReports(Json::array({Json{{"attempt_id", attempt},
                                                         {"state", state},
                                                         {"exit_code", exit_code},
                                                         {"metrics", Json{{"loss", 0.25}}},
                                                         {"usage", Json{{"wall_s", 1.5}}},
                                                         {"log_bytes", 1234},
                                                         {"log_truncated", true}}}));
    EXPECT_TRUE(reports.ok()) << reports.status().ToString();
    if (reports.ok()) p.reports = std::move(*reports);
    return p;
  }

  void Build() {
    RecordedEvent leader;
    leader.position = s_.head + 1;
    leader.stream = std::string(kMasterStream);
    leader.type = std::string(ev::kLeaderElected);
    leader.data = Json{{"epoch", 3}, {"node", "m2"}, {"address", "http://10.0.0.2:30745"}};
    leader.time = now_;
    leader.epoch = 3;
    ASSERT_TRUE(Evolve(s_, leader).ok());
    Tick(s_, now_, cfg_, &mint_);
    Register("c1");
    Register("c2");
    Do(RegisterWorkflow{*ParseJson(kRetrying)});
    Do(RegisterWorkflow{*ParseJson(kGpu)});
    Do(RegisterWorkflow{*ParseJson(kGang)});
    // A registration with an Idempotency-Key, as the log records it.
    RecordedEvent wf;
    wf.position = s_.head + 1;
    wf.stream = WorkflowStream("keyed");
    wf.type = std::string(ev::kWorkflowRegistered);
    wf.data = fields::Encode(ev::WorkflowRegistered{
        .name = "keyed",
        .version = 1,
        .definition = *ParseJson(R"({"name":"keyed","steps":[{"name":"k","command":["k"]}]})"),
        .tenant = "acme",
        .idempotency_key = "wf-key-1"});
    wf.time = now_;
    wf.epoch = 3;
    ASSERT_TRUE(Evolve(s_, wf).ok());

    Submit("life", "r1", 0, "key-r1");
    Submit("life", "r2");
    Submit("ddp", "d1");  // takes one GPU on each container
    Submit("gpu", "g1");
    Submit("gpu", "g2");
    Submit("gpu", "g3", 5);  // waits, ahead of g4
    Submit("gpu", "g4");
    now_ += std::chrono::seconds(1);
    Do(Report(s_.FindRun("r1")->steps[0].attempts[0].container, "r1/prep/1", "succeeded", 0));
    now_ += std::chrono::seconds(1);
    Do(Report(s_.FindRun("r1")->steps[1].attempts[0].container, "r1/train/1", "failed", 3));
  }

  EngineConfig cfg_;
  State s_;
  TimePoint now_ = FromMicros(1'800'000'000'000'000);
  ContainerCredentials mint_;
};

TEST_F(DecidedStateTest, RoundTripKeepsPlacementsQueueTimersAndKeys) {
  Build();
  // The scenario is what the checks below assume.
  ASSERT_EQ(s_.retry_timers.size(), 1u);
  ASSERT_EQ(s_.queue.size(), 2u);
  ASSERT_EQ(s_.FindRun("d1")->steps[0].attempts[0].ranks.size(), 2u);

  State d = RoundTrip(s_);
  EXPECT_EQ(d.epoch, 3u);
  EXPECT_EQ(d.leader_node, "m2");
  EXPECT_EQ(d.leader_address, "http://10.0.0.2:30745");
  ASSERT_EQ(d.workflow_keys.size(), 1u);
  EXPECT_EQ(d.workflow_keys.begin()->first, std::make_pair(std::string("acme"),
                                                           std::string("wf-key-1")));
  EXPECT_EQ(d.workflow_keys.begin()->second, std::make_pair(std::string("keyed"), 1));
  ASSERT_EQ(d.idempotency.size(), 1u);
  EXPECT_EQ(d.idempotency.at({"default", "key-r1"}), "r1");

  // Queue order: g3 (priority 5) before g4, whatever their submission order.
  std::vector<std::string> queue;
  for (const auto& [key, id] : d.queue) queue.push_back(id);
  EXPECT_EQ(queue, (std::vector<std::string>{"g3/a/1", "g4/a/1"}));
  EXPECT_EQ(d.queue.begin()->first.first, -5);
  EXPECT_EQ(d.queue, s_.queue);

  // The retry timer and the step that owns it.
  EXPECT_EQ(d.retry_timers, s_.retry_timers);
  EXPECT_EQ(d.retry_timers.begin()->second, "r1/train/2");
  EXPECT_EQ(d.retry_timers.begin()->first, now_ + std::chrono::seconds(2));
  const StepRun& train = d.FindRun("r1")->steps[1];
  EXPECT_EQ(train.retry_at, now_ + std::chrono::seconds(2));
  EXPECT_EQ(train.next_attempt, 2);
  EXPECT_EQ(train.attempts[0].exit_code, 3);
  EXPECT_EQ(train.attempts[0].argv, Json::array({"train", "0.5"}));
  EXPECT_EQ(d.FindRun("r1")->steps[0].metrics["loss"], 0.25);
  EXPECT_EQ(d.FindRun("r1")->steps[0].attempts[0].log,
            (Json{{"bytes", 1234}, {"truncated", true}}));
  EXPECT_EQ(d.FindRun("r1")->request_digest, "digest-key-r1");
  EXPECT_EQ(d.FindRun("r2")->request_digest, "");

  // GPUs: every one of the four is busy, and the sets match the attempts.
  for (const auto& [id, c] : s_.containers) {
    const Container& dc = d.containers.at(id);
    EXPECT_EQ(dc.busy_gpus, c.busy_gpus) << id;
    EXPECT_EQ(dc.busy_gpus, (std::set<std::string>{"0", "1"})) << id;
    EXPECT_EQ(dc.attempts, c.attempts) << id;
    EXPECT_EQ(dc.used_cpu, c.used_cpu) << id;
    EXPECT_EQ(dc.used_memory, c.used_memory) << id;
    EXPECT_EQ(dc.gpus, c.gpus) << id;
    EXPECT_EQ(dc.gpus[1]["uuid"], id + "-gpu1");
    EXPECT_EQ(dc.cuda["reason"], "simulated");
    EXPECT_EQ(dc.host, "host-" + id);
    EXPECT_EQ(dc.credential_sha256.size(), 64u) << id;
    EXPECT_EQ(dc.credential_sha256, c.credential_sha256) << id;
    EXPECT_EQ(dc.isolation["sandbox"], "namespaces") << id;
    EXPECT_EQ(dc.enforcement["mechanism"], "cgroup1") << id;
  }
  EXPECT_EQ(d.containers.at("c1").attempts.count("d1/t/1/0") +
                d.containers.at("c2").attempts.count("d1/t/1/0"),
            1u);

  // The gang: both workers, their ranks, GPUs and MASTER_PORT.
  const Attempt& gang = d.FindRun("d1")->steps[0].attempts[0];
  const Attempt& orig = s_.FindRun("d1")->steps[0].attempts[0];
  EXPECT_EQ(gang.workers, 2);
  EXPECT_EQ(gang.master_port, orig.master_port);
  EXPECT_GE(gang.master_port, 29500);
  EXPECT_EQ(gang.master_addr, orig.master_addr);
  ASSERT_EQ(gang.ranks.size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(gang.ranks[i].rank, static_cast<int>(i));
    EXPECT_EQ(gang.ranks[i].container, orig.ranks[i].container);
    EXPECT_EQ(gang.ranks[i].gpus, orig.ranks[i].gpus);
    EXPECT_EQ(gang.ranks[i].gpu_uuids, orig.ranks[i].gpu_uuids);
    EXPECT_EQ(gang.ranks[i].phase, AttemptPhase::kAssigned);
  }
  EXPECT_EQ(d.gangs_placed, 1u);

  // Runs of one version share its definition; labels and priority survive.
  EXPECT_EQ(d.FindRun("r1")->def.get(), d.FindRun("r2")->def.get());
  EXPECT_EQ(d.FindRun("r1")->def.get(), d.FindWorkflow("life", 1)->def.get());
  EXPECT_EQ(d.FindRun("g1")->def.get(), d.FindRun("g4")->def.get());
  EXPECT_EQ(d.FindRun("g1")->def->steps[0].resources.gpus, 1);
  EXPECT_EQ(d.FindRun("g3")->priority, 5);
  EXPECT_EQ(d.FindRun("g3")->labels["team"], "vision");
  EXPECT_EQ(d.FindRun("g3")->seq, s_.FindRun("g3")->seq);
  const Attempt& g1 = d.FindRun("g1")->steps[0].attempts[0];
  const Attempt& g1_orig = s_.FindRun("g1")->steps[0].attempts[0];
  EXPECT_EQ(g1.resources.cpu_millis, 10);
  EXPECT_EQ(g1.resources.gpus, 1);
  EXPECT_EQ(g1.queue_seq, g1_orig.queue_seq);
  EXPECT_EQ(g1.assigned_at, g1_orig.assigned_at);
  EXPECT_EQ(g1.gpu_uuids, g1_orig.gpu_uuids);
  EXPECT_EQ(g1.gpu_uuids.size(), 1u);
}

// The decoded State decides exactly like the original: the same commands give the
// same events and the same final State.
TEST_F(DecidedStateTest, DecidingAfterDecodeMatchesTheOriginal) {
  Build();
  auto d = DecodeSnapshot(EncodeSnapshot(s_));
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  State copy = std::move(d).value();
  auto drive = [&](State& s) {
    std::vector<RecordedEvent> all;
    TimePoint now = now_;
    auto add = [&](std::vector<RecordedEvent> evs) { all.insert(all.end(), evs.begin(), evs.end()); };
    add(Do(s, Report(s.FindRun("g1")->steps[0].attempts[0].container, "g1/a/1", "succeeded", 0),
           now, cfg_));  // g3 goes next
    now += std::chrono::seconds(2);
    add(Tick(s, now, cfg_));  // r1's retry is due
    const Attempt* r1 = s.FindRun("r1")->steps[1].Last();
    EXPECT_EQ(r1 ? r1->number : 0, 2);
    if (r1) add(Do(s, Report(r1->container, "r1/train/2", "succeeded", 0), now, cfg_));
    add(Do(s, Report(s.FindRun("d1")->steps[0].attempts[0].ranks[1].container, "d1/t/1/1",
                     "failed", 1),
           now, cfg_));
    add(Do(s, CancelRun{"g4", "alice"}, now, cfg_));
    now += std::chrono::seconds(5);
    add(Tick(s, now, cfg_));
    return all;
  };
  auto want = drive(s_);
  auto got = drive(copy);
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(got[i].type, want[i].type) << i;
    EXPECT_EQ(got[i].stream, want[i].stream) << i;
    EXPECT_EQ(got[i].data, want[i].data) << i;
    EXPECT_EQ(got[i].position, want[i].position) << i;
  }
  EXPECT_GT(want.size(), 8u);
  EXPECT_EQ(EncodeSnapshot(copy), EncodeSnapshot(s_));
  EXPECT_EQ(StateDigestJson(copy), StateDigestJson(s_));
  EXPECT_EQ(copy.FindRun("r1")->phase, RunPhase::kSucceeded);
}

TEST(SnapshotTest, DefinitionsAreStoredOnceAndSharedByDigest) {
  auto events = ReadHistory("v1-history");
  State s = Replay(events, 0, events.size());
  const WorkflowVersion* hello = s.FindWorkflow("hello-lifecycle", 1);
  ASSERT_NE(hello, nullptr);
  std::string before = EncodeSnapshot(s);

  // A separately parsed copy of a registered definition: shared after decoding.
  engine::Run& first = s.runs.at("r20261128t145304-2pwrar2p");
  auto copy = workflows::ParseDefinition(hello->def->source);
  ASSERT_TRUE(copy.ok());
  first.def = *copy;
  ASSERT_NE(first.def.get(), hello->def.get());
  EXPECT_EQ(EncodeSnapshot(s), before);  // one copy of its source either way

  // A definition no version registers (same steps as `long`, another digest): stored
  // once, shared by the runs that hold it.
  Json source = s.FindWorkflow("long", 1)->def->source;
  source["description"] = "not registered";
  auto inline_def = workflows::ParseDefinition(source);
  ASSERT_TRUE(inline_def.ok());
  engine::Run& long_run = s.runs.at("r20261128t145304-63m2jrfa");
  long_run.def = *inline_def;
  engine::Run twin = long_run;
  twin.id = "r-twin";
  twin.seq = s.next_run_seq++;
  s.runs_by_seq[twin.seq] = twin.id;
  s.runs[twin.id] = twin;
  // And a run without one (only a hand-built State has that).
  s.runs.at("r20261128t145304-j0vrgpk4").def = nullptr;

  State d = RoundTrip(s);
  EXPECT_EQ(d.runs.at("r20261128t145304-2pwrar2p").def.get(),
            d.FindWorkflow("hello-lifecycle", 1)->def.get());
  const auto& adhoc = d.runs.at("r20261128t145304-63m2jrfa").def;
  ASSERT_NE(adhoc, nullptr);
  EXPECT_EQ(adhoc->description, "not registered");
  EXPECT_EQ(adhoc->digest, (*inline_def)->digest);
  EXPECT_NE(adhoc.get(), d.FindWorkflow("long", 1)->def.get());
  EXPECT_EQ(adhoc.get(), d.runs.at("r-twin").def.get());
  EXPECT_EQ(d.runs.at("r20261128t145304-j0vrgpk4").def, nullptr);
  // The run keeps the workflow, version and digest it was submitted with.
  EXPECT_EQ(d.runs.at("r-twin").workflow, "long");
  EXPECT_EQ(d.runs.at("r-twin").digest, s.FindWorkflow("long", 1)->digest);
  EXPECT_EQ(d.runs_by_seq.at(twin.seq), "r-twin");
  // The source is stored once: one more run holding it costs a one-byte reference,
  // no more than holding none.
  engine::Run& other = s.runs.at("r20261128t145304-cd2mn5t9");
  other.def = nullptr;
  size_t without = EncodeSnapshot(s).size();
  other.def = *inline_def;
  EXPECT_EQ(EncodeSnapshot(s).size(), without);
}

TEST(SnapshotTest, ExtremeValuesAndEveryJsonTypeRoundTrip) {
  auto events = ReadHistory("v1-history");
  State s = Replay(events, 0, 30);
  s.head = std::numeric_limits<uint64_t>::max();
  s.next_queue_seq = uint64_t{1} << 63;
  s.launch_failures_in_row = std::numeric_limits<int>::min();
  s.last_launch_failure = FromMicros(std::numeric_limits<int64_t>::min());
  s.last_scale_up = FromMicros(std::numeric_limits<int64_t>::max());
  s.retry_timers.insert({FromMicros(-5), "r/x/1"});
  s.retry_timers.insert({FromMicros(-5), "r/x/2"});  // same time, ordered by id
  s.runs_by_seq[999] = "gone";                       // not derived from runs any more
  engine::Run& run = s.runs.begin()->second;
  run.started_at = TimePoint{};
  run.finished_at = std::nullopt;
  run.steps[0].retry_at = FromMicros(std::numeric_limits<int64_t>::max());
  Attempt& a = run.steps[0].attempts[0];
  a.exit_code = std::numeric_limits<int>::min();
  a.signal = std::numeric_limits<int>::max();
  a.timeout_ms = std::numeric_limits<int64_t>::min();
  a.queued_at = FromMicros(std::numeric_limits<int64_t>::min());
  a.assigned_at = FromMicros(std::numeric_limits<int64_t>::max());
  a.reason = std::string(300, 'r');
  a.env = Json{{"", ""},
               {"neg", -7},
               {"big", std::numeric_limits<uint64_t>::max()},
               {"min", std::numeric_limits<int64_t>::min()},
               {"inf", std::numeric_limits<double>::infinity()},
               {"negzero", -0.0},
               {"tiny", 5e-324},
               {"utf8", "gr\xc3\xbc\xc3\x9f \xe2\x9c\x93"},
               {"nul", std::string("a\0b", 3)},
               {"long", std::string(1000, 'x')},
               {"nested", Json::array({Json::array({Json::object({{"k", nullptr}})}), true, false})},
               {"bin", Json::binary({1, 2, 255}, 42)},
               {"bin0", Json::binary(std::vector<uint8_t>{})}};
  Container& c = s.containers.begin()->second;
  c.busy_gpus = {"0", "10", "2"};
  c.attempts = {"x/y/1", "x/y/1/0"};
  c.pid = std::numeric_limits<int64_t>::min();
  c.ended_at = TimePoint{};

  State d = RoundTrip(s, /*compare_digest=*/false);
  EXPECT_EQ(d.head, s.head);
  EXPECT_EQ(d.next_queue_seq, s.next_queue_seq);
  EXPECT_EQ(d.launch_failures_in_row, s.launch_failures_in_row);
  EXPECT_EQ(d.last_launch_failure, s.last_launch_failure);
  EXPECT_EQ(d.last_scale_up, s.last_scale_up);
  EXPECT_EQ(d.retry_timers, s.retry_timers);
  EXPECT_EQ(d.runs_by_seq, s.runs_by_seq);
  const engine::Run& dr = d.runs.begin()->second;
  EXPECT_EQ(dr.started_at, TimePoint{});
  EXPECT_EQ(dr.finished_at, std::nullopt);
  EXPECT_EQ(dr.steps[0].retry_at, run.steps[0].retry_at);
  const Attempt& da = dr.steps[0].attempts[0];
  EXPECT_EQ(da.exit_code, a.exit_code);
  EXPECT_EQ(da.signal, a.signal);
  EXPECT_EQ(da.timeout_ms, a.timeout_ms);
  EXPECT_EQ(da.queued_at, a.queued_at);
  EXPECT_EQ(da.assigned_at, a.assigned_at);
  EXPECT_EQ(da.reason, a.reason);
  EXPECT_EQ(da.env, a.env);
  EXPECT_TRUE(da.env["big"].is_number_unsigned());
  EXPECT_TRUE(da.env["neg"].is_number_integer());
  EXPECT_TRUE(std::signbit(da.env["negzero"].get<double>()));
  EXPECT_EQ(da.env["tiny"].get<double>(), 5e-324);
  EXPECT_EQ(da.env["nul"].get<std::string>().size(), 3u);
  EXPECT_EQ(da.env["bin"].get_binary().subtype(), 42u);
  EXPECT_FALSE(da.env["bin0"].get_binary().has_subtype());
  EXPECT_EQ(d.containers.begin()->second.busy_gpus, c.busy_gpus);
  EXPECT_EQ(d.containers.begin()->second.attempts, c.attempts);
  EXPECT_EQ(d.containers.begin()->second.pid, c.pid);
  EXPECT_EQ(d.containers.begin()->second.ended_at, TimePoint{});
}

// More runs than one chunk holds: the chunks are decoded apart (on several threads
// where the machine has them) and put back in order.
TEST(SnapshotTest, ManyRunsRoundTripThroughSeveralChunks) {
  auto events = ReadHistory("v1-history");
  State s = Replay(events, 0, events.size());
  const engine::Run proto = s.runs.at("r20261128t145304-2pwrar2p");
  for (int i = 0; i < 9000; ++i) {
    engine::Run r = proto;
    char id[32];
    std::snprintf(id, sizeof(id), "bulk-%05d", i);
    r.id = id;
    r.seq = s.next_run_seq++;
    r.params["i"] = i;
    r.steps[1].attempts[0].finished_at += Micros(i);
    s.runs_by_seq[r.seq] = r.id;
    s.runs.emplace(r.id, std::move(r));
  }
  std::string bytes = EncodeSnapshot(s);
  auto d = DecodeSnapshot(bytes);
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  EXPECT_EQ(EncodeSnapshot(*d), bytes);
  ASSERT_EQ(d->runs.size(), s.runs.size());
  EXPECT_EQ(d->runs_by_seq, s.runs_by_seq);
  auto it = d->runs.begin();
  for (const auto& [id, r] : s.runs) {
    ASSERT_EQ(it->first, id);
    EXPECT_EQ(it->second.id, id);
    ++it;
  }
  const engine::Run& last = d->runs.at("bulk-08999");
  EXPECT_EQ(last.params["i"], 8999);
  EXPECT_EQ(last.steps[1].attempts[0].finished_at,
            proto.steps[1].attempts[0].finished_at + Micros(8999));
  EXPECT_EQ(last.def.get(), d->FindWorkflow("hello-lifecycle", 1)->def.get());
  EXPECT_EQ(d->runs.at("bulk-00000").def.get(), last.def.get());

  // Damage inside a later chunk surfaces from whichever thread decoded it: the
  // length prefix of run bulk-08000's id (10 bytes, written 10 << 2) made a bad tag.
  size_t at = bytes.find("bulk-08000");
  ASSERT_NE(at, std::string::npos);
  ASSERT_EQ(bytes[at - 1], 10 << 2);
  std::string bad = bytes;
  bad[at - 1] = 3;
  SetBodyHeader(bad);
  auto r = DecodeSnapshot(bad);
  EXPECT_EQ(r.status().code(), StatusCode::kCorruption);
  EXPECT_NE(r.status().message().find("bad string tag"), std::string::npos) << r.status().ToString();
}

// A small snapshot to damage: the golden history up to its first retry.
std::string SmallSnapshot() {
  auto events = ReadHistory("v1-history");
  return EncodeSnapshot(Replay(events, 0, std::min<size_t>(events.size(), 58)));
}

TEST(SnapshotTest, EveryTruncationIsCorruption) {
  std::string bytes = SmallSnapshot();
  ASSERT_GT(bytes.size(), kSnapshotHeaderSize + 100);
  for (size_t n = 0; n < bytes.size(); ++n) {
    auto d = DecodeSnapshot(std::string_view(bytes).substr(0, n));
    ASSERT_FALSE(d.ok()) << "prefix of " << n << " bytes decoded";
    EXPECT_EQ(d.status().code(), StatusCode::kCorruption) << n;
  }
  auto d = DecodeSnapshot(std::string_view(bytes).substr(0, bytes.size() - 1));
  EXPECT_NE(d.status().message().find("truncated"), std::string::npos) << d.status().ToString();
  // A byte too many is refused too.
  EXPECT_EQ(DecodeSnapshot(bytes + '\0').status().code(), StatusCode::kCorruption);
}

// With the header made to agree (as if the writer had been cut short), the body
// decoder must still notice every truncation.
TEST(SnapshotTest, EveryTruncatedBodyIsCorruptionEvenWithAValidHeader) {
  std::string bytes = SmallSnapshot();
  for (size_t n = kSnapshotHeaderSize; n < bytes.size(); ++n) {
    std::string cut = bytes.substr(0, n);
    SetBodyHeader(cut);
    auto d = DecodeSnapshot(cut);
    ASSERT_FALSE(d.ok()) << "body of " << n - kSnapshotHeaderSize << " bytes decoded";
    EXPECT_EQ(d.status().code(), StatusCode::kCorruption) << n;
  }
}

TEST(SnapshotTest, FlippedBytesAreCorruption) {
  std::string bytes = SmallSnapshot();
  for (size_t i = 0; i < bytes.size(); ++i) {
    for (uint8_t mask : {0x01, 0x80, 0xff}) {
      std::string bad = bytes;
      bad[i] = static_cast<char>(bad[i] ^ mask);
      auto d = DecodeSnapshot(bad);
      ASSERT_FALSE(d.ok()) << "byte " << i << " ^ " << int{mask} << " decoded";
      EXPECT_EQ(d.status().code(), StatusCode::kCorruption) << i;
    }
  }
  std::string bad = bytes;
  bad[bytes.size() / 2] ^= 0x10;
  EXPECT_NE(DecodeSnapshot(bad).status().message().find("checksum"), std::string::npos);
}

TEST(SnapshotTest, WrongMagicVersionAndGarbageAreCorruption) {
  std::string bytes = SmallSnapshot();
  std::string magic = bytes;
  magic[0] = 'X';
  auto d = DecodeSnapshot(magic);
  EXPECT_EQ(d.status().code(), StatusCode::kCorruption);
  EXPECT_NE(d.status().message().find("magic"), std::string::npos);
  std::string version = bytes;
  version[8] = 99;
  d = DecodeSnapshot(version);
  EXPECT_EQ(d.status().code(), StatusCode::kCorruption);
  EXPECT_NE(d.status().message().find("version 99"), std::string::npos);
  EXPECT_EQ(DecodeSnapshot("").status().code(), StatusCode::kCorruption);
  std::mt19937 rng(7);
  for (int i = 0; i < 200; ++i) {
    std::string garbage(rng() % 200, '\0');
    for (auto& c : garbage) c = static_cast<char>(rng());
    if (i % 2 == 0 && garbage.size() >= 8) garbage.replace(0, 8, "EPOCHSNP");
    EXPECT_EQ(DecodeSnapshot(garbage).status().code(), StatusCode::kCorruption);
  }
}

// Damage the checksum cannot see (a writer bug, or bytes made to agree): the body
// decoder never crashes or reads out of bounds (CI runs this under ASan/UBSan), and
// any failure is kCorruption.
TEST(SnapshotTest, DamagedBodyWithAValidChecksumNeverCrashes) {
  std::string bytes = SmallSnapshot();
  int refused = 0, total = 0;
  for (size_t i = kSnapshotHeaderSize; i < bytes.size(); ++i) {
    auto b = static_cast<uint8_t>(bytes[i]);
    for (uint8_t v : {uint8_t(0x00), uint8_t(0xff), uint8_t(b ^ 0x01)}) {
      if (v == b) continue;
      std::string bad = bytes;
      bad[i] = static_cast<char>(v);
      SetBodyHeader(bad);
      auto d = DecodeSnapshot(bad);
      ++total;
      if (!d.ok()) {
        ++refused;
        EXPECT_EQ(d.status().code(), StatusCode::kCorruption) << d.status().ToString();
      }
    }
  }
  // Much of the damage only changes a string or a number, but not most of it.
  EXPECT_GT(refused, total / 10);
}

// Bodies made by hand, each wrong in one way.
TEST(SnapshotTest, MalformedBodiesNameTheProblem) {
  auto decode = [](std::string body) {
    std::string bytes = EncodeSnapshot(State{}).substr(0, kSnapshotHeaderSize) + body;
    SetBodyHeader(bytes);
    return DecodeSnapshot(bytes).status();
  };
  std::string empty_body = EncodeSnapshot(State{}).substr(kSnapshotHeaderSize);
  ASSERT_EQ(empty_body.size(), 27u);
  EXPECT_TRUE(decode(empty_body).ok());
  struct Case {
    std::string body;
    std::string message;
  };
  std::vector<Case> cases = {
      // head, epoch, then 127 definitions in 17 bytes.
      {std::string("\0\0\x7f", 3) + empty_body.substr(3), "count 127 exceeds"},
      // One workflow whose name is string table entry 5 of an empty table.
      {std::string("\0\0\0\x01\x16", 5) + empty_body.substr(4), "string table index 5 of 0"},
      // A varint of eleven bytes as the head.
      {std::string(10, '\xff') + "\x01" + empty_body.substr(1), "varint"},
      // A string longer than the body (leader_node).
      {empty_body.substr(0, 12) + "\x7c" + empty_body.substr(13), "runs past the end"},
      {empty_body + "x", "after the end of the state"},
      {empty_body.substr(0, 19), "truncated"},
  };
  for (const auto& c : cases) {
    Status st = decode(c.body);
    EXPECT_EQ(st.code(), StatusCode::kCorruption) << c.message;
    EXPECT_NE(st.message().find(c.message), std::string::npos) << st.ToString();
  }
}

}  // namespace
}  // namespace epoch::engine
