// SPDX-License-Identifier: Apache-2.0
// The BSR format on its own: building from per-query key ranges equals the O(S^2) dense
// reference on random masks, validate() catches every kind of corruption, and bad inputs
// (block size, ranges out of order, wrong dense size) throw mc::Error with a [mc.bsr.*] tag.
#include <doctest/doctest.h>

#include <cstdint>
#include <megacontext/bsr.hpp>
#include <random>
#include <utility>
#include <vector>

#include "common/random.hpp"

namespace {

// A random mask as ascending disjoint runs per row (a few runs of random length, some rows
// empty), plus the same mask in dense form.
struct RandomMask {
  std::int32_t seq_len = 0;
  std::vector<std::vector<std::pair<std::int32_t, std::int32_t>>> runs;
  std::vector<std::uint8_t> dense;
};

RandomMask random_mask(std::int32_t s, std::uint64_t salt) {
  auto gen = mc::test::rng(salt);
  RandomMask m;
  m.seq_len = s;
  m.runs.resize(static_cast<std::size_t>(s));
  m.dense.assign(static_cast<std::size_t>(s) * static_cast<std::size_t>(s), 0);
  for (std::int32_t q = 0; q < s; ++q) {
    std::int32_t at = 0;
    const auto num_runs = static_cast<int>(gen() % 5);
    for (int k = 0; k < num_runs && at < s; ++k) {
      const auto b = static_cast<std::int32_t>(at + static_cast<std::int32_t>(gen() % (s - at)));
      const auto e = static_cast<std::int32_t>(b + 1 + static_cast<std::int32_t>(gen() % (s - b)));
      m.runs[q].push_back({b, e});
      for (std::int32_t x = b; x < e; ++x) m.dense[static_cast<std::size_t>(q) * s + x] = 1;
      at = e + static_cast<std::int32_t>(gen() % 3);  // touching runs are allowed
    }
  }
  return m;
}

mc::BsrMask from_runs(const RandomMask& m, std::int32_t block_size) {
  return mc::bsr_from_ranges(m.seq_len, block_size, [&](std::int32_t q, auto&& emit) {
    for (const auto& [b, e] : m.runs[q]) emit(b, e);
  });
}

}  // namespace

TEST_CASE("bsr: building from key ranges equals the dense reference on random masks") {
  INFO(mc::test::seed_info());
  std::uint64_t salt = 0;
  for (std::int32_t s : {0, 1, 2, 7, 64, 100, 257}) {
    const RandomMask m = random_mask(s, ++salt);
    for (std::int32_t b : {1, 3, 16, 64, 128, 4096}) {
      INFO("S=", s, " B=", b);
      const mc::BsrMask got = from_runs(m, b);
      const mc::BsrMask want = mc::bsr_from_dense(m.dense, s, b);
      const std::string diff = mc::bsr_difference(got, want);
      REQUIRE_MESSAGE(diff.empty(), "first difference: ", diff);
      CHECK(got == want);
      CHECK_NOTHROW(got.validate());
      CHECK(got.num_block_rows() == (s + b - 1) / b);
      std::int64_t dense_nnz = 0;
      for (const std::uint8_t x : m.dense) dense_nnz += x;
      CHECK(got.nnz == dense_nnz);
    }
  }
}

TEST_CASE("bsr: full tiles are counted exactly, including the narrow last block") {
  // A causal mask over S = 10 with B = 4: tiles (0,0) (1,1) (2,2) are triangles, the tiles
  // below the diagonal are full, and the last block row/column is 2 wide.
  const std::int32_t s = 10;
  const mc::BsrMask m =
      mc::bsr_from_ranges(s, 4, [](std::int32_t q, auto&& emit) { emit(0, q + 1); });
  CHECK(m.row_ptr == std::vector<std::int32_t>{0, 1, 3, 6});
  CHECK(m.col_idx == std::vector<std::int32_t>{0, 0, 1, 0, 1, 2});
  CHECK(m.block_nnz == std::vector<std::int32_t>{10, 16, 10, 8, 8, 3});
  CHECK(m.nnz == 55);
  CHECK(m.block_extent(2) == 2);
  CHECK_FALSE(m.is_full(0, 0));
  CHECK(m.is_full(1, 1));
  CHECK(m.is_full(2, 3));
  CHECK(m.is_full(2, 4));
  CHECK_FALSE(m.is_full(2, 5));
  CHECK(m.num_full_blocks() == 3);
}

TEST_CASE("bsr: validate() rejects each kind of corruption with [mc.bsr.invalid]") {
  const RandomMask r = random_mask(50, 99);
  const mc::BsrMask good = from_runs(r, 8);
  REQUIRE(good.num_blocks() > 2);
  const auto expect_invalid = [](const mc::BsrMask& m, const char* what) {
    CHECK_THROWS_WITH_AS(m.validate(), doctest::Contains(what), mc::Error);
  };
  {
    mc::BsrMask m = good;
    m.row_ptr.pop_back();
    expect_invalid(m, "row_ptr has");
  }
  {
    mc::BsrMask m = good;
    m.col_idx[1] = m.num_block_rows();
    expect_invalid(m, "[mc.bsr.invalid]");
  }
  {
    mc::BsrMask m = good;
    std::swap(m.col_idx[m.row_ptr[1]], m.col_idx[m.row_ptr[1] + 1]);
    expect_invalid(m, "ascending");
  }
  {
    mc::BsrMask m = good;
    m.block_nnz[0] = 0;
    expect_invalid(m, "block_nnz[0] = 0");
  }
  {
    mc::BsrMask m = good;
    ++m.row_nnz[3];
    expect_invalid(m, "row_nnz adds up to");
  }
  {
    mc::BsrMask m = good;
    ++m.nnz;
    expect_invalid(m, "nnz = ");
  }
}

TEST_CASE("bsr: bad shapes, ranges out of order and wrong dense sizes throw mc::Error") {
  const auto none = [](std::int32_t, auto&&) {};
  CHECK_THROWS_WITH_AS(mc::bsr_from_ranges(10, 0, none),
                       doctest::Contains("[mc.bsr.bad_block_size] block_size = 0"), mc::Error);
  CHECK_THROWS_WITH_AS(mc::bsr_from_ranges(10, 4097, none), doctest::Contains("block_size = 4097"),
                       mc::Error);
  CHECK_THROWS_WITH_AS(mc::bsr_from_ranges(-1, 4, none), doctest::Contains("seq_len = -1"),
                       mc::Error);
  const auto overlapping = [](std::int32_t, auto&& emit) {
    emit(0, 5);
    emit(3, 6);
  };
  CHECK_THROWS_WITH_AS(mc::bsr_from_ranges(10, 4, overlapping),
                       doctest::Contains("[mc.bsr.bad_range] query 0: key range [3, 6)"),
                       mc::Error);
  const auto outside = [](std::int32_t q, auto&& emit) { emit(q, 11); };
  CHECK_THROWS_WITH_AS(mc::bsr_from_ranges(10, 4, outside), doctest::Contains("bad_range"),
                       mc::Error);
  CHECK_THROWS_WITH_AS(mc::bsr_from_dense(std::vector<std::uint8_t>(99), 10, 4),
                       doctest::Contains("[mc.bsr.bad_dense] dense mask has 99 elements"),
                       mc::Error);
}

TEST_CASE("bsr: bsr_difference names the first differing field and index") {
  const RandomMask r = random_mask(40, 7);
  const mc::BsrMask a = from_runs(r, 8);
  CHECK(mc::bsr_difference(a, a).empty());
  mc::BsrMask b = a;
  b.col_idx[2] += 1;
  CHECK(mc::bsr_difference(a, b).rfind("col_idx[2]: ", 0) == 0);
  b = a;
  b.row_nnz.pop_back();
  CHECK(mc::bsr_difference(a, b).find("row_nnz[39]") != std::string::npos);
  b = a;
  b.block_size = 16;
  CHECK(mc::bsr_difference(a, b) == "block_size: 8 vs 16");
}
