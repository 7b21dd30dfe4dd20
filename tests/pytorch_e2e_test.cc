// examples/pytorch-fmnist end to end on a small slice of Fashion-MNIST: real epochd,
// two real epoch-agent containers of 1 CPU, and train as a DistributedDataParallel
// gang of 2 (gloo) whose ranks land one on each container. Skipped where Debian's
// /usr/bin/python3 cannot import torch (make deps installs python3-torch; CI runs it).
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <set>
#include <sstream>
#include <vector>

#include "tests/harness.h"

namespace epoch::testing {
namespace {

using namespace std::chrono_literals;

const std::string kExample = std::string(EPOCH_SOURCE_DIR) + "/examples/pytorch-fmnist";

std::string Slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

const Json& Step(const Json& run, const std::string& name) {
  for (const auto& s : run["steps"]) {
    if (s["name"] == name) return s;
  }
  static const Json kNone;
  ADD_FAILURE() << "no step " << name << " in " << run.dump(2);
  return kNone;
}

// Every log of the run's steps (each rank's), for a failure message.
std::string StepLogs(const std::string& data_dir, const std::string& run) {
  std::string out;
  std::error_code ec;
  for (const auto& e :
       std::filesystem::recursive_directory_iterator(data_dir + "/logs/" + run, ec)) {
    if (!e.is_regular_file()) continue;
    out += "--- " + e.path().string() + "\n" + Slurp(e.path().string());
  }
  return out;
}

// The example's script where a step can read it: steps run sandboxed with a private
// /tmp (and the host read-only), so a checkout under /tmp would hide it; a copy under
// /var/tmp is seen wherever the source tree is. Removed with the object.
class ScriptCopy {
 public:
  ScriptCopy() {
    char tmpl[] = "/var/tmp/epoch-pytorch-test.XXXXXX";
    if (mkdtemp(tmpl) == nullptr) return;
    dir_ = tmpl;
    std::filesystem::permissions(
        dir_, std::filesystem::perms::owner_all | std::filesystem::perms::group_read |
                  std::filesystem::perms::group_exec | std::filesystem::perms::others_read |
                  std::filesystem::perms::others_exec);
    std::error_code ec;
    std::filesystem::copy_file(kExample + "/pytorch_fmnist.py", dir_ + "/pytorch_fmnist.py", ec);
    if (ec) dir_.clear();
  }
  ~ScriptCopy() {
    std::error_code ec;
    if (!dir_.empty()) std::filesystem::remove_all(dir_, ec);
  }
  // "" when the copy failed.
  std::string path() const { return dir_.empty() ? "" : dir_ + "/pytorch_fmnist.py"; }

 private:
  std::string dir_;
};

// Why the PyTorch tests cannot run here, or "" when they can.
std::string WhyNoTorch() {
  std::string out;
  if (RunCommand("/usr/bin/python3 -c 'import torch, numpy' 2>&1", &out) != 0) {
    return "/usr/bin/python3 cannot import torch and numpy (apt-get install python3-torch "
           "python3-numpy, or make deps): " +
           out;
  }
  if (RunCommand("test -r /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz", &out)) {
    return "no Fashion-MNIST in /usr/share/datasets/fashion-mnist (apt-get install "
           "dataset-fashion-mnist, or make deps)";
  }
  return "";
}

// epochd's settings for two containers of 1 CPU (a rank asks for cpu 1, so no container
// holds both), up to `max`, plus `extra`.
std::vector<std::string> TwoContainers(int max, std::vector<std::string> extra) {
  std::vector<std::string> cfg = {"sig.cpu=1",
                                  "sig.memory=2144Mi",
                                  "sig.minReplicas=2",
                                  "sig.maxReplicas=" + std::to_string(max),
                                  "sig.ssAllocationUnit=2",
                                  "sig.ssAllocationInterval=0s"};
  cfg.insert(cfg.end(), extra.begin(), extra.end());
  return cfg;
}

// Registers the example and submits a run of it with the script's copy and `params`
// over a small test slice's defaults; *run is its id.
void SubmitExample(Epochd& d, const ScriptCopy& script, const Json& params, std::string* run) {
  auto def = ParseJson(Slurp(kExample + "/workflow.json"));
  ASSERT_TRUE(def.ok()) << def.status().ToString();
  ASSERT_FALSE(script.path().empty()) << "could not copy the script to /var/tmp";
  Json p{{"script", script.path()},
         {"test_limit", 1000},
         {"log_every", 20},
         {"min_accuracy", 0.1},
         {"infer_count", 5}};
  p.update(params);
  *run = d.RegisterAndSubmit(*def, p);
}

TEST(PytorchE2ETest, DdpGangOfTwoOnTwoContainersTrainsValidatesAndInfers) {
  if (std::string why = WhyNoTorch(); !why.empty()) GTEST_SKIP() << why;
  TempDir dir;
  // Two containers of 1 CPU (and epochd's default memory): a rank asks for cpu 1, so no
  // container holds both.
  Epochd d(dir.path(), TwoContainers(2, {}));
  d.Start();
  ScriptCopy script;
  std::string run;
  SubmitExample(d, script, Json{{"train_limit", 400}, {"epochs", 1}, {"log_every", 2}}, &run);
  if (HasFatalFailure()) return;
  Json r = d.WaitForRun(run, 150s);
  ASSERT_EQ(r["state"], "succeeded") << r.dump(2) << "\n" << StepLogs(dir.path(), run);

  // One attempt of train, two ranks, each on its own container.
  const Json& train = Step(r, "train");
  ASSERT_EQ(train["attempts"].size(), 1u) << train.dump(2);
  const Json& workers = train["attempts"][0]["workers"];
  ASSERT_EQ(workers.size(), 2u) << train.dump(2);
  std::set<std::string> containers;
  for (const auto& w : workers) {
    EXPECT_EQ(w["state"], "succeeded") << w.dump(2);
    containers.insert(w["container"].get<std::string>());
  }
  EXPECT_EQ(containers.size(), 2u) << train.dump(2);

  // Both ranks joined one process group: each says who it is, and the all_reduce of
  // rank+1 over the group is 3 only if both contributed.
  const std::string logs = dir.path() + "/logs/" + run + "/train/";
  for (int rank = 0; rank < 2; ++rank) {
    std::string log = Slurp(logs + (rank == 0 ? "1.log" : "1.1.log"));
    SCOPED_TRACE("rank " + std::to_string(rank) + " log:\n" + log);
    EXPECT_NE(log.find("rank=" + std::to_string(rank) + " world_size=2"), std::string::npos);
    EXPECT_NE(log.find("all_reduce(rank+1) = 3 "), std::string::npos);
    EXPECT_NE(log.find("shard rank::2 of 400 images: 200 images"), std::string::npos);
    EXPECT_NE(log.find("epoch 1/1 rank " + std::to_string(rank)), std::string::npos);
  }
  // Rank 0 wrote the model and the gang's final training metrics.
  const Json& tm = train["metrics"];
  EXPECT_EQ(tm.value("world_size", 0), 2) << tm.dump(2);
  EXPECT_EQ(tm.value("train_images", 0), 400) << tm.dump(2);
  EXPECT_EQ(tm.value("epochs", 0), 1) << tm.dump(2);

  // validate measured the model on the test slice; infer (gated on it) ran.
  const Json& vm = Step(r, "validate")["metrics"];
  ASSERT_TRUE(vm.contains("accuracy") && vm["accuracy"].is_number()) << vm.dump(2);
  EXPECT_GT(vm["accuracy"].get<double>(), 0.1) << vm.dump(2);
  EXPECT_EQ(vm.value("samples", 0), 1000) << vm.dump(2);
  EXPECT_EQ(Step(r, "infer")["state"], "succeeded") << Step(r, "infer").dump(2);
  EXPECT_EQ(Step(r, "infer")["metrics"].value("predictions", 0), 5);

  // The model's lineage names this run's train step and carries validate's accuracy.
  auto model = d.Get("/v1/models/fmnist-cnn/versions/1");
  ASSERT_EQ(model.status, 200) << model.body;
  EXPECT_NE(model.body.find(run), std::string::npos) << model.body;
  EXPECT_NE(model.body.find("\"accuracy\""), std::string::npos) << model.body;
}

// The gang for real: rank 1's container dies (agent and both of its processes, kill -9)
// once the training has saved a checkpoint. Rank 0 is stopped, the gang is placed again
// on two containers, and both ranks resume from that checkpoint, not from epoch 1; the
// model still validates.
TEST(PytorchE2ETest, AGangWhoseRankDiesResumesFromItsCheckpoint) {
  if (std::string why = WhyNoTorch(); !why.empty()) GTEST_SKIP() << why;
  TempDir dir;
  Epochd d(dir.path(),
           TwoContainers(3, {"executor.leaseTime=2s", "executor.metricsInterval=200ms"}));
  d.Start();
  ScriptCopy script;
  std::string run;
  SubmitExample(d, script, Json{{"train_limit", 6000}, {"epochs", 4}}, &run);
  if (HasFatalFailure()) return;
  Json train;
  ASSERT_TRUE(WaitFor(
      [&] {
        train = Step(d.Get("/v1/runs/" + run).json(), "train");
        std::string state = train.value("state", "");
        bool ended = state == "succeeded" || state == "failed" || state == "cancelled";
        return train.contains("checkpoints") || ended;
      },
      150s))
      << train.dump(2);
  ASSERT_TRUE(train.contains("checkpoints")) << train.dump(2) << StepLogs(dir.path(), run);
  const Json& workers = train["attempts"][0]["workers"];
  ASSERT_EQ(workers.size(), 2u) << train.dump(2);
  std::string rank1 = workers[1]["container"];
  for (pid_t p : d.AgentPids()) {
    if (AgentContainerId(p) == rank1) KillProcessTree(p);
  }
  Json r = d.WaitForRun(run, 240s);
  ASSERT_EQ(r["state"], "succeeded") << r.dump(2) << "\n" << StepLogs(dir.path(), run);
  const Json& attempts = Step(r, "train")["attempts"];
  ASSERT_GE(attempts.size(), 2u) << attempts.dump(2);
  EXPECT_EQ(attempts[0]["workers"][1]["state"], "lost") << attempts[0].dump(2);
  // The attempt that finished the training (the first retry, unless it failed too).
  const Json& last = attempts.back();
  const std::string n = std::to_string(last["attempt"].get<int>());
  const Json& resumed = last["resumed_from"];
  ASSERT_TRUE(resumed.is_object()) << last.dump(2);
  int epoch = resumed.value("epoch", 0);
  EXPECT_GE(epoch, 1) << resumed.dump();
  std::cout << "the new gang resumed from " << resumed.dump() << "\n";
  const std::string logs = dir.path() + "/logs/" + run + "/train/";
  for (const std::string& log : {n + ".log", n + ".1.log"}) {
    std::string text = Slurp(logs + log);
    SCOPED_TRACE(log + ":\n" + text);
    EXPECT_NE(text.find("all_reduce(rank+1) = 3 "), std::string::npos);
    if (log == n + ".log") {  // rank 0 reads the checkpoint and says so
      EXPECT_NE(text.find("resumed from " + resumed.value("file", std::string("?")) + " at epoch " +
                          std::to_string(epoch + 1)),
                std::string::npos);
    }
    EXPECT_EQ(text.find("epoch 1/4 rank"), std::string::npos) << "started again from epoch 1";
    EXPECT_NE(text.find("epoch 4/4 rank"), std::string::npos);
  }
  const Json& vm = Step(r, "validate")["metrics"];
  ASSERT_TRUE(vm.contains("accuracy")) << vm.dump(2);
  EXPECT_GT(vm["accuracy"].get<double>(), 0.6) << vm.dump(2);
}

// Graceful stop: a cancel sends SIGTERM (SIGKILL only after executor.killGrace); the
// training checkpoints at the next batch boundary, mid-epoch, and a retry of the run
// resumes from exactly there.
TEST(PytorchE2ETest, ACancelledTrainingCheckpointsOnSigtermAndItsRetryResumesThere) {
  if (std::string why = WhyNoTorch(); !why.empty()) GTEST_SKIP() << why;
  TempDir dir;
  Epochd d(dir.path(),
           TwoContainers(2, {"executor.killGrace=10s", "executor.metricsInterval=200ms"}));
  d.Start();
  ScriptCopy script;
  std::string run;
  SubmitExample(d, script, Json{{"train_limit", 6000}, {"epochs", 3}}, &run);
  if (HasFatalFailure()) return;
  // Once epoch 1's checkpoint is recorded, the training is in epoch 2: cancel it there.
  ASSERT_TRUE(WaitFor(
      [&] {
        Json t = Step(d.Get("/v1/runs/" + run).json(), "train");
        return t.contains("checkpoints") || t.value("state", "") == "failed";
      },
      150s))
      << StepLogs(dir.path(), run);
  ASSERT_EQ(d.PostJson("/v1/runs/" + run + "/cancel", Json::object()).status, 202);
  ASSERT_EQ(d.WaitForRun(run, 60s)["state"], "cancelled");
  std::string first = Slurp(dir.path() + "/logs/" + run + "/train/1.log");
  ASSERT_NE(first.find("stopped by SIGTERM at epoch "), std::string::npos) << first;
  HttpResult retry = d.PostJson("/v1/runs/" + run + "/retry", Json::object());
  ASSERT_EQ(retry.status / 100, 2) << retry.body;
  Json r = d.WaitForRun(run, 240s);
  ASSERT_EQ(r["state"], "succeeded") << r.dump(2) << "\n" << StepLogs(dir.path(), run);
  const Json& attempts = Step(r, "train")["attempts"];
  ASSERT_EQ(attempts.size(), 2u) << attempts.dump(2);
  EXPECT_EQ(attempts[0]["state"], "cancelled");
  const Json& resumed = attempts[1]["resumed_from"];
  std::string file = resumed.value("file", "");
  std::cout << "the retry resumed from " << resumed.dump() << "\n";
  EXPECT_NE(file.find("-batch-"), std::string::npos) << "saved mid-epoch on SIGTERM: " << file;
  std::string second = Slurp(dir.path() + "/logs/" + run + "/train/2.log");
  EXPECT_NE(second.find("resumed from " + file + " at epoch "), std::string::npos) << second;
  EXPECT_NE(second.find(", batch "), std::string::npos) << second;
  EXPECT_EQ(second.find("epoch 1/3 rank"), std::string::npos) << second;
}

// Elastic training (issue 17): train as "workers": {"min": 2, "max": 3} on three
// containers of 1 CPU, one of them busy. The gang starts with 2, grows to 3 when the
// container frees, loses a rank with its container (agent and processes kill -9) and goes
// on with 2; every restart resumes from the checkpoint with its new WORLD_SIZE, sharded
// anew, and the model reaches the accuracy that gates infer. A gang grows only after 10 s
// of running (scheduler.elasticMinRunTime), so every attempt gets past torch's start.
TEST(PytorchE2ETest, AnElasticGangStartsWithTwoGrowsToThreeLosesOneAndFinishes) {
  if (std::string why = WhyNoTorch(); !why.empty()) GTEST_SKIP() << why;
  TempDir dir;
  Epochd d(dir.path(),
           {"sig.cpu=1", "sig.memory=2144Mi", "sig.minReplicas=3", "sig.maxReplicas=3",
            "sig.ssAllocationUnit=3", "sig.ssAllocationInterval=0s", "executor.leaseTime=2s",
            "executor.metricsInterval=200ms", "scheduler.elasticMinRunTime=10s"});
  d.Start();
  ScriptCopy script;
  ASSERT_FALSE(script.path().empty()) << "could not copy the script to /var/tmp";
  const std::string go = std::filesystem::path(script.path()).parent_path().string() + "/go";
  // One container is busy until the test lets it go.
  std::string hold = d.RegisterAndSubmit(Json{
      {"name", "hold"},
      {"steps",
       Json::array(
           {Json{{"name", "a"},
                 {"resources", Json{{"cpu", "1"}, {"memory", "256Mi"}}},
                 {"command",
                  Json::array({"sh", "-c", "while [ ! -e " + go + " ]; do sleep 0.2; done"})}}})}});
  d.WaitForRunState(hold, [](const Json& r) {
    return !r.value("steps", Json::array()).empty() &&
           r["steps"][0].value("state", "") == "running";
  });
  auto def = ParseJson(Slurp(kExample + "/workflow.json"));
  ASSERT_TRUE(def.ok()) << def.status().ToString();
  Json& train_def = (*def)["steps"][1];
  ASSERT_EQ(train_def["name"], "train");
  train_def["workers"] = Json{{"min", 2}, {"max", 3}};
  const double target = 0.75;
  std::string run = d.RegisterAndSubmit(*def, Json{{"script", script.path()},
                                                   {"train_limit", 6000},
                                                   {"test_limit", 1000},
                                                   {"epochs", 6},
                                                   {"log_every", 20},
                                                   {"min_accuracy", target},
                                                   {"infer_count", 5}});
  // The train step now ({} while epochd, on two busy cores, does not answer in time);
  // *ended: whether the run has ended (a step is "cancelled" for a moment while a gang
  // is resized, its run is not).
  auto train = [&](bool* ended) {
    HttpResult h = d.Get("/v1/runs/" + run);
    Json r = h.status == 200 ? h.json() : Json();
    if (!r.is_object() || !r.contains("steps")) return Json::object();
    std::string s = r.value("state", "");
    *ended = s == "succeeded" || s == "failed" || s == "cancelled";
    return Step(r, "train");
  };
  // Two fit: it starts with 2, and once it has saved an epoch, the busy container frees.
  Json t;
  bool ended = false;
  ASSERT_TRUE(WaitFor(
      [&] {
        t = train(&ended);
        return t.contains("checkpoints") || ended;
      },
      150s))
      << t.dump(1) << StepLogs(dir.path(), run);
  ASSERT_EQ(t["attempts"].size(), 1u) << t.dump(1);
  EXPECT_EQ(t["attempts"][0]["world_size"], 2);
  std::ofstream(go) << "go\n";
  // It grows to 3, and rank 2's container is lost once the 3 have saved an epoch.
  ASSERT_TRUE(WaitFor(
      [&] {
        t = train(&ended);
        const Json& c = t.value("checkpoints", Json::object());
        return (c.contains("step") && c["step"].value("attempt", 0) == 2) || ended;
      },
      150s))
      << t.dump(1) << StepLogs(dir.path(), run);
  ASSERT_EQ(t["attempts"].size(), 2u) << t.dump(1);
  const Json& a2 = t["attempts"][1];
  ASSERT_EQ(a2["world_size"], 3) << t.dump(1);
  ASSERT_EQ(a2["state"], "running") << t.dump(1);
  std::string lost = a2["workers"][2]["container"];
  for (pid_t p : d.AgentPids()) {
    if (AgentContainerId(p) == lost) KillProcessTree(p);
  }
  Json r = d.WaitForRun(run, 300s);
  ASSERT_EQ(r["state"], "succeeded") << r.dump(1) << "\n" << StepLogs(dir.path(), run);

  // The resizes: 2 -> 3 (room freed), 3 -> 2 (a rank lost), maybe 2 -> 3 again once the
  // pool has replaced the lost container; never below 2.
  std::vector<std::string> resized;
  for (const auto& e : d.AllEvents()) {
    if (e["stream"] != "run-" + run || e["type"] != "GangResized") continue;
    resized.push_back(e["data"]["from"].dump() + "->" + e["data"]["world_size"].dump());
    EXPECT_GE(e["data"]["world_size"].get<int>(), 2);
  }
  ASSERT_GE(resized.size(), 2u);
  EXPECT_EQ(resized[0], "2->3");
  EXPECT_EQ(resized[1], "3->2");
  const Json& attempts = Step(r, "train")["attempts"];
  ASSERT_EQ(attempts.size(), resized.size() + 1) << attempts.dump(1);
  // Lost, or failed first: the others' all_reduce errors out when their peer dies,
  // often before the master has seen the container go; either way one rank was lost.
  EXPECT_TRUE(attempts[1]["state"] == "lost" || attempts[1]["state"] == "failed")
      << attempts[1].dump(1);
  EXPECT_EQ(attempts[1]["workers"][2]["state"], "lost") << attempts[1].dump(1);
  EXPECT_EQ(attempts[2]["world_size"], 2);
  // Every attempt's ranks formed a group of its size; each after the first resumed from
  // a checkpoint, never from epoch 1; the last finished the 6 epochs.
  const std::string logs = dir.path() + "/logs/" + run + "/train/";
  for (const auto& a : attempts) {
    const int n = a["attempt"], w = a["world_size"];
    std::string log = Slurp(logs + std::to_string(n) + ".log");
    SCOPED_TRACE("attempt " + std::to_string(n) + " rank 0:\n" + log);
    EXPECT_GE(w, 2);
    EXPECT_NE(log.find("rank=0 world_size=" + std::to_string(w)), std::string::npos);
    EXPECT_NE(log.find("all_reduce(rank+1) = " + std::to_string(w * (w + 1) / 2) + " "),
              std::string::npos);
    EXPECT_NE(log.find("shard rank::" + std::to_string(w) + " of 6000 images"), std::string::npos);
    if (n == 1) continue;
    EXPECT_TRUE(a.contains("resumed_from")) << a.dump(1);
    EXPECT_NE(log.find("resumed from "), std::string::npos);
    EXPECT_EQ(log.find("epoch 1/6 rank"), std::string::npos) << "started again from epoch 1";
  }
  EXPECT_NE(Slurp(logs + std::to_string(attempts.back()["attempt"].get<int>()) + ".log")
                .find("epoch 6/6 rank 0"),
            std::string::npos);
  // The model reaches the target: validate measures it, and infer, gated on it, ran.
  const Json& vm = Step(r, "validate")["metrics"];
  ASSERT_TRUE(vm.contains("accuracy")) << vm.dump(2);
  std::cout << "elastic training: resizes " << ::testing::PrintToString(resized)
            << ", test accuracy " << vm["accuracy"] << "\n";
  EXPECT_GE(vm["accuracy"].get<double>(), target) << vm.dump(2);
  EXPECT_EQ(Step(r, "infer")["state"], "succeeded") << Step(r, "infer").dump(2);
}

}  // namespace
}  // namespace epoch::testing
