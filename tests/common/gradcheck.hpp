// SPDX-License-Identifier: Apache-2.0
// The finite-difference gradient check every backward pass is tested with (STYLE §5.9): the
// five-point central difference of a scalar loss at listed parameters, in fp64, against the
// analytic gradient, err_k = |g_k − fd_k| / max(|g_k|, |fd_k|, 1e-3·max|fd|): entries below 1e-3
// of the largest are compared in absolute terms, where round-off of the loss dominates.
#pragma once

#include <doctest/doctest.h>

#include <megacontext/detail/eigen.hpp>

#include <algorithm>
#include <cmath>
#include <functional>
#include <string>
#include <vector>

namespace mc::test {

/// Max err_k over `indices` of `params` (perturbed in place and restored) for `loss`; fails the
/// test when every difference is zero or an analytic entry is not finite. NaN propagates.
/// `abs_floor` compares gradients below it in absolute terms (for losses whose round-off swamps
/// tiny gradients, e.g. through a whole frozen model).
inline double grad_check(const std::string& what, const std::function<double()>& loss,
                         double* params, const double* analytic,
                         const std::vector<Eigen::Index>& indices, double eps = 1e-4,
                         double abs_floor = 0.0) {
  std::vector<double> fd(indices.size());
  double fd_max = 0.0;
  for (std::size_t k = 0; k < indices.size(); ++k) {
    double& p = params[indices[k]];
    const double saved = p;
    auto at = [&](double step) {
      p = saved + step;
      return loss();
    };
    // Fourth-order stencil: truncation O(eps⁴), so at eps = 1e-4 the round-off of the loss
    // (about 1e-16·|L|/eps) is the only error left.
    const double l2 = at(2.0 * eps), l1 = at(eps), m1 = at(-eps), m2 = at(-2.0 * eps);
    p = saved;
    fd[k] = (-l2 + 8.0 * l1 - 8.0 * m1 + m2) / (12.0 * eps);
    fd_max = std::max(fd_max, std::abs(fd[k]));
  }
  REQUIRE_MESSAGE(fd_max > 0.0, what, ": every finite difference is zero");
  double worst = 0.0;
  for (std::size_t k = 0; k < indices.size(); ++k) {
    const double g = analytic[indices[k]];
    REQUIRE_MESSAGE(std::isfinite(g), what, ": analytic gradient is not finite at ", indices[k]);
    const double den = std::max({std::abs(g), std::abs(fd[k]), 1e-3 * fd_max, abs_floor});
    const double err = std::abs(g - fd[k]) / den;
    if (!(err <= worst)) worst = err;  // NaN makes worst NaN, which then fails the bound
  }
  MESSAGE(what, ": max relative error ", worst, " over ", indices.size(), " entries");
  return worst;
}

/// Max over entries of |a − b| / max(|a|, |b|, 1e-3·max|a|) (NaN-propagating): entries far below
/// the tensor's scale are compared in absolute terms, as a value near 0 has no relative precision.
inline double max_rel_diff(const Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>& a,
                           const Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>& b) {
  REQUIRE(a.rows() == b.rows());
  REQUIRE(a.cols() == b.cols());
  const double floor = 1e-3 * a.cwiseAbs().maxCoeff();
  double worst = 0.0;
  for (Eigen::Index i = 0; i < a.size(); ++i) {
    const double x = a.data()[i], y = b.data()[i];
    const double e = std::abs(x - y) / std::max({std::abs(x), std::abs(y), floor, 1e-300});
    if (!(e <= worst)) worst = e;
  }
  return worst;
}

}  // namespace mc::test
