// The scalar path: the plain triple loop, one multiply and one add per term in source order
// (the library is built with -ffp-contract=off), so its rounding is predictable.
#include "attention/f32_attention.h"

namespace surety {

void f32_gemm__scalar_1x1(size_t m, size_t n, size_t k, const float* a, size_t lda, const float* b,
                          size_t ldb, float* c, size_t ldc, bool accumulate) {
  for (size_t i = 0; i < m; ++i) {
    float* ci = c + i * ldc;
    if (!accumulate) {
      for (size_t j = 0; j < n; ++j) ci[j] = 0.0f;
    }
    const float* ai = a + i * lda;
    for (size_t p = 0; p < k; ++p) {
      const float aip = ai[p];
      const float* bp = b + p * ldb;
      for (size_t j = 0; j < n; ++j) ci[j] += aip * bp[j];
    }
  }
}

}  // namespace surety
