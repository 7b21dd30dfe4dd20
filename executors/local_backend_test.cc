#include "executors/local_backend.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include "executors/agent/fake_master.h"
#include "executors/test_util.h"

namespace epoch::executors {
namespace {

using namespace std::chrono_literals;
using engine::ContainerDescription;
using testing::FakeMaster;
using testing::ProcessGone;
using testing::Slurp;
using testing::TempDir;
using testing::WaitFor;

LocalBackendOptions TestOptions() {
  LocalBackendOptions o;
  o.grace = 200ms;
  o.orphan_timeout = 20s;  // a failed test still leaves nothing running for long
  o.terminate_wait = 5s;
  return o;
}

pid_t ParentOf(pid_t pid) {
  std::string stat = Slurp("/proc/" + std::to_string(pid) + "/stat");
  auto close = stat.rfind(')');
  if (close == std::string::npos) return -1;
  std::istringstream in(stat.substr(close + 2));
  char state;
  pid_t ppid = -1;
  in >> state >> ppid;
  return ppid;
}

TEST(LocalBackendTest, LaunchDescribeTerminateRealAgent) {
  TempDir tmp;
  FakeMaster m;
  LocalBackend backend(EPOCH_AGENT_PATH, TestOptions());
  EXPECT_EQ(backend.Name(), "local");
  engine::ContainerSpec spec;
  spec.id = "c-lb1";
  spec.cpu_millis = 500;
  spec.memory_bytes = 256 << 20;
  spec.master_url = m.url();
  spec.data_dir = tmp.path();
  spec.env = {{"EPOCH_FAKE_GPUS", "2"}};
  spec.credential = "local-cred-" + std::to_string(getpid()) + "-x7";
  auto handle = backend.Launch(spec);
  ASSERT_TRUE(handle.ok()) << handle.status().ToString();
  pid_t pid = static_cast<pid_t>(std::stol(*handle));
  struct Cleanup {  // never leave an agent behind, even when an assertion fails
    LocalBackend& b;
    std::string id, handle;
    ~Cleanup() { (void)b.Terminate(id, handle); }
  } cleanup{backend, spec.id, *handle};

  // Detached: not our child, in a session of its own (led by the exited middle child).
  EXPECT_NE(ParentOf(pid), getpid());
  EXPECT_NE(getsid(pid), getsid(0));
  EXPECT_NE(getpgid(pid), getpgid(0));

  ASSERT_TRUE(WaitFor([&] { return m.RegisterCount() >= 1; }))
      << Slurp(tmp / "containers/c-lb1/agent.log");
  Json reg = m.Get<Json>([](const FakeMaster& f) { return f.registers.front(); });
  EXPECT_EQ(reg["pid"], pid);
  EXPECT_EQ(reg["handle"], *handle);
  EXPECT_EQ(reg["cpu_millis"], 500);
  EXPECT_EQ(reg["memory_bytes"], 256 << 20);
  ASSERT_EQ(reg["gpus"].size(), 2u);
  EXPECT_EQ(reg["gpus"][1]["simulated"], true);

  auto d = backend.Describe(spec.id, *handle);
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->state, ContainerDescription::State::kRunning) << d->detail;
  // Same pid, other container id: not ours.
  EXPECT_EQ(backend.Describe("c-other", *handle)->state, ContainerDescription::State::kGone);

  // Its credential: a 0600 file in its 0700 folder, named on its command line, sent
  // on every request.
  std::string dir = tmp / "containers/c-lb1";
  EXPECT_EQ(Slurp(dir + "/credential"), spec.credential + "\n");
  struct stat st {};
  ASSERT_EQ(stat((dir + "/credential").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  ASSERT_EQ(stat(dir.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0700u);
  std::string cmdline = Slurp("/proc/" + *handle + "/cmdline");
  EXPECT_NE(cmdline.find(std::string("--credential-file") + '\0' + dir + "/credential"),
            std::string::npos);
  EXPECT_EQ(cmdline.find(spec.credential), std::string::npos);
  for (const auto& h :
       m.Get<std::vector<std::string>>([](const FakeMaster& f) { return f.authorizations; })) {
    EXPECT_EQ(h, "Bearer " + spec.credential);
  }
  // What the agent enforces is registered (as root: sandboxed, users switched).
  EXPECT_EQ(reg["isolation"]["mode"], "auto");
  EXPECT_EQ(reg["isolation"]["sandbox"], geteuid() == 0 ? "namespaces" : "none") << reg.dump();

  // It runs work end to end; the step sees nothing of the credential.
  m.Assign(Json{{"attempt_id", "rb/s/1"},
                {"argv",
                 {"sh", "-c",
                  "echo $EPOCH_CONTAINER_ID > $EPOCH_OUTPUTS/who; env; "
                  "cat " +
                      dir + "/credential"}},
                {"timeout_ms", 0},
                {"gpus", Json::array()}});
  ASSERT_TRUE(WaitFor([&] { return !m.ReportsFor("rb/s/1").empty(); }));
  Json r = m.ReportsFor("rb/s/1").front();
  EXPECT_EQ(r["state"], geteuid() == 0 ? "failed" : "succeeded") << r.dump();  // cat fails
  EXPECT_EQ(Slurp(tmp / "runs/rb/s/1/outputs/who"), "c-lb1\n");
  std::string step_log = Slurp(tmp / "logs/rb/s/1.log");
  EXPECT_NE(step_log.find("EPOCH_CONTAINER_ID=c-lb1"), std::string::npos) << step_log;
  if (geteuid() == 0) {
    EXPECT_EQ(step_log.find(spec.credential), std::string::npos) << step_log;
  }

  ASSERT_TRUE(backend.Terminate(spec.id, *handle).ok());
  EXPECT_TRUE(ProcessGone(pid));
  d = backend.Describe(spec.id, *handle);
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->state, ContainerDescription::State::kGone);
  EXPECT_TRUE(backend.Terminate(spec.id, *handle).ok());  // idempotent
  std::string agent_log = Slurp(tmp / "containers/c-lb1/agent.log");
  EXPECT_NE(agent_log.find("exits with code 0"), std::string::npos);
  EXPECT_EQ(agent_log.find(spec.credential), std::string::npos);
}

TEST(LocalBackendTest, RejectsBadInput) {
  TempDir tmp;
  LocalBackend missing(tmp / "no-such-agent", TestOptions());
  engine::ContainerSpec spec;
  spec.id = "c-x";
  spec.master_url = "http://127.0.0.1:1";
  spec.data_dir = tmp.path();
  auto h = missing.Launch(spec);
  ASSERT_FALSE(h.ok());
  EXPECT_NE(h.status().message().find("No such file"), std::string::npos) << h.status().ToString();
  spec.id = "../evil";
  EXPECT_EQ(missing.Launch(spec).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(missing.Describe("c-x", "abc").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(missing.Terminate("c-x", "1").code(), StatusCode::kInvalidArgument);
  // Our own pid is not an agent: Describe says gone and Terminate leaves it alone.
  std::string self = std::to_string(getpid());
  EXPECT_EQ(missing.Describe("c-x", self)->state, ContainerDescription::State::kGone);
  EXPECT_TRUE(missing.Terminate("c-x", self).ok());
}

}  // namespace
}  // namespace epoch::executors
