// SPDX-License-Identifier: Apache-2.0
// What every GPU benchmark needs around its launches: CUDA-event timing on a stream, a
// non-blocking stream, an L2 flush so that each timed run starts with a cold cache, and the
// shared main(): exit 77 (skipped) without a device, the device and commit in the JSON context.
#pragma once

#include <cuda_runtime.h>

#include <benchmark/benchmark.h>

#include <cstddef>
#include <cstdio>
#include <string>

#include <megacontext/error.cuh>

namespace mc::bench {

/// A buffer twice the size of L2, written before each timed launch so every run starts cold.
class L2Flush {
 public:
  L2Flush() {
    int device = 0;
    int l2 = 0;
    MC_CUDA_TRY(cudaGetDevice(&device));
    MC_CUDA_TRY(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, device));
    bytes_ = 2 * static_cast<std::size_t>(l2 > 0 ? l2 : (64 << 20));
    MC_CUDA_TRY(cudaMalloc(&buffer_, bytes_));
  }
  ~L2Flush() { (void)cudaFree(buffer_); }
  L2Flush(const L2Flush&) = delete;
  L2Flush& operator=(const L2Flush&) = delete;
  /// Overwrites the buffer on `stream`.
  void flush(cudaStream_t stream) { MC_CUDA_TRY(cudaMemsetAsync(buffer_, 0, bytes_, stream)); }

 private:
  void* buffer_ = nullptr;
  std::size_t bytes_ = 0;
};

/// CUDA-event timer for one stretch of launches on one stream.
class EventTimer {
 public:
  EventTimer() {
    MC_CUDA_TRY(cudaEventCreate(&start_));
    MC_CUDA_TRY(cudaEventCreate(&stop_));
  }
  ~EventTimer() {
    (void)cudaEventDestroy(start_);
    (void)cudaEventDestroy(stop_);
  }
  EventTimer(const EventTimer&) = delete;
  EventTimer& operator=(const EventTimer&) = delete;
  /// Records the start event on `s`.
  void start(cudaStream_t s) { MC_CUDA_TRY(cudaEventRecord(start_, s)); }
  /// Records the stop event, waits for it and returns the elapsed time in seconds.
  double stop(cudaStream_t s) {
    MC_CUDA_TRY(cudaEventRecord(stop_, s));
    MC_CUDA_TRY(cudaEventSynchronize(stop_));
    float ms = 0.0f;
    MC_CUDA_TRY(cudaEventElapsedTime(&ms, start_, stop_));
    return ms * 1e-3;
  }

 private:
  cudaEvent_t start_ = nullptr;
  cudaEvent_t stop_ = nullptr;
};

/// A non-blocking stream, destroyed with the object.
class Stream {
 public:
  Stream() { MC_CUDA_TRY(cudaStreamCreateWithFlags(&s_, cudaStreamNonBlocking)); }
  ~Stream() { (void)cudaStreamDestroy(s_); }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  /// The stream handle.
  cudaStream_t get() const { return s_; }

 private:
  cudaStream_t s_ = nullptr;
};

/// Runs the registered benchmarks of binary `name`: 77 when no CUDA device is visible (CTest and
/// the scripts read it as "skipped"), otherwise the device, its SM count, L2 and memory, the
/// CUDA runtime/driver versions, the binary's name and the git commit go into the JSON context.
inline int run_cuda_benchmarks(int argc, char** argv, const char* name) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::fprintf(stderr, "%s: no CUDA device: nothing to benchmark\n", name);
    return 77;
  }
  int device = 0, runtime = 0, driver = 0;
  cudaDeviceProp prop{};
  MC_CUDA_TRY(cudaGetDevice(&device));
  MC_CUDA_TRY(cudaGetDeviceProperties(&prop, device));
  MC_CUDA_TRY(cudaRuntimeGetVersion(&runtime));
  MC_CUDA_TRY(cudaDriverGetVersion(&driver));
  benchmark::AddCustomContext("megacontext_bench", name);
  benchmark::AddCustomContext("device", prop.name);
  benchmark::AddCustomContext("sm", std::to_string(prop.major) + std::to_string(prop.minor));
  benchmark::AddCustomContext("sm_count", std::to_string(prop.multiProcessorCount));
  benchmark::AddCustomContext("l2_bytes", std::to_string(prop.l2CacheSize));
  benchmark::AddCustomContext("global_mem_bytes", std::to_string(prop.totalGlobalMem));
  benchmark::AddCustomContext("cuda_runtime", std::to_string(runtime));
  benchmark::AddCustomContext("cuda_driver", std::to_string(driver));
#ifdef MC_GIT_COMMIT
  benchmark::AddCustomContext("git_commit", MC_GIT_COMMIT);
#endif
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

}  // namespace mc::bench

/// Defines main() for a GPU benchmark binary called `name`.
#define MC_CUDA_BENCHMARK_MAIN(name) \
  int main(int argc, char** argv) { return ::mc::bench::run_cuda_benchmarks(argc, argv, name); }
