// SPDX-License-Identifier: Apache-2.0
// RecencyOnly: MegaContext without LensNet (an ablation). The window holds as much history as
// fits at the coarsest detail, and the budget left buys detail for the newest blocks first, so
// detail falls with distance (tokens, then LOD1, LOD2, ...). Scores are ignored. See
// docs/concepts/baselines.md.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "megacontext/config.hpp"
#include "megacontext/focus_policy.hpp"
#include "megacontext/policies/block_layout.hpp"

namespace mc {

/// Detail by recency alone: the newest LOD1 blocks that fit show as tokens.
struct RecencyOnly {
  std::int64_t max_blocks = -1;  ///< most blocks shown as tokens (-1: as many as fit)

  /// See FocusLayoutPolicy.
  template <ConfigType C>
  void layout(const FocusLayoutInput<C>& in, std::vector<Node>& window) {
    using B = BlockLayout<C>;
    const auto f = B::frame(in);
    B::candidates(f.begin, f.tail, ranked_);
    std::reverse(ranked_.begin(), ranked_.end());  // newest first
    if (ranked_.size() > B::most_blocks(f)) ranked_.resize(B::most_blocks(f));
    B::lay_out(f, ranked_, max_blocks, chosen_, window);
  }

 private:
  std::vector<std::int64_t> ranked_, chosen_;
};

}  // namespace mc
