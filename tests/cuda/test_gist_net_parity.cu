// SPDX-License-Identifier: Apache-2.0
// CPU/GPU parity of GistNet (mc::cuda::DeviceGistNet, cuda/megacontext/device_gist_net.cuh)
// against the Eigen reference mc::GistNet run in fp64 on the same fp32 weights: the gists, the
// gradient to the children and the gradient of EVERY weight tensor, for
//   - the default configuration (K 32, d 256, 4 heads of 32, 2 layers, d_ff 128, kMeanMlp), and
//   - a small awkward one (K 8, d 48, 3 heads of 16, d_ff 40, kQuery pooling, one weight set per
//     level, the forward run at LOD2 so the second set is the one trained),
// at n = 1, 7 and 33 blocks (33: no multiple of any tile), with fresh random inputs, weights
// (norm gains away from 1, larger init so the softmaxes are not flat) and upstream gradients,
// outputs poisoned and guarded, on a stream and through a CUDA graph (replayed twice).
// Also: backward(accumulate) doubles every gradient, the inference mode (training = false)
// gives the training mode's gists, and GistNetLevels + build_tree_gists gives the CPU Tree built
// with GistNetGister level by level.
//
// Bounds. Exact fp32 GEMMs (GemmMath::kFp32): per tensor |err| <= 1e-4·max|ref| + 1e-3·|ref| and
// NMSE <= 1e-9 (fp32 rounding through ~20 chained ops gives NMSE ~1e-12). TF32 GEMMs (inputs
// rounded to 10 mantissa bits, u = 2^-11): |err| <= 3e-2·max|ref| + 3e-2·|ref| and NMSE <= 1e-4,
// the bounds of the decoder's parity test (test_llama_parity.cu).
#include <doctest/doctest.h>

#include <megacontext/config.hpp>
#include <megacontext/device_gist_net.cuh>
#include <megacontext/device_tree_gisting.cuh>
#include <megacontext/gist_net.hpp>
#include <megacontext/gister.hpp>
#include <megacontext/tree.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <span>
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

// Every tensor of `w` as (name, values), in for_each_parameter order.
template <class S>
std::vector<std::pair<std::string, std::vector<double>>> tensors(mc::GistNetWeights<S> w) {
  std::vector<std::pair<std::string, std::vector<double>>> out;
  w.for_each_parameter([&](const std::string& name, S* p, Eigen::Index size) {
    out.emplace_back(name, std::vector<double>(p, p + size));
  });
  return out;
}

template <class To, class From>
mc::GistNetWeights<To> cast_weights(const mc::GistNetOptions& o, mc::GistNetWeights<From> w) {
  mc::GistNetWeights<To> out = mc::GistNetWeights<To>::zeros(o);
  std::vector<From*> src;
  w.for_each_parameter([&](const std::string&, From* p, Eigen::Index) { src.push_back(p); });
  std::size_t i = 0;
  out.for_each_parameter([&](const std::string&, To* p, Eigen::Index size) {
    for (Eigen::Index j = 0; j < size; ++j) p[j] = static_cast<To>(src[i][j]);
    ++i;
  });
  return out;
}

// Random weights with norm gains ~N(1, 0.2) and a larger init than the default, so attention and
// pooling softmaxes are far from uniform and every gradient is non-trivial.
mc::GistNetWeights<float> make_weights(const mc::GistNetOptions& o, std::uint64_t salt) {
  auto w = mc::GistNetWeights<float>::random(o, mc::test::base_seed() + salt);
  auto gen = mc::test::rng(salt + 1);
  std::normal_distribution<float> gain(1.0f, 0.2f);
  w.for_each_parameter([&](const std::string& name, float* p, Eigen::Index size) {
    if (name.find("norm") != std::string::npos)
      for (Eigen::Index i = 0; i < size; ++i) p[i] = gain(gen);
  });
  return w;
}

std::vector<float> normal_vector(std::size_t n, std::uint64_t salt) {
  auto gen = mc::test::rng(salt);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = nd(gen);
  return v;
}

mc::GistNetOptions default_options() {
  mc::GistNetOptions o;  // d 256, 2 layers, 4 heads, d_attn 128, d_ff 128, kMeanMlp, d_pool 64
  o.init_std = 0.08;
  return o;
}

mc::GistNetOptions awkward_options() {
  mc::GistNetOptions o;
  o.d_model = 48;
  o.n_layers = 2;
  o.n_heads = 3;
  o.d_attn = 48;
  o.d_ff = 40;
  o.pooling = mc::GistPooling::kQuery;
  o.num_weight_sets = 2;
  o.rope_base = 50.0;
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

template <class C>
void check_parity(const mc::GistNetOptions& o, int lod, std::int64_t n, GemmMath math,
                  LaunchMode mode, const mc::test::Stream& stream, bool check_accumulate) {
  using Cd = mc::Config<C::K, C::Depth, double>;
  constexpr std::int64_t K = C::K;
  const std::int64_t d = o.d_model;
  INFO("K = ", K, " d = ", d, " pooling = ", static_cast<int>(o.pooling), " lod = ", lod,
       " n = ", n, " math = ", mc::cuda::to_string(math), " launch = ", mc::test::to_string(mode),
       " ", mc::test::seed_info());
  const std::uint64_t salt = static_cast<std::uint64_t>(n * 1009 + K * 31 + d + lod);
  const mc::GistNetWeights<float> wf = make_weights(o, salt);
  const std::vector<float> in = normal_vector(static_cast<std::size_t>(n * K * d), salt + 2);
  const std::vector<float> dg = normal_vector(static_cast<std::size_t>(n * d), salt + 3);

  // fp64 reference on the same (fp32) weights and inputs.
  mc::GistNet<Cd> ref(o, cast_weights<double>(o, wf));
  const std::vector<double> in_d(in.begin(), in.end()), dg_d(dg.begin(), dg.end());
  std::vector<double> gists_ref(static_cast<std::size_t>(n * d));
  std::vector<double> dinputs_ref(static_cast<std::size_t>(n * K * d));
  ref.forward(lod, in_d.data(), n, gists_ref.data());
  auto grads_ref = mc::GistNetWeights<double>::zeros(o);
  ref.backward(dg_d.data(), n, dinputs_ref.data(), &grads_ref);

  mc::cuda::DeviceGistNetOptions dev;
  dev.max_blocks = 33;
  dev.math = math;
  mc::cuda::DeviceGistNet<C> net(o, wf, dev);
  GuardedBuffer<float> d_in(in.size()), d_gists(gists_ref.size()), d_dg(dg.size()),
      d_dinputs(in.size());
  d_in.upload(in);
  d_dg.upload(dg);
  d_gists.poison();
  d_dinputs.poison();
  MC_CUDA_TRY(cudaMemset(net.d_gradients(), 0xFF, static_cast<std::size_t>(net.num_flat()) * 4));
  MC_CUDA_TRY(net.zero_gradients());  // unused sets must stay exactly zero after this
  MC_CUDA_TRY(cudaDeviceSynchronize());
  mc::test::launch(mode, stream, [&](cudaStream_t s) {
    MC_CUDA_RETURN_IF_ERROR(net.forward(lod, d_in.data(), n, d_gists.data(), s));
    return net.backward(d_dg.data(), n, d_dinputs.data(), false, s);
  });
  CHECK(d_in.guards_intact());
  CHECK(d_gists.guards_intact());
  CHECK(d_dinputs.guards_intact());
  check_close("gists", d_gists.download(), gists_ref, math);
  check_close("dL/dinputs", d_dinputs.download(), dinputs_ref, math);

  const std::string used = "sets." + std::to_string(net.weight_set(lod)) + ".";
  auto gpu_t = tensors(net.download_gradients());
  const auto ref_t = tensors(grads_ref);
  REQUIRE(gpu_t.size() == ref_t.size());
  for (std::size_t i = 0; i < ref_t.size(); ++i) {
    const auto& [name, r] = ref_t[i];
    std::vector<float> g(gpu_t[i].second.begin(), gpu_t[i].second.end());
    if (name.rfind(used, 0) != 0) {  // a set this level does not use: untouched, exactly zero
      INFO(name);
      CHECK(std::all_of(g.begin(), g.end(), [](float v) { return v == 0.0f; }));
      continue;
    }
    check_close("dL/d" + name, g, r, math);
  }

  if (check_accumulate) {
    MC_CUDA_TRY(net.backward(d_dg.data(), n, nullptr, true, stream.get()));
    stream.sync();
    gpu_t = tensors(net.download_gradients());
    for (std::size_t i = 0; i < ref_t.size(); ++i) {
      const auto& [name, r] = ref_t[i];
      if (name.rfind(used, 0) != 0) continue;
      std::vector<double> twice(r);
      for (double& v : twice) v *= 2.0;
      check_close("accumulated dL/d" + name,
                  std::vector<float>(gpu_t[i].second.begin(), gpu_t[i].second.end()), twice, math);
    }
  }
}

}  // namespace

TEST_CASE("cuda gist_net: default configuration matches the fp64 CPU GistNet, every gradient") {
  const mc::test::Stream stream;
  int i = 0;
  for (const GemmMath math : {GemmMath::kFp32, GemmMath::kTf32})
    for (const std::int64_t n : {std::int64_t{1}, std::int64_t{7}, std::int64_t{33}})
      check_parity<mc::Config<32, 3>>(default_options(), 1, n, math,
                                      mc::test::kLaunchModes[i++ % 2], stream, n == 7);
}

TEST_CASE("cuda gist_net: kQuery pooling, per-level weight sets, K 8, d_head 16 match the CPU") {
  const mc::test::Stream stream;
  int i = 0;
  for (const GemmMath math : {GemmMath::kFp32, GemmMath::kTf32})
    for (const std::int64_t n : {std::int64_t{1}, std::int64_t{7}, std::int64_t{33}})
      for (const int lod : {1, 2})
        check_parity<mc::Config<8, 2>>(awkward_options(), lod, n, math,
                                       mc::test::kLaunchModes[i++ % 2], stream, n == 33);
}

TEST_CASE("cuda gist_net: inference mode (no activations kept) gives the training mode's gists") {
  using C = mc::Config<32, 3>;
  const mc::GistNetOptions o = default_options();
  const std::int64_t n = 29, d = o.d_model;
  const auto w = make_weights(o, 77);
  const std::vector<float> in = normal_vector(static_cast<std::size_t>(n * C::K * d), 78);
  mc::cuda::DeviceGistNetOptions train_dev, infer_dev;
  train_dev.max_blocks = infer_dev.max_blocks = n;
  train_dev.math = infer_dev.math = GemmMath::kFp32;  // equal up to fp32 summation order
  infer_dev.training = false;
  mc::cuda::DeviceGistNet<C> train(o, w, train_dev), infer(o, w, infer_dev);
  CHECK(infer.device_bytes() < train.device_bytes());
  CHECK(mc::cuda::DeviceGistNet<C>::device_bytes(o, infer_dev) == infer.device_bytes());
  GuardedBuffer<float> d_in(in.size()), a(static_cast<std::size_t>(n * d)),
      b(static_cast<std::size_t>(n * d));
  d_in.upload(in);
  a.poison();
  b.poison();
  MC_CUDA_TRY(train.forward(1, d_in.data(), n, a.data()));
  MC_CUDA_TRY(infer.forward(1, d_in.data(), n, b.data()));
  MC_CUDA_TRY(cudaDeviceSynchronize());
  const std::vector<float> ga = a.download();
  const auto cmp = mc::test::compare_close(b.download(), std::vector<double>(ga.begin(), ga.end()),
                                           1e-5, 1e-4, 1e-10);
  CHECK_MESSAGE(cmp.ok, cmp.report);
  CHECK(d_in.download() == in);  // the input is read, never written
  CHECK_THROWS_WITH_AS(infer.backward(a.data(), n, nullptr), doctest::Contains("training = true"),
                       mc::Error);
}

TEST_CASE("cuda gist_net: GistNetLevels builds every level like the CPU Tree with GistNetGister") {
  using C = mc::Config<8, 3>;
  static_assert(mc::cuda::LevelPooler<mc::cuda::GistNetLevels<C>>);
  mc::GistNetOptions o = awkward_options();
  o.pooling = mc::GistPooling::kMeanMlp;
  o.num_weight_sets = 3;
  const std::int64_t d = o.d_model, vocab = 53;
  const std::int64_t num_tokens = 8 * 8 * 8 * 2 + 8 * 8 * 3 + 8 * 5 + 3;  // a tail at every level
  auto embedder = mc::MeanPoolGister<C>::random(vocab, d, mc::test::base_seed() + 90);
  mc::GistNet<C> cpu_net(o, make_weights(o, 91));
  mc::GistNetGister<C, mc::MeanPoolGister<C>> gister(embedder, cpu_net);
  auto gen = mc::test::rng(92);
  std::vector<mc::TokenId> ids(static_cast<std::size_t>(num_tokens));
  for (auto& id : ids) id = static_cast<mc::TokenId>(gen() % vocab);
  mc::MemoryTree<C> tree(d);
  for (std::int64_t at = 0; at < num_tokens;) {  // uneven appends, as a session does
    const std::int64_t piece = std::min<std::int64_t>(num_tokens - at, 1 + gen() % 150);
    tree.append(std::span<const mc::TokenId>(ids.data() + at, static_cast<std::size_t>(piece)),
                gister);
    at += piece;
  }
  const mc::cuda::TreeGistLayout<C> layout(num_tokens);
  mc::cuda::DeviceGistNetOptions dev;
  dev.max_blocks = layout.level_size(1);
  dev.training = false;
  dev.math = GemmMath::kFp32;
  mc::cuda::DeviceGistNet<C> net(o, cpu_net.weights(), dev);
  const mc::test::Stream stream;
  GuardedBuffer<mc::TokenId> d_ids(ids.size());
  GuardedBuffer<float> d_table(static_cast<std::size_t>(vocab * d));
  GuardedBuffer<float> d_emb(static_cast<std::size_t>(num_tokens * d));
  GuardedBuffer<float> d_gists(static_cast<std::size_t>(layout.total_rows() * d));
  GuardedBuffer<int> d_error(1);
  d_ids.upload(ids);
  const auto& table = embedder.table();
  d_table.upload(std::vector<float>(table.data(), table.data() + table.size()));
  d_gists.poison();
  d_error.upload({0});
  for (const LaunchMode mode : mc::test::kLaunchModes) {
    INFO("launch = ", mc::test::to_string(mode), " ", mc::test::seed_info());
    mc::test::launch(mode, stream, [&](cudaStream_t s) {
      MC_CUDA_RETURN_IF_ERROR(mc::cuda::embed_tokens(d_ids.data(), num_tokens, d_table.data(),
                                                     vocab, d, d_emb.data(), d_error.data(), s));
      return mc::cuda::build_tree_gists<C>(d_emb.data(), num_tokens, d, d_gists.data(),
                                           mc::cuda::GistNetLevels<C>{&net}, s);
    });
    CHECK(d_error.download()[0] == 0);
    CHECK(d_gists.guards_intact());
    const std::vector<float> gpu = d_gists.download();
    for (int l = 1; l <= C::Depth; ++l) {
      const std::int64_t rows = layout.level_size(l);
      REQUIRE(rows == tree.level_size(l));
      REQUIRE(rows > 0);
      INFO("level ", l, " (", rows, " gists)");
      const auto ref = tree.gists(l, 0, rows);
      const auto first = gpu.begin() + layout.row_offset(l) * d;
      check_close("tree level", std::vector<float>(first, first + rows * d),
                  std::vector<double>(ref.data(), ref.data() + ref.size()), GemmMath::kFp32);
    }
  }
}
