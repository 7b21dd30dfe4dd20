#include "workflows/graph.h"

#include <algorithm>

#include "workflows/template.h"
#include "workflows/when.h"

namespace epoch::workflows::internal {

std::vector<size_t> TopoOrder(const std::vector<Step>& steps, const std::vector<StepInfo>& info,
                              Problems* p) {
  const size_t n = steps.size();
  std::vector<std::vector<size_t>> dependents(n);
  std::vector<size_t> indegree(n, 0);
  for (size_t i = 0; i < n; ++i) {
    for (size_t d : info[i].deps) {
      dependents[d].push_back(i);
      ++indegree[i];
    }
  }
  std::set<size_t> ready;
  for (size_t i = 0; i < n; ++i) {
    if (indegree[i] == 0) ready.insert(i);
  }
  std::vector<size_t> order;
  while (!ready.empty()) {
    size_t i = *ready.begin();
    ready.erase(ready.begin());
    order.push_back(i);
    for (size_t d : dependents[i]) {
      if (--indegree[d] == 0) ready.insert(d);
    }
  }
  if (order.size() == n) return order;

  // Every step left has an upstream step that is also left, so walking upstream
  // from any of them must come back round: that loop is a cycle.
  std::set<size_t> left;
  for (size_t i = 0; i < n; ++i) {
    if (indegree[i] > 0) left.insert(i);
  }
  while (!left.empty()) {
    std::vector<size_t> path;
    std::vector<int> pos(n, -1);
    size_t cur = *left.begin();
    while (pos[cur] < 0) {
      pos[cur] = static_cast<int>(path.size());
      path.push_back(cur);
      for (size_t d : info[cur].deps) {
        if (left.count(d)) {
          cur = d;
          break;
        }
      }
    }
    // path[pos[cur]..] runs upstream; reverse it to run in execution order and
    // start at the step given first.
    std::vector<size_t> cycle(path.begin() + pos[cur], path.end());
    std::reverse(cycle.begin(), cycle.end());
    std::rotate(cycle.begin(), std::min_element(cycle.begin(), cycle.end()), cycle.end());
    std::string text = "cycle ";
    for (size_t c : cycle) text += steps[c].name + " -> ";
    text += steps[cycle.front()].name;
    p->Add("steps", text);
    for (size_t c : cycle) left.erase(c);
    // Peel off steps that were only waiting on the cycle just reported, so the
    // next walk starts inside another cycle.
    bool changed = true;
    while (changed) {
      changed = false;
      for (auto it = left.begin(); it != left.end();) {
        bool blocked = std::any_of(info[*it].deps.begin(), info[*it].deps.end(),
                                   [&](size_t d) { return left.count(d) > 0; });
        if (blocked) {
          ++it;
        } else {
          it = left.erase(it);
          changed = true;
        }
      }
    }
  }
  return order;
}

std::vector<std::set<size_t>> Upstream(const std::vector<StepInfo>& info) {
  std::vector<std::set<size_t>> up(info.size());
  for (size_t i = 0; i < info.size(); ++i) {
    std::vector<size_t> stack(info[i].deps.begin(), info[i].deps.end());
    while (!stack.empty()) {
      size_t d = stack.back();
      stack.pop_back();
      if (!up[i].insert(d).second) continue;
      stack.insert(stack.end(), info[d].deps.begin(), info[d].deps.end());
    }
  }
  return up;
}

bool SweepHas(const Step& step, const std::string& name) {
  if (!step.sweep) return false;
  for (const auto& sp : step.sweep->params) {
    if (sp.name == name) return true;
  }
  return false;
}

void RefChecker::CheckTemplate(size_t step, const std::string& s, const std::string& path,
                               Problems* p) const {
  auto pieces = SplitTemplate(s);
  if (!pieces.ok()) {
    p->Add(path, pieces.status());
    return;
  }
  for (const auto& piece : *pieces) {
    if (!piece.is_var) continue;
    auto var = ClassifyTemplateVar(piece.text);
    if (!var.ok()) {
      p->Add(path, var.status());
      continue;
    }
    using Kind = TemplateVar::Kind;
    if (var->kind == Kind::kParam && !def.params.contains(var->key) &&
        !SweepHas(def.steps[step], var->key)) {
      p->Add(path, "unknown template variable " + Quote(var->text));
    } else if (var->kind == Kind::kStepMetric || var->kind == Kind::kStepOutput ||
               var->kind == Kind::kStepBestParam) {
      auto it = index.find(var->step);
      if (it == index.end()) {
        p->Add(path, "unknown template variable " + Quote(var->text) + " (no step " +
                         Quote(var->step) + ")");
      } else if (!upstream[step].count(it->second)) {
        p->Add(path, "template variable " + Quote(var->text) + " refers to step " +
                         Quote(var->step) + ", which is not upstream of " +
                         Quote(def.steps[step].name));
      } else if (var->kind == Kind::kStepBestParam) {
        if (!SweepHas(def.steps[it->second], var->key)) {
          p->Add(path, "unknown template variable " + Quote(var->text) + " (step " +
                           Quote(var->step) + " has no sweep parameter " + Quote(var->key) + ")");
        }
      } else if (var->kind == Kind::kStepOutput) {
        const auto& outs = def.steps[it->second].outputs;
        if (!outs.empty() && std::find(outs.begin(), outs.end(), var->key) == outs.end()) {
          p->Add(path, "unknown template variable " + Quote(var->text) + " (step " +
                           Quote(var->step) + " does not declare output " + Quote(var->key) + ")");
        }
      }
    }
  }
}

void RefChecker::CheckWhen(size_t step, const WhenExpr& expr, const std::string& path,
                           Problems* p) const {
  std::set<std::string> reported;
  for (const auto& ref : expr.refs()) {
    if (!reported.insert(ref.text).second) continue;
    if (ref.kind == WhenExpr::Ref::Kind::kParam) {
      if (!def.params.contains(ref.key)) {
        p->Add(path, "unknown param " + Quote(ref.key) + " in " + Quote(ref.text));
      }
      continue;
    }
    auto it = index.find(ref.step);
    if (it == index.end()) {
      p->Add(path, "unknown step " + Quote(ref.step) + " in " + Quote(ref.text));
    } else if (!upstream[step].count(it->second)) {
      p->Add(path, Quote(ref.text) + " refers to step " + Quote(ref.step) +
                       ", which is not upstream of " + Quote(def.steps[step].name));
    }
  }
}

}  // namespace epoch::workflows::internal
