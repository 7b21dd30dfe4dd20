#include "gpu/gpu.h"

#include <algorithm>
#include <cstdlib>
#include <utility>

#include "gpu/cuda_edge.h"

namespace epoch::gpu {

namespace {

constexpr size_t kProbeBytes = size_t{64} << 20;
constexpr int kProbeTimeoutMs = 10000;
constexpr int kMaxFakeGpus = 1024;

// "3" -> 3; anything but plain decimal digits (a sign, spaces, "2x") -> -1.
int ParseCount(const std::string& s) {
  if (s.empty() || s.size() > 6) return -1;
  int n = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return -1;
    n = n * 10 + (c - '0');
  }
  return n;
}

}  // namespace

bool CudaCompiledIn() { return internal::Compiled(); }

Inventory Discover() {
  Inventory inv;
  inv.cuda_compiled = internal::Compiled();
  std::vector<internal::CudaDevice> devices;
  if (Status st = internal::ListDevices(&devices); !st.ok()) {
    inv.reason = st.message();
    return inv;
  }
  if (devices.empty()) inv.reason = "the CUDA runtime reports no devices";
  for (auto& d : devices) {
    GpuInfo g;
    g.index = d.index;
    g.uuid = std::move(d.uuid);
    g.name = std::move(d.name);
    g.pci_bus_id = std::move(d.pci_bus_id);
    g.memory_bytes = d.memory_bytes;
    g.free_bytes = d.free_bytes;
    g.cc_major = d.cc_major;
    g.cc_minor = d.cc_minor;
    g.healthy = false;
    g.reason = d.error.empty() ? "not probed" : std::move(d.error);
    // The UUID selects exactly this GPU in a child, however this process was restricted.
    g.visible_id = g.uuid.empty() ? std::to_string(g.index) : g.uuid;
    inv.gpus.push_back(std::move(g));
  }
  return inv;
}

Inventory FakeInventory(int n, const std::string& container_id) {
  Inventory inv;
  inv.cuda_compiled = internal::Compiled();
  n = std::max(0, n);
  inv.reason = "EPOCH_FAKE_GPUS=" + std::to_string(n) + ": " + std::to_string(n) +
               " simulated GPU(s); real discovery skipped";
  for (int i = 0; i < n; ++i) {
    GpuInfo g;
    g.index = i;
    g.uuid = "GPU-sim-" + container_id + "-" + std::to_string(i);
    g.name = "Simulated GPU";
    g.memory_bytes = int64_t{80} << 30;
    g.free_bytes = g.memory_bytes;
    g.cc_major = 9;
    g.cc_minor = 0;
    g.healthy = true;
    g.simulated = true;
    g.visible_id = std::to_string(i);
    inv.gpus.push_back(std::move(g));
  }
  return inv;
}

Inventory FakeInventoryFromVisible(const std::string& cuda_visible_devices,
                                   const std::string& host) {
  std::vector<std::string> ordinals;
  std::string cur;
  for (char c : cuda_visible_devices + ",") {
    if (c != ',') {
      cur += c;
      continue;
    }
    if (cur.empty() || cur.size() > 4 || cur.find_first_not_of("0123456789") != std::string::npos) {
      Inventory inv;
      inv.cuda_compiled = internal::Compiled();
      inv.reason = "CUDA_VISIBLE_DEVICES='" + cuda_visible_devices +
                   "' is not a list of GPU ordinals; reporting no simulated GPUs";
      return inv;
    }
    ordinals.push_back(cur);
    cur.clear();
  }
  Inventory inv = FakeInventory(static_cast<int>(ordinals.size()), host);
  inv.reason = "EPOCH_FAKE_GPUS with CUDA_VISIBLE_DEVICES=" + cuda_visible_devices + ": " +
               std::to_string(ordinals.size()) + " simulated GPU(s) granted by the scheduler";
  for (size_t i = 0; i < ordinals.size(); ++i) {
    inv.gpus[i].visible_id = ordinals[i];
    inv.gpus[i].uuid = "GPU-sim-" + host + "-" + ordinals[i];
  }
  return inv;
}

Inventory DiscoverFromEnv(const std::string& container_id) {
  if (const char* fake = std::getenv("EPOCH_FAKE_GPUS"); fake != nullptr && *fake != '\0') {
    int n = ParseCount(fake);
    if (n < 0 || n > kMaxFakeGpus) {
      Inventory inv;
      inv.cuda_compiled = internal::Compiled();
      inv.reason = "EPOCH_FAKE_GPUS='" + std::string(fake) +
                   "' is not an integer from 0 to " + std::to_string(kMaxFakeGpus) +
                   "; reporting no GPUs";
      return inv;
    }
    return FakeInventory(n, container_id);
  }
  Inventory inv = Discover();
  for (auto& g : inv.gpus) {
    // The outcome is recorded in g.healthy and g.reason; the inventory carries it.
    (void)Probe(g);
  }
  return inv;
}

Status Probe(GpuInfo& gpu) {
  if (gpu.simulated) return Status::Ok();
  Status st;
  if (internal::Compiled() && gpu.uuid.empty()) {
    // Discovery could not read its properties (its error is the reason), and without
    // a UUID a child could not be given exactly this GPU.
    st = FailedPrecondition(gpu.reason.empty() || gpu.reason == "not probed"
                                ? "GPU has no UUID: it cannot be isolated for a child"
                                : gpu.reason);
  } else {
    st = internal::ProbeDevice(gpu.index, kProbeBytes, kProbeTimeoutMs);
  }
  gpu.healthy = st.ok();
  gpu.reason = st.ok() ? "" : st.message();
  return st;
}

Json ToJson(const GpuInfo& gpu) {
  return Json{{"index", gpu.index},
              {"uuid", gpu.uuid},
              {"name", gpu.name},
              {"pci_bus_id", gpu.pci_bus_id},
              {"memory_bytes", gpu.memory_bytes},
              {"free_bytes", gpu.free_bytes},
              {"compute_capability",
               std::to_string(gpu.cc_major) + "." + std::to_string(gpu.cc_minor)},
              {"healthy", gpu.healthy},
              {"simulated", gpu.simulated},
              {"reason", gpu.reason}};
}

Json ToJson(const Inventory& inventory) {
  Json gpus = Json::array();
  for (const auto& g : inventory.gpus) gpus.push_back(ToJson(g));
  return Json{{"gpus", std::move(gpus)},
              {"cuda", {{"compiled", inventory.cuda_compiled}, {"reason", inventory.reason}}}};
}

}  // namespace epoch::gpu
