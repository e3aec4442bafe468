// SPDX-License-Identifier: Apache-2.0
// Weight initialisation shared by the reference networks (decoder, GistNet, LensNet): one seeded
// normal stream over the tensors in for_each_parameter order, with a per-tensor rule saying
// whether a tensor starts at a constant (norm gains, biases) or with normal draws of some std.
#pragma once

#include <cmath>
#include <cstdint>
#include <random>
#include <string>

#include "megacontext/detail/eigen.hpp"

namespace mc::reference {

/// How one tensor starts: every entry `value` (constant), or normal draws with std `value`.
struct InitRule {
  bool constant = false;  ///< true: all entries = value; false: value is the normal std
  double value = 0.0;     ///< the constant, or the standard deviation
};

/// GPT-2's std for the residual projections (attention output, MLP down): init_std/√(2·layers).
inline double residual_std(double init_std, std::int64_t n_layers) {
  return init_std / std::sqrt(2.0 * static_cast<double>(n_layers));
}

/// Fills every tensor of `w` (anything with for_each_parameter(f(name, data, size))) from `seed`
/// as `rule(name)` says. Constant tensors draw nothing from the stream.
template <class Scalar, class P, class Rule>
void init_parameters(P& w, std::uint64_t seed, Rule&& rule) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  w.for_each_parameter([&](const std::string& name, Scalar* p, Eigen::Index size) {
    const InitRule r = rule(name);
    for (Eigen::Index i = 0; i < size; ++i)
      p[i] = static_cast<Scalar>(r.constant ? r.value : r.value * normal(rng));
  });
}

}  // namespace mc::reference
