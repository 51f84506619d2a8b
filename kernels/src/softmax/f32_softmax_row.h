// Softmax of one row from a path's microkernels, with the row-level decisions: which algorithm,
// and the edge cases (no kept element, +inf, NaN) that the microkernels leave to their caller.
#pragma once

#include <cstddef>
#include <cstdint>

#include "softmax/f32_softmax.h"

namespace surety {

enum class SoftmaxAlgorithm : int64_t {
  kAuto = 0,     // choose_softmax_algorithm: two-pass for long rows of tensors out of cache
  kTwoPass = 1,  // (mantissa, exponent) sum, then one scaling pass: 2 reads + 1 write
  kReload = 2,   // max, store e^(z - max) and sum, rescale: 3 reads + 2 writes
};

// When kAuto takes the two-pass algorithm: rows of at least kTwoPassMinRowLength elements in a
// tensor of at least kTwoPassMinTensorElements. Chosen from the crossover measurement in
// docs/benchmarks.md (`bench/softmax.py --crossover`, 2-core AMD EPYC VM, AVX2). The two-pass
// algorithm saves a pass over memory but evaluates the exponential twice; with the chunked pass 1
// and streaming stores it beat reload on a 64 MiB tensor from D = 4,096 on (0.68-0.96 of the
// reload time; 1.15-1.36 at D = 256 and 1,024), while on tensors that stay in the last-level
// cache the second exponential costs more than the memory pass it saves (D = 4,096 in a 4 MiB
// tensor: two-pass 1.2x the reload time; about even at 8 MiB; two-pass ahead from 16 MiB).
constexpr size_t kTwoPassMinRowLength = 4096;
constexpr size_t kTwoPassMinTensorElements = size_t{4} << 20;  // 16 MiB of float32

// The algorithm kAuto resolves to for rows of `row_length` in a tensor of `total_elements`.
SoftmaxAlgorithm choose_softmax_algorithm(size_t row_length, size_t total_elements);

// Two-pass rows (or split-row chunks) shorter than this never use streaming stores, whatever
// the caller asks: the store fence that ends them is not worth it for a short row.
constexpr size_t kNonTemporalMinLength = 16384;

// One row: y = softmax(scale * x) over the kept elements; *lse = log sum e^(scale * x) unless
// lse is null (every function here takes a null lse as "not wanted"). x and y may be the same
// buffer. `nontemporal`: the two-pass scaling pass may write y with streaming stores.
void f32_softmax_row(const F32SoftmaxKernels& k, SoftmaxAlgorithm algorithm, size_t n,
                     const float* x, const uint8_t* mask, float scale, float* y, float* lse,
                     bool nontemporal = false);

// The reload (three-pass) algorithm; exact for every input, including the rows the two-pass
// algorithm hands back. With dot_values, *dot = sum_i dot_values[i] * y_i is fused into the last
// pass; a row with no kept element then has *dot = NaN (no distribution to take it over).
void f32_softmax_row_reload(const F32SoftmaxKernels& k, size_t n, const float* x,
                            const uint8_t* mask, float scale, float* y, float* lse,
                            const float* dot_values = nullptr, float* dot = nullptr);

// Pass 2 of the two-pass algorithm once the row's sum is known and in the domain.
void f32_softmax_row_scale_ext(const F32SoftmaxKernels& k, size_t n, const float* x,
                               const uint8_t* mask, float scale, ExtExpSum sum, float* y,
                               bool nontemporal);

// log of a pass-1 sum: ln(S_m) + S_e ln 2.
float ext_exp_sum_log(ExtExpSum sum);

// The whole row excluded (a row-wide mask of false): y = 0, lse = -inf.
void f32_softmax_row_excluded(size_t n, float* y, float* lse);

}  // namespace surety
