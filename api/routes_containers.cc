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
        Json items = Json::array();
        auto watched = engine->BackendStates();
        engine->Read([&](const engine::State& s) {
          for (const auto& [id, c] : s.containers) {
            if (!all && (c.phase == engine::ContainerPhase::kLost ||
                         c.phase == engine::ContainerPhase::kReleased)) {
              continue;
            }
            Json j = engine::ContainerToJson(c);
            // The backend's own view (a Slurm job's state), when it is watched.
            if (auto w = watched.find(id); w != watched.end()) {
              j["backend_state"] = w->second.backend_state;
              j["backend_detail"] = w->second.detail;
            }
            if (!Caller().SeesAllTenants()) {
              // What runs where, only for the caller's tenant's attempts.
              Json mine = Json::array();
              for (const auto& a : j["attempts"]) {
                std::string run, step;
                int n;
                if (engine::ParseAttemptId(a.get<std::string>(), &run, &step, &n) &&
                    SeesRun(s, run)) {
                  mine.push_back(a);
                }
              }
              j["attempts"] = std::move(mine);
            }
            items.push_back(std::move(j));
          }
          return 0;
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
         bool needs_command = !cmd.reports.empty();
         std::string problem;
         engine->Read([&](const engine::State& s) {
           auto it = s.containers.find(cmd.container);
           if (it == s.containers.end() || it->second.phase == engine::ContainerPhase::kRequested) {
             problem = "unknown_container";
             return 0;
           }
           if (it->second.phase != engine::ContainerPhase::kRegistered) {
             problem = "released";
             return 0;
           }
           for (const auto& id : cmd.running) {
             const engine::Attempt* a = s.FindAttempt(id);
             if (a && a->phase == engine::AttemptPhase::kAssigned) needs_command = true;
             const engine::Worker* w = s.FindWorker(id);
             if (w && w->phase == engine::AttemptPhase::kAssigned) needs_command = true;
           }
           return 0;
         });
         if (problem == "unknown_container") {
           return WriteError(res,
                             {404, problem, "container '" + cmd.container + "' must register", {}});
         }
         if (problem == "released") {
           return WriteError(
               res, {409, problem, "container '" + cmd.container + "' was released or lost", {}});
         }
         std::vector<std::string> ack;
         if (needs_command) {
           auto r = engine->Execute(cmd);
           if (!r.ok()) return WriteError(res, ContainerError(r.status()));
           ack = r->ack;
         }
         // The long poll parks (no thread waits): re-checked whenever the engine
         // commits, answered at the latest at executor.pollTimeout.
         auto deadline = std::chrono::steady_clock::now() +
                         std::chrono::microseconds(engine->options().config.poll_timeout);
         res.Defer(deadline, [this, container = cmd.container, running = cmd.running,
                              ack = std::move(ack)](Response& res, bool expired) {
           engine::DispatchView view = engine->DispatchFor(container, running, ack);
           if (ack.empty() && view.assignments.empty() && view.cancels.empty() && !expired) {
             return false;
           }
           Json ack_json = Json::array();
           for (const auto& a : ack) ack_json.push_back(a);
           WriteJson(res, 200,
                     Json{{"epoch", engine->epoch()},
                          {"ack", ack_json},
                          {"assignments", view.assignments},
                          {"cancels", view.cancels},
                          {"grace_ms", engine->options().config.grace_ms}});
           return true;
         });
       }));
}

}  // namespace epoch::api
