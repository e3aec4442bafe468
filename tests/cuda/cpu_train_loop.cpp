// SPDX-License-Identifier: Apache-2.0
// See cpu_train_loop.hpp: the CPU loop's clip + AdamW update, compiled by the host compiler.
#include "cuda/cpu_train_loop.hpp"

#include <cmath>

namespace mc::test {

namespace {

template <class P>
double clip_and_step(P& params, P& grads, train::AdamW& opt, double clip,
                     const train::WarmupCosine& schedule) {
  const double norm = train::clip_grad_norm<float>(grads, clip);
  if (std::isfinite(norm)) opt.step<float>(params, grads, schedule(opt.step_count() + 1));
  return norm;
}

}  // namespace

double cpu_clip_and_step(NamedFlat& params, NamedFlat& grads, train::AdamW& opt, double clip,
                         const train::WarmupCosine& schedule) {
  return clip_and_step(params, grads, opt, clip, schedule);
}

double cpu_clip_and_step(reference::LlamaWeights<float>& params,
                         reference::LlamaWeights<float>& grads, train::AdamW& opt, double clip,
                         const train::WarmupCosine& schedule) {
  return clip_and_step(params, grads, opt, clip, schedule);
}

}  // namespace mc::test
