// SPDX-License-Identifier: Apache-2.0
// ΔNLL@H, the substitutability of a gist: for a span of K tokens inside a window, the mean NLL of
// the next H tokens with the span replaced by one gist row, minus the same with the span in
// full. One implementation is both the metric and GistNet's loss: gist_nll() also returns
// dNLL/dgist through the frozen model (backward_inputs), and the same code scores the
// baselines (mean pooling, dropping the span, keeping only its first token).
//
// Layout (tokens x, span [b, b+K), targets x[b+K .. b+K+H)):
//   full:  rows x[0..b+K+H−1) at t = row, σ = 0; rows b+K−1 .. b+K+H−2 predict the targets
//   gist:  rows x[0..b), one gist row at the span's (t, σ), then x[b+K .. b+K+H−1) at their own
//          t; the gist row predicts x[b+K], each continuation row the token after it
//   drop:  x[0..b) then the continuation (needs b >= 1): row b−1 predicts x[b+K]
//   first: the span's first token alone at t = b in place of the span
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "megacontext/detail/gaussian_rope_math.hpp"
#include "megacontext/error.hpp"
#include "megacontext/model.hpp"
#include "megacontext/reference/cross_entropy.hpp"

namespace mc {

/// Where the span and the horizon sit in a token window.
struct DeltaNllSpan {
  std::int64_t begin = 0;     ///< first token of the span (b)
  std::int64_t k = 32;        ///< tokens in the span (K)
  std::int64_t horizon = 64;  ///< tokens scored after the span (H)
};

namespace detail {

inline void check_delta_span(std::int64_t n_ids, const DeltaNllSpan& s) {
  MC_EXPECTS(s.begin >= 0 && s.k >= 1 && s.horizon >= 1 && s.begin + s.k + s.horizon <= n_ids,
             Errc::kInvalidArgument, "[mc.delta_nll.bad_span] span [", s.begin, ", ",
             s.begin + s.k, ") with horizon ", s.horizon, " does not fit a window of ", n_ids,
             " tokens");
}

// Runs the model on rows (embeddings + positions) and scores `targets` (kIgnoreTarget where a
// row predicts nothing); when `dembeddings` is set, backpropagates to the inputs.
template <class M>
double score_rows(M& model, const RowMatrix<typename M::Scalar>& emb,
                  const std::vector<GaussianPosition>& pos, const std::vector<TokenId>& targets,
                  RowMatrix<typename M::Scalar>* dembeddings) {
  using Scalar = typename M::Scalar;
  const std::int64_t n = emb.rows();
  RowMatrix<Scalar> logits(n, model.dims().n_vocab), dlogits;
  model.forward(emb.data(), pos.data(), n, nullptr, logits.data());
  const double nll =
      reference::cross_entropy<Scalar>(logits, targets.data(), dembeddings ? &dlogits : nullptr);
  if (dembeddings) {
    dembeddings->resize(n, emb.cols());
    model.backward_inputs(dlogits.data(), n, dembeddings->data());
  }
  return nll;
}

}  // namespace detail

/// Mean NLL (nats) of the H tokens after the span with every token present.
template <class M>
double full_nll(M& model, std::span<const TokenId> ids, const DeltaNllSpan& s) {
  expect_base_model<M>();
  detail::check_delta_span(static_cast<std::int64_t>(ids.size()), s);
  const std::int64_t n = s.begin + s.k + s.horizon - 1;  // rows; the last target has no row after
  RowMatrix<typename M::Scalar> emb(n, model.dim());
  model.embed(ids.data(), n, emb.data());
  std::vector<GaussianPosition> pos(static_cast<std::size_t>(n));
  std::vector<TokenId> targets(static_cast<std::size_t>(n), reference::kIgnoreTarget);
  for (std::int64_t i = 0; i < n; ++i) pos[static_cast<std::size_t>(i)] = {static_cast<double>(i), 0.0};
  for (std::int64_t i = s.begin + s.k - 1; i < n; ++i)
    targets[static_cast<std::size_t>(i)] = ids[static_cast<std::size_t>(i + 1)];
  return detail::score_rows(model, emb, pos, targets, nullptr);
}

/// Mean NLL of the H tokens after the span with the span replaced by `gist` [d] at the span's
/// Gaussian position (t at the centre, σ by `spread`). When `dgist` is not null it receives
/// dNLL/dgist [d] (needs a model with backward_inputs).
template <class M>
double gist_nll(M& model, std::span<const TokenId> ids, const DeltaNllSpan& s,
                const typename M::Scalar* gist, typename M::Scalar* dgist = nullptr,
                SpreadPolicy spread = SpreadPolicy::kUniformSpan) {
  expect_base_model<M>();
  detail::check_delta_span(static_cast<std::int64_t>(ids.size()), s);
  const std::int64_t d = model.dim(), b = s.begin, cont = s.horizon - 1;
  const std::int64_t n = b + 1 + cont;
  RowMatrix<typename M::Scalar> emb(n, d), demb;
  if (b > 0) model.embed(ids.data(), b, emb.data());
  for (std::int64_t j = 0; j < d; ++j) emb(b, j) = gist[j];
  if (cont > 0) model.embed(ids.data() + b + s.k, cont, emb.data() + (b + 1) * d);
  std::vector<GaussianPosition> pos(static_cast<std::size_t>(n));
  std::vector<TokenId> targets(static_cast<std::size_t>(n), reference::kIgnoreTarget);
  for (std::int64_t i = 0; i < b; ++i) pos[static_cast<std::size_t>(i)] = {static_cast<double>(i), 0.0};
  pos[static_cast<std::size_t>(b)] = {span_position(b, s.k, PositionPolicy::kSpanCentre),
                                      span_sigma(s.k, spread)};
  for (std::int64_t i = 0; i < cont; ++i)
    pos[static_cast<std::size_t>(b + 1 + i)] = {static_cast<double>(b + s.k + i), 0.0};
  for (std::int64_t i = b; i < n; ++i)
    targets[static_cast<std::size_t>(i)] = ids[static_cast<std::size_t>(i + s.k)];
  if (dgist) {
    if constexpr (model_traits<M>::has_backward) {
      const double nll = detail::score_rows(model, emb, pos, targets, &demb);
      for (std::int64_t j = 0; j < d; ++j) dgist[j] = demb(b, j);
      return nll;
    } else {
      throw Error(Errc::kInvalidArgument,
                  "[mc.delta_nll.no_backward] dgist needs a model with backward_inputs()");
    }
  }
  return detail::score_rows(model, emb, pos, targets, nullptr);
}

/// Mean NLL of the H tokens after the span with the span removed (positions keep their gap).
template <class M>
double drop_nll(M& model, std::span<const TokenId> ids, const DeltaNllSpan& s) {
  detail::check_delta_span(static_cast<std::int64_t>(ids.size()), s);
  MC_EXPECTS(s.begin >= 1, Errc::kInvalidArgument,
             "[mc.delta_nll.bad_span] dropping a span needs at least one token before it (begin = ",
             s.begin, ")");
  const std::int64_t d = model.dim(), b = s.begin, cont = s.horizon - 1, n = b + cont;
  RowMatrix<typename M::Scalar> emb(n, d);
  model.embed(ids.data(), b, emb.data());
  if (cont > 0) model.embed(ids.data() + b + s.k, cont, emb.data() + b * d);
  std::vector<GaussianPosition> pos(static_cast<std::size_t>(n));
  std::vector<TokenId> targets(static_cast<std::size_t>(n), reference::kIgnoreTarget);
  for (std::int64_t i = 0; i < b; ++i) pos[static_cast<std::size_t>(i)] = {static_cast<double>(i), 0.0};
  for (std::int64_t i = 0; i < cont; ++i)
    pos[static_cast<std::size_t>(b + i)] = {static_cast<double>(b + s.k + i), 0.0};
  for (std::int64_t i = b - 1; i < n; ++i)
    targets[static_cast<std::size_t>(i)] = ids[static_cast<std::size_t>(i + 1 + s.k)];
  return detail::score_rows(model, emb, pos, targets, nullptr);
}

/// Mean NLL of the H tokens after the span with the span reduced to its first token (at t = b).
template <class M>
double first_token_nll(M& model, std::span<const TokenId> ids, const DeltaNllSpan& s) {
  detail::check_delta_span(static_cast<std::int64_t>(ids.size()), s);
  const std::int64_t d = model.dim(), b = s.begin, cont = s.horizon - 1, n = b + 1 + cont;
  RowMatrix<typename M::Scalar> emb(n, d);
  model.embed(ids.data(), b + 1, emb.data());  // the prefix and the span's first token, at t = b
  if (cont > 0) model.embed(ids.data() + b + s.k, cont, emb.data() + (b + 1) * d);
  std::vector<GaussianPosition> pos(static_cast<std::size_t>(n));
  std::vector<TokenId> targets(static_cast<std::size_t>(n), reference::kIgnoreTarget);
  for (std::int64_t i = 0; i <= b; ++i) pos[static_cast<std::size_t>(i)] = {static_cast<double>(i), 0.0};
  for (std::int64_t i = 0; i < cont; ++i)
    pos[static_cast<std::size_t>(b + 1 + i)] = {static_cast<double>(b + s.k + i), 0.0};
  for (std::int64_t i = b; i < n; ++i)
    targets[static_cast<std::size_t>(i)] = ids[static_cast<std::size_t>(i + s.k)];
  return detail::score_rows(model, emb, pos, targets, nullptr);
}

/// Mean of the span's token embeddings: the parameter-free baseline gist [d].
template <class M>
std::vector<typename M::Scalar> mean_pool_gist(M& model, std::span<const TokenId> ids,
                                               const DeltaNllSpan& s) {
  RowMatrix<typename M::Scalar> e(s.k, model.dim());
  model.embed(ids.data() + s.begin, s.k, e.data());
  const Eigen::Matrix<typename M::Scalar, 1, Eigen::Dynamic> m = e.colwise().mean();
  return std::vector<typename M::Scalar>(m.data(), m.data() + m.size());
}

}  // namespace mc
