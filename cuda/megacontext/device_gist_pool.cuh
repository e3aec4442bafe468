// SPDX-License-Identifier: Apache-2.0
// GPU facade of K-block mean pooling, the parameter-free gist (CUB style: a free function, the
// stream last, cudaError_t returned). Tree blocks of K child rows go in, one row per block comes
// out; learned GistNet heads build on the same layout. Kernels:
// detail/kernels/gist_pool_kernels.cuh.
//
// Errors: a bad argument (shape, null pointer, overlapping buffers) throws mc::Error before
// anything is launched (STYLE §7: validate at the boundary); a CUDA failure is returned as
// cudaError_t and never thrown. The call needs no workspace, allocates nothing and does not
// synchronise (unless MC_DEBUG_SYNC), so it may be captured in a CUDA graph.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <limits>

#include "megacontext/detail/kernels/gist_pool_kernels.cuh"
#include "megacontext/dispatch.cuh"
#include "megacontext/error.cuh"
#include "megacontext/error.hpp"

namespace mc::cuda {

namespace detail {

template <int Vec, int KStatic>
cudaError_t launch_mean_pool(const MeanPoolParams& p, cudaStream_t stream) {
  const std::int64_t total = p.num_blocks * (p.d / Vec);
  // One vector per thread while the grid fits; beyond 2^24 blocks the kernel's grid-stride loop
  // covers the rest.
  const std::int64_t blocks =
      std::min<std::int64_t>((total + kMeanPoolThreads - 1) / kMeanPoolThreads, 1 << 24);
  mean_pool_kernel<Vec, KStatic><<<static_cast<unsigned>(blocks), kMeanPoolThreads, 0, stream>>>(p);
  return after_launch(stream);
}

template <int Vec>
cudaError_t launch_mean_pool_k(const MeanPoolParams& p, cudaStream_t stream) {
  if (PoolBlockSizes::contains(p.K))
    return mc::dispatch(kPoolBlockSizes, "K", p.K,
                        [&]<int KS>() { return launch_mean_pool<Vec, KS>(p, stream); });
  return launch_mean_pool<Vec, 0>(p, stream);
}

}  // namespace detail

/// Mean of each block of K consecutive rows: `d_in` [num_blocks·K, d] → `d_out` [num_blocks, d],
/// fp32, row-major, device memory. out[b, c] = (Σ_{k<K} in[b·K + k, c]) / K, summed in order
/// k = 0..K−1 in fp32 (deterministic; bit-exact for small-integer inputs). `d_in` and `d_out`
/// must not overlap. Any alignment works; 16-byte-aligned buffers with d % 4 == 0 take the
/// float4 path. num_blocks = 0 launches nothing. Enqueued on `stream`; returns the launch status.
/// Throws mc::Error (kInvalidArgument) for num_blocks < 0, K < 1, d < 1, sizes overflowing
/// int64 bytes, null or overlapping buffers — before any launch.
inline cudaError_t mean_pool(const float* d_in, std::int64_t num_blocks, int K, std::int64_t d,
                             float* d_out, cudaStream_t stream = 0) {
  MC_EXPECTS(num_blocks >= 0 && K >= 1 && d >= 1, Errc::kInvalidArgument,
             "[mc.gist_pool.bad_shape] mean_pool(num_blocks = ", num_blocks, ", K = ", K,
             ", d = ", d, "): need num_blocks >= 0, K >= 1, d >= 1");
  constexpr std::int64_t kMaxFloats = std::numeric_limits<std::int64_t>::max() / 4;
  MC_EXPECTS(num_blocks <= kMaxFloats / K / d, Errc::kInvalidArgument,
             "[mc.gist_pool.bad_shape] mean_pool(num_blocks = ", num_blocks, ", K = ", K,
             ", d = ", d, "): the input size overflows int64 bytes");
  if (num_blocks == 0) return cudaSuccess;
  MC_EXPECTS(d_in != nullptr && d_out != nullptr, Errc::kInvalidArgument,
             "[mc.gist_pool.null_pointer] mean_pool: d_in or d_out is null with num_blocks = ",
             num_blocks);
  const auto in_begin = reinterpret_cast<std::uintptr_t>(d_in);
  const auto in_end = in_begin + static_cast<std::uintptr_t>(num_blocks * K * d) * sizeof(float);
  const auto out_begin = reinterpret_cast<std::uintptr_t>(d_out);
  const auto out_end = out_begin + static_cast<std::uintptr_t>(num_blocks * d) * sizeof(float);
  MC_EXPECTS(out_end <= in_begin || in_end <= out_begin, Errc::kInvalidArgument,
             "[mc.gist_pool.aliasing] mean_pool: d_out overlaps d_in; pool into another buffer");

  const detail::MeanPoolParams p{d_in, d_out, num_blocks, d, K};
  const bool vec4 = d % 4 == 0 && in_begin % 16 == 0 && out_begin % 16 == 0;
  return vec4 ? detail::launch_mean_pool_k<4>(p, stream) : detail::launch_mean_pool_k<1>(p, stream);
}

}  // namespace mc::cuda
