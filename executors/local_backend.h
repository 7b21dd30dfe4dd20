// LocalBackend: the `local` ContainerBackend. A container is an `epoch-agent` process
// on this host, started detached (fork, setsid, fork again, exec) so it is not the
// master's child and outlives the master, even a `kill -9` of it. The handle is the
// agent's pid, in decimal.
//
// Because pids are reused, every signal and every "running" answer first checks
// /proc/<pid>/cmdline: it must still be an epoch-agent started with "--id <container
// id>". A zombie (it is not our child, so someone else reaps it) counts as gone.
//
//   Launch:    <data_dir>/containers/<id>/ (0700) and its credential file (0600) first
//              (PrepareContainerDir), then
//              <agent> --id ID --master URL --data-dir DIR --cpu-millis N
//                      --memory-bytes N --gpus N --backend local --grace G
//                      --orphan-timeout T --log-format F --log-level L --isolation I
//                      [--ca-cert C] [--credential-file <data_dir>/containers/<id>/credential]
//              environment: the master's own plus spec.env; stdin /dev/null;
//              stdout+stderr appended to <data_dir>/containers/<id>/agent.log.
//   Terminate: SIGTERM, wait up to terminate_wait, SIGKILL. Blocks up to that long.
//   Describe:  kRunning "pid N running" or kGone.
//
// Thread-safety: stateless after construction; safe from any thread.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <string>

#include "common/clock.h"
#include "engine/container_backend.h"
#include "executors/agent_command.h"

namespace epoch::executors {

struct LocalBackendOptions : AgentFlags {
  Micros terminate_wait = std::chrono::seconds(10);  // SIGTERM -> SIGKILL of the agent
};

class LocalBackend final : public engine::ContainerBackend {
 public:
  // agent_path: path of the epoch-agent binary (not looked up on PATH).
  LocalBackend(std::string agent_path, LocalBackendOptions options = {});

  std::string Name() const override { return "local"; }
  // kInvalidArgument for a bad spec; kInternal when the process cannot be started
  // (including exec failure of the agent binary, reported with its errno).
  Result<std::string> Launch(const engine::ContainerSpec& spec) override;
  // OK when the agent is (or already was) gone; kInvalidArgument for a bad handle.
  Status Terminate(const std::string& container_id, const std::string& handle) override;
  Result<engine::ContainerDescription> Describe(const std::string& container_id,
                                                const std::string& handle) override;

 private:
  std::string agent_path_;
  LocalBackendOptions options_;
};

// True when pid is alive (not a zombie) and its command line is an epoch-agent
// started with --id container_id.
bool IsAgentProcess(pid_t pid, const std::string& container_id);

}  // namespace epoch::executors
