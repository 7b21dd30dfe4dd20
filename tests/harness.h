// Test harness for end-to-end tests: real epochd and epoch-agent processes on
// a temp data dir, talking HTTP over 127.0.0.1 on a port the kernel picked.
//
// Waiting: processes are real, so the tests wait for observable states with a
// deadline (WaitFor) rather than sleeping for fixed times.
#pragma once

#include <signal.h>
#include <sys/types.h>

#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "common/json.h"

namespace epoch::testing {

// mkdtemp under /tmp, removed (with anything left in it) on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

struct HttpResult {
  int status = 0;  // 0: no connection
  std::string body;
  std::string content_type;
  std::string location;  // the Location header (redirects)
  std::string role;      // the Epoch-Role header
  uint64_t position = 0;  // the Epoch-Position header
  std::string set_cookie;  // the Set-Cookie header
  Json json() const;
};

// One epochd process on a data dir.
class Epochd {
 public:
  // extra: additional --set key=value pairs. name: master.name, also names its
  // log (<data_dir>/<name>.log) and address file; give each epochd of a data dir
  // its own.
  Epochd(std::string data_dir, std::vector<std::string> extra = {}, std::string name = "epochd");
  ~Epochd();  // SIGKILLs epochd and every agent of its data dir

  // Extra command-line arguments (e.g. {"--log-format", "json"}) for the next Start().
  void AddArgs(std::vector<std::string> args) { args_ = std::move(args); }
  // Serve HTTPS with the data dir's generated certificate (epochd's default), which
  // Get/Post then verify. Without it, tests run epochd with --insecure-http.
  void UseTls() { tls_ = true; }
  // Starts epochd and waits until /readyz is 200 (or fails the test).
  void Start();
  // Starts epochd on a data dir that has a leader: waits until it serves as a
  // standby (or fails the test).
  void StartStandby();
  // Starts epochd and waits only until it has bound its port (its address file),
  // not until it is ready: for a master that is never ready (e.g. one serving a
  // corrupt history read-only) or whose readiness the test follows itself.
  void Launch();
  // Waits until this epochd answers /readyz 200 (it leads); false at the deadline.
  bool WaitUntilLeader(std::chrono::milliseconds deadline);
  pid_t pid() const { return pid_; }
  std::string Log() const;
  void Kill9();       // kill -9, reaped
  void Terminate();   // SIGTERM, waits for a clean exit; returns its exit status
  // Waits until epochd exits by itself (reaped); false at the deadline. Then
  // exit_status() is its exit code, or 128 + the signal that ended it, and
  // dumped_core() whether that signal dumped core.
  bool WaitForExit(std::chrono::milliseconds deadline);
  bool dumped_core() const { return dumped_core_; }
  int exit_status() const { return exit_status_; }
  bool running() const { return pid_ > 0; }
  std::string url() const {  // safe from any thread (a restart changes it)
    std::lock_guard<std::mutex> lock(url_mu_);
    return url_;
  }
  const std::string& data_dir() const { return data_dir_; }

  HttpResult Get(const std::string& path);
  HttpResult Post(const std::string& path, const std::string& body,
                  const std::string& content_type = "application/json",
                  const std::vector<std::pair<std::string, std::string>>& headers = {});
  HttpResult PostJson(const std::string& path, const Json& body) {
    return Post(path, body.dump());
  }

  // Registers a workflow (asserting 200/201) and submits a run; returns the run id.
  std::string RegisterAndSubmit(const Json& definition, const Json& params = Json::object());
  // Waits until the run is in a terminal state; returns the run JSON.
  Json WaitForRun(const std::string& run, std::chrono::seconds timeout = std::chrono::seconds(60));
  // Waits for pred(run json) to hold.
  Json WaitForRunState(const std::string& run, const std::function<bool(const Json&)>& pred,
                       std::chrono::seconds timeout = std::chrono::seconds(60));
  // Number of events in the global log.
  uint64_t Head();
  // Every event of the global log, in order, as GET /v1/events gives them.
  std::vector<Json> AllEvents();
  // pids of the epoch-agent processes serving this data dir.
  std::vector<pid_t> AgentPids() const;

 private:
  std::string data_dir_;
  std::vector<std::string> extra_;
  std::string name_;
  std::vector<std::string> args_;
  bool tls_ = false;
  pid_t pid_ = -1;
  int exit_status_ = -1;
  bool dumped_core_ = false;
  mutable std::mutex url_mu_;
  std::string url_;  // guarded by url_mu_
};

// The admin token every Epochd of this test process accepts (user "test", tenant
// "default"): Launch() adds its hash to the data dir's tokens.json. Also exported as
// EPOCH_TOKEN, so epochctl children of the test use it.
const std::string& AdminToken();
// Adds a token for (user, tenant, role) to data_dir's tokens.json; returns it.
std::string AddToken(const std::string& data_dir, const std::string& user,
                     const std::string& tenant, const std::string& role);

// One HTTP request to any URL (no redirect following), with the admin token.
HttpResult HttpGet(const std::string& url, const std::string& path);
HttpResult HttpPost(const std::string& url, const std::string& path, const std::string& body,
                    const std::vector<std::pair<std::string, std::string>>& headers = {});
// Any method, with `token` as the bearer token (none when empty) and `headers`.
HttpResult HttpCall(const std::string& url, const std::string& method, const std::string& path,
                    const std::string& body, const std::string& token,
                    const std::vector<std::pair<std::string, std::string>>& headers = {});

// A field of /proc/<pid>/status ("Threads", "VmRSS" in kB, ...); -1 if missing.
int64_t ProcStatus(pid_t pid, const std::string& field);
// A sample of epochd's /metrics ("name value" on a line of its own); -1 if missing.
int64_t Metric(Epochd& d, const std::string& name);

// Polls cond every 20 ms until it holds or the deadline passes.
bool WaitFor(const std::function<bool()>& cond, std::chrono::milliseconds deadline);

// True while a process with this pid exists and is not a zombie.
bool ProcessAlive(pid_t pid);
// SIGKILLs pid and every descendant (found through /proc), as a machine's death takes a
// container's agent with the steps it runs.
void KillProcessTree(pid_t pid);
// The container id an epoch-agent process serves (its --id), "" if none.
std::string AgentContainerId(pid_t pid);
// Paths of the built binaries (from compile definitions).
std::string EpochdPath();
std::string AgentPath();
std::string EpochctlPath();
// Runs a shell command; returns its exit status and puts stdout+stderr in *out.
int RunCommand(const std::string& cmd, std::string* out);

}  // namespace epoch::testing
