// SPDX-License-Identifier: Apache-2.0
// GistNet on the CPU (Eigen): K child vectors [K, d] -> one gist [d] that stands in for the span as
// an input embedding of the frozen model. It sits between Tree::append and the tree's levels:
// LOD1 from K token embeddings, LOD2+ from K lower gists (shared or per-level weights). Forward
// keeps llm.c-style activations for a backward to the inputs and to every weight; GistNetGister
// plugs the network into a Tree. Architecture, shapes and maths: docs/concepts/gist_net.md.
#pragma once

#include "megacontext/detail/eigen.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "megacontext/assemble.hpp"
#include "megacontext/config.hpp"
#include "megacontext/error.hpp"
#include "megacontext/gaussian_rope.hpp"
#include "megacontext/gister.hpp"
#include "megacontext/reference/attention.hpp"
#include "megacontext/reference/llama.hpp"
#include "megacontext/reference/init.hpp"
#include "megacontext/reference/rmsnorm.hpp"
#include "megacontext/reference/swiglu.hpp"

namespace mc {

/// How the K block outputs become one vector.
enum class GistPooling : int {
  kMeanMlp = 0,  ///< mean over the K rows, plus a residual SiLU MLP d -> d_pool -> d
  kQuery = 1,    ///< one learned query attends over the K rows (n_heads heads of width d_head)
};

/// Run-time sizes of a GistNet; validate() names a bad field, its value and the allowed range.
struct GistNetOptions {
  std::int64_t d_model = 256;  ///< input and gist width d (the model's embedding dim)
  std::int64_t n_layers = 2;   ///< transformer blocks over the K children; >= 1
  std::int64_t n_heads = 4;    ///< attention heads; divide d_attn into an even d_head
  std::int64_t d_attn = 128;   ///< width of q, k, v (wq [d, d_attn], wo [d_attn, d])
  std::int64_t d_ff = 128;     ///< SwiGLU hidden width; >= 1
  GistPooling pooling = GistPooling::kMeanMlp;  ///< pooling head
  std::int64_t d_pool = 64;                     ///< hidden width of the kMeanMlp head; >= 1
  /// Weight sets: 1 shares one set over all levels; with s sets, LOD ℓ uses set min(ℓ, s) − 1
  /// (s = Depth: one set per level). >= 1.
  std::int64_t num_weight_sets = 1;
  double rope_base = 100.0;  ///< RoPE base over in-block positions 0..K−1; > 1
  double norm_eps = 1e-5;    ///< RMSNorm epsilon; > 0
  double init_std = 0.02;    ///< std of the normal initialisation; >= 0
  /// Initial gain of the output RMSNorm, i.e. the gists' RMS per dimension: set it to the RMS of
  /// the model's token embeddings. Finite, > 0.
  double out_gain = 1.0;

  /// Head width d_attn / n_heads.
  std::int64_t d_head() const { return n_heads > 0 ? d_attn / n_heads : 0; }

  /// Throws mc::Error (kInvalidArgument, [mc.gist_net.bad_options]) naming the bad field.
  void validate() const {
    MC_EXPECTS(d_model >= 1, Errc::kInvalidArgument,
               "[mc.gist_net.bad_options] d_model = ", d_model, "; must be >= 1");
    MC_EXPECTS(n_layers >= 1, Errc::kInvalidArgument,
               "[mc.gist_net.bad_options] n_layers = ", n_layers, "; must be >= 1");
    MC_EXPECTS(n_heads >= 1 && d_attn >= 2 && d_attn % n_heads == 0 && d_head() % 2 == 0,
               Errc::kInvalidArgument, "[mc.gist_net.bad_options] n_heads = ", n_heads,
               ", d_attn = ", d_attn, "; n_heads must divide d_attn into an even d_head >= 2");
    MC_EXPECTS(d_ff >= 1, Errc::kInvalidArgument, "[mc.gist_net.bad_options] d_ff = ", d_ff,
               "; must be >= 1");
    MC_EXPECTS(pooling == GistPooling::kMeanMlp || pooling == GistPooling::kQuery,
               Errc::kInvalidArgument,
               "[mc.gist_net.bad_options] pooling = ", static_cast<int>(pooling),
               "; must be kMeanMlp (0) or kQuery (1)");
    MC_EXPECTS(pooling != GistPooling::kMeanMlp || d_pool >= 1, Errc::kInvalidArgument,
               "[mc.gist_net.bad_options] d_pool = ", d_pool, "; must be >= 1 with kMeanMlp");
    MC_EXPECTS(num_weight_sets >= 1, Errc::kInvalidArgument,
               "[mc.gist_net.bad_options] num_weight_sets = ", num_weight_sets, "; must be >= 1");
    MC_EXPECTS(std::isfinite(rope_base) && rope_base > 1.0, Errc::kInvalidArgument,
               "[mc.gist_net.bad_options] rope_base = ", rope_base, "; must be finite and > 1");
    MC_EXPECTS(norm_eps > 0.0, Errc::kInvalidArgument,
               "[mc.gist_net.bad_options] norm_eps = ", norm_eps, "; must be > 0");
    MC_EXPECTS(init_std >= 0.0, Errc::kInvalidArgument,
               "[mc.gist_net.bad_options] init_std = ", init_std, "; must be >= 0");
    MC_EXPECTS(std::isfinite(out_gain) && out_gain > 0.0, Errc::kInvalidArgument,
               "[mc.gist_net.bad_options] out_gain = ", out_gain, "; must be finite and > 0");
  }

  /// Scalars in one weight set (the count of GistNetWeights is this times num_weight_sets).
  std::int64_t num_parameters_per_set() const {
    const std::int64_t d = d_model;
    const std::int64_t block = 2 * d + 4 * d * d_attn + 3 * d * d_ff;
    const std::int64_t pool =
        pooling == GistPooling::kMeanMlp ? 2 * d * d_pool : d_attn + 3 * d * d_attn;
    return n_layers * block + d + pool + d;
  }

  /// The RoPE options of the blocks' attention (d_head, rope_base, default policies).
  GaussianRopeOptions rope() const {
    GaussianRopeOptions r;
    r.d_head = static_cast<int>(d_head());
    r.base = rope_base;
    return r;
  }
};

/// The weights of one GistNet level set. Blocks reuse the reference decoder's layer struct with
/// a narrower attention: wq, wk, wv are [d, d_attn] and wo is [d_attn, d].
template <class Scalar>
struct GistNetSetWeights {
  std::vector<reference::LlamaLayerWeights<Scalar>> blocks;  ///< n_layers transformer blocks
  reference::Vector<Scalar> pool_norm;   ///< [d] RMSNorm gain on block outputs before pooling
  RowMatrix<Scalar> pool_w1;             ///< kMeanMlp: [d, d_pool] (else empty)
  RowMatrix<Scalar> pool_w2;             ///< kMeanMlp: [d_pool, d] (else empty)
  reference::Vector<Scalar> pool_query;  ///< kQuery: [d_attn] learned query (else empty)
  RowMatrix<Scalar> pool_wk;             ///< kQuery: [d, d_attn] key projection (else empty)
  RowMatrix<Scalar> pool_wv;             ///< kQuery: [d, d_attn] value projection (else empty)
  RowMatrix<Scalar> pool_wo;             ///< kQuery: [d_attn, d] output projection (else empty)
  reference::Vector<Scalar> out_norm;    ///< [d] output RMSNorm gain: the gists' scale
};

/// All weights of a GistNet (num_weight_sets sets); the same struct holds their gradients.
template <class Scalar>
struct GistNetWeights {
  std::vector<GistNetSetWeights<Scalar>> sets;  ///< one per weight set

  /// All-zero weights shaped by `o` (a gradient accumulator).
  static GistNetWeights zeros(const GistNetOptions& o) {
    o.validate();
    const auto d = o.d_model, a = o.d_attn, f = o.d_ff;
    GistNetWeights w;
    w.sets.resize(static_cast<std::size_t>(o.num_weight_sets));
    for (auto& s : w.sets) {
      s.blocks.resize(static_cast<std::size_t>(o.n_layers));
      for (auto& b : s.blocks) {
        b.attn_norm = reference::Vector<Scalar>::Zero(d);
        b.attn.wq = b.attn.wk = b.attn.wv = RowMatrix<Scalar>::Zero(d, a);
        b.attn.wo = RowMatrix<Scalar>::Zero(a, d);
        b.mlp_norm = reference::Vector<Scalar>::Zero(d);
        b.mlp.w1 = b.mlp.w3 = RowMatrix<Scalar>::Zero(d, f);
        b.mlp.w2 = RowMatrix<Scalar>::Zero(f, d);
      }
      s.pool_norm = reference::Vector<Scalar>::Zero(d);
      if (o.pooling == GistPooling::kMeanMlp) {
        s.pool_w1 = RowMatrix<Scalar>::Zero(d, o.d_pool);
        s.pool_w2 = RowMatrix<Scalar>::Zero(o.d_pool, d);
      } else {
        s.pool_query = reference::Vector<Scalar>::Zero(a);
        s.pool_wk = s.pool_wv = RowMatrix<Scalar>::Zero(d, a);
        s.pool_wo = RowMatrix<Scalar>::Zero(a, d);
      }
      s.out_norm = reference::Vector<Scalar>::Zero(d);
    }
    return w;
  }

  /// Weights from `seed`: norm gains 1 (out_norm: out_gain); matrices and the query normal with
  /// std init_std, except the residual projections attn.wo and mlp.w2, which get
  /// init_std/√(2·n_layers) (GPT-2's scaling). Draws in fp64, so float and double agree.
  static GistNetWeights random(const GistNetOptions& o, std::uint64_t seed) {
    GistNetWeights w = zeros(o);
    const double resid_std = reference::residual_std(o.init_std, o.n_layers);
    reference::init_parameters<Scalar>(w, seed, [&](const std::string& name) {
      if (name.ends_with("out_norm")) return reference::InitRule{true, o.out_gain};
      if (name.find("norm") != std::string::npos) return reference::InitRule{true, 1.0};
      // The pooling MLP's pool.w2 is not a residual projection: match the block's names only.
      const bool resid = name.ends_with("attn.wo") || name.ends_with("mlp.w2");
      return reference::InitRule{false, resid ? resid_std : o.init_std};
    });
    return w;
  }

  /// Calls f(name, data, size) for every non-empty tensor in a fixed order; names look like
  /// "sets.0.blocks.1.attn.wq", "sets.0.pool_norm", "sets.1.pool.w1", "sets.0.out_norm".
  template <class F>
  void for_each_parameter(F&& f) {
    auto visit = [&](const std::string& name, auto& t) {
      if (t.size() > 0) f(name, t.data(), t.size());
    };
    for (std::size_t s = 0; s < sets.size(); ++s) {
      const std::string p = "sets." + std::to_string(s) + ".";
      auto& x = sets[s];
      for (std::size_t l = 0; l < x.blocks.size(); ++l) {
        const std::string b = p + "blocks." + std::to_string(l) + ".";
        auto& y = x.blocks[l];
        visit(b + "attn_norm", y.attn_norm);
        visit(b + "attn.wq", y.attn.wq);
        visit(b + "attn.wk", y.attn.wk);
        visit(b + "attn.wv", y.attn.wv);
        visit(b + "attn.wo", y.attn.wo);
        visit(b + "mlp_norm", y.mlp_norm);
        visit(b + "mlp.w1", y.mlp.w1);
        visit(b + "mlp.w3", y.mlp.w3);
        visit(b + "mlp.w2", y.mlp.w2);
      }
      visit(p + "pool_norm", x.pool_norm);
      visit(p + "pool.w1", x.pool_w1);
      visit(p + "pool.w2", x.pool_w2);
      visit(p + "pool.query", x.pool_query);
      visit(p + "pool.wk", x.pool_wk);
      visit(p + "pool.wv", x.pool_wv);
      visit(p + "pool.wo", x.pool_wo);
      visit(p + "out_norm", x.out_norm);
    }
  }
};

namespace detail {

// Row-wise softmax of `s` in place (max subtracted first).
template <class Derived>
void softmax_rows(Eigen::MatrixBase<Derived>& s) {
  for (Eigen::Index i = 0; i < s.rows(); ++i) {
    s.row(i).array() -= s.row(i).maxCoeff();
    s.row(i) = s.row(i).array().exp().matrix();
    s.row(i) /= s.row(i).sum();
  }
}

}  // namespace detail

/// Non-causal attention inside blocks of `k` consecutive rows: y [n·k, d] = attn(x) · wo, where
/// row r attends every row of its block (r / k) and none outside. wq, wk, wv are [d, d_attn], wo
/// [d_attn, d]; q and k are rotated by `table` (n·k rows). Fills `cache`; its probs[h] is
/// [n·k, k]: row r holds the weights of r over the k rows of its block.
template <class Scalar>
void block_attention_forward(const RowMatrix<Scalar>& x,
                             const reference::AttentionWeights<Scalar>& w, int n_heads,
                             std::int64_t k, const GaussianRopeTable& table, RowMatrix<Scalar>& y,
                             reference::AttentionCache<Scalar>& cache) {
  const Eigen::Index rows = x.rows(), da = w.wq.cols();
  const int dh = table.d_head;
  MC_EXPECTS(k >= 1 && rows % k == 0 && n_heads >= 1 &&
                 static_cast<Eigen::Index>(n_heads) * dh == da && table.rows() == rows &&
                 w.wq.rows() == x.cols(),
             Errc::kInvalidArgument, "[mc.gist_net.bad_shape] block attention of x ", rows, " x ",
             x.cols(), " in blocks of ", k, ", n_heads = ", n_heads, ", d_head = ", dh,
             ", d_attn = ", da, ", table rows = ", table.rows());
  cache.q.noalias() = x * w.wq;
  cache.k.noalias() = x * w.wk;
  cache.v.noalias() = x * w.wv;
  apply_gaussian_rope(cache.q, n_heads, table);
  apply_gaussian_rope(cache.k, n_heads, table);
  cache.o.resize(rows, da);
  cache.probs.assign(static_cast<std::size_t>(n_heads), RowMatrix<Scalar>(rows, k));
  const Scalar scale = Scalar(1) / std::sqrt(static_cast<Scalar>(dh));
  RowMatrix<Scalar> s(k, k);
  for (int h = 0; h < n_heads; ++h) {
    RowMatrix<Scalar>& p = cache.probs[static_cast<std::size_t>(h)];
    for (Eigen::Index b = 0; b < rows; b += k) {
      s.noalias() = cache.q.block(b, h * dh, k, dh) * cache.k.block(b, h * dh, k, dh).transpose();
      s *= scale;
      detail::softmax_rows(s);
      p.middleRows(b, k) = s;
      cache.o.block(b, h * dh, k, dh).noalias() = s * cache.v.block(b, h * dh, k, dh);
    }
  }
  y.noalias() = cache.o * w.wo;
}

/// Adds dL/dx [n·k, d] to `dx` and, when `dw` is not null, dL/dW to `*dw`'s matrices, given
/// dy [n·k, d] and the forward's x, weights, table and cache (block_attention_forward).
template <class Scalar>
void block_attention_backward(const RowMatrix<Scalar>& dy, const RowMatrix<Scalar>& x,
                              const reference::AttentionWeights<Scalar>& w, int n_heads,
                              std::int64_t k, const GaussianRopeTable& table,
                              const reference::AttentionCache<Scalar>& cache, RowMatrix<Scalar>& dx,
                              reference::AttentionWeights<Scalar>* dw) {
  const Eigen::Index rows = x.rows(), d = x.cols(), da = w.wq.cols();
  const int dh = table.d_head;
  MC_EXPECTS(dy.rows() == rows && dy.cols() == d && dx.rows() == rows && dx.cols() == d &&
                 cache.o.rows() == rows && cache.probs.size() == static_cast<std::size_t>(n_heads),
             Errc::kInvalidArgument, "[mc.gist_net.bad_shape] block attention backward: dy ",
             dy.rows(), " x ", dy.cols(), ", dx ", dx.rows(), " x ", dx.cols(), ", cache rows ",
             cache.o.rows(), "; all must match the forward's x ", rows, " x ", d);
  const Scalar scale = Scalar(1) / std::sqrt(static_cast<Scalar>(dh));
  if (dw != nullptr) dw->wo.noalias() += cache.o.transpose() * dy;
  const RowMatrix<Scalar> d_o = dy * w.wo.transpose();
  RowMatrix<Scalar> dq(rows, da), dk(rows, da), dv(rows, da), dp(k, k);
  for (int h = 0; h < n_heads; ++h) {
    const RowMatrix<Scalar>& probs = cache.probs[static_cast<std::size_t>(h)];
    for (Eigen::Index b = 0; b < rows; b += k) {
      const auto p = probs.middleRows(b, k);
      const auto dob = d_o.block(b, h * dh, k, dh);
      dv.block(b, h * dh, k, dh).noalias() = p.transpose() * dob;
      dp.noalias() = dob * cache.v.block(b, h * dh, k, dh).transpose();
      // Softmax backward: ds_ij = p_ij (dp_ij − Σ_l p_il dp_il).
      for (Eigen::Index i = 0; i < k; ++i) {
        const Scalar dot = p.row(i).dot(dp.row(i));
        dp.row(i) = (p.row(i).array() * (dp.row(i).array() - dot)).matrix();
      }
      dp *= scale;
      dq.block(b, h * dh, k, dh).noalias() = dp * cache.k.block(b, h * dh, k, dh);
      dk.block(b, h * dh, k, dh).noalias() = dp.transpose() * cache.q.block(b, h * dh, k, dh);
    }
  }
  // The rotation's transpose is the same rotation with sin negated (t -> −t).
  GaussianRopeTable transposed = table;
  transposed.sin = -transposed.sin;
  apply_gaussian_rope(dq, n_heads, transposed);
  apply_gaussian_rope(dk, n_heads, transposed);
  if (dw != nullptr) {
    dw->wq.noalias() += x.transpose() * dq;
    dw->wk.noalias() += x.transpose() * dk;
    dw->wv.noalias() += x.transpose() * dv;
  }
  dx.noalias() += dq * w.wq.transpose();
  dx.noalias() += dk * w.wk.transpose();
  dx.noalias() += dv * w.wv.transpose();
}

/// Everything the latest GistNet forward kept for its backward (n blocks, n·K rows).
template <class Scalar>
struct GistNetActivations {
  std::int64_t n = 0;      ///< blocks of the latest forward (0: none usable)
  int lod = 0;             ///< level of the gists it produced
  std::size_t set = 0;     ///< weight set it used
  GaussianRopeTable rope;  ///< [n·K, d_head/2] tables of in-block positions 0..K−1
  /// One per transformer block; attention probs are [n·K, K] per head (block_attention_forward).
  std::vector<reference::LlamaLayerActivations<Scalar>> blocks;
  RowMatrix<Scalar> h_last;          ///< [n·K, d] output of the last block
  RowMatrix<Scalar> hn;              ///< [n·K, d] pool_norm(h_last), the pooling input
  reference::Vector<Scalar> rstd_p;  ///< [n·K] its reciprocal RMS
  RowMatrix<Scalar> mean;            ///< kMeanMlp: [n, d] mean of each block's K rows of hn
  RowMatrix<Scalar> pool_a;          ///< kMeanMlp: [n, d_pool] mean · w1
  RowMatrix<Scalar> pool_k;          ///< kQuery: [n·K, d_attn] hn · wk
  RowMatrix<Scalar> pool_v;          ///< kQuery: [n·K, d_attn] hn · wv
  std::vector<RowMatrix<Scalar>> pool_probs;  ///< kQuery: n_heads x [n, K] query weights
  RowMatrix<Scalar> pool_o;                   ///< kQuery: [n, d_attn] concatenated head outputs
  RowMatrix<Scalar> y;                        ///< [n, d] pooled vector before the output RMSNorm
  reference::Vector<Scalar> rstd_o;           ///< [n] its reciprocal RMS
};

/// The reference GistNet of Config C: forward(lod, children [n·K, d]) -> gists [n, d], and
/// backward from dL/dgists to dL/dchildren and to every weight of the set that level uses.
template <ConfigType C>
class GistNet {
 public:
  using Scalar = typename C::Scalar;
  static constexpr int K = C::K;

  /// A network with `options` and `weights` (shapes checked against the options).
  GistNet(const GistNetOptions& options, GistNetWeights<Scalar> weights)
      : options_(options), weights_(std::move(weights)) {
    options_.validate();
    check_weight_shapes(weights_, "weights");
  }

  /// A network whose weights come from GistNetWeights::random(options, seed).
  static GistNet random(const GistNetOptions& options, std::uint64_t seed) {
    return GistNet(options, GistNetWeights<Scalar>::random(options, seed));
  }

  /// Gist width d (= input width).
  std::int64_t dim() const { return options_.d_model; }
  /// The options the network was built with.
  const GistNetOptions& options() const { return options_; }
  /// The weights.
  const GistNetWeights<Scalar>& weights() const { return weights_; }
  /// The weights, writable (optimiser steps, tests); keep shapes and run forward again before a
  /// backward.
  GistNetWeights<Scalar>& weights() { return weights_; }
  /// What the latest forward kept.
  const GistNetActivations<Scalar>& activations() const { return acts_; }

  /// Index of the weight set that builds level `lod` (>= 1): min(lod, num_weight_sets) − 1.
  std::size_t weight_set(int lod) const {
    MC_EXPECTS(lod >= 1 && lod <= C::Depth, Errc::kOutOfRange, "[mc.gist_net.bad_lod] lod = ", lod,
               "; must be in [1, ", C::Depth, "]");
    return static_cast<std::size_t>(std::min<std::int64_t>(lod, options_.num_weight_sets) - 1);
  }

  /// Gists of level `lod` for `n` blocks: `in` [n·K, d] (K children per block, in time order)
  /// -> `out` [n, d]. Blocks are independent. Keeps the activations for backward().
  void forward(int lod, const Scalar* in, std::int64_t n, Scalar* out) {
    const std::size_t s = weight_set(lod);
    MC_EXPECTS(n >= 0 && (n == 0 || (in != nullptr && out != nullptr)), Errc::kInvalidArgument,
               "[mc.gist_net.bad_shape] forward of n = ", n,
               " blocks; needs n >= 0 and non-null in and out");
    acts_.n = 0;  // invalid until the forward completes
    if (n == 0) return;
    const GistNetSetWeights<Scalar>& w = weights_.sets[s];
    const std::int64_t d = options_.d_model, rows = n * K;
    const int n_heads = static_cast<int>(options_.n_heads);
    acts_.lod = lod;
    acts_.set = s;
    rope_table(n, acts_.rope);
    acts_.blocks.resize(w.blocks.size());
    RowMatrix<Scalar> x = Eigen::Map<const RowMatrix<Scalar>>(in, rows, d);
    RowMatrix<Scalar> y;
    for (std::size_t l = 0; l < w.blocks.size(); ++l) {
      const reference::LlamaLayerWeights<Scalar>& bw = w.blocks[l];
      reference::LlamaLayerActivations<Scalar>& a = acts_.blocks[l];
      a.x = std::move(x);
      reference::rmsnorm_forward(a.x, bw.attn_norm, options_.norm_eps, a.xn1, a.rstd1);
      block_attention_forward(a.xn1, bw.attn, n_heads, K, acts_.rope, y, a.attn);
      a.h = a.x + y;
      reference::rmsnorm_forward(a.h, bw.mlp_norm, options_.norm_eps, a.xn2, a.rstd2);
      reference::swiglu_forward(a.xn2, bw.mlp, y, a.mlp);
      x = a.h + y;
    }
    acts_.h_last = std::move(x);
    reference::rmsnorm_forward(acts_.h_last, w.pool_norm, options_.norm_eps, acts_.hn,
                               acts_.rstd_p);
    if (options_.pooling == GistPooling::kMeanMlp) {
      acts_.mean.resize(n, d);
      const Scalar inv_k = Scalar(1) / Scalar(K);
      for (std::int64_t i = 0; i < n; ++i)
        acts_.mean.row(i) = acts_.hn.middleRows(i * K, K).colwise().sum() * inv_k;
      acts_.pool_a.noalias() = acts_.mean * w.pool_w1;
      // Residual head: y = mean + silu(mean · w1) · w2, so a fresh net starts near mean pooling.
      acts_.y = acts_.mean;
      acts_.y.noalias() +=
          acts_.pool_a.unaryExpr([](Scalar v) { return v * reference::sigmoid(v); }) * w.pool_w2;
    } else {
      pool_query_forward(w, n);
      acts_.y.noalias() = acts_.pool_o * w.pool_wo;
    }
    RowMatrix<Scalar> gists;
    reference::rmsnorm_forward(acts_.y, w.out_norm, options_.norm_eps, gists, acts_.rstd_o);
    Eigen::Map<RowMatrix<Scalar>>(out, n, d) = gists;
    acts_.n = n;
  }

  /// Convenience overload: returns the gists [n, d] of `in` [n·K, d].
  RowMatrix<Scalar> forward(int lod, const RowMatrix<Scalar>& in) {
    MC_EXPECTS(in.cols() == options_.d_model && in.rows() % K == 0, Errc::kInvalidArgument,
               "[mc.gist_net.bad_shape] input ", in.rows(), " x ", in.cols(), "; need [n·", K, ", ",
               options_.d_model, "]");
    RowMatrix<Scalar> out(in.rows() / K, options_.d_model);
    forward(lod, in.data(), in.rows() / K, out.data());
    return out;
  }

  /// From dL/dgists [n, d] of the latest forward: writes dL/dinputs [n·K, d] when `dinputs` is
  /// not null, and adds dL/dW to the latest forward's weight set in `*grads` when `grads` is not
  /// null (shaped like the weights, e.g. GistNetWeights::zeros).
  void backward(const Scalar* dgists, std::int64_t n, Scalar* dinputs,
                GistNetWeights<Scalar>* grads) const {
    MC_EXPECTS(acts_.n >= 1, Errc::kState,
               "[mc.gist_net.no_forward] backward needs a completed forward first");
    MC_EXPECTS(n == acts_.n && dgists != nullptr, Errc::kInvalidArgument,
               "[mc.gist_net.bad_shape] backward of n = ", n, " blocks; the latest forward had ",
               acts_.n, " (and dgists must be non-null)");
    if (grads != nullptr) check_weight_shapes(*grads, "grads");
    const GistNetSetWeights<Scalar>& w = weights_.sets[acts_.set];
    GistNetSetWeights<Scalar>* g = grads != nullptr ? &grads->sets[acts_.set] : nullptr;
    const std::int64_t d = options_.d_model, rows = n * K;
    const int n_heads = static_cast<int>(options_.n_heads);
    const Eigen::Map<const RowMatrix<Scalar>> dgist(dgists, n, d);
    RowMatrix<Scalar> dy = RowMatrix<Scalar>::Zero(n, d);
    reference::rmsnorm_backward(RowMatrix<Scalar>(dgist), acts_.y, w.out_norm, acts_.rstd_o, dy,
                                g != nullptr ? &g->out_norm : nullptr);
    RowMatrix<Scalar> dhn(rows, d);
    if (options_.pooling == GistPooling::kMeanMlp) {
      // y = m + silu(a)·w2, a = m·w1: dm = dy + (silu'(a) ∘ (dy·w2ᵀ))·w1ᵀ; each of the K rows of
      // block i then gets dm_i / K.
      const RowMatrix<Scalar>& a = acts_.pool_a;
      if (g != nullptr)
        g->pool_w2.noalias() +=
            a.unaryExpr([](Scalar v) { return v * reference::sigmoid(v); }).transpose() * dy;
      RowMatrix<Scalar> da = dy * w.pool_w2.transpose();
      for (Eigen::Index i = 0; i < da.size(); ++i) {
        const Scalar v = a.data()[i], sg = reference::sigmoid(v);
        da.data()[i] *= sg * (Scalar(1) + v * (Scalar(1) - sg));
      }
      if (g != nullptr) g->pool_w1.noalias() += acts_.mean.transpose() * da;
      RowMatrix<Scalar> dm = dy;
      dm.noalias() += da * w.pool_w1.transpose();
      const Scalar inv_k = Scalar(1) / Scalar(K);
      for (std::int64_t i = 0; i < n; ++i)
        dhn.middleRows(i * K, K) = dm.row(i).replicate(K, 1) * inv_k;
    } else {
      pool_query_backward(w, g, dy, dhn);
    }
    RowMatrix<Scalar> dx = RowMatrix<Scalar>::Zero(rows, d);
    reference::rmsnorm_backward(dhn, acts_.h_last, w.pool_norm, acts_.rstd_p, dx,
                                g != nullptr ? &g->pool_norm : nullptr);
    RowMatrix<Scalar> dh, dxn;
    for (std::size_t l = w.blocks.size(); l-- > 0;) {
      const reference::LlamaLayerWeights<Scalar>& bw = w.blocks[l];
      const reference::LlamaLayerActivations<Scalar>& a = acts_.blocks[l];
      reference::LlamaLayerWeights<Scalar>* gb = g != nullptr ? &g->blocks[l] : nullptr;
      // out = h + mlp(norm(h)): the residual passes dx through unchanged.
      dh = dx;
      dxn.setZero(rows, d);
      reference::swiglu_backward(dx, a.xn2, bw.mlp, a.mlp, dxn, gb != nullptr ? &gb->mlp : nullptr);
      reference::rmsnorm_backward(dxn, a.h, bw.mlp_norm, a.rstd2, dh,
                                  gb != nullptr ? &gb->mlp_norm : nullptr);
      // h = x + attn(norm(x)).
      dx = dh;
      dxn.setZero(rows, d);
      block_attention_backward(dh, a.xn1, bw.attn, n_heads, K, acts_.rope, a.attn, dxn,
                               gb != nullptr ? &gb->attn : nullptr);
      reference::rmsnorm_backward(dxn, a.x, bw.attn_norm, a.rstd1, dx,
                                  gb != nullptr ? &gb->attn_norm : nullptr);
    }
    if (dinputs != nullptr) Eigen::Map<RowMatrix<Scalar>>(dinputs, rows, d) = dx;
  }

 private:
  // Throws [mc.gist_net.bad_weights] unless every tensor of `w` has the shape the options ask.
  void check_weight_shapes(const GistNetWeights<Scalar>& w, const char* what) const {
    MC_EXPECTS(w.sets.size() == static_cast<std::size_t>(options_.num_weight_sets),
               Errc::kInvalidArgument, "[mc.gist_net.bad_weights] ", what, " has ", w.sets.size(),
               " weight sets; options say num_weight_sets = ", options_.num_weight_sets);
    const auto d = options_.d_model, a = options_.d_attn, f = options_.d_ff;
    const bool mean = options_.pooling == GistPooling::kMeanMlp;
    const auto p = mean ? options_.d_pool : 0;
    auto expect = [&](const auto& m, Eigen::Index r, Eigen::Index c, const char* name) {
      MC_EXPECTS(m.rows() == r && m.cols() == c, Errc::kInvalidArgument,
                 "[mc.gist_net.bad_weights] ", what, ": ", name, " is ", m.rows(), " x ", m.cols(),
                 "; expected ", r, " x ", c);
    };
    for (const auto& s : w.sets) {
      MC_EXPECTS(s.blocks.size() == static_cast<std::size_t>(options_.n_layers),
                 Errc::kInvalidArgument, "[mc.gist_net.bad_weights] ", what, " has ",
                 s.blocks.size(), " blocks in a set; options say n_layers = ", options_.n_layers);
      for (const auto& b : s.blocks) {
        expect(b.attn_norm, d, 1, "attn_norm");
        expect(b.attn.wq, d, a, "attn.wq");
        expect(b.attn.wk, d, a, "attn.wk");
        expect(b.attn.wv, d, a, "attn.wv");
        expect(b.attn.wo, a, d, "attn.wo");
        expect(b.mlp_norm, d, 1, "mlp_norm");
        expect(b.mlp.w1, d, f, "mlp.w1");
        expect(b.mlp.w3, d, f, "mlp.w3");
        expect(b.mlp.w2, f, d, "mlp.w2");
      }
      expect(s.pool_norm, d, 1, "pool_norm");
      expect(s.pool_w1, mean ? d : 0, p, "pool.w1");
      expect(s.pool_w2, p, mean ? d : 0, "pool.w2");
      expect(s.pool_query, mean ? 0 : a, 1, "pool.query");
      expect(s.pool_wk, mean ? 0 : d, mean ? 0 : a, "pool.wk");
      expect(s.pool_wv, mean ? 0 : d, mean ? 0 : a, "pool.wv");
      expect(s.pool_wo, mean ? 0 : a, mean ? 0 : d, "pool.wo");
      expect(s.out_norm, d, 1, "out_norm");
    }
  }

  // Tables for n blocks: in-block positions 0..K−1 (σ = 0: plain RoPE), tiled n times.
  void rope_table(std::int64_t n, GaussianRopeTable& table) {
    if (block_rope_.rows() != K) {
      std::vector<GaussianPosition> pos(static_cast<std::size_t>(K));
      for (int j = 0; j < K; ++j) pos[static_cast<std::size_t>(j)] = {static_cast<double>(j), 0.0};
      block_rope_ = gaussian_rope_table(pos.data(), K, options_.rope());
    }
    table.d_head = block_rope_.d_head;
    table.cos = block_rope_.cos.replicate(n, 1);
    table.sin = block_rope_.sin.replicate(n, 1);
  }

  // The learned query attends over each block's K rows of hn, head by head (no RoPE: the
  // blocks already mixed position into the rows). Fills pool_k, pool_v, pool_probs, pool_o.
  void pool_query_forward(const GistNetSetWeights<Scalar>& w, std::int64_t n) {
    const int nh = static_cast<int>(options_.n_heads), dh = static_cast<int>(options_.d_head());
    acts_.pool_k.noalias() = acts_.hn * w.pool_wk;
    acts_.pool_v.noalias() = acts_.hn * w.pool_wv;
    acts_.pool_o.resize(n, options_.d_attn);
    acts_.pool_probs.assign(static_cast<std::size_t>(nh), RowMatrix<Scalar>(n, K));
    const Scalar scale = Scalar(1) / std::sqrt(static_cast<Scalar>(dh));
    for (int h = 0; h < nh; ++h) {
      RowMatrix<Scalar>& p = acts_.pool_probs[static_cast<std::size_t>(h)];
      const auto q = w.pool_query.segment(h * dh, dh).transpose();
      for (std::int64_t i = 0; i < n; ++i) {
        p.row(i).noalias() = q * acts_.pool_k.block(i * K, h * dh, K, dh).transpose();
        p.row(i) *= scale;
        auto row = p.row(i);
        detail::softmax_rows(row);
        acts_.pool_o.block(i, h * dh, 1, dh).noalias() =
            p.row(i) * acts_.pool_v.block(i * K, h * dh, K, dh);
      }
    }
  }

  // Backward of the query head: writes dL/dhn [n·K, d] and adds the head's weight gradients.
  void pool_query_backward(const GistNetSetWeights<Scalar>& w, GistNetSetWeights<Scalar>* g,
                           const RowMatrix<Scalar>& dy, RowMatrix<Scalar>& dhn) const {
    const std::int64_t n = acts_.n;
    const int nh = static_cast<int>(options_.n_heads), dh = static_cast<int>(options_.d_head());
    const Scalar scale = Scalar(1) / std::sqrt(static_cast<Scalar>(dh));
    if (g != nullptr) g->pool_wo.noalias() += acts_.pool_o.transpose() * dy;
    const RowMatrix<Scalar> d_o = dy * w.pool_wo.transpose();
    RowMatrix<Scalar> dk(n * K, options_.d_attn), dv(n * K, options_.d_attn);
    reference::Vector<Scalar> dq = reference::Vector<Scalar>::Zero(options_.d_attn);
    Eigen::Matrix<Scalar, 1, Eigen::Dynamic> ds(K);
    for (int h = 0; h < nh; ++h) {
      const RowMatrix<Scalar>& p = acts_.pool_probs[static_cast<std::size_t>(h)];
      const auto q = w.pool_query.segment(h * dh, dh).transpose();
      for (std::int64_t i = 0; i < n; ++i) {
        const auto doi = d_o.block(i, h * dh, 1, dh);
        dv.block(i * K, h * dh, K, dh).noalias() = p.row(i).transpose() * doi;
        ds.noalias() = doi * acts_.pool_v.block(i * K, h * dh, K, dh).transpose();
        const Scalar dot = p.row(i).dot(ds);
        ds = (p.row(i).array() * (ds.array() - dot)).matrix() * scale;
        dq.segment(h * dh, dh).noalias() +=
            (ds * acts_.pool_k.block(i * K, h * dh, K, dh)).transpose();
        dk.block(i * K, h * dh, K, dh).noalias() = ds.transpose() * q;
      }
    }
    if (g != nullptr) {
      g->pool_query += dq;
      g->pool_wk.noalias() += acts_.hn.transpose() * dk;
      g->pool_wv.noalias() += acts_.hn.transpose() * dv;
    }
    dhn.noalias() = dk * w.pool_wk.transpose();
    dhn.noalias() += dv * w.pool_wv.transpose();
  }

  GistNetOptions options_;
  GistNetWeights<Scalar> weights_;
  GistNetActivations<Scalar> acts_;
  GaussianRopeTable block_rope_;  // K rows, built on first use
};

namespace detail {

// Embedders whose vocabulary size GistNetGister can report.
template <class E>
concept HasVocab = requires(const E& e) { e.vocab(); };
template <class E>
concept HasModelDims = requires(const E& e) { e.dims().n_vocab; };

}  // namespace detail

/// A Gister (gister.hpp) that embeds LOD0 tokens with `Embedder` (a TokenEmbedder: LlamaModel,
/// MeanPoolGister, ...) and builds every gist level with a GistNet, so `tree.append(ids,
/// gister)` builds learned gists. Holds references: the embedder and the network must outlive
/// it. Each gist() call overwrites the network's activations (inference; training calls
/// GistNet::forward / backward itself).
template <ConfigType C, TokenEmbedder<typename C::Scalar> Embedder>
class GistNetGister {
 public:
  using Scalar = typename C::Scalar;

  /// Uses `embedder` for token ids and `net` for gists; their widths must agree.
  GistNetGister(Embedder& embedder, GistNet<C>& net) : embedder_(&embedder), net_(&net) {
    MC_EXPECTS(static_cast<std::int64_t>(embedder.dim()) == net.dim(), Errc::kInvalidArgument,
               "[mc.gist_net.dim_mismatch] embedder dim = ", embedder.dim(),
               " but the GistNet has d_model = ", net.dim());
  }

  /// Gist width d.
  std::int64_t dim() const { return net_->dim(); }

  /// The embedder's vocabulary size (from vocab() or dims().n_vocab), when it has one.
  std::int64_t vocab() const
    requires detail::HasVocab<Embedder> || detail::HasModelDims<Embedder>
  {
    if constexpr (detail::HasVocab<Embedder>) {
      return static_cast<std::int64_t>(embedder_->vocab());
    } else {
      return static_cast<std::int64_t>(embedder_->dims().n_vocab);
    }
  }

  /// Token embeddings of `n` ids into `out` [n, d] (the embedder's).
  void embed(const TokenId* ids, std::int64_t n, Scalar* out) { embedder_->embed(ids, n, out); }

  /// Gists of level `lod` for `n` blocks of K rows of `in` [n·K, d] into `out` [n, d].
  void gist(int lod, const Scalar* in, std::int64_t n, Scalar* out) {
    net_->forward(lod, in, n, out);
  }

 private:
  Embedder* embedder_;
  GistNet<C>* net_;
};

}  // namespace mc
