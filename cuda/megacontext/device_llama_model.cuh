// SPDX-License-Identifier: Apache-2.0
// The reference decoder on the GPU as a mc::BaseModel, so that the same mc::Session runs on the
// CPU (reference::LlamaModel) and on the GPU (this). It wraps a DeviceLlama sized for one
// sequence of `max_rows` rows: forward() uploads the assembled working context (tokens and gists
// as embeddings, with their Gaussian positions), runs the decoder on the device and downloads the
// logits. Rows past n hold what an earlier call left; rows < n never see them (causal attention).
// Token embeddings for embed() come from a host copy of the table, as the CPU model's do.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "megacontext/device_llama.cuh"
#include "megacontext/error.cuh"
#include "megacontext/error.hpp"
#include "megacontext/model.hpp"
#include "megacontext/reference/llama.hpp"

namespace mc::cuda {

/// mc::BaseModel over a DeviceLlama (causal attention only; no KV cache, so the Session runs a
/// full forward of the context for each new logits row).
class DeviceLlamaModel {
 public:
  using Scalar = float;

  /// Uploads `weights` and sizes the device buffers for contexts of up to `max_rows` rows.
  DeviceLlamaModel(const reference::LlamaOptions& options,
                   const reference::LlamaWeights<float>& weights, std::int64_t max_rows,
                   GemmMath math = GemmMath::kTf32)
      : options_(options),
        table_(weights.embedding),
        max_rows_(max_rows),
        model_(options, weights, DeviceLlamaShape{1, max_rows}, train_options(math)) {
    MC_CUDA_TRY(cudaMalloc(&d_in_, static_cast<std::size_t>(max_rows * options.d_model) * sizeof(float)));
    MC_CUDA_TRY(cudaMemset(d_in_, 0, static_cast<std::size_t>(max_rows * options.d_model) * sizeof(float)));
    positions_.resize(static_cast<std::size_t>(max_rows));
  }
  ~DeviceLlamaModel() {
    if (d_in_ != nullptr) (void)cudaFree(d_in_);
  }
  DeviceLlamaModel(const DeviceLlamaModel&) = delete;
  DeviceLlamaModel& operator=(const DeviceLlamaModel&) = delete;

  /// Sizes MegaContext reads.
  ModelDims dims() const { return {options_.d_model, options_.n_vocab}; }
  /// Embedding width.
  std::int64_t dim() const { return options_.d_model; }
  /// Most rows one forward takes.
  std::int64_t max_rows() const { return max_rows_; }

  /// Token embeddings of `ids` into host `out` [n, d] (from the host copy of the table).
  void embed(const TokenId* ids, std::int64_t n, float* out) const {
    for (std::int64_t i = 0; i < n; ++i) {
      MC_EXPECTS(ids[i] >= 0 && ids[i] < options_.n_vocab, Errc::kInvalidArgument,
                 "[mc.llama.bad_token] ids[", i, "] = ", ids[i], "; must be in [0, ",
                 options_.n_vocab, ")");
      std::copy_n(table_.data() + static_cast<std::int64_t>(ids[i]) * options_.d_model,
                  options_.d_model, out + i * options_.d_model);
    }
  }

  /// mc::BaseModel::forward on the GPU: host `embeddings` [n, d] at `positions` [n] → host
  /// `logits` [n, V]. `mask` must be null (causal by row order). Throws mc::Error for a mask or
  /// n outside [1, max_rows()].
  void forward(const float* embeddings, const GaussianPosition* positions, std::int64_t n,
               const std::uint8_t* mask, float* logits) {
    MC_EXPECTS(mask == nullptr, Errc::kInvalidArgument,
               "[mc.llama.bad_mask] the GPU decoder runs causal attention only; pass mask = "
               "nullptr");
    run(embeddings, positions, n, logits);
    model_.download_logits(n, logits);
  }

  /// The logits [V] of row n-1 only (mc::model_traits::has_forward_last): what a Session needs
  /// for the next token, one row's download instead of n.
  void forward_last(const float* embeddings, const GaussianPosition* positions, std::int64_t n,
                    float* logits) {
    run(embeddings, positions, n, logits);
    model_.download_logits_row(n - 1, logits);
  }

 private:
  void run(const float* embeddings, const GaussianPosition* positions, std::int64_t n,
           const float* logits) {
    MC_EXPECTS(n >= 1 && n <= max_rows_ && embeddings != nullptr && positions != nullptr &&
                   logits != nullptr,
               Errc::kInvalidArgument, "[mc.llama.bad_shape] forward of n = ", n,
               " rows; this GPU model takes 1..", max_rows_, " (and non-null buffers)");
    // Rows past n get positions after the last one (finite, never attended by rows < n).
    std::copy_n(positions, n, positions_.begin());
    for (std::int64_t i = n; i < max_rows_; ++i)
      positions_[static_cast<std::size_t>(i)] = {positions[n - 1].t + static_cast<double>(i - n + 1), 0.0};
    model_.set_positions(positions_.data(), max_rows_);
    MC_CUDA_TRY(cudaMemcpy(d_in_, embeddings, static_cast<std::size_t>(n * options_.d_model) * sizeof(float),
                           cudaMemcpyHostToDevice));
    model_.forward_embeddings(d_in_);
  }

  static DeviceLlamaOptions train_options(GemmMath math) {
    DeviceLlamaOptions t;
    t.math = math;
    return t;
  }

  reference::LlamaOptions options_;
  RowMatrix<float> table_;
  std::int64_t max_rows_;
  DeviceLlama model_;
  float* d_in_ = nullptr;
  std::vector<GaussianPosition> positions_;
};

static_assert(BaseModel<DeviceLlamaModel> && model_traits<DeviceLlamaModel>::has_forward_last);

}  // namespace mc::cuda
