// SPDX-License-Identifier: Apache-2.0
// Next-token sampling from a row of logits: greedy, top-k and top-p (nucleus), each with a
// temperature. The Session calls it once per generated token; it is deterministic for a given
// seed and call sequence, so a session reopened with its saved sampler state continues
// bit-identically (Sampler::state / Sampler::restore).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <span>
#include <sstream>
#include <string>
#include <vector>

#include "megacontext/config.hpp"
#include "megacontext/error.hpp"

namespace mc {

/// How the next token is chosen from the logits.
struct SamplingOptions {
  enum class Mode : int {
    kGreedy = 0,  ///< the arg-max token (temperature, top_k and top_p are ignored)
    kTopK = 1,    ///< sample among the `top_k` most likely tokens
    kTopP = 2,    ///< sample among the smallest set of tokens whose probability reaches `top_p`
  };
  Mode mode = Mode::kGreedy;  ///< the rule
  float temperature = 1.0f;   ///< logits are divided by this before the softmax; > 0
  std::int64_t top_k = 40;    ///< kTopK: candidates kept; >= 1
  float top_p = 0.9f;         ///< kTopP: probability mass kept; in (0, 1]

  /// Throws mc::Error ([mc.sampling.bad_options]) naming the first bad field.
  void validate() const {
    MC_EXPECTS(mode == Mode::kGreedy || mode == Mode::kTopK || mode == Mode::kTopP,
               Errc::kInvalidArgument, "[mc.sampling.bad_options] mode = ",
               static_cast<int>(mode), "; must be kGreedy (0), kTopK (1) or kTopP (2)");
    MC_EXPECTS(std::isfinite(temperature) && temperature > 0.0f, Errc::kInvalidArgument,
               "[mc.sampling.bad_options] temperature = ", temperature,
               "; must be finite and > 0");
    MC_EXPECTS(top_k >= 1, Errc::kInvalidArgument, "[mc.sampling.bad_options] top_k = ", top_k,
               "; must be >= 1");
    MC_EXPECTS(top_p > 0.0f && top_p <= 1.0f, Errc::kInvalidArgument,
               "[mc.sampling.bad_options] top_p = ", top_p, "; must be in (0, 1]");
  }
};

/// Draws token ids from logits with a seeded generator (std::mt19937_64, whose state can be
/// saved as text and restored exactly).
class Sampler {
 public:
  /// A sampler whose draws are fixed by `seed`.
  explicit Sampler(std::uint64_t seed = 0) : rng_(seed) {}

  /// The next token for `logits` [V] under `opts`. Ties in greedy mode go to the lowest id.
  /// Throws mc::Error ([mc.sampling.bad_logits]) for an empty row or a NaN logit.
  template <class Scalar>
  TokenId sample(std::span<const Scalar> logits, const SamplingOptions& opts) {
    opts.validate();
    const auto v = static_cast<std::int64_t>(logits.size());
    MC_EXPECTS(v >= 1, Errc::kInvalidArgument, "[mc.sampling.bad_logits] empty logits row");
    for (std::int64_t i = 0; i < v; ++i)
      MC_EXPECTS(!std::isnan(static_cast<double>(logits[static_cast<std::size_t>(i)])),
                 Errc::kInvalidArgument, "[mc.sampling.bad_logits] logit ", i, " is NaN");
    if (opts.mode == SamplingOptions::Mode::kGreedy) {
      return static_cast<TokenId>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    }
    // Candidates in decreasing logit order (ties: lower id first, so the result never depends on
    // the sort's stability).
    order_.resize(static_cast<std::size_t>(v));
    std::iota(order_.begin(), order_.end(), TokenId{0});
    auto better = [&](TokenId a, TokenId b) {
      const double la = static_cast<double>(logits[static_cast<std::size_t>(a)]);
      const double lb = static_cast<double>(logits[static_cast<std::size_t>(b)]);
      return la > lb || (la == lb && a < b);
    };
    std::int64_t keep = v;
    if (opts.mode == SamplingOptions::Mode::kTopK) {
      keep = std::min(v, opts.top_k);
      std::partial_sort(order_.begin(), order_.begin() + keep, order_.end(), better);
    } else {
      std::sort(order_.begin(), order_.end(), better);
    }
    const double inv_t = 1.0 / static_cast<double>(opts.temperature);
    const double top = static_cast<double>(logits[static_cast<std::size_t>(order_[0])]) * inv_t;
    probs_.resize(static_cast<std::size_t>(keep));
    double total = 0.0;
    for (std::int64_t i = 0; i < keep; ++i) {
      const double l = static_cast<double>(logits[static_cast<std::size_t>(order_[static_cast<std::size_t>(i)])]);
      probs_[static_cast<std::size_t>(i)] = std::exp(l * inv_t - top);
      total += probs_[static_cast<std::size_t>(i)];
    }
    if (opts.mode == SamplingOptions::Mode::kTopP) {
      // Smallest prefix whose mass reaches top_p (at least one token).
      double mass = 0.0;
      std::int64_t n = 0;
      while (n < keep) {
        mass += probs_[static_cast<std::size_t>(n++)] / total;
        if (mass >= static_cast<double>(opts.top_p)) break;
      }
      keep = n;
      total = 0.0;
      for (std::int64_t i = 0; i < keep; ++i) total += probs_[static_cast<std::size_t>(i)];
    }
    // Inverse-CDF draw from a 53-bit uniform (std::uniform_real_distribution's output is not
    // specified bit-for-bit across standard libraries; this is).
    const double u = static_cast<double>(rng_() >> 11) * 0x1.0p-53 * total;
    double acc = 0.0;
    for (std::int64_t i = 0; i < keep; ++i) {
      acc += probs_[static_cast<std::size_t>(i)];
      if (u < acc) return order_[static_cast<std::size_t>(i)];
    }
    return order_[static_cast<std::size_t>(keep - 1)];
  }

  /// The generator state as text (std::mt19937_64's stream format).
  std::string state() const {
    std::ostringstream os;
    os << rng_;
    return os.str();
  }

  /// Restores a state written by state(); throws mc::Error ([mc.sampling.bad_state]) when the
  /// text is not one.
  void restore(const std::string& text) {
    std::istringstream is(text);
    std::mt19937_64 r;
    is >> r;
    MC_EXPECTS(!is.fail(), Errc::kFormat, "[mc.sampling.bad_state] the saved sampler state (",
               text.size(), " bytes) is not a std::mt19937_64 state");
    rng_ = r;
  }

 private:
  std::mt19937_64 rng_;
  std::vector<TokenId> order_;
  std::vector<double> probs_;
};

}  // namespace mc
