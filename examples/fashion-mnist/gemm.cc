#include "examples/fashion-mnist/gemm.h"

#include <algorithm>
#include <cstring>

// The product's body is compiled twice, for AVX2+FMA and for the baseline, and Gemm
// picks one by CPU on first use. (Not GCC's target_clones: its ifunc resolver runs
// during relocation, before a sanitizer runtime is up, and crashes TSan builds.)
#if defined(__x86_64__) && defined(__GNUC__)
#define FMNIST_DISPATCH 1
#else
#define FMNIST_DISPATCH 0
#endif

namespace epoch::fmnist {

namespace {
// 8 floats, as a GCC/Clang vector: one AVX register, or two SSE registers in the
// baseline build. Loads and stores go through memcpy (no alignment is assumed).
typedef float V8 __attribute__((vector_size(32)));
constexpr int kKc = 256;  // the shared dimension's block: a 256 x 16 panel of B is 16 KiB

// Inlined into each build below, which compiles it for that build's instruction set.
__attribute__((always_inline)) inline void GemmBody(int m, int n, int k, const float* a, int lda,
                                                    const float* b, int ldb, float* c, int ldc,
                                                    bool accumulate) {
  if (!accumulate) {
    for (int i = 0; i < m; ++i) std::fill_n(c + static_cast<long>(i) * ldc, n, 0.f);
  }
  const int n16 = n - n % 16;
  const int m4 = m - m % 4;
  for (int p0 = 0; p0 < k; p0 += kKc) {
    const int pe = std::min(k, p0 + kKc);
    for (int j = 0; j < n16; j += 16) {
      int i = 0;
      for (; i < m4; i += 4) {
        float* c0 = c + static_cast<long>(i) * ldc + j;
        float* c1 = c0 + ldc;
        float* c2 = c1 + ldc;
        float* c3 = c2 + ldc;
        V8 c00, c01, c10, c11, c20, c21, c30, c31;
        std::memcpy(&c00, c0, 32);
        std::memcpy(&c01, c0 + 8, 32);
        std::memcpy(&c10, c1, 32);
        std::memcpy(&c11, c1 + 8, 32);
        std::memcpy(&c20, c2, 32);
        std::memcpy(&c21, c2 + 8, 32);
        std::memcpy(&c30, c3, 32);
        std::memcpy(&c31, c3 + 8, 32);
        const float* a0 = a + static_cast<long>(i) * lda;
        const float* a1 = a0 + lda;
        const float* a2 = a1 + lda;
        const float* a3 = a2 + lda;
        const float* bp = b + static_cast<long>(p0) * ldb + j;
        for (int p = p0; p < pe; ++p, bp += ldb) {
          V8 b0, b1;
          std::memcpy(&b0, bp, 32);
          std::memcpy(&b1, bp + 8, 32);
          const float x0 = a0[p], x1 = a1[p], x2 = a2[p], x3 = a3[p];
          c00 += x0 * b0;
          c01 += x0 * b1;
          c10 += x1 * b0;
          c11 += x1 * b1;
          c20 += x2 * b0;
          c21 += x2 * b1;
          c30 += x3 * b0;
          c31 += x3 * b1;
        }
        std::memcpy(c0, &c00, 32);
        std::memcpy(c0 + 8, &c01, 32);
        std::memcpy(c1, &c10, 32);
        std::memcpy(c1 + 8, &c11, 32);
        std::memcpy(c2, &c20, 32);
        std::memcpy(c2 + 8, &c21, 32);
        std::memcpy(c3, &c30, 32);
        std::memcpy(c3 + 8, &c31, 32);
      }
      for (; i < m; ++i) {  // the last m % 4 rows, one at a time
        float* c0 = c + static_cast<long>(i) * ldc + j;
        V8 c00, c01;
        std::memcpy(&c00, c0, 32);
        std::memcpy(&c01, c0 + 8, 32);
        const float* a0 = a + static_cast<long>(i) * lda;
        const float* bp = b + static_cast<long>(p0) * ldb + j;
        for (int p = p0; p < pe; ++p, bp += ldb) {
          V8 b0, b1;
          std::memcpy(&b0, bp, 32);
          std::memcpy(&b1, bp + 8, 32);
          c00 += a0[p] * b0;
          c01 += a0[p] * b1;
        }
        std::memcpy(c0, &c00, 32);
        std::memcpy(c0 + 8, &c01, 32);
      }
    }
    // The last n % 16 columns (the 10-wide output layer): small, plain loops.
    for (int i = 0; i < m; ++i) {
      const float* ai = a + static_cast<long>(i) * lda;
      float* ci = c + static_cast<long>(i) * ldc;
      for (int j = n16; j < n; ++j) {
        float s = ci[j];
        for (int p = p0; p < pe; ++p) s += ai[p] * b[static_cast<long>(p) * ldb + j];
        ci[j] = s;
      }
    }
  }
}

#if FMNIST_DISPATCH
__attribute__((target("avx2,fma"))) void GemmAvx2(int m, int n, int k, const float* a, int lda,
                                                  const float* b, int ldb, float* c, int ldc,
                                                  bool accumulate) {
  GemmBody(m, n, k, a, lda, b, ldb, c, ldc, accumulate);
}
#endif

}  // namespace

void GemmBaseline(int m, int n, int k, const float* a, int lda, const float* b, int ldb, float* c,
                  int ldc, bool accumulate) {
  GemmBody(m, n, k, a, lda, b, ldb, c, ldc, accumulate);
}

void Gemm(int m, int n, int k, const float* a, int lda, const float* b, int ldb, float* c, int ldc,
          bool accumulate) {
  using Impl = void (*)(int, int, int, const float*, int, const float*, int, float*, int, bool);
#if FMNIST_DISPATCH
  static const Impl impl =
      __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? GemmAvx2 : GemmBaseline;
#else
  static const Impl impl = GemmBaseline;
#endif
  impl(m, n, k, a, lda, b, ldb, c, ldc, accumulate);
}

void Transpose(int rows, int cols, const float* in, int ld_in, float* out, int ld_out) {
  constexpr int kBlock = 32;
  for (int i0 = 0; i0 < rows; i0 += kBlock) {
    for (int j0 = 0; j0 < cols; j0 += kBlock) {
      const int ie = std::min(rows, i0 + kBlock), je = std::min(cols, j0 + kBlock);
      for (int i = i0; i < ie; ++i) {
        for (int j = j0; j < je; ++j) {
          out[static_cast<long>(j) * ld_out + i] = in[static_cast<long>(i) * ld_in + j];
        }
      }
    }
  }
}

}  // namespace epoch::fmnist
