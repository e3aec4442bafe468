// SPDX-License-Identifier: Apache-2.0
// Umbrella header for the host (CPU) side of MegaContext: include this to get every public part.
// The GPU path has its own umbrella, <megacontext/cuda.cuh>, under cuda/.
#pragma once

#include "megacontext/config.hpp"
#include "megacontext/disk_storage.hpp"
#include "megacontext/error.hpp"
#include "megacontext/gister.hpp"
#include "megacontext/io/tree_file.hpp"
#include "megacontext/lod.hpp"
#include "megacontext/tree.hpp"
#include "megacontext/tree_storage.hpp"
