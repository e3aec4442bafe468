// SPDX-License-Identifier: Apache-2.0
// SwiGLU MLP of the reference decoder (reference/llama.hpp), as an llm.c-style forward/backward
// pair over explicit buffers: y = (silu(x·w1) ∘ (x·w3)) · w2, silu(a) = a·sigmoid(a).
// Derivation of the backward: docs/concepts/reference_llama.md.
#pragma once

#include "megacontext/detail/eigen.hpp"

#include <cmath>

#include "megacontext/error.hpp"
#include "megacontext/gister.hpp"

namespace mc::reference {

/// Weights of one SwiGLU MLP, applied on the right of row vectors.
template <class Scalar>
struct SwiGluWeights {
  RowMatrix<Scalar> w1;  ///< [d, d_ff] gate projection (through silu)
  RowMatrix<Scalar> w3;  ///< [d, d_ff] up projection
  RowMatrix<Scalar> w2;  ///< [d_ff, d] down projection
};

/// Activations a SwiGLU forward keeps for its backward.
template <class Scalar>
struct SwiGluCache {
  RowMatrix<Scalar> a;  ///< [n, d_ff] x·w1
  RowMatrix<Scalar> b;  ///< [n, d_ff] x·w3
  RowMatrix<Scalar> g;  ///< [n, d_ff] silu(a) ∘ b
};

/// sigmoid(a) = 1/(1 + e^{−a}).
template <class Scalar>
Scalar sigmoid(Scalar a) {
  return Scalar(1) / (Scalar(1) + std::exp(-a));
}

/// y [n, d] = (silu(x·w1) ∘ (x·w3)) · w2 for x [n, d]; fills `cache` for swiglu_backward.
template <class Scalar>
void swiglu_forward(const RowMatrix<Scalar>& x, const SwiGluWeights<Scalar>& w,
                    RowMatrix<Scalar>& y, SwiGluCache<Scalar>& cache) {
  MC_EXPECTS(w.w1.rows() == x.cols() && w.w3.rows() == x.cols() && w.w2.cols() == x.cols() &&
                 w.w1.cols() == w.w3.cols() && w.w2.rows() == w.w1.cols(),
             Errc::kInvalidArgument, "[mc.swiglu.bad_shape] x has ", x.cols(), " columns; w1 ",
             w.w1.rows(), " x ", w.w1.cols(), ", w3 ", w.w3.rows(), " x ", w.w3.cols(), ", w2 ",
             w.w2.rows(), " x ", w.w2.cols());
  cache.a.noalias() = x * w.w1;
  cache.b.noalias() = x * w.w3;
  cache.g = cache.a.unaryExpr([](Scalar v) { return v * sigmoid(v); }).cwiseProduct(cache.b);
  y.noalias() = cache.g * w.w2;
}

/// Adds dL/dx [n, d] to `dx` and, when `dw` is not null, dL/dW to `*dw`'s matrices, given
/// dy [n, d] and the forward's x, weights and cache. silu'(a) = s·(1 + a·(1 − s)), s = sigmoid(a).
template <class Scalar>
void swiglu_backward(const RowMatrix<Scalar>& dy, const RowMatrix<Scalar>& x,
                     const SwiGluWeights<Scalar>& w, const SwiGluCache<Scalar>& cache,
                     RowMatrix<Scalar>& dx, SwiGluWeights<Scalar>* dw) {
  MC_EXPECTS(dy.rows() == x.rows() && dy.cols() == x.cols() && dx.rows() == x.rows() &&
                 dx.cols() == x.cols() && cache.g.rows() == x.rows(),
             Errc::kInvalidArgument, "[mc.swiglu.bad_shape] dy ", dy.rows(), " x ", dy.cols(),
             ", dx ", dx.rows(), " x ", dx.cols(), ", cache rows ", cache.g.rows(),
             "; all must match the forward's x ", x.rows(), " x ", x.cols());
  if (dw != nullptr) dw->w2.noalias() += cache.g.transpose() * dy;
  const RowMatrix<Scalar> dg = dy * w.w2.transpose();
  RowMatrix<Scalar> da(dg.rows(), dg.cols()), db(dg.rows(), dg.cols());
  for (Eigen::Index i = 0; i < dg.size(); ++i) {
    const Scalar a = cache.a.data()[i];
    const Scalar s = sigmoid(a);
    db.data()[i] = dg.data()[i] * a * s;
    da.data()[i] = dg.data()[i] * cache.b.data()[i] * s * (Scalar(1) + a * (Scalar(1) - s));
  }
  if (dw != nullptr) {
    dw->w1.noalias() += x.transpose() * da;
    dw->w3.noalias() += x.transpose() * db;
  }
  dx.noalias() += da * w.w1.transpose();
  dx.noalias() += db * w.w3.transpose();
}

}  // namespace mc::reference
