// ApiServer's workflow routes: registering a workflow (POST /v1/workflows), listing
// them, and reading one, latest or at a version.
#include <exception>
#include <string>
#include <utility>

#include "api/auth.h"
#include "api/http_util.h"
#include "api/server_impl.h"
#include "common/clock.h"
#include "common/sha256.h"
#include "engine/engine.h"

namespace epoch::api {

void ApiServer::Impl::WorkflowRoutes() {
  Post("/v1/workflows", Wrap("/v1/workflows", [this](const Request& req, Response& res) {
         HttpError err;
         auto body = ParseBody(req, &err);
         if (!body.ok()) return WriteError(res, err);
         engine::RegisterWorkflow cmd{*body, Actor(req), Caller().tenant, ""};
         cmd.any_tenant = Caller().role == Role::kAdmin;
         cmd.idempotency_key = req.Header("Idempotency-Key");
         if (cmd.idempotency_key.size() > 256) {
           return WriteError(res, {400, "malformed", "Idempotency-Key: at most 256 bytes", {}});
         }
         if (!cmd.idempotency_key.empty()) {
           cmd.request_digest = Sha256Hex(CanonicalDump(cmd.definition));
         }
         auto r = engine->Execute(std::move(cmd));
         if (!r.ok()) return WriteError(res, FromStatus(r.status()));
         WriteJson(res, r->created ? 201 : 200,
                   Json{{"name", r->id}, {"version", r->version}, {"digest", r->digest}});
       }));
  Get("/v1/workflows", Wrap("/v1/workflows", [this](const Request&, Response& res) {
        Json items = engine->Read([&](const engine::State& s) {
          return engine::ListWorkflows(s, [](const std::string& t) { return Caller().Sees(t); });
        });
        WriteJson(res, 200, Json{{"items", items}, {"next_cursor", nullptr}});
      }));
  auto get_workflow = [this](const Request& req, Response& res) {
    std::string name = req.matches[1];
    int version = 0;
    if (req.matches.size() > 2) {
      try {
        version = std::stoi(req.matches[2]);
      } catch (const std::exception&) {
        return WriteError(res, {400, "bad_parameter", "version must be an integer", {}});
      }
      if (version < 1) return WriteError(res, {400, "bad_parameter", "version must be >= 1", {}});
    }
    Json out = engine->Read([&](const engine::State& s) {
      return engine::WorkflowVersionJson(s, name, version,
                                         [](const std::string& t) { return Caller().Sees(t); });
    });
    bool found = !out.is_null();
    if (!found) {
      return WriteError(
          res, {404,
                "not_found",
                "workflow '" + name + "'" + (version ? " version " + std::to_string(version) : "") +
                    " not found",
                {}});
    }
    WriteJson(res, 200, out);
  };
  Get(R"(/v1/workflows/([^/]+))", Wrap("/v1/workflows/{name}", get_workflow));
  Get(R"(/v1/workflows/([^/]+)/versions/([^/]+))",
      Wrap("/v1/workflows/{name}/versions/{v}", get_workflow));
}

}  // namespace epoch::api
