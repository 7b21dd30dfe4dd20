// The container protocol's bodies parsed into commands: types checked, fields named.
#include "api/dto.h"

#include <gtest/gtest.h>

namespace epoch::api {
namespace {

Json J(const char* text) { return *ParseJson(text); }

TEST(ParsePollBody, AnAgentsReportBecomesTypedFields) {
  auto cmd = ParsePollBody("c1", J(R"({"epoch_seen": 3, "running": ["r/a/1"],
      "reports": [{"attempt_id": "r/b/2", "state": "failed", "exit_code": 3, "signal": null,
                   "reason": "exit 3", "usage": {"cpu_s": 1.5}, "metrics": {},
                   "outputs": [], "log_bytes": 10, "log_truncated": true,
                   "log_dropped_bytes": 4, "finished_at": "2026-01-01T00:00:00Z",
                   "some_future_field": [1]}]})"));
  ASSERT_TRUE(cmd.ok()) << cmd.status().ToString();
  EXPECT_EQ(cmd->container, "c1");
  EXPECT_EQ(cmd->epoch_seen, 3u);
  EXPECT_EQ(cmd->running, std::vector<std::string>{"r/a/1"});
  ASSERT_EQ(cmd->reports.size(), 1u);
  const engine::AttemptReport& r = cmd->reports[0];
  EXPECT_EQ(r.attempt_id, "r/b/2");
  EXPECT_EQ(r.state, engine::ReportedState::kFailed);
  EXPECT_EQ(r.exit_code, 3);
  EXPECT_FALSE(r.signal.has_value());
  EXPECT_EQ(r.reason, "exit 3");
  EXPECT_EQ(r.usage["cpu_s"], 1.5);
  ASSERT_TRUE(r.log.has_value());
  EXPECT_EQ(r.log->bytes, 10);
  EXPECT_TRUE(r.log->truncated);
  EXPECT_EQ(r.log->dropped_bytes, 4);
  // And back to the wire form.
  Json back = engine::AttemptReportToJson(r);
  EXPECT_EQ(back["state"], "failed");
  EXPECT_EQ(back["exit_code"], 3);
  EXPECT_TRUE(back["signal"].is_null());
  EXPECT_EQ(back["log_dropped_bytes"], 4);
}

TEST(ParsePollBody, AbsentFieldsTakeTheirEmptyForms) {
  auto cmd =
      ParsePollBody("c1", J(R"({"reports": [{"attempt_id": "r/b/1", "state": "succeeded"}]})"));
  ASSERT_TRUE(cmd.ok()) << cmd.status().ToString();
  EXPECT_EQ(cmd->epoch_seen, 0u);
  const engine::AttemptReport& r = cmd->reports[0];
  EXPECT_EQ(r.state, engine::ReportedState::kSucceeded);
  EXPECT_TRUE(r.usage.is_object() && r.usage.empty());
  EXPECT_TRUE(r.metrics.is_object() && r.metrics.empty());
  EXPECT_TRUE(r.outputs.is_array() && r.outputs.empty());
  EXPECT_FALSE(r.exit_code || r.signal || r.reason || r.log || r.outputs_error || r.metrics_error);
}

TEST(ParsePollBody, AWrongTypeIsRefusedNamingTheField) {
  struct Case {
    const char* body;
    const char* field;
  } cases[] = {
      {R"([])", "body"},
      {R"({"epoch_seen": -1})", "epoch_seen"},
      {R"({"epoch_seen": "2"})", "epoch_seen"},
      {R"({"running": "r/a/1"})", "running"},
      {R"({"running": ["r/a/1", 7]})", "running[1]"},
      {R"({"reports": {}})", "reports"},
      {R"({"reports": [7]})", "reports[0]"},
      {R"({"reports": [{"state": "failed"}]})", "reports[0].attempt_id"},
      {R"({"reports": [{"attempt_id": "", "state": "failed"}]})", "reports[0].attempt_id"},
      {R"({"reports": [{"attempt_id": "r/a/1"}]})", "reports[0].state"},
      {R"({"reports": [{"attempt_id": "r/a/1", "state": "exploded"}]})", "reports[0].state"},
      {R"({"reports": [{"attempt_id": "r/a/1", "state": "failed", "exit_code": "3"}]})",
       "reports[0].exit_code"},
      {R"({"reports": [{"attempt_id": "r/a/1", "state": "failed", "exit_code": 1.5}]})",
       "reports[0].exit_code"},
      {R"({"reports": [{"attempt_id": "r/a/1", "state": "failed", "exit_code": 4294967296}]})",
       "reports[0].exit_code"},
      {R"({"reports": [{"attempt_id": "r/a/1", "state": "failed", "signal": true}]})",
       "reports[0].signal"},
      {R"({"reports": [{"attempt_id": "r/a/1", "state": "failed", "reason": 9}]})",
       "reports[0].reason"},
      {R"({"reports": [{"attempt_id": "r/a/1", "state": "failed", "usage": []}]})",
       "reports[0].usage"},
      {R"({"reports": [{"attempt_id": "r/a/1", "state": "succeeded", "metrics": [1]}]})",
       "reports[0].metrics"},
      {R"({"reports": [{"attempt_id": "r/a/1", "state": "succeeded", "outputs": {}}]})",
       "reports[0].outputs"},
      {R"({"reports": [{"attempt_id": "r/a/1", "state": "succeeded", "outputs": ["m"]}]})",
       "reports[0].outputs[0]"},
      {R"({"reports": [{"attempt_id": "r/a/1", "state": "failed", "log_bytes": -5}]})",
       "reports[0].log_bytes"},
      {R"({"reports": [{"attempt_id": "r/a/1", "state": "failed", "log_truncated": "no"}]})",
       "reports[0].log_truncated"},
      {R"({"reports": [{"attempt_id": "r/a/1", "state": "succeeded", "outputs_error": {}}]})",
       "reports[0].outputs_error"},
      {R"({"reports": [{"attempt_id": "r/a/1", "state": "succeeded"},
                       {"attempt_id": "r/a/2", "state": "succeeded", "metrics_error": 1}]})",
       "reports[1].metrics_error"},
  };
  for (const auto& c : cases) {
    auto cmd = ParsePollBody("c1", J(c.body));
    ASSERT_FALSE(cmd.ok()) << c.body;
    EXPECT_EQ(cmd.status().code(), StatusCode::kInvalidArgument) << c.body;
    EXPECT_EQ(cmd.status().message().rfind(std::string(c.field) + ": ", 0), 0u)
        << c.body << " -> " << cmd.status().message();
  }
}

TEST(ParseRegisterBody, TypedOrRefusedNamingTheField) {
  auto cmd = ParseRegisterBody("c2", J(R"({"backend": "local", "handle": "h", "host": "n1",
      "pid": 42, "cpu_millis": 2000, "memory_bytes": 1073741824, "gpus": [], "cuda": {},
      "isolation": {"sandbox": "on"}, "enforcement": {"mode": "off"}, "epoch_seen": 2,
      "running": ["r/a/1"]})"));
  ASSERT_TRUE(cmd.ok()) << cmd.status().ToString();
  EXPECT_EQ(cmd->container, "c2");
  EXPECT_EQ(cmd->pid, 42);
  EXPECT_EQ(cmd->cpu_millis, 2000);
  EXPECT_EQ(cmd->memory_bytes, 1073741824);
  EXPECT_EQ(cmd->isolation["sandbox"], "on");
  EXPECT_EQ(cmd->epoch_seen, 2u);
  EXPECT_EQ(cmd->running.size(), 1u);

  struct Case {
    const char* body;
    const char* field;
  } cases[] = {
      {R"({"cpu_millis": "2000", "memory_bytes": 1})", "cpu_millis"},
      {R"({"cpu_millis": 1, "memory_bytes": 1, "pid": "x"})", "pid"},
      {R"({"cpu_millis": 1, "memory_bytes": 1, "host": 5})", "host"},
      {R"({"cpu_millis": 1, "memory_bytes": 1, "gpus": {}})", "gpus"},
      {R"({"cpu_millis": 1, "memory_bytes": 1, "cuda": []})", "cuda"},
      {R"({"cpu_millis": 1, "memory_bytes": 1, "isolation": "on"})", "isolation"},
      {R"({"cpu_millis": 1, "memory_bytes": 1, "epoch_seen": 1.5})", "epoch_seen"},
      {R"({"cpu_millis": 0, "memory_bytes": 1})", "cpu_millis"},
  };
  for (const auto& c : cases) {
    auto r = ParseRegisterBody("c2", J(c.body));
    ASSERT_FALSE(r.ok()) << c.body;
    EXPECT_EQ(r.status().message().rfind(std::string(c.field), 0), 0u)
        << c.body << " -> " << r.status().message();
  }
}

TEST(ParseSubmitBody, TypedOrRefusedNamingTheField) {
  auto cmd = ParseSubmitBody(J(R"({"workflow": "w", "version": 2, "params": {"lr": 0.1},
      "labels": {"team": "ml"}, "priority": -5})"));
  ASSERT_TRUE(cmd.ok()) << cmd.status().ToString();
  EXPECT_EQ(cmd->workflow, "w");
  EXPECT_EQ(cmd->version, 2);
  EXPECT_EQ(cmd->params, J(R"({"lr": 0.1})"));
  EXPECT_EQ(cmd->labels, J(R"({"team": "ml"})"));
  EXPECT_EQ(cmd->priority, -5);
  EXPECT_FALSE(cmd->definition.has_value());
  auto inline_def = ParseSubmitBody(J(R"({"definition": {"name": "x"}})"));
  ASSERT_TRUE(inline_def.ok());
  EXPECT_EQ((*inline_def->definition)["name"], "x");
  struct Case {
    const char* body;
    const char* message;
  } cases[] = {
      {R"({"workflow": "w", "owner": "me"})", "owner: unknown field"},
      {R"({})", "workflow: required string (or give a definition)"},
      {R"({"workflow": 7})", "workflow: required string (or give a definition)"},
      {R"({"definition": []})", "definition: must be an object"},
      {R"({"workflow": "w", "version": 0})", "version: must be an integer >= 1"},
      {R"({"workflow": "w", "params": [1]})", "params: must be an object"},
      {R"({"workflow": "w", "labels": {"a": 1}})", "labels.a: must be a string"},
      {R"({"workflow": "w", "priority": 1001})", "priority: must be an integer in [-1000, 1000]"},
  };
  for (const auto& c : cases) {
    auto r = ParseSubmitBody(J(c.body));
    ASSERT_FALSE(r.ok()) << c.body;
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(r.status().message(), c.message) << c.body;
  }
}

TEST(ParseInvalidateBody, NonEmptyStringsOfKnownFields) {
  auto cmd = ParseInvalidateBody(J(R"({"workflow": "w", "step": "train"})"));
  ASSERT_TRUE(cmd.ok()) << cmd.status().ToString();
  EXPECT_EQ(cmd->workflow, "w");
  EXPECT_EQ(cmd->step, "train");
  EXPECT_TRUE(cmd->key.empty());
  EXPECT_EQ(ParseInvalidateBody(J(R"({"run": "r"})")).status().message(),
            "run: unknown field (expected key, workflow, step)");
  EXPECT_EQ(ParseInvalidateBody(J(R"({"key": ""})")).status().message(),
            "key: must be a non-empty string");
  EXPECT_EQ(ParseInvalidateBody(J(R"({"step": 3})")).status().message(),
            "step: must be a non-empty string");
}

}  // namespace
}  // namespace epoch::api
