# SPDX-License-Identifier: Apache-2.0
# Sourced by the scripts: puts an installed CUDA toolkit's nvcc on PATH (CMake's AUTO detection
# then builds the GPU tests and benchmarks) and picks the build folder.
if [ -x /usr/local/cuda/bin/nvcc ] && ! command -v nvcc >/dev/null 2>&1; then
  export PATH="/usr/local/cuda/bin:$PATH"
fi
MC_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MC_BUILD="${MC_BUILD:-$MC_ROOT/build/release}"
MC_JOBS="${MC_JOBS:-$(nproc)}"
