// SPDX-License-Identifier: Apache-2.0
// OracleTopK: an upper bound for any scorer. For every block that could show as tokens it asks
// the caller's evaluator for the NLL of the next H tokens with that block expanded (and nothing
// else), and expands the blocks whose expansion lowers the NLL most, as many as fit. Brute force
// (one model evaluation per candidate block), so for short histories and small models: it
// measures what focus could gain, not a policy to deploy. See docs/concepts/baselines.md.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "megacontext/config.hpp"
#include "megacontext/error.hpp"
#include "megacontext/focus_policy.hpp"
#include "megacontext/policies/block_layout.hpp"

namespace mc {

/// Expands the blocks with the largest measured NLL drop; set `nll` before stepping.
struct OracleTopK {
  /// NLL of the next H tokens when the model sees the sinks followed by `window` (a tiling as
  /// FocusLayoutPolicy describes). Called once for the coarsest window and once per candidate.
  std::function<double(std::span<const Node> window)> nll;
  std::int64_t max_blocks = -1;  ///< most blocks expanded (-1: as many as fit)
  /// Candidate blocks, newest first (-1: all); bounds the evaluations on long histories.
  std::int64_t max_candidates = -1;

  /// See FocusLayoutPolicy.
  template <ConfigType C>
  void layout(const FocusLayoutInput<C>& in, std::vector<Node>& window) {
    MC_EXPECTS(static_cast<bool>(nll), Errc::kInvalidArgument,
               "[mc.focus.oracle_without_nll] OracleTopK needs an nll evaluator");
    using B = BlockLayout<C>;
    const auto f = B::frame(in);
    B::candidates(f.begin, f.tail, ranked_);
    std::reverse(ranked_.begin(), ranked_.end());
    if (max_candidates >= 0 && static_cast<std::int64_t>(ranked_.size()) > max_candidates)
      ranked_.resize(static_cast<std::size_t>(max_candidates));
    probe_.clear();
    B::tile(f.begin, f.tail, f.end, {}, &probe_);
    const double base = nll(probe_);
    // Gain of each block alone; only blocks that lower the NLL are worth their entries.
    gain_.clear();
    for (const std::int64_t b : ranked_) {
      probe_.clear();
      const std::int64_t one[] = {b};
      B::tile(f.begin, f.tail, f.end, one, &probe_);
      gain_.push_back({base - nll(probe_), b});
    }
    std::erase_if(gain_, [](const Gain& g) { return !(g.drop > 0); });
    std::sort(gain_.begin(), gain_.end(), [](const Gain& a, const Gain& b) {
      return a.drop != b.drop ? a.drop > b.drop : a.block < b.block;
    });
    ranked_.clear();
    for (const Gain& g : gain_) ranked_.push_back(g.block);
    if (ranked_.size() > B::most_blocks(f)) ranked_.resize(B::most_blocks(f));
    B::lay_out(f, ranked_, max_blocks, chosen_, window);
  }

 private:
  struct Gain {
    double drop;
    std::int64_t block;
  };
  std::vector<std::int64_t> ranked_, chosen_;
  std::vector<Gain> gain_;
  std::vector<Node> probe_;
};

}  // namespace mc
