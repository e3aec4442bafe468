// SPDX-License-Identifier: Apache-2.0
// FocusAllocator property tests: 10,000 random steps through each policy for several K and
// W_max; after every step the working context validates, the budget holds, the recent tokens and
// sinks are at LOD0, each edit obeyed thresholds, cooldown and the edit cap, and the patch
// rebuilds the context. Plus exact checks of the two policies on hand-made candidate lists.
#include <doctest/doctest.h>

#include <megacontext/focus_allocator.hpp>
#include <megacontext/policies/budget_optimal.hpp>
#include <megacontext/policies/greedy_threshold.hpp>

#include <cmath>
#include <map>
#include <random>

#include "common/random.hpp"

namespace {

template <class C, class Policy>
void run_property(std::int64_t w_max, std::int64_t sinks, std::int64_t recent, int steps,
                  std::int64_t big_jump, std::uint64_t salt) {
  INFO(mc::test::seed_info(), " K = ", C::K, " Depth = ", C::Depth, " w_max = ", w_max);
  auto rng = mc::test::rng(salt);
  mc::WorkingContextOptions wo{w_max, sinks};
  mc::FocusOptions fo;
  fo.recent_tokens = recent;
  fo.max_edits = 8;
  fo.cooldown_steps = 3;
  mc::FocusAllocator<C, Policy> alloc(fo, wo);
  mc::WorkingContext<C> wc(wo);
  std::int64_t n = 0;
  std::vector<float> scores;
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::int64_t total_edits = 0, evictions = 0, restores = 0;
  auto check_common = [&](const mc::FocusReport& r) {
    wc.validate(n);
    REQUIRE(wc.size() <= w_max);
    REQUIRE(r.size == wc.size());
    // The newest recent_tokens and the sinks are tokens.
    for (std::int64_t i = wc.size() - 1; i >= 0; --i) {
      const auto s = mc::Lod<C>::tokens(wc[i].node());
      if (s.end <= n - recent && s.begin >= sinks) break;
      REQUIRE_MESSAGE(wc[i].lod == 0, "entry ", i, " covering [", s.begin, ", ", s.end,
                      ") is protected but at lod ", wc[i].lod);
    }
  };
  for (int step = 0; step < steps; ++step) {
    // History grows: usually about K tokens per refocus, sometimes a large document, and
    // sometimes not at all (then collapses free room and evicted history can return).
    const auto kind = rng() % 20;
    n += kind == 0   ? static_cast<std::int64_t>(rng() % (big_jump * C::K))
         : kind >= 15 ? 0
                      : static_cast<std::int64_t>(rng() % (2 * C::K));
    const mc::FocusReport a = alloc.admit(wc, n, scores);
    check_common(a);
    evictions += a.evictions;
    // Random scores: half the steps a smooth random field over token positions (regions that
    // want detail and regions that don't, as a real scorer gives), half independent noise;
    // sometimes biased so that many entries want detail, or few.
    scores.resize(static_cast<std::size_t>(wc.size()));
    const float bias = kind == 1 ? 0.6f : kind == 2 ? -0.6f : 0.0f;
    const bool smooth = rng() % 2 == 0;
    const double freq = 1.0 / static_cast<double>(1 + rng() % (8 * C::K * C::K)), phase = u(rng) * 3.0;
    for (std::int64_t i = 0; i < wc.size(); ++i) {
      const auto t = static_cast<double>(mc::Lod<C>::tokens(wc[i].node()).begin);
      const float field = smooth ? static_cast<float>(std::sin(t * freq + phase)) : 0.0f;
      scores[static_cast<std::size_t>(i)] =
          std::clamp(field + (smooth ? 0.2f : 1.0f) * u(rng) + bias, -1.0f, 1.0f);
    }
    const auto before = std::vector<mc::WcEntry>(wc.entries().begin(), wc.entries().end());
    const auto before_scores = scores;
    // Sometimes focus asks for the newest evicted history back.
    const float restore = rng() % 4 == 0 ? u(rng) : std::nanf("");
    const mc::FocusReport r = alloc.step(wc, scores, restore);
    check_common(r);
    REQUIRE(r.expansions + r.collapses <= fo.max_edits);
    REQUIRE(r.forced_collapses == 0);
    total_edits += r.expansions + r.collapses;
    restores += r.restores;
    // Rebuild through the patch, and check why each removed entry left.
    const mc::WcPatch p = wc.patch();
    std::vector<char> kept(before.size(), 0);
    std::vector<mc::WcEntry> rows(static_cast<std::size_t>(wc.size()));
    for (const auto& m : p.moves)
      for (std::int64_t i = 0; i < m.count; ++i) {
        kept[static_cast<std::size_t>(m.old_begin + i)] = 1;
        rows[static_cast<std::size_t>(m.new_begin + i)] = before[static_cast<std::size_t>(m.old_begin + i)];
      }
    for (const auto& f : p.fresh)
      for (std::int64_t i = f.begin; i < f.end; ++i) rows[static_cast<std::size_t>(i)] = wc[i];
    REQUIRE(std::equal(rows.begin(), rows.end(), wc.entries().begin(), wc.entries().end()));
    for (std::size_t i = 0; i < before.size(); ++i) {
      if (kept[i]) continue;
      const mc::WcEntry& e = before[i];
      REQUIRE_MESSAGE(e.changed_at <= r.step - fo.cooldown_steps, "entry ", i,
                      " changed at step ", e.changed_at, " and again at ", r.step);
      const bool expanded = before_scores[i] > fo.expand_threshold && e.lod >= 1;
      // A collapse that paid for a restore needs a mean below the restore request's score.
      const float limit = r.restores > 0 && !std::isnan(restore) ? std::max(restore, fo.collapse_threshold)
                                                                  : fo.collapse_threshold;
      // The K-sibling group it belonged to, located by alignment.
      const std::size_t first = i - static_cast<std::size_t>(e.index % C::K);
      bool collapsed = false;
      if (first + C::K <= before.size()) {
        float sum = 0;
        float top = -2.0f;
        for (std::size_t j = first; j < first + C::K; ++j) {
          sum += before_scores[j];
          top = std::max(top, before_scores[j]);
        }
        collapsed = sum / C::K < limit && (top <= fo.expand_threshold || limit > fo.collapse_threshold);
      }
      REQUIRE_MESSAGE((expanded || collapsed), "entry ", i, " (lod ", e.lod, ", score ",
                      before_scores[i], ") was changed without a score that asks for it");
    }
    scores.assign(static_cast<std::size_t>(wc.size()), 0.0f);
  }
  MESSAGE("K = ", C::K, ", w_max = ", w_max, ": ", steps, " steps, ", total_edits,
          " score-driven edits, ", evictions, " evictions, ", restores, " restores, history ", n,
          " tokens");
  // The test must exercise edits, evictions and restores, not a frozen context.
  CHECK(total_edits > steps / 4);
  CHECK(evictions > 0);
  CHECK(restores > 0);
}

}  // namespace

TEST_CASE_TEMPLATE("focus_allocator: 10,000 random steps keep every invariant and the budget",
                   Policy, mc::GreedyThreshold, mc::BudgetOptimal) {
  run_property<mc::Config<4, 2>, Policy>(200, 4, 16, 10'000, 40, 1);
  run_property<mc::Config<8, 3>, Policy>(400, 2, 32, 10'000, 40 * 8, 2);
  run_property<mc::Config<32, 2>, Policy>(2048, 4, 128, 10'000, 40 * 32, 3);
}

TEST_CASE("focus_allocator: GreedyThreshold takes the largest |score| first within budget") {
  std::vector<mc::FocusCandidate> ex = {{0.5f, {mc::FocusEdit::kExpand, 1}},
                                        {0.9f, {mc::FocusEdit::kExpand, 7}},
                                        {0.3f, {mc::FocusEdit::kExpand, 9}}};
  std::vector<mc::FocusCandidate> co = {{-0.7f, {mc::FocusEdit::kCollapse, 12}}};
  mc::GreedyThreshold g;
  std::vector<mc::FocusCandidate> out;
  // Room for one expansion (k - 1 = 3 entries): 0.9 expands, -0.7 collapses and frees room for
  // 0.5; 0.3 is over the cap of 3 edits.
  g.plan({ex, co, 3, 3, 4}, out);
  REQUIRE(out.size() == 3);
  CHECK(out[0].edit.pos == 7);
  CHECK(out[1].edit.pos == 12);
  CHECK(out[2].edit.pos == 1);
  out.clear();
  g.plan({ex, co, 0, 10, 4}, out);  // no room: the top expansion is skipped until a collapse
  REQUIRE(out.size() == 2);
  CHECK(out[0].edit.pos == 12);
  CHECK(out[1].edit.pos == 1);
}

TEST_CASE("focus_allocator: BudgetOptimal finds the best feasible plan, checked by brute force") {
  INFO(mc::test::seed_info());
  auto rng = mc::test::rng(5);
  std::uniform_real_distribution<float> hi(0.26f, 1.0f), lo(-1.0f, -0.26f);
  for (int trial = 0; trial < 300; ++trial) {
    const int ne = static_cast<int>(rng() % 7), nc = static_cast<int>(rng() % 6);
    std::vector<mc::FocusCandidate> ex, co;
    for (int i = 0; i < ne; ++i) ex.push_back({hi(rng), {mc::FocusEdit::kExpand, i}});
    for (int i = 0; i < nc; ++i) co.push_back({lo(rng), {mc::FocusEdit::kCollapse, 100 + i}});
    const int k = 4, cap = static_cast<int>(rng() % 8);
    const std::int64_t free = static_cast<std::int64_t>(rng() % 4) * (k - 1) + static_cast<std::int64_t>(rng() % 3);
    mc::BudgetOptimal b;
    std::vector<mc::FocusCandidate> out;
    b.plan({ex, co, free, cap, k}, out);
    double got = 0;
    int e = 0, c = 0;
    for (const auto& x : out) {
      got += x.edit.kind == mc::FocusEdit::kExpand ? x.score : -x.score;
      (x.edit.kind == mc::FocusEdit::kExpand ? e : c)++;
    }
    REQUIRE(e + c <= cap);
    REQUIRE((e - c) * (k - 1) <= free);
    // Brute force over every subset.
    double best = 0;
    for (int m = 0; m < (1 << (ne + nc)); ++m) {
      double g = 0;
      int be = 0, bc = 0;
      for (int i = 0; i < ne + nc; ++i)
        if (m >> i & 1) {
          if (i < ne) { g += ex[static_cast<std::size_t>(i)].score; ++be; }
          else { g -= co[static_cast<std::size_t>(i - ne)].score; ++bc; }
        }
      if (be + bc <= cap && (be - bc) * (k - 1) <= free) best = std::max(best, g);
    }
    CHECK(got == doctest::Approx(best).epsilon(1e-6));
  }
}

TEST_CASE("focus_allocator: bad options and bad scores are refused with the value named") {
  using C = mc::Config<4, 2>;
  mc::WorkingContextOptions wo{100, 4};
  mc::FocusOptions fo;
  fo.recent_tokens = 16;
  fo.collapse_threshold = 0.5f;
  CHECK_THROWS_WITH_AS((mc::FocusAllocator<C, mc::GreedyThreshold>(fo, wo)),
                       doctest::Contains("collapse_threshold = 0.5"), mc::Error);
  fo.collapse_threshold = -0.25f;
  fo.recent_tokens = 90;
  CHECK_THROWS_WITH_AS((mc::FocusAllocator<C, mc::GreedyThreshold>(fo, wo)),
                       doctest::Contains("w_max = 100 is below"), mc::Error);
  fo.recent_tokens = 16;
  fo.max_edits = -1;
  CHECK_THROWS_WITH_AS((mc::FocusAllocator<C, mc::GreedyThreshold>(fo, wo)),
                       doctest::Contains("max_edits = -1"), mc::Error);
  fo.max_edits = 4;
  mc::FocusAllocator<C, mc::GreedyThreshold> alloc(fo, wo);
  mc::WorkingContext<C> wc(wo);
  alloc.admit(wc, 50);
  std::vector<float> s(static_cast<std::size_t>(wc.size()), 0.0f);
  s[3] = std::nanf("");
  CHECK_THROWS_WITH_AS(alloc.step(wc, s), doctest::Contains("score of entry 3 is nan"), mc::Error);
  s[3] = 1.5f;
  CHECK_THROWS_WITH_AS(alloc.step(wc, s), doctest::Contains("is 1.5"), mc::Error);
  s.pop_back();
  CHECK_THROWS_WITH_AS(alloc.step(wc, s), doctest::Contains("scores for"), mc::Error);
  mc::WorkingContext<C> other({120, 4});
  CHECK_THROWS_WITH_AS(alloc.admit(other, 10), doctest::Contains("[mc.focus.context_mismatch]"),
                       mc::Error);
}

TEST_CASE("focus_allocator: a million-token document enters coarse and the budget holds") {
  using C = mc::Config<32, 3>;
  mc::WorkingContextOptions wo{512, 4};
  mc::FocusOptions fo;
  mc::FocusAllocator<C, mc::BudgetOptimal> alloc(fo, wo);
  mc::WorkingContext<C> wc(wo);
  const auto r = alloc.admit(wc, 1'000'000);
  wc.validate(1'000'000);
  CHECK(wc.size() <= 512);
  CHECK(r.evictions == 0);  // 30 top-level gists + tails + 128 recent tokens fit in 512
  // Ten times longer no longer fits fully collapsed: the oldest top-level entries leave.
  const auto r2 = alloc.admit(wc, 20'000'000);
  wc.validate(20'000'000);
  CHECK(wc.size() <= 512);
  CHECK(r2.evictions > 0);
  CHECK(wc.window_begin() > wc.sink_end());
}
