// SPDX-License-Identifier: Apache-2.0
// LensNet trained on counterfactual expansion gains. On the synthetic recall task exactly one
// fact block answers the query, so which gist deserves expanding depends on the query; after
// training, LensNet's scores must rank the measured gains on held-out contexts far better than
// a random scorer (and than the untrained net). Also the recall task itself and the trainer's
// argument checks.
#include <doctest/doctest.h>

#include <megacontext/train/lens_training.hpp>
#include <megacontext/train/recall_task.hpp>

#include <chrono>

#include "common/random.hpp"
#include "common/recall_setup.hpp"

TEST_CASE("recall task: each query asks about one fact block, and the answer is its value") {
  const auto o = mc::test::recall_task();
  auto rng = mc::test::rng(1);
  for (int i = 0; i < 50; ++i) {
    const auto e = mc::train::make_recall_episode(o, rng);
    REQUIRE(static_cast<std::int64_t>(e.tokens.size()) == o.length());
    for (std::int64_t q = 0; q < o.num_queries; ++q) {
      const auto at = static_cast<std::size_t>(e.answers[static_cast<std::size_t>(q)]);
      const std::int64_t fact = e.tokens[static_cast<std::size_t>(e.asked[static_cast<std::size_t>(q)] * o.block)] - o.fact_base();
      CHECK(e.tokens[at - 2] == 1);
      CHECK(e.tokens[at - 1] == 2 + fact / o.num_values);                // the fact's key
      CHECK(e.tokens[at] == 2 + o.num_keys + fact % o.num_values);       // the fact's value
    }
    for (std::int64_t p = 0; p < o.num_pairs; ++p)
      for (std::int64_t j = 1; j < o.block; ++j)
        CHECK(e.tokens[static_cast<std::size_t>(p * o.block + j)] >= o.fact_base() + o.num_keys * o.num_values);
  }
  mc::train::RecallTaskOptions bad = o;
  bad.num_pairs = o.num_keys + 1;
  CHECK_THROWS_WITH_AS(bad.validate(), doctest::Contains("num_pairs"), mc::Error);
}

TEST_CASE("lens training: options and empty input are refused with the bad value named") {
  mc::train::LensTrainOptions o;
  o.gain_scale = 0;
  CHECK_THROWS_WITH_AS(o.validate(), doctest::Contains("gain_scale = 0"), mc::Error);
  o = {};
  o.loss = static_cast<mc::train::LensLoss>(7);
  CHECK_THROWS_WITH_AS(o.validate(), doctest::Contains("[mc.train.bad_lens_loss]"), mc::Error);
  auto net = mc::LensNet<float>::random(mc::test::recall_lens_options(), 1);
  mc::train::LensTrainer<float> trainer(net, {});
  CHECK_THROWS_WITH_AS(trainer.step({}), doctest::Contains("[mc.train.no_examples]"), mc::Error);
}

TEST_CASE("lens training: LensNet learns which gist to expand (Spearman rho vs a random scorer)") {
  INFO(mc::test::seed_info());
  const auto t0 = std::chrono::steady_clock::now();
  const auto task = mc::test::recall_task();
  auto model = mc::test::recall_decoder();
  auto single = task;
  single.num_queries = 1;
  const auto in_window = mc::train::evaluate_recall(model, single, 200, mc::test::base_seed() + 9);
  MESSAGE("in-window recall (every token present): accuracy ", in_window.accuracy, ", answer NLL ",
          in_window.nll, " nats");
  REQUIRE(in_window.accuracy > 0.9);  // the base model must retrieve before LensNet can matter

  // Fact blocks as mean-pooled gists: the model cannot read a fact back from one, so the gain of
  // expanding a gist is large for the asked block and small or negative for the others.
  mc::MeanPoolGister<mc::test::RecallConfig> gister(model.weights().embedding);
  const auto train = mc::train::recall_lens_examples<mc::test::RecallConfig>(
      task, model, gister, 1024, mc::test::base_seed() + 5);
  const auto valid = mc::train::recall_lens_examples<mc::test::RecallConfig>(
      task, model, gister, 128, mc::test::base_seed() + 6);

  auto net = mc::LensNet<float>::random(mc::test::recall_lens_options(), mc::test::base_seed() + 7);
  mc::train::LensTrainOptions o;
  o.loss = mc::train::LensLoss::kPreference;
  o.schedule = {3e-3, 3e-4, 20, 6000};
  o.seed = mc::test::base_seed() + 8;
  mc::train::LensTrainer<float> trainer(net, o);
  const auto before = mc::train::evaluate_lens_ranking<float>(net, valid, 11);
  const double loss0 = trainer.loss(valid);
  for (int s = 0; s < 6000; ++s) trainer.step(train);
  const auto after = mc::train::evaluate_lens_ranking<float>(net, valid, 11);
  const double loss1 = trainer.loss(valid);
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  MESSAGE(after.contexts, " held-out contexts, gain RMS ", after.gain_rms, " nats; Spearman rho ",
          before.rho, " -> ", after.rho, " (random scorer ", after.rho_random, "); top-1 ",
          before.top1, " -> ", after.top1, " (random ", after.top1_random, "); held-out BT loss ",
          loss0, " -> ", loss1, "; ", secs, " s");
  CHECK(after.gain_rms > 0.5);                    // the targets carry real signal
  CHECK(loss1 < loss0);
  CHECK(after.rho > 0.3);                         // a random scorer sits at 0 +- 0.04 here
  CHECK(after.rho > after.rho_random + 0.25);
  CHECK(before.rho < 0.15);                       // the untrained net is such a random scorer
  CHECK(after.top1 > 2.5 * after.top1_random);
}
