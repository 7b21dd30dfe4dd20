#include "engine/engine.h"

#include <spdlog/spdlog.h>

#include <cstdlib>

#include <algorithm>
#include <limits>
#include <set>

#include "engine/processor.h"
#include "engine/snapshot.h"

namespace epoch::engine {

namespace {
constexpr size_t kReplayPage = 4096;

// A stored event as evolve reads it. Nothing is guessed: a time or data that
// does not parse is kCorruption naming the position and the field.
Result<RecordedEvent> FromEnvelope(const storage::Envelope& env) {
  RecordedEvent r;
  r.position = env.position;
  r.stream = env.stream;
  r.type = env.type;
  r.actor = env.actor;
  r.epoch = env.epoch;
  auto t = ParseTime(env.time);
  if (!t.ok()) {
    return Corruption("event " + std::to_string(env.position) + " (" + env.type +
                      "): field time: " + t.status().message());
  }
  r.time = *t;
  auto j = ParseJson(env.data, 256);
  if (!j.ok()) {
    return Corruption("event " + std::to_string(env.position) + " (" + env.type +
                      "): field data: " + j.status().message());
  }
  r.data = std::move(*j);
  return r;
}
// Evolves with an event that already evolved another copy of the same state
// without error (published_ follows working_): failing here is a bug.
void EvolveKnownGood(State& s, const RecordedEvent& r) {
  if (Status st = Evolve(s, r); !st.ok()) {
    spdlog::critical("event {} evolved one copy of the state but not another: {}", r.position,
                     st.ToString());
    std::abort();
  }
}
}  // namespace

Engine::Engine(EngineOptions options, storage::EventStore* store, ContainerBackend* backend,
               const Clock* clock)
    : options_(std::move(options)),
      store_(store),
      backend_(backend),
      clock_(clock),
      files_(options_.config.max_input_bytes, [this] { inputs_hashed_ = true; }) {}

Engine::~Engine() { Stop(); }

std::string_view Name(HistoryCheck::State s) {
  switch (s) {
    case HistoryCheck::State::kUnverified: return "unverified";
    case HistoryCheck::State::kVerifying: return "verifying";
    case HistoryCheck::State::kVerified: return "verified";
    case HistoryCheck::State::kCorrupt: return "corrupt";
    case HistoryCheck::State::kError: return "error";
  }
  return "?";
}

Json HistoryCheckToJson(const HistoryCheck& h) {
  bool verified = h.state == HistoryCheck::State::kVerified;
  bool corrupt = h.state == HistoryCheck::State::kCorrupt;
  return Json{{"state", std::string(Name(h.state))},
              {"verified", verified},
              {"method", h.method},
              {"head", verified ? Json{{"position", h.head_position}, {"hash", h.head_hash}}
                                : Json(nullptr)},
              {"checked", h.checked},
              {"first_bad", corrupt ? Json(h.first_bad) : Json(nullptr)},
              {"problem", h.problem.empty() ? Json(nullptr) : Json(h.problem)},
              {"read_only", corrupt}};
}

Status CorruptHistoryError(uint64_t first_bad, const std::string& problem) {
  return Status(StatusCode::kUnavailable,
                "the event history is corrupt at event " + std::to_string(first_bad) + " (" +
                    problem +
                    "): this master serves reads only and refuses every write until the store "
                    "is repaired",
                {std::string(kCorruptHistoryCode), problem});
}

bool IsCorruptHistory(const Status& st) {
  return st.code() == StatusCode::kUnavailable && !st.details().empty() &&
         st.details()[0] == kCorruptHistoryCode;
}

Status InsufficientStorageError(const std::string& message) {
  return Status(StatusCode::kResourceExhausted, message, {std::string(kInsufficientStorageCode)});
}

bool IsInsufficientStorage(const Status& st) {
  return st.code() == StatusCode::kResourceExhausted && !st.details().empty() &&
         st.details()[0] == kInsufficientStorageCode;
}

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

// Evolves working_ with the store's events after its head, page by page, and,
// with `mirror`, published_ too (under its lock, a page at a time): a standby
// keeps both in step so that promotion copies nothing. Keeps applied_hash_ at
// the last event applied.
Status Engine::ApplyFromStore(bool mirror, uint64_t* count, uint64_t upto) {
  while (true) {
    if (working_.head >= upto) return Status::Ok();
    size_t limit = static_cast<size_t>(std::min<uint64_t>(kReplayPage, upto - working_.head));
    ASSIGN_OR_RETURN(auto page, store_->ReadAll(working_.head, limit));
    if (page.empty()) return Status::Ok();
    std::vector<RecordedEvent> recorded;
    recorded.reserve(page.size());
    for (const auto& env : page) {
      ASSIGN_OR_RETURN(RecordedEvent r, FromEnvelope(env));
      recorded.push_back(std::move(r));
      try {
        RETURN_IF_ERROR(Evolve(working_, recorded.back()));
      } catch (const Json::exception& e) {
        return Corruption("applying event " + std::to_string(env.position) + " (" + env.type +
                          "): " + e.what());
      }
      if (working_.head != env.position) {
        return Corruption("event " + std::to_string(env.position) + " did not advance the state");
      }
      applied_hash_ = env.hash;
      ++*count;
    }
    if (mirror) {
      WriterLock lock(&published_mu_);
      for (const auto& r : recorded) EvolveKnownGood(published_, r);
    }
  }
}

Status Engine::Load(uint64_t upto) {
  working_ = State{};
  applied_hash_.clear();
  loaded_from_ = 0;
  if (options_.load_snapshot) {
    // A snapshot that does not decode or does not match the log is skipped: the
    // log is the truth and a full replay rebuilds the same state.
    auto latest = store_->LatestSnapshot();
    if (!latest.ok()) {
      spdlog::warn("reading the latest snapshot: {}; replaying the whole log",
                   latest.status().ToString());
    } else if (latest->has_value() && (*latest)->first > upto) {
      spdlog::warn("snapshot at {} is past event {}: replaying from the start",
                   (*latest)->first, upto);
    } else if (latest->has_value()) {
      uint64_t position = (*latest)->first;
      auto at = store_->ReadAt(position);
      auto state = DecodeSnapshot((*latest)->second);
      if (!at.ok() || !state.ok() || state->head != position) {
        spdlog::warn("snapshot at {} is unusable ({}); replaying the whole log", position,
                     !at.ok() ? at.status().ToString()
                              : !state.ok() ? state.status().ToString() : "head mismatch");
      } else {
        working_ = std::move(*state);
        applied_hash_ = at->hash;
        loaded_from_ = position;
      }
    }
  }
  uint64_t count = 0;
  RETURN_IF_ERROR(ApplyFromStore(/*mirror=*/false, &count, upto));
  replayed_ = count;
  last_snapshot_ = loaded_from_;
  storage::HeadInfo head = store_->Head();
  if (upto == kWholeLog && head.position != working_.head) {
    return Corruption("replay ended at " + std::to_string(working_.head) + " but the head is " +
                      std::to_string(head.position));
  }
  spdlog::info("loaded state at {}: snapshot at {} + {} events replayed", working_.head,
               loaded_from_.load(), count);
  if (upto != kWholeLog) return Status::Ok();
  // A full replay read (and so verified: ReadAll checks every hash and link) the
  // whole chain; a start from a snapshot did not walk what the snapshot covers.
  HistoryCheck h;
  if (loaded_from_ == 0) {
    h.state = HistoryCheck::State::kVerified;
    h.method = "replay";
    h.head_position = working_.head;
    h.head_hash = working_.head == 0 ? head.hash : applied_hash_;
    h.checked = count;
  }
  SetHistory(std::move(h));
  return Status::Ok();
}

void Engine::SetHistory(HistoryCheck h) {
  MutexLock lock(&history_mu_);
  history_ = std::move(h);
}

HistoryCheck Engine::history() const {
  MutexLock lock(&history_mu_);
  return history_;
}

Status Engine::CorruptHistoryStatus() const {
  HistoryCheck h = history();
  return CorruptHistoryError(h.first_bad, h.problem);
}

void Engine::EnterCorruptHistory(uint64_t first_bad, const std::string& problem, bool serving) {
  {
    MutexLock lock(&history_mu_);
    history_.state = HistoryCheck::State::kCorrupt;
    history_.first_bad = first_bad;
    history_.problem = problem;
  }
  corrupt_ = true;  // before the writer stops: Execute answers CorruptHistoryStatus
  ready_ = false;
  uint64_t at = Read([](const State& s) { return s.head; });
  spdlog::critical(
      "CORRUPT HISTORY: event {} fails verification ({}). This master serves reads only "
      "and refuses every write (503 corrupt_history); its state is {} (at {}). Restore the "
      "store from a trusted copy; `epochctl audit verify` names the event.",
      first_bad, problem,
      serving ? "what it loaded (snapshot + tail)" : "the history before that event", at);
  if (serving) {
    // Nothing more may extend the tampered log: the writer (commands, ticks, and
    // with them the pool and its reactors) stops. A group it already decided
    // finishes; everything queued after is answered CorruptHistoryStatus.
    {
      MutexLock lock(&queue_mu_);
      stopping_ = true;
    }
    queue_cv_.SignalAll();
  }
}

void Engine::VerifyInBackground() {
  auto t0 = std::chrono::steady_clock::now();
  auto report = store_->VerifyChain(1);
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                std::chrono::steady_clock::now() - t0)
                .count();
  if (!report.ok()) {
    spdlog::error("verifying the history: {}", report.status().ToString());
    HistoryCheck h = history();
    h.state = HistoryCheck::State::kError;
    h.problem = report.status().ToString();
    SetHistory(std::move(h));
    return;
  }
  if (!report->ok) {
    {
      MutexLock lock(&history_mu_);
      history_.checked = report->checked;
    }
    EnterCorruptHistory(report->bad_position, report->problem, /*serving=*/true);
    return;
  }
  HistoryCheck h;
  h.state = HistoryCheck::State::kVerified;
  h.method = "background";
  h.head_position = report->head_position;
  h.head_hash = report->head_hash;
  h.checked = report->checked;
  SetHistory(std::move(h));
  spdlog::info("history verified: {} events, head {}:{} ({} ms)", report->checked,
               report->head_position, report->head_hash, ms);
}

Result<SnapshotInfo> Engine::WriteSnapshot() {
  if (store_->read_only()) return FailedPrecondition("a standby cannot write snapshots");
  if (corrupt_) return FailedPrecondition("the history is corrupt: no snapshot is written");
  State copy;
  {
    ReaderLock lock(&published_mu_);
    copy = published_;
  }
  std::string bytes = EncodeSnapshot(copy);
  RETURN_IF_ERROR(store_->PutSnapshot(copy.head, bytes));
  spdlog::info("snapshot at {} ({} bytes)", copy.head, bytes.size());
  return SnapshotInfo{copy.head, bytes.size()};
}

void Engine::SnapshotLoop() {
  while (true) {
    {
      MutexLock lock(&snapshot_mu_);
      while (!(snapshot_due_ || snapshot_stopping_)) snapshot_cv_.Wait(&snapshot_mu_);
      if (snapshot_stopping_) return;
      snapshot_due_ = false;
    }
    auto r = WriteSnapshot();
    if (!r.ok()) spdlog::warn("snapshot failed: {}", r.status().ToString());
  }
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

Status Engine::StartOnCorruptHistory(const Status& load_error) {
  if (load_error.code() != StatusCode::kCorruption) return load_error;
  // Is it the chain (bytes, hashes, links), and where does it first break?
  auto report = store_->VerifyChain(1);
  if (!report.ok() || report->ok) return load_error;  // I/O, or sound: not tampering
  HistoryCheck h;
  h.state = HistoryCheck::State::kCorrupt;
  h.method = "start";
  h.checked = report->checked;
  h.first_bad = report->bad_position;
  h.problem = report->problem;
  SetHistory(h);
  if (!options_.allow_corrupt_history) return Corruption(report->problem);
  // Serve what can be proven: the state of the events before the first bad one.
  RETURN_IF_ERROR(Load(report->bad_position - 1).WithContext("loading the sound prefix"));
  {
    WriterLock lock(&published_mu_);
    published_ = working_;
  }
  epoch_ = working_.epoch;
  EnterCorruptHistory(h.first_bad, h.problem, /*serving=*/false);
  // The lock holder answers writes itself (503 corrupt_history, not a redirect),
  // but nothing runs: no LeaderElected, no epoch claimed, no writer, no reactors.
  started_ = true;  // readers' long waits block as usual; Stop() cleans up
  role_ = Role::kLeader;
  return Status::Ok();
}

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
    spdlog::warn("standby state (head {}) is not a prefix of the durable log (head {}): "
                 "rebuilding from the store", applied, head.position);
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
  epoch_ = std::max(store_->ClaimedEpoch(), working_.epoch) + 1;
  RETURN_IF_ERROR(store_->ClaimEpoch(epoch_));
  spdlog::info("taking leadership with epoch {} at head {}", epoch_.load(), working_.head);

  // Leadership is itself an event.
  TimePoint now = clock_->Now();
  storage::AppendBatch batch;
  batch.time = FormatTime(now);
  batch.epoch = epoch_;
  Json data{{"epoch", epoch_.load()}, {"node", options_.node}, {"address", options_.advertise_url}};
  batch.appends.push_back(storage::StreamAppend{
      std::string(kMasterStream), storage::kAnyVersion,
      {storage::NewEvent{std::string(ev::kLeaderElected), 1, "system", CanonicalDump(data)}}});
  ASSIGN_OR_RETURN(auto res, store_->Append(std::move(batch)));
  RecordedEvent le{res.first_position, std::string(kMasterStream),
                   std::string(ev::kLeaderElected), data, "system", now, epoch_};
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

Status Engine::storage_fault() const {
  MutexLock lock(&fault_mu_);
  return storage_fault_;
}

Status Engine::StorageFaultStatus() const {
  Status fault = storage_fault();
  if (fault.ok()) return Status::Ok();
  if (storage::IsNoSpace(fault)) {
    return InsufficientStorageError(
        "the event store's disk is full: this master acknowledges nothing more and steps "
        "down; retry on the next leader (once space is freed): " +
        fault.message());
  }
  return Unavailable(
      "the event store failed: this master acknowledges nothing more and steps down; retry on "
      "the next leader: " +
      fault.message());
}

void Engine::FailOnStorage(const Status& fault) {
  {
    MutexLock lock(&fault_mu_);
    if (!storage_fault_.ok()) return;
    storage_fault_ = fault.ok() ? Internal("storage fault") : fault;
  }
  failed_ = true;  // after storage_fault_: Execute answers StorageFaultStatus()
  ready_ = false;
  spdlog::critical(
      "STORAGE FAULT: {}. This leader stops: every command and poll is refused ({}), nothing "
      "more is appended, and it must give up leadership and restart to replay what is durable.",
      fault.ToString(),
      storage::IsNoSpace(fault) ? "507 insufficient_storage" : "503 unavailable");
}

void Engine::RefuseAfterStorageFault(std::vector<std::unique_ptr<Pending>>& group) {
  Status refusal = StorageFaultStatus();
  for (auto& p : group) p->promise.set_value(refusal);
  group.clear();
  MutexLock lock(&queue_mu_);
  stopping_ = true;
  for (auto& p : queue_) p->promise.set_value(refusal);
  queue_.clear();
}

Status Engine::CheckFreeSpace() {
  if (options_.min_free_bytes == 0) return Status::Ok();
  TimePoint now = clock_->Now();
  uint64_t free = 0;
  {
    MutexLock lock(&space_mu_);
    if (!space_checked_ || now - space_checked_at_ >= options_.free_space_interval) {
      space_checked_ = true;
      space_checked_at_ = now;
      auto avail = store_->AvailableBytes();
      if (avail.ok()) {
        free_bytes_ = *avail;
      } else {
        // Unknown: admit (the store still fails a write that meets a full disk).
        spdlog::warn("storage.minFreeBytes: cannot tell the store's free space: {}",
                     avail.status().ToString());
        free_bytes_ = std::numeric_limits<uint64_t>::max();
      }
    }
    free = free_bytes_;
  }
  if (free >= options_.min_free_bytes) return Status::Ok();
  return InsufficientStorageError(
      "the event store's filesystem has " + std::to_string(free) +
      " bytes free, below storage.minFreeBytes (" + std::to_string(options_.min_free_bytes) +
      " bytes): new work (workflows, runs, retries) is refused until space is freed; running "
      "steps still report and cancels are accepted");
}

void Engine::Heartbeat(const std::string& container) {
  MutexLock lock(&lease_mu_);
  last_seen_[container] = clock_->Now();
}

std::vector<std::string> Engine::ExpiredLeases(TimePoint now) {
  std::vector<std::string> out;
  MutexLock lock(&lease_mu_);
  for (const auto& [id, c] : working_.containers) {
    if (c.phase != ContainerPhase::kRegistered) continue;
    auto it = last_seen_.find(id);
    if (it == last_seen_.end()) {
      last_seen_[id] = now;  // first sight (e.g. just registered): lease starts now
      continue;
    }
    if (now - it->second > options_.config.lease) out.push_back(id);
  }
  return out;
}

void Engine::WriterLoop() {
  const EngineConfig& cfg = options_.config;
  TimePoint next_tick = clock_->Now();
  while (true) {
    std::vector<std::unique_ptr<Pending>> group;
    {
      MutexLock lock(&queue_mu_);
      auto wait_for = std::chrono::duration_cast<std::chrono::microseconds>(next_tick -
                                                                            clock_->Now());
      if (queue_.empty() && !stopping_ && wait_for.count() > 0) {
        auto deadline = std::chrono::steady_clock::now() + wait_for;
        while (!(!queue_.empty() || stopping_)) {
          if (!queue_cv_.WaitUntil(&queue_mu_, deadline)) break;
        }
      }
      if (stopping_) break;
      while (!queue_.empty() && group.size() < options_.max_group) {
        group.push_back(std::move(queue_.front()));
        queue_.pop_front();
      }
    }
    // A write of the store's own failed (a snapshot, a RocksDB flush that met a full
    // disk): stop before deciding anything, without waiting for an append to fail.
    if (Status fault = store_->WriteFailure(); !fault.ok()) {
      FailOnStorage(fault);
      RefuseAfterStorageFault(group);
      break;
    }
    TimePoint now = clock_->Now();
    Processor proc(&working_, DecideContext{now, &cfg, &files_, &credentials_}, epoch_);
    std::vector<std::optional<Result<CommandResult>>> results(group.size());
    for (size_t i = 0; i < group.size(); ++i) {
      stats_.commands++;
      results[i] = proc.Apply(group[i]->command);
      if (!results[i]->ok()) stats_.rejected++;
    }
    if (now >= next_tick) {
      // An input's digest became known: the runs waiting for one may go on.
      if (inputs_hashed_.exchange(false)) {
        for (const auto& [id, r] : working_.runs) {
          if (!IsTerminal(r.phase)) proc.Touch(id);
        }
      }
      Tick tick;
      if (options_.start_pool) tick.expired = ExpiredLeases(now);
      {
        MutexLock lock(&watch_mu_);
        tick.queued = queued_seen_;
      }
      std::vector<Event> tick_events =
          OnTick(working_, tick, DecideContext{now, &cfg, &files_, &credentials_});
      if (!options_.start_pool) {
        std::erase_if(tick_events, [](const Event& e) { return e.type == ev::kContainerRequested; });
      }
      proc.Record(std::move(tick_events));
      next_tick = now + cfg.tick;
      if (options_.start_pool) MaybeWatch(now);
    }
    proc.Settle();
    std::vector<RecordedEvent>& recorded = proc.recorded();

    uint64_t position = working_.head;
    if (!recorded.empty()) {
      storage::AppendBatch ab;
      ab.time = FormatTime(recorded.front().time);
      ab.epoch = epoch_;
      for (auto& e : recorded) {
        if (ab.appends.empty() || ab.appends.back().stream != e.stream) {
          storage::StreamAppend sa;
          sa.stream = e.stream;
          sa.expected_version =
              e.type == ev::kRunSubmitted ? storage::kNoStream : storage::kAnyVersion;
          ab.appends.push_back(std::move(sa));
        }
        ab.appends.back().events.push_back(
            storage::NewEvent{e.type, 1, e.actor, CanonicalDump(e.data)});
        // The idempotency family is a second, unique index of the keys: a key
        // written twice would fail the whole append instead of doubling a run.
        std::string key = e.data.value("idempotency_key", "");
        if (!key.empty() && e.type == ev::kRunSubmitted) {
          ab.idempotency.push_back(
              {storage::IdempotencyRecordKey(e.data.value("tenant", "default"), key),
               e.data.value("run", "")});
        } else if (!key.empty() && e.type == ev::kWorkflowRegistered) {
          ab.idempotency.push_back(
              {storage::IdempotencyRecordKey(e.data.value("tenant", "default"), key) +
                   std::string(1, '\0') + "workflow",
               e.data.value("name", "") + "@" + std::to_string(e.data.value("version", 0))});
        }
      }
      TimePoint t0 = clock_->Now();
      auto res = store_->Append(std::move(ab));
      int64_t lat = (clock_->Now() - t0).count();
      int b = 0;
      while (b < EngineStats::kBuckets && lat > EngineStats::kBoundsUs[b]) ++b;
      stats_.latency_buckets[b]++;
      stats_.latency_sum_us += static_cast<uint64_t>(std::max<int64_t>(lat, 0));
      stats_.latency_count++;
      if (!res.ok() && res.status().code() == StatusCode::kFailedPrecondition) {
        // Fenced: a newer leader has claimed the store. Nothing was written.
        StepDown(res.status().message());
        for (auto& p : group) {
          p->promise.set_value(Unavailable("this master was deposed: " + res.status().message()));
        }
        {
          MutexLock lock(&queue_mu_);
          stopping_ = true;
          for (auto& p : queue_) p->promise.set_value(Unavailable("this master was deposed"));
          queue_.clear();
        }
        break;
      }
      if (!res.ok() || res->first_position != recorded.front().position) {
        // Nothing of the group is acknowledged: its events may or may not be durable
        // (a restart replays what is), and the working state that holds them is dropped.
        Status st = res.ok() ? Internal("append landed at an unexpected position")
                             : res.status();
        FailOnStorage(st);
        RefuseAfterStorageFault(group);
        break;
      }
      stats_.commits++;
      stats_.events_appended += recorded.size();
      {
        WriterLock lock(&published_mu_);
        for (const auto& r : recorded) EvolveKnownGood(published_, r);
      }
      // After publishing: the snapshot thread copies the published state, which must
      // hold the group that made the snapshot due (before, it could copy the state of
      // the previous group and the next trigger came only snapshotEvery events later).
      if (options_.snapshot_every > 0 &&
          recorded.back().position - last_snapshot_ >= options_.snapshot_every) {
        last_snapshot_ = recorded.back().position;
        {
          MutexLock lock(&snapshot_mu_);
          snapshot_due_ = true;
        }
        snapshot_cv_.Signal();
      }
      {
        MutexLock lock(&change_mu_);
        generation_++;
      }
      change_cv_.SignalAll();
      // Reactors: side effects of durable events.
      for (const auto& r : recorded) {
        if (r.type == ev::kContainerRequested && backend_) {
          ContainerSpec spec;
          spec.id = r.data.value("container", "");
          const Json& s = r.data.value("spec", Json::object());
          spec.cpu_millis = s.value("cpu_millis", int64_t{1000});
          spec.memory_bytes = s.value("memory_bytes", int64_t{0});
          spec.gpus = s.value("gpus", 0);
          spec.master_url = options_.advertise_url;
          spec.data_dir = cfg.data_dir;
          spec.env = options_.agent_env;
          std::optional<std::string> secret = credentials_.Take(spec.id);
          if (!secret) {
            // Decided with no mint (a test of the core): the agent could never
            // authenticate, so it is not started.
            spdlog::error("container {} has no credential minted by this master; not launched",
                          spec.id);
            continue;
          }
          spec.credential = std::move(*secret);
          PostReactor([this, spec] {
            auto h = backend_->Launch(spec);
            ContainerLaunchResult lr;
            lr.container = spec.id;
            lr.ok = h.ok();
            if (h.ok()) lr.handle = *h;
            else lr.error = h.status().message();
            lr.unschedulable = !h.ok() && h.status().code() == StatusCode::kResourceExhausted;
            if (!h.ok()) spdlog::error("launching container {} failed: {}", spec.id, lr.error);
            (void)Execute(lr);
          });
        } else if ((r.type == ev::kContainerLost || r.type == ev::kContainerReleased) && backend_) {
          std::string id = r.data.value("container", "");
          auto it = working_.containers.find(id);
          std::string handle = it != working_.containers.end() ? it->second.handle : "";
          if (!handle.empty()) {
            PostReactor([this, id, handle] {
              Status st = backend_->Terminate(id, handle);
              if (!st.ok()) spdlog::warn("terminating container {}: {}", id, st.ToString());
            });
          }
        }
      }
    }
    for (size_t i = 0; i < group.size(); ++i) {
      if (results[i]->ok()) (*results[i])->position = position;
      group[i]->promise.set_value(std::move(*results[i]));
    }
  }
  // Drain: anything still queued learns that the engine stopped.
  MutexLock lock(&queue_mu_);
  for (auto& p : queue_) {
    p->promise.set_value(corrupt_ ? Result<CommandResult>(CorruptHistoryStatus())
                                  : Result<CommandResult>(Unavailable("the engine is stopping")));
  }
  queue_.clear();
}

void Engine::MaybeWatch(TimePoint now) {
  if (!backend_ || !backend_->Watched() || options_.watch_interval <= Micros::zero()) return;
  if (now < next_watch_ || watch_in_flight_) return;
  next_watch_ = now + options_.watch_interval;
  std::vector<ContainerBackend::Ref> live;
  for (const auto& [id, c] : working_.containers) {
    if ((c.phase == ContainerPhase::kRequested || c.phase == ContainerPhase::kRegistered) &&
        !c.handle.empty()) {
      live.push_back({id, c.handle});
    }
  }
  {
    // Forget containers that are no longer live.
    MutexLock lock(&watch_mu_);
    auto gone = [&](const auto& kv) {
      return std::none_of(live.begin(), live.end(), [&](const auto& l) { return l.container_id == kv.first; });
    };
    std::erase_if(watched_, gone);
    std::erase_if(queued_seen_, gone);
  }
  if (live.empty()) return;
  watch_in_flight_ = true;
  PostReactor([this, refs = std::move(live)] {
    auto answers = backend_->DescribeAll(refs);
    for (size_t i = 0; i < refs.size() && i < answers.size(); ++i) {
      const std::string& id = refs[i].container_id;
      const std::string& handle = refs[i].handle;
      const auto& d = answers[i];
      if (!d.ok()) {
        spdlog::warn("watching container {} ({}): {}", id, handle, d.status().ToString());
        continue;
      }
      {
        MutexLock lock(&watch_mu_);
        watched_[id] = *d;
        if (d->state == ContainerDescription::State::kPending) queued_seen_[id] = clock_->Now();
      }
      if (d->state == ContainerDescription::State::kGone) {
        spdlog::warn("container {} is gone: {}", id, d->detail);
        (void)Execute(ContainerExited{id, handle, d->detail});
      }
    }
    watch_in_flight_ = false;
  });
}

void Engine::PostReactor(std::function<void()> task) {
  {
    MutexLock lock(&reactor_mu_);
    reactor_tasks_.push_back(std::move(task));
  }
  reactor_cv_.Signal();
}

void Engine::ReactorLoop() {
  while (true) {
    std::function<void()> task;
    {
      MutexLock lock(&reactor_mu_);
      while (!(reactor_stopping_ || !reactor_tasks_.empty())) reactor_cv_.Wait(&reactor_mu_);
      if (reactor_stopping_) return;
      task = std::move(reactor_tasks_.front());
      reactor_tasks_.pop_front();
    }
    task();
  }
}

void Engine::WaitForChange(uint64_t seen, Micros timeout) const {
  MutexLock lock(&change_mu_);
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!(generation_.load() != seen || !started_)) {
    if (!change_cv_.WaitUntil(&change_mu_, deadline)) break;
  }
}

namespace {

// One assignment of the container protocol (DESIGN.md; executors/agent/agent.h): what
// to run, where, as whom, with which GPUs, and what of the data dir it may read.
Json AssignmentJson(const EngineConfig& cfg, const Run& run, const Attempt& a,
                    const std::string& id, const std::string& step, int n, const Json& env,
                    const std::string& outputs_dir, const std::string& log_path,
                    const Json& gpus) {
  Json inputs = Json::array();
  // What the scheduler reserved, and what the kernel is to enforce: only what the
  // definition declared (null: the container's sig.cpu / sig.memory bound it).
  Json resources{{"cpu_millis", a.resources.cpu_millis}, {"memory_bytes", a.resources.memory_bytes}};
  const workflows::Step* def = run.def ? run.def->FindStep(step) : nullptr;
  if (def) inputs = UpstreamInputs(run, *def, cfg);
  Json limits = AttemptLimitsJson(a, def);
  return Json{{"attempt_id", id},
              {"resources", std::move(resources)},
              {"limits", std::move(limits)},
              {"inputs", std::move(inputs)},
              {"run", run.id},
              {"step", step},
              {"attempt", n},
              {"tenant", run.tenant},
              {"run_as", RunAsFor(cfg, run.tenant)},
              {"mounts", a.mounts},
              {"max_log_bytes", cfg.max_log_bytes},
              {"argv", a.argv},
              {"env", env},
              {"workspace", WorkspaceDir(cfg, run.id)},
              {"outputs_dir", outputs_dir},
              {"log_path", log_path},
              {"timeout_ms", a.timeout_ms},
              {"gpus", gpus}};
}

}  // namespace

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

DispatchView Engine::DispatchFor(const std::string& container,
                                 const std::vector<std::string>& running,
                                 const std::vector<std::string>& reported) const {
  DispatchView view;
  if (corrupt_) return view;  // nothing starts or stops on a corrupt history
  std::set<std::string> run_set(running.begin(), running.end());
  std::set<std::string> rep_set(reported.begin(), reported.end());
  const EngineConfig& cfg = options_.config;
  ReaderLock lock(&published_mu_);
  const State& s = published_;
  auto it = s.containers.find(container);
  if (it == s.containers.end()) return view;
  for (const auto& id : it->second.attempts) {
    if (run_set.count(id) || rep_set.count(id)) continue;
    const Attempt* ga = nullptr;
    if (const Worker* w = s.FindWorker(id, &ga)) {
      // A gang worker: handed out once every worker of its attempt is placed
      // (they are placed together), with torch.distributed's variables.
      if (w->phase != AttemptPhase::kAssigned || IsTerminal(ga->phase)) continue;
      std::string run_id, step;
      int n, rank;
      ParseTaskId(id, &run_id, &step, &n, &rank);
      const Run* run = s.FindRun(run_id);
      if (!run || run->cancel_requested || IsTerminal(run->phase)) continue;
      Json env = ga->env;
      env["WORLD_SIZE"] = std::to_string(ga->workers);
      env["RANK"] = std::to_string(rank);
      env["LOCAL_RANK"] = std::to_string(w->local_rank);
      env["MASTER_ADDR"] = ga->master_addr;
      env["MASTER_PORT"] = std::to_string(ga->master_port);
      std::string outputs = OutputsDir(cfg, run_id, step, n);
      std::string log = LogPath(cfg, run_id, step, n);
      if (rank > 0) {  // rank 0 writes the step's outputs and main log
        outputs += "-" + std::to_string(rank);
        log = log.substr(0, log.size() - 4) + "." + std::to_string(rank) + ".log";
      }
      view.assignments.push_back(
          AssignmentJson(cfg, *run, *ga, id, step, n, env, outputs, log, w->gpus));
      continue;
    }
    const Attempt* a = s.FindAttempt(id);
    if (!a || a->phase != AttemptPhase::kAssigned) continue;
    std::string run_id, step;
    int n;
    ParseAttemptId(id, &run_id, &step, &n);
    const Run* run = s.FindRun(run_id);
    if (!run) continue;
    view.assignments.push_back(AssignmentJson(cfg, *run, *a, id, step, n, a->env,
                                              OutputsDir(cfg, run_id, step, n),
                                              LogPath(cfg, run_id, step, n), a->gpus));
  }
  for (const auto& id : running) {
    if (rep_set.count(id)) continue;
    const Attempt* ga = nullptr;
    if (const Worker* w = s.FindWorker(id, &ga)) {
      // A worker runs on only while its whole attempt does.
      std::string run_id, step;
      int n, rank;
      ParseTaskId(id, &run_id, &step, &n, &rank);
      const Run* run = s.FindRun(run_id);
      if (IsTerminal(ga->phase) || w->container != container || !run || run->cancel_requested ||
          IsTerminal(run->phase) || (IsTerminal(w->phase) && w->phase != AttemptPhase::kCancelled)) {
        view.cancels.push_back(id);
      } else if (w->phase == AttemptPhase::kCancelled) {
        view.cancels.push_back(id);
      }
      continue;
    }
    const Attempt* a = s.FindAttempt(id);
    std::string run_id, step;
    int n;
    bool cancel = !a || IsTerminal(a->phase) || a->container != container;
    if (!cancel && ParseAttemptId(id, &run_id, &step, &n)) {
      const Run* run = s.FindRun(run_id);
      cancel = !run || run->cancel_requested || IsTerminal(run->phase);
    }
    if (cancel) view.cancels.push_back(id);
  }
  return view;
}

}  // namespace epoch::engine
