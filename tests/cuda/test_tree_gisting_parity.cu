// SPDX-License-Identifier: Apache-2.0
// CPU/GPU parity of batch tree gisting (mc::cuda::embed_tokens + build_tree_gists,
// cuda/megacontext/device_tree_gisting.cuh) against the CPU Tree built with MeanPoolGister:
// every gist of every level. Small-integer embedding tables make every sum exact, so the device
// gists must equal the tree's bit for bit whatever order either side sums in; normal tables are
// compared within atol + rtol and NMSE (Eigen's column sums run in another order). Documents of
// awkward lengths (empty, K - 1, K, K^2 + 1, a tail at every level), appended to the CPU tree in
// several pieces; a custom pooling functor; stream and graph launches; poisoned, guarded outputs.
#include <doctest/doctest.h>

#include <megacontext/device_tree_gisting.cuh>
#include <megacontext/gister.hpp>
#include <megacontext/tree.hpp>

#include <cstdint>
#include <random>
#include <span>
#include <vector>

#include "common/random.hpp"
#include "cuda/parity.cuh"

namespace {

using mc::test::GuardedBuffer;
using mc::test::LaunchMode;

template <class C>
mc::MeanPoolGister<C> make_gister(std::int64_t vocab, std::int64_t d, bool exact,
                                  std::uint64_t salt) {
  if (!exact) return mc::MeanPoolGister<C>::random(vocab, d, mc::test::base_seed() + salt);
  auto gen = mc::test::rng(salt);
  std::uniform_int_distribution<int> v(-8, 8);
  mc::RowMatrix<float> t(vocab, d);
  for (Eigen::Index i = 0; i < t.size(); ++i) t.data()[i] = static_cast<float>(v(gen));
  return mc::MeanPoolGister<C>(std::move(t));
}

// Builds the CPU tree (appending in uneven pieces) and the device levels, and compares them.
template <class C>
void check_document(std::int64_t num_tokens, std::int64_t d, bool exact, LaunchMode mode,
                    const mc::test::Stream& stream) {
  INFO("K = ", C::K, " Depth = ", C::Depth, " N = ", num_tokens, " d = ", d,
       " mode = ", exact ? "exact" : "real", " launch = ", mc::test::to_string(mode), " ",
       mc::test::seed_info());
  const std::int64_t vocab = 97;
  const std::uint64_t salt = static_cast<std::uint64_t>(num_tokens * 131 + d * 7 + C::K);
  auto gister = make_gister<C>(vocab, d, exact, salt);
  auto gen = mc::test::rng(salt + 1);
  std::vector<mc::TokenId> ids(static_cast<std::size_t>(num_tokens));
  for (auto& id : ids) id = static_cast<mc::TokenId>(gen() % vocab);

  mc::MemoryTree<C> tree(d);
  for (std::int64_t at = 0; at < num_tokens;) {
    const std::int64_t piece = std::min<std::int64_t>(num_tokens - at, 1 + gen() % (3 * C::K * C::K));
    tree.append(std::span<const mc::TokenId>(ids.data() + at, static_cast<std::size_t>(piece)),
                gister);
    at += piece;
  }

  const mc::cuda::TreeGistLayout<C> layout(num_tokens);
  for (int l = 1; l <= C::Depth; ++l) REQUIRE(layout.level_size(l) == tree.level_size(l));
  GuardedBuffer<mc::TokenId> d_ids(ids.size());
  GuardedBuffer<float> d_table(static_cast<std::size_t>(vocab * d));
  GuardedBuffer<float> d_emb(static_cast<std::size_t>(num_tokens * d));
  GuardedBuffer<float> d_gists(static_cast<std::size_t>(layout.total_rows() * d));
  GuardedBuffer<int> d_error(1);
  d_ids.upload(ids);
  const auto& table = gister.table();
  d_table.upload(std::vector<float>(table.data(), table.data() + table.size()));
  d_emb.poison();
  d_gists.poison();
  d_error.upload({0});
  mc::test::launch(mode, stream, [&](cudaStream_t s) {
    MC_CUDA_RETURN_IF_ERROR(mc::cuda::embed_tokens(d_ids.data(), num_tokens, d_table.data(), vocab,
                                                   d, d_emb.data(), d_error.data(), s));
    return mc::cuda::build_tree_gists<C>(d_emb.data(), num_tokens, d, d_gists.data(), s);
  });
  CHECK(d_error.download()[0] == 0);
  CHECK(d_emb.guards_intact());
  CHECK(d_gists.guards_intact());
  const std::vector<float> gpu = d_gists.download();
  for (int l = 1; l <= C::Depth; ++l) {
    const std::int64_t rows = layout.level_size(l);
    if (rows == 0) continue;
    INFO("level ", l, " (", rows, " gists)");
    const auto ref = tree.gists(l, 0, rows);
    const auto first = gpu.begin() + layout.row_offset(l) * d;
    const std::vector<float> got(first, first + rows * d);
    if (exact) {
      const auto cmp =
          mc::test::compare_exact(got, std::vector<float>(ref.data(), ref.data() + ref.size()));
      CHECK_MESSAGE(cmp.ok, cmp.report);
    } else {
      const auto cmp = mc::test::compare_close(
          got, std::vector<double>(ref.data(), ref.data() + ref.size()), 1e-6, 1e-5, 1e-11);
      CHECK_MESSAGE(cmp.ok, cmp.report);
    }
  }
}

template <class C>
void sweep(const mc::test::Stream& stream) {
  constexpr std::int64_t K = C::K;
  const std::int64_t lengths[] = {0, 1, K - 1, K, K + 1, K * K - 1, K * K + 1,
                                  3 * K * K * K + 5 * K * K + 7 * K + 3};
  int i = 0;
  for (const std::int64_t n : lengths)
    for (const std::int64_t d : {std::int64_t{3}, std::int64_t{64}})
      for (const bool exact : {true, false})
        check_document<C>(n, d, exact, mc::test::kLaunchModes[i++ % 2], stream);
}

// A pooling functor other than the mean, to show the plug: records each call and forwards it.
struct RecordingPool {
  mc::cuda::MeanPoolLevels inner;
  std::vector<std::pair<int, std::int64_t>> calls;
  cudaError_t operator()(int lod, const float* in, std::int64_t n, float* out, cudaStream_t s) {
    calls.emplace_back(lod, n);
    return inner(lod, in, n, out, s);
  }
};
static_assert(mc::cuda::LevelPooler<RecordingPool>);
static_assert(mc::cuda::LevelPooler<mc::cuda::MeanPoolLevels>);

}  // namespace

TEST_CASE("cuda tree gisting: every level equals the CPU Tree with MeanPoolGister") {
  const mc::test::Stream stream;
  sweep<mc::Config<4, 3>>(stream);   // K outside the unrolled list (generic pooling kernel)
  sweep<mc::Config<16, 2>>(stream);
  sweep<mc::Config<32, 3>>(stream);  // the default configuration
}

TEST_CASE("cuda tree gisting: larger documents at d = 256 (float4 path) match bit for bit") {
  const mc::test::Stream stream;
  check_document<mc::Config<32, 2>>(200'003, 256, true, LaunchMode::kStream, stream);
  check_document<mc::Config<32, 3>>(70'001, 256, true, LaunchMode::kGraph, stream);
  check_document<mc::Config<32, 2>>(50'000, 256, false, LaunchMode::kStream, stream);
}

TEST_CASE("cuda tree gisting: the pooling functor is called once per non-empty level") {
  using C = mc::Config<8, 3>;
  const mc::test::Stream stream;
  const std::int64_t n = 8 * 8 * 3 + 5, d = 16;  // levels of 24, 3 and 0 gists
  GuardedBuffer<float> d_emb(static_cast<std::size_t>(n * d));
  std::vector<float> emb(static_cast<std::size_t>(n * d));
  for (std::size_t i = 0; i < emb.size(); ++i) emb[i] = static_cast<float>(i % 13) - 6.0f;
  d_emb.upload(emb);
  const mc::cuda::TreeGistLayout<C> layout(n);
  CHECK(layout.level_size(1) == 24);
  CHECK(layout.level_size(2) == 3);
  CHECK(layout.level_size(3) == 0);
  GuardedBuffer<float> d_gists(static_cast<std::size_t>(layout.total_rows() * d));
  d_gists.poison();
  RecordingPool pool{{C::K, d}, {}};
  MC_CUDA_TRY(mc::cuda::build_tree_gists<C>(d_emb.data(), n, d, d_gists.data(), pool,
                                            stream.get()));
  stream.sync();
  CHECK(pool.calls == std::vector<std::pair<int, std::int64_t>>{{1, 24}, {2, 3}});
  // Level 2 is the mean of the level-1 rows: the plumbing feeds each level from the one below.
  const std::vector<float> g = d_gists.download();
  for (std::int64_t j = 0; j < 3; ++j)
    for (std::int64_t c = 0; c < d; ++c) {
      float sum = 0.0f;
      for (std::int64_t k = 0; k < 8; ++k) sum += g[static_cast<std::size_t>((j * 8 + k) * d + c)];
      CHECK(g[static_cast<std::size_t>((24 + j) * d + c)] == sum / 8.0f);
    }
  CHECK(d_gists.guards_intact());
}

TEST_CASE("cuda tree gisting: a token id outside the table gives NaN rows and the error flag") {
  const mc::test::Stream stream;
  const std::int64_t vocab = 10, d = 8;
  GuardedBuffer<float> d_table(static_cast<std::size_t>(vocab * d));
  d_table.upload(std::vector<float>(static_cast<std::size_t>(vocab * d), 1.0f));
  GuardedBuffer<mc::TokenId> d_ids(4);
  d_ids.upload({1, 10, 3, -1});
  GuardedBuffer<float> d_out(static_cast<std::size_t>(4 * d));
  GuardedBuffer<int> d_error(1);
  d_error.upload({0});
  MC_CUDA_TRY(mc::cuda::embed_tokens(d_ids.data(), 4, d_table.data(), vocab, d, d_out.data(),
                                     d_error.data(), stream.get()));
  stream.sync();
  CHECK(d_error.download()[0] == 1);
  const std::vector<float> out = d_out.download();
  CHECK(out[0] == 1.0f);
  CHECK(std::isnan(out[static_cast<std::size_t>(d)]));
  CHECK(out[static_cast<std::size_t>(2 * d)] == 1.0f);
  CHECK(std::isnan(out[static_cast<std::size_t>(3 * d)]));
}
