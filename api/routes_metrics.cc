// ApiServer's live-metrics route: GET /v1/runs/{id}/steps/{step}/metrics, a step's
// series as recorded by MetricsRecorded events (read from the run's stream, so the
// state holds only each series' totals), or ?follow=true: each batch as an SSE event
// (id: its position) until the run ends, resumable from Last-Event-ID or ?after=.
#include <cstdint>
#include <exception>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "api/auth.h"
#include "api/http_server.h"
#include "api/http_util.h"
#include "api/server_impl.h"
#include "common/json.h"
#include "engine/engine.h"
#include "engine/events.h"
#include "storage/event_store.h"

namespace epoch::api {

namespace {

// A MetricsRecorded envelope of `step` that the query keeps.
bool Keeps(const storage::Envelope& e, const std::string& step, const engine::MetricsQuery& q,
           Json* payload) {
  if (e.type != engine::ev::kMetricsRecorded) return false;
  auto data = ParseJson(e.data, 64);
  if (!data.ok() || !data->is_object() || data->value("step", "") != step) return false;
  if (q.attempt && data->value("attempt", 0) != *q.attempt) return false;
  int rank = data->contains("rank") && (*data)["rank"].is_number_integer()
                 ? (*data)["rank"].get<int>()
                 : 0;
  if (q.rank && rank != *q.rank) return false;
  if (payload) *payload = std::move(*data);
  return true;
}

}  // namespace

void ApiServer::Impl::MetricsRoutes() {
  Get(R"(/v1/runs/([^/]+)/steps/([^/]+)/metrics)",
      Wrap("/v1/runs/{id}/steps/{step}/metrics", [this](const Request& req, Response& res) {
        std::string id = req.matches[1], step = req.matches[2];
        HttpError err;
        engine::MetricsQuery q;
        q.name = req.Param("name");
        if (req.HasParam("attempt")) {
          auto a = QueryInt(req, "attempt", 0, 1, 1000000, &err);
          if (!a.ok()) return WriteError(res, err);
          q.attempt = static_cast<int>(*a);
        }
        if (req.HasParam("rank")) {
          auto r = QueryInt(req, "rank", 0, 0, 1000000, &err);
          if (!r.ok()) return WriteError(res, err);
          q.rank = static_cast<int>(*r);
        }
        Json totals = engine->ReadRun(id, [&](const engine::State&, const engine::Run* run) {
          if (!engine::RunVisible(run, Visible())) return Json();
          return engine::StepMetricTotals(run, step);
        });
        if (totals.is_null()) {
          return WriteError(res, {404,
                                  "not_found",
                                  "run '" + id + "' has no step '" + step + "' (or is not found)",
                                  {}});
        }
        std::string stream = engine::RunStream(id);
        if (QueryBool(req, "follow")) {
          auto from = ResumeAfter(req, &err);
          if (!from.ok()) return WriteError(res, err);
          auto slot = AcquireStream(res);
          if (!slot) return;
          Keep keep = [step, q](const storage::Envelope& e) { return Keeps(e, step, q, nullptr); };
          // Ends once the run is finished and every batch was sent.
          return StreamEvents(
              res, std::move(slot), FollowStream(stream, *from),
              [this, id] {
                return engine->ReadRun(id, [&](const engine::State&, const engine::Run* run) {
                  return engine::RunEnded(run);
                });
              },
              std::move(keep));
        }
        std::vector<Json> recorded;
        auto events = ReadStreamAfter(stream, 0, [&](const storage::Envelope& e) {
          Json payload;
          if (!Keeps(e, step, q, &payload)) return false;
          recorded.push_back(std::move(payload));
          return false;  // the payload is all that is needed
        });
        if (!events.ok()) return WriteError(res, FromStatus(events.status()));
        Json out = engine::MetricSeriesView(recorded, q);
        out["run"] = id;
        out["step"] = step;
        out["attempts"] = std::move(totals);
        WriteJson(res, 200, out);
      }));
}

}  // namespace epoch::api
