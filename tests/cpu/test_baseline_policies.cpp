// SPDX-License-Identifier: Apache-2.0
// Baseline focus policies (layout policies behind FocusAllocator): truncation, sinks + window,
// recency-only MegaContext, InfLLM-style block retrieval, Quest and the NLL oracle. Each keeps
// every working-context invariant, the budget and the protected recent tokens over 10,000
// random steps, with patches that rebuild the context; on a synthetic history whose answer span
// is known, the oracle (and the key-based retrievers) find it and the window baselines do not.
#include <doctest/doctest.h>

#include <megacontext/focus_allocator.hpp>
#include <megacontext/policies/block_retrieval.hpp>
#include <megacontext/policies/oracle_top_k.hpp>
#include <megacontext/policies/quest.hpp>
#include <megacontext/policies/recency_only.hpp>
#include <megacontext/policies/sliding_window.hpp>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "common/random.hpp"

namespace {

// Keys of the base model, made up but fixed per block so a growing history keeps its past:
// representative keys (InfLLM) and the min/max over a block's tokens (Quest).
struct FakeKeys {
  std::int64_t d = 4;
  std::int32_t r = 2;
  std::vector<float> reps, lo, hi;
  std::int64_t blocks = 0;
  void grow(std::int64_t num_blocks, std::uint64_t seed) {
    for (; blocks < num_blocks; ++blocks) {
      std::mt19937_64 g(seed * 1000003u + static_cast<std::uint64_t>(blocks));
      std::normal_distribution<float> n(0.0f, 1.0f);
      for (std::int64_t i = 0; i < r * d; ++i) reps.push_back(n(g));
      for (std::int64_t i = 0; i < d; ++i) {
        const float a = n(g), b = n(g);
        lo.push_back(std::min(a, b));
        hi.push_back(std::max(a, b));
      }
    }
  }
  mc::RepresentativeKeys representatives() const { return {d, r, blocks, reps}; }
  mc::PageKeyBounds bounds() const { return {d, blocks, lo, hi}; }
};

template <class C>
std::vector<mc::WcEntry> rebuild_from_patch(const std::vector<mc::WcEntry>& old_rows,
                                            const mc::WorkingContext<C>& wc) {
  const mc::WcPatch p = wc.patch();
  REQUIRE(p.old_size == static_cast<std::int64_t>(old_rows.size()));
  std::vector<mc::WcEntry> rows(static_cast<std::size_t>(p.new_size), mc::WcEntry{-1, -1, -1});
  for (const auto& m : p.moves)
    for (std::int64_t i = 0; i < m.count; ++i)
      rows[static_cast<std::size_t>(m.new_begin + i)] = old_rows[static_cast<std::size_t>(m.old_begin + i)];
  for (const auto& f : p.fresh)
    for (std::int64_t i = f.begin; i < f.end; ++i) rows[static_cast<std::size_t>(i)] = wc[i];
  return rows;
}

// 10,000 random steps: the history grows by a little, a lot or nothing; admit() then step().
template <class C, class Policy, class Prepare>
void run_layout_property(Policy policy, std::int64_t w_max, std::int64_t sinks, std::int64_t recent,
                         int steps, std::int64_t big_jump, std::int64_t max_history,
                         std::uint64_t salt, Prepare prepare) {
  INFO(mc::test::seed_info(), " K = ", C::K, " Depth = ", C::Depth, " w_max = ", w_max);
  auto rng = mc::test::rng(salt);
  mc::WorkingContextOptions wo{w_max, sinks};
  mc::FocusOptions fo;
  fo.recent_tokens = recent;
  mc::FocusAllocator<C, Policy> alloc(fo, wo, std::move(policy));
  mc::WorkingContext<C> wc(wo);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> scores;
  std::int64_t n = 0, gist_entries = 0, fresh = 0, evicted_steps = 0;
  for (int step = 0; step < steps; ++step) {
    const auto kind = rng() % 20;
    n += kind == 0 ? static_cast<std::int64_t>(rng() % (big_jump * C::K))
         : kind >= 15 ? 0 : static_cast<std::int64_t>(rng() % (2 * C::K));
    n = std::min(n, max_history);
    alloc.admit(wc, n);
    wc.validate(n);
    prepare(alloc.policy(), n, rng);
    scores.resize(static_cast<std::size_t>(wc.size()));
    for (auto& x : scores) x = u(rng);
    const std::vector<mc::WcEntry> before(wc.entries().begin(), wc.entries().end());
    const mc::FocusReport r = alloc.step(wc, scores);
    wc.validate(n);
    REQUIRE(wc.size() <= w_max);
    REQUIRE(r.size == wc.size());
    // Sinks and the newest recent tokens are tokens.
    for (std::int64_t i = 0; i < wc.size(); ++i) {
      const auto s = mc::Lod<C>::tokens(wc[i].node());
      if (s.begin < sinks || s.end > n - recent) REQUIRE(wc[i].lod == 0);
      gist_entries += wc[i].lod > 0;
    }
    REQUIRE(wc.window_begin() <= std::max(wc.sink_end(), n - recent));
    const auto rows = rebuild_from_patch(before, wc);
    REQUIRE(std::equal(rows.begin(), rows.end(), wc.entries().begin(), wc.entries().end()));
    fresh += r.fresh_entries;
    evicted_steps += wc.window_begin() > wc.sink_end();
  }
  MESSAGE(steps, " steps, history ", n, " tokens, ", gist_entries, " gist entries seen, ", fresh,
          " fresh entries, ", evicted_steps, " steps with evicted history");
  CHECK(fresh > steps / 10);  // the layouts moved
}

auto no_prepare = [](auto&, std::int64_t, std::mt19937_64&) {};

template <class C>
auto key_prepare(FakeKeys& keys, std::vector<float>& query) {
  return [&keys, &query](auto& policy, std::int64_t n, std::mt19937_64& rng) {
    keys.grow(n / C::K, 99);
    std::normal_distribution<float> g(0.0f, 1.0f);
    query.resize(static_cast<std::size_t>(keys.d));
    for (auto& x : query) x = g(rng);
    using P = std::decay_t<decltype(policy)>;
    if constexpr (std::is_same_v<P, mc::Quest>) policy.pages = keys.bounds();
    else policy.keys = keys.representatives();
    policy.query = query;
  };
}

// A made-up next-H NLL: lower for each LOD0 block whose weight (drawn per block and per step
// through `salt`) is high, a little lower for gists, so expansion gains differ between blocks.
template <class C>
double fake_nll(std::span<const mc::Node> window, std::uint64_t salt) {
  double nll = 4.0;
  for (const auto& x : window) {
    const auto b = static_cast<std::uint64_t>(mc::Lod<C>::tokens(x).begin / C::K);
    const double w = static_cast<double>(((b + salt) * 2654435761u) % 1000) / 1000.0;
    nll -= (x.lod == 0 ? 0.01 : 0.002) * w;
  }
  return nll;
}

}  // namespace

TEST_CASE("baselines: every layout policy keeps the invariants and the budget over 10,000 steps") {
  using C1 = mc::Config<4, 2>;
  using C2 = mc::Config<8, 3>;
  using C3 = mc::Config<8, 2>;
  SUBCASE("truncation") {
    run_layout_property<C1>(mc::Truncation{}, 120, 0, 16, 10'000, 40, 1 << 30, 31, no_prepare);
  }
  SUBCASE("sinks + window") {
    run_layout_property<C1>(mc::SinksWindow{}, 120, 4, 16, 10'000, 40, 1 << 30, 32, no_prepare);
  }
  SUBCASE("recency-only MegaContext") {
    run_layout_property<C1>(mc::RecencyOnly{}, 120, 4, 16, 10'000, 40, 1 << 30, 33, no_prepare);
    run_layout_property<C2>(mc::RecencyOnly{}, 400, 2, 32, 10'000, 320, 1 << 30, 34, no_prepare);
  }
  SUBCASE("InfLLM-style block retrieval") {
    FakeKeys keys;
    std::vector<float> q;
    run_layout_property<C1>(mc::BlockRetrieval{}, 120, 4, 16, 10'000, 40, 200'000, 35,
                            key_prepare<C1>(keys, q));
    FakeKeys keys2;
    run_layout_property<C3>(mc::BlockRetrieval{}, 300, 2, 32, 10'000, 320, 100'000, 36,
                            key_prepare<C3>(keys2, q));
  }
  SUBCASE("Quest") {
    FakeKeys keys;
    std::vector<float> q;
    run_layout_property<C1>(mc::Quest{}, 120, 4, 16, 10'000, 40, 200'000, 37,
                            key_prepare<C1>(keys, q));
    FakeKeys keys2;
    run_layout_property<C3>(mc::Quest{}, 300, 2, 32, 10'000, 320, 100'000, 38,
                            key_prepare<C3>(keys2, q));
  }
  SUBCASE("oracle top-k") {  // brute force: short histories
    run_layout_property<C1>(mc::OracleTopK{}, 120, 4, 16, 10'000, 10, 700, 39,
                            [](mc::OracleTopK& o, std::int64_t, std::mt19937_64& rng) {
                              const std::uint64_t salt = rng() % 64;
                              o.nll = [salt](std::span<const mc::Node> w) { return fake_nll<C1>(w, salt); };
                            });
  }
}

TEST_CASE("baselines: the window baselines show exactly the newest tokens (and the sinks)") {
  using C = mc::Config<4, 2>;
  mc::FocusOptions fo;
  fo.recent_tokens = 16;
  for (const std::int64_t n : {0, 3, 50, 100, 101, 5000}) {
    INFO("n = ", n);
    mc::FocusAllocator<C, mc::Truncation> trunc(fo, {100, 0});
    mc::WorkingContext<C> a({100, 0});
    trunc.admit(a, n);
    trunc.step(a, std::vector<float>(static_cast<std::size_t>(a.size()), 0.0f));
    REQUIRE(a.size() == std::min<std::int64_t>(n, 100));
    for (std::int64_t i = 0; i < a.size(); ++i) CHECK(a[i].node() == mc::Node{0, n - a.size() + i});
    mc::FocusAllocator<C, mc::SinksWindow> sw(fo, {100, 4});
    mc::WorkingContext<C> b({100, 4});
    sw.admit(b, n);
    sw.step(b, std::vector<float>(static_cast<std::size_t>(b.size()), 0.0f));
    REQUIRE(b.size() == std::min<std::int64_t>(n, 100));
    for (std::int64_t i = 0; i < std::min<std::int64_t>(n, 4); ++i) CHECK(b[i].node() == mc::Node{0, i});
    for (std::int64_t i = std::min<std::int64_t>(n, 4); i < b.size(); ++i)
      CHECK(b[i].node() == mc::Node{0, n - b.size() + i});
  }
  mc::FocusAllocator<C, mc::Truncation> bad(fo, {100, 4});
  mc::WorkingContext<C> c({100, 4});
  bad.admit(c, 10);
  CHECK_THROWS_WITH_AS(bad.step(c, std::vector<float>(10, 0.0f)),
                       doctest::Contains("[mc.focus.truncation_with_sinks]"), mc::Error);
}

TEST_CASE("baselines: on a history with a known answer span the oracle finds it, truncation cannot") {
  using C = mc::Config<8, 2>;
  constexpr std::int64_t n = 4000, answer = 100;  // block 100 = tokens [800, 808), far back
  const auto has_answer = [](std::span<const mc::Node> w) {
    std::int64_t tokens = 0;
    for (const auto& x : w)
      if (x.lod == 0 && x.index >= answer * C::K && x.index < (answer + 1) * C::K) ++tokens;
    return tokens == C::K;
  };
  // The next tokens are predictable only from the answer span, and only when it is visible as
  // tokens (its gist is not enough): NLL 1 with it, 5 without.
  const auto nll = [&](std::span<const mc::Node> w) { return has_answer(w) ? 1.0 : 5.0; };
  mc::FocusOptions fo;
  fo.recent_tokens = 16;
  auto run = [&](auto policy, std::int64_t sinks) {
    mc::WorkingContextOptions wo{160, sinks};
    mc::FocusAllocator<C, decltype(policy)> alloc(fo, wo, std::move(policy));
    mc::WorkingContext<C> wc(wo);
    alloc.admit(wc, n);
    alloc.step(wc, std::vector<float>(static_cast<std::size_t>(wc.size()), 0.0f));
    wc.validate(n);
    std::vector<mc::Node> window;
    for (std::int64_t i = wc.sink_end(); i < wc.size(); ++i) window.push_back(wc[i].node());
    return nll(window);
  };
  mc::OracleTopK oracle;
  oracle.nll = nll;
  CHECK(run(oracle, 4) == 1.0);
  CHECK(run(mc::Truncation{}, 0) == 5.0);
  CHECK(run(mc::SinksWindow{}, 4) == 5.0);
  CHECK(run(mc::RecencyOnly{}, 4) == 5.0);
  // The key-based retrievers find it too when the answer's keys match the query.
  FakeKeys keys;
  keys.grow(n / C::K, 7);
  std::vector<float> q = {1.0f, -1.0f, 0.5f, 2.0f};
  for (std::int64_t i = 0; i < keys.d; ++i) {
    for (std::int32_t j = 0; j < keys.r; ++j)
      keys.reps[static_cast<std::size_t>((answer * keys.r + j) * keys.d + i)] = 3.0f * q[static_cast<std::size_t>(i)];
    keys.lo[static_cast<std::size_t>(answer * keys.d + i)] = keys.hi[static_cast<std::size_t>(answer * keys.d + i)] =
        3.0f * q[static_cast<std::size_t>(i)];
  }
  mc::BlockRetrieval infllm;
  infllm.keys = keys.representatives();
  infllm.query = q;
  CHECK(run(infllm, 4) == 1.0);
  mc::Quest quest;
  quest.pages = keys.bounds();
  quest.query = q;
  CHECK(run(quest, 4) == 1.0);
}

TEST_CASE("baselines: a layout that breaks the rules is refused before the context changes") {
  using C = mc::Config<4, 2>;
  struct Broken {
    int mode = 0;
    void layout(const mc::FocusLayoutInput<C>& in, std::vector<mc::Node>& w) const {
      if (mode == 0) {  // the whole history as tokens: over budget
        for (std::int64_t t = in.sink_end; t < in.num_tokens; ++t) w.push_back({0, t});
      } else if (mode == 1) {  // a gap
        for (std::int64_t t = in.num_tokens - 40; t < in.num_tokens; ++t)
          if (t != in.num_tokens - 30) w.push_back({0, t});
      } else {  // the recent tokens as a gist
        const std::int64_t b = (in.num_tokens / 4 - 1) * 4;
        for (std::int64_t t = in.num_tokens - 40; t < b; ++t) w.push_back({0, t});
        w.push_back({1, b / 4});
      }
    }
  };
  mc::FocusOptions fo;
  fo.recent_tokens = 16;
  const char* want[] = {"over w_max", "[mc.working_context.bad_window]", "at lod 1"};
  for (int mode = 0; mode < 3; ++mode) {
    mc::FocusAllocator<C, Broken> alloc(fo, {100, 4}, Broken{mode});
    mc::WorkingContext<C> wc({100, 4});
    alloc.admit(wc, 400);
    const std::vector<mc::WcEntry> before(wc.entries().begin(), wc.entries().end());
    CHECK_THROWS_WITH_AS(alloc.step(wc, std::vector<float>(static_cast<std::size_t>(wc.size()), 0.0f)),
                         doctest::Contains(want[mode]), mc::Error);
    CHECK(std::equal(before.begin(), before.end(), wc.entries().begin(), wc.entries().end()));
  }
}
