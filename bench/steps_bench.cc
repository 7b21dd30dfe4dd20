// epoch-bench steps N [--containers C]: a fan-out of N no-op steps (`true`) through
// local compute containers; prints steps/s from submission to RunSucceeded.
#include <httplib.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>

#include "bench/bench.h"
#include "bench/epochd_process.h"
#include "common/json.h"

namespace epoch::bench {

int RunStepsBench(int argc, char** argv) {
  int n = 200, containers = 2;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--containers") == 0 && i + 1 < argc) {
      containers = std::atoi(argv[++i]);
    } else {
      n = std::atoi(argv[i]);
    }
  }
  if (n < 1 || containers < 1) {
    std::fprintf(stderr, "usage: epoch-bench steps N [--containers C]\n");
    return 2;
  }
  EpochdProcess epochd({"sig.maxReplicas=" + std::to_string(containers), "sig.cpu=64",
                        "sig.memory=64Gi"});
  httplib::Client cli(epochd.url());
  cli.set_bearer_token_auth(epochd.token());
  cli.set_tcp_nodelay(true);
  cli.set_read_timeout(std::chrono::minutes(10));  // the event stream lasts the whole run
  Json def{{"name", "fanout"}, {"steps", Json::array()}};
  for (int i = 0; i < n; ++i) {
    def["steps"].push_back(Json{{"name", "s" + std::to_string(i)},
                                {"command", Json::array({"true"})},
                                {"resources", Json{{"cpu", "10m"}, {"memory", "1Mi"}}}});
  }
  // Wait for the containers to register, so the figure is the engine's, not start-up's.
  for (int i = 0; i < 500; ++i) {
    auto r = cli.Get("/v1/containers");
    int registered = 0;
    if (r && r->status == 200) {
      auto j = ParseJson(r->body);
      if (j.ok()) {
        for (const auto& c : (*j)["items"]) registered += c["state"] == "registered";
      }
    }
    if (registered == containers) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  auto reg = cli.Post("/v1/workflows", def.dump(), "application/json");
  if (!reg || reg->status >= 300) {
    std::fprintf(stderr, "register failed: %s\n", reg ? reg->body.c_str() : "no connection");
    return 1;
  }
  auto t0 = std::chrono::steady_clock::now();
  auto sub = cli.Post("/v1/runs", R"({"workflow":"fanout"})", "application/json");
  if (!sub || sub->status != 201) {
    std::fprintf(stderr, "submit failed: %s\n", sub ? sub->body.c_str() : "no connection");
    return 1;
  }
  std::string id = (*ParseJson(sub->body))["id"];
  std::string state;
  // Follow the run's events; the stream ends when the run finishes.
  auto r = cli.Get("/v1/runs/" + id + "/events?follow=true");
  auto t1 = std::chrono::steady_clock::now();
  auto run = cli.Get("/v1/runs/" + id);
  if (run && run->status == 200) state = (*ParseJson(run->body))["state"];
  double secs = std::chrono::duration<double>(t1 - t0).count();
  std::printf("steps  containers  state      seconds  steps/s\n");
  std::printf("%-6d %-11d %-10s %-8.3f %.0f\n", n, containers, state.c_str(), secs, n / secs);
  return state == "succeeded" ? 0 : 1;
}

}  // namespace epoch::bench
