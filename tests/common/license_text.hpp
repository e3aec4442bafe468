// SPDX-License-Identifier: Apache-2.0
// Real English text every Debian system ships (/usr/share/common-licenses), tokenised with a
// small BPE and split 90/10 by position, plus the tiny base decoder trained on it: the shared
// set-up of the tests that train something end to end on the CPU.
#pragma once

#include <doctest/doctest.h>

#include <megacontext/tokenizer.hpp>
#include <megacontext/train/base_lm.hpp>

#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "common/random.hpp"

namespace mc::test {

/// Tokenised license texts: a BPE of `vocab` ids trained on the first 90%, and both splits.
struct LicenseCorpus {
  Tokenizer tokenizer;
  std::vector<TokenId> train;
  std::vector<TokenId> valid;
};

/// The corpus, or nullopt (with a MESSAGE) when the texts are missing.
inline std::optional<LicenseCorpus> license_corpus(std::int64_t vocab = 384) {
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
    return std::nullopt;
  }
  const std::size_t cut = text.size() * 9 / 10;
  LicenseCorpus c{Tokenizer::train(std::string_view(text).substr(0, cut), {.vocab_size = vocab}),
                  {}, {}};
  c.train = c.tokenizer.encode(std::string_view(text).substr(0, cut));
  c.valid = c.tokenizer.encode(std::string_view(text).substr(cut));
  return c;
}

/// The tiny decoder the end-to-end tests use (d 48, 2 layers), untrained, from the test seed.
inline reference::LlamaModel<float> tiny_decoder(std::int64_t vocab) {
  reference::LlamaOptions o;
  o.d_model = 48;
  o.n_layers = 2;
  o.n_heads = 4;
  o.d_ff = 128;
  o.n_vocab = vocab;
  return reference::LlamaModel<float>::random(o, base_seed());
}

/// The base-LM training options of those tests (windows of 48, batch 4, 400 steps).
inline train::BaseLmOptions tiny_decoder_training() {
  train::BaseLmOptions t;
  t.seq_len = 48;
  t.batch = 4;
  t.schedule = {3e-3, 3e-4, 20, 400};
  t.adamw.weight_decay = 0.01;
  return t;
}

}  // namespace mc::test
