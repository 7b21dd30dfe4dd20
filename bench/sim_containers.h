// SimContainers: many simulated compute containers in one process, for load tests of
// the container protocol against a real epochd. Each speaks what an epoch-agent speaks
// (docs/architecture.md section 5, executors/agent/agent.h): it registers, long-polls,
// and reports every attempt it is assigned as succeeded with exit code 0 on its next
// poll (the master records JobStarted and JobSucceeded from that report), without
// running anything. All of them share one Asio event loop: a connection and a few
// hundred bytes each, no thread per container.
//
// Identities: the master mints each container's credential and hands it to its
// backend at launch. With executor.backend=local and executor.agentPath pointing at
// the script WriteFakeAgent writes, each launch runs that script instead of
// epoch-agent: it appends "<container id> <credential file>" to the handoff file and
// exits. SimContainers tails the handoff file and starts a simulated container for
// each line, with the credential read from that file. The local backend does not
// watch its processes (the lease covers a container), so the script exiting is not
// noticed; the simulated container's polls keep its lease.
//
// Plain HTTP only (epochd --insecure-http), to a numeric address.
//
// Thread-safety: Start, Stop and the destructor from one thread; Stats and
// TakeAssignments from any thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/status.h"

namespace epoch::bench {

struct SimContainerOptions {
  std::string master_url;    // "http://127.0.0.1:PORT"
  std::string handoff_file;  // the file the fake agent appends to
  // What each container registers.
  int64_t cpu_millis = 1000;
  int64_t memory_bytes = 2144LL << 20;
  int io_threads = 1;
  // A request unanswered this long is an error (the connection is closed and made
  // again); it must exceed executor.pollTimeout.
  std::chrono::milliseconds request_timeout{120000};
};

// An assignment as a simulated container received it (the first time).
struct SimAssignment {
  std::string container, run, attempt_id;
  std::chrono::steady_clock::time_point received;
};

struct SimStats {
  int64_t handed_over = 0;  // lines read from the handoff file
  int64_t registered = 0;   // containers registered (answered 200) at least once
  int64_t in_flight = 0;    // polls sent and not yet answered, now
  int64_t polls = 0;        // poll answers (200) received
  int64_t assignments = 0;  // distinct attempts assigned
  int64_t completed = 0;    // reports the master acknowledged
  int64_t errors = 0;       // failed connections, timeouts, answers other than 200
  std::string last_error;
};

class SimContainers {
 public:
  explicit SimContainers(SimContainerOptions options);
  ~SimContainers();  // Stop()
  SimContainers(const SimContainers&) = delete;
  SimContainers& operator=(const SimContainers&) = delete;

  // Writes the fake agent (a /bin/sh script, mode 0755) to `script_path`: it appends
  // "<--id> <--credential-file>" as one line to `handoff_file` and exits 0. Errors as
  // WriteFileDurably.
  static Status WriteFakeAgent(const std::string& script_path, const std::string& handoff_file);

  // Starts the event loop: tails the handoff file every 20 ms and starts a container
  // for each new line. kInvalidArgument for a master_url that is not
  // http://<numeric address>:<port>.
  Status Start();
  // Closes every connection and joins the event loop's threads. Idempotent.
  void Stop();

  SimStats Stats() const;
  // The assignments received since the last call.
  std::vector<SimAssignment> TakeAssignments();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace epoch::bench
