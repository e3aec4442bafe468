// SPDX-License-Identifier: Apache-2.0
// CPU/GPU parity of focus selection (mc::cuda::focus_select, cuda/megacontext/
// device_focus_select.cuh) against the CPU FocusAllocator with GreedyThreshold and BudgetOptimal:
// hundreds of random steps for K = 4, 8, 32, two sides kept in lock step. The CPU side steps its
// own context with the real policy (wrapped to record the candidates and the chosen edits); the
// GPU side uploads its own context and the same scores, selects on the device, and replays the
// device's edits through a second allocator (so apply, restores and the step counter are the
// allocator's own). Every step compares the candidate counts, the edits (kind and position, exact)
// and both contexts entry by entry. Outputs are poisoned and guarded; some steps run in a graph.
#include <doctest/doctest.h>

#include <megacontext/device_focus_select.cuh>
#include <megacontext/focus_allocator.hpp>
#include <megacontext/policies/budget_optimal.hpp>
#include <megacontext/policies/greedy_threshold.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "common/random.hpp"
#include "cuda/parity.cuh"

namespace {

using mc::test::GuardedBuffer;
using mc::test::LaunchMode;

// The real policy, plus a record of what the allocator offered it and what it chose.
template <class P>
struct Recording {
  P inner;
  std::vector<mc::FocusCandidate> expansions, collapses, chosen;
  void plan(const mc::FocusPlanInput& in, std::vector<mc::FocusCandidate>& out) {
    expansions.assign(in.expansions.begin(), in.expansions.end());
    collapses.assign(in.collapses.begin(), in.collapses.end());
    const std::size_t before = out.size();
    inner.plan(in, out);
    chosen.assign(out.begin() + static_cast<std::ptrdiff_t>(before), out.end());
  }
};

// Chooses whatever the device chose (the allocator still checks the cap and the budget, and
// WorkingContext::apply checks every edit is legal).
struct Replay {
  std::vector<mc::FocusCandidate> next;
  void plan(const mc::FocusPlanInput&, std::vector<mc::FocusCandidate>& out) {
    out.insert(out.end(), next.begin(), next.end());
  }
};

std::vector<mc::FocusEdit> sorted_edits(const std::vector<mc::FocusCandidate>& c) {
  std::vector<mc::FocusEdit> e;
  for (const auto& x : c) e.push_back(x.edit);
  std::sort(e.begin(), e.end(), [](const auto& a, const auto& b) { return a.pos < b.pos; });
  return e;
}

struct RunStats {
  std::int64_t edits = 0, expansions = 0, collapses = 0, full_steps = 0;
};

template <class C, class Policy>
RunStats run_lock_step(std::int64_t w_max, std::int64_t sinks, std::int64_t recent, int max_edits,
                       int steps, std::int64_t big_jump, std::uint64_t salt,
                       const mc::test::Stream& stream) {
  INFO(mc::test::seed_info(), " K = ", C::K, " Depth = ", C::Depth, " w_max = ", w_max,
       " max_edits = ", max_edits);
  auto rng = mc::test::rng(salt);
  const mc::WorkingContextOptions wo{w_max, sinks};
  mc::FocusOptions fo;
  fo.recent_tokens = recent;
  fo.max_edits = max_edits;
  fo.cooldown_steps = 3;
  fo.residency_stats = false;
  mc::FocusAllocator<C, Recording<Policy>> cpu(fo, wo);
  mc::FocusAllocator<C, Replay> gpu(fo, wo);
  mc::WorkingContext<C> wc_cpu(wo), wc_gpu(wo);

  GuardedBuffer<mc::WcEntry> d_entries(static_cast<std::size_t>(w_max));
  GuardedBuffer<float> d_scores(static_cast<std::size_t>(w_max));
  GuardedBuffer<mc::FocusEdit> d_edits(static_cast<std::size_t>(std::max(max_edits, 1)));
  GuardedBuffer<mc::cuda::FocusSelectResult> d_result(1);
  // Workspace for the largest context (temp_bytes grows with n).
  std::size_t temp_bytes = 0;
  {
    mc::cuda::FocusSelectParams p;
    p.num_entries = w_max;
    p.max_edits = max_edits;
    MC_CUDA_TRY((mc::cuda::focus_select<C, Policy>(nullptr, temp_bytes, nullptr, nullptr, p,
                                                   nullptr, nullptr, stream.get())));
  }
  GuardedBuffer<unsigned char> d_temp(temp_bytes);

  std::int64_t n = 0;
  std::vector<float> scores;
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  RunStats stats;
  for (int step = 0; step < steps; ++step) {
    const auto kind = rng() % 20;
    n += kind == 0    ? static_cast<std::int64_t>(rng() % (big_jump * C::K))
         : kind >= 15 ? 0
                      : static_cast<std::int64_t>(rng() % (2 * C::K));
    cpu.admit(wc_cpu, n, scores);
    gpu.admit(wc_gpu, n, scores);
    REQUIRE(std::equal(wc_cpu.entries().begin(), wc_cpu.entries().end(), wc_gpu.entries().begin(),
                       wc_gpu.entries().end()));
    // Scores as in the CPU property test (smooth field or noise, sometimes biased), and in a
    // third of the steps quantised to 1/8 so that ties in |score| and means exactly on a
    // threshold happen often.
    const std::int64_t size = wc_cpu.size();
    scores.resize(static_cast<std::size_t>(size));
    const float bias = kind == 1 ? 0.6f : kind == 2 ? -0.6f : 0.0f;
    const bool smooth = rng() % 2 == 0, quantised = rng() % 3 == 0;
    const double freq = 1.0 / static_cast<double>(1 + rng() % (8 * C::K * C::K));
    const double phase = u(rng) * 3.0;
    for (std::int64_t i = 0; i < size; ++i) {
      const auto t = static_cast<double>(mc::Lod<C>::tokens(wc_cpu[i].node()).begin);
      const float field = smooth ? static_cast<float>(std::sin(t * freq + phase)) : 0.0f;
      float s = std::clamp(field + (smooth ? 0.2f : 1.0f) * u(rng) + bias, -1.0f, 1.0f);
      if (quantised) s = std::round(s * 8.0f) / 8.0f;
      scores[static_cast<std::size_t>(i)] = s;
    }

    // GPU side: its own context and the scores.
    const mc::cuda::FocusSelectParams p = mc::cuda::focus_select_params(wc_gpu, gpu);
    std::vector<mc::WcEntry> entries(wc_gpu.entries().begin(), wc_gpu.entries().end());
    entries.resize(static_cast<std::size_t>(w_max));
    std::vector<float> padded = scores;
    padded.resize(static_cast<std::size_t>(w_max), 0.0f);
    d_entries.upload(entries);
    d_scores.upload(padded);
    d_edits.poison();
    d_result.poison();
    const LaunchMode mode = step % 16 == 7 ? LaunchMode::kGraph : LaunchMode::kStream;
    mc::test::launch(mode, stream, [&](cudaStream_t s) {
      std::size_t bytes = temp_bytes;
      return mc::cuda::focus_select<C, Policy>(d_temp.data(), bytes, d_entries.data(),
                                               d_scores.data(), p, d_edits.data(),
                                               d_result.data(), s);
    });
    const mc::cuda::FocusSelectResult r = d_result.download()[0];
    REQUIRE(r.bad_score_index == -1);
    REQUIRE(r.num_edits >= 0);
    REQUIRE(r.num_edits <= max_edits);
    std::vector<mc::FocusEdit> dev = d_edits.download();
    dev.resize(static_cast<std::size_t>(r.num_edits));

    // CPU side.
    const mc::FocusReport rc = cpu.step(wc_cpu, scores);
    const auto& rec = cpu.policy();
    INFO("step ", step, " n = ", n, " entries = ", size, " free = ", p.free_entries,
         " launch = ", mc::test::to_string(mode));
    CHECK(r.expand_candidates == static_cast<std::int64_t>(rec.expansions.size()));
    CHECK(r.collapse_candidates == static_cast<std::int64_t>(rec.collapses.size()));
    const std::vector<mc::FocusEdit> ref = sorted_edits(rec.chosen);
    REQUIRE_MESSAGE(dev.size() == ref.size(), "device chose ", dev.size(), " edits, CPU ",
                    ref.size());
    for (std::size_t i = 0; i < ref.size(); ++i)
      REQUIRE_MESSAGE(dev[i] == ref[i], "edit ", i, ": device {kind ", int(dev[i].kind), ", pos ",
                      dev[i].pos, "} CPU {kind ", int(ref[i].kind), ", pos ", ref[i].pos, "}");
    CHECK(r.expansions == rc.expansions);
    CHECK(r.collapses == rc.collapses);

    // Replay on the GPU side's context and compare the contexts.
    auto& replay = gpu.policy().next;
    replay.clear();
    for (const auto& e : dev) replay.push_back({0.0f, e});
    const mc::FocusReport rg = gpu.step(wc_gpu, scores);
    CHECK(rg.restores == rc.restores);
    REQUIRE(std::equal(wc_cpu.entries().begin(), wc_cpu.entries().end(), wc_gpu.entries().begin(),
                       wc_gpu.entries().end()));
    wc_gpu.validate(n);
    REQUIRE(d_edits.guards_intact());
    REQUIRE(d_result.guards_intact());
    REQUIRE(d_temp.guards_intact());

    stats.edits += r.num_edits;
    stats.expansions += r.expansions;
    stats.collapses += r.collapses;
    stats.full_steps += p.free_entries < C::K - 1 ? 1 : 0;
    scores.assign(static_cast<std::size_t>(wc_cpu.size()), 0.0f);
  }
  MESSAGE("K = ", C::K, ", w_max = ", w_max, ", max_edits = ", max_edits, ": ", steps,
          " steps, ", stats.edits, " edits (", stats.expansions, " expansions, ", stats.collapses,
          " collapses), ", stats.full_steps, " steps with no room for an expansion");
  // The run must exercise both kinds of edit, not a frozen context.
  CHECK(stats.edits > steps / 4);
  CHECK(stats.expansions > 0);
  CHECK(stats.collapses > 0);
  return stats;
}

}  // namespace

TEST_CASE_TEMPLATE("cuda focus_select: same edits as the CPU FocusAllocator over random steps",
                   Policy, mc::GreedyThreshold, mc::BudgetOptimal) {
  const mc::test::Stream stream;
  std::int64_t full = 0;
  full += run_lock_step<mc::Config<4, 2>, Policy>(200, 4, 16, 8, 400, 40, 11, stream).full_steps;
  full += run_lock_step<mc::Config<4, 2>, Policy>(200, 0, 16, 3, 300, 40, 12, stream).full_steps;
  full += run_lock_step<mc::Config<8, 3>, Policy>(400, 2, 32, 8, 400, 320, 13, stream).full_steps;
  full += run_lock_step<mc::Config<8, 3>, Policy>(400, 2, 32, 64, 300, 320, 14, stream).full_steps;
  full += run_lock_step<mc::Config<32, 2>, Policy>(2048, 4, 128, 8, 400, 1280, 15, stream).full_steps;
  full += run_lock_step<mc::Config<32, 3>, Policy>(4096, 4, 128, 16, 300, 1280, 16, stream).full_steps;
  // Full contexts are where GreedyThreshold skips expansions that do not fit.
  CHECK(full > 0);
}

TEST_CASE("cuda focus_select: a NaN or out-of-range score chooses nothing and names the entry") {
  using C = mc::Config<8, 2>;
  const mc::test::Stream stream;
  const mc::WorkingContextOptions wo{256, 4};
  mc::FocusOptions fo;
  fo.recent_tokens = 16;
  mc::FocusAllocator<C, mc::GreedyThreshold> alloc(fo, wo);
  mc::WorkingContext<C> wc(wo);
  alloc.admit(wc, 5000);
  const auto size = static_cast<std::size_t>(wc.size());
  REQUIRE(size > 40);
  const mc::cuda::FocusSelectParams p = mc::cuda::focus_select_params(wc, alloc);
  GuardedBuffer<mc::WcEntry> d_entries(size);
  GuardedBuffer<float> d_scores(size);
  GuardedBuffer<mc::FocusEdit> d_edits(static_cast<std::size_t>(fo.max_edits));
  GuardedBuffer<mc::cuda::FocusSelectResult> d_result(1);
  std::size_t temp_bytes = 0;
  MC_CUDA_TRY((mc::cuda::focus_select<C, mc::GreedyThreshold>(nullptr, temp_bytes, nullptr,
                                                              nullptr, p, nullptr, nullptr)));
  GuardedBuffer<unsigned char> d_temp(temp_bytes);
  d_entries.upload(std::vector<mc::WcEntry>(wc.entries().begin(), wc.entries().end()));
  for (const float bad : {std::nanf(""), 1.5f, -1.0001f}) {
    std::vector<float> scores(size, 0.9f);  // every gist wants detail
    scores[size - 3] = bad;
    scores[17] = bad;
    d_scores.upload(scores);
    d_result.poison();
    MC_CUDA_TRY((mc::cuda::focus_select<C, mc::GreedyThreshold>(
        d_temp.data(), temp_bytes, d_entries.data(), d_scores.data(), p, d_edits.data(),
        d_result.data(), stream.get())));
    stream.sync();
    const auto r = d_result.download()[0];
    CHECK(r.bad_score_index == 17);
    CHECK(r.num_edits == 0);
    CHECK_THROWS_WITH_AS(mc::cuda::throw_if_focus_select_failed(r),
                         doctest::Contains("[mc.focus_select.bad_scores] score of entry 17"),
                         mc::Error);
    CHECK_THROWS_WITH_AS(alloc.step(wc, scores), doctest::Contains("[mc.focus.bad_scores]"),
                         mc::Error);
  }
}

TEST_CASE("cuda focus_select: an empty context and max_edits = 0 choose nothing") {
  using C = mc::Config<4, 2>;
  const mc::test::Stream stream;
  GuardedBuffer<mc::cuda::FocusSelectResult> d_result(1);
  GuardedBuffer<mc::FocusEdit> d_edits(4);
  GuardedBuffer<mc::WcEntry> d_entries(64);
  GuardedBuffer<float> d_scores(64);
  d_scores.upload(std::vector<float>(64, 0.9f));
  std::vector<mc::WcEntry> e(64);
  for (int i = 0; i < 64; ++i) e[static_cast<std::size_t>(i)] = {i, 1, 0};
  d_entries.upload(e);
  for (const std::int64_t n : {std::int64_t{0}, std::int64_t{64}}) {
    mc::cuda::FocusSelectParams p;
    p.num_entries = n;
    p.protect_from = 1 << 20;
    p.free_entries = 1000;
    p.cooled = 10;
    p.max_edits = n == 0 ? 4 : 0;
    std::size_t temp_bytes = 0;
    MC_CUDA_TRY((mc::cuda::focus_select<C, mc::BudgetOptimal>(nullptr, temp_bytes, nullptr,
                                                              nullptr, p, nullptr, nullptr)));
    GuardedBuffer<unsigned char> d_temp(temp_bytes);
    d_result.poison();
    d_edits.poison();
    for (const LaunchMode mode : mc::test::kLaunchModes) {
      mc::test::launch(mode, stream, [&](cudaStream_t s) {
        return mc::cuda::focus_select<C, mc::BudgetOptimal>(d_temp.data(), temp_bytes,
                                                            d_entries.data(), d_scores.data(), p,
                                                            d_edits.data(), d_result.data(), s);
      });
      const auto r = d_result.download()[0];
      CHECK(r.num_edits == 0);
      CHECK(r.expand_candidates == n);  // all 64 gists are eligible when n = 64
      CHECK(r.bad_score_index == -1);
      CHECK(d_edits.guards_intact());
      CHECK(d_temp.guards_intact());
    }
  }
}
