// SPDX-License-Identifier: Apache-2.0
// The FocusPolicy concept: how a FocusAllocator chooses among legal edits. The allocator does
// every rule that keeps the working context valid (protected recent tokens and sinks, cooldown,
// thresholds, aligned sibling groups) and hands the policy two lists of candidates; the policy
// picks which to apply within the budget and the edit cap. Users write their own by satisfying
// the concept; policies/greedy_threshold.hpp and policies/budget_optimal.hpp are the shipped ones.
#pragma once

#include <concepts>
#include <cstdint>
#include <span>
#include <vector>

#include "megacontext/working_context.hpp"

namespace mc {

/// A legal edit the policy may choose, with the score that motivates it.
struct FocusCandidate {
  float score = 0;         ///< expand: the entry's score (> expand threshold); collapse: the
                           ///< mean score of the K siblings (< collapse threshold)
  FocusEdit edit;          ///< what to do and where
};

/// What a policy sees at one step.
struct FocusPlanInput {
  std::span<const FocusCandidate> expansions;  ///< eligible expansions, in position order
  std::span<const FocusCandidate> collapses;   ///< eligible collapses, in position order, disjoint
  std::int64_t free_entries = 0;  ///< w_max - size: entries the edits may add in total
  std::int32_t max_edits = 0;     ///< most edits this step
  std::int32_t k = 0;             ///< block size: an expansion adds k-1 entries, a collapse frees k-1
};

/// A focus policy: `plan(input, chosen)` appends to `chosen` the candidates to apply. The result
/// must keep `(k-1) * (#expansions - #collapses) <= free_entries` and `chosen.size() <=
/// max_edits`; the allocator checks both and throws if a policy breaks them.
template <class P>
concept FocusPolicy = requires(P& p, const FocusPlanInput& in, std::vector<FocusCandidate>& out) {
  p.plan(in, out);
};

}  // namespace mc
