// The slurm backend's parsing and error mapping. Against real Slurm daemons it is
// tested end to end in tests/slurm_e2e_test.cc; here the Slurm commands are small
// scripts (real child processes) that answer as Slurm 22.05 does.
#include "executors/slurm_backend.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cstdio>
#include <fstream>

#include "common/files.h"
#include "executors/test_util.h"

namespace epoch::executors {
namespace {

using State = engine::ContainerDescription::State;

TEST(SlurmParseTest, SbatchJobId) {
  EXPECT_EQ(*ParseSbatchJobId("42\n"), "42");
  EXPECT_EQ(*ParseSbatchJobId("42;cluster\n"), "42");
  EXPECT_EQ(*ParseSbatchJobId("sbatch: warning: something\n17\n"), "17");
  EXPECT_FALSE(ParseSbatchJobId("").ok());
  EXPECT_FALSE(ParseSbatchJobId("Submitted batch job 42\n").ok());
}

TEST(SlurmParseTest, ScontrolOneLine) {
  auto info = ParseScontrolJob(
      "JobId=7 JobName=epoch-c3 UserId=root(0) GroupId=root(0) Priority=1 "
      "JobState=CANCELLED Reason=None Dependency=(null) ExitCode=0:15 NodeList=localhost "
      "Command=/d/containers/c3/job.sh\n");
  ASSERT_TRUE(info.ok()) << info.status().ToString();
  EXPECT_EQ(info->state, "CANCELLED");
  EXPECT_EQ(info->reason, "None");
  EXPECT_EQ(info->exit_code, "0:15");
  EXPECT_EQ(info->nodes, "localhost");
  EXPECT_FALSE(ParseScontrolJob("slurm_load_jobs error: Invalid job id specified\n").ok());
}

TEST(SlurmParseTest, SacctLine) {
  auto info = ParseSacctJob("CANCELLED by 0|0:15\n");
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->state, "CANCELLED");
  EXPECT_EQ(info->exit_code, "0:15");
  EXPECT_EQ(ParseSacctJob("\nTIMEOUT|0:0\n")->state, "TIMEOUT");
  EXPECT_FALSE(ParseSacctJob("").ok());
}

TEST(SlurmParseTest, StatesAndRefusals) {
  EXPECT_TRUE(IsPendingState("PENDING"));
  EXPECT_FALSE(IsPendingState("RUNNING"));
  EXPECT_TRUE(IsActiveState("RUNNING"));
  EXPECT_TRUE(IsActiveState("COMPLETING"));
  for (const char* s : {"COMPLETED", "FAILED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "CANCELLED",
                        "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}) {
    EXPECT_FALSE(IsActiveState(s)) << s;
  }
  EXPECT_TRUE(IsPermanentSbatchRefusal(
      "sbatch: error: Batch job submission failed: Requested node configuration is not available"));
  EXPECT_TRUE(IsPermanentSbatchRefusal(
      "sbatch: error: Batch job submission failed: Invalid partition name specified"));
  EXPECT_FALSE(IsPermanentSbatchRefusal(
      "sbatch: error: Batch job submission failed: Unable to contact slurm controller (connect failure)"));
  EXPECT_EQ(ShellQuote("it's"), "'it'\\''s'");
}

TEST(SlurmBackendTest, SbatchLineCarriesTheContainerShapeAndTheSettings) {
  SlurmOptions o;
  o.partition = "gpu";
  o.account = "ml";
  o.qos = "high";
  o.time_limit = "1-00:00:00";
  o.extra_args = {"--nice=10"};
  SlurmBackend b("/opt/epoch/epoch-agent", o);
  engine::ContainerSpec spec;
  spec.id = "c9";
  spec.cpu_millis = 1500;
  spec.memory_bytes = (int64_t{3} << 30) + 1;
  spec.gpus = 2;
  spec.data_dir = "/shared/epoch";
  auto args = b.SbatchArgs(spec, "/shared/epoch/containers/c9/job.sh");
  std::vector<std::string> want = {"sbatch",
                                   "--parsable",
                                   "--job-name=epoch-c9",
                                   "--nodes=1",
                                   "--ntasks=1",
                                   "--cpus-per-task=2",
                                   "--mem=3073M",
                                   "--gres=gpu:2",
                                   "--partition=gpu",
                                   "--account=ml",
                                   "--qos=high",
                                   "--time=1-00:00:00",
                                   "--nice=10",
                                   "--export=ALL",
                                   "--chdir=/shared/epoch/containers/c9",
                                   "--output=/shared/epoch/containers/c9/slurm-%j.out",
                                   "/shared/epoch/containers/c9/job.sh"};
  EXPECT_EQ(args, want);
  spec.gpus = 0;
  args = SlurmBackend("/a", {}).SbatchArgs(spec, "s");
  for (const auto& a : args) {
    EXPECT_EQ(a.find("--gres"), std::string::npos);
    EXPECT_EQ(a.find("--partition"), std::string::npos);
  }
}

// Fake Slurm commands in a temp dir: each prints what a file says and exits with
// the code another file holds, and records its arguments.
class FakeSlurmTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const char* cmd : {"sbatch", "scancel", "scontrol", "sacct", "squeue"}) {
      std::string path = dir_.path() + "/" + cmd;
      std::ofstream(path) << "#!/bin/sh\necho \"$@\" >> " << dir_.path() << "/" << cmd
                          << ".args\ncat " << dir_.path() << "/" << cmd << ".out 2>/dev/null\n"
                          << "exit $(cat " << dir_.path() << "/" << cmd
                          << ".rc 2>/dev/null || echo 0)\n";
      chmod(path.c_str(), 0755);
    }
    opts_.sbatch = dir_.path() + "/sbatch";
    opts_.scancel = dir_.path() + "/scancel";
    opts_.scontrol = dir_.path() + "/scontrol";
    opts_.sacct = dir_.path() + "/sacct";
    opts_.squeue = dir_.path() + "/squeue";
    opts_.command_timeout = std::chrono::seconds(5);
  }
  void Answer(const std::string& cmd, const std::string& out, int rc) {
    std::ofstream(dir_.path() + "/" + cmd + ".out") << out;
    std::ofstream(dir_.path() + "/" + cmd + ".rc") << rc;
  }
  std::string Args(const std::string& cmd) {
    auto r = ReadFile(dir_.path() + "/" + cmd + ".args", 1 << 20);
    return r.ok() ? *r : "";
  }
  engine::ContainerSpec Spec() {
    engine::ContainerSpec s;
    s.id = "c1";
    s.master_url = "http://127.0.0.1:1";
    s.data_dir = dir_.path() + "/data";
    s.gpus = 1;
    return s;
  }
  testing::TempDir dir_;
  SlurmOptions opts_;
};

TEST_F(FakeSlurmTest, LaunchWritesTheJobScriptAndReturnsTheJobId) {
  Answer("sbatch", "123\n", 0);
  SlurmBackend b("/opt/epoch agent", opts_);
  auto h = b.Launch(Spec());
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  EXPECT_EQ(*h, "123");
  auto script = ReadFile(dir_.path() + "/data/containers/c1/job.sh", 1 << 20);
  ASSERT_TRUE(script.ok());
  EXPECT_NE(script->find("exec '/opt/epoch agent' '--id' 'c1'"), std::string::npos) << *script;
  EXPECT_NE(script->find("--handle \"$SLURM_JOB_ID\""), std::string::npos) << *script;
  EXPECT_NE(Args("sbatch").find("--gres=gpu:1"), std::string::npos) << Args("sbatch");
}

// The container's credential is on the shared volume (0600, in a 0700 folder) before
// sbatch runs, and the job names its file, never the secret.
TEST_F(FakeSlurmTest, LaunchWritesTheCredentialBesideTheJobNotIntoIt) {
  Answer("sbatch", "124\n", 0);
  SlurmBackend b("/opt/epoch-agent", opts_);
  engine::ContainerSpec spec = Spec();
  spec.credential = "slurm-cred-9f8e7d";
  ASSERT_TRUE(b.Launch(spec).ok());
  std::string dir = dir_.path() + "/data/containers/c1";
  auto credential = ReadFile(dir + "/credential");
  ASSERT_TRUE(credential.ok());
  EXPECT_EQ(*credential, "slurm-cred-9f8e7d\n");
  struct stat st {};
  ASSERT_EQ(stat((dir + "/credential").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  ASSERT_EQ(stat(dir.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0700u);
  auto job = ReadFile(dir + "/job.sh", 1 << 20);
  ASSERT_TRUE(job.ok());
  const std::string& script = *job;
  EXPECT_NE(script.find("'--credential-file' '" + dir + "/credential'"), std::string::npos)
      << script;
  EXPECT_NE(script.find("'--isolation' 'auto'"), std::string::npos) << script;
  EXPECT_EQ(script.find("slurm-cred-9f8e7d"), std::string::npos) << script;
  EXPECT_EQ(Args("sbatch").find("slurm-cred-9f8e7d"), std::string::npos);
}

TEST_F(FakeSlurmTest, ARefusalIsUnschedulableAndAnOutageIsNot) {
  SlurmBackend b("/a", opts_);
  Answer("sbatch",
         "sbatch: error: Batch job submission failed: Requested node configuration is not "
         "available\n",
         1);
  auto h = b.Launch(Spec());
  ASSERT_FALSE(h.ok());
  EXPECT_EQ(h.status().code(), StatusCode::kResourceExhausted);
  EXPECT_NE(h.status().message().find("Requested node configuration is not available"),
            std::string::npos);
  Answer("sbatch",
         "sbatch: error: Batch job submission failed: Unable to contact slurm controller\n", 1);
  h = b.Launch(Spec());
  ASSERT_FALSE(h.ok());
  EXPECT_EQ(h.status().code(), StatusCode::kUnavailable) << h.status().ToString();
  opts_.sbatch = dir_.path() + "/no-such-sbatch";
  h = SlurmBackend("/a", opts_).Launch(Spec());
  ASSERT_FALSE(h.ok());
  EXPECT_EQ(h.status().code(), StatusCode::kUnavailable) << h.status().ToString();
}

TEST_F(FakeSlurmTest, DescribeReadsScontrolThenSacct) {
  SlurmBackend b("/a", opts_);
  Answer("scontrol", "JobId=5 JobState=RUNNING Reason=None ExitCode=0:0 NodeList=n1\n", 0);
  auto d = b.Describe("c1", "5");
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->state, State::kRunning);
  EXPECT_EQ(d->backend_state, "RUNNING");
  EXPECT_EQ(Args("scontrol"), "show job -o 5\n");

  Answer("scontrol", "JobId=5 JobState=PENDING Reason=Resources ExitCode=0:0 NodeList=(null)\n", 0);
  EXPECT_EQ(b.Describe("c1", "5")->state, State::kPending);

  Answer("scontrol", "JobId=5 JobState=TIMEOUT Reason=TimeLimit ExitCode=0:0 NodeList=n1\n", 0);
  d = b.Describe("c1", "5");
  EXPECT_EQ(d->state, State::kGone);
  EXPECT_EQ(d->detail, "slurm job 5 TIMEOUT (exit code 0:0) reason TimeLimit on n1");

  // Aged out of the controller: sacct answers.
  Answer("scontrol", "slurm_load_jobs error: Invalid job id specified\n", 1);
  Answer("sacct", "NODE_FAIL|0:0\n", 0);
  d = b.Describe("c1", "5");
  EXPECT_EQ(d->state, State::kGone);
  EXPECT_EQ(d->backend_state, "NODE_FAIL");
  EXPECT_NE(d->detail.find("(sacct)"), std::string::npos) << d->detail;

  // Neither knows it (no slurmdbd): gone.
  Answer("sacct", "sacct: error: Problem talking to the database\n", 1);
  d = b.Describe("c1", "5");
  EXPECT_EQ(d->state, State::kGone);
  EXPECT_NE(d->detail.find("no longer known"), std::string::npos) << d->detail;

  // The controller does not answer: no verdict (an error), never "gone".
  Answer("scontrol", "slurm_load_jobs error: Unable to contact slurm controller\n", 1);
  EXPECT_EQ(b.Describe("c1", "5").status().code(), StatusCode::kUnavailable);
  EXPECT_EQ(b.Describe("c1", "5; rm -rf /").status().code(), StatusCode::kInvalidArgument);
}

TEST_F(FakeSlurmTest, DescribeAllAsksSqueueOnceAndScontrolOnlyForEndedJobs) {
  SlurmBackend b("/a", opts_);
  std::vector<engine::ContainerBackend::Ref> refs = {{"c1", "11"}, {"c2", "12"}, {"c3", "13"}, {"c4", "14"}};
  // 11 runs, 12 waits, 13 ended (squeue still lists it), 14 is not listed at all.
  Answer("squeue", "11|RUNNING|None|n1\n12|PENDING|Resources|\n13|CANCELLED|None|n1\n", 0);
  Answer("scontrol", "JobId=13 JobState=CANCELLED Reason=None ExitCode=0:15 NodeList=n1\n", 0);
  auto all = b.DescribeAll(refs);
  ASSERT_EQ(all.size(), 4u);
  EXPECT_EQ(Args("squeue"), "-h -t all -j 11,12,13,14 -o %i|%T|%r|%N\n");
  EXPECT_EQ(all[0]->state, State::kRunning);
  EXPECT_EQ(all[0]->detail, "slurm job 11 RUNNING on n1");
  EXPECT_EQ(all[1]->state, State::kPending);
  EXPECT_EQ(all[1]->detail, "slurm job 12 PENDING reason Resources");
  // Only the ended and the missing job cost a scontrol each (for the exit code).
  EXPECT_EQ(Args("scontrol"), "show job -o 13\nshow job -o 14\n");
  EXPECT_EQ(all[2]->state, State::kGone);
  EXPECT_EQ(all[2]->detail, "slurm job 13 CANCELLED (exit code 0:15) on n1");

  // None of them known any more: each is asked about on its own.
  std::remove((dir_.path() + "/scontrol.args").c_str());
  Answer("squeue", "slurm_load_jobs error: Invalid job id specified\n", 1);
  Answer("scontrol", "slurm_load_jobs error: Invalid job id specified\n", 1);
  Answer("sacct", "", 0);
  all = b.DescribeAll({{"c1", "11"}});
  ASSERT_EQ(all.size(), 1u);
  EXPECT_EQ(all[0]->state, State::kGone);

  // The controller is down: no verdict for anyone, and no per-job commands.
  std::remove((dir_.path() + "/scontrol.args").c_str());
  Answer("squeue", "squeue: error: Unable to contact slurm controller (connect failure)\n", 1);
  all = b.DescribeAll(refs);
  ASSERT_EQ(all.size(), 4u);
  for (const auto& a : all) EXPECT_EQ(a.status().code(), StatusCode::kUnavailable);
  EXPECT_EQ(Args("scontrol"), "");
  EXPECT_TRUE(b.DescribeAll({}).empty());
}

TEST(SlurmParseTest, SqueueLines) {
  auto jobs = ParseSqueue("5|RUNNING|None|n[1-2]\n6|PENDING|Priority|\nbad line\n|X|y|z\n");
  ASSERT_EQ(jobs.size(), 2u);
  EXPECT_EQ(jobs["5"].state, "RUNNING");
  EXPECT_EQ(jobs["5"].nodes, "n[1-2]");
  EXPECT_EQ(jobs["6"].reason, "Priority");
}

TEST_F(FakeSlurmTest, TerminateIsScancelAndAGoneJobIsFine) {
  SlurmBackend b("/a", opts_);
  Answer("scancel", "", 0);
  EXPECT_TRUE(b.Terminate("c1", "77").ok());
  EXPECT_EQ(Args("scancel"), "77\n");
  Answer("scancel", "scancel: error: Kill job error on job id 77: Invalid job id specified\n", 1);
  EXPECT_TRUE(b.Terminate("c1", "77").ok());
  Answer("scancel", "scancel: error: Unable to contact slurm controller\n", 1);
  EXPECT_FALSE(b.Terminate("c1", "77").ok());
}

TEST_F(FakeSlurmTest, AHungCommandIsKilledAtTheTimeout) {
  std::ofstream(dir_.path() + "/scontrol") << "#!/bin/sh\nexec sleep 30\n";
  opts_.command_timeout = std::chrono::milliseconds(300);
  SlurmBackend b("/a", opts_);
  auto d = b.Describe("c1", "5");
  EXPECT_EQ(d.status().code(), StatusCode::kUnavailable);
  // Killed at the timeout (had it run its 30 s out, it would have exited 0, empty).
  EXPECT_EQ(d.status().message(), "scontrol show job 5 did not answer");
}

}  // namespace
}  // namespace epoch::executors
