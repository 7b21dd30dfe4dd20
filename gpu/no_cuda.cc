// gpu/cuda_edge.h without CUDA: built when EPOCH_CUDA is OFF, or AUTO found no nvcc.
// Every call says so; the inventory is then zero GPUs with that reason.
#include "gpu/cuda_edge.h"

#ifndef EPOCH_GPU_NO_CUDA_REASON
#define EPOCH_GPU_NO_CUDA_REASON "built with EPOCH_CUDA=OFF"
#endif

namespace epoch::gpu::internal {

namespace {

Status NotCompiled() {
  return FailedPrecondition(std::string("CUDA support was not compiled in (") +
                            EPOCH_GPU_NO_CUDA_REASON + ")");
}

}  // namespace

bool Compiled() { return false; }

Status ListDevices(std::vector<CudaDevice>* out) {
  out->clear();
  return NotCompiled();
}

Status ProbeDevice(int, size_t, int) { return NotCompiled(); }

}  // namespace epoch::gpu::internal
