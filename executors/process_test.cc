#include "executors/process.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "executors/test_util.h"

namespace epoch::executors {
namespace {

using testing::ProcessGone;
using testing::Slurp;
using testing::TempDir;
using testing::WaitFor;

ExitInfo RunToEnd(ProcessSpec spec) {
  auto child = Spawn(spec);
  EXPECT_TRUE(child.ok()) << child.status().ToString();
  if (!child.ok()) return {};
  auto info = (*child)->Wait();
  EXPECT_TRUE(info.ok()) << info.status().ToString();
  return info.ok() ? *info : ExitInfo{};
}

TEST(ProcessTest, ExitCodeAndLogAppend) {
  TempDir tmp;
  ProcessSpec spec;
  spec.argv = {"sh", "-c", "echo out; echo err >&2; exit 3"};
  spec.log_path = tmp / "deep/er/run.log";  // parent dirs created
  ExitInfo e = RunToEnd(spec);
  EXPECT_EQ(e.exit_code, 3);
  EXPECT_FALSE(e.signal.has_value());
  EXPECT_EQ(e.reason, "exit code 3");
  // A second run appends.
  spec.argv = {"sh", "-c", "echo again"};
  e = RunToEnd(spec);
  EXPECT_EQ(e.exit_code, 0);
  EXPECT_EQ(Slurp(tmp / "deep/er/run.log"), "out\nerr\nagain\n");
}

TEST(ProcessTest, KilledBySignal) {
  ProcessSpec spec;
  spec.argv = {"sh", "-c", "kill -9 $$"};
  ExitInfo e = RunToEnd(spec);
  EXPECT_FALSE(e.exit_code.has_value());
  EXPECT_EQ(e.signal, SIGKILL);
  EXPECT_EQ(e.reason, "killed by signal 9");
}

TEST(ProcessTest, UsageOfBusyLoop) {
  ProcessSpec spec;
  spec.argv = {"sh", "-c", "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done"};
  ExitInfo e = RunToEnd(spec);
  EXPECT_EQ(e.exit_code, 0);
  EXPECT_GT(e.cpu_s, 0.01);
  EXPECT_GE(e.wall_s, e.cpu_s * 0.5);
  EXPECT_GT(e.max_rss_kb, 100);
}

TEST(ProcessTest, EnvWorkingDirAndOwnGroup) {
  TempDir tmp;
  ProcessSpec spec;
  spec.argv = {"sh", "-c", "echo $FOO; pwd; echo $(cut -d' ' -f5 /proc/$$/stat) $$"};
  spec.env = {{"FOO", "bar baz"}};
  spec.working_dir = tmp.path();
  spec.log_path = tmp / "log";
  ExitInfo e = RunToEnd(spec);
  EXPECT_EQ(e.exit_code, 0);
  std::string log = Slurp(tmp / "log");
  EXPECT_NE(log.find("bar baz"), std::string::npos) << log;
  EXPECT_NE(log.find(tmp.path() + "\n"), std::string::npos) << log;
  // pgid == pid: the child leads its own process group.
  std::istringstream in(log.substr(log.find(tmp.path() + "\n") + tmp.path().size() + 1));
  long pgid = 0, pid = -1;
  ASSERT_TRUE(in >> pgid >> pid) << log;
  EXPECT_EQ(pgid, pid) << log;
}

TEST(ProcessTest, InheritsOnlyTheMinimalEnvironment) {
  TempDir tmp;
  setenv("EPOCH_TEST_SECRET", "leak", 1);
  ProcessSpec spec;
  spec.argv = {"sh", "-c", "echo [${EPOCH_TEST_SECRET}] [${PATH:+path}]"};
  spec.log_path = tmp / "log";
  ExitInfo e = RunToEnd(spec);
  unsetenv("EPOCH_TEST_SECRET");
  EXPECT_EQ(e.exit_code, 0);
  EXPECT_EQ(Slurp(tmp / "log"), "[] [path]\n");
}

// pass_fds become the child's 3, 4, ... (how the agent hands epoch-sandbox its spec
// and status fds); the parent's copies stay the parent's.
TEST(ProcessTest, PassedFdsAreTheChildsThreeAndFour) {
  TempDir tmp;
  int a[2], b[2];
  ASSERT_EQ(pipe2(a, O_CLOEXEC), 0);
  ASSERT_EQ(pipe2(b, O_CLOEXEC), 0);
  ProcessSpec spec;
  spec.argv = {"sh", "-c", "echo three >&3; echo four >&4; echo five >&5 || echo no-five"};
  spec.log_path = tmp / "log";
  spec.pass_fds = {b[1], a[1]};  // crossed on purpose
  ExitInfo e = RunToEnd(spec);
  close(a[1]);
  close(b[1]);
  EXPECT_EQ(e.exit_code, 0);
  char buf[64] = {0};
  EXPECT_EQ(read(b[0], buf, sizeof(buf)), 6);
  EXPECT_STREQ(buf, "three\n");
  char buf2[64] = {0};
  EXPECT_EQ(read(a[0], buf2, sizeof(buf2)), 5);
  EXPECT_STREQ(buf2, "four\n");
  EXPECT_NE(Slurp(tmp / "log").find("no-five"), std::string::npos) << Slurp(tmp / "log");
  close(a[0]);
  close(b[0]);
}

TEST(ProcessTest, ExecFailureIs127) {
  TempDir tmp;
  ProcessSpec spec;
  spec.argv = {"/nonexistent/epoch-no-such-command", "x"};
  spec.log_path = tmp / "log";
  ExitInfo e = RunToEnd(spec);
  EXPECT_EQ(e.exit_code, 127);
  EXPECT_EQ(e.reason, "exec failed: No such file or directory");
  EXPECT_NE(Slurp(tmp / "log").find("exec failed"), std::string::npos);

  spec.argv = {"epoch-no-such-command-on-path"};
  e = RunToEnd(spec);
  EXPECT_EQ(e.exit_code, 127);
  EXPECT_EQ(e.reason.rfind("exec failed: ", 0), 0u) << e.reason;
}

// The command is looked up as execvp would, on the child's own PATH (spec.env's), while
// the spawner's environment stays as it was: the child shares the spawner's memory
// until it execs.
TEST(ProcessTest, CommandIsFoundOnTheChildsPathAsExecvpWould) {
  TempDir tmp;
  std::filesystem::create_directories(tmp / "a");
  std::filesystem::create_directories(tmp / "b");
  auto script = [&](const std::string& path, const std::string& text, mode_t mode) {
    std::ofstream(path) << text;
    ASSERT_EQ(chmod(path.c_str(), mode), 0);
  };
  // a/ holds a non-executable copy (EACCES: skipped), b/ the one that runs; c/ is missing.
  script(tmp / "a/epoch-probe", "#!/bin/sh\necho from-a\n", 0644);
  script(tmp / "b/epoch-probe", "#!/bin/sh\necho from-b \"$1\"\n", 0755);
  // No #! line: execvp runs it with /bin/sh, its arguments after it.
  script(tmp / "b/epoch-plain", "echo plain \"$1\" \"$0\"\n", 0755);
  script(tmp / "a/epoch-denied", "#!/bin/sh\necho never\n", 0644);
  const char* before = std::getenv("PATH");
  std::string parent_path = before ? before : "";
  std::string path = (tmp / "c") + ":" + (tmp / "a") + ":" + (tmp / "b");
  ProcessSpec spec;
  spec.env = {{"PATH", path}};
  spec.log_path = tmp / "log";
  spec.argv = {"epoch-probe", "x1"};
  ExitInfo e = RunToEnd(spec);
  EXPECT_EQ(e.exit_code, 0) << e.reason;
  spec.argv = {"epoch-plain", "x2"};
  e = RunToEnd(spec);
  EXPECT_EQ(e.exit_code, 0) << e.reason;
  EXPECT_EQ(Slurp(tmp / "log"), "from-b x1\nplain x2 " + tmp / "b/epoch-plain" + "\n");
  // Found only where it may not run: EACCES, as execvp says.
  spec.argv = {"epoch-denied"};
  e = RunToEnd(spec);
  EXPECT_EQ(e.exit_code, 127);
  EXPECT_EQ(e.reason, "exec failed: Permission denied");
  // Not found at all: ENOENT.
  spec.argv = {"epoch-nowhere"};
  e = RunToEnd(spec);
  EXPECT_EQ(e.reason, "exec failed: No such file or directory");
  const char* after = std::getenv("PATH");
  EXPECT_EQ(after ? std::string(after) : "", parent_path);
}

TEST(ProcessTest, BadWorkingDirIs127) {
  ProcessSpec spec;
  spec.argv = {"true"};
  spec.working_dir = "/nonexistent/dir";
  ExitInfo e = RunToEnd(spec);
  EXPECT_EQ(e.exit_code, 127);
  EXPECT_NE(e.reason.find("chdir /nonexistent/dir failed"), std::string::npos) << e.reason;
}

TEST(ProcessTest, EmptyArgvRejected) {
  ProcessSpec spec;
  EXPECT_EQ(Spawn(spec).status().code(), StatusCode::kInvalidArgument);
}

TEST(ProcessTest, TryWaitIsNonBlocking) {
  TempDir tmp;
  ProcessSpec spec;
  spec.argv = {"sh", "-c", "while [ ! -f " + (tmp / "go") + " ]; do sleep 0.01; done"};
  auto child = Spawn(spec);
  ASSERT_TRUE(child.ok());
  auto r = (*child)->TryWait();
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE(r->has_value());
  testing::WriteText(tmp / "go", "");
  std::optional<ExitInfo> done;
  ASSERT_TRUE(WaitFor([&] {
    auto t = (*child)->TryWait();
    if (t.ok() && t->has_value()) done = **t;
    return done.has_value();
  }));
  EXPECT_EQ(done->exit_code, 0);
  EXPECT_TRUE((*child)->reaped());
}

// sh leads the group; its background sleep is a grandchild in the same group.
std::unique_ptr<ChildProcess> SpawnWithGrandchild(const TempDir& tmp, pid_t* grandchild,
                                                  const std::string& trap = "") {
  ProcessSpec spec;
  spec.argv = {"sh", "-c",
               trap + "sleep 100 & echo $! > " + (tmp / "pid.tmp") + "; mv " + (tmp / "pid.tmp") +
                   " " + (tmp / "pid") + "; wait"};
  auto child = Spawn(spec);
  EXPECT_TRUE(child.ok());
  if (!child.ok()) return nullptr;
  EXPECT_TRUE(WaitFor([&] { return !Slurp(tmp / "pid").empty(); }));
  *grandchild = static_cast<pid_t>(std::stol(Slurp(tmp / "pid")));
  EXPECT_FALSE(ProcessGone(*grandchild));
  return std::move(*child);
}

TEST(ProcessTest, KillGroupKillsGrandchild) {
  TempDir tmp;
  pid_t grandchild = 0;
  auto child = SpawnWithGrandchild(tmp, &grandchild);
  ASSERT_TRUE(child);
  ASSERT_TRUE(KillGroup(child->pgid(), std::chrono::milliseconds(300)).ok());
  auto e = child->Wait();
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e->signal, SIGTERM);
  EXPECT_TRUE(WaitFor([&] { return ProcessGone(grandchild); }));
  EXPECT_TRUE(KillGroup(child->pgid(), std::chrono::milliseconds(10)).ok());  // gone: OK
}

TEST(ProcessTest, TerminateEscalatesToSigkill) {
  TempDir tmp;
  pid_t grandchild = 0;
  // The leader ignores SIGTERM; the grace runs out and SIGKILL ends the group.
  auto child = SpawnWithGrandchild(tmp, &grandchild, "trap '' TERM; ");
  ASSERT_TRUE(child);
  auto start = std::chrono::steady_clock::now();
  auto e = child->Terminate(std::chrono::milliseconds(200));
  ASSERT_TRUE(e.ok()) << e.status().ToString();
  EXPECT_GE(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(190));
  EXPECT_EQ(e->signal, SIGKILL);
  EXPECT_TRUE(WaitFor([&] { return ProcessGone(grandchild); }));
}

TEST(ProcessTest, DestructorKillsAndReaps) {
  TempDir tmp;
  pid_t grandchild = 0;
  pid_t pid = 0;
  {
    auto child = SpawnWithGrandchild(tmp, &grandchild);
    ASSERT_TRUE(child);
    pid = child->pid();
  }
  EXPECT_TRUE(ProcessGone(pid));
  EXPECT_TRUE(WaitFor([&] { return ProcessGone(grandchild); }));
}

}  // namespace
}  // namespace epoch::executors
