// The Engine's replay: loads the working state from the latest usable snapshot and
// the events after it (Load), and applies the store's events beyond the state's
// head (ApplyFromStore, also how a standby follows its leader).
#include "engine/engine.h"

#include <spdlog/spdlog.h>

#include <cstdlib>

#include <algorithm>
#include <string>
#include <vector>

#include "engine/archive.h"
#include "engine/engine_internal.h"
#include "engine/event_types.h"
#include "engine/snapshot.h"

namespace epoch::engine {

namespace {
constexpr size_t kReplayPage = 4096;

// A stored event as evolve reads it. Nothing is guessed: a time or data that
// does not parse is kCorruption naming the position and the field. The payload is
// upcast to today's version of its type (ev::Upcast): a version above today's is
// kFailedPrecondition (a newer Epoch wrote the log).
Result<RecordedEvent> FromEnvelope(storage::Envelope& env) {
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
  if (ev::CurrentVersion(env.type) == env.schema) {
    // Today's version: ev::DecodeEvent reads the text itself (fields::DecodeText), and
    // names a problem with it as the parse below would.
    r.text = std::move(env.data);
    r.schema = env.schema;
    return r;
  }
  auto j = ParseJson(env.data, 256);
  if (!j.ok()) {
    return Corruption("event " + std::to_string(env.position) + " (" + env.type +
                      "): field data: " + j.status().message());
  }
  auto data = ev::Upcast(env.type, env.schema, std::move(*j));
  if (!data.ok()) {
    return Status(data.status().code(), "event " + std::to_string(env.position) + " (" + env.type +
                                            "): " + data.status().message());
  }
  r.data = std::move(*data);
  r.schema = ev::CurrentVersion(env.type);
  return r;
}
}  // namespace

namespace internal {

// Evolves with an event that already evolved another copy of the same state
// without error (published_ follows working_): failing here is a bug.
void EvolveKnownGood(State& s, const RecordedEvent& r, RunArchive* archive) {
  if (Status st = EvolveArchived(s, r, archive); !st.ok()) {
    spdlog::critical("event {} evolved one copy of the state but not another: {}", r.position,
                     st.ToString());
    std::abort();
  }
}

}  // namespace internal

using internal::EvolveKnownGood;

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
    std::vector<RecordedEvent> recorded;  // kept for the mirror only
    if (mirror) recorded.reserve(page.size());
    for (auto& env : page) {
      ASSIGN_OR_RETURN(RecordedEvent r, FromEnvelope(env));
      try {
        RETURN_IF_ERROR(EvolveArchived(working_, r, working_archive_));
      } catch (const Json::exception& e) {
        return Corruption("applying event " + std::to_string(env.position) + " (" + env.type +
                          "): " + e.what());
      }
      if (working_.head != env.position) {
        return Corruption("event " + std::to_string(env.position) + " did not advance the state");
      }
      applied_hash_ = env.hash;
      ++*count;
      if (mirror) recorded.push_back(std::move(r));
    }
    if (mirror) {
      WriterLock lock(&published_mu_);
      for (const auto& r : recorded) EvolveKnownGood(published_, r, reading_.get());
    }
    RETURN_IF_ERROR(FlushArchive());
  }
}

Status Engine::Load(uint64_t upto) {
  working_ = State{};
  applied_hash_.clear();
  loaded_from_ = 0;
  // The read model (archive.h): a replay folds through the records already there,
  // unless they are missing or of another format; then it clears them and rebuilds
  // them from the whole log (a snapshot holds open runs only, so it cannot help).
  bool rebuild = false;
  working_archive_ = reading_.get();
  if (reading_ && !ReadModelComplete()) {
    if (store_->read_only()) {
      spdlog::warn(
          "the read model is incomplete and this store is read-only: finished runs "
          "the leader has not archived are not readable until it rebuilds them");
    } else {
      spdlog::warn("rebuilding the read model (finished runs) from the log");
      RETURN_IF_ERROR(store_->ClearReadModel());
      rebuild = true;
      working_archive_ = recording_.get();
    }
  }
  if (options_.load_snapshot && !rebuild) {
    // A snapshot that does not decode or does not match the log is skipped: the
    // log is the truth and a full replay rebuilds the same state.
    auto latest = store_->LatestSnapshot();
    if (!latest.ok()) {
      spdlog::warn("reading the latest snapshot: {}; replaying the whole log",
                   latest.status().ToString());
    } else if (latest->has_value() && (*latest)->first > upto) {
      spdlog::warn("snapshot at {} is past event {}: replaying from the start", (*latest)->first,
                   upto);
    } else if (latest->has_value()) {
      uint64_t position = (*latest)->first;
      auto at = store_->ReadAt(position);
      auto state = DecodeSnapshot((*latest)->second);
      if (!at.ok() || !state.ok() || state->head != position) {
        spdlog::warn("snapshot at {} is unusable ({}); replaying the whole log", position,
                     !at.ok()      ? at.status().ToString()
                     : !state.ok() ? state.status().ToString()
                                   : "head mismatch");
      } else {
        working_ = std::move(*state);
        applied_hash_ = at->hash;
        loaded_from_ = position;
      }
    }
  }
  uint64_t count = 0;
  RETURN_IF_ERROR(ApplyFromStore(/*mirror=*/false, &count, upto));
  if (rebuild) {
    RETURN_IF_ERROR(MarkReadModelComplete());
    working_archive_ = reading_.get();
  }
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

}  // namespace epoch::engine
