// The read models the API serves (engine/views.h), tested on a State built by Evolve.
#include "engine/views.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "engine/event_types.h"

namespace epoch::engine {
namespace {

class ListRunsTest : public ::testing::Test {
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

TEST_F(ListRunsTest, NewestFirstAndPagedByCursorUntilNull) {
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

TEST_F(ListRunsTest, FiltersByTenantStateWorkflowAndEveryLabel) {
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

}  // namespace
}  // namespace epoch::engine
