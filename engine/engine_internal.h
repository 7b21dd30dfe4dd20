// Internal to the engine's implementation: helpers that several of engine/*.cc
// share (the Engine's replay, its HA transitions and its writer thread). Not part
// of the public API (engine/engine.h).
#pragma once

#include "engine/archive.h"
#include "engine/state.h"

namespace epoch::engine::internal {

// Evolves with an event that already evolved another copy of the same state
// without error (published_ follows working_): failing here is a bug.
void EvolveKnownGood(State& s, const RecordedEvent& r, RunArchive* archive = nullptr);

}  // namespace epoch::engine::internal
