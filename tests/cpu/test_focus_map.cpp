// SPDX-License-Identifier: Apache-2.0
// FocusMap: each bin's level is the finest lod of the entries overlapping it (checked against a
// per-token brute force), evicted history is -1, and the SVG has one run-length row per
// snapshot and a legend entry per level.
#include <doctest/doctest.h>

#include <megacontext/focus_map.hpp>

#include <random>
#include <string>

#include "common/random.hpp"

TEST_CASE("FocusMap: bins hold the finest level present, -1 where evicted") {
  using C = mc::Config<4, 3>;
  INFO(mc::test::seed_info());
  auto rng = mc::test::rng(5);
  mc::WorkingContext<C> wc({.w_max = 1 << 20, .sink_tokens = 4});
  wc.extend(1000, 900, 0);  // coarse up to 900, tokens after
  for (int i = 0; i < 200; ++i) {
    const auto pos = std::uniform_int_distribution<std::int64_t>(0, wc.size() - 1)(rng);
    if (wc.can_expand(pos)) wc.expand(pos, 1);
  }
  for (int i = 0; i < 5; ++i) wc.evict_oldest();
  for (std::int64_t bins : {1, 7, 64, 1000, 3000}) {
    INFO("bins ", bins);
    mc::FocusMap<C> map(bins);
    map.record(wc, 3);
    const auto& row = map.rows()[0];
    CHECK(row.tokens == 1000);
    // Brute force: per token its lod (or -1), then the minimum over the tokens whose unit
    // interval [t, t+1) overlaps the bin's interval [b·N/bins, (b+1)·N/bins).
    std::vector<int> tok(1000, -1);
    for (const auto& e : wc.entries()) {
      const auto sp = mc::Lod<C>::tokens(e.node());
      for (auto t = sp.begin; t < sp.end; ++t) tok[static_cast<std::size_t>(t)] = e.lod;
    }
    for (std::int64_t b = 0; b < bins; ++b) {
      int want = 99;
      bool any_shown = false;
      for (std::int64_t t = 0; t < 1000; ++t) {
        const bool in_bin = t * bins < (b + 1) * 1000 && (t + 1) * bins > b * 1000;
        if (!in_bin || tok[static_cast<std::size_t>(t)] < 0) continue;
        any_shown = true;
        want = std::min(want, tok[static_cast<std::size_t>(t)]);
      }
      if (!any_shown) want = -1;
      INFO("bin ", b);
      CHECK(row.level[static_cast<std::size_t>(b)] == want);
    }
  }
  mc::FocusMap<C> map(50);
  map.record(wc, 0);
  map.record(wc, 1);
  const std::string svg = map.svg(2, 5, "a <test> & title");
  CHECK(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
  CHECK(svg.ends_with("</svg>\n"));
  CHECK(svg.find("a &lt;test&gt; &amp; title") != std::string::npos);
  for (const char* label : {"evicted", "LOD0", "LOD1", "LOD2", "LOD3"})
    CHECK(svg.find(std::string(">") + label + "<") != std::string::npos);
  CHECK_THROWS_WITH_AS(mc::FocusMap<C>(0), doctest::Contains("[mc.focus_map.bad_bins]"), mc::Error);
}
