// SPDX-License-Identifier: Apache-2.0
// GPU facade of working-context assembly: the device copy of the model input (rows [W, d] and
// positions (t, σ)) built from the tree on the device, and patched after each allocator step from
// the context's WcPatch, so only the fresh rows are gathered and nothing crosses from the host
// but the patch itself. CUB style: free functions, stream last, cudaError_t returned, no
// allocation, graph-capturable. CPU reference: include/megacontext/assemble.hpp.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "megacontext/detail/kernels/assemble_kernels.cuh"
#include "megacontext/error.cuh"
#include "megacontext/error.hpp"
#include "megacontext/working_context.hpp"

namespace mc::cuda {

/// Host side of a patch: the segments (moves, then fresh runs, in output order) and the entries
/// of the fresh rows, ready to upload. `all` = every row fresh (a full assembly).
struct AssemblePlan {
  std::vector<AssembleSegment> segments;  ///< sorted by new_begin, covering [0, num_rows)
  std::vector<WcEntry> fresh_entries;     ///< entries of the fresh rows, in output order
  std::int64_t num_rows = 0;              ///< rows of the result
};

/// The plan that brings the previous assembly (at wc.begin_patch()) up to date with `wc`.
template <class C>
AssemblePlan plan_patch(const WorkingContext<C>& wc) {
  const WcPatch p = wc.patch();
  AssemblePlan plan;
  plan.num_rows = p.new_size;
  for (const auto& m : p.moves) plan.segments.push_back({m.new_begin, m.count, m.old_begin, 0});
  for (const auto& f : p.fresh) {
    plan.segments.push_back({f.begin, f.end - f.begin, -1,
                             static_cast<std::int64_t>(plan.fresh_entries.size())});
    for (std::int64_t i = f.begin; i < f.end; ++i) plan.fresh_entries.push_back(wc[i]);
  }
  std::sort(plan.segments.begin(), plan.segments.end(),
            [](const AssembleSegment& a, const AssembleSegment& b) { return a.new_begin < b.new_begin; });
  return plan;
}

/// The plan of a full assembly of `wc` (every row fresh).
template <class C>
AssemblePlan plan_full(const WorkingContext<C>& wc) {
  AssemblePlan plan;
  plan.num_rows = wc.size();
  if (wc.size() > 0) plan.segments.push_back({0, wc.size(), -1, 0});
  plan.fresh_entries.assign(wc.entries().begin(), wc.entries().end());
  return plan;
}

/// Writes `num_rows` rows [num_rows, src.d] to `d_rows` and their positions to `d_positions`:
/// each row is moved from `d_old_rows`/`d_old_positions` or gathered from `src`, as
/// `d_segments` [num_segments] (sorted, covering every row; see AssemblePlan) say. Every pointer
/// is device memory; the new buffers must not overlap the old ones. Entries that name nodes
/// outside `src` get NaN rows and set AssembleFlag bits in `*d_error` (device int; may be null
/// only when the plan has no fresh rows). Throws mc::Error for bad arguments before any launch.
inline cudaError_t assemble_rows(const AssembleSource& src, const AssembleSegment* d_segments,
                                 std::int64_t num_segments, const WcEntry* d_fresh_entries,
                                 const float* d_old_rows, const GaussianPosition* d_old_positions,
                                 std::int64_t num_rows, float* d_rows,
                                 GaussianPosition* d_positions, int* d_error,
                                 cudaStream_t stream = 0) {
  MC_EXPECTS(num_rows >= 0 && src.d >= 1 && src.k >= 2 && src.depth >= 1 && src.depth < 16,
             Errc::kInvalidArgument, "[mc.assemble.bad_shape] assemble_rows(num_rows = ",
             num_rows, ", d = ", src.d, ", K = ", src.k, ", depth = ", src.depth, ")");
  if (num_rows == 0) return cudaSuccess;
  MC_EXPECTS(num_segments >= 1 && d_segments && d_rows && d_positions && d_error,
             Errc::kInvalidArgument, "[mc.assemble.null_pointer] assemble_rows: ", num_segments,
             " segments; segments, rows, positions and the error flag must be device pointers");
  detail::AssembleArgs a{src,     d_segments, num_segments, d_fresh_entries, d_old_rows,
                         d_old_positions, d_rows, d_positions, num_rows, d_error};
  const auto blocks = static_cast<unsigned>(std::min<std::int64_t>(num_rows, 1 << 20));
  detail::assemble_kernel<<<blocks, detail::kAssembleThreads, 0, stream>>>(a);
  return detail::after_launch(stream);
}

/// Throws mc::Error naming the problems flagged by assemble_rows in `flags` (read back by the
/// caller after the stream finished); does nothing when `flags` is 0.
inline void throw_if_assemble_failed(int flags) {
  MC_EXPECTS(flags == 0, Errc::kOutOfRange, "[mc.assemble.bad_entry] device assembly found ",
             (flags & kAssembleBadLod) ? "an entry with a lod outside the tree; " : "",
             (flags & kAssembleBadIndex) ? "an entry naming a node the tree does not hold; " : "",
             (flags & kAssembleBadToken) ? "a token id outside the embedding table; " : "",
             "those rows were written as NaN");
}

}  // namespace mc::cuda
