// Security end to end, on a real epochd with real agents: the auth matrix (every
// endpoint x every role x own/other tenant), the actor on every write event, token
// creation and revocation while serving, no secret in any log or stored byte, TLS by
// default (generated certificate verified by epochctl and curl; plain HTTP refused
// unless asked for, and then only on loopback), and the hardening limits.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "tests/harness.h"

namespace epoch::testing {
namespace {

using namespace std::chrono_literals;

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

struct Who {
  std::string name;
  std::string token;
};

class SecurityE2ETest : public ::testing::Test {
 protected:
  TempDir dir_;
};

// Every endpoint x every role x own/other tenant. "ml" is the own tenant of op and vi;
// "cv" is another tenant. A run of another tenant answers exactly like a run that
// does not exist (404), so ids do not leak through 403-vs-404.
TEST_F(SecurityE2ETest, AuthMatrix) {
  std::string data = dir_.path() + "/data";
  Epochd d(data);
  d.Start();
  std::string op = AddToken(data, "olga", "ml", "operator");
  std::string vi = AddToken(data, "victor", "ml", "viewer");
  std::string op2 = AddToken(data, "carl", "cv", "operator");
  std::string au = AddToken(data, "audrey", "audit", "auditor");

  auto call = [&](const std::string& method, const std::string& path, const std::string& body,
                  const std::string& token) { return HttpCall(d.url(), method, path, body, token); };
  // Each tenant's workflow and a finished run of it (ml's also registers a data set).
  auto ml_def = R"({"name": "mlwf", "steps": [{"name": "a", "kind": "data_prep",
      "outputs": ["d.txt"], "dataset": {"name": "mldata"},
      "command": ["sh", "-c", "echo 1 > $EPOCH_OUTPUTS/d.txt"]}]})";
  ASSERT_EQ(call("POST", "/v1/workflows", ml_def, op).status, 201);
  ASSERT_EQ(call("POST", "/v1/workflows",
                 R"({"name": "cvwf", "steps": [{"name": "a", "command": ["true"]}]})", op2)
                .status,
            201);
  std::string ml_run = call("POST", "/v1/runs", R"({"workflow": "mlwf"})", op).json()["id"];
  std::string cv_run = call("POST", "/v1/runs", R"({"workflow": "cvwf"})", op2).json()["id"];
  ASSERT_EQ(d.WaitForRun(ml_run)["state"], "succeeded");
  ASSERT_EQ(d.WaitForRun(cv_run)["state"], "succeeded");
  // A container's own credential: it opens nothing but that container's endpoints. The
  // master mints it when it launches the container, which the runs above waited for.
  std::string agent = ReadAll(data + "/containers/c1/credential");
  while (!agent.empty() && agent.back() == '\n') agent.pop_back();
  ASSERT_EQ(agent.rfind("epochc_", 0), 0u);
  EXPECT_EQ(d.Get("/v1/runs/" + ml_run).json()["tenant"], "ml");
  EXPECT_EQ(d.Get("/v1/runs/" + ml_run).json()["submitter"], "olga@ml");

  std::vector<Who> who = {{"none", ""},
                          {"bad", "epoch_00000000_" + std::string(64, 'a')},
                          {"agent", agent},
                          {"admin", AdminToken()},
                          {"auditor", au},
                          {"operator", op},
                          {"viewer", vi},
                          {"other-operator", op2}};
  struct Row {
    std::string method, path, body;
    // Expected status per principal, in the order of `who`.
    std::vector<int> want;
  };
  const std::string ml = "/v1/runs/" + ml_run, cv = "/v1/runs/" + cv_run;
  //                               none bad agent admin auditor op   viewer op2
  std::vector<Row> rows = {
      {"GET", "/healthz", "", {200, 200, 200, 200, 200, 200, 200, 200}},
      {"GET", "/readyz", "", {200, 200, 200, 200, 200, 200, 200, 200}},
      {"GET", "/metrics", "", {401, 401, 401, 200, 200, 403, 403, 403}},
      {"GET", "/v1/cluster", "", {401, 401, 401, 200, 200, 200, 200, 200}},
      {"GET", "/v1/containers", "", {401, 401, 401, 200, 200, 200, 200, 200}},
      {"GET", "/v1/runs", "", {401, 401, 401, 200, 200, 200, 200, 200}},
      {"GET", ml, "", {401, 401, 401, 200, 200, 200, 200, 404}},
      {"GET", cv, "", {401, 401, 401, 200, 200, 404, 404, 200}},
      {"GET", "/v1/runs/r-does-not-exist", "", {401, 401, 401, 404, 404, 404, 404, 404}},
      {"GET", ml + "/history", "", {401, 401, 401, 200, 200, 200, 200, 404}},
      {"GET", ml + "/events", "", {401, 401, 401, 200, 200, 200, 200, 404}},
      {"GET", ml + "/steps/a/logs", "", {401, 401, 401, 200, 200, 200, 200, 404}},
      {"GET", "/v1/workflows", "", {401, 401, 401, 200, 200, 200, 200, 200}},
      {"GET", "/v1/workflows/mlwf", "", {401, 401, 401, 200, 200, 200, 200, 404}},
      {"GET", "/v1/workflows/mlwf/versions/1", "", {401, 401, 401, 200, 200, 200, 200, 404}},
      {"GET", "/v1/datasets", "", {401, 401, 401, 200, 200, 200, 200, 200}},
      {"GET", "/v1/datasets/mldata", "", {401, 401, 401, 200, 200, 200, 200, 404}},
      {"GET", "/v1/datasets/mldata/versions/1", "", {401, 401, 401, 200, 200, 200, 200, 404}},
      {"GET", "/v1/models", "", {401, 401, 401, 200, 200, 200, 200, 200}},
      {"GET", "/v1/cache", "", {401, 401, 401, 200, 200, 200, 200, 200}},
      {"GET", "/v1/events", "", {401, 401, 401, 200, 200, 200, 200, 200}},
      {"GET", "/v1/audit/verify", "", {401, 401, 401, 200, 200, 403, 403, 403}},
      // Writes. A finished run cannot be cancelled or retried (409) by those who may
      // write to it; another tenant's is 404, like one that does not exist.
      {"POST", ml + "/cancel", "", {401, 401, 401, 409, 403, 409, 403, 404}},
      {"POST", ml + "/retry", "", {401, 401, 401, 409, 403, 409, 403, 404}},
      {"POST", "/v1/runs/r-does-not-exist/cancel", "", {401, 401, 401, 404, 403, 404, 403, 404}},
      {"POST",
       "/v1/cache/invalidate",
       R"({"workflow": "mlwf"})",
       {401, 401, 401, 200, 403, 200, 403, 404}},
      {"POST",
       "/v1/workflows",
       R"({"name": "mlwf", "steps": [{"name": "b", "command": ["false"]}]})",
       {401, 401, 401, 201, 403, 200, 403, 409}},
      {"POST", "/v1/runs", R"({"workflow": "cvwf"})", {401, 401, 401, 201, 403, 404, 403, 201}},
      {"POST", "/v1/containers/c99/register", "{}", {401, 401, 401, 401, 401, 401, 401, 401}},
      {"POST", "/v1/containers/c99/poll", "{}", {401, 401, 401, 401, 401, 401, 401, 401}},
      // Only c1's own credential opens c1's endpoint; no user token does. A claim of
      // an epoch no leader published is refused (409) and deposes nobody: the next
      // row is still answered by this leader.
      {"POST",
       "/v1/containers/c1/poll",
       R"({"epoch_seen": 99})",
       {401, 401, 409, 401, 401, 401, 401, 401}},
      {"POST",
       "/v1/containers/c1/poll",
       R"({"epoch_seen": 0})",
       {401, 401, 200, 401, 401, 401, 401, 401}},
  };
  for (const auto& row : rows) {
    ASSERT_EQ(row.want.size(), who.size()) << row.path;
    for (size_t i = 0; i < who.size(); ++i) {
      HttpResult r = call(row.method, row.path, row.body, who[i].token);
      EXPECT_EQ(r.status, row.want[i])
          << row.method << " " << row.path << " as " << who[i].name << ": " << r.body;
      if (r.status >= 400) {
        Json e = r.json();
        EXPECT_TRUE(e.contains("error") && e["error"].contains("code"))
            << row.method << " " << row.path << " as " << who[i].name << ": " << r.body;
      }
    }
  }

  // What each one sees in the lists: its own tenant only, unless admin or auditor.
  auto ids = [&](const std::string& token) {
    std::set<std::string> out;
    Json items = call("GET", "/v1/runs", "", token).json()["items"];  // (no range-for on a temporary)
    for (const auto& r : items) out.insert(r["id"]);
    return out;
  };
  EXPECT_TRUE(ids(op).count(ml_run));
  EXPECT_FALSE(ids(op).count(cv_run));
  EXPECT_FALSE(ids(vi).count(cv_run));
  EXPECT_FALSE(ids(op2).count(ml_run));
  EXPECT_TRUE(ids(au).count(ml_run) && ids(au).count(cv_run));
  auto names = [&](const std::string& path, const std::string& token) {
    std::set<std::string> out;
    Json items = call("GET", path, "", token).json()["items"];
    for (const auto& w : items) out.insert(w["name"]);
    return out;
  };
  EXPECT_EQ(names("/v1/workflows", op), std::set<std::string>{"mlwf"});
  EXPECT_EQ(names("/v1/workflows", op2), std::set<std::string>{"cvwf"});
  EXPECT_EQ(names("/v1/datasets", op2), std::set<std::string>{});
  EXPECT_EQ(names("/v1/datasets", vi), std::set<std::string>{"mldata"});
  // The global history: a tenant sees its runs' and workflows' events, nothing else.
  Json viewer_events = call("GET", "/v1/events?limit=1000", "", vi).json()["items"];
  EXPECT_FALSE(viewer_events.empty());
  for (const auto& e : viewer_events) {
    std::string s = e["stream"];
    EXPECT_TRUE(s.rfind("run-", 0) == 0 || s == "workflow-mlwf") << s;
    EXPECT_NE(s, "run-" + cv_run);
  }
  bool auditor_sees_cv = false;
  Json auditor_events = call("GET", "/v1/events?limit=1000", "", au).json()["items"];
  for (const auto& e : auditor_events) {
    auditor_sees_cv |= e["stream"] == "run-" + cv_run;
  }
  EXPECT_TRUE(auditor_sees_cv);
  // The auditor narrows the history to one tenant.
  Json cv_events = call("GET", "/v1/events?limit=1000&tenant=cv", "", au).json()["items"];
  ASSERT_FALSE(cv_events.empty());
  for (const auto& e : cv_events) {
    std::string s = e["stream"];
    EXPECT_TRUE(s == "workflow-cvwf" || (s.rfind("run-", 0) == 0 && s != "run-" + ml_run)) << s;
  }
  EXPECT_EQ(call("GET", "/v1/events?tenant=Not%20A%20Name", "", au).status, 400);
  // Containers show a tenant only its own attempts.
  Json containers = call("GET", "/v1/containers?all=true", "", op2).json()["items"];
  for (const auto& c : containers) {
    for (const auto& a : c["attempts"]) {
      EXPECT_EQ(a.get<std::string>().rfind(ml_run, 0), std::string::npos) << a;
    }
  }

  // Refused requests wrote nothing (runs keep appending in the background, so count
  // what each kind of write would have recorded rather than compare heads).
  std::map<std::string, int> kinds;
  Json log = d.Get("/v1/events?limit=1000").json()["items"];
  for (const auto& e : log) {
    kinds[e["type"]]++;
    EXPECT_NE(e["stream"], "container-c99") << e.dump();
  }
  EXPECT_EQ(kinds["RunSubmitted"], 4);        // 2 before; admin's and carl's cvwf runs
  EXPECT_EQ(kinds["WorkflowRegistered"], 3);  // mlwf, cvwf, admin's mlwf v2
  EXPECT_EQ(kinds["RunCancelRequested"], 0);
  EXPECT_EQ(kinds["RunRetryRequested"], 0);

  // Every write event names who caused it: user@tenant for API writes.
  std::map<std::string, std::string> want_actor = {{"WorkflowRegistered", "@"},
                                                   {"RunSubmitted", "@"},
                                                   {"CacheInvalidated", "@"}};
  int checked = 0;
  Json all = d.Get("/v1/events?limit=1000").json()["items"];
  for (const auto& e : all) {
    EXPECT_FALSE(e["actor"].get<std::string>().empty()) << e.dump();
    if (want_actor.count(e["type"])) {
      ++checked;
      std::string a = e["actor"];
      EXPECT_TRUE(a == "olga@ml" || a == "carl@cv" || a == "test@default") << e.dump();
    }
  }
  EXPECT_GE(checked, 6);
}

// Tokens made and revoked with epochctl while epochd serves take effect at once; no
// token appears in any log, event or stored byte; the tokens file holds hashes only.
TEST_F(SecurityE2ETest, TokensComeAndGoWhileServingAndNeverLeak) {
  std::string data = dir_.path() + "/data";
  Epochd d(data);
  d.Start();
  std::string out;
  ASSERT_EQ(RunCommand(EpochctlPath() + " admin token create --data-dir " + data +
                           " --user dana --tenant ml --role operator 2>/dev/null",
                       &out),
            0)
      << out;
  std::string token = out.substr(0, out.find('\n'));
  ASSERT_EQ(token.rfind("epoch_", 0), 0u) << out;
  std::string tokens_json = ReadAll(data + "/tokens.json");
  EXPECT_EQ(tokens_json.find(token), std::string::npos) << "the tokens file holds the token";
  EXPECT_NE(tokens_json.find("\"dana\""), std::string::npos);
  EXPECT_EQ(std::filesystem::status(data + "/tokens.json").permissions() &
                std::filesystem::perms::others_read,
            std::filesystem::perms::none);
  HttpResult r = HttpCall(d.url(), "POST", "/v1/workflows",
                          R"({"name": "w", "steps": [{"name": "a", "command": ["true"]}]})", token);
  EXPECT_EQ(r.status, 201) << r.body;
  std::string run = HttpCall(d.url(), "POST", "/v1/runs", R"({"workflow": "w"})", token).json()["id"];
  ASSERT_EQ(d.WaitForRun(run)["state"], "succeeded");
  // A wrong token is refused without echoing it; a malformed header too.
  std::string wrong = token.substr(0, token.size() - 4) + "0000";
  HttpResult bad = HttpCall(d.url(), "GET", "/v1/runs", "", wrong);
  EXPECT_EQ(bad.status, 401);
  EXPECT_EQ(bad.body.find(wrong.substr(6)), std::string::npos) << bad.body;
  // epochctl token list shows no secret; revoke takes effect on the next request.
  ASSERT_EQ(RunCommand(EpochctlPath() + " admin token list --data-dir " + data, &out), 0);
  EXPECT_NE(out.find("dana"), std::string::npos) << out;
  EXPECT_EQ(out.find(token.substr(15)), std::string::npos) << out;
  std::string id = token.substr(6, 8);
  ASSERT_EQ(RunCommand(EpochctlPath() + " admin token revoke --data-dir " + data + " " + id, &out),
            0)
      << out;
  EXPECT_EQ(HttpCall(d.url(), "GET", "/v1/runs", "", token).status, 401);
  EXPECT_NE(RunCommand(EpochctlPath() + " admin token revoke --data-dir " + data + " " + id, &out),
            0);
  EXPECT_NE(out.find("no token with id"), std::string::npos) << out;
  // Bad names are refused by create.
  EXPECT_NE(RunCommand(EpochctlPath() + " admin token create --data-dir " + data +
                           " --user 'Bad Name' --tenant ml --role viewer",
                       &out),
            0);
  EXPECT_NE(out.find("user: 'Bad Name' is not a valid name"), std::string::npos) << out;

  // No secret anywhere in the data dir but each container's credential file itself:
  // logs, agent state, RocksDB's files (events), the tokens file.
  d.Terminate();
  std::vector<std::string> secrets = {token.substr(15), AdminToken().substr(15)};
  for (const auto& entry : std::filesystem::recursive_directory_iterator(data)) {
    if (entry.path().filename() == "credential") {
      secrets.push_back(ReadAll(entry.path().string()).substr(7, 64));
    }
  }
  EXPECT_GE(secrets.size(), 4u) << "no container credentials found";
  int files = 0;
  for (const auto& entry : std::filesystem::recursive_directory_iterator(data)) {
    if (!entry.is_regular_file() || entry.path().filename() == "credential") continue;
    ++files;
    std::string bytes = ReadAll(entry.path().string());
    for (const auto& s : secrets) {
      EXPECT_EQ(bytes.find(s), std::string::npos) << "a secret in " << entry.path();
    }
  }
  EXPECT_GT(files, 10);
}

// HTTPS by default: the generated certificate and its fingerprint, verified by curl
// and epochctl; agents work over it; plain HTTP only when asked for, on loopback.
TEST_F(SecurityE2ETest, TlsByDefault) {
  std::string data = dir_.path() + "/data";
  Epochd d(data);
  d.UseTls();
  d.Start();
  ASSERT_EQ(d.url().rfind("https://127.0.0.1:", 0), 0u) << d.url();
  std::string cert = data + "/tls/cert.pem";
  ASSERT_TRUE(std::filesystem::exists(cert));
  EXPECT_EQ(std::filesystem::status(data + "/tls/key.pem").permissions() &
                (std::filesystem::perms::group_all | std::filesystem::perms::others_all),
            std::filesystem::perms::none);
  // The fingerprint epochd printed is the certificate's.
  std::string out;
  ASSERT_EQ(RunCommand("openssl x509 -in " + cert + " -noout -fingerprint -sha256", &out), 0);
  std::string fp = out.substr(out.find('=') + 1);
  fp = fp.substr(0, fp.find('\n'));
  EXPECT_NE(d.Log().find("fingerprint SHA256 " + fp), std::string::npos) << fp;
  // A workflow runs end to end: agents reach the master over HTTPS.
  auto def = ParseJson(R"({"name": "t", "steps": [{"name": "a", "command": ["echo", "hi"]}]})");
  ASSERT_TRUE(def.ok());
  std::string run = d.RegisterAndSubmit(*def);
  ASSERT_EQ(d.WaitForRun(run)["state"], "succeeded");
  // curl verifies with --cacert, and refuses without it.
  std::string auth = " -H 'Authorization: Bearer " + AdminToken() + "' ";
  ASSERT_EQ(RunCommand("curl -sS --cacert " + cert + auth + d.url() + "/v1/runs/" + run, &out), 0)
      << out;
  EXPECT_NE(out.find("\"succeeded\""), std::string::npos) << out;
  EXPECT_NE(RunCommand("curl -sS " + auth + d.url() + "/v1/runs/" + run, &out), 0) << out;
  // epochctl trusts the data dir's certificate, or --cacert's; not an unknown one.
  ASSERT_EQ(RunCommand(EpochctlPath() + " --server " + d.url() + " --data-dir " + data +
                           " run get " + run,
                       &out),
            0)
      << out;
  EXPECT_NE(out.find("succeeded"), std::string::npos) << out;
  ASSERT_EQ(RunCommand(EpochctlPath() + " --server " + d.url() + " --cacert " + cert + " run list",
                       &out),
            0)
      << out;
  EXPECT_NE(RunCommand(EpochctlPath() + " --server " + d.url() + " run list", &out), 0) << out;
  // Plain HTTP to the HTTPS port gets no answer.
  std::string plain = "http://" + d.url().substr(8);
  EXPECT_EQ(HttpGet(plain, "/healthz").status, 0);
  d.Terminate();
  // Restarted, it serves the same certificate (clients keep trusting it).
  std::string before = ReadAll(cert);
  d.Start();
  EXPECT_EQ(ReadAll(cert), before);
  ASSERT_EQ(RunCommand("curl -sS --cacert " + cert + auth + d.url() + "/v1/runs", &out), 0) << out;
  d.Terminate();

  // Your own certificate and key.
  std::string own = dir_.path() + "/own";
  std::filesystem::create_directories(own);
  ASSERT_EQ(RunCommand("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes "
                       "-keyout " + own + "/k.pem -out " + own + "/c.pem -days 1 -subj /CN=own "
                       "-addext subjectAltName=IP:127.0.0.1 2>&1",
                       &out),
            0)
      << out;
  std::string data2 = dir_.path() + "/data2";
  Epochd mine(data2, {"cluster.tlsCertificate=" + own + "/c.pem", "cluster.tlsKey=" + own + "/k.pem"});
  mine.UseTls();
  mine.Start();
  EXPECT_FALSE(std::filesystem::exists(data2 + "/tls")) << "generated one anyway";
  ASSERT_EQ(RunCommand("curl -sS --cacert " + own + "/c.pem " + mine.url() + "/healthz", &out), 0)
      << out;
  // Agents trust it too (epochd hands them the certificate as their CA).
  std::string run2 = mine.RegisterAndSubmit(*def);
  EXPECT_EQ(mine.WaitForRun(run2, std::chrono::seconds(30))["state"], "succeeded");
  mine.Terminate();
  // A key that is not the certificate's is refused at start.
  ASSERT_EQ(RunCommand("openssl ecparam -name prime256v1 -genkey -noout -out " + own +
                           "/other.pem 2>&1",
                       &out),
            0);
  int rc = RunCommand("timeout 20 " + EpochdPath() + " --data-dir " + data2 +
                          " --set cluster.basePort=0 --set cluster.tlsCertificate=" + own +
                          "/c.pem --set cluster.tlsKey=" + own + "/other.pem",
                      &out);
  EXPECT_EQ(rc, 1) << out;
  EXPECT_NE(out.find("is not the key of"), std::string::npos) << out;

  // Plain HTTP: refused off loopback unless --force.
  rc = RunCommand("timeout 20 " + EpochdPath() + " --data-dir " + data2 +
                      " --insecure-http --set api.host=0.0.0.0 --set cluster.basePort=0",
                  &out);
  EXPECT_EQ(rc, 1) << out;
  EXPECT_NE(out.find("not a loopback address"), std::string::npos) << out;
}

// The ids of an SSE capture ("id: N" lines), in order.
std::vector<uint64_t> SseIds(const std::string& text) {
  std::vector<uint64_t> ids;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("id: ", 0) == 0) ids.push_back(std::stoull(line.substr(4)));
  }
  return ids;
}

// GET /v1/events?follow=true streams the history and then what is appended; a client
// that reconnects with Last-Event-ID gets everything after it: no gap, no duplicate.
TEST_F(SecurityE2ETest, EventStreamResumesFromLastEventIdWithoutGapOrDuplicate) {
  std::string data = dir_.path() + "/data";
  Epochd d(data);
  d.Start();
  auto def = ParseJson(R"({"name": "s", "steps": [{"name": "a", "command": ["true"]},
      {"name": "b", "after": ["a"], "command": ["true"]}]})");
  ASSERT_TRUE(def.ok());
  ASSERT_EQ(d.WaitForRun(d.RegisterAndSubmit(*def))["state"], "succeeded");
  auto follow = [&](const std::string& header) {
    std::string out;
    RunCommand("curl -sN -m 1.5 -H 'Authorization: Bearer " + AdminToken() + "' " + header + " '" +
                   d.url() + "/v1/events?follow=true'",
               &out);
    return SseIds(out);
  };
  std::vector<uint64_t> first = follow("");
  ASSERT_GE(first.size(), 10u);
  for (size_t i = 0; i < first.size(); ++i) ASSERT_EQ(first[i], i + 1) << "gap or duplicate";
  // The client saw up to `cut` (it dropped after that); meanwhile more happens.
  uint64_t cut = first[first.size() - 3];
  ASSERT_EQ(d.WaitForRun(d.RegisterAndSubmit(*def))["state"], "succeeded");
  uint64_t head = d.Head();
  std::vector<uint64_t> resumed = follow("-H 'Last-Event-ID: " + std::to_string(cut) + "'");
  ASSERT_FALSE(resumed.empty());
  EXPECT_EQ(resumed.front(), cut + 1);
  for (size_t i = 1; i < resumed.size(); ++i) EXPECT_EQ(resumed[i], resumed[i - 1] + 1);
  EXPECT_GE(resumed.back(), head);
  // A bad Last-Event-ID is a 400, not a stream from the start.
  std::string out;
  RunCommand("curl -s -m 2 -w ' %{http_code}' -H 'Authorization: Bearer " + AdminToken() +
                 "' -H 'Last-Event-ID: x' '" + d.url() + "/v1/events?follow=true'",
             &out);
  EXPECT_EQ(out.substr(out.size() - 4), " 400") << out;
}

// Limits: each excess is a clear 4xx, and the server stays up.
TEST_F(SecurityE2ETest, LimitsAnswer4xxAndTheServerStaysUp) {
  std::string data = dir_.path() + "/data";
  Epochd d(data, {"api.maxStreams=2", "api.maxBodyBytes=4096"});
  d.Start();
  // Once the pool has settled, only these requests could move the head.
  ASSERT_TRUE(WaitFor(
      [&] {
        Json cs = d.Get("/v1/containers").json()["items"];
        int n = 0;
        for (const auto& c : cs) n += c["state"] == "registered";
        return n == 2;
      },
      10000ms));
  uint64_t head = d.Head();
  // Body size.
  HttpResult r = d.Post("/v1/workflows", std::string(8192, ' ') + "{}");
  EXPECT_EQ(r.status, 413) << r.body;
  EXPECT_NE(r.body.find("maxBodyBytes"), std::string::npos) << r.body;
  // JSON depth.
  std::string deep = "{\"name\": " + std::string(200, '[') + std::string(200, ']') + "}";
  r = d.Post("/v1/workflows", deep);
  EXPECT_EQ(r.status, 400) << r.body;
  EXPECT_NE(r.body.find("nested deeper than"), std::string::npos) << r.body;
  // Header size.
  std::string out;
  RunCommand("curl -s -w ' %{http_code}' -H 'X-Big: " + std::string(20000, 'x') + "' " +
                 d.url() + "/healthz",
             &out);
  EXPECT_NE(out.find("headers over 8 KiB"), std::string::npos) << out;
  EXPECT_EQ(out.substr(out.size() - 4), " 400") << out;
  // Bytes that are not UTF-8 in a query value or a path segment: a 400/404, not a 500.
  r = d.Get("/v1/runs?limit=%ff");
  EXPECT_EQ(r.status, 400) << r.body;
  EXPECT_EQ(d.Get("/v1/runs/r-%e9t%c3").status, 404);
  // Events per page.
  r = d.Get("/v1/events?limit=100000");
  EXPECT_EQ(r.status, 400) << r.body;
  EXPECT_NE(r.body.find("limit"), std::string::npos) << r.body;
  // Concurrent SSE streams: the third of 2 allowed is 429 while two are open.
  std::string follow = "curl -sN -m 6 -H 'Authorization: Bearer " + AdminToken() + "' '" +
                       d.url() + "/v1/events?follow=true' > /dev/null 2>&1 &";
  ASSERT_EQ(RunCommand("(" + follow + " " + follow + ")", &out), 0);
  // Both streams are open before the third asks.
  ASSERT_TRUE(WaitFor(
      [&] { return d.Get("/metrics").body.find("epoch_api_streams 2\n") != std::string::npos; },
      5000ms));
  std::string third = "curl -s -m 1 -o /dev/null -w '%{http_code}' -H 'Authorization: Bearer " +
                      AdminToken() + "' '" + d.url() + "/v1/events?follow=true'";
  RunCommand(third, &out);
  EXPECT_EQ(out, "429");
  EXPECT_EQ(d.Get("/healthz").status, 200);
  EXPECT_EQ(d.Head(), head);
}

// Console sessions (issue 18): a token exchanged for a session cookie; the cookie's
// flags; what a session may do is its token's (role and tenant); writes need the CSRF
// token; signing out and revoking the token each end the session.
TEST_F(SecurityE2ETest, ASessionCookieActsAsItsTokenWithCsrfAndEndsWithItOrOnSignOut) {
  std::string data = dir_.path() + "/data";
  Epochd d(data);
  d.Start();
  std::string op = AddToken(data, "olga", "ml", "operator");
  std::string vi = AddToken(data, "victor", "ml", "viewer");
  auto call = [&](const std::string& method, const std::string& path, const std::string& body,
                  std::vector<std::pair<std::string, std::string>> headers = {}) {
    return HttpCall(d.url(), method, path, body, "", headers);
  };
  // Signing in: a bad token, a malformed body, then the operator's token.
  EXPECT_EQ(call("POST", "/v1/session", R"({"token": "epoch_00000000_x"})").status, 401);
  HttpResult wrong = call("POST", "/v1/session", R"({"token": 7})");
  EXPECT_EQ(wrong.status, 400);
  EXPECT_NE(wrong.body.find("token: must be a string"), std::string::npos) << wrong.body;
  EXPECT_EQ(call("POST", "/v1/session", "").status, 400);
  HttpResult in = call("POST", "/v1/session", Json{{"token", op}}.dump());
  ASSERT_EQ(in.status, 201) << in.body;
  EXPECT_EQ(in.json()["user"], "olga");
  EXPECT_EQ(in.json()["tenant"], "ml");
  EXPECT_EQ(in.json()["role"], "operator");
  const std::string csrf = in.json()["csrf_token"];
  EXPECT_EQ(csrf.size(), 64u);
  EXPECT_EQ(in.body.find(op), std::string::npos) << "the token goes nowhere";
  // The cookie: HttpOnly, Secure, SameSite=Strict, the whole site, 12 h.
  const std::string& sc = in.set_cookie;
  ASSERT_EQ(sc.rfind("epoch_session=es_", 0), 0u) << sc;
  for (const char* flag :
       {"; HttpOnly", "; Secure", "; SameSite=Strict", "; Path=/", "; Max-Age=43200"}) {
    EXPECT_NE(sc.find(flag), std::string::npos) << flag << " in " << sc;
  }
  const std::string cookie = sc.substr(0, sc.find(';'));
  const std::string secret = cookie.substr(cookie.find('=') + 1);
  EXPECT_EQ(ReadAll(data + "/sessions.json").find(secret), std::string::npos)
      << "only the secret's hash is kept";
  std::vector<std::pair<std::string, std::string>> with_cookie = {{"Cookie", "a=b; " + cookie}};
  // Reads with the cookie alone; GET /v1/session says who and gives the CSRF token.
  EXPECT_EQ(call("GET", "/v1/runs", "", with_cookie).status, 200);
  HttpResult me = call("GET", "/v1/session", "", with_cookie);
  ASSERT_EQ(me.status, 200) << me.body;
  EXPECT_EQ(me.json()["user"], "olga");
  EXPECT_EQ(me.json()["csrf_token"], csrf);
  // A write without the CSRF token (what another site could make a browser send) is
  // refused and does nothing; with it, it is the operator's.
  const std::string wf = R"({"name": "w", "steps": [{"name": "a", "command": ["true"]}]})";
  HttpResult forged = call("POST", "/v1/workflows", wf, with_cookie);
  EXPECT_EQ(forged.status, 403) << forged.body;
  EXPECT_NE(forged.body.find("X-CSRF-Token"), std::string::npos) << forged.body;
  auto with_csrf = with_cookie;
  with_csrf.push_back({"X-CSRF-Token", std::string(64, '0')});
  EXPECT_EQ(call("POST", "/v1/workflows", wf, with_csrf).status, 403) << "a wrong CSRF token";
  EXPECT_EQ(d.Get("/v1/workflows/w").status, 404) << "nothing was registered";
  with_csrf.back().second = csrf;
  EXPECT_EQ(call("POST", "/v1/workflows", wf, with_csrf).status, 201);
  HttpResult run = call("POST", "/v1/runs", R"({"workflow": "w"})", with_csrf);
  ASSERT_EQ(run.status, 201) << run.body;
  EXPECT_EQ(d.WaitForRun(run.json()["id"])["submitter"], "olga@ml");
  // A viewer's session may read, not write, CSRF token or not.
  HttpResult vin = call("POST", "/v1/session", Json{{"token", vi}}.dump());
  ASSERT_EQ(vin.status, 201);
  std::vector<std::pair<std::string, std::string>> viewer = {
      {"Cookie", vin.set_cookie.substr(0, vin.set_cookie.find(';'))},
      {"X-CSRF-Token", vin.json()["csrf_token"]}};
  EXPECT_EQ(call("GET", "/v1/runs/" + run.json()["id"].get<std::string>(), "", viewer).status, 200);
  HttpResult cancel =
      call("POST", "/v1/runs/" + run.json()["id"].get<std::string>() + "/cancel", "{}", viewer);
  EXPECT_EQ(cancel.status, 403) << cancel.body;
  // Revoking the viewer's token ends its session at once.
  std::string out;
  ASSERT_EQ(
      RunCommand(EpochctlPath() + " admin token revoke --data-dir " + data + " " + vi.substr(6, 8),
                 &out),
      0)
      << out;
  HttpResult revoked = call("GET", "/v1/runs", "", viewer);
  EXPECT_EQ(revoked.status, 401);
  EXPECT_NE(revoked.body.find("revoked"), std::string::npos) << revoked.body;
  // Signing out (CSRF token needed: it is a write) clears the cookie; it no longer works.
  EXPECT_EQ(call("DELETE", "/v1/session", "", with_cookie).status, 403);
  HttpResult outr = call("DELETE", "/v1/session", "", with_csrf);
  EXPECT_EQ(outr.status, 204) << outr.body;
  EXPECT_NE(outr.set_cookie.find("epoch_session=; "), std::string::npos) << outr.set_cookie;
  EXPECT_NE(outr.set_cookie.find("Max-Age=0"), std::string::npos) << outr.set_cookie;
  HttpResult after = call("GET", "/v1/runs", "", with_cookie);
  EXPECT_EQ(after.status, 401);
  EXPECT_NE(after.body.find("sign in again"), std::string::npos) << after.body;
  // A token still works alongside (and wins over) any cookie.
  EXPECT_EQ(HttpCall(d.url(), "GET", "/v1/runs", "", op, with_cookie).status, 200);
}

}  // namespace
}  // namespace epoch::testing
