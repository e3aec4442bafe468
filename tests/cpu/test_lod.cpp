// SPDX-License-Identifier: Apache-2.0
// Exhaustive checks of the LOD index maths for small K and Depth against a brute-force model
// that builds the tree explicitly (lists of token spans per level) rather than using the formulas.
#include <doctest/doctest.h>

#include <megacontext/lod.hpp>

#include <vector>

namespace {

// Builds, for a history of n tokens, the explicit token span of every complete node per level by
// merging K consecutive children, then checks every Lod<C> function against it.
template <class C>
void check_against_explicit_tree(std::int64_t n) {
  using L = mc::Lod<C>;
  std::vector<std::vector<mc::TokenSpan>> levels(C::Depth + 1);
  for (std::int64_t t = 0; t < n; ++t) levels[0].push_back({t, t + 1});
  for (int l = 1; l <= C::Depth; ++l) {
    const auto& below = levels[l - 1];
    for (std::size_t i = 0; i + C::K <= below.size(); i += C::K)
      levels[l].push_back({below[i].begin, below[i + C::K - 1].end});
  }
  for (int l = 0; l <= C::Depth; ++l) {
    INFO("K=", C::K, " Depth=", C::Depth, " n=", n, " lod=", l);
    REQUIRE(L::level_size(n, l) == static_cast<std::int64_t>(levels[l].size()));
    for (std::int64_t i = 0; i < static_cast<std::int64_t>(levels[l].size()); ++i) {
      const mc::Node node{l, i};
      const mc::TokenSpan s = levels[l][i];
      REQUIRE(L::tokens(node) == s);
      REQUIRE(s.size() == L::span(l));
      REQUIRE(L::is_aligned(l, s.begin));
      REQUIRE(L::lod_of_width(s.size()) == l);
      for (std::int64_t t = s.begin; t < s.end; ++t) REQUIRE(L::node_at(l, t) == node);
      if (l < C::Depth) {
        const mc::Node p = L::parent(node);
        const mc::TokenSpan ps = L::tokens(p);
        REQUIRE(ps.begin <= s.begin);
        REQUIRE(s.end <= ps.end);
        REQUIRE(L::sibling_rank(node) == (s.begin - ps.begin) / L::span(l));
        for (int a = l; a <= C::Depth; ++a) {
          const mc::TokenSpan as = L::tokens(L::ancestor(node, a));
          REQUIRE(as.begin <= s.begin);
          REQUIRE(s.end <= as.end);
          REQUIRE(as.size() == L::span(a));
        }
      }
      if (l > 0) {
        REQUIRE(L::first_child(node) == i * C::K);
        for (int j = 0; j < C::K; ++j) {
          const mc::Node c = L::child(node, j);
          REQUIRE(levels[l - 1][c.index] == L::tokens(c));
          REQUIRE(L::parent(c) == node);
          REQUIRE(L::sibling_rank(c) == j);
        }
      }
    }
    // Misaligned starts are rejected at every level above 0.
    if (l > 0) {
      REQUIRE_FALSE(L::is_aligned(l, 1));
      REQUIRE_FALSE(L::is_aligned(l, L::span(l) - 1));
    }
  }
  CHECK(L::lod_of_width(0) == -1);
  CHECK(L::lod_of_width(C::K + 1) == -1);
  CHECK(L::lod_of_width(L::span(C::Depth) * C::K) == -1);
  CHECK_FALSE(L::is_valid({-1, 0}));
  CHECK_FALSE(L::is_valid({C::Depth + 1, 0}));
  CHECK_FALSE(L::is_valid({0, -1}));
}

}  // namespace

TEST_CASE_TEMPLATE("lod: index maths matches an explicitly built tree for small K and Depth", C,
                   mc::Config<2, 1>, mc::Config<2, 2>, mc::Config<2, 4>, mc::Config<3, 1>,
                   mc::Config<3, 3>, mc::Config<4, 2>, mc::Config<5, 2>, mc::Config<7, 2>) {
  const std::int64_t top = C::span(C::Depth);
  for (std::int64_t n : {std::int64_t{0}, std::int64_t{1}, std::int64_t{C::K - 1},
                         std::int64_t{C::K}, std::int64_t{C::K + 1}, top - 1, top, top + 1,
                         2 * top + C::K + 1, 3 * top - 1})
    if (n >= 0) check_against_explicit_tree<C>(n);
}

TEST_CASE("lod: functions are usable in constant expressions") {
  using L = mc::Lod<mc::Config<32, 3>>;
  static_assert(L::tokens({2, 3}) == mc::TokenSpan{3072, 4096});
  static_assert(L::parent({0, 1023}) == mc::Node{1, 31});
  static_assert(L::ancestor({0, 40000}, 3) == mc::Node{3, 1});
  static_assert(L::level_size(1'000'000, 2) == 976);
  static_assert(L::lod_of_width(1024) == 2);
  CHECK(true);
}
