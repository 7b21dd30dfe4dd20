// ApiServer's step-cache routes (engine/cache.h): listing the entries the caller may
// see (/v1/cache) and forgetting them (POST /v1/cache/invalidate).
#include <string>

#include "api/auth.h"
#include "api/dto.h"
#include "api/http_util.h"
#include "api/server_impl.h"
#include "engine/engine.h"

namespace epoch::api {

void ApiServer::Impl::CacheRoutes() {
  // The step cache (engine/cache.h): entries, and forgetting them.
  Get("/v1/cache", Wrap("/v1/cache", [this](const Request& req, Response& res) {
        std::string workflow = req.Param("workflow");
        std::string step = req.Param("step");
        Json items = engine->Read([&](const engine::State& s) {
          return engine::CacheEntries(s, Visible(), workflow, step);
        });
        WriteJson(res, 200, Json{{"items", items}, {"next_cursor", nullptr}});
      }));
  Post("/v1/cache/invalidate",
       Wrap("/v1/cache/invalidate", [this](const Request& req, Response& res) {
         HttpError err;
         auto body = ParseBody(req, &err);
         if (!body.ok()) return WriteError(res, err);
         auto parsed = ParseInvalidateBody(*body);
         if (!parsed.ok())
           return WriteError(res, {400, "malformed", parsed.status().message(), {}});
         engine::InvalidateCache cmd = std::move(*parsed);
         cmd.actor = Actor(req);
         // Only the caller's tenant's entries (the same 404s as for ones that do
         // not exist: another tenant's names are not disclosed).
         std::string hidden = engine->Read([&](const engine::State& s) {
           return engine::HiddenCacheTarget(s, cmd.key, cmd.workflow, Visible());
         });
         if (!hidden.empty()) return WriteError(res, {404, "not_found", hidden, {}});
         cmd.tenant = Caller().tenant;
         cmd.any_tenant = Caller().role == Role::kAdmin;
         auto r = engine->Execute(cmd);
         if (!r.ok()) return WriteError(res, FromStatus(r.status()));
         WriteJson(res, 200, Json{{"invalidated", r->keys.size()}, {"keys", r->keys}});
       }));
}

}  // namespace epoch::api
