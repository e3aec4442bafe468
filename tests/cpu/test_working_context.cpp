// SPDX-License-Identifier: Apache-2.0
// WorkingContext: tiling invariants, expand/collapse/evict/restore, validate() naming the broken
// invariant, and patches that turn the previous context into the current one.
#include <doctest/doctest.h>

#include <megacontext/working_context.hpp>

#include <random>

#include "common/random.hpp"

namespace {

// Applies a patch to a "device buffer" of per-entry rows (here: the entry itself), the way a GPU
// copy would be updated; fresh rows are filled from the current context.
template <class WC>
std::vector<mc::WcEntry> apply_patch(const std::vector<mc::WcEntry>& old_rows, const WC& wc) {
  const mc::WcPatch p = wc.patch();
  REQUIRE(p.old_size == static_cast<std::int64_t>(old_rows.size()));
  REQUIRE(p.new_size == wc.size());
  std::vector<mc::WcEntry> rows(static_cast<std::size_t>(p.new_size), mc::WcEntry{-1, -1, -1});
  std::int64_t covered = 0;
  for (const auto& m : p.moves) {
    for (std::int64_t i = 0; i < m.count; ++i)
      rows[static_cast<std::size_t>(m.new_begin + i)] = old_rows[static_cast<std::size_t>(m.old_begin + i)];
    covered += m.count;
  }
  for (const auto& f : p.fresh) {
    for (std::int64_t i = f.begin; i < f.end; ++i) rows[static_cast<std::size_t>(i)] = wc[i];
    covered += f.end - f.begin;
  }
  CHECK(covered == p.new_size);  // every row written exactly once (no poison left)
  return rows;
}

template <class WC>
std::vector<mc::WcEntry> snapshot(const WC& wc) {
  return {wc.entries().begin(), wc.entries().end()};
}

}  // namespace

TEST_CASE("working_context: extend tiles new history, coarse before the recent part") {
  using C = mc::Config<4, 2>;
  mc::WorkingContext<C> wc({100, 2});
  wc.extend(3, 0, 0);
  CHECK(wc.size() == 3);
  CHECK(wc.sink_end() == 2);
  CHECK(wc.window_begin() == 2);
  wc.validate(3);
  wc.extend(45, 40, 1);  // [3, 40) coarse: 3 | L1 4..8 8..12 12..16 | L2 16..32 | L1 32..40 | 40..45
  wc.validate(45);
  std::vector<std::pair<int, std::int64_t>> want = {{0, 0}, {0, 1}, {0, 2}, {0, 3}, {1, 1},
                                                    {1, 2}, {1, 3}, {2, 1}, {1, 8}, {1, 9},
                                                    {0, 40}, {0, 41}, {0, 42}, {0, 43}, {0, 44}};
  REQUIRE(wc.size() == static_cast<std::int64_t>(want.size()));
  for (std::size_t i = 0; i < want.size(); ++i) {
    CHECK(wc[static_cast<std::int64_t>(i)].lod == want[i].first);
    CHECK(wc[static_cast<std::int64_t>(i)].index == want[i].second);
  }
  CHECK_THROWS_WITH_AS(wc.extend(44, 44, 2), doctest::Contains("below the tokens already covered"),
                       mc::Error);
}

TEST_CASE("working_context: collapsing everything then expanding everything gives back LOD0") {
  using C = mc::Config<4, 3>;
  for (std::int64_t sinks : {0, 1, 3}) {
    for (std::int64_t n : {1, 5, 63, 64, 65, 200, 257}) {
      INFO("sinks = ", sinks, ", n = ", n);
      mc::WorkingContext<C> wc({1000, sinks});
      wc.extend(n, 0, 0);
      wc.validate(n);
      bool changed = true;
      while (changed) {
        changed = false;
        for (std::int64_t i = 0; i < wc.size(); ++i)
          if (wc.can_collapse(i)) {
            wc.collapse(i, 1);
            changed = true;
          }
        wc.validate(n);
      }
      // Fully collapsed: no two neighbours could merge any further.
      for (std::int64_t i = 0; i < wc.size(); ++i) CHECK_FALSE(wc.can_collapse(i));
      if (sinks == 0) {
        mc::WorkingContext<C> coarsest({1000, 0});
        coarsest.extend(n, n, 0);
        REQUIRE(coarsest.size() == wc.size());
        for (std::int64_t i = 0; i < wc.size(); ++i) CHECK(wc[i].node() == coarsest[i].node());
      }
      changed = true;
      while (changed) {
        changed = false;
        for (std::int64_t i = wc.size() - 1; i >= 0; --i)
          if (wc.can_expand(i)) {
            wc.expand(i, 2);
            changed = true;
          }
        wc.validate(n);
      }
      REQUIRE(wc.size() == n);
      for (std::int64_t i = 0; i < n; ++i) CHECK(wc[i].node() == mc::Node{0, i});
    }
  }
}

TEST_CASE("working_context: validate() names the invariant that broke") {
  using C = mc::Config<4, 2>;
  mc::WorkingContext<C> wc({20, 1});
  wc.extend(16, 16, 0);
  CHECK_THROWS_WITH_AS(wc.validate(15), doctest::Contains("covers 16 tokens but the tree holds 15"),
                       mc::Error);
  wc.extend(40, 0, 0);
  CHECK_THROWS_WITH_AS(wc.validate(40), doctest::Contains("over w_max = 20"), mc::Error);
  CHECK_THROWS_WITH_AS(wc.collapse(0, 1), doctest::Contains("not K aligned siblings"), mc::Error);
  CHECK_THROWS_WITH_AS(wc.expand(1, 1), doctest::Contains("not a gist"), mc::Error);
  CHECK_THROWS_WITH_AS(wc.expand(99, 1), doctest::Contains("entry 99"), mc::Error);
  CHECK_THROWS_WITH_AS((mc::WorkingContext<C>({0, 0})), doctest::Contains("w_max = 0"), mc::Error);
  CHECK_THROWS_WITH_AS((mc::WorkingContext<C>({8, 8})), doctest::Contains("sink_tokens = 8"),
                       mc::Error);
}

TEST_CASE("working_context: evicted history returns, coarsest first, after the sinks") {
  using C = mc::Config<4, 2>;
  mc::WorkingContext<C> wc({100, 2});
  wc.extend(70, 64, 0);  // sinks 0,1 | 2,3 | L1 1,2,3 | L2 1,2,3 | 64..69
  wc.validate(70);
  const auto before = snapshot(wc);
  int evicted = 0;
  while (wc.window_begin() < 48 && wc.evict_oldest()) ++evicted;
  CHECK(wc.window_begin() == 48);
  wc.validate(70);
  while (wc.restore(1)) wc.validate(70);
  CHECK(wc.window_begin() == 2);
  // Restored coarsest-first, so the early history comes back as L2/L1 where alignment allows.
  CHECK(wc[2].node() == mc::Node{0, 2});
  CHECK(wc[3].node() == mc::Node{0, 3});
  CHECK(wc[4].node() == mc::Node{1, 1});
  CHECK(wc.size() == static_cast<std::int64_t>(before.size()));
  CHECK(evicted > 0);
}

TEST_CASE("working_context: patches rebuild the current context from the previous one") {
  INFO(mc::test::seed_info());
  using C = mc::Config<4, 3>;
  auto rng = mc::test::rng(77);
  mc::WorkingContext<C> wc({1 << 20, 3});
  std::int64_t n = 0;
  std::vector<mc::WcEntry> rows;
  for (int round = 0; round < 2000; ++round) {
    wc.begin_patch();
    rows = snapshot(wc);
    const int ops = 1 + static_cast<int>(rng() % 6);
    for (int k = 0; k < ops; ++k) {
      const auto pick = rng() % 10;
      if (pick < 2 || wc.size() == 0) {
        n += static_cast<std::int64_t>(rng() % 40);
        wc.extend(n, n - static_cast<std::int64_t>(rng() % 30), round);
      } else if (pick < 5) {
        const auto i = static_cast<std::int64_t>(rng() % static_cast<std::uint64_t>(wc.size()));
        for (std::int64_t j = i; j < wc.size(); ++j)
          if (wc.can_collapse(j)) {
            wc.collapse(j, round);
            break;
          }
      } else if (pick < 8) {
        const auto i = static_cast<std::int64_t>(rng() % static_cast<std::uint64_t>(wc.size()));
        if (wc.can_expand(i)) wc.expand(i, round);
      } else if (pick == 8) {
        wc.evict_oldest();
      } else {
        wc.restore(round);
      }
    }
    wc.validate(n);
    const auto patched = apply_patch(rows, wc);
    REQUIRE(patched == snapshot(wc));
  }
}

TEST_CASE("working_context: apply() of many edits at once equals rebuilding the entry list") {
  INFO(mc::test::seed_info());
  using C = mc::Config<4, 3>;
  constexpr int K = C::K;
  auto rng = mc::test::rng(91);
  mc::WorkingContext<C> wc({1 << 20, 2});
  std::int64_t n = 0;
  std::int64_t edits_applied = 0;
  for (int round = 0; round < 3000; ++round) {
    // Grow the history now and then, but keep the context near a thousand entries.
    if (wc.size() < 40 || (wc.size() < 1500 && rng() % 8 == 0)) {
      n += static_cast<std::int64_t>(rng() % 300);
      wc.extend(n, n - static_cast<std::int64_t>(rng() % 100), round);
    }
    // A random set of disjoint legal edits, sorted by position: runs between them move left,
    // right or not at all, in every mix.
    std::vector<mc::FocusEdit> edits;
    std::int64_t pos = static_cast<std::int64_t>(rng() % 8);
    while (pos < wc.size()) {
      const bool want_collapse = rng() % 2 == 0;
      if (want_collapse && wc.can_collapse(pos)) {
        edits.push_back({mc::FocusEdit::kCollapse, pos});
        pos += K;
      } else if (!want_collapse && wc.can_expand(pos)) {
        edits.push_back({mc::FocusEdit::kExpand, pos});
        pos += 1;
      }
      pos += static_cast<std::int64_t>(rng() % 12);
    }
    const std::vector<mc::WcEntry> before = snapshot(wc);
    std::vector<mc::WcEntry> want;
    std::size_t i = 0;
    for (const auto& e : edits) {
      while (static_cast<std::int64_t>(i) < e.pos) want.push_back(before[i++]);
      const mc::WcEntry x = before[i];
      if (e.kind == mc::FocusEdit::kExpand) {
        for (int j = 0; j < K; ++j) want.push_back({x.index * K + j, x.lod - 1, round});
        i += 1;
      } else {
        want.push_back({x.index / K, x.lod + 1, round});
        i += K;
      }
    }
    while (i < before.size()) want.push_back(before[i++]);
    wc.begin_patch();
    wc.apply(edits, round);
    REQUIRE(snapshot(wc) == want);
    wc.validate(n);  // includes the per-entry flags
    REQUIRE(apply_patch(before, wc) == want);
    CHECK(wc.fresh_entries() == wc.patch().fresh_entries());
    edits_applied += static_cast<std::int64_t>(edits.size());
  }
  MESSAGE(edits_applied, " edits applied in batches");
  CHECK(edits_applied > 100'000);
}
