// SPDX-License-Identifier: Apache-2.0
// MegaAttention's pyramid mask (seed 002): which keys each query of a working-context tree may
// attend. The sequence holds all wLOD0 leaves, then all wLOD1 summaries, then wLOD2, ...; a query
// sees near leaves in full detail and older time through coarser summaries, each earlier time
// step once. Sits between WorkingContext::assemble and attention kernels (BSR form, bsr.hpp).
#pragma once

#include <algorithm>
#include <array>
#include <bit>
#include <cstdint>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>

#include "megacontext/bsr.hpp"
#include "megacontext/config.hpp"
#include "megacontext/error.hpp"
#include "megacontext/lod.hpp"

namespace mc {

/// Whether a query may attend a summary whose span runs past the query (seed 002, "Causality").
enum class Causality : std::int32_t {
  kStrict = 0,  ///< no key covers any time step after the query's own span
  kCausal = 1,  ///< a query sees its elder siblings through its parent, which may overshoot it
};

/// Most summary levels above wLOD0 a pyramid mask supports (the tree file has 16 level slots).
inline constexpr std::int32_t kMaxPyramidLevels = 15;
/// Largest r (leaves per level-1 summary, children per node) a pyramid mask accepts.
inline constexpr std::int32_t kMaxPyramidR = 4096;
/// Largest dense reference mask in elements (one byte each): S * S <= 2^26, so S <= 8192.
inline constexpr std::int64_t kMaxDenseMaskElements = std::int64_t{1} << 26;

/// Run-time parameters of a pyramid mask; validate() throws mc::Error naming a bad field.
struct PyramidMaskOptions {
  std::int32_t r = 32;        ///< children per summary (K): a level-l node covers r^l leaves
  std::int32_t window = 256;  ///< W: newest leaves seen in full detail, widened down to a block
  /// W_l for the mid levels l = 1..num_levels-1: the fewest level-l summaries a query sees
  /// before switching to level l+1 (widened down to a level-(l+1) boundary). Empty: r for
  /// every level; one value: that value for every level; else exactly num_levels - 1 values.
  std::vector<std::int32_t> level_windows{};
  std::int32_t num_levels = 2;  ///< L: summary levels above wLOD0 (0 = plain causal mask)
  Causality causality = Causality::kStrict;  ///< strict, or seed 002's semi-non-causal variant
  std::int32_t num_global = 0;               ///< G: the first G leaves are seen by every query

  /// Throws mc::Error (kInvalidArgument, [mc.pyramid_mask.bad_<field>]) naming the bad value.
  void validate() const;

  /// W_l for mid level `level` in [1, num_levels - 1], after the defaults above.
  std::int32_t level_window(std::int32_t level) const {
    if (level_windows.empty()) return r;
    if (level_windows.size() == 1) return level_windows[0];
    return level_windows[static_cast<std::size_t>(level - 1)];
  }
};

namespace detail {

/// Checks r and num_levels (shared by the options and the layout).
inline void check_pyramid_shape(std::int64_t r, std::int64_t num_levels) {
  MC_EXPECTS(r >= 2 && r <= kMaxPyramidR, Errc::kInvalidArgument, "[mc.pyramid_mask.bad_r] r = ", r,
             "; must be in [2, ", kMaxPyramidR, "]");
  MC_EXPECTS(num_levels >= 0 && num_levels <= kMaxPyramidLevels, Errc::kInvalidArgument,
             "[mc.pyramid_mask.bad_num_levels] num_levels = ", num_levels, "; must be in [0, ",
             kMaxPyramidLevels, "]");
  MC_EXPECTS(checked_pow(r, static_cast<int>(num_levels)) > 0, Errc::kInvalidArgument,
             "[mc.pyramid_mask.bad_num_levels] num_levels = ", num_levels, " with r = ", r,
             ": r^num_levels overflows int64");
}

/// a + b, clamped to 2^62 (no overflow for the non-negative bounds below).
constexpr std::int64_t sat_add(std::int64_t a, std::int64_t b) {
  constexpr std::int64_t kCap = std::int64_t{1} << 62;
  return a >= kCap - b ? kCap : a + b;
}
/// a * b for a, b >= 0, clamped to 2^62.
constexpr std::int64_t sat_mul(std::int64_t a, std::int64_t b) {
  constexpr std::int64_t kCap = std::int64_t{1} << 62;
  return (b != 0 && a >= kCap / b) ? kCap : a * b;
}

}  // namespace detail

inline void PyramidMaskOptions::validate() const {
  detail::check_pyramid_shape(r, num_levels);
  MC_EXPECTS(window >= 1, Errc::kInvalidArgument, "[mc.pyramid_mask.bad_window] window = ", window,
             "; must be >= 1 (a query always sees itself)");
  const std::size_t mid = num_levels > 1 ? static_cast<std::size_t>(num_levels - 1) : 0;
  MC_EXPECTS(level_windows.size() <= 1 || level_windows.size() == mid, Errc::kInvalidArgument,
             "[mc.pyramid_mask.bad_level_windows] level_windows has ", level_windows.size(),
             " values; give 0, 1 or num_levels - 1 = ", mid);
  for (std::size_t i = 0; i < level_windows.size(); ++i)
    MC_EXPECTS(level_windows[i] >= 0, Errc::kInvalidArgument,
               "[mc.pyramid_mask.bad_level_windows] level_windows[", i, "] = ", level_windows[i],
               "; must be >= 0");
  MC_EXPECTS(causality == Causality::kStrict || causality == Causality::kCausal,
             Errc::kInvalidArgument,
             "[mc.pyramid_mask.bad_causality] causality = ", static_cast<std::int32_t>(causality),
             "; must be kStrict (0) or kCausal (1)");
  MC_EXPECTS(num_global >= 0, Errc::kInvalidArgument,
             "[mc.pyramid_mask.bad_num_global] num_global = ", num_global, "; must be >= 0");
}

/// The number of summary levels L that leaves at most r nodes on the top level for N leaves:
/// the smallest L >= 1 with floor(N / r^L) <= r, about ceil(log_r N) - 1 (so ceil(log_r N)
/// levels counting wLOD0). The top level is seen whole by far queries, so it stays small.
inline std::int32_t pyramid_levels_for(std::int64_t num_leaves, std::int32_t r) {
  detail::check_pyramid_shape(r, 1);
  MC_EXPECTS(num_leaves >= 0, Errc::kInvalidArgument,
             "[mc.pyramid_mask.bad_num_leaves] num_leaves = ", num_leaves, "; must be >= 0");
  std::int32_t levels = 1;
  std::int64_t top = num_leaves / r;
  while (top > r) {
    top /= r;
    ++levels;
  }
  return levels;
}

/// Where each level of a working-context tree lies in the attention sequence: all wLOD0
/// leaves, then all level-1 summaries, ..., then level L; level l holds floor(N / r^l) nodes
/// (one per complete block; an incomplete tail stays at finer detail), node q covering leaves
/// [q * r^l, (q + 1) * r^l).
class PyramidLayout {
 public:
  /// An empty layout (no leaves, no summary levels).
  PyramidLayout() = default;
  /// Layout of `num_leaves` leaves with `num_levels` summary levels of r children each.
  PyramidLayout(std::int64_t num_leaves, std::int32_t r, std::int32_t num_levels)
      : r_(r), num_levels_(num_levels) {
    detail::check_pyramid_shape(r, num_levels);
    MC_EXPECTS(num_leaves >= 0 && num_leaves <= std::numeric_limits<std::int32_t>::max(),
               Errc::kInvalidArgument, "[mc.pyramid_mask.bad_num_leaves] num_leaves = ", num_leaves,
               "; must be in [0, 2^31 - 1]");
    std::int64_t offset = 0;
    for (std::int32_t l = 0; l <= num_levels; ++l) {
      span_[l] = l == 0 ? 1 : span_[l - 1] * r;
      size_[l] = static_cast<std::int32_t>(num_leaves / span_[l]);
      offset_[l] = static_cast<std::int32_t>(std::min<std::int64_t>(offset, 0x7fffffff));
      offset += size_[l];
    }
    MC_EXPECTS(offset <= std::numeric_limits<std::int32_t>::max(), Errc::kInvalidArgument,
               "[mc.pyramid_mask.bad_num_leaves] num_leaves = ", num_leaves,
               " gives a sequence of ", offset, " nodes; at most 2^31 - 1 fit int32 indices");
    offset_[num_levels + 1] = static_cast<std::int32_t>(offset);
  }

  /// r, children per node.
  std::int32_t r() const { return r_; }
  /// L, summary levels above wLOD0; levels are 0..L.
  std::int32_t num_levels() const { return num_levels_; }
  /// N, the number of wLOD0 leaves.
  std::int32_t num_leaves() const { return size_[0]; }
  /// S, the sequence length: all nodes of all levels.
  std::int32_t seq_len() const { return offset_[num_levels_ + 1]; }
  /// Nodes at `level` (in [0, L]): floor(N / r^level).
  std::int32_t level_size(std::int32_t level) const { return size_[level]; }
  /// Sequence position of the first node of `level` (in [0, L + 1]; L + 1 gives S).
  std::int32_t level_offset(std::int32_t level) const { return offset_[level]; }
  /// Leaves covered by one node of `level` (in [0, L]): r^level.
  std::int64_t span(std::int32_t level) const { return span_[level]; }
  /// The node at sequence position `pos` (in [0, S)).
  Node node_at(std::int32_t pos) const {
    std::int32_t l = 0;
    while (l < num_levels_ && pos >= offset_[l + 1]) ++l;
    return {l, pos - offset_[l]};
  }
  /// Sequence position of node `n` (level in [0, L], index in [0, level_size)).
  std::int32_t position(Node n) const {
    return offset_[n.lod] + static_cast<std::int32_t>(n.index);
  }
  /// Leaves (time steps) covered by node `n`: [index * r^lod, (index + 1) * r^lod).
  TokenSpan tokens(Node n) const { return {n.index * span_[n.lod], (n.index + 1) * span_[n.lod]}; }
  /// True when `n` names an existing node.
  bool contains(Node n) const {
    return n.lod >= 0 && n.lod <= num_levels_ && n.index >= 0 && n.index < size_[n.lod];
  }

 private:
  std::int32_t r_ = 2;
  std::int32_t num_levels_ = 0;
  std::array<std::int64_t, kMaxPyramidLevels + 1> span_{1};
  std::array<std::int32_t, kMaxPyramidLevels + 1> size_{};
  std::array<std::int32_t, kMaxPyramidLevels + 2> offset_{};
};

/// Consecutive nodes [begin, end) of one level that a query attends. A plain aggregate with no
/// default member values (write PyramidRange{} for zeros), so that a PyramidRow's fixed storage is
/// not cleared on every row: that clearing was a third of the cost of a row.
struct PyramidRange {
  std::int32_t level;  ///< level of detail of the nodes (0 = leaf)
  std::int32_t begin;  ///< first node index within the level
  std::int32_t end;    ///< one past the last node index

  /// Number of nodes in the range.
  std::int32_t size() const { return end - begin; }
  /// Field-wise equality.
  friend bool operator==(const PyramidRange&, const PyramidRange&) = default;
};

/// The keys of one query: disjoint, non-adjacent node ranges in sequence order (by level, then
/// index). A fixed-capacity value, so computing a row never allocates.
class PyramidRow {
 public:
  /// Capacity: globals, own level (twice when lifted), parent, one per level above, and slack.
  static constexpr std::int32_t kMaxRanges = kMaxPyramidLevels + 5;

  /// Number of ranges.
  std::int32_t size() const { return size_; }
  /// The i-th range, i in [0, size()).
  const PyramidRange& operator[](std::int32_t i) const { return ranges_[i]; }
  /// First range (for range-for).
  const PyramidRange* begin() const { return ranges_.data(); }
  /// One past the last range.
  const PyramidRange* end() const { return ranges_.data() + size_; }
  /// Number of keys (nodes) the query attends.
  std::int64_t num_keys() const {
    std::int64_t n = 0;
    for (const PyramidRange& g : *this) n += g.size();
    return n;
  }
  /// True when the query attends node `n`.
  bool contains(Node n) const {
    for (const PyramidRange& g : *this)
      if (g.level == n.lod && n.index >= g.begin && n.index < g.end) return true;
    return false;
  }
  /// Same ranges in the same order.
  friend bool operator==(const PyramidRow& a, const PyramidRow& b) {
    return std::equal(a.begin(), a.end(), b.begin(), b.end());
  }

 private:
  friend class PyramidMask;

  void add(std::int32_t level, std::int64_t begin, std::int64_t end) {
    if (begin < end)
      ranges_[size_++] = {level, static_cast<std::int32_t>(begin), static_cast<std::int32_t>(end)};
  }
  // Sorts by (level, begin) and merges overlapping or touching ranges of one level; the global
  // leaves may overlap the near window, and lifted rows add single nodes next to runs.
  void normalize() {
    const auto less = [](const PyramidRange& a, const PyramidRange& b) {
      return a.level != b.level ? a.level < b.level : a.begin < b.begin;
    };
    for (std::int32_t i = 1; i < size_; ++i)  // insertion sort: a handful of ranges
      for (std::int32_t j = i; j > 0 && less(ranges_[j], ranges_[j - 1]); --j)
        std::swap(ranges_[j], ranges_[j - 1]);
    std::int32_t n = 0;
    for (std::int32_t i = 0; i < size_; ++i) {
      if (n > 0 && ranges_[n - 1].level == ranges_[i].level &&
          ranges_[i].begin <= ranges_[n - 1].end)
        ranges_[n - 1].end = std::max(ranges_[n - 1].end, ranges_[i].end);
      else
        ranges_[n++] = ranges_[i];
    }
    size_ = n;
  }

  std::array<PyramidRange, kMaxRanges> ranges_;  // only [0, size_) is ever written or read
  std::int32_t size_ = 0;
};

/// The pyramid mask of one working-context tree: options (validated) + layout. Gives each
/// query's keys as node ranges (row), a dense [S, S] reference (dense) and the block-sparse
/// form kernels consume (bsr). See docs/concepts/pyramid_mask.md for the rules.
class PyramidMask {
 public:
  /// Validates `options` and lays out `num_leaves` leaves with options.num_levels levels.
  PyramidMask(PyramidMaskOptions options, std::int64_t num_leaves)
      : options_(validated(std::move(options))),
        layout_(num_leaves, options_.r, options_.num_levels) {
    for (std::int32_t l = 1; l < options_.num_levels; ++l)
      level_window_[l] = options_.level_window(l);
    const auto ur = static_cast<std::uint32_t>(options_.r);
    shift_ = std::has_single_bit(ur) ? std::countr_zero(ur) : -1;
  }

  /// The validated options.
  const PyramidMaskOptions& options() const { return options_; }
  /// Where each level lies in the sequence.
  const PyramidLayout& layout() const { return layout_; }
  /// S, the sequence length (queries = keys).
  std::int32_t seq_len() const { return layout_.seq_len(); }

  /// The keys of query node `query` (any level). Throws [mc.pyramid_mask.bad_query]
  /// (kOutOfRange) when the node does not exist.
  PyramidRow row(Node query) const {
    MC_EXPECTS(layout_.contains(query), Errc::kOutOfRange,
               "[mc.pyramid_mask.bad_query] query node {lod ", query.lod, ", index ", query.index,
               "} does not exist (levels 0..", layout_.num_levels(), ", N = ", layout_.num_leaves(),
               ")");
    return row_unchecked(query.lod, query.index);
  }
  /// The keys of the query at sequence position `query` in [0, S).
  PyramidRow row_at(std::int32_t query) const {
    check_position(query, "query");
    return row_unchecked(layout_.node_at(query));
  }
  /// Calls emit(begin, end) for each allowed range of key positions of query position `query`,
  /// ascending and disjoint (the input bsr_from_ranges takes). `query` must be in [0, S); it is
  /// not checked here, as this is the inner loop of bsr() and dense().
  template <class Emit>
  void for_each_key_range(std::int32_t query, Emit&& emit) const {
    const PyramidRow row = row_unchecked(layout_.node_at(query));
    for (const PyramidRange& g : row) {
      const std::int32_t off = layout_.level_offset(g.level);
      emit(off + g.begin, off + g.end);
    }
  }
  /// True when query position `query` may attend key position `key` (both in [0, S)).
  bool allows(std::int32_t query, std::int32_t key) const {
    check_position(query, "query");
    check_position(key, "key");
    return row_unchecked(layout_.node_at(query)).contains(layout_.node_at(key));
  }

  /// An upper bound on the keys of any query at `level` (in [0, L]):
  /// own level  floor(((W + r - 1) + sum_{m=1..level} (W_m + r - 1) r^m) / r^level),
  /// mid levels m in (level, L): W_m + r - 1 each, top level: N_L, globals: min(G, N);
  /// +1 for the causal variant. For leaves that is W + r - 1 + sum_m (W_m + r - 1) + N_L + G:
  /// O(W + L r), independent of N once L is (pyramid_levels_for keeps N_L <= r).
  std::int64_t max_row_keys(std::int32_t level) const {
    const std::int32_t num_levels = layout_.num_levels();
    MC_EXPECTS(level >= 0 && level <= num_levels, Errc::kOutOfRange,
               "[mc.pyramid_mask.bad_level] level = ", level, "; must be in [0, ", num_levels, "]");
    const std::int64_t r = options_.r;
    const std::int64_t globals = std::min<std::int64_t>(options_.num_global, layout_.num_leaves());
    if (level == num_levels) return layout_.level_size(level) + globals;
    std::int64_t time = options_.window + r - 1;
    for (std::int32_t m = 1; m <= level; ++m)
      time = detail::sat_add(time, detail::sat_mul(level_window_[m] + r - 1, layout_.span(m)));
    std::int64_t keys =
        std::min<std::int64_t>(time / layout_.span(level), layout_.level_size(level));
    for (std::int32_t m = level + 1; m < num_levels; ++m)
      keys += std::min<std::int64_t>(level_window_[m] + r - 1, layout_.level_size(m));
    keys += layout_.level_size(num_levels) + globals;
    return keys + (options_.causality == Causality::kCausal ? 1 : 0);
  }

  /// The dense reference mask, row-major [S, S] bytes, 1 = query row may attend key column.
  /// Throws [mc.pyramid_mask.dense_too_large] when S * S > kMaxDenseMaskElements (S > 8192).
  std::vector<std::uint8_t> dense() const {
    const std::int64_t s = seq_len();
    MC_EXPECTS(s * s <= kMaxDenseMaskElements, Errc::kInvalidArgument,
               "[mc.pyramid_mask.dense_too_large] S = ", s, " needs ", s * s,
               " mask bytes; the dense reference is limited to ", kMaxDenseMaskElements,
               " (S <= 8192): use bsr()");
    std::vector<std::uint8_t> mask(static_cast<std::size_t>(s * s), 0);
    for (std::int32_t q = 0; q < s; ++q)
      for_each_key_range(q, [&](std::int32_t kb, std::int32_t ke) {
        std::memset(mask.data() + q * s + kb, 1, static_cast<std::size_t>(ke - kb));
      });
    return mask;
  }

  /// The block-sparse form with B x B tiles, built from the rows without a dense mask:
  /// O(S L + touched blocks) time, O(S / B) scratch. `block_size` in [1, 4096]; throws
  /// [mc.pyramid_mask.bad_block_size] otherwise.
  BsrMask bsr(std::int32_t block_size) const {
    MC_EXPECTS(block_size >= 1 && block_size <= kMaxBsrBlockSize, Errc::kInvalidArgument,
               "[mc.pyramid_mask.bad_block_size] block_size = ", block_size, "; must be in [1, ",
               kMaxBsrBlockSize, "]");
    return bsr_from_ranges(seq_len(), block_size,
                           [this](std::int32_t q, auto&& emit) { for_each_key_range(q, emit); });
  }

 private:
  static PyramidMaskOptions validated(PyramidMaskOptions options) {
    options.validate();
    return options;
  }

  void check_position(std::int32_t pos, const char* what) const {
    MC_EXPECTS(pos >= 0 && pos < seq_len(), Errc::kOutOfRange, "[mc.pyramid_mask.bad_query] ", what,
               " position ", pos, " outside [0, S = ", seq_len(), ")");
  }

  // The strict boundaries for a pattern whose time ends at `end` (exclusive): a[0] is where the
  // full-detail leaves start, a[m] (m = 1..L-1) where level-m summaries start; level L covers
  // [0, a[L-1]). a[m] is a multiple of r^(m+1), so every range tiles with whole nodes.
  void boundaries(std::int64_t end, std::array<std::int64_t, kMaxPyramidLevels>& a) const {
    const std::int64_t r = options_.r;
    const std::int64_t x = end - options_.window;
    a[0] = x <= 0 ? 0 : div_span(x, 1) * r;
    for (std::int32_t m = 1; m < layout_.num_levels(); ++m) {
      const std::int64_t span = layout_.span(m);
      const std::int64_t next = layout_.span(m + 1);
      // a[m-1] is a multiple of r^m, so a[m-1] - W_m r^m <= 0 exactly when this holds, and
      // otherwise W_m r^m < a[m-1] <= N cannot overflow.
      a[m] = div_span(a[m - 1], m) <= level_window_[m]
                 ? 0
                 : div_span(a[m - 1] - level_window_[m] * span, m + 1) * next;
    }
  }

  // x / r^level for x >= 0 and level <= L; a shift when r is a power of two (K = 32 in
  // practice), since the 64-bit divisions are most of the cost of a row. r^L fits int64
  // (validated), so shift_ * level <= 62.
  std::int64_t div_span(std::int64_t x, std::int32_t level) const {
    return shift_ >= 0 ? x >> (shift_ * level) : x / layout_.span(level);
  }

  PyramidRow row_unchecked(Node n) const { return row_unchecked(n.lod, n.index); }

  PyramidRow row_unchecked(std::int32_t level, std::int64_t q) const {
    PyramidRow row;
    const std::int32_t num_levels = layout_.num_levels();
    const std::int64_t r = options_.r;
    const std::int64_t end = (q + 1) * layout_.span(level);
    const std::int64_t globals = options_.num_global;
    // A global leaf sees every earlier leaf in full detail (a plain causal row).
    if (level == 0 && q < globals) {
      row.add(0, 0, q + 1);
      return row;
    }
    row.add(0, 0, std::min(globals, end));
    if (level == num_levels) {  // the top level sees all of its own level up to itself
      row.add(level, 0, q + 1);
      row.normalize();
      return row;
    }
    // Causal: boundaries come from the end of the enclosing level-(level+1) block, and that
    // block is seen through its summary (the parent), plus the query itself. Only when the
    // parent exists: an incomplete tail block has no summary and keeps the strict row.
    const std::int64_t p = div_span(q, 1);
    const std::int64_t parent_end = (p + 1) * layout_.span(level + 1);
    const bool lift =
        options_.causality == Causality::kCausal && parent_end <= layout_.num_leaves();
    std::array<std::int64_t, kMaxPyramidLevels> a;  // boundaries() writes a[0..L-1]
    boundaries(lift ? parent_end : end, a);
    const std::int64_t own_begin = div_span(a[level], level);
    if (lift) {
      row.add(level, own_begin, p * r);
      row.add(level, q, q + 1);
      row.add(level + 1, p, p + 1);
    } else {
      row.add(level, own_begin, q + 1);
    }
    for (std::int32_t m = level + 1; m < num_levels; ++m)
      row.add(m, div_span(a[m], m), div_span(a[m - 1], m));
    row.add(num_levels, 0, div_span(a[num_levels - 1], num_levels));
    row.normalize();
    return row;
  }

  PyramidMaskOptions options_;
  PyramidLayout layout_;
  std::array<std::int64_t, kMaxPyramidLevels + 1> level_window_{};  // resolved W_l, l = 1..L-1
  int shift_ = -1;  // log2(r) when r is a power of two, else -1
};

}  // namespace mc
