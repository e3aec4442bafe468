// SPDX-License-Identifier: Apache-2.0
// Base-LM training end to end on the CPU: a BPE tokenizer and a tiny reference decoder trained
// on real English text (the license texts every Debian system ships), whose validation NLL must
// fall clearly below the unigram baseline; and the unigram baseline itself on a hand example.
#include <doctest/doctest.h>

#include <megacontext/tokenizer.hpp>
#include <megacontext/train/base_lm.hpp>

#include <cmath>

#include "common/license_text.hpp"
#include "common/random.hpp"

TEST_CASE("base_lm: the unigram baseline is the add-one smoothed cross-entropy") {
  const std::vector<mc::TokenId> train = {0, 0, 1}, valid = {0, 1};
  // Counts with add-one over vocab 3: {3, 2, 1} / 6.
  const double want = -(std::log(3.0 / 6.0) + std::log(2.0 / 6.0)) / 2.0;
  CHECK(mc::train::unigram_nll(train, valid, 3) == doctest::Approx(want));
}

TEST_CASE("base_lm: a tiny decoder trained on real text beats the unigram baseline clearly") {
  INFO(mc::test::seed_info());
  auto corpus = mc::test::license_corpus();
  if (!corpus) return;
  const auto& train = corpus->train;
  const auto& valid = corpus->valid;
  auto model = mc::test::tiny_decoder(corpus->tokenizer.vocab_size());
  const auto& o = model.options();
  const mc::train::BaseLmOptions t = mc::test::tiny_decoder_training();
  mc::train::BaseLmTrainer<float> trainer(model, t);

  const double unigram = mc::train::unigram_nll(train, valid, o.n_vocab);
  const double before = mc::train::evaluate_nll(model, valid, t.seq_len, 40);
  double first = 0, last = 0;
  for (int s = 1; s <= 400; ++s) {
    const double loss = trainer.step(train);
    if (s <= 20) first += loss / 20;
    if (s > 380) last += loss / 20;
  }
  const double after = mc::train::evaluate_nll(model, valid, t.seq_len, 40);
  MESSAGE("vocab ", o.n_vocab, ", ", train.size(), " train / ", valid.size(),
          " valid tokens; valid NLL ", before, " -> ", after, " nats (unigram ", unigram,
          "); train loss ", first, " -> ", last, "; skipped steps ", trainer.skipped_steps());
  CHECK(trainer.skipped_steps() == 0);
  CHECK(before > unigram);        // an untrained model is worse than counting tokens
  CHECK(after < unigram - 0.5);   // a trained one is clearly better
}
