// SPDX-License-Identifier: Apache-2.0
// GPU facade of RMSNorm (CPU twin: mc::reference::rmsnorm_forward / rmsnorm_backward in
// include/megacontext/reference/rmsnorm.hpp), the norm before attention, before the MLP and
// before the unembedding of the decoder (device_llama.cuh). Kernels:
// detail/kernels/rmsnorm_kernels.cuh.
//
// CUB style: free functions, stream last, cudaError_t returned; bad arguments throw mc::Error
// before any launch. The backward needs a workspace (rmsnorm_backward_workspace_bytes) for its
// deterministic gain-gradient sum; nothing allocates, nothing synchronises: graph-capturable.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>

#include "megacontext/detail/buffer_checks.cuh"
#include "megacontext/detail/kernels/rmsnorm_kernels.cuh"
#include "megacontext/error.cuh"
#include "megacontext/error.hpp"

namespace mc::cuda {

/// Largest row width d the kernels take (one warp's gain-gradient row in 48 KiB shared memory).
inline constexpr std::int64_t kRmsNormMaxDim = 12288;

namespace detail {

inline void check_rmsnorm_shape(std::int64_t n, std::int64_t d) {
  MC_EXPECTS(n >= 0 && d >= 1 && d <= kRmsNormMaxDim &&
                 n <= std::numeric_limits<std::int64_t>::max() / 4 / kRmsNormMaxDim,
             Errc::kInvalidArgument, "[mc.rmsnorm.bad_shape] n = ", n, ", d = ", d,
             "; need n >= 0 and 1 <= d <= ", kRmsNormMaxDim);
}

// Warps that own a shared gain row: as many as 48 KiB allows, at most a block's worth.
inline int rmsnorm_backward_warps(std::int64_t d) {
  return static_cast<int>(
      std::clamp<std::int64_t>(48 * 1024 / (4 * d), 1, kRmsNormThreads / 32));
}

inline int rmsnorm_backward_blocks(std::int64_t n, std::int64_t d) {
  const int warps = rmsnorm_backward_warps(d);
  return static_cast<int>(std::clamp<std::int64_t>((n + warps - 1) / warps, 1, kRmsNormMaxBlocks));
}

}  // namespace detail

/// y [n, d] = x [n, d] · r · w [d] row-wise, and rstd [n] = r = 1/√(mean_j x_ij² + eps); fp32
/// device buffers, row-major. `d_y` may be `d_x` (in place); rstd must not overlap them. The sum
/// of squares is fp32 (the CPU reference accumulates in Scalar too). Throws mc::Error for bad
/// shapes, eps <= 0 or null pointers; returns the launch status.
inline cudaError_t rmsnorm_forward(const float* d_x, const float* d_w, std::int64_t n,
                                   std::int64_t d, double eps, float* d_y, float* d_rstd,
                                   cudaStream_t stream = 0) {
  detail::check_rmsnorm_shape(n, d);
  MC_EXPECTS(eps > 0.0 && eps < 1.0, Errc::kInvalidArgument, "[mc.rmsnorm.bad_eps] eps = ", eps,
             "; must be in (0, 1)");
  if (n == 0) return cudaSuccess;
  MC_EXPECTS(d_x && d_w && d_y && d_rstd, Errc::kInvalidArgument,
             "[mc.rmsnorm.null_pointer] rmsnorm_forward: x, w, y or rstd is null with n = ", n);
  const std::int64_t rows_per_block = detail::kRmsNormThreads / 32;
  const std::int64_t blocks = (n + rows_per_block - 1) / rows_per_block;
  MC_EXPECTS(blocks <= std::numeric_limits<int>::max(), Errc::kInvalidArgument,
             "[mc.rmsnorm.bad_shape] n = ", n, " rows is too many for one launch");
  const detail::RmsNormForwardParams p{d_x, d_w, d_y, d_rstd, n, static_cast<int>(d),
                                       static_cast<float>(eps)};
  detail::rmsnorm_forward_kernel<<<static_cast<unsigned>(blocks), detail::kRmsNormThreads, 0,
                                   stream>>>(p);
  return detail::after_launch(stream);
}

/// Workspace bytes rmsnorm_backward needs for n rows of width d (a pure function of n and d).
inline std::size_t rmsnorm_backward_workspace_bytes(std::int64_t n, std::int64_t d) {
  detail::check_rmsnorm_shape(n, d);
  return static_cast<std::size_t>(detail::rmsnorm_backward_blocks(n, d)) *
         static_cast<std::size_t>(d) * sizeof(float);
}

/// Backward of rmsnorm_forward: ADDS dL/dx to `d_dx` [n, d] (the residual stream's gradient
/// accumulates there) and, when `d_dw` is not null, WRITES dL/dw [d] = Σ_i dy_i ∘ x_i · r_i,
/// summed in a fixed order (deterministic). Inputs: dy [n, d], the forward's x, w and rstd.
/// `d_workspace` holds rmsnorm_backward_workspace_bytes(n, d) bytes. dx must not overlap dy, x,
/// w or rstd. Throws mc::Error for bad shapes, null or overlapping pointers, or a short workspace.
inline cudaError_t rmsnorm_backward(const float* d_dy, const float* d_x, const float* d_w,
                                    const float* d_rstd, std::int64_t n, std::int64_t d,
                                    float* d_dx, float* d_dw, void* d_workspace,
                                    std::size_t workspace_bytes, cudaStream_t stream = 0) {
  detail::check_rmsnorm_shape(n, d);
  if (n == 0) {
    if (d_dw != nullptr) return cudaMemsetAsync(d_dw, 0, static_cast<std::size_t>(d) * 4, stream);
    return cudaSuccess;
  }
  MC_EXPECTS(d_dy && d_x && d_w && d_rstd && d_dx, Errc::kInvalidArgument,
             "[mc.rmsnorm.null_pointer] rmsnorm_backward: dy, x, w, rstd or dx is null with n = ",
             n);
  const std::size_t need = rmsnorm_backward_workspace_bytes(n, d);
  MC_EXPECTS(d_workspace != nullptr && workspace_bytes >= need, Errc::kInvalidArgument,
             "[mc.rmsnorm.workspace] workspace of ", workspace_bytes, " bytes at ", d_workspace,
             "; rmsnorm_backward(n = ", n, ", d = ", d, ") needs ", need);
  const std::size_t mat = static_cast<std::size_t>(n * d) * sizeof(float);
  MC_EXPECTS(!detail::overlaps(d_dx, mat, d_dy, mat) && !detail::overlaps(d_dx, mat, d_x, mat),
             Errc::kInvalidArgument,
             "[mc.rmsnorm.aliasing] rmsnorm_backward: dx overlaps dy or x; use separate buffers");
  const int warps = detail::rmsnorm_backward_warps(d);
  const int blocks = detail::rmsnorm_backward_blocks(n, d);
  auto* partial = static_cast<float*>(d_workspace);
  const detail::RmsNormBackwardParams p{d_dy, d_x,     d_w, d_rstd, d_dx, partial,
                                        n,    static_cast<int>(d), warps};
  const std::size_t smem = static_cast<std::size_t>(warps) * static_cast<std::size_t>(d) * 4;
  detail::rmsnorm_backward_kernel<<<static_cast<unsigned>(blocks), detail::kRmsNormThreads, smem,
                                    stream>>>(p);
  MC_CUDA_RETURN_IF_ERROR(detail::after_launch(stream));
  if (d_dw == nullptr) return cudaSuccess;
  const int threads = 256;
  detail::rmsnorm_gain_reduce_kernel<<<static_cast<unsigned>((d + threads - 1) / threads), threads,
                                       0, stream>>>(partial, blocks, static_cast<int>(d), d_dw);
  return detail::after_launch(stream);
}

}  // namespace mc::cuda
