#include "softmax/f32_softmax_row.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace surety {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr double kLn2 = 0.6931471805599453;

void fill(size_t n, float* y, float value) {
  for (size_t i = 0; i < n; ++i) y[i] = value;
}

// The rows whose maximum is not finite, off the fast path. rmax may have skipped a NaN, so it is
// looked for here: NaN anywhere among the kept elements makes the row NaN. Otherwise a maximum
// of -inf means nothing is kept (y = 0, lse = -inf), and +inf takes the limit: the mass is shared
// equally by the +inf elements, lse = +inf.
void softmax_row_nonfinite_max(size_t n, const float* x, const uint8_t* mask, float scale,
                               float max, float* y, float* lse, const float* dot_values,
                               float* dot) {
  size_t infinite = 0;
  bool nan = false;
  for (size_t i = 0; i < n; ++i) {
    if (mask != nullptr && mask[i] == 0) continue;
    const float z = scale * x[i];
    nan = nan || std::isnan(z);
    infinite += z == kInf ? 1 : 0;
  }
  if (nan) {
    fill(n, y, kNaN);
    if (lse != nullptr) *lse = kNaN;
    if (dot != nullptr) *dot = kNaN;
    return;
  }
  if (max == -kInf || infinite == 0) {
    fill(n, y, 0.0f);
    if (lse != nullptr) *lse = -kInf;
    if (dot != nullptr) *dot = kNaN;
    return;
  }
  const float share = 1.0f / static_cast<float>(infinite);
  double sum = 0.0;
  for (size_t i = 0; i < n; ++i) {
    const bool kept = mask == nullptr || mask[i] != 0;
    const bool top = kept && scale * x[i] == kInf;  // read before y[i] is written (x may be y)
    y[i] = top ? share : 0.0f;
    if (top && dot_values != nullptr) sum += static_cast<double>(dot_values[i]) * share;
  }
  if (lse != nullptr) *lse = kInf;
  if (dot != nullptr) *dot = static_cast<float>(sum);
}

}  // namespace

float ext_exp_sum_log(ExtExpSum sum) {
  return static_cast<float>(std::log(static_cast<double>(sum.mantissa)) +
                            static_cast<double>(sum.exponent) * kLn2);
}

bool ext_exp_sum_in_domain(ExtExpSum s) {
  return s.mantissa > 0.0f && s.mantissa <= 3.0e38f && s.exponent >= kExtExpMinExponent &&
         s.exponent <= kExtExpMaxExponent;
}

ExtExpSum ext_exp_sum_merge(const ExtExpSum* parts, size_t count) {
  float exponent = -std::numeric_limits<float>::infinity();
  for (size_t i = 0; i < count; ++i) {
    if (std::isnan(parts[i].mantissa) || std::isnan(parts[i].exponent)) return {kNaN, kNaN};
    if (parts[i].mantissa > 0.0f && parts[i].exponent > exponent) exponent = parts[i].exponent;
  }
  if (exponent == -std::numeric_limits<float>::infinity()) return {0.0f, -65536.0f};
  if (!(exponent <= kExtExpMaxExponent)) return {kNaN, kNaN};
  double mantissa = 0.0;
  for (size_t i = 0; i < count; ++i) {
    if (!(parts[i].mantissa > 0.0f)) continue;
    // Exponents are integers in [-2^16, 2^16] here; the clamp keeps a stray one from overflowing
    // the int conversion (2^-1000 is 0 in float either way).
    const float delta = std::max(parts[i].exponent - exponent, -1000.0f);
    mantissa += std::ldexp(static_cast<double>(parts[i].mantissa), static_cast<int>(delta));
  }
  return {static_cast<float>(mantissa), exponent};
}

SoftmaxAlgorithm choose_softmax_algorithm(size_t row_length, size_t total_elements) {
  return row_length >= kTwoPassMinRowLength && total_elements >= kTwoPassMinTensorElements
             ? SoftmaxAlgorithm::kTwoPass
             : SoftmaxAlgorithm::kReload;
}

void f32_softmax_row_excluded(size_t n, float* y, float* lse) {
  fill(n, y, 0.0f);
  if (lse != nullptr) *lse = -kInf;
}

void f32_softmax_row_reload(const F32SoftmaxKernels& k, size_t n, const float* x,
                            const uint8_t* mask, float scale, float* y, float* lse,
                            const float* dot_values, float* dot) {
  const float max = k.rmax(n, x, mask, scale);
  if (!std::isfinite(max)) {
    if (std::isnan(max)) {
      fill(n, y, kNaN);
      if (lse != nullptr) *lse = kNaN;
      if (dot != nullptr) *dot = kNaN;
      return;
    }
    softmax_row_nonfinite_max(n, x, mask, scale, max, y, lse, dot_values, dot);
    return;
  }
  // Every kept z - max is <= 0 (and the maximum itself contributes e^0 = 1), so the sum is in
  // [1, n]: no overflow, and no underflow of the sum however negative the values are.
  const float sum = k.raddstoreexpminusmax(n, x, mask, scale, max, y);
  if (std::isnan(sum)) {
    fill(n, y, kNaN);
    if (lse != nullptr) *lse = kNaN;
    if (dot != nullptr) *dot = kNaN;
    return;
  }
  const float inv_sum = 1.0f / sum;
  if (dot_values != nullptr) {
    *dot = k.vmulc_rdot(n, y, inv_sum, dot_values);
  } else {
    k.vmulc(n, y, inv_sum);
  }
  // The log costs tens of nanoseconds, as much as a short row: only when asked for.
  if (lse != nullptr) {
    *lse = static_cast<float>(static_cast<double>(max) + std::log(static_cast<double>(sum)));
  }
}

void f32_softmax_row_scale_ext(const F32SoftmaxKernels& k, size_t n, const float* x,
                               const uint8_t* mask, float scale, ExtExpSum sum, float* y,
                               bool nontemporal) {
  // Streaming stores end with a store fence, which costs about as much as writing a few hundred
  // elements: only calls long enough to amortise it stream (measured, 256-element rows: 1.0
  // ns/element streaming against 0.3 with ordinary stores).
  k.vscaleextexp(n, x, mask, scale, 1.0f / sum.mantissa, sum.exponent, y,
                 nontemporal && n >= kNonTemporalMinLength);
}

void f32_softmax_row(const F32SoftmaxKernels& k, SoftmaxAlgorithm algorithm, size_t n,
                     const float* x, const uint8_t* mask, float scale, float* y, float* lse,
                     bool nontemporal) {
  if (algorithm == SoftmaxAlgorithm::kAuto) algorithm = choose_softmax_algorithm(n, n);
  const bool two_pass = algorithm == SoftmaxAlgorithm::kTwoPass;
  if (two_pass) {
    const ExtExpSum sum = k.raddextexp(n, x, mask, scale);
    if (ext_exp_sum_in_domain(sum)) {
      f32_softmax_row_scale_ext(k, n, x, mask, scale, sum, y, nontemporal);
      if (lse != nullptr) *lse = ext_exp_sum_log(sum);
      return;
    }
    // NaN, +inf, nothing kept, or magnitudes beyond the two-pass domain: reload handles all.
  }
  f32_softmax_row_reload(k, n, x, mask, scale, y, lse);
}

}  // namespace surety
