// SPDX-License-Identifier: Apache-2.0
// Kernels of the device LensNet (facade: cuda/megacontext/device_lens_net.cuh); projections are
// cuBLAS GEMMs and the norms / SwiGLU gate are the decoder's kernels.
//
// Cross-attention: every entry attends the Q rows of the query memory, per head. One thread
// block per (group of entries, head) stages that head's keys and values [Q, d_head] in shared
// memory (row stride d_head + 1: lanes reading one column of different key rows hit different
// banks); each warp then takes one entry at a time, computes its Q scores, the softmax with warp
// reductions, and the weighted sum of values. The backward recomputes the probabilities with the
// same arithmetic, writes dL/dq for its entry, and stores p and ds = dL/dscores [n_heads, W, Q]
// so that dL/dk = dsᵀ q and dL/dv = pᵀ do are GEMMs over the entries (fixed order, deterministic,
// no atomics). The head: one warp per entry, score = tanh(hf · w_out + b_out).
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <type_traits>

namespace mc::cuda::detail {

inline constexpr int kLensAttnWarps = 8;
inline constexpr int kLensEntriesPerBlock = 32;
inline constexpr int kLensHeadThreads = 256;

/// What the cross-attention kernels read and write.
struct LensAttnParams {
  const float* q;    ///< [W, D] queries (entries)
  const float* k;    ///< [Q, D] keys (memory)
  const float* v;    ///< [Q, D] values (memory)
  float* o;          ///< forward: [W, D] head outputs
  const float* d_o;  ///< backward: [W, D]
  float* dq;         ///< backward: [W, D]
  float* p;          ///< backward: [n_heads, W, Q] softmax weights
  float* ds;         ///< backward: [n_heads, W, Q] dL/d(scaled scores)
  std::int64_t w;    ///< entries W
  int q_rows;        ///< memory rows Q
  int d_head;
  int d_model;       ///< D = n_heads · d_head
  float scale;       ///< 1/√d_head
};
static_assert(std::is_trivially_copyable_v<LensAttnParams>);

/// Dynamic shared memory of either kernel: k, v tiles plus each warp's q / do row and weights.
inline std::size_t lens_attn_smem(int q_rows, int d_head) {
  return (2 * static_cast<std::size_t>(q_rows) * (d_head + 1) +
          static_cast<std::size_t>(kLensAttnWarps) * (2 * d_head + 2 * q_rows)) *
         sizeof(float);
}

__device__ inline float lens_warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ inline float lens_warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Stages rows [0, Q) of head columns [col0, col0 + dh) of k and v.
__device__ inline void lens_stage_kv(const LensAttnParams& p, int col0, float* sk, float* sv) {
  const int dh = p.d_head, ld = dh + 1;
  for (int i = static_cast<int>(threadIdx.x); i < p.q_rows * dh; i += blockDim.x) {
    const int r = i / dh, c = i % dh;
    sk[r * ld + c] = p.k[static_cast<std::int64_t>(r) * p.d_model + col0 + c];
    sv[r * ld + c] = p.v[static_cast<std::int64_t>(r) * p.d_model + col0 + c];
  }
}

// The softmax weights of one entry (its query row in sq) over the Q keys into w[Q] (one warp).
__device__ inline void lens_entry_probs(const float* sq, const float* sk, int q_rows, int dh,
                                        float scale, float* w) {
  const int lane = static_cast<int>(threadIdx.x) % 32, ld = dh + 1;
  float mx = -INFINITY;
  for (int j = lane; j < q_rows; j += 32) {
    float s = 0.0f;
    for (int c = 0; c < dh; ++c) s += sq[c] * sk[j * ld + c];
    s *= scale;
    w[j] = s;
    mx = fmaxf(mx, s);
  }
  mx = lens_warp_max(mx);
  float sum = 0.0f;
  for (int j = lane; j < q_rows; j += 32) {
    const float e = expf(w[j] - mx);
    w[j] = e;
    sum += e;
  }
  sum = lens_warp_sum(sum);
  const float inv = 1.0f / sum;
  for (int j = lane; j < q_rows; j += 32) w[j] *= inv;
  __syncwarp();
}

/// Forward: o_i,h = softmax_j(q_i,h · k_j,h · scale) v_j,h for the block's entries and head.
__global__ void __launch_bounds__(kLensAttnWarps * 32) lens_attention_forward_kernel(LensAttnParams p) {
  extern __shared__ float smem[];
  const int dh = p.d_head, ld = dh + 1, lane = static_cast<int>(threadIdx.x) % 32;
  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int col0 = static_cast<int>(blockIdx.y) * dh;
  float* sk = smem;
  float* sv = sk + p.q_rows * ld;
  float* sq = sv + p.q_rows * ld + warp * (2 * dh + 2 * p.q_rows);
  float* w = sq + 2 * dh;
  lens_stage_kv(p, col0, sk, sv);
  __syncthreads();
  const std::int64_t e0 = static_cast<std::int64_t>(blockIdx.x) * kLensEntriesPerBlock;
  for (int t = warp; t < kLensEntriesPerBlock; t += kLensAttnWarps) {
    const std::int64_t e = e0 + t;
    if (e >= p.w) break;
    for (int c = lane; c < dh; c += 32) sq[c] = p.q[e * p.d_model + col0 + c];
    __syncwarp();
    lens_entry_probs(sq, sk, p.q_rows, dh, p.scale, w);
    for (int c = lane; c < dh; c += 32) {
      float acc = 0.0f;
      for (int j = 0; j < p.q_rows; ++j) acc += w[j] * sv[j * ld + c];
      p.o[e * p.d_model + col0 + c] = acc;
    }
    __syncwarp();
  }
}

/// Backward for the block's entries and head: recomputes p, then dp_j = do·v_j,
/// ds_j = p_j (dp_j − Σ_l p_l dp_l)·scale, dq = Σ_j ds_j k_j; stores p and ds for the GEMMs
/// that give dk and dv.
__global__ void __launch_bounds__(kLensAttnWarps * 32) lens_attention_backward_kernel(LensAttnParams p) {
  extern __shared__ float smem[];
  const int dh = p.d_head, ld = dh + 1, lane = static_cast<int>(threadIdx.x) % 32;
  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int col0 = static_cast<int>(blockIdx.y) * dh;
  float* sk = smem;
  float* sv = sk + p.q_rows * ld;
  float* sq = sv + p.q_rows * ld + warp * (2 * dh + 2 * p.q_rows);
  float* sdo = sq + dh;
  float* w = sq + 2 * dh;
  float* ds = w + p.q_rows;
  lens_stage_kv(p, col0, sk, sv);
  __syncthreads();
  const std::int64_t e0 = static_cast<std::int64_t>(blockIdx.x) * kLensEntriesPerBlock;
  const std::int64_t head_off = static_cast<std::int64_t>(blockIdx.y) * p.w * p.q_rows;
  for (int t = warp; t < kLensEntriesPerBlock; t += kLensAttnWarps) {
    const std::int64_t e = e0 + t;
    if (e >= p.w) break;
    for (int c = lane; c < dh; c += 32) {
      sq[c] = p.q[e * p.d_model + col0 + c];
      sdo[c] = p.d_o[e * p.d_model + col0 + c];
    }
    __syncwarp();
    lens_entry_probs(sq, sk, p.q_rows, dh, p.scale, w);
    float dot = 0.0f;
    for (int j = lane; j < p.q_rows; j += 32) {
      float s = 0.0f;
      for (int c = 0; c < dh; ++c) s += sdo[c] * sv[j * ld + c];
      ds[j] = s;
      dot += w[j] * s;
    }
    dot = lens_warp_sum(dot);
    float* prow = p.p + head_off + e * p.q_rows;
    float* srow = p.ds + head_off + e * p.q_rows;
    for (int j = lane; j < p.q_rows; j += 32) {
      const float g = w[j] * (ds[j] - dot) * p.scale;
      ds[j] = g;
      prow[j] = w[j];
      srow[j] = g;
    }
    __syncwarp();
    for (int c = lane; c < dh; c += 32) {
      float acc = 0.0f;
      for (int j = 0; j < p.q_rows; ++j) acc += ds[j] * sk[j * ld + c];
      p.dq[e * p.d_model + col0 + c] = acc;
    }
    __syncwarp();
  }
}

/// scores[i] = tanh(hf_i · w_out + b_out[0]), one warp per entry.
__global__ void __launch_bounds__(kLensHeadThreads)
    lens_score_kernel(const float* hf, const float* w_out, const float* b_out, std::int64_t w,
                      int d, float* scores, float* scores_copy) {
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * (kLensHeadThreads / 32) +
                         static_cast<std::int64_t>(threadIdx.x) / 32;
  if (i >= w) return;
  float s = 0.0f;
  for (int c = lane; c < d; c += 32) s += hf[i * d + c] * w_out[c];
  s = lens_warp_sum(s);
  if (lane == 0) {
    const float sc = tanhf(s + b_out[0]);
    scores[i] = sc;
    if (scores_copy != nullptr) scores_copy[i] = sc;
  }
}

/// dz_i = dscores_i (1 − s_i²) and dhf[i, c] = dz_i · w_out[c].
__global__ void __launch_bounds__(kLensHeadThreads)
    lens_score_backward_kernel(const float* dscores, const float* scores, const float* w_out,
                               std::int64_t w, int d, float* dz, float* dhf) {
  const std::int64_t total = w * d;
  for (std::int64_t i = blockIdx.x * std::int64_t{kLensHeadThreads} + threadIdx.x; i < total;
       i += std::int64_t{gridDim.x} * kLensHeadThreads) {
    const std::int64_t r = i / d;
    const int c = static_cast<int>(i % d);
    const float s = scores[r];
    const float z = dscores[r] * (1.0f - s * s);
    dhf[i] = z * w_out[c];
    if (c == 0) dz[r] = z;
  }
}

}  // namespace mc::cuda::detail
