// AVX-512F softmax microkernels (16 floats per vector). Compiled with -mavx512f -mavx2 -mfma and
// reached only through the variant table after the CPU probe (cpuid + XCR0 opmask/ZMM state).
// Uses AVX-512F instructions only (no BW/DQ/VL), so any AVX-512 CPU runs it.
//
// The mathematics is that of the AVX2 kernels (f32_softmax__avx2.cc): p5 exponential with
// two-constant Cody-Waite reduction, pass 1 in L1-sized chunks whose exponent is fixed in advance
// from the chunk's maximum, 1/S_m folded into pass 2's polynomial, streaming stores for outputs
// larger than the last-level cache, double folding of long sums. What AVX-512F changes:
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

inline __m256 low_half(__m512 v) { return _mm512_castps512_ps256(v); }
inline __m256 high_half(__m512 v) {
  return _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
}

// z = scale * x (the multiply skipped when there is no scale: scale == 1 and 1 * x == x), with
// excluded lanes at -inf.
template <bool kMasked, bool kScaled>
inline __m512 load_z(const float* x, __m512 scale, const uint8_t* mask, size_t offset) {
  __m512 z = _mm512_loadu_ps(x + offset);
  if (kScaled) z = _mm512_mul_ps(z, scale);
  if (kMasked) z = _mm512_mask_mov_ps(z, excluded_lanes(mask + offset), _mm512_set1_ps(-__builtin_inff()));
  return z;
}

// The last count <= 16 elements: nothing past the row is read, lanes past count are -inf.
template <bool kMasked, bool kScaled>
inline __m512 load_z_tail(const float* x, __m512 scale, const uint8_t* mask, size_t count) {
  const __mmask16 live = lanes_below(count);
  __m512 z = _mm512_maskz_loadu_ps(live, x);
  if (kScaled) z = _mm512_mul_ps(z, scale);
  const __mmask16 dead = kMasked ? (count == kLanes ? excluded_lanes(mask) : excluded_lanes_tail(mask, count))
                                 : static_cast<__mmask16>(~live);
  return _mm512_mask_mov_ps(z, dead, _mm512_set1_ps(-__builtin_inff()));
}

inline __m512 poly5(__m512 t) {
  __m512 q = _mm512_fmadd_ps(_mm512_set1_ps(kC5), t, _mm512_set1_ps(kC4));
  q = _mm512_fmadd_ps(q, t, _mm512_set1_ps(kC3));
  q = _mm512_fmadd_ps(q, t, _mm512_set1_ps(kC2));
  q = _mm512_fmadd_ps(q, t, _mm512_set1_ps(kC1));
  return _mm512_fmadd_ps(q, t, _mm512_set1_ps(1.0f));
}

// n = round(z * log2 e) and t = z - n ln2 for z clamped below at kExtExpMinInput (NaN passes:
// second operand of maxps), as in the AVX2 kernels.
inline __m512 reduce(__m512 z, __m512* n) {
  z = _mm512_max_ps(_mm512_set1_ps(kExtExpMinInput), z);
  const __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(z, _mm512_set1_ps(kLog2e)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 t = _mm512_fmadd_ps(k, _mm512_set1_ps(kMinusLn2Hi), z);
  *n = k;
  return _mm512_fmadd_ps(k, _mm512_set1_ps(kMinusLn2Lo), t);
}

template <bool kMasked, bool kScaled>
float rmax(size_t n, const float* x, const uint8_t* mask, __m512 vscale) {
  const __m512 minus_inf = _mm512_set1_ps(-__builtin_inff());
  __m512 acc[4] = {minus_inf, minus_inf, minus_inf, minus_inf};
  for (; n >= 4 * kLanes; n -= 4 * kLanes) {
    for (int j = 0; j < 4; ++j) acc[j] = _mm512_max_ps(acc[j], load_z<kMasked, kScaled>(x, vscale, mask, j * kLanes));
    x += 4 * kLanes;
    if (kMasked) mask += 4 * kLanes;
  }
  while (n > 0) {
    const size_t count = n < kLanes ? n : kLanes;
    acc[0] = _mm512_max_ps(acc[0], load_z_tail<kMasked, kScaled>(x, vscale, mask, count));
    x += count;
    if (kMasked) mask += count;
    n -= count;
  }
  return _mm512_reduce_max_ps(_mm512_max_ps(_mm512_max_ps(acc[0], acc[1]), _mm512_max_ps(acc[2], acc[3])));
}

// 2^d as a double for an integer d in [-1022, 0] (from its bits: no library call).
inline double exp2_int(float d) {
  const int64_t bits = static_cast<int64_t>(1023 + static_cast<int>(d)) << 52;
  double v;
  std::memcpy(&v, &bits, sizeof v);
  return v;
}

// Pass 1, chunked, as in the AVX2 kernel (see there for the mathematics): per chunk of kChunk
// elements a max pass fixes the chunk exponent n_c = round(m_c log2 e); the chunk's terms are
// summed as vscalef(p, n - n_c) into plain float accumulators; the (S_c, n_c) pairs merge in
// double by the (M, E) rule.
constexpr size_t kChunk = 2048;
constexpr size_t kPrefetchDistance = 2 * kChunk;  // software prefetch, as in the AVX2 kernels
const float kExtExpMaxInput = 45426.09375f;

template <bool kMasked, bool kScaled>
ExtExpSum raddextexp_chunked(size_t n, const float* x, const uint8_t* mask, float scale) {
  constexpr int kVectors = 4;
  const __m512 vscale = _mm512_set1_ps(scale);
  double total = 0.0;
  float total_exponent = -65536.0f;
  while (n > 0) {
    size_t count = n < kChunk ? n : kChunk;
    n -= count;
    float m = rmax<kMasked, kScaled>(count, x, mask, vscale);
    if (!(m <= kExtExpMaxInput)) {
      const float nan = __builtin_nanf("");
      return {nan, nan};
    }
    m = m > kExtExpMinInput ? m : kExtExpMinInput;
    const float exponent =
        _mm_cvtss_f32(_mm_round_ss(_mm_setzero_ps(), _mm_set_ss(m * kLog2e), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    const __m512 base = _mm512_set1_ps(exponent);
    __m512 acc[kVectors];
    for (int j = 0; j < kVectors; ++j) acc[j] = _mm512_setzero_ps();
    for (; count >= kVectors * kLanes; count -= kVectors * kLanes) {
      for (int j = 0; j < kVectors; ++j) {
        _mm_prefetch(reinterpret_cast<const char*>(x + kPrefetchDistance + j * kLanes), _MM_HINT_T0);
      }
      for (int j = 0; j < kVectors; ++j) {
        __m512 k;
        const __m512 t = reduce(load_z<kMasked, kScaled>(x, vscale, mask, j * kLanes), &k);
        acc[j] = _mm512_add_ps(acc[j], _mm512_scalef_ps(poly5(t), _mm512_sub_ps(k, base)));
      }
      x += kVectors * kLanes;
      if (kMasked) mask += kVectors * kLanes;
    }
    while (count > 0) {
      const size_t c = count < kLanes ? count : kLanes;
      __m512 k;
      const __m512 t = reduce(load_z_tail<kMasked, kScaled>(x, vscale, mask, c), &k);
      acc[0] = _mm512_add_ps(acc[0], _mm512_scalef_ps(poly5(t), _mm512_sub_ps(k, base)));
      x += c;
      if (kMasked) mask += c;
      count -= c;
    }
    const float sum =
        _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])));
    if (sum != sum) {
      const float nan = __builtin_nanf("");
      return {nan, nan};
    }
    if (sum > 0.0f) {
      if (exponent > total_exponent) {
        const float delta = total_exponent - exponent;
        total = delta > -1000.0f ? total * exp2_int(delta) : 0.0;
        total_exponent = exponent;
      }
      const float delta = exponent - total_exponent;
      if (delta > -1000.0f) total += static_cast<double>(sum) * exp2_int(delta);
    }
  }
  return {static_cast<float>(total), total_exponent};
}

// Pass 2: y = vscalef(P(t), n - S_e) with 1/S_m folded into the polynomial's coefficients;
// excluded and clamped lanes underflow to exactly 0. kStream: streaming stores after a head up to
// the first 64-byte boundary, masked tail, sfence (see the AVX2 kernel).
template <bool kMasked, bool kScaled, bool kStream>
void vscaleextexp(size_t n, const float* x, const uint8_t* mask, float scale, float inv_mantissa,
                  float exponent, float* y) {
  constexpr int kVectors = 2;
  const __m512 vscale = _mm512_set1_ps(scale);
  const __m512 vexp = _mm512_set1_ps(exponent);
  const __m512 d0 = _mm512_set1_ps(inv_mantissa);
  const __m512 d1 = _mm512_set1_ps(kC1 * inv_mantissa);
  const __m512 d2 = _mm512_set1_ps(kC2 * inv_mantissa);
  const __m512 d3 = _mm512_set1_ps(kC3 * inv_mantissa);
  const __m512 d4 = _mm512_set1_ps(kC4 * inv_mantissa);
  const __m512 d5 = _mm512_set1_ps(kC5 * inv_mantissa);
  auto eval = [&](__m512 z) {
    __m512 k;
    const __m512 t = reduce(z, &k);
    __m512 p = _mm512_fmadd_ps(d5, t, d4);
    p = _mm512_fmadd_ps(p, t, d3);
    p = _mm512_fmadd_ps(p, t, d2);
    p = _mm512_fmadd_ps(p, t, d1);
    p = _mm512_fmadd_ps(p, t, d0);
    return _mm512_scalef_ps(p, _mm512_sub_ps(k, vexp));
  };
  if (kStream) {
    const size_t misaligned = (reinterpret_cast<uintptr_t>(y) / sizeof(float)) % kLanes;
    size_t head = misaligned == 0 ? 0 : kLanes - misaligned;
    head = head < n ? head : n;
    if (head > 0) {
      _mm512_mask_storeu_ps(y, lanes_below(head), eval(load_z_tail<kMasked, kScaled>(x, vscale, mask, head)));
      x += head;
      y += head;
      if (kMasked) mask += head;
      n -= head;
    }
  }
  for (; n >= kVectors * kLanes; n -= kVectors * kLanes) {
    for (int j = 0; j < kVectors; ++j) {
      _mm_prefetch(reinterpret_cast<const char*>(x + kPrefetchDistance + j * kLanes), _MM_HINT_T0);
    }
    for (int j = 0; j < kVectors; ++j) {
      const __m512 v = eval(load_z<kMasked, kScaled>(x, vscale, mask, j * kLanes));
      if (kStream) {
        _mm512_stream_ps(y + j * kLanes, v);
      } else {
        _mm512_storeu_ps(y + j * kLanes, v);
      }
    }
    x += kVectors * kLanes;
    y += kVectors * kLanes;
    if (kMasked) mask += kVectors * kLanes;
  }
  while (n > 0) {
    const size_t count = n < kLanes ? n : kLanes;
    _mm512_mask_storeu_ps(y, lanes_below(count), eval(load_z_tail<kMasked, kScaled>(x, vscale, mask, count)));
    x += count;
    y += count;
    if (kMasked) mask += count;
    n -= count;
  }
  if (kStream) _mm_sfence();
}

// e^d for d = z - max <= 0; below kExpMinInput (including -inf) the result underflows to 0.
// One-constant reduction (|n| <= 160 here: the dropped ln2_lo term is a relative error below
// 3.1e-7), as in the AVX2 reload kernel.
inline __m512 exp_nonpositive(__m512 d) {
  d = _mm512_max_ps(_mm512_set1_ps(kExpMinInput), d);
  const __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(d, _mm512_set1_ps(kLog2e)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 t = _mm512_fmadd_ps(k, _mm512_set1_ps(-0x1.62E430p-1f), d);
  return _mm512_scalef_ps(poly5(t), k);
}

// Software prefetch distance of the reload exp pass (elements): 4 KiB ahead, measured best of
// 1, 2 and 4 K elements on AVX2.
constexpr size_t kReloadPrefetchDistance = 1024;

template <bool kMasked, bool kScaled>
float raddstoreexpminusmax(size_t n, const float* x, const uint8_t* mask, float scale, float max,
                           float* y) {
  constexpr int kVectors = 4;
  static_assert(kBlock % (kVectors * kLanes) == 0, "a block is a whole number of iterations");
  const __m512 vscale = _mm512_set1_ps(scale);
  const __m512 vmax = _mm512_set1_ps(max);
  double total = 0.0;
  while (n > 0) {
    __m512 acc[kVectors];
    for (int j = 0; j < kVectors; ++j) acc[j] = _mm512_setzero_ps();
    size_t block = n < kBlock ? n : kBlock;
    n -= block;
    for (; block >= kVectors * kLanes; block -= kVectors * kLanes) {
      for (int j = 0; j < kVectors; ++j) {
        _mm_prefetch(reinterpret_cast<const char*>(x + kReloadPrefetchDistance + j * kLanes), _MM_HINT_T0);
      }
      for (int j = 0; j < kVectors; ++j) {
        const __m512 e = exp_nonpositive(_mm512_sub_ps(load_z<kMasked, kScaled>(x, vscale, mask, j * kLanes), vmax));
        _mm512_storeu_ps(y + j * kLanes, e);
        acc[j] = _mm512_add_ps(acc[j], e);
      }
      x += kVectors * kLanes;
      y += kVectors * kLanes;
      if (kMasked) mask += kVectors * kLanes;
    }
    while (block > 0) {
      const size_t count = block < kLanes ? block : kLanes;
      const __m512 e = exp_nonpositive(_mm512_sub_ps(load_z_tail<kMasked, kScaled>(x, vscale, mask, count), vmax));
      _mm512_mask_storeu_ps(y, lanes_below(count), e);
      acc[0] = _mm512_add_ps(acc[0], e);
      x += count;
      y += count;
      if (kMasked) mask += count;
      block -= count;
    }
    const __m512 a = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
    total += _mm512_reduce_add_pd(_mm512_add_pd(_mm512_cvtps_pd(low_half(a)), _mm512_cvtps_pd(high_half(a))));
  }
  return static_cast<float>(total);
}

}  // namespace

#define SURETY_DISPATCH_MASK_SCALE(fn, ...)                                                   \
  (mask != nullptr ? (scale != 1.0f ? fn<true, true>(__VA_ARGS__) : fn<true, false>(__VA_ARGS__)) \
                   : (scale != 1.0f ? fn<false, true>(__VA_ARGS__) : fn<false, false>(__VA_ARGS__)))

ExtExpSum f32_raddextexp__avx512f_rr2_p5_scalef_c2048_u64_acc4(size_t n, const float* x, const uint8_t* mask,
                                                              float scale) {
  return SURETY_DISPATCH_MASK_SCALE(raddextexp_chunked, n, x, mask, scale);
}

void f32_vscaleextexp__avx512f_rr2_p5_scalef_u32(size_t n, const float* x, const uint8_t* mask, float scale,
                                                 float inv_mantissa, float exponent, float* y, bool nontemporal) {
  if (nontemporal) {
    if (mask != nullptr) {
      if (scale != 1.0f) vscaleextexp<true, true, true>(n, x, mask, scale, inv_mantissa, exponent, y);
      else vscaleextexp<true, false, true>(n, x, mask, scale, inv_mantissa, exponent, y);
    } else {
      if (scale != 1.0f) vscaleextexp<false, true, true>(n, x, mask, scale, inv_mantissa, exponent, y);
      else vscaleextexp<false, false, true>(n, x, mask, scale, inv_mantissa, exponent, y);
    }
  } else {
    if (mask != nullptr) {
      if (scale != 1.0f) vscaleextexp<true, true, false>(n, x, mask, scale, inv_mantissa, exponent, y);
      else vscaleextexp<true, false, false>(n, x, mask, scale, inv_mantissa, exponent, y);
    } else {
      if (scale != 1.0f) vscaleextexp<false, true, false>(n, x, mask, scale, inv_mantissa, exponent, y);
      else vscaleextexp<false, false, false>(n, x, mask, scale, inv_mantissa, exponent, y);
    }
  }
}

float f32_rmax__avx512f_u64_acc4(size_t n, const float* x, const uint8_t* mask, float scale) {
  const __m512 vscale = _mm512_set1_ps(scale);
  return SURETY_DISPATCH_MASK_SCALE(rmax, n, x, mask, vscale);
}

float f32_raddstoreexpminusmax__avx512f_rr2_p5_scalef_u64_acc4(size_t n, const float* x, const uint8_t* mask,
                                                              float scale, float max, float* y) {
  return SURETY_DISPATCH_MASK_SCALE(raddstoreexpminusmax, n, x, mask, scale, max, y);
}

#undef SURETY_DISPATCH_MASK_SCALE

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

void f32_vmuladd__avx512f_u16(size_t n, const float* x, const float* w, float* acc) {
  while (n > 0) {
    const size_t count = n < kLanes ? n : kLanes;
    const __mmask16 live = lanes_below(count);
    const __m512 sum = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(live, w), _mm512_maskz_loadu_ps(live, x),
                                       _mm512_maskz_loadu_ps(live, acc));
    _mm512_mask_storeu_ps(acc, live, sum);
    x += count;
    w += count;
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
