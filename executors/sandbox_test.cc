// Steps run sandboxed (epoch-sandbox, executors/sandbox_client.h): the real agent
// in-process against a FakeMaster, real shims, namespaces and users. Each step tries
// what a hostile tenant would and prints what happened; the tests assert on that output
// and on the host afterwards. They need root (CI runs them as root); as another user
// they are skipped, saying so.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <string>
#include <vector>

#include "common/files.h"
#include "common/sha256.h"
#include "executors/agent/agent.h"
#include "executors/agent/agent_test_util.h"
#include "executors/agent/fake_master.h"
#include "executors/sandbox_client.h"
#include "executors/test_util.h"

namespace epoch::executors {
namespace {

using namespace std::chrono_literals;
using testing::AgentRun;
using testing::EnsureTestUser;
using testing::FakeMaster;
using testing::PidsWithArg;
using testing::Slurp;
using testing::TempDir;
using testing::WaitFor;
using testing::WaitReport;
using testing::WriteText;

struct stat StatOf(const std::string& path) {
  struct stat st {};
  EXPECT_EQ(lstat(path.c_str(), &st), 0) << path;
  return st;
}

// A unique argument for `sleep`, so the host can find the step's processes (its pids
// are another namespace's).
std::string UniqueSleep() {
  static int n = 0;
  return "1000." + std::to_string(getpid()) + std::to_string(++n);
}

class SandboxTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "sandbox tests switch users: they need root (CI is)";
    uid1_ = EnsureTestUser("epoch-t1");
    uid2_ = EnsureTestUser("epoch-t2");
    ASSERT_GE(uid1_, 0) << "cannot create the user epoch-t1";
    ASSERT_GE(uid2_, 0) << "cannot create the user epoch-t2";
    // A data dir as epochd and its containers leave it: the control plane, another
    // container, and another tenant's finished run with its outputs and log.
    for (const auto& [rel, text] : std::vector<std::pair<std::string, std::string>>{
             {"tokens.json", "{\"tokens\": \"hashes\"}"},
             {"agent.token", "legacy-agent-token"},
             {"leader.json", "{\"address\": \"http://127.0.0.1:1\", \"epoch\": 1}"},
             {"tls/key.pem", "-----BEGIN PRIVATE KEY-----"},
             {"tls/cert.pem", "-----BEGIN CERTIFICATE-----"},
             {"store/CURRENT", "MANIFEST-000001"},
             {"containers/c-1/credential", "own-credential"},
             {"containers/c-other/credential", "other-credential"},
             {"containers/c-other/agent.json", "{}"},
             {"runs/other/secret.txt", "other tenant's data"},
             {"runs/other/s/1/outputs/model.bin", "other model"},
             {"logs/other/s/1.log", "other log"}}) {
      // World-writable, so that only the sandbox can be what stops a step.
      std::string path = tmp_ / rel;
      ASSERT_TRUE(MakeDirs(path.substr(0, path.find_last_of('/'))).ok());
      ASSERT_TRUE(WriteFileDurably(path, text, 0666).ok());
    }
    for (const auto& e : std::filesystem::recursive_directory_iterator(tmp_.path())) {
      if (e.is_directory()) {
        ASSERT_EQ(chmod(e.path().c_str(), 0777), 0);
      }
    }
  }

  AgentOptions Options(const std::string& id = "c-1") {
    AgentOptions o;
    o.id = id;
    o.master_url = m_.url();
    o.data_dir = tmp_.path();
    o.cpu_millis = 1000;
    o.memory_bytes = 256LL << 20;
    o.grace = 300ms;
    o.orphan_timeout = 30s;
    o.log_level = "warn";
    o.isolation = "required";  // a test here must never pass unsandboxed
    o.sandbox_path = EPOCH_SANDBOX_PATH;
    return o;
  }

  Json Assignment(const std::string& run, const std::string& step, int attempt,
                  const std::string& script, const std::string& run_as = "epoch-t1") {
    std::string a = std::to_string(attempt);
    return Json{{"attempt_id", run + "/" + step + "/" + a},
                {"run", run},
                {"step", step},
                {"attempt", attempt},
                {"argv", {"sh", "-c", script}},
                {"env", {{"DATA", tmp_.path()}, {"AGENT_PID", std::to_string(getpid())}}},
                {"workspace", tmp_ / ("runs/" + run)},
                {"outputs_dir", tmp_ / ("runs/" + run + "/" + step + "/" + a + "/outputs")},
                {"log_path", tmp_ / ("logs/" + run + "/" + step + "/" + a + ".log")},
                {"timeout_ms", 0},
                {"tenant", run_as == "epoch-t2" ? "t2" : "t1"},
                {"run_as", run_as},
                {"gpus", Json::array()}};
  }

  std::string Log(const std::string& run, const std::string& step, int attempt) {
    return Slurp(tmp_ / ("logs/" + run + "/" + step + "/" + std::to_string(attempt) + ".log"));
  }

  TempDir tmp_;
  FakeMaster m_;
  int uid1_ = -1, uid2_ = -1;
};

// Every path of the control plane and of other runs, tried by a step every way it can:
// all denied (or absent); its own workspace and outputs writable; it runs as its
// tenant's user and cannot see, signal or read the agent.
TEST_F(SandboxTest, AStepCannotReachTheControlPlaneOrOtherRuns) {
  const std::vector<std::string> forbidden = {"tokens.json",
                                              "agent.token",
                                              "leader.json",
                                              "tls",
                                              "tls/key.pem",
                                              "store",
                                              "store/CURRENT",
                                              "containers",
                                              "containers/c-1/credential",
                                              "containers/c-other/credential",
                                              "containers/c-other/agent.json",
                                              "runs/other",
                                              "runs/other/secret.txt",
                                              "runs/other/s/1/outputs/model.bin",
                                              "logs",
                                              "logs/other/s/1.log",
                                              "logs/r1/probe/1.log"};
  std::string script = "bad=0; for p in";
  for (const auto& f : forbidden) script += " \"$DATA/" + f + "\"";
  script += R"SH(; do
    if cat "$p" >/dev/null 2>&1 || ls "$p" >/dev/null 2>&1 || (echo x >> "$p") 2>/dev/null ||
       mkdir "$p/evil" 2>/dev/null; then echo "LEAKED $p"; bad=1; else echo "denied $p"; fi
  done
  if kill -0 $AGENT_PID 2>/dev/null || kill -9 $AGENT_PID 2>/dev/null; then echo "LEAKED kill"; bad=1; else echo "denied kill $AGENT_PID"; fi
  if cat /proc/$AGENT_PID/environ >/dev/null 2>&1; then echo "LEAKED environ"; bad=1; else echo "denied environ"; fi
  if touch /usr/epoch-evil 2>/dev/null; then echo "LEAKED host write"; bad=1; else echo "denied host write"; fi
  echo "uid=$(id -u) gid=$(id -g)"
  echo "processes=$(ls /proc | grep -c '^[0-9]')"
  echo "tmpdir=$TMPDIR home=$HOME user=$USER"
  echo mine > "$EPOCH_WORKSPACE/mine.txt" && echo out > "$EPOCH_OUTPUTS/out.txt" && echo "wrote own"
  exit $bad)SH";
  AgentRun agent(Options());
  m_.Assign(Assignment("r1", "probe", 1, script));
  Json r = WaitReport(m_, "r1/probe/1");
  std::string log = Log("r1", "probe", 1);
  ASSERT_FALSE(r.is_null()) << "no report";
  EXPECT_EQ(r["state"], "succeeded") << r.dump() << "\n" << log;
  for (const auto& f : forbidden) {
    EXPECT_NE(log.find("denied " + tmp_.path() + "/" + f + "\n"), std::string::npos) << f << "\n"
                                                                                     << log;
  }
  EXPECT_EQ(log.find("LEAKED"), std::string::npos) << log;
  EXPECT_NE(log.find("denied kill " + std::to_string(getpid())), std::string::npos) << log;
  EXPECT_NE(log.find("denied environ"), std::string::npos) << log;
  EXPECT_NE(log.find("denied host write"), std::string::npos) << log;
  EXPECT_NE(log.find("uid=" + std::to_string(uid1_) + " "), std::string::npos) << log;
  EXPECT_NE(log.find("tmpdir=/tmp home="), std::string::npos) << log;
  EXPECT_NE(log.find(" user=epoch-t1\n"), std::string::npos) << log;
  EXPECT_NE(log.find("wrote own"), std::string::npos) << log;
  // Its namespace holds init, the shell and what the shell runs: nothing of the host.
  auto at = log.find("processes=");
  ASSERT_NE(at, std::string::npos);
  EXPECT_LT(std::stoi(log.substr(at + 10)), 8) << log;
  EXPECT_EQ(r["outputs"].size(), 1u) << r.dump();
  EXPECT_EQ(r["outputs"][0]["name"], "out.txt");
  EXPECT_EQ(Slurp(tmp_ / "runs/r1/mine.txt"), "mine\n");

  // Nothing on the host changed.
  EXPECT_EQ(Slurp(tmp_ / "tokens.json"), "{\"tokens\": \"hashes\"}");
  EXPECT_EQ(Slurp(tmp_ / "containers/c-other/credential"), "other-credential");
  EXPECT_FALSE(PathExists(tmp_ / "store/evil"));
  EXPECT_FALSE(PathExists(tmp_ / "runs/other/evil"));
  EXPECT_FALSE(PathExists("/usr/epoch-evil"));
  // The attempt's files are its user's, and nobody else's.
  for (const auto& [rel, mode] :
       std::vector<std::pair<std::string, mode_t>>{{"runs/r1", 0700},
                                                   {"runs/r1/probe/1/outputs", 0700},
                                                   {"logs/r1", 0750},
                                                   {"logs/r1/probe", 0750},
                                                   {"logs/r1/probe/1.log", 0640}}) {
    struct stat st = StatOf(tmp_ / rel);
    EXPECT_EQ(st.st_uid, static_cast<uid_t>(uid1_)) << rel;
    EXPECT_EQ(st.st_mode & 07777, mode) << rel;
  }
  struct stat cst = StatOf(tmp_ / "containers/c-1");
  EXPECT_EQ(cst.st_uid, 0u);
  EXPECT_EQ(cst.st_mode & 07777, 0700u);
}

// Two tenants' runs: each sees its own workspace, neither the other's nor its /tmp.
TEST_F(SandboxTest, TenantsSeeNeitherEachOthersRunsNorTmp) {
  AgentRun agent(Options());
  m_.Assign(Assignment("ra", "s", 1,
                       "echo a-secret > $EPOCH_WORKSPACE/a.txt; echo a-tmp > /tmp/a-tmp; "
                       "ls /tmp/a-tmp && echo wrote"));
  Json ra = WaitReport(m_, "ra/s/1");
  ASSERT_EQ(ra["state"], "succeeded") << ra.dump() << Log("ra", "s", 1);
  EXPECT_NE(Log("ra", "s", 1).find("wrote"), std::string::npos);
  m_.Assign(
      Assignment("rb", "s", 1,
                 "for p in $DATA/runs/ra/a.txt $DATA/runs/ra /tmp/a-tmp; do "
                 "if ls $p >/dev/null 2>&1; then echo LEAKED $p; else echo absent $p; fi; done; "
                 "echo uid=$(id -u); echo b > $EPOCH_WORKSPACE/b.txt",
                 "epoch-t2"));
  Json rb = WaitReport(m_, "rb/s/1");
  std::string log = Log("rb", "s", 1);
  ASSERT_EQ(rb["state"], "succeeded") << rb.dump() << log;
  EXPECT_NE(log.find("absent " + tmp_.path() + "/runs/ra/a.txt"), std::string::npos) << log;
  EXPECT_NE(log.find("absent " + tmp_.path() + "/runs/ra\n"), std::string::npos) << log;
  EXPECT_NE(log.find("absent /tmp/a-tmp"), std::string::npos) << log;
  EXPECT_EQ(log.find("LEAKED"), std::string::npos) << log;
  EXPECT_NE(log.find("uid=" + std::to_string(uid2_)), std::string::npos) << log;
  EXPECT_EQ(StatOf(tmp_ / "runs/rb/b.txt").st_uid, static_cast<uid_t>(uid2_));
  EXPECT_EQ(StatOf(tmp_ / "runs/ra").st_uid, static_cast<uid_t>(uid1_));
}

// Listed mounts appear as listed (read-only or read-write); an upstream output the step
// reads from another run (a cache hit's source) appears read-only, and only it.
TEST_F(SandboxTest, MountsAndUpstreamInputsAreExposedAsListed) {
  ASSERT_TRUE(MakeDirs(tmp_ / "runs/shared").ok());
  ASSERT_EQ(chown((tmp_ / "runs/shared").c_str(), static_cast<uid_t>(uid1_), 0), 0);
  ASSERT_TRUE(MakeDirs(tmp_ / "runs/src/s/1/outputs").ok());
  ASSERT_TRUE(WriteFileDurably(tmp_ / "runs/src/s/1/outputs/data.txt", "upstream\n").ok());
  ASSERT_TRUE(WriteFileDurably(tmp_ / "runs/src/unlisted.txt", "not yours").ok());
  Json a = Assignment("r3", "s", 1,
                      "cat $DATA/runs/other/s/1/outputs/model.bin; echo; "
                      "{ echo x >> $DATA/runs/other/s/1/outputs/model.bin; } 2>/dev/null && echo "
                      "LEAKED ro || echo denied ro write; "
                      "echo new > $DATA/runs/shared/new.txt && echo wrote rw; "
                      "cat $DATA/runs/src/s/1/outputs/data.txt; "
                      "{ echo x >> $DATA/runs/src/s/1/outputs/data.txt; } 2>/dev/null && echo "
                      "LEAKED input || echo denied input write; "
                      "ls $DATA/runs/src/unlisted.txt >/dev/null 2>&1 && echo LEAKED unlisted || "
                      "echo absent unlisted");
  // The other tenant's output is listed read-only, a shared folder read-write.
  a["mounts"] = Json::array({{{"path", tmp_ / "runs/other/s/1/outputs"}, {"read_only", true}},
                             {{"path", tmp_ / "runs/shared"}, {"read_only", false}}});
  a["inputs"] = Json::array(
      {{{"path", tmp_ / "runs/src/s/1/outputs/data.txt"}, {"sha256", Sha256Hex("upstream\n")}}});
  AgentRun agent(Options());
  m_.Assign(a);
  Json r = WaitReport(m_, "r3/s/1");
  std::string log = Log("r3", "s", 1);
  ASSERT_EQ(r["state"], "succeeded") << r.dump() << log;
  EXPECT_NE(log.find("other model\ndenied ro write\nwrote rw\nupstream\ndenied input write\n"
                     "absent unlisted\n"),
            std::string::npos)
      << log;
  EXPECT_EQ(Slurp(tmp_ / "runs/other/s/1/outputs/model.bin"), "other model");
  EXPECT_EQ(Slurp(tmp_ / "runs/shared/new.txt"), "new\n");
  EXPECT_EQ(Slurp(tmp_ / "runs/src/s/1/outputs/data.txt"), "upstream\n");
}

// Mounts and users the agent must not honour fail the attempt with a clear reason, and
// the step never runs.
TEST_F(SandboxTest, BadMountsAndUsersAreRefusedBeforeAnythingRuns) {
  AgentRun agent(Options());
  const std::string ran = "touch $EPOCH_WORKSPACE/ran";
  struct Case {
    Json mounts;
    std::string run_as, reason;
  };
  std::vector<Case> cases = {
      {Json::array(), "nosuch-user-x",
       "invalid assignment: run_as: no user 'nosuch-user-x' on this host"},
      {Json::array(), "epoch-t1:nosuch-group-x",
       "invalid assignment: run_as: no group 'nosuch-group-x' on this host"},
      {Json::array({{{"path", "/tmp"}}}), "epoch-t1",
       "invalid assignment: mount /tmp holds the data dir"},
      {Json::array({{{"path", tmp_ / "containers"}}}), "epoch-t1",
       "invalid assignment: mount " + tmp_.path() +
           "/containers is in the data dir but not inside " + tmp_.path() + "/runs"},
      {Json::array({{{"path", tmp_ / "runs/../tokens.json"}}}), "epoch-t1",
       "invalid assignment: mount '" + tmp_.path() +
           "/runs/../tokens.json' is not an absolute, normalised path"},
      {Json::array({{{"path", "relative/x"}}}), "epoch-t1",
       "invalid assignment: mount 'relative/x' is not an absolute, normalised path"},
      {Json::array({{{"path", "/proc/1/root"}}}), "epoch-t1",
       "invalid assignment: mount /proc/1/root is under /proc"},
      {Json::array({{{"path", "/nonexistent/epoch-x"}}}), "epoch-t1",
       "invalid assignment: mount /nonexistent/epoch-x: No such file or directory"},
      {Json::array({{{"path", tmp_ / "runs/other"}, {"read_only", "yes"}}}), "epoch-t1",
       "invalid assignment: mounts: read_only must be a boolean"}};
  for (size_t i = 0; i < cases.size(); ++i) {
    Json a = Assignment("r4", "s", static_cast<int>(i + 1), ran, cases[i].run_as);
    a["mounts"] = cases[i].mounts;
    m_.Assign(a);
  }
  for (size_t i = 0; i < cases.size(); ++i) {
    Json r = WaitReport(m_, "r4/s/" + std::to_string(i + 1));
    EXPECT_EQ(r["state"], "failed") << i << r.dump();
    EXPECT_EQ(r["reason"], cases[i].reason) << i;
  }
  EXPECT_FALSE(PathExists(tmp_ / "runs/r4/ran"));
}

// A symlink a step leaves in its workspace does not make the agent create or chown
// anything outside it (attempt 2's folder planted as a link to the agent's state).
TEST_F(SandboxTest, ASymlinkInTheWorkspaceIsNotFollowed) {
  AgentRun agent(Options());
  m_.Assign(Assignment("r5", "s", 1, "ln -s $DATA/containers/c-1 $EPOCH_WORKSPACE/s/2"));
  ASSERT_EQ(WaitReport(m_, "r5/s/1")["state"], "succeeded") << Log("r5", "s", 1);
  ASSERT_TRUE(std::filesystem::is_symlink(tmp_ / "runs/r5/s/2"));
  m_.Assign(Assignment("r5", "s", 2, "touch $EPOCH_OUTPUTS/x"));
  Json r = WaitReport(m_, "r5/s/2");
  EXPECT_EQ(r["state"], "failed");
  EXPECT_NE(
      r["reason"].get<std::string>().find("spawn failed: failed_precondition: " + tmp_.path() +
                                          "/runs/r5/s/2 is a symbolic link or not a directory"),
      std::string::npos)
      << r.dump();
  EXPECT_FALSE(PathExists(tmp_ / "containers/c-1/outputs"));
  EXPECT_EQ(StatOf(tmp_ / "containers/c-1").st_uid, 0u);

  // Its outputs folder swapped for a link to another tenant's: nothing of theirs is
  // reported (no outputs, none of their metrics).
  ASSERT_TRUE(
      WriteFileDurably(tmp_ / "runs/other/s/1/outputs/metrics.json", "{\"theirs\": 1}").ok());
  m_.Assign(Assignment(
      "r5", "t", 1, "rm -rf $EPOCH_OUTPUTS && ln -s $DATA/runs/other/s/1/outputs $EPOCH_OUTPUTS"));
  Json r3 = WaitReport(m_, "r5/t/1");
  EXPECT_EQ(r3["state"], "succeeded") << r3.dump() << Log("r5", "t", 1);
  EXPECT_EQ(r3["outputs"], Json::array()) << r3.dump();
  EXPECT_EQ(r3["metrics"], Json::object()) << r3.dump();
  EXPECT_EQ(r3["outputs_error"], "the outputs folder is not a folder of its own (a symlink?)");
}

// Exit codes, signals and exec failures read exactly as without a sandbox.
TEST_F(SandboxTest, ExitCodesSignalsAndExecFailuresAreReportedAsBefore) {
  AgentRun agent(Options());
  m_.Assign(Assignment("r6", "s", 1, "exit 7"));
  m_.Assign(Assignment("r6", "s", 2, "kill -SEGV $$"));
  Json bad = Assignment("r6", "s", 3, "");
  bad["argv"] = Json::array({"/nonexistent/step-binary"});
  m_.Assign(bad);
  m_.Assign(Assignment("r6", "s", 4, "true"));
  Json r1 = WaitReport(m_, "r6/s/1");
  EXPECT_EQ(r1["state"], "failed");
  EXPECT_EQ(r1["exit_code"], 7);
  EXPECT_EQ(r1["reason"], "exit code 7");
  Json r2 = WaitReport(m_, "r6/s/2");
  EXPECT_EQ(r2["state"], "failed");
  EXPECT_TRUE(r2["exit_code"].is_null()) << r2.dump();
  EXPECT_EQ(r2["signal"], SIGSEGV);
  EXPECT_EQ(r2["reason"], "killed by signal 11");
  Json r3 = WaitReport(m_, "r6/s/3");
  EXPECT_EQ(r3["state"], "failed");
  EXPECT_EQ(r3["exit_code"], 127);
  EXPECT_EQ(r3["reason"], "exec failed: No such file or directory");
  EXPECT_NE(Log("r6", "s", 3)
                .find("epoch: /nonexistent/step-binary: exec failed: No such file or "
                      "directory\n"),
            std::string::npos);
  Json r4 = WaitReport(m_, "r6/s/4");
  EXPECT_EQ(r4["state"], "succeeded");
  EXPECT_EQ(r4["reason"], "exit code 0");
}

// A process the step detaches (setsid, background) dies when the step ends: its PID
// namespace goes with init.
TEST_F(SandboxTest, DetachedProcessesDieWithTheStep) {
  const std::string arg = UniqueSleep();
  AgentRun agent(Options());
  m_.Assign(Assignment("r7", "s", 1,
                       "setsid sleep " + arg +
                           " >/dev/null 2>&1 & touch $EPOCH_WORKSPACE/started; "
                           "while [ ! -e $EPOCH_WORKSPACE/go ]; do sleep 0.01; done"));
  ASSERT_TRUE(WaitFor([&] { return PathExists(tmp_ / "runs/r7/started"); }));
  ASSERT_TRUE(WaitFor([&] { return PidsWithArg(arg).size() == 1; })) << "no detached sleep";
  WriteText(tmp_ / "runs/r7/go", "");
  Json r = WaitReport(m_, "r7/s/1");
  EXPECT_EQ(r["state"], "succeeded") << r.dump();
  EXPECT_TRUE(WaitFor([&] { return PidsWithArg(arg).empty(); })) << "the detached sleep survived";
}

// The agent's SIGTERM (a cancel) reaches the step, whose trap runs; a step that ignores
// it is SIGKILLed after the grace, with everything it started.
TEST_F(SandboxTest, SigtermReachesTheStepAndTheGraceStillKills) {
  const std::string arg = UniqueSleep();
  // A grace long enough for the trap even under the sanitizers (which deliver signals
  // late and slow every fork); the second step still shows the grace ends in SIGKILL.
  AgentOptions options = Options();
  options.grace = 2s;
  AgentRun agent(options);
  m_.Assign(Assignment("r8", "s", 1,
                       "trap 'echo trapped > $EPOCH_WORKSPACE/term; exit 3' TERM; "
                       "touch $EPOCH_WORKSPACE/ready; while true; do sleep 0.05; done"));
  m_.Assign(Assignment("r8", "s", 2,
                       "trap '' TERM; sleep " + arg + " & touch $EPOCH_WORKSPACE/ready2; wait"));
  ASSERT_TRUE(WaitFor([&] { return PathExists(tmp_ / "runs/r8/ready"); }));
  ASSERT_TRUE(WaitFor([&] { return PathExists(tmp_ / "runs/r8/ready2"); }));
  // The background sleep is forked before ready2 is touched, but under load its exec
  // (which gives it the argument we look for) can come later.
  ASSERT_TRUE(WaitFor([&] { return PidsWithArg(arg).size() == 1; })) << "no step sleep";
  m_.Cancel("r8/s/1");
  m_.Cancel("r8/s/2");
  Json r1 = WaitReport(m_, "r8/s/1");
  EXPECT_EQ(r1["state"], "cancelled") << r1.dump();
  EXPECT_EQ(r1["exit_code"], 3) << r1.dump();
  EXPECT_EQ(Slurp(tmp_ / "runs/r8/term"), "trapped\n");
  Json r2 = WaitReport(m_, "r8/s/2");
  EXPECT_EQ(r2["state"], "cancelled") << r2.dump();
  EXPECT_EQ(r2["signal"], SIGKILL) << r2.dump();
  EXPECT_GE(r2["usage"]["wall_s"].get<double>(), 2.0);
  EXPECT_TRUE(WaitFor([&] { return PidsWithArg(arg).empty(); })) << "the step's sleep survived";
}

// kill -9 of the shim's process group (what the agent's last resort is) takes the whole
// namespace down: init dies with the shim (PDEATHSIG), the kernel kills the rest.
TEST_F(SandboxTest, KillingTheShimsGroupTakesTheNamespaceDown) {
  const std::string arg = UniqueSleep();
  ASSERT_TRUE(MakeDirs(tmp_ / "runs/r9").ok());
  ASSERT_TRUE(MakeDirs(tmp_ / "logs/r9/s").ok());
  sandbox::SandboxSpec spec;
  spec.isolate = true;
  spec.argv = {"sh", "-c", "sleep " + arg + " & sleep " + arg + "; wait"};
  spec.env = ChildEnvironment({});
  spec.cwd = tmp_ / "runs/r9";
  spec.data_dir = tmp_.path();
  spec.binds = {{tmp_ / "runs/r9", false, tmp_ / "runs/r9"}};
  auto p = SpawnSandboxed(EPOCH_SANDBOX_PATH, spec, tmp_ / "logs/r9/s/1.log");
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  ASSERT_TRUE(WaitFor([&] { return PidsWithArg(arg).size() == 2; }));
  ASSERT_TRUE((*p)->SignalGroup(SIGKILL).ok());
  auto e = (*p)->Wait();
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e->signal, SIGKILL);
  EXPECT_FALSE(e->log_reported);  // killed before it could say
  EXPECT_TRUE(WaitFor([&] { return PidsWithArg(arg).empty(); })) << "the namespace survived";
}

// A 1 KiB cap on 1 MiB of output: the log stops at 1 KiB with one line saying so, the
// step finishes normally, and the report counts both.
TEST_F(SandboxTest, TheLogCapTruncatesWithAMarkerAndCounts) {
  AgentRun agent(Options());
  Json a = Assignment("r10", "s", 1,
                      "head -c 1048576 /dev/zero | tr '\\0' a; echo '{\"done\": 1}' > "
                      "$EPOCH_OUTPUTS/metrics.json");
  a["max_log_bytes"] = 1024;
  m_.Assign(a);
  Json r = WaitReport(m_, "r10/s/1");
  ASSERT_EQ(r["state"], "succeeded") << r.dump();
  EXPECT_EQ(r["metrics"]["done"], 1);
  EXPECT_EQ(r["log_bytes"], 1024);
  EXPECT_EQ(r["log_dropped_bytes"], 1048576 - 1024);
  EXPECT_EQ(r["log_truncated"], true);
  std::string log = Log("r10", "s", 1);
  EXPECT_EQ(log, std::string(1024, 'a') +
                     "\nepoch: log truncated at 1024 bytes (max_log_bytes); the rest of the "
                     "output is discarded\n");
  // Under the cap nothing is cut.
  Json b = Assignment("r10", "s", 2, "echo small");
  b["max_log_bytes"] = 1024;
  m_.Assign(b);
  Json r2 = WaitReport(m_, "r10/s/2");
  EXPECT_EQ(r2["log_bytes"], 6);
  EXPECT_EQ(r2["log_truncated"], false);
  EXPECT_EQ(Log("r10", "s", 2), "small\n");
}

// Live metrics and checkpoints under the sandbox: the file and folder are the step
// user's, inside its workspace, and what it writes there reaches the master.
TEST_F(SandboxTest, LiveMetricsAndCheckpointsAreTheStepUsers) {
  AgentRun agent(Options());
  Json a = Assignment("r11", "train", 1,
                      "printf '{\"loss\": 0.5}\\n{\"loss\": 0.25}\\n' >> \"$EPOCH_METRICS\" && "
                      "printf w > \"$EPOCH_CHECKPOINT_DIR/w.pt\" && "
                      "echo '{\"checkpoint\": \"w.pt\", \"epoch\": 3}' >> \"$EPOCH_METRICS\"");
  a["metrics"] = {{"path", tmp_ / "runs/r11/train/1/metrics.ndjson"}, {"interval_ms", 100}};
  a["checkpoint_dir"] = tmp_ / "runs/r11/train/checkpoints";
  m_.Assign(a);
  Json r = WaitReport(m_, "r11/train/1");
  ASSERT_EQ(r["state"], "succeeded") << r.dump() << Log("r11", "train", 1);
  EXPECT_EQ(r["metrics"], Json({{"loss", 0.25}, {"epoch", 3}}));  // a line's epoch is a metric
  EXPECT_EQ(StatOf(tmp_ / "runs/r11/train/1/metrics.ndjson").st_uid, static_cast<uid_t>(uid1_));
  struct stat dir = StatOf(tmp_ / "runs/r11/train/checkpoints");
  EXPECT_EQ(dir.st_uid, static_cast<uid_t>(uid1_));
  EXPECT_EQ(dir.st_mode & 0777, 0700u);
  ASSERT_TRUE(WaitFor([&] { return m_.MetricPointsFor("r11/train/1").size() == 3; }));
  Json checkpoints = Json::array();
  for (const auto& b : m_.MetricBatchesFor("r11/train/1")) {
    for (const auto& c : b["checkpoints"]) checkpoints.push_back(c);
  }
  EXPECT_EQ(
      checkpoints,
      Json::array({{{"file", "w.pt"}, {"sha256", Sha256Hex("w")}, {"size", 1}, {"epoch", 3}}}));
}

// What the agent registers: what is in force.
TEST_F(SandboxTest, RegistersTheIsolationInForce) {
  AgentRun agent(Options());
  ASSERT_TRUE(WaitFor([&] { return m_.RegisterCount() >= 1; }));
  Json reg = m_.Get<Json>([](const FakeMaster& f) { return f.registers.front(); });
  EXPECT_EQ(
      reg["isolation"],
      Json({{"mode", "required"}, {"run_as", true}, {"sandbox", "namespaces"}, {"reason", ""}}));
}

TEST(IsolationTest, DecidesWhatIsInForce) {
  ProbeResult ok{true, true, "namespaces"};
  ProbeResult no_ns{true, false, "unshare(...): Operation not permitted"};
  ProbeResult no_shim{false, false, "cannot run /x/epoch-sandbox: No such file or directory"};
  auto on = DecideIsolation("auto", true, ok);
  ASSERT_TRUE(on.ok());
  EXPECT_TRUE(on->run_as);
  EXPECT_TRUE(on->shim);
  EXPECT_EQ(on->sandbox, "namespaces");
  EXPECT_EQ(on->reason, "");
  auto user = DecideIsolation("auto", false, ProbeResult{true, false, "not root"});
  ASSERT_TRUE(user.ok());
  EXPECT_FALSE(user->run_as);
  EXPECT_TRUE(user->shim);
  EXPECT_EQ(user->sandbox, "none");
  EXPECT_EQ(user->reason, "the agent is not root: steps run as its user, without namespaces");
  auto off = DecideIsolation("off", true, ok);
  ASSERT_TRUE(off.ok());
  EXPECT_FALSE(off->run_as);
  EXPECT_TRUE(off->shim);
  EXPECT_EQ(off->sandbox, "none");
  EXPECT_EQ(off->reason, "isolation off");
  auto bare = DecideIsolation("auto", true, no_shim);
  ASSERT_TRUE(bare.ok());
  EXPECT_FALSE(bare->shim);
  EXPECT_EQ(bare->reason.rfind("cannot run /x/epoch-sandbox", 0), 0u) << bare->reason;
  auto req = DecideIsolation("required", true, no_ns);
  EXPECT_EQ(req.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(req.status().message(),
            "--isolation required, but no sandbox here: unshare(...): Operation not permitted");
  EXPECT_EQ(DecideIsolation("required", false, ok).status().code(),
            StatusCode::kFailedPrecondition);
  EXPECT_EQ(DecideIsolation("sometimes", true, ok).status().code(), StatusCode::kInvalidArgument);
}

// An agent that must isolate and cannot refuses to start, saying why.
TEST(IsolationTest, RequiredWithoutASandboxRefusesToStart) {
  TempDir tmp;
  FakeMaster m;
  AgentOptions o;
  o.id = "c-req";
  o.master_url = m.url();
  o.data_dir = tmp.path();
  o.cpu_millis = 1000;
  o.memory_bytes = 1 << 30;
  o.isolation = "required";
  o.sandbox_path = tmp / "no-such-epoch-sandbox";
  AgentRun agent(o);
  ASSERT_TRUE(WaitFor([&] { return agent.done(); }));
  EXPECT_EQ(agent.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(agent.status().message().find("--isolation required, but cannot run " + o.sandbox_path),
            std::string::npos)
      << agent.status().ToString();
  EXPECT_EQ(m.RegisterCount(), 0u);
}

// The shim as the agent runs it without isolation (the agent is not root, or
// --isolation off): the step still runs, its log is still capped, exec failures read
// the same, and nothing is switched.
TEST(SandboxShimTest, WithoutIsolationItStillCapsAndReports) {
  TempDir tmp;
  sandbox::SandboxSpec spec;
  spec.argv = {"sh", "-c", "echo uid=$(id -u); head -c 5000 /dev/zero | tr '\\0' b; exit 4"};
  spec.env = ChildEnvironment({{"PATH", "/usr/bin:/bin"}});  // every entry searchable
  spec.cwd = tmp.path();
  spec.max_log_bytes = 100;
  auto p = SpawnSandboxed(EPOCH_SANDBOX_PATH, spec, tmp / "a.log");
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  auto e = (*p)->Wait();
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e->exit_code, 4);
  EXPECT_EQ(e->reason, "exit code 4");
  EXPECT_TRUE(e->log_reported);
  EXPECT_TRUE(e->log_truncated);
  EXPECT_EQ(e->log_bytes, 100);
  std::string head = "uid=" + std::to_string(geteuid()) + "\n";
  EXPECT_EQ(e->log_dropped_bytes, static_cast<int64_t>(head.size() + 5000 - 100));
  EXPECT_EQ(Slurp(tmp / "a.log").substr(0, head.size()), head);

  spec.argv = {"no-such-command-epoch"};
  p = SpawnSandboxed(EPOCH_SANDBOX_PATH, spec, tmp / "b.log");
  ASSERT_TRUE(p.ok());
  e = (*p)->Wait();
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e->exit_code, 127);
  EXPECT_EQ(e->reason, "exec failed: No such file or directory");
}

}  // namespace
}  // namespace epoch::executors
