// SPDX-License-Identifier: Apache-2.0
// The shared set-up of the LensNet and alternating-schedule tests: the synthetic recall task
// (train/recall_task.hpp) with K = 4 blocks, a tiny decoder trained on it in-window, and small
// GistNet / LensNet options for d = 32.
#pragma once

#include <megacontext/gist_net.hpp>
#include <megacontext/lens_net.hpp>
#include <megacontext/train/recall_task.hpp>

#include <cmath>

#include "common/random.hpp"

namespace mc::test {

/// Tree config of the recall tests: one fact per LOD1 gist of K = 4 tokens.
using RecallConfig = Config<4, 1>;

/// Six fact blocks over 8 keys and 8 values; eight queries per training episode.
inline train::RecallTaskOptions recall_task() {
  train::RecallTaskOptions t;
  t.num_queries = 8;
  return t;
}

/// A d = 32, 2-layer decoder trained on recall episodes: `steps` steps on the answers alone (the
/// lookup forms fast), then `steps` on every next token (so it is calibrated on the noise tokens
/// that ΔNLL@H also scores). The init std of 0.1 (not 0.02) matters: at 0.02 the query-key
/// attention stayed flat for 1,500 steps.
inline reference::LlamaModel<float> recall_decoder(std::int64_t steps = 400) {
  const auto task = recall_task();
  reference::LlamaOptions o;
  o.d_model = 32;
  o.n_layers = 2;
  o.n_heads = 2;
  o.d_ff = 64;
  o.n_vocab = task.vocab();
  o.init_std = 0.1;
  auto model = reference::LlamaModel<float>::random(o, base_seed());
  train::BaseLmOptions t;
  t.batch = 16;
  t.schedule = {3e-3, 3e-4, 50, steps};
  t.adamw.weight_decay = 0.01;
  for (const bool answers_only : {true, false}) {
    t.seed = base_seed() + (answers_only ? 3 : 4);
    train::RecallLmTrainer<float> trainer(model, task, t, answers_only);
    for (std::int64_t s = 0; s < steps; ++s) trainer.step();
  }
  return model;
}

/// LensNet for d = 32 reading the two query tokens "? key".
inline LensNetOptions recall_lens_options() {
  LensNetOptions o;
  o.d_in = 32;
  o.d_model = 32;
  o.n_layers = 1;
  o.n_heads = 2;
  o.d_ff = 64;
  o.num_query = 2;
  o.max_lod = 1;
  return o;
}

/// GistNet for d = 32 over K = 4, its output at the RMS of the model's token embeddings.
inline GistNetOptions recall_gist_options(const reference::LlamaModel<float>& model) {
  GistNetOptions g;
  g.d_model = 32;
  g.n_layers = 1;
  g.n_heads = 2;
  g.d_attn = 32;
  g.d_ff = 64;
  g.d_pool = 32;
  g.out_gain = std::sqrt(static_cast<double>(model.weights().embedding.squaredNorm()) /
                         static_cast<double>(model.weights().embedding.size()));
  return g;
}

}  // namespace mc::test
