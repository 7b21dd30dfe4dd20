// The decider: pure functions from (State, Command, context) to events.
//
//   Decide      validates a command against the state and returns its events.
//   AdvanceRun  the run's own logic after something changed: steps whose
//               dependencies are met become ready (or are skipped by `when`),
//               failed attempts are retried or fail the run, a cancel settles.
//   Schedule    places queued attempts on containers with room (best fit; fair
//               share between tenants, then FIFO by priority and submission within
//               a tenant; a tenant's GPUs are capped by tenants.<name>.maxGpus).
//   OnTick      due retries, expired container leases, the pool's size.
//
// None of them reads a clock, the environment or the store: time, configuration
// and ids arrive in the context, so replaying the same events gives the same
// decisions. The writer (engine.h) evolves each returned event into its working
// state before asking again, until nothing more follows (a fixpoint).
//
// Thread-safety: pure functions.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "common/clock.h"
#include "common/status.h"
#include "engine/cache.h"
#include "engine/commands.h"
#include "engine/credentials.h"
#include "engine/events.h"
#include "engine/state.h"

namespace epoch::engine {

class RunArchive;

struct EngineConfig {
  std::string data_dir;            // runs/, logs/ live here (absolute)
  std::string backend = "local";
  int max_replicas = 10;           // sig.maxReplicas
  int min_replicas = 0;            // sig.minReplicas: kept even when idle
  int allocation_unit = 2;         // sig.ssAllocationUnit: containers per scale-up round
  Micros allocation_interval = std::chrono::seconds(120);  // sig.ssAllocationInterval
  Micros idle_timeout = std::chrono::minutes(10);          // sig.idleTimeout
  int64_t container_cpu_millis = 1000;          // sig.cpu
  int64_t container_memory_bytes = 2144LL << 20;  // sig.memory
  int container_gpus = 0;                       // sig.gpu
  Micros lease = std::chrono::seconds(10);           // executor.leaseTime
  Micros register_timeout = std::chrono::seconds(30);  // executor.registerTimeout
  Micros poll_timeout = std::chrono::milliseconds(1000);  // executor.pollTimeout
  Micros tick = std::chrono::milliseconds(100);
  int64_t grace_ms = 5000;  // SIGTERM -> SIGKILL grace given to agents
  // tenants.<name>.maxGpus: the GPUs one tenant's attempts may hold at once (a gang
  // counts every worker's). Absent: unlimited.
  std::map<std::string, int> tenant_max_gpus;
  // The OS user (`user` or `user:group`) a tenant's steps run as on the containers
  // (tenants.<name>.runAs), else default_run_as (executor.runAs). Empty: the agent's
  // own user.
  std::map<std::string, std::string> tenant_run_as;
  std::string default_run_as = "epoch-step";
  // Roots outside the tenant's own runs from which its steps may declare `inputs`
  // (tenants.<name>.inputRoots; absolute, normalised).
  std::map<std::string, std::vector<std::string>> tenant_input_roots;
  // A declared input larger than this is not hashed: the step's cache misses
  // (executor.maxInputBytes).
  uint64_t max_input_bytes = 16ULL << 30;
  // Each attempt's log is cut at this many bytes, and says so (executor.maxLogBytes;
  // 0: no cap).
  int64_t max_log_bytes = 1LL << 30;
  // A workflow of more steps is refused at registration (api.maxSteps; 0: no limit).
  size_t max_steps = 10000;
  // Live metrics (executor.metrics*): how often an agent ships a running step's new
  // points, and the caps of one series (an attempt's, or a gang rank's), past which
  // points are dropped and counted and the series says it is truncated.
  Micros metrics_interval = std::chrono::seconds(1);
  int64_t metrics_max_points = 100000;
  int64_t metrics_max_bytes = 16LL << 20;
  // Retention (retention.h): how long after a run ends its attempt folders and
  // checkpoints (retention.outputs) and its logs (retention.logs) are kept; 0: for
  // ever. Per tenant: tenants.<name>.retention.outputs|logs.
  Micros retention_outputs{0}, retention_logs{0};
  std::map<std::string, Micros> tenant_retention_outputs, tenant_retention_logs;
  // The step cache holds at most this many entries (cache.maxEntries): past it the
  // leader's tick evicts the least recently used, recording CacheInvalidated.
  size_t cache_max_entries = 10000;
  // Preemption by priority (scheduler.preemption = priority): a queued attempt that
  // fits nowhere may take the place of running attempts of lower-priority runs that
  // have run at least preemption_min_run_time (scheduler.preemptionMinRunTime).
  bool preemption = false;
  Micros preemption_min_run_time = std::chrono::minutes(5);
  // An elastic gang grows (restarting its ranks) only once it has run this long
  // (scheduler.elasticMinRunTime), so that freed room does not restart it over and over.
  Micros elastic_min_run_time = std::chrono::minutes(1);
};

// The OS user `tenant`'s steps run as (see EngineConfig::tenant_run_as).
std::string RunAsFor(const EngineConfig& config, const std::string& tenant);

struct DecideContext {
  TimePoint now;
  const EngineConfig* config;
  // Reads declared cache `inputs` and checks that cached outputs still exist; null:
  // a cached step with inputs is a miss ("no file access"), outputs are trusted.
  FileAccess* files = nullptr;
  // Mints each requested container's credential (credentials.h); null: containers
  // are requested without one (tests of the core), and no agent can authenticate.
  CredentialMint* credentials = nullptr;
  // Where finished runs are folded (archive.h): events evolve through it, and the
  // commands that name a run (cancel, retry, an idempotent submit) find folded ones in
  // it. Null: every run stays in the state.
  RunArchive* archive = nullptr;
};

struct Decision {
  std::vector<Event> events;
  CommandResult result;
};

// The same Idempotency-Key with a different request: kInvalidArgument whose first
// detail is this code (the API answers 422 idempotency_key_reused).
inline constexpr std::string_view kIdempotencyKeyReused = "idempotency_key_reused";

// Errors: kInvalidArgument (bad definition/params; details list each problem),
// kNotFound (unknown run/workflow/container), kConflict (wrong state),
// kFailedPrecondition (container already lost or released).
Result<Decision> Decide(const State& state, const Command& command, const DecideContext& ctx);

std::vector<Event> AdvanceRun(const State& state, const Run& run, const DecideContext& ctx);
// Places what fits now. Tenants take turns by fair share: the tenant holding the
// smallest fraction of the GPUs it is entitled to goes next (entitled: its maxGpus
// capped at the pool's healthy GPUs, or the pool's GPUs without a quota; equal
// fractions go by queue order), re-ranked after every placement. An attempt whose
// GPUs would take its tenant past maxGpus stays queued (QuotaWaitReason) and is
// not demand for the pool; later, smaller attempts may still be placed (backfill).
std::vector<Event> Schedule(const State& state, const DecideContext& ctx);
std::vector<Event> OnTick(const State& state, const Tick& tick, const DecideContext& ctx);

// GPUs each tenant's attempts and gang workers hold now (assigned or running on a
// registered container). Tenants that hold none are absent.
std::map<std::string, int> TenantGpusHeld(const State& state);

// Why a queued attempt of `tenant`, which holds `held` GPUs, waits for its GPU quota:
// e.g. "tenant ml is at its GPU quota (4 of 4 GPUs)"; "" when the quota (or the
// lack of one) lets it be placed. Derived from state, so views show it without an
// event per scheduling pass.
std::string QuotaWaitReason(const EngineConfig& config, const std::string& tenant, int held,
                            const Attempt& attempt);

// The upstream outputs a step's command and environment refer to
// ({{steps.<s>.outputs.<f>}}), as [{"path", "sha256", "size", "step", "name"}]: the
// agent checks each file against its recorded digest before it starts the attempt,
// so a step never runs on an output that changed after its producer finished.
Json UpstreamInputs(const Run& run, const workflows::Step& step, const EngineConfig& config);

// Paths of the data dir layout (DESIGN.md).
std::string WorkspaceDir(const EngineConfig& c, std::string_view run);
std::string OutputsDir(const EngineConfig& c, std::string_view run, std::string_view step,
                       int attempt);
std::string LogPath(const EngineConfig& c, std::string_view run, std::string_view step,
                    int attempt);
// The NDJSON file an attempt's live metrics go to ($EPOCH_METRICS), beside its outputs
// (rank > 0 of a gang: metrics-<rank>.ndjson).
std::string MetricsPath(const EngineConfig& c, std::string_view run, std::string_view step,
                        int attempt, int rank);
// A step's checkpoint dir ($EPOCH_CHECKPOINT_DIR): in its run's workspace, so it
// outlives attempts and containers and a gang's ranks share it; one per sweep trial.
std::string CheckpointDir(const EngineConfig& c, std::string_view run, std::string_view step,
                          int trial);

}  // namespace epoch::engine
