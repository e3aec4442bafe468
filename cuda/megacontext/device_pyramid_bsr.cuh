// SPDX-License-Identifier: Apache-2.0
// GPU builder of the pyramid mask's block-sparse form: the same BsrMask (row pointers, column
// indices, per-tile and per-query counts, nnz) that PyramidMask::bsr(B) builds on the CPU
// (include/megacontext/pyramid_mask.hpp, bsr.hpp), generated on the device where the attention
// kernel reads it. Thrust does the bulk steps: one thread per query counts its touched tiles, an
// exclusive scan places them, a second pass writes (block row, key block, keys) triples, a sort
// and reduce_by_key merge them into tiles, and a vectorised lower_bound gives the row pointers.
// Kernels: detail/kernels/pyramid_bsr_kernels.cuh.
//
// Unlike the CUB-style facades this one owns memory: PyramidBsrBuilder keeps its scratch and a
// caching allocator for Thrust's temporaries, grown on demand and reused, so steady-state builds
// allocate nothing; the output sizes depend on the mask, so a build synchronises its stream
// (it reads back the tile count) and is not graph-capturable.
#pragma once

#include <cuda_runtime.h>

#include <thrust/binary_search.h>
#include <thrust/device_vector.h>
#include <thrust/execution_policy.h>
#include <thrust/iterator/counting_iterator.h>
#include <thrust/iterator/transform_iterator.h>
#include <thrust/reduce.h>
#include <thrust/scan.h>
#include <thrust/sort.h>
#include <thrust/transform.h>

#include <bit>
#include <cstddef>
#include <cstdint>
#include <map>
#include <vector>

#include "megacontext/bsr.hpp"
#include "megacontext/detail/kernels/pyramid_bsr_kernels.cuh"
#include "megacontext/error.cuh"
#include "megacontext/error.hpp"
#include "megacontext/pyramid_mask.hpp"

namespace mc::cuda {

/// The device view of `m` (resolved level windows and layout tables).
inline PyramidMaskRef pyramid_mask_ref(const PyramidMask& m) {
  const PyramidMaskOptions& o = m.options();
  const PyramidLayout& l = m.layout();
  PyramidMaskRef p;
  p.r = o.r;
  p.window = o.window;
  p.num_levels = o.num_levels;
  p.causal = o.causality == Causality::kCausal ? 1 : 0;
  p.num_global = o.num_global;
  const auto ur = static_cast<std::uint32_t>(o.r);
  p.shift = std::has_single_bit(ur) ? std::countr_zero(ur) : -1;
  p.seq_len = l.seq_len();
  p.num_leaves = l.num_leaves();
  for (std::int32_t lv = 1; lv < o.num_levels; ++lv) p.level_window[lv] = o.level_window(lv);
  for (std::int32_t lv = 0; lv <= o.num_levels; ++lv) {
    p.span[lv] = l.span(lv);
    p.size[lv] = l.level_size(lv);
    p.offset[lv] = l.level_offset(lv);
  }
  p.offset[o.num_levels + 1] = l.level_offset(o.num_levels + 1);
  return p;
}

/// A BSR mask in device memory (same fields as mc::BsrMask).
struct DeviceBsr {
  std::int32_t seq_len = 0;                    ///< S
  std::int32_t block_size = 1;                 ///< B
  thrust::device_vector<std::int32_t> row_ptr;    ///< [ceil(S / B) + 1]
  thrust::device_vector<std::int32_t> col_idx;    ///< [tiles], ascending within a block row
  thrust::device_vector<std::int32_t> block_nnz;  ///< [tiles]
  thrust::device_vector<std::int32_t> row_nnz;    ///< [S]
  std::int64_t nnz = 0;                        ///< allowed (query, key) pairs

  /// Number of stored tiles.
  std::int64_t num_blocks() const { return static_cast<std::int64_t>(col_idx.size()); }
  /// A host copy (synchronous).
  BsrMask download() const {
    BsrMask m;
    m.seq_len = seq_len;
    m.block_size = block_size;
    m.nnz = nnz;
    const auto copy = [](const thrust::device_vector<std::int32_t>& d) {
      std::vector<std::int32_t> h(d.size());
      thrust::copy(d.begin(), d.end(), h.begin());
      return h;
    };
    m.row_ptr = copy(row_ptr);
    m.col_idx = copy(col_idx);
    m.block_nnz = copy(block_nnz);
    m.row_nnz = copy(row_nnz);
    return m;
  }
};

namespace detail {

/// Thrust's temporary storage from a free list (the pattern of Thrust's
/// custom_temporary_allocation example): blocks are kept after use and handed out again, so
/// repeated builds of similar masks stop calling cudaMalloc.
class CachingThrustAllocator {
 public:
  using value_type = char;
  CachingThrustAllocator() = default;
  CachingThrustAllocator(const CachingThrustAllocator&) = delete;
  CachingThrustAllocator& operator=(const CachingThrustAllocator&) = delete;
  ~CachingThrustAllocator() {
    for (auto& [bytes, p] : free_) (void)cudaFree(p);
    for (auto& [p, bytes] : used_) (void)cudaFree(p);
  }
  char* allocate(std::ptrdiff_t n) {
    const auto bytes = static_cast<std::size_t>(n);
    char* p = nullptr;
    const auto hit = free_.lower_bound(bytes);
    if (hit != free_.end() && hit->first <= 2 * bytes + (1 << 20)) {
      p = hit->second;
      used_.emplace(p, hit->first);
      free_.erase(hit);
      return p;
    }
    MC_CUDA_TRY(cudaMalloc(&p, bytes));
    used_.emplace(p, bytes);
    return p;
  }
  void deallocate(char* p, std::size_t) {
    const auto it = used_.find(p);
    if (it == used_.end()) return;
    free_.emplace(it->second, p);
    used_.erase(it);
  }

 private:
  std::multimap<std::size_t, char*> free_;
  std::map<char*, std::size_t> used_;
};

/// Block row of a tile key, as the first key of that row for lower_bound.
struct RowStartKey {
  __host__ __device__ std::uint64_t operator()(std::int32_t b) const {
    return static_cast<std::uint64_t>(b) << 32;
  }
};
/// Key block of a tile key.
struct KeyBlock {
  __host__ __device__ std::int32_t operator()(std::uint64_t k) const {
    return static_cast<std::int32_t>(k & 0xFFFFFFFFu);
  }
};

}  // namespace detail

/// Builds pyramid-mask BSR forms on the device; keeps scratch between builds (not thread-safe:
/// one builder per host thread).
class PyramidBsrBuilder {
 public:
  /// Writes the BSR form of `mask` with `block_size` x `block_size` tiles into `out`, equal to
  /// mask.bsr(block_size) field for field. Throws [mc.pyramid_mask.bad_block_size] /
  /// [mc.bsr.too_many_blocks] like the CPU builder, mc::CudaError on a CUDA failure. Work runs
  /// on `stream`; returns when `out` is complete.
  void build(const PyramidMask& mask, std::int32_t block_size, DeviceBsr& out,
             cudaStream_t stream = 0) {
    MC_EXPECTS(block_size >= 1 && block_size <= kMaxBsrBlockSize, Errc::kInvalidArgument,
               "[mc.pyramid_mask.bad_block_size] block_size = ", block_size, "; must be in [1, ",
               kMaxBsrBlockSize, "]");
    const PyramidMaskRef p = pyramid_mask_ref(mask);
    const std::int64_t s = p.seq_len;
    const std::int64_t nb = (s + block_size - 1) / block_size;
    auto policy = thrust::cuda::par_nosync(alloc_).on(stream);
    out.seq_len = p.seq_len;
    out.block_size = block_size;
    out.row_nnz.resize(static_cast<std::size_t>(s));
    out.row_ptr.resize(static_cast<std::size_t>(nb + 1));
    if (s == 0) {
      out.row_ptr[0] = 0;
      out.col_idx.clear();
      out.block_nnz.clear();
      out.nnz = 0;
      return;
    }
    touches_.resize(static_cast<std::size_t>(s));
    first_.resize(static_cast<std::size_t>(s));
    const auto grid = static_cast<unsigned>((s + detail::kPyramidThreads - 1) / detail::kPyramidThreads);
    detail::pyramid_count_kernel<<<grid, detail::kPyramidThreads, 0, stream>>>(
        p, block_size, thrust::raw_pointer_cast(touches_.data()),
        thrust::raw_pointer_cast(out.row_nnz.data()));
    MC_CUDA_TRY(detail::after_launch(stream));
    thrust::exclusive_scan(policy, touches_.begin(), touches_.end(), first_.begin(),
                           std::int64_t{0});
    // Total pairs and nnz: one small read-back each (the sizes below depend on them).
    std::int64_t last_first = 0;
    std::int32_t last_touch = 0;
    MC_CUDA_TRY(cudaMemcpyAsync(&last_first, thrust::raw_pointer_cast(first_.data()) + (s - 1),
                                sizeof(last_first), cudaMemcpyDeviceToHost, stream));
    MC_CUDA_TRY(cudaMemcpyAsync(&last_touch, thrust::raw_pointer_cast(touches_.data()) + (s - 1),
                                sizeof(last_touch), cudaMemcpyDeviceToHost, stream));
    out.nnz = thrust::reduce(policy, out.row_nnz.begin(), out.row_nnz.end(), std::int64_t{0});
    MC_CUDA_TRY(cudaStreamSynchronize(stream));
    const std::int64_t pairs = last_first + last_touch;
    keys_.resize(static_cast<std::size_t>(pairs));
    counts_.resize(static_cast<std::size_t>(pairs));
    detail::pyramid_pairs_kernel<<<grid, detail::kPyramidThreads, 0, stream>>>(
        p, block_size, thrust::raw_pointer_cast(first_.data()),
        thrust::raw_pointer_cast(keys_.data()), thrust::raw_pointer_cast(counts_.data()));
    MC_CUDA_TRY(detail::after_launch(stream));
    thrust::sort_by_key(policy, keys_.begin(), keys_.end(), counts_.begin());
    tile_keys_.resize(static_cast<std::size_t>(pairs));
    out.block_nnz.resize(static_cast<std::size_t>(pairs));
    const auto ends = thrust::reduce_by_key(policy, keys_.begin(), keys_.end(), counts_.begin(),
                                            tile_keys_.begin(), out.block_nnz.begin());
    const std::int64_t tiles = ends.first - tile_keys_.begin();
    MC_EXPECTS(tiles <= 0x7fffffff, Errc::kInvalidArgument, "[mc.bsr.too_many_blocks] ", tiles,
               " tiles (S = ", s, ", B = ", block_size, "); use a larger B");
    out.block_nnz.resize(static_cast<std::size_t>(tiles));
    out.col_idx.resize(static_cast<std::size_t>(tiles));
    thrust::transform(policy, tile_keys_.begin(), tile_keys_.begin() + tiles, out.col_idx.begin(),
                      detail::KeyBlock{});
    const auto rows = thrust::make_transform_iterator(thrust::counting_iterator<std::int32_t>(0),
                                                      detail::RowStartKey{});
    thrust::lower_bound(policy, tile_keys_.begin(), tile_keys_.begin() + tiles, rows,
                        rows + (nb + 1), out.row_ptr.begin());
    MC_CUDA_TRY(cudaStreamSynchronize(stream));
  }

 private:
  detail::CachingThrustAllocator alloc_;
  thrust::device_vector<std::int32_t> touches_;
  thrust::device_vector<std::int64_t> first_;
  thrust::device_vector<std::uint64_t> keys_, tile_keys_;
  thrust::device_vector<std::int32_t> counts_;
};

}  // namespace mc::cuda
