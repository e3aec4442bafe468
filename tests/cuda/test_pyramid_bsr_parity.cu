// SPDX-License-Identifier: Apache-2.0
// CPU/GPU parity of the pyramid-mask BSR builder (mc::cuda::PyramidBsrBuilder,
// cuda/megacontext/device_pyramid_bsr.cuh) against PyramidMask::bsr (the CPU generator, itself
// checked against the dense reference in tests/cpu/test_pyramid_mask.cpp): row pointers, column
// indices, per-tile and per-query counts and nnz must be equal, for N = 1k..64k leaves, the
// strict and causal variants, with and without global slots, several block sizes (including a
// non-power of two), r = 32 and r = 5, default and custom level windows.
#include <doctest/doctest.h>

#include <megacontext/bsr.hpp>
#include <megacontext/device_pyramid_bsr.cuh>
#include <megacontext/pyramid_mask.hpp>

#include <cstdint>
#include <string>

#include "common/random.hpp"
#include "cuda/parity.cuh"

namespace {

void check_mask(const mc::PyramidMaskOptions& o, std::int64_t n, std::int32_t block,
                mc::cuda::PyramidBsrBuilder& builder, const mc::test::Stream& stream) {
  INFO("N = ", n, " r = ", o.r, " W = ", o.window, " L = ", o.num_levels, " causal = ",
       int(o.causality), " G = ", o.num_global, " B = ", block,
       " level_windows = ", o.level_windows.size());
  const mc::PyramidMask mask(o, n);
  const mc::BsrMask ref = mask.bsr(block);
  mc::cuda::DeviceBsr dev;
  builder.build(mask, block, dev, stream.get());
  const mc::BsrMask got = dev.download();
  CHECK_NOTHROW(got.validate());
  const std::string diff = mc::bsr_difference(got, ref);
  CHECK_MESSAGE(diff.empty(), diff);
  REQUIRE(ref.nnz > 0);
}

}  // namespace

TEST_CASE("cuda pyramid BSR: equal to the CPU builder for every variant, N = 1k..64k") {
  const mc::test::Stream stream;
  mc::cuda::PyramidBsrBuilder builder;
  for (const std::int64_t n : {std::int64_t{1000}, std::int64_t{4096 + 17}, std::int64_t{16384},
                               std::int64_t{65536}}) {
    for (const std::int32_t r : {32, 5}) {
      for (const auto causality : {mc::Causality::kStrict, mc::Causality::kCausal}) {
        for (const std::int32_t g : {0, 4}) {
          mc::PyramidMaskOptions o;
          o.r = r;
          o.window = 256;
          o.num_levels = mc::pyramid_levels_for(n, r);
          o.causality = causality;
          o.num_global = g;
          for (const std::int32_t b : {64, 128, 48}) check_mask(o, n, b, builder, stream);
        }
      }
    }
  }
}

TEST_CASE("cuda pyramid BSR: custom level windows, no summary levels, tiny and empty masks") {
  const mc::test::Stream stream;
  mc::cuda::PyramidBsrBuilder builder;
  mc::PyramidMaskOptions o;
  o.r = 4;
  o.window = 6;
  o.num_levels = 3;
  o.level_windows = {0, 7};
  o.num_global = 3;
  for (const auto causality : {mc::Causality::kStrict, mc::Causality::kCausal})
    for (const std::int64_t n : {std::int64_t{1}, std::int64_t{63}, std::int64_t{1000}}) {
      o.causality = causality;
      for (const std::int32_t b : {1, 7, 16}) check_mask(o, n, b, builder, stream);
    }
  mc::PyramidMaskOptions plain;  // L = 0: plain causal attention
  plain.num_levels = 0;
  plain.window = 32;
  check_mask(plain, 3000, 64, builder, stream);
  // No leaves: an empty mask with one row pointer.
  const mc::PyramidMask empty(o, 0);
  mc::cuda::DeviceBsr dev;
  builder.build(empty, 64, dev, stream.get());
  CHECK(mc::bsr_difference(dev.download(), empty.bsr(64)).empty());
  CHECK_THROWS_WITH_AS(builder.build(empty, 0, dev, stream.get()),
                       doctest::Contains("[mc.pyramid_mask.bad_block_size]"), mc::Error);
}
