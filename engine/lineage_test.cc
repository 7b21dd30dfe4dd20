// Lineage through the Processor: data set and model versions registered from steps'
// outputs, validation attached to them, per tenant and across replay.
#include <gtest/gtest.h>

#include <algorithm>
#include <string>

#include "engine/decider_test_util.h"
#include "engine/snapshot.h"

namespace epoch::engine {
namespace {

using test_util::DeciderTest;
using test_util::Reports;
using test_util::TenantTest;

TEST_F(DeciderTest, LineageRegistersDatasetAndModelVersionsAndAttachesValidation) {
  StartContainer();
  const char* def = R"({"name":"lin","params":{"lr":0.1},"steps":[
      {"name":"prep","kind":"data_prep","command":["p"],"dataset":{"name":"fmnist"}},
      {"name":"train","kind":"train","after":["prep"],"command":["t"],"model":{"name":"mlp"}},
      {"name":"validate","kind":"validate","after":["train"],"command":["v"]}]})";
  auto succeed = [&](const std::string& attempt, Json outputs, Json metrics = Json::object()) {
    PollContainer p;
    p.container = "c1";
    p.reports = Reports(Json::array({Json{{"attempt_id", attempt},
                                          {"state", "succeeded"},
                                          {"exit_code", 0},
                                          {"outputs", outputs},
                                          {"metrics", metrics}}}));
    Status st;
    auto evs = Do(p, &st);
    EXPECT_TRUE(st.ok()) << st.ToString();
    return Types(evs);
  };
  Json shards = Json::array({Json{{"name", "train.bin"}, {"size", 10}, {"sha256", "aa"}}});
  Json model = Json::array({Json{{"name", "model.bin"}, {"size", 20}, {"sha256", "bb"}}});
  std::string r1 = Submit(def, Json{{"lr", 0.1}});
  auto t = succeed(r1 + "/prep/1", shards);
  EXPECT_EQ(std::count(t.begin(), t.end(), "DatasetVersionRegistered"), 1);
  succeed(r1 + "/train/1", model);
  t = succeed(r1 + "/validate/1", Json::array(), Json{{"accuracy", 0.9}});
  EXPECT_EQ(std::count(t.begin(), t.end(), "ModelVersionValidated"), 1);
  EXPECT_EQ(t.back(), "RunSucceeded");
  ASSERT_EQ(state_.datasets["default/fmnist"].count, 1);
  ASSERT_EQ(state_.models["default/mlp"].count, 1);
  const ArtifactVersion& m1 = state_.models["default/mlp"].versions[0];
  EXPECT_EQ(m1.run, r1);
  EXPECT_EQ(m1.step, "train");
  EXPECT_EQ(m1.params["lr"], 0.1);
  EXPECT_EQ(m1.workflow, "lin");
  ASSERT_EQ(m1.datasets.size(), 1u);
  EXPECT_EQ(m1.datasets[0]["name"], "fmnist");
  EXPECT_EQ(m1.datasets[0]["version"], 1);
  EXPECT_EQ(m1.metrics["accuracy"], 0.9);
  EXPECT_EQ(m1.validated_by[0]["step"], "validate");

  // The same data again is the same data set version; a different model is version 2.
  std::string r2 = Submit(def, Json{{"lr", 0.01}});
  succeed(r2 + "/prep/1", shards);
  succeed(r2 + "/train/1",
          Json::array({Json{{"name", "model.bin"}, {"size", 20}, {"sha256", "cc"}}}));
  succeed(r2 + "/validate/1", Json::array(), Json{{"accuracy", 0.8}});
  EXPECT_EQ(state_.datasets["default/fmnist"].count, 1);
  ASSERT_EQ(state_.models["default/mlp"].count, 2);
  EXPECT_EQ(state_.models["default/mlp"].versions[1].params["lr"], 0.01);
  EXPECT_EQ(state_.models["default/mlp"].versions[1].metrics["accuracy"], 0.8);
  EXPECT_EQ(R(r2).datasets.at("prep"), std::make_pair(std::string("fmnist"), 1));
  EXPECT_EQ(R(r2).models.at("train"), std::make_pair(std::string("mlp"), 2));

  // Replay and a snapshot both keep the lineage.
  State replayed;
  for (const auto& e : all_)
    ASSERT_TRUE(Evolve(replayed, e).ok()) << e.type << " at " << e.position;
  EXPECT_EQ(EncodeSnapshot(replayed), EncodeSnapshot(state_));
  auto decoded = DecodeSnapshot(EncodeSnapshot(state_));
  ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
  EXPECT_EQ(decoded->models["default/mlp"].versions[1].metrics["accuracy"], 0.8);
  EXPECT_EQ(decoded->FindRun(r2)->models.at("train").second, 2);
  EXPECT_EQ(decoded->FindRun(r1)->validated.count("validate"), 1u);
}

TEST_F(DeciderTest, LineageFieldsAreCheckedAtRegistration) {
  Status st;
  Do(RegisterWorkflow{*ParseJson(R"({"name":"bad","steps":[
      {"name":"t","kind":"train","command":["x"],"dataset":{"name":"d"}},
      {"name":"p","kind":"data_prep","command":["x"],"model":{"nme":"m"}}]})")},
     &st);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  std::string all;
  for (const auto& d : st.details()) all += d + "\n";
  EXPECT_NE(all.find("steps[0].dataset: only a data_prep step registers a dataset"),
            std::string::npos)
      << all;
  EXPECT_NE(all.find("steps[1].model.nme: unknown field"), std::string::npos) << all;
}

TEST_F(TenantTest, TheSameModelNameInTwoTenantsIsTwoModels) {
  StartContainer();
  const char* def = R"({"name":"NAME","steps":[
      {"name":"train","kind":"train","command":["t"],"model":{"name":"mlp"}},
      {"name":"validate","kind":"validate","after":["train"],"command":["v"]}]})";
  auto run_as = [&](const std::string& tenant, const std::string& sha, double accuracy) {
    std::string text = def;
    text.replace(text.find("NAME"), 4, "wf-" + tenant);
    std::string run = SubmitAs(tenant, text);
    PollContainer p;
    p.container = "c1";
    p.reports = Reports(Json::array({Json{
        {"attempt_id", run + "/train/1"},
        {"state", "succeeded"},
        {"exit_code", 0},
        {"outputs", Json::array({Json{{"name", "model.bin"}, {"size", 5}, {"sha256", sha}}})}}}));
    Do(p);
    p.reports = Reports(Json::array({Json{{"attempt_id", run + "/validate/1"},
                                          {"state", "succeeded"},
                                          {"exit_code", 0},
                                          {"metrics", Json{{"accuracy", accuracy}}}}}));
    Do(p);
    EXPECT_EQ(R(run).phase, RunPhase::kSucceeded);
    return run;
  };
  // The same bytes in both tenants: still two models, each at version 1.
  std::string ra = run_as("a", "same", 0.7);
  std::string rb = run_as("b", "same", 0.999);
  ASSERT_EQ(state_.models.at("a/mlp").count, 1);
  ASSERT_EQ(state_.models.at("b/mlp").count, 1);
  EXPECT_EQ(state_.models.at("a/mlp").versions[0].run, ra);
  EXPECT_EQ(state_.models.at("b/mlp").versions[0].run, rb);
  // b's validation attached only to b's model.
  EXPECT_EQ(state_.models.at("a/mlp").versions[0].metrics["accuracy"], 0.7);
  EXPECT_EQ(state_.models.at("b/mlp").versions[0].metrics["accuracy"], 0.999);
  EXPECT_EQ(state_.models.at("a/mlp").versions[0].validated_by.size(), 1u);
  EXPECT_EQ(SplitArtifactKey("b/mlp"), std::make_pair(std::string("b"), std::string("mlp")));
}

TEST_F(TenantTest, ModelVersionsNumberedWhenNamesWereGlobalReplayPerTenant) {
  // A history written before names were per tenant: tenant b's first version of
  // "mlp" was numbered 2, after a's. Replayed, it is b's version 1, and its
  // validation attaches to it.
  auto apply = [&](const std::string& stream, const std::string& type, Json data) {
    RecordedEvent e;
    e.position = state_.head + 1;
    e.stream = stream;
    e.type = type;
    e.data = std::move(data);
    e.time = now_;
    Status st = Evolve(state_, e);
    ASSERT_TRUE(st.ok()) << st.ToString();
  };
  Json def =
      *ParseJson(R"({"name":"w","steps":[{"name":"train","kind":"train","command":["t"]}]})");
  apply("workflow-w", "WorkflowRegistered",
        fields::Encode(ev::WorkflowRegistered{
            .name = "w", .version = 1, .definition = def, .tenant = "default"}));
  for (const char* t : {"a", "b"}) {
    std::string run = std::string("old-") + t;
    apply("run-" + run, "RunSubmitted",
          fields::Encode(ev::RunSubmitted{.run = run, .workflow = "w", .version = 1, .tenant = t}));
  }
  apply("run-old-a", "ModelVersionRegistered",
        fields::Encode(ev::ModelVersionRegistered{
            .name = "mlp", .version = 1, .digest = "d1", .step = "train", .attempt = 1}));
  apply("run-old-b", "ModelVersionRegistered",
        fields::Encode(ev::ModelVersionRegistered{
            .name = "mlp", .version = 2, .digest = "d2", .step = "train", .attempt = 1}));
  apply("run-old-b", "ModelVersionValidated",
        fields::Encode(ev::ModelVersionValidated{
            .name = "mlp", .version = 2, .step = "v", .metrics = Json{{"acc", 0.5}}}));
  ASSERT_EQ(state_.models.at("b/mlp").count, 1);
  EXPECT_EQ(state_.models.at("b/mlp").versions[0].digest, "d2");
  EXPECT_EQ(state_.models.at("b/mlp").versions[0].metrics["acc"], 0.5);
  EXPECT_EQ(state_.FindRun("old-b")->models.at("train").second, 1);
  EXPECT_TRUE(state_.models.at("a/mlp").versions[0].metrics.empty());
}

}  // namespace
}  // namespace epoch::engine
