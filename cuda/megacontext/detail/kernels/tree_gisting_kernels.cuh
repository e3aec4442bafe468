// SPDX-License-Identifier: Apache-2.0
// Kernels of batch tree gisting (facade: cuda/megacontext/device_tree_gisting.cuh). The pooling
// itself is a pluggable functor (the default runs mean_pool, detail/kernels/gist_pool_kernels.cuh);
// this file holds what is specific to ingesting a whole document: the LOD0 embedding gather from
// the token table (MeanPoolGister::embed on the device).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "megacontext/config.hpp"

namespace mc::cuda::detail {

/// What the embedding gather reads and writes.
struct EmbedTokensParams {
  const TokenId* ids;    ///< [n] token ids
  const float* table;    ///< [vocab, d] embedding table
  float* out;            ///< [n, d]
  std::int64_t n;        ///< tokens
  std::int64_t vocab;    ///< rows of the table
  std::int64_t d;        ///< columns
  int* error;            ///< set to 1 when an id is outside [0, vocab) (its row becomes NaN)
};
static_assert(std::is_trivially_copyable_v<EmbedTokensParams>);

/// Threads per block of the gather.
inline constexpr int kEmbedThreads = 256;

/// out[i, :] = table[ids[i], :]; a bad id writes a NaN row and raises *error. Vec = 4 needs
/// d % 4 == 0 and 16-byte aligned table and output. Grid-stride over n * d / Vec vectors, so a
/// warp copies consecutive vectors of one row (coalesced).
template <int Vec>
__global__ void __launch_bounds__(kEmbedThreads) embed_tokens_kernel(EmbedTokensParams p) {
  using V = std::conditional_t<Vec == 4, float4, float>;
  const std::int64_t cols = p.d / Vec;
  const std::int64_t total = p.n * cols;
  const V* table = reinterpret_cast<const V*>(p.table);
  V* out = reinterpret_cast<V*>(p.out);
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += stride) {
    const std::int64_t row = i / cols;
    const std::int64_t c = i - row * cols;
    const TokenId id = p.ids[row];
    if (id >= 0 && id < p.vocab) {
      out[i] = table[id * cols + c];
    } else {
      const float nan = __int_as_float(0x7fc00000);
      if constexpr (Vec == 4) out[i] = make_float4(nan, nan, nan, nan);
      else out[i] = nan;
      *p.error = 1;
    }
  }
}

}  // namespace mc::cuda::detail
