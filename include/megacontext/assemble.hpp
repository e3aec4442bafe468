// SPDX-License-Identifier: Apache-2.0
// Working-context assembly: what the model consumes. For every entry: its input embedding (the
// token's embedding for LOD0, the tree's gist otherwise), its Gaussian-RoPE position (t, σ), its
// width w = K^lod in tokens and its lod. assemble() builds all rows; assemble_patch() updates the
// rows of the previous assembly using the context's patch (moves + fresh ranges), the CPU model
// of how the GPU copy is kept current. Data flow: Tree + WorkingContext -> here -> BaseModel.
#pragma once

#include "megacontext/detail/eigen.hpp"

#include <cstdint>
#include <vector>

#include "megacontext/config.hpp"
#include "megacontext/detail/gaussian_rope_math.hpp"
#include "megacontext/error.hpp"
#include "megacontext/gister.hpp"
#include "megacontext/lod.hpp"
#include "megacontext/working_context.hpp"

namespace mc {

/// Position policy: t at the span's mean token position (a token keeps its own index). Default.
struct SpanCentre {
  /// Mean position and spread of entry `i` covering `s`.
  static GaussianPosition position(TokenSpan s, std::int64_t /*i*/, SpreadPolicy spread) {
    return {span_position(s.begin, s.size(), PositionPolicy::kSpanCentre), span_sigma(s.size(), spread)};
  }
  /// Whether a position depends on the entry's index in the context (then patches recompute all).
  static constexpr bool kDependsOnIndex = false;
};
/// Position policy: t at the span's first token.
struct SpanStart {
  /// See SpanCentre::position.
  static GaussianPosition position(TokenSpan s, std::int64_t /*i*/, SpreadPolicy spread) {
    return {span_position(s.begin, s.size(), PositionPolicy::kSpanStart), span_sigma(s.size(), spread)};
  }
  static constexpr bool kDependsOnIndex = false;
};
/// Position policy: t = the entry's index 0..W-1 in the context and σ = 0, as if every entry
/// were one token (what a model that never saw gists expects).
struct Compact {
  /// See SpanCentre::position.
  static GaussianPosition position(TokenSpan /*s*/, std::int64_t i, SpreadPolicy /*spread*/) {
    return {static_cast<double>(i), 0.0};
  }
  static constexpr bool kDependsOnIndex = true;
};

/// The model input for one working context; row i describes entry i.
template <class Scalar>
struct AssembledContext {
  RowMatrix<Scalar> embeddings;              ///< [W, d] input embeddings
  std::vector<GaussianPosition> positions;   ///< [W] mean position t and spread σ, in tokens
  std::vector<std::int64_t> width;           ///< [W] tokens covered, K^lod
  std::vector<std::int32_t> lod;             ///< [W] level of detail
};

/// Satisfied by objects that embed token ids: `e.dim()` and `e.embed(ids, n, out [n, dim])`
/// (a Gister's embed, or an adapter over a model's embedding table).
template <class E, class Scalar>
concept TokenEmbedder = requires(E& e, const TokenId* ids, std::int64_t n, Scalar* out) {
  { e.dim() } -> std::convertible_to<std::int64_t>;
  e.embed(ids, n, out);
};

namespace detail {

// Fills rows [b, e) of `out` from the context.
template <class Positions, class C, class TreeT, class E, class Scalar>
void assemble_rows(const WorkingContext<C>& wc, const TreeT& tree, E& embed,
                   AssembledContext<Scalar>& out, std::int64_t b, std::int64_t e,
                   SpreadPolicy spread) {
  const std::int64_t d = out.embeddings.cols();
  std::int64_t i = b;
  while (i < e) {
    const WcEntry& x = wc[i];
    if (x.lod == 0) {
      // A run of tokens: one embed call (contiguous ids in the tree, contiguous rows here).
      std::int64_t j = i + 1;
      while (j < e && wc[j].lod == 0 && wc[j].index == wc[j - 1].index + 1) ++j;
      const auto ids = tree.tokens(x.index, x.index + (j - i));
      embed.embed(ids.data(), j - i, out.embeddings.data() + i * d);
      for (std::int64_t k = i; k < j; ++k) {
        const TokenSpan s = Lod<C>::tokens(wc[k].node());
        out.positions[static_cast<std::size_t>(k)] = Positions::position(s, k, spread);
        out.width[static_cast<std::size_t>(k)] = 1;
        out.lod[static_cast<std::size_t>(k)] = 0;
      }
      i = j;
    } else {
      out.embeddings.row(i) = tree.gist(x.node());
      const TokenSpan s = Lod<C>::tokens(x.node());
      out.positions[static_cast<std::size_t>(i)] = Positions::position(s, i, spread);
      out.width[static_cast<std::size_t>(i)] = s.size();
      out.lod[static_cast<std::size_t>(i)] = x.lod;
      ++i;
    }
  }
}

}  // namespace detail

/// Builds every row of the model input for `wc` over `tree` (gists) and `embed` (tokens).
/// The tree must hold every node of the context (WorkingContext::validate(tree.num_tokens())).
template <class Positions = SpanCentre, class C, class TreeT, class E>
void assemble(const WorkingContext<C>& wc, const TreeT& tree, E& embed,
              AssembledContext<typename TreeT::Scalar>& out,
              SpreadPolicy spread = SpreadPolicy::kUniformSpan) {
  using Scalar = typename TreeT::Scalar;
  static_assert(TokenEmbedder<E, Scalar>, "assemble: `embed` must provide dim() and embed(ids, n, out)");
  MC_EXPECTS(static_cast<std::int64_t>(embed.dim()) == tree.dim() || tree.dim() == 0,
             Errc::kInvalidArgument, "[mc.assemble.dim_mismatch] embedder dim = ", embed.dim(),
             ", tree gists have dim = ", tree.dim());
  MC_EXPECTS(wc.num_tokens() <= tree.num_tokens(), Errc::kInvalidArgument,
             "[mc.assemble.tree_behind] the context covers ", wc.num_tokens(),
             " tokens, the tree holds ", tree.num_tokens());
  const std::int64_t n = wc.size(), d = embed.dim();
  out.embeddings.resize(n, d);
  out.positions.resize(static_cast<std::size_t>(n));
  out.width.resize(static_cast<std::size_t>(n));
  out.lod.resize(static_cast<std::size_t>(n));
  detail::assemble_rows<Positions>(wc, tree, embed, out, 0, n, spread);
}

/// Brings `out`, assembled for the context as it was at wc.begin_patch(), up to date: rows of
/// unchanged entries are moved (no embedding or gist read), only fresh entries are assembled.
template <class Positions = SpanCentre, class C, class TreeT, class E>
void assemble_patch(const WorkingContext<C>& wc, const TreeT& tree, E& embed,
                    AssembledContext<typename TreeT::Scalar>& out,
                    SpreadPolicy spread = SpreadPolicy::kUniformSpan) {
  using Scalar = typename TreeT::Scalar;
  const WcPatch p = wc.patch();
  MC_EXPECTS(out.embeddings.rows() == p.old_size, Errc::kInvalidArgument,
             "[mc.assemble.stale_patch] `out` has ", out.embeddings.rows(),
             " rows but the patch starts from ", p.old_size, " entries");
  AssembledContext<Scalar> next;
  next.embeddings.resize(p.new_size, out.embeddings.cols());
  next.positions.resize(static_cast<std::size_t>(p.new_size));
  next.width.resize(static_cast<std::size_t>(p.new_size));
  next.lod.resize(static_cast<std::size_t>(p.new_size));
  for (const auto& m : p.moves) {
    next.embeddings.middleRows(m.new_begin, m.count) = out.embeddings.middleRows(m.old_begin, m.count);
    for (std::int64_t k = 0; k < m.count; ++k) {
      const auto o = static_cast<std::size_t>(m.old_begin + k), q = static_cast<std::size_t>(m.new_begin + k);
      next.positions[q] = out.positions[o];
      next.width[q] = out.width[o];
      next.lod[q] = out.lod[o];
    }
  }
  for (const auto& f : p.fresh) detail::assemble_rows<Positions>(wc, tree, embed, next, f.begin, f.end, spread);
  if constexpr (Positions::kDependsOnIndex) {
    for (std::int64_t i = 0; i < p.new_size; ++i)
      next.positions[static_cast<std::size_t>(i)] = Positions::position(Lod<C>::tokens(wc[i].node()), i, spread);
  }
  out = std::move(next);
}

}  // namespace mc
