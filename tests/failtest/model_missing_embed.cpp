// SPDX-License-Identifier: Apache-2.0
// Failtest: a model without embed() is not an mc::BaseModel, and code that needs one must stop
// the build with the sentence from mc::expect_base_model. The control adds embed().
#include <megacontext/model.hpp>

#include <cstdint>

struct Model {
  using Scalar = float;
  mc::ModelDims dims() const { return {4, 10}; }
  std::int64_t dim() const { return 4; }
#ifndef MC_FAILTEST_SHOULD_FAIL
  void embed(const mc::TokenId*, std::int64_t, float*) const {}
#endif
  void forward(const float*, const mc::GaussianPosition*, std::int64_t, const std::uint8_t*,
               float*) {}
};

int main() {
  mc::expect_base_model<Model>();
  return 0;
}
