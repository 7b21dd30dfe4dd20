// Readable projections of State, shared by the API and by replay tests.
#include "engine/engine.h"

#include <algorithm>
#include <cstdio>
#include <map>
#include <optional>
#include <tuple>

namespace epoch::engine {

namespace {

// An attempt's live-metrics series as recorded (the points are in the log; GET
// .../metrics serves them): [{"rank", "points", "bytes", "skipped", "dropped",
// "truncated"}].
Json SeriesJson(const Attempt& a) {
  Json out = Json::array();
  for (const auto& [rank, m] : a.series) {
    out.push_back(Json{{"rank", rank},
                       {"points", m.points},
                       {"bytes", m.bytes},
                       {"skipped", m.skipped},
                       {"dropped", m.dropped},
                       {"truncated", m.truncated}});
  }
  return out;
}

Json OptTime(const std::optional<TimePoint>& t) { return t ? Json(FormatTime(*t)) : Json(); }
Json TimeOrNull(TimePoint t) { return t == TimePoint{} ? Json() : Json(FormatTime(t)); }
}  // namespace

Json AttemptLimitsJson(const Attempt& a, const workflows::Step* def) {
  return Json{{"cpu_millis", def && def->resources.cpu_declared ? Json(a.resources.cpu_millis) : Json()},
              {"memory_bytes",
               def && def->resources.memory_declared ? Json(a.resources.memory_bytes) : Json()}};
}

namespace {
// Files retention deleted (retention.h): {"at", "bytes"}.
Json ExpiryJson(const Expiry& x) { return Json{{"at", FormatTime(x.at)}, {"bytes", x.bytes}}; }
}  // namespace

Json RunToJson(const Run& run, const EngineConfig& config, const State* state) {
  // GPUs the run's tenant holds, computed once and only when a quota applies.
  std::optional<int> tenant_held;
  bool quota = state && config.tenant_max_gpus.count(run.tenant) && !IsTerminal(run.phase) &&
               !run.cancel_requested;
  auto wait_reason = [&](const Attempt& a) -> std::string {
    if (!quota || a.phase != AttemptPhase::kQueued || !a.reason.empty()) return a.reason;
    if (!tenant_held) {
      auto held = TenantGpusHeld(*state);
      auto it = held.find(run.tenant);
      tenant_held = it == held.end() ? 0 : it->second;
    }
    return QuotaWaitReason(config, run.tenant, *tenant_held, a);
  };
  Json steps = Json::array();
  for (size_t i = 0; i < run.steps.size(); ++i) {
    const StepRun& s = run.steps[i];
    const workflows::Step* def = run.def && i < run.def->steps.size() ? &run.def->steps[i] : nullptr;
    Json attempts = Json::array();
    for (const auto& a : s.attempts) {
      attempts.push_back(Json{
          {"attempt", a.number},
          {"state", Name(a.phase)},
          {"container", a.container.empty() ? Json() : Json(a.container)},
          {"gpus", a.gpus},
          {"gpu_uuids", a.gpu_uuids},
          {"exit_code", a.exit_code ? Json(*a.exit_code) : Json()},
          {"signal", a.signal ? Json(*a.signal) : Json()},
          {"reason", [&] {
             std::string why = wait_reason(a);
             return why.empty() ? Json() : Json(why);
           }()},
          {"queued_at", TimeOrNull(a.queued_at)},
          {"started_at", TimeOrNull(a.started_at)},
          {"finished_at", TimeOrNull(a.finished_at)},
          {"usage", a.usage},
          // What was reserved; `limits`: what the kernel enforced (declared only).
          {"resources",
           {{"cpu_millis", a.resources.cpu_millis},
            {"memory_bytes", a.resources.memory_bytes},
            {"gpus", a.resources.gpus},
            {"limits", AttemptLimitsJson(a, def)}}},
          {"argv", a.argv}});
      if (!a.log.empty()) attempts.back()["log"] = a.log;
      if (!a.cache_key.empty()) attempts.back()["cache_key"] = a.cache_key;
      if (!a.cached_from.empty()) attempts.back()["cached_from"] = a.cached_from;
      if (!a.resumed_from.is_null()) attempts.back()["resumed_from"] = a.resumed_from;
      if (a.outputs_expired) attempts.back()["outputs_expired"] = ExpiryJson(a.outputs_expired);
      if (a.logs_expired) attempts.back()["log_expired"] = ExpiryJson(a.logs_expired);
      if (!a.series.empty()) attempts.back()["live_metrics"] = SeriesJson(a);
      if (!a.preempted_by.empty()) attempts.back()["preempted_by"] = a.preempted_by;
      if (a.trial >= 0) {
        attempts.back()["trial"] = a.trial;
        attempts.back()["params"] = a.trial_params;
        attempts.back()["metrics"] = a.metrics.is_null() ? Json::object() : a.metrics;
        attempts.back()["outputs"] = a.outputs.is_null() ? Json::array() : a.outputs;
        if (def && def->sweep && def->sweep->stopping) {
          // Early stopping: where the trial stands on its bracket's rungs.
          const workflows::Asha& asha = *def->sweep->stopping;
          int bracket = workflows::BracketOf(asha, a.trial);
          std::vector<double> milestones = workflows::Rungs(asha, bracket);
          Json rungs = Json::array();
          int highest = -1;
          for (const RungMark& r : s.rungs) {
            if (r.attempt != a.number) continue;
            highest = std::max(highest, r.rung);
            Json mark{{"rung", r.rung},
                      {"value", r.value},
                      {"decision", r.stopped ? "stopped" : "promoted"}};
            if (r.rung >= 0 && r.rung < static_cast<int>(milestones.size())) {
              mark[asha.resource] = milestones[static_cast<size_t>(r.rung)];
            }
            rungs.push_back(std::move(mark));
          }
          attempts.back()["bracket"] = bracket;
          attempts.back()["rung"] = highest < 0 ? Json() : Json(highest);
          attempts.back()["rungs"] = std::move(rungs);
        }
        if (!a.stopped.empty()) attempts.back()["stopped"] = a.stopped;
      }
      if (a.workers > 1 || a.workers_max > 0) {
        Json workers = Json::array();
        for (const auto& w : a.ranks) {
          workers.push_back(Json{{"rank", w.rank},
                                 {"local_rank", w.local_rank},
                                 {"state", Name(w.phase)},
                                 {"container", w.container},
                                 {"gpus", w.gpus},
                                 {"gpu_uuids", w.gpu_uuids},
                                 {"exit_code", w.exit_code ? Json(*w.exit_code) : Json()},
                                 {"signal", w.signal ? Json(*w.signal) : Json()},
                                 {"reason", w.reason.empty() ? Json() : Json(w.reason)},
                                 {"started_at", TimeOrNull(w.started_at)},
                                 {"finished_at", TimeOrNull(w.finished_at)},
                                 {"usage", w.usage}});
        }
        attempts.back()["workers"] = workers;
        attempts.back()["world_size"] = a.workers;
        if (a.workers_max > 0) {
          attempts.back()["elastic"] = Json{{"min", a.workers_min}, {"max", a.workers_max}};
          if (a.workers_cap > 0) attempts.back()["elastic"]["cap"] = a.workers_cap;
        }
        if (a.resized_to > 0) attempts.back()["resized_to"] = a.resized_to;
        attempts.back()["master_addr"] = a.master_addr;
        attempts.back()["master_port"] = a.master_port;
      }
    }
    Json step{{"name", s.name},
              {"kind", def ? std::string(workflows::StepKindName(def->kind)) : "task"},
              {"state", Name(s.phase)},
              {"attempts", attempts},
              {"metrics", s.metrics},
              {"outputs", s.outputs}};
    if (!s.reason.empty()) step["reason"] = s.reason;
    if (!s.best.is_null()) step["best"] = s.best;
    if (!s.checkpoints.empty()) {
      Json checkpoints = Json::object();
      for (const auto& [trial, c] : s.checkpoints) {
        checkpoints[trial < 0 ? std::string("step") : "trial-" + std::to_string(trial)] = c;
      }
      step["checkpoints"] = std::move(checkpoints);
    }
    if (s.checkpoints_expired) step["checkpoints_expired"] = ExpiryJson(s.checkpoints_expired);
    if (s.retry_at) step["retry_at"] = FormatTime(*s.retry_at);
    steps.push_back(std::move(step));
  }
  Json j{{"id", run.id},
         {"workflow", run.workflow},
         {"version", run.version},
         {"digest", run.digest},
         {"tenant", run.tenant},
         {"submitter", run.submitter},
         {"state", Name(run.phase)},
         {"params", run.params},
         {"labels", run.labels},
         {"priority", run.priority},
         {"submitted_at", FormatTime(run.submitted_at)},
         {"started_at", OptTime(run.started_at)},
         {"finished_at", OptTime(run.finished_at)},
         {"steps", steps}};
  if (run.cancel_requested && !IsTerminal(run.phase)) j["cancel_requested"] = true;
  if (!run.reason.empty()) j["reason"] = run.reason;
  if (!run.failed_step.empty()) j["failed_step"] = run.failed_step;
  return j;
}

Json ContainerToJson(const Container& c) {
  Json attempts = Json::array();
  for (const auto& a : c.attempts) attempts.push_back(a);
  Json j{{"id", c.id},
              {"state", Name(c.phase)},
              {"backend", c.backend},
              {"handle", c.handle},
              {"host", c.host},
              {"pid", c.pid},
              {"cpu_millis", c.cpu_millis},
              {"memory_bytes", c.memory_bytes},
              {"gpus", c.gpus},
              {"cuda", c.cuda},
              {"requested_gpus", c.requested_gpus},
              {"request_reason", c.request_reason},
              {"idle_since", c.attempts.empty() && c.phase == ContainerPhase::kRegistered
                                 ? Json(FormatTime(c.idle_since))
                                 : Json()},
              {"used_cpu_millis", c.used_cpu},
              {"used_memory_bytes", c.used_memory},
              {"attempts", attempts},
              {"reason", c.reason.empty() ? Json() : Json(c.reason)},
              {"requested_at", FormatTime(c.requested_at)},
              {"registered_at", OptTime(c.registered_at)},
              {"ended_at", OptTime(c.ended_at)}};
  // Only once the agent has said (golden histories predate it).
  if (!c.isolation.empty()) j["isolation"] = c.isolation;
  if (!c.enforcement.empty()) j["enforcement"] = c.enforcement;
  return j;
}

Json StateDigestJson(const State& s) {
  EngineConfig cfg;
  Json runs = Json::object();
  for (const auto& [id, r] : s.runs) runs[id] = RunToJson(r, cfg);
  Json containers = Json::object();
  for (const auto& [id, c] : s.containers) containers[id] = ContainerToJson(c);
  Json workflows = Json::object();
  for (const auto& [name, versions] : s.workflows) {
    Json vs = Json::array();
    for (const auto& v : versions) vs.push_back(Json{{"version", v.version}, {"digest", v.digest}});
    workflows[name] = vs;
  }
  Json queue = Json::array();
  for (const auto& [k, id] : s.queue) queue.push_back(id);
  Json timers = Json::array();
  for (const auto& [t, id] : s.retry_timers) timers.push_back(FormatTime(t) + " " + id);
  Json j{{"head", s.head},         {"epoch", s.epoch},       {"runs", runs},
         {"containers", containers}, {"workflows", workflows}, {"queue", queue},
         {"retry_timers", timers}};
  // Only when there is one, so that histories without caching keep their digest.
  if (!s.cache.empty()) {
    Json cache = Json::object();
    for (const auto& [key, e] : s.cache) cache[key] = CacheEntryToJson(key, e);
    j["cache"] = std::move(cache);
  }
  return j;
}

Json CacheEntryToJson(const std::string& key, const CacheEntry& e) {
  Json j{{"key", key},
         {"tenant", e.tenant},
         {"workflow", e.workflow},
         {"run", e.run},
         {"step", e.step},
         {"attempt", e.attempt},
         {"created_at", FormatTime(e.created_at)},
         {"outputs", e.outputs},
         {"metrics", e.metrics}};
  // Only once retention deleted its outputs (goldens written before keep their JSON).
  if (e.expired_at != TimePoint{}) j["expired_at"] = FormatTime(e.expired_at);
  return j;
}

Json ArtifactToJson(const std::string& name, const ArtifactVersion& v, bool model) {
  Json j{{"name", name},
         {"version", v.version},
         {"digest", v.digest},
         {"run", v.run},
         {"step", v.step},
         {"attempt", v.attempt},
         {"outputs", v.outputs},
         {"registered_at", FormatTime(v.registered_at)}};
  // Where the files are when that is not the attempt's own folder (a cache hit).
  if (!v.files_at.empty() && v.files_at != AttemptId(v.run, v.step, v.attempt)) {
    j["files_at"] = v.files_at;
  }
  if (model) {
    j["workflow"] = v.workflow;
    j["workflow_version"] = v.workflow_version;
    j["params"] = v.params;
    j["datasets"] = v.datasets;
    j["metrics"] = v.metrics;
    j["validated_by"] = v.validated_by;
  }
  return j;
}

namespace {

std::string JoinJson(const Json& list) {
  std::string out;
  if (!list.is_array()) return out;
  for (const auto& x : list) {
    if (!out.empty()) out += ",";
    out += x.is_string() ? x.get<std::string>() : x.dump();
  }
  return out;
}

std::string StepAttempt(const Json& d) {
  std::string s = "step " + d.value("step", "?");
  if (d.contains("attempt")) s += " attempt " + d["attempt"].dump();
  if (d.contains("rank")) s += " rank " + d["rank"].dump();
  return s;
}

std::string Usage(const Json& d) {
  const Json& u = d.contains("usage") && d["usage"].is_object() ? d["usage"] : Json::object();
  if (!u.contains("wall_s") || !u["wall_s"].is_number()) return "";
  char buf[48];
  std::snprintf(buf, sizeof(buf), " after %.2fs", u["wall_s"].get<double>());
  return buf;
}

}  // namespace

std::string DescribeRunEvent(const std::string& type, const Json& d, const std::string& actor) {
  if (type == ev::kRunSubmitted) {
    return "run submitted by " + actor + ": " + d.value("workflow", "?") + "@" +
           std::to_string(d.value("version", 0)) + " params " + d.value("params", Json::object()).dump() +
           (d.value("idempotency_key", "").empty() ? "" : " (idempotency key " + d.value("idempotency_key", "") + ")");
  }
  if (type == ev::kStepReady) return "step " + d.value("step", "?") + " ready";
  if (type == ev::kStepSkipped) return "step " + d.value("step", "?") + " skipped: " + d.value("reason", "");
  if (type == ev::kJobQueued) {
    std::string s = StepAttempt(d) + " queued";
    if (d.contains("trial")) s += " (trial " + d["trial"].dump() + " " + d.value("params", Json::object()).dump() + ")";
    if (d.contains("cache") && d["cache"].contains("miss")) s += " (cache miss: " + d["cache"].value("miss", "") + ")";
    return s;
  }
  if (type == ev::kJobCacheHit) {
    return StepAttempt(d) + " reused " + d.value("source_run", "?") + "/" + d.value("source_step", "?") + "/" +
           std::to_string(d.value("source_attempt", 0)) + " from the cache";
  }
  if (type == ev::kJobAssigned) {
    if (d.contains("placements")) {
      std::string s = StepAttempt(d) + " placed as a gang:";
      for (const auto& p : d["placements"]) {
        s += " rank " + p.value("rank", Json(0)).dump() + " on " + p.value("container", "?");
        std::string g = JoinJson(p.value("gpus", Json::array()));
        if (!g.empty()) s += " (GPUs " + g + ")";
      }
      return s;
    }
    std::string g = JoinJson(d.value("gpus", Json::array()));
    return StepAttempt(d) + " assigned to " + d.value("container", "?") + (g.empty() ? "" : " (GPUs " + g + ")");
  }
  if (type == ev::kJobStarted) return StepAttempt(d) + " started on " + d.value("container", "?");
  if (type == ev::kJobSucceeded) {
    std::string s = StepAttempt(d) + " succeeded" + Usage(d);
    Json metrics = d.value("metrics", Json::object());
    if (metrics.is_object() && !metrics.empty()) {
      std::string m;
      for (const auto& [k, v] : metrics.items()) {
        if (!v.is_number()) continue;
        m += (m.empty() ? "" : " ") + k + "=" + v.dump();
      }
      if (!m.empty()) s += ": " + m;
    }
    return s;
  }
  if (type == ev::kJobFailed) {
    std::string s = StepAttempt(d) + " failed" + Usage(d);
    if (d.contains("exit_code") && !d["exit_code"].is_null()) s += " (exit " + d["exit_code"].dump() + ")";
    return s + ": " + d.value("reason", "failed");
  }
  if (type == ev::kJobTimedOut) return StepAttempt(d) + " timed out" + Usage(d);
  if (type == ev::kJobCancelled) return StepAttempt(d) + " cancelled: " + d.value("reason", "");
  if (type == ev::kJobWorkerFinished) {
    std::string s = StepAttempt(d) + " worker " + d.value("state", "?");
    if (d.contains("exit_code") && !d["exit_code"].is_null()) s += " (exit " + d["exit_code"].dump() + ")";
    return s;
  }
  if (type == ev::kJobRetryScheduled) {
    return "step " + d.value("step", "?") + " attempt " + d.value("attempt", Json(0)).dump() + " scheduled for " +
           d.value("not_before", "?") + " after: " + d.value("after_reason", "");
  }
  if (type == ev::kMetricsRecorded) {
    std::string s = StepAttempt(d) + " recorded " +
                    std::to_string(d.value("points", Json::array()).size()) + " metric points";
    if (d.value("truncated", false)) s += " (series truncated at its cap)";
    return s;
  }
  if (type == ev::kCheckpointSaved) {
    std::string s = StepAttempt(d) + " saved checkpoint " + d.value("file", "?");
    if (d.contains("epoch") && !d["epoch"].is_null()) s += " (epoch " + d["epoch"].dump() + ")";
    return s;
  }
  if (type == ev::kStepSweepCompleted) {
    if (d.contains("best_trial") && !d["best_trial"].is_null()) {
      return "step " + d.value("step", "?") + " sweep done: best trial " + d["best_trial"].dump() +
             " " + d.value("best_params", Json::object()).dump() + " " + d.value("metric", "") +
             "=" + d.value("best_value", Json()).dump() + " (" + d.value("failed", Json(0)).dump() +
             " of " + d.value("trials", Json(0)).dump() + " failed" +
             (d.contains("stopped") ? ", " + d["stopped"].dump() + " stopped early" : "") + ")";
    }
    return "step " + d.value("step", "?") + " sweep failed: " + d.value("reason", "");
  }
  if (type == ev::kJobPreempted) return StepAttempt(d) + " " + d.value("reason", "preempted");
  if (type == ev::kGangResized) {
    return StepAttempt(d) + " gang resized to " + d.value("world_size", Json(0)).dump() + ": " +
           d.value("reason", "");
  }
  if (type == ev::kTrialPromoted || type == ev::kTrialStopped) {
    return StepAttempt(d) + " trial " + d.value("trial", Json(0)).dump() +
           (type == ev::kTrialStopped ? " stopped at " : " promoted at ") + d.value("reason", "");
  }
  if (type == ev::kDatasetVersionRegistered || type == ev::kModelVersionRegistered) {
    bool model = type == ev::kModelVersionRegistered;
    return std::string(model ? "model " : "data set ") + d.value("name", "?") + " version " +
           d.value("version", Json(0)).dump() + " registered from step " + d.value("step", "?");
  }
  if (type == ev::kModelVersionValidated) {
    return "model " + d.value("name", "?") + " version " + d.value("version", Json(0)).dump() +
           " validated by step " + d.value("step", "?");
  }
  if (type == ev::kRunCancelRequested) return "cancel requested by " + d.value("by", actor);
  if (type == ev::kRunRetryRequested) {
    return "retry requested by " + d.value("by", actor) + " for steps " + JoinJson(d.value("steps", Json::array()));
  }
  if (type == ev::kRunSucceeded) return "run succeeded";
  if (type == ev::kRunFailed) return "run failed: " + d.value("reason", "");
  if (type == ev::kRunCancelled) return "run cancelled";
  return "";
}

namespace {

bool RunMatches(const Run& r, const RunQuery& q) {
  if (q.visible && !q.visible(r.tenant)) return false;
  if (!q.state.empty() && Name(r.phase) != q.state) return false;
  if (!q.workflow.empty() && r.workflow != q.workflow) return false;
  for (const auto& [k, v] : q.labels) {
    auto l = r.labels.find(k);
    if (l == r.labels.end() || !l->is_string() || l->get<std::string>() != v) return false;
  }
  return true;
}

// The folded runs a query can match, newest first, a batch at a time from the most
// selective index it names.
class FoldedCursor {
 public:
  FoldedCursor(const State& s, const RunArchive* archive, const RunQuery& q) : s_(s), a_(archive) {
    if (!a_) return;
    if (!q.labels.empty()) {
      index_ = RunArchive::IndexLabel(q.labels.front().first, q.labels.front().second);
    } else if (!q.workflow.empty()) {
      index_ = RunArchive::IndexWorkflow(q.workflow);
    } else if (!q.state.empty()) {
      index_ = RunArchive::IndexPhase(q.state);
    } else {
      index_ = RunArchive::IndexAll();
    }
    below_ = q.cursor;
  }
  // The next folded run's seq (0: none left).
  Result<uint64_t> Peek() {
    if (!a_ || done_) return uint64_t{0};
    if (next_ == batch_.size()) {
      ASSIGN_OR_RETURN(batch_, a_->Scan(index_, below_, kBatch));
      next_ = 0;
      if (batch_.empty()) {
        done_ = true;
        return uint64_t{0};
      }
      below_ = batch_.back().first;
      if (batch_.size() < kBatch) below_ = 1;  // nothing older is left after this batch
    }
    return batch_[next_].first;
  }
  Result<std::optional<Run>> Take() {
    const auto& [seq, id] = batch_[next_++];
    if (next_ == batch_.size() && below_ == 1) done_ = true;
    // A run the store folded after s's head is still open in s (listed from there) or
    // not yet submitted; either way its records past the head are not s's.
    if (s_.runs.contains(id)) return std::optional<Run>();
    return a_->Load(s_, id, s_.head + 1);
  }

 private:
  static constexpr size_t kBatch = 128;
  const State& s_;
  const RunArchive* a_;
  std::string index_;
  uint64_t below_ = 0;
  std::vector<std::pair<uint64_t, std::string>> batch_;
  size_t next_ = 0;
  bool done_ = false;
};

}  // namespace

Result<RunPage> ListRuns(const State& s, const EngineConfig& config, const RunQuery& q,
                         const RunArchive* archive) {
  RunPage page;
  auto it = q.cursor > 0 ? s.runs_by_seq.lower_bound(q.cursor) : s.runs_by_seq.end();
  FoldedCursor folded(s, archive, q);
  while (true) {
    uint64_t open_seq = it == s.runs_by_seq.begin() ? 0 : std::prev(it)->first;
    ASSIGN_OR_RETURN(uint64_t folded_seq, folded.Peek());
    if (open_seq == 0 && folded_seq == 0) break;
    std::optional<Run> loaded;
    const Run* r = nullptr;
    uint64_t seq = 0;
    if (open_seq > folded_seq) {
      --it;
      seq = it->first;
      r = &s.runs.at(it->second);
    } else {
      seq = folded_seq;
      ASSIGN_OR_RETURN(loaded, folded.Take());
      if (!loaded) continue;  // open in s, or folded after its head
      r = &*loaded;
    }
    if (!RunMatches(*r, q)) continue;
    if (page.items.size() == q.limit) {
      page.next_cursor = std::to_string(seq + 1);
      break;
    }
    page.items.push_back(RunToJson(*r, config, &s));
  }
  return page;
}

RunPage ListRuns(const State& s, const EngineConfig& config, const RunQuery& q) {
  auto page = ListRuns(s, config, q, nullptr);  // without an archive nothing fails
  return page.ok() ? std::move(*page) : RunPage{};
}

std::string WorkflowTenant(const State& s, const std::string& name) {
  auto it = s.workflows.find(name);
  return it == s.workflows.end() || it->second.empty() ? "" : it->second.front().tenant;
}

Json ListWorkflows(const State& s, const TenantFilter& visible) {
  Json items = Json::array();
  for (const auto& [name, versions] : s.workflows) {
    if (versions.empty() || (visible && !visible(versions.front().tenant))) continue;
    const auto& v = versions.back();
    items.push_back(Json{{"name", name},
                         {"version", v.version},
                         {"digest", v.digest},
                         {"versions", versions.size()},
                         {"steps", v.def->steps.size()},
                         {"tenant", versions.front().tenant},
                         {"registered_at", FormatTime(v.registered_at)}});
  }
  return items;
}

Json WorkflowVersionJson(const State& s, const std::string& name, int version,
                         const TenantFilter& visible) {
  const WorkflowVersion* v = s.FindWorkflow(name, version);
  std::string tenant = WorkflowTenant(s, name);
  if (!v || (visible && !visible(tenant))) return Json();
  return Json{{"name", name},
              {"version", v->version},
              {"digest", v->digest},
              {"definition", v->def->source},
              {"registered_at", FormatTime(v->registered_at)},
              {"registered_by", v->actor},
              {"tenant", tenant},
              {"versions", s.workflows.at(name).size()}};
}

Result<std::optional<ArtifactVersion>> ArtifactVersionOf(const State& s, const RunArchive* archive,
                                                         bool model, const std::string& key,
                                                         int version) {
  const auto& all = model ? s.models : s.datasets;
  auto it = all.find(key);
  if (it == all.end() || version < 1 || version > it->second.count) {
    return std::optional<ArtifactVersion>();
  }
  if (const ArtifactVersion* v = it->second.Find(version)) return std::optional(*v);
  if (!archive) return std::optional<ArtifactVersion>();
  // As of s (a standby that lags must not show what it has not applied).
  return archive->LoadVersion(model, key, version, s.head + 1);
}

Result<Json> ListArtifacts(const State& s, bool models, const TenantFilter& visible,
                           const std::string& only_tenant, const RunArchive* archive) {
  Json items = Json::array();
  for (const auto& [key, a] : models ? s.models : s.datasets) {
    auto [tenant, name] = SplitArtifactKey(key);
    if (a.count == 0 || (visible && !visible(tenant))) continue;
    if (!only_tenant.empty() && tenant != only_tenant) continue;
    ASSIGN_OR_RETURN(std::optional<ArtifactVersion> v,
                     ArtifactVersionOf(s, archive, models, key, a.count));
    if (!v) continue;
    Json latest = ArtifactToJson(name, *v, models);
    latest["tenant"] = tenant;
    latest["versions"] = a.count;
    items.push_back(std::move(latest));
  }
  return items;
}

Result<ArtifactLookup> FindArtifact(const State& s, bool model, const std::string& name,
                                    int version, std::string tenant,
                                    const std::string& caller_tenant, const TenantFilter& visible,
                                    const RunArchive* archive, int after, int limit) {
  ArtifactLookup out;
  const auto& named = model ? s.models : s.datasets;
  if (tenant.empty() && named.count(ArtifactKey(caller_tenant, name))) tenant = caller_tenant;
  if (tenant.empty() && !visible) {
    for (const auto& [key, a] : named) {
      auto [t, n] = SplitArtifactKey(key);
      if (n == name) out.owners.push_back(t);
    }
    if (out.owners.size() != 1) return out;
    tenant = out.owners.front();
    out.owners.clear();
  }
  if (tenant.empty() || (visible && !visible(tenant))) return out;
  const std::string key = ArtifactKey(tenant, name);
  auto it = named.find(key);
  if (it == named.end() || it->second.count == 0) return out;
  if (version > it->second.count) return out;
  if (version > 0) {
    ASSIGN_OR_RETURN(std::optional<ArtifactVersion> v,
                     ArtifactVersionOf(s, archive, model, key, version));
    if (!v) return out;
    out.item = ArtifactToJson(name, *v, model);
    out.item["tenant"] = tenant;
    return out;
  }
  Json versions = Json::array();
  const int count = it->second.count;
  const int from = std::max(after, 0);
  const int last = static_cast<int>(std::min<int64_t>(count, int64_t{from} + limit));
  for (int n = from + 1; n <= last; ++n) {
    ASSIGN_OR_RETURN(std::optional<ArtifactVersion> v,
                     ArtifactVersionOf(s, archive, model, key, n));
    if (v) versions.push_back(ArtifactToJson(name, *v, model));
  }
  out.item = Json{{"name", name},
                  {"tenant", tenant},
                  {"versions", versions},
                  {"count", count},
                  {"next_cursor", last < count ? Json(std::to_string(last)) : Json()}};
  return out;
}

Json RunJson(const State& s, const EngineConfig& config, const Run* r,
             const TenantFilter& visible) {
  if (!r || (visible && !visible(r->tenant))) return Json();
  return RunToJson(*r, config, &s);
}
Json RunJson(const State& s, const EngineConfig& config, const std::string& id,
             const TenantFilter& visible) {
  return RunJson(s, config, s.FindRun(id), visible);
}

bool RunVisible(const Run* r, const TenantFilter& visible) {
  return r && (!visible || visible(r->tenant));
}
bool RunVisible(const State& s, const std::string& id, const TenantFilter& visible) {
  return RunVisible(s.FindRun(id), visible);
}

bool RunEnded(const Run* r) { return !r || IsTerminal(r->phase); }
bool RunEnded(const State& s, const std::string& id) { return RunEnded(s.FindRun(id)); }

bool AttemptEnded(const Run* r, const std::string& attempt_id) {
  std::string run, step;
  int number = 0, rank = -1;
  if (!r || !ParseTaskId(attempt_id, &run, &step, &number, &rank) || run != r->id) return true;
  const StepRun* sr = r->FindStep(step);
  if (!sr || number < 1 || number > static_cast<int>(sr->attempts.size())) return true;
  return IsTerminal(sr->attempts[static_cast<size_t>(number) - 1].phase);
}
bool AttemptEnded(const State& s, const std::string& attempt_id) {
  const Attempt* a = s.FindAttempt(attempt_id);
  return !a || IsTerminal(a->phase);
}

Result<int> LogAttempt(const State& s, const std::string& run, const std::string& step, int attempt,
                       const TenantFilter& visible) {
  return LogAttempt(s.FindRun(run), run, step, attempt, visible);
}
Result<int> LogAttempt(const Run* r, const std::string& run, const std::string& step, int attempt,
                       const TenantFilter& visible) {
  if (!r || (visible && !visible(r->tenant))) return NotFound("run '" + run + "' not found");
  const StepRun* st = r->FindStep(step);
  if (!st) return NotFound("run '" + run + "' has no step '" + step + "'");
  if (st->attempts.empty()) return NotFound("step '" + step + "' has not run yet");
  int n = attempt ? attempt : st->attempts.back().number;
  if (n > static_cast<int>(st->attempts.size())) {
    return NotFound("step '" + step + "' has no attempt " + std::to_string(n));
  }
  return n;
}

bool EventVisible(const State& s, const std::string& stream, const TenantFilter& visible,
                  const std::string& only_tenant) {
  const Run* run =
      stream.rfind("run-", 0) == 0 ? s.FindRun(std::string_view(stream).substr(4)) : nullptr;
  return EventVisible(s, stream, visible, only_tenant, run);
}
bool EventVisible(const State& s, const std::string& stream, const TenantFilter& visible,
                  const std::string& only_tenant, const Run* run) {
  if (!visible && only_tenant.empty()) return true;
  auto sees = [&](const std::string& t) {
    return (!visible || visible(t)) && (only_tenant.empty() || t == only_tenant);
  };
  if (stream.rfind("run-", 0) == 0) return run && sees(run->tenant);
  if (stream.rfind("workflow-", 0) == 0) {
    std::string owner = WorkflowTenant(s, stream.substr(9));
    return !owner.empty() && sees(owner);
  }
  return false;
}

Json ContainersJson(const State& s, bool all, const TenantFilter& visible,
                    const std::map<std::string, ContainerDescription>& watched) {
  Json items = Json::array();
  for (const auto& [id, c] : s.containers) {
    if (!all && (c.phase == ContainerPhase::kLost || c.phase == ContainerPhase::kReleased)) {
      continue;
    }
    Json j = ContainerToJson(c);
    // The backend's own view (a Slurm job's state), when it is watched.
    if (auto w = watched.find(id); w != watched.end()) {
      j["backend_state"] = w->second.backend_state;
      j["backend_detail"] = w->second.detail;
    }
    if (visible) {
      // What runs where, only for the caller's tenant's attempts.
      Json mine = Json::array();
      for (const auto& a : j["attempts"]) {
        std::string run, step;
        int n;
        if (ParseAttemptId(a.get<std::string>(), &run, &step, &n) && RunVisible(s, run, visible)) {
          mine.push_back(a);
        }
      }
      j["attempts"] = std::move(mine);
    }
    items.push_back(std::move(j));
  }
  return items;
}

PollStanding ContainerPollStanding(const State& s, const std::string& container,
                                   const std::vector<std::string>& running) {
  PollStanding out;
  auto it = s.containers.find(container);
  if (it == s.containers.end() || it->second.phase == ContainerPhase::kRequested) {
    out.problem = "unknown_container";
    return out;
  }
  if (it->second.phase != ContainerPhase::kRegistered) {
    out.problem = "released";
    return out;
  }
  for (const auto& id : running) {
    const Attempt* a = s.FindAttempt(id);
    if (a && a->phase == AttemptPhase::kAssigned) out.assigned = true;
    const Worker* w = s.FindWorker(id);
    if (w && w->phase == AttemptPhase::kAssigned) out.assigned = true;
  }
  return out;
}

Json CacheEntries(const State& s, const TenantFilter& visible, const std::string& workflow,
                  const std::string& step) {
  Json items = Json::array();
  for (const auto& [key, e] : s.cache) {
    if (visible && !visible(e.tenant)) continue;
    if (!workflow.empty() && e.workflow != workflow) continue;
    if (!step.empty() && e.step != step) continue;
    items.push_back(CacheEntryToJson(key, e));
    // Not in CacheEntryToJson: the state's digest JSON predates it.
    if (e.last_hit_at != TimePoint{}) items.back()["last_hit_at"] = FormatTime(e.last_hit_at);
  }
  return items;
}

std::string HiddenCacheTarget(const State& s, const std::string& key, const std::string& workflow,
                              const TenantFilter& visible) {
  if (!visible) return "";
  if (!key.empty()) {
    auto it = s.cache.find(key);
    if (it != s.cache.end() && !visible(it->second.tenant)) {
      return "cache key '" + key + "' has no entry";
    }
  }
  if (!workflow.empty() && s.workflows.count(workflow) && !visible(WorkflowTenant(s, workflow))) {
    return "workflow '" + workflow + "' is not registered";
  }
  return "";
}

PhaseCounts CountPhases(const State& s) {
  PhaseCounts out;
  for (const auto& [phase, n] : s.archived) out.runs[phase] += static_cast<int>(n);
  for (const auto& [id, r] : s.runs) {
    out.runs[std::string(Name(r.phase))]++;
    for (const auto& st : r.steps) {
      for (const auto& a : st.attempts) out.attempts[std::string(Name(a.phase))]++;
    }
  }
  for (const auto& [id, c] : s.containers) out.containers[std::string(Name(c.phase))]++;
  out.queue = s.queue.size();
  return out;
}

Json MetricSeriesView(const std::vector<Json>& recorded, const MetricsQuery& q) {
  // (attempt, rank, name) -> points; the series come out in that order.
  std::map<std::tuple<int, int, std::string>, Json> series;
  Json last = Json::object();
  int last_attempt = 0;
  for (const Json& m : recorded) {
    int attempt = m.value("attempt", 0);
    int rank = m.contains("rank") && m["rank"].is_number_integer() ? m["rank"].get<int>() : 0;
    if ((q.attempt && attempt != *q.attempt) || (q.rank && rank != *q.rank)) continue;
    const Json& points = m.contains("points") && m["points"].is_array() ? m["points"] : Json();
    int64_t index = m.value("from", int64_t{0});
    if (rank == 0 && attempt > last_attempt) {
      last = Json::object();
      last_attempt = attempt;
    }
    for (size_t i = 0; i < points.size(); ++i, ++index) {
      const Json& p = points[i];
      if (!p.is_object()) continue;
      Json x = p.contains("step") && p["step"].is_number() ? p["step"] : Json(index);
      for (const auto& [name, value] : p.items()) {
        if (name == "step" || (!q.name.empty() && name != q.name)) continue;
        auto& pts = series[{attempt, rank, name}];
        if (pts.is_null()) pts = Json::array();
        pts.push_back(Json::array({x, value}));
        if (rank == 0 && attempt == last_attempt) last[name] = value;
      }
    }
  }
  Json out = Json::array();
  for (auto& [key, pts] : series) {
    out.push_back(Json{{"attempt", std::get<0>(key)},
                       {"rank", std::get<1>(key)},
                       {"name", std::get<2>(key)},
                       {"points", std::move(pts)}});
  }
  return Json{{"series", std::move(out)}, {"last", std::move(last)}};
}

Json StepMetricTotals(const State& s, const std::string& run, const std::string& step) {
  return StepMetricTotals(s.FindRun(run), step);
}
Json StepMetricTotals(const Run* r, const std::string& step) {
  const StepRun* sr = r ? r->FindStep(step) : nullptr;
  if (!sr) return Json();
  Json out = Json::array();
  for (const auto& a : sr->attempts) {
    for (Json t : SeriesJson(a)) {
      t["attempt"] = a.number;
      out.push_back(std::move(t));
    }
  }
  return out;
}

}  // namespace epoch::engine
