// AVX-512F: blocks of up to 6 rows × 32 columns in 12 zmm accumulators (the AVX2 kernel's shape
// at twice the width); a remaining 16 columns take one zmm per row.
#include <immintrin.h>

#include "attention/f32_attention.h"

namespace surety {
namespace {

constexpr size_t kRows = 6;
constexpr size_t kLanes = 16;

template <size_t M, size_t V>
void block(size_t k, const float* a, size_t lda, const float* b, size_t ldb, float* c, size_t ldc, bool accumulate) {
  __m512 acc[M][V];
  for (size_t i = 0; i < M; ++i) {
    for (size_t v = 0; v < V; ++v) {
      acc[i][v] = accumulate ? _mm512_loadu_ps(c + i * ldc + v * kLanes) : _mm512_setzero_ps();
    }
  }
  for (size_t p = 0; p < k; ++p) {
    __m512 bv[V];
    for (size_t v = 0; v < V; ++v) bv[v] = _mm512_loadu_ps(b + p * ldb + v * kLanes);
    for (size_t i = 0; i < M; ++i) {
      const __m512 ai = _mm512_set1_ps(a[i * lda + p]);
      for (size_t v = 0; v < V; ++v) acc[i][v] = _mm512_fmadd_ps(ai, bv[v], acc[i][v]);
    }
  }
  for (size_t i = 0; i < M; ++i) {
    for (size_t v = 0; v < V; ++v) _mm512_storeu_ps(c + i * ldc + v * kLanes, acc[i][v]);
  }
}

using BlockFn = void (*)(size_t, const float*, size_t, const float*, size_t, float*, size_t, bool);
// [rows][vectors - 1]
constexpr BlockFn kBlocks[kRows + 1][2] = {
    {nullptr, nullptr},           {block<1, 1>, block<1, 2>}, {block<2, 1>, block<2, 2>},
    {block<3, 1>, block<3, 2>}, {block<4, 1>, block<4, 2>}, {block<5, 1>, block<5, 2>},
    {block<6, 1>, block<6, 2>}};

}  // namespace

void f32_gemm__avx512f_6x32(size_t m, size_t n, size_t k, const float* a, size_t lda, const float* b, size_t ldb,
                            float* c, size_t ldc, bool accumulate) {
  for (size_t i = 0; i < m; i += kRows) {
    const size_t rows = m - i < kRows ? m - i : kRows;
    size_t j = 0;
    for (; j + 2 * kLanes <= n; j += 2 * kLanes) {
      kBlocks[rows][1](k, a + i * lda, lda, b + j, ldb, c + i * ldc + j, ldc, accumulate);
    }
    if (j < n) kBlocks[rows][0](k, a + i * lda, lda, b + j, ldb, c + i * ldc + j, ldc, accumulate);
  }
}

}  // namespace surety
