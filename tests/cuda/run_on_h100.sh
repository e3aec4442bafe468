#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Runs the GPU tests and benchmarks of a build folder on a GPU machine (the H100): every GPU test
# (ctest -L gpu, or the test binaries directly when the folder was built under another path),
# compute-sanitizer memcheck on the parity binaries when it is installed, and the GPU benchmark
# with JSON output. Results go to $OUT (default: <build>/gpu-results); a summary table is last.
#
#   tests/cuda/run_on_h100.sh [build-dir]          run (default build-dir: build-cuda)
#   tests/cuda/run_on_h100.sh --bundle [build-dir] on the build machine: copy the non-toolkit
#                                                  shared libraries the binaries need into
#                                                  <build>/runtime-libs (used only if missing)
# Knobs: SKIP_TESTS=1, SKIP_SANITIZER=1, SKIP_BENCH=1, BENCH_MIN_TIME (seconds per benchmark,
# default 0.3). A normal run takes a few minutes; every step has a timeout (tests 150 s, memcheck
# 150 s per binary, bench 150 s), so under a 10-minute command limit split it if a step is slow.
# Exit status: 0 when every step that ran passed, 1 otherwise; GPU tests that were skipped (no
# device visible) count as a failure here, since this script exists to run them.
set -u -o pipefail

bundle=0
if [[ "${1:-}" == "--bundle" ]]; then
  bundle=1
  shift
fi
BUILD_ARG=${1:-build-cuda}
if [[ ! -d "$BUILD_ARG" ]]; then
  echo "run_on_h100.sh: build folder '$BUILD_ARG' not found" >&2
  exit 2
fi
BUILD=$(cd "$BUILD_ARG" && pwd)
BUILD_PHYS=$(cd "$BUILD_ARG" && pwd -P)
# Every GPU parity test the folder holds (tests/cuda/CMakeLists.txt lists them).
shopt -s nullglob
TEST_BINS=("$BUILD"/tests/cuda/test_*_parity)
shopt -u nullglob
HOST_BIN="$BUILD/tests/cuda/test_cuda_host"
BENCH_BIN="$BUILD/bench/cuda/bench_gist_pool"

if [[ $bundle == 1 ]]; then
  mkdir -p "$BUILD/runtime-libs"
  for bin in "${TEST_BINS[@]}" "$HOST_BIN" "$BENCH_BIN"; do
    [[ -x "$bin" ]] || continue
    ldd "$bin" | awk '/=> \// {print $3}' | grep -E 'libcudart|libbenchmark' || true
  done | sort -u | while read -r lib; do cp -L "$lib" "$BUILD/runtime-libs/"; done
  ls -la "$BUILD/runtime-libs"
  exit 0
fi

OUT=${OUT:-$BUILD/gpu-results}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
declare -a SUMMARY=()
overall=0
note() { SUMMARY+=("$(printf '%-34s %-8s %s' "$1" "$2" "$3")"); [[ "$2" == PASS || "$2" == INFO ]] || overall=1; }

# ---- device and libraries
{
  echo "date: $(date -u +%FT%TZ)"
  echo "host: $(hostname)"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
} >"$OUT/device.txt" 2>&1
cat "$OUT/device.txt"
missing=0
for bin in "${TEST_BINS[@]}" "$HOST_BIN" "$BENCH_BIN"; do
  if [[ ! -x "$bin" ]]; then
    echo "missing binary: $bin (build it: ninja -C <build> test_gist_pool_parity test_rope_parity test_cuda_host bench_gist_pool)"
    missing=1
  elif ldd "$bin" | grep -q "not found"; then
    missing=2
  fi
done
if [[ $missing == 2 ]]; then
  if [[ -d "$BUILD/runtime-libs" ]]; then
    export LD_LIBRARY_PATH="$BUILD/runtime-libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    echo "some shared libraries were not found; using $BUILD/runtime-libs"
  fi
  for bin in "${TEST_BINS[@]}" "$HOST_BIN" "$BENCH_BIN"; do
    [[ -x "$bin" ]] && ldd "$bin" | grep "not found" | sed "s|^|$(basename "$bin"): |"
  done
fi

# ---- GPU tests: ctest when the build folder is where CMake generated it, else the binaries.
recorded=$(sed -n 's/^CMAKE_CACHEFILE_DIR:INTERNAL=//p' "$BUILD/CMakeCache.txt" 2>/dev/null)
if [[ "${SKIP_TESTS:-0}" == 1 ]]; then
  note "gpu tests" INFO "skipped (SKIP_TESTS=1)"
elif command -v ctest >/dev/null && [[ "$recorded" == "$BUILD" || "$recorded" == "$BUILD_PHYS" ]]; then
  (cd "$BUILD" && timeout 150 ctest -L gpu --output-on-failure --timeout 120) 2>&1 |
    tee "$OUT/ctest_gpu.log"
  rc=$?
  line=$(grep -E "tests passed|tests failed" "$OUT/ctest_gpu.log" | tail -1)
  skipped=$(grep -c "\*\*\*Skipped" "$OUT/ctest_gpu.log")
  if [[ $rc == 0 && $skipped == 0 && -n "$line" ]]; then
    note "gpu tests (ctest -L gpu)" PASS "$line"
  else
    note "gpu tests (ctest -L gpu)" FAIL "rc=$rc, $skipped skipped; $line; see ctest_gpu.log"
  fi
  (cd "$BUILD" && timeout 30 ctest -R "^(dispatch|error): |^cuda .*bad arguments" --output-on-failure) \
    >"$OUT/ctest_cuda_host.log" 2>&1 &&
    note "cuda host tests (label cpu)" PASS "$(grep -E 'tests passed' "$OUT/ctest_cuda_host.log")" ||
    note "cuda host tests (label cpu)" FAIL "see ctest_cuda_host.log"
else
  echo "build folder was generated at '$recorded', not here: running the test binaries directly"
  for bin in "${TEST_BINS[@]}" "$HOST_BIN"; do
    name=$(basename "$bin")
    timeout 150 "$bin" 2>&1 | tee "$OUT/$name.log"
    rc=$?
    line=$(grep -E "test cases:" "$OUT/$name.log" | tail -1 | sed 's/\[doctest\] //')
    case $rc in
      0) note "$name" PASS "$line" ;;
      77) note "$name" FAIL "skipped: no CUDA device visible" ;;
      *) note "$name" FAIL "rc=$rc $line" ;;
    esac
  done
fi

# ---- compute-sanitizer memcheck on the parity binaries
sanitizer=$(command -v compute-sanitizer || true)
for c in /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda/compute-sanitizer/compute-sanitizer; do
  [[ -z "$sanitizer" && -x "$c" ]] && sanitizer=$c
done
if [[ "${SKIP_SANITIZER:-0}" == 1 ]]; then
  note "compute-sanitizer memcheck" INFO "skipped (SKIP_SANITIZER=1)"
elif [[ -z "$sanitizer" ]]; then
  note "compute-sanitizer memcheck" INFO "not installed; skipped"
else
  for bin in "${TEST_BINS[@]}"; do
    name=$(basename "$bin")
    timeout 150 "$sanitizer" --tool memcheck --leak-check full --error-exitcode 99 "$bin" \
      >"$OUT/memcheck_$name.log" 2>&1
    rc=$?
    summary=$(grep -E "ERROR SUMMARY" "$OUT/memcheck_$name.log" | tail -1 | sed 's/=* *//')
    if [[ $rc == 0 ]]; then
      note "memcheck $name" PASS "$summary"
    else
      note "memcheck $name" FAIL "rc=$rc $summary; see memcheck_$name.log"
    fi
  done
fi

# ---- benchmark
bench_json="$OUT/bench_gist_pool.json"
if [[ "${SKIP_BENCH:-0}" == 1 ]]; then
  note "bench_gist_pool" INFO "skipped (SKIP_BENCH=1)"
else
  timeout 150 "$BENCH_BIN" --benchmark_out="$bench_json" --benchmark_out_format=json \
    --benchmark_min_time="${BENCH_MIN_TIME:-0.3}" --benchmark_counters_tabular=true 2>&1 |
    tee "$OUT/bench_gist_pool.log"
  rc=$?
  if [[ $rc == 0 && -s "$bench_json" ]] && ! grep -q "error_occurred\": true" "$bench_json"; then
    note "bench_gist_pool" PASS "$bench_json"
  else
    note "bench_gist_pool" FAIL "rc=$rc; see bench_gist_pool.log"
  fi
fi

# ---- summary (last)
echo
gpu=$(command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
echo "==================== summary: ${gpu:-no nvidia-smi} ===================="
printf '%-34s %-8s %s\n' "step" "result" "detail"
for row in "${SUMMARY[@]}"; do echo "$row"; done
if [[ -s "$bench_json" ]] && command -v python3 >/dev/null; then
  python3 - "$bench_json" <<'EOF'
import json, sys
data = json.load(open(sys.argv[1]))
rows = [b for b in data.get("benchmarks", []) if b.get("run_type", "iteration") == "iteration"]
ours = {int(b["tokens"]): b for b in rows if b["name"].startswith("BM_GistPool_MeanPool")}
print()
print(f"{'benchmark':<52} {'tokens':>9} {'time/it us':>11} {'GB/s':>8} {'Mtok/s':>9} {'vs CUB':>7}")
for b in rows:
    tok = int(b.get("tokens", 0))
    gbs = b.get("bytes_per_second", 0) / 1e9
    mtok = b.get("items_per_second", 0) / 1e6
    t = b.get("real_time", 0.0)
    unit = b.get("time_unit", "us")
    t_us = t * {"ns": 1e-3, "us": 1.0, "ms": 1e3, "s": 1e6}.get(unit, 1.0)
    ratio = ""
    if b["name"].startswith("BM_GistPool_Cub") and tok in ours and t_us > 0:
        o = ours[tok]
        o_us = o["real_time"] * {"ns": 1e-3, "us": 1.0, "ms": 1e3, "s": 1e6}.get(o.get("time_unit", "us"), 1.0)
        ratio = f"{t_us / o_us:6.1f}x" if o_us > 0 else ""
    err = " ERROR" if b.get("error_occurred") else ""
    print(f"{b['name']:<52} {tok:>9} {t_us:>11.1f} {gbs:>8.1f} {mtok:>9.0f} {ratio:>7}{err}")
print("(vs CUB: CUB time / ours at the same size; H100 device-to-device copy is 2.84 TB/s)")
EOF
fi
echo "results in $OUT"
exit $overall
