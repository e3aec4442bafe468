// SPDX-License-Identifier: Apache-2.0
// Model files: save_llama / load_llama round-trip the options and the weights (exactly in F32,
// within the rounding bound in BF16/F16), and a missing, foreign or mismatched file gives a
// tagged error instead of a model.
#include <doctest/doctest.h>

#include <megacontext/reference/llama_io.hpp>

#include <filesystem>
#include <string>

#include "common/tree_fixtures.hpp"

namespace {

mc::reference::LlamaOptions opts() {
  mc::reference::LlamaOptions o;
  o.d_model = 16;
  o.n_layers = 2;
  o.n_heads = 2;
  o.d_ff = 24;
  o.n_vocab = 50;
  o.rope_base = 5000.5;
  o.norm_eps = 3e-6;
  return o;
}

double max_abs_diff(mc::reference::LlamaWeights<float>& a, mc::reference::LlamaWeights<float>& b,
                    double* max_abs = nullptr) {
  std::vector<std::pair<float*, Eigen::Index>> pa, pb;
  a.for_each_parameter([&](const std::string&, float* p, Eigen::Index n) { pa.emplace_back(p, n); });
  b.for_each_parameter([&](const std::string&, float* p, Eigen::Index n) { pb.emplace_back(p, n); });
  REQUIRE(pa.size() == pb.size());
  double diff = 0, mx = 0;
  for (std::size_t i = 0; i < pa.size(); ++i) {
    REQUIRE(pa[i].second == pb[i].second);
    for (Eigen::Index k = 0; k < pa[i].second; ++k) {
      diff = std::max(diff, static_cast<double>(std::abs(pa[i].first[k] - pb[i].first[k])));
      mx = std::max(mx, static_cast<double>(std::abs(pa[i].first[k])));
    }
  }
  if (max_abs) *max_abs = mx;
  return diff;
}

}  // namespace

TEST_CASE("llama_io: a saved model loads with the same options and weights") {
  mc::test::TempDir dir("llama_io");
  const auto model = mc::reference::LlamaModel<float>::random(opts(), 3);
  for (auto dtype : {mc::io::TensorDtype::kF32, mc::io::TensorDtype::kBF16, mc::io::TensorDtype::kF16}) {
    INFO(mc::io::to_string(dtype));
    const auto path = dir / "m.safetensors";
    mc::reference::save_llama(path, model, dtype, {{"note", "test"}});
    auto loaded = mc::reference::load_llama(path);
    CHECK(loaded.options().d_model == 16);
    CHECK(loaded.options().n_layers == 2);
    CHECK(loaded.options().d_ff == 24);
    CHECK(loaded.options().n_vocab == 50);
    CHECK(loaded.options().rope_base == 5000.5);
    CHECK(loaded.options().norm_eps == 3e-6);
    auto a = model.weights();
    double mx = 0;
    const double diff = max_abs_diff(a, loaded.weights(), &mx);
    // F32 is exact; BF16 keeps 8 significant bits (relative 2^-8), F16 11 (2^-11).
    const double bound = dtype == mc::io::TensorDtype::kF32 ? 0.0
                         : dtype == mc::io::TensorDtype::kBF16 ? mx * std::ldexp(1.0, -8)
                                                                : mx * std::ldexp(1.0, -11);
    CHECK(diff <= bound);
  }
}

TEST_CASE("llama_io: missing, foreign and mismatched files are refused") {
  mc::test::TempDir dir("llama_io_bad");
  CHECK_THROWS_WITH_AS(mc::reference::load_llama(dir / "nope.safetensors"),
                       doctest::Contains("[mc.llama.missing_file]"), mc::IoError);
  // A safetensors file without the options.
  mc::io::SafetensorsWriter w;
  const std::vector<float> x = {1, 2, 3};
  w.add("embedding", {3}, x);
  w.write(dir / "foreign.safetensors");
  CHECK_THROWS_WITH_AS(mc::reference::load_llama(dir / "foreign.safetensors"),
                       doctest::Contains("has no metadata entry \"d_model\""), mc::FormatError);
  // Options that do not match the tensors: a wider model's metadata on these weights.
  auto o = opts();
  const auto model = mc::reference::LlamaModel<float>::random(o, 4);
  mc::reference::save_llama(dir / "m.safetensors", model, mc::io::TensorDtype::kF32,
                            {{"d_ff", "32"}});
  CHECK_THROWS_WITH_AS(mc::reference::load_llama(dir / "m.safetensors"),
                       doctest::Contains("[mc.train.shape_mismatch]"), mc::Error);
  // A malformed number.
  mc::reference::save_llama(dir / "m.safetensors", model, mc::io::TensorDtype::kF32,
                            {{"n_layers", "2x"}});
  CHECK_THROWS_WITH_AS(mc::reference::load_llama(dir / "m.safetensors"),
                       doctest::Contains("\"n_layers\" = \"2x\" is not a number"), mc::FormatError);
}
