// The scalar softmax microkernels: the reference every vectorized variant is tested against (all
// of them must agree with it, and with surety_serving.kernels.reference, within the op's tolerance) and the
// path used on CPUs without AVX2.
//
// Clarity and accuracy over speed: the exponentials are evaluated in double precision (std::exp
// after the same range reduction the vector kernels use) and the sums are accumulated in
// double, so that a row of a million elements keeps its 1e-5 relative accuracy without the
// many independent accumulators the vector kernels rely on.
#include <cmath>
#include <limits>

#include "softmax/f32_softmax.h"

namespace surety {
namespace {

constexpr double kLog2e = 1.4426950408889634;
constexpr double kLn2 = 0.6931471805599453;
// z above this has n = round(z * log2 e) > 2^16: outside the two-pass domain (see f32_softmax.h).
constexpr float kExtExpMaxInput = 45426.09375f;

inline bool excluded(const uint8_t* mask, size_t i) { return mask != nullptr && mask[i] == 0; }

}  // namespace

ExtExpSum f32_raddextexp__scalar(size_t n, const float* x, const uint8_t* mask, float scale) {
  // Extended-exponent sum (M, E): every term is m * 2^k with m = e^(z - k ln2) in [0.7, 1.42]
  // and an integer k; M is kept relative to the largest k seen so far.
  double sum_mantissa = 0.0;
  double sum_exponent = -65536.0;
  for (size_t i = 0; i < n; ++i) {
    if (excluded(mask, i)) continue;
    const float z = scale * x[i];
    if (!(z <= kExtExpMaxInput)) {
      // NaN, +inf or a value beyond the domain: the caller recomputes the row by reloading.
      return {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::quiet_NaN()};
    }
    if (z < kExtExpMinInput) continue;  // at most 2^-200 of the largest term; see f32_softmax.h
    const double k = std::nearbyint(static_cast<double>(z) * kLog2e);
    const double m = std::exp(static_cast<double>(z) - k * kLn2);
    if (k > sum_exponent) {
      sum_mantissa = std::ldexp(sum_mantissa, static_cast<int>(sum_exponent - k));
      sum_exponent = k;
    }
    sum_mantissa += std::ldexp(m, static_cast<int>(k - sum_exponent));
  }
  return {static_cast<float>(sum_mantissa), static_cast<float>(sum_exponent)};
}

void f32_vscaleextexp__scalar(size_t n, const float* x, const uint8_t* mask, float scale,
                              float inv_mantissa, float exponent, float* y, bool /*nontemporal*/) {
  for (size_t i = 0; i < n; ++i) {
    const float z = scale * x[i];
    if (excluded(mask, i) || z < kExtExpMinInput) {
      y[i] = 0.0f;
      continue;
    }
    // y = e^z / (S_m 2^S_e) = m * (1/S_m) * 2^(k - S_e), with k <= S_e.
    const double k = std::nearbyint(static_cast<double>(z) * kLog2e);
    const double m = std::exp(static_cast<double>(z) - k * kLn2);
    y[i] = static_cast<float>(std::ldexp(m * inv_mantissa, static_cast<int>(k - exponent)));
  }
}

float f32_rmax__scalar(size_t n, const float* x, const uint8_t* mask, float scale) {
  float max = -std::numeric_limits<float>::infinity();
  for (size_t i = 0; i < n; ++i) {
    if (excluded(mask, i)) continue;
    const float z = scale * x[i];
    if (z > max) max = z;
  }
  return max;
}

float f32_raddstoreexpminusmax__scalar(size_t n, const float* x, const uint8_t* mask, float scale,
                                       float max, float* y) {
  double sum = 0.0;
  for (size_t i = 0; i < n; ++i) {
    if (excluded(mask, i)) {
      y[i] = 0.0f;
      continue;
    }
    // z - max <= 0 (max is finite), so e^(z - max) <= 1; z = -inf gives 0, NaN stays NaN.
    const double e = std::exp(static_cast<double>(scale * x[i]) - static_cast<double>(max));
    y[i] = static_cast<float>(e);
    sum += e;
  }
  return static_cast<float>(sum);
}

void f32_vmulc__scalar(size_t n, float* y, float c) {
  for (size_t i = 0; i < n; ++i) y[i] *= c;
}

void f32_vaxpy__scalar(size_t n, const float* x, float a, float* acc) {
  for (size_t i = 0; i < n; ++i) acc[i] += a * x[i];
}

void f32_vmuladd__scalar(size_t n, const float* x, const float* w, float* acc) {
  for (size_t i = 0; i < n; ++i) acc[i] += w[i] * x[i];
}

float f32_vmulc_rdot__scalar(size_t n, float* y, float c, const float* v) {
  double dot = 0.0;
  for (size_t i = 0; i < n; ++i) {
    y[i] *= c;
    dot += static_cast<double>(v[i]) * static_cast<double>(y[i]);
  }
  return static_cast<float>(dot);
}

}  // namespace surety
