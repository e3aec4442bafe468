// SPDX-License-Identifier: Apache-2.0
// Training building blocks: AdamW against its defining formulas, the warm-up + cosine schedule,
// global-norm clipping, and checkpoints that resume exactly.
#include <doctest/doctest.h>

#include <megacontext/train/adamw.hpp>
#include <megacontext/train/checkpoint.hpp>
#include <megacontext/train/schedule.hpp>

#include <cmath>
#include <random>

#include "common/random.hpp"
#include "common/tree_fixtures.hpp"

namespace {

// Two tensors, one of which is a norm gain (no weight decay by default).
struct Toy {
  Eigen::VectorXf w = Eigen::VectorXf::Zero(5);
  Eigen::VectorXf norm = Eigen::VectorXf::Zero(3);
  template <class F>
  void for_each_parameter(F&& f) {
    f(std::string("w"), w.data(), w.size());
    f(std::string("final_norm"), norm.data(), norm.size());
  }
};

// One named tensor of a given size.
struct OneTensor {
  OneTensor(std::string n, Eigen::Index size) : name(std::move(n)), x(Eigen::VectorXf::Zero(size)) {}
  std::string name;
  Eigen::VectorXf x;
  template <class F>
  void for_each_parameter(F&& f) { f(name, x.data(), x.size()); }
};

}  // namespace

TEST_CASE("train: AdamW follows its defining formulas, with decay only where the rule says") {
  mc::train::AdamWOptions o;
  o.weight_decay = 0.1;
  mc::train::AdamW opt(o);
  Toy p, g;
  p.w << 1, -2, 3, 0.5f, 0;
  p.norm << 1, 1, 1;
  const Toy p0 = p;
  std::vector<double> m(8, 0.0), v(8, 0.0);
  auto rng = mc::test::rng(1);
  std::normal_distribution<float> normal;
  for (int t = 1; t <= 5; ++t) {
    for (int i = 0; i < 5; ++i) g.w[i] = normal(rng);
    for (int i = 0; i < 3; ++i) g.norm[i] = normal(rng);
    // Reference, written from the formulas in double.
    std::vector<double> want(8);
    for (int i = 0; i < 8; ++i) {
      const bool is_w = i < 5;
      const double gi = is_w ? g.w[i] : g.norm[i - 5];
      const double pi = is_w ? p.w[i] : p.norm[i - 5];
      m[i] = 0.9 * m[i] + 0.1 * gi;
      v[i] = 0.95 * v[i] + 0.05 * gi * gi;
      const double mh = m[i] / (1 - std::pow(0.9, t)), vh = v[i] / (1 - std::pow(0.95, t));
      want[i] = pi - 1e-2 * (mh / (std::sqrt(vh) + 1e-8) + (is_w ? 0.1 * pi : 0.0));
    }
    opt.step<float>(p, g, 1e-2);
    for (int i = 0; i < 5; ++i) CHECK(p.w[i] == doctest::Approx(want[i]).epsilon(1e-6));
    for (int i = 0; i < 3; ++i) CHECK(p.norm[i] == doctest::Approx(want[5 + i]).epsilon(1e-6));
  }
  CHECK(opt.step_count() == 5);
  CHECK((p.w - p0.w).norm() > 0);
  Toy wrong;
  wrong.w.resize(4);
  CHECK_THROWS_WITH_AS(opt.step<float>(p, wrong, 1e-2), doctest::Contains("'w' (5 values)"),
                       mc::Error);
  CHECK_THROWS_WITH_AS(opt.step<float>(p, g, std::nan("")), doctest::Contains("lr = nan"), mc::Error);
  CHECK_THROWS_WITH_AS(mc::train::AdamW({.beta1 = 1.0}), doctest::Contains("beta1 = 1"), mc::Error);
}

TEST_CASE("train: AdamW minimises a quadratic") {
  mc::train::AdamW opt({.weight_decay = 0.0});
  Toy p, g;
  p.w.setConstant(5.0f);
  for (int t = 0; t < 2000; ++t) {
    g.w = 2.0f * (p.w - Eigen::VectorXf::LinSpaced(5, -1, 1));
    g.norm.setZero();
    opt.step<float>(p, g, 0.05 * (1.0 - t / 2000.0) + 1e-3);
  }
  CHECK((p.w - Eigen::VectorXf::LinSpaced(5, -1, 1)).norm() < 1e-2);
}

TEST_CASE("train: warm-up + cosine schedule and global-norm clipping") {
  mc::train::WarmupCosine s{1e-3, 1e-4, 10, 110};
  CHECK(s(0) == 0.0);
  CHECK(s(5) == doctest::Approx(5e-4));
  CHECK(s(10) == doctest::Approx(1e-3));
  CHECK(s(60) == doctest::Approx(1e-4 + 0.5 * 9e-4));  // half-way down the cosine
  CHECK(s(110) == doctest::Approx(1e-4));
  CHECK(s(500) == doctest::Approx(1e-4));
  for (int t = 11; t < 110; ++t) CHECK(s(t + 1) <= s(t));
  CHECK_THROWS_WITH_AS((mc::train::WarmupCosine{1e-3, 1e-2, 10, 110}.validate()),
                       doctest::Contains("lr_min = 0.01"), mc::Error);

  Toy g;
  g.w << 3, 4, 0, 0, 0;
  g.norm << 0, 0, 12;
  CHECK(mc::train::grad_norm<float>(g) == doctest::Approx(13.0));
  CHECK(mc::train::clip_grad_norm<float>(g, 1.3) == doctest::Approx(13.0));
  CHECK(mc::train::grad_norm<float>(g) == doctest::Approx(1.3));
  CHECK(g.w[1] == doctest::Approx(0.4));
  CHECK(mc::train::clip_grad_norm<float>(g, 5.0) == doctest::Approx(1.3));  // under: untouched
  g.w[0] = std::nanf("");
  CHECK(std::isnan(mc::train::clip_grad_norm<float>(g, 1.0)));
}

TEST_CASE("train: a checkpoint resumes exactly where training stopped") {
  mc::test::TempDir dir("ckpt");
  auto run = [](mc::train::AdamW& opt, Toy& p, int from, int to) {
    Toy g;
    for (int t = from; t < to; ++t) {
      for (int i = 0; i < 5; ++i) g.w[i] = std::sin(0.3f * static_cast<float>(t + i));
      for (int i = 0; i < 3; ++i) g.norm[i] = std::cos(0.7f * static_cast<float>(t * i));
      opt.step<float>(p, g, 1e-2);
    }
  };
  mc::train::AdamW straight;
  Toy a;
  a.w.setOnes();
  run(straight, a, 0, 20);

  mc::train::AdamW first;
  Toy b;
  b.w.setOnes();
  run(first, b, 0, 12);
  mc::train::save_checkpoint<float>(dir / "c.safetensors", b, &first, {{"model", "toy"}});
  Toy c;
  mc::train::AdamW resumed;
  const auto info = mc::train::load_checkpoint<float>(dir / "c.safetensors", c, &resumed);
  CHECK(info.step == 12);
  CHECK(info.metadata.at("model") == "toy");
  CHECK(resumed.step_count() == 12);
  run(resumed, c, 12, 20);
  CHECK(c.w == a.w);  // bit-identical: F32 weights and F64 moments round-trip exactly
  CHECK(c.norm == a.norm);

  OneTensor big{"w", 6};
  CHECK_THROWS_WITH_AS(mc::train::load_checkpoint<float>(dir / "c.safetensors", big, nullptr),
                       doctest::Contains("'w' has 5 values"), mc::Error);
  OneTensor other{"q", 5};
  CHECK_THROWS_WITH_AS(mc::train::load_checkpoint<float>(dir / "c.safetensors", other, nullptr),
                       doctest::Contains("no tensor 'q'"), mc::Error);
  CHECK_THROWS_AS(mc::train::load_checkpoint<float>(dir / "missing.safetensors", c, nullptr),
                  mc::IoError);
}
