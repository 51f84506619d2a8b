// SparseAttention's algorithm, apart from ORT: flash-style tiles over the blocks the sparse
// pattern touches, an online softmax per query row, and the estimate of the softmax mass and
// output outside the sparse set (Re-ttention's correction). Semantics: surety_serving.kernels.reference's
// sparse_attention, documented in docs/kernels.md.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>

#include "attention/f32_attention.h"
#include "softmax/f32_softmax.h"

namespace surety {

enum class AttentionPattern { kDense, kBand, kBlockLocalGlobal };
enum class MassEstimator { kNone, kSampled, kGaussian };

struct SparseAttentionConfig {
  int64_t num_heads = 1;
  float scale = 0.0f;  // 0: 1/√d
  bool causal = false;
  AttentionPattern pattern = AttentionPattern::kDense;
  int64_t window = 0;  // band width; 0: ⌊T·density⌋ (at least 1)
  float density = 0.0f;
  int64_t block_size = 64;
  int64_t num_local_blocks = 1;
  int64_t num_global = 0;
  MassEstimator estimator = MassEstimator::kNone;
  int64_t sample_stride = 32;
};

// Validated shapes and the tensors, BSNH: q [batch, queries, heads·d], k [batch, keys, heads·d],
// v [batch, keys, heads·dv], keep [batch, keys] (nonzero = the key is kept) or null,
// y [batch, queries, heads·dv], rho [batch, heads, queries] or null.
struct SparseAttentionProblem {
  int64_t batch = 0;
  int64_t queries = 0;
  int64_t keys = 0;
  int64_t d = 0;
  int64_t dv = 0;
  const float* q = nullptr;
  const float* k = nullptr;
  const float* v = nullptr;
  const uint8_t* keep = nullptr;
  float* y = nullptr;
  float* rho = nullptr;
};

// Runs fn(i) for every i in [0, count), in any order and possibly in parallel.
using TaskRunner = std::function<void(size_t count, const std::function<void(size_t)>& fn)>;

void f32_sparse_attention(const F32AttentionKernels& gemm, const F32SoftmaxKernels& softmax,
                          const SparseAttentionConfig& config, const SparseAttentionProblem& problem,
                          const TaskRunner& run);

}  // namespace surety
