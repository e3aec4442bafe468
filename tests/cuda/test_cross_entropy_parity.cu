// SPDX-License-Identifier: Apache-2.0
// CPU/GPU parity of the next-token cross-entropy (cuda/megacontext/device_cross_entropy.cuh)
// against mc::reference::cross_entropy<double> on the same fp32 logits: vocabularies 1, 97 and
// 8192, logits of scale 30 (a naive exp overflows), ignored targets (-1) including an all-ignored
// batch, per-row lse and loss, mean loss and count, dlogits out of place (poisoned) and in place,
// stream and graph launches. fp32 exp/log over V terms: loss |err| <= 1e-5·max(1, |loss|), dlogits
// |err| <= 1e-8 + 1e-4·|ref| (l − lse is formed in fp32, ulp(100) ≈ 8e-6).
#include <doctest/doctest.h>

#include <megacontext/device_cross_entropy.cuh>
#include <megacontext/reference/cross_entropy.hpp>

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

void check_case(std::int64_t n, std::int64_t vocab, int ignore_every, bool in_place,
                LaunchMode mode, const mc::test::Stream& stream) {
  INFO("n=", n, " vocab=", vocab, " ignore_every=", ignore_every, " in_place=", in_place,
       " launch=", mc::test::to_string(mode), " ", mc::test::seed_info());
  auto gen = mc::test::rng(static_cast<std::uint64_t>(n * 7 + vocab));
  std::normal_distribution<float> normal(0.0f, 30.0f);
  std::vector<float> logits(static_cast<std::size_t>(n * vocab));
  for (float& x : logits) x = normal(gen);
  std::uniform_int_distribution<TokenId> pick(0, static_cast<TokenId>(vocab - 1));
  std::vector<TokenId> targets(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i)
    targets[static_cast<std::size_t>(i)] =
        (ignore_every > 0 && i % ignore_every == 0) ? mc::reference::kIgnoreTarget : pick(gen);

  mc::RowMatrix<double> lr = Eigen::Map<const mc::RowMatrix<float>>(logits.data(), n, vocab).cast<double>();
  mc::RowMatrix<double> dref;
  const double loss_ref = mc::reference::cross_entropy<double>(lr, targets.data(), &dref);
  std::int64_t count = 0;
  std::vector<double> lse_ref(static_cast<std::size_t>(n)), row_ref(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) {
    const double mx = lr.row(i).maxCoeff();
    lse_ref[static_cast<std::size_t>(i)] = mx + std::log((lr.row(i).array() - mx).exp().sum());
    const TokenId t = targets[static_cast<std::size_t>(i)];
    row_ref[static_cast<std::size_t>(i)] = t < 0 ? 0.0 : lse_ref[static_cast<std::size_t>(i)] - lr(i, t);
    count += t >= 0 ? 1 : 0;
  }

  GuardedBuffer<float> gl(logits.size()), gdl(in_place ? 0 : logits.size());
  GuardedBuffer<float> glse(static_cast<std::size_t>(n)), grow(static_cast<std::size_t>(n)), gloss(1);
  GuardedBuffer<TokenId> gt(targets.size());
  GuardedBuffer<int> gc(1);
  gl.upload(logits);
  gt.upload(targets);
  glse.poison();
  grow.poison();
  gloss.poison();
  gc.poison();
  mc::test::launch(mode, stream, [&](cudaStream_t s) {
    return mc::cuda::cross_entropy_forward(gl.data(), gt.data(), n, vocab, glse.data(), grow.data(),
                                           gloss.data(), gc.data(), s);
  });
  const float loss = gloss.download()[0];
  CHECK(gc.download()[0] == count);
  CHECK_MESSAGE(std::abs(loss - loss_ref) <= 1e-5 * std::max(1.0, std::abs(loss_ref)),
                "loss gpu ", loss, " ref ", loss_ref);
  auto cl = mc::test::compare_close(glse.download(), lse_ref, 1e-5, 1e-6, 1e-12);
  CHECK_MESSAGE(cl.ok, "lse: ", cl.report);
  if (count > 0 && vocab > 1) {
    auto cr = mc::test::compare_close(grow.download(), row_ref, 1e-4, 1e-5, 1e-10);
    CHECK_MESSAGE(cr.ok, "row loss: ", cr.report);
  } else {
    for (float v : grow.download()) CHECK(v == 0.0f);  // one class (or no target): NLL exactly 0
  }
  float* out = in_place ? gl.data() : gdl.data();
  if (!in_place) gdl.poison();
  mc::test::launch(in_place ? LaunchMode::kStream : mode, stream, [&](cudaStream_t s) {
    return mc::cuda::cross_entropy_backward(gl.data(), gt.data(), glse.data(), gc.data(), n, vocab,
                                            out, 1.0f, s);
  });
  const std::vector<double> dwant(dref.data(), dref.data() + dref.size());
  const auto got = in_place ? gl.download() : gdl.download();
  if (count > 0 && vocab > 1) {
    auto cd = mc::test::compare_close(got, dwant, 1e-8, 1e-4, 1e-9);
    CHECK_MESSAGE(cd.ok, "dlogits: ", cd.report);
  } else {
    for (float v : got) CHECK(v == 0.0f);
  }
  for (auto* b : {&gl, &gdl, &glse, &grow, &gloss}) CHECK(b->guards_intact());
  CHECK(gt.guards_intact());
  CHECK(gc.guards_intact());
}

}  // namespace

TEST_CASE("cuda cross_entropy forward and backward match the fp64 reference") {
  const mc::test::Stream stream;
  for (const std::int64_t vocab : {std::int64_t{1}, std::int64_t{97}, std::int64_t{8192}})
    for (const std::int64_t n : {std::int64_t{1}, std::int64_t{33}, std::int64_t{300}})
      for (const LaunchMode mode : mc::test::kLaunchModes) {
        check_case(n, vocab, 0, false, mode, stream);
        check_case(n, vocab, 3, true, mode, stream);
      }
}

TEST_CASE("cuda cross_entropy: a batch with every target ignored has loss 0 and zero gradient") {
  const mc::test::Stream stream;
  check_case(17, 97, 1, false, LaunchMode::kStream, stream);
}

TEST_CASE("cuda cross_entropy: bad arguments throw mc::Error before any launch") {
  float* p = reinterpret_cast<float*>(std::uintptr_t{4096});
  int* c = reinterpret_cast<int*>(std::uintptr_t{1 << 20});
  auto* t = reinterpret_cast<TokenId*>(std::uintptr_t{1 << 22});
  CHECK_THROWS_WITH_AS(mc::cuda::cross_entropy_forward(p, t, 4, 0, p, p, p, c),
                       doctest::Contains("[mc.cross_entropy.bad_shape]"), mc::Error);
  CHECK_THROWS_WITH_AS(mc::cuda::cross_entropy_forward(p, nullptr, 4, 8, p, p, p, c),
                       doctest::Contains("[mc.cross_entropy.null_pointer]"), mc::Error);
  CHECK_THROWS_WITH_AS(mc::cuda::cross_entropy_backward(p, t, p, c, 4, 8, p + 1),
                       doctest::Contains("[mc.cross_entropy.aliasing]"), mc::Error);
}
