#include "workflows/sweep.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <initializer_list>
#include <string_view>

#include "workflows/problems.h"

namespace epoch::workflows {

using internal::CheckKnownFields;
using internal::IntegerIn;
using internal::IsParamName;
using internal::Problems;
using internal::Quote;

namespace {

// Integers a double holds exactly: integer range bounds must stay within this.
constexpr double kMaxExactInteger = 9007199254740992.0;  // 2^53

// Parses a "trials" or "parallel" count into *out; reports it at `path` otherwise.
void ParseCount(const Json& v, std::string_view path, int* out, Problems* p) {
  if (auto n = IntegerIn(v, 1, kMaxSweepTrials)) {
    *out = static_cast<int>(*n);
  } else {
    p->Add(path, "must be an integer from 1 to " + std::to_string(kMaxSweepTrials));
  }
}

// A non-empty list of scalars into param->values; reports at `path` otherwise.
void ParseValueList(const Json& list, std::string_view path, SweepParam* param, Problems* p) {
  if (!list.is_array() || list.empty()) {
    p->Add(path, "must be a non-empty list of values");
    return;
  }
  bool ok = true;
  for (size_t i = 0; i < list.size(); ++i) {
    const Json& v = list[i];
    if (!v.is_string() && !v.is_number() && !v.is_boolean()) {
      p->Add(IndexPath(path, i), "must be a string, number or boolean");
      ok = false;
    }
  }
  if (ok) param->values = list;
}

// A {min, max, log?, integer?} range; `obj` has "min" or "max".
void ParseRange(const Json& obj, std::string_view path, SweepParam* param, Problems* p) {
  CheckKnownFields(obj, {"min", "max", "log", "integer"}, path, p);
  param->is_range = true;
  for (const char* flag : {"log", "integer"}) {
    auto it = obj.find(flag);
    if (it == obj.end()) continue;
    if (!it->is_boolean()) {
      p->Add(JoinPath(path, flag), "must be a boolean");
    } else {
      (std::string_view(flag) == "log" ? param->log : param->integer) = it->get<bool>();
    }
  }
  bool bounds_ok = true;
  for (const char* bound : {"min", "max"}) {
    std::string bpath = JoinPath(path, bound);
    auto it = obj.find(bound);
    if (it == obj.end()) {
      p->Add(bpath, "required in a range");
      bounds_ok = false;
      continue;
    }
    if (!it->is_number() || !std::isfinite(it->get<double>())) {
      p->Add(bpath, "must be a number");
      bounds_ok = false;
      continue;
    }
    double v = it->get<double>();
    if (param->integer && (std::floor(v) != v || std::fabs(v) > kMaxExactInteger)) {
      p->Add(bpath, "must be an integer (at most 2^53 in size) when \"integer\" is true");
      bounds_ok = false;
      continue;
    }
    (std::string_view(bound) == "min" ? param->min : param->max) = v;
  }
  if (!bounds_ok) return;
  if (param->min >= param->max) {
    p->Add(JoinPath(path, "min"), "must be less than max");
  }
  if (param->log && param->min <= 0) {
    p->Add(JoinPath(path, "min"), "must be positive when \"log\" is true");
  }
}

void ParseParam(const std::string& name, const Json& j, std::string_view path, SweepParam* param,
                Problems* p) {
  param->name = name;
  if (!IsParamName(name)) {
    p->Add(
        path,
        "invalid parameter name " + Quote(name) +
            ": use 1-63 characters of A-Z, a-z, 0-9, '_' and '-', starting with a letter or '_'");
  }
  if (j.is_array()) {
    ParseValueList(j, path, param, p);
    return;
  }
  const bool has_values = j.is_object() && j.contains("values");
  const bool has_range = j.is_object() && (j.contains("min") || j.contains("max"));
  if (has_values && has_range) {
    p->Add(path, "give either \"values\" or a \"min\"/\"max\" range, not both");
    return;
  }
  if (has_values) {
    CheckKnownFields(j, {"values"}, path, p);
    ParseValueList(j["values"], JoinPath(path, "values"), param, p);
    return;
  }
  if (has_range) {
    ParseRange(j, path, param, p);
    return;
  }
  p->Add(path,
         "must be a non-empty list of values, {\"values\": [...]} or a range "
         "{\"min\": ..., \"max\": ...}");
}

void ParseObjective(const Json& j, std::string_view path, Sweep* s, Problems* p) {
  if (!j.is_object()) {
    p->Add(path, "must be an object like {\"metric\": \"accuracy\", \"goal\": \"maximize\"}");
    return;
  }
  CheckKnownFields(j, {"metric", "goal"}, path, p);
  std::string mpath = JoinPath(path, "metric");
  auto metric = j.find("metric");
  if (metric == j.end()) {
    p->Add(mpath, "required");
  } else if (!metric->is_string() || metric->get_ref<const std::string&>().empty()) {
    p->Add(mpath, "must be a non-empty string");
  } else {
    s->metric = metric->get<std::string>();
  }
  std::string gpath = JoinPath(path, "goal");
  auto goal = j.find("goal");
  if (goal == j.end()) {
    p->Add(gpath, "required (\"maximize\" or \"minimize\")");
  } else if (goal->is_string() && *goal == "maximize") {
    s->maximize = true;
  } else if (goal->is_string() && *goal == "minimize") {
    s->maximize = false;
  } else {
    p->Add(gpath, "must be \"maximize\" or \"minimize\"");
  }
}

// The number of grid combinations, or nullopt when it does not fit in uint64_t.
std::optional<uint64_t> GridSize(const Sweep& s) {
  uint64_t n = 1;
  for (const auto& param : s.params) {
    uint64_t k = param.is_range ? 0 : param.values.size();
    if (k != 0 && n > UINT64_MAX / k) return std::nullopt;
    n *= k;
  }
  return n;
}

// splitmix64's output function (Steele, Lea, Flood 2014): a bijective 64-bit mixer.
uint64_t Mix(uint64_t z) {
  z += 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

uint64_t Fnv1a(std::string_view s) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (char c : s) {
    h ^= static_cast<unsigned char>(c);
    h *= 0x100000001b3ULL;
  }
  return h;
}

// Uniform in [0, 1) from the top 53 bits.
double Unit(uint64_t x) { return static_cast<double>(x >> 11) * 0x1.0p-53; }

// Uniform in [0, n) (Lemire's multiply-high; bias at most n / 2^64).
uint64_t Below(uint64_t x, uint64_t n) {
  return static_cast<uint64_t>((static_cast<unsigned __int128>(x) * n) >> 64);
}

Json Sample(const SweepParam& param, uint64_t x) {
  if (!param.is_range) {
    if (param.values.empty()) return nullptr;
    return param.values[Below(x, param.values.size())];
  }
  const double u = Unit(x);
  if (param.integer) {
    const auto lo = static_cast<int64_t>(param.min);
    const auto hi = static_cast<int64_t>(param.max);
    if (!param.log || lo < 1)
      return lo + static_cast<int64_t>(Below(x, static_cast<uint64_t>(hi - lo) + 1));
    // Log-uniform over [lo, hi + 1), floored: every integer in [lo, hi] is reachable.
    const double l0 = std::log(static_cast<double>(lo));
    const double l1 = std::log(static_cast<double>(hi) + 1);
    auto k = static_cast<int64_t>(std::floor(std::exp(l0 + u * (l1 - l0))));
    return std::clamp(k, lo, hi);
  }
  // max - min overflows to inf for a range wider than a double holds (e.g. -1e308..1e308),
  // which would put every sample at max (and 0 * inf = NaN at u = 0): weigh the ends
  // instead there, and only there, so that every other range keeps its values.
  const double span = param.max - param.min;
  double v = param.log
                 ? std::exp(std::log(param.min) + u * (std::log(param.max) - std::log(param.min)))
             : std::isfinite(span) ? param.min + u * span
                                   : param.min * (1 - u) + param.max * u;
  return std::clamp(v, param.min, param.max);  // exp/log rounding may step just outside
}

// The params in name order (a Sweep built by hand need not be sorted).
std::vector<const SweepParam*> ByName(const Sweep& s) {
  std::vector<const SweepParam*> out;
  for (const auto& param : s.params) out.push_back(&param);
  std::stable_sort(out.begin(), out.end(),
                   [](const SweepParam* a, const SweepParam* b) { return a->name < b->name; });
  return out;
}

}  // namespace

std::optional<Sweep> ParseSweep(const Json& j, const std::string& path,
                                std::vector<std::string>* problems) {
  std::vector<std::string> local;
  Problems p(problems != nullptr ? problems : &local);
  if (!j.is_object()) {
    p.Add(path, "must be an object");
    return std::nullopt;
  }
  CheckKnownFields(j,
                   {"method", "seed", "parameters", "trials", "parallel", "objective", "resource",
                    "minResource", "maxResource", "reduction", "brackets", "sample"},
                   path, &p);
  Sweep s;

  bool method_ok = true;
  bool early = false;  // asha or hyperband
  if (auto it = j.find("method"); it != j.end()) {
    if (it->is_string() && *it == "grid") {
      s.method = Sweep::Method::kGrid;
    } else if (it->is_string() && *it == "random") {
      s.method = Sweep::Method::kRandom;
    } else if (it->is_string() && (*it == "asha" || *it == "hyperband")) {
      early = true;
    } else {
      p.Add(JoinPath(path, "method"), "must be \"grid\", \"random\", \"asha\" or \"hyperband\"");
      method_ok = false;
    }
  }
  if (early) {
    s.stopping = ParseAsha(j, path, p.list());
    // How asha/hyperband draw values: as asked, else grid when every parameter is a list.
    auto params = j.find("parameters");
    bool any_range = params != j.end() && params->is_object() &&
                     std::any_of(params->begin(), params->end(), [](const Json& v) {
                       return v.is_object() && (v.contains("min") || v.contains("max"));
                     });
    s.method = any_range ? Sweep::Method::kRandom : Sweep::Method::kGrid;
    if (auto it = j.find("sample"); it != j.end()) {
      if (it->is_string() && *it == "grid") {
        s.method = Sweep::Method::kGrid;
      } else if (it->is_string() && *it == "random") {
        s.method = Sweep::Method::kRandom;
      } else {
        p.Add(JoinPath(path, "sample"), "must be \"grid\" or \"random\"");
        method_ok = false;
      }
    }
  } else if (method_ok) {
    for (const char* f :
         {"resource", "minResource", "maxResource", "reduction", "brackets", "sample"}) {
      if (j.contains(f)) p.Add(JoinPath(path, f), "is only for method \"asha\" or \"hyperband\"");
    }
  }

  if (auto it = j.find("seed"); it != j.end()) {
    if (it->is_number_unsigned()) {
      s.seed = it->get<uint64_t>();
    } else if (it->is_number_integer() && it->get<int64_t>() >= 0) {
      s.seed = static_cast<uint64_t>(it->get<int64_t>());
    } else {
      p.Add(JoinPath(path, "seed"), "must be a non-negative integer");
    }
  }

  std::string ppath = JoinPath(path, "parameters");
  bool params_ok = false;
  if (auto it = j.find("parameters"); it == j.end()) {
    p.Add(ppath, "required");
  } else if (!it->is_object()) {
    p.Add(ppath, "must be an object of parameter name -> values or range");
  } else if (it->empty()) {
    p.Add(ppath, "must name at least one parameter");
  } else {
    params_ok = true;
    // nlohmann's object is a sorted map, so params come out sorted by name.
    for (auto e = it->begin(); e != it->end(); ++e) {
      SweepParam param;
      std::string epath = JoinPath(ppath, e.key());
      ParseParam(e.key(), e.value(), epath, &param, &p);
      if (method_ok && s.method == Sweep::Method::kGrid && param.is_range) {
        p.Add(epath, early ? "a grid sample needs a list of values (ranges need \"sample\": "
                             "\"random\")"
                           : "grid needs a list of values (ranges are for random sweeps)");
        params_ok = false;
      }
      s.params.push_back(std::move(param));
    }
  }

  std::string tpath = JoinPath(path, "trials");
  if (auto it = j.find("trials"); it != j.end()) {
    ParseCount(*it, tpath, &s.trials, &p);
  } else if (method_ok && s.method == Sweep::Method::kRandom) {
    p.Add(tpath,
          early ? "required when trials are sampled at random" : "required for a random sweep");
  }

  if (auto it = j.find("parallel"); it != j.end()) {
    ParseCount(*it, JoinPath(path, "parallel"), &s.parallel, &p);
  }

  if (auto it = j.find("objective"); it == j.end()) {
    p.Add(JoinPath(path, "objective"), "required");
  } else {
    ParseObjective(*it, JoinPath(path, "objective"), &s, &p);
  }

  if (method_ok && params_ok && s.method == Sweep::Method::kGrid) {
    // The full grid, before any cap (see sweep.h for why). Only meaningful when every
    // parameter parsed into a list; an empty `values` means it did not, reported above.
    bool all_lists = std::all_of(s.params.begin(), s.params.end(),
                                 [](const SweepParam& q) { return !q.values.empty(); });
    std::optional<uint64_t> n = GridSize(s);
    if (all_lists && (!n || *n > static_cast<uint64_t>(kMaxSweepTrials))) {
      p.Add(ppath, "grid has " +
                       (n ? std::to_string(*n) : "more than " + std::to_string(UINT64_MAX)) +
                       " trials; at most " + std::to_string(kMaxSweepTrials));
    }
  }

  if (!p.empty()) return std::nullopt;
  return s;
}

int TrialCount(const Sweep& s) {
  if (s.method == Sweep::Method::kRandom) return std::max(s.trials, 0);
  std::optional<uint64_t> n = GridSize(s);
  uint64_t count = n ? std::min<uint64_t>(*n, INT_MAX) : INT_MAX;
  if (s.trials > 0) count = std::min<uint64_t>(count, static_cast<uint64_t>(s.trials));
  return static_cast<int>(count);
}

Json TrialParams(const Sweep& s, int trial) {
  if (trial < 0 || trial >= TrialCount(s)) return nullptr;
  std::vector<const SweepParam*> params = ByName(s);
  Json out = Json::object();
  if (s.method == Sweep::Method::kGrid) {
    // Odometer: the last parameter is the fastest-moving digit.
    auto rest = static_cast<uint64_t>(trial);
    for (auto it = params.rbegin(); it != params.rend(); ++it) {
      const Json& values = (*it)->values;
      if (values.empty()) return nullptr;  // a range in a grid: not a parsed sweep
      out[(*it)->name] = values[rest % values.size()];
      rest /= values.size();
    }
    return out;
  }
  const uint64_t base = Mix(Mix(s.seed) ^ static_cast<uint64_t>(trial));
  for (const SweepParam* param : params) {
    out[param->name] = Sample(*param, Mix(base ^ Fnv1a(param->name)));
  }
  return out;
}

int BestTrial(const Sweep& s, const std::vector<std::pair<int, Json>>& results) {
  int best = -1;  // -1 until a trial counts
  double best_value = 0;
  for (const auto& [trial, metrics] : results) {
    if (trial < 0 || !metrics.is_object()) continue;
    auto it = metrics.find(s.metric);
    if (it == metrics.end() || !it->is_number()) continue;
    double v = it->get<double>();
    if (std::isnan(v)) continue;
    bool better = best < 0 || (s.maximize ? v > best_value : v < best_value) ||
                  (v == best_value && trial < best);
    if (better) {
      best = trial;
      best_value = v;
    }
  }
  return best;
}

}  // namespace epoch::workflows
