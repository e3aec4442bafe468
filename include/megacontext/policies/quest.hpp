// SPDX-License-Identifier: Apache-2.0
// Quest: query-aware page selection. Each LOD1 block (a page of K tokens) is summarised by the
// elementwise minimum and maximum of its keys; sum_i max(q_i * min_i, q_i * max_i) bounds q . k
// from above for every key of the page, and the pages with the highest bound that fit show as
// tokens. The rest of the history stays at its coarsest gists (or leaves the window). The caller
// hands in plain arrays; no CUDA. See docs/concepts/baselines.md.
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

/// Per LOD1 block b: min_keys[b*d, b*d + d) and max_keys[...] are the elementwise min and max of
/// its K keys. Blocks >= num_blocks have no summary (never shown).
struct PageKeyBounds {
  std::int64_t d = 0;               ///< key dimension
  std::int64_t num_blocks = 0;      ///< blocks described
  std::span<const float> min_keys;  ///< [num_blocks, d]
  std::span<const float> max_keys;  ///< [num_blocks, d]

  /// Throws mc::Error unless the shapes agree with each other and with a query of `query_dim`.
  void validate(std::int64_t query_dim) const {
    const auto n = static_cast<std::size_t>(std::max<std::int64_t>(0, num_blocks * d));
    MC_EXPECTS(d >= 1 && num_blocks >= 0 && min_keys.size() == n && max_keys.size() == n &&
                   query_dim == d,
               Errc::kInvalidArgument, "[mc.focus.bad_block_keys] page bounds [", num_blocks, ", ",
               d, "] with ", min_keys.size(), " / ", max_keys.size(),
               " floats and a query of ", query_dim, " (need num_blocks * d each, query of d)");
  }
};

/// Quest page selection; set `pages` and `query` before every step.
struct Quest {
  PageKeyBounds pages;           ///< min/max key summary of every complete block
  std::span<const float> query;  ///< [d]: the current query
  std::int64_t max_blocks = -1;  ///< most pages shown as tokens (-1: as many as fit)

  /// Upper bound of query . k over the keys of block b.
  double bound(std::int64_t b) const {
    double s = 0;
    for (std::int64_t i = 0; i < pages.d; ++i) {
      const double q = query[static_cast<std::size_t>(i)];
      const auto at = static_cast<std::size_t>(b * pages.d + i);
      s += std::max(q * pages.min_keys[at], q * pages.max_keys[at]);
    }
    return s;
  }

  /// See FocusLayoutPolicy.
  template <ConfigType C>
  void layout(const FocusLayoutInput<C>& in, std::vector<Node>& window) {
    pages.validate(static_cast<std::int64_t>(query.size()));
    using B = BlockLayout<C>;
    const auto f = B::frame(in);
    B::candidates(f.begin, f.tail, ranked_);
    score_.assign(static_cast<std::size_t>(pages.num_blocks), 0.0);
    for (const std::int64_t b : ranked_)
      if (b < pages.num_blocks) score_[static_cast<std::size_t>(b)] = bound(b);
    rank_blocks(ranked_, pages.num_blocks, score_, B::most_blocks(f));
    B::lay_out(f, ranked_, max_blocks, chosen_, window);
  }

 private:
  std::vector<std::int64_t> ranked_, chosen_;
  std::vector<double> score_;
};

}  // namespace mc
