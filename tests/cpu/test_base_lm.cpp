// SPDX-License-Identifier: Apache-2.0
// Base-LM training end to end on the CPU: a BPE tokenizer and a tiny reference decoder trained
// on real English text (the license texts every Debian system ships), whose validation NLL must
// fall clearly below the unigram baseline; and the unigram baseline itself on a hand example.
#include <doctest/doctest.h>

#include <megacontext/tokenizer.hpp>
#include <megacontext/train/base_lm.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "common/random.hpp"

namespace {

std::string read_text(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

}  // namespace

TEST_CASE("base_lm: the unigram baseline is the add-one smoothed cross-entropy") {
  const std::vector<mc::TokenId> train = {0, 0, 1}, valid = {0, 1};
  // Counts with add-one over vocab 3: {3, 2, 1} / 6.
  const double want = -(std::log(3.0 / 6.0) + std::log(2.0 / 6.0)) / 2.0;
  CHECK(mc::train::unigram_nll(train, valid, 3) == doctest::Approx(want));
}

TEST_CASE("base_lm: a tiny decoder trained on real text beats the unigram baseline clearly") {
  INFO(mc::test::seed_info());
  const std::filesystem::path dir = "/usr/share/common-licenses";
  std::string text;
  for (const char* name : {"GPL-3", "GPL-2", "LGPL-2.1", "Apache-2.0", "LGPL-3", "MPL-2.0", "GFDL-1.3"})
    if (std::filesystem::exists(dir / name)) text += read_text(dir / name) + "\n";
  if (text.size() < 50'000) {
    MESSAGE("license texts not found under ", dir, ": skipping");
    return;
  }
  // 90% / 10% split by position.
  const std::size_t cut = text.size() * 9 / 10;
  auto tok = mc::Tokenizer::train(std::string_view(text).substr(0, cut), {.vocab_size = 384});
  const auto train = tok.encode(std::string_view(text).substr(0, cut));
  const auto valid = tok.encode(std::string_view(text).substr(cut));

  mc::reference::LlamaOptions o;
  o.d_model = 48;
  o.n_layers = 2;
  o.n_heads = 4;
  o.d_ff = 128;
  o.n_vocab = tok.vocab_size();
  auto model = mc::reference::LlamaModel<float>::random(o, mc::test::base_seed());
  mc::train::BaseLmOptions t;
  t.seq_len = 48;
  t.batch = 4;
  t.schedule = {3e-3, 3e-4, 20, 400};
  t.adamw.weight_decay = 0.01;
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
