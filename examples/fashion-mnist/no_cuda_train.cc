// cuda_train.h without CUDA: built when EPOCH_CUDA is OFF, or AUTO found no nvcc.
// Every call says so, and `fmnist train --device auto` trains on the CPU.
#include "examples/fashion-mnist/cuda_train.h"

#ifndef EPOCH_FMNIST_NO_CUDA_REASON
#define EPOCH_FMNIST_NO_CUDA_REASON "built with EPOCH_CUDA=OFF"
#endif

namespace epoch::fmnist {

namespace {

Status NotCompiled() {
  return FailedPrecondition(std::string("this build has no CUDA path (") +
                            EPOCH_FMNIST_NO_CUDA_REASON + ")");
}

}  // namespace

bool CudaCompiled() { return false; }

Result<std::string> ProbeCuda() { return NotCompiled(); }

Result<TrainReport> TrainOnCuda(Mlp&, const Dataset&, const Dataset&, const TrainOptions&,
                                const std::function<void(const EpochReport&)>&) {
  return NotCompiled();
}

Result<TrainReport> TrainOnCuda(Mlp&, const Dataset&, const Dataset&, const TrainOptions&,
                                const TrainHooks&) {
  return NotCompiled();
}

Result<BatchStats> CudaLossAndGradient(const Mlp&, const float*, const uint8_t*, int, float,
                                       float*) {
  return NotCompiled();
}

}  // namespace epoch::fmnist
