// SPDX-License-Identifier: Apache-2.0
// Kernel of Gaussian RoPE (facade: cuda/megacontext/device_rope.cuh): rotates each head of each
// q or k row by its entry's damped factor. The factor is computed with the same MC_HOST_DEVICE
// functions as the CPU reference (megacontext/detail/gaussian_rope_math.hpp), in fp64 because ω·t
// reaches ~1e7 rad for long histories; the rotation itself is fp32.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "megacontext/detail/gaussian_rope_math.hpp"

namespace mc::cuda::detail {

/// What the Gaussian-RoPE kernel reads and writes; y may equal x (in place).
struct GaussianRopeParams {
  const float* x;                     ///< [n, n_heads * d_head] row-major
  float* y;                           ///< [n, n_heads * d_head] row-major
  const GaussianPosition* positions;  ///< [n]: (t, σ) in tokens
  std::int64_t n;                     ///< rows (entries)
  int n_heads;                        ///< heads per row
  double base;                        ///< frequency base
  bool transpose = false;             ///< rotate by the conjugate factor (the backward: Rᵀ)
};
static_assert(std::is_trivially_copyable_v<GaussianRopeParams>);

/// Threads per block of the Gaussian-RoPE kernel; a multiple of every d_head / 2 dispatched.
inline constexpr int kRopeThreads = 256;

/// Rows handled by one thread block for head dim DHead.
template <int DHead>
inline constexpr int kRopeRowsPerBlock = kRopeThreads / rope_num_bands(DHead);

/// One thread per (row, band j): computes the band's factor once, then rotates dims
/// (j, j + DHead/2) of every head of the row. Consecutive threads take consecutive j, so loads
/// and stores of a head half are coalesced. Each thread reads both dims before writing them, and
/// no other thread touches them, so in-place use is safe.
template <int DHead>
__global__ void __launch_bounds__(kRopeThreads) gaussian_rope_kernel(GaussianRopeParams p) {
  constexpr int kBands = rope_num_bands(DHead);
  static_assert(DHead % 2 == 0 && kRopeThreads % kBands == 0,
                "gaussian_rope_kernel: d_head / 2 must divide the block size");
  const int j = static_cast<int>(threadIdx.x) % kBands;
  const std::int64_t row = static_cast<std::int64_t>(blockIdx.x) * kRopeRowsPerBlock<DHead> +
                           static_cast<std::int64_t>(threadIdx.x) / kBands;
  if (row >= p.n) return;
  const GaussianPosition pos = p.positions[row];
  const RopeFactor f = gaussian_rope_factor(pos.t, pos.sigma, rope_frequency(j, DHead, p.base));
  const float re = static_cast<float>(f.re);
  // The damped rotation R is a scaled rotation, so Rᵀ is the same factor with sin negated.
  const float im = static_cast<float>(p.transpose ? -f.im : f.im);
  const std::int64_t row_off = row * p.n_heads * DHead;
  for (int h = 0; h < p.n_heads; ++h) {
    const std::int64_t a_off = row_off + static_cast<std::int64_t>(h) * DHead + j;
    const std::int64_t b_off = a_off + kBands;  // rope_partner(j, DHead)
    const float a = p.x[a_off];
    const float b = p.x[b_off];
    float ya = 0.0f;
    float yb = 0.0f;
    rope_rotate(a, b, re, im, ya, yb);
    p.y[a_off] = ya;
    p.y[b_off] = yb;
  }
}

}  // namespace mc::cuda::detail
