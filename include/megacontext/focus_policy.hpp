// SPDX-License-Identifier: Apache-2.0
// The FocusPolicy concept: how a FocusAllocator chooses among legal edits. The allocator does
// every rule that keeps the working context valid (protected recent tokens and sinks, cooldown,
// thresholds, aligned sibling groups) and hands the policy two lists of candidates; the policy
// picks which to apply within the budget and the edit cap. Users write their own by satisfying
// the concept; policies/greedy_threshold.hpp and policies/budget_optimal.hpp are the shipped ones.
// A second kind, FocusLayoutPolicy, says instead which tiling the window should have (the
// baselines of docs/concepts/baselines.md: truncation, sinks + window, block retrieval, ...).
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

/// What a layout policy sees at one step.
template <ConfigType C>
struct FocusLayoutInput {
  const WorkingContext<C>* wc = nullptr;  ///< the context now (its sinks, window and entries)
  std::span<const float> scores;          ///< a score per entry of *wc (a policy may ignore them)
  std::int64_t num_tokens = 0;            ///< history length
  std::int64_t w_max = 0;                 ///< most entries, sinks included
  std::int64_t sink_end = 0;              ///< the sinks are tokens [0, sink_end); the window follows
  std::int64_t recent_tokens = 0;         ///< tokens [num_tokens - recent_tokens, num_tokens) must
                                          ///< be LOD0 entries of the window
};

/// A layout policy: `layout(input, window)` appends to `window` the nodes the context should show
/// after its sinks, in time order: a tiling of [b, num_tokens) for some b >= sink_end (history
/// before b leaves the window), each node aligned and complete, at most w_max - sink_end nodes,
/// the newest recent_tokens as LOD0. The allocator checks all of it, then moves the context there
/// (WorkingContext::assign_window); thresholds, cooldown and max_edits do not apply.
template <class P, class C>
concept FocusLayoutPolicy =
    ConfigType<C> && requires(P& p, const FocusLayoutInput<C>& in, std::vector<Node>& window) {
      p.layout(in, window);
    };

}  // namespace mc
