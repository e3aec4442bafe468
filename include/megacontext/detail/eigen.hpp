// SPDX-License-Identifier: Apache-2.0
// Includes <Eigen/Core> so that host headers stay warning-free when a user's .cu file includes
// them: Eigen 3.4.0 marks defaulted special members __host__ __device__ (nvcc warning #20012,
// even from a system include path), and without --expt-relaxed-constexpr its CUDA complex maths
// calls constexpr host functions (#20015). The suppression is scoped to Eigen's headers.
#pragma once

#if defined(__CUDACC__) && defined(__NVCC_DIAG_PRAGMA_SUPPORT__)
#pragma nv_diagnostic push
#pragma nv_diag_suppress 20012
#pragma nv_diag_suppress 20015
#endif

#include <Eigen/Core>

#if defined(__CUDACC__) && defined(__NVCC_DIAG_PRAGMA_SUPPORT__)
#pragma nv_diagnostic pop
#endif
