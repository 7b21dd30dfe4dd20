// SlurmBackend: the `slurm` ContainerBackend. A container is a Slurm batch job that runs
// `epoch-agent` on whichever node Slurm picks; the agent registers with the leader over
// HTTP like any other. The handle is the Slurm job id.
//
//   Launch:    sbatch --parsable --job-name=<prefix>-<container id> --nodes=1 --ntasks=1
//                     --cpus-per-task=ceil(cpu/1000) --mem=<MiB>M [--gres=gpu:N]
//                     [--partition P] [--account A] [--qos Q] [--time T] <extraArgs...>
//                     --chdir=<data_dir>/containers/<id> --output=<that dir>/slurm-%j.out
//                     <that dir>/job.sh
//              job.sh execs the agent with --backend slurm --handle "$SLURM_JOB_ID"; the
//              agent learns its GPUs from the CUDA_VISIBLE_DEVICES that Slurm sets.
//              The job inherits the master's environment plus spec.env (--export=ALL).
//   Terminate: scancel <job id>; a job Slurm no longer knows is OK.
//   Describe:  scontrol show job -o <job id>; when the job has aged out of the
//              controller, sacct -X -n -P -j <job id> -o State,ExitCode; when that has
//              no answer either (no slurmdbd), the job is gone. The watch's
//              DescribeAll asks squeue about every live job in one call and falls
//              back to Describe only for the jobs that ended or are missing.
//
// Errors from Launch: kResourceExhausted when Slurm refuses the request itself (more
// GPUs, CPUs or memory than any node of the partition has, an unknown partition,
// account or QOS, a policy limit): asking again cannot help, so the pool reports the
// demand as unschedulable. kUnavailable for everything else (controller down,
// a timeout): the pool retries with backoff.
//
// Thread-safety: stateless after construction; safe from any thread. Every command
// runs as a child with a timeout (command_timeout), so a hung slurmctld cannot hang
// the caller for longer.
#pragma once

#include <chrono>
#include <map>
#include <string>
#include <vector>

#include "common/clock.h"
#include "engine/container_backend.h"
#include "executors/agent_command.h"

namespace epoch::executors {

struct SlurmOptions : AgentFlags {  // the agent's flags, as for the local backend
  std::string partition;                // slurm.partition (empty: the cluster's default)
  std::string account;                  // slurm.account
  std::string qos;                      // slurm.qos
  std::string time_limit;               // slurm.timeLimit, sbatch --time syntax
  std::vector<std::string> extra_args;  // slurm.extraArgs, passed to sbatch as they are
  std::string job_name_prefix = "epoch";
  // The Slurm client commands (looked up on PATH unless absolute).
  std::string sbatch = "sbatch", scancel = "scancel", scontrol = "scontrol", sacct = "sacct",
              squeue = "squeue";
  Micros command_timeout = std::chrono::seconds(30);
};

// What one Slurm job looks like to the backend (parsed from scontrol or sacct).
struct SlurmJobInfo {
  std::string state;      // RUNNING, PENDING, CANCELLED, ... (without " by <uid>")
  std::string reason;     // Slurm's Reason= (scontrol only)
  std::string exit_code;  // "0:15"
  std::string nodes;      // NodeList=
};

class SlurmBackend final : public engine::ContainerBackend {
 public:
  // agent_path: the epoch-agent binary as every node sees it (shared storage or the
  // same install path everywhere).
  SlurmBackend(std::string agent_path, SlurmOptions options = {});

  std::string Name() const override { return "slurm"; }
  bool Watched() const override { return true; }
  Result<std::string> Launch(const engine::ContainerSpec& spec) override;
  Status Terminate(const std::string& container_id, const std::string& handle) override;
  Result<engine::ContainerDescription> Describe(const std::string& container_id,
                                                const std::string& handle) override;
  // One `squeue -h -t all -j <ids> -o %i|%T|%r|%N` for all of them; Describe (scontrol,
  // then sacct) only for jobs squeue does not list as active, which also gets their
  // exit code. When squeue cannot answer, every entry is that error (no verdict).
  std::vector<Result<engine::ContainerDescription>> DescribeAll(
      const std::vector<Ref>& refs) override;

  // The sbatch command line for spec (without the script path's contents); exposed
  // for tests.
  std::vector<std::string> SbatchArgs(const engine::ContainerSpec& spec,
                                      const std::string& script) const;

 private:
  std::string agent_path_;
  SlurmOptions options_;
};

// Parsers, exposed for unit tests.
// `sbatch --parsable` prints "<id>" or "<id>;<cluster>".
Result<std::string> ParseSbatchJobId(const std::string& output);
// One line of `scontrol show job -o`: JobState, Reason, ExitCode, NodeList.
Result<SlurmJobInfo> ParseScontrolJob(const std::string& output);
// `squeue -h -o %i|%T|%r|%N` output: job id -> state, reason, nodes.
std::map<std::string, SlurmJobInfo> ParseSqueue(const std::string& output);
// `sacct -X -n -P -o State,ExitCode` output: the first non-empty line.
Result<SlurmJobInfo> ParseSacctJob(const std::string& output);
// Does sbatch's error say the request can never be satisfied as asked?
bool IsPermanentSbatchRefusal(const std::string& output);
// The engine's view of a job from what Slurm said of it (source: "" or "sacct").
engine::ContainerDescription DescriptionOf(const std::string& handle, const SlurmJobInfo& info,
                                           const std::string& source);
// Slurm states in which the job is still waiting or running.
bool IsPendingState(const std::string& state);
bool IsActiveState(const std::string& state);
// Quotes s for a POSIX shell ('...' with ' escaped).
std::string ShellQuote(const std::string& s);

}  // namespace epoch::executors
