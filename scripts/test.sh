#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The test job on a fresh machine: install dependencies, build everything (CPU tests, benchmarks,
# examples, header tests, and every CUDA test and benchmark when nvcc exists), then run ctest.
# Without a GPU the CUDA tests report "skipped" (exit code 77), never "passed".
set -euo pipefail
source "$(dirname "$0")/env.sh"
bash "$MC_ROOT/scripts/setup.sh"
cmake -S "$MC_ROOT" -B "$MC_BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build "$MC_BUILD" -j "$MC_JOBS"
ctest --test-dir "$MC_BUILD" --output-on-failure -j "$MC_JOBS" "$@"
