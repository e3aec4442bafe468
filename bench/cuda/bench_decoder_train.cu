// SPDX-License-Identifier: Apache-2.0
// GPU benchmark of one full training step of the reference decoder (mc::cuda::DeviceLlama,
// cuda/megacontext/device_llama.cuh): forward + backward + clipped AdamW, replayed as one CUDA
// graph, at the size the base-model issue trains (d 512, 8 layers, 8 heads of 64, d_ff 1376,
// vocab 8192, batch 16 × 1024 tokens) and a smaller one. Baseline in the same run: a cuBLAS
// 4096³ GEMM in the step's precision (TF32 on fp32 storage), plus native BF16 and exact fp32,
// so MFU is a ratio of two figures measured side by side on the same GPU.
//
// FLOPs per step = 6·P·tokens + 6·L·T·d·tokens: P = all weights (the tied embedding counted once,
// as the unembedding GEMM; the gather is free), and the attention term is PaLM's 12·L·T·d per
// token halved for the causal mask (forward q·kᵀ and p·v: 2·T·d per token per layer, backward
// twice that). RoPE, norms, SwiGLU, softmax and the optimiser are not counted. Timing: CUDA events
// around each graph replay (UseManualTime).
#include <benchmark/benchmark.h>

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <megacontext/device_gemm.cuh>
#include <megacontext/device_llama.cuh>
#include <megacontext/error.cuh>
#include <megacontext/reference/llama.hpp>

#include "cuda_bench.cuh"

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <vector>


namespace {

using mc::bench::EventTimer;
using mc::bench::L2Flush;
using mc::bench::Stream;

// Peak GEMM throughput measured by the baseline benchmarks (TFLOP/s), for the MFU counters.
double g_peak_tf32 = 0.0;
double g_peak_bf16 = 0.0;


__global__ void fill_uniform(float* p, std::int64_t n, float scale) {
  for (std::int64_t i = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; i < n;
       i += std::int64_t{gridDim.x} * blockDim.x) {
    std::uint32_t h = static_cast<std::uint32_t>(i) * 2654435761u;
    h ^= h >> 15;
    p[i] = (static_cast<float>(h & 0xFFFF) / 32768.0f - 1.0f) * scale;
  }
}

__global__ void to_bf16(const float* in, __nv_bfloat16* out, std::int64_t n) {
  for (std::int64_t i = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; i < n;
       i += std::int64_t{gridDim.x} * blockDim.x)
    out[i] = __float2bfloat16(in[i]);
}

// ---- Baseline: cuBLAS 4096³ in the step's precision (fp32 storage, TF32 or exact) and native BF16.
void BM_CublasGemm4096(benchmark::State& state) {
  const int mode = static_cast<int>(state.range(0));  // 0 tf32, 1 fp32, 2 bf16 storage
  const std::int64_t n = 4096;
  float *a = nullptr, *b = nullptr, *c = nullptr;
  MC_CUDA_TRY(cudaMalloc(&a, n * n * 4));
  MC_CUDA_TRY(cudaMalloc(&b, n * n * 4));
  MC_CUDA_TRY(cudaMalloc(&c, n * n * 4));
  fill_uniform<<<4096, 256>>>(a, n * n, 1.0f);
  fill_uniform<<<4096, 256>>>(b, n * n, 1.0f);
  __nv_bfloat16 *ah = nullptr, *bh = nullptr, *ch = nullptr;
  if (mode == 2) {
    MC_CUDA_TRY(cudaMalloc(&ah, n * n * 2));
    MC_CUDA_TRY(cudaMalloc(&bh, n * n * 2));
    MC_CUDA_TRY(cudaMalloc(&ch, n * n * 2));
    to_bf16<<<4096, 256>>>(a, ah, n * n);
    to_bf16<<<4096, 256>>>(b, bh, n * n);
  }
  MC_CUDA_TRY(cudaDeviceSynchronize());
  mc::cuda::CublasHandle handle;
  cudaStream_t s = nullptr;
  MC_CUDA_TRY(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  handle.set_stream(s);
  const float one = 1.0f, zero = 0.0f;
  const int ni = static_cast<int>(n);
  auto run = [&] {
    if (mode == 2) {
      mc::cuda::detail::check_cublas(
          cublasGemmEx(handle.get(), CUBLAS_OP_N, CUBLAS_OP_N, ni, ni, ni, &one, bh, CUDA_R_16BF, ni,
                       ah, CUDA_R_16BF, ni, &zero, ch, CUDA_R_16BF, ni, CUBLAS_COMPUTE_32F,
                       CUBLAS_GEMM_DEFAULT),
          "cublasGemmEx(bf16)");
    } else {
      mc::cuda::gemm(handle, false, false, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n,
                     mode == 0 ? mc::cuda::GemmMath::kTf32 : mc::cuda::GemmMath::kFp32, s);
    }
  };
  for (int i = 0; i < 3; ++i) run();
  EventTimer ev;
  double total = 0;
  for (auto _ : state) {
    ev.start(s);
    run();
    const double t = ev.stop(s);
    state.SetIterationTime(t);
    total += t;
  }
  const double tflops = 2.0 * n * n * n * static_cast<double>(state.iterations()) / total / 1e12;
  state.counters["TFLOP/s"] = tflops;
  if (mode == 0) g_peak_tf32 = tflops;
  if (mode == 2) g_peak_bf16 = tflops;
  state.SetLabel(mode == 0 ? "fp32 storage, TF32 tensor cores" : mode == 1 ? "fp32 storage, exact fp32" : "bf16 storage, fp32 accumulate");
  (void)cudaStreamDestroy(s);
  for (void* p : {static_cast<void*>(a), static_cast<void*>(b), static_cast<void*>(c),
                  static_cast<void*>(ah), static_cast<void*>(bh), static_cast<void*>(ch)})
    (void)cudaFree(p);
}

// ---- The training step.
struct StepConfig {
  std::int64_t d, layers, heads, d_ff, vocab, batch, seq_len;
};

void BM_DecoderTrainStep(benchmark::State& state) {
  const StepConfig c = state.range(0) == 0 ? StepConfig{512, 8, 8, 1376, 8192, 16, 1024}
                                           : StepConfig{384, 6, 6, 1024, 8192, 8, 1024};
  const auto math = static_cast<mc::cuda::GemmMath>(state.range(1));
  mc::reference::LlamaOptions o;
  o.d_model = c.d;
  o.n_layers = c.layers;
  o.n_heads = c.heads;
  o.d_ff = c.d_ff;
  o.n_vocab = c.vocab;
  const auto weights = mc::reference::LlamaWeights<float>::random(o, 1);
  mc::cuda::DeviceLlamaOptions t;
  t.math = math;
  t.schedule = {3e-4, 3e-4, 0, 0};
  mc::cuda::DeviceLlama model(o, weights, {c.batch, c.seq_len}, t);
  const std::int64_t m = c.batch * c.seq_len;
  std::mt19937_64 gen(2);
  std::uniform_int_distribution<mc::TokenId> pick(0, static_cast<mc::TokenId>(c.vocab - 1));
  std::vector<mc::TokenId> window(static_cast<std::size_t>(m + 1));
  for (auto& x : window) x = pick(gen);
  cudaStream_t s = nullptr;
  MC_CUDA_TRY(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  model.set_batch(window.data(), window.data() + 1, s);

  // One step per phase, timed separately (stream launches), then warm-up of the graph.
  EventTimer ev;
  ev.start(s);
  model.forward(s);
  const double t_fwd = ev.stop(s);
  const float loss0 = model.loss(s);
  ev.start(s);
  model.backward(s);
  const double t_bwd = ev.stop(s);
  ev.start(s);
  model.step(s);
  const double t_opt = ev.stop(s);
  for (int i = 0; i < 2; ++i) model.train_step_graph(s);
  MC_CUDA_TRY(cudaStreamSynchronize(s));

  double total = 0;
  for (auto _ : state) {
    ev.start(s);
    model.train_step_graph(s);
    const double dt = ev.stop(s);
    state.SetIterationTime(dt);
    total += dt;
  }
  const float loss = model.loss(s);
  if (!std::isfinite(loss)) state.SkipWithError("non-finite loss");
  const double step_s = total / static_cast<double>(state.iterations());
  const double tokens = static_cast<double>(m);
  const double params = static_cast<double>(model.num_parameters());
  const double flops = 6.0 * params * tokens +
                       6.0 * static_cast<double>(c.layers * c.seq_len * c.d) * tokens;
  const double tflops = flops / step_s / 1e12;
  state.counters["params_M"] = params / 1e6;
  state.counters["tokens/s"] = tokens / step_s;
  state.counters["TFLOP/s"] = tflops;
  state.counters["MFU_vs_tf32_gemm"] = g_peak_tf32 > 0 ? tflops / g_peak_tf32 : 0.0;
  state.counters["MFU_vs_bf16_gemm"] = g_peak_bf16 > 0 ? tflops / g_peak_bf16 : 0.0;
  state.counters["fwd_ms"] = t_fwd * 1e3;
  state.counters["bwd_ms"] = t_bwd * 1e3;
  state.counters["adamw_ms"] = t_opt * 1e3;
  state.counters["loss_first"] = loss0;
  state.counters["loss_last"] = loss;
  state.counters["device_GiB"] = static_cast<double>(model.device_bytes()) / (1 << 30);
  state.SetLabel(std::string("d") + std::to_string(c.d) + " L" + std::to_string(c.layers) + " H" +
                 std::to_string(c.heads) + " ff" + std::to_string(c.d_ff) + " V" +
                 std::to_string(c.vocab) + " B" + std::to_string(c.batch) + "xT" +
                 std::to_string(c.seq_len) + " " + mc::cuda::to_string(math));
  (void)cudaStreamDestroy(s);
}

}  // namespace

BENCHMARK(BM_CublasGemm4096)->Arg(0)->Arg(1)->Arg(2)->UseManualTime()->Iterations(20)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_DecoderTrainStep)
    ->Args({0, static_cast<int>(mc::cuda::GemmMath::kTf32)})
    ->Args({0, static_cast<int>(mc::cuda::GemmMath::kBf16)})
    ->Args({1, static_cast<int>(mc::cuda::GemmMath::kTf32)})
    ->UseManualTime()
    ->Iterations(10)
    ->Unit(benchmark::kMillisecond);

MC_CUDA_BENCHMARK_MAIN("bench_decoder_train")
