// ContainerBackend: the port through which the engine's pool reactor obtains and
// releases compute containers. The engine defines it; executors/ implements it
// (local processes now, Slurm later). A container, once launched, runs
// `epoch-agent`, which registers itself with the leader over HTTP; the backend's
// job is only to start, stop and describe that process or job.
//
// Thread-safety: implementations must be safe to call from any one thread at a
// time (the pool reactor calls them from its own thread).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "common/status.h"

namespace epoch::engine {

struct ContainerSpec {
  std::string id;  // container id chosen by the engine ("c...")
  int64_t cpu_millis = 1000;
  int64_t memory_bytes = 2144LL << 20;
  int gpus = 0;
  std::string master_url;  // where the agent registers ("http://127.0.0.1:30745")
  std::string data_dir;    // shared data dir (runs/, logs/, containers/)
  std::map<std::string, std::string> env;  // extra environment for the agent
  // This container's own secret for the container protocol, minted by the leader at
  // launch (only its SHA-256 is in the log). The backend hands it to the agent alone:
  // <data_dir>/containers/<id>/credential, mode 0600, written before the agent starts.
  std::string credential;
};

struct ContainerDescription {
  enum class State { kPending, kRunning, kGone };
  State state = State::kGone;
  std::string detail;  // backend's words ("pid 1234 running", "slurm job 7 CANCELLED ...")
  std::string backend_state;  // the backend's own state word ("RUNNING", "TIMEOUT"), if any
};

class ContainerBackend {
 public:
  virtual ~ContainerBackend() = default;
  virtual std::string Name() const = 0;  // "local", "slurm"
  // Whether the engine should watch this backend's containers with Describe. A backend
  // answers for the whole cluster (Slurm) when true; the local backend sees only its
  // own host, and after a failover to another host its agents are still alive there,
  // so it is not watched (the lease covers it).
  virtual bool Watched() const { return false; }
  // Starts a container; returns the backend's handle for it (a pid, a job id).
  // kResourceExhausted means the backend refused the request itself and asking again
  // cannot help (e.g. more GPUs than any node has): the pool then reports the demand
  // as unschedulable instead of retrying. Any other error is retried with backoff.
  virtual Result<std::string> Launch(const ContainerSpec& spec) = 0;
  // Stops it (idempotent: an already gone container is OK).
  virtual Status Terminate(const std::string& container_id, const std::string& handle) = 0;
  // What became of a launched container. When Watched(), the engine asks (through
  // DescribeAll) every executor.watchInterval for each live container; kGone makes it lost with `detail` as the reason. An error
  // (the backend could not tell) changes nothing.
  virtual Result<ContainerDescription> Describe(const std::string& container_id,
                                                const std::string& handle) = 0;
  // Describe for many containers, one answer per ref in the same order (what the
  // watch calls each round). The default asks Describe for each; a backend that can
  // answer for all in one call (Slurm: one squeue) overrides it.
  struct Ref {
    std::string container_id, handle;
  };
  virtual std::vector<Result<ContainerDescription>> DescribeAll(const std::vector<Ref>& refs) {
    std::vector<Result<ContainerDescription>> out;
    out.reserve(refs.size());
    for (const auto& r : refs) out.push_back(Describe(r.container_id, r.handle));
    return out;
  }
};

}  // namespace epoch::engine
