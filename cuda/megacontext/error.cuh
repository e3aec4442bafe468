// SPDX-License-Identifier: Apache-2.0
// Errors of the GPU path. Facades (device_*.cuh) return cudaError_t and throw mc::Error only for
// bad arguments, before any launch; code above them wraps calls in MC_CUDA_TRY, which turns a
// failed status into mc::CudaError naming the expression, file and line. MC_DEBUG_SYNC (default
// 0) makes every facade synchronise its stream after the launch, like CUB_DEBUG_SYNC.
#pragma once

#include <cuda_runtime_api.h>

#include <string>

#include "megacontext/error.hpp"

/// When non-zero, facades synchronise the stream after each launch and return the kernel's error
/// (skipped while the stream is being captured into a graph). Define before including; default 0.
#ifndef MC_DEBUG_SYNC
#define MC_DEBUG_SYNC 0
#endif

namespace mc {

/// A CUDA runtime call failed; `status()` is the cudaError_t it returned.
class CudaError : public Error {
 public:
  CudaError(cudaError_t status, const std::string& message)
      : Error(Errc::kCuda, message), status_(status) {}
  /// The status the failing call returned.
  cudaError_t status() const noexcept { return status_; }

 private:
  cudaError_t status_;
};

namespace cuda::detail {

/// Throws mc::CudaError "[mc.cuda.call_failed] `expr` failed: cudaErrorX (text) at file:line".
[[noreturn]] inline void throw_cuda_error(cudaError_t status, const char* expr, const char* file,
                                          int line) {
  throw CudaError(
      status,
      ::mc::detail::concat("[mc.cuda.call_failed] `", expr, "` failed: ", cudaGetErrorName(status),
                           " (", cudaGetErrorString(status), ") at ", file, ":", line));
}

/// What a facade returns after a launch: the launch error (which this clears), and under
/// MC_DEBUG_SYNC the error of the kernel itself unless `stream` is being captured.
inline cudaError_t after_launch(cudaStream_t stream) {
  const cudaError_t launch = cudaGetLastError();
  if constexpr (MC_DEBUG_SYNC != 0) {
    if (launch != cudaSuccess) return launch;
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    const cudaError_t query = cudaStreamIsCapturing(stream, &capture);
    if (query != cudaSuccess) return query;
    if (capture != cudaStreamCaptureStatusNone) return cudaSuccess;  // a sync would end capture
    return cudaStreamSynchronize(stream);
  } else {
    (void)stream;
    return launch;
  }
}

}  // namespace cuda::detail
}  // namespace mc

/// Evaluates `expr` (a cudaError_t); on failure clears the runtime's last error and throws
/// mc::CudaError with the expression text, the status name and the file and line.
#define MC_CUDA_TRY(expr)                                                                   \
  do {                                                                                      \
    const cudaError_t mc_cuda_try_status_ = (expr);                                         \
    if (mc_cuda_try_status_ != cudaSuccess) {                                               \
      (void)cudaGetLastError();                                                             \
      ::mc::cuda::detail::throw_cuda_error(mc_cuda_try_status_, #expr, __FILE__, __LINE__); \
    }                                                                                       \
  } while (0)

/// Evaluates `expr` (a cudaError_t) and returns it from the enclosing function when it failed.
#define MC_CUDA_RETURN_IF_ERROR(expr)                                   \
  do {                                                                  \
    const cudaError_t mc_cuda_rie_status_ = (expr);                     \
    if (mc_cuda_rie_status_ != cudaSuccess) return mc_cuda_rie_status_; \
  } while (0)
