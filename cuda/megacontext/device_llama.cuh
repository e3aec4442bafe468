// SPDX-License-Identifier: Apache-2.0
// The reference Llama decoder on the GPU for training (CPU twin: mc::reference::LlamaModel in
// include/megacontext/reference/llama.hpp, and the step of mc::train::BaseLmTrainer): forward to
// the mean next-token loss over a batch of sequences [batch, seq_len], backward to the gradient
// of every weight, and an AdamW step with global-norm clipping, all on one stream. It composes
// the facades: embedding → (RMSNorm → q,k,v GEMMs → Gaussian RoPE → attention → wo GEMM →
// RMSNorm → w1,w3 GEMMs → SwiGLU → w2 GEMM) × layers → RMSNorm → tied unembedding → loss.
//
// Memory: every buffer (weights, gradients, fp64 moments, llm.c-style activations of every layer,
// backward scratch, workspaces) is carved from one allocation sized from the options and the
// batch shape in the constructor; forward/backward/step allocate nothing, never synchronise and
// read nothing back, so a whole training step is captured once in a CUDA graph and replayed
// (train_step_graph). Weights travel as reference::LlamaWeights<float>, so checkpoints keep the
// CPU safetensors format (train/checkpoint.hpp).
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "megacontext/config.hpp"
#include "megacontext/device_adamw.cuh"
#include "megacontext/device_attention.cuh"
#include "megacontext/device_cross_entropy.cuh"
#include "megacontext/device_embedding.cuh"
#include "megacontext/device_gemm.cuh"
#include "megacontext/device_rmsnorm.cuh"
#include "megacontext/device_rope.cuh"
#include "megacontext/device_swiglu.cuh"
#include "megacontext/error.cuh"
#include "megacontext/error.hpp"
#include "megacontext/reference/cross_entropy.hpp"
#include "megacontext/reference/llama.hpp"
#include "megacontext/train/adamw.hpp"
#include "megacontext/train/schedule.hpp"

namespace mc::cuda {

/// The batch a DeviceLlama is sized for: `batch` sequences of `seq_len` tokens each.
struct DeviceLlamaShape {
  std::int64_t batch = 1;     ///< sequences per step; >= 1
  std::int64_t seq_len = 64;  ///< tokens per sequence T; >= 1

  /// Rows of every activation: batch · seq_len.
  std::int64_t rows() const { return batch * seq_len; }
  /// Throws mc::Error ([mc.llama.bad_batch]) naming a bad field.
  void validate() const {
    MC_EXPECTS(batch >= 1 && seq_len >= 1 && batch <= (std::int64_t{1} << 20) &&
                   seq_len <= (std::int64_t{1} << 24) && batch * seq_len <= (std::int64_t{1} << 28),
               Errc::kInvalidArgument, "[mc.llama.bad_batch] batch = ", batch,
               ", seq_len = ", seq_len, "; need both >= 1 and batch * seq_len <= 2^28");
  }
};

/// Training options of a DeviceLlama (those of mc::train::BaseLmOptions that the device uses).
struct DeviceLlamaOptions {
  GemmMath math = GemmMath::kTf32;  ///< tensor-core mode of every GEMM (fp32 storage)
  train::AdamWOptions adamw;        ///< AdamW hyper-parameters
  /// Learning rate per step. total_steps == 0 (this default) keeps lr_max constant.
  AdamWSchedule schedule{3e-4, 3e-4, 0, 0};
  double clip = 1.0;  ///< global gradient-norm clip (0: none), mc::train::clip_grad_norm's rule

  /// The schedule of a mc::train::WarmupCosine.
  static AdamWSchedule from(const train::WarmupCosine& s) {
    return {s.lr_max, s.lr_min, s.warmup_steps, s.total_steps};
  }
};

/// The reference decoder's training step on the GPU; see the file comment. Not copyable.
class DeviceLlama {
 public:
  /// Decides which tensors get weight decay (by name, as mc::train::AdamW::DecayRule).
  using DecayRule = std::function<bool(const std::string&)>;

  /// Uploads `weights` (shapes checked against `options`) and sizes every buffer for `shape`.
  /// Throws mc::Error for bad options, shapes or a head width the attention kernels do not
  /// compile (d_head in mc::HeadDims), and mc::CudaError when the allocation fails.
  DeviceLlama(const reference::LlamaOptions& options, const reference::LlamaWeights<float>& weights,
              DeviceLlamaShape shape, DeviceLlamaOptions train = {},
              DecayRule decays = train::AdamW::default_decay)
      : opt_(options), shape_(shape), train_(std::move(train)) {
    opt_.validate();
    shape_.validate();
    train_.adamw.validate();
    MC_EXPECTS(HeadDims::contains(static_cast<int>(opt_.d_head())), Errc::kInvalidArgument,
               "[mc.llama.bad_options] d_head = ", opt_.d_head(),
               " is not compiled for the GPU attention; supported: ", HeadDims::text());
    MC_EXPECTS(opt_.d_model <= kRmsNormMaxDim && opt_.n_heads * shape_.batch <= 65535,
               Errc::kInvalidArgument, "[mc.llama.bad_options] d_model = ", opt_.d_model,
               ", n_heads * batch = ", opt_.n_heads * shape_.batch, "; need d_model <= ",
               kRmsNormMaxDim, " and n_heads * batch <= 65535");
    check_shapes(weights);
    build_tensor_table(decays);
    try {
      carve_all();
      MC_CUDA_TRY(cudaMallocHost(&h_stage_, stage_bytes()));
      MC_CUDA_TRY(cudaEventCreateWithFlags(&staged_, cudaEventDisableTiming));
      MC_CUDA_TRY(cudaMemset(arena_, 0, arena_bytes_));
      upload_decay_mask();
      reset_positions();
      upload_weights(weights);
      MC_CUDA_TRY(cudaDeviceSynchronize());
    } catch (...) {
      release();
      throw;
    }
  }
  ~DeviceLlama() { release(); }
  DeviceLlama(const DeviceLlama&) = delete;
  DeviceLlama& operator=(const DeviceLlama&) = delete;

  /// The model options.
  const reference::LlamaOptions& options() const { return opt_; }
  /// The batch shape every buffer is sized for.
  const DeviceLlamaShape& shape() const { return shape_; }
  /// The training options.
  const DeviceLlamaOptions& train_options() const { return train_; }
  /// Number of weights (the tied embedding counted once).
  std::int64_t num_parameters() const { return num_params_; }
  /// Bytes of the one device allocation.
  std::size_t device_bytes() const { return arena_bytes_; }

  /// Device buffers of the batch, int32 [batch, seq_len]: the input ids and the targets (the
  /// NEXT token of each position, or -1 for positions that do not count). Callers that produce
  /// batches on the device write here directly; ids must lie in [0, n_vocab) (an id outside gives
  /// NaN loss and sets the error flag, see check_errors()).
  TokenId* d_tokens() { return d_tokens_; }
  /// See d_tokens().
  TokenId* d_targets() { return d_targets_; }

  /// Validates `tokens` and `targets` (host, batch·seq_len each, row-major [batch, seq_len]) and
  /// copies them into d_tokens()/d_targets() on `stream` through pinned staging (waits only for
  /// the previous set_batch's copy). Throws mc::Error naming a bad id or target.
  void set_batch(const TokenId* tokens, const TokenId* targets, cudaStream_t stream = 0) {
    const std::int64_t m = shape_.rows();
    MC_EXPECTS(tokens != nullptr && targets != nullptr, Errc::kInvalidArgument,
               "[mc.llama.bad_token] set_batch needs non-null tokens and targets");
    for (std::int64_t i = 0; i < m; ++i) {
      MC_EXPECTS(tokens[i] >= 0 && tokens[i] < opt_.n_vocab, Errc::kInvalidArgument,
                 "[mc.llama.bad_token] tokens[", i, "] = ", tokens[i], "; must be in [0, ",
                 opt_.n_vocab, ")");
      MC_EXPECTS(targets[i] == reference::kIgnoreTarget ||
                     (targets[i] >= 0 && targets[i] < opt_.n_vocab),
                 Errc::kInvalidArgument, "[mc.llama.bad_token] targets[", i, "] = ", targets[i],
                 "; must be in [0, ", opt_.n_vocab, ") or -1");
    }
    MC_CUDA_TRY(cudaEventSynchronize(staged_));
    auto* stage = static_cast<TokenId*>(h_stage_);
    std::copy(tokens, tokens + m, stage);
    std::copy(targets, targets + m, stage + m);
    MC_CUDA_TRY(cudaMemcpyAsync(d_tokens_, stage, 2 * static_cast<std::size_t>(m) * sizeof(TokenId),
                                cudaMemcpyHostToDevice, stream));
    MC_CUDA_TRY(cudaEventRecord(staged_, stream));
  }

  /// Sets the (t, σ) of the positions: `count` == seq_len (shared by every sequence) or
  /// batch·seq_len (one per row). Default: t = 0..seq_len−1, σ = 0 (plain RoPE). Synchronous.
  void set_positions(const GaussianPosition* positions, std::int64_t count) {
    const std::int64_t m = shape_.rows();
    MC_EXPECTS(positions != nullptr && (count == shape_.seq_len || count == m),
               Errc::kInvalidArgument, "[mc.llama.bad_positions] ", count,
               " positions; need seq_len = ", shape_.seq_len, " or batch * seq_len = ", m);
    std::vector<GaussianPosition> all(static_cast<std::size_t>(m));
    for (std::int64_t i = 0; i < m; ++i) {
      const GaussianPosition p = positions[count == m ? i : i % shape_.seq_len];
      MC_EXPECTS(std::isfinite(p.t) && std::isfinite(p.sigma) && p.sigma >= 0,
                 Errc::kInvalidArgument, "[mc.llama.bad_positions] position ", i, " = (", p.t,
                 ", ", p.sigma, "); need finite t and finite sigma >= 0");
      all[static_cast<std::size_t>(i)] = p;
    }
    MC_CUDA_TRY(cudaMemcpy(d_positions_, all.data(), all.size() * sizeof(GaussianPosition),
                           cudaMemcpyHostToDevice));
  }

  /// Forward of the current batch: logits [rows, n_vocab] (readable with download_logits() until
  /// backward() overwrites them), the per-row NLL, and the mean loss over rows with a target
  /// (loss()). Enqueued on `stream`.
  void forward(cudaStream_t stream = 0) {
    const std::int64_t m = shape_.rows(), d = opt_.d_model, v = opt_.n_vocab;
    MC_CUDA_TRY(embedding_forward(w_.embedding, v, d, d_tokens_, m, acts_[0].x, d_error_, stream));
    for (std::size_t l = 0; l < layers_.size(); ++l) layer_forward(l, stream);
    MC_CUDA_TRY(rmsnorm_forward(x_last_, w_.final_norm, m, d, opt_.norm_eps, hf_, rstd_f_, stream));
    gemm(blas_, false, true, m, v, d, 1.0f, hf_, d, w_.embedding, d, 0.0f, logits_, v,
         train_.math, stream);
    MC_CUDA_TRY(cross_entropy_forward(logits_, d_targets_, m, v, ce_lse_, row_loss_, d_loss_,
                                      d_count_, stream));
  }

  /// Inference forward from input embeddings instead of token ids (a working context of tokens
  /// and gists): `d_embeddings` device [rows, d_model] replaces the embedding gather; writes the
  /// logits of every row (download_logits()); no loss. Positions as set by set_positions().
  void forward_embeddings(const float* d_embeddings, cudaStream_t stream = 0) {
    const std::int64_t m = shape_.rows(), d = opt_.d_model, v = opt_.n_vocab;
    MC_EXPECTS(d_embeddings != nullptr, Errc::kInvalidArgument,
               "[mc.llama.bad_batch] forward_embeddings needs non-null embeddings");
    MC_CUDA_TRY(cudaMemcpyAsync(acts_[0].x, d_embeddings, static_cast<std::size_t>(m * d) * sizeof(float),
                                cudaMemcpyDeviceToDevice, stream));
    for (std::size_t l = 0; l < layers_.size(); ++l) layer_forward(l, stream);
    MC_CUDA_TRY(rmsnorm_forward(x_last_, w_.final_norm, m, d, opt_.norm_eps, hf_, rstd_f_, stream));
    gemm(blas_, false, true, m, v, d, 1.0f, hf_, d, w_.embedding, d, 0.0f, logits_, v,
         train_.math, stream);
  }

  /// The first `rows` rows of the logits of the latest forward into host `out` [rows, n_vocab]
  /// (synchronises).
  void download_logits(std::int64_t rows, float* out) const {
    MC_EXPECTS(rows >= 0 && rows <= shape_.rows() && (rows == 0 || out != nullptr),
               Errc::kInvalidArgument, "[mc.llama.bad_batch] download_logits of ", rows,
               " rows; the batch has ", shape_.rows());
    MC_CUDA_TRY(cudaMemcpy(out, logits_, static_cast<std::size_t>(rows * opt_.n_vocab) * sizeof(float),
                           cudaMemcpyDeviceToHost));
  }

  /// Row `row` of the logits of the latest forward into host `out` [n_vocab] (synchronises).
  void download_logits_row(std::int64_t row, float* out) const {
    MC_EXPECTS(row >= 0 && row < shape_.rows() && out != nullptr, Errc::kInvalidArgument,
               "[mc.llama.bad_batch] download_logits_row(", row, ") of ", shape_.rows(), " rows");
    MC_CUDA_TRY(cudaMemcpy(out, logits_ + row * opt_.n_vocab,
                           static_cast<std::size_t>(opt_.n_vocab) * sizeof(float),
                           cudaMemcpyDeviceToHost));
  }

  /// Backward of the latest forward: the gradient of the mean loss to every weight (download
  /// with download_gradients()); overwrites the logits with dL/dlogits. Enqueued on `stream`.
  void backward(cudaStream_t stream = 0) {
    const std::int64_t m = shape_.rows(), d = opt_.d_model, v = opt_.n_vocab;
    MC_CUDA_TRY(cross_entropy_backward(logits_, d_targets_, ce_lse_, d_count_, m, v, logits_, 1.0f,
                                       stream));
    // Tied weights: the unembedding's share first (written), the embedding's added at the end.
    gemm(blas_, true, false, v, d, m, 1.0f, logits_, v, hf_, d, 0.0f, g_.embedding, d, train_.math,
         stream);
    gemm(blas_, false, false, m, d, v, 1.0f, logits_, v, w_.embedding, d, 0.0f, dxn_, d,
         train_.math, stream);
    MC_CUDA_TRY(cudaMemsetAsync(dx_, 0, static_cast<std::size_t>(m * d) * sizeof(float), stream));
    MC_CUDA_TRY(rmsnorm_backward(dxn_, x_last_, w_.final_norm, rstd_f_, m, d, dx_, g_.final_norm,
                                 norm_ws_, norm_ws_bytes_, stream));
    for (std::size_t l = layers_.size(); l-- > 0;) layer_backward(l, stream);
    MC_CUDA_TRY(embedding_backward(dx_, d_tokens_, m, v, d, g_.embedding, stream));
  }

  /// One optimiser step from the gradients of the latest backward: global-norm clipping and
  /// AdamW with the scheduled learning rate, skipped (and counted) when the norm is not finite,
  /// exactly as mc::train::BaseLmTrainer::step does on the CPU. Enqueued on `stream`.
  void step(cudaStream_t stream = 0) {
    MC_CUDA_TRY(grad_sq_norm(cub_temp_, cub_temp_bytes_, grads_, params_size_, d_sq_norm_, stream));
    MC_CUDA_TRY(
        adamw_prepare(d_sq_norm_, train_.clip, train_.schedule, hyper(), d_state_, stream));
    MC_CUDA_TRY(adamw_update(params_, grads_, m_, v_, decay_mask_, params_size_, hyper(), d_state_,
                             stream));
  }

  /// forward + backward + step on `stream`.
  void train_step(cudaStream_t stream = 0) {
    forward(stream);
    backward(stream);
    step(stream);
  }

  /// train_step() through a CUDA graph: captured on the first call (on `stream`, which must not
  /// be the legacy default stream) and replayed afterwards; the batch buffers are read at replay,
  /// so set_batch() before each call works as usual.
  void train_step_graph(cudaStream_t stream) {
    MC_EXPECTS(stream != nullptr, Errc::kInvalidArgument,
               "[mc.llama.graph_stream] train_step_graph needs a created stream, not stream 0");
    if (graph_exec_ == nullptr) {
      cudaGraph_t graph = nullptr;
      MC_CUDA_TRY(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
      try {
        train_step(stream);
      } catch (...) {
        if (cudaStreamEndCapture(stream, &graph) == cudaSuccess && graph != nullptr)
          (void)cudaGraphDestroy(graph);
        throw;
      }
      MC_CUDA_TRY(cudaStreamEndCapture(stream, &graph));
      const cudaError_t inst = cudaGraphInstantiate(&graph_exec_, graph, 0);
      (void)cudaGraphDestroy(graph);
      MC_CUDA_TRY(inst);
    }
    MC_CUDA_TRY(cudaGraphLaunch(graph_exec_, stream));
  }

  /// The mean loss of the latest forward (waits for `stream`).
  float loss(cudaStream_t stream = 0) const {
    float out = 0;
    MC_CUDA_TRY(cudaMemcpyAsync(&out, d_loss_, sizeof(float), cudaMemcpyDeviceToHost, stream));
    MC_CUDA_TRY(cudaStreamSynchronize(stream));
    return out;
  }

  /// The optimiser's device scalars (step count, skipped steps, lr, gradient norm before
  /// clipping, clip scale) after the latest step (waits for `stream`).
  AdamWDeviceState optimizer_scalars(cudaStream_t stream = 0) const {
    AdamWDeviceState s;
    MC_CUDA_TRY(cudaMemcpyAsync(&s, d_state_, sizeof(s), cudaMemcpyDeviceToHost, stream));
    MC_CUDA_TRY(cudaStreamSynchronize(stream));
    return s;
  }

  /// Throws mc::Error ([mc.llama.bad_token]) when a forward since construction met a token id
  /// outside [0, n_vocab) in d_tokens() (synchronises the device).
  void check_errors() const {
    int flag = 0;
    MC_CUDA_TRY(cudaMemcpy(&flag, d_error_, sizeof(int), cudaMemcpyDeviceToHost));
    MC_EXPECTS(flag == 0, Errc::kInvalidArgument,
               "[mc.llama.bad_token] a forward read a token id outside [0, ", opt_.n_vocab,
               ") from d_tokens()");
  }

  /// Replaces the weights (shapes checked against the options); synchronous. The optimiser
  /// moments are kept: reset them with restore_optimizer() when loading an unrelated model.
  void upload_weights(const reference::LlamaWeights<float>& weights) {
    check_shapes(weights);
    std::vector<float> flat(static_cast<std::size_t>(params_size_), 0.0f);
    // for_each_parameter hands out mutable pointers; they are only read here.
    auto& w = const_cast<reference::LlamaWeights<float>&>(weights);
    std::size_t i = 0;
    w.for_each_parameter([&](const std::string&, float* data, Eigen::Index size) {
      std::copy(data, data + size, flat.begin() + static_cast<std::ptrdiff_t>(tensors_[i++].offset));
    });
    MC_CUDA_TRY(cudaMemcpy(params_, flat.data(), flat.size() * sizeof(float), cudaMemcpyHostToDevice));
  }

  /// The current weights (synchronises the device).
  reference::LlamaWeights<float> download_weights() const { return download_flat(params_); }
  /// The gradients of the latest backward, shaped like the weights (synchronises the device).
  reference::LlamaWeights<float> download_gradients() const { return download_flat(grads_); }

  /// The logits [rows, n_vocab] of the latest forward (before backward(); synchronises).
  std::vector<float> download_logits() const {
    std::vector<float> out(static_cast<std::size_t>(shape_.rows() * opt_.n_vocab));
    MC_CUDA_TRY(cudaMemcpy(out.data(), logits_, out.size() * sizeof(float), cudaMemcpyDeviceToHost));
    return out;
  }

  /// AdamW moments by tensor name in mc::train::AdamW's format, and its step count (for
  /// train/checkpoint.hpp); synchronises the device.
  std::pair<std::map<std::string, train::AdamW::Moments>, std::int64_t> optimizer_state() const {
    std::vector<double> m(static_cast<std::size_t>(params_size_)), v(m.size());
    MC_CUDA_TRY(cudaMemcpy(m.data(), m_, m.size() * sizeof(double), cudaMemcpyDeviceToHost));
    MC_CUDA_TRY(cudaMemcpy(v.data(), v_, v.size() * sizeof(double), cudaMemcpyDeviceToHost));
    std::map<std::string, train::AdamW::Moments> out;
    for (const Tensor& t : tensors_) {
      auto& mo = out[t.name];
      const auto b = m.begin() + static_cast<std::ptrdiff_t>(t.offset);
      mo.m.assign(b, b + t.size);
      const auto c = v.begin() + static_cast<std::ptrdiff_t>(t.offset);
      mo.v.assign(c, c + t.size);
    }
    return {std::move(out), optimizer_scalars().step};
  }

  /// Restores AdamW moments (missing tensors start at zero) and the step count; synchronous.
  void restore_optimizer(const std::map<std::string, train::AdamW::Moments>& state,
                         std::int64_t steps) {
    MC_EXPECTS(steps >= 0, Errc::kInvalidArgument, "[mc.llama.bad_state] step count ", steps);
    std::vector<double> m(static_cast<std::size_t>(params_size_), 0.0), v(m.size(), 0.0);
    for (const Tensor& t : tensors_) {
      const auto it = state.find(t.name);
      if (it == state.end()) continue;
      MC_EXPECTS(it->second.m.size() == static_cast<std::size_t>(t.size) &&
                     it->second.v.size() == static_cast<std::size_t>(t.size),
                 Errc::kInvalidArgument, "[mc.llama.bad_state] moments of '", t.name, "' have ",
                 it->second.m.size(), " / ", it->second.v.size(), " values; expected ", t.size);
      std::copy(it->second.m.begin(), it->second.m.end(), m.begin() + static_cast<std::ptrdiff_t>(t.offset));
      std::copy(it->second.v.begin(), it->second.v.end(), v.begin() + static_cast<std::ptrdiff_t>(t.offset));
    }
    MC_CUDA_TRY(cudaMemcpy(m_, m.data(), m.size() * sizeof(double), cudaMemcpyHostToDevice));
    MC_CUDA_TRY(cudaMemcpy(v_, v.data(), v.size() * sizeof(double), cudaMemcpyHostToDevice));
    AdamWDeviceState s;
    s.step = steps;
    MC_CUDA_TRY(cudaMemcpy(d_state_, &s, sizeof(s), cudaMemcpyHostToDevice));
  }

 private:
  struct Tensor {
    std::string name;
    std::int64_t offset = 0;  // in floats, into the flat parameter buffer (256-byte aligned)
    std::int64_t size = 0;
    bool decay = true;
  };
  // Pointers of one layer's tensors into a flat buffer (weights or gradients).
  struct LayerPtrs {
    float* attn_norm;
    float* wq;  // wq, wk, wv follow each other at stride qkv_stride_
    float* wo;
    float* mlp_norm;
    float* w1;  // w1, w3 at stride w13_stride_
    float* w2;
  };
  struct ModelPtrs {
    float* embedding = nullptr;
    float* final_norm = nullptr;
    std::vector<LayerPtrs> layers;
  };
  // Activations of one block kept for its backward.
  struct LayerActs {
    float* x;      // [m, d] block input
    float* xn1;    // [m, d]
    float* rstd1;  // [m]
    float* qkv;    // [3, m, d] q, k (rotated), v
    float* o;      // [m, d] attention output before wo
    float* lse;    // [batch, heads, T]
    float* h;      // [m, d] x + attention
    float* xn2;    // [m, d]
    float* rstd2;  // [m]
    float* ab;     // [2, m, f] x·w1, x·w3; overwritten by their gradients in the backward
    float* g;      // [m, f] silu(a) ∘ b
  };

  // Bump allocator over one allocation: run once with a null base to measure, once to carve.
  class Carver {
   public:
    explicit Carver(std::byte* base) : base_(base) {}
    template <class T>
    T* take(std::int64_t count) {
      offset_ = (offset_ + 255) / 256 * 256;
      T* p = base_ != nullptr ? reinterpret_cast<T*>(base_ + offset_) : nullptr;
      offset_ += static_cast<std::size_t>(count) * sizeof(T);
      return p;
    }
    std::size_t bytes() const { return offset_; }

   private:
    std::byte* base_;
    std::size_t offset_ = 0;
  };

  void release() {
    if (graph_exec_ != nullptr) (void)cudaGraphExecDestroy(graph_exec_);
    if (staged_ != nullptr) (void)cudaEventDestroy(staged_);
    if (h_stage_ != nullptr) (void)cudaFreeHost(h_stage_);
    if (arena_ != nullptr) (void)cudaFree(arena_);
    graph_exec_ = nullptr;
    staged_ = nullptr;
    h_stage_ = nullptr;
    arena_ = nullptr;
  }

  AdamWHyper hyper() const {
    return {train_.adamw.beta1, train_.adamw.beta2, train_.adamw.eps, train_.adamw.weight_decay};
  }
  std::size_t stage_bytes() const { return 2 * static_cast<std::size_t>(shape_.rows()) * sizeof(TokenId); }

  void build_tensor_table(const DecayRule& decays) {
    reference::LlamaWeights<float> shapes = reference::LlamaWeights<float>::zeros(opt_);
    std::int64_t off = 0;
    shapes.for_each_parameter([&](const std::string& name, float*, Eigen::Index size) {
      tensors_.push_back({name, off, static_cast<std::int64_t>(size), decays ? decays(name) : true});
      off += (static_cast<std::int64_t>(size) + 63) / 64 * 64;  // keep every tensor 256-B aligned
      num_params_ += static_cast<std::int64_t>(size);
    });
    params_size_ = off;
    const std::int64_t d = opt_.d_model, f = opt_.d_ff;
    qkv_stride_ = (d * d + 63) / 64 * 64;
    w13_stride_ = (d * f + 63) / 64 * 64;
  }

  ModelPtrs model_ptrs(float* flat) const {
    ModelPtrs p;
    std::size_t i = 0;
    p.embedding = flat + tensors_[i++].offset;
    for (std::int64_t l = 0; l < opt_.n_layers; ++l) {
      LayerPtrs q{};
      q.attn_norm = flat + tensors_[i++].offset;
      q.wq = flat + tensors_[i++].offset;
      i += 2;  // wk, wv at wq + k·qkv_stride_
      q.wo = flat + tensors_[i++].offset;
      q.mlp_norm = flat + tensors_[i++].offset;
      q.w1 = flat + tensors_[i++].offset;
      ++i;  // w3 at w1 + w13_stride_
      q.w2 = flat + tensors_[i++].offset;
      p.layers.push_back(q);
    }
    p.final_norm = flat + tensors_[i++].offset;
    return p;
  }

  void carve(Carver& c) {
    const std::int64_t m = shape_.rows(), d = opt_.d_model, f = opt_.d_ff, v = opt_.n_vocab;
    const std::int64_t heads = opt_.n_heads;
    params_ = c.take<float>(params_size_);
    grads_ = c.take<float>(params_size_);
    m_ = c.take<double>(params_size_);
    v_ = c.take<double>(params_size_);
    decay_mask_ = c.take<std::uint8_t>(params_size_);
    acts_.assign(static_cast<std::size_t>(opt_.n_layers), LayerActs{});
    for (LayerActs& a : acts_) {
      a.x = c.take<float>(m * d);
      a.xn1 = c.take<float>(m * d);
      a.rstd1 = c.take<float>(m);
      a.qkv = c.take<float>(3 * m * d);
      a.o = c.take<float>(m * d);
      a.lse = c.take<float>(m * heads);
      a.h = c.take<float>(m * d);
      a.xn2 = c.take<float>(m * d);
      a.rstd2 = c.take<float>(m);
      a.ab = c.take<float>(2 * m * f);
      a.g = c.take<float>(m * f);
    }
    x_last_ = c.take<float>(m * d);
    hf_ = c.take<float>(m * d);
    rstd_f_ = c.take<float>(m);
    logits_ = c.take<float>(m * v);
    ce_lse_ = c.take<float>(m);
    row_loss_ = c.take<float>(m);
    d_loss_ = c.take<float>(1);
    d_count_ = c.take<int>(1);
    d_error_ = c.take<int>(1);
    d_sq_norm_ = c.take<double>(1);
    d_state_ = c.take<AdamWDeviceState>(1);
    d_tokens_ = c.take<TokenId>(2 * m);  // tokens then targets: one staging copy
    d_targets_ = d_tokens_ != nullptr ? d_tokens_ + m : nullptr;
    d_positions_ = c.take<GaussianPosition>(m);
    dx_ = c.take<float>(m * d);
    dxn_ = c.take<float>(m * d);
    d_o_ = c.take<float>(m * d);
    dqkv_ = c.take<float>(3 * m * d);
    dg_ = c.take<float>(m * f);
    attn_ws_bytes_ = attention_backward_workspace_bytes(shape_.batch, shape_.seq_len,
                                                        static_cast<int>(heads),
                                                        static_cast<int>(opt_.d_head()));
    attn_ws_ = c.take<std::byte>(static_cast<std::int64_t>(attn_ws_bytes_));
    norm_ws_bytes_ = rmsnorm_backward_workspace_bytes(m, d);
    norm_ws_ = c.take<std::byte>(static_cast<std::int64_t>(norm_ws_bytes_));
    cub_temp_bytes_ = 0;
    MC_CUDA_TRY(grad_sq_norm(nullptr, cub_temp_bytes_, nullptr, params_size_, nullptr));
    cub_temp_ = c.take<std::byte>(static_cast<std::int64_t>(cub_temp_bytes_));
  }

  void carve_all() {
    Carver measure(nullptr);
    carve(measure);
    arena_bytes_ = measure.bytes();
    MC_CUDA_TRY(cudaMalloc(&arena_, arena_bytes_));
    Carver real(static_cast<std::byte*>(arena_));
    carve(real);
    w_ = model_ptrs(params_);
    g_ = model_ptrs(grads_);
    layers_ = w_.layers;
  }

  void upload_decay_mask() {
    std::vector<std::uint8_t> mask(static_cast<std::size_t>(params_size_), 0);
    for (const Tensor& t : tensors_)
      std::fill_n(mask.begin() + static_cast<std::ptrdiff_t>(t.offset), t.size,
                  static_cast<std::uint8_t>(t.decay ? 1 : 0));
    MC_CUDA_TRY(cudaMemcpy(decay_mask_, mask.data(), mask.size(), cudaMemcpyHostToDevice));
  }

  void reset_positions() {
    std::vector<GaussianPosition> p(static_cast<std::size_t>(shape_.seq_len));
    for (std::size_t i = 0; i < p.size(); ++i) p[i] = {static_cast<double>(i), 0.0};
    set_positions(p.data(), shape_.seq_len);
  }

  void check_shapes(const reference::LlamaWeights<float>& w) const {
    const auto d = opt_.d_model, f = opt_.d_ff;
    auto expect = [](const auto& x, Eigen::Index r, Eigen::Index c, const std::string& what) {
      MC_EXPECTS(x.rows() == r && x.cols() == c, Errc::kInvalidArgument,
                 "[mc.llama.bad_weights] ", what, " is ", x.rows(), " x ", x.cols(),
                 "; expected ", r, " x ", c);
    };
    MC_EXPECTS(w.layers.size() == static_cast<std::size_t>(opt_.n_layers), Errc::kInvalidArgument,
               "[mc.llama.bad_weights] ", w.layers.size(), " layers; options say ", opt_.n_layers);
    expect(w.embedding, opt_.n_vocab, d, "embedding");
    expect(w.final_norm, d, 1, "final_norm");
    for (const auto& l : w.layers) {
      expect(l.attn_norm, d, 1, "attn_norm");
      expect(l.mlp_norm, d, 1, "mlp_norm");
      expect(l.attn.wq, d, d, "attn.wq");
      expect(l.attn.wk, d, d, "attn.wk");
      expect(l.attn.wv, d, d, "attn.wv");
      expect(l.attn.wo, d, d, "attn.wo");
      expect(l.mlp.w1, d, f, "mlp.w1");
      expect(l.mlp.w3, d, f, "mlp.w3");
      expect(l.mlp.w2, f, d, "mlp.w2");
    }
  }

  reference::LlamaWeights<float> download_flat(const float* flat) const {
    std::vector<float> host(static_cast<std::size_t>(params_size_));
    MC_CUDA_TRY(cudaMemcpy(host.data(), flat, host.size() * sizeof(float), cudaMemcpyDeviceToHost));
    reference::LlamaWeights<float> w = reference::LlamaWeights<float>::zeros(opt_);
    std::size_t i = 0;
    w.for_each_parameter([&](const std::string&, float* data, Eigen::Index size) {
      const auto b = host.begin() + static_cast<std::ptrdiff_t>(tensors_[i++].offset);
      std::copy(b, b + size, data);
    });
    return w;
  }

  void layer_forward(std::size_t l, cudaStream_t s) {
    const std::int64_t m = shape_.rows(), d = opt_.d_model, f = opt_.d_ff;
    const int heads = static_cast<int>(opt_.n_heads), dh = static_cast<int>(opt_.d_head());
    const LayerPtrs& w = layers_[l];
    const LayerActs& a = acts_[l];
    float* out = l + 1 < acts_.size() ? acts_[l + 1].x : x_last_;
    float* q = a.qkv;
    float* k = a.qkv + m * d;
    float* v = a.qkv + 2 * m * d;
    MC_CUDA_TRY(rmsnorm_forward(a.x, w.attn_norm, m, d, opt_.norm_eps, a.xn1, a.rstd1, s));
    gemm_strided_batched(blas_, false, false, m, d, d, 1.0f, a.xn1, d, 0, w.wq, d, qkv_stride_,
                         0.0f, a.qkv, d, m * d, 3, train_.math, s);
    MC_CUDA_TRY(apply_gaussian_rope(q, q, d_positions_, m, heads, opt_.rope(), s));
    MC_CUDA_TRY(apply_gaussian_rope(k, k, d_positions_, m, heads, opt_.rope(), s));
    MC_CUDA_TRY(attention_forward(q, k, v, a.o, a.lse, shape_.batch, shape_.seq_len, heads, dh, s));
    // h = x + o·wo: the GEMM accumulates onto a copy of the residual.
    MC_CUDA_TRY(cudaMemcpyAsync(a.h, a.x, static_cast<std::size_t>(m * d) * sizeof(float),
                                cudaMemcpyDeviceToDevice, s));
    gemm(blas_, false, false, m, d, d, 1.0f, a.o, d, w.wo, d, 1.0f, a.h, d, train_.math, s);
    MC_CUDA_TRY(rmsnorm_forward(a.h, w.mlp_norm, m, d, opt_.norm_eps, a.xn2, a.rstd2, s));
    gemm_strided_batched(blas_, false, false, m, f, d, 1.0f, a.xn2, d, 0, w.w1, f, w13_stride_,
                         0.0f, a.ab, f, m * f, 2, train_.math, s);
    MC_CUDA_TRY(swiglu_forward(a.ab, a.ab + m * f, m * f, a.g, s));
    MC_CUDA_TRY(cudaMemcpyAsync(out, a.h, static_cast<std::size_t>(m * d) * sizeof(float),
                                cudaMemcpyDeviceToDevice, s));
    gemm(blas_, false, false, m, d, f, 1.0f, a.g, f, w.w2, d, 1.0f, out, d, train_.math, s);
  }

  // On entry dx_ holds dL/d(block output); on exit dL/d(block input).
  void layer_backward(std::size_t l, cudaStream_t s) {
    const std::int64_t m = shape_.rows(), d = opt_.d_model, f = opt_.d_ff;
    const int heads = static_cast<int>(opt_.n_heads), dh = static_cast<int>(opt_.d_head());
    const LayerPtrs& w = layers_[l];
    const LayerPtrs& g = g_.layers[l];
    const LayerActs& a = acts_[l];
    const GemmMath mm = train_.math;
    float* da = a.ab;
    float* db = a.ab + m * f;
    // MLP: out = h + (silu(xn2·w1) ∘ xn2·w3)·w2.
    gemm(blas_, true, false, f, d, m, 1.0f, a.g, f, dx_, d, 0.0f, g.w2, d, mm, s);
    gemm(blas_, false, true, m, f, d, 1.0f, dx_, d, w.w2, d, 0.0f, dg_, f, mm, s);
    MC_CUDA_TRY(swiglu_backward(dg_, a.ab, a.ab + m * f, m * f, da, db, s));
    gemm_strided_batched(blas_, true, false, d, f, m, 1.0f, a.xn2, d, 0, a.ab, f, m * f, 0.0f,
                         g.w1, f, w13_stride_, 2, mm, s);
    gemm(blas_, false, true, m, d, f, 1.0f, da, f, w.w1, f, 0.0f, dxn_, d, mm, s);
    gemm(blas_, false, true, m, d, f, 1.0f, db, f, w.w1 + w13_stride_, f, 1.0f, dxn_, d, mm, s);
    MC_CUDA_TRY(rmsnorm_backward(dxn_, a.h, w.mlp_norm, a.rstd2, m, d, dx_, g.mlp_norm, norm_ws_,
                                 norm_ws_bytes_, s));
    // Attention: h = x + attn(xn1)·wo.
    gemm(blas_, true, false, d, d, m, 1.0f, a.o, d, dx_, d, 0.0f, g.wo, d, mm, s);
    gemm(blas_, false, true, m, d, d, 1.0f, dx_, d, w.wo, d, 0.0f, d_o_, d, mm, s);
    float* dq = dqkv_;
    float* dk = dqkv_ + m * d;
    float* dv = dqkv_ + 2 * m * d;
    MC_CUDA_TRY(attention_backward(a.qkv, a.qkv + m * d, a.qkv + 2 * m * d, a.o, a.lse, d_o_, dq,
                                   dk, dv, attn_ws_, attn_ws_bytes_, shape_.batch, shape_.seq_len,
                                   heads, dh, s));
    MC_CUDA_TRY(apply_gaussian_rope_backward(dq, dq, d_positions_, m, heads, opt_.rope(), s));
    MC_CUDA_TRY(apply_gaussian_rope_backward(dk, dk, d_positions_, m, heads, opt_.rope(), s));
    gemm_strided_batched(blas_, true, false, d, d, m, 1.0f, a.xn1, d, 0, dqkv_, d, m * d, 0.0f,
                         g.wq, d, qkv_stride_, 3, mm, s);
    for (int i = 0; i < 3; ++i)
      gemm(blas_, false, true, m, d, d, 1.0f, dqkv_ + i * m * d, d, w.wq + i * qkv_stride_, d,
           i == 0 ? 0.0f : 1.0f, dxn_, d, mm, s);
    MC_CUDA_TRY(rmsnorm_backward(dxn_, a.x, w.attn_norm, a.rstd1, m, d, dx_, g.attn_norm, norm_ws_,
                                 norm_ws_bytes_, s));
  }

  reference::LlamaOptions opt_;
  DeviceLlamaShape shape_;
  DeviceLlamaOptions train_;
  CublasHandle blas_;
  std::vector<Tensor> tensors_;
  std::int64_t params_size_ = 0;  // floats in the flat buffers, padding included
  std::int64_t num_params_ = 0;
  std::int64_t qkv_stride_ = 0;
  std::int64_t w13_stride_ = 0;

  void* arena_ = nullptr;
  std::size_t arena_bytes_ = 0;
  void* h_stage_ = nullptr;
  cudaEvent_t staged_ = nullptr;
  cudaGraphExec_t graph_exec_ = nullptr;

  float* params_ = nullptr;
  float* grads_ = nullptr;
  double* m_ = nullptr;
  double* v_ = nullptr;
  std::uint8_t* decay_mask_ = nullptr;
  ModelPtrs w_;
  ModelPtrs g_;
  std::vector<LayerPtrs> layers_;
  std::vector<LayerActs> acts_;
  float* x_last_ = nullptr;
  float* hf_ = nullptr;
  float* rstd_f_ = nullptr;
  float* logits_ = nullptr;
  float* ce_lse_ = nullptr;
  float* row_loss_ = nullptr;
  float* d_loss_ = nullptr;
  int* d_count_ = nullptr;
  int* d_error_ = nullptr;
  double* d_sq_norm_ = nullptr;
  AdamWDeviceState* d_state_ = nullptr;
  TokenId* d_tokens_ = nullptr;
  TokenId* d_targets_ = nullptr;
  GaussianPosition* d_positions_ = nullptr;
  float* dx_ = nullptr;
  float* dxn_ = nullptr;
  float* d_o_ = nullptr;
  float* dqkv_ = nullptr;
  float* dg_ = nullptr;
  void* attn_ws_ = nullptr;
  std::size_t attn_ws_bytes_ = 0;
  void* norm_ws_ = nullptr;
  std::size_t norm_ws_bytes_ = 0;
  void* cub_temp_ = nullptr;
  std::size_t cub_temp_bytes_ = 0;
};

}  // namespace mc::cuda
