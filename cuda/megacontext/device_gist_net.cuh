// SPDX-License-Identifier: Apache-2.0
// GistNet on the GPU (CPU twin: mc::GistNet in include/megacontext/gist_net.hpp): forward of
// many gist blocks at once, [n·K, d] children → [n, d] gists, and the backward to every weight
// of the set the forward used and to the children (training through the frozen decoder needs
// dL/dchildren). It sits where the CPU GistNet does, between the token embeddings and the tree's
// levels; GistNetLevels plugs it into build_tree_gists (device_tree_gisting.cuh) as the batch
// gister. Maths and shapes: docs/concepts/gist_net.md.
//
// Composition: RMSNorm and the SwiGLU gate are the decoder's kernels (device_rmsnorm.cuh,
// device_swiglu.cuh: the same row-wise RMSNorm with gain and elementwise gate as the CPU's
// reference/rmsnorm.hpp and reference/swiglu.hpp), projections are cuBLAS (device_gemm.cuh), and
// the in-block attention with its RoPE, the pooling heads (both kMeanMlp and kQuery) are
// detail/kernels/gist_net_kernels.cuh.
//
// Inference (training = false) fuses three passes over the [n·K, d] rows that training must keep
// apart (its backward reads the intermediates): layer 0's RMSNorm also writes the residual copy
// of the input, w1 and w3 are one GEMM by a packed [w1 | w3] (the normed rows are read once),
// and the pooling RMSNorm and block mean are one kernel (the normed rows never reach memory).
//
// Memory: one allocation, sized in the constructor for at most `max_blocks` blocks per call by
// the same carving code that hands out the buffers (device_bytes() gives the size without
// allocating). With `training` the activations of every layer are kept for backward(); without,
// the layers share one set of buffers and update the residual stream in place (inference, about
// n_layers times less memory). forward/backward allocate nothing and never synchronise, so they
// can be captured in a CUDA graph.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "megacontext/config.hpp"
#include "megacontext/detail/gaussian_rope_math.hpp"
#include "megacontext/detail/kernels/gist_net_kernels.cuh"
#include "megacontext/detail/net_arena.cuh"
#include "megacontext/device_gemm.cuh"
#include "megacontext/device_rmsnorm.cuh"
#include "megacontext/device_swiglu.cuh"
#include "megacontext/device_tree_gisting.cuh"
#include "megacontext/error.cuh"
#include "megacontext/error.hpp"
#include "megacontext/gist_net.hpp"

namespace mc::cuda {

/// Largest dynamic shared memory one thread block may opt into on sm_90 (227 KiB).
inline constexpr std::size_t kGistNetMaxSmemBytes = 227 * 1024;

/// How a DeviceGistNet is sized and run.
struct DeviceGistNetOptions {
  std::int64_t max_blocks = 1024;   ///< most gist blocks n per forward; >= 1
  bool training = true;             ///< keep every layer's activations for backward()
  GemmMath math = GemmMath::kTf32;  ///< tensor-core mode of every GEMM (fp32 storage)

  /// Throws mc::Error ([mc.gist_net.bad_options]) naming a bad field.
  void validate() const {
    MC_EXPECTS(max_blocks >= 1 && max_blocks <= (std::int64_t{1} << 26), Errc::kInvalidArgument,
               "[mc.gist_net.bad_options] max_blocks = ", max_blocks, "; must be in [1, 2^26]");
    MC_EXPECTS(math == GemmMath::kFp32 || math == GemmMath::kTf32 || math == GemmMath::kBf16,
               Errc::kInvalidArgument, "[mc.gist_net.bad_options] math = ",
               static_cast<int>(math), "; must be kFp32, kTf32 or kBf16");
  }
};

/// The GistNet of Config C on the GPU; see the file comment. fp32 weights (C::Scalar = float).
/// Not copyable.
template <ConfigType C>
class DeviceGistNet {
 public:
  static_assert(std::is_same_v<typename C::Scalar, float>,
                "DeviceGistNet: the GPU GistNet stores fp32; use a Config with Scalar = float");
  /// Children per gist.
  static constexpr int K = C::K;

  /// Uploads `weights` (shapes checked against `options`, as mc::GistNet does) and sizes every
  /// buffer for `device.max_blocks` blocks. Throws mc::Error for bad options or shapes (before
  /// touching the GPU) and mc::CudaError when an allocation fails.
  DeviceGistNet(const GistNetOptions& options, const GistNetWeights<float>& weights,
                DeviceGistNetOptions device = {})
      : opt_(options), dev_(device), layout_(check_all(options, weights, device)) {
    blas_ = std::make_unique<CublasHandle>();
    try {
      carve_all();
      MC_CUDA_TRY(cudaMemset(arena_, 0, arena_bytes_));
      upload_weights(weights);
      upload_constants();
      set_smem_limits();
      MC_CUDA_TRY(cudaDeviceSynchronize());
    } catch (...) {
      release();
      throw;
    }
  }
  ~DeviceGistNet() { release(); }
  DeviceGistNet(const DeviceGistNet&) = delete;
  DeviceGistNet& operator=(const DeviceGistNet&) = delete;

  /// Device bytes a DeviceGistNet of these options allocates (no GPU needed; throws for bad
  /// options like the constructor, weights aside).
  static std::size_t device_bytes(const GistNetOptions& options, DeviceGistNetOptions device) {
    check_sizes(options, device);
    Buffers unused;
    detail::ArenaCarver measure(nullptr);
    carve(measure, options, device,
          detail::FlatLayout(GistNetWeights<float>::zeros(options)).total(), unused);
    return measure.bytes();
  }

  /// The network options.
  const GistNetOptions& options() const { return opt_; }
  /// The device options.
  const DeviceGistNetOptions& device_options() const { return dev_; }
  /// Bytes of the one device allocation.
  std::size_t device_bytes() const { return arena_bytes_; }
  /// Floats of the flat weight (and gradient) buffer, padding included (padding stays 0).
  std::int64_t num_flat() const { return layout_.total(); }
  /// The flat weights on the device (for an optimiser such as device_adamw.cuh).
  float* d_weights() { return b_.params; }
  /// The flat gradients on the device, same layout as d_weights().
  float* d_gradients() { return b_.grads; }

  /// Gists of level `lod` in [1, Depth] for `n` in [0, max_blocks] blocks: `d_in` [n·K, d]
  /// (K children per block in time order) → `d_gists` [n, d] (device, not overlapping d_in).
  /// With `training`, keeps the activations for backward(). Throws mc::Error for a bad lod, n
  /// or pointer before any launch; returns the first failing launch status.
  cudaError_t forward(int lod, const float* d_in, std::int64_t n, float* d_gists,
                      cudaStream_t stream = 0) {
    const std::size_t set = weight_set(lod);
    MC_EXPECTS(n >= 0 && n <= dev_.max_blocks, Errc::kInvalidArgument,
               "[mc.gist_net.bad_shape] forward of n = ", n, " blocks; this DeviceGistNet takes "
               "0 <= n <= max_blocks = ", dev_.max_blocks);
    last_n_ = 0;
    if (n == 0) return cudaSuccess;
    const std::int64_t d = opt_.d_model;
    MC_EXPECTS(d_in != nullptr && d_gists != nullptr &&
                   !detail::overlaps(d_in, bytes(n * K * d), d_gists, bytes(n * d)),
               Errc::kInvalidArgument, "[mc.gist_net.bad_shape] forward: d_in or d_gists is null "
               "or they overlap (n = ", n, ")");
    MC_CUDA_RETURN_IF_ERROR(forward_impl(set, d_in, n, d_gists, stream));
    last_n_ = n;
    last_set_ = set;
    return cudaSuccess;
  }

  /// From dL/dgists `d_dgists` [n, d] of the latest forward (n must match it): writes dL/dW of
  /// the weight set that forward used into d_gradients() (adds to it when `accumulate`; other
  /// sets untouched) and, when `d_dinputs` is not null, dL/dchildren [n·K, d]. Needs `training`.
  /// Throws mc::Error for a missing forward or bad arguments; returns the first launch status.
  cudaError_t backward(const float* d_dgists, std::int64_t n, float* d_dinputs,
                       bool accumulate = false, cudaStream_t stream = 0) {
    MC_EXPECTS(dev_.training, Errc::kState, "[mc.gist_net.no_forward] backward needs a "
               "DeviceGistNet built with training = true (inference keeps no activations)");
    MC_EXPECTS(last_n_ >= 1, Errc::kState,
               "[mc.gist_net.no_forward] backward needs a completed forward of n >= 1 first");
    MC_EXPECTS(n == last_n_ && d_dgists != nullptr, Errc::kInvalidArgument,
               "[mc.gist_net.bad_shape] backward of n = ", n, " blocks; the latest forward had ",
               last_n_, " (and d_dgists must be non-null)");
    return backward_impl(d_dgists, n, d_dinputs, accumulate, stream);
  }

  /// Replaces the weights (shapes checked against the options); synchronous.
  void upload_weights(const GistNetWeights<float>& weights) {
    const GistNet<C> check(opt_, weights);  // throws [mc.gist_net.bad_weights] on a bad shape
    (void)check;
    layout_.upload(weights, b_.params);
  }
  /// The current weights (synchronises the device).
  GistNetWeights<float> download_weights() const { return download(b_.params); }
  /// The gradients of the latest backward(s), shaped like the weights (synchronises).
  GistNetWeights<float> download_gradients() const { return download(b_.grads); }
  /// Zeroes every gradient, on `stream`.
  cudaError_t zero_gradients(cudaStream_t stream = 0) {
    return cudaMemsetAsync(b_.grads, 0, bytes(layout_.total()), stream);
  }

  /// Index of the weight set that builds level `lod` (as mc::GistNet::weight_set).
  std::size_t weight_set(int lod) const {
    MC_EXPECTS(lod >= 1 && lod <= C::Depth, Errc::kOutOfRange, "[mc.gist_net.bad_lod] lod = ", lod,
               "; must be in [1, ", C::Depth, "]");
    return static_cast<std::size_t>(std::min<std::int64_t>(lod, opt_.num_weight_sets) - 1);
  }

 private:
  using FlatLayout_ = detail::FlatLayout;
  struct BlockPtrs {
    float* attn_norm;
    float* wq;  // wk, wv at wq + qkv_stride_, + 2·qkv_stride_
    float* wo;
    float* mlp_norm;
    float* w1;  // w3 at w1 + w13_stride_
    float* w2;
  };
  struct SetPtrs {
    std::vector<BlockPtrs> blocks;
    float* pool_norm = nullptr;
    float* pool_w1 = nullptr;
    float* pool_w2 = nullptr;
    float* pool_query = nullptr;
    float* pool_wk = nullptr;
    float* pool_wv = nullptr;
    float* pool_wo = nullptr;
    float* out_norm = nullptr;
  };
  struct LayerActs {
    float* x = nullptr;      // [m, d] block input (inference: the residual stream, updated)
    float* xn1 = nullptr;    // [m, d]
    float* rstd1 = nullptr;  // [m]
    float* qkv = nullptr;    // [m, 3·da] q | k (rotated when training) | v, one row per child
    float* o = nullptr;      // [m, da]
    float* h = nullptr;      // [m, d] x + attention (inference: x)
    float* xn2 = nullptr;    // [m, d] (inference: xn1)
    float* rstd2 = nullptr;  // [m] (inference: rstd1)
    float* ab = nullptr;     // [2, m, f] xn2·w1, xn2·w3
    float* g = nullptr;      // [m, f]
  };

  // Every buffer carved from the one allocation.
  struct Buffers {
    float* params = nullptr;
    float* grads = nullptr;
    float2* rope = nullptr;
    float* ones = nullptr;
    float* wpack = nullptr;  // [d, 3·da] wq | wk | wv of the block being run
    float* w13pack = nullptr;  // inference: [d, 2·f] w1 | w3 of the block being run
    std::vector<LayerActs> acts;
    float* x_last = nullptr;
    float* hn = nullptr;
    float* rstd_p = nullptr;
    float* mean = nullptr;
    float* pool_a = nullptr;
    float* pool_s = nullptr;
    float* pk = nullptr;
    float* probs = nullptr;
    float* po = nullptr;
    float* y = nullptr;
    float* rstd_o = nullptr;
    float* dx = nullptr;
    float* dxn = nullptr;
    float* d_o = nullptr;
    float* dqkv = nullptr;
    float* dab = nullptr;
    float* dg = nullptr;
    float* dy = nullptr;
    float* dm = nullptr;
    float* dpa = nullptr;
    float* d_po = nullptr;
    float* dpk = nullptr;
    float* dq_part = nullptr;
    float* gain = nullptr;
    void* norm_ws = nullptr;
    std::size_t norm_ws_bytes = 0;
  };

  static std::size_t bytes(std::int64_t floats) {
    return static_cast<std::size_t>(floats) * sizeof(float);
  }

  static void check_sizes(const GistNetOptions& o, const DeviceGistNetOptions& dev) {
    o.validate();
    dev.validate();
    const auto dh = static_cast<int>(o.d_head());
    MC_EXPECTS(o.d_model <= kRmsNormMaxDim && o.n_heads <= 65535, Errc::kInvalidArgument,
               "[mc.gist_net.bad_options] d_model = ", o.d_model, ", n_heads = ", o.n_heads,
               "; the GPU GistNet needs d_model <= ", kRmsNormMaxDim, " and n_heads <= 65535");
    const std::size_t smem = detail::gist_attn_backward_smem(K, dh);
    MC_EXPECTS(smem <= kGistNetMaxSmemBytes, Errc::kInvalidArgument,
               "[mc.gist_net.bad_options] K = ", K, " with d_head = ", dh, " needs ", smem,
               " bytes of shared memory per block; the GPU GistNet allows ", kGistNetMaxSmemBytes);
  }

  static FlatLayout_ check_all(const GistNetOptions& o, const GistNetWeights<float>& w,
                               const DeviceGistNetOptions& dev) {
    check_sizes(o, dev);
    const GistNet<C> check(o, w);  // the CPU twin's shape checks ([mc.gist_net.bad_weights])
    (void)check;
    return FlatLayout_(GistNetWeights<float>::zeros(o));
  }

  void release() {
    if (arena_ != nullptr) (void)cudaFree(arena_);
    arena_ = nullptr;
  }

  // Carves every buffer into `b` (a carver with a null base only measures).
  static void carve(detail::ArenaCarver& c, const GistNetOptions& o, const DeviceGistNetOptions& dv,
                    std::int64_t flat, Buffers& b) {
    const std::int64_t nb = dv.max_blocks, m = nb * K, d = o.d_model, da = o.d_attn,
                       f = o.d_ff, dh = o.d_head();
    const bool query = o.pooling == GistPooling::kQuery;
    const std::int64_t p = query ? 0 : o.d_pool;
    const bool train = dv.training;
    b.params = c.take<float>(flat);
    b.grads = c.take<float>(flat);
    b.rope = c.take<float2>(K * (dh / 2));
    b.ones = c.take<float>(nb);
    b.wpack = c.take<float>(d * 3 * da);
    b.w13pack = train ? nullptr : c.take<float>(d * 2 * f);
    const std::int64_t sets = train ? o.n_layers : 1;
    b.acts.assign(static_cast<std::size_t>(sets), LayerActs{});
    for (LayerActs& a : b.acts) {
      a.x = c.take<float>(m * d);
      a.xn1 = c.take<float>(m * d);
      a.rstd1 = c.take<float>(m);
      a.qkv = c.take<float>(3 * m * da);
      a.o = c.take<float>(m * da);
      a.h = train ? c.take<float>(m * d) : a.x;
      a.xn2 = train ? c.take<float>(m * d) : a.xn1;
      a.rstd2 = train ? c.take<float>(m) : a.rstd1;
      a.ab = c.take<float>(2 * m * f);
      a.g = c.take<float>(m * f);
    }
    b.x_last = train ? c.take<float>(m * d) : b.acts[0].x;
    b.hn = train ? c.take<float>(m * d) : b.acts[0].xn1;
    b.rstd_p = c.take<float>(m);
    b.mean = c.take<float>(nb * d);
    b.pool_a = c.take<float>(nb * p);
    b.pool_s = c.take<float>(nb * p);
    b.pk = query ? c.take<float>(2 * m * da) : nullptr;  // pool k then pool v
    b.probs = c.take<float>(query ? nb * o.n_heads * K : 0);
    b.po = c.take<float>(query ? nb * da : 0);
    b.y = c.take<float>(nb * d);
    b.rstd_o = c.take<float>(nb);
    if (train) {
      b.dx = c.take<float>(m * d);
      b.dxn = c.take<float>(m * d);
      b.d_o = c.take<float>(m * da);
      b.dqkv = c.take<float>(3 * m * da);
      b.dab = c.take<float>(2 * m * f);
      b.dg = c.take<float>(m * f);
      b.dy = c.take<float>(nb * d);
      b.dm = c.take<float>(nb * d);
      b.dpa = c.take<float>(nb * p);
      b.d_po = c.take<float>(query ? nb * da : 0);
      b.dpk = query ? c.take<float>(2 * m * da) : nullptr;
      b.dq_part = c.take<float>(query ? nb * da : 0);
      b.gain = c.take<float>(d);
      b.norm_ws_bytes = rmsnorm_backward_workspace_bytes(m, d);
      b.norm_ws = c.take<std::byte>(static_cast<std::int64_t>(b.norm_ws_bytes));
    }
  }

  void carve_all() {
    Buffers unused;
    detail::ArenaCarver measure(nullptr);
    carve(measure, opt_, dev_, layout_.total(), unused);
    arena_bytes_ = measure.bytes();
    MC_CUDA_TRY(cudaMalloc(&arena_, arena_bytes_));
    detail::ArenaCarver real(static_cast<std::byte*>(arena_));
    carve(real, opt_, dev_, layout_.total(), b_);
    w_ = set_ptrs(b_.params);
    g_ = set_ptrs(b_.grads);
    const std::int64_t q0 = layout_.offset("sets.0.blocks.0.attn.wq");
    qkv_stride_ = layout_.offset("sets.0.blocks.0.attn.wk") - q0;
    w13_stride_ = layout_.offset("sets.0.blocks.0.mlp.w3") - layout_.offset("sets.0.blocks.0.mlp.w1");
    MC_EXPECTS(layout_.offset("sets.0.blocks.0.attn.wv") - layout_.offset("sets.0.blocks.0.attn.wk") ==
                   qkv_stride_,
               Errc::kInvalidArgument, "[mc.gist_net.bad_weights] wq, wk, wv are not evenly "
               "spaced in the flat layout (library bug)");
  }

  std::vector<SetPtrs> set_ptrs(float* flat) const {
    std::vector<SetPtrs> out(static_cast<std::size_t>(opt_.num_weight_sets));
    const bool query = opt_.pooling == GistPooling::kQuery;
    for (std::size_t s = 0; s < out.size(); ++s) {
      const std::string p = "sets." + std::to_string(s) + ".";
      SetPtrs& q = out[s];
      for (std::int64_t l = 0; l < opt_.n_layers; ++l) {
        const std::string b = p + "blocks." + std::to_string(l) + ".";
        q.blocks.push_back({flat + layout_.offset(b + "attn_norm"), flat + layout_.offset(b + "attn.wq"),
                            flat + layout_.offset(b + "attn.wo"), flat + layout_.offset(b + "mlp_norm"),
                            flat + layout_.offset(b + "mlp.w1"), flat + layout_.offset(b + "mlp.w2")});
      }
      q.pool_norm = flat + layout_.offset(p + "pool_norm");
      if (query) {
        q.pool_query = flat + layout_.offset(p + "pool.query");
        q.pool_wk = flat + layout_.offset(p + "pool.wk");
        q.pool_wv = flat + layout_.offset(p + "pool.wv");
        q.pool_wo = flat + layout_.offset(p + "pool.wo");
      } else {
        q.pool_w1 = flat + layout_.offset(p + "pool.w1");
        q.pool_w2 = flat + layout_.offset(p + "pool.w2");
      }
      q.out_norm = flat + layout_.offset(p + "out_norm");
    }
    return out;
  }

  // In-block RoPE factors (positions 0..K−1, σ = 0) from the CPU's functions, and the ones.
  void upload_constants() {
    const int dh = static_cast<int>(opt_.d_head()), half = dh / 2;
    std::vector<float2> table(static_cast<std::size_t>(K * half));
    for (int r = 0; r < K; ++r)
      for (int j = 0; j < half; ++j) {
        const RopeFactor f =
            gaussian_rope_factor(static_cast<double>(r), 0.0, rope_frequency(j, dh, opt_.rope_base));
        table[static_cast<std::size_t>(r * half + j)] =
            make_float2(static_cast<float>(f.re), static_cast<float>(f.im));
      }
    MC_CUDA_TRY(cudaMemcpy(b_.rope, table.data(), table.size() * sizeof(float2),
                           cudaMemcpyHostToDevice));
    MC_CUDA_TRY(detail::net_fill(1.0f, dev_.max_blocks, b_.ones, 0));
  }

  void set_smem_limits() {
    const int dh = static_cast<int>(opt_.d_head());
    const std::size_t fwd = detail::gist_attn_forward_smem(K, dh);
    const std::size_t bwd = detail::gist_attn_backward_smem(K, dh);
    if (fwd > 48 * 1024)
      MC_CUDA_TRY(cudaFuncSetAttribute(detail::gist_attention_forward_kernel,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(fwd)));
    if (bwd > 48 * 1024)
      MC_CUDA_TRY(cudaFuncSetAttribute(detail::gist_attention_backward_kernel,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(bwd)));
    const std::size_t qs = static_cast<std::size_t>(detail::kGistQueryWarps) * K * sizeof(float);
    if (qs > 48 * 1024) {
      MC_CUDA_TRY(cudaFuncSetAttribute(detail::gist_query_forward_kernel,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(qs)));
      MC_CUDA_TRY(cudaFuncSetAttribute(detail::gist_query_backward_kernel,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(qs)));
    }
  }

  GistNetWeights<float> download(const float* flat) const {
    GistNetWeights<float> w = GistNetWeights<float>::zeros(opt_);
    layout_.download(flat, w);
    return w;
  }

  detail::GistAttnParams attn_params(const LayerActs& a, std::int64_t m) const {
    detail::GistAttnParams p{};
    const std::int64_t da = opt_.d_attn;
    (void)m;
    p.q = a.qkv;
    p.k = a.qkv + da;
    p.v = a.qkv + 2 * da;
    p.rope = b_.rope;
    p.k_block = K;
    p.d_head = static_cast<int>(opt_.d_head());
    p.d_attn = static_cast<int>(da);
    p.ld_qkv = static_cast<int>(3 * da);
    p.scale = 1.0f / std::sqrt(static_cast<float>(opt_.d_head()));
    return p;
  }

  static unsigned norm_blocks(std::int64_t rows) {
    return static_cast<unsigned>((rows + detail::kGistPoolThreads / 32 - 1) /
                                 (detail::kGistPoolThreads / 32));
  }
  static unsigned pool_blocks(std::int64_t count) {
    return static_cast<unsigned>(std::clamp<std::int64_t>(
        (count + detail::kGistPoolThreads - 1) / detail::kGistPoolThreads, 1,
        std::int64_t{1} << 20));
  }

  cudaError_t copy(float* dst, const float* src, std::int64_t floats, cudaStream_t s) const {
    return cudaMemcpyAsync(dst, src, bytes(floats), cudaMemcpyDeviceToDevice, s);
  }

  cudaError_t forward_impl(std::size_t set, const float* d_in, std::int64_t n, float* d_gists,
                           cudaStream_t s) {
    const std::int64_t m = n * K, d = opt_.d_model, da = opt_.d_attn, f = opt_.d_ff;
    const int heads = static_cast<int>(opt_.n_heads), dh = static_cast<int>(opt_.d_head());
    const double eps = opt_.norm_eps;
    const GemmMath mm = dev_.math;
    const bool train = dev_.training;
    const SetPtrs& w = w_[set];
    const float* x_in = d_in;
    if (train) {
      MC_CUDA_RETURN_IF_ERROR(copy(b_.acts[0].x, d_in, m * d, s));
      x_in = b_.acts[0].x;
    }
    for (std::size_t l = 0; l < w.blocks.size(); ++l) {
      const BlockPtrs& bw = w.blocks[l];
      const LayerActs& a = b_.acts[train ? l : 0];
      float* out = train ? (l + 1 < b_.acts.size() ? b_.acts[l + 1].x : b_.x_last) : a.x;
      if (!train && x_in != a.h) {
        // Inference, layer 0: the caller's input is normed and copied into the residual stream
        // in one pass (the copy the wo GEMM below accumulates onto).
        detail::gist_rmsnorm_copy_kernel<<<norm_blocks(m), detail::kGistPoolThreads, 0, s>>>(
            x_in, bw.attn_norm, m, static_cast<int>(d), static_cast<float>(eps), a.xn1, a.rstd1,
            a.h);
        MC_CUDA_RETURN_IF_ERROR(detail::after_launch(s));
        x_in = a.h;
      } else {
        MC_CUDA_RETURN_IF_ERROR(rmsnorm_forward(x_in, bw.attn_norm, m, d, eps, a.xn1, a.rstd1, s));
      }
      // One GEMM for q, k and v (reads xn1 once): [m, d] · [wq | wk | wv] → [m, 3·da]. The
      // packed copy is rebuilt from the flat weights every time, so optimiser steps on
      // d_weights() are always seen.
      detail::gist_pack_cols_kernel<<<pool_blocks(d * 3 * da), detail::kGistPoolThreads, 0, s>>>(
          bw.wq, qkv_stride_, 3, static_cast<int>(d), static_cast<int>(da), b_.wpack);
      MC_CUDA_RETURN_IF_ERROR(detail::after_launch(s));
      gemm(*blas_, false, false, m, 3 * da, d, 1.0f, a.xn1, d, b_.wpack, 3 * da, 0.0f, a.qkv,
           3 * da, mm, s);
      detail::GistAttnParams p = attn_params(a, m);
      p.o = a.o;
      p.store_rotated = train;
      const dim3 grid(static_cast<unsigned>(n), static_cast<unsigned>(heads));
      if (K == 32 && dh == 32) {
        detail::gist_attention_forward_k32d32_kernel<<<grid, detail::kGistAttnThreads,
                                                       detail::gist_attn_forward_smem(K, dh), s>>>(
            p);
      } else {
        detail::gist_attention_forward_kernel<<<grid, detail::kGistAttnThreads,
                                                detail::gist_attn_forward_smem(K, dh), s>>>(p);
      }
      MC_CUDA_RETURN_IF_ERROR(detail::after_launch(s));
      // h = x + o·wo: the GEMM accumulates onto the residual (a copy of it when training).
      if (a.h != x_in) MC_CUDA_RETURN_IF_ERROR(copy(a.h, x_in, m * d, s));
      gemm(*blas_, false, false, m, d, da, 1.0f, a.o, da, bw.wo, d, 1.0f, a.h, d, mm, s);
      MC_CUDA_RETURN_IF_ERROR(rmsnorm_forward(a.h, bw.mlp_norm, m, d, eps, a.xn2, a.rstd2, s));
      if (train) {
        // The backward reads a and b as two [m, f] matrices.
        gemm_strided_batched(*blas_, false, false, m, f, d, 1.0f, a.xn2, d, 0, bw.w1, f,
                             w13_stride_, 0.0f, a.ab, f, m * f, 2, mm, s);
        MC_CUDA_RETURN_IF_ERROR(swiglu_forward(a.ab, a.ab + m * f, m * f, a.g, s));
      } else {
        // One GEMM by [w1 | w3] reads xn2 once (the batched pair reads it twice): rows [a | b].
        detail::gist_pack_cols_kernel<<<pool_blocks(d * 2 * f), detail::kGistPoolThreads, 0, s>>>(
            bw.w1, w13_stride_, 2, static_cast<int>(d), static_cast<int>(f), b_.w13pack);
        MC_CUDA_RETURN_IF_ERROR(detail::after_launch(s));
        gemm(*blas_, false, false, m, 2 * f, d, 1.0f, a.xn2, d, b_.w13pack, 2 * f, 0.0f, a.ab,
             2 * f, mm, s);
        detail::gist_swiglu_rows_kernel<<<pool_blocks(m * 32), detail::kGistPoolThreads, 0, s>>>(
            a.ab, m, static_cast<int>(f), a.g);
        MC_CUDA_RETURN_IF_ERROR(detail::after_launch(s));
      }
      if (out != a.h) MC_CUDA_RETURN_IF_ERROR(copy(out, a.h, m * d, s));
      gemm(*blas_, false, false, m, d, f, 1.0f, a.g, f, bw.w2, d, 1.0f, out, d, mm, s);
      x_in = out;
    }
    const bool fused_mean = !train && opt_.pooling == GistPooling::kMeanMlp &&
                            detail::gist_norm_mean_smem(K, static_cast<int>(d)) <= 48 * 1024;
    if (fused_mean) {
      // Inference: norm and block mean in one pass; the normed rows stay in shared memory.
      detail::gist_norm_mean_kernel<<<static_cast<unsigned>(n), detail::kGistPoolThreads,
                                      detail::gist_norm_mean_smem(K, static_cast<int>(d)), s>>>(
          x_in, w.pool_norm, K, static_cast<int>(d), static_cast<float>(eps), b_.mean);
      MC_CUDA_RETURN_IF_ERROR(detail::after_launch(s));
    } else {
      MC_CUDA_RETURN_IF_ERROR(rmsnorm_forward(x_in, w.pool_norm, m, d, eps, b_.hn, b_.rstd_p, s));
    }
    if (opt_.pooling == GistPooling::kMeanMlp) {
      const std::int64_t p = opt_.d_pool;
      if (!fused_mean) {
        detail::gist_block_mean_kernel<<<pool_blocks(n * d), detail::kGistPoolThreads, 0, s>>>(
            b_.hn, n, K, static_cast<int>(d), b_.mean);
        MC_CUDA_RETURN_IF_ERROR(detail::after_launch(s));
      }
      gemm(*blas_, false, false, n, p, d, 1.0f, b_.mean, d, w.pool_w1, p, 0.0f, b_.pool_a, p, mm, s);
      detail::gist_silu_forward_kernel<<<pool_blocks(n * p), detail::kGistPoolThreads, 0, s>>>(
          b_.pool_a, n * p, b_.pool_s);
      MC_CUDA_RETURN_IF_ERROR(detail::after_launch(s));
      // Residual head: y = mean + silu(mean·w1)·w2.
      MC_CUDA_RETURN_IF_ERROR(copy(b_.y, b_.mean, n * d, s));
      gemm(*blas_, false, false, n, d, p, 1.0f, b_.pool_s, p, w.pool_w2, d, 1.0f, b_.y, d, mm, s);
    } else {
      float* pv = b_.pk + m * da;
      gemm(*blas_, false, false, m, da, d, 1.0f, b_.hn, d, w.pool_wk, da, 0.0f, b_.pk, da, mm, s);
      gemm(*blas_, false, false, m, da, d, 1.0f, b_.hn, d, w.pool_wv, da, 0.0f, pv, da, mm, s);
      const detail::GistQueryParams q = query_params(w, n);
      detail::gist_query_forward_kernel<<<query_blocks(n), detail::kGistQueryWarps * 32,
                                          query_smem(), s>>>(q);
      MC_CUDA_RETURN_IF_ERROR(detail::after_launch(s));
      gemm(*blas_, false, false, n, d, da, 1.0f, b_.po, da, w.pool_wo, d, 0.0f, b_.y, d, mm, s);
    }
    return rmsnorm_forward(b_.y, w.out_norm, n, d, eps, d_gists, b_.rstd_o, s);
  }

  detail::GistQueryParams query_params(const SetPtrs& w, std::int64_t n) const {
    detail::GistQueryParams q{};
    const std::int64_t m = n * K;
    q.query = w.pool_query;
    q.k = b_.pk;
    q.v = b_.pk + m * opt_.d_attn;
    q.probs = b_.probs;
    q.o = b_.po;
    q.d_o = b_.d_po;
    q.dk = b_.dpk;
    q.dv = b_.dpk != nullptr ? b_.dpk + m * opt_.d_attn : nullptr;
    q.dq_part = b_.dq_part;
    q.n = n;
    q.k_block = K;
    q.n_heads = static_cast<int>(opt_.n_heads);
    q.d_head = static_cast<int>(opt_.d_head());
    q.scale = 1.0f / std::sqrt(static_cast<float>(opt_.d_head()));
    return q;
  }
  unsigned query_blocks(std::int64_t n) const {
    return static_cast<unsigned>((n * opt_.n_heads + detail::kGistQueryWarps - 1) /
                                 detail::kGistQueryWarps);
  }
  static std::size_t query_smem() {
    return static_cast<std::size_t>(detail::kGistQueryWarps) * K * sizeof(float);
  }

  // dL/dx of an RMSNorm added into dx; its gain gradient written (or added) to g_gain.
  cudaError_t norm_back(const float* dy, const float* x, const float* gain, const float* rstd,
                        std::int64_t rows, float* dx, float* g_gain, bool accumulate,
                        cudaStream_t s) {
    const std::int64_t d = opt_.d_model;
    MC_CUDA_RETURN_IF_ERROR(rmsnorm_backward(dy, x, gain, rstd, rows, d, dx,
                                             accumulate ? b_.gain : g_gain, b_.norm_ws,
                                             b_.norm_ws_bytes, s));
    return accumulate ? detail::net_add(b_.gain, d, g_gain, s) : cudaSuccess;
  }

  cudaError_t backward_impl(const float* d_dgists, std::int64_t n, float* d_dinputs,
                            bool acc, cudaStream_t s) {
    const std::int64_t m = n * K, d = opt_.d_model, da = opt_.d_attn, f = opt_.d_ff;
    const int heads = static_cast<int>(opt_.n_heads), dh = static_cast<int>(opt_.d_head());
    const GemmMath mm = dev_.math;
    const float gb = acc ? 1.0f : 0.0f;
    const SetPtrs& w = w_[last_set_];
    const SetPtrs& g = g_[last_set_];
    MC_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(b_.dy, 0, bytes(n * d), s));
    MC_CUDA_RETURN_IF_ERROR(norm_back(d_dgists, b_.y, w.out_norm, b_.rstd_o, n, b_.dy, g.out_norm, acc, s));
    float* dhn = b_.dxn;
    if (opt_.pooling == GistPooling::kMeanMlp) {
      const std::int64_t p = opt_.d_pool;
      gemm(*blas_, true, false, p, d, n, 1.0f, b_.pool_s, p, b_.dy, d, gb, g.pool_w2, d, mm, s);
      gemm(*blas_, false, true, n, p, d, 1.0f, b_.dy, d, w.pool_w2, d, 0.0f, b_.dpa, p, mm, s);
      detail::gist_silu_backward_kernel<<<pool_blocks(n * p), detail::kGistPoolThreads, 0, s>>>(
          b_.dpa, b_.pool_a, n * p, b_.dpa);
      MC_CUDA_RETURN_IF_ERROR(detail::after_launch(s));
      gemm(*blas_, true, false, d, p, n, 1.0f, b_.mean, d, b_.dpa, p, gb, g.pool_w1, p, mm, s);
      MC_CUDA_RETURN_IF_ERROR(copy(b_.dm, b_.dy, n * d, s));
      gemm(*blas_, false, true, n, d, p, 1.0f, b_.dpa, p, w.pool_w1, p, 1.0f, b_.dm, d, mm, s);
      detail::gist_block_spread_kernel<<<pool_blocks(m * d), detail::kGistPoolThreads, 0, s>>>(
          b_.dm, n, K, static_cast<int>(d), dhn);
      MC_CUDA_RETURN_IF_ERROR(detail::after_launch(s));
    } else {
      float* dpv = b_.dpk + m * da;
      gemm(*blas_, true, false, da, d, n, 1.0f, b_.po, da, b_.dy, d, gb, g.pool_wo, d, mm, s);
      gemm(*blas_, false, true, n, da, d, 1.0f, b_.dy, d, w.pool_wo, d, 0.0f, b_.d_po, da, mm, s);
      const detail::GistQueryParams q = query_params(w, n);
      detail::gist_query_backward_kernel<<<query_blocks(n), detail::kGistQueryWarps * 32,
                                           query_smem(), s>>>(q);
      MC_CUDA_RETURN_IF_ERROR(detail::after_launch(s));
      // dL/dquery = Σ_blocks of the per-block shares, as one GEMM with a ones vector (fixed
      // order, so deterministic).
      gemm(*blas_, true, false, da, 1, n, 1.0f, b_.dq_part, da, b_.ones, 1, gb, g.pool_query, 1, mm,
           s);
      gemm(*blas_, true, false, d, da, m, 1.0f, b_.hn, d, b_.dpk, da, gb, g.pool_wk, da, mm, s);
      gemm(*blas_, true, false, d, da, m, 1.0f, b_.hn, d, dpv, da, gb, g.pool_wv, da, mm, s);
      gemm(*blas_, false, true, m, d, da, 1.0f, b_.dpk, da, w.pool_wk, da, 0.0f, dhn, d, mm, s);
      gemm(*blas_, false, true, m, d, da, 1.0f, dpv, da, w.pool_wv, da, 1.0f, dhn, d, mm, s);
    }
    MC_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(b_.dx, 0, bytes(m * d), s));
    MC_CUDA_RETURN_IF_ERROR(norm_back(dhn, b_.x_last, w.pool_norm, b_.rstd_p, m, b_.dx, g.pool_norm, acc, s));
    for (std::size_t l = w.blocks.size(); l-- > 0;) {
      const BlockPtrs& bw = w.blocks[l];
      const BlockPtrs& bg = g.blocks[l];
      const LayerActs& a = b_.acts[l];
      // MLP: out = h + (silu(xn2·w1) ∘ xn2·w3)·w2; b_.dx holds dL/dout and becomes dL/dh.
      gemm(*blas_, true, false, f, d, m, 1.0f, a.g, f, b_.dx, d, gb, bg.w2, d, mm, s);
      gemm(*blas_, false, true, m, f, d, 1.0f, b_.dx, d, bw.w2, d, 0.0f, b_.dg, f, mm, s);
      MC_CUDA_RETURN_IF_ERROR(
          swiglu_backward(b_.dg, a.ab, a.ab + m * f, m * f, b_.dab, b_.dab + m * f, s));
      gemm_strided_batched(*blas_, true, false, d, f, m, 1.0f, a.xn2, d, 0, b_.dab, f, m * f, gb,
                           bg.w1, f, w13_stride_, 2, mm, s);
      gemm(*blas_, false, true, m, d, f, 1.0f, b_.dab, f, bw.w1, f, 0.0f, b_.dxn, d, mm, s);
      gemm(*blas_, false, true, m, d, f, 1.0f, b_.dab + m * f, f, bw.w1 + w13_stride_, f, 1.0f,
           b_.dxn, d, mm, s);
      MC_CUDA_RETURN_IF_ERROR(norm_back(b_.dxn, a.h, bw.mlp_norm, a.rstd2, m, b_.dx, bg.mlp_norm, acc, s));
      // Attention: h = x + attn(xn1)·wo; b_.dx becomes dL/dx.
      gemm(*blas_, true, false, da, d, m, 1.0f, a.o, da, b_.dx, d, gb, bg.wo, d, mm, s);
      gemm(*blas_, false, true, m, da, d, 1.0f, b_.dx, d, bw.wo, d, 0.0f, b_.d_o, da, mm, s);
      detail::GistAttnParams p = attn_params(a, m);
      p.d_o = b_.d_o;
      p.dq = b_.dqkv;
      p.dk = b_.dqkv + m * da;
      p.dv = b_.dqkv + 2 * m * da;
      detail::gist_attention_backward_kernel<<<dim3(static_cast<unsigned>(n),
                                                    static_cast<unsigned>(heads)),
                                               detail::kGistAttnThreads,
                                               detail::gist_attn_backward_smem(K, dh), s>>>(p);
      MC_CUDA_RETURN_IF_ERROR(detail::after_launch(s));
      gemm_strided_batched(*blas_, true, false, d, da, m, 1.0f, a.xn1, d, 0, b_.dqkv, da, m * da,
                           gb, bg.wq, da, qkv_stride_, 3, mm, s);
      for (int i = 0; i < 3; ++i)
        gemm(*blas_, false, true, m, d, da, 1.0f, b_.dqkv + i * m * da, da, bw.wq + i * qkv_stride_,
             da, i == 0 ? 0.0f : 1.0f, b_.dxn, d, mm, s);
      MC_CUDA_RETURN_IF_ERROR(norm_back(b_.dxn, a.x, bw.attn_norm, a.rstd1, m, b_.dx, bg.attn_norm, acc, s));
    }
    if (d_dinputs != nullptr) return copy(d_dinputs, b_.dx, m * d, s);
    return cudaSuccess;
  }

  GistNetOptions opt_;
  DeviceGistNetOptions dev_;
  FlatLayout_ layout_;
  std::unique_ptr<CublasHandle> blas_;
  void* arena_ = nullptr;
  std::size_t arena_bytes_ = 0;
  std::int64_t qkv_stride_ = 0;
  std::int64_t w13_stride_ = 0;
  std::int64_t last_n_ = 0;
  std::size_t last_set_ = 0;

  Buffers b_;
  std::vector<SetPtrs> w_;
  std::vector<SetPtrs> g_;
};

/// A LevelPooler (device_tree_gisting.cuh) that builds every gist level with a DeviceGistNet,
/// so build_tree_gists(…, GistNetLevels<C>{&net}, stream) gives the gists of a CPU Tree built
/// with GistNetGister. The network must be sized for the largest level (max_blocks >= N / K).
template <ConfigType C>
struct GistNetLevels {
  DeviceGistNet<C>* net = nullptr;  ///< the network (not owned)
  /// See LevelPooler.
  cudaError_t operator()(int lod, const float* in, std::int64_t n, float* out,
                         cudaStream_t stream) const {
    return net->forward(lod, in, n, out, stream);
  }
};

}  // namespace mc::cuda
