// ApiServer's event routes: the event log (/v1/events: filtered, paged, or followed
// as SSE), a run's events (/v1/runs/{id}/events) and its readable history
// (/v1/runs/{id}/history), and the SSE event stream they follow with (StreamEvents).
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <sstream>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "api/auth.h"
#include "api/http_server.h"
#include "api/http_util.h"
#include "api/server_impl.h"
#include "common/clock.h"
#include "common/ids.h"
#include "common/json.h"
#include "common/mutex.h"
#include "engine/engine.h"
#include "storage/event_store.h"

namespace epoch::api {

namespace {

// Run id -> tenant, for the events route's tenant checks: at most kMax runs are
// remembered (then it starts again), and a run the state does not know yet (a lagging
// standby) is not remembered, so it is asked again.
class RunTenants {
 public:
  std::string Of(const engine::Engine& engine, const std::string& run) {
    {
      MutexLock lock(&mu_);
      if (auto it = tenant_of_.find(run); it != tenant_of_.end()) return it->second;
    }
    std::string t = engine.ReadRun(run, [](const engine::State&, const engine::Run* r) {
      return r ? r->tenant : std::string();
    });
    if (!t.empty()) {
      MutexLock lock(&mu_);
      if (tenant_of_.size() >= kMax) tenant_of_.clear();
      tenant_of_.emplace(run, t);
    }
    return t;
  }

 private:
  static constexpr size_t kMax = 4096;
  Mutex mu_;
  std::unordered_map<std::string, std::string> tenant_of_ GUARDED_BY(mu_);
};

// Event streams re-check (and send kSseKeepAlive's comment line) at least this often.
constexpr auto kSseTick = std::chrono::milliseconds(5000);

std::vector<std::string> SplitComma(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

Json EnvelopeToJson(const storage::Envelope& e) {
  auto data = ParseJson(e.data, 256);
  return Json{
      {"position", e.position},   {"stream", e.stream}, {"version", e.version},
      {"type", e.type},           {"schema", e.schema}, {"time", e.time},
      {"epoch", e.epoch},         {"actor", e.actor},   {"data", data.ok() ? *data : Json(e.data)},
      {"prev_hash", e.prev_hash}, {"hash", e.hash}};
}

std::string SseEvent(const storage::Envelope& e) {
  return "id: " + std::to_string(e.position) + "\nevent: " + e.type +
         "\ndata: " + CanonicalDump(EnvelopeToJson(e)) + "\n\n";
}

}  // namespace

void ApiServer::Impl::StreamEvents(Response& res, std::shared_ptr<StreamSlots::Slot> slot,
                                   Fetch fetch, std::function<bool()> done, Keep keep) {
  auto last_write =
      std::make_shared<std::chrono::steady_clock::time_point>(std::chrono::steady_clock::now());
  res.Stream(
      "text/event-stream",
      [slot, fetch = std::move(fetch), done = std::move(done), keep = std::move(keep), last_write](
          std::string* out, bool) {
        // Before the read: a run found finished here has all its events in the store.
        bool finished = done && done();
        auto page = fetch();
        if (!page.ok()) {
          *out =
              "event: error\ndata: " + CanonicalDump(Json{{"message", page.status().message()}}) +
              "\n\n";
          return StreamNext::kEnd;
        }
        for (const auto& e : page->events) {
          if (!keep || keep(e)) *out += SseEvent(e);
        }
        auto now = std::chrono::steady_clock::now();
        if (!out->empty()) *last_write = now;
        if (page->more) return StreamNext::kMore;
        if (finished) return StreamNext::kEnd;
        if (out->empty() && now - *last_write >= kSseKeepAlive) {
          *out = ": keep-alive\n\n";
          *last_write = now;
        }
        return StreamNext::kWait;
      },
      kSseTick);
}

Result<uint64_t> ApiServer::Impl::ResumeAfter(const Request& req, HttpError* err) {
  auto after = QueryInt(req, "after", 0, 0, INT64_MAX, err);
  if (!after.ok()) return after.status();
  std::string last_id = req.Header("Last-Event-ID");
  if (last_id.empty()) return static_cast<uint64_t>(*after);
  try {
    return static_cast<uint64_t>(std::stoull(last_id));
  } catch (const std::exception&) {
    *err = {400, "bad_parameter", "Last-Event-ID must be a position", {}};
    return InvalidArgument("Last-Event-ID");
  }
}

ApiServer::Impl::Fetch ApiServer::Impl::FollowStream(std::string stream, uint64_t after) {
  auto version = std::make_shared<uint64_t>(1);
  return [this, stream = std::move(stream), version, after]() -> Result<EventPage> {
    ASSIGN_OR_RETURN(auto page, store->ReadStream(stream, *version, 1000));
    EventPage out;
    out.more = page.size() == 1000;
    if (!page.empty()) *version = page.back().version + 1;
    for (auto& e : page) {
      if (e.position > after) out.events.push_back(std::move(e));
    }
    return out;
  };
}

Result<std::vector<storage::Envelope>> ApiServer::Impl::ReadStreamAfter(const std::string& stream,
                                                                        uint64_t after,
                                                                        const Keep& keep) {
  std::vector<storage::Envelope> out;
  uint64_t version = 1;
  while (true) {
    ASSIGN_OR_RETURN(auto page, store->ReadStream(stream, version, 1000));
    for (auto& e : page) {
      if (e.position > after && (!keep || keep(e))) out.push_back(std::move(e));
    }
    if (page.size() < 1000) return out;
    version = page.back().version + 1;
  }
}

void ApiServer::Impl::EventRoutes() {
  Get("/v1/events", Wrap("/v1/events", [this](const Request& req, Response& res) {
        HttpError err;
        auto after = QueryInt(req, "after", 0, 0, INT64_MAX, &err);
        if (!after.ok()) return WriteError(res, err);
        auto limit = QueryInt(req, "limit", 100, 1, kMaxPageSize, &err);
        if (!limit.ok()) return WriteError(res, err);
        storage::ReadFilter filter;
        filter.types = SplitComma(req.Param("type"));
        filter.actor = req.Param("actor");
        for (auto [name, field] : {std::pair{"since", &filter.since}, {"until", &filter.until}}) {
          if (!req.HasParam(name)) continue;
          auto t = ParseTime(req.Param(name));
          if (!t.ok()) {
            return WriteError(
                res, {400, "bad_parameter", std::string(name) + ": " + t.status().message(), {}});
          }
          *field = FormatTime(*t);
        }
        std::string stream = req.Param("stream");
        if (req.HasParam("run")) {
          if (!stream.empty()) {
            return WriteError(res, {400, "bad_parameter", "run and stream: give one", {}});
          }
          stream = engine::RunStream(req.Param("run"));
        }
        bool exact = !stream.empty() && stream.back() != '*';
        filter.stream_prefix =
            exact ? stream : stream.substr(0, stream.empty() ? 0 : stream.size() - 1);
        uint64_t from = static_cast<uint64_t>(*after);
        std::string last_id = req.Header("Last-Event-ID");
        if (!last_id.empty()) {
          try {
            from = std::stoull(last_id);
          } catch (const std::exception&) {
            return WriteError(res, {400, "bad_parameter", "Last-Event-ID must be a position", {}});
          }
        }
        size_t lim = static_cast<size_t>(*limit);
        auto fetch = [this, filter, lim](uint64_t a) { return store->ReadAll(a, lim, filter); };
        // tenant=T: the events of T's runs and workflows.
        std::string tenant = req.Param("tenant");
        if (req.HasParam("tenant") && !IsValidName(tenant)) {
          return WriteError(res, {400, "bad_parameter", "tenant: not a tenant name", {}});
        }
        // The exact stream (not only its prefix), and only what the caller may read. A
        // run's tenant never changes, so each is looked up once per request or stream
        // (a finished run's is a read of its record), not once per event.
        auto tenants = std::make_shared<RunTenants>();
        Keep keep = [this, exact, stream, tenant, visible = Visible(),
                     tenants](const storage::Envelope& e) {
          if (exact && e.stream != stream) return false;
          if (!visible && tenant.empty()) return true;  // the caller reads every tenant
          if (e.stream.rfind("run-", 0) == 0) {
            const std::string owner = tenants->Of(*engine, e.stream.substr(4));
            return !owner.empty() && (!visible || visible(owner)) &&
                   (tenant.empty() || owner == tenant);
          }
          return engine->Read([&](const engine::State& s) {
            return engine::EventVisible(s, e.stream, visible, tenant, nullptr);
          });
        };
        if (QueryBool(req, "follow")) {
          auto slot = AcquireStream(res);
          if (!slot) return;
          // A position cursor: each read starts after the last position read, or
          // after the head seen before a read that came back short (so a filter
          // that matches little does not make every read rescan the log).
          auto cursor = std::make_shared<uint64_t>(from);
          Fetch follow = [this, filter, lim, cursor]() -> Result<EventPage> {
            uint64_t head = store->Head().position;
            ASSIGN_OR_RETURN(auto page, store->ReadAll(*cursor, lim, filter));
            EventPage out;
            out.more = page.size() == lim;
            if (!page.empty()) *cursor = page.back().position;
            if (!out.more) *cursor = std::max(*cursor, head);
            out.events = std::move(page);
            return out;
          };
          return StreamEvents(res, std::move(slot), std::move(follow), nullptr, keep);
        }
        auto page = fetch(from);
        if (!page.ok()) return WriteError(res, FromStatus(page.status()));
        Json items = Json::array();
        for (const auto& e : *page) {
          if (keep(e)) items.push_back(EnvelopeToJson(e));
        }
        // The cursor is the last event read, kept or not: the next page starts after it.
        Json next =
            page->size() == lim ? Json(std::to_string(page->back().position)) : Json(nullptr);
        WriteJson(res, 200, Json{{"items", items}, {"next_cursor", next}});
      }));
  // A run's readable history: every event of its stream as a line of text (who did
  // what, where, with which GPUs and exit codes), and each step's attempts in brief.
  Get(R"(/v1/runs/([^/]+)/history)",
      Wrap("/v1/runs/{id}/history", [this](const Request& req, Response& res) {
        std::string id = req.matches[1];
        Json run = engine->ReadRun(id, [&](const engine::State& s, const engine::Run* found) {
          return engine::RunJson(s, engine->options().config, found, Visible());
        });
        if (run.is_null()) {
          return WriteError(res, {404, "not_found", "run '" + id + "' not found", {}});
        }
        Json timeline = Json::array();
        std::string stream = engine::RunStream(id);
        for (uint64_t version = 1;;) {
          auto page = store->ReadStream(stream, version, 1000);
          if (!page.ok()) return WriteError(res, FromStatus(page.status()));
          for (const auto& e : *page) {
            auto data = ParseJson(e.data, 256);
            Json d = data.ok() ? *data : Json::object();
            Json item{{"position", e.position},
                      {"time", e.time},
                      {"type", e.type},
                      {"actor", e.actor},
                      {"text", engine::DescribeRunEvent(e.type, d, e.actor)}};
            if (d.contains("step")) item["step"] = d["step"];
            if (d.contains("attempt")) item["attempt"] = d["attempt"];
            timeline.push_back(std::move(item));
          }
          if (page->size() < 1000) break;
          version = page->back().version + 1;
        }
        Json steps = Json::array();
        for (const auto& st : run["steps"]) {
          Json attempts = Json::array();
          for (const auto& a : st["attempts"]) {
            Json brief{{"attempt", a["attempt"]},
                       {"state", a["state"]},
                       {"container", a["container"]},
                       {"gpus", a["gpu_uuids"].empty() ? a["gpus"] : a["gpu_uuids"]},
                       {"exit_code", a["exit_code"]},
                       {"reason", a["reason"]},
                       {"started_at", a["started_at"]},
                       {"finished_at", a["finished_at"]}};
            if (a.contains("usage") && a["usage"].contains("wall_s")) {
              brief["duration_s"] = a["usage"]["wall_s"];
            }
            for (const char* k : {"trial", "params", "cached_from"}) {
              if (a.contains(k)) brief[k] = a[k];
            }
            attempts.push_back(std::move(brief));
          }
          steps.push_back(Json{{"name", st["name"]},
                               {"kind", st["kind"]},
                               {"state", st["state"]},
                               {"attempts", attempts}});
        }
        WriteJson(res, 200,
                  Json{{"run", id},
                       {"workflow", run["workflow"]},
                       {"version", run["version"]},
                       {"state", run["state"]},
                       {"tenant", run["tenant"]},
                       {"submitter", run["submitter"]},
                       {"submitted_at", run["submitted_at"]},
                       {"finished_at", run["finished_at"]},
                       {"steps", steps},
                       {"timeline", timeline}});
      }));
  Get(R"(/v1/runs/([^/]+)/events)",
      Wrap("/v1/runs/{id}/events", [this](const Request& req, Response& res) {
        std::string id = req.matches[1];
        bool exists = engine->ReadRun(id, [&](const engine::State&, const engine::Run* run) {
          return engine::RunVisible(run, Visible());
        });
        if (!exists) return WriteError(res, {404, "not_found", "run '" + id + "' not found", {}});
        HttpError err;
        auto from = ResumeAfter(req, &err);
        if (!from.ok()) return WriteError(res, err);
        std::string stream = engine::RunStream(id);
        if (QueryBool(req, "follow")) {
          auto slot = AcquireStream(res);
          if (!slot) return;
          // The stream ends once the run is finished and everything was sent.
          return StreamEvents(res, std::move(slot), FollowStream(stream, *from), [this, id] {
            return engine->ReadRun(id, [](const engine::State&, const engine::Run* run) {
              return engine::RunEnded(run);
            });
          });
        }
        auto page = ReadStreamAfter(stream, *from);
        if (!page.ok()) return WriteError(res, FromStatus(page.status()));
        Json items = Json::array();
        for (const auto& e : *page) items.push_back(EnvelopeToJson(e));
        WriteJson(res, 200, Json{{"items", items}, {"next_cursor", nullptr}});
      }));
}

}  // namespace epoch::api
