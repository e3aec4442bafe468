// SPDX-License-Identifier: Apache-2.0
// The working context: the fixed-budget, mixed-detail view of the tree that the model sees. An
// ordered list of entries {lod, index} in time order that tiles the history it covers: the first
// `sink_tokens` tokens at LOD0 (attention sinks), then a gap where evicted history sat, then a
// contiguous run up to the newest token. Sits between the Tree and LensNet/the FocusAllocator:
// the allocator edits it (expand, collapse, evict, restore) and assemble() turns it into the
// model's input. Every edit is logged as a patch so a GPU copy can be updated, not rebuilt.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <type_traits>
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

/// Per-entry flags a WorkingContext keeps beside its entries (WorkingContext::entry_flags), so
/// the allocator's candidate pass reads one byte per entry instead of the 16-byte entry. The
/// high bits are used so a SIMD byte movemask reads them without masking.
enum WcFlag : std::uint8_t {
  kWcGist = 0x80,        ///< lod >= 1: the entry can be expanded
  kWcGroupStart = 0x40,  ///< first of K aligned siblings at one lod < Depth, all present, in
                         ///< positions [i, i + K): a collapse group if outside sinks/protection
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

namespace detail {

/// A vector with spare room before its first element as well as after its last, so that an edit
/// near the front (an eviction or restore after the sinks, or apply() shifting the short side)
/// moves the few elements before it instead of all those after it. Trivially copyable T.
template <class T>
class SlackVector {
 public:
  std::size_t size() const { return n_; }
  T* data() { return buf_.data() + head_; }
  const T* data() const { return buf_.data() + head_; }
  T& operator[](std::size_t i) { return buf_[head_ + i]; }
  const T& operator[](std::size_t i) const { return buf_[head_ + i]; }
  T* begin() { return data(); }
  T* end() { return data() + n_; }
  const T* begin() const { return data(); }
  const T* end() const { return data() + n_; }
  /// Spare elements before the first.
  std::size_t front_room() const { return head_; }
  /// Spare elements after the last.
  std::size_t back_room() const { return buf_.size() - head_ - n_; }

  void push_back(const T& v) {
    reserve(0, 1);
    buf_[head_ + n_++] = v;
  }
  void resize(std::size_t n) {
    if (n > n_) {
      reserve(0, n - n_);
      std::fill(buf_.begin() + static_cast<std::ptrdiff_t>(head_ + n_),
                buf_.begin() + static_cast<std::ptrdiff_t>(head_ + n), T{});
    }
    n_ = n;
  }
  template <class It>
  void assign(It first, It last) {
    n_ = 0;
    head_ = 0;
    for (; first != last; ++first) push_back(*first);
  }
  /// Removes element `pos`, moving the shorter side.
  void erase_at(std::size_t pos) {
    if (pos < n_ - pos - 1) {
      if (pos > 0) std::memmove(data() + 1, data(), pos * sizeof(T));
      ++head_;
    } else if (n_ - pos - 1 > 0) {
      std::memmove(data() + pos, data() + pos + 1, (n_ - pos - 1) * sizeof(T));
    }
    --n_;
  }
  /// Inserts `v` before element `pos`, moving the shorter side.
  void insert_at(std::size_t pos, const T& v) {
    if (pos < n_ - pos) {
      reserve(1, 0);
      --head_;
      if (pos > 0) std::memmove(data(), data() + 1, pos * sizeof(T));
    } else {
      reserve(0, 1);
      if (n_ > pos) std::memmove(data() + pos + 1, data() + pos, (n_ - pos) * sizeof(T));
    }
    buf_[head_ + pos] = v;
    ++n_;
  }
  /// Makes at least `front` spare elements before the first and `back` after the last; when it
  /// must move the elements it leaves a third of the new spare room in front (amortised O(1)).
  void reserve(std::size_t front, std::size_t back) {
    if (head_ >= front && back_room() >= back) return;
    const std::size_t need = n_ + front + back;
    const std::size_t cap = std::max(buf_.size(), need + need / 2 + 64);
    const std::size_t head = front + (cap - need) / 3;
    std::vector<T> next(cap);
    if (n_ > 0) std::memcpy(next.data() + head, data(), n_ * sizeof(T));
    buf_.swap(next);
    head_ = head;
  }
  /// The buffer, for moves in absolute positions (element i is at base()[front_room() + i]).
  T* base() { return buf_.data(); }
  /// After moves in absolute positions: the elements now start `shift` later and number n.
  void rebase(std::ptrdiff_t shift, std::size_t n) {
    head_ = static_cast<std::size_t>(static_cast<std::ptrdiff_t>(head_) + shift);
    n_ = n;
  }

 private:
  std::vector<T> buf_;
  std::size_t head_ = 0, n_ = 0;
};

}  // namespace detail

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
    wc.flags_.resize(wc.entries_.size());
    wc.refresh_flags(0, wc.size());
    wc.begin_patch();
    return wc;
  }

  /// The options it was made with.
  const WorkingContextOptions& options() const { return opts_; }
  /// Number of entries.
  std::int64_t size() const { return static_cast<std::int64_t>(entries_.size()); }
  /// The entries in time order.
  std::span<const WcEntry> entries() const { return {entries_.data(), entries_.size()}; }
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
  /// One WcFlag byte per entry (kWcGist, kWcGroupStart), kept up to date by every edit.
  std::span<const std::uint8_t> entry_flags() const { return {flags_.data(), flags_.size()}; }

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
    flags_.resize(entries_.size());
    refresh_flags(old_size - K + 1, size());
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
    return (flags_[static_cast<std::size_t>(pos)] & kWcGroupStart) != 0 &&
           span(pos).begin >= window_begin_;
  }
  /// Replaces K aligned siblings at `pos` by their parent (-(K-1) entries).
  void collapse(std::int64_t pos, std::int32_t step) {
    const FocusEdit e{FocusEdit::kCollapse, pos};
    apply(std::span(&e, 1), step);
  }

  /// Applies expand/collapse edits in place, moving each run of entries between edits once.
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
    // In place: each run of entries between edits moves once (memmove) by the net size change
    // of the edits before it, plus one shift `sigma` common to all runs (the prefix before the
    // first edit is run -1 with no edits before it). Storage has room at both ends, so sigma is
    // chosen to keep the most entries where they are: an expansion near the front moves the
    // prefix left, not the tail right. Runs moving left go first, left to right, then runs
    // moving right, right to left. No run overwrites one not yet moved: a left-moving run lands
    // after the new end of every earlier run (which lies past that run's old end if it moves
    // right) and before its own old start; a right-moving run lands after its own old end and
    // before the new start of every later run (already moved). Edited entries are read first.
    const auto n_edits = edits.size();
    edit_src_.resize(n_edits);
    run_shift_.resize(n_edits);
    std::int64_t delta = 0;
    for (std::size_t j = 0; j < n_edits; ++j) {
      edit_src_[j] = entries_[static_cast<std::size_t>(edits[j].pos)];
      delta += edits[j].kind == FocusEdit::kExpand ? K - 1 : -(K - 1);
      run_shift_[j] = delta;
    }
    const std::int64_t old_size = size(), new_size = old_size + delta;
    // Run j in [-1, n_edits): old positions [run_begin(j), run_end(j)), shift run_shift(j).
    const auto run_begin = [&](std::ptrdiff_t j) -> std::int64_t {
      if (j < 0) return 0;
      const FocusEdit& e = edits[static_cast<std::size_t>(j)];
      return e.pos + (e.kind == FocusEdit::kExpand ? 1 : K);
    };
    const auto run_end = [&](std::ptrdiff_t j) {
      return j + 1 < static_cast<std::ptrdiff_t>(n_edits) ? edits[static_cast<std::size_t>(j + 1)].pos
                                                           : old_size;
    };
    const auto run_shift = [&](std::ptrdiff_t j) {
      return j < 0 ? std::int64_t{0} : run_shift_[static_cast<std::size_t>(j)];
    };
    // sigma = -(the shift shared by the most entries); ties keep the prefix in place.
    std::int64_t sigma = 0, kept_best = -1;
    for (std::ptrdiff_t j = -1; j < static_cast<std::ptrdiff_t>(n_edits); ++j) {
      std::int64_t kept = 0;
      for (std::ptrdiff_t i = -1; i < static_cast<std::ptrdiff_t>(n_edits); ++i)
        if (run_shift(i) == run_shift(j)) kept += run_end(i) - run_begin(i);
      if (kept > kept_best) {
        kept_best = kept;
        sigma = -run_shift(j);
      }
      if (n_edits > 64) break;  // many edits: O(edits^2) is not worth it; keep the prefix
    }
    // Room for the new layout at both ends, then the same moves on entries and flags.
    const auto front = static_cast<std::size_t>(std::max<std::int64_t>(0, -sigma));
    const auto back = static_cast<std::size_t>(std::max<std::int64_t>(0, sigma + delta));
    entries_.reserve(front, back);
    flags_.reserve(front, back);
    const auto move_all = [&](auto& v) {
      using T = std::remove_reference_t<decltype(*v.base())>;
      T* base = v.base() + v.front_room();
      const auto move_run = [&](std::ptrdiff_t j) {
        const std::int64_t b = run_begin(j), count = run_end(j) - b;
        if (count > 0)
          std::memmove(base + b + run_shift(j) + sigma, base + b,
                       static_cast<std::size_t>(count) * sizeof(T));
      };
      for (std::ptrdiff_t j = -1; j < static_cast<std::ptrdiff_t>(n_edits); ++j)
        if (run_shift(j) + sigma < 0) move_run(j);
      for (std::ptrdiff_t j = static_cast<std::ptrdiff_t>(n_edits); j-- > -1;)
        if (run_shift(j) + sigma > 0) move_run(j);
      v.rebase(static_cast<std::ptrdiff_t>(sigma), static_cast<std::size_t>(new_size));
    };
    move_all(entries_);
    move_all(flags_);
    // The new entries, then the flags whose K-window reaches into them.
    const auto new_pos = [&](std::size_t j) {
      return edits[j].pos + (j > 0 ? run_shift_[j - 1] : 0);
    };
    for (std::size_t j = 0; j < n_edits; ++j) {
      const std::int64_t at = new_pos(j);
      const WcEntry& x = edit_src_[j];
      if (edits[j].kind == FocusEdit::kExpand) {
        for (int c = 0; c < K; ++c)
          entries_[static_cast<std::size_t>(at + c)] = {x.index * K + c, x.lod - 1, step};
        record(at, 1, K);
      } else {
        entries_[static_cast<std::size_t>(at)] = {x.index / K, x.lod + 1, step};
        record(at, K, 1);
      }
    }
    for (std::size_t j = 0; j < n_edits; ++j) {
      const std::int64_t at = new_pos(j);
      refresh_flags(at - K + 1, at + (edits[j].kind == FocusEdit::kExpand ? K : 1));
    }
  }

  /// Removes the oldest entry after the sinks; its history stays in the tree. Returns false when
  /// there is none.
  bool evict_oldest() {
    const std::int64_t pos = first_window_pos();
    if (pos >= size()) return false;
    window_begin_ = span(pos).end;
    entries_.erase_at(static_cast<std::size_t>(pos));
    flags_.erase_at(static_cast<std::size_t>(pos));
    refresh_flags(pos - K + 1, pos + 1);
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
    entries_.insert_at(static_cast<std::size_t>(pos), WcEntry{window_begin_ / L::span(lod), lod, step});
    flags_.insert_at(static_cast<std::size_t>(pos), 0);
    refresh_flags(pos - K + 1, pos + 1);
    record(pos, 0, 1);
    return true;
  }

  /// Replaces the window (everything after the sinks) by `window`: nodes in time order tiling
  /// [b, num_tokens()) for some b >= sink_end(), each aligned. Entries whose node stays keep
  /// their changed_at and appear in the patch as moves; the rest are fresh, made at `step`.
  /// The budget is not checked here (validate() does); used for layout policies.
  void assign_window(std::span<const Node> window, std::int32_t step) {
    const std::int64_t sink = sink_end();
    std::int64_t t = window.empty() ? end_ : L::tokens(window.front()).begin;
    MC_EXPECTS(t >= sink, Errc::kInvalidArgument, "[mc.working_context.bad_window] the window starts at token ",
               t, ", inside the sinks [0, ", sink, ")");
    for (std::size_t i = 0; i < window.size(); ++i) {
      const Node& x = window[i];
      const bool ok = L::is_valid(x) && L::tokens(x).begin == t && L::is_aligned(x.lod, t) &&
                      L::tokens(x).end <= end_;
      MC_EXPECTS(ok, Errc::kInvalidArgument, "[mc.working_context.bad_window] node ", i, " {lod ",
                 x.lod, ", index ", x.index, "} does not continue the tiling at token ", t,
                 " (aligned, complete, up to ", end_, ")");
      t = L::tokens(x).end;
    }
    MC_EXPECTS(t == end_, Errc::kInvalidArgument, "[mc.working_context.bad_window] the window ends at token ",
               t, ", not at the newest token ", end_);
    // Merge old and new windows in token order: equal nodes at equal places are kept; each run in
    // between is one replacement (O(old + new), the patch stays small when little changed).
    std::vector<WcEntry>& out = edit_src_;
    out.assign(entries_.begin(), entries_.begin() + sink);
    const auto old_n = static_cast<std::size_t>(size()), new_n = window.size();
    std::size_t i = static_cast<std::size_t>(sink), j = 0;
    const auto begin_old = [&](std::size_t k) {
      return k < old_n ? L::tokens(entries_[k].node()).begin : end_;
    };
    const auto begin_new = [&](std::size_t k) { return k < new_n ? L::tokens(window[k]).begin : end_; };
    while (i < old_n || j < new_n) {
      if (i < old_n && j < new_n && entries_[i].node() == window[j]) {
        out.push_back(entries_[i]);
        ++i;
        ++j;
        continue;
      }
      const std::size_t i0 = i, j0 = j;
      do {
        const std::int64_t bo = begin_old(i), bn = begin_new(j);
        if (bo <= bn && i < old_n) ++i;
        if (bn <= bo && j < new_n) ++j;
      } while (!((i == old_n && j == new_n) ||
                 (i < old_n && j < new_n && begin_old(i) == begin_new(j) &&
                  entries_[i].node() == window[j])));
      const auto pos = static_cast<std::int64_t>(out.size());
      for (std::size_t k = j0; k < j; ++k) out.push_back({window[k].index, window[k].lod, step});
      record(pos, static_cast<std::int64_t>(i - i0), static_cast<std::int64_t>(j - j0));
    }
    entries_.assign(out.begin(), out.end());
    window_begin_ = window.empty() ? end_ : L::tokens(window.front()).begin;
    flags_.resize(entries_.size());
    refresh_flags(0, size());
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
    if (flags_.size() != entries_.size())
      fail(detail::concat("has ", flags_.size(), " entry flags for ", size(), " entries"));
    for (std::int64_t i = 0; i < size(); ++i)
      if (flags_[static_cast<std::size_t>(i)] != flags_of(i))
        fail(detail::concat("entry ", i, " has stale flags ", int{flags_[static_cast<std::size_t>(i)]},
                            ", expected ", int{flags_of(i)}));
  }

  /// Starts a new patch: later edits are reported relative to the current entries.
  void begin_patch() {
    segments_.clear();
    if (size() > 0) segments_.push_back({false, 0, size()});
    patch_old_size_ = size();
  }
  /// Entries created since begin_patch() (= patch().fresh_entries(), without building the patch).
  std::int64_t fresh_entries() const {
    std::int64_t n = 0;
    for (const Segment& g : segments_) n += g.fresh ? g.count : 0;
    return n;
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

  // The WcFlag byte entry i should carry (see WcFlag); reads entries i and i + K - 1 only.
  std::uint8_t flags_of(std::int64_t i) const {
    const WcEntry& e = entries_[static_cast<std::size_t>(i)];
    std::uint8_t f = e.lod >= 1 ? kWcGist : 0;
    if (e.lod < Depth && e.index % K == 0 && i + K <= size()) {
      // Entries are contiguous in time, so K entries at one lod starting aligned are siblings
      // iff the last one is the first one's K-1'th successor.
      const WcEntry& last = entries_[static_cast<std::size_t>(i + K - 1)];
      if (last.lod == e.lod && last.index == e.index + K - 1) f |= kWcGroupStart;
    }
    return f;
  }
  // Recomputes the flags of positions [begin, end) (clamped): after an edit, only entries whose
  // K-window reaches into the changed positions can change.
  void refresh_flags(std::int64_t begin, std::int64_t end) {
    for (std::int64_t i = std::max<std::int64_t>(begin, 0); i < std::min(end, size()); ++i)
      flags_[static_cast<std::size_t>(i)] = flags_of(i);
  }

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
  detail::SlackVector<WcEntry> entries_;
  detail::SlackVector<std::uint8_t> flags_;  // WcFlag per entry, same positions as entries_
  std::int64_t end_ = 0;
  std::int64_t window_begin_ = 0;
  std::vector<WcEntry> edit_src_;         // apply(): the edited entries, read before moving
  std::vector<std::int64_t> run_shift_;   // apply(): shift of the run after each edit
  std::vector<Segment> segments_;
  std::vector<Segment> scratch_segments_;
  std::int64_t patch_old_size_ = 0;
};

}  // namespace mc
