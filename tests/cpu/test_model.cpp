// SPDX-License-Identifier: Apache-2.0
// The BaseModel concept and model_traits: which model types satisfy it, which capabilities are
// detected (backward to the inputs, KV-cache decode), and ModelDims validation.
#include <doctest/doctest.h>

#include <megacontext/assemble.hpp>
#include <megacontext/model.hpp>

#include <cstdint>

namespace {

// The smallest model: the surface BaseModel asks for, nothing else.
struct MinimalModel {
  using Scalar = float;
  mc::ModelDims dims() const { return {4, 10}; }
  std::int64_t dim() const { return 4; }
  void embed(const mc::TokenId*, std::int64_t, float*) const {}
  void forward(const float*, const mc::GaussianPosition*, std::int64_t, const std::uint8_t*,
               float*) {}
};

// MinimalModel plus backward_inputs: a TrainableBaseModel.
struct TrainableModel : MinimalModel {
  void backward_inputs(const float*, std::int64_t, float*) const {}
};

// MinimalModel plus the KV-cache decode.
struct DecodingModel : MinimalModel {
  void begin_decode(std::int64_t) {}
  void decode_step(const float*, mc::GaussianPosition, float*) {}
};

// Lacks embed(): not a model.
struct NoEmbed {
  using Scalar = float;
  mc::ModelDims dims() const { return {4, 10}; }
  std::int64_t dim() const { return 4; }
  void forward(const float*, const mc::GaussianPosition*, std::int64_t, const std::uint8_t*,
               float*) {}
};

// forward() without positions: not a model (the working context's (t, σ) would be dropped).
struct NoPositions {
  using Scalar = float;
  mc::ModelDims dims() const { return {4, 10}; }
  std::int64_t dim() const { return 4; }
  void embed(const mc::TokenId*, std::int64_t, float*) const {}
  void forward(const float*, std::int64_t, float*) {}
};

// dims() returns the wrong type: not a model.
struct WrongDims {
  using Scalar = float;
  int dims() const { return 4; }
  std::int64_t dim() const { return 4; }
  void embed(const mc::TokenId*, std::int64_t, float*) const {}
  void forward(const float*, const mc::GaussianPosition*, std::int64_t, const std::uint8_t*,
               float*) {}
};

}  // namespace

TEST_CASE("model: the concept accepts the minimal surface and rejects a missing or wrong part") {
  static_assert(mc::BaseModel<MinimalModel>);
  static_assert(mc::TokenEmbedder<MinimalModel, float>);  // a model embeds for assemble()
  static_assert(!mc::BaseModel<NoEmbed>);
  static_assert(!mc::BaseModel<NoPositions>);
  static_assert(!mc::BaseModel<WrongDims>);
  static_assert(!mc::BaseModel<int>);
  mc::expect_base_model<MinimalModel>();
  mc::expect_trainable_model<TrainableModel>();
  CHECK(mc::BaseModel<MinimalModel>);
}

TEST_CASE("model: model_traits detects backward_inputs and the KV-cache decode separately") {
  static_assert(!mc::model_traits<MinimalModel>::has_backward);
  static_assert(!mc::model_traits<MinimalModel>::has_decode);
  static_assert(mc::model_traits<TrainableModel>::has_backward);
  static_assert(mc::TrainableBaseModel<TrainableModel>);
  static_assert(!mc::model_traits<TrainableModel>::has_decode);
  static_assert(mc::model_traits<DecodingModel>::has_decode);
  static_assert(!mc::model_traits<DecodingModel>::has_backward);
  CHECK(mc::model_traits<TrainableModel>::has_backward);
}

TEST_CASE("model: ModelDims::validate names the bad size") {
  CHECK_NOTHROW(mc::ModelDims{8, 100}.validate());
  CHECK_THROWS_WITH_AS(mc::ModelDims({0, 100}).validate(),
                       doctest::Contains("[mc.model.bad_dims] d_model = 0"), mc::Error);
  CHECK_THROWS_WITH_AS(mc::ModelDims({8, -1}).validate(),
                       doctest::Contains("[mc.model.bad_dims] n_vocab = -1"), mc::Error);
  CHECK(mc::ModelDims{8, 100} == mc::ModelDims{8, 100});
  CHECK(!(mc::ModelDims{8, 100} == mc::ModelDims{8, 101}));
}
