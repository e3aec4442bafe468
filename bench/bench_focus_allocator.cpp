// SPDX-License-Identifier: Apache-2.0
// Focus allocator benchmarks: one step() for each policy at W_max = 2k / 8k / 32k over a history
// of 1M and 100M tokens (the allocator reads only the history length from the tree, so the step
// must not grow with it), admit() of K new tokens, and assemble_patch vs a full assemble at
// d = 256. Baseline in the same run: sorting W scores by |score| (the naive allocator's core).
// The candidate pass's score scan alone, per SIMD kernel (the step's label names the kernel the
// CPU picked), and one step of each baseline layout policy.
#include <benchmark/benchmark.h>

#include "bench_main.hpp"

#include <megacontext/assemble.hpp>
#include <megacontext/focus_allocator.hpp>
#include <megacontext/policies/block_retrieval.hpp>
#include <megacontext/policies/budget_optimal.hpp>
#include <megacontext/policies/greedy_threshold.hpp>
#include <megacontext/policies/quest.hpp>
#include <megacontext/policies/recency_only.hpp>
#include <megacontext/policies/sliding_window.hpp>
#include <megacontext/tree.hpp>

#include <algorithm>
#include <cmath>
#include <random>
#include <type_traits>
#include <vector>

namespace {

using C = mc::Config<32, 3>;

// Score sets rotated between iterations: a smooth field over token positions plus noise, the
// kind of signal a scorer gives (regions that want detail, regions that do not).
std::vector<std::vector<float>> make_scores(const mc::WorkingContext<C>& wc, int sets) {
  std::mt19937_64 rng(7);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<std::vector<float>> out(static_cast<std::size_t>(sets));
  for (auto& s : out) {
    const double freq = 1.0 / (1000.0 + static_cast<double>(rng() % 100000)), phase = u(rng) * 3.0;
    s.resize(static_cast<std::size_t>(wc.size()));
    for (std::int64_t i = 0; i < wc.size(); ++i) {
      const double t = static_cast<double>(mc::Lod<C>::tokens(wc[i].node()).begin);
      s[static_cast<std::size_t>(i)] =
          std::clamp(static_cast<float>(std::sin(t * freq + phase)) + 0.3f * u(rng), -1.0f, 1.0f);
    }
  }
  return out;
}

template <class Policy>
void BM_FocusAllocator_Step(benchmark::State& state) {
  const std::int64_t w_max = state.range(0), history = state.range(1);
  mc::WorkingContextOptions wo{w_max, 4};
  mc::FocusOptions fo;
  fo.residency_stats = state.range(2) != 0;
  mc::FocusAllocator<C, Policy> alloc(fo, wo);
  mc::WorkingContext<C> wc(wo);
  alloc.admit(wc, history);
  // Warm the context up so it is a realistic mix of levels, not a fresh coarse tiling.
  auto scores = make_scores(wc, 16);
  for (int i = 0; i < 64; ++i) {
    auto& s = scores[static_cast<std::size_t>(i % 16)];
    s.resize(static_cast<std::size_t>(wc.size()), 0.0f);
    alloc.step(wc, s);
  }
  // Score sets padded to w_max so the timed loop only takes a prefix (no PauseTiming: it costs
  // about a microsecond itself, as much as the step being measured).
  for (auto& s : scores) s.resize(static_cast<std::size_t>(w_max), 0.0f);
  std::int64_t edits = 0, steps = 0;
  for (auto _ : state) {
    const auto& s = scores[static_cast<std::size_t>(steps % 16)];
    const auto r = alloc.step(wc, std::span(s).first(static_cast<std::size_t>(wc.size())));
    benchmark::DoNotOptimize(r);
    edits += r.expansions + r.collapses;
    ++steps;
  }
  state.counters["entries"] = static_cast<double>(wc.size());
  state.counters["edits_per_step"] = static_cast<double>(edits) / static_cast<double>(steps);
  state.SetItemsProcessed(state.iterations() * wc.size());
  state.SetLabel(mc::detail::best_scan_path_name());
}

// The score scan of the candidate pass (validity + masks) over 8k entries, per kernel.
void BM_FocusAllocator_Scan(benchmark::State& state) {
  const auto path = static_cast<mc::detail::ScanPath>(state.range(0));
  if (!mc::detail::scan_path_available(path)) {
    state.SkipWithError("kernel not available on this CPU");
    return;
  }
  constexpr std::int64_t n = 8192;
  std::mt19937_64 rng(5);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> s(n);
  std::vector<std::uint8_t> f(n);
  for (std::int64_t i = 0; i < n; ++i) {
    s[static_cast<std::size_t>(i)] = u(rng);
    f[static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(rng() % 4 * 0x40);
  }
  mc::detail::FocusMasks m;
  for (auto _ : state) {
    benchmark::DoNotOptimize(mc::detail::scan_scores(s.data(), f.data(), n, 0.25f, m, path));
    benchmark::DoNotOptimize(m.above.data());
  }
  state.SetItemsProcessed(state.iterations() * n);
}

// One step of a baseline layout policy at W_max = 8192 over 1M tokens (K = 32, d = 8 keys).
template <class Policy>
void BM_FocusAllocator_Baseline(benchmark::State& state) {
  constexpr std::int64_t w_max = 8192, history = 1'000'000, d = 8;
  const bool sinks = !std::is_same_v<Policy, mc::Truncation>;
  mc::WorkingContextOptions wo{w_max, sinks ? 4 : 0};
  mc::FocusAllocator<C, Policy> alloc({}, wo);
  mc::WorkingContext<C> wc(wo);
  alloc.admit(wc, history);
  std::mt19937_64 rng(9);
  std::normal_distribution<float> g(0.0f, 1.0f);
  const std::int64_t blocks = history / C::K;
  std::vector<float> keys(static_cast<std::size_t>(blocks * 2 * d)), lo(static_cast<std::size_t>(blocks * d)),
      hi(lo.size()), q(static_cast<std::size_t>(d));
  for (auto& x : keys) x = g(rng);
  for (std::size_t i = 0; i < lo.size(); ++i) {
    const float a = g(rng), b = g(rng);
    lo[i] = std::min(a, b);
    hi[i] = std::max(a, b);
  }
  std::vector<float> scores;
  std::int64_t steps = 0;
  for (auto _ : state) {
    for (auto& x : q) x = g(rng);
    if constexpr (std::is_same_v<Policy, mc::BlockRetrieval>) {
      alloc.policy().keys = {d, 2, blocks, keys};
      alloc.policy().query = q;
    } else if constexpr (std::is_same_v<Policy, mc::Quest>) {
      alloc.policy().pages = {d, blocks, lo, hi};
      alloc.policy().query = q;
    }
    scores.assign(static_cast<std::size_t>(wc.size()), 0.0f);
    benchmark::DoNotOptimize(alloc.step(wc, scores));
    ++steps;
  }
  state.counters["entries"] = static_cast<double>(wc.size());
}

void BM_FocusAllocator_SortRef(benchmark::State& state) {
  std::mt19937_64 rng(3);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> base(static_cast<std::size_t>(state.range(0)));
  for (auto& x : base) x = u(rng);
  std::vector<std::int32_t> order(base.size());
  for (auto _ : state) {
    for (std::size_t i = 0; i < order.size(); ++i) order[i] = static_cast<std::int32_t>(i);
    std::sort(order.begin(), order.end(), [&](std::int32_t a, std::int32_t b) {
      return std::abs(base[static_cast<std::size_t>(a)]) > std::abs(base[static_cast<std::size_t>(b)]);
    });
    benchmark::DoNotOptimize(order.data());
  }
  state.SetItemsProcessed(state.iterations() * state.range(0));
}

void BM_FocusAllocator_AdmitK(benchmark::State& state) {
  const std::int64_t w_max = state.range(0);
  mc::WorkingContextOptions wo{w_max, 4};
  mc::FocusAllocator<C, mc::BudgetOptimal> alloc({}, wo);
  mc::WorkingContext<C> wc(wo);
  std::int64_t n = 1'000'000;
  alloc.admit(wc, n);
  for (auto _ : state) {
    n += C::K;
    benchmark::DoNotOptimize(alloc.admit(wc, n));
  }
  state.SetItemsProcessed(state.iterations() * C::K);
}

// Full assembly vs patch after one allocator step, W_max = 8192, d = 256.
void BM_Assemble(benchmark::State& state) {
  const bool patch = state.range(0) != 0;
  constexpr std::int64_t d = 256, history = 1'000'000;
  auto g = mc::MeanPoolGister<C>::random(8192, d, 1);
  mc::MemoryTree<C> tree(d);
  std::vector<mc::TokenId> ids(static_cast<std::size_t>(history));
  std::mt19937_64 rng(1);
  for (auto& t : ids) t = static_cast<mc::TokenId>(rng() % 8192);
  tree.append(ids, g);
  mc::WorkingContextOptions wo{8192, 4};
  mc::FocusAllocator<C, mc::BudgetOptimal> alloc({}, wo);
  mc::WorkingContext<C> wc(wo);
  alloc.admit(wc, history);
  auto scores = make_scores(wc, 8);
  mc::AssembledContext<float> out;
  mc::assemble(wc, tree, g, out);
  std::int64_t fresh = 0, steps = 0;
  for (auto _ : state) {
    state.PauseTiming();
    auto& s = scores[static_cast<std::size_t>(steps++ % 8)];
    s.resize(static_cast<std::size_t>(wc.size()), 0.0f);
    fresh += alloc.step(wc, s).fresh_entries;
    state.ResumeTiming();
    if (patch) mc::assemble_patch(wc, tree, g, out);
    else mc::assemble(wc, tree, g, out);
    benchmark::DoNotOptimize(out.embeddings.data());
  }
  state.counters["fresh_rows_per_step"] = static_cast<double>(fresh) / static_cast<double>(steps);
  state.SetItemsProcessed(state.iterations() * wc.size());
}

}  // namespace

// With --benchmark_repetitions, also the fastest repetition (least disturbed by other work).
double min_of(const std::vector<double>& v) { return *std::min_element(v.begin(), v.end()); }

// Args: w_max, history tokens, residency stats on/off.
BENCHMARK(BM_FocusAllocator_Step<mc::GreedyThreshold>)
    ->ArgsProduct({{2048, 8192, 32768}, {1'000'000, 100'000'000}, {0}})
    ->Args({8192, 1'000'000, 1})
    ->ComputeStatistics("min", min_of);
BENCHMARK(BM_FocusAllocator_Step<mc::BudgetOptimal>)
    ->ArgsProduct({{2048, 8192, 32768}, {1'000'000, 100'000'000}, {0}})
    ->Args({8192, 1'000'000, 1})
    ->ComputeStatistics("min", min_of);
BENCHMARK(BM_FocusAllocator_SortRef)->Arg(2048)->Arg(8192)->Arg(32768);
// Args: mc::detail::ScanPath (1 portable, 2 SSE2, 3 AVX, 4 AVX-512).
BENCHMARK(BM_FocusAllocator_Scan)->DenseRange(1, 4);
BENCHMARK(BM_FocusAllocator_Baseline<mc::Truncation>)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_FocusAllocator_Baseline<mc::SinksWindow>)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_FocusAllocator_Baseline<mc::RecencyOnly>)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_FocusAllocator_Baseline<mc::BlockRetrieval>)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_FocusAllocator_Baseline<mc::Quest>)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_FocusAllocator_AdmitK)->Arg(2048)->Arg(8192)->Arg(32768);
BENCHMARK(BM_Assemble)->Arg(0)->Arg(1)->Unit(benchmark::kMicrosecond);

MC_BENCHMARK_MAIN("bench_focus_allocator")
