#include "attention/sparse_attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

namespace surety {
namespace {

// A tile is kQueryTile queries × key_tile keys: the score and probability tiles and one key tile
// of K and V stay in L1/L2 while the query tile's accumulators are updated. Dense attention
// takes 128-key tiles (a longer k loop for P·V, fewer online-softmax rescales: 8% faster than 64
// at S = 1,024-2,048 in bench/attention.py); the sparse patterns take 64, which wastes fewer
// keys at the edges of a band or a block (64-key tiles were 10-15% faster for a 3.1% band).
constexpr size_t kQueryTile = 64;
constexpr size_t kMaxKeyTile = 128;

size_t key_tile(AttentionPattern pattern) { return pattern == AttentionPattern::kDense ? kMaxKeyTile : 64; }

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

size_t round_up(size_t x, size_t multiple) { return (x + multiple - 1) / multiple * multiple; }

// Keys [lo, hi).
struct Span {
  int64_t lo;
  int64_t hi;
};

// The sparse set of a query, as at most two spans of keys (the pattern only: padding and
// causality are applied apart).
class PatternSpans {
 public:
  PatternSpans(const SparseAttentionConfig& c, int64_t keys) : c_(c), keys_(keys) {
    if (c.pattern == AttentionPattern::kBand) {
      int64_t window = c.window;
      if (window <= 0) {
        window = std::max<int64_t>(1, static_cast<int64_t>(std::floor(static_cast<double>(keys) * c.density)));
      }
      half_ = window / 2;
    }
  }

  int spans(int64_t i, Span* out) const {
    switch (c_.pattern) {
      case AttentionPattern::kDense:
        out[0] = {0, keys_};
        return 1;
      case AttentionPattern::kBand:
        out[0] = {std::max<int64_t>(0, i - half_), std::min<int64_t>(keys_, i + half_ + 1)};
        return out[0].lo < out[0].hi ? 1 : 0;
      case AttentionPattern::kBlockLocalGlobal: {
        if (i < c_.num_global) {
          out[0] = {0, keys_};
          return 1;
        }
        int n = 0;
        if (c_.num_global > 0) out[n++] = {0, std::min(c_.num_global, keys_)};
        // Neighbouring blocks up to num_local_blocks away; more than keys_ blocks away is all.
        const int64_t block = i / c_.block_size;
        const int64_t reach = std::min(c_.num_local_blocks, keys_);
        const int64_t lo = std::max<int64_t>(0, (block - reach) * c_.block_size);
        const int64_t hi = std::min<int64_t>(keys_, (block + reach + 1) * c_.block_size);
        if (lo < hi) out[n++] = {lo, hi};
        return n;
      }
    }
    return 0;
  }

 private:
  const SparseAttentionConfig& c_;
  int64_t keys_;
  int64_t half_ = 0;
};

// What one batch row shares across heads: the padding mask, its prefix counts (how many keys a
// query is allowed) and whether each key tile keeps all of its keys.
struct BatchKeys {
  const uint8_t* keep = nullptr;  // [keys] or null (all kept)
  std::vector<int64_t> prefix;    // prefix[j] = kept keys among the first j
  std::vector<uint8_t> tile_full;  // per key tile: every key in it kept
};

// One (batch, head): K transposed and V, packed per key tile with zero padding, and what the
// estimators keep between phases.
struct HeadData {
  std::vector<float> kt;  // tile t: [d][key_tile] at t·d·key_tile
  std::vector<float> v;   // [tiles·key_tile][dv_pad]
  // gaussian: μ_k [d], Σ_kk [d][d_pad], μ_v [dv_pad], Σ_kv [d][dv_pad] (population moments over
  // the kept keys; Σ_kv = Σ_vkᵀ so that Ô_out = μ_v + u·Σ_kv is a row-times-matrix product).
  std::vector<float> mu_k, sigma_kk, mu_v, sigma_kv;
  bool has_moments = false;
  // sampled: log D_out and the normalised Ô_out at the sampled rows; per query, log D_S, the
  // count of allowed keys outside the set and whether the row met a NaN.
  std::vector<double> sample_lse_out;  // [samples]
  std::vector<float> sample_out;       // [samples][dv_pad]
  std::vector<double> lse_in;          // [queries]
  std::vector<int64_t> n_out;          // [queries]
  std::vector<uint8_t> invalid;        // [queries]
};

enum class KeySelect { kInSet, kOutOfSet };

// The online-softmax state of a tile of query rows: running max m (scaled scores), running sum
// l of e^(s − m), count of keys seen, and the unnormalised output Σ e^(s − m)·v.
struct RowState {
  explicit RowState(size_t dv_pad)
      : m(kQueryTile, kNegInf), l(kQueryTile, 0.0f), count(kQueryTile, 0), invalid(kQueryTile, 0),
        acc(kQueryTile * dv_pad, 0.0f) {}
  std::vector<float> m, l;
  std::vector<int64_t> count;
  std::vector<uint8_t> invalid;  // a NaN or +inf score was met
  std::vector<float> acc;
  // log Σ e^s over what was seen (−inf when nothing).
  double lse(size_t r) const { return l[r] > 0.0f ? static_cast<double>(m[r]) + std::log(static_cast<double>(l[r])) : -INFINITY; }
};

bool has_nan(size_t n, const float* x, const uint8_t* mask) {
  for (size_t j = 0; j < n; ++j) {
    if ((mask == nullptr || mask[j] != 0) && std::isnan(x[j])) return true;
  }
  return false;
}

// ρ = D_S / (D_S + D_out) from log-masses: 1 when D_out = 0, 0 when D_S = 0 < D_out.
double kept_mass(double lse_in, double log_out) {
  if (log_out == -INFINITY) return 1.0;
  if (lse_in == -INFINITY) return 0.0;
  return 1.0 / (1.0 + std::exp(log_out - lse_in));
}

class Attention {
 public:
  Attention(const F32AttentionKernels& gemm, const F32SoftmaxKernels& softmax, const SparseAttentionConfig& config,
            const SparseAttentionProblem& p)
      : gemm_(gemm.gemm),
        sm_(softmax),
        c_(config),
        p_(p),
        pattern_(config, p.keys),
        heads_(config.num_heads),
        d_(static_cast<size_t>(p.d)),
        dv_(static_cast<size_t>(p.dv)),
        d_pad_(round_up(d_, kF32GemmColumnMultiple)),
        dv_pad_(round_up(dv_, kF32GemmColumnMultiple)),
        key_tile_(key_tile(config.pattern)),
        key_tiles_(round_up(static_cast<size_t>(p.keys), key_tile_) / key_tile_),
        query_tiles_(round_up(static_cast<size_t>(p.queries), kQueryTile) / kQueryTile),
        scale_(config.scale != 0.0f ? config.scale : static_cast<float>(1.0 / std::sqrt(static_cast<double>(p.d)))) {}

  void run(const TaskRunner& run) {
    prepare_batches();
    const size_t heads = static_cast<size_t>(p_.batch * heads_);
    heads_data_.resize(heads);
    run(heads, [&](size_t bh) { prepare_head(bh); });
    if (c_.estimator != MassEstimator::kSampled) {
      run(heads * query_tiles_, [&](size_t t) { query_tile(t / query_tiles_, t % query_tiles_); });
      return;
    }
    // sampled: the sampled rows' mass outside the set and the sparse pass of every row are
    // independent (one phase); interpolating needs both (a second phase).
    for (int64_t i = 0; i < p_.queries; i += c_.sample_stride) samples_.push_back(i);
    if (samples_.back() != p_.queries - 1) samples_.push_back(p_.queries - 1);
    const size_t groups = round_up(samples_.size(), kQueryTile) / kQueryTile;
    for (HeadData& h : heads_data_) {
      h.sample_lse_out.assign(samples_.size(), -INFINITY);
      h.sample_out.assign(samples_.size() * dv_pad_, 0.0f);
      h.lse_in.assign(static_cast<size_t>(p_.queries), -INFINITY);
      h.n_out.assign(static_cast<size_t>(p_.queries), 0);
      h.invalid.assign(static_cast<size_t>(p_.queries), 0);
    }
    const size_t tiles = heads * query_tiles_;
    run(tiles + heads * groups, [&](size_t t) {
      if (t < tiles) {
        query_tile(t / query_tiles_, t % query_tiles_);
      } else {
        sample_rows((t - tiles) / groups, (t - tiles) % groups);
      }
    });
    run(tiles, [&](size_t t) { interpolate_tile(t / query_tiles_, t % query_tiles_); });
  }

 private:
  const uint8_t* keep_row(int64_t b) const { return p_.keep != nullptr ? p_.keep + b * p_.keys : nullptr; }

  void prepare_batches() {
    batches_.resize(static_cast<size_t>(p_.batch));
    for (int64_t b = 0; b < p_.batch; ++b) {
      BatchKeys& bk = batches_[static_cast<size_t>(b)];
      bk.keep = keep_row(b);
      bk.prefix.assign(static_cast<size_t>(p_.keys) + 1, 0);
      for (int64_t j = 0; j < p_.keys; ++j) {
        bk.prefix[static_cast<size_t>(j) + 1] = bk.prefix[static_cast<size_t>(j)] + (bk.keep == nullptr || bk.keep[j] != 0);
      }
      bk.tile_full.assign(key_tiles_, 1);
      for (size_t t = 0; t < key_tiles_; ++t) {
        const size_t j0 = t * key_tile_;
        const size_t j1 = std::min(j0 + key_tile_, static_cast<size_t>(p_.keys));
        bk.tile_full[t] = bk.prefix[j1] - bk.prefix[j0] == static_cast<int64_t>(j1 - j0);
      }
    }
  }

  // Packs K transposed and V of one (batch, head), and fits the gaussian moments.
  void prepare_head(size_t bh) {
    const int64_t b = static_cast<int64_t>(bh) / heads_;
    const int64_t h = static_cast<int64_t>(bh) % heads_;
    HeadData& hd = heads_data_[bh];
    const size_t keys = static_cast<size_t>(p_.keys);
    const size_t k_stride = static_cast<size_t>(heads_) * d_;
    const size_t v_stride = static_cast<size_t>(heads_) * dv_;
    const float* k = p_.k + static_cast<size_t>(b) * keys * k_stride + static_cast<size_t>(h) * d_;
    const float* v = p_.v + static_cast<size_t>(b) * keys * v_stride + static_cast<size_t>(h) * dv_;
    hd.kt.assign(key_tiles_ * d_ * key_tile_, 0.0f);
    hd.v.assign(key_tiles_ * key_tile_ * dv_pad_, 0.0f);
    for (size_t j = 0; j < keys; ++j) {
      float* kt = hd.kt.data() + (j / key_tile_) * d_ * key_tile_ + j % key_tile_;
      const float* kj = k + j * k_stride;
      for (size_t c = 0; c < d_; ++c) kt[c * key_tile_] = kj[c];
      std::memcpy(hd.v.data() + j * dv_pad_, v + j * v_stride, dv_ * sizeof(float));
    }
    if (c_.estimator == MassEstimator::kGaussian) fit_moments(batches_[static_cast<size_t>(b)], &hd);
  }

  // Population mean and covariances of the kept keys and values, from the packed tiles. Each
  // tile is centred before its products (Σ = E[(k − μ)(k − μ)ᵀ], not E[kkᵀ] − μμᵀ, whose float32
  // cancellation loses the spread when keys share a large offset, as projected keys with a bias
  // do); dropped keys are zeroed, so they add nothing.
  void fit_moments(const BatchKeys& bk, HeadData* hd) const {
    const int64_t kept = bk.prefix.back();
    if (kept == 0) return;
    std::vector<double> mean_k(d_, 0.0), mean_v(dv_, 0.0);
    for (int64_t j = 0; j < p_.keys; ++j) {
      if (bk.keep != nullptr && bk.keep[j] == 0) continue;
      const size_t t = static_cast<size_t>(j) / key_tile_, col = static_cast<size_t>(j) % key_tile_;
      const float* kt = hd->kt.data() + t * d_ * key_tile_ + col;
      for (size_t c = 0; c < d_; ++c) mean_k[c] += kt[c * key_tile_];
      const float* vj = hd->v.data() + static_cast<size_t>(j) * dv_pad_;
      for (size_t c = 0; c < dv_; ++c) mean_v[c] += vj[c];
    }
    hd->mu_k.assign(d_, 0.0f);
    hd->mu_v.assign(dv_pad_, 0.0f);
    for (size_t c = 0; c < d_; ++c) hd->mu_k[c] = static_cast<float>(mean_k[c] / static_cast<double>(kept));
    for (size_t c = 0; c < dv_; ++c) hd->mu_v[c] = static_cast<float>(mean_v[c] / static_cast<double>(kept));
    hd->sigma_kk.assign(d_ * d_pad_, 0.0f);
    hd->sigma_kv.assign(d_ * dv_pad_, 0.0f);
    // One tile at a time: centred Kᵀ [d][64] (A), K [64][d_pad] and V [64][dv_pad] (B).
    std::vector<float> kct(d_ * key_tile_), kc(key_tile_ * d_pad_, 0.0f), vc(key_tile_ * dv_pad_, 0.0f);
    for (size_t t = 0; t < key_tiles_; ++t) {
      const size_t j0 = t * key_tile_;
      const float* kt = hd->kt.data() + t * d_ * key_tile_;
      for (size_t j = 0; j < key_tile_; ++j) {
        const bool used = j0 + j < static_cast<size_t>(p_.keys) && (bk.keep == nullptr || bk.keep[j0 + j] != 0);
        const float* vj = hd->v.data() + (j0 + j) * dv_pad_;
        for (size_t c = 0; c < dv_; ++c) vc[j * dv_pad_ + c] = used ? vj[c] - hd->mu_v[c] : 0.0f;
        for (size_t c = 0; c < d_; ++c) kc[j * d_pad_ + c] = used ? kt[c * key_tile_ + j] - hd->mu_k[c] : 0.0f;
      }
      for (size_t c = 0; c < d_; ++c) {
        for (size_t j = 0; j < key_tile_; ++j) kct[c * key_tile_ + j] = kc[j * d_pad_ + c];
      }
      gemm_(d_, d_pad_, key_tile_, kct.data(), key_tile_, kc.data(), d_pad_, hd->sigma_kk.data(), d_pad_, true);
      gemm_(d_, dv_pad_, key_tile_, kct.data(), key_tile_, vc.data(), dv_pad_, hd->sigma_kv.data(), dv_pad_, true);
    }
    const float inv = static_cast<float>(1.0 / static_cast<double>(kept));
    for (float& x : hd->sigma_kk) x *= inv;
    for (float& x : hd->sigma_kv) x *= inv;
    hd->has_moments = true;
  }

  // The keys query `pos` may attend at all: those before it when causal, else every key.
  int64_t allowed_end(int64_t pos) const { return c_.causal ? std::min(pos + 1, p_.keys) : p_.keys; }

  // Row `pos`'s mask over keys [j0, j0 + n) for `select`: null when every key is selected,
  // else written to `mask`. Returns how many keys are selected.
  size_t row_mask(const BatchKeys& bk, size_t tile, int64_t pos, KeySelect select, uint8_t* mask,
                  const uint8_t** out) const {
    const int64_t j0 = static_cast<int64_t>(tile * key_tile_);
    const int64_t j1 = std::min(j0 + static_cast<int64_t>(key_tile_), p_.keys);
    const int64_t n = j1 - j0;
    const int64_t allowed_hi = allowed_end(pos);
    Span spans[2];
    const int count = pattern_.spans(pos, spans);
    const bool all_allowed = allowed_hi >= j1 && bk.tile_full[tile];
    bool covered = false;   // some span covers the tile
    bool touched = false;   // some span meets the tile
    for (int s = 0; s < count; ++s) {
      covered = covered || (spans[s].lo <= j0 && spans[s].hi >= j1);
      touched = touched || (spans[s].lo < j1 && spans[s].hi > j0);
    }
    *out = nullptr;
    if (select == KeySelect::kInSet) {
      if (covered && all_allowed) return static_cast<size_t>(n);
      if (!touched) return 0;
      std::memset(mask, 0, static_cast<size_t>(n));
      for (int s = 0; s < count; ++s) {
        const int64_t lo = std::max(spans[s].lo, j0);
        const int64_t hi = std::min({spans[s].hi, j1, allowed_hi});
        if (lo < hi) std::memset(mask + (lo - j0), 1, static_cast<size_t>(hi - lo));
      }
    } else {
      if (covered || allowed_hi <= j0) return 0;
      if (!touched && all_allowed) return static_cast<size_t>(n);
      std::memset(mask, 0, static_cast<size_t>(n));
      if (allowed_hi > j0) std::memset(mask, 1, static_cast<size_t>(std::min(allowed_hi, j1) - j0));
      for (int s = 0; s < count; ++s) {
        const int64_t lo = std::max(spans[s].lo, j0);
        const int64_t hi = std::min(spans[s].hi, j1);
        if (lo < hi) std::memset(mask + (lo - j0), 0, static_cast<size_t>(hi - lo));
      }
    }
    size_t kept = 0;
    for (int64_t j = 0; j < n; ++j) {
      mask[j] = static_cast<uint8_t>(mask[j] & (bk.keep == nullptr || bk.keep[j0 + j] != 0));
      kept += mask[j];
    }
    *out = mask;
    return kept;
  }

  // The key tiles some row of `pos` selects keys from.
  void select_tiles(const int64_t* pos, size_t rows, KeySelect select, std::vector<uint8_t>* used) const {
    used->assign(key_tiles_, 0);
    auto mark = [&](int64_t lo, int64_t hi) {
      if (lo >= hi) return;
      for (size_t t = static_cast<size_t>(lo) / key_tile_; t <= static_cast<size_t>(hi - 1) / key_tile_; ++t) (*used)[t] = 1;
    };
    for (size_t r = 0; r < rows; ++r) {
      const int64_t allowed_hi = allowed_end(pos[r]);
      if (select == KeySelect::kOutOfSet) {
        mark(0, allowed_hi);
        continue;
      }
      Span spans[2];
      const int count = pattern_.spans(pos[r], spans);
      for (int s = 0; s < count; ++s) mark(spans[s].lo, std::min(spans[s].hi, allowed_hi));
    }
  }

  // Online softmax of `rows` queries (rows of `a`, lda apart, at key positions `pos`) over the
  // keys `select` picks, accumulated into `st`.
  void attend(const BatchKeys& bk, const HeadData& hd, const float* a, size_t lda, const int64_t* pos, size_t rows,
              KeySelect select, RowState* st) const {
    std::vector<uint8_t> used;
    select_tiles(pos, rows, select, &used);
    std::vector<float> scores(kQueryTile * key_tile_), probs(kQueryTile * key_tile_);
    uint8_t mask[kMaxKeyTile];
    for (size_t t = 0; t < key_tiles_; ++t) {
      if (!used[t]) continue;
      const size_t j0 = t * key_tile_;
      const size_t n = std::min(key_tile_, static_cast<size_t>(p_.keys) - j0);
      gemm_(rows, key_tile_, d_, a, lda, hd.kt.data() + t * d_ * key_tile_, key_tile_, scores.data(), key_tile_, false);
      bool any = false;
      for (size_t r = 0; r < rows; ++r) {
        float* prob = probs.data() + r * key_tile_;
        const float* score = scores.data() + r * key_tile_;
        const uint8_t* row_mask_ptr = nullptr;
        const size_t kept = row_mask(bk, t, pos[r], select, mask, &row_mask_ptr);
        const float tile_max = kept > 0 ? sm_.rmax(n, score, row_mask_ptr, scale_) : kNegInf;
        st->count[r] += static_cast<int64_t>(kept);
        if (!(tile_max > kNegInf) || !std::isfinite(tile_max)) {
          // Nothing selected or every selected score -inf (no mass), or a NaN or +inf that
          // poisons the row (rmax may skip NaN, so a -inf maximum is checked for one).
          if (kept > 0 && (tile_max != kNegInf || has_nan(n, score, row_mask_ptr))) st->invalid[r] = 1;
          std::memset(prob, 0, key_tile_ * sizeof(float));
          continue;
        }
        any = true;
        float* acc = st->acc.data() + r * dv_pad_;
        if (tile_max > st->m[r]) {
          if (st->l[r] > 0.0f) {
            const float shrink = std::exp(st->m[r] - tile_max);
            st->l[r] *= shrink;
            sm_.vmulc(dv_pad_, acc, shrink);
          }
          st->m[r] = tile_max;
        }
        const float sum = sm_.raddstoreexpminusmax(n, score, row_mask_ptr, scale_, st->m[r], prob);
        if (std::isnan(sum)) st->invalid[r] = 1;  // rmax may skip a NaN score; the sum does not
        st->l[r] += sum;
        if (n < key_tile_) std::memset(prob + n, 0, (key_tile_ - n) * sizeof(float));
      }
      if (any) {
        gemm_(rows, dv_pad_, key_tile_, probs.data(), key_tile_, hd.v.data() + j0 * dv_pad_, dv_pad_, st->acc.data(),
              dv_pad_, true);
      }
    }
  }

  // log D_out and Ô_out, exactly, at the sampled rows of group `group` of one (batch, head): an
  // online softmax over the allowed keys outside each row's sparse set.
  void sample_rows(size_t bh, size_t group) {
    const size_t b = bh / static_cast<size_t>(heads_);
    const size_t h = bh % static_cast<size_t>(heads_);
    HeadData& hd = heads_data_[bh];
    const size_t first = group * kQueryTile;
    const size_t rows = std::min(kQueryTile, samples_.size() - first);
    const int64_t* pos = samples_.data() + first;
    // The sampled queries, gathered into a dense tile.
    std::vector<float> q(rows * d_);
    for (size_t r = 0; r < rows; ++r) std::memcpy(q.data() + r * d_, query_row(b, h, pos[r]), d_ * sizeof(float));
    RowState out(dv_pad_);
    attend(batches_[b], hd, q.data(), d_, pos, rows, KeySelect::kOutOfSet, &out);
    for (size_t r = 0; r < rows; ++r) {
      hd.sample_lse_out[first + r] = out.invalid[r] ? NAN : out.lse(r);
      float* o = hd.sample_out.data() + (first + r) * dv_pad_;
      const float inv = out.l[r] > 0.0f ? 1.0f / out.l[r] : 0.0f;
      for (size_t c = 0; c < dv_; ++c) o[c] = out.acc[r * dv_pad_ + c] * inv;
    }
  }

  const float* query_row(size_t b, size_t h, int64_t pos) const {
    return p_.q + (b * static_cast<size_t>(p_.queries) + static_cast<size_t>(pos)) * static_cast<size_t>(heads_) * d_ +
           h * d_;
  }

  float* output_row(size_t bh, int64_t i) const {
    const size_t b = bh / static_cast<size_t>(heads_);
    const size_t h = bh % static_cast<size_t>(heads_);
    return p_.y + (b * static_cast<size_t>(p_.queries) + static_cast<size_t>(i)) * static_cast<size_t>(heads_) * dv_ +
           h * dv_;
  }

  float* rho_at(size_t bh, int64_t i) const {
    return p_.rho != nullptr ? p_.rho + bh * static_cast<size_t>(p_.queries) + static_cast<size_t>(i) : nullptr;
  }

  // Y = ρ·O_S + (1 − ρ)·Ô_out into y (which may hold O_S already), and ρ. ρ is 1 when nothing
  // allowed is outside the set; a poisoned row is NaN throughout.
  void finish_row(float* y, float* rho_out, const float* o_in, int64_t n_out, double rho, const float* o_out,
                  bool invalid) const {
    if (n_out == 0) rho = 1.0;
    if (invalid) rho = NAN;
    const float kept = static_cast<float>(rho);
    for (size_t c = 0; c < dv_; ++c) {
      y[c] = invalid ? NAN : kept == 1.0f ? o_in[c] : kept * o_in[c] + (1.0f - kept) * o_out[c];
    }
    if (rho_out != nullptr) *rho_out = kept;
  }

  // One tile of queries of one (batch, head): the sparse set; then, for none and gaussian, Y and
  // ρ. sampled writes O_S to Y and leaves the rest to interpolate_tile.
  void query_tile(size_t bh, size_t tile) {
    HeadData& hd = heads_data_[bh];
    const BatchKeys& bk = batches_[bh / static_cast<size_t>(heads_)];
    const size_t first = tile * kQueryTile;
    const size_t rows = std::min(kQueryTile, static_cast<size_t>(p_.queries) - first);
    int64_t pos[kQueryTile];
    for (size_t r = 0; r < rows; ++r) pos[r] = static_cast<int64_t>(first + r);
    const float* q = query_row(bh / static_cast<size_t>(heads_), bh % static_cast<size_t>(heads_), pos[0]);
    const size_t lda = static_cast<size_t>(heads_) * d_;
    RowState st(dv_pad_);
    attend(bk, hd, q, lda, pos, rows, KeySelect::kInSet, &st);

    // gaussian: W = Q·Σ_kk and G = Q·Σ_kv for the tile (the scale is applied per row below).
    std::vector<float> w, g;
    const bool gaussian = c_.estimator == MassEstimator::kGaussian && hd.has_moments;
    if (gaussian) {
      w.resize(rows * d_pad_);
      g.resize(rows * dv_pad_);
      gemm_(rows, d_pad_, d_, q, lda, hd.sigma_kk.data(), d_pad_, w.data(), d_pad_, false);
      gemm_(rows, dv_pad_, d_, q, lda, hd.sigma_kv.data(), dv_pad_, g.data(), dv_pad_, false);
    }
    std::vector<float> o_in(dv_), o_out(dv_, 0.0f);
    for (size_t r = 0; r < rows; ++r) {
      const int64_t i = pos[r];
      float* y = output_row(bh, i);
      const int64_t allowed = bk.prefix[static_cast<size_t>(allowed_end(i))];
      const int64_t n_out = allowed - st.count[r];
      const float inv_l = st.l[r] > 0.0f ? 1.0f / st.l[r] : 0.0f;
      for (size_t c = 0; c < dv_; ++c) o_in[c] = st.acc[r * dv_pad_ + c] * inv_l;
      if (c_.estimator == MassEstimator::kSampled) {
        std::memcpy(y, o_in.data(), dv_ * sizeof(float));
        hd.lse_in[static_cast<size_t>(i)] = st.lse(r);
        hd.n_out[static_cast<size_t>(i)] = n_out;
        hd.invalid[static_cast<size_t>(i)] = st.invalid[r];
        continue;
      }
      if (allowed == 0) {
        finish_dead_row(y, rho_at(bh, i));
        continue;
      }
      double rho = 1.0;
      if (gaussian) {
        const float* qr = q + r * lda;
        double q_mu = 0.0, quad = 0.0;
        for (size_t c = 0; c < d_; ++c) {
          q_mu += static_cast<double>(qr[c]) * hd.mu_k[c];
          quad += static_cast<double>(qr[c]) * w[r * d_pad_ + c];
        }
        const double s = scale_;
        const double log_out =
            n_out > 0 ? std::log(static_cast<double>(n_out)) + s * q_mu + 0.5 * s * s * quad : -INFINITY;
        rho = kept_mass(st.lse(r), log_out);
        for (size_t c = 0; c < dv_; ++c) o_out[c] = hd.mu_v[c] + scale_ * g[r * dv_pad_ + c];
      }
      finish_row(y, rho_at(bh, i), o_in.data(), n_out, rho, o_out.data(), st.invalid[r]);
    }
  }

  void finish_dead_row(float* y, float* rho_out) const {
    std::memset(y, 0, dv_ * sizeof(float));
    if (rho_out != nullptr) *rho_out = 0.0f;
  }

  // sampled: ρ and Ô_out at each query, linear between the sampled rows around it (exact at a
  // sampled row), combined with the O_S query_tile left in Y.
  void interpolate_tile(size_t bh, size_t tile) {
    const HeadData& hd = heads_data_[bh];
    const BatchKeys& bk = batches_[bh / static_cast<size_t>(heads_)];
    const size_t stride = static_cast<size_t>(c_.sample_stride);
    auto sample_rho = [&](size_t s) {
      const size_t i = static_cast<size_t>(samples_[s]);
      return hd.invalid[i] ? NAN : kept_mass(hd.lse_in[i], hd.sample_lse_out[s]);
    };
    std::vector<float> o_out(dv_);
    const size_t end = std::min((tile + 1) * kQueryTile, static_cast<size_t>(p_.queries));
    for (size_t i = tile * kQueryTile; i < end; ++i) {
      float* y = output_row(bh, static_cast<int64_t>(i));
      if (bk.prefix[static_cast<size_t>(allowed_end(static_cast<int64_t>(i)))] == 0) {
        finish_dead_row(y, rho_at(bh, static_cast<int64_t>(i)));
        continue;
      }
      const size_t a = std::min(i / stride, samples_.size() - 1);
      const float* oa = hd.sample_out.data() + a * dv_pad_;
      double rho = sample_rho(a);
      if (static_cast<size_t>(samples_[a]) == i) {
        std::memcpy(o_out.data(), oa, dv_ * sizeof(float));
      } else {
        const double t = static_cast<double>(i - static_cast<size_t>(samples_[a])) /
                         static_cast<double>(samples_[a + 1] - samples_[a]);
        const float* ob = oa + dv_pad_;
        for (size_t c = 0; c < dv_; ++c) o_out[c] = static_cast<float>((1.0 - t) * oa[c] + t * ob[c]);
        rho = (1.0 - t) * rho + t * sample_rho(a + 1);
      }
      finish_row(y, rho_at(bh, static_cast<int64_t>(i)), y, hd.n_out[i], rho, o_out.data(), hd.invalid[i]);
    }
  }

  const F32GemmFn gemm_;
  const F32SoftmaxKernels& sm_;
  const SparseAttentionConfig& c_;
  const SparseAttentionProblem& p_;
  const PatternSpans pattern_;
  const int64_t heads_;
  const size_t d_, dv_, d_pad_, dv_pad_;
  const size_t key_tile_, key_tiles_, query_tiles_;
  const float scale_;
  std::vector<BatchKeys> batches_;
  std::vector<HeadData> heads_data_;
  std::vector<int64_t> samples_;
};

}  // namespace

void f32_sparse_attention(const F32AttentionKernels& gemm, const F32SoftmaxKernels& softmax,
                          const SparseAttentionConfig& config, const SparseAttentionProblem& problem,
                          const TaskRunner& run) {
  if (problem.batch == 0 || problem.queries == 0) return;
  Attention(gemm, softmax, config, problem).run(run);
}

}  // namespace surety
