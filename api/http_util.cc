// The HTTP API's transport helpers (api/http_util.h).
#include "api/http_util.h"

#include <algorithm>
#include <cctype>
#include <exception>

#include "engine/engine.h"

namespace epoch::api {

void WriteError(Response& res, const HttpError& e) {
  Json details = Json::array();
  for (const auto& d : e.details) details.push_back(d);
  res.status = e.status;
  // CanonicalDump, not dump(): messages quote the request (query values, path segments,
  // headers, bodies), which need not be UTF-8, and dump() would throw (a 500) on them.
  Json body{{"error", Json{{"code", e.code}, {"message", e.message}, {"details", details}}}};
  res.SetContent(CanonicalDump(body), "application/json");
}

HttpError FromStatus(const Status& st) {
  switch (st.code()) {
    case StatusCode::kInvalidArgument:
      if (!st.details().empty() && st.details()[0] == engine::kIdempotencyKeyReused) {
        return {422, std::string(engine::kIdempotencyKeyReused), st.message(), {}};
      }
      return {422, "invalid", st.message(), st.details()};
    case StatusCode::kNotFound: return {404, "not_found", st.message(), st.details()};
    case StatusCode::kConflict: return {409, "conflict", st.message(), st.details()};
    case StatusCode::kFailedPrecondition:
      return {409, "failed_precondition", st.message(), st.details()};
    case StatusCode::kUnavailable:
      return {
          503,
          engine::IsCorruptHistory(st) ? std::string(engine::kCorruptHistoryCode) : "unavailable",
          st.message(), st.details()};
    case StatusCode::kResourceExhausted:
      if (engine::IsInsufficientStorage(st)) {
        return {507, std::string(engine::kInsufficientStorageCode), st.message(), st.details()};
      }
      return {429, "resource_exhausted", st.message(), st.details()};
    case StatusCode::kUnauthenticated: return {401, "unauthenticated", st.message(), {}};
    case StatusCode::kPermissionDenied: return {403, "permission_denied", st.message(), {}};
    case StatusCode::kCorruption: return {500, "corruption", st.message(), st.details()};
    default: return {500, "internal", st.message(), st.details()};
  }
}

void WriteJson(Response& res, int status, const Json& j) {
  res.status = status;
  res.SetContent(CanonicalDump(j), "application/json");
}

Result<Json> ParseBody(const Request& req, HttpError* err, bool allow_empty) {
  if (req.body.empty() && allow_empty) return Json::object();
  std::string ct = req.Header("Content-Type");
  std::string lower = ct;
  std::transform(lower.begin(), lower.end(), lower.begin(), ::tolower);
  if (lower.rfind("application/json", 0) != 0) {
    *err = {415,
            "unsupported_media_type",
            "Content-Type must be application/json" + (ct.empty() ? "" : ", got '" + ct + "'"),
            {}};
    return InvalidArgument("content type");
  }
  auto j = ParseJson(req.body, 64);
  if (!j.ok()) {
    *err = {400, "malformed", j.status().message(), {}};
    return j.status();
  }
  if (!j->is_object()) {
    *err = {400, "malformed", "the request body must be a JSON object", {}};
    return InvalidArgument("not an object");
  }
  return j;
}

Result<int64_t> QueryInt(const Request& req, const char* name, int64_t def, int64_t min,
                         int64_t max, HttpError* err) {
  if (!req.HasParam(name)) return def;
  std::string v = req.Param(name);
  try {
    size_t used = 0;
    int64_t n = std::stoll(v, &used);
    if (used == v.size() && n >= min && n <= max) return n;
  } catch (const std::exception&) {
  }
  *err = {400,
          "bad_parameter",
          std::string("query parameter '") + name + "' must be an integer in [" +
              std::to_string(min) + ", " + std::to_string(max) + "], got '" + v + "'",
          {}};
  return InvalidArgument(name);
}

bool QueryBool(const Request& req, const char* name) {
  if (!req.HasParam(name)) return false;
  std::string v = req.Param(name);
  return v == "true" || v == "1" || v == "yes";
}

}  // namespace epoch::api
