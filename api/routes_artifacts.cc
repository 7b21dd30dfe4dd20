// ApiServer's lineage routes: data sets (/v1/datasets) and models (/v1/models), named
// per tenant, each version with what produced it.
#include <cstdint>
#include <exception>
#include <string>
#include <utility>
#include <vector>

#include "api/auth.h"
#include "api/http_util.h"
#include "api/server_impl.h"
#include "common/ids.h"
#include "engine/engine.h"

namespace epoch::api {

void ApiServer::Impl::ArtifactRoutes() {
  // Lineage: data sets and models, each version with what produced it.
  for (bool model : {false, true}) {
    std::string base = model ? "/v1/models" : "/v1/datasets";
    // Names are per tenant (engine::ArtifactKey): each item says whose it is.
    Get(base, Wrap(base, [this, model](const Request& req, Response& res) {
          std::string only = req.Param("tenant");
          if (req.HasParam("tenant") && !IsValidName(only)) {
            return WriteError(res, {400, "bad_parameter", "tenant: not a tenant name", {}});
          }
          // Versions live in the read model (engine::Artifact): read as of the state.
          Result<Json> items = engine->Read([&](const engine::State& s) {
            return engine::ListArtifacts(s, model, Visible(), only, engine->archive());
          });
          if (!items.ok()) return WriteError(res, FromStatus(items.status()));
          WriteJson(res, 200, Json{{"items", *items}, {"next_cursor", nullptr}});
        }));
    auto one = [this, model](const Request& req, Response& res) {
      std::string name = req.matches[1];
      int version = 0;
      if (req.matches.size() > 2) {
        try {
          version = std::stoi(req.matches[2]);
        } catch (const std::exception&) {
          version = -1;
        }
        if (version < 1) {
          return WriteError(res, {400, "bad_parameter", "version must be an integer >= 1", {}});
        }
      }
      std::string tenant = req.Param("tenant");
      if (req.HasParam("tenant") && !IsValidName(tenant)) {
        return WriteError(res, {400, "bad_parameter", "tenant: not a tenant name", {}});
      }
      // Every version: a page at a time (a name can have a version per run).
      HttpError err;
      auto limit = QueryInt(req, "limit", kMaxPageSize, 1, kMaxPageSize, &err);
      if (!limit.ok()) return WriteError(res, err);
      auto cursor = QueryInt(req, "cursor", 0, 0, INT32_MAX, &err);
      if (!cursor.ok()) return WriteError(res, err);
      Result<engine::ArtifactLookup> lookup = engine->Read([&](const engine::State& s) {
        return engine::FindArtifact(s, model, name, version, tenant, Caller().tenant, Visible(),
                                    engine->archive(), static_cast<int>(*cursor),
                                    static_cast<int>(*limit));
      });
      if (!lookup.ok()) return WriteError(res, FromStatus(lookup.status()));
      const engine::ArtifactLookup& found = *lookup;
      const std::vector<std::string>& owners = found.owners;
      if (owners.size() > 1) {
        std::string list;
        for (const auto& t : owners) list += (list.empty() ? "" : ", ") + t;
        return WriteError(res, {409, "ambiguous",
                                std::string(model ? "model '" : "data set '") + name +
                                    "' exists in tenants " + list + ": add ?tenant=",
                                owners});
      }
      if (found.item.is_null()) {
        return WriteError(
            res, {404,
                  "not_found",
                  std::string(model ? "model '" : "data set '") + name + "'" +
                      (version ? " version " + std::to_string(version) : "") + " not found",
                  {}});
      }
      WriteJson(res, 200, found.item);
    };
    Get(base + R"(/([^/]+))", Wrap(base + "/{name}", one));
    Get(base + R"(/([^/]+)/versions/([^/]+))", Wrap(base + "/{name}/versions/{v}", one));
  }
}

}  // namespace epoch::api
