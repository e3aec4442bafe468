// SPDX-License-Identifier: Apache-2.0
// Failtest: training GistNet needs gradients through the frozen model, so a model without
// backward_inputs() must stop the build of a training entry point with a sentence saying so.
// The control adds backward_inputs().
#include <megacontext/model.hpp>

#include <cstdint>

struct Model {
  using Scalar = float;
  mc::ModelDims dims() const { return {4, 10}; }
  std::int64_t dim() const { return 4; }
  void embed(const mc::TokenId*, std::int64_t, float*) const {}
  void forward(const float*, const mc::GaussianPosition*, std::int64_t, const std::uint8_t*,
               float*) {}
#ifndef MC_FAILTEST_SHOULD_FAIL
  void backward_inputs(const float*, std::int64_t, float*) {}
#endif
};

int main() {
  mc::expect_trainable_model<Model>();
  return 0;
}
