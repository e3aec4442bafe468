// SPDX-License-Identifier: Apache-2.0
// Kernels of K-block mean pooling (facade: cuda/megacontext/device_gist_pool.cuh), the
// parameter-free gist: each output row is the mean of K consecutive input rows. Sits between the
// tree (blocks of K children) and the gist levels above them.
//
// Why this shape: CUB's segmented reduce runs 32-row segments at ~126 GB/s on an H100 (one
// thread block per segment, mostly idle). Here a thread owns one output vector (1 or 4 floats,
// i.e. a column slice of one output row) and sums its K inputs straight down the column, so:
// a warp's loads cover 32 consecutive vectors of one input row (coalesced, 512 B with float4);
// no shuffles or shared memory are needed; the K loads of a thread are independent and
// unrolled, which keeps many requests in flight; and every output element is summed in row
// order k = 0..K-1 with one fp32 accumulator, so small-integer inputs give bit-exact results.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

namespace mc::cuda::detail {

/// What the mean-pool kernel reads and writes (row-major fp32, no aliasing).
struct MeanPoolParams {
  const float* in;          ///< [num_blocks * K, d]
  float* out;               ///< [num_blocks, d]
  std::int64_t num_blocks;  ///< output rows
  std::int64_t d;           ///< columns
  int K;                    ///< input rows per output row, >= 1
};
static_assert(std::is_trivially_copyable_v<MeanPoolParams>);

/// Threads per block of the mean-pool kernel.
inline constexpr int kMeanPoolThreads = 256;
/// Loads a thread issues back to back before summing them (memory-level parallelism).
inline constexpr int kLoadBatch = 8;

/// The load type of a Vec-wide column slice.
template <int Vec>
struct MeanPoolVector;
template <>
struct MeanPoolVector<1> {
  using type = float;
  __device__ static float zero() { return 0.0f; }
  __device__ static void add(float& acc, float v) { acc += v; }
  __device__ static float div(float acc, float k) { return acc / k; }
};
template <>
struct MeanPoolVector<4> {
  using type = float4;
  __device__ static float4 zero() { return make_float4(0.0f, 0.0f, 0.0f, 0.0f); }
  __device__ static void add(float4& acc, float4 v) {
    acc.x += v.x;
    acc.y += v.y;
    acc.z += v.z;
    acc.w += v.w;
  }
  __device__ static float4 div(float4 acc, float k) {
    return make_float4(acc.x / k, acc.y / k, acc.z / k, acc.w / k);
  }
};

/// out[b, c] = (Σ_{k<K} in[b·K + k, c]) / K for Vec consecutive columns c per thread. Vec = 4
/// needs d % 4 == 0 and 16-byte aligned buffers. KStatic > 0 fixes K at compile time (full
/// unroll); KStatic = 0 reads K from the params. Grid-stride over num_blocks · d / Vec vectors.
template <int Vec, int KStatic>
__global__ void __launch_bounds__(kMeanPoolThreads) mean_pool_kernel(MeanPoolParams p) {
  using Ops = MeanPoolVector<Vec>;
  using V = typename Ops::type;
  const int K = KStatic > 0 ? KStatic : p.K;
  const std::int64_t cols = p.d / Vec;
  const std::int64_t total = p.num_blocks * cols;
  const V* __restrict__ in = reinterpret_cast<const V*>(p.in);
  V* __restrict__ out = reinterpret_cast<V*>(p.out);
  // Division (correctly rounded) rather than a reciprocal multiply: one rounding, so integer
  // sums give exactly the fp64 reference's result for every K, not only powers of two.
  const float k_float = static_cast<float>(K);
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += stride) {
    const std::int64_t b = i / cols;
    const std::int64_t c = i - b * cols;
    const V* src = in + b * K * cols + c;
    // Loads go out in batches of kLoadBatch before their adds, so each thread keeps that many
    // requests in flight (__ldcs is volatile asm, which the compiler does not reorder); the adds
    // stay in row order.
    V acc = Ops::zero();
    int k = 0;
    if constexpr (KStatic > 0) {
#pragma unroll
      for (; k + kLoadBatch <= KStatic; k += kLoadBatch) {
        V v[kLoadBatch];
#pragma unroll
        for (int u = 0; u < kLoadBatch; ++u) v[u] = __ldcs(src + (k + u) * cols);
#pragma unroll
        for (int u = 0; u < kLoadBatch; ++u) Ops::add(acc, v[u]);
      }
    } else {
      for (; k + kLoadBatch <= K; k += kLoadBatch) {
        V v[kLoadBatch];
#pragma unroll
        for (int u = 0; u < kLoadBatch; ++u) v[u] = __ldcs(src + (k + u) * cols);
#pragma unroll
        for (int u = 0; u < kLoadBatch; ++u) Ops::add(acc, v[u]);
      }
    }
    for (; k < K; ++k) Ops::add(acc, __ldcs(src + k * cols));
    out[i] = Ops::div(acc, k_float);
  }
}

}  // namespace mc::cuda::detail
