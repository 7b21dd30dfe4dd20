// epoch-gpu-info: prints what epoch-agent would report about this machine's GPUs, as
// JSON ({"gpus": [...], "cuda": {"compiled", "reason"}}; gpu/gpu.h's ToJson), after
// running the health probe on each GPU. EPOCH_FAKE_GPUS is honoured as in the agent.
//
// Exit codes: 0 at least one healthy GPU, 1 none, 64 bad flags.
#include <cstdio>
#include <string>

#include "gpu/gpu.h"

namespace {

constexpr const char* kUsage =
    "usage: epoch-gpu-info [--no-probe] [--id CONTAINER_ID]\n"
    "  Prints the GPU inventory as JSON. Exit 0 when a healthy GPU was found, else 1.\n"
    "  --no-probe  list the real GPUs without the probe kernel (ignores EPOCH_FAKE_GPUS;\n"
    "              none is then reported healthy)\n"
    "  --id        container id for EPOCH_FAKE_GPUS's simulated UUIDs (default: local)\n";

}  // namespace

int main(int argc, char** argv) {
  bool probe = true;
  std::string id = "local";
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      std::fputs(kUsage, stdout);
      return 0;
    } else if (a == "--no-probe") {
      probe = false;
    } else if (a == "--id" && i + 1 < argc) {
      id = argv[++i];
    } else {
      std::fprintf(stderr, "epoch-gpu-info: unexpected argument '%s'\n%s", a.c_str(), kUsage);
      return 64;
    }
  }
  epoch::gpu::Inventory inv =
      probe ? epoch::gpu::DiscoverFromEnv(id) : epoch::gpu::Discover();
  std::printf("%s\n", epoch::gpu::ToJson(inv).dump(2).c_str());
  for (const auto& g : inv.gpus) {
    if (g.healthy) return 0;
  }
  return 1;
}
