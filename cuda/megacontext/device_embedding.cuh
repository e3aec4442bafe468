// SPDX-License-Identifier: Apache-2.0
// GPU facade of the token embedding of the decoder (CPU twins: mc::reference::LlamaModel::embed
// and embed_backward in include/megacontext/reference/llama.hpp): the first step of the forward
// (ids → rows of the tied table) and the last of the backward (rows' gradients scattered back
// into the table's gradient, which already holds the unembedding's share). Kernels:
// detail/kernels/embedding_kernels.cuh. CUB style; no workspace, no allocation: graph-capturable.
//
// The device cannot throw: an id outside [0, vocab) gives a NaN row in the forward (so the loss is
// NaN) and sets an optional device error flag; the backward skips such ids. Validate ids on the
// host where they come from the host (DeviceLlama::set_batch does).
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>

#include "megacontext/config.hpp"
#include "megacontext/detail/buffer_checks.cuh"
#include "megacontext/detail/kernels/embedding_kernels.cuh"
#include "megacontext/error.cuh"
#include "megacontext/error.hpp"

namespace mc::cuda {

namespace detail {

inline void check_embedding_shape(const char* fn, std::int64_t vocab, std::int64_t d,
                                  std::int64_t n) {
  MC_EXPECTS(vocab >= 1 && d >= 1 && n >= 0 &&
                 d <= std::numeric_limits<std::int64_t>::max() / 4 / std::max(vocab, n + 1),
             Errc::kInvalidArgument, "[mc.embedding.bad_shape] ", fn, "(vocab = ", vocab,
             ", d = ", d, ", n = ", n, "): need vocab >= 1, d >= 1, n >= 0");
}

inline unsigned embedding_blocks(std::int64_t total) {
  return static_cast<unsigned>(std::clamp<std::int64_t>(
      (total + kEmbeddingThreads - 1) / kEmbeddingThreads, 1, 1 << 20));
}

}  // namespace detail

/// out [n, d] = rows ids[i] of `d_table` [vocab, d] (fp32, row-major; ids int32 [n], device).
/// An id outside [0, vocab) writes a NaN row and sets *d_error = 1 when `d_error` (device int)
/// is not null; the flag is never cleared here. `d_out` must not overlap the table. Throws
/// mc::Error for bad shapes or null / overlapping pointers; returns the launch status.
inline cudaError_t embedding_forward(const float* d_table, std::int64_t vocab, std::int64_t d,
                                     const TokenId* d_ids, std::int64_t n, float* d_out,
                                     int* d_error = nullptr, cudaStream_t stream = 0) {
  detail::check_embedding_shape("embedding_forward", vocab, d, n);
  if (n == 0) return cudaSuccess;
  MC_EXPECTS(d_table && d_ids && d_out, Errc::kInvalidArgument,
             "[mc.embedding.null_pointer] embedding_forward: table, ids or out is null with n = ",
             n);
  MC_EXPECTS(!detail::overlaps(d_out, static_cast<std::size_t>(n * d) * 4, d_table,
                               static_cast<std::size_t>(vocab * d) * 4),
             Errc::kInvalidArgument, "[mc.embedding.aliasing] embedding_forward: out overlaps the table");
  detail::embedding_forward_kernel<<<detail::embedding_blocks(n * d), detail::kEmbeddingThreads,
                                     0, stream>>>(d_table, vocab, d, d_ids, n, d_out, d_error);
  return detail::after_launch(stream);
}

/// ADDS row i of `d_dout` [n, d] to row ids[i] of `d_dtable` [vocab, d] (float atomics: repeated
/// ids are summed in no fixed order). Ids outside [0, vocab) are skipped. `d_dtable` must not
/// overlap `d_dout`. Throws mc::Error for bad shapes or null / overlapping pointers.
inline cudaError_t embedding_backward(const float* d_dout, const TokenId* d_ids, std::int64_t n,
                                      std::int64_t vocab, std::int64_t d, float* d_dtable,
                                      cudaStream_t stream = 0) {
  detail::check_embedding_shape("embedding_backward", vocab, d, n);
  if (n == 0) return cudaSuccess;
  MC_EXPECTS(d_dout && d_ids && d_dtable, Errc::kInvalidArgument,
             "[mc.embedding.null_pointer] embedding_backward: dout, ids or dtable is null with "
             "n = ",
             n);
  MC_EXPECTS(!detail::overlaps(d_dout, static_cast<std::size_t>(n * d) * 4, d_dtable,
                               static_cast<std::size_t>(vocab * d) * 4),
             Errc::kInvalidArgument,
             "[mc.embedding.aliasing] embedding_backward: dtable overlaps dout");
  detail::embedding_backward_kernel<<<detail::embedding_blocks(n * d), detail::kEmbeddingThreads,
                                      0, stream>>>(d_dout, d_ids, n, vocab, d, d_dtable);
  return detail::after_launch(stream);
}

}  // namespace mc::cuda
