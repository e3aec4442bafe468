// SPDX-License-Identifier: Apache-2.0
// GreedyThreshold: the original proof of concept's policy. All candidates (expansions above the
// expand threshold, collapses below the collapse threshold) are ranked by |score| and taken in
// that order while the edit cap and the budget allow; an expansion that does not fit is skipped.
#pragma once

#include <algorithm>
#include <cmath>
#include <vector>

#include "megacontext/focus_policy.hpp"

namespace mc {

/// Ranks every candidate by |score| and applies greedily within budget and edit cap.
struct GreedyThreshold {
  /// See FocusPolicy.
  void plan(const FocusPlanInput& in, std::vector<FocusCandidate>& chosen) {
    // Nothing fits and nothing can free room: the first candidate popped below would be an
    // expansion that does not fit, which ends the walk.
    if (in.max_edits <= 0 || (in.collapses.empty() && in.free_entries < in.k - 1)) return;
    all_.assign(in.expansions.begin(), in.expansions.end());
    all_.insert(all_.end(), in.collapses.begin(), in.collapses.end());
    // Heap order: largest |score| on top; ties go to the older (smaller position) entry.
    const auto below = [](const FocusCandidate& a, const FocusCandidate& b) {
      const float x = std::abs(a.score), y = std::abs(b.score);
      return x != y ? x < y : a.edit.pos > b.edit.pos;
    };
    // A heap, not a sort: a step consumes at most max_edits candidates (plus skipped expansions),
    // so this is O(candidates + consumed * log candidates).
    std::make_heap(all_.begin(), all_.end(), below);
    std::int64_t free = in.free_entries;
    auto collapses_left = static_cast<std::int64_t>(in.collapses.size());
    std::int32_t taken = 0;
    auto end = all_.end();
    while (taken < in.max_edits && end != all_.begin()) {
      std::pop_heap(all_.begin(), end, below);
      --end;
      const FocusCandidate& c = *end;
      if (c.edit.kind == FocusEdit::kExpand) {
        if (free < in.k - 1) {
          if (collapses_left == 0) break;  // nothing can free room any more
          continue;                        // skipped: does not fit now
        }
        free -= in.k - 1;
      } else {
        free += in.k - 1;
        --collapses_left;
      }
      chosen.push_back(c);
      ++taken;
    }
  }

 private:
  std::vector<FocusCandidate> all_;
};

}  // namespace mc
