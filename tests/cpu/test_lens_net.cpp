// SPDX-License-Identifier: Apache-2.0
// LensNet: central-difference gradient checks in fp64 for every weight tensor, the entry and
// query embeddings and both training losses; scores stay in [-1, 1]; conditioning on the query;
// entry permutation equivariance, per-entry locality and query-order invariance; float vs
// double; parameter count at the defaults; option and shape errors; a small AdamW run that learns
// "entries similar to the query score +1".
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <megacontext/lens_net.hpp>
#include <megacontext/train/adamw.hpp>
#include <megacontext/train/parameters.hpp>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "common/gradcheck.hpp"
#include "common/random.hpp"

namespace {

using Mat = mc::RowMatrix<double>;
using Vec = mc::reference::Vector<double>;

// A matrix [rows, cols] of normal entries (mean 0, std `std_dev`) from its own derived seed.
Mat random_normal(Eigen::Index rows, Eigen::Index cols, std::uint64_t salt, double std_dev = 1.0) {
  auto gen = mc::test::rng(salt);
  std::normal_distribution<double> normal(0.0, std_dev);
  Mat m(rows, cols);
  for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = normal(gen);
  return m;
}

// The tiny network of the gradient and property tests (scaled-up init: attention far from
// uniform, scores spread over (-1, 1)).
mc::LensNetOptions tiny_options() {
  mc::LensNetOptions o;
  o.d_in = 10;
  o.d_model = 8;
  o.n_layers = 2;
  o.n_heads = 2;
  o.d_ff = 12;
  o.num_query = 4;
  o.max_lod = 2;
  o.init_std = 0.5;
  return o;
}

// A context of `w` entries tiling [0, cursor) with K = 4: lods cycle 2, 1, 0 (widths 16, 4, 1),
// t at span centres, σ of a uniform span. Returns the features and sets `cursor`.
Mat mixed_features(std::int64_t w, const mc::LensNetOptions& o, double& cursor) {
  std::vector<mc::GaussianPosition> pos;
  std::vector<std::int64_t> width;
  std::vector<std::int32_t> lod;
  std::int64_t begin = 0;
  for (std::int64_t i = 0; i < w; ++i) {
    const std::int32_t l = static_cast<std::int32_t>(2 - i % 3);
    const std::int64_t span = l == 2 ? 16 : (l == 1 ? 4 : 1);
    pos.push_back({static_cast<double>(begin) + 0.5 * static_cast<double>(span - 1),
                   mc::span_sigma(span, mc::SpreadPolicy::kUniformSpan)});
    width.push_back(span);
    lod.push_back(l);
    begin += span;
  }
  cursor = static_cast<double>(begin);
  return mc::lens_features<double>(std::span<const mc::GaussianPosition>(pos),
                                   std::span<const std::int64_t>(width),
                                   std::span<const std::int32_t>(lod), cursor, o);
}

using mc::test::grad_check;

// `count` distinct indices of [0, size) from a seeded draw (all of them when size <= count).
std::vector<Eigen::Index> sample_indices(Eigen::Index size, Eigen::Index count,
                                         std::uint64_t salt) {
  std::vector<Eigen::Index> v(static_cast<std::size_t>(size));
  std::iota(v.begin(), v.end(), Eigen::Index{0});
  if (size <= count) return v;
  auto gen = mc::test::rng(salt);
  std::shuffle(v.begin(), v.end(), gen);
  v.resize(static_cast<std::size_t>(count));
  return v;
}

constexpr double kGradBound = 1e-6;

// Max |a_i − b_i| (NaN-propagating).
double max_abs_diff(const Vec& a, const Vec& b) {
  REQUIRE(a.size() == b.size());
  double worst = 0.0;
  for (Eigen::Index i = 0; i < a.size(); ++i) {
    const double e = std::abs(a[i] - b[i]);
    if (!(e <= worst)) worst = e;
  }
  return worst;
}

}  // namespace

TEST_CASE("lens_net: parameter count at the defaults is about 0.5M") {
  mc::LensNetOptions o;  // d_in = 256
  auto w = mc::LensNetWeights<float>::zeros(o);
  const std::int64_t n = mc::train::num_parameters<float>(w);
  MESSAGE("LensNet parameters at defaults (d_in = 256, D = 128, 3 layers, d_ff = 256): ", n);
  CHECK(n ==
        256 * 128 + 7 * 128 + 128 + 3 * (3 * 128 + 4 * 128 * 128 + 3 * 128 * 256) + 2 * 128 + 1);
  CHECK(n >= 400'000);
  CHECK(n <= 600'000);
}

TEST_CASE("lens_net: gradients of every weight tensor and of the inputs match finite differences") {
  INFO(mc::test::seed_info());
  const mc::LensNetOptions o = tiny_options();
  const std::int64_t w = 7, q = 4;
  mc::LensNet<double> net = mc::LensNet<double>::random(o, mc::test::base_seed() + 1);
  Mat x = random_normal(w, o.d_in, 2);
  Mat query = random_normal(q, o.d_in, 3);
  double cursor = 0;
  const Mat features = mixed_features(w, o, cursor);
  const Vec c = random_normal(w, 1, 4);  // L = Σ c_i s_i
  Vec scores;
  auto loss = [&] {
    net.forward(x, features, query, scores);
    return c.dot(scores);
  };
  loss();
  // Most scores away from tanh's flat tails, so the weights' gradients are not all tiny.
  CHECK((scores.array().abs() < 0.9).count() >= w / 2);
  auto grads = mc::LensNetWeights<double>::zeros(o);
  Mat dx, dquery;
  net.backward(c, &grads, &dx, &dquery);

  std::vector<std::pair<std::string, double*>> gptr;
  grads.for_each_parameter(
      [&](const std::string& name, double* p, Eigen::Index) { gptr.emplace_back(name, p); });
  std::size_t t = 0;
  std::uint64_t salt = 100;
  net.weights().for_each_parameter([&](const std::string& name, double* p, Eigen::Index size) {
    REQUIRE(gptr[t].first == name);
    CHECK(grad_check(name, loss, p, gptr[t].second, sample_indices(size, 12, ++salt)) < kGradBound);
    ++t;
  });
  CHECK(t == gptr.size());
  CHECK(grad_check("x", loss, x.data(), dx.data(), sample_indices(x.size(), 24, 7)) < kGradBound);
  CHECK(grad_check("query", loss, query.data(), dquery.data(),
                   sample_indices(query.size(), 24, 8)) < kGradBound);
}

TEST_CASE("lens_net: regression and preference losses: values and finite-difference gradients") {
  INFO(mc::test::seed_info());
  Vec s = random_normal(9, 1, 11, 0.6).array().tanh().matrix();
  const std::vector<mc::LensTarget> targets = {{0, 1.0}, {3, -1.0}, {8, 0.25}, {3, 0.5}};
  const std::vector<mc::LensPreference> pairs = {{1, 2}, {5, 0}, {2, 7}, {8, 4}};
  SUBCASE("regression") {
    Vec ds = Vec::Zero(9);
    mc::lens_regression_loss<double>(s, targets, &ds);
    auto loss = [&] { return mc::lens_regression_loss<double>(s, targets, nullptr); };
    CHECK(grad_check("regression", loss, s.data(), ds.data(), sample_indices(9, 9, 0)) <
          kGradBound);
    Vec exact = Vec::Zero(9);
    exact[0] = 1.0;
    CHECK(mc::lens_regression_loss<double>(exact, std::vector<mc::LensTarget>{{0, 1.0}}, nullptr) ==
          0.0);
  }
  SUBCASE("preference") {
    for (double tau : {1.0, 0.1}) {
      Vec ds = Vec::Zero(9);
      mc::lens_preference_loss<double>(s, pairs, tau, &ds);
      auto loss = [&] { return mc::lens_preference_loss<double>(s, pairs, tau, nullptr); };
      CHECK(grad_check("preference tau=" + std::to_string(tau), loss, s.data(), ds.data(),
                       sample_indices(9, 9, 0), 1e-5) < kGradBound);
    }
    // Equal scores: log 2 per pair; a far-apart pair never overflows.
    const Vec zero = Vec::Zero(9);
    CHECK(mc::lens_preference_loss<double>(zero, pairs, 1.0, nullptr) ==
          doctest::Approx(std::log(2.0)));
    Vec big = Vec::Zero(9);
    big[1] = -1.0;
    big[2] = 1.0;
    const double l = mc::lens_preference_loss<double>(big, std::vector<mc::LensPreference>{{1, 2}},
                                                      1e-3, nullptr);
    CHECK(l == doctest::Approx(2000.0));
  }
  SUBCASE("through the network") {
    const mc::LensNetOptions o = tiny_options();
    mc::LensNet<double> net = mc::LensNet<double>::random(o, mc::test::base_seed() + 12);
    Mat x = random_normal(9, o.d_in, 13);
    const Mat query = random_normal(3, o.d_in, 14);
    double cursor = 0;
    const Mat features = mixed_features(9, o, cursor);
    Vec out;
    auto loss = [&] {
      net.forward(x, features, query, out);
      return mc::lens_regression_loss<double>(out, targets, nullptr) +
             mc::lens_preference_loss<double>(out, pairs, 0.5, nullptr);
    };
    loss();
    Vec ds = Vec::Zero(9);
    mc::lens_regression_loss<double>(out, targets, &ds);
    mc::lens_preference_loss<double>(out, pairs, 0.5, &ds);
    auto grads = mc::LensNetWeights<double>::zeros(o);
    Mat dx;
    net.backward(ds, &grads, &dx);
    CHECK(grad_check("losses -> w_in", loss, net.weights().w_in.data(), grads.w_in.data(),
                     sample_indices(grads.w_in.size(), 16, 15)) < kGradBound);
    CHECK(grad_check("losses -> x", loss, x.data(), dx.data(), sample_indices(x.size(), 16, 16)) <
          kGradBound);
  }
}

TEST_CASE("lens_net: scores stay in [-1, 1] even for huge inputs and weights") {
  mc::LensNetOptions o = tiny_options();
  o.init_std = 5.0;
  for (std::uint64_t seed = 0; seed < 4; ++seed) {
    mc::LensNet<double> net = mc::LensNet<double>::random(o, mc::test::base_seed() + 20 + seed);
    const Mat x = random_normal(31, o.d_in, 21 + seed, 1e3);
    const Mat query = random_normal(5, o.d_in, 25 + seed, 1e3);
    double cursor = 0;
    const Mat features = mixed_features(31, o, cursor);
    Vec s;
    net.forward(x, features, query, s);
    REQUIRE(s.size() == 31);
    for (Eigen::Index i = 0; i < s.size(); ++i) {
      CHECK(std::isfinite(s[i]));
      CHECK(s[i] >= -1.0);
      CHECK(s[i] <= 1.0);
    }
  }
}

TEST_CASE("lens_net: conditioning, permutation equivariance, locality, query-order invariance") {
  INFO(mc::test::seed_info());
  const mc::LensNetOptions o = tiny_options();
  mc::LensNet<double> net = mc::LensNet<double>::random(o, mc::test::base_seed() + 30);
  const std::int64_t w = 12;
  const Mat x = random_normal(w, o.d_in, 31);
  const Mat query = random_normal(4, o.d_in, 32);
  double cursor = 0;
  const Mat features = mixed_features(w, o, cursor);
  Vec s;
  net.forward(x, features, query, s);

  SUBCASE("a different query changes every entry's score") {
    Vec s2;
    net.forward(x, features, random_normal(4, o.d_in, 33), s2);
    for (Eigen::Index i = 0; i < w; ++i) CHECK(std::abs(s2[i] - s[i]) > 1e-4);
  }
  SUBCASE("permuting entries (embeddings and features) permutes the scores") {
    std::vector<Eigen::Index> perm(static_cast<std::size_t>(w));
    std::iota(perm.begin(), perm.end(), Eigen::Index{0});
    auto gen = mc::test::rng(34);
    std::shuffle(perm.begin(), perm.end(), gen);
    Mat xp(w, o.d_in), fp(w, features.cols());
    for (Eigen::Index i = 0; i < w; ++i) {
      xp.row(i) = x.row(perm[static_cast<std::size_t>(i)]);
      fp.row(i) = features.row(perm[static_cast<std::size_t>(i)]);
    }
    Vec sp;
    net.forward(xp, fp, query, sp);
    for (Eigen::Index i = 0; i < w; ++i)
      CHECK(std::abs(sp[i] - s[perm[static_cast<std::size_t>(i)]]) < 1e-12);
  }
  SUBCASE("an entry's score depends on itself and the query only (no entry-entry mixing)") {
    Mat x2 = x;
    x2.row(5) = random_normal(1, o.d_in, 35);
    Vec s2;
    net.forward(x2, features, query, s2);
    CHECK(std::abs(s2[5] - s[5]) > 1e-4);
    for (Eigen::Index i = 0; i < w; ++i)
      if (i != 5) CHECK(std::abs(s2[i] - s[i]) < 1e-12);
    // A context of one entry scores it exactly as the full context did.
    Vec one;
    net.forward(x.middleRows(7, 1), features.middleRows(7, 1), query, one);
    CHECK(std::abs(one[0] - s[7]) < 1e-12);
  }
  SUBCASE("features matter: the same embedding at another lod scores differently") {
    Mat f2 = features;
    f2.row(3) = features.row(4);
    Vec s2;
    net.forward(x, f2, query, s2);
    CHECK(std::abs(s2[3] - s[3]) > 1e-4);
  }
  SUBCASE("the order of the query rows does not matter") {
    Mat qr = query.colwise().reverse();
    Vec s2;
    net.forward(x, features, qr, s2);
    CHECK(max_abs_diff(s, s2) < 1e-12);
  }
}

TEST_CASE("lens_net: float agrees with double") {
  mc::LensNetOptions o = tiny_options();
  o.d_in = 32;
  o.d_model = 32;
  o.n_heads = 4;
  o.d_ff = 48;
  o.init_std = 0.2;
  const auto wd = mc::LensNetWeights<double>::random(o, mc::test::base_seed() + 40);
  mc::LensNet<double> nd(o, wd);
  mc::LensNet<float> nf(o, wd.cast<float>());
  const std::int64_t w = 40;
  const Mat x = random_normal(w, o.d_in, 41);
  const Mat query = random_normal(6, o.d_in, 42);
  double cursor = 0;
  const Mat features = mixed_features(w, o, cursor);
  Vec sd;
  mc::reference::Vector<float> sf;
  nd.forward(x, features, query, sd);
  nf.forward(x.cast<float>(), features.cast<float>(), query.cast<float>(), sf);
  const double err = max_abs_diff(sd, sf.cast<double>());
  MESSAGE("float vs double: max |Δscore| = ", err);
  CHECK(err < 1e-5);
  // Backward too (dL/dx with L = Σ s_i).
  Mat dxd;
  mc::RowMatrix<float> dxf;
  nd.backward(Vec::Ones(w), nullptr, &dxd);
  nf.backward(mc::reference::Vector<float>::Ones(w), nullptr, &dxf);
  const double gerr = (dxd - dxf.cast<double>()).cwiseAbs().maxCoeff() / dxd.cwiseAbs().maxCoeff();
  MESSAGE("float vs double: max |Δdx| / max |dx| = ", gerr);
  CHECK(gerr < 1e-4);
}

TEST_CASE("lens_net: assembled-context front end (features and query from the context)") {
  const mc::LensNetOptions o = tiny_options();
  mc::AssembledContext<double> ctx;
  ctx.embeddings = random_normal(6, o.d_in, 50);
  ctx.positions = {{7.5, 4.6}, {17.5, 1.1}, {20, 0}, {21, 0}, {22, 0}, {23, 0}};
  ctx.width = {16, 4, 1, 1, 1, 1};
  ctx.lod = {2, 1, 0, 0, 0, 0};
  const Mat f = mc::lens_features(ctx, 24.0, o);
  REQUIRE(f.rows() == 6);
  REQUIRE(f.cols() == o.num_features());
  CHECK(f(0, 2) == 1.0);
  CHECK(f(1, 1) == 1.0);
  CHECK(f(2, 0) == 1.0);
  CHECK(f(0, 3) == doctest::Approx(4.0 / 16.0));  // log2 16 / 16
  CHECK(f(5, 4) == doctest::Approx(1.0 / 24.0));  // log2(1 + 1) / 24
  CHECK(f(2, 5) == 0.0);                          // σ = 0
  const Mat qm = mc::lens_query(ctx, o);
  REQUIRE(qm.rows() == 4);
  CHECK(qm == ctx.embeddings.bottomRows(4));
  mc::LensNet<double> net = mc::LensNet<double>::random(o, mc::test::base_seed() + 51);
  Vec a, b;
  net.forward(ctx, 24.0, a);
  net.forward(ctx.embeddings, f, qm, b);
  CHECK(a == b);
}

TEST_CASE("lens_net: bad options, shapes and arguments throw with the value named") {
  const mc::LensNetOptions good = tiny_options();
  auto bad = [&](auto edit, const char* text) {
    mc::LensNetOptions o = good;
    edit(o);
    CHECK_THROWS_WITH_AS(o.validate(), doctest::Contains(text), mc::Error);
  };
  bad([](auto& o) { o.d_in = 0; }, "d_in = 0");
  bad([](auto& o) { o.n_heads = 3; }, "n_heads = 3");
  bad([](auto& o) { o.n_layers = 0; }, "n_layers = 0");
  bad([](auto& o) { o.d_ff = -1; }, "d_ff = -1");
  bad([](auto& o) { o.num_query = 0; }, "num_query = 0");
  bad([](auto& o) { o.max_lod = -1; }, "max_lod = -1");
  bad([](auto& o) { o.norm_eps = 0; }, "norm_eps = 0");
  bad([](auto& o) { o.init_std = -1; }, "init_std = -1");

  mc::LensNet<double> net = mc::LensNet<double>::random(good, 60);
  const Mat x = random_normal(5, good.d_in, 61);
  const Mat query = random_normal(2, good.d_in, 62);
  double cursor = 0;
  const Mat f = mixed_features(5, good, cursor);
  Vec s;
  CHECK_THROWS_WITH_AS(net.backward(Vec::Zero(5), nullptr),
                       doctest::Contains("[mc.lens_net.no_forward]"), mc::Error);
  CHECK_THROWS_WITH_AS(net.forward(x, mixed_features(6, good, cursor), query, s),
                       doctest::Contains("features are 6 x 6; need W = 5"), mc::Error);
  CHECK_THROWS_WITH_AS(net.forward(x, f.leftCols(5), query, s), doctest::Contains("F = 6 columns"),
                       mc::Error);
  CHECK_THROWS_WITH_AS(net.forward(random_normal(5, 9, 63), f, query, s),
                       doctest::Contains("embeddings are 5 x 9"), mc::Error);
  CHECK_THROWS_WITH_AS(net.forward(x, f, random_normal(2, 3, 64), s),
                       doctest::Contains("query is 2 x 3"), mc::Error);
  CHECK_THROWS_WITH_AS(net.forward(x, f, Mat(0, good.d_in), s), doctest::Contains("query is 0 x"),
                       mc::Error);
  Mat xn = x;
  xn(1, 1) = std::nan("");
  CHECK_THROWS_WITH_AS(net.forward(xn, f, query, s), doctest::Contains("[mc.lens_net.not_finite]"),
                       mc::Error);
  net.forward(x, f, query, s);
  CHECK_THROWS_WITH_AS(net.backward(Vec::Zero(4), nullptr),
                       doctest::Contains("dscores has 4 entries; the forward scored W = 5"),
                       mc::Error);
  mc::LensNetOptions other = good;
  other.d_ff = 13;
  auto wrong = mc::LensNetWeights<double>::zeros(other);
  CHECK_THROWS_WITH_AS(net.backward(Vec::Zero(5), &wrong),
                       doctest::Contains("grads tensor 'layers.0.mlp.w1' is 8 x 13"), mc::Error);
  CHECK_THROWS_WITH_AS(mc::LensNet<double>(good, wrong),
                       doctest::Contains("weights tensor 'layers.0.mlp.w1'"), mc::Error);

  // Features.
  const std::vector<mc::GaussianPosition> pos = {{0, 0}, {1, 0}};
  const std::vector<std::int64_t> width = {1, 1};
  std::vector<std::int32_t> lod = {0, 5};
  auto features = [&](double c, const std::vector<std::int64_t>& wd) {
    return mc::lens_features<double>(std::span<const mc::GaussianPosition>(pos),
                                     std::span<const std::int64_t>(wd),
                                     std::span<const std::int32_t>(lod), c, good);
  };
  CHECK_THROWS_WITH_AS(features(2.0, width), doctest::Contains("lod[1] = 5"), mc::Error);
  lod = {0, 0};
  CHECK_THROWS_WITH_AS(features(0.5, width), doctest::Contains("positions[1] = (1, 0)"), mc::Error);
  CHECK_THROWS_WITH_AS(features(2.0, {1, 0}), doctest::Contains("width[1] = 0"), mc::Error);
  CHECK_THROWS_WITH_AS(features(2.0, {1}), doctest::Contains("2 positions, 1 widths"), mc::Error);

  // Losses.
  const Vec sc = Vec::Zero(4);
  CHECK_THROWS_WITH_AS(
      mc::lens_regression_loss<double>(sc, std::vector<mc::LensTarget>{{4, 0.0}}, nullptr),
      doctest::Contains("targets[0].entry = 4"), mc::Error);
  CHECK_THROWS_WITH_AS(
      mc::lens_regression_loss<double>(sc, std::vector<mc::LensTarget>{{0, 1.5}}, nullptr),
      doctest::Contains("targets[0].target = 1.5"), mc::Error);
  CHECK_THROWS_WITH_AS(
      mc::lens_preference_loss<double>(sc, std::vector<mc::LensPreference>{{1, 1}}, 1.0, nullptr),
      doctest::Contains("pairs[0] = (1, 1)"), mc::Error);
  CHECK_THROWS_WITH_AS(
      mc::lens_preference_loss<double>(sc, std::vector<mc::LensPreference>{{0, 1}}, 0.0, nullptr),
      doctest::Contains("tau = 0"), mc::Error);
}

TEST_CASE("lens_net: AdamW learns 'entries that match the query score +1, others -1'") {
  INFO(mc::test::seed_info());
  mc::LensNetOptions o;
  o.d_in = 16;
  o.d_model = 32;
  o.n_layers = 2;
  o.n_heads = 4;
  o.d_ff = 64;
  o.num_query = 4;
  o.max_lod = 0;
  o.init_std = 0.1;
  mc::LensNet<float> net = mc::LensNet<float>::random(o, mc::test::base_seed() + 70);
  using MatF = mc::RowMatrix<float>;
  using VecF = mc::reference::Vector<float>;
  const std::int64_t w = 16, q = 4;
  // One synthetic context: a random query [q, d]; entries 0, 2, 4, … are noisy copies of query
  // rows (target +1), the others fresh random vectors (target -1); then entries are shuffled.
  struct Sample {
    MatF x, query;
    std::vector<mc::LensTarget> targets;
  };
  auto make = [&](std::uint64_t salt) {
    Sample smp;
    smp.query = random_normal(q, o.d_in, salt).cast<float>();
    const Mat noise = random_normal(w, o.d_in, salt + 1, 0.2);
    const Mat fresh = random_normal(w, o.d_in, salt + 2);
    std::vector<Eigen::Index> perm(static_cast<std::size_t>(w));
    std::iota(perm.begin(), perm.end(), Eigen::Index{0});
    auto gen = mc::test::rng(salt + 3);
    std::shuffle(perm.begin(), perm.end(), gen);
    smp.x.resize(w, o.d_in);
    for (Eigen::Index i = 0; i < w; ++i) {
      const Eigen::Index r = perm[static_cast<std::size_t>(i)];
      const bool match = r % 2 == 0;
      if (match)
        smp.x.row(i) = (smp.query.row((r / 2) % q).cast<double>() + noise.row(i)).cast<float>();
      else
        smp.x.row(i) = fresh.row(i).cast<float>();
      smp.targets.push_back({i, match ? 1.0 : -1.0});
    }
    return smp;
  };
  // All entries are tokens just before the cursor: the features carry no label information.
  Mat fd = Mat::Zero(w, o.num_features());
  fd.col(0).setOnes();
  const MatF features = fd.cast<float>();
  std::vector<Sample> eval;
  for (std::uint64_t k = 0; k < 16; ++k) eval.push_back(make(1'000'000 + 10 * k));
  auto eval_loss = [&] {
    double total = 0.0;
    VecF s;
    for (const Sample& smp : eval) {
      net.forward(smp.x, features, smp.query, s);
      total += mc::lens_regression_loss<float>(s, smp.targets, nullptr);
    }
    return total / static_cast<double>(eval.size());
  };
  const double before = eval_loss();
  mc::train::AdamWOptions ao;
  ao.weight_decay = 0.0;
  mc::train::AdamW opt(ao);
  const int steps = 600, batch = 4;
  auto grads = mc::LensNetWeights<float>::zeros(o);
  VecF s, ds;
  for (int step = 0; step < steps; ++step) {
    grads.for_each_parameter(
        [](const std::string&, float* p, Eigen::Index n) { std::fill(p, p + n, 0.0f); });
    for (int b = 0; b < batch; ++b) {
      const Sample smp = make(10 * static_cast<std::uint64_t>(step * batch + b));
      net.forward(smp.x, features, smp.query, s);
      ds = VecF::Zero(w);
      mc::lens_regression_loss<float>(s, smp.targets, &ds);
      ds /= static_cast<float>(batch);
      net.backward(ds, &grads);
    }
    // Warm-up over 20 steps, then linear decay to 10 %: the last steps average out batch noise.
    const double frac = static_cast<double>(step) / static_cast<double>(steps);
    const double lr =
        3e-3 * std::min(1.0, static_cast<double>(step + 1) / 20.0) * (1.0 - 0.9 * frac);
    opt.step<float>(net.weights(), grads, lr);
  }
  const double after = eval_loss();
  MESSAGE("LensNet synthetic regression (held-out contexts): MSE ", before, " -> ", after,
          " after ", steps, " AdamW steps");
  CHECK(after < before / 10.0);
}
