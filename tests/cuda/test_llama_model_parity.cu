// SPDX-License-Identifier: Apache-2.0
// DeviceLlamaModel (the GPU decoder as a mc::BaseModel): logits of assembled contexts with
// Gaussian positions equal the CPU reference decoder's, and a mc::Session runs the same way on
// the GPU model as on the CPU one (same working context, logits within tolerance at every step
// of a generation driven by the CPU's tokens).
#include <doctest/doctest.h>

#include <megacontext/device_llama_model.cuh>
#include <megacontext/session.hpp>

#include <cmath>
#include <random>
#include <vector>

#include "common/random.hpp"

namespace {

mc::reference::LlamaOptions tiny() {
  mc::reference::LlamaOptions o;
  o.d_model = 128;
  o.n_layers = 2;
  o.n_heads = 2;  // d_head 64: a head width the GPU attention compiles
  o.d_ff = 160;
  o.n_vocab = 97;
  o.init_std = 0.1;
  return o;
}

// max |a - b| / max(1, max |b|).
double rel_err(const std::vector<float>& a, const std::vector<float>& b) {
  double e = 0, m = 1;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i])) return INFINITY;
    e = std::max(e, static_cast<double>(std::abs(a[i] - b[i])));
    m = std::max(m, static_cast<double>(std::abs(b[i])));
  }
  return e / m;
}

}  // namespace

TEST_CASE("DeviceLlamaModel: logits of embeddings at Gaussian positions match the CPU decoder") {
  INFO(mc::test::seed_info());
  const auto o = tiny();
  auto cpu = mc::reference::LlamaModel<float>::random(o, 5);
  mc::cuda::DeviceLlamaModel gpu(o, cpu.weights(), 80, mc::cuda::GemmMath::kFp32);
  auto rng = mc::test::rng(6);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (std::int64_t n : {1, 17, 80}) {
    INFO("n = ", n);
    std::vector<float> x(static_cast<std::size_t>(n * o.d_model));
    for (auto& v : x) v = normal(rng);
    std::vector<mc::GaussianPosition> pos(static_cast<std::size_t>(n));
    for (std::int64_t i = 0; i < n; ++i)  // a mix of tokens (σ 0) and gist-like rows
      pos[static_cast<std::size_t>(i)] = {100.0 + 3.0 * static_cast<double>(i), i % 3 == 0 ? 9.2 : 0.0};
    std::vector<float> want(static_cast<std::size_t>(n * o.n_vocab)),
        got(want.size(), std::nanf(""));
    cpu.forward(x.data(), pos.data(), n, nullptr, want.data());
    gpu.forward(x.data(), pos.data(), n, nullptr, got.data());
    CHECK(rel_err(got, want) <= 1e-4);
    std::vector<float> last(static_cast<std::size_t>(o.n_vocab), std::nanf(""));
    gpu.forward_last(x.data(), pos.data(), n, last.data());
    const std::vector<float> want_last(want.end() - o.n_vocab, want.end());
    CHECK(rel_err(last, want_last) <= 1e-4);
  }
  std::vector<float> x(128), l(97);
  const mc::GaussianPosition p{0, 0};
  const std::uint8_t mask = 1;
  CHECK_THROWS_WITH_AS(gpu.forward(x.data(), &p, 1, &mask, l.data()),
                       doctest::Contains("[mc.llama.bad_mask]"), mc::Error);
  CHECK_THROWS_WITH_AS(gpu.forward(x.data(), &p, 81, nullptr, l.data()),
                       doctest::Contains("[mc.llama.bad_shape]"), mc::Error);
}

TEST_CASE("DeviceLlamaModel: a Session on the GPU follows the CPU Session step by step") {
  using C = mc::Config<4, 3>;
  const auto o = tiny();
  auto cpu_model = mc::reference::LlamaModel<float>::random(o, 7);
  mc::cuda::DeviceLlamaModel gpu_model(o, cpu_model.weights(), 64, mc::cuda::GemmMath::kFp32);
  mc::MeanPoolGister<C> gister(cpu_model.weights().embedding);
  mc::RecencyScorer scorer{24.0};
  mc::SessionOptions so;
  so.context.w_max = 64;
  so.focus.recent_tokens = 16;
  mc::Session<C, mc::reference::LlamaModel<float>, mc::MeanPoolGister<C>, mc::RecencyScorer> a(
      cpu_model, gister, scorer, mc::MemoryTree<C>(o.d_model), so);
  mc::Session<C, mc::cuda::DeviceLlamaModel, mc::MeanPoolGister<C>, mc::RecencyScorer> b(
      gpu_model, gister, scorer, mc::MemoryTree<C>(o.d_model), so);
  auto rng = mc::test::rng(8);
  std::vector<mc::TokenId> ids(300);
  for (auto& t : ids) t = static_cast<mc::TokenId>(rng() % 97);
  a.ingest(ids);
  b.ingest(ids);
  for (int step = 0; step < 60; ++step) {
    INFO("step ", step);
    REQUIRE(std::equal(a.context().entries().begin(), a.context().entries().end(),
                       b.context().entries().begin(), b.context().entries().end()));
    const auto la = a.next_logits(), lb = b.next_logits();
    const std::vector<float> va(la.begin(), la.end()), vb(lb.begin(), lb.end());
    CHECK(rel_err(vb, va) <= 1e-4);
    const mc::TokenId t = a.sample({});
    a.push(t);
    b.push(t);
  }
}
