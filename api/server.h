// ApiServer: Epoch's HTTP API (DESIGN.md, "HTTP API (v1)") over HttpServer
// (api/http_server.h: Boost.Beast/Asio, asynchronous).
//
// Writes go to the engine as commands and are answered only after their events
// are durable; reads come from the engine's published state or from the store.
// Every error is {"error": {"code", "message", "details"}} with the right status;
// a rejected request writes nothing. Container long polls and SSE streams hold no
// thread while they wait: they park in the transport and wake when the engine
// commits (or, for log followers, on a timer). Streams are capped in all
// (api.maxStreams) and per principal (api.maxStreamsPerPrincipal); step logs are
// served by range and tail, at most api.maxLogResponseBytes an answer.
//
// HA: a master that is not the leader (standby, promoting, deposed) serves every
// GET from its own state and answers every other method with 307 to the leader
// (Location: the leader's address + the same path) or 503 when no leader is
// known. Each response carries Epoch-Role and Epoch-Position (the log position
// this master's state has applied).
//
// Thread-safety: handlers run on the transport's bounded worker pool (api.threads);
// the engine and store are thread-safe.
#pragma once

#include <atomic>
#include <memory>
#include <string>

#include "api/config.h"
#include "common/clock.h"
#include "common/ids.h"
#include "common/status.h"
#include "engine/engine.h"
#include "storage/event_store.h"

namespace epoch::api {

class ApiServer {
 public:
  ApiServer(Config config, engine::Engine* engine, storage::EventStore* store,
            IdGenerator* ids, const Clock* clock);
  ~ApiServer();
  ApiServer(const ApiServer&) = delete;
  ApiServer& operator=(const ApiServer&) = delete;

  // Binds host:port (port 0 = any free port) and serves on a background thread.
  // Returns the bound port.
  Result<int> Start(const std::string& host, int port);
  // Start in two steps: bind (learn the port, e.g. to advertise it), then serve.
  Result<int> Bind(const std::string& host, int port);
  void Serve();
  // Stops accepting, closes every connection (streams and long polls too), joins the
  // transport's threads.
  void Stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace epoch::api
