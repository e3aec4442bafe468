// SPDX-License-Identifier: Apache-2.0
// Kernels of the device pyramid-mask BSR builder (facade: cuda/megacontext/device_pyramid_bsr.cuh).
// One thread per query computes that query's key ranges exactly as PyramidMask::row_unchecked
// does on the CPU (include/megacontext/pyramid_mask.hpp), then either counts the key tiles its
// ranges touch or writes one (block row, key block) pair per touched tile with the keys it
// allows there. Sorting and reducing the pairs (Thrust) gives the BSR tiles.
//
// The row maths is a line-by-line transcription of the CPU code, because PyramidMask keeps it
// in host-only members; the parity test (tests/cuda/test_pyramid_bsr_parity.cu) compares whole
// BSR masks over every variant, so the two cannot drift apart unnoticed.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

namespace mc::cuda {

/// Trivially copyable view of a PyramidMask (options resolved, layout tables), what the device
/// row function reads. Built by pyramid_mask_ref() in device_pyramid_bsr.cuh.
struct PyramidMaskRef {
  static constexpr int kLevels = 16;        ///< table size (kMaxPyramidLevels + 1)
  std::int32_t r = 2;                       ///< children per summary
  std::int32_t window = 1;                  ///< W
  std::int32_t num_levels = 0;              ///< L
  std::int32_t causal = 0;                  ///< 1 for Causality::kCausal
  std::int32_t num_global = 0;              ///< G
  std::int32_t shift = -1;                  ///< log2(r) when r is a power of two, else -1
  std::int32_t seq_len = 0;                 ///< S
  std::int32_t num_leaves = 0;              ///< N
  std::int64_t level_window[kLevels] = {};  ///< resolved W_l, l = 1..L-1
  std::int64_t span[kLevels] = {};          ///< r^l, l = 0..L
  std::int32_t size[kLevels] = {};          ///< nodes per level
  std::int32_t offset[kLevels + 1] = {};    ///< first sequence position of each level; [L+1] = S
};
static_assert(std::is_trivially_copyable_v<PyramidMaskRef>);

namespace detail {

/// Threads per block of the per-query kernels.
inline constexpr int kPyramidThreads = 128;
/// Range capacity of one row (PyramidRow::kMaxRanges).
inline constexpr int kPyramidMaxRanges = 20;

struct DeviceRange {
  std::int32_t level, begin, end;
};

/// PyramidRow on the device: add, then normalize (sort by (level, begin), merge touching runs).
struct DeviceRow {
  DeviceRange g[kPyramidMaxRanges];
  int n = 0;
  __device__ void add(std::int32_t level, std::int64_t begin, std::int64_t end) {
    if (begin < end)
      g[n++] = {level, static_cast<std::int32_t>(begin), static_cast<std::int32_t>(end)};
  }
  __device__ void normalize() {
    for (int i = 1; i < n; ++i)
      for (int j = i; j > 0; --j) {
        const DeviceRange a = g[j], b = g[j - 1];
        if (!(a.level != b.level ? a.level < b.level : a.begin < b.begin)) break;
        g[j] = b;
        g[j - 1] = a;
      }
    int m = 0;
    for (int i = 0; i < n; ++i) {
      if (m > 0 && g[m - 1].level == g[i].level && g[i].begin <= g[m - 1].end)
        g[m - 1].end = g[m - 1].end > g[i].end ? g[m - 1].end : g[i].end;
      else
        g[m++] = g[i];
    }
    n = m;
  }
};

__device__ inline std::int64_t pyr_div_span(const PyramidMaskRef& p, std::int64_t x, int level) {
  return p.shift >= 0 ? x >> (p.shift * level) : x / p.span[level];
}

/// PyramidMask::boundaries.
__device__ inline void pyr_boundaries(const PyramidMaskRef& p, std::int64_t end, std::int64_t* a) {
  const std::int64_t r = p.r;
  const std::int64_t x = end - p.window;
  a[0] = x <= 0 ? 0 : pyr_div_span(p, x, 1) * r;
  for (int m = 1; m < p.num_levels; ++m) {
    const std::int64_t span = p.span[m];
    const std::int64_t next = p.span[m + 1];
    a[m] = pyr_div_span(p, a[m - 1], m) <= p.level_window[m]
               ? 0
               : pyr_div_span(p, a[m - 1] - p.level_window[m] * span, m + 1) * next;
  }
}

/// PyramidMask::row_unchecked for the query at sequence position `pos`.
__device__ inline void pyr_row(const PyramidMaskRef& p, std::int32_t pos, DeviceRow& row) {
  int level = 0;
  while (level < p.num_levels && pos >= p.offset[level + 1]) ++level;
  const std::int64_t q = pos - p.offset[level];
  const int num_levels = p.num_levels;
  const std::int64_t r = p.r;
  const std::int64_t end = (q + 1) * p.span[level];
  const std::int64_t globals = p.num_global;
  row.n = 0;
  if (level == 0 && q < globals) {
    row.add(0, 0, q + 1);
    return;
  }
  row.add(0, 0, globals < end ? globals : end);
  if (level == num_levels) {
    row.add(level, 0, q + 1);
    row.normalize();
    return;
  }
  const std::int64_t pp = pyr_div_span(p, q, 1);
  const std::int64_t parent_end = (pp + 1) * p.span[level + 1];
  const bool lift = p.causal != 0 && parent_end <= p.num_leaves;
  std::int64_t a[PyramidMaskRef::kLevels];
  pyr_boundaries(p, lift ? parent_end : end, a);
  const std::int64_t own_begin = pyr_div_span(p, a[level], level);
  if (lift) {
    row.add(level, own_begin, pp * r);
    row.add(level, q, q + 1);
    row.add(level + 1, pp, pp + 1);
  } else {
    row.add(level, own_begin, q + 1);
  }
  for (int m = level + 1; m < num_levels; ++m)
    row.add(m, pyr_div_span(p, a[m], m), pyr_div_span(p, a[m - 1], m));
  row.add(num_levels, 0, pyr_div_span(p, a[num_levels - 1], num_levels));
  row.normalize();
}

/// Pass 1: per query, the number of key tiles its ranges touch (a tile counted once per range
/// that reaches it; the reduction merges them) and its allowed keys.
__global__ void __launch_bounds__(kPyramidThreads)
    pyramid_count_kernel(PyramidMaskRef p, std::int32_t block_size,
                         std::int32_t* __restrict__ touches, std::int32_t* __restrict__ row_nnz) {
  const std::int64_t q = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (q >= p.seq_len) return;
  DeviceRow row;
  pyr_row(p, static_cast<std::int32_t>(q), row);
  std::int32_t tiles = 0, keys = 0;
  for (int i = 0; i < row.n; ++i) {
    const std::int32_t off = p.offset[row.g[i].level];
    const std::int32_t kb = off + row.g[i].begin, ke = off + row.g[i].end;
    keys += ke - kb;
    tiles += (ke - 1) / block_size - kb / block_size + 1;
  }
  touches[q] = tiles;
  row_nnz[q] = keys;
}

/// Pass 2: per query, one (block row << 32 | key block, allowed keys in that tile) pair per
/// touched tile, written from `first[q]` on.
__global__ void __launch_bounds__(kPyramidThreads)
    pyramid_pairs_kernel(PyramidMaskRef p, std::int32_t block_size,
                         const std::int64_t* __restrict__ first,
                         std::uint64_t* __restrict__ tile_keys, std::int32_t* __restrict__ counts) {
  const std::int64_t q = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (q >= p.seq_len) return;
  DeviceRow row;
  pyr_row(p, static_cast<std::int32_t>(q), row);
  const auto b = static_cast<std::uint64_t>(q / block_size);
  std::int64_t at = first[q];
  for (int i = 0; i < row.n; ++i) {
    const std::int32_t off = p.offset[row.g[i].level];
    const std::int32_t kb = off + row.g[i].begin, ke = off + row.g[i].end;
    for (std::int32_t c = kb / block_size; c <= (ke - 1) / block_size; ++c) {
      const std::int64_t lo = kb > std::int64_t{c} * block_size ? kb : std::int64_t{c} * block_size;
      const std::int64_t hi =
          ke < std::int64_t{c + 1} * block_size ? ke : std::int64_t{c + 1} * block_size;
      tile_keys[at] = (b << 32) | static_cast<std::uint32_t>(c);
      counts[at] = static_cast<std::int32_t>(hi - lo);
      ++at;
    }
  }
}

}  // namespace detail
}  // namespace mc::cuda
