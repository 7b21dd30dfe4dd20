#include "workflows/definition.h"

#include <gtest/gtest.h>

#include <algorithm>

#include "common/sha256.h"
#include "workflows/when.h"

namespace epoch::workflows {
namespace {

using std::chrono::minutes;
using std::chrono::seconds;

// The example from DESIGN.md, "Workflow definition".
constexpr const char* kDesignExample = R"({
  "name": "fashion-mnist",
  "params": {"epochs": 10, "lr": 0.05},
  "steps": [
    {"name": "prep", "kind": "data_prep", "command": ["fmnist", "prep", "--out", "{{workspace}}/data"]},
    {"name": "train", "kind": "train", "after": ["prep"],
     "command": ["fmnist", "train", "--data", "{{workspace}}/data", "--epochs", "{{params.epochs}}"],
     "resources": {"cpu": "1000m", "memory": "2Gi", "gpus": 1},
     "retry": {"limit": 3, "backoff": "exponential", "initial": "2s", "max": "1m"},
     "timeout": "2h", "cache": true},
    {"name": "validate", "kind": "validate", "after": ["train"], "command": ["..."]},
    {"name": "infer", "kind": "infer", "after": ["validate"],
     "when": "steps.validate.metrics.accuracy >= 0.85", "command": ["..."]}
  ]
})";

Json Example() { return Json::parse(kDesignExample); }

// A minimal valid definition with the given steps.
Json WithSteps(Json steps) {
  return Json{{"name", "wf"}, {"params", Json::object()}, {"steps", std::move(steps)}};
}
// WithSteps({a, b}) and WithSteps({a}): an array of steps with every compiler. (A
// braced Json of one Json is a copy of it with clang and a one-element array with g++.)
Json WithSteps(std::initializer_list<Json> steps) {
  Json a = Json::array();
  for (const auto& s : steps) a.push_back(s);
  return WithSteps(std::move(a));
}

Json SimpleStep(const std::string& name, std::vector<std::string> after = {}) {
  Json s{{"name", name}, {"command", {"echo", name}}};
  if (!after.empty()) s["after"] = after;
  return s;
}

std::vector<std::string> Problems(const Json& j,
                                  const std::optional<Resources>& max = std::nullopt) {
  auto r = ParseDefinition(j, max);
  if (r.ok()) return {};
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  return r.status().details();
}

std::string Join(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += "\n  " + x;
  return s;
}

// Asserts that parsing j yields exactly the given problem among its details.
::testing::AssertionResult Rejects(const Json& j, const std::string& problem,
                                   const std::optional<Resources>& max = std::nullopt) {
  auto problems = Problems(j, max);
  if (std::find(problems.begin(), problems.end(), problem) != problems.end()) {
    return ::testing::AssertionSuccess();
  }
  return ::testing::AssertionFailure()
         << "expected problem \"" << problem
         << "\", got:" << (problems.empty() ? " (accepted)" : Join(problems));
}

TEST(ParseDefinition, DesignExample) {
  auto r = ParseDefinition(Example());
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  const Definition& d = **r;
  EXPECT_EQ(d.name, "fashion-mnist");
  EXPECT_EQ(d.params, (Json{{"epochs", 10}, {"lr", 0.05}}));
  ASSERT_EQ(d.steps.size(), 4u);
  EXPECT_EQ(d.steps[0].kind, StepKind::kDataPrep);
  EXPECT_EQ(d.steps[0].command,
            (std::vector<std::string>{"fmnist", "prep", "--out", "{{workspace}}/data"}));
  const Step& train = d.steps[1];
  EXPECT_EQ(train.kind, StepKind::kTrain);
  EXPECT_EQ(train.after, std::vector<std::string>{"prep"});
  EXPECT_EQ(train.resources.cpu_millis, 1000);
  EXPECT_EQ(train.resources.memory_bytes, 2LL << 30);
  EXPECT_EQ(train.resources.gpus, 1);
  EXPECT_EQ(train.retry.limit, 3);
  EXPECT_EQ(train.retry.backoff, RetryPolicy::Backoff::kExponential);
  EXPECT_EQ(train.retry.initial, seconds(2));
  EXPECT_EQ(train.retry.max, minutes(1));
  ASSERT_TRUE(train.timeout.has_value());
  EXPECT_EQ(*train.timeout, std::chrono::hours(2));
  EXPECT_TRUE(train.cache);
  EXPECT_EQ(d.steps[2].kind, StepKind::kValidate);
  EXPECT_EQ(d.steps[3].kind, StepKind::kInfer);
  EXPECT_EQ(d.steps[3].when, "steps.validate.metrics.accuracy >= 0.85");
  ASSERT_NE(d.steps[3].when_expr, nullptr);
  EXPECT_EQ(d.steps[3].when_expr->refs().size(), 1u);
  EXPECT_EQ(d.topo_order, (std::vector<size_t>{0, 1, 2, 3}));
  EXPECT_EQ(d.source, Example());
  ASSERT_NE(d.FindStep("validate"), nullptr);
  EXPECT_EQ(d.FindStep("validate")->name, "validate");
  EXPECT_EQ(d.FindStep("nope"), nullptr);
}

TEST(ParseDefinition, Defaults) {
  auto r = ParseDefinition(Json{{"name", "wf"}, {"steps", {SimpleStep("a")}}});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  const Step& s = (*r)->steps[0];
  EXPECT_EQ(s.kind, StepKind::kTask);
  EXPECT_EQ(s.resources.cpu_millis, 100);
  EXPECT_EQ(s.resources.memory_bytes, 128LL << 20);
  EXPECT_EQ(s.resources.gpus, 0);
  EXPECT_EQ(s.retry.limit, 0);
  EXPECT_EQ(s.retry.initial, seconds(1));
  EXPECT_EQ(s.retry.max, minutes(1));
  EXPECT_FALSE(s.timeout.has_value());
  EXPECT_FALSE(s.cache);
  EXPECT_TRUE(s.when.empty());
  EXPECT_EQ(s.when_expr, nullptr);
  EXPECT_TRUE(s.outputs.empty());
  EXPECT_EQ((*r)->description, "");
  EXPECT_EQ((*r)->params, Json::object());
  // Defaults are not added to the source.
  EXPECT_FALSE((*r)->source["steps"][0].contains("kind"));
}

TEST(ParseDefinition, OptionalFieldsKept) {
  Json s = SimpleStep("a");
  s["env"] = {{"MODE", "fast"}, {"RUN", "{{run.id}}"}};
  s["outputs"] = {"model.pt", "metrics.csv"};
  s["resources"] = {{"cpu", 1.5}, {"memory", 1048576}};
  s["retry"] = {{"limit", 2}, {"backoff", "fixed"}, {"initial", 5}};
  s["timeout"] = "1h30m";
  s["kind"] = "task";
  Json j = WithSteps({s});
  j["description"] = "demo";
  auto r = ParseDefinition(j);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  const Step& st = (*r)->steps[0];
  EXPECT_EQ((*r)->description, "demo");
  EXPECT_EQ(st.env, (std::map<std::string, std::string>{{"MODE", "fast"}, {"RUN", "{{run.id}}"}}));
  EXPECT_EQ(st.outputs, (std::vector<std::string>{"model.pt", "metrics.csv"}));
  EXPECT_EQ(st.resources.cpu_millis, 1500);
  EXPECT_EQ(st.resources.memory_bytes, 1048576);
  EXPECT_EQ(st.retry.limit, 2);
  EXPECT_EQ(st.retry.backoff, RetryPolicy::Backoff::kFixed);
  EXPECT_EQ(st.retry.initial, seconds(5));
  EXPECT_EQ(st.retry.max, minutes(1));
  EXPECT_EQ(*st.timeout, minutes(90));
}

TEST(ParseDefinition, RetryInitialAboveDefaultMaxRaisesMax) {
  Json s = SimpleStep("a");
  s["retry"] = {{"limit", 1}, {"initial", "5m"}};
  auto r = ParseDefinition(WithSteps({s}));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ((*r)->steps[0].retry.max, minutes(5));
}

TEST(ParseDefinition, CollectsEveryProblemWithCount) {
  Json j = Example();
  j["steps"][1]["after"] = {"trian"};
  j["steps"][2]["resources"] = {{"memory", "12Q"}};
  j["bogus"] = 1;
  auto r = ParseDefinition(j);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(r.status().message(), "invalid workflow definition: 3 problems");
  EXPECT_EQ(r.status().details(),
            (std::vector<std::string>{
                "bogus: unknown field",
                "steps[2].resources.memory: invalid memory quantity '12Q': unknown suffix 'Q' "
                "(use Ki, Mi, Gi, Ti, k, M, G, T)",
                "steps[1].after[0]: unknown step 'trian'",
            }));
}

TEST(ParseDefinition, OneProblemSingular) {
  Json j = Example();
  j["steps"][0]["cache"] = "yes";
  auto r = ParseDefinition(j);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message(), "invalid workflow definition: 1 problem");
  EXPECT_EQ(r.status().details(),
            std::vector<std::string>{
                "steps[0].cache: must be a boolean or an object like {\"maxAge\": \"7d\"}"});
}

TEST(ParseDefinition, NotAnObject) {
  auto r = ParseDefinition(Json::array());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().details(), std::vector<std::string>{"definition: must be a JSON object"});
}

TEST(ParseDefinition, UnknownFieldsEverywhere) {
  Json j = Example();
  j["owner"] = "me";
  j["steps"][0]["image"] = "x";
  j["steps"][1]["resources"]["tpus"] = 1;
  j["steps"][1]["retry"]["jitter"] = true;
  EXPECT_TRUE(Rejects(j, "owner: unknown field"));
  EXPECT_TRUE(Rejects(j, "steps[0].image: unknown field"));
  EXPECT_TRUE(Rejects(j, "steps[1].resources.tpus: unknown field"));
  EXPECT_TRUE(Rejects(j, "steps[1].retry.jitter: unknown field"));
  EXPECT_EQ(Problems(j).size(), 4u);
}

TEST(ParseDefinition, WorkflowName) {
  Json j = Example();
  j.erase("name");
  EXPECT_TRUE(Rejects(j, "name: required"));
  j["name"] = 5;
  EXPECT_TRUE(Rejects(j, "name: must be a string"));
  j["name"] = "Fashion MNIST";
  EXPECT_TRUE(Rejects(j,
                      "name: invalid workflow name 'Fashion MNIST': use 1-63 characters of "
                      "a-z, 0-9, '-' and '_', starting and ending with a letter or digit"));
}

TEST(ParseDefinition, TopLevelTypes) {
  Json j = Example();
  j["description"] = 1;
  j["params"] = Json::array();
  EXPECT_TRUE(Rejects(j, "description: must be a string"));
  EXPECT_TRUE(Rejects(j, "params: must be an object of name -> default (null = required)"));
  EXPECT_TRUE(Rejects(WithSteps(Json::object()), "steps: must be an array of steps"));
  EXPECT_TRUE(Rejects(WithSteps(Json::array()), "steps: must have at least one step"));
  Json no_steps{{"name", "wf"}};
  EXPECT_TRUE(Rejects(no_steps, "steps: required"));
  EXPECT_TRUE(Rejects(WithSteps({1}), "steps[0]: must be an object"));
}

TEST(ParseDefinition, ParamDeclarations) {
  Json j = Example();
  j["params"]["shape"] = {1, 2};
  j["params"]["bad name"] = 1;
  EXPECT_TRUE(
      Rejects(j, "params.shape: default must be a string, number, boolean or null (required)"));
  EXPECT_TRUE(Rejects(j,
                      "params.bad name: invalid param name (use letters, digits, '_' and '-', "
                      "starting with a letter or '_')"));
}

TEST(ParseDefinition, StepNames) {
  Json missing{{"command", {"x"}}};
  EXPECT_TRUE(Rejects(WithSteps({missing}), "steps[0].name: required"));
  Json wrong{{"name", 3}, {"command", {"x"}}};
  EXPECT_TRUE(Rejects(WithSteps({wrong}), "steps[0].name: must be a string"));
  EXPECT_TRUE(Rejects(WithSteps({SimpleStep("Train!")}),
                      "steps[0].name: invalid step name 'Train!': use 1-63 characters of a-z, "
                      "0-9, '-' and '_', starting and ending with a letter or digit"));
  EXPECT_TRUE(Rejects(WithSteps({SimpleStep("a"), SimpleStep("b"), SimpleStep("a")}),
                      "steps[2].name: duplicate step 'a' (also steps[0])"));
}

TEST(ParseDefinition, Command) {
  Json s{{"name", "a"}};
  EXPECT_TRUE(Rejects(WithSteps({s}), "steps[0].command: required"));
  s["command"] = "echo hi";
  EXPECT_TRUE(Rejects(WithSteps({s}), "steps[0].command: must be an array of strings (argv)"));
  s["command"] = Json::array();
  EXPECT_TRUE(Rejects(WithSteps({s}), "steps[0].command: must not be empty"));
  s["command"] = {"echo", 3, "x", nullptr};
  EXPECT_TRUE(Rejects(WithSteps({s}), "steps[0].command[1]: must be a string"));
  EXPECT_TRUE(Rejects(WithSteps({s}), "steps[0].command[3]: must be a string"));
  s["command"] = {"", "x"};
  EXPECT_TRUE(Rejects(WithSteps({s}), "steps[0].command[0]: the program must not be empty"));
}

TEST(ParseDefinition, KindCacheWhenTypes) {
  Json s = SimpleStep("a");
  s["kind"] = "training";
  s["cache"] = 1;
  s["when"] = 7;
  Json j = WithSteps({s});
  EXPECT_TRUE(Rejects(
      j, "steps[0].kind: unknown kind 'training' (use data_prep, train, validate, infer or task)"));
  EXPECT_TRUE(Rejects(j, "steps[0].cache: must be a boolean or an object like {\"maxAge\": \"7d\"}"));
  EXPECT_TRUE(Rejects(j, "steps[0].when: must be a string"));
  s["kind"] = 1;
  EXPECT_TRUE(Rejects(WithSteps({s}),
                      "steps[0].kind: must be a string (use data_prep, train, "
                      "validate, infer or task)"));
}

TEST(ParseDefinition, CacheMaxAgeAndInputs) {
  Json s = SimpleStep("a");
  s["cache"] = Json{{"maxAge", "7d"}};
  s["inputs"] = Json::array({"/data/raw.csv", "{{params.extra}}"});
  Json j = WithSteps({s});
  j["params"] = Json{{"extra", "/data/extra.csv"}};
  auto def = ParseDefinition(j);
  ASSERT_TRUE(def.ok()) << def.status().ToString() << Join(def.status().details());
  const Step& a = (*def)->steps[0];
  EXPECT_TRUE(a.cache);
  ASSERT_TRUE(a.cache_max_age.has_value());
  EXPECT_EQ(*a.cache_max_age, std::chrono::hours(24 * 7));
  EXPECT_EQ(a.inputs, (std::vector<std::string>{"/data/raw.csv", "{{params.extra}}"}));
  // Plain true: no age limit.
  s["cache"] = true;
  def = ParseDefinition(WithSteps({s}));
  EXPECT_FALSE(def.ok());  // {{params.extra}} is not declared here
  EXPECT_TRUE(Rejects(WithSteps({s}), "steps[0].inputs[1]: unknown template variable 'params.extra'"))
      << Join(Problems(WithSteps({s})));

  Json bad = SimpleStep("b");
  bad["cache"] = Json{{"maxAge", "soon"}, {"ttl", 1}};
  bad["inputs"] = Json::array({"", 3});
  Json jb = WithSteps({bad});
  auto problems = Problems(jb);
  EXPECT_TRUE(Rejects(jb, "steps[0].cache.ttl: unknown field")) << Join(problems);
  EXPECT_TRUE(Rejects(jb, "steps[0].inputs[0]: must be a non-empty string (a file path)"));
  EXPECT_TRUE(Rejects(jb, "steps[0].inputs[1]: must be a non-empty string (a file path)"));
  bool age_named = false;
  for (const auto& p : problems) age_named |= p.rfind("steps[0].cache.maxAge: ", 0) == 0;
  EXPECT_TRUE(age_named) << Join(problems);
  bad["cache"] = Json{{"maxAge", 0}};
  bad["inputs"] = "raw.csv";
  EXPECT_TRUE(Rejects(WithSteps({bad}), "steps[0].cache.maxAge: must be positive"));
  EXPECT_TRUE(Rejects(WithSteps({bad}), "steps[0].inputs: must be an array of file paths"));
}

TEST(ParseDefinition, After) {
  Json j = WithSteps({SimpleStep("a"), SimpleStep("b", {"a", "c", "b", "a"})});
  j["steps"][1]["after"].push_back(4);
  EXPECT_TRUE(Rejects(j, "steps[1].after[1]: unknown step 'c'"));
  EXPECT_TRUE(Rejects(j, "steps[1].after[2]: step 'b' cannot be after itself"));
  EXPECT_TRUE(Rejects(j, "steps[1].after[3]: duplicate entry 'a'"));
  EXPECT_TRUE(Rejects(j, "steps[1].after[4]: must be a string"));
  EXPECT_EQ(Problems(j).size(), 4u);  // the self-dependency is not also a cycle
  Json k = WithSteps({SimpleStep("a")});
  k["steps"][0]["after"] = "a";
  EXPECT_TRUE(Rejects(k, "steps[0].after: must be an array of step names"));
}

TEST(ParseDefinition, CycleNamedInOrder) {
  Json j = Example();
  j["steps"][1]["after"] = {"prep", "validate"};
  auto problems = Problems(j);
  EXPECT_EQ(problems, std::vector<std::string>{"steps: cycle train -> validate -> train"});

  // Three-step cycle, reported from the step given first, in execution order.
  Json k = WithSteps({SimpleStep("x", {"z"}), SimpleStep("y", {"x"}), SimpleStep("z", {"y"}),
                      SimpleStep("w", {"z"})});
  EXPECT_EQ(Problems(k), std::vector<std::string>{"steps: cycle x -> y -> z -> x"});
}

TEST(ParseDefinition, EveryIndependentCycleNamed) {
  Json j = WithSteps({SimpleStep("a", {"b"}), SimpleStep("b", {"a"}), SimpleStep("c", {"b", "e"}),
                      SimpleStep("d", {"e"}), SimpleStep("e", {"d"})});
  EXPECT_EQ(Problems(j),
            (std::vector<std::string>{"steps: cycle a -> b -> a", "steps: cycle d -> e -> d"}));
}

TEST(ParseDefinition, TopoOrderKahnWithTiesInGivenOrder) {
  // d after b and c; b and c after a; given out of order.
  Json j = WithSteps({SimpleStep("d", {"b", "c"}), SimpleStep("c", {"a"}), SimpleStep("b", {"a"}),
                      SimpleStep("a"), SimpleStep("solo")});
  auto r = ParseDefinition(j);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  // Ready: {a, solo} -> a; {c, b, solo} -> c (given before b); {b, solo} -> b;
  // {d, solo} -> d (given first); then solo.
  EXPECT_EQ((*r)->topo_order, (std::vector<size_t>{3, 1, 2, 0, 4}));
}

TEST(ParseDefinition, Durations) {
  Json j = Example();
  j["steps"][1]["timeout"] = "2x";
  j["steps"][1]["retry"]["initial"] = "soon";
  j["steps"][1]["retry"]["max"] = true;
  EXPECT_TRUE(Rejects(
      j, "steps[1].timeout: invalid duration '2x': unknown unit 'x' (use ms, s, m, h or d)"));
  EXPECT_TRUE(Rejects(
      j, "steps[1].retry.initial: invalid duration 'soon': expected a number (e.g. 30s, 5m, 2h)"));
  EXPECT_TRUE(Rejects(j,
                      "steps[1].retry.max: must be a duration string (e.g. \"30s\", \"5m\") or "
                      "a number of seconds"));
  j = Example();
  j["steps"][1]["timeout"] = "0s";
  EXPECT_TRUE(Rejects(j, "steps[1].timeout: must be positive"));
  j["steps"][1]["timeout"] = 90;
  auto r = ParseDefinition(j);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(*(*r)->steps[1].timeout, seconds(90));
}

TEST(ParseDefinition, Retry) {
  Json j = Example();
  j["steps"][1]["retry"] = {
      {"limit", 101}, {"backoff", "linear"}, {"initial", "10s"}, {"max", "5s"}};
  EXPECT_TRUE(Rejects(j, "steps[1].retry.limit: must be an integer from 0 to 100"));
  EXPECT_TRUE(Rejects(j, "steps[1].retry.backoff: must be \"fixed\" or \"exponential\""));
  EXPECT_TRUE(Rejects(j, "steps[1].retry.max: 5s is less than retry.initial (10s)"));
  j["steps"][1]["retry"] = {{"limit", -1}};
  EXPECT_TRUE(Rejects(j, "steps[1].retry.limit: must be an integer from 0 to 100"));
  j["steps"][1]["retry"] = {{"limit", 1.5}};
  EXPECT_TRUE(Rejects(j, "steps[1].retry.limit: must be an integer from 0 to 100"));
  j["steps"][1]["retry"] = 3;
  EXPECT_TRUE(Rejects(j, "steps[1].retry: must be an object"));
  j["steps"][1]["retry"] = {{"limit", 100}, {"initial", "1s"}, {"max", "1s"}};
  EXPECT_TRUE(ParseDefinition(j).ok());
}

TEST(ParseDefinition, Quantities) {
  Json j = Example();
  j["steps"][1]["resources"] = {{"cpu", "lots"}, {"memory", "12Q"}, {"gpus", -1}};
  EXPECT_TRUE(Rejects(j,
                      "steps[1].resources.cpu: invalid cpu quantity 'lots': expected e.g. "
                      "500m, 1 or 1.5"));
  EXPECT_TRUE(Rejects(j,
                      "steps[1].resources.memory: invalid memory quantity '12Q': unknown suffix "
                      "'Q' (use Ki, Mi, Gi, Ti, k, M, G, T)"));
  EXPECT_TRUE(Rejects(j, "steps[1].resources.gpus: must be a non-negative integer"));
  j["steps"][1]["resources"] = {{"cpu", true}, {"memory", Json::array()}, {"gpus", 1.5}};
  EXPECT_TRUE(Rejects(j,
                      "steps[1].resources.cpu: must be a quantity string (e.g. \"500m\", "
                      "\"1.5\") or a number of cores"));
  EXPECT_TRUE(Rejects(j,
                      "steps[1].resources.memory: must be a quantity string (e.g. \"512Mi\", "
                      "\"2Gi\") or a number of bytes"));
  EXPECT_TRUE(Rejects(j, "steps[1].resources.gpus: must be a non-negative integer"));
  j["steps"][1]["resources"] = {{"cpu", 0}, {"gpus", 5000}};
  EXPECT_TRUE(Rejects(j, "steps[1].resources.cpu: invalid cpu quantity '0': must be at least 1m"));
  EXPECT_TRUE(Rejects(j, "steps[1].resources.gpus: too many GPUs (at most 1024)"));
  j["steps"][1]["resources"] = "big";
  EXPECT_TRUE(Rejects(j, "steps[1].resources: must be an object"));
  j["steps"][1]["resources"] = {{"cpu", "500m"}, {"memory", "1G"}, {"gpus", 0}};
  auto r = ParseDefinition(j);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ((*r)->steps[1].resources.cpu_millis, 500);
  EXPECT_EQ((*r)->steps[1].resources.memory_bytes, 1000000000);
  EXPECT_EQ((*r)->steps[1].resources.gpus, 0);
}

TEST(ParseDefinition, MaxResources) {
  Resources max;
  max.cpu_millis = 2000;
  max.memory_bytes = 4LL << 30;
  max.gpus = 0;
  Json j = Example();  // train asks for 1 GPU
  EXPECT_TRUE(
      Rejects(j, "steps[1].resources.gpus: 1 GPU requested but the largest container has 0", max));
  EXPECT_EQ(Problems(j, max).size(), 1u);
  j["steps"][1]["resources"] = {{"cpu", 4}, {"memory", "8Gi"}, {"gpus", 2}};
  EXPECT_TRUE(
      Rejects(j, "steps[1].resources.gpus: 2 GPUs requested but the largest container has 0", max));
  EXPECT_TRUE(Rejects(
      j, "steps[1].resources.cpu: 4000m CPU requested but the largest container has 2000m", max));
  EXPECT_TRUE(Rejects(
      j, "steps[1].resources.memory: 8Gi of memory requested but the largest container has 4Gi",
      max));
  max.gpus = 8;
  max.cpu_millis = 4000;
  max.memory_bytes = 8LL << 30;
  EXPECT_TRUE(ParseDefinition(j, max).ok());  // exactly the largest container fits
}

TEST(ParseDefinition, Env) {
  Json s = SimpleStep("a");
  s["env"] = {{"1BAD", "x"}, {"EPOCH_OUTPUTS", "/tmp"}, {"N", 3}, {"OK", "{{nope}}"}};
  Json j = WithSteps({s});
  EXPECT_TRUE(Rejects(
      j, "steps[0].env.1BAD: invalid environment variable name (use A-Z, a-z, 0-9 and '_')"));
  EXPECT_TRUE(Rejects(j,
                      "steps[0].env.EPOCH_OUTPUTS: reserved: EPOCH_* variables are set by "
                      "Epoch"));
  EXPECT_TRUE(Rejects(j, "steps[0].env.N: must be a string"));
  EXPECT_TRUE(Rejects(j, "steps[0].env.OK: unknown template variable 'nope'"));
  s["env"] = {"A=1"};
  EXPECT_TRUE(Rejects(WithSteps({s}), "steps[0].env: must be an object of strings"));
}

TEST(ParseDefinition, Outputs) {
  Json s = SimpleStep("a");
  s["outputs"] = {"ok.txt", "dir/x", "..", ".", "", 3, "ok.txt"};
  Json j = WithSteps({s});
  const std::string rule = ": must be a plain file name (no '/', not '.' or '..')";
  EXPECT_TRUE(Rejects(j, "steps[0].outputs[1]: invalid output name 'dir/x'" + rule));
  EXPECT_TRUE(Rejects(j, "steps[0].outputs[2]: invalid output name '..'" + rule));
  EXPECT_TRUE(Rejects(j, "steps[0].outputs[3]: invalid output name '.'" + rule));
  EXPECT_TRUE(Rejects(j, "steps[0].outputs[4]: invalid output name ''" + rule));
  EXPECT_TRUE(Rejects(j, "steps[0].outputs[5]: must be a string"));
  EXPECT_TRUE(Rejects(j, "steps[0].outputs[6]: duplicate output 'ok.txt'"));
  EXPECT_EQ(Problems(j).size(), 6u);
  s["outputs"] = "model.pt";
  EXPECT_TRUE(Rejects(WithSteps({s}), "steps[0].outputs: must be an array of file names"));
}

TEST(ParseDefinition, TemplateVariables) {
  Json j = Example();
  j["steps"][1]["command"][5] = "{{params.epoch}}";
  j["steps"][0]["command"].push_back("{{ run.id }}-{{step.name}}-{{attempt}}-{{ outputs }}");
  j["steps"][0]["command"].push_back("{{runid}}");
  j["steps"][0]["command"].push_back("{{workspace");
  EXPECT_TRUE(Rejects(j, "steps[1].command[5]: unknown template variable 'params.epoch'"));
  EXPECT_TRUE(Rejects(j, "steps[0].command[5]: unknown template variable 'runid'"));
  EXPECT_TRUE(Rejects(j, "steps[0].command[6]: unterminated '{{' at offset 0"));
  EXPECT_EQ(Problems(j).size(), 3u);
}

TEST(ParseDefinition, StepTemplateReferencesMustBeUpstream) {
  Json j = Example();
  j["steps"][0]["outputs"] = {"data.npz"};
  // infer is transitively after prep and train: allowed.
  j["steps"][3]["command"] = {"infer", "{{steps.train.metrics.loss}}",
                              "{{steps.prep.outputs.data.npz}}"};
  ASSERT_TRUE(ParseDefinition(j).ok()) << ParseDefinition(j).status().ToString();
  // train is not after validate; nope does not exist; prep does not declare model.pt.
  j["steps"][1]["command"] = {"train", "{{steps.validate.metrics.accuracy}}",
                              "{{steps.nope.outputs.x}}", "{{steps.prep.outputs.model.pt}}",
                              "{{steps.prep.logs.x}}"};
  EXPECT_TRUE(Rejects(j,
                      "steps[1].command[1]: template variable 'steps.validate.metrics.accuracy' "
                      "refers to step 'validate', which is not upstream of 'train'"));
  EXPECT_TRUE(Rejects(j,
                      "steps[1].command[2]: unknown template variable 'steps.nope.outputs.x' "
                      "(no step 'nope')"));
  EXPECT_TRUE(Rejects(j,
                      "steps[1].command[3]: unknown template variable "
                      "'steps.prep.outputs.model.pt' (step 'prep' does not declare output "
                      "'model.pt')"));
  EXPECT_TRUE(Rejects(j, "steps[1].command[4]: unknown template variable 'steps.prep.logs.x'"));
}

TEST(ParseDefinition, RequiredParamIsDeclared) {
  Json j = Example();
  j["params"]["data"] = nullptr;
  j["steps"][0]["command"].push_back("{{params.data}}");
  auto r = ParseDefinition(j);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_TRUE((*r)->params["data"].is_null());
}

TEST(ParseDefinition, When) {
  Json j = Example();
  j["steps"][3]["when"] = "steps.validate.metrics.accuracy >=";
  EXPECT_TRUE(Rejects(j,
                      "steps[3].when: unparsable expression: expected a value "
                      "(steps.<step>.metrics.<key>, params.<name>, a number or a string) but "
                      "found end of expression at column 35"));
  j["steps"][3]["when"] = "steps.infer.metrics.x > 1 || steps.ghost.metrics.y > 1 || params.z == 1";
  EXPECT_TRUE(Rejects(j,
                      "steps[3].when: 'steps.infer.metrics.x' refers to step 'infer', which "
                      "is not upstream of 'infer'"));
  EXPECT_TRUE(Rejects(j, "steps[3].when: unknown step 'ghost' in 'steps.ghost.metrics.y'"));
  EXPECT_TRUE(Rejects(j, "steps[3].when: unknown param 'z' in 'params.z'"));
  EXPECT_EQ(Problems(j).size(), 3u);
  j["steps"][3]["when"] = "steps.prep.metrics.rows > 0 && params.lr < 1";
  EXPECT_TRUE(ParseDefinition(j).ok());
  j["steps"][3]["when"] = "";
  auto r = ParseDefinition(j);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ((*r)->steps[3].when_expr, nullptr);
}

TEST(ParseDefinition, DigestStableUnderKeyOrder) {
  auto a = ParseDefinition(Json::parse(
      R"({"name":"wf","params":{"a":1,"b":"x"},"steps":[{"name":"s","command":["echo"],"cache":true}]})"));
  auto b = ParseDefinition(Json::parse(
      R"({"steps":[{"cache":true,"command":["echo"],"name":"s"}],"params":{"b":"x","a":1},"name":"wf"})"));
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ((*a)->digest, (*b)->digest);
  EXPECT_EQ((*a)->digest.size(), 64u);
  EXPECT_EQ((*a)->digest, Sha256Hex(CanonicalDump((*a)->source)));
  auto c = ParseDefinition(Json::parse(
      R"({"name":"wf","params":{"a":2,"b":"x"},"steps":[{"name":"s","command":["echo"],"cache":true}]})"));
  ASSERT_TRUE(c.ok());
  EXPECT_NE((*a)->digest, (*c)->digest);
}

TEST(ResolveParams, DefaultsAndOverrides) {
  auto def = ParseDefinition(Example());
  ASSERT_TRUE(def.ok());
  auto p = ResolveParams(**def, Json{{"lr", 0.1}});
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  EXPECT_EQ(*p, (Json{{"epochs", 10}, {"lr", 0.1}}));
  auto none = ResolveParams(**def, Json(nullptr));
  ASSERT_TRUE(none.ok());
  EXPECT_EQ(*none, (Json{{"epochs", 10}, {"lr", 0.05}}));
}

TEST(ResolveParams, Errors) {
  Json j = Example();
  j["params"]["data"] = nullptr;
  auto def = ParseDefinition(j);
  ASSERT_TRUE(def.ok());
  auto missing = ResolveParams(**def, Json::object());
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(missing.status().message(), "params.data: required");

  auto undeclared = ResolveParams(**def, Json{{"data", "/d"}, {"lr2", 1}});
  ASSERT_FALSE(undeclared.ok());
  EXPECT_EQ(undeclared.status().message(), "params.lr2: not declared by workflow 'fashion-mnist'");

  auto both = ResolveParams(**def, Json{{"x", 1}});
  ASSERT_FALSE(both.ok());
  EXPECT_EQ(both.status().details(),
            (std::vector<std::string>{"params.x: not declared by workflow 'fashion-mnist'",
                                      "params.data: required"}));

  auto not_object = ResolveParams(**def, Json::array());
  ASSERT_FALSE(not_object.ok());
  EXPECT_EQ(not_object.status().message(), "params: must be an object");

  auto given = ResolveParams(**def, Json{{"data", "/d"}});
  ASSERT_TRUE(given.ok());
  EXPECT_EQ((*given)["data"], "/d");
}

TEST(RetryPolicy, ExponentialCapped) {
  RetryPolicy r;
  r.backoff = RetryPolicy::Backoff::kExponential;
  r.initial = seconds(2);
  r.max = minutes(1);
  EXPECT_EQ(r.DelayBefore(1), Micros(0));
  EXPECT_EQ(r.DelayBefore(2), seconds(2));
  EXPECT_EQ(r.DelayBefore(3), seconds(4));
  EXPECT_EQ(r.DelayBefore(4), seconds(8));
  EXPECT_EQ(r.DelayBefore(6), seconds(32));
  EXPECT_EQ(r.DelayBefore(7), minutes(1));     // 64s capped
  EXPECT_EQ(r.DelayBefore(1000), minutes(1));  // no overflow
}

TEST(RetryPolicy, Fixed) {
  RetryPolicy r;
  r.backoff = RetryPolicy::Backoff::kFixed;
  r.initial = seconds(5);
  r.max = minutes(1);
  EXPECT_EQ(r.DelayBefore(2), seconds(5));
  EXPECT_EQ(r.DelayBefore(3), seconds(5));
  EXPECT_EQ(r.DelayBefore(50), seconds(5));
}

TEST(StepKind, Names) {
  EXPECT_EQ(StepKindName(StepKind::kDataPrep), "data_prep");
  EXPECT_EQ(StepKindName(StepKind::kTask), "task");
  EXPECT_EQ(ParseStepKind("infer"), StepKind::kInfer);
  EXPECT_EQ(ParseStepKind("validate"), StepKind::kValidate);
  EXPECT_EQ(ParseStepKind("train"), StepKind::kTrain);
  EXPECT_FALSE(ParseStepKind("Train").has_value());
}

}  // namespace
}  // namespace epoch::workflows

namespace epoch::workflows {
namespace {

TEST(WorkersTest, ParsedAndValidated) {
  auto ok = ParseDefinition(*ParseJson(
      R"({"name":"ddp","steps":[{"name":"t","command":["x"],"workers":3,"resources":{"gpus":1}}]})"));
  ASSERT_TRUE(ok.ok()) << ok.status().ToString();
  EXPECT_EQ((*ok)->steps[0].workers, 3);
  auto bad = ParseDefinition(*ParseJson(R"({"name":"ddp","steps":[{"name":"t","command":["x"],"workers":0}]})"));
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().details().at(0),
            "steps[0].workers: must be an integer from 1 to 256, or {\"min\": m, \"max\": M} "
            "for an elastic gang");
  EXPECT_EQ((*ok)->steps[0].workers_min, 0) << "a fixed gang";
}

TEST(WorkersTest, ElasticRangeParsedAndValidated) {
  auto ok = ParseDefinition(*ParseJson(
      R"({"name":"ddp","steps":[{"name":"t","command":["x"],"workers":{"min":2,"max":4}}]})"));
  ASSERT_TRUE(ok.ok()) << ok.status().ToString();
  EXPECT_EQ((*ok)->steps[0].workers, 4);
  EXPECT_EQ((*ok)->steps[0].workers_min, 2);
  auto problems = [](const char* workers) {
    auto r = ParseDefinition(
        *ParseJson(std::string(R"({"name":"ddp","steps":[{"name":"t","command":["x"],"workers":)") +
                   workers + "}]}"));
    return r.ok() ? std::vector<std::string>{} : r.status().details();
  };
  EXPECT_EQ(problems(R"({"min":4,"max":4})"),
            std::vector<std::string>{"steps[0].workers.min: must be less than max (4)"});
  EXPECT_EQ(problems(R"({"min":0,"max":300,"most":3})"),
            (std::vector<std::string>{"steps[0].workers.most: unknown field",
                                      "steps[0].workers.min: must be an integer from 1 to 256",
                                      "steps[0].workers.max: must be an integer from 1 to 256"}));
}

}  // namespace
}  // namespace epoch::workflows

namespace epoch::workflows {
namespace {

TEST(ParseStoredDefinition, TodaysRulesAreReportedNotRefused) {
  Json j = *ParseJson(R"({"name": "old", "owner": "team-a",
      "steps": [{"name": "a", "command": ["true"], "env": {"EPOCH_LEGACY": "1", "OK": "y"}},
                {"name": "b", "command": ["true"], "after": ["a"]}]})");
  ASSERT_FALSE(ParseDefinition(j).ok());
  std::vector<std::string> problems;
  auto def = ParseStoredDefinition(j, &problems);
  ASSERT_TRUE(def.ok()) << def.status().ToString();
  EXPECT_EQ((*def)->name, "old");
  ASSERT_EQ((*def)->steps.size(), 2u);
  EXPECT_EQ((*def)->topo_order, (std::vector<size_t>{0, 1}));
  EXPECT_EQ((*def)->steps[0].env.count("OK"), 1u);
  // The digest is of what was stored, as registration computed it.
  EXPECT_EQ((*def)->digest, Sha256Hex(CanonicalDump(j)));
  ASSERT_EQ(problems.size(), 2u);
  EXPECT_NE(problems[0].find("owner"), std::string::npos) << problems[0];
  EXPECT_NE(problems[1].find("steps[0].env.EPOCH_LEGACY"), std::string::npos) << problems[1];
}

TEST(ParseStoredDefinition, WhatCannotRunIsStillRefused) {
  for (const char* text : {
           R"([1, 2])",
           R"({"name": "w", "steps": []})",
           R"({"name": "w", "steps": [{"name": "a"}]})",
           R"({"name": "w", "steps": [{"name": "a", "command": ["x"]},
                                      {"name": "a", "command": ["y"]}]})",
           R"({"name": "w", "steps": [{"name": "a", "command": ["x"], "after": ["zz"]}]})",
           R"({"name": "w", "steps": [{"name": "a", "command": ["x"], "after": ["b"]},
                                      {"name": "b", "command": ["y"], "after": ["a"]}]})",
       }) {
    auto def = ParseStoredDefinition(*ParseJson(text));
    EXPECT_EQ(def.status().code(), StatusCode::kInvalidArgument) << text;
  }
}

}  // namespace
}  // namespace epoch::workflows
