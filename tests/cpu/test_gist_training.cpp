// SPDX-License-Identifier: Apache-2.0
// GistNet trained on ΔNLL@H through a frozen base decoder (itself trained here on real text, the
// license texts every Debian system ships): on held-out text its gists must stand in for their
// spans better than mean pooling, the parameter-free baseline.
#include <doctest/doctest.h>

#include <megacontext/train/base_lm.hpp>
#include <megacontext/train/gist_training.hpp>


#include "common/license_text.hpp"
#include "common/random.hpp"

TEST_CASE("gist training: learned gists beat mean pooling on held-out text (ΔNLL@H)") {
  INFO(mc::test::seed_info());
  auto corpus = mc::test::license_corpus();
  if (!corpus) return;
  const auto& train = corpus->train;
  const auto& valid = corpus->valid;
  // The frozen base model.
  auto model = mc::test::tiny_decoder(corpus->tokenizer.vocab_size());
  mc::train::BaseLmTrainer<float> base(model, mc::test::tiny_decoder_training());
  for (int s = 0; s < 400; ++s) base.step(train);

  // GistNet over K = 8 tokens, started at the scale of the token embeddings.
  using C = mc::Config<8, 2>;
  mc::GistNetOptions go;
  go.d_model = 48;
  go.n_layers = 1;
  go.n_heads = 4;
  go.d_attn = 32;
  go.d_ff = 64;
  go.d_pool = 48;
  go.out_gain = std::sqrt(static_cast<double>(model.weights().embedding.squaredNorm()) /
                          static_cast<double>(model.weights().embedding.size()));
  auto net = mc::GistNet<C>::random(go, mc::test::base_seed() + 1);
  mc::train::GistTrainOptions t;
  t.prefix = 16;
  t.horizon = 16;
  t.batch = 8;
  t.schedule = {2e-3, 2e-4, 20, 300};
  mc::train::GistTrainer<C, decltype(model)> trainer(net, model, t);

  const auto before = mc::train::evaluate_delta_nll(net, model, valid, t, 96, 7);
  for (int s = 0; s < 300; ++s) trainer.step(train);
  const auto after = mc::train::evaluate_delta_nll(net, model, valid, t, 96, 7);
  MESSAGE("ΔNLL@16 on ", after.spans, " held-out spans of K = 8: GistNet ", before.gist, " -> ",
          after.gist, " nats; mean pool ", after.mean_pool, "; drop ", after.drop,
          "; first token ", after.first_token);
  CHECK(after.gist < before.gist);
  CHECK(after.gist < after.mean_pool);
}
