// SPDX-License-Identifier: Apache-2.0
// CPU/GPU parity of LensNet (mc::cuda::DeviceLensNet, cuda/megacontext/device_lens_net.cuh)
// against the Eigen reference mc::LensNet run in fp64 on the same fp32 weights: the scores, the
// gradients to the entry embeddings and to the query, and the gradient of EVERY weight tensor,
// for
//   - the default configuration (d_in 256, D 128, 4 heads of 32, 3 layers, d_ff 256, Q 32), and
//   - an awkward one (d_in 40, D 36 = 3 heads of 12, 2 layers, d_ff 50, Q 37 > one warp, F 6),
// at W = 1, 7, 333 and 1000 entries (none a multiple of the 32-entry tile but 1000's tail) and
// query memories of every row count from 1 to num_query, with fresh random inputs, weights
// (norm gains ~N(1, 0.2), biases non-zero, larger init) and upstream gradients, outputs poisoned
// and guarded, on a stream and through a CUDA graph (replayed twice). Also: backward(accumulate)
// doubles every gradient, the inference mode gives the training mode's scores, and the fused
// inference kernels (default shape, TF32) give the CPU's scores and the unfused forward's.
//
// Bounds. Exact fp32 GEMMs: per tensor |err| <= 1e-4·max|ref| + 1e-3·|ref| and NMSE <= 1e-9.
// TF32 GEMMs (u = 2^-11): |err| <= 3e-2·max|ref| + 3e-2·|ref| and NMSE <= 1e-4 (the decoder's
// parity bounds, test_llama_parity.cu).
#include <doctest/doctest.h>

#include <megacontext/device_lens_net.cuh>
#include <megacontext/lens_net.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "common/random.hpp"
#include "cuda/parity.cuh"

namespace {

using mc::cuda::GemmMath;
using mc::test::GuardedBuffer;
using mc::test::LaunchMode;

struct Bounds {
  double atol_of_max;
  double rtol;
  double nmse;
};
Bounds bounds(GemmMath m) {
  return m == GemmMath::kFp32 ? Bounds{1e-4, 1e-3, 1e-9} : Bounds{3e-2, 3e-2, 1e-4};
}

template <class S>
std::vector<std::pair<std::string, std::vector<double>>> tensors(mc::LensNetWeights<S> w) {
  std::vector<std::pair<std::string, std::vector<double>>> out;
  w.for_each_parameter([&](const std::string& name, S* p, Eigen::Index size) {
    out.emplace_back(name, std::vector<double>(p, p + size));
  });
  return out;
}

mc::LensNetWeights<float> make_weights(const mc::LensNetOptions& o, std::uint64_t salt) {
  auto w = mc::LensNetWeights<float>::random(o, mc::test::base_seed() + salt);
  auto gen = mc::test::rng(salt + 1);
  std::normal_distribution<float> gain(1.0f, 0.2f), bias(0.0f, 0.1f);
  w.for_each_parameter([&](const std::string& name, float* p, Eigen::Index size) {
    if (name.find("norm") != std::string::npos)
      for (Eigen::Index i = 0; i < size; ++i) p[i] = gain(gen);
    if (name.rfind("b_", 0) == 0)
      for (Eigen::Index i = 0; i < size; ++i) p[i] = bias(gen);
  });
  return w;
}

mc::RowMatrix<float> normal_matrix(std::int64_t rows, std::int64_t cols, std::uint64_t salt,
                                   float mean = 0.0f, float sd = 1.0f) {
  auto gen = mc::test::rng(salt);
  std::normal_distribution<float> nd(mean, sd);
  mc::RowMatrix<float> m(rows, cols);
  for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = nd(gen);
  return m;
}

std::vector<float> flat(const mc::RowMatrix<float>& m) {
  return std::vector<float>(m.data(), m.data() + m.size());
}
template <class M>
std::vector<double> flat_d(const M& m) {
  return std::vector<double>(m.data(), m.data() + m.size());
}

mc::LensNetOptions default_options() {
  mc::LensNetOptions o;  // d_in 256, D 128, 3 layers, 4 heads, d_ff 256, Q 32, max_lod 3
  o.init_std = 0.08;
  return o;
}

mc::LensNetOptions awkward_options() {
  mc::LensNetOptions o;
  o.d_in = 40;
  o.d_model = 36;
  o.n_heads = 3;
  o.n_layers = 2;
  o.d_ff = 50;
  o.num_query = 37;
  o.max_lod = 2;
  o.init_std = 0.15;
  return o;
}

void check_close(const std::string& what, const std::vector<float>& gpu,
                 const std::vector<double>& ref, GemmMath math) {
  INFO(what);
  double mx = 0.0;
  for (double r : ref) mx = std::max(mx, std::abs(r));
  if (mx == 0.0) {
    // Exactly zero by structure (a softmax over one key has no gradient): the GPU must give
    // exact zeros too (NaN fails).
    CHECK(std::all_of(gpu.begin(), gpu.end(), [](float v) { return v == 0.0f; }));
    return;
  }
  const Bounds b = bounds(math);
  const auto cmp = mc::test::compare_close(gpu, ref, b.atol_of_max * mx, b.rtol, b.nmse);
  CHECK_MESSAGE(cmp.ok, cmp.report);
}

void check_parity(const mc::LensNetOptions& o, std::int64_t w, std::int64_t nq, GemmMath math,
                  LaunchMode mode, const mc::test::Stream& stream, bool check_accumulate) {
  INFO("d_in = ", o.d_in, " D = ", o.d_model, " W = ", w, " Q = ", nq,
       " math = ", mc::cuda::to_string(math), " launch = ", mc::test::to_string(mode), " ",
       mc::test::seed_info());
  const std::uint64_t salt = static_cast<std::uint64_t>(w * 1013 + nq * 17 + o.d_in);
  const auto wf = make_weights(o, salt);
  const auto x = normal_matrix(w, o.d_in, salt + 2);
  const auto feat = normal_matrix(w, o.num_features(), salt + 3, 0.5f, 0.3f);
  const auto query = normal_matrix(nq, o.d_in, salt + 4);
  const auto dscores = normal_matrix(w, 1, salt + 5);

  mc::LensNet<double> ref(o, wf.cast<double>());
  mc::reference::Vector<double> scores_ref;
  ref.forward(x.cast<double>(), feat.cast<double>(), query.cast<double>(), scores_ref);
  auto grads_ref = mc::LensNetWeights<double>::zeros(o);
  mc::RowMatrix<double> dx_ref, dq_ref;
  ref.backward(dscores.cast<double>(), &grads_ref, &dx_ref, &dq_ref);

  mc::cuda::DeviceLensNetOptions dev;
  dev.max_entries = 1000;
  dev.math = math;
  mc::cuda::DeviceLensNet net(o, wf, dev);
  GuardedBuffer<float> d_x(static_cast<std::size_t>(x.size())),
      d_feat(static_cast<std::size_t>(feat.size())), d_query(static_cast<std::size_t>(query.size())),
      d_scores(static_cast<std::size_t>(w)), d_ds(static_cast<std::size_t>(w)),
      d_dx(static_cast<std::size_t>(x.size())), d_dq(static_cast<std::size_t>(query.size()));
  d_x.upload(flat(x));
  d_feat.upload(flat(feat));
  d_query.upload(flat(query));
  d_ds.upload(flat(dscores));
  d_scores.poison();
  d_dx.poison();
  d_dq.poison();
  MC_CUDA_TRY(cudaMemset(net.d_gradients(), 0xFF, static_cast<std::size_t>(net.num_flat()) * 4));
  MC_CUDA_TRY(cudaDeviceSynchronize());
  mc::test::launch(mode, stream, [&](cudaStream_t s) {
    MC_CUDA_RETURN_IF_ERROR(
        net.forward(d_x.data(), d_feat.data(), w, d_query.data(), nq, d_scores.data(), s));
    return net.backward(d_ds.data(), d_dx.data(), d_dq.data(), false, s);
  });
  for (auto* b : {&d_x, &d_feat, &d_query, &d_scores, &d_ds, &d_dx, &d_dq})
    CHECK(b->guards_intact());
  check_close("scores", d_scores.download(), flat_d(scores_ref), math);
  check_close("dL/dx", d_dx.download(), flat_d(dx_ref), math);
  check_close("dL/dquery", d_dq.download(), flat_d(dq_ref), math);
  auto gpu_t = tensors(net.download_gradients());
  const auto ref_t = tensors(grads_ref);
  REQUIRE(gpu_t.size() == ref_t.size());
  for (std::size_t i = 0; i < ref_t.size(); ++i)
    check_close("dL/d" + ref_t[i].first,
                std::vector<float>(gpu_t[i].second.begin(), gpu_t[i].second.end()),
                ref_t[i].second, math);
  if (check_accumulate) {
    MC_CUDA_TRY(net.backward(d_ds.data(), nullptr, nullptr, true, stream.get()));
    stream.sync();
    gpu_t = tensors(net.download_gradients());
    for (std::size_t i = 0; i < ref_t.size(); ++i) {
      std::vector<double> twice(ref_t[i].second);
      for (double& v : twice) v *= 2.0;
      check_close("accumulated dL/d" + ref_t[i].first,
                  std::vector<float>(gpu_t[i].second.begin(), gpu_t[i].second.end()), twice, math);
    }
  }
}

}  // namespace

TEST_CASE("cuda lens_net: default configuration matches the fp64 CPU LensNet, every gradient") {
  const mc::test::Stream stream;
  int i = 0;
  for (const GemmMath math : {GemmMath::kFp32, GemmMath::kTf32})
    for (const std::int64_t w : {std::int64_t{1}, std::int64_t{7}, std::int64_t{333},
                                 std::int64_t{1000}})
      check_parity(default_options(), w, w == 1 ? 1 : 32, math, mc::test::kLaunchModes[i++ % 2],
                   stream, w == 333);
}

TEST_CASE("cuda lens_net: awkward sizes (D 36, 3 heads of 12, Q up to 37) match the CPU") {
  const mc::test::Stream stream;
  int i = 0;
  for (const GemmMath math : {GemmMath::kFp32, GemmMath::kTf32})
    for (const std::int64_t w : {std::int64_t{1}, std::int64_t{7}, std::int64_t{333}})
      for (const std::int64_t nq : {std::int64_t{1}, std::int64_t{5}, std::int64_t{37}})
        check_parity(awkward_options(), w, nq, math, mc::test::kLaunchModes[i++ % 2], stream,
                     w == 7 && nq == 37);
}

TEST_CASE("cuda lens_net: inference mode (no activations kept) gives the training mode's scores") {
  const mc::LensNetOptions o = default_options();
  const std::int64_t w = 8192, nq = 32;
  const auto wf = make_weights(o, 55);
  const auto x = normal_matrix(w, o.d_in, 56);
  const auto feat = normal_matrix(w, o.num_features(), 57, 0.5f, 0.3f);
  const auto query = normal_matrix(nq, o.d_in, 58);
  mc::cuda::DeviceLensNetOptions train_dev, infer_dev;
  infer_dev.training = false;
  train_dev.math = infer_dev.math = GemmMath::kFp32;  // equal up to fp32 summation order
  mc::cuda::DeviceLensNet train(o, wf, train_dev), infer(o, wf, infer_dev);
  CHECK(infer.device_bytes() < train.device_bytes());
  CHECK(mc::cuda::DeviceLensNet::device_bytes(o, infer_dev) == infer.device_bytes());
  GuardedBuffer<float> d_x(static_cast<std::size_t>(x.size())),
      d_feat(static_cast<std::size_t>(feat.size())), d_query(static_cast<std::size_t>(query.size())),
      a(static_cast<std::size_t>(w)), b(static_cast<std::size_t>(w));
  d_x.upload(flat(x));
  d_feat.upload(flat(feat));
  d_query.upload(flat(query));
  a.poison();
  b.poison();
  MC_CUDA_TRY(train.forward(d_x.data(), d_feat.data(), w, d_query.data(), nq, a.data()));
  MC_CUDA_TRY(infer.forward(d_x.data(), d_feat.data(), w, d_query.data(), nq, b.data()));
  MC_CUDA_TRY(cudaDeviceSynchronize());
  const std::vector<float> ga = a.download();
  const auto cmp = mc::test::compare_close(b.download(), std::vector<double>(ga.begin(), ga.end()),
                                           1e-5, 1e-4, 1e-10);
  CHECK_MESSAGE(cmp.ok, cmp.report);
  CHECK(d_x.download() == flat(x));  // inputs are read, never written
  CHECK_THROWS_WITH_AS(infer.backward(a.data()), doctest::Contains("training = true"), mc::Error);
}

TEST_CASE("cuda lens_net: the fused inference path matches the CPU LensNet and the unfused forward") {
  const mc::test::Stream stream;
  const mc::LensNetOptions o = default_options();
  struct Case {
    std::int64_t w, nq;
    std::size_t x_misalign;  // bytes; not a multiple of 16: the forward takes the unfused path
  };
  // Tiles of 64 entries: a lone entry, a partial tile, a ragged tail (333 = 5·64 + 13), full
  // tiles; query memories of 1 (softmax over one key), 5 and 32 (all) rows.
  const Case cases[] = {{1, 1, 0},    {7, 5, 0},    {333, 32, 0},  {333, 1, 0},
                        {1000, 5, 0}, {8192, 32, 0}, {333, 5, 4}};
  int i = 0;
  for (const Case& c : cases) {
    const LaunchMode mode = mc::test::kLaunchModes[i++ % 2];
    INFO("W = ", c.w, " Q = ", c.nq, " x misaligned by ", c.x_misalign, " bytes, launch = ",
         mc::test::to_string(mode), " ", mc::test::seed_info());
    const std::uint64_t salt = static_cast<std::uint64_t>(c.w * 7919 + c.nq * 31 + 5);
    const auto wf = make_weights(o, salt);
    const auto x = normal_matrix(c.w, o.d_in, salt + 2);
    const auto feat = normal_matrix(c.w, o.num_features(), salt + 3, 0.5f, 0.3f);
    const auto query = normal_matrix(c.nq, o.d_in, salt + 4);
    mc::LensNet<double> ref(o, wf.cast<double>());
    mc::reference::Vector<double> scores_ref;
    ref.forward(x.cast<double>(), feat.cast<double>(), query.cast<double>(), scores_ref);

    mc::cuda::DeviceLensNetOptions infer_dev, train_dev;
    infer_dev.max_entries = train_dev.max_entries = c.w;
    infer_dev.training = false;
    infer_dev.math = train_dev.math = GemmMath::kTf32;
    mc::cuda::DeviceLensNet infer(o, wf, infer_dev), train(o, wf, train_dev);
    REQUIRE(infer.fused());
    CHECK_FALSE(train.fused());
    GuardedBuffer<float> d_x(static_cast<std::size_t>(x.size()), c.x_misalign),
        d_feat(static_cast<std::size_t>(feat.size())),
        d_query(static_cast<std::size_t>(query.size())), a(static_cast<std::size_t>(c.w)),
        b(static_cast<std::size_t>(c.w));
    d_x.upload(flat(x));
    d_feat.upload(flat(feat));
    d_query.upload(flat(query));
    a.poison();
    b.poison();
    mc::test::launch(mode, stream, [&](cudaStream_t s) {
      return infer.forward(d_x.data(), d_feat.data(), c.w, d_query.data(), c.nq, b.data(), s);
    });
    MC_CUDA_TRY(train.forward(d_x.data(), d_feat.data(), c.w, d_query.data(), c.nq, a.data(),
                              stream.get()));
    stream.sync();
    for (auto* buf : {&d_x, &d_feat, &d_query, &a, &b}) CHECK(buf->guards_intact());
    const std::vector<float> fused = b.download(), unfused = a.download();
    check_close("fused scores vs CPU", fused, flat_d(scores_ref), GemmMath::kTf32);
    if (c.w == 8192) {  // the errors, for docs/results
      double mx = 0.0;
      for (double r : flat_d(scores_ref)) mx = std::max(mx, std::abs(r));
      MESSAGE("W = 8192, Q = 32, fused vs CPU: ",
              mc::test::compare_close(fused, flat_d(scores_ref), 3e-2 * mx, 3e-2, 1e-4).report);
      MESSAGE("W = 8192, Q = 32, unfused TF32 vs CPU: ",
              mc::test::compare_close(unfused, flat_d(scores_ref), 3e-2 * mx, 3e-2, 1e-4).report);
    }
    check_close("fused vs unfused scores", fused,
                std::vector<double>(unfused.begin(), unfused.end()), GemmMath::kTf32);
    CHECK(d_x.download() == flat(x));  // inputs are read, never written
  }
  // Other GEMM modes, training, and shapes that are not compiled in take the unfused path.
  mc::cuda::DeviceLensNetOptions dev;
  dev.training = false;
  dev.max_entries = 16;
  dev.math = GemmMath::kFp32;
  CHECK_FALSE(mc::cuda::DeviceLensNet(o, make_weights(o, 3), dev).fused());
  dev.math = GemmMath::kTf32;
  CHECK_FALSE(mc::cuda::DeviceLensNet(awkward_options(), make_weights(awkward_options(), 4), dev)
                  .fused());
  mc::LensNetOptions many_rows = o;
  many_rows.num_query = 33;
  CHECK_FALSE(mc::cuda::DeviceLensNet(many_rows, make_weights(many_rows, 5), dev).fused());
}
