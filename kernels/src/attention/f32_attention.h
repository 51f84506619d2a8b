// The matrix microkernel of SparseAttention, one per instruction-set path.
//
// Attention on a tile of queries and keys is two small matrix products around a softmax:
// scores = Q_tile · K_tileᵀ and O += P · V_tile. Both are C[m×n] (+)= A[m×k] · B[k×n] with A and
// B row-major: SparseAttention packs K transposed and V with their widths padded to
// kF32GemmColumnMultiple, so the microkernels never see a column tail. The softmax between the
// two uses the softmax microkernels of the same path (f32_softmax.h).
//
// Names say what, then how: f32_gemm__avx2_6x16 keeps a 6-row × 16-column block of C in
// registers (12 ymm accumulators) and streams k, broadcasting A and loading two vectors of B.
#pragma once

#include <cstddef>

#include "isa.h"

namespace surety {

// n is a multiple of this in every call; packed buffers pad their rows to it.
constexpr size_t kF32GemmColumnMultiple = 16;

// C[i][j] = (accumulate ? C[i][j] : 0) + Σ_p A[i][p]·B[p][j], for i < m, j < n, p < k; row i of A
// starts at a + i·lda, row p of B at b + p·ldb, row i of C at c + i·ldc. Any m; n a multiple of
// kF32GemmColumnMultiple; k ≥ 0.
using F32GemmFn = void (*)(size_t m, size_t n, size_t k, const float* a, size_t lda,
                           const float* b, size_t ldb, float* c, size_t ldc, bool accumulate);

struct F32AttentionKernels {
  Isa isa;
  F32GemmFn gemm;
};

#define SURETY_F32_ATTENTION_VARIANT(isa, gemm)                                          \
  void gemm(size_t m, size_t n, size_t k, const float* a, size_t lda, const float* b, \
            size_t ldb, float* c, size_t ldc, bool accumulate);
#include "attention/f32_attention_variants.inc"
#undef SURETY_F32_ATTENTION_VARIANT

// The microkernels of `isa`'s path.
const F32AttentionKernels& f32_attention_kernels(Isa isa);

}  // namespace surety
