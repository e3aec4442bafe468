// SPDX-License-Identifier: Apache-2.0
// GPU benchmarks of issue 6 (one binary, three parts), each beside its CPU reference:
//  1. focus selection (device_focus_select.cuh), K = 32, Depth = 3, full contexts at W_max =
//     2k / 8k / 32k, both policies: the device step with the copies it needs (scores and entries
//     resident: result + edits back; "upload": entries and scores sent first), against the CPU
//     FocusAllocator::step on the same context (timed with a steady clock on this host).
//  2. pyramid mask -> BSR (device_pyramid_bsr.cuh), N = 4k..256k leaves, r = 32, W = 256,
//     B = 128, strict: the device builder against PyramidMask::bsr on this host.
//  3. batch tree gisting (device_tree_gisting.cuh), LOD1 + LOD2 (Config<32, 2>) of 4M tokens
//     at d = 256 / 512 from embeddings on the device (L2 flushed), tokens/s; and from token ids.
// GPU timing: CUDA events around the enqueued work on a non-blocking stream (UseManualTime).
#include <benchmark/benchmark.h>

#include <megacontext/device_focus_select.cuh>
#include <megacontext/device_pyramid_bsr.cuh>
#include <megacontext/device_tree_gisting.cuh>
#include <megacontext/error.cuh>
#include <megacontext/focus_allocator.hpp>
#include <megacontext/policies/budget_optimal.hpp>
#include <megacontext/policies/greedy_threshold.hpp>
#include <megacontext/pyramid_mask.hpp>

#include "cuda_bench.cuh"

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>


namespace {

using mc::bench::EventTimer;
using mc::bench::L2Flush;
using mc::bench::Stream;



template <class T>
T* device_alloc(std::size_t n) {
  T* p = nullptr;
  MC_CUDA_TRY(cudaMalloc(&p, std::max<std::size_t>(n, 1) * sizeof(T)));
  return p;
}
template <class T>
T* pinned_alloc(std::size_t n) {
  T* p = nullptr;
  MC_CUDA_TRY(cudaMallocHost(&p, std::max<std::size_t>(n, 1) * sizeof(T)));
  return p;
}

// ---------------------------------------------------------------- 1. focus selection
using FocusConfig = mc::Config<32, 3>;

// A full context: 100M tokens of history admitted coarse, then expanded by all-wanting scores
// (a wide-cap, no-cooldown allocator) until w_max is nearly reached; `alloc` (default options)
// is brought past the filler's step number plus the cooldown, as in a running session.
template <class Policy>
struct FocusFixture {
  mc::WorkingContextOptions wo;
  mc::FocusOptions fo;
  mc::WorkingContext<FocusConfig> wc;
  mc::FocusAllocator<FocusConfig, Policy> alloc;
  std::vector<float> scores;

  explicit FocusFixture(std::int64_t w_max)
      : wo{w_max, 4}, wc(wo), alloc(mc::FocusOptions{}, wo) {
    mc::FocusOptions fill;
    fill.max_edits = 4096;
    fill.cooldown_steps = 0;
    mc::FocusAllocator<FocusConfig, mc::GreedyThreshold> filler(fill, wo);
    const std::int64_t history = 100'000'000;
    filler.admit(wc, history);
    for (int i = 0; i < 400 && wc.size() < w_max - 64; ++i)
      filler.step(wc, std::vector<float>(static_cast<std::size_t>(wc.size()), 1.0f));
    // Steps pass (admit of no new tokens changes nothing) until the filler's last edits are out
    // of their cooldown, as they would be a few refocus steps later in a session.
    while (alloc.step_number() < filler.step_number() + alloc.options().cooldown_steps)
      alloc.admit(wc, history);
    // Scores: a smooth field over token positions plus noise (as bench_focus_allocator).
    std::mt19937_64 rng(7);
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    scores.resize(static_cast<std::size_t>(wc.size()));
    for (std::int64_t i = 0; i < wc.size(); ++i) {
      const auto t = static_cast<double>(mc::Lod<FocusConfig>::tokens(wc[i].node()).begin);
      scores[static_cast<std::size_t>(i)] =
          std::clamp(static_cast<float>(std::sin(t * 3e-6)) + 0.3f * u(rng), -1.0f, 1.0f);
    }
  }
};

// state.range(0) = w_max, state.range(1) = 1 to upload entries and scores inside the timing.
template <class Policy>
void BM_FocusSelect_Device(benchmark::State& state) {
  FocusFixture<Policy> f(state.range(0));
  const bool upload = state.range(1) != 0;
  const auto n = static_cast<std::size_t>(f.wc.size());
  const mc::cuda::FocusSelectParams p = mc::cuda::focus_select_params(f.wc, f.alloc);
  Stream stream;
  EventTimer timer;
  auto* d_entries = device_alloc<mc::WcEntry>(n);
  auto* d_scores = device_alloc<float>(n);
  auto* d_edits = device_alloc<mc::FocusEdit>(static_cast<std::size_t>(p.max_edits));
  auto* d_result = device_alloc<mc::cuda::FocusSelectResult>(1);
  auto* h_entries = pinned_alloc<mc::WcEntry>(n);
  auto* h_scores = pinned_alloc<float>(n);
  auto* h_edits = pinned_alloc<mc::FocusEdit>(static_cast<std::size_t>(p.max_edits));
  auto* h_result = pinned_alloc<mc::cuda::FocusSelectResult>(1);
  std::copy(f.wc.entries().begin(), f.wc.entries().end(), h_entries);
  std::copy(f.scores.begin(), f.scores.end(), h_scores);
  MC_CUDA_TRY(cudaMemcpy(d_entries, h_entries, n * sizeof(mc::WcEntry), cudaMemcpyHostToDevice));
  MC_CUDA_TRY(cudaMemcpy(d_scores, h_scores, n * sizeof(float), cudaMemcpyHostToDevice));
  std::size_t temp_bytes = 0;
  MC_CUDA_TRY((mc::cuda::focus_select<FocusConfig, Policy>(nullptr, temp_bytes, nullptr, nullptr,
                                                           p, nullptr, nullptr, stream.get())));
  void* d_temp = device_alloc<unsigned char>(temp_bytes);
  for (auto _ : state) {
    timer.start(stream.get());
    if (upload) {
      MC_CUDA_TRY(cudaMemcpyAsync(d_entries, h_entries, n * sizeof(mc::WcEntry),
                                  cudaMemcpyHostToDevice, stream.get()));
      MC_CUDA_TRY(cudaMemcpyAsync(d_scores, h_scores, n * sizeof(float), cudaMemcpyHostToDevice,
                                  stream.get()));
    }
    MC_CUDA_TRY((mc::cuda::focus_select<FocusConfig, Policy>(
        d_temp, temp_bytes, d_entries, d_scores, p, d_edits, d_result, stream.get())));
    MC_CUDA_TRY(cudaMemcpyAsync(h_result, d_result, sizeof(*h_result), cudaMemcpyDeviceToHost,
                                stream.get()));
    MC_CUDA_TRY(cudaMemcpyAsync(h_edits, d_edits, sizeof(mc::FocusEdit) * p.max_edits,
                                cudaMemcpyDeviceToHost, stream.get()));
    state.SetIterationTime(timer.stop(stream.get()));
  }
  // Same edits as the CPU on this context (a bench of a wrong answer is worthless).
  auto cpu_alloc = f.alloc;
  auto cpu_wc = f.wc;
  const mc::FocusReport r = cpu_alloc.step(cpu_wc, f.scores);
  if (r.expansions != h_result->expansions || r.collapses != h_result->collapses)
    state.SkipWithError("device and CPU chose different edits");
  state.counters["entries"] = static_cast<double>(n);
  state.counters["edits"] = h_result->num_edits;
  state.counters["exp_cand"] = static_cast<double>(h_result->expand_candidates);
  state.counters["col_cand"] = static_cast<double>(h_result->collapse_candidates);
  for (void* q : {static_cast<void*>(d_entries), static_cast<void*>(d_scores),
                  static_cast<void*>(d_edits), static_cast<void*>(d_result), d_temp})
    MC_CUDA_TRY(cudaFree(q));
  for (void* q : {static_cast<void*>(h_entries), static_cast<void*>(h_scores),
                  static_cast<void*>(h_edits), static_cast<void*>(h_result)})
    MC_CUDA_TRY(cudaFreeHost(q));
}

// The CPU step on the same context (copied before each timed step, outside the timing).
template <class Policy>
void BM_FocusSelect_CpuStep(benchmark::State& state) {
  FocusFixture<Policy> f(state.range(0));
  for (auto _ : state) {
    auto a = f.alloc;
    auto wc = f.wc;
    const auto t0 = std::chrono::steady_clock::now();
    benchmark::DoNotOptimize(a.step(wc, f.scores));
    const auto t1 = std::chrono::steady_clock::now();
    state.SetIterationTime(std::chrono::duration<double>(t1 - t0).count());
  }
  state.counters["entries"] = static_cast<double>(f.wc.size());
}

void focus_args(benchmark::internal::Benchmark* b) {
  for (const std::int64_t w : {2048, 8192, 32768}) {
    b->Args({w, 0});
    b->Args({w, 1});
  }
}
void cpu_args(benchmark::internal::Benchmark* b) {
  for (const std::int64_t w : {2048, 8192, 32768}) b->Args({w});
}

BENCHMARK(BM_FocusSelect_Device<mc::GreedyThreshold>)->Apply(focus_args)->UseManualTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_FocusSelect_Device<mc::BudgetOptimal>)->Apply(focus_args)->UseManualTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_FocusSelect_CpuStep<mc::GreedyThreshold>)->Apply(cpu_args)->UseManualTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_FocusSelect_CpuStep<mc::BudgetOptimal>)->Apply(cpu_args)->UseManualTime()
    ->Unit(benchmark::kMicrosecond);

// ---------------------------------------------------------------- 2. pyramid mask -> BSR
mc::PyramidMask bench_mask(std::int64_t n) {
  mc::PyramidMaskOptions o;
  o.r = 32;
  o.window = 256;
  o.num_levels = mc::pyramid_levels_for(n, 32);
  return mc::PyramidMask(o, n);
}

void BM_PyramidBsr_Device(benchmark::State& state) {
  const mc::PyramidMask mask = bench_mask(state.range(0));
  mc::cuda::PyramidBsrBuilder builder;
  mc::cuda::DeviceBsr out;
  Stream stream;
  EventTimer timer;
  builder.build(mask, 128, out, stream.get());  // warm the scratch and allocator
  for (auto _ : state) {
    timer.start(stream.get());
    builder.build(mask, 128, out, stream.get());
    state.SetIterationTime(timer.stop(stream.get()));
  }
  const mc::BsrMask ref = mask.bsr(128);
  if (!mc::bsr_difference(out.download(), ref).empty())
    state.SkipWithError("device BSR differs from the CPU builder");
  state.counters["S"] = mask.seq_len();
  state.counters["tiles"] = static_cast<double>(out.num_blocks());
  state.counters["nnz"] = static_cast<double>(out.nnz);
  state.SetItemsProcessed(state.iterations() * mask.seq_len());
}

void BM_PyramidBsr_Cpu(benchmark::State& state) {
  const mc::PyramidMask mask = bench_mask(state.range(0));
  for (auto _ : state) {
    const auto t0 = std::chrono::steady_clock::now();
    mc::BsrMask m = mask.bsr(128);
    benchmark::DoNotOptimize(m.col_idx.data());
    const auto t1 = std::chrono::steady_clock::now();
    state.SetIterationTime(std::chrono::duration<double>(t1 - t0).count());
  }
  state.counters["S"] = mask.seq_len();
  state.SetItemsProcessed(state.iterations() * mask.seq_len());
}

BENCHMARK(BM_PyramidBsr_Device)->RangeMultiplier(4)->Range(4096, 262144)->UseManualTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_PyramidBsr_Cpu)->RangeMultiplier(4)->Range(4096, 262144)->UseManualTime()
    ->Unit(benchmark::kMicrosecond);

// ---------------------------------------------------------------- 3. tree gisting
using GistConfig = mc::Config<32, 2>;

__global__ void fill_values(float* p, std::int64_t n) {
  for (std::int64_t i = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; i < n;
       i += std::int64_t{gridDim.x} * blockDim.x) {
    std::uint32_t h = static_cast<std::uint32_t>(i) * 2654435761u;
    h ^= h >> 15;
    p[i] = static_cast<float>(h & 0xFFFF) / 16384.0f - 2.0f;
  }
}

// state.range(0) = d, range(1) = tokens, range(2) = 1 to start from token ids (embed + gists).
void BM_TreeGists(benchmark::State& state) {
  const std::int64_t d = state.range(0), n = state.range(1);
  const bool from_ids = state.range(2) != 0;
  const std::int64_t vocab = 32768;
  const mc::cuda::TreeGistLayout<GistConfig> layout(n);
  float* emb = device_alloc<float>(static_cast<std::size_t>(n * d));
  float* gists = device_alloc<float>(static_cast<std::size_t>(layout.total_rows() * d));
  float* table = device_alloc<float>(static_cast<std::size_t>(vocab * d));
  auto* ids = device_alloc<mc::TokenId>(static_cast<std::size_t>(n));
  int* err = device_alloc<int>(1);
  fill_values<<<4096, 256>>>(emb, n * d);
  fill_values<<<1024, 256>>>(table, vocab * d);
  std::vector<mc::TokenId> h_ids(static_cast<std::size_t>(n));
  for (std::size_t i = 0; i < h_ids.size(); ++i) h_ids[i] = static_cast<mc::TokenId>((i * 7919) % vocab);
  MC_CUDA_TRY(cudaMemcpy(ids, h_ids.data(), h_ids.size() * sizeof(mc::TokenId), cudaMemcpyHostToDevice));
  MC_CUDA_TRY(cudaMemset(err, 0, sizeof(int)));
  // L2 flush buffer (2x L2), written before every timed iteration.
  int dev = 0, l2 = 0;
  MC_CUDA_TRY(cudaGetDevice(&dev));
  MC_CUDA_TRY(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, dev));
  const std::size_t flush_bytes = 2 * static_cast<std::size_t>(l2 > 0 ? l2 : (64 << 20));
  void* flush = device_alloc<unsigned char>(flush_bytes);
  MC_CUDA_TRY(cudaDeviceSynchronize());
  Stream stream;
  EventTimer timer;
  for (auto _ : state) {
    MC_CUDA_TRY(cudaMemsetAsync(flush, 0, flush_bytes, stream.get()));
    timer.start(stream.get());
    if (from_ids)
      MC_CUDA_TRY(mc::cuda::embed_tokens(ids, n, table, vocab, d, emb, err, stream.get()));
    MC_CUDA_TRY(mc::cuda::build_tree_gists<GistConfig>(emb, n, d, gists, stream.get()));
    state.SetIterationTime(timer.stop(stream.get()));
  }
  state.SetItemsProcessed(state.iterations() * n);
  const std::int64_t bytes = (n + layout.level_size(1) + layout.level_size(1) +
                              layout.level_size(2) + (from_ids ? n : 0)) *
                             d * static_cast<std::int64_t>(sizeof(float));
  state.SetBytesProcessed(state.iterations() * bytes);
  state.counters["d"] = static_cast<double>(d);
  state.counters["tokens"] = static_cast<double>(n);
  for (void* q : {static_cast<void*>(emb), static_cast<void*>(gists), static_cast<void*>(table),
                  static_cast<void*>(ids), static_cast<void*>(err), flush})
    MC_CUDA_TRY(cudaFree(q));
}

BENCHMARK(BM_TreeGists)
    ->Args({256, 1 << 22, 0})
    ->Args({512, 1 << 22, 0})
    ->Args({256, 1 << 22, 1})
    ->Args({512, 1 << 22, 1})
    ->Args({256, 1 << 18, 0})
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);

}  // namespace

MC_CUDA_BENCHMARK_MAIN("bench_gpu_focus_mask")
