// SPDX-License-Identifier: Apache-2.0
// The alternating GistNet <-> LensNet schedule on the synthetic recall task: both training losses
// fall over the rounds, the targets are rebuilt from the current gists every round, and a run
// checkpointed after round 2 and resumed in a fresh trainer ends bit-identical to one that never
// stopped; a checkpoint that does not fit is refused without touching either net.
#include <doctest/doctest.h>

#include <megacontext/train/alternating.hpp>
#include <megacontext/train/recall_task.hpp>

#include <chrono>
#include <cstdio>
#include <filesystem>

#include "common/random.hpp"
#include "common/recall_setup.hpp"

namespace {

using C = mc::test::RecallConfig;
using Model = mc::reference::LlamaModel<float>;

struct Setup {
  mc::train::RecallTaskOptions task = mc::test::recall_task();
  Model model = mc::test::recall_decoder();
  std::vector<mc::TokenId> stream = mc::train::recall_stream(task, 512, mc::test::base_seed() + 20);
  std::vector<mc::TokenId> held_out = mc::train::recall_stream(task, 128, mc::test::base_seed() + 21);

  // GistNet windows are whole episodes with the span on fact block 2 and the queries after it in
  // the horizon (GistNet sees only the span, so it learns to gist any fact block).
  mc::train::GistTrainOptions gist_options() const {
    mc::train::GistTrainOptions g;
    g.prefix = 2 * task.block;
    g.horizon = task.length() - g.prefix - task.block;
    g.align = task.length();
    g.batch = 8;
    g.schedule = {3e-3, 3e-4, 10, 120};
    g.seed = mc::test::base_seed() + 22;
    return g;
  }
  mc::train::LensTrainOptions lens_options() const {
    mc::train::LensTrainOptions l;
    l.loss = mc::train::LensLoss::kPreference;
    l.schedule = {3e-3, 3e-4, 20, 900};
    l.seed = mc::test::base_seed() + 23;
    return l;
  }
  mc::train::AlternatingTrainer<C, Model>::MakeExamples make_examples() {
    return [this](mc::GistNet<C>& net) {
      mc::GistNetGister<C, Model> g(model, net);
      return mc::train::recall_lens_examples<C>(task, model, g, 256, mc::test::base_seed() + 24);
    };
  }
};

}  // namespace

TEST_CASE("alternating: GistNet and LensNet losses both fall over the rounds; resume is exact") {
  INFO(mc::test::seed_info());
  const auto t0 = std::chrono::steady_clock::now();
  Setup s;
  const mc::train::AlternatingOptions a{40, 300, 3};
  auto gist = mc::GistNet<C>::random(mc::test::recall_gist_options(s.model), mc::test::base_seed() + 30);
  auto lens = mc::LensNet<float>::random(mc::test::recall_lens_options(), mc::test::base_seed() + 31);
  mc::train::AlternatingTrainer<C, Model> trainer(gist, lens, s.model, s.gist_options(),
                                                  s.lens_options(), a, s.make_examples());
  const auto dir = std::filesystem::temp_directory_path() /
                   ("mc_alternating_" + std::to_string(mc::test::base_seed()));
  std::filesystem::remove_all(dir);

  std::vector<mc::train::RoundReport> rounds;
  std::vector<double> delta_nll;
  const auto held_out_delta = [&] {
    return mc::train::evaluate_delta_nll(gist, s.model, s.held_out, s.gist_options(), 64, 5).gist;
  };
  delta_nll.push_back(held_out_delta());
  while (!trainer.done()) {
    rounds.push_back(trainer.round(s.stream));
    delta_nll.push_back(held_out_delta());
    if (trainer.rounds_done() == 2) trainer.save(dir);
  }
  const auto rank = mc::train::evaluate_lens_ranking<float>(lens, trainer.examples(), 3);
  for (const auto& r : rounds)
    MESSAGE("round ", r.round, ": GistNet loss ", r.gist_loss, " (held-out ΔNLL after ",
            delta_nll[static_cast<std::size_t>(r.round)], "), LensNet BT loss ", r.lens_loss,
            " on ", r.examples, " rebuilt contexts");
  MESSAGE("held-out ΔNLL before training ", delta_nll[0], "; final rho on the last targets ",
          rank.rho, " (random ", rank.rho_random, "); ",
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), " s");
  REQUIRE(rounds.size() == 3);
  // GistNet's loss on fixed held-out windows (its training loss samples new windows every step,
  // so it moves by less than its noise over three rounds); LensNet's per-round training loss.
  CHECK(delta_nll.back() < delta_nll.front());
  CHECK(delta_nll.back() < delta_nll[1]);
  CHECK(rounds.back().lens_loss < rounds.front().lens_loss);
  CHECK(rank.rho > rank.rho_random + 0.15);

  // A fresh pair of nets resumed from the round-2 checkpoint ends where the first run did.
  auto gist2 = mc::GistNet<C>::random(mc::test::recall_gist_options(s.model), 999);
  auto lens2 = mc::LensNet<float>::random(mc::test::recall_lens_options(), 998);
  mc::train::AlternatingTrainer<C, Model> resumed(gist2, lens2, s.model, s.gist_options(),
                                                  s.lens_options(), a, s.make_examples());
  resumed.load(dir);
  CHECK(resumed.rounds_done() == 2);
  resumed.round(s.stream);
  CHECK(resumed.done());
  bool same = true;
  auto g1 = gist.weights(), g2 = gist2.weights();
  std::vector<float> flat1, flat2;
  g1.for_each_parameter([&](const std::string&, float* p, Eigen::Index n) { flat1.insert(flat1.end(), p, p + n); });
  g2.for_each_parameter([&](const std::string&, float* p, Eigen::Index n) { flat2.insert(flat2.end(), p, p + n); });
  same = same && flat1 == flat2;
  flat1.clear();
  flat2.clear();
  auto l1 = lens.weights(), l2 = lens2.weights();
  l1.for_each_parameter([&](const std::string&, float* p, Eigen::Index n) { flat1.insert(flat1.end(), p, p + n); });
  l2.for_each_parameter([&](const std::string&, float* p, Eigen::Index n) { flat2.insert(flat2.end(), p, p + n); });
  same = same && flat1 == flat2 && !flat1.empty();
  CHECK(same);

  // A LensNet of another width does not fit the checkpoint: refused, nothing touched.
  auto wide = mc::test::recall_lens_options();
  wide.d_ff = 48;
  auto lens3 = mc::LensNet<float>::random(wide, 5);
  auto gist3 = mc::GistNet<C>::random(mc::test::recall_gist_options(s.model), 6);
  const auto gist3_before = gist3.weights().sets[0].pool_w1;
  mc::train::AlternatingTrainer<C, Model> misfit(gist3, lens3, s.model, s.gist_options(),
                                                 s.lens_options(), a, s.make_examples());
  CHECK_THROWS_WITH_AS(misfit.load(dir), doctest::Contains("[mc.train.shape_mismatch] 'layers.0.mlp.w1'"),
                       mc::Error);
  CHECK(gist3.weights().sets[0].pool_w1 == gist3_before);
  CHECK(misfit.rounds_done() == 0);

  // Files from different rounds do not make a checkpoint.
  mc::train::AlternatingTrainer<C, Model> other(gist3, lens2, s.model, s.gist_options(),
                                                s.lens_options(), a, s.make_examples());
  CHECK_THROWS_WITH_AS(other.load(std::filesystem::path("/nonexistent/mc")), doctest::Contains("/nonexistent/mc"),
                       mc::Error);
  std::filesystem::copy_file(dir / "gist.safetensors", dir / "g2.safetensors");
  resumed.save(dir);  // round 3 for both
  std::filesystem::rename(dir / "g2.safetensors", dir / "gist.safetensors");  // gist back to round 2
  CHECK_THROWS_WITH_AS(other.load(dir), doctest::Contains("[mc.train.round_mismatch]"), mc::Error);
  std::filesystem::remove_all(dir);
}
