#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The main job on a fresh machine: install dependencies, build the examples, and run mc_ingest on
# the GPL-3 text every Debian system ships (bytes as token ids) into an on-disk tree.
set -euo pipefail
source "$(dirname "$0")/env.sh"
bash "$MC_ROOT/scripts/setup.sh"
cmake -S "$MC_ROOT" -B "$MC_BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DMEGACONTEXT_BUILD_TESTS=OFF -DMEGACONTEXT_BUILD_BENCH=OFF -DMEGACONTEXT_ENABLE_CUDA=OFF >/dev/null
cmake --build "$MC_BUILD" --target mc_ingest -j "$MC_JOBS"
"$MC_BUILD/examples/mc_ingest" --input /usr/share/common-licenses/GPL-3 \
  --tree "$MC_BUILD/gpl3_tree" --fresh "$@"
