// Engine (engine.h): construction, Start and Stop, Execute (the command queue the
// writer thread drains), long-poll waits, the container protocol's authentication,
// and role names. The rest of the Engine lives next to this file: replay.cc
// (loading the state from the store), writer.cc (the writer thread and its group
// commit), reactors.cc (the reactor thread, the backend watch, leases),
// snapshotter.cc, ha.cc (standby, promotion, leadership, stepping down),
// history_check.cc (corrupt-history mode), storage_fault.cc and dispatch.cc
// (what a container's poll hands out).
#include "engine/engine.h"

#include <string>
#include <variant>

namespace epoch::engine {

Engine::Engine(EngineOptions options, storage::EventStore* store, ContainerBackend* backend,
               const Clock* clock)
    : options_(std::move(options)),
      store_(store),
      backend_(backend),
      clock_(clock),
      files_(options_.config.max_input_bytes, [this] { inputs_hashed_ = true; }) {
  if (options_.archive_runs) {
    recording_ = std::make_unique<RecordingArchive>(store_);
    reading_ = std::make_unique<ReadingArchive>(store_);
  }
}

Engine::~Engine() { Stop(); }

std::string_view Name(Role r) {
  switch (r) {
    case Role::kStarting: return "starting";
    case Role::kStandby: return "standby";
    case Role::kPromoting: return "promoting";
    case Role::kLeader: return "leader";
    case Role::kDeposed: return "deposed";
    case Role::kStopped: return "stopped";
  }
  return "?";
}

Status Engine::Start() {
  Status loaded = Load();
  if (!loaded.ok()) return StartOnCorruptHistory(loaded);
  {
    WriterLock lock(&published_mu_);
    published_ = working_;
  }
  return Lead();
}

void Engine::Stop() {
  if (!started_) {
    if (role_ == Role::kStandby) role_ = Role::kStopped;
    return;
  }
  started_ = false;
  if (role_ == Role::kLeader) role_ = Role::kStopped;
  ready_ = false;
  {
    MutexLock lock(&queue_mu_);
    stopping_ = true;
  }
  queue_cv_.SignalAll();
  if (writer_.joinable()) writer_.join();
  clock_->Unsubscribe(clock_subscription_);
  {
    MutexLock lock(&reactor_mu_);
    reactor_stopping_ = true;
  }
  reactor_cv_.SignalAll();
  if (reactor_.joinable()) reactor_.join();
  {
    MutexLock lock(&snapshot_mu_);
    snapshot_stopping_ = true;
  }
  snapshot_cv_.SignalAll();
  if (snapshotter_.joinable()) snapshotter_.join();
  if (verifier_.joinable()) verifier_.join();
  // Through the mutex: a waiter that has just seen started_ true is then waiting
  // (WaitForChange checks and waits under change_mu_), so it cannot miss this.
  { MutexLock lock(&change_mu_); }
  change_cv_.SignalAll();
}

Result<CommandResult> Engine::Execute(Command command) {
  if (corrupt_) return CorruptHistoryStatus();
  if (failed_) return StorageFaultStatus();
  Role role = role_.load();
  if (role == Role::kDeposed) {
    return Unavailable("this master was deposed (" + deposed_reason() + "); use the new leader");
  }
  if (role != Role::kLeader) {
    return Unavailable(std::string("this master is not the leader (") + std::string(Name(role)) +
                       ")");
  }
  // An agent that has seen a newer epoch has met a newer leader: this one is stale.
  if (auto* r = std::get_if<RegisterContainer>(&command)) RETURN_IF_ERROR(ObserveEpoch(r->epoch_seen));
  if (auto* p = std::get_if<PollContainer>(&command)) RETURN_IF_ERROR(ObserveEpoch(p->epoch_seen));
  // New work waits for free space; the container protocol and cancels do not, so
  // what runs can finish and be recorded.
  if (std::holds_alternative<RegisterWorkflow>(command) ||
      std::holds_alternative<SubmitRun>(command) || std::holds_alternative<RetryRun>(command)) {
    RETURN_IF_ERROR(CheckFreeSpace());
  }
  auto p = std::make_unique<Pending>();
  p->command = std::move(command);
  auto fut = p->promise.get_future();
  {
    MutexLock lock(&queue_mu_);
    if (stopping_ || !started_) {
      if (corrupt_) return CorruptHistoryStatus();
      if (failed_) return StorageFaultStatus();
      return Unavailable("the engine is not running");
    }
    queue_.push_back(std::move(p));
  }
  queue_cv_.Signal();
  return fut.get();
}

bool Engine::AwaitTick(TimePoint at, Micros timeout) const {
  MutexLock lock(&change_mu_);
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (last_tick_ < at && started_) {
    if (!change_cv_.WaitUntil(&change_mu_, deadline)) break;
  }
  return last_tick_ >= at;
}

void Engine::WaitForChange(uint64_t seen, Micros timeout) const {
  MutexLock lock(&change_mu_);
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!(generation_.load() != seen || !started_)) {
    if (!change_cv_.WaitUntil(&change_mu_, deadline)) break;
  }
}

Status Engine::AuthenticateContainer(const std::string& container,
                                     std::string_view credential) const {
  bool ok = Read([&](const State& s) {
    auto it = s.containers.find(container);
    if (it == s.containers.end()) return false;
    const Container& c = it->second;
    if (c.phase != ContainerPhase::kRequested && c.phase != ContainerPhase::kRegistered) {
      return false;
    }
    return CredentialMatches(credential, c.credential_sha256);
  });
  if (!ok) {
    return Unauthenticated("container '" + container +
                           "': no valid credential for a live container of this name");
  }
  return Status::Ok();
}

}  // namespace epoch::engine
