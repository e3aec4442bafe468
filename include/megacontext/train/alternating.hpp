// SPDX-License-Identifier: Apache-2.0
// The alternating GistNet <-> LensNet schedule: each round trains GistNet for N steps on ΔNLL@H,
// then rebuilds LensNet's counterfactual targets with the gists GistNet now makes (the gains of
// expanding a gist depend on how much that gist already carries), then trains LensNet for M steps.
// Both networks, both optimizers, both samplers and the round count checkpoint to safetensors so
// a run resumes bit-identically.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <random>
#include <span>
#include <sstream>
#include <string>
#include <vector>

#include "megacontext/error.hpp"
#include "megacontext/gist_net.hpp"
#include "megacontext/lens_net.hpp"
#include "megacontext/train/checkpoint.hpp"
#include "megacontext/train/gist_training.hpp"
#include "megacontext/train/lens_training.hpp"

namespace mc::train {

/// Text form of a generator's state (std::mt19937_64's stream format), for checkpoint metadata.
inline std::string sampler_state(const std::mt19937_64& rng) {
  std::ostringstream s;
  s << rng;
  return s.str();
}

/// Restores a generator from sampler_state() text; throws [mc.train.bad_sampler] naming `what`.
inline void restore_sampler(std::mt19937_64& rng, const std::string& state, const std::string& what) {
  std::istringstream s(state);
  std::mt19937_64 r;
  s >> r;
  MC_EXPECTS(!s.fail(), Errc::kFormat, "[mc.train.bad_sampler] ", what,
             " holds no valid sampler state");
  rng = r;
}

/// Steps per round and rounds of the alternating schedule.
struct AlternatingOptions {
  std::int64_t gist_steps = 50;   ///< N: GistNet steps per round; >= 0
  std::int64_t lens_steps = 200;  ///< M: LensNet steps per round; >= 0
  std::int64_t rounds = 4;        ///< rounds in the whole run; >= 1

  /// Throws mc::Error naming the first bad field.
  void validate() const {
    MC_EXPECTS(gist_steps >= 0 && lens_steps >= 0 && gist_steps + lens_steps >= 1 && rounds >= 1,
               Errc::kInvalidArgument, "[mc.train.bad_schedule] gist_steps = ", gist_steps,
               ", lens_steps = ", lens_steps, ", rounds = ", rounds,
               "; need steps >= 0 (not both 0) and rounds >= 1");
  }
};

/// Mean training losses of one round.
struct RoundReport {
  std::int64_t round = 0;   ///< 1-based round number
  double gist_loss = 0;     ///< mean GistTrainer::step loss (gist NLL of the horizon, nats)
  double lens_loss = 0;     ///< mean LensTrainer::step loss on this round's targets
  std::int64_t examples = 0;  ///< LensNet contexts rebuilt for this round
};

/// Runs the alternating schedule. `make_examples(gist_net)` builds LensNet's contexts and their
/// gains with the current GistNet (it must be deterministic for an exact resume).
template <ConfigType C, class M>
class AlternatingTrainer {
 public:
  using Scalar = typename C::Scalar;
  /// Builds LensNet examples with the current GistNet.
  using MakeExamples = std::function<std::vector<LensExample<Scalar>>(GistNet<C>&)>;

  /// Trains `gist` and `lens` (kept by reference) through the frozen `model`.
  AlternatingTrainer(GistNet<C>& gist, LensNet<Scalar>& lens, M& model, const GistTrainOptions& g,
                     const LensTrainOptions& l, const AlternatingOptions& a, MakeExamples make)
      : gist_net_(gist), lens_net_(lens), gist_(gist, model, g), lens_(lens, l), a_(a),
        make_(std::move(make)) {
    a_.validate();
    MC_EXPECTS(lens.options().d_in == gist.dim(), Errc::kInvalidArgument,
               "[mc.train.dim_mismatch] LensNet d_in ", lens.options().d_in, " vs GistNet dim ",
               gist.dim());
  }

  /// Rounds completed so far.
  std::int64_t rounds_done() const { return round_; }
  /// True when every round of the options has run.
  bool done() const { return round_ >= a_.rounds; }

  /// One round on the GistNet training stream `tokens`; `on_step(kind, step, loss)` (optional)
  /// sees every step ('g' or 'l').
  RoundReport round(std::span<const TokenId> tokens,
                    const std::function<void(char, std::int64_t, double)>& on_step = {}) {
    RoundReport r;
    r.round = ++round_;
    for (std::int64_t s = 0; s < a_.gist_steps; ++s) {
      const double l = gist_.step(tokens);
      r.gist_loss += l / static_cast<double>(a_.gist_steps);
      if (on_step) on_step('g', s + 1, l);
    }
    if (a_.lens_steps > 0) {
      examples_ = make_(gist_net_);
      r.examples = static_cast<std::int64_t>(examples_.size());
      for (std::int64_t s = 0; s < a_.lens_steps; ++s) {
        const double l = lens_.step(examples_);
        r.lens_loss += l / static_cast<double>(a_.lens_steps);
        if (on_step) on_step('l', s + 1, l);
      }
    }
    return r;
  }

  /// Writes `dir`/gist.safetensors and `dir`/lens.safetensors (weights, AdamW moments, sampler,
  /// round, `metadata`), each atomically.
  void save(const std::filesystem::path& dir,
            std::map<std::string, std::string> metadata = {}) {
    std::filesystem::create_directories(dir);
    metadata["round"] = std::to_string(round_);
    auto g = metadata, l = metadata;
    g["sampler"] = sampler_state(gist_.sampler());
    l["sampler"] = sampler_state(lens_.sampler());
    save_checkpoint<Scalar>(dir / "gist.safetensors", gist_net_.weights(), &gist_.optimizer(), g);
    save_checkpoint<Scalar>(dir / "lens.safetensors", lens_net_.weights(), &lens_.optimizer(), l);
  }

  /// Restores what save() wrote; throws (touching neither net) when a tensor is missing or has
  /// another shape, and [mc.train.round_mismatch] when the two files are from different rounds.
  /// Returns the metadata of the GistNet file.
  std::map<std::string, std::string> load(const std::filesystem::path& dir) {
    // Load into copies first so a bad second file leaves both nets as they were.
    auto gw = gist_net_.weights();
    auto lw = lens_net_.weights();
    AdamW go = gist_.optimizer(), lo = lens_.optimizer();
    const auto gi = load_checkpoint<Scalar>(dir / "gist.safetensors", gw, &go);
    const auto li = load_checkpoint<Scalar>(dir / "lens.safetensors", lw, &lo);
    const auto get = [](const CheckpointInfo& i, const std::string& key,
                        const std::filesystem::path& p) {
      const auto it = i.metadata.find(key);
      MC_EXPECTS(it != i.metadata.end(), Errc::kFormat, "[mc.train.missing_metadata] ",
                 p.string(), " has no '", key, "' metadata");
      return it->second;
    };
    const std::string gr = get(gi, "round", dir / "gist.safetensors");
    const std::string lr = get(li, "round", dir / "lens.safetensors");
    MC_EXPECTS(gr == lr, Errc::kConfigMismatch, "[mc.train.round_mismatch] gist.safetensors is at round ",
               gr, ", lens.safetensors at round ", lr, " in ", dir.string());
    std::mt19937_64 gs, ls;
    restore_sampler(gs, get(gi, "sampler", dir / "gist.safetensors"), "gist.safetensors");
    restore_sampler(ls, get(li, "sampler", dir / "lens.safetensors"), "lens.safetensors");
    gist_net_.weights() = std::move(gw);
    lens_net_.weights() = std::move(lw);
    gist_.optimizer() = std::move(go);
    lens_.optimizer() = std::move(lo);
    gist_.sampler() = gs;
    lens_.sampler() = ls;
    round_ = std::stoll(gr);
    return gi.metadata;
  }

  /// The GistNet trainer.
  GistTrainer<C, M>& gist_trainer() { return gist_; }
  /// The LensNet trainer.
  LensTrainer<Scalar>& lens_trainer() { return lens_; }
  /// The LensNet examples of the latest round.
  const std::vector<LensExample<Scalar>>& examples() const { return examples_; }

 private:
  GistNet<C>& gist_net_;
  LensNet<Scalar>& lens_net_;
  GistTrainer<C, M> gist_;
  LensTrainer<Scalar> lens_;
  AlternatingOptions a_;
  MakeExamples make_;
  std::int64_t round_ = 0;
  std::vector<LensExample<Scalar>> examples_;
};

}  // namespace mc::train
