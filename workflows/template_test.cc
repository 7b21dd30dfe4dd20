#include "workflows/template.h"

#include <gtest/gtest.h>

#include "workflows/definition.h"

namespace epoch::workflows {
namespace {

TemplateContext Ctx() {
  TemplateContext c;
  c.params = {{"epochs", 10}, {"lr", 0.05}, {"name", "mnist"}, {"shuffle", true}};
  c.run_id = "r-1";
  c.workspace = "/data/runs/r-1";
  c.outputs_dir = "/data/runs/r-1/train/2/outputs";
  c.step = "train";
  c.attempt = 2;
  c.steps = {{"prep",
              {{"metrics", {{"rows", 60000}, {"split", "80/20"}}},
               {"outputs", {{"data.npz", "/data/runs/r-1/prep/1/outputs/data.npz"}}}}}};
  return c;
}

std::string Render(std::string_view s) {
  auto r = RenderTemplate(s, Ctx());
  EXPECT_TRUE(r.ok()) << s << ": " << r.status().ToString();
  return r.ok() ? *r : "(error)";
}

std::string RenderError(std::string_view s) {
  auto r = RenderTemplate(s, Ctx());
  if (r.ok()) return "(rendered '" + *r + "')";
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  return r.status().message();
}

TEST(SplitTemplate, Pieces) {
  auto r = SplitTemplate("a{{ x }}b{{y}}");
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->size(), 4u);
  EXPECT_FALSE((*r)[0].is_var);
  EXPECT_EQ((*r)[0].text, "a");
  EXPECT_TRUE((*r)[1].is_var);
  EXPECT_EQ((*r)[1].text, "x");
  EXPECT_EQ((*r)[1].offset, 1u);
  EXPECT_EQ((*r)[2].text, "b");
  EXPECT_EQ((*r)[3].text, "y");
  EXPECT_EQ((*r)[3].offset, 9u);
  auto empty = SplitTemplate("");
  ASSERT_TRUE(empty.ok());
  EXPECT_TRUE(empty->empty());
  auto plain = SplitTemplate("no braces }} here");
  ASSERT_TRUE(plain.ok());
  ASSERT_EQ(plain->size(), 1u);
  EXPECT_EQ((*plain)[0].text, "no braces }} here");
}

TEST(SplitTemplate, Errors) {
  auto r = SplitTemplate("ok {{params.x");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message(), "unterminated '{{' at offset 3");
  auto e = SplitTemplate("x{{  }}");
  ASSERT_FALSE(e.ok());
  EXPECT_EQ(e.status().message(), "empty template variable at offset 1");
}

TEST(ClassifyTemplateVar, Kinds) {
  using Kind = TemplateVar::Kind;
  auto k = [](std::string_view s) {
    auto r = ClassifyTemplateVar(s);
    EXPECT_TRUE(r.ok()) << s;
    return r.ok() ? r->kind : Kind::kParam;
  };
  EXPECT_EQ(k("run.id"), Kind::kRunId);
  EXPECT_EQ(k("workspace"), Kind::kWorkspace);
  EXPECT_EQ(k("step.name"), Kind::kStepName);
  EXPECT_EQ(k("attempt"), Kind::kAttempt);
  EXPECT_EQ(k("outputs"), Kind::kOutputs);
  auto p = ClassifyTemplateVar("params.lr");
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->kind, Kind::kParam);
  EXPECT_EQ(p->key, "lr");
  auto m = ClassifyTemplateVar("steps.train.metrics.val.loss");
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->kind, Kind::kStepMetric);
  EXPECT_EQ(m->step, "train");
  EXPECT_EQ(m->key, "val.loss");
  auto o = ClassifyTemplateVar("steps.train.outputs.model.pt");
  ASSERT_TRUE(o.ok());
  EXPECT_EQ(o->kind, Kind::kStepOutput);
  EXPECT_EQ(o->step, "train");
  EXPECT_EQ(o->key, "model.pt");
  for (std::string_view bad :
       {"params.", "params", "steps.train", "steps.train.metrics.", "steps..metrics.x",
        "steps.train.logs.x", "run", "Workspace", "params.a b"}) {
    auto r = ClassifyTemplateVar(bad);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.status().message(), "unknown template variable '" + std::string(bad) + "'");
  }
}

TEST(TemplateValueString, Values) {
  EXPECT_EQ(TemplateValueString(Json("raw text")), "raw text");
  EXPECT_EQ(TemplateValueString(Json(10)), "10");
  EXPECT_EQ(TemplateValueString(Json(0.05)), "0.05");
  EXPECT_EQ(TemplateValueString(Json(-3)), "-3");
  EXPECT_EQ(TemplateValueString(Json(true)), "true");
  EXPECT_EQ(TemplateValueString(Json(false)), "false");
  EXPECT_EQ(TemplateValueString(Json::array({1, 2})), "[1,2]");
}

TEST(RenderTemplate, Variables) {
  EXPECT_EQ(Render("--epochs={{params.epochs}}"), "--epochs=10");
  EXPECT_EQ(Render("{{ params.lr }}"), "0.05");
  EXPECT_EQ(Render("{{params.name}}"), "mnist");
  EXPECT_EQ(Render("{{params.shuffle}}"), "true");
  EXPECT_EQ(Render("{{run.id}}"), "r-1");
  EXPECT_EQ(Render("{{workspace}}/data"), "/data/runs/r-1/data");
  EXPECT_EQ(Render("{{step.name}}#{{attempt}}"), "train#2");
  EXPECT_EQ(Render("{{outputs}}/model.pt"), "/data/runs/r-1/train/2/outputs/model.pt");
  EXPECT_EQ(Render("{{steps.prep.metrics.rows}} {{steps.prep.metrics.split}}"), "60000 80/20");
  EXPECT_EQ(Render("{{\tsteps.prep.outputs.data.npz }}"), "/data/runs/r-1/prep/1/outputs/data.npz");
  EXPECT_EQ(Render("plain"), "plain");
  EXPECT_EQ(Render(""), "");
}

TEST(RenderTemplate, Errors) {
  EXPECT_EQ(RenderError("{{nope}}"), "unknown template variable 'nope'");
  EXPECT_EQ(RenderError("{{params.missing}}"), "template variable 'params.missing': no value");
  EXPECT_EQ(RenderError("{{steps.prep.metrics.acc}}"),
            "template variable 'steps.prep.metrics.acc': step 'prep' has no metric 'acc'");
  EXPECT_EQ(RenderError("{{steps.train.metrics.loss}}"),
            "template variable 'steps.train.metrics.loss': step 'train' has no metric 'loss'");
  EXPECT_EQ(RenderError("{{steps.prep.outputs.x.bin}}"),
            "template variable 'steps.prep.outputs.x.bin': step 'prep' has no output 'x.bin'");
  EXPECT_EQ(RenderError("{{workspace"), "unterminated '{{' at offset 0");
}

TEST(RenderCommand, RendersEveryArgument) {
  Step s;
  s.name = "train";
  s.command = {"fmnist", "train", "--epochs", "{{params.epochs}}", "--out", "{{outputs}}"};
  auto r = RenderCommand(s, Ctx());
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(*r, (std::vector<std::string>{"fmnist", "train", "--epochs", "10", "--out",
                                          "/data/runs/r-1/train/2/outputs"}));
  s.command = {"x", "{{params.gone}}"};
  auto e = RenderCommand(s, Ctx());
  ASSERT_FALSE(e.ok());
  EXPECT_EQ(e.status().message(), "command[1]: template variable 'params.gone': no value");
}

TEST(RenderCommand, DesignExampleEndToEnd) {
  auto def = ParseDefinition(Json::parse(R"({"name": "fashion-mnist",
    "params": {"epochs": 10, "lr": 0.05},
    "steps": [{"name": "train", "command": ["fmnist", "--epochs", "{{ params.epochs }}",
                                           "--lr={{params.lr}}"]}]})"));
  ASSERT_TRUE(def.ok()) << def.status().ToString();
  auto params = ResolveParams(**def, Json{{"epochs", 3}});
  ASSERT_TRUE(params.ok());
  TemplateContext c;
  c.params = *params;
  auto r = RenderCommand((*def)->steps[0], c);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(*r, (std::vector<std::string>{"fmnist", "--epochs", "3", "--lr=0.05"}));
}

}  // namespace
}  // namespace epoch::workflows
