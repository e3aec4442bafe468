// SPDX-License-Identifier: Apache-2.0
// Umbrella header for the host (CPU) side of MegaContext: include this to get every public part.
// The GPU path has its own umbrella, <megacontext/cuda.cuh>, under cuda/.
#pragma once

#include "megacontext/assemble.hpp"
#include "megacontext/bsr.hpp"
#include "megacontext/config.hpp"
#include "megacontext/disk_storage.hpp"
#include "megacontext/error.hpp"
#include "megacontext/focus_allocator.hpp"
#include "megacontext/focus_policy.hpp"
#include "megacontext/gaussian_rope.hpp"
#include "megacontext/gister.hpp"
#include "megacontext/io/safetensors.hpp"
#include "megacontext/io/tree_file.hpp"
#include "megacontext/lod.hpp"
#include "megacontext/model.hpp"
#include "megacontext/policies/budget_optimal.hpp"
#include "megacontext/policies/greedy_threshold.hpp"
#include "megacontext/pyramid_mask.hpp"
#include "megacontext/reference/llama.hpp"
#include "megacontext/tokenizer.hpp"
#include "megacontext/train/adamw.hpp"
#include "megacontext/train/checkpoint.hpp"
#include "megacontext/train/schedule.hpp"
#include "megacontext/tree.hpp"
#include "megacontext/tree_storage.hpp"
#include "megacontext/working_context.hpp"
