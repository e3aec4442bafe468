// SPDX-License-Identifier: Apache-2.0
// Kernels of RMSNorm (facade: cuda/megacontext/device_rmsnorm.cuh): one warp per row, so a row's
// sum of squares and the backward's dot product are warp reductions with no shared memory. The
// gain gradient dw = Σ_rows dy ∘ x · r is a column sum over all rows: each warp accumulates its
// rows into its own shared-memory row (no atomics), each block writes one partial row, and a
// second kernel sums the partials in a fixed order, so dw is deterministic run to run.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

namespace mc::cuda::detail {

/// Threads per RMSNorm block (warps handle rows).
inline constexpr int kRmsNormThreads = 256;
/// Most blocks of the backward, so its workspace (one partial gain row per block) stays small.
inline constexpr int kRmsNormMaxBlocks = 512;

struct RmsNormForwardParams {
  const float* x;  ///< [n, d]
  const float* w;  ///< [d]
  float* y;        ///< [n, d]
  float* rstd;     ///< [n]
  std::int64_t n;
  int d;
  float eps;
};
static_assert(std::is_trivially_copyable_v<RmsNormForwardParams>);

struct RmsNormBackwardParams {
  const float* dy;    ///< [n, d]
  const float* x;     ///< [n, d]
  const float* w;     ///< [d]
  const float* rstd;  ///< [n]
  float* dx;          ///< [n, d], added to
  float* partial;     ///< [gridDim.x, d] per-block gain-gradient sums
  std::int64_t n;
  int d;
  int warps;  ///< warps per block that own a shared-memory row
};
static_assert(std::is_trivially_copyable_v<RmsNormBackwardParams>);

__device__ inline float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__global__ void __launch_bounds__(kRmsNormThreads) rmsnorm_forward_kernel(RmsNormForwardParams p) {
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const std::int64_t row = static_cast<std::int64_t>(blockIdx.x) * (kRmsNormThreads / 32) +
                           static_cast<std::int64_t>(threadIdx.x) / 32;
  if (row >= p.n) return;
  const float* x = p.x + row * p.d;
  float ss = 0.0f;
  for (int c = lane; c < p.d; c += 32) ss += x[c] * x[c];
  ss = warp_sum(ss);
  const float r = rsqrtf(ss / static_cast<float>(p.d) + p.eps);
  float* y = p.y + row * p.d;
  for (int c = lane; c < p.d; c += 32) y[c] = x[c] * r * p.w[c];
  if (lane == 0) p.rstd[row] = r;
}

// dx += r·g − x·r³·(g·x)/d with g = dy ∘ w; the warp's share of dw in s_dw[warp·d + c].
__global__ void __launch_bounds__(kRmsNormThreads) rmsnorm_backward_kernel(RmsNormBackwardParams p) {
  extern __shared__ float s_dw[];
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const int warp = static_cast<int>(threadIdx.x) / 32;
  const bool owns_row = warp < p.warps;
  float* acc = s_dw + static_cast<std::int64_t>(warp) * p.d;
  if (owns_row)
    for (int c = lane; c < p.d; c += 32) acc[c] = 0.0f;
  if (owns_row) {
    const float inv_d = 1.0f / static_cast<float>(p.d);
    for (std::int64_t row = static_cast<std::int64_t>(blockIdx.x) * p.warps + warp; row < p.n;
         row += static_cast<std::int64_t>(gridDim.x) * p.warps) {
      const float* dy = p.dy + row * p.d;
      const float* x = p.x + row * p.d;
      float* dx = p.dx + row * p.d;
      const float r = p.rstd[row];
      float gx = 0.0f;
      for (int c = lane; c < p.d; c += 32) gx += dy[c] * p.w[c] * x[c];
      gx = warp_sum(gx);
      const float coef = r * r * r * gx * inv_d;
      for (int c = lane; c < p.d; c += 32) {
        const float xc = x[c];
        const float dyc = dy[c];
        dx[c] += r * dyc * p.w[c] - xc * coef;
        acc[c] += dyc * xc * r;
      }
    }
  }
  __syncthreads();
  for (int c = static_cast<int>(threadIdx.x); c < p.d; c += kRmsNormThreads) {
    float s = 0.0f;
    for (int w = 0; w < p.warps; ++w) s += s_dw[static_cast<std::int64_t>(w) * p.d + c];
    p.partial[static_cast<std::int64_t>(blockIdx.x) * p.d + c] = s;
  }
}

// dw[c] = Σ_b partial[b, c], b in order; one thread per column.
__global__ void rmsnorm_gain_reduce_kernel(const float* partial, int blocks, int d, float* dw) {
  const int c = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (c >= d) return;
  float s = 0.0f;
  for (int b = 0; b < blocks; ++b) s += partial[static_cast<std::int64_t>(b) * d + c];
  dw[c] = s;
}

}  // namespace mc::cuda::detail
