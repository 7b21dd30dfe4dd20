// GPU inventory: what GPUs this process can use, whether each one works, and what a
// child process must put in CUDA_VISIBLE_DEVICES to get exactly one of them.
//
// Discover() asks the CUDA runtime (cudaGetDeviceCount, cudaGetDeviceProperties,
// cudaMemGetInfo); the runtime already honours this process's CUDA_VISIBLE_DEVICES, so
// `index` is the runtime ordinal *inside* that set, while `visible_id` (the GPU's UUID)
// names the same GPU for any child regardless of how its parent was restricted. Any
// CUDA error (no driver gives 34 or 35, no device 100) means zero GPUs and a reason;
// nothing here throws or aborts. Probe() runs a small write / read-back / checksum
// kernel on one GPU and sets `healthy`. Without CUDA compiled in (EPOCH_CUDA=OFF, or no
// nvcc with AUTO) Discover() reports zero GPUs and says so.
//
// EPOCH_FAKE_GPUS=N (DiscoverFromEnv) gives N simulated GPUs instead, for scheduling
// and isolation tests on machines without one; they are always marked `simulated`.
//
// This header has no CUDA include: the agent includes it. The CUDA calls live in
// gpu/cuda_edge.cu, where their errors are converted to Status.
//
// Thread-safety: GpuInfo and Inventory are plain values. Discover() and Probe() are
// serialised inside the module (they create and then reset each device's primary
// context, so nothing is held on the GPUs afterwards); do not run them while other
// code in the same process uses CUDA. Everything else is a pure function.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/json.h"
#include "common/status.h"

namespace epoch::gpu {

struct GpuInfo {
  int index = 0;           // CUDA runtime ordinal in this process (0-based)
  std::string uuid;        // "GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"; "GPU-sim-<c>-<i>"
  std::string name;        // "NVIDIA H100 80GB HBM3"
  std::string pci_bus_id;  // "0000:17:00.0"; empty when simulated
  int64_t memory_bytes = 0;
  int64_t free_bytes = 0;  // at discovery time
  int cc_major = 0, cc_minor = 0;
  bool healthy = false;    // true only after a passed Probe (or when simulated)
  bool simulated = false;  // from EPOCH_FAKE_GPUS; never a real device
  std::string reason;      // why it is not healthy ("" when healthy)
  std::string visible_id;  // what a child's CUDA_VISIBLE_DEVICES needs for this GPU
};

struct Inventory {
  std::vector<GpuInfo> gpus;
  bool cuda_compiled = false;  // this build has the CUDA discoverer
  // Why there are zero GPUs ("cudaGetDeviceCount: CUDA driver version is insufficient
  // for CUDA runtime version (35)", "CUDA support was not compiled in (...)"), or a note
  // on where the GPUs came from (EPOCH_FAKE_GPUS); "" for a plain real discovery.
  std::string reason;
};

// True when this build has the CUDA discoverer (EPOCH_CUDA resolved to on).
bool CudaCompiledIn();

// Real discovery. Every GPU comes back with healthy=false and reason "not probed";
// Probe() decides. A GPU whose properties cannot be read is listed (so ordinals stay
// stable) with its error as reason. Never fails: errors become Inventory::reason.
Inventory Discover();

// n simulated GPUs (n < 0 counts as 0): uuid "GPU-sim-<container_id>-<i>", name
// "Simulated GPU", 80 GiB, compute capability 9.0, healthy, simulated, visible_id "<i>".
Inventory FakeInventory(int n, const std::string& container_id);

// Simulated GPUs granted by a scheduler that sets CUDA_VISIBLE_DEVICES (Slurm's
// --gres=gpu:N with fake device files): one per listed ordinal, in that order, with
// visible_id the ordinal and uuid "GPU-sim-<host>-<ordinal>" (the same device gets the
// same uuid in every container of the host). Empty with a reason when the list holds
// anything but non-negative integers.
Inventory FakeInventoryFromVisible(const std::string& cuda_visible_devices,
                                   const std::string& host);

// EPOCH_FAKE_GPUS set and non-empty: FakeInventory(N) when it is an integer N >= 0,
// else zero GPUs with a reason naming the bad value (real discovery is not tried).
// Otherwise Discover() and then Probe() on each GPU found.
Inventory DiscoverFromEnv(const std::string& container_id);

// Runs the health probe on gpu.index: allocates 64 MiB, fills it with a pattern by a
// kernel, verifies it with a checksum kernel and a cudaMemcpy read-back. Sets
// gpu.healthy and gpu.reason ("" when it passed). A simulated GPU is left as it is
// (Ok). Errors (also left in gpu.reason): kFailedPrecondition without CUDA compiled in,
// or for a GPU without a UUID (a child could not be given exactly it); kUnavailable
// for a CUDA error ("cudaMalloc: out of memory (2)") or a kernel still running after
// 10 s; kCorruption when the data read back differs from what was written.
Status Probe(GpuInfo& gpu);

// {"index", "uuid", "name", "pci_bus_id", "memory_bytes", "free_bytes",
//  "compute_capability": "9.0", "healthy", "simulated", "reason"}; index is an integer.
Json ToJson(const GpuInfo& gpu);
// {"gpus": [ToJson(gpu)...], "cuda": {"compiled": bool, "reason": str}}: the shape of
// the agent's register message fields of the same names.
Json ToJson(const Inventory& inventory);

}  // namespace epoch::gpu
