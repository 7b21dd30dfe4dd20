// The Engine's roles (engine.h, "HA"): a standby that follows the leader's log,
// its promotion, taking leadership (LeaderElected and reconcile), and stepping
// down when a newer leader exists.
#include "engine/engine.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <string>
#include <thread>

#include "engine/engine_internal.h"
#include "engine/event_types.h"

namespace epoch::engine {

using internal::EvolveKnownGood;

Status Engine::StartStandby() {
  RETURN_IF_ERROR(Load());
  {
    WriterLock lock(&published_mu_);
    published_ = working_;
  }
  epoch_ = working_.epoch;
  role_ = Role::kStandby;
  return Status::Ok();
}

Result<size_t> Engine::Follow() {
  if (role_ != Role::kStandby) return FailedPrecondition("not a standby");
  uint64_t count = 0;
  Status st = ApplyFromStore(/*mirror=*/true, &count);
  if (count > 0) {
    epoch_ = working_.epoch;
    {
      MutexLock lock(&change_mu_);
      generation_++;
    }
    change_cv_.SignalAll();
  }
  RETURN_IF_ERROR(st);
  return static_cast<size_t>(count);
}

Status Engine::Promote(bool* rebuilt) {
  if (role_ != Role::kStandby) return FailedPrecondition("not a standby");
  if (store_->read_only()) return FailedPrecondition("the store is still a secondary");
  role_ = Role::kPromoting;
  // What this standby applied must be a prefix of what is durable: the event at
  // its head must exist in the store with the same hash.
  uint64_t applied = working_.head;
  storage::HeadInfo head = store_->Head();
  bool diverged = applied > head.position;
  if (!diverged && applied > 0) {
    auto at = store_->ReadAt(applied);
    diverged = !at.ok() || at->hash != applied_hash_;
  }
  if (rebuilt) *rebuilt = diverged;
  if (diverged) {
    spdlog::warn(
        "standby state (head {}) is not a prefix of the durable log (head {}): "
        "rebuilding from the store",
        applied, head.position);
    Status st = Load();
    if (!st.ok()) {
      role_ = Role::kStandby;
      return st;
    }
    WriterLock lock(&published_mu_);
    published_ = working_;
  } else {
    // published_ is in step with working_ (Follow keeps both): apply what the
    // secondary had not read yet to both.
    uint64_t count = 0;
    Status st = ApplyFromStore(/*mirror=*/true, &count);
    if (!st.ok()) {
      role_ = Role::kStandby;
      return st;
    }
    spdlog::info("promotion: standby state at {} verified, {} later events applied", applied,
                 count);
  }
  Status st = Lead();
  if (!st.ok()) role_ = Role::kStandby;
  return st;
}

Status Engine::Lead() {
  storage::HeadInfo head = store_->Head();
  if (head.position != working_.head) {
    return Corruption("state is at " + std::to_string(working_.head) + " but the head is " +
                      std::to_string(head.position));
  }
  // The leader's writer records what it folds into each append (archive.h).
  if (recording_) working_archive_ = recording_.get();
  epoch_ = std::max(store_->ClaimedEpoch(), working_.epoch) + 1;
  RETURN_IF_ERROR(store_->ClaimEpoch(epoch_));
  spdlog::info("taking leadership with epoch {} at head {}", epoch_.load(), working_.head);

  // Leadership is itself an event.
  TimePoint now = clock_->Now();
  storage::AppendBatch batch;
  batch.time = FormatTime(now);
  batch.epoch = epoch_;
  Json data =
      fields::Encode(ev::LeaderElected{epoch_.load(), options_.node, options_.advertise_url});
  batch.appends.push_back(storage::StreamAppend{
      std::string(kMasterStream),
      storage::kAnyVersion,
      {storage::NewEvent{std::string(ev::kLeaderElected), ev::LeaderElected::kVersion, "system",
                         CanonicalDump(data)}}});
  ASSIGN_OR_RETURN(auto res, store_->Append(std::move(batch)));
  RecordedEvent le{.position = res.first_position,
                   .stream = std::string(kMasterStream),
                   .type = std::string(ev::kLeaderElected),
                   .data = data,
                   .actor = "system",
                   .time = now,
                   .epoch = epoch_};
  EvolveKnownGood(working_, le);
  {
    WriterLock lock(&published_mu_);  // in step with working_ (see callers)
    EvolveKnownGood(published_, le);
  }
  {
    MutexLock lock(&change_mu_);
    generation_++;
  }
  change_cv_.SignalAll();
  // Reconcile: every live container gets a fresh lease from now (its agent finds
  // this leader through leader.json or a redirect and registers again);
  // assignments not yet acknowledged are re-sent on its next poll (DispatchFor
  // hands out every assigned attempt the agent does not report running); retry
  // timers and timeouts are in the state and fire from the writer's ticks.
  {
    MutexLock lock(&lease_mu_);
    for (const auto& [id, c] : working_.containers) {
      if (c.phase == ContainerPhase::kRegistered) last_seen_[id] = now;
    }
  }
  started_ = true;
  // A ManualClock moved past the next tick wakes the writer (its wait is a timer on
  // clock_); under the queue's mutex, so the move cannot fall between the writer's
  // look at the clock and its wait.
  clock_subscription_ = clock_->Subscribe([this] {
    { MutexLock lock(&queue_mu_); }
    queue_cv_.SignalAll();
  });
  writer_ = std::thread([this] { WriterLoop(); });
  reactor_ = std::thread([this] { ReactorLoop(); });
  if (options_.snapshot_every > 0) snapshotter_ = std::thread([this] { SnapshotLoop(); });
  role_ = Role::kLeader;
  ready_ = true;
  if (loaded_from_ > 0) {
    // The state came from a snapshot: what it covers was never read back. Walk the
    // whole chain now, without holding up the start.
    HistoryCheck h;
    h.state = HistoryCheck::State::kVerifying;
    h.method = "background";
    SetHistory(std::move(h));
    verifier_ = std::thread([this] { VerifyInBackground(); });
  }
  return Status::Ok();
}

Status Engine::ObserveEpoch(uint64_t seen) {
  if (corrupt_) return CorruptHistoryStatus();
  if (role_ != Role::kLeader || seen <= epoch_) return Status::Ok();
  const uint64_t published = options_.epoch_witness ? options_.epoch_witness() : 0;
  if (published <= epoch_) {
    spdlog::warn(
        "a container claims epoch {}, above this leader's {}, but no newer leader has "
        "published one (highest published: {}); claim refused",
        seen, epoch_.load(), published);
    return Conflict("epoch_seen: " + std::to_string(seen) + " is above this leader's epoch " +
                    std::to_string(epoch_.load()) + ", and no leader has published a higher one");
  }
  StepDown("a container reports epoch " + std::to_string(seen) + ", above this leader's " +
           std::to_string(epoch_.load()) + ", and a leader published epoch " +
           std::to_string(published));
  return Unavailable("this master was deposed by epoch " + std::to_string(published));
}

std::string Engine::deposed_reason() const {
  MutexLock lock(&deposed_mu_);
  return deposed_reason_;
}

void Engine::StepDown(const std::string& reason) {
  Role expected = Role::kLeader;
  if (!role_.compare_exchange_strong(expected, Role::kDeposed)) return;
  ready_ = false;
  {
    MutexLock lock(&deposed_mu_);
    deposed_reason_ = reason;
  }
  spdlog::critical("stepping down: {}", reason);
  if (options_.on_deposed) options_.on_deposed(reason);
}

}  // namespace epoch::engine
