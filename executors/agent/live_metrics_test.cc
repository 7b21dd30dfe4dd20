#include "executors/agent/live_metrics.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>

#include "common/files.h"
#include "common/sha256.h"
#include "executors/test_util.h"

namespace epoch::executors {
namespace {

using namespace std::chrono_literals;
using testing::TempDir;
using testing::WriteText;
using Time = LiveMetrics::Time;

void Append(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary | std::ios::app) << text;
}

// A workspace with an empty metrics file and a checkpoint dir, as the agent makes them.
struct Fixture {
  TempDir tmp;
  std::string ws = tmp / "runs/r1";
  std::string metrics = ws + "/s/1/metrics.ndjson";
  std::string ckpt = ws + "/s/checkpoints";
  Time t0 = LiveMetrics::Clock::now();

  Fixture() {
    EXPECT_TRUE(MakeDirs(ws + "/s/1").ok());
    EXPECT_TRUE(MakeDirs(ckpt).ok());
    WriteText(metrics, "");
  }
  LiveMetricsSpec Spec(int64_t max_points = 100000, int64_t max_bytes = 16 << 20) const {
    return LiveMetricsSpec{ws, metrics, ckpt, 1000ms, max_points, max_bytes};
  }
};

// The one batch of `c` (fails the test if there is not exactly one).
Json OnlyBatch(const LiveMetrics::Collected& c) {
  EXPECT_EQ(c.batches.size(), 1u) << c.batches.dump();
  return c.batches.empty() ? Json() : c.batches[0];
}

TEST(LiveMetricsTest, NumbersPointsAcrossPartialLines) {
  Fixture f;
  LiveMetrics lm;
  lm.Watch("r1/s/1", f.Spec(), f.t0);
  Append(f.metrics, "{\"loss\": 0.5, \"step\": 1}\n{\"loss\": 0.4");
  Json b = OnlyBatch(lm.Collect(f.t0 + 1s));
  EXPECT_EQ(b["attempt_id"], "r1/s/1");
  EXPECT_EQ(b["from"], 0);
  EXPECT_EQ(b["points"], Json::parse(R"([{"loss": 0.5, "step": 1}])"));
  EXPECT_EQ(b["skipped"], 0);
  EXPECT_EQ(b["dropped"], 0);
  EXPECT_EQ(b["truncated"], false);
  EXPECT_EQ(b["checkpoints"], Json::array());
  // The second half of the line: one point, numbered 1 (resent with point 0, unacked).
  Append(f.metrics, ", \"step\": 2}\r\n\n");
  b = OnlyBatch(lm.Collect(f.t0 + 2s));
  EXPECT_EQ(b["from"], 0);
  EXPECT_EQ(b["points"], Json::parse(R"([{"loss": 0.5, "step": 1}, {"loss": 0.4, "step": 2}])"));
  EXPECT_EQ(b["skipped"], 0);  // the blank line is no line
}

TEST(LiveMetricsTest, SkipsWhatIsNotANumberAndCountsIt) {
  Fixture f;
  LiveMetrics lm;
  lm.Watch("a", f.Spec(), f.t0);
  const std::string n128(128, 'n'), n129(129, 'n');
  Append(f.metrics,
         "[1, 2]\n"                      // not an object: 1
         "\"x\"\n"                       // 1
         "not json at all\n"             // 1
         "{\"a\": \"str\", \"b\": 1}\n"  // a: 1, point {b}
         "{\"" +
             n129 + "\": 1, \"" + n128 +
             "\": 2}\n"                                             // 129-byte name: 1
             "{\"c\": true, \"d\": null, \"e\": [1], \"f\": {}}\n"  // 4 members + empty line: 5
             "{\"neg\": -3, \"big\": 18446744073709551615, \"f\": 1.5e300}\n");
  Json b = OnlyBatch(lm.Collect(f.t0 + 1s));
  EXPECT_EQ(b["skipped"], 10);
  EXPECT_EQ(b["points"],
            Json::array({{{"b", 1}},
                         {{n128, 2}},
                         {{"neg", -3}, {"big", 18446744073709551615ull}, {"f", 1.5e300}}}));
  // A line longer than 64 KiB is one skipped line, written in pieces or not.
  Append(f.metrics, "{\"x\": \"" + std::string(40000, 'y'));
  lm.Collect(f.t0 + 1500ms);  // not due; reads the first half
  Append(f.metrics, std::string(40000, 'y') + "\"}\n{\"after\": 1}\n");
  b = OnlyBatch(lm.Collect(f.t0 + 2s));
  EXPECT_EQ(b["skipped"], 11);
  EXPECT_EQ(b["points"].back(), Json({{"after", 1}}));
  EXPECT_EQ(b["points"].size(), 4u);
}

TEST(LiveMetricsTest, CapsPointsWithBoundedMemory) {
  Fixture f;
  LiveMetrics lm;
  lm.Watch("a", f.Spec(10), f.t0);
  {
    std::ofstream out(f.metrics, std::ios::binary);
    for (int i = 0; i < 1000000; ++i) out << "{\"loss\": 0.5, \"step\": " << i << "}\n";
  }
  // One collection reads about 1 MiB, not the whole file (~30 MB).
  auto c = lm.Collect(f.t0 + 1s);
  Json b = OnlyBatch(c);
  EXPECT_EQ(b["points"].size(), 10u);
  EXPECT_EQ(b["points"][9], Json({{"loss", 0.5}, {"step", 9}}));
  EXPECT_EQ(b["truncated"], true);
  EXPECT_GT(b["dropped"].get<int64_t>(), 10000);
  EXPECT_LT(b["dropped"].get<int64_t>(), 100000);
  EXPECT_LE(lm.Unacked("a"), 10u);
  lm.Ack(Json{{"a", 10}}, c.sent);
  EXPECT_EQ(lm.Unacked("a"), 0u);
  for (int i = 2; i < 6; ++i) {
    c = lm.Collect(f.t0 + std::chrono::seconds(i));
    EXPECT_LE(lm.Unacked("a"), 10u);
    if (!c.batches.empty()) {
      EXPECT_EQ(c.batches[0]["points"], Json::array());
    }
  }
  Json last = lm.Finish("a", f.t0 + 7s);
  EXPECT_EQ(last, Json({{"loss", 0.5}, {"step", 999999}}));
  c = lm.Collect(f.t0 + 7s);
  b = OnlyBatch(c);
  EXPECT_EQ(b["from"], 10);
  EXPECT_EQ(b["points"], Json::array());
  EXPECT_EQ(b["dropped"], 999990);
  EXPECT_EQ(b["truncated"], true);
  lm.Ack(Json{{"a", 10}}, c.sent);
  EXPECT_EQ(lm.Watched(), 0u);  // finished and acknowledged: forgotten
}

TEST(LiveMetricsTest, CapsBytes) {
  Fixture f;
  LiveMetrics lm;
  lm.Watch("a", f.Spec(100, 20), f.t0);  // {"a":1} is 7 bytes: the third reaches 20
  for (int i = 1; i <= 5; ++i) Append(f.metrics, "{\"a\": " + std::to_string(i) + "}\n");
  Json b = OnlyBatch(lm.Collect(f.t0 + 1s));
  EXPECT_EQ(b["points"], Json::parse(R"([{"a": 1}, {"a": 2}, {"a": 3}])"));
  EXPECT_EQ(b["dropped"], 2);
  EXPECT_EQ(b["truncated"], true);
}

TEST(LiveMetricsTest, SendsAtMostEveryIntervalUnlessFinished) {
  Fixture f;
  LiveMetrics lm;
  lm.Watch("a", f.Spec(), f.t0);
  Append(f.metrics, "{\"a\": 1}\n");
  EXPECT_TRUE(lm.Collect(f.t0 + 500ms).batches.empty());
  EXPECT_EQ(lm.Unacked("a"), 1u);  // read, waiting for its interval
  auto c = lm.Collect(f.t0 + 1000ms);
  EXPECT_EQ(OnlyBatch(c)["points"].size(), 1u);
  lm.Ack(Json{{"a", 1}}, c.sent);
  Append(f.metrics, "{\"a\": 2}\n");
  EXPECT_TRUE(lm.Collect(f.t0 + 1500ms).batches.empty());
  Append(f.metrics, "{\"a\": 3}");  // no '\n': complete once the step has ended
  EXPECT_EQ(lm.Finish("a", f.t0 + 1600ms), Json({{"a", 3}}));
  ASSERT_TRUE(lm.NextCheck().has_value());
  EXPECT_LE(*lm.NextCheck(), f.t0 + 1600ms);
  Json b = OnlyBatch(lm.Collect(f.t0 + 1600ms));
  EXPECT_EQ(b["from"], 1);
  EXPECT_EQ(b["points"], Json::parse(R"([{"a": 2}, {"a": 3}])"));
  // Not acknowledged: sent again, an interval later.
  EXPECT_TRUE(lm.Collect(f.t0 + 2000ms).batches.empty());
  EXPECT_EQ(OnlyBatch(lm.Collect(f.t0 + 2600ms))["points"].size(), 2u);
}

TEST(LiveMetricsTest, AckDropsPointsAndWithoutAckTheyAreResent) {
  Fixture f;
  LiveMetrics lm(LiveMetrics::Limits{.body_points = 2});
  lm.Watch("a", f.Spec(), f.t0);
  for (int i = 0; i < 5; ++i) Append(f.metrics, "{\"i\": " + std::to_string(i) + "}\n");
  auto c = lm.Collect(f.t0 + 1s);
  Json b = OnlyBatch(c);
  EXPECT_EQ(b["from"], 0);
  EXPECT_EQ(b["points"], Json::parse(R"([{"i": 0}, {"i": 1}])"));
  // No answer: the same points again, an interval later (never sooner).
  EXPECT_TRUE(lm.Collect(f.t0 + 1500ms).batches.empty());
  b = OnlyBatch(lm.Collect(f.t0 + 2s));
  EXPECT_EQ(b["from"], 0);
  EXPECT_EQ(b["points"], Json::parse(R"([{"i": 0}, {"i": 1}])"));
  // Acknowledged while points wait behind the body's cap: the next go at once.
  lm.Ack(Json{{"a", 2}, {"unknown", 7}, {"bad", "x"}}, c.sent);
  EXPECT_EQ(lm.Unacked("a"), 3u);
  c = lm.Collect(f.t0 + 2s);
  b = OnlyBatch(c);
  EXPECT_EQ(b["from"], 2);
  EXPECT_EQ(b["points"], Json::parse(R"([{"i": 2}, {"i": 3}])"));
  // A partial ack (the master took only point 2): the rest again, an interval later.
  lm.Ack(Json{{"a", 3}}, c.sent);
  EXPECT_TRUE(lm.Collect(f.t0 + 2s).batches.empty());
  c = lm.Collect(f.t0 + 3s);
  b = OnlyBatch(c);
  EXPECT_EQ(b["from"], 3);
  EXPECT_EQ(b["points"], Json::parse(R"([{"i": 3}, {"i": 4}])"));
  // Malformed acks change nothing.
  lm.Ack(Json::array({1}), c.sent);
  lm.Ack(Json{{"a", -1}}, c.sent);
  EXPECT_EQ(lm.Unacked("a"), 2u);
}

TEST(LiveMetricsTest, RecordsCheckpointsDeclaredByCheckpointJsonAndMetricsLines) {
  Fixture f;
  // An earlier attempt's declaration is not this attempt's.
  WriteText(f.ckpt + "/epoch-0.pt", "zero");
  WriteText(f.ckpt + "/checkpoint.json", R"({"file": "epoch-0.pt", "epoch": 0})");
  LiveMetrics lm;
  lm.Watch("a", f.Spec(), f.t0);
  EXPECT_TRUE(lm.Collect(f.t0 + 1s).batches.empty());

  WriteText(f.ckpt + "/epoch-1.pt", "abc");
  WriteText(f.ckpt + "/checkpoint.json.tmp", R"({"file": "epoch-1.pt", "epoch": 1})");
  ASSERT_EQ(
      rename((f.ckpt + "/checkpoint.json.tmp").c_str(), (f.ckpt + "/checkpoint.json").c_str()), 0);
  auto c = lm.Collect(f.t0 + 2s);
  Json b = OnlyBatch(c);
  EXPECT_EQ(b["points"], Json::array());
  EXPECT_EQ(
      b["checkpoints"],
      Json::array(
          {{{"file", "epoch-1.pt"}, {"sha256", Sha256Hex("abc")}, {"size", 3}, {"epoch", 1}}}));
  lm.Ack(Json{{"a", 0}}, c.sent);
  EXPECT_TRUE(lm.Collect(f.t0 + 3s).batches.empty());  // recorded once

  WriteText(f.ckpt + "/epoch-2.pt", "defg");
  Append(f.metrics, R"({"checkpoint": "epoch-2.pt", "epoch": 2, "loss": 0.25})"
                    "\n"
                    R"({"checkpoint": "epoch-2.pt"})"
                    "\n");
  b = OnlyBatch(lm.Collect(f.t0 + 4s));
  EXPECT_EQ(b["points"], Json::parse(R"([{"epoch": 2, "loss": 0.25}])"));
  EXPECT_EQ(b["skipped"], 0);  // a line that only declares is no point, and not skipped
  EXPECT_EQ(
      b["checkpoints"],
      Json::array(
          {{{"file", "epoch-2.pt"}, {"sha256", Sha256Hex("defg")}, {"size", 4}, {"epoch", 2}}}));
  // An epoch that is not a non-negative integer is left out (the master refuses one).
  WriteText(f.ckpt + "/last.pt", "h");
  WriteText(f.ckpt + "/checkpoint.json", R"({"file": "last.pt", "epoch": -1})");
  b = OnlyBatch(lm.Collect(f.t0 + 5s));
  EXPECT_EQ(b["checkpoints"].back(),
            Json({{"file", "last.pt"}, {"sha256", Sha256Hex("h")}, {"size", 1}}));
}

TEST(LiveMetricsTest, RefusesSymlinksAndNamesOutsideTheCheckpointDir) {
  Fixture f;
  WriteText(f.ckpt + "/real.pt", "real");
  WriteText(f.ws + "/s/outside.pt", "outside");
  ASSERT_EQ(symlink("real.pt", (f.ckpt + "/link.pt").c_str()), 0);
  ASSERT_TRUE(MakeDirs(f.ckpt + "/adir").ok());
  LiveMetrics lm;
  lm.Watch("a", f.Spec(), f.t0);
  for (const char* bad : {"link.pt", "../outside.pt", "..", ".", "", "adir", "missing.pt"}) {
    Append(f.metrics, Json{{"checkpoint", bad}, {"x", 1}}.dump() + "\n");
  }
  WriteText(f.ckpt + "/checkpoint.json", R"({"file": "sub/real.pt"})");
  Json b = OnlyBatch(lm.Collect(f.t0 + 1s));
  EXPECT_EQ(b["points"].size(), 7u);
  EXPECT_EQ(b["checkpoints"], Json::array());
  // checkpoint.json itself a symlink (to a valid declaration): not followed.
  WriteText(f.ws + "/decl.json", R"({"file": "real.pt"})");
  ASSERT_EQ(unlink((f.ckpt + "/checkpoint.json").c_str()), 0);
  ASSERT_EQ(symlink((f.ws + "/decl.json").c_str(), (f.ckpt + "/checkpoint.json").c_str()), 0);
  EXPECT_EQ(OnlyBatch(lm.Collect(f.t0 + 2s))["checkpoints"], Json::array());
}

TEST(LiveMetricsTest, NeverReadsAMetricsFileOutsideTheWorkspace) {
  Fixture f;
  WriteText(f.tmp / "secret.ndjson", "{\"secret\": 42}\n");
  ASSERT_EQ(unlink(f.metrics.c_str()), 0);
  ASSERT_EQ(symlink((f.tmp / "secret.ndjson").c_str(), f.metrics.c_str()), 0);
  LiveMetrics lm;
  lm.Watch("a", f.Spec(), f.t0);
  EXPECT_TRUE(lm.Collect(f.t0 + 1s).batches.empty());
  EXPECT_EQ(lm.Finish("a", f.t0 + 2s), Json::object());
  EXPECT_EQ(lm.Watched(), 0u);  // nothing to send: forgotten at once
}

TEST(LiveMetricsTest, FinishGivesTheLastValueOfEverySeries) {
  Fixture f;
  LiveMetrics lm;
  lm.Watch("a", f.Spec(2), f.t0);
  Append(f.metrics,
         "{\"loss\": 0.5, \"step\": 1}\n{\"loss\": 0.3, \"step\": 2, \"acc\": 0.8}\n"
         "{\"loss\": 0.2, \"lr\": \"x\"}");  // over the cap, last line without '\n'
  EXPECT_EQ(lm.Finish("a", f.t0 + 10ms), Json({{"loss", 0.2}, {"step", 2}, {"acc", 0.8}}));
  Json b = OnlyBatch(lm.Collect(f.t0 + 10ms));
  EXPECT_EQ(b["points"].size(), 2u);
  EXPECT_EQ(b["dropped"], 1);
  EXPECT_EQ(b["skipped"], 1);
  EXPECT_EQ(lm.Finish("never-watched", f.t0), Json::object());
}

}  // namespace
}  // namespace epoch::executors
