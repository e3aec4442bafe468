// SPDX-License-Identifier: Apache-2.0
// BudgetOptimal: maximises the summed score gain of the chosen edits under the budget and the
// edit cap. Every expansion adds K-1 entries and every collapse frees K-1, so with gains
// g = score (expansions) and g = -score (collapses), the best plan with e expansions and c
// collapses takes the e best expansions and the c best collapses; the policy tries every e and
// keeps the best feasible (e, c). This is the "swap an expansion for a collapse while it
// improves" search done exactly, in O(candidates + max_edits log max_edits).
#pragma once

#include <algorithm>
#include <cstdint>
#include <span>
#include <vector>

#include "megacontext/focus_policy.hpp"

namespace mc {

/// Chooses the feasible set of edits with the largest total gain (see file comment).
struct BudgetOptimal {
  /// See FocusPolicy.
  void plan(const FocusPlanInput& in, std::vector<FocusCandidate>& chosen) {
    const std::int64_t cap = std::max(0, in.max_edits);
    const std::int64_t slots = in.k > 1 ? in.free_entries / (in.k - 1) : 0;  // net expansions
    // Only the best `cap` collapses can be chosen, and at most slots + (collapses) expansions
    // fit (e - c <= slots below): select those (O(n)), then sort them. The best m of a strict
    // order, sorted, are the first m of the whole list sorted, so this changes no choice.
    const auto top = [](std::span<const FocusCandidate> in_list, std::int64_t m,
                        std::vector<FocusCandidate>& v, auto better) {
      v.clear();
      m = std::clamp<std::int64_t>(m, 0, static_cast<std::int64_t>(in_list.size()));
      if (m == 0) return;
      v.assign(in_list.begin(), in_list.end());
      std::nth_element(v.begin(), v.begin() + m, v.end(), better);
      v.resize(static_cast<std::size_t>(m));
      std::sort(v.begin(), v.end(), better);
    };
    const auto n_col = static_cast<std::int64_t>(in.collapses.size());
    top(in.expansions, std::min(cap, slots + n_col), exp_,
        [](const FocusCandidate& a, const FocusCandidate& b) {
          return a.score != b.score ? a.score > b.score : a.edit.pos < b.edit.pos;
        });
    top(in.collapses, cap, col_, [](const FocusCandidate& a, const FocusCandidate& b) {
      return a.score != b.score ? a.score < b.score : a.edit.pos < b.edit.pos;
    });
    const auto E = static_cast<std::int64_t>(exp_.size()), Cn = static_cast<std::int64_t>(col_.size());
    // Prefix gains.
    gain_e_.assign(static_cast<std::size_t>(E) + 1, 0.0);
    gain_c_.assign(static_cast<std::size_t>(Cn) + 1, 0.0);
    for (std::int64_t i = 0; i < E; ++i) gain_e_[i + 1] = gain_e_[i] + exp_[i].score;
    for (std::int64_t i = 0; i < Cn; ++i) gain_c_[i + 1] = gain_c_[i] - col_[i].score;
    double best = -1.0;
    std::int64_t best_e = 0, best_c = 0;
    for (std::int64_t e = 0; e <= std::min(E, cap); ++e) {
      // Every collapse has positive gain, so take as many as the cap leaves room for; the
      // budget needs at least e - slots of them.
      const std::int64_t c = std::min(Cn, cap - e);
      if (e - c > slots) break;  // larger e needs even more collapses than the cap allows
      const double g = gain_e_[e] + gain_c_[c];
      if (g > best) {
        best = g;
        best_e = e;
        best_c = c;
      }
    }
    chosen.insert(chosen.end(), exp_.begin(), exp_.begin() + best_e);
    chosen.insert(chosen.end(), col_.begin(), col_.begin() + best_c);
  }

 private:
  std::vector<FocusCandidate> exp_, col_;
  std::vector<double> gain_e_, gain_c_;
};

}  // namespace mc
