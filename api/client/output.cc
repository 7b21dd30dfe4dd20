#include "api/client/output.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>

namespace epoch::client {

namespace {

const Json& Field(const Json& obj, std::string_view key) {
  static const Json kNull;
  if (!obj.is_object()) return kNull;
  auto it = obj.find(key);
  return it == obj.end() ? kNull : *it;
}

std::string Str(const Json& obj, std::string_view key) {
  const Json& v = Field(obj, key);
  return v.is_string() ? v.get<std::string>() : std::string();
}

const Json& Items(const Json& list) {
  static const Json kEmpty = Json::array();
  if (list.is_array()) return list;
  const Json& items = Field(list, "items");
  return items.is_array() ? items : kEmpty;
}

std::optional<TimePoint> TimeField(const Json& obj, std::string_view key) {
  std::string s = Str(obj, key);
  if (s.empty()) return std::nullopt;
  auto t = ParseTime(s);
  if (!t.ok()) return std::nullopt;
  return *t;
}

// "2026-11-28T13:38:40.123456Z" -> "2026-11-28 13:38:40" (tables need no microseconds).
std::string ShortTime(const Json& obj, std::string_view key) {
  std::string s = Str(obj, key);
  if (s.empty()) return "-";
  if (s.size() >= 19 && s[10] == 'T') return s.substr(0, 10) + " " + s.substr(11, 8);
  return s;
}

std::string Pad(std::string s, size_t width) {
  if (s.size() < width) s.append(width - s.size(), ' ');
  return s;
}

std::string JoinLabels(const Json& labels) {
  if (!labels.is_object() || labels.empty()) return "-";
  std::string out;
  for (const auto& [k, v] : labels.items()) {
    if (!out.empty()) out += ',';
    out += k + "=" + (v.is_string() ? v.get<std::string>() : v.dump());
  }
  return out;
}

std::string WorkflowAt(const Json& run) {
  std::string wf = Cell(run, "workflow");
  const Json& v = Field(run, "version");
  if (!v.is_null()) wf += "@" + (v.is_string() ? v.get<std::string>() : v.dump());
  return wf;
}

const Json& LastAttempt(const Json& step) {
  static const Json kNull;
  const Json& attempts = Field(step, "attempts");
  if (!attempts.is_array() || attempts.empty()) return kNull;
  return attempts.back();
}

size_t AttemptCount(const Json& step) {
  const Json& attempts = Field(step, "attempts");
  if (attempts.is_array()) return attempts.size();
  if (attempts.is_number_unsigned() || attempts.is_number_integer()) {
    return attempts.get<size_t>();
  }
  return 0;
}

// "exit 0", "signal 9", "exit 1 oom_killed", "container_lost" or "-".
std::string Outcome(const Json& attempt) {
  std::string out;
  auto add = [&](std::string s) {
    if (!out.empty()) out += ' ';
    out += s;
  };
  const Json& exit_code = Field(attempt, "exit_code");
  if (exit_code.is_number()) add("exit " + exit_code.dump());
  const Json& signal = Field(attempt, "signal");
  if (signal.is_number() && signal.get<int64_t>() != 0) add("signal " + signal.dump());
  if (signal.is_string() && !signal.get<std::string>().empty())
    add("signal " + Str(attempt, "signal"));
  std::string reason = Str(attempt, "reason");
  if (!reason.empty()) add(reason);
  return out.empty() ? "-" : out;
}

std::string StepDuration(const Json& step, TimePoint now) {
  const Json& last = LastAttempt(step);
  if (last.is_null()) return "-";
  std::string cell = ElapsedCell(last, "started_at", "finished_at", now);
  if (cell != "-") return cell;
  const Json& wall = Field(Field(last, "usage"), "wall_s");
  if (wall.is_number()) {
    return HumanDuration(Micros(static_cast<int64_t>(wall.get<double>() * 1e6)));
  }
  return "-";
}

// "500m/0.49": the CPU reserved (millicores; "!" when the kernel enforced it as a
// limit) and the cores used on average over the attempt's wall time.
std::string CpuCell(const Json& attempt) {
  const Json& res = Field(attempt, "resources");
  const Json& req = Field(res, "cpu_millis");
  if (!req.is_number()) return "-";
  std::string out = req.dump() + "m";
  if (Field(Field(res, "limits"), "cpu_millis").is_number()) out += "!";
  const Json& usage = Field(attempt, "usage");
  const Json& cpu = Field(usage, "cpu_s");
  const Json& wall = Field(usage, "wall_s");
  if (cpu.is_number() && wall.is_number() && wall.get<double>() > 0) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "/%.2f", cpu.get<double>() / wall.get<double>());
    out += buf;
  }
  return out;
}

// "128Mi/41.3Mi": the memory reserved ("!" when enforced as a limit) and the peak the
// cgroup measured (else the largest process's RSS from wait4).
std::string MemoryCell(const Json& attempt) {
  const Json& res = Field(attempt, "resources");
  const Json& req = Field(res, "memory_bytes");
  if (!req.is_number()) return "-";
  std::string out = HumanBytes(req.get<int64_t>());
  if (Field(Field(res, "limits"), "memory_bytes").is_number()) out += "!";
  const Json& usage = Field(attempt, "usage");
  const Json& peak = Field(usage, "peak_memory_bytes");
  const Json& rss = Field(usage, "max_rss_kb");
  if (peak.is_number() && peak.get<int64_t>() > 0) {
    out += "/" + HumanBytes(peak.get<int64_t>());
  } else if (rss.is_number() && rss.get<int64_t>() > 0) {
    out += "/" + HumanBytes(rss.get<int64_t>() * 1024);
  }
  return out;
}

// A swept step: its attempts are trials.
bool IsSweep(const Json& step) {
  const Json& attempts = Field(step, "attempts");
  if (!attempts.is_array()) return false;
  return std::any_of(attempts.begin(), attempts.end(),
                     [](const Json& a) { return a.is_object() && a.contains("trial"); });
}

// A value as the server's own numbers look: 6 significant digits, integers without ".0".
std::string Number(const Json& v) {
  if (!v.is_number()) return CompactJson(v);
  if (!v.is_number_float()) return v.dump();
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.6g", v.get<double>());
  return buf;
}

// "k=v k2=v2" for an object of parameters; "-" for none.
std::string ParamsCell(const Json& params) {
  if (!params.is_object() || params.empty()) return "-";
  std::string out;
  for (const auto& [k, v] : params.items()) {
    if (!out.empty()) out += ' ';
    out += k + "=" + (v.is_string() ? v.get<std::string>() : Number(v));
  }
  return out;
}

// The mark of the rung a trial was last judged at ({rung, <resource>, value, decision}).
const Json& LastRungMark(const Json& attempt) {
  static const Json kNull;
  const Json& rung = Field(attempt, "rung");
  const Json& marks = Field(attempt, "rungs");
  if (!rung.is_number_integer() || !marks.is_array()) return kNull;
  for (const Json& m : marks) {
    if (Field(m, "rung") == rung) return m;
  }
  return kNull;
}

// "rung 1 (epoch 3)": the highest rung the trial was judged at and the resource it had
// used there (the mark's one key besides rung, value and decision); "-" before the first.
std::string RungCell(const Json& attempt) {
  const Json& rung = Field(attempt, "rung");
  if (!rung.is_number_integer()) return "-";
  std::string out = "rung " + rung.dump();
  const Json& mark = LastRungMark(attempt);
  if (mark.is_object()) {
    for (const auto& [k, v] : mark.items()) {
      if (k == "rung" || k == "value" || k == "decision") continue;
      out += " (" + k + " " + Number(v) + ")";
      break;
    }
  }
  return out;
}

// "succeeded", "running", "failed (exit 1)", or, for a trial early stopping stopped,
// "stopped at rung R" ("stopping at rung R" until its process has ended).
std::string TrialState(const Json& attempt) {
  std::string state = Cell(attempt, "state");
  if (Field(attempt, "stopped").is_string()) {
    std::string verb =
        state == "queued" || state == "assigned" || state == "running" ? "stopping" : "stopped";
    const Json& rung = Field(attempt, "rung");
    return rung.is_number_integer() ? verb + " at rung " + rung.dump() : verb;
  }
  if (state == "failed" || state == "timed_out" || state == "lost") {
    std::string outcome = Outcome(attempt);
    if (outcome != "-") state += " (" + outcome + ")";
  }
  return state;
}

// The trial's last objective value: its final metric when the sweep's objective is known
// (the step's `best` names it) and the trial reported it, else the value at the highest
// rung it was judged at; "-" for neither.
std::string ObjectiveCell(const Json& attempt, const std::string& metric) {
  if (!metric.empty()) {
    const Json& v = Field(Field(attempt, "metrics"), metric);
    if (v.is_number()) return Number(v);
  }
  const Json& mark = LastRungMark(attempt);
  return mark.is_object() ? Number(Field(mark, "value")) : "-";
}

// A gang attempt: "4: 3 running, 1 succeeded" (its world size, then its workers'
// states, counted in the order they first appear by rank); "-" for one process.
std::string WorkersCell(const Json& attempt) {
  const Json& size = Field(attempt, "world_size");
  if (!size.is_number()) return "-";
  std::vector<std::pair<std::string, int>> counts;
  const Json& workers = Field(attempt, "workers");
  if (workers.is_array()) {
    for (const Json& w : workers) {
      std::string state = Cell(w, "state");
      auto it = std::find_if(counts.begin(), counts.end(),
                             [&](const auto& c) { return c.first == state; });
      if (it == counts.end()) {
        counts.emplace_back(state, 1);
      } else {
        ++it->second;
      }
    }
  }
  std::string out = size.dump();
  for (size_t i = 0; i < counts.size(); ++i) {
    out += (i == 0 ? ": " : ", ") + std::to_string(counts[i].second) + " " + counts[i].first;
  }
  return out;
}

// A swept step's trials, one row per attempt: trial, attempt, state, params, where early
// stopping judged it (bracket only for hyperband's several brackets), its last objective
// value, how long it ran, and a gang's size and workers. Columns nobody fills are left out.
std::string TrialsTable(const Json& step, TimePoint now) {
  const Json& attempts = Field(step, "attempts");
  std::string metric = Str(Field(step, "best"), "metric");
  bool rungs = false, brackets = false, gangs = false;
  for (const Json& a : attempts) {
    rungs = rungs || Field(a, "bracket").is_number();
    brackets = brackets || (Field(a, "bracket").is_number() && Field(a, "bracket") != 0);
    gangs = gangs || Field(a, "world_size").is_number();
  }
  std::vector<std::string> headers{"TRIAL", "ATTEMPT", "STATE", "PARAMS"};
  if (brackets) headers.push_back("BRACKET");
  if (rungs) headers.push_back("RUNG");
  headers.insert(headers.end(), {"OBJECTIVE", "DURATION"});
  if (gangs) headers.push_back("WORKERS");
  Table t(headers);
  for (const Json& a : attempts) {
    std::vector<std::string> row{Cell(a, "trial"), Cell(a, "attempt"), TrialState(a),
                                 ParamsCell(Field(a, "params"))};
    if (brackets) row.push_back(Cell(a, "bracket"));
    if (rungs) row.push_back(RungCell(a));
    row.push_back(ObjectiveCell(a, metric));
    row.push_back(ElapsedCell(a, "started_at", "finished_at", now));
    if (gangs) row.push_back(WorkersCell(a));
    t.AddRow(std::move(row));
  }
  return "\nTrials of " + Cell(step, "name") + ":\n" + t.Render();
}

// The EXIT/REASON cell of a swept step: the best trial once there is one ("best trial 0:
// accuracy=0.9"), else the step's reason; a trial's own outcome is in the trials table.
std::string SweepOutcome(const Json& step) {
  const Json& best = Field(step, "best");
  if (best.is_object()) {
    return "best trial " + Cell(best, "trial") + ": " + Cell(best, "metric") + "=" +
           Number(Field(best, "value"));
  }
  return Cell(step, "reason");
}

// A swept step's duration: from its first trial's start to its last trial's end (or now
// while it is not finished).
std::string SweepDuration(const Json& step, TimePoint now) {
  std::optional<TimePoint> first, last;
  bool open = false;
  for (const Json& a : Field(step, "attempts")) {
    auto start = TimeField(a, "started_at");
    if (!start) continue;
    if (!first || *start < *first) first = start;
    auto end = TimeField(a, "finished_at");
    if (!end) open = true;
    if (end && (!last || *end > *last)) last = end;
  }
  if (!first) return "-";
  return HumanDuration((open || !last ? now : *last) - *first);
}

std::string KeyValueBlock(const std::vector<std::pair<std::string, std::string>>& rows) {
  size_t width = 0;
  for (const auto& [k, v] : rows) width = std::max(width, k.size() + 1);
  std::string out;
  for (const auto& [k, v] : rows) out += Pad(k + ":", width + 1) + v + "\n";
  return out;
}

std::string Clock(TimePoint now) {
  std::string t = FormatTime(now);  // 2026-11-28T13:38:40.123456Z
  return t.size() >= 19 ? t.substr(11, 8) : t;
}

}  // namespace

Result<OutputFormat> ParseOutputFormat(std::string_view s) {
  if (s == "table") return OutputFormat::kTable;
  if (s == "json") return OutputFormat::kJson;
  return InvalidArgument("output format must be 'table' or 'json', not '" + std::string(s) + "'");
}

std::string Table::Render() const {
  std::vector<size_t> widths(headers_.size(), 0);
  auto measure = [&](const std::vector<std::string>& row) {
    for (size_t i = 0; i < row.size() && i < widths.size(); ++i) {
      widths[i] = std::max(widths[i], row[i].size());
    }
  };
  measure(headers_);
  for (const auto& r : rows_) measure(r);
  auto line = [&](const std::vector<std::string>& row) {
    std::string out;
    for (size_t i = 0; i < widths.size(); ++i) {
      std::string cell = i < row.size() ? row[i] : "";
      if (i + 1 < widths.size()) {
        out += Pad(cell, widths[i] + 2);
      } else {
        out += cell;
      }
    }
    while (!out.empty() && out.back() == ' ') out.pop_back();
    return out + "\n";
  };
  std::string out = line(headers_);
  for (const auto& r : rows_) out += line(r);
  return out;
}

std::string Cell(const Json& obj, std::string_view key) {
  const Json& v = Field(obj, key);
  if (v.is_string()) {
    std::string s = v.get<std::string>();
    return s.empty() ? "-" : s;
  }
  return CompactJson(v);
}

std::string CompactJson(const Json& j) {
  if (j.is_null()) return "-";
  if ((j.is_object() || j.is_array()) && j.empty()) return "-";
  return j.dump(-1, ' ', false, Json::error_handler_t::replace);
}

std::string HumanDuration(Micros d) {
  int64_t us = d.count();
  if (us < 0) us = 0;
  if (us < 1000000) return std::to_string(us / 1000) + "ms";
  if (us < 60 * 1000000LL) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.1fs", static_cast<double>(us) / 1e6);
    return buf;
  }
  int64_t s = us / 1000000;
  std::string out;
  if (s >= 86400) {
    out += std::to_string(s / 86400) + "d";
    s %= 86400;
  }
  if (s >= 3600) {
    out += std::to_string(s / 3600) + "h";
    s %= 3600;
  }
  if (s >= 60) {
    out += std::to_string(s / 60) + "m";
    s %= 60;
  }
  if (s > 0 && out.find('d') == std::string::npos) out += std::to_string(s) + "s";
  return out;
}

std::string HumanBytes(int64_t bytes) {
  static constexpr const char* kUnits[] = {"Ki", "Mi", "Gi", "Ti"};
  if (bytes < 1024) return std::to_string(bytes);
  // Exact in the largest unit that divides it ("2144Mi", as configured); else rounded.
  for (int unit = 3; unit >= 0; --unit) {
    int64_t size = int64_t{1} << (10 * (unit + 1));
    if (bytes >= size && bytes % size == 0) return std::to_string(bytes / size) + kUnits[unit];
  }
  double v = static_cast<double>(bytes);
  int unit = -1;
  while (v >= 1024 && unit < 3) {
    v /= 1024;
    ++unit;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f%s", v, kUnits[unit]);
  return buf;
}

std::string ElapsedCell(const Json& obj, std::string_view start_key, std::string_view end_key,
                        TimePoint now) {
  auto start = TimeField(obj, start_key);
  if (!start) return "-";
  auto end = TimeField(obj, end_key);
  return HumanDuration(end.value_or(now) - *start);
}

bool IsTerminalRunState(std::string_view state) {
  return state == "succeeded" || state == "failed" || state == "cancelled";
}

std::string RenderJson(const Json& j) {
  return j.dump(2, ' ', false, Json::error_handler_t::replace) + "\n";
}

std::string RenderRun(const Json& run, TimePoint now) {
  std::string out = KeyValueBlock({
      {"Run", Cell(run, "id")},
      {"Workflow", WorkflowAt(run)},
      {"State", Cell(run, "state")},
      {"Submitted", Cell(run, "submitted_at")},
      {"Started", Cell(run, "started_at")},
      {"Finished", Cell(run, "finished_at")},
      {"Duration", ElapsedCell(run, "started_at", "finished_at", now)},
      {"Params", CompactJson(Field(run, "params"))},
      {"Labels", JoinLabels(Field(run, "labels"))},
  });
  const Json& steps = Field(run, "steps");
  if (!steps.is_array() || steps.empty()) return out;
  Table t({"STEP", "KIND", "STATE", "ATTEMPTS", "EXIT/REASON", "DURATION", "CPU REQ/USED",
           "MEM REQ/PEAK", "METRICS"});
  for (const Json& step : steps) {
    const Json& last = LastAttempt(step);
    bool sweep = IsSweep(step);
    t.AddRow({Cell(step, "name"), Cell(step, "kind"), Cell(step, "state"),
              std::to_string(AttemptCount(step)), sweep ? SweepOutcome(step) : Outcome(last),
              sweep ? SweepDuration(step, now) : StepDuration(step, now), CpuCell(last),
              MemoryCell(last), CompactJson(Field(step, "metrics"))});
  }
  std::string trials;
  for (const Json& step : steps) {
    if (IsSweep(step)) trials += TrialsTable(step, now);
  }
  // What retention deleted (engine/retention.h), one line per attempt or step.
  std::string expired;
  auto note = [&](const std::string& what, const Json& x) {
    if (!x.is_object()) return;
    expired += "  " + what + ": " + HumanBytes(x.value("bytes", int64_t{0})) + " deleted " +
               x.value("at", std::string()) + "\n";
  };
  for (const Json& step : steps) {
    const std::string name = Str(step, "name");
    const Json& attempts = Field(step, "attempts");
    for (size_t i = 0; attempts.is_array() && i < attempts.size(); ++i) {
      const Json& a = attempts[i];
      const std::string id = name + "/" + a.value("attempt", Json()).dump();
      note(id + " outputs", Field(a, "outputs_expired"));
      note(id + " log", Field(a, "log_expired"));
    }
    note(name + " checkpoints", Field(step, "checkpoints_expired"));
  }
  if (!expired.empty()) expired = "\nExpired (retention):\n" + expired;
  return out + "\n" + t.Render() + trials + expired;
}

std::string RenderRunList(const Json& runs, TimePoint now) {
  Table t({"ID", "WORKFLOW", "STATE", "SUBMITTED", "DURATION", "LABELS"});
  for (const Json& run : Items(runs)) {
    t.AddRow({Cell(run, "id"), WorkflowAt(run), Cell(run, "state"), ShortTime(run, "submitted_at"),
              ElapsedCell(run, "started_at", "finished_at", now),
              JoinLabels(Field(run, "labels"))});
  }
  return t.Render();
}

std::string RenderEvents(const Json& events) {
  Table t({"POSITION", "TIME", "STREAM", "TYPE", "DATA"});
  for (const Json& e : Items(events)) {
    t.AddRow({Cell(e, "position"), Cell(e, "time"), Cell(e, "stream"), Cell(e, "type"),
              CompactJson(Field(e, "data"))});
  }
  return t.Render();
}

namespace {
std::string EventLine(std::string position, std::string time, std::string stream, std::string type,
                      std::string data) {
  return Pad(std::move(position), 8) + "  " + Pad(std::move(time), 27) + "  " +
         Pad(std::move(stream), 28) + "  " + Pad(std::move(type), 20) + "  " + data + "\n";
}
}  // namespace

std::string RenderEventLine(const Json& e) {
  return EventLine(Cell(e, "position"), Cell(e, "time"), Cell(e, "stream"), Cell(e, "type"),
                   CompactJson(Field(e, "data")));
}

std::string RenderEventHeader() { return EventLine("POSITION", "TIME", "STREAM", "TYPE", "DATA"); }

std::string RenderContainers(const Json& containers) {
  Table t({"ID", "STATE", "BACKEND", "HANDLE", "CPU", "MEMORY", "GPUS", "ATTEMPTS"});
  for (const Json& c : Items(containers)) {
    const Json& cpu = Field(c, "cpu_millis");
    const Json& mem = Field(c, "memory_bytes");
    const Json& gpus = Field(c, "gpus");
    std::string gpu_cell = "-";
    if (gpus.is_array()) {
      size_t simulated = 0, unhealthy = 0;
      for (const Json& g : gpus) {
        if (Field(g, "simulated").is_boolean() && Field(g, "simulated").get<bool>()) ++simulated;
        if (Field(g, "healthy").is_boolean() && !Field(g, "healthy").get<bool>()) ++unhealthy;
      }
      gpu_cell = std::to_string(gpus.size());
      if (simulated > 0) gpu_cell += " (" + std::to_string(simulated) + " simulated)";
      if (unhealthy > 0) gpu_cell += " (" + std::to_string(unhealthy) + " unhealthy)";
    } else if (gpus.is_number()) {
      gpu_cell = gpus.dump();
    }
    const Json& attempts = Field(c, "attempts");
    std::string attempts_cell = "-";
    if (attempts.is_array() && !attempts.empty()) {
      attempts_cell.clear();
      for (const Json& a : attempts) {
        if (!attempts_cell.empty()) attempts_cell += ',';
        attempts_cell += a.is_string() ? a.get<std::string>() : a.dump();
      }
    } else if (attempts.is_number()) {
      attempts_cell = attempts.dump();
    }
    t.AddRow({Cell(c, "id"), Cell(c, "state"), Cell(c, "backend"), Cell(c, "handle"),
              cpu.is_number() ? cpu.dump() + "m" : "-",
              mem.is_number() ? HumanBytes(mem.get<int64_t>()) : "-", gpu_cell, attempts_cell});
  }
  return t.Render();
}

std::string RenderCluster(const Json& cluster) {
  static constexpr const char* kFirst[] = {"role",           "node",       "epoch", "leader",
                                           "leader_address", "address",    "head",  "head_position",
                                           "store_size",     "store_bytes"};
  std::vector<std::pair<std::string, std::string>> rows;
  std::vector<std::string> seen;
  for (const char* k : kFirst) {
    if (cluster.is_object() && cluster.contains(k)) {
      rows.emplace_back(k, Cell(cluster, k));
      seen.emplace_back(k);
    }
  }
  if (cluster.is_object()) {
    for (const auto& [k, v] : cluster.items()) {
      if (std::find(seen.begin(), seen.end(), k) != seen.end()) continue;
      rows.emplace_back(k, Cell(cluster, k));
    }
  }
  return KeyValueBlock(rows);
}

std::string RenderWorkflows(const Json& workflows) {
  Table t({"NAME", "VERSION", "DIGEST", "REGISTERED"});
  for (const Json& w : Items(workflows)) {
    std::string version = Cell(w, "version");
    if (version == "-") version = Cell(w, "latest_version");
    std::string digest = Cell(w, "digest");
    if (digest.size() > 19) digest = digest.substr(0, 19);
    std::string registered = ShortTime(w, "registered_at");
    if (registered == "-") registered = ShortTime(w, "time");
    t.AddRow({Cell(w, "name"), version, digest, registered});
  }
  return t.Render();
}

std::string RenderWorkflow(const Json& workflow) {
  const Json& def =
      Field(workflow, "definition").is_object() ? Field(workflow, "definition") : workflow;
  std::string name = Cell(workflow, "name");
  if (name == "-") name = Cell(def, "name");
  std::string out = KeyValueBlock({{"Name", name},
                                   {"Version", Cell(workflow, "version")},
                                   {"Digest", Cell(workflow, "digest")},
                                   {"Params", CompactJson(Field(def, "params"))}});
  const Json& steps = Field(def, "steps");
  if (!steps.is_array() || steps.empty()) return out;
  Table t({"STEP", "KIND", "AFTER", "WHEN", "COMMAND"});
  for (const Json& s : steps) {
    std::string after = "-";
    if (Field(s, "after").is_array() && !Field(s, "after").empty()) {
      after.clear();
      for (const Json& a : Field(s, "after")) {
        if (!after.empty()) after += ',';
        after += a.is_string() ? a.get<std::string>() : a.dump();
      }
    }
    std::string command = "-";
    if (Field(s, "command").is_array()) {
      command.clear();
      for (const Json& a : Field(s, "command")) {
        if (!command.empty()) command += ' ';
        command += a.is_string() ? a.get<std::string>() : a.dump();
      }
    }
    std::string kind = Cell(s, "kind");
    t.AddRow({Cell(s, "name"), kind == "-" ? "task" : kind, after, Cell(s, "when"), command});
  }
  return out + "\n" + t.Render();
}

namespace {

std::string ShortDigest(const Json& obj) {
  std::string d = Cell(obj, "digest");
  return d.size() > 12 ? d.substr(0, 12) : d;
}

// "name@version,..." for [{name, version}, ...].
std::string NameVersions(const Json& list) {
  if (!list.is_array() || list.empty()) return "-";
  std::string out;
  for (const Json& nv : list) {
    if (!out.empty()) out += ',';
    out += Cell(nv, "name") + "@" + Cell(nv, "version");
  }
  return out;
}

// "run/step,..." for [{run, step}, ...].
std::string RunSteps(const Json& list) {
  if (!list.is_array() || list.empty()) return "-";
  std::string out;
  for (const Json& rs : list) {
    if (!out.empty()) out += ',';
    out += Cell(rs, "run") + "/" + Cell(rs, "step");
  }
  return out;
}

std::string RunStep(const Json& v) {
  if (Str(v, "run").empty()) return "-";
  std::string step = Str(v, "step");
  return Str(v, "run") + (step.empty() ? "" : "/" + step);
}

std::string ModelWorkflowAt(const Json& v) {
  std::string wf = Cell(v, "workflow");
  const Json& ver = Field(v, "workflow_version");
  if (wf != "-" && ver.is_number() && ver.get<int64_t>() > 0) wf += "@" + ver.dump();
  return wf;
}

// A number for a summary: integers as they are, others to 4 significant digits.
std::string ShortNumber(const Json& v) {
  if (!v.is_number_float()) return v.dump();
  double d = v.get<double>();
  char buf[32];
  std::snprintf(buf, sizeof buf, std::fabs(d) >= 1e4 ? "%.0f" : "%.4g", d);
  return buf;
}

// "accuracy=0.8941 loss=0.3177": the numeric and boolean metrics; strings, arrays and
// objects (labels, confusion matrices) are left out of a summary.
std::string ScalarMetrics(const Json& metrics) {
  if (!metrics.is_object()) return "-";
  std::string out;
  for (const auto& [k, v] : metrics.items()) {
    if (!v.is_number() && !v.is_boolean()) continue;
    if (!out.empty()) out += ' ';
    out += k + "=" + ShortNumber(v);
  }
  return out.empty() ? "-" : out;
}

// For [{name, size, sha256}, ...]: "model.bin (918.6Ki)" for up to 3 files, each with
// its size; "9 files (240.5Mi)" for more.
std::string OutputFiles(const Json& outputs) {
  constexpr size_t kListed = 3;
  if (!outputs.is_array() || outputs.empty()) return "-";
  int64_t total = 0;
  for (const Json& o : outputs) {
    const Json& size = Field(o, "size");
    if (size.is_number_integer()) total += size.get<int64_t>();
  }
  if (outputs.size() > kListed) {
    return std::to_string(outputs.size()) + " files (" + HumanBytes(total) + ")";
  }
  std::string out;
  for (const Json& o : outputs) {
    if (!out.empty()) out += ", ";
    out += Cell(o, "name");
    const Json& size = Field(o, "size");
    if (size.is_number_integer()) out += " (" + HumanBytes(size.get<int64_t>()) + ")";
  }
  return out;
}

std::string OutputsTable(const Json& outputs) {
  if (!outputs.is_array() || outputs.empty()) return "";
  Table t({"OUTPUT", "SIZE", "SHA256"});
  for (const Json& o : outputs) {
    const Json& size = Field(o, "size");
    t.AddRow({Cell(o, "name"), size.is_number_integer() ? HumanBytes(size.get<int64_t>()) : "-",
              Cell(o, "sha256")});
  }
  return "\n" + t.Render();
}

std::string StepAttempt(const Json& v) {
  std::string step = Cell(v, "step");
  const Json& attempt = Field(v, "attempt");
  if (attempt.is_number() && attempt.get<int64_t>() > 0) {
    step += " (attempt " + attempt.dump() + ")";
  }
  return step;
}

const Json& Versions(const Json& artifact) {
  static const Json kEmpty = Json::array();
  const Json& v = Field(artifact, "versions");
  return v.is_array() ? v : kEmpty;
}

}  // namespace

std::string RenderArtifactList(const Json& list) {
  Table t({"NAME", "LATEST", "VERSIONS", "DIGEST", "REGISTERED"});
  for (const Json& a : Items(list)) {
    t.AddRow({Cell(a, "name"), Cell(a, "version"), Cell(a, "versions"), ShortDigest(a),
              ShortTime(a, "registered_at")});
  }
  return t.Render();
}

std::string RenderDatasetVersions(const Json& dataset) {
  const Json& versions = Versions(dataset);
  std::string out = KeyValueBlock(
      {{"Data set", Cell(dataset, "name")}, {"Versions", std::to_string(versions.size())}});
  if (versions.empty()) return out;
  Table t({"VERSION", "DIGEST", "REGISTERED", "RUN", "OUTPUTS"});
  for (const Json& v : versions) {
    t.AddRow({Cell(v, "version"), ShortDigest(v), ShortTime(v, "registered_at"), RunStep(v),
              OutputFiles(Field(v, "outputs"))});
  }
  return out + "\n" + t.Render();
}

std::string RenderDatasetVersion(const Json& v) {
  return KeyValueBlock({{"Data set", Cell(v, "name")},
                        {"Version", Cell(v, "version")},
                        {"Digest", Cell(v, "digest")},
                        {"Registered", Cell(v, "registered_at")},
                        {"Run", Cell(v, "run")},
                        {"Step", StepAttempt(v)}}) +
         OutputsTable(Field(v, "outputs"));
}

std::string RenderModelVersions(const Json& model) {
  const Json& versions = Versions(model);
  std::string out = KeyValueBlock(
      {{"Model", Cell(model, "name")}, {"Versions", std::to_string(versions.size())}});
  if (versions.empty()) return out;
  Table t({"VERSION", "DIGEST", "REGISTERED", "RUN", "WORKFLOW", "DATASETS", "METRICS",
           "VALIDATED_BY", "PARAMS"});
  for (const Json& v : versions) {
    t.AddRow({Cell(v, "version"), ShortDigest(v), ShortTime(v, "registered_at"), RunStep(v),
              ModelWorkflowAt(v), NameVersions(Field(v, "datasets")),
              ScalarMetrics(Field(v, "metrics")), RunSteps(Field(v, "validated_by")),
              CompactJson(Field(v, "params"))});
  }
  return out + "\n" + t.Render();
}

std::string RenderModelVersion(const Json& v) {
  std::string out = KeyValueBlock({{"Model", Cell(v, "name")},
                                   {"Version", Cell(v, "version")},
                                   {"Digest", Cell(v, "digest")},
                                   {"Registered", Cell(v, "registered_at")},
                                   {"Run", Cell(v, "run")},
                                   {"Step", StepAttempt(v)},
                                   {"Workflow", ModelWorkflowAt(v)},
                                   {"Params", CompactJson(Field(v, "params"))},
                                   {"Data sets", NameVersions(Field(v, "datasets"))},
                                   {"Validated by", RunSteps(Field(v, "validated_by"))}});
  const Json& metrics = Field(v, "metrics");
  if (metrics.is_object() && !metrics.empty()) {
    Table t({"METRIC", "VALUE"});
    for (const auto& [k, val] : metrics.items()) t.AddRow({k, Cell(metrics, k)});
    out += "\n" + t.Render();
  }
  return out + OutputsTable(Field(v, "outputs"));
}

std::string RenderRunChanges(const Json& before, const Json& after, TimePoint now) {
  std::string out;
  std::string prefix = "[" + Clock(now) + "] ";
  std::string run_state = Str(after, "state");
  if (!run_state.empty() && run_state != Str(before, "state") && !IsTerminalRunState(run_state)) {
    out += prefix + "run " + Cell(after, "id") + " " + run_state + "\n";
  }
  std::map<std::string, std::pair<std::string, size_t>> old_steps;
  const Json& old_list = Field(before, "steps");
  if (old_list.is_array()) {
    for (const Json& s : old_list) {
      old_steps[Str(s, "name")] = {Str(s, "state"), AttemptCount(s)};
    }
  }
  const Json& steps = Field(after, "steps");
  if (steps.is_array()) {
    for (const Json& s : steps) {
      std::string name = Str(s, "name");
      std::string state = Str(s, "state");
      size_t attempts = AttemptCount(s);
      auto it = old_steps.find(name);
      if (it == old_steps.end()) {
        if (state.empty() || state == "pending") continue;
      } else if (it->second.first == state && it->second.second == attempts) {
        continue;
      }
      std::string line = prefix + "step " + name + " " + (state.empty() ? "-" : state);
      std::vector<std::string> extra;
      const Json& last = LastAttempt(s);
      const Json& best = Field(s, "best");
      if (last.is_object() && last.contains("trial")) {  // a sweep: count trials
        extra.push_back(std::to_string(attempts) + (attempts == 1 ? " trial" : " trials"));
      } else if (attempts > 0) {
        extra.push_back("attempt " + std::to_string(attempts));
      }
      if (best.is_object()) {
        std::string b = "best trial " + best.value("trial", Json()).dump();
        const Json& params = Field(best, "params");
        if (params.is_object()) {
          for (const auto& [k, v] : params.items()) {
            b += " " + k + "=" + (v.is_string() ? v.get<std::string>() : v.dump());
          }
        }
        b += ": " + Str(best, "metric") + "=" + best.value("value", Json()).dump();
        extra.push_back(b);
      } else if (last.is_object() && last.contains("cached_from") && state == "succeeded") {
        extra.push_back("cached: reused " + Str(last, "cached_from"));
      } else if (state == "succeeded" || state == "failed" || state == "cancelled") {
        std::string outcome = Outcome(last);
        if (outcome != "-") extra.push_back(outcome);
        std::string d = StepDuration(s, now);
        if (d != "-") extra.push_back(d);
      }
      if (state == "skipped") {
        std::string reason = Str(s, "reason");
        if (!reason.empty()) extra.push_back(reason);
      }
      if (!extra.empty()) {
        line += " (";
        for (size_t i = 0; i < extra.size(); ++i) line += (i ? ", " : "") + extra[i];
        line += ")";
      }
      out += line + "\n";
    }
  }
  if (IsTerminalRunState(run_state) && run_state != Str(before, "state")) {
    out += prefix + "run " + Cell(after, "id") + " " + run_state;
    std::string d = ElapsedCell(after, "started_at", "finished_at", now);
    if (d != "-") out += " in " + d;
    out += "\n";
  }
  return out;
}

std::string Sparkline(const std::vector<double>& values, size_t width) {
  static constexpr const char* kBars[] = {"\u2581", "\u2582", "\u2583", "\u2584",
                                          "\u2585", "\u2586", "\u2587", "\u2588"};
  if (values.empty() || width == 0) return "";
  size_t cells = std::min(width, values.size());
  std::vector<double> means(cells, 0.0);
  for (size_t c = 0; c < cells; ++c) {
    size_t from = c * values.size() / cells, to = (c + 1) * values.size() / cells;
    double sum = 0;
    for (size_t i = from; i < to; ++i) sum += values[i];
    means[c] = sum / static_cast<double>(to - from);
  }
  auto [lo, hi] = std::minmax_element(means.begin(), means.end());
  double min = *lo, span = *hi - *lo;
  std::string out;
  for (double m : means) {
    size_t level = span <= 0 ? 3 : static_cast<size_t>((m - min) / span * 7.0 + 0.5);
    out += kBars[std::min<size_t>(level, 7)];
  }
  return out;
}

std::string RenderMetrics(const Json& metrics) {
  Table t({"NAME", "ATTEMPT", "RANK", "POINTS", "LAST", "MIN", "MAX", "CURVE"});
  const Json& series = metrics.contains("series") && metrics["series"].is_array()
                           ? metrics["series"]
                           : Json::array();
  for (const auto& s : series) {
    std::vector<double> values;
    if (s.contains("points") && s["points"].is_array()) {
      for (const auto& p : s["points"]) {
        if (p.is_array() && p.size() == 2 && p[1].is_number()) values.push_back(p[1].get<double>());
      }
    }
    auto number = [](double v) {
      char buf[32];
      std::snprintf(buf, sizeof(buf), "%.6g", v);
      return std::string(buf);
    };
    std::string last = values.empty() ? "-" : number(values.back());
    std::string min =
        values.empty() ? "-" : number(*std::min_element(values.begin(), values.end()));
    std::string max =
        values.empty() ? "-" : number(*std::max_element(values.begin(), values.end()));
    t.AddRow({Cell(s, "name"), Cell(s, "attempt"), Cell(s, "rank"), std::to_string(values.size()),
              last, min, max, Sparkline(values, 40)});
  }
  std::string out = series.empty() ? "no live metrics yet\n" : t.Render();
  if (metrics.contains("attempts") && metrics["attempts"].is_array()) {
    for (const auto& a : metrics["attempts"]) {
      bool truncated = a.value("truncated", false);
      int64_t skipped = a.value("skipped", int64_t{0}), dropped = a.value("dropped", int64_t{0});
      if (!truncated && skipped == 0 && dropped == 0) continue;
      out += "attempt " + Cell(a, "attempt") + " rank " + Cell(a, "rank") + ": " +
             std::to_string(skipped) + " values skipped, " + std::to_string(dropped) +
             " points dropped" + (truncated ? ", truncated at its cap" : "") + "\n";
    }
  }
  return out;
}

std::string RenderUsage(const Json& usage) {
  std::ostringstream o;
  char line[512];
  std::snprintf(line, sizeof(line), "%-20s %6s %10s %10s %12s %12s %10s %10s\n", "TENANT", "RUNS",
                "OUTPUTS", "LOGS", "EXPIRED-OUT", "EXPIRED-LOG", "KEEP-OUT", "KEEP-LOG");
  o << line;
  const Json tenants = usage.value("tenants", Json::object());
  for (const auto& [tenant, t] : tenants.items()) {
    const Json& x = t["expired"];
    const Json& keep = t["retention"];
    auto forever = [](const Json& d) {
      std::string s = d.is_string() ? d.get<std::string>() : "";
      return s == "0s" || s.empty() ? std::string("forever") : s;
    };
    std::snprintf(line, sizeof(line), "%-20s %6lld %10s %10s %12s %12s %10s %10s\n", tenant.c_str(),
                  static_cast<long long>(t.value("runs", int64_t{0})),
                  HumanBytes(t.value("outputs_bytes", int64_t{0})).c_str(),
                  HumanBytes(t.value("logs_bytes", int64_t{0})).c_str(),
                  HumanBytes(x.value("outputs_bytes", int64_t{0})).c_str(),
                  HumanBytes(x.value("logs_bytes", int64_t{0})).c_str(),
                  forever(keep["outputs"]).c_str(), forever(keep["logs"]).c_str());
    o << line;
  }
  return o.str();
}

}  // namespace epoch::client
