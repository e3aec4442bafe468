// SPDX-License-Identifier: Apache-2.0
// CPU/GPU parity of the token embedding (cuda/megacontext/device_embedding.cuh): the gather is
// bit-exact against rows of the table; the backward's scatter-add (repeated ids included) matches
// an fp64 sum added onto a non-zero table gradient (float atomics: order-free, so |err| <=
// 1e-6·(number of repeats)); an id outside the vocabulary gives a NaN row and sets the flag.
#include <doctest/doctest.h>

#include <megacontext/device_embedding.cuh>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "common/random.hpp"
#include "cuda/parity.cuh"

namespace {

using mc::TokenId;
using mc::test::GuardedBuffer;
using mc::test::LaunchMode;

std::vector<float> randn(std::size_t n, std::uint64_t salt) {
  auto gen = mc::test::rng(salt);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = d(gen);
  return v;
}

}  // namespace

TEST_CASE("cuda embedding forward gathers rows exactly; backward scatter-adds every row") {
  const mc::test::Stream stream;
  for (const std::int64_t vocab : {std::int64_t{1}, std::int64_t{97}, std::int64_t{8192}})
    for (const std::int64_t d : {std::int64_t{1}, std::int64_t{33}, std::int64_t{512}})
      for (const std::int64_t n : {std::int64_t{1}, std::int64_t{300}})
        for (const LaunchMode mode : mc::test::kLaunchModes) {
          INFO("vocab=", vocab, " d=", d, " n=", n, " launch=", mc::test::to_string(mode), " ",
               mc::test::seed_info());
          const auto table = randn(static_cast<std::size_t>(vocab * d), 1);
          auto gen = mc::test::rng(2);
          // Ids from a small range so they repeat.
          std::uniform_int_distribution<TokenId> pick(0, static_cast<TokenId>(std::min<std::int64_t>(vocab, 13) - 1));
          std::vector<TokenId> ids(static_cast<std::size_t>(n));
          for (auto& id : ids) id = pick(gen);
          const auto dout = randn(static_cast<std::size_t>(n * d), 3);
          const auto dtable0 = randn(table.size(), 4);

          GuardedBuffer<float> gt(table.size()), gout(dout.size()), gdout(dout.size()), gdt(table.size());
          GuardedBuffer<TokenId> gids(ids.size());
          GuardedBuffer<int> gerr(1);
          gt.upload(table);
          gids.upload(ids);
          gdout.upload(dout);
          gerr.upload({0});
          gout.poison();
          mc::test::launch(mode, stream, [&](cudaStream_t s) {
            return mc::cuda::embedding_forward(gt.data(), vocab, d, gids.data(), n, gout.data(),
                                               gerr.data(), s);
          });
          std::vector<float> want(dout.size());
          for (std::int64_t i = 0; i < n; ++i)
            for (std::int64_t c = 0; c < d; ++c)
              want[static_cast<std::size_t>(i * d + c)] = table[static_cast<std::size_t>(ids[static_cast<std::size_t>(i)] * d + c)];
          const auto ce = mc::test::compare_exact(gout.download(), want);
          CHECK_MESSAGE(ce.ok, ce.report);
          CHECK(gerr.download()[0] == 0);

          gdt.upload(dtable0);
          mc::test::launch(mode, stream, [&](cudaStream_t s) {
            return mc::cuda::embedding_backward(gdout.data(), gids.data(), n, vocab, d, gdt.data(), s);
          });
          const int adds = mode == LaunchMode::kGraph ? 2 : 1;
          std::vector<double> ref(dtable0.begin(), dtable0.end());
          for (std::int64_t i = 0; i < n; ++i)
            for (std::int64_t c = 0; c < d; ++c)
              ref[static_cast<std::size_t>(ids[static_cast<std::size_t>(i)] * d + c)] +=
                  adds * static_cast<double>(dout[static_cast<std::size_t>(i * d + c)]);
          const auto cb = mc::test::compare_close(gdt.download(), ref, 1e-6 * static_cast<double>(n), 1e-6, 1e-11);
          CHECK_MESSAGE(cb.ok, cb.report);
          for (auto* b : {&gt, &gout, &gdout, &gdt}) CHECK(b->guards_intact());
          CHECK(gids.guards_intact());
          CHECK(gerr.guards_intact());
        }
}

TEST_CASE("cuda embedding: an id outside the vocabulary gives a NaN row and sets the flag") {
  const mc::test::Stream stream;
  const std::int64_t vocab = 10, d = 8;
  const auto table = randn(static_cast<std::size_t>(vocab * d), 5);
  const std::vector<TokenId> ids{3, 10, -1, 9};
  GuardedBuffer<float> gt(table.size()), gout(ids.size() * d), gdt(table.size());
  GuardedBuffer<TokenId> gids(ids.size());
  GuardedBuffer<int> gerr(1);
  gt.upload(table);
  gids.upload(ids);
  gerr.upload({0});
  gout.poison();
  mc::test::launch(LaunchMode::kStream, stream, [&](cudaStream_t s) {
    return mc::cuda::embedding_forward(gt.data(), vocab, d, gids.data(), 4, gout.data(), gerr.data(), s);
  });
  const auto out = gout.download();
  CHECK(gerr.download()[0] == 1);
  for (std::int64_t c = 0; c < d; ++c) {
    CHECK(out[static_cast<std::size_t>(c)] == table[static_cast<std::size_t>(3 * d + c)]);
    CHECK(std::isnan(out[static_cast<std::size_t>(d + c)]));
    CHECK(std::isnan(out[static_cast<std::size_t>(2 * d + c)]));
  }
  // The backward skips them: only rows 3 and 9 change.
  std::vector<float> zeros(table.size(), 0.0f);
  gdt.upload(zeros);
  mc::test::launch(LaunchMode::kStream, stream, [&](cudaStream_t s) {
    return mc::cuda::embedding_backward(gt.data(), gids.data(), 4, vocab, d, gdt.data(), s);
  });
  const auto dt = gdt.download();
  for (std::int64_t r = 0; r < vocab; ++r)
    for (std::int64_t c = 0; c < d; ++c) {
      const float v = dt[static_cast<std::size_t>(r * d + c)];
      if (r == 3 || r == 9) CHECK(v == table[static_cast<std::size_t>((r == 3 ? 0 : 3) * d + c)]);
      else CHECK(v == 0.0f);
    }
  CHECK(gdt.guards_intact());
}

TEST_CASE("cuda embedding: bad arguments throw mc::Error before any launch") {
  float* p = reinterpret_cast<float*>(std::uintptr_t{4096});
  auto* ids = reinterpret_cast<TokenId*>(std::uintptr_t{1 << 20});
  CHECK_THROWS_WITH_AS(mc::cuda::embedding_forward(p, 0, 8, ids, 4, p + 1000),
                       doctest::Contains("[mc.embedding.bad_shape]"), mc::Error);
  CHECK_THROWS_WITH_AS(mc::cuda::embedding_forward(p, 10, 8, nullptr, 4, p + 1000),
                       doctest::Contains("[mc.embedding.null_pointer]"), mc::Error);
  CHECK_THROWS_WITH_AS(mc::cuda::embedding_forward(p, 10, 8, ids, 4, p + 8),
                       doctest::Contains("[mc.embedding.aliasing]"), mc::Error);
}
