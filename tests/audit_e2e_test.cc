// Audit end to end: a real epochd's history verified through the API and epochctl,
// then one byte of one stored event flipped in the stopped store (epoch-tamper): the
// master then refuses to start, naming the event.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "tests/harness.h"

namespace epoch::testing {
namespace {

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
}

// GET /v1/runs/{id}/history and `epochctl run history`: every attempt, where it ran,
// how it ended, the retry, and who cancelled.
TEST(AuditE2ETest, RunHistoryTellsWhoDidWhatAndWhere) {
  TempDir dir;
  Epochd d(dir.path() + "/data");
  d.Start();
  std::string marker = dir.path() + "/marker";
  auto def = ParseJson(R"J({"name": "flaky", "steps": [
      {"name": "a", "retry": {"limit": 1, "backoff": "fixed", "initial": "100ms"},
       "command": ["sh", "-c", "test -f )J" + marker + R"J( || { touch )J" + marker + R"J(; exit 3; }"]},
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
  EXPECT_TRUE(has("run submitted by anonymous: flaky@1")) << h["timeline"].dump(2);
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
  HttpResult c = d.Post("/v1/runs/" + sid + "/cancel", "{}", "application/json",
                        {{"X-Epoch-User", "alice"}});
  ASSERT_EQ(c.status, 202) << c.body;
  ASSERT_EQ(d.WaitForRun(sid)["state"], "cancelled");
  std::string out;
  ASSERT_EQ(RunCommand(EpochctlPath() + " --server " + d.url() + " run history " + sid, &out), 0)
      << out;
  EXPECT_NE(out.find("cancel requested by alice  [alice]"), std::string::npos) << out;
  EXPECT_NE(out.find("step s attempt 1 cancelled"), std::string::npos) << out;
  EXPECT_NE(out.find("run cancelled"), std::string::npos) << out;
  EXPECT_EQ(d.Get("/v1/runs/nope/history").status, 404);

  // The event log filtered by actor, run and time.
  Json by_alice = d.Get("/v1/events?actor=alice").json()["items"];
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
