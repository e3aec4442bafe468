// SPDX-License-Identifier: Apache-2.0
// Umbrella header of the GPU path (Eigen/Dense style): includes every public facade. Our own
// headers include exactly what they use; this one is for users' .cu files.
#pragma once

#include "megacontext/device_adamw.cuh"
#include "megacontext/device_assemble.cuh"
#include "megacontext/device_attention.cuh"
#include "megacontext/device_cross_entropy.cuh"
#include "megacontext/device_embedding.cuh"
#include "megacontext/device_focus_select.cuh"
#include "megacontext/device_gemm.cuh"
#include "megacontext/device_gist_net.cuh"
#include "megacontext/device_gist_pool.cuh"
#include "megacontext/device_lens_net.cuh"
#include "megacontext/device_llama.cuh"
#include "megacontext/device_llama_model.cuh"
#include "megacontext/device_pyramid_bsr.cuh"
#include "megacontext/device_rmsnorm.cuh"
#include "megacontext/device_rope.cuh"
#include "megacontext/device_swiglu.cuh"
#include "megacontext/device_tree_gisting.cuh"
#include "megacontext/dispatch.cuh"
#include "megacontext/error.cuh"
