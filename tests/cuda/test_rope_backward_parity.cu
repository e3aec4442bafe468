// SPDX-License-Identifier: Apache-2.0
// CPU/GPU parity of the Gaussian-RoPE backward (mc::cuda::apply_gaussian_rope_backward,
// cuda/megacontext/device_rope.cuh) against the CPU reference's backward rule (the table with
// sin negated, as reference::attention_backward applies it) in fp64, for every compiled d_head,
// tokens and LOD entries (σ > 0), in place and out of place, stream and graph launches; and the
// adjoint identity <R x, y> = <x, Rᵀ y> between the GPU forward and backward.
#include <doctest/doctest.h>

#include <megacontext/device_rope.cuh>
#include <megacontext/dispatch.cuh>
#include <megacontext/gaussian_rope.hpp>

#include <cstdint>
#include <random>
#include <vector>

#include "common/random.hpp"
#include "cuda/parity.cuh"

namespace {

using mc::test::GuardedBuffer;
using mc::test::LaunchMode;

std::vector<mc::GaussianPosition> positions(std::int64_t n, std::uint64_t salt) {
  auto gen = mc::test::rng(salt);
  std::uniform_real_distribution<double> t(0.0, 1e6);
  std::vector<mc::GaussianPosition> p(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i)
    p[static_cast<std::size_t>(i)] = {i % 3 == 0 ? static_cast<double>(i) : t(gen),
                                      i % 3 == 2 ? 9.23 : 0.0};
  return p;
}

std::vector<float> randn(std::size_t n, std::uint64_t salt) {
  auto gen = mc::test::rng(salt);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = d(gen);
  return v;
}

}  // namespace

TEST_CASE("cuda apply_gaussian_rope_backward applies the transpose rotation (fp64 reference)") {
  const mc::test::Stream stream;
  for (const int d_head : mc::HeadDims::values)
    for (const std::int64_t n : {std::int64_t{1}, std::int64_t{127}, std::int64_t{1000}})
      for (const LaunchMode mode : mc::test::kLaunchModes)
        for (const bool in_place : {false, true}) {
          if (in_place && mode == LaunchMode::kGraph) continue;  // two replays would rotate twice
          INFO("d_head=", d_head, " n=", n, " launch=", mc::test::to_string(mode),
               " in_place=", in_place, " ", mc::test::seed_info());
          const int heads = 3;
          mc::GaussianRopeOptions o;
          o.d_head = d_head;
          const auto pos = positions(n, static_cast<std::uint64_t>(d_head + n));
          const auto dy = randn(static_cast<std::size_t>(n * heads * d_head), static_cast<std::uint64_t>(n));
          mc::GaussianRopeTable table = mc::gaussian_rope_table(pos.data(), n, o);
          table.sin = -table.sin;
          std::vector<double> ref(dy.begin(), dy.end());
          mc::apply_gaussian_rope(ref.data(), ref.data(), n, heads, table);
          GuardedBuffer<float> gdy(dy.size()), gdx(in_place ? 0 : dy.size());
          GuardedBuffer<mc::GaussianPosition> gp(pos.size());
          gdy.upload(dy);
          gp.upload(pos);
          if (!in_place) gdx.poison();
          float* out = in_place ? gdy.data() : gdx.data();
          mc::test::launch(mode, stream, [&](cudaStream_t s) {
            return mc::cuda::apply_gaussian_rope_backward(gdy.data(), out, gp.data(), n, heads, o, s);
          });
          const auto cmp = mc::test::compare_close(in_place ? gdy.download() : gdx.download(), ref,
                                                   1e-5, 1e-5, 1e-12);
          CHECK_MESSAGE(cmp.ok, cmp.report);
          CHECK(gdy.guards_intact());
          CHECK(gdx.guards_intact());
          CHECK(gp.guards_intact());
        }
}

TEST_CASE("cuda Gaussian RoPE: backward is the adjoint of forward, <R x, y> = <x, R^T y>") {
  const mc::test::Stream stream;
  const std::int64_t n = 333;
  const int heads = 2;
  for (const int d_head : mc::HeadDims::values) {
    mc::GaussianRopeOptions o;
    o.d_head = d_head;
    const auto pos = positions(n, 99);
    const auto x = randn(static_cast<std::size_t>(n * heads * d_head), 1);
    const auto y = randn(x.size(), 2);
    GuardedBuffer<float> gx(x.size()), gy(y.size()), grx(x.size()), grty(y.size());
    GuardedBuffer<mc::GaussianPosition> gp(pos.size());
    gx.upload(x);
    gy.upload(y);
    gp.upload(pos);
    mc::test::launch(LaunchMode::kStream, stream, [&](cudaStream_t s) {
      MC_CUDA_RETURN_IF_ERROR(mc::cuda::apply_gaussian_rope(gx.data(), grx.data(), gp.data(), n, heads, o, s));
      return mc::cuda::apply_gaussian_rope_backward(gy.data(), grty.data(), gp.data(), n, heads, o, s);
    });
    const auto rx = grx.download(), rty = grty.download();
    double lhs = 0, rhs = 0, scale = 0;
    for (std::size_t i = 0; i < x.size(); ++i) {
      lhs += static_cast<double>(rx[i]) * y[i];
      rhs += static_cast<double>(x[i]) * rty[i];
      scale += std::abs(static_cast<double>(x[i]) * y[i]);
    }
    INFO("d_head=", d_head, " <Rx,y> = ", lhs, " <x,R^T y> = ", rhs);
    CHECK(std::abs(lhs - rhs) <= 1e-6 * scale);
  }
}
