// SPDX-License-Identifier: Apache-2.0
// LensNet on the GPU (CPU twin: mc::LensNet in include/megacontext/lens_net.hpp): scores every
// entry of an assembled working context (embeddings [W, d] + features [W, F]) conditioned on the
// query memory (the Q most recent rows), one tanh score per entry, and the backward to every
// weight and to the embeddings and the query. Data flow: assemble → LensNet → FocusAllocator.
// Maths and shapes: docs/concepts/lens_net.md.
//
// Composition: RMSNorm and the SwiGLU gate are the decoder's kernels (device_rmsnorm.cuh,
// device_swiglu.cuh), projections are cuBLAS (device_gemm.cuh), the cross-attention and the
// score head are detail/kernels/lens_net_kernels.cuh. dL/dk and dL/dv, sums over all W entries,
// are GEMMs over the stored softmax weights and their gradients (no atomics: deterministic).
//
// Inference (training = false) with TF32 GEMMs and a compiled-in shape (D 128 = 4 heads of 32,
// (d_in, d_ff) in detail::kLensFusedShapes, Q <= 32, <= 8 layers, <= 32 features; the default
// LensNet is one) runs the fused path instead: two kernels (detail/kernels/lens_net_fused_kernels.cuh), one for
// the query memory's keys and values of every layer, one that runs the whole network per tile of
// 64 entries with the tile in shared memory. fused() says whether a DeviceLensNet takes it (for
// every forward whose d_x is 16-byte aligned, as cudaMalloc's pointers are).
//
// Memory: one allocation sized in the constructor for at most `max_entries` entries and
// options.num_query query rows (device_bytes() gives the size without allocating). With
// `training`, every layer's activations and copies of the inputs are kept for backward();
// without, the layers share one set of buffers and update the residual stream in place.
// forward/backward allocate nothing and never synchronise: graph-capturable.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "megacontext/detail/buffer_checks.cuh"
#include "megacontext/detail/kernels/lens_net_fused_kernels.cuh"
#include "megacontext/detail/kernels/lens_net_kernels.cuh"
#include "megacontext/detail/net_arena.cuh"
#include "megacontext/device_gemm.cuh"
#include "megacontext/device_rmsnorm.cuh"
#include "megacontext/device_swiglu.cuh"
#include "megacontext/error.cuh"
#include "megacontext/error.hpp"
#include "megacontext/lens_net.hpp"

namespace mc::cuda {

/// Largest dynamic shared memory one thread block may opt into on sm_90 (227 KiB).
inline constexpr std::size_t kLensNetMaxSmemBytes = 227 * 1024;

/// How a DeviceLensNet is sized and run.
struct DeviceLensNetOptions {
  std::int64_t max_entries = 8192;  ///< most entries W per forward; >= 1
  bool training = true;             ///< keep activations (and input copies) for backward()
  GemmMath math = GemmMath::kTf32;  ///< tensor-core mode of every GEMM (fp32 storage)

  /// Throws mc::Error ([mc.lens_net.bad_options]) naming a bad field.
  void validate() const {
    MC_EXPECTS(max_entries >= 1 && max_entries <= (std::int64_t{1} << 26), Errc::kInvalidArgument,
               "[mc.lens_net.bad_options] max_entries = ", max_entries, "; must be in [1, 2^26]");
    MC_EXPECTS(math == GemmMath::kFp32 || math == GemmMath::kTf32 || math == GemmMath::kBf16,
               Errc::kInvalidArgument, "[mc.lens_net.bad_options] math = ",
               static_cast<int>(math), "; must be kFp32, kTf32 or kBf16");
  }
};

/// LensNet on the GPU; see the file comment. Not copyable.
class DeviceLensNet {
 public:
  /// Uploads `weights` (shapes checked against `options`, as mc::LensNet does) and sizes every
  /// buffer. Throws mc::Error for bad options or shapes (before touching the GPU) and
  /// mc::CudaError when an allocation fails.
  DeviceLensNet(const LensNetOptions& options, const LensNetWeights<float>& weights,
                DeviceLensNetOptions device = {})
      : opt_(options),
        dev_(device),
        layout_(check_all(options, weights, device)),
        fused_(uses_fused(options, device)) {
    blas_ = std::make_unique<CublasHandle>();
    try {
      Buffers unused;
      detail::ArenaCarver measure(nullptr);
      carve(measure, opt_, dev_, layout_.total(), unused);
      arena_bytes_ = measure.bytes();
      MC_CUDA_TRY(cudaMalloc(&arena_, arena_bytes_));
      detail::ArenaCarver real(static_cast<std::byte*>(arena_));
      carve(real, opt_, dev_, layout_.total(), b_);
      MC_CUDA_TRY(cudaMemset(arena_, 0, arena_bytes_));
      w_ = ptrs(b_.params);
      g_ = ptrs(b_.grads);
      kv_stride_ = layout_.offset("layers.0.attn.wv") - layout_.offset("layers.0.attn.wk");
      w13_stride_ = layout_.offset("layers.0.mlp.w3") - layout_.offset("layers.0.mlp.w1");
      upload_weights(weights);
      MC_CUDA_TRY(detail::net_fill(1.0f, ones_count(opt_, dev_), b_.ones, 0));
      const std::size_t smem = detail::lens_attn_smem(static_cast<int>(opt_.num_query),
                                                      static_cast<int>(opt_.d_head()));
      if (smem > 48 * 1024) {
        MC_CUDA_TRY(cudaFuncSetAttribute(detail::lens_attention_forward_kernel,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(smem)));
        MC_CUDA_TRY(cudaFuncSetAttribute(detail::lens_attention_backward_kernel,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(smem)));
      }
      if (fused_) {
        with_fused_shape(opt_.d_in, opt_.d_ff, [&]<int DIn, int DFf>() {
          MC_CUDA_TRY(cudaFuncSetAttribute(detail::lens_fused_forward_kernel<DIn, DFf>,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(detail::kLensFusedSmemBytes)));
        });
      }
      MC_CUDA_TRY(cudaDeviceSynchronize());
    } catch (...) {
      release();
      throw;
    }
  }
  ~DeviceLensNet() { release(); }
  DeviceLensNet(const DeviceLensNet&) = delete;
  DeviceLensNet& operator=(const DeviceLensNet&) = delete;

  /// Device bytes a DeviceLensNet of these options allocates (no GPU needed; throws for bad
  /// options like the constructor).
  static std::size_t device_bytes(const LensNetOptions& options, DeviceLensNetOptions device) {
    check_sizes(options, device);
    Buffers unused;
    detail::ArenaCarver measure(nullptr);
    carve(measure, options, device,
          detail::FlatLayout(LensNetWeights<float>::zeros(options)).total(), unused);
    return measure.bytes();
  }

  /// The network options.
  const LensNetOptions& options() const { return opt_; }
  /// The device options.
  const DeviceLensNetOptions& device_options() const { return dev_; }
  /// Bytes of the one device allocation.
  std::size_t device_bytes() const { return arena_bytes_; }
  /// Whether forward() runs the fused inference kernels (see the file comment) rather than the
  /// cuBLAS + kernel sequence; fixed at construction (a forward whose d_x is not 16-byte
  /// aligned still takes the unfused path).
  bool fused() const { return fused_; }
  /// Floats of the flat weight (and gradient) buffer, padding included (padding stays 0).
  std::int64_t num_flat() const { return layout_.total(); }
  /// The flat weights on the device (for an optimiser such as device_adamw.cuh).
  float* d_weights() { return b_.params; }
  /// The flat gradients on the device, same layout as d_weights().
  float* d_gradients() { return b_.grads; }

  /// Scores `d_scores` [W] in [-1, 1] of W in [1, max_entries] entries with embeddings `d_x`
  /// [W, d_in] and features `d_features` [W, F] (lens_features), conditioned on `d_query`
  /// [num_query, d_in] with 1 <= num_query <= options.num_query (lens_query); device buffers.
  /// Precondition (the CPU twin checks it, the device cannot): every input is finite. With
  /// `training` the inputs are copied and the activations kept for backward(). Throws mc::Error
  /// for bad sizes or null pointers before any launch; returns the first failing launch status.
  cudaError_t forward(const float* d_x, const float* d_features, std::int64_t w,
                      const float* d_query, std::int64_t num_query, float* d_scores,
                      cudaStream_t stream = 0) {
    MC_EXPECTS(w >= 1 && w <= dev_.max_entries, Errc::kInvalidArgument,
               "[mc.lens_net.bad_shape] forward of W = ", w, " entries; this DeviceLensNet takes "
               "1 <= W <= max_entries = ", dev_.max_entries);
    MC_EXPECTS(num_query >= 1 && num_query <= opt_.num_query, Errc::kInvalidArgument,
               "[mc.lens_net.bad_shape] query of ", num_query, " rows; need 1 <= rows <= "
               "num_query = ", opt_.num_query);
    MC_EXPECTS(d_x && d_features && d_query && d_scores, Errc::kInvalidArgument,
               "[mc.lens_net.bad_shape] forward: a null device buffer (x, features, query or "
               "scores)");
    last_w_ = 0;
    MC_CUDA_RETURN_IF_ERROR(forward_impl(d_x, d_features, w, d_query, num_query, d_scores, stream));
    last_w_ = w;
    last_q_ = num_query;
    return cudaSuccess;
  }

  /// From dL/dscores `d_dscores` [W] of the latest forward: writes dL/dW of every weight into
  /// d_gradients() (adds to them when `accumulate`), dL/dx [W, d_in] into `d_dx` and dL/dquery
  /// [num_query, d_in] into `d_dquery` when they are not null (features get no gradient). Needs
  /// `training`. Throws mc::Error for a missing forward; returns the first failing launch status.
  cudaError_t backward(const float* d_dscores, float* d_dx = nullptr, float* d_dquery = nullptr,
                       bool accumulate = false, cudaStream_t stream = 0) {
    MC_EXPECTS(dev_.training, Errc::kState, "[mc.lens_net.no_forward] backward needs a "
               "DeviceLensNet built with training = true (inference keeps no activations)");
    MC_EXPECTS(last_w_ >= 1, Errc::kState,
               "[mc.lens_net.no_forward] backward needs a completed forward first");
    MC_EXPECTS(d_dscores != nullptr, Errc::kInvalidArgument,
               "[mc.lens_net.bad_shape] backward: d_dscores is null");
    return backward_impl(d_dscores, d_dx, d_dquery, accumulate, stream);
  }

  /// Replaces the weights (shapes checked against the options); synchronous.
  void upload_weights(const LensNetWeights<float>& weights) {
    const LensNet<float> check(opt_, weights);  // throws [mc.lens_net.bad_weights]
    (void)check;
    layout_.upload(weights, b_.params);
  }
  /// The current weights (synchronises the device).
  LensNetWeights<float> download_weights() const { return download(b_.params); }
  /// The gradients of the latest backward(s), shaped like the weights (synchronises).
  LensNetWeights<float> download_gradients() const { return download(b_.grads); }
  /// Zeroes every gradient, on `stream`.
  cudaError_t zero_gradients(cudaStream_t stream = 0) {
    return cudaMemsetAsync(b_.grads, 0, bytes(layout_.total()), stream);
  }

 private:
  struct LayerPtrs {
    float* attn_norm;
    float* mem_norm;
    float* wq;
    float* wk;  // wv at wk + kv_stride_
    float* wo;
    float* mlp_norm;
    float* w1;  // w3 at w1 + w13_stride_
    float* w2;
  };
  struct NetPtrs {
    float* w_in = nullptr;
    float* w_feat = nullptr;
    float* b_in = nullptr;
    std::vector<LayerPtrs> layers;
    float* out_norm = nullptr;
    float* w_out = nullptr;
    float* b_out = nullptr;
  };
  struct LayerActs {
    float* x = nullptr;       // [W, D] block input (inference: the residual stream, updated)
    float* xn = nullptr;      // [W, D]
    float* rstd_x = nullptr;  // [W]
    float* mn = nullptr;      // [Q, D]
    float* rstd_m = nullptr;  // [Q]
    float* q = nullptr;       // [W, D]
    float* kv = nullptr;      // [2, Q, D]
    float* o = nullptr;       // [W, D]
    float* h = nullptr;       // [W, D] (inference: x)
    float* hn = nullptr;      // [W, D] (inference: xn)
    float* rstd_h = nullptr;  // [W] (inference: rstd_x)
    float* ab = nullptr;      // [2, W, f]
    float* g = nullptr;       // [W, f]
  };
  // Every buffer carved from the one allocation.
  struct Buffers {
    float* params = nullptr;
    float* grads = nullptr;
    float* ones = nullptr;
    float* x_in = nullptr;   // training: copies of the inputs
    float* feat = nullptr;
    float* query = nullptr;
    float* memory = nullptr;  // [Q, D]
    float* kv_all = nullptr;  // fused path: [n_layers, 2, Q, D]
    std::vector<LayerActs> acts;
    float* h_last = nullptr;
    float* hf = nullptr;
    float* rstd_f = nullptr;
    float* scores = nullptr;
    float* dz = nullptr;
    float* dhf = nullptr;
    float* dh = nullptr;
    float* dmem = nullptr;
    float* dxn = nullptr;
    float* dab = nullptr;
    float* dg = nullptr;
    float* d_o = nullptr;
    float* dq = nullptr;
    float* dkv = nullptr;
    float* dmn = nullptr;
    float* p = nullptr;
    float* ds = nullptr;
    float* gain = nullptr;
    void* norm_ws = nullptr;
    std::size_t norm_ws_bytes = 0;
  };

  static std::size_t bytes(std::int64_t floats) {
    return static_cast<std::size_t>(floats) * sizeof(float);
  }
  static std::int64_t ones_count(const LensNetOptions& o, const DeviceLensNetOptions& dv) {
    return std::max(dv.max_entries, o.num_query);
  }

  static void check_sizes(const LensNetOptions& o, const DeviceLensNetOptions& dv) {
    o.validate();
    dv.validate();
    MC_EXPECTS(o.d_model <= kRmsNormMaxDim && o.n_heads <= 65535, Errc::kInvalidArgument,
               "[mc.lens_net.bad_options] d_model = ", o.d_model, ", n_heads = ", o.n_heads,
               "; the GPU LensNet needs d_model <= ", kRmsNormMaxDim, " and n_heads <= 65535");
    const std::size_t smem =
        detail::lens_attn_smem(static_cast<int>(std::min<std::int64_t>(o.num_query, 1 << 20)),
                               static_cast<int>(o.d_head()));
    MC_EXPECTS(o.num_query <= (1 << 20) && smem <= kLensNetMaxSmemBytes, Errc::kInvalidArgument,
               "[mc.lens_net.bad_options] num_query = ", o.num_query, " with d_head = ",
               o.d_head(), " needs ", smem, " bytes of shared memory per block; the GPU LensNet "
               "allows ", kLensNetMaxSmemBytes);
  }

  // Calls f.template operator()<d_in, d_ff>() for the compiled-in fused shape equal to (d_in,
  // d_ff); false when there is none.
  template <std::size_t I = 0, class F>
  static bool with_fused_shape(std::int64_t d_in, std::int64_t d_ff, F&& f) {
    if constexpr (I < std::size(detail::kLensFusedShapes)) {
      constexpr detail::LensFusedShape shape = detail::kLensFusedShapes[I];
      if (d_in == shape.d_in && d_ff == shape.d_ff) {
        f.template operator()<shape.d_in, shape.d_ff>();
        return true;
      }
      return with_fused_shape<I + 1>(d_in, d_ff, std::forward<F>(f));
    } else {
      (void)d_in;
      (void)d_ff;
      (void)f;
      return false;
    }
  }

  static bool uses_fused(const LensNetOptions& o, const DeviceLensNetOptions& dv) {
    return !dv.training && dv.math == GemmMath::kTf32 && o.d_model == detail::kLfD &&
           o.n_heads == detail::kLfHeads && o.num_query <= detail::kLfMaxQuery &&
           o.n_layers <= detail::kLfMaxLayers && o.num_features() <= detail::kLfMaxFeatures &&
           std::any_of(std::begin(detail::kLensFusedShapes), std::end(detail::kLensFusedShapes),
                       [&](const detail::LensFusedShape& sh) {
                         return sh.d_in == o.d_in && sh.d_ff == o.d_ff;
                       });
  }

  static detail::FlatLayout check_all(const LensNetOptions& o, const LensNetWeights<float>& w,
                                      const DeviceLensNetOptions& dv) {
    check_sizes(o, dv);
    const LensNet<float> check(o, w);  // the CPU twin's shape checks ([mc.lens_net.bad_weights])
    (void)check;
    return detail::FlatLayout(LensNetWeights<float>::zeros(o));
  }

  void release() {
    if (arena_ != nullptr) (void)cudaFree(arena_);
    arena_ = nullptr;
  }

  // Carves every buffer into `b` (a carver with a null base only measures).
  static void carve(detail::ArenaCarver& c, const LensNetOptions& o,
                    const DeviceLensNetOptions& dv, std::int64_t flat, Buffers& b) {
    const std::int64_t wm = dv.max_entries, qm = o.num_query, d = o.d_in, dm = o.d_model,
                       f = o.d_ff, nf = o.num_features();
    const bool train = dv.training;
    b.params = c.take<float>(flat);
    b.grads = c.take<float>(flat);
    b.ones = c.take<float>(ones_count(o, dv));
    if (train) {
      b.x_in = c.take<float>(wm * d);
      b.feat = c.take<float>(wm * nf);
      b.query = c.take<float>(qm * d);
    }
    b.memory = c.take<float>(qm * dm);
    if (uses_fused(o, dv)) b.kv_all = c.take<float>(o.n_layers * 2 * qm * dm);
    b.acts.assign(static_cast<std::size_t>(train ? o.n_layers : 1), LayerActs{});
    for (LayerActs& a : b.acts) {
      a.x = c.take<float>(wm * dm);
      a.xn = c.take<float>(wm * dm);
      a.rstd_x = c.take<float>(wm);
      a.mn = c.take<float>(qm * dm);
      a.rstd_m = c.take<float>(qm);
      a.q = c.take<float>(wm * dm);
      a.kv = c.take<float>(2 * qm * dm);
      a.o = c.take<float>(wm * dm);
      a.h = train ? c.take<float>(wm * dm) : a.x;
      a.hn = train ? c.take<float>(wm * dm) : a.xn;
      a.rstd_h = train ? c.take<float>(wm) : a.rstd_x;
      a.ab = c.take<float>(2 * wm * f);
      a.g = c.take<float>(wm * f);
    }
    b.h_last = train ? c.take<float>(wm * dm) : b.acts[0].x;
    b.hf = train ? c.take<float>(wm * dm) : b.acts[0].xn;
    b.rstd_f = c.take<float>(wm);
    if (train) {
      b.scores = c.take<float>(wm);
      b.dz = c.take<float>(wm);
      b.dhf = c.take<float>(wm * dm);
      b.dh = c.take<float>(wm * dm);
      b.dmem = c.take<float>(qm * dm);
      b.dxn = c.take<float>(wm * dm);
      b.dab = c.take<float>(2 * wm * f);
      b.dg = c.take<float>(wm * f);
      b.d_o = c.take<float>(wm * dm);
      b.dq = c.take<float>(wm * dm);
      b.dkv = c.take<float>(2 * qm * dm);
      b.dmn = c.take<float>(qm * dm);
      b.p = c.take<float>(o.n_heads * wm * qm);
      b.ds = c.take<float>(o.n_heads * wm * qm);
      b.gain = c.take<float>(dm);
      b.norm_ws_bytes = rmsnorm_backward_workspace_bytes(std::max(wm, qm), dm);
      b.norm_ws = c.take<std::byte>(static_cast<std::int64_t>(b.norm_ws_bytes));
    }
  }

  NetPtrs ptrs(float* flat) const {
    NetPtrs p;
    p.w_in = flat + layout_.offset("w_in");
    p.w_feat = flat + layout_.offset("w_feat");
    p.b_in = flat + layout_.offset("b_in");
    for (std::int64_t l = 0; l < opt_.n_layers; ++l) {
      const std::string s = "layers." + std::to_string(l) + ".";
      p.layers.push_back({flat + layout_.offset(s + "attn_norm"), flat + layout_.offset(s + "mem_norm"),
                          flat + layout_.offset(s + "attn.wq"), flat + layout_.offset(s + "attn.wk"),
                          flat + layout_.offset(s + "attn.wo"), flat + layout_.offset(s + "mlp_norm"),
                          flat + layout_.offset(s + "mlp.w1"), flat + layout_.offset(s + "mlp.w2")});
    }
    p.out_norm = flat + layout_.offset("out_norm");
    p.w_out = flat + layout_.offset("w_out");
    p.b_out = flat + layout_.offset("b_out");
    return p;
  }

  LensNetWeights<float> download(const float* flat) const {
    LensNetWeights<float> w = LensNetWeights<float>::zeros(opt_);
    layout_.download(flat, w);
    return w;
  }

  cudaError_t copy(float* dst, const float* src, std::int64_t floats, cudaStream_t s) const {
    return cudaMemcpyAsync(dst, src, bytes(floats), cudaMemcpyDeviceToDevice, s);
  }

  detail::LensAttnParams attn_params(const LayerActs& a, std::int64_t w, std::int64_t nq) const {
    detail::LensAttnParams p{};
    p.q = a.q;
    p.k = a.kv;
    p.v = a.kv + nq * opt_.d_model;
    p.w = w;
    p.q_rows = static_cast<int>(nq);
    p.d_head = static_cast<int>(opt_.d_head());
    p.d_model = static_cast<int>(opt_.d_model);
    p.scale = 1.0f / std::sqrt(static_cast<float>(opt_.d_head()));
    return p;
  }
  dim3 attn_grid(std::int64_t w) const {
    return dim3(static_cast<unsigned>((w + detail::kLensEntriesPerBlock - 1) /
                                      detail::kLensEntriesPerBlock),
                static_cast<unsigned>(opt_.n_heads));
  }
  std::size_t attn_smem(std::int64_t nq) const {
    return detail::lens_attn_smem(static_cast<int>(nq), static_cast<int>(opt_.d_head()));
  }

  // The fused inference forward: keys and values of every layer, then one block per 64 entries.
  cudaError_t forward_fused(const float* d_x, const float* d_features, std::int64_t w,
                            const float* d_query, std::int64_t nq, float* d_scores,
                            cudaStream_t s) {
    detail::LensFusedParams p{};
    p.x = d_x;
    p.feat = d_features;
    p.query = d_query;
    p.kv = b_.kv_all;
    p.w_in = w_.w_in;
    p.w_feat = w_.w_feat;
    p.b_in = w_.b_in;
    for (std::size_t l = 0; l < w_.layers.size(); ++l) {
      const LayerPtrs& lw = w_.layers[l];
      p.layers[l] = {lw.attn_norm, lw.mem_norm, lw.wq,          lw.wk,
                     lw.wk + kv_stride_, lw.wo,  lw.mlp_norm, lw.w1,
                     lw.w1 + w13_stride_, lw.w2};
    }
    p.out_norm = w_.out_norm;
    p.w_out = w_.w_out;
    p.b_out = w_.b_out;
    p.scores = d_scores;
    p.w = w;
    p.n_layers = static_cast<int>(opt_.n_layers);
    p.nq = static_cast<int>(nq);
    p.n_feat = static_cast<int>(opt_.num_features());
    p.eps = static_cast<float>(opt_.norm_eps);
    p.scale = 1.0f / std::sqrt(static_cast<float>(opt_.d_head()));
    cudaError_t st = cudaSuccess;
    with_fused_shape(opt_.d_in, opt_.d_ff, [&]<int DIn, int DFf>() {
      detail::lens_memory_kv_kernel<DIn><<<dim3(static_cast<unsigned>(nq),
                                                static_cast<unsigned>(opt_.n_layers)),
                                           detail::kLfKvThreads, 0, s>>>(p);
      st = detail::after_launch(s);
      if (st != cudaSuccess) return;
      const auto tiles = static_cast<unsigned>((w + detail::kLfTile - 1) / detail::kLfTile);
      detail::lens_fused_forward_kernel<DIn, DFf>
          <<<tiles, detail::kLfThreads, detail::kLensFusedSmemBytes, s>>>(p);
      st = detail::after_launch(s);
    });
    return st;
  }

  cudaError_t forward_impl(const float* d_x, const float* d_features, std::int64_t w,
                           const float* d_query, std::int64_t nq, float* d_scores,
                           cudaStream_t s) {
    // The fused kernel copies x in 16-byte pieces; other alignments take the unfused path.
    if (fused_ && reinterpret_cast<std::uintptr_t>(d_x) % 16 == 0)
      return forward_fused(d_x, d_features, w, d_query, nq, d_scores, s);
    const std::int64_t d = opt_.d_in, dm = opt_.d_model, f = opt_.d_ff, nf = opt_.num_features();
    const double eps = opt_.norm_eps;
    const GemmMath mm = dev_.math;
    const bool train = dev_.training;
    const float* x = d_x;
    const float* feat = d_features;
    const float* query = d_query;
    if (train) {
      MC_CUDA_RETURN_IF_ERROR(copy(b_.x_in, d_x, w * d, s));
      MC_CUDA_RETURN_IF_ERROR(copy(b_.feat, d_features, w * nf, s));
      MC_CUDA_RETURN_IF_ERROR(copy(b_.query, d_query, nq * d, s));
      x = b_.x_in;
      feat = b_.feat;
      query = b_.query;
    }
    // memory = query·w_in + b_in; h⁰ = x·w_in + features·w_feat + b_in.
    MC_CUDA_RETURN_IF_ERROR(detail::net_broadcast_row(w_.b_in, nq, dm, b_.memory, s));
    gemm(*blas_, false, false, nq, dm, d, 1.0f, query, d, w_.w_in, dm, 1.0f, b_.memory, dm, mm, s);
    float* h0 = b_.acts[0].x;
    MC_CUDA_RETURN_IF_ERROR(detail::net_broadcast_row(w_.b_in, w, dm, h0, s));
    gemm(*blas_, false, false, w, dm, d, 1.0f, x, d, w_.w_in, dm, 1.0f, h0, dm, mm, s);
    gemm(*blas_, false, false, w, dm, nf, 1.0f, feat, nf, w_.w_feat, dm, 1.0f, h0, dm, mm, s);
    const float* x_in = h0;
    for (std::size_t l = 0; l < w_.layers.size(); ++l) {
      const LayerPtrs& lw = w_.layers[l];
      const LayerActs& a = b_.acts[train ? l : 0];
      float* out = train ? (l + 1 < b_.acts.size() ? b_.acts[l + 1].x : b_.h_last) : a.x;
      MC_CUDA_RETURN_IF_ERROR(rmsnorm_forward(x_in, lw.attn_norm, w, dm, eps, a.xn, a.rstd_x, s));
      MC_CUDA_RETURN_IF_ERROR(rmsnorm_forward(b_.memory, lw.mem_norm, nq, dm, eps, a.mn, a.rstd_m, s));
      gemm(*blas_, false, false, w, dm, dm, 1.0f, a.xn, dm, lw.wq, dm, 0.0f, a.q, dm, mm, s);
      gemm_strided_batched(*blas_, false, false, nq, dm, dm, 1.0f, a.mn, dm, 0, lw.wk, dm,
                           kv_stride_, 0.0f, a.kv, dm, nq * dm, 2, mm, s);
      detail::LensAttnParams p = attn_params(a, w, nq);
      p.o = a.o;
      detail::lens_attention_forward_kernel<<<attn_grid(w), detail::kLensAttnWarps * 32,
                                              attn_smem(nq), s>>>(p);
      MC_CUDA_RETURN_IF_ERROR(detail::after_launch(s));
      if (a.h != x_in) MC_CUDA_RETURN_IF_ERROR(copy(a.h, x_in, w * dm, s));
      gemm(*blas_, false, false, w, dm, dm, 1.0f, a.o, dm, lw.wo, dm, 1.0f, a.h, dm, mm, s);
      MC_CUDA_RETURN_IF_ERROR(rmsnorm_forward(a.h, lw.mlp_norm, w, dm, eps, a.hn, a.rstd_h, s));
      gemm_strided_batched(*blas_, false, false, w, f, dm, 1.0f, a.hn, dm, 0, lw.w1, f,
                           w13_stride_, 0.0f, a.ab, f, w * f, 2, mm, s);
      MC_CUDA_RETURN_IF_ERROR(swiglu_forward(a.ab, a.ab + w * f, w * f, a.g, s));
      if (out != a.h) MC_CUDA_RETURN_IF_ERROR(copy(out, a.h, w * dm, s));
      gemm(*blas_, false, false, w, dm, f, 1.0f, a.g, f, lw.w2, dm, 1.0f, out, dm, mm, s);
      x_in = out;
    }
    MC_CUDA_RETURN_IF_ERROR(rmsnorm_forward(x_in, w_.out_norm, w, dm, eps, b_.hf, b_.rstd_f, s));
    const auto blocks = static_cast<unsigned>((w + detail::kLensHeadThreads / 32 - 1) /
                                              (detail::kLensHeadThreads / 32));
    detail::lens_score_kernel<<<blocks, detail::kLensHeadThreads, 0, s>>>(
        b_.hf, w_.w_out, w_.b_out, w, static_cast<int>(dm), d_scores, train ? b_.scores : nullptr);
    return detail::after_launch(s);
  }

  // dL/dx of an RMSNorm added into dx; its gain gradient written (or added) to g_gain.
  cudaError_t norm_back(const float* dy, const float* x, const float* gain, const float* rstd,
                        std::int64_t rows, float* dx, float* g_gain, bool acc, cudaStream_t s) {
    const std::int64_t dm = opt_.d_model;
    MC_CUDA_RETURN_IF_ERROR(rmsnorm_backward(dy, x, gain, rstd, rows, dm, dx, acc ? b_.gain : g_gain,
                                             b_.norm_ws, b_.norm_ws_bytes, s));
    return acc ? detail::net_add(b_.gain, dm, g_gain, s) : cudaSuccess;
  }

  cudaError_t backward_impl(const float* d_dscores, float* d_dx, float* d_dquery, bool acc,
                            cudaStream_t s) {
    const std::int64_t w = last_w_, nq = last_q_, d = opt_.d_in, dm = opt_.d_model,
                       f = opt_.d_ff, nf = opt_.num_features(), dh = opt_.d_head();
    const GemmMath mm = dev_.math;
    const float gb = acc ? 1.0f : 0.0f;
    const NetPtrs& g = g_;
    detail::lens_score_backward_kernel<<<detail::net_elt_blocks(w * dm), detail::kLensHeadThreads,
                                         0, s>>>(d_dscores, b_.scores, w_.w_out, w,
                                                 static_cast<int>(dm), b_.dz, b_.dhf);
    MC_CUDA_RETURN_IF_ERROR(detail::after_launch(s));
    gemm(*blas_, true, false, dm, 1, w, 1.0f, b_.hf, dm, b_.dz, 1, gb, g.w_out, 1, mm, s);
    gemm(*blas_, true, false, 1, 1, w, 1.0f, b_.dz, 1, b_.ones, 1, gb, g.b_out, 1, mm, s);
    MC_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(b_.dh, 0, bytes(w * dm), s));
    MC_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(b_.dmem, 0, bytes(nq * dm), s));
    MC_CUDA_RETURN_IF_ERROR(
        norm_back(b_.dhf, b_.h_last, w_.out_norm, b_.rstd_f, w, b_.dh, g.out_norm, acc, s));
    for (std::size_t l = w_.layers.size(); l-- > 0;) {
      const LayerPtrs& lw = w_.layers[l];
      const LayerPtrs& lg = g.layers[l];
      const LayerActs& a = b_.acts[l];
      // MLP: out = h + (silu(hn·w1) ∘ hn·w3)·w2; dh_ holds dL/dout and becomes dL/dh.
      gemm(*blas_, true, false, f, dm, w, 1.0f, a.g, f, b_.dh, dm, gb, lg.w2, dm, mm, s);
      gemm(*blas_, false, true, w, f, dm, 1.0f, b_.dh, dm, lw.w2, dm, 0.0f, b_.dg, f, mm, s);
      MC_CUDA_RETURN_IF_ERROR(
          swiglu_backward(b_.dg, a.ab, a.ab + w * f, w * f, b_.dab, b_.dab + w * f, s));
      gemm_strided_batched(*blas_, true, false, dm, f, w, 1.0f, a.hn, dm, 0, b_.dab, f, w * f, gb,
                           lg.w1, f, w13_stride_, 2, mm, s);
      gemm(*blas_, false, true, w, dm, f, 1.0f, b_.dab, f, lw.w1, f, 0.0f, b_.dxn, dm, mm, s);
      gemm(*blas_, false, true, w, dm, f, 1.0f, b_.dab + w * f, f, lw.w1 + w13_stride_, f, 1.0f,
           b_.dxn, dm, mm, s);
      MC_CUDA_RETURN_IF_ERROR(
          norm_back(b_.dxn, a.h, lw.mlp_norm, a.rstd_h, w, b_.dh, lg.mlp_norm, acc, s));
      // Cross-attention: h = x + attn(RMSNorm(x), RMSNorm(memory))·wo.
      gemm(*blas_, true, false, dm, dm, w, 1.0f, a.o, dm, b_.dh, dm, gb, lg.wo, dm, mm, s);
      gemm(*blas_, false, true, w, dm, dm, 1.0f, b_.dh, dm, lw.wo, dm, 0.0f, b_.d_o, dm, mm, s);
      detail::LensAttnParams p = attn_params(a, w, nq);
      p.d_o = b_.d_o;
      p.dq = b_.dq;
      p.p = b_.p;
      p.ds = b_.ds;
      detail::lens_attention_backward_kernel<<<attn_grid(w), detail::kLensAttnWarps * 32,
                                               attn_smem(nq), s>>>(p);
      MC_CUDA_RETURN_IF_ERROR(detail::after_launch(s));
      // dk_h = ds_hᵀ q_h and dv_h = p_hᵀ do_h, head by head (each a [Q, d_head] column block).
      float* dk = b_.dkv;
      float* dv = b_.dkv + nq * dm;
      for (std::int64_t h = 0; h < opt_.n_heads; ++h) {
        gemm(*blas_, true, false, nq, dh, w, 1.0f, b_.ds + h * w * nq, nq, a.q + h * dh, dm, 0.0f,
             dk + h * dh, dm, mm, s);
        gemm(*blas_, true, false, nq, dh, w, 1.0f, b_.p + h * w * nq, nq, b_.d_o + h * dh, dm,
             0.0f, dv + h * dh, dm, mm, s);
      }
      gemm(*blas_, true, false, dm, dm, w, 1.0f, a.xn, dm, b_.dq, dm, gb, lg.wq, dm, mm, s);
      gemm_strided_batched(*blas_, true, false, dm, dm, nq, 1.0f, a.mn, dm, 0, b_.dkv, dm,
                           nq * dm, gb, lg.wk, dm, kv_stride_, 2, mm, s);
      gemm(*blas_, false, true, w, dm, dm, 1.0f, b_.dq, dm, lw.wq, dm, 0.0f, b_.dxn, dm, mm, s);
      gemm(*blas_, false, true, nq, dm, dm, 1.0f, dk, dm, lw.wk, dm, 0.0f, b_.dmn, dm, mm, s);
      gemm(*blas_, false, true, nq, dm, dm, 1.0f, dv, dm, lw.wk + kv_stride_, dm, 1.0f, b_.dmn, dm,
           mm, s);
      MC_CUDA_RETURN_IF_ERROR(
          norm_back(b_.dxn, a.x, lw.attn_norm, a.rstd_x, w, b_.dh, lg.attn_norm, acc, s));
      MC_CUDA_RETURN_IF_ERROR(
          norm_back(b_.dmn, b_.memory, lw.mem_norm, a.rstd_m, nq, b_.dmem, lg.mem_norm, acc, s));
    }
    // h⁰ = x·w_in + features·w_feat + b_in; memory = query·w_in + b_in.
    gemm(*blas_, true, false, d, dm, w, 1.0f, b_.x_in, d, b_.dh, dm, gb, g.w_in, dm, mm, s);
    gemm(*blas_, true, false, d, dm, nq, 1.0f, b_.query, d, b_.dmem, dm, 1.0f, g.w_in, dm, mm, s);
    gemm(*blas_, true, false, nf, dm, w, 1.0f, b_.feat, nf, b_.dh, dm, gb, g.w_feat, dm, mm, s);
    gemm(*blas_, true, false, dm, 1, w, 1.0f, b_.dh, dm, b_.ones, 1, gb, g.b_in, 1, mm, s);
    gemm(*blas_, true, false, dm, 1, nq, 1.0f, b_.dmem, dm, b_.ones, 1, 1.0f, g.b_in, 1, mm, s);
    if (d_dx != nullptr)
      gemm(*blas_, false, true, w, d, dm, 1.0f, b_.dh, dm, w_.w_in, dm, 0.0f, d_dx, d, mm, s);
    if (d_dquery != nullptr)
      gemm(*blas_, false, true, nq, d, dm, 1.0f, b_.dmem, dm, w_.w_in, dm, 0.0f, d_dquery, d, mm,
           s);
    return cudaSuccess;
  }

  LensNetOptions opt_;
  DeviceLensNetOptions dev_;
  detail::FlatLayout layout_;
  bool fused_ = false;
  std::unique_ptr<CublasHandle> blas_;
  void* arena_ = nullptr;
  std::size_t arena_bytes_ = 0;
  std::int64_t kv_stride_ = 0;
  std::int64_t w13_stride_ = 0;
  std::int64_t last_w_ = 0;
  std::int64_t last_q_ = 0;
  Buffers b_;
  NetPtrs w_;
  NetPtrs g_;
};

}  // namespace mc::cuda
