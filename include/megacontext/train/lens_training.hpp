// SPDX-License-Identifier: Apache-2.0
// Training LensNet from counterfactuals: a working context is assembled once, every gist entry's
// expansion gain (NLL of the upcoming tokens before − after expanding it, lens_targets.hpp) is
// measured through the frozen model, and LensNet learns to score entries so that its scores rank
// like those gains: by regression on tanh(gain / gain_scale) or by Bradley–Terry preferences
// between entries whose gains differ. The evaluation is the one that matters to the allocator:
// Spearman's ρ between scores and gains per held-out context, next to a random scorer's.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <span>
#include <vector>

#include "megacontext/assemble.hpp"
#include "megacontext/error.hpp"
#include "megacontext/lens_net.hpp"
#include "megacontext/lens_targets.hpp"
#include "megacontext/train/adamw.hpp"
#include "megacontext/train/gist_training.hpp"
#include "megacontext/train/schedule.hpp"
#include "megacontext/tree.hpp"
#include "megacontext/working_context.hpp"

namespace mc::train {

/// One context with its counterfactual targets, ready for LensNet.
template <class Scalar>
struct LensExample {
  AssembledContext<Scalar> context;   ///< the working context as the model reads it
  double cursor = 0;                  ///< tokens covered (one past the newest)
  std::vector<std::int64_t> entries;  ///< [G] entries that can be expanded (gists)
  std::vector<double> gains;          ///< [G] their expansion gains, nats per upcoming token
};

/// The expansion gain of every gist of `wc` on `upcoming` (which follows the history), with the
/// assembled context LensNet reads; collapse gains are left out: the allocator expands by one
/// entry's score but collapses by a sibling group's, so they are a different target.
template <class C, class TreeT, class M>
LensExample<typename M::Scalar> make_lens_example(const WorkingContext<C>& wc, const TreeT& tree,
                                                  M& model, std::span<const TokenId> upcoming) {
  LensExample<typename M::Scalar> e;
  for (const FocusGain& g : focus_gains(wc, tree, model, upcoming)) {
    if (g.kind != FocusEdit::kExpand) continue;
    e.entries.push_back(g.entry);
    e.gains.push_back(g.gain);
  }
  assemble(wc, tree, model, e.context);
  e.cursor = static_cast<double>(wc.num_tokens());
  return e;
}

/// LensNet examples from `count` windows of a token stream drawn from `seed`: `history` tokens
/// (their first history − recent as LOD1 gists built by `gister`, the last `recent` at LOD0; the
/// split is rounded down to a multiple of K), then `horizon` upcoming tokens scored.
template <ConfigType C, class M, class G>
std::vector<LensExample<typename M::Scalar>> stream_lens_examples(
    std::span<const TokenId> tokens, M& model, G& gister, std::int64_t history, std::int64_t recent,
    std::int64_t horizon, std::int64_t count, std::uint64_t seed) {
  MC_EXPECTS(recent >= 1 && history >= recent + C::K && horizon >= 1 && count >= 0,
             Errc::kInvalidArgument, "[mc.train.bad_shape] history = ", history, ", recent = ",
             recent, ", horizon = ", horizon, ", count = ", count,
             "; need recent >= 1, history >= recent + K = ", recent + C::K, ", horizon >= 1");
  const std::int64_t coarse = (history - recent) / C::K * C::K;
  std::vector<LensExample<typename M::Scalar>> out;
  out.reserve(static_cast<std::size_t>(count));
  for (const std::size_t at : sample_windows(tokens.size(), history + horizon, count, seed)) {
    Tree<C> tree(model.dim());
    tree.append(tokens.subspan(at, static_cast<std::size_t>(history)), gister);
    WorkingContext<C> wc({history + 1, 0});
    wc.extend(history, coarse, 0);
    out.push_back(make_lens_example(
        wc, tree, model, tokens.subspan(at + static_cast<std::size_t>(history), static_cast<std::size_t>(horizon))));
  }
  return out;
}

/// Which loss turns gains into a LensNet objective.
enum class LensLoss : int {
  kRegression = 0,  ///< squared error to tanh(gain / gain_scale)
  kPreference = 1,  ///< Bradley–Terry over pairs whose gains differ by more than min_gap
};

/// Options of LensNet training.
struct LensTrainOptions {
  std::int64_t batch = 8;                     ///< contexts per step
  LensLoss loss = LensLoss::kRegression;      ///< objective
  double gain_scale = 0.5;                    ///< nats mapped to tanh(1) by the regression target
  double tau = 0.25;                          ///< Bradley–Terry temperature
  double min_gap = 0.01;                      ///< nats; smaller gain differences make no pair
  double clip = 1.0;                          ///< global gradient-norm clip
  WarmupCosine schedule{2e-3, 2e-4, 20, 400};  ///< learning rate per step
  AdamWOptions adamw{0.9, 0.95, 1e-8, 0.0};   ///< optimizer (no decay by default)
  std::uint64_t seed = 1;                     ///< context sampling

  /// Throws mc::Error naming the first bad field.
  void validate() const {
    MC_EXPECTS(batch >= 1 && clip > 0, Errc::kInvalidArgument, "[mc.train.bad_shape] batch = ",
               batch, ", clip = ", clip);
    MC_EXPECTS(loss == LensLoss::kRegression || loss == LensLoss::kPreference,
               Errc::kInvalidArgument, "[mc.train.bad_lens_loss] loss = ", static_cast<int>(loss),
               "; must be kRegression (0) or kPreference (1)");
    MC_EXPECTS(std::isfinite(gain_scale) && gain_scale > 0 && std::isfinite(tau) && tau > 0 &&
                   std::isfinite(min_gap) && min_gap >= 0,
               Errc::kInvalidArgument, "[mc.train.bad_lens_target] gain_scale = ", gain_scale,
               ", tau = ", tau, ", min_gap = ", min_gap,
               "; need gain_scale > 0, tau > 0, min_gap >= 0");
    schedule.validate();
    adamw.validate();
  }
};

/// Scores [W] of every entry of an example.
template <class Scalar>
reference::Vector<Scalar> lens_scores(LensNet<Scalar>& net, const LensExample<Scalar>& e) {
  reference::Vector<Scalar> s;
  net.forward(e.context, e.cursor, s);
  return s;
}

/// Optimizer steps of LensNet on a fixed set of examples; owns the optimizer and buffers.
template <class Scalar>
class LensTrainer {
 public:
  /// Trains `net` (kept by reference) with `o`.
  LensTrainer(LensNet<Scalar>& net, const LensTrainOptions& o)
      : net_(net), o_(o), opt_(o.adamw), rng_(o.seed),
        grads_(LensNetWeights<Scalar>::zeros(net.options())) {
    o_.validate();
  }

  /// One step on `batch` examples drawn from `examples`; returns the mean loss. Examples without
  /// a target (no gist, or no pair of distinct gains) are drawn but contribute nothing.
  double step(std::span<const LensExample<Scalar>> examples) {
    MC_EXPECTS(!examples.empty(), Errc::kInvalidArgument,
               "[mc.train.no_examples] LensTrainer::step needs at least one example");
    grads_.for_each_parameter([](const std::string&, Scalar* g, Eigen::Index n) {
      std::fill(g, g + n, Scalar(0));
    });
    std::uniform_int_distribution<std::size_t> pick(0, examples.size() - 1);
    double loss = 0;
    std::int64_t used = 0;
    reference::Vector<Scalar> scores, dscores;
    for (std::int64_t b = 0; b < o_.batch; ++b) {
      const LensExample<Scalar>& e = examples[pick(rng_)];
      if (e.entries.empty()) continue;
      net_.forward(e.context, e.cursor, scores);
      dscores = reference::Vector<Scalar>::Zero(scores.size());
      const double l = example_loss(e, scores, &dscores);
      if (!std::isfinite(l)) continue;  // a context with no usable pair
      loss += l;
      ++used;
      net_.backward(dscores, &grads_);
    }
    if (used == 0) return 0.0;
    const Scalar inv = Scalar(1) / static_cast<Scalar>(used);
    grads_.for_each_parameter([&](const std::string&, Scalar* g, Eigen::Index n) {
      for (Eigen::Index k = 0; k < n; ++k) g[k] *= inv;
    });
    last_grad_norm_ = clip_grad_norm<Scalar>(grads_, o_.clip);
    if (std::isfinite(last_grad_norm_))
      opt_.step<Scalar>(net_.weights(), grads_, o_.schedule(opt_.step_count() + 1));
    return loss / static_cast<double>(used);
  }

  /// Mean loss over `examples` (no update): the number a training curve reports.
  double loss(std::span<const LensExample<Scalar>> examples) {
    double total = 0;
    std::int64_t used = 0;
    reference::Vector<Scalar> scores;
    for (const auto& e : examples) {
      if (e.entries.empty()) continue;
      net_.forward(e.context, e.cursor, scores);
      const double l = example_loss(e, scores, nullptr);
      if (!std::isfinite(l)) continue;
      total += l;
      ++used;
    }
    return used > 0 ? total / static_cast<double>(used) : 0.0;
  }

  /// The optimizer (checkpoints).
  AdamW& optimizer() { return opt_; }
  /// The example sampler (its state goes into checkpoints for an exact resume).
  std::mt19937_64& sampler() { return rng_; }
  /// Gradient norm of the last step before clipping.
  double last_grad_norm() const { return last_grad_norm_; }

 private:
  // The loss of one example (NaN when it has no target), adding dL/dscores when asked.
  double example_loss(const LensExample<Scalar>& e, const reference::Vector<Scalar>& scores,
                      reference::Vector<Scalar>* dscores) const {
    if (o_.loss == LensLoss::kRegression) {
      std::vector<LensTarget> t;
      for (std::size_t i = 0; i < e.entries.size(); ++i)
        t.push_back({e.entries[i], std::tanh(e.gains[i] / o_.gain_scale)});
      return lens_regression_loss<Scalar>(scores, t, dscores);
    }
    std::vector<LensPreference> pairs;
    for (std::size_t i = 0; i < e.entries.size(); ++i)
      for (std::size_t j = 0; j < e.entries.size(); ++j)
        if (e.gains[i] - e.gains[j] > o_.min_gap) pairs.push_back({e.entries[i], e.entries[j]});
    if (pairs.empty()) return std::nan("");
    return lens_preference_loss<Scalar>(scores, pairs, o_.tau, dscores);
  }

  LensNet<Scalar>& net_;
  LensTrainOptions o_;
  AdamW opt_;
  std::mt19937_64 rng_;
  LensNetWeights<Scalar> grads_;
  double last_grad_norm_ = 0;
};

/// How well scores rank the counterfactual gains on a set of contexts.
struct LensRankReport {
  double rho = 0;             ///< mean per-context Spearman ρ(LensNet scores, gains)
  double rho_random = 0;      ///< the same for uniform random scores (seeded)
  double top1 = 0;            ///< fraction of contexts whose best-scored entry has the top gain
  double top1_random = 0;     ///< the same for the random scorer
  double gain_rms = 0;        ///< RMS of all gains, nats: how strong the signal is
  std::int64_t contexts = 0;  ///< contexts with at least two gists
};

/// Ranks LensNet's scores against the gains of every example with >= 2 gists; the random
/// scorer draws from `seed`.
template <class Scalar>
LensRankReport evaluate_lens_ranking(LensNet<Scalar>& net,
                                     std::span<const LensExample<Scalar>> examples,
                                     std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> uniform(-1.0, 1.0);
  LensRankReport r;
  double sq = 0;
  std::int64_t n_gains = 0;
  const auto argmax = [](const std::vector<double>& v) {
    return static_cast<std::size_t>(std::max_element(v.begin(), v.end()) - v.begin());
  };
  for (const auto& e : examples) {
    for (double g : e.gains) sq += g * g;
    n_gains += static_cast<std::int64_t>(e.gains.size());
    if (e.entries.size() < 2) continue;
    const auto s = lens_scores(net, e);
    std::vector<double> mine, rnd;
    for (std::int64_t i : e.entries) {
      mine.push_back(static_cast<double>(s[i]));
      rnd.push_back(uniform(rng));
    }
    r.rho += spearman(mine, e.gains);
    r.rho_random += spearman(rnd, e.gains);
    const std::size_t best = argmax(e.gains);
    r.top1 += argmax(mine) == best ? 1.0 : 0.0;
    r.top1_random += argmax(rnd) == best ? 1.0 : 0.0;
    ++r.contexts;
  }
  if (r.contexts > 0) {
    const auto n = static_cast<double>(r.contexts);
    r.rho /= n;
    r.rho_random /= n;
    r.top1 /= n;
    r.top1_random /= n;
  }
  r.gain_rms = n_gains > 0 ? std::sqrt(sq / static_cast<double>(n_gains)) : 0.0;
  return r;
}

}  // namespace mc::train
