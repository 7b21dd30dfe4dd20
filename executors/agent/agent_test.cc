#include "executors/agent/agent.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include <spdlog/sinks/base_sink.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <fstream>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>

#include "common/files.h"
#include "common/sha256.h"
#include "executors/agent/agent_test_util.h"
#include "executors/agent/fake_master.h"
#include "executors/test_util.h"
#include "gpu/gpu.h"

namespace epoch::executors {
namespace {

using namespace std::chrono_literals;
using testing::AgentRun;
using testing::CountLines;
using testing::FakeMaster;
using testing::ProcessGone;
using testing::Slurp;
using testing::TempDir;
using testing::WaitFor;
using testing::WaitReport;

// Counts the default logger's lines that contain `text` while it lives (a sink added
// to the logger's). spdlog's sink list is not guarded: create it before any thread
// that logs starts, and let it go after they are joined.
class LogCounter {
 public:
  explicit LogCounter(std::string text) : sink_(std::make_shared<Sink>(std::move(text))) {
    spdlog::default_logger()->sinks().push_back(sink_);
  }
  ~LogCounter() {
    auto& sinks = spdlog::default_logger()->sinks();
    sinks.erase(std::remove(sinks.begin(), sinks.end(), sink_), sinks.end());
  }
  int count() const { return sink_->count.load(); }

 private:
  class Sink : public spdlog::sinks::base_sink<std::mutex> {
   public:
    explicit Sink(std::string text) : text_(std::move(text)) {}
    std::atomic<int> count{0};

   protected:
    void sink_it_(const spdlog::details::log_msg& msg) override {
      if (std::string_view(msg.payload.data(), msg.payload.size()).find(text_) !=
          std::string_view::npos) {
        ++count;
      }
    }
    void flush_() override {}

   private:
    const std::string text_;
  };
  std::shared_ptr<Sink> sink_;
};

AgentOptions Options(const TempDir& tmp, const FakeMaster& m, const std::string& id = "c-1") {
  AgentOptions o;
  o.id = id;
  o.master_url = m.url();
  o.data_dir = tmp.path();
  o.cpu_millis = 1500;
  o.memory_bytes = 1LL << 30;
  o.gpus = 2;
  o.gpu_inventory = gpu::FakeInventory(2, id);
  o.grace = 200ms;
  o.orphan_timeout = 30s;
  o.log_level = "warn";
  // These tests watch the agent's protocol and process handling from outside (pids,
  // marker files beside the data dir): steps run through the shim, unsandboxed.
  // sandbox_test.cc runs them sandboxed.
  o.isolation = "off";
  o.sandbox_path = EPOCH_SANDBOX_PATH;
  return o;
}

std::string AttemptId(const std::string& run, const std::string& step, int attempt) {
  return run + "/" + step + "/" + std::to_string(attempt);
}

Json MakeAssignment(const TempDir& tmp, const std::string& run, const std::string& step,
                    int attempt, std::vector<std::string> argv, int64_t timeout_ms = 0) {
  std::string a = std::to_string(attempt);
  return Json{{"attempt_id", AttemptId(run, step, attempt)},
              {"run", run},
              {"step", step},
              {"attempt", attempt},
              {"argv", argv},
              {"env", {{"USER_VAR", "hello world"}}},
              {"workspace", tmp / ("runs/" + run)},
              {"outputs_dir", tmp / ("runs/" + run + "/" + step + "/" + a + "/outputs")},
              {"log_path", tmp / ("logs/" + run + "/" + step + "/" + a + ".log")},
              {"timeout_ms", timeout_ms},
              {"gpus", Json::array({0, 1})}};
}

std::string ReportFile(const TempDir& tmp, const std::string& id, const std::string& c = "c-1") {
  return tmp / ("containers/" + c + "/reports/" + EscapeAttemptId(id) + ".json");
}

TEST(AgentFlagsTest, ParsesAllFlags) {
  auto o = ParseAgentFlags({"--id",
                            "c7",
                            "--master=http://127.0.0.1:1",
                            "--data-dir",
                            "/d",
                            "--cpu-millis",
                            "2000",
                            "--memory-bytes",
                            "2Gi",
                            "--gpus",
                            "2",
                            "--handle",
                            "h1",
                            "--grace",
                            "250ms",
                            "--orphan-timeout",
                            "1m",
                            "--log-format",
                            "json",
                            "--log-level",
                            "debug",
                            "--backend",
                            "local"});
  ASSERT_TRUE(o.ok()) << o.status().ToString();
  EXPECT_EQ(o->id, "c7");
  EXPECT_EQ(o->master_url, "http://127.0.0.1:1");
  EXPECT_EQ(o->data_dir, "/d");
  EXPECT_EQ(o->cpu_millis, 2000);
  EXPECT_EQ(o->memory_bytes, 2LL << 30);
  EXPECT_EQ(o->gpus, 2);
  EXPECT_EQ(o->handle, "h1");
  EXPECT_EQ(o->grace, 250ms);
  EXPECT_EQ(o->orphan_timeout, 60s);
  EXPECT_EQ(o->log_format, "json");
  EXPECT_EQ(o->log_level, "debug");
  // Limits: epoch-agent enforces by default; the flags set each part.
  EXPECT_EQ(o->enforce, "auto");
  EXPECT_EQ(o->max_pids, 4096);
  auto l = ParseAgentFlags({"--id", "c", "--master", "u", "--data-dir", "/d", "--cpu-millis", "1",
                            "--memory-bytes", "1", "--enforce", "required", "--max-pids", "64",
                            "--cgroup-root", "/sys/fs/cgroup"});
  ASSERT_TRUE(l.ok()) << l.status().ToString();
  EXPECT_EQ(l->enforce, "required");
  EXPECT_EQ(l->max_pids, 64);
  EXPECT_EQ(l->cgroup_root, "/sys/fs/cgroup");
}

TEST(AgentFlagsTest, RejectsBadFlags) {
  std::vector<std::string> base = {"--id",           "c",  "--master",     "u",
                                   "--data-dir",     "/d", "--cpu-millis", "1000",
                                   "--memory-bytes", "1"};
  EXPECT_TRUE(ParseAgentFlags(base).ok());
  auto with = [&](std::vector<std::string> extra) {
    auto v = base;
    v.insert(v.end(), extra.begin(), extra.end());
    return ParseAgentFlags(v).status().code();
  };
  EXPECT_EQ(with({"--bogus", "1"}), StatusCode::kInvalidArgument);
  EXPECT_EQ(with({"--gpus", "x"}), StatusCode::kInvalidArgument);
  EXPECT_EQ(with({"--grace", "-1s"}), StatusCode::kInvalidArgument);
  EXPECT_EQ(with({"--log-format", "xml"}), StatusCode::kInvalidArgument);
  EXPECT_EQ(with({"--gpus"}), StatusCode::kInvalidArgument);
  EXPECT_EQ(with({"--enforce", "sometimes"}), StatusCode::kInvalidArgument);
  EXPECT_EQ(with({"--max-pids", "-1"}), StatusCode::kInvalidArgument);
  EXPECT_EQ(with({"--max-pids", "12x"}), StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseAgentFlags({"--id", "c"}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseAgentFlags({"--id", "a/b", "--master", "u", "--data-dir", "/d", "--cpu-millis",
                             "1", "--memory-bytes", "1"})
                .status()
                .code(),
            StatusCode::kInvalidArgument);
}

TEST(AgentFlagsTest, EscapesAttemptIds) {
  EXPECT_EQ(EscapeAttemptId("r1/train/1"), "r1%2Ftrain%2F1");
  EXPECT_EQ(EscapeAttemptId("a-b_c.d"), "a-b_c%2Ed");
}

// What the agent registers about its limits when they cannot be enforced: "none" and
// the reason with auto; with required it refuses to start, saying why. (Enforcement
// itself moves the agent's process into cgroups: tests/containment_e2e_test.cc runs
// real agents for that.)
TEST(AgentTest, RegistersNoneWithTheReasonOrRefusesWhenLimitsCannotBeEnforced) {
  TempDir tmp;
  FakeMaster m;
  std::string root = tmp.path() + "/not-cgroups";
  ASSERT_TRUE(MakeDirs(root).ok());
  {
    AgentOptions o = Options(tmp, m);
    o.enforce = "auto";
    o.cgroup_root = root;
    AgentRun agent(o);
    ASSERT_TRUE(WaitFor([&] { return m.RegisterCount() >= 1; }));
    Json reg = m.Get<Json>([](const FakeMaster& f) { return f.registers.front(); });
    EXPECT_EQ(reg["enforcement"],
              Json({{"mode", "auto"},
                    {"mechanism", "none"},
                    {"reason", root + " is neither a cgroup2 directory nor holds cgroup v1 "
                                      "hierarchies"}}));
  }
  {
    AgentOptions o = Options(tmp, m, "c-2");
    ASSERT_EQ(o.enforce, "off");  // in-process agents never move their host process
    AgentRun agent(o);
    ASSERT_TRUE(WaitFor([&] { return m.RegisterCount() >= 2; }));
    Json reg = m.Get<Json>([](const FakeMaster& f) { return f.registers.back(); });
    EXPECT_EQ(reg["enforcement"],
              Json({{"mode", "off"}, {"mechanism", "none"}, {"reason", "executor.enforce is off"}}));
  }
  AgentOptions o = Options(tmp, m, "c-3");
  o.enforce = "required";
  o.cgroup_root = root;
  AgentRun agent(o);
  ASSERT_TRUE(WaitFor([&] { return agent.done(); }));
  EXPECT_EQ(agent.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(agent.status().message(),
            "--enforce required, but limits cannot be enforced per attempt: " + root +
                " is neither a cgroup2 directory nor holds cgroup v1 hierarchies");
  EXPECT_EQ(m.RegisterCount(), 2u);  // c-3 never registered
}

TEST(AgentTest, RunsAttemptAndReportsUntilAcked) {
  TempDir tmp;
  FakeMaster m;
  m.Set([](FakeMaster& f) { f.ack = false; });
  AgentRun agent(Options(tmp, m));
  const std::string id = AttemptId("r1", "prep", 1);
  m.Assign(
      MakeAssignment(tmp, "r1", "prep", 1,
                     {"sh", "-c",
                      "echo \"run=$EPOCH_RUN_ID step=$EPOCH_STEP attempt=$EPOCH_ATTEMPT "
                      "cuda=$CUDA_VISIBLE_DEVICES cid=$EPOCH_CONTAINER_ID user=$USER_VAR\"; "
                      "echo ws=$EPOCH_WORKSPACE; pwd; echo to-stderr >&2; "
                      "printf '{\"loss\": 0.25, \"acc\": 0.9}' > \"$EPOCH_OUTPUTS/metrics.json\"; "
                      "printf abc > \"$EPOCH_OUTPUTS/model.bin\"; mkdir -p \"$EPOCH_OUTPUTS/sub\"; "
                      ": > \"$EPOCH_OUTPUTS/sub/empty\""}));
  Json r = WaitReport(m, id);
  ASSERT_FALSE(r.is_null()) << "no report";
  EXPECT_EQ(r["state"], "succeeded") << r.dump();
  EXPECT_EQ(r["exit_code"], 0);
  EXPECT_TRUE(r["signal"].is_null());
  EXPECT_EQ(r["metrics"], Json({{"loss", 0.25}, {"acc", 0.9}}));
  EXPECT_FALSE(r.contains("metrics_error"));
  Json outputs = Json::array(
      {{{"name", "model.bin"},
        {"size", 3},
        {"sha256", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"}},
       {{"name", "sub/empty"},
        {"size", 0},
        {"sha256", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"}}});
  EXPECT_EQ(r["outputs"], outputs);
  EXPECT_GT(r["usage"]["wall_s"].get<double>(), 0.0);
  EXPECT_GE(r["usage"]["cpu_s"].get<double>(), 0.0);
  EXPECT_GT(r["usage"]["max_rss_kb"].get<int64_t>(), 0);

  std::string log = Slurp(tmp / "logs/r1/prep/1.log");
  EXPECT_NE(log.find("run=r1 step=prep attempt=1 cuda=0,1 cid=c-1 user=hello world"),
            std::string::npos)
      << log;
  EXPECT_NE(log.find("ws=" + (tmp / "runs/r1") + "\n" + (tmp / "runs/r1") + "\n"),
            std::string::npos)
      << log;
  EXPECT_NE(log.find("to-stderr"), std::string::npos);

  // Registered with what it owns.
  Json reg = m.Get<Json>([](const FakeMaster& f) { return f.registers.front(); });
  EXPECT_EQ(reg["backend"], "local");
  EXPECT_EQ(reg["pid"], getpid());
  EXPECT_EQ(reg["handle"], std::to_string(getpid()));
  EXPECT_EQ(reg["cpu_millis"], 1500);
  EXPECT_EQ(reg["memory_bytes"], 1LL << 30);
  ASSERT_EQ(reg["gpus"].size(), 2u);
  EXPECT_EQ(reg["gpus"][1], gpu::ToJson(gpu::FakeInventory(2, "c-1").gpus[1]));
  EXPECT_TRUE(reg["gpus"][1]["index"].is_number_integer());
  EXPECT_EQ(reg["cuda"]["compiled"], gpu::CudaCompiledIn());
  EXPECT_TRUE(reg["cuda"]["reason"].is_string());
  Json agent_json = Json::parse(Slurp(tmp / "containers/c-1/agent.json"));
  EXPECT_EQ(agent_json["pid"], getpid());
  EXPECT_EQ(agent_json["master_url"], m.url());

  // Unacknowledged: on disk, and resent on later polls.
  EXPECT_TRUE(PathExists(ReportFile(tmp, id)));
  EXPECT_TRUE(WaitFor([&] { return m.ReportsFor(id).size() >= 2; }));
  EXPECT_TRUE(PathExists(ReportFile(tmp, id)));
  m.Set([](FakeMaster& f) { f.ack = true; });
  EXPECT_TRUE(WaitFor([&] { return !PathExists(ReportFile(tmp, id)); }));
}

TEST(AgentTest, ReportsPromptly) {
  TempDir tmp;
  FakeMaster m;
  // A long poll with ten minutes to run is in flight: the report cannot wait for it
  // (WaitReport gives up long before).
  m.Set([](FakeMaster& f) { f.poll_timeout_ms = 600000; });
  AgentRun agent(Options(tmp, m));
  ASSERT_TRUE(WaitFor([&] { return m.PollCount() >= 1; }));
  m.Assign(MakeAssignment(tmp, "r1", "quick", 1, {"true"}));
  Json r = WaitReport(m, AttemptId("r1", "quick", 1));
  ASSERT_FALSE(r.is_null());
  EXPECT_EQ(r["state"], "succeeded");
}

TEST(AgentTest, DuplicateAssignmentRunsOnce) {
  TempDir tmp;
  FakeMaster m;
  AgentRun agent(Options(tmp, m));
  const std::string counter = tmp / "count";
  Json a = MakeAssignment(tmp, "r2", "s", 1, {"sh", "-c", "echo x >> " + counter + "; sleep 0.3"});
  const std::string id = AttemptId("r2", "s", 1);
  m.Assign(a);
  ASSERT_TRUE(WaitFor([&] { return CountLines(counter) == 1; }));
  m.Assign(a);  // while it runs
  Json r = WaitReport(m, id);
  EXPECT_EQ(r["state"], "succeeded");
  ASSERT_TRUE(WaitFor([&] { return !PathExists(ReportFile(tmp, id)); }));
  m.Assign(a);  // after it was reported and acknowledged
  m.Assign(a);
  // A later attempt proves the duplicates were seen first (same or earlier answer).
  m.Assign(MakeAssignment(tmp, "r2", "s", 2, {"true"}));
  EXPECT_EQ(WaitReport(m, AttemptId("r2", "s", 2))["state"], "succeeded");
  EXPECT_EQ(CountLines(counter), 1);
  for (const auto& rep : m.ReportsFor(id)) EXPECT_EQ(rep["state"], "succeeded");
}

TEST(AgentTest, CancelKillsTheGroup) {
  TempDir tmp;
  FakeMaster m;
  AgentRun agent(Options(tmp, m));
  const std::string pidfile = tmp / "pid";
  m.Assign(MakeAssignment(
      tmp, "r3", "s", 1,
      {"sh", "-c",
       "sleep 100 & echo $! > " + pidfile + ".tmp; mv " + pidfile + ".tmp " + pidfile + "; wait"}));
  ASSERT_TRUE(WaitFor([&] { return !Slurp(pidfile).empty(); }));
  pid_t grandchild = static_cast<pid_t>(std::stol(Slurp(pidfile)));
  EXPECT_FALSE(ProcessGone(grandchild));
  m.Cancel(AttemptId("r3", "s", 1));
  Json r = WaitReport(m, AttemptId("r3", "s", 1));
  EXPECT_EQ(r["state"], "cancelled") << r.dump();
  EXPECT_EQ(r["signal"], SIGTERM);
  EXPECT_TRUE(WaitFor([&] { return ProcessGone(grandchild); }));
}

// The master names a cancelled attempt in every answer until its report arrives, which
// takes up to the grace when the step ignores SIGTERM: the agent acts on it once (one
// 'cancelling attempt' line, where each repeat acted on would log another). The step
// here ignores SIGTERM and ends when the test says, once the master has named the
// cancel three times. That the agent also paces its polls meanwhile (kStalePollPause)
// is a matter of real time and not asserted.
TEST(AgentTest, ARepeatedCancelIsCarriedOutOnce) {
  TempDir tmp;
  LogCounter cancelling("cancelling attempt r4/s/1");  // before any thread that logs
  FakeMaster m;
  m.Set([](FakeMaster& f) { f.repeat_cancels = true; });
  AgentOptions o = Options(tmp, m);
  o.grace = 300s;  // never reached: the step ends first
  AgentRun agent(o);
  const std::string started = tmp / "started", go = tmp / "go";
  m.Assign(MakeAssignment(
      tmp, "r4", "s", 1,
      {"sh", "-c",
       "trap '' TERM; touch " + started + "; while [ ! -e " + go + " ]; do sleep 0.01; done"}));
  ASSERT_TRUE(WaitFor([&] { return std::filesystem::exists(started); }));
  m.Cancel(AttemptId("r4", "s", 1));
  auto answered = [&] {
    return m.Get<size_t>([](const FakeMaster& f) { return f.cancels_answered; });
  };
  ASSERT_TRUE(WaitFor([&] { return answered() >= 3; })) << answered();
  std::ofstream(go.c_str()).put('\n');
  Json r = WaitReport(m, AttemptId("r4", "s", 1));
  EXPECT_EQ(r["state"], "cancelled") << r.dump();
  EXPECT_EQ(r["exit_code"], 0) << "it ignored SIGTERM and ended when told";
  EXPECT_EQ(cancelling.count(), 1) << "the master named it " << answered() << " times";
}

TEST(AgentTest, CancelOfUnknownAttemptIsReportedAndNeverRuns) {
  TempDir tmp;
  FakeMaster m;
  AgentRun agent(Options(tmp, m));
  const std::string id = AttemptId("r4", "s", 1);
  m.Cancel(id);
  Json r = WaitReport(m, id);
  EXPECT_EQ(r["state"], "cancelled");
  EXPECT_TRUE(r["exit_code"].is_null());
  m.Assign(MakeAssignment(tmp, "r4", "s", 1, {"touch", tmp / "ran"}));
  m.Assign(MakeAssignment(tmp, "r4", "s", 2, {"true"}));
  EXPECT_EQ(WaitReport(m, AttemptId("r4", "s", 2))["state"], "succeeded");
  EXPECT_FALSE(PathExists(tmp / "ran"));
}

TEST(AgentTest, TimeoutReportsTimedOut) {
  TempDir tmp;
  FakeMaster m;
  AgentRun agent(Options(tmp, m));
  m.Assign(MakeAssignment(tmp, "r5", "s", 1, {"sleep", "100"}, 200));
  // This one ignores SIGTERM: the grace runs out and SIGKILL ends it.
  m.Assign(MakeAssignment(tmp, "r5", "s", 2, {"sh", "-c", "trap '' TERM; sleep 100"}, 200));
  Json r1 = WaitReport(m, AttemptId("r5", "s", 1));
  Json r2 = WaitReport(m, AttemptId("r5", "s", 2));
  EXPECT_EQ(r1["state"], "timed_out") << r1.dump();
  EXPECT_EQ(r1["signal"], SIGTERM);
  EXPECT_EQ(r2["state"], "timed_out") << r2.dump();
  EXPECT_EQ(r2["signal"], SIGKILL);
  EXPECT_GE(r2["usage"]["wall_s"].get<double>(), 0.35);
  EXPECT_NE(r1["reason"].get<std::string>().find("timed out after 200 ms"), std::string::npos);
}

TEST(AgentTest, FailedAndExecFailure) {
  TempDir tmp;
  FakeMaster m;
  AgentRun agent(Options(tmp, m));
  m.Assign(MakeAssignment(tmp, "r6", "s", 1, {"sh", "-c", "exit 7"}));
  m.Assign(MakeAssignment(tmp, "r6", "s", 2, {"/nonexistent/step-binary"}));
  m.Assign(MakeAssignment(tmp, "r6", "s", 3, {"sh", "-c", "kill -KILL $$"}));
  Json bad = MakeAssignment(tmp, "r6", "s", 4, {});
  m.Assign(bad);
  Json r1 = WaitReport(m, AttemptId("r6", "s", 1));
  EXPECT_EQ(r1["state"], "failed");
  EXPECT_EQ(r1["exit_code"], 7);
  EXPECT_EQ(r1["reason"], "exit code 7");
  Json r2 = WaitReport(m, AttemptId("r6", "s", 2));
  EXPECT_EQ(r2["state"], "failed");
  EXPECT_EQ(r2["exit_code"], 127);
  EXPECT_EQ(r2["reason"], "exec failed: No such file or directory");
  Json r3 = WaitReport(m, AttemptId("r6", "s", 3));
  EXPECT_EQ(r3["reason"], "killed by signal 9");
  EXPECT_TRUE(r3["exit_code"].is_null());
  Json r4 = WaitReport(m, AttemptId("r6", "s", 4));
  EXPECT_EQ(r4["state"], "failed");
  EXPECT_NE(r4["reason"].get<std::string>().find("invalid assignment"), std::string::npos);
}

// The GPUs an assignment names become the child's CUDA_VISIBLE_DEVICES (their
// visible_ids) and EPOCH_GPU_UUIDS; the inventory comes from EPOCH_FAKE_GPUS as in main().
TEST(AgentTest, AssignedGpusBecomeCudaVisibleDevices) {
  TempDir tmp;
  FakeMaster m;
  AgentOptions o = Options(tmp, m);
  ASSERT_EQ(setenv("EPOCH_FAKE_GPUS", "4", 1), 0);
  o.gpu_inventory = gpu::DiscoverFromEnv(o.id);
  unsetenv("EPOCH_FAKE_GPUS");
  AgentRun agent(std::move(o));
  const std::string env_file = tmp / "gpu-env.txt";
  auto env_dump = [&](const std::string& out) -> std::vector<std::string> {
    return {"sh", "-c",
            "printf 'CUDA_VISIBLE_DEVICES=%s\nEPOCH_GPU_UUIDS=%s\n' "
            "\"${CUDA_VISIBLE_DEVICES-unset}\" \"${EPOCH_GPU_UUIDS-unset}\" > " +
                out};
  };
  Json a1 = MakeAssignment(tmp, "r20", "train", 1, env_dump(env_file));
  a1["gpus"] = Json::array({"1", "3"});
  m.Assign(a1);
  Json r1 = WaitReport(m, AttemptId("r20", "train", 1));
  ASSERT_FALSE(r1.is_null()) << "no report";
  EXPECT_EQ(r1["state"], "succeeded") << r1.dump();
  EXPECT_EQ(Slurp(env_file),
            "CUDA_VISIBLE_DEVICES=1,3\nEPOCH_GPU_UUIDS=GPU-sim-c-1-1,GPU-sim-c-1-3\n");

  // Integers are accepted too; no GPUs gives an empty (but set) CUDA_VISIBLE_DEVICES.
  Json a2 = MakeAssignment(tmp, "r20", "train", 2, env_dump(env_file + "2"));
  a2["gpus"] = Json::array({2});
  m.Assign(a2);
  Json a3 = MakeAssignment(tmp, "r20", "train", 3, env_dump(env_file + "3"));
  a3["gpus"] = Json::array();
  m.Assign(a3);
  EXPECT_EQ(WaitReport(m, AttemptId("r20", "train", 2))["state"], "succeeded");
  EXPECT_EQ(WaitReport(m, AttemptId("r20", "train", 3))["state"], "succeeded");
  EXPECT_EQ(Slurp(env_file + "2"), "CUDA_VISIBLE_DEVICES=2\nEPOCH_GPU_UUIDS=GPU-sim-c-1-2\n");
  EXPECT_EQ(Slurp(env_file + "3"), "CUDA_VISIBLE_DEVICES=\nEPOCH_GPU_UUIDS=\n");

  // Registered the four simulated GPUs.
  Json reg = m.Get<Json>([](const FakeMaster& f) { return f.registers.front(); });
  ASSERT_EQ(reg["gpus"].size(), 4u);
  EXPECT_EQ(reg["gpus"][3]["index"], 3);
  EXPECT_EQ(reg["gpus"][3]["uuid"], "GPU-sim-c-1-3");
  EXPECT_EQ(reg["gpus"][3]["simulated"], true);
  EXPECT_NE(reg["cuda"]["reason"].get<std::string>().find("EPOCH_FAKE_GPUS=4"),
            std::string::npos);
}

TEST(AgentTest, UnknownGpuIndexFailsTheAttempt) {
  TempDir tmp;
  FakeMaster m;
  AgentRun agent(Options(tmp, m));  // GPUs 0 and 1
  const std::string marker = tmp / "ran";
  Json a = MakeAssignment(tmp, "r21", "s", 1, {"sh", "-c", ": > " + marker});
  a["gpus"] = Json::array({"1", "7"});
  m.Assign(a);
  Json r = WaitReport(m, AttemptId("r21", "s", 1));
  ASSERT_FALSE(r.is_null()) << "no report";
  EXPECT_EQ(r["state"], "failed");
  EXPECT_EQ(r["reason"], "invalid assignment: unknown GPU index 7");
  Json dup = MakeAssignment(tmp, "r21", "s", 2, {"sh", "-c", ": > " + marker});
  dup["gpus"] = Json::array({"1", 1});
  m.Assign(dup);
  Json r2 = WaitReport(m, AttemptId("r21", "s", 2));
  EXPECT_EQ(r2["state"], "failed");
  EXPECT_EQ(r2["reason"], "invalid assignment: GPU index 1 is listed twice");
  EXPECT_FALSE(PathExists(marker));
}

TEST(AgentTest, IgnoresAnswersFromLowerEpoch) {
  TempDir tmp;
  FakeMaster m;
  m.Set([](FakeMaster& f) { f.epoch = 5; });
  AgentRun agent(Options(tmp, m));
  ASSERT_TRUE(WaitFor([&] { return m.PollCount() >= 1; }));
  m.Set([](FakeMaster& f) { f.epoch = 3; });  // a deposed leader
  m.Assign(MakeAssignment(tmp, "r7", "s", 1, {"touch", tmp / "stale"}));
  ASSERT_TRUE(WaitFor(
      [&] { return m.Get<bool>([](const FakeMaster& f) { return f.assignments.empty(); }); }));
  size_t polls = m.PollCount();
  ASSERT_TRUE(WaitFor([&] { return m.PollCount() >= polls + 2; }));
  EXPECT_FALSE(PathExists(tmp / "stale"));
  EXPECT_TRUE(m.ReportsFor(AttemptId("r7", "s", 1)).empty());

  m.Set([](FakeMaster& f) { f.epoch = 6; });  // a newer leader is obeyed
  m.Assign(MakeAssignment(tmp, "r7", "s", 2, {"touch", tmp / "fresh"}));
  EXPECT_EQ(WaitReport(m, AttemptId("r7", "s", 2))["state"], "succeeded");
  EXPECT_TRUE(PathExists(tmp / "fresh"));
  EXPECT_FALSE(PathExists(tmp / "stale"));
  EXPECT_TRUE(WaitFor([&] {
    auto j = ParseJson(Slurp(tmp / "containers/c-1/agent.json"));
    return j.ok() && (*j)["epoch_seen"] == 6;
  }));
}

TEST(AgentTest, BadMetricsStillReport) {
  TempDir tmp;
  FakeMaster m;
  AgentRun agent(Options(tmp, m));
  auto metrics_cmd = [](const std::string& script) {
    return std::vector<std::string>{"sh", "-c", script};
  };
  m.Assign(MakeAssignment(tmp, "r8", "s", 1,
                          metrics_cmd("printf '{not json' > $EPOCH_OUTPUTS/metrics.json")));
  m.Assign(MakeAssignment(
      tmp, "r8", "s", 2,
      metrics_cmd("{ printf '{\"a\":\"'; head -c 70000 /dev/zero | tr '\\0' a; printf '\"}'; } "
                  "> $EPOCH_OUTPUTS/metrics.json")));
  m.Assign(MakeAssignment(tmp, "r8", "s", 3,
                          metrics_cmd("printf '[1,2]' > $EPOCH_OUTPUTS/metrics.json")));
  Json r1 = WaitReport(m, AttemptId("r8", "s", 1));
  Json r2 = WaitReport(m, AttemptId("r8", "s", 2));
  Json r3 = WaitReport(m, AttemptId("r8", "s", 3));
  for (const Json* r : {&r1, &r2, &r3}) {
    EXPECT_EQ((*r)["state"], "succeeded") << r->dump();
    EXPECT_EQ((*r)["metrics"], Json::object());
    EXPECT_EQ((*r)["outputs"], Json::array());
  }
  EXPECT_NE(r1["metrics_error"].get<std::string>().find("malformed JSON"), std::string::npos)
      << r1.dump();
  EXPECT_NE(r2["metrics_error"].get<std::string>().find("larger than 65536"), std::string::npos)
      << r2.dump();
  EXPECT_EQ(r3["metrics_error"], "metrics.json is not a JSON object");
}

// Live metrics (live_metrics.h): the step's lines reach the master while it runs, in
// batches it acknowledges; a checkpoint it declares is recorded with its sha256; the
// report's metrics are each series' last value with metrics.json's on top.
TEST(AgentTest, ShipsLiveMetricsAndCheckpointsWhileTheStepRuns) {
  TempDir tmp;
  FakeMaster m;
  AgentRun agent(Options(tmp, m));
  const std::string id = AttemptId("r10", "train", 1);
  const std::string done = tmp / "done";
  Json a = MakeAssignment(
      tmp, "r10", "train", 1,
      {"sh", "-c",
       "test -f \"$EPOCH_METRICS\" && test -d \"$EPOCH_CHECKPOINT_DIR\" || exit 3\n"
       "for i in 1 2 3 4 5 6 7 8; do\n"
       "  printf '{\"step\": %d, \"loss\": 0.%d}\\n' $i $((9 - i)) >> \"$EPOCH_METRICS\"\n"
       "  if [ $i = 4 ]; then\n"
       "    printf abc > \"$EPOCH_CHECKPOINT_DIR/epoch-1.pt\"\n"
       "    printf '{\"file\": \"epoch-1.pt\", \"epoch\": 1}' > \"$EPOCH_CHECKPOINT_DIR/c.tmp\"\n"
       "    mv \"$EPOCH_CHECKPOINT_DIR/c.tmp\" \"$EPOCH_CHECKPOINT_DIR/checkpoint.json\"\n"
       "  fi\n"
       "  sleep 0.25\n"
       "done\n"
       "printf 'not json\\n{\"step\": 9, \"loss\": 0.05}' >> \"$EPOCH_METRICS\"\n"
       "printf '{\"loss\": 0.5, \"acc\": 0.9}' > \"$EPOCH_OUTPUTS/metrics.json\"\n"
       "touch " +
           done});
  a["metrics"] = {{"path", tmp / "runs/r10/train/1/metrics.ndjson"},
                  {"interval_ms", 200},
                  {"max_points", 1000},
                  {"max_bytes", 1 << 20}};
  a["checkpoint_dir"] = tmp / "runs/r10/train/checkpoints";
  m.Assign(a);
  // Points arrive while the step still runs.
  ASSERT_TRUE(WaitFor([&] { return m.MetricPointsFor(id).size() >= 3; }));
  EXPECT_FALSE(PathExists(done));
  EXPECT_TRUE(m.ReportsFor(id).empty());

  Json r = WaitReport(m, id);
  ASSERT_FALSE(r.is_null());
  EXPECT_EQ(r["state"], "succeeded") << r.dump();
  EXPECT_EQ(r["metrics"], Json({{"step", 9}, {"loss", 0.5}, {"acc", 0.9}}));
  ASSERT_TRUE(WaitFor([&] { return m.MetricPointsFor(id).size() >= 9; }));
  auto points = m.MetricPointsFor(id);
  ASSERT_EQ(points.size(), 9u);
  for (int i = 0; i < 9; ++i) EXPECT_EQ(points[i]["step"], i + 1);
  EXPECT_EQ(points[3], Json({{"step", 4}, {"loss", 0.5}}));
  auto batches = m.MetricBatchesFor(id);
  ASSERT_GE(batches.size(), 3u) << "batches: " << batches.size();  // batched, at most every 200 ms
  EXPECT_LE(batches.size(), 20u);
  EXPECT_EQ(batches.back()["skipped"], 1);
  EXPECT_EQ(batches.back()["dropped"], 0);
  EXPECT_EQ(batches.back()["truncated"], false);
  Json checkpoints = Json::array();
  for (const auto& b : batches) {
    for (const auto& c : b["checkpoints"]) checkpoints.push_back(c);
  }
  EXPECT_EQ(
      checkpoints,
      Json::array(
          {{{"file", "epoch-1.pt"}, {"sha256", Sha256Hex("abc")}, {"size", 3}, {"epoch", 1}}}));
  // Everything acknowledged: nothing more is sent.
  size_t n = m.MetricBatchesFor(id).size();
  std::this_thread::sleep_for(600ms);
  EXPECT_EQ(m.MetricBatchesFor(id).size(), n);
}

// Without an acknowledgement the agent sends the same points again; they go once it
// comes.
TEST(AgentTest, ResendsLiveMetricsUntilAcknowledged) {
  TempDir tmp;
  FakeMaster m;
  m.Set([](FakeMaster& f) { f.ack_metrics = false; });
  AgentRun agent(Options(tmp, m));
  const std::string id = AttemptId("r11", "s", 1);
  Json a =
      MakeAssignment(tmp, "r11", "s", 1,
                     {"sh", "-c", "printf '{\"x\": 1}\\n{\"x\": 2}\\n' >> \"$EPOCH_METRICS\""});
  a["metrics"] = {{"path", tmp / "runs/r11/s/1/m.ndjson"}, {"interval_ms", 100}};
  m.Assign(a);
  ASSERT_TRUE(WaitFor([&] { return m.MetricBatchesFor(id).size() >= 3; }));
  for (const auto& b : m.MetricBatchesFor(id)) {
    EXPECT_EQ(b["from"], 0);
    EXPECT_EQ(b["points"], Json::parse(R"([{"x": 1}, {"x": 2}])"));
  }
  EXPECT_EQ(WaitReport(m, id)["metrics"], Json({{"x", 2}}));
  m.Set([](FakeMaster& f) { f.ack_metrics = true; });
  size_t n = 0;
  ASSERT_TRUE(WaitFor([&] {
    size_t now = m.MetricBatchesFor(id).size();
    bool settled = now == n && now > 0;
    n = now;
    if (!settled) std::this_thread::sleep_for(400ms);
    return settled;
  }));
}

// A master that refuses the batches (400) must not keep the reports from it: the agent
// stops sending that attempt's metrics.
TEST(AgentTest, RefusedLiveMetricsNeverHoldBackReports) {
  TempDir tmp;
  FakeMaster m;
  m.Set([](FakeMaster& f) { f.refuse_metrics = true; });
  AgentRun agent(Options(tmp, m));
  const std::string id = AttemptId("r13", "s", 1);
  Json a = MakeAssignment(tmp, "r13", "s", 1,
                          {"sh", "-c", "printf '{\"x\": 1}\\n' >> \"$EPOCH_METRICS\""});
  a["metrics"] = {{"path", tmp / "runs/r13/s/1/m.ndjson"}, {"interval_ms", 100}};
  m.Assign(a);
  EXPECT_EQ(WaitReport(m, id)["state"], "succeeded");
  EXPECT_TRUE(WaitFor([&] { return !PathExists(ReportFile(tmp, id)); }));  // acknowledged
  EXPECT_TRUE(m.MetricBatchesFor(id).empty());
}

TEST(AgentTest, LiveMetricsPathsMustBeInsideTheWorkspace) {
  TempDir tmp;
  FakeMaster m;
  AgentRun agent(Options(tmp, m));
  Json a = MakeAssignment(tmp, "r12", "s", 1, {"true"});
  a["metrics"] = {{"path", tmp / "logs/m.ndjson"}};
  m.Assign(a);
  Json b = MakeAssignment(tmp, "r12", "s", 2, {"true"});
  b["checkpoint_dir"] = tmp / "runs/r12/../../ckpt";
  m.Assign(b);
  Json c = MakeAssignment(tmp, "r12", "s", 3, {"true"});
  c["metrics"] = {{"path", tmp / "runs/r12/m"}, {"max_points", -1}};
  m.Assign(c);
  EXPECT_EQ(WaitReport(m, AttemptId("r12", "s", 1))["reason"], "invalid assignment: metrics.path " +
                                                                   (tmp / "logs/m.ndjson") +
                                                                   " is not inside the workspace");
  EXPECT_EQ(WaitReport(m, AttemptId("r12", "s", 2))["reason"],
            "invalid assignment: checkpoint_dir '" + (tmp / "runs/r12/../../ckpt") +
                "' is not an absolute, normalised path");
  EXPECT_EQ(WaitReport(m, AttemptId("r12", "s", 3))["reason"],
            "invalid assignment: metrics.max_points must be a non-negative integer");
}

TEST(AgentTest, RegistersAgainWhenTheMasterForgetsIt) {
  TempDir tmp;
  FakeMaster m;
  m.Set([](FakeMaster& f) { f.fail_polls = 1; });  // 404
  AgentRun agent(Options(tmp, m));
  ASSERT_TRUE(WaitFor([&] { return m.RegisterCount() >= 2; }));
  m.Set([](FakeMaster& f) {
    f.fail_polls = 1;
    f.fail_status = 409;
    f.fail_code = "register";
  });
  ASSERT_TRUE(WaitFor([&] { return m.RegisterCount() >= 3; }));
  // A 409 for any other reason is not a re-register.
  m.Set([](FakeMaster& f) {
    f.fail_polls = 1;
    f.fail_code = "something_else";
  });
  size_t polls = m.PollCount();
  ASSERT_TRUE(WaitFor([&] { return m.PollCount() >= polls + 3; }));
  EXPECT_EQ(m.RegisterCount(), 3u);
  m.Assign(MakeAssignment(tmp, "r9", "s", 1, {"true"}));
  EXPECT_EQ(WaitReport(m, AttemptId("r9", "s", 1))["state"], "succeeded");
}

TEST(AgentTest, PendingReportsSurviveRestart) {
  TempDir tmp;
  FakeMaster m;
  m.Set([](FakeMaster& f) { f.ack = false; });
  const std::string counter = tmp / "count";
  Json a = MakeAssignment(tmp, "r10", "s", 1, {"sh", "-c", "echo x >> " + counter});
  const std::string id = AttemptId("r10", "s", 1);
  {
    AgentRun agent(Options(tmp, m));
    m.Assign(a);
    ASSERT_FALSE(WaitReport(m, id).is_null());
  }
  ASSERT_TRUE(PathExists(ReportFile(tmp, id)));
  // The stopped agent's long poll may still be parked in the fake master; it would
  // swallow the assignments below.
  ASSERT_TRUE(
      WaitFor([&] { return m.Get<int>([](const FakeMaster& f) { return f.in_flight; }) == 0; }));
  // An attempt that a crashed agent left "started".
  ASSERT_TRUE(WriteFileDurably(tmp / ("containers/c-1/attempts/" + EscapeAttemptId("r10/s/9")),
                               R"({"attempt_id":"r10/s/9","state":"started"})")
                  .ok());
  size_t before = m.ReportsFor(id).size();
  m.Set([](FakeMaster& f) { f.ack = true; });
  AgentRun agent(Options(tmp, m));
  EXPECT_TRUE(WaitFor([&] { return m.ReportsFor(id).size() > before; }));
  EXPECT_TRUE(WaitFor([&] { return !PathExists(ReportFile(tmp, id)); }));
  Json orphan = WaitReport(m, "r10/s/9");
  EXPECT_EQ(orphan["state"], "failed");
  EXPECT_EQ(orphan["reason"], "agent restarted while the attempt was running");
  // The restarted master re-sends the assignment: it is not run again.
  m.Assign(a);
  m.Assign(MakeAssignment(tmp, "r10", "s", 2, {"true"}));
  EXPECT_EQ(WaitReport(m, AttemptId("r10", "s", 2))["state"], "succeeded");
  EXPECT_EQ(CountLines(counter), 1);
}

TEST(AgentTest, ReleaseStopsAttemptsAndExitsZero) {
  TempDir tmp;
  FakeMaster m;
  AgentRun agent(Options(tmp, m));
  const std::string pidfile = tmp / "pid";
  m.Assign(MakeAssignment(
      tmp, "r11", "s", 1,
      {"sh", "-c",
       "echo $$ > " + pidfile + ".tmp; mv " + pidfile + ".tmp " + pidfile + "; exec sleep 100"}));
  ASSERT_TRUE(WaitFor([&] { return !Slurp(pidfile).empty(); }));
  pid_t pid = static_cast<pid_t>(std::stol(Slurp(pidfile)));
  m.Set([](FakeMaster& f) { f.release = true; });
  ASSERT_TRUE(WaitFor([&] { return agent.done(); }));
  EXPECT_EQ(agent.code(), kAgentExitOk);
  EXPECT_TRUE(ProcessGone(pid));
  Json r = WaitReport(m, AttemptId("r11", "s", 1));
  EXPECT_EQ(r["state"], "failed");
  EXPECT_NE(r["reason"].get<std::string>().find("container released"), std::string::npos);
}

TEST(AgentTest, OrphanedAgentKillsAttemptsAndExits) {
  TempDir tmp;
  auto m = std::make_unique<FakeMaster>();
  AgentOptions o = Options(tmp, *m);
  o.orphan_timeout = 500ms;
  AgentRun agent(o);
  const std::string pidfile = tmp / "pid";
  const std::string id = AttemptId("r12", "s", 1);
  m->Assign(MakeAssignment(
      tmp, "r12", "s", 1,
      {"sh", "-c",
       "sleep 100 & echo $! > " + pidfile + ".tmp; mv " + pidfile + ".tmp " + pidfile + "; wait"}));
  ASSERT_TRUE(WaitFor([&] { return !Slurp(pidfile).empty(); }));
  pid_t grandchild = static_cast<pid_t>(std::stol(Slurp(pidfile)));
  m->Stop();
  ASSERT_TRUE(WaitFor([&] { return agent.done(); }, 10s));
  EXPECT_EQ(agent.code(), kAgentExitOrphaned);
  EXPECT_TRUE(WaitFor([&] { return ProcessGone(grandchild); }));
  // The report waits on disk for a master to come back.
  auto text = ReadFile(ReportFile(tmp, id));
  ASSERT_TRUE(text.ok()) << text.status().ToString();
  Json r = Json::parse(*text);
  EXPECT_EQ(r["state"], "failed");
  EXPECT_NE(r["reason"].get<std::string>().find("orphaned"), std::string::npos);
}

TEST(AgentTest, StopKillsRunningAttempts) {
  TempDir tmp;
  FakeMaster m;
  auto agent = std::make_unique<AgentRun>(Options(tmp, m));
  const std::string pidfile = tmp / "pid";
  m.Assign(MakeAssignment(tmp, "r13", "s", 1,
                          {"sh", "-c",
                           "echo $$ > " + pidfile + ".tmp; mv " + pidfile + ".tmp " + pidfile +
                               "; exec sleep 100000"}));
  ASSERT_TRUE(WaitFor([&] { return !Slurp(pidfile).empty(); }));
  pid_t pid = static_cast<pid_t>(std::stol(Slurp(pidfile)));
  // A Join that waited for the step would outlast the test's CTest timeout.
  agent->Join();
  EXPECT_EQ(agent->code(), kAgentExitOk);
  EXPECT_TRUE(ProcessGone(pid));
}

// The credential (--credential-file) rides on every request, to --master and to the
// leader that the data dir's leader.json names; a redirect anywhere else is ignored, and
// no step sees it.
TEST(AgentTest, SendsItsCredentialOnlyToMastersOfItsDataDir) {
  TempDir tmp;
  FakeMaster a, b, stranger;
  const std::string secret = "cred-" + std::to_string(getpid()) + "-s3cr3t";
  ASSERT_TRUE(WriteFileDurably(tmp / "credential", secret + "\n", 0600).ok());
  AgentOptions o = Options(tmp, a);
  o.credential_file = tmp / "credential";
  a.Set([&](FakeMaster& f) { f.redirect_to = stranger.url(); });
  AgentRun agent(o);
  ASSERT_TRUE(
      WaitFor([&] { return a.Get<size_t>([](const FakeMaster& f) { return f.requests; }) >= 3; }));
  // leader.json names b: now a's redirect to b is followed.
  ASSERT_TRUE(
      WriteFileDurably(tmp / "leader.json", Json{{"address", b.url()}, {"epoch", 1}}.dump()).ok());
  a.Set([&](FakeMaster& f) { f.redirect_to = b.url(); });
  ASSERT_TRUE(WaitFor([&] { return b.RegisterCount() >= 1; }));
  b.Assign(MakeAssignment(tmp, "r30", "s", 1, {"sh", "-c", "env; cat /proc/$PPID/cmdline"}));
  EXPECT_EQ(WaitReport(b, AttemptId("r30", "s", 1))["state"], "succeeded");
  EXPECT_EQ(stranger.Get<size_t>([](const FakeMaster& f) { return f.requests; }), 0u);
  for (FakeMaster* m : {&a, &b}) {
    auto auths =
        m->Get<std::vector<std::string>>([](const FakeMaster& f) { return f.authorizations; });
    ASSERT_FALSE(auths.empty());
    for (const auto& h : auths) EXPECT_EQ(h, "Bearer " + secret);
  }
  std::string log = Slurp(tmp / "logs/r30/s/1.log");
  EXPECT_NE(log.find("EPOCH_ATTEMPT_ID=r30/s/1"), std::string::npos) << log;
  EXPECT_EQ(log.find(secret), std::string::npos) << log;
}

// An agent on https never follows leader.json (or a redirect) to plain http; one on
// http does (the control: both read their leader.json as often).
TEST(AgentTest, NeverMovesFromHttpsToHttp) {
  TempDir tls_dir, plain_dir;
  FakeMaster over_http_a, over_http_b;
  ASSERT_TRUE(WriteFileDurably(tls_dir / "leader.json",
                               Json{{"address", over_http_a.url()}, {"epoch", 1}}.dump())
                  .ok());
  ASSERT_TRUE(WriteFileDurably(plain_dir / "leader.json",
                               Json{{"address", over_http_b.url()}, {"epoch", 1}}.dump())
                  .ok());
  AgentOptions tls = Options(tls_dir, over_http_a, "c-tls");
  tls.master_url = "https://127.0.0.1:1";  // nothing listens: it looks for the leader
  AgentOptions plain = Options(plain_dir, over_http_b, "c-plain");
  plain.master_url = "http://127.0.0.1:1";
  AgentRun tls_agent(tls);
  AgentRun plain_agent(plain);
  ASSERT_TRUE(WaitFor([&] { return over_http_b.PollCount() >= 2; }));
  EXPECT_EQ(over_http_a.Get<size_t>([](const FakeMaster& f) { return f.requests; }), 0u);
}

}  // namespace
}  // namespace epoch::executors
