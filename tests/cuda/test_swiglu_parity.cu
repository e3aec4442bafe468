// SPDX-License-Identifier: Apache-2.0
// CPU/GPU parity of the SwiGLU gate (cuda/megacontext/device_swiglu.cuh) against the formulas of
// mc::reference::swiglu_forward / swiglu_backward evaluated in fp64 (reference::sigmoid<double>):
// awkward counts, inputs up to |a| = 12 (saturated sigmoid), outputs poisoned, the backward both
// out of place and in place over the forward's cache, stream and graph launches. fp32 with
// expf: |err| <= 1e-6 + 1e-5·|ref|.
#include <doctest/doctest.h>

#include <megacontext/device_swiglu.cuh>
#include <megacontext/reference/swiglu.hpp>

#include <cstdint>
#include <random>
#include <vector>

#include "common/random.hpp"
#include "cuda/parity.cuh"

namespace {

using mc::test::GuardedBuffer;
using mc::test::LaunchMode;

std::vector<float> uniform(std::size_t n, std::uint64_t salt, float lo, float hi) {
  auto gen = mc::test::rng(salt);
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = d(gen);
  return v;
}

}  // namespace

TEST_CASE("cuda swiglu forward and backward match the fp64 reference formulas") {
  const mc::test::Stream stream;
  for (const std::int64_t count : {std::int64_t{1}, std::int64_t{3}, std::int64_t{1377}, std::int64_t{1} << 20})
    for (const LaunchMode mode : mc::test::kLaunchModes)
      for (const bool in_place : {false, true}) {
        INFO("count=", count, " launch=", mc::test::to_string(mode), " in_place=", in_place, " ",
             mc::test::seed_info());
        const auto n = static_cast<std::size_t>(count);
        const auto a = uniform(n, 1 + n, -12.0f, 12.0f);
        const auto b = uniform(n, 2 + n, -3.0f, 3.0f);
        const auto dg = uniform(n, 3 + n, -1.0f, 1.0f);
        std::vector<double> g(n), da(n), db(n);
        for (std::size_t i = 0; i < n; ++i) {
          const double av = a[i], s = mc::reference::sigmoid(av);
          g[i] = av * s * b[i];
          db[i] = dg[i] * av * s;
          da[i] = dg[i] * b[i] * s * (1.0 + av * (1.0 - s));
        }
        GuardedBuffer<float> ga(n), gb(n), gg(n), gdg(n), gda(n), gdb(n);
        ga.upload(a);
        gb.upload(b);
        gdg.upload(dg);
        gg.poison();
        mc::test::launch(mode, stream, [&](cudaStream_t s) {
          return mc::cuda::swiglu_forward(ga.data(), gb.data(), count, gg.data(), s);
        });
        auto cg = mc::test::compare_close(gg.download(), g, 1e-6, 1e-5, 1e-11);
        CHECK_MESSAGE(cg.ok, "g: ", cg.report);
        // In place a graph's second replay would read gradients as inputs: stream only.
        const LaunchMode bmode = in_place ? LaunchMode::kStream : mode;
        float* out_a = in_place ? ga.data() : gda.data();
        float* out_b = in_place ? gb.data() : gdb.data();
        if (!in_place) {
          gda.poison();
          gdb.poison();
        }
        mc::test::launch(bmode, stream, [&](cudaStream_t s) {
          return mc::cuda::swiglu_backward(gdg.data(), ga.data(), gb.data(), count, out_a, out_b, s);
        });
        auto cda = mc::test::compare_close(in_place ? ga.download() : gda.download(), da, 1e-6, 1e-5, 1e-11);
        CHECK_MESSAGE(cda.ok, "da: ", cda.report);
        auto cdb = mc::test::compare_close(in_place ? gb.download() : gdb.download(), db, 1e-6, 1e-5, 1e-11);
        CHECK_MESSAGE(cdb.ok, "db: ", cdb.report);
        for (auto* buf : {&ga, &gb, &gg, &gdg, &gda, &gdb}) CHECK(buf->guards_intact());
      }
}

TEST_CASE("cuda swiglu: bad arguments throw mc::Error before any launch") {
  float* p = reinterpret_cast<float*>(std::uintptr_t{4096});
  CHECK_THROWS_WITH_AS(mc::cuda::swiglu_forward(p, p, -1, p),
                       doctest::Contains("[mc.swiglu.bad_shape]"), mc::Error);
  CHECK_THROWS_WITH_AS(mc::cuda::swiglu_forward(p, nullptr, 4, p),
                       doctest::Contains("[mc.swiglu.null_pointer]"), mc::Error);
  CHECK_THROWS_WITH_AS(mc::cuda::swiglu_forward(p, p + 100, 4, p + 1),
                       doctest::Contains("[mc.swiglu.aliasing]"), mc::Error);
  CHECK_THROWS_WITH_AS(mc::cuda::swiglu_backward(p, p + 100, p + 200, 4, p + 300, p + 302),
                       doctest::Contains("[mc.swiglu.aliasing]"), mc::Error);
}
