// SPDX-License-Identifier: Apache-2.0
// Kernels of the device focus selection (facade: cuda/megacontext/device_focus_select.cuh): the
// score-driven part of FocusAllocator::step (collect + policy plan) on the GPU, for contexts and
// LensNet scores that already live there. CPU reference: include/megacontext/focus_allocator.hpp
// (collect), policies/greedy_threshold.hpp and policies/budget_optimal.hpp.
//
// Pipeline: focus_candidates_kernel gives every entry an expansion key and a collapse key (or a
// sentinel), cub::DeviceRadixSort orders them, and focus_walk_kernel (one block) runs the
// policy's walk over the sorted lists and writes the chosen edits in position order.
//
// Why this shape:
//  - One sort key per candidate, (kind, rank of |score|, position) packed into one integer, puts
//    expansions first and collapses second, each in exactly the order the CPU policies rank them
//    (|score| descending, older entry first on ties); GreedyThreshold's merged order is the same
//    key without the kind bit. Scores of candidates are non-zero and in [-1, 1], so the float's
//    bits are a 30-bit monotone code.
//  - A collapse group's mean is summed by one thread in sibling order, like the CPU loop. A tree
//    reduction (cub::DeviceSegmentedReduce, a warp reduce) rounds differently and would flip
//    groups whose mean sits on the collapse threshold, or reorder ties; exactness wins here, and
//    K <= 64 sequential adds per group start cost less than a segmented-reduce launch.
//  - The policy walks take O(max_edits) steps, not O(candidates): BudgetOptimal reads only the
//    best max_edits of each list, and GreedyThreshold skips a run of expansions that cannot fit
//    with one binary search to the next collapse (the CPU heap pops them one by one).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "megacontext/working_context.hpp"

namespace mc::cuda {

/// What the device selection reads besides the entries and scores; built on the host from the
/// working context and the allocator (focus_select_params in device_focus_select.cuh).
struct FocusSelectParams {
  std::int64_t num_entries = 0;   ///< entries in the context (n)
  std::int64_t first_pos = 0;     ///< first entry after the sinks (WorkingContext::first_window_pos)
  std::int64_t protect_from = 0;  ///< num_tokens - recent_tokens: an entry ending after it stays
  std::int64_t free_entries = 0;  ///< w_max - n: entries the edits may add
  std::int32_t cooled = 0;        ///< step - cooldown_steps: entries changed at or before may change
  std::int32_t max_edits = 0;     ///< most edits this step
  float expand_threshold = 0.25f;     ///< expand a gist scoring above this
  float collapse_threshold = -0.25f;  ///< collapse a group whose mean score is below this
};
static_assert(std::is_trivially_copyable_v<FocusSelectParams>);

/// What the device selection reports (written by the walk kernel, read back with the edits).
struct FocusSelectResult {
  std::int32_t num_edits = 0;            ///< edits written to d_edits, sorted by position
  std::int32_t expansions = 0;           ///< of which expansions
  std::int32_t collapses = 0;            ///< of which collapses
  std::int32_t reserved = 0;             ///< padding (0)
  std::int64_t expand_candidates = 0;    ///< eligible expansions (FocusPlanInput::expansions)
  std::int64_t collapse_candidates = 0;  ///< eligible collapse groups
  std::int64_t bad_score_index = -1;     ///< first entry whose score is NaN or outside [-1, 1]
                                         ///< (then no edit is chosen), -1 when all are valid
};
static_assert(std::is_trivially_copyable_v<FocusSelectResult>);

namespace detail {

/// Threads per block of the candidate kernel and of the walk kernel.
inline constexpr int kFocusThreads = 256;
/// Bits of the |score| code in a key: 0x3F800000 - bits(|s|) < 2^30 for 0 < |s| <= 1.
inline constexpr int kFocusScoreBits = 30;
/// bits(1.0f): the largest |score| code subtracts from it, so larger |s| sorts first.
inline constexpr std::uint32_t kFocusOneBits = 0x3F800000u;

/// Counters the candidate kernel accumulates (zeroed / set to all ones before it runs).
struct FocusCounters {
  unsigned long long expansions;  ///< eligible expansions
  unsigned long long collapses;   ///< eligible collapse groups
  unsigned long long bad_index;   ///< smallest entry with an invalid score (all ones: none)
};

/// Key of a candidate: kind (0 expand, 1 collapse) above the |score| code above the position.
/// Ascending keys = expansions then collapses, each by |score| descending, then position.
__host__ __device__ inline std::uint64_t focus_key(int kind, float abs_score, std::int64_t pos,
                                                   int pos_bits) {
  std::uint32_t bits = 0;
  static_assert(sizeof(bits) == sizeof(abs_score));
  memcpy(&bits, &abs_score, sizeof(bits));
  const std::uint64_t code = kFocusOneBits - bits;
  return (static_cast<std::uint64_t>(kind) << (pos_bits + kFocusScoreBits)) | (code << pos_bits) |
         static_cast<std::uint64_t>(pos);
}
/// All ones over the sorted bits: above every real key.
__host__ __device__ inline std::uint64_t focus_sentinel(int pos_bits) {
  return (std::uint64_t{1} << (pos_bits + kFocusScoreBits + 1)) - 1;
}
/// The key without its kind bit: GreedyThreshold's merged rank (positions never repeat).
__device__ inline std::uint64_t focus_rank(std::uint64_t key, int pos_bits) {
  return key & ((std::uint64_t{1} << (pos_bits + kFocusScoreBits)) - 1);
}
/// Entry position of a key.
__device__ inline std::int64_t focus_pos(std::uint64_t key, int pos_bits) {
  return static_cast<std::int64_t>(key & ((std::uint64_t{1} << pos_bits) - 1));
}
/// |score| of a key (exact: the code is a bijection on the float's bits).
__device__ inline float focus_abs_score(std::uint64_t key, int pos_bits) {
  const auto code =
      static_cast<std::uint32_t>((key >> pos_bits) & ((std::uint64_t{1} << kFocusScoreBits) - 1));
  return __uint_as_float(kFocusOneBits - code);
}

/// True when the entry can change at all: its span ends before the protected recent tokens.
/// Entries from first_pos on tile the timeline in order, so span ends grow with the position and
/// this equals the CPU's "i < protect_pos" (found there by walking back from the end).
template <int K>
__device__ inline bool focus_unprotected(const WcEntry& e, std::int64_t protect_from) {
  std::int64_t span = 1;
  for (int l = 0; l < e.lod; ++l) span *= K;
  return (e.index + 1) * span <= protect_from;
}

/// Slot i of `keys` [2n]: entry i's expansion key; slot n + i: the key of the collapse group
/// starting at i; sentinel where there is none. Counts both and finds invalid scores.
template <int K, int Depth>
__global__ void __launch_bounds__(kFocusThreads)
    focus_candidates_kernel(FocusSelectParams p, const WcEntry* __restrict__ entries,
                            const float* __restrict__ scores, int pos_bits,
                            std::uint64_t* __restrict__ keys, FocusCounters* counters) {
  const std::int64_t n = p.num_entries;
  const std::uint64_t none = focus_sentinel(pos_bits);
  const float hi = p.expand_threshold, lo = p.collapse_threshold;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  // Every lane runs the same number of rounds, so the warp votes below see the whole warp.
  for (std::int64_t base = static_cast<std::int64_t>(blockIdx.x) * blockDim.x; base < n;
       base += stride) {
    const std::int64_t i = base + threadIdx.x;
    bool expand = false, collapse = false;
    if (i < n) {
      const float s = scores[i];
      if (!(fabsf(s) <= 1.0f)) atomicMin(&counters->bad_index, static_cast<unsigned long long>(i));
      const WcEntry e = entries[i];
      std::uint64_t ekey = none, ckey = none;
      if (i >= p.first_pos && focus_unprotected<K>(e, p.protect_from)) {
        if (e.lod >= 1 && s > hi && e.changed_at <= p.cooled) {
          expand = true;
          ekey = focus_key(0, s, i, pos_bits);
        }
        if (e.lod < Depth && e.index % K == 0 && i + K <= n) {
          const WcEntry last = entries[i + K - 1];
          if (last.lod == e.lod && last.index == e.index + K - 1 &&
              focus_unprotected<K>(last, p.protect_from)) {
            // Sibling order, one accumulator, as the CPU loop (see the file comment).
            float sum = 0.0f, top = -2.0f;
            bool cool = true;
            for (int j = 0; j < K; ++j) {
              const float x = scores[i + j];
              sum = __fadd_rn(sum, x);
              top = top < x ? x : top;  // std::max(top, x)
              cool = cool && entries[i + j].changed_at <= p.cooled;
            }
            const float mean = __fdiv_rn(sum, static_cast<float>(K));
            if (cool && mean < lo && !(top > hi)) {
              collapse = true;
              ckey = focus_key(1, -mean, i, pos_bits);
            }
          }
        }
      }
      keys[i] = ekey;
      keys[n + i] = ckey;
    }
    const unsigned ne = __popc(__ballot_sync(0xFFFFFFFFu, expand));
    const unsigned nc = __popc(__ballot_sync(0xFFFFFFFFu, collapse));
    if ((threadIdx.x & 31) == 0) {
      if (ne) atomicAdd(&counters->expansions, static_cast<unsigned long long>(ne));
      if (nc) atomicAdd(&counters->collapses, static_cast<unsigned long long>(nc));
    }
  }
}

/// Tags of the two policies the walk kernel implements.
enum class FocusWalk : int { kGreedyThreshold = 0, kBudgetOptimal = 1 };

/// First index in [lo, hi) of the ascending `keys` whose merged rank is >= `rank`.
__device__ inline std::int64_t focus_lower_bound(const std::uint64_t* keys, std::int64_t lo,
                                                 std::int64_t hi, std::uint64_t rank,
                                                 int pos_bits) {
  while (lo < hi) {
    const std::int64_t mid = lo + (hi - lo) / 2;
    if (focus_rank(keys[mid], pos_bits) < rank) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/// Runs the policy over the sorted keys (expansions at [0, E), collapses at [E, E + C)) in one
/// thread, then writes the chosen edits sorted by position with the whole block.
/// `chosen` holds min(max_edits, n) keys; `gains` min(max_edits, n) + 1 doubles.
template <int K, FocusWalk Walk>
__global__ void __launch_bounds__(kFocusThreads)
    focus_walk_kernel(FocusSelectParams p, const std::uint64_t* __restrict__ sorted, int pos_bits,
                      const FocusCounters* __restrict__ counters, std::uint64_t* chosen,
                      double* gains, FocusEdit* __restrict__ edits,
                      FocusSelectResult* __restrict__ result) {
  __shared__ std::int64_t s_count;
  const auto E = static_cast<std::int64_t>(counters->expansions);
  const auto C = static_cast<std::int64_t>(counters->collapses);
  const unsigned long long bad = counters->bad_index;
  if (threadIdx.x == 0) {
    const std::uint64_t* exp = sorted;
    const std::uint64_t* col = sorted + E;
    const std::int64_t cap = p.max_edits > 0 ? p.max_edits : 0;
    std::int64_t count = 0;
    if (bad != ~0ull) {
      // The CPU throws before choosing anything; the host reads bad_score_index and throws.
    } else if constexpr (Walk == FocusWalk::kGreedyThreshold) {
      // GreedyThreshold::plan: pop by |score| (merged order), take while the cap allows; an
      // expansion that does not fit is skipped, and so is every one up to the next collapse.
      std::int64_t free = p.free_entries, left = C, ie = 0, ic = 0;
      while (count < cap && (ie < E || ic < C)) {
        const bool is_exp = ie < E && (ic >= C || focus_rank(exp[ie], pos_bits) <
                                                      focus_rank(col[ic], pos_bits));
        if (is_exp) {
          if (free < K - 1) {
            if (left == 0) break;  // nothing can free room any more
            ie = focus_lower_bound(exp, ie, E, focus_rank(col[ic], pos_bits), pos_bits);
            continue;
          }
          free -= K - 1;
          chosen[count++] = exp[ie++];
        } else {
          free += K - 1;
          --left;
          chosen[count++] = col[ic++];
        }
      }
    } else {
      // BudgetOptimal::plan: the best e expansions and c collapses for the best feasible e, with
      // the prefix gains summed in the same order and precision as the CPU.
      const std::int64_t et = E < cap ? E : cap, ct = C < cap ? C : cap;
      const std::int64_t slots = K > 1 ? p.free_entries / (K - 1) : 0;
      gains[0] = 0.0;
      for (std::int64_t i = 0; i < ct; ++i)
        gains[i + 1] = gains[i] - static_cast<double>(-focus_abs_score(col[i], pos_bits));
      double best = -1.0, ge = 0.0;
      std::int64_t best_e = 0, best_c = 0;
      for (std::int64_t e = 0; e <= et; ++e) {
        if (e > 0) ge = ge + static_cast<double>(focus_abs_score(exp[e - 1], pos_bits));
        const std::int64_t c = ct < cap - e ? ct : cap - e;
        if (e - c > slots) break;
        const double g = ge + gains[c];
        if (g > best) {
          best = g;
          best_e = e;
          best_c = c;
        }
      }
      for (std::int64_t i = 0; i < best_e; ++i) chosen[count++] = exp[i];
      for (std::int64_t i = 0; i < best_c; ++i) chosen[count++] = col[i];
    }
    s_count = count;
  }
  __syncthreads();
  const std::int64_t count = s_count;
  // Position order (what WorkingContext::apply takes): rank of each edit among the chosen.
  const std::uint64_t pos_mask = (std::uint64_t{1} << pos_bits) - 1;
  int ne = 0;
  for (std::int64_t t = threadIdx.x; t < count; t += blockDim.x) {
    const std::uint64_t k = chosen[t];
    const std::uint64_t pos = k & pos_mask;
    std::int64_t rank = 0;
    for (std::int64_t u = 0; u < count; ++u) rank += (chosen[u] & pos_mask) < pos ? 1 : 0;
    const bool is_col = (k >> (pos_bits + kFocusScoreBits)) != 0;
    edits[rank] = FocusEdit{is_col ? FocusEdit::kCollapse : FocusEdit::kExpand,
                            static_cast<std::int64_t>(pos)};
    ne += is_col ? 0 : 1;
  }
  // Expansion count: a block reduction through shared memory atomics (count <= max_edits).
  __shared__ int s_expansions;
  if (threadIdx.x == 0) s_expansions = 0;
  __syncthreads();
  if (ne) atomicAdd(&s_expansions, ne);
  __syncthreads();
  if (threadIdx.x == 0) {
    FocusSelectResult r;
    r.num_edits = static_cast<std::int32_t>(count);
    r.expansions = s_expansions;
    r.collapses = static_cast<std::int32_t>(count) - s_expansions;
    r.reserved = 0;
    r.expand_candidates = E;
    r.collapse_candidates = C;
    r.bad_score_index = bad == ~0ull ? -1 : static_cast<std::int64_t>(bad);
    *result = r;
  }
}

}  // namespace detail
}  // namespace mc::cuda
