// SPDX-License-Identifier: Apache-2.0
// The plug-in point for the user's transformer: BaseModel is what MegaContext needs of a frozen
// model (embed token ids, run a forward over assembled embeddings with Gaussian-RoPE positions),
// and model_traits detects the optional capabilities (backward to the inputs for training GistNet,
// incremental decoding). Data flow: assemble() -> BaseModel::forward -> logits.
// docs/plug-in-your-model.md shows how to adapt a model; reference/llama.hpp is the shipped one.
#pragma once

#include <concepts>
#include <cstdint>

#include "megacontext/config.hpp"
#include "megacontext/detail/gaussian_rope_math.hpp"
#include "megacontext/error.hpp"

namespace mc {

/// The run-time sizes MegaContext reads from a model; validate() throws mc::Error on a bad one.
struct ModelDims {
  std::int64_t d_model = 0;  ///< embedding (residual stream) width d; >= 1
  std::int64_t n_vocab = 0;  ///< vocabulary size V (columns of the logits); >= 1

  /// Throws mc::Error (kInvalidArgument, [mc.model.bad_dims]) when a size is < 1.
  void validate() const {
    MC_EXPECTS(d_model >= 1, Errc::kInvalidArgument, "[mc.model.bad_dims] d_model = ", d_model,
               "; must be >= 1");
    MC_EXPECTS(n_vocab >= 1, Errc::kInvalidArgument, "[mc.model.bad_dims] n_vocab = ", n_vocab,
               "; must be >= 1");
  }

  /// Field-wise equality.
  friend bool operator==(const ModelDims&, const ModelDims&) = default;
};

/// What MegaContext needs of the user's (frozen) transformer M, all buffers row-major:
///  - `typename M::Scalar`: the element type of embeddings and logits;
///  - `m.dims()` -> ModelDims, and `m.dim()` == dims().d_model (so M is also a TokenEmbedder);
///  - `m.embed(ids, n, out)`: writes the input embeddings of `n` token ids to `out` [n, d];
///  - `m.forward(embeddings, positions, n, mask, logits)`: `embeddings` [n, d], `positions` [n]
///    (row i's Gaussian-RoPE mean position t and spread σ, in tokens), `mask` [n, n] bytes with
///    row = query and column = key, nonzero = may attend, or nullptr for causal by row order;
///    writes `logits` [n, V]. Rows are entries of a working context (tokens and gists).
template <class M>
concept BaseModel = requires(M& m, const M& cm, const TokenId* ids, std::int64_t n,
                             const typename M::Scalar* in, typename M::Scalar* out,
                             const GaussianPosition* positions, const std::uint8_t* mask) {
  typename M::Scalar;
  { cm.dims() } -> std::same_as<ModelDims>;
  { cm.dim() } -> std::convertible_to<std::int64_t>;
  m.embed(ids, n, out);
  m.forward(in, positions, n, mask, out);
};

/// A BaseModel that can send a gradient back to its inputs with its weights frozen:
/// `m.backward_inputs(dlogits, n, dembeddings)` takes dL/dlogits [n, V] of the latest forward
/// and writes dL/dembeddings [n, d]. This is what training GistNet (ΔNLL@H) needs.
template <class M>
concept TrainableBaseModel = BaseModel<M> &&
    requires(M& m, const typename M::Scalar* dlogits, std::int64_t n,
             typename M::Scalar* dembeddings) {
  m.backward_inputs(dlogits, n, dembeddings);
};

/// Optional capabilities of a model type, detected rather than required.
template <class M>
struct model_traits {
  /// True when M provides backward_inputs(dlogits [n, V], n, dembeddings [n, d]).
  static constexpr bool has_backward = TrainableBaseModel<M>;
  /// True when M decodes incrementally with a KV cache: begin_decode(capacity) and
  /// decode_step(embedding [d], position, logits [V]).
  static constexpr bool has_decode =
      requires(M & m, const typename M::Scalar* in, typename M::Scalar* out, GaussianPosition p,
               std::int64_t capacity) {
    m.begin_decode(capacity);
    m.decode_step(in, p, out);
  };
  /// True when M can return only the last row's logits of a causal forward:
  /// forward_last(embeddings [n, d], positions, n, logits [V]). A runtime that needs just the
  /// next token's logits then moves V values instead of n·V (the GPU model's case).
  static constexpr bool has_forward_last =
      requires(M & m, const typename M::Scalar* in, typename M::Scalar* out,
               const GaussianPosition* p, std::int64_t n) { m.forward_last(in, p, n, out); };
};

/// Compile-time check for inference entry points: fails with a sentence when M is not a model.
template <class M>
constexpr void expect_base_model() {
  static_assert(BaseModel<M>,
                "The model type must satisfy mc::BaseModel: provide `using Scalar`, dims(), dim(), "
                "embed(ids, n, out) and forward(embeddings, positions, n, mask, logits); see "
                "docs/plug-in-your-model.md.");
}

/// Compile-time check for training entry points: fails with a sentence when M has no backward.
template <class M>
constexpr void expect_trainable_model() {
  expect_base_model<M>();
  static_assert(model_traits<M>::has_backward,
                "The model must provide backward_inputs(dlogits, n, dembeddings) to train "
                "GistNet; see docs/plug-in-your-model.md.");
}

}  // namespace mc
