// SPDX-License-Identifier: Apache-2.0
// MegaPrediction (seed 002, "Unified Prediction Head"): one readout for every level of a
// MegaAttention sequence. wLOD0 rows predict the next token through the shared LM head
// (cross-entropy); a wLOD1/wLOD2 row predicts the NEXT gist of its own level from its final hidden
// state hf (the vector the tied LM head reads), with a cosine or MSE loss; per-level weights make
// one scalar. Forward and backward, fed by mega_attention.hpp's forward and feeding its backward.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "megacontext/config.hpp"
#include "megacontext/detail/eigen.hpp"
#include "megacontext/error.hpp"
#include "megacontext/gister.hpp"
#include "megacontext/pyramid_mask.hpp"
#include "megacontext/reference/cross_entropy.hpp"

namespace mc {

/// How a predicted vector is scored against its target gist.
enum class GistLoss : int {
  kCosine = 0,  ///< 1 − cos(p, t): scale-free, so the prediction needs no particular norm
  kMse = 1,     ///< ‖p − t‖² / d: also asks for the target's scale
};

/// Guard of the cosine loss's norms: ‖x‖_ε = √(‖x‖² + ε²), smooth everywhere (a zero row then
/// has cosine 0 and a finite gradient instead of a division by zero).
inline constexpr double kCosineEps = 1e-8;

/// Mean over rows of the gist loss between `pred` [n, d] and `target` [n, d], in fp64. Cosine:
/// 1 − p·t / (‖p‖_ε ‖t‖_ε); MSE: ‖p − t‖² / d. Writes dL/dpred and dL/dtarget [n, d] when those
/// are not null (0 when n = 0, as is the loss).
template <class Scalar>
double gist_prediction_loss(const RowMatrix<Scalar>& pred, const RowMatrix<Scalar>& target,
                            GistLoss kind, RowMatrix<Scalar>* dpred, RowMatrix<Scalar>* dtarget) {
  const Eigen::Index n = pred.rows(), d = pred.cols();
  MC_EXPECTS(target.rows() == n && target.cols() == d && d >= 1, Errc::kInvalidArgument,
             "[mc.mega_prediction.bad_shape] pred ", n, " x ", d, ", target ", target.rows(), " x ",
             target.cols(), "; need equal shapes with d >= 1");
  MC_EXPECTS(kind == GistLoss::kCosine || kind == GistLoss::kMse, Errc::kInvalidArgument,
             "[mc.mega_prediction.bad_loss] gist loss = ", static_cast<int>(kind),
             "; must be kCosine (0) or kMse (1)");
  if (dpred != nullptr) dpred->setZero(n, d);
  if (dtarget != nullptr) dtarget->setZero(n, d);
  if (n == 0) return 0.0;
  const double inv_n = 1.0 / static_cast<double>(n);
  double loss = 0.0;
  for (Eigen::Index i = 0; i < n; ++i) {
    const Eigen::RowVectorXd p = pred.row(i).template cast<double>();
    const Eigen::RowVectorXd t = target.row(i).template cast<double>();
    Eigen::RowVectorXd gp, gt;
    if (kind == GistLoss::kCosine) {
      const double a = std::sqrt(p.squaredNorm() + kCosineEps * kCosineEps);
      const double b = std::sqrt(t.squaredNorm() + kCosineEps * kCosineEps);
      const double c = p.dot(t) / (a * b);
      loss += 1.0 - c;
      // dc/dp = t / (a b) − c p / a², dc/dt = p / (a b) − c t / b²; the loss is −c.
      gp = -(t / (a * b) - p * (c / (a * a)));
      gt = -(p / (a * b) - t * (c / (b * b)));
    } else {
      const Eigen::RowVectorXd e = p - t;
      loss += e.squaredNorm() / static_cast<double>(d);
      gp = e * (2.0 / static_cast<double>(d));
      gt = -gp;
    }
    if (dpred != nullptr) dpred->row(i) = (gp * inv_n).template cast<Scalar>();
    if (dtarget != nullptr) dtarget->row(i) = (gt * inv_n).template cast<Scalar>();
  }
  return loss * inv_n;
}

/// Options of the combined MegaPrediction loss; validate() throws mc::Error naming a bad field.
struct MegaPredictionOptions {
  /// Weight of each level's mean loss: [0] next-token cross-entropy on wLOD0 rows, [l] next-gist
  /// loss on level-l rows. Levels past the end weigh 0. Each finite and >= 0.
  std::vector<double> level_weights{1.0, 0.1, 0.1};
  GistLoss gist_loss = GistLoss::kCosine;  ///< loss of the summary levels
  /// Also back-propagate into the target gists. Off by default: targets are constants (stop-
  /// gradient), since a gradient there lets the gister make gists easy to predict (in the limit,
  /// all equal) instead of informative.
  bool target_gradient = false;

  /// Throws mc::Error (kInvalidArgument, [mc.mega_prediction.bad_weights] / bad_loss).
  void validate() const {
    MC_EXPECTS(level_weights.size() <= static_cast<std::size_t>(kMaxPyramidLevels) + 1,
               Errc::kInvalidArgument, "[mc.mega_prediction.bad_weights] ", level_weights.size(),
               " level weights; at most ", kMaxPyramidLevels + 1, " levels exist");
    for (std::size_t l = 0; l < level_weights.size(); ++l)
      MC_EXPECTS(std::isfinite(level_weights[l]) && level_weights[l] >= 0.0, Errc::kInvalidArgument,
                 "[mc.mega_prediction.bad_weights] level_weights[", l, "] = ", level_weights[l],
                 "; must be finite and >= 0");
    MC_EXPECTS(gist_loss == GistLoss::kCosine || gist_loss == GistLoss::kMse,
               Errc::kInvalidArgument,
               "[mc.mega_prediction.bad_loss] gist loss = ", static_cast<int>(gist_loss),
               "; must be kCosine (0) or kMse (1)");
  }
  /// Weight of `level` (0 past the end of level_weights).
  double weight(std::int32_t level) const {
    return static_cast<std::size_t>(level) < level_weights.size()
               ? level_weights[static_cast<std::size_t>(level)]
               : 0.0;
  }
};

/// Value of a combined MegaPrediction loss, with its parts.
struct MegaPredictionLoss {
  double total = 0.0;               ///< Σ_l weight(l) · level[l]
  std::vector<double> level;        ///< [L + 1] mean loss of each level (0 where count is 0)
  std::vector<std::int64_t> count;  ///< [L + 1] rows scored at each level
};

/// MegaPrediction over one multi-level sequence of `mask`'s layout (S rows): wLOD0 row i is
/// scored by cross-entropy of `logits` [S, V] against `targets` [N] (the token AFTER leaf i, or
/// reference::kIgnoreTarget); level-l row q (l >= 1, q + 1 < N_l) by the gist loss of its final
/// hidden state `hidden` [S, d] against row q + 1 of level l of `sequence` [S, d] (the next gist;
/// the last row of a level has none). Writes dL/dlogits [S, V] (non-zero on wLOD0 rows only),
/// dL/dhidden [S, d] (summary rows only) and, when options.target_gradient, dL/dsequence [S, d]
/// (zeros otherwise), each when not null. Throws [mc.mega_prediction.leaky_mask] unless the mask
/// is Causality::kStrict: under kCausal a row sees its parent summary, which already covers the
/// token or gist it is asked to predict.
template <class Scalar>
MegaPredictionLoss mega_prediction_loss(const PyramidMask& mask, const RowMatrix<Scalar>& logits,
                                        const RowMatrix<Scalar>& hidden,
                                        const RowMatrix<Scalar>& sequence, const TokenId* targets,
                                        const MegaPredictionOptions& options,
                                        RowMatrix<Scalar>* dlogits, RowMatrix<Scalar>* dhidden,
                                        RowMatrix<Scalar>* dsequence) {
  options.validate();
  MC_EXPECTS(mask.options().causality == Causality::kStrict, Errc::kInvalidArgument,
             "[mc.mega_prediction.leaky_mask] the pyramid mask is kCausal: a row would see the "
             "summary that covers its own target; MegaPrediction needs kStrict");
  const PyramidLayout& lay = mask.layout();
  const Eigen::Index s = lay.seq_len(), n = lay.num_leaves(), d = hidden.cols();
  MC_EXPECTS(logits.rows() == s && hidden.rows() == s && sequence.rows() == s &&
                 sequence.cols() == d && d >= 1 && logits.cols() >= 1,
             Errc::kInvalidArgument, "[mc.mega_prediction.bad_shape] logits ", logits.rows(), " x ",
             logits.cols(), ", hidden ", hidden.rows(), " x ", d, ", sequence ", sequence.rows(),
             " x ", sequence.cols(), "; need S = ", s, " rows each and equal widths d");
  MC_EXPECTS(targets != nullptr, Errc::kInvalidArgument,
             "[mc.mega_prediction.bad_shape] targets is null (need one per leaf, N = ", n, ")");
  const std::int32_t levels = lay.num_levels();
  MegaPredictionLoss out;
  out.level.assign(static_cast<std::size_t>(levels) + 1, 0.0);
  out.count.assign(static_cast<std::size_t>(levels) + 1, 0);
  if (dlogits != nullptr) dlogits->setZero(s, logits.cols());
  if (dhidden != nullptr) dhidden->setZero(s, d);
  if (dsequence != nullptr) dsequence->setZero(s, d);

  // wLOD0: next-token cross-entropy through the shared LM head.
  {
    const RowMatrix<Scalar> leaf_logits = logits.topRows(n);
    RowMatrix<Scalar> g;
    const double w = options.weight(0);
    out.level[0] =
        reference::cross_entropy<Scalar>(leaf_logits, targets, dlogits != nullptr ? &g : nullptr);
    for (Eigen::Index i = 0; i < n; ++i) out.count[0] += targets[i] != reference::kIgnoreTarget;
    if (dlogits != nullptr) dlogits->topRows(n) = g * static_cast<Scalar>(w);
    out.total += w * out.level[0];
  }
  // Summary levels: row q's hf against gist q + 1 of the same level.
  for (std::int32_t l = 1; l <= levels; ++l) {
    const Eigen::Index m = lay.level_size(l) - 1;
    if (m < 1) continue;
    const Eigen::Index off = lay.level_offset(l);
    const RowMatrix<Scalar> pred = hidden.middleRows(off, m);
    const RowMatrix<Scalar> target = sequence.middleRows(off + 1, m);
    RowMatrix<Scalar> gp, gt;
    const bool want_t = options.target_gradient && dsequence != nullptr;
    out.level[static_cast<std::size_t>(l)] =
        gist_prediction_loss<Scalar>(pred, target, options.gist_loss,
                                     dhidden != nullptr ? &gp : nullptr, want_t ? &gt : nullptr);
    out.count[static_cast<std::size_t>(l)] = m;
    const double w = options.weight(l);
    if (dhidden != nullptr) dhidden->middleRows(off, m) = gp * static_cast<Scalar>(w);
    if (want_t) dsequence->middleRows(off + 1, m) = gt * static_cast<Scalar>(w);
    out.total += w * out.level[static_cast<std::size_t>(l)];
  }
  return out;
}

}  // namespace mc
