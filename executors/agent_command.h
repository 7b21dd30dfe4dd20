// How every backend starts epoch-agent: the same command line and environment, so a
// container behaves the same whether it is a local process or a Slurm job.
#pragma once

#include <chrono>
#include <map>
#include <string>
#include <vector>

#include "common/clock.h"
#include "common/status.h"
#include "engine/container_backend.h"

namespace epoch::executors {

// The agent's own flags, set by the master's configuration.
struct AgentFlags {
  Micros grace = std::chrono::seconds(5);             // agent's --grace for its attempts
  Micros orphan_timeout = std::chrono::seconds(300);  // agent's --orphan-timeout
  std::string log_format = "text";
  std::string log_level = "info";
  std::string ca_cert;  // agent's --ca-cert: what the master's HTTPS certificate chains to
  std::string isolation = "auto";  // agent's --isolation auto|required|off (executor.isolation)
  std::string enforce = "auto";    // agent's --enforce auto|required|off (executor.enforce)
  int64_t max_pids = 4096;         // agent's --max-pids (executor.maxPids)
  std::string cgroup_root;         // agent's --cgroup-root (executor.cgroupRoot); empty: none
};

// kInvalidArgument unless spec has an id usable as a folder name, a master URL and a
// data dir.
Status CheckContainerSpec(const engine::ContainerSpec& spec);

// Makes <data_dir>/containers/<id>/ (mode 0700, this user's) and, when the spec has a
// credential, writes it to credential_path (0600, durably) before the agent starts.
// Errors as MakeDirs / WriteFileDurably, never with the credential in them.
Status PrepareContainerDir(const engine::ContainerSpec& spec);
// <data_dir>/containers/<id>/credential
std::string CredentialPath(const engine::ContainerSpec& spec);

// <agent_path> --id ID --master URL --data-dir DIR --cpu-millis N --memory-bytes N
// --gpus N --backend B --grace G --orphan-timeout T --log-format F --log-level L
// --isolation I --enforce E --max-pids P [--cgroup-root R] [--ca-cert C]
// [--credential-file <data_dir>/containers/<id>/credential]
// (the credential itself is never on a command line).
std::vector<std::string> AgentCommandLine(const std::string& agent_path,
                                          const engine::ContainerSpec& spec,
                                          const std::string& backend, const AgentFlags& flags);

// This process's environment with `extra` set over it, as "K=V" strings.
std::vector<std::string> EnvironmentWith(const std::map<std::string, std::string>& extra);

}  // namespace epoch::executors
