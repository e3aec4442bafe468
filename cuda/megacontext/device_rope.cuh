// SPDX-License-Identifier: Apache-2.0
// GPU facade of Gaussian RoPE (CPU twin: mc::apply_gaussian_rope in
// include/megacontext/gaussian_rope.hpp): rotates the model's q or k rows by each entry's
// damped factor, between WorkingContext::assemble (positions) and attention. The factor comes
// from the same MC_HOST_DEVICE functions as the CPU reference
// (include/megacontext/detail/gaussian_rope_math.hpp; no Eigen on this path). Kernel:
// detail/kernels/rope_kernels.cuh.
//
// Errors as in every facade: bad arguments, including a d_head that is not compiled in, throw
// mc::Error before any launch; CUDA failures are returned as cudaError_t. No workspace, no
// allocation, no synchronisation (unless MC_DEBUG_SYNC): graph-capturable. The backward
// (apply_gaussian_rope_backward) applies the transpose rotation for the training step.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <limits>

#include "megacontext/detail/gaussian_rope_math.hpp"
#include "megacontext/detail/kernels/rope_kernels.cuh"
#include "megacontext/dispatch.cuh"
#include "megacontext/error.cuh"
#include "megacontext/error.hpp"

namespace mc::cuda {

namespace detail {

inline cudaError_t launch_gaussian_rope(const float* d_x, float* d_y,
                                        const GaussianPosition* d_positions, std::int64_t n,
                                        int n_heads, const GaussianRopeOptions& options,
                                        bool transpose, cudaStream_t stream) {
  options.validate();
  MC_EXPECTS(n >= 0 && n_heads >= 1, Errc::kInvalidArgument,
             "[mc.gaussian_rope.bad_shape] apply_gaussian_rope(n = ", n, ", n_heads = ", n_heads,
             "): need n >= 0 and n_heads >= 1");
  return mc::dispatch(kHeadDims, "d_head", options.d_head, [&]<int D>() -> cudaError_t {
    constexpr int kRows = kRopeRowsPerBlock<D>;
    const std::int64_t blocks = (n + kRows - 1) / kRows;
    MC_EXPECTS(blocks <= std::numeric_limits<int>::max() &&
                   n <= std::numeric_limits<std::int64_t>::max() / 4 / n_heads / D,
               Errc::kInvalidArgument, "[mc.gaussian_rope.bad_shape] n = ", n,
               " rows is too many for one launch");
    if (n == 0) return cudaSuccess;
    MC_EXPECTS(d_x != nullptr && d_y != nullptr && d_positions != nullptr, Errc::kInvalidArgument,
               "[mc.gaussian_rope.null_pointer] d_x, d_y or d_positions is null with n = ", n);
    const auto bytes = static_cast<std::uintptr_t>(n * n_heads * D) * sizeof(float);
    const auto x0 = reinterpret_cast<std::uintptr_t>(d_x);
    const auto y0 = reinterpret_cast<std::uintptr_t>(d_y);
    MC_EXPECTS(x0 == y0 || y0 + bytes <= x0 || x0 + bytes <= y0, Errc::kInvalidArgument,
               "[mc.gaussian_rope.aliasing] d_y partially overlaps d_x; pass d_y == d_x for in "
               "place or disjoint buffers");
    const GaussianRopeParams p{d_x, d_y, d_positions, n, n_heads, options.base, transpose};
    gaussian_rope_kernel<D><<<static_cast<unsigned>(blocks), kRopeThreads, 0, stream>>>(p);
    return after_launch(stream);
  });
}

}  // namespace detail

/// Rotates q or k rows on the GPU. `d_x` and `d_y` are device buffers, row-major
/// [n, n_heads·d_head] fp32 (head h owns columns [h·d_head, (h+1)·d_head)); `d_positions` [n]
/// holds each row's (t, σ) in tokens. Band j rotates dims (j, j + d_head/2) of every head by
/// e^{−½(σω_j)²}·e^{iω_j t}, ω_j = base^(−2j/d_head) (Llama/HF rotate-half pairing). `d_y` may
/// be `d_x` (in place) but must not partially overlap it. Precondition: every t is finite and
/// every σ finite and >= 0 (the CPU twin checks this; the device cannot). Supported d_head: the
/// list mc::HeadDims. Throws mc::Error for a bad option, shape, null or overlapping pointer, or
/// a d_head that is not compiled in; returns the launch status otherwise.
inline cudaError_t apply_gaussian_rope(const float* d_x, float* d_y,
                                       const GaussianPosition* d_positions, std::int64_t n,
                                       int n_heads, const GaussianRopeOptions& options,
                                       cudaStream_t stream = 0) {
  return detail::launch_gaussian_rope(d_x, d_y, d_positions, n, n_heads, options, false, stream);
}

/// Backward of apply_gaussian_rope: dL/dx = Rᵀ·dL/dy, the transpose of each row's damped
/// rotation (the same factor with sin negated, as the CPU reference's attention_backward does).
/// `d_dy` → `d_dx`, same layout, arguments, aliasing rules and errors as apply_gaussian_rope.
inline cudaError_t apply_gaussian_rope_backward(const float* d_dy, float* d_dx,
                                                const GaussianPosition* d_positions,
                                                std::int64_t n, int n_heads,
                                                const GaussianRopeOptions& options,
                                                cudaStream_t stream = 0) {
  return detail::launch_gaussian_rope(d_dy, d_dx, d_positions, n, n_heads, options, true, stream);
}

}  // namespace mc::cuda
