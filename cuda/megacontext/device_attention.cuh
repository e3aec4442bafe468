// SPDX-License-Identifier: Apache-2.0
// GPU facade of the attention core softmax(q·kᵀ·scale)·v (CPU twin: the per-head loop of
// mc::reference::attention_forward / attention_backward in
// include/megacontext/reference/attention.hpp), between Gaussian RoPE (device_rope.cuh, which
// rotates q and k first) and the output projection. FlashAttention-2 style: the forward keeps
// only the log-sum-exp per query row, the backward recomputes the probabilities from it. Kernels:
// detail/kernels/attention_kernels.cuh (fp32 FMA tiles, no tensor cores: results match an fp64
// reference to ~1e-6 relative, see docs/results/2026-11-23-gpu-attention.md).
//
// Errors as in every facade: bad arguments, including a d_head that is not compiled in, throw
// mc::Error before any launch; CUDA failures are returned as cudaError_t. No allocation and no
// synchronisation (unless MC_DEBUG_SYNC): graph-capturable. The backward takes its scratch as a
// caller-owned workspace (CUB's two-phase call).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <limits>

#include "megacontext/detail/kernels/attention_kernels.cuh"
#include "megacontext/dispatch.cuh"
#include "megacontext/error.cuh"
#include "megacontext/error.hpp"

namespace mc::cuda {

namespace detail {

/// Throws [mc.attention.bad_shape] unless the sizes fit one launch of the attention kernels.
inline void check_attention_shape(const char* fn, std::int64_t batch, std::int64_t n, int n_heads,
                                  int d_head) {
  MC_EXPECTS(batch >= 0 && n >= 0 && n_heads >= 1 && d_head >= 1, Errc::kInvalidArgument,
             "[mc.attention.bad_shape] ", fn, "(batch = ", batch, ", n = ", n,
             ", n_heads = ", n_heads, ", d_head = ", d_head,
             "): need batch >= 0, n >= 0, n_heads >= 1 and d_head >= 1");
  // grid.y holds batch·n_heads (at most 65535); element offsets are 64-bit, so only the element
  // count itself must stay far from overflow.
  MC_EXPECTS(batch * n_heads <= 65535 && n <= (std::int64_t{1} << 31) &&
                 (batch == 0 ||
                  n <= std::numeric_limits<std::int64_t>::max() / 8 / batch / n_heads / d_head),
             Errc::kInvalidArgument, "[mc.attention.bad_shape] ", fn, "(batch = ", batch,
             ", n = ", n, ", n_heads = ", n_heads,
             "): need batch * n_heads <= 65535 and n <= 2^31 for one launch");
}

/// True when the byte ranges [a, a + a_bytes) and [b, b + b_bytes) do not overlap.
inline bool attention_disjoint(const void* a, std::size_t a_bytes, const void* b,
                               std::size_t b_bytes) {
  const auto a0 = reinterpret_cast<std::uintptr_t>(a);
  const auto b0 = reinterpret_cast<std::uintptr_t>(b);
  return a0 + a_bytes <= b0 || b0 + b_bytes <= a0;
}

/// True when every pointer is 16-byte aligned.
inline bool attention_aligned(std::initializer_list<const float*> ptrs) {
  for (const float* ptr : ptrs)
    if (reinterpret_cast<std::uintptr_t>(ptr) % 16 != 0) return false;
  return true;
}

/// Bytes of the rowsum(dO∘O) vector the backward keeps in its workspace, padded to 256.
inline std::size_t attention_delta_bytes(std::int64_t batch, std::int64_t n, int n_heads) {
  const auto count = static_cast<std::size_t>(batch) * static_cast<std::size_t>(n) *
                     static_cast<std::size_t>(n_heads);
  return (count * sizeof(float) + 255) / 256 * 256;
}

}  // namespace detail

/// Causal attention forward on the GPU: o = softmax(q·kᵀ/√d_head)·v per head and sequence.
/// `q`, `k`, `v`, `o`: device fp32, row-major [batch, n, n_heads·d_head] (head h owns columns
/// [h·d_head, (h+1)·d_head)); `lse`: device fp32 [batch, n_heads, n], the natural-log
/// log-sum-exp of each query row's scaled scores (attention_backward reads it). Query row i sees
/// keys j <= i of the same sequence. `o` and `lse` must not overlap the inputs. Supported d_head:
/// the list mc::HeadDims. Throws mc::Error for a bad shape, a null or overlapping pointer or a
/// d_head that is not compiled in; returns the launch status otherwise.
inline cudaError_t attention_forward(const float* q, const float* k, const float* v, float* o,
                                     float* lse, std::int64_t batch, std::int64_t n, int n_heads,
                                     int d_head, cudaStream_t stream = 0) {
  detail::check_attention_shape("attention_forward", batch, n, n_heads, d_head);
  return mc::dispatch(kHeadDims, "d_head", d_head, [&]<int D>() -> cudaError_t {
    if (batch == 0 || n == 0) return cudaSuccess;
    MC_EXPECTS(q != nullptr && k != nullptr && v != nullptr && o != nullptr && lse != nullptr,
               Errc::kInvalidArgument,
               "[mc.attention.null_pointer] attention_forward: q, k, v, o or lse is null with "
               "batch = ",
               batch, ", n = ", n);
    const auto x_bytes = static_cast<std::size_t>(batch * n * n_heads * D) * sizeof(float);
    const auto l_bytes = static_cast<std::size_t>(batch * n * n_heads) * sizeof(float);
    for (const float* in : {q, k, v})
      MC_EXPECTS(detail::attention_disjoint(o, x_bytes, in, x_bytes) &&
                     detail::attention_disjoint(lse, l_bytes, in, x_bytes),
                 Errc::kInvalidArgument,
                 "[mc.attention.aliasing] attention_forward: o or lse overlaps q, k or v");
    MC_EXPECTS(detail::attention_disjoint(o, x_bytes, lse, l_bytes), Errc::kInvalidArgument,
               "[mc.attention.aliasing] attention_forward: o overlaps lse");
    MC_EXPECTS(detail::attention_aligned({q, k, v, o}), Errc::kInvalidArgument,
               "[mc.attention.misaligned] attention_forward: q, k, v and o must be 16-byte "
               "aligned (the kernels load float4)");
    const detail::AttentionFwdParams p{q, k, v, o, lse, batch, n, n_heads};
    return detail::launch_attention_forward<D>(p, stream);
  });
}

/// Bytes of workspace attention_backward needs for these sizes (0 when there is nothing to do).
/// Throws mc::Error for a bad shape.
inline std::size_t attention_backward_workspace_bytes(std::int64_t batch, std::int64_t n,
                                                      int n_heads, int d_head) {
  detail::check_attention_shape("attention_backward_workspace_bytes", batch, n, n_heads, d_head);
  return detail::attention_delta_bytes(batch, n, n_heads);
}

/// Gradients of the causal attention core: given the forward's q, k, v, o and lse and
/// d_o = dL/do, overwrites dq, dk, dv (same layout as q; no accumulation). `workspace` holds at
/// least attention_backward_workspace_bytes(...) bytes (may be null when that is 0). Outputs must
/// not overlap each other, the inputs or the workspace. Deterministic: no atomics. Throws
/// mc::Error for a bad shape, a null or overlapping pointer, a too small workspace or a d_head
/// that is not compiled in; returns the status of the first failing launch otherwise.
inline cudaError_t attention_backward(const float* q, const float* k, const float* v,
                                      const float* o, const float* lse, const float* d_o, float* dq,
                                      float* dk, float* dv, void* workspace,
                                      std::size_t workspace_bytes, std::int64_t batch,
                                      std::int64_t n, int n_heads, int d_head,
                                      cudaStream_t stream = 0) {
  detail::check_attention_shape("attention_backward", batch, n, n_heads, d_head);
  const std::size_t need = detail::attention_delta_bytes(batch, n, n_heads);
  return mc::dispatch(kHeadDims, "d_head", d_head, [&]<int D>() -> cudaError_t {
    if (batch == 0 || n == 0) return cudaSuccess;
    MC_EXPECTS(q != nullptr && k != nullptr && v != nullptr && o != nullptr && lse != nullptr &&
                   d_o != nullptr && dq != nullptr && dk != nullptr && dv != nullptr &&
                   workspace != nullptr,
               Errc::kInvalidArgument,
               "[mc.attention.null_pointer] attention_backward: an input, output or the "
               "workspace is null with batch = ",
               batch, ", n = ", n);
    MC_EXPECTS(workspace_bytes >= need, Errc::kInvalidArgument,
               "[mc.attention.workspace_too_small] attention_backward: workspace_bytes = ",
               workspace_bytes, ", need ", need, " (attention_backward_workspace_bytes)");
    const auto x_bytes = static_cast<std::size_t>(batch * n * n_heads * D) * sizeof(float);
    const auto l_bytes = static_cast<std::size_t>(batch * n * n_heads) * sizeof(float);
    const float* outs[] = {dq, dk, dv};
    bool ok = true;
    for (int a = 0; a < 3; ++a) {
      ok = ok && detail::attention_disjoint(outs[a], x_bytes, lse, l_bytes) &&
           detail::attention_disjoint(outs[a], x_bytes, workspace, need);
      for (const float* in : {q, k, v, o, d_o})
        ok = ok && detail::attention_disjoint(outs[a], x_bytes, in, x_bytes);
      for (int b = a + 1; b < 3; ++b)
        ok = ok && detail::attention_disjoint(outs[a], x_bytes, outs[b], x_bytes);
    }
    MC_EXPECTS(ok, Errc::kInvalidArgument,
               "[mc.attention.aliasing] attention_backward: dq, dk or dv overlaps another output, "
               "an input or the workspace");
    MC_EXPECTS(detail::attention_aligned({q, k, v, o, d_o, dq, dk, dv}), Errc::kInvalidArgument,
               "[mc.attention.misaligned] attention_backward: q, k, v, o, d_o, dq, dk and dv "
               "must be 16-byte aligned (the kernels load float4)");
    const detail::AttentionBwdParams p{
        q, k, v, o, lse, d_o, dq, dk, dv, static_cast<float*>(workspace), batch, n, n_heads};
    return detail::launch_attention_backward<D>(p, stream);
  });
}

}  // namespace mc::cuda
