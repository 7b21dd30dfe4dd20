// Internal to gpu/: the seam between the CUDA translation unit (cuda_edge.cu, or
// no_cuda.cc when CUDA is not compiled in) and gpu.cc. Plain types only, so nvcc
// never parses nlohmann/json; every CUDA error is converted to a Status (or a device's
// `error`) inside the implementation, with the call, the runtime's text and the code:
// "cudaGetDeviceCount: CUDA driver version is insufficient for CUDA runtime version (35)".
//
// Thread-safety: the CUDA implementation serialises both calls on one mutex.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"

namespace epoch::gpu::internal {

struct CudaDevice {
  int index = 0;
  std::string uuid, name, pci_bus_id;
  int64_t memory_bytes = 0, free_bytes = 0;
  int cc_major = 0, cc_minor = 0;
  std::string error;  // set when this device's properties or memory could not be read
};

// True when built with the CUDA implementation.
bool Compiled();

// Lists the devices the runtime sees. kUnavailable (message as above) when the
// runtime cannot even count them; kFailedPrecondition when CUDA is not compiled in.
Status ListDevices(std::vector<CudaDevice>* out);

// Fills `bytes` of device memory on runtime ordinal `index` with a pattern (kernel),
// verifies it with a checksum kernel and a cudaMemcpy read-back, frees it and resets
// the device. kUnavailable for CUDA errors or a timeout, kCorruption for bad data,
// kFailedPrecondition when CUDA is not compiled in.
Status ProbeDevice(int index, size_t bytes, int timeout_ms);

}  // namespace epoch::gpu::internal
