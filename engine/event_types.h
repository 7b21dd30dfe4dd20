// The payload of every event type as a struct, each with its field list (common/fields.h)
// and its version. Writers build these and MakeEvent encodes them; replay decodes the
// stored JSON back into them (DecodeEvent) and evolve applies one overload per type, so
// a field's name and type are written down once. A payload that does not decode stops
// replay with kCorruption naming the event's position and the field: replay never
// substitutes a default for a missing or mistyped field.
//
// Versions. Each type carries kVersion, the payload version it writes (the envelope's
// `schema`). A stored payload of an older version is upcast on read (Upcast, below:
// one small step per version change); one of a newer version is refused. Version
// history (the golden histories in tests/golden/ hold each):
//   WorkflowRegistered v2: `tenant` always written (v1 left it out for the default
//                          tenant, read as "default").
//   JobQueued v2:          `workers` always written (v1 left it out for 1).
//   Every other type is at v1.
//
// The field lists are also the documentation of each payload: docs/architecture.md
// lists them in words.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "common/fields.h"
#include "common/json.h"
#include "common/status.h"
#include "engine/events.h"

namespace epoch::engine::ev {

using fields::Arr;
using fields::F;
using fields::Obj;

// ---- shared parts ----

// A step's resources as the scheduler reserves them.
struct ResourceSpec {
  int64_t cpu_millis = 0;
  int64_t memory_bytes = 0;
  int gpus = 0;
  static constexpr auto Fields() {
    return std::tuple{F("cpu_millis", &ResourceSpec::cpu_millis),
                      F("memory_bytes", &ResourceSpec::memory_bytes),
                      F("gpus", &ResourceSpec::gpus)};
  }
};

// The agent's account of a step's log.
struct LogInfo {
  int64_t bytes = 0;
  bool truncated = false;
  std::optional<int64_t> dropped_bytes{};
  static constexpr auto Fields() {
    return std::tuple{F("bytes", &LogInfo::bytes), F("truncated", &LogInfo::truncated),
                      F("dropped_bytes", &LogInfo::dropped_bytes)};
  }
};

// A read-only path a step sees beyond its workspace.
struct Mount {
  std::string path{};
  bool read_only = true;
  static constexpr auto Fields() {
    return std::tuple{F("path", &Mount::path), F("read_only", &Mount::read_only)};
  }
};

// The cache decision for a cached step: its key and inputs, or why nothing is reused.
struct CacheDecision {
  std::optional<std::string> key{};
  std::optional<Json> inputs{};
  std::optional<std::string> miss{};
  static constexpr auto Fields() {
    return std::tuple{F("key", &CacheDecision::key), Obj("inputs", &CacheDecision::inputs),
                      F("miss", &CacheDecision::miss)};
  }
};

// Where one rank of a gang runs.
struct Placement {
  int rank = 0;
  int local_rank = 0;
  std::string container{};
  Json gpus = Json::array();
  Json gpu_uuids = Json::array();
  static constexpr auto Fields() {
    return std::tuple{F("rank", &Placement::rank), F("local_rank", &Placement::local_rank),
                      F("container", &Placement::container), Arr("gpus", &Placement::gpus),
                      Arr("gpu_uuids", &Placement::gpu_uuids)};
  }
};

// ---- workflows (stream workflow-<name>) ----

struct WorkflowRegistered {
  static constexpr std::string_view kType = kWorkflowRegistered;
  static constexpr uint32_t kVersion = 2;
  std::string name{};
  int version = 0;
  Json definition{};  // the definition as submitted (a fact: replay does not re-validate it)
  std::string digest{};
  std::string tenant{};
  std::optional<std::string> idempotency_key{};
  std::optional<std::string> request_digest{};
  static constexpr auto Fields() {
    return std::tuple{F("name", &WorkflowRegistered::name),
                      F("version", &WorkflowRegistered::version),
                      Obj("definition", &WorkflowRegistered::definition),
                      F("digest", &WorkflowRegistered::digest),
                      F("tenant", &WorkflowRegistered::tenant),
                      F("idempotency_key", &WorkflowRegistered::idempotency_key),
                      F("request_digest", &WorkflowRegistered::request_digest)};
  }
};

// ---- runs (stream run-<id>) ----

struct RunSubmitted {
  static constexpr std::string_view kType = kRunSubmitted;
  static constexpr uint32_t kVersion = 1;
  std::string run{};
  std::string workflow{};
  int version = 0;
  std::string digest{};
  Json params = Json::object();
  Json labels = Json::object();
  std::string tenant{};
  std::string submitter{};
  int priority = 0;
  std::optional<std::string> idempotency_key{};
  std::optional<std::string> request_digest{};
  static constexpr auto Fields() {
    return std::tuple{F("run", &RunSubmitted::run),
                      F("workflow", &RunSubmitted::workflow),
                      F("version", &RunSubmitted::version),
                      F("digest", &RunSubmitted::digest),
                      Obj("params", &RunSubmitted::params),
                      Obj("labels", &RunSubmitted::labels),
                      F("tenant", &RunSubmitted::tenant),
                      F("submitter", &RunSubmitted::submitter),
                      F("priority", &RunSubmitted::priority),
                      F("idempotency_key", &RunSubmitted::idempotency_key),
                      F("request_digest", &RunSubmitted::request_digest)};
  }
};

struct StepReady {
  static constexpr std::string_view kType = kStepReady;
  static constexpr uint32_t kVersion = 1;
  std::string step{};
  static constexpr auto Fields() { return std::tuple{F("step", &StepReady::step)}; }
};

struct StepSkipped {
  static constexpr std::string_view kType = kStepSkipped;
  static constexpr uint32_t kVersion = 1;
  std::string step{};
  std::string reason{};
  static constexpr auto Fields() {
    return std::tuple{F("step", &StepSkipped::step), F("reason", &StepSkipped::reason)};
  }
};

struct RunSucceeded {
  static constexpr std::string_view kType = kRunSucceeded;
  static constexpr uint32_t kVersion = 1;
  static constexpr auto Fields() { return std::tuple{}; }
};

struct RunFailed {
  static constexpr std::string_view kType = kRunFailed;
  static constexpr uint32_t kVersion = 1;
  std::string step{};  // the step whose failure failed the run
  std::string reason{};
  static constexpr auto Fields() {
    return std::tuple{F("step", &RunFailed::step), F("reason", &RunFailed::reason)};
  }
};

struct RunCancelRequested {
  static constexpr std::string_view kType = kRunCancelRequested;
  static constexpr uint32_t kVersion = 1;
  std::string by{};
  static constexpr auto Fields() { return std::tuple{F("by", &RunCancelRequested::by)}; }
};

struct RunCancelled {
  static constexpr std::string_view kType = kRunCancelled;
  static constexpr uint32_t kVersion = 1;
  static constexpr auto Fields() { return std::tuple{}; }
};

struct RunRetryRequested {
  static constexpr std::string_view kType = kRunRetryRequested;
  static constexpr uint32_t kVersion = 1;
  std::vector<std::string> steps{};
  std::string by{};
  static constexpr auto Fields() {
    return std::tuple{F("steps", &RunRetryRequested::steps), F("by", &RunRetryRequested::by)};
  }
};

// ---- jobs: one attempt of one step (stream run-<id>) ----

struct JobQueued {
  static constexpr std::string_view kType = kJobQueued;
  static constexpr uint32_t kVersion = 2;
  std::string run{};
  std::string step{};
  int attempt = 0;
  ResourceSpec resources{};
  std::vector<std::string> argv{};
  Json env = Json::object();         // name -> value
  int64_t timeout_ms = 0;            // 0: none
  int workers = 1;                   // a gang's size (v2; v1 wrote it only above 1); elastic: max
  std::optional<int> workers_min{};  // an elastic gang's least size
  // An elastic gang that preemption took down: the most it starts with this time.
  std::optional<int> workers_cap{};
  std::optional<std::vector<Mount>> mounts{};
  std::optional<CacheDecision> cache{};
  std::optional<int> trial{};  // a sweep's trial, with its parameters
  std::optional<Json> params{};
  static constexpr auto Fields() {
    return std::tuple{F("run", &JobQueued::run),
                      F("step", &JobQueued::step),
                      F("attempt", &JobQueued::attempt),
                      F("resources", &JobQueued::resources),
                      F("argv", &JobQueued::argv),
                      Obj("env", &JobQueued::env),
                      F("timeout_ms", &JobQueued::timeout_ms),
                      F("workers", &JobQueued::workers),
                      F("workers_min", &JobQueued::workers_min),
                      F("workers_cap", &JobQueued::workers_cap),
                      F("mounts", &JobQueued::mounts),
                      F("cache", &JobQueued::cache),
                      F("trial", &JobQueued::trial),
                      Obj("params", &JobQueued::params)};
  }
};

// One container (`container`, `gpus`, `gpu_uuids`), or for a gang the `placements` of
// every rank (`container` is rank 0's) and torch.distributed's rendezvous.
struct JobAssigned {
  static constexpr std::string_view kType = kJobAssigned;
  static constexpr uint32_t kVersion = 1;
  std::string step{};
  int attempt = 0;
  std::string container{};
  std::optional<Json> gpus{};
  std::optional<Json> gpu_uuids{};
  std::optional<std::vector<Placement>> placements{};
  std::optional<std::string> master_addr{};
  std::optional<int> master_port{};
  // The checkpoint the attempt starts from (CheckpointSaved's payload and its attempt),
  // when the step has one.
  std::optional<Json> checkpoint{};
  static constexpr auto Fields() {
    return std::tuple{F("step", &JobAssigned::step),
                      F("attempt", &JobAssigned::attempt),
                      F("container", &JobAssigned::container),
                      Arr("gpus", &JobAssigned::gpus),
                      Arr("gpu_uuids", &JobAssigned::gpu_uuids),
                      F("placements", &JobAssigned::placements),
                      F("master_addr", &JobAssigned::master_addr),
                      F("master_port", &JobAssigned::master_port),
                      Obj("checkpoint", &JobAssigned::checkpoint)};
  }
};

struct JobStarted {
  static constexpr std::string_view kType = kJobStarted;
  static constexpr uint32_t kVersion = 1;
  std::string step{};
  int attempt = 0;
  std::string container{};
  std::optional<int> rank{};  // a gang worker's start
  static constexpr auto Fields() {
    return std::tuple{F("step", &JobStarted::step), F("attempt", &JobStarted::attempt),
                      F("container", &JobStarted::container), F("rank", &JobStarted::rank)};
  }
};

struct JobSucceeded {
  static constexpr std::string_view kType = kJobSucceeded;
  static constexpr uint32_t kVersion = 1;
  std::string step{};
  int attempt = 0;
  std::optional<int> exit_code{};
  std::optional<int> signal{};
  Json usage = Json::object();
  Json metrics = Json::object();
  Json outputs = Json::array();
  std::optional<LogInfo> log{};
  std::optional<std::string> metrics_error{};
  std::optional<int> workers{};  // a gang's
  static constexpr auto Fields() {
    return std::tuple{F("step", &JobSucceeded::step),
                      F("attempt", &JobSucceeded::attempt),
                      F("exit_code", &JobSucceeded::exit_code),
                      F("signal", &JobSucceeded::signal),
                      Obj("usage", &JobSucceeded::usage),
                      Obj("metrics", &JobSucceeded::metrics),
                      Arr("outputs", &JobSucceeded::outputs),
                      F("log", &JobSucceeded::log),
                      F("metrics_error", &JobSucceeded::metrics_error),
                      F("workers", &JobSucceeded::workers)};
  }
};

// JobFailed, JobTimedOut and JobCancelled share one shape: how an attempt ended
// without success. `reason` "container_lost" on a JobFailed marks the attempt lost.
struct AttemptEnd {
  std::string step{};
  int attempt = 0;
  std::string reason{};
  std::optional<int> exit_code{};
  std::optional<int> signal{};
  std::optional<Json> usage{};
  std::optional<LogInfo> log{};
  std::optional<std::string> detail{};
  static constexpr auto EndFields() {
    return std::tuple{F("step", &AttemptEnd::step),     F("attempt", &AttemptEnd::attempt),
                      F("reason", &AttemptEnd::reason), F("exit_code", &AttemptEnd::exit_code),
                      F("signal", &AttemptEnd::signal), Obj("usage", &AttemptEnd::usage),
                      F("log", &AttemptEnd::log),       F("detail", &AttemptEnd::detail)};
  }
};
struct JobFailed : AttemptEnd {
  static constexpr std::string_view kType = kJobFailed;
  static constexpr uint32_t kVersion = 1;
  static constexpr auto Fields() { return EndFields(); }
};
struct JobTimedOut : AttemptEnd {
  static constexpr std::string_view kType = kJobTimedOut;
  static constexpr uint32_t kVersion = 1;
  static constexpr auto Fields() { return EndFields(); }
};
struct JobCancelled : AttemptEnd {
  static constexpr std::string_view kType = kJobCancelled;
  static constexpr uint32_t kVersion = 1;
  static constexpr auto Fields() { return EndFields(); }
};

// One rank of a gang ended (`state`: succeeded, failed, timed_out, cancelled, lost);
// rank 0's success carries the attempt's metrics and outputs.
struct JobWorkerFinished {
  static constexpr std::string_view kType = kJobWorkerFinished;
  static constexpr uint32_t kVersion = 1;
  std::string step{};
  int attempt = 0;
  int rank = 0;
  std::string state{};
  std::optional<std::string> reason{};
  std::optional<int> exit_code{};
  std::optional<int> signal{};
  std::optional<Json> usage{};
  std::optional<LogInfo> log{};
  std::optional<Json> metrics{};
  std::optional<Json> outputs{};
  static constexpr auto Fields() {
    return std::tuple{
        F("step", &JobWorkerFinished::step),        F("attempt", &JobWorkerFinished::attempt),
        F("rank", &JobWorkerFinished::rank),        F("state", &JobWorkerFinished::state),
        F("reason", &JobWorkerFinished::reason),    F("exit_code", &JobWorkerFinished::exit_code),
        F("signal", &JobWorkerFinished::signal),    Obj("usage", &JobWorkerFinished::usage),
        F("log", &JobWorkerFinished::log),          Obj("metrics", &JobWorkerFinished::metrics),
        Arr("outputs", &JobWorkerFinished::outputs)};
  }
};

struct JobCacheHit {
  static constexpr std::string_view kType = kJobCacheHit;
  static constexpr uint32_t kVersion = 1;
  std::string step{};
  int attempt = 0;
  std::string key{};
  Json inputs = Json::object();
  std::string source_run{};
  std::string source_step{};
  int source_attempt = 0;
  std::string source_finished_at{};
  Json outputs = Json::array();
  Json metrics = Json::object();
  ResourceSpec resources{};
  std::vector<std::string> argv{};
  Json env = Json::object();
  std::optional<int> trial{};
  std::optional<Json> params{};
  static constexpr auto Fields() {
    return std::tuple{F("step", &JobCacheHit::step),
                      F("attempt", &JobCacheHit::attempt),
                      F("key", &JobCacheHit::key),
                      Obj("inputs", &JobCacheHit::inputs),
                      F("source_run", &JobCacheHit::source_run),
                      F("source_step", &JobCacheHit::source_step),
                      F("source_attempt", &JobCacheHit::source_attempt),
                      F("source_finished_at", &JobCacheHit::source_finished_at),
                      Arr("outputs", &JobCacheHit::outputs),
                      Obj("metrics", &JobCacheHit::metrics),
                      F("resources", &JobCacheHit::resources),
                      F("argv", &JobCacheHit::argv),
                      Obj("env", &JobCacheHit::env),
                      F("trial", &JobCacheHit::trial),
                      Obj("params", &JobCacheHit::params)};
  }
};

// A swept step's trials are all done: the best by the objective, or (best_trial absent)
// the reason there is none.
struct StepSweepCompleted {
  static constexpr std::string_view kType = kStepSweepCompleted;
  static constexpr uint32_t kVersion = 1;
  std::string step{};
  int trials = 0;
  int succeeded = 0;
  int failed = 0;
  std::optional<int> stopped{};  // trials early stopping stopped (asha, hyperband)
  std::string metric{};
  std::string goal{};  // maximize | minimize
  std::optional<int> best_trial{};
  std::optional<int> best_attempt{};
  std::optional<Json> best_params{};
  std::optional<Json> best_value{};
  std::optional<std::string> reason{};
  static constexpr auto Fields() {
    return std::tuple{F("step", &StepSweepCompleted::step),
                      F("trials", &StepSweepCompleted::trials),
                      F("succeeded", &StepSweepCompleted::succeeded),
                      F("failed", &StepSweepCompleted::failed),
                      F("stopped", &StepSweepCompleted::stopped),
                      F("metric", &StepSweepCompleted::metric),
                      F("goal", &StepSweepCompleted::goal),
                      F("best_trial", &StepSweepCompleted::best_trial),
                      F("best_attempt", &StepSweepCompleted::best_attempt),
                      Obj("best_params", &StepSweepCompleted::best_params),
                      F("best_value", &StepSweepCompleted::best_value),
                      F("reason", &StepSweepCompleted::reason)};
  }
};

// TrialPromoted and TrialStopped (events.h): one judgement of a trial at a rung.
template <const std::string_view* Type>
struct TrialJudged {
  static constexpr std::string_view kType = *Type;
  static constexpr uint32_t kVersion = 1;
  std::string step{};
  int attempt = 0;
  int trial = 0;
  int bracket = 0;
  int rung = 0;            // index into the bracket's rungs
  double milestone = 0;    // the rung's resource, e.g. epoch 3
  std::string resource{};  // e.g. "epoch"
  double progress = 0;     // the resource the point reported
  int64_t point = 0;       // the point's number in the attempt's series
  std::string metric{};    // the objective's
  double value = 0;
  std::optional<double> cutoff{};  // absent for the first trial at a rung
  int compared = 0;                // trials judged at the rung before it
  std::string reason{};
  static constexpr auto Fields() {
    return std::tuple{
        F("step", &TrialJudged::step),         F("attempt", &TrialJudged::attempt),
        F("trial", &TrialJudged::trial),       F("bracket", &TrialJudged::bracket),
        F("rung", &TrialJudged::rung),         F("milestone", &TrialJudged::milestone),
        F("resource", &TrialJudged::resource), F("progress", &TrialJudged::progress),
        F("point", &TrialJudged::point),       F("metric", &TrialJudged::metric),
        F("value", &TrialJudged::value),       F("cutoff", &TrialJudged::cutoff),
        F("compared", &TrialJudged::compared), F("reason", &TrialJudged::reason)};
  }
};
using TrialPromoted = TrialJudged<&kTrialPromoted>;
using TrialStopped = TrialJudged<&kTrialStopped>;

struct JobPreempted {
  static constexpr std::string_view kType = kJobPreempted;
  static constexpr uint32_t kVersion = 1;
  std::string step{};
  int attempt = 0;
  std::string by{};  // the queued attempt it makes room for
  int priority = 0;  // its run's
  int by_priority = 0;
  std::string reason{};
  static constexpr auto Fields() {
    return std::tuple{F("step", &JobPreempted::step),
                      F("attempt", &JobPreempted::attempt),
                      F("by", &JobPreempted::by),
                      F("priority", &JobPreempted::priority),
                      F("by_priority", &JobPreempted::by_priority),
                      F("reason", &JobPreempted::reason)};
  }
};

struct GangResized {
  static constexpr std::string_view kType = kGangResized;
  static constexpr uint32_t kVersion = 1;
  std::string step{};
  int attempt = 0;                     // the attempt that ends for it
  int world_size = 0;                  // the size asked for next
  int from = 0;                        // its size
  std::vector<std::string> members{};  // the containers of the workers that go on
  std::string reason{};
  // Preemption took it down: the queued attempt whose room its workers make (ranks
  // world_size.. give theirs), and the runs' priorities as in JobPreempted.
  std::optional<std::string> by{};
  std::optional<int> priority{}, by_priority{};
  static constexpr auto Fields() {
    return std::tuple{F("step", &GangResized::step),
                      F("attempt", &GangResized::attempt),
                      F("world_size", &GangResized::world_size),
                      F("from", &GangResized::from),
                      F("members", &GangResized::members),
                      F("reason", &GangResized::reason),
                      F("by", &GangResized::by),
                      F("priority", &GangResized::priority),
                      F("by_priority", &GangResized::by_priority)};
  }
};

struct JobRetryScheduled {
  static constexpr std::string_view kType = kJobRetryScheduled;
  static constexpr uint32_t kVersion = 1;
  std::string step{};
  int attempt = 0;             // the attempt the retry will be
  std::string not_before{};    // RFC 3339
  std::string after_reason{};  // why the last attempt failed
  static constexpr auto Fields() {
    return std::tuple{F("step", &JobRetryScheduled::step),
                      F("attempt", &JobRetryScheduled::attempt),
                      F("not_before", &JobRetryScheduled::not_before),
                      F("after_reason", &JobRetryScheduled::after_reason)};
  }
};

// ---- live metrics and checkpoints (stream run-<id>) ----

// A batch of live metric points (events.h). `points` are objects of numbers, numbered
// from `from` within the attempt's (rank's) series; `next` is the number the next
// batch starts at (past `points` when the master's caps dropped some: `capped`).
struct MetricsRecorded {
  static constexpr std::string_view kType = kMetricsRecorded;
  static constexpr uint32_t kVersion = 1;
  std::string step{};
  int attempt = 0;
  std::optional<int> rank{};  // a gang worker's series
  int64_t from = 0;
  Json points = Json::array();
  int64_t next = 0;
  int64_t skipped = 0;  // the series' totals so far
  int64_t dropped = 0;
  bool truncated = false;
  bool capped = false;
  static constexpr auto Fields() {
    return std::tuple{
        F("step", &MetricsRecorded::step),           F("attempt", &MetricsRecorded::attempt),
        F("rank", &MetricsRecorded::rank),           F("from", &MetricsRecorded::from),
        Arr("points", &MetricsRecorded::points),     F("next", &MetricsRecorded::next),
        F("skipped", &MetricsRecorded::skipped),     F("dropped", &MetricsRecorded::dropped),
        F("truncated", &MetricsRecorded::truncated), F("capped", &MetricsRecorded::capped)};
  }
};

// A checkpoint a step declared in its checkpoint dir. `rank`: the gang rank whose agent
// saw it first (a gang's ranks share the dir, whichever wrote it).
struct CheckpointSaved {
  static constexpr std::string_view kType = kCheckpointSaved;
  static constexpr uint32_t kVersion = 1;
  std::string step{};
  int attempt = 0;
  std::optional<int> rank{};
  std::optional<int> trial{};
  std::string file{};  // in the step's checkpoint dir
  std::string sha256{};
  int64_t size = 0;
  std::optional<int64_t> epoch{};
  static constexpr auto Fields() {
    return std::tuple{F("step", &CheckpointSaved::step), F("attempt", &CheckpointSaved::attempt),
                      F("rank", &CheckpointSaved::rank), F("trial", &CheckpointSaved::trial),
                      F("file", &CheckpointSaved::file), F("sha256", &CheckpointSaved::sha256),
                      F("size", &CheckpointSaved::size), F("epoch", &CheckpointSaved::epoch)};
  }
};

// ---- lineage (stream run-<id>) ----

struct DatasetVersionRegistered {
  static constexpr std::string_view kType = kDatasetVersionRegistered;
  static constexpr uint32_t kVersion = 1;
  std::string name{};
  int version = 0;
  std::string digest{};
  std::string step{};
  int attempt = 0;
  Json outputs = Json::array();
  static constexpr auto Fields() {
    return std::tuple{F("name", &DatasetVersionRegistered::name),
                      F("version", &DatasetVersionRegistered::version),
                      F("digest", &DatasetVersionRegistered::digest),
                      F("step", &DatasetVersionRegistered::step),
                      F("attempt", &DatasetVersionRegistered::attempt),
                      Arr("outputs", &DatasetVersionRegistered::outputs)};
  }
};

struct ModelVersionRegistered {
  static constexpr std::string_view kType = kModelVersionRegistered;
  static constexpr uint32_t kVersion = 1;
  std::string name{};
  int version = 0;
  std::string digest{};
  std::string step{};
  int attempt = 0;
  Json outputs = Json::array();
  std::string workflow{};
  int workflow_version = 0;
  Json params = Json::object();
  Json datasets = Json::array();  // [{name, version, step}]
  static constexpr auto Fields() {
    return std::tuple{F("name", &ModelVersionRegistered::name),
                      F("version", &ModelVersionRegistered::version),
                      F("digest", &ModelVersionRegistered::digest),
                      F("step", &ModelVersionRegistered::step),
                      F("attempt", &ModelVersionRegistered::attempt),
                      Arr("outputs", &ModelVersionRegistered::outputs),
                      F("workflow", &ModelVersionRegistered::workflow),
                      F("workflow_version", &ModelVersionRegistered::workflow_version),
                      Obj("params", &ModelVersionRegistered::params),
                      Arr("datasets", &ModelVersionRegistered::datasets)};
  }
};

struct ModelVersionValidated {
  static constexpr std::string_view kType = kModelVersionValidated;
  static constexpr uint32_t kVersion = 1;
  std::string name{};
  int version = 0;
  std::string step{};
  Json metrics = Json::object();
  static constexpr auto Fields() {
    return std::tuple{
        F("name", &ModelVersionValidated::name), F("version", &ModelVersionValidated::version),
        F("step", &ModelVersionValidated::step), Obj("metrics", &ModelVersionValidated::metrics)};
  }
};

// ---- containers (stream container-<id>) ----

struct ContainerRequested {
  static constexpr std::string_view kType = kContainerRequested;
  static constexpr uint32_t kVersion = 1;
  std::string container{};
  std::string backend{};
  ResourceSpec spec{};
  std::string reason{};
  std::optional<std::string> credential_sha256{};  // the container's credential, hashed
  static constexpr auto Fields() {
    return std::tuple{
        F("container", &ContainerRequested::container), F("backend", &ContainerRequested::backend),
        F("spec", &ContainerRequested::spec), F("reason", &ContainerRequested::reason),
        F("credential_sha256", &ContainerRequested::credential_sha256)};
  }
};

struct ContainerLaunched {
  static constexpr std::string_view kType = kContainerLaunched;
  static constexpr uint32_t kVersion = 1;
  std::string container{};
  std::string handle{};
  static constexpr auto Fields() {
    return std::tuple{F("container", &ContainerLaunched::container),
                      F("handle", &ContainerLaunched::handle)};
  }
};

struct ContainerRegistered {
  static constexpr std::string_view kType = kContainerRegistered;
  static constexpr uint32_t kVersion = 1;
  std::string container{};
  std::string backend{};
  std::string handle{};
  std::string host{};
  int64_t pid = 0;
  int64_t cpu_millis = 0;
  int64_t memory_bytes = 0;
  Json gpus = Json::array();
  Json cuda = Json::object();
  std::optional<Json> isolation{};
  std::optional<Json> enforcement{};
  static constexpr auto Fields() {
    return std::tuple{F("container", &ContainerRegistered::container),
                      F("backend", &ContainerRegistered::backend),
                      F("handle", &ContainerRegistered::handle),
                      F("host", &ContainerRegistered::host),
                      F("pid", &ContainerRegistered::pid),
                      F("cpu_millis", &ContainerRegistered::cpu_millis),
                      F("memory_bytes", &ContainerRegistered::memory_bytes),
                      Arr("gpus", &ContainerRegistered::gpus),
                      F("cuda", &ContainerRegistered::cuda),
                      Obj("isolation", &ContainerRegistered::isolation),
                      Obj("enforcement", &ContainerRegistered::enforcement)};
  }
};

struct ContainerLost {
  static constexpr std::string_view kType = kContainerLost;
  static constexpr uint32_t kVersion = 1;
  std::string container{};
  std::string reason{};
  std::optional<bool> unschedulable{};  // its launch can never succeed
  static constexpr auto Fields() {
    return std::tuple{F("container", &ContainerLost::container),
                      F("reason", &ContainerLost::reason),
                      F("unschedulable", &ContainerLost::unschedulable)};
  }
};

struct ContainerReleased {
  static constexpr std::string_view kType = kContainerReleased;
  static constexpr uint32_t kVersion = 1;
  std::string container{};
  std::string reason{};
  static constexpr auto Fields() {
    return std::tuple{F("container", &ContainerReleased::container),
                      F("reason", &ContainerReleased::reason)};
  }
};

// ---- cache (stream cache) and master (stream master) ----

struct CacheInvalidated {
  static constexpr std::string_view kType = kCacheInvalidated;
  static constexpr uint32_t kVersion = 1;
  std::vector<std::string> keys{};
  std::string by{};
  std::optional<std::string> tenant{};
  std::optional<std::string> workflow{};
  std::optional<std::string> step{};
  // Why, when the master evicted them (cache.maxEntries) rather than a user asking.
  std::optional<std::string> reason{};
  static constexpr auto Fields() {
    return std::tuple{
        F("keys", &CacheInvalidated::keys),     F("by", &CacheInvalidated::by),
        F("tenant", &CacheInvalidated::tenant), F("workflow", &CacheInvalidated::workflow),
        F("step", &CacheInvalidated::step),     F("reason", &CacheInvalidated::reason)};
  }
};

struct LeaderElected {
  static constexpr std::string_view kType = kLeaderElected;
  static constexpr uint32_t kVersion = 1;
  uint64_t epoch = 0;
  std::string node{};
  std::string address{};
  static constexpr auto Fields() {
    return std::tuple{F("epoch", &LeaderElected::epoch), F("node", &LeaderElected::node),
                      F("address", &LeaderElected::address)};
  }
};

// ---- retention (stream run-<id>) ----

// What retention deleted of one attempt: its folder runs/<run>/<step>/<attempt>/
// (outputs and all) for OutputsExpired, its log for LogsExpired. Attempt 0 in
// OutputsExpired: the step's checkpoints folder.
struct ExpiredFiles {
  std::string step{};
  int attempt = 0;
  int64_t bytes = 0;  // as found on disk just before deletion
  static constexpr auto Fields() {
    return std::tuple{F("step", &ExpiredFiles::step), F("attempt", &ExpiredFiles::attempt),
                      F("bytes", &ExpiredFiles::bytes)};
  }
};

// OutputsExpired and LogsExpired: the same payload under two types.
template <const std::string_view* Type>
struct FilesExpired {
  static constexpr std::string_view kType = *Type;
  static constexpr uint32_t kVersion = 1;
  std::vector<ExpiredFiles> files{};
  int64_t bytes = 0;      // the sum of files[].bytes
  std::string horizon{};  // the retention in force, e.g. "720h"
  static constexpr auto Fields() {
    return std::tuple{F("files", &FilesExpired::files), F("bytes", &FilesExpired::bytes),
                      F("horizon", &FilesExpired::horizon)};
  }
};
using OutputsExpired = FilesExpired<&kOutputsExpired>;
using LogsExpired = FilesExpired<&kLogsExpired>;

// Every payload, in kAllTypes' order.
using Payload =
    std::variant<WorkflowRegistered, RunSubmitted, StepReady, StepSkipped, RunSucceeded, RunFailed,
                 RunCancelRequested, RunCancelled, RunRetryRequested, JobQueued, JobAssigned,
                 JobStarted, JobSucceeded, JobFailed, JobTimedOut, JobCancelled, JobWorkerFinished,
                 JobCacheHit, StepSweepCompleted, JobRetryScheduled, MetricsRecorded,
                 CheckpointSaved, DatasetVersionRegistered, ModelVersionRegistered,
                 ModelVersionValidated, ContainerRequested, ContainerLaunched, ContainerRegistered,
                 ContainerLost, ContainerReleased, CacheInvalidated, LeaderElected, OutputsExpired,
                 LogsExpired, TrialPromoted, TrialStopped, JobPreempted, GangResized>;

template <class T>
concept PayloadType = requires {
  T::kType;
  T::kVersion;
  T::Fields();
};

// The version this Epoch writes for `type`; 0 for a type it does not know.
uint32_t CurrentVersion(std::string_view type);

// `data`, stored at payload version `from` of `type`, in today's shape: each step
// between versions applied in order. kFailedPrecondition for a version above today's
// (a newer Epoch wrote it) or an unknown type; kCorruption (naming the field) when an
// old payload cannot be upcast.
Result<Json> Upcast(std::string_view type, uint32_t from, Json data);

// The typed payload of a recorded event: upcast, then decoded. Errors are kCorruption
// "event <position> (<type>): field <path>: <problem>", or Upcast's.
//
// An event that carries its stored text (e.text, data left null) is decoded from that:
// a payload of today's version straight from the text (fields::DecodeText, no Json
// document), anything else as replay reads a stored payload: ParseJson (nesting up to
// kMaxPayloadDepth; "field data: malformed JSON ..."), Upcast, an object ("field data:
// not a JSON object"), then decoded. Either way the result, or the error, is the one
// that parsing the text into e.data and decoding that would give.
inline constexpr int kMaxPayloadDepth = 256;
Result<Payload> DecodeEvent(const RecordedEvent& e);

// A decided event of payload `p` on `stream`: the writer stamps the payload's version.
template <PayloadType T>
Event MakeEvent(std::string stream, const T& p, std::string actor = "system") {
  return Event{std::move(stream), std::string(T::kType), fields::Encode(p), std::move(actor)};
}

}  // namespace epoch::engine::ev
