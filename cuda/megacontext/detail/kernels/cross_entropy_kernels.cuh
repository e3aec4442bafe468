// SPDX-License-Identifier: Apache-2.0
// Kernels of the next-token cross-entropy over the tied unembedding's logits (facade:
// cuda/megacontext/device_cross_entropy.cuh). One block per logits row: a max reduction, then
// Σ exp(l − max) (the log-sum-exp stays finite for any finite logits), with CUB's BlockReduce.
// The mean over counted rows is summed by one block in fp64 in a fixed order (deterministic).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <cub/block/block_reduce.cuh>

#include "megacontext/config.hpp"

namespace mc::cuda::detail {

inline constexpr int kCrossEntropyThreads = 256;
inline constexpr int kCrossEntropyReduceThreads = 1024;

struct CrossEntropyMax {
  __device__ float operator()(float a, float b) const { return a > b ? a : b; }
};

// lse[i] = log Σ_j exp(logits[i, j]); row_loss[i] = lse[i] − logits[i, t_i], 0 when t_i == -1.
__global__ void __launch_bounds__(kCrossEntropyThreads)
    cross_entropy_rows_kernel(const float* logits, const TokenId* targets, std::int64_t vocab,
                              float* lse, float* row_loss) {
  using Reduce = cub::BlockReduce<float, kCrossEntropyThreads>;
  __shared__ typename Reduce::TempStorage temp;
  __shared__ float s_max;
  const std::int64_t row = blockIdx.x;
  const float* l = logits + row * vocab;
  float mx = -INFINITY;
  for (std::int64_t j = threadIdx.x; j < vocab; j += kCrossEntropyThreads) mx = fmaxf(mx, l[j]);
  mx = Reduce(temp).Reduce(mx, CrossEntropyMax{});
  if (threadIdx.x == 0) s_max = mx;
  __syncthreads();
  mx = s_max;
  float sum = 0.0f;
  for (std::int64_t j = threadIdx.x; j < vocab; j += kCrossEntropyThreads) sum += expf(l[j] - mx);
  __syncthreads();  // temp is reused
  sum = Reduce(temp).Sum(sum);
  if (threadIdx.x == 0) {
    const float row_lse = mx + logf(sum);
    lse[row] = row_lse;
    const TokenId t = targets[row];
    row_loss[row] = (t >= 0 && t < vocab) ? row_lse - l[t] : 0.0f;
  }
}

// *loss = Σ row_loss / count, *count = #rows with a target (0 rows: loss 0); one block.
__global__ void __launch_bounds__(kCrossEntropyReduceThreads)
    cross_entropy_mean_kernel(const float* row_loss, const TokenId* targets, std::int64_t n,
                              std::int64_t vocab, float* loss, int* count) {
  using ReduceD = cub::BlockReduce<double, kCrossEntropyReduceThreads>;
  using ReduceI = cub::BlockReduce<int, kCrossEntropyReduceThreads>;
  __shared__ typename ReduceD::TempStorage temp_d;
  __shared__ typename ReduceI::TempStorage temp_i;
  double s = 0.0;
  int c = 0;
  for (std::int64_t i = threadIdx.x; i < n; i += kCrossEntropyReduceThreads) {
    const TokenId t = targets[i];
    if (t >= 0 && t < vocab) {
      s += static_cast<double>(row_loss[i]);
      ++c;
    }
  }
  s = ReduceD(temp_d).Sum(s);
  c = ReduceI(temp_i).Sum(c);
  if (threadIdx.x == 0) {
    *count = c;
    *loss = c > 0 ? static_cast<float>(s / c) : 0.0f;
  }
}

// dlogits[i, j] = (softmax_ij − [j == t_i]) / count, 0 on rows without a target. Each thread
// reads logits[i, j] before writing dlogits[i, j], so dlogits may be logits.
__global__ void __launch_bounds__(kCrossEntropyThreads)
    cross_entropy_backward_kernel(const float* logits, const TokenId* targets, const float* lse,
                                  const int* count, std::int64_t vocab, float scale,
                                  float* dlogits) {
  const std::int64_t row = blockIdx.x;
  const float* l = logits + row * vocab;
  float* dl = dlogits + row * vocab;
  const TokenId t = targets[row];
  const int c = *count;
  if (!(t >= 0 && t < vocab) || c == 0) {
    for (std::int64_t j = threadIdx.x; j < vocab; j += kCrossEntropyThreads) dl[j] = 0.0f;
    return;
  }
  const float inv = scale / static_cast<float>(c);
  const float m = lse[row];
  for (std::int64_t j = threadIdx.x; j < vocab; j += kCrossEntropyThreads) {
    const float p = expf(l[j] - m);
    dl[j] = (j == t ? p - 1.0f : p) * inv;
  }
}

}  // namespace mc::cuda::detail
