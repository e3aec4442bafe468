// SPDX-License-Identifier: Apache-2.0
// Training the base decoder as a plain next-token language model (the frozen model MegaContext
// wraps): random windows of a token stream, positions t = 0..n−1 with σ = 0 (plain RoPE),
// cross-entropy against the NEXT token, AdamW with warm-up + cosine and global-norm clipping;
// plus the evaluation every report needs: mean validation NLL and the unigram baseline.
#pragma once

#include <cmath>
#include <cstdint>
#include <random>
#include <span>
#include <vector>

#include "megacontext/error.hpp"
#include "megacontext/reference/cross_entropy.hpp"
#include "megacontext/reference/llama.hpp"
#include "megacontext/train/adamw.hpp"
#include "megacontext/train/schedule.hpp"

namespace mc::train {

/// Options of base-LM training.
struct BaseLmOptions {
  std::int64_t seq_len = 64;     ///< tokens per window (the model sees seq_len, predicts seq_len)
  std::int64_t batch = 8;        ///< windows per step (gradients averaged)
  double clip = 1.0;             ///< global gradient-norm clip
  WarmupCosine schedule;         ///< learning rate per step
  AdamWOptions adamw;            ///< optimizer
  std::uint64_t seed = 1;        ///< window sampling

  /// Throws mc::Error naming the first bad field.
  void validate() const {
    MC_EXPECTS(seq_len >= 2 && batch >= 1, Errc::kInvalidArgument,
               "[mc.train.bad_shape] seq_len = ", seq_len, ", batch = ", batch,
               "; need seq_len >= 2, batch >= 1");
    MC_EXPECTS(clip > 0, Errc::kInvalidArgument, "[mc.train.bad_clip] clip = ", clip);
    schedule.validate();
    adamw.validate();
  }
};

/// Positions 0..n−1 with σ = 0: what a base model sees for plain text.
inline std::vector<GaussianPosition> plain_positions(std::int64_t n) {
  std::vector<GaussianPosition> p(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) p[static_cast<std::size_t>(i)] = {static_cast<double>(i), 0.0};
  return p;
}

/// Mean next-token NLL (nats per token) of `model` on `tokens`, in consecutive windows of
/// `seq_len` + 1 tokens (at most `max_windows` of them; all when <= 0).
template <class Scalar>
double evaluate_nll(reference::LlamaModel<Scalar>& model, std::span<const TokenId> tokens,
                    std::int64_t seq_len, std::int64_t max_windows = 0) {
  MC_EXPECTS(seq_len >= 1 && static_cast<std::int64_t>(tokens.size()) > seq_len,
             Errc::kInvalidArgument, "[mc.train.bad_shape] evaluate_nll: ", tokens.size(),
             " tokens for windows of ", seq_len + 1);
  const auto pos = plain_positions(seq_len);
  RowMatrix<Scalar> emb(seq_len, model.dim()), logits;
  double total = 0;
  std::int64_t windows = 0;
  for (std::size_t at = 0; at + static_cast<std::size_t>(seq_len) < tokens.size();
       at += static_cast<std::size_t>(seq_len)) {
    if (max_windows > 0 && windows == max_windows) break;
    model.embed(tokens.data() + at, seq_len, emb.data());
    logits = model.forward(emb, pos);
    total += reference::cross_entropy<Scalar>(logits, tokens.data() + at + 1, nullptr);
    ++windows;
  }
  return total / static_cast<double>(windows);
}

/// NLL (nats per token) of `valid` under the add-one-smoothed unigram distribution of `train`
/// over `vocab` ids: the baseline a language model must beat clearly.
inline double unigram_nll(std::span<const TokenId> train, std::span<const TokenId> valid,
                          std::int64_t vocab) {
  MC_EXPECTS(vocab >= 1 && !valid.empty(), Errc::kInvalidArgument,
             "[mc.train.bad_shape] unigram_nll: vocab = ", vocab, ", ", valid.size(),
             " validation tokens");
  std::vector<double> count(static_cast<std::size_t>(vocab), 1.0);
  for (TokenId t : train) count[static_cast<std::size_t>(t)] += 1.0;
  const double total = static_cast<double>(train.size()) + static_cast<double>(vocab);
  double nll = 0;
  for (TokenId t : valid) nll -= std::log(count[static_cast<std::size_t>(t)] / total);
  return nll / static_cast<double>(valid.size());
}

/// Runs optimizer steps of base-LM training on a token stream; owns the optimizer, the gradient
/// buffers and the sampler, so a loop is `for (...) trainer.step(tokens);`.
template <class Scalar>
class BaseLmTrainer {
 public:
  /// Trains `model` (kept by reference) with `opts`.
  BaseLmTrainer(reference::LlamaModel<Scalar>& model, const BaseLmOptions& opts)
      : model_(model), opts_(opts), opt_(opts.adamw), rng_(opts.seed),
        grads_(reference::LlamaWeights<Scalar>::zeros(model.options())),
        pos_(plain_positions(opts.seq_len)) {
    opts_.validate();
  }

  /// One step on `batch` random windows of `tokens`; returns the mean training loss. Steps with
  /// a non-finite gradient norm are skipped (and counted).
  double step(std::span<const TokenId> tokens) {
    const std::int64_t n = opts_.seq_len;
    MC_EXPECTS(static_cast<std::int64_t>(tokens.size()) > n + 1, Errc::kInvalidArgument,
               "[mc.train.bad_shape] ", tokens.size(), " training tokens for windows of ", n + 1);
    grads_.for_each_parameter([](const std::string&, Scalar* g, Eigen::Index size) {
      std::fill(g, g + size, Scalar(0));
    });
    std::uniform_int_distribution<std::size_t> start(0, tokens.size() - static_cast<std::size_t>(n) - 1);
    RowMatrix<Scalar> emb(n, model_.dim()), logits, dlogits, demb(n, model_.dim());
    double loss = 0;
    for (std::int64_t b = 0; b < opts_.batch; ++b) {
      const TokenId* ids = tokens.data() + start(rng_);
      model_.embed(ids, n, emb.data());
      logits = model_.forward(emb, pos_);
      loss += reference::cross_entropy<Scalar>(logits, ids + 1, &dlogits);
      dlogits /= static_cast<Scalar>(opts_.batch);
      model_.backward(dlogits.data(), n, demb.data(), grads_);
      model_.embed_backward(ids, n, demb.data(), grads_);
    }
    last_grad_norm_ = clip_grad_norm<Scalar>(grads_, opts_.clip);
    if (std::isfinite(last_grad_norm_)) {
      opt_.step<Scalar>(model_.weights(), grads_, opts_.schedule(opt_.step_count() + 1));
    } else {
      ++skipped_;
    }
    return loss / static_cast<double>(opts_.batch);
  }

  /// The optimizer (step count, state for checkpoints).
  AdamW& optimizer() { return opt_; }
  /// Gradient norm of the last step before clipping.
  double last_grad_norm() const { return last_grad_norm_; }
  /// Steps skipped for a non-finite gradient.
  std::int64_t skipped_steps() const { return skipped_; }

 private:
  reference::LlamaModel<Scalar>& model_;
  BaseLmOptions opts_;
  AdamW opt_;
  std::mt19937_64 rng_;
  reference::LlamaWeights<Scalar> grads_;
  std::vector<GaussianPosition> pos_;
  double last_grad_norm_ = 0;
  std::int64_t skipped_ = 0;
};

}  // namespace mc::train
