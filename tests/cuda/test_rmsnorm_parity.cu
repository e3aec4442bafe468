// SPDX-License-Identifier: Apache-2.0
// CPU/GPU parity of RMSNorm (cuda/megacontext/device_rmsnorm.cuh) against the Eigen reference
// mc::reference::rmsnorm_forward / rmsnorm_backward run in fp64 on the same fp32 inputs: awkward
// row counts and widths (1, 33, 128, 512, 4096), forward outputs and rstd poisoned, the backward
// adding onto a non-zero dx, the gain gradient from the multi-block reduction, guards, stream and
// graph launches. fp32 arithmetic over d terms: per element |err| <= 1e-5 + 1e-4·|ref|.
#include <doctest/doctest.h>

#include <megacontext/device_rmsnorm.cuh>
#include <megacontext/reference/rmsnorm.hpp>

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "common/random.hpp"
#include "cuda/parity.cuh"

namespace {

using mc::test::GuardedBuffer;
using mc::test::LaunchMode;
using RowMatD = mc::RowMatrix<double>;

std::vector<float> randn(std::size_t n, std::uint64_t salt, float scale = 1.0f, float mean = 0.0f) {
  auto gen = mc::test::rng(salt);
  std::normal_distribution<float> d(mean, scale);
  std::vector<float> v(n);
  for (float& x : v) x = d(gen);
  return v;
}

std::vector<double> to_vec(const double* p, std::size_t n) { return {p, p + n}; }

void check_case(std::int64_t n, std::int64_t d, LaunchMode mode, const mc::test::Stream& stream) {
  INFO("n=", n, " d=", d, " launch=", mc::test::to_string(mode), " ", mc::test::seed_info());
  const std::uint64_t salt = static_cast<std::uint64_t>(n * 131 + d);
  const auto x = randn(static_cast<std::size_t>(n * d), salt + 1, 2.0f);
  const auto w = randn(static_cast<std::size_t>(d), salt + 2, 0.3f, 1.0f);
  const auto dy = randn(x.size(), salt + 3);
  const auto dx0 = randn(x.size(), salt + 4);
  const double eps = 1e-5;

  RowMatD xr = Eigen::Map<const mc::RowMatrix<float>>(x.data(), n, d).cast<double>();
  mc::reference::Vector<double> wr = Eigen::Map<const Eigen::VectorXf>(w.data(), d).cast<double>();
  RowMatD yr;
  mc::reference::Vector<double> rr;
  mc::reference::rmsnorm_forward(xr, wr, eps, yr, rr);
  RowMatD dyr = Eigen::Map<const mc::RowMatrix<float>>(dy.data(), n, d).cast<double>();
  RowMatD dxr = Eigen::Map<const mc::RowMatrix<float>>(dx0.data(), n, d).cast<double>();
  mc::reference::Vector<double> dwr = mc::reference::Vector<double>::Zero(d);
  mc::reference::rmsnorm_backward(dyr, xr, wr, rr, dxr, &dwr);

  GuardedBuffer<float> gx(x.size()), gw(w.size()), gy(x.size()), gr(static_cast<std::size_t>(n));
  GuardedBuffer<float> gdy(x.size()), gdx(x.size()), gdw(w.size());
  const std::size_t ws_bytes = mc::cuda::rmsnorm_backward_workspace_bytes(n, d);
  GuardedBuffer<unsigned char> ws(ws_bytes);
  gx.upload(x);
  gw.upload(w);
  gdy.upload(dy);
  gy.poison();
  gr.poison();
  gdw.poison();
  mc::test::launch(mode, stream, [&](cudaStream_t s) {
    return mc::cuda::rmsnorm_forward(gx.data(), gw.data(), n, d, eps, gy.data(), gr.data(), s);
  });
  auto cy = mc::test::compare_close(gy.download(), to_vec(yr.data(), yr.size()), 1e-5, 1e-4, 1e-10);
  CHECK_MESSAGE(cy.ok, "y: ", cy.report);
  auto cr = mc::test::compare_close(gr.download(), to_vec(rr.data(), rr.size()), 0, 1e-5, 1e-11);
  CHECK_MESSAGE(cr.ok, "rstd: ", cr.report);
  // The backward adds to dx, so a graph (replayed twice) is checked against two additions.
  gdx.upload(dx0);
  mc::test::launch(mode, stream, [&](cudaStream_t s) {
    return mc::cuda::rmsnorm_backward(gdy.data(), gx.data(), gw.data(), gr.data(), n, d,
                                      gdx.data(), gdw.data(), ws.data(), ws_bytes, s);
  });
  RowMatD want = dxr;
  if (mode == LaunchMode::kGraph)
    want += dxr - Eigen::Map<const mc::RowMatrix<float>>(dx0.data(), n, d).cast<double>();
  // With d = 1, dx = g·r·eps/(x² + eps) is pure cancellation (~1e-6 of its terms): the
  // per-element bound still holds, a relative NMSE bound on it does not.
  auto cdx = mc::test::compare_close(gdx.download(), to_vec(want.data(), want.size()), 1e-5, 1e-4,
                                     d == 1 ? 1.0 : 1e-10);
  CHECK_MESSAGE(cdx.ok, "dx: ", cdx.report);
  auto cdw = mc::test::compare_close(gdw.download(), to_vec(dwr.data(), dwr.size()),
                                     1e-5 * std::sqrt(static_cast<double>(n)), 1e-4, 1e-10);
  CHECK_MESSAGE(cdw.ok, "dw: ", cdw.report);
  for (auto* b : {&gx, &gw, &gy, &gr, &gdy, &gdx, &gdw}) CHECK(b->guards_intact());
  CHECK(ws.guards_intact());
}

}  // namespace

TEST_CASE("cuda rmsnorm forward and backward match the fp64 Eigen reference") {
  const mc::test::Stream stream;
  for (const std::int64_t n : {std::int64_t{1}, std::int64_t{7}, std::int64_t{1000}, std::int64_t{4097}})
    for (const std::int64_t d : {std::int64_t{1}, std::int64_t{33}, std::int64_t{128}, std::int64_t{512}, std::int64_t{4096}})
      for (const LaunchMode mode : mc::test::kLaunchModes) {
        if (n * d > 4'000'000) continue;
        check_case(n, d, mode, stream);
      }
}

TEST_CASE("cuda rmsnorm: the gain gradient is bit-identical run to run (fixed-order reduction)") {
  const mc::test::Stream stream;
  const std::int64_t n = 3000, d = 384;
  const auto x = randn(static_cast<std::size_t>(n * d), 11);
  const auto w = randn(static_cast<std::size_t>(d), 12);
  std::vector<float> r(static_cast<std::size_t>(n), 0.7f);
  GuardedBuffer<float> gx(x.size()), gw(w.size()), gr(r.size()), gdx(x.size()), gdw(w.size());
  const std::size_t bytes = mc::cuda::rmsnorm_backward_workspace_bytes(n, d);
  GuardedBuffer<unsigned char> ws(bytes);
  gx.upload(x);
  gw.upload(w);
  gr.upload(r);
  std::vector<float> first;
  for (int run = 0; run < 3; ++run) {
    gdw.poison();
    mc::test::launch(LaunchMode::kStream, stream, [&](cudaStream_t s) {
      return mc::cuda::rmsnorm_backward(gx.data(), gx.data(), gw.data(), gr.data(), n, d,
                                        gdx.data(), gdw.data(), ws.data(), bytes, s);
    });
    if (run == 0) first = gdw.download();
    else CHECK(mc::test::compare_exact(gdw.download(), first).ok);
  }
}

TEST_CASE("cuda rmsnorm: bad arguments throw mc::Error before any launch") {
  float* p = reinterpret_cast<float*>(std::uintptr_t{4096});
  CHECK_THROWS_WITH_AS(mc::cuda::rmsnorm_forward(p, p, 4, 0, 1e-5, p, p),
                       doctest::Contains("[mc.rmsnorm.bad_shape]"), mc::Error);
  CHECK_THROWS_WITH_AS(mc::cuda::rmsnorm_forward(p, p, 4, 8, 0.0, p, p),
                       doctest::Contains("[mc.rmsnorm.bad_eps]"), mc::Error);
  CHECK_THROWS_WITH_AS(mc::cuda::rmsnorm_backward(p, p, p, p, 4, 8, p + 1000, nullptr, p, 4),
                       doctest::Contains("[mc.rmsnorm.workspace]"), mc::Error);
  const std::size_t bytes = mc::cuda::rmsnorm_backward_workspace_bytes(4, 8);
  CHECK_THROWS_WITH_AS(mc::cuda::rmsnorm_backward(p, p + 1000, p, p, 4, 8, p + 8, nullptr, p, bytes),
                       doctest::Contains("[mc.rmsnorm.aliasing]"), mc::Error);
}
