// SPDX-License-Identifier: Apache-2.0
// Elementwise kernels of the SwiGLU MLP (facade: cuda/megacontext/device_swiglu.cuh); the three
// projections around them are cuBLAS GEMMs (device_gemm.cuh). The gate uses the same formulas as
// the CPU reference: silu(a) = a·s, silu'(a) = s·(1 + a·(1 − s)), s = 1/(1 + e^{−a}).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace mc::cuda::detail {

inline constexpr int kSwiGluThreads = 256;

__device__ inline float swiglu_sigmoid(float a) { return 1.0f / (1.0f + expf(-a)); }

// g = silu(a) ∘ b.
__global__ void __launch_bounds__(kSwiGluThreads)
    swiglu_forward_kernel(const float* a, const float* b, float* g, std::int64_t count) {
  for (std::int64_t i = blockIdx.x * std::int64_t{kSwiGluThreads} + threadIdx.x; i < count;
       i += std::int64_t{gridDim.x} * kSwiGluThreads) {
    const float av = a[i];
    g[i] = av * swiglu_sigmoid(av) * b[i];
  }
}

// da = dg ∘ b ∘ silu'(a), db = dg ∘ silu(a); each thread reads a[i], b[i] before writing, so
// da may be a and db may be b (the backward overwrites the forward's cache in place).
__global__ void __launch_bounds__(kSwiGluThreads)
    swiglu_backward_kernel(const float* dg, const float* a, const float* b, float* da, float* db,
                           std::int64_t count) {
  for (std::int64_t i = blockIdx.x * std::int64_t{kSwiGluThreads} + threadIdx.x; i < count;
       i += std::int64_t{gridDim.x} * kSwiGluThreads) {
    const float av = a[i];
    const float bv = b[i];
    const float dgv = dg[i];
    const float s = swiglu_sigmoid(av);
    db[i] = dgv * av * s;
    da[i] = dgv * bv * s * (1.0f + av * (1.0f - s));
  }
}

}  // namespace mc::cuda::detail
