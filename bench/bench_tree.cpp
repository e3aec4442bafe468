// SPDX-License-Identifier: Apache-2.0
// Tree benchmarks: append throughput (ids only, and with a mean-pool gister at d = 256) for the
// memory and disk storage, reopen time of a 10M-token tree, and bytes on disk per token. The
// baseline in the same run is BM_Tree_AppendIds_ref, a plain std::vector append (memcpy): the
// ratio to it is what docs/results reports, since absolute times move with the machine.
#include <benchmark/benchmark.h>

#include "bench_main.hpp"

#include <megacontext/tree.hpp>

#include <filesystem>
#include <vector>

namespace {

using C = mc::Config<32, 3>;
constexpr std::int64_t kVocab = 8192;

std::vector<mc::TokenId> make_ids(std::int64_t n) {
  std::vector<mc::TokenId> v(static_cast<std::size_t>(n));
  std::uint64_t x = 88172645463325252ull;
  for (auto& t : v) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    t = static_cast<mc::TokenId>(x % kVocab);
  }
  return v;
}

std::filesystem::path bench_dir(const char* name) {
  const char* base = std::getenv("MC_BENCH_DIR");
  return std::filesystem::path(base ? base : std::filesystem::temp_directory_path().c_str()) /
         (std::string("mc_bench_") + name);
}

// Trees are rebuilt every this many tokens so memory and disk use stay bounded.
constexpr std::int64_t kResetTokens = std::int64_t{1} << 26;

void BM_Tree_AppendIds_ref(benchmark::State& state) {
  const auto ids = make_ids(state.range(0));
  std::vector<mc::TokenId> sink;
  for (auto _ : state) {
    if (static_cast<std::int64_t>(sink.size()) >= kResetTokens) {
      state.PauseTiming();
      sink = {};
      state.ResumeTiming();
    }
    sink.insert(sink.end(), ids.begin(), ids.end());
    benchmark::DoNotOptimize(sink.data());
  }
  state.SetItemsProcessed(state.iterations() * state.range(0));
  state.SetBytesProcessed(state.iterations() * state.range(0) * 4);
}

void BM_Tree_AppendIds_Memory(benchmark::State& state) {
  const auto ids = make_ids(state.range(0));
  auto tree = std::make_unique<mc::MemoryTree<C>>(0);
  for (auto _ : state) {
    if (tree->num_tokens() >= kResetTokens) {
      state.PauseTiming();
      tree = std::make_unique<mc::MemoryTree<C>>(0);
      state.ResumeTiming();
    }
    tree->append(ids);
    benchmark::DoNotOptimize(tree->num_tokens());
  }
  state.SetItemsProcessed(state.iterations() * state.range(0));
  state.SetBytesProcessed(state.iterations() * state.range(0) * 4);
}

void BM_Tree_AppendIds_Disk(benchmark::State& state) {
  const auto ids = make_ids(state.range(0));
  const auto dir = bench_dir("append_ids");
  auto tree = std::make_unique<mc::DiskTree<C>>(
      mc::DiskTree<C>::create(dir, 0, {.overwrite = true}));
  for (auto _ : state) {
    if (tree->num_tokens() >= kResetTokens) {
      state.PauseTiming();
      tree.reset();
      tree = std::make_unique<mc::DiskTree<C>>(mc::DiskTree<C>::create(dir, 0, {.overwrite = true}));
      state.ResumeTiming();
    }
    tree->append(ids);
  }
  state.SetItemsProcessed(state.iterations() * state.range(0));
  state.SetBytesProcessed(state.iterations() * state.range(0) * 4);
  tree.reset();
  std::filesystem::remove_all(dir);
}

template <class Storage>
void BM_Tree_AppendMeanPool(benchmark::State& state) {
  constexpr std::int64_t d = 256;
  const auto ids = make_ids(state.range(0));
  auto g = mc::MeanPoolGister<C>::random(kVocab, d, 1);
  const auto dir = bench_dir("append_meanpool");
  auto make = [&] {
    if constexpr (std::is_same_v<Storage, mc::DiskStorage>)
      return std::make_unique<mc::Tree<C, Storage>>(mc::Tree<C, Storage>::create(dir, d, {.overwrite = true}));
    else
      return std::make_unique<mc::Tree<C, Storage>>(d);
  };
  auto tree = make();
  for (auto _ : state) {
    if (tree->num_tokens() >= kResetTokens / 4) {
      state.PauseTiming();
      tree.reset();
      tree = make();
      state.ResumeTiming();
    }
    tree->append(ids, g);
  }
  state.SetItemsProcessed(state.iterations() * state.range(0));
  tree.reset();
  std::filesystem::remove_all(dir);
}

// Reopen of a 10M-token tree (built once, outside the timing), with and without the full
// checksum pass; reports bytes on disk per token as a counter.
void BM_Tree_Reopen(benchmark::State& state) {
  const bool full = state.range(0) != 0;
  const std::int64_t d = state.range(1);
  const std::int64_t n = 10'000'000;
  const auto dir = bench_dir(d == 0 ? "reopen_ids" : "reopen_d256");
  {
    auto g = mc::MeanPoolGister<C>::random(kVocab, std::max<std::int64_t>(d, 1), 1);
    auto t = mc::DiskTree<C>::create(dir, d, {.overwrite = true});
    const auto ids = make_ids(1 << 20);
    for (std::int64_t p = 0; p < n; p += 1 << 20) {
      const auto len = static_cast<std::size_t>(std::min<std::int64_t>(1 << 20, n - p));
      if (d == 0) t.append(std::span(ids).first(len));
      else t.append(std::span(ids).first(len), g);
    }
  }
  std::uint64_t disk = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir)) disk += e.file_size();
  for (auto _ : state) {
    auto t = mc::DiskTree<C>::open(
        dir, {.read_only = true, .verify = full ? mc::Verify::kFull : mc::Verify::kCommitOnly});
    benchmark::DoNotOptimize(t.num_tokens());
  }
  state.counters["bytes_per_token"] = static_cast<double>(disk) / static_cast<double>(n);
  state.counters["disk_MB"] = static_cast<double>(disk) / 1e6;
  state.SetItemsProcessed(state.iterations() * n);
  std::filesystem::remove_all(dir);
}

}  // namespace

BENCHMARK(BM_Tree_AppendIds_ref)->Arg(4096)->Arg(65536);
BENCHMARK(BM_Tree_AppendIds_Memory)->Arg(1)->Arg(4096)->Arg(65536);
BENCHMARK(BM_Tree_AppendIds_Disk)->Arg(1)->Arg(4096)->Arg(65536);
BENCHMARK(BM_Tree_AppendMeanPool<mc::MemoryStorage>)->Arg(4096)->Arg(65536);
BENCHMARK(BM_Tree_AppendMeanPool<mc::DiskStorage>)->Arg(4096)->Arg(65536);
BENCHMARK(BM_Tree_Reopen)->Args({0, 0})->Args({1, 0})->Args({0, 256})->Args({1, 256})
    ->Unit(benchmark::kMillisecond);

MC_BENCHMARK_MAIN("bench_tree")
