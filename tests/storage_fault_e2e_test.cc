// End-to-end storage faults (issue 12, "Storage faults fail over instead of hanging
// or aborting"): real epochd processes whose data dir (or store) is a small tmpfs
// the test fills. The leader answers the write that meets the full disk 507
// insufficient_storage, steps down (releases leader.lock, exits 74: no abort, no
// core), the standby leads once space returns, and every acknowledged run is
// there. storage.minFreeBytes refuses new work before the disk is full while
// running work still reports.
//
// Needs root (it mounts a tmpfs): EPOCH_SKIP_MOUNT_TESTS=1 skips it elsewhere.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <thread>

#include "storage/small_fs_for_testing.h"
#include "tests/harness.h"

namespace epoch::testing {
namespace {

using namespace std::chrono_literals;

constexpr int kExitStorageFault = 74;  // epochd_main.cc

Json Def(const char* text) {
  auto j = ParseJson(text);
  EXPECT_TRUE(j.ok()) << j.status().ToString();
  return *j;
}

class StorageFaultE2eTest : public ::testing::Test {
 protected:
  TempDir dir_;
};

// A run's params: a large value (about `size` bytes) that tells runs apart, so a
// few runs fill the store's write-ahead log.
Json BigParams(int i, size_t size) {
  std::string blob = "run-" + std::to_string(i) + ":";
  blob.resize(size, static_cast<char>('a' + i % 26));
  return Json{{"blob", blob}};
}

// Leader and standby share a data dir on a 48 MiB filesystem (their logs are
// linked out of it, so that the test can read what they said while it was full).
TEST_F(StorageFaultE2eTest, AFullDiskFailsOverWithNothingAcknowledgedLost) {
  EPOCH_REQUIRE_MOUNT();
  const std::string data = dir_.path() + "/data";
  SmallFs fs("48m", data);
  ASSERT_EQ(fs.error(), "");
  for (const char* name : {"a", "b"}) {
    std::filesystem::create_symlink(dir_.path() + "/" + name + ".log", data + "/" + name + ".log");
  }
  // No containers: submitted runs stay queued, so each run is a fixed set of events.
  std::vector<std::string> settings{"storage.minFreeBytes=0", "sig.minReplicas=0",
                                    "sig.maxReplicas=0"};
  Epochd a(data, settings, "a");
  a.Start();
  Epochd b(data, settings, "b");
  b.StartStandby();
  if (HasFatalFailure()) return;
  Json def = Def(R"J({"name": "fill", "params": {"blob": ""},
                      "steps": [{"name": "s", "command": ["true"]}]})J");
  ASSERT_EQ(a.PostJson("/v1/workflows", def).status, 201);

  constexpr size_t kBlob = 256 << 10;
  std::map<std::string, std::string> acked;  // Idempotency-Key -> run id (201 answers)
  auto submit = [&](int i) {
    Json body{{"workflow", "fill"}, {"params", BigParams(i, kBlob)}};
    return a.Post("/v1/runs", body.dump(), "application/json",
                  {{"Idempotency-Key", "k-" + std::to_string(i)}});
  };
  int i = 0;
  for (; i < 5; ++i) {
    HttpResult r = submit(i);
    ASSERT_EQ(r.status, 201) << r.body;
    acked["k-" + std::to_string(i)] = r.json()["id"];
  }

  // The disk fills (something else wrote to it); the leader keeps acknowledging
  // what its write-ahead log still has room for, then refuses.
  ASSERT_EQ(fs.Fill("zz-filler"), "");
  HttpResult refused;
  int refused_i = -1;
  for (; i < 400; ++i) {
    HttpResult r = submit(i);
    if (r.status == 201) {
      acked["k-" + std::to_string(i)] = r.json()["id"];
      continue;
    }
    refused = r;
    refused_i = i;
    break;
  }
  ASSERT_GE(refused_i, 0) << "400 runs of 256 KiB fitted on a full 48 MiB filesystem";
  EXPECT_EQ(refused.status, 507) << refused.body;
  EXPECT_EQ(refused.json()["error"]["code"], "insufficient_storage") << refused.body;
  std::string message = refused.json()["error"]["message"];
  EXPECT_NE(message.find("disk is full"), std::string::npos) << message;
  EXPECT_NE(message.find("No space left on device"), std::string::npos) << message;

  // The leader steps down: refuses, closes the store, releases the lock, exits 74.
  ASSERT_TRUE(a.WaitForExit(20s)) << "the leader did not exit; its log:\n" << a.Log();
  EXPECT_EQ(a.exit_status(), kExitStorageFault) << a.Log();
  EXPECT_FALSE(a.dumped_core());
  std::string log = a.Log();
  EXPECT_NE(log.find("STORAGE FAULT"), std::string::npos) << log;
  EXPECT_NE(log.find("Free space on the filesystem of " + data + "/store"), std::string::npos)
      << log;
  EXPECT_NE(log.find("stepped down after the storage fault"), std::string::npos) << log;
  EXPECT_EQ(log.find("did not end within"), std::string::npos) << log;  // no watchdog exit
  EXPECT_EQ(log.find("Assertion"), std::string::npos) << log;

  // The standby takes the lock. It leads as soon as it can open the store and
  // append LeaderElected (the old leader's closed write-ahead log may have given
  // some space back); if the full disk fails that too, it steps down the same way.
  // Space returns: the standby leads (or, had it stepped down, its restart does).
  fs.Remove("zz-filler");
  if (b.WaitForExit(0ms)) {
    EXPECT_EQ(b.exit_status(), kExitStorageFault) << b.Log();
    b.Start();
  }
  ASSERT_TRUE(b.WaitUntilLeader(20s)) << "the standby did not lead; its log:\n" << b.Log();
  EXPECT_EQ(b.Get("/v1/cluster").json()["role"], "leader");
  EXPECT_EQ(b.Log().find("Assertion"), std::string::npos) << b.Log();

  // Every acknowledged run is there, with its params, queued.
  for (const auto& [key, id] : acked) {
    HttpResult r = b.Get("/v1/runs/" + id);
    ASSERT_EQ(r.status, 200) << "acknowledged run " << id << " (" << key << ") is missing";
    int n = std::stoi(key.substr(2));
    EXPECT_EQ(r.json()["params"], BigParams(n, kBlob)) << id;
    EXPECT_EQ(r.json()["state"], "queued") << id;
  }
  // The refused submission may or may not have been durable: its key answers one
  // run either way.
  Json body{{"workflow", "fill"}, {"params", BigParams(refused_i, kBlob)}};
  std::string refused_key = "k-" + std::to_string(refused_i);
  HttpResult again =
      b.Post("/v1/runs", body.dump(), "application/json", {{"Idempotency-Key", refused_key}});
  ASSERT_TRUE(again.status == 200 || again.status == 201) << again.status << " " << again.body;
  std::vector<Json> events = b.AllEvents();
  std::string prev(64, '0');
  std::map<std::string, int> submitted;  // idempotency key -> RunSubmitted events
  for (size_t p = 0; p < events.size(); ++p) {
    ASSERT_EQ(events[p]["position"], p + 1);
    ASSERT_EQ(events[p]["prev_hash"], prev) << "at position " << p + 1;
    prev = events[p]["hash"];
    if (events[p]["type"] == "RunSubmitted") {
      submitted[events[p]["data"].value("idempotency_key", "")]++;
    }
  }
  EXPECT_EQ(submitted.size(), acked.size() + 1);
  for (const auto& [key, n] : submitted) EXPECT_EQ(n, 1) << key;
  for (const auto& [key, id] : acked) EXPECT_EQ(submitted.count(key), 1u) << key;
  EXPECT_EQ(submitted.count(refused_key), 1u);

  // The old leader comes back as a standby of the new one.
  a.StartStandby();
}

TEST_F(StorageFaultE2eTest, MinFreeBytesRefusesNewWorkWhileRunningWorkReports) {
  EPOCH_REQUIRE_MOUNT();
  SmallFs fs("64m", dir_.path() + "/store");
  ASSERT_EQ(fs.error(), "");
  Epochd a(dir_.path(), {"storage.minFreeBytes=16Mi", "sig.minReplicas=1", "sig.maxReplicas=1"},
           "a");
  a.Start();
  if (HasFatalFailure()) return;
  // The gate is in each run's workspace: a sandboxed step sees nothing else to wait on.
  std::string gate = "gate";
  Json def = Def(R"J({"name": "gated", "params": {"gate": ""}, "steps": [{"name": "wait",
      "command": ["sh", "-c", "while [ ! -e {{workspace}}/{{params.gate}} ]; do sleep 0.05; done"]}]})J");
  ASSERT_EQ(a.PostJson("/v1/workflows", def).status, 201);
  std::string r1 = a.RegisterAndSubmit(def, Json{{"gate", gate}});
  std::string r2 = a.RegisterAndSubmit(def, Json{{"gate", gate}});
  for (const std::string& run : {r1, r2}) {
    Json r = a.WaitForRunState(run, [](const Json& j) { return j["steps"][0]["state"] == "running"; });
    ASSERT_EQ(r["steps"][0]["state"], "running") << r.dump(2);
  }

  // Below the threshold (8 MiB free of 16 MiB asked): new work is refused once the
  // leader looks again (at most a second later).
  ASSERT_EQ(fs.Fill("zz-filler", 8u << 20), "");
  HttpResult refused;
  Json probe{{"workflow", "gated"}, {"params", Json{{"gate", gate}}}};
  ASSERT_TRUE(WaitFor(
      [&] {
        refused = a.Post("/v1/runs", probe.dump(), "application/json",
                         {{"Idempotency-Key", "probe"}});
        return refused.status != 201 && refused.status != 200;
      },
      5000ms))
      << refused.status << " " << refused.body;
  EXPECT_EQ(refused.status, 507) << refused.body;
  EXPECT_EQ(refused.json()["error"]["code"], "insufficient_storage") << refused.body;
  std::string message = refused.json()["error"]["message"];
  EXPECT_NE(message.find("bytes free, below storage.minFreeBytes (16777216 bytes)"),
            std::string::npos)
      << message;
  EXPECT_EQ(a.PostJson("/v1/workflows", def).status, 507);
  EXPECT_EQ(a.PostJson("/v1/runs/" + r1 + "/retry", Json::object()).status, 507);

  // Cancels and the container protocol go on: r2 is cancelled (its agent learns it
  // on a poll and reports), r1 finishes and its report is recorded.
  HttpResult cancel = a.PostJson("/v1/runs/" + r2 + "/cancel", Json::object());
  EXPECT_EQ(cancel.status, 202) << cancel.body;
  Json c2 = a.WaitForRun(r2, 30s);
  EXPECT_EQ(c2["state"], "cancelled") << c2.dump(2);
  std::ofstream(a.data_dir() + "/runs/" + r1 + "/" + gate) << "go\n";
  Json c1 = a.WaitForRun(r1, 30s);
  EXPECT_EQ(c1["state"], "succeeded") << c1.dump(2);
  // Low space is no fault: the leader is still ready.
  EXPECT_EQ(a.Get("/readyz").status, 200);
  EXPECT_TRUE(a.running());

  // Space returns: new work is admitted again.
  fs.Remove("zz-filler");
  HttpResult admitted;
  ASSERT_TRUE(WaitFor(
      [&] {
        admitted = a.Post("/v1/runs", probe.dump(), "application/json",
                          {{"Idempotency-Key", "probe"}});
        return admitted.status == 201 || admitted.status == 200;  // 200: made before the fill
      },
      5000ms))
      << admitted.status << " " << admitted.body;
}

}  // namespace
}  // namespace epoch::testing
