#include "workflows/template.h"

#include "workflows/definition.h"

namespace epoch::workflows {

namespace {

bool IsBlank(char c) { return c == ' ' || c == '\t'; }

std::string_view Trim(std::string_view s) {
  while (!s.empty() && IsBlank(s.front())) s.remove_prefix(1);
  while (!s.empty() && IsBlank(s.back())) s.remove_suffix(1);
  return s;
}

Status Unknown(std::string_view name) {
  return InvalidArgument("unknown template variable '" + std::string(name) + "'");
}

}  // namespace

Result<std::vector<TemplatePiece>> SplitTemplate(std::string_view s) {
  std::vector<TemplatePiece> out;
  size_t i = 0;
  while (i < s.size()) {
    size_t open = s.find("{{", i);
    if (open == std::string_view::npos) open = s.size();
    if (open > i) out.push_back(TemplatePiece{false, std::string(s.substr(i, open - i)), i});
    if (open == s.size()) break;
    size_t close = s.find("}}", open + 2);
    if (close == std::string_view::npos) {
      return InvalidArgument("unterminated '{{' at offset " + std::to_string(open));
    }
    std::string_view name = Trim(s.substr(open + 2, close - open - 2));
    if (name.empty()) {
      return InvalidArgument("empty template variable at offset " + std::to_string(open));
    }
    out.push_back(TemplatePiece{true, std::string(name), open});
    i = close + 2;
  }
  return out;
}

Result<TemplateVar> ClassifyTemplateVar(std::string_view name) {
  using Kind = TemplateVar::Kind;
  TemplateVar v;
  v.text = std::string(name);
  if (name == "run.id") {
    v.kind = Kind::kRunId;
  } else if (name == "workspace") {
    v.kind = Kind::kWorkspace;
  } else if (name == "step.name") {
    v.kind = Kind::kStepName;
  } else if (name == "attempt") {
    v.kind = Kind::kAttempt;
  } else if (name == "outputs") {
    v.kind = Kind::kOutputs;
  } else if (name.starts_with("params.")) {
    v.kind = Kind::kParam;
    v.key = std::string(name.substr(7));
    if (v.key.empty()) return Unknown(name);
  } else if (name.starts_with("steps.")) {
    std::string_view rest = name.substr(6);
    size_t dot = rest.find('.');
    if (dot == 0 || dot == std::string_view::npos) return Unknown(name);
    v.step = std::string(rest.substr(0, dot));
    rest = rest.substr(dot + 1);
    if (rest.starts_with("metrics.")) {
      v.kind = Kind::kStepMetric;
      v.key = std::string(rest.substr(8));
    } else if (rest.starts_with("outputs.")) {
      v.kind = Kind::kStepOutput;
      v.key = std::string(rest.substr(8));
    } else if (rest.starts_with("best.params.")) {
      v.kind = Kind::kStepBestParam;
      v.key = std::string(rest.substr(12));
    } else {
      return Unknown(name);
    }
    if (v.key.empty()) return Unknown(name);
  } else {
    return Unknown(name);
  }
  for (char c : name) {
    if (IsBlank(c)) return Unknown(name);
  }
  return v;
}

std::string TemplateValueString(const Json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_boolean()) return v.get<bool>() ? "true" : "false";
  return CanonicalDump(v);
}

namespace {

// The value of one variable at dispatch time.
Result<std::string> RenderVar(const TemplateVar& v, const TemplateContext& ctx) {
  using Kind = TemplateVar::Kind;
  auto missing = [&](const std::string& why) {
    return InvalidArgument("template variable '" + v.text + "': " + why);
  };
  switch (v.kind) {
    case Kind::kRunId:
      return ctx.run_id;
    case Kind::kWorkspace:
      return ctx.workspace;
    case Kind::kStepName:
      return ctx.step;
    case Kind::kAttempt:
      return std::to_string(ctx.attempt);
    case Kind::kOutputs:
      return ctx.outputs_dir;
    case Kind::kParam: {
      if (!ctx.params.is_object()) return missing("no value");
      auto it = ctx.params.find(v.key);
      if (it == ctx.params.end() || it->is_null()) return missing("no value");
      return TemplateValueString(*it);
    }
    case Kind::kStepMetric:
    case Kind::kStepOutput:
    case Kind::kStepBestParam: {
      bool metric = v.kind == Kind::kStepMetric;
      bool best = v.kind == Kind::kStepBestParam;
      const char* section = best ? "best_params" : metric ? "metrics" : "outputs";
      std::string what = std::string(best     ? "best trial parameter '"
                                     : metric ? "metric '"
                                              : "output '") +
                         v.key + "'";
      if (!ctx.steps.is_object()) return missing("step '" + v.step + "' has no " + what);
      auto s = ctx.steps.find(v.step);
      if (s == ctx.steps.end() || !s->is_object()) {
        return missing("step '" + v.step + "' has no " + what);
      }
      auto sec = s->find(section);
      if (sec == s->end() || !sec->is_object()) {
        return missing("step '" + v.step + "' has no " + what);
      }
      auto it = sec->find(v.key);
      if (it == sec->end() || it->is_null()) {
        return missing("step '" + v.step + "' has no " + what);
      }
      return TemplateValueString(*it);
    }
  }
  return Internal("unhandled template variable kind");
}

}  // namespace

Result<std::string> RenderTemplate(std::string_view s, const TemplateContext& ctx) {
  try {
    ASSIGN_OR_RETURN(std::vector<TemplatePiece> pieces, SplitTemplate(s));
    std::string out;
    out.reserve(s.size());
    for (const auto& p : pieces) {
      if (!p.is_var) {
        out += p.text;
        continue;
      }
      ASSIGN_OR_RETURN(TemplateVar v, ClassifyTemplateVar(p.text));
      ASSIGN_OR_RETURN(std::string value, RenderVar(v, ctx));
      out += value;
    }
    return out;
  } catch (const Json::exception& e) {
    return Internal(std::string("rendering template: ") + e.what());
  }
}

Result<std::vector<std::string>> RenderCommand(const Step& step, const TemplateContext& ctx) {
  std::vector<std::string> argv;
  argv.reserve(step.command.size());
  for (size_t i = 0; i < step.command.size(); ++i) {
    auto r = RenderTemplate(step.command[i], ctx);
    if (!r.ok()) return r.status().WithContext(IndexPath("command", i));
    argv.push_back(std::move(r).value());
  }
  return argv;
}

}  // namespace epoch::workflows
