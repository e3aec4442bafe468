// SPDX-License-Identifier: Apache-2.0
// Learning-rate schedule and gradient clipping for the training loops: linear warm-up to lr_max,
// then a cosine down to lr_min at the last step; and clipping of the global gradient norm.
#pragma once

#include <cmath>
#include <cstdint>
#include <numbers>

#include "megacontext/error.hpp"
#include "megacontext/train/parameters.hpp"

namespace mc::train {

/// Warm-up + cosine learning-rate schedule.
struct WarmupCosine {
  double lr_max = 3e-4;          ///< peak learning rate, reached at the end of warm-up
  double lr_min = 3e-5;          ///< final learning rate
  std::int64_t warmup_steps = 100;  ///< linear ramp 0 → lr_max over steps 1..warmup_steps
  std::int64_t total_steps = 1000;  ///< the cosine reaches lr_min at this step

  /// Throws mc::Error naming the first bad field.
  void validate() const {
    MC_EXPECTS(lr_max > 0 && lr_min >= 0 && lr_min <= lr_max, Errc::kInvalidArgument,
               "[mc.train.bad_schedule] need 0 <= lr_min <= lr_max, lr_max > 0; got lr_min = ",
               lr_min, ", lr_max = ", lr_max);
    MC_EXPECTS(warmup_steps >= 0 && total_steps > warmup_steps, Errc::kInvalidArgument,
               "[mc.train.bad_schedule] need 0 <= warmup_steps < total_steps; got ", warmup_steps,
               " and ", total_steps);
  }
  /// Learning rate of 1-based `step` (steps past total_steps keep lr_min).
  double operator()(std::int64_t step) const {
    if (step <= warmup_steps) return lr_max * static_cast<double>(step) / static_cast<double>(warmup_steps);
    if (step >= total_steps) return lr_min;
    const double progress = static_cast<double>(step - warmup_steps) /
                            static_cast<double>(total_steps - warmup_steps);
    return lr_min + 0.5 * (lr_max - lr_min) * (1.0 + std::cos(std::numbers::pi * progress));
  }
};

/// The global L2 norm of all gradients, computed in double.
template <class Scalar, ParameterSet<Scalar> G>
double grad_norm(G& grads) {
  double sq = 0;
  grads.for_each_parameter([&](const std::string&, Scalar* g, Eigen::Index size) {
    for (Eigen::Index k = 0; k < size; ++k) sq += static_cast<double>(g[k]) * static_cast<double>(g[k]);
  });
  return std::sqrt(sq);
}

/// Scales all gradients so their global norm is at most `max_norm`; returns the norm before
/// clipping (NaN or Inf when a gradient is not finite: then nothing is scaled, and the caller
/// should skip the step).
template <class Scalar, ParameterSet<Scalar> G>
double clip_grad_norm(G& grads, double max_norm) {
  MC_EXPECTS(max_norm > 0, Errc::kInvalidArgument, "[mc.train.bad_clip] max_norm = ", max_norm,
             " must be > 0");
  const double norm = grad_norm<Scalar>(grads);
  if (!std::isfinite(norm) || norm <= max_norm) return norm;
  const double scale = max_norm / norm;
  grads.for_each_parameter([&](const std::string&, Scalar* g, Eigen::Index size) {
    for (Eigen::Index k = 0; k < size; ++k) g[k] = static_cast<Scalar>(static_cast<double>(g[k]) * scale);
  });
  return norm;
}

}  // namespace mc::train
