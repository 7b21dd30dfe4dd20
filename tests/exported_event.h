// An event as `epochctl events export` and GET /v1/events write it (one JSON object
// per line, tests/golden/*.ndjson), back as the engine's RecordedEvent, for tests that
// replay exported histories through Evolve.
#pragma once

#include "common/clock.h"
#include "common/json.h"
#include "common/status.h"
#include "engine/events.h"

namespace epoch::testing {

// The payload version it was written at is kept (v1's export predates the field: 1), so
// that Evolve upcasts it as replay does. kInvalidArgument for an unreadable time.
inline Result<engine::RecordedEvent> FromExported(const Json& j) {
  engine::RecordedEvent e;
  e.position = j.at("position");
  e.stream = j.at("stream");
  e.type = j.at("type");
  e.data = j.at("data");
  e.actor = j.at("actor");
  e.epoch = j.at("epoch");
  e.schema = j.value("schema", 1u);
  ASSIGN_OR_RETURN(e.time, ParseTime(j.at("time").get<std::string>()));
  return e;
}

}  // namespace epoch::testing
