// SPDX-License-Identifier: Apache-2.0
// Training GistNet on ΔNLL@H through the frozen base model, and the evaluation that compares it
// with the parameter-free baselines. A window is `prefix` tokens, then a span of K tokens, then
// H tokens to predict; the loss is the NLL of those H tokens with the span replaced by its gist
// (ΔNLL@H minus a constant: the full-span NLL does not depend on GistNet). Gradients flow from
// the NLL through the frozen model (backward_inputs) into the gist and then into GistNet.
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <vector>

#include "megacontext/delta_nll.hpp"
#include "megacontext/error.hpp"
#include "megacontext/gist_net.hpp"
#include "megacontext/model.hpp"
#include "megacontext/train/adamw.hpp"
#include "megacontext/train/schedule.hpp"

namespace mc::train {

/// Options of GistNet training.
struct GistTrainOptions {
  std::int64_t prefix = 16;   ///< tokens before the span in every window
  std::int64_t horizon = 16;  ///< H: tokens scored after the span
  std::int64_t batch = 8;     ///< spans per step
  double clip = 1.0;          ///< global gradient-norm clip
  WarmupCosine schedule{1e-3, 1e-4, 20, 400};  ///< learning rate per step
  AdamWOptions adamw{0.9, 0.95, 1e-8, 0.0};     ///< optimizer (no decay by default)
  std::uint64_t seed = 1;     ///< window sampling
  std::int64_t align = 1;     ///< window starts are multiples of this (e.g. an episode length)

  /// Throws mc::Error naming the first bad field.
  void validate() const {
    MC_EXPECTS(prefix >= 0 && horizon >= 1 && batch >= 1 && clip > 0 && align >= 1,
               Errc::kInvalidArgument, "[mc.train.bad_shape] prefix = ", prefix, ", horizon = ",
               horizon, ", batch = ", batch, ", clip = ", clip, ", align = ", align);
    schedule.validate();
    adamw.validate();
  }
};

/// Mean ΔNLL@H (nats) of each way of showing the span, over the same windows.
struct DeltaNllReport {
  double gist = 0;         ///< learned GistNet gist
  double mean_pool = 0;    ///< mean of the span's token embeddings
  double drop = 0;         ///< span removed
  double first_token = 0;  ///< only the span's first token
  std::int64_t spans = 0;  ///< windows evaluated
};

/// Window starts for `count` windows of `tokens`, from `seed` (the same seed gives the same
/// windows, so every variant is scored on identical text); starts are multiples of `align`.
inline std::vector<std::size_t> sample_windows(std::size_t num_tokens, std::int64_t window,
                                               std::int64_t count, std::uint64_t seed,
                                               std::int64_t align = 1) {
  MC_EXPECTS(window >= 1 && align >= 1 && static_cast<std::int64_t>(num_tokens) > window,
             Errc::kInvalidArgument, "[mc.train.bad_shape] ", num_tokens, " tokens for windows of ",
             window, " aligned to ", align);
  std::mt19937_64 rng(seed);
  const auto a = static_cast<std::size_t>(align);
  std::uniform_int_distribution<std::size_t> start(0, (num_tokens - static_cast<std::size_t>(window)) / a);
  std::vector<std::size_t> v(static_cast<std::size_t>(count));
  for (auto& s : v) s = start(rng) * a;
  return v;
}

/// ΔNLL@H of GistNet and of the baselines on `count` windows of `tokens` (gists at LOD1).
template <ConfigType C, class M>
DeltaNllReport evaluate_delta_nll(GistNet<C>& net, M& model, std::span<const TokenId> tokens,
                                  const GistTrainOptions& o, std::int64_t count,
                                  std::uint64_t seed) {
  const DeltaNllSpan s{o.prefix, C::K, o.horizon};
  const std::int64_t window = o.prefix + C::K + o.horizon;
  DeltaNllReport r;
  RowMatrix<typename M::Scalar> children(C::K, model.dim());
  for (std::size_t at : sample_windows(tokens.size(), window, count, seed, o.align)) {
    const auto ids = tokens.subspan(at, static_cast<std::size_t>(window));
    const double full = full_nll(model, ids, s);
    model.embed(ids.data() + s.begin, C::K, children.data());
    const RowMatrix<typename M::Scalar> gist = net.forward(1, children);
    const auto mean = mean_pool_gist(model, ids, s);
    r.gist += gist_nll(model, ids, s, gist.data()) - full;
    r.mean_pool += gist_nll(model, ids, s, mean.data()) - full;
    if (s.begin >= 1) r.drop += drop_nll(model, ids, s) - full;
    r.first_token += first_token_nll(model, ids, s) - full;
    ++r.spans;
  }
  const auto n = static_cast<double>(r.spans);
  r.gist /= n;
  r.mean_pool /= n;
  r.drop /= n;
  r.first_token /= n;
  return r;
}

/// Optimizer steps of GistNet on ΔNLL@H through a frozen model; owns the optimizer and buffers.
template <ConfigType C, class M>
class GistTrainer {
 public:
  using Scalar = typename C::Scalar;

  /// Trains `net` through the frozen `model` (both kept by reference).
  GistTrainer(GistNet<C>& net, M& model, const GistTrainOptions& o)
      : net_(net), model_(model), o_(o), opt_(o.adamw), rng_(o.seed),
        grads_(GistNetWeights<Scalar>::zeros(net.options())) {
    expect_trainable_model<M>();
    static_assert(std::is_same_v<typename M::Scalar, Scalar>,
                  "GistTrainer: the model and GistNet must use the same Scalar");
    o_.validate();
    MC_EXPECTS(model.dim() == net.dim(), Errc::kInvalidArgument,
               "[mc.train.dim_mismatch] model dim ", model.dim(), " vs GistNet dim ", net.dim());
  }

  /// One step on `batch` random windows of `tokens`; returns the mean gist NLL of the horizon.
  double step(std::span<const TokenId> tokens) {
    const DeltaNllSpan s{o_.prefix, C::K, o_.horizon};
    const std::int64_t window = o_.prefix + C::K + o_.horizon, d = model_.dim(), b = o_.batch;
    const auto starts = sample_windows(tokens.size(), window, b, rng_(), o_.align);
    RowMatrix<Scalar> children(b * C::K, d), dgists(b, d);
    for (std::int64_t i = 0; i < b; ++i)
      model_.embed(tokens.data() + starts[static_cast<std::size_t>(i)] + s.begin, C::K,
                   children.data() + i * C::K * d);
    const RowMatrix<Scalar> gists = net_.forward(1, children);
    double loss = 0;
    for (std::int64_t i = 0; i < b; ++i) {
      const auto ids = tokens.subspan(starts[static_cast<std::size_t>(i)], static_cast<std::size_t>(window));
      loss += gist_nll(model_, ids, s, gists.data() + i * d, dgists.data() + i * d);
    }
    dgists /= static_cast<Scalar>(b);
    grads_.for_each_parameter([](const std::string&, Scalar* g, Eigen::Index n) {
      std::fill(g, g + n, Scalar(0));
    });
    net_.backward(dgists.data(), b, nullptr, &grads_);
    last_grad_norm_ = clip_grad_norm<Scalar>(grads_, o_.clip);
    if (std::isfinite(last_grad_norm_))
      opt_.step<Scalar>(net_.weights(), grads_, o_.schedule(opt_.step_count() + 1));
    return loss / static_cast<double>(b);
  }

  /// The optimizer (for checkpoints).
  AdamW& optimizer() { return opt_; }
  /// Gradient norm of the last step before clipping.
  double last_grad_norm() const { return last_grad_norm_; }
  /// The window sampler (its state goes into checkpoints for an exact resume).
  std::mt19937_64& sampler() { return rng_; }

 private:
  GistNet<C>& net_;
  M& model_;
  GistTrainOptions o_;
  AdamW opt_;
  std::mt19937_64 rng_;
  GistNetWeights<Scalar> grads_;
  double last_grad_norm_ = 0;
};

}  // namespace mc::train
