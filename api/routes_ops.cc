// ApiServer's operational routes: liveness and readiness (/healthz, /readyz), this
// master's view of the cluster (/v1/cluster), Prometheus metrics (/metrics), and the
// audit of the event log's hash chain (/v1/audit/verify).
#include <chrono>
#include <cmath>
#include <cstdint>
#include <limits>
#include <sstream>
#include <string>
#include <utility>

#include "api/auth.h"
#include "api/http_server.h"
#include "api/http_util.h"
#include "api/server_impl.h"
#include "common/mutex.h"
#include "engine/engine.h"
#include "engine/retention.h"
#include "storage/event_store.h"

namespace epoch::api {

namespace {

std::string EscapeLabel(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out;
}

}  // namespace

void ApiServer::Impl::OpsRoutes() {
  Get("/healthz", Wrap("/healthz", [](const Request&, Response& res) {
        WriteJson(res, 200, Json{{"status", "ok"}});
      }));
  Get("/readyz", Wrap("/readyz", [this](const Request&, Response& res) {
        bool ready = engine->ready() && engine->healthy();
        std::string role(engine::Name(engine->role()));
        if (!engine->healthy()) role = "failed";
        if (engine->corrupt_history()) role = engine::kCorruptHistoryCode;
        WriteJson(res, ready ? 200 : 503,
                  Json{{"ready", ready}, {"role", role}, {"epoch", engine->epoch()}});
      }));
  Get("/v1/cluster", Wrap("/v1/cluster", [this](const Request&, Response& res) {
        storage::HeadInfo head = store->Head();
        engine::Role role = engine->role();
        Json leader;
        if (role == engine::Role::kLeader) {
          leader = Json{{"address", engine->options().advertise_url}, {"node", config.master_name}};
        } else {
          auto [node, address] = engine->Read([](const engine::State& s) {
            return std::make_pair(s.leader_node, s.leader_address);
          });
          std::string known = LeaderAddress();
          leader = Json{{"address", known.empty() ? Json(nullptr) : Json(known)},
                        {"node", known == address ? Json(node) : Json(nullptr)}};
        }
        uint64_t applied = engine->Read([](const engine::State& s) { return s.head; });
        Json j{{"role", std::string(engine::Name(role))},
               {"node", config.master_name},
               {"address", engine->options().advertise_url},
               {"epoch", engine->epoch()},
               {"leader", leader},
               {"applied_position", applied},
               {"deposed_reason", engine->deposed_reason()},
               {"mode", engine->corrupt_history() ? "corrupt_history" : "normal"},
               {"history", engine::HistoryCheckToJson(engine->history())},
               {"head", Json{{"position", head.position}, {"hash", head.hash}}},
               {"store_bytes", store->ApproximateSizeBytes()},
               {"ready", engine->ready()}};
        // Where the data lives and the whole configuration (tenant names, key and
        // token paths) are for admins only.
        if (Caller().role == Role::kAdmin) {
          j["data_dir"] = config.data_dir;
          j["config"] = config.ToJson();
        }
        WriteJson(res, 200, j);
      }));
  // What each tenant's runs hold on the data dir, and what retention deleted
  // (engine/retention.h); a caller sees the tenants it may read.
  Get("/v1/usage", Wrap("/v1/usage", [this](const Request&, Response& res) {
        WriteJson(res, 200, engine::UsageJson(*engine, Visible()));
      }));
  Get("/metrics", Wrap("/metrics", [this](const Request&, Response& res) {
        std::ostringstream o;
        engine::PhaseCounts counts =
            engine->Read([](const engine::State& s) { return engine::CountPhases(s); });
        o << "# HELP epoch_runs Runs by state.\n# TYPE epoch_runs gauge\n";
        for (auto st : {"queued", "running", "succeeded", "failed", "cancelled"}) {
          o << "epoch_runs{state=\"" << st << "\"} " << counts.runs[st] << "\n";
        }
        o << "# HELP epoch_jobs Job attempts by state.\n# TYPE epoch_jobs gauge\n";
        for (auto st : {"queued", "assigned", "running", "succeeded", "failed", "timed_out",
                        "cancelled", "lost"}) {
          o << "epoch_jobs{state=\"" << st << "\"} " << counts.attempts[st] << "\n";
        }
        o << "# HELP epoch_api_streams Open SSE streams (api.maxStreams allowed).\n"
             "# TYPE epoch_api_streams gauge\nepoch_api_streams "
          << streams.open() << "\n";
        HttpServerStats hs = http.stats();
        o << "# HELP epoch_http_connections Open HTTP connections.\n"
             "# TYPE epoch_http_connections gauge\nepoch_http_connections "
          << hs.open_connections << "\n";
        o << "# HELP epoch_http_parked Long polls and streams waiting for a change.\n"
             "# TYPE epoch_http_parked gauge\nepoch_http_parked "
          << hs.parked << "\n";
        o << "# HELP epoch_http_connections_refused_total Connections closed at accept "
             "(api.maxConnections, api.maxConnectionsPerClient).\n"
             "# TYPE epoch_http_connections_refused_total counter\n"
             "epoch_http_connections_refused_total "
          << hs.refused << "\n";
        o << "# HELP epoch_http_timeouts_total Connections closed at a deadline (TLS "
             "handshake, request head, body, keep-alive idle, write).\n"
             "# TYPE epoch_http_timeouts_total counter\nepoch_http_timeouts_total "
          << hs.timed_out << "\n";
        o << "# HELP epoch_queue_length Attempts waiting for a container.\n"
             "# TYPE epoch_queue_length gauge\nepoch_queue_length "
          << counts.queue << "\n";
        o << "# HELP epoch_containers Containers by state.\n# TYPE epoch_containers gauge\n";
        for (auto st : {"requested", "registered", "lost", "released"}) {
          o << "epoch_containers{state=\"" << st << "\"} " << counts.containers[st] << "\n";
        }
        const auto& stats = engine->stats();
        o << "# HELP epoch_events_appended_total Events appended by this master.\n"
             "# TYPE epoch_events_appended_total counter\nepoch_events_appended_total "
          << stats.events_appended.load() << "\n";
        o << "# HELP epoch_commits_total Synced group commits.\n"
             "# TYPE epoch_commits_total counter\nepoch_commits_total "
          << stats.commits.load() << "\n";
        o << "# HELP epoch_append_latency_seconds Latency of synced appends.\n"
             "# TYPE epoch_append_latency_seconds histogram\n";
        uint64_t cum = 0;
        for (int b = 0; b < engine::EngineStats::kBuckets; ++b) {
          cum += stats.latency_buckets[b].load();
          o << "epoch_append_latency_seconds_bucket{le=\""
            << engine::EngineStats::kBoundsUs[b] / 1e6 << "\"} " << cum << "\n";
        }
        cum += stats.latency_buckets[engine::EngineStats::kBuckets].load();
        o << "epoch_append_latency_seconds_bucket{le=\"+Inf\"} " << cum << "\n";
        o << "epoch_append_latency_seconds_sum " << stats.latency_sum_us.load() / 1e6 << "\n";
        o << "epoch_append_latency_seconds_count " << stats.latency_count.load() << "\n";
        o << "# HELP epoch_http_requests_total HTTP requests by route and status.\n"
             "# TYPE epoch_http_requests_total counter\n";
        {
          MutexLock lock(&metrics_mu);
          for (const auto& [k, n] : requests) {
            o << "epoch_http_requests_total{route=\"" << EscapeLabel(k.first) << "\",code=\""
              << k.second << "\"} " << n << "\n";
          }
        }
        res.SetContent(o.str(), "text/plain; version=0.0.4");
      }));
}

void ApiServer::Impl::AuditRoutes() {
  // Audit: the hash chain, walked from the first event (or a trusted checkpoint
  // `from=P&hash=H`); `against=P:H` also proves the history up to P is the one whose
  // hash at P was recorded. The answer is 200 either way: "ok" says.
  Get("/v1/audit/verify", Wrap("/v1/audit/verify", [this](const Request& req, Response& res) {
        HttpError err;
        auto from = QueryInt(req, "from", 1, 1, std::numeric_limits<int64_t>::max(), &err);
        if (!from.ok()) return WriteError(res, err);
        std::string from_hash = req.Param("hash");
        uint64_t against_pos = 0;
        std::string against_hash;
        if (req.HasParam("against")) {
          std::string a = req.Param("against");
          size_t colon = a.find(':');
          try {
            size_t used = 0;
            if (colon != std::string::npos) against_pos = std::stoull(a.substr(0, colon), &used);
            if (colon == std::string::npos || used != colon) against_pos = 0;
          } catch (const std::exception&) {
            against_pos = 0;
          }
          against_hash = colon == std::string::npos ? "" : a.substr(colon + 1);
          if (against_pos == 0 || against_hash.size() != 64) {
            return WriteError(res, {400,
                                    "bad_parameter",
                                    "against: must be POSITION:HASH (a position >= 1 and 64 "
                                    "hex digits), as `epochctl audit checkpoint` prints",
                                    {}});
          }
        }
        auto t0 = std::chrono::steady_clock::now();
        auto report = store->VerifyChain(static_cast<uint64_t>(*from), from_hash);
        if (!report.ok()) return WriteError(res, FromStatus(report.status()));
        double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0)
                        .count();
        Json out{{"ok", report->ok},
                 {"from", report->from},
                 {"checked", report->checked},
                 {"head", Json{{"position", report->head_position},
                               {"hash", report->ok ? Json(report->head_hash) : Json()}}},
                 {"elapsed_ms", std::round(ms * 10) / 10}};
        if (!report->ok) {
          out["bad_position"] = report->bad_position;
          out["problem"] = report->problem;
        }
        if (against_pos > 0) {
          Json a{{"position", against_pos}, {"hash", against_hash}};
          if (against_pos > report->head_position) {
            a["ok"] = false;
            a["problem"] = "the log ends at " + std::to_string(report->head_position) +
                           ", before the checkpoint";
          } else if (!report->ok && report->bad_position <= against_pos) {
            a["ok"] = false;
            a["problem"] = "the chain breaks at " + std::to_string(report->bad_position);
          } else {
            auto at = store->ReadAt(against_pos);
            a["ok"] = at.ok() && at->hash == against_hash;
            if (!at.ok()) {
              a["problem"] = at.status().message();
            } else if (at->hash != against_hash) {
              a["problem"] = "event " + std::to_string(against_pos) + " has hash " + at->hash +
                             ": the history up to it was rewritten";
            }
          }
          bool against_ok = a.value("ok", false);
          out["against"] = std::move(a);
          if (!against_ok) out["ok"] = false;
        }
        WriteJson(res, 200, out);
      }));
}

}  // namespace epoch::api
