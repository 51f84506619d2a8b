// Softmax microkernels on one row (or one chunk of a row), one set per instruction-set path.
//
// Every microkernel works on z_i = scale * x_i (a float32 product, rounded once) over the
// elements the row keeps: `mask` is null (every element kept) or one byte per element, 0 meaning
// excluded. An excluded element behaves exactly like z = -inf, so a NaN at an excluded position
// never reaches the result.
//
// Names say what, then how (XNNPACK's grammar): f32_raddextexp__avx2_rr2_p5_c2048_u32_acc4 is a
// float32 reduce-add of exp in extended-exponent form, AVX2, two-constant range reduction,
// degree-5 polynomial, chunks of 2048 elements, 32 elements per main loop iteration, 4
// independent accumulators.
#pragma once

#include <cstddef>
#include <cstdint>

#include "isa.h"

namespace surety {

// A sum of exponentials held as mantissa * 2^exponent (the exponent is an integer stored in a
// float). Keeping the exponent apart is what lets the two-pass softmax sum e^z without first
// subtracting the row maximum: neither part can overflow.
struct ExtExpSum {
  float mantissa;
  float exponent;
};

// The two-pass kernels compute e^z = m * 2^n with n = round(z * log2(e)) and m = e^(z - n*ln2).
// The reduction z - n*ln2 is accurate only while n fits comfortably in a float's 24-bit
// significand (n is rounded from a float product, and the rounding error of that product, not of
// n*ln2, is what pushes t = z - n*ln2 past +-ln2/2 where the polynomial is fitted). Below
// 2^16 the error in t is < 2^-8 * ln2 and the polynomial stays within a few ulp. So:
//   * z below kExtExpMinInput is clamped to it (n = -2^16). Its contribution 2^(-2^16 - S_e)
//     is exactly 0 in float whenever the row's largest exponent S_e is above kExtExpMinExponent
//     (2^-200 relative to the largest term), which also makes -inf, mask sentinels such as
//     -1e30 or -FLT_MAX, and excluded elements contribute mantissa 0.
//     (The vector paths clamp relative to the exponent fixed for each chunk, or for the row in
//     pass 2: a term 127 binades below it is exactly 0, as is everything below kExtExpMinInput.)
//   * a row whose sum ends outside [kExtExpMinExponent, kExtExpMaxExponent], or whose mantissa
//     is not a positive finite number (NaN, +inf, z so large that n overflowed), is recomputed
//     by the three-pass reload path, which subtracts the row maximum and handles every value.
constexpr float kExtExpMaxExponent = 65536.0f;                  // 2^16
constexpr float kExtExpMinInput = -45426.09375f;                // -2^16 * ln2, rounded to float
constexpr float kExtExpMinExponent = -65536.0f + 200.0f;        // clamped lanes are 2^-200 below

// Whether a pass-1 sum can be used by pass 2 (else the row is recomputed by reloading).
bool ext_exp_sum_in_domain(ExtExpSum s);

// Sum of extended-exponent sums (the lanes of a vector kernel, the chunks of a long row): every
// part rescaled to the largest exponent, by powers of two no greater than 1. NaN when a part is
// NaN or the largest exponent is beyond the domain (the row is then recomputed anyway).
//
// Defined in a generic translation unit and called by the ISA-specific ones: a function or
// template defined inline in a header shared by translation units compiled with different -m
// flags may be emitted once with AVX2 instructions and reached from the scalar path, so the
// microkernel files call only such out-of-line helpers and intrinsics.
ExtExpSum ext_exp_sum_merge(const ExtExpSum* parts, size_t count);

// Pass 1 of the two-pass softmax: sum of e^z over the kept elements, in extended-exponent form.
// Pairs (M, E) merge as E' = max(E, n), M' = M * 2^(E - E') + m * 2^(n - E'); both scale factors
// are powers of two no greater than 1, so nothing overflows. The scalar path applies the rule per
// element (Dukhan & Ablavatski); the vector paths per L1-sized chunk, whose exponent they fix in
// advance from the chunk's maximum (f32_softmax__avx2.cc), so the rule costs nothing per element.
using F32RAddExtExpFn = ExtExpSum (*)(size_t n, const float* x, const uint8_t* mask, float scale);

// Pass 2: y_i = m_i * inv_mantissa * 2^(n_i - exponent) for kept elements, 0 for excluded ones,
// where (1/inv_mantissa, exponent) is the pass-1 sum. n_i <= exponent (+1 at most, from rounding)
// for every kept element, so y cannot overflow. `nontemporal`: write y with streaming stores
// (outputs larger than the last-level cache: no write-allocate read), fenced before returning;
// a hint that a path may ignore.
using F32VScaleExtExpFn = void (*)(size_t n, const float* x, const uint8_t* mask, float scale,
                                   float inv_mantissa, float exponent, float* y, bool nontemporal);

// Reload pass 1: the largest z over the kept elements (-inf when none). NaN may be skipped; the
// exp pass catches it.
using F32RMaxFn = float (*)(size_t n, const float* x, const uint8_t* mask, float scale);

// Reload pass 2: y_i = e^(z_i - max) (0 for excluded elements), returns the sum of the y_i (NaN
// when a kept z is NaN). Requires a finite max.
using F32RAddStoreExpMinusMaxFn = float (*)(size_t n, const float* x, const uint8_t* mask,
                                            float scale, float max, float* y);

// Reload pass 3: y_i *= c.
using F32VMulCFn = void (*)(size_t n, float* y, float c);

// ExpectedScore: acc_i += a * x_i (one weight per layer, [L] weights).
using F32VAxpyFn = void (*)(size_t n, const float* x, float a, float* acc);

// ExpectedScore: acc_i += w_i * x_i (one weight per layer and score token, [L, K] weights).
// Rounds exactly as vaxpy does with every w_i = a (the same fused or unfused multiply-add per
// path), so [L, K] weights that repeat one value per layer give the [L] form's result bit for bit.
using F32VMulAddFn = void (*)(size_t n, const float* x, const float* w, float* acc);

// ExpectedScore's last pass: y_i *= c, and returns sum_i v_i * y_i (after scaling).
using F32VMulCRDotFn = float (*)(size_t n, float* y, float c, const float* v);

// One path's set of microkernels.
struct F32SoftmaxKernels {
  Isa isa;
  F32RAddExtExpFn raddextexp;
  F32VScaleExtExpFn vscaleextexp;
  F32RMaxFn rmax;
  F32RAddStoreExpMinusMaxFn raddstoreexpminusmax;
  F32VMulCFn vmulc;
  F32VAxpyFn vaxpy;
  F32VMulAddFn vmuladd;
  F32VMulCRDotFn vmulc_rdot;
};

// Prototypes of every variant, from the variant list.
#define SURETY_F32_SOFTMAX_VARIANT(isa, raddextexp, vscaleextexp, rmax, raddstoreexpminusmax, \
                                   vmulc, vaxpy, vmuladd, vmulc_rdot)                           \
  ExtExpSum raddextexp(size_t n, const float* x, const uint8_t* mask, float scale);             \
  void vscaleextexp(size_t n, const float* x, const uint8_t* mask, float scale,                 \
                    float inv_mantissa, float exponent, float* y, bool nontemporal);            \
  float rmax(size_t n, const float* x, const uint8_t* mask, float scale);                       \
  float raddstoreexpminusmax(size_t n, const float* x, const uint8_t* mask, float scale,        \
                             float max, float* y);                                              \
  void vmulc(size_t n, float* y, float c);                                                      \
  void vaxpy(size_t n, const float* x, float a, float* acc);                                    \
  void vmuladd(size_t n, const float* x, const float* w, float* acc);                           \
  float vmulc_rdot(size_t n, float* y, float c, const float* v);
#include "softmax/f32_softmax_variants.inc"
#undef SURETY_F32_SOFTMAX_VARIANT

// The microkernels of `isa`'s path.
const F32SoftmaxKernels& f32_softmax_kernels(Isa isa);

}  // namespace surety
