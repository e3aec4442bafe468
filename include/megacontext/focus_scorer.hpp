// SPDX-License-Identifier: Apache-2.0
// Scorers: what says which working-context entries want more detail. The Session asks a scorer
// for one score per entry in [-1, 1] (> 0: expand, < 0: collapse) and hands them to the
// FocusAllocator. LensNetScorer is the learned one; RecencyScorer is the ablation without a
// network (detail follows the cursor), and the fallback before a LensNet is trained.
// Data flow: assemble() -> FocusScorer::score -> FocusAllocator::step.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>

#include "megacontext/assemble.hpp"
#include "megacontext/error.hpp"
#include "megacontext/lens_net.hpp"

namespace mc {

/// What the Session needs of a scorer over assembled contexts of element type Scalar:
/// `s.score(ctx, cursor, out)` writes one score in [-1, 1] per row of `ctx` to `out`
/// (out.size() == ctx.embeddings.rows()); `cursor` is the newest token position + 1.
template <class S, class Scalar>
concept FocusScorer =
    requires(S& s, const AssembledContext<Scalar>& ctx, double cursor, std::span<float> out) {
      s.score(ctx, cursor, out);
    };

/// Detail follows recency: an entry whose mean position lies within `horizon` tokens of the
/// cursor scores +1 falling linearly to -1 at 2·horizon and beyond. No network, no state.
struct RecencyScorer {
  double horizon = 1024.0;  ///< tokens of full-detail preference behind the cursor; > 0

  /// See FocusScorer.
  template <class Scalar>
  void score(const AssembledContext<Scalar>& ctx, double cursor, std::span<float> out) const {
    MC_EXPECTS(std::isfinite(horizon) && horizon > 0.0, Errc::kInvalidArgument,
               "[mc.scorer.bad_horizon] RecencyScorer horizon = ", horizon,
               "; must be finite and > 0");
    check_scores_size(ctx, out);
    for (std::size_t i = 0; i < out.size(); ++i) {
      const double dist = cursor - ctx.positions[i].t;
      out[i] = static_cast<float>(std::clamp(1.0 - dist / horizon, -1.0, 1.0));
    }
  }

  /// Throws mc::Error ([mc.scorer.bad_scores]) unless `out` has one slot per context row.
  template <class Scalar>
  static void check_scores_size(const AssembledContext<Scalar>& ctx, std::span<float> out) {
    MC_EXPECTS(static_cast<std::int64_t>(out.size()) == ctx.embeddings.rows() &&
                   ctx.positions.size() == out.size(),
               Errc::kInvalidArgument, "[mc.scorer.bad_scores] ", out.size(),
               " score slots for a context of ", ctx.embeddings.rows(), " rows");
  }
};

/// A LensNet as a FocusScorer (it reads the assembled rows, their lod/width/distance features
/// and the newest rows as its query). Borrows the network; the network must outlive the scorer.
template <class Scalar = float>
class LensNetScorer {
 public:
  /// Scores with `net`.
  explicit LensNetScorer(LensNet<Scalar>& net) : net_(&net) {}

  /// See FocusScorer.
  void score(const AssembledContext<Scalar>& ctx, double cursor, std::span<float> out) {
    RecencyScorer::check_scores_size(ctx, out);
    net_->forward(ctx, cursor, scores_);
    for (std::size_t i = 0; i < out.size(); ++i)
      out[i] = static_cast<float>(scores_[static_cast<Eigen::Index>(i)]);
  }

  /// The network.
  LensNet<Scalar>& net() { return *net_; }

 private:
  LensNet<Scalar>* net_;
  reference::Vector<Scalar> scores_;
};

}  // namespace mc
