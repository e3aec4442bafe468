// SPDX-License-Identifier: Apache-2.0
// The working context: the fixed-budget, mixed-detail view of the tree that the model sees. An
// ordered list of entries {lod, index} in time order that tiles the history it covers: the first
// `sink_tokens` tokens at LOD0 (attention sinks), then a gap where evicted history sat, then a
// contiguous run up to the newest token. Sits between the Tree and LensNet/the FocusAllocator:
// the allocator edits it (expand, collapse, evict, restore) and assemble() turns it into the
// model's input. Every edit is logged as a patch so a GPU copy can be updated, not rebuilt.
#pragma once

#include <algorithm>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "megacontext/config.hpp"
#include "megacontext/error.hpp"
#include "megacontext/lod.hpp"

namespace mc {

/// One working-context entry: a tree node plus the step at which it entered the context.
struct WcEntry {
  std::int64_t index = 0;       ///< node index within its level
  std::int32_t lod = 0;         ///< level of detail (0 = token)
  std::int32_t changed_at = 0;  ///< allocator step that created this entry (cooldown, residency)

  /// The tree node this entry shows.
  constexpr Node node() const { return {lod, index}; }
  friend constexpr bool operator==(const WcEntry&, const WcEntry&) = default;
};

/// One focus edit at a working-context position: expand the gist there into its K children, or
/// collapse the K aligned siblings starting there into their parent.
struct FocusEdit {
  enum Kind : std::int32_t { kExpand = 0, kCollapse = 1 };
  Kind kind = kExpand;    ///< what to do
  std::int64_t pos = 0;   ///< entry position (first sibling for a collapse)
  friend constexpr bool operator==(const FocusEdit&, const FocusEdit&) = default;
};

/// Run-time options of a working context.
struct WorkingContextOptions {
  std::int64_t w_max = 8192;     ///< most entries the context may hold
  std::int64_t sink_tokens = 4;  ///< first tokens of the history, always kept at LOD0

  /// Throws mc::Error naming the first bad field.
  void validate() const {
    MC_EXPECTS(w_max >= 1 && w_max <= (std::int64_t{1} << 30), Errc::kInvalidArgument,
               "[mc.working_context.bad_w_max] w_max = ", w_max, " must be in [1, 2^30]");
    MC_EXPECTS(sink_tokens >= 0 && sink_tokens < w_max, Errc::kInvalidArgument,
               "[mc.working_context.bad_sink_tokens] sink_tokens = ", sink_tokens,
               " must be in [0, w_max = ", w_max, ")");
  }
};

/// A half-open range [begin, end) of working-context positions.
struct IndexRange {
  std::int64_t begin = 0;  ///< first position
  std::int64_t end = 0;    ///< one past the last position
  friend constexpr bool operator==(const IndexRange&, const IndexRange&) = default;
};

/// How to turn the previous working context (as a buffer of per-entry rows) into the current
/// one: copy each `moves` run from its old to its new position, then fill every `fresh` range.
/// Moves are in increasing order and never overlap in either coordinate.
struct WcPatch {
  /// A run of entries carried over unchanged.
  struct Move {
    std::int64_t old_begin = 0;  ///< first position in the previous context
    std::int64_t new_begin = 0;  ///< first position in the current context
    std::int64_t count = 0;      ///< entries in the run
    friend constexpr bool operator==(const Move&, const Move&) = default;
  };
  std::int64_t old_size = 0;       ///< entries before the edits
  std::int64_t new_size = 0;       ///< entries after
  std::vector<Move> moves;         ///< runs to copy (old -> new position)
  std::vector<IndexRange> fresh;   ///< positions of the current context to assemble anew

  /// Entries whose rows must be rebuilt.
  std::int64_t fresh_entries() const {
    std::int64_t n = 0;
    for (const auto& r : fresh) n += r.end - r.begin;
    return n;
  }
};

/// The budgeted, mixed-LOD view of a tree for Config C.
template <ConfigType C>
class WorkingContext {
 public:
  using L = Lod<C>;
  static constexpr int K = C::K;
  static constexpr int Depth = C::Depth;

  /// An empty context (covering no tokens).
  explicit WorkingContext(const WorkingContextOptions& opts = {}) : opts_(opts) {
    opts_.validate();
    begin_patch();
  }

  /// A context with exactly these entries (a saved session's, see session_state.hpp), covering
  /// `num_tokens` with the evicted gap before `window_begin`. Call validate(tree tokens) before
  /// use: the entries come from a file, and validate() names the invariant a bad one breaks.
  static WorkingContext from_state(const WorkingContextOptions& opts,
                                   std::span<const WcEntry> entries, std::int64_t num_tokens,
                                   std::int64_t window_begin) {
    WorkingContext wc(opts);
    MC_EXPECTS(num_tokens >= 0 && window_begin >= 0 && window_begin <= num_tokens,
               Errc::kInvalidArgument, "[mc.working_context.bad_state] num_tokens = ",
               num_tokens, ", window_begin = ", window_begin,
               "; need 0 <= window_begin <= num_tokens");
    wc.entries_.assign(entries.begin(), entries.end());
    wc.end_ = num_tokens;
    wc.window_begin_ = window_begin;
    wc.begin_patch();
    return wc;
  }

  /// The options it was made with.
  const WorkingContextOptions& options() const { return opts_; }
  /// Number of entries.
  std::int64_t size() const { return static_cast<std::int64_t>(entries_.size()); }
  /// The entries in time order.
  std::span<const WcEntry> entries() const { return entries_; }
  /// Entry at position `i`.
  const WcEntry& operator[](std::int64_t i) const { return entries_[static_cast<std::size_t>(i)]; }
  /// Tokens of the history covered up to (one past the newest token).
  std::int64_t num_tokens() const { return end_; }
  /// End of the sink prefix: tokens [0, sink_end()) are sink entries at LOD0.
  std::int64_t sink_end() const { return std::min(end_, opts_.sink_tokens); }
  /// First token of the contiguous window after the sinks; [sink_end(), window_begin()) was evicted.
  std::int64_t window_begin() const { return window_begin_; }
  /// Position of the first entry after the sinks.
  std::int64_t first_window_pos() const { return sink_end(); }
  /// Token span of the entry at position `i`.
  TokenSpan span(std::int64_t i) const { return L::tokens((*this)[i].node()); }

  /// Covers the history up to `num_tokens`: tokens before `coarse_before` enter as the coarsest
  /// aligned nodes that fit (bulk ingestion stays O(entries)), the rest as LOD0 entries.
  /// The result may exceed w_max; FocusAllocator::admit restores the budget.
  void extend(std::int64_t num_tokens, std::int64_t coarse_before, std::int32_t step) {
    MC_EXPECTS(num_tokens >= end_, Errc::kInvalidArgument,
               "[mc.working_context.shrink] extend(num_tokens = ", num_tokens,
               ") is below the tokens already covered (", end_, ")");
    const std::int64_t old_size = size();
    std::int64_t t = end_;
    const std::int64_t sink = std::min(num_tokens, opts_.sink_tokens);
    for (; t < sink; ++t) entries_.push_back({t, 0, step});
    const std::int64_t coarse_end = std::clamp(coarse_before, t, num_tokens);
    while (t < coarse_end) {
      int lod = Depth;
      while (lod > 0 && (t % L::span(lod) != 0 || t + L::span(lod) > coarse_end)) --lod;
      entries_.push_back({t / L::span(lod), lod, step});
      t += L::span(lod);
    }
    for (; t < num_tokens; ++t) entries_.push_back({t, 0, step});
    // While the history is still inside the sinks, the window starts right after them.
    if (window_begin_ == end_ && end_ <= opts_.sink_tokens) window_begin_ = sink;
    end_ = num_tokens;
    record(old_size, 0, size() - old_size);
  }

  /// True when the entry at `pos` can be expanded (lod >= 1).
  bool can_expand(std::int64_t pos) const {
    return pos >= 0 && pos < size() && (*this)[pos].lod >= 1;
  }
  /// Replaces the gist at `pos` by its K children (+K-1 entries).
  void expand(std::int64_t pos, std::int32_t step) {
    const FocusEdit e{FocusEdit::kExpand, pos};
    apply(std::span(&e, 1), step);
  }

  /// True when entries [pos, pos+K) are the K aligned siblings of one parent at the same lod,
  /// none of them a sink (their parent then covers a complete span of the tree).
  bool can_collapse(std::int64_t pos) const {
    if (pos < first_window_pos() || pos + K > size()) return false;
    const WcEntry& first = (*this)[pos];
    if (first.lod >= Depth || first.index % K != 0) return false;
    const WcEntry& last = (*this)[pos + K - 1];
    // Entries are contiguous in time, so K entries at one lod starting aligned are siblings iff
    // the last one is the first one's K-1'th successor.
    return last.lod == first.lod && last.index == first.index + K - 1 &&
           L::tokens(first.node()).begin >= window_begin_;
  }
  /// Replaces K aligned siblings at `pos` by their parent (-(K-1) entries).
  void collapse(std::int64_t pos, std::int32_t step) {
    const FocusEdit e{FocusEdit::kCollapse, pos};
    apply(std::span(&e, 1), step);
  }

  /// Applies expand/collapse edits in one pass over the entries from the first edit on.
  /// `edits` must be sorted by position and disjoint (a collapse covers [pos, pos + K)), with
  /// positions in the current context; each is checked (can_expand / can_collapse).
  void apply(std::span<const FocusEdit> edits, std::int32_t step) {
    if (edits.empty()) return;
    std::int64_t prev_end = 0;
    for (const FocusEdit& e : edits) {
      const bool ok = e.kind == FocusEdit::kExpand ? can_expand(e.pos) : can_collapse(e.pos);
      MC_EXPECTS(ok && e.pos >= prev_end, Errc::kInvalidArgument,
                 "[mc.working_context.bad_edit] ",
                 e.kind == FocusEdit::kExpand ? "expand" : "collapse", " at entry ", e.pos, " of ",
                 size(), e.pos < prev_end ? ": edits overlap or are not sorted by position"
                         : e.kind == FocusEdit::kExpand
                             ? ": not a gist (lod >= 1)"
                             : ": not K aligned siblings at one level outside the sinks");
      prev_end = e.pos + (e.kind == FocusEdit::kExpand ? 1 : K);
    }
    // Rebuild the tail [first edit, end) once: O(entries after it + K * edits).
    const std::int64_t first = edits.front().pos;
    tail_.assign(entries_.begin() + first, entries_.end());
    entries_.resize(static_cast<std::size_t>(first));
    std::int64_t src = first;  // position in the old entries (= tail_[src - first])
    for (const FocusEdit& e : edits) {
      entries_.insert(entries_.end(), tail_.begin() + (src - first), tail_.begin() + (e.pos - first));
      const std::int64_t at = size();  // position of this edit in the new entries
      const WcEntry& x = tail_[static_cast<std::size_t>(e.pos - first)];
      if (e.kind == FocusEdit::kExpand) {
        for (int j = 0; j < K; ++j) entries_.push_back({x.index * K + j, x.lod - 1, step});
        record(at, 1, K);
        src = e.pos + 1;
      } else {
        entries_.push_back({x.index / K, x.lod + 1, step});
        record(at, K, 1);
        src = e.pos + K;
      }
    }
    entries_.insert(entries_.end(), tail_.begin() + (src - first), tail_.end());
  }

  /// Removes the oldest entry after the sinks; its history stays in the tree. Returns false when
  /// there is none.
  bool evict_oldest() {
    const std::int64_t pos = first_window_pos();
    if (pos >= size()) return false;
    window_begin_ = span(pos).end;
    entries_.erase(entries_.begin() + pos);
    record(pos, 1, 0);
    return true;
  }

  /// Brings back the evicted history just before the window, as the coarsest aligned node that
  /// fits after the sinks. Returns false when nothing is evicted.
  bool restore(std::int32_t step) {
    const std::int64_t floor = sink_end();
    if (window_begin_ <= floor) return false;
    int lod = Depth;
    while (lod > 0 && (window_begin_ % L::span(lod) != 0 || window_begin_ - L::span(lod) < floor))
      --lod;
    window_begin_ -= L::span(lod);
    const std::int64_t pos = first_window_pos();
    entries_.insert(entries_.begin() + pos, WcEntry{window_begin_ / L::span(lod), lod, step});
    record(pos, 0, 1);
    return true;
  }

  /// Checks every invariant against a tree of `tree_tokens` tokens and throws mc::Error naming
  /// the first that broke: sinks, time order without gaps or overlaps, alignment, existence in
  /// the tree, coverage up to the newest token, and the budget.
  void validate(std::int64_t tree_tokens) const {
    auto fail = [&](const std::string& what) {
      throw Error(Errc::kState, "[mc.working_context.invariant] " + what);
    };
    if (end_ > tree_tokens)
      fail(detail::concat("covers ", end_, " tokens but the tree holds ", tree_tokens));
    if (size() > opts_.w_max)
      fail(detail::concat("holds ", size(), " entries, over w_max = ", opts_.w_max));
    const std::int64_t sink = sink_end();
    if (size() < sink) fail(detail::concat("has ", size(), " entries, fewer than ", sink, " sinks"));
    for (std::int64_t i = 0; i < sink; ++i)
      if ((*this)[i].lod != 0 || (*this)[i].index != i)
        fail(detail::concat("entry ", i, " should be sink token ", i, ", is {lod ",
                            (*this)[i].lod, ", index ", (*this)[i].index, "}"));
    if (window_begin_ < sink || window_begin_ > end_)
      fail(detail::concat("window_begin = ", window_begin_, " outside [", sink, ", ", end_, "]"));
    std::int64_t t = window_begin_;
    for (std::int64_t i = sink; i < size(); ++i) {
      const WcEntry& e = (*this)[i];
      if (!L::is_valid(e.node()))
        fail(detail::concat("entry ", i, " has lod ", e.lod, " / index ", e.index));
      const TokenSpan s = L::tokens(e.node());
      if (s.begin != t)
        fail(detail::concat("entry ", i, " {lod ", e.lod, ", index ", e.index, "} starts at token ",
                            s.begin, ", expected ", t, s.begin > t ? " (gap)" : " (overlap)"));
      if (!L::is_aligned(e.lod, s.begin))
        fail(detail::concat("entry ", i, " at lod ", e.lod, " starts at ", s.begin,
                            ", not a multiple of ", L::span(e.lod)));
      if (s.end > tree_tokens)
        fail(detail::concat("entry ", i, " {lod ", e.lod, ", index ", e.index,
                            "} is not complete in the tree (ends at ", s.end, " > ", tree_tokens,
                            ")"));
      t = s.end;
    }
    if (t != end_)
      fail(detail::concat("entries end at token ", t, " but the context covers ", end_));
  }

  /// Starts a new patch: later edits are reported relative to the current entries.
  void begin_patch() {
    segments_.clear();
    if (size() > 0) segments_.push_back({false, 0, size()});
    patch_old_size_ = size();
  }
  /// The edits since begin_patch() as moves of unchanged runs plus fresh ranges (see WcPatch).
  WcPatch patch() const {
    WcPatch p;
    p.old_size = patch_old_size_;
    p.new_size = size();
    std::int64_t pos = 0;
    for (const Segment& g : segments_) {
      if (g.fresh) p.fresh.push_back({pos, pos + g.count});
      else p.moves.push_back({g.old_begin, pos, g.count});
      pos += g.count;
    }
    return p;
  }

 private:
  // The current entries as runs, in order: either entries carried over from begin_patch()
  // (old positions [old_begin, old_begin + count)) or entries created since (fresh).
  struct Segment {
    bool fresh;
    std::int64_t old_begin;
    std::int64_t count;
  };

  // Logs "current entries [pos, pos + removed) were replaced by `inserted` fresh ones".
  // O(number of segments), which is O(edits this step).
  void record(std::int64_t pos, std::int64_t removed, std::int64_t inserted) {
    std::vector<Segment>& out = scratch_segments_;
    out.clear();
    auto push = [&out](Segment g) {
      if (g.count == 0) return;
      if (!out.empty() && out.back().fresh && g.fresh) {
        out.back().count += g.count;
      } else if (!out.empty() && !out.back().fresh && !g.fresh &&
                 out.back().old_begin + out.back().count == g.old_begin) {
        out.back().count += g.count;
      } else {
        out.push_back(g);
      }
    };
    const std::int64_t cut_end = pos + removed;
    std::int64_t cur = 0;
    bool inserted_done = false;
    for (const Segment& g : segments_) {
      const std::int64_t b = cur, e = cur + g.count;
      cur = e;
      // Part before the cut.
      if (b < pos) push({g.fresh, g.old_begin, std::min(e, pos) - b});
      if (!inserted_done && e >= pos) {
        if (b <= pos || e > pos) {
          push({true, 0, inserted});
          inserted_done = true;
        }
      }
      // Part after the cut.
      if (e > cut_end) {
        const std::int64_t from = std::max(b, cut_end);
        push({g.fresh, g.old_begin + (from - b), e - from});
      }
    }
    if (!inserted_done) push({true, 0, inserted});
    segments_.swap(out);
  }

  WorkingContextOptions opts_;
  std::vector<WcEntry> entries_;
  std::int64_t end_ = 0;
  std::int64_t window_begin_ = 0;
  std::vector<WcEntry> tail_;
  std::vector<Segment> segments_;
  std::vector<Segment> scratch_segments_;
  std::int64_t patch_old_size_ = 0;
};

}  // namespace mc
