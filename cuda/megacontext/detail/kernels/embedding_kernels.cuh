// SPDX-License-Identifier: Apache-2.0
// Kernels of the token embedding (facade: cuda/megacontext/device_embedding.cuh): a row gather
// for the forward and a scatter-add for the backward. The backward uses float atomics because a
// token id may repeat inside a batch; the summation order of repeated ids is therefore not fixed
// (results agree to rounding, not bit for bit, between runs).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <limits>

#include "megacontext/config.hpp"

namespace mc::cuda::detail {

inline constexpr int kEmbeddingThreads = 256;

// out[i, :] = table[ids[i], :]; an id outside [0, vocab) gives a NaN row (so the loss shows it)
// and sets *error to 1 when error is not null.
__global__ void __launch_bounds__(kEmbeddingThreads)
    embedding_forward_kernel(const float* table, std::int64_t vocab, std::int64_t d,
                             const TokenId* ids, std::int64_t n, float* out, int* error) {
  const std::int64_t total = n * d;
  for (std::int64_t e = blockIdx.x * std::int64_t{kEmbeddingThreads} + threadIdx.x; e < total;
       e += std::int64_t{gridDim.x} * kEmbeddingThreads) {
    const std::int64_t i = e / d;
    const std::int64_t c = e - i * d;
    const TokenId id = ids[i];
    if (id >= 0 && id < vocab) {
      out[e] = table[static_cast<std::int64_t>(id) * d + c];
    } else {
      out[e] = std::numeric_limits<float>::quiet_NaN();
      if (error != nullptr && c == 0) *error = 1;
    }
  }
}

// dtable[ids[i], :] += dout[i, :]; ids outside [0, vocab) are skipped (the forward flagged them).
__global__ void __launch_bounds__(kEmbeddingThreads)
    embedding_backward_kernel(const float* dout, const TokenId* ids, std::int64_t n,
                              std::int64_t vocab, std::int64_t d, float* dtable) {
  const std::int64_t total = n * d;
  for (std::int64_t e = blockIdx.x * std::int64_t{kEmbeddingThreads} + threadIdx.x; e < total;
       e += std::int64_t{gridDim.x} * kEmbeddingThreads) {
    const std::int64_t i = e / d;
    const TokenId id = ids[i];
    if (id >= 0 && id < vocab) atomicAdd(dtable + static_cast<std::int64_t>(id) * d + (e - i * d), dout[e]);
  }
}

}  // namespace mc::cuda::detail
