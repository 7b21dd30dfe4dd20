// WhenExpr: a step's `when` condition, parsed once when the definition is
// validated and evaluated by the engine when the step's dependencies are done.
//
// Grammar (whitespace between tokens is ignored):
//   expr    := or
//   or      := and ( "||" and )*
//   and     := unary ( "&&" unary )*
//   unary   := "!" unary | primary
//   primary := "(" expr ")" | "true" | "false" | operand cmp operand
//   operand := ref | number | string | "true" | "false"
//   ref     := "steps." <step> ".metrics." <key> | "params." <name>
//   cmp     := "==" | "!=" | "<" | "<=" | ">" | ">="
//   number  := JSON-style number ("0.85", "-1", "1e-3")
//   string  := '...' or "..." (backslash escapes the next character)
//
// Evaluation: a reference that has no value (metric not reported, param absent
// or null) makes its comparison false, whatever the operator. Numbers compare
// numerically, strings lexicographically, booleans only with == and !=. Values
// of different types are never equal: == is false, != is true, ordering false.
//
// Thread-safety: immutable once parsed; Evaluate is const and safe to call from
// any thread.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/json.h"
#include "common/status.h"

namespace epoch::workflows {

class WhenExpr {
 public:
  // A value the expression reads at evaluation time.
  struct Ref {
    enum class Kind { kParam, kMetric };
    Kind kind = Kind::kParam;
    std::string step;  // kMetric only
    std::string key;   // param name or metric key
    std::string text;  // as written: "steps.validate.metrics.accuracy"
  };

  // Parses text. kInvalidArgument "unparsable expression: <why> at column N"
  // (1-based) on a syntax error, an unknown name, or nesting deeper than 32.
  static Result<std::shared_ptr<const WhenExpr>> Parse(std::string_view text);

  ~WhenExpr();
  WhenExpr(const WhenExpr&) = delete;
  WhenExpr& operator=(const WhenExpr&) = delete;

  // params: resolved run params (object). steps: {"<step>": {"metrics": {...}}}.
  // Non-object arguments are treated as empty. Never fails.
  bool Evaluate(const Json& params, const Json& steps) const;

  const std::string& text() const { return text_; }
  // Every reference, in source order (repeats included); used by validation to
  // check that params are declared and steps are upstream.
  const std::vector<Ref>& refs() const { return refs_; }

  struct Node;  // AST node, defined in when.cc

 private:
  friend class WhenParser;
  WhenExpr();

  std::string text_;
  std::vector<Ref> refs_;
  std::unique_ptr<Node> root_;
};

}  // namespace epoch::workflows
