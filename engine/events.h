// Event vocabulary of the engine: type names (past tense), stream names, and the
// decided-but-not-yet-durable form of an event. Each payload is a struct in
// engine/event_types.h (fields, version, upcasting); the comments here sketch them.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "common/clock.h"
#include "common/json.h"

namespace epoch::engine {

namespace ev {
// Workflows
inline constexpr std::string_view kWorkflowRegistered = "WorkflowRegistered";  // {name, version, definition, digest}
// Runs (stream run-<id>)
inline constexpr std::string_view kRunSubmitted = "RunSubmitted";  // {run, workflow, version, digest, params, labels, tenant, submitter, idempotency_key, priority}
inline constexpr std::string_view kStepReady = "StepReady";        // {step}
inline constexpr std::string_view kStepSkipped = "StepSkipped";    // {step, reason}
inline constexpr std::string_view kRunSucceeded = "RunSucceeded";  // {}
inline constexpr std::string_view kRunFailed = "RunFailed";        // {step, reason}
inline constexpr std::string_view kRunCancelRequested = "RunCancelRequested";  // {by}
inline constexpr std::string_view kRunCancelled = "RunCancelled";              // {}
inline constexpr std::string_view kRunRetryRequested = "RunRetryRequested";    // {steps, by}
// Jobs: one attempt of one step (stream run-<id>)
inline constexpr std::string_view kJobQueued = "JobQueued";  // {run, step, attempt, resources, argv, env, timeout_ms, cache?: {key, inputs, miss}, trial?, params?}
inline constexpr std::string_view kJobAssigned =
    "JobAssigned";  // {step, attempt, container, gpus, checkpoint?}
inline constexpr std::string_view kJobStarted = "JobStarted";    // {step, attempt, container}
inline constexpr std::string_view kJobSucceeded = "JobSucceeded";  // {step, attempt, exit_code, metrics, outputs, usage}
inline constexpr std::string_view kJobFailed = "JobFailed";  // {step, attempt, exit_code, signal, reason, usage}
inline constexpr std::string_view kJobTimedOut = "JobTimedOut";  // {step, attempt, usage}
inline constexpr std::string_view kJobCancelled = "JobCancelled";  // {step, attempt, reason, usage}
inline constexpr std::string_view kJobWorkerFinished = "JobWorkerFinished";  // {step, attempt, rank, state, exit_code, signal, reason, usage}
// A cached step whose key has a usable entry: succeeded without running, with the
// source attempt's outputs and metrics (cache.h).
inline constexpr std::string_view kJobCacheHit = "JobCacheHit";  // {step, attempt, key, source_run, source_step, source_attempt, outputs, metrics, argv, env, resources}
// A swept step's trials are all done: the best by the objective becomes the step's
// result (best_trial null and a reason when no trial produced the metric).
inline constexpr std::string_view kStepSweepCompleted =
    "StepSweepCompleted";  // {step, trials, succeeded, failed, stopped?, metric, goal, best_trial,
                           // best_attempt, best_params, best_value, reason?}
// Early stopping (workflows/asha.h): a running trial of an asha/hyperband sweep judged
// at a rung of its bracket, from a live metric point carrying both the resource and
// the objective's metric. Promoted: it goes on. Stopped: the agent is told to cancel
// it (SIGTERM, then the grace), and it is no candidate for the sweep's best.
inline constexpr std::string_view kTrialPromoted =
    "TrialPromoted";  // {step, attempt, trial, bracket, rung, milestone, resource, progress, point,
                      // metric, value, cutoff?, compared, reason}
inline constexpr std::string_view kTrialStopped = "TrialStopped";  // the same
// Preemption by priority (scheduler.preemption): a running attempt gives way to the
// queued attempt `by` of a higher-priority run that fits nowhere else; the agent is told
// to cancel it (SIGTERM, grace), and its step is queued again at once (resuming from
// its checkpoint) without counting against retry.limit. A gang goes as a whole.
inline constexpr std::string_view kJobPreempted =
    "JobPreempted";  // {step, attempt, by, priority, by_priority, reason}
// An elastic gang (workers {min, max}) changes size: it grows when room for more workers
// has freed (the attempt is cancelled and queued again, to be placed as wide as fits),
// or shrinks when a worker's container is lost while `min` remain (queued again rather
// than failed). Either way the ranks restart from the checkpoint with the new
// WORLD_SIZE (the torchrun model), and the change is not a try.
inline constexpr std::string_view kGangResized =
    "GangResized";  // {step, attempt, world_size, from, members, reason}
inline constexpr std::string_view kJobRetryScheduled = "JobRetryScheduled";  // {step, attempt, not_before}
// Live metrics: a batch of points an attempt (or a gang rank) appended to $EPOCH_METRICS,
// numbered from `from` within its series; totals of what the agent skipped or dropped
// over the cap, and whether the cap was reached.
inline constexpr std::string_view kMetricsRecorded =
    "MetricsRecorded";  // {step, attempt, rank?, from, points, skipped, dropped, truncated}
// A checkpoint a step declared in $EPOCH_CHECKPOINT_DIR; the next attempt of the step
// (of the trial) resumes from the latest (JobAssigned's checkpoint).
inline constexpr std::string_view kCheckpointSaved =
    "CheckpointSaved";  // {step, attempt, rank?, trial?, file, sha256, size, epoch?}
// Lineage (stream run-<id>): a succeeded step's outputs as a version of a data set
// or model; the version is the existing one with the same digest, else the next.
inline constexpr std::string_view kDatasetVersionRegistered = "DatasetVersionRegistered";  // {name, version, digest, step, attempt, outputs}
inline constexpr std::string_view kModelVersionRegistered = "ModelVersionRegistered";  // {name, version, digest, step, attempt, outputs, workflow, workflow_version, params, datasets: [{name, version}]}
inline constexpr std::string_view kModelVersionValidated = "ModelVersionValidated";  // {name, version, step, metrics}
// Containers (stream container-<id>)
inline constexpr std::string_view kContainerRequested = "ContainerRequested";  // {container, backend, spec, reason}
inline constexpr std::string_view kContainerLaunched = "ContainerLaunched";    // {container, handle}
inline constexpr std::string_view kContainerRegistered = "ContainerRegistered";  // {container, backend, handle, host, pid, cpu_millis, memory_bytes, gpus}
inline constexpr std::string_view kContainerLost = "ContainerLost";        // {container, reason}
inline constexpr std::string_view kContainerReleased = "ContainerReleased";  // {container, reason}
// Cache (stream cache)
inline constexpr std::string_view kCacheInvalidated = "CacheInvalidated";  // {keys, workflow, step, by}
// Master (stream master)
inline constexpr std::string_view kLeaderElected = "LeaderElected";  // {epoch, node, address}
// Retention (stream run-<id>): files of a finished run past its tenant's
// retention.outputs / retention.logs were deleted (attempt 0: the step's checkpoints).
inline constexpr std::string_view kOutputsExpired =
    "OutputsExpired";  // {files: [{step, attempt, bytes}], bytes, horizon}
inline constexpr std::string_view kLogsExpired =
    "LogsExpired";  // {files: [{step, attempt, bytes}], bytes, horizon}

// Every type above. tests/golden_test fails when one of them appears in no golden
// history (tests/golden/): add the type here, and a history that has it.
inline constexpr std::string_view kAllTypes[] = {kWorkflowRegistered,
                                                 kRunSubmitted,
                                                 kStepReady,
                                                 kStepSkipped,
                                                 kRunSucceeded,
                                                 kRunFailed,
                                                 kRunCancelRequested,
                                                 kRunCancelled,
                                                 kRunRetryRequested,
                                                 kJobQueued,
                                                 kJobAssigned,
                                                 kJobStarted,
                                                 kJobSucceeded,
                                                 kJobFailed,
                                                 kJobTimedOut,
                                                 kJobCancelled,
                                                 kJobWorkerFinished,
                                                 kJobCacheHit,
                                                 kStepSweepCompleted,
                                                 kJobRetryScheduled,
                                                 kMetricsRecorded,
                                                 kCheckpointSaved,
                                                 kDatasetVersionRegistered,
                                                 kModelVersionRegistered,
                                                 kModelVersionValidated,
                                                 kContainerRequested,
                                                 kContainerLaunched,
                                                 kContainerRegistered,
                                                 kContainerLost,
                                                 kContainerReleased,
                                                 kCacheInvalidated,
                                                 kLeaderElected,
                                                 kOutputsExpired,
                                                 kLogsExpired,
                                                 kTrialPromoted,
                                                 kTrialStopped,
                                                 kJobPreempted,
                                                 kGangResized};
}  // namespace ev

inline std::string RunStream(std::string_view run) { return "run-" + std::string(run); }
inline std::string WorkflowStream(std::string_view name) { return "workflow-" + std::string(name); }
inline std::string ContainerStream(std::string_view id) { return "container-" + std::string(id); }
inline constexpr std::string_view kMasterStream = "master";
inline constexpr std::string_view kCacheStream = "cache";

// An event as decided: stream, type and payload. It becomes a RecordedEvent once
// the writer has placed it in the log.
struct Event {
  std::string stream;
  std::string type;
  Json data;
  std::string actor = "system";
};

// An event with its place in the log, as evolve sees it (live or in replay).
struct RecordedEvent {
  uint64_t position = 0;
  std::string stream;
  std::string type;
  Json data;
  std::string actor;
  TimePoint time;
  uint64_t epoch = 0;
  // The payload's version: what the envelope says, and after FromStored's upcast
  // today's version of the type. 0: written by this Epoch (today's version).
  uint32_t schema = 0;
  // The payload as the store holds it (its JSON text, at version `schema`), for a
  // replayed event whose `data` was left unparsed (null): ev::DecodeEvent then reads
  // the text itself, and names any problem with it as parsing it would have.
  std::optional<std::string> text = std::nullopt;
};

}  // namespace epoch::engine
