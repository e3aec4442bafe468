// SPDX-License-Identifier: Apache-2.0
// Multi-head attention of the reference decoder (reference/llama.hpp) with Gaussian RoPE on q and
// k, as an llm.c-style forward/backward pair over explicit buffers, plus a one-row decode step
// over a KV cache. The mask is causal by row order unless an explicit [n, n] mask is given (a
// pyramid mask, for instance). Derivation of the backward: docs/concepts/reference_llama.md.
#pragma once

#include "megacontext/detail/eigen.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "megacontext/error.hpp"
#include "megacontext/gaussian_rope.hpp"
#include "megacontext/gister.hpp"

namespace mc::reference {

/// Projection weights of one attention layer, each [d, d] and applied on the right: q = x · wq;
/// head h owns columns [h·d_head, (h+1)·d_head) of q, k, v and rows of the same range of wo.
template <class Scalar>
struct AttentionWeights {
  RowMatrix<Scalar> wq;  ///< [d, d] query projection
  RowMatrix<Scalar> wk;  ///< [d, d] key projection
  RowMatrix<Scalar> wv;  ///< [d, d] value projection
  RowMatrix<Scalar> wo;  ///< [d, d] output projection
};

/// Activations an attention forward keeps for its backward.
template <class Scalar>
struct AttentionCache {
  RowMatrix<Scalar> q;                   ///< [n, d] queries after Gaussian RoPE
  RowMatrix<Scalar> k;                   ///< [n, d] keys after Gaussian RoPE
  RowMatrix<Scalar> v;                   ///< [n, d] values
  std::vector<RowMatrix<Scalar>> probs;  ///< n_heads x [n, n] softmax weights, row = query
  RowMatrix<Scalar> o;                   ///< [n, d] concatenated head outputs (before wo)
};

/// Whether query row i may attend key column j: mask[i·n + j] != 0, or j <= i when mask is null.
inline bool attention_allowed(const std::uint8_t* mask, std::int64_t n, std::int64_t i,
                              std::int64_t j) {
  return mask == nullptr ? j <= i : mask[i * n + j] != 0;
}

/// Throws mc::Error ([mc.attention.empty_mask_row]) when a query row of the dense mask [n, n]
/// may attend no key (its softmax would be undefined); a null mask (causal) always passes.
inline void check_attention_mask(const std::uint8_t* mask, std::int64_t n) {
  if (mask == nullptr) return;
  for (std::int64_t i = 0; i < n; ++i) {
    bool any = false;
    for (std::int64_t j = 0; j < n && !any; ++j) any = mask[i * n + j] != 0;
    MC_EXPECTS(any, Errc::kInvalidArgument, "[mc.attention.empty_mask_row] mask row ", i,
               " allows no key; every query must see at least one key (usually itself)");
  }
}

/// y [n, d] = attention(x [n, d]) · wo with `n_heads` heads of d_head = table.d_head, q and k
/// rotated by `table` (n rows, from the rows' (t, σ)), scores scaled by 1/√d_head and masked by
/// `mask` [n, n] (nullptr: causal by row order). Fills `cache` for attention_backward.
template <class Scalar>
void attention_forward(const RowMatrix<Scalar>& x, const AttentionWeights<Scalar>& w, int n_heads,
                       const GaussianRopeTable& table, const std::uint8_t* mask,
                       RowMatrix<Scalar>& y, AttentionCache<Scalar>& cache) {
  const Eigen::Index n = x.rows(), d = x.cols();
  const int dh = table.d_head;
  MC_EXPECTS(n_heads >= 1 && static_cast<Eigen::Index>(n_heads) * dh == d && table.rows() == n &&
                 w.wq.rows() == d && w.wq.cols() == d,
             Errc::kInvalidArgument, "[mc.attention.bad_shape] x ", n, " x ", d,
             ", n_heads = ", n_heads, ", d_head = ", dh, ", table rows = ", table.rows(),
             "; need n_heads * d_head == d and one table row per x row");
  cache.q.noalias() = x * w.wq;
  cache.k.noalias() = x * w.wk;
  cache.v.noalias() = x * w.wv;
  apply_gaussian_rope(cache.q, n_heads, table);
  apply_gaussian_rope(cache.k, n_heads, table);
  cache.o.resize(n, d);
  cache.probs.resize(static_cast<std::size_t>(n_heads));
  const Scalar scale = Scalar(1) / std::sqrt(static_cast<Scalar>(dh));
  for (int h = 0; h < n_heads; ++h) {
    RowMatrix<Scalar>& p = cache.probs[static_cast<std::size_t>(h)];
    p.noalias() = (cache.q.middleCols(h * dh, dh) * cache.k.middleCols(h * dh, dh).transpose());
    p *= scale;
    for (Eigen::Index i = 0; i < n; ++i) {
      Scalar mx = -std::numeric_limits<Scalar>::infinity();
      for (Eigen::Index j = 0; j < n; ++j)
        if (attention_allowed(mask, n, i, j)) mx = std::max(mx, p(i, j));
      Scalar sum = 0;
      for (Eigen::Index j = 0; j < n; ++j) {
        // Masked keys get exactly 0, so they receive no gradient either.
        p(i, j) = attention_allowed(mask, n, i, j) ? std::exp(p(i, j) - mx) : Scalar(0);
        sum += p(i, j);
      }
      p.row(i) /= sum;
    }
    cache.o.middleCols(h * dh, dh).noalias() = p * cache.v.middleCols(h * dh, dh);
  }
  y.noalias() = cache.o * w.wo;
}

/// Adds dL/dx [n, d] to `dx` and, when `dw` is not null, dL/dW to each of `*dw`'s matrices,
/// given dy [n, d], the forward's x, weights, table and cache. The RoPE rotation is orthogonal
/// up to its damping, so its transpose is the same rotation with sin negated (t → −t).
template <class Scalar>
void attention_backward(const RowMatrix<Scalar>& dy, const RowMatrix<Scalar>& x,
                        const AttentionWeights<Scalar>& w, int n_heads,
                        const GaussianRopeTable& table, const AttentionCache<Scalar>& cache,
                        RowMatrix<Scalar>& dx, AttentionWeights<Scalar>* dw) {
  const Eigen::Index n = x.rows(), d = x.cols();
  const int dh = table.d_head;
  MC_EXPECTS(dy.rows() == n && dy.cols() == d && dx.rows() == n && dx.cols() == d &&
                 cache.o.rows() == n && cache.probs.size() == static_cast<std::size_t>(n_heads),
             Errc::kInvalidArgument, "[mc.attention.bad_shape] dy ", dy.rows(), " x ", dy.cols(),
             ", dx ", dx.rows(), " x ", dx.cols(), ", cache rows ", cache.o.rows(),
             "; all must match the forward's x ", n, " x ", d);
  const Scalar scale = Scalar(1) / std::sqrt(static_cast<Scalar>(dh));
  if (dw != nullptr) dw->wo.noalias() += cache.o.transpose() * dy;
  const RowMatrix<Scalar> d_o = dy * w.wo.transpose();
  RowMatrix<Scalar> dq(n, d), dk(n, d), dv(n, d);
  RowMatrix<Scalar> dp(n, n);
  for (int h = 0; h < n_heads; ++h) {
    const RowMatrix<Scalar>& p = cache.probs[static_cast<std::size_t>(h)];
    const auto doh = d_o.middleCols(h * dh, dh);
    dv.middleCols(h * dh, dh).noalias() = p.transpose() * doh;
    dp.noalias() = doh * cache.v.middleCols(h * dh, dh).transpose();
    // Softmax backward: ds_ij = p_ij (dp_ij − Σ_k p_ik dp_ik); masked p_ij = 0 stay 0.
    for (Eigen::Index i = 0; i < n; ++i) {
      const Scalar dot = p.row(i).dot(dp.row(i));
      dp.row(i) = (p.row(i).array() * (dp.row(i).array() - dot)).matrix();
    }
    dp *= scale;
    dq.middleCols(h * dh, dh).noalias() = dp * cache.k.middleCols(h * dh, dh);
    dk.middleCols(h * dh, dh).noalias() = dp.transpose() * cache.q.middleCols(h * dh, dh);
  }
  GaussianRopeTable transposed = table;
  transposed.sin = -transposed.sin;
  apply_gaussian_rope(dq, n_heads, transposed);
  apply_gaussian_rope(dk, n_heads, transposed);
  if (dw != nullptr) {
    dw->wq.noalias() += x.transpose() * dq;
    dw->wk.noalias() += x.transpose() * dk;
    dw->wv.noalias() += x.transpose() * dv;
  }
  dx.noalias() += dq * w.wq.transpose();
  dx.noalias() += dk * w.wk.transpose();
  dx.noalias() += dv * w.wv.transpose();
}

/// One query row against a KV cache: appends the rotated key and the value of `x` [1, d] as row
/// `num_cached` of `k_cache` / `v_cache` ([capacity, d]), then writes y [1, d], the attention of
/// x over rows [0, num_cached] (all earlier rows and itself) times wo. `table` has one row (x's).
template <class Scalar>
void attention_decode(const RowMatrix<Scalar>& x, const AttentionWeights<Scalar>& w, int n_heads,
                      const GaussianRopeTable& table, RowMatrix<Scalar>& k_cache,
                      RowMatrix<Scalar>& v_cache, Eigen::Index num_cached, RowMatrix<Scalar>& y) {
  const Eigen::Index d = x.cols();
  const int dh = table.d_head;
  MC_EXPECTS(x.rows() == 1 && table.rows() == 1 && num_cached >= 0 && num_cached < k_cache.rows() &&
                 k_cache.cols() == d && v_cache.rows() == k_cache.rows() && v_cache.cols() == d,
             Errc::kInvalidArgument, "[mc.attention.bad_shape] decode of x ", x.rows(), " x ", d,
             " at cache row ", num_cached, " of ", k_cache.rows());
  RowMatrix<Scalar> q = x * w.wq;
  RowMatrix<Scalar> k = x * w.wk;
  apply_gaussian_rope(q, n_heads, table);
  apply_gaussian_rope(k, n_heads, table);
  k_cache.row(num_cached) = k.row(0);
  v_cache.row(num_cached).noalias() = x * w.wv;
  const Eigen::Index m = num_cached + 1;
  const Scalar scale = Scalar(1) / std::sqrt(static_cast<Scalar>(dh));
  RowMatrix<Scalar> o(1, d);
  for (int h = 0; h < n_heads; ++h) {
    RowMatrix<Scalar> s =
        q.middleCols(h * dh, dh) * k_cache.topRows(m).middleCols(h * dh, dh).transpose();
    s *= scale;
    const Scalar mx = s.maxCoeff();
    s = (s.array() - mx).exp().matrix();
    s /= s.sum();
    o.middleCols(h * dh, dh).noalias() = s * v_cache.topRows(m).middleCols(h * dh, dh);
  }
  y.noalias() = o * w.wo;
}

}  // namespace mc::reference
