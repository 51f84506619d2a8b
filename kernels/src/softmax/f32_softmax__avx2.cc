// AVX2 + FMA softmax microkernels (8 floats per vector). Compiled with -mavx2 -mfma; reached only
// through the variant table after the CPU probe says the path is usable.
//
// The exponential (XNNPACK's "p5", constants from its avx2-p5 kernels):
//   e^z = 2^n * e^t,  n = round(z * log2 e),  t = z - n * ln2,  |t| <= ln2 / 2 (+ rounding)
//   ln2 is split into ln2_hi + ln2_lo (Cody-Waite): n * ln2_hi is nearly exact in one FMA and
//   ln2_lo corrects the remainder, so t keeps its accuracy for the |n| <= 2^16 used here.
//   e^t ~ 1 + t * (c1 + t * (c2 + t * (c3 + t * (c4 + t * c5)))), a degree-5 minimax fit on
//   [-ln2/2, ln2/2] (about 2 ulp).
// The exponent is the float-valued integer n from the reduction, never extracted from IEEE bits,
// which is what makes the two-pass (mantissa, exponent) form cheap.
//
// Only intrinsics and plain loops here: no inline library functions that could be emitted with
// AVX2 instructions and shared with generic code (see ext_exp_sum_merge in f32_softmax.h).
#include <immintrin.h>

#include <cstring>

#include "softmax/f32_softmax.h"

namespace surety {
namespace {

constexpr int kLanes = 8;

const float kLog2e = 0x1.715476p+0f;
const float kMinusLn2Hi = -0x1.62E43p-1f;
const float kMinusLn2Lo = 0x1.05C61p-29f;
const float kC1 = 0x1.FFFFF6p-1f;
const float kC2 = 0x1.FFFDC6p-2f;
const float kC3 = 0x1.555A80p-3f;
const float kC4 = 0x1.573A1Ap-5f;
const float kC5 = 0x1.0F9F9Cp-7f;
// 1.5 * 2^23 + 127: adding it to an integer-valued float d in [-127, 0] leaves d + 127 in the
// low mantissa bits; shifted left by 23 they are the biased exponent of 2^d (0 -> +0.0).
const float kMagicBias = 0x1.8000FEp23f;
// exp of anything below this is subnormal in float; the reload path flushes it to 0.
const float kDenormCutoff = -0x1.5D589Ep6f;

// Lanes [0, n) of a vector, for n in [0, 8]: maskload/maskstore never touch the other lanes'
// memory, so tails read and write exactly the row.
inline __m256i lanes_below(size_t n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)),
                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// All-ones in the lanes whose mask byte is 0 (excluded), for 8 bytes at `mask`.
inline __m256 excluded_lanes(const uint8_t* mask) {
  const __m256i bytes = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(mask)));
  return _mm256_castsi256_ps(_mm256_cmpeq_epi32(bytes, _mm256_setzero_si256()));
}

// The same for a tail of n < 8 bytes (copied, so nothing past the row is read); the lanes past
// n come out excluded.
inline __m256 excluded_lanes_tail(const uint8_t* mask, size_t n) {
  uint8_t bytes[kLanes] = {0, 0, 0, 0, 0, 0, 0, 0};
  std::memcpy(bytes, mask, n);
  return excluded_lanes(bytes);
}

// z = scale * x with excluded lanes at -inf.
// (The mask pointer is only offset when there is a mask: it is null otherwise.)
template <bool kMasked>
inline __m256 scaled(__m256 x, __m256 scale, const uint8_t* mask, size_t offset) {
  __m256 z = _mm256_mul_ps(x, scale);
  if (kMasked) {
    z = _mm256_blendv_ps(z, _mm256_set1_ps(-__builtin_inff()), excluded_lanes(mask + offset));
  }
  return z;
}

// e^z = p * 2^n for z clamped below at kExtExpMinInput. The clamp takes -inf and sentinels such
// as -1e30 to n = -2^16, whose terms vanish against any in-domain sum (see f32_softmax.h); its
// operand order lets NaN through (maxps returns its second operand when one is NaN), so a NaN
// reaches the sum and sends the row to the reload path.
inline void exp_ext(__m256 z, __m256* p, __m256* n) {
  z = _mm256_max_ps(_mm256_set1_ps(kExtExpMinInput), z);
  const __m256 k = _mm256_round_ps(_mm256_mul_ps(z, _mm256_set1_ps(kLog2e)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 t = _mm256_fmadd_ps(k, _mm256_set1_ps(kMinusLn2Hi), z);
  t = _mm256_fmadd_ps(k, _mm256_set1_ps(kMinusLn2Lo), t);
  __m256 q = _mm256_fmadd_ps(_mm256_set1_ps(kC5), t, _mm256_set1_ps(kC4));
  q = _mm256_fmadd_ps(q, t, _mm256_set1_ps(kC3));
  q = _mm256_fmadd_ps(q, t, _mm256_set1_ps(kC2));
  q = _mm256_fmadd_ps(q, t, _mm256_set1_ps(kC1));
  *p = _mm256_fmadd_ps(q, t, _mm256_set1_ps(1.0f));
  *n = k;
}

// 2^d for integer-valued d <= 0, with 2^d for d <= -127 replaced by 0: such a term is below
// 2^-127 of the accumulated sum (whose mantissa is >= ~0.7), far under float resolution.
inline __m256 exp2_nonpositive(__m256 d) {
  d = _mm256_max_ps(d, _mm256_set1_ps(-127.0f));
  return _mm256_castsi256_ps(
      _mm256_slli_epi32(_mm256_castps_si256(_mm256_add_ps(d, _mm256_set1_ps(kMagicBias))), 23));
}

// Lane sums are folded into double precision every kBlock elements, so that a float
// accumulator never takes more than kBlock / (8 * accumulators) terms: summing a million
// positive terms in float would otherwise cost ~1e-5 of relative accuracy. The fold costs a
// few instructions per block.
constexpr size_t kBlock = 1024;

// Running per-lane totals in double: mantissas of lanes 0-3 and 4-7, and their exponents.
struct ExtTotals {
  __m256d m_lo = _mm256_setzero_pd();
  __m256d m_hi = _mm256_setzero_pd();
  __m256 e = _mm256_set1_ps(-65536.0f);
};

inline void fold(ExtTotals* tot, __m256 m, __m256 e) {
  const __m256 e_new = _mm256_max_ps(tot->e, e);
  const __m256 s_tot = exp2_nonpositive(_mm256_sub_ps(tot->e, e_new));
  const __m256 scaled_m = _mm256_mul_ps(m, exp2_nonpositive(_mm256_sub_ps(e, e_new)));  // exact
  tot->m_lo = _mm256_fmadd_pd(tot->m_lo, _mm256_cvtps_pd(_mm256_castps256_ps128(s_tot)),
                              _mm256_cvtps_pd(_mm256_castps256_ps128(scaled_m)));
  tot->m_hi = _mm256_fmadd_pd(tot->m_hi, _mm256_cvtps_pd(_mm256_extractf128_ps(s_tot, 1)),
                              _mm256_cvtps_pd(_mm256_extractf128_ps(scaled_m, 1)));
  tot->e = e_new;
}

ExtExpSum reduce_totals(const ExtTotals& tot) {
  alignas(32) double m[kLanes];
  alignas(32) float e[kLanes];
  _mm256_store_pd(m, tot.m_lo);
  _mm256_store_pd(m + 4, tot.m_hi);
  _mm256_store_ps(e, tot.e);
  ExtExpSum parts[kLanes];
  for (int i = 0; i < kLanes; ++i) parts[i] = {static_cast<float>(m[i]), e[i]};
  return ext_exp_sum_merge(parts, kLanes);
}

// Pass 1. Each accumulator a holds 8 lane sums M_a * 2^E_a. Per main-loop iteration, the new
// exponent of accumulator a is the max of its old one and of the n of the vectors it takes;
// the old sum is rescaled by 2^(E_a - E_a') and every term added as p * 2^(n - E_a'), all
// powers of two <= 1, so M_a stays below (terms per lane) * 1.42 and cannot overflow.
// kAcc independent accumulators break the dependency chain through M.
template <int kVectors, int kAcc, bool kMasked>
ExtExpSum raddextexp(size_t n, const float* x, const uint8_t* mask, float scale) {
  static_assert(kBlock % (kVectors * kLanes) == 0, "a block is a whole number of iterations");
  const __m256 vscale = _mm256_set1_ps(scale);
  ExtTotals tot;
  while (n > 0) {
    __m256 acc_m[kAcc];
    __m256 acc_e[kAcc];
    for (int a = 0; a < kAcc; ++a) {
      acc_m[a] = _mm256_setzero_ps();
      acc_e[a] = _mm256_set1_ps(-65536.0f);
    }
    size_t block = n < kBlock ? n : kBlock;
    n -= block;
    for (; block >= kVectors * kLanes; block -= kVectors * kLanes) {
      __m256 p[kVectors];
      __m256 k[kVectors];
      for (int j = 0; j < kVectors; ++j) {
        exp_ext(scaled<kMasked>(_mm256_loadu_ps(x + j * kLanes), vscale, mask, j * kLanes), &p[j], &k[j]);
      }
      __m256 e_new[kAcc];
      for (int a = 0; a < kAcc; ++a) e_new[a] = acc_e[a];
      for (int j = 0; j < kVectors; ++j) e_new[j % kAcc] = _mm256_max_ps(e_new[j % kAcc], k[j]);
      for (int a = 0; a < kAcc; ++a) {
        acc_m[a] = _mm256_mul_ps(acc_m[a], exp2_nonpositive(_mm256_sub_ps(acc_e[a], e_new[a])));
        acc_e[a] = e_new[a];
      }
      for (int j = 0; j < kVectors; ++j) {
        const int a = j % kAcc;
        acc_m[a] = _mm256_fmadd_ps(p[j], exp2_nonpositive(_mm256_sub_ps(k[j], acc_e[a])), acc_m[a]);
      }
      x += kVectors * kLanes;
      if (kMasked) mask += kVectors * kLanes;
    }
    // The end of the row: whole vectors, then a tail whose dead lanes are excluded (z = -inf).
    while (block > 0) {
      const size_t count = block < kLanes ? block : kLanes;
      __m256 z;
      if (count == kLanes) {
        z = scaled<kMasked>(_mm256_loadu_ps(x), vscale, mask, 0);
      } else {
        const __m256i live = lanes_below(count);
        z = _mm256_mul_ps(_mm256_maskload_ps(x, live), vscale);
        const __m256 dead = kMasked ? excluded_lanes_tail(mask, count)
                                    : _mm256_castsi256_ps(_mm256_xor_si256(live, _mm256_set1_epi32(-1)));
        z = _mm256_blendv_ps(z, _mm256_set1_ps(-__builtin_inff()), dead);
      }
      __m256 p;
      __m256 k;
      exp_ext(z, &p, &k);
      const __m256 e_new = _mm256_max_ps(acc_e[0], k);
      acc_m[0] = _mm256_mul_ps(acc_m[0], exp2_nonpositive(_mm256_sub_ps(acc_e[0], e_new)));
      acc_m[0] = _mm256_fmadd_ps(p, exp2_nonpositive(_mm256_sub_ps(k, e_new)), acc_m[0]);
      acc_e[0] = e_new;
      x += count;
      if (kMasked) mask += count;
      block -= count;
    }
    for (int a = 0; a < kAcc; ++a) fold(&tot, acc_m[a], acc_e[a]);
  }
  return reduce_totals(tot);
}

// Pass 2: y = p * (1 / S_m) * 2^(n - S_e). n <= S_e for every kept element, so the power of two
// is at most 1; excluded and clamped lanes have n - S_e <= -200 and come out exactly 0.
template <int kVectors, bool kMasked>
void vscaleextexp(size_t n, const float* x, const uint8_t* mask, float scale, float inv_mantissa,
                  float exponent, float* y) {
  const __m256 vscale = _mm256_set1_ps(scale);
  const __m256 vinv = _mm256_set1_ps(inv_mantissa);
  const __m256 vexp = _mm256_set1_ps(exponent);
  for (; n >= kVectors * kLanes; n -= kVectors * kLanes) {
    for (int j = 0; j < kVectors; ++j) {
      __m256 p;
      __m256 k;
      exp_ext(scaled<kMasked>(_mm256_loadu_ps(x + j * kLanes), vscale, mask, j * kLanes), &p, &k);
      const __m256 s = exp2_nonpositive(_mm256_sub_ps(k, vexp));
      _mm256_storeu_ps(y + j * kLanes, _mm256_mul_ps(_mm256_mul_ps(p, vinv), s));
    }
    x += kVectors * kLanes;
    y += kVectors * kLanes;
    if (kMasked) mask += kVectors * kLanes;
  }
  while (n > 0) {
    const size_t count = n < kLanes ? n : kLanes;
    const __m256i live = lanes_below(count);
    __m256 z = _mm256_mul_ps(_mm256_maskload_ps(x, live), vscale);
    if (kMasked) {
      const __m256 dead = count == kLanes ? excluded_lanes(mask) : excluded_lanes_tail(mask, count);
      z = _mm256_blendv_ps(z, _mm256_set1_ps(-__builtin_inff()), dead);
    }
    __m256 p;
    __m256 k;
    exp_ext(z, &p, &k);
    const __m256 s = exp2_nonpositive(_mm256_sub_ps(k, vexp));
    _mm256_maskstore_ps(y, live, _mm256_mul_ps(_mm256_mul_ps(p, vinv), s));
    x += count;
    y += count;
    if (kMasked) mask += count;
    n -= count;
  }
}

template <bool kMasked>
float rmax(size_t n, const float* x, const uint8_t* mask, float scale) {
  const __m256 vscale = _mm256_set1_ps(scale);
  const __m256 minus_inf = _mm256_set1_ps(-__builtin_inff());
  __m256 acc[4] = {minus_inf, minus_inf, minus_inf, minus_inf};
  for (; n >= 4 * kLanes; n -= 4 * kLanes) {
    for (int j = 0; j < 4; ++j) {
      acc[j] = _mm256_max_ps(acc[j], scaled<kMasked>(_mm256_loadu_ps(x + j * kLanes), vscale, mask, j * kLanes));
    }
    x += 4 * kLanes;
    if (kMasked) mask += 4 * kLanes;
  }
  while (n > 0) {
    const size_t count = n < kLanes ? n : kLanes;
    const __m256i live = lanes_below(count);
    __m256 z = _mm256_mul_ps(_mm256_maskload_ps(x, live), vscale);
    const __m256 dead = kMasked ? (count == kLanes ? excluded_lanes(mask) : excluded_lanes_tail(mask, count))
                                : _mm256_castsi256_ps(_mm256_xor_si256(live, _mm256_set1_epi32(-1)));
    acc[0] = _mm256_max_ps(acc[0], _mm256_blendv_ps(z, minus_inf, dead));
    x += count;
    if (kMasked) mask += count;
    n -= count;
  }
  __m256 m = _mm256_max_ps(_mm256_max_ps(acc[0], acc[1]), _mm256_max_ps(acc[2], acc[3]));
  __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
  h = _mm_max_ps(h, _mm_movehl_ps(h, h));
  h = _mm_max_ss(h, _mm_movehdup_ps(h));
  return _mm_cvtss_f32(h);
}

// e^d for d = z - max <= 0: 2^n built directly from the rounded n (n in [-126, 0] above the
// cutoff), the same polynomial, and d below the cutoff (including -inf) flushed to 0. NaN stays.
inline __m256 exp_nonpositive(__m256 d) {
  __m256 k = _mm256_fmadd_ps(d, _mm256_set1_ps(kLog2e), _mm256_set1_ps(kMagicBias));
  const __m256 s = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_castps_si256(k), 23));
  k = _mm256_sub_ps(k, _mm256_set1_ps(kMagicBias));
  __m256 t = _mm256_fmadd_ps(k, _mm256_set1_ps(kMinusLn2Hi), d);
  t = _mm256_fmadd_ps(k, _mm256_set1_ps(kMinusLn2Lo), t);
  __m256 q = _mm256_fmadd_ps(_mm256_set1_ps(kC5), t, _mm256_set1_ps(kC4));
  q = _mm256_fmadd_ps(q, t, _mm256_set1_ps(kC3));
  q = _mm256_fmadd_ps(q, t, _mm256_set1_ps(kC2));
  q = _mm256_fmadd_ps(q, t, _mm256_set1_ps(kC1));
  t = _mm256_mul_ps(t, s);
  const __m256 e = _mm256_fmadd_ps(t, q, s);  // s * (1 + t * q)
  return _mm256_andnot_ps(_mm256_cmp_ps(d, _mm256_set1_ps(kDenormCutoff), _CMP_LT_OQ), e);
}

// Sum of e^(z - max), folded into double every kBlock elements (see pass 1).
template <int kVectors, bool kMasked>
float raddstoreexpminusmax(size_t n, const float* x, const uint8_t* mask, float scale, float max,
                           float* y) {
  static_assert(kBlock % (kVectors * kLanes) == 0, "a block is a whole number of iterations");
  const __m256 vscale = _mm256_set1_ps(scale);
  const __m256 vmax = _mm256_set1_ps(max);
  __m256d total = _mm256_setzero_pd();
  while (n > 0) {
    __m256 acc[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
    size_t block = n < kBlock ? n : kBlock;
    n -= block;
    for (; block >= kVectors * kLanes; block -= kVectors * kLanes) {
      for (int j = 0; j < kVectors; ++j) {
        const __m256 z = scaled<kMasked>(_mm256_loadu_ps(x + j * kLanes), vscale, mask, j * kLanes);
        const __m256 e = exp_nonpositive(_mm256_sub_ps(z, vmax));
        _mm256_storeu_ps(y + j * kLanes, e);
        acc[j % 2] = _mm256_add_ps(acc[j % 2], e);
      }
      x += kVectors * kLanes;
      y += kVectors * kLanes;
      if (kMasked) mask += kVectors * kLanes;
    }
    while (block > 0) {
      const size_t count = block < kLanes ? block : kLanes;
      const __m256i live = lanes_below(count);
      __m256 z = _mm256_mul_ps(_mm256_maskload_ps(x, live), vscale);
      const __m256 dead = kMasked ? (count == kLanes ? excluded_lanes(mask) : excluded_lanes_tail(mask, count))
                                  : _mm256_castsi256_ps(_mm256_xor_si256(live, _mm256_set1_epi32(-1)));
      z = _mm256_blendv_ps(z, _mm256_set1_ps(-__builtin_inff()), dead);
      const __m256 e = exp_nonpositive(_mm256_sub_ps(z, vmax));
      _mm256_maskstore_ps(y, live, e);
      acc[0] = _mm256_add_ps(acc[0], e);
      x += count;
      y += count;
      if (kMasked) mask += count;
      block -= count;
    }
    const __m256 a = _mm256_add_ps(acc[0], acc[1]);
    total = _mm256_add_pd(total, _mm256_cvtps_pd(_mm256_castps256_ps128(a)));
    total = _mm256_add_pd(total, _mm256_cvtps_pd(_mm256_extractf128_ps(a, 1)));
  }
  alignas(32) double lanes[4];
  _mm256_store_pd(lanes, total);
  return static_cast<float>((lanes[0] + lanes[1]) + (lanes[2] + lanes[3]));
}

}  // namespace

ExtExpSum f32_raddextexp__avx2_p5_u32_acc2(size_t n, const float* x, const uint8_t* mask, float scale) {
  return mask != nullptr ? raddextexp<4, 2, true>(n, x, mask, scale) : raddextexp<4, 2, false>(n, x, mask, scale);
}

void f32_vscaleextexp__avx2_p5_u16(size_t n, const float* x, const uint8_t* mask, float scale, float inv_mantissa,
                                   float exponent, float* y) {
  if (mask != nullptr) {
    vscaleextexp<2, true>(n, x, mask, scale, inv_mantissa, exponent, y);
  } else {
    vscaleextexp<2, false>(n, x, mask, scale, inv_mantissa, exponent, y);
  }
}

float f32_rmax__avx2_u32_acc4(size_t n, const float* x, const uint8_t* mask, float scale) {
  return mask != nullptr ? rmax<true>(n, x, mask, scale) : rmax<false>(n, x, mask, scale);
}

float f32_raddstoreexpminusmax__avx2_rr2_p5_u16_acc2(size_t n, const float* x, const uint8_t* mask, float scale,
                                                    float max, float* y) {
  return mask != nullptr ? raddstoreexpminusmax<2, true>(n, x, mask, scale, max, y)
                         : raddstoreexpminusmax<2, false>(n, x, mask, scale, max, y);
}

void f32_vmulc__avx2_u16(size_t n, float* y, float c) {
  const __m256 vc = _mm256_set1_ps(c);
  for (; n >= 2 * kLanes; n -= 2 * kLanes, y += 2 * kLanes) {
    _mm256_storeu_ps(y, _mm256_mul_ps(_mm256_loadu_ps(y), vc));
    _mm256_storeu_ps(y + kLanes, _mm256_mul_ps(_mm256_loadu_ps(y + kLanes), vc));
  }
  while (n > 0) {
    const size_t count = n < kLanes ? n : kLanes;
    const __m256i live = lanes_below(count);
    _mm256_maskstore_ps(y, live, _mm256_mul_ps(_mm256_maskload_ps(y, live), vc));
    y += count;
    n -= count;
  }
}

void f32_vaxpy__avx2_u8(size_t n, const float* x, float a, float* acc) {
  const __m256 va = _mm256_set1_ps(a);
  while (n > 0) {
    const size_t count = n < kLanes ? n : kLanes;
    const __m256i live = lanes_below(count);
    const __m256 sum = _mm256_fmadd_ps(va, _mm256_maskload_ps(x, live), _mm256_maskload_ps(acc, live));
    _mm256_maskstore_ps(acc, live, sum);
    x += count;
    acc += count;
    n -= count;
  }
}

float f32_vmulc_rdot__avx2_u8(size_t n, float* y, float c, const float* v) {
  const __m256 vc = _mm256_set1_ps(c);
  __m256 acc = _mm256_setzero_ps();
  while (n > 0) {
    const size_t count = n < kLanes ? n : kLanes;
    const __m256i live = lanes_below(count);
    const __m256 scaled_y = _mm256_mul_ps(_mm256_maskload_ps(y, live), vc);
    _mm256_maskstore_ps(y, live, scaled_y);
    acc = _mm256_fmadd_ps(_mm256_maskload_ps(v, live), scaled_y, acc);
    y += count;
    v += count;
    n -= count;
  }
  __m128 h = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
  h = _mm_add_ps(h, _mm_movehl_ps(h, h));
  h = _mm_add_ss(h, _mm_movehdup_ps(h));
  return _mm_cvtss_f32(h);
}

}  // namespace surety
