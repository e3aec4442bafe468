// SPDX-License-Identifier: Apache-2.0
// Host-side face of the GPU decoder trainer used by mc_train_gpu: plain C++ types only, so the
// command-line program (data, tokenizer, checkpoints: g++) and the device code (nvcc) meet here.
// The implementation (gpu_trainer.cu) wraps mc::cuda::DeviceLlama.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include <megacontext/config.hpp>
#include <megacontext/reference/llama.hpp>
#include <megacontext/train/schedule.hpp>

namespace mc::tools {

/// Options of one GPU training run.
struct GpuTrainOptions {
  std::int64_t batch = 16;       ///< sequences per step
  std::int64_t seq_len = 1024;   ///< tokens per sequence
  train::WarmupCosine schedule;  ///< learning rate per step
  double weight_decay = 0.1;     ///< AdamW decoupled decay
  double clip = 1.0;             ///< global gradient-norm clip
};

/// A DeviceLlama behind a pimpl.
class GpuTrainer {
 public:
  GpuTrainer(const reference::LlamaOptions& model, const reference::LlamaWeights<float>& weights,
             const GpuTrainOptions& options);
  ~GpuTrainer();
  GpuTrainer(const GpuTrainer&) = delete;
  GpuTrainer& operator=(const GpuTrainer&) = delete;

  /// One step on `tokens` / `targets` (batch·seq_len each, row-major; -1 = no target).
  void step(const std::vector<TokenId>& tokens, const std::vector<TokenId>& targets);
  /// Mean loss of the latest step's (or evaluate's) forward; synchronises.
  float loss();
  /// Forward only (no update) of a batch; returns its mean loss.
  float evaluate(const std::vector<TokenId>& tokens, const std::vector<TokenId>& targets);
  /// Logits [batch·seq_len, n_vocab] of the latest evaluate() (synchronises).
  std::vector<float> logits() const;
  /// Current learning rate and pre-clip gradient norm of the latest step; synchronises.
  void scalars(double& lr, double& grad_norm, std::int64_t& skipped);
  /// The weights now (synchronises).
  reference::LlamaWeights<float> weights() const;
  /// Weights count and device memory used.
  std::int64_t num_parameters() const;
  std::size_t device_bytes() const;
  /// Name of the GPU.
  static std::string device_name();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace mc::tools
