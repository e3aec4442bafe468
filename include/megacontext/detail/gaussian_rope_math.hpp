// SPDX-License-Identifier: Apache-2.0
// The Eigen-free half of Gaussian RoPE: the options, the (t, σ) position type and the maths shared
// by the CPU reference and the CUDA kernel, as MC_HOST_DEVICE functions. Users include
// megacontext/gaussian_rope.hpp, which includes this; device code
// (cuda/megacontext/device_rope.cuh) includes only this file, so kernels never pull in Eigen. See
// docs/concepts/gaussian_rope.md.
#pragma once

#include <cmath>
#include <cstdint>

#include "megacontext/detail/host_device.hpp"
#include "megacontext/error.hpp"

namespace mc {

/// How an entry's positional spread σ follows from its width w = K^lod (tokens covered).
enum class SpreadPolicy : int {
  /// σ = √((w² − 1)/12), the standard deviation of a position drawn uniformly from the w tokens
  /// of the span; tokens (w = 1) get σ = 0 exactly, so LOD0 is plain RoPE. The default.
  kUniformSpan = 0,
  /// σ = w, the Python proof of concept's choice; damps even plain tokens (kept to compare).
  kWidth = 1,
};

/// Where an entry's mean position t sits in its span [begin, begin + w).
enum class PositionPolicy : int {
  /// t = begin + (w − 1)/2, the mean token position of the span; a token gets t = begin. Default.
  kSpanCentre = 0,
  /// t = begin, the first token of the span.
  kSpanStart = 1,
};

/// Run-time options of Gaussian RoPE; `validate()` throws mc::Error naming a bad field.
struct GaussianRopeOptions {
  int d_head = 128;                                       ///< dims per head; even, >= 2
  double base = 10000.0;                                  ///< ω_j = base^(−2j/d_head); > 1
  PositionPolicy position = PositionPolicy::kSpanCentre;  ///< where t sits in a span
  SpreadPolicy spread = SpreadPolicy::kUniformSpan;       ///< how σ follows from the width

  /// Throws mc::Error (kInvalidArgument) when d_head is odd or < 2, or base is not finite and > 1.
  void validate() const {
    MC_EXPECTS(d_head >= 2 && d_head % 2 == 0, Errc::kInvalidArgument,
               "[mc.gaussian_rope.bad_d_head] d_head = ", d_head,
               "; must be even and >= 2 (dims j and j + d_head/2 form rotation band j)");
    MC_EXPECTS(std::isfinite(base) && base > 1.0, Errc::kInvalidArgument,
               "[mc.gaussian_rope.bad_base] base = ", base, "; must be finite and > 1");
    MC_EXPECTS(position == PositionPolicy::kSpanCentre || position == PositionPolicy::kSpanStart,
               Errc::kInvalidArgument,
               "[mc.gaussian_rope.bad_policy] position policy = ", static_cast<int>(position),
               "; must be kSpanCentre (0) or kSpanStart (1)");
    MC_EXPECTS(spread == SpreadPolicy::kUniformSpan || spread == SpreadPolicy::kWidth,
               Errc::kInvalidArgument,
               "[mc.gaussian_rope.bad_policy] spread policy = ", static_cast<int>(spread),
               "; must be kUniformSpan (0) or kWidth (1)");
  }
};

/// The position of one entry as Gaussian RoPE sees it; trivially copyable, also read on device.
struct GaussianPosition {
  double t = 0.0;      ///< mean position, in tokens (fractional for span centres)
  double sigma = 0.0;  ///< positional spread (standard deviation), in tokens; >= 0
};

/// The complex factor E[e^{iωτ}] = re + i·im of one band of one entry.
struct RopeFactor {
  double re = 1.0;  ///< e^{−½(σω)²} cos(ωt)
  double im = 0.0;  ///< e^{−½(σω)²} sin(ωt)
};

// ---- Maths shared by the CPU reference and the CUDA kernel (cuda/megacontext/device_rope.cuh).

/// Number of rotation bands of a head: d_head / 2.
MC_HOST_DEVICE constexpr int rope_num_bands(int d_head) { return d_head / 2; }

/// The dim paired with dim j < d_head/2 (Llama/HF "rotate half"): band j rotates (j, j + d_head/2).
MC_HOST_DEVICE constexpr int rope_partner(int j, int d_head) { return j + d_head / 2; }

/// Angular frequency of band j in radians per token: ω_j = base^(−2j/d_head); ω_0 = 1.
MC_HOST_DEVICE inline double rope_frequency(int j, int d_head, double base) {
  return std::pow(base, -2.0 * static_cast<double>(j) / static_cast<double>(d_head));
}

/// Damping of a band of frequency ω for spread σ: |E[e^{iωτ}]| = exp(−½(σω)²); 1 when σ = 0.
MC_HOST_DEVICE inline double rope_damping(double sigma, double omega) {
  const double a = sigma * omega;
  return std::exp(-0.5 * a * a);
}

/// Variance of a position uniform over the w integer positions of a span: (w² − 1)/12.
MC_HOST_DEVICE constexpr double uniform_span_variance(double w) { return (w * w - 1.0) / 12.0; }

/// Spread σ of an entry of `width` tokens under `policy`; 0 for a token under kUniformSpan.
MC_HOST_DEVICE inline double span_sigma(std::int64_t width, SpreadPolicy policy) {
  const double w = static_cast<double>(width);
  return policy == SpreadPolicy::kWidth ? w : std::sqrt(uniform_span_variance(w));
}

/// Mean position t of the span [begin, begin + width) under `policy`, in tokens.
MC_HOST_DEVICE constexpr double span_position(std::int64_t begin, std::int64_t width,
                                              PositionPolicy policy) {
  return policy == PositionPolicy::kSpanStart
             ? static_cast<double>(begin)
             : static_cast<double>(begin) + 0.5 * static_cast<double>(width - 1);
}

/// E[e^{iωτ}] for τ ~ N(t, σ²): e^{iωt}·e^{−½σ²ω²}. With σ = 0 it is exactly (cos ωt, sin ωt).
MC_HOST_DEVICE inline RopeFactor gaussian_rope_factor(double t, double sigma, double omega) {
  const double damp = rope_damping(sigma, omega);
  const double phase = omega * t;
  return {damp * std::cos(phase), damp * std::sin(phase)};
}

/// Multiplies the pair (a, b) = a + i·b by re + i·im: (a·re − b·im, b·re + a·im).
template <class T>
MC_HOST_DEVICE constexpr void rope_rotate(T a, T b, T re, T im, T& out_a, T& out_b) {
  out_a = a * re - b * im;
  out_b = b * re + a * im;
}

}  // namespace mc
