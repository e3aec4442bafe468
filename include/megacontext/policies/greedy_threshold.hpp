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
    all_.assign(in.expansions.begin(), in.expansions.end());
    all_.insert(all_.end(), in.collapses.begin(), in.collapses.end());
    const auto by_abs = [](const FocusCandidate& a, const FocusCandidate& b) {
      const float x = std::abs(a.score), y = std::abs(b.score);
      return x != y ? x > y : a.edit.pos < b.edit.pos;  // ties: older first, deterministic
    };
    const auto cap = static_cast<std::size_t>(std::max(0, in.max_edits));
    std::int64_t free = in.free_entries;
    // Only the top `cap` by |score| can ever be taken... unless expansions get skipped for
    // budget, so sort fully when there are few candidates and partially otherwise.
    std::sort(all_.begin(), all_.end(), by_abs);
    std::size_t taken = 0;
    for (const FocusCandidate& c : all_) {
      if (taken == cap) break;
      if (c.edit.kind == FocusEdit::kExpand) {
        if (free < in.k - 1) continue;
        free -= in.k - 1;
      } else {
        free += in.k - 1;
      }
      chosen.push_back(c);
      ++taken;
    }
  }

 private:
  std::vector<FocusCandidate> all_;
};

}  // namespace mc
