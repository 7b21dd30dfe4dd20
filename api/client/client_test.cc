// Tests for epoch_client and epochctl: SSE parsing, error mapping, parameter parsing,
// table rendering, and, over real sockets on 127.0.0.1 (port 0), redirects, failover,
// streams and the epochctl binary itself against a mock server.
#include "api/client/client.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>

#include "api/client/output.h"
#include "api/http_server.h"

namespace epoch::client {
namespace {

using ::testing::HasSubstr;

// ---- SSE parser ---------------------------------------------------------------------

std::vector<SseEvent> ParseAll(const std::vector<std::string>& chunks) {
  std::vector<SseEvent> out;
  SseParser p([&](const SseEvent& e) {
    out.push_back(e);
    return true;
  });
  for (const auto& c : chunks) EXPECT_TRUE(p.Feed(c));
  return out;
}

TEST(SseParser, MultiLineDataIdEventAndComments) {
  std::string stream =
      ": keep-alive comment\n"
      "id: 7\n"
      "event: log\n"
      "data: first line\n"
      "data:second line\n"
      "\n"
      "data: {\"position\":8}\r\n"
      "\r\n"
      "id: 9\r"
      "retry: 100\r"
      "event\r"  // a field without a colon: the value is empty
      "data\r"
      "\r"
      "event: only-an-event\n"
      "\n"
      "data: unterminated at end of stream\n";
  // Feed it whole and byte by byte: chunk boundaries must not matter (even inside \r\n).
  std::vector<std::string> bytes;
  for (char c : stream) bytes.emplace_back(1, c);
  for (const auto& events : {ParseAll({stream}), ParseAll(bytes)}) {
    ASSERT_EQ(events.size(), 3u);
    EXPECT_EQ(events[0].id, "7");
    EXPECT_EQ(events[0].event, "log");
    EXPECT_EQ(events[0].data, "first line\nsecond line");
    EXPECT_EQ(events[1].id, "7");  // ids persist until changed
    EXPECT_EQ(events[1].event, "");
    EXPECT_EQ(events[1].data, "{\"position\":8}");
    EXPECT_EQ(events[2].id, "9");
    EXPECT_EQ(events[2].data, "");
  }
}

TEST(SseParser, CallbackCanStop) {
  int seen = 0;
  SseParser p([&](const SseEvent&) { return ++seen < 2; });
  EXPECT_FALSE(p.Feed("data: a\n\ndata: b\n\ndata: c\n\n"));
  EXPECT_EQ(seen, 2);
}

// ---- pure helpers ---------------------------------------------------------------------

TEST(StatusFromHttpError, UsesServerMessageAndDetails) {
  Status st = StatusFromHttpError(
      422, R"({"error":{"code":"invalid_argument","message":"invalid workflow definition",
               "details":["steps[1].after: unknown step 'trian'",
                          {"path":"steps[2].timeout","message":"bad duration"}]}})");
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(st.message(), "invalid workflow definition");
  ASSERT_EQ(st.details().size(), 2u);
  EXPECT_EQ(st.details()[0], "steps[1].after: unknown step 'trian'");
  EXPECT_EQ(st.details()[1], "steps[2].timeout: bad duration");
}

TEST(StatusFromHttpError, CodeFromBodyOrHttpStatus) {
  EXPECT_EQ(StatusFromHttpError(400, R"({"error":{"code":"NotFound","message":"x"}})").code(),
            StatusCode::kNotFound);
  EXPECT_EQ(StatusFromHttpError(409, R"({"error":{"code":"weird","message":"x"}})").code(),
            StatusCode::kConflict);
  Status plain = StatusFromHttpError(502, "<html>bad gateway</html>");
  EXPECT_EQ(plain.code(), StatusCode::kUnavailable);
  EXPECT_EQ(plain.message(), "HTTP 502: <html>bad gateway</html>");
  EXPECT_EQ(StatusFromHttpError(500, "").message(), "HTTP 500");
}

TEST(Params, JsonWhenValidElseString) {
  EXPECT_EQ(ParseParamValue("10"), Json(10));
  EXPECT_EQ(ParseParamValue("0.05"), Json(0.05));
  EXPECT_EQ(ParseParamValue("true"), Json(true));
  EXPECT_EQ(ParseParamValue("\"10\""), Json("10"));
  EXPECT_EQ(ParseParamValue("[1,2]"), Json::array({1, 2}));
  EXPECT_EQ(ParseParamValue("adam"), Json("adam"));
  EXPECT_EQ(ParseParamValue("1e"), Json("1e"));
  EXPECT_EQ(ParseParamValue("10x"), Json("10x"));
  EXPECT_EQ(ParseParamValue(""), Json(""));

  auto params = ParseKeyValues({"epochs=10", "lr=0.05", "opt=adam", "tag=a=b"}, true);
  ASSERT_TRUE(params.ok()) << params.status().ToString();
  EXPECT_EQ(*params, Json({{"epochs", 10}, {"lr", 0.05}, {"opt", "adam"}, {"tag", "a=b"}}));
  auto labels = ParseKeyValues({"team=vision", "n=3"}, false);
  ASSERT_TRUE(labels.ok());
  EXPECT_EQ(*labels, Json({{"team", "vision"}, {"n", "3"}}));

  EXPECT_EQ(ParseKeyValues({"novalue"}, true).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseKeyValues({"=1"}, true).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseKeyValues({"a=1", "a=2"}, true).status().code(), StatusCode::kInvalidArgument);
}

TEST(Servers, SplitAndValidate) {
  auto s = SplitServers(" http://a:1/, b:2 ,https://c:3");
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ(*s, (std::vector<std::string>{"http://a:1", "http://b:2", "https://c:3"}));
  EXPECT_FALSE(SplitServers("").ok());
  EXPECT_FALSE(SplitServers("ftp://x:1").ok());
  EXPECT_FALSE(SplitServers("http://x:1/v1").ok());
}

TEST(Query, EncodesValuesAndSkipsEmpty) {
  EXPECT_EQ(WithQuery("/v1/runs", {{"state", "running"}, {"workflow", ""}, {"label", "a=b c"}}),
            "/v1/runs?state=running&label=a%3Db%20c");
  EventQuery q;
  q.after = 5;
  q.type = "RunSubmitted";
  EXPECT_EQ(EventsPath(q), "/v1/events?after=5&type=RunSubmitted");
  q.run = "r-1";
  EXPECT_EQ(EventsPath(q), "/v1/runs/r-1/events?after=5&type=RunSubmitted");
}

// ---- rendering --------------------------------------------------------------------------

Json SampleRun() {
  return Json::parse(R"({
    "id": "r-1", "workflow": "fashion-mnist", "version": 3, "state": "running",
    "params": {"epochs": 10}, "labels": {"team": "vision"},
    "submitted_at": "2026-11-28T13:00:00.000000Z", "started_at": "2026-11-28T13:00:01Z",
    "steps": [
      {"name": "prep", "kind": "data_prep", "state": "succeeded", "metrics": {},
       "attempts": [{"attempt": 1, "state": "succeeded", "exit_code": 0,
                     "started_at": "2026-11-28T13:00:01Z",
                     "finished_at": "2026-11-28T13:00:13.500Z",
                     "resources": {"cpu_millis": 500, "memory_bytes": 268435456,
                                   "limits": {"cpu_millis": 500, "memory_bytes": null}},
                     "usage": {"wall_s": 12.5, "cpu_s": 6.1, "peak_memory_bytes": 44040192}}]},
      {"name": "train", "kind": "train", "state": "running",
       "metrics": {"accuracy": 0.91, "loss": 0.25},
       "attempts": [{"attempt": 1, "state": "failed", "exit_code": 137, "reason": "oom_killed",
                     "started_at": "2026-11-28T13:00:14Z", "finished_at": "2026-11-28T13:01:00Z"},
                    {"attempt": 2, "state": "running", "started_at": "2026-11-28T13:01:30Z",
                     "resources": {"cpu_millis": 1000, "memory_bytes": 2147483648,
                                   "limits": {"cpu_millis": null, "memory_bytes": 2147483648}}}]},
      {"name": "infer", "state": "pending", "attempts": []}
    ]})");
}

TimePoint At(const char* rfc3339) { return *ParseTime(rfc3339); }

TEST(Output, RunTable) {
  std::string text = RenderRun(SampleRun(), At("2026-11-28T13:03:01Z"));
  EXPECT_EQ(text,
            "Run:       r-1\n"
            "Workflow:  fashion-mnist@3\n"
            "State:     running\n"
            "Submitted: 2026-11-28T13:00:00.000000Z\n"
            "Started:   2026-11-28T13:00:01Z\n"
            "Finished:  -\n"
            "Duration:  3m\n"
            "Params:    {\"epochs\":10}\n"
            "Labels:    team=vision\n"
            "\n"
            "STEP   KIND       STATE      ATTEMPTS  EXIT/REASON  DURATION  CPU REQ/USED  "
            "MEM REQ/PEAK  METRICS\n"
            "prep   data_prep  succeeded  1         exit 0       12.5s     500m!/0.49    "
            "256Mi/42Mi    -\n"
            "train  train      running    2         -            1m31s     1000m         "
            "2Gi!          {\"accuracy\":0.91,\"loss\":0.25}\n"
            "infer  -          pending    0         -            -         -             "
            "-             -\n");
}

TEST(Output, RunTableSaysWhatRetentionDeleted) {
  Json run = SampleRun();
  run["steps"][0]["attempts"][0]["outputs_expired"] = {{"at", "2026-12-01T00:00:00Z"},
                                                       {"bytes", 2048}};
  run["steps"][0]["attempts"][0]["log_expired"] = {{"at", "2026-12-02T00:00:00Z"}, {"bytes", 10}};
  run["steps"][1]["checkpoints_expired"] = {{"at", "2026-12-01T00:00:00Z"}, {"bytes", 1 << 20}};
  std::string text = RenderRun(run, At("2026-11-28T13:03:01Z"));
  EXPECT_THAT(text, HasSubstr("\nExpired (retention):\n"
                              "  prep/1 outputs: " +
                              HumanBytes(2048) +
                              " deleted 2026-12-01T00:00:00Z\n"
                              "  prep/1 log: " +
                              HumanBytes(10) +
                              " deleted 2026-12-02T00:00:00Z\n"
                              "  train checkpoints: " +
                              HumanBytes(1 << 20) + " deleted 2026-12-01T00:00:00Z\n"))
      << text;
  EXPECT_THAT(RenderRun(SampleRun(), At("2026-11-28T13:03:01Z")),
              ::testing::Not(HasSubstr("Expired")));
}

TEST(Output, FailedAttemptOutcomeAndRunList) {
  Json run = SampleRun();
  run["steps"][1]["attempts"].erase(1);
  std::string text = RenderRun(run, At("2026-11-28T13:03:01Z"));
  EXPECT_THAT(text, HasSubstr("exit 137 oom_killed  46.0s"));
  std::string list = RenderRunList(Json{{"items", {run}}}, At("2026-11-28T13:03:01Z"));
  EXPECT_EQ(list,
            "ID   WORKFLOW         STATE    SUBMITTED            DURATION  LABELS\n"
            "r-1  fashion-mnist@3  running  2026-11-28 13:00:00  3m        team=vision\n");
}

TEST(Output, ContainersEventsAndChanges) {
  Json containers = Json::parse(R"({"items":[{"id":"c-1","state":"ready","backend":"local",
      "handle":"pid:42","cpu_millis":1000,"memory_bytes":2248146944,
      "gpus":[{"index":0,"simulated":true},{"index":1,"simulated":true}],
      "attempts":["r-1/train/2"]}]})");
  EXPECT_EQ(RenderContainers(containers),
            "ID   STATE  BACKEND  HANDLE  CPU    MEMORY  GPUS             ATTEMPTS\n"
            "c-1  ready  local    pid:42  1000m  2144Mi  2 (2 simulated)  r-1/train/2\n");
  Json events = Json::parse(R"({"items":[{"position":1,"time":"2026-11-28T13:00:00.000001Z",
      "stream":"run-r-1","type":"RunSubmitted","data":{"workflow":"w"}}]})");
  EXPECT_EQ(HumanBytes(512), "512");
  EXPECT_EQ(HumanBytes(128 << 20), "128Mi");
  EXPECT_EQ(HumanBytes((int64_t{1} << 30) + 1), "1.0Gi");
  EXPECT_EQ(RenderEvents(events),
            "POSITION  TIME                         STREAM   TYPE          DATA\n"
            "1         2026-11-28T13:00:00.000001Z  run-r-1  RunSubmitted  {\"workflow\":\"w\"}\n");

  Json before = SampleRun();
  Json after = SampleRun();
  after["steps"][1]["state"] = "succeeded";
  after["steps"][1]["attempts"][1]["exit_code"] = 0;
  after["steps"][1]["attempts"][1]["finished_at"] = "2026-11-28T13:02:00Z";
  after["steps"][2]["state"] = "skipped";
  after["state"] = "succeeded";
  after["finished_at"] = "2026-11-28T13:02:01Z";
  EXPECT_EQ(RenderRunChanges(before, after, At("2026-11-28T13:02:02Z")),
            "[13:02:02] step train succeeded (attempt 2, exit 0, 30.0s)\n"
            "[13:02:02] step infer skipped\n"
            "[13:02:02] run r-1 succeeded in 2m\n");
}

TEST(OutputTest, RunChangesShowSweepsAndCacheHits) {
  Json before = Json::parse(R"({"id":"r-2","state":"running","steps":[
      {"name":"prep","state":"pending","attempts":[]},
      {"name":"train","state":"running","attempts":[{"attempt":1,"trial":0,"state":"running"}]}]})");
  Json after = Json::parse(R"({"id":"r-2","state":"running","steps":[
      {"name":"prep","state":"succeeded","attempts":[{"attempt":1,"state":"succeeded",
       "cached_from":"r-1/prep/1"}]},
      {"name":"train","state":"succeeded","best":{"trial":1,"attempt":2,"metric":"accuracy",
       "value":0.91,"params":{"hidden":"256,128","lr":0.001}},
       "attempts":[{"attempt":1,"trial":0,"state":"succeeded"},
                   {"attempt":2,"trial":1,"state":"succeeded"}]}]})");
  EXPECT_EQ(RenderRunChanges(before, after, At("2026-11-28T13:02:02Z")),
            "[13:02:02] step prep succeeded (attempt 1, cached: reused r-1/prep/1)\n"
            "[13:02:02] step train succeeded (2 trials, best trial 1 hidden=256,128 lr=0.001: "
            "accuracy=0.91)\n");
}

// A hyperband sweep of gang trials, still running: the trials table gets a BRACKET and a
// WORKERS column; with no best yet, a trial's objective is its value at its last rung.
TEST(Output, RunningHyperbandSweepOfGangTrials) {
  Json run = Json::parse(R"({"id": "r-hb", "workflow": "hb", "version": 2, "state": "running",
    "started_at": "2026-12-07T10:00:00Z", "steps": [
    {"name": "train", "kind": "train", "state": "running", "attempts": [
      {"attempt": 1, "trial": 0, "state": "running", "params": {"lr": 0.1, "opt": "adam"},
       "started_at": "2026-12-07T10:00:00Z", "bracket": 0, "rung": 1,
       "rungs": [{"rung": 0, "step": 100.0, "value": 0.52, "decision": "promoted"},
                 {"rung": 1, "step": 300.0, "value": 0.61, "decision": "promoted"}],
       "world_size": 4, "workers": [{"rank": 0, "state": "running"}, {"rank": 1, "state": "running"},
                                    {"rank": 2, "state": "running"}, {"rank": 3, "state": "queued"}]},
      {"attempt": 2, "trial": 1, "state": "running", "params": {"lr": 0.5, "opt": "sgd"},
       "started_at": "2026-12-07T10:00:30Z", "bracket": 1, "rung": 0,
       "rungs": [{"rung": 0, "step": 300.0, "value": 0.125, "decision": "stopped"}],
       "stopped": "rung 0 (step 300): loss 0.125 is below ...",
       "world_size": 2, "workers": [{"rank": 0, "state": "running"}, {"rank": 1, "state": "succeeded"}]},
      {"attempt": 3, "trial": 2, "state": "failed", "exit_code": 1, "params": {"lr": 1, "opt": "sgd"},
       "started_at": "2026-12-07T10:00:40Z", "finished_at": "2026-12-07T10:00:45Z",
       "bracket": 1, "rung": null, "rungs": []},
      {"attempt": 4, "trial": 3, "state": "queued", "params": {"lr": 0.01, "opt": "adam"},
       "bracket": 0, "rung": null, "rungs": []}]}]})");
  std::string text = RenderRun(run, At("2026-12-07T10:01:00Z"));
  EXPECT_THAT(text, HasSubstr("\ntrain  train  running  4         -            1m        -"));
  EXPECT_THAT(
      text,
      HasSubstr("\nTrials of train:\n"
                "TRIAL  ATTEMPT  STATE               PARAMS            BRACKET  RUNG               "
                "OBJECTIVE  DURATION  WORKERS\n"
                "0      1        running             lr=0.1 opt=adam   0        rung 1 (step 300)  "
                "0.61       1m        4: 3 running, 1 queued\n"
                "1      2        stopping at rung 0  lr=0.5 opt=sgd    1        rung 0 (step 300)  "
                "0.125      30.0s     2: 1 running, 1 succeeded\n"
                "2      3        failed (exit 1)     lr=1 opt=sgd      1        -                  "
                "-          5.0s      -\n"
                "3      4        queued              lr=0.01 opt=adam  0        -                  "
                "-          -         -\n"))
      << text;
}

Json SampleModelVersion() {
  return Json::parse(R"({
    "name": "fmnist-mlp", "version": 2,
    "digest": "3f2a9c0d1e4b5a6978c1d2e3f4a5b6c7d8e9f00112233445566778899aabbccd",
    "run": "r-2", "step": "train", "attempt": 1,
    "outputs": [{"name": "model.bin", "size": 940616, "sha256": "ab12"}],
    "registered_at": "2026-11-28T13:05:00.123456Z",
    "workflow": "fashion-mnist", "workflow_version": 3,
    "params": {"epochs": 10, "lr": 0.001},
    "datasets": [{"name": "fashion-mnist", "version": 1, "step": "prep"}],
    "metrics": {"accuracy": 0.89410001, "samples": 10000, "passed": true, "layout": "rows",
                "per_class_accuracy": {"Bag": 0.97}, "confusion_matrix": [[1, 0], [0, 1]]},
    "validated_by": [{"run": "r-2", "step": "validate"}]})");
}

TEST(Output, ArtifactListAndVersions) {
  Json list = Json::parse(R"({"items": [
      {"name": "fashion-mnist", "version": 1, "versions": 1,
       "digest": "0123456789abcdef0123", "registered_at": "2026-11-28T13:00:01.5Z"},
      {"name": "fmnist-mlp", "version": 2, "versions": 2}], "next_cursor": null})");
  EXPECT_EQ(RenderArtifactList(list),
            "NAME           LATEST  VERSIONS  DIGEST        REGISTERED\n"
            "fashion-mnist  1       1         0123456789ab  2026-11-28 13:00:01\n"
            "fmnist-mlp     2       2         -             -\n");

  Json v1 = SampleModelVersion();
  v1["version"] = 1;
  v1["run"] = "r-1";
  v1["metrics"] = Json::object();
  v1["validated_by"] = Json::array();
  v1["params"] = Json::object();
  Json model = {{"name", "fmnist-mlp"}, {"versions", {v1, SampleModelVersion()}}};
  EXPECT_EQ(
      RenderModelVersions(model),
      "Model:    fmnist-mlp\n"
      "Versions: 2\n"
      "\n"
      "VERSION  DIGEST        REGISTERED           RUN        WORKFLOW         DATASETS"
      "         METRICS                                    VALIDATED_BY  PARAMS\n"
      "1        3f2a9c0d1e4b  2026-11-28 13:05:00  r-1/train  fashion-mnist@3  fashion-mnist@1"
      "  -                                          -             -\n"
      "2        3f2a9c0d1e4b  2026-11-28 13:05:00  r-2/train  fashion-mnist@3  fashion-mnist@1"
      "  accuracy=0.8941 passed=true samples=10000  r-2/validate  "
      "{\"epochs\":10,\"lr\":0.001}\n");

  Json dataset = {{"name", "fashion-mnist"},
                  {"versions",
                   {{{"name", "fashion-mnist"},
                     {"version", 1},
                     {"digest", "0123456789abcdef0123"},
                     {"run", "r-1"},
                     {"step", "prep"},
                     {"attempt", 2},
                     {"outputs", {{{"name", "manifest.json"}, {"size", 3072}, {"sha256", "cd"}}}},
                     {"registered_at", "2026-11-28T13:00:01Z"}}}}};
  EXPECT_EQ(RenderDatasetVersions(dataset),
            "Data set: fashion-mnist\n"
            "Versions: 1\n"
            "\n"
            "VERSION  DIGEST        REGISTERED           RUN       OUTPUTS\n"
            "1        0123456789ab  2026-11-28 13:00:01  r-1/prep  manifest.json (3Ki)\n");
  Json more = dataset;
  Json& outputs = more["versions"][0]["outputs"];
  outputs.push_back({{"name", "a.shard"}, {"size", 1024}});
  EXPECT_THAT(RenderDatasetVersions(more), HasSubstr("  manifest.json (3Ki), a.shard (1Ki)\n"));
  outputs.push_back({{"name", "b.shard"}, {"size", 1024}});
  outputs.push_back({{"name", "c.shard"}, {"size", 1024}});
  EXPECT_THAT(RenderDatasetVersions(more), HasSubstr("  4 files (6Ki)\n"));
  EXPECT_EQ(RenderDatasetVersion(dataset["versions"][0]),
            "Data set:   fashion-mnist\n"
            "Version:    1\n"
            "Digest:     0123456789abcdef0123\n"
            "Registered: 2026-11-28T13:00:01Z\n"
            "Run:        r-1\n"
            "Step:       prep (attempt 2)\n"
            "\n"
            "OUTPUT         SIZE  SHA256\n"
            "manifest.json  3Ki   cd\n");
  // Missing fields render as "-", never throw.
  EXPECT_THAT(RenderModelVersions(Json::object()), HasSubstr("Versions: 0\n"));
  EXPECT_THAT(RenderArtifactList(Json::array()), HasSubstr("NAME"));
}

TEST(Output, ModelVersionLineage) {
  EXPECT_EQ(RenderModelVersion(SampleModelVersion()),
            "Model:        fmnist-mlp\n"
            "Version:      2\n"
            "Digest:       3f2a9c0d1e4b5a6978c1d2e3f4a5b6c7d8e9f00112233445566778899aabbccd\n"
            "Registered:   2026-11-28T13:05:00.123456Z\n"
            "Run:          r-2\n"
            "Step:         train (attempt 1)\n"
            "Workflow:     fashion-mnist@3\n"
            "Params:       {\"epochs\":10,\"lr\":0.001}\n"
            "Data sets:    fashion-mnist@1\n"
            "Validated by: r-2/validate\n"
            "\n"
            "METRIC              VALUE\n"
            "accuracy            0.89410001\n"
            "confusion_matrix    [[1,0],[0,1]]\n"
            "layout              rows\n"
            "passed              true\n"
            "per_class_accuracy  {\"Bag\":0.97}\n"
            "samples             10000\n"
            "\n"
            "OUTPUT     SIZE     SHA256\n"
            "model.bin  918.6Ki  ab12\n");
}

// ---- live HTTP ------------------------------------------------------------------------

// An httplib::Server on 127.0.0.1, port 0, serving on its own thread.
class MockServer {
 public:
  MockServer() {
    port_ = server.bind_to_any_port("127.0.0.1");
    thread_ = std::thread([this] { server.listen_after_bind(); });
    // httplib's stop() does nothing before the listen loop runs, and the loop would
    // then never end: a server stopped that early hung the test (seen under load).
    while (!server.is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ~MockServer() {
    server.stop();
    thread_.join();
  }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }

  httplib::Server server;

 private:
  int port_ = 0;
  std::thread thread_;
};

void ReplyError(httplib::Response& res, int status, const std::string& code,
                const std::string& message, const Json& details = Json::array()) {
  res.status = status;
  res.set_content(
      Json{{"error", {{"code", code}, {"message", message}, {"details", details}}}}.dump(),
      "application/json");
}

// A port nothing listens on: bound, never listened, then closed.
std::string RefusingUrl() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  EXPECT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  socklen_t len = sizeof addr;
  EXPECT_EQ(::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  ::close(fd);
  return "http://127.0.0.1:" + std::to_string(ntohs(addr.sin_port));
}

std::unique_ptr<ApiClient> MakeClient(std::vector<std::string> servers) {
  ClientOptions options;
  options.servers = std::move(servers);
  options.connect_timeout = std::chrono::seconds(2);
  options.read_timeout = std::chrono::seconds(10);
  options.stream_idle_timeout = std::chrono::seconds(10);
  auto c = ApiClient::Create(std::move(options));
  EXPECT_TRUE(c.ok()) << c.status().ToString();
  return std::move(c).value();
}

TEST(Output, MetricsSparklinesAndTotals) {
  EXPECT_EQ(Sparkline({}, 10), "");
  EXPECT_EQ(Sparkline({1, 2, 3, 4, 5, 6, 7, 8}, 8), "▁▂▃▄▅▆▇█");
  EXPECT_EQ(Sparkline({5, 5, 5}, 8), "▄▄▄");
  // Wider than the cells: means of equal shares (1,1 | 9,9).
  EXPECT_EQ(Sparkline({1, 1, 9, 9}, 2), "▁█");
  Json m = Json::parse(R"({"series": [{"name": "loss", "attempt": 2, "rank": 0,
      "points": [[0, 2.0], [10, 1.0], [20, 0.5]]}],
      "attempts": [{"attempt": 2, "rank": 0, "skipped": 3, "dropped": 0, "truncated": false},
                   {"attempt": 1, "rank": 0, "skipped": 0, "dropped": 0, "truncated": false}]})");
  std::string text = RenderMetrics(m);
  EXPECT_NE(text.find("loss  2        0     3       0.5   0.5  2    █▃▁"), std::string::npos)
      << text;
  EXPECT_NE(text.find("attempt 2 rank 0: 3 values skipped, 0 points dropped\n"), std::string::npos)
      << text;
  EXPECT_EQ(text.find("attempt 1 rank"), std::string::npos) << text;
  EXPECT_EQ(RenderMetrics(Json::object()), "no live metrics yet\n");
}

TEST(ApiClient, MapsErrorBodyToStatus) {
  MockServer m;
  m.server.Get("/v1/runs/r-404", [](const httplib::Request&, httplib::Response& res) {
    ReplyError(res, 404, "not_found", "run r-404 not found", {"known runs: r-1"});
  });
  m.server.Post("/v1/workflows", [](const httplib::Request&, httplib::Response& res) {
    ReplyError(res, 422, "invalid_argument", "invalid workflow definition",
               {"steps[0].name: duplicate step name 'a'", "steps: cycle a -> b -> a"});
  });
  auto c = MakeClient({m.url()});
  auto run = c->GetRun("r-404");
  ASSERT_FALSE(run.ok());
  EXPECT_EQ(run.status().code(), StatusCode::kNotFound);
  EXPECT_EQ(run.status().message(), "run r-404 not found");
  EXPECT_EQ(run.status().details(), std::vector<std::string>{"known runs: r-1"});

  auto reg = c->RegisterWorkflow(Json{{"name", "w"}});
  ASSERT_FALSE(reg.ok());
  EXPECT_EQ(reg.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(reg.status().details().size(), 2u);
  EXPECT_EQ(reg.status().details()[1], "steps: cycle a -> b -> a");
}

TEST(ApiClient, Follows307FromStandbyToLeader) {
  MockServer leader, standby;
  std::atomic<int> standby_hits{0}, leader_hits{0};
  std::string leader_url = leader.url();
  standby.server.Post(".*", [&](const httplib::Request& req, httplib::Response& res) {
    ++standby_hits;
    res.status = 307;
    res.set_header("Location", leader_url + req.path);
  });
  std::mutex mu;
  Json received;
  std::string idempotency_key;
  leader.server.Post("/v1/runs", [&](const httplib::Request& req, httplib::Response& res) {
    ++leader_hits;
    {
      std::lock_guard<std::mutex> lock(mu);
      received = Json::parse(req.body);
      idempotency_key = req.get_header_value("Idempotency-Key");
    }
    res.status = 201;
    res.set_content(R"({"id":"r-1","state":"queued"})", "application/json");
  });
  // The leader is one of the configured servers (a redirect goes nowhere else).
  auto c = MakeClient({standby.url(), leader.url()});
  SubmitRunRequest r;
  r.workflow = "w";
  r.params = {{"epochs", 3}};
  r.idempotency_key = "k-1";
  auto res = c->SubmitRun(r);
  ASSERT_TRUE(res.ok()) << res.status().ToString();
  EXPECT_EQ(res->status, 201);
  EXPECT_EQ(res->body.value("id", ""), "r-1");
  EXPECT_EQ(c->current_server(), leader_url);
  {
    std::lock_guard<std::mutex> lock(mu);
    EXPECT_EQ(received,
              Json({{"workflow", "w"}, {"params", {{"epochs", 3}}}, {"labels", Json::object()}}));
    EXPECT_EQ(idempotency_key, "k-1");
  }
  // The leader is remembered: the next write goes straight to it.
  ASSERT_TRUE(c->SubmitRun(r).ok());
  EXPECT_EQ(standby_hits.load(), 1);
  EXPECT_EQ(leader_hits.load(), 2);
}

TEST(ApiClient, RedirectLoopIsBounded) {
  MockServer m;
  std::string self = m.url();
  m.server.Get(".*", [&](const httplib::Request& req, httplib::Response& res) {
    res.status = 307;
    res.set_header("Location", self + req.path);
  });
  auto c = MakeClient({m.url()});
  auto res = c->GetCluster();
  ASSERT_FALSE(res.ok());
  EXPECT_EQ(res.status().code(), StatusCode::kUnavailable);
  EXPECT_THAT(res.status().message(), HasSubstr("redirects"));
}

TEST(ApiClient, FailsOverWhenFirstServerRefuses) {
  MockServer m;
  m.server.Get("/v1/cluster", [](const httplib::Request&, httplib::Response& res) {
    res.set_content(R"({"role":"leader","epoch":4})", "application/json");
  });
  std::string dead = RefusingUrl();
  auto c = MakeClient({dead, m.url()});
  auto res = c->GetCluster();
  ASSERT_TRUE(res.ok()) << res.status().ToString();
  EXPECT_EQ(res->value("epoch", 0), 4);
  EXPECT_EQ(c->current_server(), m.url());

  // Nobody listening anywhere: kUnavailable naming the server.
  auto none = MakeClient({dead});
  auto bad = none->GetCluster();
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kUnavailable);
  EXPECT_THAT(bad.status().message(), HasSubstr(dead));
}

TEST(ApiClient, TriesNextServerOn503) {
  MockServer standby, leader;
  std::atomic<int> standby_hits{0};
  standby.server.Post(".*", [&](const httplib::Request&, httplib::Response& res) {
    ++standby_hits;
    ReplyError(res, 503, "unavailable", "not the leader; leader unknown");
  });
  leader.server.Post("/v1/runs/r-1/cancel", [](const httplib::Request&, httplib::Response& res) {
    res.status = 202;
    res.set_content("{}", "application/json");
  });
  auto c = MakeClient({standby.url(), leader.url()});
  auto res = c->CancelRun("r-1");
  ASSERT_TRUE(res.ok()) << res.status().ToString();
  EXPECT_EQ(res->status, 202);
  // The server that answered is tried first next time.
  ASSERT_TRUE(c->CancelRun("r-1").ok());
  EXPECT_EQ(standby_hits.load(), 1);

  auto only_standby = MakeClient({standby.url()});
  auto bad = only_standby->CancelRun("r-1");
  EXPECT_EQ(bad.status().code(), StatusCode::kUnavailable);
  EXPECT_EQ(bad.status().message(), "not the leader; leader unknown");
}

// Serves `body` in pieces of `piece` bytes as a chunked stream of `content_type`.
void ServeChunked(httplib::Response& res, std::string body, size_t piece,
                  const std::string& content_type) {
  res.set_chunked_content_provider(
      content_type, [body = std::move(body), piece](size_t offset, httplib::DataSink& sink) {
        if (offset >= body.size()) {
          sink.done();
          return true;
        }
        std::string part = body.substr(offset, piece);
        return sink.write(part.data(), part.size());
      });
}

TEST(ApiClient, FollowsEventStream) {
  MockServer m;
  std::string seen_query;
  m.server.Get("/v1/events", [&](const httplib::Request& req, httplib::Response& res) {
    seen_query = req.get_param_value("follow") + "," + req.get_param_value("after");
    std::string sse = ": hello\n\n";
    for (int pos = 4; pos <= 6; ++pos) {
      Json e = {{"position", pos},
                {"stream", "run-r-1"},
                {"type", "JobStarted"},
                {"data", {{"pid", 100 + pos}}}};
      sse += "id: " + std::to_string(pos) + "\nevent: ping\ndata: {}\n\n";
      sse += "id: " + std::to_string(pos) + "\ndata: " + e.dump() + "\n\n";
    }
    ServeChunked(res, sse, 7, "text/event-stream");
  });
  auto c = MakeClient({m.url()});
  std::vector<uint64_t> positions;
  EventQuery q;
  q.after = 3;
  Status st = c->FollowEvents(q, [&](const Json& e) {
    positions.push_back(e.value("position", uint64_t{0}));
    EXPECT_EQ(e["data"].value("pid", 0), 100 + static_cast<int>(positions.back()));
    return true;
  });
  ASSERT_TRUE(st.ok()) << st.ToString();
  EXPECT_EQ(positions, (std::vector<uint64_t>{4, 5, 6}));
  EXPECT_EQ(seen_query, "true,3");

  // A handler that stops early ends the call with OK.
  positions.clear();
  st = c->FollowEvents(q, [&](const Json& e) {
    positions.push_back(e.value("position", uint64_t{0}));
    return false;
  });
  ASSERT_TRUE(st.ok()) << st.ToString();
  EXPECT_EQ(positions, (std::vector<uint64_t>{4}));
}

TEST(ApiClient, LogsAsChunkedTextOrSse) {
  MockServer m;
  m.server.Get("/v1/runs/r-1/steps/train/logs",
               [](const httplib::Request& req, httplib::Response& res) {
                 if (req.get_param_value("follow") == "true") {
                   ServeChunked(res, "data: epoch 1 loss 0.5\n\ndata: epoch 2\ndata: loss 0.3\n\n",
                                5, "text/event-stream");
                 } else {
                   ServeChunked(res, "attempt " + req.get_param_value("attempt") + "\nline 2\n", 4,
                                "text/plain");
                 }
               });
  auto c = MakeClient({m.url()});
  std::string text;
  auto collect = [&](std::string_view s) {
    text += s;
    return true;
  };
  ASSERT_TRUE(c->GetLogs("r-1", "train", LogQuery{.attempt = 2}, collect).ok());
  EXPECT_EQ(text, "attempt 2\nline 2\n");
  text.clear();
  ASSERT_TRUE(c->GetLogs("r-1", "train", LogQuery{.follow = true}, collect).ok());
  EXPECT_EQ(text, "epoch 1 loss 0.5\nepoch 2\nloss 0.3\n");
}

// A log larger than one answer: the plain GET answers its end (Epoch-Log-Offset > 0);
// the client then reads it all from the start, a range at a time. (Served by epochd's
// own transport: httplib's server re-slices ranges itself.)
TEST(ApiClient, ReadsACappedLogInRanges) {
  const std::string log = "line one\nline two\nline three\nline four\n";  // 39 bytes
  constexpr size_t kCap = 10;
  std::mutex mu;
  std::vector<std::string> ranges;
  api::HttpServer server({});
  server.Route("GET", "/v1/runs/r-1/steps/train/logs",
               [&](api::HttpRequest& req, api::HttpResponse& res) {
                 res.SetHeader("Epoch-Log-Size", std::to_string(log.size()));
                 std::string range = req.Header("Range");
                 if (range.empty()) {
                   res.SetHeader("Epoch-Log-Offset", std::to_string(log.size() - kCap));
                   res.SetContent(log.substr(log.size() - kCap), "text/plain");
                   return;
                 }
                 {
                   std::lock_guard<std::mutex> lock(mu);
                   ranges.push_back(range);
                 }
                 // At most kCap bytes an answer, as epochd's api.maxLogResponseBytes.
                 size_t first = std::stoul(range.substr(6));
                 size_t last = std::min(first + kCap, log.size()) - 1;
                 res.status = 206;
                 res.SetHeader("Content-Range", "bytes " + std::to_string(first) + "-" +
                                                    std::to_string(last) + "/" +
                                                    std::to_string(log.size()));
                 res.SetContent(log.substr(first, last - first + 1), "text/plain");
               });
  auto port = server.Bind("127.0.0.1", 0);
  ASSERT_TRUE(port.ok());
  server.Serve();
  auto c = MakeClient({"http://127.0.0.1:" + std::to_string(*port)});
  std::string text;
  Status st = c->GetLogs("r-1", "train", LogQuery{}, [&](std::string_view s) {
    text += s;
    return true;
  });
  ASSERT_TRUE(st.ok()) << st.ToString();
  EXPECT_EQ(text, log);
  std::lock_guard<std::mutex> lock(mu);
  EXPECT_EQ(ranges, (std::vector<std::string>{"bytes=0-38", "bytes=10-38", "bytes=20-38",
                                              "bytes=30-38"}));
}

// Redirects go only to the same origin or to another configured server of the same
// scheme: the bearer token must never reach anyone else.
TEST(ApiClient, RedirectsOnlyToTheSameOriginOrAConfiguredServer) {
  MockServer standby, leader, stranger;
  std::atomic<int> stranger_hits{0};
  std::mutex mu;
  std::string leader_auth;
  std::string stranger_url = stranger.url(), leader_url = leader.url(),
              self_url = standby.url();
  standby.server.Post("/v1/runs/r-1/cancel", [&](const httplib::Request&, httplib::Response& res) {
    res.status = 307;
    res.set_header("Location", stranger_url + "/v1/runs/r-1/cancel");
  });
  standby.server.Post("/v1/runs/r-2/cancel", [&](const httplib::Request&, httplib::Response& res) {
    res.status = 307;
    res.set_header("Location", leader_url + "/v1/runs/r-2/cancel");
  });
  // The same origin spelled in full (host in capitals, the path changed): followed.
  standby.server.Get("/v1/runs/r-3", [&](const httplib::Request&, httplib::Response& res) {
    res.status = 307;
    std::string upper = self_url;
    upper.replace(0, 4, "HTTP");
    res.set_header("Location", upper + "/v1/runs/r-3b");
  });
  standby.server.Get("/v1/runs/r-3b", [](const httplib::Request&, httplib::Response& res) {
    res.set_content(R"({"id":"r-3"})", "application/json");
  });
  stranger.server.Post(".*", [&](const httplib::Request&, httplib::Response& res) {
    ++stranger_hits;
    res.status = 202;
    res.set_content("{}", "application/json");
  });
  leader.server.Post("/v1/runs/r-2/cancel", [&](const httplib::Request& req, httplib::Response& res) {
    std::lock_guard<std::mutex> lock(mu);
    leader_auth = req.get_header_value("Authorization");
    res.status = 202;
    res.set_content("{}", "application/json");
  });
  ClientOptions options;
  options.servers = {standby.url(), leader.url()};
  options.token = "epoch_00000000_secret";
  auto c = ApiClient::Create(options);
  ASSERT_TRUE(c.ok());
  auto refused = (*c)->CancelRun("r-1");
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_THAT(refused.status().message(), HasSubstr("not one of the servers given"));
  EXPECT_EQ(stranger_hits.load(), 0) << "nothing, and no token, went to the stranger";
  auto followed = (*c)->CancelRun("r-2");
  ASSERT_TRUE(followed.ok()) << followed.status().ToString();
  {
    std::lock_guard<std::mutex> lock(mu);
    EXPECT_EQ(leader_auth, "Bearer epoch_00000000_secret");
  }
  auto same = MakeClient({standby.url()});
  auto run = same->GetRun("r-3");
  ASSERT_TRUE(run.ok()) << run.status().ToString();
  EXPECT_EQ(run->value("id", ""), "r-3");
}

TEST(ApiClient, NeverFollowsARedirectFromHttpsToHttp) {
  char tmpl[] = "/tmp/client-test.XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  std::string dir = tmpl;
  std::string cmd = "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
                    "-keyout " + dir + "/key.pem -out " + dir + "/cert.pem -days 1 "
                    "-subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 >/dev/null 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0);
  httplib::SSLServer tls((dir + "/cert.pem").c_str(), (dir + "/key.pem").c_str());
  ASSERT_TRUE(tls.is_valid());
  int port = tls.bind_to_any_port("127.0.0.1");
  std::thread serving([&] { tls.listen_after_bind(); });
  MockServer plain;  // configured too, but plain HTTP
  std::atomic<int> plain_hits{0};
  std::string plain_url = plain.url();
  tls.Get("/v1/cluster", [&](const httplib::Request&, httplib::Response& res) {
    res.status = 307;
    res.set_header("Location", plain_url + "/v1/cluster");
  });
  plain.server.Get(".*", [&](const httplib::Request&, httplib::Response& res) {
    ++plain_hits;
    res.set_content("{}", "application/json");
  });
  ClientOptions options;
  options.servers = {"https://127.0.0.1:" + std::to_string(port), plain.url()};
  options.ca_cert_path = dir + "/cert.pem";
  options.token = "epoch_00000000_secret";
  auto c = ApiClient::Create(options);
  ASSERT_TRUE(c.ok());
  auto res = (*c)->GetCluster();
  ASSERT_FALSE(res.ok());
  EXPECT_EQ(res.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_THAT(res.status().message(), HasSubstr("from https to http"));
  EXPECT_EQ(plain_hits.load(), 0);
  tls.stop();
  serving.join();
  std::string rm = "rm -rf " + dir;
  ASSERT_EQ(std::system(rm.c_str()), 0);
}

// ---- the binary, end to end -------------------------------------------------------------

struct Outcome {
  int exit_code = -1;
  std::string out, err;
};

std::string Quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

Outcome RunEpochctl(const std::vector<std::string>& args) {
  char err_path[] = "/tmp/epochctl_test_stderr_XXXXXX";
  int fd = ::mkstemp(err_path);
  EXPECT_GE(fd, 0);
  ::close(fd);
  std::string cmd = "env -u EPOCH_SERVER -u EPOCH_TOKEN " + Quote(EPOCHCTL_PATH);
  for (const auto& a : args) cmd += " " + Quote(a);
  cmd += " 2>" + Quote(err_path);
  Outcome o;
  FILE* p = ::popen(cmd.c_str(), "r");
  EXPECT_NE(p, nullptr);
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) o.out.append(buf, n);
  int status = ::pclose(p);
  o.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  std::ifstream in(err_path);
  std::stringstream ss;
  ss << in.rdbuf();
  o.err = ss.str();
  ::unlink(err_path);
  return o;
}

TEST(Epochctl, SubmitAndFailingGet) {
  MockServer m;
  std::mutex mu;
  Json received;
  m.server.Post("/v1/runs", [&](const httplib::Request& req, httplib::Response& res) {
    std::lock_guard<std::mutex> lock(mu);
    received = Json::parse(req.body);
    res.status = 201;
    res.set_content(R"({"id":"r-7","workflow":"w","state":"queued"})", "application/json");
  });
  m.server.Get("/v1/runs/r-404", [](const httplib::Request&, httplib::Response& res) {
    ReplyError(res, 404, "not_found", "run r-404 not found", {"did you mean r-7?"});
  });

  // Options before the positional: each -p takes exactly one value.
  Outcome ok = RunEpochctl({"--server", RefusingUrl() + "," + m.url(), "run", "submit", "-p",
                            "epochs=10", "-p", "opt=adam", "w", "-p", "tag=\"10\"", "--label",
                            "team=vision", "--version", "2"});
  EXPECT_EQ(ok.exit_code, 0) << ok.err;
  EXPECT_EQ(ok.out, "run r-7 submitted\n");
  {
    std::lock_guard<std::mutex> lock(mu);
    EXPECT_EQ(received, Json({{"workflow", "w"},
                              {"version", 2},
                              {"params", {{"epochs", 10}, {"opt", "adam"}, {"tag", "10"}}},
                              {"labels", {{"team", "vision"}}}}));
  }

  Outcome json = RunEpochctl({"-o", "json", "run", "submit", "w", "--server", m.url()});
  EXPECT_EQ(json.exit_code, 0) << json.err;
  EXPECT_EQ(Json::parse(json.out).value("id", ""), "r-7");

  Outcome missing = RunEpochctl({"--server", m.url(), "run", "get", "r-404"});
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_EQ(missing.out, "");
  EXPECT_EQ(missing.err, "error: run r-404 not found\n  did you mean r-7?\n");

  Outcome bad_param = RunEpochctl({"--server", m.url(), "run", "submit", "w", "-p", "oops"});
  EXPECT_NE(bad_param.exit_code, 0);
  EXPECT_THAT(bad_param.err, HasSubstr("'oops' is not of the form key=value"));
}

// What GET /v1/runs/{id} answered for tests/asha_e2e_test.cc's sweep (six trials, five
// stopped early; argv, usage, resources and logs left out).
Json SampleAshaRun() {
  return Json::parse(R"({"id": "r-asha", "workflow": "asha", "version": 1,
    "state": "succeeded", "params": {}, "labels": {},
    "submitted_at": "2026-12-07T21:22:04.712203Z", "started_at": "2026-12-07T21:22:04.715310Z",
    "finished_at": "2026-12-07T21:22:23.605252Z",
    "steps": [
    {"name": "train", "kind": "train", "state": "succeeded",
     "metrics": {"accuracy": 0.9, "epoch": 9},
     "best": {"attempt": 1, "metric": "accuracy", "params": {"quality": 0.9}, "trial": 0,
              "value": 0.9},
     "attempts": [
      {"attempt": 1, "trial": 0, "bracket": 0, "state": "succeeded", "exit_code": 0,
       "signal": null, "reason": null, "params": {"quality": 0.9},
       "metrics": {"accuracy": 0.9, "epoch": 9},
       "started_at": "2026-12-07T21:22:04.715310Z", "finished_at": "2026-12-07T21:22:13.893340Z",
       "rung": 1, "rungs": [{"decision": "promoted", "epoch": 1.0, "rung": 0, "value": 0.1},
                            {"decision": "promoted", "epoch": 3.0, "rung": 1, "value": 0.3}]},
      {"attempt": 2, "trial": 1, "bracket": 0, "state": "cancelled", "exit_code": 143,
       "signal": null, "params": {"quality": 0.3}, "metrics": {},
       "reason": "stopped early: rung 0 (epoch 1): accuracy 0.0333333 is below the best 1/3 of the 2 trials judged here (cutoff 0.1): stopped",
       "stopped": "rung 0 (epoch 1): accuracy 0.0333333 is below the best 1/3 of the 2 trials judged here (cutoff 0.1): stopped",
       "started_at": "2026-12-07T21:22:13.896418Z", "finished_at": "2026-12-07T21:22:15.117556Z",
       "rung": 0, "rungs": [{"decision": "stopped", "epoch": 1.0, "rung": 0, "value": 0.0333333}]},
      {"attempt": 3, "trial": 2, "bracket": 0, "state": "cancelled", "exit_code": 143,
       "signal": null, "params": {"quality": 0.2}, "metrics": {},
       "reason": "stopped early: rung 0 (epoch 1): accuracy 0.0222222 is below the best 1/3 of the 3 trials judged here (cutoff 0.0777778): stopped",
       "stopped": "rung 0 (epoch 1): accuracy 0.0222222 is below the best 1/3 of the 3 trials judged here (cutoff 0.0777778): stopped",
       "started_at": "2026-12-07T21:22:15.204333Z", "finished_at": "2026-12-07T21:22:16.227186Z",
       "rung": 0, "rungs": [{"decision": "stopped", "epoch": 1.0, "rung": 0, "value": 0.0222222}]},
      {"attempt": 4, "trial": 3, "bracket": 0, "state": "cancelled", "exit_code": 143,
       "signal": null, "params": {"quality": 0.8}, "metrics": {},
       "reason": "stopped early: rung 1 (epoch 3): accuracy 0.266667 is below the best 1/3 of the 2 trials judged here (cutoff 0.3): stopped",
       "stopped": "rung 1 (epoch 3): accuracy 0.266667 is below the best 1/3 of the 2 trials judged here (cutoff 0.3): stopped",
       "started_at": "2026-12-07T21:22:16.314392Z", "finished_at": "2026-12-07T21:22:19.344906Z",
       "rung": 1, "rungs": [{"decision": "promoted", "epoch": 1.0, "rung": 0, "value": 0.0888889},
                            {"decision": "stopped", "epoch": 3.0, "rung": 1, "value": 0.266667}]},
      {"attempt": 5, "trial": 4, "bracket": 0, "state": "cancelled", "exit_code": 143,
       "signal": null, "params": {"quality": 0.1}, "metrics": {},
       "reason": "stopped early: rung 0 (epoch 1): accuracy 0.0111111 is below the best 1/3 of the 5 trials judged here (cutoff 0.0888889): stopped",
       "stopped": "rung 0 (epoch 1): accuracy 0.0111111 is below the best 1/3 of the 5 trials judged here (cutoff 0.0888889): stopped",
       "started_at": "2026-12-07T21:22:19.433839Z", "finished_at": "2026-12-07T21:22:20.460716Z",
       "rung": 0, "rungs": [{"decision": "stopped", "epoch": 1.0, "rung": 0, "value": 0.0111111}]},
      {"attempt": 6, "trial": 5, "bracket": 0, "state": "cancelled", "exit_code": 143,
       "signal": null, "params": {"quality": 0.85}, "metrics": {},
       "reason": "stopped early: rung 1 (epoch 3): accuracy 0.283333 is below the best 1/3 of the 3 trials judged here (cutoff 0.288889): stopped",
       "stopped": "rung 1 (epoch 3): accuracy 0.283333 is below the best 1/3 of the 3 trials judged here (cutoff 0.288889): stopped",
       "started_at": "2026-12-07T21:22:20.540469Z", "finished_at": "2026-12-07T21:22:23.574290Z",
       "rung": 1, "rungs": [{"decision": "promoted", "epoch": 1.0, "rung": 0, "value": 0.0944444},
                            {"decision": "stopped", "epoch": 3.0, "rung": 1, "value": 0.283333}]}]},
    {"name": "infer", "kind": "infer", "state": "succeeded", "metrics": {},
     "attempts": [{"attempt": 1, "state": "succeeded", "exit_code": 0,
                   "started_at": "2026-12-07T21:22:23.580000Z",
                   "finished_at": "2026-12-07T21:22:23.600000Z"}]}]})");
}

// run get of a sweep whose trials early stopping stopped: the step row names the best
// trial; a table gives each trial's state (where it was stopped), params, rung and last
// objective value. -o json is the server's answer as it is.
TEST(Epochctl, RunGetShowsEachTrialAndWhereEarlyStoppingStoppedIt) {
  MockServer m;
  m.server.Get("/v1/runs/r-asha", [](const httplib::Request&, httplib::Response& res) {
    res.set_content(SampleAshaRun().dump(), "application/json");
  });
  Outcome table = RunEpochctl({"--server", m.url(), "run", "get", "r-asha"});
  EXPECT_EQ(table.exit_code, 0) << table.err;
  EXPECT_EQ(
      table.out,
      "Run:       r-asha\n"
      "Workflow:  asha@1\n"
      "State:     succeeded\n"
      "Submitted: 2026-12-07T21:22:04.712203Z\n"
      "Started:   2026-12-07T21:22:04.715310Z\n"
      "Finished:  2026-12-07T21:22:23.605252Z\n"
      "Duration:  18.9s\n"
      "Params:    -\n"
      "Labels:    -\n"
      "\n"
      "STEP   KIND   STATE      ATTEMPTS  EXIT/REASON                 DURATION  "
      "CPU REQ/USED  MEM REQ/PEAK  METRICS\n"
      "train  train  succeeded  6         best trial 0: accuracy=0.9  18.9s     "
      "-             -             {\"accuracy\":0.9,\"epoch\":9}\n"
      "infer  infer  succeeded  1         exit 0                      20ms      "
      "-             -             -\n"
      "\n"
      "Trials of train:\n"
      "TRIAL  ATTEMPT  STATE              PARAMS        RUNG              OBJECTIVE  DURATION\n"
      "0      1        succeeded          quality=0.9   rung 1 (epoch 3)  0.9        9.2s\n"
      "1      2        stopped at rung 0  quality=0.3   rung 0 (epoch 1)  0.0333333  1.2s\n"
      "2      3        stopped at rung 0  quality=0.2   rung 0 (epoch 1)  0.0222222  1.0s\n"
      "3      4        stopped at rung 1  quality=0.8   rung 1 (epoch 3)  0.266667   3.0s\n"
      "4      5        stopped at rung 0  quality=0.1   rung 0 (epoch 1)  0.0111111  1.0s\n"
      "5      6        stopped at rung 1  quality=0.85  rung 1 (epoch 3)  0.283333   3.0s\n");

  Outcome json = RunEpochctl({"--server", m.url(), "-o", "json", "run", "get", "r-asha"});
  EXPECT_EQ(json.exit_code, 0) << json.err;
  EXPECT_EQ(Json::parse(json.out), SampleAshaRun());
}

TEST(Epochctl, ModelAndDatasetCommands) {
  MockServer m;
  std::mutex mu;
  std::vector<std::string> paths;
  auto record = [&](const httplib::Request& req) {
    std::lock_guard<std::mutex> lock(mu);
    paths.push_back(req.path +
                    (req.has_param("cursor") ? "?cursor=" + req.get_param_value("cursor") : ""));
  };
  m.server.Get("/v1/models", [&](const httplib::Request& req, httplib::Response& res) {
    record(req);
    Json latest = SampleModelVersion();
    latest["versions"] = 2;
    res.set_content(Json{{"items", {latest}}, {"next_cursor", nullptr}}.dump(), "application/json");
  });
  // Every version comes a page at a time: version 1, then (cursor 1) version 2.
  m.server.Get("/v1/models/fmnist-mlp", [&](const httplib::Request& req, httplib::Response& res) {
    record(req);
    Json v = SampleModelVersion();
    bool second = req.get_param_value("cursor") == "1";
    v["version"] = second ? 2 : 1;
    res.set_content(Json{{"name", "fmnist-mlp"},
                         {"versions", {v}},
                         {"count", 2},
                         {"next_cursor", second ? Json() : Json("1")}}
                        .dump(),
                    "application/json");
  });
  m.server.Get("/v1/models/fmnist-mlp/versions/2",
               [&](const httplib::Request& req, httplib::Response& res) {
                 record(req);
                 res.set_content(SampleModelVersion().dump(), "application/json");
               });
  m.server.Get("/v1/models/nothing", [&](const httplib::Request& req, httplib::Response& res) {
    record(req);
    ReplyError(res, 404, "not_found", "model 'nothing' not found");
  });
  m.server.Get("/v1/datasets", [&](const httplib::Request& req, httplib::Response& res) {
    record(req);
    res.set_content(R"({"items": [], "next_cursor": null})", "application/json");
  });
  m.server.Get("/v1/datasets/x/versions/0",
               [&](const httplib::Request& req, httplib::Response& res) {
                 record(req);
                 ReplyError(res, 400, "bad_parameter", "version must be an integer >= 1");
               });

  Outcome list = RunEpochctl({"--server", m.url(), "model", "list"});
  EXPECT_EQ(list.exit_code, 0) << list.err;
  EXPECT_THAT(list.out, HasSubstr("fmnist-mlp  2       2         3f2a9c0d1e4b"));
  Outcome all = RunEpochctl({"--server", m.url(), "model", "get", "fmnist-mlp"});
  EXPECT_EQ(all.exit_code, 0) << all.err;
  EXPECT_THAT(all.out, HasSubstr("accuracy=0.8941"));
  Outcome pages = RunEpochctl({"--server", m.url(), "-o", "json", "model", "get", "fmnist-mlp"});
  EXPECT_EQ(pages.exit_code, 0) << pages.err;
  Json every = Json::parse(pages.out);
  ASSERT_EQ(every["versions"].size(), 2u) << pages.out;
  EXPECT_EQ(every["versions"][0]["version"], 1);
  EXPECT_EQ(every["versions"][1]["version"], 2);
  EXPECT_TRUE(every["next_cursor"].is_null());
  Outcome one = RunEpochctl({"--server", m.url(), "model", "get", "fmnist-mlp", "2"});
  EXPECT_EQ(one.exit_code, 0) << one.err;
  EXPECT_THAT(one.out, HasSubstr("Data sets:    fashion-mnist@1\n"));
  Outcome json =
      RunEpochctl({"--server", m.url(), "-o", "json", "model", "get", "fmnist-mlp", "2"});
  EXPECT_EQ(json.exit_code, 0) << json.err;
  EXPECT_EQ(Json::parse(json.out), SampleModelVersion());
  Outcome missing = RunEpochctl({"--server", m.url(), "model", "get", "nothing"});
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_EQ(missing.out, "");
  EXPECT_EQ(missing.err, "error: model 'nothing' not found\n");
  Outcome datasets = RunEpochctl({"--server", m.url(), "dataset", "list"});
  EXPECT_EQ(datasets.exit_code, 0) << datasets.err;
  EXPECT_EQ(datasets.out, "NAME  LATEST  VERSIONS  DIGEST  REGISTERED\n");
  Outcome zero = RunEpochctl({"--server", m.url(), "dataset", "get", "x", "0"});
  EXPECT_EQ(zero.exit_code, 1);
  EXPECT_EQ(zero.err, "error: version must be an integer >= 1\n");
  std::lock_guard<std::mutex> lock(mu);
  EXPECT_EQ(paths, (std::vector<std::string>{
                       "/v1/models", "/v1/models/fmnist-mlp", "/v1/models/fmnist-mlp?cursor=1",
                       "/v1/models/fmnist-mlp", "/v1/models/fmnist-mlp?cursor=1",
                       "/v1/models/fmnist-mlp/versions/2", "/v1/models/fmnist-mlp/versions/2",
                       "/v1/models/nothing", "/v1/datasets", "/v1/datasets/x/versions/0"}));
}

// --wait: the event stream triggers fresh GETs of the run; the exit code follows the
// run's final state.
void WaitScenario(const std::string& final_state, int expected_exit) {
  MockServer m;
  std::atomic<int> gets{0};
  m.server.Post("/v1/runs", [](const httplib::Request&, httplib::Response& res) {
    res.status = 201;
    res.set_content(R"({"id":"r-9","state":"queued"})", "application/json");
  });
  m.server.Get("/v1/runs/r-9", [&](const httplib::Request&, httplib::Response& res) {
    int n = ++gets;
    Json run = {{"id", "r-9"}, {"state", "running"}};
    Json prep = {{"name", "prep"}, {"state", "running"}, {"attempts", {{{"attempt", 1}}}}};
    Json train = {{"name", "train"}, {"state", "pending"}, {"attempts", Json::array()}};
    if (n >= 2) {
      prep["state"] = "succeeded";
      prep["attempts"][0]["exit_code"] = 0;
      train["state"] = "running";
      train["attempts"] = {{{"attempt", 1}}};
    }
    if (n >= 3) {
      run["state"] = final_state;
      train["state"] = final_state == "succeeded" ? "succeeded" : "failed";
      train["attempts"][0]["exit_code"] = final_state == "succeeded" ? 0 : 3;
    }
    run["steps"] = {prep, train};
    res.set_content(run.dump(), "application/json");
  });
  m.server.Get("/v1/runs/r-9/events", [](const httplib::Request&, httplib::Response& res) {
    ServeChunked(res,
                 "id: 2\ndata: {\"position\":2,\"type\":\"JobSucceeded\"}\n\n"
                 "id: 3\ndata: {\"position\":3,\"type\":\"RunSucceeded\"}\n\n",
                 16, "text/event-stream");
  });
  Outcome o =
      RunEpochctl({"--server", m.url(), "run", "submit", "w", "--wait", "--timeout", "20s"});
  EXPECT_EQ(o.exit_code, expected_exit) << o.out << o.err;
  EXPECT_THAT(o.out, HasSubstr("run r-9 submitted\n"));
  EXPECT_THAT(o.out, HasSubstr("step prep running (attempt 1)\n"));
  EXPECT_THAT(o.out, HasSubstr("step prep succeeded (attempt 1, exit 0)\n"));
  EXPECT_THAT(o.out, HasSubstr("step train running (attempt 1)\n"));
  EXPECT_THAT(o.out, HasSubstr("run r-9 " + final_state + "\n"));
  EXPECT_EQ(gets.load(), 3);
}

TEST(Epochctl, SubmitWaitSucceeded) { WaitScenario("succeeded", 0); }
TEST(Epochctl, SubmitWaitFailed) { WaitScenario("failed", 1); }

TEST(Epochctl, WaitFallsBackToPollingWhenStreamIsMissing) {
  MockServer m;
  std::atomic<int> gets{0};
  m.server.Post("/v1/runs", [](const httplib::Request&, httplib::Response& res) {
    res.status = 201;
    res.set_content(R"({"id":"r-5"})", "application/json");
  });
  m.server.Get("/v1/runs/r-5", [&](const httplib::Request&, httplib::Response& res) {
    Json run = {{"id", "r-5"}, {"state", ++gets >= 3 ? "cancelled" : "running"}};
    res.set_content(run.dump(), "application/json");
  });
  Outcome o = RunEpochctl({"--server", m.url(), "run", "submit", "w", "--wait"});
  EXPECT_EQ(o.exit_code, 1) << o.err;
  EXPECT_THAT(o.out, HasSubstr("run r-5 cancelled\n"));
  EXPECT_EQ(gets.load(), 3);
}

TEST(Epochctl, LogsTail) {
  MockServer m;
  std::mutex mu;
  std::string query;
  m.server.Get("/v1/runs/r-1/steps/train/logs",
               [&](const httplib::Request& req, httplib::Response& res) {
                 std::lock_guard<std::mutex> lock(mu);
                 query = "tail=" + req.get_param_value("tail") +
                         " attempt=" + req.get_param_value("attempt");
                 res.set_header("Epoch-Log-Size", "1000");
                 res.set_header("Epoch-Log-Offset", "990");
                 res.set_content("l9\nl10\n", "text/plain");
               });
  Outcome o = RunEpochctl({"--server", m.url(), "run", "logs", "r-1", "train", "--tail", "2",
                           "--attempt", "3"});
  EXPECT_EQ(o.exit_code, 0) << o.err;
  EXPECT_EQ(o.out, "l9\nl10\n");
  std::lock_guard<std::mutex> lock(mu);
  EXPECT_EQ(query, "tail=2 attempt=3");
}

}  // namespace
}  // namespace epoch::client
