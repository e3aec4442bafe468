// SPDX-License-Identifier: Apache-2.0
// FocusAllocator property tests: 10,000 random steps through each policy for several K and
// W_max; after every step the working context validates, the budget holds, the recent tokens and
// sinks are at LOD0, each edit obeyed thresholds, cooldown and the edit cap, and the patch
// rebuilds the context. Exact checks of the two policies on hand-made candidate lists. And the
// fast candidate pass (SIMD masks, skipped sums) and policies against a plain reference of the
// selection rule kept in this file, over thousands of steps with adversarial scores.
#include <doctest/doctest.h>

#include <megacontext/focus_allocator.hpp>
#include <megacontext/policies/budget_optimal.hpp>
#include <megacontext/policies/greedy_threshold.hpp>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
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

namespace {

// ---- The selection rule, written plainly (the pre-optimisation allocator loop): the reference
// the fast path must match exactly.
struct RefCandidates {
  std::vector<mc::FocusCandidate> expansions, collapses;
};

template <class C>
RefCandidates ref_collect(const std::vector<mc::WcEntry>& e, const std::vector<float>& s,
                          std::int64_t num_tokens, std::int64_t first, std::int64_t recent,
                          float hi, float lo, std::int32_t cooled) {
  using L = mc::Lod<C>;
  constexpr int K = C::K;
  const auto n = static_cast<std::int64_t>(e.size());
  RefCandidates out;
  for (std::int64_t i = first; i < n; ++i) {
    const auto& x = e[static_cast<std::size_t>(i)];
    if (L::tokens(x.node()).end > num_tokens - recent) break;  // protected from here on
    if (x.lod >= 1 && s[static_cast<std::size_t>(i)] > hi && x.changed_at <= cooled)
      out.expansions.push_back({s[static_cast<std::size_t>(i)], {mc::FocusEdit::kExpand, i}});
    if (x.lod >= C::Depth || x.index % K != 0 || i + K > n) continue;
    bool group = true, cool = true;
    float sum = 0, top = -2.0f;
    for (std::int64_t j = i; j < i + K; ++j) {
      const auto& y = e[static_cast<std::size_t>(j)];
      group = group && y.lod == x.lod && y.index == x.index + (j - i) &&
              L::tokens(y.node()).end <= num_tokens - recent;
      cool = cool && y.changed_at <= cooled;
      sum += s[static_cast<std::size_t>(j)];
      top = std::max(top, s[static_cast<std::size_t>(j)]);
    }
    const float mean = sum / static_cast<float>(K);
    if (group && cool && mean < lo && !(top > hi))
      out.collapses.push_back({mean, {mc::FocusEdit::kCollapse, i}});
  }
  return out;
}

// GreedyThreshold, plainly: sort everything by |score| (ties: older first) and walk the list.
std::vector<mc::FocusCandidate> ref_greedy(const RefCandidates& c, std::int64_t free, int cap,
                                           int k) {
  std::vector<mc::FocusCandidate> all = c.expansions;
  all.insert(all.end(), c.collapses.begin(), c.collapses.end());
  std::sort(all.begin(), all.end(), [](const auto& a, const auto& b) {
    const float x = std::abs(a.score), y = std::abs(b.score);
    return x != y ? x > y : a.edit.pos < b.edit.pos;
  });
  std::vector<mc::FocusCandidate> out;
  auto collapses_left = static_cast<std::int64_t>(c.collapses.size());
  for (const auto& x : all) {
    if (static_cast<int>(out.size()) >= cap) break;
    if (x.edit.kind == mc::FocusEdit::kExpand) {
      if (free < k - 1) {
        if (collapses_left == 0) break;
        continue;
      }
      free -= k - 1;
    } else {
      free += k - 1;
      --collapses_left;
    }
    out.push_back(x);
  }
  return out;
}

// BudgetOptimal, plainly: sort both lists fully, try every number of expansions.
std::vector<mc::FocusCandidate> ref_budget(const RefCandidates& c, std::int64_t free, int cap,
                                           int k) {
  auto ex = c.expansions, co = c.collapses;
  std::sort(ex.begin(), ex.end(), [](const auto& a, const auto& b) {
    return a.score != b.score ? a.score > b.score : a.edit.pos < b.edit.pos;
  });
  std::sort(co.begin(), co.end(), [](const auto& a, const auto& b) {
    return a.score != b.score ? a.score < b.score : a.edit.pos < b.edit.pos;
  });
  const std::int64_t slots = free / (k - 1);
  double best = -1.0;
  std::int64_t best_e = 0, best_c = 0;
  for (std::int64_t e = 0; e <= std::min<std::int64_t>(cap, static_cast<std::int64_t>(ex.size())); ++e) {
    const std::int64_t cn = std::min<std::int64_t>(static_cast<std::int64_t>(co.size()), cap - e);
    if (e - cn > slots) break;
    double g = 0;
    for (std::int64_t i = 0; i < e; ++i) g += ex[static_cast<std::size_t>(i)].score;
    for (std::int64_t i = 0; i < cn; ++i) g -= co[static_cast<std::size_t>(i)].score;
    if (g > best) {
      best = g;
      best_e = e;
      best_c = cn;
    }
  }
  std::vector<mc::FocusCandidate> out(ex.begin(), ex.begin() + best_e);
  out.insert(out.end(), co.begin(), co.begin() + best_c);
  return out;
}

// Applying sorted edits, plainly: rebuild the entry list.
template <class C>
std::vector<mc::WcEntry> ref_apply(const std::vector<mc::WcEntry>& e,
                                   std::vector<mc::FocusEdit> edits, std::int32_t step) {
  constexpr int K = C::K;
  std::sort(edits.begin(), edits.end(), [](const auto& a, const auto& b) { return a.pos < b.pos; });
  std::vector<mc::WcEntry> out;
  std::size_t i = 0;
  for (const auto& ed : edits) {
    while (static_cast<std::int64_t>(i) < ed.pos) out.push_back(e[i++]);
    const auto& x = e[i];
    if (ed.kind == mc::FocusEdit::kExpand) {
      for (int j = 0; j < K; ++j) out.push_back({x.index * K + j, x.lod - 1, step});
      i += 1;
    } else {
      out.push_back({x.index / K, x.lod + 1, step});
      i += K;
    }
  }
  while (i < e.size()) out.push_back(e[i++]);
  return out;
}

// Records what the allocator handed its policy and what the policy chose.
template <class P>
struct Recording {
  P inner;
  std::vector<mc::FocusCandidate> expansions, collapses, chosen;
  std::int64_t free = 0;
  std::int32_t cap = 0;
  void plan(const mc::FocusPlanInput& in, std::vector<mc::FocusCandidate>& out) {
    expansions.assign(in.expansions.begin(), in.expansions.end());
    collapses.assign(in.collapses.begin(), in.collapses.end());
    free = in.free_entries;
    cap = in.max_edits;
    inner.plan(in, out);
    chosen = out;
  }
};

bool same(const std::vector<mc::FocusCandidate>& a, const std::vector<mc::FocusCandidate>& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (std::bit_cast<std::uint32_t>(a[i].score) != std::bit_cast<std::uint32_t>(b[i].score) ||
        !(a[i].edit == b[i].edit))
      return false;
  return true;
}

// Scores that probe every boundary of the rule: exact thresholds and their neighbours, +-1,
// -0, groups whose float mean lands exactly on the collapse threshold (8 of 32 at -1), smooth
// fields, and noise.
template <class C>
void adversarial_scores(std::mt19937_64& rng, const mc::WorkingContext<C>& wc, float hi, float lo,
                        std::vector<float>& s) {
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  const auto n = static_cast<std::size_t>(wc.size());
  s.assign(n, 0.0f);
  const float menu[] = {hi, lo, std::nextafter(hi, 2.0f), std::nextafter(hi, -2.0f),
                        std::nextafter(lo, 2.0f), std::nextafter(lo, -2.0f), 1.0f, -1.0f,
                        0.0f, -0.0f, 0.5f * lo, 2.0f * lo};
  const auto mode = rng() % 5;
  std::int64_t block_neg = 0;
  const double freq = 1.0 / static_cast<double>(1 + rng() % (8 * C::K * C::K)), phase = u(rng) * 3.0;
  for (std::size_t i = 0; i < n; ++i) {
    switch (mode) {
      case 0:  // noise
        s[i] = u(rng);
        break;
      case 1:  // boundary values only
        s[i] = menu[rng() % std::size(menu)];
        break;
      case 2: {  // a smooth field, sometimes snapped to a boundary value
        const auto t = static_cast<double>(mc::Lod<C>::tokens(wc[static_cast<std::int64_t>(i)].node()).begin);
        s[i] = std::clamp(static_cast<float>(std::sin(t * freq + phase)) + 0.2f * u(rng), -1.0f, 1.0f);
        if (rng() % 4 == 0) s[i] = menu[rng() % std::size(menu)];
        break;
      }
      case 3: {  // sibling groups with a mean just above, exactly at, or just below lo
        const mc::WcEntry& e = wc[static_cast<std::int64_t>(i)];
        if (e.index % C::K == 0)
          block_neg = static_cast<std::int64_t>(std::lround(-lo * C::K)) + static_cast<std::int64_t>(rng() % 3) - 1;
        s[i] = e.index % C::K < block_neg ? -1.0f : 0.0f;
        if (rng() % 16 == 0) s[i] = menu[rng() % std::size(menu)];
        break;
      }
      default:  // mostly negative: many collapse groups, few vetoes
        s[i] = std::clamp(-0.5f + 0.5f * u(rng), -1.0f, 1.0f);
        break;
    }
  }
}

template <class C, class Policy>
void run_against_reference(std::int64_t w_max, std::int64_t recent, int steps, std::uint64_t salt) {
  INFO(mc::test::seed_info(), " K = ", C::K, " Depth = ", C::Depth, " w_max = ", w_max);
  auto rng = mc::test::rng(salt);
  mc::WorkingContextOptions wo{w_max, 3};
  mc::FocusOptions fo;
  fo.recent_tokens = recent;
  fo.max_edits = static_cast<std::int32_t>(1 + rng() % 12);
  fo.cooldown_steps = 2;
  mc::FocusAllocator<C, Recording<Policy>> alloc(fo, wo);
  mc::WorkingContext<C> wc(wo);
  std::int64_t n = 0;
  std::vector<float> scores;
  std::int64_t compared = 0, candidates = 0, chosen = 0;
  for (int step = 0; step < steps; ++step) {
    const auto kind = rng() % 10;
    n += kind == 0 ? static_cast<std::int64_t>(rng() % (64 * C::K)) : kind >= 7 ? 0
                   : static_cast<std::int64_t>(rng() % (2 * C::K));
    alloc.admit(wc, n, scores);
    adversarial_scores(rng, wc, fo.expand_threshold, fo.collapse_threshold, scores);
    const std::vector<mc::WcEntry> before(wc.entries().begin(), wc.entries().end());
    const std::int32_t at = alloc.step_number();
    const auto ref = ref_collect<C>(before, scores, wc.num_tokens(), wc.first_window_pos(), recent,
                                    fo.expand_threshold, fo.collapse_threshold,
                                    at - fo.cooldown_steps);
    const std::int64_t free = w_max - wc.size();
    const mc::FocusReport r = alloc.step(wc, scores);
    auto& rec = alloc.policy();
    REQUIRE_MESSAGE(same(rec.expansions, ref.expansions), "step ", step, ": expansion candidates differ (",
                    rec.expansions.size(), " vs reference ", ref.expansions.size(), ")");
    REQUIRE_MESSAGE(same(rec.collapses, ref.collapses), "step ", step, ": collapse candidates differ (",
                    rec.collapses.size(), " vs reference ", ref.collapses.size(), ")");
    REQUIRE(rec.free == free);
    const auto want = std::is_same_v<Policy, mc::GreedyThreshold>
                          ? ref_greedy(ref, free, fo.max_edits, C::K)
                          : ref_budget(ref, free, fo.max_edits, C::K);
    REQUIRE_MESSAGE(same(rec.chosen, want), "step ", step, ": the policy chose ", rec.chosen.size(),
                    " edits, the reference ", want.size());
    if (r.restores == 0) {
      std::vector<mc::FocusEdit> edits;
      for (const auto& c : want) edits.push_back(c.edit);
      const auto after = ref_apply<C>(before, edits, at);
      REQUIRE(std::equal(after.begin(), after.end(), wc.entries().begin(), wc.entries().end()));
    }
    wc.validate(n);
    ++compared;
    candidates += static_cast<std::int64_t>(ref.expansions.size() + ref.collapses.size());
    chosen += static_cast<std::int64_t>(want.size());
    scores.assign(static_cast<std::size_t>(wc.size()), 0.0f);
  }
  MESSAGE("K = ", C::K, ": ", compared, " steps equal to the reference, ", candidates,
          " candidates, ", chosen, " edits");
  CHECK(chosen > steps / 4);  // the comparison must cover real edits
}

}  // namespace

TEST_CASE_TEMPLATE("focus_allocator: the fast candidate pass and policies choose what the plain rule "
                   "chooses", Policy, mc::GreedyThreshold, mc::BudgetOptimal) {
  run_against_reference<mc::Config<4, 2>, Policy>(300, 16, 3000, 11);
  run_against_reference<mc::Config<8, 3>, Policy>(600, 32, 3000, 12);
  run_against_reference<mc::Config<32, 3>, Policy>(4096, 128, 3000, 13);
  run_against_reference<mc::Config<64, 2>, Policy>(4096, 128, 1000, 14);  // a 64-bit window
  run_against_reference<mc::Config<128, 2>, Policy>(8192, 256, 500, 15);  // windows over words
}

TEST_CASE("focus_allocator: every scan kernel gives the portable loop's masks and verdict") {
  INFO(mc::test::seed_info());
  auto rng = mc::test::rng(21);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  const float specials[] = {1.0f, -1.0f, 0.0f, -0.0f, 0.25f, -0.25f, std::nextafter(1.0f, 2.0f),
                            std::nextafter(-1.0f, -2.0f), std::numeric_limits<float>::infinity(),
                            -std::numeric_limits<float>::infinity(), std::nanf(""), -std::nanf(""),
                            std::numeric_limits<float>::denorm_min(), 1e-30f};
  const mc::detail::ScanPath paths[] = {mc::detail::ScanPath::kSse2, mc::detail::ScanPath::kAvx,
                                        mc::detail::ScanPath::kAvx512, mc::detail::ScanPath::kBest};
  int runs = 0;
  for (const std::int64_t n : {0, 1, 15, 63, 64, 65, 127, 128, 129, 1000, 8209}) {
    for (int trial = 0; trial < 40; ++trial) {
      std::vector<float> s(static_cast<std::size_t>(n));
      std::vector<std::uint8_t> f(static_cast<std::size_t>(n));
      const int invalid_every = trial % 3 == 0 ? 0 : 1 + static_cast<int>(rng() % 300);
      for (std::int64_t i = 0; i < n; ++i) {
        float x = rng() % 3 == 0 ? specials[rng() % 8] : u(rng);
        if (invalid_every && rng() % static_cast<std::uint64_t>(invalid_every) == 0)
          x = specials[rng() % std::size(specials)];
        s[static_cast<std::size_t>(i)] = x;
        f[static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(rng() % 4 * 0x40);
      }
      const float hi = trial % 2 ? 0.25f : u(rng) * 0.5f + 0.5f;
      mc::detail::FocusMasks ref, got;
      const bool ok_ref = mc::detail::scan_scores(s.data(), f.data(), n, hi, ref,
                                                  mc::detail::ScanPath::kPortable);
      bool ok_direct = true;
      for (const float x : s) ok_direct = ok_direct && x >= -1.0f && x <= 1.0f;
      REQUIRE(ok_ref == ok_direct);
      for (const auto path : paths) {
        if (!mc::detail::scan_path_available(path)) continue;
        INFO("n = ", n, ", path ", static_cast<int>(path));
        const bool ok = mc::detail::scan_scores(s.data(), f.data(), n, hi, got, path);
        REQUIRE(ok == ok_ref);
        REQUIRE(got.gist == ref.gist);
        REQUIRE(got.group == ref.group);
        if (ok_ref) {  // with a bad score the step throws; the masks are then unused
          REQUIRE(got.above == ref.above);
          REQUIRE(got.negative == ref.negative);
        }
        ++runs;
      }
    }
  }
  MESSAGE(runs, " kernel runs compared (SSE2: ", mc::detail::scan_path_available(mc::detail::ScanPath::kSse2),
          ", AVX: ", mc::detail::scan_path_available(mc::detail::ScanPath::kAvx),
          ", AVX-512: ", mc::detail::scan_path_available(mc::detail::ScanPath::kAvx512), ")");
  CHECK(runs > 0);
}

namespace {

template <int Width>
void check_group_filters(std::mt19937_64& rng, int& runs) {
  for (int trial = 0; trial < 200; ++trial) {
    const std::int64_t n = 1 + static_cast<std::int64_t>(rng() % 2000);
    const auto words = static_cast<std::size_t>((n + 63) / 64 + 1);
    std::vector<std::uint64_t> group(words), above(words), negative(words);
    const auto density = [&rng](int one_in) {
      std::uint64_t x = 0;
      for (int b = 0; b < 64; ++b) x |= std::uint64_t{rng() % static_cast<unsigned>(one_in) == 0} << b;
      return x;
    };
    const int a_one_in = 2 + static_cast<int>(rng() % 200), n_one_in = 1 + static_cast<int>(rng() % 4);
    for (std::size_t w = 0; w < words; ++w) {
      above[w] = density(a_one_in);
      negative[w] = density(n_one_in);
    }
    // Group starts at least Width apart, as in a working context.
    for (std::int64_t i = static_cast<std::int64_t>(rng() % Width); i + Width <= n;
         i += Width + static_cast<std::int64_t>(rng() % 3) * Width / 2)
      if (rng() % 3 != 0) group[static_cast<std::size_t>(i >> 6)] |= std::uint64_t{1} << (i & 63);
    const std::int64_t begin = static_cast<std::int64_t>(rng() % 40);
    const std::int64_t end = std::max<std::int64_t>(begin, n - Width + 1 - static_cast<std::int64_t>(rng() % 40));
    const int min_neg = static_cast<int>(rng() % (Width + 1));
    std::vector<std::int64_t> want;
    for (std::int64_t i = begin; i < end; ++i) {
      if (!(group[static_cast<std::size_t>(i >> 6)] >> (i & 63) & 1)) continue;
      bool veto = false;
      int neg = 0;
      for (std::int64_t j = i; j < i + Width; ++j) {
        veto = veto || (above[static_cast<std::size_t>(j >> 6)] >> (j & 63) & 1);
        neg += static_cast<int>(negative[static_cast<std::size_t>(j >> 6)] >> (j & 63) & 1);
      }
      if (!veto && neg >= min_neg) want.push_back(i);
    }
    std::vector<std::int64_t> got(static_cast<std::size_t>(n / Width + 2));
    auto k = mc::detail::filter_groups_portable<Width>(group.data(), above.data(), negative.data(),
                                                       begin, end, min_neg, got.data());
    REQUIRE(std::vector<std::int64_t>(got.begin(), got.begin() + static_cast<std::ptrdiff_t>(k)) == want);
    ++runs;
#ifdef MC_DETAIL_FOCUS_AVX
    if (mc::detail::cpu_has_bmi()) {
      k = mc::detail::filter_groups_bmi<Width>(group.data(), above.data(), negative.data(), begin,
                                               end, min_neg, got.data());
      REQUIRE(std::vector<std::int64_t>(got.begin(), got.begin() + static_cast<std::ptrdiff_t>(k)) == want);
      ++runs;
    }
#endif
  }
}

}  // namespace

TEST_CASE("focus_allocator: both collapse-group filters keep exactly the groups a plain loop keeps") {
  INFO(mc::test::seed_info());
  auto rng = mc::test::rng(23);
  int runs = 0;
  check_group_filters<4>(rng, runs);
  check_group_filters<32>(rng, runs);
  check_group_filters<33>(rng, runs);
  check_group_filters<64>(rng, runs);
  MESSAGE(runs, " filter runs compared");
  CHECK(runs >= 800);
}
