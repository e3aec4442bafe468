// SPDX-License-Identifier: Apache-2.0
// What training code needs from a set of parameters (model weights, their gradients, optimizer
// moments): `for_each_parameter(f)` calling f(name, data, size) for every tensor in a fixed
// order. The reference decoder's LlamaWeights, GistNet and LensNet weights all satisfy it, so one
// optimizer, one clipper and one checkpoint format serve every trainable part.
#pragma once

#include <concepts>
#include <cstdint>
#include <string>

#include "megacontext/detail/eigen.hpp"

namespace mc::train {

namespace detail {
/// The callback shape for_each_parameter must accept. A named type, not a lambda in the
/// requires-expression: nvcc 13 rejects lambdas in concept checks, and the training headers are
/// included from .cu files too.
template <class Scalar>
struct ParameterVisitor {
  void operator()(const std::string&, Scalar*, Eigen::Index) const {}
};
}  // namespace detail

/// A visitor over named flat parameter tensors of element type Scalar.
template <class P, class Scalar>
concept ParameterSet = requires(P& p, detail::ParameterVisitor<Scalar> visit) {
  p.for_each_parameter(visit);
};

/// Number of scalars in a parameter set.
template <class Scalar, ParameterSet<Scalar> P>
std::int64_t num_parameters(P& p) {
  std::int64_t n = 0;
  p.for_each_parameter([&](const std::string&, Scalar*, Eigen::Index size) { n += size; });
  return n;
}

}  // namespace mc::train
