// ApiServer's container routes: the container list (/v1/containers) and the container
// protocol agents speak: register, and the long poll that reports attempts and
// receives assignments and cancels.
#include <chrono>
#include <string>
#include <utility>
#include <vector>

#include "api/auth.h"
#include "api/dto.h"
#include "api/http_server.h"
#include "api/http_util.h"
#include "api/server_impl.h"
#include "common/status.h"
#include "engine/engine.h"

namespace epoch::api {

namespace {

// The container protocol's errors carry codes the agent acts on: re-register on
// "unknown_container", exit on "released".
HttpError ContainerError(const Status& st) {
  HttpError e = FromStatus(st);
  if (st.code() == StatusCode::kNotFound) e.code = "unknown_container";
  if (st.code() == StatusCode::kFailedPrecondition) e.code = "released";
  return e;
}

}  // namespace

void ApiServer::Impl::ContainerRoutes() {
  Get("/v1/containers", Wrap("/v1/containers", [this](const Request& req, Response& res) {
        bool all = QueryBool(req, "all");
        auto watched = engine->BackendStates();
        Json items = engine->Read([&](const engine::State& s) {
          return engine::ContainersJson(s, all, Visible(), watched);
        });
        WriteJson(res, 200, Json{{"items", items}, {"next_cursor", nullptr}});
      }));
  Post(R"(/v1/containers/([^/]+)/register)",
       Wrap("/v1/containers/{id}/register", [this](const Request& req, Response& res) {
         HttpError err;
         auto body = ParseBody(req, &err);
         if (!body.ok()) return WriteError(res, err);
         auto parsed = ParseRegisterBody(req.matches[1], *body);
         if (!parsed.ok()) {
           return WriteError(res, {400, "malformed", parsed.status().message(), {}});
         }
         const engine::RegisterContainer& cmd = *parsed;
         auto r = engine->Execute(cmd);
         if (!r.ok()) return WriteError(res, ContainerError(r.status()));
         engine->Heartbeat(cmd.container);
         WriteJson(res, 200,
                   Json{{"epoch", engine->epoch()},
                        {"lease_ms", engine->options().config.lease.count() / 1000},
                        {"poll_timeout_ms", engine->options().config.poll_timeout.count() / 1000}});
       }));
  Post(R"(/v1/containers/([^/]+)/poll)",
       Wrap("/v1/containers/{id}/poll", [this](const Request& req, Response& res) {
         HttpError err;
         auto body = ParseBody(req, &err);
         if (!body.ok()) return WriteError(res, err);
         auto parsed = ParsePollBody(req.matches[1], *body);
         if (!parsed.ok()) {
           return WriteError(res, {400, "malformed", parsed.status().message(), {}});
         }
         const engine::PollContainer& cmd = *parsed;
         if (Status st = engine->ObserveEpoch(cmd.epoch_seen); !st.ok()) {
           return WriteError(res, FromStatus(st));
         }
         engine->Heartbeat(cmd.container);
         // A poll that reports nothing new needs no command: check the
         // container's standing from the published state instead.
         engine::PollStanding standing = engine->Read([&](const engine::State& s) {
           return engine::ContainerPollStanding(s, cmd.container, cmd.running);
         });
         const std::string& problem = standing.problem;
         if (problem == "unknown_container") {
           return WriteError(res,
                             {404, problem, "container '" + cmd.container + "' must register", {}});
         }
         if (problem == "released") {
           return WriteError(
               res, {409, problem, "container '" + cmd.container + "' was released or lost", {}});
         }
         std::vector<std::string> ack;
         Json metrics_ack = Json::object();
         if (!cmd.reports.empty() || !cmd.metrics.empty() || standing.assigned) {
           auto r = engine->Execute(cmd);
           if (!r.ok()) return WriteError(res, ContainerError(r.status()));
           ack = r->ack;
           for (const auto& [id, next] : r->metrics_next) metrics_ack[id] = next;
         }
         // The long poll parks (no thread waits): re-checked whenever the engine
         // commits, answered at the latest at executor.pollTimeout.
         auto deadline = std::chrono::steady_clock::now() +
                         std::chrono::microseconds(engine->options().config.poll_timeout);
         res.Defer(deadline,
                   [this, container = cmd.container, running = cmd.running, ack = std::move(ack),
                    metrics_ack = std::move(metrics_ack)](Response& res, bool expired) {
                     engine::DispatchView view = engine->DispatchFor(container, running, ack);
                     if (ack.empty() && metrics_ack.empty() && view.assignments.empty() &&
                         view.cancels.empty() && !expired) {
                       return false;
                     }
                     Json ack_json = Json::array();
                     for (const auto& a : ack) ack_json.push_back(a);
                     WriteJson(res, 200,
                               Json{{"epoch", engine->epoch()},
                                    {"ack", ack_json},
                                    {"assignments", view.assignments},
                                    {"cancels", view.cancels},
                                    {"metrics_ack", metrics_ack},
                                    {"grace_ms", engine->options().config.grace_ms}});
                     return true;
                   });
       }));
}

}  // namespace epoch::api
