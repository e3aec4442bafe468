// SPDX-License-Identifier: Apache-2.0
// CPU/GPU parity of working-context assembly (mc::cuda::assemble_rows, device_assemble.cuh)
// against mc::assemble (assemble.hpp): a full assembly, then 300 allocator steps each patched
// on the device from the previous device buffers; rows and positions must match bit for bit
// (they are copies and the same position maths). Outputs poisoned, guards checked, stream and
// graph launch modes, and an entry outside the tree raises the error flag.
#include <doctest/doctest.h>

#include <megacontext/assemble.hpp>
#include <megacontext/device_assemble.cuh>
#include <megacontext/focus_allocator.hpp>
#include <megacontext/policies/budget_optimal.hpp>
#include <megacontext/tree.hpp>

#include <cstring>
#include <random>
#include <vector>

#include "common/random.hpp"
#include "common/tree_fixtures.hpp"
#include "cuda/parity.cuh"

namespace {

using C = mc::Config<8, 3>;
using mc::test::GuardedBuffer;
using mc::test::LaunchMode;

template <class T>
void upload(GuardedBuffer<T>& b, const std::vector<T>& host) {
  REQUIRE(host.size() <= b.size());
  MC_CUDA_TRY(cudaMemcpy(b.data(), host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
  MC_CUDA_TRY(cudaDeviceSynchronize());
}

// The tree and table on the device.
struct DeviceTree {
  GuardedBuffer<float> table;
  GuardedBuffer<mc::TokenId> tokens;
  std::vector<std::unique_ptr<GuardedBuffer<float>>> gists;
  mc::cuda::AssembleSource src;

  DeviceTree(const mc::MemoryTree<C>& tree, const mc::MeanPoolGister<C>& g)
      : table(static_cast<std::size_t>(g.table().size())),
        tokens(static_cast<std::size_t>(tree.num_tokens())) {
    upload(table, std::vector<float>(g.table().data(), g.table().data() + g.table().size()));
    const auto ids = tree.tokens(0, tree.num_tokens());
    upload(tokens, std::vector<mc::TokenId>(ids.begin(), ids.end()));
    src.d_token_table = table.data();
    src.vocab = g.vocab();
    src.d_tokens = tokens.data();
    src.num_tokens = tree.num_tokens();
    src.d = tree.dim();
    src.k = C::K;
    src.depth = C::Depth;
    for (int l = 1; l <= C::Depth; ++l) {
      const auto v = tree.gists(l, 0, tree.level_size(l));
      gists.push_back(std::make_unique<GuardedBuffer<float>>(static_cast<std::size_t>(v.size())));
      upload(*gists.back(), std::vector<float>(v.data(), v.data() + v.size()));
      src.d_gists[l] = gists.back()->data();
      src.level_rows[l] = tree.level_size(l);
    }
  }
};

// Device rows/positions of one assembly, with capacity for w_max rows.
struct DeviceRows {
  GuardedBuffer<float> rows;
  GuardedBuffer<mc::GaussianPosition> positions;
  std::int64_t n = 0;
  DeviceRows(std::int64_t w_max, std::int64_t d)
      : rows(static_cast<std::size_t>(w_max * d)), positions(static_cast<std::size_t>(w_max)) {}
};

// Runs one plan from `old` into `out` in `mode`; returns the error flags.
int run_plan(const mc::cuda::AssemblePlan& plan, const DeviceTree& dt, DeviceRows& old,
             DeviceRows& out, LaunchMode mode, const mc::test::Stream& stream) {
  GuardedBuffer<mc::cuda::AssembleSegment> segs(std::max<std::size_t>(1, plan.segments.size()));
  GuardedBuffer<mc::WcEntry> fresh(std::max<std::size_t>(1, plan.fresh_entries.size()));
  GuardedBuffer<int> err(1);
  if (!plan.segments.empty()) upload(segs, plan.segments);
  if (!plan.fresh_entries.empty()) upload(fresh, plan.fresh_entries);
  upload(err, std::vector<int>{0});
  out.rows.poison();
  out.positions.poison();
  mc::test::launch(mode, stream, [&](cudaStream_t s) {
    return mc::cuda::assemble_rows(dt.src, segs.data(), static_cast<std::int64_t>(plan.segments.size()),
                                   fresh.data(), old.rows.data(), old.positions.data(),
                                   plan.num_rows, out.rows.data(), out.positions.data(), err.data(), s);
  });
  out.n = plan.num_rows;
  CHECK(out.rows.guards_intact());
  CHECK(out.positions.guards_intact());
  return err.download()[0];
}

void check_equal(DeviceRows& gpu, const mc::AssembledContext<float>& cpu) {
  const auto rows = gpu.rows.download();
  const auto pos = gpu.positions.download();
  const auto n = static_cast<std::size_t>(cpu.embeddings.size());
  REQUIRE(gpu.n == cpu.embeddings.rows());
  const std::vector<float> got(rows.begin(), rows.begin() + static_cast<std::ptrdiff_t>(n));
  const std::vector<float> want(cpu.embeddings.data(), cpu.embeddings.data() + n);
  const auto c = mc::test::compare_exact(got, want);
  REQUIRE_MESSAGE(c.ok, c.report);
  for (std::size_t i = 0; i < cpu.positions.size(); ++i) {
    REQUIRE_MESSAGE(std::memcmp(&pos[i], &cpu.positions[i], sizeof(mc::GaussianPosition)) == 0,
                    "position of row ", i, ": gpu (", pos[i].t, ", ", pos[i].sigma, ") cpu (",
                    cpu.positions[i].t, ", ", cpu.positions[i].sigma, ")");
  }
}

}  // namespace

TEST_CASE("cuda assemble: full and patched device assembly equal the CPU reference bit for bit") {
  INFO(mc::test::seed_info());
  const std::int64_t d = 36, n_tokens = 30'000;
  auto g = mc::MeanPoolGister<C>::random(300, d, 5);
  mc::MemoryTree<C> tree(d);
  tree.append(mc::test::stream_tokens(0, n_tokens, 300), g);
  const DeviceTree dt(tree, g);
  mc::WorkingContextOptions wo{600, 4};
  mc::FocusOptions fo;
  fo.recent_tokens = 64;
  fo.cooldown_steps = 1;
  mc::FocusAllocator<C, mc::BudgetOptimal> alloc(fo, wo);
  mc::WorkingContext<C> wc(wo);
  mc::test::Stream stream;
  DeviceRows a(wo.w_max, d), b(wo.w_max, d);
  DeviceRows* cur = &a;
  DeviceRows* next = &b;
  auto rng = mc::test::rng(41);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::int64_t n = 2000, fresh_rows = 0, all_rows = 0;
  alloc.admit(wc, n);
  mc::AssembledContext<float> cpu;
  for (LaunchMode mode : mc::test::kLaunchModes) {
    INFO("mode ", mc::test::to_string(mode));
    REQUIRE(run_plan(mc::cuda::plan_full(wc), dt, *next, *cur, mode, stream) == 0);
    mc::assemble(wc, tree, g, cpu);
    check_equal(*cur, cpu);
  }
  for (int step = 0; step < 300; ++step) {
    const LaunchMode mode = step % 2 ? LaunchMode::kGraph : LaunchMode::kStream;
    wc.begin_patch();
    n = std::min(n_tokens, n + static_cast<std::int64_t>(rng() % 40));
    alloc.admit(wc, n);  // patches accumulate across admit and step until the next begin_patch
    std::vector<float> s(static_cast<std::size_t>(wc.size()));
    for (auto& x : s) x = u(rng);
    // admit() and step() each begin their own patch, so patch after each of them.
    const auto plan1 = mc::cuda::plan_patch(wc);
    REQUIRE(run_plan(plan1, dt, *cur, *next, mode, stream) == 0);
    std::swap(cur, next);
    alloc.step(wc, s, step % 7 == 0 ? 0.9f : std::nanf(""));
    const auto plan2 = mc::cuda::plan_patch(wc);
    REQUIRE(run_plan(plan2, dt, *cur, *next, mode, stream) == 0);
    std::swap(cur, next);
    fresh_rows += static_cast<std::int64_t>(plan1.fresh_entries.size() + plan2.fresh_entries.size());
    all_rows += 2 * wc.size();
    mc::assemble(wc, tree, g, cpu);
    check_equal(*cur, cpu);
  }
  MESSAGE("300 steps: device patches gathered ", fresh_rows, " of ", all_rows, " rows");
  CHECK(fresh_rows < all_rows / 4);
}

TEST_CASE("cuda assemble: an entry outside the tree raises the error flag and writes NaN") {
  const std::int64_t d = 8;
  auto g = mc::MeanPoolGister<C>::random(50, d, 1);
  mc::MemoryTree<C> tree(d);
  tree.append(mc::test::stream_tokens(0, 100, 50), g);
  const DeviceTree dt(tree, g);
  mc::test::Stream stream;
  DeviceRows old(4, d), out(4, d);
  mc::cuda::AssemblePlan plan;
  plan.num_rows = 2;
  plan.segments = {{0, 2, -1, 0}};
  plan.fresh_entries = {mc::WcEntry{5, 0, 0}, mc::WcEntry{99, 2, 0}};  // LOD2 has 1 node here
  const int flags = run_plan(plan, dt, old, out, LaunchMode::kStream, stream);
  CHECK(flags == mc::cuda::kAssembleBadIndex);
  const auto rows = out.rows.download();
  CHECK(rows[0] == g.table()(tree.tokens(5, 6)[0], 0));
  CHECK(std::isnan(rows[d]));
  CHECK_THROWS_WITH_AS(mc::cuda::throw_if_assemble_failed(flags),
                       doctest::Contains("a node the tree does not hold"), mc::Error);
}
