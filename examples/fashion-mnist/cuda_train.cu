// fmnist's CUDA path: see cuda_train.h. Its kernels mirror the CPU code they stand
// for, operation by operation (mlp.cc's Forward and LossAndGradient, train.cc's
// updates), so the two differ only in rounding. Every cudaError_t becomes a Status
// right where the call is made; nothing here throws.
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "examples/fashion-mnist/cuda_train.h"

namespace epoch::fmnist {

namespace {

// ---- errors ----

std::string ErrorText(const std::string& call, cudaError_t err) {
  return call + ": " + cudaGetErrorString(err) + " (" + std::to_string(static_cast<int>(err)) + ")";
}

Status CudaError(const std::string& call, cudaError_t err) {
  (void)cudaGetLastError();  // a non-sticky error stays until read: the next call reports its own
  if (err == cudaErrorMemoryAllocation) return ResourceExhausted(ErrorText(call, err));
  return Unavailable(ErrorText(call, err));
}

Status Check(const std::string& call, cudaError_t err) {
  return err == cudaSuccess ? Status::Ok() : CudaError(call, err);
}

// After a launch: a bad configuration shows at once; a fault inside the kernel shows at
// the next synchronising call (each epoch's copy of its sums).
Status Launched(const char* kernel) { return Check(kernel, cudaGetLastError()); }

// ---- device memory ----

// n elements of T in device memory, freed on destruction.
template <typename T>
class DeviceArray {
 public:
  DeviceArray() = default;
  ~DeviceArray() {
    if (p_ != nullptr) (void)cudaFree(p_);
  }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;

  Status Allocate(size_t n, const char* what) {
    if (p_ != nullptr) (void)cudaFree(p_);
    p_ = nullptr;
    n_ = n;
    if (n == 0) return Status::Ok();
    return Check("cudaMalloc(" + std::to_string(n * sizeof(T)) + " bytes for " + what + ")",
                 cudaMalloc(reinterpret_cast<void**>(&p_), n * sizeof(T)));
  }
  // Allocate + copy n elements from the host.
  Status Upload(const T* host, size_t n, const char* what) {
    RETURN_IF_ERROR(Allocate(n, what));
    if (n == 0) return Status::Ok();
    return Check(std::string("cudaMemcpy(") + what + " to the device)",
                 cudaMemcpy(p_, host, n * sizeof(T), cudaMemcpyHostToDevice));
  }
  // Copies the first n elements to the host; waits for the work before it.
  Status Download(T* host, size_t n, const char* what) const {
    if (n == 0) return Status::Ok();
    return Check(std::string("cudaMemcpy(") + what + " to the host)",
                 cudaMemcpy(host, p_, n * sizeof(T), cudaMemcpyDeviceToHost));
  }

  T* get() const { return p_; }
  size_t size() const { return n_; }

 private:
  T* p_ = nullptr;
  size_t n_ = 0;
};

// ---- kernels ----

constexpr int kThreads = 256;  // elementwise kernels
constexpr int kMaxBlocks = 4096;

int Blocks(size_t n, int threads) {
  return static_cast<int>(std::min<size_t>((n + threads - 1) / threads, kMaxBlocks));
}

__device__ inline size_t GlobalIndex() {
  return static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}

__device__ inline size_t GridStride() { return static_cast<size_t>(gridDim.x) * blockDim.x; }

// SGEMM, C[m x n] = op(A)[m x k] * op(B)[k x n], row-major with leading dimensions:
// op(A)(i, p) is a[i * lda + p], or a[p * lda + i] when kTransA (A stored k x m);
// op(B)(p, j) is b[p * ldb + j], or b[j * ldb + p] when kTransB (B stored n x k).
// Each block computes a kTile x kTile tile of C from kTileK-deep slices of A and B staged
// in shared memory (zero-padded past the edges, so any m, n, k work); each of its 256
// threads holds 4 x 4 elements of C, rows ty + 16r and columns tx + 16q, so a warp
// reads consecutive shared-memory words and writes consecutive columns of C. Each
// element is summed over p in order, the same on every run.
constexpr int kTile = 64, kTileK = 16, kGemmThreads = 256;

template <bool kTransA, bool kTransB>
__global__ void __launch_bounds__(kGemmThreads)
    GemmKernel(int m, int n, int k, const float* __restrict__ a, int lda,
               const float* __restrict__ b, int ldb, float* __restrict__ c, int ldc) {
  // +1: a column of the tile is not all in one bank.
  __shared__ float as[kTileK][kTile + 1];
  __shared__ float bs[kTileK][kTile + 1];
  const int tid = threadIdx.x;
  const int tx = tid % 16, ty = tid / 16;
  const int row0 = blockIdx.y * kTile, col0 = blockIdx.x * kTile;
  float acc[4][4] = {};
  for (int k0 = 0; k0 < k; k0 += kTileK) {
    // Stage the slices; consecutive threads read consecutive global addresses.
    for (int e = tid; e < kTileK * kTile; e += kGemmThreads) {
      const int i = kTransA ? e % kTile : e / kTileK;
      const int p = kTransA ? e / kTile : e % kTileK;
      const int gi = row0 + i, gp = k0 + p;
      float v = 0.0f;
      if (gi < m && gp < k) {
        v = kTransA ? a[static_cast<size_t>(gp) * lda + gi] : a[static_cast<size_t>(gi) * lda + gp];
      }
      as[p][i] = v;
    }
    for (int e = tid; e < kTileK * kTile; e += kGemmThreads) {
      const int j = kTransB ? e / kTileK : e % kTile;
      const int p = kTransB ? e % kTileK : e / kTile;
      const int gj = col0 + j, gp = k0 + p;
      float v = 0.0f;
      if (gj < n && gp < k) {
        v = kTransB ? b[static_cast<size_t>(gj) * ldb + gp] : b[static_cast<size_t>(gp) * ldb + gj];
      }
      bs[p][j] = v;
    }
    __syncthreads();
#pragma unroll
    for (int p = 0; p < kTileK; ++p) {
      float av[4], bv[4];
#pragma unroll
      for (int r = 0; r < 4; ++r) av[r] = as[p][ty + 16 * r];
#pragma unroll
      for (int q = 0; q < 4; ++q) bv[q] = bs[p][tx + 16 * q];
#pragma unroll
      for (int r = 0; r < 4; ++r) {
#pragma unroll
        for (int q = 0; q < 4; ++q) acc[r][q] += av[r] * bv[q];
      }
    }
    __syncthreads();  // the slices are read before the next ones overwrite them
  }
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    const int i = row0 + ty + 16 * r;
    if (i >= m) continue;
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const int j = col0 + tx + 16 * q;
      if (j < n) c[static_cast<size_t>(i) * ldc + j] = acc[r][q];
    }
  }
}

// z[rows x cols] += bias (per column), then ReLU (mlp.cc: AddBias, Relu = max(z, 0)).
__global__ void BiasReluKernel(float* z, const float* __restrict__ bias, int rows, int cols,
                               bool relu) {
  const size_t total = static_cast<size_t>(rows) * cols;
  for (size_t i = GlobalIndex(); i < total; i += GridStride()) {
    float v = z[i] + bias[i % cols];
    if (relu) v = v < 0.0f ? 0.0f : v;
    z[i] = v;
  }
}

// d[i] = 0 where the ReLU's output in[i] was not positive (its gradient is 0 there).
__global__ void ReluBackwardKernel(float* d, const float* __restrict__ in, size_t n) {
  for (size_t i = GlobalIndex(); i < n; i += GridStride()) {
    if (in[i] <= 0.0f) d[i] = 0.0f;
  }
}

// Softmax cross-entropy of each row of logits[rows x classes], one thread per row, as
// mlp.cc computes it: row_loss = log(sum exp(z - zmax)) - (z[label] - zmax) (in double),
// row_correct = the first largest logit is the label; and, when delta is not null,
// d loss / d logit scaled: delta = (softmax - onehot(label)) * scale.
__global__ void SoftmaxXentKernel(const float* __restrict__ logits,
                                  const uint8_t* __restrict__ labels, int rows, int classes,
                                  float scale, float* __restrict__ delta,
                                  double* __restrict__ row_loss,
                                  uint8_t* __restrict__ row_correct) {
  const int i = static_cast<int>(GlobalIndex());
  if (i >= rows) return;
  const float* zi = logits + static_cast<size_t>(i) * classes;
  const int label = labels[i];
  int best = 0;
  float zmax = zi[0];
  for (int j = 1; j < classes; ++j) {
    if (zi[j] > zmax) {
      zmax = zi[j];
      best = j;
    }
  }
  double sum = 0;
  for (int j = 0; j < classes; ++j) sum += expf(zi[j] - zmax);
  row_loss[i] = log(sum) - (static_cast<double>(zi[label]) - zmax);
  row_correct[i] = best == label ? 1 : 0;
  if (delta == nullptr) return;
  float* di = delta + static_cast<size_t>(i) * classes;
  const float inv = static_cast<float>(1.0 / sum);
  for (int j = 0; j < classes; ++j) di[j] = expf(zi[j] - zmax) * inv * scale;
  di[label] -= scale;
}

// out[j] = sum over the rows of d[rows x cols]'s column j (a bias gradient). A block
// covers 32 columns; its 8 rows of threads each sum every 8th row, then thread row 0
// adds the 8 partial sums in order.
constexpr int kSumCols = 32, kSumRows = 8;

__global__ void ColumnSumKernel(const float* __restrict__ d, int rows, int cols,
                                float* __restrict__ out) {
  __shared__ float part[kSumRows][kSumCols + 1];
  const int j = blockIdx.x * kSumCols + threadIdx.x;
  float s = 0.0f;
  if (j < cols) {
    for (int i = threadIdx.y; i < rows; i += kSumRows) s += d[static_cast<size_t>(i) * cols + j];
  }
  part[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && j < cols) {
    float t = 0.0f;
    for (int y = 0; y < kSumRows; ++y) t += part[y][threadIdx.x];
    out[j] = t;
  }
}

// The minibatch: x[r] = images[order[r]], y[r] = labels[order[r]] for r < rows.
__global__ void GatherKernel(const float* __restrict__ images, const uint8_t* __restrict__ labels,
                             const uint32_t* __restrict__ order, int rows, float* __restrict__ x,
                             uint8_t* __restrict__ y) {
  const size_t total = static_cast<size_t>(rows) * kPixels;
  for (size_t i = GlobalIndex(); i < total; i += GridStride()) {
    const size_t r = i / kPixels, p = i % kPixels;
    const size_t src = order[r];
    x[i] = images[src * kPixels + p];
    if (p == 0) y[r] = labels[src];
  }
}

// train.cc's Adam step over all n parameters.
__global__ void AdamKernel(float* __restrict__ w, float* __restrict__ m1, float* __restrict__ m2,
                           const float* __restrict__ g, size_t n, float step_size) {
  for (size_t i = GlobalIndex(); i < n; i += GridStride()) {
    const float gi = g[i];
    const float a = kAdamBeta1 * m1[i] + (1.0f - kAdamBeta1) * gi;
    const float b = kAdamBeta2 * m2[i] + (1.0f - kAdamBeta2) * gi * gi;
    m1[i] = a;
    m2[i] = b;
    w[i] -= step_size * a / (sqrtf(b) + kAdamEps);
  }
}

// train.cc's SGD-with-momentum step: v = mu v - rate g; w += v.
__global__ void SgdKernel(float* __restrict__ w, float* __restrict__ v, const float* __restrict__ g,
                          size_t n, float mu, float rate) {
  for (size_t i = GlobalIndex(); i < n; i += GridStride()) {
    const float vi = mu * v[i] - rate * g[i];
    v[i] = vi;
    w[i] += vi;
  }
}

struct DeviceSums {
  double loss;
  unsigned long long correct;
};

// out = (sum of loss[0..n), count of correct[0..n)), one block, in a fixed order.
constexpr int kSumThreads = 512;

__global__ void __launch_bounds__(kSumThreads)
    SumStatsKernel(const double* __restrict__ loss, const uint8_t* __restrict__ correct, size_t n,
                   DeviceSums* out) {
  __shared__ double sl[kSumThreads];
  __shared__ unsigned long long sc[kSumThreads];
  const int t = threadIdx.x;
  double l = 0;
  unsigned long long c = 0;
  for (size_t i = t; i < n; i += kSumThreads) {
    l += loss[i];
    c += correct[i];
  }
  sl[t] = l;
  sc[t] = c;
  __syncthreads();
  for (int s = kSumThreads / 2; s > 0; s >>= 1) {
    if (t < s) {
      sl[t] += sl[t + s];
      sc[t] += sc[t + s];
    }
    __syncthreads();
  }
  if (t == 0) {
    out->loss = sl[0];
    out->correct = sc[0];
  }
}

// ---- launchers ----

Status Gemm(bool trans_a, bool trans_b, int m, int n, int k, const float* a, int lda,
            const float* b, int ldb, float* c, int ldc) {
  if (m <= 0 || n <= 0) return Status::Ok();
  const dim3 grid((n + kTile - 1) / kTile, (m + kTile - 1) / kTile);
  if (!trans_a && !trans_b) {
    GemmKernel<false, false><<<grid, kGemmThreads>>>(m, n, k, a, lda, b, ldb, c, ldc);
  } else if (trans_a && !trans_b) {
    GemmKernel<true, false><<<grid, kGemmThreads>>>(m, n, k, a, lda, b, ldb, c, ldc);
  } else if (!trans_a && trans_b) {
    GemmKernel<false, true><<<grid, kGemmThreads>>>(m, n, k, a, lda, b, ldb, c, ldc);
  } else {
    GemmKernel<true, true><<<grid, kGemmThreads>>>(m, n, k, a, lda, b, ldb, c, ldc);
  }
  return Launched("GemmKernel");
}

Status SumStats(const double* loss, const uint8_t* correct, size_t n, DeviceSums* out) {
  SumStatsKernel<<<1, kSumThreads>>>(loss, correct, n, out);
  return Launched("SumStatsKernel");
}

// ---- the network on the device ----

// An Mlp's parameters, their gradient and optimizer state, and the workspace for passes
// over at most max_rows rows, in device memory.
class DeviceMlp {
 public:
  Status Init(const Mlp& m, int max_rows) {
    sizes_ = m.sizes;
    for (int l = 0; l < m.layers(); ++l) {
      w_off_.push_back(m.WeightOffset(l));
      b_off_.push_back(m.BiasOffset(l));
    }
    np_ = m.params.size();
    RETURN_IF_ERROR(params_.Upload(m.params.data(), np_, "the parameters"));
    RETURN_IF_ERROR(grad_.Allocate(np_, "the gradient"));
    RETURN_IF_ERROR(m1_.Allocate(np_, "the optimizer state"));
    RETURN_IF_ERROR(m2_.Allocate(np_, "the optimizer state"));
    RETURN_IF_ERROR(Check("cudaMemset", cudaMemset(m1_.get(), 0, np_ * sizeof(float))));
    RETURN_IF_ERROR(Check("cudaMemset", cudaMemset(m2_.get(), 0, np_ * sizeof(float))));
    const int widest = *std::max_element(sizes_.begin(), sizes_.end());
    acts_ = std::vector<DeviceArray<float>>(sizes_.size() - 1);
    for (size_t l = 0; l + 1 < sizes_.size(); ++l) {
      RETURN_IF_ERROR(
          acts_[l].Allocate(static_cast<size_t>(max_rows) * sizes_[l + 1], "activations"));
    }
    RETURN_IF_ERROR(delta_.Allocate(static_cast<size_t>(max_rows) * widest, "gradients"));
    RETURN_IF_ERROR(delta_prev_.Allocate(static_cast<size_t>(max_rows) * widest, "gradients"));
    return Status::Ok();
  }

  int layers() const { return static_cast<int>(sizes_.size()) - 1; }

  // Logits of rows inputs x (device, rows x sizes[0]) into acts_.back() (mlp.cc Forward).
  Status Forward(const float* x, int rows) {
    const float* in = x;
    for (int l = 0; l < layers(); ++l) {
      const int ni = sizes_[l], no = sizes_[l + 1];
      float* z = acts_[l].get();
      RETURN_IF_ERROR(
          Gemm(false, false, rows, no, ni, in, ni, params_.get() + w_off_[l], no, z, no));
      const size_t total = static_cast<size_t>(rows) * no;
      BiasReluKernel<<<Blocks(total, kThreads), kThreads>>>(z, params_.get() + b_off_[l], rows, no,
                                                            l + 1 < layers());
      RETURN_IF_ERROR(Launched("BiasReluKernel"));
      in = z;
    }
    return Status::Ok();
  }

  // Forward, then each row's loss and correct flag into row_loss / row_correct (device).
  Status Evaluate(const float* x, const uint8_t* labels, int rows, double* row_loss,
                  uint8_t* row_correct) {
    RETURN_IF_ERROR(Forward(x, rows));
    SoftmaxXentKernel<<<(rows + 127) / 128, 128>>>(acts_.back().get(), labels, rows, sizes_.back(),
                                                   0.0f, nullptr, row_loss, row_correct);
    return Launched("SoftmaxXentKernel");
  }

  // mlp.cc's LossAndGradient: the gradient of scale * (sum of the rows' losses) into
  // grad_, each row's loss and correct flag into row_loss / row_correct.
  Status Gradient(const float* x, const uint8_t* labels, int rows, float scale, double* row_loss,
                  uint8_t* row_correct) {
    RETURN_IF_ERROR(Forward(x, rows));
    float* delta = delta_.get();
    float* dprev = delta_prev_.get();
    SoftmaxXentKernel<<<(rows + 127) / 128, 128>>>(acts_.back().get(), labels, rows, sizes_.back(),
                                                   scale, delta, row_loss, row_correct);
    RETURN_IF_ERROR(Launched("SoftmaxXentKernel"));
    // Backward, last layer first; delta holds d loss / d (this layer's pre-activation).
    for (int l = layers() - 1; l >= 0; --l) {
      const int ni = sizes_[l], no = sizes_[l + 1];
      const float* in = l == 0 ? x : acts_[l - 1].get();
      // dW = in^T * delta (ni x no).
      RETURN_IF_ERROR(
          Gemm(true, false, ni, no, rows, in, ni, delta, no, grad_.get() + w_off_[l], no));
      // db = column sums of delta.
      ColumnSumKernel<<<(no + kSumCols - 1) / kSumCols, dim3(kSumCols, kSumRows)>>>(
          delta, rows, no, grad_.get() + b_off_[l]);
      RETURN_IF_ERROR(Launched("ColumnSumKernel"));
      if (l == 0) break;
      // d in = delta * W^T (rows x ni), then through the ReLU that produced `in`.
      RETURN_IF_ERROR(
          Gemm(false, true, rows, ni, no, delta, no, params_.get() + w_off_[l], no, dprev, ni));
      const size_t total = static_cast<size_t>(rows) * ni;
      ReluBackwardKernel<<<Blocks(total, kThreads), kThreads>>>(dprev, in, total);
      RETURN_IF_ERROR(Launched("ReluBackwardKernel"));
      std::swap(delta, dprev);
    }
    return Status::Ok();
  }

  Status AdamUpdate(float step_size) {
    AdamKernel<<<Blocks(np_, kThreads), kThreads>>>(params_.get(), m1_.get(), m2_.get(),
                                                    grad_.get(), np_, step_size);
    return Launched("AdamKernel");
  }

  Status SgdUpdate(float momentum, float rate) {
    SgdKernel<<<Blocks(np_, kThreads), kThreads>>>(params_.get(), m1_.get(), grad_.get(), np_,
                                                   momentum, rate);
    return Launched("SgdKernel");
  }

  Status DownloadParams(float* out) const { return params_.Download(out, np_, "the parameters"); }
  // The optimizer state, as TrainState holds it (an empty vector: zeros).
  Status UploadMoments(const std::vector<float>& m1, const std::vector<float>& m2) {
    if (!m1.empty()) RETURN_IF_ERROR(m1_.Upload(m1.data(), np_, "the optimizer state"));
    if (!m2.empty()) RETURN_IF_ERROR(m2_.Upload(m2.data(), np_, "the optimizer state"));
    return Status::Ok();
  }
  Status DownloadMoments(std::vector<float>& m1, std::vector<float>& m2) const {
    m1.resize(np_);
    m2.resize(np_);
    RETURN_IF_ERROR(m1_.Download(m1.data(), np_, "the optimizer state"));
    return m2_.Download(m2.data(), np_, "the optimizer state");
  }
  Status DownloadGrad(float* out) const { return grad_.Download(out, np_, "the gradient"); }

 private:
  std::vector<int> sizes_;
  std::vector<size_t> w_off_, b_off_;
  size_t np_ = 0;
  DeviceArray<float> params_, grad_, m1_, m2_;  // m1_: Adam's first moment or SGD's velocity
  std::vector<DeviceArray<float>> acts_;        // acts_[l]: layer l's output (rows x sizes[l+1])
  DeviceArray<float> delta_, delta_prev_;
};

Status CheckShape(const Mlp& m) {
  if (m.sizes.size() < 2 || m.params.size() != Mlp::ParamCount(m.sizes)) {
    return InvalidArgument("the network's parameter count does not match its sizes");
  }
  return Status::Ok();
}

Status Gather(const DeviceArray<float>& images, const DeviceArray<uint8_t>& labels,
              const uint32_t* order, int rows, DeviceArray<float>& x, DeviceArray<uint8_t>& y) {
  const size_t total = static_cast<size_t>(rows) * kPixels;
  GatherKernel<<<Blocks(total, kThreads), kThreads>>>(images.get(), labels.get(), order, rows,
                                                      x.get(), y.get());
  return Launched("GatherKernel");
}

double Since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

constexpr int kEvalRows = 8192;  // rows per forward pass when evaluating

}  // namespace

bool CudaCompiled() { return true; }

Result<std::string> ProbeCuda() {
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) return CudaError("cudaGetDeviceCount", err);
  if (count < 1) return Unavailable("cudaGetDeviceCount: the CUDA runtime sees no device (0)");
  int device = 0;
  RETURN_IF_ERROR(Check("cudaGetDevice", cudaGetDevice(&device)));
  cudaDeviceProp p{};
  RETURN_IF_ERROR(Check("cudaGetDeviceProperties", cudaGetDeviceProperties(&p, device)));
  char desc[320];
  std::snprintf(desc, sizeof desc, "%s (compute capability %d.%d, %.1f GiB)", p.name, p.major,
                p.minor, static_cast<double>(p.totalGlobalMem) / (1024.0 * 1024.0 * 1024.0));
  // Creates the context and finds this build's code for the device: fails on a GPU
  // the kernels were not built for, or one that is busy or prohibited.
  cudaFuncAttributes attr{};
  err = cudaFuncGetAttributes(&attr, GemmKernel<false, false>);
  if (err != cudaSuccess) {
    Status st = CudaError("cudaFuncGetAttributes", err);
    return Status(st.code(), st.message() + " on device " + std::to_string(device) + ", " + desc);
  }
  return std::string(desc);
}

Result<TrainReport> TrainOnCuda(Mlp& m, const Dataset& train, const Dataset& validation,
                                const TrainOptions& o,
                                const std::function<void(const EpochReport&)>& on_epoch) {
  TrainHooks hooks;
  hooks.on_epoch = on_epoch;
  return TrainOnCuda(m, train, validation, o, hooks);
}

Result<TrainReport> TrainOnCuda(Mlp& m, const Dataset& train, const Dataset& validation,
                                const TrainOptions& o, const TrainHooks& hooks) {
  RETURN_IF_ERROR(CheckTrainInput(m, train, o));
  RETURN_IF_ERROR(CheckShape(m));
  RETURN_IF_ERROR(CheckResume(hooks.resume, o, m.params.size()));
  const auto t_all = std::chrono::steady_clock::now();
  const size_t n = train.size(), nv = validation.size();
  const BatchPlan plan = PlanBatches(n, o);
  const int eval_rows = static_cast<int>(std::min<size_t>(nv, kEvalRows));

  DeviceMlp net;
  RETURN_IF_ERROR(net.Init(m, std::max(plan.batch, eval_rows)));
  if (hooks.resume != nullptr) {
    RETURN_IF_ERROR(net.UploadMoments(hooks.resume->m1, hooks.resume->m2));
  }
  DeviceArray<float> images, val_images, x;
  DeviceArray<uint8_t> labels, val_labels, y, row_correct, val_correct;
  DeviceArray<uint32_t> order;
  DeviceArray<double> row_loss, val_loss;
  DeviceArray<DeviceSums> sums;
  RETURN_IF_ERROR(images.Upload(train.pixels.data(), train.pixels.size(), "the training images"));
  RETURN_IF_ERROR(labels.Upload(train.labels.data(), n, "the training labels"));
  RETURN_IF_ERROR(val_images.Upload(validation.pixels.data(), validation.pixels.size(),
                                    "the validation images"));
  RETURN_IF_ERROR(val_labels.Upload(validation.labels.data(), nv, "the validation labels"));
  RETURN_IF_ERROR(x.Allocate(static_cast<size_t>(plan.batch) * kPixels, "the minibatch"));
  RETURN_IF_ERROR(y.Allocate(plan.batch, "the minibatch labels"));
  RETURN_IF_ERROR(order.Allocate(n, "the minibatch order"));
  RETURN_IF_ERROR(row_loss.Allocate(n, "per-image losses"));
  RETURN_IF_ERROR(row_correct.Allocate(n, "per-image results"));
  RETURN_IF_ERROR(val_loss.Allocate(nv, "per-image losses"));
  RETURN_IF_ERROR(val_correct.Allocate(nv, "per-image results"));
  RETURN_IF_ERROR(sums.Allocate(3, "epoch sums"));  // train, validation, progress window

  const int first_epoch = hooks.resume == nullptr ? 1 : hooks.resume->epochs_done + 1;
  MinibatchOrder minibatches(n, o.seed);
  for (int e = 1; e < first_epoch; ++e) minibatches.NextEpoch();  // replay the epochs done
  TrainReport report;
  int64_t step_base = int64_t{plan.steps} * (first_epoch - 1);
  const int every = hooks.on_progress ? hooks.progress_every : 0;
  for (int epoch = first_epoch; epoch <= o.epochs; ++epoch) {
    if (StopRequested(hooks)) {
      report.stopped = true;
      report.stopped_epoch = epoch;
      report.stopped_step = step_base;
      break;
    }
    size_t window_begin = 0;  // the first image since the last progress report
    const auto t_epoch = std::chrono::steady_clock::now();
    const std::vector<uint32_t>& host_order = minibatches.NextEpoch();
    RETURN_IF_ERROR(Check(
        "cudaMemcpy(the minibatch order to the device)",
        cudaMemcpy(order.get(), host_order.data(), n * sizeof(uint32_t), cudaMemcpyHostToDevice)));
    double last_lr = o.lr;
    for (int s = 0; s < plan.steps; ++s) {
      const size_t begin = static_cast<size_t>(s) * plan.batch;
      const int rows = static_cast<int>(std::min<size_t>(plan.batch, n - begin));
      RETURN_IF_ERROR(Gather(images, labels, order.get() + begin, rows, x, y));
      RETURN_IF_ERROR(net.Gradient(x.get(), y.get(), rows, 1.0f / static_cast<float>(rows),
                                   row_loss.get() + begin, row_correct.get() + begin));
      const int64_t step = step_base + s;  // 0-based over the whole run
      const double lr = LearningRate(o, step, plan.total_steps);
      if (s == plan.steps - 1) last_lr = lr;
      if (o.optimizer == Optimizer::kAdam) {
        RETURN_IF_ERROR(net.AdamUpdate(AdamStepSize(lr, step)));
      } else {
        RETURN_IF_ERROR(net.SgdUpdate(static_cast<float>(o.momentum), static_cast<float>(lr)));
      }
      if (every > 0 && (s + 1) % every == 0 && s + 1 < plan.steps) {
        const size_t end = begin + rows;
        RETURN_IF_ERROR(SumStats(row_loss.get() + window_begin, row_correct.get() + window_begin,
                                 end - window_begin, sums.get() + 2));
        DeviceSums all[3] = {};
        RETURN_IF_ERROR(sums.Download(all, 3, "the progress sums"));
        StepReport sr;
        sr.epoch = epoch;
        sr.step = step + 1;
        sr.samples = static_cast<int64_t>(n) * (epoch - 1) + static_cast<int64_t>(end);
        sr.loss = all[2].loss / static_cast<double>(end - window_begin);
        sr.lr = lr;
        window_begin = end;
        hooks.on_progress(sr);
      }
      if (s + 1 < plan.steps && StopRequested(hooks)) {
        report.stopped = true;
        report.stopped_epoch = epoch;
        report.stopped_step = step + 1;
        break;
      }
    }
    if (report.stopped) break;
    step_base += plan.steps;
    RETURN_IF_ERROR(SumStats(row_loss.get(), row_correct.get(), n, sums.get()));
    DeviceSums train_sums{};
    // Waits for the epoch's kernels, and reports any fault in them.
    RETURN_IF_ERROR(sums.Download(&train_sums, 1, "the epoch's sums"));

    EpochReport er;
    er.epoch = epoch;
    er.step = step_base;
    er.seconds = Since(t_epoch);
    er.lr = last_lr;
    er.train_loss = train_sums.loss / static_cast<double>(n);
    er.train_accuracy = static_cast<double>(train_sums.correct) / static_cast<double>(n);
    report.train_seconds += er.seconds;
    if (nv > 0) {
      for (size_t begin = 0; begin < nv; begin += eval_rows) {
        const int rows = static_cast<int>(std::min<size_t>(eval_rows, nv - begin));
        RETURN_IF_ERROR(net.Evaluate(val_images.get() + begin * kPixels, val_labels.get() + begin,
                                     rows, val_loss.get() + begin, val_correct.get() + begin));
      }
      RETURN_IF_ERROR(SumStats(val_loss.get(), val_correct.get(), nv, sums.get() + 1));
      DeviceSums both[2] = {};
      RETURN_IF_ERROR(sums.Download(both, 2, "the validation sums"));
      er.validation_accuracy = static_cast<double>(both[1].correct) / static_cast<double>(nv);
    }
    report.epochs.push_back(er);
    if (hooks.on_epoch) hooks.on_epoch(er);
    if (hooks.on_checkpoint) {
      TrainState state;
      state.epochs_done = epoch;
      RETURN_IF_ERROR(net.DownloadParams(m.params.data()));
      RETURN_IF_ERROR(net.DownloadMoments(state.m1, state.m2));
      if (o.optimizer != Optimizer::kAdam) state.m2.clear();
      RETURN_IF_ERROR(hooks.on_checkpoint(m, state));
    }
  }
  RETURN_IF_ERROR(net.DownloadParams(m.params.data()));
  report.seconds = Since(t_all);
  report.images_per_second = static_cast<double>(n) * static_cast<double>(report.epochs.size()) /
                             std::max(report.train_seconds, 1e-9);
  return report;
}

Result<BatchStats> CudaLossAndGradient(const Mlp& m, const float* x, const uint8_t* labels,
                                       int rows, float scale, float* grad) {
  RETURN_IF_ERROR(CheckShape(m));
  if (rows < 1) return InvalidArgument("rows must be at least 1");
  DeviceMlp net;
  RETURN_IF_ERROR(net.Init(m, rows));
  DeviceArray<float> dx;
  DeviceArray<uint8_t> dy, correct;
  DeviceArray<double> loss;
  DeviceArray<DeviceSums> sums;
  RETURN_IF_ERROR(dx.Upload(x, static_cast<size_t>(rows) * m.inputs(), "the inputs"));
  RETURN_IF_ERROR(dy.Upload(labels, rows, "the labels"));
  RETURN_IF_ERROR(loss.Allocate(rows, "per-row losses"));
  RETURN_IF_ERROR(correct.Allocate(rows, "per-row results"));
  RETURN_IF_ERROR(sums.Allocate(1, "the sums"));
  RETURN_IF_ERROR(net.Gradient(dx.get(), dy.get(), rows, scale, loss.get(), correct.get()));
  RETURN_IF_ERROR(SumStats(loss.get(), correct.get(), rows, sums.get()));
  DeviceSums s{};
  RETURN_IF_ERROR(sums.Download(&s, 1, "the sums"));
  RETURN_IF_ERROR(net.DownloadGrad(grad));
  BatchStats stats;
  stats.loss_sum = s.loss;
  stats.correct = static_cast<int64_t>(s.correct);
  return stats;
}

}  // namespace epoch::fmnist
