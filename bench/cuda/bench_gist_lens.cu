// SPDX-License-Identifier: Apache-2.0
// GPU benchmarks of the two learned nets (cuda/megacontext/device_gist_net.cuh,
// device_lens_net.cuh), against the design targets:
//   - GistNet gisting of a 1M-token document (2^20 tokens, d 256, K 32): LOD1 (32768 gists) +
//     LOD2 (1024 gists) through build_tree_gists + GistNetLevels, inference mode, default
//     GistNet (2 layers, 4 heads of 32, d_ff 128, mean + MLP head); target >= 50M tokens/s.
//     Baseline in the same file: the same document gisted by mean pooling (MeanPoolLevels).
//   - LensNet scoring of W = 8192 entries with a 32-row query (default LensNet: D 128, 3 layers,
//     4 heads, d_ff 256), inference mode; target <= 0.08 ms. Launched directly on a stream and
//     as one CUDA-graph replay (the runtime's way: the forward is ~40 launches). Baseline: one
//     cuBLAS GEMM of the same W x d_in input by w_in, the first of its projections.
//   - For information: GistNet and LensNet training steps (forward + backward).
// Every GEMM mode is a run-time argument (0 fp32, 1 tf32, 2 bf16 inputs; fp32 storage).
// Timing: CUDA events around each iteration (UseManualTime); the L2 cache is flushed before each
// LensNet iteration (its 8 MB of inputs and 2 MB of weights would otherwise stay resident); the
// 1 GB gisting input cannot fit in L2, so it is not flushed.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <cstdio>
#include <megacontext/config.hpp>
#include <megacontext/device_gemm.cuh>
#include <megacontext/device_gist_net.cuh>
#include <megacontext/device_lens_net.cuh>
#include <megacontext/device_tree_gisting.cuh>
#include <megacontext/error.cuh>
#include <megacontext/gist_net.hpp>
#include <megacontext/lens_net.hpp>

#include "cuda_bench.cuh"
#include <string>


namespace {

using mc::bench::EventTimer;
using mc::bench::L2Flush;
using mc::bench::Stream;

using mc::cuda::GemmMath;
using C2 = mc::Config<32, 2>;  // LOD1 + LOD2
constexpr std::int64_t kTokens = std::int64_t{1} << 20;
constexpr std::int64_t kDim = 256;
constexpr std::int64_t kEntries = 8192;

// Fills p[0, n) with values in [−2, 2) from a hash of the index: finite, not constant, cheap.
__global__ void fill_input(float* p, std::int64_t n, std::uint32_t salt) {
  for (std::int64_t i = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; i < n;
       i += std::int64_t{gridDim.x} * blockDim.x) {
    std::uint32_t h = (static_cast<std::uint32_t>(i) ^ salt) * 2654435761u;
    h ^= h >> 15;
    p[i] = static_cast<float>(h & 0xFFFF) / 16384.0f - 2.0f;
  }
}

class DeviceBuffer {
 public:
  explicit DeviceBuffer(std::int64_t floats, std::uint32_t salt = 0) {
    MC_CUDA_TRY(cudaMalloc(&p_, static_cast<std::size_t>(floats) * sizeof(float)));
    if (salt != 0) {
      fill_input<<<1024, 256>>>(p_, floats, salt);
      MC_CUDA_TRY(cudaGetLastError());
    }
    MC_CUDA_TRY(cudaDeviceSynchronize());
  }
  ~DeviceBuffer() { (void)cudaFree(p_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  float* get() const { return p_; }

 private:
  float* p_ = nullptr;
};




// Captures enqueue(stream) once into a graph; launch() replays it.
class Graph {
 public:
  template <class F>
  Graph(cudaStream_t s, F&& enqueue) {
    cudaGraph_t g = nullptr;
    MC_CUDA_TRY(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
    const cudaError_t st = enqueue(s);
    MC_CUDA_TRY(cudaStreamEndCapture(s, &g));
    MC_CUDA_TRY(st);
    MC_CUDA_TRY(cudaGraphInstantiate(&exec_, g, 0));
    MC_CUDA_TRY(cudaGraphDestroy(g));
  }
  ~Graph() { (void)cudaGraphExecDestroy(exec_); }
  void launch(cudaStream_t s) { MC_CUDA_TRY(cudaGraphLaunch(exec_, s)); }

 private:
  cudaGraphExec_t exec_ = nullptr;
};

// Times `run(stream)` per iteration (after one untimed warm-up) with optional L2 flushes.
template <class F>
double time_loop(benchmark::State& state, cudaStream_t s, bool flush, F&& run) {
  L2Flush l2;
  EventTimer timer;
  run(s);
  MC_CUDA_TRY(cudaStreamSynchronize(s));
  double seconds = 0.0;
  for (auto _ : state) {
    if (flush) l2.flush(s);
    timer.start(s);
    run(s);
    const double t = timer.stop(s);
    seconds += t;
    state.SetIterationTime(t);
  }
  return seconds;
}

GemmMath math_arg(std::int64_t v) { return static_cast<GemmMath>(v); }

// 1M tokens → LOD1 + LOD2 with GistNet; range(0) = GEMM mode, range(1) = 1 for a graph replay.
void BM_GistNet_Gisting(benchmark::State& state) {
  const GemmMath math = math_arg(state.range(0));
  const bool graph = state.range(1) != 0;
  mc::GistNetOptions o;  // the default GistNet at d = 256
  mc::cuda::DeviceGistNetOptions dev;
  dev.max_blocks = kTokens / C2::K;
  dev.training = false;
  dev.math = math;
  mc::cuda::DeviceGistNet<C2> net(o, mc::GistNetWeights<float>::random(o, 1), dev);
  const mc::cuda::TreeGistLayout<C2> layout(kTokens);
  DeviceBuffer emb(kTokens * kDim, 11), gists(layout.total_rows() * kDim);
  Stream stream;
  auto enqueue = [&](cudaStream_t s) {
    return mc::cuda::build_tree_gists<C2>(emb.get(), kTokens, kDim, gists.get(),
                                          mc::cuda::GistNetLevels<C2>{&net}, s);
  };
  double seconds = 0.0;
  if (graph) {
    Graph g(stream.get(), enqueue);
    seconds = time_loop(state, stream.get(), false, [&](cudaStream_t s) { g.launch(s); });
  } else {
    seconds = time_loop(state, stream.get(), false,
                        [&](cudaStream_t s) { MC_CUDA_TRY(enqueue(s)); });
  }
  state.SetItemsProcessed(state.iterations() * kTokens);
  state.counters["Mtokens/s"] =
      seconds > 0 ? static_cast<double>(kTokens) * static_cast<double>(state.iterations()) /
                        seconds * 1e-6
                  : 0.0;
  state.counters["gists"] = static_cast<double>(layout.total_rows());
  state.counters["device_MiB"] = static_cast<double>(net.device_bytes()) / (1 << 20);
  state.SetLabel(std::string(mc::cuda::to_string(math)) + (graph ? " graph" : " stream"));
}

// Baseline: the same document gisted by the mean of the K children at every level.
void BM_MeanPool_Gisting(benchmark::State& state) {
  const mc::cuda::TreeGistLayout<C2> layout(kTokens);
  DeviceBuffer emb(kTokens * kDim, 11), gists(layout.total_rows() * kDim);
  Stream stream;
  const double seconds = time_loop(state, stream.get(), false, [&](cudaStream_t s) {
    MC_CUDA_TRY(mc::cuda::build_tree_gists<C2>(emb.get(), kTokens, kDim, gists.get(), s));
  });
  state.SetItemsProcessed(state.iterations() * kTokens);
  state.counters["Mtokens/s"] =
      seconds > 0 ? static_cast<double>(kTokens) * static_cast<double>(state.iterations()) /
                        seconds * 1e-6
                  : 0.0;
}

// GistNet training step (forward + backward to weights and children) over range(1) blocks.
void BM_GistNet_TrainStep(benchmark::State& state) {
  const GemmMath math = math_arg(state.range(0));
  const std::int64_t n = state.range(1);
  mc::GistNetOptions o;
  mc::cuda::DeviceGistNetOptions dev;
  dev.max_blocks = n;
  dev.math = math;
  mc::cuda::DeviceGistNet<C2> net(o, mc::GistNetWeights<float>::random(o, 1), dev);
  DeviceBuffer in(n * C2::K * kDim, 12), out(n * kDim), dg(n * kDim, 13), din(n * C2::K * kDim);
  Stream stream;
  Graph g(stream.get(), [&](cudaStream_t s) {
    MC_CUDA_RETURN_IF_ERROR(net.forward(1, in.get(), n, out.get(), s));
    return net.backward(dg.get(), n, din.get(), false, s);
  });
  const double seconds =
      time_loop(state, stream.get(), false, [&](cudaStream_t s) { g.launch(s); });
  state.SetItemsProcessed(state.iterations() * n * C2::K);
  state.counters["Mtokens/s"] =
      seconds > 0 ? static_cast<double>(n * C2::K) * static_cast<double>(state.iterations()) /
                        seconds * 1e-6
                  : 0.0;
  state.SetLabel(mc::cuda::to_string(math));
}

struct LensInputs {
  mc::LensNetOptions o;
  DeviceBuffer x{kEntries * 256, 21};
  DeviceBuffer feat{kEntries * 7, 22};
  DeviceBuffer query{32 * 256, 23};
  DeviceBuffer scores{kEntries};
  DeviceBuffer dscores{kEntries, 24};
  DeviceBuffer dx{kEntries * 256};
};

// LensNet scores of W = 8192 entries; range(0) = GEMM mode, range(1) = 1 for a graph replay.
void BM_LensNet_Score(benchmark::State& state) {
  const GemmMath math = math_arg(state.range(0));
  const bool graph = state.range(1) != 0;
  LensInputs in;
  mc::cuda::DeviceLensNetOptions dev;
  dev.max_entries = kEntries;
  dev.training = false;
  dev.math = math;
  mc::cuda::DeviceLensNet net(in.o, mc::LensNetWeights<float>::random(in.o, 2), dev);
  Stream stream;
  auto enqueue = [&](cudaStream_t s) {
    return net.forward(in.x.get(), in.feat.get(), kEntries, in.query.get(), 32, in.scores.get(),
                       s);
  };
  double seconds = 0.0;
  if (graph) {
    Graph g(stream.get(), enqueue);
    seconds = time_loop(state, stream.get(), true, [&](cudaStream_t s) { g.launch(s); });
  } else {
    seconds = time_loop(state, stream.get(), true, [&](cudaStream_t s) { MC_CUDA_TRY(enqueue(s)); });
  }
  state.SetItemsProcessed(state.iterations() * kEntries);
  state.counters["us/call"] =
      seconds > 0 ? seconds / static_cast<double>(state.iterations()) * 1e6 : 0.0;
  state.SetLabel(std::string(mc::cuda::to_string(math)) + (graph ? " graph" : " stream"));
}

// LensNet forward + backward (weights, entries, query) at W = 8192, graph replay.
void BM_LensNet_TrainStep(benchmark::State& state) {
  const GemmMath math = math_arg(state.range(0));
  LensInputs in;
  mc::cuda::DeviceLensNetOptions dev;
  dev.max_entries = kEntries;
  dev.math = math;
  mc::cuda::DeviceLensNet net(in.o, mc::LensNetWeights<float>::random(in.o, 2), dev);
  Stream stream;
  Graph g(stream.get(), [&](cudaStream_t s) {
    MC_CUDA_RETURN_IF_ERROR(net.forward(in.x.get(), in.feat.get(), kEntries, in.query.get(), 32,
                                        in.scores.get(), s));
    return net.backward(in.dscores.get(), in.dx.get(), nullptr, false, s);
  });
  const double seconds = time_loop(state, stream.get(), true, [&](cudaStream_t s) { g.launch(s); });
  state.SetItemsProcessed(state.iterations() * kEntries);
  state.counters["us/call"] =
      seconds > 0 ? seconds / static_cast<double>(state.iterations()) * 1e6 : 0.0;
  state.SetLabel(mc::cuda::to_string(math));
}

// Baseline: one cuBLAS GEMM [8192, 256] x [256, 128], LensNet's input projection alone.
void BM_LensNet_InputGemmBaseline(benchmark::State& state) {
  const GemmMath math = math_arg(state.range(0));
  DeviceBuffer x(kEntries * 256, 31), w(256 * 128, 32), y(kEntries * 128);
  mc::cuda::CublasHandle blas;
  Stream stream;
  const double seconds = time_loop(state, stream.get(), true, [&](cudaStream_t s) {
    mc::cuda::gemm(blas, false, false, kEntries, 128, 256, 1.0f, x.get(), 256, w.get(), 128, 0.0f,
                   y.get(), 128, math, s);
  });
  state.counters["us/call"] =
      seconds > 0 ? seconds / static_cast<double>(state.iterations()) * 1e6 : 0.0;
  state.SetLabel(mc::cuda::to_string(math));
}

BENCHMARK(BM_GistNet_Gisting)
    ->Args({1, 0})
    ->Args({1, 1})
    ->Args({2, 1})
    ->Args({0, 1})
    ->UseManualTime()
    ->MinTime(0.1)
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_MeanPool_Gisting)->UseManualTime()->MinTime(0.1)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_GistNet_TrainStep)
    ->Args({1, 4096})
    ->UseManualTime()
    ->MinTime(0.1)
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_LensNet_Score)
    ->Args({1, 0})
    ->Args({1, 1})
    ->Args({2, 1})
    ->Args({0, 1})
    ->UseManualTime()
    ->MinTime(0.1)
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_LensNet_TrainStep)->Arg(1)->UseManualTime()->MinTime(0.1)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_LensNet_InputGemmBaseline)
    ->Arg(1)
    ->UseManualTime()
    ->MinTime(0.1)
    ->Unit(benchmark::kMicrosecond);

}  // namespace

MC_CUDA_BENCHMARK_MAIN("bench_gist_lens")
