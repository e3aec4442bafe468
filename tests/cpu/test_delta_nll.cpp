// SPDX-License-Identifier: Apache-2.0
// ΔNLL@H: the gist, drop and first-token variants agree with the full sequence where they must
// (a one-token span replaced by its own embedding is the full sequence), dNLL/dgist matches
// central differences, and spans that do not fit are refused.
#include <doctest/doctest.h>

#include <megacontext/delta_nll.hpp>
#include <megacontext/reference/llama.hpp>

#include <random>

#include "common/random.hpp"

namespace {

mc::reference::LlamaModel<double> small_model(std::uint64_t seed) {
  mc::reference::LlamaOptions o;
  o.d_model = 16;
  o.n_layers = 2;
  o.n_heads = 2;
  o.d_ff = 24;
  o.n_vocab = 30;
  o.init_std = 0.3;  // large enough that positions and tokens matter to the logits
  return mc::reference::LlamaModel<double>::random(o, seed);
}

std::vector<mc::TokenId> window(std::int64_t n, std::uint64_t salt) {
  auto rng = mc::test::rng(salt);
  std::vector<mc::TokenId> ids(static_cast<std::size_t>(n));
  for (auto& t : ids) t = static_cast<mc::TokenId>(rng() % 30);
  return ids;
}

}  // namespace

TEST_CASE("delta_nll: a one-token span replaced by its own embedding is the full sequence") {
  auto model = small_model(1);
  const auto ids = window(40, 1);
  for (std::int64_t b : {0, 1, 7}) {
    const mc::DeltaNllSpan s{b, 1, 12};
    std::vector<double> e(16);
    model.embed(ids.data() + b, 1, e.data());
    const double full = mc::full_nll(model, ids, s);
    CHECK(mc::gist_nll(model, ids, s, e.data()) == doctest::Approx(full).epsilon(1e-12));
    CHECK(mc::first_token_nll(model, ids, s) == doctest::Approx(full).epsilon(1e-12));
    CHECK(full > 0);
  }
}

TEST_CASE("delta_nll: variants score the same H targets and differ in what they show") {
  auto model = small_model(2);
  const auto ids = window(60, 2);
  const mc::DeltaNllSpan s{10, 8, 20};
  const auto mean = mc::mean_pool_gist(model, ids, s);
  const double full = mc::full_nll(model, ids, s);
  const double gist = mc::gist_nll(model, ids, s, mean.data());
  const double drop = mc::drop_nll(model, ids, s);
  const double first = mc::first_token_nll(model, ids, s);
  MESSAGE("full ", full, ", mean-pool gist ", gist, ", drop ", drop, ", first token ", first);
  CHECK(gist != full);
  CHECK(drop != full);
  CHECK(first != full);
  for (double x : {full, gist, drop, first}) CHECK((std::isfinite(x) && x > 0));
}

TEST_CASE("delta_nll: dNLL/dgist matches central differences through the frozen model") {
  auto model = small_model(3);
  const auto ids = window(50, 3);
  const mc::DeltaNllSpan s{6, 8, 16};
  auto g = mc::mean_pool_gist(model, ids, s);
  std::vector<double> dg(16);
  const double base = mc::gist_nll(model, ids, s, g.data(), dg.data());
  CHECK(base == doctest::Approx(mc::gist_nll(model, ids, s, g.data())).epsilon(1e-14));
  double worst = 0, scale = 0;
  for (double x : dg) scale = std::max(scale, std::abs(x));
  for (std::size_t j = 0; j < g.size(); ++j) {
    const double h = 1e-5, keep = g[j];
    g[j] = keep + h;
    const double up = mc::gist_nll(model, ids, s, g.data());
    g[j] = keep - h;
    const double down = mc::gist_nll(model, ids, s, g.data());
    g[j] = keep;
    const double fd = (up - down) / (2 * h);
    worst = std::max(worst, std::abs(fd - dg[j]) / std::max({std::abs(fd), std::abs(dg[j]), 1e-3 * scale}));
  }
  MESSAGE("max relative error of dNLL/dgist vs central differences: ", worst);
  CHECK(scale > 0);
  CHECK(worst < 1e-6);
}

TEST_CASE("delta_nll: spans that do not fit the window are refused with the numbers") {
  auto model = small_model(4);
  const auto ids = window(20, 4);
  CHECK_THROWS_WITH_AS(mc::full_nll(model, ids, {10, 8, 5}),
                       doctest::Contains("span [10, 18) with horizon 5"), mc::Error);
  CHECK_THROWS_WITH_AS(mc::drop_nll(model, ids, {0, 4, 4}), doctest::Contains("begin = 0"),
                       mc::Error);
}
