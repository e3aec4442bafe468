// SPDX-License-Identifier: Apache-2.0
// Row-major GEMM on the GPU through cuBLAS, for the decoder layers (device_llama.cuh): the CPU
// reference computes x·W with row-major W [in, out], and these helpers take the same row-major
// view, so a layer reads like its Eigen twin. cuBLAS is column-major: a row-major C = A·B is the
// column-major Cᵀ = Bᵀ·Aᵀ, so each call swaps the operands instead of copying anything.
//
// Precision: storage is fp32 everywhere; GemmMath picks the tensor-core mode cuBLAS may use
// (TF32 by default, the usual choice for fp32 training; BF16 inputs on fp32 storage; or exact
// fp32). Errors: bad arguments throw mc::Error before any call; a cuBLAS failure throws mc::Error
// (kCuda, [mc.gemm.cublas_failed]) naming the cuBLAS function and its status. No allocation after
// the handle is made; graph-capturable.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>

#include "megacontext/error.cuh"
#include "megacontext/error.hpp"

namespace mc::cuda {

/// The arithmetic cuBLAS may use for an fp32-storage GEMM.
enum class GemmMath : int {
  kFp32 = 0,  ///< exact fp32 FMA (no tensor cores); the slowest, for tight parity checks
  kTf32 = 1,  ///< tensor cores on TF32-rounded inputs (10-bit mantissa), fp32 accumulate; default
  kBf16 = 2,  ///< tensor cores on BF16-rounded inputs (7-bit mantissa), fp32 accumulate
};

/// Printable name of a GemmMath.
inline const char* to_string(GemmMath m) {
  switch (m) {
    case GemmMath::kFp32: return "fp32";
    case GemmMath::kTf32: return "tf32";
    case GemmMath::kBf16: return "bf16";
  }
  return "?";
}

namespace detail {

/// Throws mc::Error "[mc.gemm.cublas_failed] <call> returned <status>" unless `status` is success.
inline void check_cublas(cublasStatus_t status, const char* call) {
  MC_EXPECTS(status == CUBLAS_STATUS_SUCCESS, Errc::kCuda, "[mc.gemm.cublas_failed] ", call,
             " returned ", cublasGetStatusName(status), " (", cublasGetStatusString(status), ")");
}

inline cublasComputeType_t compute_type(GemmMath m) {
  switch (m) {
    case GemmMath::kFp32: return CUBLAS_COMPUTE_32F;
    case GemmMath::kTf32: return CUBLAS_COMPUTE_32F_FAST_TF32;
    case GemmMath::kBf16: return CUBLAS_COMPUTE_32F_FAST_16BF;
  }
  return CUBLAS_COMPUTE_32F;
}

}  // namespace detail

/// An owned cuBLAS handle with its own workspace (allocated once, here). cuBLAS resets the
/// workspace to its internal pool whenever the stream changes, and that pool may allocate during
/// graph capture; so set_stream() sets both, and every GEMM helper calls it.
class CublasHandle {
 public:
  /// Default workspace: 32 MiB, what NVIDIA recommends for Hopper.
  static constexpr std::size_t kDefaultWorkspaceBytes = std::size_t{32} << 20;

  /// Creates the handle and its workspace; throws mc::Error / mc::CudaError on failure.
  explicit CublasHandle(std::size_t workspace_bytes = kDefaultWorkspaceBytes)
      : workspace_bytes_(workspace_bytes) {
    detail::check_cublas(cublasCreate(&handle_), "cublasCreate");
    if (workspace_bytes_ > 0) {
      const cudaError_t st = cudaMalloc(&workspace_, workspace_bytes_);
      if (st != cudaSuccess) {
        (void)cublasDestroy(handle_);
        MC_CUDA_TRY(st);
      }
    }
    set_stream(0);
  }
  ~CublasHandle() {
    if (handle_ != nullptr) (void)cublasDestroy(handle_);
    if (workspace_ != nullptr) (void)cudaFree(workspace_);
  }
  CublasHandle(const CublasHandle&) = delete;
  CublasHandle& operator=(const CublasHandle&) = delete;

  /// The raw handle.
  cublasHandle_t get() const { return handle_; }

  /// Binds `stream` and (again) the workspace; cheap when the stream is unchanged.
  void set_stream(cudaStream_t stream) {
    if (bound_ && stream == stream_) return;
    detail::check_cublas(cublasSetStream(handle_, stream), "cublasSetStream");
    if (workspace_ != nullptr)
      detail::check_cublas(cublasSetWorkspace(handle_, workspace_, workspace_bytes_),
                           "cublasSetWorkspace");
    stream_ = stream;
    bound_ = true;
  }

 private:
  cublasHandle_t handle_ = nullptr;
  void* workspace_ = nullptr;
  std::size_t workspace_bytes_ = 0;
  cudaStream_t stream_ = nullptr;
  bool bound_ = false;
};

namespace detail {

inline void check_gemm_args(bool trans_a, bool trans_b, std::int64_t m, std::int64_t n,
                            std::int64_t k, const float* a, std::int64_t lda, const float* b,
                            std::int64_t ldb, const float* c, std::int64_t ldc,
                            std::int64_t batch) {
  constexpr std::int64_t kMax = std::numeric_limits<int>::max();
  MC_EXPECTS(m >= 0 && n >= 0 && k >= 0 && batch >= 0 && m <= kMax && n <= kMax && k <= kMax &&
                 batch <= kMax,
             Errc::kInvalidArgument, "[mc.gemm.bad_shape] m = ", m, ", n = ", n, ", k = ", k,
             ", batch = ", batch, "; each must be in [0, 2^31)");
  // Row-major: op(A) is [m, k], stored [m, k] (or [k, m] when transposed), and so on.
  const std::int64_t a_cols = trans_a ? m : k;
  const std::int64_t b_cols = trans_b ? k : n;
  MC_EXPECTS(lda >= std::max<std::int64_t>(1, a_cols) && ldb >= std::max<std::int64_t>(1, b_cols) &&
                 ldc >= std::max<std::int64_t>(1, n) && lda <= kMax && ldb <= kMax && ldc <= kMax,
             Errc::kInvalidArgument, "[mc.gemm.bad_ld] lda = ", lda, ", ldb = ", ldb, ", ldc = ",
             ldc, "; row-major leading dims must be at least the stored row lengths ", a_cols,
             ", ", b_cols, ", ", n);
  MC_EXPECTS(m == 0 || n == 0 || batch == 0 || (c != nullptr && (k == 0 || (a && b))),
             Errc::kInvalidArgument, "[mc.gemm.null_pointer] A, B or C is null for a ", m, " x ",
             n, " x ", k, " GEMM");
}

}  // namespace detail

/// Row-major C [m, n] = alpha·op(A)·op(B) + beta·C on `stream`; op(A) is [m, k] (A stored
/// [m, k] with row stride lda, or [k, m] when trans_a), op(B) is [k, n] (B stored [k, n], or
/// [n, k] when trans_b). fp32 device buffers; `math` picks the tensor-core mode. C must not
/// overlap A or B. Throws mc::Error for bad shapes or pointers (before any call) and for a cuBLAS
/// failure ([mc.gemm.cublas_failed]).
inline void gemm(CublasHandle& handle, bool trans_a, bool trans_b, std::int64_t m, std::int64_t n,
                 std::int64_t k, float alpha, const float* a, std::int64_t lda, const float* b,
                 std::int64_t ldb, float beta, float* c, std::int64_t ldc,
                 GemmMath math = GemmMath::kTf32, cudaStream_t stream = 0) {
  detail::check_gemm_args(trans_a, trans_b, m, n, k, a, lda, b, ldb, c, ldc, 1);
  if (m == 0 || n == 0) return;
  handle.set_stream(stream);
  detail::check_cublas(
      cublasGemmEx(handle.get(), trans_b ? CUBLAS_OP_T : CUBLAS_OP_N,
                   trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, static_cast<int>(n), static_cast<int>(m),
                   static_cast<int>(k), &alpha, b, CUDA_R_32F, static_cast<int>(ldb), a,
                   CUDA_R_32F, static_cast<int>(lda), &beta, c, CUDA_R_32F, static_cast<int>(ldc),
                   detail::compute_type(math), CUBLAS_GEMM_DEFAULT),
      "cublasGemmEx");
}

/// `batch` row-major GEMMs C_i = alpha·op(A_i)·op(B_i) + beta·C_i with X_i = X + i·stride_x
/// (elements); a stride of 0 reuses one operand for every i (e.g. x·wq, x·wk, x·wv in one call).
/// Shapes and errors as gemm().
inline void gemm_strided_batched(CublasHandle& handle, bool trans_a, bool trans_b, std::int64_t m,
                                 std::int64_t n, std::int64_t k, float alpha, const float* a,
                                 std::int64_t lda, std::int64_t stride_a, const float* b,
                                 std::int64_t ldb, std::int64_t stride_b, float beta, float* c,
                                 std::int64_t ldc, std::int64_t stride_c, std::int64_t batch,
                                 GemmMath math = GemmMath::kTf32, cudaStream_t stream = 0) {
  detail::check_gemm_args(trans_a, trans_b, m, n, k, a, lda, b, ldb, c, ldc, batch);
  MC_EXPECTS(stride_a >= 0 && stride_b >= 0 && stride_c >= m * ldc - (ldc - n),
             Errc::kInvalidArgument, "[mc.gemm.bad_stride] stride_a = ", stride_a,
             ", stride_b = ", stride_b, ", stride_c = ", stride_c,
             "; strides must be >= 0 and outputs must not overlap");
  if (m == 0 || n == 0 || batch == 0) return;
  handle.set_stream(stream);
  detail::check_cublas(
      cublasGemmStridedBatchedEx(
          handle.get(), trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, trans_a ? CUBLAS_OP_T : CUBLAS_OP_N,
          static_cast<int>(n), static_cast<int>(m), static_cast<int>(k), &alpha, b, CUDA_R_32F,
          static_cast<int>(ldb), stride_b, a, CUDA_R_32F, static_cast<int>(lda), stride_a, &beta,
          c, CUDA_R_32F, static_cast<int>(ldc), stride_c, static_cast<int>(batch),
          detail::compute_type(math), CUBLAS_GEMM_DEFAULT),
      "cublasGemmStridedBatchedEx");
}

}  // namespace mc::cuda
