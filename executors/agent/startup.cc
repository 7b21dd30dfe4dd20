// Agent::Impl at start-up and its on-disk state (containers/<id>/): Prepare (the data
// dir's canonical path, the credential, the isolation decision, then the limits),
// Recover (agent.json, unacknowledged reports, attempt markers: an attempt that was
// running under a dead agent is reported failed), and the paths and writers of
// agent.json, reports/ and attempts/.
#include <limits.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstring>

#include "common/files.h"
#include "common/mutex.h"
#include "executors/agent/agent_internal.h"

namespace epoch::executors {

namespace {

// The folder this program's binary is in ("" if unknown).
std::string SelfDir() {
  char buf[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n <= 0) return "";
  std::string p(buf, static_cast<size_t>(n));
  return p.substr(0, p.find_last_of('/'));
}

}  // namespace

using agent_internal::GetString;
using agent_internal::NowString;

std::string Agent::Impl::ReportPath(const std::string& id) {
  return reports_dir + "/" + EscapeAttemptId(id) + ".json";
}

std::string Agent::Impl::MarkerPath(const std::string& id) {
  return attempts_dir + "/" + EscapeAttemptId(id);
}

Status Agent::Impl::WriteMarker(const std::string& id, const char* state) {
  return WriteFileDurably(MarkerPath(id),
                          CanonicalDump(Json{{"attempt_id", id}, {"state", state}}));
}

Status Agent::Impl::WriteAgentJson() REQUIRES(mu) {
  Json j{{"id", opt.id},
         {"pid", static_cast<int64_t>(getpid())},
         {"master_url", master_url},
         {"epoch_seen", epoch_seen},
         {"started_at", NowString()}};
  return WriteFileDurably(dir + "/agent.json", j.dump(2) + "\n");
}

// ---------------------------------------------------------------- start-up recovery

// Before any thread starts: the data dir's canonical path, the credential, and what
// isolation this host gives steps.
Status Agent::Impl::Prepare() {
  {
    MutexLock lock(&mu);
    initial_master = master_url;
  }
  auto real = CanonicalPath(opt.data_dir);
  if (!real.ok()) return real.status().WithContext("data dir");
  data_dir_real = *real;
  if (!opt.credential_file.empty()) {
    // The error says where and why, never what the file holds.
    auto text = ReadFile(opt.credential_file, 4096);
    if (!text.ok()) {
      return FailedPrecondition("cannot read the credential file: " + text.status().message());
    }
    credential = *text;
    while (!credential.empty() && std::isspace(static_cast<unsigned char>(credential.back()))) {
      credential.pop_back();
    }
    if (credential.empty() || credential.find_first_of("\r\n") != std::string::npos) {
      return FailedPrecondition("the credential file " + opt.credential_file +
                                " does not hold one credential");
    }
  }
  sandbox_path = !opt.sandbox_path.empty() ? opt.sandbox_path : SelfDir() + "/epoch-sandbox";
  // The shim starts in "/": a relative --sandbox-path must not depend on our cwd.
  if (auto abs = CanonicalPath(sandbox_path); abs.ok()) sandbox_path = *abs;
  ProbeResult probe = ProbeSandbox(sandbox_path);
  ASSIGN_OR_RETURN(isolation, DecideIsolation(opt.isolation, geteuid() == 0, probe));
  spdlog::info("isolation {}: sandbox {}, run_as {}{}{}", isolation.mode, isolation.sandbox,
               isolation.run_as ? "yes" : "no", isolation.reason.empty() ? "" : ": ",
               isolation.reason);
  RETURN_IF_ERROR(PrepareLimits());
  spdlog::info("limits {}: {}{}{}", opt.enforce, enforce_mechanism,
               enforce_reason.empty() ? "" : ": ", enforce_reason);
  return Status::Ok();
}

// Before any thread starts; it holds mu all the same (uncontended).
Status Agent::Impl::Recover() {
  MutexLock lock(&mu);
  RETURN_IF_ERROR(MakeDirs(reports_dir));
  RETURN_IF_ERROR(MakeDirs(attempts_dir));
  if (chmod(dir.c_str(), 0700) != 0) {
    return Internal("chmod 0700 " + dir + ": " + std::strerror(errno));
  }
  if (auto prev = ReadFile(dir + "/agent.json", 1 << 20); prev.ok()) {
    auto j = ParseJson(*prev);
    if (j.ok() && j->is_object()) {
      auto e = j->find("epoch_seen");
      if (e != j->end() && e->is_number_integer()) epoch_seen = e->get<int64_t>();
    }
  }
  for (const auto& name : ListFiles(reports_dir)) {
    if (name.size() < 5 || name.substr(name.size() - 5) != ".json") continue;
    std::string path = reports_dir + "/" + name;
    auto text = ReadFile(path);
    auto j = text.ok() ? ParseJson(*text) : Result<Json>(text.status());
    if (!j.ok() || !j->is_object() || GetString(*j, "attempt_id").empty()) {
      spdlog::error("unreadable report {} set aside: {}", path, j.status().ToString());
      if (rename(path.c_str(), (path + ".corrupt").c_str()) != 0) {
        spdlog::error("cannot set aside {}", path);
      }
      continue;
    }
    std::string id = GetString(*j, "attempt_id");
    known.insert(id);
    pending[id] = std::move(*j);
  }
  for (const auto& name : ListFiles(attempts_dir)) {
    if (name.size() > 4 && name.substr(name.size() - 4) == ".tmp") continue;
    auto text = ReadFile(attempts_dir + "/" + name, 1 << 20);
    auto j = text.ok() ? ParseJson(*text) : Result<Json>(text.status());
    if (!j.ok() || !j->is_object()) continue;
    std::string id = GetString(*j, "attempt_id");
    if (id.empty()) continue;
    known.insert(id);
    if (GetString(*j, "state") == "started" && !pending.count(id)) {
      // It ran under a previous agent that died; its process died with it
      // (PDEATHSIG). Say so rather than run it again.
      Json report{{"attempt_id", id},
                  {"state", "failed"},
                  {"exit_code", nullptr},
                  {"signal", nullptr},
                  {"reason", "agent restarted while the attempt was running"},
                  {"usage", {{"wall_s", 0.0}, {"cpu_s", 0.0}, {"max_rss_kb", 0}}},
                  {"metrics", Json::object()},
                  {"outputs", Json::array()},
                  {"finished_at", NowString()}};
      RETURN_IF_ERROR(WriteFileDurably(ReportPath(id), report.dump()));
      RETURN_IF_ERROR(WriteMarker(id, "finished"));
      pending[id] = std::move(report);
    }
  }
  if (!pending.empty()) {
    spdlog::info("loaded {} unacknowledged report(s) from {}", pending.size(), reports_dir);
    reports_dirty = true;
  }
  return WriteAgentJson();
}

}  // namespace epoch::executors
