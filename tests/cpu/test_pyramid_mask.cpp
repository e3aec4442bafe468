// SPDX-License-Identifier: Apache-2.0
// Pyramid mask semantics against brute-force models: every query's keys tile its time exactly
// once (strict) or as documented (causal, global slots), leaf rows match a step-by-step
// transcription of the rules, summaries attend with their last child's pattern, the BSR form
// equals the dense reference tile for tile, and key counts grow linearly in N up to 256k leaves.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <megacontext/pyramid_mask.hpp>
#include <set>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace {

using mc::Causality;
using mc::Node;
using mc::PyramidMask;
using mc::PyramidMaskOptions;

struct Case {
  std::int64_t n = 0;
  PyramidMaskOptions opts;
};

std::string describe(const Case& c) {
  std::ostringstream os;
  os << "N=" << c.n << " r=" << c.opts.r << " W=" << c.opts.window << " L=" << c.opts.num_levels
     << " level_windows=[";
  for (std::size_t i = 0; i < c.opts.level_windows.size(); ++i)
    os << (i ? "," : "") << c.opts.level_windows[i];
  os << "] causality=" << (c.opts.causality == Causality::kStrict ? "strict" : "causal")
     << " G=" << c.opts.num_global;
  return os.str();
}

std::int64_t ipow(std::int64_t r, int e) {
  std::int64_t p = 1;
  for (int i = 0; i < e; ++i) p *= r;
  return p;
}

// The cases most tests sweep: small r so that small N already has several levels, windows
// below, at and above r, level windows 0 / 1 / r, and N = 1, r - 1, r, r + 1, r^2 +- 1, primes.
std::vector<Case> grid(Causality causality, std::int32_t num_global = 0) {
  std::vector<Case> cases;
  for (std::int32_t r : {2, 3, 4, 5, 8}) {
    for (std::int32_t levels : {0, 1, 2, 3}) {
      std::vector<std::vector<std::int32_t>> lws{{}};
      if (levels >= 2) lws = {{}, {0}, {1}};
      for (const auto& lw : lws)
        for (std::int32_t w : {1, r + 1, 2 * r + 3})
          for (std::int64_t n : {std::int64_t{1}, std::int64_t{r - 1}, std::int64_t{r},
                                 std::int64_t{r + 1}, std::int64_t{r} * r - 1,
                                 std::int64_t{r} * r + 1, std::int64_t{97}, std::int64_t{211}}) {
            if (n < 1) continue;
            Case c;
            c.n = n;
            c.opts.r = r;
            c.opts.window = w;
            c.opts.num_levels = levels;
            c.opts.level_windows = lw;
            c.opts.causality = causality;
            c.opts.num_global = num_global;
            cases.push_back(c);
          }
    }
  }
  return cases;
}

// The nodes attended by query position q, read back from the dense mask.
std::vector<Node> keys_from_dense(const PyramidMask& m, const std::vector<std::uint8_t>& dense,
                                  std::int32_t q) {
  const std::int64_t s = m.seq_len();
  std::vector<Node> keys;
  for (std::int32_t k = 0; k < s; ++k)
    if (dense[q * s + k]) keys.push_back(m.layout().node_at(k));
  return keys;
}

// How many attended nodes cover each time step in [0, N).
std::vector<int> coverage(const PyramidMask& m, const std::vector<Node>& keys) {
  std::vector<int> cover(static_cast<std::size_t>(m.layout().num_leaves()), 0);
  for (const Node& k : keys) {
    const mc::TokenSpan t = m.layout().tokens(k);
    for (std::int64_t x = t.begin; x < t.end; ++x) ++cover[x];
  }
  return cover;
}

// The expected coverage multiplicity of time step t for query node x (no global slots):
// strict: 1 on [0, end of x), 0 after; causal with an existing parent: 1 before x's span, 2 on
// x's own span (x and its parent), 1 on the rest of the parent, 0 after the parent.
int expected_cover(const PyramidMask& m, Node x, std::int64_t t) {
  const auto& lay = m.layout();
  const mc::TokenSpan own = lay.tokens(x);
  const bool lifted = m.options().causality == Causality::kCausal && x.lod < lay.num_levels() &&
                      lay.contains({x.lod + 1, x.index / lay.r()});
  if (!lifted) return t < own.end ? 1 : 0;
  const mc::TokenSpan parent = lay.tokens({x.lod + 1, x.index / lay.r()});
  if (t < own.begin) return 1;
  if (t < own.end) return 2;
  return t < parent.end ? 1 : 0;
}

// Checks coverage for every query of one mask; returns the first failure, or "".
std::string check_coverage(const PyramidMask& m) {
  const auto dense = m.dense();
  for (std::int32_t q = 0; q < m.seq_len(); ++q) {
    const Node x = m.layout().node_at(q);
    const auto cover = coverage(m, keys_from_dense(m, dense, q));
    for (std::int64_t t = 0; t < static_cast<std::int64_t>(cover.size()); ++t) {
      if (cover[t] != expected_cover(m, x, t)) {
        std::ostringstream os;
        os << "query {lod " << x.lod << ", index " << x.index << "} (position " << q
           << "): time step " << t << " covered " << cover[t] << " times, expected "
           << expected_cover(m, x, t);
        return os.str();
      }
    }
  }
  return {};
}

std::int64_t floor_div(std::int64_t a, std::int64_t b) {
  return a >= 0 ? a / b : -((-a + b - 1) / b);
}

// A literal transcription of the strict leaf rule, one time step at a time: walk back from the
// query assigning each step to the level whose range holds it, then collect the nodes.
std::set<std::pair<std::int32_t, std::int64_t>> reference_leaf_keys(const Case& c, std::int64_t i) {
  const std::int64_t r = c.opts.r;
  const int levels = c.opts.num_levels;
  std::vector<int> level_of(static_cast<std::size_t>(i + 1), levels);
  if (levels > 0) {
    std::int64_t prev = std::max<std::int64_t>(0, floor_div(i + 1 - c.opts.window, r) * r);
    for (std::int64_t t = prev; t <= i; ++t) level_of[t] = 0;
    for (int l = 1; l < levels; ++l) {
      const std::int64_t wl = c.opts.level_window(l);
      const std::int64_t a = std::max<std::int64_t>(
          0, floor_div(prev - wl * ipow(r, l), ipow(r, l + 1)) * ipow(r, l + 1));
      for (std::int64_t t = a; t < prev; ++t) level_of[t] = l;
      prev = a;
    }
  }
  std::set<std::pair<std::int32_t, std::int64_t>> keys;
  for (std::int64_t t = 0; t <= i; ++t) keys.insert({level_of[t], t / ipow(r, level_of[t])});
  return keys;
}

std::set<std::pair<std::int32_t, std::int64_t>> as_set(const mc::PyramidRow& row) {
  std::set<std::pair<std::int32_t, std::int64_t>> s;
  for (const mc::PyramidRange& g : row)
    for (std::int64_t k = g.begin; k < g.end; ++k) s.insert({g.level, k});
  return s;
}

// The strict row of leaf `leaf`, with every node below `level` replaced by its level-`level`
// ancestor: the pattern a summary at `level` ending with that leaf attends.
std::set<std::pair<std::int32_t, std::int64_t>> lifted_leaf_row(const PyramidMask& strict,
                                                                std::int64_t leaf, int level) {
  std::set<std::pair<std::int32_t, std::int64_t>> s;
  const std::int64_t r = strict.options().r;
  for (const auto& [l, k] : as_set(strict.row({0, leaf}))) {
    if (l >= level)
      s.insert({l, k});
    else
      s.insert({level, k / ipow(r, level - l)});
  }
  return s;
}

PyramidMaskOptions with(PyramidMaskOptions o, Causality c, std::int32_t g) {
  o.causality = c;
  o.num_global = g;
  return o;
}

}  // namespace

TEST_CASE("pyramid_mask: the layout puts each level contiguously with floor(N / r^l) nodes") {
  for (std::int32_t r : {2, 3, 32}) {
    for (std::int64_t n : {std::int64_t{0}, std::int64_t{1}, std::int64_t{r - 1}, std::int64_t{r},
                           std::int64_t{r} * r + 5, std::int64_t{100003}}) {
      for (std::int32_t levels : {0, 1, 3}) {
        INFO("r=", r, " N=", n, " L=", levels);
        const mc::PyramidLayout lay(n, r, levels);
        std::int64_t offset = 0;
        for (std::int32_t l = 0; l <= levels; ++l) {
          CHECK(lay.level_offset(l) == offset);
          CHECK(lay.level_size(l) == n / ipow(r, l));
          CHECK(lay.span(l) == ipow(r, l));
          offset += lay.level_size(l);
        }
        CHECK(lay.seq_len() == offset);
        CHECK(lay.level_offset(levels + 1) == offset);
        for (std::int32_t pos = 0; pos < lay.seq_len(); pos += 1 + lay.seq_len() / 97) {
          const Node x = lay.node_at(pos);
          CHECK(lay.contains(x));
          CHECK(lay.position(x) == pos);
          CHECK(lay.tokens(x).end <= n);  // only complete blocks have summaries
        }
      }
    }
  }
}

TEST_CASE("pyramid_mask: pyramid_levels_for keeps the top level at most r nodes") {
  for (std::int32_t r : {2, 3, 32}) {
    for (std::int64_t n = 0; n < 300000; n = n * 3 / 2 + 1) {
      const std::int32_t levels = mc::pyramid_levels_for(n, r);
      INFO("r=", r, " N=", n, " L=", levels);
      CHECK(levels >= 1);
      CHECK(n / ipow(r, levels) <= r);
      if (levels > 1) CHECK(n / ipow(r, levels - 1) > r);  // and it is the smallest such L
    }
  }
  CHECK(mc::pyramid_levels_for(std::int64_t{1} << 18, 32) == 3);  // 262144 / 32^3 = 8
  CHECK(mc::pyramid_levels_for(std::int64_t{1} << 15, 32) == 2);  // 32768 / 32^2 = 32
}

TEST_CASE("pyramid_mask: every query covers every earlier time step exactly once (strict)") {
  int checked = 0;
  for (const Case& c : grid(Causality::kStrict)) {
    const PyramidMask m(c.opts, c.n);
    const std::string err = check_coverage(m);
    INFO(describe(c));
    REQUIRE_MESSAGE(err.empty(), err);
    checked += m.seq_len();
  }
  MESSAGE("strict coverage checked for ", checked, " queries");
}

TEST_CASE("pyramid_mask: the strict variant never attends a key that reaches past the query") {
  for (const Case& c : grid(Causality::kStrict)) {
    const PyramidMask m(c.opts, c.n);
    for (std::int32_t q = 0; q < m.seq_len(); ++q) {
      const Node x = m.layout().node_at(q);
      const std::int64_t end = m.layout().tokens(x).end;
      for (const mc::PyramidRange& g : m.row_at(q)) {
        const std::int64_t key_end = m.layout().tokens({g.level, g.end - 1}).end;
        if (key_end > end) {
          INFO(describe(c), " query {", x.lod, ", ", x.index, "}");
          REQUIRE(key_end <= end);
        }
      }
    }
  }
}

TEST_CASE("pyramid_mask: strict leaf rows match a step-by-step transcription of the rule") {
  for (const Case& c : grid(Causality::kStrict)) {
    const PyramidMask m(c.opts, c.n);
    for (std::int64_t i = 0; i < c.n; ++i) {
      const mc::PyramidRow row = m.row({0, i});
      const auto got = as_set(row);
      if (got != reference_leaf_keys(c, i)) {
        INFO(describe(c), " leaf ", i);
        REQUIRE(got == reference_leaf_keys(c, i));
      }
      // The near window holds the W newest leaves (at least) and fewer than W + r.
      const mc::PyramidRange& near = row[0];
      CHECK(near.level == 0);
      CHECK(near.end == i + 1);
      const std::int64_t want = std::min<std::int64_t>(c.opts.window, i + 1);
      if (c.opts.num_levels > 0 &&
          (near.size() < want || near.size() > c.opts.window + c.opts.r - 1)) {
        INFO(describe(c), " leaf ", i, " near window ", near.size());
        REQUIRE(false);
      }
      // Detail decreases with distance: older keys are never finer than newer ones.
      std::vector<std::pair<std::int64_t, std::int32_t>> by_time;
      for (const auto& [l, k] : got) by_time.push_back({m.layout().tokens({l, k}).begin, l});
      std::sort(by_time.begin(), by_time.end());
      for (std::size_t j = 1; j < by_time.size(); ++j)
        if (by_time[j].second > by_time[j - 1].second) {
          INFO(describe(c), " leaf ", i);
          REQUIRE(by_time[j].second <= by_time[j - 1].second);
        }
    }
  }
}

TEST_CASE("pyramid_mask: a summary attends with its last child's pattern, seen at its level") {
  for (const Case& c : grid(Causality::kStrict)) {
    const PyramidMask m(c.opts, c.n);
    const auto& lay = m.layout();
    for (std::int32_t l = 1; l <= lay.num_levels(); ++l) {
      for (std::int64_t q = 0; q < lay.level_size(l); ++q) {
        const std::int64_t last_leaf = lay.tokens({l, q}).end - 1;
        const auto got = as_set(m.row({l, q}));
        const auto want = lifted_leaf_row(m, last_leaf, l);
        if (got != want) {
          INFO(describe(c), " summary {", l, ", ", q, "}");
          REQUIRE(got == want);
        }
      }
    }
  }
}

TEST_CASE("pyramid_mask: the causal variant covers earlier steps once and overshoots boundedly") {
  std::int64_t overshooting = 0;
  std::int64_t queries = 0;
  for (const Case& c : grid(Causality::kCausal)) {
    const PyramidMask m(c.opts, c.n);
    INFO(describe(c));
    const std::string err = check_coverage(m);
    REQUIRE_MESSAGE(err.empty(), err);
    const auto& lay = m.layout();
    PyramidMaskOptions strict_opts = c.opts;
    strict_opts.causality = Causality::kStrict;
    const PyramidMask strict(strict_opts, c.n);
    for (std::int32_t pos = 0; pos < m.seq_len(); ++pos) {
      const Node x = lay.node_at(pos);
      const mc::TokenSpan own = lay.tokens(x);
      const mc::PyramidRow row = m.row(x);
      std::int64_t reach = 0;  // last time step any key covers, + 1
      std::int64_t first = 0;  // latest start of any key
      for (const mc::PyramidRange& g : row) {
        reach = std::max(reach, lay.tokens({g.level, g.end - 1}).end);
        first = std::max(first, lay.tokens({g.level, g.end - 1}).begin);
      }
      // No key lies entirely in the future, and the overshoot is below r^(l+1) - r^l.
      REQUIRE(first < own.end);
      const std::int64_t bound =
          x.lod < lay.num_levels() ? lay.span(x.lod + 1) - lay.span(x.lod) : 0;
      REQUIRE(reach - own.end <= bound);
      overshooting += reach > own.end ? 1 : 0;
      ++queries;
      // The exact rule: the strict row of the parent's last leaf, seen at the query's level,
      // with the parent's span lifted into the parent, plus the query itself.
      const Node parent{x.lod + 1, x.index / c.opts.r};
      if (x.lod < lay.num_levels() && lay.contains(parent)) {
        const mc::TokenSpan ps = lay.tokens(parent);
        // The first child overshoots by exactly the bound: the bound is tight.
        if (x.index % c.opts.r == 0) CHECK(reach - own.end == bound);
        auto want = lifted_leaf_row(strict, ps.end - 1, x.lod);
        for (std::int64_t k = parent.index * c.opts.r; k < (parent.index + 1) * c.opts.r; ++k)
          want.erase({x.lod, k});
        want.insert({x.lod, x.index});
        want.insert({parent.lod, parent.index});
        const auto got = as_set(row);
        if (got != want) {
          INFO("query {", x.lod, ", ", x.index, "}");
          REQUIRE(got == want);
        }
      } else if (!(row == strict.row(x))) {
        INFO("query {", x.lod, ", ", x.index, "} has no parent: the row must be strict");
        REQUIRE(row == strict.row(x));
      }
    }
  }
  MESSAGE(overshooting, " of ", queries, " causal queries attend a key reaching past them");
  CHECK(overshooting > 0);
}

TEST_CASE("pyramid_mask: global slots are seen by every query and see every earlier leaf") {
  for (Causality causality : {Causality::kStrict, Causality::kCausal}) {
    for (const Case& base : grid(causality)) {
      const PyramidMask plain(base.opts, base.n);
      const auto plain_dense = plain.dense();
      const std::int64_t s = plain.seq_len();
      for (std::int32_t g : {1, 3, base.opts.r + 1, base.opts.window + 5}) {
        const PyramidMask m(with(base.opts, causality, g), base.n);
        const auto got = m.dense();
        const auto& lay = m.layout();
        std::vector<std::uint8_t> want;
        for (std::int32_t q = 0; q < s; ++q) {
          const Node x = lay.node_at(q);
          const std::int64_t end = lay.tokens(x).end;
          if (x.lod == 0 && x.index < g) {
            // A global leaf sees all leaves up to itself in full detail, nothing else.
            want.assign(static_cast<std::size_t>(s), 0);
            std::fill(want.begin(), want.begin() + x.index + 1, std::uint8_t{1});
          } else {
            // Everyone else: its pyramid plus the global leaves before its own end. The
            // pyramid still tiles the time once; [0, G) is seen a second time in full detail.
            want.assign(plain_dense.begin() + q * s, plain_dense.begin() + (q + 1) * s);
            std::fill(want.begin(), want.begin() + std::min<std::int64_t>(g, end), std::uint8_t{1});
          }
          if (!std::equal(want.begin(), want.end(), got.begin() + q * s)) {
            INFO(describe({base.n, with(base.opts, causality, g)}), " query {", x.lod, ", ",
                 x.index, "}");
            REQUIRE(false);
          }
        }
      }
    }
  }
}

TEST_CASE("pyramid_mask: per-query key counts stay within max_row_keys") {
  for (Causality causality : {Causality::kStrict, Causality::kCausal}) {
    for (std::int32_t g : {0, 2}) {
      for (const Case& c : grid(causality, g)) {
        const PyramidMask m(c.opts, c.n);
        const mc::BsrMask bsr = m.bsr(16);
        for (std::int32_t q = 0; q < m.seq_len(); ++q) {
          const Node x = m.layout().node_at(q);
          const std::int64_t keys = m.row_at(q).num_keys();
          if (bsr.row_nnz[q] != keys || keys > m.max_row_keys(x.lod)) {
            INFO(describe(c), " query {", x.lod, ", ", x.index, "} keys ", keys, " bsr ",
                 bsr.row_nnz[q], " bound ", m.max_row_keys(x.lod));
            REQUIRE(false);
          }
        }
      }
    }
  }
}

TEST_CASE("pyramid_mask: the BSR generator equals the dense reference tile for tile") {
  std::vector<Case> cases;
  for (Causality causality : {Causality::kStrict, Causality::kCausal})
    for (const Case& c : grid(causality, causality == Causality::kStrict ? 0 : 3))
      if (c.n >= 97) cases.push_back(c);
  // Realistic shapes: r = 32 with awkward N around block and level boundaries.
  for (std::int64_t n : {1, 31, 32, 33, 1023, 1024, 1025, 2053}) {
    for (Causality causality : {Causality::kStrict, Causality::kCausal}) {
      Case c;
      c.n = n;
      c.opts = {.r = 32, .window = 256, .num_levels = 2, .causality = causality};
      cases.push_back(c);
    }
  }
  Case large;  // S = 4228: a level boundary inside a block row at every B
  large.n = 4099;
  large.opts = {.r = 32, .window = 256, .num_levels = 2};
  cases.push_back(large);
  Case small_w;
  small_w.n = 3001;
  small_w.opts = {.r = 16, .window = 40, .level_windows = {3}, .num_levels = 3, .num_global = 4};
  cases.push_back(small_w);
  for (const Case& c : cases) {
    const PyramidMask m(c.opts, c.n);
    const auto dense = m.dense();
    for (std::int32_t b : {1, 16, 64, 128}) {
      if (b < 64 && m.seq_len() > 1200) continue;  // the O(S^2) reference is slow at large S
      const mc::BsrMask got = m.bsr(b);
      const mc::BsrMask want = mc::bsr_from_dense(dense, m.seq_len(), b);
      const std::string diff = mc::bsr_difference(got, want);
      INFO(describe(c), " B=", b);
      REQUIRE_MESSAGE(diff.empty(), "first difference (generator vs dense): ", diff);
      got.validate();
    }
  }
}

TEST_CASE("pyramid_mask: allows() agrees with the dense mask") {
  const PyramidMask m({.r = 4, .window = 6, .num_levels = 3, .num_global = 2}, 150);
  const auto dense = m.dense();
  const std::int64_t s = m.seq_len();
  for (std::int32_t q = 0; q < s; ++q)
    for (std::int32_t k = 0; k < s; ++k)
      if (m.allows(q, k) != (dense[q * s + k] != 0)) {
        INFO("q=", q, " k=", k);
        REQUIRE(m.allows(q, k) == (dense[q * s + k] != 0));
      }
}

TEST_CASE("pyramid_mask: key counts grow linearly in N up to 256k leaves") {
  // BSR only (the dense mask would be 73 G elements at 256k). L = pyramid_levels_for(N), so the
  // top level stays at most r nodes and a leaf sees at most W + r - 1 + sum (W_l + r - 1) + r.
  constexpr std::int32_t kR = 32;
  constexpr std::int32_t kW = 256;
  std::vector<double> log_n;
  std::vector<double> log_nnz;
  for (std::int64_t n = 1024; n <= 262144; n *= 2) {
    const std::int32_t levels = mc::pyramid_levels_for(n, kR);
    const PyramidMask m({.r = kR, .window = kW, .num_levels = levels}, n);
    const mc::BsrMask bsr = m.bsr(128);
    bsr.validate();
    const auto& lay = m.layout();
    const std::int64_t leaf_bound =
        kW + kR - 1 + (levels - 1) * (2 * kR - 1) + lay.level_size(levels);
    REQUIRE(m.max_row_keys(0) == leaf_bound);
    std::int64_t max_leaf = 0;
    for (std::int32_t q = 0; q < m.seq_len(); ++q) {
      const Node x = lay.node_at(q);
      if (x.lod == 0) max_leaf = std::max<std::int64_t>(max_leaf, bsr.row_nnz[q]);
      if (bsr.row_nnz[q] > m.max_row_keys(x.lod)) {
        INFO("N=", n, " query {", x.lod, ", ", x.index, "}");
        REQUIRE(bsr.row_nnz[q] <= m.max_row_keys(x.lod));
      }
    }
    const double log_r_n = std::log(static_cast<double>(n)) / std::log(double{kR});
    const std::int64_t nb = bsr.num_block_rows();
    MESSAGE("N=", n, " L=", levels, " S=", m.seq_len(), " nnz=", bsr.nnz,
            " nnz/S=", static_cast<double>(bsr.nnz) / m.seq_len(), " nnz/(N(W+log_r N))=",
            static_cast<double>(bsr.nnz) / (static_cast<double>(n) * (kW + log_r_n)),
            " max leaf keys=", max_leaf, " (bound ", leaf_bound, ")", " blocks=", bsr.num_blocks(),
            " (causal dense: ", nb * (nb + 1) / 2, ")");
    log_n.push_back(std::log(static_cast<double>(n)));
    log_nnz.push_back(std::log(static_cast<double>(bsr.nnz)));
  }
  // Least-squares slope of log(nnz) against log(N): 1 for O(N (W + log N)), 2 for dense.
  const double k = static_cast<double>(log_n.size());
  double sx = 0, sy = 0, sxx = 0, sxy = 0;
  for (std::size_t i = 0; i < log_n.size(); ++i) {
    sx += log_n[i];
    sy += log_nnz[i];
    sxx += log_n[i] * log_n[i];
    sxy += log_n[i] * log_nnz[i];
  }
  const double slope = (k * sxy - sx * sy) / (k * sxx - sx * sx);
  MESSAGE("least-squares slope of log(nnz) vs log(N), N = 1k..256k: ", slope);
  CHECK(slope > 0.9);
  CHECK(slope < 1.15);
}

TEST_CASE("pyramid_mask: invalid options throw mc::Error naming the bad field and value") {
  const auto make = [](PyramidMaskOptions o, std::int64_t n = 100) { return PyramidMask(o, n); };
  CHECK_THROWS_WITH_AS(make({.r = 1}), doctest::Contains("[mc.pyramid_mask.bad_r] r = 1"),
                       mc::Error);
  CHECK_THROWS_WITH_AS(make({.r = 5000}), doctest::Contains("r = 5000"), mc::Error);
  CHECK_THROWS_WITH_AS(make({.window = 0}),
                       doctest::Contains("[mc.pyramid_mask.bad_window] window = 0"), mc::Error);
  CHECK_THROWS_WITH_AS(make({.num_levels = -1}), doctest::Contains("num_levels = -1"), mc::Error);
  CHECK_THROWS_WITH_AS(make({.num_levels = 16}), doctest::Contains("num_levels = 16"), mc::Error);
  CHECK_THROWS_WITH_AS(make({.r = 4096, .num_levels = 6}), doctest::Contains("overflows"),
                       mc::Error);
  CHECK_THROWS_WITH_AS(make({.level_windows = {1, 2}, .num_levels = 2}),
                       doctest::Contains("level_windows has 2 values"), mc::Error);
  CHECK_THROWS_WITH_AS(make({.level_windows = {4, -2}, .num_levels = 3}),
                       doctest::Contains("level_windows[1] = -2"), mc::Error);
  CHECK_THROWS_WITH_AS(make({.causality = static_cast<Causality>(7)}),
                       doctest::Contains("causality = 7"), mc::Error);
  CHECK_THROWS_WITH_AS(make({.num_global = -1}), doctest::Contains("num_global = -1"), mc::Error);
  CHECK_THROWS_WITH_AS(make({}, -3), doctest::Contains("num_leaves = -3"), mc::Error);
  CHECK_THROWS_WITH_AS(make({}, std::int64_t{1} << 31), doctest::Contains("num_leaves"), mc::Error);
  CHECK_THROWS_WITH_AS(make({.r = 2, .num_levels = 1}, 0x7fffffff),
                       doctest::Contains("at most 2^31 - 1"), mc::Error);
  CHECK_THROWS_WITH_AS(mc::pyramid_levels_for(10, 1), doctest::Contains("r = 1"), mc::Error);

  const PyramidMask m({.r = 4, .window = 4, .num_levels = 2}, 50);
  CHECK_THROWS_WITH_AS(m.row({0, 50}), doctest::Contains("[mc.pyramid_mask.bad_query]"), mc::Error);
  CHECK_THROWS_WITH_AS(m.row({3, 0}), doctest::Contains("lod 3"), mc::Error);
  CHECK_THROWS_WITH_AS(m.row_at(m.seq_len()), doctest::Contains("query position"), mc::Error);
  CHECK_THROWS_WITH_AS(m.allows(0, -1), doctest::Contains("key position -1"), mc::Error);
  CHECK_THROWS_WITH_AS(m.bsr(0), doctest::Contains("block_size = 0"), mc::Error);
  CHECK_THROWS_WITH_AS(m.bsr(8192), doctest::Contains("block_size = 8192"), mc::Error);
  CHECK_THROWS_WITH_AS(m.max_row_keys(3), doctest::Contains("level = 3"), mc::Error);
  try {
    (void)m.row({0, 50});
  } catch (const mc::Error& e) {
    CHECK(e.code() == mc::Errc::kOutOfRange);
  }
  const PyramidMask big({.r = 32, .window = 256, .num_levels = 2}, 9000);
  CHECK_THROWS_WITH_AS((void)big.dense(), doctest::Contains("dense_too_large"), mc::Error);
  CHECK_NOTHROW((void)big.bsr(64));
}

TEST_CASE("pyramid_mask: the worked example of docs/concepts/pyramid_mask.md holds") {
  // r = 4, W = 6, W_1 = r = 4, L = 2, N = 64: S = 64 + 16 + 4 = 84, offsets 0, 64, 80.
  const PyramidMask strict({.r = 4, .window = 6, .num_levels = 2}, 64);
  CHECK(strict.seq_len() == 84);
  CHECK(strict.layout().level_offset(1) == 64);
  CHECK(strict.layout().level_offset(2) == 80);
  const auto ranges = [](const mc::PyramidRow& row) {
    std::vector<std::vector<std::int32_t>> v;
    for (const mc::PyramidRange& g : row) v.push_back({g.level, g.begin, g.end});
    return v;
  };
  using V = std::vector<std::vector<std::int32_t>>;
  // Leaf 45: leaves [40, 46), level-1 nodes [4, 10) = time [16, 40), level-2 node 0 = [0, 16).
  CHECK(ranges(strict.row({0, 45})) == V{{0, 40, 46}, {1, 4, 10}, {2, 0, 1}});
  // Level-1 summary 11 (time [44, 48)) attends like leaf 47, its near leaves seen as level 1.
  CHECK(ranges(strict.row({1, 11})) == V{{1, 4, 12}, {2, 0, 1}});
  // Causal leaf 45: leaves [40, 44) and itself; its block [44, 48) through summary 11.
  const PyramidMask causal({.r = 4, .window = 6, .num_levels = 2, .causality = Causality::kCausal},
                           64);
  CHECK(ranges(causal.row({0, 45})) ==
        V{{0, 40, 44}, {0, 45, 46}, {1, 4, 10}, {1, 11, 12}, {2, 0, 1}});
  const mc::BsrMask bsr = strict.bsr(16);
  CHECK(bsr.row_nnz[45] == 13);
}
