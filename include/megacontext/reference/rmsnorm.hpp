// SPDX-License-Identifier: Apache-2.0
// RMSNorm of the reference decoder (reference/llama.hpp), as an llm.c-style forward/backward pair
// over explicit buffers: y = x · r · w with r = 1/√(mean(x²) + eps) per row. The forward keeps r
// (one per row) for the backward. Derivation: docs/concepts/reference_llama.md.
#pragma once

#include "megacontext/detail/eigen.hpp"

#include <cmath>

#include "megacontext/error.hpp"
#include "megacontext/gister.hpp"

namespace mc::reference {

/// A column vector of Scalar (norm gains, per-row statistics).
template <class Scalar>
using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;

/// y [n, d] = x [n, d] · rstd · w [d], row-wise; writes rstd [n] = 1/√(mean_j x_ij² + eps).
template <class Scalar>
void rmsnorm_forward(const RowMatrix<Scalar>& x, const Vector<Scalar>& w, double eps,
                     RowMatrix<Scalar>& y, Vector<Scalar>& rstd) {
  MC_EXPECTS(w.size() == x.cols(), Errc::kInvalidArgument, "[mc.rmsnorm.bad_shape] x has ",
             x.cols(), " columns, the gain w has ", w.size(), " entries");
  MC_EXPECTS(eps > 0.0, Errc::kInvalidArgument, "[mc.rmsnorm.bad_eps] eps = ", eps,
             "; must be > 0");
  const auto n = x.rows();
  const auto d = static_cast<double>(x.cols());
  y.resize(n, x.cols());
  rstd.resize(n);
  for (Eigen::Index i = 0; i < n; ++i) {
    const double ms = static_cast<double>(x.row(i).squaredNorm()) / d;
    rstd[i] = static_cast<Scalar>(1.0 / std::sqrt(ms + eps));
    y.row(i) = (x.row(i) * rstd[i]).cwiseProduct(w.transpose());
  }
}

/// Adds dL/dx [n, d] to `dx` and, when `dw` is not null, dL/dw [d] to `*dw`, given dy [n, d]
/// and the forward's x, w and rstd. With g = dy ∘ w: dx = r·g − x · r³ · (g·x)/d.
template <class Scalar>
void rmsnorm_backward(const RowMatrix<Scalar>& dy, const RowMatrix<Scalar>& x,
                      const Vector<Scalar>& w, const Vector<Scalar>& rstd, RowMatrix<Scalar>& dx,
                      Vector<Scalar>* dw) {
  MC_EXPECTS(dy.rows() == x.rows() && dy.cols() == x.cols() && dx.rows() == x.rows() &&
                 dx.cols() == x.cols() && rstd.size() == x.rows() && w.size() == x.cols() &&
                 (dw == nullptr || dw->size() == w.size()),
             Errc::kInvalidArgument, "[mc.rmsnorm.bad_shape] dy ", dy.rows(), " x ", dy.cols(),
             ", x ", x.rows(), " x ", x.cols(), ", dx ", dx.rows(), " x ", dx.cols(), ", rstd ",
             rstd.size(), ", w ", w.size(), "; all must agree with x");
  const Scalar inv_d = Scalar(1) / static_cast<Scalar>(x.cols());
  for (Eigen::Index i = 0; i < x.rows(); ++i) {
    const Scalar r = rstd[i];
    const auto g = dy.row(i).cwiseProduct(w.transpose());
    const Scalar gx = g.dot(x.row(i));
    dx.row(i) += r * g - x.row(i) * (r * r * r * gx * inv_d);
    if (dw != nullptr) *dw += (dy.row(i).cwiseProduct(x.row(i)) * r).transpose();
  }
}

}  // namespace mc::reference
