// SPDX-License-Identifier: Apache-2.0
// GPU benchmark of working-context assembly, W_max = 8192, d = 256, a 1M-token tree on the device:
// a full device assembly (every row gathered) and a device patch after one allocator step (rows
// moved on the device, only fresh rows gathered), each including the upload of its plan, against
// the baseline in this file: uploading the CPU-assembled rows [W, d] from pinned memory, which is
// what a context rebuilt on the host each step costs. CUDA-event timing (UseManualTime).
// Plans are replayed in a cycle, so after the first cycle the patched rows hold stale data: the
// timing is what matters here (content is checked by tests/cuda/test_assemble_parity.cu).
#include <benchmark/benchmark.h>

#include <megacontext/assemble.hpp>
#include <megacontext/device_assemble.cuh>
#include <megacontext/focus_allocator.hpp>
#include <megacontext/policies/budget_optimal.hpp>
#include <megacontext/tree.hpp>

#include "cuda_bench.cuh"

#include <cmath>
#include <memory>
#include <random>
#include <vector>


namespace {

using C = mc::Config<32, 3>;
constexpr std::int64_t kD = 256, kTokens = 1 << 20, kWMax = 8192, kSteps = 32, kVocab = 8192;

template <class T>
T* to_device(const T* host, std::size_t n) {
  T* d = nullptr;
  MC_CUDA_TRY(cudaMalloc(&d, std::max<std::size_t>(1, n) * sizeof(T)));
  if (n) MC_CUDA_TRY(cudaMemcpy(d, host, n * sizeof(T), cudaMemcpyHostToDevice));
  return d;
}

// Everything built once: the tree on host and device, and the plans of kSteps allocator steps.
struct Fixture {
  mc::cuda::AssembleSource src;
  mc::cuda::AssemblePlan full;
  std::vector<mc::cuda::AssemblePlan> patches;
  std::vector<float> host_rows;  // one CPU assembly, for the upload baseline
  std::int64_t rows = 0;
  double fresh_per_step = 0;

  static Fixture& get() {
    static Fixture f;
    return f;
  }

 private:
  Fixture() {
    auto g = mc::MeanPoolGister<C>::random(kVocab, kD, 1);
    mc::MemoryTree<C> tree(kD);
    std::vector<mc::TokenId> ids(kTokens);
    std::mt19937_64 rng(2);
    for (auto& t : ids) t = static_cast<mc::TokenId>(rng() % kVocab);
    tree.append(ids, g);
    src.d_token_table = to_device(g.table().data(), static_cast<std::size_t>(g.table().size()));
    src.vocab = kVocab;
    src.d_tokens = to_device(ids.data(), ids.size());
    src.num_tokens = kTokens;
    src.d = kD;
    src.k = C::K;
    src.depth = C::Depth;
    for (int l = 1; l <= C::Depth; ++l) {
      const auto v = tree.gists(l, 0, tree.level_size(l));
      src.d_gists[l] = to_device(v.data(), static_cast<std::size_t>(v.size()));
      src.level_rows[l] = tree.level_size(l);
    }
    mc::WorkingContextOptions wo{kWMax, 4};
    mc::FocusOptions fo;
    fo.cooldown_steps = 1;
    mc::FocusAllocator<C, mc::BudgetOptimal> alloc(fo, wo);
    mc::WorkingContext<C> wc(wo);
    alloc.admit(wc, kTokens);
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    auto scores = [&] {
      std::vector<float> s(static_cast<std::size_t>(wc.size()));
      const double freq = 1.0 / (1000.0 + static_cast<double>(rng() % 100000)), ph = u(rng) * 3.0;
      for (std::int64_t i = 0; i < wc.size(); ++i)
        s[static_cast<std::size_t>(i)] = std::clamp(
            static_cast<float>(std::sin(static_cast<double>(wc.span(i).begin) * freq + ph)) +
                0.3f * u(rng), -1.0f, 1.0f);
      return s;
    };
    for (int i = 0; i < 64; ++i) alloc.step(wc, scores());  // warm up to a mixed-level context
    full = mc::cuda::plan_full(wc);
    std::int64_t fresh = 0;
    for (int i = 0; i < kSteps; ++i) {
      alloc.step(wc, scores());
      patches.push_back(mc::cuda::plan_patch(wc));
      fresh += static_cast<std::int64_t>(patches.back().fresh_entries.size());
    }
    fresh_per_step = static_cast<double>(fresh) / kSteps;
    mc::AssembledContext<float> cpu;
    mc::assemble(wc, tree, g, cpu);
    rows = wc.size();
    host_rows.assign(cpu.embeddings.data(), cpu.embeddings.data() + cpu.embeddings.size());
  }
};

// Two row buffers (double buffering), positions, the error flag and pinned staging for plans.
struct Buffers {
  float* rows[2] = {};
  mc::GaussianPosition* pos[2] = {};
  int* error = nullptr;
  mc::cuda::AssembleSegment* d_segments = nullptr;
  mc::WcEntry* d_fresh = nullptr;
  mc::cuda::AssembleSegment* h_segments = nullptr;
  mc::WcEntry* h_fresh = nullptr;
  float* h_rows = nullptr;
  Buffers() {
    for (int i = 0; i < 2; ++i) {
      MC_CUDA_TRY(cudaMalloc(&rows[i], kWMax * kD * sizeof(float)));
      MC_CUDA_TRY(cudaMalloc(&pos[i], kWMax * sizeof(mc::GaussianPosition)));
      MC_CUDA_TRY(cudaMemset(rows[i], 0, kWMax * kD * sizeof(float)));
    }
    MC_CUDA_TRY(cudaMalloc(&error, sizeof(int)));
    MC_CUDA_TRY(cudaMemset(error, 0, sizeof(int)));
    MC_CUDA_TRY(cudaMalloc(&d_segments, kWMax * sizeof(mc::cuda::AssembleSegment)));
    MC_CUDA_TRY(cudaMalloc(&d_fresh, kWMax * sizeof(mc::WcEntry)));
    MC_CUDA_TRY(cudaMallocHost(&h_segments, kWMax * sizeof(mc::cuda::AssembleSegment)));
    MC_CUDA_TRY(cudaMallocHost(&h_fresh, kWMax * sizeof(mc::WcEntry)));
    MC_CUDA_TRY(cudaMallocHost(&h_rows, kWMax * kD * sizeof(float)));
  }
};

// Uploads a plan (pinned staging, async) and runs it; returns nothing, enqueued on `s`.
void run_plan(const mc::cuda::AssemblePlan& plan, Buffers& b, int from, cudaStream_t s) {
  std::copy(plan.segments.begin(), plan.segments.end(), b.h_segments);
  std::copy(plan.fresh_entries.begin(), plan.fresh_entries.end(), b.h_fresh);
  MC_CUDA_TRY(cudaMemcpyAsync(b.d_segments, b.h_segments,
                              plan.segments.size() * sizeof(mc::cuda::AssembleSegment),
                              cudaMemcpyHostToDevice, s));
  if (!plan.fresh_entries.empty())
    MC_CUDA_TRY(cudaMemcpyAsync(b.d_fresh, b.h_fresh, plan.fresh_entries.size() * sizeof(mc::WcEntry),
                                cudaMemcpyHostToDevice, s));
  MC_CUDA_TRY(mc::cuda::assemble_rows(Fixture::get().src, b.d_segments,
                                      static_cast<std::int64_t>(plan.segments.size()), b.d_fresh,
                                      b.rows[from], b.pos[from], plan.num_rows, b.rows[1 - from],
                                      b.pos[1 - from], b.error, s));
}

template <class F>
void time_loop(benchmark::State& state, F&& body) {
  cudaEvent_t start, stop;
  MC_CUDA_TRY(cudaEventCreate(&start));
  MC_CUDA_TRY(cudaEventCreate(&stop));
  std::int64_t it = 0;
  for (auto _ : state) {
    MC_CUDA_TRY(cudaEventRecord(start, 0));
    body(it++);
    MC_CUDA_TRY(cudaEventRecord(stop, 0));
    MC_CUDA_TRY(cudaEventSynchronize(stop));
    float ms = 0;
    MC_CUDA_TRY(cudaEventElapsedTime(&ms, start, stop));
    state.SetIterationTime(static_cast<double>(ms) / 1e3);
  }
  MC_CUDA_TRY(cudaEventDestroy(start));
  MC_CUDA_TRY(cudaEventDestroy(stop));
}

void BM_Assemble_DeviceFull(benchmark::State& state) {
  auto& f = Fixture::get();
  static Buffers b;
  time_loop(state, [&](std::int64_t it) { run_plan(f.full, b, static_cast<int>(it % 2), 0); });
  state.counters["rows"] = static_cast<double>(f.rows);
  state.SetBytesProcessed(state.iterations() * f.rows * kD * 4);
}

void BM_Assemble_DevicePatch(benchmark::State& state) {
  auto& f = Fixture::get();
  static Buffers b;
  time_loop(state, [&](std::int64_t it) {
    run_plan(f.patches[static_cast<std::size_t>(it % kSteps)], b, static_cast<int>(it % 2), 0);
  });
  state.counters["rows"] = static_cast<double>(f.rows);
  state.counters["fresh_rows_per_step"] = f.fresh_per_step;
  state.SetBytesProcessed(state.iterations() * f.rows * kD * 4);
}

// Baseline: the host assembled the context; upload all of it.
void BM_Assemble_HostUpload_ref(benchmark::State& state) {
  auto& f = Fixture::get();
  static Buffers b;
  std::copy(f.host_rows.begin(), f.host_rows.end(), b.h_rows);
  time_loop(state, [&](std::int64_t) {
    MC_CUDA_TRY(cudaMemcpyAsync(b.rows[0], b.h_rows, f.host_rows.size() * sizeof(float),
                                cudaMemcpyHostToDevice, 0));
  });
  state.counters["rows"] = static_cast<double>(f.rows);
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(f.host_rows.size()) * 4);
}

}  // namespace

BENCHMARK(BM_Assemble_DeviceFull)->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_Assemble_DevicePatch)->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_Assemble_HostUpload_ref)->UseManualTime()->Unit(benchmark::kMicrosecond);

MC_CUDA_BENCHMARK_MAIN("bench_assemble")
