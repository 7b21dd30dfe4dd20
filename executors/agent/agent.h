// The compute-container agent (`epoch-agent`): registers its CPUs, memory and GPUs with
// the leader, long-polls for job attempts, runs each one as a child process in its own
// process group (executors/process.h), and reports how each ended. The wire protocol
// is DESIGN.md's "container protocol (agent pulls)":
//
//   POST {master}/v1/containers/{id}/register
//     {"backend","handle","host","pid","cpu_millis","memory_bytes","gpus":[...],
//      "cuda":{"compiled","reason"},"epoch_seen","running":[attempt ids],
//      "isolation":{"mode","run_as","sandbox","reason"},
//      "enforcement":{"mode","mechanism","reason","cpu_millis","memory_bytes","max_pids",
//                     "devices"}}
//     -> {"epoch","lease_ms","poll_timeout_ms"}            (optional "release": true)
//   POST {master}/v1/containers/{id}/poll
//     {"epoch_seen","reports":[report...],"running":[attempt ids]}
//       (and "metrics":[batch...] when any are due: see "Live metrics" below)
//     -> {"epoch","ack":[ids],"assignments":[...],"cancels":[ids]}  (optional "release",
//        "metrics_ack":{"<attempt_id>": next})
//   A poll answered 404, or 409 with {"error":{"code":"unknown_container"|"register"}},
//   makes the agent register again. 307 (Location) or a newer leader.json in the data
//   dir moves it to another master. Any answer whose "epoch" is lower than the highest
//   the agent has seen is ignored entirely (fencing).
//   Every request carries "Authorization: Bearer <credential>", the container's own
//   secret read from --credential-file at start (never logged, never in a step's
//   environment). It goes only to --master's origin or to the leader that the data
//   dir's leader.json names: a redirect elsewhere is ignored, and https never moves
//   to http.
//
// An assignment: {"attempt_id","run","step","attempt","argv","env","workspace",
//   "outputs_dir","log_path","timeout_ms","gpus","inputs":[{"path","sha256"}],
//   "tenant","run_as":"user[:group]","mounts":[{"path","read_only"}],"max_log_bytes",
//   "resources":{"cpu_millis","memory_bytes"} (what the scheduler reserved: the CPU
//   weight), "limits":{"cpu_millis","memory_bytes"} (what the kernel enforces; null:
//   only the container's limit), "metrics":{"path","interval_ms","max_points",
//   "max_bytes"} and "checkpoint_dir" (both optional: live metrics and checkpoints)}.
//   The workspace must be <data-dir>/runs/<...>, outputs inside it, the log under
//   <data-dir>/logs/; a mount is absolute, normalised, existing, and inside runs/ when
//   it is inside the data dir at all; metrics.path and checkpoint_dir are inside the
//   workspace. Anything else fails the attempt without running it ("invalid
//   assignment: ...").
// A report: {"attempt_id","state","exit_code","signal","reason","usage","metrics",
//   "outputs","started_at","finished_at"} and, when the step ran through epoch-sandbox,
//   "log_bytes", "log_dropped_bytes", "log_truncated". With cgroups in force, "usage"
//   has the kernel's figures ({"cpu_s","peak_memory_bytes","source":"cgroup1|cgroup2",
//   "limits":{...},"oom_kills","pids_refused"}, wait4's CPU as "wait4_cpu_s"), and a
//   failed attempt the OOM killer hit has reason "oom_killed: ..." (one that reached its
//   pids limit, "pids_limit: ...").
//
// Live metrics and checkpoints (live_metrics.h): with "metrics" the agent makes the
// empty file (and its folders) and with "checkpoint_dir" the folder, as the step's
// user, and sets EPOCH_METRICS and EPOCH_CHECKPOINT_DIR. The step appends JSON lines
// ({"step": 120, "loss": 0.41}) and declares a checkpoint it wrote there by rewriting
// checkpoint.json ({"file": "epoch-2.pt", "epoch": 2}) or with a line's
// "checkpoint": "<file>". Polls (long ones and the report thread's short ones) carry
//   batch: {"attempt_id","from","points":[{"<name>": number...}...],"skipped","dropped",
//           "truncated","checkpoints":[{"file","sha256","size","epoch"(if declared)}]}
// at most every interval_ms per attempt (sooner only for points a previous, fully
// acknowledged batch left behind, and an ended attempt's first), at most ~2000 points
// and 256 KiB of points per body; "from" numbers the first point, every batch starts
// at the first point not acknowledged, "skipped"/"dropped" are totals and "truncated"
// says max_points or max_bytes was reached. "metrics_ack" {"<attempt_id>": next}
// acknowledges the points below next and that poll's checkpoints and totals. A report's
// "metrics" is each live series' last value with metrics.json's members on top.
//
// Steps run through epoch-sandbox (executors/sandbox/; the agent's --isolation): with
// "namespaces" in force each sees the host read-only, its run's workspace and listed
// mounts, and nothing else of the data dir, as its run_as user. See
// executors/README.md.
//
// On-disk state, under <data-dir>/containers/<id>/ (all written with WriteFileDurably):
//   agent.json                 {"id","pid","master_url","epoch_seen","started_at"}
//   reports/<escaped id>.json  a report not yet acknowledged; written before it is sent,
//                              resent on every poll, deleted when an "ack" names it
//   attempts/<escaped id>      {"attempt_id","state":"started"|"finished"}: every
//                              attempt this container ever accepted, so a re-sent
//                              assignment never runs twice, even across agent restarts;
//                              one still "started" at start-up is reported failed
//                              ("agent restarted while the attempt was running")
//
// Threads: Run()'s thread owns the children (spawns, reaps, enforces timeouts and
// cancels; children's PR_SET_PDEATHSIG is tied to it); a poll thread registers and
// long-polls; a report thread builds reports (metrics, output hashes), writes them and
// sends them at once with a short POST of the same /poll endpoint, so a finished
// attempt is reported within milliseconds while a long poll may be in flight. Shared
// state is guarded by one mutex inside the implementation.
//
// Thread-safety: Run() once, from one thread. Stop() from any thread or a signal
// handler (it only stores an atomic flag).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/clock.h"
#include "common/json.h"
#include "common/status.h"
#include "gpu/gpu.h"

namespace epoch::executors {

struct AgentOptions {
  std::string id;          // --id: container id, [a-z0-9-_]
  std::string master_url;  // --master: "http://127.0.0.1:30745"
  std::string data_dir;    // --data-dir: shared data dir
  int64_t cpu_millis = 0;  // --cpu-millis
  int64_t memory_bytes = 0;
  int gpus = 0;                            // --gpus: how many GPUs the container was given
  std::string backend = "local";           // --backend
  std::string handle;                      // --handle; empty: the agent's pid
  Micros grace = std::chrono::seconds(5);  // --grace: SIGTERM..SIGKILL
  Micros orphan_timeout = std::chrono::seconds(300);  // --orphan-timeout
  std::string log_format = "text";                    // --log-format text|json
  std::string log_level = "info";                     // --log-level
  std::string ca_cert;  // --ca-cert: PEM the master's certificate chains to; default
                        // <data-dir>/tls/cert.pem (epochd's generated one), if present
  std::string isolation = "auto";  // --isolation auto|required|off (executors/sandbox_client.h)
  std::string sandbox_path;        // --sandbox-path; empty: epoch-sandbox next to this program
  std::string credential_file;     // --credential-file: the container's secret for the
                                   // container protocol (the backend wrote it, 0600)
  // Limits in cgroups (executors/cgroup.h; README "Limits"): --enforce auto|required|off,
  // --cgroup-root (empty: where the agent's own cgroups are), --max-pids per attempt.
  // An Agent run in-process (tests) defaults to "off": "auto" would move the host
  // process into the container's cgroup. ParseAgentFlags (epoch-agent) defaults to "auto".
  std::string enforce = "off";
  std::string cgroup_root;
  int64_t max_pids = 4096;
  // The GPUs this container owns: main() fills it with gpu::DiscoverFromEnv (real and
  // probed, or EPOCH_FAKE_GPUS's simulated ones); none by default. Registered as
  // "gpus": [gpu::ToJson...] and "cuda": {"compiled", "reason"}. An assignment's "gpus"
  // name indices into it; the child gets their visible_ids in CUDA_VISIBLE_DEVICES.
  gpu::Inventory gpu_inventory;
  Micros tick = std::chrono::milliseconds(10);  // main loop period (reaping, timeouts)
};

// Parses the flags after argv[0]: "--flag value" or "--flag=value". Durations take
// common/units.h syntax ("5s", "300ms", "2m"), memory "2Gi" or plain bytes.
// kInvalidArgument naming the flag; "--help" gives kInvalidArgument with the usage.
Result<AgentOptions> ParseAgentFlags(const std::vector<std::string>& args);
std::string AgentUsage();

// File-name-safe form of an attempt id: [A-Za-z0-9_-] kept, every other byte %XX
// ("r1/train/1" -> "r1%2Ftrain%2F1").
std::string EscapeAttemptId(std::string_view id);

// Exit codes of Run().
inline constexpr int kAgentExitOk = 0;        // released by the master, or stopped
inline constexpr int kAgentExitOrphaned = 2;  // master unreachable past --orphan-timeout

class Agent {
 public:
  explicit Agent(AgentOptions options);
  ~Agent();
  Agent(const Agent&) = delete;
  Agent& operator=(const Agent&) = delete;

  // Runs until released, stopped or orphaned; kills every attempt's process group
  // (SIGTERM, grace, SIGKILL) before it returns. Returns the process exit code.
  // Sets SIGPIPE to SIG_IGN for the whole process (cpp-httplib 0.11 writes to
  // sockets the peer may have closed).
  // kInvalidArgument for bad options, kInternal when the data dir is unusable,
  // kFailedPrecondition when --isolation required or --enforce required cannot be met,
  // or the credential file cannot be read.
  Result<int> Run();
  // Asks Run() to stop (async-signal-safe).
  void Stop() { stop_.store(true); }

 private:
  struct Impl;
  std::atomic<bool> stop_{false};
  std::unique_ptr<Impl> impl_;
};

}  // namespace epoch::executors
