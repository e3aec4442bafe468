// SPDX-License-Identifier: Apache-2.0
// mc_eval with the decoder on the GPU: the same program as examples/tools/mc_eval.cpp (see its
// header for the subcommands), compiled with MC_EVAL_GPU so that the Session's model is
// mc::cuda::DeviceLlamaModel. Tokenizing, the tree, the allocator and scoring stay on the CPU.
#include <megacontext/device_llama_model.cuh>

#define MC_EVAL_GPU 1
#include "../mc_eval.cpp"
