// AdvanceRun: a run's own logic after something changed. Steps whose dependencies are
// met become ready (or are skipped by `when`) and their attempts are queued with the
// command rendered and the declared inputs confined to what the tenant may read
// (QueueAttempt; a cached step may hit instead), sweeps queue their trials, failed
// attempts are retried or fail the run, a cancel settles, and succeeded steps register
// their data set and model versions (lineage).
#include "engine/decider.h"

#include <algorithm>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <spdlog/spdlog.h>

#include "common/files.h"
#include "common/sha256.h"
#include "common/units.h"
#include "engine/archive.h"
#include "engine/decider_internal.h"
#include "workflows/template.h"

namespace epoch::engine {

namespace {

using workflows::Definition;
using workflows::Step;

ev::ResourceSpec ResourceSpecOf(const workflows::Resources& r) {
  return ev::ResourceSpec{
      .cpu_millis = r.cpu_millis, .memory_bytes = r.memory_bytes, .gpus = r.gpus};
}

// Where the outputs of a step's succeeded attempt are: its own outputs dir, or for a
// cache hit the source attempt's.
std::string SucceededOutputsDir(const EngineConfig& cfg, const Run& run, const StepRun& s) {
  const Attempt& a = *s.Result();
  std::string src_run, src_step;
  int src_n = 0;
  if (!a.cached_from.empty() && ParseAttemptId(a.cached_from, &src_run, &src_step, &src_n)) {
    return OutputsDir(cfg, src_run, src_step, src_n);
  }
  return OutputsDir(cfg, run.id, s.name, a.number);
}

// {"<step>": {"metrics": {...}, "outputs": {"<file>": "<path>"}}} for steps that succeeded.
// by_digest: each output is "sha256:<digest>" instead of its path (for cache keys).
Json StepsContext(const Run& run, const EngineConfig& cfg, bool by_digest = false) {
  Json steps = Json::object();
  for (const auto& s : run.steps) {
    if (s.phase != StepPhase::kSucceeded || s.attempts.empty()) continue;
    Json outs = Json::object();
    std::string dir = SucceededOutputsDir(cfg, run, s);
    for (const auto& o : s.outputs) {
      std::string n = o.value("name", "");
      if (n.empty()) continue;
      outs[n] = by_digest ? "sha256:" + o.value("sha256", "") : dir + "/" + n;
    }
    steps[s.name] = Json{{"metrics", s.metrics}, {"outputs", outs}};
    if (s.best.is_object()) steps[s.name]["best_params"] = s.best.value("params", Json::object());
  }
  return steps;
}

Result<Json> RenderEnv(const Step& step, const workflows::TemplateContext& tc) {
  Json env = Json::object();
  for (const auto& [k, v] : step.env) {
    ASSIGN_OR_RETURN(env[k], workflows::RenderTemplate(v, tc));
  }
  return env;
}

// A declared input as queued: the path as rendered and the root beneath which the
// tenant may read it (InputRoot).
struct Input {
  std::string path, root;
};

// The cache decision for a cached step about to be queued: {"key", "inputs"} plus
// "miss": why there is nothing to reuse, or, on a hit, the entry in *hit. *pending
// when an input's digest is still being computed (nothing is decided yet).
Json CacheLookup(const State& state, const Run& run, const Step& step,
                 const workflows::TemplateContext& tc, const std::vector<Input>& declared,
                 const DecideContext& ctx, const CacheEntry** hit, bool* pending) {
  *hit = nullptr;
  *pending = false;
  const EngineConfig& cfg = *ctx.config;
  // Run-specific paths stand for what they hold (cache.h).
  workflows::TemplateContext key_tc = tc;
  key_tc.workspace = "{{workspace}}";
  key_tc.outputs_dir = "{{outputs}}";
  key_tc.attempt = 0;
  key_tc.steps = StepsContext(run, cfg, /*by_digest=*/true);
  auto argv = workflows::RenderCommand(step, key_tc);
  auto env = RenderEnv(step, key_tc);
  if (!argv.ok() || !env.ok()) return Json{{"miss", "command does not render"}};
  Json inputs = Json::object();
  for (const auto& in : declared) {
    if (!ctx.files) return Json{{"miss", "no file access to digest input " + in.path}};
    auto sha = ctx.files->Sha256(in.root, in.path);
    if (!sha.ok() && IsHashPending(sha.status())) {
      *pending = true;
      return Json();
    }
    if (!sha.ok()) return Json{{"miss", "input " + sha.status().message()}};
    inputs[in.path] = *sha;
  }
  std::string key = CacheKeyOf(CacheKeyBasis(run.tenant, *argv, *env, step.resources.gpus,
                                             step.workers, step.outputs, inputs));
  Json out{{"key", key}, {"inputs", inputs}};
  auto it = state.cache.find(key);
  if (it == state.cache.end() || it->second.tenant != run.tenant) {
    out["miss"] = "no entry";
    return out;
  }
  const CacheEntry& e = it->second;
  if (step.cache_max_age && ctx.now - e.created_at > *step.cache_max_age) {
    out["miss"] = "entry of " + FormatTime(e.created_at) + " is older than maxAge " +
                  FormatDuration(*step.cache_max_age);
    return out;
  }
  if (e.expired_at != TimePoint{}) {
    out["miss"] = "outputs of " + AttemptId(e.run, e.step, e.attempt) + " expired on " +
                  FormatTime(e.expired_at) + " (retention.outputs)";
    return out;
  }
  if (ctx.files) {
    std::string dir = OutputsDir(cfg, e.run, e.step, e.attempt);
    for (const auto& o : e.outputs) {
      std::string name = o.value("name", "");
      auto size = ctx.files->Size(dir + "/" + name);
      if (!size || *size != o.value("size", uint64_t{0})) {
        out["miss"] = "output " + name + " of " + AttemptId(e.run, e.step, e.attempt) +
                      (size ? " changed size" : " is gone");
        return out;
      }
    }
  }
  *hit = &e;
  return out;
}

std::string DirOf(const std::string& path) {
  size_t slash = path.find_last_of('/');
  return slash == std::string::npos || slash == 0 ? "/" : path.substr(0, slash);
}

}  // namespace

Json UpstreamInputs(const Run& run, const Step& step, const EngineConfig& config) {
  std::set<std::pair<std::string, std::string>> refs;  // (step, file)
  auto scan = [&](const std::string& text) {
    auto pieces = workflows::SplitTemplate(text);
    if (!pieces.ok()) return;
    for (const auto& p : *pieces) {
      if (!p.is_var) continue;
      auto v = workflows::ClassifyTemplateVar(p.text);
      if (v.ok() && v->kind == workflows::TemplateVar::Kind::kStepOutput) {
        refs.insert({v->step, v->key});
      }
    }
  };
  for (const auto& arg : step.command) scan(arg);
  for (const auto& [k, v] : step.env) scan(v);
  Json out = Json::array();
  for (const auto& [name, file] : refs) {
    const StepRun* s = run.FindStep(name);
    if (!s || s->phase != StepPhase::kSucceeded || !s->Result()) continue;
    for (const auto& o : s->outputs) {
      if (o.value("name", "") != file || !o.contains("sha256")) continue;
      out.push_back(Json{{"path", SucceededOutputsDir(config, run, *s) + "/" + file},
                         {"sha256", o["sha256"]},
                         {"size", o.value("size", uint64_t{0})},
                         {"step", name},
                         {"name", file}});
    }
  }
  return out;
}

// The root beneath which `tenant` may read the input `path`: the folder of one of its
// own runs under <data-dir>/runs (its outputs, and so its data sets), or one of
// tenants.<tenant>.inputRoots. kPermissionDenied for anything else; the master never
// opens a path a tenant chose outside these, and opens those only beneath their root.
Result<std::string> InputRoot(const State& state, const EngineConfig& cfg,
                              const std::string& tenant, const std::string& path) {
  ASSIGN_OR_RETURN(std::string p, NormalizePath(path));
  std::string runs = cfg.data_dir + "/runs";
  if (IsBeneath(p, runs)) {
    if (p.size() > runs.size()) {
      std::string rest = p.substr(runs.size() + 1);
      std::string run_id = rest.substr(0, rest.find('/'));
      const Run* r = state.FindRun(run_id);
      if (r && r->tenant == tenant) return WorkspaceDir(cfg, run_id);
    }
  } else if (auto it = cfg.tenant_input_roots.find(tenant); it != cfg.tenant_input_roots.end()) {
    for (const auto& root : it->second) {
      if (IsBeneath(p, root)) return root;
    }
  }
  return PermissionDenied("input " + p + " is outside what tenant '" + tenant +
                          "' may read (the outputs of its own runs, or tenants." + tenant +
                          ".inputRoots)");
}

// Whether a template can only be rendered once upstream steps have run.
bool NamesUpstream(const std::string& text) {
  auto pieces = workflows::SplitTemplate(text);
  if (!pieces.ok()) return false;
  for (const auto& p : *pieces) {
    if (!p.is_var) continue;
    auto v = workflows::ClassifyTemplateVar(p.text);
    if (v.ok() && (v->kind == workflows::TemplateVar::Kind::kStepOutput ||
                   v->kind == workflows::TemplateVar::Kind::kStepMetric ||
                   v->kind == workflows::TemplateVar::Kind::kStepBestParam)) {
      return true;
    }
  }
  return false;
}

// Queues the next attempt of a step: renders its command now, so the event
// records exactly what will run. A cached step whose key has a usable entry
// succeeds at once instead (JobCacheHit). Emits nothing while a declared input is
// still being hashed: the engine advances the run again once it is (the step stays
// ready, a retry stays due).
void QueueAttempt(const State& state, const Run& run, const Step& step, int attempt,
                  const DecideContext& ctx, std::vector<Event>* out, int trial, int workers_cap) {
  const EngineConfig& cfg = *ctx.config;
  workflows::TemplateContext tc;
  tc.params = run.params;
  Json trial_params;
  if (trial >= 0 && step.sweep) {
    trial_params = workflows::TrialParams(*step.sweep, trial);
    for (const auto& [k, v] : trial_params.items()) tc.params[k] = v;
  }
  tc.run_id = run.id;
  tc.workspace = WorkspaceDir(cfg, run.id);
  tc.outputs_dir = OutputsDir(cfg, run.id, step.name, attempt);
  tc.step = step.name;
  tc.attempt = attempt;
  tc.steps = StepsContext(run, cfg);
  auto argv = workflows::RenderCommand(step, tc);
  auto env = RenderEnv(step, tc);
  if (!argv.ok() || !env.ok()) {
    const Status& st = !argv.ok() ? argv.status() : env.status();
    out->push_back(
        RunEvent(run, ev::RunFailed{.step = step.name, .reason = "template: " + st.message()}));
    return;
  }
  // Declared inputs, each confined to what the run's tenant may read.
  std::vector<Input> declared;
  for (const auto& t : step.inputs) {
    auto path = workflows::RenderTemplate(t, tc);
    Result<std::string> root =
        path.ok() ? InputRoot(state, cfg, run.tenant, *path) : Result<std::string>(path.status());
    if (!root.ok()) {
      out->push_back(
          RunEvent(run, ev::RunFailed{.step = step.name,
                                      .reason = "input_not_allowed: " + root.status().message()}));
      return;
    }
    declared.push_back(Input{*path, *root});
  }
  // What the step sees of the data dir beyond its run's workspace, read-only: the
  // upstream outputs it names (their folders) and its declared inputs.
  std::vector<ev::Mount> mounts;
  std::set<std::string> mounted;
  auto mount = [&](const std::string& path) {
    auto p = NormalizePath(path);
    if (!p.ok() || !IsBeneath(*p, cfg.data_dir) || !mounted.insert(*p).second) return;
    mounts.push_back(ev::Mount{.path = *p, .read_only = true});
  };
  for (const auto& u : UpstreamInputs(run, step, cfg)) mount(DirOf(u.value("path", "")));
  for (const auto& in : declared) mount(in.path);
  Json cache;
  if (step.cache) {
    const CacheEntry* hit = nullptr;
    bool pending = false;
    cache = CacheLookup(state, run, step, tc, declared, ctx, &hit, &pending);
    if (pending) return;
    if (hit) {
      ev::JobCacheHit p{.step = step.name,
                        .attempt = attempt,
                        .key = cache.value("key", ""),
                        .inputs = cache.value("inputs", Json::object()),
                        .source_run = hit->run,
                        .source_step = hit->step,
                        .source_attempt = hit->attempt,
                        .source_finished_at = FormatTime(hit->created_at),
                        .outputs = hit->outputs,
                        .metrics = hit->metrics,
                        .resources = ResourceSpecOf(step.resources),
                        .argv = *argv,
                        .env = *env};
      if (trial >= 0) {
        p.trial = trial;
        p.params = trial_params;
      }
      out->push_back(RunEvent(run, p));
      return;
    }
  }
  ev::JobQueued q{.run = run.id,
                  .step = step.name,
                  .attempt = attempt,
                  .resources = ResourceSpecOf(step.resources),
                  .argv = *argv,
                  .env = *env,
                  .timeout_ms = step.timeout ? step.timeout->count() / 1000 : 0,
                  .workers = step.workers};
  if (step.workers_min > 0) q.workers_min = step.workers_min;
  if (step.workers_min > 0 && workers_cap > 0 && workers_cap < step.workers) {
    q.workers_cap = workers_cap;
  }
  if (!mounts.empty()) q.mounts = std::move(mounts);
  if (!cache.is_null()) {
    ev::CacheDecision c;
    if (cache.contains("key")) c.key = cache["key"].get<std::string>();
    if (cache.contains("inputs")) c.inputs = cache["inputs"];
    if (cache.contains("miss")) c.miss = cache["miss"].get<std::string>();
    q.cache = std::move(c);
  }
  if (trial >= 0) {
    q.trial = trial;
    q.params = trial_params;
    q.env["EPOCH_TRIAL"] = std::to_string(trial);
  }
  out->push_back(RunEvent(run, q));
}

namespace {

// A swept step that is running: queue trials while fewer than `parallel` are active,
// and once every trial has ended choose the best (StepSweepCompleted).
void SweepProgress(const State& state, const Run& run, const Step& step, const StepRun& s,
                   const DecideContext& ctx, std::vector<Event>* out) {
  const workflows::Sweep& sweep = *step.sweep;
  int total = workflows::TrialCount(sweep);
  int queued = 0, active = 0, succeeded = 0, stopped = 0;
  std::vector<std::pair<int, Json>> results;
  std::map<int, int> attempt_of;  // trial -> attempt number
  // Each trial's latest attempt of this round: a preempted one gives way to the next.
  std::map<int, const Attempt*> latest;
  for (const auto& a : s.attempts) {
    if (a.number >= s.round_start && a.trial >= 0) latest[a.trial] = &a;
  }
  std::vector<int> requeue;  // preempted trials, queued again before new ones
  for (const auto& [trial, ap] : latest) {
    const Attempt& a = *ap;
    ++queued;
    if (IsTerminal(a.phase) && a.phase != AttemptPhase::kSucceeded && !a.preempted_by.empty()) {
      requeue.push_back(trial);
      continue;
    }
    // A stopped trial holds its slot until its process has ended.
    if (!IsTerminal(a.phase)) ++active;
    if (!a.stopped.empty()) {
      ++stopped;  // not a candidate, even if it ended before the cancel reached it
    } else if (a.phase == AttemptPhase::kSucceeded) {
      ++succeeded;
    }
    if (IsTerminal(a.phase)) {
      bool candidate = a.phase == AttemptPhase::kSucceeded && a.stopped.empty();
      results.emplace_back(a.trial, candidate ? a.metrics : Json());
      attempt_of[a.trial] = a.number;
    }
  }
  int next = static_cast<int>(s.attempts.size()) + 1;
  for (int trial : requeue) {
    if (active >= sweep.parallel) return;
    QueueAttempt(state, run, step, next++, ctx, out, trial);
    ++active;
  }
  if (queued < total) {
    for (int k = queued; k < total && active < sweep.parallel; ++k, ++active) {
      QueueAttempt(state, run, step, next++, ctx, out, k);
    }
    return;
  }
  if (active > 0 || !requeue.empty()) return;
  int best = workflows::BestTrial(sweep, results);
  ev::StepSweepCompleted p{.step = s.name,
                           .trials = total,
                           .succeeded = succeeded,
                           .failed = total - succeeded - stopped,
                           .metric = sweep.metric,
                           .goal = sweep.maximize ? "maximize" : "minimize"};
  if (sweep.stopping) p.stopped = stopped;
  if (best < 0) {
    p.reason = succeeded == 0 ? "all " + std::to_string(total) + " trials failed" +
                                    (stopped > 0 ? " or were stopped" : "")
                              : "no trial reported metric '" + sweep.metric + "'";
  } else {
    const Attempt& a = s.attempts[static_cast<size_t>(attempt_of[best]) - 1];
    p.best_trial = best;
    p.best_attempt = a.number;
    p.best_params = a.trial_params;
    p.best_value = a.metrics.value(sweep.metric, Json());
  }
  out->push_back(RunEvent(run, p));
}

}  // namespace

// SHA-256 over a step's outputs (name and digest of each, by name): the identity
// of a data set or model version.
std::string OutputsDigest(const Json& outputs) {
  std::map<std::string, std::string> files;
  if (outputs.is_array()) {
    for (const auto& o : outputs) {
      if (o.is_object() && o.contains("name") && o["name"].is_string()) {
        files[o["name"]] = o.contains("sha256") && o["sha256"].is_string() ? o["sha256"] : "";
      }
    }
  }
  std::string canonical;
  for (const auto& [name, sha] : files) canonical += name + '\0' + sha + '\n';
  return Sha256Hex(canonical);
}

// The version a step's outputs get: the existing one with the same digest, else the next.
// `key` is ArtifactKey(tenant, name). With a read model the versions are there
// (archive.h): its digest index answers.
Result<int> ArtifactVersionFor(const std::map<std::string, Artifact>& all, const std::string& key,
                               const std::string& digest, const RunArchive* archive, bool model) {
  auto it = all.find(key);
  if (it == all.end()) return 1;
  for (const auto& v : it->second.versions) {
    if (v.digest == digest) return v.version;
  }
  if (archive) {
    ASSIGN_OR_RETURN(std::optional<int> same, archive->FindDigest(model, key, digest));
    if (same && *same <= it->second.count) return *same;
  }
  return it->second.count + 1;
}

// Lineage of a run's succeeded steps: data sets, then models (naming the run's
// data set versions), then validate metrics attached to the run's models. A version
// number that cannot be read from the read model is an error: the run waits (nothing
// is decided for it) rather than record lineage that may be numbered wrong.
Status LineageEvents(const State& state, const Run& run, const DecideContext& ctx,
                     std::vector<Event>* out) {
  const Definition& def = *run.def;
  bool datasets_pending = false;
  for (size_t i = 0; i < def.steps.size(); ++i) {
    const Step& step = def.steps[i];
    const StepRun& s = run.steps[i];
    if (step.dataset.empty() || run.datasets.count(step.name)) continue;
    if (s.phase != StepPhase::kSucceeded || s.attempts.empty()) continue;
    std::string digest = OutputsDigest(s.outputs);
    ASSIGN_OR_RETURN(int version,
                     ArtifactVersionFor(state.datasets, ArtifactKey(run.tenant, step.dataset),
                                        digest, ctx.archive, /*model=*/false));
    out->push_back(RunEvent(run, ev::DatasetVersionRegistered{.name = step.dataset,
                                                              .version = version,
                                                              .digest = digest,
                                                              .step = step.name,
                                                              .attempt = s.Result()->number,
                                                              .outputs = s.outputs}));
    datasets_pending = true;
  }
  if (datasets_pending) return Status::Ok();  // models name them: next round
  bool models_pending = false;
  for (size_t i = 0; i < def.steps.size(); ++i) {
    const Step& step = def.steps[i];
    const StepRun& s = run.steps[i];
    if (step.model.empty() || run.models.count(step.name)) continue;
    if (s.phase != StepPhase::kSucceeded || s.attempts.empty()) continue;
    Json datasets = Json::array();
    for (const auto& [st, nv] : run.datasets) {
      datasets.push_back(Json{{"name", nv.first}, {"version", nv.second}, {"step", st}});
    }
    std::string digest = OutputsDigest(s.outputs);
    Json params = run.params;  // a sweep's model: with its best trial's values
    if (s.best.is_object()) {
      Json best = s.best.value("params", Json::object());
      for (const auto& [k, v] : best.items()) params[k] = v;
    }
    ASSIGN_OR_RETURN(int version,
                     ArtifactVersionFor(state.models, ArtifactKey(run.tenant, step.model), digest,
                                        ctx.archive, /*model=*/true));
    out->push_back(RunEvent(run, ev::ModelVersionRegistered{.name = step.model,
                                                            .version = version,
                                                            .digest = digest,
                                                            .step = step.name,
                                                            .attempt = s.Result()->number,
                                                            .outputs = s.outputs,
                                                            .workflow = run.workflow,
                                                            .workflow_version = run.version,
                                                            .params = params,
                                                            .datasets = datasets}));
    models_pending = true;
  }
  if (models_pending || run.models.empty()) return Status::Ok();
  for (size_t i = 0; i < def.steps.size(); ++i) {
    const Step& step = def.steps[i];
    const StepRun& s = run.steps[i];
    if (step.kind != workflows::StepKind::kValidate || s.phase != StepPhase::kSucceeded ||
        run.validated.count(step.name)) {
      continue;
    }
    for (const auto& [st, nv] : run.models) {
      out->push_back(RunEvent(
          run,
          ev::ModelVersionValidated{
              .name = nv.first, .version = nv.second, .step = step.name, .metrics = s.metrics}));
    }
  }
  return Status::Ok();
}

std::vector<Event> AdvanceRun(const State& state, const Run& run, const DecideContext& ctx) {
  std::vector<Event> out;
  if (!run.def) return out;
  // Lineage is recorded even when the step that completes it ends the run.
  if (run.phase != RunPhase::kCancelled && run.phase != RunPhase::kFailed) {
    if (Status st = LineageEvents(state, run, ctx, &out); !st.ok()) {
      spdlog::error("run {}: lineage waits: {}", run.id, st.ToString());
      return {};
    }
    if (!out.empty()) return out;
  }
  if (IsTerminal(run.phase)) return out;
  const Definition& def = *run.def;

  if (run.cancel_requested) {
    bool active = false;
    for (const auto& s : run.steps) {
      for (const auto& a : s.attempts) {
        // Queued and assigned attempts end here; an agent that already started an
        // assigned one is told to cancel it when it next reports it running.
        if (a.phase == AttemptPhase::kQueued || a.phase == AttemptPhase::kAssigned) {
          out.push_back(RunEvent(run, Ended<ev::JobCancelled>(s.name, a.number, "run cancelled")));
        } else if (!IsTerminal(a.phase)) {
          active = true;
        }
      }
    }
    if (!active) out.push_back(RunEvent(run, ev::RunCancelled{}));
    return out;
  }

  bool all_done = true;
  for (size_t idx : def.topo_order) {
    const Step& step = def.steps[idx];
    const StepRun& s = run.steps[idx];
    if (!IsTerminal(s.phase) || s.phase == StepPhase::kFailed || s.phase == StepPhase::kCancelled) {
      all_done = false;
    }
    if ((s.phase == StepPhase::kFailed || s.phase == StepPhase::kCancelled) && !s.retry_at &&
        !s.HasActive()) {
      // A preempted attempt (JobPreempted) is not a try: its step is queued again at once
      // and resumes from its checkpoint (Schedule hands it the latest).
      // So is an elastic gang's resize (GangResized): it runs again with the new size.
      // Both wait for every worker of a gang to end, so that the next attempt is placed
      // on the room they leave (an elastic one as wide as fits; one that preemption
      // took down no wider than it was left, so that the room goes to the preemptor:
      // it grows back when room frees).
      const Attempt* last = s.Last();
      const int again = static_cast<int>(s.attempts.size()) + 1;
      const bool workers_ended =
          !last || std::all_of(last->ranks.begin(), last->ranks.end(),
                               [](const Worker& w) { return IsTerminal(w.phase); });
      if (last && !step.sweep && (!last->preempted_by.empty() || last->resized_to > 0)) {
        const bool taken_down = last->resized_to > 0 && !last->preempted_by.empty();
        if (workers_ended) {
          QueueAttempt(state, run, step, again, ctx, &out, /*trial=*/-1,
                       taken_down ? last->resized_to : 0);
        }
        continue;
      }
      // An elastic gang that lost workers with their containers shrinks rather than
      // fails while `workers_min` remain (below it, it retries as any step). A peer's
      // loss often fails the others first (their collective errors out before the lost
      // container's lease ends), so a failed elastic gang is judged once every worker
      // has ended, lost or reported.
      if (last && !step.sweep && last->workers_max > 0 &&
          (last->phase == AttemptPhase::kLost || last->phase == AttemptPhase::kFailed)) {
        std::vector<std::string> members;
        for (const auto& w : last->ranks) {
          if (w.phase != AttemptPhase::kLost) members.push_back(w.container);
        }
        const int lost = last->workers - static_cast<int>(members.size());
        if (static_cast<int>(members.size()) >= last->workers_min) {
          if (!workers_ended) continue;  // a loss may yet show
        }
        if (lost > 0 && static_cast<int>(members.size()) >= last->workers_min) {
          int size = static_cast<int>(members.size());
          out.push_back(RunEvent(
              run, ev::GangResized{
                       .step = s.name,
                       .attempt = last->number,
                       .world_size = size,
                       .from = last->workers,
                       .members = members,
                       .reason = std::to_string(lost) + " of " + std::to_string(last->workers) +
                                 " workers lost with their containers; " + std::to_string(size) +
                                 " go on (min " + std::to_string(last->workers_min) + ")"}));
          QueueAttempt(state, run, step, again, ctx, &out);
          continue;
        }
      }
      // Attempts used since the run was (re)started, preemptions aside; a retry request
      // starts a new round.
      int used = 0;
      for (const auto& a : s.attempts) {
        used += a.number >= s.round_start && a.preempted_by.empty() && a.resized_to == 0;
      }
      // A retry of an unschedulable attempt would be refused the same way.
      bool hopeless = s.reason.starts_with(kUnschedulable);
      if (used <= step.retry.limit && !step.sweep && !hopeless) {  // a sweep's trials are its tries
        int next = static_cast<int>(s.attempts.size()) + 1;
        TimePoint nb = ctx.now + step.retry.DelayBefore(used + 1);
        out.push_back(RunEvent(run, ev::JobRetryScheduled{.step = s.name,
                                                          .attempt = next,
                                                          .not_before = FormatTime(nb),
                                                          .after_reason = s.reason}));
      } else {
        // Out of retries: the run fails; queued work is cancelled, running work
        // is told to stop by the dispatcher (the run is terminal).
        for (const auto& other : run.steps) {
          for (const auto& a : other.attempts) {
            if (a.phase == AttemptPhase::kQueued || a.phase == AttemptPhase::kAssigned) {
              out.push_back(
                  RunEvent(run, Ended<ev::JobCancelled>(other.name, a.number, "run failed")));
            }
          }
        }
        std::string reason = s.reason.empty() ? "failed" : s.reason;
        out.push_back(RunEvent(
            run, ev::RunFailed{.step = s.name,
                               .reason = "step '" + s.name + "' failed after " +
                                         std::to_string(used) + " attempt(s): " + reason}));
        return out;
      }
      continue;
    }
    if (step.sweep && (s.phase == StepPhase::kQueued || s.phase == StepPhase::kRunning)) {
      SweepProgress(state, run, step, s, ctx, &out);
      continue;
    }
    if (s.phase == StepPhase::kQueued && s.attempts.empty() && !s.retry_at) {
      // Ready, but its first attempt waited for an input's digest (QueueAttempt).
      QueueAttempt(state, run, step, s.next_attempt, ctx, &out);
      continue;
    }
    if (s.phase != StepPhase::kPending) continue;
    bool ready = true;
    std::string skip_reason;
    for (const auto& dep : step.after) {
      const StepRun* ds = run.FindStep(dep);
      if (!ds) continue;
      if (ds->phase == StepPhase::kSkipped) {
        skip_reason = "upstream step '" + dep + "' was skipped";
      } else if (ds->phase != StepPhase::kSucceeded) {
        ready = false;
      }
    }
    if (!ready) continue;
    if (!skip_reason.empty()) {
      out.push_back(RunEvent(run, ev::StepSkipped{.step = s.name, .reason = skip_reason}));
      continue;
    }
    auto when = workflows::EvaluateWhen(step, run.params, StepsContext(run, *ctx.config));
    if (!when.ok() || !*when) {
      std::string why = when.ok() ? "when '" + step.when + "' is false"
                                  : "when '" + step.when + "': " + when.status().message();
      out.push_back(RunEvent(run, ev::StepSkipped{.step = s.name, .reason = why}));
      continue;
    }
    out.push_back(RunEvent(run, ev::StepReady{.step = s.name}));
    if (step.sweep) {
      // The first `parallel` trials; SweepProgress queues the rest as these end.
      int first = std::min(step.sweep->parallel, workflows::TrialCount(*step.sweep));
      for (int k = 0; k < first; ++k) {
        QueueAttempt(state, run, step, s.next_attempt + k, ctx, &out, k);
      }
      continue;
    }
    QueueAttempt(state, run, step, s.next_attempt, ctx, &out);
  }
  if (all_done && out.empty()) out.push_back(RunEvent(run, ev::RunSucceeded{}));
  return out;
}

}  // namespace epoch::engine
