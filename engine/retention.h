// Retention: the event log stays whole (its hash chain is the audit), but the files
// runs leave on the data dir are what fills disks. retention.outputs and
// retention.logs (EngineConfig; per tenant tenants.<name>.retention.*) say how long
// after a run ends its files are kept:
//   - outputs: each attempt's folder runs/<run>/<step>/<n>/ (its outputs, its metrics
//     files, anything else it wrote there) and each step's checkpoints folder, once
//     no attempt of the step keeps its folder;
//   - logs: each attempt's log, logs/<run>/<step>/<n>.log (and <n>.<r>.log of a
//     gang's ranks r > 0).
// An attempt's folder stays, past the horizon, while a data set or model version
// was registered from it, or an open run reuses it (a cache hit) or mounts it
// (OutputsKeptBecause).
//
// Each deletion is an event first (OutputsExpired / LogsExpired {files: [{step,
// attempt, bytes}], bytes, horizon}), decided (DecideExpireFiles) against the state
// like any command, and the files go only once it is durable: the record never
// claims less than what is gone. Evolve marks the attempts (Attempt::outputs_expired,
// logs_expired, StepRun::checkpoints_expired), so `run get` says what is gone and
// when, a log read says so (410), a cache entry made by an expired attempt misses
// with that reason instead of being reused, and a retry that would reuse an expired
// step's outputs is refused. State::expired counts it per tenant.
//
// RetentionSweeper does the work on the leader: it lists the run folders under
// runs/ and logs/ (what the disk still holds, so a pass costs what is retained, not
// the whole history), reads each run (open or from the read model), proposes what is
// past its horizon with the bytes found, executes ExpireFiles, and deletes what the
// durable state now says is expired. A master that dies between the event and the
// deletion leaves files the next pass deletes (the run says they expired), with no
// second event.
//
// Thread-safety: the functions are pure; a RetentionSweeper is used from one thread;
// a RetentionLoop owns its thread.
#pragma once

#include <cstdint>
#include <string>
#include <thread>
#include <vector>

#include "common/clock.h"
#include "common/mutex.h"
#include "common/status.h"
#include "engine/commands.h"
#include "engine/decider.h"
#include "engine/state.h"
#include "engine/views.h"

namespace epoch::engine {

class Engine;

// How long after its run ended `tenant`'s outputs / logs are kept (0: for ever).
Micros OutputsRetention(const EngineConfig& config, const std::string& tenant);
Micros LogsRetention(const EngineConfig& config, const std::string& tenant);
// Whether any tenant has a horizon at all.
bool RetentionConfigured(const EngineConfig& config);

// Why attempt (run, step, attempt)'s folder must stay past its horizon: "model
// <name> v<k>", "data set <name> v<k>", "run <id> reuses it" (a cache hit of an
// open run), "run <id> mounts it"; empty when nothing keeps it. Versions State does not
// hold are looked up in `archive` (null: State holds them all); a lookup that fails
// keeps the folder, saying so.
std::string OutputsKeptBecause(const State& s, const EngineConfig& config, const Run& run,
                               const std::string& step, int attempt,
                               const RunArchive* archive = nullptr);

// The decider's part (Decide dispatches here): the ExpireFiles command. NotFound for an
// unknown run; FailedPrecondition when the run is not finished, or within its
// horizon, or the horizon is off; files already expired, unknown, or kept are left
// out (the result's keys list the "<step>/<attempt>" of those that expire). No event
// when nothing may go.
Result<Decision> DecideExpireFiles(const State& state, const ExpireFiles& cmd,
                                   const DecideContext& ctx);

// What one RetentionSweeper pass did.
struct SweepReport {
  uint64_t runs = 0;                // run folders looked at
  uint64_t outputs_expired = 0;     // attempt and checkpoint folders that expired this pass
  uint64_t logs_expired = 0;        // logs that expired this pass
  int64_t bytes_deleted = 0;        // bytes deleted this pass
  uint64_t deleted_again = 0;       // files an earlier event expired, deleted now
  std::vector<std::string> errors;  // what could not be read, decided or deleted
};

class RetentionSweeper {
 public:
  explicit RetentionSweeper(Engine* engine);
  // One pass over the data dir (see the top of this file). Does nothing unless the
  // engine leads and some horizon is set. Errors of one run are collected and the
  // pass goes on.
  SweepReport SweepOnce();

 private:
  void SweepRun(const std::string& id, SweepReport* report);
  Engine* engine_;
};

// A RetentionSweeper pass every `interval` of real time (retention.interval) on its
// own thread, until destroyed; each pass that did anything, or met errors, is logged.
class RetentionLoop {
 public:
  RetentionLoop(Engine* engine, Micros interval);
  ~RetentionLoop();  // stops and joins
  RetentionLoop(const RetentionLoop&) = delete;
  RetentionLoop& operator=(const RetentionLoop&) = delete;

 private:
  // Waits `interval` unless stopped first; true when stopping.
  bool WaitOrStop(Micros interval);
  Mutex mu_;
  CondVar cv_;
  bool stopping_ GUARDED_BY(mu_) = false;
  std::thread thread_;
};

// What the data dir holds per tenant (GET /v1/usage): {"tenants": {<tenant>: {"runs",
// "outputs_bytes", "logs_bytes", "expired": {"outputs_bytes", "logs_bytes",
// "outputs_events", "logs_events"}, "retention": {"outputs", "logs"}}}}. Runs and
// bytes are what is on disk now (run folders under runs/, logs under logs/, by the
// tenant of their run: measured, so a call costs a walk of what is retained);
// "expired" is what the events say retention deleted. Only tenants `visible` passes
// (empty: every tenant).
Json UsageJson(const Engine& engine, const TenantFilter& visible);

}  // namespace epoch::engine
