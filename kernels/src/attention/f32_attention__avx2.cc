// AVX2 + FMA: C is computed in blocks of up to 6 rows × 16 columns held in 12 ymm accumulators.
// Each step of k loads two vectors of B and broadcasts one element of A per row: 8 loads for
// 12 FMAs, so the two FMA ports, not the load ports, bound the loop.
#include <immintrin.h>

#include "attention/f32_attention.h"

namespace surety {
namespace {

constexpr size_t kRows = 6;
constexpr size_t kLanes = 8;

template <size_t M>
void block_6x16(size_t k, const float* a, size_t lda, const float* b, size_t ldb, float* c, size_t ldc,
                bool accumulate) {
  __m256 lo[M];
  __m256 hi[M];
  for (size_t i = 0; i < M; ++i) {
    lo[i] = accumulate ? _mm256_loadu_ps(c + i * ldc) : _mm256_setzero_ps();
    hi[i] = accumulate ? _mm256_loadu_ps(c + i * ldc + kLanes) : _mm256_setzero_ps();
  }
  for (size_t p = 0; p < k; ++p) {
    const __m256 b_lo = _mm256_loadu_ps(b + p * ldb);
    const __m256 b_hi = _mm256_loadu_ps(b + p * ldb + kLanes);
    for (size_t i = 0; i < M; ++i) {
      const __m256 ai = _mm256_broadcast_ss(a + i * lda + p);
      lo[i] = _mm256_fmadd_ps(ai, b_lo, lo[i]);
      hi[i] = _mm256_fmadd_ps(ai, b_hi, hi[i]);
    }
  }
  for (size_t i = 0; i < M; ++i) {
    _mm256_storeu_ps(c + i * ldc, lo[i]);
    _mm256_storeu_ps(c + i * ldc + kLanes, hi[i]);
  }
}

using BlockFn = void (*)(size_t, const float*, size_t, const float*, size_t, float*, size_t, bool);
constexpr BlockFn kBlocks[kRows + 1] = {nullptr,          block_6x16<1>, block_6x16<2>, block_6x16<3>,
                                        block_6x16<4>, block_6x16<5>, block_6x16<6>};

}  // namespace

void f32_gemm__avx2_6x16(size_t m, size_t n, size_t k, const float* a, size_t lda, const float* b, size_t ldb,
                         float* c, size_t ldc, bool accumulate) {
  for (size_t i = 0; i < m; i += kRows) {
    const BlockFn block = kBlocks[m - i < kRows ? m - i : kRows];
    for (size_t j = 0; j < n; j += 2 * kLanes) {
      block(k, a + i * lda, lda, b + j, ldb, c + i * ldc + j, ldc, accumulate);
    }
  }
}

}  // namespace surety
