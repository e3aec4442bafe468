// SPDX-License-Identifier: Apache-2.0
// CPU/GPU parity of the device optimiser (cuda/megacontext/device_adamw.cuh) against the CPU
// training loop's own code: mc::train::clip_grad_norm then mc::train::AdamW::step at the
// WarmupCosine learning rate of step_count() + 1, skipped on a non-finite norm. Three named
// tensors (a norm gain without decay), five steps covering warm-up, cosine, a clipped step, an
// unclipped one and a NaN gradient that must be skipped without counting. Both sides compute in
// fp64 from the same fp32 inputs; the GPU sums the norm in another order and fuses multiply-adds,
// so parameters agree to about one fp32 ulp: |err| <= 1e-9 + 1e-6·|ref|.
#include <doctest/doctest.h>

#include <megacontext/device_adamw.cuh>
#include <megacontext/train/adamw.hpp>
#include <megacontext/train/schedule.hpp>

#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "common/random.hpp"
#include "cuda/cpu_train_loop.hpp"
#include "cuda/parity.cuh"

namespace {

using mc::test::GuardedBuffer;
using mc::test::LaunchMode;

const std::vector<std::string> kNames{"embedding", "layers.0.attn_norm", "layers.0.mlp.w1"};
const std::vector<std::int64_t> kSizes{1000, 64, 4097};

}  // namespace

TEST_CASE("cuda adamw: clip + prepare + update follow the CPU loop step by step") {
  const mc::test::Stream stream;
  for (const LaunchMode mode : mc::test::kLaunchModes) {
    INFO("launch=", mc::test::to_string(mode), " ", mc::test::seed_info());
    mc::train::AdamWOptions ao;
    ao.weight_decay = 0.1;
    mc::train::WarmupCosine sched{1e-2, 1e-3, 2, 5};
    const double clip = 1.0;
    mc::train::AdamW cpu(ao);
    mc::test::NamedFlat params{kNames, kSizes, std::vector<float>(5161)}, grads = params;
    auto gen = mc::test::rng(1);
    std::normal_distribution<float> normal(0.0f, 0.5f);
    for (float& p : params.data) p = normal(gen);
    const auto n = static_cast<std::int64_t>(params.data.size());
    std::vector<std::uint8_t> mask(params.data.size(), 1);
    std::fill(mask.begin() + 1000, mask.begin() + 1064, 0);  // the norm gain

    GuardedBuffer<float> gp(params.data.size()), gg(params.data.size());
    GuardedBuffer<double> gm(params.data.size()), gv(params.data.size()), gsq(1);
    GuardedBuffer<std::uint8_t> gmask(mask.size());
    GuardedBuffer<mc::cuda::AdamWDeviceState> gst(1);
    gp.upload(params.data);
    gm.upload(std::vector<double>(params.data.size(), 0.0));
    gv.upload(std::vector<double>(params.data.size(), 0.0));
    gmask.upload(mask);
    gst.upload({mc::cuda::AdamWDeviceState{}});
    std::size_t temp_bytes = 0;
    MC_CUDA_TRY(mc::cuda::grad_sq_norm(nullptr, temp_bytes, gg.data(), n, gsq.data()));
    GuardedBuffer<unsigned char> temp(temp_bytes);
    const mc::cuda::AdamWHyper hyper{ao.beta1, ao.beta2, ao.eps, ao.weight_decay};
    const mc::cuda::AdamWSchedule dsched{sched.lr_max, sched.lr_min, sched.warmup_steps, sched.total_steps};

    // Gradient scales per step: clipped (norm ~ 36), small (not clipped), NaN (skipped), ...
    const float scales[5] = {0.5f, 0.001f, 1.0f, 0.01f, 2.0f};
    for (int step = 0; step < 5; ++step) {
      INFO("step ", step);
      std::normal_distribution<float> g(0.0f, scales[step]);
      for (float& x : grads.data) x = g(gen);
      if (step == 2) grads.data[17] = std::numeric_limits<float>::quiet_NaN();
      gg.upload(grads.data);
      // The graph mode captures the three calls and replays them twice; replays after the first
      // would step again, so the graph variant is captured once and launched once per step here.
      const auto enqueue = [&](cudaStream_t s) {
        MC_CUDA_RETURN_IF_ERROR(mc::cuda::grad_sq_norm(temp.data(), temp_bytes, gg.data(), n, gsq.data(), s));
        MC_CUDA_RETURN_IF_ERROR(mc::cuda::adamw_prepare(gsq.data(), clip, dsched, hyper, gst.data(), s));
        return mc::cuda::adamw_update(gp.data(), gg.data(), gm.data(), gv.data(), gmask.data(), n,
                                      hyper, gst.data(), s);
      };
      if (mode == LaunchMode::kStream) {
        mc::test::launch(mode, stream, enqueue);
      } else {
        cudaGraph_t graph = nullptr;
        cudaGraphExec_t exec = nullptr;
        MC_CUDA_TRY(cudaStreamBeginCapture(stream.get(), cudaStreamCaptureModeGlobal));
        const cudaError_t e = enqueue(stream.get());
        MC_CUDA_TRY(cudaStreamEndCapture(stream.get(), &graph));
        MC_CUDA_TRY(e);
        MC_CUDA_TRY(cudaGraphInstantiate(&exec, graph, 0));
        MC_CUDA_TRY(cudaGraphLaunch(exec, stream.get()));
        stream.sync();
        MC_CUDA_TRY(cudaGraphExecDestroy(exec));
        MC_CUDA_TRY(cudaGraphDestroy(graph));
      }
      // The CPU loop (BaseLmTrainer::step).
      const double norm = mc::test::cpu_clip_and_step(params, grads, cpu, clip, sched);
      const bool finite = std::isfinite(norm);

      const mc::cuda::AdamWDeviceState st = gst.download()[0];
      CHECK(st.step == cpu.step_count());
      CHECK(st.skip == (finite ? 0 : 1));
      CHECK(st.skipped == (step >= 2 ? 1 : 0));
      if (finite) {
        CHECK(st.lr == doctest::Approx(sched(cpu.step_count())).epsilon(1e-12));
        CHECK(st.grad_norm == doctest::Approx(norm).epsilon(1e-12));
      }
      const std::vector<double> want(params.data.begin(), params.data.end());
      const auto cmp = mc::test::compare_close(gp.download(), want, 1e-9, 1e-6, 1e-14);
      CHECK_MESSAGE(cmp.ok, "params: ", cmp.report);
      if (cpu.step_count() > 0) {
        std::vector<double> m, v;
        for (const std::string& name : kNames) {
          const auto& mo = cpu.state().at(name);
          m.insert(m.end(), mo.m.begin(), mo.m.end());
          v.insert(v.end(), mo.v.begin(), mo.v.end());
        }
        const auto gmv = gm.download(), gvv = gv.download();
        double worst = 0;
        for (std::size_t i = 0; i < m.size(); ++i) {
          worst = std::max(worst, std::abs(gmv[i] - m[i]) / (std::abs(m[i]) + 1e-30));
          worst = std::max(worst, std::abs(gvv[i] - v[i]) / (std::abs(v[i]) + 1e-30));
        }
        CHECK_MESSAGE(worst <= 1e-6, "moments: worst relative difference ", worst);
      }
    }
    for (auto* b : {&gp, &gg}) CHECK(b->guards_intact());
    for (auto* b : {&gm, &gv, &gsq}) CHECK(b->guards_intact());
    CHECK(gmask.guards_intact());
    CHECK(gst.guards_intact());
  }
}

TEST_CASE("cuda adamw: bad arguments throw mc::Error before any launch") {
  auto* st = reinterpret_cast<mc::cuda::AdamWDeviceState*>(std::uintptr_t{4096});
  mc::cuda::AdamWHyper bad;
  bad.beta1 = 1.0;
  CHECK_THROWS_WITH_AS(mc::cuda::adamw_prepare(nullptr, 1.0, {}, bad, st),
                       doctest::Contains("[mc.adamw.bad_options]"), mc::Error);
  CHECK_THROWS_WITH_AS(mc::cuda::adamw_prepare(nullptr, -1.0, {}, {}, st),
                       doctest::Contains("[mc.adamw.bad_clip]"), mc::Error);
  CHECK_THROWS_WITH_AS(mc::cuda::adamw_prepare(nullptr, 1.0, {1e-3, 1e-4, 10, 5}, {}, st),
                       doctest::Contains("[mc.adamw.bad_schedule]"), mc::Error);
  CHECK_THROWS_WITH_AS(mc::cuda::adamw_update(nullptr, nullptr, nullptr, nullptr, nullptr, 5, {}, st),
                       doctest::Contains("[mc.adamw.null_pointer]"), mc::Error);
}
