// The Engine's answer to a container's poll (engine.h, DispatchFor): from the
// published state, the assignments to start (attempts and gang workers, with what
// to run and where) and the cancels of what runs but should not.
#include "engine/engine.h"

#include <set>
#include <string>
#include <vector>

namespace epoch::engine {

namespace {

// One assignment of the container protocol (DESIGN.md; executors/agent/agent.h): what
// to run, where, as whom, with which GPUs, and what of the data dir it may read.
Json AssignmentJson(const EngineConfig& cfg, const Run& run, const Attempt& a,
                    const std::string& id, const std::string& step, int n, int rank,
                    const Json& env, const std::string& outputs_dir, const std::string& log_path,
                    const Json& gpus) {
  Json inputs = Json::array();
  // What the scheduler reserved, and what the kernel is to enforce: only what the
  // definition declared (null: the container's sig.cpu / sig.memory bound it).
  Json resources{{"cpu_millis", a.resources.cpu_millis},
                 {"memory_bytes", a.resources.memory_bytes}};
  const workflows::Step* def = run.def ? run.def->FindStep(step) : nullptr;
  if (def) inputs = UpstreamInputs(run, *def, cfg);
  Json limits = AttemptLimitsJson(a, def);
  return Json{{"attempt_id", id},
              {"resources", std::move(resources)},
              {"limits", std::move(limits)},
              {"inputs", std::move(inputs)},
              {"run", run.id},
              {"step", step},
              {"attempt", n},
              {"tenant", run.tenant},
              {"run_as", RunAsFor(cfg, run.tenant)},
              {"mounts", a.mounts},
              {"max_log_bytes", cfg.max_log_bytes},
              {"argv", a.argv},
              {"env", env},
              {"workspace", WorkspaceDir(cfg, run.id)},
              {"outputs_dir", outputs_dir},
              {"log_path", log_path},
              {"timeout_ms", a.timeout_ms},
              {"gpus", gpus},
              // Live metrics ($EPOCH_METRICS) and checkpoints ($EPOCH_CHECKPOINT_DIR).
              {"metrics",
               {{"path", MetricsPath(cfg, run.id, step, n, rank)},
                {"interval_ms", cfg.metrics_interval.count() / 1000},
                {"max_points", cfg.metrics_max_points},
                {"max_bytes", cfg.metrics_max_bytes}}},
              {"checkpoint_dir", CheckpointDir(cfg, run.id, step, a.trial)}};
}

}  // namespace

DispatchView Engine::DispatchFor(const std::string& container,
                                 const std::vector<std::string>& running,
                                 const std::vector<std::string>& reported) const {
  DispatchView view;
  if (corrupt_) return view;  // nothing starts or stops on a corrupt history
  std::set<std::string> run_set(running.begin(), running.end());
  std::set<std::string> rep_set(reported.begin(), reported.end());
  const EngineConfig& cfg = options_.config;
  ReaderLock lock(&published_mu_);
  const State& s = published_;
  auto it = s.containers.find(container);
  if (it == s.containers.end()) return view;
  for (const auto& id : it->second.attempts) {
    if (run_set.count(id) || rep_set.count(id)) continue;
    const Attempt* ga = nullptr;
    if (const Worker* w = s.FindWorker(id, &ga)) {
      // A gang worker: handed out once every worker of its attempt is placed
      // (they are placed together), with torch.distributed's variables.
      if (w->phase != AttemptPhase::kAssigned || IsTerminal(ga->phase)) continue;
      std::string run_id, step;
      int n, rank;
      ParseTaskId(id, &run_id, &step, &n, &rank);
      const Run* run = s.FindRun(run_id);
      if (!run || run->cancel_requested || IsTerminal(run->phase)) continue;
      Json env = ga->env;
      env["WORLD_SIZE"] = std::to_string(ga->workers);
      env["RANK"] = std::to_string(rank);
      env["LOCAL_RANK"] = std::to_string(w->local_rank);
      env["MASTER_ADDR"] = ga->master_addr;
      env["MASTER_PORT"] = std::to_string(ga->master_port);
      std::string outputs = OutputsDir(cfg, run_id, step, n);
      std::string log = LogPath(cfg, run_id, step, n);
      if (rank > 0) {  // rank 0 writes the step's outputs and main log
        outputs += "-" + std::to_string(rank);
        log = log.substr(0, log.size() - 4) + "." + std::to_string(rank) + ".log";
      }
      view.assignments.push_back(
          AssignmentJson(cfg, *run, *ga, id, step, n, rank, env, outputs, log, w->gpus));
      continue;
    }
    const Attempt* a = s.FindAttempt(id);
    if (!a || a->phase != AttemptPhase::kAssigned) continue;
    std::string run_id, step;
    int n;
    ParseAttemptId(id, &run_id, &step, &n);
    const Run* run = s.FindRun(run_id);
    if (!run) continue;
    view.assignments.push_back(AssignmentJson(cfg, *run, *a, id, step, n, 0, a->env,
                                              OutputsDir(cfg, run_id, step, n),
                                              LogPath(cfg, run_id, step, n), a->gpus));
  }
  for (const auto& id : running) {
    if (rep_set.count(id)) continue;
    const Attempt* ga = nullptr;
    if (const Worker* w = s.FindWorker(id, &ga)) {
      // A worker runs on only while its whole attempt does.
      std::string run_id, step;
      int n, rank;
      ParseTaskId(id, &run_id, &step, &n, &rank);
      const Run* run = s.FindRun(run_id);
      if (IsTerminal(ga->phase) || ga->EndRequested() || w->container != container || !run ||
          run->cancel_requested || IsTerminal(run->phase) ||
          (IsTerminal(w->phase) && w->phase != AttemptPhase::kCancelled)) {
        view.cancels.push_back(id);
      } else if (w->phase == AttemptPhase::kCancelled) {
        view.cancels.push_back(id);
      }
      continue;
    }
    const Attempt* a = s.FindAttempt(id);
    std::string run_id, step;
    int n;
    // A trial early stopping stopped (TrialStopped), a preempted attempt (JobPreempted)
    // and a resized gang (GangResized) are cancelled like those of a cancelled run.
    bool cancel = !a || IsTerminal(a->phase) || a->EndRequested() || a->container != container;
    if (!cancel && ParseAttemptId(id, &run_id, &step, &n)) {
      const Run* run = s.FindRun(run_id);
      cancel = !run || run->cancel_requested || IsTerminal(run->phase);
    }
    if (cancel) view.cancels.push_back(id);
  }
  return view;
}

}  // namespace epoch::engine
