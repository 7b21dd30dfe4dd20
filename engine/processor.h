// Processor: drives the pure decider against a working State for one commit.
//
// Apply() decides a command and evolves its events into the state at once (so
// the next command in the same group sees them); Settle() then asks AdvanceRun
// for every run that changed until nothing more follows, and Schedule() to place
// queued attempts. The events, in order, with the positions they will have, are
// in recorded(). The engine's writer uses one Processor per group commit; tests
// use it to drive the decider without a store.
//
// Thread-safety: none (the writer thread's).
#pragma once

#include <set>
#include <string>
#include <vector>

#include "engine/decider.h"
#include "engine/events.h"
#include "engine/state.h"

namespace epoch::engine {

class Processor {
 public:
  Processor(State* state, DecideContext ctx, uint64_t epoch)
      : state_(state), ctx_(ctx), epoch_(epoch) {}

  Result<CommandResult> Apply(const Command& command);
  void Settle();
  // Evolves already-decided events (e.g. from OnTick).
  void Record(std::vector<Event> events);
  // Makes Settle() advance this run even if nothing was recorded for it (a declared
  // input's digest became known: FileAccess).
  void Touch(const std::string& run_id) { touched_.insert(run_id); }

  const std::vector<RecordedEvent>& recorded() const { return recorded_; }
  std::vector<RecordedEvent>& recorded() { return recorded_; }

 private:
  State* state_;
  DecideContext ctx_;
  uint64_t epoch_;
  std::vector<RecordedEvent> recorded_;
  std::set<std::string> touched_;
};

}  // namespace epoch::engine
