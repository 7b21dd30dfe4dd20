// The decider's entry point and the user's commands: Decide() dispatches each command
// (decider.h); registering a workflow, submitting, cancelling and retrying a run and
// forgetting cache entries are decided here, the container protocol's commands in
// container_protocol.cc and a tick in tick.cc. Also the data dir layout and the OS user
// a tenant's steps run as.
#include "engine/decider.h"

#include <string>
#include <type_traits>
#include <variant>
#include <vector>

#include "common/files.h"
#include "engine/archive.h"
#include "engine/decider_internal.h"
#include "engine/retention.h"
#include "workflows/template.h"

namespace epoch::engine {

namespace {

using workflows::Definition;

workflows::Resources MaxContainer(const EngineConfig& c) {
  workflows::Resources r;
  r.cpu_millis = c.container_cpu_millis;
  r.memory_bytes = c.container_memory_bytes;
  r.gpus = c.container_gpus;
  return r;
}

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
        RETURN_IF_ERROR(
            SameRequest(v->request_digest, cmd.request_digest, cmd.idempotency_key,
                        "workflow " + v->def->name + " version " + std::to_string(v->version)));
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
  ev::WorkflowRegistered p{.name = def->name,
                           .version = next,
                           .definition = def->source,
                           .digest = def->digest,
                           .tenant = cmd.tenant};
  if (!cmd.idempotency_key.empty()) {
    p.idempotency_key = cmd.idempotency_key;
    if (!cmd.request_digest.empty()) p.request_digest = cmd.request_digest;
  }
  d.events.push_back(ev::MakeEvent(WorkflowStream(def->name), p, cmd.actor));
  return d;
}

// The run `id`, open or folded into ctx.archive (then read back into *folded);
// null when there is none.
Result<const Run*> FindAnyRun(const State& state, const DecideContext& ctx, const std::string& id,
                              std::optional<Run>* folded) {
  if (const Run* run = state.FindRun(id)) return run;
  if (!ctx.archive) return static_cast<const Run*>(nullptr);
  ASSIGN_OR_RETURN(*folded, ctx.archive->Load(state, id));
  return *folded ? &**folded : nullptr;
}

Result<Decision> DecideSubmitRun(const State& state, const SubmitRun& cmd,
                                 const DecideContext& ctx) {
  Decision d;
  std::optional<Run> folded;
  if (!cmd.idempotency_key.empty()) {
    // An open run's key is in the state; a folded run's in the read model.
    std::optional<std::string> earlier;
    if (auto it = state.idempotency.find({cmd.tenant, cmd.idempotency_key});
        it != state.idempotency.end()) {
      earlier = it->second;
    } else if (ctx.archive) {
      ASSIGN_OR_RETURN(earlier, ctx.archive->FindIdempotent(cmd.tenant, cmd.idempotency_key));
    }
    if (earlier) {
      ASSIGN_OR_RETURN(const Run* first, FindAnyRun(state, ctx, *earlier, &folded));
      RETURN_IF_ERROR(SameRequest(first ? first->request_digest : "", cmd.request_digest,
                                  cmd.idempotency_key, "run " + *earlier));
      d.result.id = *earlier;
      d.result.created = false;
      return d;
    }
  }
  if (!cmd.labels.is_object()) return InvalidArgument("labels: must be an object");
  for (auto& [k, v] : cmd.labels.items()) {
    if (!v.is_string()) return InvalidArgument("labels." + k + ": must be a string");
  }
  ASSIGN_OR_RETURN(const Run* same_id, FindAnyRun(state, ctx, cmd.run_id, &folded));
  if (same_id) return Conflict("run " + cmd.run_id + " already exists");
  std::string workflow = cmd.workflow;
  int version = cmd.version;
  std::shared_ptr<const Definition> def;
  std::string digest;
  if (cmd.definition) {
    ASSIGN_OR_RETURN(
        Decision reg,
        DecideRegisterWorkflow(
            state, RegisterWorkflow{*cmd.definition, cmd.submitter, cmd.tenant, "", cmd.any_tenant},
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
  ev::RunSubmitted p{.run = cmd.run_id,
                     .workflow = workflow,
                     .version = version,
                     .digest = digest,
                     .params = params,
                     .labels = cmd.labels,
                     .tenant = cmd.tenant,
                     .submitter = cmd.submitter,
                     .priority = cmd.priority};
  if (!cmd.idempotency_key.empty()) {
    p.idempotency_key = cmd.idempotency_key;
    if (!cmd.request_digest.empty()) p.request_digest = cmd.request_digest;
  }
  d.events.push_back(ev::MakeEvent(RunStream(cmd.run_id), p, cmd.submitter));
  d.result.id = cmd.run_id;
  d.result.version = version;
  d.result.digest = digest;
  d.result.created = true;
  return d;
}

Result<Decision> DecideCancel(const State& state, const CancelRun& cmd, const DecideContext& ctx) {
  std::optional<Run> folded;
  ASSIGN_OR_RETURN(const Run* run, FindAnyRun(state, ctx, cmd.run_id, &folded));
  if (!run) return NotFound("run '" + cmd.run_id + "' not found");
  Decision d;
  d.result.id = run->id;
  if (IsTerminal(run->phase)) {
    return Conflict("run '" + run->id + "' is already " + std::string(Name(run->phase)));
  }
  if (run->cancel_requested) return d;  // cancelling already: nothing new to record
  d.result.created = true;
  d.events.push_back(RunEvent(*run, ev::RunCancelRequested{.by = cmd.actor}, cmd.actor));
  return d;
}

Result<Decision> DecideRetry(const State& state, const RetryRun& cmd, const DecideContext& ctx) {
  std::optional<Run> folded;
  ASSIGN_OR_RETURN(const Run* run, FindAnyRun(state, ctx, cmd.run_id, &folded));
  if (!run) return NotFound("run '" + cmd.run_id + "' not found");
  if (run->phase != RunPhase::kFailed && run->phase != RunPhase::kCancelled) {
    return Conflict("run '" + run->id + "' is " + std::string(Name(run->phase)) +
                    "; only failed or cancelled runs can be retried");
  }
  std::vector<std::string> steps;
  for (const auto& s : run->steps) {
    // A succeeded step is reused by the retry: its files must still be there.
    if (const Attempt* r = s.Result();
        s.phase == StepPhase::kSucceeded && r && r->outputs_expired) {
      return FailedPrecondition("outputs of step '" + s.name + "' of run '" + run->id +
                                "' expired on " + FormatTime(r->outputs_expired.at) +
                                " (retention.outputs); submit a new run instead");
    }
    if (s.phase == StepPhase::kSucceeded) continue;
    if (s.phase == StepPhase::kSkipped)
      continue;  // decided by `when`; re-evaluated if upstream re-runs
    if (s.HasActive()) {
      return Conflict("step '" + s.name + "' of run '" + run->id + "' is still running");
    }
    steps.push_back(s.name);
  }
  Decision d;
  d.result.id = run->id;
  d.result.created = true;
  d.events.push_back(
      RunEvent(*run, ev::RunRetryRequested{.steps = steps, .by = cmd.actor}, cmd.actor));
  return d;
}

Result<Decision> DecideInvalidateCache(const State& state, const InvalidateCache& cmd) {
  if (cmd.key.empty() && cmd.workflow.empty()) {
    return InvalidArgument(
        "key or workflow: give a cache key or a workflow (and optionally a step)");
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
  ev::CacheInvalidated p{.keys = {keys.begin(), keys.end()}, .by = cmd.actor, .tenant = cmd.tenant};
  if (!cmd.workflow.empty()) p.workflow = cmd.workflow;
  if (!cmd.step.empty()) p.step = cmd.step;
  d.events.push_back(ev::MakeEvent(std::string(kCacheStream), p, cmd.actor));
  return d;
}

}  // namespace

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

std::string MetricsPath(const EngineConfig& c, std::string_view run, std::string_view step,
                        int attempt, int rank) {
  return WorkspaceDir(c, run) + "/" + std::string(step) + "/" + std::to_string(attempt) +
         (rank > 0 ? "/metrics-" + std::to_string(rank) + ".ndjson" : "/metrics.ndjson");
}
std::string CheckpointDir(const EngineConfig& c, std::string_view run, std::string_view step,
                          int trial) {
  return WorkspaceDir(c, run) + "/" + std::string(step) + "/checkpoints" +
         (trial >= 0 ? "/trial-" + std::to_string(trial) : "");
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
          return DecideCancel(state, cmd, ctx);
        } else if constexpr (std::is_same_v<T, RetryRun>) {
          return DecideRetry(state, cmd, ctx);
        } else if constexpr (std::is_same_v<T, InvalidateCache>) {
          return DecideInvalidateCache(state, cmd);
        } else if constexpr (std::is_same_v<T, RegisterContainer>) {
          return DecideRegisterContainer(state, cmd);
        } else if constexpr (std::is_same_v<T, PollContainer>) {
          return DecidePoll(state, cmd, ctx);
        } else if constexpr (std::is_same_v<T, ContainerLaunchResult>) {
          return DecideLaunchResult(state, cmd);
        } else if constexpr (std::is_same_v<T, ContainerExited>) {
          return DecideContainerExited(state, cmd);
        } else if constexpr (std::is_same_v<T, ExpireFiles>) {
          return DecideExpireFiles(state, cmd, ctx);
        } else {
          Decision d;
          d.events = OnTick(state, cmd, ctx);
          return d;
        }
      },
      command);
}

}  // namespace epoch::engine
