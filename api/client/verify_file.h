// Offline audit: verifies an exported event history (`epochctl events export`: one
// JSON event per line, as GET /v1/events gives them, with hashes) without a server.
//
// Each event's hash is recomputed from its fields with the store's own encoding
// (storage/codec.h; `data` is re-encoded canonically, as the engine stored it), and
// consecutive positions must link (prev_hash = the previous event's hash; position 1
// links to 64 zeros). A filtered export (one run) has gaps: each event's own hash is
// still proven, and links across gaps cannot be.
#pragma once

#include <istream>
#include <string>

#include "common/json.h"
#include "common/status.h"

namespace epoch::client {

// {"ok", "events", "links_checked", "first_position", "last_position", "last_hash",
//  and when not ok "bad_position"/"bad_line", "problem"; with `against` ("P:H"), an
// "against": {"position", "hash", "ok", "problem"?}}. Errors only for an unreadable
// stream; a bad line is a failed report naming it.
Result<Json> VerifyEventsFile(std::istream& in, const std::string& against = "");

}  // namespace epoch::client
