// epochctl: the command-line client for Epoch's HTTP API (see api/client/README.md).
//
// Exit codes: 0 success; 1 an error (the server's message and details on stderr) or,
// with `run submit --wait`, a run that ended failed or cancelled; 2 `--wait` timed
// out; usage errors exit with CLI11's code.
#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>
#include <thread>
#include <tuple>

#include "api/auth.h"
#include "api/client/client.h"
#include "api/client/output.h"
#include "api/client/verify_file.h"
#include "common/clock.h"
#include "common/units.h"

namespace epoch::client {
namespace {

constexpr auto kPollInterval = std::chrono::milliseconds(200);
constexpr int kMaxStreamReconnects = 5;

int Fail(const Status& status) {
  std::cerr << "error: " << status.message() << "\n";
  for (const auto& d : status.details()) std::cerr << "  " << d << "\n";
  return 1;
}

void Print(const std::string& text) { std::cout << text << std::flush; }

// Options shared by every command.
struct Globals {
  std::string server;
  std::string output = "table";
  std::string token;
  std::string ca_cert;
  std::string data_dir;  // its tls/cert.pem is trusted when readable (and no --cacert)
  bool insecure = false;
};

struct Context {
  std::unique_ptr<ApiClient> api;
  OutputFormat format = OutputFormat::kTable;
  SystemClock clock;
  bool json() const { return format == OutputFormat::kJson; }
};

Result<std::unique_ptr<Context>> MakeContext(const Globals& g) {
  auto ctx = std::make_unique<Context>();
  ASSIGN_OR_RETURN(ctx->format, ParseOutputFormat(g.output));
  ClientOptions options;
  ASSIGN_OR_RETURN(options.servers, SplitServers(g.server));
  options.token = g.token;
  options.ca_cert_path = g.ca_cert;
  if (options.ca_cert_path.empty() && !g.data_dir.empty()) {
    std::string generated = g.data_dir + "/tls/cert.pem";
    if (std::ifstream(generated).good()) options.ca_cert_path = generated;
  }
  options.insecure = g.insecure;
  ASSIGN_OR_RETURN(ctx->api, ApiClient::Create(std::move(options)));
  return ctx;
}

Result<Json> ReadJsonFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFound("cannot open " + path);
  std::stringstream ss;
  ss << in.rdbuf();
  auto j = ParseJson(ss.str());
  if (!j.ok()) return j.status().WithContext(path);
  return j;
}

// ---- workflow ----------------------------------------------------------------------

int WorkflowRegister(Context& c, const std::string& file) {
  auto def = ReadJsonFile(file);
  if (!def.ok()) return Fail(def.status());
  auto res = c.api->RegisterWorkflow(*def);
  if (!res.ok()) return Fail(res.status());
  if (c.json()) {
    Print(RenderJson(res->body));
    return 0;
  }
  const Json& b = res->body;
  Print("workflow " + Cell(b, "name") + " version " + Cell(b, "version") +
        (res->status == 201 ? " registered" : " unchanged") + "\ndigest " + Cell(b, "digest") +
        "\n");
  return 0;
}

int WorkflowList(Context& c) {
  auto res = c.api->ListWorkflows();
  if (!res.ok()) return Fail(res.status());
  Print(c.json() ? RenderJson(*res) : RenderWorkflows(*res));
  return 0;
}

int WorkflowGet(Context& c, const std::string& name, std::optional<int64_t> version) {
  auto res = c.api->GetWorkflow(name, version);
  if (!res.ok()) return Fail(res.status());
  Print(c.json() ? RenderJson(*res) : RenderWorkflow(*res));
  return 0;
}

// ---- run ---------------------------------------------------------------------------

struct SubmitArgs {
  std::string workflow;
  std::vector<std::string> params, labels;
  int64_t version = 0;
  bool has_version = false;
  std::string idempotency_key;
  bool wait = false;
  std::string timeout;
};

// Follows a run to its end: the run's event stream (each event triggers a fresh GET of
// the run, whose step states are diffed and printed), falling back to polling every
// 200 ms when the stream is unavailable or breaks.
int WaitForRun(Context& c, const std::string& id, std::optional<TimePoint> deadline) {
  Json last;  // null until the first snapshot
  auto refresh = [&]() -> Status {
    ASSIGN_OR_RETURN(Json run, c.api->GetRun(id));
    if (!c.json()) Print(RenderRunChanges(last, run, c.clock.Now()));
    last = std::move(run);
    return Status::Ok();
  };
  auto terminal = [&] { return IsTerminalRunState(last.value("state", "")); };
  auto expired = [&] { return deadline && c.clock.Now() >= *deadline; };

  if (Status st = refresh(); !st.ok()) return Fail(st);
  if (!terminal() && !expired()) {
    Status refresh_error;
    std::optional<Micros> idle;
    if (deadline) idle = std::max(Micros(1000), *deadline - c.clock.Now());
    EventQuery q;
    q.run = id;
    Status stream = c.api->FollowEvents(
        q,
        [&](const Json&) {
          refresh_error = refresh();
          return refresh_error.ok() && !terminal() && !expired();
        },
        idle);
    if (!refresh_error.ok() && refresh_error.code() != StatusCode::kUnavailable) {
      return Fail(refresh_error);
    }
    // Any other outcome (stream ended, broke, or is not served): poll.
    bool warned = false;
    while (!terminal() && !expired()) {
      std::this_thread::sleep_for(kPollInterval);
      Status st = refresh();
      if (st.ok()) continue;
      if (st.code() != StatusCode::kUnavailable) return Fail(st);
      if (!warned) std::cerr << "warning: " << st.message() << "; still trying\n";
      warned = true;
    }
  }
  if (!terminal()) {
    std::cerr << "error: timed out waiting for run " << id << " (state "
              << last.value("state", "unknown") << ")\n";
    if (c.json()) Print(RenderJson(last));
    return 2;
  }
  if (c.json()) Print(RenderJson(last));
  return last.value("state", "") == "succeeded" ? 0 : 1;
}

int RunSubmit(Context& c, const SubmitArgs& a) {
  SubmitRunRequest req;
  req.workflow = a.workflow;
  if (a.has_version) req.version = a.version;
  req.idempotency_key = a.idempotency_key;
  auto params = ParseKeyValues(a.params, /*json_values=*/true);
  if (!params.ok()) return Fail(params.status().WithContext("-p"));
  auto labels = ParseKeyValues(a.labels, /*json_values=*/false);
  if (!labels.ok()) return Fail(labels.status().WithContext("--label"));
  req.params = std::move(*params);
  req.labels = std::move(*labels);
  std::optional<TimePoint> deadline;
  if (!a.timeout.empty()) {
    auto d = ParseDuration(a.timeout);
    if (!d.ok()) return Fail(d.status().WithContext("--timeout"));
    deadline = c.clock.Now() + *d;
  }
  auto res = c.api->SubmitRun(req);
  if (!res.ok()) return Fail(res.status());
  std::string id = res->body.value("id", "");
  if (id.empty()) return Fail(Internal("the server's answer has no run id"));
  if (!a.wait) {
    Print(c.json() ? RenderJson(res->body) : "run " + id + " submitted\n");
    return 0;
  }
  if (!c.json()) Print("run " + id + " submitted\n");
  return WaitForRun(c, id, deadline);
}

int RunGet(Context& c, const std::string& id) {
  auto res = c.api->GetRun(id);
  if (!res.ok()) return Fail(res.status());
  Print(c.json() ? RenderJson(*res) : RenderRun(*res, c.clock.Now()));
  return 0;
}

struct ListArgs {
  RunListQuery query;
  int64_t limit = 0;
  bool all = false;
};

int RunList(Context& c, ListArgs a) {
  if (a.limit > 0) a.query.limit = a.limit;
  Json items = Json::array();
  std::string next;
  for (int page = 0;; ++page) {
    auto res = c.api->ListRuns(a.query);
    if (!res.ok()) return Fail(res.status());
    for (const Json& r : res->value("items", Json::array())) items.push_back(r);
    const Json& nc = res->contains("next_cursor") ? (*res)["next_cursor"] : Json();
    next = nc.is_string() ? nc.get<std::string>() : "";
    if (!a.all || next.empty() || next == a.query.cursor) break;
    a.query.cursor = next;
  }
  if (c.json()) {
    Json out = {{"items", items}};
    if (!a.all && !next.empty()) out["next_cursor"] = next;
    Print(RenderJson(out));
  } else {
    Print(RenderRunList(items, c.clock.Now()));
    if (!a.all && !next.empty()) std::cerr << "more runs: --all, or --cursor " << next << "\n";
  }
  return 0;
}

int RunWrite(Context& c, const std::string& id, bool cancel) {
  auto res = cancel ? c.api->CancelRun(id) : c.api->RetryRun(id);
  if (!res.ok()) return Fail(res.status());
  Print(c.json() ? RenderJson(res->body)
                 : "run " + id + (cancel ? " cancel requested\n" : " retry requested\n"));
  return 0;
}

int RunLogs(Context& c, const std::string& id, const std::string& step, const LogQuery& query) {
  Status st = c.api->GetLogs(id, step, query, [](std::string_view text) {
    std::cout.write(text.data(), static_cast<std::streamsize>(text.size()));
    std::cout.flush();
    return static_cast<bool>(std::cout);
  });
  if (!st.ok()) return Fail(st);
  return 0;
}

// Prints a step's live metrics; with follow, again each time they change, until the
// run has ended (its last points are then printed once more).
int RunMetrics(Context& c, const std::string& id, const std::string& step,
               const MetricsQuery& query, bool follow) {
  std::string shown;
  while (true) {
    bool ended = false;
    if (follow) {
      auto run = c.api->GetRun(id);
      if (!run.ok()) return Fail(run.status());
      ended = IsTerminalRunState(run->value("state", ""));
    }
    auto res = c.api->GetMetrics(id, step, query);
    if (!res.ok()) return Fail(res.status());
    std::string text = c.json() ? RenderJson(*res) : RenderMetrics(*res);
    if (text != shown) {
      if (follow && !shown.empty()) Print("\n");
      Print(text);
      shown = std::move(text);
    }
    if (!follow || ended) return 0;
    std::this_thread::sleep_for(std::chrono::seconds(1));  // agents ship about as often
  }
}

// ---- events, containers, cluster --------------------------------------------------------

struct EventArgs {
  EventQuery query;
  int64_t after = 0, limit = 0;
  bool follow = false;
};

int Events(Context& c, EventArgs a) {
  if (a.after > 0) a.query.after = static_cast<uint64_t>(a.after);
  if (!a.follow) {
    if (a.limit > 0) a.query.limit = a.limit;
    auto res = c.api->ListEvents(a.query);
    if (!res.ok()) return Fail(res.status());
    Print(c.json() ? RenderJson(*res) : RenderEvents(*res));
    return 0;
  }
  // Following: one event per line (JSON lines with -o json). On a broken stream, resume
  // after the last position printed (the server may have failed over).
  if (!c.json()) Print(RenderEventHeader());
  int64_t printed = 0;
  int failures = 0;
  while (true) {
    Status st = c.api->FollowEvents(a.query, [&](const Json& e) {
      if (e.contains("position") && e["position"].is_number_unsigned()) {
        a.query.after = e["position"].get<uint64_t>();
      }
      Print(c.json() ? e.dump(-1, ' ', false, Json::error_handler_t::replace) + "\n"
                     : RenderEventLine(e));
      failures = 0;
      return !(a.limit > 0 && ++printed >= a.limit);
    });
    if (st.ok()) return 0;
    if (st.code() != StatusCode::kUnavailable || ++failures > kMaxStreamReconnects) {
      return Fail(st);
    }
    std::cerr << "warning: " << st.message() << "; reconnecting\n";
    std::this_thread::sleep_for(kPollInterval * failures);
  }
}

// events export: every event (of one run, within a time range) as one JSON line with
// its hashes, for `audit verify --file` or any other tool.
struct ExportArgs {
  std::string run, from, to;
};

int ExportEvents(Context& c, const ExportArgs& a) {
  std::string from, to;  // as the server writes times: fixed-width UTC, so text compares
  for (auto [flag, in, out] : {std::tuple{"--from", &a.from, &from}, {"--to", &a.to, &to}}) {
    if (in->empty()) continue;
    auto t = ParseTime(*in);
    if (!t.ok()) return Fail(InvalidArgument(std::string(flag) + ": " + t.status().message()));
    *out = FormatTime(*t);
  }
  EventQuery q;
  q.run = a.run;
  q.limit = 1000;
  uint64_t written = 0;
  while (true) {
    auto page = c.api->ListEvents(q);
    if (!page.ok()) return Fail(page.status());
    const Json& items = (*page)["items"];
    if (!items.is_array() || items.empty()) break;
    for (const Json& e : items) {
      std::string t = e.value("time", "");
      if ((!from.empty() && t < from) || (!to.empty() && t >= to)) continue;
      std::cout << e.dump(-1, ' ', false, Json::error_handler_t::strict) << '\n';
      ++written;
    }
    q.after = items.back().value("position", uint64_t{0});
    if (!a.run.empty() || (*page)["next_cursor"].is_null()) break;  // a run's page is whole
  }
  std::cout.flush();
  std::cerr << written << " events exported\n";
  return std::cout ? 0 : 1;
}

int RunHistory(Context& c, const std::string& id) {
  auto res = c.api->GetRunHistory(id);
  if (!res.ok()) return Fail(res.status());
  if (c.json()) {
    Print(RenderJson(*res));
    return 0;
  }
  const Json& h = *res;
  std::string out = "Run " + h.value("run", "") + ": " + h.value("workflow", "") + "@" +
                    h["version"].dump() + ", " + h.value("state", "") + ", submitted by " +
                    h.value("submitter", "") + " (tenant " + h.value("tenant", "") + ")\n\n";
  for (const auto& e : h["timeline"]) {
    std::string t = e.value("time", "");
    if (t.size() >= 23) t = t.substr(0, 10) + " " + t.substr(11, 12);
    std::string text = e.value("text", "");
    if (text.empty()) text = e.value("type", "");
    out += t + "  #" + e["position"].dump() + "  " + text;
    std::string actor = e.value("actor", "");
    if (!actor.empty() && actor != "system") out += "  [" + actor + "]";
    out += "\n";
  }
  Print(out);
  return 0;
}

int Containers(Context& c) {
  auto res = c.api->ListContainers();
  if (!res.ok()) return Fail(res.status());
  Print(c.json() ? RenderJson(*res) : RenderContainers(*res));
  return 0;
}

int Usage(Context& c) {
  auto res = c.api->GetUsage();
  if (!res.ok()) return Fail(res.status());
  Print(c.json() ? RenderJson(*res) : RenderUsage(*res));
  return 0;
}

int Cluster(Context& c) {
  auto res = c.api->GetCluster();
  if (!res.ok()) return Fail(res.status());
  Print(c.json() ? RenderJson(*res) : RenderCluster(*res));
  return 0;
}

// ---- audit ------------------------------------------------------------------------------

// "P:H" -> the query parameter, or an error naming the flag.
Result<std::string> CheckpointArg(const std::string& flag, const std::string& v) {
  size_t colon = v.find(':');
  if (colon == std::string::npos || colon == 0 || v.size() - colon - 1 != 64 ||
      v.find_first_not_of("0123456789") < colon) {
    return InvalidArgument(flag + ": must be POSITION:HASH as `epochctl audit checkpoint` prints");
  }
  return v;
}

int AuditVerifyFile(Context& c, const std::string& file, const std::string& against) {
  std::ifstream in(file);
  if (!in) return Fail(NotFound("--file: cannot open " + file));
  auto res = VerifyEventsFile(in, against);
  if (!res.ok()) return Fail(res.status());
  const Json& r = *res;
  if (c.json()) {
    Print(RenderJson(r));
  } else if (r.value("ok", false)) {
    std::string text = "ok: " + std::to_string(r.value("events", uint64_t{0})) +
                       " events, every hash recomputed, " +
                       std::to_string(r.value("links_checked", uint64_t{0})) + " links checked";
    if (r.contains("last_position")) {
      text += "\nlast " + std::to_string(r.value("last_position", uint64_t{0})) + ":" +
              r.value("last_hash", "");
    }
    if (r.contains("against")) {
      text += "\nmatches checkpoint " + std::to_string(r["against"].value("position", uint64_t{0})) +
              ":" + r["against"].value("hash", "");
    }
    Print(text + "\n");
  } else {
    std::string text = "FAILED";
    if (r.contains("problem")) text += ": " + r.value("problem", "");
    if (r.contains("against") && !r["against"].value("ok", false)) {
      text += "\ncheckpoint " + std::to_string(r["against"].value("position", uint64_t{0})) + ": " +
              r["against"].value("problem", "");
    }
    Print(text + "\n");
  }
  return r.value("ok", false) ? 0 : 1;
}

int AuditVerify(Context& c, const std::string& against, const std::string& from) {
  std::string query;
  if (!against.empty()) {
    auto a = CheckpointArg("--against", against);
    if (!a.ok()) return Fail(a.status());
    query = "against=" + *a;
  }
  if (!from.empty()) {
    auto f = CheckpointArg("--from", from);
    if (!f.ok()) return Fail(f.status());
    size_t colon = f->find(':');
    query += std::string(query.empty() ? "" : "&") + "from=" + f->substr(0, colon) +
             "&hash=" + f->substr(colon + 1);
  }
  auto res = c.api->VerifyAudit(query);
  if (!res.ok()) return Fail(res.status());
  const Json& r = *res;
  if (c.json()) {
    Print(RenderJson(r));
  } else if (r.value("ok", false)) {
    std::string text = "ok: " + std::to_string(r.value("checked", uint64_t{0})) +
                       " events verified from position " + std::to_string(r.value("from", 1)) +
                       " in " + Json(r.value("elapsed_ms", 0.0)).dump() + " ms\nhead " +
                       std::to_string(r["head"].value("position", uint64_t{0})) + ":" +
                       r["head"].value("hash", "") + "\n";
    if (r.contains("against")) {
      text += "matches checkpoint " + std::to_string(r["against"].value("position", uint64_t{0})) +
              ":" + r["against"].value("hash", "") + "\n";
    }
    Print(text);
  } else {
    std::string text = "FAILED";
    if (r.contains("bad_position")) {
      text += " at position " + std::to_string(r.value("bad_position", uint64_t{0})) + ": " +
              r.value("problem", "");
    }
    if (r.contains("against") && !r["against"].value("ok", false)) {
      text += "\ncheckpoint " + std::to_string(r["against"].value("position", uint64_t{0})) +
              ": " + r["against"].value("problem", "");
    }
    Print(text + "\n");
  }
  return r.value("ok", false) ? 0 : 1;
}

int AuditCheckpoint(Context& c) {
  auto res = c.api->GetCluster();
  if (!res.ok()) return Fail(res.status());
  const Json& head = (*res)["head"];
  std::string cp = std::to_string(head.value("position", uint64_t{0})) + ":" + head.value("hash", "");
  Print(c.json() ? RenderJson(Json{{"checkpoint", cp}}) : cp + "\n");
  return 0;
}

// ---- dataset, model ---------------------------------------------------------------------

int ArtifactList(Context& c, bool model) {
  auto res = model ? c.api->ListModels() : c.api->ListDatasets();
  if (!res.ok()) return Fail(res.status());
  Print(c.json() ? RenderJson(*res) : RenderArtifactList(*res));
  return 0;
}

int ArtifactGet(Context& c, bool model, const std::string& name, std::optional<int64_t> version) {
  auto res = model ? c.api->GetModel(name, version) : c.api->GetDataset(name, version);
  if (!res.ok()) return Fail(res.status());
  if (c.json()) {
    Print(RenderJson(*res));
  } else if (model) {
    Print(version ? RenderModelVersion(*res) : RenderModelVersions(*res));
  } else {
    Print(version ? RenderDatasetVersion(*res) : RenderDatasetVersions(*res));
  }
  return 0;
}

int Main(int argc, char** argv) {
  CLI::App app{"epochctl: the command-line client for Epoch"};
  app.require_subcommand(1);
  app.fallthrough();
  Globals g;
  g.server = std::string(kDefaultServer);
  app.add_option("-s,--server", g.server,
                 "server URL, or a comma-separated list tried in turn (HA)")
      ->envname("EPOCH_SERVER")
      ->capture_default_str();
  app.add_option("-o,--output", g.output, "table or json")
      ->check(CLI::IsMember({"table", "json"}))
      ->capture_default_str();
  app.add_option("--token", g.token, "bearer token")->envname("EPOCH_TOKEN");
  app.add_option("--cacert,--ca-cert", g.ca_cert, "https: CA certificate file to trust");
  app.add_option("--data-dir", g.data_dir,
                 "the master's data dir: trust its generated certificate (tls/cert.pem); "
                 "admin token commands use its tokens.json")
      ->envname("EPOCH_DATA_DIR");
  app.add_flag("--insecure", g.insecure, "https: do not verify the server's certificate");

  std::function<int(Context&)> action;

  // workflow
  auto* wf = app.add_subcommand("workflow", "register and inspect workflow definitions");
  wf->require_subcommand(1);
  std::string wf_file, wf_name;
  int64_t wf_version = 0;
  wf->add_subcommand("register", "register a definition (POST /v1/workflows)")
      ->callback([&] { action = [&](Context& c) { return WorkflowRegister(c, wf_file); }; })
      ->add_option("file", wf_file, "definition JSON file")
      ->required();
  wf->add_subcommand("list", "list workflows")->callback([&] {
    action = [&](Context& c) { return WorkflowList(c); };
  });
  auto* wf_get = wf->add_subcommand("get", "show a workflow definition");
  wf_get->add_option("name", wf_name)->required();
  auto* wf_version_opt = wf_get->add_option("--version", wf_version, "a specific version");
  wf_get->callback([&] {
    action = [&](Context& c) {
      return WorkflowGet(
          c, wf_name, wf_version_opt->count() ? std::optional<int64_t>(wf_version) : std::nullopt);
    };
  });

  // run
  auto* run = app.add_subcommand("run", "submit, inspect and control runs");
  run->require_subcommand(1);
  SubmitArgs submit;
  auto* sub = run->add_subcommand("submit", "submit a run of a workflow");
  sub->add_option("workflow", submit.workflow)->required();
  sub->add_option("-p,--param", submit.params, "parameter k=v (v is JSON when it parses)")
      ->allow_extra_args(false);
  sub->add_option("--label", submit.labels, "label k=v")->allow_extra_args(false);
  auto* sub_version = sub->add_option("--version", submit.version, "workflow version");
  sub->add_option("--idempotency-key", submit.idempotency_key, "makes a retried submit safe");
  sub->add_flag("--wait", submit.wait, "follow the run to its end; exit 1 unless it succeeds");
  sub->add_option("--timeout", submit.timeout, "with --wait: give up after this long (e.g. 30m)");
  sub->callback([&] {
    submit.has_version = sub_version->count() > 0;
    action = [&](Context& c) { return RunSubmit(c, submit); };
  });

  std::string run_id, step;
  run->add_subcommand("get", "show a run and its steps")
      ->callback([&] { action = [&](Context& c) { return RunGet(c, run_id); }; })
      ->add_option("id", run_id)
      ->required();

  ListArgs list;
  auto* ls = run->add_subcommand("list", "list runs");
  ls->add_option("--state", list.query.state);
  ls->add_option("--workflow", list.query.workflow);
  ls->add_option("--label", list.query.labels, "k=v")->allow_extra_args(false);
  ls->add_option("--limit", list.limit);
  ls->add_option("--cursor", list.query.cursor, "continue from a previous page");
  ls->add_flag("--all", list.all, "fetch every page");
  ls->callback([&] { action = [&](Context& c) { return RunList(c, list); }; });

  run->add_subcommand("history", "a run's timeline: every step and attempt, who did what")
      ->callback([&] { action = [&](Context& c) { return RunHistory(c, run_id); }; })
      ->add_option("id", run_id)
      ->required();
  run->add_subcommand("cancel", "cancel a run")
      ->callback([&] { action = [&](Context& c) { return RunWrite(c, run_id, true); }; })
      ->add_option("id", run_id)
      ->required();
  run->add_subcommand("retry", "re-run the failed and cancelled steps of a run")
      ->callback([&] { action = [&](Context& c) { return RunWrite(c, run_id, false); }; })
      ->add_option("id", run_id)
      ->required();

  int64_t attempt = 0, tail = 0;
  bool follow_logs = false;
  auto* logs = run->add_subcommand("logs", "print a step's log");
  logs->add_option("id", run_id)->required();
  logs->add_option("step", step)->required();
  auto* attempt_opt = logs->add_option("--attempt", attempt, "attempt number (default: last)");
  auto* tail_opt = logs->add_option("--tail", tail, "only the last N lines (with -f: then follow)")
                       ->check(CLI::NonNegativeNumber);
  logs->add_flag("-f,--follow", follow_logs, "keep streaming as the step writes");
  logs->callback([&] {
    action = [&](Context& c) {
      LogQuery q;
      if (attempt_opt->count()) q.attempt = attempt;
      if (tail_opt->count()) q.tail = tail;
      q.follow = follow_logs;
      return RunLogs(c, run_id, step, q);
    };
  });

  std::string metric_name;
  int64_t metric_attempt = 0;
  bool follow_metrics = false;
  auto* metrics = run->add_subcommand(
      "metrics", "a step's live metrics: latest values and a curve of each series");
  metrics->add_option("id", run_id)->required();
  metrics->add_option("step", step)->required();
  metrics->add_option("--name", metric_name, "only this series (e.g. loss)");
  auto* metric_attempt_opt = metrics->add_option("--attempt", metric_attempt, "only this attempt");
  metrics->add_flag("-f,--follow", follow_metrics, "refresh until the run ends");
  metrics->callback([&] {
    action = [&](Context& c) {
      MetricsQuery q;
      q.name = metric_name;
      if (metric_attempt_opt->count()) q.attempt = metric_attempt;
      return RunMetrics(c, run_id, step, q, follow_metrics);
    };
  });

  // events
  EventArgs ev;
  auto* events = app.add_subcommand("events", "the event history (global, or of one run)");
  events->add_option("--run", ev.query.run, "only this run's events");
  events->add_option("--after", ev.after, "events after this position");
  events->add_option("--type", ev.query.type, "only this event type");
  events->add_option("--stream", ev.query.stream, "only this stream");
  events->add_option("--limit", ev.limit, "at most this many events");
  events->add_flag("-f,--follow", ev.follow, "keep streaming new events");
  events->callback([&] {
    if (!action) action = [&](Context& c) { return Events(c, ev); };
  });
  ExportArgs ex;
  auto* exp = events->add_subcommand(
      "export", "every event as one JSON line with its hashes (verify with audit verify --file)");
  exp->add_option("--run", ex.run, "only this run's events");
  exp->add_option("--from", ex.from, "only events at or after this time (RFC 3339)");
  exp->add_option("--to", ex.to, "only events before this time (RFC 3339)");
  exp->callback([&] { action = [&](Context& c) { return ExportEvents(c, ex); }; });

  // dataset, model: the same two commands on the two lineage endpoints.
  std::string artifact_name;
  int64_t artifact_version = 0;
  for (bool model : {false, true}) {
    auto* cmd = app.add_subcommand(model ? "model" : "dataset",
                                   model ? "model versions and their lineage"
                                         : "data set versions and the runs that made them");
    cmd->require_subcommand(1);
    cmd->add_subcommand("list", model ? "list models" : "list data sets")->callback([&, model] {
      action = [&, model](Context& c) { return ArtifactList(c, model); };
    });
    auto* get =
        cmd->add_subcommand("get", model ? "every version of a model, or one version's full lineage"
                                         : "every version of a data set, or one version in full");
    get->add_option("name", artifact_name)->required();
    // Not checked here: the server answers a version < 1 with its own message.
    auto* version_opt =
        get->add_option("version", artifact_version, "a version (default: all of them)");
    get->callback([&, model, version_opt] {
      action = [&, model, version_opt](Context& c) {
        return ArtifactGet(
            c, model, artifact_name,
            version_opt->count() ? std::optional<int64_t>(artifact_version) : std::nullopt);
      };
    });
  }

  app.add_subcommand("containers", "the container pool")->callback([&] {
    action = [&](Context& c) { return Containers(c); };
  });
  auto* audit = app.add_subcommand("audit", "prove the event history was not altered");
  audit->require_subcommand(1);
  std::string against, from_cp;
  auto* verify = audit->add_subcommand(
      "verify", "walk the hash chain; exit 1 naming the first bad position if it is broken");
  verify->add_option("--against", against,
                     "POSITION:HASH from `audit checkpoint`: prove the history up to it unchanged");
  verify->add_option("--from", from_cp, "POSITION:HASH: trust a checkpoint, verify what follows");
  std::string verify_file;
  verify->add_option("--file", verify_file,
                     "verify an `events export` file offline instead of asking the server");
  verify->callback([&] {
    action = [&](Context& c) {
      return verify_file.empty() ? AuditVerify(c, against, from_cp)
                                 : AuditVerifyFile(c, verify_file, against);
    };
  });
  audit->add_subcommand("checkpoint", "print the head as POSITION:HASH, to keep elsewhere")
      ->callback([&] { action = [&](Context& c) { return AuditCheckpoint(c); }; });

  app.add_subcommand("cluster", "role, epoch, leader and store of the server")->callback([&] {
    action = [&](Context& c) { return Cluster(c); };
  });

  // admin: works on the tokens file directly (on the master's host, or wherever the
  // shared data dir is mounted), not through the API.
  auto* admin = app.add_subcommand(
      "admin", "tokens (works on the tokens file, not the API); usage (asks the API)");
  admin->require_subcommand(1);
  admin
      ->add_subcommand("usage",
                       "bytes of run folders and logs per tenant on the data dir, what retention "
                       "deleted, and the horizons in force")
      ->callback([&] { action = [&](Context& c) { return Usage(c); }; });
  auto* token = admin->add_subcommand("token", "create, list and revoke API tokens");
  token->require_subcommand(1);
  std::string tokens_path, t_user, t_tenant, t_role, t_id;
  auto add_file = [&](CLI::App* cmd) {
    cmd->add_option("--tokens", tokens_path,
                    "the tokens file (api.tokensFile; default <--data-dir>/tokens.json)");
  };
  std::function<int()> admin_action;
  auto tokens_file = [&]() -> Result<std::string> {
    if (!tokens_path.empty()) return tokens_path;
    if (!g.data_dir.empty()) return g.data_dir + "/tokens.json";
    return InvalidArgument("give --tokens FILE or --data-dir DIR (or EPOCH_DATA_DIR)");
  };
  auto* create = token->add_subcommand(
      "create", "make a token; prints it once (only its SHA-256 is kept)");
  add_file(create);
  create->add_option("--user", t_user, "who uses it ([a-z0-9][a-z0-9._-]*)")->required();
  create->add_option("--tenant", t_tenant, "the tenant it acts in")->required();
  create->add_option("--role", t_role, "admin, operator, viewer or auditor")
      ->required()
      ->check(CLI::IsMember({"admin", "operator", "viewer", "auditor"}));
  create->callback([&] {
    admin_action = [&]() -> int {
      auto path = tokens_file();
      if (!path.ok()) return Fail(path.status());
      auto made = api::CreateToken(*path, t_user, t_tenant, *api::ParseRole(t_role),
                                   FormatTime(SystemClock().Now()));
      if (!made.ok()) return Fail(made.status());
      Print(made->token + "\n");
      std::cerr << "token " << made->id << " for " << t_user << "@" << t_tenant << " (" << t_role
                << ") added to " << *path << "; it is shown only this once\n";
      return 0;
    };
  });
  auto* tlist = token->add_subcommand("list", "the tokens (ids, users, tenants, roles; no secrets)");
  add_file(tlist);
  tlist->callback([&] {
    admin_action = [&]() -> int {
      auto path = tokens_file();
      if (!path.ok()) return Fail(path.status());
      auto tokens = api::LoadTokens(*path);
      if (!tokens.ok()) return Fail(tokens.status());
      if (g.output == "json") {
        Json items = Json::array();
        for (const auto& t : *tokens) {
          items.push_back(Json{{"id", t.id}, {"user", t.user}, {"tenant", t.tenant},
                               {"role", std::string(api::Name(t.role))},
                               {"created_at", t.created_at}});
        }
        Print(Json{{"items", items}}.dump(2) + "\n");
        return 0;
      }
      std::ostringstream o;
      o << "ID        USER                 TENANT               ROLE      CREATED\n";
      for (const auto& t : *tokens) {
        char line[256];
        std::snprintf(line, sizeof(line), "%-9s %-20s %-20s %-9s %s\n", t.id.c_str(),
                      t.user.c_str(), t.tenant.c_str(), std::string(api::Name(t.role)).c_str(),
                      t.created_at.c_str());
        o << line;
      }
      Print(o.str());
      return 0;
    };
  });
  auto* revoke = token->add_subcommand("revoke", "remove a token by id (effective at once)");
  add_file(revoke);
  revoke->add_option("id", t_id)->required();
  revoke->callback([&] {
    admin_action = [&]() -> int {
      auto path = tokens_file();
      if (!path.ok()) return Fail(path.status());
      if (Status st = api::RevokeToken(*path, t_id); !st.ok()) return Fail(st);
      std::cerr << "token " << t_id << " revoked\n";
      return 0;
    };
  });

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  if (admin_action) return admin_action();
  if (!action) return Fail(InvalidArgument("no command given (see --help)"));
  auto ctx = MakeContext(g);
  if (!ctx.ok()) return Fail(ctx.status());
  return action(**ctx);
}

}  // namespace
}  // namespace epoch::client

int main(int argc, char** argv) { return epoch::client::Main(argc, argv); }
