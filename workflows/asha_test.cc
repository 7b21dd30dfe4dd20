// ASHA and Hyperband decisions (asha.h) from scripted values: the configuration and
// its errors, the rungs of each bracket, single judgements with their cutoffs worked
// out by hand, and whole sweeps of scripted curves, no processes.
#include "workflows/asha.h"

#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <set>
#include <string>
#include <vector>

namespace epoch::workflows {
namespace {

Asha Parse(const char* text, std::vector<std::string>* problems = nullptr) {
  std::vector<std::string> local;
  auto a = ParseAsha(Json::parse(text), "steps[1].sweep", problems ? problems : &local);
  EXPECT_TRUE(a.has_value() || problems) << (local.empty() ? "" : local[0]);
  return a.value_or(Asha{});
}

std::vector<std::string> Problems(const char* text) {
  std::vector<std::string> problems;
  EXPECT_FALSE(ParseAsha(Json::parse(text), "steps[1].sweep", &problems).has_value()) << text;
  return problems;
}

TEST(AshaTest, ParsesTheRangeAndDefaultsAndNamesEachProblem) {
  Asha a = Parse(R"({"method": "asha", "maxResource": 27})");
  EXPECT_EQ(a.kind, Asha::Kind::kAsha);
  EXPECT_EQ(a.resource, "epoch");
  EXPECT_EQ(a.min_resource, 1);
  EXPECT_EQ(a.max_resource, 27);
  EXPECT_EQ(a.reduction, 3);
  EXPECT_EQ(a.brackets, 1);
  Asha h = Parse(R"({"method": "hyperband", "resource": "step", "minResource": 1,
                     "maxResource": 27, "reduction": 3})");
  EXPECT_EQ(h.kind, Asha::Kind::kHyperband);
  EXPECT_EQ(h.resource, "step");
  EXPECT_EQ(h.brackets, 4) << "floor(log_3 27) + 1";
  EXPECT_EQ(Parse(R"({"method": "hyperband", "maxResource": 27, "brackets": 2})").brackets, 2);

  EXPECT_EQ(Problems(R"({"method": "asha"})"),
            std::vector<std::string>{"steps[1].sweep.maxResource: required (the resource at "
                                     "which a trial has run in full)"});
  EXPECT_EQ(Problems(R"({"method": "asha", "minResource": 9, "maxResource": 9})"),
            std::vector<std::string>{"steps[1].sweep.maxResource: must be above minResource (9)"});
  EXPECT_EQ(Problems(R"({"method": "asha", "minResource": 0, "maxResource": 9})"),
            std::vector<std::string>{"steps[1].sweep.minResource: must be a number above 0"});
  EXPECT_EQ(Problems(R"({"method": "asha", "maxResource": 9, "reduction": 1.5})"),
            std::vector<std::string>{"steps[1].sweep.reduction: must be a number of at least 2"});
  EXPECT_EQ(
      Problems(R"({"method": "asha", "maxResource": 9, "brackets": 2})"),
      std::vector<std::string>{"steps[1].sweep.brackets: is for hyperband (asha is one bracket)"});
  EXPECT_EQ(Problems(R"({"method": "hyperband", "maxResource": 27, "brackets": 5})"),
            std::vector<std::string>{"steps[1].sweep.brackets: must be an integer from 1 to 4 "
                                     "(floor(log_3(27/1)) + 1)"});
  EXPECT_EQ(Problems(R"({"method": "asha", "maxResource": 9, "resource": ""})"),
            std::vector<std::string>{
                "steps[1].sweep.resource: must be the name of a live metric (e.g. \"epoch\")"});
  EXPECT_EQ(Problems(R"({"method": "grid", "maxResource": 9})"),
            std::vector<std::string>{
                "steps[1].sweep.method: must be \"asha\" or \"hyperband\" for early stopping"});
  EXPECT_EQ(Problems(R"({"method": "asha", "maxResource": "lots", "reduction": 0})").size(), 2u);
}

TEST(AshaTest, RungsOfEachBracket) {
  Asha a = Parse(R"({"method": "hyperband", "minResource": 1, "maxResource": 27})");
  EXPECT_EQ(Rungs(a, 0), (std::vector<double>{1, 3, 9}));
  EXPECT_EQ(Rungs(a, 1), (std::vector<double>{3, 9}));
  EXPECT_EQ(Rungs(a, 2), (std::vector<double>{9}));
  EXPECT_TRUE(Rungs(a, 3).empty()) << "the last bracket runs every trial in full";
  EXPECT_EQ(BracketOf(a, 0), 0);
  EXPECT_EQ(BracketOf(a, 5), 1);
  EXPECT_EQ(BracketOf(a, 7), 3);
  Asha two = Parse(R"({"method": "asha", "minResource": 2, "maxResource": 20, "reduction": 2})");
  EXPECT_EQ(Rungs(two, 0), (std::vector<double>{2, 4, 8, 16}));
  EXPECT_EQ(BracketOf(two, 7), 0);
}

// Cutoffs worked out by hand: rung 0 holds 0.5, 0.7, 0.6 (sorted 0.5, 0.6, 0.7); the
// 2/3 quantile sits at position 2/3 * 2 = 1.333: 0.6 + 0.1 * 0.333 = 0.6333.
TEST(AshaTest, AJudgementComparesWithTheTrialsJudgedAtTheRungBefore) {
  Asha a = Parse(R"({"method": "asha", "minResource": 1, "maxResource": 9})");
  std::vector<RungResult> rung0 = {{0, 0, 0.5}, {1, 0, 0.7}, {2, 0, 0.6}};

  RungJudgement first = JudgeAtRung(a, "accuracy", true, {}, 0, 1, 0.1);
  EXPECT_TRUE(first.judged);
  EXPECT_FALSE(first.stop);
  EXPECT_FALSE(first.cutoff.has_value());
  EXPECT_EQ(first.reason, "rung 0 (epoch 1): accuracy 0.1: the first trial at this rung goes on");

  RungJudgement on = JudgeAtRung(a, "accuracy", true, rung0, 3, 1, 0.65);
  EXPECT_TRUE(on.judged);
  EXPECT_EQ(on.rung, 0);
  EXPECT_EQ(on.compared, 3);
  ASSERT_TRUE(on.cutoff.has_value());
  EXPECT_NEAR(*on.cutoff, 0.63333, 1e-4);
  EXPECT_FALSE(on.stop);
  RungJudgement off = JudgeAtRung(a, "accuracy", true, rung0, 3, 1, 0.62);
  EXPECT_TRUE(off.stop);
  EXPECT_EQ(off.reason,
            "rung 0 (epoch 1): accuracy 0.62 is below the best 1/3 of the 4 trials judged here "
            "(cutoff 0.633333): stopped");

  // Minimizing a loss: the cutoff is the 1/3 quantile, 0.6 - 0.1 * 0.333 = 0.5667.
  RungJudgement low = JudgeAtRung(a, "loss", false, rung0, 3, 1, 0.55);
  ASSERT_TRUE(low.cutoff.has_value());
  EXPECT_NEAR(*low.cutoff, 0.56667, 1e-4);
  EXPECT_FALSE(low.stop);
  RungJudgement high = JudgeAtRung(a, "loss", false, rung0, 3, 1, 0.58);
  EXPECT_TRUE(high.stop);
  EXPECT_NE(high.reason.find("loss 0.58 is above the best 1/3"), std::string::npos) << high.reason;

  // Between rungs, or at a rung it was judged at already: no judgement.
  EXPECT_FALSE(JudgeAtRung(a, "accuracy", true, rung0, 3, 0.5, 0.9).judged);
  EXPECT_FALSE(JudgeAtRung(a, "accuracy", true, rung0, 1, 2, 0.9).judged);
  // A trial that skipped rung 0 between reports is judged once, at rung 1 (epoch 3),
  // against rung 1's trials only.
  RungJudgement skip = JudgeAtRung(a, "accuracy", true, rung0, 4, 4, 0.2);
  EXPECT_TRUE(skip.judged);
  EXPECT_EQ(skip.rung, 1);
  EXPECT_EQ(skip.milestone, 3);
  EXPECT_EQ(skip.compared, 0);
  EXPECT_FALSE(skip.stop);
  std::vector<RungResult> later = rung0;
  later.push_back({4, 1, 0.2});
  EXPECT_FALSE(JudgeAtRung(a, "accuracy", true, later, 4, 5, 0.2).judged)
      << "rung 0 below a judged rung is not judged any more";

  // Hyperband: a trial is compared only within its bracket.
  Asha h = Parse(R"({"method": "hyperband", "minResource": 1, "maxResource": 9})");
  ASSERT_EQ(h.brackets, 3);
  std::vector<RungResult> mixed = {{0, 0, 0.9}, {3, 0, 0.1}};              // brackets 0 and 0
  RungJudgement b1 = JudgeAtRung(h, "accuracy", true, mixed, 1, 3, 0.05);  // bracket 1: rung 0 = 3
  EXPECT_TRUE(b1.judged);
  EXPECT_EQ(b1.milestone, 3);
  EXPECT_EQ(b1.compared, 0) << "bracket 0's trials are not its peers";
  RungJudgement b0 = JudgeAtRung(h, "accuracy", true, mixed, 6, 1, 0.5);
  EXPECT_EQ(b0.compared, 2);
  EXPECT_NE(b0.reason.find(", bracket 0)"), std::string::npos) << b0.reason;
}

// Nine trials whose accuracy follows q * (1 - exp(-epoch / 3)), q their final quality,
// reporting every epoch up to 9, `parallel` at a time in trial order (as a sweep
// queues them). Returns trial -> the rung it was stopped at (absent: ran in full), and
// the epochs spent in all.
struct Outcome {
  std::map<int, int> stopped;
  int epochs = 0;
};
Outcome Simulate(const Asha& a, const std::vector<double>& quality, int parallel) {
  Outcome out;
  std::vector<RungResult> recorded;
  std::vector<int> epoch(quality.size(), 0);
  std::set<int> running, done;
  size_t next = 0;
  while (done.size() < quality.size()) {
    while (static_cast<int>(running.size()) < parallel && next < quality.size()) {
      running.insert(static_cast<int>(next++));
    }
    // Each running trial reports its next epoch, in trial order (deterministic).
    for (int t : std::set<int>(running)) {
      int e = ++epoch[static_cast<size_t>(t)];
      ++out.epochs;
      double v = quality[static_cast<size_t>(t)] * (1 - std::exp(-e / 3.0));
      RungJudgement j = JudgeAtRung(a, "accuracy", true, recorded, t, e, v);
      if (j.judged) recorded.push_back({t, j.rung, v});
      if (j.stop) out.stopped[t] = j.rung;
      if (j.stop || e >= a.max_resource) {
        running.erase(t);
        done.insert(t);
      }
    }
  }
  return out;
}

TEST(AshaTest, ScriptedCurvesStopTheBadTrialsEarlyAndKeepTheBest) {
  const std::vector<double> quality = {0.6, 0.2, 0.9, 0.3, 0.5, 0.85, 0.1, 0.4, 0.7};
  Asha a = Parse(R"({"method": "asha", "minResource": 1, "maxResource": 9})");
  // Three at a time: trials 0-2 reach epoch 1 together, and so on.
  Outcome o = Simulate(a, quality, 3);
  EXPECT_EQ(o.stopped.count(2), 0u) << "the best trial (0.9) runs in full";
  // Worked out from the rule (c = 1 - exp(-1/3) scales every epoch-1 value alike):
  // at epoch 1, 1 (0.2) stops below 0 (0.6); 2 (0.9) is above the cutoff 0.467 of
  // {0.2, 0.6}; 3 (0.3) meets the cutoff 0.7 of {0.2, 0.6, 0.9}, 4 (0.5) 0.6 of four:
  // both stop; 5 (0.85) goes on; 6 (0.1) and 7 (0.4) stop. At epoch 3 trial 0 is the
  // first at rung 1 and goes on (and runs in full); 8 (0.7) meets {0.6, 0.9, 0.85}
  // there, cutoff 0.867: it stops at rung 1.
  const std::map<int, int> expected = {{1, 0}, {3, 0}, {4, 0}, {6, 0}, {7, 0}, {8, 1}};
  EXPECT_EQ(o.stopped, expected);
  EXPECT_LT(o.epochs, 9 * 9 / 2) << "less than half of the 81 epochs a grid spends";

  // The same values and order give the same decisions (replay makes no new ones).
  EXPECT_EQ(Simulate(a, quality, 3).stopped, o.stopped);
  // One at a time, the early trials set the bar: every later trial worse than the
  // best 1/3 before it stops at the first rung.
  Outcome serial = Simulate(a, quality, 1);
  EXPECT_EQ(serial.stopped.count(2), 0u);
  EXPECT_EQ(serial.stopped.at(1), 0);
  EXPECT_EQ(serial.stopped.at(6), 0);
}

}  // namespace
}  // namespace epoch::workflows
