// SPDX-License-Identifier: Apache-2.0
// Host-side behaviour of the CUDA layer that needs no device, so it runs in the GPU-less CI
// (label cpu): mc::dispatch and the value lists (dispatch.cuh), mc::CudaError and the MC_CUDA_*
// macros (error.cuh), and the facades' argument validation, which must throw before any launch.
#include <doctest/doctest.h>

#include <megacontext/cuda.cuh>

#include <cstdint>
#include <string>
#include <vector>

namespace {

// Pointers that are never dereferenced: validation must reject the call before any CUDA work.
float* fake_device_ptr(std::uintptr_t at) { return reinterpret_cast<float*>(at); }

cudaError_t returns_early(cudaError_t status, bool& reached_end) {
  MC_CUDA_RETURN_IF_ERROR(status);
  reached_end = true;
  return cudaSuccess;
}

}  // namespace

TEST_CASE("dispatch: a run-time value becomes the matching compile-time constant") {
  for (const int v : mc::HeadDims::values) {
    const int got = mc::dispatch<64, 128, 256>("d_head", v, [&]<int D>() { return D; });
    CHECK(got == v);
  }
  CHECK(mc::dispatch(mc::kHeadDims, "d_head", 128, [&]<int D>() { return D * 2; }) == 256);
  CHECK(mc::dispatch<7>(7, [&]<int D>() { return D; }) == 7);
  int seen = 0;
  mc::dispatch<1, 2, 3>("x", 2, [&]<int V>() { seen = V; });  // void lambdas work too
  CHECK(seen == 2);
}

TEST_CASE("dispatch: an unsupported value throws mc::Error naming it and the supported set") {
  CHECK_THROWS_WITH_AS(
      mc::dispatch(mc::kHeadDims, "d_head", 96, [&]<int D>() { return D; }),
      doctest::Contains("`d_head = 96` is not compiled in; supported: {64, 128, 256}"), mc::Error);
  const auto unnamed = [] { return mc::dispatch<64, 128, 256>(96, [&]<int D>() { return D; }); };
  CHECK_THROWS_WITH_AS(unnamed(), doctest::Contains("[mc.dispatch.not_compiled] `value = 96`"),
                       mc::Error);
  try {
    mc::dispatch<1>("x", 0, [&]<int>() {});
    FAIL("dispatch accepted a value outside the list");
  } catch (const mc::Error& e) {
    CHECK(e.code() == mc::Errc::kInvalidArgument);
  }
}

TEST_CASE("dispatch: each value list is one constexpr source of truth") {
  static_assert(mc::HeadDims::contains(128) && !mc::HeadDims::contains(96));
  static_assert(mc::HeadDims::size == 3);
  CHECK(mc::HeadDims::text() == "{64, 128, 256}");
  CHECK(mc::PoolBlockSizes::text() == "{16, 32, 64}");
  std::vector<int> walked;
  mc::for_each_value(mc::kHeadDims, [&]<int D>() { walked.push_back(D); });
  CHECK(walked == std::vector<int>(mc::HeadDims::values.begin(), mc::HeadDims::values.end()));
}

TEST_CASE("error: MC_CUDA_TRY throws mc::CudaError with the expression, status, file and line") {
  const auto fails = [] { return cudaErrorInvalidValue; };
  try {
    MC_CUDA_TRY(fails());
    FAIL("MC_CUDA_TRY did not throw");
  } catch (const mc::CudaError& e) {
    const std::string what = e.what();
    CHECK(e.status() == cudaErrorInvalidValue);
    CHECK(e.code() == mc::Errc::kCuda);
    CHECK(what.find("[mc.cuda.call_failed] `fails()` failed: cudaErrorInvalidValue") !=
          std::string::npos);
    CHECK(what.find("test_cuda_host.cu:") != std::string::npos);
  }
  CHECK_NOTHROW(MC_CUDA_TRY(cudaSuccess));
  // mc::CudaError is an mc::Error, so one catch handles every library failure.
  CHECK_THROWS_AS(MC_CUDA_TRY(cudaErrorMemoryAllocation), mc::Error);
}

TEST_CASE("error: MC_CUDA_RETURN_IF_ERROR returns the failing status") {
  bool reached = false;
  CHECK(returns_early(cudaErrorInvalidValue, reached) == cudaErrorInvalidValue);
  CHECK_FALSE(reached);
  CHECK(returns_early(cudaSuccess, reached) == cudaSuccess);
  CHECK(reached);
}

TEST_CASE("cuda mean_pool: bad arguments throw mc::Error before any launch") {
  float* in = fake_device_ptr(0x10000);
  float* out = fake_device_ptr(0x90000);
  CHECK_THROWS_WITH_AS(mc::cuda::mean_pool(in, -1, 32, 8, out, nullptr),
                       doctest::Contains("[mc.gist_pool.bad_shape] mean_pool(num_blocks = -1"),
                       mc::Error);
  CHECK_THROWS_WITH_AS(mc::cuda::mean_pool(in, 4, 0, 8, out, nullptr), doctest::Contains("K = 0"),
                       mc::Error);
  CHECK_THROWS_WITH_AS(mc::cuda::mean_pool(in, 4, 32, 0, out, nullptr), doctest::Contains("d = 0"),
                       mc::Error);
  CHECK_THROWS_WITH_AS(mc::cuda::mean_pool(in, std::int64_t{1} << 50, 32, 1 << 20, out, nullptr),
                       doctest::Contains("overflows"), mc::Error);
  CHECK_THROWS_WITH_AS(mc::cuda::mean_pool(nullptr, 4, 32, 8, out, nullptr),
                       doctest::Contains("[mc.gist_pool.null_pointer]"), mc::Error);
  CHECK_THROWS_WITH_AS(mc::cuda::mean_pool(in, 4, 32, 8, nullptr, nullptr),
                       doctest::Contains("[mc.gist_pool.null_pointer]"), mc::Error);
  // d_out inside d_in [4·32·8 floats): overlapping.
  CHECK_THROWS_WITH_AS(mc::cuda::mean_pool(in, 4, 32, 8, in + 100, nullptr),
                       doctest::Contains("[mc.gist_pool.aliasing]"), mc::Error);
  CHECK_THROWS_WITH_AS(mc::cuda::mean_pool(in, 4, 32, 8, in, nullptr),
                       doctest::Contains("[mc.gist_pool.aliasing]"), mc::Error);
  // Nothing to pool: success without touching CUDA or the pointers.
  CHECK(mc::cuda::mean_pool(nullptr, 0, 32, 8, nullptr, nullptr) == cudaSuccess);
}

TEST_CASE("cuda apply_gaussian_rope: bad arguments throw mc::Error before any launch") {
  float* x = fake_device_ptr(0x10000);
  float* y = fake_device_ptr(0x90000);
  const auto* pos = reinterpret_cast<const mc::GaussianPosition*>(0x200000);
  mc::GaussianRopeOptions o;
  o.d_head = 96;
  CHECK_THROWS_WITH_AS(
      mc::cuda::apply_gaussian_rope(x, y, pos, 4, 2, o, nullptr),
      doctest::Contains("`d_head = 96` is not compiled in; supported: {64, 128, 256}"), mc::Error);
  o.d_head = 63;
  CHECK_THROWS_WITH_AS(mc::cuda::apply_gaussian_rope(x, y, pos, 4, 2, o, nullptr),
                       doctest::Contains("[mc.gaussian_rope.bad_d_head] d_head = 63"), mc::Error);
  o.d_head = 128;
  o.base = 1.0;
  CHECK_THROWS_WITH_AS(mc::cuda::apply_gaussian_rope(x, y, pos, 4, 2, o, nullptr),
                       doctest::Contains("base = 1"), mc::Error);
  o.base = 10000.0;
  CHECK_THROWS_WITH_AS(mc::cuda::apply_gaussian_rope(x, y, pos, -1, 2, o, nullptr),
                       doctest::Contains("n = -1"), mc::Error);
  CHECK_THROWS_WITH_AS(mc::cuda::apply_gaussian_rope(x, y, pos, 4, 0, o, nullptr),
                       doctest::Contains("n_heads = 0"), mc::Error);
  CHECK_THROWS_WITH_AS(mc::cuda::apply_gaussian_rope(x, y, nullptr, 4, 2, o, nullptr),
                       doctest::Contains("[mc.gaussian_rope.null_pointer]"), mc::Error);
  CHECK_THROWS_WITH_AS(mc::cuda::apply_gaussian_rope(x, x + 1, pos, 4, 2, o, nullptr),
                       doctest::Contains("[mc.gaussian_rope.aliasing]"), mc::Error);
  CHECK(mc::cuda::apply_gaussian_rope(nullptr, nullptr, nullptr, 0, 2, o, nullptr) == cudaSuccess);
}

TEST_CASE("cuda attention_forward/backward: bad arguments throw mc::Error before any launch") {
  // 1 sequence x 4 rows x 2 heads x 64 = 512 floats (2 KiB) per buffer; 1 MiB apart.
  float* b[9];
  for (int i = 0; i < 9; ++i) b[i] = fake_device_ptr(0x100000u * (i + 1));
  float *q = b[0], *k = b[1], *v = b[2], *o = b[3], *lse = b[4], *d_o = b[5];
  float *dq = b[6], *dk = b[7], *dv = b[8];
  void* ws = fake_device_ptr(0x1000000);
  using mc::cuda::attention_backward;
  using mc::cuda::attention_forward;
  CHECK_THROWS_WITH_AS(
      attention_forward(q, k, v, o, lse, 1, 4, 2, 96),
      doctest::Contains("`d_head = 96` is not compiled in; supported: {64, 128, 256}"), mc::Error);
  CHECK_THROWS_WITH_AS(attention_forward(q, k, v, o, lse, 1, -1, 2, 64),
                       doctest::Contains("[mc.attention.bad_shape]"), mc::Error);
  CHECK_THROWS_WITH_AS(attention_forward(q, k, v, o, lse, -1, 4, 2, 64),
                       doctest::Contains("batch = -1"), mc::Error);
  CHECK_THROWS_WITH_AS(attention_forward(q, k, v, o, lse, 1, 4, 0, 64),
                       doctest::Contains("n_heads = 0"), mc::Error);
  CHECK_THROWS_WITH_AS(attention_forward(q, k, v, o, lse, 70000, 4, 1, 64),
                       doctest::Contains("batch * n_heads <= 65535"), mc::Error);
  CHECK_THROWS_WITH_AS(attention_forward(q, nullptr, v, o, lse, 1, 4, 2, 64),
                       doctest::Contains("[mc.attention.null_pointer]"), mc::Error);
  CHECK_THROWS_WITH_AS(attention_forward(q, k, v, q, lse, 1, 4, 2, 64),
                       doctest::Contains("[mc.attention.aliasing]"), mc::Error);
  CHECK_THROWS_WITH_AS(attention_forward(q, k, v, o, o + 100, 1, 4, 2, 64),
                       doctest::Contains("[mc.attention.aliasing]"), mc::Error);
  CHECK_THROWS_WITH_AS(attention_forward(q + 1, k, v, o, lse, 1, 4, 2, 64),
                       doctest::Contains("[mc.attention.misaligned]"), mc::Error);
  CHECK(attention_forward(nullptr, nullptr, nullptr, nullptr, nullptr, 0, 4, 2, 64) ==
        cudaSuccess);
  CHECK(attention_forward(nullptr, nullptr, nullptr, nullptr, nullptr, 3, 0, 2, 64) ==
        cudaSuccess);

  // Workspace: delta [batch, n_heads, n] in fp32, padded to 256 bytes.
  CHECK(mc::cuda::attention_backward_workspace_bytes(2, 100, 3, 64) == 2560);
  CHECK(mc::cuda::attention_backward_workspace_bytes(0, 100, 3, 64) == 0);
  CHECK_THROWS_WITH_AS(mc::cuda::attention_backward_workspace_bytes(1, -4, 2, 64),
                       doctest::Contains("[mc.attention.bad_shape]"), mc::Error);
  const std::size_t need = mc::cuda::attention_backward_workspace_bytes(1, 4, 2, 64);
  CHECK(need == 256);
  CHECK_THROWS_WITH_AS(
      attention_backward(q, k, v, o, lse, d_o, dq, dk, dv, ws, need, 1, 4, 2, 32),
      doctest::Contains("`d_head = 32` is not compiled in"), mc::Error);
  CHECK_THROWS_WITH_AS(
      attention_backward(q, k, v, o, lse, d_o, dq, dk, dv, ws, need - 4, 1, 4, 2, 64),
      doctest::Contains("[mc.attention.workspace_too_small] attention_backward: workspace_bytes "
                        "= 252, need 256"),
      mc::Error);
  CHECK_THROWS_WITH_AS(
      attention_backward(q, k, v, o, lse, d_o, dq, dk, dv, nullptr, need, 1, 4, 2, 64),
      doctest::Contains("[mc.attention.null_pointer]"), mc::Error);
  CHECK_THROWS_WITH_AS(
      attention_backward(q, k, v, o, lse, nullptr, dq, dk, dv, ws, need, 1, 4, 2, 64),
      doctest::Contains("[mc.attention.null_pointer]"), mc::Error);
  CHECK_THROWS_WITH_AS(attention_backward(q, k, v, o, lse, d_o, dq, dq, dv, ws, need, 1, 4, 2, 64),
                       doctest::Contains("[mc.attention.aliasing]"), mc::Error);
  CHECK_THROWS_WITH_AS(attention_backward(q, k, v, o, lse, d_o, q, dk, dv, ws, need, 1, 4, 2, 64),
                       doctest::Contains("[mc.attention.aliasing]"), mc::Error);
  CHECK_THROWS_WITH_AS(attention_backward(q, k, v, o, lse, d_o, dq, dk, dv, dv, need, 1, 4, 2, 64),
                       doctest::Contains("[mc.attention.aliasing]"), mc::Error);
  CHECK_THROWS_WITH_AS(
      attention_backward(q, k, v, o, lse, d_o, dq + 2, dk, dv, ws, need, 1, 4, 2, 64),
      doctest::Contains("[mc.attention.misaligned]"), mc::Error);
  CHECK(attention_backward(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr,
                           nullptr, nullptr, 0, 1, 0, 2, 64) == cudaSuccess);
}

// ---- device focus selection, batch tree gisting (issue 6): argument checks before any launch.
TEST_CASE("focus_select: bad parameters and an over-budget context throw before any launch") {
  using C = mc::Config<4, 2>;
  mc::cuda::FocusSelectParams p;
  p.num_entries = 10;
  p.max_edits = -1;
  std::size_t bytes = 0;
  const auto select = [&] {
    return mc::cuda::focus_select<C, mc::GreedyThreshold>(nullptr, bytes, nullptr, nullptr, p,
                                                          nullptr, nullptr);
  };
  CHECK_THROWS_WITH_AS(select(), doctest::Contains("[mc.focus_select.bad_params]"), mc::Error);
  p.max_edits = 4;
  p.first_pos = 11;
  CHECK_THROWS_WITH_AS(select(), doctest::Contains("first_pos = 11"), mc::Error);
  p.first_pos = 0;
  p.expand_threshold = -0.1f;
  CHECK_THROWS_WITH_AS(select(), doctest::Contains("expand_threshold = -0.1"), mc::Error);
  p.expand_threshold = 0.25f;
  // With a workspace, null buffers are refused before anything is enqueued.
  CHECK_THROWS_WITH_AS(
      (mc::cuda::focus_select<C, mc::GreedyThreshold>(fake_device_ptr(256), bytes, nullptr,
                                                      nullptr, p, nullptr, nullptr)),
      doctest::Contains("[mc.focus_select.null_pointer]"), mc::Error);
  // A context extended past w_max without admit(): the host must restore the budget first.
  const mc::WorkingContextOptions wo{64, 2};
  mc::WorkingContext<C> wc(wo);
  wc.extend(200, 0, 1);
  mc::FocusOptions fo;
  fo.recent_tokens = 8;
  const mc::FocusAllocator<C, mc::BudgetOptimal> alloc(fo, wo);
  CHECK_THROWS_WITH_AS(mc::cuda::focus_select_params(wc, alloc),
                       doctest::Contains("[mc.focus_select.over_budget] the context holds 200"),
                       mc::Error);
  mc::cuda::FocusSelectResult r;
  CHECK_NOTHROW(mc::cuda::throw_if_focus_select_failed(r));
  r.bad_score_index = 5;
  CHECK_THROWS_WITH_AS(mc::cuda::throw_if_focus_select_failed(r),
                       doctest::Contains("score of entry 5"), mc::Error);
}

TEST_CASE("tree gisting: level layout and argument checks before any launch") {
  using C = mc::Config<8, 3>;
  const mc::cuda::TreeGistLayout<C> layout(8 * 8 * 8 * 2 + 8 * 8 + 9);  // 1097 tokens
  CHECK(layout.level_size(1) == 137);
  CHECK(layout.level_size(2) == 17);
  CHECK(layout.level_size(3) == 2);
  CHECK(layout.row_offset(2) == 137);
  CHECK(layout.total_rows() == 156);
  CHECK_THROWS_WITH_AS(mc::cuda::TreeGistLayout<C>(-1),
                       doctest::Contains("[mc.tree_gisting.bad_shape] num_tokens = -1"), mc::Error);
  CHECK_THROWS_WITH_AS(mc::cuda::build_tree_gists<C>(fake_device_ptr(256), 100, 0,
                                                     fake_device_ptr(1 << 20)),
                       doctest::Contains("[mc.tree_gisting.bad_shape]"), mc::Error);
  CHECK_THROWS_WITH_AS(mc::cuda::build_tree_gists<C>(nullptr, 100, 16, fake_device_ptr(256)),
                       doctest::Contains("[mc.tree_gisting.null_pointer]"), mc::Error);
  // Fewer than K tokens: no gist, nothing launched, null buffers allowed.
  CHECK(mc::cuda::build_tree_gists<C>(nullptr, 7, 16, nullptr) == cudaSuccess);
  CHECK_THROWS_WITH_AS(mc::cuda::embed_tokens(nullptr, 4, nullptr, 0, 16, nullptr, nullptr),
                       doctest::Contains("[mc.tree_gisting.bad_shape] embed_tokens"), mc::Error);
  CHECK_THROWS_WITH_AS(mc::cuda::embed_tokens(nullptr, 4, fake_device_ptr(256), 10, 16,
                                              fake_device_ptr(512), nullptr),
                       doctest::Contains("[mc.tree_gisting.null_pointer]"), mc::Error);
}

TEST_CASE("cuda decoder facades: bad arguments throw mc::Error before any launch") {
  float* p = fake_device_ptr(4096);
  CHECK_THROWS_WITH_AS(mc::cuda::rmsnorm_forward(p, p, 4, 0, 1e-5, p, p),
                       doctest::Contains("[mc.rmsnorm.bad_shape]"), mc::Error);
  CHECK_THROWS_WITH_AS(mc::cuda::rmsnorm_backward(p, p, p, p, 4, 8, p + 1000, nullptr, p, 4),
                       doctest::Contains("[mc.rmsnorm.workspace]"), mc::Error);
  CHECK_THROWS_WITH_AS(mc::cuda::swiglu_forward(p, p + 100, 4, p + 1),
                       doctest::Contains("[mc.swiglu.aliasing]"), mc::Error);
  CHECK_THROWS_WITH_AS(mc::cuda::embedding_forward(p, 0, 8, nullptr, 4, p),
                       doctest::Contains("[mc.embedding.bad_shape]"), mc::Error);
  CHECK_THROWS_WITH_AS(mc::cuda::cross_entropy_forward(p, nullptr, 4, 8, p, p, p, nullptr),
                       doctest::Contains("[mc.cross_entropy.null_pointer]"), mc::Error);
  mc::cuda::AdamWHyper bad;
  bad.beta2 = 1.0;
  CHECK_THROWS_WITH_AS(mc::cuda::adamw_prepare(nullptr, 1.0, {}, bad, nullptr),
                       doctest::Contains("[mc.adamw.bad_options]"), mc::Error);
  mc::GaussianRopeOptions o;
  o.d_head = 96;
  CHECK_THROWS_WITH_AS(mc::cuda::apply_gaussian_rope_backward(p, p, nullptr, 4, 2, o),
                       doctest::Contains("`d_head = 96` is not compiled in"), mc::Error);
  CHECK_THROWS_WITH_AS((mc::cuda::DeviceLlamaShape{0, 8}.validate()),
                       doctest::Contains("[mc.llama.bad_batch]"), mc::Error);
}

TEST_CASE("cuda gist_net / lens_net: bad options and weights throw before touching the GPU") {
  using C = mc::Config<32, 3>;
  mc::GistNetOptions go;
  const auto gw = mc::GistNetWeights<float>::random(go, 1);
  mc::cuda::DeviceGistNetOptions gd;
  gd.max_blocks = 0;
  CHECK_THROWS_WITH_AS(mc::cuda::DeviceGistNet<C>(go, gw, gd),
                       doctest::Contains("[mc.gist_net.bad_options] max_blocks = 0"), mc::Error);
  mc::GistNetOptions other = go;
  other.d_ff = 96;  // weights drawn for d_ff = 128
  CHECK_THROWS_WITH_AS(mc::cuda::DeviceGistNet<C>(other, gw), doctest::Contains("mlp.w1"),
                       mc::Error);
  mc::GistNetOptions wide;
  wide.n_heads = 1;
  wide.d_attn = 256;  // K 64 × d_head 256 tiles need more shared memory than a block has
  CHECK_THROWS_WITH_AS(
      (mc::cuda::DeviceGistNet<mc::Config<64, 2>>(wide, mc::GistNetWeights<float>::random(wide, 1))),
      doctest::Contains("bytes of shared memory"), mc::Error);
  mc::cuda::DeviceGistNetOptions infer;
  infer.training = false;
  CHECK(mc::cuda::DeviceGistNet<C>::device_bytes(go, infer) <
        mc::cuda::DeviceGistNet<C>::device_bytes(go, {}));

  mc::LensNetOptions lo;
  const auto lw = mc::LensNetWeights<float>::random(lo, 2);
  mc::cuda::DeviceLensNetOptions ld;
  ld.max_entries = -3;
  CHECK_THROWS_WITH_AS(mc::cuda::DeviceLensNet(lo, lw, ld),
                       doctest::Contains("[mc.lens_net.bad_options] max_entries = -3"), mc::Error);
  mc::LensNetOptions more = lo;
  more.n_layers = 2;  // weights drawn for 3 layers
  CHECK_THROWS_WITH_AS(mc::cuda::DeviceLensNet(more, lw), doctest::Contains("[mc.lens_net.bad_weights]"),
                       mc::Error);
  mc::LensNetOptions long_query = lo;
  long_query.num_query = 4096;  // its keys and values would not fit in shared memory
  CHECK_THROWS_WITH_AS(mc::cuda::DeviceLensNet::device_bytes(long_query, {}),
                       doctest::Contains("bytes of shared memory"), mc::Error);
  CHECK(mc::cuda::DeviceLensNet::device_bytes(lo, {}) > 0);
}
