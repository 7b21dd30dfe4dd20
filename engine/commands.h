// Commands: what the outside world asks of the engine. Each carries the time it
// was issued (from the injected Clock), so decide never reads a clock.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "common/clock.h"
#include "common/json.h"
#include "engine/report.h"

namespace epoch::engine {

struct RegisterWorkflow {
  Json definition;
  std::string actor = "anonymous";
  std::string tenant = "default";
  std::string idempotency_key{};  // the same (tenant, key) always answers the first result
  bool any_tenant = false;  // an admin: may add versions to another tenant's workflow
  // SHA-256 of the request (its canonical JSON): with an idempotency key, a repeat
  // must be the same request.
  std::string request_digest{};
};

struct SubmitRun {
  std::string run_id;  // chosen by the caller (IdGenerator), used unless idempotent replay
  std::string workflow;
  int version = 0;  // 0 = latest
  std::optional<Json> definition;  // inline definition: registered (or matched) first
  Json params = Json::object();
  Json labels = Json::object();
  int priority = 0;
  std::string tenant = "default";
  std::string submitter = "anonymous";
  std::string idempotency_key;
  bool any_tenant = false;  // an admin: may run another tenant's workflow
  std::string request_digest;  // as RegisterWorkflow::request_digest
};

struct CancelRun {
  std::string run_id;
  std::string actor = "anonymous";
};

struct RetryRun {
  std::string run_id;
  std::string actor = "anonymous";
};

// Forgets cache entries (cache.h): the one with `key`, or those a workflow's runs
// made (all its steps, or one `step`). At least key or workflow.
struct InvalidateCache {
  std::string key;
  std::string workflow;
  std::string step;
  std::string actor = "anonymous";
  std::string tenant = "default";  // only this tenant's entries are forgotten...
  bool any_tenant = false;         // ...unless an admin asks
};

// Retention (retention.h): the sweeper found these files of a finished run on disk;
// decide records the expiry of those that may go (past the tenant's horizon, not
// already expired, not kept by a data set, model or open run) and the sweeper
// deletes them once that is durable.
struct ExpireFiles {
  struct Found {
    std::string step;
    int attempt = 0;  // outputs: 0 is the step's checkpoints folder
    int64_t bytes = 0;
  };
  std::string run_id;
  bool logs = false;  // false: attempt folders and checkpoints (retention.outputs)
  std::vector<Found> files;
};

struct RegisterContainer {
  std::string container;
  std::string backend, handle, host;
  int64_t pid = 0;
  int64_t cpu_millis = 0, memory_bytes = 0;
  Json gpus = Json::array();
  Json cuda = Json::object();
  // What the agent enforces for its steps (run-as user, sandbox), as it says.
  Json isolation = Json::object();
  // What enforces its limits ({"mode", "mechanism", "reason", ...}), as it says.
  Json enforcement = Json::object();
  uint64_t epoch_seen = 0;
  std::vector<std::string> running;
};

struct PollContainer {
  std::string container;
  uint64_t epoch_seen = 0;
  std::vector<AttemptReport> reports;  // parsed at the edge (report.h)
  std::vector<std::string> running;
  std::vector<MetricsBatch> metrics;  // live metrics and checkpoints (report.h)
};

// From the pool reactor after the backend answered a launch.
struct ContainerLaunchResult {
  std::string container;
  bool ok = false;
  std::string handle;  // when ok
  std::string error;   // when not
  // The backend refused the request itself (kResourceExhausted): the queued demand
  // that no registered container could ever hold fails as unschedulable.
  bool unschedulable = false;
};

// From the pool's watch: the backend says a launched container is gone (its Slurm
// job ended, its process exited). Lost with `detail` as the reason, unless the
// container already ended or has since been given another handle.
struct ContainerExited {
  std::string container;
  std::string handle;
  std::string detail;
};

// Periodic: timers, leases, the pool's size. `expired` lists registered
// containers whose lease ran out (the writer tracks heartbeats, which are not events).
struct Tick {
  std::vector<std::string> expired;
  // Containers a watched backend has said are waiting for resources (a Slurm job
  // PENDING), with the last time it said so: executor.registerTimeout counts from
  // then, not from the request, so a job queued behind others is not lost.
  std::map<std::string, TimePoint> queued;
};

using Command = std::variant<RegisterWorkflow, SubmitRun, CancelRun, RetryRun, InvalidateCache,
                             RegisterContainer, PollContainer, ContainerLaunchResult,
                             ContainerExited, Tick, ExpireFiles>;

// What a command's caller learns once its events are durable.
struct CommandResult {
  std::string id;        // run id, workflow name, container id
  int version = 0;       // workflow version
  std::string digest;    // workflow digest
  bool created = false;  // false: idempotent repeat / same digest
  uint64_t position = 0;  // head after the commit that made it durable
  std::vector<std::string> ack;  // poll: attempt ids whose reports are durable
  // poll: per attempt id of a metrics batch, how many points of its series are durable
  std::map<std::string, int64_t> metrics_next{};
  std::vector<std::string> keys{};  // invalidate: the cache keys forgotten
};

}  // namespace epoch::engine
