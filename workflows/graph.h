// Internal to workflows/: the passes over a definition's step graph that the parser
// (definition.cc) runs once every step is read: a dependency order that names each
// cycle, every step's transitive upstream, and the checks that a template variable or
// a `when` condition refers only to params, sweeps and upstream steps that exist. Not
// part of the API.
#pragma once

#include <cstddef>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "workflows/definition.h"
#include "workflows/problems.h"
#include "workflows/when.h"

namespace epoch::workflows::internal {

// Step-local facts the graph passes need beyond Step itself.
struct StepInfo {
  bool has_name = false;
  std::vector<std::pair<size_t, std::string>> after;  // (index in "after", name)
  std::vector<size_t> deps;                           // resolved upstream step indices
};

// Kahn's algorithm; among ready steps the one given first goes first. Steps left over
// are on (or behind) a cycle; each cycle found is reported by name ("cycle a -> b -> a").
std::vector<size_t> TopoOrder(const std::vector<Step>& steps, const std::vector<StepInfo>& info,
                              Problems* p);

// upstream[i] = every step that i is (transitively) after.
std::vector<std::set<size_t>> Upstream(const std::vector<StepInfo>& info);

// Whether `step` sweeps a parameter called `name`.
bool SweepHas(const Step& step, const std::string& name);

// Checks what a step's templates and condition refer to, against the definition's
// params and steps (`index`: name -> position) and each step's upstream.
struct RefChecker {
  const Definition& def;
  const std::map<std::string, size_t>& index;
  const std::vector<std::set<size_t>>& upstream;

  // One template string (a command argument or env value) of step `step`.
  void CheckTemplate(size_t step, const std::string& s, const std::string& path, Problems* p) const;
  void CheckWhen(size_t step, const WhenExpr& expr, const std::string& path, Problems* p) const;
};

}  // namespace epoch::workflows::internal
