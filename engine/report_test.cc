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
}  // namespace epoch::engine
