// SPDX-License-Identifier: Apache-2.0
// GistNet, CPU reference: central-difference gradient checks in fp64 for the inputs and every
// weight tensor (both pooling heads, per-level weight sets); child order matters (RoPE); blocks
// of a batch are independent; float agrees with double; GistNetGister builds a Tree's levels;
// AdamW steps through for_each_parameter; parameter count at defaults; bad options.
#include <doctest/doctest.h>

#include <megacontext/delta_nll.hpp>
#include <megacontext/gist_net.hpp>
#include <megacontext/reference/llama.hpp>
#include <megacontext/train/adamw.hpp>
#include <megacontext/train/parameters.hpp>
#include <megacontext/tree.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "common/gradcheck.hpp"
#include "common/random.hpp"

namespace {

using Mat = mc::RowMatrix<double>;
using C4d = mc::Config<4, 3, double>;
using C4f = mc::Config<4, 3, float>;

// A matrix [rows, cols] of normal entries (mean 0, std `std_dev`) from its own derived seed.
Mat random_normal(Eigen::Index rows, Eigen::Index cols, std::uint64_t salt, double std_dev = 1.0) {
  auto gen = mc::test::rng(salt);
  std::normal_distribution<double> normal(0.0, std_dev);
  Mat m(rows, cols);
  for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = normal(gen);
  return m;
}

using mc::test::max_rel_diff;

// max |a − b| / max |a|: the error relative to the tensor's scale (for fp32 results, where an
// entry near 0 has no relative precision of its own).
double max_scaled_diff(const Mat& a, const Mat& b) {
  REQUIRE(a.rows() == b.rows());
  REQUIRE(a.cols() == b.cols());
  const double e = (a - b).cwiseAbs().maxCoeff() / a.cwiseAbs().maxCoeff();
  return std::isnan(e) ? 1e300 : e;
}

// Shared check (tests/common/gradcheck.hpp), quiet: GistNet reports its own summary lines.
double grad_check(const std::string& what, const std::function<double()>& loss, double* params,
                  const double* analytic, const std::vector<Eigen::Index>& indices,
                  double abs_floor = 0.0) {
  return mc::test::grad_check(what, loss, params, analytic, indices, 1e-4, abs_floor);
}

// `count` distinct indices of [0, size) from a seeded draw (all of them when size <= count).
std::vector<Eigen::Index> sample(Eigen::Index size, Eigen::Index count, std::uint64_t salt) {
  std::vector<Eigen::Index> v(static_cast<std::size_t>(size));
  for (Eigen::Index i = 0; i < size; ++i) v[static_cast<std::size_t>(i)] = i;
  if (size <= count) return v;
  auto gen = mc::test::rng(salt);
  std::shuffle(v.begin(), v.end(), gen);
  v.resize(static_cast<std::size_t>(count));
  return v;
}

// Bound on every fp64 gradient check (measured values are printed by MESSAGE).
constexpr double kGradBound = 1e-6;

// A tiny network (scaled-up init so attention is far from uniform and the MLPs matter).
mc::GistNetOptions tiny_options(mc::GistPooling pooling, std::int64_t sets = 1) {
  mc::GistNetOptions o;
  o.d_model = 12;
  o.n_layers = 2;
  o.n_heads = 2;
  o.d_attn = 8;  // d_head = 4
  o.d_ff = 10;
  o.pooling = pooling;
  o.d_pool = 6;
  o.num_weight_sets = sets;
  o.rope_base = 10.0;
  o.init_std = 0.5;
  o.out_gain = 0.7;
  return o;
}

// Gradient check of L = Σ c ∘ gists(lod, x) for the inputs and every weight tensor.
void check_gradients(const mc::GistNetOptions& o, int lod, std::uint64_t salt) {
  INFO(mc::test::seed_info());
  INFO("pooling = ", static_cast<int>(o.pooling), ", sets = ", o.num_weight_sets, ", lod = ", lod);
  auto net = mc::GistNet<C4d>::random(o, mc::test::base_seed() + salt);
  // Perturb the norm gains away from 1 so their gradients are generic.
  auto gen = mc::test::rng(salt + 1);
  std::uniform_real_distribution<double> unif(0.5, 1.5);
  net.weights().for_each_parameter([&](const std::string& name, double* p, Eigen::Index size) {
    if (name.find("norm") != std::string::npos)
      for (Eigen::Index i = 0; i < size; ++i) p[i] *= unif(gen);
  });
  const std::int64_t n = 3, d = o.d_model;
  Mat x = random_normal(n * C4d::K, d, salt + 2);
  const Mat c = random_normal(n, d, salt + 3);
  auto loss = [&] { return net.forward(lod, x).cwiseProduct(c).sum(); };
  loss();
  Mat dx(n * C4d::K, d);
  auto grads = mc::GistNetWeights<double>::zeros(o);
  net.backward(c.data(), n, dx.data(), &grads);

  const double ex = grad_check("inputs", loss, x.data(), dx.data(), sample(x.size(), 1000, 7));
  MESSAGE("inputs: max relative error ", ex);
  CHECK(ex < kGradBound);

  // Pair the weight tensors with their gradients by visiting order.
  std::vector<std::pair<std::string, std::pair<double*, Eigen::Index>>> params;
  std::vector<double*> grad_ptrs;
  net.weights().for_each_parameter([&](const std::string& name, double* p, Eigen::Index size) {
    params.push_back({name, {p, size}});
  });
  grads.for_each_parameter(
      [&](const std::string&, double* p, Eigen::Index) { grad_ptrs.push_back(p); });
  REQUIRE(params.size() == grad_ptrs.size());
  const std::string used = "sets." + std::to_string(net.weight_set(lod)) + ".";
  double worst = 0.0;
  int checked = 0;
  for (std::size_t t = 0; t < params.size(); ++t) {
    const std::string& name = params[t].first;
    const auto& ps = params[t].second;
    if (!name.starts_with(used)) {
      // A set the level does not use gets no gradient at all.
      const Eigen::Map<const Eigen::VectorXd> g(grad_ptrs[t], ps.second);
      CHECK_MESSAGE(g.cwiseAbs().maxCoeff() == 0.0, name, " got a gradient from lod ", lod);
      continue;
    }
    const double e = grad_check(name, loss, ps.first, grad_ptrs[t], sample(ps.second, 40, 11 + t));
    INFO(name, ": max relative error ", e);
    CHECK(e < kGradBound);
    worst = std::max(worst, e);
    ++checked;
  }
  MESSAGE("weights: ", checked, " tensors, max relative error ", worst);
  CHECK(checked == static_cast<int>(2 * 9 + (o.pooling == mc::GistPooling::kMeanMlp ? 4 : 6)));
}

TEST_CASE("gist_net: gradients of inputs and every weight, mean + MLP head (fp64)") {
  check_gradients(tiny_options(mc::GistPooling::kMeanMlp), 1, 100);
}

TEST_CASE("gist_net: gradients of inputs and every weight, learned-query head (fp64)") {
  check_gradients(tiny_options(mc::GistPooling::kQuery), 1, 200);
}

TEST_CASE("gist_net: per-level weight sets, gradients reach only the level's set (fp64)") {
  // Sets: LOD1 -> 0, LOD2 -> 1, LOD3 -> 1.
  check_gradients(tiny_options(mc::GistPooling::kMeanMlp, 2), 2, 300);
  check_gradients(tiny_options(mc::GistPooling::kQuery, 2), 3, 400);
  auto net = mc::GistNet<C4d>::random(tiny_options(mc::GistPooling::kMeanMlp, 2), 5);
  CHECK(net.weight_set(1) == 0);
  CHECK(net.weight_set(2) == 1);
  CHECK(net.weight_set(3) == 1);
  CHECK_THROWS_AS(net.weight_set(0), mc::Error);
  CHECK_THROWS_AS(net.weight_set(4), mc::Error);
}

TEST_CASE("gist_net: the gist depends on child order (RoPE), not only on the set of children") {
  INFO(mc::test::seed_info());
  for (auto pooling : {mc::GistPooling::kMeanMlp, mc::GistPooling::kQuery}) {
    auto o = tiny_options(pooling);
    auto net = mc::GistNet<C4d>::random(o, mc::test::base_seed() + 500);
    const Mat x = random_normal(C4d::K, o.d_model, 501);
    const Mat g = net.forward(1, x);
    // Reverse the children, and swap just the first two.
    Mat rev = x.colwise().reverse();
    Mat swap = x;
    swap.row(0).swap(swap.row(1));
    const double e_rev = max_rel_diff(g, net.forward(1, rev));
    const double e_swap = max_rel_diff(g, net.forward(1, swap));
    MESSAGE("pooling ", static_cast<int>(pooling), ": relative change under reversal ", e_rev,
            ", under a swap of children 0 and 1 ", e_swap);
    CHECK(e_rev > 1e-2);
    CHECK(e_swap > 1e-2);
    // Control: the same children in the same order give the same gist bit for bit.
    CHECK(max_rel_diff(g, net.forward(1, x)) == 0.0);
  }
}

TEST_CASE("gist_net: blocks of a batch are independent") {
  INFO(mc::test::seed_info());
  for (auto pooling : {mc::GistPooling::kMeanMlp, mc::GistPooling::kQuery}) {
    auto o = tiny_options(pooling);
    auto net = mc::GistNet<C4d>::random(o, mc::test::base_seed() + 600);
    const std::int64_t n = 5, k = C4d::K;
    Mat x = random_normal(n * k, o.d_model, 601);
    const Mat g = net.forward(1, x);
    // Each block alone gives the same gist as inside the batch.
    double worst = 0.0;
    for (std::int64_t i = 0; i < n; ++i) {
      const Mat gi = net.forward(1, Mat(x.middleRows(i * k, k)));
      worst = std::max(worst, max_rel_diff(Mat(g.row(i)), gi));
    }
    MESSAGE("pooling ", static_cast<int>(pooling), ": batch vs alone, max relative diff ", worst);
    CHECK(worst < 1e-12);
    // Changing block 2 leaves every other gist unchanged and changes gist 2.
    x.middleRows(2 * k, k) = random_normal(k, o.d_model, 602);
    const Mat g2 = net.forward(1, x);
    for (std::int64_t i = 0; i < n; ++i) {
      const double e = max_rel_diff(Mat(g.row(i)), Mat(g2.row(i)));
      if (i == 2) {
        CHECK(e > 1e-2);
      } else {
        CHECK(e < 1e-12);
      }
    }
    // And the backward of one block's gist reaches only that block's inputs.
    net.forward(1, x);
    Mat dg = Mat::Zero(n, o.d_model);
    dg.row(3).setOnes();
    Mat dx(n * k, o.d_model);
    net.backward(dg.data(), n, dx.data(), nullptr);
    for (std::int64_t i = 0; i < n; ++i) {
      const double m = dx.middleRows(i * k, k).cwiseAbs().maxCoeff();
      if (i == 3) {
        CHECK(m > 0.0);
      } else {
        CHECK(m == 0.0);
      }
    }
  }
}

TEST_CASE("gist_net: float agrees with double") {
  INFO(mc::test::seed_info());
  for (auto pooling : {mc::GistPooling::kMeanMlp, mc::GistPooling::kQuery}) {
    auto o = tiny_options(pooling);
    o.d_model = 32;
    o.d_attn = 16;
    const std::uint64_t seed = mc::test::base_seed() + 700;
    auto nd = mc::GistNet<C4d>::random(o, seed);
    auto nf = mc::GistNet<C4f>::random(o, seed);
    const std::int64_t n = 7;
    const Mat x = random_normal(n * C4d::K, o.d_model, 701);
    const Mat gd = nd.forward(1, x);
    const Mat gf = nf.forward(1, mc::RowMatrix<float>(x.cast<float>())).cast<double>();
    const double ef = max_scaled_diff(gd, gf);
    // Backward too: dL/dx of L = Σ c ∘ gists.
    const Mat c = random_normal(n, o.d_model, 702);
    Mat dxd(x.rows(), x.cols());
    mc::RowMatrix<float> dxf(x.rows(), x.cols());
    const mc::RowMatrix<float> cf = c.cast<float>();
    nd.backward(c.data(), n, dxd.data(), nullptr);
    nf.backward(cf.data(), n, dxf.data(), nullptr);
    const double eb = max_scaled_diff(dxd, Mat(dxf.cast<double>()));
    const double nrm_f = (gd - gf).norm() / gd.norm();
    const double nrm_b = (dxd - dxf.cast<double>()).norm() / dxd.norm();
    MESSAGE("pooling ", static_cast<int>(pooling), ": float vs double, forward max scaled error ",
            ef, " (relative norm ", nrm_f, "), backward max ", eb, " (relative norm ", nrm_b, ")");
    // Max error over the tensor's scale, and in norm: fp32 rounding through two blocks, sharp
    // softmaxes (init_std 0.5) and three RMSNorms.
    CHECK(ef < 1e-4);
    CHECK(eb < 1e-3);
    CHECK(nrm_f < 5e-5);
    CHECK(nrm_b < 5e-4);
  }
}

TEST_CASE("gist_net: GistNetGister builds every level of a Tree") {
  INFO(mc::test::seed_info());
  using C = mc::Config<4, 2, float>;
  auto o = tiny_options(mc::GistPooling::kMeanMlp, 2);
  auto embedder = mc::MeanPoolGister<C>::random(50, o.d_model, mc::test::base_seed() + 800);
  auto net = mc::GistNet<C>::random(o, mc::test::base_seed() + 801);
  mc::GistNetGister<C, mc::MeanPoolGister<C>> gister(embedder, net);
  static_assert(mc::Gister<decltype(gister), C>);
  CHECK(gister.vocab() == 50);
  mc::MemoryTree<C> tree(o.d_model);
  // 37 tokens in two appends: 9 LOD1 gists, 2 LOD2 gists, an incomplete tail.
  std::vector<mc::TokenId> ids(37);
  auto gen = mc::test::rng(802);
  for (auto& t : ids) t = static_cast<mc::TokenId>(gen() % 50);
  tree.append(std::span<const mc::TokenId>(ids).first(13), gister);
  tree.append(std::span<const mc::TokenId>(ids).subspan(13), gister);
  // What the tree stored equals the network run directly on the embeddings.
  mc::RowMatrix<float> emb(36, o.d_model);
  embedder.embed(ids.data(), 36, emb.data());
  const mc::RowMatrix<float> lod1 = net.forward(1, emb);
  const mc::RowMatrix<float> lod2 = net.forward(2, mc::RowMatrix<float>(lod1.topRows(8)));
  const mc::RowMatrix<float> t1 = tree.gists(1, 0, 9);
  const mc::RowMatrix<float> t2 = tree.gists(2, 0, 2);
  // Not bit-exact: the tree ran 3 + 6 blocks per call, this runs 9, and fp32 GEMM rounding
  // depends on the matrix size (blocks are independent in exact arithmetic; fp64 test above).
  CHECK(max_scaled_diff(lod1.cast<double>(), t1.cast<double>()) < 5e-5);
  CHECK(max_scaled_diff(lod2.cast<double>(), t2.cast<double>()) < 5e-5);
  // LOD2 used set 1: it differs from running LOD1's set on the same children.
  const mc::RowMatrix<float> lod2_with_set0 = net.forward(1, mc::RowMatrix<float>(lod1.topRows(8)));
  CHECK(max_rel_diff(lod2.cast<double>(), lod2_with_set0.cast<double>()) > 1e-2);
  // The vocabulary check of Tree::append sees vocab().
  const std::vector<mc::TokenId> bad = {3, 50};
  CHECK_THROWS_AS(tree.append(bad, gister), mc::Error);
  CHECK(tree.num_tokens() == 37);

  // A LlamaModel is an embedder too; its vocabulary comes from dims().
  mc::reference::LlamaOptions lo;
  lo.d_model = o.d_model;
  lo.n_heads = 2;
  lo.d_ff = 16;
  lo.n_vocab = 30;
  auto model = mc::reference::LlamaModel<float>::random(lo, 803);
  mc::GistNetGister<C, mc::reference::LlamaModel<float>> lg(model, net);
  static_assert(mc::Gister<decltype(lg), C>);
  CHECK(lg.vocab() == 30);
  mc::MemoryTree<C> t(o.d_model);
  std::vector<mc::TokenId> few(16);
  for (auto& x : few) x = static_cast<mc::TokenId>(gen() % 30);
  t.append(few, lg);
  CHECK(t.num_tokens() == 16);
  mc::RowMatrix<float> e(16, o.d_model);
  model.embed(few.data(), 16, e.data());
  const mc::RowMatrix<float> want = net.forward(2, net.forward(1, e));
  CHECK(max_scaled_diff(want.cast<double>(),
                        mc::RowMatrix<float>(t.gists(2, 0, 1)).cast<double>()) < 1e-5);
  // Mismatched widths are refused.
  auto narrow = mc::MeanPoolGister<C>::random(50, o.d_model + 1, 1);
  CHECK_THROWS_AS((mc::GistNetGister<C, mc::MeanPoolGister<C>>(narrow, net)), mc::Error);
}

TEST_CASE("gist_net: gradients through a frozen decoder's ΔNLL (gist_nll), end to end (fp64)") {
  // The training path: ids -> model.embed -> GistNet -> gist row in the window -> NLL of the next
  // H tokens; dNLL/dgist comes from gist_nll (backward_inputs), GistNet::backward takes it on.
  INFO(mc::test::seed_info());
  auto o = tiny_options(mc::GistPooling::kQuery);
  mc::reference::LlamaOptions lo;
  lo.d_model = o.d_model;
  lo.n_heads = 2;
  lo.d_ff = 16;
  lo.n_vocab = 13;
  lo.rope_base = 100.0;
  lo.init_std = 0.4;
  auto model = mc::reference::LlamaModel<double>::random(lo, mc::test::base_seed() + 1000);
  auto net = mc::GistNet<C4d>::random(o, mc::test::base_seed() + 1001);
  std::vector<mc::TokenId> ids(12);
  auto gen = mc::test::rng(1002);
  for (auto& t : ids) t = static_cast<mc::TokenId>(gen() % 13);
  const mc::DeltaNllSpan span{3, C4d::K, 5};
  Mat children(C4d::K, o.d_model);
  model.embed(ids.data() + span.begin, C4d::K, children.data());
  auto loss = [&] {
    const Mat g = net.forward(1, children);
    return mc::gist_nll(model, ids, span, g.data());
  };
  const Mat g = net.forward(1, children);
  Mat dg(1, o.d_model);
  mc::gist_nll(model, ids, span, g.data(), dg.data());
  auto grads = mc::GistNetWeights<double>::zeros(o);
  Mat dchildren(C4d::K, o.d_model);
  net.backward(dg.data(), 1, dchildren.data(), &grads);
  // The loss is an O(1) mean NLL: its fp64 round-off over the step (~1e-12) swamps gradients
  // below 1e-4, so those are compared in absolute terms (a tensor checked on 8 entries may hold
  // only such small ones, and its own 1e-3·max|fd| floor would then not help).
  const double floor = 1e-4;
  double worst = grad_check("children", loss, children.data(), dchildren.data(),
                            sample(children.size(), 1000, 1), floor);
  std::vector<double*> gp;
  grads.for_each_parameter([&](const std::string&, double* p, Eigen::Index) { gp.push_back(p); });
  std::size_t t = 0;
  net.weights().for_each_parameter([&](const std::string& name, double* p, Eigen::Index size) {
    worst = std::max(worst, grad_check(name, loss, p, gp[t], sample(size, 8, 1003 + t), floor));
    ++t;
  });
  MESSAGE("ΔNLL path: max relative error ", worst, " over the children and ", t, " tensors");
  CHECK(worst < kGradBound);
}

TEST_CASE("gist_net: AdamW steps through for_each_parameter and lowers a loss") {
  INFO(mc::test::seed_info());
  auto o = tiny_options(mc::GistPooling::kQuery);
  o.init_std = 0.1;
  auto net = mc::GistNet<C4d>::random(o, mc::test::base_seed() + 900);
  const std::int64_t n = 4;
  const Mat x = random_normal(n * C4d::K, o.d_model, 901);
  const Mat target = random_normal(n, o.d_model, 902);
  mc::train::AdamW opt;
  double first = 0.0, last = 0.0;
  for (int step = 0; step < 30; ++step) {
    const Mat diff = net.forward(1, x) - target;
    last = 0.5 * diff.squaredNorm();
    if (step == 0) first = last;
    auto grads = mc::GistNetWeights<double>::zeros(o);
    net.backward(diff.data(), n, nullptr, &grads);
    opt.step<double>(net.weights(), grads, 1e-2);
  }
  MESSAGE("loss ", first, " -> ", last, " after 30 AdamW steps");
  CHECK(last < 0.5 * first);
}

TEST_CASE("gist_net: about 0.5M parameters at the default options (d = 256)") {
  const mc::GistNetOptions o;
  auto w = mc::GistNetWeights<float>::zeros(o);
  const std::int64_t count = mc::train::num_parameters<float>(w);
  MESSAGE("default GistNet (mean + MLP head): ", count, " parameters");
  CHECK(count == o.num_parameters_per_set());
  CHECK(count >= 450'000);
  CHECK(count <= 550'000);
  mc::GistNetOptions q;
  q.pooling = mc::GistPooling::kQuery;
  auto wq = mc::GistNetWeights<float>::zeros(q);
  const std::int64_t count_q = mc::train::num_parameters<float>(wq);
  MESSAGE("default GistNet with the learned-query head: ", count_q, " parameters");
  CHECK(count_q == q.num_parameters_per_set());
  q.num_weight_sets = 3;
  auto w3 = mc::GistNetWeights<float>::zeros(q);
  CHECK(mc::train::num_parameters<float>(w3) == 3 * count_q);
}

// Checks that `f` throws mc::Error whose message contains every string of `parts`.
void check_throws_naming(const std::function<void()>& f, const std::vector<std::string>& parts) {
  try {
    f();
    FAIL("no exception; expected one naming ", parts.front());
  } catch (const mc::Error& e) {
    const std::string what = e.what();
    for (const auto& p : parts) CHECK_MESSAGE(what.find(p) != std::string::npos, what);
  }
}

TEST_CASE("gist_net: bad options, shapes and call order throw, naming the value") {
  auto bad = [](auto mutate) {
    mc::GistNetOptions o;
    mutate(o);
    return [o] { o.validate(); };
  };
  check_throws_naming(bad([](auto& o) { o.d_model = 0; }), {"d_model = 0"});
  check_throws_naming(bad([](auto& o) { o.n_layers = 0; }), {"n_layers = 0"});
  check_throws_naming(bad([](auto& o) { o.n_heads = 3; }), {"n_heads = 3", "d_attn = 128"});
  check_throws_naming(bad([](auto& o) {
                        o.d_attn = 12;
                        o.n_heads = 4;
                      }),
                      {"d_attn = 12"});
  check_throws_naming(bad([](auto& o) { o.d_ff = -1; }), {"d_ff = -1"});
  check_throws_naming(bad([](auto& o) { o.pooling = static_cast<mc::GistPooling>(7); }),
                      {"pooling = 7"});
  check_throws_naming(bad([](auto& o) { o.d_pool = 0; }), {"d_pool = 0"});
  check_throws_naming(bad([](auto& o) { o.num_weight_sets = 0; }), {"num_weight_sets = 0"});
  check_throws_naming(bad([](auto& o) { o.rope_base = 1.0; }), {"rope_base = 1"});
  check_throws_naming(bad([](auto& o) { o.norm_eps = 0.0; }), {"norm_eps = 0"});
  check_throws_naming(bad([](auto& o) { o.init_std = -1.0; }), {"init_std = -1"});
  check_throws_naming(bad([](auto& o) { o.out_gain = 0.0; }), {"out_gain = 0"});
  // d_pool matters only to the mean + MLP head.
  mc::GistNetOptions q;
  q.pooling = mc::GistPooling::kQuery;
  q.d_pool = 0;
  CHECK_NOTHROW(q.validate());

  auto o = tiny_options(mc::GistPooling::kMeanMlp);
  // Weights that do not fit the options.
  auto w = mc::GistNetWeights<double>::zeros(o);
  w.sets[0].blocks[1].mlp.w2.resize(3, 3);
  check_throws_naming([&] { mc::GistNet<C4d>(o, w); }, {"mlp.w2 is 3 x 3", "expected 10 x 12"});
  auto other = o;
  other.pooling = mc::GistPooling::kQuery;
  check_throws_naming([&] { mc::GistNet<C4d>(o, mc::GistNetWeights<double>::zeros(other)); },
                      {"pool.w1"});
  // Backward before any forward, with the wrong n, and with grads of the wrong shape.
  auto net = mc::GistNet<C4d>::random(o, 1);
  const Mat dg = Mat::Zero(2, o.d_model);
  Mat dx(2 * C4d::K, o.d_model);
  check_throws_naming([&] { net.backward(dg.data(), 2, dx.data(), nullptr); },
                      {"[mc.gist_net.no_forward]"});
  net.forward(1, random_normal(3 * C4d::K, o.d_model, 1));
  check_throws_naming([&] { net.backward(dg.data(), 2, dx.data(), nullptr); }, {"n = 2", "had 3"});
  auto two_sets = mc::GistNetWeights<double>::zeros(tiny_options(mc::GistPooling::kMeanMlp, 2));
  const Mat dg3 = Mat::Zero(3, o.d_model);
  check_throws_naming([&] { net.backward(dg3.data(), 3, nullptr, &two_sets); },
                      {"grads has 2 weight sets"});
  check_throws_naming([&] { net.forward(1, random_normal(5, o.d_model, 2)); }, {"input 5 x 12"});
  check_throws_naming([&] { net.forward(4, random_normal(4, o.d_model, 2)); }, {"lod = 4"});
}

}  // namespace
