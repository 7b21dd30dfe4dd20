// epoch-bench schedule [--attempts N] [--containers C] [--gpus G] [--tenants T]
// [--max-gpus Q]: placement decisions/s of the scheduler (engine::Schedule, pure)
// with N queued attempts over C registered containers of G GPUs each, as the issue
// sizes it (1,000 / 100 / 8). The attempts belong to T tenants in turn (default 1),
// each with a GPU quota of Q (tenants.<name>.maxGpus; default none).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "bench/bench.h"
#include "engine/decider.h"
#include "engine/processor.h"

namespace epoch::bench {

int RunScheduleBench(int argc, char** argv) {
  int attempts = 1000, containers = 100, gpus = 8, tenants = 1, max_gpus = -1;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--attempts") == 0) attempts = std::atoi(argv[i + 1]);
    if (std::strcmp(argv[i], "--containers") == 0) containers = std::atoi(argv[i + 1]);
    if (std::strcmp(argv[i], "--gpus") == 0) gpus = std::atoi(argv[i + 1]);
    if (std::strcmp(argv[i], "--tenants") == 0) tenants = std::max(1, std::atoi(argv[i + 1]));
    if (std::strcmp(argv[i], "--max-gpus") == 0) max_gpus = std::atoi(argv[i + 1]);
  }
  using namespace engine;
  EngineConfig cfg;
  cfg.data_dir = "/data";
  cfg.max_replicas = containers;
  cfg.container_cpu_millis = 64000;
  cfg.container_memory_bytes = 512LL << 30;
  cfg.container_gpus = gpus;
  State state;
  TimePoint now = FromMicros(1'800'000'000'000'000);
  DecideContext ctx{now, &cfg};
  // Queue the attempts first (no container yet), then register the containers.
  auto apply = [&](const Command& c) {
    Processor p(&state, ctx, 1);
    auto r = p.Apply(c);
    if (!r.ok()) {
      std::fprintf(stderr, "setup failed: %s\n", r.status().ToString().c_str());
      std::exit(1);
    }
    p.Settle();
  };
  // One workflow per tenant (a workflow name belongs to one tenant).
  auto tenant = [&](int t) {
    return tenants == 1 ? std::string("default") : "t" + std::to_string(t);
  };
  for (int t = 0; t < tenants; ++t) {
    Json def = *ParseJson(R"({"name":"w","steps":[{"name":"a","command":["x"],
        "resources":{"gpus":1,"cpu":"500m","memory":"1Gi"}}]})");
    def["name"] = "w" + std::to_string(t);
    apply(RegisterWorkflow{def, "bench", tenant(t)});
    if (max_gpus >= 0) cfg.tenant_max_gpus[tenant(t)] = max_gpus;
  }
  for (int i = 0; i < attempts; ++i) {
    SubmitRun s;
    s.run_id = "r" + std::to_string(i);
    s.workflow = "w" + std::to_string(i % tenants);
    s.tenant = tenant(i % tenants);
    s.priority = i % 3;
    apply(s);
  }
  {
    Processor p(&state, ctx, 1);
    std::vector<Event> evs;
    for (int c = 0; c < containers; ++c) {
      std::string id = "c" + std::to_string(c + 1);
      evs.push_back(Event{ContainerStream(id), std::string(ev::kContainerRequested),
                          Json{{"container", id}, {"backend", "local"},
                               {"spec", Json{{"cpu_millis", cfg.container_cpu_millis},
                                             {"memory_bytes", cfg.container_memory_bytes},
                                             {"gpus", gpus}}}}});
      Json inv = Json::array();
      for (int g = 0; g < gpus; ++g) {
        inv.push_back(Json{{"index", g}, {"uuid", id + "-" + std::to_string(g)}, {"healthy", true}});
      }
      evs.push_back(Event{ContainerStream(id), std::string(ev::kContainerRegistered),
                          Json{{"container", id}, {"cpu_millis", cfg.container_cpu_millis},
                               {"memory_bytes", cfg.container_memory_bytes}, {"gpus", inv}}});
    }
    p.Record(std::move(evs));  // no Settle: the queue stays as it is
  }
  // Schedule is pure: run it repeatedly against the same state.
  int rounds = 20;
  size_t placed = 0;
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < rounds; ++i) placed = Schedule(state, ctx).size();
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  double decisions = static_cast<double>(state.queue.size()) * rounds;
  std::printf(
      "queued  containers  gpus/container  tenants  placed/round  us/decision  decisions/s\n");
  std::printf("%-7zu %-11d %-15d %-8d %-13zu %-12.2f %.0f\n", state.queue.size(), containers,
              gpus, tenants, placed, secs / decisions * 1e6, decisions / secs);
  return 0;
}

}  // namespace epoch::bench
