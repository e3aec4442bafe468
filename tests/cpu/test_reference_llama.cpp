// SPDX-License-Identifier: Apache-2.0
// The reference Llama-style decoder: central-difference gradient checks in fp64 for every layer
// (RMSNorm, Gaussian-RoPE attention with σ > 0, SwiGLU, unembedding + cross-entropy) and for the
// whole model (inputs and sampled weights); forward invariants (causality, masks, σ = 0 equals a
// naive plain-RoPE decoder, shift invariance, head permutation); KV-cache decode = full forward;
// next-token indexing of the cross-entropy; argument errors.
#include <doctest/doctest.h>

#include <megacontext/assemble.hpp>
#include <megacontext/model.hpp>
#include <megacontext/reference/cross_entropy.hpp>
#include <megacontext/reference/llama.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "common/gradcheck.hpp"
#include "common/random.hpp"

namespace {

namespace ref = mc::reference;
using Mat = mc::RowMatrix<double>;
using Vec = ref::Vector<double>;

// A matrix [rows, cols] of normal entries (mean 0, std `std_dev`) from its own derived seed.
Mat random_normal(Eigen::Index rows, Eigen::Index cols, std::uint64_t salt, double std_dev = 1.0) {
  auto gen = mc::test::rng(salt);
  std::normal_distribution<double> normal(0.0, std_dev);
  Mat m(rows, cols);
  for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = normal(gen);
  return m;
}

// Positions of mixed entries: tokens (σ = 0) and gists (σ of a 4- and a 32-token span), t in order.
std::vector<mc::GaussianPosition> mixed_positions(std::int64_t n) {
  std::vector<mc::GaussianPosition> p;
  double t = 3.0;
  for (std::int64_t i = 0; i < n; ++i) {
    const std::int64_t w = i % 3 == 0 ? 4 : (i % 3 == 1 ? 1 : 32);
    p.push_back(
        {t + 0.5 * static_cast<double>(w - 1), mc::span_sigma(w, mc::SpreadPolicy::kUniformSpan)});
    t += static_cast<double>(w);
  }
  return p;
}

// A random dense mask [n, n] (row = query) whose diagonal is set, so every row sees a key.
std::vector<std::uint8_t> random_mask(std::int64_t n, std::uint64_t salt) {
  auto gen = mc::test::rng(salt);
  std::vector<std::uint8_t> m(static_cast<std::size_t>(n * n));
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t j = 0; j < n; ++j)
      m[static_cast<std::size_t>(i * n + j)] = i == j || gen() % 2 == 0 ? 1 : 0;
  return m;
}

// Gradient check with a per-instance step (see tests/common/gradcheck.hpp).
struct GradCheck {
  double eps = 1e-4;  // central-difference step (fp64)

  double run(const std::string& what, const std::function<double()>& loss, double* params,
             const double* analytic, const std::vector<Eigen::Index>& indices) const {
    return mc::test::grad_check(what, loss, params, analytic, indices, eps);
  }

  // All indices [0, size).
  static std::vector<Eigen::Index> all(Eigen::Index size) {
    std::vector<Eigen::Index> v(static_cast<std::size_t>(size));
    for (Eigen::Index i = 0; i < size; ++i) v[static_cast<std::size_t>(i)] = i;
    return v;
  }
  // `count` distinct indices of [0, size) from a seeded draw (all of them when size <= count).
  static std::vector<Eigen::Index> sample(Eigen::Index size, Eigen::Index count,
                                          std::uint64_t salt) {
    std::vector<Eigen::Index> v = all(size);
    if (size <= count) return v;
    auto gen = mc::test::rng(salt);
    std::shuffle(v.begin(), v.end(), gen);
    v.resize(static_cast<std::size_t>(count));
    return v;
  }
};

// Bound on every layer-level check in fp64 (measured values are printed by MESSAGE).
constexpr double kLayerBound = 1e-6;
// Bound on the whole-model checks (two blocks deep; still ~1e-8 measured).
constexpr double kModelBound = 1e-6;

// The tiny decoder every model test uses (scaled-up init so attention is far from uniform).
ref::LlamaOptions tiny_options() {
  ref::LlamaOptions o;
  o.d_model = 16;
  o.n_layers = 2;
  o.n_heads = 2;
  o.d_ff = 24;
  o.n_vocab = 11;
  o.rope_base = 100.0;  // d_head = 8: bands with ω = 1, 0.32, 0.1, 0.03
  o.init_std = 0.4;
  return o;
}

using mc::test::max_rel_diff;

// A naive decoder written from the definition, plain RoPE (position i for row i, no σ), causal,
// with its own cos/sin: the independent oracle for the σ = 0 invariant.
Mat naive_plain_rope_forward(const ref::LlamaOptions& o, const ref::LlamaWeights<double>& w,
                             const Mat& emb) {
  const auto n = emb.rows(), d = o.d_model, dh = o.d_head(), nh = o.n_heads;
  auto norm = [&](const Mat& x, const Vec& g) {
    Mat y(x.rows(), x.cols());
    for (Eigen::Index i = 0; i < x.rows(); ++i) {
      double ms = 0.0;
      for (Eigen::Index j = 0; j < x.cols(); ++j) ms += x(i, j) * x(i, j);
      const double r = 1.0 / std::sqrt(ms / static_cast<double>(x.cols()) + o.norm_eps);
      for (Eigen::Index j = 0; j < x.cols(); ++j) y(i, j) = x(i, j) * r * g[j];
    }
    return y;
  };
  auto rope = [&](Mat& x) {
    for (Eigen::Index i = 0; i < n; ++i)
      for (Eigen::Index h = 0; h < nh; ++h)
        for (Eigen::Index j = 0; j < dh / 2; ++j) {
          const double omega =
              std::pow(o.rope_base, -2.0 * static_cast<double>(j) / static_cast<double>(dh));
          const double c = std::cos(omega * static_cast<double>(i)),
                       s = std::sin(omega * static_cast<double>(i));
          double& a = x(i, h * dh + j);
          double& b = x(i, h * dh + j + dh / 2);
          const double a0 = a, b0 = b;
          a = a0 * c - b0 * s;
          b = b0 * c + a0 * s;
        }
  };
  Mat x = emb;
  for (const auto& l : w.layers) {
    Mat xn = norm(x, l.attn_norm);
    Mat q = xn * l.attn.wq, k = xn * l.attn.wk, v = xn * l.attn.wv;
    rope(q);
    rope(k);
    Mat att = Mat::Zero(n, d);
    for (Eigen::Index h = 0; h < nh; ++h)
      for (Eigen::Index i = 0; i < n; ++i) {
        std::vector<double> s(static_cast<std::size_t>(i + 1));
        double mx = -1e300, sum = 0.0;
        for (Eigen::Index j = 0; j <= i; ++j) {
          double dot = 0.0;
          for (Eigen::Index c = 0; c < dh; ++c) dot += q(i, h * dh + c) * k(j, h * dh + c);
          s[static_cast<std::size_t>(j)] = dot / std::sqrt(static_cast<double>(dh));
          mx = std::max(mx, s[static_cast<std::size_t>(j)]);
        }
        for (auto& e : s) sum += (e = std::exp(e - mx));
        for (Eigen::Index j = 0; j <= i; ++j)
          for (Eigen::Index c = 0; c < dh; ++c)
            att(i, h * dh + c) += s[static_cast<std::size_t>(j)] / sum * v(j, h * dh + c);
      }
    x += att * l.attn.wo;
    xn = norm(x, l.mlp_norm);
    Mat a = xn * l.mlp.w1, b = xn * l.mlp.w3;
    for (Eigen::Index i = 0; i < a.size(); ++i)
      a.data()[i] = a.data()[i] / (1.0 + std::exp(-a.data()[i])) * b.data()[i];
    x += a * l.mlp.w2;
  }
  return norm(x, w.final_norm) * w.embedding.transpose();
}

}  // namespace

// ---------------------------------------------------------------- concept

static_assert(mc::BaseModel<ref::LlamaModel<float>>);
static_assert(mc::BaseModel<ref::LlamaModel<double>>);
static_assert(mc::TokenEmbedder<ref::LlamaModel<float>, float>);
static_assert(mc::model_traits<ref::LlamaModel<float>>::has_backward);
static_assert(mc::model_traits<ref::LlamaModel<float>>::has_decode);

// ---------------------------------------------------------------- layer gradient checks

TEST_CASE("rmsnorm: backward matches central differences for x and the gain") {
  INFO(mc::test::seed_info());
  Mat x = random_normal(5, 8, 1);
  Vec w = (Vec::Ones(8) + random_normal(8, 1, 2, 0.3)).eval();
  const Mat r = random_normal(5, 8, 3);  // L = Σ y ∘ r, so dL/dy = r
  const double eps_norm = 1e-5;
  auto loss = [&] {
    Mat y;
    Vec rstd;
    ref::rmsnorm_forward(x, w, eps_norm, y, rstd);
    return y.cwiseProduct(r).sum();
  };
  Mat y;
  Vec rstd;
  ref::rmsnorm_forward(x, w, eps_norm, y, rstd);
  Mat dx = Mat::Zero(5, 8);
  Vec dw = Vec::Zero(8);
  ref::rmsnorm_backward(r, x, w, rstd, dx, &dw);
  const GradCheck gc;
  CHECK(gc.run("rmsnorm dx", loss, x.data(), dx.data(), GradCheck::all(x.size())) < kLayerBound);
  CHECK(gc.run("rmsnorm dw", loss, w.data(), dw.data(), GradCheck::all(w.size())) < kLayerBound);
}

TEST_CASE("attention: backward through Gaussian RoPE with sigma > 0 matches central differences") {
  INFO(mc::test::seed_info());
  const std::int64_t n = 7, d = 16;
  const int heads = 2;
  mc::GaussianRopeOptions ro;
  ro.d_head = 8;
  ro.base = 100.0;
  const auto pos = mixed_positions(n);
  const mc::GaussianRopeTable table = mc::gaussian_rope_table(pos, ro);
  REQUIRE(pos[0].sigma > 1.0);  // the damping is really exercised
  Mat x = random_normal(n, d, 10);
  ref::AttentionWeights<double> w{random_normal(d, d, 11, 0.6), random_normal(d, d, 12, 0.6),
                                  random_normal(d, d, 13, 0.6), random_normal(d, d, 14, 0.6)};
  const Mat r = random_normal(n, d, 15);
  const std::vector<std::uint8_t> custom = random_mask(n, 16);
  for (const bool causal : {true, false}) {
    CAPTURE(causal);
    const std::uint8_t* mask = causal ? nullptr : custom.data();
    auto loss = [&] {
      Mat y;
      ref::AttentionCache<double> c;
      ref::attention_forward(x, w, heads, table, mask, y, c);
      return y.cwiseProduct(r).sum();
    };
    Mat y;
    ref::AttentionCache<double> cache;
    ref::attention_forward(x, w, heads, table, mask, y, cache);
    Mat dx = Mat::Zero(n, d);
    ref::AttentionWeights<double> dw{Mat::Zero(d, d), Mat::Zero(d, d), Mat::Zero(d, d),
                                     Mat::Zero(d, d)};
    ref::attention_backward(r, x, w, heads, table, cache, dx, &dw);
    const GradCheck gc;
    const std::string tag = causal ? "attention (causal) " : "attention (custom mask) ";
    CHECK(gc.run(tag + "dx", loss, x.data(), dx.data(), GradCheck::all(x.size())) < kLayerBound);
    CHECK(gc.run(tag + "dwq", loss, w.wq.data(), dw.wq.data(), GradCheck::all(d * d)) <
          kLayerBound);
    CHECK(gc.run(tag + "dwk", loss, w.wk.data(), dw.wk.data(), GradCheck::all(d * d)) <
          kLayerBound);
    CHECK(gc.run(tag + "dwv", loss, w.wv.data(), dw.wv.data(), GradCheck::all(d * d)) <
          kLayerBound);
    CHECK(gc.run(tag + "dwo", loss, w.wo.data(), dw.wo.data(), GradCheck::all(d * d)) <
          kLayerBound);
  }
}

TEST_CASE("swiglu: backward matches central differences for x, w1, w3 and w2") {
  INFO(mc::test::seed_info());
  const std::int64_t n = 5, d = 8, f = 12;
  Mat x = random_normal(n, d, 20);
  ref::SwiGluWeights<double> w{random_normal(d, f, 21, 0.5), random_normal(d, f, 22, 0.5),
                               random_normal(f, d, 23, 0.5)};
  const Mat r = random_normal(n, d, 24);
  auto loss = [&] {
    Mat y;
    ref::SwiGluCache<double> c;
    ref::swiglu_forward(x, w, y, c);
    return y.cwiseProduct(r).sum();
  };
  Mat y;
  ref::SwiGluCache<double> cache;
  ref::swiglu_forward(x, w, y, cache);
  Mat dx = Mat::Zero(n, d);
  ref::SwiGluWeights<double> dw{Mat::Zero(d, f), Mat::Zero(d, f), Mat::Zero(f, d)};
  ref::swiglu_backward(r, x, w, cache, dx, &dw);
  const GradCheck gc;
  CHECK(gc.run("swiglu dx", loss, x.data(), dx.data(), GradCheck::all(x.size())) < kLayerBound);
  CHECK(gc.run("swiglu dw1", loss, w.w1.data(), dw.w1.data(), GradCheck::all(d * f)) < kLayerBound);
  CHECK(gc.run("swiglu dw3", loss, w.w3.data(), dw.w3.data(), GradCheck::all(d * f)) < kLayerBound);
  CHECK(gc.run("swiglu dw2", loss, w.w2.data(), dw.w2.data(), GradCheck::all(f * d)) < kLayerBound);
}

TEST_CASE("unembedding: final norm, tied unembedding and cross-entropy match central differences") {
  INFO(mc::test::seed_info());
  const std::int64_t n = 6, d = 8, v = 13;
  Mat h = random_normal(n, d, 30);
  Vec g = (Vec::Ones(d) + random_normal(d, 1, 31, 0.3)).eval();
  Mat emb = random_normal(v, d, 32, 0.7);
  const std::vector<mc::TokenId> targets{3, 0, ref::kIgnoreTarget, 12, 7, 7};
  auto loss = [&] {
    Mat hf;
    Vec rstd;
    ref::rmsnorm_forward(h, g, 1e-5, hf, rstd);
    const Mat logits = hf * emb.transpose();
    return ref::cross_entropy(logits, targets.data(), static_cast<Mat*>(nullptr));
  };
  Mat hf, dlogits;
  Vec rstd;
  ref::rmsnorm_forward(h, g, 1e-5, hf, rstd);
  Mat logits = hf * emb.transpose();
  ref::cross_entropy(logits, targets.data(), &dlogits);
  CHECK(dlogits.row(2).isZero(0.0));  // an ignored row gets no gradient
  const Mat demb = dlogits.transpose() * hf;
  const Mat dhf = dlogits * emb;
  Mat dh = Mat::Zero(n, d);
  Vec dg = Vec::Zero(d);
  ref::rmsnorm_backward(dhf, h, g, rstd, dh, &dg);
  const GradCheck gc;
  auto ce_of_logits = [&] {
    return ref::cross_entropy(logits, targets.data(), static_cast<Mat*>(nullptr));
  };
  CHECK(gc.run("cross_entropy dlogits", ce_of_logits, logits.data(), dlogits.data(),
               GradCheck::all(logits.size())) < kLayerBound);
  CHECK(gc.run("unembedding dE", loss, emb.data(), demb.data(), GradCheck::all(emb.size())) <
        kLayerBound);
  CHECK(gc.run("final norm dh", loss, h.data(), dh.data(), GradCheck::all(h.size())) < kLayerBound);
  CHECK(gc.run("final norm dgain", loss, g.data(), dg.data(), GradCheck::all(g.size())) <
        kLayerBound);
}

// ---------------------------------------------------------------- whole-model gradient checks

TEST_CASE(
    "llama: backward matches central differences for the input embeddings and sampled weights") {
  INFO(mc::test::seed_info());
  const ref::LlamaOptions o = tiny_options();
  auto model = ref::LlamaModel<double>::random(o, mc::test::base_seed() + 40);
  const std::int64_t n = 9;
  const std::vector<mc::TokenId> ids{1, 4, 9, 2, 2, 7, 10, 0, 5};
  const std::vector<mc::TokenId> targets = ref::next_token_targets(ids.data(), n);
  const auto pos = mixed_positions(n);
  const std::vector<std::uint8_t> custom = random_mask(n, 41);
  for (const bool causal : {true, false}) {
    CAPTURE(causal);
    const std::uint8_t* mask = causal ? nullptr : custom.data();
    const std::string tag = causal ? "llama (causal) " : "llama (custom mask) ";
    Mat emb(n, o.d_model);
    model.embed(ids.data(), n, emb.data());
    emb += random_normal(n, o.d_model, 42, 0.1);  // like a gist row: not an embedding-table row
    Mat logits(n, o.n_vocab), dlogits;

    // Inputs: backward_inputs, and backward's dembeddings, against differences in emb.
    auto loss_inputs = [&] {
      model.forward(emb.data(), pos.data(), n, mask, logits.data());
      return ref::cross_entropy(logits, targets.data(), static_cast<Mat*>(nullptr));
    };
    model.forward(emb.data(), pos.data(), n, mask, logits.data());
    ref::cross_entropy(logits, targets.data(), &dlogits);
    Mat demb(n, o.d_model), demb_full(n, o.d_model);
    model.backward_inputs(dlogits.data(), n, demb.data());
    auto grads = ref::LlamaWeights<double>::zeros(o);
    model.backward(dlogits.data(), n, demb_full.data(), grads);
    CHECK(max_rel_diff(demb, demb_full) == 0.0);  // the same arithmetic either way
    const GradCheck gc;
    CHECK(gc.run(tag + "dembeddings", loss_inputs, emb.data(), demb.data(),
                 GradCheck::all(emb.size())) < kModelBound);

    // Weights, with the embeddings re-embedded from ids each time so the tied table's input
    // side counts too (added by embed_backward).
    Mat emb_ids(n, o.d_model);
    auto loss_weights = [&] {
      model.embed(ids.data(), n, emb_ids.data());
      model.forward(emb_ids.data(), pos.data(), n, mask, logits.data());
      return ref::cross_entropy(logits, targets.data(), static_cast<Mat*>(nullptr));
    };
    loss_weights();
    ref::cross_entropy(logits, targets.data(), &dlogits);
    grads = ref::LlamaWeights<double>::zeros(o);
    model.backward(dlogits.data(), n, demb_full.data(), grads);
    model.embed_backward(ids.data(), n, demb_full.data(), grads);
    std::vector<std::pair<std::string, double*>> analytic;
    grads.for_each_parameter(
        [&](const std::string& name, double* p, Eigen::Index) { analytic.emplace_back(name, p); });
    std::size_t k = 0;
    double worst = 0.0;
    model.weights().for_each_parameter([&](const std::string& name, double* p, Eigen::Index size) {
      REQUIRE(analytic[k].first == name);
      const double e = gc.run(tag + name, loss_weights, p, analytic[k].second,
                              GradCheck::sample(size, 12, 43 + k));
      CHECK(e < kModelBound);
      worst = std::max(worst, e);
      ++k;
    });
    MESSAGE(tag, "all weights: max relative error ", worst);
  }
}

// ---------------------------------------------------------------- forward invariants

TEST_CASE("llama: changing a later row never changes the logits of earlier rows (causality)") {
  const ref::LlamaOptions o = tiny_options();
  auto model = ref::LlamaModel<double>::random(o, 50);
  const std::int64_t n = 8;
  const auto pos = mixed_positions(n);
  Mat emb = random_normal(n, o.d_model, 51);
  const Mat before = model.forward(emb, pos);
  for (std::int64_t j = 1; j < n; ++j) {
    CAPTURE(j);
    Mat e2 = emb;
    e2.row(j) = random_normal(1, o.d_model, 52 + static_cast<std::uint64_t>(j));
    const Mat after = model.forward(e2, pos);
    CHECK(after.topRows(j) == before.topRows(j));  // exactly: masked weights are exactly 0
    CHECK(after.row(j) != before.row(j));
  }
}

TEST_CASE("llama: an explicit causal mask equals the default, and a hidden key has no effect") {
  const ref::LlamaOptions o = tiny_options();
  auto model = ref::LlamaModel<double>::random(o, 60);
  const std::int64_t n = 7;
  const auto pos = mixed_positions(n);
  Mat emb = random_normal(n, o.d_model, 61);
  std::vector<std::uint8_t> causal(static_cast<std::size_t>(n * n), 0);
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t j = 0; j <= i; ++j) causal[static_cast<std::size_t>(i * n + j)] = 1;
  CHECK(model.forward(emb, pos, causal.data()) == model.forward(emb, pos));
  // Hide key 2 from every later query: rows > 2 then ignore row 2 in every layer.
  std::vector<std::uint8_t> hide = causal;
  for (std::int64_t i = 3; i < n; ++i) hide[static_cast<std::size_t>(i * n + 2)] = 0;
  const Mat a = model.forward(emb, pos, hide.data());
  emb.row(2) *= -3.0;
  const Mat b = model.forward(emb, pos, hide.data());
  CHECK(a.bottomRows(n - 3) == b.bottomRows(n - 3));
  CHECK(a.row(2) != b.row(2));
}

TEST_CASE("llama: with sigma = 0 at positions 0..n-1 it equals a naive plain-RoPE decoder") {
  const ref::LlamaOptions o = tiny_options();
  auto model = ref::LlamaModel<double>::random(o, 70);
  const std::int64_t n = 9;
  std::vector<mc::GaussianPosition> pos;
  for (std::int64_t i = 0; i < n; ++i) pos.push_back({static_cast<double>(i), 0.0});
  const Mat emb = random_normal(n, o.d_model, 71);
  const Mat ours = model.forward(emb, pos);
  const Mat naive = naive_plain_rope_forward(o, model.weights(), emb);
  REQUIRE(naive.norm() > 0.0);
  const double e = max_rel_diff(ours, naive);
  MESSAGE("sigma = 0 vs naive plain RoPE: max relative difference ", e);
  CHECK(e < 1e-12);
  // And sigma > 0 really changes the logits (the damping reaches the scores).
  std::vector<mc::GaussianPosition> blurred = pos;
  blurred[0].sigma = 2.0;
  CHECK(max_rel_diff(model.forward(emb, blurred), ours) > 1e-6);
}

TEST_CASE("llama: shifting every position by the same amount leaves the logits unchanged") {
  const ref::LlamaOptions o = tiny_options();
  auto model = ref::LlamaModel<double>::random(o, 80);
  const std::int64_t n = 8;
  auto pos = mixed_positions(n);
  const Mat emb = random_normal(n, o.d_model, 81);
  const Mat a = model.forward(emb, pos);
  for (auto& p : pos) p.t += 1000.0;  // σ kept: the Gaussian factor is shift-invariant too
  const Mat b = model.forward(emb, pos);
  const double e = max_rel_diff(a, b);
  MESSAGE("shift by 1000 tokens: max relative difference ", e);
  CHECK(e < 1e-9);  // cos/sin of ~1000 rad lose ~1e-13 of phase
}

TEST_CASE("llama: permuting the heads (q, k, v columns and wo rows) leaves the logits unchanged") {
  const ref::LlamaOptions o = tiny_options();
  auto model = ref::LlamaModel<double>::random(o, 90);
  const std::int64_t n = 6, dh = o.d_head();
  const auto pos = mixed_positions(n);
  const Mat emb = random_normal(n, o.d_model, 91);
  const Mat a = model.forward(emb, pos);
  for (auto& l : model.weights().layers) {  // swap heads 0 and 1
    for (Mat* m : {&l.attn.wq, &l.attn.wk, &l.attn.wv}) {
      const Mat h0 = m->middleCols(0, dh);
      m->middleCols(0, dh) = m->middleCols(dh, dh);
      m->middleCols(dh, dh) = h0;
    }
    const Mat r0 = l.attn.wo.middleRows(0, dh);
    l.attn.wo.middleRows(0, dh) = l.attn.wo.middleRows(dh, dh);
    l.attn.wo.middleRows(dh, dh) = r0;
  }
  const Mat b = model.forward(emb, pos);
  CHECK(max_rel_diff(a, b) < 1e-12);
}

TEST_CASE("llama: KV-cache decoding one row at a time equals the full causal forward") {
  const ref::LlamaOptions o = tiny_options();
  auto model = ref::LlamaModel<double>::random(o, 100);
  const std::int64_t n = 10;
  const auto pos = mixed_positions(n);
  const Mat emb = random_normal(n, o.d_model, 101);
  const Mat full = model.forward(emb, pos);
  model.begin_decode(n);
  Mat step(n, o.n_vocab);
  for (std::int64_t i = 0; i < n; ++i)
    model.decode_step(emb.row(i).data(), pos[static_cast<std::size_t>(i)], step.row(i).data());
  CHECK(model.num_decoded() == n);
  const double e = max_rel_diff(step, full);
  MESSAGE("decode vs full forward: max relative difference ", e);
  CHECK(e < 1e-12);
  CHECK_THROWS_WITH_AS(model.decode_step(emb.row(0).data(), pos[0], step.row(0).data()),
                       doctest::Contains("[mc.llama.decode_full]"), mc::Error);
  // A fresh begin_decode forgets the cache.
  model.begin_decode(2);
  Mat first(1, o.n_vocab);
  model.decode_step(emb.row(0).data(), pos[0], first.data());
  CHECK(max_rel_diff(first, full.topRows(1)) < 1e-12);
}

TEST_CASE("llama: the float model agrees with the double model on the same weights") {
  const ref::LlamaOptions o = tiny_options();
  auto md = ref::LlamaModel<double>::random(o, 110);
  auto wf = ref::LlamaWeights<float>::zeros(o);
  std::vector<double*> src;
  md.weights().for_each_parameter(
      [&](const std::string&, double* p, Eigen::Index) { src.push_back(p); });
  std::size_t k = 0;
  wf.for_each_parameter([&](const std::string&, float* p, Eigen::Index size) {
    for (Eigen::Index i = 0; i < size; ++i) p[i] = static_cast<float>(src[k][i]);
    ++k;
  });
  ref::LlamaModel<float> mf(o, std::move(wf));
  const std::int64_t n = 8;
  const auto pos = mixed_positions(n);
  const Mat emb = random_normal(n, o.d_model, 111);
  const Mat ld = md.forward(emb, pos);
  const Mat lf = mf.forward(mc::RowMatrix<float>(emb.cast<float>()), pos).cast<double>();
  const double nmse = (lf - ld).squaredNorm() / ld.squaredNorm();
  MESSAGE("float vs double logits: NMSE ", nmse);
  CHECK(nmse < 1e-10);
  Mat dl = random_normal(n, o.n_vocab, 112);
  mc::RowMatrix<float> dlf = dl.cast<float>(), def(n, o.d_model);
  Mat ded(n, o.d_model);
  md.backward_inputs(dl.data(), n, ded.data());
  mf.backward_inputs(dlf.data(), n, def.data());
  CHECK((def.cast<double>() - ded).squaredNorm() / ded.squaredNorm() < 1e-10);
}

// ---------------------------------------------------------------- cross-entropy indexing

TEST_CASE("cross_entropy: row i is scored against targets[i], so callers pass the next token") {
  // Logits that predict the NEXT token of ids perfectly: row i peaks at ids[i + 1].
  const std::vector<mc::TokenId> ids{5, 2, 8, 1, 1, 6};
  const std::int64_t n = static_cast<std::int64_t>(ids.size()), v = 10;
  Mat logits = Mat::Zero(n, v);
  for (std::int64_t i = 0; i + 1 < n; ++i) logits(i, ids[static_cast<std::size_t>(i + 1)]) = 30.0;
  const std::vector<mc::TokenId> next = ref::next_token_targets(ids.data(), n);
  REQUIRE(next.size() == ids.size());
  for (std::int64_t i = 0; i + 1 < n; ++i)
    CHECK(next[static_cast<std::size_t>(i)] == ids[static_cast<std::size_t>(i + 1)]);
  CHECK(next.back() == ref::kIgnoreTarget);
  const double right = ref::cross_entropy(logits, next.data(), static_cast<Mat*>(nullptr));
  const double shifted =
      ref::cross_entropy(logits, ids.data(), static_cast<Mat*>(nullptr));  // the POC bug
  CHECK(right < 1e-10);
  CHECK(shifted > 10.0);
  // Mean over counted rows: one row at log V each.
  const Mat flat = Mat::Zero(2, v);
  const std::vector<mc::TokenId> t{ref::kIgnoreTarget, 3};
  CHECK(ref::cross_entropy(flat, t.data(), static_cast<Mat*>(nullptr)) ==
        doctest::Approx(std::log(10.0)));
  const std::vector<mc::TokenId> bad{0, 10};
  CHECK_THROWS_WITH_AS(ref::cross_entropy(flat, bad.data(), static_cast<Mat*>(nullptr)),
                       doctest::Contains("[mc.cross_entropy.bad_target] targets[1] = 10"),
                       mc::Error);
}

// ---------------------------------------------------------------- errors

TEST_CASE("llama: bad options, tokens, masks and call orders are rejected with a tagged message") {
  ref::LlamaOptions o = tiny_options();
  o.n_heads = 3;
  CHECK_THROWS_WITH_AS(o.validate(), doctest::Contains("n_heads = 3"), mc::Error);
  o = tiny_options();
  o.norm_eps = 0.0;
  CHECK_THROWS_WITH_AS(o.validate(), doctest::Contains("norm_eps = 0"), mc::Error);
  o = tiny_options();
  auto model = ref::LlamaModel<double>::random(o, 120);
  const std::int64_t n = 3;
  Mat d(n, o.n_vocab), de(n, o.d_model);
  CHECK_THROWS_WITH_AS(model.backward_inputs(d.data(), n, de.data()),
                       doctest::Contains("[mc.llama.no_forward]"), mc::Error);
  const std::vector<mc::TokenId> ids{1, 11, 2};
  CHECK_THROWS_WITH_AS(model.embed(ids.data(), n, de.data()), doctest::Contains("ids[1] = 11"),
                       mc::Error);
  const auto pos = mixed_positions(n);
  const Mat emb = random_normal(n, o.d_model, 121);
  std::vector<std::uint8_t> mask{1, 0, 0, 0, 0, 0, 1, 1, 1};
  CHECK_THROWS_WITH_AS(model.forward(emb, pos, mask.data()),
                       doctest::Contains("mask row 1 allows no key"), mc::Error);
  auto bad_pos = pos;
  bad_pos[2].sigma = -1.0;
  CHECK_THROWS_WITH_AS(model.forward(emb, bad_pos), doctest::Contains("positions[2].sigma"),
                       mc::Error);
  model.forward(emb, pos);
  CHECK_THROWS_WITH_AS(model.backward_inputs(d.data(), 2, de.data()),
                       doctest::Contains("latest forward had 3"), mc::Error);
  auto w = ref::LlamaWeights<double>::zeros(o);
  w.layers[0].mlp.w2.resize(o.d_model, o.d_ff);
  CHECK_THROWS_WITH_AS(ref::LlamaModel<double>(o, w), doctest::Contains("mlp.w2 is 16 x 24"),
                       mc::Error);
}

TEST_CASE("llama: a pyramid mask gives the same logits as its dense expansion") {
  mc::reference::LlamaOptions o;
  o.d_model = 16;
  o.n_layers = 1;
  o.n_heads = 2;
  o.d_ff = 24;
  o.n_vocab = 20;
  auto model = mc::reference::LlamaModel<double>::random(o, 3);
  mc::PyramidMaskOptions po;
  po.r = 4;
  po.window = 6;
  po.num_levels = 2;
  const mc::PyramidMask mask(po, 37);
  const std::int64_t s = mask.seq_len();
  mc::RowMatrix<double> emb = mc::RowMatrix<double>::Random(s, o.d_model);
  std::vector<mc::GaussianPosition> pos(static_cast<std::size_t>(s));
  for (std::int64_t i = 0; i < s; ++i) pos[static_cast<std::size_t>(i)] = {static_cast<double>(i), 0.0};
  const auto a = model.forward(emb, pos, mask);
  const auto dense = mask.dense();
  const auto b = model.forward(emb, pos, dense.data());
  CHECK(a == b);
  // And it differs from plain causal attention: the pyramid hides keys.
  const auto c = model.forward(emb, pos);
  CHECK((a - c).cwiseAbs().maxCoeff() > 1e-6);
  mc::RowMatrix<double> short_emb = emb.topRows(s - 1);
  CHECK_THROWS_WITH_AS(model.forward(short_emb, std::span(pos).first(static_cast<std::size_t>(s - 1)), mask),
                       doctest::Contains("for a pyramid mask over"), mc::Error);
}
