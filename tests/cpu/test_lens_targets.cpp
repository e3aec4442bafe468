// SPDX-License-Identifier: Apache-2.0
// Counterfactual targets for LensNet: context_nll agrees with the plain sequence, every gain is the
// NLL difference of the edited context, and Spearman's ρ on known rankings.
#include <doctest/doctest.h>

#include <megacontext/lens_targets.hpp>
#include <megacontext/reference/llama.hpp>
#include <megacontext/tree.hpp>

#include <random>

#include "common/random.hpp"

TEST_CASE("lens_targets: Spearman's rho of known rankings") {
  const std::vector<double> a = {1, 2, 3, 4, 5}, b = {10, 20, 30, 40, 50}, c = {5, 4, 3, 2, 1};
  CHECK(mc::spearman(a, b) == doctest::Approx(1.0));
  CHECK(mc::spearman(a, c) == doctest::Approx(-1.0));
  const std::vector<double> d = {1, 3, 2, 5, 4};  // d² = 0+1+1+1+1 = 4: 1 − 6·4/(5·24) = 0.8
  CHECK(mc::spearman(a, d) == doctest::Approx(0.8));
  CHECK_THROWS_AS(mc::spearman(std::vector<double>{1.0}, std::vector<double>{1.0}), mc::Error);
}

TEST_CASE("lens_targets: context NLL and counterfactual gains agree with direct computation") {
  mc::reference::LlamaOptions o;
  o.d_model = 16;
  o.n_layers = 1;
  o.n_heads = 2;
  o.d_ff = 24;
  o.n_vocab = 30;
  o.init_std = 0.3;
  auto model = mc::reference::LlamaModel<double>::random(o, 5);
  auto rng = mc::test::rng(5);
  std::vector<mc::TokenId> ids(60);
  for (auto& t : ids) t = static_cast<mc::TokenId>(rng() % 30);
  const std::int64_t n = 48, h = 12;
  const std::span<const mc::TokenId> upcoming(ids.data() + n, static_cast<std::size_t>(h));
  mc::RowMatrix<double> table = model.weights().embedding;
  mc::MeanPoolGister<mc::Config<4, 2, double>> g(table);
  mc::Tree<mc::Config<4, 2, double>> tree(16);
  tree.append(std::span(ids).first(static_cast<std::size_t>(n)), g);

  // All tokens: the context NLL is the NLL of the plain sequence on the upcoming targets.
  mc::WorkingContext<mc::Config<4, 2, double>> wc({200, 0});
  wc.extend(n, 0, 0);
  mc::AssembledContext<double> ctx;
  mc::assemble(wc, tree, model, ctx);
  const double via_context = mc::context_nll(model, ctx, upcoming, n);
  mc::RowMatrix<double> emb(n + h - 1, 16);
  model.embed(ids.data(), n + h - 1, emb.data());
  std::vector<mc::GaussianPosition> pos(static_cast<std::size_t>(n + h - 1));
  for (std::int64_t i = 0; i < n + h - 1; ++i) pos[static_cast<std::size_t>(i)] = {static_cast<double>(i), 0.0};
  const auto logits = model.forward(emb, pos);
  std::vector<mc::TokenId> targets(static_cast<std::size_t>(n + h - 1), mc::reference::kIgnoreTarget);
  for (std::int64_t i = n - 1; i < n + h - 1; ++i) targets[static_cast<std::size_t>(i)] = ids[static_cast<std::size_t>(i + 1)];
  CHECK(via_context == doctest::Approx(mc::reference::cross_entropy<double>(logits, targets.data(), nullptr)).epsilon(1e-12));

  // A mixed context: every gist has an expansion gain, every complete group a collapse gain, and
  // each gain is the NLL difference of the edited context computed directly.
  mc::WorkingContext<mc::Config<4, 2, double>> mixed({200, 0});
  mixed.extend(n, 32, 0);
  const auto gains = mc::focus_gains(mixed, tree, model, upcoming);
  std::int64_t expand = 0, collapse = 0;
  for (std::int64_t i = 0; i < mixed.size(); ++i) {
    expand += mixed.can_expand(i) ? 1 : 0;
    collapse += mixed.can_collapse(i) ? 1 : 0;
  }
  CHECK(static_cast<std::int64_t>(gains.size()) == expand + collapse);
  REQUIRE(expand > 0);
  REQUIRE(collapse > 0);
  mc::assemble(mixed, tree, model, ctx);
  const double base = mc::context_nll(model, ctx, upcoming, n);
  for (const auto& gain : gains) {
    auto what_if = mixed;
    const mc::FocusEdit e{gain.kind, gain.entry};
    what_if.apply(std::span(&e, 1), 1);
    what_if.validate(n);
    mc::assemble(what_if, tree, model, ctx);
    CHECK(gain.gain == doctest::Approx(base - mc::context_nll(model, ctx, upcoming, n)).epsilon(1e-12));
  }
}
