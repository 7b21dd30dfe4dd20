// executors/cgroup.h on this host's real cgroups (CI runs as root on cgroup v1; the
// tests skip only where no cgroup can be made, unless EPOCH_REQUIRE_CGROUPS=1), and
// its detection on made-up mountinfo files.
#include "executors/cgroup.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <thread>

#include "executors/process.h"

namespace epoch::executors {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

std::string Temp(const std::string& tag) {
  std::string d = fs::temp_directory_path() / ("epoch-cg-" + tag + "-" + std::to_string(getpid()));
  fs::create_directories(d);
  return d;
}

void Write(const std::string& path, const std::string& text) {
  std::ofstream(path) << text;
}

// The host, or a skip (a failure where CI requires cgroups).
CgroupHost HostOrSkip() {
  CgroupHost h = DetectCgroups();
  if (h.version == CgroupVersion::kNone) {
    if (std::getenv("EPOCH_REQUIRE_CGROUPS")) {
      ADD_FAILURE() << "EPOCH_REQUIRE_CGROUPS=1 but no cgroups: " << h.reason;
    }
  }
  return h;
}

TEST(CgroupDetect, HybridHostUsesV1ForTheControllersV2DoesNotOffer) {
  // This machine's layout: v1 controllers mounted one each, a v2 mount with none.
  std::string d = Temp("detect");
  Write(d + "/mountinfo",
        "31 30 0:28 / /nonexistent/cpu rw - cgroup cgroup rw,cpu\n"
        "34 30 0:31 / /nonexistent/memory rw - cgroup cgroup rw,memory\n"
        "40 30 0:37 / /nonexistent/unified rw - cgroup2 cgroup2 rw\n");
  Write(d + "/cgroup", "4:memory:/a\n1:cpu:/\n0::/\n");
  CgroupHost h = DetectCgroups("", d + "/mountinfo", d + "/cgroup");
  // The mount points do not exist here, so nothing can be made: none, saying so.
  EXPECT_EQ(h.version, CgroupVersion::kNone);
  EXPECT_EQ(h.Name(), "none");
  EXPECT_NE(h.reason.find("no cgroup"), std::string::npos) << h.reason;
  fs::remove_all(d);
}

TEST(CgroupDetect, NoMountsSaysSo) {
  std::string d = Temp("nomount");
  Write(d + "/mountinfo", "22 1 0:21 / /proc rw - proc proc rw\n");
  Write(d + "/cgroup", "0::/\n");
  CgroupHost h = DetectCgroups("", d + "/mountinfo", d + "/cgroup");
  EXPECT_EQ(h.version, CgroupVersion::kNone);
  EXPECT_EQ(h.reason, "no cgroup hierarchy is mounted");
  fs::remove_all(d);
}

TEST(CgroupDetect, APlainDirectoryIsNotACgroupRoot) {
  std::string d = Temp("plain");
  CgroupHost h = DetectCgroups(d);
  EXPECT_EQ(h.version, CgroupVersion::kNone);
  EXPECT_EQ(h.reason, d + " is neither a cgroup2 directory nor holds cgroup v1 hierarchies");
  EXPECT_EQ(DetectCgroups(d + "/missing").reason, d + "/missing is not a directory");
  fs::remove_all(d);
}

TEST(CgroupDetect, AReadOnlyCgroupRootIsNoneWithTheKernelsReason) {
  CgroupHost real = HostOrSkip();
  if (real.version != CgroupVersion::kV1) {
    GTEST_SKIP() << "needs cgroup v1 (" << real.Name() << ")";
  }
  // Read-only bind mounts of the real hierarchies: a cgroup root nobody may write.
  std::string root = Temp("ro");
  std::vector<std::string> mounted;
  for (const char* c : {"memory", "cpu"}) {
    std::string src = "/sys/fs/cgroup/" + std::string(c), dst = root + "/" + c;
    fs::create_directories(dst);
    ASSERT_EQ(mount(src.c_str(), dst.c_str(), nullptr, MS_BIND, nullptr), 0) << strerror(errno);
    mounted.push_back(dst);
    ASSERT_EQ(mount(nullptr, dst.c_str(), nullptr, MS_BIND | MS_REMOUNT | MS_RDONLY, nullptr), 0)
        << strerror(errno);
  }
  CgroupHost h = DetectCgroups(root);
  for (const auto& m : mounted) umount2(m.c_str(), MNT_DETACH);
  fs::remove_all(root);
  EXPECT_EQ(h.version, CgroupVersion::kNone);
  EXPECT_NE(h.reason.find("cannot create a cgroup under " + root), std::string::npos) << h.reason;
  EXPECT_NE(h.reason.find("Read-only file system"), std::string::npos) << h.reason;
}

class CgroupTest : public ::testing::Test {
 protected:
  void SetUp() override {
    host_ = HostOrSkip();
    if (host_.version == CgroupVersion::kNone) {
      GTEST_SKIP() << host_.reason;
    }
    auto g = Cgroup::Create(host_, nullptr, "test-" + std::to_string(getpid()));
    ASSERT_TRUE(g.ok()) << g.status().ToString();
    group_ = std::move(*g);
  }
  void TearDown() override {
    if (group_) {
      EXPECT_TRUE(group_->Remove().ok());
    }
  }
  CgroupHost host_;
  std::unique_ptr<Cgroup> group_;
};

TEST_F(CgroupTest, AMemoryLimitOomKillsAndTheCountersSaySo) {
  auto a = Cgroup::Create(host_, group_.get(), "a");
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  ASSERT_TRUE((*a)->SetLimits({.memory_bytes = 32 << 20}).ok());
  ProcessSpec spec;
  // 128 MiB touched by `tail` holding one endless line; the shell itself survives.
  spec.argv = {"sh", "-c", "head -c 134217728 /dev/zero | tail > /dev/null; echo tail=$?"};
  spec.cgroup_procs = (*a)->ProcsFiles();
  auto child = Spawn(spec);
  ASSERT_TRUE(child.ok()) << child.status().ToString();
  auto exit = (*child)->Wait();
  ASSERT_TRUE(exit.ok());
  EXPECT_EQ(exit->exit_code, 0) << exit->reason;  // the shell was not the victim
  CgroupUsage u = (*a)->Usage();
  EXPECT_GE(u.oom_kills, 1);
  // The high-water mark reached the limit and never passed it.
  EXPECT_LE(u.memory_peak_bytes, 32 << 20);
  EXPECT_GE(u.memory_peak_bytes, 31 << 20);
  EXPECT_TRUE((*a)->Remove().ok());
}

TEST_F(CgroupTest, ACpuQuotaHoldsFourBusyProcessesToHalfACore) {
  auto a = Cgroup::Create(host_, group_.get(), "cpu");
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  ASSERT_TRUE((*a)->SetLimits({.cpu_millis = 500}).ok());
  ProcessSpec spec;
  spec.argv = {"sh", "-c",
               "for i in 1 2 3 4; do (while :; do :; done) & done; sleep 2; kill 0"};
  spec.cgroup_procs = (*a)->ProcsFiles();
  auto child = Spawn(spec);
  ASSERT_TRUE(child.ok());
  auto exit = (*child)->Wait();
  ASSERT_TRUE(exit.ok());
  CgroupUsage u = (*a)->Usage();
  double rate = u.cpu_s / exit->wall_s;
  EXPECT_LE(rate, 0.55) << u.cpu_s << " CPU-s in " << exit->wall_s << " s";
  EXPECT_GE(rate, 0.2) << u.cpu_s << " CPU-s in " << exit->wall_s << " s";
  EXPECT_TRUE((*a)->Remove().ok());
}

TEST_F(CgroupTest, APidsLimitRefusesForksAndRemoveKillsWhatIsLeft) {
  auto a = Cgroup::Create(host_, group_.get(), "pids");
  ASSERT_TRUE(a.ok());
  if (!host_.has("pids") && host_.version == CgroupVersion::kV1) {
    GTEST_SKIP() << "no pids controller";
  }
  ASSERT_TRUE((*a)->SetLimits({.pids = 8}).ok());
  // Two sleepers that nothing but the cgroup will stop.
  ProcessSpec sleeper;
  sleeper.argv = {"sleep", "60"};
  sleeper.cgroup_procs = (*a)->ProcsFiles();
  auto s1 = Spawn(sleeper);
  auto s2 = Spawn(sleeper);
  ASSERT_TRUE(s1.ok() && s2.ok());
  // A shell forking twenty more: at most 8 processes fit, the rest are refused.
  ProcessSpec spec;
  spec.argv = {"sh", "-c", "i=0; while [ $i -lt 20 ]; do sleep 60 & i=$((i+1)); done"};
  spec.cgroup_procs = (*a)->ProcsFiles();
  auto child = Spawn(spec);
  ASSERT_TRUE(child.ok());
  ASSERT_TRUE((*child)->Wait().ok());  // its group (its sleepers) dies with it
  EXPECT_GE((*a)->Usage().pids_refused, 1);
  auto left = (*a)->Processes();
  EXPECT_GE(left.size(), 2u);
  EXPECT_LE(left.size(), 8u);
  ASSERT_TRUE((*a)->Remove().ok());
  for (auto* s : {&*s1, &*s2}) {
    auto exit = (*s)->Wait();
    ASSERT_TRUE(exit.ok());
    EXPECT_EQ(exit->signal, SIGKILL) << exit->reason;
  }
  EXPECT_FALSE(fs::exists((*a)->dirs().begin()->second));
}

TEST_F(CgroupTest, SweepRemovesTheGroupsOfDeadAgentsOnly) {
  // A group named after a pid that is gone, with a child, and one after a live pid.
  pid_t dead = fork();
  if (dead == 0) _exit(0);
  waitpid(dead, nullptr, 0);
  auto stale = Cgroup::Create(host_, nullptr, "c9-" + std::to_string(dead));
  ASSERT_TRUE(stale.ok());
  ASSERT_TRUE(Cgroup::Create(host_, stale->get(), "a-x").ok());
  auto live = Cgroup::Create(host_, nullptr, "c9-" + std::to_string(getpid()));
  ASSERT_TRUE(live.ok());
  EXPECT_GE(SweepStaleCgroups(host_), 1);
  for (const auto& [c, d] : (*stale)->dirs()) EXPECT_FALSE(fs::exists(d)) << d;
  for (const auto& [c, d] : (*live)->dirs()) EXPECT_TRUE(fs::exists(d)) << d;
  EXPECT_TRUE((*live)->Remove().ok());
}

}  // namespace
}  // namespace epoch::executors
