// SPDX-License-Identifier: Apache-2.0
// Pyramid mask benchmarks: building the BSR form a block-sparse attention kernel consumes, for
// N = 4k..256k leaves (r = 32, W = 256, L = pyramid_levels_for(N), B = 128). Baselines in the
// same run: a sliding window of W over the same sequence length through the same BSR builder
// (the cheapest pattern it can build), and the dense [S, S] reference at small N.
#include <benchmark/benchmark.h>

#include "bench_main.hpp"

#include <cstdint>
#include <megacontext/pyramid_mask.hpp>

namespace {

constexpr std::int32_t kR = 32;
constexpr std::int32_t kW = 256;
constexpr std::int32_t kBlock = 128;

mc::PyramidMask make_mask(std::int64_t n, mc::Causality causality) {
  return mc::PyramidMask(
      {.r = kR, .window = kW, .num_levels = mc::pyramid_levels_for(n, kR), .causality = causality},
      n);
}

void report(benchmark::State& state, const mc::BsrMask& bsr) {
  const double nb = bsr.num_block_rows();
  state.SetItemsProcessed(state.iterations() * bsr.seq_len);
  state.counters["S"] = bsr.seq_len;
  state.counters["nnz/query"] = static_cast<double>(bsr.nnz) / bsr.seq_len;
  state.counters["blocks"] = bsr.num_blocks();
  state.counters["full_blocks"] = static_cast<double>(bsr.num_full_blocks());
  // Tiles a block-sparse kernel computes, relative to a dense causal kernel over the same S.
  state.counters["vs_causal"] = bsr.num_blocks() / (nb * (nb + 1) / 2);
}

void BM_PyramidMask_Bsr(benchmark::State& state) {
  const mc::PyramidMask mask = make_mask(state.range(0), mc::Causality::kStrict);
  mc::BsrMask bsr;
  for (auto _ : state) {
    bsr = mask.bsr(kBlock);
    benchmark::DoNotOptimize(bsr.col_idx.data());
    benchmark::ClobberMemory();
  }
  report(state, bsr);
}

void BM_PyramidMask_BsrCausal(benchmark::State& state) {
  const mc::PyramidMask mask = make_mask(state.range(0), mc::Causality::kCausal);
  mc::BsrMask bsr;
  for (auto _ : state) {
    bsr = mask.bsr(kBlock);
    benchmark::DoNotOptimize(bsr.col_idx.data());
    benchmark::ClobberMemory();
  }
  report(state, bsr);
}

// Baseline: a plain sliding window of W keys over the same S, through the same builder.
void BM_SlidingWindow_Bsr_ref(benchmark::State& state) {
  const std::int32_t s = make_mask(state.range(0), mc::Causality::kStrict).seq_len();
  mc::BsrMask bsr;
  for (auto _ : state) {
    bsr = mc::bsr_from_ranges(
        s, kBlock, [](std::int32_t q, auto&& emit) { emit(q + 1 > kW ? q + 1 - kW : 0, q + 1); });
    benchmark::DoNotOptimize(bsr.col_idx.data());
    benchmark::ClobberMemory();
  }
  report(state, bsr);
}

// Baseline: the dense [S, S] reference mask (what the BSR generator avoids), small N only.
void BM_PyramidMask_DenseRef(benchmark::State& state) {
  const mc::PyramidMask mask = make_mask(state.range(0), mc::Causality::kStrict);
  for (auto _ : state) {
    auto dense = mask.dense();
    benchmark::DoNotOptimize(dense.data());
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations() * mask.seq_len());
  state.counters["S"] = mask.seq_len();
}

}  // namespace

BENCHMARK(BM_PyramidMask_Bsr)
    ->RangeMultiplier(2)
    ->Range(4096, 262144)
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_PyramidMask_BsrCausal)
    ->RangeMultiplier(4)
    ->Range(4096, 262144)
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_SlidingWindow_Bsr_ref)
    ->RangeMultiplier(4)
    ->Range(4096, 262144)
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_PyramidMask_DenseRef)->Arg(1024)->Arg(4096)->Unit(benchmark::kMillisecond);

MC_BENCHMARK_MAIN("bench_pyramid_mask")
