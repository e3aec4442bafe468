// SPDX-License-Identifier: Apache-2.0
// CPU/GPU parity of the row-major cuBLAS helpers (cuda/megacontext/device_gemm.cuh) against an
// fp64 loop: every transpose combination, awkward shapes, alpha/beta, strided-batched with a
// shared (stride 0) operand, all three GemmMath modes, stream and graph launches. Bound per
// element (Higham): |C − C_ref| <= γ · Σ_l |a_il|·|b_lj| (+ the same for beta·C), with
// γ = 2u_in + k·2^-24 where u_in is the unit roundoff of the inputs' format (fp32 2^-24, TF32
// 2^-11, BF16 2^-8); plus NMSE <= 4·γ².
#include <doctest/doctest.h>

#include <megacontext/device_gemm.cuh>

#include <cmath>
#include <cstdint>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "common/random.hpp"
#include "cuda/parity.cuh"

namespace {

using mc::cuda::GemmMath;
using mc::test::GuardedBuffer;
using mc::test::LaunchMode;

double unit_roundoff(GemmMath m) {
  switch (m) {
    case GemmMath::kFp32: return std::ldexp(1.0, -24);
    case GemmMath::kTf32: return std::ldexp(1.0, -11);
    case GemmMath::kBf16: return std::ldexp(1.0, -8);
  }
  return 1.0;
}

std::vector<float> randn(std::size_t n, std::uint64_t salt) {
  auto gen = mc::test::rng(salt);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = d(gen);
  return v;
}

// Row-major reference C = alpha·op(A)·op(B) + beta·C0 and the magnitude Σ|a||b| (+|beta·c0|).
void reference_gemm(bool ta, bool tb, std::int64_t m, std::int64_t n, std::int64_t k, double alpha,
                    const std::vector<float>& a, const std::vector<float>& b, double beta,
                    const std::vector<float>& c0, std::vector<double>& c, std::vector<double>& mag) {
  c.assign(static_cast<std::size_t>(m * n), 0.0);
  mag.assign(c.size(), 0.0);
  for (std::int64_t i = 0; i < m; ++i)
    for (std::int64_t j = 0; j < n; ++j) {
      double s = 0, s_abs = 0;
      for (std::int64_t l = 0; l < k; ++l) {
        const double av = ta ? a[static_cast<std::size_t>(l * m + i)] : a[static_cast<std::size_t>(i * k + l)];
        const double bv = tb ? b[static_cast<std::size_t>(j * k + l)] : b[static_cast<std::size_t>(l * n + j)];
        s += av * bv;
        s_abs += std::abs(av * bv);
      }
      const std::size_t e = static_cast<std::size_t>(i * n + j);
      const double cb = beta != 0.0 ? beta * c0[e] : 0.0;
      c[e] = alpha * s + cb;
      mag[e] = std::abs(alpha) * s_abs + std::abs(cb);
    }
}

void check_bound(const std::vector<float>& gpu, const std::vector<double>& ref,
                 const std::vector<double>& mag, double gamma, const std::string& what) {
  std::int64_t bad = 0;
  double worst = 0, sq_err = 0, sq_ref = 0;
  for (std::size_t i = 0; i < gpu.size(); ++i) {
    const double err = std::abs(static_cast<double>(gpu[i]) - ref[i]);
    if (!(err <= gamma * mag[i] + 1e-30)) ++bad;  // NaN fails
    if (mag[i] > 0) worst = std::max(worst, err / mag[i]);
    sq_err += err * err;
    sq_ref += ref[i] * ref[i];
  }
  INFO(what, ": worst err/Σ|ab| = ", worst, " (γ = ", gamma, "), NMSE = ", sq_err / sq_ref);
  CHECK(bad == 0);
  CHECK(sq_ref > 0);
  CHECK(sq_err / sq_ref <= 4 * gamma * gamma);
}

struct Shape {
  std::int64_t m, n, k;
};
constexpr Shape kShapes[] = {{1, 1, 1}, {3, 5, 7}, {33, 65, 17}, {128, 96, 200}, {257, 129, 64}};

}  // namespace

TEST_CASE("cuda gemm: row-major C = alpha op(A) op(B) + beta C matches fp64 in every mode") {
  const mc::test::Stream stream;
  mc::cuda::CublasHandle handle;
  std::uint64_t salt = 100;
  for (const GemmMath math : {GemmMath::kFp32, GemmMath::kTf32, GemmMath::kBf16})
    for (const Shape sh : kShapes)
      for (int t = 0; t < 4; ++t)
        for (const double beta : {0.0, 0.5}) {
          const bool ta = (t & 1) != 0, tb = (t & 2) != 0;
          const LaunchMode mode = (salt % 2 == 0) ? LaunchMode::kStream : LaunchMode::kGraph;
          std::ostringstream os;
          os << "math=" << mc::cuda::to_string(math) << " m=" << sh.m << " n=" << sh.n
             << " k=" << sh.k << " ta=" << ta << " tb=" << tb << " beta=" << beta
             << " launch=" << mc::test::to_string(mode) << " " << mc::test::seed_info();
          INFO(os.str());
          const auto a = randn(static_cast<std::size_t>(sh.m * sh.k), ++salt);
          const auto b = randn(static_cast<std::size_t>(sh.k * sh.n), ++salt);
          const auto c0 = randn(static_cast<std::size_t>(sh.m * sh.n), ++salt);
          GuardedBuffer<float> da(a.size()), db(b.size()), dc(c0.size());
          da.upload(a);
          db.upload(b);
          if (beta == 0.0) dc.poison();  // beta = 0 must not read C
          else dc.upload(c0);
          // A graph replays twice; with beta != 0 the second replay would see the first's C.
          const LaunchMode used = beta != 0.0 ? LaunchMode::kStream : mode;
          mc::test::launch(used, stream, [&](cudaStream_t s) {
            mc::cuda::gemm(handle, ta, tb, sh.m, sh.n, sh.k, 1.5f, da.data(), ta ? sh.m : sh.k,
                           db.data(), tb ? sh.k : sh.n, static_cast<float>(beta), dc.data(), sh.n,
                           math, s);
            return cudaSuccess;
          });
          std::vector<double> ref, mag;
          reference_gemm(ta, tb, sh.m, sh.n, sh.k, 1.5, a, b, beta, c0, ref, mag);
          const double gamma = 2 * unit_roundoff(math) + static_cast<double>(sh.k + 2) * std::ldexp(1.0, -24);
          check_bound(dc.download(), ref, mag, gamma, os.str());
          CHECK(da.guards_intact());
          CHECK(db.guards_intact());
          CHECK(dc.guards_intact());
        }
}

TEST_CASE("cuda gemm_strided_batched: a stride-0 operand is shared by every batch entry") {
  const mc::test::Stream stream;
  mc::cuda::CublasHandle handle;
  const std::int64_t m = 37, n = 48, k = 64, batch = 3;
  for (const LaunchMode mode : mc::test::kLaunchModes)
    for (const bool ta : {false, true}) {
      INFO("launch=", mc::test::to_string(mode), " ta=", ta, " ", mc::test::seed_info());
      const auto a = randn(static_cast<std::size_t>(m * k), 7);
      const auto b = randn(static_cast<std::size_t>(batch * k * n), 8);
      GuardedBuffer<float> da(a.size()), db(b.size()), dc(static_cast<std::size_t>(batch * m * n));
      da.upload(a);
      db.upload(b);
      dc.poison();
      mc::test::launch(mode, stream, [&](cudaStream_t s) {
        mc::cuda::gemm_strided_batched(handle, ta, false, m, n, k, 1.0f, da.data(), ta ? m : k, 0,
                                       db.data(), n, k * n, 0.0f, dc.data(), n, m * n, batch,
                                       GemmMath::kTf32, s);
        return cudaSuccess;
      });
      const auto got = dc.download();
      for (std::int64_t i = 0; i < batch; ++i) {
        const std::vector<float> bi(b.begin() + i * k * n, b.begin() + (i + 1) * k * n);
        std::vector<double> ref, mag;
        reference_gemm(ta, false, m, n, k, 1.0, a, bi, 0.0, {}, ref, mag);
        const std::vector<float> gi(got.begin() + i * m * n, got.begin() + (i + 1) * m * n);
        check_bound(gi, ref, mag, 2 * std::ldexp(1.0, -11) + (k + 2) * std::ldexp(1.0, -24),
                    "batch entry " + std::to_string(i));
      }
      CHECK(dc.guards_intact());
    }
}

TEST_CASE("cuda gemm: bad shapes and leading dims throw mc::Error before any cuBLAS call") {
  mc::cuda::CublasHandle handle;
  float* p = reinterpret_cast<float*>(std::uintptr_t{4096});
  CHECK_THROWS_WITH_AS(mc::cuda::gemm(handle, false, false, 4, 4, 4, 1.0f, p, 3, p, 4, 0.0f, p, 4),
                       doctest::Contains("[mc.gemm.bad_ld]"), mc::Error);
  CHECK_THROWS_WITH_AS(mc::cuda::gemm(handle, false, false, -1, 4, 4, 1.0f, p, 4, p, 4, 0.0f, p, 4),
                       doctest::Contains("[mc.gemm.bad_shape]"), mc::Error);
  CHECK_THROWS_WITH_AS(
      mc::cuda::gemm(handle, false, false, 4, 4, 4, 1.0f, nullptr, 4, p, 4, 0.0f, p, 4),
      doctest::Contains("[mc.gemm.null_pointer]"), mc::Error);
  CHECK_THROWS_WITH_AS(mc::cuda::gemm_strided_batched(handle, false, false, 4, 4, 4, 1.0f, p, 4, 0,
                                                      p, 4, 16, 0.0f, p, 4, 8, 2),
                       doctest::Contains("[mc.gemm.bad_stride]"), mc::Error);
}
