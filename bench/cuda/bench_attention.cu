// SPDX-License-Identifier: Apache-2.0
// GPU benchmark of the causal attention core (mc::cuda::attention_forward / attention_backward):
// n = 1k…8k, d_head 64 and 128, batch·heads scaled so every size has the same n·batch·heads
// (64 sequence-heads at 1k, 8 at 8k) and fills the GPU. FLOPs are counted as FlashAttention-2
// does for causal attention: forward 4·n²·d/2 per head, forward + backward 3.5x that (our
// backward recomputes S and dP in the dQ pass, so it executes more than it is credited for).
// Timing: CUDA events around the launches (UseManualTime), L2 flushed before every iteration.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <cstdio>
#include <megacontext/device_attention.cuh>
#include <megacontext/error.cuh>

#include "cuda_bench.cuh"
#include <string>


namespace {

using mc::bench::EventTimer;
using mc::bench::L2Flush;
using mc::bench::Stream;

// Fills p[0, n) with values in [−2, 2) from a hash of the index: finite, not constant, cheap.
__global__ void fill_input(float* p, std::int64_t n, std::uint32_t salt) {
  for (std::int64_t i = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; i < n;
       i += std::int64_t{gridDim.x} * blockDim.x) {
    std::uint32_t h = (static_cast<std::uint32_t>(i) ^ salt) * 2654435761u;
    h ^= h >> 15;
    p[i] = static_cast<float>(h & 0xFFFF) / 16384.0f - 2.0f;
  }
}



// Device buffers of one benchmark: q, k, v, o, d_o, dq, dk, dv, lse and the workspace.
struct Buffers {
  Buffers(std::int64_t batch, std::int64_t n, int heads, int d) {
    const auto x = static_cast<std::size_t>(batch * n * heads * d);
    for (float** p : {&q, &k, &v, &o, &d_o, &dq, &dk, &dv})
      MC_CUDA_TRY(cudaMalloc(p, x * sizeof(float)));
    MC_CUDA_TRY(cudaMalloc(&lse, static_cast<std::size_t>(batch * n * heads) * sizeof(float)));
    ws_bytes = mc::cuda::attention_backward_workspace_bytes(batch, n, heads, d);
    MC_CUDA_TRY(cudaMalloc(&ws, ws_bytes));
    std::uint32_t salt = 1;
    for (float* p : {q, k, v, d_o})
      fill_input<<<1024, 256>>>(p, static_cast<std::int64_t>(x), salt++);
    MC_CUDA_TRY(cudaGetLastError());
    MC_CUDA_TRY(cudaDeviceSynchronize());
  }
  ~Buffers() {
    for (void* p : {static_cast<void*>(q), static_cast<void*>(k), static_cast<void*>(v),
                    static_cast<void*>(o), static_cast<void*>(d_o), static_cast<void*>(dq),
                    static_cast<void*>(dk), static_cast<void*>(dv), static_cast<void*>(lse), ws})
      (void)cudaFree(p);
  }
  Buffers(const Buffers&) = delete;
  Buffers& operator=(const Buffers&) = delete;

  float *q = nullptr, *k = nullptr, *v = nullptr, *o = nullptr, *d_o = nullptr;
  float *dq = nullptr, *dk = nullptr, *dv = nullptr, *lse = nullptr;
  void* ws = nullptr;
  std::size_t ws_bytes = 0;
};

// 64 sequence-heads at n = 1k, halved with every doubling of n (16 heads while possible).
void shape_for(std::int64_t n, std::int64_t& batch, int& heads) {
  const std::int64_t seq_heads = 64 * 1024 / n;
  heads = static_cast<int>(seq_heads >= 16 ? 16 : seq_heads);
  batch = seq_heads / heads;
}

void run(benchmark::State& state, bool with_backward) {
  const std::int64_t n = state.range(0);
  const int d = static_cast<int>(state.range(1));
  std::int64_t batch = 0;
  int heads = 0;
  shape_for(n, batch, heads);
  Buffers buf(batch, n, heads, d);
  L2Flush l2;
  EventTimer timer;
  cudaStream_t stream = nullptr;
  MC_CUDA_TRY(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  double seconds = 0.0;  // the event-timed total, so the rate does not depend on CPU time
  for (auto _ : state) {
    l2.flush(stream);
    timer.start(stream);
    MC_CUDA_TRY(mc::cuda::attention_forward(buf.q, buf.k, buf.v, buf.o, buf.lse, batch, n, heads, d,
                                            stream));
    if (with_backward)
      MC_CUDA_TRY(mc::cuda::attention_backward(buf.q, buf.k, buf.v, buf.o, buf.lse, buf.d_o, buf.dq,
                                               buf.dk, buf.dv, buf.ws, buf.ws_bytes, batch, n,
                                               heads, d, stream));
    const double t = timer.stop(stream);
    seconds += t;
    state.SetIterationTime(t);
  }
  MC_CUDA_TRY(cudaStreamDestroy(stream));
  const double fwd_flops = 4.0 * static_cast<double>(n) * static_cast<double>(n) * d / 2.0 *
                           static_cast<double>(batch * heads);
  const double flops = with_backward ? 3.5 * fwd_flops : fwd_flops;
  state.counters["TFLOP/s"] =
      seconds > 0.0 ? flops * static_cast<double>(state.iterations()) / seconds * 1e-12 : 0.0;
  state.counters["n"] = static_cast<double>(n);
  state.counters["d_head"] = d;
  state.counters["batch"] = static_cast<double>(batch);
  state.counters["heads"] = heads;
}

void BM_Attention_Forward(benchmark::State& state) { run(state, false); }
void BM_Attention_ForwardBackward(benchmark::State& state) { run(state, true); }

void sizes(benchmark::internal::Benchmark* b) {
  for (const int d : {64, 128})
    for (const int n : {1024, 2048, 4096, 8192}) b->Args({n, d});
}

BENCHMARK(BM_Attention_Forward)
    ->Apply(sizes)
    ->UseManualTime()
    ->MinTime(0.2)
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Attention_ForwardBackward)
    ->Apply(sizes)
    ->UseManualTime()
    ->MinTime(0.2)
    ->Unit(benchmark::kMillisecond);

}  // namespace

MC_CUDA_BENCHMARK_MAIN("bench_attention")
