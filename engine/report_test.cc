// What the decider makes of typed reports: the same events the agent's JSON made.
#include "engine/report.h"

#include <gtest/gtest.h>

namespace epoch::engine {
namespace {

TEST(AttemptReport, RoundTripsThroughTheWireForm) {
  AttemptReport r;
  r.attempt_id = "run/step/2/1";
  r.state = ReportedState::kTimedOut;
  r.signal = 9;
  r.reason = "timed out after 10 ms";
  r.usage = Json{{"wall_s", 0.5}};
  r.log = ReportedLog{100, false, 0};
  r.metrics_error = "metrics.json: not JSON";
  auto back = ParseAttemptReport(AttemptReportToJson(r), "r");
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->attempt_id, r.attempt_id);
  EXPECT_EQ(back->state, ReportedState::kTimedOut);
  EXPECT_FALSE(back->exit_code.has_value());
  EXPECT_EQ(back->signal, 9);
  EXPECT_EQ(back->reason, r.reason);
  EXPECT_EQ(back->usage, r.usage);
  ASSERT_TRUE(back->log.has_value());
  EXPECT_EQ(back->log->bytes, 100);
  EXPECT_EQ(back->log->dropped_bytes, 0);
  EXPECT_EQ(back->metrics_error, r.metrics_error);
  for (auto s : {ReportedState::kSucceeded, ReportedState::kFailed, ReportedState::kTimedOut,
                 ReportedState::kCancelled}) {
    r.state = s;
    EXPECT_EQ(ParseAttemptReport(AttemptReportToJson(r), "r")->state, s) << Name(s);
  }
}

TEST(AttemptReport, NullMeansAbsentForOptionalFields) {
  auto r = ParseAttemptReport(
      *ParseJson(R"({"attempt_id": "a/b/1", "state": "cancelled", "exit_code": null,
                     "reason": null, "usage": null, "metrics": null, "outputs": null})"),
      "r");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_FALSE(r->exit_code.has_value());
  EXPECT_FALSE(r->reason.has_value());
  EXPECT_TRUE(r->usage.is_object());
  EXPECT_TRUE(r->outputs.is_array());
}

}  // namespace
// Live-metrics batches are typed at the edge: a wrong type or a bad point, name or
// checkpoint refuses the poll naming the field.
TEST(MetricsBatch, TypedOrRefusedNamingTheField) {
  auto ok = ParseMetricsBatch(Json::parse(R"({"attempt_id": "r/a/1", "from": 3,
      "points": [{"loss": 0.5, "step": 10}], "skipped": 1, "dropped": 2, "truncated": true,
      "checkpoints": [{"file": "e.pt", "sha256": ")" +
                                          std::string(64, 'f') + R"(", "size": 9, "epoch": 1}]})"),
                              "metrics[0]");
  ASSERT_TRUE(ok.ok()) << ok.status().ToString();
  EXPECT_EQ(ok->from, 3);
  EXPECT_EQ(ok->points[0]["loss"], 0.5);
  EXPECT_EQ(ok->skipped, 1);
  EXPECT_EQ(ok->dropped, 2);
  EXPECT_TRUE(ok->truncated);
  ASSERT_EQ(ok->checkpoints.size(), 1u);
  EXPECT_EQ(ok->checkpoints[0].epoch, 1);
  struct Case {
    std::string body;
    std::string message;
  } cases[] = {
      {R"({"from": 0})", "metrics[0].attempt_id: required"},
      {R"({"attempt_id": "r/a/1"})", "metrics[0].from: required"},
      {R"({"attempt_id": "r/a/1", "from": -1})", "metrics[0].from: must be a non-negative"},
      {R"({"attempt_id": "r/a/1", "from": 0, "points": [{"loss": "x"}]})",
       "metrics[0].points[0].loss: must be a finite number"},
      {R"({"attempt_id": "r/a/1", "from": 0, "points": [1]})",
       "metrics[0].points[0]: must be an object"},
      {R"({"attempt_id": "r/a/1", "from": 0, "points": [{")" + std::string(129, 'n') + R"(": 1}]})",
       "metrics[0].points[0]: metric names must be 1 to 128 bytes"},
      {R"({"attempt_id": "r/a/1", "from": 0, "checkpoints": [{"file": "../x", "sha256": ")" +
           std::string(64, 'f') + R"(", "size": 1}]})",
       "metrics[0].checkpoints[0].file: must be a file name"},
      {R"({"attempt_id": "r/a/1", "from": 0, "checkpoints": [{"file": "x", "sha256": "zz", "size": 1}]})",
       "metrics[0].checkpoints[0].sha256: must be 64"},
  };
  for (const auto& c : cases) {
    auto r = ParseMetricsBatch(Json::parse(c.body), "metrics[0]");
    ASSERT_FALSE(r.ok()) << c.body;
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(r.status().message().rfind(c.message, 0), 0u) << r.status().message();
  }
  EXPECT_EQ(ParseMetricsBatches(Json::object()).status().message(), "metrics: must be an array");
}

}  // namespace epoch::engine
