// Request bodies parsed into engine commands, outside the route handlers so that
// each is unit-tested (dto_test.cc). Every function answers kInvalidArgument with
// a message that starts with the field it is about ("reports[1].exit_code: ..."),
// which the route sends as 400 `malformed`; nothing reaches the engine then.
//
// The user-facing bodies (submit, cache invalidation) and the container protocol's
// (register, poll), whose bodies come from agents. What a body cannot say (the caller,
// the tenant, an Idempotency-Key header, the new run's id) the route adds.
#pragma once

#include <string>

#include "common/json.h"
#include "common/status.h"
#include "engine/commands.h"

namespace epoch::api {

// POST /v1/runs: {"workflow" | "definition", "version", "params", "labels", "priority"};
// any other member is refused.
Result<engine::SubmitRun> ParseSubmitBody(const Json& b);
// POST /v1/cache/invalidate: {"key", "workflow", "step"}, each a non-empty string.
Result<engine::InvalidateCache> ParseInvalidateBody(const Json& b);
// POST /v1/containers/{id}/register.
Result<engine::RegisterContainer> ParseRegisterBody(const std::string& container, const Json& b);
// POST /v1/containers/{id}/poll: reports typed by engine::ParseAttemptReports.
Result<engine::PollContainer> ParsePollBody(const std::string& container, const Json& b);

}  // namespace epoch::api
