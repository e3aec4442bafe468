// SPDX-License-Identifier: Apache-2.0
// Whole-model parity of the GPU training step (cuda/megacontext/device_llama.cuh) against the
// Eigen reference decoder (mc::reference::LlamaModel) in fp64 on the same fp32 weights, llm.c's
// test_gpt2 shape: logits, loss and the gradient of EVERY weight tensor, for a tiny config
// (d 128, 2 heads of 64, 2 layers, d_ff 172, vocab 97, batch 2 × 33 tokens, one ignored target),
// with plain positions and with Gaussian ones (σ > 0), under exact fp32 GEMMs and under TF32; then
// three AdamW steps against the CPU loop (BaseLmTrainer's step: clip, AdamW, warm-up + cosine),
// and the CUDA-graph step against the stream step.
//
// Bounds. fp32 GEMMs: per tensor NMSE <= 1e-9 and |err| <= 1e-4·max|ref| + 1e-3·|ref|. TF32
// (inputs rounded to 10 mantissa bits, u = 2^-11, through ~10 chained GEMMs): NMSE <= 1e-4 and
// |err| <= 3e-2·max|ref| + 3e-2·|ref|. Optimiser steps: the first AdamW updates are ±lr·sign(g)
// for gradients far above ε, so a gradient within rounding of zero can flip one element by 2·lr;
// the test bounds every element by 2·lr·steps and the NMSE of the weight updates by 1e-6.
#include <doctest/doctest.h>

#include <megacontext/device_llama.cuh>
#include <megacontext/reference/cross_entropy.hpp>
#include <megacontext/reference/llama.hpp>
#include <megacontext/train/adamw.hpp>
#include <megacontext/train/base_lm.hpp>
#include <megacontext/train/schedule.hpp>

#include <cmath>
#include <cstdint>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "common/random.hpp"
#include "cuda/cpu_train_loop.hpp"
#include "cuda/parity.cuh"

namespace {

using mc::TokenId;
using mc::cuda::GemmMath;

constexpr std::int64_t kBatch = 2;
constexpr std::int64_t kT = 33;

mc::reference::LlamaOptions tiny_options() {
  mc::reference::LlamaOptions o;
  o.d_model = 128;
  o.n_heads = 2;
  o.n_layers = 2;
  o.d_ff = 172;
  o.n_vocab = 97;
  o.init_std = 0.05;
  return o;
}

// Random weights with norm gains away from 1, so their gradients and scaling are exercised.
mc::reference::LlamaWeights<float> tiny_weights(const mc::reference::LlamaOptions& o) {
  auto w = mc::reference::LlamaWeights<float>::random(o, mc::test::base_seed() + 5);
  auto gen = mc::test::rng(6);
  std::normal_distribution<float> n(1.0f, 0.2f);
  w.for_each_parameter([&](const std::string& name, float* p, Eigen::Index size) {
    if (name.find("norm") != std::string::npos)
      for (Eigen::Index i = 0; i < size; ++i) p[i] = n(gen);
  });
  return w;
}

template <class To, class From>
mc::reference::LlamaWeights<To> convert(const mc::reference::LlamaOptions& o,
                                        mc::reference::LlamaWeights<From>& w) {
  auto out = mc::reference::LlamaWeights<To>::zeros(o);
  std::vector<std::pair<From*, Eigen::Index>> src;
  w.for_each_parameter([&](const std::string&, From* p, Eigen::Index s) { src.emplace_back(p, s); });
  std::size_t i = 0;
  out.for_each_parameter([&](const std::string&, To* p, Eigen::Index s) {
    for (Eigen::Index k = 0; k < s; ++k) p[k] = static_cast<To>(src[i].first[k]);
    ++i;
  });
  return out;
}

struct Batch {
  std::vector<TokenId> tokens, targets;  // [kBatch, kT]
};

Batch make_batch(std::int64_t vocab) {
  auto gen = mc::test::rng(7);
  std::uniform_int_distribution<TokenId> pick(0, static_cast<TokenId>(vocab - 1));
  Batch b;
  for (std::int64_t s = 0; s < kBatch; ++s) {
    std::vector<TokenId> window(static_cast<std::size_t>(kT + 1));
    for (auto& t : window) t = pick(gen);
    b.tokens.insert(b.tokens.end(), window.begin(), window.end() - 1);
    b.targets.insert(b.targets.end(), window.begin() + 1, window.end());
  }
  b.targets[5] = mc::reference::kIgnoreTarget;
  return b;
}

struct Reference {
  double loss = 0;
  std::vector<double> logits;  // [kBatch·kT, V]
  mc::reference::LlamaWeights<double> grads;
};

// Mean loss over every counted target of the batch, and its gradients, from the fp64 reference.
Reference reference_step(const mc::reference::LlamaOptions& o,
                         mc::reference::LlamaWeights<double> w, const Batch& b,
                         const std::vector<mc::GaussianPosition>& pos) {
  mc::reference::LlamaModel<double> model(o, std::move(w));
  Reference r;
  r.grads = mc::reference::LlamaWeights<double>::zeros(o);
  std::int64_t total = 0;
  for (auto t : b.targets) total += t >= 0 ? 1 : 0;
  mc::RowMatrix<double> emb(kT, o.d_model), dl, demb(kT, o.d_model);
  for (std::int64_t s = 0; s < kBatch; ++s) {
    const TokenId* ids = b.tokens.data() + s * kT;
    const TokenId* tg = b.targets.data() + s * kT;
    std::int64_t count = 0;
    for (std::int64_t i = 0; i < kT; ++i) count += tg[i] >= 0 ? 1 : 0;
    model.embed(ids, kT, emb.data());
    const mc::RowMatrix<double> logits = model.forward(emb, pos);
    r.logits.insert(r.logits.end(), logits.data(), logits.data() + logits.size());
    const double loss = mc::reference::cross_entropy<double>(logits, tg, &dl);
    r.loss += loss * static_cast<double>(count) / static_cast<double>(total);
    dl *= static_cast<double>(count) / static_cast<double>(total);
    model.backward(dl.data(), kT, demb.data(), r.grads);
    model.embed_backward(ids, kT, demb.data(), r.grads);
  }
  return r;
}

void compare_tensors(mc::reference::LlamaWeights<float>& gpu, mc::reference::LlamaWeights<double>& ref,
                     double atol_rel, double rtol, double nmse) {
  std::map<std::string, std::vector<double>> want;
  ref.for_each_parameter([&](const std::string& name, double* p, Eigen::Index s) {
    want[name].assign(p, p + s);
  });
  gpu.for_each_parameter([&](const std::string& name, float* p, Eigen::Index s) {
    const std::vector<double>& w = want.at(name);
    double mx = 0;
    for (double v : w) mx = std::max(mx, std::abs(v));
    const auto cmp = mc::test::compare_close(std::vector<float>(p, p + s), w, atol_rel * mx, rtol, nmse);
    CHECK_MESSAGE(cmp.ok, name, ": ", cmp.report);
  });
}

void check_gradients(GemmMath math, bool gaussian) {
  INFO("math=", mc::cuda::to_string(math), " gaussian_positions=", gaussian, " ", mc::test::seed_info());
  const auto o = tiny_options();
  auto w = tiny_weights(o);
  const Batch b = make_batch(o.n_vocab);
  std::vector<mc::GaussianPosition> pos = mc::train::plain_positions(kT);
  if (gaussian)
    for (std::int64_t i = 0; i < kT; ++i)
      pos[static_cast<std::size_t>(i)] = {3.0 * static_cast<double>(i) + 1.5, i % 2 == 1 ? 9.23 : 0.0};
  mc::cuda::DeviceLlamaOptions dopt;
  dopt.math = math;
  mc::cuda::DeviceLlama gpu(o, w, {kBatch, kT}, dopt);
  if (gaussian) gpu.set_positions(pos.data(), kT);
  const mc::test::Stream stream;
  gpu.set_batch(b.tokens.data(), b.targets.data(), stream.get());
  gpu.forward(stream.get());
  const float loss = gpu.loss(stream.get());
  const auto logits = gpu.download_logits();
  gpu.backward(stream.get());
  auto grads = gpu.download_gradients();
  gpu.check_errors();

  const Reference r = reference_step(o, convert<double>(o, w), b, pos);
  const bool exact = math == GemmMath::kFp32;
  CHECK_MESSAGE(std::abs(loss - r.loss) <= (exact ? 1e-5 : 1e-3) * r.loss, "loss gpu ", loss, " ref ", r.loss);
  const auto cl = mc::test::compare_close(logits, r.logits, exact ? 1e-5 : 1e-2, exact ? 1e-4 : 3e-2,
                                          exact ? 1e-9 : 1e-4);
  CHECK_MESSAGE(cl.ok, "logits: ", cl.report);
  auto ref_grads = r.grads;
  if (exact) compare_tensors(grads, ref_grads, 1e-4, 1e-3, 1e-9);
  else compare_tensors(grads, ref_grads, 3e-2, 3e-2, 1e-4);
}

}  // namespace

TEST_CASE("cuda DeviceLlama: loss, logits and every weight gradient match the fp64 reference") {
  for (const GemmMath math : {GemmMath::kFp32, GemmMath::kTf32})
    for (const bool gaussian : {false, true}) check_gradients(math, gaussian);
}

TEST_CASE("cuda DeviceLlama: AdamW steps on the device follow the CPU training loop") {
  INFO(mc::test::seed_info());
  const auto o = tiny_options();
  auto w0 = tiny_weights(o);
  const Batch b = make_batch(o.n_vocab);
  mc::train::WarmupCosine sched{2e-3, 2e-4, 1, 4};
  mc::train::AdamWOptions ao;
  const double clip = 0.5;  // the first gradients are larger: clipping is exercised
  mc::cuda::DeviceLlamaOptions dopt;
  dopt.math = GemmMath::kFp32;
  dopt.adamw = ao;
  dopt.schedule = mc::cuda::DeviceLlamaOptions::from(sched);
  dopt.clip = clip;
  mc::cuda::DeviceLlama gpu(o, w0, {kBatch, kT}, dopt);
  const mc::test::Stream stream;
  gpu.set_batch(b.tokens.data(), b.targets.data(), stream.get());

  // The CPU loop of BaseLmTrainer::step on the same fixed batch (every row but one counted, so
  // the reference's per-sequence means are re-weighted to the batch mean as in reference_step).
  mc::reference::LlamaModel<float> cpu(o, w0);
  mc::train::AdamW opt(ao);
  auto grads = mc::reference::LlamaWeights<float>::zeros(o);
  const auto pos = mc::train::plain_positions(kT);
  std::int64_t total = 0;
  for (auto t : b.targets) total += t >= 0 ? 1 : 0;
  const int kSteps = 3;
  for (int step = 0; step < kSteps; ++step) {
    gpu.train_step(stream.get());
    const float gpu_loss = gpu.loss(stream.get());
    const auto st = gpu.optimizer_scalars(stream.get());

    grads.for_each_parameter([](const std::string&, float* g, Eigen::Index s) { std::fill(g, g + s, 0.0f); });
    double loss = 0;
    mc::RowMatrix<float> emb(kT, o.d_model), dl, demb(kT, o.d_model);
    for (std::int64_t s = 0; s < kBatch; ++s) {
      const TokenId* ids = b.tokens.data() + s * kT;
      const TokenId* tg = b.targets.data() + s * kT;
      std::int64_t count = 0;
      for (std::int64_t i = 0; i < kT; ++i) count += tg[i] >= 0 ? 1 : 0;
      cpu.embed(ids, kT, emb.data());
      const auto logits = cpu.forward(emb, pos);
      loss += mc::reference::cross_entropy<float>(logits, tg, &dl) * static_cast<double>(count) / static_cast<double>(total);
      dl *= static_cast<float>(static_cast<double>(count) / static_cast<double>(total));
      cpu.backward(dl.data(), kT, demb.data(), grads);
      cpu.embed_backward(ids, kT, demb.data(), grads);
    }
    const double norm = mc::test::cpu_clip_and_step(cpu.weights(), grads, opt, clip, sched);
    REQUIRE(std::isfinite(norm));
    INFO("step ", step, ": loss gpu ", gpu_loss, " cpu ", loss, "; norm gpu ", st.grad_norm, " cpu ", norm);
    CHECK(std::abs(gpu_loss - loss) <= 1e-4 * loss);
    CHECK(st.grad_norm == doctest::Approx(norm).epsilon(1e-4));
    CHECK(st.step == opt.step_count());
    CHECK(st.lr == doctest::Approx(sched(opt.step_count())).epsilon(1e-12));
    if (step == 0) CHECK(norm > clip);  // the clipped branch really ran
  }
  auto wg = gpu.download_weights();
  auto wc = cpu.weights();
  std::map<std::string, std::pair<std::vector<float>, std::vector<float>>> both;
  w0.for_each_parameter([&](const std::string& n, float* p, Eigen::Index s) { both[n].first.assign(p, p + s); });
  wc.for_each_parameter([&](const std::string& n, float* p, Eigen::Index s) { both[n].second.assign(p, p + s); });
  const double max_flip = 2 * sched.lr_max * kSteps;
  wg.for_each_parameter([&](const std::string& name, float* p, Eigen::Index s) {
    const auto& [init, cpu_w] = both.at(name);
    std::vector<float> du(static_cast<std::size_t>(s));
    std::vector<double> ref_du(du.size());
    for (std::size_t i = 0; i < du.size(); ++i) {
      du[i] = p[i] - init[i];
      ref_du[i] = static_cast<double>(cpu_w[i]) - init[i];
    }
    const auto cmp = mc::test::compare_close(du, ref_du, max_flip, 0.0, 1e-6);
    CHECK_MESSAGE(cmp.ok, name, " updates: ", cmp.report);
  });
  // The optimiser state comes back in the CPU AdamW's format.
  const auto [moments, steps] = gpu.optimizer_state();
  CHECK(steps == opt.step_count());
  CHECK(moments.size() == opt.state().size());
  CHECK(moments.at("layers.1.mlp.w2").m.size() == opt.state().at("layers.1.mlp.w2").m.size());
}

TEST_CASE("cuda DeviceLlama: a captured CUDA-graph step equals the stream step") {
  INFO(mc::test::seed_info());
  const auto o = tiny_options();
  const auto w0 = tiny_weights(o);
  const Batch b = make_batch(o.n_vocab);
  mc::cuda::DeviceLlamaOptions dopt;
  dopt.schedule = {1e-3, 1e-3, 0, 0};
  mc::cuda::DeviceLlama a(o, w0, {kBatch, kT}, dopt), g(o, w0, {kBatch, kT}, dopt);
  const mc::test::Stream stream;
  a.set_batch(b.tokens.data(), b.targets.data(), stream.get());
  g.set_batch(b.tokens.data(), b.targets.data(), stream.get());
  for (int step = 0; step < 3; ++step) {
    a.train_step(stream.get());
    g.train_step_graph(stream.get());
    const float la = a.loss(stream.get()), lg = g.loss(stream.get());
    INFO("step ", step, " stream loss ", la, " graph loss ", lg);
    CHECK(std::abs(la - lg) <= 1e-5 * la);
  }
  CHECK(g.optimizer_scalars(stream.get()).step == 3);
  auto wa = a.download_weights();
  auto wg = g.download_weights();
  std::map<std::string, std::vector<double>> want;
  wa.for_each_parameter([&](const std::string& n, float* p, Eigen::Index s) { want[n].assign(p, p + s); });
  wg.for_each_parameter([&](const std::string& n, float* p, Eigen::Index s) {
    const auto cmp = mc::test::compare_close(std::vector<float>(p, p + s), want.at(n), 2 * 1e-3 * 3, 0.0, 1e-8);
    CHECK_MESSAGE(cmp.ok, n, ": ", cmp.report);
  });
}

TEST_CASE("cuda DeviceLlama: bad options, weights and batches throw mc::Error") {
  auto o = tiny_options();
  const auto w = tiny_weights(o);
  auto o96 = o;
  o96.d_model = 96;
  CHECK_THROWS_WITH_AS(mc::cuda::DeviceLlama(o96, mc::reference::LlamaWeights<float>::zeros(o96), {1, 8}),
                       doctest::Contains("[mc.llama.bad_options]"), mc::Error);
  CHECK_THROWS_WITH_AS(mc::cuda::DeviceLlama(o, w, {0, 8}), doctest::Contains("[mc.llama.bad_batch]"),
                       mc::Error);
  auto o3 = o;
  o3.n_layers = 3;
  CHECK_THROWS_WITH_AS(mc::cuda::DeviceLlama(o3, w, {1, 8}), doctest::Contains("[mc.llama.bad_weights]"),
                       mc::Error);
  mc::cuda::DeviceLlama gpu(o, w, {1, 4});
  const std::vector<TokenId> ok{1, 2, 3, 4}, bad{1, 2, 97, 4}, bad_t{1, 2, -2, 4};
  CHECK_THROWS_WITH_AS(gpu.set_batch(bad.data(), ok.data()), doctest::Contains("tokens[2] = 97"), mc::Error);
  CHECK_THROWS_WITH_AS(gpu.set_batch(ok.data(), bad_t.data()), doctest::Contains("targets[2] = -2"), mc::Error);
  const std::vector<mc::GaussianPosition> pos(3);
  CHECK_THROWS_WITH_AS(gpu.set_positions(pos.data(), 3), doctest::Contains("[mc.llama.bad_positions]"), mc::Error);
}
