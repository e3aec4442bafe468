// SPDX-License-Identifier: Apache-2.0
// MegaAttention's multi-level forward on the CPU (seed 002, issue #9): the working context's N
// wLOD0 rows, gists of every complete block of K rows (wLOD1 over wLOD0, wLOD2 over wLOD1, ...)
// laid out level by level, their Gaussian-RoPE positions (span centre, σ from the span width) and
// the pyramid mask over that layout, all run through the reference decoder at once; backward
// reaches the wLOD0 rows and the gister's weights. Data flow: WorkingContext::assemble -> here ->
// decoder -> MegaPrediction losses (mega_prediction.hpp). Page: docs/concepts/mega_attention.md.
#pragma once

#include <algorithm>
#include <concepts>
#include <cstdint>
#include <span>
#include <utility>
#include <vector>

#include "megacontext/detail/eigen.hpp"
#include "megacontext/error.hpp"
#include "megacontext/gaussian_rope.hpp"
#include "megacontext/gister.hpp"
#include "megacontext/lod.hpp"
#include "megacontext/pyramid_mask.hpp"
#include "megacontext/reference/attention.hpp"
#include "megacontext/reference/llama.hpp"
#include "megacontext/reference/rmsnorm.hpp"
#include "megacontext/reference/swiglu.hpp"

namespace mc {

/// Run-time options of the multi-level sequence; validate() throws mc::Error naming a bad field.
struct MegaAttentionOptions {
  PyramidMaskOptions mask;  ///< r (= the gister's K), W, summary levels L, causality, globals
  PositionPolicy position = PositionPolicy::kSpanCentre;  ///< where t sits in a row's span
  SpreadPolicy spread = SpreadPolicy::kUniformSpan;       ///< σ from the span width

  /// Throws mc::Error (kInvalidArgument): the mask's tags, or [mc.mega_attention.bad_policy].
  void validate() const {
    mask.validate();
    MC_EXPECTS(position == PositionPolicy::kSpanCentre || position == PositionPolicy::kSpanStart,
               Errc::kInvalidArgument,
               "[mc.mega_attention.bad_policy] position policy = ", static_cast<int>(position),
               "; must be kSpanCentre (0) or kSpanStart (1)");
    MC_EXPECTS(spread == SpreadPolicy::kUniformSpan || spread == SpreadPolicy::kWidth,
               Errc::kInvalidArgument,
               "[mc.mega_attention.bad_policy] spread policy = ", static_cast<int>(spread),
               "; must be kUniformSpan (0) or kWidth (1)");
  }
};

/// Spans of `n` plain tokens at positions first, first + 1, ...: row i covers [first + i,
/// first + i + 1).
inline std::vector<TokenSpan> token_spans(std::int64_t n, std::int64_t first = 0) {
  MC_EXPECTS(n >= 0 && first >= 0, Errc::kInvalidArgument, "[mc.mega_attention.bad_spans] n = ", n,
             ", first = ", first, "; both must be >= 0");
  std::vector<TokenSpan> s(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) s[static_cast<std::size_t>(i)] = {first + i, first + i + 1};
  return s;
}

/// The multi-level sequence of one working context: every level's rows, contiguous by level
/// (all wLOD0, then wLOD1, ...), as PyramidLayout places them.
template <class Scalar>
struct MegaSequence {
  PyramidLayout layout;                     ///< where each level lies; S = layout.seq_len()
  RowMatrix<Scalar> embeddings;             ///< [S, d] leaves, then the gists of each level
  std::vector<TokenSpan> spans;             ///< [S] tokens each row covers
  std::vector<GaussianPosition> positions;  ///< [S] (t, σ) of each row, in tokens

  /// S, the number of rows.
  std::int32_t seq_len() const { return layout.seq_len(); }
  /// The rows of `level` (in [0, L]): [level_size, d].
  auto level_rows(std::int32_t level) const {
    return embeddings.middleRows(layout.level_offset(level), layout.level_size(level));
  }
};

/// Anything that turns n blocks of K rows into n gists of level `lod`: `g.gist(lod, in, n, out)`
/// (a Gister: MeanPoolGister, GistNetGister), `g.forward(lod, in, n, out)` (GistNet), or a
/// callable `g(lod, in, n, out)`; `in` is [n·K, d], `out` [n, d], row-major.
template <class G, class Scalar>
concept LevelGister = requires(G& g, int lod, const Scalar* in, std::int64_t n, Scalar* out) {
  g.gist(lod, in, n, out);
}
|| requires(G& g, int lod, const Scalar* in, std::int64_t n, Scalar* out) {
  g.forward(lod, in, n, out);
}
|| std::invocable<G&, int, const Scalar*, std::int64_t, Scalar*>;

/// A gister that can be trained through: `forward(lod, in, n, out)` keeping its activations and
/// `backward(dgists, n, dinputs, grads*)` from them (GistNet, with grads a GistNetWeights).
template <class G, class Scalar, class Grads>
concept TrainableLevelGister = requires(G& g, int lod, const Scalar* in, std::int64_t n,
                                        Scalar* out, Grads* grads) {
  g.forward(lod, in, n, out);
  g.backward(in, n, out, grads);
};

namespace detail {

template <class Scalar, class G>
void run_gister(G& g, int lod, const Scalar* in, std::int64_t n, Scalar* out) {
  if constexpr (requires { g.gist(lod, in, n, out); }) {
    g.gist(lod, in, n, out);
  } else if constexpr (requires { g.forward(lod, in, n, out); }) {
    g.forward(lod, in, n, out);
  } else {
    g(lod, in, n, out);
  }
}

// Throws unless `spans` [n] are non-empty and tile one stretch of time in order.
inline void check_leaf_spans(std::span<const TokenSpan> spans, std::int64_t n) {
  MC_EXPECTS(static_cast<std::int64_t>(spans.size()) == n, Errc::kInvalidArgument,
             "[mc.mega_attention.bad_spans] ", spans.size(), " spans for ", n, " leaves");
  for (std::int64_t i = 0; i < n; ++i) {
    const TokenSpan s = spans[static_cast<std::size_t>(i)];
    MC_EXPECTS(s.begin >= 0 && s.size() >= 1, Errc::kInvalidArgument,
               "[mc.mega_attention.bad_spans] spans[", i, "] = [", s.begin, ", ", s.end,
               "); must start at >= 0 and cover at least one token");
    MC_EXPECTS(i == 0 || spans[static_cast<std::size_t>(i - 1)].end == s.begin,
               Errc::kInvalidArgument, "[mc.mega_attention.bad_spans] spans[", i, "] starts at ",
               s.begin, " but spans[", i - 1, "] ends at ",
               spans[static_cast<std::size_t>(i - 1)].end,
               "; the leaves must tile time in order (a working context has no gaps)");
  }
}

/// The reference decoder's backward with an extra gradient `dhidden` on the final hidden state
/// (LlamaModel::backward_with_hidden), on Eigen matrices with MegaAttention's shape checks.
/// Writes dembeddings [n, d]; adds weight gradients to `*grads` when not null.
template <class Scalar>
void decoder_backward(const reference::LlamaModel<Scalar>& model, const RowMatrix<Scalar>& dlogits,
                      const RowMatrix<Scalar>* dhidden, RowMatrix<Scalar>& dembeddings,
                      reference::LlamaWeights<Scalar>* grads) {
  const auto& o = model.options();
  const std::int64_t n = model.activations().n, d = o.d_model;
  MC_EXPECTS(n >= 1, Errc::kState,
             "[mc.mega_attention.no_forward] backward needs a completed decoder forward first");
  MC_EXPECTS(dlogits.rows() == n && dlogits.cols() == o.n_vocab &&
                 (dhidden == nullptr || (dhidden->rows() == n && dhidden->cols() == d)),
             Errc::kInvalidArgument, "[mc.mega_attention.bad_shape] dlogits ", dlogits.rows(),
             " x ", dlogits.cols(), ", dhidden ", dhidden ? dhidden->rows() : 0, " x ",
             dhidden ? dhidden->cols() : 0, "; the decoder's latest forward had ", n,
             " rows (V = ", o.n_vocab, ", d = ", d, ")");
  dembeddings.resize(n, d);
  model.backward_with_hidden(dlogits.data(), dhidden != nullptr ? dhidden->data() : nullptr, n,
                             dembeddings.data(), grads);
}

}  // namespace detail

/// Builds the multi-level sequence of `leaves` [N, d] covering `spans` [N] (tiling time in
/// order; token_spans(N) for plain tokens): level l >= 1 holds one gist per complete block of r
/// level-(l−1) rows, gisted by `gister` (lod = l) in one batch per level; each row's span is the
/// union of its children's, its position (t, σ) = gaussian_position(span) under the options'
/// policies. Throws [mc.mega_attention.k_mismatch] when the gister's K differs from mask.r.
template <class Scalar, class G>
requires LevelGister<G, Scalar> MegaSequence<Scalar> build_mega_sequence(
    const RowMatrix<Scalar>& leaves, std::span<const TokenSpan> spans,
    const MegaAttentionOptions& options, G& gister) {
  options.validate();
  const std::int64_t n = leaves.rows(), d = leaves.cols();
  MC_EXPECTS(n >= 1 && d >= 1, Errc::kInvalidArgument, "[mc.mega_attention.bad_shape] leaves ", n,
             " x ", d, "; need at least one row and one column");
  if constexpr (requires { G::K; }) {
    MC_EXPECTS(G::K == options.mask.r, Errc::kInvalidArgument,
               "[mc.mega_attention.k_mismatch] the gister builds gists of K = ", G::K,
               " children but mask.r = ", options.mask.r);
  }
  detail::check_leaf_spans(spans, n);
  MegaSequence<Scalar> seq;
  seq.layout = PyramidLayout(n, options.mask.r, options.mask.num_levels);
  const PyramidLayout& lay = seq.layout;
  const std::int64_t s = lay.seq_len(), r = options.mask.r;
  seq.embeddings.resize(s, d);
  seq.embeddings.topRows(n) = leaves;
  seq.spans.resize(static_cast<std::size_t>(s));
  std::copy(spans.begin(), spans.end(), seq.spans.begin());
  for (std::int32_t l = 1; l <= lay.num_levels(); ++l) {
    const std::int64_t m = lay.level_size(l);
    if (m == 0) break;  // every higher level is empty too
    const std::int64_t in = lay.level_offset(l - 1), out = lay.level_offset(l);
    // Level l−1's rows are contiguous and its first m·r rows are the complete blocks.
    detail::run_gister<Scalar>(gister, l, seq.embeddings.row(in).data(), m,
                               seq.embeddings.row(out).data());
    for (std::int64_t q = 0; q < m; ++q)
      seq.spans[static_cast<std::size_t>(out + q)] = {
          seq.spans[static_cast<std::size_t>(in + q * r)].begin,
          seq.spans[static_cast<std::size_t>(in + q * r + r - 1)].end};
  }
  GaussianRopeOptions rope;  // only the policies matter for positions
  rope.position = options.position;
  rope.spread = options.spread;
  seq.positions.resize(static_cast<std::size_t>(s));
  for (std::int64_t i = 0; i < s; ++i)
    seq.positions[static_cast<std::size_t>(i)] =
        gaussian_position(seq.spans[static_cast<std::size_t>(i)], rope);
  return seq;
}

/// The multi-level forward and backward of working contexts of N leaves through the reference
/// decoder: builds the sequence with a gister, runs the decoder over all S rows under the
/// pyramid mask (dense [S, S] reference, built once), and back-propagates from dL/dlogits and
/// dL/dhidden to the leaves, the decoder's weights and the gister's weights. Keeps the latest
/// sequence for backward(). CPU reference: S <= 8192 (the dense mask's limit).
template <class Scalar>
class MegaAttention {
 public:
  /// Validates `options` and builds the pyramid mask of `num_leaves` leaves.
  MegaAttention(MegaAttentionOptions options, std::int64_t num_leaves)
      : options_(validated(std::move(options))),
        mask_(options_.mask, num_leaves),
        dense_(mask_.dense()) {}

  /// The validated options.
  const MegaAttentionOptions& options() const { return options_; }
  /// The pyramid mask over the sequence.
  const PyramidMask& mask() const { return mask_; }
  /// Its dense form, row-major [S, S] bytes, as the reference decoder reads it.
  const std::vector<std::uint8_t>& dense_mask() const { return dense_; }
  /// N, the leaves per working context.
  std::int32_t num_leaves() const { return mask_.layout().num_leaves(); }
  /// S, rows of the sequence (all levels).
  std::int32_t seq_len() const { return mask_.seq_len(); }
  /// The sequence of the latest forward (embeddings, spans, positions).
  const MegaSequence<Scalar>& sequence() const { return seq_; }

  /// The multi-level forward: builds the sequence of `leaves` [N, d] over `spans` [N] with
  /// `gister` and returns the decoder's logits [S, V] under the pyramid mask. The final hidden
  /// states are model.activations().hf [S, d]; rows are laid out as sequence().layout says.
  template <class G>
  requires LevelGister<G, Scalar> RowMatrix<Scalar> forward(reference::LlamaModel<Scalar>& model,
                                                            G& gister,
                                                            const RowMatrix<Scalar>& leaves,
                                                            std::span<const TokenSpan> spans) {
    MC_EXPECTS(leaves.rows() == num_leaves(), Errc::kInvalidArgument,
               "[mc.mega_attention.bad_shape] ", leaves.rows(),
               " leaves for a MegaAttention of N = ", num_leaves());
    seq_ = build_mega_sequence(leaves, spans, options_, gister);
    top_level_ = 0;
    for (std::int32_t l = 1; l <= seq_.layout.num_levels(); ++l)
      if (seq_.layout.level_size(l) > 0) top_level_ = l;
    gister_level_ = top_level_;
    return model.forward(seq_.embeddings, seq_.positions, dense_.data());
  }

  /// From dL/dlogits [S, V], dL/dhidden [S, d] (on the final hidden states hf; may be null) and
  /// dL/dsequence [S, d] (on the sequence rows directly, e.g. gist targets; may be null) of the
  /// latest forward: writes dL/dleaves [N, d] when `dleaves` is not null and adds the decoder's
  /// and the gister's weight gradients when `model_grads` / `gister_grads` are not null. The
  /// gradient of a gist row flows into its K children through `gister.backward`, level by level
  /// from the top; levels below the top one are recomputed first, since a gister keeps only its
  /// latest forward's activations. `model` and `gister` must be those of the forward.
  template <class G, class Grads>
  requires TrainableLevelGister<G, Scalar, Grads>
  void backward(const reference::LlamaModel<Scalar>& model, G& gister,
                const RowMatrix<Scalar>& dlogits, const RowMatrix<Scalar>* dhidden,
                const RowMatrix<Scalar>* dsequence, RowMatrix<Scalar>* dleaves,
                reference::LlamaWeights<Scalar>* model_grads, Grads* gister_grads) {
    const std::int64_t s = seq_len();
    MC_EXPECTS(seq_.embeddings.rows() == s && model.activations().n == s, Errc::kState,
               "[mc.mega_attention.no_forward] backward needs this object's forward first (the "
               "decoder's latest forward has ",
               model.activations().n, " rows, S = ", s, ")");
    MC_EXPECTS(dsequence == nullptr ||
                   (dsequence->rows() == s && dsequence->cols() == seq_.embeddings.cols()),
               Errc::kInvalidArgument, "[mc.mega_attention.bad_shape] dsequence is ",
               dsequence ? dsequence->rows() : 0, " x ", dsequence ? dsequence->cols() : 0,
               "; need [S = ", s, ", d]");
    RowMatrix<Scalar> dseq;
    detail::decoder_backward(model, dlogits, dhidden, dseq, model_grads);
    if (dsequence != nullptr) dseq += *dsequence;
    const PyramidLayout& lay = seq_.layout;
    const std::int64_t r = options_.mask.r, d = seq_.embeddings.cols();
    RowMatrix<Scalar> gists, dchildren;
    for (std::int32_t l = top_level_; l >= 1; --l) {
      const std::int64_t m = lay.level_size(l);
      const std::int64_t in = lay.level_offset(l - 1), out = lay.level_offset(l);
      if (l != gister_level_) {  // the gister's activations are those of another level
        gists.resize(m, d);
        gister.forward(l, seq_.embeddings.row(in).data(), m, gists.data());
        gister_level_ = l;
      }
      const RowMatrix<Scalar> dg = dseq.middleRows(out, m);
      dchildren.resize(m * r, d);
      gister.backward(dg.data(), m, dchildren.data(), gister_grads);
      dseq.middleRows(in, m * r) += dchildren;
    }
    if (dleaves != nullptr) *dleaves = dseq.topRows(num_leaves());
  }

 private:
  static MegaAttentionOptions validated(MegaAttentionOptions o) {
    o.validate();
    return o;
  }

  MegaAttentionOptions options_;
  PyramidMask mask_;
  std::vector<std::uint8_t> dense_;
  MegaSequence<Scalar> seq_;
  std::int32_t top_level_ = 0;     // highest non-empty summary level of the latest forward
  std::int32_t gister_level_ = 0;  // level whose activations the gister holds now
};

}  // namespace mc
