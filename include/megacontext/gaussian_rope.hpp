// SPDX-License-Identifier: Apache-2.0
// Gaussian RoPE: rotary position embedding for working-context entries that stand for a span of
// tokens. An entry at mean position t with positional spread σ is rotated by ω·t and each band is
// damped by exp(−½(σω)²), the expectation of e^{iωτ} for τ ~ N(t, σ²). WorkingContext gives each
// entry its span; this file turns spans into (t, σ) and rotates the model's q and k rows. The
// derivation and the conventions are in docs/concepts/gaussian_rope.md. The options, the position
// type and the maths shared with the CUDA kernel are in detail/gaussian_rope_math.hpp (Eigen-free,
// so device code can include them); this header is the one to include.
#pragma once

#include <cmath>
#include <cstdint>
#include <span>

#include "megacontext/detail/eigen.hpp"
#include "megacontext/detail/gaussian_rope_math.hpp"
#include "megacontext/detail/host_device.hpp"
#include "megacontext/error.hpp"
#include "megacontext/lod.hpp"

namespace mc {

// ---- Host API.

/// The (t, σ) of an entry covering tokens [span.begin, span.end) under `options`' policies.
inline GaussianPosition gaussian_position(TokenSpan span, const GaussianRopeOptions& options) {
  options.validate();
  MC_EXPECTS(span.begin >= 0 && span.size() >= 1, Errc::kInvalidArgument,
             "[mc.gaussian_rope.bad_span] span = [", span.begin, ", ", span.end,
             "); must have begin >= 0 and at least one token");
  return {span_position(span.begin, span.size(), options.position),
          span_sigma(span.size(), options.spread)};
}

/// Damped cos/sin tables of n entries: the RoPE tables of a plain transformer, each band
/// multiplied by exp(−½(σω)²). Row i belongs to entry i, column j to band j.
struct GaussianRopeTable {
  /// Row-major fp64 matrix [n, d_head/2].
  using Matrix = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

  int d_head = 0;  ///< head dim the table was built for
  Matrix cos;      ///< [n, d_head/2]: e^{−½(σ_i ω_j)²} cos(ω_j t_i)
  Matrix sin;      ///< [n, d_head/2]: e^{−½(σ_i ω_j)²} sin(ω_j t_i)

  /// Number of entries n.
  std::int64_t rows() const { return cos.rows(); }
};

/// Builds the tables for `n` entries at `positions` [n]; throws on a non-finite t or a σ that is
/// negative or not finite, naming the entry.
inline GaussianRopeTable gaussian_rope_table(const GaussianPosition* positions, std::int64_t n,
                                             const GaussianRopeOptions& options) {
  options.validate();
  MC_EXPECTS(n >= 0, Errc::kInvalidArgument, "[mc.gaussian_rope.bad_shape] n = ", n,
             "; must be >= 0");
  MC_EXPECTS(n == 0 || positions != nullptr, Errc::kInvalidArgument,
             "[mc.gaussian_rope.null_pointer] positions is null with n = ", n);
  const int bands = rope_num_bands(options.d_head);
  GaussianRopeTable table;
  table.d_head = options.d_head;
  table.cos.resize(n, bands);
  table.sin.resize(n, bands);
  Eigen::VectorXd omega(bands);
  for (int j = 0; j < bands; ++j) omega[j] = rope_frequency(j, options.d_head, options.base);
  for (std::int64_t i = 0; i < n; ++i) {
    const GaussianPosition p = positions[i];
    MC_EXPECTS(std::isfinite(p.t), Errc::kInvalidArgument, "[mc.gaussian_rope.bad_position] ",
               "positions[", i, "].t = ", p.t, "; must be finite");
    MC_EXPECTS(std::isfinite(p.sigma) && p.sigma >= 0.0, Errc::kInvalidArgument,
               "[mc.gaussian_rope.bad_sigma] positions[", i, "].sigma = ", p.sigma,
               "; must be finite and >= 0");
    for (int j = 0; j < bands; ++j) {
      const RopeFactor f = gaussian_rope_factor(p.t, p.sigma, omega[j]);
      table.cos(i, j) = f.re;
      table.sin(i, j) = f.im;
    }
  }
  return table;
}

/// Builds the tables for every entry of `positions`; see the pointer overload.
inline GaussianRopeTable gaussian_rope_table(std::span<const GaussianPosition> positions,
                                             const GaussianRopeOptions& options) {
  return gaussian_rope_table(positions.data(), static_cast<std::int64_t>(positions.size()),
                             options);
}

/// Rotates q or k rows: `x` and `y` are row-major [n, n_heads·d_head] (head h owns columns
/// [h·d_head, (h+1)·d_head)); row i is rotated by the factors of table row i, band j acting on
/// dims (j, j + d_head/2) of every head. Arithmetic is fp64, rounded once to Scalar. `y` may be
/// `x` (in place) but must not partially overlap it.
template <class Scalar>
void apply_gaussian_rope(const Scalar* x, Scalar* y, std::int64_t n, int n_heads,
                         const GaussianRopeTable& table) {
  MC_EXPECTS(n_heads >= 1, Errc::kInvalidArgument,
             "[mc.gaussian_rope.bad_shape] n_heads = ", n_heads, "; must be >= 1");
  MC_EXPECTS(table.d_head >= 2 && table.d_head % 2 == 0 &&
                 table.cos.cols() == rope_num_bands(table.d_head) &&
                 table.sin.cols() == table.cos.cols() && table.sin.rows() == table.cos.rows(),
             Errc::kInvalidArgument,
             "[mc.gaussian_rope.bad_table] table has d_head = ", table.d_head, ", cos ",
             table.cos.rows(), " x ", table.cos.cols(), ", sin ", table.sin.rows(), " x ",
             table.sin.cols(), "; build it with gaussian_rope_table()");
  MC_EXPECTS(n == table.rows(), Errc::kInvalidArgument, "[mc.gaussian_rope.bad_shape] n = ", n,
             " rows but the table has ", table.rows(), " rows");
  if (n == 0) return;
  MC_EXPECTS(x != nullptr && y != nullptr, Errc::kInvalidArgument,
             "[mc.gaussian_rope.null_pointer] x or y is null with n = ", n);
  const int d_head = table.d_head;
  const int bands = rope_num_bands(d_head);
  const std::int64_t row_len = static_cast<std::int64_t>(n_heads) * d_head;
  const std::int64_t count = n * row_len;
  MC_EXPECTS(x == y || y + count <= x || x + count <= y, Errc::kInvalidArgument,
             "[mc.gaussian_rope.aliasing] y partially overlaps x; pass y == x for in place or "
             "disjoint buffers");
  for (std::int64_t i = 0; i < n; ++i) {
    for (int h = 0; h < n_heads; ++h) {
      const std::int64_t off = i * row_len + static_cast<std::int64_t>(h) * d_head;
      for (int j = 0; j < bands; ++j) {
        // Both dims are read before either is written, so y == x is safe.
        const double a = static_cast<double>(x[off + j]);
        const double b = static_cast<double>(x[off + rope_partner(j, d_head)]);
        double ya = 0.0;
        double yb = 0.0;
        rope_rotate(a, b, table.cos(i, j), table.sin(i, j), ya, yb);
        y[off + j] = static_cast<Scalar>(ya);
        y[off + rope_partner(j, d_head)] = static_cast<Scalar>(yb);
      }
    }
  }
}

/// CPU twin of mc::cuda::apply_gaussian_rope: builds the table of `positions` [n] and rotates
/// `x` [n, n_heads·d_head] into `y` (same shape; may be `x`).
template <class Scalar>
void apply_gaussian_rope(const Scalar* x, Scalar* y, const GaussianPosition* positions,
                         std::int64_t n, int n_heads, const GaussianRopeOptions& options) {
  apply_gaussian_rope(x, y, n, n_heads, gaussian_rope_table(positions, n, options));
}

/// Rotates the row-major matrix `x` [n, n_heads·d_head] in place with `table` (n rows).
template <class Scalar>
void apply_gaussian_rope(Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>& x,
                         int n_heads, const GaussianRopeTable& table) {
  MC_EXPECTS(n_heads >= 1 && x.cols() == static_cast<Eigen::Index>(n_heads) * table.d_head,
             Errc::kInvalidArgument, "[mc.gaussian_rope.bad_shape] x has ", x.cols(),
             " columns; expected n_heads * d_head = ", n_heads, " * ", table.d_head);
  apply_gaussian_rope(x.data(), x.data(), x.rows(), n_heads, table);
}

}  // namespace mc
