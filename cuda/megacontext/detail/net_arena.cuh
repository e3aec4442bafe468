// SPDX-License-Identifier: Apache-2.0
// Pieces shared by the device GistNet and LensNet (device_gist_net.cuh, device_lens_net.cuh):
// a bump carver over one device allocation (run once with a null base to measure, once to carve,
// so the size comes from the same code that hands out the buffers), a flat table of a weights
// struct's tensors (for_each_parameter order, every tensor 256-byte aligned) for upload, download
// and lookup by name, and three tiny elementwise kernels (broadcast a row, add, fill).
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "megacontext/error.cuh"
#include "megacontext/error.hpp"

namespace mc::cuda::detail {

/// Bump allocator over one allocation; with a null base it only measures.
class ArenaCarver {
 public:
  explicit ArenaCarver(std::byte* base) : base_(base) {}
  /// `count` elements of T at the next 256-byte boundary (null while measuring).
  template <class T>
  T* take(std::int64_t count) {
    offset_ = (offset_ + 255) / 256 * 256;
    T* p = base_ != nullptr ? reinterpret_cast<T*>(base_ + offset_) : nullptr;
    offset_ += static_cast<std::size_t>(std::max<std::int64_t>(count, 0)) * sizeof(T);
    return p;
  }
  /// Bytes handed out so far.
  std::size_t bytes() const { return offset_; }

 private:
  std::byte* base_;
  std::size_t offset_ = 0;
};

/// Where each tensor of a weights struct lies in one flat fp32 buffer.
class FlatLayout {
 public:
  /// The layout of `shapes` (a weights struct with for_each_parameter, e.g. W::zeros(options)).
  template <class W>
  explicit FlatLayout(W shapes) {
    shapes.for_each_parameter([&](const std::string& name, float*, auto size) {
      const auto s = static_cast<std::int64_t>(size);
      offsets_[name] = total_;
      order_.push_back({total_, s});
      total_ += (s + 63) / 64 * 64;  // every tensor 256-byte aligned
    });
  }
  /// Floats of the flat buffer, padding included.
  std::int64_t total() const { return total_; }
  /// Offset (floats) of tensor `name`; throws mc::Error for an unknown name (a library bug).
  std::int64_t offset(const std::string& name) const {
    const auto it = offsets_.find(name);
    MC_EXPECTS(it != offsets_.end(), Errc::kInvalidArgument,
               "[mc.net_arena.unknown_tensor] no tensor named '", name, "'");
    return it->second;
  }
  /// Offset of `name`, or -1 when the struct has no such (non-empty) tensor.
  std::int64_t find(const std::string& name) const {
    const auto it = offsets_.find(name);
    return it == offsets_.end() ? -1 : it->second;
  }

  /// Copies `w` (same shapes as the layout's) into `d_flat` (device, total() floats); synchronous.
  template <class W>
  void upload(const W& w, float* d_flat) const {
    std::vector<float> flat(static_cast<std::size_t>(total_), 0.0f);
    std::size_t i = 0;
    // for_each_parameter hands out mutable pointers; they are only read here.
    const_cast<W&>(w).for_each_parameter([&](const std::string&, float* data, auto size) {
      std::copy(data, data + size, flat.begin() + static_cast<std::ptrdiff_t>(order_[i++].offset));
    });
    MC_CUDA_TRY(cudaMemcpy(d_flat, flat.data(), flat.size() * sizeof(float),
                           cudaMemcpyHostToDevice));
  }
  /// Fills `w` (shaped like the layout) from `d_flat`; synchronises the device.
  template <class W>
  void download(const float* d_flat, W& w) const {
    std::vector<float> flat(static_cast<std::size_t>(total_));
    MC_CUDA_TRY(cudaMemcpy(flat.data(), d_flat, flat.size() * sizeof(float),
                           cudaMemcpyDeviceToHost));
    std::size_t i = 0;
    w.for_each_parameter([&](const std::string&, float* data, auto size) {
      const auto b = flat.begin() + static_cast<std::ptrdiff_t>(order_[i++].offset);
      std::copy(b, b + static_cast<std::ptrdiff_t>(size), data);
    });
  }

 private:
  struct Entry {
    std::int64_t offset;
    std::int64_t size;
  };
  std::map<std::string, std::int64_t> offsets_;
  std::vector<Entry> order_;
  std::int64_t total_ = 0;
};

inline constexpr int kNetEltThreads = 256;

/// out[i, c] = row[c] for i < rows, c < cols (a bias broadcast before a GEMM with beta = 1).
__global__ void __launch_bounds__(kNetEltThreads)
    net_broadcast_row_kernel(const float* row, std::int64_t rows, int cols, float* out) {
  const std::int64_t total = rows * cols;
  for (std::int64_t i = blockIdx.x * std::int64_t{kNetEltThreads} + threadIdx.x; i < total;
       i += std::int64_t{gridDim.x} * kNetEltThreads)
    out[i] = row[i % cols];
}

/// dst[i] += src[i].
__global__ void __launch_bounds__(kNetEltThreads)
    net_add_kernel(const float* src, std::int64_t count, float* dst) {
  for (std::int64_t i = blockIdx.x * std::int64_t{kNetEltThreads} + threadIdx.x; i < count;
       i += std::int64_t{gridDim.x} * kNetEltThreads)
    dst[i] += src[i];
}

/// dst[i] = value.
__global__ void __launch_bounds__(kNetEltThreads)
    net_fill_kernel(float value, std::int64_t count, float* dst) {
  for (std::int64_t i = blockIdx.x * std::int64_t{kNetEltThreads} + threadIdx.x; i < count;
       i += std::int64_t{gridDim.x} * kNetEltThreads)
    dst[i] = value;
}

/// Grid size of the elementwise kernels for `count` elements.
inline unsigned net_elt_blocks(std::int64_t count) {
  return static_cast<unsigned>(std::clamp<std::int64_t>(
      (count + kNetEltThreads - 1) / kNetEltThreads, 1, std::int64_t{1} << 16));
}

/// Launches net_broadcast_row_kernel; returns the launch status.
inline cudaError_t net_broadcast_row(const float* d_row, std::int64_t rows, std::int64_t cols,
                                     float* d_out, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  net_broadcast_row_kernel<<<net_elt_blocks(rows * cols), kNetEltThreads, 0, stream>>>(
      d_row, rows, static_cast<int>(cols), d_out);
  return after_launch(stream);
}

/// Launches net_add_kernel; returns the launch status.
inline cudaError_t net_add(const float* d_src, std::int64_t count, float* d_dst,
                           cudaStream_t stream) {
  if (count == 0) return cudaSuccess;
  net_add_kernel<<<net_elt_blocks(count), kNetEltThreads, 0, stream>>>(d_src, count, d_dst);
  return after_launch(stream);
}

/// Launches net_fill_kernel; returns the launch status.
inline cudaError_t net_fill(float value, std::int64_t count, float* d_dst, cudaStream_t stream) {
  if (count == 0) return cudaSuccess;
  net_fill_kernel<<<net_elt_blocks(count), kNetEltThreads, 0, stream>>>(value, count, d_dst);
  return after_launch(stream);
}

}  // namespace mc::cuda::detail
