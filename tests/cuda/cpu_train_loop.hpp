// SPDX-License-Identifier: Apache-2.0
// The CPU training loop's update (mc::train::clip_grad_norm, then mc::train::AdamW::step at the
// WarmupCosine rate of step_count() + 1, skipped on a non-finite norm: BaseLmTrainer::step) for
// the GPU optimiser parity tests. nvcc 13 rejects the ParameterSet concept's lambda requirement
// (train/parameters.hpp) at the call sites, so the calls live in a g++ TU, cpu_train_loop.cpp.
#pragma once

#include <megacontext/reference/llama.hpp>
#include <megacontext/train/adamw.hpp>
#include <megacontext/train/schedule.hpp>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace mc::test {

/// Named tensors stored back to back in one vector (the device optimiser's flat layout).
struct NamedFlat {
  std::vector<std::string> names;
  std::vector<std::int64_t> sizes;
  std::vector<float> data;

  void for_each_parameter(const std::function<void(const std::string&, float*, Eigen::Index)>& f) {
    std::int64_t off = 0;
    for (std::size_t i = 0; i < names.size(); ++i) {
      f(names[i], data.data() + off, static_cast<Eigen::Index>(sizes[i]));
      off += sizes[i];
    }
  }
};

/// One CPU update; returns the gradient norm before clipping (the step is skipped when it is not
/// finite). `grads` is clipped in place, as in the CPU loop.
double cpu_clip_and_step(NamedFlat& params, NamedFlat& grads, train::AdamW& opt, double clip,
                         const train::WarmupCosine& schedule);
/// As above for the decoder's weights.
double cpu_clip_and_step(reference::LlamaWeights<float>& params,
                         reference::LlamaWeights<float>& grads, train::AdamW& opt, double clip,
                         const train::WarmupCosine& schedule);

}  // namespace mc::test
