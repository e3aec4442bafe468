// SPDX-License-Identifier: Apache-2.0
// GistNet trained on ΔNLL@H through a frozen base decoder (itself trained here on real text, the
// license texts every Debian system ships): on held-out text its gists must stand in for their
// spans better than mean pooling, the parameter-free baseline.
#include <doctest/doctest.h>

#include <megacontext/tokenizer.hpp>
#include <megacontext/train/base_lm.hpp>
#include <megacontext/train/gist_training.hpp>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "common/random.hpp"

TEST_CASE("gist training: learned gists beat mean pooling on held-out text (ΔNLL@H)") {
  INFO(mc::test::seed_info());
  const std::filesystem::path dir = "/usr/share/common-licenses";
  std::string text;
  for (const char* name : {"GPL-3", "GPL-2", "LGPL-2.1", "Apache-2.0", "LGPL-3", "MPL-2.0", "GFDL-1.3"}) {
    std::ifstream f(dir / name, std::ios::binary);
    std::ostringstream s;
    s << f.rdbuf();
    text += s.str() + "\n";
  }
  if (text.size() < 50'000) {
    MESSAGE("license texts not found under ", dir, ": skipping");
    return;
  }
  const std::size_t cut = text.size() * 9 / 10;
  auto tok = mc::Tokenizer::train(std::string_view(text).substr(0, cut), {.vocab_size = 384});
  const auto train = tok.encode(std::string_view(text).substr(0, cut));
  const auto valid = tok.encode(std::string_view(text).substr(cut));

  // The frozen base model.
  mc::reference::LlamaOptions o;
  o.d_model = 48;
  o.n_layers = 2;
  o.n_heads = 4;
  o.d_ff = 128;
  o.n_vocab = tok.vocab_size();
  auto model = mc::reference::LlamaModel<float>::random(o, mc::test::base_seed());
  mc::train::BaseLmOptions bo;
  bo.seq_len = 48;
  bo.batch = 4;
  bo.schedule = {3e-3, 3e-4, 20, 400};
  bo.adamw.weight_decay = 0.01;
  mc::train::BaseLmTrainer<float> base(model, bo);
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
