// SPDX-License-Identifier: Apache-2.0
// BlockRetrieval: the InfLLM-style baseline. Each LOD1 block (K tokens) is summarised by the keys
// of its r most-attended tokens (its representatives, chosen by the caller from the base model's
// attention); a block's relevance to the current query q is sum_j q . k_j over them. The most
// relevant blocks that fit show as tokens; the rest of the history stays at its coarsest gists,
// or leaves the window when even those do not fit. No CUDA: the caller hands in plain arrays.
// See docs/concepts/baselines.md.
#pragma once

#include <algorithm>
#include <cstdint>
#include <span>
#include <vector>

#include "megacontext/config.hpp"
#include "megacontext/error.hpp"
#include "megacontext/focus_policy.hpp"
#include "megacontext/policies/block_layout.hpp"

namespace mc {

/// Representative keys per LOD1 block: block b (tokens [b*K, (b+1)*K)) has r keys of dim d at
/// keys[((b * r) + j) * d, ... + d) for j in [0, r). Blocks >= num_blocks have none (never shown).
struct RepresentativeKeys {
  std::int64_t d = 0;           ///< key dimension
  std::int32_t r = 0;           ///< representatives per block
  std::int64_t num_blocks = 0;  ///< blocks described
  std::span<const float> keys;  ///< [num_blocks, r, d], row-major

  /// Throws mc::Error unless the shapes agree with each other and with a query of `query_dim`.
  void validate(std::int64_t query_dim) const {
    MC_EXPECTS(d >= 1 && r >= 1 && num_blocks >= 0 &&
                   static_cast<std::int64_t>(keys.size()) == num_blocks * r * d && query_dim == d,
               Errc::kInvalidArgument, "[mc.focus.bad_block_keys] representative keys [",
               num_blocks, ", ", r, ", ", d, "] with ", keys.size(), " floats and a query of ",
               query_dim, " (need d >= 1, r >= 1, num_blocks * r * d floats, query of d)");
  }
};

/// InfLLM-style block retrieval; set `keys` and `query` before every step.
struct BlockRetrieval {
  RepresentativeKeys keys;       ///< the representatives of every complete block
  std::span<const float> query;  ///< [d]: the current query (a sum of several is fine: linear)
  std::int64_t max_blocks = -1;  ///< most blocks shown as tokens (-1: as many as fit)

  /// Relevance of block b: sum over its representatives of query . key.
  double relevance(std::int64_t b) const {
    double s = 0;
    for (std::int32_t j = 0; j < keys.r; ++j) {
      const float* k = keys.keys.data() + (b * keys.r + j) * keys.d;
      for (std::int64_t i = 0; i < keys.d; ++i) s += static_cast<double>(query[static_cast<std::size_t>(i)]) * k[i];
    }
    return s;
  }

  /// See FocusLayoutPolicy.
  template <ConfigType C>
  void layout(const FocusLayoutInput<C>& in, std::vector<Node>& window) {
    keys.validate(static_cast<std::int64_t>(query.size()));
    using B = BlockLayout<C>;
    const auto f = B::frame(in);
    B::candidates(f.begin, f.tail, ranked_);
    score_.assign(static_cast<std::size_t>(keys.num_blocks), 0.0);
    for (const std::int64_t b : ranked_)
      if (b < keys.num_blocks) score_[static_cast<std::size_t>(b)] = relevance(b);
    rank_blocks(ranked_, keys.num_blocks, score_, B::most_blocks(f));
    B::lay_out(f, ranked_, max_blocks, chosen_, window);
  }

 private:
  std::vector<std::int64_t> ranked_, chosen_;
  std::vector<double> score_;
};

}  // namespace mc
