// SPDX-License-Identifier: Apache-2.0
// AdamW (Loshchilov & Hutter): Adam with weight decay decoupled from the gradient, the optimizer
// of every trainable part (base decoder, GistNet, LensNet). Moments are kept per named tensor so
// they can be checkpointed and resumed (train/checkpoint.hpp). Step t (1-based) on parameter p
// with gradient g: m = β1 m + (1−β1) g; v = β2 v + (1−β2) g²; m̂ = m/(1−β1^t); v̂ = v/(1−β2^t);
// p −= lr (m̂/(√v̂ + ε) + λ p). Decay applies to tensors whose name `decays()` accepts (by default
// matrices, not norm gains: the usual practice).
#pragma once

#include <cmath>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "megacontext/error.hpp"
#include "megacontext/train/parameters.hpp"

namespace mc::train {

/// Hyper-parameters of AdamW (the learning rate comes with each step, from a schedule).
struct AdamWOptions {
  double beta1 = 0.9;          ///< first-moment decay, in [0, 1)
  double beta2 = 0.95;         ///< second-moment decay, in [0, 1)
  double eps = 1e-8;           ///< added to √v̂; > 0
  double weight_decay = 0.1;   ///< decoupled decay λ; >= 0

  /// Throws mc::Error naming the first bad field.
  void validate() const {
    MC_EXPECTS(beta1 >= 0 && beta1 < 1, Errc::kInvalidArgument, "[mc.train.bad_beta1] beta1 = ",
               beta1, " must be in [0, 1)");
    MC_EXPECTS(beta2 >= 0 && beta2 < 1, Errc::kInvalidArgument, "[mc.train.bad_beta2] beta2 = ",
               beta2, " must be in [0, 1)");
    MC_EXPECTS(eps > 0, Errc::kInvalidArgument, "[mc.train.bad_eps] eps = ", eps, " must be > 0");
    MC_EXPECTS(weight_decay >= 0, Errc::kInvalidArgument,
               "[mc.train.bad_weight_decay] weight_decay = ", weight_decay, " must be >= 0");
  }
};

/// AdamW over any ParameterSet; moments in double for stability whatever the parameter type.
class AdamW {
 public:
  /// Decides whether a tensor gets weight decay; default: not for names containing "norm".
  using DecayRule = std::function<bool(const std::string&)>;

  explicit AdamW(const AdamWOptions& opts = {}, DecayRule decays = default_decay)
      : opts_(opts), decays_(std::move(decays)) {
    opts_.validate();
  }

  /// Steps taken so far.
  std::int64_t step_count() const { return t_; }
  /// The options.
  const AdamWOptions& options() const { return opts_; }

  /// One update of `params` from `grads` (same names, sizes and order) at learning rate `lr`.
  /// Throws before touching anything when the two sets do not match or lr is not finite.
  template <class Scalar, ParameterSet<Scalar> P, ParameterSet<Scalar> G>
  void step(P& params, G& grads, double lr) {
    MC_EXPECTS(std::isfinite(lr) && lr >= 0, Errc::kInvalidArgument, "[mc.train.bad_lr] lr = ", lr,
               " must be finite and >= 0");
    std::vector<std::pair<const Scalar*, Eigen::Index>> g;
    std::vector<std::string> gnames;
    grads.for_each_parameter([&](const std::string& name, Scalar* data, Eigen::Index size) {
      g.emplace_back(data, size);
      gnames.push_back(name);
    });
    std::size_t i = 0;
    params.for_each_parameter([&](const std::string& name, Scalar*, Eigen::Index size) {
      MC_EXPECTS(i < g.size() && gnames[i] == name && g[i].second == size, Errc::kInvalidArgument,
                 "[mc.train.grad_mismatch] parameter ", i, " '", name, "' (", size,
                 " values) has no matching gradient",
                 i < g.size() ? " ('" + gnames[i] + "', " + std::to_string(g[i].second) + ")"
                              : std::string(" (too few gradients)"));
      ++i;
    });
    MC_EXPECTS(i == g.size(), Errc::kInvalidArgument, "[mc.train.grad_mismatch] ", g.size(),
               " gradient tensors for ", i, " parameters");
    ++t_;
    const double b1 = opts_.beta1, b2 = opts_.beta2;
    const double c1 = 1.0 - std::pow(b1, static_cast<double>(t_));
    const double c2 = 1.0 - std::pow(b2, static_cast<double>(t_));
    i = 0;
    params.for_each_parameter([&](const std::string& name, Scalar* p, Eigen::Index size) {
      auto& st = state_[name];
      st.m.resize(static_cast<std::size_t>(size), 0.0);
      st.v.resize(static_cast<std::size_t>(size), 0.0);
      const Scalar* gp = g[i++].first;
      const double decay = decays_(name) ? opts_.weight_decay : 0.0;
      for (Eigen::Index k = 0; k < size; ++k) {
        const double gk = static_cast<double>(gp[k]);
        double& m = st.m[static_cast<std::size_t>(k)];
        double& v = st.v[static_cast<std::size_t>(k)];
        m = b1 * m + (1 - b1) * gk;
        v = b2 * v + (1 - b2) * gk * gk;
        const double update = (m / c1) / (std::sqrt(v / c2) + opts_.eps) +
                              decay * static_cast<double>(p[k]);
        p[k] = static_cast<Scalar>(static_cast<double>(p[k]) - lr * update);
      }
    });
  }

  /// First and second moments of a tensor (empty before its first step).
  struct Moments {
    std::vector<double> m;  ///< first moment, one per scalar
    std::vector<double> v;  ///< second moment
  };
  /// All moments by tensor name (for checkpoints).
  const std::map<std::string, Moments>& state() const { return state_; }
  /// Restores moments and the step count (from a checkpoint).
  void restore(std::map<std::string, Moments> state, std::int64_t steps) {
    MC_EXPECTS(steps >= 0, Errc::kInvalidArgument, "[mc.train.bad_step] step count ", steps);
    state_ = std::move(state);
    t_ = steps;
  }

  /// The default decay rule: every tensor except those whose name contains "norm".
  static bool default_decay(const std::string& name) {
    return name.find("norm") == std::string::npos;
  }

 private:
  AdamWOptions opts_;
  DecayRule decays_;
  std::int64_t t_ = 0;
  std::map<std::string, Moments> state_;
};

}  // namespace mc::train
