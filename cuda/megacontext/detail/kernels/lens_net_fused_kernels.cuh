// SPDX-License-Identifier: Apache-2.0
// The fused inference forward of the device LensNet (facade: cuda/megacontext/device_lens_net.cuh):
// two launches instead of ~40. Entries never attend each other, so the whole network runs per
// tile of 64 entries inside one thread block, with the tile's residual stream in shared memory:
//
//   lens_memory_kv_kernel     memory = query·w_in + b_in, and for every layer
//                             k, v = RMSNorm(memory)·wk, ·wv  ([n_layers, 2, Q, D], fp32 FMA;
//                             tiny, and shared by every tile)
//   lens_fused_forward_kernel per tile: h = x·w_in + features·w_feat + b_in; per layer
//                             RMSNorm → q = ·wq → cross-attention over the layer's k, v →
//                             h += o·wo → RMSNorm → SwiGLU MLP (d_ff in chunks of 64, the gate
//                             applied in registers) → h += g·w2; then RMSNorm → tanh head.
//
// Arithmetic. Every product (the projections, and the attention's q·kᵀ and p·v) is a TF32
// tensor-core MMA (mma.sync m16n8k8, fp32 accumulate): activations are rounded to TF32 (nearest)
// as they are written to shared memory; weights enter the MMA as fp32 bits, which the tensor cores
// truncate to TF32. Norms, softmax, the SwiGLU gate and the head are fp32. The cuBLAS TF32 path
// rounds the projections' inputs alike but runs the attention in fp32, so the two agree up to
// TF32 rounding (tests/cuda/test_lens_net_parity.cu compares both with the fp64 CPU LensNet and
// with each other).
//
// Weights. The kernel reads its weights in one fixed order (lf_stage_src: w_in, w_feat, then per
// layer wq, wo and per d_ff chunk [w1 | w3], w2), 32 rows at a time, through a ring of kLfStages
// shared-memory stages filled by cp.async kLfStages − 1 stages ahead, across GEMM boundaries: the
// L2 latency of the next GEMM's first rows hides behind the norms, the attention and the
// epilogues. One barrier per stage both publishes it and frees the stage consumed before it.
//
// Shapes are compiled in: D = 128 (4 heads of 32), d_in a multiple of 128, d_ff a multiple of 64,
// Q <= 32 query rows, <= 8 layers, F <= 32 features; kLensFusedShapes lists the instantiated
// (d_in, d_ff). Other options run the unfused path.
//
// Layout of a block (256 threads, 8 warps): GEMM tiles [64 × 128] are split 2 × 4 over the warps
// (32 × 32 each: 2 × 4 MMA tiles), so in the attention warp column wn is head wn. Rows of the
// activations in shared memory are 132 floats (≡ 4 mod 32 banks: A-fragment loads conflict-free),
// of weight stages and values 136 (≡ 8: B-fragment loads conflict-free), of keys 132 (read
// transposed as B). The entries' x tile is staged by cp.async at 4 + d_in floats per row.
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <type_traits>

namespace mc::cuda::detail {

inline constexpr int kLfD = 128;         // d_model
inline constexpr int kLfDh = 32;         // d_head
inline constexpr int kLfHeads = kLfD / kLfDh;
inline constexpr int kLfTile = 64;       // entries per block
inline constexpr int kLfThreads = 256;
inline constexpr int kLfMaxQuery = 32;   // query rows
inline constexpr int kLfMaxLayers = 8;
inline constexpr int kLfMaxFeatures = 32;
inline constexpr int kLfKs = 32;         // weight rows per cp.async stage
inline constexpr int kLfStages = 4;      // weight stages in the ring (3 in flight)
inline constexpr int kLfKvThreads = 512;  // lens_memory_kv_kernel
inline constexpr int kLfChunk = 64;      // d_ff columns per MLP chunk
inline constexpr int kLfLda = kLfD + 4;  // activation row stride (floats)
inline constexpr int kLfLdg = kLfChunk + 4;
inline constexpr int kLfLdb = kLfD + 8;  // weight stage (and value) row stride (floats)

/// One instantiated shape of the fused path: (d_in, d_ff) with D = 128, 4 heads.
struct LensFusedShape {
  int d_in;
  int d_ff;
};
/// The (d_in, d_ff) compiled in (the default LensNet).
inline constexpr LensFusedShape kLensFusedShapes[] = {{256, 256}};

/// One layer's weights (device pointers into the flat weight buffer).
struct LensFusedLayer {
  const float* attn_norm;  ///< [D]
  const float* mem_norm;   ///< [D]
  const float* wq;         ///< [D, D]
  const float* wk;         ///< [D, D]
  const float* wv;         ///< [D, D]
  const float* wo;         ///< [D, D]
  const float* mlp_norm;   ///< [D]
  const float* w1;         ///< [D, d_ff]
  const float* w3;         ///< [D, d_ff]
  const float* w2;         ///< [d_ff, D]
};

/// What the two fused kernels read and write.
struct LensFusedParams {
  const float* x;      ///< [W, d_in] entries
  const float* feat;   ///< [W, F]
  const float* query;  ///< [Q, d_in]
  float* kv;           ///< [n_layers, 2, Q, D] keys then values of every layer (scratch)
  const float* w_in;   ///< [d_in, D]
  const float* w_feat; ///< [F, D]
  const float* b_in;   ///< [D]
  LensFusedLayer layers[kLfMaxLayers];
  const float* out_norm;  ///< [D]
  const float* w_out;     ///< [D]
  const float* b_out;     ///< [1]
  float* scores;          ///< [W]
  std::int64_t w;         ///< entries W
  int n_layers;
  int nq;                 ///< query rows, 1..kLfMaxQuery
  int n_feat;             ///< F
  float eps;
  float scale;            ///< 1/√d_head
};
static_assert(std::is_trivially_copyable_v<LensFusedParams>);

// Shared-memory plan (floats): sX, sA, sQ [64, 132] each, sK [32, 132], sV [32, 136], the weight
// ring [kLfStages, 32, 136]; the x tile [64, d_in + 4] overlays sQ, sK, sV before the first layer.
inline constexpr int kLfSmemQ = 2 * kLfTile * kLfLda;
inline constexpr int kLfSmemK = kLfSmemQ + kLfTile * kLfLda;
inline constexpr int kLfSmemV = kLfSmemK + kLfMaxQuery * kLfLda;
inline constexpr int kLfSmemB = kLfSmemV + kLfMaxQuery * kLfLdb;
inline constexpr int kLfSmemFloats = kLfSmemB + kLfStages * kLfKs * kLfLdb;

/// Dynamic shared memory of lens_fused_forward_kernel (bytes).
inline constexpr std::size_t kLensFusedSmemBytes =
    static_cast<std::size_t>(kLfSmemFloats) * sizeof(float);

__device__ inline float lf_warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// fp32 → TF32, round to nearest (ties away), as cuBLAS's TF32 mode rounds its inputs.
__device__ inline float lf_tf32(float x) {
  unsigned u;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(u) : "f"(x));
  return __uint_as_float(u);
}

__device__ inline void lf_cp_async16(float* dst, const float* src) {
  const auto d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(d), "l"(src) : "memory");
}
__device__ inline void lf_cp_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ inline void lf_cp_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// c += a·b for one m16n8k8 TF32 tile (fragments in the PTX ISA's mma.m16n8k8 layout).
__device__ inline void lf_mma(float (&c)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// The warp's accumulators: acc[mt][nt][i] is tile row wm·32 + mt·16 + g + 8·(i ≥ 2), tile column
// wn·32 + nt·8 + 2t + (i & 1), with warp = 4·wm + wn, g = lane / 4, t = lane % 4.
using LfAcc = float[2][4][4];

__device__ inline void lf_zero(LfAcc& acc) {
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int nt = 0; nt < 4; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[mt][nt][i] = 0.0f;
}

// Calls f(row, col, value) for each of the warp's 32 accumulators.
template <class F>
__device__ inline void lf_for_acc(const LfAcc& acc, F&& f) {
  const int lane = static_cast<int>(threadIdx.x) & 31, warp = static_cast<int>(threadIdx.x) >> 5;
  const int g = lane >> 2, t = lane & 3, wm = warp >> 2, wn = warp & 3;
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int nt = 0; nt < 4; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i)
        f(wm * 32 + mt * 16 + g + ((i >> 1) << 3), wn * 32 + nt * 8 + 2 * t + (i & 1),
          acc[mt][nt][i]);
}

// acc += A·B over KSteps·8 columns of A (shared memory, row stride Lda, from column 0 of `a`) and
// as many rows of B (shared memory, row stride kLfLdb, from row 0 of `b`), for this warp's tile.
template <int KSteps, int Lda>
__device__ inline void lf_mma_block(const float* a, const float* b, LfAcc& acc) {
  const int lane = static_cast<int>(threadIdx.x) & 31, warp = static_cast<int>(threadIdx.x) >> 5;
  const int g = lane >> 2, t = lane & 3, wm = warp >> 2, wn = warp & 3;
#pragma unroll
  for (int kk = 0; kk < 8 * KSteps; kk += 8) {
    unsigned af[2][4];
    unsigned bf[4][2];
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
      const float* ar = a + (wm * 32 + mt * 16 + g) * Lda + kk + t;
      af[mt][0] = __float_as_uint(ar[0]);
      af[mt][1] = __float_as_uint(ar[8 * Lda]);
      af[mt][2] = __float_as_uint(ar[4]);
      af[mt][3] = __float_as_uint(ar[8 * Lda + 4]);
    }
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) {
      const float* br = b + (kk + t) * kLfLdb + wn * 32 + nt * 8 + g;
      bf[nt][0] = __float_as_uint(br[0]);
      bf[nt][1] = __float_as_uint(br[4 * kLfLdb]);
    }
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
      for (int nt = 0; nt < 4; ++nt) lf_mma(acc[mt][nt], af[mt], bf[nt]);
  }
}

// acc += A·B over KSteps·8 columns of A (as lf_mma_block) where B is stored transposed, row
// stride kLfLda: bt[n·kLfLda + k] = B[k][n]. The keys are such a B for q·kᵀ (one row per key,
// bt pointing at the warp's head columns); the warp's 32 output columns are B's columns 0..31.
template <int KSteps>
__device__ inline void lf_mma_block_bt(const float* a, const float* bt, LfAcc& acc) {
  const int lane = static_cast<int>(threadIdx.x) & 31, warp = static_cast<int>(threadIdx.x) >> 5;
  const int g = lane >> 2, t = lane & 3, wm = warp >> 2;
#pragma unroll
  for (int kk = 0; kk < 8 * KSteps; kk += 8) {
    unsigned af[2][4];
    unsigned bf[4][2];
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
      const float* ar = a + (wm * 32 + mt * 16 + g) * kLfLda + kk + t;
      af[mt][0] = __float_as_uint(ar[0]);
      af[mt][1] = __float_as_uint(ar[8 * kLfLda]);
      af[mt][2] = __float_as_uint(ar[4]);
      af[mt][3] = __float_as_uint(ar[8 * kLfLda + 4]);
    }
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) {
      const float* br = bt + (nt * 8 + g) * kLfLda + kk + t;
      bf[nt][0] = __float_as_uint(br[0]);
      bf[nt][1] = __float_as_uint(br[4]);
    }
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
      for (int nt = 0; nt < 4; ++nt) lf_mma(acc[mt][nt], af[mt], bf[nt]);
  }
}

// Weight stages per layer: wq (4), wo (4), then per d_ff chunk [w1 | w3] (4) and w2 (2).
template <int DFf>
inline constexpr int kLfLayerStages =
    2 * (kLfD / kLfKs) + (DFf / kLfChunk) * (kLfD / kLfKs + kLfChunk / kLfKs);

// Address of row `row`, columns col..col+3 of weight stage s (the kernel's fixed read order, see
// the file comment), or null for a row to zero-fill (w_feat past F).
template <int DIn, int DFf>
__device__ inline const float* lf_stage_src(const LensFusedParams& p, int s, int row, int col) {
  constexpr int kIn = DIn / kLfKs;
  if (s < kIn) return p.w_in + static_cast<std::int64_t>(s * kLfKs + row) * kLfD + col;
  if (s == kIn) return row < p.n_feat ? p.w_feat + row * kLfD + col : nullptr;
  const int sl = s - kIn - 1;
  const LensFusedLayer& lw = p.layers[sl / kLfLayerStages<DFf>];
  const int r = sl % kLfLayerStages<DFf>;
  if (r < 4) return lw.wq + (r * kLfKs + row) * kLfD + col;
  if (r < 8) return lw.wo + ((r - 4) * kLfKs + row) * kLfD + col;
  const int fc = (r - 8) / 6, q = (r - 8) % 6;
  if (q < 4) {
    // Tile column c of the [w1 | w3] chunk: warp column c / 32 takes 16 columns of w1, then the
    // same 16 of w3 (so each thread holds a and b of the same hidden units).
    const int within = col & 31;
    return (within < 16 ? lw.w1 : lw.w3) + (q * kLfKs + row) * DFf + fc * kLfChunk +
           (col >> 5) * 16 + (within & 15);
  }
  return lw.w2 + static_cast<std::int64_t>(fc * kLfChunk + (q - 4) * kLfKs + row) * kLfD + col;
}

// Issues the copies of weight stage s (if it exists) into its ring slot, and commits one group
// (empty past the last stage: one group per stage keeps lf_acquire's count right).
template <int DIn, int DFf>
__device__ inline void lf_load_stage(const LensFusedParams& p, int s, float* ring) {
  const int total = DIn / kLfKs + 1 + p.n_layers * kLfLayerStages<DFf>;
  if (s < total) {
    float* dst = ring + (s % kLfStages) * kLfKs * kLfLdb;
    const int tid = static_cast<int>(threadIdx.x);
#pragma unroll
    for (int j = 0; j < kLfKs * kLfD / 4 / kLfThreads; ++j) {
      const int i = tid + j * kLfThreads;
      const int row = i / (kLfD / 4), col = (i % (kLfD / 4)) * 4;
      const float* src = lf_stage_src<DIn, DFf>(p, s, row, col);
      if (src != nullptr)
        lf_cp_async16(dst + row * kLfLdb + col, src);
      else
        *reinterpret_cast<float4*>(dst + row * kLfLdb + col) = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
  }
  lf_cp_commit();
}

// Waits for weight stage s, then a barrier (stage s visible to all; every thread is done with
// stage s − 1 and with whatever it wrote before), then refills stage s − 1's slot with stage
// s + kLfStages − 1. Returns stage s's slot. Groups in flight: stages s .. s + kLfStages − 2.
template <int DIn, int DFf>
__device__ inline const float* lf_acquire(const LensFusedParams& p, int s, float* ring) {
  lf_cp_wait<kLfStages - 2>();
  __syncthreads();
  lf_load_stage<DIn, DFf>(p, s + kLfStages - 1, ring);
  return ring + (s % kLfStages) * kLfKs * kLfLdb;
}

// acc += A·W for the next Stages weight stages (W's rows Stages·32, one stage per 32 columns of
// the block's A, shared memory, row stride Lda); s advances past them.
template <int Stages, int Lda, int DIn, int DFf>
__device__ inline void lf_stream_gemm(const LensFusedParams& p, int& s, float* ring,
                                      const float* a, LfAcc& acc) {
#pragma unroll 1
  for (int k = 0; k < Stages; ++k, ++s)
    lf_mma_block<kLfKs / 8, Lda>(a + k * kLfKs, lf_acquire<DIn, DFf>(p, s, ring), acc);
}

// dst[r, c] = TF32(RMSNorm(src[r, :])·gain) for the tile's 64 rows (one warp per 8 rows, four
// columns per lane).
__device__ inline void lf_rmsnorm(const float* src, const float* gain, float eps, float* dst) {
  const int lane = static_cast<int>(threadIdx.x) & 31, warp = static_cast<int>(threadIdx.x) >> 5;
  const float4 gv = __ldg(reinterpret_cast<const float4*>(gain) + lane);
#pragma unroll 2
  for (int r = warp * (kLfTile / 8); r < (warp + 1) * (kLfTile / 8); ++r) {
    const float4 x = *reinterpret_cast<const float4*>(src + r * kLfLda + lane * 4);
    const float ss = lf_warp_sum(x.x * x.x + x.y * x.y + x.z * x.z + x.w * x.w);
    const float rs = rsqrtf(ss / static_cast<float>(kLfD) + eps);
    *reinterpret_cast<float4*>(dst + r * kLfLda + lane * 4) =
        make_float4(lf_tf32(x.x * rs * gv.x), lf_tf32(x.y * rs * gv.y), lf_tf32(x.z * rs * gv.z),
                    lf_tf32(x.w * rs * gv.w));
  }
}

// Σ_k v[k]·w[k·ld + c] for k in [k_begin, k_begin + 64), k in order, the 64 weights loaded
// before any is used (one memory round trip).
__device__ inline float lf_dot_column64(const float* v, const float* w, int ld, int k_begin, int c) {
  float wr[64];
#pragma unroll
  for (int u = 0; u < 64; ++u) wr[u] = __ldg(w + static_cast<std::int64_t>(k_begin + u) * ld + c);
  float acc = 0.0f;
#pragma unroll
  for (int u = 0; u < 64; ++u) acc += v[k_begin + u] * wr[u];
  return acc;
}

/// Grid (Q, n_layers), kLfKvThreads threads: row j of the query memory for layer l (D = 128),
/// every partial sum a 64-long column dot product, so each thread makes two memory round trips.
template <int DIn>
__global__ void __launch_bounds__(kLfKvThreads) lens_memory_kv_kernel(LensFusedParams p) {
  static_assert(DIn % 64 == 0 && DIn / 64 * kLfD <= kLfKvThreads * 2,
                "lens_memory_kv_kernel: d_in must be a multiple of 64, at most 512");
  constexpr int kParts = DIn / 64;  // k slices of the memory row's dot products
  __shared__ float s_q[DIn];
  __shared__ float s_part[kParts * kLfD > 2 * 2 * kLfD ? kParts * kLfD : 2 * 2 * kLfD];
  __shared__ float s_mn[kLfD];
  __shared__ float s_red[kLfD / 32];
  const int j = static_cast<int>(blockIdx.x), l = static_cast<int>(blockIdx.y);
  const int tid = static_cast<int>(threadIdx.x), lane = tid & 31, warp = tid >> 5;
  const LensFusedLayer& lw = p.layers[l];
  for (int i = tid; i < DIn; i += kLfKvThreads)
    s_q[i] = p.query[static_cast<std::int64_t>(j) * DIn + i];
  __syncthreads();
  // memory[c] = Σ_k q[k]·w_in[k, c] + b_in[c]: column c, k slice `part`.
  for (int i = tid; i < kParts * kLfD; i += kLfKvThreads)
    s_part[i] = lf_dot_column64(s_q, p.w_in, kLfD, (i / kLfD) * 64, i % kLfD);
  __syncthreads();
  float m = 0.0f;
  if (tid < kLfD) {
    m = __ldg(p.b_in + tid);
    float acc = 0.0f;
    for (int part = 0; part < kParts; ++part) acc += s_part[part * kLfD + tid];
    m += acc;
  }
  const float sq = lf_warp_sum(m * m);
  if (lane == 0 && warp < kLfD / 32) s_red[warp] = sq;
  __syncthreads();
  float ss = 0.0f;
#pragma unroll
  for (int w = 0; w < kLfD / 32; ++w) ss += s_red[w];
  const float rs = rsqrtf(ss / static_cast<float>(kLfD) + p.eps);
  if (tid < kLfD) s_mn[tid] = m * rs * __ldg(lw.mem_norm + tid);
  __syncthreads();
  // k (outputs 0..127) and v (128..255), each as two 64-row halves: thread → (half, output).
  const int out = tid % (2 * kLfD), half = tid / (2 * kLfD);
  s_part[tid] = lf_dot_column64(s_mn, out < kLfD ? lw.wk : lw.wv, kLfD, half * 64, out % kLfD);
  __syncthreads();
  if (tid < 2 * kLfD)
    p.kv[((static_cast<std::int64_t>(l) * 2 + tid / kLfD) * p.nq + j) * kLfD + tid % kLfD] =
        s_part[tid] + s_part[tid + 2 * kLfD];
}

/// One block per tile of 64 entries; see the file comment. Dynamic shared memory
/// kLensFusedSmemBytes. Needs lens_memory_kv_kernel's output in p.kv and p.x 16-byte aligned.
template <int DIn, int DFf>
__global__ void __launch_bounds__(kLfThreads, 1) lens_fused_forward_kernel(LensFusedParams p) {
  static_assert(DIn % kLfD == 0 && DFf % kLfChunk == 0, "lens_fused_forward_kernel: bad shape");
  constexpr int kLdx = DIn + 4;  // x tile row stride (≡ 4 mod 32 banks for d_in % 32 == 0)
  static_assert(kLfSmemQ + kLfTile * kLdx <= kLfSmemB, "lens_fused_forward_kernel: x tile too big");
  extern __shared__ __align__(16) float lf_smem[];
  float* sX = lf_smem;             // [64, 132] residual stream (fp32)
  float* sA = sX + kLfTile * kLfLda;  // [64, 132] GEMM input (TF32)
  float* sQ = lf_smem + kLfSmemQ;  // [64, 132] q (TF32); the MLP's gate chunk [64, 68]
  float* sK = lf_smem + kLfSmemK;  // [32, 132] the layer's keys (TF32)
  float* sV = lf_smem + kLfSmemV;  // [32, 136] values (TF32)
  float* ring = lf_smem + kLfSmemB;  // [kLfStages, 32, 136] weight stages
  float* sXin = sQ;                // [64, d_in + 4] the tile's x (before the first layer)
  const int tid = static_cast<int>(threadIdx.x), lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t = lane & 3, wm = warp >> 2, wn = warp & 3;
  const std::int64_t e0 = static_cast<std::int64_t>(blockIdx.x) * kLfTile;
  const int rows = static_cast<int>(p.w - e0 < kLfTile ? p.w - e0 : kLfTile);
  constexpr int kXChunks = kLfTile * DIn / 4 / kLfThreads;  // 16-byte pieces per thread
  static_assert(kLfTile * DIn / 4 % kLfThreads == 0, "lens_fused_forward_kernel: bad d_in");

  // Prologue: the x tile (its own group), then the first weight stages, then the features.
  {
#pragma unroll
    for (int j = 0; j < kXChunks; ++j) {
      const int i = tid + j * kLfThreads, r = i / (DIn / 4), c = (i % (DIn / 4)) * 4;
      if (r < rows)
        lf_cp_async16(sXin + r * kLdx + c, p.x + (e0 + r) * DIn + c);
      else
        *reinterpret_cast<float4*>(sXin + r * kLdx + c) = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
    lf_cp_commit();
#pragma unroll
    for (int st = 0; st < kLfStages - 1; ++st) lf_load_stage<DIn, DFf>(p, st, ring);
    // The features (zero-padded to a multiple of 8 columns) into sA, free until the first norm.
    const int f_pad = (p.n_feat + 7) / 8 * 8;
    for (int i = tid; i < kLfTile * f_pad; i += kLfThreads) {
      const int r = i / f_pad, f = i % f_pad;
      sA[r * kLfLda + f] =
          r < rows && f < p.n_feat ? lf_tf32(p.feat[(e0 + r) * p.n_feat + f]) : 0.0f;
    }
    // Round this thread's own pieces of x once they have landed (the barrier in the first
    // lf_acquire publishes them).
    lf_cp_wait<kLfStages - 1>();
#pragma unroll
    for (int j = 0; j < kXChunks; ++j) {
      const int i = tid + j * kLfThreads, r = i / (DIn / 4), c = (i % (DIn / 4)) * 4;
      float4* v = reinterpret_cast<float4*>(sXin + r * kLdx + c);
      const float4 x = *v;
      *v = make_float4(lf_tf32(x.x), lf_tf32(x.y), lf_tf32(x.z), lf_tf32(x.w));
    }
  }
  int s = 0;  // next weight stage
  LfAcc acc;
  lf_zero(acc);
  // h⁰ = x·w_in + features·w_feat + b_in.
  lf_stream_gemm<DIn / kLfKs, kLdx, DIn, DFf>(p, s, ring, sXin, acc);
  {
    const float* b = lf_acquire<DIn, DFf>(p, s++, ring);
    const int f_pad = (p.n_feat + 7) / 8 * 8;
#pragma unroll 1
    for (int k0 = 0; k0 < f_pad; k0 += 8) lf_mma_block<1, kLfLda>(sA + k0, b + k0 * kLfLdb, acc);
  }
  lf_for_acc(acc, [&](int r, int c, float v) { sX[r * kLfLda + c] = v + __ldg(p.b_in + c); });

#pragma unroll 1
  for (int l = 0; l < p.n_layers; ++l) {
    const LensFusedLayer& lw = p.layers[l];
    // The layer's keys and values into registers now, into sK / sV after the q projection (the
    // x tile they overlay is read until the last w_in stage; rows past nq are zero).
    const float* kv = p.kv + static_cast<std::int64_t>(l) * 2 * p.nq * kLfD;
    float4 kvr[2 * kLfMaxQuery * kLfD / 4 / kLfThreads];
#pragma unroll
    for (int j = 0; j < 2 * kLfMaxQuery * kLfD / 4 / kLfThreads; ++j) {
      const int i = tid + j * kLfThreads;
      const int part = i / (kLfMaxQuery * kLfD / 4), row = (i / (kLfD / 4)) % kLfMaxQuery;
      const int c = (i % (kLfD / 4)) * 4;
      kvr[j] = row < p.nq ? __ldg(reinterpret_cast<const float4*>(
                                kv + (static_cast<std::int64_t>(part) * p.nq + row) * kLfD + c))
                          : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
    __syncthreads();  // sX complete (previous epilogue); sA free
    lf_rmsnorm(sX, lw.attn_norm, p.eps, sA);
    lf_zero(acc);
    lf_stream_gemm<kLfD / kLfKs, kLfLda, DIn, DFf>(p, s, ring, sA, acc);
    lf_for_acc(acc, [&](int r, int c, float v) { sQ[r * kLfLda + c] = lf_tf32(v); });
#pragma unroll
    for (int j = 0; j < 2 * kLfMaxQuery * kLfD / 4 / kLfThreads; ++j) {
      const int i = tid + j * kLfThreads;
      const int part = i / (kLfMaxQuery * kLfD / 4), row = (i / (kLfD / 4)) % kLfMaxQuery;
      const int c = (i % (kLfD / 4)) * 4;
      const float4 v = kvr[j];
      *reinterpret_cast<float4*>((part == 0 ? sK + row * kLfLda : sV + row * kLfLdb) + c) =
          make_float4(lf_tf32(v.x), lf_tf32(v.y), lf_tf32(v.z), lf_tf32(v.w));
    }
    __syncthreads();
    {
      // Cross-attention on the tensor cores: warp (wm, wn) takes rows wm·32.. of head wn.
      // scores = q_h·k_hᵀ [32 rows × 32 keys], softmax along the row (a row's 32 scores sit in
      // the 4 lanes of a quad), p → sA (the warp's own block), o_h = p·v_h → sA.
      LfAcc sc;
      lf_zero(sc);
      lf_mma_block_bt<kLfDh / 8>(sQ + wn * kLfDh, sK + wn * kLfDh, sc);
#pragma unroll
      for (int mt = 0; mt < 2; ++mt)
#pragma unroll
        for (int hi = 0; hi < 2; ++hi) {
          float mx = -INFINITY;
#pragma unroll
          for (int nt = 0; nt < 4; ++nt)
#pragma unroll
            for (int i = 0; i < 2; ++i) {
              const int key = nt * 8 + 2 * t + i;
              float& v = sc[mt][nt][2 * hi + i];
              v = key < p.nq ? v * p.scale : -INFINITY;
              mx = fmaxf(mx, v);
            }
          mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
          mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
          float sum = 0.0f;
#pragma unroll
          for (int nt = 0; nt < 4; ++nt)
#pragma unroll
            for (int i = 0; i < 2; ++i) {
              const int key = nt * 8 + 2 * t + i;
              float& v = sc[mt][nt][2 * hi + i];
              v = key < p.nq ? expf(v - mx) : 0.0f;
              sum += v;
            }
          sum += __shfl_xor_sync(0xffffffffu, sum, 1);
          sum += __shfl_xor_sync(0xffffffffu, sum, 2);
          const float inv = 1.0f / sum;
          const int r = wm * 32 + mt * 16 + g + 8 * hi;
#pragma unroll
          for (int nt = 0; nt < 4; ++nt)
#pragma unroll
            for (int i = 0; i < 2; ++i)
              sA[r * kLfLda + wn * kLfDh + nt * 8 + 2 * t + i] = lf_tf32(sc[mt][nt][2 * hi + i] * inv);
        }
      __syncwarp();
      lf_zero(sc);
      lf_mma_block<kLfMaxQuery / 8, kLfLda>(sA + wn * kLfDh, sV, sc);
      __syncwarp();
      lf_for_acc(sc, [&](int r, int c, float v) { sA[r * kLfLda + c] = lf_tf32(v); });
    }
    // h = x + o·wo (each element of sX has one owner thread).
    lf_zero(acc);
    lf_stream_gemm<kLfD / kLfKs, kLfLda, DIn, DFf>(p, s, ring, sA, acc);
    lf_for_acc(acc, [&](int r, int c, float v) { sX[r * kLfLda + c] += v; });
    __syncthreads();
    lf_rmsnorm(sX, lw.mlp_norm, p.eps, sA);
    // MLP in chunks of 64 hidden units: [a | b] = hn·[w1 | w3] (warp column wn holds a in its
    // first 16 columns and the matching b in its last 16), g = silu(a)·b into sQ, then
    // out += g·w2 over the chunk's 64 rows of w2. The stage barriers order sQ's reuse.
    LfAcc out;
    lf_zero(out);
#pragma unroll 1
    for (int f0 = 0; f0 < DFf; f0 += kLfChunk) {
      lf_zero(acc);
      lf_stream_gemm<kLfD / kLfKs, kLfLda, DIn, DFf>(p, s, ring, sA, acc);
#pragma unroll
      for (int mt = 0; mt < 2; ++mt)
#pragma unroll
        for (int nt = 0; nt < 2; ++nt)
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            const float a = acc[mt][nt][i], b = acc[mt][nt + 2][i];
            const int r = wm * 32 + mt * 16 + g + ((i >> 1) << 3);
            const int c = wn * 16 + nt * 8 + 2 * t + (i & 1);
            sQ[r * kLfLdg + c] = lf_tf32(a / (1.0f + expf(-a)) * b);
          }
      lf_stream_gemm<kLfChunk / kLfKs, kLfLdg, DIn, DFf>(p, s, ring, sQ, out);
    }
    lf_for_acc(out, [&](int r, int c, float v) { sX[r * kLfLda + c] += v; });
  }
  __syncthreads();
  // Head: scores = tanh(RMSNorm(h)·out_norm · w_out + b_out).
  {
    const float4 gv = __ldg(reinterpret_cast<const float4*>(p.out_norm) + lane);
    const float4 wv = __ldg(reinterpret_cast<const float4*>(p.w_out) + lane);
    const float b_out = __ldg(p.b_out);
    for (int r = warp * (kLfTile / 8); r < (warp + 1) * (kLfTile / 8); ++r) {
      const float4 x = *reinterpret_cast<const float4*>(sX + r * kLfLda + lane * 4);
      const float ss = lf_warp_sum(x.x * x.x + x.y * x.y + x.z * x.z + x.w * x.w);
      const float rs = rsqrtf(ss / static_cast<float>(kLfD) + p.eps);
      const float dot = lf_warp_sum(x.x * rs * gv.x * wv.x + x.y * rs * gv.y * wv.y +
                                    x.z * rs * gv.z * wv.z + x.w * rs * gv.w * wv.w);
      if (lane == 0 && r < rows) p.scores[e0 + r] = tanhf(dot + b_out);
    }
  }
}

}  // namespace mc::cuda::detail
