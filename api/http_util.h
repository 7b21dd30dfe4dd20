// Internal to api/: the HTTP API's transport helpers, shared by ApiServer
// (api/server.cc) and its route groups (api/routes_*.cc): the error envelope and JSON
// answers, engine and store Statuses as HTTP errors, JSON request bodies, and query
// parameters.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "api/http_server.h"
#include "common/json.h"
#include "common/status.h"

namespace epoch::api {

using Request = HttpRequest;
using Response = HttpResponse;

constexpr int kMaxPageSize = 1000;
// SSE: a comment line after this long without an event (proxies and clients see a
// live stream); event streams re-check (and send it) at least every kSseTick
// (api/routes_events.cc).
constexpr auto kSseKeepAlive = std::chrono::seconds(15);

// An error that ends a request: HTTP status, machine code, message, details.
struct HttpError {
  int status;
  std::string code;
  std::string message;
  std::vector<std::string> details;
};

void WriteError(Response& res, const HttpError& e);

// Maps an engine/store Status to HTTP. kInvalidArgument from the engine means
// the request was well-formed but its content is invalid: 422.
HttpError FromStatus(const Status& st);

void WriteJson(Response& res, int status, const Json& j);

// Parses a JSON request body: 415 for another content type, 400 for bad JSON.
Result<Json> ParseBody(const Request& req, HttpError* err, bool allow_empty = false);

// Query parameter helpers; bad values are 400s naming the parameter.
Result<int64_t> QueryInt(const Request& req, const char* name, int64_t def, int64_t min,
                         int64_t max, HttpError* err);
bool QueryBool(const Request& req, const char* name);

}  // namespace epoch::api
