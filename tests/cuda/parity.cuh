// SPDX-License-Identifier: Apache-2.0
// Tools of the CPU/GPU parity tests (STYLE §5): device buffers with guard regions and NaN
// poisoning, a non-default stream, CUDA-graph capture and replay, and the comparisons (bit-exact,
// and per-element atol + rtol plus NMSE, with NaN never passing). Host-side comparison code could
// move to tests/common/compare.hpp once CPU tests need it too.
#pragma once

#include <cuda_runtime.h>

#include <megacontext/error.cuh>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

namespace mc::test {

/// How a facade is launched in a parity case (CUB's launch modes).
enum class LaunchMode {
  kStream,  ///< directly on a non-default, non-blocking stream
  kGraph,   ///< captured into a CUDA graph on that stream, then the graph replayed twice
};

/// Printable name of a launch mode.
inline const char* to_string(LaunchMode m) { return m == LaunchMode::kGraph ? "graph" : "stream"; }

/// Every launch mode, for loops.
inline constexpr LaunchMode kLaunchModes[] = {LaunchMode::kStream, LaunchMode::kGraph};

/// A non-blocking stream, destroyed with the object.
class Stream {
 public:
  Stream() { MC_CUDA_TRY(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking)); }
  ~Stream() { (void)cudaStreamDestroy(stream_); }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  /// The stream handle.
  cudaStream_t get() const { return stream_; }
  /// Waits for all work on the stream and throws on a kernel error.
  void sync() const { MC_CUDA_TRY(cudaStreamSynchronize(stream_)); }

 private:
  cudaStream_t stream_ = nullptr;
};

/// Runs `enqueue(stream)` (which returns a cudaError_t) in `mode` and waits for it: directly, or
/// captured into a graph (global capture mode, so a hidden allocation or synchronisation inside
/// the facade fails the capture) which is then replayed twice.
template <class F>
void launch(LaunchMode mode, const Stream& stream, F&& enqueue) {
  if (mode == LaunchMode::kStream) {
    MC_CUDA_TRY(enqueue(stream.get()));
    stream.sync();
    return;
  }
  cudaGraph_t graph = nullptr;
  MC_CUDA_TRY(cudaStreamBeginCapture(stream.get(), cudaStreamCaptureModeGlobal));
  cudaError_t enqueued = cudaSuccess;
  try {
    enqueued = enqueue(stream.get());
  } catch (...) {
    // Leave the stream usable: end the capture before the error propagates.
    if (cudaStreamEndCapture(stream.get(), &graph) == cudaSuccess && graph != nullptr)
      (void)cudaGraphDestroy(graph);
    throw;
  }
  const cudaError_t ended = cudaStreamEndCapture(stream.get(), &graph);
  MC_CUDA_TRY(enqueued);
  MC_CUDA_TRY(ended);
  cudaGraphExec_t exec = nullptr;
  const cudaError_t inst = cudaGraphInstantiate(&exec, graph, 0);
  if (inst == cudaSuccess) {
    for (int replay = 0; replay < 2; ++replay) MC_CUDA_TRY(cudaGraphLaunch(exec, stream.get()));
    stream.sync();
    MC_CUDA_TRY(cudaGraphExecDestroy(exec));
  }
  MC_CUDA_TRY(cudaGraphDestroy(graph));
  MC_CUDA_TRY(inst);
}

/// Device memory for `n` elements of T between two guard regions filled with a sentinel byte, so
/// an out-of-bounds write shows up in guards_intact(). `misalign_bytes` (a multiple of sizeof(T))
/// shifts data() away from the 256-byte alignment of cudaMalloc, to reach unaligned code paths.
template <class T>
class GuardedBuffer {
 public:
  static constexpr std::size_t kGuardBytes = 256;
  static constexpr unsigned char kSentinel = 0xA5;

  explicit GuardedBuffer(std::size_t n, std::size_t misalign_bytes = 0)
      : n_(n), front_(kGuardBytes + misalign_bytes) {
    total_ = front_ + n_ * sizeof(T) + kGuardBytes;
    MC_CUDA_TRY(cudaMalloc(&base_, total_));
    MC_CUDA_TRY(cudaMemset(base_, kSentinel, total_));
    settle();
  }
  ~GuardedBuffer() { (void)cudaFree(base_); }
  GuardedBuffer(const GuardedBuffer&) = delete;
  GuardedBuffer& operator=(const GuardedBuffer&) = delete;

  /// The n elements.
  T* data() { return reinterpret_cast<T*>(static_cast<unsigned char*>(base_) + front_); }
  /// Number of elements.
  std::size_t size() const { return n_; }
  /// Copies `host` (n elements) in.
  void upload(const std::vector<T>& host) {
    MC_CUDA_TRY(cudaMemcpy(data(), host.data(), n_ * sizeof(T), cudaMemcpyHostToDevice));
    settle();
  }
  /// Copies the n elements out.
  std::vector<T> download() {
    std::vector<T> host(n_);
    MC_CUDA_TRY(cudaMemcpy(host.data(), data(), n_ * sizeof(T), cudaMemcpyDeviceToHost));
    return host;
  }
  /// Fills the n elements with 0xFF bytes (NaN for floating types), so unwritten outputs fail.
  void poison() {
    MC_CUDA_TRY(cudaMemset(data(), 0xFF, n_ * sizeof(T)));
    settle();
  }
  /// True when both guard regions still hold the sentinel.
  bool guards_intact() {
    std::vector<unsigned char> host(total_);
    MC_CUDA_TRY(cudaMemcpy(host.data(), base_, total_, cudaMemcpyDeviceToHost));
    for (std::size_t i = 0; i < front_; ++i)
      if (host[i] != kSentinel) return false;
    for (std::size_t i = front_ + n_ * sizeof(T); i < total_; ++i)
      if (host[i] != kSentinel) return false;
    return true;
  }

 private:
  // cudaMemset and pageable cudaMemcpy may still be in flight when they return, and the tests
  // launch on a non-blocking stream that does not wait for the legacy stream: finish them first.
  static void settle() { MC_CUDA_TRY(cudaDeviceSynchronize()); }

  void* base_ = nullptr;
  std::size_t n_;
  std::size_t front_;
  std::size_t total_ = 0;
};

/// Outcome of a comparison; `report` says where it failed and by how much.
struct Comparison {
  bool ok = true;
  std::string report;
};

/// Bit-exact comparison of two float arrays; reports the first differing index and both values.
inline Comparison compare_exact(const std::vector<float>& gpu, const std::vector<float>& ref) {
  Comparison c;
  if (gpu.size() != ref.size()) return {false, "size mismatch"};
  std::int64_t bad = 0;
  for (std::size_t i = 0; i < gpu.size(); ++i) {
    if (std::memcmp(&gpu[i], &ref[i], sizeof(float)) != 0) {
      if (bad++ == 0) {
        std::ostringstream os;
        os.precision(9);
        os << "first difference at " << i << ": gpu " << gpu[i] << " ref " << ref[i];
        c.report = os.str();
      }
    }
  }
  if (bad > 0) {
    c.ok = false;
    c.report += "; " + std::to_string(bad) + " of " + std::to_string(gpu.size()) + " differ";
  }
  return c;
}

/// Floating comparison (STYLE §5.4–5.5): NaN on either side fails; Inf passes only against an Inf
/// of the same sign; otherwise |gpu − ref| <= atol + rtol·|ref| per element, and NMSE =
/// Σ(gpu − ref)² / Σ ref² <= nmse_max, with a non-zero reference norm.
inline Comparison compare_close(const std::vector<float>& gpu, const std::vector<double>& ref,
                                double atol, double rtol, double nmse_max) {
  Comparison c;
  if (gpu.size() != ref.size()) return {false, "size mismatch"};
  std::ostringstream os;
  os.precision(9);
  double sq_err = 0.0;
  double sq_ref = 0.0;
  double max_err = 0.0;
  std::size_t max_at = 0;
  std::int64_t bad = 0;
  for (std::size_t i = 0; i < gpu.size(); ++i) {
    const double g = gpu[i];
    const double r = ref[i];
    bool pass = false;
    if (std::isnan(g) || std::isnan(r)) {
      pass = false;
    } else if (std::isinf(g) || std::isinf(r)) {
      pass = g == r;
    } else {
      const double err = std::abs(g - r);
      sq_err += err * err;
      sq_ref += r * r;
      if (err > max_err) {
        max_err = err;
        max_at = i;
      }
      pass = err <= atol + rtol * std::abs(r);  // false for NaN by construction
    }
    if (!pass && bad++ == 0)
      os << "first failure at " << i << ": gpu " << g << " ref " << r << "; ";
  }
  const double nmse = sq_ref > 0.0 ? sq_err / sq_ref : NAN;
  os << bad << " of " << gpu.size() << " elements fail atol " << atol << " + rtol " << rtol
     << "; max |err| " << max_err << " at " << max_at << "; NMSE " << nmse << " (bound " << nmse_max
     << ")";
  c.report = os.str();
  c.ok = bad == 0 && sq_ref > 0.0 && nmse <= nmse_max;
  return c;
}

}  // namespace mc::test
