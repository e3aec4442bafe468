// SPDX-License-Identifier: Apache-2.0
// The reference Llama-style decoder on the CPU (Eigen): RMSNorm, multi-head attention with Gaussian
// RoPE on q and k, SwiGLU MLP, tied embedding/unembedding. It is the test model of the library
// and the worked example of a BaseModel (model.hpp): forward keeps llm.c-style activation buffers
// per layer, backward gives gradients to the input embeddings (backward_inputs, weights frozen)
// and to every weight, and decode_step runs one row at a time over a KV cache.
// Maths of each backward: docs/concepts/reference_llama.md.
#pragma once

#include "megacontext/detail/eigen.hpp"

#include <cmath>
#include <cstdint>
#include <random>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "megacontext/config.hpp"
#include "megacontext/error.hpp"
#include "megacontext/gaussian_rope.hpp"
#include "megacontext/gister.hpp"
#include "megacontext/model.hpp"
#include "megacontext/pyramid_mask.hpp"
#include "megacontext/reference/attention.hpp"
#include "megacontext/reference/init.hpp"
#include "megacontext/reference/rmsnorm.hpp"
#include "megacontext/reference/swiglu.hpp"

namespace mc::reference {

/// Run-time sizes and constants of the reference decoder; validate() names a bad field.
struct LlamaOptions {
  std::int64_t d_model = 64;   ///< residual width d; n_heads · d_head
  std::int64_t n_layers = 2;   ///< transformer blocks; >= 1
  std::int64_t n_heads = 4;    ///< attention heads; divides d_model, d_head even
  std::int64_t d_ff = 172;     ///< SwiGLU hidden width; >= 1
  std::int64_t n_vocab = 256;  ///< vocabulary size V; >= 1
  double rope_base = 10000.0;  ///< RoPE base: ω_j = base^(−2j/d_head); > 1
  double norm_eps = 1e-5;      ///< RMSNorm epsilon; > 0
  double init_std = 0.02;      ///< std of the normal initialisation; >= 0

  /// Head width d_model / n_heads.
  std::int64_t d_head() const { return n_heads > 0 ? d_model / n_heads : 0; }

  /// Throws mc::Error (kInvalidArgument, [mc.llama.bad_options]) naming the bad field.
  void validate() const {
    MC_EXPECTS(d_model >= 2 && n_heads >= 1 && d_model % n_heads == 0 && d_head() % 2 == 0,
               Errc::kInvalidArgument, "[mc.llama.bad_options] d_model = ", d_model,
               ", n_heads = ", n_heads, "; n_heads must divide d_model into an even d_head");
    MC_EXPECTS(n_layers >= 1, Errc::kInvalidArgument,
               "[mc.llama.bad_options] n_layers = ", n_layers, "; must be >= 1");
    MC_EXPECTS(d_ff >= 1, Errc::kInvalidArgument, "[mc.llama.bad_options] d_ff = ", d_ff,
               "; must be >= 1");
    MC_EXPECTS(n_vocab >= 1, Errc::kInvalidArgument, "[mc.llama.bad_options] n_vocab = ", n_vocab,
               "; must be >= 1");
    MC_EXPECTS(std::isfinite(rope_base) && rope_base > 1.0, Errc::kInvalidArgument,
               "[mc.llama.bad_options] rope_base = ", rope_base, "; must be finite and > 1");
    MC_EXPECTS(norm_eps > 0.0, Errc::kInvalidArgument,
               "[mc.llama.bad_options] norm_eps = ", norm_eps, "; must be > 0");
    MC_EXPECTS(init_std >= 0.0, Errc::kInvalidArgument,
               "[mc.llama.bad_options] init_std = ", init_std, "; must be >= 0");
  }

  /// The Gaussian RoPE options of the attention layers (d_head, rope_base, default policies).
  GaussianRopeOptions rope() const {
    GaussianRopeOptions r;
    r.d_head = static_cast<int>(d_head());
    r.base = rope_base;
    return r;
  }
};

/// Weights of one transformer block.
template <class Scalar>
struct LlamaLayerWeights {
  Vector<Scalar> attn_norm;       ///< [d] RMSNorm gain before attention
  AttentionWeights<Scalar> attn;  ///< wq, wk, wv, wo, each [d, d]
  Vector<Scalar> mlp_norm;        ///< [d] RMSNorm gain before the MLP
  SwiGluWeights<Scalar> mlp;      ///< w1, w3 [d, d_ff], w2 [d_ff, d]
};

/// All weights of the decoder; the same struct holds their gradients.
template <class Scalar>
struct LlamaWeights {
  RowMatrix<Scalar> embedding;                    ///< [V, d] token embeddings, tied unembedding
  std::vector<LlamaLayerWeights<Scalar>> layers;  ///< n_layers blocks
  Vector<Scalar> final_norm;                      ///< [d] RMSNorm gain before the unembedding

  /// All-zero weights shaped by `o` (a gradient accumulator).
  static LlamaWeights zeros(const LlamaOptions& o) {
    o.validate();
    const auto d = o.d_model, f = o.d_ff;
    LlamaWeights w;
    w.embedding = RowMatrix<Scalar>::Zero(o.n_vocab, d);
    w.layers.resize(static_cast<std::size_t>(o.n_layers));
    for (auto& l : w.layers) {
      l.attn_norm = Vector<Scalar>::Zero(d);
      l.attn.wq = l.attn.wk = l.attn.wv = l.attn.wo = RowMatrix<Scalar>::Zero(d, d);
      l.mlp_norm = Vector<Scalar>::Zero(d);
      l.mlp.w1 = l.mlp.w3 = RowMatrix<Scalar>::Zero(d, f);
      l.mlp.w2 = RowMatrix<Scalar>::Zero(f, d);
    }
    w.final_norm = Vector<Scalar>::Zero(d);
    return w;
  }

  /// Weights from `seed`: norm gains 1; matrices normal with std init_std, except the
  /// residual projections wo and w2, which get init_std/√(2·n_layers) (GPT-2's scaling).
  static LlamaWeights random(const LlamaOptions& o, std::uint64_t seed) {
    LlamaWeights w = zeros(o);
    const double resid_std = residual_std(o.init_std, o.n_layers);
    init_parameters<Scalar>(w, seed, [&](const std::string& name) {
      if (name.find("norm") != std::string::npos) return InitRule{true, 1.0};
      const bool resid = name.ends_with(".wo") || name.ends_with(".w2");
      return InitRule{false, resid ? resid_std : o.init_std};
    });
    return w;
  }

  /// Calls f(name, data, size) for every tensor in a fixed order; names look like
  /// "embedding", "layers.0.attn.wq", "layers.1.mlp_norm", "final_norm".
  template <class F>
  void for_each_parameter(F&& f) {
    f(std::string("embedding"), embedding.data(), embedding.size());
    for (std::size_t l = 0; l < layers.size(); ++l) {
      const std::string p = "layers." + std::to_string(l) + ".";
      auto& x = layers[l];
      f(p + "attn_norm", x.attn_norm.data(), x.attn_norm.size());
      f(p + "attn.wq", x.attn.wq.data(), x.attn.wq.size());
      f(p + "attn.wk", x.attn.wk.data(), x.attn.wk.size());
      f(p + "attn.wv", x.attn.wv.data(), x.attn.wv.size());
      f(p + "attn.wo", x.attn.wo.data(), x.attn.wo.size());
      f(p + "mlp_norm", x.mlp_norm.data(), x.mlp_norm.size());
      f(p + "mlp.w1", x.mlp.w1.data(), x.mlp.w1.size());
      f(p + "mlp.w3", x.mlp.w3.data(), x.mlp.w3.size());
      f(p + "mlp.w2", x.mlp.w2.data(), x.mlp.w2.size());
    }
    f(std::string("final_norm"), final_norm.data(), final_norm.size());
  }
};

/// Activations of one block kept by the forward for the backward (llm.c style), n rows each.
template <class Scalar>
struct LlamaLayerActivations {
  RowMatrix<Scalar> x;          ///< [n, d] block input (residual stream)
  RowMatrix<Scalar> xn1;        ///< [n, d] RMSNorm(x), the attention input
  Vector<Scalar> rstd1;         ///< [n] its reciprocal RMS
  AttentionCache<Scalar> attn;  ///< q, k (rotated), v, probabilities, head outputs
  RowMatrix<Scalar> h;          ///< [n, d] x + attention
  RowMatrix<Scalar> xn2;        ///< [n, d] RMSNorm(h), the MLP input
  Vector<Scalar> rstd2;         ///< [n] its reciprocal RMS
  SwiGluCache<Scalar> mlp;      ///< x·w1, x·w3 and the gated product
};

/// Everything the latest forward kept.
template <class Scalar>
struct LlamaActivations {
  std::int64_t n = 0;                                 ///< rows of the latest forward (0: none)
  GaussianRopeTable rope;                             ///< [n, d_head/2] tables of the positions
  std::vector<LlamaLayerActivations<Scalar>> layers;  ///< one per block
  RowMatrix<Scalar> h_last;                           ///< [n, d] output of the last block
  RowMatrix<Scalar> hf;                               ///< [n, d] final RMSNorm(h_last)
  Vector<Scalar> rstd_f;                              ///< [n] its reciprocal RMS
};

/// The reference decoder; satisfies mc::BaseModel and mc::TrainableBaseModel.
template <class Scalar_ = float>
class LlamaModel {
 public:
  using Scalar = Scalar_;

  /// A model with `options` and `weights` (shapes checked against the options).
  LlamaModel(const LlamaOptions& options, LlamaWeights<Scalar> weights)
      : options_(options), weights_(std::move(weights)) {
    options_.validate();
    MC_EXPECTS(weights_.layers.size() == static_cast<std::size_t>(options_.n_layers),
               Errc::kInvalidArgument, "[mc.llama.bad_weights] ", weights_.layers.size(),
               " layers; options say ", options_.n_layers);
    check_matrix_shapes();
  }

  /// A model whose weights come from LlamaWeights::random(options, seed).
  static LlamaModel random(const LlamaOptions& options, std::uint64_t seed) {
    return LlamaModel(options, LlamaWeights<Scalar>::random(options, seed));
  }

  /// Sizes MegaContext reads: d_model and n_vocab.
  ModelDims dims() const { return {options_.d_model, options_.n_vocab}; }
  /// The embedding width d (TokenEmbedder).
  std::int64_t dim() const { return options_.d_model; }
  /// The options the model was built with.
  const LlamaOptions& options() const { return options_; }
  /// The weights.
  const LlamaWeights<Scalar>& weights() const { return weights_; }
  /// The weights, writable (optimiser steps, tests); keep shapes; activations of an earlier
  /// forward then no longer match them, so run forward again before a backward.
  LlamaWeights<Scalar>& weights() { return weights_; }
  /// What the latest forward kept (for tests and for inspecting a run).
  const LlamaActivations<Scalar>& activations() const { return acts_; }

  /// Writes the embeddings of `ids` [n] to `out` [n, d] (rows of the tied embedding table).
  void embed(const TokenId* ids, std::int64_t n, Scalar* out) const {
    MC_EXPECTS(n >= 0 && (n == 0 || (ids != nullptr && out != nullptr)), Errc::kInvalidArgument,
               "[mc.llama.bad_shape] embed of n = ", n, " ids needs non-null ids and out");
    const std::int64_t d = options_.d_model;
    for (std::int64_t i = 0; i < n; ++i) {
      MC_EXPECTS(ids[i] >= 0 && ids[i] < options_.n_vocab, Errc::kInvalidArgument,
                 "[mc.llama.bad_token] ids[", i, "] = ", ids[i], "; must be in [0, ",
                 options_.n_vocab, ")");
      Eigen::Map<RowMatrix<Scalar>>(out + i * d, 1, d) = weights_.embedding.row(ids[i]);
    }
  }

  /// Logits [n, V] of `embeddings` [n, d] at `positions` [n] ((t, σ) per row, in tokens) under
  /// `mask` [n, n] bytes (row = query, nonzero = may attend; nullptr = causal by row order).
  /// Keeps the activations for backward() / backward_inputs().
  void forward(const Scalar* embeddings, const GaussianPosition* positions, std::int64_t n,
               const std::uint8_t* mask, Scalar* logits) {
    MC_EXPECTS(n >= 1 && embeddings != nullptr && positions != nullptr && logits != nullptr,
               Errc::kInvalidArgument, "[mc.llama.bad_shape] forward of n = ", n,
               " rows; needs n >= 1 and non-null embeddings, positions and logits");
    check_attention_mask(mask, n);
    const std::int64_t d = options_.d_model;
    const int n_heads = static_cast<int>(options_.n_heads);
    acts_.n = 0;  // invalid until the forward completes
    acts_.rope = gaussian_rope_table(positions, n, options_.rope());
    acts_.layers.resize(weights_.layers.size());
    RowMatrix<Scalar> x = Eigen::Map<const RowMatrix<Scalar>>(embeddings, n, d);
    RowMatrix<Scalar> y;
    for (std::size_t l = 0; l < weights_.layers.size(); ++l) {
      const LlamaLayerWeights<Scalar>& w = weights_.layers[l];
      LlamaLayerActivations<Scalar>& a = acts_.layers[l];
      a.x = std::move(x);
      rmsnorm_forward(a.x, w.attn_norm, options_.norm_eps, a.xn1, a.rstd1);
      attention_forward(a.xn1, w.attn, n_heads, acts_.rope, mask, y, a.attn);
      a.h = a.x + y;
      rmsnorm_forward(a.h, w.mlp_norm, options_.norm_eps, a.xn2, a.rstd2);
      swiglu_forward(a.xn2, w.mlp, y, a.mlp);
      x = a.h + y;
    }
    acts_.h_last = std::move(x);
    rmsnorm_forward(acts_.h_last, weights_.final_norm, options_.norm_eps, acts_.hf, acts_.rstd_f);
    Eigen::Map<RowMatrix<Scalar>>(logits, n, options_.n_vocab).noalias() =
        acts_.hf * weights_.embedding.transpose();
    acts_.n = n;
  }

  /// Convenience overload: returns the logits [n, V] of `embeddings` [n, d].
  RowMatrix<Scalar> forward(const RowMatrix<Scalar>& embeddings,
                            std::span<const GaussianPosition> positions,
                            const std::uint8_t* mask = nullptr) {
    MC_EXPECTS(embeddings.cols() == options_.d_model &&
                   static_cast<std::size_t>(embeddings.rows()) == positions.size(),
               Errc::kInvalidArgument, "[mc.llama.bad_shape] embeddings ", embeddings.rows(), " x ",
               embeddings.cols(), " with ", positions.size(), " positions; need [n, ",
               options_.d_model, "] and n positions");
    RowMatrix<Scalar> logits(embeddings.rows(), options_.n_vocab);
    forward(embeddings.data(), positions.data(), embeddings.rows(), mask, logits.data());
    return logits;
  }

  /// Logits of a working-context tree under a MegaAttention pyramid mask: `embeddings` holds
  /// the mask's whole sequence (all wLOD0 rows, then wLOD1, …; mask.seq_len() rows). The
  /// reference expands the mask to dense, so this is for sizes PyramidMask::dense() accepts.
  RowMatrix<Scalar> forward(const RowMatrix<Scalar>& embeddings,
                            std::span<const GaussianPosition> positions, const PyramidMask& mask) {
    MC_EXPECTS(embeddings.rows() == mask.seq_len(), Errc::kInvalidArgument,
               "[mc.llama.bad_shape] ", embeddings.rows(), " rows for a pyramid mask over ",
               mask.seq_len(), " sequence positions");
    const std::vector<std::uint8_t> dense = mask.dense();
    return forward(embeddings, positions, dense.data());
  }

  /// dL/dembeddings [n, d] of the latest forward from dL/dlogits [n, V]; weights frozen.
  void backward_inputs(const Scalar* dlogits, std::int64_t n, Scalar* dembeddings) const {
    MC_EXPECTS(dembeddings != nullptr, Errc::kInvalidArgument,
               "[mc.llama.bad_shape] backward_inputs needs a non-null dembeddings");
    backward_impl(dlogits, n, dembeddings, nullptr);
  }

  /// Adds dL/dW of every weight to `grads` (shaped like the weights, e.g. LlamaWeights::zeros)
  /// from dL/dlogits [n, V] of the latest forward; writes dL/dembeddings [n, d] when
  /// `dembeddings` is not null. grads.embedding receives only the unembedding's share: add the
  /// input side's with embed_backward(ids, ...) when the embeddings came from embed().
  void backward(const Scalar* dlogits, std::int64_t n, Scalar* dembeddings,
                LlamaWeights<Scalar>& grads) const {
    backward_impl(dlogits, n, dembeddings, &grads);
  }

  /// backward() with an extra gradient `dhidden` [n, d] (null: none) on the final hidden state
  /// hf (the final RMSNorm's output, which the tied LM head reads): dL/dhf = dlogits · E +
  /// dhidden. MegaPrediction (mega_prediction.hpp) scores summary rows on hf itself. Adds to
  /// `*grads` when not null; writes dembeddings when not null.
  void backward_with_hidden(const Scalar* dlogits, const Scalar* dhidden, std::int64_t n,
                            Scalar* dembeddings, LlamaWeights<Scalar>* grads) const {
    backward_impl(dlogits, n, dembeddings, grads, dhidden);
  }

  /// Adds the tied embedding table's input-side gradient: row ids[i] of grads.embedding gets
  /// row i of `dembeddings` [n, d] (as returned by backward()).
  void embed_backward(const TokenId* ids, std::int64_t n, const Scalar* dembeddings,
                      LlamaWeights<Scalar>& grads) const {
    MC_EXPECTS(
        grads.embedding.rows() == options_.n_vocab && grads.embedding.cols() == options_.d_model,
        Errc::kInvalidArgument, "[mc.llama.bad_shape] grads.embedding is ", grads.embedding.rows(),
        " x ", grads.embedding.cols());
    const std::int64_t d = options_.d_model;
    for (std::int64_t i = 0; i < n; ++i) {
      MC_EXPECTS(ids[i] >= 0 && ids[i] < options_.n_vocab, Errc::kInvalidArgument,
                 "[mc.llama.bad_token] ids[", i, "] = ", ids[i], "; must be in [0, ",
                 options_.n_vocab, ")");
      grads.embedding.row(ids[i]) += Eigen::Map<const RowMatrix<Scalar>>(dembeddings + i * d, 1, d);
    }
  }

  /// Starts incremental decoding with room for `capacity` rows in every layer's KV cache
  /// (allocated here, once; decode_step never allocates cache memory).
  void begin_decode(std::int64_t capacity) {
    MC_EXPECTS(capacity >= 1, Errc::kInvalidArgument,
               "[mc.llama.bad_capacity] capacity = ", capacity, "; must be >= 1");
    k_cache_.assign(weights_.layers.size(), RowMatrix<Scalar>(capacity, options_.d_model));
    v_cache_.assign(weights_.layers.size(), RowMatrix<Scalar>(capacity, options_.d_model));
    num_decoded_ = 0;
  }

  /// Rows decoded since begin_decode().
  std::int64_t num_decoded() const { return num_decoded_; }

  /// Forgets every decoded row from `rows` on (keys and values of rows [0, rows) stay valid,
  /// since in a causal model they never depend on later rows). A runtime whose context changed
  /// from row `rows` on decodes only the changed rows again.
  void rewind_decode(std::int64_t rows) {
    MC_EXPECTS(rows >= 0 && rows <= num_decoded_, Errc::kInvalidArgument,
               "[mc.llama.bad_rewind] rewind_decode(", rows, ") with ", num_decoded_,
               " rows decoded; must be in [0, num_decoded()]");
    num_decoded_ = rows;
  }

  /// Appends one row, `embedding` [d] at `position`, attending every earlier row (causal), and
  /// writes its logits [V]: the same values as row num_decoded() of a causal forward over all
  /// rows so far, up to rounding.
  void decode_step(const Scalar* embedding, GaussianPosition position, Scalar* logits) {
    MC_EXPECTS(!k_cache_.empty() && num_decoded_ < k_cache_.front().rows(), Errc::kState,
               "[mc.llama.decode_full] decoded ", num_decoded_, " rows with capacity ",
               k_cache_.empty() ? 0 : k_cache_.front().rows(),
               "; call begin_decode(capacity) with room for every row");
    MC_EXPECTS(embedding != nullptr && logits != nullptr, Errc::kInvalidArgument,
               "[mc.llama.bad_shape] decode_step needs non-null embedding and logits");
    const std::int64_t d = options_.d_model;
    const int n_heads = static_cast<int>(options_.n_heads);
    const GaussianRopeTable table = gaussian_rope_table(&position, 1, options_.rope());
    RowMatrix<Scalar> x = Eigen::Map<const RowMatrix<Scalar>>(embedding, 1, d);
    RowMatrix<Scalar> xn, y, h;
    Vector<Scalar> rstd;
    SwiGluCache<Scalar> mlp;
    for (std::size_t l = 0; l < weights_.layers.size(); ++l) {
      const LlamaLayerWeights<Scalar>& w = weights_.layers[l];
      rmsnorm_forward(x, w.attn_norm, options_.norm_eps, xn, rstd);
      attention_decode(xn, w.attn, n_heads, table, k_cache_[l], v_cache_[l], num_decoded_, y);
      h = x + y;
      rmsnorm_forward(h, w.mlp_norm, options_.norm_eps, xn, rstd);
      swiglu_forward(xn, w.mlp, y, mlp);
      x = h + y;
    }
    rmsnorm_forward(x, weights_.final_norm, options_.norm_eps, xn, rstd);
    Eigen::Map<RowMatrix<Scalar>>(logits, 1, options_.n_vocab).noalias() =
        xn * weights_.embedding.transpose();
    ++num_decoded_;
  }

 private:
  // Throws [mc.llama.bad_weights] unless every tensor has the shape the options ask for.
  void check_matrix_shapes() const {
    const auto d = options_.d_model, f = options_.d_ff;
    auto expect = [](const auto& m, Eigen::Index r, Eigen::Index c, const char* what) {
      MC_EXPECTS(m.rows() == r && m.cols() == c, Errc::kInvalidArgument, "[mc.llama.bad_weights] ",
                 what, " is ", m.rows(), " x ", m.cols(), "; expected ", r, " x ", c);
    };
    expect(weights_.embedding, options_.n_vocab, d, "embedding");
    expect(weights_.final_norm, d, 1, "final_norm");
    for (const auto& l : weights_.layers) {
      expect(l.attn_norm, d, 1, "attn_norm");
      expect(l.mlp_norm, d, 1, "mlp_norm");
      expect(l.attn.wq, d, d, "attn.wq");
      expect(l.attn.wk, d, d, "attn.wk");
      expect(l.attn.wv, d, d, "attn.wv");
      expect(l.attn.wo, d, d, "attn.wo");
      expect(l.mlp.w1, d, f, "mlp.w1");
      expect(l.mlp.w3, d, f, "mlp.w3");
      expect(l.mlp.w2, f, d, "mlp.w2");
    }
  }

  void backward_impl(const Scalar* dlogits, std::int64_t n, Scalar* dembeddings,
                     LlamaWeights<Scalar>* grads, const Scalar* dhidden = nullptr) const {
    MC_EXPECTS(acts_.n >= 1, Errc::kState,
               "[mc.llama.no_forward] backward needs a completed forward first");
    MC_EXPECTS(n == acts_.n && dlogits != nullptr, Errc::kInvalidArgument,
               "[mc.llama.bad_shape] backward of n = ", n, " rows; the latest forward had ",
               acts_.n, " (and dlogits must be non-null)");
    const std::int64_t d = options_.d_model;
    const int n_heads = static_cast<int>(options_.n_heads);
    const Eigen::Map<const RowMatrix<Scalar>> dl(dlogits, n, options_.n_vocab);
    if (grads != nullptr) grads->embedding.noalias() += dl.transpose() * acts_.hf;
    RowMatrix<Scalar> dhf = dl * weights_.embedding;
    if (dhidden != nullptr) dhf += Eigen::Map<const RowMatrix<Scalar>>(dhidden, n, d);
    RowMatrix<Scalar> dx = RowMatrix<Scalar>::Zero(n, d);
    rmsnorm_backward(dhf, acts_.h_last, weights_.final_norm, acts_.rstd_f, dx,
                     grads != nullptr ? &grads->final_norm : nullptr);
    RowMatrix<Scalar> dh, dxn;
    for (std::size_t l = weights_.layers.size(); l-- > 0;) {
      const LlamaLayerWeights<Scalar>& w = weights_.layers[l];
      const LlamaLayerActivations<Scalar>& a = acts_.layers[l];
      LlamaLayerWeights<Scalar>* g = grads != nullptr ? &grads->layers[l] : nullptr;
      // out = h + mlp(norm(h)): the residual passes dx through unchanged.
      dh = dx;
      dxn.setZero(n, d);
      swiglu_backward(dx, a.xn2, w.mlp, a.mlp, dxn, g != nullptr ? &g->mlp : nullptr);
      rmsnorm_backward(dxn, a.h, w.mlp_norm, a.rstd2, dh, g != nullptr ? &g->mlp_norm : nullptr);
      // h = x + attn(norm(x)).
      dx = dh;
      dxn.setZero(n, d);
      attention_backward(dh, a.xn1, w.attn, n_heads, acts_.rope, a.attn, dxn,
                         g != nullptr ? &g->attn : nullptr);
      rmsnorm_backward(dxn, a.x, w.attn_norm, a.rstd1, dx, g != nullptr ? &g->attn_norm : nullptr);
    }
    if (dembeddings != nullptr) Eigen::Map<RowMatrix<Scalar>>(dembeddings, n, d) = dx;
  }

  LlamaOptions options_;
  LlamaWeights<Scalar> weights_;
  LlamaActivations<Scalar> acts_;
  std::vector<RowMatrix<Scalar>> k_cache_;
  std::vector<RowMatrix<Scalar>> v_cache_;
  std::int64_t num_decoded_ = 0;
};

static_assert(BaseModel<LlamaModel<float>> && BaseModel<LlamaModel<double>>,
              "LlamaModel must satisfy mc::BaseModel.");
static_assert(model_traits<LlamaModel<double>>::has_backward &&
                  model_traits<LlamaModel<double>>::has_decode,
              "LlamaModel must provide backward_inputs() and the KV-cache decode.");

}  // namespace mc::reference
