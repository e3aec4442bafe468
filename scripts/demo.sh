#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The main job on a fresh machine: install dependencies (and the King James Bible from Debian's
# bible-kjv-text), build mc_demo, and run MegaContext end to end on the CPU with the bundled model
# (examples/models/): stream the Bible (1.57M tokens) into a session with a progress bar, ask
# pass-key and verse questions, print the telemetry, and write build/release/demo/focus_map.svg,
# telemetry.jsonl and the session (tree + state). Extra arguments go to mc_demo (--help).
set -euo pipefail
source "$(dirname "$0")/env.sh"
bash "$MC_ROOT/scripts/setup.sh"
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
if ! dpkg -s bible-kjv bible-kjv-text >/dev/null 2>&1; then
  echo "demo: installing the King James Bible (bible-kjv, bible-kjv-text)"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends bible-kjv bible-kjv-text
fi
cmake -S "$MC_ROOT" -B "$MC_BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DMEGACONTEXT_BUILD_TESTS=OFF -DMEGACONTEXT_BUILD_BENCH=OFF -DMEGACONTEXT_ENABLE_CUDA=OFF >/dev/null
cmake --build "$MC_BUILD" --target mc_demo mc_corpus -j "$MC_JOBS"
BIBLE="$MC_BUILD/demo-corpus/bible.txt"
if [ ! -s "$BIBLE" ]; then
  "$MC_BUILD/examples/mc_corpus" --out "$MC_BUILD/demo-corpus" --packages bible-kjv-text
fi
"$MC_BUILD/examples/mc_demo" --model "$MC_ROOT/examples/models/megacontext-base.safetensors" \
  --tokenizer "$MC_ROOT/examples/models/megacontext-base.mctok" --input "$BIBLE" \
  --out "$MC_BUILD/demo" "$@"
