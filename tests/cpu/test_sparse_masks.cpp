// SPDX-License-Identifier: Apache-2.0
// The sparse baselines MegaAttention is compared with: the causal sliding window and the causal
// BigBird-style mask are causal, hold exactly the keys their definition lists (checked against a
// brute-force set per query), hit a target nnz (the pyramid's, from pyramid_nnz) exactly, and
// their BSR form equals the dense reference tile for tile.
#include <doctest/doctest.h>

#include <cstdint>
#include <cstdlib>
#include <megacontext/bsr.hpp>
#include <megacontext/pyramid_mask.hpp>
#include <megacontext/sparse_masks.hpp>
#include <set>
#include <vector>

namespace {

// Every allowed key of every query is at or before the query, every query sees itself, and the
// dense mask, row_keys, allows() and nnz agree.
void check_causal_and_consistent(const mc::RangeMask& m) {
  const std::int64_t s = m.seq_len;
  const auto dense = m.dense();
  std::int64_t nnz = 0;
  for (std::int64_t q = 0; q < s; ++q) {
    std::int64_t row = 0;
    for (std::int64_t k = 0; k < s; ++k) {
      const bool on = dense[static_cast<std::size_t>(q * s + k)] != 0;
      if (on && k > q) {
        FAIL("query ", q, " attends future key ", k);
      }
      row += on;
      if ((k == q || k + 1 == q || k == 0) &&
          on != m.allows(static_cast<std::int32_t>(q), static_cast<std::int32_t>(k)))
        FAIL("allows() disagrees with dense() at ", q, ", ", k);
    }
    REQUIRE_MESSAGE(dense[static_cast<std::size_t>(q * s + q)] != 0, "query ", q,
                    " does not see itself");
    REQUIRE(row == m.row_keys(static_cast<std::int32_t>(q)));
    // Ranges ascending, disjoint and not touching.
    for (std::int64_t j = m.row_ptr[q]; j < m.row_ptr[q + 1]; ++j) {
      REQUIRE(m.ranges[j].begin < m.ranges[j].end);
      if (j > m.row_ptr[q]) REQUIRE(m.ranges[j - 1].end < m.ranges[j].begin);
    }
    nnz += row;
  }
  CHECK(nnz == m.nnz);
}

void check_bsr_equals_dense(const mc::RangeMask& m) {
  const auto dense = m.dense();
  for (const std::int32_t b : {1, 3, 16, 64}) {
    const mc::BsrMask fast = m.bsr(b);
    const mc::BsrMask ref = mc::bsr_from_dense(dense, m.seq_len, b);
    fast.validate();
    INFO("B = ", b, ": ", mc::bsr_difference(fast, ref));
    CHECK(fast == ref);
    CHECK(fast.nnz == m.nnz);
  }
}

}  // namespace

TEST_CASE("sparse masks: a sliding window holds exactly [q - w + 1, q] for every query") {
  for (const std::int64_t s : {1, 2, 7, 64, 97}) {
    for (const std::int32_t w : {1, 2, 5, 64, 200}) {
      INFO("S = ", s, ", w = ", w);
      const mc::RangeMask m = mc::sliding_window_mask(s, w);
      check_causal_and_consistent(m);
      for (std::int64_t q = 0; q < s; ++q)
        REQUIRE(m.row_keys(static_cast<std::int32_t>(q)) == std::min<std::int64_t>(q + 1, w));
      check_bsr_equals_dense(m);
    }
  }
}

TEST_CASE("sparse masks: BigBird rows are exactly globals + the block's random keys + the window") {
  mc::BigBirdOptions o;
  for (const std::int64_t s : {1, 5, 40, 97, 130}) {
    for (const std::int32_t w : {1, 4, 9}) {
      for (const std::int32_t g : {0, 2}) {
        for (const std::int32_t blk : {1, 8, 16}) {
          o.window = w;
          o.num_global = g;
          o.block_size = blk;
          o.num_random = 3;
          o.seed = 7;
          INFO("S = ", s, ", w = ", w, ", G = ", g, ", B = ", blk);
          const mc::RangeMask m = mc::bigbird_mask(s, o);
          check_causal_and_consistent(m);
          const auto random = mc::bigbird_random_keys(s, o);
          for (std::int64_t q = 0; q < s; ++q) {
            const std::int64_t b = q / blk;
            const auto& rk = random[static_cast<std::size_t>(b)];
            // The draw: min(r, bB − G) distinct keys in [G, bB).
            REQUIRE(static_cast<std::int64_t>(rk.size()) ==
                    std::min<std::int64_t>(3, std::max<std::int64_t>(0, b * blk - g)));
            std::set<std::int64_t> want;
            for (std::int64_t k = 0; k < std::min<std::int64_t>(g, q + 1); ++k) want.insert(k);
            for (const std::int32_t k : rk) {
              REQUIRE(k >= g);
              REQUIRE(k < b * blk);
              want.insert(k);
            }
            for (std::int64_t k = std::max<std::int64_t>(0, q - w + 1); k <= q; ++k) want.insert(k);
            std::set<std::int64_t> got;
            m.for_each_key_range(static_cast<std::int32_t>(q),
                                 [&](std::int32_t kb, std::int32_t ke) {
                                   for (std::int32_t k = kb; k < ke; ++k) got.insert(k);
                                 });
            REQUIRE(got == want);
          }
          check_bsr_equals_dense(m);
        }
      }
    }
  }
}

TEST_CASE("sparse masks: random keys differ between blocks and seeds but repeat for one seed") {
  mc::BigBirdOptions o;
  o.num_random = 4;
  o.block_size = 8;
  o.num_global = 1;
  o.seed = 1;
  const auto a = mc::bigbird_random_keys(256, o);
  const auto b = mc::bigbird_random_keys(256, o);
  o.seed = 2;
  const auto c = mc::bigbird_random_keys(256, o);
  CHECK(a == b);
  CHECK(a != c);
  std::set<std::vector<std::int32_t>> distinct(a.begin() + 2, a.end());
  CHECK(distinct.size() > a.size() / 2);  // not the same keys for every block
}

TEST_CASE("sparse masks: both baselines hit the pyramid's nnz exactly (well within 2%)") {
  struct Shape {
    std::int64_t n;
    std::int32_t r, window, levels;
  };
  for (const Shape sh : {Shape{128, 4, 16, 2}, Shape{256, 8, 32, 2}, Shape{1000, 8, 64, 2},
                         Shape{2048, 16, 128, 2}, Shape{97, 3, 5, 3}}) {
    mc::PyramidMaskOptions po;
    po.r = sh.r;
    po.window = sh.window;
    po.num_levels = sh.levels;
    const std::int64_t target = mc::pyramid_nnz(sh.n, po);
    // pyramid_nnz is the dense reference's count over all S queries.
    const mc::PyramidMask pm(po, sh.n);
    if (std::int64_t{pm.seq_len()} * pm.seq_len() <= mc::kMaxDenseMaskElements) {
      std::int64_t ones = 0;
      for (const auto v : pm.dense()) ones += v;
      CHECK(ones == target);
    }
    INFO("N = ", sh.n, ", r = ", sh.r, ", W = ", sh.window, ", pyramid nnz = ", target);
    const mc::RangeMask sw = mc::sliding_window_mask_for_nnz(sh.n, target);
    mc::BigBirdOptions bo;
    bo.num_random = 2;
    bo.num_global = 2;
    bo.block_size = 16;
    bo.seed = 11;
    const mc::RangeMask bb = mc::bigbird_mask_for_nnz(sh.n, bo, target);
    for (const mc::RangeMask* m : {&sw, &bb}) {
      CHECK(std::llabs(m->nnz - target) <= target / 50);
      CHECK(m->nnz == target);
      if (sh.n <= 1000) {
        check_causal_and_consistent(*m);
        check_bsr_equals_dense(*m);
      }
    }
    // The fitted window differs by at most one key between rows (w or w + 1, cut at the start).
    std::int64_t lo = sh.n, hi = 0;
    for (std::int64_t q = sh.n / 2; q < sh.n; ++q) {
      lo = std::min(lo, sw.row_keys(static_cast<std::int32_t>(q)));
      hi = std::max(hi, sw.row_keys(static_cast<std::int32_t>(q)));
    }
    CHECK(hi - lo <= 1);
    MESSAGE("N = ", sh.n, ": pyramid nnz ", target, " over S = ", pm.seq_len(),
            " rows; sliding window ", lo, "..", hi, " keys per late query");
  }
}

TEST_CASE("sparse masks: the fit is exact for every target of a small sequence") {
  const std::int64_t s = 23;
  mc::BigBirdOptions bo;
  bo.num_random = 2;
  bo.num_global = 1;
  bo.block_size = 4;
  bo.seed = 3;
  for (std::int64_t t = s; t <= s * (s + 1) / 2; ++t) {
    INFO("target ", t);
    REQUIRE(mc::sliding_window_mask_for_nnz(s, t).nnz == t);
    const std::int64_t floor_nnz = mc::bigbird_mask(s,
                                                    [&] {
                                                      auto o = bo;
                                                      o.window = 1;
                                                      return o;
                                                    }())
                                       .nnz;
    if (t >= floor_nnz) REQUIRE(mc::bigbird_mask_for_nnz(s, bo, t).nnz == t);
  }
}

TEST_CASE("sparse masks: bad arguments name the field") {
  CHECK_THROWS_WITH_AS(mc::sliding_window_mask(0, 4), doctest::Contains("bad_seq_len"), mc::Error);
  CHECK_THROWS_WITH_AS(mc::sliding_window_mask(8, 0), doctest::Contains("bad_window"), mc::Error);
  CHECK_THROWS_WITH_AS(mc::sliding_window_mask_for_nnz(8, 7),
                       doctest::Contains("target_unreachable"), mc::Error);
  CHECK_THROWS_WITH_AS(mc::sliding_window_mask_for_nnz(8, 37),
                       doctest::Contains("target_unreachable"), mc::Error);
  mc::BigBirdOptions o;
  o.num_random = -1;
  CHECK_THROWS_WITH_AS(mc::bigbird_mask(8, o), doctest::Contains("bad_num_random"), mc::Error);
  o = {};
  o.num_global = -2;
  CHECK_THROWS_WITH_AS(mc::bigbird_mask(8, o), doctest::Contains("bad_num_global"), mc::Error);
  o = {};
  o.block_size = 0;
  CHECK_THROWS_WITH_AS(mc::bigbird_mask(8, o), doctest::Contains("bad_block_size"), mc::Error);
  o = {};
  o.num_global = 4;
  CHECK_THROWS_WITH_AS(mc::bigbird_mask_for_nnz(64, o, 70), doctest::Contains("target_unreachable"),
                       mc::Error);
  CHECK_THROWS_WITH_AS(mc::sliding_window_mask(9000, 4).dense(),
                       doctest::Contains("dense_too_large"), mc::Error);
}
