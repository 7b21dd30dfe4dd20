// Placement through the Processor: the pool's ticks and containers (launch back-off,
// scaling, lost containers), GPU best fit, priority, tenants' quotas and fair share.
#include <gtest/gtest.h>

#include <map>
#include <set>
#include <string>
#include <vector>

#include "engine/decider_test_util.h"

namespace epoch::engine {
namespace {

using test_util::DeciderTest;
using test_util::Reports;
using test_util::ScalingTest;

TEST_F(DeciderTest, LostContainerFailsItsAttemptsWhichRetry) {
  StartContainer();
  std::string run = Submit();
  auto evs = DoTick({"c1"});
  std::vector<std::string> types = Types(evs);
  ASSERT_GE(types.size(), 3u);
  EXPECT_EQ(types[0], "ContainerLost");
  EXPECT_EQ(types[1], "JobFailed");
  EXPECT_EQ(evs[1].data["reason"], "container_lost");
  EXPECT_EQ(R(run).steps[0].attempts[0].phase, AttemptPhase::kLost);
  // The pool asks for a replacement in the same tick.
  EXPECT_EQ(state_.containers.count("c2"), 1u);
  EXPECT_EQ(state_.containers["c1"].phase, ContainerPhase::kLost);
  // A lost container's agent is refused.
  PollContainer p;
  p.container = "c1";
  Status st;
  Do(p, &st);
  EXPECT_EQ(st.code(), StatusCode::kFailedPrecondition);
}

TEST(PoolTest, LaunchFailuresBackOffExponentially) {
  EngineConfig cfg;
  cfg.max_replicas = 1;
  cfg.min_replicas = 1;
  State s;
  TimePoint now = FromMicros(1'800'000'000'000'000);
  auto tick = [&] {
    Processor p(&s, DecideContext{now, &cfg}, 1);
    p.Record(OnTick(s, Tick{}, DecideContext{now, &cfg}));
    return p.recorded().size();
  };
  auto fail = [&](const std::string& id) {
    Processor p(&s, DecideContext{now, &cfg}, 1);
    auto r = p.Apply(ContainerLaunchResult{id, false, "", "no such file"});
    ASSERT_TRUE(r.ok());
  };
  EXPECT_EQ(tick(), 1u);  // c1 requested
  fail("c1");
  EXPECT_EQ(s.containers["c1"].reason, "launch failed: no such file");
  EXPECT_EQ(tick(), 0u);  // backing off 1 s
  now += std::chrono::seconds(1);
  EXPECT_EQ(tick(), 1u);  // c2
  fail("c2");
  now += std::chrono::seconds(1);
  EXPECT_EQ(tick(), 0u);  // 2 s now
  now += std::chrono::seconds(1);
  EXPECT_EQ(tick(), 1u);  // c3
  EXPECT_EQ(s.container_counter, 3u);
}

TEST_F(ScalingTest, ARefusedLaunchFailsOnlyTheDemandNoContainerCouldEverHold) {
  // One registered container of 4 GPUs exists; a 1-GPU job fits it (when it is free),
  // a 4-GPU job waiting behind busy GPUs fits it too; nothing fits a 5-GPU ask
  // until the pool grows, and the backend refuses to grow it.
  cfg_.container_gpus = 8;
  cfg_.min_replicas = 1;
  ASSERT_EQ(Count(Tick(), ev::kContainerRequested), 1);
  Register("c1", 4);  // registered with 4 of the 8 GPUs a new container would have
  Submit(R"({"name":"small","steps":[{"name":"a","command":["x"],"resources":{"gpus":4},
      "retry":{"limit":3}}]})",
         2);
  Submit(R"({"name":"big","steps":[{"name":"a","command":["x"],"resources":{"gpus":6},
      "retry":{"limit":3}}]})",
         1);
  auto evs = Tick();
  ASSERT_EQ(Count(evs, ev::kContainerRequested), 2) << "demand: small1 and big0 wait";
  std::string id = evs[0].data["container"];
  ContainerLaunchResult lr{id, false, "",
                           "slurm refused the job: Requested node configuration is not available"};
  lr.unschedulable = true;
  evs = Run(lr);
  ASSERT_EQ(Count(evs, ev::kContainerLost), 1);
  EXPECT_EQ(evs[0].data["unschedulable"], true);
  EXPECT_EQ(evs[0].data["reason"],
            "launch failed: unschedulable: slurm refused the job: Requested node configuration is "
            "not available");
  // Only big0 fails: small1 fits c1 once small0 is done there.
  ASSERT_EQ(Count(evs, ev::kJobFailed), 1);
  for (const auto& e : evs) {
    if (e.type == ev::kJobFailed) {
      EXPECT_EQ(e.stream, "run-big0");
      EXPECT_EQ(
          e.data["reason"],
          "unschedulable: slurm refused the job: Requested node configuration is not available");
    }
  }
  // Not retried although its policy allows 3 retries: the run fails.
  EXPECT_EQ(s_.runs["big0"].phase, RunPhase::kFailed);
  EXPECT_NE(s_.runs["big0"].reason.find("unschedulable"), std::string::npos)
      << s_.runs["big0"].reason;
  EXPECT_EQ(s_.runs["small1"].phase, RunPhase::kQueued);
  // A second refusal (the other container of the round) fails nothing more.
  ContainerLaunchResult lr2{"c" + std::to_string(s_.container_counter), false, "", "refused"};
  lr2.unschedulable = true;
  EXPECT_EQ(Count(Run(lr2), ev::kJobFailed), 0);
}

TEST_F(ScalingTest, AContainerTheBackendReportsGoneIsLostAndItsAttemptsFail) {
  cfg_.container_gpus = 0;
  cfg_.min_replicas = 1;
  ASSERT_EQ(Count(Tick(), ev::kContainerRequested), 1);
  Register("c1", 0);
  Run(ContainerLaunchResult{"c1", true, "77", ""});
  ASSERT_EQ(s_.containers["c1"].handle, "77");
  Submit(R"({"name":"w","steps":[{"name":"a","command":["x"],"retry":{"limit":1}}]})", 1);
  ASSERT_EQ(s_.runs["w0"].steps[0].Last()->phase, AttemptPhase::kAssigned);
  // An answer about another handle (an older launch) changes nothing.
  EXPECT_TRUE(Run(ContainerExited{"c1", "76", "slurm job 76 CANCELLED"}).empty());
  auto evs = Run(ContainerExited{"c1", "77", "slurm job 77 CANCELLED (exit code 0:15) on n1"});
  ASSERT_EQ(Count(evs, ev::kContainerLost), 1);
  EXPECT_EQ(evs[0].data["reason"], "slurm job 77 CANCELLED (exit code 0:15) on n1");
  EXPECT_EQ(s_.containers["c1"].phase, ContainerPhase::kLost);
  EXPECT_EQ(s_.runs["w0"].steps[0].attempts[0].phase, AttemptPhase::kLost);
  EXPECT_EQ(Count(evs, ev::kJobRetryScheduled), 1);
  // Told again: it is already lost.
  EXPECT_TRUE(Run(ContainerExited{"c1", "77", "again"}).empty());
}

TEST_F(ScalingTest, AContainerStillQueuedByTheBackendOutlivesTheRegisterTimeout) {
  cfg_.min_replicas = 1;
  cfg_.register_timeout = std::chrono::seconds(30);
  ASSERT_EQ(Count(Tick(), ev::kContainerRequested), 1);
  now_ += std::chrono::seconds(31);
  auto tick = [&](std::map<std::string, TimePoint> queued) {
    Processor p(&s_, DecideContext{now_, &cfg_}, 1);
    engine::Tick t;
    t.queued = std::move(queued);
    p.Record(OnTick(s_, t, DecideContext{now_, &cfg_}));
    p.Settle();
    return p.recorded();
  };
  // Its Slurm job was PENDING 1 s ago: the 30 s count from then.
  EXPECT_EQ(Count(tick({{"c1", now_ - std::chrono::seconds(1)}}), ev::kContainerLost), 0);
  EXPECT_EQ(s_.containers["c1"].phase, ContainerPhase::kRequested);
  now_ += std::chrono::seconds(28);
  EXPECT_EQ(Count(tick({{"c1", now_ - std::chrono::seconds(29)}}), ev::kContainerLost), 0);
  now_ += std::chrono::seconds(2);
  auto evs = tick({{"c1", now_ - std::chrono::seconds(31)}});
  ASSERT_EQ(Count(evs, ev::kContainerLost), 1);
  EXPECT_EQ(evs[0].data["reason"], "never registered (within 30s)");
}

TEST_F(ScalingTest, BurstGrowsThePoolInUnitsNoFasterThanTheInterval) {
  EXPECT_EQ(Count(Tick(), ev::kContainerRequested), 0);  // no demand, min 0: nothing
  // 20 jobs of 1 CPU each: each container holds one.
  Submit(R"({"name":"burst","steps":[{"name":"a","command":["x"],"resources":{"cpu":"1"}}]})", 20);
  auto evs = Tick();
  EXPECT_EQ(Count(evs, ev::kContainerRequested), 2);  // first round at once
  EXPECT_EQ(evs[0].data["reason"], "demand");
  EXPECT_EQ(Live(), 2);
  now_ += std::chrono::milliseconds(500);
  EXPECT_EQ(Count(Tick(), ev::kContainerRequested), 0);  // interval not yet over
  now_ += std::chrono::milliseconds(500);
  EXPECT_EQ(Count(Tick(), ev::kContainerRequested), 2);
  EXPECT_EQ(Live(), 4);
  now_ += std::chrono::seconds(1);
  EXPECT_EQ(Count(Tick(), ev::kContainerRequested), 1);  // capped by sig.maxReplicas
  EXPECT_EQ(Live(), 5);
  now_ += std::chrono::seconds(5);
  EXPECT_EQ(Count(Tick(), ev::kContainerRequested), 0);
  // Work is placed as containers register; when it is all done they go idle and
  // are released after sig.idleTimeout.
  for (int i = 1; i <= 5; ++i) Register("c" + std::to_string(i), 0);
  int done = 0;
  while (done < 20) {
    for (const auto& [id, r] : decltype(s_.runs)(s_.runs)) {
      const Attempt* a = r.steps[0].Last();
      if (a && a->phase == AttemptPhase::kAssigned) {
        PollContainer p;
        p.container = a->container;
        p.reports =
            Reports(Json::array({Json{{"attempt_id", id + "/a/1"}, {"state", "succeeded"}}}));
        Run(p);
        ++done;
      }
    }
  }
  EXPECT_TRUE(s_.queue.empty());
  now_ += std::chrono::seconds(29);
  EXPECT_EQ(Count(Tick(), ev::kContainerReleased), 0);
  now_ += std::chrono::seconds(2);
  evs = Tick();
  EXPECT_EQ(Count(evs, ev::kContainerReleased), 5);
  EXPECT_NE(evs[0].data["reason"].get<std::string>().find("idle for"), std::string::npos);
  EXPECT_EQ(Live(), 0);
}

TEST_F(ScalingTest, MinReplicasAreKeptAndNotReleased) {
  cfg_.min_replicas = 2;
  auto evs = Tick();
  EXPECT_EQ(Count(evs, ev::kContainerRequested), 2);
  EXPECT_EQ(evs[0].data["reason"], "minReplicas");
  Register("c1", 0);
  Register("c2", 0);
  now_ += std::chrono::hours(1);
  EXPECT_EQ(Count(Tick(), ev::kContainerReleased), 0);
  EXPECT_EQ(Live(), 2);
}

TEST_F(ScalingTest, GpusAreGivenToOneAttemptAtATimeWithBestFit) {
  cfg_.min_replicas = 2;
  Tick();
  Register("c1", 4);
  Register("c2", 4);
  // Six 1-GPU then three 2-GPU attempts ask for 12 GPUs; 2x4 hold 8. Best fit packs
  // the singles (4 on c1, 2 on c2), so one double still fits in c2's last two.
  Submit(
      R"({"name":"g1","steps":[{"name":"a","command":["x"],"resources":{"gpus":1,"cpu":"10m"}}]})",
      6);
  Submit(
      R"({"name":"g2","steps":[{"name":"a","command":["x"],"resources":{"gpus":2,"cpu":"10m"}}]})",
      3);
  std::map<std::string, std::set<std::string>> used;  // container -> gpu indices
  int placed = 0, waiting = 0;
  for (const auto& [id, r] : s_.runs) {
    const Attempt* a = r.steps[0].Last();
    if (a->phase == AttemptPhase::kQueued) {
      ++waiting;
      continue;
    }
    ++placed;
    ASSERT_EQ(static_cast<int>(a->gpus.size()), a->resources.gpus);
    ASSERT_EQ(a->gpu_uuids.size(), a->gpus.size());
    for (const auto& g : a->gpus) {
      EXPECT_TRUE(used[a->container].insert(g.get<std::string>()).second)
          << "GPU " << g << " of " << a->container << " given twice";
    }
  }
  EXPECT_EQ(used["c1"].size() + used["c2"].size(), 8u);
  EXPECT_EQ(placed, 7);
  EXPECT_EQ(waiting, 2);
  EXPECT_EQ(s_.containers["c1"].busy_gpus.size(), 4u);
  EXPECT_EQ(s_.containers["c2"].busy_gpus.size(), 4u);
}

TEST_F(ScalingTest, PriorityMovesARunAhead) {
  cfg_.min_replicas = 1;
  cfg_.container_gpus = 1;
  Tick();
  Register("c1", 1);
  Submit(R"({"name":"p","steps":[{"name":"a","command":["x"],"resources":{"gpus":1}}]})", 3);
  SubmitRun urgent;
  urgent.run_id = "urgent";
  urgent.workflow = "p";
  urgent.priority = 10;
  Run(urgent);
  // p0 holds the only GPU; when it finishes, the urgent run goes next, not p1.
  PollContainer p;
  p.container = "c1";
  p.reports = Reports(Json::array({Json{{"attempt_id", "p0/a/1"}, {"state", "succeeded"}}}));
  Run(p);
  EXPECT_EQ(s_.runs["urgent"].steps[0].Last()->phase, AttemptPhase::kAssigned);
  EXPECT_EQ(s_.runs["p1"].steps[0].Last()->phase, AttemptPhase::kQueued);
}

// Preemption by priority (scheduler.preemption = priority), from the decider's view:
// who gives way, when, and what happens to the attempt that does.
class PreemptionTest : public ScalingTest {
 protected:
  void SetUp() override {
    cfg_.min_replicas = 1;
    cfg_.max_replicas = 1;
    cfg_.container_gpus = 2;
    cfg_.preemption = true;
    cfg_.preemption_min_run_time = std::chrono::seconds(60);
    Tick();
    Register("c1", 2);
  }
  std::vector<RecordedEvent> Urgent(int gpus, int priority = 10, const std::string& id = "urgent") {
    Status st;
    std::string wf = "u" + std::to_string(gpus);
    Run(RegisterWorkflow{*ParseJson(
            R"({"name":")" + wf + R"(","steps":[{"name":"a","command":["x"],"resources":{"gpus":)" +
            std::to_string(gpus) + R"(}}]})")},
        &st);
    SubmitRun sr;
    sr.run_id = id;
    sr.workflow = wf;
    sr.priority = priority;
    auto evs = Run(sr, &st);
    EXPECT_TRUE(st.ok()) << st.ToString();
    return evs;
  }
  std::vector<RecordedEvent> Ended(const std::string& attempt, const std::string& state) {
    PollContainer p;
    p.container = "c1";
    p.reports = Reports(Json::array({Json{{"attempt_id", attempt}, {"state", state}}}));
    return Run(p);
  }
  static std::vector<std::string> Preempted(const std::vector<RecordedEvent>& evs) {
    std::vector<std::string> out;
    for (const auto& e : evs) {
      if (e.type == "JobPreempted") {
        out.push_back(e.stream.substr(4) + "/" + e.data["step"].get<std::string>() + "/" +
                      e.data["attempt"].dump() + " by " + e.data["by"].get<std::string>());
      }
    }
    return out;
  }
};

TEST_F(PreemptionTest, AHigherPriorityRunTakesTheGpusOnceTheMinimumRunTimeHasPassed) {
  Submit(R"({"name":"low","steps":[{"name":"a","command":["x"],"resources":{"gpus":2}}]})", 1);
  ASSERT_EQ(s_.runs["low0"].steps[0].Last()->phase, AttemptPhase::kAssigned);
  now_ += std::chrono::seconds(30);
  Urgent(1);
  EXPECT_EQ(s_.runs["urgent"].steps[0].Last()->phase, AttemptPhase::kQueued);
  EXPECT_TRUE(Preempted(Tick()).empty()) << "low0 has run 30 s, less than the minimum";
  now_ += std::chrono::seconds(31);
  auto evs = Tick();
  ASSERT_EQ(Preempted(evs), (std::vector<std::string>{"low0/a/1 by urgent/a/1"}));
  for (const auto& e : evs) {
    if (e.type != "JobPreempted") continue;
    EXPECT_EQ(e.data["priority"], 0);
    EXPECT_EQ(e.data["by_priority"], 10);
    EXPECT_EQ(e.data["reason"],
              "preempted by urgent/a/1 (priority 10 over 0), which needs 100m CPU, 128Mi "
              "memory, 1 GPU and fits nowhere else");
  }
  EXPECT_EQ(s_.runs["low0"].steps[0].Last()->preempted_by, "urgent/a/1");
  EXPECT_TRUE(Preempted(Tick()).empty()) << "one preemption per need, however many ticks";
  // The agent's cancel ends it; the step is queued again at once, no try counted (its
  // retry.limit is 0), and the urgent attempt takes the GPUs.
  evs = Ended("low0/a/1", "cancelled");
  EXPECT_EQ(s_.runs["low0"].steps[0].attempts[0].reason, "preempted by urgent/a/1");
  ASSERT_EQ(s_.runs["low0"].steps[0].attempts.size(), 2u);
  EXPECT_EQ(s_.runs["low0"].steps[0].attempts[1].phase, AttemptPhase::kQueued);
  EXPECT_EQ(s_.runs["low0"].phase, RunPhase::kRunning);
  EXPECT_EQ(s_.runs["urgent"].steps[0].Last()->phase, AttemptPhase::kAssigned);
  // low0 does not preempt back (lower priority), and runs once urgent is done.
  now_ += std::chrono::seconds(120);
  EXPECT_TRUE(Preempted(Tick()).empty());
  Ended("urgent/a/1", "succeeded");
  EXPECT_EQ(s_.runs["low0"].steps[0].attempts[1].phase, AttemptPhase::kAssigned);
}

TEST_F(PreemptionTest, NeverMoreThanNeededTheYoungestGoesAndEqualPriorityWaits) {
  Submit(R"({"name":"one","steps":[{"name":"a","command":["x"],"resources":{"gpus":1}}]})", 1);
  now_ += std::chrono::seconds(10);
  Submit(R"({"name":"two","steps":[{"name":"a","command":["x"],"resources":{"gpus":1}}]})", 1);
  now_ += std::chrono::seconds(100);
  EXPECT_TRUE(Preempted(Urgent(1, 0, "peer")).empty());  // same priority: waits
  EXPECT_TRUE(Preempted(Tick()).empty());
  // Either victim frees a GPU: only one goes, the one that started last (least lost).
  EXPECT_EQ(Preempted(Urgent(1, 5)), (std::vector<std::string>{"two0/a/1 by urgent/a/1"}));
  EXPECT_TRUE(Preempted(Tick()).empty());
  EXPECT_TRUE(s_.runs["one0"].steps[0].Last()->preempted_by.empty());
}

TEST_F(PreemptionTest, AGangIsPreemptedWholeOrNotAtAll) {
  Submit(R"({"name":"gang","steps":[{"name":"a","command":["x"],"workers":2,
             "resources":{"gpus":1}}]})",
         1);
  ASSERT_EQ(s_.runs["gang0"].steps[0].Last()->ranks.size(), 2u);
  now_ += std::chrono::seconds(100);
  // One GPU is needed; the gang holds both: the whole attempt gives way, once.
  EXPECT_EQ(Preempted(Urgent(1)), (std::vector<std::string>{"gang0/a/1 by urgent/a/1"}));
  EXPECT_TRUE(Preempted(Tick()).empty());
  // Its workers are cancelled by the dispatcher; when they end, it is queued again.
  PollContainer p;
  p.container = "c1";
  p.reports = Reports(Json::array({Json{{"attempt_id", "gang0/a/1/0"}, {"state", "cancelled"}},
                                   Json{{"attempt_id", "gang0/a/1/1"}, {"state", "cancelled"}}}));
  Run(p);
  ASSERT_EQ(s_.runs["gang0"].steps[0].attempts.size(), 2u);
  EXPECT_EQ(s_.runs["gang0"].steps[0].attempts[0].reason, "preempted by urgent/a/1");
  EXPECT_EQ(s_.runs["gang0"].steps[0].attempts[1].phase, AttemptPhase::kQueued);
  EXPECT_EQ(s_.runs["urgent"].steps[0].Last()->phase, AttemptPhase::kAssigned);
}

// Preemption may take an elastic gang down rather than stop it: to the size the
// candidate leaves it, no lower than its min; it restarts that wide and grows back
// when the room frees. Where its min is not room enough, it gives way whole.
class ElasticPreemptionTest : public PreemptionTest {
 protected:
  void SetUp() override {
    PreemptionTest::SetUp();
    cfg_.min_replicas = cfg_.max_replicas = 2;
    Tick();
    ASSERT_EQ(s_.containers.count("c2"), 1u);
    Register("c2", 2);  // 4 GPUs in all
  }
  // An elastic gang of `min` to 4 workers of 1 GPU: it takes all 4.
  void Gang(int min) {
    Submit(R"({"name":"gang","steps":[{"name":"a","command":["x"],"workers":{"min":)" +
               std::to_string(min) + R"(,"max":4},"resources":{"gpus":1}}]})",
           1);
  }
  const Attempt& G(int n) { return s_.runs["gang0"].steps[0].attempts[static_cast<size_t>(n) - 1]; }
  // Every worker of `attempt` reports `state` ("running": listed as running).
  void Workers(const std::string& attempt, const std::string& state) {
    const Attempt* a = s_.FindAttempt(attempt);
    ASSERT_NE(a, nullptr);
    std::vector<Worker> ranks = a->ranks;
    for (const Worker& w : ranks) {
      PollContainer p;
      p.container = w.container;
      std::string id = attempt + "/" + std::to_string(w.rank);
      if (state == "running") {
        p.running = {id};
      } else {
        p.reports = Reports(Json::array({Json{{"attempt_id", id}, {"state", state}}}));
      }
      Run(p);
    }
  }
  static std::vector<Json> Resized(const std::vector<RecordedEvent>& evs) {
    std::vector<Json> out;
    for (const auto& e : evs) {
      if (e.type == "GangResized") out.push_back(e.data);
    }
    return out;
  }
};

TEST_F(ElasticPreemptionTest, TakesTheGangDownToWhatTheCandidateLeavesAndItGrowsBack) {
  Gang(2);
  ASSERT_EQ(G(1).workers, 4);
  Workers("gang0/a/1", "running");
  now_ += std::chrono::seconds(100);
  auto evs = Urgent(1);
  EXPECT_TRUE(Preempted(evs).empty()) << "not stopped";
  std::vector<Json> r = Resized(evs);
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0]["attempt"], 1);
  EXPECT_EQ(r[0]["from"], 4);
  EXPECT_EQ(r[0]["world_size"], 3) << "one GPU is needed: it keeps 3 of 4";
  EXPECT_EQ(r[0]["by"], "urgent/a/1");
  EXPECT_EQ(r[0]["priority"], 0);
  EXPECT_EQ(r[0]["by_priority"], 10);
  Json members = Json::array();
  for (const Worker& w : G(1).ranks) {
    if (w.rank < 3) members.push_back(w.container);
  }
  EXPECT_EQ(r[0]["members"], members);
  EXPECT_EQ(r[0]["reason"],
            "preempted down from 4 to 3 workers (min 2) by urgent/a/1 (priority 10 over 0), "
            "which needs 100m CPU, 128Mi memory, 1 GPU and fits nowhere else");
  EXPECT_EQ(G(1).preempted_by, "urgent/a/1");
  EXPECT_TRUE(Resized(Tick()).empty()) << "once";
  EXPECT_EQ(s_.runs["urgent"].steps[0].Last()->phase, AttemptPhase::kQueued) << "it waits";
  // Its workers end; the gang is queued again (no try counted) no wider than it was
  // left, so the freed GPU goes to the candidate and the gang restarts on the other 3.
  Workers("gang0/a/1", "cancelled");
  EXPECT_EQ(G(1).reason, "resized to 3 workers: preempted by urgent/a/1");
  ASSERT_EQ(s_.runs["gang0"].steps[0].attempts.size(), 2u);
  EXPECT_EQ(G(2).workers_cap, 3);
  EXPECT_EQ(G(2).phase, AttemptPhase::kAssigned);
  EXPECT_EQ(G(2).workers, 3);
  const Attempt* u = s_.runs["urgent"].steps[0].Last();
  ASSERT_EQ(u->phase, AttemptPhase::kAssigned);
  // No GPU is held twice.
  std::set<std::string> held;
  for (const Worker& w : G(2).ranks) {
    for (const auto& g : w.gpus) EXPECT_TRUE(held.insert(w.container + ":" + g.dump()).second);
  }
  for (const auto& g : u->gpus) EXPECT_TRUE(held.insert(u->container + ":" + g.dump()).second);
  EXPECT_EQ(held.size(), 4u);
  // Once urgent is done and the gang has run elastic_min_run_time, it grows back to 4.
  Workers("gang0/a/2", "running");
  PollContainer done;
  done.container = u->container;
  done.reports = Reports(Json::array({Json{{"attempt_id", "urgent/a/1"}, {"state", "succeeded"}}}));
  Run(done);
  ASSERT_EQ(s_.runs["urgent"].phase, RunPhase::kSucceeded);
  now_ += std::chrono::seconds(61);
  r = Resized(Tick());
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0]["from"], 3);
  EXPECT_EQ(r[0]["world_size"], 4);
  EXPECT_FALSE(r[0].contains("by"));
  Workers("gang0/a/2", "cancelled");
  ASSERT_EQ(s_.runs["gang0"].steps[0].attempts.size(), 3u);
  EXPECT_EQ(G(3).workers_cap, 0);
  EXPECT_EQ(G(3).workers, 4);
  EXPECT_EQ(s_.runs["gang0"].phase, RunPhase::kRunning);
}

TEST_F(ElasticPreemptionTest, WhereItsMinimumIsNotRoomEnoughItGivesWayWhole) {
  Gang(3);
  now_ += std::chrono::seconds(100);
  // 2 GPUs are needed; down to its min of 3 the gang would free 1.
  auto evs = Urgent(2);
  EXPECT_TRUE(Resized(evs).empty());
  EXPECT_EQ(Preempted(evs), (std::vector<std::string>{"gang0/a/1 by urgent/a/1"}));
}

TEST_F(ElasticPreemptionTest, TwoGpusNeededTakeItDownToItsMinimum) {
  Gang(2);
  now_ += std::chrono::seconds(100);
  std::vector<Json> r = Resized(Urgent(2));
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0]["from"], 4);
  EXPECT_EQ(r[0]["world_size"], 2);
}

TEST_F(PreemptionTest, NoneWhileThePoolCanStillGrow) {
  cfg_.max_replicas = 2;
  Submit(R"({"name":"low","steps":[{"name":"a","command":["x"],"resources":{"gpus":2}}]})", 1);
  now_ += std::chrono::hours(1);
  auto evs = Urgent(1);
  evs = Tick();  // asks for a second container rather than stop low0
  EXPECT_TRUE(Preempted(evs).empty());
  EXPECT_EQ(Count(evs, "ContainerRequested"), 1);
  // At the pool's size, with the new container on its way, it still waits for it.
  EXPECT_TRUE(Preempted(Tick()).empty());
  EXPECT_TRUE(s_.runs["low0"].steps[0].Last()->preempted_by.empty());
}

TEST_F(PreemptionTest, OffByDefault) {
  cfg_.preemption = false;
  Submit(R"({"name":"low","steps":[{"name":"a","command":["x"],"resources":{"gpus":2}}]})", 1);
  now_ += std::chrono::hours(1);
  Urgent(2);
  EXPECT_TRUE(Preempted(Tick()).empty());
  EXPECT_EQ(EngineConfig{}.preemption, false);
}

// Elastic gangs ("workers": {"min": 2, "max": 3}), from the decider's view: placed as
// wide as fits, grown when room frees (after elastic_min_run_time), shrunk when a
// worker's container is lost while min remain; at min, a loss fails as it always did.
class ElasticTest : public ScalingTest {
 protected:
  void SetUp() override {
    cfg_.min_replicas = 0;
    cfg_.max_replicas = 0;  // the test registers the containers itself
    cfg_.container_cpu_millis = 1000;
    cfg_.elastic_min_run_time = std::chrono::seconds(60);
  }
  // One more container in the pool (minReplicas), registered.
  void Add(const std::string& id) {
    cfg_.max_replicas = ++cfg_.min_replicas;
    Tick();
    ASSERT_EQ(s_.containers.count(id), 1u);
    Register(id, 0);
  }
  std::vector<RecordedEvent> Lose(const std::string& id) {
    Processor p(&s_, DecideContext{now_, &cfg_}, 1);
    p.Record(OnTick(s_, engine::Tick{{id}}, DecideContext{now_, &cfg_}));
    p.Settle();
    return p.recorded();
  }
  // Each live worker of `attempt` reports `state` ("running": listed as running).
  std::vector<RecordedEvent> Workers(const std::string& attempt, int n, const std::string& state) {
    std::vector<RecordedEvent> all;
    for (int r = 0; r < n; ++r) {
      std::string id = attempt + "/" + std::to_string(r);
      const Attempt* ga = nullptr;
      const Worker* w = s_.FindWorker(id, &ga);
      if (!w || w->phase == AttemptPhase::kLost) continue;
      PollContainer one;
      one.container = w->container;
      if (state == "running") {
        one.running = {id};
      } else {
        one.reports = Reports(Json::array({Json{{"attempt_id", id}, {"state", state}}}));
      }
      for (auto& e : Run(one)) all.push_back(e);
    }
    return all;
  }
  const Attempt& A(int n) { return s_.runs["el0"].steps[0].attempts[static_cast<size_t>(n) - 1]; }
  static std::vector<std::string> Resized(const std::vector<RecordedEvent>& evs) {
    std::vector<std::string> out;
    for (const auto& e : evs) {
      if (e.type == "GangResized") {
        out.push_back(e.data["attempt"].dump() + ": " + e.data["from"].dump() + " -> " +
                      e.data["world_size"].dump() + " " + e.data["members"].dump() + " " +
                      e.data["reason"].get<std::string>());
      }
    }
    return out;
  }
};

TEST_F(ElasticTest, StartsAtWhatFitsGrowsWhenRoomFreesAndShrinksOnALostWorker) {
  Add("c1");
  Add("c2");
  Submit(R"({"name":"el","steps":[{"name":"a","command":["x"],"workers":{"min":2,"max":3},
             "resources":{"cpu":"1"}}]})",
         1);
  ASSERT_EQ(A(1).phase, AttemptPhase::kAssigned) << "2 fit: it starts with 2";
  EXPECT_EQ(A(1).workers, 2);
  EXPECT_EQ(A(1).ranks.size(), 2u);
  Workers("el0/a/1", 2, "running");
  EXPECT_EQ(A(1).phase, AttemptPhase::kRunning);
  Add("c3");
  EXPECT_TRUE(Resized(Tick()).empty()) << "it has not run elastic_min_run_time yet";
  now_ += std::chrono::seconds(61);
  auto evs = Tick();
  EXPECT_EQ(Resized(evs),
            (std::vector<std::string>{
                R"(1: 2 -> 3 ["c1","c2"] room for 1 more worker: grows from 2 to 3 (max 3))"}));
  EXPECT_TRUE(Resized(Tick()).empty()) << "once";
  // The ranks are cancelled; the step is queued again, not as a try, and placed on 3.
  Workers("el0/a/1", 2, "cancelled");
  EXPECT_EQ(A(1).reason, "resized to 3 workers");
  ASSERT_EQ(s_.runs["el0"].steps[0].attempts.size(), 2u);
  EXPECT_EQ(A(2).phase, AttemptPhase::kAssigned);
  EXPECT_EQ(A(2).workers, 3);
  Workers("el0/a/2", 3, "running");
  // c3 is lost: 2 of 3 remain, at least min: once the other two have stopped, it
  // shrinks to 2 rather than failing.
  evs = Lose("c3");
  EXPECT_TRUE(Resized(evs).empty()) << "ranks 0 and 1 still run";
  EXPECT_EQ(A(2).phase, AttemptPhase::kLost);
  evs = Workers("el0/a/2", 3, "cancelled");
  EXPECT_EQ(
      Resized(evs),
      (std::vector<std::string>{
          R"(2: 3 -> 2 ["c1","c2"] 1 of 3 workers lost with their containers; 2 go on (min 2))"}));
  ASSERT_EQ(s_.runs["el0"].steps[0].attempts.size(), 3u);
  EXPECT_EQ(A(3).phase, AttemptPhase::kAssigned);
  EXPECT_EQ(A(3).workers, 2);
  EXPECT_EQ(s_.runs["el0"].phase, RunPhase::kRunning);
  // At min, a loss is a failure as for any gang (retry.limit 0: the run fails).
  Workers("el0/a/3", 2, "running");
  evs = Lose("c2");
  EXPECT_TRUE(Resized(evs).empty());
  EXPECT_EQ(s_.runs["el0"].phase, RunPhase::kFailed);
  EXPECT_EQ(s_.runs["el0"].steps[0].attempts.size(), 3u);
}

// Real DDP: a lost peer fails the others' collective before the lost container's lease
// ends. The failed elastic gang is judged once every worker has ended: one was lost,
// so it shrinks rather than retries.
TEST_F(ElasticTest, PeersFailingBeforeTheLostContainerIsSeenStillShrink) {
  Add("c1");
  Add("c2");
  Add("c3");
  Submit(R"({"name":"el","steps":[{"name":"a","command":["x"],"workers":{"min":2,"max":3},
             "resources":{"cpu":"1"}}]})",
         1);
  ASSERT_EQ(A(1).workers, 3);
  Workers("el0/a/1", 3, "running");
  std::string lost;
  std::vector<RecordedEvent> evs;
  for (const Worker& w : std::vector<Worker>(A(1).ranks)) {
    if (w.rank == 2) {
      lost = w.container;
      continue;
    }
    PollContainer p;
    p.container = w.container;
    p.reports = Reports(Json::array(
        {Json{{"attempt_id", "el0/a/1/" + std::to_string(w.rank)}, {"state", "failed"}}}));
    for (auto& e : Run(p)) evs.push_back(e);
  }
  EXPECT_EQ(A(1).phase, AttemptPhase::kFailed);
  EXPECT_EQ(Count(evs, "JobRetryScheduled"), 0) << "rank 2 has not ended yet";
  EXPECT_TRUE(Resized(evs).empty());
  evs = Lose(lost);
  EXPECT_EQ(Count(evs, "JobRetryScheduled"), 0);
  ASSERT_EQ(Resized(evs).size(), 1u);
  EXPECT_NE(Resized(evs)[0].find("1: 3 -> 2 "), std::string::npos) << Resized(evs)[0];
  ASSERT_EQ(s_.runs["el0"].steps[0].attempts.size(), 2u);
  EXPECT_EQ(A(2).phase, AttemptPhase::kAssigned);
  EXPECT_EQ(A(2).workers, 2);
}

// Tenants' GPU quotas (tenants.<name>.maxGpus) and fair share between tenants.
class QuotaTest : public ScalingTest {
 protected:
  void SetUp() override {
    cfg_.min_replicas = 1;
    cfg_.max_replicas = 1;
    cfg_.allocation_interval = std::chrono::seconds(0);
    cfg_.container_cpu_millis = 4000;
    cfg_.container_memory_bytes = 8LL << 30;
    Tick();  // requests c1 (minReplicas)
    ASSERT_EQ(s_.containers.count("c1"), 1u);
  }
  // `runs` runs, as `tenant`, of a one-step workflow asking for `gpus` GPUs per
  // worker and `workers` workers; returns their ids in submission order.
  std::vector<std::string> SubmitAs(const std::string& tenant, int runs, int gpus = 1,
                                    int workers = 1) {
    std::string wf = tenant + "-g" + std::to_string(gpus) + "w" + std::to_string(workers);
    Json step{{"name", "a"},
              {"command", Json::array({"x"})},
              {"resources", Json{{"gpus", gpus}, {"cpu", "10m"}, {"memory", "10Mi"}}}};
    if (workers > 1) step["workers"] = workers;
    RegisterWorkflow rw;
    rw.definition = Json{{"name", wf}, {"steps", Json::array({step})}};
    rw.tenant = tenant;
    Status st;
    Run(rw, &st);
    EXPECT_TRUE(st.ok()) << st.ToString();
    std::vector<std::string> ids;
    for (int i = 0; i < runs; ++i) {
      SubmitRun sr;
      sr.run_id = wf + "-" + std::to_string(++submitted_);
      sr.workflow = wf;
      sr.tenant = tenant;
      for (auto& e : Run(sr, &st)) recorded_.push_back(std::move(e));
      EXPECT_TRUE(st.ok()) << st.ToString();
      ids.push_back(sr.run_id);
    }
    return ids;
  }
  std::vector<RecordedEvent> recorded_;  // what the submissions decided
  // Registers c1 with `gpus` GPUs without scheduling (no Settle): the queue waits.
  void RegisterOnly(int gpus) {
    RegisterContainer r;
    r.container = "c1";
    r.cpu_millis = cfg_.container_cpu_millis;
    r.memory_bytes = cfg_.container_memory_bytes;
    for (int i = 0; i < gpus; ++i) {
      r.gpus.push_back(Json{{"index", i},
                            {"uuid", "c1-gpu" + std::to_string(i)},
                            {"healthy", true},
                            {"simulated", true}});
    }
    Processor p(&s_, DecideContext{now_, &cfg_}, 1);
    ASSERT_TRUE(p.Apply(r).ok());
  }
  void Finish(const std::string& run) {
    const Attempt* a = s_.runs.at(run).steps[0].Last();
    ASSERT_NE(a, nullptr);
    ASSERT_TRUE(a->phase == AttemptPhase::kAssigned) << run << " is " << Name(a->phase);
    PollContainer p;
    p.container = a->container;
    p.reports = Reports(Json::array({Json{{"attempt_id", AttemptId(run, "a", a->number)},
                                          {"state", "succeeded"},
                                          {"exit_code", 0}}}));
    Status st;
    Run(p, &st);
    ASSERT_TRUE(st.ok()) << st.ToString();
  }
  int Held(const std::string& tenant) {
    auto held = TenantGpusHeld(s_);
    return held.count(tenant) ? held[tenant] : 0;
  }
  AttemptPhase Phase(const std::string& run) { return s_.runs.at(run).steps[0].Last()->phase; }
  int CountIn(const std::vector<std::string>& runs, AttemptPhase phase) {
    int n = 0;
    for (const auto& r : runs) n += Phase(r) == phase;
    return n;
  }
  // The attempt's "reason" as GET /v1/runs/{id} shows it (null when none).
  Json Reason(const std::string& run) {
    return RunToJson(s_.runs.at(run), cfg_, &s_)["steps"][0]["attempts"].back()["reason"];
  }

  int submitted_ = 0;
};

TEST_F(QuotaTest, AQuotaBlocksPlacementSaysWhyAndDoesNotGrowThePool) {
  cfg_.max_replicas = 3;
  cfg_.tenant_max_gpus = {{"ml", 2}};
  Register("c1", 4);
  auto ml = SubmitAs("ml", 5);
  EXPECT_EQ(CountIn(ml, AttemptPhase::kAssigned), 2);
  EXPECT_EQ(CountIn(ml, AttemptPhase::kQueued), 3);
  EXPECT_EQ(Held("ml"), 2);
  EXPECT_EQ(s_.containers["c1"].busy_gpus.size(), 2u);  // two GPUs stay free
  EXPECT_EQ(Reason(ml[4]), "tenant ml is at its GPU quota (2 of 2 GPUs)");
  EXPECT_TRUE(Reason(ml[0]).is_null());  // placed: no wait
  // Derived from state: without it the view has nothing to say, and digests keep.
  EXPECT_TRUE(RunToJson(s_.runs.at(ml[4]), cfg_)["steps"][0]["attempts"][0]["reason"].is_null());
  // Held back by the quota is no demand: the pool does not grow.
  now_ += std::chrono::seconds(5);
  EXPECT_EQ(Count(Tick(), ev::kContainerRequested), 0);
  EXPECT_EQ(Live(), 1);
  // As one ends, the next takes its GPU; never more than two at once.
  Finish(ml[0]);
  EXPECT_EQ(Phase(ml[2]), AttemptPhase::kAssigned);
  EXPECT_EQ(CountIn(ml, AttemptPhase::kQueued), 2);
  EXPECT_EQ(Held("ml"), 2);
  // The same work without a quota is demand: the pool asks for more.
  cfg_.tenant_max_gpus.clear();
  EXPECT_EQ(Count(Tick(), ev::kContainerRequested), 0);  // the free two take the last two
  EXPECT_EQ(CountIn(ml, AttemptPhase::kQueued), 0);
  auto more = SubmitAs("ml", 3);
  EXPECT_EQ(CountIn(more, AttemptPhase::kQueued), 3);
  EXPECT_GT(Count(Tick(), ev::kContainerRequested), 0);
}

// Preemption for fair share: a tenant below its share of the GPUs takes them back from
// one above it, as long as that one stays at or above its own share; not beyond.
TEST_F(QuotaTest, ATenantBelowItsFairShareTakesGpusFromOneAbove) {
  cfg_.preemption = true;
  cfg_.preemption_min_run_time = std::chrono::seconds(0);
  Register("c1", 4);
  auto a = SubmitAs("a", 4);
  EXPECT_EQ(Held("a"), 4);
  // b arrives: 4 GPUs between 2 tenants is 2 each. a gives up one GPU per b attempt.
  auto b = SubmitAs("b", 3);
  std::vector<std::string> preempted;
  for (const auto& [id, r] : s_.runs) {
    const Attempt& at = r.steps[0].attempts[0];
    if (!at.preempted_by.empty()) preempted.push_back(id + " by " + at.preempted_by);
  }
  // Two of a's (started together: by id), one for each of b's first two; b's third
  // would take b past its share, and a below its own.
  EXPECT_EQ(preempted, (std::vector<std::string>{a[0] + " by " + b[0] + "/a/1",
                                                 a[1] + " by " + b[1] + "/a/1"}));
  bool found = false;
  for (const auto& e : recorded_) {
    if (e.type != "JobPreempted" || e.data["by"] != b[0] + "/a/1") continue;
    found = true;
    EXPECT_EQ(e.data["reason"], "preempted by " + b[0] +
                                    "/a/1 (fair share: tenant b holds 0 of its 2 GPUs, tenant a "
                                    "holds 4, above its 2), which needs 10m CPU, 10Mi memory, 1 "
                                    "GPU and fits nowhere else");
  }
  EXPECT_TRUE(found);
  // Once they end, b runs two and a two; b's third waits for a GPU of its own.
  for (const auto& r : {a[0], a[1]}) {
    PollContainer p;
    p.container = "c1";
    p.reports = Reports(Json::array({Json{{"attempt_id", r + "/a/1"}, {"state", "cancelled"}}}));
    Run(p);
  }
  EXPECT_EQ(Held("a"), 2);
  EXPECT_EQ(Held("b"), 2);
  EXPECT_EQ(Phase(b[2]), AttemptPhase::kQueued);
  EXPECT_EQ(Phase(a[0]), AttemptPhase::kQueued) << "queued again, to run when there is room";
}

// Priority ranks the runs of one tenant: a high-priority run preempts its own tenant's
// lower-priority run, not another tenant that holds no more than its fair share.
TEST_F(QuotaTest, PriorityDoesNotPreemptAnotherTenantAtItsFairShare) {
  cfg_.preemption = true;
  cfg_.preemption_min_run_time = std::chrono::seconds(0);
  Register("c1", 4);
  auto a = SubmitAs("a", 2);
  auto b = SubmitAs("b", 2);
  EXPECT_EQ(Held("a"), 2);
  EXPECT_EQ(Held("b"), 2);
  SubmitRun urgent;
  urgent.run_id = "urgent";
  urgent.workflow = "b-g1w1";
  urgent.tenant = "b";
  urgent.priority = 1000;
  Status st;
  auto evs = Run(urgent, &st);
  ASSERT_TRUE(st.ok()) << st.ToString();
  ASSERT_EQ(Count(evs, ev::kJobPreempted), 1);
  for (const auto& e : evs) {
    if (e.type == ev::kJobPreempted) {
      EXPECT_EQ(e.stream, "run-" + b[0]) << "one of b's (started together: by id), not a's";
    }
  }
  for (const auto& r : a) EXPECT_TRUE(s_.runs.at(r).steps[0].Last()->preempted_by.empty());
}

TEST_F(QuotaTest, AQuotaOfZeroStillRunsCpuOnlySteps) {
  cfg_.tenant_max_gpus = {{"ml", 0}};
  Register("c1", 4);
  auto cpu = SubmitAs("ml", 2, /*gpus=*/0);
  auto gpu = SubmitAs("ml", 1, /*gpus=*/1);
  EXPECT_EQ(CountIn(cpu, AttemptPhase::kAssigned), 2);
  EXPECT_EQ(Phase(gpu[0]), AttemptPhase::kQueued);
  EXPECT_EQ(Reason(gpu[0]),
            "needs 1 GPU, more than tenant ml's GPU quota of 0 (tenants.ml.maxGpus): it waits "
            "until the quota is raised");
}

TEST_F(QuotaTest, AGangCountsEveryWorkersGpus) {
  cfg_.max_replicas = 3;
  cfg_.tenant_max_gpus = {{"ml", 3}};
  Register("c1", 4);
  // 2 workers x 2 GPUs = 4 > 3: it waits although c1 has room, and asks for nothing.
  auto big = SubmitAs("ml", 1, /*gpus=*/2, /*workers=*/2);
  EXPECT_EQ(Phase(big[0]), AttemptPhase::kQueued);
  EXPECT_TRUE(s_.containers["c1"].busy_gpus.empty());
  EXPECT_EQ(Reason(big[0]),
            "needs 4 GPUs, more than tenant ml's GPU quota of 3 (tenants.ml.maxGpus): it waits "
            "until the quota is raised");
  // A smaller gang behind it fits the quota (backfill): 2 workers x 1 GPU.
  auto pair = SubmitAs("ml", 2, /*gpus=*/1, /*workers=*/2);
  EXPECT_EQ(Phase(pair[0]), AttemptPhase::kAssigned);
  EXPECT_EQ(s_.runs.at(pair[0]).steps[0].Last()->ranks.size(), 2u);
  EXPECT_EQ(Held("ml"), 2);
  // The second pair would hold 4: it waits, though two GPUs are free.
  EXPECT_EQ(Phase(pair[1]), AttemptPhase::kQueued);
  EXPECT_EQ(Reason(pair[1]),
            "tenant ml holds 2 of its 3 GPUs (its quota) and this attempt needs 2");
  auto one = SubmitAs("ml", 1);
  EXPECT_EQ(Phase(one[0]), AttemptPhase::kAssigned);
  EXPECT_EQ(Held("ml"), 3);
  EXPECT_EQ(Reason(pair[1]), "tenant ml is at its GPU quota (3 of 3 GPUs)");
  now_ += std::chrono::seconds(5);
  EXPECT_EQ(Count(Tick(), ev::kContainerRequested), 0);
}

TEST_F(QuotaTest, FairShareSplitsFourGpusTwoAndTwoWhoeverSubmittedFirst) {
  // ml submits all ten before cv submits any; nothing runs until c1 registers.
  auto ml = SubmitAs("ml", 10);
  auto cv = SubmitAs("cv", 10);
  RegisterOnly(4);
  DecideContext ctx{now_, &cfg_};
  std::vector<Event> placed = Schedule(s_, ctx);
  ASSERT_EQ(placed.size(), 4u);
  // A pure function of state: a snapshot of it decides the same.
  auto copy = DecodeSnapshot(EncodeSnapshot(s_));
  ASSERT_TRUE(copy.ok());
  std::vector<Event> again = Schedule(*copy, ctx);
  ASSERT_EQ(again.size(), placed.size());
  for (size_t i = 0; i < placed.size(); ++i) {
    EXPECT_EQ(again[i].stream, placed[i].stream);
    EXPECT_EQ(again[i].data, placed[i].data);
  }
  // Turns: ml, cv, ml, cv (equal shares go by queue order).
  EXPECT_EQ(placed[0].stream, RunStream(ml[0]));
  EXPECT_EQ(placed[1].stream, RunStream(cv[0]));
  EXPECT_EQ(placed[2].stream, RunStream(ml[1]));
  EXPECT_EQ(placed[3].stream, RunStream(cv[1]));
  Processor p(&s_, ctx, 1);
  p.Record(std::move(placed));
  EXPECT_EQ(Held("ml"), 2);
  EXPECT_EQ(Held("cv"), 2);
  // Each GPU that frees goes to whoever then holds less: the split stays 2/2.
  Finish(ml[0]);
  EXPECT_EQ(Phase(ml[2]), AttemptPhase::kAssigned);
  Finish(cv[0]);
  EXPECT_EQ(Phase(cv[2]), AttemptPhase::kAssigned);
  EXPECT_EQ(Held("ml"), 2);
  EXPECT_EQ(Held("cv"), 2);
  EXPECT_EQ(CountIn(ml, AttemptPhase::kQueued), 7);
  EXPECT_EQ(CountIn(cv, AttemptPhase::kQueued), 7);
}

TEST_F(QuotaTest, ATenantThatTookEveryGpuGivesThemUpToTheOtherAsItsAttemptsEnd) {
  Register("c1", 4);
  auto ml = SubmitAs("ml", 10);
  EXPECT_EQ(Held("ml"), 4);  // nobody else was waiting: work-conserving
  auto cv = SubmitAs("cv", 10);
  EXPECT_EQ(Held("cv"), 0);
  Finish(ml[0]);  // ml 3, cv 0: cv
  Finish(ml[1]);  // ml 2, cv 1: cv
  EXPECT_EQ(Held("cv"), 2);
  EXPECT_EQ(Held("ml"), 2);
  Finish(ml[2]);  // ml 1, cv 2: ml
  EXPECT_EQ(Held("ml"), 2);
  EXPECT_EQ(Held("cv"), 2);
  // A higher priority moves a run ahead within its tenant, not past another tenant's
  // fair share.
  SubmitRun urgent;
  urgent.run_id = "urgent";
  urgent.workflow = "cv-g1w1";
  urgent.tenant = "cv";
  urgent.priority = 10;
  Run(urgent);
  Finish(ml[3]);  // ml 1, cv 2: ml, though cv's urgent run has the highest priority
  EXPECT_EQ(Phase("urgent"), AttemptPhase::kQueued);
  Finish(cv[0]);  // cv 1, ml 2: cv, and its urgent run first
  EXPECT_EQ(Phase("urgent"), AttemptPhase::kAssigned);
}

TEST_F(QuotaTest, ATenantUnderItsQuotaGetsTheGpusATenantAtItsQuotaCannotUse) {
  cfg_.tenant_max_gpus = {{"ml", 1}};
  Register("c1", 4);
  auto ml = SubmitAs("ml", 5);
  auto cv = SubmitAs("cv", 5);  // no quota
  EXPECT_EQ(Held("ml"), 1);
  EXPECT_EQ(Held("cv"), 3);
  EXPECT_EQ(s_.containers["c1"].busy_gpus.size(), 4u);
  EXPECT_EQ(Reason(ml[1]), "tenant ml is at its GPU quota (1 of 1 GPUs)");
  EXPECT_TRUE(Reason(cv[4]).is_null());  // waits for room, not for a quota
  // When cv's end, cv's next take the GPUs: ml stays at its quota.
  Finish(cv[0]);
  EXPECT_EQ(Phase(cv[3]), AttemptPhase::kAssigned);
  EXPECT_EQ(Held("ml"), 1);
  EXPECT_EQ(Held("cv"), 3);
}

TEST_F(QuotaTest, UnlimitedTenantsAndQuotasAboveThePoolShareAlike) {
  // No quota for cv and default; ml's 100 is more than the pool's 6 GPUs, so it
  // counts as 6: three equal shares.
  cfg_.tenant_max_gpus = {{"ml", 100}};
  auto cv = SubmitAs("cv", 6);
  auto ml = SubmitAs("ml", 6);
  auto other = SubmitAs("default", 6);
  RegisterOnly(6);
  Tick();
  EXPECT_EQ(Held("cv"), 2);
  EXPECT_EQ(Held("ml"), 2);
  EXPECT_EQ(Held("default"), 2);
  for (const auto& r : ml) EXPECT_TRUE(Reason(r).is_null()) << r;
}

}  // namespace
}  // namespace epoch::engine
