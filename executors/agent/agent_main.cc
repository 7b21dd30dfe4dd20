// epoch-agent: the compute-container process. See executors/agent/agent.h.
//
// Exit codes: 0 released or stopped (SIGTERM/SIGINT), 2 orphaned (master unreachable
// past --orphan-timeout), 64 bad flags, 1 start-up failure.
#include <signal.h>
#include <unistd.h>
#include <spdlog/spdlog.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "common/logging.h"
#include "executors/agent/agent.h"
#include "gpu/gpu.h"

namespace {

epoch::executors::Agent* g_agent = nullptr;

void OnSignal(int) {
  if (g_agent != nullptr) g_agent->Stop();
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  for (const auto& a : args) {
    if (a == "--help" || a == "-h") {
      std::fputs(epoch::executors::AgentUsage().c_str(), stdout);
      return 0;
    }
  }
  auto options = epoch::executors::ParseAgentFlags(args);
  if (!options.ok()) {
    std::fprintf(stderr, "epoch-agent: %s\n%s", options.status().message().c_str(),
                 epoch::executors::AgentUsage().c_str());
    return 64;
  }
  if (epoch::Status st =
          epoch::SetupLogging(options->log_format, options->log_level, "epoch-agent");
      !st.ok()) {
    std::fprintf(stderr, "epoch-agent: %s\n", st.ToString().c_str());
    return 64;
  }
  // The GPUs this container owns: EPOCH_FAKE_GPUS's simulated ones, or the CUDA
  // runtime's, each probed (a few hundred ms per GPU; contexts are released after).
  options->gpu_inventory = epoch::gpu::DiscoverFromEnv(options->id);
  // Under Slurm the job owns the GPUs Slurm granted (CUDA_VISIBLE_DEVICES): real
  // discovery sees only those already; simulated GPUs follow the same grant.
  if (const char* cvd = std::getenv("CUDA_VISIBLE_DEVICES");
      options->backend == "slurm" && cvd != nullptr && *cvd != '\0' &&
      !options->gpu_inventory.gpus.empty() && options->gpu_inventory.gpus.front().simulated) {
    char host[256] = {0};
    gethostname(host, sizeof(host) - 1);
    options->gpu_inventory = epoch::gpu::FakeInventoryFromVisible(cvd, host);
  }
  const epoch::gpu::Inventory& inv = options->gpu_inventory;
  if (!inv.gpus.empty() && inv.gpus.front().simulated) {
    spdlog::warn("EPOCH_FAKE_GPUS: reporting {} simulated GPU(s)", inv.gpus.size());
  } else if (inv.gpus.empty()) {
    spdlog::info("no GPUs: {}", inv.reason);
  }
  for (const auto& g : inv.gpus) {
    if (g.simulated) continue;
    spdlog::info("GPU {}: {} {} ({}, {} bytes, cc {}.{}): {}", g.index, g.uuid, g.name,
                 g.pci_bus_id, g.memory_bytes, g.cc_major, g.cc_minor,
                 g.healthy ? "healthy" : "UNHEALTHY: " + g.reason);
  }
  if (options->gpus > 0 && static_cast<size_t>(options->gpus) != inv.gpus.size()) {
    spdlog::warn("--gpus {} but {} GPU(s) found; registering the ones found", options->gpus,
                 inv.gpus.size());
  }

  epoch::executors::Agent agent(std::move(*options));
  g_agent = &agent;
  struct sigaction sa {};
  sa.sa_handler = OnSignal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);

  auto code = agent.Run();
  g_agent = nullptr;
  if (!code.ok()) {
    spdlog::error("epoch-agent: {}", code.status().ToString());
    return 1;
  }
  spdlog::default_logger()->flush();
  return *code;
}
