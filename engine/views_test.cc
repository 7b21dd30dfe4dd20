// The read models the API serves (engine/views.h), tested on a State built by Evolve.
#include "engine/views.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "engine/event_types.h"

namespace epoch::engine {
namespace {

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

  State s_;
  EngineConfig cfg_;
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
  Json all = ListArtifacts(s_, /*models=*/true, nullptr, "");
  ASSERT_EQ(all.size(), 2u);  // a/mlp and b/mlp
  EXPECT_EQ(all[0]["tenant"], "a");
  EXPECT_EQ(all[0]["version"], 2);
  EXPECT_EQ(all[0]["versions"], 2);
  EXPECT_EQ(all[1]["tenant"], "b");
  Json b_only = ListArtifacts(s_, true, nullptr, "b");
  ASSERT_EQ(b_only.size(), 1u);
  EXPECT_EQ(b_only[0]["digest"], "d3");
  EXPECT_TRUE(ListArtifacts(
                  s_, true, [](const std::string& t) { return t == "c"; }, "")
                  .empty());
  EXPECT_TRUE(ListArtifacts(s_, /*models=*/false, nullptr, "").empty());
}

}  // namespace
}  // namespace epoch::engine
