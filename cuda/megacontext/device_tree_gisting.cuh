// SPDX-License-Identifier: Apache-2.0
// GPU facade of batch tree gisting: for a whole document whose token embeddings [N, d] are on
// the device, every gist of every level (LOD1, then LOD2, ... up to Depth) in one launch per
// level, into one buffer with the levels laid out contiguously (TreeGistLayout). The gist
// function is a pluggable LevelPooler: MeanPoolLevels (the default, mc::cuda::mean_pool) gives
// the gists of the CPU Tree built with MeanPoolGister; a GistNet kernel drops in by satisfying the
// same concept (it receives K·n consecutive child rows and writes n gists, like Gister::gist).
// embed_tokens gathers the LOD0 embeddings from a token table on the device.
//
// CUB style: the stream last, cudaError_t returned, no allocation, no synchronisation (so a
// whole ingestion can be captured into a CUDA graph). Kernels:
// detail/kernels/tree_gisting_kernels.cuh and detail/kernels/gist_pool_kernels.cuh.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <concepts>
#include <cstdint>
#include <limits>

#include "megacontext/config.hpp"
#include "megacontext/detail/kernels/tree_gisting_kernels.cuh"
#include "megacontext/device_gist_pool.cuh"
#include "megacontext/error.cuh"
#include "megacontext/error.hpp"
#include "megacontext/lod.hpp"

namespace mc::cuda {

/// Where each gist level of a document of `num_tokens` tokens lies in one [total_rows, d]
/// buffer: level 1 first, then level 2, ...; level l holds floor(N / K^l) complete gists (the
/// incomplete tail has none, as in the Tree). row_offset(l) gives the first row of level l.
template <ConfigType C>
class TreeGistLayout {
 public:
  /// The layout for `num_tokens` >= 0 tokens.
  explicit TreeGistLayout(std::int64_t num_tokens) : num_tokens_(num_tokens) {
    MC_EXPECTS(num_tokens >= 0, Errc::kInvalidArgument,
               "[mc.tree_gisting.bad_shape] num_tokens = ", num_tokens, "; must be >= 0");
    std::int64_t rows = 0;
    for (int l = 1; l <= C::Depth; ++l) {
      offset_[l] = rows;
      rows += Lod<C>::level_size(num_tokens, l);
    }
    offset_[C::Depth + 1] = rows;
  }
  /// Tokens of the document.
  std::int64_t num_tokens() const { return num_tokens_; }
  /// Gists at level `lod` in [1, Depth].
  std::int64_t level_size(int lod) const { return offset_[lod + 1] - offset_[lod]; }
  /// First row of level `lod` in [1, Depth + 1] (Depth + 1: total_rows()).
  std::int64_t row_offset(int lod) const { return offset_[lod]; }
  /// Rows of all levels together.
  std::int64_t total_rows() const { return offset_[C::Depth + 1]; }

 private:
  std::int64_t num_tokens_ = 0;
  std::array<std::int64_t, C::Depth + 2> offset_{};
};

/// A gist function for batch gisting: `pool(lod, d_children, n, d_out, stream)` reads n·K child
/// rows [n·K, d] of level lod - 1 (device memory) and writes n gists [n, d] of level `lod`
/// (never aliasing the input), enqueued on `stream`, returning the launch status.
template <class P>
concept LevelPooler = requires(P& p, int lod, const float* in, std::int64_t n, float* out,
                               cudaStream_t stream) {
  { p(lod, in, n, out, stream) } -> std::same_as<cudaError_t>;
};

/// The reference gist function on the device: the mean of the K children (mc::cuda::mean_pool),
/// summed in child order in fp32 at every level.
struct MeanPoolLevels {
  int k = 32;          ///< children per gist (Config::K)
  std::int64_t d = 0;  ///< row dimension
  /// See LevelPooler.
  cudaError_t operator()(int /*lod*/, const float* in, std::int64_t n, float* out,
                         cudaStream_t stream) const {
    return mean_pool(in, n, k, d, out, stream);
  }
};

/// Builds every gist level of a document: `d_embeddings` [num_tokens, d] → `d_gists`
/// [TreeGistLayout<C>(num_tokens).total_rows(), d] (device memory, not overlapping), one `pool`
/// call per non-empty level (level 1 from the embeddings, level l from the first K·size(l) rows
/// of level l - 1). Throws mc::Error for bad shapes or null buffers before any launch; returns
/// the first failing launch status.
template <ConfigType C, LevelPooler Pool>
cudaError_t build_tree_gists(const float* d_embeddings, std::int64_t num_tokens, std::int64_t d,
                             float* d_gists, Pool&& pool, cudaStream_t stream = 0) {
  MC_EXPECTS(d >= 1 && num_tokens >= 0 &&
                 num_tokens <= std::numeric_limits<std::int64_t>::max() / 4 / d,
             Errc::kInvalidArgument, "[mc.tree_gisting.bad_shape] build_tree_gists(num_tokens = ",
             num_tokens, ", d = ", d, "): need num_tokens >= 0, d >= 1, sizes within int64 bytes");
  const TreeGistLayout<C> layout(num_tokens);
  if (layout.total_rows() == 0) return cudaSuccess;
  MC_EXPECTS(d_embeddings != nullptr && d_gists != nullptr, Errc::kInvalidArgument,
             "[mc.tree_gisting.null_pointer] build_tree_gists: null embeddings or gists with ",
             layout.total_rows(), " gists to build");
  for (int lod = 1; lod <= C::Depth; ++lod) {
    const std::int64_t n = layout.level_size(lod);
    if (n == 0) break;  // no gist here means none above either
    const float* in =
        lod == 1 ? d_embeddings : d_gists + layout.row_offset(lod - 1) * d;
    MC_CUDA_RETURN_IF_ERROR(pool(lod, in, n, d_gists + layout.row_offset(lod) * d, stream));
  }
  return cudaSuccess;
}

/// build_tree_gists with the mean of the children (the device twin of MeanPoolGister).
template <ConfigType C>
cudaError_t build_tree_gists(const float* d_embeddings, std::int64_t num_tokens, std::int64_t d,
                             float* d_gists, cudaStream_t stream = 0) {
  return build_tree_gists<C>(d_embeddings, num_tokens, d, d_gists, MeanPoolLevels{C::K, d},
                             stream);
}

/// Gathers `d_out` [n, d] = rows `d_ids` [n] of `d_table` [vocab, d] (device memory). An id
/// outside [0, vocab) gives a NaN row and sets `*d_error` to 1 (device int, which the caller
/// zeroes and reads back). Throws mc::Error for bad shapes or null buffers before any launch.
inline cudaError_t embed_tokens(const TokenId* d_ids, std::int64_t n, const float* d_table,
                                std::int64_t vocab, std::int64_t d, float* d_out, int* d_error,
                                cudaStream_t stream = 0) {
  MC_EXPECTS(n >= 0 && vocab >= 1 && d >= 1 &&
                 n <= std::numeric_limits<std::int64_t>::max() / 4 / d,
             Errc::kInvalidArgument, "[mc.tree_gisting.bad_shape] embed_tokens(n = ", n,
             ", vocab = ", vocab, ", d = ", d, "): need n >= 0, vocab >= 1, d >= 1");
  if (n == 0) return cudaSuccess;
  MC_EXPECTS(d_ids && d_table && d_out && d_error, Errc::kInvalidArgument,
             "[mc.tree_gisting.null_pointer] embed_tokens: a null buffer with n = ", n);
  const detail::EmbedTokensParams p{d_ids, d_table, d_out, n, vocab, d, d_error};
  const bool vec4 = d % 4 == 0 && reinterpret_cast<std::uintptr_t>(d_table) % 16 == 0 &&
                    reinterpret_cast<std::uintptr_t>(d_out) % 16 == 0;
  const std::int64_t total = n * (vec4 ? d / 4 : d);
  const auto blocks = static_cast<unsigned>(std::min<std::int64_t>(
      (total + detail::kEmbedThreads - 1) / detail::kEmbedThreads, 1 << 24));
  if (vec4) detail::embed_tokens_kernel<4><<<blocks, detail::kEmbedThreads, 0, stream>>>(p);
  else detail::embed_tokens_kernel<1><<<blocks, detail::kEmbedThreads, 0, stream>>>(p);
  return detail::after_launch(stream);
}

}  // namespace mc::cuda
