// ApiServer's run routes: submitting a run (POST /v1/runs), listing runs (filtered and
// paged), reading one, and cancelling or retrying it.
#include <cstdint>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "api/auth.h"
#include "api/dto.h"
#include "api/http_util.h"
#include "api/server_impl.h"
#include "common/ids.h"
#include "common/sha256.h"
#include "engine/engine.h"

namespace epoch::api {

void ApiServer::Impl::RunsRoutes() {
  Post("/v1/runs", Wrap("/v1/runs", [this](const Request& req, Response& res) {
         HttpError err;
         auto body = ParseBody(req, &err);
         if (!body.ok()) return WriteError(res, err);
         const Json& b = *body;
         auto parsed = ParseSubmitBody(b);
         if (!parsed.ok())
           return WriteError(res, {400, "malformed", parsed.status().message(), {}});
         engine::SubmitRun cmd = std::move(*parsed);
         cmd.idempotency_key = req.Header("Idempotency-Key");
         if (cmd.idempotency_key.size() > 256) {
           return WriteError(res, {400, "malformed", "Idempotency-Key: at most 256 bytes", {}});
         }
         // The request the key stands for (key order and spacing do not matter).
         if (!cmd.idempotency_key.empty()) cmd.request_digest = Sha256Hex(CanonicalDump(b));
         cmd.submitter = Actor(req);
         cmd.tenant = Caller().tenant;
         cmd.any_tenant = Caller().role == Role::kAdmin;
         cmd.run_id = ids->NewId("r", clock->Now());
         auto r = engine->Execute(cmd);
         if (!r.ok()) return WriteError(res, FromStatus(r.status()));
         Json run = engine->ReadRun(r->id, [&](const engine::State& s, const engine::Run* found) {
           return engine::RunJson(s, engine->options().config, found, nullptr);
         });
         res.SetHeader("Location", "/v1/runs/" + r->id);
         WriteJson(res, r->created ? 201 : 200, run);
       }));

  Get("/v1/runs", Wrap("/v1/runs", [this](const Request& req, Response& res) {
        HttpError err;
        auto limit = QueryInt(req, "limit", 100, 1, kMaxPageSize, &err);
        if (!limit.ok()) return WriteError(res, err);
        auto cursor = QueryInt(req, "cursor", 0, 0, INT64_MAX, &err);
        if (!cursor.ok()) return WriteError(res, err);
        std::string state = req.Param("state");
        std::string workflow = req.Param("workflow");
        // label=k=v, repeatable: a run must carry every one.
        std::vector<std::pair<std::string, std::string>> labels;
        for (const std::string& label : req.Params("label")) {
          auto eq = label.find('=');
          if (eq == std::string::npos || eq == 0) {
            return WriteError(
                res, {400, "bad_parameter", "label must be key=value, got '" + label + "'", {}});
          }
          labels.push_back({label.substr(0, eq), label.substr(eq + 1)});
        }
        static const std::set<std::string> kStates{"queued", "running", "succeeded", "failed",
                                                   "cancelled"};
        if (!state.empty() && !kStates.count(state)) {
          return WriteError(res, {400,
                                  "bad_parameter",
                                  "state must be one of queued, "
                                  "running, succeeded, failed, cancelled",
                                  {}});
        }
        engine::RunQuery q;
        q.visible = Visible();
        q.state = state;
        q.workflow = workflow;
        q.labels = std::move(labels);
        q.cursor = static_cast<uint64_t>(*cursor);
        q.limit = static_cast<size_t>(*limit);
        Result<engine::RunPage> page = engine->ListRuns(q);
        if (!page.ok()) return WriteError(res, FromStatus(page.status()));
        WriteJson(res, 200, Json{{"items", page->items}, {"next_cursor", page->next_cursor}});
      }));
  Get(R"(/v1/runs/([^/]+))", Wrap("/v1/runs/{id}", [this](const Request& req, Response& res) {
        std::string id = req.matches[1];
        Json run = engine->ReadRun(id, [&](const engine::State& s, const engine::Run* found) {
          return engine::RunJson(s, engine->options().config, found, Visible());
        });
        if (run.is_null()) {
          return WriteError(res, {404, "not_found", "run '" + id + "' not found", {}});
        }
        WriteJson(res, 200, run);
      }));
  auto run_command = [this](bool cancel) {
    return [this, cancel](const Request& req, Response& res) {
      HttpError err;
      auto body = ParseBody(req, &err, /*allow_empty=*/true);
      if (!body.ok()) return WriteError(res, err);
      std::string id = req.matches[1];
      if (!engine->ReadRun(id, [&](const engine::State&, const engine::Run* found) {
            return engine::RunVisible(found, Visible());
          })) {
        return WriteError(res, {404, "not_found", "run '" + id + "' not found", {}});
      }
      Result<engine::CommandResult> r = cancel ? engine->Execute(engine::CancelRun{id, Actor(req)})
                                               : engine->Execute(engine::RetryRun{id, Actor(req)});
      if (!r.ok()) return WriteError(res, FromStatus(r.status()));
      Json run = engine->ReadRun(id, [&](const engine::State& s, const engine::Run* found) {
        return engine::RunJson(s, engine->options().config, found, nullptr);
      });
      WriteJson(res, 202, run);
    };
  };
  Post(R"(/v1/runs/([^/]+)/cancel)", Wrap("/v1/runs/{id}/cancel", run_command(true)));
  Post(R"(/v1/runs/([^/]+)/retry)", Wrap("/v1/runs/{id}/retry", run_command(false)));
}

}  // namespace epoch::api
