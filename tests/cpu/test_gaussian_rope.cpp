// SPDX-License-Identifier: Apache-2.0
// Gaussian RoPE reference: σ = 0 is plain (Llama/HF rotate-half) RoPE bit for bit; the tables
// match the closed form in fp64 and a Monte-Carlo estimate of E[e^{iωτ}], τ ~ N(t, σ²); damping
// falls with σ; the figures quoted in DESIGN.md; shapes, aliasing and argument errors.
#include <doctest/doctest.h>

#include <megacontext/gaussian_rope.hpp>

#include <cmath>
#include <complex>
#include <cstdint>
#include <random>
#include <vector>

#include "common/random.hpp"

namespace {

using Matrix = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using MatrixF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// A matrix [rows, cols] of standard-normal entries from its own derived seed.
template <class M>
M random_normal(Eigen::Index rows, Eigen::Index cols, std::uint64_t salt) {
  auto gen = mc::test::rng(salt);
  std::normal_distribution<double> normal(0.0, 1.0);
  M m(rows, cols);
  for (Eigen::Index i = 0; i < m.size(); ++i)
    m.data()[i] = static_cast<typename M::Scalar>(normal(gen));
  return m;
}

// Positions of tokens, LOD1 and LOD2 entries at random aligned places, plus large t.
std::vector<mc::GaussianPosition> mixed_positions(std::int64_t n, const mc::GaussianRopeOptions& o,
                                                  std::uint64_t salt) {
  auto gen = mc::test::rng(salt);
  std::uniform_int_distribution<std::int64_t> block(0, 10000);
  std::vector<mc::GaussianPosition> p;
  for (std::int64_t i = 0; i < n; ++i) {
    const std::int64_t w = std::int64_t{1} << (5 * (i % 3));  // 1, 32, 1024
    const std::int64_t begin = block(gen) * w;
    p.push_back(mc::gaussian_position({begin, begin + w}, o));
  }
  return p;
}

// Plain RoPE written the way Llama/HF write it: y = x * cos + rotate_half(x) * sin, with
// rotate_half(x) = [-x2, x1] and cos/sin repeated over both halves of the head.
template <class Scalar>
std::vector<Scalar> plain_rope(const std::vector<Scalar>& x, const std::vector<double>& t,
                               int n_heads, int d_head, double base) {
  const int half = d_head / 2;
  std::vector<Scalar> y(x.size());
  for (std::size_t i = 0; i < t.size(); ++i) {
    for (int h = 0; h < n_heads; ++h) {
      const std::size_t off = (i * static_cast<std::size_t>(n_heads) + h) * d_head;
      for (int k = 0; k < d_head; ++k) {
        const int j = k % half;
        const double omega = mc::rope_frequency(j, d_head, base);
        const double c = std::cos(omega * t[i]);
        const double s = std::sin(omega * t[i]);
        const double xk = static_cast<double>(x[off + k]);
        const double rot = k < half ? -static_cast<double>(x[off + k + half])
                                    : static_cast<double>(x[off + k - half]);
        y[off + k] = static_cast<Scalar>(xk * c + rot * s);
      }
    }
  }
  return y;
}

}  // namespace

TEST_CASE("gaussian_rope: band frequencies are base^(-2j/d_head), as Llama/HF compute them") {
  for (const int d_head : {2, 8, 64, 128, 256}) {
    for (const double base : {10000.0, 500000.0, 1.5}) {
      CHECK(mc::rope_frequency(0, d_head, base) == 1.0);
      for (int j = 0; j < mc::rope_num_bands(d_head); ++j) {
        INFO("d_head=", d_head, " base=", base, " j=", j);
        // HF: inv_freq = 1 / base^(arange(0, d, 2) / d).
        const double hf = 1.0 / std::pow(base, (2.0 * j) / d_head);
        CHECK(std::abs(mc::rope_frequency(j, d_head, base) - hf) <= 4e-16 * hf);
        CHECK(mc::rope_partner(j, d_head) == j + d_head / 2);
        if (j > 0)
          CHECK(mc::rope_frequency(j, d_head, base) < mc::rope_frequency(j - 1, d_head, base));
      }
    }
  }
}

TEST_CASE("gaussian_rope: the default policies give tokens t = position and sigma = 0 exactly") {
  const mc::GaussianRopeOptions o;  // kSpanCentre, kUniformSpan
  for (const std::int64_t b :
       {std::int64_t{0}, std::int64_t{1}, std::int64_t{12345}, std::int64_t{9999999}}) {
    const mc::GaussianPosition p = mc::gaussian_position({b, b + 1}, o);
    CHECK(p.t == static_cast<double>(b));
    CHECK(p.sigma == 0.0);
  }
  // Spans: centre is the mean token position, start is begin; σ per policy.
  const mc::GaussianPosition c = mc::gaussian_position({64, 96}, o);
  CHECK(c.t == 79.5);
  CHECK(c.sigma == doctest::Approx(std::sqrt((32.0 * 32.0 - 1.0) / 12.0)).epsilon(1e-15));
  mc::GaussianRopeOptions poc;
  poc.position = mc::PositionPolicy::kSpanStart;
  poc.spread = mc::SpreadPolicy::kWidth;
  const mc::GaussianPosition s = mc::gaussian_position({64, 96}, poc);
  CHECK(s.t == 64.0);
  CHECK(s.sigma == 32.0);
  CHECK(mc::gaussian_position({7, 8}, poc).sigma == 1.0);
}

TEST_CASE("gaussian_rope: the uniform-span sigma is the spread of the span's token positions") {
  // σ² = (w² − 1)/12 is the variance of the w integer positions of the span: check by counting.
  for (const std::int64_t w : {1, 2, 3, 32, 1024}) {
    double mean = 0.0;
    for (std::int64_t k = 0; k < w; ++k) mean += static_cast<double>(k);
    mean /= static_cast<double>(w);
    double var = 0.0;
    for (std::int64_t k = 0; k < w; ++k)
      var += (static_cast<double>(k) - mean) * (static_cast<double>(k) - mean);
    var /= static_cast<double>(w);
    INFO("w=", w);
    CHECK(mc::span_position(0, w, mc::PositionPolicy::kSpanCentre) == mean);
    CHECK(mc::span_sigma(w, mc::SpreadPolicy::kUniformSpan) ==
          doctest::Approx(std::sqrt(var)).epsilon(1e-14));
  }
}

TEST_CASE("gaussian_rope: sigma = 0 is plain Llama/HF rotate-half RoPE, bit for bit") {
  INFO(mc::test::seed_info());
  for (const int d_head : {2, 64, 128}) {
    for (const int n_heads : {1, 3}) {
      const std::int64_t n = 37;
      mc::GaussianRopeOptions o;
      o.d_head = d_head;
      std::vector<mc::GaussianPosition> pos;
      std::vector<double> t;
      auto gen = mc::test::rng(11);
      std::uniform_int_distribution<std::int64_t> tok(0, 20'000'000);
      for (std::int64_t i = 0; i < n; ++i) {
        const std::int64_t b = i < 3 ? i : tok(gen);
        pos.push_back(mc::gaussian_position({b, b + 1}, o));
        t.push_back(static_cast<double>(b));
      }
      const mc::GaussianRopeTable table = mc::gaussian_rope_table(pos, o);
      for (std::int64_t i = 0; i < n; ++i)
        for (int j = 0; j < d_head / 2; ++j) {
          const double phase = mc::rope_frequency(j, d_head, o.base) * t[i];
          REQUIRE(table.cos(i, j) == std::cos(phase));
          REQUIRE(table.sin(i, j) == std::sin(phase));
        }
      const MatrixF xm = random_normal<MatrixF>(n, n_heads * d_head, 12);
      std::vector<float> x(xm.data(), xm.data() + xm.size());
      std::vector<float> y(x.size(), std::nanf(""));
      mc::apply_gaussian_rope(x.data(), y.data(), pos.data(), n, n_heads, o);
      const std::vector<float> ref = plain_rope(x, t, n_heads, d_head, o.base);
      for (std::size_t k = 0; k < y.size(); ++k) {
        INFO("d_head=", d_head, " n_heads=", n_heads, " element ", k);
        REQUIRE(y[k] == ref[k]);
      }
    }
  }
}

TEST_CASE("gaussian_rope: the rotation matches the closed form e^{iωt} e^{-½σ²ω²} in fp64") {
  INFO(mc::test::seed_info());
  const int n_heads = 2;
  for (const int d_head : {8, 64, 128}) {
    mc::GaussianRopeOptions o;
    o.d_head = d_head;
    o.base = d_head == 8 ? 500000.0 : 10000.0;
    auto gen = mc::test::rng(21);
    std::uniform_real_distribution<double> ut(0.0, 1e6);
    std::uniform_real_distribution<double> us(0.0, 400.0);
    std::vector<mc::GaussianPosition> pos(64);
    for (auto& p : pos) p = {ut(gen), us(gen)};
    pos[0] = {0.0, 0.0};
    pos[1] = {3.5, 0.0};
    const Matrix x = random_normal<Matrix>(64, n_heads * d_head, 22);
    Matrix y = x;
    mc::apply_gaussian_rope(y, n_heads, mc::gaussian_rope_table(pos, o));
    const int half = d_head / 2;
    double max_err = 0.0;
    for (Eigen::Index i = 0; i < x.rows(); ++i)
      for (int h = 0; h < n_heads; ++h)
        for (int j = 0; j < half; ++j) {
          // ω from exp/log rather than pow, so the check does not reuse the code under test.
          const double omega = std::exp(-2.0 * j / d_head * std::log(o.base));
          const std::complex<double> z(x(i, h * d_head + j), x(i, h * d_head + j + half));
          const std::complex<double> e =
              z * std::exp(-0.5 * pos[i].sigma * pos[i].sigma * omega * omega) *
              std::polar(1.0, omega * pos[i].t);
          const double err = std::max(std::abs(y(i, h * d_head + j) - e.real()),
                                      std::abs(y(i, h * d_head + j + half) - e.imag()));
          max_err = std::max(max_err, err);
          // ω·t near 1e6 rad: a 1-ulp difference in ω moves the phase by ~1e-10.
          REQUIRE(err <= 1e-9);
        }
    MESSAGE("d_head=", d_head, " max |err| vs closed form = ", max_err);
  }
}

TEST_CASE("gaussian_rope: tables match a Monte-Carlo estimate of E[e^{iωτ}], τ ~ N(t, σ²)") {
  INFO(mc::test::seed_info());
  mc::GaussianRopeOptions o;
  o.d_head = 16;  // bands ω = 1, 0.32, 0.1, …: σω spans ~1e-3 to 10 below
  constexpr int kSamples = 200'000;
  const std::vector<mc::GaussianPosition> pos = {
      {0.0, 0.5},
      {12.25, 3.0},
      {79.5, mc::span_sigma(32, mc::SpreadPolicy::kUniformSpan)},
      {5000.0, 1.5},
      {511.5, 32.0}};
  const mc::GaussianRopeTable table = mc::gaussian_rope_table(pos, o);
  auto gen = mc::test::rng(31);
  for (std::size_t i = 0; i < pos.size(); ++i) {
    std::normal_distribution<double> tau(pos[i].t, pos[i].sigma);
    std::vector<double> samples(kSamples);
    for (double& s : samples) s = tau(gen);
    for (int j = 0; j < 8; ++j) {
      const double omega = mc::rope_frequency(j, o.d_head, o.base);
      double sc = 0.0, ss = 0.0, sc2 = 0.0, ss2 = 0.0;
      for (const double s : samples) {
        const double c = std::cos(omega * s), sn = std::sin(omega * s);
        sc += c;
        ss += sn;
        sc2 += c * c;
        ss2 += sn * sn;
      }
      const double mc_cos = sc / kSamples, mc_sin = ss / kSamples;
      const double sd_cos = std::sqrt(std::max(0.0, sc2 / kSamples - mc_cos * mc_cos));
      const double sd_sin = std::sqrt(std::max(0.0, ss2 / kSamples - mc_sin * mc_sin));
      // Five standard errors of the mean (+ a floor for σω ≈ 0, where the spread vanishes).
      const double tol_cos = 5.0 * sd_cos / std::sqrt(double(kSamples)) + 1e-9;
      const double tol_sin = 5.0 * sd_sin / std::sqrt(double(kSamples)) + 1e-9;
      INFO("t=", pos[i].t, " sigma=", pos[i].sigma, " j=", j, " mc=(", mc_cos, ", ", mc_sin,
           ") table=(", table.cos(i, j), ", ", table.sin(i, j), ")");
      CHECK(std::abs(table.cos(i, j) - mc_cos) <= tol_cos);
      CHECK(std::abs(table.sin(i, j) - mc_sin) <= tol_sin);
    }
  }
}

TEST_CASE(
    "gaussian_rope: damping is 1 at sigma 0 and falls monotonically with sigma and frequency") {
  const int d_head = 128;
  for (int j = 0; j < d_head / 2; ++j) {
    const double omega = mc::rope_frequency(j, d_head, 10000.0);
    CHECK(mc::rope_damping(0.0, omega) == 1.0);
    double prev = 1.0;
    for (double sigma = 0.25; sigma <= 4096.0; sigma *= 1.5) {
      const double d = mc::rope_damping(sigma, omega);
      INFO("j=", j, " sigma=", sigma);
      CHECK(d <= prev);
      CHECK(d >= 0.0);
      if (prev > 1e-300 && sigma * omega > 1e-7) CHECK(d < prev);
      prev = d;
      // Lower-frequency bands are damped less for the same σ.
      if (j > 0) CHECK(mc::rope_damping(sigma, mc::rope_frequency(j - 1, d_head, 10000.0)) <= d);
    }
  }
  // The table's modulus is the damping factor.
  mc::GaussianRopeOptions o;
  o.d_head = d_head;
  const std::vector<mc::GaussianPosition> pos = {{123.0, 9.0}, {7.5, 0.3}};
  const auto table = mc::gaussian_rope_table(pos, o);
  for (Eigen::Index i = 0; i < 2; ++i)
    for (int j = 0; j < d_head / 2; ++j)
      CHECK(std::hypot(table.cos(i, j), table.sin(i, j)) ==
            doctest::Approx(mc::rope_damping(pos[i].sigma, mc::rope_frequency(j, d_head, 1e4)))
                .epsilon(1e-14));
}

TEST_CASE("gaussian_rope: the figures DESIGN.md quotes (d_head 128, base 10000)") {
  using mc::SpreadPolicy;
  // σ = √((w²−1)/12): LOD1 (w = 32) ≈ 9.23, LOD2 (w = 1024) ≈ 295.6.
  CHECK(mc::span_sigma(32, SpreadPolicy::kUniformSpan) == doctest::Approx(9.2331).epsilon(1e-4));
  CHECK(mc::span_sigma(1024, SpreadPolicy::kUniformSpan) ==
        doctest::Approx(295.6032).epsilon(1e-6));
  CHECK(mc::span_sigma(1, SpreadPolicy::kUniformSpan) == 0.0);
  // σ = w damps the fastest band (ω = 1) of a plain token by e^{-1/2} ≈ 0.61.
  const double token_poc = mc::rope_damping(mc::span_sigma(1, SpreadPolicy::kWidth), 1.0);
  CHECK(token_poc == doctest::Approx(std::exp(-0.5)));
  CHECK(token_poc == doctest::Approx(0.6065).epsilon(1e-4));
  // Bands of a 128-dim head (64 bands) damped below a threshold at LOD1 (w = 32).
  const auto count_below = [](double sigma, double threshold) {
    int c = 0;
    for (int j = 0; j < 64; ++j)
      if (mc::rope_damping(sigma, mc::rope_frequency(j, 128, 10000.0)) < threshold) ++c;
    return c;
  };
  const double poc = mc::span_sigma(32, SpreadPolicy::kWidth);         // 32
  const double ours = mc::span_sigma(32, SpreadPolicy::kUniformSpan);  // 9.23
  // "wipes 23 of 64 bands" holds for "damped to less than half"; fewer are truly gone.
  CHECK(count_below(poc, 0.5) == 23);
  CHECK(count_below(poc, 0.01) == 17);
  CHECK(count_below(poc, 1e-6) == 13);
  CHECK(count_below(ours, 0.5) == 15);
  CHECK(count_below(ours, 0.01) == 8);
  CHECK(count_below(0.0, 1.0) == 0);  // tokens under the default: nothing damped
  // LOD2 (w = 1024): default σ ≈ 295.6 halves 39 bands and wipes 32; σ = w halves 48, wipes 41.
  CHECK(count_below(mc::span_sigma(1024, SpreadPolicy::kUniformSpan), 0.5) == 39);
  CHECK(count_below(mc::span_sigma(1024, SpreadPolicy::kUniformSpan), 0.01) == 32);
  CHECK(count_below(mc::span_sigma(1024, SpreadPolicy::kWidth), 0.5) == 48);
  CHECK(count_below(mc::span_sigma(1024, SpreadPolicy::kWidth), 0.01) == 41);
}

TEST_CASE("gaussian_rope: the documented example rotates q and k of a mixed working context") {
  // example-begin gaussian-rope-apply
  mc::GaussianRopeOptions options;  // d_head 128, base 10000, span centre, uniform-span σ
  // Three entries: an LOD1 gist over tokens [0, 32), then the tokens 32 and 33.
  const std::vector<mc::GaussianPosition> positions = {
      mc::gaussian_position({0, 32}, options),   // t = 15.5, σ ≈ 9.23
      mc::gaussian_position({32, 33}, options),  // t = 32,   σ = 0
      mc::gaussian_position({33, 34}, options),  // t = 33,   σ = 0
  };
  const mc::GaussianRopeTable table = mc::gaussian_rope_table(positions, options);
  const int n_heads = 4;
  Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> q =
      Eigen::MatrixXf::Ones(3, n_heads * options.d_head);  // [n, n_heads * d_head]
  mc::apply_gaussian_rope(q, n_heads, table);              // in place; do the same for k
  // example-end gaussian-rope-apply
  CHECK(positions[0].t == 15.5);
  CHECK(positions[0].sigma == doctest::Approx(9.2331).epsilon(1e-4));
  CHECK(positions[1].sigma == 0.0);
  // Band 0 (ω = 1) of the gist is damped to ~e^{-42.6}; the tokens' are not damped at all.
  CHECK(std::abs(q(0, 0)) + std::abs(q(0, 64)) < 1e-15);
  CHECK(std::hypot(q(1, 0), q(1, 64)) == doctest::Approx(std::sqrt(2.0)).epsilon(1e-6));
}

TEST_CASE("gaussian_rope: scores depend on t only through differences (the RoPE property)") {
  // q·k after rotation = Re Σ_j q_j conj(k_j) e^{iω(t_q − t_k)} e^{−½ω²(σ_q² + σ_k²)}: shifting
  // every t by the same amount leaves every score unchanged.
  INFO(mc::test::seed_info());
  mc::GaussianRopeOptions o;
  o.d_head = 64;
  const Matrix q = random_normal<Matrix>(5, 64, 41);
  const Matrix k = random_normal<Matrix>(7, 64, 42);
  std::vector<mc::GaussianPosition> pq = mixed_positions(5, o, 43);
  std::vector<mc::GaussianPosition> pk = mixed_positions(7, o, 44);
  const auto scores = [&](double shift) {
    std::vector<mc::GaussianPosition> sq = pq, sk = pk;
    for (auto& p : sq) p.t += shift;
    for (auto& p : sk) p.t += shift;
    Matrix rq = q, rk = k;
    mc::apply_gaussian_rope(rq, 1, mc::gaussian_rope_table(sq, o));
    mc::apply_gaussian_rope(rk, 1, mc::gaussian_rope_table(sk, o));
    return Matrix(rq * rk.transpose());
  };
  const Matrix s0 = scores(0.0);
  const Matrix s1 = scores(1234.0);
  CHECK((s0 - s1).cwiseAbs().maxCoeff() <= 1e-9 * (1.0 + s0.cwiseAbs().maxCoeff()));
  // And the score carries the product of both entries' damping (σ² adds).
  const int half = 32;
  for (int a = 0; a < 5; ++a)
    for (int b = 0; b < 7; ++b) {
      double expect = 0.0;
      for (int j = 0; j < half; ++j) {
        const double w = mc::rope_frequency(j, 64, o.base);
        const std::complex<double> zq(q(a, j), q(a, j + half)), zk(k(b, j), k(b, j + half));
        expect += (zq * std::conj(zk) * std::polar(1.0, w * (pq[a].t - pk[b].t))).real() *
                  std::exp(-0.5 * w * w * (pq[a].sigma * pq[a].sigma + pk[b].sigma * pk[b].sigma));
      }
      CHECK(s0(a, b) == doctest::Approx(expect).epsilon(1e-9));
    }
}

TEST_CASE("gaussian_rope: the backward pass is the forward pass with t negated (adjoint)") {
  INFO(mc::test::seed_info());
  mc::GaussianRopeOptions o;
  o.d_head = 32;
  const std::vector<mc::GaussianPosition> pos = mixed_positions(9, o, 51);
  std::vector<mc::GaussianPosition> neg = pos;
  for (auto& p : neg) p.t = -p.t;
  const Matrix x = random_normal<Matrix>(9, 2 * 32, 52);
  const Matrix g = random_normal<Matrix>(9, 2 * 32, 53);
  Matrix rx = x, rtg = g;
  mc::apply_gaussian_rope(rx, 2, mc::gaussian_rope_table(pos, o));
  mc::apply_gaussian_rope(rtg, 2, mc::gaussian_rope_table(neg, o));
  // <R x, g> = <x, Rᵀ g> for every row, with Rᵀ = the rotation at −t.
  for (Eigen::Index i = 0; i < x.rows(); ++i)
    CHECK(rx.row(i).dot(g.row(i)) == doctest::Approx(x.row(i).dot(rtg.row(i))).epsilon(1e-12));
}

TEST_CASE("gaussian_rope: in place, out of place, per head and float agree") {
  INFO(mc::test::seed_info());
  mc::GaussianRopeOptions o;
  o.d_head = 64;
  const std::int64_t n = 11;
  const int n_heads = 4;
  const auto pos = mixed_positions(n, o, 61);
  const auto table = mc::gaussian_rope_table(pos, o);
  const Matrix x = random_normal<Matrix>(n, n_heads * 64, 62);
  Matrix out(n, n_heads * 64);
  out.setConstant(std::nan(""));
  mc::apply_gaussian_rope(x.data(), out.data(), n, n_heads, table);
  Matrix in_place = x;
  mc::apply_gaussian_rope(in_place, n_heads, table);
  CHECK(out == in_place);
  // Every head is rotated exactly as a one-head matrix would be.
  for (int h = 0; h < n_heads; ++h) {
    Matrix head = x.middleCols(h * 64, 64);
    mc::apply_gaussian_rope(head, 1, table);
    CHECK(head == out.middleCols(h * 64, 64));
  }
  // float input: fp64 arithmetic rounded once, so within half an ulp of the fp64 result of the
  // same float inputs.
  const MatrixF xf = x.cast<float>();
  MatrixF yf(n, n_heads * 64);
  mc::apply_gaussian_rope(xf.data(), yf.data(), pos.data(), n, n_heads, o);
  Matrix yd = xf.cast<double>();
  mc::apply_gaussian_rope(yd, n_heads, table);
  CHECK(yf == yd.cast<float>());
  // n = 0 is a no-op.
  mc::apply_gaussian_rope<float>(nullptr, nullptr, nullptr, 0, 1, o);
}

TEST_CASE("gaussian_rope: bad arguments throw mc::Error naming the value") {
  mc::GaussianRopeOptions o;
  o.d_head = 7;
  CHECK_THROWS_WITH_AS(o.validate(), doctest::Contains("[mc.gaussian_rope.bad_d_head] d_head = 7"),
                       mc::Error);
  o.d_head = 0;
  CHECK_THROWS_WITH_AS(o.validate(), doctest::Contains("d_head = 0"), mc::Error);
  o.d_head = 64;
  o.base = 1.0;
  CHECK_THROWS_WITH_AS(o.validate(), doctest::Contains("[mc.gaussian_rope.bad_base] base = 1"),
                       mc::Error);
  o.base = 0.5;
  CHECK_THROWS_WITH_AS(o.validate(), doctest::Contains("base = 0.5"), mc::Error);
  o.base = std::nan("");
  CHECK_THROWS_WITH_AS(o.validate(), doctest::Contains("base = nan"), mc::Error);
  o.base = 10000.0;
  o.spread = static_cast<mc::SpreadPolicy>(5);
  CHECK_THROWS_WITH_AS(o.validate(), doctest::Contains("spread policy = 5"), mc::Error);
  o.spread = mc::SpreadPolicy::kUniformSpan;
  try {
    o.d_head = 9;
    o.validate();
    FAIL("validate() accepted d_head = 9");
  } catch (const mc::Error& e) {
    CHECK(e.code() == mc::Errc::kInvalidArgument);
  }
  o.d_head = 64;

  const std::vector<mc::GaussianPosition> neg = {{0.0, 0.0}, {5.0, -1.0}};
  CHECK_THROWS_WITH_AS(mc::gaussian_rope_table(neg, o),
                       doctest::Contains("[mc.gaussian_rope.bad_sigma] positions[1].sigma = -1"),
                       mc::Error);
  const std::vector<mc::GaussianPosition> inf_t = {{INFINITY, 0.0}};
  CHECK_THROWS_WITH_AS(mc::gaussian_rope_table(inf_t, o), doctest::Contains("positions[0].t = inf"),
                       mc::Error);
  CHECK_THROWS_WITH_AS(mc::gaussian_position({5, 5}, o),
                       doctest::Contains("[mc.gaussian_rope.bad_span] span = [5, 5)"), mc::Error);
  CHECK_THROWS_WITH_AS(mc::gaussian_position({-1, 3}, o), doctest::Contains("span = [-1, 3)"),
                       mc::Error);

  const std::vector<mc::GaussianPosition> two = {{0.0, 0.0}, {1.0, 0.0}};
  const auto table = mc::gaussian_rope_table(two, o);
  std::vector<float> x(2 * 2 * 64, 1.0f);
  CHECK_THROWS_WITH_AS(mc::apply_gaussian_rope(x.data(), x.data(), 2, 0, table),
                       doctest::Contains("n_heads = 0"), mc::Error);
  CHECK_THROWS_WITH_AS(mc::apply_gaussian_rope(x.data(), x.data(), 3, 1, table),
                       doctest::Contains("n = 3 rows but the table has 2 rows"), mc::Error);
  CHECK_THROWS_WITH_AS(mc::apply_gaussian_rope(x.data(), x.data() + 1, 2, 2, table),
                       doctest::Contains("[mc.gaussian_rope.aliasing]"), mc::Error);
  MatrixF m = MatrixF::Zero(2, 100);
  CHECK_THROWS_WITH_AS(mc::apply_gaussian_rope(m, 2, table),
                       doctest::Contains("x has 100 columns; expected n_heads * d_head = 2 * 64"),
                       mc::Error);
}
