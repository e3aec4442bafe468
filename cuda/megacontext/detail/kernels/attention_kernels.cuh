// SPDX-License-Identifier: Apache-2.0
// Kernels of the causal attention core (facade: cuda/megacontext/device_attention.cuh),
// FlashAttention-2 style in fp32 FMA tiles (no tensor cores, so the results carry fp32 rounding
// only). Forward: one block per (query tile, head, sequence) streams the key tiles its rows may
// see, keeping a running max and sum (online softmax) and the output tile in registers; it saves
// only lse per row. Backward: delta = rowsum(dO∘O) first, then one pass per key tile for dK and
// dV and one per query tile for dQ, each recomputing P = exp(S − lse); two passes instead of
// atomics keep the result deterministic.
//
// Which key tiles a query tile visits (and which query tiles a key tile receives gradient from)
// comes from a tile rule, CausalTileRule here; a block-sparse (BSR) rule with the same four
// functions replaces it for MegaAttention's pyramid mask (issue #9).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "megacontext/error.cuh"

namespace mc::cuda::detail {

/// What the attention forward reads and writes. Rows of q, k, v, o: [batch, n, n_heads·D].
struct AttentionFwdParams {
  const float* q;
  const float* k;
  const float* v;
  float* o;
  float* lse;  ///< [batch, n_heads, n], natural log
  std::int64_t batch;
  std::int64_t n;
  int n_heads;
};
static_assert(std::is_trivially_copyable_v<AttentionFwdParams>);

/// What the attention backward reads and writes; `delta` is the workspace [batch, n_heads, n].
struct AttentionBwdParams {
  const float* q;
  const float* k;
  const float* v;
  const float* o;
  const float* lse;
  const float* d_o;
  float* dq;
  float* dk;
  float* dv;
  float* delta;
  std::int64_t batch;
  std::int64_t n;
  int n_heads;
};
static_assert(std::is_trivially_copyable_v<AttentionBwdParams>);

/// Causal mask by row order, at tile granularity (which tiles to visit) and per element (inside
/// a visited tile). Tiles are BQ query rows by BK keys; tile t of BQ rows covers [t·BQ, t·BQ+BQ).
struct CausalTileRule {
  std::int64_t n;

  /// Number of key tiles query tile `qt` visits.
  template <int BQ, int BK>
  __device__ int num_key_tiles(int qt) const {
    const std::int64_t last_row = min(n, static_cast<std::int64_t>(qt + 1) * BQ) - 1;
    return static_cast<int>(last_row / BK) + 1;
  }
  /// The idx-th key tile query tile `qt` visits.
  template <int BQ, int BK>
  __device__ int key_tile(int /*qt*/, int idx) const {
    return idx;
  }
  /// Number of query tiles whose rows see some key of key tile `kt`.
  template <int BQ, int BK>
  __device__ int num_query_tiles(int kt) const {
    const int first = static_cast<int>(static_cast<std::int64_t>(kt) * BK / BQ);
    return static_cast<int>((n + BQ - 1) / BQ) - first;
  }
  /// The idx-th query tile receiving gradient from key tile `kt`.
  template <int BQ, int BK>
  __device__ int query_tile(int kt, int idx) const {
    return static_cast<int>(static_cast<std::int64_t>(kt) * BK / BQ) + idx;
  }
  /// Whether query row `i` may attend key `j` (both may be padding rows past n).
  __device__ bool allowed(std::int64_t i, std::int64_t j) const { return j <= i && i < n; }
};

/// Threads of every attention block, laid out 16 (y) x 16 (x): the 16 x-lanes of a row group are
/// one half-warp, so row reductions are four shuffles.
inline constexpr int kAttnThreads = 256;
inline constexpr int kAttnTx = 16;
inline constexpr int kAttnTy = 16;

inline constexpr float kLog2e = 1.4426950408889634f;
inline constexpr float kLn2 = 0.6931471805599453f;

/// Loads N consecutive floats from shared memory with the widest aligned vector loads.
template <int N>
__device__ __forceinline__ void load_vec(const float* p, float (&r)[N]) {
  if constexpr (N % 4 == 0) {
#pragma unroll
    for (int i = 0; i < N; i += 4) {
      const float4 t = *reinterpret_cast<const float4*>(p + i);
      r[i] = t.x;
      r[i + 1] = t.y;
      r[i + 2] = t.z;
      r[i + 3] = t.w;
    }
  } else if constexpr (N % 2 == 0) {
#pragma unroll
    for (int i = 0; i < N; i += 2) {
      const float2 t = *reinterpret_cast<const float2*>(p + i);
      r[i] = t.x;
      r[i + 1] = t.y;
    }
  } else {
#pragma unroll
    for (int i = 0; i < N; ++i) r[i] = p[i];
  }
}

/// Stores N consecutive floats to shared memory with the widest aligned vector stores.
template <int N>
__device__ __forceinline__ void store_vec(float* p, const float (&r)[N]) {
  if constexpr (N % 4 == 0) {
#pragma unroll
    for (int i = 0; i < N; i += 4)
      *reinterpret_cast<float4*>(p + i) = make_float4(r[i], r[i + 1], r[i + 2], r[i + 3]);
  } else if constexpr (N % 2 == 0) {
#pragma unroll
    for (int i = 0; i < N; i += 2) *reinterpret_cast<float2*>(p + i) = make_float2(r[i], r[i + 1]);
  } else {
#pragma unroll
    for (int i = 0; i < N; ++i) p[i] = r[i];
  }
}

/// Copies rows [row0, row0 + ROWS) of one head (D columns at `src + h·D`, row stride `ld`) into
/// shared memory transposed, dst[d·(ROWS + 4) + r]; rows at or past n read as zero. Consecutive
/// threads take consecutive rows, so the transposed stores hit distinct banks.
template <int D, int ROWS>
__device__ __forceinline__ void load_tile_transposed(float* dst, const float* src,
                                                     std::int64_t row0, std::int64_t n,
                                                     std::int64_t ld) {
  constexpr int kStride = ROWS + 4;
  for (int idx = static_cast<int>(threadIdx.x); idx < ROWS * D / 4; idx += kAttnThreads) {
    const int r = idx % ROWS;
    const int d = (idx / ROWS) * 4;
    float4 t = make_float4(0.f, 0.f, 0.f, 0.f);
    if (row0 + r < n) t = *reinterpret_cast<const float4*>(src + (row0 + r) * ld + d);
    dst[(d + 0) * kStride + r] = t.x;
    dst[(d + 1) * kStride + r] = t.y;
    dst[(d + 2) * kStride + r] = t.z;
    dst[(d + 3) * kStride + r] = t.w;
  }
}

/// Copies rows [row0, row0 + ROWS) of one head into shared memory row-major, dst[r·D + d].
template <int D, int ROWS>
__device__ __forceinline__ void load_tile_rows(float* dst, const float* src, std::int64_t row0,
                                               std::int64_t n, std::int64_t ld) {
  for (int idx = static_cast<int>(threadIdx.x); idx < ROWS * D / 4; idx += kAttnThreads) {
    const int r = idx / (D / 4);
    const int d = (idx % (D / 4)) * 4;
    float4 t = make_float4(0.f, 0.f, 0.f, 0.f);
    if (row0 + r < n) t = *reinterpret_cast<const float4*>(src + (row0 + r) * ld + d);
    *reinterpret_cast<float4*>(dst + r * D + d) = t;
  }
}

/// Reduces over the 16 x-lanes of a half-warp (all of them hold the same row).
__device__ __forceinline__ float row_max16(float x) {
#pragma unroll
  for (int m = 1; m < kAttnTx; m <<= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, m));
  return x;
}
__device__ __forceinline__ float row_sum16(float x) {
#pragma unroll
  for (int m = 1; m < kAttnTx; m <<= 1) x += __shfl_xor_sync(0xffffffffu, x, m);
  return x;
}

/// Tile sizes of the forward for head dim D: BR query rows x BC keys. BC shrinks for the wide
/// heads so two blocks of D = 128 fit one SM's shared memory.
template <int D>
struct AttnFwdTiles {
  static constexpr int kBr = 64;
  static constexpr int kBc = D <= 64 ? 64 : 32;
  static constexpr int kSmemFloats =
      D * (kBr + 4) + D * (kBc + 4) + kBc * D + kBr * (kBc + 4);  // Qᵀ, Kᵀ, V, P
};

/// Forward. Thread (ty, tx) owns query rows ty·RM + [0, RM) of the tile; in S = Q·Kᵀ it owns
/// keys tx·RN + [0, RN), in O the column chunks tx·4 + 64·c. Scores are kept in log2 units
/// (scaled by log2 e) so exp2f does the exponentials.
template <int D, class Rule>
__global__ void __launch_bounds__(kAttnThreads)
    attention_forward_kernel(AttentionFwdParams p, Rule rule, float scale_log2) {
  using T = AttnFwdTiles<D>;
  constexpr int BR = T::kBr, BC = T::kBc;
  constexpr int RM = BR / kAttnTy, RN = BC / kAttnTx, CD = D / 64;
  static_assert(D % 64 == 0 && RM >= 1 && RN >= 1, "attention_forward_kernel: bad tiles");
  extern __shared__ __align__(16) float smem[];
  float* qt_s = smem;                 // [D][BR + 4]
  float* kt_s = qt_s + D * (BR + 4);  // [D][BC + 4]
  float* v_s = kt_s + D * (BC + 4);   // [BC][D]
  float* p_s = v_s + BC * D;          // [BR][BC + 4]

  const int tx = static_cast<int>(threadIdx.x) % kAttnTx;
  const int ty = static_cast<int>(threadIdx.x) / kAttnTx;
  const int num_q_tiles = static_cast<int>((p.n + BR - 1) / BR);
  // The longest rows (last query tiles) start first, so the causal tail is short.
  const int qt = num_q_tiles - 1 - static_cast<int>(blockIdx.x);
  const int b = static_cast<int>(blockIdx.y) / p.n_heads;
  const int h = static_cast<int>(blockIdx.y) % p.n_heads;
  const std::int64_t ld = static_cast<std::int64_t>(p.n_heads) * D;
  const std::int64_t base =
      static_cast<std::int64_t>(b) * p.n * ld + static_cast<std::int64_t>(h) * D;
  const std::int64_t q0 = static_cast<std::int64_t>(qt) * BR;

  load_tile_transposed<D, BR>(qt_s, p.q + base, q0, p.n, ld);

  float acc[RM][4 * CD];
  float m[RM];
  float l[RM];  // per-thread partial sums; the x-lanes of a row share m, so they add up at the end
#pragma unroll
  for (int i = 0; i < RM; ++i) {
    m[i] = -INFINITY;
    l[i] = 0.f;
#pragma unroll
    for (int c = 0; c < 4 * CD; ++c) acc[i][c] = 0.f;
  }

  const int num_tiles = rule.template num_key_tiles<BR, BC>(qt);
  for (int it = 0; it < num_tiles; ++it) {
    const std::int64_t k0 = static_cast<std::int64_t>(rule.template key_tile<BR, BC>(qt, it)) * BC;
    __syncthreads();  // the previous tile's K, V and P are no longer read
    load_tile_transposed<D, BC>(kt_s, p.k + base, k0, p.n, ld);
    load_tile_rows<D, BC>(v_s, p.v + base, k0, p.n, ld);
    __syncthreads();

    float s[RM][RN];
#pragma unroll
    for (int i = 0; i < RM; ++i)
#pragma unroll
      for (int j = 0; j < RN; ++j) s[i][j] = 0.f;
#pragma unroll 8
    for (int d = 0; d < D; ++d) {
      float a[RM], bk[RN];
      load_vec<RM>(qt_s + d * (BR + 4) + ty * RM, a);
      load_vec<RN>(kt_s + d * (BC + 4) + tx * RN, bk);
#pragma unroll
      for (int i = 0; i < RM; ++i)
#pragma unroll
        for (int j = 0; j < RN; ++j) s[i][j] = fmaf(a[i], bk[j], s[i][j]);
    }

#pragma unroll
    for (int i = 0; i < RM; ++i) {
      const std::int64_t qi = q0 + ty * RM + i;
      float mx = -INFINITY;
#pragma unroll
      for (int j = 0; j < RN; ++j) {
        s[i][j] = rule.allowed(qi, k0 + tx * RN + j) ? s[i][j] * scale_log2 : -INFINITY;
        mx = fmaxf(mx, s[i][j]);
      }
      const float m_new = fmaxf(m[i], row_max16(mx));
      // A row that has seen no allowed key yet (padding rows past n) keeps m = −inf; subtracting
      // 0 instead keeps its exponentials at exactly 0 rather than NaN.
      const float m_use = m_new == -INFINITY ? 0.f : m_new;
      const float alpha = exp2f(m[i] - m_use);
      m[i] = m_new;
      float psum = 0.f;
#pragma unroll
      for (int j = 0; j < RN; ++j) {
        s[i][j] = exp2f(s[i][j] - m_use);
        psum += s[i][j];
      }
      l[i] = l[i] * alpha + psum;
#pragma unroll
      for (int c = 0; c < 4 * CD; ++c) acc[i][c] *= alpha;
      store_vec<RN>(p_s + (ty * RM + i) * (BC + 4) + tx * RN, s[i]);
    }
    __syncthreads();

#pragma unroll 2
    for (int j0 = 0; j0 < BC; j0 += 4) {
      float pr[RM][4];
#pragma unroll
      for (int i = 0; i < RM; ++i) load_vec<4>(p_s + (ty * RM + i) * (BC + 4) + j0, pr[i]);
#pragma unroll
      for (int jj = 0; jj < 4; ++jj) {
#pragma unroll
        for (int c = 0; c < CD; ++c) {
          float vv[4];
          load_vec<4>(v_s + (j0 + jj) * D + c * 64 + tx * 4, vv);
#pragma unroll
          for (int i = 0; i < RM; ++i)
#pragma unroll
            for (int e = 0; e < 4; ++e)
              acc[i][c * 4 + e] = fmaf(pr[i][jj], vv[e], acc[i][c * 4 + e]);
        }
      }
    }
  }

#pragma unroll
  for (int i = 0; i < RM; ++i) {
    const std::int64_t qi = q0 + ty * RM + i;
    const float lsum = row_sum16(l[i]);
    if (qi >= p.n) continue;
    const float inv = 1.f / lsum;
    float* orow = p.o + base + qi * ld;
#pragma unroll
    for (int c = 0; c < CD; ++c)
      *reinterpret_cast<float4*>(orow + c * 64 + tx * 4) =
          make_float4(acc[i][c * 4] * inv, acc[i][c * 4 + 1] * inv, acc[i][c * 4 + 2] * inv,
                      acc[i][c * 4 + 3] * inv);
    if (tx == 0)
      p.lse[(static_cast<std::int64_t>(b) * p.n_heads + h) * p.n + qi] =
          (m[i] + __log2f(lsum)) * kLn2;
  }
}

/// delta[b, h, i] = Σ_d dO[b, i, h, d]·O[b, i, h, d]; one warp per (row, head).
template <int D>
__global__ void __launch_bounds__(kAttnThreads) attention_delta_kernel(AttentionBwdParams p) {
  constexpr int kWarps = kAttnThreads / 32;
  const std::int64_t row =
      static_cast<std::int64_t>(blockIdx.x) * kWarps + static_cast<int>(threadIdx.x) / 32;
  const std::int64_t rows = p.batch * p.n * p.n_heads;
  if (row >= rows) return;
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const float* o = p.o + row * D;
  const float* d_o = p.d_o + row * D;
  float sum = 0.f;
#pragma unroll
  for (int d = lane; d < D; d += 32) sum = fmaf(o[d], d_o[d], sum);
#pragma unroll
  for (int m = 16; m > 0; m >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, m);
  if (lane == 0) {
    // row = (b·n + i)·n_heads + h in memory order; delta is laid out [b, h, i] like lse.
    const std::int64_t bi = row / p.n_heads;
    const std::int64_t h = row % p.n_heads;
    const std::int64_t b = bi / p.n;
    const std::int64_t i = bi % p.n;
    p.delta[(b * p.n_heads + h) * p.n + i] = sum;
  }
}

/// Tile sizes of the backward passes: BO rows of the held ("outer") tile, BI rows of the
/// streamed ("inner") tile. D = 256 halves the outer tile to fit shared memory and registers.
template <int D>
struct AttnBwdTiles {
  static constexpr int kBo = D <= 128 ? 64 : 32;
  static constexpr int kBi = 64;
  static constexpr int kSmemFloats = 2 * D * (kBo + 4) + 2 * D * (kBi + 4) + kBo * (kBi + 4);
};

/// Backward pass over one outer tile. KeyOuter: the outer tile holds keys (K, V) and the inner
/// tiles are queries (Q, dO): A = K·Qᵀ = Sᵀ, B = V·dOᵀ = dPᵀ, dV += Pᵀ·dO, dK += dSᵀ·Q·scale.
/// Otherwise the outer tile holds queries (Q, dO), the inner tiles keys (K, V): A = S, B = dP,
/// dQ += dS·K·scale. With P = exp(S·scale − lse) and dS = P∘(dP − delta). Thread (ty, tx) owns
/// outer rows ty·RO + [0, RO); in A and B inner columns tx·RI + [0, RI); in the gradients the
/// columns tx + 16·c, which keeps the transposed inner tile's reads free of bank conflicts.
template <int D, bool KeyOuter, class Rule>
__global__ void __launch_bounds__(kAttnThreads)
    attention_backward_kernel(AttentionBwdParams p, Rule rule, float scale) {
  using T = AttnBwdTiles<D>;
  constexpr int BO = T::kBo, BI = T::kBi;
  constexpr int RO = BO / kAttnTy, RI = BI / kAttnTx, CD = D / kAttnTx;
  constexpr int SO = BO + 4, SI = BI + 4;
  // Query tiles are BQ rows, key tiles BK rows, whichever of them is outer.
  constexpr int BQ = KeyOuter ? BI : BO;
  constexpr int BK = KeyOuter ? BO : BI;
  extern __shared__ __align__(16) float smem[];
  float* x1 = smem;          // [D][SO]: Kᵀ (KeyOuter) or Qᵀ
  float* x2 = x1 + D * SO;   // [D][SO]: Vᵀ or dOᵀ
  float* y1 = x2 + D * SO;   // [D][SI]: Qᵀ (KeyOuter) or Kᵀ
  float* y2 = y1 + D * SI;   // [D][SI]: dOᵀ or Vᵀ
  float* s_s = y2 + D * SI;  // [BO][SI]: P or dS of the current pair of tiles

  const int tx = static_cast<int>(threadIdx.x) % kAttnTx;
  const int ty = static_cast<int>(threadIdx.x) / kAttnTx;
  const int num_outer = static_cast<int>((p.n + BO - 1) / BO);
  // Most work first: key tile 0 sees every query tile; the last query tile sees every key tile.
  const int ot =
      KeyOuter ? static_cast<int>(blockIdx.x) : num_outer - 1 - static_cast<int>(blockIdx.x);
  const int b = static_cast<int>(blockIdx.y) / p.n_heads;
  const int h = static_cast<int>(blockIdx.y) % p.n_heads;
  const std::int64_t ld = static_cast<std::int64_t>(p.n_heads) * D;
  const std::int64_t base =
      static_cast<std::int64_t>(b) * p.n * ld + static_cast<std::int64_t>(h) * D;
  const std::int64_t lbase = (static_cast<std::int64_t>(b) * p.n_heads + h) * p.n;
  const std::int64_t o0 = static_cast<std::int64_t>(ot) * BO;
  const float scale_log2 = scale * kLog2e;

  load_tile_transposed<D, BO>(x1, (KeyOuter ? p.k : p.q) + base, o0, p.n, ld);
  load_tile_transposed<D, BO>(x2, (KeyOuter ? p.v : p.d_o) + base, o0, p.n, ld);

  float acc1[RO][CD];                // dK or dQ
  float acc2[RO][CD];                // dV (KeyOuter only)
  float row_lse[RO], row_delta[RO];  // of the outer query rows (query-outer only)
#pragma unroll
  for (int a = 0; a < RO; ++a) {
#pragma unroll
    for (int c = 0; c < CD; ++c) acc1[a][c] = acc2[a][c] = 0.f;
    const std::int64_t r = o0 + ty * RO + a;
    row_lse[a] = (!KeyOuter && r < p.n) ? p.lse[lbase + r] * kLog2e : 0.f;
    row_delta[a] = (!KeyOuter && r < p.n) ? p.delta[lbase + r] : 0.f;
  }

  const int num_tiles = KeyOuter ? rule.template num_query_tiles<BQ, BK>(ot)
                                 : rule.template num_key_tiles<BQ, BK>(ot);
  for (int it = 0; it < num_tiles; ++it) {
    const int itile = KeyOuter ? rule.template query_tile<BQ, BK>(ot, it)
                               : rule.template key_tile<BQ, BK>(ot, it);
    const std::int64_t i0 = static_cast<std::int64_t>(itile) * BI;
    __syncthreads();  // the previous inner tile and P/dS are no longer read
    load_tile_transposed<D, BI>(y1, (KeyOuter ? p.q : p.k) + base, i0, p.n, ld);
    load_tile_transposed<D, BI>(y2, (KeyOuter ? p.d_o : p.v) + base, i0, p.n, ld);
    __syncthreads();

    float sa[RO][RI], sb[RO][RI];
#pragma unroll
    for (int a = 0; a < RO; ++a)
#pragma unroll
      for (int c = 0; c < RI; ++c) sa[a][c] = sb[a][c] = 0.f;
#pragma unroll 4
    for (int d = 0; d < D; ++d) {
      float xa[RO], xb[RO], ya[RI], yb[RI];
      load_vec<RO>(x1 + d * SO + ty * RO, xa);
      load_vec<RO>(x2 + d * SO + ty * RO, xb);
      load_vec<RI>(y1 + d * SI + tx * RI, ya);
      load_vec<RI>(y2 + d * SI + tx * RI, yb);
#pragma unroll
      for (int a = 0; a < RO; ++a)
#pragma unroll
        for (int c = 0; c < RI; ++c) {
          sa[a][c] = fmaf(xa[a], ya[c], sa[a][c]);
          sb[a][c] = fmaf(xb[a], yb[c], sb[a][c]);
        }
    }

    // sa ← P, sb ← dS.
    float col_lse[RI], col_delta[RI];
#pragma unroll
    for (int c = 0; c < RI; ++c) {
      const std::int64_t r = i0 + tx * RI + c;
      col_lse[c] = (KeyOuter && r < p.n) ? p.lse[lbase + r] * kLog2e : 0.f;
      col_delta[c] = (KeyOuter && r < p.n) ? p.delta[lbase + r] : 0.f;
    }
#pragma unroll
    for (int a = 0; a < RO; ++a)
#pragma unroll
      for (int c = 0; c < RI; ++c) {
        const std::int64_t ro = o0 + ty * RO + a;
        const std::int64_t ri = i0 + tx * RI + c;
        const std::int64_t qi = KeyOuter ? ri : ro;
        const std::int64_t kj = KeyOuter ? ro : ri;
        const float lse2 = KeyOuter ? col_lse[c] : row_lse[a];
        const float dlt = KeyOuter ? col_delta[c] : row_delta[a];
        const float pr = rule.allowed(qi, kj) ? exp2f(sa[a][c] * scale_log2 - lse2) : 0.f;
        sa[a][c] = pr;
        sb[a][c] = pr * (sb[a][c] - dlt);
      }

    if constexpr (KeyOuter) {
#pragma unroll
      for (int a = 0; a < RO; ++a) store_vec<RI>(s_s + (ty * RO + a) * SI + tx * RI, sa[a]);
      __syncthreads();
#pragma unroll 2
      for (int i = 0; i < BI; i += 4) {
        float pr[RO][4];
#pragma unroll
        for (int a = 0; a < RO; ++a) load_vec<4>(s_s + (ty * RO + a) * SI + i, pr[a]);
#pragma unroll
        for (int c = 0; c < CD; ++c) {
          float yv[4];
          load_vec<4>(y2 + (tx + kAttnTx * c) * SI + i, yv);
#pragma unroll
          for (int a = 0; a < RO; ++a)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc2[a][c] = fmaf(pr[a][e], yv[e], acc2[a][c]);
        }
      }
      __syncthreads();  // P is read; dS takes its place
    }
#pragma unroll
    for (int a = 0; a < RO; ++a) store_vec<RI>(s_s + (ty * RO + a) * SI + tx * RI, sb[a]);
    __syncthreads();
#pragma unroll 2
    for (int i = 0; i < BI; i += 4) {
      float ds[RO][4];
#pragma unroll
      for (int a = 0; a < RO; ++a) load_vec<4>(s_s + (ty * RO + a) * SI + i, ds[a]);
#pragma unroll
      for (int c = 0; c < CD; ++c) {
        float yv[4];
        load_vec<4>(y1 + (tx + kAttnTx * c) * SI + i, yv);
#pragma unroll
        for (int a = 0; a < RO; ++a)
#pragma unroll
          for (int e = 0; e < 4; ++e) acc1[a][c] = fmaf(ds[a][e], yv[e], acc1[a][c]);
      }
    }
  }

#pragma unroll
  for (int a = 0; a < RO; ++a) {
    const std::int64_t r = o0 + ty * RO + a;
    if (r >= p.n) continue;
    float* g1 = (KeyOuter ? p.dk : p.dq) + base + r * ld;
#pragma unroll
    for (int c = 0; c < CD; ++c) g1[tx + kAttnTx * c] = acc1[a][c] * scale;
    if constexpr (KeyOuter) {
      float* g2 = p.dv + base + r * ld;
#pragma unroll
      for (int c = 0; c < CD; ++c) g2[tx + kAttnTx * c] = acc2[a][c];
    }
  }
}

/// Sets the dynamic shared memory limit of `kernel` (needed above 48 KiB; FlashAttention does the
/// same before every launch, and it is legal during graph capture) and returns the status.
template <class Kernel>
inline cudaError_t attention_smem_attr(Kernel kernel, int bytes) {
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
}

/// Launches the forward for head dim D on `stream`; sizes are validated by the facade.
template <int D>
inline cudaError_t launch_attention_forward(const AttentionFwdParams& p, cudaStream_t stream) {
  using T = AttnFwdTiles<D>;
  constexpr int kBytes = T::kSmemFloats * static_cast<int>(sizeof(float));
  auto* kernel = attention_forward_kernel<D, CausalTileRule>;
  MC_CUDA_RETURN_IF_ERROR(attention_smem_attr(kernel, kBytes));
  const dim3 grid(static_cast<unsigned>((p.n + T::kBr - 1) / T::kBr),
                  static_cast<unsigned>(p.batch * p.n_heads));
  const float scale_log2 = kLog2e / sqrtf(static_cast<float>(D));
  kernel<<<grid, kAttnThreads, kBytes, stream>>>(p, CausalTileRule{p.n}, scale_log2);
  return after_launch(stream);
}

/// Launches delta, then dK/dV, then dQ for head dim D on `stream`.
template <int D>
inline cudaError_t launch_attention_backward(const AttentionBwdParams& p, cudaStream_t stream) {
  using T = AttnBwdTiles<D>;
  constexpr int kBytes = T::kSmemFloats * static_cast<int>(sizeof(float));
  const std::int64_t rows = p.batch * p.n * p.n_heads;
  constexpr int kWarps = kAttnThreads / 32;
  attention_delta_kernel<D>
      <<<static_cast<unsigned>((rows + kWarps - 1) / kWarps), kAttnThreads, 0, stream>>>(p);
  MC_CUDA_RETURN_IF_ERROR(after_launch(stream));

  const float scale = 1.f / sqrtf(static_cast<float>(D));
  const unsigned heads = static_cast<unsigned>(p.batch * p.n_heads);
  auto* dkdv = attention_backward_kernel<D, true, CausalTileRule>;
  MC_CUDA_RETURN_IF_ERROR(attention_smem_attr(dkdv, kBytes));
  dkdv<<<dim3(static_cast<unsigned>((p.n + T::kBo - 1) / T::kBo), heads), kAttnThreads, kBytes,
         stream>>>(p, CausalTileRule{p.n}, scale);
  MC_CUDA_RETURN_IF_ERROR(after_launch(stream));

  auto* dq = attention_backward_kernel<D, false, CausalTileRule>;
  MC_CUDA_RETURN_IF_ERROR(attention_smem_attr(dq, kBytes));
  dq<<<dim3(static_cast<unsigned>((p.n + T::kBo - 1) / T::kBo), heads), kAttnThreads, kBytes,
       stream>>>(p, CausalTileRule{p.n}, scale);
  return after_launch(stream);
}

}  // namespace mc::cuda::detail
