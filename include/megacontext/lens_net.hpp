// SPDX-License-Identifier: Apache-2.0
// LensNet on the CPU (Eigen reference): reads the assembled working context (entry embeddings plus
// lod / width / distance / σ features) and, conditioned on the most recent tokens (the query),
// emits one score per entry in [-1, 1] (> 0: wants detail, < 0: may collapse). Entries
// cross-attend to the query only, so each score depends on its own entry and the query. Forward
// keeps llm.c-style activations; backward gives gradients to every weight and to the inputs.
// Training losses (regression, Bradley-Terry preference) are here too. Data flow: assemble() ->
// LensNet -> FocusAllocator. Architecture, shapes and maths: docs/concepts/lens_net.md.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "megacontext/assemble.hpp"
#include "megacontext/detail/eigen.hpp"
#include "megacontext/error.hpp"
#include "megacontext/gister.hpp"
#include "megacontext/reference/init.hpp"
#include "megacontext/reference/rmsnorm.hpp"
#include "megacontext/reference/swiglu.hpp"

namespace mc {

/// Run-time sizes and constants of LensNet; validate() names a bad field. The defaults give about
/// 0.53M parameters at d_in = 256.
struct LensNetOptions {
  std::int64_t d_in = 256;      ///< width d of the entry and query embeddings (the base model's)
  std::int64_t d_model = 128;   ///< LensNet's inner width D; n_heads · d_head
  std::int64_t n_layers = 3;    ///< blocks (cross-attention + SwiGLU); >= 1
  std::int64_t n_heads = 4;     ///< cross-attention heads; divides d_model
  std::int64_t d_ff = 256;      ///< SwiGLU hidden width; >= 1
  std::int64_t num_query = 32;  ///< Q: most recent entries used as the query; >= 1
  std::int32_t max_lod = 3;     ///< highest lod with a one-hot feature; entries above it throw
  double norm_eps = 1e-5;       ///< RMSNorm epsilon; > 0
  double init_std = 0.02;       ///< std of the normal initialisation of matrices; >= 0

  /// Columns F of the per-entry feature matrix: lod one-hot (max_lod + 1), log2 width, log2
  /// distance, log2 σ.
  std::int64_t num_features() const { return static_cast<std::int64_t>(max_lod) + 4; }
  /// Head width d_model / n_heads.
  std::int64_t d_head() const { return n_heads > 0 ? d_model / n_heads : 0; }

  /// Throws mc::Error (kInvalidArgument, [mc.lens_net.bad_options]) naming the bad field.
  void validate() const {
    MC_EXPECTS(d_in >= 1, Errc::kInvalidArgument, "[mc.lens_net.bad_options] d_in = ", d_in,
               "; must be >= 1");
    MC_EXPECTS(d_model >= 1 && n_heads >= 1 && d_model % n_heads == 0, Errc::kInvalidArgument,
               "[mc.lens_net.bad_options] d_model = ", d_model, ", n_heads = ", n_heads,
               "; n_heads must be >= 1 and divide d_model");
    MC_EXPECTS(n_layers >= 1, Errc::kInvalidArgument,
               "[mc.lens_net.bad_options] n_layers = ", n_layers, "; must be >= 1");
    MC_EXPECTS(d_ff >= 1, Errc::kInvalidArgument, "[mc.lens_net.bad_options] d_ff = ", d_ff,
               "; must be >= 1");
    MC_EXPECTS(num_query >= 1, Errc::kInvalidArgument,
               "[mc.lens_net.bad_options] num_query = ", num_query, "; must be >= 1");
    MC_EXPECTS(max_lod >= 0 && max_lod <= 62, Errc::kInvalidArgument,
               "[mc.lens_net.bad_options] max_lod = ", max_lod, "; must be in [0, 62]");
    MC_EXPECTS(norm_eps > 0.0, Errc::kInvalidArgument,
               "[mc.lens_net.bad_options] norm_eps = ", norm_eps, "; must be > 0");
    MC_EXPECTS(init_std >= 0.0, Errc::kInvalidArgument,
               "[mc.lens_net.bad_options] init_std = ", init_std, "; must be >= 0");
  }
};

/// Weights of one LensNet cross-attention: entries (rows of the residual stream) query the
/// query memory; each matrix is [D, D] and acts on the right. Head h owns columns
/// [h·d_head, (h+1)·d_head) of q, k, v and rows of the same range of wo.
template <class Scalar>
struct LensCrossAttentionWeights {
  RowMatrix<Scalar> wq;  ///< [D, D] query projection (of entries)
  RowMatrix<Scalar> wk;  ///< [D, D] key projection (of the query memory)
  RowMatrix<Scalar> wv;  ///< [D, D] value projection (of the query memory)
  RowMatrix<Scalar> wo;  ///< [D, D] output projection
};

/// Weights of one LensNet block.
template <class Scalar>
struct LensNetLayerWeights {
  reference::Vector<Scalar> attn_norm;     ///< [D] RMSNorm gain of the entries before attention
  reference::Vector<Scalar> mem_norm;      ///< [D] RMSNorm gain of the query memory
  LensCrossAttentionWeights<Scalar> attn;  ///< wq, wk, wv, wo
  reference::Vector<Scalar> mlp_norm;      ///< [D] RMSNorm gain before the MLP
  reference::SwiGluWeights<Scalar> mlp;    ///< w1, w3 [D, d_ff], w2 [d_ff, D]
};

/// All weights of LensNet; the same struct holds their gradients (ParameterSet).
template <class Scalar>
struct LensNetWeights {
  RowMatrix<Scalar> w_in;                           ///< [d, D] embedding projection (shared)
  RowMatrix<Scalar> w_feat;                         ///< [F, D] feature projection (entries)
  reference::Vector<Scalar> b_in;                   ///< [D] input bias (entries and query)
  std::vector<LensNetLayerWeights<Scalar>> layers;  ///< n_layers blocks
  reference::Vector<Scalar> out_norm;               ///< [D] RMSNorm gain before the head
  reference::Vector<Scalar> w_out;                  ///< [D] score head
  reference::Vector<Scalar> b_out;                  ///< [1] score head bias

  /// All-zero weights shaped by `o` (a gradient accumulator).
  static LensNetWeights zeros(const LensNetOptions& o) {
    o.validate();
    const auto dm = o.d_model, f = o.d_ff;
    LensNetWeights w;
    w.w_in = RowMatrix<Scalar>::Zero(o.d_in, dm);
    w.w_feat = RowMatrix<Scalar>::Zero(o.num_features(), dm);
    w.b_in = reference::Vector<Scalar>::Zero(dm);
    w.layers.resize(static_cast<std::size_t>(o.n_layers));
    for (auto& l : w.layers) {
      l.attn_norm = l.mem_norm = l.mlp_norm = reference::Vector<Scalar>::Zero(dm);
      l.attn.wq = l.attn.wk = l.attn.wv = l.attn.wo = RowMatrix<Scalar>::Zero(dm, dm);
      l.mlp.w1 = l.mlp.w3 = RowMatrix<Scalar>::Zero(dm, f);
      l.mlp.w2 = RowMatrix<Scalar>::Zero(f, dm);
    }
    w.out_norm = w.w_out = reference::Vector<Scalar>::Zero(dm);
    w.b_out = reference::Vector<Scalar>::Zero(1);
    return w;
  }

  /// Weights from `seed`: norm gains 1, biases 0; matrices and w_out normal with std init_std,
  /// except the residual projections wo and w2 (init_std/√(2·n_layers), GPT-2's scaling).
  static LensNetWeights random(const LensNetOptions& o, std::uint64_t seed) {
    LensNetWeights w = zeros(o);
    const double resid_std = reference::residual_std(o.init_std, o.n_layers);
    reference::init_parameters<Scalar>(w, seed, [&](const std::string& name) {
      if (name.find("norm") != std::string::npos) return reference::InitRule{true, 1.0};
      if (name.starts_with("b_")) return reference::InitRule{true, 0.0};
      const bool resid = name.ends_with(".wo") || name.ends_with(".w2");
      return reference::InitRule{false, resid ? resid_std : o.init_std};
    });
    return w;
  }

  /// Weights converted to another scalar type (same names and shapes).
  template <class Other>
  LensNetWeights<Other> cast() const {
    LensNetWeights<Other> w;
    w.w_in = w_in.template cast<Other>();
    w.w_feat = w_feat.template cast<Other>();
    w.b_in = b_in.template cast<Other>();
    w.layers.resize(layers.size());
    for (std::size_t l = 0; l < layers.size(); ++l) {
      const auto& a = layers[l];
      auto& b = w.layers[l];
      b.attn_norm = a.attn_norm.template cast<Other>();
      b.mem_norm = a.mem_norm.template cast<Other>();
      b.attn.wq = a.attn.wq.template cast<Other>();
      b.attn.wk = a.attn.wk.template cast<Other>();
      b.attn.wv = a.attn.wv.template cast<Other>();
      b.attn.wo = a.attn.wo.template cast<Other>();
      b.mlp_norm = a.mlp_norm.template cast<Other>();
      b.mlp.w1 = a.mlp.w1.template cast<Other>();
      b.mlp.w3 = a.mlp.w3.template cast<Other>();
      b.mlp.w2 = a.mlp.w2.template cast<Other>();
    }
    w.out_norm = out_norm.template cast<Other>();
    w.w_out = w_out.template cast<Other>();
    w.b_out = b_out.template cast<Other>();
    return w;
  }

  /// Calls f(name, data, size) for every tensor in a fixed order; names look like "w_in",
  /// "layers.0.attn.wq", "layers.2.mem_norm", "w_out".
  template <class F>
  void for_each_parameter(F&& f) {
    f(std::string("w_in"), w_in.data(), w_in.size());
    f(std::string("w_feat"), w_feat.data(), w_feat.size());
    f(std::string("b_in"), b_in.data(), b_in.size());
    for (std::size_t l = 0; l < layers.size(); ++l) {
      const std::string p = "layers." + std::to_string(l) + ".";
      auto& x = layers[l];
      f(p + "attn_norm", x.attn_norm.data(), x.attn_norm.size());
      f(p + "mem_norm", x.mem_norm.data(), x.mem_norm.size());
      f(p + "attn.wq", x.attn.wq.data(), x.attn.wq.size());
      f(p + "attn.wk", x.attn.wk.data(), x.attn.wk.size());
      f(p + "attn.wv", x.attn.wv.data(), x.attn.wv.size());
      f(p + "attn.wo", x.attn.wo.data(), x.attn.wo.size());
      f(p + "mlp_norm", x.mlp_norm.data(), x.mlp_norm.size());
      f(p + "mlp.w1", x.mlp.w1.data(), x.mlp.w1.size());
      f(p + "mlp.w3", x.mlp.w3.data(), x.mlp.w3.size());
      f(p + "mlp.w2", x.mlp.w2.data(), x.mlp.w2.size());
    }
    f(std::string("out_norm"), out_norm.data(), out_norm.size());
    f(std::string("w_out"), w_out.data(), w_out.size());
    f(std::string("b_out"), b_out.data(), b_out.size());
  }
};

/// Activations of one block kept by the forward for the backward, W entry rows, Q memory rows.
template <class Scalar>
struct LensNetLayerActivations {
  RowMatrix<Scalar> x;                   ///< [W, D] block input (residual stream)
  RowMatrix<Scalar> xn;                  ///< [W, D] RMSNorm(x), the attention's queries' input
  reference::Vector<Scalar> rstd_x;      ///< [W] its reciprocal RMS
  RowMatrix<Scalar> mn;                  ///< [Q, D] RMSNorm(memory), keys' and values' input
  reference::Vector<Scalar> rstd_m;      ///< [Q] its reciprocal RMS
  RowMatrix<Scalar> q;                   ///< [W, D] queries
  RowMatrix<Scalar> k;                   ///< [Q, D] keys
  RowMatrix<Scalar> v;                   ///< [Q, D] values
  std::vector<RowMatrix<Scalar>> probs;  ///< n_heads x [W, Q] softmax weights, row = entry
  RowMatrix<Scalar> o;                   ///< [W, D] concatenated head outputs (before wo)
  RowMatrix<Scalar> h;                   ///< [W, D] x + attention
  RowMatrix<Scalar> hn;                  ///< [W, D] RMSNorm(h), the MLP input
  reference::Vector<Scalar> rstd_h;      ///< [W] its reciprocal RMS
  reference::SwiGluCache<Scalar> mlp;    ///< x·w1, x·w3 and the gated product
};

/// Everything the latest forward kept.
template <class Scalar>
struct LensNetActivations {
  std::int64_t num_entries = 0;                         ///< W of the latest forward (0: none)
  RowMatrix<Scalar> x;                                  ///< [W, d] entry embeddings
  RowMatrix<Scalar> features;                           ///< [W, F] entry features
  RowMatrix<Scalar> query;                              ///< [Q, d] query embeddings
  RowMatrix<Scalar> memory;                             ///< [Q, D] query·w_in + b_in
  std::vector<LensNetLayerActivations<Scalar>> layers;  ///< one per block
  RowMatrix<Scalar> h_last;                             ///< [W, D] output of the last block
  RowMatrix<Scalar> hf;                                 ///< [W, D] RMSNorm(h_last)
  reference::Vector<Scalar> rstd_f;                     ///< [W] its reciprocal RMS
  reference::Vector<Scalar> scores;                     ///< [W] tanh(hf·w_out + b_out)
};

/// Per-entry features [W, F] (F = options.num_features()) of entries at `positions` [W] ((t, σ)
/// in tokens), covering `width` [W] tokens at `lod` [W], seen from `cursor` (the token index one
/// past the newest token). Columns: one-hot lod (max_lod + 1), log2(width)/16,
/// log2(1 + cursor − t)/24, log2(1 + σ)/16 (scaled to about [0, 1] for 2^16-token spans and
/// 2^24-token distances). Throws when a lod is outside [0, max_lod], a width < 1 or t > cursor.
template <class Scalar>
RowMatrix<Scalar> lens_features(std::span<const GaussianPosition> positions,
                                std::span<const std::int64_t> width,
                                std::span<const std::int32_t> lod, double cursor,
                                const LensNetOptions& options) {
  options.validate();
  const auto n = static_cast<std::int64_t>(positions.size());
  MC_EXPECTS(
      static_cast<std::int64_t>(width.size()) == n && static_cast<std::int64_t>(lod.size()) == n,
      Errc::kInvalidArgument, "[mc.lens_net.bad_shape] ", n, " positions, ", width.size(),
      " widths, ", lod.size(), " lods; need one of each per entry");
  MC_EXPECTS(std::isfinite(cursor), Errc::kInvalidArgument,
             "[mc.lens_net.bad_cursor] cursor = ", cursor, "; must be finite");
  RowMatrix<Scalar> f = RowMatrix<Scalar>::Zero(n, options.num_features());
  const Eigen::Index c = options.max_lod + 1;
  for (std::int64_t i = 0; i < n; ++i) {
    const auto k = static_cast<std::size_t>(i);
    MC_EXPECTS(lod[k] >= 0 && lod[k] <= options.max_lod, Errc::kInvalidArgument,
               "[mc.lens_net.bad_lod] lod[", i, "] = ", lod[k],
               "; must be in [0, max_lod = ", options.max_lod, "]");
    MC_EXPECTS(width[k] >= 1, Errc::kInvalidArgument, "[mc.lens_net.bad_width] width[", i,
               "] = ", width[k], "; must be >= 1");
    const GaussianPosition p = positions[k];
    MC_EXPECTS(std::isfinite(p.t) && p.t <= cursor && std::isfinite(p.sigma) && p.sigma >= 0.0,
               Errc::kInvalidArgument, "[mc.lens_net.bad_position] positions[", i, "] = (", p.t,
               ", ", p.sigma, "); need t finite and <= cursor = ", cursor, ", σ finite and >= 0");
    f(i, lod[k]) = Scalar(1);
    f(i, c) = static_cast<Scalar>(std::log2(static_cast<double>(width[k])) / 16.0);
    f(i, c + 1) = static_cast<Scalar>(std::log2(1.0 + (cursor - p.t)) / 24.0);
    f(i, c + 2) = static_cast<Scalar>(std::log2(1.0 + p.sigma) / 16.0);
  }
  return f;
}

/// Features [W, F] of every entry of an assembled context seen from `cursor`; see the span
/// overload.
template <class Scalar>
RowMatrix<Scalar> lens_features(const AssembledContext<Scalar>& ctx, double cursor,
                                const LensNetOptions& options) {
  return lens_features<Scalar>(std::span<const GaussianPosition>(ctx.positions),
                               std::span<const std::int64_t>(ctx.width),
                               std::span<const std::int32_t>(ctx.lod), cursor, options);
}

/// The query [min(Q, W), d]: the embeddings of the last num_query entries of `ctx` (the most
/// recent tokens, which the allocator keeps at LOD0), oldest first.
template <class Scalar>
RowMatrix<Scalar> lens_query(const AssembledContext<Scalar>& ctx, const LensNetOptions& options) {
  options.validate();
  const Eigen::Index w = ctx.embeddings.rows();
  MC_EXPECTS(w >= 1, Errc::kInvalidArgument,
             "[mc.lens_net.bad_shape] the context has no entries; the query needs one");
  return ctx.embeddings.bottomRows(std::min<Eigen::Index>(w, options.num_query));
}

/// LensNet, CPU reference. Entries never attend to each other, only to the query, so the score
/// of entry i is a function of (embedding i, features i, query) alone: the network is
/// permutation-equivariant in the entries and invariant to the order of the query rows.
template <class Scalar_ = float>
class LensNet {
 public:
  using Scalar = Scalar_;

  /// A network with `options` and `weights` (shapes checked against the options).
  LensNet(const LensNetOptions& options, LensNetWeights<Scalar> weights)
      : options_(options), weights_(std::move(weights)) {
    options_.validate();
    check_weight_shapes();
  }

  /// A network whose weights come from LensNetWeights::random(options, seed).
  static LensNet random(const LensNetOptions& options, std::uint64_t seed) {
    return LensNet(options, LensNetWeights<Scalar>::random(options, seed));
  }

  /// The options the network was built with.
  const LensNetOptions& options() const { return options_; }
  /// The weights.
  const LensNetWeights<Scalar>& weights() const { return weights_; }
  /// The weights, writable (optimiser steps, tests); keep shapes; run forward again before a
  /// backward after changing them.
  LensNetWeights<Scalar>& weights() { return weights_; }
  /// What the latest forward kept.
  const LensNetActivations<Scalar>& activations() const { return acts_; }

  /// Scores [W] in [-1, 1] of entries with embeddings `x` [W, d] and features `features` [W, F]
  /// (lens_features), conditioned on `query` [Q', d] (1 <= Q', usually lens_query). Keeps the
  /// activations for backward().
  void forward(const RowMatrix<Scalar>& x, const RowMatrix<Scalar>& features,
               const RowMatrix<Scalar>& query, reference::Vector<Scalar>& scores) {
    const Eigen::Index w = x.rows(), d = options_.d_in, f = options_.num_features();
    MC_EXPECTS(w >= 1 && x.cols() == d, Errc::kInvalidArgument,
               "[mc.lens_net.bad_shape] embeddings are ", w, " x ", x.cols(),
               "; need at least one row of d_in = ", d, " columns");
    MC_EXPECTS(features.rows() == w && features.cols() == f, Errc::kInvalidArgument,
               "[mc.lens_net.bad_shape] features are ", features.rows(), " x ", features.cols(),
               "; need W = ", w, " rows (one per entry) of F = ", f, " columns");
    MC_EXPECTS(query.rows() >= 1 && query.cols() == d, Errc::kInvalidArgument,
               "[mc.lens_net.bad_shape] query is ", query.rows(), " x ", query.cols(),
               "; need at least one row of d_in = ", d, " columns");
    MC_EXPECTS(x.allFinite() && features.allFinite() && query.allFinite(), Errc::kInvalidArgument,
               "[mc.lens_net.not_finite] embeddings, features or query hold a NaN or Inf");
    acts_.num_entries = 0;  // invalid until the forward completes
    acts_.x = x;
    acts_.features = features;
    acts_.query = query;
    acts_.memory.noalias() = query * weights_.w_in;
    acts_.memory.rowwise() += weights_.b_in.transpose();
    RowMatrix<Scalar> h = x * weights_.w_in;
    h.noalias() += features * weights_.w_feat;
    h.rowwise() += weights_.b_in.transpose();
    acts_.layers.resize(weights_.layers.size());
    RowMatrix<Scalar> y;
    const double eps = options_.norm_eps;
    for (std::size_t l = 0; l < weights_.layers.size(); ++l) {
      const LensNetLayerWeights<Scalar>& lw = weights_.layers[l];
      LensNetLayerActivations<Scalar>& a = acts_.layers[l];
      a.x = std::move(h);
      reference::rmsnorm_forward(a.x, lw.attn_norm, eps, a.xn, a.rstd_x);
      reference::rmsnorm_forward(acts_.memory, lw.mem_norm, eps, a.mn, a.rstd_m);
      cross_attention_forward(lw.attn, a, y);
      a.h = a.x + y;
      reference::rmsnorm_forward(a.h, lw.mlp_norm, eps, a.hn, a.rstd_h);
      reference::swiglu_forward(a.hn, lw.mlp, y, a.mlp);
      h = a.h + y;
    }
    acts_.h_last = std::move(h);
    reference::rmsnorm_forward(acts_.h_last, weights_.out_norm, eps, acts_.hf, acts_.rstd_f);
    acts_.scores = ((acts_.hf * weights_.w_out).array() + weights_.b_out[0]).tanh().matrix();
    scores = acts_.scores;
    acts_.num_entries = w;
  }

  /// Scores of every entry of `ctx` seen from `cursor`: forward(ctx.embeddings,
  /// lens_features(ctx, cursor), lens_query(ctx)).
  void forward(const AssembledContext<Scalar>& ctx, double cursor,
               reference::Vector<Scalar>& scores) {
    forward(ctx.embeddings, lens_features(ctx, cursor, options_), lens_query(ctx, options_),
            scores);
  }

  /// Backward of the latest forward from dL/dscores `dscores` [W]: adds dL/dW to `grads` (shaped
  /// like the weights, e.g. LensNetWeights::zeros) when not null, and writes dL/dx [W, d] to
  /// `dx` and dL/dquery [Q', d] to `dquery` when not null (features get no gradient).
  void backward(const reference::Vector<Scalar>& dscores, LensNetWeights<Scalar>* grads,
                RowMatrix<Scalar>* dx = nullptr, RowMatrix<Scalar>* dquery = nullptr) const {
    const Eigen::Index w = acts_.num_entries;
    MC_EXPECTS(w >= 1, Errc::kInvalidArgument,
               "[mc.lens_net.no_forward] backward needs a completed forward first");
    MC_EXPECTS(dscores.size() == w, Errc::kInvalidArgument, "[mc.lens_net.bad_shape] dscores has ",
               dscores.size(), " entries; the forward scored W = ", w);
    if (grads != nullptr) check_shapes(*grads, "grads");
    const Eigen::Index dm = options_.d_model;
    // tanh' = 1 − s²; the head is z = hf·w_out + b_out.
    const reference::Vector<Scalar> dz =
        (dscores.array() * (Scalar(1) - acts_.scores.array().square())).matrix();
    if (grads != nullptr) {
      grads->w_out.noalias() += acts_.hf.transpose() * dz;
      grads->b_out[0] += dz.sum();
    }
    const RowMatrix<Scalar> dhf = dz * weights_.w_out.transpose();
    RowMatrix<Scalar> dh = RowMatrix<Scalar>::Zero(w, dm);
    reference::rmsnorm_backward(dhf, acts_.h_last, weights_.out_norm, acts_.rstd_f, dh,
                                grads != nullptr ? &grads->out_norm : nullptr);
    RowMatrix<Scalar> dmem = RowMatrix<Scalar>::Zero(acts_.memory.rows(), dm);
    for (std::size_t l = weights_.layers.size(); l-- > 0;) {
      const LensNetLayerWeights<Scalar>& lw = weights_.layers[l];
      const LensNetLayerActivations<Scalar>& a = acts_.layers[l];
      LensNetLayerWeights<Scalar>* g = grads != nullptr ? &grads->layers[l] : nullptr;
      // h_out = h + mlp(RMSNorm(h)): dh flows through the residual and the MLP branch.
      RowMatrix<Scalar> dhn = RowMatrix<Scalar>::Zero(w, dm);
      reference::swiglu_backward(dh, a.hn, lw.mlp, a.mlp, dhn, g != nullptr ? &g->mlp : nullptr);
      reference::rmsnorm_backward(dhn, a.h, lw.mlp_norm, a.rstd_h, dh,
                                  g != nullptr ? &g->mlp_norm : nullptr);
      // h = x + attn(RMSNorm(x), RMSNorm(memory)).
      RowMatrix<Scalar> dxn = RowMatrix<Scalar>::Zero(w, dm);
      RowMatrix<Scalar> dmn = RowMatrix<Scalar>::Zero(acts_.memory.rows(), dm);
      cross_attention_backward(dh, lw.attn, a, dxn, dmn, g != nullptr ? &g->attn : nullptr);
      reference::rmsnorm_backward(dxn, a.x, lw.attn_norm, a.rstd_x, dh,
                                  g != nullptr ? &g->attn_norm : nullptr);
      reference::rmsnorm_backward(dmn, acts_.memory, lw.mem_norm, a.rstd_m, dmem,
                                  g != nullptr ? &g->mem_norm : nullptr);
    }
    // h⁰ = x·w_in + features·w_feat + b_in; memory = query·w_in + b_in.
    if (grads != nullptr) {
      grads->w_in.noalias() += acts_.x.transpose() * dh;
      grads->w_in.noalias() += acts_.query.transpose() * dmem;
      grads->w_feat.noalias() += acts_.features.transpose() * dh;
      grads->b_in += dh.colwise().sum().transpose();
      grads->b_in += dmem.colwise().sum().transpose();
    }
    if (dx != nullptr) dx->noalias() = dh * weights_.w_in.transpose();
    if (dquery != nullptr) dquery->noalias() = dmem * weights_.w_in.transpose();
  }

 private:
  // y [W, D] = softmax_per_head((xn·wq)(mn·wk)ᵀ/√d_head)(mn·wv) · wo; no mask and no positions:
  // every entry sees every query row, and order enters only through the features.
  void cross_attention_forward(const LensCrossAttentionWeights<Scalar>& w,
                               LensNetLayerActivations<Scalar>& a, RowMatrix<Scalar>& y) const {
    const Eigen::Index n = a.xn.rows();
    const auto dh = static_cast<Eigen::Index>(options_.d_head());
    const auto heads = static_cast<std::size_t>(options_.n_heads);
    a.q.noalias() = a.xn * w.wq;
    a.k.noalias() = a.mn * w.wk;
    a.v.noalias() = a.mn * w.wv;
    a.o.resize(n, options_.d_model);
    a.probs.resize(heads);
    const Scalar scale = Scalar(1) / std::sqrt(static_cast<Scalar>(dh));
    for (std::size_t hh = 0; hh < heads; ++hh) {
      const Eigen::Index c = static_cast<Eigen::Index>(hh) * dh;
      RowMatrix<Scalar>& p = a.probs[hh];
      p.noalias() = a.q.middleCols(c, dh) * a.k.middleCols(c, dh).transpose();
      p *= scale;
      for (Eigen::Index i = 0; i < n; ++i) {
        const Scalar mx = p.row(i).maxCoeff();
        p.row(i) = (p.row(i).array() - mx).exp().matrix();
        p.row(i) /= p.row(i).sum();
      }
      a.o.middleCols(c, dh).noalias() = p * a.v.middleCols(c, dh);
    }
    y.noalias() = a.o * w.wo;
  }

  // Adds dL/dxn [W, D] to `dxn` and dL/dmn [Q, D] to `dmn` (and dL/dW to `*dw`) given dy [W, D].
  void cross_attention_backward(const RowMatrix<Scalar>& dy,
                                const LensCrossAttentionWeights<Scalar>& w,
                                const LensNetLayerActivations<Scalar>& a, RowMatrix<Scalar>& dxn,
                                RowMatrix<Scalar>& dmn,
                                LensCrossAttentionWeights<Scalar>* dw) const {
    const Eigen::Index n = a.xn.rows(), m = a.mn.rows(), dm = options_.d_model;
    const auto dh = static_cast<Eigen::Index>(options_.d_head());
    const Scalar scale = Scalar(1) / std::sqrt(static_cast<Scalar>(dh));
    if (dw != nullptr) dw->wo.noalias() += a.o.transpose() * dy;
    const RowMatrix<Scalar> d_o = dy * w.wo.transpose();
    RowMatrix<Scalar> dq(n, dm), dk(m, dm), dv(m, dm), dp(n, m);
    for (std::size_t hh = 0; hh < a.probs.size(); ++hh) {
      const Eigen::Index c = static_cast<Eigen::Index>(hh) * dh;
      const RowMatrix<Scalar>& p = a.probs[hh];
      const auto doh = d_o.middleCols(c, dh);
      dv.middleCols(c, dh).noalias() = p.transpose() * doh;
      dp.noalias() = doh * a.v.middleCols(c, dh).transpose();
      // Softmax backward: ds_ij = p_ij (dp_ij − Σ_k p_ik dp_ik).
      for (Eigen::Index i = 0; i < n; ++i) {
        const Scalar dot = p.row(i).dot(dp.row(i));
        dp.row(i) = (p.row(i).array() * (dp.row(i).array() - dot)).matrix();
      }
      dp *= scale;
      dq.middleCols(c, dh).noalias() = dp * a.k.middleCols(c, dh);
      dk.middleCols(c, dh).noalias() = dp.transpose() * a.q.middleCols(c, dh);
    }
    if (dw != nullptr) {
      dw->wq.noalias() += a.xn.transpose() * dq;
      dw->wk.noalias() += a.mn.transpose() * dk;
      dw->wv.noalias() += a.mn.transpose() * dv;
    }
    dxn.noalias() += dq * w.wq.transpose();
    dmn.noalias() += dk * w.wk.transpose();
    dmn.noalias() += dv * w.wv.transpose();
  }

  void check_weight_shapes() const { check_shapes(weights_, "weights"); }

  // Every tensor of `w` must have the shape LensNetWeights::zeros(options) gives it.
  void check_shapes(const LensNetWeights<Scalar>& w, const char* what) const {
    const Eigen::Index d = options_.d_in, dm = options_.d_model, f = options_.d_ff;
    MC_EXPECTS(w.layers.size() == static_cast<std::size_t>(options_.n_layers),
               Errc::kInvalidArgument, "[mc.lens_net.bad_weights] ", what, " have ",
               w.layers.size(), " layers; options say n_layers = ", options_.n_layers);
    auto check = [&](const std::string& name, Eigen::Index rows, Eigen::Index cols,
                     Eigen::Index want_rows, Eigen::Index want_cols) {
      MC_EXPECTS(rows == want_rows && cols == want_cols, Errc::kInvalidArgument,
                 "[mc.lens_net.bad_weights] ", what, " tensor '", name, "' is ", rows, " x ", cols,
                 "; the options need ", want_rows, " x ", want_cols);
    };
    check("w_in", w.w_in.rows(), w.w_in.cols(), d, dm);
    check("w_feat", w.w_feat.rows(), w.w_feat.cols(), options_.num_features(), dm);
    check("b_in", w.b_in.size(), 1, dm, 1);
    for (std::size_t l = 0; l < w.layers.size(); ++l) {
      const std::string p = "layers." + std::to_string(l) + ".";
      const auto& x = w.layers[l];
      check(p + "attn_norm", x.attn_norm.size(), 1, dm, 1);
      check(p + "mem_norm", x.mem_norm.size(), 1, dm, 1);
      check(p + "attn.wq", x.attn.wq.rows(), x.attn.wq.cols(), dm, dm);
      check(p + "attn.wk", x.attn.wk.rows(), x.attn.wk.cols(), dm, dm);
      check(p + "attn.wv", x.attn.wv.rows(), x.attn.wv.cols(), dm, dm);
      check(p + "attn.wo", x.attn.wo.rows(), x.attn.wo.cols(), dm, dm);
      check(p + "mlp_norm", x.mlp_norm.size(), 1, dm, 1);
      check(p + "mlp.w1", x.mlp.w1.rows(), x.mlp.w1.cols(), dm, f);
      check(p + "mlp.w3", x.mlp.w3.rows(), x.mlp.w3.cols(), dm, f);
      check(p + "mlp.w2", x.mlp.w2.rows(), x.mlp.w2.cols(), f, dm);
    }
    check("out_norm", w.out_norm.size(), 1, dm, 1);
    check("w_out", w.w_out.size(), 1, dm, 1);
    check("b_out", w.b_out.size(), 1, 1, 1);
  }

  LensNetOptions options_;
  LensNetWeights<Scalar> weights_;
  LensNetActivations<Scalar> acts_;
};

/// A labelled entry for the regression loss: the score `target` in [-1, 1] wanted for `entry`
/// (e.g. from the counterfactual ΔNLL of expanding or collapsing it, squashed to [-1, 1]).
struct LensTarget {
  std::int64_t entry = 0;  ///< entry index in [0, W)
  double target = 0.0;     ///< wanted score, in [-1, 1]
};

/// A preference for the Bradley-Terry loss: `preferred` should score higher than `other`.
struct LensPreference {
  std::int64_t preferred = 0;  ///< entry index in [0, W)
  std::int64_t other = 0;      ///< entry index in [0, W), != preferred
};

/// Regression loss L = (1/N) Σ_n (s_{e_n} − y_n)² over `targets` [N >= 1] of `scores` [W]; adds
/// dL/ds = (2/N)(s_e − y) to `dscores` [W] when not null.
template <class Scalar>
double lens_regression_loss(const reference::Vector<Scalar>& scores,
                            std::span<const LensTarget> targets,
                            reference::Vector<Scalar>* dscores) {
  const Eigen::Index w = scores.size();
  MC_EXPECTS(!targets.empty(), Errc::kInvalidArgument,
             "[mc.lens_net.bad_targets] no targets; need at least one");
  MC_EXPECTS(dscores == nullptr || dscores->size() == w, Errc::kInvalidArgument,
             "[mc.lens_net.bad_shape] dscores has ", dscores == nullptr ? 0 : dscores->size(),
             " entries; scores has W = ", w);
  const double inv_n = 1.0 / static_cast<double>(targets.size());
  double loss = 0.0;
  for (std::size_t k = 0; k < targets.size(); ++k) {
    const LensTarget t = targets[k];
    MC_EXPECTS(t.entry >= 0 && t.entry < w, Errc::kInvalidArgument,
               "[mc.lens_net.bad_targets] targets[", k, "].entry = ", t.entry,
               "; must be in [0, W = ", w, ")");
    MC_EXPECTS(t.target >= -1.0 && t.target <= 1.0, Errc::kInvalidArgument,
               "[mc.lens_net.bad_targets] targets[", k, "].target = ", t.target,
               "; must be in [-1, 1]");
    const double r = static_cast<double>(scores[t.entry]) - t.target;
    loss += r * r * inv_n;
    if (dscores != nullptr) (*dscores)[t.entry] += static_cast<Scalar>(2.0 * r * inv_n);
  }
  return loss;
}

/// Bradley-Terry preference loss L = (1/N) Σ_n log(1 + exp(−(s_i − s_j)/τ)) over `pairs`
/// [N >= 1] (i = preferred, j = other) of `scores` [W], temperature `tau` > 0; adds dL/ds to
/// `dscores` [W] when not null: dL/ds_i = −σ(−m/τ)/(Nτ) = −dL/ds_j, m = s_i − s_j.
template <class Scalar>
double lens_preference_loss(const reference::Vector<Scalar>& scores,
                            std::span<const LensPreference> pairs, double tau,
                            reference::Vector<Scalar>* dscores) {
  const Eigen::Index w = scores.size();
  MC_EXPECTS(!pairs.empty(), Errc::kInvalidArgument,
             "[mc.lens_net.bad_pairs] no pairs; need at least one");
  MC_EXPECTS(std::isfinite(tau) && tau > 0.0, Errc::kInvalidArgument,
             "[mc.lens_net.bad_tau] tau = ", tau, "; must be finite and > 0");
  MC_EXPECTS(dscores == nullptr || dscores->size() == w, Errc::kInvalidArgument,
             "[mc.lens_net.bad_shape] dscores has ", dscores == nullptr ? 0 : dscores->size(),
             " entries; scores has W = ", w);
  const double inv_n = 1.0 / static_cast<double>(pairs.size());
  double loss = 0.0;
  for (std::size_t k = 0; k < pairs.size(); ++k) {
    const LensPreference p = pairs[k];
    MC_EXPECTS(p.preferred >= 0 && p.preferred < w && p.other >= 0 && p.other < w &&
                   p.preferred != p.other,
               Errc::kInvalidArgument, "[mc.lens_net.bad_pairs] pairs[", k, "] = (", p.preferred,
               ", ", p.other, "); need two different entries in [0, W = ", w, ")");
    const double z =
        -(static_cast<double>(scores[p.preferred]) - static_cast<double>(scores[p.other])) / tau;
    // softplus(z) = max(z, 0) + log1p(e^{−|z|}) never overflows; its derivative is sigmoid(z).
    loss += (std::max(z, 0.0) + std::log1p(std::exp(-std::abs(z)))) * inv_n;
    if (dscores != nullptr) {
      const double sig = z >= 0.0 ? 1.0 / (1.0 + std::exp(-z)) : std::exp(z) / (1.0 + std::exp(z));
      const double g = sig * inv_n / tau;
      (*dscores)[p.preferred] -= static_cast<Scalar>(g);
      (*dscores)[p.other] += static_cast<Scalar>(g);
    }
  }
  return loss;
}

}  // namespace mc
