// SPDX-License-Identifier: Apache-2.0
// GPU facade of focus selection: the score-driven part of one FocusAllocator step (which edits
// to make) for a working context and LensNet scores that live on the device, so the scores never
// travel to the host; only the chosen edits (max_edits of them) come back. Same edits as the CPU
// FocusAllocator with GreedyThreshold or BudgetOptimal for the same entries and scores (tested in
// tests/cuda/test_focus_select_parity.cu). Kernels: detail/kernels/focus_select_kernels.cuh.
//
// What stays on the host: applying the edits (WorkingContext::apply) and the structural work
// FocusAllocator::step does around the policy (restoring the budget after extend(), bringing
// evicted history back); select only what step() would choose with restore_score = NaN on a
// context within w_max. focus_select_params() builds the parameters from the context and the
// allocator and refuses a context over budget.
//
// CUB style: the two-phase workspace protocol (call with d_temp = nullptr to learn temp_bytes),
// the stream last, cudaError_t returned, no allocation, no synchronisation: graph-capturable.
#pragma once

#include <cuda_runtime.h>

#include <cub/device/device_radix_sort.cuh>

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "megacontext/config.hpp"
#include "megacontext/detail/kernels/focus_select_kernels.cuh"
#include "megacontext/error.cuh"
#include "megacontext/error.hpp"
#include "megacontext/focus_allocator.hpp"
#include "megacontext/policies/budget_optimal.hpp"
#include "megacontext/policies/greedy_threshold.hpp"
#include "megacontext/working_context.hpp"

namespace mc::cuda {

/// The parameters of a device selection equal to `alloc.step(wc, scores)` (restore_score NaN)
/// at the allocator's current step. Throws [mc.focus_select.over_budget] when wc holds more than
/// w_max entries (step() would first restore the budget on the host: call admit()).
template <ConfigType C, class Policy>
FocusSelectParams focus_select_params(const WorkingContext<C>& wc,
                                      const FocusAllocator<C, Policy>& alloc) {
  const FocusOptions& o = alloc.options();
  const std::int64_t w_max = wc.options().w_max;
  MC_EXPECTS(wc.size() <= w_max, Errc::kInvalidArgument, "[mc.focus_select.over_budget] the "
             "context holds ", wc.size(), " entries, over w_max = ", w_max,
             "; restore the budget on the host first (FocusAllocator::admit)");
  FocusSelectParams p;
  p.num_entries = wc.size();
  p.first_pos = wc.first_window_pos();
  p.protect_from = wc.num_tokens() - o.recent_tokens;
  p.free_entries = w_max - wc.size();
  p.cooled = alloc.step_number() - o.cooldown_steps;
  p.max_edits = o.max_edits;
  p.expand_threshold = o.expand_threshold;
  p.collapse_threshold = o.collapse_threshold;
  return p;
}

namespace detail {

/// Bits that hold an entry position < n (at least 1).
inline int focus_pos_bits(std::int64_t n) {
  return std::max(1, static_cast<int>(std::bit_width(static_cast<std::uint64_t>(n))));
}

/// Carves aligned sub-buffers out of one workspace; with a null base it only adds up the bytes,
/// so the size query and the real call run the same code (FlashInfer's counting allocator).
class WorkspaceCarver {
 public:
  explicit WorkspaceCarver(void* base) : base_(static_cast<unsigned char*>(base)) {}
  template <class T>
  T* take(std::size_t count) {
    const std::size_t at = (used_ + 255) & ~std::size_t{255};
    used_ = at + count * sizeof(T);
    return base_ ? reinterpret_cast<T*>(base_ + at) : nullptr;
  }
  std::size_t bytes() const { return (used_ + 255) & ~std::size_t{255}; }

 private:
  unsigned char* base_;
  std::size_t used_ = 0;
};

template <class Policy>
constexpr FocusWalk focus_walk_of() {
  static_assert(std::is_same_v<Policy, GreedyThreshold> || std::is_same_v<Policy, BudgetOptimal>,
                "mc::cuda::focus_select: the device walk exists for mc::GreedyThreshold and "
                "mc::BudgetOptimal; run other policies through the CPU FocusAllocator");
  return std::is_same_v<Policy, GreedyThreshold> ? FocusWalk::kGreedyThreshold
                                                 : FocusWalk::kBudgetOptimal;
}

}  // namespace detail

/// Chooses the edits FocusAllocator<C, Policy>::step would make for `d_entries` [n] and
/// `d_scores` [n] (device memory; p from focus_select_params), and writes them sorted by position
/// to `d_edits` (room for min(max_edits, n)) and the counts to `*d_result` (device memory).
/// A NaN or out-of-range score chooses nothing and sets result.bad_score_index (check it with
/// throw_if_focus_select_failed). Call first with d_temp = nullptr to get temp_bytes. Throws
/// mc::Error for bad parameters or null buffers, before any launch.
template <ConfigType C, class Policy>
cudaError_t focus_select(void* d_temp, std::size_t& temp_bytes, const WcEntry* d_entries,
                         const float* d_scores, const FocusSelectParams& p, FocusEdit* d_edits,
                         FocusSelectResult* d_result, cudaStream_t stream = 0) {
  constexpr detail::FocusWalk walk = detail::focus_walk_of<Policy>();
  constexpr int K = C::K;
  static_assert(K <= 4096);
  const std::int64_t n = p.num_entries;
  MC_EXPECTS(n >= 0 && n <= (std::int64_t{1} << 30) && p.first_pos >= 0 && p.first_pos <= n &&
                 p.free_entries >= 0 && p.max_edits >= 0,
             Errc::kInvalidArgument, "[mc.focus_select.bad_params] num_entries = ", n,
             ", first_pos = ", p.first_pos, ", free_entries = ", p.free_entries,
             ", max_edits = ", p.max_edits,
             "; need 0 <= first_pos <= num_entries <= 2^30, free_entries >= 0, max_edits >= 0");
  MC_EXPECTS(p.collapse_threshold < 0 && p.expand_threshold > 0, Errc::kInvalidArgument,
             "[mc.focus_select.bad_params] collapse_threshold = ", p.collapse_threshold,
             ", expand_threshold = ", p.expand_threshold,
             "; need collapse < 0 < expand (as FocusOptions::validate)");
  MC_EXPECTS(d_temp == nullptr || (d_result != nullptr && (n == 0 || (d_entries && d_scores)) &&
                                   (std::min<std::int64_t>(p.max_edits, n) == 0 || d_edits)),
             Errc::kInvalidArgument, "[mc.focus_select.null_pointer] focus_select: null entries, "
             "scores, edits or result buffer with num_entries = ", n);
  const int pos_bits = detail::focus_pos_bits(n);
  const std::int64_t room = std::min<std::int64_t>(p.max_edits, n);
  const auto items = static_cast<std::int64_t>(2 * n);
  // Workspace: counters, keys in and out, CUB's sort scratch, the chosen keys and gains.
  std::size_t sort_bytes = 0;
  MC_CUDA_RETURN_IF_ERROR(cub::DeviceRadixSort::SortKeys(
      nullptr, sort_bytes, static_cast<const std::uint64_t*>(nullptr),
      static_cast<std::uint64_t*>(nullptr), items, 0, pos_bits + detail::kFocusScoreBits + 1,
      stream));
  detail::WorkspaceCarver carve(d_temp);
  auto* counters = carve.take<detail::FocusCounters>(1);
  auto* keys = carve.take<std::uint64_t>(static_cast<std::size_t>(items));
  auto* sorted = carve.take<std::uint64_t>(static_cast<std::size_t>(items));
  auto* sort_temp = carve.take<unsigned char>(sort_bytes);
  auto* chosen = carve.take<std::uint64_t>(static_cast<std::size_t>(std::max<std::int64_t>(room, 1)));
  auto* gains = carve.take<double>(static_cast<std::size_t>(room + 1));
  if (d_temp == nullptr) {
    temp_bytes = carve.bytes();
    return cudaSuccess;
  }
  MC_EXPECTS(temp_bytes >= carve.bytes(), Errc::kInvalidArgument,
             "[mc.focus_select.small_workspace] temp_bytes = ", temp_bytes, " but this call needs ",
             carve.bytes(), " (query it with d_temp = nullptr)");

  // expansions = collapses = 0, bad_index = all ones (none).
  MC_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(counters, 0, 2 * sizeof(unsigned long long), stream));
  MC_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(&counters->bad_index, 0xFF, sizeof(unsigned long long),
                                          stream));
  if (n > 0) {
    const auto blocks = static_cast<unsigned>(std::min<std::int64_t>(
        (n + detail::kFocusThreads - 1) / detail::kFocusThreads, 1 << 16));
    detail::focus_candidates_kernel<K, C::Depth>
        <<<blocks, detail::kFocusThreads, 0, stream>>>(p, d_entries, d_scores, pos_bits, keys,
                                                       counters);
    MC_CUDA_RETURN_IF_ERROR(detail::after_launch(stream));
    std::size_t bytes = sort_bytes;
    MC_CUDA_RETURN_IF_ERROR(cub::DeviceRadixSort::SortKeys(
        sort_temp, bytes, keys, sorted, items, 0, pos_bits + detail::kFocusScoreBits + 1, stream));
  }
  detail::focus_walk_kernel<K, walk><<<1, detail::kFocusThreads, 0, stream>>>(
      p, sorted, pos_bits, counters, chosen, gains, d_edits, d_result);
  return detail::after_launch(stream);
}

/// Throws [mc.focus_select.bad_scores] (kInvalidArgument) naming the entry when a selection saw
/// a NaN or out-of-range score (`r` read back after the stream finished).
inline void throw_if_focus_select_failed(const FocusSelectResult& r) {
  MC_EXPECTS(r.bad_score_index < 0, Errc::kInvalidArgument,
             "[mc.focus_select.bad_scores] score of entry ", r.bad_score_index,
             " is NaN or outside [-1, 1]; no edit was chosen");
}

}  // namespace mc::cuda
