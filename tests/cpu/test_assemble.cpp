// SPDX-License-Identifier: Apache-2.0
// assemble(): rows equal the token embeddings and tree gists, positions follow the policy, and
// patching the previous assembly after allocator steps equals assembling from scratch.
#include <doctest/doctest.h>

#include <megacontext/assemble.hpp>
#include <megacontext/focus_allocator.hpp>
#include <megacontext/policies/budget_optimal.hpp>
#include <megacontext/tree.hpp>

#include <random>

#include "common/random.hpp"
#include "common/tree_fixtures.hpp"

namespace {
using C = mc::Config<4, 2>;
}

TEST_CASE("assemble: rows are token embeddings and gists; t, sigma, width and lod follow the span") {
  auto g = mc::MeanPoolGister<C>::random(30, 6, 2);
  mc::MemoryTree<C> tree(6);
  tree.append(mc::test::stream_tokens(0, 70, 30), g);
  mc::WorkingContext<C> wc({100, 2});
  wc.extend(70, 60, 0);
  wc.validate(70);
  mc::AssembledContext<float> a;
  mc::assemble(wc, tree, g, a);
  REQUIRE(a.embeddings.rows() == wc.size());
  for (std::int64_t i = 0; i < wc.size(); ++i) {
    const mc::WcEntry e = wc[i];
    const mc::TokenSpan s = mc::Lod<C>::tokens(e.node());
    INFO("entry ", i, " lod ", e.lod);
    if (e.lod == 0) {
      CHECK(a.embeddings.row(i) == g.table().row(tree.tokens(e.index, e.index + 1)[0]));
      CHECK(a.positions[static_cast<std::size_t>(i)].t == static_cast<double>(e.index));
      CHECK(a.positions[static_cast<std::size_t>(i)].sigma == 0.0);  // plain RoPE for tokens
    } else {
      CHECK(a.embeddings.row(i) == tree.gist(e.node()));
      CHECK(a.positions[static_cast<std::size_t>(i)].t == doctest::Approx(static_cast<double>(s.begin) + static_cast<double>(s.size() - 1) / 2.0));
      const double w = static_cast<double>(s.size());
      CHECK(a.positions[static_cast<std::size_t>(i)].sigma == doctest::Approx(std::sqrt((w * w - 1) / 12)));
    }
    CHECK(a.width[static_cast<std::size_t>(i)] == s.size());
    CHECK(a.lod[static_cast<std::size_t>(i)] == e.lod);
  }
  mc::AssembledContext<float> start, compact;
  mc::assemble<mc::SpanStart>(wc, tree, g, start);
  mc::assemble<mc::Compact>(wc, tree, g, compact);
  for (std::int64_t i = 0; i < wc.size(); ++i) {
    CHECK(start.positions[static_cast<std::size_t>(i)].t == static_cast<double>(mc::Lod<C>::tokens(wc[i].node()).begin));
    CHECK(compact.positions[static_cast<std::size_t>(i)].t == static_cast<double>(i));
    CHECK(compact.positions[static_cast<std::size_t>(i)].sigma == 0.0);
  }
  mc::AssembledContext<float> poc;
  mc::assemble(wc, tree, g, poc, mc::SpreadPolicy::kWidth);
  CHECK(poc.positions[0].sigma == 1.0);  // sigma = w damps even plain tokens (kept to compare)

  auto wrong = mc::MeanPoolGister<C>::random(30, 5, 2);
  CHECK_THROWS_WITH_AS(mc::assemble(wc, tree, wrong, a), doctest::Contains("embedder dim = 5"), mc::Error);
}

TEST_CASE_TEMPLATE("assemble: patching after allocator steps equals assembling from scratch", P,
                   mc::SpanCentre, mc::Compact) {
  INFO(mc::test::seed_info());
  auto rng = mc::test::rng(31);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  auto g = mc::MeanPoolGister<C>::random(40, 4, 3);
  mc::MemoryTree<C> tree(4);
  mc::WorkingContextOptions wo{120, 2};
  mc::FocusOptions fo;
  fo.recent_tokens = 8;
  fo.cooldown_steps = 1;
  mc::FocusAllocator<C, mc::BudgetOptimal> alloc(fo, wo);
  mc::WorkingContext<C> wc(wo);
  mc::AssembledContext<float> live;
  mc::assemble<P>(wc, tree, g, live);
  std::int64_t fresh_total = 0, rows_total = 0;
  for (int step = 0; step < 500; ++step) {
    const std::int64_t n = tree.num_tokens() + static_cast<std::int64_t>(rng() % 12);
    tree.append(mc::test::stream_tokens(tree.num_tokens(), n, 40), g);
    alloc.admit(wc, n);
    mc::assemble_patch<P>(wc, tree, g, live);
    std::vector<float> scores(static_cast<std::size_t>(wc.size()));
    for (auto& s : scores) s = u(rng);
    const auto r = alloc.step(wc, scores, rng() % 5 == 0 ? 0.9f : std::nanf(""));
    fresh_total += r.fresh_entries;
    rows_total += wc.size();
    mc::assemble_patch<P>(wc, tree, g, live);
    mc::AssembledContext<float> full;
    mc::assemble<P>(wc, tree, g, full);
    REQUIRE(live.embeddings == full.embeddings);
    for (std::size_t i = 0; i < full.positions.size(); ++i) {
      REQUIRE(live.positions[i].t == full.positions[i].t);
      REQUIRE(live.positions[i].sigma == full.positions[i].sigma);
    }
    REQUIRE(live.width == full.width);
    REQUIRE(live.lod == full.lod);
  }
  MESSAGE("patches re-assembled ", fresh_total, " of ", rows_total, " rows over 500 steps");
  CHECK(fresh_total < rows_total / 2);
}
