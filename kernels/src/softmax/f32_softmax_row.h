// Softmax of one row from a path's microkernels, with the row-level decisions: which algorithm,
// and the edge cases (no kept element, +inf, NaN) that the microkernels leave to their caller.
#pragma once

#include <cstddef>
#include <cstdint>

#include "softmax/f32_softmax.h"

namespace surety {

enum class SoftmaxAlgorithm : int64_t {
  kAuto = 0,     // two-pass from kTwoPassMinRowLength elements on, reload below
  kTwoPass = 1,  // (mantissa, exponent) sum, then one scaling pass: 2 reads + 1 write
  kReload = 2,   // max, store e^(z - max) and sum, rescale: 3 reads + 2 writes
};

// Row length from which kAuto takes the two-pass algorithm. Chosen from the crossover
// measurement in docs/benchmarks.md (`bench/softmax.py --crossover`, 2-core AMD EPYC VM, AVX2):
// reload was faster at every D up to 262,144 (two-pass / reload = 1.03..1.6 at one thread) and
// two-pass faster at 1,048,576 (0.88). On that machine one core's exp throughput, not memory,
// bounds rows that stay in L2/L3, so the second exp of the two-pass algorithm costs more than the
// memory pass it saves until rows are far out of cache.
constexpr size_t kTwoPassMinRowLength = 524288;

// One row: y = softmax(scale * x) over the kept elements; *lse = log sum e^(scale * x).
// `dot_values`, when not null, also gets *dot = sum_i dot_values[i] * y_i (ExpectedScore).
// x and y may be the same buffer.
void f32_softmax_row(const F32SoftmaxKernels& k, SoftmaxAlgorithm algorithm, size_t n,
                     const float* x, const uint8_t* mask, float scale, float* y, float* lse);

// The reload (three-pass) algorithm; exact for every input, including the rows the two-pass
// algorithm hands back. With dot_values, *dot = sum_i dot_values[i] * y_i is fused into the last
// pass; a row with no kept element then has *dot = NaN (no distribution to take it over).
void f32_softmax_row_reload(const F32SoftmaxKernels& k, size_t n, const float* x,
                            const uint8_t* mask, float scale, float* y, float* lse,
                            const float* dot_values = nullptr, float* dot = nullptr);

// Pass 2 of the two-pass algorithm once the row's sum is known and in the domain.
void f32_softmax_row_scale_ext(const F32SoftmaxKernels& k, size_t n, const float* x,
                               const uint8_t* mask, float scale, ExtExpSum sum, float* y);

// log of a pass-1 sum: ln(S_m) + S_e ln 2.
float ext_exp_sum_log(ExtExpSum sum);

// The whole row excluded (a row-wide mask of false): y = 0, lse = -inf.
void f32_softmax_row_excluded(size_t n, float* y, float* lse);

}  // namespace surety
