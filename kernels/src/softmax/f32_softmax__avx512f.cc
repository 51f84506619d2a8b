// AVX-512F softmax microkernels (16 floats per vector). Compiled with -mavx512f -mavx2 -mfma and
// reached only through the variant table after the CPU probe (cpuid + XCR0 opmask/ZMM state).
// Uses AVX-512F instructions only (no BW/DQ/VL), so any AVX-512 CPU runs it.
//
// The mathematics is that of the AVX2 kernels (f32_softmax__avx2.cc): p5 exponential with
// two-constant Cody-Waite reduction, (mantissa, exponent) accumulation, double folding of long
// sums. What AVX-512F changes:
//   * vscalefps computes p * 2^d for any d, flushing to 0 below the subnormal range, so the
//     AVX2 magic-bias construction of 2^d and its clamp at -127 are not needed;
//   * opmask registers give exact tails (masked loads and stores touch only the row).
//
// GCC 12's avx512fintrin.h starts unmasked intrinsics from _mm512_undefined_*(), which
// -Wmaybe-uninitialized reports once they are inlined (GCC bug 105593, fixed in GCC 13); the
// values are never read, so the warning is silenced for this file only.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#include <immintrin.h>

#include <cstring>

#include "softmax/f32_softmax.h"

namespace surety {
namespace {

constexpr int kLanes = 16;
constexpr size_t kBlock = 1024;

const float kLog2e = 0x1.715476p+0f;
const float kMinusLn2Hi = -0x1.62E43p-1f;
const float kMinusLn2Lo = 0x1.05C61p-29f;
const float kC1 = 0x1.FFFFF6p-1f;
const float kC2 = 0x1.FFFDC6p-2f;
const float kC3 = 0x1.555A80p-3f;
const float kC4 = 0x1.573A1Ap-5f;
const float kC5 = 0x1.0F9F9Cp-7f;
// e^d for d below this is 0 in float (below half the smallest subnormal); clamping there keeps
// -inf out of the range reduction, where it would make NaN.
const float kExpMinInput = -110.0f;

inline __mmask16 lanes_below(size_t n) { return static_cast<__mmask16>((1u << n) - 1u); }

inline __mmask16 excluded_lanes(const uint8_t* mask) {
  const __m512i bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(mask)));
  return _mm512_cmpeq_epi32_mask(bytes, _mm512_setzero_si512());
}

// For a tail of n < 16 bytes (copied: nothing past the row is read); lanes past n excluded.
inline __mmask16 excluded_lanes_tail(const uint8_t* mask, size_t n) {
  uint8_t bytes[kLanes] = {};
  std::memcpy(bytes, mask, n);
  return excluded_lanes(bytes);
}

template <bool kMasked>
inline __m512 scaled(__m512 x, __m512 scale, const uint8_t* mask, size_t offset) {
  __m512 z = _mm512_mul_ps(x, scale);
  if (kMasked) z = _mm512_mask_mov_ps(z, excluded_lanes(mask + offset), _mm512_set1_ps(-__builtin_inff()));
  return z;
}

inline __m512 poly5(__m512 t) {
  __m512 q = _mm512_fmadd_ps(_mm512_set1_ps(kC5), t, _mm512_set1_ps(kC4));
  q = _mm512_fmadd_ps(q, t, _mm512_set1_ps(kC3));
  q = _mm512_fmadd_ps(q, t, _mm512_set1_ps(kC2));
  q = _mm512_fmadd_ps(q, t, _mm512_set1_ps(kC1));
  return _mm512_fmadd_ps(q, t, _mm512_set1_ps(1.0f));
}

// e^z = p * 2^n, z clamped below at kExtExpMinInput (NaN passes: second operand of maxps).
inline void exp_ext(__m512 z, __m512* p, __m512* n) {
  z = _mm512_max_ps(_mm512_set1_ps(kExtExpMinInput), z);
  const __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(z, _mm512_set1_ps(kLog2e)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 t = _mm512_fmadd_ps(k, _mm512_set1_ps(kMinusLn2Hi), z);
  t = _mm512_fmadd_ps(k, _mm512_set1_ps(kMinusLn2Lo), t);
  *p = poly5(t);
  *n = k;
}

struct ExtTotals {
  __m512d m_lo = _mm512_setzero_pd();
  __m512d m_hi = _mm512_setzero_pd();
  __m512 e = _mm512_set1_ps(-65536.0f);
};

inline __m256 low_half(__m512 v) { return _mm512_castps512_ps256(v); }
inline __m256 high_half(__m512 v) {
  return _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
}

inline void fold(ExtTotals* tot, __m512 m, __m512 e) {
  const __m512 e_new = _mm512_max_ps(tot->e, e);
  const __m512 scaled_m = _mm512_scalef_ps(m, _mm512_sub_ps(e, e_new));  // exact or 0
  const __m512d s_lo = _mm512_cvtps_pd(low_half(_mm512_sub_ps(tot->e, e_new)));
  const __m512d s_hi = _mm512_cvtps_pd(high_half(_mm512_sub_ps(tot->e, e_new)));
  tot->m_lo = _mm512_add_pd(_mm512_scalef_pd(tot->m_lo, s_lo), _mm512_cvtps_pd(low_half(scaled_m)));
  tot->m_hi = _mm512_add_pd(_mm512_scalef_pd(tot->m_hi, s_hi), _mm512_cvtps_pd(high_half(scaled_m)));
  tot->e = e_new;
}

ExtExpSum reduce_totals(const ExtTotals& tot) {
  alignas(64) double m[kLanes];
  alignas(64) float e[kLanes];
  _mm512_store_pd(m, tot.m_lo);
  _mm512_store_pd(m + 8, tot.m_hi);
  _mm512_store_ps(e, tot.e);
  ExtExpSum parts[kLanes];
  for (int i = 0; i < kLanes; ++i) parts[i] = {static_cast<float>(m[i]), e[i]};
  return ext_exp_sum_merge(parts, kLanes);
}

// Pass 1 (see the AVX2 kernel for the accumulation rule and why it cannot overflow).
template <int kVectors, int kAcc, bool kMasked>
ExtExpSum raddextexp(size_t n, const float* x, const uint8_t* mask, float scale) {
  static_assert(kBlock % (kVectors * kLanes) == 0, "a block is a whole number of iterations");
  const __m512 vscale = _mm512_set1_ps(scale);
  const __m512 minus_inf = _mm512_set1_ps(-__builtin_inff());
  ExtTotals tot;
  while (n > 0) {
    __m512 acc_m[kAcc];
    __m512 acc_e[kAcc];
    for (int a = 0; a < kAcc; ++a) {
      acc_m[a] = _mm512_setzero_ps();
      acc_e[a] = _mm512_set1_ps(-65536.0f);
    }
    size_t block = n < kBlock ? n : kBlock;
    n -= block;
    for (; block >= kVectors * kLanes; block -= kVectors * kLanes) {
      __m512 p[kVectors];
      __m512 k[kVectors];
      for (int j = 0; j < kVectors; ++j) {
        exp_ext(scaled<kMasked>(_mm512_loadu_ps(x + j * kLanes), vscale, mask, j * kLanes), &p[j], &k[j]);
      }
      __m512 e_new[kAcc];
      for (int a = 0; a < kAcc; ++a) e_new[a] = acc_e[a];
      for (int j = 0; j < kVectors; ++j) e_new[j % kAcc] = _mm512_max_ps(e_new[j % kAcc], k[j]);
      for (int a = 0; a < kAcc; ++a) {
        acc_m[a] = _mm512_scalef_ps(acc_m[a], _mm512_sub_ps(acc_e[a], e_new[a]));
        acc_e[a] = e_new[a];
      }
      for (int j = 0; j < kVectors; ++j) {
        const int a = j % kAcc;
        acc_m[a] = _mm512_add_ps(acc_m[a], _mm512_scalef_ps(p[j], _mm512_sub_ps(k[j], acc_e[a])));
      }
      x += kVectors * kLanes;
      if (kMasked) mask += kVectors * kLanes;
    }
    while (block > 0) {
      const size_t count = block < kLanes ? block : kLanes;
      const __mmask16 live = lanes_below(count);
      __m512 z = _mm512_mul_ps(_mm512_maskz_loadu_ps(live, x), vscale);
      const __mmask16 dead = kMasked ? (count == kLanes ? excluded_lanes(mask) : excluded_lanes_tail(mask, count))
                                     : static_cast<__mmask16>(~live);
      z = _mm512_mask_mov_ps(z, dead, minus_inf);
      __m512 p;
      __m512 k;
      exp_ext(z, &p, &k);
      const __m512 e_new = _mm512_max_ps(acc_e[0], k);
      acc_m[0] = _mm512_add_ps(_mm512_scalef_ps(acc_m[0], _mm512_sub_ps(acc_e[0], e_new)),
                               _mm512_scalef_ps(p, _mm512_sub_ps(k, e_new)));
      acc_e[0] = e_new;
      x += count;
      if (kMasked) mask += count;
      block -= count;
    }
    for (int a = 0; a < kAcc; ++a) fold(&tot, acc_m[a], acc_e[a]);
  }
  return reduce_totals(tot);
}

// Pass 2: y = p * (1 / S_m) * 2^(n - S_e); excluded and clamped lanes underflow to exactly 0.
template <int kVectors, bool kMasked>
void vscaleextexp(size_t n, const float* x, const uint8_t* mask, float scale, float inv_mantissa,
                  float exponent, float* y) {
  const __m512 vscale = _mm512_set1_ps(scale);
  const __m512 vinv = _mm512_set1_ps(inv_mantissa);
  const __m512 vexp = _mm512_set1_ps(exponent);
  for (; n >= kVectors * kLanes; n -= kVectors * kLanes) {
    for (int j = 0; j < kVectors; ++j) {
      __m512 p;
      __m512 k;
      exp_ext(scaled<kMasked>(_mm512_loadu_ps(x + j * kLanes), vscale, mask, j * kLanes), &p, &k);
      _mm512_storeu_ps(y + j * kLanes, _mm512_scalef_ps(_mm512_mul_ps(p, vinv), _mm512_sub_ps(k, vexp)));
    }
    x += kVectors * kLanes;
    y += kVectors * kLanes;
    if (kMasked) mask += kVectors * kLanes;
  }
  while (n > 0) {
    const size_t count = n < kLanes ? n : kLanes;
    const __mmask16 live = lanes_below(count);
    __m512 z = _mm512_mul_ps(_mm512_maskz_loadu_ps(live, x), vscale);
    if (kMasked) {
      const __mmask16 dead = count == kLanes ? excluded_lanes(mask) : excluded_lanes_tail(mask, count);
      z = _mm512_mask_mov_ps(z, dead, _mm512_set1_ps(-__builtin_inff()));
    }
    __m512 p;
    __m512 k;
    exp_ext(z, &p, &k);
    _mm512_mask_storeu_ps(y, live, _mm512_scalef_ps(_mm512_mul_ps(p, vinv), _mm512_sub_ps(k, vexp)));
    x += count;
    y += count;
    if (kMasked) mask += count;
    n -= count;
  }
}

template <bool kMasked>
float rmax(size_t n, const float* x, const uint8_t* mask, float scale) {
  const __m512 vscale = _mm512_set1_ps(scale);
  const __m512 minus_inf = _mm512_set1_ps(-__builtin_inff());
  __m512 acc[4] = {minus_inf, minus_inf, minus_inf, minus_inf};
  for (; n >= 4 * kLanes; n -= 4 * kLanes) {
    for (int j = 0; j < 4; ++j) {
      acc[j] = _mm512_max_ps(acc[j], scaled<kMasked>(_mm512_loadu_ps(x + j * kLanes), vscale, mask, j * kLanes));
    }
    x += 4 * kLanes;
    if (kMasked) mask += 4 * kLanes;
  }
  while (n > 0) {
    const size_t count = n < kLanes ? n : kLanes;
    const __mmask16 live = lanes_below(count);
    __m512 z = _mm512_mul_ps(_mm512_maskz_loadu_ps(live, x), vscale);
    const __mmask16 dead = kMasked ? (count == kLanes ? excluded_lanes(mask) : excluded_lanes_tail(mask, count))
                                   : static_cast<__mmask16>(~live);
    acc[0] = _mm512_max_ps(acc[0], _mm512_mask_mov_ps(z, dead, minus_inf));
    x += count;
    if (kMasked) mask += count;
    n -= count;
  }
  return _mm512_reduce_max_ps(_mm512_max_ps(_mm512_max_ps(acc[0], acc[1]), _mm512_max_ps(acc[2], acc[3])));
}

// e^d for d = z - max <= 0; below kExpMinInput (including -inf) the result underflows to 0.
inline __m512 exp_nonpositive(__m512 d) {
  d = _mm512_max_ps(_mm512_set1_ps(kExpMinInput), d);
  const __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(d, _mm512_set1_ps(kLog2e)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 t = _mm512_fmadd_ps(k, _mm512_set1_ps(kMinusLn2Hi), d);
  t = _mm512_fmadd_ps(k, _mm512_set1_ps(kMinusLn2Lo), t);
  return _mm512_scalef_ps(poly5(t), k);
}

template <int kVectors, bool kMasked>
float raddstoreexpminusmax(size_t n, const float* x, const uint8_t* mask, float scale, float max,
                           float* y) {
  static_assert(kBlock % (kVectors * kLanes) == 0, "a block is a whole number of iterations");
  const __m512 vscale = _mm512_set1_ps(scale);
  const __m512 vmax = _mm512_set1_ps(max);
  __m512d total = _mm512_setzero_pd();
  while (n > 0) {
    __m512 acc[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};
    size_t block = n < kBlock ? n : kBlock;
    n -= block;
    for (; block >= kVectors * kLanes; block -= kVectors * kLanes) {
      for (int j = 0; j < kVectors; ++j) {
        const __m512 z = scaled<kMasked>(_mm512_loadu_ps(x + j * kLanes), vscale, mask, j * kLanes);
        const __m512 e = exp_nonpositive(_mm512_sub_ps(z, vmax));
        _mm512_storeu_ps(y + j * kLanes, e);
        acc[j % 2] = _mm512_add_ps(acc[j % 2], e);
      }
      x += kVectors * kLanes;
      y += kVectors * kLanes;
      if (kMasked) mask += kVectors * kLanes;
    }
    while (block > 0) {
      const size_t count = block < kLanes ? block : kLanes;
      const __mmask16 live = lanes_below(count);
      __m512 z = _mm512_mul_ps(_mm512_maskz_loadu_ps(live, x), vscale);
      const __mmask16 dead = kMasked ? (count == kLanes ? excluded_lanes(mask) : excluded_lanes_tail(mask, count))
                                     : static_cast<__mmask16>(~live);
      z = _mm512_mask_mov_ps(z, dead, _mm512_set1_ps(-__builtin_inff()));
      const __m512 e = exp_nonpositive(_mm512_sub_ps(z, vmax));
      _mm512_mask_storeu_ps(y, live, e);
      acc[0] = _mm512_add_ps(acc[0], e);
      x += count;
      y += count;
      if (kMasked) mask += count;
      block -= count;
    }
    const __m512 a = _mm512_add_ps(acc[0], acc[1]);
    total = _mm512_add_pd(total, _mm512_cvtps_pd(low_half(a)));
    total = _mm512_add_pd(total, _mm512_cvtps_pd(high_half(a)));
  }
  return static_cast<float>(_mm512_reduce_add_pd(total));
}

}  // namespace

ExtExpSum f32_raddextexp__avx512f_p5_scalef_u64_acc2(size_t n, const float* x, const uint8_t* mask, float scale) {
  return mask != nullptr ? raddextexp<4, 2, true>(n, x, mask, scale) : raddextexp<4, 2, false>(n, x, mask, scale);
}

void f32_vscaleextexp__avx512f_p5_scalef_u32(size_t n, const float* x, const uint8_t* mask, float scale,
                                             float inv_mantissa, float exponent, float* y) {
  if (mask != nullptr) {
    vscaleextexp<2, true>(n, x, mask, scale, inv_mantissa, exponent, y);
  } else {
    vscaleextexp<2, false>(n, x, mask, scale, inv_mantissa, exponent, y);
  }
}

float f32_rmax__avx512f_u64_acc4(size_t n, const float* x, const uint8_t* mask, float scale) {
  return mask != nullptr ? rmax<true>(n, x, mask, scale) : rmax<false>(n, x, mask, scale);
}

float f32_raddstoreexpminusmax__avx512f_rr2_p5_scalef_u32_acc2(size_t n, const float* x, const uint8_t* mask,
                                                              float scale, float max, float* y) {
  return mask != nullptr ? raddstoreexpminusmax<2, true>(n, x, mask, scale, max, y)
                         : raddstoreexpminusmax<2, false>(n, x, mask, scale, max, y);
}

void f32_vmulc__avx512f_u32(size_t n, float* y, float c) {
  const __m512 vc = _mm512_set1_ps(c);
  for (; n >= 2 * kLanes; n -= 2 * kLanes, y += 2 * kLanes) {
    _mm512_storeu_ps(y, _mm512_mul_ps(_mm512_loadu_ps(y), vc));
    _mm512_storeu_ps(y + kLanes, _mm512_mul_ps(_mm512_loadu_ps(y + kLanes), vc));
  }
  while (n > 0) {
    const size_t count = n < kLanes ? n : kLanes;
    const __mmask16 live = lanes_below(count);
    _mm512_mask_storeu_ps(y, live, _mm512_mul_ps(_mm512_maskz_loadu_ps(live, y), vc));
    y += count;
    n -= count;
  }
}

void f32_vaxpy__avx512f_u16(size_t n, const float* x, float a, float* acc) {
  const __m512 va = _mm512_set1_ps(a);
  while (n > 0) {
    const size_t count = n < kLanes ? n : kLanes;
    const __mmask16 live = lanes_below(count);
    const __m512 sum = _mm512_fmadd_ps(va, _mm512_maskz_loadu_ps(live, x), _mm512_maskz_loadu_ps(live, acc));
    _mm512_mask_storeu_ps(acc, live, sum);
    x += count;
    acc += count;
    n -= count;
  }
}

float f32_vmulc_rdot__avx512f_u16(size_t n, float* y, float c, const float* v) {
  const __m512 vc = _mm512_set1_ps(c);
  __m512 acc = _mm512_setzero_ps();
  while (n > 0) {
    const size_t count = n < kLanes ? n : kLanes;
    const __mmask16 live = lanes_below(count);
    const __m512 scaled_y = _mm512_mul_ps(_mm512_maskz_loadu_ps(live, y), vc);
    _mm512_mask_storeu_ps(y, live, scaled_y);
    acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(live, v), scaled_y, acc);
    y += count;
    v += count;
    n -= count;
  }
  return _mm512_reduce_add_ps(acc);
}

}  // namespace surety
