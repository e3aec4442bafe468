// SPDX-License-Identifier: Apache-2.0
// GPU benchmark of K-block mean pooling (d = 256, K = 32, 1M–16M tokens): mc::cuda::mean_pool
// against its baseline in this file, CUB's DeviceSegmentedReduce::Sum over the K values of each
// output element (a gather iterator makes each segment contiguous; the division by K is fused
// into the output iterator). DESIGN.md measured CUB at ~126 GB/s for 32-wide segments on the
// H100; device-to-device copy runs at 2.84 TB/s. Timing: CUDA events around each launch
// (UseManualTime), L2 flushed before every iteration. Bytes = input read + output written.
#include <benchmark/benchmark.h>

#include <thrust/iterator/counting_iterator.h>
#include <thrust/iterator/transform_iterator.h>
#include <thrust/iterator/transform_output_iterator.h>
#include <cub/device/device_segmented_reduce.cuh>
#include <megacontext/device_gist_pool.cuh>
#include <megacontext/error.cuh>

#include "cuda_bench.cuh"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>


namespace {

using mc::bench::EventTimer;
using mc::bench::L2Flush;
using mc::bench::Stream;

constexpr int kK = 32;
constexpr std::int64_t kD = 256;

// Fills p[0, n) with values in [−2, 2) from a hash of the index: finite, not constant, cheap.
__global__ void fill_input(float* p, std::int64_t n) {
  for (std::int64_t i = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; i < n;
       i += std::int64_t{gridDim.x} * blockDim.x) {
    std::uint32_t h = static_cast<std::uint32_t>(i) * 2654435761u;
    h ^= h >> 15;
    p[i] = static_cast<float>(h & 0xFFFF) / 16384.0f - 2.0f;
  }
}

// Device buffers shared by every benchmark of one size (allocating 16 GiB per run would dominate
// the wall time); grown on demand and filled once with finite values.
class Arena {
 public:
  static Arena& get() {
    static Arena arena;
    return arena;
  }
  ~Arena() { release(); }

  /// Input [tokens, kD] and two outputs [tokens/kK, kD] for `tokens` tokens.
  void reserve(std::int64_t tokens) {
    if (tokens == tokens_) return;
    release();
    const std::size_t in_bytes = static_cast<std::size_t>(tokens * kD) * sizeof(float);
    const std::size_t out_bytes = in_bytes / kK;
    MC_CUDA_TRY(cudaMalloc(&in, in_bytes));
    MC_CUDA_TRY(cudaMalloc(&out, out_bytes));
    MC_CUDA_TRY(cudaMalloc(&out_check, out_bytes));
    fill_input<<<4096, 256>>>(in, tokens * kD);
    MC_CUDA_TRY(cudaGetLastError());
    MC_CUDA_TRY(cudaDeviceSynchronize());
    tokens_ = tokens;
  }

  float* in = nullptr;
  float* out = nullptr;
  float* out_check = nullptr;

 private:
  void release() {
    (void)cudaFree(in);
    (void)cudaFree(out);
    (void)cudaFree(out_check);
    in = out = out_check = nullptr;
    tokens_ = 0;
  }
  std::int64_t tokens_ = 0;
};



// Baseline plumbing: segment s = b·d + c holds the K values in[(b·K + k)·d + c], k < K.
struct ColumnGather {
  const float* in;
  std::int64_t d;
  int k;
  __host__ __device__ float operator()(std::int64_t i) const {
    const std::int64_t s = i / k;
    const std::int64_t b = s / d;
    const std::int64_t c = s - b * d;
    return in[(b * k + (i - s * k)) * d + c];
  }
};
struct TimesK {
  std::int64_t k;
  __host__ __device__ std::int64_t operator()(std::int64_t s) const { return s * k; }
};
struct DivideBy {
  float k;
  __host__ __device__ float operator()(float sum) const { return sum / k; }
};

// Enqueues the CUB baseline: d_out [num_blocks, kD] = mean of each block of kK rows of d_in.
cudaError_t cub_mean_pool(void* d_temp, std::size_t& temp_bytes, const float* d_in,
                          std::int64_t num_blocks, float* d_out, cudaStream_t stream) {
  const thrust::counting_iterator<std::int64_t> counting(0);
  const auto values = thrust::make_transform_iterator(counting, ColumnGather{d_in, kD, kK});
  const auto begins = thrust::make_transform_iterator(counting, TimesK{kK});
  const auto out = thrust::make_transform_output_iterator(d_out, DivideBy{float(kK)});
  return cub::DeviceSegmentedReduce::Sum(d_temp, temp_bytes, values, out, num_blocks * kD, begins,
                                         begins + 1, stream);
}

void set_counters(benchmark::State& state, std::int64_t tokens) {
  const std::int64_t bytes =
      (tokens * kD + tokens / kK * kD) * static_cast<std::int64_t>(sizeof(float));
  state.SetBytesProcessed(state.iterations() * bytes);
  state.SetItemsProcessed(state.iterations() * tokens);
  state.counters["tokens"] = static_cast<double>(tokens);
  state.counters["d"] = static_cast<double>(kD);
  state.counters["K"] = kK;
}

// Ours: one thread per float4 column slice of an output row, K loads down the column.
void BM_GistPool_MeanPool(benchmark::State& state) {
  const std::int64_t tokens = state.range(0);
  const std::int64_t num_blocks = tokens / kK;
  Arena& a = Arena::get();
  a.reserve(tokens);
  L2Flush l2;
  EventTimer timer;
  cudaStream_t stream = nullptr;
  MC_CUDA_TRY(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  for (auto _ : state) {
    l2.flush(stream);
    timer.start(stream);
    MC_CUDA_TRY(mc::cuda::mean_pool(a.in, num_blocks, kK, kD, a.out, stream));
    state.SetIterationTime(timer.stop(stream));
  }
  benchmark::DoNotOptimize(a.out);
  MC_CUDA_TRY(cudaStreamDestroy(stream));
  set_counters(state, tokens);
}

// Baseline: CUB segmented reduce over 32-wide segments, /K fused into the output iterator.
// Also checks that it agrees with ours, so the comparison is between equal results.
void BM_GistPool_CubSegmentedReduce(benchmark::State& state) {
  const std::int64_t tokens = state.range(0);
  const std::int64_t num_blocks = tokens / kK;
  Arena& a = Arena::get();
  a.reserve(tokens);
  L2Flush l2;
  EventTimer timer;
  cudaStream_t stream = nullptr;
  MC_CUDA_TRY(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  std::size_t temp_bytes = 0;
  MC_CUDA_TRY(cub_mean_pool(nullptr, temp_bytes, a.in, num_blocks, a.out, stream));
  void* d_temp = nullptr;
  MC_CUDA_TRY(cudaMalloc(&d_temp, temp_bytes > 0 ? temp_bytes : 1));
  for (auto _ : state) {
    l2.flush(stream);
    timer.start(stream);
    MC_CUDA_TRY(cub_mean_pool(d_temp, temp_bytes, a.in, num_blocks, a.out, stream));
    state.SetIterationTime(timer.stop(stream));
  }
  // Same answer as ours on a sample at both ends of the output.
  MC_CUDA_TRY(mc::cuda::mean_pool(a.in, num_blocks, kK, kD, a.out_check, stream));
  MC_CUDA_TRY(cudaStreamSynchronize(stream));
  const std::size_t n_out = static_cast<std::size_t>(num_blocks * kD);
  const std::size_t sample = std::min<std::size_t>(n_out / 2, 1 << 16);
  for (const std::size_t at : {std::size_t{0}, n_out - sample}) {
    std::vector<float> cub(sample), ours(sample);
    MC_CUDA_TRY(cudaMemcpy(cub.data(), a.out + at, sample * sizeof(float), cudaMemcpyDeviceToHost));
    MC_CUDA_TRY(
        cudaMemcpy(ours.data(), a.out_check + at, sample * sizeof(float), cudaMemcpyDeviceToHost));
    for (std::size_t i = 0; i < sample; ++i)
      if (!(std::abs(cub[i] - ours[i]) <= 1e-5f + 1e-5f * std::abs(ours[i]))) {
        state.SkipWithError(("baseline and mean_pool disagree at output " + std::to_string(at + i) +
                             ": " + std::to_string(cub[i]) + " vs " + std::to_string(ours[i]))
                                .c_str());
        break;
      }
  }
  MC_CUDA_TRY(cudaFree(d_temp));
  MC_CUDA_TRY(cudaStreamDestroy(stream));
  set_counters(state, tokens);
}

// 1M, 4M and 16M tokens (16M tokens at d = 256 is 16 GiB of fp32 input).
BENCHMARK(BM_GistPool_MeanPool)
    ->RangeMultiplier(4)
    ->Range(1 << 20, 1 << 24)
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_GistPool_CubSegmentedReduce)
    ->RangeMultiplier(4)
    ->Range(1 << 20, 1 << 24)
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);

}  // namespace

MC_CUDA_BENCHMARK_MAIN("bench_gist_pool")
