#include "workflows/asha.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "workflows/problems.h"

namespace epoch::workflows {

using internal::IntegerIn;
using internal::Problems;

namespace {

// A positive finite number at `key`, or nullopt (reported) when present and not one.
std::optional<double> PositiveNumber(const Json& j, const char* key, const std::string& path,
                                     Problems* p) {
  auto it = j.find(key);
  if (it == j.end()) return std::nullopt;
  if (!it->is_number() || !std::isfinite(it->get<double>()) || it->get<double>() <= 0) {
    p->Add(JoinPath(path, key), "must be a number above 0");
    return std::nullopt;
  }
  return it->get<double>();
}

// A number as people write it: 3, 0.5, 1e-05.
std::string Num(double v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.6g", v);
  return buf;
}

// numpy.percentile's default ("linear") of `sorted` (ascending, non-empty) at q in [0, 1].
double Quantile(const std::vector<double>& sorted, double q) {
  double pos = q * static_cast<double>(sorted.size() - 1);
  size_t lo = static_cast<size_t>(std::floor(pos));
  size_t hi = std::min(lo + 1, sorted.size() - 1);
  double frac = pos - static_cast<double>(lo);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * frac;
}

}  // namespace

std::optional<Asha> ParseAsha(const Json& j, const std::string& path,
                              std::vector<std::string>* problems) {
  std::vector<std::string> local;
  Problems p(problems != nullptr ? problems : &local);
  Asha a;
  if (!j.is_object()) {
    p.Add(path, "must be an object");
    return std::nullopt;
  }
  auto method = j.find("method");
  if (method != j.end() && *method == "hyperband") {
    a.kind = Asha::Kind::kHyperband;
  } else if (method == j.end() || *method != "asha") {
    p.Add(JoinPath(path, "method"), "must be \"asha\" or \"hyperband\" for early stopping");
    return std::nullopt;
  }
  if (auto it = j.find("resource"); it != j.end()) {
    if (!it->is_string() || it->get_ref<const std::string&>().empty()) {
      p.Add(JoinPath(path, "resource"), "must be the name of a live metric (e.g. \"epoch\")");
    } else {
      a.resource = it->get<std::string>();
    }
  }
  bool range_ok = true;
  if (j.contains("minResource")) {
    auto min = PositiveNumber(j, "minResource", path, &p);
    range_ok = min.has_value();
    if (min) a.min_resource = *min;
  }
  if (!j.contains("maxResource")) {
    p.Add(JoinPath(path, "maxResource"),
          "required (the resource at which a trial has run in full)");
    range_ok = false;
  } else if (auto max = PositiveNumber(j, "maxResource", path, &p); !max) {
    range_ok = false;
  } else if (range_ok && *max <= a.min_resource) {
    p.Add(JoinPath(path, "maxResource"), "must be above minResource (" + Num(a.min_resource) + ")");
    range_ok = false;
  } else {
    a.max_resource = *max;
  }
  bool reduction_ok = true;
  if (auto it = j.find("reduction"); it != j.end()) {
    if (!it->is_number() || !std::isfinite(it->get<double>()) || it->get<double>() < 2) {
      p.Add(JoinPath(path, "reduction"), "must be a number of at least 2");
      reduction_ok = false;
    } else {
      a.reduction = it->get<double>();
    }
  }
  if (auto it = j.find("brackets"); it != j.end()) {
    if (a.kind == Asha::Kind::kAsha) {
      p.Add(JoinPath(path, "brackets"), "is for hyperband (asha is one bracket)");
    } else if (range_ok && reduction_ok) {
      int most = MaxBrackets(a);
      if (auto n = IntegerIn(*it, 1, most)) {
        a.brackets = static_cast<int>(*n);
      } else {
        p.Add(JoinPath(path, "brackets"), "must be an integer from 1 to " + std::to_string(most) +
                                              " (floor(log_" + Num(a.reduction) + "(" +
                                              Num(a.max_resource) + "/" + Num(a.min_resource) +
                                              ")) + 1)");
      }
    }
  } else if (a.kind == Asha::Kind::kHyperband && range_ok && reduction_ok) {
    a.brackets = MaxBrackets(a);
  }
  if (!p.empty()) return std::nullopt;
  return a;
}

int MaxBrackets(const Asha& a) {
  if (a.min_resource <= 0 || a.max_resource <= a.min_resource || a.reduction < 2) return 1;
  // A small epsilon: log(27)/log(3) is 2.9999999999999996 in doubles.
  double s = std::floor(std::log(a.max_resource / a.min_resource) / std::log(a.reduction) + 1e-9);
  return static_cast<int>(s) + 1;
}

int BracketOf(const Asha& a, int trial) {
  if (a.kind == Asha::Kind::kAsha || a.brackets <= 1 || trial < 0) return 0;
  return trial % a.brackets;
}

std::vector<double> Rungs(const Asha& a, int bracket) {
  std::vector<double> out;
  if (a.min_resource <= 0 || a.reduction < 2) return out;
  double r = a.min_resource * std::pow(a.reduction, bracket);
  // Relative slack, so that 1 * 3^3 = 27 counts as reaching a maxResource of 27.
  for (; r < a.max_resource * (1 - 1e-9); r *= a.reduction) out.push_back(r);
  return out;
}

RungJudgement JudgeAtRung(const Asha& a, const std::string& metric, bool maximize,
                          const std::vector<RungResult>& recorded, int trial, double resource,
                          double value) {
  RungJudgement j;
  const int bracket = BracketOf(a, trial);
  const std::vector<double> rungs = Rungs(a, bracket);
  auto judged_at = [&](int t, int rung) {
    return std::any_of(recorded.begin(), recorded.end(),
                       [&](const RungResult& r) { return r.trial == t && r.rung == rung; });
  };
  // The highest rung reached and not judged at yet (as Ray: a trial that skips rungs
  // between reports is judged once, at the highest).
  for (int k = static_cast<int>(rungs.size()) - 1; k >= 0; --k) {
    if (resource + 1e-9 * rungs[static_cast<size_t>(k)] < rungs[static_cast<size_t>(k)]) continue;
    if (judged_at(trial, k)) break;
    j.judged = true;
    j.rung = k;
    j.milestone = rungs[static_cast<size_t>(k)];
    break;
  }
  if (!j.judged) return j;
  std::vector<double> scores;  // higher is better
  for (const auto& r : recorded) {
    if (r.rung == j.rung && r.trial != trial && BracketOf(a, r.trial) == bracket) {
      scores.push_back(maximize ? r.value : -r.value);
    }
  }
  j.compared = static_cast<int>(scores.size());
  std::string where =
      "rung " + std::to_string(j.rung) + " (" + a.resource + " " + Num(j.milestone) +
      (a.kind == Asha::Kind::kHyperband ? ", bracket " + std::to_string(bracket) : std::string()) +
      "): " + metric + " " + Num(value);
  if (scores.empty()) {
    j.reason = where + ": the first trial at this rung goes on";
    return j;
  }
  std::sort(scores.begin(), scores.end());
  double cut = Quantile(scores, 1 - 1 / a.reduction);
  j.cutoff = maximize ? cut : -cut;
  double score = maximize ? value : -value;
  j.stop = score < cut;
  std::string best = "the best 1/" + Num(a.reduction) + " of the " +
                     std::to_string(j.compared + 1) + " trials judged here";
  j.reason = where + (j.stop ? (maximize ? " is below " : " is above ") : " is within ") + best +
             " (cutoff " + Num(*j.cutoff) + ")" + (j.stop ? ": stopped" : ": goes on");
  return j;
}

}  // namespace epoch::workflows
