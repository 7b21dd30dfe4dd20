// The decider's side of the container protocol: a container registers, polls with its
// reports on the attempts placed on it (each becomes the attempt's outcome, or a gang
// worker's), and the backend answers a launch or says a container exited; a lost
// container fails what it held (LoseContainer).
#include "engine/decider.h"

#include <array>
#include <cmath>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "engine/archive.h"
#include "engine/decider_internal.h"

namespace epoch::engine {

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
  ev::ContainerRegistered p{.container = c.id,
                            .backend = cmd.backend.empty() ? c.backend : cmd.backend,
                            .handle = cmd.handle.empty() ? c.handle : cmd.handle,
                            .host = cmd.host,
                            .pid = cmd.pid,
                            .cpu_millis = cmd.cpu_millis,
                            .memory_bytes = cmd.memory_bytes,
                            .gpus = cmd.gpus,
                            .cuda = cmd.cuda};
  if (cmd.isolation.is_object() && !cmd.isolation.empty()) p.isolation = cmd.isolation;
  if (cmd.enforcement.is_object() && !cmd.enforcement.empty()) p.enforcement = cmd.enforcement;
  d.events.push_back(ev::MakeEvent(ContainerStream(c.id), p, c.id));
  return d;
}

namespace {

// Turns an agent report into the attempt's terminal event (plus JobStarted if
// the master never saw it start).
// What one poll has already decided about gang attempts, so that two workers
// reported together are judged together.
struct GangProgress {
  std::map<std::string, std::set<int>> succeeded;      // attempt id -> ranks succeeded now
  std::map<std::string, ev::JobWorkerFinished> rank0;  // attempt id -> rank 0's report now
  std::set<std::string> ended;                         // attempts ended by this poll
};

std::string MissingOutputs(const Run& run, const std::string& step, const Json& reported);

// Why the engine asked `a` to end, for its JobCancelled; "" when it did not.
std::string CancelReason(const Run& run, const Attempt& a) {
  if (run.cancel_requested) return "run cancelled";
  if (!a.stopped.empty()) return "stopped early: " + a.stopped;
  const std::string resized = "resized to " + std::to_string(a.resized_to) + " workers";
  if (a.resized_to > 0 && !a.preempted_by.empty())
    return resized + ": preempted by " + a.preempted_by;
  if (!a.preempted_by.empty()) return "preempted by " + a.preempted_by;
  if (a.resized_to > 0) return resized;
  return "";
}

// The report's log figures as the log records them, if it has any.
std::optional<ev::LogInfo> LogOf(const AttemptReport& report) {
  if (!report.log) return std::nullopt;
  return ev::LogInfo{.bytes = report.log->bytes,
                     .truncated = report.log->truncated,
                     .dropped_bytes = report.log->dropped_bytes};
}

// How an attempt ended without success, as the report tells it (reason: the
// report's, else `fallback`).
template <class T>
T EndOf(const AttemptReport& report, const std::string& step, int n, std::string fallback) {
  T e = Ended<T>(step, n, report.reason.value_or(std::move(fallback)));
  e.exit_code = report.exit_code;
  e.signal = report.signal;
  e.usage = report.usage;
  e.log = LogOf(report);
  return e;
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
  // A worker stopped before the master saw it start (kCancelled) still has its report
  // recorded, once.
  if (w.container != c.id || w.reported ||
      (IsTerminal(w.phase) && w.phase != AttemptPhase::kCancelled)) {
    return;
  }
  const std::string st(Name(report.state));
  const Json& usage = report.usage;
  if (w.phase == AttemptPhase::kAssigned && !IsTerminal(a->phase)) {
    out->push_back(RunEvent(
        *run, ev::JobStarted{.step = step, .attempt = n, .container = c.id, .rank = rank}, c.id));
  }
  ev::JobWorkerFinished rec{.step = step,
                            .attempt = n,
                            .rank = rank,
                            .state = st,
                            .reason = report.reason,
                            .exit_code = report.exit_code,
                            .signal = report.signal,
                            .usage = usage,
                            .log = LogOf(report)};
  if (rank == 0 && st == "succeeded") {  // rank 0 speaks for the attempt
    rec.metrics = report.metrics;
    rec.outputs = report.outputs;
    progress->rank0[attempt_id] = rec;
  }
  out->push_back(RunEvent(*run, rec, c.id));
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
      metrics = r0->second.metrics.value_or(Json());
      outputs = r0->second.outputs.value_or(Json());
    }
    if (!metrics.is_object()) metrics = Json::object();
    if (!outputs.is_array()) outputs = Json::array();
    std::string missing = MissingOutputs(*run, step, outputs);
    if (!missing.empty()) {
      auto failed = Ended<ev::JobFailed>(step, n, "missing_output: " + missing);
      failed.usage = usage;
      out->push_back(RunEvent(*run, failed, c.id));
      return;
    }
    out->push_back(RunEvent(*run,
                            ev::JobSucceeded{.step = step,
                                             .attempt = n,
                                             .exit_code = 0,
                                             .usage = usage,
                                             .metrics = metrics,
                                             .outputs = outputs,
                                             .workers = a->workers},
                            c.id));
    return;
  }
  // One worker's failure fails the attempt; the dispatcher stops the others.
  progress->ended.insert(attempt_id);
  std::string reason = "worker " + std::to_string(rank) + ": " + report.reason.value_or(st);
  auto end = [&]<class T>(T e) {
    e.usage = usage;
    out->push_back(RunEvent(*run, e, c.id));
  };
  if (std::string why = CancelReason(*run, *a); st == "cancelled" && !why.empty()) {
    end(Ended<ev::JobCancelled>(step, n, why));
  } else if (st == "timed_out") {
    end(Ended<ev::JobTimedOut>(step, n, reason));
  } else {
    end(Ended<ev::JobFailed>(step, n, reason));
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
    out->push_back(
        RunEvent(*run, ev::JobStarted{.step = step, .attempt = n, .container = c.id}, c.id));
  }
  const ReportedState st = report.state;
  if (st == ReportedState::kSucceeded) {
    // The agent could not read the outputs where they belong (the step replaced its
    // outputs folder): nothing it claims to have produced is taken. A declared output
    // the attempt did not write fails it too (retry policy applies).
    std::string missing = MissingOutputs(*run, step, report.outputs);
    if (report.outputs_error || !missing.empty()) {
      auto failed = EndOf<ev::JobFailed>(report, step, n, "");
      failed.reason = report.outputs_error ? "outputs_error: " + *report.outputs_error
                                           : "missing_output: " + missing;
      out->push_back(RunEvent(*run, failed, c.id));
      return;
    }
    out->push_back(RunEvent(*run,
                            ev::JobSucceeded{.step = step,
                                             .attempt = n,
                                             .exit_code = report.exit_code,
                                             .signal = report.signal,
                                             .usage = report.usage,
                                             .metrics = report.metrics,
                                             .outputs = report.outputs,
                                             .log = LogOf(report),
                                             .metrics_error = report.metrics_error},
                            c.id));
  } else if (st == ReportedState::kTimedOut) {
    out->push_back(RunEvent(*run, EndOf<ev::JobTimedOut>(report, step, n, "timeout"), c.id));
  } else if (st == ReportedState::kCancelled) {
    auto e = EndOf<ev::JobCancelled>(report, step, n,
                                     run->cancel_requested ? "run cancelled" : "cancelled");
    // The engine's reason for the cancel, not the agent's "cancelled (exit code 143)".
    if (std::string why = CancelReason(*run, *a); !run->cancel_requested && !why.empty()) {
      e.reason = why;
    }
    out->push_back(RunEvent(*run, e, c.id));
  } else {
    out->push_back(RunEvent(*run, EndOf<ev::JobFailed>(report, step, n, "failed"), c.id));
  }
}

// Early stopping (workflows/asha.h): each newly recorded point of a running trial of an
// asha/hyperband sweep (rank 0's series for a gang) that carries the resource and the
// objective's metric as numbers is judged at the highest rung of its bracket it has
// reached and not been judged at; each judgement is a TrialPromoted or TrialStopped.
// `poll` holds the judgements made earlier in the same poll (not yet in the state),
// keyed by run and step, so that two trials reporting in one poll see each other.
void JudgeTrial(const Run& run, const StepRun& sr, const Attempt& a, const ev::MetricsRecorded& m,
                const Container& c, std::map<std::string, std::vector<RungMark>>* poll,
                Decision* d) {
  const workflows::Step* def = run.def ? run.def->FindStep(sr.name) : nullptr;
  if (!def || !def->sweep || !def->sweep->stopping || a.trial < 0 || m.rank.value_or(0) != 0 ||
      IsTerminal(a.phase) || !a.stopped.empty() || IsTerminal(run.phase) || run.cancel_requested ||
      m.points.empty()) {
    return;
  }
  const workflows::Sweep& sweep = *def->sweep;
  const workflows::Asha& asha = *sweep.stopping;
  std::vector<RungMark>& mine = (*poll)[run.id + "/" + sr.name];
  std::vector<workflows::RungResult> recorded;
  for (const std::vector<RungMark>* marks :
       std::array<const std::vector<RungMark>*, 2>{&sr.rungs, &mine}) {
    for (const RungMark& r : *marks) {
      if (r.attempt < sr.round_start) continue;  // an earlier round's (RunRetryRequested)
      if (r.attempt == a.number && r.stopped) return;
      recorded.push_back({.trial = r.trial, .rung = r.rung, .value = r.value});
    }
  }
  for (size_t i = 0; i < m.points.size(); ++i) {
    const Json& p = m.points[i];
    if (!p.is_object()) continue;
    auto res = p.find(asha.resource);
    auto val = p.find(sweep.metric);
    if (res == p.end() || val == p.end() || !res->is_number() || !val->is_number()) continue;
    double progress = res->get<double>(), value = val->get<double>();
    if (!std::isfinite(progress) || !std::isfinite(value)) continue;
    workflows::RungJudgement j = workflows::JudgeAtRung(asha, sweep.metric, sweep.maximize,
                                                        recorded, a.trial, progress, value);
    if (!j.judged) continue;
    auto judgement = [&](auto e) {
      e.step = sr.name;
      e.attempt = a.number;
      e.trial = a.trial;
      e.bracket = workflows::BracketOf(asha, a.trial);
      e.rung = j.rung;
      e.milestone = j.milestone;
      e.resource = asha.resource;
      e.progress = progress;
      e.point = m.from + static_cast<int64_t>(i);
      e.metric = sweep.metric;
      e.value = value;
      e.cutoff = j.cutoff;
      e.compared = j.compared;
      e.reason = j.reason;
      return e;
    };
    recorded.push_back({.trial = a.trial, .rung = j.rung, .value = value});
    mine.push_back(RungMark{
        .attempt = a.number, .trial = a.trial, .rung = j.rung, .value = value, .stopped = j.stop});
    if (!j.stop) {
      d->events.push_back(RunEvent(run, judgement(ev::TrialPromoted{}), c.id));
      continue;
    }
    d->events.push_back(RunEvent(run, judgement(ev::TrialStopped{}), c.id));
    return;
  }
}

// One batch of live metrics: the points not yet recorded (a resend overlaps), up to
// the series' caps (what is over them is dropped, counted and marks the series
// truncated), as one MetricsRecorded; each checkpoint that is not already the step's
// latest as a CheckpointSaved. `next` carries each series' count across the batches
// of one poll; d->result.metrics_next tells the agent what is durable.
void MetricsEvents(const State& state, const Container& c, const MetricsBatch& b,
                   const DecideContext& ctx, std::map<std::pair<std::string, int>, int64_t>* next,
                   std::map<std::string, std::vector<RungMark>>* judged, Decision* d) {
  const EngineConfig& cfg = *ctx.config;
  std::string run_id, step;
  int n = 0, r = -1;
  std::optional<int> rank;
  if (ParseTaskId(b.attempt_id, &run_id, &step, &n, &r) && r >= 0) {
    rank = r;
  } else if (!ParseAttemptId(b.attempt_id, &run_id, &step, &n)) {
    return;
  }
  // The last batches of an attempt may come after its report ended the run and folded
  // it (archive.h): they are recorded against the folded run, which they unfold.
  std::optional<Run> folded;
  const Run* run = state.FindRun(run_id);
  if (!run && ctx.archive) {
    auto loaded = ctx.archive->Load(state, run_id);
    if (loaded.ok() && *loaded) run = &folded.emplace(std::move(**loaded));
  }
  if (!run) return;
  const StepRun* attempts = run->FindStep(step);
  if (!attempts || n < 1 || n > static_cast<int>(attempts->attempts.size())) return;
  const Attempt* a = &attempts->attempts[static_cast<size_t>(n) - 1];
  if (rank && *rank >= static_cast<int>(a->ranks.size())) return;
  std::pair<std::string, int> key{b.attempt_id, rank.value_or(0)};
  const MetricSeries* recorded = nullptr;
  if (auto it = a->series.find(rank.value_or(0)); it != a->series.end()) recorded = &it->second;
  int64_t have = recorded ? recorded->next : 0;
  if (auto it = next->find(key); it != next->end()) have = it->second;
  int64_t points = recorded ? recorded->points : 0;
  int64_t bytes = recorded ? recorded->bytes : 0;
  bool capped = recorded && recorded->capped;
  bool truncated = (recorded && recorded->truncated) || b.truncated;
  int64_t dropped = std::max(b.dropped, recorded ? recorded->dropped : 0);
  int64_t skipped = std::max(b.skipped, recorded ? recorded->skipped : 0);
  ev::MetricsRecorded m{.step = step, .attempt = n, .rank = rank, .from = have};
  // Points below `have` are recorded already (a resend); a batch starting past it
  // (points the master never saw) is answered with `have` and resent from there.
  if (b.from <= have) {
    for (int64_t i = have - b.from; i < static_cast<int64_t>(b.points.size()); ++i) {
      const Json& p = b.points[static_cast<size_t>(i)];
      int64_t size = static_cast<int64_t>(p.dump().size());
      // The agent holds to the same caps; these hold one that does not. Once they are
      // reached, every later point is dropped (and counted), so the recorded points
      // stay numbered without gaps.
      if (capped || points + 1 > cfg.metrics_max_points || bytes + size > cfg.metrics_max_bytes) {
        capped = truncated = true;
        ++dropped;
      } else {
        m.points.push_back(p);
        ++points;
        bytes += size;
      }
      ++have;
    }
    bool changed = have != m.from || truncated != (recorded && recorded->truncated) ||
                   dropped != (recorded ? recorded->dropped : 0) ||
                   skipped != (recorded ? recorded->skipped : 0);
    if (changed) {
      m.next = have;
      m.skipped = skipped;
      m.dropped = dropped;
      m.truncated = truncated;
      m.capped = capped;
      d->events.push_back(RunEvent(*run, m, c.id));
      JudgeTrial(*run, *attempts, *a, m, c, judged, d);
    }
  }
  (*next)[key] = have;
  d->result.metrics_next[b.attempt_id] = have;
  // Checkpoints: the latest of the step (the trial's, for a sweep) unless it is this one.
  const StepRun* sr = run->FindStep(step);
  int trial = a->trial;
  Json latest;
  if (sr) {
    if (auto it = sr->checkpoints.find(trial); it != sr->checkpoints.end()) latest = it->second;
  }
  for (const auto& cp : b.checkpoints) {
    if (latest.is_object() && latest.value("file", "") == cp.file &&
        latest.value("sha256", "") == cp.sha256) {
      continue;
    }
    ev::CheckpointSaved saved{.step = step,
                              .attempt = n,
                              .rank = rank,
                              .trial = trial >= 0 ? std::optional<int>(trial) : std::nullopt,
                              .file = cp.file,
                              .sha256 = cp.sha256,
                              .size = cp.size,
                              .epoch = cp.epoch};
    latest = fields::Encode(saved);
    d->events.push_back(RunEvent(*run, saved, c.id));
  }
}

}  // namespace

// The container an attempt (or a gang worker) was placed on: from the state, or from
// its run's record when the run is folded (its last metrics may come after the report
// that ended it); "" when there is no such attempt.
std::string HolderOf(const State& state, const DecideContext& ctx, const std::string& id) {
  const Attempt* ga = nullptr;
  if (const Worker* w = state.FindWorker(id, &ga)) return w->container;
  if (const Attempt* a = state.FindAttempt(id)) return a->container;
  std::string run_id, step;
  int n = 0, rank = -1;
  if (!ctx.archive || !ParseTaskId(id, &run_id, &step, &n, &rank) || state.FindRun(run_id)) {
    return "";
  }
  auto folded = ctx.archive->Load(state, run_id);
  if (!folded.ok() || !*folded) return "";
  const StepRun* sr = (*folded)->FindStep(step);
  if (!sr || n < 1 || n > static_cast<int>(sr->attempts.size())) return "";
  const Attempt& a = sr->attempts[static_cast<size_t>(n) - 1];
  if (rank < 0) return a.container;
  return rank < static_cast<int>(a.ranks.size()) ? a.ranks[static_cast<size_t>(rank)].container
                                                 : "";
}

Result<Decision> DecidePoll(const State& state, const PollContainer& cmd,
                            const DecideContext& ctx) {
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
  std::vector<std::string> named;
  for (const auto& r : cmd.reports) named.push_back(r.attempt_id);
  for (const auto& b : cmd.metrics) named.push_back(b.attempt_id);
  for (const auto& id : named) {
    if (HolderOf(state, ctx, id) != c.id) {
      return PermissionDenied(
          "container '" + c.id + "' reported on " +
          (id.empty() ? std::string("an attempt without an id") : "attempt '" + id + "'") +
          ", which is not assigned to it");
    }
  }
  Decision d;
  d.result.id = c.id;
  // Metrics first: they were written before the report that ends their attempt.
  std::map<std::pair<std::string, int>, int64_t> next;  // within this poll
  std::map<std::string, std::vector<RungMark>> judged;  // early stopping, within this poll
  for (const auto& b : cmd.metrics) MetricsEvents(state, c, b, ctx, &next, &judged, &d);
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
      d.events.push_back(RunEvent(
          *state.FindRun(run_id),
          ev::JobStarted{.step = step, .attempt = n, .container = c.id, .rank = rank}, c.id));
      continue;
    }
    const Attempt* a = state.FindAttempt(id);
    if (!a || a->phase != AttemptPhase::kAssigned || a->container != c.id) continue;
    std::string run_id, step;
    int n;
    ParseAttemptId(id, &run_id, &step, &n);
    d.events.push_back(RunEvent(*state.FindRun(run_id),
                                ev::JobStarted{.step = step, .attempt = n, .container = c.id},
                                c.id));
  }
  return d;
}

Result<Decision> DecideLaunchResult(const State& state, const ContainerLaunchResult& cmd) {
  auto it = state.containers.find(cmd.container);
  if (it == state.containers.end()) return NotFound("container '" + cmd.container + "'");
  Decision d;
  d.result.id = cmd.container;
  if (it->second.phase == ContainerPhase::kLost || it->second.phase == ContainerPhase::kReleased) {
    return d;
  }
  if (cmd.ok) {
    d.events.push_back(
        ev::MakeEvent(ContainerStream(cmd.container),
                      ev::ContainerLaunched{.container = cmd.container, .handle = cmd.handle}));
  } else if (cmd.unschedulable) {
    d.events.push_back(ev::MakeEvent(
        ContainerStream(cmd.container),
        ev::ContainerLost{
            .container = cmd.container,
            .reason = "launch failed: " + std::string(kUnschedulable) + ": " + cmd.error,
            .unschedulable = true}));
    FailUnschedulable(state, cmd.error, &d.events);
  } else {
    d.events.push_back(ev::MakeEvent(
        ContainerStream(cmd.container),
        ev::ContainerLost{.container = cmd.container, .reason = "launch failed: " + cmd.error}));
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
  out->push_back(
      ev::MakeEvent(ContainerStream(c.id), ev::ContainerLost{.container = c.id, .reason = reason}));
  std::set<std::string> failed;
  for (const auto& id : c.attempts) {
    std::string run_id, step;
    int n, rank;
    if (!ParseTaskId(id, &run_id, &step, &n, &rank)) continue;
    const Run* run = state.FindRun(run_id);
    if (!run) continue;
    if (rank >= 0) {
      out->push_back(RunEvent(*run, ev::JobWorkerFinished{.step = step,
                                                          .attempt = n,
                                                          .rank = rank,
                                                          .state = "lost",
                                                          .reason = "container_lost"}));
      const Attempt* a = state.FindAttempt(AttemptId(run_id, step, n));
      if (!a || IsTerminal(a->phase) || !failed.insert(AttemptId(run_id, step, n)).second) {
        continue;
      }
    }
    auto failed = Ended<ev::JobFailed>(step, n, "container_lost");
    failed.detail = "container " + c.id + ": " + reason;
    out->push_back(RunEvent(*run, failed));
  }
}

}  // namespace epoch::engine
