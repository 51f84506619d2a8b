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

// Lane sums of the reload path are folded into double precision every kBlock elements, so that
// a float accumulator never takes more than kBlock / (8 * accumulators) terms: summing a million
// positive terms in float would otherwise cost ~1e-5 of relative accuracy.
constexpr size_t kBlock = 1024;

// z = x when there is no scale (scale == 1 exactly, so 1 * x == x for every x, NaN included):
// the multiply is skipped. Excluded lanes become -inf.
template <bool kMasked, bool kScaled>
inline __m256 load_z(const float* x, __m256 scale, const uint8_t* mask, size_t offset) {
  __m256 z = _mm256_loadu_ps(x + offset);
  if (kScaled) z = _mm256_mul_ps(z, scale);
  if (kMasked) {
    z = _mm256_blendv_ps(z, _mm256_set1_ps(-__builtin_inff()), excluded_lanes(mask + offset));
  }
  return z;
}

// The same for the last count < 8 (or == 8) elements: nothing past the row is read, and the lanes
// past count are -inf (excluded).
template <bool kMasked, bool kScaled>
inline __m256 load_z_tail(const float* x, __m256 scale, const uint8_t* mask, size_t count) {
  const __m256i live = lanes_below(count);
  __m256 z = _mm256_maskload_ps(x, live);
  if (kScaled) z = _mm256_mul_ps(z, scale);
  const __m256 dead = kMasked ? (count == kLanes ? excluded_lanes(mask) : excluded_lanes_tail(mask, count))
                              : _mm256_castsi256_ps(_mm256_xor_si256(live, _mm256_set1_epi32(-1)));
  return _mm256_blendv_ps(z, _mm256_set1_ps(-__builtin_inff()), dead);
}

inline float hmax(__m256 m) {
  __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
  h = _mm_max_ps(h, _mm_movehl_ps(h, h));
  h = _mm_max_ss(h, _mm_movehdup_ps(h));
  return _mm_cvtss_f32(h);
}

inline float hsum(__m256 a) {
  __m128 h = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  h = _mm_add_ps(h, _mm_movehl_ps(h, h));
  h = _mm_add_ss(h, _mm_movehdup_ps(h));
  return _mm_cvtss_f32(h);
}

// Largest z over n elements (-inf when none is kept). A NaN may be skipped (maxps returns its
// second operand when one is NaN); the exp pass that follows catches it.
template <bool kMasked, bool kScaled>
float rmax(size_t n, const float* x, const uint8_t* mask, __m256 vscale) {
  const __m256 minus_inf = _mm256_set1_ps(-__builtin_inff());
  __m256 acc[4] = {minus_inf, minus_inf, minus_inf, minus_inf};
  for (; n >= 4 * kLanes; n -= 4 * kLanes) {
    for (int j = 0; j < 4; ++j) {
      acc[j] = _mm256_max_ps(acc[j], load_z<kMasked, kScaled>(x, vscale, mask, j * kLanes));
    }
    x += 4 * kLanes;
    if (kMasked) mask += 4 * kLanes;
  }
  while (n > 0) {
    const size_t count = n < kLanes ? n : kLanes;
    acc[0] = _mm256_max_ps(acc[0], load_z_tail<kMasked, kScaled>(x, vscale, mask, count));
    x += count;
    if (kMasked) mask += count;
    n -= count;
  }
  return hmax(_mm256_max_ps(_mm256_max_ps(acc[0], acc[1]), _mm256_max_ps(acc[2], acc[3])));
}

// e^z relative to a fixed power of two, 2^-base (base an integer-valued float, |base| <= 2^16 + 127):
//   e^z * 2^-base = 2^(n - base) * e^t,  n = round(z * log2 e),  t = z - n * ln2.
// One FMA rounds z * log2 e - base and places n - base + 127 in the low mantissa bits of
// kb = z * log2 e + (kMagicBias - base) (a float in [2^23, 2^24), whose ulp is 1); shifted left by
// 23 those bits are the float 2^(n - base) (+0.0 for n - base = -127). kb - (kMagicBias - base)
// is n itself, exactly, from which t is reduced with the two-constant Cody-Waite split as in
// the two-pass paper's kernels. The clamp at `floor` keeps n - base >= -127; every z at or below
// the floor then gives exactly +0.0 (-inf included). The caller guarantees n - base <= 1.
struct ExpRelative {
  __m256 bias;   // kMagicBias - base
  __m256 floor;  // (base - 127) * ln2: the clamp
};

inline ExpRelative exp_relative_to(float base) {
  return {_mm256_set1_ps(kMagicBias - base), _mm256_set1_ps((base - 127.0f) * 0x1.62E430p-1f)};
}

// Returns 2^(n - base) in *s and t; the polynomial is left to the caller (the two passes scale
// it differently).
inline __m256 reduce_relative(__m256 z, const ExpRelative& r, __m256* s) {
  z = _mm256_max_ps(r.floor, z);  // NaN passes (second operand)
  const __m256 kb = _mm256_fmadd_ps(z, _mm256_set1_ps(kLog2e), r.bias);
  *s = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_castps_si256(kb), 23));
  const __m256 k = _mm256_sub_ps(kb, r.bias);
  __m256 t = _mm256_fmadd_ps(k, _mm256_set1_ps(kMinusLn2Hi), z);
  return _mm256_fmadd_ps(k, _mm256_set1_ps(kMinusLn2Lo), t);
}

// c1 + t * (c2 + t * (c3 + t * (c4 + t * c5))), so that e^t ~ 1 + t * q.
inline __m256 poly_q(__m256 t) {
  __m256 q = _mm256_fmadd_ps(_mm256_set1_ps(kC5), t, _mm256_set1_ps(kC4));
  q = _mm256_fmadd_ps(q, t, _mm256_set1_ps(kC3));
  q = _mm256_fmadd_ps(q, t, _mm256_set1_ps(kC2));
  return _mm256_fmadd_ps(q, t, _mm256_set1_ps(kC1));
}

// 2^d as a double for an integer d in [-1022, 0] (built from its bits: no library call).
inline double exp2_int(float d) {
  const int64_t bits = static_cast<int64_t>(1023 + static_cast<int>(d)) << 52;
  double v;
  std::memcpy(&v, &bits, sizeof v);
  return v;
}

// Pass 1, chunked: the row is walked in chunks of kChunk elements (8 KiB, well inside L1). For
// each chunk c:
//   (a) a max pass finds m_c = max z over the chunk; this read also brings the chunk into L1;
//   (b) with the chunk exponent n_c = round(m_c * log2 e) fixed in advance, the chunk's sum is
//       S_c = sum e^z * 2^-n_c = sum 2^(n_i - n_c) * e^(t_i), every n_i - n_c <= 1 (n_i <= n_c
//       up to the rounding of m_c * log2 e), so S_c is in [~0.7, 2.9 * kChunk]: no overflow,
//       and a term 2^-127 or more below the chunk's largest is dropped (exactly 0, see above).
// (S_c, n_c) is a (mantissa, exponent) pair as in Dukhan & Ablavatski's two-pass algorithm, but
// its exponent is known before the chunk is summed, so the per-element running maximum of the
// exponent and the two power-of-two rescalings of every step disappear: per vector, 12
// arithmetic instructions instead of ~17, plus 1 for the max pass (in L1). The second read of a
// chunk hits L1, so memory traffic stays 2 reads + 1 write for the whole softmax. The chunk
// pairs are merged by the usual rule (E' = max(E, n_c), M' = M 2^(E - E') + S_c 2^(n_c - E')),
// in double, which also keeps million-element rows within the 1e-5 tolerance.
//
// Domain (f32_softmax.h): a chunk maximum above kExtExpMaxInput (+inf, or n_c > 2^16), or a NaN,
// makes the sum NaN (the row is then recomputed by reloading); a chunk maximum below
// kExtExpMinInput (sentinels, -inf, nothing kept) is raised to it, so n_c >= -2^16, and its terms
// come out 0 (or tiny, in which case the row's exponent is out of the domain anyway).
constexpr size_t kChunk = 2048;
// Software prefetch two chunks ahead (16 KiB; measured best of 1 and 2 chunks ahead for chunks of
// 1, 2 and 4 K elements, out of cache: 0.31 ns/element against 0.53 without prefetching).
constexpr size_t kPrefetchDistance = 2 * kChunk;
const float kExtExpMaxInput = 45426.09375f;

template <bool kMasked, bool kScaled>
ExtExpSum raddextexp_chunked(size_t n, const float* x, const uint8_t* mask, float scale) {
  constexpr int kVectors = 4;  // 32 elements per iteration, one accumulator each
  const __m256 vscale = _mm256_set1_ps(scale);
  double total = 0.0;
  float total_exponent = -65536.0f;
  while (n > 0) {
    size_t count = n < kChunk ? n : kChunk;
    n -= count;
    float m = rmax<kMasked, kScaled>(count, x, mask, vscale);
    if (!(m <= kExtExpMaxInput)) {  // +inf, beyond the domain, or NaN
      const float nan = __builtin_nanf("");
      return {nan, nan};
    }
    m = m > kExtExpMinInput ? m : kExtExpMinInput;
    const float exponent =
        _mm_cvtss_f32(_mm_round_ss(_mm_setzero_ps(), _mm_set_ss(m * kLog2e), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    const ExpRelative r = exp_relative_to(exponent);
    __m256 acc[kVectors];
    for (int j = 0; j < kVectors; ++j) acc[j] = _mm256_setzero_ps();
    for (; count >= kVectors * kLanes; count -= kVectors * kLanes) {
      // While this chunk is summed from L1, a later one is fetched from memory: the max pass of
      // a chunk would otherwise wait on memory with the arithmetic units idle, and the sum on the
      // arithmetic with memory idle. (A prefetch past the end of the row is harmless: it never
      // faults.)
      _mm_prefetch(reinterpret_cast<const char*>(x + kPrefetchDistance), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(x + kPrefetchDistance + 16), _MM_HINT_T0);
      for (int j = 0; j < kVectors; ++j) {
        __m256 s;
        const __m256 t = reduce_relative(load_z<kMasked, kScaled>(x, vscale, mask, j * kLanes), r, &s);
        // term = s * (1 + t * q)
        acc[j] = _mm256_fmadd_ps(_mm256_fmadd_ps(poly_q(t), t, _mm256_set1_ps(1.0f)), s, acc[j]);
      }
      x += kVectors * kLanes;
      if (kMasked) mask += kVectors * kLanes;
    }
    while (count > 0) {
      const size_t c = count < kLanes ? count : kLanes;
      __m256 s;
      const __m256 t = reduce_relative(load_z_tail<kMasked, kScaled>(x, vscale, mask, c), r, &s);
      acc[0] = _mm256_fmadd_ps(_mm256_fmadd_ps(poly_q(t), t, _mm256_set1_ps(1.0f)), s, acc[0]);
      x += c;
      if (kMasked) mask += c;
      count -= c;
    }
    const float sum = hsum(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
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

// Pass 2: y = e^z / (S_m 2^S_e) = 2^(n - S_e) * (1/S_m) * e^t. 1/S_m is folded into the
// polynomial's coefficients (P(t) = 1/S_m + t (c1/S_m + ... t c5/S_m)), so the division costs
// nothing per element: clamp, 3 FMAs + shift + subtract for the reduction, 5 FMAs, 1 multiply.
// n <= S_e + 1 for every kept element (S_e is the largest chunk exponent, up to the rounding of
// m_c * log2 e), so nothing overflows; excluded lanes, -inf and anything 127 or more binades
// below the largest term come out exactly 0.
//
// kStream: y is written with non-temporal stores (for outputs larger than the last-level cache,
// where the write-allocate read of every line would be wasted): a head of unaligned stores up to
// the first 32-byte boundary, aligned streaming stores, a masked tail, then sfence so that the
// weakly ordered stores are visible before the task ends.
template <bool kMasked, bool kScaled, bool kStream>
void vscaleextexp(size_t n, const float* x, const uint8_t* mask, float scale, float inv_mantissa,
                  float exponent, float* y) {
  constexpr int kVectors = 2;
  const __m256 vscale = _mm256_set1_ps(scale);
  const ExpRelative r = exp_relative_to(exponent);
  const __m256 d0 = _mm256_set1_ps(inv_mantissa);
  const __m256 d1 = _mm256_set1_ps(kC1 * inv_mantissa);
  const __m256 d2 = _mm256_set1_ps(kC2 * inv_mantissa);
  const __m256 d3 = _mm256_set1_ps(kC3 * inv_mantissa);
  const __m256 d4 = _mm256_set1_ps(kC4 * inv_mantissa);
  const __m256 d5 = _mm256_set1_ps(kC5 * inv_mantissa);
  auto eval = [&](__m256 z) {
    __m256 s;
    const __m256 t = reduce_relative(z, r, &s);
    __m256 p = _mm256_fmadd_ps(d5, t, d4);
    p = _mm256_fmadd_ps(p, t, d3);
    p = _mm256_fmadd_ps(p, t, d2);
    p = _mm256_fmadd_ps(p, t, d1);
    p = _mm256_fmadd_ps(p, t, d0);
    return _mm256_mul_ps(p, s);
  };
  if (kStream) {
    // Head: up to the first 32-byte boundary (y is at least 4-byte aligned).
    const size_t misaligned = (reinterpret_cast<uintptr_t>(y) / sizeof(float)) % kLanes;
    size_t head = misaligned == 0 ? 0 : kLanes - misaligned;
    head = head < n ? head : n;
    if (head > 0) {
      _mm256_maskstore_ps(y, lanes_below(head), eval(load_z_tail<kMasked, kScaled>(x, vscale, mask, head)));
      x += head;
      y += head;
      if (kMasked) mask += head;
      n -= head;
    }
  }
  for (; n >= kVectors * kLanes; n -= kVectors * kLanes) {
    // As in pass 1 (measured out of cache: ~0.47 against ~0.52 ns/element without).
    _mm_prefetch(reinterpret_cast<const char*>(x + kPrefetchDistance), _MM_HINT_T0);
    for (int j = 0; j < kVectors; ++j) {
      const __m256 v = eval(load_z<kMasked, kScaled>(x, vscale, mask, j * kLanes));
      if (kStream) {
        _mm256_stream_ps(y + j * kLanes, v);
      } else {
        _mm256_storeu_ps(y + j * kLanes, v);
      }
    }
    x += kVectors * kLanes;
    y += kVectors * kLanes;
    if (kMasked) mask += kVectors * kLanes;
  }
  while (n > 0) {
    const size_t count = n < kLanes ? n : kLanes;
    _mm256_maskstore_ps(y, lanes_below(count), eval(load_z_tail<kMasked, kScaled>(x, vscale, mask, count)));
    x += count;
    y += count;
    if (kMasked) mask += count;
    n -= count;
  }
  if (kStream) _mm_sfence();
}

// e^d for d = z - max <= 0 (the reload path): the reduction of exp_relative_to(0), but with ln2
// as one float constant instead of the hi/lo pair. |n| <= 127 here, so the error that drops,
// n * (ln2 - float(ln2)) <= 127 * 1.9e-9 = 2.4e-7 in t, is a relative error of 2.4e-7 in e^d
// (~2 ulp), far inside the 1e-5 tolerance; it saves one of the 10 FMA-pipe operations per vector
// that bound this loop. d at or below -127 ln2 (-inf included) gives exactly 0 (2^-127 is built
// as +0.0), NaN stays NaN. Returns s * (1 + t * q) computed as s + (t * s) * q.
inline __m256 exp_nonpositive(__m256 d, const ExpRelative& r) {
  d = _mm256_max_ps(r.floor, d);  // NaN passes (second operand)
  const __m256 kb = _mm256_fmadd_ps(d, _mm256_set1_ps(kLog2e), r.bias);
  const __m256 s = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_castps_si256(kb), 23));
  const __m256 k = _mm256_sub_ps(kb, r.bias);
  const __m256 t = _mm256_fmadd_ps(k, _mm256_set1_ps(-0x1.62E430p-1f), d);
  return _mm256_fmadd_ps(_mm256_mul_ps(t, s), poly_q(t), s);
}

// Reload pass 2: store e^(z - max) and return its sum. Four accumulators over 32 elements per
// iteration; lane sums are folded into double every kBlock elements (see above).
// Software prefetch distance of the reload exp pass (elements): 4 KiB ahead, measured best of
// 1, 2 and 4 K elements on AVX2.
constexpr size_t kReloadPrefetchDistance = 1024;

template <bool kMasked, bool kScaled>
float raddstoreexpminusmax(size_t n, const float* x, const uint8_t* mask, float scale, float max,
                           float* y) {
  constexpr int kVectors = 4;
  static_assert(kBlock % (kVectors * kLanes) == 0, "a block is a whole number of iterations");
  const __m256 vscale = _mm256_set1_ps(scale);
  const __m256 vmax = _mm256_set1_ps(max);
  const ExpRelative r = exp_relative_to(0.0f);
  double total = 0.0;
  while (n > 0) {
    __m256 acc[kVectors];
    for (int j = 0; j < kVectors; ++j) acc[j] = _mm256_setzero_ps();
    size_t block = n < kBlock ? n : kBlock;
    n -= block;
    for (; block >= kVectors * kLanes; block -= kVectors * kLanes) {
      // The next rows (or the rest of a long row) are fetched while this one is computed from
      // L1: in a [6144, 512] tensor (in L3) 0.55-0.65 ns/element against 0.8-1.05 without.
      _mm_prefetch(reinterpret_cast<const char*>(x + kReloadPrefetchDistance), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(x + kReloadPrefetchDistance + 16), _MM_HINT_T0);
      for (int j = 0; j < kVectors; ++j) {
        const __m256 z = load_z<kMasked, kScaled>(x, vscale, mask, j * kLanes);
        const __m256 e = exp_nonpositive(_mm256_sub_ps(z, vmax), r);
        _mm256_storeu_ps(y + j * kLanes, e);
        acc[j] = _mm256_add_ps(acc[j], e);
      }
      x += kVectors * kLanes;
      y += kVectors * kLanes;
      if (kMasked) mask += kVectors * kLanes;
    }
    while (block > 0) {
      const size_t count = block < kLanes ? block : kLanes;
      const __m256 z = load_z_tail<kMasked, kScaled>(x, vscale, mask, count);
      const __m256 e = exp_nonpositive(_mm256_sub_ps(z, vmax), r);
      _mm256_maskstore_ps(y, lanes_below(count), e);
      acc[0] = _mm256_add_ps(acc[0], e);
      x += count;
      y += count;
      if (kMasked) mask += count;
      block -= count;
    }
    const __m256 a = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    // Reduced in registers (a store to an aligned stack array would make every call realign
    // its stack frame, which shows on rows of a few elements).
    const __m256d d = _mm256_add_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(a)),
                                    _mm256_cvtps_pd(_mm256_extractf128_ps(a, 1)));
    const __m128d h = _mm_add_pd(_mm256_castpd256_pd128(d), _mm256_extractf128_pd(d, 1));
    total += _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
  }
  return static_cast<float>(total);
}

}  // namespace

// The public microkernels pick their template instance: mask or not, scale or not (scale == 1
// skips the multiply), streaming stores or not.
#define SURETY_DISPATCH_MASK_SCALE(fn, ...)                                                   \
  (mask != nullptr ? (scale != 1.0f ? fn<true, true>(__VA_ARGS__) : fn<true, false>(__VA_ARGS__)) \
                   : (scale != 1.0f ? fn<false, true>(__VA_ARGS__) : fn<false, false>(__VA_ARGS__)))

ExtExpSum f32_raddextexp__avx2_rr2_p5_c2048_u32_acc4(size_t n, const float* x, const uint8_t* mask, float scale) {
  return SURETY_DISPATCH_MASK_SCALE(raddextexp_chunked, n, x, mask, scale);
}

void f32_vscaleextexp__avx2_rr2_p5_u16(size_t n, const float* x, const uint8_t* mask, float scale,
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

float f32_rmax__avx2_u32_acc4(size_t n, const float* x, const uint8_t* mask, float scale) {
  const __m256 vscale = _mm256_set1_ps(scale);
  return SURETY_DISPATCH_MASK_SCALE(rmax, n, x, mask, vscale);
}

float f32_raddstoreexpminusmax__avx2_rr2_p5_u32_acc4(size_t n, const float* x, const uint8_t* mask, float scale,
                                                    float max, float* y) {
  return SURETY_DISPATCH_MASK_SCALE(raddstoreexpminusmax, n, x, mask, scale, max, y);
}

#undef SURETY_DISPATCH_MASK_SCALE

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

void f32_vmuladd__avx2_u8(size_t n, const float* x, const float* w, float* acc) {
  while (n > 0) {
    const size_t count = n < kLanes ? n : kLanes;
    const __m256i live = lanes_below(count);
    const __m256 sum = _mm256_fmadd_ps(_mm256_maskload_ps(w, live), _mm256_maskload_ps(x, live),
                                       _mm256_maskload_ps(acc, live));
    _mm256_maskstore_ps(acc, live, sum);
    x += count;
    w += count;
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
