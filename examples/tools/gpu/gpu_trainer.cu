// SPDX-License-Identifier: Apache-2.0
// GpuTrainer (gpu_trainer.hpp) over mc::cuda::DeviceLlama: the training step runs as one CUDA
// graph on a private stream; evaluation is a plain forward on the same buffers.
#include "gpu_trainer.hpp"

#include <megacontext/device_llama.cuh>
#include <megacontext/error.cuh>

#include <cuda_runtime.h>

namespace mc::tools {

struct GpuTrainer::Impl {
  cudaStream_t stream = nullptr;
  std::unique_ptr<cuda::DeviceLlama> model;
  ~Impl() {
    model.reset();
    if (stream) (void)cudaStreamDestroy(stream);
  }
};

GpuTrainer::GpuTrainer(const reference::LlamaOptions& model,
                       const reference::LlamaWeights<float>& weights, const GpuTrainOptions& o)
    : impl_(std::make_unique<Impl>()) {
  MC_CUDA_TRY(cudaStreamCreateWithFlags(&impl_->stream, cudaStreamNonBlocking));
  cuda::DeviceLlamaOptions t;
  t.adamw.weight_decay = o.weight_decay;
  t.clip = o.clip;
  t.schedule = cuda::DeviceLlamaOptions::from(o.schedule);
  impl_->model = std::make_unique<cuda::DeviceLlama>(
      model, weights, cuda::DeviceLlamaShape{o.batch, o.seq_len}, t);
}

GpuTrainer::~GpuTrainer() = default;

void GpuTrainer::step(const std::vector<TokenId>& tokens, const std::vector<TokenId>& targets) {
  impl_->model->set_batch(tokens.data(), targets.data(), impl_->stream);
  impl_->model->train_step_graph(impl_->stream);
}

float GpuTrainer::loss() { return impl_->model->loss(impl_->stream); }

float GpuTrainer::evaluate(const std::vector<TokenId>& tokens, const std::vector<TokenId>& targets) {
  impl_->model->set_batch(tokens.data(), targets.data(), impl_->stream);
  impl_->model->forward(impl_->stream);
  return impl_->model->loss(impl_->stream);
}

std::vector<float> GpuTrainer::logits() const {
  MC_CUDA_TRY(cudaStreamSynchronize(impl_->stream));
  return impl_->model->download_logits();
}

void GpuTrainer::scalars(double& lr, double& grad_norm, std::int64_t& skipped) {
  const auto s = impl_->model->optimizer_scalars(impl_->stream);
  lr = s.lr;
  grad_norm = s.grad_norm;
  skipped = static_cast<std::int64_t>(s.skipped);
}

reference::LlamaWeights<float> GpuTrainer::weights() const {
  MC_CUDA_TRY(cudaStreamSynchronize(impl_->stream));
  impl_->model->check_errors();
  return impl_->model->download_weights();
}

std::int64_t GpuTrainer::num_parameters() const { return impl_->model->num_parameters(); }
std::size_t GpuTrainer::device_bytes() const { return impl_->model->device_bytes(); }

std::string GpuTrainer::device_name() {
  int dev = 0;
  cudaDeviceProp p{};
  if (cudaGetDevice(&dev) != cudaSuccess || cudaGetDeviceProperties(&p, dev) != cudaSuccess)
    return "no CUDA device";
  return p.name;
}

}  // namespace mc::tools
