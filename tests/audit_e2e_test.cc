// Audit end to end: a real epochd's history verified through the API and epochctl,
// then one byte of one stored event flipped in the stopped store (epoch-tamper): the
// master then refuses to start, naming the event.
#include <gtest/gtest.h>

#include <string>

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
  EXPECT_NE(out.find("event 5: hash mismatch"), std::string::npos) << out;
}

}  // namespace
}  // namespace epoch::testing
