// SPDX-License-Identifier: Apache-2.0
// Synthetic key–value recall: episodes of K-token blocks that each state one fact "key k has
// value v" (one fact token, then noise tokens), followed by queries "? k" whose answer is v. On
// prose a tiny model's future barely depends on any one span (LensNet's counterfactual gains were
// noise, docs/training.md); here exactly one block decides each answer, and which one depends on
// the query, so a gist that blurs the fact costs nats and expanding the right block wins them
// back. A fact is one token because the tiny CPU decoder must learn the task in seconds: one
// attention hop (query key -> fact) is learnt in a few hundred steps; separate key and value
// tokens need an induction circuit (two hops), which a d = 32 decoder did not form in 6,000
// steps (at init std 0.02; docs/training.md).
// Also the base-LM loop for it (loss on the answers only) and the in-window recall accuracy.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <span>
#include <vector>

#include "megacontext/config.hpp"
#include "megacontext/error.hpp"
#include "megacontext/reference/cross_entropy.hpp"
#include "megacontext/reference/llama.hpp"
#include "megacontext/train/adamw.hpp"
#include "megacontext/train/base_lm.hpp"
#include "megacontext/train/lens_training.hpp"
#include "megacontext/train/schedule.hpp"
#include "megacontext/tree.hpp"
#include "megacontext/working_context.hpp"

namespace mc::train {

/// Shape of a recall episode. Token ids: 0 filler, 1 query marker "?", then num_keys keys,
/// num_values values, num_keys · num_values facts (fact(k, v) = fact_base() + k · num_values + v)
/// and num_noise noise tokens (vocab() in all).
struct RecallTaskOptions {
  std::int64_t block = 4;        ///< tokens per block (the tree's K): a fact, then noise
  std::int64_t num_pairs = 6;    ///< blocks (one fact each) before the queries
  std::int64_t num_queries = 1;  ///< "? key value" triples after the blocks
  std::int64_t num_keys = 8;     ///< distinct keys; >= num_pairs (keys of an episode differ)
  std::int64_t num_values = 8;   ///< distinct values; >= 2
  std::int64_t num_noise = 16;   ///< noise tokens filling the blocks; 0: the filler token

  /// Throws mc::Error ([mc.recall.bad_options]) naming the first bad field.
  void validate() const {
    MC_EXPECTS(block >= 1, Errc::kInvalidArgument, "[mc.recall.bad_options] block = ", block,
               "; must be >= 1");
    MC_EXPECTS(num_pairs >= 1 && num_keys >= num_pairs, Errc::kInvalidArgument,
               "[mc.recall.bad_options] num_pairs = ", num_pairs, ", num_keys = ", num_keys,
               "; need 1 <= num_pairs <= num_keys");
    MC_EXPECTS(num_queries >= 1, Errc::kInvalidArgument,
               "[mc.recall.bad_options] num_queries = ", num_queries, "; must be >= 1");
    MC_EXPECTS(num_values >= 2, Errc::kInvalidArgument,
               "[mc.recall.bad_options] num_values = ", num_values, "; must be >= 2");
    MC_EXPECTS(num_noise >= 0, Errc::kInvalidArgument,
               "[mc.recall.bad_options] num_noise = ", num_noise, "; must be >= 0");
  }
  /// First fact token id.
  std::int64_t fact_base() const { return 2 + num_keys + num_values; }
  /// Vocabulary size: filler, "?", keys, values, facts, noise.
  std::int64_t vocab() const { return fact_base() + num_keys * num_values + num_noise; }
  /// Tokens of the fact blocks.
  std::int64_t history() const { return block * num_pairs; }
  /// Tokens of a whole episode.
  std::int64_t length() const { return history() + 3 * num_queries; }
};

/// One episode: blocks then queries; answers[q] is the position of query q's value token.
struct RecallEpisode {
  std::vector<TokenId> tokens;        ///< [length()] token ids
  std::vector<std::int64_t> asked;    ///< [num_queries] block index each query asks about
  std::vector<std::int64_t> answers;  ///< [num_queries] position of each answer in tokens
};

/// A random episode drawn from `rng`: distinct keys, values drawn with replacement, noise drawn
/// uniformly, queries asking about uniformly chosen blocks.
inline RecallEpisode make_recall_episode(const RecallTaskOptions& o, std::mt19937_64& rng) {
  o.validate();
  const auto draw = [&](std::int64_t n) {
    return static_cast<std::int64_t>(rng() % static_cast<std::uint64_t>(n));
  };
  std::vector<std::int64_t> keys(static_cast<std::size_t>(o.num_keys));
  std::iota(keys.begin(), keys.end(), std::int64_t{0});
  // Partial Fisher–Yates with explicit draws: std::shuffle's draws differ between libraries.
  for (std::int64_t i = 0; i < o.num_pairs; ++i)
    std::swap(keys[static_cast<std::size_t>(i)], keys[static_cast<std::size_t>(i + draw(o.num_keys - i))]);
  RecallEpisode e;
  e.tokens.assign(static_cast<std::size_t>(o.length()), TokenId(0));
  std::vector<std::int64_t> values(static_cast<std::size_t>(o.num_pairs));
  for (std::int64_t p = 0; p < o.num_pairs; ++p) {
    const std::int64_t k = keys[static_cast<std::size_t>(p)], v = draw(o.num_values);
    values[static_cast<std::size_t>(p)] = v;
    e.tokens[static_cast<std::size_t>(p * o.block)] =
        static_cast<TokenId>(o.fact_base() + k * o.num_values + v);
    for (std::int64_t i = 1; i < o.block && o.num_noise > 0; ++i)
      e.tokens[static_cast<std::size_t>(p * o.block + i)] =
          static_cast<TokenId>(o.fact_base() + o.num_keys * o.num_values + draw(o.num_noise));
  }
  for (std::int64_t q = 0; q < o.num_queries; ++q) {
    const std::int64_t p = draw(o.num_pairs);
    const auto at = static_cast<std::size_t>(o.history() + 3 * q);
    e.tokens[at] = 1;
    e.tokens[at + 1] = static_cast<TokenId>(2 + keys[static_cast<std::size_t>(p)]);
    e.tokens[at + 2] = static_cast<TokenId>(2 + o.num_keys + values[static_cast<std::size_t>(p)]);
    e.asked.push_back(p);
    e.answers.push_back(static_cast<std::int64_t>(at + 2));
  }
  return e;
}

/// Next-token targets of an episode that score only the answers (everything else is random).
inline std::vector<TokenId> recall_targets(const RecallEpisode& e) {
  std::vector<TokenId> t(e.tokens.size(), reference::kIgnoreTarget);
  for (const std::int64_t a : e.answers)
    t[static_cast<std::size_t>(a - 1)] = e.tokens[static_cast<std::size_t>(a)];
  return t;
}

/// In-window recall of a model reading whole episodes (every token present).
struct RecallReport {
  double nll = 0;             ///< mean NLL of the answers, nats
  double accuracy = 0;        ///< fraction of answers that are the argmax of their row
  std::int64_t answers = 0;   ///< answers scored
};

/// Scores `count` episodes drawn from `seed` (the same seed gives the same episodes).
template <class Scalar>
RecallReport evaluate_recall(reference::LlamaModel<Scalar>& model, const RecallTaskOptions& o,
                             std::int64_t count, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  const std::int64_t n = o.length() - 1;
  const auto pos = plain_positions(n);
  RowMatrix<Scalar> emb(n, model.dim());
  RecallReport r;
  for (std::int64_t i = 0; i < count; ++i) {
    const RecallEpisode e = make_recall_episode(o, rng);
    model.embed(e.tokens.data(), n, emb.data());
    const RowMatrix<Scalar> logits = model.forward(emb, pos);
    const auto targets = recall_targets(e);
    r.nll += reference::cross_entropy<Scalar>(logits, targets.data(), nullptr) *
             static_cast<double>(e.answers.size());
    for (const std::int64_t a : e.answers) {
      Eigen::Index best = 0;
      logits.row(a - 1).maxCoeff(&best);
      r.accuracy += best == e.tokens[static_cast<std::size_t>(a)] ? 1.0 : 0.0;
      ++r.answers;
    }
  }
  r.nll /= static_cast<double>(r.answers);
  r.accuracy /= static_cast<double>(r.answers);
  return r;
}

/// A stream of `count` episodes back to back (what GistTrainer samples windows from).
inline std::vector<TokenId> recall_stream(const RecallTaskOptions& o, std::int64_t count,
                                          std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<TokenId> s;
  s.reserve(static_cast<std::size_t>(count * o.length()));
  for (std::int64_t i = 0; i < count; ++i) {
    const auto e = make_recall_episode(o, rng);
    s.insert(s.end(), e.tokens.begin(), e.tokens.end());
  }
  return s;
}

/// Optimizer steps of the base decoder on recall episodes, every token present: the in-window
/// retrieval a base model needs before MegaContext can extend it. The loss covers every next
/// token by default, so the model is calibrated on the unpredictable ones too (ΔNLL@H scores
/// every horizon token; a model that never learnt them lets a gist "improve" on noise);
/// `answers_only` trains the answers alone, which learns the lookup faster.
template <class Scalar>
class RecallLmTrainer {
 public:
  /// Trains `model` (kept by reference) on episodes of `task` with `opts` (seq_len unused).
  RecallLmTrainer(reference::LlamaModel<Scalar>& model, const RecallTaskOptions& task,
                  const BaseLmOptions& opts, bool answers_only = false)
      : model_(model), task_(task), opts_(opts), answers_only_(answers_only), opt_(opts.adamw),
        rng_(opts.seed),
        grads_(reference::LlamaWeights<Scalar>::zeros(model.options())),
        pos_(plain_positions(task.length() - 1)) {
    task_.validate();
    opts_.validate();
    MC_EXPECTS(model.dims().n_vocab >= task.vocab(), Errc::kInvalidArgument,
               "[mc.recall.bad_vocab] model vocabulary ", model.dims().n_vocab, " < task vocabulary ",
               task.vocab());
  }

  /// One step on `batch` fresh episodes; returns the mean NLL of the trained targets (nats).
  double step() {
    const std::int64_t n = task_.length() - 1;
    grads_.for_each_parameter([](const std::string&, Scalar* g, Eigen::Index size) {
      std::fill(g, g + size, Scalar(0));
    });
    RowMatrix<Scalar> emb(n, model_.dim()), logits, dlogits, demb(n, model_.dim());
    double loss = 0;
    for (std::int64_t b = 0; b < opts_.batch; ++b) {
      const RecallEpisode e = make_recall_episode(task_, rng_);
      model_.embed(e.tokens.data(), n, emb.data());
      logits = model_.forward(emb, pos_);
      const auto targets = answers_only_ ? recall_targets(e) : reference::next_token_targets(e.tokens.data(), n + 1);
      loss += reference::cross_entropy<Scalar>(logits, targets.data(), &dlogits);
      dlogits /= static_cast<Scalar>(opts_.batch);
      model_.backward(dlogits.data(), n, demb.data(), grads_);
      model_.embed_backward(e.tokens.data(), n, demb.data(), grads_);
    }
    last_grad_norm_ = clip_grad_norm<Scalar>(grads_, opts_.clip);
    if (std::isfinite(last_grad_norm_))
      opt_.step<Scalar>(model_.weights(), grads_, opts_.schedule(opt_.step_count() + 1));
    return loss / static_cast<double>(opts_.batch);
  }

  /// The optimizer (checkpoints).
  AdamW& optimizer() { return opt_; }
  /// The episode sampler (its state goes into checkpoints for an exact resume).
  std::mt19937_64& sampler() { return rng_; }

 private:
  reference::LlamaModel<Scalar>& model_;
  RecallTaskOptions task_;
  BaseLmOptions opts_;
  bool answers_only_;
  AdamW opt_;
  std::mt19937_64 rng_;
  reference::LlamaWeights<Scalar> grads_;
  std::vector<GaussianPosition> pos_;
  double last_grad_norm_ = 0;
};

/// LensNet examples from `count` episodes drawn from `seed` (one query each: the task's
/// num_queries is ignored): the fact blocks enter the working context as LOD1 gists built by
/// `gister`, the query "? key" stays at LOD0, and the gains are measured on the answer.
template <ConfigType C, class M, class G>
std::vector<LensExample<typename M::Scalar>> recall_lens_examples(const RecallTaskOptions& task,
                                                                  M& model, G& gister,
                                                                  std::int64_t count,
                                                                  std::uint64_t seed) {
  RecallTaskOptions o = task;
  o.num_queries = 1;
  o.validate();
  MC_EXPECTS(o.block == C::K, Errc::kInvalidArgument, "[mc.recall.bad_options] block = ", o.block,
             " but the tree's K = ", C::K, "; a fact block must be one LOD1 gist");
  std::mt19937_64 rng(seed);
  std::vector<LensExample<typename M::Scalar>> out;
  out.reserve(static_cast<std::size_t>(count));
  const std::int64_t n = o.length() - 1;  // everything but the answer
  for (std::int64_t i = 0; i < count; ++i) {
    const RecallEpisode e = make_recall_episode(o, rng);
    Tree<C> tree(model.dim());
    tree.append(std::span<const TokenId>(e.tokens.data(), static_cast<std::size_t>(n)), gister);
    WorkingContext<C> wc({n + 1, 0});
    wc.extend(n, o.history(), 0);
    out.push_back(make_lens_example(wc, tree, model,
                                    std::span<const TokenId>(e.tokens.data() + n, 1)));
  }
  return out;
}

}  // namespace mc::train
