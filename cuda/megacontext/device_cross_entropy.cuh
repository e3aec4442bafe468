// SPDX-License-Identifier: Apache-2.0
// GPU facade of the next-token cross-entropy (CPU twin: mc::reference::cross_entropy in
// include/megacontext/reference/cross_entropy.hpp), the loss of the decoder's training step
// (device_llama.cuh): logits [n, V] of the tied unembedding, targets [n] = the NEXT token of each
// row or -1 (kIgnoreTarget) for rows that do not count. Loss = mean over counted rows, as in the
// reference; the backward writes (softmax − one-hot)/count, in place over the logits if wanted.
// Kernels: detail/kernels/cross_entropy_kernels.cuh. CUB style; no workspace, no allocation and
// no host read of the count (it stays on the device): graph-capturable.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <limits>

#include "megacontext/config.hpp"
#include "megacontext/detail/buffer_checks.cuh"
#include "megacontext/detail/kernels/cross_entropy_kernels.cuh"
#include "megacontext/error.cuh"
#include "megacontext/error.hpp"

namespace mc::cuda {

namespace detail {

inline void check_cross_entropy_shape(const char* fn, std::int64_t n, std::int64_t vocab) {
  MC_EXPECTS(n >= 0 && vocab >= 1 && n <= std::numeric_limits<int>::max() &&
                 vocab <= std::numeric_limits<std::int64_t>::max() / 4 / (n + 1),
             Errc::kInvalidArgument, "[mc.cross_entropy.bad_shape] ", fn, "(n = ", n,
             ", vocab = ", vocab, "): need 0 <= n < 2^31 and vocab >= 1");
}

}  // namespace detail

/// Forward: for every row i of `d_logits` [n, V] (fp32, device) writes d_lse[i] (natural-log
/// log-sum-exp) and d_row_loss[i] = lse_i − logits[i, t_i] (0 where targets[i] == -1), then
/// *d_loss = mean of row_loss over rows with a target (0 when none) and *d_count = their number
/// (all device scalars). Targets outside [0, V) other than -1 are treated as -1: validate them on
/// the host (DeviceLlama::set_batch does). Throws mc::Error for bad shapes or null pointers.
inline cudaError_t cross_entropy_forward(const float* d_logits, const TokenId* d_targets,
                                         std::int64_t n, std::int64_t vocab, float* d_lse,
                                         float* d_row_loss, float* d_loss, int* d_count,
                                         cudaStream_t stream = 0) {
  detail::check_cross_entropy_shape("cross_entropy_forward", n, vocab);
  MC_EXPECTS(d_loss && d_count && (n == 0 || (d_logits && d_targets && d_lse && d_row_loss)),
             Errc::kInvalidArgument,
             "[mc.cross_entropy.null_pointer] cross_entropy_forward: a buffer is null with n = ",
             n);
  if (n > 0) {
    detail::cross_entropy_rows_kernel<<<static_cast<unsigned>(n), detail::kCrossEntropyThreads, 0,
                                        stream>>>(d_logits, d_targets, vocab, d_lse, d_row_loss);
    MC_CUDA_RETURN_IF_ERROR(detail::after_launch(stream));
  }
  detail::cross_entropy_mean_kernel<<<1, detail::kCrossEntropyReduceThreads, 0, stream>>>(
      d_row_loss, d_targets, n, vocab, d_loss, d_count);
  return detail::after_launch(stream);
}

/// Backward of the mean loss times `scale`: dlogits[i, :] = scale·(softmax(logits_i) − one-hot
/// t_i) / count, zero on rows without a target; reads the forward's d_lse and d_count. `d_dlogits`
/// may be `d_logits` (in place) but must not partially overlap it. Throws mc::Error for bad shapes
/// or null / partially overlapping pointers; returns the launch status.
inline cudaError_t cross_entropy_backward(const float* d_logits, const TokenId* d_targets,
                                          const float* d_lse, const int* d_count, std::int64_t n,
                                          std::int64_t vocab, float* d_dlogits, float scale = 1.0f,
                                          cudaStream_t stream = 0) {
  detail::check_cross_entropy_shape("cross_entropy_backward", n, vocab);
  if (n == 0) return cudaSuccess;
  MC_EXPECTS(d_logits && d_targets && d_lse && d_count && d_dlogits, Errc::kInvalidArgument,
             "[mc.cross_entropy.null_pointer] cross_entropy_backward: a buffer is null with n = ",
             n);
  const std::size_t bytes = static_cast<std::size_t>(n * vocab) * sizeof(float);
  MC_EXPECTS(d_dlogits == d_logits || !detail::overlaps(d_dlogits, bytes, d_logits, bytes),
             Errc::kInvalidArgument,
             "[mc.cross_entropy.aliasing] cross_entropy_backward: dlogits partially overlaps "
             "logits");
  detail::cross_entropy_backward_kernel<<<static_cast<unsigned>(n), detail::kCrossEntropyThreads,
                                          0, stream>>>(d_logits, d_targets, d_lse, d_count, vocab,
                                                       scale, d_dlogits);
  return detail::after_launch(stream);
}

}  // namespace mc::cuda
