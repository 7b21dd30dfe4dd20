// Audit end to end: a real epochd's history verified through the API and epochctl,
// then one byte of one stored event flipped in the stopped store (epoch-tamper): the
// master then refuses to start, naming the event, or with --allow-corrupt-history
// serves it read-only; a start from a snapshot finds it in the background.
#include <gtest/gtest.h>

#include <fstream>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "tests/harness.h"

namespace epoch::testing {
namespace {

// Flips one byte (the middle one) of stored event `position` in a stopped store.
void Tamper(const std::string& data_dir, uint64_t position) {
  std::string out;
  ASSERT_EQ(RunCommand(std::string(EPOCH_TAMPER_PATH) + " --store " + data_dir +
                           "/store --position " + std::to_string(position),
                       &out),
            0)
      << out;
}

// The log lines that contain every one of `needles`.
std::vector<std::string> LinesWith(const std::string& log,
                                   const std::vector<std::string>& needles) {
  std::vector<std::string> found;
  std::istringstream in(log);
  for (std::string line; std::getline(in, line);) {
    bool all = true;
    for (const auto& n : needles) all = all && line.find(n) != std::string::npos;
    if (all) found.push_back(line);
  }
  return found;
}

// Every kind of write a client or an agent makes answers 503 corrupt_history
// naming the event; nothing reaches the store.
void ExpectWritesRefused(Epochd& d, const std::string& run, const Json& def, uint64_t bad) {
  const std::string n = std::to_string(bad);
  const std::string at = "corrupt at event " + n + " (event " + n + ": ";
  auto refused = [&](const std::string& what, const HttpResult& r) {
    EXPECT_EQ(r.status, 503) << what << ": " << r.body;
    Json e = r.json()["error"];
    EXPECT_EQ(e.value("code", ""), "corrupt_history") << what << ": " << r.body;
    EXPECT_NE(e.value("message", "").find(at), std::string::npos) << what << ": " << r.body;
  };
  refused("POST /v1/runs", d.PostJson("/v1/runs", Json{{"workflow", def["name"]}}));
  refused("POST /v1/runs (idempotent)",
          d.Post("/v1/runs", Json{{"workflow", def["name"]}}.dump(), "application/json",
                 {{"Idempotency-Key", "k1"}}));
  refused("POST /v1/workflows", d.PostJson("/v1/workflows", def));
  refused("cancel", d.PostJson("/v1/runs/" + run + "/cancel", Json::object()));
  refused("retry", d.PostJson("/v1/runs/" + run + "/retry", Json::object()));
  refused("cache invalidate", d.PostJson("/v1/cache/invalidate", Json{{"workflow", def["name"]}}));
  // The container protocol, with container c1's own credential.
  std::string credential;
  std::ifstream(d.data_dir() + "/containers/c1/credential") >> credential;
  ASSERT_FALSE(credential.empty());
  refused("register",
          HttpCall(d.url(), "POST", "/v1/containers/c1/register",
                   Json{{"cpu_millis", 1000}, {"memory_bytes", 1 << 30}}.dump(), credential));
  refused("poll", HttpCall(d.url(), "POST", "/v1/containers/c1/poll",
                           Json{{"epoch_seen", 0}}.dump(), credential));
}

TEST(AuditE2ETest, VerifyCheckpointAndAFlippedByte) {
  TempDir dir;
  std::string data = dir.path() + "/data";
  Epochd d(data);
  d.Start();
  auto def = ParseJson(R"({"name": "audited", "steps": [
      {"name": "a", "command": ["true"]}, {"name": "b", "after": ["a"], "command": ["true"]}]})");
  ASSERT_TRUE(def.ok());
  for (int i = 0; i < 3; ++i) {
    Json r = d.WaitForRun(d.RegisterAndSubmit(*def));
    ASSERT_EQ(r["state"], "succeeded");
  }
  std::string ctl = EpochctlPath() + " --server " + d.url() + " ";
  std::string out;
  ASSERT_EQ(RunCommand(ctl + "audit checkpoint", &out), 0) << out;
  std::string checkpoint = out.substr(0, out.find('\n'));
  size_t colon = checkpoint.find(':');
  ASSERT_NE(colon, std::string::npos) << out;
  uint64_t cp_pos = std::stoull(checkpoint.substr(0, colon));
  ASSERT_GT(cp_pos, 20u);
  EXPECT_EQ(checkpoint.size() - colon - 1, 64u);

  Json v = d.Get("/v1/audit/verify").json();
  EXPECT_EQ(v["ok"], true) << v.dump();
  EXPECT_EQ(v["from"], 1);
  EXPECT_GE(v["checked"].get<uint64_t>(), cp_pos);
  EXPECT_EQ(v["head"]["position"], v["checked"]);
  ASSERT_EQ(RunCommand(ctl + "audit verify --against " + checkpoint, &out), 0) << out;
  EXPECT_NE(out.find("matches checkpoint " + checkpoint), std::string::npos) << out;
  // From a trusted checkpoint, only what follows is walked.
  Json from = d.Get("/v1/audit/verify?from=" + std::to_string(cp_pos) + "&hash=" +
                    checkpoint.substr(colon + 1)).json();
  EXPECT_EQ(from["ok"], true) << from.dump();
  EXPECT_EQ(from["checked"].get<uint64_t>(), v["checked"].get<uint64_t>() - cp_pos + 1);
  // Bad input: precise 400s and exit codes.
  EXPECT_EQ(d.Get("/v1/audit/verify?against=12").status, 400);
  EXPECT_EQ(d.Get("/v1/audit/verify?from=0").status, 400);
  EXPECT_EQ(RunCommand(ctl + "audit verify --against nonsense", &out), 1);
  EXPECT_NE(out.find("--against: must be POSITION:HASH"), std::string::npos) << out;
  // A checkpoint whose hash is not the stored one: the history was rewritten.
  std::string forged = std::to_string(cp_pos) + ":" + std::string(64, 'f');
  ASSERT_EQ(RunCommand(ctl + "audit verify --against " + forged, &out), 1) << out;
  EXPECT_NE(out.find("the history up to it was rewritten"), std::string::npos) << out;

  // Export -> offline verification, whole log and one run.
  std::string file = dir.path() + "/events.ndjson";
  ASSERT_EQ(RunCommand("(" + ctl + "events export > " + file + " 2>/dev/null)", &out), 0) << out;
  ASSERT_EQ(RunCommand(ctl + "audit verify --file " + file + " --against " + checkpoint, &out), 0)
      << out;
  EXPECT_NE(out.find("ok: " + std::to_string(v["checked"].get<uint64_t>()) + " events"),
            std::string::npos)
      << out;
  EXPECT_NE(out.find("matches checkpoint " + checkpoint), std::string::npos) << out;
  std::string run_id = d.Get("/v1/runs").json()["items"][0]["id"];
  std::string run_file = dir.path() + "/run.ndjson";
  ASSERT_EQ(RunCommand("(" + ctl + "events export --run " + run_id + " > " + run_file + " 2>/dev/null)",
                       &out),
            0);
  ASSERT_EQ(RunCommand(ctl + "-o json audit verify --file " + run_file, &out), 0) << out;
  auto run_report = ParseJson(out);
  ASSERT_TRUE(run_report.ok()) << out;
  EXPECT_GE((*run_report)["events"].get<int>(), 8);  // submitted .. succeeded
  // One changed character in the export: named by position.
  ASSERT_EQ(RunCommand("sed -i '7s/\"actor\":\"/\"actor\":\"x/' " + file, &out), 0);
  ASSERT_EQ(RunCommand(ctl + "audit verify --file " + file, &out), 1) << out;
  EXPECT_NE(out.find("FAILED: event 7: hash mismatch"), std::string::npos) << out;
  EXPECT_EQ(RunCommand(ctl + "events export --from yesterday", &out), 1);
  EXPECT_NE(out.find("--from: "), std::string::npos) << out;

  // Flip one byte of event 5 in the stopped store.
  d.Terminate();
  ASSERT_EQ(RunCommand(std::string(EPOCH_TAMPER_PATH) + " --store " + data + "/store --position 5",
                       &out),
            0)
      << out;
  // epochd refuses to start on the damaged history, naming the event.
  int rc = RunCommand("timeout 30 " + EpochdPath() + " --data-dir " + data +
                          " --set cluster.basePort=0 2>&1",
                      &out);
  EXPECT_NE(rc, 0) << out;
  EXPECT_NE(rc, 124) << "epochd started on a corrupt history:\n" << out;
  // (The flipped byte may land in the data, a hash or a length: each is named.)
  EXPECT_NE(out.find("corruption: starting the engine: event 5: "), std::string::npos) << out;
  EXPECT_NE(out.find("fails verification at event 5;"), std::string::npos) << out;
  EXPECT_NE(out.find("--allow-corrupt-history"), std::string::npos) << out;
}

// No snapshot covers the flipped event: the start's replay meets it. Without the flag
// epochd exits 1 naming it; with --allow-corrupt-history it serves the state of the
// events before it, read-only, and appends nothing.
TEST(AuditE2ETest, ACorruptHistoryIsServedReadOnlyOnlyWhenAllowed) {
  TempDir dir;
  std::string data = dir.path() + "/data";
  Epochd d(data);
  d.Start();
  auto def = ParseJson(R"({"name": "kept", "steps": [{"name": "a", "command": ["true"]}]})");
  ASSERT_TRUE(def.ok());
  std::string before = d.RegisterAndSubmit(*def);
  ASSERT_EQ(d.WaitForRun(before)["state"], "succeeded");
  std::string tampered = d.RegisterAndSubmit(*def);
  ASSERT_EQ(d.WaitForRun(tampered)["state"], "succeeded");
  Json cluster = d.Get("/v1/cluster").json();
  EXPECT_EQ(cluster["mode"], "normal");
  EXPECT_EQ(cluster["history"]["state"], "verified") << cluster.dump();
  EXPECT_EQ(cluster["history"]["method"], "replay");
  uint64_t epoch = cluster["epoch"];
  // The event to flip: the second run's RunSubmitted (the first run lies before it).
  Json events = d.Get("/v1/events?run=" + tampered).json()["items"];
  ASSERT_FALSE(events.empty());
  ASSERT_EQ(events[0]["type"], "RunSubmitted");
  uint64_t bad = events[0]["position"];
  d.Terminate();
  ASSERT_EQ(d.exit_status(), 0);
  Tamper(data, bad);
  const std::string named = "event " + std::to_string(bad) + ": ";

  std::string out;
  int rc = RunCommand("timeout 30 " + EpochdPath() + " --data-dir " + data +
                          " --set cluster.basePort=0 2>&1",
                      &out);
  EXPECT_EQ(rc, 1) << out;
  EXPECT_NE(out.find("corruption: starting the engine: " + named), std::string::npos) << out;
  EXPECT_NE(out.find("fails verification at event " + std::to_string(bad) + ";"),
            std::string::npos)
      << out;
  EXPECT_NE(out.find("start with --allow-corrupt-history to serve it read-only"),
            std::string::npos)
      << out;

  d.AddArgs({"--allow-corrupt-history"});
  d.Launch();
  ASSERT_FALSE(::testing::Test::HasFatalFailure());
  HttpResult ready = d.Get("/readyz");
  EXPECT_EQ(ready.status, 503) << ready.body;
  EXPECT_EQ(ready.json()["role"], "corrupt_history") << ready.body;
  cluster = d.Get("/v1/cluster").json();
  EXPECT_EQ(cluster["mode"], "corrupt_history") << cluster.dump(2);
  EXPECT_EQ(cluster["history"]["state"], "corrupt");
  EXPECT_EQ(cluster["history"]["verified"], false);
  EXPECT_EQ(cluster["history"]["read_only"], true);
  EXPECT_EQ(cluster["history"]["method"], "start");
  EXPECT_EQ(cluster["history"]["first_bad"], bad);
  EXPECT_EQ(cluster["history"]["checked"], bad - 1);
  EXPECT_EQ(cluster["history"]["problem"].get<std::string>().rfind(named, 0), 0u)
      << cluster.dump(2);
  EXPECT_EQ(cluster["ready"], false);
  EXPECT_EQ(cluster["epoch"], epoch) << "no new epoch is claimed";
  EXPECT_EQ(cluster["applied_position"], bad - 1) << "the state is the history before it";
  const uint64_t head = cluster["head"]["position"];
  ASSERT_GT(head, bad);

  // Reads: the state before the bad event.
  HttpResult r = d.Get("/v1/runs/" + before);
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.json()["state"], "succeeded");
  EXPECT_EQ(r.position, bad - 1);
  EXPECT_EQ(d.Get("/v1/runs/" + tampered).status, 404);
  Json runs = d.Get("/v1/runs").json()["items"];
  ASSERT_EQ(runs.size(), 1u) << runs.dump();
  EXPECT_EQ(runs[0]["id"], before);
  EXPECT_EQ(d.Get("/v1/workflows/kept").status, 200);
  EXPECT_EQ(d.Get("/v1/runs/" + before + "/history").status, 200);
  Json verify = d.Get("/v1/audit/verify").json();
  EXPECT_EQ(verify["ok"], false);
  EXPECT_EQ(verify["bad_position"], bad) << verify.dump();

  ExpectWritesRefused(d, before, *def, bad);
  cluster = d.Get("/v1/cluster").json();
  EXPECT_EQ(cluster["head"]["position"], head);
  EXPECT_EQ(cluster["applied_position"], bad - 1);
  EXPECT_EQ(d.Get("/readyz").status, 503);
  std::string log = d.Log();
  EXPECT_EQ(LinesWith(log, {" critical ", "CORRUPT HISTORY: event " + std::to_string(bad) +
                                              " fails verification (" + named})
                .size(),
            1u)
      << log;
  EXPECT_EQ(LinesWith(log, {" critical ", "serving the CORRUPT history of " + data}).size(), 1u)
      << log;
  d.Terminate();
  EXPECT_EQ(d.exit_status(), 0);

  // The store is as it was: the same head, the same first bad event.
  d.Launch();
  ASSERT_FALSE(::testing::Test::HasFatalFailure());
  cluster = d.Get("/v1/cluster").json();
  EXPECT_EQ(cluster["head"]["position"], head);
  EXPECT_EQ(cluster["history"]["first_bad"], bad);
  d.Terminate();
}

// The flipped byte is in the last event, which the store itself checks when it
// opens: the same refusal and the same read-only mode.
TEST(AuditE2ETest, ACorruptLastEventIsRefusedOrServedReadOnly) {
  TempDir dir;
  std::string data = dir.path() + "/data";
  Epochd d(data, {"sig.minReplicas=0"});
  d.Start();
  auto def = ParseJson(R"({"name": "last", "steps": [{"name": "a", "command": ["true"]}]})");
  ASSERT_TRUE(def.ok());
  ASSERT_EQ(d.PostJson("/v1/workflows", *def).status, 201);
  // The log: LeaderElected, WorkflowRegistered (no containers: nothing else happens).
  const uint64_t head = d.Get("/v1/cluster").json()["head"]["position"];
  ASSERT_EQ(head, 2u);
  d.Terminate();
  ASSERT_EQ(d.exit_status(), 0);
  Tamper(data, head);

  std::string out;
  int rc = RunCommand("timeout 30 " + EpochdPath() + " --data-dir " + data +
                          " --set cluster.basePort=0 2>&1",
                      &out);
  EXPECT_EQ(rc, 1) << out;
  EXPECT_NE(out.find("corruption: opening the event store: opening event store at " + data +
                     "/store: event 2: "),
            std::string::npos)
      << out;
  EXPECT_NE(out.find("fails verification at event 2;"), std::string::npos) << out;
  EXPECT_NE(out.find("start with --allow-corrupt-history"), std::string::npos) << out;

  d.AddArgs({"--allow-corrupt-history"});
  d.Launch();
  ASSERT_FALSE(::testing::Test::HasFatalFailure());
  Json cluster = d.Get("/v1/cluster").json();
  EXPECT_EQ(cluster["mode"], "corrupt_history") << cluster.dump(2);
  EXPECT_EQ(cluster["history"]["first_bad"], head);
  EXPECT_EQ(cluster["head"]["position"], head);
  EXPECT_EQ(cluster["applied_position"], head - 1);
  EXPECT_EQ(d.Get("/v1/workflows/last").status, 404) << "its registration is the bad event";
  EXPECT_EQ(d.Get("/readyz").status, 503);
  HttpResult w = d.PostJson("/v1/workflows", *def);
  EXPECT_EQ(w.status, 503) << w.body;
  EXPECT_EQ(w.json()["error"]["code"], "corrupt_history") << w.body;
  d.Terminate();
  EXPECT_EQ(d.exit_status(), 0);
  d.Launch();
  ASSERT_FALSE(::testing::Test::HasFatalFailure());
  EXPECT_EQ(d.Get("/v1/cluster").json()["head"]["position"], head) << "nothing was appended";
}

// A snapshot covers the flipped event, so the start does not replay it: epochd
// leads, the background verification of the whole chain finds the event within
// seconds, and from then on every write is refused.
TEST(AuditE2ETest, BackgroundVerificationStopsWritesOnACorruptPrefix) {
  TempDir dir;
  std::string data = dir.path() + "/data";
  Epochd d(data, {"storage.snapshotEvery=5"});
  d.Start();
  auto def = ParseJson(R"({"name": "snap", "steps": [{"name": "a", "command": ["true"]}]})");
  ASSERT_TRUE(def.ok());
  std::string run = d.RegisterAndSubmit(*def);
  ASSERT_EQ(d.WaitForRun(run)["state"], "succeeded");
  Json events = d.Get("/v1/events?run=" + run).json()["items"];
  ASSERT_FALSE(events.empty());
  uint64_t bad = events[0]["position"];  // the run's RunSubmitted
  // A snapshot past it is written in the background.
  const std::regex snapshot_line(R"(snapshot at (\d+) \()");
  auto latest_snapshot = [&] {
    uint64_t at = 0;
    std::string log = d.Log();
    for (std::sregex_iterator it(log.begin(), log.end(), snapshot_line), end; it != end; ++it) {
      at = std::stoull((*it)[1]);
    }
    return at;
  };
  ASSERT_TRUE(WaitFor([&] { return latest_snapshot() > bad; }, std::chrono::seconds(10)))
      << d.Log();
  d.Terminate();

  // A sound history: the background walk verifies it.
  d.Start();
  ASSERT_FALSE(::testing::Test::HasFatalFailure());
  Json history;
  ASSERT_TRUE(WaitFor(
      [&] {
        history = d.Get("/v1/cluster").json()["history"];
        return history["state"] != "verifying";
      },
      std::chrono::seconds(10)));
  EXPECT_EQ(history["state"], "verified") << history.dump();
  EXPECT_EQ(history["method"], "background");
  EXPECT_GT(history["head"]["position"].get<uint64_t>(), bad);
  EXPECT_EQ(history["checked"], history["head"]["position"]);
  d.Terminate();

  Tamper(data, bad);
  const std::string named = "event " + std::to_string(bad) + ": ";
  d.Launch();  // no flag needed: the start itself is sound
  ASSERT_FALSE(::testing::Test::HasFatalFailure());
  Json cluster;
  ASSERT_TRUE(WaitFor(
      [&] {
        cluster = d.Get("/v1/cluster").json();
        return cluster["mode"] == "corrupt_history";
      },
      std::chrono::seconds(5)))
      << cluster.dump(2) << "\n"
      << d.Log();
  std::string log = d.Log();
  const std::regex loaded(R"(loaded state at \d+: snapshot at (\d+) \+)");
  std::string last_loaded;
  for (std::sregex_iterator it(log.begin(), log.end(), loaded), end; it != end; ++it) {
    last_loaded = (*it)[1];
  }
  ASSERT_FALSE(last_loaded.empty()) << log;
  EXPECT_GT(std::stoull(last_loaded), bad) << "the start loaded a snapshot covering it";
  EXPECT_EQ(cluster["history"]["state"], "corrupt");
  EXPECT_EQ(cluster["history"]["method"], "background");
  EXPECT_EQ(cluster["history"]["first_bad"], bad);
  EXPECT_EQ(cluster["history"]["checked"], bad - 1);
  EXPECT_EQ(cluster["history"]["problem"].get<std::string>().rfind(named, 0), 0u)
      << cluster.dump(2);
  EXPECT_EQ(cluster["role"], "leader");
  HttpResult ready = d.Get("/readyz");
  EXPECT_EQ(ready.status, 503);
  EXPECT_EQ(ready.json()["role"], "corrupt_history");
  // Reads go on from what it loaded (snapshot + tail).
  HttpResult r = d.Get("/v1/runs/" + run);
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.json()["state"], "succeeded");
  const uint64_t head = d.Get("/v1/cluster").json()["head"]["position"];
  ExpectWritesRefused(d, run, *def, bad);
  // Nothing is appended any more: no commands, no ticks (give the writer's ticks time).
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_EQ(d.Get("/v1/cluster").json()["head"]["position"], head);
  log = d.Log();
  EXPECT_EQ(LinesWith(log, {" critical ", "CORRUPT HISTORY: event " + std::to_string(bad) +
                                              " fails verification (" + named})
                .size(),
            1u)
      << log;
}

// GET /v1/runs/{id}/history and `epochctl run history`: every attempt, where it ran,
// how it ended, the retry, and who cancelled.
TEST(AuditE2ETest, RunHistoryTellsWhoDidWhatAndWhere) {
  TempDir dir;
  Epochd d(dir.path() + "/data");
  d.Start();
  // The first attempt leaves a marker in the run's workspace (which outlives it) and
  // fails; the retry finds it and succeeds.
  auto def = ParseJson(R"J({"name": "flaky", "steps": [
      {"name": "a", "retry": {"limit": 1, "backoff": "fixed", "initial": "100ms"},
       "command": ["sh", "-c", "test -f {{workspace}}/marker || { touch {{workspace}}/marker; exit 3; }"]},
      {"name": "b", "after": ["a"], "command": ["true"]}]})J");
  ASSERT_TRUE(def.ok());
  std::string id = d.RegisterAndSubmit(*def);
  ASSERT_EQ(d.WaitForRun(id)["state"], "succeeded");
  HttpResult r = d.Get("/v1/runs/" + id + "/history");
  ASSERT_EQ(r.status, 200) << r.body;
  Json h = r.json();
  EXPECT_EQ(h["state"], "succeeded");
  ASSERT_EQ(h["steps"][0]["attempts"].size(), 2u) << h.dump(2);
  EXPECT_EQ(h["steps"][0]["attempts"][0]["exit_code"], 3);
  EXPECT_EQ(h["steps"][0]["attempts"][1]["exit_code"], 0);
  EXPECT_EQ(h["steps"][0]["attempts"][0]["container"].get<std::string>().substr(0, 1), "c");
  std::vector<std::string> texts;
  for (const auto& e : h["timeline"]) texts.push_back(e["text"]);
  auto has = [&](const std::string& needle) {
    for (const auto& t : texts) {
      if (t.find(needle) != std::string::npos) return true;
    }
    return false;
  };
  EXPECT_TRUE(has("run submitted by test@default: flaky@1")) << h["timeline"].dump(2);
  EXPECT_TRUE(has("step a attempt 1 failed")) << h["timeline"].dump(2);
  EXPECT_TRUE(has("(exit 3): exit code 3")) << h["timeline"].dump(2);
  EXPECT_TRUE(has("step a attempt 2 scheduled for ")) << h["timeline"].dump(2);
  EXPECT_TRUE(has("step a attempt 2 succeeded")) << h["timeline"].dump(2);
  EXPECT_TRUE(has("step b attempt 1 started on c")) << h["timeline"].dump(2);
  EXPECT_EQ(texts.back(), "run succeeded");

  // Who cancelled: the actor is recorded and shown.
  auto slow = ParseJson(R"({"name": "slow", "steps": [{"name": "s", "command": ["sleep", "30"]}]})");
  std::string sid = d.RegisterAndSubmit(*slow);
  ASSERT_TRUE(WaitFor([&] { return d.Get("/v1/runs/" + sid).json()["state"] == "running"; },
                      std::chrono::seconds(20)));
  std::string alice = AddToken(d.data_dir(), "alice", "default", "operator");
  HttpResult c = HttpCall(d.url(), "POST", "/v1/runs/" + sid + "/cancel", "{}", alice);
  ASSERT_EQ(c.status, 202) << c.body;
  ASSERT_EQ(d.WaitForRun(sid)["state"], "cancelled");
  std::string out;
  ASSERT_EQ(RunCommand(EpochctlPath() + " --server " + d.url() + " run history " + sid, &out), 0)
      << out;
  EXPECT_NE(out.find("cancel requested by alice@default  [alice@default]"), std::string::npos)
      << out;
  EXPECT_NE(out.find("step s attempt 1 cancelled"), std::string::npos) << out;
  EXPECT_NE(out.find("run cancelled"), std::string::npos) << out;
  EXPECT_EQ(d.Get("/v1/runs/nope/history").status, 404);

  // The event log filtered by actor, run and time.
  Json by_alice = d.Get("/v1/events?actor=alice@default").json()["items"];
  ASSERT_EQ(by_alice.size(), 1u) << by_alice.dump(2);
  EXPECT_EQ(by_alice[0]["type"], "RunCancelRequested");
  Json of_run = d.Get("/v1/events?run=" + sid).json()["items"];
  ASSERT_GE(of_run.size(), 4u);
  for (const auto& e : of_run) EXPECT_EQ(e["stream"], "run-" + sid);
  std::string t = of_run[1]["time"];
  Json later = d.Get("/v1/events?run=" + sid + "&since=" + t).json()["items"];
  ASSERT_FALSE(later.empty());
  for (const auto& e : later) EXPECT_GE(e["time"].get<std::string>(), t);
  EXPECT_TRUE(d.Get("/v1/events?run=" + sid + "&until=" + of_run[0]["time"].get<std::string>())
                  .json()["items"]
                  .empty());
  HttpResult bad = d.Get("/v1/events?since=yesterday");
  EXPECT_EQ(bad.status, 400);
  EXPECT_NE(bad.body.find("since: "), std::string::npos) << bad.body;
  EXPECT_EQ(d.Get("/v1/events?run=x&stream=y").status, 400);
}

}  // namespace
}  // namespace epoch::testing
