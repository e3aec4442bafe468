// SPDX-License-Identifier: Apache-2.0
// Counterfactual targets for LensNet: for entries of a working context, how much the NLL of the
// upcoming tokens changes when that entry is expanded (a gist shown as its K children) or its
// sibling group collapsed. These gains are what LensNet's scores should rank; regression and
// pairwise losses on them live in lens_net.hpp. Also Spearman's ρ, the metric of that ranking.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <span>
#include <vector>

#include "megacontext/assemble.hpp"
#include "megacontext/error.hpp"
#include "megacontext/model.hpp"
#include "megacontext/reference/cross_entropy.hpp"
#include "megacontext/working_context.hpp"

namespace mc {

/// Mean NLL (nats) of `upcoming` [H] when the model reads the assembled context and then
/// upcoming[0..H−1) at token positions first_position, first_position + 1, …: the context's last
/// row predicts upcoming[0], each upcoming row the token after it.
template <class M>
double context_nll(M& model, const AssembledContext<typename M::Scalar>& ctx,
                   std::span<const TokenId> upcoming, std::int64_t first_position) {
  using Scalar = typename M::Scalar;
  const std::int64_t w = ctx.embeddings.rows(), h = static_cast<std::int64_t>(upcoming.size());
  MC_EXPECTS(w >= 1 && h >= 1, Errc::kInvalidArgument, "[mc.lens_targets.bad_shape] context of ",
             w, " rows and ", h, " upcoming tokens");
  const std::int64_t n = w + h - 1, d = model.dim();
  RowMatrix<Scalar> emb(n, d);
  emb.topRows(w) = ctx.embeddings;
  if (h > 1) model.embed(upcoming.data(), h - 1, emb.data() + w * d);
  std::vector<GaussianPosition> pos(ctx.positions);
  for (std::int64_t i = 0; i + 1 < h; ++i) pos.push_back({static_cast<double>(first_position + i), 0.0});
  std::vector<TokenId> targets(static_cast<std::size_t>(n), reference::kIgnoreTarget);
  for (std::int64_t i = 0; i < h; ++i) targets[static_cast<std::size_t>(w - 1 + i)] = upcoming[static_cast<std::size_t>(i)];
  RowMatrix<Scalar> logits(n, model.dims().n_vocab);
  model.forward(emb.data(), pos.data(), n, nullptr, logits.data());
  return reference::cross_entropy<Scalar>(logits, targets.data(), nullptr);
}

/// One counterfactual: NLL(current) − NLL(with the edit); > 0 means the edit helps.
struct FocusGain {
  std::int64_t entry = 0;  ///< entry position (first sibling for a collapse)
  FocusEdit::Kind kind = FocusEdit::kExpand;  ///< which edit
  double gain = 0;         ///< nats per upcoming token saved by the edit
};

/// Expansion gains of every gist entry and collapse gains of every collapsible group of `wc`
/// (budget ignored: these are what-ifs), scored on `upcoming`, which follows the history
/// (upcoming[0] is token wc.num_tokens()).
template <class C, class TreeT, class M>
std::vector<FocusGain> focus_gains(const WorkingContext<C>& wc, const TreeT& tree, M& model,
                                   std::span<const TokenId> upcoming) {
  AssembledContext<typename M::Scalar> ctx;
  assemble(wc, tree, model, ctx);
  const double base = context_nll(model, ctx, upcoming, wc.num_tokens());
  std::vector<FocusGain> gains;
  for (std::int64_t i = 0; i < wc.size(); ++i) {
    for (const auto kind : {FocusEdit::kExpand, FocusEdit::kCollapse}) {
      const bool ok = kind == FocusEdit::kExpand ? wc.can_expand(i) : wc.can_collapse(i);
      if (!ok) continue;
      WorkingContext<C> what_if = wc;  // edits do not check the budget; validate() would
      const FocusEdit e{kind, i};
      what_if.apply(std::span(&e, 1), 0);
      assemble(what_if, tree, model, ctx);
      gains.push_back({i, kind, base - context_nll(model, ctx, upcoming, wc.num_tokens())});
    }
  }
  return gains;
}

/// Spearman's rank correlation of x and y (average ranks for ties); in [−1, 1].
inline double spearman(std::span<const double> x, std::span<const double> y) {
  MC_EXPECTS(x.size() == y.size() && x.size() >= 2, Errc::kInvalidArgument,
             "[mc.lens_targets.bad_shape] spearman of ", x.size(), " and ", y.size(), " values");
  const auto ranks = [](std::span<const double> v) {
    std::vector<std::size_t> order(v.size());
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return v[a] < v[b]; });
    std::vector<double> r(v.size());
    for (std::size_t i = 0; i < order.size();) {
      std::size_t j = i;
      while (j + 1 < order.size() && v[order[j + 1]] == v[order[i]]) ++j;
      for (std::size_t k = i; k <= j; ++k) r[order[k]] = 0.5 * static_cast<double>(i + j);
      i = j + 1;
    }
    return r;
  };
  const auto rx = ranks(x), ry = ranks(y);
  const double n = static_cast<double>(x.size());
  const double mx = std::accumulate(rx.begin(), rx.end(), 0.0) / n;
  const double my = std::accumulate(ry.begin(), ry.end(), 0.0) / n;
  double sxy = 0, sxx = 0, syy = 0;
  for (std::size_t i = 0; i < rx.size(); ++i) {
    sxy += (rx[i] - mx) * (ry[i] - my);
    sxx += (rx[i] - mx) * (rx[i] - mx);
    syy += (ry[i] - my) * (ry[i] - my);
  }
  return sxx > 0 && syy > 0 ? sxy / std::sqrt(sxx * syy) : 0.0;
}

}  // namespace mc
