// Internal to the agent (agent.h), whose implementation is split by concept: agent.cc
// (flags, Agent::Run, the threads), startup.cc (start-up and on-disk state), limits.cc
// (cgroups), assignment.cc (parsing and checking an assignment), attempts.cc (the main
// loop: launching and supervising attempts), master_client.cc (the poll thread and the
// container protocol's client side) and reports.cc (the report thread: outputs, metrics,
// usage). What more than one of them uses: the small helpers, the parsed assignment and
// Agent::Impl. Not an interface for anything outside executors/agent/; it includes
// httplib.h, so only epoch_agent_core may include it (executors/CMakeLists.txt).
#pragma once

#include <httplib.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "common/json.h"
#include "common/mutex.h"
#include "common/status.h"
#include "executors/agent/agent.h"
#include "executors/agent/live_metrics.h"
#include "executors/cgroup.h"
#include "executors/process.h"
#include "executors/sandbox_client.h"
#include "gpu/gpu.h"

namespace epoch::executors {
namespace agent_internal {

using SteadyClock = std::chrono::steady_clock;
using SteadyTime = SteadyClock::time_point;
using std::chrono::milliseconds;

inline constexpr auto kMinBackoff = milliseconds(100);
// How long the poll thread waits after an answer that only repeated cancels already
// being carried out (a report, or the end of a report thread's send, wakes it sooner).
inline constexpr auto kStalePollPause = milliseconds(100);
inline constexpr auto kMaxBackoff = milliseconds(1000);

// ---------------------------------------------------------------- small helpers (agent.cc)

std::string JoinPathParts(const std::string& a, const std::string& b);
std::string NowString();
std::string GetString(const Json& j, const char* key, const std::string& dflt = "");

// The master's URL with no trailing '/' and a scheme (master_client.cc).
std::string TrimUrl(std::string url);

// ---------------------------------------------------------------- assignment (assignment.cc)

struct Mount {
  std::string path;
  bool read_only = true;
};

struct Assignment {
  std::string attempt_id, run, step, attempt;
  std::vector<std::string> argv;
  std::map<std::string, std::string> env;
  std::string workspace, outputs_dir, log_path;
  int64_t timeout_ms = 0;
  std::string tenant;
  std::string run_as;             // "user[:group]"; empty: the agent's own user
  std::vector<Mount> mounts;      // extra paths the step sees, beyond its workspace
  int64_t max_log_bytes = 0;      // 0: no cap
  std::vector<std::string> gpus;  // as sent: indices (or UUIDs) of this container's GPUs
  std::string cuda_visible_devices, gpu_uuids;  // resolved: comma-joined visible_ids, UUIDs
  // Upstream outputs the command reads, with the digests their producers recorded.
  std::vector<std::pair<std::string, std::string>> inputs;  // (path, sha256)
  // The CPU the scheduler reserved (the attempt's CPU weight), and what the kernel
  // enforces (0: only the container's limit).
  int64_t cpu_request_millis = 0;
  int64_t cpu_limit_millis = 0, memory_limit_bytes = 0;
  // Live metrics and checkpoints (live_metrics.h): the NDJSON file the step appends to
  // ($EPOCH_METRICS) and the folder its checkpoints outlive the attempt in
  // ($EPOCH_CHECKPOINT_DIR), both inside the workspace; empty: not asked for.
  std::string metrics_path;
  int64_t metrics_interval_ms = 1000, metrics_max_points = 100000, metrics_max_bytes = 16 << 20;
  std::string checkpoint_dir;
};

// The canonical path `path` must have: inside the data dir, the data dir's own
// canonical path plus the rest, so no symlink a step planted can redirect it;
// elsewhere (the host, which steps see read-only), wherever it resolves.
using CanonicalOf = std::function<std::string(const std::string&)>;

Status VerifyInputs(const Assignment& a, const CanonicalOf& canonical);
Status CheckPath(const std::string& what, const std::string& p);
Result<Assignment> ParseAssignment(const Json& j, const std::string& data_dir,
                                   const gpu::Inventory& inventory);

}  // namespace agent_internal

// ---------------------------------------------------------------- the agent

struct Agent::Impl {
  enum class Why { kNone, kTimeout, kCancel, kShutdown };

  // An attempt whose process runs; owned by the main loop thread.
  struct Running {
    agent_internal::Assignment a;
    std::unique_ptr<StepProcess> child;
    std::string started_at;
    std::optional<agent_internal::SteadyTime> deadline;       // timeout_ms
    std::optional<agent_internal::SteadyTime> kill_deadline;  // SIGKILL after SIGTERM + grace
    bool killed = false;
    Why why = Why::kNone;
    std::unique_ptr<Cgroup> group;  // its cgroup, when limits are enforced
    CgroupLimits limits;
  };

  // An attempt that ended (or never started), waiting for its report to be built.
  struct Ended {
    agent_internal::Assignment a;
    std::optional<ExitInfo> exit;  // absent: never started
    Why why = Why::kNone;
    std::string reason;  // overrides, for attempts that never started
    std::string started_at, finished_at;
    bool failed_to_start = false;
    // The kernel's account, when the attempt ran in a cgroup, and its limits.
    std::optional<CgroupUsage> usage;
    CgroupLimits limits;
  };

  struct Client {
    std::unique_ptr<httplib::Client> http;
    uint64_t generation = ~uint64_t{0};
    std::string url;
  };

  struct Reply {
    int status = 0;  // 0: no answer (connection failed, timed out)
    std::string body;
    std::string location;
    std::string error;
  };

  // What the data dir's leader.json says: the leader's address and epoch.
  struct LeaderFile {
    std::string address;
    int64_t epoch = 0;
  };

  Impl(AgentOptions o, std::atomic<bool>* stop);

  AgentOptions opt;
  std::atomic<bool>* stop_flag;
  std::string dir, reports_dir, attempts_dir;
  // Set by Run() before any thread starts, read-only after.
  IsolationState isolation;
  // Limits (executors/cgroup.h): what enforces them, and the container's groups. The
  // groups are touched by the main loop only (and by Prepare/RunAll around it); the
  // report thread only reads container_group's usage. The rest is set by Prepare()
  // before any thread starts, read-only after.
  CgroupHost cgroups;
  std::string enforce_mechanism = "none";  // cgroup2 | cgroup1 | slurm | none
  std::string enforce_reason;
  std::string devices_note;
  std::unique_ptr<Cgroup> container_group, agent_group;
  std::vector<std::unique_ptr<Cgroup>> leftover_groups;  // Remove failed; retried
  bool shielded = false;                                 // our oom_score_adj is -1000
  uint64_t attempt_groups_made = 0;                      // names them: a-1, a-2, ...
  // Set by Prepare() before any thread starts, read-only after.
  std::string sandbox_path;
  std::string data_dir_real;   // the data dir's canonical path
  std::string credential;      // never logged, never in an error, never in a step's env
  std::string initial_master;  // --master: trusted like leader.json's leader

  // ---- shared state, guarded by mu
  Mutex mu;
  CondVar main_cv, report_cv, poll_cv;
  std::string master_url GUARDED_BY(mu);
  uint64_t url_generation GUARDED_BY(mu) = 0;
  int64_t epoch_seen GUARDED_BY(mu) = 0;
  int64_t poll_timeout_ms GUARDED_BY(mu) = 1000;
  bool registered GUARDED_BY(mu) = false;
  bool release GUARDED_BY(mu) = false;
  bool orphaned GUARDED_BY(mu) = false;
  bool threads_stop GUARDED_BY(mu) = false;  // poll and report threads end
  bool draining GUARDED_BY(mu) = false;      // report thread: finish, send once, end
  bool reports_dirty GUARDED_BY(mu) = false;
  agent_internal::SteadyTime last_contact GUARDED_BY(mu) = agent_internal::SteadyClock::now();
  std::set<std::string> known GUARDED_BY(mu);           // every attempt ever accepted
  std::set<std::string> active GUARDED_BY(mu);          // accepted and not yet reported
  std::deque<Json> inbox GUARDED_BY(mu);                // assignments for the main loop
  std::deque<std::string> cancel_inbox GUARDED_BY(mu);  // cancels for the main loop
  // Cancels handed to the main loop, until their report is acknowledged: the master
  // names an attempt in every answer until it has stopped, and that is not news.
  std::set<std::string> cancelling GUARDED_BY(mu);
  // The last answer said nothing new (only cancels already being carried out): the
  // poll thread paces itself instead of asking again at once (kStalePollPause).
  bool stale_answer GUARDED_BY(mu) = false;
  std::deque<Ended> ended GUARDED_BY(mu);               // for the report thread
  std::map<std::string, Json> pending GUARDED_BY(mu);   // unacknowledged reports
  httplib::Client* poll_http GUARDED_BY(mu) = nullptr;  // the poll thread's client, for stop()

  // Live metrics and checkpoints of the attempts: watched by the main loop, collected
  // and acknowledged by the poll and report threads, finished by the report thread.
  // Thread-safe itself, and never called with mu held.
  LiveMetrics live_metrics;

  // ---- main loop only
  std::map<std::string, Running> running;
  std::string shutdown_reason;  // main loop only

  // ---- agent.cc: the threads
  int RunAll();

  // ---- startup.cc: start-up and the on-disk state
  std::string ReportPath(const std::string& id);
  std::string MarkerPath(const std::string& id);
  Status WriteMarker(const std::string& id, const char* state);
  Status WriteAgentJson() REQUIRES(mu);
  Status Prepare();
  Status Recover();

  // ---- limits.cc: cgroups
  Status PrepareLimits();
  Json EnforcementJson() const;
  Result<std::unique_ptr<Cgroup>> MakeAttemptGroup(const agent_internal::Assignment& a,
                                                   CgroupLimits* limits);
  void RemoveGroup(std::unique_ptr<Cgroup> g);
  void RetryLeftoverGroups();
  void RemoveContainerGroups();

  // ---- master_client.cc: the poll thread and the container protocol
  void RefreshClient(Client& c, std::chrono::milliseconds read_timeout);
  Reply Post(Client& c, const std::string& path, const Json& body);
  Json RunningIds() REQUIRES(mu);
  Json PendingReports() REQUIRES(mu);
  void SwitchMaster(const std::string& url, const char* why) REQUIRES(mu);
  std::optional<LeaderFile> ReadLeaderFile();
  void FollowRedirect(const std::string& location);
  void CheckLeaderFile();
  // `sent`: the live metrics the request carried, which the answer's "metrics_ack" covers.
  bool HandleAnswer(const std::string& body, bool is_register,
                    const LiveMetrics::Sent* sent = nullptr);
  bool ApplyAnswer(const Json& j, int64_t epoch, bool is_register);
  bool NeedsRegister(const Reply& r);
  void AbandonRefusedMetrics(const Reply& r, const LiveMetrics::Sent& sent);
  bool Backoff(CondVar& cv, std::chrono::milliseconds& backoff);
  void CheckOrphaned();
  Json RegisterBody() REQUIRES(mu);
  void PollThread();

  // ---- reports.cc: the report thread
  void ApplyCgroupUsage(const Ended& e, Json* usage) const;
  bool AtLimit(const CgroupUsage& u, int64_t limit, bool own_events) const;
  std::string LimitReason(const Ended& e, const std::string& state,
                          const std::string& reason) const;
  Json BuildReport(const Ended& e);
  void FinishEnded();
  void ReportThread();

  // ---- attempts.cc: the main loop
  void EndWithoutRunning(agent_internal::Assignment a, Why why, std::string reason,
                         bool failed_to_start);
  std::string CanonicalFor(const std::string& path) const;
  Status PrepareFiles(const agent_internal::Assignment& a, const DirOwner& owner, bool set_owner);
  std::vector<sandbox::Bind> BindsFor(const agent_internal::Assignment& a) const;
  void Start(const Json& j, bool marker_written);
  void BeginKill(Running& r, Why why);
  void Cancel(const std::string& id);
  void Tend();
  int MainLoop();
};

}  // namespace epoch::executors
