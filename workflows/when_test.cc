#include "workflows/when.h"

#include <gtest/gtest.h>

#include "workflows/definition.h"

namespace epoch::workflows {
namespace {

// Parses and evaluates; a parse failure fails the test and evaluates to false.
bool Eval(const std::string& text, const Json& params, const Json& steps) {
  auto e = WhenExpr::Parse(text);
  EXPECT_TRUE(e.ok()) << text << ": " << e.status().ToString();
  if (!e.ok()) return false;
  return (*e)->Evaluate(params, steps);
}

std::string ParseError(const std::string& text) {
  auto e = WhenExpr::Parse(text);
  if (e.ok()) return "(parsed)";
  EXPECT_EQ(e.status().code(), StatusCode::kInvalidArgument);
  return e.status().message();
}

class WhenTest : public ::testing::Test {
 protected:
  Json params_ = {{"mode", "fast"}, {"epochs", 10}, {"flag", true}, {"unset", nullptr}};
  Json steps_ = {
      {"validate",
       {{"metrics", {{"accuracy", 0.9}, {"loss", 0.25}, {"label", "cat"}, {"val.top5", 0.99}}}}},
      {"prep", {{"metrics", {{"rows", 60000}}}, {"outputs", Json::object()}}},
  };

  bool E(const std::string& text) { return Eval(text, params_, steps_); }
};

TEST_F(WhenTest, NumberComparisons) {
  EXPECT_TRUE(E("steps.validate.metrics.accuracy >= 0.85"));
  EXPECT_TRUE(E("steps.validate.metrics.accuracy >= 0.9"));
  EXPECT_FALSE(E("steps.validate.metrics.accuracy > 0.9"));
  EXPECT_TRUE(E("steps.validate.metrics.accuracy > 0.85"));
  EXPECT_FALSE(E("steps.validate.metrics.accuracy < 0.85"));
  EXPECT_TRUE(E("steps.validate.metrics.loss <= 0.25"));
  EXPECT_TRUE(E("steps.prep.metrics.rows == 60000"));
  EXPECT_TRUE(E("steps.prep.metrics.rows == 6e4"));
  EXPECT_FALSE(E("steps.prep.metrics.rows != 60000"));
  EXPECT_TRUE(E("steps.prep.metrics.rows > -1"));
  EXPECT_TRUE(E("0.5 < steps.validate.metrics.accuracy"));  // literal on the left
  EXPECT_TRUE(E("steps.validate.metrics.val.top5>0.98"));   // dotted key, no spaces
  EXPECT_TRUE(E("params.epochs >= 10"));
  EXPECT_FALSE(E("params.epochs > 10"));
}

TEST_F(WhenTest, StringComparisons) {
  EXPECT_TRUE(E("params.mode == 'fast'"));
  EXPECT_TRUE(E("params.mode == \"fast\""));
  EXPECT_FALSE(E("params.mode == 'slow'"));
  EXPECT_TRUE(E("params.mode != 'slow'"));
  EXPECT_TRUE(E("steps.validate.metrics.label == 'cat'"));
  EXPECT_TRUE(E("params.mode < 'zzz'"));  // lexicographic
  EXPECT_FALSE(E("params.mode > 'zzz'"));
  EXPECT_TRUE(Eval("params.q == 'it\\'s'", Json{{"q", "it's"}}, Json::object()));
}

TEST_F(WhenTest, BooleansAndConstants) {
  EXPECT_TRUE(E("true"));
  EXPECT_FALSE(E("false"));
  EXPECT_TRUE(E("params.flag == true"));
  EXPECT_FALSE(E("params.flag == false"));
  EXPECT_FALSE(E("params.flag > false"));  // booleans have no order
}

TEST_F(WhenTest, MixedTypesNeverEqual) {
  EXPECT_FALSE(E("params.mode == 1"));
  EXPECT_TRUE(E("params.mode != 1"));
  EXPECT_FALSE(E("params.mode < 1"));
  EXPECT_FALSE(E("params.epochs == '10'"));
  EXPECT_TRUE(E("params.epochs != '10'"));
  EXPECT_FALSE(E("params.epochs >= '10'"));
}

TEST_F(WhenTest, LogicAndPrecedence) {
  EXPECT_TRUE(E("steps.validate.metrics.accuracy > 0.5 && params.mode == 'fast'"));
  EXPECT_FALSE(E("steps.validate.metrics.accuracy > 0.95 && params.mode == 'fast'"));
  EXPECT_TRUE(E("steps.validate.metrics.accuracy > 0.95 || params.mode == 'fast'"));
  EXPECT_FALSE(E("steps.validate.metrics.accuracy > 0.95 || params.mode == 'slow'"));
  EXPECT_TRUE(E("true || false && false"));  // && binds tighter than ||
  EXPECT_FALSE(E("(true || false) && false"));
  EXPECT_FALSE(E("!true"));
  EXPECT_TRUE(E("!false"));
  EXPECT_TRUE(E("!!true"));
  EXPECT_TRUE(E("!(params.mode == 'slow')"));
  EXPECT_FALSE(E("!(steps.validate.metrics.accuracy > 0.5 && params.epochs == 10)"));
  EXPECT_TRUE(E("((params.epochs == 10))"));
}

TEST_F(WhenTest, MissingValuesMakeComparisonFalse) {
  EXPECT_FALSE(E("steps.validate.metrics.f1 >= 0.5"));
  EXPECT_FALSE(E("steps.validate.metrics.f1 < 0.5"));
  EXPECT_FALSE(E("steps.validate.metrics.f1 != 0.5"));  // false even for !=
  EXPECT_FALSE(E("steps.train.metrics.loss < 1"));      // step not finished
  EXPECT_FALSE(E("params.unset == 1"));                 // null counts as missing
  EXPECT_FALSE(E("params.other != 1"));
  EXPECT_TRUE(E("!(steps.validate.metrics.f1 >= 0.5)"));
  EXPECT_TRUE(E("steps.validate.metrics.f1 >= 0.5 || true"));
  // Non-object inputs are treated as empty.
  EXPECT_FALSE(Eval("steps.a.metrics.b == 1", Json(nullptr), Json::array()));
  EXPECT_FALSE(Eval("steps.a.metrics.b == 1", Json::object(), Json{{"a", 3}}));
}

TEST(WhenParse, Refs) {
  auto e = WhenExpr::Parse("steps.validate.metrics.accuracy >= params.min && params.min > 0");
  ASSERT_TRUE(e.ok());
  const auto& refs = (*e)->refs();
  ASSERT_EQ(refs.size(), 3u);
  EXPECT_EQ(refs[0].kind, WhenExpr::Ref::Kind::kMetric);
  EXPECT_EQ(refs[0].step, "validate");
  EXPECT_EQ(refs[0].key, "accuracy");
  EXPECT_EQ(refs[0].text, "steps.validate.metrics.accuracy");
  EXPECT_EQ(refs[1].kind, WhenExpr::Ref::Kind::kParam);
  EXPECT_EQ(refs[1].key, "min");
  EXPECT_EQ(refs[2].key, "min");
  EXPECT_EQ((*e)->text(), "steps.validate.metrics.accuracy >= params.min && params.min > 0");
}

TEST(WhenParse, Errors) {
  EXPECT_EQ(ParseError(""), "unparsable expression: empty expression at column 1");
  EXPECT_EQ(ParseError("   "), "unparsable expression: empty expression at column 1");
  EXPECT_EQ(ParseError("accuracy > 1"),
            "unparsable expression: unknown name 'accuracy' (expected steps.<step>.metrics.<key>, "
            "params.<name>, true or false) at column 1");
  EXPECT_EQ(ParseError("steps.v.acc > 1"),
            "unparsable expression: unknown name 'steps.v.acc' (expected "
            "steps.<step>.metrics.<key>, params.<name>, true or false) at column 1");
  EXPECT_EQ(ParseError("params.x = 1"),
            "unparsable expression: unexpected '=' (use '==') at column 10");
  EXPECT_EQ(ParseError("true & false"),
            "unparsable expression: unexpected '&' (use '&&') at column 6");
  EXPECT_EQ(ParseError("params.x == 'abc"),
            "unparsable expression: unterminated string at column 13");
  EXPECT_EQ(ParseError("(params.x == 1"),
            "unparsable expression: expected ')' but found end of expression at column 15");
  EXPECT_EQ(ParseError("params.x == 1)"), "unparsable expression: unexpected ')' at column 14");
  EXPECT_EQ(ParseError("params.x"),
            "unparsable expression: expected a comparison operator (==, !=, <, <=, >, >=) but "
            "found end of expression at column 9");
  EXPECT_EQ(ParseError("params.x == 1 2"), "unparsable expression: unexpected number at column 15");
  EXPECT_EQ(ParseError("params.x == 1.2.3"),
            "unparsable expression: malformed number at column 13");
  EXPECT_EQ(ParseError("params.x == 5s"), "unparsable expression: malformed number at column 13");
  EXPECT_EQ(ParseError("params.x @ 1"),
            "unparsable expression: unexpected character '@' at column 10");
  EXPECT_EQ(ParseError("params.x == 1 &&"),
            "unparsable expression: expected a value (steps.<step>.metrics.<key>, params.<name>, a "
            "number or a string) but found end of expression at column 17");
  std::string deep(40, '(');
  deep += "true" + std::string(40, ')');
  EXPECT_EQ(ParseError(deep), "unparsable expression: nested too deeply at column 34");
  std::string nots(40, '!');
  EXPECT_EQ(ParseError(nots + "true"), "unparsable expression: nested too deeply at column 34");
}

// Messages quote the character they stop at; the API sends them as JSON, so they must
// stay valid UTF-8 whatever the expression holds (found by tests/fuzz).
TEST(WhenParse, ErrorsQuoteWholeCharactersOrBytes) {
  EXPECT_EQ(ParseError("params.x == \u00e9"),
            "unparsable expression: unexpected character '\u00e9' at column 13");
  EXPECT_EQ(ParseError("\u20ac > 1"),
            "unparsable expression: unexpected character '\u20ac' at column 1");
  EXPECT_EQ(ParseError("params.x == \xc3"),
            "unparsable expression: unexpected character byte 0xc3 at column 13");
  EXPECT_EQ(ParseError("\xed\xa0\x80"),  // a UTF-16 surrogate: not UTF-8
            "unparsable expression: unexpected character byte 0xed at column 1");
  EXPECT_EQ(ParseError(std::string("params.x == \x01")),
            "unparsable expression: unexpected character byte 0x01 at column 13");
  for (const char* text : {"\xc3", "\xf0\x9f\x98", "\xff", "\x7f", "params.x \xe2\x82"}) {
    std::string message = ParseError(text);
    EXPECT_NO_THROW((void)Json(message).dump()) << message;
  }
}

// "a && b && c ..." is as long as the text allows, not limited like nesting: a chain of
// 200,000 operands parses, evaluates and is destroyed without deep recursion (a left-deep
// tree overflowed the stack; found by tests/fuzz).
TEST(WhenParse, LongChainsDoNotRecurse) {
  std::string ands = "true", ors = "false";
  for (int i = 0; i < 200000; ++i) {
    ands += " && params.n == 1";
    ors += " || params.n == 2";
  }
  EXPECT_TRUE(Eval(ands, Json{{"n", 1}}, Json::object()));
  EXPECT_FALSE(Eval(ands, Json{{"n", 2}}, Json::object()));
  EXPECT_TRUE(Eval(ors + " || true", Json{{"n", 1}}, Json::object()));
  EXPECT_FALSE(Eval(ors, Json{{"n", 1}}, Json::object()));
  EXPECT_TRUE(Eval(ors, Json{{"n", 2}}, Json::object()));
  auto e = WhenExpr::Parse(ands);
  ASSERT_TRUE(e.ok());
  EXPECT_EQ((*e)->refs().size(), 200000u);
  // Precedence is unchanged: && binds tighter than ||, chains mix.
  EXPECT_TRUE(Eval("false && true || true", Json::object(), Json::object()));
  EXPECT_TRUE(Eval("true || false && false", Json::object(), Json::object()));
  EXPECT_FALSE(Eval("(true || false) && false", Json::object(), Json::object()));
  EXPECT_FALSE(Eval("!true && true || false && true", Json::object(), Json::object()));
  EXPECT_TRUE(Eval("false || false || !(false && true && true)", Json::object(), Json::object()));
}

TEST(EvaluateWhen, StepWithoutWhenIsTrue) {
  Step s;
  auto r = EvaluateWhen(s, Json::object(), Json::object());
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(*r);
}

TEST(EvaluateWhen, UsesParsedExpressionOrText) {
  Step s;
  s.when = "params.n > 1";  // text only: parsed on demand
  auto r = EvaluateWhen(s, Json{{"n", 2}}, Json::object());
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(*r);
  auto f = EvaluateWhen(s, Json{{"n", 1}}, Json::object());
  ASSERT_TRUE(f.ok());
  EXPECT_FALSE(*f);
  s.when = "params.n >";
  EXPECT_FALSE(EvaluateWhen(s, Json{{"n", 2}}, Json::object()).ok());

  auto def = ParseDefinition(Json::parse(R"({"name": "wf", "steps": [
      {"name": "v", "command": ["v"]},
      {"name": "i", "after": ["v"], "command": ["i"], "when": "steps.v.metrics.acc >= 0.85"}]})"));
  ASSERT_TRUE(def.ok()) << def.status().ToString();
  const Step& i = (*def)->steps[1];
  auto yes = EvaluateWhen(i, Json::object(), Json{{"v", {{"metrics", {{"acc", 0.9}}}}}});
  auto no = EvaluateWhen(i, Json::object(), Json{{"v", {{"metrics", {{"acc", 0.8}}}}}});
  auto missing = EvaluateWhen(i, Json::object(), Json{{"v", {{"metrics", Json::object()}}}});
  ASSERT_TRUE(yes.ok() && no.ok() && missing.ok());
  EXPECT_TRUE(*yes);
  EXPECT_FALSE(*no);
  EXPECT_FALSE(*missing);
}

}  // namespace
}  // namespace epoch::workflows
