#include "engine/decider.h"

#include <algorithm>
#include <map>
#include <set>
#include <tuple>

#include "common/files.h"
#include "common/sha256.h"
#include "common/units.h"
#include "workflows/template.h"

namespace epoch::engine {

namespace {

using workflows::Definition;
using workflows::Step;

Event RunEvent(const Run& run, std::string_view type, Json data, std::string actor = "system") {
  return Event{RunStream(run.id), std::string(type), std::move(data), std::move(actor)};
}

Json ResourcesJson(const workflows::Resources& r) {
  return Json{{"cpu_millis", r.cpu_millis}, {"memory_bytes", r.memory_bytes}, {"gpus", r.gpus}};
}

workflows::Resources MaxContainer(const EngineConfig& c) {
  workflows::Resources r;
  r.cpu_millis = c.container_cpu_millis;
  r.memory_bytes = c.container_memory_bytes;
  r.gpus = c.container_gpus;
  return r;
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

Result<std::string> InputRoot(const State& state, const EngineConfig& cfg,
                              const std::string& tenant, const std::string& path);
bool NamesUpstream(const std::string& text);

// Every declared input that can be rendered before anything ran (not naming an
// upstream step) must be one the tenant may read: kInvalidArgument listing each
// that is not (a 422 at submission; the rest are checked when the step is queued).
Status CheckInputs(const State& state, const EngineConfig& cfg, const Definition& def,
                   const Json& params, const std::string& tenant, const std::string& run_id) {
  std::vector<std::string> problems;
  for (const auto& step : def.steps) {
    workflows::TemplateContext tc;
    tc.params = params;
    tc.run_id = run_id;
    tc.workspace = WorkspaceDir(cfg, run_id);
    tc.outputs_dir = OutputsDir(cfg, run_id, step.name, 1);
    tc.step = step.name;
    tc.attempt = 1;
    for (size_t i = 0; i < step.inputs.size(); ++i) {
      if (NamesUpstream(step.inputs[i])) continue;
      auto path = workflows::RenderTemplate(step.inputs[i], tc);
      if (!path.ok()) continue;  // e.g. a sweep's parameter: checked when queued
      auto norm = NormalizePath(*path);
      if (norm.ok() && IsBeneath(*norm, tc.workspace)) continue;  // this run's own files
      auto root = InputRoot(state, cfg, tenant, *path);
      if (!root.ok()) {
        problems.push_back("steps." + step.name + ".inputs[" + std::to_string(i) +
                           "]: " + root.status().message());
      }
    }
  }
  if (problems.empty()) return Status::Ok();
  std::string first = problems.front();
  return Status(StatusCode::kInvalidArgument, "inputs: " + first, std::move(problems));
}

// A request repeated with its Idempotency-Key must be the one the key first came
// with (unknown when the first was recorded before digests were).
Status SameRequest(const std::string& first, const std::string& now, const std::string& key,
                   const std::string& what) {
  if (first.empty() || now.empty() || first == now) return Status::Ok();
  return Status(StatusCode::kInvalidArgument,
                "Idempotency-Key '" + key + "' was first used for a different request (" + what +
                    "); use a new key for a new request",
                {std::string(kIdempotencyKeyReused)});
}

Result<Decision> DecideRegisterWorkflow(const State& state, const RegisterWorkflow& cmd,
                                        const DecideContext& ctx) {
  Decision d;
  if (!cmd.idempotency_key.empty()) {
    auto k = state.workflow_keys.find({cmd.tenant, cmd.idempotency_key});
    if (k != state.workflow_keys.end()) {
      const WorkflowVersion* v = state.FindWorkflow(k->second.first, k->second.second);
      if (v) {
        RETURN_IF_ERROR(SameRequest(v->request_digest, cmd.request_digest, cmd.idempotency_key,
                                    "workflow " + v->def->name + " version " +
                                        std::to_string(v->version)));
        d.result.id = k->second.first;
        d.result.version = v->version;
        d.result.digest = v->digest;
        d.result.created = false;
        return d;
      }
    }
  }
  ASSIGN_OR_RETURN(auto def, workflows::ParseDefinition(cmd.definition, MaxContainer(*ctx.config),
                                                        ctx.config->max_steps));
  d.result.id = def->name;
  d.result.digest = def->digest;
  auto it = state.workflows.find(def->name);
  int next = 1;
  if (it != state.workflows.end()) {
    // Workflow names are global; each belongs to the tenant that registered it first.
    const std::string& owner = it->second.front().tenant;
    if (owner != cmd.tenant && !cmd.any_tenant) {
      return Conflict("workflow name '" + def->name + "' belongs to another tenant");
    }
    for (const auto& v : it->second) {
      if (v.digest == def->digest) {
        d.result.version = v.version;
        d.result.created = false;
        return d;
      }
    }
    next = static_cast<int>(it->second.size()) + 1;
  }
  d.result.version = next;
  d.result.created = true;
  Json data{{"name", def->name}, {"version", next}, {"definition", def->source},
            {"digest", def->digest}, {"tenant", cmd.tenant}};
  if (!cmd.idempotency_key.empty()) {
    data["idempotency_key"] = cmd.idempotency_key;
    if (!cmd.request_digest.empty()) data["request_digest"] = cmd.request_digest;
  }
  d.events.push_back(Event{WorkflowStream(def->name), std::string(ev::kWorkflowRegistered),
                           std::move(data), cmd.actor});
  return d;
}

Result<Decision> DecideSubmitRun(const State& state, const SubmitRun& cmd,
                                 const DecideContext& ctx) {
  Decision d;
  if (!cmd.idempotency_key.empty()) {
    auto it = state.idempotency.find({cmd.tenant, cmd.idempotency_key});
    if (it != state.idempotency.end()) {
      const Run* first = state.FindRun(it->second);
      RETURN_IF_ERROR(SameRequest(first ? first->request_digest : "", cmd.request_digest,
                                  cmd.idempotency_key, "run " + it->second));
      d.result.id = it->second;
      d.result.created = false;
      return d;
    }
  }
  if (!cmd.labels.is_object()) return InvalidArgument("labels: must be an object");
  for (auto& [k, v] : cmd.labels.items()) {
    if (!v.is_string()) return InvalidArgument("labels." + k + ": must be a string");
  }
  if (state.FindRun(cmd.run_id)) return Conflict("run " + cmd.run_id + " already exists");
  std::string workflow = cmd.workflow;
  int version = cmd.version;
  std::shared_ptr<const Definition> def;
  std::string digest;
  if (cmd.definition) {
    ASSIGN_OR_RETURN(Decision reg,
                     DecideRegisterWorkflow(state, RegisterWorkflow{*cmd.definition, cmd.submitter, cmd.tenant, "", cmd.any_tenant},
                                            ctx));
    workflow = reg.result.id;
    version = reg.result.version;
    digest = reg.result.digest;
    if (reg.result.created) {
      ASSIGN_OR_RETURN(def, workflows::ParseDefinition(*cmd.definition));
    } else {
      def = state.FindWorkflow(workflow, version)->def;
    }
    for (auto& e : reg.events) d.events.push_back(std::move(e));
  } else {
    const WorkflowVersion* wf = state.FindWorkflow(workflow, version);
    auto named = state.workflows.find(workflow);
    if (named != state.workflows.end() && named->second.front().tenant != cmd.tenant &&
        !cmd.any_tenant) {
      return NotFound("workflow '" + workflow + "' is not registered");  // not: "not yours"
    }
    if (!wf) {
      if (state.workflows.count(workflow)) {
        return NotFound("workflow '" + workflow + "' has no version " + std::to_string(version));
      }
      return NotFound("workflow '" + workflow + "' is not registered");
    }
    version = wf->version;
    digest = wf->digest;
    def = wf->def;
  }
  ASSIGN_OR_RETURN(Json params, workflows::ResolveParams(*def, cmd.params));
  RETURN_IF_ERROR(CheckInputs(state, *ctx.config, *def, params, cmd.tenant, cmd.run_id));
  Json data{{"run", cmd.run_id},       {"workflow", workflow},  {"version", version},
            {"digest", digest},        {"params", params},      {"labels", cmd.labels},
            {"tenant", cmd.tenant},    {"submitter", cmd.submitter},
            {"priority", cmd.priority}};
  if (!cmd.idempotency_key.empty()) {
    data["idempotency_key"] = cmd.idempotency_key;
    if (!cmd.request_digest.empty()) data["request_digest"] = cmd.request_digest;
  }
  d.events.push_back(Event{RunStream(cmd.run_id), std::string(ev::kRunSubmitted), std::move(data),
                           cmd.submitter});
  d.result.id = cmd.run_id;
  d.result.version = version;
  d.result.digest = digest;
  d.result.created = true;
  return d;
}

Result<Decision> DecideCancel(const State& state, const CancelRun& cmd) {
  const Run* run = state.FindRun(cmd.run_id);
  if (!run) return NotFound("run '" + cmd.run_id + "' not found");
  Decision d;
  d.result.id = run->id;
  if (IsTerminal(run->phase)) {
    return Conflict("run '" + run->id + "' is already " + std::string(Name(run->phase)));
  }
  if (run->cancel_requested) return d;  // cancelling already: nothing new to record
  d.result.created = true;
  d.events.push_back(RunEvent(*run, ev::kRunCancelRequested, Json{{"by", cmd.actor}}, cmd.actor));
  return d;
}

Result<Decision> DecideRetry(const State& state, const RetryRun& cmd) {
  const Run* run = state.FindRun(cmd.run_id);
  if (!run) return NotFound("run '" + cmd.run_id + "' not found");
  if (run->phase != RunPhase::kFailed && run->phase != RunPhase::kCancelled) {
    return Conflict("run '" + run->id + "' is " + std::string(Name(run->phase)) +
                    "; only failed or cancelled runs can be retried");
  }
  Json steps = Json::array();
  for (const auto& s : run->steps) {
    if (s.phase == StepPhase::kSucceeded) continue;
    if (s.phase == StepPhase::kSkipped) continue;  // decided by `when`; re-evaluated if upstream re-runs
    if (s.HasActive()) {
      return Conflict("step '" + s.name + "' of run '" + run->id + "' is still running");
    }
    steps.push_back(s.name);
  }
  Decision d;
  d.result.id = run->id;
  d.result.created = true;
  d.events.push_back(
      RunEvent(*run, ev::kRunRetryRequested, Json{{"steps", steps}, {"by", cmd.actor}}, cmd.actor));
  return d;
}

Result<Decision> DecideInvalidateCache(const State& state, const InvalidateCache& cmd) {
  if (cmd.key.empty() && cmd.workflow.empty()) {
    return InvalidArgument("key or workflow: give a cache key or a workflow (and optionally a step)");
  }
  if (!cmd.step.empty() && cmd.workflow.empty()) {
    return InvalidArgument("step: needs workflow");
  }
  Json keys = Json::array();
  Decision d;
  // Only the caller's tenant's entries (unless an admin says any): another tenant's
  // key answers exactly like one that has no entry.
  auto mine = [&](const CacheEntry& e) { return cmd.any_tenant || e.tenant == cmd.tenant; };
  if (!cmd.key.empty()) {
    auto it = state.cache.find(cmd.key);
    if (it == state.cache.end() || !mine(it->second)) {
      return NotFound("cache key '" + cmd.key + "' has no entry");
    }
    if (!cmd.workflow.empty() && it->second.workflow != cmd.workflow) {
      return NotFound("cache key '" + cmd.key + "' is not from workflow '" + cmd.workflow + "'");
    }
    keys.push_back(cmd.key);
  } else {
    if (!state.workflows.count(cmd.workflow)) {
      return NotFound("workflow '" + cmd.workflow + "' is not registered");
    }
    for (const auto& [key, e] : state.cache) {
      if (mine(e) && e.workflow == cmd.workflow && (cmd.step.empty() || e.step == cmd.step)) {
        keys.push_back(key);
      }
    }
  }
  for (const auto& k : keys) d.result.keys.push_back(k);
  d.result.created = !keys.empty();
  if (keys.empty()) return d;  // nothing to forget: nothing to record
  Json data{{"keys", keys}, {"by", cmd.actor}, {"tenant", cmd.tenant}};
  if (!cmd.workflow.empty()) data["workflow"] = cmd.workflow;
  if (!cmd.step.empty()) data["step"] = cmd.step;
  d.events.push_back(Event{std::string(kCacheStream), std::string(ev::kCacheInvalidated),
                           std::move(data), cmd.actor});
  return d;
}

Result<Decision> DecideRegisterContainer(const State& state, const RegisterContainer& cmd) {
  auto it = state.containers.find(cmd.container);
  if (it == state.containers.end()) {
    return NotFound("container '" + cmd.container + "' is not known to this master");
  }
  const Container& c = it->second;
  if (c.phase == ContainerPhase::kLost || c.phase == ContainerPhase::kReleased) {
    return FailedPrecondition("container '" + c.id + "' is " + std::string(Name(c.phase)) +
                              (c.reason.empty() ? "" : " (" + c.reason + ")"));
  }
  Decision d;
  d.result.id = c.id;
  d.result.created = c.phase != ContainerPhase::kRegistered;
  d.events.push_back(Event{ContainerStream(c.id), std::string(ev::kContainerRegistered),
                           Json{{"container", c.id},
                                {"backend", cmd.backend.empty() ? c.backend : cmd.backend},
                                {"handle", cmd.handle.empty() ? c.handle : cmd.handle},
                                {"host", cmd.host},
                                {"pid", cmd.pid},
                                {"cpu_millis", cmd.cpu_millis},
                                {"memory_bytes", cmd.memory_bytes},
                                {"gpus", cmd.gpus},
                                {"cuda", cmd.cuda}},
                           c.id});
  if (cmd.isolation.is_object() && !cmd.isolation.empty()) {
    d.events.back().data["isolation"] = cmd.isolation;
  }
  if (cmd.enforcement.is_object() && !cmd.enforcement.empty()) {
    d.events.back().data["enforcement"] = cmd.enforcement;
  }
  return d;
}

// Turns an agent report into the attempt's terminal event (plus JobStarted if
// the master never saw it start).
// What one poll has already decided about gang attempts, so that two workers
// reported together are judged together.
struct GangProgress {
  std::map<std::string, std::set<int>> succeeded;  // attempt id -> ranks succeeded now
  std::map<std::string, Json> rank0;               // attempt id -> rank 0's report now
  std::set<std::string> ended;                     // attempts ended by this poll
};

std::string MissingOutputs(const Run& run, const std::string& step, const Json& reported);

// The report's log figures as the log records them ({"bytes", "truncated",
// "dropped_bytes"?}), or null when it has none.
Json LogJson(const AttemptReport& report) {
  if (!report.log) return Json();
  Json log{{"bytes", report.log->bytes}, {"truncated", report.log->truncated}};
  if (report.log->dropped_bytes) log["dropped_bytes"] = *report.log->dropped_bytes;
  return log;
}

// exit_code, signal and (unless `skip_reason`) reason, where the report has them.
void CopyExit(const AttemptReport& report, bool skip_reason, Json* out) {
  if (report.exit_code) (*out)["exit_code"] = *report.exit_code;
  if (report.signal) (*out)["signal"] = *report.signal;
  if (report.reason && !skip_reason) (*out)["reason"] = *report.reason;
}

// A gang worker's report: the worker's own record, then the attempt's outcome
// when this report decides it (all succeeded, or the first failure).
void WorkerReportEvents(const State& state, const Container& c, const AttemptReport& report,
                        const std::string& run_id, const std::string& step, int n, int rank,
                        GangProgress* progress, std::vector<Event>* out) {
  const Run* run = state.FindRun(run_id);
  std::string attempt_id = AttemptId(run_id, step, n);
  const Attempt* a = state.FindAttempt(attempt_id);
  if (!run || !a || rank >= static_cast<int>(a->ranks.size())) return;
  const Worker& w = a->ranks[static_cast<size_t>(rank)];
  if (w.container != c.id || (IsTerminal(w.phase) && w.phase != AttemptPhase::kCancelled)) return;
  const std::string st(Name(report.state));
  const Json& usage = report.usage;
  if (w.phase == AttemptPhase::kAssigned && !IsTerminal(a->phase)) {
    out->push_back(RunEvent(*run, ev::kJobStarted,
                            Json{{"step", step}, {"attempt", n}, {"rank", rank},
                                 {"container", c.id}}, c.id));
  }
  Json rec{{"step", step}, {"attempt", n}, {"rank", rank}, {"state", st}, {"usage", usage}};
  if (Json log = LogJson(report); !log.is_null()) rec["log"] = std::move(log);
  CopyExit(report, false, &rec);
  if (rank == 0 && st == "succeeded") {  // rank 0 speaks for the attempt
    rec["metrics"] = report.metrics;
    rec["outputs"] = report.outputs;
    progress->rank0[attempt_id] = rec;
  }
  out->push_back(RunEvent(*run, ev::kJobWorkerFinished, rec, c.id));
  if (IsTerminal(a->phase) || progress->ended.count(attempt_id)) return;
  if (st == "succeeded") {
    auto& done = progress->succeeded[attempt_id];
    done.insert(rank);
    for (const auto& other : a->ranks) {
      if (other.phase != AttemptPhase::kSucceeded && !done.count(other.rank)) return;
    }
    progress->ended.insert(attempt_id);
    // Rank 0's results: from this poll, or from the event that recorded its success.
    Json metrics = a->ranks[0].metrics, outputs = a->ranks[0].outputs;
    if (auto r0 = progress->rank0.find(attempt_id); r0 != progress->rank0.end()) {
      metrics = r0->second["metrics"];
      outputs = r0->second["outputs"];
    }
    if (!metrics.is_object()) metrics = Json::object();
    if (!outputs.is_array()) outputs = Json::array();
    std::string missing = MissingOutputs(*run, step, outputs);
    if (!missing.empty()) {
      out->push_back(RunEvent(*run, ev::kJobFailed,
                              Json{{"step", step}, {"attempt", n}, {"usage", usage},
                                   {"reason", "missing_output: " + missing}},
                              c.id));
      return;
    }
    Json data{{"step", step}, {"attempt", n}, {"exit_code", 0}, {"usage", usage},
              {"metrics", metrics}, {"outputs", outputs}, {"workers", a->workers}};
    out->push_back(RunEvent(*run, ev::kJobSucceeded, std::move(data), c.id));
    return;
  }
  // One worker's failure fails the attempt; the dispatcher stops the others.
  progress->ended.insert(attempt_id);
  std::string reason = "worker " + std::to_string(rank) + ": " + report.reason.value_or(st);
  Json data{{"step", step}, {"attempt", n}, {"reason", reason}, {"usage", usage}};
  if (st == "cancelled" && run->cancel_requested) {
    data["reason"] = "run cancelled";
    out->push_back(RunEvent(*run, ev::kJobCancelled, std::move(data), c.id));
  } else if (st == "timed_out") {
    out->push_back(RunEvent(*run, ev::kJobTimedOut, std::move(data), c.id));
  } else {
    out->push_back(RunEvent(*run, ev::kJobFailed, std::move(data), c.id));
  }
}

// The step's declared outputs that `reported` (the agent's [{"name", ...}]) lacks,
// comma-separated; empty when all are there (or none are declared).
std::string MissingOutputs(const Run& run, const std::string& step, const Json& reported) {
  if (!run.def) return "";
  const workflows::Step* def = nullptr;
  for (const auto& s : run.def->steps) {
    if (s.name == step) def = &s;
  }
  if (!def || def->outputs.empty()) return "";
  std::set<std::string> have;
  if (reported.is_array()) {
    for (const auto& o : reported) {
      if (o.is_object() && o.contains("name") && o["name"].is_string()) have.insert(o["name"]);
    }
  }
  std::string missing;
  for (const auto& name : def->outputs) {
    if (have.count(name)) continue;
    if (!missing.empty()) missing += ", ";
    missing += name;
  }
  return missing;
}

void ReportEvents(const State& state, const Container& c, const AttemptReport& report,
                  GangProgress* progress, std::vector<Event>* out) {
  const std::string& id = report.attempt_id;
  std::string run_id, step;
  int n, rank;
  if (!ParseTaskId(id, &run_id, &step, &n, &rank)) return;
  if (rank >= 0) {
    WorkerReportEvents(state, c, report, run_id, step, n, rank, progress, out);
    return;
  }
  const Run* run = state.FindRun(run_id);
  const Attempt* a = state.FindAttempt(id);
  if (!run || !a || IsTerminal(a->phase) || a->container != c.id) return;  // stale: ack, no-op
  if (a->phase == AttemptPhase::kAssigned) {
    out->push_back(RunEvent(*run, ev::kJobStarted,
                            Json{{"step", step}, {"attempt", n}, {"container", c.id}}, c.id));
  }
  const ReportedState st = report.state;
  Json base{{"step", step}, {"attempt", n}, {"usage", report.usage}};
  if (Json log = LogJson(report); !log.is_null()) base["log"] = std::move(log);
  CopyExit(report, st == ReportedState::kSucceeded, &base);
  if (st == ReportedState::kSucceeded && report.outputs_error) {
    // The agent could not read the outputs where they belong (the step replaced its
    // outputs folder): nothing it claims to have produced is taken.
    base["reason"] = "outputs_error: " + *report.outputs_error;
    out->push_back(RunEvent(*run, ev::kJobFailed, std::move(base), c.id));
    return;
  }
  if (st == ReportedState::kSucceeded) {
    // A declared output the attempt did not write fails it (retry policy applies).
    std::string missing = MissingOutputs(*run, step, report.outputs);
    if (!missing.empty()) {
      base["reason"] = "missing_output: " + missing;
      out->push_back(RunEvent(*run, ev::kJobFailed, std::move(base), c.id));
      return;
    }
    base["metrics"] = report.metrics;
    base["outputs"] = report.outputs;
    if (report.metrics_error) base["metrics_error"] = *report.metrics_error;
    out->push_back(RunEvent(*run, ev::kJobSucceeded, std::move(base), c.id));
  } else if (st == ReportedState::kTimedOut) {
    if (!base.contains("reason")) base["reason"] = "timeout";
    out->push_back(RunEvent(*run, ev::kJobTimedOut, std::move(base), c.id));
  } else if (st == ReportedState::kCancelled) {
    if (!base.contains("reason")) base["reason"] = run->cancel_requested ? "run cancelled" : "cancelled";
    out->push_back(RunEvent(*run, ev::kJobCancelled, std::move(base), c.id));
  } else {
    if (!base.contains("reason")) base["reason"] = "failed";
    out->push_back(RunEvent(*run, ev::kJobFailed, std::move(base), c.id));
  }
}

Result<Decision> DecidePoll(const State& state, const PollContainer& cmd) {
  auto it = state.containers.find(cmd.container);
  if (it == state.containers.end()) {
    return NotFound("container '" + cmd.container + "' is not known to this master");
  }
  const Container& c = it->second;
  if (c.phase == ContainerPhase::kLost || c.phase == ContainerPhase::kReleased) {
    return FailedPrecondition("container '" + c.id + "' is " + std::string(Name(c.phase)));
  }
  if (c.phase != ContainerPhase::kRegistered) {
    return NotFound("container '" + c.id + "' has not registered");
  }
  // A container reports only on what was placed on it: a report naming any other
  // attempt (another container's, or one that does not exist) refuses the whole poll,
  // so a forged report changes nothing.
  for (const auto& r : cmd.reports) {
    const std::string& id = r.attempt_id;
    const Attempt* ga = nullptr;
    const Worker* w = state.FindWorker(id, &ga);
    const Attempt* a = w ? nullptr : state.FindAttempt(id);
    std::string holder = w ? w->container : a ? a->container : "";
    if (holder != c.id) {
      return PermissionDenied(
          "container '" + c.id + "' reported on " +
          (id.empty() ? std::string("an attempt without an id") : "attempt '" + id + "'") +
          ", which is not assigned to it");
    }
  }
  Decision d;
  d.result.id = c.id;
  std::set<std::string> reported;
  GangProgress progress;
  for (const auto& r : cmd.reports) {
    ReportEvents(state, c, r, &progress, &d.events);
    reported.insert(r.attempt_id);
    d.result.ack.push_back(r.attempt_id);
  }
  for (const auto& id : cmd.running) {
    if (reported.count(id)) continue;
    const Attempt* ga = nullptr;
    if (const Worker* w = state.FindWorker(id, &ga)) {
      if (w->phase != AttemptPhase::kAssigned || w->container != c.id || IsTerminal(ga->phase)) {
        continue;
      }
      std::string run_id, step;
      int n, rank;
      ParseTaskId(id, &run_id, &step, &n, &rank);
      d.events.push_back(RunEvent(*state.FindRun(run_id), ev::kJobStarted,
                                  Json{{"step", step}, {"attempt", n}, {"rank", rank},
                                       {"container", c.id}}, c.id));
      continue;
    }
    const Attempt* a = state.FindAttempt(id);
    if (!a || a->phase != AttemptPhase::kAssigned || a->container != c.id) continue;
    std::string run_id, step;
    int n;
    ParseAttemptId(id, &run_id, &step, &n);
    d.events.push_back(RunEvent(*state.FindRun(run_id), ev::kJobStarted,
                                Json{{"step", step}, {"attempt", n}, {"container", c.id}}, c.id));
  }
  return d;
}

// The reason prefix of an attempt the backend can never host; such a step is not retried.
constexpr std::string_view kUnschedulable = "unschedulable";

// Queued attempts that no registered container could hold even when empty fail with
// reason "unschedulable: <why>" (defined with the scheduler below).
void FailUnschedulable(const State& state, const std::string& why, std::vector<Event>* out);
void LoseContainer(const State& state, const Container& c, const std::string& reason,
                   std::vector<Event>* out);

Result<Decision> DecideLaunchResult(const State& state, const ContainerLaunchResult& cmd) {
  auto it = state.containers.find(cmd.container);
  if (it == state.containers.end()) return NotFound("container '" + cmd.container + "'");
  Decision d;
  d.result.id = cmd.container;
  if (it->second.phase == ContainerPhase::kLost || it->second.phase == ContainerPhase::kReleased) {
    return d;
  }
  if (cmd.ok) {
    d.events.push_back(Event{ContainerStream(cmd.container), std::string(ev::kContainerLaunched),
                             Json{{"container", cmd.container}, {"handle", cmd.handle}}});
  } else if (cmd.unschedulable) {
    d.events.push_back(Event{ContainerStream(cmd.container), std::string(ev::kContainerLost),
                             Json{{"container", cmd.container},
                                  {"reason", "launch failed: " + std::string(kUnschedulable) + ": " + cmd.error},
                                  {"unschedulable", true}}});
    FailUnschedulable(state, cmd.error, &d.events);
  } else {
    d.events.push_back(Event{ContainerStream(cmd.container), std::string(ev::kContainerLost),
                             Json{{"container", cmd.container},
                                  {"reason", "launch failed: " + cmd.error}}});
  }
  return d;
}

Result<Decision> DecideContainerExited(const State& state, const ContainerExited& cmd) {
  Decision d;
  d.result.id = cmd.container;
  auto it = state.containers.find(cmd.container);
  if (it == state.containers.end()) return d;
  const Container& c = it->second;
  if (c.phase != ContainerPhase::kRequested && c.phase != ContainerPhase::kRegistered) return d;
  if (c.handle != cmd.handle) return d;  // an answer about an older handle
  LoseContainer(state, c, cmd.detail, &d.events);
  return d;
}

// JobFailed{container_lost} for every attempt still placed on a lost container.
void LoseContainer(const State& state, const Container& c, const std::string& reason,
                   std::vector<Event>* out) {
  out->push_back(Event{ContainerStream(c.id), std::string(ev::kContainerLost),
                       Json{{"container", c.id}, {"reason", reason}}});
  std::set<std::string> failed;
  for (const auto& id : c.attempts) {
    std::string run_id, step;
    int n, rank;
    if (!ParseTaskId(id, &run_id, &step, &n, &rank)) continue;
    const Run* run = state.FindRun(run_id);
    if (!run) continue;
    if (rank >= 0) {
      out->push_back(RunEvent(*run, ev::kJobWorkerFinished,
                              Json{{"step", step}, {"attempt", n}, {"rank", rank},
                                   {"state", "lost"}, {"reason", "container_lost"}}));
      const Attempt* a = state.FindAttempt(AttemptId(run_id, step, n));
      if (!a || IsTerminal(a->phase) || !failed.insert(AttemptId(run_id, step, n)).second) {
        continue;
      }
    }
    out->push_back(RunEvent(*run, ev::kJobFailed,
                            Json{{"step", step},
                                 {"attempt", n},
                                 {"reason", "container_lost"},
                                 {"detail", "container " + c.id + ": " + reason}}));
  }
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

std::string RunAsFor(const EngineConfig& config, const std::string& tenant) {
  auto it = config.tenant_run_as.find(tenant);
  return it != config.tenant_run_as.end() ? it->second : config.default_run_as;
}

std::string WorkspaceDir(const EngineConfig& c, std::string_view run) {
  return c.data_dir + "/runs/" + std::string(run);
}
std::string OutputsDir(const EngineConfig& c, std::string_view run, std::string_view step,
                       int attempt) {
  return WorkspaceDir(c, run) + "/" + std::string(step) + "/" + std::to_string(attempt) +
         "/outputs";
}
std::string LogPath(const EngineConfig& c, std::string_view run, std::string_view step,
                    int attempt) {
  return c.data_dir + "/logs/" + std::string(run) + "/" + std::string(step) + "/" +
         std::to_string(attempt) + ".log";
}

Result<Decision> Decide(const State& state, const Command& command, const DecideContext& ctx) {
  return std::visit(
      [&](const auto& cmd) -> Result<Decision> {
        using T = std::decay_t<decltype(cmd)>;
        if constexpr (std::is_same_v<T, RegisterWorkflow>) {
          return DecideRegisterWorkflow(state, cmd, ctx);
        } else if constexpr (std::is_same_v<T, SubmitRun>) {
          return DecideSubmitRun(state, cmd, ctx);
        } else if constexpr (std::is_same_v<T, CancelRun>) {
          return DecideCancel(state, cmd);
        } else if constexpr (std::is_same_v<T, RetryRun>) {
          return DecideRetry(state, cmd);
        } else if constexpr (std::is_same_v<T, InvalidateCache>) {
          return DecideInvalidateCache(state, cmd);
        } else if constexpr (std::is_same_v<T, RegisterContainer>) {
          return DecideRegisterContainer(state, cmd);
        } else if constexpr (std::is_same_v<T, PollContainer>) {
          return DecidePoll(state, cmd);
        } else if constexpr (std::is_same_v<T, ContainerLaunchResult>) {
          return DecideLaunchResult(state, cmd);
        } else if constexpr (std::is_same_v<T, ContainerExited>) {
          return DecideContainerExited(state, cmd);
        } else {
          Decision d;
          d.events = OnTick(state, cmd, ctx);
          return d;
        }
      },
      command);
}

namespace {

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

// Queues the next attempt of a step: renders its command now, so the event
// records exactly what will run. A cached step whose key has a usable entry
// succeeds at once instead (JobCacheHit). Emits nothing while a declared input is
// still being hashed: the engine advances the run again once it is (the step stays
// ready, a retry stays due).
void QueueAttempt(const State& state, const Run& run, const Step& step, int attempt,
                  const DecideContext& ctx, std::vector<Event>* out, int trial = -1) {
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
    out->push_back(RunEvent(run, ev::kRunFailed,
                            Json{{"step", step.name}, {"reason", "template: " + st.message()}}));
    return;
  }
  // Declared inputs, each confined to what the run's tenant may read.
  std::vector<Input> declared;
  for (const auto& t : step.inputs) {
    auto path = workflows::RenderTemplate(t, tc);
    Result<std::string> root =
        path.ok() ? InputRoot(state, cfg, run.tenant, *path) : Result<std::string>(path.status());
    if (!root.ok()) {
      out->push_back(RunEvent(run, ev::kRunFailed,
                              Json{{"step", step.name},
                                   {"reason", "input_not_allowed: " + root.status().message()}}));
      return;
    }
    declared.push_back(Input{*path, *root});
  }
  // What the step sees of the data dir beyond its run's workspace, read-only: the
  // upstream outputs it names (their folders) and its declared inputs.
  Json mounts = Json::array();
  std::set<std::string> mounted;
  auto mount = [&](const std::string& path) {
    auto p = NormalizePath(path);
    if (!p.ok() || !IsBeneath(*p, cfg.data_dir) || !mounted.insert(*p).second) return;
    mounts.push_back(Json{{"path", *p}, {"read_only", true}});
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
      out->push_back(RunEvent(run, ev::kJobCacheHit,
                              Json{{"step", step.name},
                                   {"attempt", attempt},
                                   {"key", cache["key"]},
                                   {"inputs", cache["inputs"]},
                                   {"source_run", hit->run},
                                   {"source_step", hit->step},
                                   {"source_attempt", hit->attempt},
                                   {"source_finished_at", FormatTime(hit->created_at)},
                                   {"outputs", hit->outputs},
                                   {"metrics", hit->metrics},
                                   {"resources", ResourcesJson(step.resources)},
                                   {"argv", *argv},
                                   {"env", *env}}));
      if (trial >= 0) {
        out->back().data["trial"] = trial;
        out->back().data["params"] = trial_params;
      }
      return;
    }
  }
  Json data{{"run", run.id},
            {"step", step.name},
            {"attempt", attempt},
            {"resources", ResourcesJson(step.resources)},
            {"argv", *argv},
            {"env", *env},
            {"timeout_ms", step.timeout ? step.timeout->count() / 1000 : 0}};
  if (step.workers > 1) data["workers"] = step.workers;
  if (!mounts.empty()) data["mounts"] = std::move(mounts);
  if (!cache.is_null()) data["cache"] = std::move(cache);
  if (trial >= 0) {
    data["trial"] = trial;
    data["params"] = trial_params;
    data["env"]["EPOCH_TRIAL"] = std::to_string(trial);
  }
  out->push_back(RunEvent(run, ev::kJobQueued, std::move(data)));
}

// A swept step that is running: queue trials while fewer than `parallel` are active,
// and once every trial has ended choose the best (StepSweepCompleted).
void SweepProgress(const State& state, const Run& run, const Step& step, const StepRun& s,
                   const DecideContext& ctx, std::vector<Event>* out) {
  const workflows::Sweep& sweep = *step.sweep;
  int total = workflows::TrialCount(sweep);
  int queued = 0, active = 0, succeeded = 0;
  std::vector<std::pair<int, Json>> results;
  std::map<int, int> attempt_of;  // trial -> attempt number
  for (const auto& a : s.attempts) {
    if (a.number < s.round_start || a.trial < 0) continue;
    ++queued;
    if (!IsTerminal(a.phase)) ++active;
    if (a.phase == AttemptPhase::kSucceeded) ++succeeded;
    if (IsTerminal(a.phase)) {
      results.emplace_back(a.trial, a.phase == AttemptPhase::kSucceeded ? a.metrics : Json());
      attempt_of[a.trial] = a.number;
    }
  }
  if (queued < total) {
    int next = static_cast<int>(s.attempts.size()) + 1;
    for (int k = queued; k < total && active < sweep.parallel; ++k, ++active) {
      QueueAttempt(state, run, step, next++, ctx, out, k);
    }
    return;
  }
  if (active > 0) return;
  int best = workflows::BestTrial(sweep, results);
  Json data{{"step", s.name},
            {"trials", total},
            {"succeeded", succeeded},
            {"failed", total - succeeded},
            {"metric", sweep.metric},
            {"goal", sweep.maximize ? "maximize" : "minimize"}};
  if (best < 0) {
    data["best_trial"] = nullptr;
    data["reason"] = succeeded == 0 ? "all " + std::to_string(total) + " trials failed"
                                    : "no trial reported metric '" + sweep.metric + "'";
  } else {
    const Attempt& a = s.attempts[static_cast<size_t>(attempt_of[best]) - 1];
    data["best_trial"] = best;
    data["best_attempt"] = a.number;
    data["best_params"] = a.trial_params;
    data["best_value"] = a.metrics.value(sweep.metric, Json());
  }
  out->push_back(RunEvent(run, ev::kStepSweepCompleted, std::move(data)));
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
// `key` is ArtifactKey(tenant, name).
int ArtifactVersionFor(const std::map<std::string, std::vector<ArtifactVersion>>& all,
                       const std::string& key, const std::string& digest) {
  auto it = all.find(key);
  if (it == all.end()) return 1;
  for (const auto& v : it->second) {
    if (v.digest == digest) return v.version;
  }
  return static_cast<int>(it->second.size()) + 1;
}

// Lineage of a run's succeeded steps: data sets, then models (naming the run's
// data set versions), then validate metrics attached to the run's models.
void LineageEvents(const State& state, const Run& run, std::vector<Event>* out) {
  const Definition& def = *run.def;
  bool datasets_pending = false;
  for (size_t i = 0; i < def.steps.size(); ++i) {
    const Step& step = def.steps[i];
    const StepRun& s = run.steps[i];
    if (step.dataset.empty() || run.datasets.count(step.name)) continue;
    if (s.phase != StepPhase::kSucceeded || s.attempts.empty()) continue;
    std::string digest = OutputsDigest(s.outputs);
    out->push_back(RunEvent(run, ev::kDatasetVersionRegistered,
                            Json{{"name", step.dataset},
                                 {"version", ArtifactVersionFor(state.datasets,
                                                                ArtifactKey(run.tenant, step.dataset),
                                                                digest)},
                                 {"digest", digest},
                                 {"step", step.name},
                                 {"attempt", s.Result()->number},
                                 {"outputs", s.outputs}}));
    datasets_pending = true;
  }
  if (datasets_pending) return;  // models name them: next round
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
    out->push_back(RunEvent(run, ev::kModelVersionRegistered,
                            Json{{"name", step.model},
                                 {"version", ArtifactVersionFor(state.models,
                                                                ArtifactKey(run.tenant, step.model),
                                                                digest)},
                                 {"digest", digest},
                                 {"step", step.name},
                                 {"attempt", s.Result()->number},
                                 {"outputs", s.outputs},
                                 {"workflow", run.workflow},
                                 {"workflow_version", run.version},
                                 {"params", params},
                                 {"datasets", datasets}}));
    models_pending = true;
  }
  if (models_pending || run.models.empty()) return;
  for (size_t i = 0; i < def.steps.size(); ++i) {
    const Step& step = def.steps[i];
    const StepRun& s = run.steps[i];
    if (step.kind != workflows::StepKind::kValidate || s.phase != StepPhase::kSucceeded ||
        run.validated.count(step.name)) {
      continue;
    }
    for (const auto& [st, nv] : run.models) {
      out->push_back(RunEvent(run, ev::kModelVersionValidated,
                              Json{{"name", nv.first}, {"version", nv.second},
                                   {"step", step.name}, {"metrics", s.metrics}}));
    }
  }
}

std::vector<Event> AdvanceRun(const State& state, const Run& run, const DecideContext& ctx) {
  std::vector<Event> out;
  if (!run.def) return out;
  // Lineage is recorded even when the step that completes it ends the run.
  if (run.phase != RunPhase::kCancelled && run.phase != RunPhase::kFailed) {
    LineageEvents(state, run, &out);
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
          out.push_back(RunEvent(run, ev::kJobCancelled,
                                 Json{{"step", s.name}, {"attempt", a.number},
                                      {"reason", "run cancelled"}}));
        } else if (!IsTerminal(a.phase)) {
          active = true;
        }
      }
    }
    if (!active) out.push_back(RunEvent(run, ev::kRunCancelled, Json::object()));
    return out;
  }

  bool all_done = true;
  for (size_t idx : def.topo_order) {
    const Step& step = def.steps[idx];
    const StepRun& s = run.steps[idx];
    if (!IsTerminal(s.phase) || s.phase == StepPhase::kFailed ||
        s.phase == StepPhase::kCancelled) {
      all_done = false;
    }
    if ((s.phase == StepPhase::kFailed || s.phase == StepPhase::kCancelled) && !s.retry_at &&
        !s.HasActive()) {
      // Attempts used since the run was (re)started; a retry request starts a new round.
      int used = static_cast<int>(s.attempts.size()) - s.round_start + 1;
      // A retry of an unschedulable attempt would be refused the same way.
      bool hopeless = s.reason.starts_with(kUnschedulable);
      if (used <= step.retry.limit && !step.sweep && !hopeless) {  // a sweep's trials are its tries
        int next = static_cast<int>(s.attempts.size()) + 1;
        TimePoint nb = ctx.now + step.retry.DelayBefore(used + 1);
        out.push_back(RunEvent(run, ev::kJobRetryScheduled,
                               Json{{"step", s.name}, {"attempt", next},
                                    {"not_before", FormatTime(nb)},
                                    {"after_reason", s.reason}}));
      } else {
        // Out of retries: the run fails; queued work is cancelled, running work
        // is told to stop by the dispatcher (the run is terminal).
        for (const auto& other : run.steps) {
          for (const auto& a : other.attempts) {
            if (a.phase == AttemptPhase::kQueued || a.phase == AttemptPhase::kAssigned) {
              out.push_back(RunEvent(run, ev::kJobCancelled,
                                     Json{{"step", other.name}, {"attempt", a.number},
                                          {"reason", "run failed"}}));
            }
          }
        }
        std::string reason = s.reason.empty() ? "failed" : s.reason;
        out.push_back(RunEvent(run, ev::kRunFailed,
                               Json{{"step", s.name},
                                    {"reason", "step '" + s.name + "' failed after " +
                                                   std::to_string(used) + " attempt(s): " +
                                                   reason}}));
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
      out.push_back(RunEvent(run, ev::kStepSkipped, Json{{"step", s.name}, {"reason", skip_reason}}));
      continue;
    }
    auto when = workflows::EvaluateWhen(step, run.params, StepsContext(run, *ctx.config));
    if (!when.ok() || !*when) {
      std::string why = when.ok() ? "when '" + step.when + "' is false"
                                  : "when '" + step.when + "': " + when.status().message();
      out.push_back(RunEvent(run, ev::kStepSkipped, Json{{"step", s.name}, {"reason", why}}));
      continue;
    }
    out.push_back(RunEvent(run, ev::kStepReady, Json{{"step", s.name}}));
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
  if (all_done && out.empty()) out.push_back(RunEvent(run, ev::kRunSucceeded, Json::object()));
  return out;
}

namespace {

// Free capacity of one container, as the scheduler and the pool see it.
struct Slot {
  const Container* c = nullptr;
  int64_t cpu = 0, mem = 0;
  std::vector<std::string> gpus;   // free GPU indices (healthy ones only)
  std::vector<std::string> uuids;  // their UUIDs, same order
  bool pending = false;            // requested, not registered yet
};

std::string GpuIndex(const Json& g) {
  if (!g.contains("index")) return "";
  return g["index"].is_string() ? g["index"].get<std::string>() : g["index"].dump();
}

// A registered container's free capacity (healthy GPUs not busy), or with as_if_empty
// its whole capacity (healthy GPUs), as if nothing ran on it.
Slot RegisteredSlot(const Container& c, bool as_if_empty) {
  Slot f;
  f.c = &c;
  f.cpu = c.cpu_millis - (as_if_empty ? 0 : c.used_cpu);
  f.mem = c.memory_bytes - (as_if_empty ? 0 : c.used_memory);
  for (const auto& g : c.gpus) {
    std::string idx = GpuIndex(g);
    if (idx.empty() || !g.value("healthy", true)) continue;
    if (!as_if_empty && c.busy_gpus.count(idx)) continue;
    f.gpus.push_back(idx);
    f.uuids.push_back(g.value("uuid", ""));
  }
  // Lowest index first when taken from the back.
  std::reverse(f.gpus.begin(), f.gpus.end());
  std::reverse(f.uuids.begin(), f.uuids.end());
  return f;
}

// Registered containers with their free capacity; with include_pending, also the
// full capacity of containers requested but not registered yet.
std::vector<Slot> FreeSlots(const State& state, bool include_pending) {
  std::vector<Slot> slots;
  for (const auto& [id, c] : state.containers) {
    Slot f;
    f.c = &c;
    if (c.phase == ContainerPhase::kRegistered) {
      f = RegisteredSlot(c, /*as_if_empty=*/false);
    } else if (c.phase == ContainerPhase::kRequested && include_pending) {
      f.pending = true;
      f.cpu = c.cpu_millis;
      f.mem = c.memory_bytes;
      for (int i = 0; i < c.requested_gpus; ++i) {
        f.gpus.push_back("pending");
        f.uuids.push_back("");
      }
    } else {
      continue;
    }
    slots.push_back(std::move(f));
  }
  return slots;
}

bool Fits(const Slot& s, const workflows::Resources& r) {
  return s.cpu >= r.cpu_millis && s.mem >= r.memory_bytes &&
         static_cast<int>(s.gpus.size()) >= r.gpus;
}

// Best fit: the container left with the least room (GPUs, then CPU, then memory),
// so big holes stay free for big requests. -1 when nothing fits.
int BestFit(const std::vector<Slot>& slots, const workflows::Resources& r) {
  int best = -1;
  std::tuple<size_t, int64_t, int64_t> best_key{};
  for (size_t i = 0; i < slots.size(); ++i) {
    const Slot& s = slots[i];
    if (!Fits(s, r)) continue;
    std::tuple<size_t, int64_t, int64_t> key{s.gpus.size() - static_cast<size_t>(r.gpus),
                                             s.cpu - r.cpu_millis, s.mem - r.memory_bytes};
    if (best < 0 || key < best_key) {
      best = static_cast<int>(i);
      best_key = key;
    }
  }
  return best;
}

void Take(Slot& s, const workflows::Resources& r, Json* gpus, Json* uuids) {
  s.cpu -= r.cpu_millis;
  s.mem -= r.memory_bytes;
  for (int i = 0; i < r.gpus; ++i) {
    gpus->push_back(s.gpus.back());
    uuids->push_back(s.uuids.back());
    s.gpus.pop_back();
    s.uuids.pop_back();
  }
}

// Places all of an attempt's workers or none: on success the slots are updated
// and placements holds {rank, local_rank, container, gpus, gpu_uuids} per worker;
// on failure the slots are untouched (nothing is held while a gang waits).
bool PlaceAll(std::vector<Slot>& slots, const Attempt& a, Json* placements) {
  if (a.workers <= 1) {
    // One worker: BestFit changes nothing when it fails, so no trial copy is needed.
    int i = BestFit(slots, a.resources);
    if (i < 0) return false;
    Slot& s = slots[static_cast<size_t>(i)];
    Json gpus = Json::array(), uuids = Json::array();
    Take(s, a.resources, &gpus, &uuids);
    *placements = Json::array({Json{{"rank", 0},
                                    {"local_rank", 0},
                                    {"container", s.c->id},
                                    {"gpus", std::move(gpus)},
                                    {"gpu_uuids", std::move(uuids)}}});
    return true;
  }
  std::vector<Slot> trial = slots;
  Json out = Json::array();
  std::map<std::string, int> per_container;
  for (int rank = 0; rank < a.workers; ++rank) {
    int i = BestFit(trial, a.resources);
    if (i < 0) return false;
    Slot& s = trial[static_cast<size_t>(i)];
    Json gpus = Json::array(), uuids = Json::array();
    Take(s, a.resources, &gpus, &uuids);
    out.push_back(Json{{"rank", rank},
                       {"local_rank", per_container[s.c->id]++},
                       {"container", s.c->id},
                       {"gpus", gpus},
                       {"gpu_uuids", uuids}});
  }
  slots = std::move(trial);
  *placements = std::move(out);
  return true;
}

// GPUs an attempt holds once placed: every worker's.
int GpusNeeded(const Attempt& a) { return a.resources.gpus * std::max(1, a.workers); }

// Healthy GPUs of the registered containers.
int PoolGpus(const State& state) {
  int n = 0;
  for (const auto& [id, c] : state.containers) {
    if (c.phase != ContainerPhase::kRegistered) continue;
    for (const auto& g : c.gpus) n += !GpuIndex(g).empty() && g.value("healthy", true);
  }
  return n;
}

enum class Verdict { kPlaced, kNoRoom, kOverQuota };

// One queued attempt as the planner sees it.
struct Candidate {
  const std::pair<const std::pair<int, uint64_t>, std::string>* entry;  // in state.queue
  const Run* run;
  const Attempt* attempt;
  std::string step;
  int number;
};

// A tenant with queued attempts: what it holds against what it is entitled to.
struct TenantLine {
  int held = 0;                // GPUs held now, plus those placed in this pass
  int entitled = 1;            // min(maxGpus, pool GPUs), or the pool's GPUs; >= 1
  const int* quota = nullptr;  // tenants.<name>.maxGpus, null: unlimited
  std::vector<Candidate> queue;  // in state.queue's order (priority, then submission)
  size_t next = 0;
};

// Walks the queued attempts in fair-share order and decides each against `slots`
// (taking what it places from them) and the tenants' GPU quotas; visit(candidate,
// verdict, placements) sees every attempt of a live run once.
//
// Fair share: the tenant holding the smallest fraction of the GPUs it is entitled to
// (its maxGpus capped at the pool's GPUs; the pool's GPUs for a tenant without a
// quota) goes next; equal fractions go by the queue order of each tenant's next
// attempt. Within a tenant the queue order holds (priority, then submission). What
// a tenant holds grows with each placement in the pass. Exact integer comparisons
// (held_a * entitled_b < held_b * entitled_a) keep it deterministic for replay.
// O(queue * (log tenants + containers)).
template <typename Visit>
void PlanQueue(const State& state, const EngineConfig& cfg, std::vector<Slot>& slots,
               Visit&& visit) {
  std::map<std::string, TenantLine> tenants;
  for (const auto& entry : state.queue) {
    Candidate cand{&entry, nullptr, nullptr, {}, 0};
    std::string run_id;
    if (!ParseAttemptId(entry.second, &run_id, &cand.step, &cand.number)) continue;
    cand.run = state.FindRun(run_id);
    if (!cand.run || cand.run->cancel_requested || IsTerminal(cand.run->phase)) continue;
    const StepRun* s = cand.run->FindStep(cand.step);
    if (!s || cand.number < 1 || cand.number > static_cast<int>(s->attempts.size())) continue;
    cand.attempt = &s->attempts[static_cast<size_t>(cand.number) - 1];
    tenants[cand.run->tenant].queue.push_back(std::move(cand));
  }
  if (tenants.empty()) return;
  if (tenants.size() > 1 || !cfg.tenant_max_gpus.empty()) {
    std::map<std::string, int> held = TenantGpusHeld(state);
    int pool = std::max(1, PoolGpus(state));
    for (auto& [name, t] : tenants) {
      auto h = held.find(name);
      t.held = h == held.end() ? 0 : h->second;
      auto q = cfg.tenant_max_gpus.find(name);
      if (q != cfg.tenant_max_gpus.end()) t.quota = &q->second;
      t.entitled = t.quota ? std::clamp(*t.quota, 1, pool) : pool;
    }
  }
  // A min-heap of tenants by (share, next attempt's queue key). Only the tenant just
  // taken changes, and it is out of the heap while it does.
  auto after = [](const TenantLine* a, const TenantLine* b) {
    int64_t sa = int64_t{a->held} * b->entitled, sb = int64_t{b->held} * a->entitled;
    if (sa != sb) return sa > sb;
    return a->queue[a->next].entry->first > b->queue[b->next].entry->first;
  };
  std::vector<TenantLine*> heap;
  for (auto& [name, t] : tenants) heap.push_back(&t);
  std::make_heap(heap.begin(), heap.end(), after);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), after);
    TenantLine* t = heap.back();
    heap.pop_back();
    const Candidate& cand = t->queue[t->next++];
    int need = GpusNeeded(*cand.attempt);
    Json placements;
    if (t->quota && need > 0 && t->held + need > *t->quota) {
      visit(cand, Verdict::kOverQuota, placements);  // later, smaller ones may fit its quota
    } else if (PlaceAll(slots, *cand.attempt, &placements)) {
      t->held += need;
      visit(cand, Verdict::kPlaced, placements);
    } else {
      visit(cand, Verdict::kNoRoom, placements);  // later, smaller ones may fit (backfill)
    }
    if (t->next < t->queue.size()) {
      heap.push_back(t);
      std::push_heap(heap.begin(), heap.end(), after);
    }
  }
}

void FailUnschedulable(const State& state, const std::string& why, std::vector<Event>* out) {
  // Every registered container as if it were empty: an attempt that fits one of them
  // waits for room; one that fits none could only run on a new container.
  std::vector<Slot> empty;
  for (const auto& [id, c] : state.containers) {
    if (c.phase == ContainerPhase::kRegistered) empty.push_back(RegisteredSlot(c, /*as_if_empty=*/true));
  }
  for (const auto& [key, attempt_id] : state.queue) {
    std::string run_id, step;
    int n;
    if (!ParseAttemptId(attempt_id, &run_id, &step, &n)) continue;
    const Run* run = state.FindRun(run_id);
    if (!run || run->cancel_requested || IsTerminal(run->phase)) continue;
    const Attempt* a = state.FindAttempt(attempt_id);
    if (!a || a->phase != AttemptPhase::kQueued) continue;
    std::vector<Slot> slots = empty;
    Json placements;
    if (PlaceAll(slots, *a, &placements)) continue;
    out->push_back(RunEvent(*run, ev::kJobFailed,
                            Json{{"step", step}, {"attempt", n},
                                 {"reason", std::string(kUnschedulable) + ": " + why}}));
  }
}

// Queued attempts that cannot be placed even on the containers already asked for.
// Attempts held back by their tenant's GPU quota are not demand: more containers
// would not let them run.
int UnplacedDemand(const State& state, const EngineConfig& cfg) {
  std::vector<Slot> slots = FreeSlots(state, /*include_pending=*/true);
  int unplaced = 0;
  PlanQueue(state, cfg, slots, [&](const Candidate&, Verdict v, const Json&) {
    unplaced += v == Verdict::kNoRoom;
  });
  return unplaced;
}

// A new container, with its credential minted now (only the hash is recorded; see
// engine/credentials.h).
Event ContainerRequest(const State& state, const DecideContext& ctx, int nth,
                       const std::string& reason) {
  const EngineConfig& cfg = *ctx.config;
  std::string id = "c" + std::to_string(state.container_counter + 1 + static_cast<uint64_t>(nth));
  Json data{{"container", id},
            {"backend", cfg.backend},
            {"spec", Json{{"cpu_millis", cfg.container_cpu_millis},
                          {"memory_bytes", cfg.container_memory_bytes},
                          {"gpus", cfg.container_gpus}}},
            {"reason", reason}};
  if (ctx.credentials) data["credential_sha256"] = ctx.credentials->Mint(id);
  return Event{ContainerStream(id), std::string(ev::kContainerRequested), std::move(data)};
}

}  // namespace

std::vector<Event> Schedule(const State& state, const DecideContext& ctx) {
  std::vector<Event> out;
  if (state.queue.empty()) return out;
  std::vector<Slot> free = FreeSlots(state, /*include_pending=*/false);
  if (free.empty()) return out;
  uint64_t gangs = 0;
  PlanQueue(state, *ctx.config, free, [&](const Candidate& c, Verdict v, const Json& placements) {
    if (v != Verdict::kPlaced) return;
    const Run& run = *c.run;
    const Json& p0 = placements[0];
    if (c.attempt->workers <= 1) {
      out.push_back(RunEvent(run, ev::kJobAssigned,
                             Json{{"step", c.step}, {"attempt", c.number},
                                  {"container", p0["container"]}, {"gpus", p0["gpus"]},
                                  {"gpu_uuids", p0["gpu_uuids"]}}));
      return;
    }
    // A gang: torch.distributed's rendezvous is rank 0's host and a port chosen
    // here (deterministically, so replay agrees).
    const Container& c0 = state.containers.at(p0["container"].get<std::string>());
    int port = 29500 + static_cast<int>((state.gangs_placed + gangs) % 2000);
    ++gangs;
    out.push_back(RunEvent(run, ev::kJobAssigned,
                           Json{{"step", c.step}, {"attempt", c.number},
                                {"container", p0["container"]}, {"placements", placements},
                                {"master_addr", c0.host.empty() ? "127.0.0.1" : c0.host},
                                {"master_port", port}}));
  });
  return out;
}

std::map<std::string, int> TenantGpusHeld(const State& state) {
  std::map<std::string, int> held;
  for (const auto& [cid, c] : state.containers) {
    // A container with no busy GPU holds none for anybody: CPU-only pools cost nothing.
    if (c.phase != ContainerPhase::kRegistered || c.busy_gpus.empty()) continue;
    for (const auto& id : c.attempts) {
      std::string run_id, step;
      int n, rank;
      if (!ParseTaskId(id, &run_id, &step, &n, &rank)) continue;
      const Run* run = state.FindRun(run_id);
      const StepRun* s = run ? run->FindStep(step) : nullptr;
      if (!s || n < 1 || n > static_cast<int>(s->attempts.size())) continue;
      const Attempt& a = s->attempts[static_cast<size_t>(n) - 1];
      const Json* gpus = rank < 0 ? &a.gpus : nullptr;
      for (const auto& w : a.ranks) {
        if (rank >= 0 && w.rank == rank) gpus = &w.gpus;
      }
      if (gpus && !gpus->empty()) held[run->tenant] += static_cast<int>(gpus->size());
    }
  }
  return held;
}

std::string QuotaWaitReason(const EngineConfig& config, const std::string& tenant, int held,
                            const Attempt& attempt) {
  auto q = config.tenant_max_gpus.find(tenant);
  int need = GpusNeeded(attempt);
  if (q == config.tenant_max_gpus.end() || need <= 0 || held + need <= q->second) return "";
  const std::string max = std::to_string(q->second);
  if (need > q->second) {
    return "needs " + std::to_string(need) + (need == 1 ? " GPU" : " GPUs") +
           ", more than tenant " + tenant + "'s GPU quota of " + max + " (tenants." + tenant +
           ".maxGpus): it waits until the quota is raised";
  }
  if (held >= q->second) {
    return "tenant " + tenant + " is at its GPU quota (" + std::to_string(held) + " of " + max +
           " GPUs)";
  }
  return "tenant " + tenant + " holds " + std::to_string(held) + " of its " + max +
         " GPUs (its quota) and this attempt needs " + std::to_string(need);
}

std::vector<Event> OnTick(const State& state, const Tick& tick, const DecideContext& ctx) {
  std::vector<Event> out;
  const EngineConfig& cfg = *ctx.config;
  // Retries whose time has come.
  for (const auto& [when, attempt_id] : state.retry_timers) {
    if (when > ctx.now) break;
    std::string run_id, step;
    int n;
    if (!ParseAttemptId(attempt_id, &run_id, &step, &n)) continue;
    const Run* run = state.FindRun(run_id);
    if (!run || IsTerminal(run->phase) || run->cancel_requested) continue;
    const StepRun* s = run->FindStep(step);
    const Step* def_step = run->def->FindStep(step);
    if (!s || !def_step || !s->retry_at || s->next_attempt != n) continue;
    QueueAttempt(state, *run, *def_step, n, ctx, &out);
  }
  // Leases.
  std::set<std::string> expired(tick.expired.begin(), tick.expired.end());
  int live = 0;
  for (const auto& [id, c] : state.containers) {
    if (c.phase == ContainerPhase::kRegistered && expired.count(id)) {
      LoseContainer(state, c, "lease expired (no poll for " + FormatDuration(cfg.lease) + ")",
                    &out);
      continue;
    }
    TimePoint waiting_since = c.requested_at;
    if (auto q = tick.queued.find(id); q != tick.queued.end()) {
      waiting_since = std::max(waiting_since, q->second);
    }
    if (c.phase == ContainerPhase::kRequested && ctx.now - waiting_since > cfg.register_timeout) {
      LoseContainer(state, c,
                    "never registered (within " + FormatDuration(cfg.register_timeout) + ")", &out);
      continue;
    }
    if (c.phase == ContainerPhase::kRequested || c.phase == ContainerPhase::kRegistered) ++live;
  }
  // The pool. After launch failures it backs off (1 s, 2 s, 4 s ... up to 1 min)
  // instead of spinning on a broken backend.
  if (state.launch_failures_in_row > 0) {
    int shift = std::min(state.launch_failures_in_row - 1, 6);
    Micros backoff =
        std::min<Micros>(std::chrono::seconds(1) * (1 << shift), std::chrono::minutes(1));
    if (ctx.now < state.last_launch_failure + backoff) return out;
  }
  int requested = 0;
  // Scale up on demand: queued attempts that fit nowhere, even counting the
  // containers already asked for, get sig.ssAllocationUnit more containers, at
  // most one round per sig.ssAllocationInterval, never past sig.maxReplicas.
  // Attempts held back by their tenant's GPU quota are no demand.
  int unplaced = UnplacedDemand(state, cfg);
  bool interval_passed = state.last_scale_up == TimePoint{} ||
                         ctx.now - state.last_scale_up >= cfg.allocation_interval;
  if (unplaced > 0 && live < cfg.max_replicas && interval_passed) {
    int n = std::min(cfg.allocation_unit, cfg.max_replicas - live);
    for (int i = 0; i < n; ++i) out.push_back(ContainerRequest(state, ctx, requested++, "demand"));
    live += n;
  }
  // Keep sig.minReplicas (this also replaces lost containers below the minimum).
  for (; live < std::min(cfg.min_replicas, cfg.max_replicas); ++live) {
    out.push_back(ContainerRequest(state, ctx, requested++, "minReplicas"));
  }
  // Release containers idle longer than sig.idleTimeout, down to the minimum,
  // only when nothing is waiting.
  if (unplaced == 0 && state.queue.empty()) {
    for (const auto& [id, c] : state.containers) {
      if (live <= cfg.min_replicas) break;
      if (c.phase != ContainerPhase::kRegistered || !c.attempts.empty()) continue;
      if (expired.count(id)) continue;
      if (ctx.now - c.idle_since < cfg.idle_timeout) continue;
      out.push_back(Event{ContainerStream(id), std::string(ev::kContainerReleased),
                          Json{{"container", id},
                               {"reason", "idle for " + FormatDuration(ctx.now - c.idle_since)}}});
      --live;
    }
  }
  return out;
}

}  // namespace epoch::engine
