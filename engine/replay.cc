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
#include "storage/event_page.h"

namespace epoch::engine {

namespace {
constexpr size_t kReplayPage = 4096;

// A stored event as evolve reads it, into `r` (reused from event to event: its
// strings keep their capacity; e's strings are swapped in, not copied). Nothing is
// guessed: a time or data that does not parse is kCorruption naming the position
// and the field. The payload is upcast to today's version of its type (ev::Upcast):
// a version above today's is kFailedPrecondition (a newer Epoch wrote the log).
Status FromStored(storage::PageEvent& e, RecordedEvent* r) {
  r->position = e.position;
  r->stream.swap(e.stream);
  r->type.swap(e.type);
  r->actor.swap(e.actor);
  r->epoch = e.epoch;
  auto t = ParseTime(e.time);
  if (!t.ok()) {
    return Corruption("event " + std::to_string(e.position) + " (" + r->type +
                      "): field time: " + t.status().message());
  }
  r->time = *t;
  if (ev::CurrentVersion(r->type) == e.schema) {
    // Today's version: ev::DecodeEvent reads the text itself (fields::DecodeText), and
    // names a problem with it as the parse below would.
    if (!r->data.is_null()) r->data = nullptr;
    if (!r->text) r->text.emplace();
    r->text->swap(e.data);
    r->schema = e.schema;
    return Status::Ok();
  }
  r->text.reset();
  auto j = ParseJson(e.data, 256);
  if (!j.ok()) {
    return Corruption("event " + std::to_string(e.position) + " (" + r->type +
                      "): field data: " + j.status().message());
  }
  auto data = ev::Upcast(r->type, e.schema, std::move(*j));
  if (!data.ok()) {
    return Status(data.status().code(), "event " + std::to_string(e.position) + " (" + r->type +
                                            "): " + data.status().message());
  }
  r->data = std::move(*data);
  r->schema = ev::CurrentVersion(r->type);
  return Status::Ok();
}

// A page of the log made ready for Evolve on the thread that read it: the stored
// events (storage::EventPage) turned into RecordedEvents by FromStored, in order, until
// one fails. Both vectors keep their slots and strings from page to page.
struct ReadyPage {
  storage::EventPage stored;
  std::vector<RecordedEvent> events;  // events[i] is stored[i], for i < ready
  size_t ready = 0;
  Status failed;  // why stored[ready] could not be made ready (ok: the whole page is)

  Status Read(storage::EventStore* store, uint64_t after, size_t limit) {
    ready = 0;
    failed = Status::Ok();
    RETURN_IF_ERROR(store->ReadPage(after, limit, &stored));
    if (events.size() < stored.size()) events.resize(stored.size());
    for (; ready < stored.size(); ++ready) {
      failed = FromStored(stored[ready], &events[ready]);
      if (!failed.ok()) break;
    }
    return Status::Ok();
  }
};

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
  storage::PageReader<ReadyPage> reader(
      [store = store_](ReadyPage* page, uint64_t after, size_t limit) {
        return page->Read(store, after, limit);
      });
  while (true) {
    if (working_.head >= upto) return Status::Ok();
    size_t limit = static_cast<size_t>(std::min<uint64_t>(kReplayPage, upto - working_.head));
    ASSIGN_OR_RETURN(ReadyPage * page, reader.Next(working_.head, limit));
    const storage::EventPage& stored = page->stored;
    if (stored.empty()) return Status::Ok();
    // A full page: there is likely more (a replay, a standby far behind). A short one
    // is the tail a standby follows: nothing to read ahead.
    const uint64_t last = stored.back().position;
    if (stored.size() == limit && last < upto) {
      reader.ReadAhead(last, static_cast<size_t>(std::min<uint64_t>(kReplayPage, upto - last)));
    }
    for (size_t i = 0; i < stored.size(); ++i) {
      Status st = i < page->ready ? Status::Ok() : page->failed;
      if (st.ok()) {
        const RecordedEvent& r = page->events[i];
        try {
          st = EvolveArchived(working_, r, working_archive_);
        } catch (const Json::exception& ex) {
          st = Corruption("applying event " + std::to_string(r.position) + " (" + r.type +
                          "): " + ex.what());
        }
        if (st.ok() && working_.head != r.position) {
          st = Corruption("event " + std::to_string(r.position) + " did not advance the state");
        }
      }
      if (!st.ok()) {
        if (i > 0) applied_hash_ = ToHex(stored[i - 1].hash);
        return st;
      }
      ++*count;
    }
    applied_hash_ = ToHex(stored.back().hash);
    if (mirror) {
      WriterLock lock(&published_mu_);
      for (size_t i = 0; i < stored.size(); ++i) {
        EvolveKnownGood(published_, page->events[i], reading_.get());
      }
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
