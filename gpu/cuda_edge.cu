// The CUDA edge of gpu/: device listing and the health probe kernel. See
// gpu/cuda_edge.h. Every cudaError_t is turned into a Status (or a device's
// `error`) right where the call is made; nothing here throws.
//
// Each device touched gets cudaDeviceReset() before we move on, so the agent keeps no
// primary context (and none of the GPU memory one costs) after start-up, and a GPU in
// EXCLUSIVE_PROCESS mode is free for the job that is given it.
#include <cuda_runtime.h>

#include <chrono>
#include <cstdio>
#include <mutex>
#include <thread>
#include <vector>

#include "gpu/cuda_edge.h"

namespace epoch::gpu::internal {

namespace {

std::mutex g_cuda_mu;  // Discover and Probe reset devices: one at a time.

std::string ErrorText(const char* call, cudaError_t err) {
  return std::string(call) + ": " + cudaGetErrorString(err) + " (" +
         std::to_string(static_cast<int>(err)) + ")";
}

// Non-sticky errors stay until read: clear so the next call reports its own.
Status CudaError(const char* call, cudaError_t err) {
  (void)cudaGetLastError();
  return Unavailable(ErrorText(call, err));
}

std::string FormatUuid(const cudaUUID_t& u) {
  const auto* b = reinterpret_cast<const unsigned char*>(u.bytes);
  char s[64];
  std::snprintf(s, sizeof(s),
                "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0],
                b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13],
                b[14], b[15]);
  return s;
}

// A word of the probe pattern: a cheap integer hash of the position, so a stuck bit,
// a swapped page or a stale buffer all show up as mismatches.
__host__ __device__ inline uint32_t Pattern(size_t i, uint32_t seed) {
  uint32_t x = static_cast<uint32_t>(i) * 2654435761u ^ static_cast<uint32_t>(i >> 32) ^ seed;
  x ^= x >> 16;
  x *= 0x7feb352du;
  x ^= x >> 15;
  return x;
}

__global__ void FillKernel(uint32_t* buf, size_t n, uint32_t seed) {
  size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    buf[i] = Pattern(i, seed);
  }
}

// out[0] += words that differ from the pattern, out[1] += the sum of all words.
__global__ void CheckKernel(const uint32_t* buf, size_t n, uint32_t seed,
                            unsigned long long* out) {
  unsigned long long bad = 0, sum = 0;
  size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    uint32_t v = buf[i];
    bad += v != Pattern(i, seed);
    sum += v;
  }
  if (bad) atomicAdd(&out[0], bad);
  atomicAdd(&out[1], sum);
}

// The probe proper; the caller frees `*buf`/`*out` and resets the device unless
// `*still_running` (the kernels outlived the deadline; freeing now would block).
Status RunProbe(size_t words, int timeout_ms, uint32_t** buf, unsigned long long** out,
                bool* still_running) {
  const uint32_t seed = 0x9e3779b9u;
  cudaError_t err;
  if ((err = cudaMalloc(reinterpret_cast<void**>(buf), words * sizeof(uint32_t))) != cudaSuccess) {
    return CudaError("cudaMalloc", err);
  }
  if ((err = cudaMalloc(reinterpret_cast<void**>(out), 2 * sizeof(unsigned long long))) !=
      cudaSuccess) {
    return CudaError("cudaMalloc", err);
  }
  if ((err = cudaMemset(*out, 0, 2 * sizeof(unsigned long long))) != cudaSuccess) {
    return CudaError("cudaMemset", err);
  }
  const int threads = 256, blocks = 1024;
  FillKernel<<<blocks, threads>>>(*buf, words, seed);
  if ((err = cudaGetLastError()) != cudaSuccess) return CudaError("FillKernel launch", err);
  CheckKernel<<<blocks, threads>>>(*buf, words, seed, *out);
  if ((err = cudaGetLastError()) != cudaSuccess) return CudaError("CheckKernel launch", err);

  // Wait with a deadline: a wedged GPU must not hang the agent's start-up forever.
  cudaEvent_t done;
  if ((err = cudaEventCreateWithFlags(&done, cudaEventDisableTiming)) != cudaSuccess) {
    return CudaError("cudaEventCreate", err);
  }
  if ((err = cudaEventRecord(done)) != cudaSuccess) {
    (void)cudaEventDestroy(done);
    return CudaError("cudaEventRecord", err);
  }
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while ((err = cudaEventQuery(done)) == cudaErrorNotReady) {
    if (std::chrono::steady_clock::now() > deadline) {
      *still_running = true;
      return Unavailable("probe kernels did not finish within " + std::to_string(timeout_ms) +
                         " ms");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  (void)cudaEventDestroy(done);
  if (err != cudaSuccess) return CudaError("probe kernels", err);

  unsigned long long result[2] = {0, 0};
  if ((err = cudaMemcpy(result, *out, sizeof(result), cudaMemcpyDeviceToHost)) != cudaSuccess) {
    return CudaError("cudaMemcpy", err);
  }
  unsigned long long expected_sum = 0;
  for (size_t i = 0; i < words; ++i) expected_sum += Pattern(i, seed);
  if (result[0] != 0 || result[1] != expected_sum) {
    return Corruption("probe checksum mismatch: " + std::to_string(result[0]) + " of " +
                      std::to_string(words) + " words differ (sum " + std::to_string(result[1]) +
                      ", expected " + std::to_string(expected_sum) + ")");
  }
  // The copy engine's view too: read the whole buffer back and compare on the host.
  std::vector<uint32_t> host(words);
  if ((err = cudaMemcpy(host.data(), *buf, words * sizeof(uint32_t), cudaMemcpyDeviceToHost)) !=
      cudaSuccess) {
    return CudaError("cudaMemcpy", err);
  }
  for (size_t i = 0; i < words; ++i) {
    if (host[i] != Pattern(i, seed)) {
      return Corruption("probe read-back mismatch at word " + std::to_string(i));
    }
  }
  return Status::Ok();
}

}  // namespace

bool Compiled() { return true; }

Status ListDevices(std::vector<CudaDevice>* out) {
  std::lock_guard<std::mutex> lock(g_cuda_mu);
  out->clear();
  int n = 0;
  cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) return CudaError("cudaGetDeviceCount", err);
  for (int i = 0; i < n; ++i) {
    CudaDevice d;
    d.index = i;
    cudaDeviceProp p{};
    if ((err = cudaGetDeviceProperties(&p, i)) != cudaSuccess) {
      d.error = CudaError("cudaGetDeviceProperties", err).message();
      out->push_back(std::move(d));
      continue;
    }
    d.uuid = FormatUuid(p.uuid);
    d.name = p.name;
    d.memory_bytes = static_cast<int64_t>(p.totalGlobalMem);
    d.cc_major = p.major;
    d.cc_minor = p.minor;
    char bus[32];
    std::snprintf(bus, sizeof(bus), "%04x:%02x:%02x.0", static_cast<unsigned>(p.pciDomainID),
                  static_cast<unsigned>(p.pciBusID), static_cast<unsigned>(p.pciDeviceID));
    d.pci_bus_id = bus;
    size_t free_b = 0, total_b = 0;
    if ((err = cudaSetDevice(i)) != cudaSuccess) {
      d.error = CudaError("cudaSetDevice", err).message();
    } else if ((err = cudaMemGetInfo(&free_b, &total_b)) != cudaSuccess) {
      d.error = CudaError("cudaMemGetInfo", err).message();
    } else {
      d.free_bytes = static_cast<int64_t>(free_b);
    }
    (void)cudaDeviceReset();  // release the context cudaMemGetInfo created
    (void)cudaGetLastError();
    out->push_back(std::move(d));
  }
  return Status::Ok();
}

Status ProbeDevice(int index, size_t bytes, int timeout_ms) {
  std::lock_guard<std::mutex> lock(g_cuda_mu);
  cudaError_t err = cudaSetDevice(index);
  if (err != cudaSuccess) return CudaError("cudaSetDevice", err);
  uint32_t* buf = nullptr;
  unsigned long long* out = nullptr;
  bool still_running = false;
  Status st = RunProbe(bytes / sizeof(uint32_t), timeout_ms, &buf, &out, &still_running);
  if (still_running) return st;
  if (buf != nullptr) (void)cudaFree(buf);
  if (out != nullptr) (void)cudaFree(out);
  (void)cudaDeviceReset();
  (void)cudaGetLastError();
  return st;
}

}  // namespace epoch::gpu::internal
