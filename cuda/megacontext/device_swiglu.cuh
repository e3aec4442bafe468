// SPDX-License-Identifier: Apache-2.0
// GPU facade of the SwiGLU gate (CPU twin: the elementwise part of mc::reference::swiglu_forward
// / swiglu_backward in include/megacontext/reference/swiglu.hpp). The MLP of the decoder
// (device_llama.cuh) is a = x·w1, b = x·w3 (cuBLAS), g = silu(a) ∘ b (here), y = g·w2 (cuBLAS).
// Kernels: detail/kernels/swiglu_kernels.cuh. CUB style: stream last, cudaError_t returned, bad
// arguments throw mc::Error before any launch; no workspace, no allocation: graph-capturable.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>

#include "megacontext/detail/buffer_checks.cuh"
#include "megacontext/detail/kernels/swiglu_kernels.cuh"
#include "megacontext/error.cuh"
#include "megacontext/error.hpp"

namespace mc::cuda {

namespace detail {

inline unsigned swiglu_blocks(std::int64_t count) {
  return static_cast<unsigned>(
      std::min<std::int64_t>((count + kSwiGluThreads - 1) / kSwiGluThreads, 1 << 20));
}

inline void check_swiglu_count(std::int64_t count) {
  MC_EXPECTS(count >= 0 && count <= std::numeric_limits<std::int64_t>::max() / 8,
             Errc::kInvalidArgument, "[mc.swiglu.bad_shape] count = ", count,
             "; must be >= 0 (rows · d_ff elements)");
}

}  // namespace detail

/// g = silu(a) ∘ b elementwise over `count` fp32 values (count = rows · d_ff); `d_g` may equal
/// `d_a` or `d_b` but must not partially overlap them. Throws mc::Error for a negative count or
/// null / partially overlapping pointers; returns the launch status.
inline cudaError_t swiglu_forward(const float* d_a, const float* d_b, std::int64_t count,
                                  float* d_g, cudaStream_t stream = 0) {
  detail::check_swiglu_count(count);
  if (count == 0) return cudaSuccess;
  MC_EXPECTS(d_a && d_b && d_g, Errc::kInvalidArgument,
             "[mc.swiglu.null_pointer] swiglu_forward: a, b or g is null with count = ", count);
  const std::size_t bytes = static_cast<std::size_t>(count) * sizeof(float);
  for (const float* in : {d_a, d_b})
    MC_EXPECTS(in == d_g || !detail::overlaps(in, bytes, d_g, bytes), Errc::kInvalidArgument,
               "[mc.swiglu.aliasing] swiglu_forward: g partially overlaps a or b");
  detail::swiglu_forward_kernel<<<detail::swiglu_blocks(count), detail::kSwiGluThreads, 0,
                                  stream>>>(d_a, d_b, d_g, count);
  return detail::after_launch(stream);
}

/// Backward of the gate: da = dg ∘ b ∘ silu'(a), db = dg ∘ silu(a), over `count` values.
/// `d_da` may be `d_a` and `d_db` may be `d_b` (in place over the forward's cache); otherwise no
/// two of the buffers may overlap. Throws mc::Error for a negative count or null / overlapping
/// pointers; returns the launch status.
inline cudaError_t swiglu_backward(const float* d_dg, const float* d_a, const float* d_b,
                                   std::int64_t count, float* d_da, float* d_db,
                                   cudaStream_t stream = 0) {
  detail::check_swiglu_count(count);
  if (count == 0) return cudaSuccess;
  MC_EXPECTS(d_dg && d_a && d_b && d_da && d_db, Errc::kInvalidArgument,
             "[mc.swiglu.null_pointer] swiglu_backward: dg, a, b, da or db is null with count = ",
             count);
  const std::size_t bytes = static_cast<std::size_t>(count) * sizeof(float);
  const bool ok = !detail::overlaps(d_da, bytes, d_db, bytes) &&
                  !detail::overlaps(d_da, bytes, d_dg, bytes) &&
                  !detail::overlaps(d_db, bytes, d_dg, bytes) &&
                  (d_da == d_a || !detail::overlaps(d_da, bytes, d_a, bytes)) &&
                  !detail::overlaps(d_da, bytes, d_b, bytes) &&
                  (d_db == d_b || !detail::overlaps(d_db, bytes, d_b, bytes)) &&
                  !detail::overlaps(d_db, bytes, d_a, bytes);
  MC_EXPECTS(ok, Errc::kInvalidArgument,
             "[mc.swiglu.aliasing] swiglu_backward: outputs overlap each other or an input "
             "(only da == a and db == b are allowed)");
  detail::swiglu_backward_kernel<<<detail::swiglu_blocks(count), detail::kSwiGluThreads, 0,
                                   stream>>>(d_dg, d_a, d_b, d_da, d_db, count);
  return detail::after_launch(stream);
}

}  // namespace mc::cuda
