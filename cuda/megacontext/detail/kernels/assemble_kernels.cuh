// SPDX-License-Identifier: Apache-2.0
// Kernels of working-context assembly on the device (facade: device_assemble.cuh). One thread
// block per output row: the row either moves from the previous assembly (a patch's move run) or
// is gathered anew from the token-embedding table (LOD0) or a level's gists. Positions (t, σ)
// use the MC_HOST_DEVICE maths of gaussian_rope_math.hpp, so CPU and GPU agree bit for bit.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "megacontext/config.hpp"
#include "megacontext/detail/gaussian_rope_math.hpp"
#include "megacontext/working_context.hpp"

namespace mc::cuda {

/// A run of output rows: moved from the previous assembly (old_begin >= 0) or fresh (old_begin
/// < 0: rows come from entries [fresh_offset, fresh_offset + count) of the fresh-entry array).
struct AssembleSegment {
  std::int64_t new_begin = 0;     ///< first output row
  std::int64_t count = 0;         ///< rows in the run
  std::int64_t old_begin = -1;    ///< first row of the previous assembly, or -1 for fresh rows
  std::int64_t fresh_offset = 0;  ///< first fresh entry (fresh runs only)
};

/// Where assembly reads from: the model's token table, the tree's LOD0 ids and gists per level,
/// all in device memory. Trivially copyable; passed to the kernel by value.
struct AssembleSource {
  const float* d_token_table = nullptr;   ///< [vocab, d] token embeddings
  std::int64_t vocab = 0;                 ///< rows of the table
  const TokenId* d_tokens = nullptr;      ///< [num_tokens] LOD0 ids of the tree
  std::int64_t num_tokens = 0;            ///< ids available
  const float* d_gists[16] = {};          ///< per level l >= 1: [level_rows[l], d] gists
  std::int64_t level_rows[16] = {};       ///< gists available per level
  std::int64_t d = 0;                     ///< embedding / gist dimension
  int k = 0;                              ///< block size K
  int depth = 0;                          ///< gist levels
  SpreadPolicy spread = SpreadPolicy::kUniformSpan;       ///< σ from the width
  PositionPolicy position = PositionPolicy::kSpanCentre;  ///< t in the span
};

/// Error flag bits a kernel may set (the host facade turns them into mc::Error).
enum AssembleFlag : int {
  kAssembleBadLod = 1,       ///< an entry's lod is outside [0, depth]
  kAssembleBadIndex = 2,     ///< an entry's node is not in the tree
  kAssembleBadToken = 4,     ///< a token id is outside the table
};

namespace detail {

inline constexpr int kAssembleThreads = 64;

struct AssembleArgs {
  AssembleSource src;
  const AssembleSegment* segments;
  std::int64_t num_segments;
  const WcEntry* fresh_entries;
  const float* old_rows;
  const GaussianPosition* old_positions;
  float* rows;
  GaussianPosition* positions;
  std::int64_t num_rows;
  int* error;
};

__global__ void __launch_bounds__(kAssembleThreads) assemble_kernel(AssembleArgs a) {
  for (std::int64_t r = blockIdx.x; r < a.num_rows; r += gridDim.x) {
    // The segment holding row r (few segments per patch: binary search).
    std::int64_t lo = 0, hi = a.num_segments - 1;
    while (lo < hi) {
      const std::int64_t mid = (lo + hi + 1) / 2;
      if (a.segments[mid].new_begin <= r) lo = mid; else hi = mid - 1;
    }
    const AssembleSegment s = a.segments[lo];
    const std::int64_t off = r - s.new_begin;
    const float* from = nullptr;
    GaussianPosition pos{};
    bool bad = false;
    if (s.old_begin >= 0) {
      from = a.old_rows + (s.old_begin + off) * a.src.d;
      pos = a.old_positions[s.old_begin + off];
    } else {
      const WcEntry e = a.fresh_entries[s.fresh_offset + off];
      std::int64_t width = 1;
      for (int l = 0; l < e.lod; ++l) width *= a.src.k;
      if (e.lod < 0 || e.lod > a.src.depth) {
        bad = true;
        if (threadIdx.x == 0) atomicOr(a.error, kAssembleBadLod);
      } else if (e.lod == 0) {
        const bool in_tree = e.index >= 0 && e.index < a.src.num_tokens;
        const TokenId id = in_tree ? a.src.d_tokens[e.index] : -1;
        if (!in_tree || id < 0 || id >= a.src.vocab) {
          bad = true;
          if (threadIdx.x == 0) atomicOr(a.error, in_tree ? kAssembleBadToken : kAssembleBadIndex);
        } else {
          from = a.src.d_token_table + static_cast<std::int64_t>(id) * a.src.d;
        }
      } else if (e.index < 0 || e.index >= a.src.level_rows[e.lod]) {
        bad = true;
        if (threadIdx.x == 0) atomicOr(a.error, kAssembleBadIndex);
      } else {
        from = a.src.d_gists[e.lod] + e.index * a.src.d;
      }
      pos = {span_position(e.index * width, width, a.src.position), span_sigma(width, a.src.spread)};
    }
    float* to = a.rows + r * a.src.d;
    // A bad entry gets a NaN row, so a caller that ignores the flag still cannot use it silently.
    for (std::int64_t c = threadIdx.x; c < a.src.d; c += blockDim.x)
      to[c] = bad ? __int_as_float(0x7fc00000) : from[c];
    if (threadIdx.x == 0) a.positions[r] = pos;
  }
}

}  // namespace detail
}  // namespace mc::cuda
