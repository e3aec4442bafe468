// SPDX-License-Identifier: Apache-2.0
// Summaries with 95% intervals for the evaluation tables: a Student-t interval for means of
// continuous metrics (NLL per window) and a Wilson score interval for accuracies (pass-key
// trials), so that every table row reports the mean, the interval and the number of trials.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>

#include "megacontext/error.hpp"

namespace mc::eval {

/// A metric over n trials: mean and a 95% interval [low, high].
struct Summary {
  std::int64_t n = 0;  ///< trials
  double mean = 0;     ///< sample mean (the accuracy for proportions)
  double low = 0;      ///< lower end of the 95% interval
  double high = 0;     ///< upper end of the 95% interval
};

/// Two-sided 97.5% quantile of Student's t with `dof` degrees of freedom (table for small dof,
/// the Cornish–Fisher expansion beyond; error < 1e-3 for dof >= 1).
inline double t_quantile_975(std::int64_t dof) {
  static constexpr double kTable[] = {0,      12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365,
                                      2.306, 2.262,  2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
                                      2.120, 2.110,  2.101, 2.093, 2.086, 2.080, 2.074, 2.069,
                                      2.064, 2.060,  2.056, 2.052, 2.048, 2.045, 2.042};
  MC_EXPECTS(dof >= 1, Errc::kInvalidArgument, "[mc.eval.bad_samples] t quantile with ", dof,
             " degrees of freedom");
  if (dof <= 30) return kTable[dof];
  const double z = 1.959963984540054, v = static_cast<double>(dof);
  const double z3 = z * z * z, z5 = z3 * z * z;
  return z + (z3 + z) / (4 * v) + (5 * z5 + 16 * z3 + 3 * z) / (96 * v * v);
}

/// Mean and Student-t 95% interval of `x` (n >= 1; with one sample the interval is the point).
inline Summary mean_interval(std::span<const double> x) {
  MC_EXPECTS(!x.empty(), Errc::kInvalidArgument, "[mc.eval.bad_samples] no samples to summarise");
  Summary s;
  s.n = static_cast<std::int64_t>(x.size());
  double sum = 0;
  for (double v : x) {
    MC_EXPECTS(std::isfinite(v), Errc::kInvalidArgument, "[mc.eval.bad_samples] sample ", v,
               " is not finite");
    sum += v;
  }
  s.mean = sum / static_cast<double>(s.n);
  if (s.n == 1) {
    s.low = s.high = s.mean;
    return s;
  }
  double ss = 0;
  for (double v : x) ss += (v - s.mean) * (v - s.mean);
  const double se = std::sqrt(ss / static_cast<double>(s.n - 1) / static_cast<double>(s.n));
  const double h = t_quantile_975(s.n - 1) * se;
  s.low = s.mean - h;
  s.high = s.mean + h;
  return s;
}

/// Accuracy `successes / n` with its Wilson score 95% interval (sound at 0% and 100%).
inline Summary proportion_interval(std::int64_t successes, std::int64_t n) {
  MC_EXPECTS(n >= 1 && successes >= 0 && successes <= n, Errc::kInvalidArgument,
             "[mc.eval.bad_samples] ", successes, " successes of ", n, " trials");
  const double z = 1.959963984540054, nn = static_cast<double>(n);
  const double p = static_cast<double>(successes) / nn;
  const double denom = 1 + z * z / nn;
  const double centre = (p + z * z / (2 * nn)) / denom;
  const double half = z * std::sqrt(p * (1 - p) / nn + z * z / (4 * nn * nn)) / denom;
  return {n, p, std::max(0.0, centre - half), std::min(1.0, centre + half)};
}

}  // namespace mc::eval
