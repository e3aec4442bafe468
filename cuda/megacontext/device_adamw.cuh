// SPDX-License-Identifier: Apache-2.0
// GPU facade of the training step's optimiser (CPU twins: mc::train::AdamW in
// include/megacontext/train/adamw.hpp and mc::train::clip_grad_norm in train/schedule.hpp):
// global gradient norm (CUB DeviceReduce, two-phase workspace), the step's scalars on the device
// (clip scale, skip on a non-finite norm, step count, bias corrections, scheduled learning rate)
// and the elementwise update over one flat parameter buffer with fp64 moments. Nothing is read
// back to the host, so DeviceLlama's whole step is graph-capturable. Kernels:
// detail/kernels/adamw_kernels.cuh.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cub/device/device_reduce.cuh>
#include <cuda/std/functional>
#include <limits>

#include "megacontext/detail/kernels/adamw_kernels.cuh"
#include "megacontext/error.cuh"
#include "megacontext/error.hpp"

namespace mc::cuda {

namespace detail {

inline void check_adamw_hyper(const AdamWHyper& h) {
  MC_EXPECTS(h.beta1 >= 0 && h.beta1 < 1 && h.beta2 >= 0 && h.beta2 < 1, Errc::kInvalidArgument,
             "[mc.adamw.bad_options] beta1 = ", h.beta1, ", beta2 = ", h.beta2,
             "; both must be in [0, 1)");
  MC_EXPECTS(h.eps > 0 && h.weight_decay >= 0 && std::isfinite(h.weight_decay),
             Errc::kInvalidArgument, "[mc.adamw.bad_options] eps = ", h.eps,
             ", weight_decay = ", h.weight_decay, "; need eps > 0 and a finite weight_decay >= 0");
}

}  // namespace detail

/// CUB two-phase call: with `d_temp` null, sets `temp_bytes` to the workspace needed and returns;
/// otherwise writes *d_sq_norm = Σ grads[k]² (fp64) over the `n` fp32 values of `d_grads`.
/// Throws mc::Error for n < 0 or null pointers (second phase); returns CUB's status.
inline cudaError_t grad_sq_norm(void* d_temp, std::size_t& temp_bytes, const float* d_grads,
                                std::int64_t n, double* d_sq_norm, cudaStream_t stream = 0) {
  MC_EXPECTS(n >= 0, Errc::kInvalidArgument, "[mc.adamw.bad_shape] grad_sq_norm n = ", n,
             "; must be >= 0");
  if (d_temp != nullptr)
    MC_EXPECTS(d_sq_norm != nullptr && (n == 0 || d_grads != nullptr), Errc::kInvalidArgument,
               "[mc.adamw.null_pointer] grad_sq_norm: grads or output is null with n = ", n);
  const cudaError_t st = cub::DeviceReduce::TransformReduce(
      d_temp, temp_bytes, d_grads, d_sq_norm, n, ::cuda::std::plus<double>{},
      detail::SquareToDouble{}, 0.0, stream);
  if (d_temp == nullptr) return st;
  MC_CUDA_RETURN_IF_ERROR(st);
  return detail::after_launch(stream);
}

/// Computes the step's scalars into `d_state` (device AdamWDeviceState, zeroed before the first
/// step): norm = √(*d_sq_norm) (null: no clipping); a non-finite norm marks the step skipped (as
/// the CPU loop skips it) and leaves the step count alone; otherwise step += 1, clip_scale =
/// clip/norm when clip > 0 and norm > clip, bias corrections and lr = schedule(step). Throws
/// mc::Error for bad hyper-parameters, a negative or non-finite clip, a bad schedule or a null
/// state.
inline cudaError_t adamw_prepare(const double* d_sq_norm, double clip, const AdamWSchedule& schedule,
                                 const AdamWHyper& hyper, AdamWDeviceState* d_state,
                                 cudaStream_t stream = 0) {
  detail::check_adamw_hyper(hyper);
  MC_EXPECTS(clip >= 0 && std::isfinite(clip), Errc::kInvalidArgument,
             "[mc.adamw.bad_clip] clip = ", clip, "; must be finite and >= 0 (0: no clipping)");
  MC_EXPECTS(schedule.lr_max >= 0 && schedule.lr_min >= 0 && std::isfinite(schedule.lr_max) &&
                 std::isfinite(schedule.lr_min) &&
                 (schedule.total_steps == 0 ||
                  (schedule.warmup_steps >= 0 && schedule.total_steps > schedule.warmup_steps)),
             Errc::kInvalidArgument, "[mc.adamw.bad_schedule] lr_max = ", schedule.lr_max,
             ", lr_min = ", schedule.lr_min, ", warmup_steps = ", schedule.warmup_steps,
             ", total_steps = ", schedule.total_steps,
             "; need finite lr >= 0 and 0 <= warmup_steps < total_steps (or total_steps = 0)");
  MC_EXPECTS(d_state != nullptr, Errc::kInvalidArgument,
             "[mc.adamw.null_pointer] adamw_prepare: state is null");
  detail::adamw_prepare_kernel<<<1, 1, 0, stream>>>(d_sq_norm, clip, schedule, hyper, d_state);
  return detail::after_launch(stream);
}

/// The AdamW update of `n` fp32 parameters from their gradients with fp64 moments `d_m`, `d_v`
/// (zero before the first step), using the scalars adamw_prepare wrote to `d_state` (nothing
/// happens when that step was skipped). Element k decays when `d_decay_mask` is null or
/// d_decay_mask[k] != 0. Buffers must not overlap. Throws mc::Error for bad hyper-parameters or
/// null pointers; returns the launch status.
inline cudaError_t adamw_update(float* d_params, const float* d_grads, double* d_m, double* d_v,
                                const std::uint8_t* d_decay_mask, std::int64_t n,
                                const AdamWHyper& hyper, const AdamWDeviceState* d_state,
                                cudaStream_t stream = 0) {
  detail::check_adamw_hyper(hyper);
  MC_EXPECTS(n >= 0, Errc::kInvalidArgument, "[mc.adamw.bad_shape] adamw_update n = ", n,
             "; must be >= 0");
  if (n == 0) return cudaSuccess;
  MC_EXPECTS(d_params && d_grads && d_m && d_v && d_state, Errc::kInvalidArgument,
             "[mc.adamw.null_pointer] adamw_update: params, grads, m, v or state is null with "
             "n = ",
             n);
  const auto blocks = static_cast<unsigned>(std::min<std::int64_t>(
      (n + detail::kAdamWThreads - 1) / detail::kAdamWThreads, 1 << 16));
  detail::adamw_update_kernel<<<blocks, detail::kAdamWThreads, 0, stream>>>(
      d_params, d_grads, d_m, d_v, d_decay_mask, n, hyper, d_state);
  return detail::after_launch(stream);
}

}  // namespace mc::cuda
