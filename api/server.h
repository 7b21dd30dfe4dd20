// ApiServer: Epoch's HTTP API (DESIGN.md, "HTTP API (v1)") over cpp-httplib.
//
// Writes go to the engine as commands and are answered only after their events
// are durable; reads come from the engine's published state or from the store.
// Every error is {"error": {"code", "message", "details"}} with the right status;
// a rejected request writes nothing. httplib stays inside server.cc.
//
// Thread-safety: handlers run on the server's bounded thread pool; the engine
// and store are thread-safe.
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
  // Stops accepting, ends streams and long polls, joins the serving thread.
  void Stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace epoch::api
