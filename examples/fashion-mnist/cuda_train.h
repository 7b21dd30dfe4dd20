// Training on an NVIDIA GPU: Train's CUDA twin, with this program's own kernels (no
// cuBLAS; the static CUDA runtime is the only CUDA library linked).
//
// TrainOnCuda runs the same algorithm as Train (train.h) on the same data: the initial
// weights come from the caller (MakeMlp on the host, same seed), the minibatches come
// from the same MinibatchOrder, the learning rate from the same LearningRate and
// AdamStepSize, and the parameters keep Mlp's layout, so the model it leaves in `m` is
// saved as the same model.bin and validates on the CPU. The results agree with the
// CPU's to float rounding, not bit for bit: the GPU sums each minibatch's gradient in
// one pass instead of kParts parts, in another order, with fused multiply-adds.
//
// On the device: both data sets are copied once; each step gathers its minibatch,
// runs the forward pass (tiled SGEMM, bias + ReLU), softmax cross-entropy (per-row
// loss and correct flag), the backward pass (SGEMMs with transposed operands, column
// sums for the bias gradients, ReLU masks) and the Adam or SGD-momentum update without
// a host round trip; only each epoch's sums (loss, correct counts, for training and
// validation) and finally the parameters are copied back.
//
// Errors: every cudaError_t is converted where the call is made, naming the call, the
// runtime's text and the code ("cudaMalloc: out of memory (2)"): kUnavailable
// (kResourceExhausted for allocation failures). When CUDA is not compiled in
// (EPOCH_CUDA=OFF, or AUTO found no nvcc) every function answers kFailedPrecondition
// saying so.
//
// Thread-safety: the calls use the calling thread's current device (device 0 unless
// CUDA_VISIBLE_DEVICES says otherwise) and the legacy default stream; run one at a
// time per process.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "common/status.h"
#include "examples/fashion-mnist/idx.h"
#include "examples/fashion-mnist/mlp.h"
#include "examples/fashion-mnist/train.h"

namespace epoch::fmnist {

// True when this build has the CUDA path.
bool CudaCompiled();

// Whether TrainOnCuda can run here: the GPU it would use, as one line ("NVIDIA H200
// (compute capability 9.0, 139.8 GiB)"), or why not. kFailedPrecondition when CUDA is
// not compiled in ("this build has no CUDA path (built with EPOCH_CUDA=OFF)");
// kUnavailable when the runtime sees no device or cannot use it — any CUDA error means
// no GPU — with the failing call, the runtime's text and the code:
// "cudaGetDeviceCount: CUDA driver version is insufficient for CUDA runtime version (35)".
// Besides counting devices it checks that this build's kernels can run on device 0
// (they are built for CMAKE_CUDA_ARCHITECTURES).
Result<std::string> ProbeCuda();

// Train (train.h) on the GPU: same contract, options, hooks and reports (`threads` is
// checked but unused). On success `m` holds the trained parameters; on_checkpoint gets
// them (and the optimizer state) copied back after each epoch, on_progress the loss
// summed on the device at each report.
Result<TrainReport> TrainOnCuda(Mlp& m, const Dataset& train, const Dataset& validation,
                                const TrainOptions& options, const TrainHooks& hooks);
Result<TrainReport> TrainOnCuda(Mlp& m, const Dataset& train, const Dataset& validation,
                                const TrainOptions& options,
                                const std::function<void(const EpochReport&)>& on_epoch);

// LossAndGradient (mlp.h) on the GPU, through the same kernels TrainOnCuda runs: the
// stats of `rows` examples and into `grad` (ParamCount floats) the gradient of
// `scale * sum of their losses`. For the CPU/GPU parity tests.
Result<BatchStats> CudaLossAndGradient(const Mlp& m, const float* x, const uint8_t* labels,
                                       int rows, float scale, float* grad);

}  // namespace epoch::fmnist
