// SPDX-License-Identifier: Apache-2.0
// Block-sparse row (BSR) form of a square attention mask, the format attention kernels consume:
// for each block row of B queries, the ascending key blocks that hold any allowed (query, key)
// pair, with per-tile and per-query counts. Built from per-query key ranges (pyramid_mask.hpp)
// in time proportional to the blocks touched, or from a dense mask as the O(S^2) reference.
#pragma once

#include <algorithm>
#include <bit>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "megacontext/error.hpp"

namespace mc {

/// Largest block size (queries per block row = keys per block column) a BsrMask accepts.
inline constexpr std::int32_t kMaxBsrBlockSize = 4096;

/// A square [S, S] boolean mask in block-sparse row form with B x B tiles (the last block row
/// and column may be narrower). Only tiles with at least one allowed pair are stored.
struct BsrMask {
  std::int32_t seq_len = 0;             ///< S: number of queries = number of keys
  std::int32_t block_size = 1;          ///< B: queries per block row, keys per block column
  std::vector<std::int32_t> row_ptr;    ///< [num_block_rows + 1]: block row b owns [row_ptr[b],
                                        ///< row_ptr[b + 1]) of col_idx and block_nnz
  std::vector<std::int32_t> col_idx;    ///< [num_blocks]: key block index, ascending in a row
  std::vector<std::int32_t> block_nnz;  ///< [num_blocks]: allowed pairs in the tile, >= 1
  std::vector<std::int32_t> row_nnz;    ///< [S]: allowed keys of each query
  std::int64_t nnz = 0;                 ///< allowed (query, key) pairs in the whole mask

  /// Number of block rows (= block columns), ceil(S / B).
  std::int32_t num_block_rows() const {
    return static_cast<std::int32_t>((std::int64_t{seq_len} + block_size - 1) / block_size);
  }
  /// Number of stored (non-empty) tiles.
  std::int32_t num_blocks() const { return row_ptr.empty() ? 0 : row_ptr.back(); }
  /// Queries in block row `block` (= keys in block column `block`): B, or less for the last.
  std::int32_t block_extent(std::int32_t block) const {
    const std::int64_t first = std::int64_t{block} * block_size;
    return static_cast<std::int32_t>(std::min<std::int64_t>(block_size, seq_len - first));
  }
  /// True when every (query, key) pair of stored tile `j` (in block row `block_row`) is allowed,
  /// so a kernel may skip the element mask there.
  bool is_full(std::int32_t block_row, std::int32_t j) const {
    return std::int64_t{block_nnz[j]} ==
           std::int64_t{block_extent(block_row)} * block_extent(col_idx[j]);
  }
  /// Number of stored tiles whose every pair is allowed.
  std::int64_t num_full_blocks() const {
    std::int64_t n = 0;
    for (std::int32_t b = 0; b + 1 < static_cast<std::int32_t>(row_ptr.size()); ++b)
      for (std::int32_t j = row_ptr[b]; j < row_ptr[b + 1]; ++j) n += is_full(b, j) ? 1 : 0;
    return n;
  }

  /// Checks every structural invariant (sizes, ascending columns, counts that add up); throws
  /// mc::Error tagged [mc.bsr.invalid] naming the first broken one.
  void validate() const;

  /// Field-wise equality (bit-exact comparison of two masks; bsr_difference says where).
  friend bool operator==(const BsrMask&, const BsrMask&) = default;
};

namespace detail {

/// Validates the shape arguments shared by the BSR builders.
inline void check_bsr_shape(std::int64_t seq_len, std::int64_t block_size) {
  MC_EXPECTS(block_size >= 1 && block_size <= kMaxBsrBlockSize, Errc::kInvalidArgument,
             "[mc.bsr.bad_block_size] block_size = ", block_size, "; must be in [1, ",
             kMaxBsrBlockSize, "]");
  MC_EXPECTS(seq_len >= 0 && seq_len <= std::numeric_limits<std::int32_t>::max(),
             Errc::kInvalidArgument, "[mc.bsr.bad_seq_len] seq_len = ", seq_len,
             "; must be in [0, 2^31 - 1]");
}

/// Index of the first position where `a` and `b` differ, or -1 when they are equal.
inline std::int64_t first_mismatch(const std::vector<std::int32_t>& a,
                                   const std::vector<std::int32_t>& b) {
  const std::size_t n = std::min(a.size(), b.size());
  for (std::size_t i = 0; i < n; ++i)
    if (a[i] != b[i]) return static_cast<std::int64_t>(i);
  return a.size() == b.size() ? -1 : static_cast<std::int64_t>(n);
}

}  // namespace detail

inline void BsrMask::validate() const {
  detail::check_bsr_shape(seq_len, block_size);
  const std::int32_t nb = num_block_rows();
  MC_EXPECTS(static_cast<std::int64_t>(row_ptr.size()) == std::int64_t{nb} + 1,
             Errc::kInvalidArgument, "[mc.bsr.invalid] row_ptr has ", row_ptr.size(),
             " entries; expected num_block_rows + 1 = ", std::int64_t{nb} + 1);
  MC_EXPECTS(row_ptr[0] == 0, Errc::kInvalidArgument, "[mc.bsr.invalid] row_ptr[0] = ", row_ptr[0],
             "; must be 0");
  MC_EXPECTS(col_idx.size() == static_cast<std::size_t>(num_blocks()) &&
                 block_nnz.size() == col_idx.size(),
             Errc::kInvalidArgument, "[mc.bsr.invalid] col_idx has ", col_idx.size(),
             " and block_nnz ", block_nnz.size(), " entries; row_ptr ends at ", num_blocks());
  MC_EXPECTS(row_nnz.size() == static_cast<std::size_t>(seq_len), Errc::kInvalidArgument,
             "[mc.bsr.invalid] row_nnz has ", row_nnz.size(), " entries; expected S = ", seq_len);
  std::int64_t total = 0;
  for (std::int32_t b = 0; b < nb; ++b) {
    MC_EXPECTS(row_ptr[b] <= row_ptr[b + 1], Errc::kInvalidArgument,
               "[mc.bsr.invalid] row_ptr decreases at block row ", b, ": ", row_ptr[b], " > ",
               row_ptr[b + 1]);
    std::int64_t tiles = 0;
    for (std::int32_t j = row_ptr[b]; j < row_ptr[b + 1]; ++j) {
      MC_EXPECTS(col_idx[j] >= 0 && col_idx[j] < nb, Errc::kInvalidArgument,
                 "[mc.bsr.invalid] col_idx[", j, "] = ", col_idx[j], " outside [0, ", nb, ")");
      MC_EXPECTS(j == row_ptr[b] || col_idx[j - 1] < col_idx[j], Errc::kInvalidArgument,
                 "[mc.bsr.invalid] col_idx not strictly ascending in block row ", b, " at ", j);
      const std::int64_t area = std::int64_t{block_extent(b)} * block_extent(col_idx[j]);
      MC_EXPECTS(block_nnz[j] >= 1 && block_nnz[j] <= area, Errc::kInvalidArgument,
                 "[mc.bsr.invalid] block_nnz[", j, "] = ", block_nnz[j], " outside [1, ", area,
                 "]");
      tiles += block_nnz[j];
    }
    std::int64_t rows = 0;
    const std::int64_t q0 = std::int64_t{b} * block_size;
    for (std::int64_t q = q0; q < q0 + block_extent(b); ++q) {
      MC_EXPECTS(row_nnz[q] >= 0 && row_nnz[q] <= seq_len, Errc::kInvalidArgument,
                 "[mc.bsr.invalid] row_nnz[", q, "] = ", row_nnz[q], " outside [0, ", seq_len, "]");
      rows += row_nnz[q];
    }
    MC_EXPECTS(rows == tiles, Errc::kInvalidArgument, "[mc.bsr.invalid] block row ", b,
               ": row_nnz adds up to ", rows, " but block_nnz to ", tiles);
    total += tiles;
  }
  MC_EXPECTS(total == nnz, Errc::kInvalidArgument, "[mc.bsr.invalid] nnz = ", nnz,
             " but the tiles add up to ", total);
}

/// Describes the first field where two BSR masks differ ("col_idx[17]: 5 vs 6"), or returns an
/// empty string when they are equal; for tests and for checking a kernel's mask input.
inline std::string bsr_difference(const BsrMask& a, const BsrMask& b) {
  if (a.seq_len != b.seq_len) return detail::concat("seq_len: ", a.seq_len, " vs ", b.seq_len);
  if (a.block_size != b.block_size)
    return detail::concat("block_size: ", a.block_size, " vs ", b.block_size);
  const auto field = [](const char* name, const std::vector<std::int32_t>& x,
                        const std::vector<std::int32_t>& y) -> std::string {
    const std::int64_t i = detail::first_mismatch(x, y);
    if (i < 0) return {};
    const auto at = [i](const std::vector<std::int32_t>& v) -> std::string {
      return i < static_cast<std::int64_t>(v.size()) ? std::to_string(v[i]) : "(absent)";
    };
    return detail::concat(name, "[", i, "]: ", at(x), " vs ", at(y), " (sizes ", x.size(), " vs ",
                          y.size(), ")");
  };
  for (const std::string& s :
       {field("row_ptr", a.row_ptr, b.row_ptr), field("col_idx", a.col_idx, b.col_idx),
        field("block_nnz", a.block_nnz, b.block_nnz), field("row_nnz", a.row_nnz, b.row_nnz)})
    if (!s.empty()) return s;
  if (a.nnz != b.nnz) return detail::concat("nnz: ", a.nnz, " vs ", b.nnz);
  return {};
}

/// Builds the BSR form of an [S, S] mask from per-query key ranges, without a dense mask.
/// `row_ranges(q, emit)` must call `emit(begin, end)` for each half-open range of allowed key
/// positions of query q, ascending and disjoint (begin >= the previous end); empty ranges are
/// ignored. Work is O(S + sum over queries of the key blocks each range touches), memory
/// O(S / B) besides the output. Throws [mc.bsr.bad_range] on a range out of order or outside
/// [0, S), and [mc.bsr.too_many_blocks] when the tile count would not fit in int32.
template <class RowRanges>
BsrMask bsr_from_ranges(std::int32_t seq_len, std::int32_t block_size, RowRanges&& row_ranges) {
  detail::check_bsr_shape(seq_len, block_size);
  BsrMask m;
  m.seq_len = seq_len;
  m.block_size = block_size;
  const std::int32_t nb = m.num_block_rows();
  m.row_ptr.assign(static_cast<std::size_t>(nb) + 1, 0);
  m.row_nnz.assign(static_cast<std::size_t>(seq_len), 0);
  // stamp[c] == b marks key block c as already touched by block row b, so each block row costs
  // only the blocks its queries touch; count[c] accumulates that tile's allowed pairs.
  std::vector<std::int32_t> stamp(static_cast<std::size_t>(nb), -1);
  std::vector<std::int32_t> count(static_cast<std::size_t>(nb), 0);
  std::vector<std::int32_t> touched;
  // Key block of a position: a shift for the usual power-of-two B (divisions dominate otherwise).
  const auto ub = static_cast<std::uint32_t>(block_size);
  const int shift = std::has_single_bit(ub) ? std::countr_zero(ub) : -1;
  const auto block_of = [shift, block_size](std::int32_t x) {
    return shift >= 0 ? x >> shift : x / block_size;
  };
  for (std::int32_t b = 0; b < nb; ++b) {
    touched.clear();
    const std::int64_t q0 = std::int64_t{b} * block_size;
    const std::int64_t q1 = std::min<std::int64_t>(seq_len, q0 + block_size);
    for (std::int64_t q = q0; q < q1; ++q) {
      std::int64_t prev_end = 0;
      std::int64_t keys = 0;
      row_ranges(static_cast<std::int32_t>(q), [&](std::int32_t kb, std::int32_t ke) {
        MC_EXPECTS(kb >= prev_end && kb <= ke && ke <= seq_len, Errc::kInvalidArgument,
                   "[mc.bsr.bad_range] query ", q, ": key range [", kb, ", ", ke,
                   ") is out of order or outside [0, ", seq_len, ") (previous end ", prev_end, ")");
        if (kb == ke) return;
        prev_end = ke;
        keys += ke - kb;
        const std::int32_t c1 = block_of(ke - 1);
        for (std::int32_t c = block_of(kb); c <= c1; ++c) {
          const std::int64_t lo = std::max<std::int64_t>(kb, std::int64_t{c} * block_size);
          const std::int64_t hi = std::min<std::int64_t>(ke, std::int64_t{c + 1} * block_size);
          if (stamp[c] != b) {
            stamp[c] = b;
            count[c] = 0;
            touched.push_back(c);
          }
          count[c] += static_cast<std::int32_t>(hi - lo);
        }
      });
      m.row_nnz[q] = static_cast<std::int32_t>(keys);
      m.nnz += keys;
    }
    std::sort(touched.begin(), touched.end());
    MC_EXPECTS(m.col_idx.size() + touched.size() <=
                   static_cast<std::size_t>(std::numeric_limits<std::int32_t>::max()),
               Errc::kInvalidArgument, "[mc.bsr.too_many_blocks] more than 2^31 - 1 tiles at ",
               "block row ", b, " (S = ", seq_len, ", B = ", block_size, "); use a larger B");
    for (const std::int32_t c : touched) {
      m.col_idx.push_back(c);
      m.block_nnz.push_back(count[c]);
    }
    m.row_ptr[b + 1] = static_cast<std::int32_t>(m.col_idx.size());
  }
  return m;
}

/// Reference: the BSR form of a dense row-major [S, S] mask (non-zero = allowed) by counting
/// every tile, O(S^2). For tests and for checking bsr_from_ranges; not for large S.
inline BsrMask bsr_from_dense(const std::vector<std::uint8_t>& dense, std::int32_t seq_len,
                              std::int32_t block_size) {
  detail::check_bsr_shape(seq_len, block_size);
  const std::int64_t s = seq_len;
  MC_EXPECTS(static_cast<std::int64_t>(dense.size()) == s * s, Errc::kInvalidArgument,
             "[mc.bsr.bad_dense] dense mask has ", dense.size(),
             " elements; expected S * S = ", s * s);
  BsrMask m;
  m.seq_len = seq_len;
  m.block_size = block_size;
  const std::int32_t nb = m.num_block_rows();
  m.row_ptr.assign(static_cast<std::size_t>(nb) + 1, 0);
  m.row_nnz.assign(static_cast<std::size_t>(seq_len), 0);
  for (std::int32_t b = 0; b < nb; ++b) {
    for (std::int32_t c = 0; c < nb; ++c) {
      std::int32_t n = 0;
      for (std::int64_t q = std::int64_t{b} * block_size;
           q < std::int64_t{b} * block_size + m.block_extent(b); ++q)
        for (std::int64_t k = std::int64_t{c} * block_size;
             k < std::int64_t{c} * block_size + m.block_extent(c); ++k)
          n += dense[q * s + k] != 0 ? 1 : 0;
      if (n == 0) continue;
      m.col_idx.push_back(c);
      m.block_nnz.push_back(n);
    }
    m.row_ptr[b + 1] = static_cast<std::int32_t>(m.col_idx.size());
  }
  for (std::int64_t q = 0; q < s; ++q) {
    std::int32_t n = 0;
    for (std::int64_t k = 0; k < s; ++k) n += dense[q * s + k] != 0 ? 1 : 0;
    m.row_nnz[q] = n;
    m.nnz += n;
  }
  return m;
}

}  // namespace mc
