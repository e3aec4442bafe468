// SPDX-License-Identifier: Apache-2.0
#include <doctest/doctest.h>

#include <megacontext/config.hpp>
#include <megacontext/error.hpp>

TEST_CASE("config: span(lod) is K^lod for every level of the shipped configs") {
  using C = mc::Config<32, 3>;
  CHECK(C::span(0) == 1);
  CHECK(C::span(1) == 32);
  CHECK(C::span(2) == 1024);
  CHECK(C::span(3) == 32768);
  CHECK(C::kTopSpan == 32768);
  CHECK(C::kNumLevels == 4);
  static_assert(mc::Config<16, 2>::span(2) == 256);
  static_assert(mc::Config<64, 2, double>::span(1) == 64);
  static_assert(std::is_same_v<mc::DefaultConfig::Scalar, float>);
}

TEST_CASE("config: checked_pow reports overflow instead of wrapping") {
  CHECK(mc::detail::checked_pow(2, 62) == (std::int64_t{1} << 62));
  CHECK(mc::detail::checked_pow(2, 63) == -1);
  CHECK(mc::detail::checked_pow(4096, 6) == -1);
  CHECK(mc::detail::checked_pow(3, 0) == 1);
}

TEST_CASE("error: MC_EXPECTS throws mc::Error with the code and the streamed message") {
  auto f = [](int w_max) {
    MC_EXPECTS(w_max > 0, mc::Errc::kInvalidArgument, "[mc.test.bad] w_max = ", w_max,
               " must be > 0");
  };
  CHECK_NOTHROW(f(3));
  CHECK_THROWS_WITH_AS(f(-2), "[mc.test.bad] w_max = -2 must be > 0", mc::Error);
  try {
    f(0);
  } catch (const mc::Error& e) {
    CHECK(e.code() == mc::Errc::kInvalidArgument);
  }
  CHECK(mc::to_string(mc::Errc::kFormat) == "format");
}
