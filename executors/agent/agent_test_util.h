// Helpers for tests that run an Agent in-process against a FakeMaster: the agent on its
// own thread, and a bounded wait for the first report of an attempt.
//
// Thread-safety: test-only; AgentRun's accessors are safe from the test's thread.
#pragma once

#include <atomic>
#include <chrono>
#include <string>
#include <thread>

#include "common/json.h"
#include "common/status.h"
#include "executors/agent/agent.h"
#include "executors/agent/fake_master.h"
#include "executors/test_util.h"

namespace epoch::executors::testing {

// Runs an Agent on its own thread; stops and joins it on destruction.
class AgentRun {
 public:
  explicit AgentRun(AgentOptions o) : agent_(std::move(o)) {
    thread_ = std::thread([this] {
      auto r = agent_.Run();
      status_ = r.status();
      code_ = r.ok() ? *r : -1;
      done_ = true;
    });
  }
  ~AgentRun() { Join(); }
  void Stop() { agent_.Stop(); }
  void Join() {
    agent_.Stop();
    if (thread_.joinable()) thread_.join();
  }
  bool done() const { return done_; }
  int code() const { return code_; }
  // Run()'s status; read it only once done().
  const Status& status() const { return status_; }

 private:
  Agent agent_;
  std::thread thread_;
  std::atomic<bool> done_{false};
  std::atomic<int> code_{-100};
  Status status_;
};

// The first report the master received for id (null Json if none within t).
inline Json WaitReport(FakeMaster& m, const std::string& id,
                       std::chrono::milliseconds t = std::chrono::seconds(10)) {
  Json out;
  WaitFor(
      [&] {
        auto r = m.ReportsFor(id);
        if (r.empty()) return false;
        out = r.front();
        return true;
      },
      t);
  return out;
}

}  // namespace epoch::executors::testing
