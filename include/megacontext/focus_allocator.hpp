// SPDX-License-Identifier: Apache-2.0
// The focus allocator: turns LensNet's per-entry scores into legal edits of the working context
// under the budget W_max. It owns the rules every policy obeys (the newest `recent_tokens` and
// the sinks stay at LOD0, hysteresis through separate thresholds plus a cooldown, at most
// `max_edits` score-driven edits per step, only complete aligned sibling groups collapse, never
// more than W_max entries) and delegates the choice among legal edits to a FocusPolicy.
// Data flow: Tree -> WorkingContext -> LensNet scores -> FocusAllocator::step -> WorkingContext.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <span>
#include <vector>

#include "megacontext/config.hpp"
#include "megacontext/error.hpp"
#include "megacontext/focus_policy.hpp"
#include "megacontext/lod.hpp"
#include "megacontext/working_context.hpp"

namespace mc {

/// Run-time options of a FocusAllocator.
struct FocusOptions {
  std::int64_t recent_tokens = 128;     ///< newest tokens that always stay at LOD0
  float expand_threshold = 0.25f;       ///< expand a gist whose score is above this
  float collapse_threshold = -0.25f;    ///< collapse siblings whose mean score is below this
  std::int32_t cooldown_steps = 4;      ///< steps before an entry that changed may change again
  std::int32_t max_edits = 16;          ///< most score-driven edits per step
  std::int64_t restore_headroom = -1;   ///< free entries needed to bring evicted history back
                                        ///< (-1: 2*K); keeps restore/evict from alternating
  bool residency_stats = true;          ///< compute residency mean/p95 in every report (O(W))

  /// Throws mc::Error naming the first bad field; `wc` and K, Depth bound what is possible.
  void validate(const WorkingContextOptions& wc, int k, int depth) const {
    MC_EXPECTS(recent_tokens >= 0, Errc::kInvalidArgument,
               "[mc.focus.bad_recent_tokens] recent_tokens = ", recent_tokens, " must be >= 0");
    MC_EXPECTS(std::isfinite(expand_threshold) && std::isfinite(collapse_threshold) &&
                   collapse_threshold < expand_threshold,
               Errc::kInvalidArgument, "[mc.focus.bad_thresholds] collapse_threshold = ",
               collapse_threshold, " must be below expand_threshold = ", expand_threshold,
               " (hysteresis)");
    MC_EXPECTS(collapse_threshold < 0 && expand_threshold > 0, Errc::kInvalidArgument,
               "[mc.focus.bad_thresholds] need collapse_threshold < 0 < expand_threshold, got ",
               collapse_threshold, " and ", expand_threshold);
    MC_EXPECTS(cooldown_steps >= 0, Errc::kInvalidArgument,
               "[mc.focus.bad_cooldown] cooldown_steps = ", cooldown_steps, " must be >= 0");
    MC_EXPECTS(max_edits >= 0, Errc::kInvalidArgument, "[mc.focus.bad_max_edits] max_edits = ",
               max_edits, " must be >= 0");
    // The protected entries (sinks, recent tokens, and up to K-1 incomplete siblings per level
    // at both ends of the window) must fit, or no sequence of edits can respect w_max.
    const std::int64_t need = wc.sink_tokens + recent_tokens + 3 * std::int64_t{depth} * k;
    MC_EXPECTS(wc.w_max >= need, Errc::kInvalidArgument, "[mc.focus.bad_w_max] w_max = ",
               wc.w_max, " is below sink_tokens + recent_tokens + 3*Depth*K = ", need);
  }
};

/// What one admit() or step() did, for telemetry.
struct FocusReport {
  std::int32_t step = 0;              ///< allocator step number
  std::int32_t expansions = 0;        ///< score-driven expansions
  std::int32_t collapses = 0;         ///< score-driven collapses
  std::int32_t forced_collapses = 0;  ///< collapses made to restore the budget
  std::int32_t evictions = 0;         ///< oldest entries that left the window
  std::int32_t restores = 0;          ///< evicted nodes brought back
  std::int64_t size = 0;              ///< entries after the step
  std::int64_t w_max = 0;             ///< budget
  std::int64_t fresh_entries = 0;     ///< entries the step created (rows to re-assemble)
  double budget_use = 0;              ///< size / w_max
  double swap_rate = 0;               ///< fresh_entries / size
  double residency_mean = 0;          ///< mean steps an entry has stayed unchanged
  double residency_p95 = 0;           ///< 95th percentile of the same
};

/// Applies a FocusPolicy to a WorkingContext of Config C under the rules in FocusOptions.
template <ConfigType C, FocusPolicy Policy>
class FocusAllocator {
 public:
  static constexpr int K = C::K;
  static constexpr int Depth = C::Depth;
  using L = Lod<C>;

  /// An allocator for contexts built with `wc_opts`; validates both option sets.
  FocusAllocator(const FocusOptions& opts, const WorkingContextOptions& wc_opts,
                 Policy policy = {})
      : opts_(opts), wc_opts_(wc_opts), policy_(std::move(policy)) {
    wc_opts_.validate();
    opts_.validate(wc_opts_, K, Depth);
    if (opts_.restore_headroom < 0) opts_.restore_headroom = 2 * K;
  }

  /// The options in force.
  const FocusOptions& options() const { return opts_; }
  /// Number of the next step.
  std::int32_t step_number() const { return step_; }
  /// Continues the step numbering of a saved session at `step` (cooldowns compare it with the
  /// entries' changed_at, so a resumed session must restore both).
  void resume_at(std::int32_t step) {
    MC_EXPECTS(step >= 0, Errc::kInvalidArgument, "[mc.focus.bad_step] resume_at(", step,
               "); must be >= 0");
    step_ = step;
  }
  /// The policy object.
  Policy& policy() { return policy_; }

  /// Covers a history grown to `num_tokens` and restores the budget: new tokens enter as LOD0
  /// when recent and as the coarsest complete nodes otherwise; while over w_max, the collapse
  /// groups with the lowest `scores` (the last LensNet scores of the current entries; missing
  /// ones count as 0) are collapsed, and only when none is left the oldest entries are evicted.
  FocusReport admit(WorkingContext<C>& wc, std::int64_t num_tokens,
                    std::span<const float> scores = {}) {
    check_context(wc);
    wc.begin_patch();
    FocusReport r = start_report();
    wc.extend(num_tokens, num_tokens - opts_.recent_tokens, step_);
    scratch_scores_.assign(scores.begin(), scores.end());
    scratch_scores_.resize(static_cast<std::size_t>(wc.size()), 0.0f);
    enforce_budget(wc, r);
    return finish(wc, r);
  }

  /// One refocus: `scores[i]` (in [-1, 1], one per entry) says whether entry i wants more detail
  /// (> 0) or less (< 0). Collects the legal edits, lets the policy choose, applies them in one
  /// pass, and brings evicted history back when there is room.
  ///
  /// Evicted history returns when focus asks for it: `restore_score` is the score of the newest
  /// evicted node (the runtime can show LensNet that node's gist beside the context; NaN = no
  /// request). Above the expand threshold, that node comes back before the window, paid for if
  /// needed by collapsing the least wanted sibling group whose mean score is below it.
  FocusReport step(WorkingContext<C>& wc, std::span<const float> scores,
                   float restore_score = std::numeric_limits<float>::quiet_NaN()) {
    check_context(wc);
    MC_EXPECTS(static_cast<std::int64_t>(scores.size()) == wc.size(), Errc::kInvalidArgument,
               "[mc.focus.bad_scores] got ", scores.size(), " scores for ", wc.size(),
               " entries");
    wc.begin_patch();
    FocusReport r = start_report();
    if (wc.size() > wc_opts_.w_max) {  // extended without admit(): restore the budget first
      scratch_scores_.assign(scores.begin(), scores.end());
      enforce_budget(wc, r);
      scores = scratch_scores_;
    }
    std::int32_t cap = opts_.max_edits;
    if (restore_score > opts_.expand_threshold && cap > 0 && wc.window_begin() > wc.sink_end()) {
      scratch_scores_.assign(scores.begin(), scores.end());
      if (restore_requested(wc, restore_score, r)) {
        scores = scratch_scores_;
        --cap;
      }
    }
    collect(wc, scores, /*forced=*/false);
    chosen_.clear();
    FocusPlanInput in{expansions_, collapses_, wc_opts_.w_max - wc.size(), cap, K};
    policy_.plan(in, chosen_);
    // A user policy is code we do not control: check what it chose before touching anything.
    std::int64_t net = 0;
    for (const auto& c : chosen_) net += c.edit.kind == FocusEdit::kExpand ? 1 : -1;
    MC_EXPECTS(static_cast<std::int64_t>(chosen_.size()) <= cap &&
                   net * (K - 1) <= in.free_entries,
               Errc::kState, "[mc.focus.policy_broke_rules] the policy chose ", chosen_.size(),
               " edits (max ", opts_.max_edits, ") adding ", net * (K - 1), " entries (free ",
               in.free_entries, ")");
    edits_.clear();
    for (const auto& c : chosen_) {
      edits_.push_back(c.edit);
      (c.edit.kind == FocusEdit::kExpand ? r.expansions : r.collapses)++;
    }
    std::sort(edits_.begin(), edits_.end(),
              [](const FocusEdit& a, const FocusEdit& b) { return a.pos < b.pos; });
    wc.apply(edits_, step_);
    // Evicted history returns, coarsest first, while there is room to spare (bounded per step
    // like the other edits, since each restore shifts the window).
    while (r.restores < std::max(1, cap) &&
           wc_opts_.w_max - wc.size() >= opts_.restore_headroom && wc.restore(step_))
      ++r.restores;
    return finish(wc, r);
  }

 private:
  void check_context(const WorkingContext<C>& wc) const {
    MC_EXPECTS(wc.options().w_max == wc_opts_.w_max &&
                   wc.options().sink_tokens == wc_opts_.sink_tokens,
               Errc::kInvalidArgument, "[mc.focus.context_mismatch] the working context has w_max = ",
               wc.options().w_max, ", sink_tokens = ", wc.options().sink_tokens,
               "; this allocator was made for ", wc_opts_.w_max, ", ", wc_opts_.sink_tokens);
  }

  FocusReport start_report() const {
    FocusReport r;
    r.step = step_;
    r.w_max = wc_opts_.w_max;
    return r;
  }

  // Gathers legal expansions and collapse groups. Not forced: thresholds and cooldown apply.
  // Forced (budget restore): every unprotected complete group is a candidate, cooldown ignored.
  // This is the allocator's hot loop: one pass over the window with no per-entry span maths.
  void collect(const WorkingContext<C>& wc, std::span<const float> scores, bool forced) {
    expansions_.clear();
    collapses_.clear();
    const std::int64_t n = wc.size();
    // Every score is checked, protected ones too: a NaN anywhere means a broken scorer. A
    // branch-free reduction first (vectorises), the position only when something is wrong.
    int bad = 0;
    const float* sp = scores.data();
    for (std::int64_t i = 0; i < n; ++i) bad |= !(std::fabs(sp[i]) <= 1.0f);  // NaN fails too
    if (bad) {
      for (std::int64_t i = 0; i < n; ++i) {
        const float x = scores[static_cast<std::size_t>(i)];
        if (!(x >= -1.0f && x <= 1.0f))
          throw Error(Errc::kInvalidArgument,
                      detail::concat("[mc.focus.bad_scores] score of entry ", i, " is ", x,
                                     "; scores must lie in [-1, 1] (NaN is refused)"));
      }
    }
    // Entries from `protect_pos` on overlap the newest recent_tokens: find it from the end.
    const std::int64_t protect_from = wc.num_tokens() - opts_.recent_tokens;
    const std::int64_t first = wc.first_window_pos();
    std::int64_t protect_pos = n;
    while (protect_pos > first && wc.span(protect_pos - 1).end > protect_from) --protect_pos;
    const std::int32_t cooled = step_ - opts_.cooldown_steps;  // changed_at <= cooled: eligible
    const float hi = opts_.expand_threshold, lo = opts_.collapse_threshold;
    const WcEntry* entries = wc.entries().data();
    const float* sc = scores.data();
    for (std::int64_t i = first; i < protect_pos; ++i) {
      const WcEntry& e = entries[i];
      const float s = sc[i];
      if (!forced && e.lod >= 1 && s > hi && e.changed_at <= cooled)
        expansions_.push_back({s, {FocusEdit::kExpand, i}});
      // A collapse group starts at an aligned first sibling whose K-1'th successor is its last
      // sibling (see WorkingContext::can_collapse); the whole group must be unprotected.
      if (e.lod < Depth && e.index % K == 0 && i + K <= protect_pos) {
        const WcEntry& last = entries[i + K - 1];
        if (last.lod != e.lod || last.index != e.index + K - 1) continue;
        float sum = 0, top = -2.0f;
        bool cool = true;
        for (std::int64_t j = i; j < i + K; ++j) {
          sum += sc[j];
          top = std::max(top, sc[j]);
          cool = cool && entries[j].changed_at <= cooled;
        }
        const float mean = sum / static_cast<float>(K);
        // A sibling that asks for detail vetoes the collapse, which also keeps collapse groups
        // disjoint from expansion candidates.
        if (forced || (cool && mean < lo && !(top > hi)))
          collapses_.push_back({mean, {FocusEdit::kCollapse, i}});
      }
    }
  }

  void enforce_budget(WorkingContext<C>& wc, FocusReport& r) {
    while (wc.size() > wc_opts_.w_max) {
      collect(wc, scratch_scores_, /*forced=*/true);
      if (collapses_.empty()) {
        // Nothing left to collapse: the oldest history leaves the window (it stays in the tree).
        while (wc.size() > wc_opts_.w_max && wc.evict_oldest()) {
          ++r.evictions;
          scratch_scores_.erase(scratch_scores_.begin() + wc.first_window_pos());
        }
        MC_EXPECTS(wc.size() <= wc_opts_.w_max, Errc::kState,
                   "[mc.focus.over_budget] cannot bring ", wc.size(), " entries under w_max = ",
                   wc_opts_.w_max);
        break;
      }
      // Least wanted first; take just enough to fit.
      std::sort(collapses_.begin(), collapses_.end(), [](const auto& a, const auto& b) {
        return a.score != b.score ? a.score < b.score : a.edit.pos < b.edit.pos;
      });
      const std::int64_t over = wc.size() - wc_opts_.w_max;
      const auto take = static_cast<std::size_t>(
          std::min<std::int64_t>((over + K - 2) / (K - 1), static_cast<std::int64_t>(collapses_.size())));
      edits_.clear();
      for (std::size_t i = 0; i < take; ++i) edits_.push_back(collapses_[i].edit);
      std::sort(edits_.begin(), edits_.end(),
                [](const FocusEdit& a, const FocusEdit& b) { return a.pos < b.pos; });
      // Scores follow their entries: a collapsed group keeps its mean.
      rebuild_scores(edits_);
      wc.apply(edits_, step_);
      r.forced_collapses += static_cast<std::int32_t>(take);
    }
  }

  // Restores the newest evicted node for a request scored `want`, collapsing the least wanted
  // cool group first when the context is full. Keeps scratch_scores_ aligned with the entries.
  bool restore_requested(WorkingContext<C>& wc, float want, FocusReport& r) {
    if (wc.size() >= wc_opts_.w_max) {
      collect(wc, scratch_scores_, /*forced=*/true);
      const std::int32_t cooled = step_ - opts_.cooldown_steps;
      const FocusCandidate* best = nullptr;
      for (const auto& c : collapses_) {
        bool cool = true;
        for (std::int64_t j = c.edit.pos; j < c.edit.pos + K; ++j)
          cool = cool && wc[j].changed_at <= cooled;
        if (cool && c.score < want && (!best || c.score < best->score)) best = &c;
      }
      if (!best) return false;
      const FocusEdit e = best->edit;
      rebuild_scores(std::span(&e, 1));
      wc.apply(std::span(&e, 1), step_);
      ++r.collapses;
    }
    if (!wc.restore(step_)) return false;
    scratch_scores_.insert(scratch_scores_.begin() + wc.first_window_pos(), want);
    ++r.restores;
    return true;
  }

  void rebuild_scores(std::span<const FocusEdit> edits) {
    std::vector<float>& out = score_tmp_;
    out.clear();
    std::int64_t src = 0;
    for (const FocusEdit& e : edits) {
      out.insert(out.end(), scratch_scores_.begin() + src, scratch_scores_.begin() + e.pos);
      float sum = 0;
      for (std::int64_t j = e.pos; j < e.pos + K; ++j) sum += scratch_scores_[static_cast<std::size_t>(j)];
      out.push_back(sum / static_cast<float>(K));
      src = e.pos + K;
    }
    out.insert(out.end(), scratch_scores_.begin() + src, scratch_scores_.end());
    scratch_scores_.swap(out);
  }

  FocusReport finish(const WorkingContext<C>& wc, FocusReport& r) {
    r.size = wc.size();
    r.budget_use = static_cast<double>(r.size) / static_cast<double>(wc_opts_.w_max);
    r.fresh_entries = wc.patch().fresh_entries();
    r.swap_rate = r.size > 0 ? static_cast<double>(r.fresh_entries) / static_cast<double>(r.size) : 0;
    if (opts_.residency_stats && r.size > 0) {
      residency_.resize(static_cast<std::size_t>(r.size));
      double sum = 0;
      for (std::int64_t i = 0; i < r.size; ++i) {
        const auto age = static_cast<std::int32_t>(step_ - wc[i].changed_at);
        residency_[static_cast<std::size_t>(i)] = age;
        sum += age;
      }
      r.residency_mean = sum / static_cast<double>(r.size);
      const auto k = static_cast<std::size_t>(std::ceil(0.95 * static_cast<double>(r.size))) - 1;
      std::nth_element(residency_.begin(), residency_.begin() + static_cast<std::ptrdiff_t>(k),
                       residency_.end());
      r.residency_p95 = residency_[k];
    }
    ++step_;
    return r;
  }

  FocusOptions opts_;
  WorkingContextOptions wc_opts_;
  Policy policy_;
  std::int32_t step_ = 1;
  std::vector<FocusCandidate> expansions_, collapses_, chosen_;
  std::vector<FocusEdit> edits_;
  std::vector<float> scratch_scores_, score_tmp_;
  std::vector<std::int32_t> residency_;
};

}  // namespace mc
