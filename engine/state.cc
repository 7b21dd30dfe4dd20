#include "engine/state.h"

#include <spdlog/spdlog.h>

#include <algorithm>

namespace epoch::engine {

std::string_view Name(RunPhase p) {
  switch (p) {
    case RunPhase::kQueued: return "queued";
    case RunPhase::kRunning: return "running";
    case RunPhase::kSucceeded: return "succeeded";
    case RunPhase::kFailed: return "failed";
    case RunPhase::kCancelled: return "cancelled";
  }
  return "?";
}
std::string_view Name(StepPhase p) {
  switch (p) {
    case StepPhase::kPending: return "pending";
    case StepPhase::kQueued: return "queued";
    case StepPhase::kRunning: return "running";
    case StepPhase::kSucceeded: return "succeeded";
    case StepPhase::kFailed: return "failed";
    case StepPhase::kSkipped: return "skipped";
    case StepPhase::kCancelled: return "cancelled";
  }
  return "?";
}
std::string_view Name(AttemptPhase p) {
  switch (p) {
    case AttemptPhase::kQueued: return "queued";
    case AttemptPhase::kAssigned: return "assigned";
    case AttemptPhase::kRunning: return "running";
    case AttemptPhase::kSucceeded: return "succeeded";
    case AttemptPhase::kFailed: return "failed";
    case AttemptPhase::kTimedOut: return "timed_out";
    case AttemptPhase::kCancelled: return "cancelled";
    case AttemptPhase::kLost: return "lost";
  }
  return "?";
}
std::string_view Name(ContainerPhase p) {
  switch (p) {
    case ContainerPhase::kRequested: return "requested";
    case ContainerPhase::kRegistered: return "registered";
    case ContainerPhase::kLost: return "lost";
    case ContainerPhase::kReleased: return "released";
  }
  return "?";
}
bool IsTerminal(RunPhase p) {
  return p == RunPhase::kSucceeded || p == RunPhase::kFailed || p == RunPhase::kCancelled;
}
bool IsTerminal(AttemptPhase p) {
  return p != AttemptPhase::kQueued && p != AttemptPhase::kAssigned &&
         p != AttemptPhase::kRunning;
}
bool IsTerminal(StepPhase p) {
  return p == StepPhase::kSucceeded || p == StepPhase::kFailed || p == StepPhase::kSkipped ||
         p == StepPhase::kCancelled;
}

std::string AttemptId(std::string_view run, std::string_view step, int attempt) {
  return std::string(run) + "/" + std::string(step) + "/" + std::to_string(attempt);
}

bool ParseAttemptId(std::string_view id, std::string* run, std::string* step, int* attempt) {
  auto a = id.find('/');
  if (a == std::string_view::npos) return false;
  auto b = id.find('/', a + 1);
  if (b == std::string_view::npos || id.find('/', b + 1) != std::string_view::npos) return false;
  std::string_view num = id.substr(b + 1);
  if (num.empty() || num.size() > 6) return false;
  int n = 0;
  for (char c : num) {
    if (c < '0' || c > '9') return false;
    n = n * 10 + (c - '0');
  }
  if (n < 1 || a == 0 || b == a + 1) return false;
  *run = std::string(id.substr(0, a));
  *step = std::string(id.substr(a + 1, b - a - 1));
  *attempt = n;
  return true;
}

std::string TaskId(std::string_view run, std::string_view step, int attempt, int rank) {
  return AttemptId(run, step, attempt) + "/" + std::to_string(rank);
}

bool ParseTaskId(std::string_view id, std::string* run, std::string* step, int* attempt,
                 int* rank) {
  auto last = id.rfind('/');
  if (last != std::string_view::npos && std::count(id.begin(), id.end(), '/') == 3) {
    std::string_view r = id.substr(last + 1);
    if (r.empty() || r.size() > 4) return false;
    int n = 0;
    for (char c : r) {
      if (c < '0' || c > '9') return false;
      n = n * 10 + (c - '0');
    }
    *rank = n;
    return ParseAttemptId(id.substr(0, last), run, step, attempt);
  }
  *rank = -1;
  return ParseAttemptId(id, run, step, attempt);
}

const Worker* State::FindWorker(std::string_view task_id, const Attempt** attempt) const {
  std::string run, step;
  int n, rank;
  if (!ParseTaskId(task_id, &run, &step, &n, &rank) || rank < 0) return nullptr;
  const Attempt* a = FindAttempt(AttemptId(run, step, n));
  if (!a || rank >= static_cast<int>(a->ranks.size())) return nullptr;
  if (attempt) *attempt = a;
  return &a->ranks[static_cast<size_t>(rank)];
}

StepRun* Run::FindStep(std::string_view name) {
  for (auto& s : steps) {
    if (s.name == name) return &s;
  }
  return nullptr;
}
bool StepRun::HasActive() const {
  for (const auto& a : attempts) {
    if (!IsTerminal(a.phase)) return true;
  }
  return false;
}

const Attempt* StepRun::Result() const {
  if (best.is_object()) {
    int n = best.value("attempt", 0);
    if (n >= 1 && n <= static_cast<int>(attempts.size())) return &attempts[static_cast<size_t>(n) - 1];
  }
  return Last();
}

const StepRun* Run::FindStep(std::string_view name) const {
  return const_cast<Run*>(this)->FindStep(name);
}

const Run* State::FindRun(std::string_view id) const {
  auto it = runs.find(std::string(id));
  return it == runs.end() ? nullptr : &it->second;
}
Run* State::FindRun(std::string_view id) {
  auto it = runs.find(std::string(id));
  return it == runs.end() ? nullptr : &it->second;
}

const WorkflowVersion* State::FindWorkflow(std::string_view name, int version) const {
  auto it = workflows.find(std::string(name));
  if (it == workflows.end() || it->second.empty()) return nullptr;
  if (version <= 0) return &it->second.back();
  if (static_cast<size_t>(version) > it->second.size()) return nullptr;
  return &it->second[static_cast<size_t>(version) - 1];
}

const Attempt* State::FindAttempt(std::string_view attempt_id) const {
  std::string run_id, step;
  int n;
  if (!ParseAttemptId(attempt_id, &run_id, &step, &n)) return nullptr;
  const Run* run = FindRun(run_id);
  if (!run) return nullptr;
  const StepRun* s = run->FindStep(step);
  if (!s || n > static_cast<int>(s->attempts.size())) return nullptr;
  return &s->attempts[static_cast<size_t>(n) - 1];
}

namespace {

// A fact in the log that cannot be applied: replay stops there (kCorruption)
// rather than guess or drop it.
Status Corrupt(const RecordedEvent& e, std::string_view field, const std::string& problem) {
  return Corruption("event " + std::to_string(e.position) + " (" + e.type + "): field " +
                    std::string(field) + ": " + problem);
}

TimePoint TimeField(const Json& d, const char* key, TimePoint fallback) {
  if (d.contains(key) && d[key].is_string()) {
    auto t = ParseTime(d[key].get<std::string>());
    if (t.ok()) return *t;
  }
  return fallback;
}

std::optional<int> OptInt(const Json& d, const char* key) {
  if (d.contains(key) && d[key].is_number_integer()) return d[key].get<int>();
  return std::nullopt;
}

// Releases an attempt's reservation on its container.
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

void RemoveFromQueue(State& s, const std::string& attempt_id, const Run& run, const Attempt& a) {
  s.queue.erase({-run.priority, a.queue_seq});
  (void)attempt_id;
}

struct Target {
  Run* run = nullptr;
  StepRun* step = nullptr;
  Attempt* attempt = nullptr;
  std::string attempt_id;
};

Target Resolve(State& s, const RecordedEvent& e) {
  Target t;
  const Json& d = e.data;
  std::string run_id = e.stream.rfind("run-", 0) == 0 ? e.stream.substr(4) : "";
  t.run = s.FindRun(run_id);
  if (!t.run) return t;
  if (d.contains("step") && d["step"].is_string()) {
    t.step = t.run->FindStep(d["step"].get<std::string>());
  }
  if (t.step && d.contains("attempt") && d["attempt"].is_number_integer()) {
    int n = d["attempt"].get<int>();
    if (n >= 1 && n <= static_cast<int>(t.step->attempts.size())) {
      t.attempt = &t.step->attempts[static_cast<size_t>(n) - 1];
      t.attempt_id = AttemptId(t.run->id, t.step->name, n);
    }
  }
  return t;
}

// An attempt reached a terminal phase: bookkeeping shared by every outcome.
void FinishAttempt(State& s, Target& t, AttemptPhase phase, const RecordedEvent& e) {
  Attempt& a = *t.attempt;
  if (a.phase == AttemptPhase::kQueued) RemoveFromQueue(s, t.attempt_id, *t.run, a);
  ReleaseReservation(s, t.attempt_id, a, e.time);
  a.phase = phase;
  a.finished_at = e.time;
  const Json& d = e.data;
  if (d.contains("usage") && d["usage"].is_object()) a.usage = d["usage"];
  if (d.contains("log") && d["log"].is_object()) a.log = d["log"];
  a.exit_code = OptInt(d, "exit_code");
  a.signal = OptInt(d, "signal");
  if (d.contains("reason") && d["reason"].is_string()) a.reason = d["reason"].get<std::string>();
}

// The attempt a JobQueued or JobCacheHit creates: number, resources, command, trial.
Attempt AttemptFromEvent(const Json& d) {
  Attempt a;
  a.number = d.value("attempt", 1);
  const Json& r = d.value("resources", Json::object());
  a.resources.cpu_millis = r.value("cpu_millis", int64_t{100});
  a.resources.memory_bytes = r.value("memory_bytes", int64_t{128} << 20);
  a.resources.gpus = r.value("gpus", 0);
  a.argv = d.value("argv", Json::array());
  a.env = d.value("env", Json::object());
  if (d.contains("trial")) {
    a.trial = d.value("trial", 0);
    a.trial_params = d.value("params", Json::object());
  }
  return a;
}

Status EvolveRunEvent(State& s, const RecordedEvent& e) {
  const Json& d = e.data;
  const std::string& type = e.type;
  if (type == ev::kRunSubmitted) {
    Run run;
    run.id = d.value("run", "");
    run.workflow = d.value("workflow", "");
    run.version = d.value("version", 0);
    const WorkflowVersion* wf = s.FindWorkflow(run.workflow, run.version);
    if (run.id.empty()) return Corrupt(e, "run", "missing or empty");
    if (!wf) {
      return Corrupt(e, "workflow",
                     "names " + run.workflow + " version " + std::to_string(run.version) +
                         ", which no WorkflowRegistered before it registers");
    }
    run.def = wf->def;
    run.digest = d.value("digest", wf->digest);
    run.tenant = d.value("tenant", "default");
    run.submitter = d.value("submitter", e.actor);
    run.params = d.value("params", Json::object());
    run.labels = d.value("labels", Json::object());
    run.priority = d.value("priority", 0);
    run.seq = s.next_run_seq++;
    run.submitted_at = e.time;
    for (const auto& st : run.def->steps) {
      StepRun sr;
      sr.name = st.name;
      run.steps.push_back(std::move(sr));
    }
    std::string key = d.value("idempotency_key", "");
    if (!key.empty()) s.idempotency[{run.tenant, key}] = run.id;
    run.request_digest = d.value("request_digest", "");
    s.runs_by_seq[run.seq] = run.id;
    s.runs[run.id] = std::move(run);
    return Status::Ok();
  }
  if (type == ev::kDatasetVersionRegistered || type == ev::kModelVersionRegistered) {
    Run* r = s.FindRun(e.stream.substr(4));
    if (!r) return Status::Ok();
    bool model = type == ev::kModelVersionRegistered;
    auto& versions = (model ? s.models : s.datasets)[ArtifactKey(r->tenant, d.value("name", ""))];
    int version = d.value("version", 0);
    std::string step = d.value("step", "");
    std::string digest = d.value("digest", "");
    bool existing = version >= 1 && version <= static_cast<int>(versions.size()) &&
                    versions[static_cast<size_t>(version - 1)].digest == digest;
    if (version != static_cast<int>(versions.size()) + 1 && !existing) {
      // Written when names were global, so numbered among every tenant's versions:
      // within the run's tenant it is the version with its digest, else the next.
      version = static_cast<int>(versions.size()) + 1;
      for (const auto& v : versions) {
        if (v.digest == digest) version = v.version;
      }
    }
    if (version == static_cast<int>(versions.size()) + 1) {
      ArtifactVersion v;
      v.version = version;
      v.digest = digest;
      v.run = r->id;
      v.step = step;
      v.attempt = d.value("attempt", 0);
      v.outputs = d.value("outputs", Json::array());
      v.registered_at = e.time;
      if (model) {
        v.workflow = d.value("workflow", "");
        v.workflow_version = d.value("workflow_version", 0);
        v.params = d.value("params", Json::object());
        v.datasets = d.value("datasets", Json::array());
      }
      versions.push_back(std::move(v));
    }
    (model ? r->models : r->datasets)[step] = {d.value("name", ""), version};
    return Status::Ok();
  }
  if (type == ev::kModelVersionValidated) {
    Run* r = s.FindRun(e.stream.substr(4));
    if (!r) return Status::Ok();
    std::string name = d.value("name", "");
    auto it = s.models.find(ArtifactKey(r->tenant, name));
    int version = d.value("version", 0);
    // The version this run registered under the name (it differs from the event's
    // only in histories written when names were global).
    for (const auto& [step, nv] : r->models) {
      if (nv.first == name) version = nv.second;
    }
    if (!r || it == s.models.end() || version < 1 ||
        version > static_cast<int>(it->second.size())) {
      return Status::Ok();
    }
    ArtifactVersion& v = it->second[static_cast<size_t>(version - 1)];
    Json metrics = d.value("metrics", Json::object());
    if (metrics.is_object()) {
      for (const auto& [k, val] : metrics.items()) v.metrics[k] = val;
    }
    v.validated_by.push_back(Json{{"run", r->id}, {"step", d.value("step", "")}});
    r->validated.insert(d.value("step", ""));
    return Status::Ok();
  }
  Target t = Resolve(s, e);
  if (!t.run) return Status::Ok();
  Run& run = *t.run;
  if (type == ev::kStepReady) {
    if (t.step) t.step->phase = StepPhase::kQueued;
  } else if (type == ev::kStepSkipped) {
    if (t.step) {
      t.step->phase = StepPhase::kSkipped;
      t.step->reason = d.value("reason", "");
    }
  } else if (type == ev::kJobQueued) {
    if (!t.step) return Status::Ok();
    Attempt a = AttemptFromEvent(d);
    if (a.number != static_cast<int>(t.step->attempts.size()) + 1) return Status::Ok();
    a.timeout_ms = d.value("timeout_ms", int64_t{0});
    a.workers = d.value("workers", 1);
    if (auto m = d.find("mounts"); m != d.end() && m->is_array()) a.mounts = *m;
    if (auto c = d.find("cache"); c != d.end() && c->is_object()) a.cache_key = c->value("key", "");
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
  } else if (type == ev::kJobAssigned) {
    if (!t.attempt || t.attempt->phase != AttemptPhase::kQueued) return Status::Ok();
    Attempt& a = *t.attempt;
    RemoveFromQueue(s, t.attempt_id, run, a);
    a.phase = AttemptPhase::kAssigned;
    a.assigned_at = e.time;
    if (d.contains("placements")) {
      s.gangs_placed++;
      a.master_addr = d.value("master_addr", "127.0.0.1");
      a.master_port = d.value("master_port", 0);
      for (const auto& p : d["placements"]) {
        Worker w;
        w.rank = p.value("rank", 0);
        w.local_rank = p.value("local_rank", 0);
        w.container = p.value("container", "");
        w.gpus = p.value("gpus", Json::array());
        w.gpu_uuids = p.value("gpu_uuids", Json::array());
        Reserve(s, w.container, t.attempt_id + "/" + std::to_string(w.rank), a.resources, w.gpus);
        a.ranks.push_back(std::move(w));
      }
      if (!a.ranks.empty()) {
        a.container = a.ranks[0].container;
        a.gpus = a.ranks[0].gpus;
        a.gpu_uuids = a.ranks[0].gpu_uuids;
      }
    } else {
      a.container = d.value("container", "");
      a.gpus = d.value("gpus", Json::array());
      a.gpu_uuids = d.value("gpu_uuids", Json::array());
      Reserve(s, a.container, t.attempt_id, a.resources, a.gpus);
    }
  } else if (type == ev::kJobStarted) {
    if (!t.attempt) return Status::Ok();
    if (d.contains("rank")) {
      int rank = d.value("rank", -1);
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
    if (!run.started_at) run.started_at = e.time;
    if (run.phase == RunPhase::kQueued) run.phase = RunPhase::kRunning;
  } else if (type == ev::kJobSucceeded) {
    if (!t.attempt || IsTerminal(t.attempt->phase)) return Status::Ok();
    FinishAttempt(s, t, AttemptPhase::kSucceeded, e);
    Json metrics = d.value("metrics", Json::object());
    Json outputs = d.value("outputs", Json::array());
    if (!t.attempt->cache_key.empty()) {
      s.cache[t.attempt->cache_key] = CacheEntry{run.tenant, run.id, t.step->name,
                                                 t.attempt->number, run.workflow, outputs,
                                                 metrics, e.time};
    }
    if (t.attempt->trial >= 0) {  // a trial: the sweep decides the step
      t.attempt->metrics = std::move(metrics);
      t.attempt->outputs = std::move(outputs);
      return Status::Ok();
    }
    t.step->phase = StepPhase::kSucceeded;
    t.step->metrics = std::move(metrics);
    t.step->outputs = std::move(outputs);
    t.step->reason.clear();
  } else if (type == ev::kJobCacheHit) {
    if (!t.step) return Status::Ok();
    Attempt a = AttemptFromEvent(d);
    if (a.number != static_cast<int>(t.step->attempts.size()) + 1) return Status::Ok();
    a.phase = AttemptPhase::kSucceeded;
    a.cache_key = d.value("key", "");
    a.cached_from =
        AttemptId(d.value("source_run", ""), d.value("source_step", ""), d.value("source_attempt", 0));
    a.queued_at = a.finished_at = e.time;
    if (a.trial >= 0) {  // a trial's result, kept for the sweep to choose from
      a.metrics = d.value("metrics", Json::object());
      a.outputs = d.value("outputs", Json::array());
      t.step->attempts.push_back(std::move(a));
      t.step->next_attempt = static_cast<int>(t.step->attempts.size()) + 1;
      if (t.step->phase != StepPhase::kRunning) t.step->phase = StepPhase::kQueued;
      if (!run.started_at) run.started_at = e.time;
      if (run.phase == RunPhase::kQueued) run.phase = RunPhase::kRunning;
      return Status::Ok();
    }
    t.step->attempts.push_back(std::move(a));
    if (t.step->retry_at) {
      s.retry_timers.erase({*t.step->retry_at, AttemptId(run.id, t.step->name, t.step->next_attempt)});
      t.step->retry_at.reset();
    }
    t.step->next_attempt = static_cast<int>(t.step->attempts.size()) + 1;
    t.step->phase = StepPhase::kSucceeded;
    t.step->metrics = d.value("metrics", Json::object());
    t.step->outputs = d.value("outputs", Json::array());
    t.step->reason.clear();
    if (!run.started_at) run.started_at = e.time;
    if (run.phase == RunPhase::kQueued) run.phase = RunPhase::kRunning;
  } else if (type == ev::kJobFailed || type == ev::kJobTimedOut || type == ev::kJobCancelled) {
    if (!t.attempt || IsTerminal(t.attempt->phase)) return Status::Ok();
    AttemptPhase phase = AttemptPhase::kFailed;
    if (type == ev::kJobTimedOut) phase = AttemptPhase::kTimedOut;
    if (type == ev::kJobCancelled) phase = AttemptPhase::kCancelled;
    if (type == ev::kJobFailed && d.value("reason", "") == "container_lost") {
      phase = AttemptPhase::kLost;
    }
    FinishAttempt(s, t, phase, e);
    if (type == ev::kJobTimedOut && t.attempt->reason.empty()) t.attempt->reason = "timeout";
    if (t.attempt->trial >= 0) return Status::Ok();  // a failed trial does not fail the sweep
    // The step stays where it is until decide says retry (JobRetryScheduled) or
    // gives up (RunFailed / RunCancelled settle the step).
    t.step->phase = type == ev::kJobCancelled ? StepPhase::kCancelled : StepPhase::kFailed;
    t.step->reason = t.attempt->reason;
  } else if (type == ev::kJobWorkerFinished) {
    if (!t.attempt) return Status::Ok();
    int rank = d.value("rank", -1);
    if (rank < 0 || rank >= static_cast<int>(t.attempt->ranks.size())) return Status::Ok();
    Worker& w = t.attempt->ranks[static_cast<size_t>(rank)];
    if (IsTerminal(w.phase) && w.phase != AttemptPhase::kCancelled) return Status::Ok();
    std::string st = d.value("state", "failed");
    w.phase = st == "succeeded"   ? AttemptPhase::kSucceeded
              : st == "timed_out" ? AttemptPhase::kTimedOut
              : st == "cancelled" ? AttemptPhase::kCancelled
              : st == "lost"      ? AttemptPhase::kLost
                                  : AttemptPhase::kFailed;
    w.finished_at = e.time;
    w.exit_code = OptInt(d, "exit_code");
    w.signal = OptInt(d, "signal");
    if (d.contains("reason") && d["reason"].is_string()) w.reason = d["reason"].get<std::string>();
    if (d.contains("usage") && d["usage"].is_object()) w.usage = d["usage"];
    if (d.contains("metrics")) w.metrics = d["metrics"];
    if (d.contains("outputs")) w.outputs = d["outputs"];
    Release(s, w.container, t.attempt_id + "/" + std::to_string(rank), t.attempt->resources, w.gpus,
            e.time);
  } else if (type == ev::kStepSweepCompleted) {
    if (!t.step) return Status::Ok();
    int n = d.contains("best_attempt") && d["best_attempt"].is_number_integer()
                ? d["best_attempt"].get<int>()
                : 0;
    if (n >= 1 && n <= static_cast<int>(t.step->attempts.size())) {
      const Attempt& best = t.step->attempts[static_cast<size_t>(n) - 1];
      t.step->phase = StepPhase::kSucceeded;
      t.step->metrics = best.metrics.is_object() ? best.metrics : Json::object();
      t.step->outputs = best.outputs.is_array() ? best.outputs : Json::array();
      t.step->reason.clear();
      t.step->best = Json{{"trial", best.trial},
                          {"attempt", n},
                          {"params", best.trial_params},
                          {"value", d.value("best_value", Json())},
                          {"metric", d.value("metric", "")}};
    } else {
      t.step->phase = StepPhase::kFailed;
      t.step->reason = d.value("reason", "no trial succeeded");
    }
  } else if (type == ev::kJobRetryScheduled) {
    if (!t.step) return Status::Ok();
    auto nb = TimeField(d, "not_before", e.time);
    t.step->retry_at = nb;
    t.step->phase = StepPhase::kQueued;
    int next = d.value("attempt", t.step->next_attempt);
    t.step->next_attempt = next;
    s.retry_timers.insert({nb, AttemptId(run.id, t.step->name, next)});
  } else if (type == ev::kRunSucceeded) {
    run.phase = RunPhase::kSucceeded;
    run.finished_at = e.time;
  } else if (type == ev::kRunFailed || type == ev::kRunCancelled) {
    run.phase = type == ev::kRunFailed ? RunPhase::kFailed : RunPhase::kCancelled;
    run.finished_at = e.time;
    run.failed_step = d.value("step", "");
    run.reason = d.value("reason", "");
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
          st.reason = type == ev::kRunFailed ? "run failed" : "run cancelled";
        }
      }
    }
  } else if (type == ev::kRunCancelRequested) {
    run.cancel_requested = true;
  } else if (type == ev::kRunRetryRequested) {
    run.phase = run.started_at ? RunPhase::kRunning : RunPhase::kQueued;
    run.cancel_requested = false;
    run.finished_at.reset();
    run.failed_step.clear();
    run.reason.clear();
    for (const auto& name : d.value("steps", Json::array())) {
      if (!name.is_string()) continue;
      StepRun* st = run.FindStep(name.get<std::string>());
      if (!st) continue;
      st->phase = StepPhase::kPending;
      st->reason.clear();
      st->metrics = Json::object();
      st->outputs = Json::array();
      st->best = Json();
      st->next_attempt = static_cast<int>(st->attempts.size()) + 1;
      st->round_start = st->next_attempt;
    }
  }
  return Status::Ok();
}

Status EvolveContainerEvent(State& s, const RecordedEvent& e) {
  const Json& d = e.data;
  std::string id = d.value("container", "");
  if (id.empty()) return Status::Ok();
  if (e.type == ev::kContainerRequested) {
    Container c;
    c.id = id;
    c.backend = d.value("backend", "");
    const Json& spec = d.value("spec", Json::object());
    c.cpu_millis = spec.value("cpu_millis", int64_t{0});
    c.memory_bytes = spec.value("memory_bytes", int64_t{0});
    c.requested_gpus = spec.value("gpus", 0);
    c.request_reason = d.value("reason", "");
    c.credential_sha256 = d.value("credential_sha256", "");
    c.requested_at = e.time;
    if (c.request_reason == "demand") s.last_scale_up = e.time;
    s.containers[id] = std::move(c);
    s.container_counter++;
    return Status::Ok();
  }
  auto it = s.containers.find(id);
  if (it == s.containers.end()) return Status::Ok();
  Container& c = it->second;
  if (e.type == ev::kContainerLaunched) {
    c.handle = d.value("handle", "");
  } else if (e.type == ev::kContainerRegistered) {
    if (c.phase == ContainerPhase::kLost || c.phase == ContainerPhase::kReleased)
      return Status::Ok();
    c.phase = ContainerPhase::kRegistered;
    c.handle = d.value("handle", c.handle);
    c.host = d.value("host", "");
    c.pid = d.value("pid", int64_t{0});
    c.cpu_millis = d.value("cpu_millis", c.cpu_millis);
    c.memory_bytes = d.value("memory_bytes", c.memory_bytes);
    c.gpus = d.value("gpus", Json::array());
    c.cuda = d.value("cuda", Json::object());
    c.isolation = d.value("isolation", Json::object());
    if (!c.isolation.is_object()) c.isolation = Json::object();
    c.enforcement = d.value("enforcement", Json::object());
    if (!c.enforcement.is_object()) c.enforcement = Json::object();
    if (!c.registered_at) c.registered_at = e.time;
    if (c.attempts.empty()) c.idle_since = e.time;
    s.launch_failures_in_row = 0;
  } else if (e.type == ev::kContainerLost || e.type == ev::kContainerReleased) {
    c.phase = e.type == ev::kContainerLost ? ContainerPhase::kLost : ContainerPhase::kReleased;
    c.reason = d.value("reason", "");
    c.ended_at = e.time;
    if (c.reason.rfind("launch failed", 0) == 0) {
      s.launch_failures_in_row++;
      s.last_launch_failure = e.time;
    }
  }
  return Status::Ok();
}

Status EvolveWorkflowRegistered(State& s, const RecordedEvent& e) {
  const Json& d = e.data;
  auto def_json = d.find("definition");
  if (def_json == d.end()) return Corrupt(e, "definition", "missing");
  std::vector<std::string> problems;
  auto def = workflows::ParseStoredDefinition(*def_json, &problems);
  if (!def.ok()) return Corrupt(e, "definition", def.status().ToString());
  if (!problems.empty()) {
    // Registered under earlier rules: replayed as stored (stored definitions are facts).
    std::string list;
    for (const auto& p : problems) list += (list.empty() ? "" : "; ") + p;
    spdlog::warn(
        "replay: workflow {} registered at {} breaks today's rules ({}); replayed as "
        "stored",
        (*def)->name, e.position, list);
  }
  WorkflowVersion v;
  v.version = d.value("version", 0);
  v.digest = d.value("digest", (*def)->digest);
  v.def = *def;
  v.registered_at = e.time;
  v.actor = e.actor;
  v.tenant = d.value("tenant", "default");
  v.request_digest = d.value("request_digest", "");
  std::string name = d.value("name", (*def)->name);
  auto& versions = s.workflows[name];
  if (v.version != static_cast<int>(versions.size()) + 1) {
    return Corrupt(e, "version",
                   std::to_string(v.version) + " does not follow version " +
                       std::to_string(versions.size()) + " of workflow " + name);
  }
  std::string key = d.value("idempotency_key", "");
  if (!key.empty()) s.workflow_keys[{d.value("tenant", "default"), key}] = {name, v.version};
  versions.push_back(std::move(v));
  return Status::Ok();
}

}  // namespace

std::string ArtifactKey(std::string_view tenant, std::string_view name) {
  return std::string(tenant) + "/" + std::string(name);
}

std::pair<std::string, std::string> SplitArtifactKey(std::string_view key) {
  size_t slash = key.find('/');
  if (slash == std::string_view::npos) return {"", std::string(key)};
  return {std::string(key.substr(0, slash)), std::string(key.substr(slash + 1))};
}

Status Evolve(State& s, const RecordedEvent& e) {
  s.head = e.position;
  if (e.epoch > s.epoch) s.epoch = e.epoch;
  if (!e.data.is_object()) return Corrupt(e, "data", "not a JSON object");
  if (e.stream.rfind("run-", 0) == 0) return EvolveRunEvent(s, e);
  if (e.stream.rfind("container-", 0) == 0) return EvolveContainerEvent(s, e);
  if (e.type == ev::kWorkflowRegistered) return EvolveWorkflowRegistered(s, e);
  if (e.type == ev::kCacheInvalidated) {
    for (const auto& k : e.data.value("keys", Json::array())) {
      if (k.is_string()) s.cache.erase(k.get<std::string>());
    }
  } else if (e.type == ev::kLeaderElected) {
    uint64_t ep = e.data.value("epoch", uint64_t{0});
    if (ep > s.epoch) s.epoch = ep;
    s.leader_node = e.data.value("node", "");
    s.leader_address = e.data.value("address", "");
  }
  return Status::Ok();
}

}  // namespace epoch::engine
