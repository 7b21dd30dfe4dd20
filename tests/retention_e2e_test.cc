// Retention with a real epochd and real agents (engine/retention.h): a tenant whose
// retention.outputs and retention.logs are short loses its finished runs' files, the
// events record it, the run says what is gone, a log read answers 410, and
// /v1/usage and `epochctl admin usage` count it per tenant; another tenant keeps all.
#include <gtest/gtest.h>

#include <filesystem>

#include "common/json.h"
#include "tests/harness.h"

namespace epoch::testing {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

const char* kDef = R"J({"name": "prep", "steps": [
    {"name": "a", "kind": "data_prep", "outputs": ["out.txt"],
     "command": ["sh", "-c", "echo hello > {{outputs}}/out.txt; echo a line for the log"]}]})J";

HttpResult As(Epochd& d, const std::string& token, const std::string& method,
              const std::string& path, const std::string& body = "") {
  return HttpCall(d.url(), method, path, body, token);
}

TEST(RetentionE2ETest, ATenantsOldFilesGoAndEverySurfaceSaysSo) {
  TempDir dir;
  Epochd d(dir.path() + "/data", {"tenants.old.retention.outputs=1s",
                                  "tenants.old.retention.logs=1s", "retention.interval=200ms"});
  d.Start();
  const std::string olga = AddToken(d.data_dir(), "olga", "old", "operator");

  HttpResult wf = As(d, olga, "POST", "/v1/workflows", kDef);
  ASSERT_EQ(wf.status, 201) << wf.body;
  HttpResult sub = As(d, olga, "POST", "/v1/runs", R"({"workflow": "prep"})");
  ASSERT_EQ(sub.status, 201) << sub.body;
  const std::string old_run = sub.json()["id"];
  // The default tenant keeps its files for ever (retention.* default to 0s).
  const std::string kept = d.RegisterAndSubmit(*ParseJson(kDef));
  ASSERT_EQ(d.WaitForRun(old_run)["state"], "succeeded");
  ASSERT_EQ(d.WaitForRun(kept)["state"], "succeeded");

  // The events come first and the deletion after them (retention.h): wait for both.
  const std::string data = d.data_dir();
  Json attempt;
  ASSERT_TRUE(WaitFor(
      [&] {
        attempt = d.Get("/v1/runs/" + old_run).json()["steps"][0]["attempts"][0];
        return attempt.contains("outputs_expired") && attempt.contains("log_expired") &&
               !fs::exists(data + "/runs/" + old_run) && !fs::exists(data + "/logs/" + old_run);
      },
      30000ms))
      << attempt.dump(2);
  EXPECT_FALSE(fs::exists(data + "/runs/" + old_run)) << "its folders are gone";
  EXPECT_FALSE(fs::exists(data + "/logs/" + old_run));
  EXPECT_TRUE(fs::exists(data + "/runs/" + kept + "/a/1/outputs/out.txt"));
  EXPECT_TRUE(fs::exists(data + "/logs/" + kept + "/a/1.log"));
  const int64_t bytes = attempt["outputs_expired"]["bytes"];
  EXPECT_GE(bytes, 6) << "out.txt, at least";
  EXPECT_EQ(attempt["log_expired"]["bytes"], attempt["log"]["bytes"]) << attempt.dump(2);

  // The events: one of each, by "retention", with what was deleted.
  HttpResult evs = d.Get("/v1/runs/" + old_run + "/events");
  ASSERT_EQ(evs.status, 200) << evs.body;
  std::map<std::string, Json> by_type;
  const Json items = evs.json()["items"];
  for (const auto& e : items) by_type[e["type"].get<std::string>()] = e;
  ASSERT_TRUE(by_type.count("OutputsExpired")) << evs.body;
  ASSERT_TRUE(by_type.count("LogsExpired")) << evs.body;
  EXPECT_EQ(by_type["OutputsExpired"]["actor"], "retention");
  EXPECT_EQ(by_type["OutputsExpired"]["data"]["files"],
            (Json::array({Json{{"step", "a"}, {"attempt", 1}, {"bytes", bytes}}})));
  EXPECT_EQ(by_type["OutputsExpired"]["data"]["horizon"], "1s");

  // Its log: 410 Gone, saying when; the kept run's log reads as before.
  HttpResult log = d.Get("/v1/runs/" + old_run + "/steps/a/logs");
  EXPECT_EQ(log.status, 410) << log.body;
  EXPECT_EQ(log.json()["error"]["code"], "gone") << log.body;
  EXPECT_NE(log.body.find("expired on"), std::string::npos) << log.body;
  HttpResult kept_log = d.Get("/v1/runs/" + kept + "/steps/a/logs");
  EXPECT_EQ(kept_log.status, 200);
  EXPECT_NE(kept_log.body.find("a line for the log"), std::string::npos) << kept_log.body;

  // Usage: the admin sees both tenants, olga her own.
  HttpResult usage = d.Get("/v1/usage");
  ASSERT_EQ(usage.status, 200) << usage.body;
  Json u = usage.json()["tenants"];
  EXPECT_EQ(u["old"]["expired"]["outputs_bytes"], bytes) << usage.body;
  EXPECT_EQ(u["old"]["expired"]["logs_events"], 1);
  EXPECT_EQ(u["old"]["outputs_bytes"], 0);
  EXPECT_EQ(u["old"]["retention"]["outputs"], "1s");
  EXPECT_GE(u["default"]["outputs_bytes"].get<int64_t>(), 6);
  EXPECT_EQ(u["default"]["runs"], 1);
  EXPECT_EQ(u["default"]["retention"]["logs"], "0s");
  HttpResult hers = As(d, olga, "GET", "/v1/usage");
  ASSERT_EQ(hers.status, 200) << hers.body;
  EXPECT_EQ(hers.json()["tenants"].size(), 1u) << hers.body;
  EXPECT_TRUE(hers.json()["tenants"].contains("old")) << hers.body;

  std::string out;
  ASSERT_EQ(RunCommand(EpochctlPath() + " --server " + d.url() + " admin usage", &out), 0) << out;
  EXPECT_NE(out.find("TENANT"), std::string::npos) << out;
  EXPECT_NE(out.find("old"), std::string::npos) << out;
  EXPECT_NE(out.find("forever"), std::string::npos) << "the default tenant keeps all: " << out;

  // The configuration says what is in force.
  HttpResult cluster = d.Get("/v1/cluster");
  ASSERT_EQ(cluster.status, 200);
  EXPECT_EQ(cluster.json()["config"]["tenants.old.retention.logs"], "1s") << cluster.body;
}

TEST(RetentionE2ETest, ABadRetentionSettingStopsTheStartNamingIt) {
  TempDir dir;
  std::string out;
  int rc = RunCommand(EpochdPath() + " --data-dir " + dir.path() +
                          " --set tenants.a.retention.outputs=soon --set cluster.basePort=0",
                      &out);
  EXPECT_NE(rc, 0);
  EXPECT_NE(out.find("tenants.a.retention.outputs"), std::string::npos) << out;
}

}  // namespace
}  // namespace epoch::testing
