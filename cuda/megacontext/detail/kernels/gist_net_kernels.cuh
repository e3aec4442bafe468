// SPDX-License-Identifier: Apache-2.0
// Kernels of the device GistNet (facade: cuda/megacontext/device_gist_net.cuh); the projections
// around them are cuBLAS GEMMs and the norms / SwiGLU gate are the decoder's kernels.
//
// Block attention: one thread block per (gist block, head) holds the block's K rows of q, k, v
// for that head in shared memory (row stride d_head + 1, so a warp reading one column of K
// different rows hits K different banks), applies the in-block RoPE there, and computes the K×K
// softmax and its product with v. The backward recomputes the probabilities from the stored
// (rotated) q and k with the same arithmetic, so it needs no [n·K, K] probability buffer.
// Pooling: the mean over each block's K rows and its broadcast backward, SiLU and its backward
// for head A, and one warp per (block, head) for the learned-query head B. Inference-only fusions
// (RMSNorm + residual copy, SwiGLU over packed [a | b] rows, RMSNorm + block mean) at the end.
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <type_traits>

namespace mc::cuda::detail {

inline constexpr int kGistAttnThreads = 128;
inline constexpr int kGistPoolThreads = 256;
inline constexpr int kGistQueryWarps = 4;

/// What the block-attention kernels read and write; one (block, head) per thread block.
struct GistAttnParams {
  float* q;             ///< [rows, ld_qkv] columns [0, d_attn); rotated in place when store_rotated
  float* k;             ///< likewise (q + d_attn)
  const float* v;       ///< likewise (q + 2·d_attn), never rotated
  float* o;             ///< forward: [rows, d_attn] head outputs
  const float* d_o;     ///< backward: [rows, d_attn] dL/do
  float* dq;            ///< backward: [rows, d_attn] dL/d(q before RoPE)
  float* dk;            ///< backward: [rows, d_attn] dL/d(k before RoPE)
  float* dv;            ///< backward: [rows, d_attn]
  const float2* rope;   ///< [K, d_head/2] (cos, sin) of in-block positions 0..K−1
  int k_block;          ///< rows per gist block K
  int d_head;           ///< head width (even)
  int d_attn;           ///< n_heads · d_head: row stride of o, d_o, dq, dk, dv
  int ld_qkv;           ///< row stride of q, k, v (3·d_attn: they share rows of one buffer)
  float scale;          ///< 1/√d_head
  bool store_rotated;   ///< forward: write the rotated q, k back (the backward reads them)
};
static_assert(std::is_trivially_copyable_v<GistAttnParams>);

/// Dynamic shared memory of the forward kernel (floats → bytes).
inline std::size_t gist_attn_forward_smem(int k_block, int d_head) {
  return (3 * static_cast<std::size_t>(k_block) * (d_head + 1) +
          static_cast<std::size_t>(k_block) * (k_block + 1)) *
         sizeof(float);
}
/// Dynamic shared memory of the backward kernel.
inline std::size_t gist_attn_backward_smem(int k_block, int d_head) {
  return (4 * static_cast<std::size_t>(k_block) * (d_head + 1) +
          2 * static_cast<std::size_t>(k_block) * (k_block + 1)) *
         sizeof(float);
}

__device__ inline float gist_warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ inline float gist_warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Loads rows [row0, row0 + K) of column block [col0, col0 + dh) of `src` (row stride src_ld)
// into s[K][ld].
__device__ inline void gist_load_tile(const float* src, std::int64_t row0, int col0, int k_block,
                                      int dh, int src_ld, int ld, float* s) {
  for (int i = static_cast<int>(threadIdx.x); i < k_block * dh; i += blockDim.x) {
    const int r = i / dh, c = i % dh;
    s[r * ld + c] = src[(row0 + r) * src_ld + col0 + c];
  }
}

// Softmax of each row of s[K][K + 1] in place (max subtracted first), one warp per row.
__device__ inline void gist_softmax_rows(float* s, int k_block) {
  const int lane = static_cast<int>(threadIdx.x) % 32, warp = static_cast<int>(threadIdx.x) / 32;
  const int warps = static_cast<int>(blockDim.x) / 32;
  const int ld = k_block + 1;
  for (int i = warp; i < k_block; i += warps) {
    float* row = s + i * ld;
    float mx = -INFINITY;
    for (int j = lane; j < k_block; j += 32) mx = fmaxf(mx, row[j]);
    mx = gist_warp_max(mx);
    float sum = 0.0f;
    for (int j = lane; j < k_block; j += 32) {
      const float e = expf(row[j] - mx);
      row[j] = e;
      sum += e;
    }
    sum = gist_warp_sum(sum);
    const float inv = 1.0f / sum;
    for (int j = lane; j < k_block; j += 32) row[j] *= inv;
  }
}

// p[i][j] = softmax_j(scale · q_i·k_j) for the tiles in shared memory.
__device__ inline void gist_probs(const float* sq, const float* sk, int k_block, int dh, int ld,
                                  float scale, float* p) {
  const int lp = k_block + 1;
  for (int idx = static_cast<int>(threadIdx.x); idx < k_block * k_block; idx += blockDim.x) {
    const int i = idx / k_block, j = idx % k_block;
    float s = 0.0f;
    for (int c = 0; c < dh; ++c) s += sq[i * ld + c] * sk[j * ld + c];
    p[i * lp + j] = s * scale;
  }
  __syncthreads();
  gist_softmax_rows(p, k_block);
  __syncthreads();
}

// Rotates the K rows of s[K][ld] by the in-block RoPE (transpose: sin negated) and, when `dst`
// is not null, writes the rotated tile to dst rows row0.., columns col0...
__device__ inline void gist_rope_tile(float* s, const float2* rope, int k_block, int dh, int ld,
                                      bool transpose, float* dst, std::int64_t row0, int col0,
                                      int d_attn) {
  const int half = dh / 2;
  for (int idx = static_cast<int>(threadIdx.x); idx < k_block * half; idx += blockDim.x) {
    const int r = idx / half, j = idx % half;
    const float2 f = rope[r * half + j];
    const float im = transpose ? -f.y : f.y;
    const float a = s[r * ld + j], b = s[r * ld + j + half];
    const float ya = a * f.x - b * im;
    const float yb = b * f.x + a * im;
    s[r * ld + j] = ya;
    s[r * ld + j + half] = yb;
    if (dst != nullptr) {
      dst[(row0 + r) * d_attn + col0 + j] = ya;
      dst[(row0 + r) * d_attn + col0 + j + half] = yb;
    }
  }
}

// Loads the (block, head) tiles of q, k, v and rotates q and k (written back when store_rotated).
__device__ inline void gist_load_rotate(const GistAttnParams& p, std::int64_t row0, int col0,
                                        float* sq, float* sk, float* sv) {
  const int kb = p.k_block, dh = p.d_head, ld = dh + 1;
  gist_load_tile(p.q, row0, col0, kb, dh, p.ld_qkv, ld, sq);
  gist_load_tile(p.k, row0, col0, kb, dh, p.ld_qkv, ld, sk);
  gist_load_tile(p.v, row0, col0, kb, dh, p.ld_qkv, ld, sv);
  __syncthreads();
  gist_rope_tile(sq, p.rope, kb, dh, ld, false, p.store_rotated ? p.q : nullptr, row0, col0,
                 p.ld_qkv);
  gist_rope_tile(sk, p.rope, kb, dh, ld, false, p.store_rotated ? p.k : nullptr, row0, col0,
                 p.ld_qkv);
  __syncthreads();
}

/// Forward: rotates q, k of one (block, head), o = softmax(q kᵀ·scale) v.
__global__ void __launch_bounds__(kGistAttnThreads) gist_attention_forward_kernel(GistAttnParams p) {
  extern __shared__ float smem[];
  const int kb = p.k_block, dh = p.d_head, ld = dh + 1;
  float* sq = smem;
  float* sk = sq + kb * ld;
  float* sv = sk + kb * ld;
  float* sp = sv + kb * ld;
  const std::int64_t row0 = static_cast<std::int64_t>(blockIdx.x) * kb;
  const int col0 = static_cast<int>(blockIdx.y) * dh;
  gist_load_rotate(p, row0, col0, sq, sk, sv);
  gist_probs(sq, sk, kb, dh, ld, p.scale, sp);
  const int lp = kb + 1;
  for (int idx = static_cast<int>(threadIdx.x); idx < kb * dh; idx += blockDim.x) {
    const int i = idx / dh, c = idx % dh;
    float acc = 0.0f;
    for (int j = 0; j < kb; ++j) acc += sp[i * lp + j] * sv[j * ld + c];
    p.o[(row0 + i) * p.d_attn + col0 + c] = acc;
  }
}

/// The forward for K = 32 and d_head = 32 (the default GistNet), same maths and the same
/// summation order as gist_attention_forward_kernel (so the same bits): each of the 128 threads
/// keeps a 2×4 tile of S, then of O, in registers, which cuts shared-memory loads per FMA from 2
/// to 0.75; the generic kernel is bound by those loads.
__global__ void __launch_bounds__(kGistAttnThreads)
    gist_attention_forward_k32d32_kernel(GistAttnParams p) {
  static_assert(kGistAttnThreads == 128, "the 2x4 tiles cover a 32x32 block with 128 threads");
  constexpr int kb = 32, dh = 32, ld = dh + 1, lp = kb + 1;
  extern __shared__ float smem[];
  float* sq = smem;
  float* sk = sq + kb * ld;
  float* sv = sk + kb * ld;
  float* sp = sv + kb * ld;
  const std::int64_t row0 = static_cast<std::int64_t>(blockIdx.x) * kb;
  const int col0 = static_cast<int>(blockIdx.y) * dh;
  gist_load_rotate(p, row0, col0, sq, sk, sv);
  const int t = static_cast<int>(threadIdx.x);
  const int i0 = (t / 8) * 2, j0 = (t % 8) * 4;
  float acc[2][4] = {};
  for (int c = 0; c < dh; ++c) {
    const float a0 = sq[i0 * ld + c], a1 = sq[(i0 + 1) * ld + c];
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      const float b = sk[(j0 + u) * ld + c];
      acc[0][u] += a0 * b;
      acc[1][u] += a1 * b;
    }
  }
#pragma unroll
  for (int r = 0; r < 2; ++r)
#pragma unroll
    for (int u = 0; u < 4; ++u) sp[(i0 + r) * lp + j0 + u] = acc[r][u] * p.scale;
  __syncthreads();
  gist_softmax_rows(sp, kb);
  __syncthreads();
  float out[2][4] = {};
  for (int j = 0; j < kb; ++j) {
    const float p0 = sp[i0 * lp + j], p1 = sp[(i0 + 1) * lp + j];
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      const float v = sv[j * ld + j0 + u];
      out[0][u] += p0 * v;
      out[1][u] += p1 * v;
    }
  }
#pragma unroll
  for (int r = 0; r < 2; ++r)
#pragma unroll
    for (int u = 0; u < 4; ++u) p.o[(row0 + i0 + r) * p.d_attn + col0 + j0 + u] = out[r][u];
}

/// Backward of one (block, head) from dL/do, given the rotated q, k and v of the forward:
/// dv = pᵀ do, ds = p ∘ (do vᵀ − rowsum) · scale, dq = ds k, dk = dsᵀ q, then dq and dk rotated
/// back (transpose RoPE) into the gradients of the unrotated projections.
__global__ void __launch_bounds__(kGistAttnThreads) gist_attention_backward_kernel(GistAttnParams p) {
  extern __shared__ float smem[];
  const int kb = p.k_block, dh = p.d_head, ld = dh + 1, lp = kb + 1;
  float* sq = smem;
  float* sk = sq + kb * ld;
  float* sv = sk + kb * ld;
  float* sdo = sv + kb * ld;
  float* sp = sdo + kb * ld;
  float* sds = sp + kb * lp;
  const std::int64_t row0 = static_cast<std::int64_t>(blockIdx.x) * kb;
  const int col0 = static_cast<int>(blockIdx.y) * dh;
  gist_load_tile(p.q, row0, col0, kb, dh, p.ld_qkv, ld, sq);
  gist_load_tile(p.k, row0, col0, kb, dh, p.ld_qkv, ld, sk);
  gist_load_tile(p.v, row0, col0, kb, dh, p.ld_qkv, ld, sv);
  gist_load_tile(p.d_o, row0, col0, kb, dh, p.d_attn, ld, sdo);
  __syncthreads();
  gist_probs(sq, sk, kb, dh, ld, p.scale, sp);
  for (int idx = static_cast<int>(threadIdx.x); idx < kb * kb; idx += blockDim.x) {
    const int i = idx / kb, j = idx % kb;
    float s = 0.0f;
    for (int c = 0; c < dh; ++c) s += sdo[i * ld + c] * sv[j * ld + c];
    sds[i * lp + j] = s;
  }
  __syncthreads();
  {
    const int lane = static_cast<int>(threadIdx.x) % 32, warp = static_cast<int>(threadIdx.x) / 32;
    const int warps = static_cast<int>(blockDim.x) / 32;
    for (int i = warp; i < kb; i += warps) {
      float dot = 0.0f;
      for (int j = lane; j < kb; j += 32) dot += sp[i * lp + j] * sds[i * lp + j];
      dot = gist_warp_sum(dot);
      for (int j = lane; j < kb; j += 32)
        sds[i * lp + j] = sp[i * lp + j] * (sds[i * lp + j] - dot) * p.scale;
    }
  }
  __syncthreads();
  for (int idx = static_cast<int>(threadIdx.x); idx < kb * dh; idx += blockDim.x) {
    const int j = idx / dh, c = idx % dh;
    float acc = 0.0f;
    for (int i = 0; i < kb; ++i) acc += sp[i * lp + j] * sdo[i * ld + c];
    p.dv[(row0 + j) * p.d_attn + col0 + c] = acc;
  }
  __syncthreads();  // sdo and sv are free from here: dq goes to sdo, dk to sv
  for (int idx = static_cast<int>(threadIdx.x); idx < kb * dh; idx += blockDim.x) {
    const int i = idx / dh, c = idx % dh;
    float aq = 0.0f, ak = 0.0f;
    for (int j = 0; j < kb; ++j) {
      aq += sds[i * lp + j] * sk[j * ld + c];
      ak += sds[j * lp + i] * sq[j * ld + c];
    }
    sdo[i * ld + c] = aq;
    sv[i * ld + c] = ak;
  }
  __syncthreads();
  gist_rope_tile(sdo, p.rope, kb, dh, ld, true, p.dq, row0, col0, p.d_attn);
  gist_rope_tile(sv, p.rope, kb, dh, ld, true, p.dk, row0, col0, p.d_attn);
}

/// out[b, c] = (Σ_r in[b·K + r, c]) / K, rows summed in order.
__global__ void __launch_bounds__(kGistPoolThreads)
    gist_block_mean_kernel(const float* in, std::int64_t n, int k_block, int d, float* out) {
  const std::int64_t total = n * d;
  const float inv_k = 1.0f / static_cast<float>(k_block);
  for (std::int64_t i = blockIdx.x * std::int64_t{kGistPoolThreads} + threadIdx.x; i < total;
       i += std::int64_t{gridDim.x} * kGistPoolThreads) {
    const std::int64_t b = i / d;
    const int c = static_cast<int>(i % d);
    const float* src = in + b * k_block * d + c;
    float s = 0.0f;
    for (int r = 0; r < k_block; ++r) s += src[static_cast<std::int64_t>(r) * d];
    out[i] = s * inv_k;
  }
}

/// out[b·K + r, c] = dm[b, c] / K (the mean's backward).
__global__ void __launch_bounds__(kGistPoolThreads)
    gist_block_spread_kernel(const float* dm, std::int64_t n, int k_block, int d, float* out) {
  const std::int64_t total = n * k_block * d;
  const float inv_k = 1.0f / static_cast<float>(k_block);
  for (std::int64_t i = blockIdx.x * std::int64_t{kGistPoolThreads} + threadIdx.x; i < total;
       i += std::int64_t{gridDim.x} * kGistPoolThreads) {
    const std::int64_t row = i / d;
    const int c = static_cast<int>(i % d);
    out[i] = dm[(row / k_block) * d + c] * inv_k;
  }
}

__device__ inline float gist_sigmoid(float a) { return 1.0f / (1.0f + expf(-a)); }

/// s = silu(a) = a·sigmoid(a).
__global__ void __launch_bounds__(kGistPoolThreads)
    gist_silu_forward_kernel(const float* a, std::int64_t count, float* s) {
  for (std::int64_t i = blockIdx.x * std::int64_t{kGistPoolThreads} + threadIdx.x; i < count;
       i += std::int64_t{gridDim.x} * kGistPoolThreads) {
    const float v = a[i];
    s[i] = v * gist_sigmoid(v);
  }
}

/// da = ds ∘ silu'(a), silu'(a) = σ(a)(1 + a(1 − σ(a))); da may be ds (in place).
__global__ void __launch_bounds__(kGistPoolThreads)
    gist_silu_backward_kernel(const float* ds, const float* a, std::int64_t count, float* da) {
  for (std::int64_t i = blockIdx.x * std::int64_t{kGistPoolThreads} + threadIdx.x; i < count;
       i += std::int64_t{gridDim.x} * kGistPoolThreads) {
    const float v = a[i], sg = gist_sigmoid(v);
    da[i] = ds[i] * sg * (1.0f + v * (1.0f - sg));
  }
}

/// What the learned-query pooling kernels read and write; one warp per (block, head).
struct GistQueryParams {
  const float* query;  ///< [d_attn] learned query
  const float* k;      ///< [n·K, d_attn] hn·wk
  const float* v;      ///< [n·K, d_attn] hn·wv
  float* probs;        ///< [n, n_heads, K] softmax weights (forward writes, backward reads)
  float* o;            ///< forward: [n, d_attn]
  const float* d_o;    ///< backward: [n, d_attn]
  float* dk;           ///< backward: [n·K, d_attn]
  float* dv;           ///< backward: [n·K, d_attn]
  float* dq_part;      ///< backward: [n, d_attn] each block's share of dL/dquery
  std::int64_t n;      ///< gist blocks
  int k_block;
  int n_heads;
  int d_head;
  float scale;
};
static_assert(std::is_trivially_copyable_v<GistQueryParams>);

/// Forward of the learned-query head: p = softmax(q_h·k_j·scale) over the block's K rows,
/// o_h = Σ_j p_j v_j. Shared memory: kGistQueryWarps·K floats for the warps' weights.
__global__ void __launch_bounds__(kGistQueryWarps * 32) gist_query_forward_kernel(GistQueryParams p) {
  extern __shared__ float smem[];
  const int lane = static_cast<int>(threadIdx.x) % 32, warp = static_cast<int>(threadIdx.x) / 32;
  const std::int64_t task = static_cast<std::int64_t>(blockIdx.x) * kGistQueryWarps + warp;
  if (task >= p.n * p.n_heads) return;
  const std::int64_t b = task / p.n_heads;
  const int h = static_cast<int>(task % p.n_heads);
  const int kb = p.k_block, dh = p.d_head, da = p.n_heads * p.d_head;
  float* w = smem + warp * kb;
  const float* q = p.query + h * dh;
  float mx = -INFINITY;
  for (int j = lane; j < kb; j += 32) {
    const float* kr = p.k + (b * kb + j) * da + h * dh;
    float s = 0.0f;
    for (int c = 0; c < dh; ++c) s += q[c] * kr[c];
    s *= p.scale;
    w[j] = s;
    mx = fmaxf(mx, s);
  }
  mx = gist_warp_max(mx);
  float sum = 0.0f;
  for (int j = lane; j < kb; j += 32) {
    const float e = expf(w[j] - mx);
    w[j] = e;
    sum += e;
  }
  sum = gist_warp_sum(sum);
  const float inv = 1.0f / sum;
  for (int j = lane; j < kb; j += 32) {
    w[j] *= inv;
    p.probs[(b * p.n_heads + h) * kb + j] = w[j];
  }
  __syncwarp();
  for (int c = lane; c < dh; c += 32) {
    float acc = 0.0f;
    for (int j = 0; j < kb; ++j) acc += w[j] * p.v[(b * kb + j) * da + h * dh + c];
    p.o[b * da + h * dh + c] = acc;
  }
}

/// Backward of the learned-query head for one (block, head): dv_j = p_j do, ds_j = p_j (do·v_j −
/// Σ_l p_l do·v_l)·scale, dk_j = ds_j q, and the block's share of dq = Σ_j ds_j k_j.
__global__ void __launch_bounds__(kGistQueryWarps * 32) gist_query_backward_kernel(GistQueryParams p) {
  extern __shared__ float smem[];
  const int lane = static_cast<int>(threadIdx.x) % 32, warp = static_cast<int>(threadIdx.x) / 32;
  const std::int64_t task = static_cast<std::int64_t>(blockIdx.x) * kGistQueryWarps + warp;
  if (task >= p.n * p.n_heads) return;
  const std::int64_t b = task / p.n_heads;
  const int h = static_cast<int>(task % p.n_heads);
  const int kb = p.k_block, dh = p.d_head, da = p.n_heads * p.d_head;
  float* ds = smem + warp * kb;
  const float* pr = p.probs + (b * p.n_heads + h) * kb;
  const float* dob = p.d_o + b * da + h * dh;
  float dot = 0.0f;
  for (int j = lane; j < kb; j += 32) {
    const float* vr = p.v + (b * kb + j) * da + h * dh;
    float s = 0.0f;
    for (int c = 0; c < dh; ++c) s += dob[c] * vr[c];
    ds[j] = s;
    dot += pr[j] * s;
  }
  dot = gist_warp_sum(dot);
  for (int j = lane; j < kb; j += 32) ds[j] = pr[j] * (ds[j] - dot) * p.scale;
  __syncwarp();
  const float* q = p.query + h * dh;
  for (int c = lane; c < dh; c += 32) {
    const float qc = q[c], doc = dob[c];
    float acc = 0.0f;
    for (int j = 0; j < kb; ++j) {
      const std::int64_t off = (b * kb + j) * da + h * dh + c;
      acc += ds[j] * p.k[off];
      p.dk[off] = ds[j] * qc;
      p.dv[off] = pr[j] * doc;
    }
    p.dq_part[b * da + h * dh + c] = acc;
  }
}

/// out [d, parts·cols] = [w0 | w1 | …] for `parts` row-major [d, cols] matrices w_k = w + k·stride
/// (wq, wk, wv of one block; or w1, w3), so one GEMM reads the normed input once for all of them.
__global__ void __launch_bounds__(kGistPoolThreads)
    gist_pack_cols_kernel(const float* w, std::int64_t stride, int parts, int d, int cols,
                          float* out) {
  const std::int64_t total = static_cast<std::int64_t>(d) * parts * cols;
  for (std::int64_t i = blockIdx.x * std::int64_t{kGistPoolThreads} + threadIdx.x; i < total;
       i += std::int64_t{gridDim.x} * kGistPoolThreads) {
    const std::int64_t r = i / (parts * cols);
    const int col = static_cast<int>(i % (parts * cols));
    const int k = col / cols, c = col % cols;
    out[i] = w[k * stride + r * cols + c];
  }
}

// Inference-only fusions (the training path keeps the unfused passes, whose intermediates the
// backward reads). Each repeats the arithmetic of the kernels it replaces (rmsnorm_kernels.cuh,
// swiglu_kernels.cuh, gist_block_mean_kernel), in the same order, so inference and training give
// the same bits up to the GEMMs' own summation order; what they save is passes over [n·K, d].

/// rmsnorm_forward_kernel (one warp per row) that also writes `copy` = x: layer 0 of inference
/// needs the input both normed and as the residual stream, and this reads it once instead of twice.
__global__ void __launch_bounds__(kGistPoolThreads)
    gist_rmsnorm_copy_kernel(const float* x, const float* w, std::int64_t n, int d, float eps,
                             float* y, float* rstd, float* copy) {
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const std::int64_t row = static_cast<std::int64_t>(blockIdx.x) * (kGistPoolThreads / 32) +
                           static_cast<std::int64_t>(threadIdx.x) / 32;
  if (row >= n) return;
  const float* xr = x + row * d;
  float ss = 0.0f;
  for (int c = lane; c < d; c += 32) ss += xr[c] * xr[c];
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
  const float r = rsqrtf(ss / static_cast<float>(d) + eps);
  float* yr = y + row * d;
  float* cr = copy + row * d;
  for (int c = lane; c < d; c += 32) {
    const float v = xr[c];
    yr[c] = v * r * w[c];
    cr[c] = v;
  }
  if (lane == 0) rstd[row] = r;
}

/// g [rows, f] = silu(a) ∘ b over the packed rows ab [rows, 2f] = [a | b] (one GEMM by [w1 | w3]);
/// one warp per row (no per-element index division: this pass is memory-bound only that way).
__global__ void __launch_bounds__(kGistPoolThreads)
    gist_swiglu_rows_kernel(const float* ab, std::int64_t rows, int f, float* g) {
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const std::int64_t warps = std::int64_t{gridDim.x} * (kGistPoolThreads / 32);
  for (std::int64_t r = static_cast<std::int64_t>(blockIdx.x) * (kGistPoolThreads / 32) +
                        static_cast<std::int64_t>(threadIdx.x) / 32;
       r < rows; r += warps) {
    const float* a = ab + r * 2 * f;
    float* gr = g + r * f;
    for (int j = lane; j < f; j += 32) {
      const float av = a[j];
      gr[j] = av * gist_sigmoid(av) * a[j + f];
    }
  }
}

/// Dynamic shared memory of gist_norm_mean_kernel: one block's K normed rows.
inline std::size_t gist_norm_mean_smem(int k_block, int d) {
  return static_cast<std::size_t>(k_block) * static_cast<std::size_t>(d) * sizeof(float);
}

/// out[b, c] = mean over the K rows of block b of RMSNorm(x)·w: the pooling norm and the block mean
/// in one pass (one thread block per gist block), so the normed [n·K, d] never reaches memory.
__global__ void __launch_bounds__(kGistPoolThreads)
    gist_norm_mean_kernel(const float* x, const float* w, int k_block, int d, float eps,
                          float* out) {
  extern __shared__ float s_rows[];
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const int warp = static_cast<int>(threadIdx.x) / 32;
  const std::int64_t b = blockIdx.x;
  for (int r = warp; r < k_block; r += kGistPoolThreads / 32) {
    const float* xr = x + (b * k_block + r) * d;
    float ss = 0.0f;
    for (int c = lane; c < d; c += 32) ss += xr[c] * xr[c];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    const float rs = rsqrtf(ss / static_cast<float>(d) + eps);
    for (int c = lane; c < d; c += 32) s_rows[r * d + c] = xr[c] * rs * w[c];
  }
  __syncthreads();
  const float inv_k = 1.0f / static_cast<float>(k_block);
  for (int c = static_cast<int>(threadIdx.x); c < d; c += kGistPoolThreads) {
    float s = 0.0f;
    for (int r = 0; r < k_block; ++r) s += s_rows[r * d + c];
    out[b * d + c] = s * inv_k;
  }
}

}  // namespace mc::cuda::detail
