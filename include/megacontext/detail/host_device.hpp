// SPDX-License-Identifier: Apache-2.0
// MC_HOST_DEVICE marks maths shared by host and device code (Eigen's EIGEN_DEVICE_FUNC idea):
// it is `__host__ __device__` under nvcc and empty for a plain C++ compiler, so index arithmetic
// is written once and the CPU and GPU can never disagree on "parent of node i".
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define MC_HOST_DEVICE __host__ __device__
#else
#define MC_HOST_DEVICE
#endif
