// Command templates: the {{...}} placeholders in a step's command arguments and
// env values. RenderTemplate/RenderCommand (definition.h) substitute them at
// dispatch time; ParseDefinition uses the helpers here to check every
// placeholder when the definition is registered.
//
// Syntax: "{{" <spaces> <variable> <spaces> "}}", anywhere in a string, any number
// of times. Variables:
//   params.<name>                  a run parameter (declared in `params`)
//   run.id, workspace, step.name, attempt, outputs (this attempt's outputs dir)
//   steps.<step>.metrics.<key>     a metric reported by an upstream step
//   steps.<step>.outputs.<file>    absolute path of an upstream step's output file
// There is no escape for a literal "{{".
//
// Thread-safety: pure functions.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "common/json.h"
#include "common/status.h"

namespace epoch::workflows {

// One piece of a template: literal text or a variable (trimmed, without braces).
struct TemplatePiece {
  bool is_var = false;
  std::string text;
  size_t offset = 0;  // byte offset of the piece ("{{" for a variable) in the template
};

// Splits s into literal and variable pieces. kInvalidArgument for an unterminated
// "{{" ("unterminated '{{' at offset N") or an empty "{{ }}".
Result<std::vector<TemplatePiece>> SplitTemplate(std::string_view s);

struct TemplateVar {
  enum class Kind {
    kParam,
    kRunId,
    kWorkspace,
    kStepName,
    kAttempt,
    kOutputs,
    kStepMetric,
    kStepOutput,
    kStepBestParam  // steps.<name>.best.params.<X>: the best trial's value of a swept step
  };
  Kind kind = Kind::kParam;
  std::string text;  // as written (trimmed): "params.epochs"
  std::string step;  // kStepMetric, kStepOutput, kStepBestParam
  std::string key;   // param name, metric key or output file name
};

// Classifies a variable name. kInvalidArgument "unknown template variable '<name>'".
Result<TemplateVar> ClassifyTemplateVar(std::string_view name);

// How a JSON value (param or metric) is written into a command: strings raw,
// booleans true/false, numbers as JSON (10, 0.05), anything else as compact JSON.
std::string TemplateValueString(const Json& v);

}  // namespace epoch::workflows
