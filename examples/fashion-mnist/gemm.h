// Dense single-precision matrix products: the hot loop of fmnist's training.
//
// All matrices are row-major with an explicit leading dimension (the distance between
// rows, in elements). The product is register-blocked (4 rows x 16 columns of C held
// in registers while the shared dimension streams through) and blocked over the shared
// dimension so a 256 x 16 panel of B stays in L1. On x86-64 it is compiled twice, for
// AVX2+FMA and for the baseline, and the first call picks one for the CPU.
// Each element of C is summed in the same order on every call, so results are
// reproducible on a given machine (the two builds differ in the last bits: FMA rounds
// once).
//
// Thread-safety: pure functions over caller-owned memory; callers split work between
// threads by rows of C.
#pragma once

namespace epoch::fmnist {

// C[m x n] = A[m x k] * B[k x n]           (accumulate == false)
// C[m x n] += A[m x k] * B[k x n]          (accumulate == true)
void Gemm(int m, int n, int k, const float* a, int lda, const float* b, int ldb, float* c, int ldc,
          bool accumulate);

// Gemm's baseline build, whatever the CPU (so tests can check both builds).
void GemmBaseline(int m, int n, int k, const float* a, int lda, const float* b, int ldb, float* c,
                  int ldc, bool accumulate);

// out[cols x rows] = in[rows x cols] transposed.
void Transpose(int rows, int cols, const float* in, int ld_in, float* out, int ld_out);

}  // namespace epoch::fmnist
