// SPDX-License-Identifier: Apache-2.0
// Kernels of AdamW on the device (facade: cuda/megacontext/device_adamw.cuh). The per-step
// scalars (step count, bias corrections, learning rate from the schedule, clip scale, skip flag)
// are computed on the device by a one-thread kernel from the gradient norm, so a whole training
// step can be captured in a CUDA graph and replayed without the host reading anything. The
// update follows mc::train::AdamW (include/megacontext/train/adamw.hpp) step by step, in fp64
// with fp64 moments, and the clipping follows mc::train::clip_grad_norm (train/schedule.hpp).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

namespace mc::cuda {

/// AdamW hyper-parameters (the fields of mc::train::AdamWOptions, kept Eigen-free here).
struct AdamWHyper {
  double beta1 = 0.9;         ///< first-moment decay, in [0, 1)
  double beta2 = 0.95;        ///< second-moment decay, in [0, 1)
  double eps = 1e-8;          ///< added to √v̂; > 0
  double weight_decay = 0.1;  ///< decoupled decay λ for tensors the decay mask selects; >= 0
};

/// Learning rate per 1-based step, mc::train::WarmupCosine's formula: linear warm-up to lr_max
/// over warmup_steps, cosine to lr_min at total_steps, lr_min after. total_steps == 0 means a
/// constant lr_max.
struct AdamWSchedule {
  double lr_max = 3e-4;
  double lr_min = 3e-5;
  std::int64_t warmup_steps = 0;
  std::int64_t total_steps = 0;
};

/// Device-resident optimiser scalars; zero-initialise before the first step (cudaMemset).
struct AdamWDeviceState {
  std::int64_t step = 0;     ///< steps taken (skipped steps do not count), as AdamW::step_count
  std::int64_t skipped = 0;  ///< steps skipped for a non-finite gradient norm
  double lr = 0.0;           ///< learning rate of the latest step
  double grad_norm = 0.0;    ///< global gradient norm of the latest step, before clipping
  double clip_scale = 1.0;   ///< factor the gradients were multiplied by (1 unless clipped)
  double c1 = 1.0;           ///< 1 − β1^step
  double c2 = 1.0;           ///< 1 − β2^step
  int skip = 0;              ///< 1 when the latest step was skipped
};
static_assert(std::is_trivially_copyable_v<AdamWDeviceState>);

namespace detail {

inline constexpr int kAdamWThreads = 256;

__device__ inline double adamw_schedule_lr(const AdamWSchedule& s, std::int64_t step) {
  if (s.total_steps == 0) return s.lr_max;
  if (step <= s.warmup_steps)
    return s.lr_max * static_cast<double>(step) / static_cast<double>(s.warmup_steps);
  if (step >= s.total_steps) return s.lr_min;
  const double progress = static_cast<double>(step - s.warmup_steps) /
                          static_cast<double>(s.total_steps - s.warmup_steps);
  return s.lr_min + 0.5 * (s.lr_max - s.lr_min) * (1.0 + cos(3.14159265358979323846 * progress));
}

// One thread: the step's scalars from the squared gradient norm (null: no clipping, norm 0).
__global__ void adamw_prepare_kernel(const double* sq_norm, double clip, AdamWSchedule schedule,
                                     AdamWHyper hyper, AdamWDeviceState* state) {
  AdamWDeviceState s = *state;
  const double norm = sq_norm != nullptr ? sqrt(*sq_norm) : 0.0;
  s.grad_norm = norm;
  s.clip_scale = 1.0;
  if (!isfinite(norm)) {
    s.skip = 1;
    ++s.skipped;
  } else {
    s.skip = 0;
    if (clip > 0.0 && norm > clip) s.clip_scale = clip / norm;
    ++s.step;
    s.c1 = 1.0 - pow(hyper.beta1, static_cast<double>(s.step));
    s.c2 = 1.0 - pow(hyper.beta2, static_cast<double>(s.step));
    s.lr = adamw_schedule_lr(schedule, s.step);
  }
  *state = s;
}

// p −= lr·(m̂/(√v̂ + ε) + λ·p) per element, with the clipped gradient rounded to fp32 first (the
// CPU loop clips the fp32 gradient buffer in place before AdamW reads it).
__global__ void __launch_bounds__(kAdamWThreads)
    adamw_update_kernel(float* params, const float* grads, double* m, double* v,
                        const std::uint8_t* decay_mask, std::int64_t n, AdamWHyper hyper,
                        const AdamWDeviceState* state) {
  const AdamWDeviceState s = *state;
  if (s.skip != 0) return;
  const double b1 = hyper.beta1, b2 = hyper.beta2;
  for (std::int64_t k = blockIdx.x * std::int64_t{kAdamWThreads} + threadIdx.x; k < n;
       k += std::int64_t{gridDim.x} * kAdamWThreads) {
    double g = static_cast<double>(grads[k]);
    if (s.clip_scale != 1.0) g = static_cast<double>(static_cast<float>(g * s.clip_scale));
    const double mk = b1 * m[k] + (1 - b1) * g;
    const double vk = b2 * v[k] + (1 - b2) * g * g;
    m[k] = mk;
    v[k] = vk;
    const double decay = (decay_mask == nullptr || decay_mask[k] != 0) ? hyper.weight_decay : 0.0;
    const double p = static_cast<double>(params[k]);
    const double update = (mk / s.c1) / (sqrt(vk / s.c2) + hyper.eps) + decay * p;
    params[k] = static_cast<float>(p - s.lr * update);
  }
}

struct SquareToDouble {
  __host__ __device__ double operator()(float g) const {
    const double d = static_cast<double>(g);
    return d * d;
  }
};

}  // namespace detail
}  // namespace mc::cuda
