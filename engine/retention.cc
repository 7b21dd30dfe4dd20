// Retention (retention.h): the horizons, what keeps an attempt's folder, the
// ExpireFiles decision, and the sweeper that finds and deletes.
#include "engine/retention.h"

#include <algorithm>
#include <filesystem>
#include <map>
#include <optional>
#include <set>
#include <string_view>
#include <system_error>
#include <vector>

#include <spdlog/spdlog.h>
#include "common/files.h"
#include "common/logging.h"
#include "common/units.h"
#include "engine/archive.h"
#include "engine/decider_internal.h"
#include "engine/engine.h"
#include "engine/event_types.h"

namespace epoch::engine {

namespace fs = std::filesystem;

namespace {

Micros Horizon(const std::map<std::string, Micros>& per_tenant, Micros global,
               const std::string& tenant) {
  auto it = per_tenant.find(tenant);
  return it != per_tenant.end() ? it->second : global;
}

// The run named by the command: open, or folded into the read model.
Result<std::optional<Run>> FindRun(const State& state, const DecideContext& ctx,
                                   const std::string& id) {
  if (const Run* r = state.FindRun(id)) return std::optional<Run>(*r);
  if (!ctx.archive) return std::optional<Run>();
  return ctx.archive->Load(state, id);
}

// The step's checkpoints folder may go with this decision: every attempt's folder is
// expired already or expires in it.
bool AllAttemptsGone(const StepRun& st, const std::set<int>& expiring) {
  for (const auto& a : st.attempts) {
    if (!a.outputs_expired && !expiring.count(a.number)) return false;
  }
  return true;
}

}  // namespace

Micros OutputsRetention(const EngineConfig& c, const std::string& tenant) {
  return Horizon(c.tenant_retention_outputs, c.retention_outputs, tenant);
}
Micros LogsRetention(const EngineConfig& c, const std::string& tenant) {
  return Horizon(c.tenant_retention_logs, c.retention_logs, tenant);
}

bool RetentionConfigured(const EngineConfig& c) {
  if (c.retention_outputs > Micros{0} || c.retention_logs > Micros{0}) return true;
  for (const auto* m : {&c.tenant_retention_outputs, &c.tenant_retention_logs}) {
    for (const auto& [tenant, d] : *m) {
      if (d > Micros{0}) return true;
    }
  }
  return false;
}

namespace {

// What keeps attempt folders past their horizon (OutputsKeptBecause), gathered in one
// pass over the state so that a decision about many files looks each one up instead
// of scanning every version and every open run per file. The reason for a folder is
// the one that scan met first: versions (models, then data sets, in the state's
// order), then open runs other than `run`, each attempt's cache hit before its
// mounts. Versions the read model holds (archive.h) are looked up in its index of
// the folders they name. Holds views into `s`, which must outlive it.
class KeptFolders {
 public:
  KeptFolders(const State& s, const EngineConfig& config, std::string_view run,
              const RunArchive* archive)
      : config_(config), archive_(archive) {
    for (bool model : {true, false}) {
      for (const auto& [key, artifact] : model ? s.models : s.datasets) {
        for (const auto& v : artifact.versions) {
          versions_.try_emplace(v.FilesAt(), ArtifactLabel(model, key, v.version));
        }
      }
    }
    for (const auto& [rid, r] : s.runs) {
      if (IsTerminal(r.phase) || rid == run) continue;
      for (const auto& st : r.steps) {
        for (const auto& a : st.attempts) {
          if (!a.cached_from.empty()) {
            reused_.try_emplace(a.cached_from, Add(rid, " reuses it"));
          }
          for (const auto& m : a.mounts) {
            std::string path = m.is_object() ? m.value("path", "") : "";
            if (path.empty()) continue;
            size_t k = Add(rid, " mounts it");
            mounted_.try_emplace(path, k);
            // Each folder the mount lies beneath (IsBeneath(path, folder)).
            for (size_t i = path.find('/'); i != std::string::npos; i = path.find('/', i + 1)) {
              if (i > 0) beneath_.try_emplace(path.substr(0, i), k);
            }
            beneath_.try_emplace(path, k);
          }
        }
      }
    }
  }

  // Why attempt (run, step, attempt)'s folder stays; empty when nothing keeps it.
  std::string Why(const std::string& run, const std::string& step, int attempt) const {
    const std::string id = AttemptId(run, step, attempt);
    if (auto it = versions_.find(id); it != versions_.end()) return it->second;
    if (archive_) {
      // A read that fails keeps the folder: deleting is the step that cannot be undone.
      auto kept = archive_->KeptBy(id);
      if (!kept.ok())
        return "the read model cannot say what keeps it (" + kept.status().ToString() + ")";
      if (!kept->empty()) return *kept;
    }
    size_t first = kNone;
    auto consider = [&](const auto& index, std::string_view key) {
      if (auto it = index.find(key); it != index.end()) first = std::min(first, it->second);
    };
    consider(reused_, id);
    const std::string dir = OutputsDir(config_, run, step, attempt);
    consider(beneath_, dir);  // a mount inside the folder
    // A mount of a folder the attempt's lies in (IsBeneath(dir, path)): each prefix of
    // dir that ends before a '/', dir itself, and "/" for an absolute dir.
    for (size_t i = dir.find('/'); i != std::string::npos; i = dir.find('/', i + 1)) {
      consider(mounted_, std::string_view(dir).substr(0, i));
    }
    consider(mounted_, dir);
    if (!dir.empty() && dir.front() == '/') consider(mounted_, "/");
    if (first == kNone) return "";
    return "run " + std::string(reasons_[first].run) + reasons_[first].what;
  }

 private:
  struct Reason {
    std::string_view run;
    const char* what;
  };
  static constexpr size_t kNone = static_cast<size_t>(-1);

  size_t Add(std::string_view run, const char* what) {
    reasons_.push_back(Reason{run, what});
    return reasons_.size() - 1;
  }

  const EngineConfig& config_;
  const RunArchive* archive_;
  std::map<std::string, std::string, std::less<>> versions_;  // attempt id -> reason
  // Indexes into reasons_ (the scan's order: the smallest is the reason given).
  std::vector<Reason> reasons_;
  std::map<std::string, size_t, std::less<>> reused_;   // cached_from -> reason
  std::map<std::string, size_t, std::less<>> mounted_;  // mount path -> reason
  std::map<std::string, size_t, std::less<>> beneath_;  // folder holding a mount -> reason
};

}  // namespace

std::string OutputsKeptBecause(const State& s, const EngineConfig& config, const Run& run,
                               const std::string& step, int attempt, const RunArchive* archive) {
  return KeptFolders(s, config, run.id, archive).Why(run.id, step, attempt);
}

Result<Decision> DecideExpireFiles(const State& state, const ExpireFiles& cmd,
                                   const DecideContext& ctx) {
  ASSIGN_OR_RETURN(std::optional<Run> found, FindRun(state, ctx, cmd.run_id));
  if (!found) return NotFound("run '" + cmd.run_id + "' not found");
  const Run& run = *found;
  const EngineConfig& cfg = *ctx.config;
  const char* key = cmd.logs ? "retention.logs" : "retention.outputs";
  if (!Foldable(run) || !run.finished_at) {
    return FailedPrecondition("run '" + run.id + "' is not finished");
  }
  Micros horizon = cmd.logs ? LogsRetention(cfg, run.tenant) : OutputsRetention(cfg, run.tenant);
  if (horizon <= Micros{0}) {
    return FailedPrecondition(std::string(key) + " keeps tenant '" + run.tenant +
                              "''s files for ever");
  }
  if (ctx.now - *run.finished_at < horizon) {
    return FailedPrecondition("run '" + run.id + "' ended at " + FormatTime(*run.finished_at) +
                              ", within " + key + " (" + FormatDuration(horizon) + ")");
  }
  // Attempt folders first, so that a step's checkpoints may go with its last one.
  std::map<std::string, std::set<int>> expiring;
  std::vector<ev::ExpiredFiles> files;
  int64_t bytes = 0;
  std::optional<KeptFolders> kept;  // built for the first attempt folder asked about
  auto take = [&](const ExpireFiles::Found& f) {
    files.push_back(ev::ExpiredFiles{f.step, f.attempt, f.bytes});
    bytes += f.bytes;
    expiring[f.step].insert(f.attempt);
  };
  for (const auto& f : cmd.files) {
    const StepRun* st = run.FindStep(f.step);
    if (!st || f.attempt < 1 || f.attempt > static_cast<int>(st->attempts.size())) continue;
    const Attempt& a = st->attempts[static_cast<size_t>(f.attempt - 1)];
    if (cmd.logs) {
      if (!a.logs_expired) take(f);
      continue;
    }
    if (a.outputs_expired || expiring[f.step].count(f.attempt)) continue;
    if (!kept) kept.emplace(state, cfg, run.id, ctx.archive);
    if (!kept->Why(run.id, f.step, f.attempt).empty()) continue;
    take(f);
  }
  if (!cmd.logs) {
    for (const auto& f : cmd.files) {
      const StepRun* st = run.FindStep(f.step);
      if (f.attempt != 0 || !st || st->checkpoints_expired || expiring[f.step].count(0)) continue;
      if (AllAttemptsGone(*st, expiring[f.step])) take(f);
    }
  }
  Decision d;
  d.result.id = run.id;
  for (const auto& f : files) d.result.keys.push_back(f.step + "/" + std::to_string(f.attempt));
  d.result.created = !files.empty();
  if (files.empty()) return d;
  if (cmd.logs) {
    d.events.push_back(
        RunEvent(run,
                 ev::LogsExpired{
                     .files = std::move(files), .bytes = bytes, .horizon = FormatDuration(horizon)},
                 "retention"));
  } else {
    d.events.push_back(
        RunEvent(run,
                 ev::OutputsExpired{
                     .files = std::move(files), .bytes = bytes, .horizon = FormatDuration(horizon)},
                 "retention"));
  }
  return d;
}

namespace {

// An attempt's folder: runs/<run>/<step>/<n> (its outputs/ and the rest).
std::string AttemptDir(const EngineConfig& cfg, const std::string& run, const std::string& step,
                       int attempt) {
  std::string dir = OutputsDir(cfg, run, step, attempt);
  dir.resize(dir.size() - std::string_view("/outputs").size());
  return dir;
}

// An attempt's logs: <n>.log, and <n>.<r>.log of each gang rank r > 0.
std::vector<std::string> LogFiles(const EngineConfig& cfg, const std::string& run,
                                  const std::string& step, const Attempt& a) {
  std::string log = LogPath(cfg, run, step, a.number);
  std::vector<std::string> out = {log};
  log.resize(log.size() - std::string_view(".log").size());
  for (int r = 1; r < a.workers; ++r) out.push_back(log + "." + std::to_string(r) + ".log");
  return out;
}

// The data dir, absolute and normalised: the root that every walk of the files steps
// wrote stays beneath, following no link (common/files.h, StatTreeBeneath).
std::string DataRoot(const EngineConfig& cfg) {
  std::error_code ec;
  auto abs = fs::absolute(cfg.data_dir, ec);
  auto norm = NormalizePath(ec ? cfg.data_dir : abs.string());
  return norm.ok() ? *norm : cfg.data_dir;
}

// What is at `path` beneath the data dir; a walk that fails counts as nothing there
// (and adds its error to the report when there is one).
TreeStat Stat(const std::string& root, const std::string& path, SweepReport* report = nullptr) {
  auto st = StatTreeBeneath(root, path);
  if (st.ok()) return *st;
  if (report) report->errors.push_back("measuring " + path + ": " + st.status().ToString());
  return {};
}

// Deletes `path` (a folder and all beneath it, or a file) beneath the data dir,
// following no link: a link is removed, never followed, and a path whose folders
// include a link is not there. Says what was there (nothing, after an error, which is
// added to the report).
TreeStat Delete(const std::string& root, const std::string& path, SweepReport* report) {
  auto removed = RemoveTreeBeneath(root, path);
  if (removed.ok()) return *removed;
  report->errors.push_back("deleting " + path + ": " + removed.status().ToString());
  return {};
}

}  // namespace

RetentionSweeper::RetentionSweeper(Engine* engine) : engine_(engine) {}

SweepReport RetentionSweeper::SweepOnce() {
  SweepReport report;
  const EngineConfig& cfg = engine_->options().config;
  if (engine_->role() != Role::kLeader || !RetentionConfigured(cfg)) return report;
  // The runs the disk still holds files of: what is retained, not the whole history.
  std::set<std::string> ids;
  for (const char* sub : {"/runs", "/logs"}) {
    std::error_code ec;
    for (fs::directory_iterator it(cfg.data_dir + sub, ec), end; !ec && it != end;
         it.increment(ec)) {
      std::error_code e2;
      if (it->is_directory(e2) && !it->is_symlink(e2)) ids.insert(it->path().filename().string());
    }
  }
  for (const auto& id : ids) SweepRun(id, &report);
  return report;
}

void RetentionSweeper::SweepRun(const std::string& id, SweepReport* report) {
  const EngineConfig& cfg = engine_->options().config;
  const std::string root = DataRoot(cfg);
  // A copy, so that the disk is read outside the published state's lock.
  std::optional<Run> run = engine_->ReadRun(
      id, [](const State&, const Run* r) { return r ? std::optional<Run>(*r) : std::nullopt; });
  if (!run) return;  // not a run this master knows: left alone
  ++report->runs;
  if (!Foldable(*run) || !run->finished_at) return;
  const TimePoint now = engine_->clock()->Now();
  std::set<std::string> now_expired;  // "outputs <step>/<n>", "log <step>/<n>" of this pass

  for (bool logs : {false, true}) {
    Micros horizon = logs ? LogsRetention(cfg, run->tenant) : OutputsRetention(cfg, run->tenant);
    if (horizon <= Micros{0} || now - *run->finished_at < horizon) continue;
    ExpireFiles cmd{.run_id = id, .logs = logs, .files = {}};
    for (const auto& st : run->steps) {
      for (const auto& a : st.attempts) {
        if (logs ? bool(a.logs_expired) : bool(a.outputs_expired)) continue;
        std::vector<std::string> paths = logs ? LogFiles(cfg, id, st.name, a)
                                              : std::vector{AttemptDir(cfg, id, st.name, a.number)};
        bool present = false;
        int64_t bytes = 0;
        for (const auto& p : paths) {
          TreeStat t = Stat(root, p, report);
          present = present || t.present;
          bytes += t.bytes;
        }
        if (present) cmd.files.push_back({st.name, a.number, bytes});
      }
      std::string checkpoints = CheckpointDir(cfg, id, st.name, -1);
      if (!logs && !st.checkpoints_expired) {
        if (TreeStat t = Stat(root, checkpoints, report); t.present) {
          cmd.files.push_back({st.name, 0, t.bytes});
        }
      }
    }
    if (cmd.files.empty()) continue;
    auto r = engine_->Execute(cmd);
    if (!r.ok()) {
      report->errors.push_back((logs ? "logs of run " : "outputs of run ") + id + ": " +
                               r.status().ToString());
      continue;
    }
    (logs ? report->logs_expired : report->outputs_expired) += r->keys.size();
    for (const auto& k : r->keys) now_expired.insert((logs ? "log " : "outputs ") + k);
  }

  // Delete what the durable state says expired: this pass's, and any an earlier
  // master recorded but did not live to delete.
  run = engine_->ReadRun(
      id, [](const State&, const Run* r) { return r ? std::optional<Run>(*r) : std::nullopt; });
  if (!run) return;
  auto remove = [&](const std::vector<std::string>& paths, const std::string& what) {
    bool any = false;
    for (const auto& path : paths) {
      TreeStat gone = Delete(root, path, report);
      any = any || gone.present;
      report->bytes_deleted += gone.bytes;
    }
    if (any && !now_expired.count(what)) ++report->deleted_again;
  };
  for (const auto& st : run->steps) {
    for (const auto& a : st.attempts) {
      std::string key = st.name + "/" + std::to_string(a.number);
      if (a.outputs_expired) remove({AttemptDir(cfg, id, st.name, a.number)}, "outputs " + key);
      if (a.logs_expired) remove(LogFiles(cfg, id, st.name, a), "log " + key);
    }
    if (st.checkpoints_expired) {
      remove({CheckpointDir(cfg, id, st.name, -1)}, "outputs " + st.name + "/0");
    }
  }
  for (const std::string& dir : {WorkspaceDir(cfg, id), cfg.data_dir + "/logs/" + id}) {
    if (Status s = RemoveEmptyDirsBeneath(root, dir); !s.ok()) {
      report->errors.push_back("pruning " + dir + ": " + s.ToString());
    }
  }
}

Json UsageJson(const Engine& engine, const TenantFilter& filter) {
  const EngineConfig& cfg = engine.options().config;
  const std::string root = DataRoot(cfg);
  auto visible = [&](const std::string& tenant) { return !filter || filter(tenant); };
  Json tenants = Json::object();
  auto entry = [&](const std::string& tenant) -> Json& {
    Json& t = tenants[tenant];
    if (t.is_null()) {
      t = Json{
          {"runs", 0},
          {"outputs_bytes", 0},
          {"logs_bytes", 0},
          {"expired",
           {{"outputs_bytes", 0}, {"logs_bytes", 0}, {"outputs_events", 0}, {"logs_events", 0}}},
          {"retention",
           {{"outputs", FormatDuration(OutputsRetention(cfg, tenant))},
            {"logs", FormatDuration(LogsRetention(cfg, tenant))}}}};
    }
    return t;
  };
  std::map<std::string, std::string> tenant_of;  // run id -> tenant ("" unknown)
  for (const char* sub : {"runs", "logs"}) {
    std::error_code ec;
    for (fs::directory_iterator it(cfg.data_dir + "/" + sub, ec), end; !ec && it != end;
         it.increment(ec)) {
      std::error_code e2;
      if (!it->is_directory(e2) || it->is_symlink(e2)) continue;
      std::string id = it->path().filename().string();
      auto [known, fresh] = tenant_of.try_emplace(id);
      if (fresh) {
        known->second = engine.ReadRun(
            id, [](const State&, const Run* r) { return r ? r->tenant : std::string(); });
        if (!known->second.empty() && visible(known->second)) {
          entry(known->second)["runs"] = entry(known->second)["runs"].get<int64_t>() + 1;
        }
      }
      if (known->second.empty() || !visible(known->second)) continue;
      Json& t = entry(known->second);
      const char* field = std::string_view(sub) == "runs" ? "outputs_bytes" : "logs_bytes";
      t[field] = t[field].get<int64_t>() + Stat(root, it->path().string()).bytes;
    }
  }
  engine.Read([&](const State& s) {
    for (const auto& [tenant, x] : s.expired) {
      if (!visible(tenant)) continue;
      entry(tenant)["expired"] = Json{{"outputs_bytes", x.outputs_bytes},
                                      {"logs_bytes", x.logs_bytes},
                                      {"outputs_events", x.outputs_events},
                                      {"logs_events", x.logs_events}};
    }
    return 0;
  });
  return Json{{"tenants", tenants}};
}

RetentionLoop::RetentionLoop(Engine* engine, Micros interval) {
  thread_ = std::thread([this, engine, interval] {
    RetentionSweeper sweeper(engine);
    while (!WaitOrStop(interval)) {
      SweepReport r = sweeper.SweepOnce();
      if (r.outputs_expired || r.logs_expired || r.deleted_again || !r.errors.empty()) {
        spdlog::info(
            "retention: {} run(s) looked at; {} attempt folder(s) or checkpoints and {} log(s) "
            "expired, {} deleted again; {} bytes deleted",
            r.runs, r.outputs_expired, r.logs_expired, r.deleted_again, r.bytes_deleted);
      }
      for (const auto& e : r.errors) spdlog::warn("retention: {}", e);
    }
  });
}

bool RetentionLoop::WaitOrStop(Micros interval) {
  auto deadline = std::chrono::steady_clock::now() + interval;
  MutexLock lock(&mu_);
  while (!stopping_ && cv_.WaitUntil(&mu_, deadline)) {
  }
  return stopping_;
}

RetentionLoop::~RetentionLoop() {
  {
    MutexLock lock(&mu_);
    stopping_ = true;
  }
  cv_.SignalAll();
  thread_.join();
}

}  // namespace epoch::engine
