#include "workflows/sweep.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <map>
#include <set>

namespace epoch::workflows {
namespace {

using ::testing::Contains;
using ::testing::ElementsAre;
using ::testing::IsEmpty;
using ::testing::UnorderedElementsAre;

constexpr const char* kPath = "steps[2].sweep";

struct Parsed {
  std::optional<Sweep> sweep;
  std::vector<std::string> problems;
};

Parsed Parse(const Json& j) {
  Parsed out;
  out.sweep = ParseSweep(j, kPath, &out.problems);
  return out;
}

Parsed Parse(const char* text) { return Parse(Json::parse(text)); }

Json Objective() { return Json{{"metric", "accuracy"}, {"goal", "maximize"}}; }

// A valid random sweep, to break one field at a time.
Json RandomSweep() {
  return Json{{"method", "random"},
              {"seed", 7},
              {"parameters",
               {{"lr", {{"min", 1e-5}, {"max", 1e-1}, {"log", true}}},
                {"layers", {{"min", 1}, {"max", 4}, {"integer", true}}},
                {"hidden", Json::array({128, 256})}}},
              {"trials", 8},
              {"objective", Objective()}};
}

Json GridSweep() {
  return Json{{"method", "grid"},
              {"parameters", {{"lr", {{"values", {0.001, 0.003}}}}, {"hidden", {128, 256}}}},
              {"objective", Objective()}};
}

// The single problem reported for j (fails the test if there are none or several).
std::string OnlyProblem(const Json& j) {
  Parsed p = Parse(j);
  EXPECT_FALSE(p.sweep.has_value());
  EXPECT_EQ(p.problems.size(), 1u) << ::testing::PrintToString(p.problems);
  return p.problems.empty() ? "" : p.problems.front();
}

// ---- parsing: valid sweeps ----

TEST(ParseSweep, RandomSweepFields) {
  Parsed p = Parse(RandomSweep());
  ASSERT_TRUE(p.sweep.has_value()) << ::testing::PrintToString(p.problems);
  EXPECT_THAT(p.problems, IsEmpty());
  const Sweep& s = *p.sweep;
  EXPECT_EQ(s.method, Sweep::Method::kRandom);
  EXPECT_EQ(s.seed, 7u);
  EXPECT_EQ(s.trials, 8);
  EXPECT_EQ(s.parallel, 1);
  EXPECT_EQ(s.metric, "accuracy");
  EXPECT_TRUE(s.maximize);
  ASSERT_EQ(s.params.size(), 3u);
  // Sorted by name.
  EXPECT_EQ(s.params[0].name, "hidden");
  EXPECT_FALSE(s.params[0].is_range);
  EXPECT_EQ(s.params[0].values, Json::array({128, 256}));
  EXPECT_EQ(s.params[1].name, "layers");
  EXPECT_TRUE(s.params[1].is_range);
  EXPECT_TRUE(s.params[1].integer);
  EXPECT_FALSE(s.params[1].log);
  EXPECT_EQ(s.params[1].min, 1);
  EXPECT_EQ(s.params[1].max, 4);
  EXPECT_EQ(s.params[2].name, "lr");
  EXPECT_TRUE(s.params[2].log);
  EXPECT_FALSE(s.params[2].integer);
  EXPECT_DOUBLE_EQ(s.params[2].min, 1e-5);
  EXPECT_DOUBLE_EQ(s.params[2].max, 1e-1);
  EXPECT_EQ(TrialCount(s), 8);
}

TEST(ParseSweep, DefaultsAndMinimize) {
  Parsed p = Parse(R"({"parameters": {"x": [1, 2, 3]},
                       "objective": {"metric": "loss", "goal": "minimize"}})");
  ASSERT_TRUE(p.sweep.has_value()) << ::testing::PrintToString(p.problems);
  EXPECT_EQ(p.sweep->method, Sweep::Method::kGrid);  // default method
  EXPECT_EQ(p.sweep->seed, 0u);
  EXPECT_EQ(p.sweep->trials, 0);
  EXPECT_EQ(p.sweep->parallel, 1);
  EXPECT_FALSE(p.sweep->maximize);
  EXPECT_EQ(p.sweep->metric, "loss");
  EXPECT_EQ(TrialCount(*p.sweep), 3);
}

TEST(ParseSweep, ParallelAndLargeSeed) {
  Json j = RandomSweep();
  j["parallel"] = 3;
  j["seed"] = Json(uint64_t{18446744073709551615ULL});
  Parsed p = Parse(j);
  ASSERT_TRUE(p.sweep.has_value()) << ::testing::PrintToString(p.problems);
  EXPECT_EQ(p.sweep->parallel, 3);
  EXPECT_EQ(p.sweep->seed, 18446744073709551615ULL);
}

TEST(ParseSweep, KeepsEarlierProblemsAndCountsOnlyNewOnes) {
  std::vector<std::string> problems = {"steps[0].name: required"};
  std::optional<Sweep> s = ParseSweep(GridSweep(), kPath, &problems);
  EXPECT_TRUE(s.has_value());
  EXPECT_THAT(problems, ElementsAre("steps[0].name: required"));
}

// ---- grid ----

TEST(Grid, TwoByTwoInNameOrderLastFastest) {
  Parsed p = Parse(GridSweep());
  ASSERT_TRUE(p.sweep.has_value()) << ::testing::PrintToString(p.problems);
  const Sweep& s = *p.sweep;
  ASSERT_EQ(TrialCount(s), 4);
  // Names sorted: hidden, lr; lr (the last) varies fastest.
  EXPECT_EQ(TrialParams(s, 0), (Json{{"hidden", 128}, {"lr", 0.001}}));
  EXPECT_EQ(TrialParams(s, 1), (Json{{"hidden", 128}, {"lr", 0.003}}));
  EXPECT_EQ(TrialParams(s, 2), (Json{{"hidden", 256}, {"lr", 0.001}}));
  EXPECT_EQ(TrialParams(s, 3), (Json{{"hidden", 256}, {"lr", 0.003}}));
}

TEST(Grid, ThreeParamsMixedSizesAndValueTypes) {
  Parsed p = Parse(R"({"method": "grid",
    "parameters": {"c": ["x", "y", "z"], "a": [true, false], "b": {"values": [1]}},
    "objective": {"metric": "m", "goal": "maximize"}})");
  ASSERT_TRUE(p.sweep.has_value()) << ::testing::PrintToString(p.problems);
  ASSERT_EQ(TrialCount(*p.sweep), 6);
  EXPECT_EQ(TrialParams(*p.sweep, 0), (Json{{"a", true}, {"b", 1}, {"c", "x"}}));
  EXPECT_EQ(TrialParams(*p.sweep, 2), (Json{{"a", true}, {"b", 1}, {"c", "z"}}));
  EXPECT_EQ(TrialParams(*p.sweep, 3), (Json{{"a", false}, {"b", 1}, {"c", "x"}}));
  EXPECT_EQ(TrialParams(*p.sweep, 5), (Json{{"a", false}, {"b", 1}, {"c", "z"}}));
}

TEST(Grid, HandBuiltUnsortedParamsStillUseNameOrder) {
  Sweep s;
  s.params = {SweepParam{.name = "z", .values = {1, 2}}, SweepParam{.name = "a", .values = {3, 4}}};
  ASSERT_EQ(TrialCount(s), 4);
  EXPECT_EQ(TrialParams(s, 1), (Json{{"a", 3}, {"z", 2}}));
  EXPECT_EQ(TrialParams(s, 2), (Json{{"a", 4}, {"z", 1}}));
}

TEST(Grid, TrialsCapsTheGrid) {
  Json j = GridSweep();
  j["trials"] = 3;
  Parsed p = Parse(j);
  ASSERT_TRUE(p.sweep.has_value()) << ::testing::PrintToString(p.problems);
  EXPECT_EQ(TrialCount(*p.sweep), 3);
  EXPECT_EQ(TrialParams(*p.sweep, 2), (Json{{"hidden", 256}, {"lr", 0.001}}));
  EXPECT_TRUE(TrialParams(*p.sweep, 3).is_null());

  j["trials"] = 100;  // a cap above the grid size changes nothing
  p = Parse(j);
  ASSERT_TRUE(p.sweep.has_value());
  EXPECT_EQ(TrialCount(*p.sweep), 4);
}

TEST(Grid, OutOfRangeTrialIsNull) {
  Parsed p = Parse(GridSweep());
  ASSERT_TRUE(p.sweep.has_value());
  EXPECT_TRUE(TrialParams(*p.sweep, -1).is_null());
  EXPECT_TRUE(TrialParams(*p.sweep, 4).is_null());
}

TEST(Grid, TenThousandIsAllowed) {
  Json values = Json::array();
  for (int i = 0; i < 100; ++i) values.push_back(i);
  Json j = {{"parameters", {{"a", values}, {"b", values}}}, {"objective", Objective()}};
  Parsed p = Parse(j);
  ASSERT_TRUE(p.sweep.has_value()) << ::testing::PrintToString(p.problems);
  EXPECT_EQ(TrialCount(*p.sweep), 10000);
  EXPECT_EQ(TrialParams(*p.sweep, 9999), (Json{{"a", 99}, {"b", 99}}));
  EXPECT_EQ(TrialParams(*p.sweep, 123), (Json{{"a", 1}, {"b", 23}}));
}

TEST(Grid, MoreThanTenThousandRejectedEvenWithCap) {
  Json values = Json::array();
  for (int i = 0; i < 100; ++i) values.push_back(i);
  Json j = {{"parameters", {{"a", values}, {"b", values}, {"c", {1, 2}}}},
            {"trials", 5},
            {"objective", Objective()}};
  EXPECT_EQ(OnlyProblem(j), "steps[2].sweep.parameters: grid has 20000 trials; at most 10000");
}

TEST(Grid, OverflowingGridRejected) {
  Json values = Json::array();
  for (int i = 0; i < 1000; ++i) values.push_back(i);
  Json params = Json::object();
  for (char c = 'a'; c <= 'g'; ++c) params[std::string(1, c)] = values;  // 10^21 combinations
  Json j = {{"parameters", params}, {"objective", Objective()}};
  EXPECT_EQ(OnlyProblem(j),
            "steps[2].sweep.parameters: grid has more than 18446744073709551615 trials; "
            "at most 10000");
}

// ---- random ----

TEST(Random, ReproducibleForSameSeedAndTrial) {
  Parsed a = Parse(RandomSweep());
  Parsed b = Parse(RandomSweep());
  ASSERT_TRUE(a.sweep && b.sweep);
  for (int i = 0; i < 8; ++i) {
    Json pa = TrialParams(*a.sweep, i);
    ASSERT_TRUE(pa.is_object());
    EXPECT_EQ(pa, TrialParams(*a.sweep, i));  // same sweep twice
    EXPECT_EQ(pa, TrialParams(*b.sweep, i));  // an equal sweep parsed separately
  }
  // Different trials of one sweep differ (the continuous lr alone makes a clash absurd).
  EXPECT_NE(TrialParams(*a.sweep, 0)["lr"], TrialParams(*a.sweep, 1)["lr"]);
}

TEST(Random, DifferentSeedGivesDifferentValues) {
  Json j = RandomSweep();
  Parsed a = Parse(j);
  j["seed"] = 8;
  Parsed b = Parse(j);
  ASSERT_TRUE(a.sweep && b.sweep);
  int differing = 0;
  for (int i = 0; i < 8; ++i) {
    if (TrialParams(*a.sweep, i)["lr"] != TrialParams(*b.sweep, i)["lr"]) ++differing;
  }
  EXPECT_EQ(differing, 8);
}

TEST(Random, AddingAParameterKeepsTheOthersValues) {
  Json j = RandomSweep();
  Parsed a = Parse(j);
  j["parameters"]["dropout"] = {{"min", 0.0}, {"max", 0.5}};
  Parsed b = Parse(j);
  ASSERT_TRUE(a.sweep && b.sweep) << ::testing::PrintToString(b.problems);
  for (int i = 0; i < 8; ++i) {
    Json pa = TrialParams(*a.sweep, i);
    Json pb = TrialParams(*b.sweep, i);
    EXPECT_EQ(pa["lr"], pb["lr"]);
    EXPECT_EQ(pa["layers"], pb["layers"]);
    EXPECT_EQ(pa["hidden"], pb["hidden"]);
    ASSERT_TRUE(pb.contains("dropout"));
  }
}

TEST(Random, TrialCountAndOutOfRange) {
  Parsed p = Parse(RandomSweep());
  ASSERT_TRUE(p.sweep.has_value());
  EXPECT_EQ(TrialCount(*p.sweep), 8);
  EXPECT_TRUE(TrialParams(*p.sweep, 7).is_object());
  EXPECT_TRUE(TrialParams(*p.sweep, 8).is_null());
  EXPECT_TRUE(TrialParams(*p.sweep, -1).is_null());
}

// A random sweep over `params` with `trials` trials.
Sweep RandomOver(Json params, int trials, uint64_t seed = 1) {
  Json j = {{"method", "random"},
            {"seed", seed},
            {"parameters", std::move(params)},
            {"trials", trials},
            {"objective", Objective()}};
  Parsed p = Parse(j);
  EXPECT_TRUE(p.sweep.has_value()) << ::testing::PrintToString(p.problems);
  return p.sweep.value_or(Sweep{});
}

TEST(Random, ValuesInsideRangesAndOfTheRightType) {
  Sweep s = RandomOver({{"lr", {{"min", 1e-5}, {"max", 1e-1}, {"log", true}}},
                        {"drop", {{"min", -0.5}, {"max", 0.5}}},
                        {"layers", {{"min", 1}, {"max", 4}, {"integer", true}}},
                        {"act", {"relu", "gelu", "tanh"}}},
                       1000);
  std::set<std::string> acts;
  for (int i = 0; i < TrialCount(s); ++i) {
    Json t = TrialParams(s, i);
    ASSERT_TRUE(t["lr"].is_number_float());
    EXPECT_GE(t["lr"].get<double>(), 1e-5);
    EXPECT_LE(t["lr"].get<double>(), 1e-1);
    ASSERT_TRUE(t["drop"].is_number_float());
    EXPECT_GE(t["drop"].get<double>(), -0.5);
    EXPECT_LE(t["drop"].get<double>(), 0.5);
    ASSERT_TRUE(t["layers"].is_number_integer());
    EXPECT_GE(t["layers"].get<int>(), 1);
    EXPECT_LE(t["layers"].get<int>(), 4);
    ASSERT_TRUE(t["act"].is_string());
    acts.insert(t["act"].get<std::string>());
  }
  EXPECT_EQ(acts, (std::set<std::string>{"relu", "gelu", "tanh"}));
}

TEST(Random, LinearRangeIsSpreadEvenly) {
  Sweep s = RandomOver({{"x", {{"min", 0}, {"max", 1}}}}, 1000, 3);
  int low = 0;
  for (int i = 0; i < 1000; ++i) low += TrialParams(s, i)["x"].get<double>() < 0.5 ? 1 : 0;
  EXPECT_GT(low, 400);
  EXPECT_LT(low, 600);
}

// max - min overflows: the samples still spread over the range (they were all max).
TEST(Random, RangeWiderThanADoubleIsSpreadToo) {
  Sweep s = RandomOver({{"x", {{"min", -1.5e308}, {"max", 1.5e308}}}}, 1000, 3);
  int low = 0;
  for (int i = 0; i < 1000; ++i) {
    double v = TrialParams(s, i)["x"].get<double>();
    ASSERT_TRUE(std::isfinite(v));
    ASSERT_GE(v, -1.5e308);
    ASSERT_LE(v, 1.5e308);
    low += v < 0 ? 1 : 0;
  }
  EXPECT_GT(low, 400);
  EXPECT_LT(low, 600);
}

TEST(Random, LogRangeSpreadsOverDecades) {
  Sweep s = RandomOver({{"lr", {{"min", 1e-5}, {"max", 1e-1}, {"log", true}}}}, 200);
  int per_decade[4] = {0, 0, 0, 0};
  int below_1e3 = 0;
  for (int i = 0; i < 200; ++i) {
    double v = TrialParams(s, i)["lr"].get<double>();
    ASSERT_GE(v, 1e-5);
    ASSERT_LE(v, 1e-1);
    if (v < 1e-3) ++below_1e3;
    int d = std::clamp(static_cast<int>(std::floor(std::log10(v) + 5)), 0, 3);
    ++per_decade[d];
  }
  // Log-uniform: half below 1e-3 expected; a linear sampler would give about 1%.
  EXPECT_GE(below_1e3, 40);  // at least 20%
  for (int d = 0; d < 4; ++d) EXPECT_GE(per_decade[d], 20) << "decade " << d;
}

TEST(Random, IntegerRangeHitsBothEnds) {
  Sweep s = RandomOver({{"layers", {{"min", 1}, {"max", 4}, {"integer", true}}}}, 400);
  std::map<int, int> counts;
  for (int i = 0; i < 400; ++i) ++counts[TrialParams(s, i)["layers"].get<int>()];
  EXPECT_EQ(counts.size(), 4u);
  EXPECT_GT(counts[1], 50);
  EXPECT_GT(counts[4], 50);
  EXPECT_EQ(counts.begin()->first, 1);
  EXPECT_EQ(counts.rbegin()->first, 4);
}

TEST(Random, LogIntegerRangeHitsBothEnds) {
  // Log-uniform over [1, 9) floored: P(1) = log 2 / log 9 (32%), P(8) = log(9/8) / log 9 (5%).
  Sweep s =
      RandomOver({{"depth", {{"min", 1}, {"max", 8}, {"integer", true}, {"log", true}}}}, 2000);
  std::map<int, int> counts;
  for (int i = 0; i < 2000; ++i) {
    Json v = TrialParams(s, i)["depth"];
    ASSERT_TRUE(v.is_number_integer());
    ++counts[v.get<int>()];
  }
  EXPECT_EQ(counts.size(), 8u);
  EXPECT_EQ(counts.begin()->first, 1);
  EXPECT_EQ(counts.rbegin()->first, 8);
  EXPECT_GT(counts[8], 40);
  // Half the log span is below 3; a linear sampler would put a quarter there.
  EXPECT_GT(counts[1] + counts[2], 800);
}

TEST(Random, ListValuesPickedUniformly) {
  Sweep s = RandomOver({{"opt", {"sgd", "adam"}}}, 1000, 11);
  int sgd = 0;
  for (int i = 0; i < 1000; ++i) sgd += TrialParams(s, i)["opt"] == "sgd" ? 1 : 0;
  EXPECT_GT(sgd, 400);
  EXPECT_LT(sgd, 600);
}

// Pins the sampler's output: these values must not change between versions or
// platforms, or a resumed sweep would run different trials than it started with.
TEST(Random, GoldenValues) {
  // Only exact arithmetic here (no exp/log, whose last bit may differ between libms).
  Sweep s = RandomOver({{"k", {{"min", 0}, {"max", 1000000}, {"integer", true}}},
                        {"opt", {"a", "b", "c", "d", "e"}},
                        {"x", {{"min", 0}, {"max", 1}}}},
                       3, 42);
  std::vector<Json> got;
  for (int i = 0; i < 3; ++i) got.push_back(TrialParams(s, i));
  // Also computed by an independent Python model of the derivation in sweep.h.
  EXPECT_EQ(got[0], (Json{{"k", 745910}, {"opt", "d"}, {"x", 0.31946628002268784}}));
  EXPECT_EQ(got[1], (Json{{"k", 557476}, {"opt", "a"}, {"x", 0.7395680372475365}}));
  EXPECT_EQ(got[2], (Json{{"k", 457162}, {"opt", "b"}, {"x", 0.7719111690236201}}));
}

// ---- validation: one problem each, named by its path ----

// One broken field: the sweep (RandomSweep(), or GridSweep() when `grid`) with the
// value at JSON pointer `at` set to `value` (JSON text), or removed when `value` is null.
struct Case {
  const char* name;
  const char* at;
  const char* value;
  const char* problem;
  bool grid = false;
};

class Validation : public ::testing::TestWithParam<Case> {};

TEST_P(Validation, ReportsTheProblemWithItsPath) {
  const Case& c = GetParam();
  Json j = c.grid ? GridSweep() : RandomSweep();
  Json::json_pointer at(c.at);
  if (c.value == nullptr) {
    ASSERT_TRUE(j.contains(at));
    j[at.parent_pointer()].erase(at.back());
  } else {
    j[at] = Json::parse(c.value);
  }
  EXPECT_EQ(OnlyProblem(j), c.problem);
}

const Case kCases[] = {
    // Unknown fields.
    {"UnknownSweepKey", "/metod", R"("grid")", "steps[2].sweep.metod: unknown field"},
    {"UnknownObjectiveKey", "/objective/direction", R"("up")",
     "steps[2].sweep.objective.direction: unknown field"},
    {"UnknownRangeKey", "/parameters/lr/step", "2",
     "steps[2].sweep.parameters.lr.step: unknown field"},
    {"UnknownValuesObjectKey", "/parameters/hidden", R"({"values": [1], "weights": [1]})",
     "steps[2].sweep.parameters.hidden.weights: unknown field"},
    // method, seed.
    {"BadMethod", "/method", R"("bayes")",
     R"(steps[2].sweep.method: must be "grid", "random", "asha" or "hyperband")"},
    {"MethodNotString", "/method", "1",
     R"(steps[2].sweep.method: must be "grid", "random", "asha" or "hyperband")"},
    {"SeedNegative", "/seed", "-1", "steps[2].sweep.seed: must be a non-negative integer"},
    {"SeedFloat", "/seed", "1.5", "steps[2].sweep.seed: must be a non-negative integer"},
    {"SeedString", "/seed", R"("7")", "steps[2].sweep.seed: must be a non-negative integer"},
    // parameters.
    {"ParametersMissing", "/parameters", nullptr, "steps[2].sweep.parameters: required"},
    {"ParametersEmpty", "/parameters", "{}",
     "steps[2].sweep.parameters: must name at least one parameter"},
    {"ParametersNotObject", "/parameters", "[1, 2]",
     "steps[2].sweep.parameters: must be an object of parameter name -> values or range"},
    {"ParamScalar", "/parameters/hidden", "128",
     R"(steps[2].sweep.parameters.hidden: must be a non-empty list of values, )"
     R"({"values": [...]} or a range {"min": ..., "max": ...})"},
    {"ParamObjectWithoutValuesOrRange", "/parameters/hidden", R"({"n": 1})",
     R"(steps[2].sweep.parameters.hidden: must be a non-empty list of values, )"
     R"({"values": [...]} or a range {"min": ..., "max": ...})"},
    {"ParamEmptyList", "/parameters/hidden", "[]",
     "steps[2].sweep.parameters.hidden: must be a non-empty list of values"},
    {"ParamEmptyValues", "/parameters/hidden", R"({"values": []})",
     "steps[2].sweep.parameters.hidden.values: must be a non-empty list of values"},
    {"ParamValuesNotList", "/parameters/hidden", R"({"values": 3})",
     "steps[2].sweep.parameters.hidden.values: must be a non-empty list of values"},
    {"ParamListElementNotScalar", "/parameters/hidden", R"([1, {"a": 1}])",
     "steps[2].sweep.parameters.hidden[1]: must be a string, number or boolean"},
    {"ParamValuesAndRange", "/parameters/hidden", R"({"values": [1], "min": 0, "max": 1})",
     R"(steps[2].sweep.parameters.hidden: give either "values" or a "min"/"max" range, )"
     "not both"},
    {"ParamBadName", "/parameters/1st", "[1, 2]",
     "steps[2].sweep.parameters.1st: invalid parameter name '1st': use 1-63 characters of "
     "A-Z, a-z, 0-9, '_' and '-', starting with a letter or '_'"},
    // ranges.
    {"RangeMaxMissing", "/parameters/lr", R"({"min": 0.1})",
     "steps[2].sweep.parameters.lr.max: required in a range"},
    {"RangeMinNotNumber", "/parameters/lr", R"({"min": "0", "max": 1})",
     "steps[2].sweep.parameters.lr.min: must be a number"},
    {"RangeMinEqualsMax", "/parameters/lr", R"({"min": 1, "max": 1})",
     "steps[2].sweep.parameters.lr.min: must be less than max"},
    {"RangeMinAboveMax", "/parameters/lr", R"({"min": 2, "max": 1})",
     "steps[2].sweep.parameters.lr.min: must be less than max"},
    {"LogWithZeroMin", "/parameters/lr", R"({"min": 0, "max": 1, "log": true})",
     R"(steps[2].sweep.parameters.lr.min: must be positive when "log" is true)"},
    {"LogWithNegativeMin", "/parameters/lr", R"({"min": -1, "max": 1, "log": true})",
     R"(steps[2].sweep.parameters.lr.min: must be positive when "log" is true)"},
    {"LogNotBoolean", "/parameters/lr/log", R"("yes")",
     "steps[2].sweep.parameters.lr.log: must be a boolean"},
    {"IntegerNotBoolean", "/parameters/layers/integer", "1",
     "steps[2].sweep.parameters.layers.integer: must be a boolean"},
    {"IntegerRangeFractionalBound", "/parameters/layers/max", "4.5",
     "steps[2].sweep.parameters.layers.max: must be an integer (at most 2^53 in size) when "
     R"("integer" is true)"},
    {"RangeInGrid", "/parameters/wd", R"({"min": 1e-5, "max": 1e-2})",
     "steps[2].sweep.parameters.wd: grid needs a list of values (ranges are for random sweeps)",
     true},
    // trials, parallel.
    {"TrialsMissingForRandom", "/trials", nullptr,
     "steps[2].sweep.trials: required for a random sweep"},
    {"TrialsZero", "/trials", "0", "steps[2].sweep.trials: must be an integer from 1 to 10000"},
    {"TrialsNegative", "/trials", "-3",
     "steps[2].sweep.trials: must be an integer from 1 to 10000"},
    {"TrialsNotInteger", "/trials", "2.5",
     "steps[2].sweep.trials: must be an integer from 1 to 10000"},
    {"TrialsString", "/trials", R"("8")",
     "steps[2].sweep.trials: must be an integer from 1 to 10000"},
    {"TrialsTooMany", "/trials", "10001",
     "steps[2].sweep.trials: must be an integer from 1 to 10000"},
    {"TrialsZeroInGrid", "/trials", "0",
     "steps[2].sweep.trials: must be an integer from 1 to 10000", true},
    {"ParallelZero", "/parallel", "0",
     "steps[2].sweep.parallel: must be an integer from 1 to 10000"},
    {"ParallelNotInteger", "/parallel", "1.5",
     "steps[2].sweep.parallel: must be an integer from 1 to 10000"},
    // objective.
    {"ObjectiveMissing", "/objective", nullptr, "steps[2].sweep.objective: required"},
    {"ObjectiveNotObject", "/objective", R"("accuracy")",
     R"(steps[2].sweep.objective: must be an object like {"metric": "accuracy", )"
     R"("goal": "maximize"})"},
    {"MetricMissing", "/objective/metric", nullptr, "steps[2].sweep.objective.metric: required"},
    {"MetricEmpty", "/objective/metric", R"("")",
     "steps[2].sweep.objective.metric: must be a non-empty string"},
    {"MetricNotString", "/objective/metric", "3",
     "steps[2].sweep.objective.metric: must be a non-empty string"},
    {"GoalBad", "/objective/goal", R"("max")",
     R"(steps[2].sweep.objective.goal: must be "maximize" or "minimize")"},
    {"GoalMissing", "/objective/goal", nullptr,
     R"(steps[2].sweep.objective.goal: required ("maximize" or "minimize"))"},
    // the sweep itself.
    {"SweepNotObject", "", "[]", "steps[2].sweep: must be an object"},
};

INSTANTIATE_TEST_SUITE_P(ParseSweep, Validation, ::testing::ValuesIn(kCases),
                         [](const ::testing::TestParamInfo<Case>& info) {
                           return std::string(info.param.name);
                         });

TEST(ParseSweep, CollectsSeveralProblemsAtOnce) {
  Parsed p = Parse(R"({
    "method": "random", "seed": -2, "extra": true,
    "parameters": {"lr": {"min": 1, "max": 0}, "wd": {"min": 0, "max": 1, "log": true},
                   "hidden": []},
    "parallel": 0,
    "objective": {"metric": "", "goal": "up"}
  })");
  EXPECT_FALSE(p.sweep.has_value());
  EXPECT_THAT(p.problems,
              UnorderedElementsAre(
                  "steps[2].sweep.extra: unknown field",
                  "steps[2].sweep.seed: must be a non-negative integer",
                  "steps[2].sweep.parameters.lr.min: must be less than max",
                  "steps[2].sweep.parameters.wd.min: must be positive when \"log\" is true",
                  "steps[2].sweep.parameters.hidden: must be a non-empty list of values",
                  "steps[2].sweep.trials: required for a random sweep",
                  "steps[2].sweep.parallel: must be an integer from 1 to 10000",
                  "steps[2].sweep.objective.metric: must be a non-empty string",
                  "steps[2].sweep.objective.goal: must be \"maximize\" or \"minimize\""));
}

TEST(ParseSweep, GridReportsEveryRange) {
  Parsed p = Parse(R"({"method": "grid",
    "parameters": {"a": {"min": 0, "max": 1}, "b": [1], "c": {"min": 1, "max": 9, "integer": true}},
    "objective": {"metric": "m", "goal": "minimize"}})");
  EXPECT_FALSE(p.sweep.has_value());
  EXPECT_THAT(p.problems,
              ElementsAre("steps[2].sweep.parameters.a: grid needs a list of values (ranges are "
                          "for random sweeps)",
                          "steps[2].sweep.parameters.c: grid needs a list of values (ranges are "
                          "for random sweeps)"));
}

TEST(ParseSweep, UnknownMethodSkipsMethodSpecificChecks) {
  // With the method unknown, neither "trials required" nor "grid needs a list" applies.
  Json j = RandomSweep();
  j["method"] = "bayes";
  j.erase("trials");
  EXPECT_EQ(OnlyProblem(j),
            "steps[2].sweep.method: must be \"grid\", \"random\", \"asha\" or \"hyperband\"");
}

// ---- asha and hyperband: values drawn as grid or random, early stopping from asha.h ----

TEST(ParseSweep, AshaDrawsAsAGridWhenEveryParameterIsAList) {
  Json j = GridSweep();
  j["method"] = "asha";
  j["maxResource"] = 9;
  Parsed p = Parse(j);
  ASSERT_TRUE(p.sweep) << ::testing::PrintToString(p.problems);
  EXPECT_EQ(p.sweep->method, Sweep::Method::kGrid);
  ASSERT_TRUE(p.sweep->stopping);
  EXPECT_EQ(p.sweep->stopping->kind, Asha::Kind::kAsha);
  EXPECT_EQ(p.sweep->stopping->resource, "epoch");
  EXPECT_EQ(p.sweep->stopping->max_resource, 9);
  EXPECT_EQ(TrialCount(*p.sweep), 4);
  EXPECT_EQ(TrialParams(*p.sweep, 1), (Json{{"hidden", 128}, {"lr", 0.003}}));
  // The same list sampled at random, with a trial count.
  j["sample"] = "random";
  j["trials"] = 6;
  j["seed"] = 3;
  p = Parse(j);
  ASSERT_TRUE(p.sweep) << ::testing::PrintToString(p.problems);
  EXPECT_EQ(p.sweep->method, Sweep::Method::kRandom);
  EXPECT_EQ(TrialCount(*p.sweep), 6);
}

TEST(ParseSweep, HyperbandSamplesAtRandomWhenAParameterIsARange) {
  Json j = RandomSweep();
  j["method"] = "hyperband";
  j["resource"] = "step";
  j["minResource"] = 100;
  j["maxResource"] = 2700;
  Parsed p = Parse(j);
  ASSERT_TRUE(p.sweep) << ::testing::PrintToString(p.problems);
  EXPECT_EQ(p.sweep->method, Sweep::Method::kRandom);
  ASSERT_TRUE(p.sweep->stopping);
  EXPECT_EQ(p.sweep->stopping->kind, Asha::Kind::kHyperband);
  EXPECT_EQ(p.sweep->stopping->brackets, 4);
  EXPECT_EQ(TrialCount(*p.sweep), 8);
  // Same seed, same values as the random sweep it was made from.
  Parsed r = Parse(RandomSweep());
  ASSERT_TRUE(r.sweep);
  EXPECT_EQ(TrialParams(*p.sweep, 5), TrialParams(*r.sweep, 5));
}

TEST(ParseSweep, EarlyStoppingProblemsNameTheirFields) {
  Json j = RandomSweep();
  j["method"] = "asha";
  EXPECT_EQ(OnlyProblem(j),
            "steps[2].sweep.maxResource: required (the resource at which a trial "
            "has run in full)");
  j["maxResource"] = 9;
  j.erase("trials");
  EXPECT_EQ(OnlyProblem(j), "steps[2].sweep.trials: required when trials are sampled at random");
  j["trials"] = 4;
  j["sample"] = "grid";
  Parsed p = Parse(j);
  EXPECT_THAT(p.problems,
              ElementsAre("steps[2].sweep.parameters.layers: a grid sample needs a list of values "
                          "(ranges need \"sample\": \"random\")",
                          "steps[2].sweep.parameters.lr: a grid sample needs a list of values "
                          "(ranges need \"sample\": \"random\")"));
  j["sample"] = "bayes";
  EXPECT_EQ(OnlyProblem(j), "steps[2].sweep.sample: must be \"grid\" or \"random\"");
  // The early-stopping fields belong to asha and hyperband only.
  Json g = GridSweep();
  g["maxResource"] = 9;
  g["sample"] = "grid";
  EXPECT_THAT(Parse(g).problems,
              ElementsAre("steps[2].sweep.maxResource: is only for method \"asha\" or "
                          "\"hyperband\"",
                          "steps[2].sweep.sample: is only for method \"asha\" or \"hyperband\""));
}

TEST(ParseSweep, NullProblemsPointerStillRejects) {
  Json j = RandomSweep();
  j["trials"] = 0;
  EXPECT_FALSE(ParseSweep(j, kPath, nullptr).has_value());
  EXPECT_TRUE(ParseSweep(RandomSweep(), kPath, nullptr).has_value());
}

// ---- BestTrial ----

Sweep WithObjective(const char* metric, bool maximize) {
  Sweep s;
  s.metric = metric;
  s.maximize = maximize;
  return s;
}

TEST(BestTrial, Maximize) {
  Sweep s = WithObjective("accuracy", true);
  EXPECT_EQ(BestTrial(s, {{0, {{"accuracy", 0.8}}},
                          {1, {{"accuracy", 0.93}, {"loss", 0.1}}},
                          {2, {{"accuracy", 0.9}}}}),
            1);
}

TEST(BestTrial, Minimize) {
  Sweep s = WithObjective("loss", false);
  EXPECT_EQ(BestTrial(s, {{0, {{"loss", 0.5}}}, {1, {{"loss", 0.7}}}, {2, {{"loss", -0.1}}}}), 2);
}

TEST(BestTrial, IntegerAndFloatMetricsCompare) {
  Sweep s = WithObjective("score", true);
  EXPECT_EQ(BestTrial(s, {{0, {{"score", 2}}}, {1, {{"score", 1.5}}}}), 0);
}

TEST(BestTrial, FailedAndIncompleteTrialsIgnored) {
  Sweep s = WithObjective("accuracy", true);
  EXPECT_EQ(BestTrial(s, {{0, nullptr},                 // failed
                          {1, {{"loss", 0.1}}},         // lacks the metric
                          {2, {{"accuracy", "0.99"}}},  // not a number
                          {3, {{"accuracy", true}}},    // a boolean is not a number
                          {4, Json::array({0.99})},     // not an object
                          {5, {{"accuracy", 0.5}}},
                          {6, {{"accuracy", std::nan("")}}},  // NaN never wins
                          {-1, {{"accuracy", 1.0}}}}),        // not a trial index
            5);
}

TEST(BestTrial, NoneCountsGivesMinusOne) {
  Sweep s = WithObjective("accuracy", true);
  EXPECT_EQ(BestTrial(s, {}), -1);
  EXPECT_EQ(BestTrial(s, {{0, nullptr}, {1, nullptr}, {2, {{"loss", 1}}}}), -1);
}

TEST(BestTrial, TiesGoToTheLowestIndexWhateverTheOrder) {
  Sweep max = WithObjective("accuracy", true);
  EXPECT_EQ(BestTrial(max, {{3, {{"accuracy", 0.9}}},
                            {1, {{"accuracy", 0.9}}},
                            {0, {{"accuracy", 0.5}}},
                            {2, {{"accuracy", 0.9}}}}),
            1);
  Sweep min = WithObjective("loss", false);
  EXPECT_EQ(BestTrial(min, {{5, {{"loss", 1}}}, {4, {{"loss", 1.0}}}, {6, {{"loss", 2}}}}), 4);
}

}  // namespace
}  // namespace epoch::workflows
