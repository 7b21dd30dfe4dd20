// Agent::Impl's reports (agent.h, "A report"): how an attempt ended, its usage (the
// cgroup's figures where limits are enforced, and why the kernel killed it), its
// log's size, its metrics.json and its outputs with their sha256 (walked without
// following symlinks); stored durably, then sent by the report thread.
#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <deque>

#include "common/fd.h"
#include "common/files.h"
#include "common/mutex.h"
#include "common/sha256.h"
#include "executors/agent/agent_internal.h"

namespace epoch::executors {

namespace {

constexpr size_t kMaxMetricsBytes = 64 * 1024;
constexpr size_t kMaxOutputs = 10000;

Json NullableInt(const std::optional<int>& v) { return v ? Json(*v) : Json(nullptr); }

// SHA-256 (hex) of what fd reads, and how many bytes.
Result<std::string> HashFd(int fd, uint64_t* size) {
  Sha256 h;
  char buf[1 << 16];
  *size = 0;
  while (true) {
    ssize_t n = read(fd, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Internal(std::string("read: ") + std::strerror(errno));
    if (n == 0) break;
    h.Update(std::string_view(buf, static_cast<size_t>(n)));
    *size += static_cast<uint64_t>(n);
  }
  return ToHex(h.Finish());
}

// Files (recursively) under the folder dir_fd as "a/b.bin" names, except metrics.json
// at the top; regular files only. Walked by fd, never following a symlink: the step's
// user owns this folder, and another step of its run may still be running.
void WalkOutputs(int dir_fd, const std::string& prefix, Json& out, bool& truncated) {
  UniqueFd dup_fd(dup(dir_fd));
  if (!dup_fd) return;
  DIR* d = fdopendir(dup_fd.get());
  if (!d) return;
  (void)dup_fd.release();  // the DIR owns it now: closedir closes it
  std::vector<std::string> names;
  while (struct dirent* e = readdir(d)) {
    std::string n = e->d_name;
    if (n != "." && n != "..") names.push_back(n);
  }
  closedir(d);
  std::sort(names.begin(), names.end());
  for (const auto& n : names) {
    std::string rel = prefix.empty() ? n : prefix + "/" + n;
    struct stat st;
    if (fstatat(dir_fd, n.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) continue;
    if (S_ISDIR(st.st_mode)) {
      UniqueFd sub(openat(dir_fd, n.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
      if (!sub) continue;
      WalkOutputs(sub.get(), rel, out, truncated);
    } else if (S_ISREG(st.st_mode)) {
      if (rel == "metrics.json") continue;
      if (out.size() >= kMaxOutputs) {
        truncated = true;
        return;
      }
      Json entry{{"name", rel}, {"size", static_cast<uint64_t>(st.st_size)}};
      UniqueFd fd(openat(dir_fd, n.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC));
      uint64_t size = 0;
      auto hex = fd ? HashFd(fd.get(), &size)
                    : Result<std::string>(Internal(rel + ": " + std::strerror(errno)));
      if (hex.ok()) {
        entry["size"] = size;
        entry["sha256"] = *hex;
      } else {
        entry["sha256"] = nullptr;
        entry["error"] = hex.status().message();
      }
      out.push_back(std::move(entry));
    }
    if (truncated) return;
  }
}

// Reads metrics.json in the outputs folder dir_fd: missing -> {}, else at most 64 KiB
// and an object.
Json ReadMetrics(int dir_fd, std::string* error) {
  struct stat st;
  if (fstatat(dir_fd, "metrics.json", &st, AT_SYMLINK_NOFOLLOW) != 0) return Json::object();
  if (!S_ISREG(st.st_mode)) {
    *error = "metrics.json is not a regular file";
    return Json::object();
  }
  if (static_cast<size_t>(st.st_size) > kMaxMetricsBytes) {
    *error = "metrics.json is larger than " + std::to_string(kMaxMetricsBytes) + " bytes";
    return Json::object();
  }
  UniqueFd fd(openat(dir_fd, "metrics.json", O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC));
  if (!fd) {
    *error = std::string("metrics.json: ") + std::strerror(errno);
    return Json::object();
  }
  std::string text;
  char buf[4096];
  while (text.size() <= kMaxMetricsBytes) {
    ssize_t n = read(fd.get(), buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    text.append(buf, static_cast<size_t>(n));
  }
  fd.reset();
  if (text.size() > kMaxMetricsBytes) {
    *error = "metrics.json is larger than " + std::to_string(kMaxMetricsBytes) + " bytes";
    return Json::object();
  }
  auto j = ParseJson(text);
  if (!j.ok()) {
    *error = "metrics.json: " + j.status().message();
    return Json::object();
  }
  if (!j->is_object()) {
    *error = "metrics.json is not a JSON object";
    return Json::object();
  }
  return std::move(*j);
}

// "256 MiB", "2144 MiB", "2 GiB", "1000 bytes".
std::string MemoryText(int64_t b) {
  constexpr int64_t kMi = 1 << 20, kGi = int64_t{1} << 30;
  if (b >= kGi && b % kGi == 0) return std::to_string(b / kGi) + " GiB";
  if (b >= kMi && b % kMi == 0) return std::to_string(b / kMi) + " MiB";
  return std::to_string(b) + " bytes";
}

}  // namespace

using agent_internal::kMaxBackoff;
using agent_internal::kMinBackoff;
using agent_internal::milliseconds;
using agent_internal::SteadyClock;

// ---------------------------------------------------------------- reports

// The kernel's figures replace wait4's (which miss what a step left running and what
// the sandbox's PID 1 did not reap); wait4's CPU stays as a cross-check.
void Agent::Impl::ApplyCgroupUsage(const Ended& e, Json* usage) const {
  const CgroupUsage& u = *e.usage;
  (*usage)["wait4_cpu_s"] = (*usage)["cpu_s"];
  (*usage)["cpu_s"] = u.cpu_s;
  if (u.memory_peak_bytes > 0) (*usage)["peak_memory_bytes"] = u.memory_peak_bytes;
  (*usage)["oom_kills"] = u.oom_kills;
  (*usage)["pids_refused"] = u.pids_refused;
  (*usage)["source"] = enforce_mechanism;
  Json limits = Json::object();
  limits["cpu_millis"] = e.limits.cpu_millis > 0 ? Json(e.limits.cpu_millis) : Json(nullptr);
  limits["memory_bytes"] = e.limits.memory_bytes > 0 ? Json(e.limits.memory_bytes) : Json(nullptr);
  limits["pids"] = e.limits.pids > 0 ? Json(e.limits.pids) : Json(nullptr);
  (*usage)["limits"] = std::move(limits);
}

// Whether a group's memory reached `limit`: v2 counts it (memory.events "oom"); v1
// kernels may not keep memory.failcnt, but a group's high-water mark cannot pass its
// limit, so one within 1 MiB of it reached it.
bool Agent::Impl::AtLimit(const CgroupUsage& u, int64_t limit, bool own_events) const {
  if (limit <= 0) return false;
  if (own_events && (u.oom_events > 0 || u.memory_limit_hits > 0)) return true;
  return u.memory_peak_bytes > 0 && u.memory_peak_bytes + (1 << 20) >= limit;
}

// A failed attempt's reason from the cgroup's counters, not from its exit signal:
// "oom_killed: ..." when the OOM killer killed any of its processes, "pids_limit: ..."
// when it hit its process limit; else `reason` unchanged.
std::string Agent::Impl::LimitReason(const Ended& e, const std::string& state,
                                     const std::string& reason) const {
  const CgroupUsage& u = *e.usage;
  if (u.oom_kills > 0 && state == "failed") {
    std::string whose;
    if (AtLimit(u, e.limits.memory_bytes, true)) {
      whose = "its memory limit (" + MemoryText(e.limits.memory_bytes) + ") was reached";
    } else if (container_group && AtLimit(container_group->Usage(), opt.memory_bytes, false)) {
      whose = "the container's memory limit (sig.memory " + MemoryText(opt.memory_bytes) +
              ") was reached";
    } else {
      whose = "the host ran out of memory";
    }
    return "oom_killed: " + whose + "; the kernel killed " + std::to_string(u.oom_kills) +
           " process(es) (" + reason + ")";
  }
  if (u.pids_refused > 0) {
    return "pids_limit: the step reached its limit of " + std::to_string(e.limits.pids) +
           " processes and threads (" + std::to_string(u.pids_refused) + " forks refused); " +
           reason;
  }
  return reason;
}

Json Agent::Impl::BuildReport(const Ended& e) {
  std::string state, reason;
  if (!e.exit) {
    state = e.why == Why::kCancel ? "cancelled" : "failed";
    reason = e.reason;
  } else {
    std::string how = e.exit->reason;
    switch (e.why) {
      case Why::kTimeout:
        state = "timed_out";
        reason = "timed out after " + std::to_string(e.a.timeout_ms) + " ms (" + how + ")";
        break;
      case Why::kCancel:
        state = "cancelled";
        reason = "cancelled (" + how + ")";
        break;
      case Why::kShutdown:
        state = "failed";
        reason = e.reason + " (" + how + ")";
        break;
      case Why::kNone:
        state = e.exit->exit_code == 0 ? "succeeded" : "failed";
        reason = how;
        break;
    }
  }
  Json usage{{"wall_s", e.exit ? e.exit->wall_s : 0.0},
             {"cpu_s", e.exit ? e.exit->cpu_s : 0.0},
             {"max_rss_kb", e.exit ? e.exit->max_rss_kb : 0}};
  if (e.exit && e.usage) {
    ApplyCgroupUsage(e, &usage);
    if (state == "failed" || state == "timed_out") reason = LimitReason(e, state, reason);
  }
  Json report{{"attempt_id", e.a.attempt_id},
              {"state", state},
              {"exit_code", e.exit ? NullableInt(e.exit->exit_code) : Json(nullptr)},
              {"signal", e.exit ? NullableInt(e.exit->signal) : Json(nullptr)},
              {"reason", reason},
              {"usage", std::move(usage)},
              {"finished_at", e.finished_at}};
  if (!e.started_at.empty()) report["started_at"] = e.started_at;
  if (e.exit && e.exit->log_reported) {
    report["log_bytes"] = static_cast<uint64_t>(e.exit->log_bytes);
    report["log_dropped_bytes"] = static_cast<uint64_t>(e.exit->log_dropped_bytes);
    report["log_truncated"] = e.exit->log_truncated;
  }
  std::string metrics_error;
  Json metrics = Json::object();
  Json outputs = Json::array();
  bool truncated = false;
  if (e.exit && !e.a.outputs_dir.empty()) {
    // The outputs folder must be where it should be: a step that replaced it with a
    // symlink (to another run's outputs, to the agent's state) reports nothing.
    UniqueFd dir_fd(open(e.a.outputs_dir.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    std::string where;
    if (dir_fd) {
      char buf[PATH_MAX];
      std::string self = "/proc/self/fd/" + std::to_string(dir_fd.get());
      ssize_t n = readlink(self.c_str(), buf, sizeof(buf) - 1);
      if (n > 0) where.assign(buf, static_cast<size_t>(n));
    }
    struct stat st;
    if (dir_fd && where == CanonicalFor(e.a.outputs_dir)) {
      metrics = ReadMetrics(dir_fd.get(), &metrics_error);
      WalkOutputs(dir_fd.get(), "", outputs, truncated);
    } else if (lstat(e.a.outputs_dir.c_str(), &st) == 0) {
      report["outputs_error"] = "the outputs folder is not a folder of its own (a symlink?)";
    }
  }
  // The last value of each live series, unless metrics.json names it. Finish also
  // makes the attempt's last points due, to go with (or before) this report.
  Json live = live_metrics.Finish(e.a.attempt_id, SteadyClock::now());
  for (auto it = metrics.begin(); it != metrics.end(); ++it) live[it.key()] = it.value();
  report["metrics"] = std::move(live);
  if (!metrics_error.empty()) report["metrics_error"] = metrics_error;
  report["outputs"] = std::move(outputs);
  if (truncated) report["outputs_truncated"] = true;
  return report;
}

// Builds, stores and queues the report of every ended attempt. Report thread.
// Takes every ended attempt queued so far and makes their reports durable
// together (one flush for the batch, not two per report).
void Agent::Impl::FinishEnded() {
  std::deque<Ended> batch;
  {
    MutexLock lock(&mu);
    batch.swap(ended);
  }
  if (batch.empty()) return;
  std::vector<std::pair<std::string, Json>> reports;
  std::vector<std::pair<std::string, std::string>> files;
  for (auto& e : batch) {
    Json report = BuildReport(e);
    const std::string& id = e.a.attempt_id;
    spdlog::info("attempt {} {}: {}", id, report["state"].get<std::string>(),
                 report["reason"].get<std::string>());
    files.push_back({ReportPath(id), report.dump()});
    files.push_back(
        {MarkerPath(id), CanonicalDump(Json{{"attempt_id", id}, {"state", "finished"}})});
    reports.push_back({id, std::move(report)});
  }
  // Durable before they are sent: the master may ack them the moment they arrive.
  if (Status st = WriteFilesDurably(files); !st.ok()) {
    spdlog::error("storing {} report(s): {}", reports.size(), st.ToString());
  }
  MutexLock lock(&mu);
  for (auto& [id, report] : reports) {
    pending[id] = std::move(report);
    active.erase(id);
  }
  reports_dirty = true;
}

void Agent::Impl::ReportThread() {
  Client client;
  auto backoff = kMinBackoff;
  const std::string path = "/v1/containers/" + opt.id + "/poll";
  while (true) {
    bool drain;
    // Live metrics are due on their own clock, whatever the long poll is doing.
    std::optional<agent_internal::SteadyTime> metrics_at = live_metrics.NextCheck();
    {
      MutexLock lock(&mu);
      bool work = threads_stop || draining || !ended.empty() ||
                  (reports_dirty && registered && !pending.empty());
      if (!work && !(metrics_at && SteadyClock::now() >= *metrics_at)) {
        if (metrics_at) {
          report_cv.WaitUntil(&mu, *metrics_at);
        } else {
          report_cv.Wait(&mu);
        }
        continue;  // look again: at the work, and at when metrics are due
      }
      if (threads_stop) return;
      drain = draining;
    }
    FinishEnded();
    // After FinishEnded: a finished attempt's last points go with its report.
    LiveMetrics::Collected metrics = live_metrics.Collect(SteadyClock::now());
    Json body;
    {
      MutexLock lock(&mu);
      if ((pending.empty() && metrics.batches.empty()) || !registered || orphaned) {
        reports_dirty = false;
        if (drain && ended.empty()) return;
        continue;
      }
      body = Json{
          {"epoch_seen", epoch_seen}, {"reports", PendingReports()}, {"running", RunningIds()}};
      if (!metrics.batches.empty()) body["metrics"] = std::move(metrics.batches);
    }
    RefreshClient(client, milliseconds(drain ? 2000 : 5000));
    Reply r = Post(client, path, body);
    if (r.status >= 200 && r.status < 300 && HandleAnswer(r.body, false, &metrics.sent)) {
      backoff = kMinBackoff;
      MutexLock lock(&mu);
      reports_dirty = false;  // unacknowledged ones ride on the long polls
      if (drain && ended.empty()) return;
      continue;
    }
    if (NeedsRegister(r)) {
      MutexLock lock(&mu);
      registered = false;
      poll_cv.SignalAll();
    }
    AbandonRefusedMetrics(r, metrics.sent);
    if (drain) return;  // one try at shutdown; the reports stay on disk
    if (!Backoff(report_cv, backoff)) return;
  }
}

}  // namespace epoch::executors
