#include "engine/processor.h"

#include <spdlog/spdlog.h>

#include <cstdlib>

#include "engine/archive.h"

namespace epoch::engine {

void Processor::Record(std::vector<Event> events) {
  for (auto& e : events) {
    RecordedEvent r;
    r.position = state_->head + 1;
    r.stream = std::move(e.stream);
    r.type = std::move(e.type);
    r.data = std::move(e.data);
    r.actor = std::move(e.actor);
    r.time = ctx_.now;
    r.epoch = epoch_;
    // Decided events evolve exactly as replay will evolve them. One that cannot be
    // applied is a decider bug; it is not durable yet, and writing it would make
    // every later replay stop at it, so nothing may go on from here.
    if (Status st = EvolveArchived(*state_, r, ctx_.archive); !st.ok()) {
      spdlog::critical("a decided {} event cannot be applied: {}", r.type, st.ToString());
      std::abort();
    }
    if (r.stream.rfind("run-", 0) == 0) touched_.insert(r.stream.substr(4));
    recorded_.push_back(std::move(r));
  }
}

Result<CommandResult> Processor::Apply(const Command& command) {
  // Commands carry JSON from outside (agent reports); a value of the wrong type
  // must reject that command, not take the writer thread down.
  Result<Decision> d = InvalidArgument("unset");
  try {
    d = Decide(*state_, command, ctx_);
  } catch (const Json::exception& e) {
    return InvalidArgument(std::string("malformed command: ") + e.what());
  }
  if (!d.ok()) return d.status();
  Record(std::move(d->events));
  return d->result;
}

void Processor::Settle() {
  // A run's follow-ups converge: each round moves some step forward; the bound
  // only guards against a decider bug looping forever.
  for (int round = 0; round < 10000 && !touched_.empty(); ++round) {
    std::set<std::string> runs;
    runs.swap(touched_);
    for (const auto& id : runs) {
      const Run* run = state_->FindRun(id);
      if (run) Record(AdvanceRun(*state_, *run, ctx_));
    }
  }
  touched_.clear();
  Record(Schedule(*state_, ctx_));
  touched_.clear();
}

}  // namespace epoch::engine
