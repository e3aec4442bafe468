// SPDX-License-Identifier: Apache-2.0
// The baselines MegaAttention's pyramid mask is compared with (issue #9): a causal sliding window
// and a causal BigBird-style mask (local window + random keys per query block + global tokens),
// as per-query key ranges with a dense reference and the BSR form (bsr.hpp), each fitted to a
// target number of allowed pairs so a comparison runs at equal non-zeros (pyramid_nnz gives the
// pyramid's). Sits beside pyramid_mask.hpp, between the model input and the attention kernel.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <utility>
#include <vector>

#include "megacontext/bsr.hpp"
#include "megacontext/error.hpp"
#include "megacontext/pyramid_mask.hpp"

namespace mc {

/// A half-open range [begin, end) of key positions.
struct KeyRange {
  std::int32_t begin = 0;  ///< first key position
  std::int32_t end = 0;    ///< one past the last key position

  /// Number of keys in the range.
  std::int32_t size() const { return end - begin; }
  /// Field-wise equality.
  friend bool operator==(const KeyRange&, const KeyRange&) = default;
};

/// A square [S, S] attention mask stored as, for each query, its allowed keys as ascending,
/// disjoint, non-adjacent ranges (CSR over ranges). The form the sparse baselines are built in;
/// dense() is the reference, bsr() what a block-sparse kernel reads.
struct RangeMask {
  std::int32_t seq_len = 0;  ///< S: queries = keys
  std::vector<std::int64_t> row_ptr{
      0};                        ///< [S + 1]: query q owns ranges [row_ptr[q], row_ptr[q+1])
  std::vector<KeyRange> ranges;  ///< all queries' ranges, query by query
  std::int64_t nnz = 0;          ///< allowed (query, key) pairs

  /// Allowed keys of query `q` (in [0, S)).
  std::int64_t row_keys(std::int32_t q) const {
    std::int64_t n = 0;
    for (std::int64_t j = row_ptr[q]; j < row_ptr[q + 1]; ++j) n += ranges[j].size();
    return n;
  }
  /// Calls emit(begin, end) for each range of query `q`, ascending (bsr_from_ranges' input).
  template <class Emit>
  void for_each_key_range(std::int32_t q, Emit&& emit) const {
    for (std::int64_t j = row_ptr[q]; j < row_ptr[q + 1]; ++j) emit(ranges[j].begin, ranges[j].end);
  }
  /// True when query `q` may attend key `k` (both in [0, S); not checked).
  bool allows(std::int32_t q, std::int32_t k) const {
    for (std::int64_t j = row_ptr[q]; j < row_ptr[q + 1]; ++j)
      if (k >= ranges[j].begin && k < ranges[j].end) return true;
    return false;
  }
  /// The dense reference, row-major [S, S] bytes (1 = allowed). Throws
  /// [mc.sparse_masks.dense_too_large] past kMaxDenseMaskElements (S > 8192).
  std::vector<std::uint8_t> dense() const {
    const std::int64_t s = seq_len;
    MC_EXPECTS(s * s <= kMaxDenseMaskElements, Errc::kInvalidArgument,
               "[mc.sparse_masks.dense_too_large] S = ", s, " needs ", s * s,
               " mask bytes; the dense reference is limited to ", kMaxDenseMaskElements,
               " (S <= 8192): use bsr()");
    std::vector<std::uint8_t> mask(static_cast<std::size_t>(s * s), 0);
    for (std::int32_t q = 0; q < seq_len; ++q)
      for_each_key_range(q, [&](std::int32_t b, std::int32_t e) {
        std::memset(mask.data() + q * s + b, 1, static_cast<std::size_t>(e - b));
      });
    return mask;
  }
  /// The block-sparse form with B x B tiles (B in [1, 4096]), built from the ranges.
  BsrMask bsr(std::int32_t block_size) const {
    return bsr_from_ranges(seq_len, block_size,
                           [this](std::int32_t q, auto&& emit) { for_each_key_range(q, emit); });
  }
};

namespace detail {

// Appends one query's ranges (any order, may overlap or touch; empty ones dropped) to `m` as
// ascending, disjoint, non-adjacent ranges, and counts them into m.nnz.
inline void push_row(RangeMask& m, std::vector<KeyRange>& row) {
  std::sort(row.begin(), row.end(),
            [](const KeyRange& a, const KeyRange& b) { return a.begin < b.begin; });
  const std::size_t first = m.ranges.size();
  for (const KeyRange& g : row) {
    if (g.begin >= g.end) continue;
    if (m.ranges.size() > first && g.begin <= m.ranges.back().end) {
      m.ranges.back().end = std::max(m.ranges.back().end, g.end);
    } else {
      m.ranges.push_back(g);
    }
  }
  for (std::size_t j = first; j < m.ranges.size(); ++j) m.nnz += m.ranges[j].size();
  m.row_ptr.push_back(static_cast<std::int64_t>(m.ranges.size()));
}

inline void check_mask_len(std::int64_t seq_len) {
  MC_EXPECTS(seq_len >= 1 && seq_len <= std::numeric_limits<std::int32_t>::max(),
             Errc::kInvalidArgument, "[mc.sparse_masks.bad_seq_len] seq_len = ", seq_len,
             "; must be in [1, 2^31 - 1]");
}

// Allowed pairs of full causal attention over S queries: S (S + 1) / 2.
constexpr std::int64_t causal_nnz(std::int64_t s) { return s * (s + 1) / 2; }

// Rows that get one key more than the base pattern: `extra` of the `eligible` rows (those where
// one more key is possible), spread evenly over them (Bresenham), so no stretch of the sequence
// is favoured. Returns a flag per row.
inline std::vector<std::uint8_t> spread_extra(const std::vector<std::uint8_t>& eligible,
                                              std::int64_t extra) {
  std::int64_t total = 0;
  for (const std::uint8_t e : eligible) total += e;
  std::vector<std::uint8_t> pick(eligible.size(), 0);
  std::int64_t seen = 0;
  for (std::size_t q = 0; q < eligible.size(); ++q) {
    if (!eligible[q]) continue;
    // Row number `seen` of the eligible ones is picked when floor((seen + 1) e / t) steps up.
    if ((seen + 1) * extra / total > seen * extra / total) pick[q] = 1;
    ++seen;
  }
  return pick;
}

}  // namespace detail

/// Allowed (query, key) pairs of the pyramid mask of `num_leaves` leaves under `options`, over
/// every query of its sequence (S = N + N_1 + ... rows, summaries included): the attention
/// work a block-sparse kernel does, and the budget the baselines are fitted to.
inline std::int64_t pyramid_nnz(std::int64_t num_leaves, const PyramidMaskOptions& options) {
  const PyramidMask mask(options, num_leaves);
  std::int64_t nnz = 0;
  for (std::int32_t q = 0; q < mask.seq_len(); ++q) nnz += mask.row_at(q).num_keys();
  return nnz;
}

/// The causal sliding window: query q attends keys [max(0, q − w_q + 1), q], with w_q = `window`
/// for every query, or `window` + 1 for the rows flagged in `wider` (size S or empty).
inline RangeMask sliding_window_mask(std::int64_t seq_len, std::int32_t window,
                                     const std::vector<std::uint8_t>& wider = {}) {
  detail::check_mask_len(seq_len);
  MC_EXPECTS(window >= 1, Errc::kInvalidArgument, "[mc.sparse_masks.bad_window] window = ", window,
             "; must be >= 1 (a query always sees itself)");
  MC_EXPECTS(wider.empty() || static_cast<std::int64_t>(wider.size()) == seq_len,
             Errc::kInvalidArgument, "[mc.sparse_masks.bad_seq_len] wider has ", wider.size(),
             " flags for seq_len = ", seq_len);
  RangeMask m;
  m.seq_len = static_cast<std::int32_t>(seq_len);
  m.ranges.reserve(static_cast<std::size_t>(seq_len));
  m.row_ptr.reserve(static_cast<std::size_t>(seq_len) + 1);
  std::vector<KeyRange> row;
  for (std::int64_t q = 0; q < seq_len; ++q) {
    const std::int64_t w = window + (wider.empty() ? 0 : wider[static_cast<std::size_t>(q)]);
    row.assign(1, {static_cast<std::int32_t>(std::max<std::int64_t>(0, q - w + 1)),
                   static_cast<std::int32_t>(q + 1)});
    detail::push_row(m, row);
  }
  return m;
}

/// A causal sliding window with exactly `target_nnz` allowed pairs: the widest window w whose
/// mask stays at or under the target, then one more key for evenly spread rows where the
/// window is not cut by the sequence start. Throws [mc.sparse_masks.target_unreachable] unless
/// S <= target <= S (S + 1) / 2.
inline RangeMask sliding_window_mask_for_nnz(std::int64_t seq_len, std::int64_t target_nnz) {
  detail::check_mask_len(seq_len);
  MC_EXPECTS(target_nnz >= seq_len && target_nnz <= detail::causal_nnz(seq_len),
             Errc::kInvalidArgument,
             "[mc.sparse_masks.target_unreachable] target_nnz = ", target_nnz,
             " for a causal window over S = ", seq_len,
             "; must be in [S, S(S+1)/2 = ", detail::causal_nnz(seq_len), "]");
  // nnz(w) = Σ_q min(q + 1, w) = w S − w (w − 1) / 2 for w <= S: increasing, so bisect.
  const auto nnz_of = [seq_len](std::int64_t w) { return w * seq_len - w * (w - 1) / 2; };
  std::int64_t lo = 1, hi = seq_len;  // nnz_of(lo) <= target
  while (lo < hi) {
    const std::int64_t mid = (lo + hi + 1) / 2;
    if (nnz_of(mid) <= target_nnz)
      lo = mid;
    else
      hi = mid - 1;
  }
  const std::int64_t extra = target_nnz - nnz_of(lo);
  if (extra == 0) return sliding_window_mask(seq_len, static_cast<std::int32_t>(lo));
  std::vector<std::uint8_t> eligible(static_cast<std::size_t>(seq_len), 0);
  for (std::int64_t q = lo; q < seq_len; ++q) eligible[static_cast<std::size_t>(q)] = 1;
  return sliding_window_mask(seq_len, static_cast<std::int32_t>(lo),
                             detail::spread_extra(eligible, extra));
}

/// Run-time parameters of a causal BigBird-style mask (Zaheer et al. 2020, made causal);
/// validate() throws mc::Error naming a bad field.
struct BigBirdOptions {
  std::int32_t window = 64;      ///< local keys per query: [q − window + 1, q]; >= 1
  std::int32_t num_random = 3;   ///< random keys per query block, drawn from before the block
  std::int32_t num_global = 2;   ///< G: keys [0, G) are seen by every query (causally); >= 0
  std::int32_t block_size = 16;  ///< queries that share one random draw (BigBird's block); >= 1
  std::uint64_t seed = 0;        ///< seed of the random keys

  /// Throws mc::Error (kInvalidArgument, [mc.sparse_masks.bad_<field>]) naming the bad value.
  void validate() const {
    MC_EXPECTS(window >= 1, Errc::kInvalidArgument,
               "[mc.sparse_masks.bad_window] window = ", window,
               "; must be >= 1 (a query always sees itself)");
    MC_EXPECTS(num_random >= 0, Errc::kInvalidArgument,
               "[mc.sparse_masks.bad_num_random] num_random = ", num_random, "; must be >= 0");
    MC_EXPECTS(num_global >= 0, Errc::kInvalidArgument,
               "[mc.sparse_masks.bad_num_global] num_global = ", num_global, "; must be >= 0");
    MC_EXPECTS(block_size >= 1, Errc::kInvalidArgument,
               "[mc.sparse_masks.bad_block_size] block_size = ", block_size, "; must be >= 1");
  }
};

/// The random keys of each query block of a BigBird mask over S queries: block b (queries
/// [bB, (b+1)B)) gets min(num_random, bB − G) distinct keys drawn uniformly from [G, bB), so
/// they are causal for every query of the block and never repeat a global key. Sorted.
inline std::vector<std::vector<std::int32_t>> bigbird_random_keys(std::int64_t seq_len,
                                                                  const BigBirdOptions& o) {
  detail::check_mask_len(seq_len);
  o.validate();
  const std::int64_t nb = (seq_len + o.block_size - 1) / o.block_size;
  std::vector<std::vector<std::int32_t>> keys(static_cast<std::size_t>(nb));
  std::mt19937_64 rng(o.seed);
  std::vector<std::int32_t> pool;
  for (std::int64_t b = 0; b < nb; ++b) {
    const std::int64_t lo = o.num_global, hi = b * o.block_size;
    auto& k = keys[static_cast<std::size_t>(b)];
    if (hi <= lo) continue;
    pool.resize(static_cast<std::size_t>(hi - lo));
    for (std::int64_t i = 0; i < hi - lo; ++i)
      pool[static_cast<std::size_t>(i)] = static_cast<std::int32_t>(lo + i);
    const std::int64_t take = std::min<std::int64_t>(o.num_random, hi - lo);
    // Partial Fisher-Yates: the first `take` entries become a uniform sample without replacement.
    for (std::int64_t i = 0; i < take; ++i) {
      std::uniform_int_distribution<std::int64_t> pick(i, hi - lo - 1);
      std::swap(pool[static_cast<std::size_t>(i)], pool[static_cast<std::size_t>(pick(rng))]);
    }
    k.assign(pool.begin(), pool.begin() + take);
    std::sort(k.begin(), k.end());
  }
  return keys;
}

/// The causal BigBird-style mask: query q attends the union of the global keys [0, min(G, q+1)),
/// its block's random keys (bigbird_random_keys) and the local window [q − w_q + 1, q], with
/// w_q = options.window, or window + 1 for rows flagged in `wider` (size S or empty).
inline RangeMask bigbird_mask(std::int64_t seq_len, const BigBirdOptions& options,
                              const std::vector<std::uint8_t>& wider = {}) {
  detail::check_mask_len(seq_len);
  options.validate();
  MC_EXPECTS(wider.empty() || static_cast<std::int64_t>(wider.size()) == seq_len,
             Errc::kInvalidArgument, "[mc.sparse_masks.bad_seq_len] wider has ", wider.size(),
             " flags for seq_len = ", seq_len);
  const auto random = bigbird_random_keys(seq_len, options);
  RangeMask m;
  m.seq_len = static_cast<std::int32_t>(seq_len);
  m.row_ptr.reserve(static_cast<std::size_t>(seq_len) + 1);
  std::vector<KeyRange> row;
  for (std::int64_t q = 0; q < seq_len; ++q) {
    row.clear();
    const std::int64_t w =
        options.window + (wider.empty() ? 0 : wider[static_cast<std::size_t>(q)]);
    row.push_back(
        {0, static_cast<std::int32_t>(std::min<std::int64_t>(options.num_global, q + 1))});
    for (const std::int32_t k : random[static_cast<std::size_t>(q / options.block_size)])
      row.push_back({k, k + 1});
    row.push_back({static_cast<std::int32_t>(std::max<std::int64_t>(0, q - w + 1)),
                   static_cast<std::int32_t>(q + 1)});
    detail::push_row(m, row);
  }
  return m;
}

/// A BigBird-style mask with exactly `target_nnz` allowed pairs: num_random, num_global,
/// block_size and seed are kept from `options`; the local window is the widest whose mask stays
/// at or under the target (nnz never decreases as it widens: the random keys do not depend on
/// it), then rows where one more local key is new get it, evenly spread. Throws
/// [mc.sparse_masks.target_unreachable] when even window 1 exceeds the target or full causal
/// attention falls short of it.
inline RangeMask bigbird_mask_for_nnz(std::int64_t seq_len, BigBirdOptions options,
                                      std::int64_t target_nnz) {
  detail::check_mask_len(seq_len);
  options.validate();
  const auto nnz_of = [&](std::int64_t w) {
    BigBirdOptions o = options;
    o.window = static_cast<std::int32_t>(w);
    return bigbird_mask(seq_len, o).nnz;
  };
  const std::int64_t floor_nnz = nnz_of(1);
  MC_EXPECTS(target_nnz >= floor_nnz && target_nnz <= detail::causal_nnz(seq_len),
             Errc::kInvalidArgument,
             "[mc.sparse_masks.target_unreachable] target_nnz = ", target_nnz,
             " for BigBird over S = ", seq_len, " with G = ", options.num_global, ", ",
             options.num_random, " random keys per block of ", options.block_size, "; reachable: [",
             floor_nnz, ", ", detail::causal_nnz(seq_len), "]");
  std::int64_t lo = 1, hi = seq_len;  // nnz_of(lo) <= target
  while (lo < hi) {
    const std::int64_t mid = (lo + hi + 1) / 2;
    if (nnz_of(mid) <= target_nnz)
      lo = mid;
    else
      hi = mid - 1;
  }
  options.window = static_cast<std::int32_t>(lo);
  RangeMask base = bigbird_mask(seq_len, options);
  const std::int64_t extra = target_nnz - base.nnz;
  if (extra == 0) return base;
  // Row q gains a key from window + 1 exactly when key q − window exists and is not already
  // global or random; since nnz(window + 1) > target, there are more such rows than `extra`.
  std::vector<std::uint8_t> eligible(static_cast<std::size_t>(seq_len), 0);
  for (std::int64_t q = lo; q < seq_len; ++q)
    eligible[static_cast<std::size_t>(q)] =
        base.allows(static_cast<std::int32_t>(q), static_cast<std::int32_t>(q - lo)) ? 0 : 1;
  return bigbird_mask(seq_len, options, detail::spread_extra(eligible, extra));
}

}  // namespace mc
