// Evolve: how each fact changes the State (state.h), one overload per payload type
// (engine/event_types.h). It runs identically live (Processor::Record) and in replay.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <string>
#include <type_traits>
#include <variant>

#include "engine/event_types.h"
#include "engine/state.h"

namespace epoch::engine {

namespace {

// A fact in the log that cannot be applied: replay stops there (kCorruption)
// rather than guess or drop it.
Status Corrupt(const RecordedEvent& e, std::string_view field, const std::string& problem) {
  return Corruption("event " + std::to_string(e.position) + " (" + e.type + "): field " +
                    std::string(field) + ": " + problem);
}

// Releases what `id` (an attempt or a gang worker) holds on `container`.
void Release(State& s, const std::string& container, const std::string& id,
             const workflows::Resources& r, const Json& gpus, TimePoint now) {
  auto it = s.containers.find(container);
  if (it == s.containers.end()) return;
  Container& c = it->second;
  if (c.attempts.erase(id) == 0) return;
  c.used_cpu -= r.cpu_millis;
  c.used_memory -= r.memory_bytes;
  for (const auto& g : gpus) {
    if (g.is_string()) c.busy_gpus.erase(g.get<std::string>());
  }
  if (c.attempts.empty()) c.idle_since = now;
}

void Reserve(State& s, const std::string& container, const std::string& id,
             const workflows::Resources& r, const Json& gpus) {
  auto it = s.containers.find(container);
  if (it == s.containers.end()) return;
  Container& c = it->second;
  if (!c.attempts.insert(id).second) return;
  c.used_cpu += r.cpu_millis;
  c.used_memory += r.memory_bytes;
  for (const auto& g : gpus) {
    if (g.is_string()) c.busy_gpus.insert(g.get<std::string>());
  }
}

void ReleaseReservation(State& s, const std::string& attempt_id, Attempt& a, TimePoint now) {
  if (a.workers <= 1) {
    if (!a.container.empty()) Release(s, a.container, attempt_id, a.resources, a.gpus, now);
    return;
  }
  // A gang: workers that never started give their room back now; running ones
  // keep it until they report (they are being stopped).
  for (auto& w : a.ranks) {
    if (w.phase != AttemptPhase::kAssigned) continue;
    w.phase = AttemptPhase::kCancelled;
    w.finished_at = now;
    Release(s, w.container, attempt_id + "/" + std::to_string(w.rank), a.resources, w.gpus, now);
  }
}

void RemoveFromQueue(State& s, const Run& run, const Attempt& a) {
  s.queue.erase({-run.priority, a.queue_seq});
}

// The run, step and attempt an event of a run's stream names (any of them null when
// the state has no such thing: the event is then a no-op).
struct Target {
  Run* run = nullptr;
  StepRun* step = nullptr;
  Attempt* attempt = nullptr;
  std::string attempt_id;
};

Target Resolve(State& s, const RecordedEvent& e, const std::string& step,
               std::optional<int> attempt = std::nullopt) {
  Target t;
  if (e.stream.rfind("run-", 0) != 0) return t;
  t.run = s.FindRun(std::string_view(e.stream).substr(4));
  if (!t.run) return t;
  t.step = t.run->FindStep(step);
  if (t.step && attempt && *attempt >= 1 && *attempt <= static_cast<int>(t.step->attempts.size())) {
    t.attempt = &t.step->attempts[static_cast<size_t>(*attempt) - 1];
    t.attempt_id = AttemptId(t.run->id, t.step->name, *attempt);
  }
  return t;
}

workflows::Resources ResourcesOf(const ev::ResourceSpec& r) {
  workflows::Resources out;
  out.cpu_millis = r.cpu_millis;
  out.memory_bytes = r.memory_bytes;
  out.gpus = r.gpus;
  return out;
}

// The attempt a JobQueued or JobCacheHit creates: number, resources, command, trial.
template <class P>
Attempt AttemptFrom(const P& p) {
  Attempt a;
  a.number = p.attempt;
  a.resources = ResourcesOf(p.resources);
  a.argv = Json(p.argv);
  a.env = p.env;
  if (p.trial) {
    a.trial = *p.trial;
    a.trial_params = p.params.value_or(Json::object());
  }
  return a;
}

// How an attempt ended, as the events that end it say.
struct Ending {
  std::optional<int> exit_code;
  std::optional<int> signal;
  const Json* usage = nullptr;
  const std::optional<ev::LogInfo>* log = nullptr;
  const std::string* reason = nullptr;
};

// An attempt reached a terminal phase: bookkeeping shared by every outcome.
void FinishAttempt(State& s, Target& t, AttemptPhase phase, TimePoint time, const Ending& end) {
  Attempt& a = *t.attempt;
  if (a.phase == AttemptPhase::kQueued) RemoveFromQueue(s, *t.run, a);
  ReleaseReservation(s, t.attempt_id, a, time);
  a.phase = phase;
  a.finished_at = time;
  if (end.usage) a.usage = *end.usage;
  if (end.log && *end.log) a.log = fields::Encode(**end.log);
  a.exit_code = end.exit_code;
  a.signal = end.signal;
  if (end.reason) a.reason = *end.reason;
}

AttemptPhase WorkerPhase(const std::string& state) {
  return state == "succeeded"   ? AttemptPhase::kSucceeded
         : state == "timed_out" ? AttemptPhase::kTimedOut
         : state == "cancelled" ? AttemptPhase::kCancelled
         : state == "lost"      ? AttemptPhase::kLost
                                : AttemptPhase::kFailed;
}

void MarkRunStarted(Run& run, TimePoint time) {
  if (!run.started_at) run.started_at = time;
  if (run.phase == RunPhase::kQueued) run.phase = RunPhase::kRunning;
}

// One overload per payload type: how the fact changes the state. Each runs
// identically live and in replay; a fact about something the state does not hold
// (an attempt already ended, a run or container it never had) changes nothing.
struct Apply {
  State& s;
  const RecordedEvent& e;

  Status operator()(const ev::WorkflowRegistered& p) {
    std::vector<std::string> problems;
    auto def = workflows::ParseStoredDefinition(p.definition, &problems);
    if (!def.ok()) return Corrupt(e, "definition", def.status().ToString());
    if (!problems.empty()) {
      // Registered under earlier rules: replayed as stored (stored definitions are facts).
      std::string list;
      for (const auto& pr : problems) list += (list.empty() ? "" : "; ") + pr;
      spdlog::warn(
          "replay: workflow {} registered at {} breaks today's rules ({}); replayed as "
          "stored",
          (*def)->name, e.position, list);
    }
    WorkflowVersion v;
    v.version = p.version;
    v.digest = p.digest;
    v.def = *def;
    v.registered_at = e.time;
    v.actor = e.actor;
    v.tenant = p.tenant;
    v.request_digest = p.request_digest.value_or("");
    auto& versions = s.workflows[p.name];
    if (v.version != static_cast<int>(versions.size()) + 1) {
      return Corrupt(e, "version",
                     std::to_string(v.version) + " does not follow version " +
                         std::to_string(versions.size()) + " of workflow " + p.name);
    }
    if (p.idempotency_key && !p.idempotency_key->empty()) {
      s.workflow_keys[{p.tenant, *p.idempotency_key}] = {p.name, v.version};
    }
    versions.push_back(std::move(v));
    return Status::Ok();
  }

  Status operator()(const ev::RunSubmitted& p) {
    if (p.run.empty()) return Corrupt(e, "run", "empty");
    const WorkflowVersion* wf = s.FindWorkflow(p.workflow, p.version);
    if (!wf) {
      return Corrupt(e, "workflow",
                     "names " + p.workflow + " version " + std::to_string(p.version) +
                         ", which no WorkflowRegistered before it registers");
    }
    Run run;
    run.id = p.run;
    run.workflow = p.workflow;
    run.version = p.version;
    run.def = wf->def;
    run.digest = p.digest;
    run.tenant = p.tenant;
    run.submitter = p.submitter;
    run.params = p.params;
    run.labels = p.labels;
    run.priority = p.priority;
    run.seq = s.next_run_seq++;
    run.submitted_at = e.time;
    for (const auto& st : run.def->steps) {
      StepRun sr;
      sr.name = st.name;
      run.steps.push_back(std::move(sr));
    }
    if (p.idempotency_key && !p.idempotency_key->empty()) {
      s.idempotency[{run.tenant, *p.idempotency_key}] = run.id;
      run.idempotency_key = *p.idempotency_key;
    }
    run.request_digest = p.request_digest.value_or("");
    s.runs_by_seq[run.seq] = run.id;
    s.runs[run.id] = std::move(run);
    return Status::Ok();
  }

  Status operator()(const ev::StepReady& p) {
    Target t = Resolve(s, e, p.step);
    if (t.step) t.step->phase = StepPhase::kQueued;
    return Status::Ok();
  }

  Status operator()(const ev::StepSkipped& p) {
    Target t = Resolve(s, e, p.step);
    if (t.step) {
      t.step->phase = StepPhase::kSkipped;
      t.step->reason = p.reason;
    }
    return Status::Ok();
  }

  Status operator()(const ev::RunSucceeded&) {
    Target t = Resolve(s, e, "");
    if (!t.run) return Status::Ok();
    t.run->phase = RunPhase::kSucceeded;
    t.run->finished_at = e.time;
    return Status::Ok();
  }

  Status RunEnded(RunPhase phase, const std::string& step, const std::string& reason) {
    Target t = Resolve(s, e, "");
    if (!t.run) return Status::Ok();
    Run& run = *t.run;
    run.phase = phase;
    run.finished_at = e.time;
    run.failed_step = step;
    run.reason = reason;
    for (auto& st : run.steps) {
      if (st.retry_at) {
        s.retry_timers.erase({*st.retry_at, AttemptId(run.id, st.name, st.next_attempt)});
        st.retry_at.reset();
      }
      // (A sweep's step stays running between trials: settle it too.)
      if (st.phase == StepPhase::kPending || st.phase == StepPhase::kQueued ||
          st.phase == StepPhase::kRunning) {
        if (!st.HasActive()) {
          st.phase = StepPhase::kCancelled;
          st.reason = phase == RunPhase::kFailed ? "run failed" : "run cancelled";
        }
      }
    }
    return Status::Ok();
  }
  Status operator()(const ev::RunFailed& p) {
    return RunEnded(RunPhase::kFailed, p.step, p.reason);
  }
  Status operator()(const ev::RunCancelled&) { return RunEnded(RunPhase::kCancelled, "", ""); }

  Status operator()(const ev::RunCancelRequested&) {
    Target t = Resolve(s, e, "");
    if (t.run) t.run->cancel_requested = true;
    return Status::Ok();
  }

  Status operator()(const ev::RunRetryRequested& p) {
    Target t = Resolve(s, e, "");
    if (!t.run) return Status::Ok();
    Run& run = *t.run;
    run.phase = run.started_at ? RunPhase::kRunning : RunPhase::kQueued;
    run.cancel_requested = false;
    run.finished_at.reset();
    run.failed_step.clear();
    run.reason.clear();
    for (const auto& name : p.steps) {
      StepRun* st = run.FindStep(name);
      if (!st) continue;
      st->phase = StepPhase::kPending;
      st->reason.clear();
      st->metrics = Json::object();
      st->outputs = Json::array();
      st->best = Json();
      st->next_attempt = static_cast<int>(st->attempts.size()) + 1;
      st->round_start = st->next_attempt;
    }
    return Status::Ok();
  }

  Status operator()(const ev::JobQueued& p) {
    Target t = Resolve(s, e, p.step);
    if (!t.step) return Status::Ok();
    Run& run = *t.run;
    Attempt a = AttemptFrom(p);
    if (a.number != static_cast<int>(t.step->attempts.size()) + 1) return Status::Ok();
    a.timeout_ms = p.timeout_ms;
    a.workers = p.workers;
    if (p.workers_min) {
      a.workers_min = *p.workers_min;
      a.workers_max = p.workers;
      if (p.workers_cap) a.workers_cap = *p.workers_cap;
    }
    if (p.mounts) {
      a.mounts = Json::array();
      for (const auto& m : *p.mounts) a.mounts.push_back(fields::Encode(m));
    }
    if (p.cache && p.cache->key) a.cache_key = *p.cache->key;
    a.queue_seq = s.next_queue_seq++;
    a.queued_at = e.time;
    t.step->attempts.push_back(a);
    if (t.step->phase != StepPhase::kRunning) t.step->phase = StepPhase::kQueued;
    if (t.step->retry_at) {
      s.retry_timers.erase({*t.step->retry_at, AttemptId(run.id, t.step->name, a.number)});
      t.step->retry_at.reset();
    }
    t.step->next_attempt = a.number + 1;
    s.queue[{-run.priority, a.queue_seq}] = AttemptId(run.id, t.step->name, a.number);
    return Status::Ok();
  }

  Status operator()(const ev::JobAssigned& p) {
    Target t = Resolve(s, e, p.step, p.attempt);
    if (!t.attempt || t.attempt->phase != AttemptPhase::kQueued) return Status::Ok();
    Attempt& a = *t.attempt;
    RemoveFromQueue(s, *t.run, a);
    a.phase = AttemptPhase::kAssigned;
    a.assigned_at = e.time;
    if (p.placements) {
      s.gangs_placed++;
      a.master_addr = p.master_addr.value_or("127.0.0.1");
      a.master_port = p.master_port.value_or(0);
      for (const auto& pl : *p.placements) {
        Worker w;
        w.rank = pl.rank;
        w.local_rank = pl.local_rank;
        w.container = pl.container;
        w.gpus = pl.gpus;
        w.gpu_uuids = pl.gpu_uuids;
        Reserve(s, w.container, t.attempt_id + "/" + std::to_string(w.rank), a.resources, w.gpus);
        a.ranks.push_back(std::move(w));
      }
      if (a.workers_max > 0) a.workers = static_cast<int>(a.ranks.size());  // as wide as fit
      if (!a.ranks.empty()) {
        a.container = a.ranks[0].container;
        a.gpus = a.ranks[0].gpus;
        a.gpu_uuids = a.ranks[0].gpu_uuids;
      }
    } else {
      a.container = p.container;
      a.gpus = p.gpus.value_or(Json::array());
      a.gpu_uuids = p.gpu_uuids.value_or(Json::array());
      Reserve(s, a.container, t.attempt_id, a.resources, a.gpus);
    }
    if (p.checkpoint) a.resumed_from = *p.checkpoint;
    return Status::Ok();
  }

  Status operator()(const ev::JobStarted& p) {
    Target t = Resolve(s, e, p.step, p.attempt);
    if (!t.attempt) return Status::Ok();
    if (p.rank) {
      int rank = *p.rank;
      if (rank < 0 || rank >= static_cast<int>(t.attempt->ranks.size())) return Status::Ok();
      Worker& w = t.attempt->ranks[static_cast<size_t>(rank)];
      if (w.phase != AttemptPhase::kAssigned) return Status::Ok();
      w.phase = AttemptPhase::kRunning;
      w.started_at = e.time;
    }
    if (t.attempt->phase != AttemptPhase::kAssigned) return Status::Ok();
    t.attempt->phase = AttemptPhase::kRunning;
    t.attempt->started_at = e.time;
    t.step->phase = StepPhase::kRunning;
    MarkRunStarted(*t.run, e.time);
    return Status::Ok();
  }

  Status operator()(const ev::JobSucceeded& p) {
    Target t = Resolve(s, e, p.step, p.attempt);
    if (!t.attempt || IsTerminal(t.attempt->phase)) return Status::Ok();
    Run& run = *t.run;
    FinishAttempt(s, t, AttemptPhase::kSucceeded, e.time,
                  Ending{p.exit_code, p.signal, &p.usage, &p.log, nullptr});
    if (!t.attempt->cache_key.empty()) {
      s.cache[t.attempt->cache_key] =
          CacheEntry{run.tenant,   run.id,    t.step->name, t.attempt->number,
                     run.workflow, p.outputs, p.metrics,    e.time};
    }
    if (t.attempt->trial >= 0) {  // a trial: the sweep decides the step
      t.attempt->metrics = p.metrics;
      t.attempt->outputs = p.outputs;
      return Status::Ok();
    }
    t.step->phase = StepPhase::kSucceeded;
    t.step->metrics = p.metrics;
    t.step->outputs = p.outputs;
    t.step->reason.clear();
    return Status::Ok();
  }

  Status operator()(const ev::JobCacheHit& p) {
    Target t = Resolve(s, e, p.step);
    if (!t.step) return Status::Ok();
    Run& run = *t.run;
    Attempt a = AttemptFrom(p);
    if (a.number != static_cast<int>(t.step->attempts.size()) + 1) return Status::Ok();
    a.phase = AttemptPhase::kSucceeded;
    a.cache_key = p.key;
    a.cached_from = AttemptId(p.source_run, p.source_step, p.source_attempt);
    a.queued_at = a.finished_at = e.time;
    if (auto c = s.cache.find(p.key); c != s.cache.end() && c->second.run == p.source_run &&
                                      c->second.step == p.source_step &&
                                      c->second.attempt == p.source_attempt) {
      c->second.last_hit_at = e.time;
    }
    if (a.trial >= 0) {  // a trial's result, kept for the sweep to choose from
      a.metrics = p.metrics;
      a.outputs = p.outputs;
      t.step->attempts.push_back(std::move(a));
      t.step->next_attempt = static_cast<int>(t.step->attempts.size()) + 1;
      if (t.step->phase != StepPhase::kRunning) t.step->phase = StepPhase::kQueued;
      MarkRunStarted(run, e.time);
      return Status::Ok();
    }
    t.step->attempts.push_back(std::move(a));
    if (t.step->retry_at) {
      s.retry_timers.erase(
          {*t.step->retry_at, AttemptId(run.id, t.step->name, t.step->next_attempt)});
      t.step->retry_at.reset();
    }
    t.step->next_attempt = static_cast<int>(t.step->attempts.size()) + 1;
    t.step->phase = StepPhase::kSucceeded;
    t.step->metrics = p.metrics;
    t.step->outputs = p.outputs;
    t.step->reason.clear();
    MarkRunStarted(run, e.time);
    return Status::Ok();
  }

  Status AttemptEnded(const ev::AttemptEnd& p, AttemptPhase phase) {
    Target t = Resolve(s, e, p.step, p.attempt);
    if (!t.attempt || IsTerminal(t.attempt->phase)) return Status::Ok();
    FinishAttempt(s, t, phase, e.time,
                  Ending{p.exit_code, p.signal, p.usage ? &*p.usage : nullptr, &p.log, &p.reason});
    if (phase == AttemptPhase::kTimedOut && t.attempt->reason.empty()) {
      t.attempt->reason = "timeout";
    }
    if (t.attempt->trial >= 0) return Status::Ok();  // a failed trial does not fail the sweep
    // The step stays where it is until decide says retry (JobRetryScheduled) or
    // gives up (RunFailed / RunCancelled settle the step).
    t.step->phase = phase == AttemptPhase::kCancelled ? StepPhase::kCancelled : StepPhase::kFailed;
    t.step->reason = t.attempt->reason;
    return Status::Ok();
  }
  Status operator()(const ev::JobFailed& p) {
    return AttemptEnded(p,
                        p.reason == "container_lost" ? AttemptPhase::kLost : AttemptPhase::kFailed);
  }
  Status operator()(const ev::JobTimedOut& p) { return AttemptEnded(p, AttemptPhase::kTimedOut); }
  Status operator()(const ev::JobCancelled& p) { return AttemptEnded(p, AttemptPhase::kCancelled); }

  Status operator()(const ev::JobWorkerFinished& p) {
    Target t = Resolve(s, e, p.step, p.attempt);
    if (!t.attempt) return Status::Ok();
    if (p.rank < 0 || p.rank >= static_cast<int>(t.attempt->ranks.size())) return Status::Ok();
    Worker& w = t.attempt->ranks[static_cast<size_t>(p.rank)];
    if (w.reported || (IsTerminal(w.phase) && w.phase != AttemptPhase::kCancelled)) {
      return Status::Ok();
    }
    w.reported = true;
    w.phase = WorkerPhase(p.state);
    w.finished_at = e.time;
    w.exit_code = p.exit_code;
    w.signal = p.signal;
    if (p.reason) w.reason = *p.reason;
    if (p.usage) w.usage = *p.usage;
    if (p.metrics) w.metrics = *p.metrics;
    if (p.outputs) w.outputs = *p.outputs;
    Release(s, w.container, t.attempt_id + "/" + std::to_string(p.rank), t.attempt->resources,
            w.gpus, e.time);
    return Status::Ok();
  }

  Status operator()(const ev::StepSweepCompleted& p) {
    Target t = Resolve(s, e, p.step);
    if (!t.step) return Status::Ok();
    int n = p.best_attempt.value_or(0);
    if (n >= 1 && n <= static_cast<int>(t.step->attempts.size())) {
      const Attempt& best = t.step->attempts[static_cast<size_t>(n) - 1];
      t.step->phase = StepPhase::kSucceeded;
      t.step->metrics = best.metrics.is_object() ? best.metrics : Json::object();
      t.step->outputs = best.outputs.is_array() ? best.outputs : Json::array();
      t.step->reason.clear();
      t.step->best = Json{{"trial", best.trial},
                          {"attempt", n},
                          {"params", best.trial_params},
                          {"value", p.best_value.value_or(Json())},
                          {"metric", p.metric}};
    } else {
      t.step->phase = StepPhase::kFailed;
      t.step->reason = p.reason.value_or("no trial succeeded");
    }
    return Status::Ok();
  }

  // A rung judgement (early stopping): the rung's record, and a stopped trial's reason
  // (the dispatcher cancels it; it is no candidate for the best).
  template <const std::string_view* Type>
  Status operator()(const ev::TrialJudged<Type>& p) {
    Target t = Resolve(s, e, p.step, p.attempt);
    if (!t.attempt) return Status::Ok();
    bool stopped = Type == &ev::kTrialStopped;
    t.step->rungs.push_back(RungMark{.attempt = p.attempt,
                                     .trial = p.trial,
                                     .rung = p.rung,
                                     .value = p.value,
                                     .stopped = stopped});
    if (stopped && !IsTerminal(t.attempt->phase)) t.attempt->stopped = p.reason;
    return Status::Ok();
  }

  // Preemption: the dispatcher cancels the attempt; decide queues its step again.
  Status operator()(const ev::JobPreempted& p) {
    Target t = Resolve(s, e, p.step, p.attempt);
    if (!t.attempt || IsTerminal(t.attempt->phase)) return Status::Ok();
    t.attempt->preempted_by = p.by;
    return Status::Ok();
  }

  // An elastic gang's resize: the size its step asks for next. The dispatcher cancels a
  // running attempt's workers; decide queues the step again once it has ended.
  Status operator()(const ev::GangResized& p) {
    Target t = Resolve(s, e, p.step, p.attempt);
    if (!t.attempt) return Status::Ok();
    t.attempt->resized_to = p.world_size;
    if (p.by && !IsTerminal(t.attempt->phase)) t.attempt->preempted_by = *p.by;
    return Status::Ok();
  }

  Status operator()(const ev::MetricsRecorded& p) {
    Target t = Resolve(s, e, p.step, p.attempt);
    if (!t.attempt) return Status::Ok();
    if (p.from < 0 || p.next < p.from + static_cast<int64_t>(p.points.size())) {
      return Corrupt(e, "next",
                     "batch [" + std::to_string(p.from) + ", " + std::to_string(p.next) +
                         ") cannot hold its points");
    }
    MetricSeries& m = t.attempt->series[p.rank.value_or(0)];
    // Decide records each point once, in order; a batch that overlaps what is
    // recorded (a hand-edited log) adds only what is new.
    if (p.from <= m.next) {
      for (size_t i = static_cast<size_t>(m.next - p.from); i < p.points.size(); ++i) {
        m.bytes += static_cast<int64_t>(p.points[i].dump().size());
        ++m.points;
      }
      m.next = std::max(m.next, p.next);
    }
    m.skipped = std::max(m.skipped, p.skipped);
    m.dropped = std::max(m.dropped, p.dropped);
    m.truncated = m.truncated || p.truncated;
    m.capped = m.capped || p.capped;
    return Status::Ok();
  }

  Status operator()(const ev::CheckpointSaved& p) {
    Target t = Resolve(s, e, p.step);
    if (!t.step) return Status::Ok();
    Json c = fields::Encode(p);
    c.erase("step");
    t.step->checkpoints[p.trial.value_or(-1)] = std::move(c);
    return Status::Ok();
  }

  Status operator()(const ev::JobRetryScheduled& p) {
    Target t = Resolve(s, e, p.step);
    if (!t.step) return Status::Ok();
    auto nb = ParseTime(p.not_before);
    if (!nb.ok()) return Corrupt(e, "not_before", nb.status().message());
    t.step->retry_at = *nb;
    t.step->phase = StepPhase::kQueued;
    t.step->next_attempt = p.attempt;
    s.retry_timers.insert({*nb, AttemptId(t.run->id, t.step->name, p.attempt)});
    return Status::Ok();
  }

  // A data set or model version: within the run's tenant, the version with its
  // digest, else the next. With a read model the versions this needs are in
  // `artifact.versions` (EvolveArchived brought them in: the event's version and the
  // one with its digest).
  template <class P>
  Status Artifact(const P& p, bool model) {
    Target t = Resolve(s, e, "");
    Run* r = t.run;
    if (!r) return Status::Ok();
    engine::Artifact& artifact = (model ? s.models : s.datasets)[ArtifactKey(r->tenant, p.name)];
    int version = p.version;
    const ArtifactVersion* same = artifact.Find(version);
    bool existing = version >= 1 && version <= artifact.count && same && same->digest == p.digest;
    if (version != artifact.count + 1 && !existing) {
      // Written when names were global, so numbered among every tenant's versions:
      // within the run's tenant it is the version with its digest, else the next.
      version = artifact.count + 1;
      for (const auto& v : artifact.versions) {
        if (v.digest == p.digest && v.version <= artifact.count) version = v.version;
      }
    }
    if (version == artifact.count + 1) {
      ArtifactVersion v;
      v.version = version;
      v.digest = p.digest;
      v.run = r->id;
      v.step = p.step;
      v.attempt = p.attempt;
      v.outputs = p.outputs;
      v.registered_at = e.time;
      v.files_at = AttemptId(r->id, p.step, p.attempt);
      if (const StepRun* st = r->FindStep(p.step);
          st && p.attempt >= 1 && p.attempt <= static_cast<int>(st->attempts.size()) &&
          !st->attempts[static_cast<size_t>(p.attempt - 1)].cached_from.empty()) {
        v.files_at = st->attempts[static_cast<size_t>(p.attempt - 1)].cached_from;
      }
      if constexpr (std::is_same_v<P, ev::ModelVersionRegistered>) {
        v.workflow = p.workflow;
        v.workflow_version = p.workflow_version;
        v.params = p.params;
        v.datasets = p.datasets;
      }
      artifact.versions.push_back(std::move(v));
      artifact.count = version;
    }
    (model ? r->models : r->datasets)[p.step] = {p.name, version};
    return Status::Ok();
  }
  Status operator()(const ev::DatasetVersionRegistered& p) { return Artifact(p, false); }
  Status operator()(const ev::ModelVersionRegistered& p) { return Artifact(p, true); }

  Status operator()(const ev::ModelVersionValidated& p) {
    Target t = Resolve(s, e, "");
    Run* r = t.run;
    if (!r) return Status::Ok();
    auto it = s.models.find(ArtifactKey(r->tenant, p.name));
    int version = ValidatedVersion(*r, p.name, p.version);
    if (it == s.models.end() || version < 1 || version > it->second.count) {
      return Status::Ok();
    }
    // Absent only when a read model should hold it and does not (EvolveArchived says so).
    if (ArtifactVersion* v = it->second.Find(version)) {
      for (const auto& [k, val] : p.metrics.items()) v->metrics[k] = val;
      v->validated_by.push_back(Json{{"run", r->id}, {"step", p.step}});
    }
    r->validated.insert(p.step);
    return Status::Ok();
  }

  Status operator()(const ev::ContainerRequested& p) {
    if (p.container.empty()) return Corrupt(e, "container", "empty");
    Container c;
    c.id = p.container;
    c.backend = p.backend;
    c.cpu_millis = p.spec.cpu_millis;
    c.memory_bytes = p.spec.memory_bytes;
    c.requested_gpus = p.spec.gpus;
    c.request_reason = p.reason;
    c.credential_sha256 = p.credential_sha256.value_or("");
    c.requested_at = e.time;
    if (c.request_reason == "demand") s.last_scale_up = e.time;
    s.containers[p.container] = std::move(c);
    s.container_counter++;
    return Status::Ok();
  }

  Container* FindContainer(const std::string& id) {
    auto it = s.containers.find(id);
    return it == s.containers.end() ? nullptr : &it->second;
  }

  Status operator()(const ev::ContainerLaunched& p) {
    if (Container* c = FindContainer(p.container)) c->handle = p.handle;
    return Status::Ok();
  }

  Status operator()(const ev::ContainerRegistered& p) {
    Container* c = FindContainer(p.container);
    if (!c || c->phase == ContainerPhase::kLost || c->phase == ContainerPhase::kReleased) {
      return Status::Ok();
    }
    c->phase = ContainerPhase::kRegistered;
    c->handle = p.handle;
    c->host = p.host;
    c->pid = p.pid;
    c->cpu_millis = p.cpu_millis;
    c->memory_bytes = p.memory_bytes;
    c->gpus = p.gpus;
    c->cuda = p.cuda;
    c->isolation = p.isolation.value_or(Json::object());
    c->enforcement = p.enforcement.value_or(Json::object());
    if (!c->registered_at) c->registered_at = e.time;
    if (c->attempts.empty()) c->idle_since = e.time;
    s.launch_failures_in_row = 0;
    return Status::Ok();
  }

  Status ContainerEnded(const std::string& id, ContainerPhase phase, const std::string& reason) {
    Container* c = FindContainer(id);
    if (!c) return Status::Ok();
    if (c->ended_at) s.ended_containers.erase({*c->ended_at, id});
    c->phase = phase;
    c->reason = reason;
    c->ended_at = e.time;
    s.ended_containers.insert({e.time, id});
    while (s.ended_containers.size() > kEndedContainersKept) {
      auto oldest = s.ended_containers.begin();
      if (oldest->second == id) ++oldest;  // the one ending now stays
      s.containers.erase(oldest->second);
      s.ended_containers.erase(oldest);
    }
    if (c->reason.rfind("launch failed", 0) == 0) {
      s.launch_failures_in_row++;
      s.last_launch_failure = e.time;
    }
    return Status::Ok();
  }
  Status operator()(const ev::ContainerLost& p) {
    return ContainerEnded(p.container, ContainerPhase::kLost, p.reason);
  }
  Status operator()(const ev::ContainerReleased& p) {
    return ContainerEnded(p.container, ContainerPhase::kReleased, p.reason);
  }

  Status operator()(const ev::CacheInvalidated& p) {
    for (const auto& k : p.keys) s.cache.erase(k);
    return Status::Ok();
  }

  // Retention: what the files' records say once they are deleted. A cache entry made
  // by an expired attempt stays, saying so, and is not reused (advance.cc).
  Status operator()(const ev::OutputsExpired& p) {
    for (const auto& f : p.files) {
      Target t = Resolve(s, e, f.step, f.attempt);
      if (!t.step) continue;
      if (f.attempt == 0) {
        t.step->checkpoints_expired = Expiry{e.time, f.bytes};
        t.step->checkpoints.clear();  // nothing left to resume from
        continue;
      }
      if (!t.attempt) continue;
      t.attempt->outputs_expired = Expiry{e.time, f.bytes};
      auto c = s.cache.find(t.attempt->cache_key);
      if (c != s.cache.end() && c->second.run == t.run->id && c->second.step == f.step &&
          c->second.attempt == f.attempt) {
        c->second.expired_at = e.time;
      }
    }
    if (Run* run = RunOf(e)) {
      TenantExpired& x = s.expired[run->tenant];
      x.outputs_bytes += p.bytes;
      ++x.outputs_events;
    }
    return Status::Ok();
  }
  Status operator()(const ev::LogsExpired& p) {
    for (const auto& f : p.files) {
      Target t = Resolve(s, e, f.step, f.attempt);
      if (t.attempt) t.attempt->logs_expired = Expiry{e.time, f.bytes};
    }
    if (Run* run = RunOf(e)) {
      TenantExpired& x = s.expired[run->tenant];
      x.logs_bytes += p.bytes;
      ++x.logs_events;
    }
    return Status::Ok();
  }
  Run* RunOf(const RecordedEvent& ev) {
    return ev.stream.rfind("run-", 0) == 0 ? s.FindRun(std::string_view(ev.stream).substr(4))
                                           : nullptr;
  }

  Status operator()(const ev::LeaderElected& p) {
    if (p.epoch > s.epoch) s.epoch = p.epoch;
    s.leader_node = p.node;
    s.leader_address = p.address;
    return Status::Ok();
  }
};

}  // namespace

int ValidatedVersion(const Run& run, const std::string& name, int event_version) {
  for (const auto& [step, nv] : run.models) {
    if (nv.first == name) return nv.second;
  }
  return event_version;
}

Status Evolve(State& s, const RecordedEvent& e) {
  s.head = e.position;
  if (e.epoch > s.epoch) s.epoch = e.epoch;
  // A stored text (e.text) is checked by DecodeEvent, with the same error.
  if (!e.text && !e.data.is_object()) return Corrupt(e, "data", "not a JSON object");
  ASSIGN_OR_RETURN(ev::Payload payload, ev::DecodeEvent(e));
  return std::visit(Apply{s, e}, payload);
}

}  // namespace epoch::engine
