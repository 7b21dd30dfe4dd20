#include "workflows/definition.h"

#include <algorithm>
#include <functional>
#include <set>
#include <utility>

#include "common/ids.h"
#include "common/sha256.h"
#include "common/units.h"
#include "workflows/graph.h"
#include "workflows/problems.h"
#include "workflows/template.h"
#include "workflows/when.h"

namespace epoch::workflows {

using internal::CheckKnownFields;
using internal::IntegerIn;
using internal::IsParamName;
using internal::Problems;
using internal::Quote;
using internal::RefChecker;
using internal::StepInfo;

std::string_view StepKindName(StepKind k) {
  switch (k) {
    case StepKind::kDataPrep:
      return "data_prep";
    case StepKind::kTrain:
      return "train";
    case StepKind::kValidate:
      return "validate";
    case StepKind::kInfer:
      return "infer";
    case StepKind::kTask:
      return "task";
  }
  return "task";
}

std::optional<StepKind> ParseStepKind(std::string_view s) {
  for (StepKind k : {StepKind::kDataPrep, StepKind::kTrain, StepKind::kValidate, StepKind::kInfer,
                     StepKind::kTask}) {
    if (StepKindName(k) == s) return k;
  }
  return std::nullopt;
}

Micros RetryPolicy::DelayBefore(int next_attempt) const {
  if (next_attempt < 2) return Micros(0);  // the first attempt is not a retry
  if (backoff == Backoff::kFixed) return initial;
  Micros d = initial;
  for (int i = 2; i < next_attempt; ++i) {
    if (d >= max || d.count() > max.count() / 2) return max;  // also avoids overflow
    d *= 2;
  }
  return std::min(d, max);
}

const Step* Definition::FindStep(std::string_view name) const {
  for (const auto& s : steps) {
    if (s.name == name) return &s;
  }
  return nullptr;
}

namespace {

constexpr int kMaxRetryLimit = 100;
constexpr int64_t kMaxGpus = 1024;

bool IsEnvName(std::string_view s) {
  if (s.empty()) return false;
  auto alpha = [](char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; };
  if (!alpha(s.front())) return false;
  for (char c : s) {
    if (!alpha(c) && !(c >= '0' && c <= '9')) return false;
  }
  return true;
}

bool IsPlainFileName(std::string_view s) {
  return !s.empty() && s != "." && s != ".." && s.find('/') == std::string_view::npos &&
         s.find('\0') == std::string_view::npos && s.size() <= 255;
}

const char* kNameRule =
    "use 1-63 characters of a-z, 0-9, '-' and '_', starting and ending with a letter or digit";

// A duration given as a string ("2s") or a number of seconds.
std::optional<Micros> ParseDurationField(const Json& v, std::string_view path, Problems* p) {
  if (!v.is_string() && !v.is_number()) {
    p->Add(path, "must be a duration string (e.g. \"30s\", \"5m\") or a number of seconds");
    return std::nullopt;
  }
  std::string text = v.is_string() ? v.get<std::string>() : CanonicalDump(v);
  auto d = ParseDuration(text);
  if (!d.ok()) {
    p->Add(path, d.status());
    return std::nullopt;
  }
  return *d;
}

std::string FormatBytes(int64_t b) {
  constexpr int64_t kKi = 1024;
  if (b > 0 && b % (kKi * kKi * kKi * kKi) == 0) {
    return std::to_string(b / (kKi * kKi * kKi * kKi)) + "Ti";
  }
  if (b > 0 && b % (kKi * kKi * kKi) == 0) return std::to_string(b / (kKi * kKi * kKi)) + "Gi";
  if (b > 0 && b % (kKi * kKi) == 0) return std::to_string(b / (kKi * kKi)) + "Mi";
  if (b > 0 && b % kKi == 0) return std::to_string(b / kKi) + "Ki";
  return std::to_string(b) + " bytes";
}

void ParseResources(const Json& j, std::string_view path, Resources* r, Problems* p) {
  if (!j.is_object()) {
    p->Add(path, "must be an object");
    return;
  }
  CheckKnownFields(j, {"cpu", "memory", "gpus"}, path, p);
  if (auto it = j.find("cpu"); it != j.end()) {
    std::string cpath = JoinPath(path, "cpu");
    if (it->is_string() || it->is_number()) {
      auto v = ParseCpuMillis(it->is_string() ? it->get<std::string>() : CanonicalDump(*it));
      if (v.ok()) {
        r->cpu_millis = *v;
        r->cpu_declared = true;
      } else {
        p->Add(cpath, v.status());
      }
    } else {
      p->Add(cpath, "must be a quantity string (e.g. \"500m\", \"1.5\") or a number of cores");
    }
  }
  if (auto it = j.find("memory"); it != j.end()) {
    std::string mpath = JoinPath(path, "memory");
    if (it->is_string() || it->is_number()) {
      auto v = ParseBytes(it->is_string() ? it->get<std::string>() : CanonicalDump(*it));
      if (v.ok()) {
        r->memory_bytes = *v;
        r->memory_declared = true;
      } else {
        p->Add(mpath, v.status());
      }
    } else {
      p->Add(mpath, "must be a quantity string (e.g. \"512Mi\", \"2Gi\") or a number of bytes");
    }
  }
  if (auto it = j.find("gpus"); it != j.end()) {
    std::string gpath = JoinPath(path, "gpus");
    std::optional<int64_t> n = IntegerIn(*it, 0, kMaxGpus);
    if (n) {
      r->gpus = static_cast<int>(*n);
    } else if (it->is_number_integer() && (it->is_number_unsigned() || it->get<int64_t>() >= 0)) {
      p->Add(gpath, "too many GPUs (at most " + std::to_string(kMaxGpus) + ")");
    } else {
      p->Add(gpath, "must be a non-negative integer");
    }
  }
}

void ParseRetry(const Json& j, std::string_view path, RetryPolicy* r, Problems* p) {
  if (!j.is_object()) {
    p->Add(path, "must be an object");
    return;
  }
  CheckKnownFields(j, {"limit", "backoff", "initial", "max"}, path, p);
  if (auto it = j.find("limit"); it != j.end()) {
    if (std::optional<int64_t> n = IntegerIn(*it, 0, kMaxRetryLimit)) {
      r->limit = static_cast<int>(*n);
    } else {
      p->Add(JoinPath(path, "limit"),
             "must be an integer from 0 to " + std::to_string(kMaxRetryLimit));
    }
  }
  if (auto it = j.find("backoff"); it != j.end()) {
    if (it->is_string() && *it == "fixed") {
      r->backoff = RetryPolicy::Backoff::kFixed;
    } else if (it->is_string() && *it == "exponential") {
      r->backoff = RetryPolicy::Backoff::kExponential;
    } else {
      p->Add(JoinPath(path, "backoff"), "must be \"fixed\" or \"exponential\"");
    }
  }
  bool initial_ok = true;
  if (auto it = j.find("initial"); it != j.end()) {
    auto d = ParseDurationField(*it, JoinPath(path, "initial"), p);
    initial_ok = d.has_value();
    if (d) r->initial = *d;
  }
  if (auto it = j.find("max"); it != j.end()) {
    std::string mpath = JoinPath(path, "max");
    auto d = ParseDurationField(*it, mpath, p);
    if (d) {
      r->max = *d;
      if (initial_ok && r->max < r->initial) {
        p->Add(mpath, FormatDuration(r->max) + " is less than retry.initial (" +
                          FormatDuration(r->initial) + ")");
      }
    }
  } else {
    // No explicit cap: never cap below the first delay.
    r->max = std::max(r->max, r->initial);
  }
}

void ParseStep(const Json& j, std::string_view path, const std::optional<Resources>& max,
               Step* step, StepInfo* info, Problems* p) {
  if (!j.is_object()) {
    p->Add(path, "must be an object");
    return;
  }
  CheckKnownFields(j,
                   {"name", "kind", "command", "env", "after", "resources", "retry", "timeout",
                    "cache", "inputs", "when", "outputs", "workers", "dataset", "model", "sweep"},
                   path, p);

  auto name = j.find("name");
  std::string npath = JoinPath(path, "name");
  if (name == j.end()) {
    p->Add(npath, "required");
  } else if (!name->is_string()) {
    p->Add(npath, "must be a string");
  } else if (!IsValidName(name->get<std::string>())) {
    p->Add(npath, "invalid step name " + Quote(name->get<std::string>()) + ": " + kNameRule);
  } else {
    step->name = name->get<std::string>();
    info->has_name = true;
  }

  if (auto it = j.find("kind"); it != j.end()) {
    std::optional<StepKind> k;
    if (it->is_string()) k = ParseStepKind(it->get<std::string>());
    if (k) {
      step->kind = *k;
    } else {
      p->Add(
          JoinPath(path, "kind"),
          (it->is_string() ? "unknown kind " + Quote(it->get<std::string>()) : "must be a string") +
              " (use data_prep, train, validate, infer or task)");
    }
  }

  auto command = j.find("command");
  std::string cpath = JoinPath(path, "command");
  if (command == j.end()) {
    p->Add(cpath, "required");
  } else if (!command->is_array()) {
    p->Add(cpath, "must be an array of strings (argv)");
  } else if (command->empty()) {
    p->Add(cpath, "must not be empty");
  } else {
    for (size_t i = 0; i < command->size(); ++i) {
      const Json& a = (*command)[i];
      if (!a.is_string()) {
        p->Add(IndexPath(cpath, i), "must be a string");
      } else if (i == 0 && a.get_ref<const std::string&>().empty()) {
        p->Add(IndexPath(cpath, i), "the program must not be empty");
      } else {
        step->command.push_back(a.get<std::string>());
      }
    }
  }

  if (auto it = j.find("env"); it != j.end()) {
    std::string epath = JoinPath(path, "env");
    if (!it->is_object()) {
      p->Add(epath, "must be an object of strings");
    } else {
      for (auto e = it->begin(); e != it->end(); ++e) {
        std::string kpath = JoinPath(epath, e.key());
        if (!IsEnvName(e.key())) {
          p->Add(kpath, "invalid environment variable name (use A-Z, a-z, 0-9 and '_')");
        } else if (e.key().starts_with("EPOCH_")) {
          p->Add(kpath, "reserved: EPOCH_* variables are set by Epoch");
        } else if (!e.value().is_string()) {
          p->Add(kpath, "must be a string");
        } else {
          step->env[e.key()] = e.value().get<std::string>();
        }
      }
    }
  }

  if (auto it = j.find("after"); it != j.end()) {
    std::string apath = JoinPath(path, "after");
    if (!it->is_array()) {
      p->Add(apath, "must be an array of step names");
    } else {
      for (size_t i = 0; i < it->size(); ++i) {
        const Json& a = (*it)[i];
        if (!a.is_string()) {
          p->Add(IndexPath(apath, i), "must be a string");
          continue;
        }
        std::string dep = a.get<std::string>();
        if (std::find(step->after.begin(), step->after.end(), dep) != step->after.end()) {
          p->Add(IndexPath(apath, i), "duplicate entry " + Quote(dep));
          continue;
        }
        step->after.push_back(dep);
        info->after.emplace_back(i, std::move(dep));
      }
    }
  }

  if (auto it = j.find("resources"); it != j.end()) {
    ParseResources(*it, JoinPath(path, "resources"), &step->resources, p);
  }
  if (max) {
    std::string rpath = JoinPath(path, "resources");
    const Resources& r = step->resources;
    if (r.cpu_millis > max->cpu_millis) {
      p->Add(JoinPath(rpath, "cpu"), std::to_string(r.cpu_millis) +
                                         "m CPU requested but the largest container has " +
                                         std::to_string(max->cpu_millis) + "m");
    }
    if (r.memory_bytes > max->memory_bytes) {
      p->Add(JoinPath(rpath, "memory"), FormatBytes(r.memory_bytes) +
                                            " of memory requested but the largest container has " +
                                            FormatBytes(max->memory_bytes));
    }
    if (r.gpus > max->gpus) {
      p->Add(JoinPath(rpath, "gpus"), std::to_string(r.gpus) + (r.gpus == 1 ? " GPU" : " GPUs") +
                                          " requested but the largest container has " +
                                          std::to_string(max->gpus));
    }
  }

  if (auto it = j.find("retry"); it != j.end()) {
    ParseRetry(*it, JoinPath(path, "retry"), &step->retry, p);
  }

  if (auto it = j.find("timeout"); it != j.end()) {
    std::string tpath = JoinPath(path, "timeout");
    auto d = ParseDurationField(*it, tpath, p);
    if (d && d->count() <= 0) {
      p->Add(tpath, "must be positive");
    } else if (d) {
      step->timeout = *d;
    }
  }

  if (auto it = j.find("workers"); it != j.end()) {
    std::string wpath = JoinPath(path, "workers");
    auto count = [](const Json& v) -> std::optional<int> {
      if (!v.is_number_integer() || v.get<int64_t>() < 1 || v.get<int64_t>() > 256) return {};
      return static_cast<int>(v.get<int64_t>());
    };
    if (it->is_object()) {
      // Elastic: {"min": m, "max": M}, 1 <= m < M <= 256.
      CheckKnownFields(*it, {"min", "max"}, wpath, p);
      std::optional<int> lo, hi;
      for (const char* k : {"min", "max"}) {
        auto f = it->find(k);
        auto n = f == it->end() ? std::optional<int>() : count(*f);
        if (!n) p->Add(JoinPath(wpath, k), "must be an integer from 1 to 256");
        (std::string_view(k) == "min" ? lo : hi) = n;
      }
      if (lo && hi && *lo >= *hi) {
        p->Add(JoinPath(wpath, "min"), "must be less than max (" + std::to_string(*hi) + ")");
      } else if (lo && hi) {
        step->workers = *hi;
        step->workers_min = *lo;
      }
    } else if (auto n = count(*it)) {
      step->workers = *n;
    } else {
      p->Add(wpath,
             "must be an integer from 1 to 256, or {\"min\": m, \"max\": M} for an elastic gang");
    }
  }

  if (auto it = j.find("cache"); it != j.end()) {
    std::string cpath = JoinPath(path, "cache");
    if (it->is_boolean()) {
      step->cache = it->get<bool>();
    } else if (it->is_object()) {
      CheckKnownFields(*it, {"maxAge"}, cpath, p);
      step->cache = true;
      if (auto age = it->find("maxAge"); age != it->end()) {
        step->cache_max_age = ParseDurationField(*age, JoinPath(cpath, "maxAge"), p);
        if (step->cache_max_age && step->cache_max_age->count() <= 0) {
          p->Add(JoinPath(cpath, "maxAge"), "must be positive");
        }
      }
    } else {
      p->Add(cpath, "must be a boolean or an object like {\"maxAge\": \"7d\"}");
    }
  }

  if (auto it = j.find("sweep"); it != j.end()) {
    step->sweep = ParseSweep(*it, std::string(JoinPath(path, "sweep")), p->list());
  }

  if (auto it = j.find("inputs"); it != j.end()) {
    std::string ipath = JoinPath(path, "inputs");
    if (!it->is_array()) {
      p->Add(ipath, "must be an array of file paths");
    } else {
      for (size_t k = 0; k < it->size(); ++k) {
        const Json& in = (*it)[k];
        if (!in.is_string() || in.get_ref<const std::string&>().empty()) {
          p->Add(IndexPath(ipath, k), "must be a non-empty string (a file path)");
        } else {
          step->inputs.push_back(in.get<std::string>());
        }
      }
    }
  }

  if (auto it = j.find("when"); it != j.end()) {
    std::string wpath = JoinPath(path, "when");
    if (!it->is_string()) {
      p->Add(wpath, "must be a string");
    } else if (!it->get_ref<const std::string&>().empty()) {
      auto expr = WhenExpr::Parse(it->get<std::string>());
      if (expr.ok()) {
        step->when = it->get<std::string>();
        step->when_expr = *expr;
      } else {
        p->Add(wpath, expr.status());
      }
    }
  }

  if (auto it = j.find("outputs"); it != j.end()) {
    std::string opath = JoinPath(path, "outputs");
    if (!it->is_array()) {
      p->Add(opath, "must be an array of file names");
    } else {
      for (size_t i = 0; i < it->size(); ++i) {
        const Json& o = (*it)[i];
        if (!o.is_string()) {
          p->Add(IndexPath(opath, i), "must be a string");
        } else if (!IsPlainFileName(o.get_ref<const std::string&>())) {
          p->Add(IndexPath(opath, i), "invalid output name " + Quote(o.get<std::string>()) +
                                          ": must be a plain file name (no '/', not '.' or '..')");
        } else if (std::find(step->outputs.begin(), step->outputs.end(), o.get<std::string>()) !=
                   step->outputs.end()) {
          p->Add(IndexPath(opath, i), "duplicate output " + Quote(o.get<std::string>()));
        } else {
          step->outputs.push_back(o.get<std::string>());
        }
      }
    }
  }

  // Lineage: {"dataset": {"name": N}} on a data_prep step, {"model": {"name": N}} on
  // a train step: the step's outputs become a version of that data set / model.
  auto lineage = [&](const char* field, StepKind kind, const char* kind_name,
                     std::string* out) {
    auto it = j.find(field);
    if (it == j.end()) return;
    std::string lpath = JoinPath(path, field);
    if (!it->is_object()) {
      p->Add(lpath, "must be an object {\"name\": ...}");
      return;
    }
    CheckKnownFields(*it, {"name"}, lpath, p);
    auto n = it->find("name");
    std::string npath2 = JoinPath(lpath, "name");
    if (n == it->end()) {
      p->Add(npath2, "required");
    } else if (!n->is_string() || !IsValidName(n->get<std::string>())) {
      p->Add(npath2, std::string("must be a valid name: ") + kNameRule);
    } else if (step->kind != kind) {
      p->Add(lpath, std::string("only a ") + kind_name + " step registers a " + field);
    } else {
      *out = n->get<std::string>();
    }
  };
  lineage("dataset", StepKind::kDataPrep, "data_prep", &step->dataset);
  lineage("model", StepKind::kTrain, "train", &step->model);
}

// A definition whose steps all have distinct names and a dependency order.
bool Runnable(const Definition& def) {
  if (def.name.empty() || def.steps.empty() || def.topo_order.size() != def.steps.size()) {
    return false;
  }
  std::set<std::string> names;
  for (const auto& st : def.steps) {
    if (st.name.empty() || st.command.empty() || !names.insert(st.name).second) return false;
  }
  for (const auto& st : def.steps) {
    for (const auto& dep : st.after) {
      if (!names.count(dep)) return false;
    }
  }
  return true;
}

// stored_problems: null for a definition being registered (any problem refuses
// it); else a stored one (ParseStoredDefinition), whose problems land there.
Result<std::shared_ptr<const Definition>> Parse(const Json& j, const std::optional<Resources>& max,
                                                size_t max_steps,
                                                std::vector<std::string>* stored_problems) {
  Problems p;
  if (!j.is_object()) {
    p.Add("definition", "must be a JSON object");
    return InvalidArgument("invalid workflow definition: 1 problem", p.Take());
  }
  auto def = std::make_shared<Definition>();
  def->source = j;
  CheckKnownFields(j, {"name", "description", "params", "steps"}, "", &p);

  if (auto it = j.find("name"); it == j.end()) {
    p.Add("name", "required");
  } else if (!it->is_string()) {
    p.Add("name", "must be a string");
  } else if (!IsValidName(it->get<std::string>())) {
    p.Add("name", "invalid workflow name " + Quote(it->get<std::string>()) + ": " + kNameRule);
  } else {
    def->name = it->get<std::string>();
  }

  if (auto it = j.find("description"); it != j.end()) {
    if (it->is_string()) {
      def->description = it->get<std::string>();
    } else {
      p.Add("description", "must be a string");
    }
  }

  if (auto it = j.find("params"); it != j.end()) {
    if (!it->is_object()) {
      p.Add("params", "must be an object of name -> default (null = required)");
    } else {
      for (auto e = it->begin(); e != it->end(); ++e) {
        std::string ppath = JoinPath("params", e.key());
        if (!IsParamName(e.key())) {
          p.Add(ppath,
                "invalid param name (use letters, digits, '_' and '-', starting with a "
                "letter or '_')");
        } else if (e.value().is_object() || e.value().is_array() || e.value().is_binary()) {
          p.Add(ppath, "default must be a string, number, boolean or null (required)");
        } else {
          def->params[e.key()] = e.value();
        }
      }
    }
  }

  std::vector<StepInfo> info;
  if (auto it = j.find("steps"); it == j.end()) {
    p.Add("steps", "required");
  } else if (!it->is_array()) {
    p.Add("steps", "must be an array of steps");
  } else if (it->empty()) {
    p.Add("steps", "must have at least one step");
  } else if (max_steps > 0 && it->size() > max_steps) {
    // Refused before any step is parsed: the cost of a definition follows its steps.
    p.Add("steps", "has " + std::to_string(it->size()) + " steps, more than api.maxSteps (" +
                       std::to_string(max_steps) + ")");
    size_t n = p.size();
    return InvalidArgument("invalid workflow definition: " + std::to_string(n) +
                               (n == 1 ? " problem" : " problems"),
                           p.Take());
  } else {
    def->steps.resize(it->size());
    info.resize(it->size());
    for (size_t i = 0; i < it->size(); ++i) {
      ParseStep((*it)[i], IndexPath("steps", i), max, &def->steps[i], &info[i], &p);
    }
  }

  // Names, then the graph they make.
  std::map<std::string, size_t> index;
  for (size_t i = 0; i < def->steps.size(); ++i) {
    if (!info[i].has_name) continue;
    auto [it, inserted] = index.emplace(def->steps[i].name, i);
    if (!inserted) {
      p.Add(JoinPath(IndexPath("steps", i), "name"), "duplicate step " + Quote(def->steps[i].name) +
                                                         " (also " +
                                                         IndexPath("steps", it->second) + ")");
    }
  }
  for (size_t i = 0; i < def->steps.size(); ++i) {
    std::string apath = JoinPath(IndexPath("steps", i), "after");
    for (const auto& [k, dep] : info[i].after) {
      auto it = index.find(dep);
      if (it == index.end()) {
        p.Add(IndexPath(apath, k), "unknown step " + Quote(dep));
      } else if (it->second == i || (info[i].has_name && dep == def->steps[i].name)) {
        p.Add(IndexPath(apath, k), "step " + Quote(dep) + " cannot be after itself");
      } else {
        info[i].deps.push_back(it->second);
      }
    }
  }
  def->topo_order = TopoOrder(def->steps, info, &p);

  // References from templates and `when` need the graph.
  std::vector<std::set<size_t>> upstream = Upstream(info);
  RefChecker refs{*def, index, upstream};
  for (size_t i = 0; i < def->steps.size(); ++i) {
    const Step& s = def->steps[i];
    std::string spath = IndexPath("steps", i);
    const Json& raw = j["steps"][i];
    if (auto c = raw.find("command"); c != raw.end() && c->is_array()) {
      for (size_t k = 0; k < c->size(); ++k) {
        if ((*c)[k].is_string()) {
          refs.CheckTemplate(i, (*c)[k].get<std::string>(),
                             IndexPath(JoinPath(spath, "command"), k), &p);
        }
      }
    }
    for (const auto& [k, v] : s.env) {
      refs.CheckTemplate(i, v, JoinPath(JoinPath(spath, "env"), k), &p);
    }
    for (size_t k = 0; k < s.inputs.size(); ++k) {
      refs.CheckTemplate(i, s.inputs[k], IndexPath(JoinPath(spath, "inputs"), k), &p);
    }
    if (s.when_expr) refs.CheckWhen(i, *s.when_expr, JoinPath(spath, "when"), &p);
  }

  if (!p.empty()) {
    size_t n = p.size();
    std::vector<std::string> problems = p.Take();
    // A stored definition is a fact: what today's rules reject is reported, not
    // refused, as long as the graph can still be run (every step named, no cycle).
    if (stored_problems && Runnable(*def)) {
      *stored_problems = std::move(problems);
    } else {
      return InvalidArgument(
          "invalid workflow definition: " + std::to_string(n) + (n == 1 ? " problem" : " problems"),
          std::move(problems));
    }
  }
  def->digest = Sha256Hex(CanonicalDump(def->source));
  return std::shared_ptr<const Definition>(std::move(def));
}

}  // namespace

Result<std::shared_ptr<const Definition>> ParseDefinition(const Json& j,
                                                          const std::optional<Resources>& max,
                                                          size_t max_steps) {
  try {
    return Parse(j, max, max_steps, nullptr);
  } catch (const Json::exception& e) {
    // Every access above is type-checked first; this is a bug, not bad input.
    return Internal(std::string("parsing workflow definition: ") + e.what());
  }
}

Result<std::shared_ptr<const Definition>> ParseStoredDefinition(
    const Json& j, std::vector<std::string>* problems) {
  std::vector<std::string> found;
  try {
    auto def = Parse(j, std::nullopt, 0, &found);
    if (def.ok() && problems) *problems = std::move(found);
    return def;
  } catch (const Json::exception& e) {
    return Internal(std::string("parsing stored workflow definition: ") + e.what());
  }
}

Result<Json> ResolveParams(const Definition& def, const Json& given) {
  if (!given.is_null() && !given.is_object()) {
    return InvalidArgument("params: must be an object");
  }
  std::vector<std::string> problems;
  Json out = def.params.is_object() ? def.params : Json::object();
  if (given.is_object()) {
    for (auto it = given.begin(); it != given.end(); ++it) {
      std::string path = JoinPath("params", it.key());
      if (!def.params.contains(it.key())) {
        problems.push_back(path + ": not declared by workflow " + Quote(def.name));
      } else if (it.value().is_object() || it.value().is_array() || it.value().is_binary()) {
        problems.push_back(path + ": must be a string, number or boolean");
      } else if (!it.value().is_null()) {
        out[it.key()] = it.value();
      }
    }
  }
  for (auto it = out.begin(); it != out.end(); ++it) {
    if (it.value().is_null()) problems.push_back(JoinPath("params", it.key()) + ": required");
  }
  if (!problems.empty()) {
    std::string message;
    for (const auto& pr : problems) message += (message.empty() ? "" : "; ") + pr;
    return InvalidArgument(std::move(message), std::move(problems));
  }
  return out;
}

Result<bool> EvaluateWhen(const Step& step, const Json& params, const Json& steps) {
  if (step.when_expr) return step.when_expr->Evaluate(params, steps);
  if (step.when.empty()) return true;
  // A Step built by hand may carry the text only.
  ASSIGN_OR_RETURN(auto expr, WhenExpr::Parse(step.when));
  return expr->Evaluate(params, steps);
}

}  // namespace epoch::workflows
