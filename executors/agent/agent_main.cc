// epoch-agent: the compute-container process. See executors/agent/agent.h.
//
// Exit codes: 0 released or stopped (SIGTERM/SIGINT), 2 orphaned (master unreachable
// past --orphan-timeout), 64 bad flags, 1 start-up failure.
#include <signal.h>
#include <spdlog/spdlog.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "common/logging.h"
#include "executors/agent/agent.h"

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
  if (const char* fake = std::getenv("EPOCH_FAKE_GPUS"); fake != nullptr && *fake != '\0') {
    int n = std::atoi(fake);
    if (n > 0) {
      options->gpu_inventory = epoch::executors::SimulatedGpus(n, options->id);
      spdlog::warn("EPOCH_FAKE_GPUS={}: reporting {} simulated GPU(s)", fake, n);
    }
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
