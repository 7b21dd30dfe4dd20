// State: everything the master knows, as a fold over the event log.
//
// State changes only in Evolve(), which runs identically live and during replay,
// so replay cannot drift from live behaviour. The engine's writer owns one State
// (decisions are taken against it); readers see a second copy that is evolved
// only after the events are durable (see engine.h).
//
// Thread-safety: none; a State is owned by one thread or guarded by its owner.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "common/clock.h"
#include "common/json.h"
#include "engine/cache.h"
#include "engine/events.h"
#include "workflows/definition.h"

namespace epoch::engine {

enum class RunPhase { kQueued, kRunning, kSucceeded, kFailed, kCancelled };
enum class StepPhase { kPending, kQueued, kRunning, kSucceeded, kFailed, kSkipped, kCancelled };
enum class AttemptPhase {
  kQueued, kAssigned, kRunning, kSucceeded, kFailed, kTimedOut, kCancelled, kLost
};
enum class ContainerPhase { kRequested, kRegistered, kLost, kReleased };

std::string_view Name(RunPhase p);
std::string_view Name(StepPhase p);
std::string_view Name(AttemptPhase p);
std::string_view Name(ContainerPhase p);
bool IsTerminal(RunPhase p);
bool IsTerminal(AttemptPhase p);
bool IsTerminal(StepPhase p);

// "<run>/<step>/<attempt>"
std::string AttemptId(std::string_view run, std::string_view step, int attempt);
// Splits an attempt id; false if malformed.
bool ParseAttemptId(std::string_view id, std::string* run, std::string* step, int* attempt);
// One worker of a distributed (gang) attempt: "<run>/<step>/<attempt>/<rank>".
std::string TaskId(std::string_view run, std::string_view step, int attempt, int rank);
// Splits an attempt id (rank -1) or a worker's task id; false if malformed.
bool ParseTaskId(std::string_view id, std::string* run, std::string* step, int* attempt, int* rank);

// One worker of a gang-scheduled attempt.
struct Worker {
  int rank = 0;
  int local_rank = 0;  // its index among the attempt's workers on the same container
  AttemptPhase phase = AttemptPhase::kAssigned;
  std::string container;
  Json gpus = Json::array();
  Json gpu_uuids = Json::array();
  std::optional<int> exit_code;
  std::optional<int> signal;
  std::string reason;
  Json usage = Json::object();
  TimePoint started_at{}, finished_at{};
  // Its agent's final report is recorded (JobWorkerFinished): a report sent again (its
  // answer lost, say, to a master that died) records nothing more.
  bool reported = false;
  // Rank 0's report is the attempt's: its metrics and outputs once it succeeded.
  Json metrics{};
  Json outputs{};
};

// One live-metrics series of an attempt (MetricsRecorded): how much of it is recorded.
struct MetricSeries {
  int64_t next = 0;        // the number of the next point the agent sends
  int64_t points = 0;      // points recorded (below `next`; the rest were dropped)
  int64_t bytes = 0;       // their size as JSON
  int64_t skipped = 0;     // the agent's total of values or lines that were not metrics
  int64_t dropped = 0;     // points over a cap: the agent's total, plus the master's own
  bool truncated = false;  // a cap was reached (the agent's or the master's)
  bool capped = false;     // the master's caps were reached: it records no more points
};

// An early-stopping judgement of a sweep trial at a rung (TrialPromoted, TrialStopped).
struct RungMark {
  int attempt = 0;
  int trial = 0;
  int rung = 0;  // index into the rungs of the trial's bracket (workflows/asha.h)
  double value = 0;
  bool stopped = false;
};

// Files retention deleted (OutputsExpired, LogsExpired): when, and the bytes found.
struct Expiry {
  TimePoint at{};  // the epoch: not expired
  int64_t bytes = 0;
  explicit operator bool() const { return at != TimePoint{}; }
};

struct Attempt {
  int number = 1;
  AttemptPhase phase = AttemptPhase::kQueued;
  workflows::Resources resources;
  Json argv = Json::array();
  Json env = Json::object();
  int64_t timeout_ms = 0;
  std::string container;
  Json gpus = Json::array();       // GPU indices on its container
  Json gpu_uuids = Json::array();  // the same GPUs by UUID, for the record
  std::optional<int> exit_code;
  std::optional<int> signal;
  std::string reason;
  Json usage = Json::object();
  // The attempt's log as the agent wrote it: {"bytes", "truncated"} (a log past
  // executor.maxLogBytes is cut there, and says so); empty when not reported.
  Json log = Json::object();
  // Paths of the data dir beyond its run's workspace the attempt may read, as
  // [{"path", "read_only"}] (upstream outputs it names, declared inputs).
  Json mounts = Json::array();
  uint64_t queue_seq = 0;  // FIFO order among queued attempts
  int workers = 1;         // > 1: a gang; `ranks` holds each worker once placed
  // An elastic gang: the range it may run with (0, 0: exactly `workers`). Queued,
  // `workers` is the most; once placed, as many as fit.
  int workers_min = 0, workers_max = 0;
  // An elastic gang that preemption took down: the most it starts with (0: workers_max);
  // it grows back toward workers_max when room frees.
  int workers_cap = 0;
  // GangResized: the size its step asks for next (the attempt is ended for it).
  int resized_to = 0;
  std::vector<Worker> ranks;
  std::string master_addr;  // rank 0's host, for torch.distributed
  int master_port = 0;
  TimePoint queued_at{}, assigned_at{}, started_at{}, finished_at{};
  std::string cache_key{};    // the step's cache key when it is cached (cache.h)
  std::string cached_from{};  // a cache hit: the attempt id whose outputs it reuses
  // A trial of a swept step (0-based; -1: not a trial), its parameter values, and
  // what it reported (a trial's result is its own until the sweep picks the best).
  int trial = -1;
  Json trial_params{};
  Json metrics{};
  Json outputs{};
  // Early stopping stopped this trial (TrialStopped): why; the agent is told to cancel
  // it, and it is no candidate for the sweep's best whatever it reports.
  std::string stopped{};
  // Preemption (JobPreempted, or a GangResized that takes an elastic gang down for
  // another attempt): the queued attempt it gives way to; the agent is told to cancel
  // it, and its step is queued again without counting a try.
  std::string preempted_by{};
  // Whether the engine asked it to end although its run goes on: early stopping,
  // preemption, a resize.
  bool EndRequested() const { return !stopped.empty() || !preempted_by.empty() || resized_to > 0; }
  // Live metrics: rank (0 unless a gang) -> its series' totals; the points are in the
  // log, not here, so the state stays small whatever a step writes.
  std::map<int, MetricSeries> series;
  // The checkpoint it started from (JobAssigned): {file, sha256, size, epoch, attempt,
  // rank}; null if none.
  Json resumed_from{};
  // Retention: its folder runs/<run>/<step>/<n>/ (outputs and all), its log.
  Expiry outputs_expired{}, logs_expired{};
};

struct StepRun {
  std::string name;
  StepPhase phase = StepPhase::kPending;
  std::vector<Attempt> attempts;
  Json metrics = Json::object();
  Json outputs = Json::array();  // [{"name","size","sha256"}]
  std::string reason;            // why skipped / failed / cancelled
  std::optional<TimePoint> retry_at;  // a retry is scheduled for this time
  int next_attempt = 1;          // number of the attempt a retry will create
  int round_start = 1;           // first attempt number since the last retry request

  // A swept step's outcome once StepSweepCompleted chose it: {trial, attempt, params,
  // value, metric}; null otherwise.
  Json best{};
  // Early stopping: every rung judgement of the step's trials, in log order.
  std::vector<RungMark> rungs;
  // The latest checkpoint (CheckpointSaved) per trial (-1: the step's own attempts):
  // {file, sha256, size, epoch, attempt, rank}. A new attempt resumes from it.
  std::map<int, Json> checkpoints;
  // Retention deleted the step's checkpoints folder.
  Expiry checkpoints_expired{};

  Attempt* Last() { return attempts.empty() ? nullptr : &attempts.back(); }
  const Attempt* Last() const { return attempts.empty() ? nullptr : &attempts.back(); }
  // Whether an attempt is not terminal yet (a sweep runs several at once).
  bool HasActive() const;
  // The attempt whose outputs and metrics are the step's: the best trial of a sweep,
  // else the last attempt; null if there is none.
  const Attempt* Result() const;
};

// A data set or model version: the outputs of one succeeded step of one run.
struct ArtifactVersion {
  int version = 0;
  std::string digest;  // SHA-256 over the outputs' names and digests
  std::string run, step;
  int attempt = 0;
  Json outputs = Json::array();
  TimePoint registered_at{};
  // Models only: what produced it and how it scored.
  std::string workflow;
  int workflow_version = 0;
  Json params = Json::object();
  Json datasets = Json::array();     // [{name, version}] registered by the same run
  Json metrics = Json::object();     // from the run's validate steps
  Json validated_by = Json::array();  // [{run, step}]
  // The attempt whose folder holds the files: its own, or the one a cache hit reused
  // (retention keeps that folder; retention.h).
  std::string files_at{};

  // files_at, or (recorded before it was) the version's own attempt.
  std::string FilesAt() const;
};

// A tenant's data set or model: how many versions it has, and the versions State
// holds. Without a read model (archive.h) that is all of them, in order; with one they
// live in its records and `versions` is empty between events (EvolveArchived brings
// in the ones an event changes, then folds them back), so State keeps one count per
// name however many versions there are.
struct Artifact {
  int count = 0;                          // versions 1..count exist
  std::vector<ArtifactVersion> versions;  // ascending version numbers
  ArtifactVersion* Find(int version);
  const ArtifactVersion* Find(int version) const;
};

struct Run {
  std::string id;
  std::string workflow;
  int version = 0;
  std::string digest;
  std::shared_ptr<const workflows::Definition> def;
  std::string tenant;
  std::string submitter;
  // SHA-256 of the request that submitted it with an Idempotency-Key: the same key
  // with another request is refused (kIdempotencyKeyReused). Empty without a key, or
  // when written before it was recorded.
  std::string request_digest;
  // The Idempotency-Key it was submitted with (empty: none). State::idempotency maps
  // it to the run while the run is open; a folded run's is in the read model (archive.h).
  std::string idempotency_key;
  Json params = Json::object();
  Json labels = Json::object();
  int priority = 0;
  uint64_t seq = 0;  // submission order
  RunPhase phase = RunPhase::kQueued;
  bool cancel_requested = false;
  std::string failed_step, reason;
  TimePoint submitted_at{};
  std::optional<TimePoint> started_at, finished_at;
  std::vector<StepRun> steps;  // same order as def->steps
  // Lineage registered by this run: step -> (data set or model name, version).
  std::map<std::string, std::pair<std::string, int>> datasets, models;
  std::set<std::string> validated;  // validate steps whose metrics were attached

  StepRun* FindStep(std::string_view name);
  const StepRun* FindStep(std::string_view name) const;
};

struct WorkflowVersion {
  int version = 0;
  std::string digest;
  std::shared_ptr<const workflows::Definition> def;
  TimePoint registered_at{};
  std::string actor;
  std::string tenant = "default";  // the name belongs to version 1's tenant
  std::string request_digest;      // as Run::request_digest, for POST /v1/workflows
};

struct Container {
  std::string id;
  ContainerPhase phase = ContainerPhase::kRequested;
  std::string backend, handle, host, reason;
  int64_t pid = 0;
  int64_t cpu_millis = 0, memory_bytes = 0;
  Json gpus = Json::array();  // inventory as registered
  Json cuda = Json::object();  // {"compiled", "reason"} as the agent reported
  int requested_gpus = 0;      // the spec's sig.gpu
  std::string request_reason;  // why the pool asked for it (demand, minReplicas, ...)
  TimePoint requested_at{};
  TimePoint idle_since{};      // when its last attempt ended (or it registered)
  std::optional<TimePoint> registered_at, ended_at;
  // Reservations of attempts placed here (assigned or running).
  int64_t used_cpu = 0, used_memory = 0;
  std::set<std::string> busy_gpus;     // gpu index strings in use
  std::set<std::string> attempts;      // attempt ids placed here, not yet terminal
  // SHA-256 of the container's credential (credentials.h); empty for containers
  // requested before credentials existed, which can no longer authenticate.
  std::string credential_sha256;
  // What the agent enforces for its steps, as it registered it ({"mode", "run_as",
  // "sandbox", "reason", ...}); empty until it registers.
  Json isolation = Json::object();
  // What enforces its CPU, memory and process limits, as it registered it
  // ({"mode", "mechanism": "cgroup2|cgroup1|slurm|none", "reason", ...}).
  Json enforcement = Json::object();
};

// What retention deleted of one tenant's files, as the events record it.
struct TenantExpired {
  int64_t outputs_bytes = 0;  // OutputsExpired: attempt folders and checkpoints
  int64_t logs_bytes = 0;     // LogsExpired
  uint64_t outputs_events = 0, logs_events = 0;
};

// How many lost or released containers State keeps (the most recently ended): their
// whole story stays in the log (stream container-<id>), so memory follows the live
// pool and not every container a cluster ever had.
inline constexpr size_t kEndedContainersKept = 1000;

struct State {
  uint64_t head = 0;           // position of the last evolved event
  uint64_t epoch = 0;          // highest leader epoch seen
  std::map<std::string, std::vector<WorkflowVersion>> workflows;  // name -> versions (1..n)
  std::map<std::string, Run, std::less<>> runs;                   // found by string_view (no copy)
  std::map<uint64_t, std::string> runs_by_seq;  // submission order
  std::map<std::string, Container> containers;
  // The lost or released ones among them, by (ended_at, id): past kEndedContainersKept
  // the oldest leaves `containers`.
  std::set<std::pair<TimePoint, std::string>> ended_containers;
  // Queued attempts in dispatch order: (-priority, queue_seq) -> attempt id.
  std::map<std::pair<int, uint64_t>, std::string> queue;
  // Retries waiting for their time: (time, attempt id of the retry to create).
  std::set<std::pair<TimePoint, std::string>> retry_timers;
  // (tenant, Idempotency-Key) -> run, for open runs (a folded run's key is in the read
  // model: RunArchive::FindIdempotent).
  std::map<std::pair<std::string, std::string>, std::string> idempotency;
  // Idempotency-Key of POST /v1/workflows: (tenant, key) -> (name, version).
  std::map<std::pair<std::string, std::string>, std::pair<std::string, int>> workflow_keys;
  std::string leader_node, leader_address;  // from the last LeaderElected
  // Lineage: ArtifactKey(tenant, name) -> its versions (Artifact). Names are per
  // tenant: two tenants may each have a model "mlp", with versions of their own.
  std::map<std::string, Artifact> datasets, models;
  std::map<std::string, CacheEntry> cache;  // cache key -> the result it reuses
  uint64_t next_run_seq = 1;
  uint64_t next_queue_seq = 1;
  uint64_t container_counter = 0;  // containers ever requested
  // Launch failures since the last container registered, for the pool's back-off.
  int launch_failures_in_row = 0;
  TimePoint last_launch_failure{};
  TimePoint last_scale_up{};  // the pool's last demand-driven round
  uint64_t gangs_placed = 0;  // picks each gang's MASTER_PORT
  // Runs folded into the read model (archive.h), by phase name: they are no longer
  // in `runs`. Empty when nothing archives (the decider's unit tests).
  std::map<std::string, uint64_t> archived;
  // Retention (OutputsExpired, LogsExpired) by tenant.
  std::map<std::string, TenantExpired> expired;

  const Run* FindRun(std::string_view id) const;
  Run* FindRun(std::string_view id);
  const WorkflowVersion* FindWorkflow(std::string_view name, int version /*0=latest*/) const;
  // The attempt with this id, or null.
  const Attempt* FindAttempt(std::string_view attempt_id) const;
  // The worker with this task id (and its attempt), or null.
  const Worker* FindWorker(std::string_view task_id, const Attempt** attempt = nullptr) const;
};

// The key of a tenant's data set or model in State::datasets / State::models:
// "<tenant>/<name>" (tenant names hold no '/').
std::string ArtifactKey(std::string_view tenant, std::string_view name);
// The version of model `name` that a ModelVersionValidated of `run` (saying
// `event_version`) attaches metrics to: the one the run registered under the name (it
// differs from the event's only in histories written when names were global).
int ValidatedVersion(const Run& run, const std::string& name, int event_version);
// How retention names a version that keeps a folder: "model mlp v2", "data set rows v1"
// (`key` an ArtifactKey; the tenant is left out).
std::string ArtifactLabel(bool model, std::string_view key, int version);
// Splits an ArtifactKey into (tenant, name).
std::pair<std::string, std::string> SplitArtifactKey(std::string_view key);

// Applies one durable event. Unknown types are ignored (forward compatibility);
// events about attempts, steps or containers that no longer match the state are
// ignored (decide cannot produce them, but a hand-edited log must not crash
// replay). A fact that cannot be applied is kCorruption naming the position and
// the field, and replay stops there instead of dropping it: data that is not an
// object, a WorkflowRegistered whose definition cannot run or whose version does
// not follow the last, a RunSubmitted without a run id or naming a workflow
// version never registered. Stored definitions are rebuilt as stored
// (ParseStoredDefinition), not re-validated against today's rules.
[[nodiscard]] Status Evolve(State& state, const RecordedEvent& event);

}  // namespace epoch::engine
