// The read models the API serves (engine/views.h), tested on a State built by Evolve.
#include "engine/views.h"

#include <gtest/gtest.h>

#include <map>
#include <string>
#include <vector>

#include "engine/event_types.h"

namespace epoch::engine {
namespace {

// The value of a view that reads the read model (none here: State holds everything).
template <class T>
T Must(Result<T> r) {
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  return r.ok() ? std::move(*r) : T{};
}

class ViewsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    Json def = *ParseJson(R"({"name":"w","steps":[{"name":"a","command":["true"]}]})");
    Apply("workflow-w",
          ev::WorkflowRegistered{.name = "w", .version = 1, .definition = def, .tenant = "a"});
    Json other = *ParseJson(R"({"name":"v","steps":[{"name":"a","command":["true"]}]})");
    Apply("workflow-v",
          ev::WorkflowRegistered{.name = "v", .version = 1, .definition = other, .tenant = "a"});
    // r1..r6, oldest first: tenants a, b, a, a, b, a; r3 on workflow v; r4 labelled.
    const char* tenants[] = {"a", "b", "a", "a", "b", "a"};
    for (int i = 1; i <= 6; ++i) {
      ev::RunSubmitted p{.run = "r" + std::to_string(i),
                         .workflow = i == 3 ? "v" : "w",
                         .version = 1,
                         .tenant = tenants[i - 1]};
      if (i == 4) p.labels = Json{{"team", "vision"}, {"n", 4}};
      Apply("run-" + p.run, p);
    }
    Apply("run-r2", ev::RunCancelled{});
  }

  template <class T>
  void Apply(const std::string& stream, const T& payload) {
    RecordedEvent e;
    e.position = s_.head + 1;
    e.stream = stream;
    e.type = std::string(T::kType);
    e.data = fields::Encode(payload);
    Status st = Evolve(s_, e);
    ASSERT_TRUE(st.ok()) << st.ToString();
  }

  static std::vector<std::string> Ids(const RunPage& p) {
    std::vector<std::string> ids;
    for (const auto& r : p.items) ids.push_back(r["id"]);
    return ids;
  }

  // Queues attempt `attempt` of run `run`'s step a, with `cache_key` when non-empty.
  void Queue(const std::string& run, int attempt, const std::string& cache_key = "") {
    ev::JobQueued q{.run = run, .step = "a", .attempt = attempt};
    if (!cache_key.empty()) q.cache = ev::CacheDecision{.key = cache_key};
    Apply("run-" + run, q);
  }
  void Container(const std::string& id) {
    Apply("container-" + id, ev::ContainerRequested{.container = id, .backend = "local"});
  }

  static std::vector<std::string> Column(const Json& items, const char* field) {
    std::vector<std::string> out;
    for (const auto& i : items) out.push_back(i[field]);
    return out;
  }

  State s_;
  EngineConfig cfg_;
  const TenantFilter only_a_ = [](const std::string& t) { return t == "a"; };
};

TEST_F(ViewsTest, NewestFirstAndPagedByCursorUntilNull) {
  RunQuery q;
  q.limit = 4;
  RunPage first = ListRuns(s_, cfg_, q);
  EXPECT_EQ(Ids(first), (std::vector<std::string>{"r6", "r5", "r4", "r3"}));
  ASSERT_TRUE(first.next_cursor.is_string());
  q.cursor = std::stoull(first.next_cursor.get<std::string>());
  RunPage second = ListRuns(s_, cfg_, q);
  EXPECT_EQ(Ids(second), (std::vector<std::string>{"r2", "r1"}));
  EXPECT_TRUE(second.next_cursor.is_null());
  // A page that holds the last run has no next cursor.
  q.cursor = 0;
  q.limit = 6;
  EXPECT_TRUE(ListRuns(s_, cfg_, q).next_cursor.is_null());
}

TEST_F(ViewsTest, FiltersByTenantStateWorkflowAndEveryLabel) {
  RunQuery q;
  q.visible = [](const std::string& t) { return t == "b"; };
  EXPECT_EQ(Ids(ListRuns(s_, cfg_, q)), (std::vector<std::string>{"r5", "r2"}));
  q.state = "cancelled";
  EXPECT_EQ(Ids(ListRuns(s_, cfg_, q)), (std::vector<std::string>{"r2"}));
  q = RunQuery{};
  q.workflow = "v";
  EXPECT_EQ(Ids(ListRuns(s_, cfg_, q)), (std::vector<std::string>{"r3"}));
  q = RunQuery{};
  q.labels = {{"team", "vision"}};
  EXPECT_EQ(Ids(ListRuns(s_, cfg_, q)), (std::vector<std::string>{"r4"}));
  q.labels = {{"team", "vision"}, {"n", "4"}};  // a label that is not a string never matches
  EXPECT_TRUE(Ids(ListRuns(s_, cfg_, q)).empty());
  // A filtered page's cursor skips the runs the filter left out.
  q = RunQuery{};
  q.visible = [](const std::string& t) { return t == "a"; };
  q.limit = 1;
  RunPage p = ListRuns(s_, cfg_, q);
  EXPECT_EQ(Ids(p), (std::vector<std::string>{"r6"}));
  q.cursor = std::stoull(p.next_cursor.get<std::string>());
  EXPECT_EQ(Ids(ListRuns(s_, cfg_, q)), (std::vector<std::string>{"r4"}));
}

TEST_F(ViewsTest, WorkflowsAreListedAndReadOnlyByTheirTenantsCallers) {
  Json def = *ParseJson(R"({"name":"w","steps":[{"name":"a","command":["true"]},
      {"name":"b","command":["true"]}]})");
  Apply("workflow-w",
        ev::WorkflowRegistered{.name = "w", .version = 2, .definition = def, .tenant = "a"});
  Json b = *ParseJson(R"({"name":"x","steps":[{"name":"a","command":["true"]}]})");
  Apply("workflow-x",
        ev::WorkflowRegistered{.name = "x", .version = 1, .definition = b, .tenant = "b"});
  TenantFilter only_a = [](const std::string& t) { return t == "a"; };
  Json list = ListWorkflows(s_, only_a);
  ASSERT_EQ(list.size(), 2u);  // v and w, not b's x
  EXPECT_EQ(list[1]["name"], "w");
  EXPECT_EQ(list[1]["version"], 2);
  EXPECT_EQ(list[1]["versions"], 2);
  EXPECT_EQ(list[1]["steps"], 2);
  EXPECT_EQ(ListWorkflows(s_, nullptr).size(), 3u);
  EXPECT_EQ(WorkflowVersionJson(s_, "w", 0, only_a)["version"], 2);
  EXPECT_EQ(WorkflowVersionJson(s_, "w", 1, only_a)["definition"]["steps"].size(), 1u);
  EXPECT_TRUE(WorkflowVersionJson(s_, "w", 3, only_a).is_null());
  EXPECT_TRUE(WorkflowVersionJson(s_, "x", 0, only_a).is_null()) << "b's workflow";
  EXPECT_EQ(WorkflowVersionJson(s_, "x", 0, nullptr)["tenant"], "b");
  EXPECT_EQ(WorkflowTenant(s_, "x"), "b");
  EXPECT_EQ(WorkflowTenant(s_, "nope"), "");
}

TEST_F(ViewsTest, ArtifactsAreListedPerTenantWithTheirLatestVersion) {
  Json def =
      *ParseJson(R"({"name":"t","steps":[{"name":"train","kind":"train","command":["t"]}]})");
  Apply("workflow-t",
        ev::WorkflowRegistered{.name = "t", .version = 1, .definition = def, .tenant = "a"});
  for (auto [run, tenant] : {std::pair{"m1", "a"}, std::pair{"m2", "a"}, std::pair{"m3", "b"}}) {
    Apply(std::string("run-") + run,
          ev::RunSubmitted{.run = run, .workflow = "t", .version = 1, .tenant = tenant});
  }
  Apply("run-m1", ev::ModelVersionRegistered{
                      .name = "mlp", .version = 1, .digest = "d1", .step = "train", .attempt = 1});
  Apply("run-m2", ev::ModelVersionRegistered{
                      .name = "mlp", .version = 2, .digest = "d2", .step = "train", .attempt = 1});
  Apply("run-m3", ev::ModelVersionRegistered{
                      .name = "mlp", .version = 1, .digest = "d3", .step = "train", .attempt = 1});
  Json all = Must(ListArtifacts(s_, /*models=*/true, nullptr, ""));
  ASSERT_EQ(all.size(), 2u);  // a/mlp and b/mlp
  EXPECT_EQ(all[0]["tenant"], "a");
  EXPECT_EQ(all[0]["version"], 2);
  EXPECT_EQ(all[0]["versions"], 2);
  EXPECT_EQ(all[1]["tenant"], "b");
  Json b_only = Must(ListArtifacts(s_, true, nullptr, "b"));
  ASSERT_EQ(b_only.size(), 1u);
  EXPECT_EQ(b_only[0]["digest"], "d3");
  EXPECT_TRUE(Must(ListArtifacts(
                       s_, true, [](const std::string& t) { return t == "c"; }, ""))
                  .empty());
  EXPECT_TRUE(Must(ListArtifacts(s_, /*models=*/false, nullptr, "")).empty());
}

TEST_F(ViewsTest, ARunIsReadOnlyByItsTenantsCallersAndEndsWhenTerminalOrUnknown) {
  Json r1 = RunJson(s_, cfg_, "r1", only_a_);
  EXPECT_EQ(r1["id"], "r1");
  EXPECT_EQ(r1["tenant"], "a");
  EXPECT_EQ(r1["state"], "queued");
  EXPECT_TRUE(RunJson(s_, cfg_, "r2", only_a_).is_null()) << "b's run";
  EXPECT_EQ(RunJson(s_, cfg_, "r2", nullptr)["state"], "cancelled");
  EXPECT_TRUE(RunJson(s_, cfg_, "nope", nullptr).is_null());
  EXPECT_TRUE(RunVisible(s_, "r1", only_a_));
  EXPECT_FALSE(RunVisible(s_, "r2", only_a_));
  EXPECT_TRUE(RunVisible(s_, "r2", nullptr));
  EXPECT_FALSE(RunVisible(s_, "nope", nullptr));
  EXPECT_FALSE(RunEnded(s_, "r1"));
  EXPECT_TRUE(RunEnded(s_, "r2"));
  EXPECT_TRUE(RunEnded(s_, "nope"));
}

TEST_F(ViewsTest, ALogIsTheAskedOrLatestAttemptsAndItsProblemsAreNotFound) {
  Queue("r1", 1);
  Queue("r1", 2);
  auto latest = LogAttempt(s_, "r1", "a", 0, only_a_);
  ASSERT_TRUE(latest.ok()) << latest.status().ToString();
  EXPECT_EQ(*latest, 2);
  auto first = LogAttempt(s_, "r1", "a", 1, only_a_);
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(*first, 1);
  auto message = [&](const std::string& run, const std::string& step, int attempt,
                     const TenantFilter& visible) {
    auto r = LogAttempt(s_, run, step, attempt, visible);
    EXPECT_EQ(r.status().code(), StatusCode::kNotFound);
    return r.status().message();
  };
  EXPECT_EQ(message("r1", "a", 3, only_a_), "step 'a' has no attempt 3");
  EXPECT_EQ(message("r1", "zz", 0, only_a_), "run 'r1' has no step 'zz'");
  EXPECT_EQ(message("r4", "a", 0, only_a_), "step 'a' has not run yet");
  EXPECT_EQ(message("r5", "a", 0, only_a_), "run 'r5' not found");  // b's
  EXPECT_EQ(message("nope", "a", 0, nullptr), "run 'nope' not found");

  EXPECT_FALSE(AttemptEnded(s_, AttemptId("r1", "a", 2)));
  Apply("run-r1", ev::JobCancelled{{.step = "a", .attempt = 2, .reason = "test"}});
  EXPECT_TRUE(AttemptEnded(s_, AttemptId("r1", "a", 2)));
  EXPECT_TRUE(AttemptEnded(s_, AttemptId("r1", "a", 9)));
}

TEST_F(ViewsTest, EventsAreVisibleByTheirRunsOrWorkflowsTenant) {
  const std::vector<std::string> streams{"run-r1",        "run-r2",       "workflow-w",
                                         "workflow-nope", "container-c1", "run-nope"};
  auto visible = [&](const TenantFilter& filter, const std::string& tenant) {
    std::vector<std::string> out;
    for (const auto& st : streams) {
      if (EventVisible(s_, st, filter, tenant)) out.push_back(st);
    }
    return out;
  };
  EXPECT_EQ(visible(nullptr, ""), streams);
  EXPECT_EQ(visible(only_a_, ""), (std::vector<std::string>{"run-r1", "workflow-w"}));
  EXPECT_EQ(visible(nullptr, "b"), (std::vector<std::string>{"run-r2"}));
  EXPECT_EQ(visible(nullptr, "a"), (std::vector<std::string>{"run-r1", "workflow-w"}));
  EXPECT_TRUE(visible(only_a_, "b").empty());
}

TEST_F(ViewsTest, ContainersShowOnlyTheCallersTenantsAttemptsAndTheirBackendsState) {
  for (const char* id : {"c1", "c2", "c3", "c4"}) Container(id);
  for (const char* id : {"c1", "c2", "c3"}) {
    Apply(std::string("container-") + id,
          ev::ContainerRegistered{.container = id, .backend = "local", .host = "h"});
  }
  Apply("container-c3", ev::ContainerLost{.container = "c3", .reason = "gone"});
  Queue("r1", 1);  // tenant a
  Queue("r5", 1);  // tenant b
  Apply("run-r1", ev::JobAssigned{.step = "a", .attempt = 1, .container = "c1"});
  Apply("run-r5", ev::JobAssigned{.step = "a", .attempt = 1, .container = "c1"});

  std::map<std::string, ContainerDescription> watched;
  watched["c2"] = ContainerDescription{.detail = "pid 7", .backend_state = "RUNNING"};
  Json all = ContainersJson(s_, /*all=*/true, nullptr, watched);
  EXPECT_EQ(Column(all, "id"), (std::vector<std::string>{"c1", "c2", "c3", "c4"}));
  Json live = ContainersJson(s_, /*all=*/false, nullptr, watched);
  ASSERT_EQ(Column(live, "id"), (std::vector<std::string>{"c1", "c2", "c4"}));  // not lost c3
  EXPECT_EQ(live[0]["attempts"], (Json{"r1/a/1", "r5/a/1"}));
  EXPECT_FALSE(live[0].contains("backend_state"));
  EXPECT_EQ(live[1]["backend_state"], "RUNNING");
  EXPECT_EQ(live[1]["backend_detail"], "pid 7");
  Json mine = ContainersJson(s_, false, only_a_, watched);
  EXPECT_EQ(mine[0]["attempts"], (Json{"r1/a/1"}));

  PollStanding c1 = ContainerPollStanding(s_, "c1", {"r1/a/1", "nope/a/1"});
  EXPECT_EQ(c1.problem, "");
  EXPECT_TRUE(c1.assigned);
  Apply("run-r1", ev::JobStarted{.step = "a", .attempt = 1, .container = "c1"});
  EXPECT_FALSE(ContainerPollStanding(s_, "c1", {"r1/a/1"}).assigned) << "started";
  EXPECT_TRUE(ContainerPollStanding(s_, "c1", {"r1/a/1", "r5/a/1"}).assigned);
  EXPECT_EQ(ContainerPollStanding(s_, "c3", {}).problem, "released");
  EXPECT_EQ(ContainerPollStanding(s_, "c4", {}).problem, "unknown_container") << "requested";
  EXPECT_EQ(ContainerPollStanding(s_, "nope", {}).problem, "unknown_container");
  // A gang's workers: rank 0 started, rank 1 still assigned.
  Apply("run-r6", ev::JobQueued{.run = "r6", .step = "a", .attempt = 1, .workers = 2});
  Apply("run-r6", ev::JobAssigned{.step = "a",
                                  .attempt = 1,
                                  .container = "c2",
                                  .placements = std::vector<ev::Placement>{
                                      {.rank = 0, .container = "c2"},
                                      {.rank = 1, .local_rank = 1, .container = "c2"}}});
  Apply("run-r6", ev::JobStarted{.step = "a", .attempt = 1, .container = "c2", .rank = 0});
  EXPECT_FALSE(ContainerPollStanding(s_, "c2", {TaskId("r6", "a", 1, 0)}).assigned);
  EXPECT_TRUE(ContainerPollStanding(s_, "c2", {TaskId("r6", "a", 1, 1)}).assigned);
}

TEST_F(ViewsTest, CacheEntriesAreListedAndHiddenByTenant) {
  Json x = *ParseJson(R"({"name":"x","steps":[{"name":"a","command":["true"]}]})");
  Apply("workflow-x",
        ev::WorkflowRegistered{.name = "x", .version = 1, .definition = x, .tenant = "b"});
  // k1: a's run of w; k2: b's run of w; k3: a's run of v.
  for (auto [run, key] : {std::pair{"r1", "k1"}, std::pair{"r5", "k2"}, std::pair{"r3", "k3"}}) {
    Queue(run, 1, key);
    Apply(std::string("run-") + run, ev::JobSucceeded{.step = "a", .attempt = 1});
  }
  Json all = CacheEntries(s_, nullptr, "", "");
  EXPECT_EQ(Column(all, "key"), (std::vector<std::string>{"k1", "k2", "k3"}));
  EXPECT_EQ(all[1]["tenant"], "b");
  EXPECT_EQ(all[1]["run"], "r5");
  EXPECT_EQ(Column(CacheEntries(s_, only_a_, "", ""), "key"),
            (std::vector<std::string>{"k1", "k3"}));
  EXPECT_EQ(Column(CacheEntries(s_, nullptr, "v", ""), "key"), (std::vector<std::string>{"k3"}));
  EXPECT_EQ(Column(CacheEntries(s_, nullptr, "", "a"), "key").size(), 3u);
  EXPECT_TRUE(CacheEntries(s_, nullptr, "", "zz").empty());

  EXPECT_EQ(HiddenCacheTarget(s_, "k2", "", only_a_), "cache key 'k2' has no entry");
  EXPECT_EQ(HiddenCacheTarget(s_, "k1", "", only_a_), "");
  EXPECT_EQ(HiddenCacheTarget(s_, "nope", "", only_a_), "") << "unknown: the engine says";
  EXPECT_EQ(HiddenCacheTarget(s_, "", "x", only_a_), "workflow 'x' is not registered");
  EXPECT_EQ(HiddenCacheTarget(s_, "", "w", only_a_), "");
  EXPECT_EQ(HiddenCacheTarget(s_, "", "nope", only_a_), "");
  EXPECT_EQ(HiddenCacheTarget(s_, "k2", "x", nullptr), "") << "sees every tenant";
}

TEST_F(ViewsTest, PhasesAreCountedForTheMetrics) {
  Container("c1");
  Container("c2");
  Apply("container-c1", ev::ContainerRegistered{.container = "c1", .backend = "local"});
  Queue("r1", 1);
  Queue("r3", 1);
  Apply("run-r3", ev::JobCancelled{{.step = "a", .attempt = 1, .reason = "test"}});
  PhaseCounts c = CountPhases(s_);
  EXPECT_EQ(c.runs, (std::map<std::string, int>{{"queued", 5}, {"cancelled", 1}}));
  EXPECT_EQ(c.attempts, (std::map<std::string, int>{{"queued", 1}, {"cancelled", 1}}));
  EXPECT_EQ(c.containers, (std::map<std::string, int>{{"registered", 1}, {"requested", 1}}));
  EXPECT_EQ(c.queue, 1u);
}

TEST_F(ViewsTest, AnArtifactIsTheAskedTenantsTheCallersOrTheOnlyOwners) {
  Json def =
      *ParseJson(R"({"name":"t","steps":[{"name":"train","kind":"train","command":["t"]}]})");
  Apply("workflow-t",
        ev::WorkflowRegistered{.name = "t", .version = 1, .definition = def, .tenant = "a"});
  for (auto [run, tenant] : {std::pair{"m1", "a"}, std::pair{"m2", "a"}, std::pair{"m3", "b"}}) {
    Apply(std::string("run-") + run,
          ev::RunSubmitted{.run = run, .workflow = "t", .version = 1, .tenant = tenant});
  }
  Apply("run-m1", ev::ModelVersionRegistered{
                      .name = "mlp", .version = 1, .digest = "d1", .step = "train", .attempt = 1});
  Apply("run-m2", ev::ModelVersionRegistered{
                      .name = "mlp", .version = 2, .digest = "d2", .step = "train", .attempt = 1});
  Apply("run-m3", ev::ModelVersionRegistered{
                      .name = "mlp", .version = 1, .digest = "d3", .step = "train", .attempt = 1});
  Apply("run-m3", ev::ModelVersionRegistered{
                      .name = "solo", .version = 1, .digest = "d4", .step = "train", .attempt = 1});
  TenantFilter only_b = [](const std::string& t) { return t == "b"; };

  // The caller's own.
  ArtifactLookup own = Must(FindArtifact(s_, true, "mlp", 0, "", "a", only_a_));
  EXPECT_EQ(own.item["tenant"], "a");
  ASSERT_EQ(own.item["versions"].size(), 2u);
  EXPECT_EQ(own.item["versions"][1]["digest"], "d2");
  ArtifactLookup v1 = Must(FindArtifact(s_, true, "mlp", 1, "", "a", only_a_));
  EXPECT_EQ(v1.item["digest"], "d1");
  EXPECT_EQ(v1.item["tenant"], "a");
  EXPECT_TRUE(Must(FindArtifact(s_, true, "mlp", 3, "", "a", only_a_)).item.is_null());
  // Another tenant's, asked for or not: not found.
  EXPECT_TRUE(Must(FindArtifact(s_, true, "mlp", 0, "a", "b", only_b)).item.is_null());
  EXPECT_TRUE(Must(FindArtifact(s_, true, "solo", 0, "", "a", only_a_)).item.is_null());
  EXPECT_TRUE(Must(FindArtifact(s_, true, "solo", 0, "b", "a", only_a_)).item.is_null());
  // One who sees every tenant: the one owner, or the owners when there are several.
  EXPECT_EQ(Must(FindArtifact(s_, true, "solo", 0, "", "", nullptr)).item["tenant"], "b");
  ArtifactLookup both = Must(FindArtifact(s_, true, "mlp", 0, "", "", nullptr));
  EXPECT_TRUE(both.item.is_null());
  EXPECT_EQ(both.owners, (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(Must(FindArtifact(s_, true, "mlp", 1, "b", "", nullptr)).item["digest"], "d3");
  ArtifactLookup none = Must(FindArtifact(s_, true, "nope", 0, "", "", nullptr));
  EXPECT_TRUE(none.item.is_null());
  EXPECT_TRUE(none.owners.empty());
  EXPECT_TRUE(Must(FindArtifact(s_, /*model=*/false, "mlp", 0, "", "a", only_a_)).item.is_null());
  // Every version, a page at a time: the first of a's two, then the rest.
  Json first = Must(FindArtifact(s_, true, "mlp", 0, "a", "a", only_a_, nullptr, 0, 1)).item;
  ASSERT_EQ(first["versions"].size(), 1u);
  EXPECT_EQ(first["versions"][0]["version"], 1);
  EXPECT_EQ(first["count"], 2);
  EXPECT_EQ(first["next_cursor"], "1");
  Json rest = Must(FindArtifact(s_, true, "mlp", 0, "a", "a", only_a_, nullptr, 1, 1)).item;
  ASSERT_EQ(rest["versions"].size(), 1u);
  EXPECT_EQ(rest["versions"][0]["digest"], "d2");
  EXPECT_TRUE(rest["next_cursor"].is_null());
}

}  // namespace
}  // namespace epoch::engine
