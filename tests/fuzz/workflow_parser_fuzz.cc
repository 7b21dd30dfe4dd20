// libFuzzer target: the workflow definition parser and what it validates.
//
// Each input is used twice:
//   - as the text of a `when` expression (WhenExpr::Parse), which must either fail
//     with "unparsable expression: ..." or parse into an expression whose negation
//     "!(<text>)" evaluates to the opposite value;
//   - as JSON (ParseJson): ParseDefinition on it, and ParseSweep when it is an object
//     (so the seed corpus can hold bare sweep objects too).
// ParseDefinition must never throw, crash or return anything but kInvalidArgument with
// one "<path>: <reason>" detail per problem, all of them valid UTF-8 (the API dumps them
// as JSON). An accepted definition must round-trip: its normalised source, dumped and
// parsed again (compact or pretty), gives the same definition and digest; its sweeps,
// retry delays, `when` expressions and command templates must behave as their headers
// promise. Any violation abort()s with a message, which libFuzzer reports as a crash.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "common/json.h"
#include "common/sha256.h"
#include "common/status.h"
#include "workflows/definition.h"
#include "workflows/sweep.h"
#include "workflows/template.h"
#include "workflows/when.h"

namespace {

using epoch::CanonicalDump;
using epoch::Json;
using epoch::ParseJson;
using epoch::Status;
using epoch::StatusCode;
using namespace epoch::workflows;

[[noreturn]] void Fail(const std::string& what) {
  std::fprintf(stderr, "workflow_parser_fuzz: invariant violated: %s\n", what.c_str());
  std::fflush(stderr);
  std::abort();
}

void Check(bool ok, const std::string& what) {
  if (!ok) Fail(what);
}

// What the API does with problems: dump them as JSON strings (strict UTF-8).
bool DumpsAsJson(const std::string& s) {
  try {
    (void)Json(s).dump();
    return true;
  } catch (const Json::exception&) {
    return false;
  }
}

// ---- when ----

void CheckWhen(std::string_view text) {
  auto expr = WhenExpr::Parse(text);
  if (!expr.ok()) {
    Check(expr.status().code() == StatusCode::kInvalidArgument,
          "WhenExpr::Parse failed with " + expr.status().ToString());
    Check(expr.status().message().starts_with("unparsable expression: "),
          "WhenExpr::Parse error without its prefix: " + expr.status().message());
    return;
  }
  const WhenExpr& e = **expr;
  Check(e.text() == text, "WhenExpr::text() differs from the source");
  // Values for every reference: numbers, strings and booleans by turn.
  Json params = Json::object(), steps = Json::object();
  int n = 0;
  for (const auto& ref : e.refs()) {
    Check(!ref.key.empty() && !ref.text.empty(), "WhenExpr ref with an empty key/text");
    Json v = n % 3 == 0   ? Json(0.5 * n)
             : n % 3 == 1 ? Json("s" + std::to_string(n))
                          : Json(n % 2 == 0);
    ++n;
    if (ref.kind == WhenExpr::Ref::Kind::kParam) {
      params[ref.key] = v;
    } else {
      Check(!ref.step.empty(), "WhenExpr metric ref without a step");
      steps[ref.step]["metrics"][ref.key] = v;
    }
  }
  // The negation parses unless it nests too deeply, and always means the opposite.
  auto neg = WhenExpr::Parse("!(" + std::string(text) + ")");
  if (neg.ok()) {
    Check((*neg)->refs().size() == e.refs().size(), "!(...) changed the references");
  } else {
    Check(neg.status().message().find("nested too deeply") != std::string::npos,
          "!(<valid>) failed: " + neg.status().message());
  }
  for (const auto& [p, s] : {std::pair<Json, Json>{Json::object(), Json::object()},
                             std::pair<Json, Json>{params, steps}, std::pair<Json, Json>{1, "x"}}) {
    bool v = e.Evaluate(p, s);
    Check(v == e.Evaluate(p, s), "WhenExpr::Evaluate is not deterministic");
    if (neg.ok()) {
      Check((*neg)->Evaluate(p, s) == !v,
            "!(" + std::string(text) + ") does not evaluate to the negation");
    }
  }
}

// ---- sweeps ----

void CheckSweep(const Sweep& s, const std::string& where) {
  int count = TrialCount(s);
  Check(count >= 1 && count <= kMaxSweepTrials,
        where + ": TrialCount " + std::to_string(count) + " outside 1..kMaxSweepTrials");
  Check(!s.params.empty(), where + ": a parsed sweep without parameters");
  Check(s.parallel >= 1 && s.parallel <= kMaxSweepTrials, where + ": parallel out of range");
  Check(!s.metric.empty(), where + ": empty objective metric");
  for (size_t i = 1; i < s.params.size(); ++i) {
    Check(s.params[i - 1].name < s.params[i].name, where + ": params not sorted by name");
  }
  Check(TrialParams(s, -1).is_null() && TrialParams(s, count).is_null(),
        where + ": TrialParams outside [0, TrialCount) is not null");
  std::set<std::string> seen;
  std::vector<std::pair<int, Json>> results;
  for (int t : {0, count / 2, count - 1}) {
    Json tp = TrialParams(s, t);
    Check(tp.is_object() && tp.size() == s.params.size(),
          where + ": TrialParams(" + std::to_string(t) + ") = " + CanonicalDump(tp));
    Check(tp == TrialParams(s, t), where + ": TrialParams is not deterministic");
    seen.insert(CanonicalDump(tp));
    for (const auto& p : s.params) {
      Check(tp.contains(p.name), where + ": trial lacks parameter " + p.name);
      const Json& v = tp[p.name];
      if (!p.is_range) {
        bool listed = false;
        for (const auto& x : p.values) listed = listed || x == v;
        Check(listed, where + ": " + p.name + " = " + CanonicalDump(v) + " is not in its list");
        continue;
      }
      Check(v.is_number(), where + ": range parameter " + p.name + " = " + CanonicalDump(v));
      double d = v.get<double>();
      Check(std::isfinite(d) && d >= p.min && d <= p.max,
            where + ": " + p.name + " = " + CanonicalDump(v) + " outside [" +
                std::to_string(p.min) + ", " + std::to_string(p.max) + "]");
      Check(!p.integer || v.is_number_integer(),
            where + ": integer range " + p.name + " gave " + CanonicalDump(v));
    }
    results.push_back({t, Json{{s.metric, t}}});
  }
  if (s.method == Sweep::Method::kGrid && count >= 2) {
    Check(CanonicalDump(TrialParams(s, 0)) != CanonicalDump(TrialParams(s, count - 1)) ||
              std::any_of(s.params.begin(), s.params.end(),
                          [](const SweepParam& p) {
                            std::set<std::string> distinct;
                            for (const auto& x : p.values) distinct.insert(CanonicalDump(x));
                            return distinct.size() < p.values.size();
                          }),
          where + ": the first and last grid trials are equal");
  }
  int best = BestTrial(s, results);
  int want = s.maximize ? count - 1 : 0;
  Check(best == want,
        where + ": BestTrial " + std::to_string(best) + ", expected " + std::to_string(want));
  Check(BestTrial(s, {}) == -1 && BestTrial(s, {{0, nullptr}, {-3, Json{{s.metric, 1}}}}) == -1,
        where + ": BestTrial without a counting trial is not -1");
}

void CheckSweepObject(const Json& j) {
  std::vector<std::string> problems{"earlier"};
  std::optional<Sweep> s = ParseSweep(j, "sweep", &problems);
  Check(!problems.empty() && problems.front() == "earlier", "ParseSweep dropped earlier entries");
  if (!s) {
    Check(problems.size() > 1, "ParseSweep rejected without a problem");
    for (size_t i = 1; i < problems.size(); ++i) {
      Check(problems[i].starts_with("sweep"),
            "ParseSweep problem outside its path: " + problems[i]);
      Check(DumpsAsJson(problems[i]), "ParseSweep problem is not valid UTF-8");
    }
    return;
  }
  Check(problems.size() == 1, "ParseSweep accepted with problems");
  CheckSweep(*s, "sweep");
}

// ---- definitions ----

void CheckRejection(const Status& st, const std::string& what) {
  Check(st.code() == StatusCode::kInvalidArgument, what + " failed with " + st.ToString());
  Check(!st.details().empty(), what + " rejected without details: " + st.message());
  Check(DumpsAsJson(st.message()), what + ": message is not valid UTF-8");
  for (const auto& d : st.details()) {
    Check(d.find(": ") != std::string::npos, what + ": detail without '<path>: ': " + d);
    Check(DumpsAsJson(d), what + ": detail is not valid UTF-8: " +
                              Json(d).dump(-1, ' ', true, Json::error_handler_t::replace));
  }
}

// Every template in a step renders once each variable it names has a value.
void CheckTemplates(const Definition& def, const Step& step) {
  epoch::workflows::TemplateContext ctx;
  ctx.run_id = "r1";
  ctx.workspace = "runs/r1";
  ctx.outputs_dir = "out";
  ctx.step = step.name;
  for (auto it = def.params.begin(); it != def.params.end(); ++it) {
    ctx.params[it.key()] = it.value().is_null() ? Json("x") : it.value();
  }
  if (step.sweep) {
    Json tp = TrialParams(*step.sweep, 0);
    for (auto it = tp.begin(); it != tp.end(); ++it) ctx.params[it.key()] = it.value();
  }
  std::vector<std::string> templates = step.command;
  for (const auto& [k, v] : step.env) templates.push_back(v);
  for (const auto& in : step.inputs) templates.push_back(in);
  for (const auto& t : templates) {
    auto pieces = SplitTemplate(t);
    Check(pieces.ok(), "accepted template does not split: " + pieces.status().message());
    for (const auto& piece : *pieces) {
      if (!piece.is_var) continue;
      auto var = ClassifyTemplateVar(piece.text);
      Check(var.ok(), "accepted template variable is unknown: " + var.status().message());
      const char* section = var->kind == TemplateVar::Kind::kStepMetric      ? "metrics"
                            : var->kind == TemplateVar::Kind::kStepOutput    ? "outputs"
                            : var->kind == TemplateVar::Kind::kStepBestParam ? "best_params"
                                                                             : nullptr;
      if (!section) continue;
      Check(def.FindStep(var->step) != nullptr, "template refers to a missing step " + var->step);
      ctx.steps[var->step][section][var->key] = "v";
    }
  }
  auto argv = RenderCommand(step, ctx);
  Check(argv.ok(), "accepted step " + step.name + " does not render: " + argv.status().message());
  Check(argv->size() == step.command.size(), "RenderCommand changed argc");
  for (size_t i = step.command.size(); i < templates.size(); ++i) {
    auto r = RenderTemplate(templates[i], ctx);
    Check(r.ok(),
          "accepted env/input " + templates[i] + " does not render: " + r.status().message());
  }
  auto when = EvaluateWhen(step, ctx.params, ctx.steps);
  Check(when.ok(), "EvaluateWhen failed: " + when.status().message());
}

void CheckAccepted(const Definition& def, const Json& input) {
  Check(def.digest == epoch::Sha256Hex(CanonicalDump(def.source)), "digest is not of the source");
  Check(def.source == input, "source is not the input");
  Check(!def.name.empty() && !def.steps.empty(), "accepted without a name or steps");
  // topo_order: a permutation of the steps with every step after its upstream steps.
  Check(def.topo_order.size() == def.steps.size(), "topo_order does not cover the steps");
  std::vector<int> pos(def.steps.size(), -1);
  for (size_t i = 0; i < def.topo_order.size(); ++i) {
    size_t s = def.topo_order[i];
    Check(s < def.steps.size() && pos[s] < 0, "topo_order is not a permutation");
    pos[s] = static_cast<int>(i);
  }
  std::set<std::string> names;
  for (size_t i = 0; i < def.steps.size(); ++i) {
    const Step& s = def.steps[i];
    Check(names.insert(s.name).second, "duplicate step name accepted: " + s.name);
    Check(def.FindStep(s.name) == &s, "FindStep does not find " + s.name);
    Check(!s.command.empty() && !s.command[0].empty(), "step without a program accepted");
    for (const auto& a : s.after) {
      const Step* up = def.FindStep(a);
      Check(up != nullptr && up != &s, "after names a missing step or itself: " + a);
      Check(pos[static_cast<size_t>(up - def.steps.data())] < pos[i],
            "topo_order puts " + s.name + " before its upstream " + a);
    }
    Check(s.workers >= 1 && s.workers <= 256, "workers out of range");
    Check(s.resources.cpu_millis >= 1 && s.resources.memory_bytes >= 1 && s.resources.gpus >= 0,
          "non-positive resources accepted");
    Check(s.retry.limit >= 0 && s.retry.limit <= 100, "retry.limit out of range");
    Check(!s.timeout || s.timeout->count() > 0, "non-positive timeout accepted");
    Check(!s.cache_max_age || s.cache_max_age->count() > 0, "non-positive cache.maxAge accepted");
    Check(s.when.empty() == (s.when_expr == nullptr), "when and when_expr disagree");
    if (s.when_expr) Check(s.when_expr->text() == s.when, "when_expr text differs");
    Check(s.retry.DelayBefore(1).count() == 0, "the first attempt has a retry delay");
    epoch::Micros prev(0);
    for (int a = 2; a <= s.retry.limit + 1 && a <= 70; ++a) {
      epoch::Micros d = s.retry.DelayBefore(a);
      Check(d.count() >= 0, "negative retry delay");
      if (s.retry.backoff == RetryPolicy::Backoff::kExponential) {
        Check(d <= s.retry.max && d >= prev, "exponential retry delay not capped or decreasing");
      } else {
        Check(d == s.retry.initial, "fixed retry delay is not retry.initial");
      }
      prev = d;
    }
    if (s.sweep) {
      CheckSweep(*s.sweep, s.name + ".sweep");
      std::vector<std::string> problems;
      auto again = ParseSweep(input["steps"][i]["sweep"], "sweep", &problems);
      Check(again.has_value() && TrialParams(*again, 0) == TrialParams(*s.sweep, 0),
            "ParseSweep on the step's sweep disagrees with ParseDefinition");
    }
    CheckTemplates(def, s);
  }
  auto resolved = ResolveParams(def, Json::object());
  if (resolved.ok()) {
    Check(resolved->size() == def.params.size(), "ResolveParams lost params");
  } else {
    Check(resolved.status().code() == StatusCode::kInvalidArgument,
          "ResolveParams failed with " + resolved.status().ToString());
  }
}

void CheckDefinition(const Json& j) {
  auto def = ParseDefinition(j);
  if (!def.ok()) {
    CheckRejection(def.status(), "ParseDefinition");
    return;
  }
  CheckAccepted(**def, j);

  // Round trip: the normalised source, dumped compact and pretty and parsed again,
  // is the same definition.
  const std::string canonical = CanonicalDump((*def)->source);
  for (const std::string& text : {canonical, (*def)->source.dump(2)}) {
    auto j2 = ParseJson(text);
    Check(j2.ok(), "the source does not parse back: " + j2.status().message());
    Check(*j2 == (*def)->source, "the source changed through dump/parse: " + canonical);
    auto def2 = ParseDefinition(*j2);
    Check(def2.ok(), "the source is rejected after dump/parse: " + def2.status().ToString());
    Check((*def2)->digest == (*def)->digest, "the digest changed through dump/parse");
    Check(
        (*def2)->steps.size() == (*def)->steps.size() && (*def2)->topo_order == (*def)->topo_order,
        "the steps changed through dump/parse");
  }

  // max_resources: the largest request fits; one unit less rejects it.
  Resources most{1, 1, 0};
  for (const auto& s : (*def)->steps) {
    most.cpu_millis = std::max(most.cpu_millis, s.resources.cpu_millis);
    most.memory_bytes = std::max(most.memory_bytes, s.resources.memory_bytes);
    most.gpus = std::max(most.gpus, s.resources.gpus);
  }
  auto fits = ParseDefinition(j, most);
  Check(fits.ok() && (*fits)->digest == (*def)->digest,
        "rejected with max_resources = its own largest request");
  Resources less = most;
  --less.cpu_millis;
  auto too_big = ParseDefinition(j, less);
  if (too_big.ok()) Fail("accepted a step needing more CPU than max_resources");
  CheckRejection(too_big.status(), "ParseDefinition(max_resources)");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  CheckWhen(text);
  auto j = ParseJson(text);
  if (!j.ok()) {
    Check(j.status().code() == StatusCode::kInvalidArgument, "ParseJson: " + j.status().ToString());
    return 0;
  }
  CheckDefinition(*j);
  if (j->is_object()) CheckSweepObject(*j);
  return 0;
}
