// SPDX-License-Identifier: Apache-2.0
// The main() every CPU benchmark binary shares: Google Benchmark with the binary's name and the
// git commit in the JSON context, so a published figure can always be traced to its source.
#pragma once

#include <benchmark/benchmark.h>

namespace mc::bench {

/// Runs the registered benchmarks; `name` goes into the JSON context as "megacontext_bench".
inline int run_benchmarks(int argc, char** argv, const char* name) {
  benchmark::AddCustomContext("megacontext_bench", name);
#ifdef MC_GIT_COMMIT
  benchmark::AddCustomContext("git_commit", MC_GIT_COMMIT);
#endif
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

}  // namespace mc::bench

/// Defines main() for a benchmark binary called `name`.
#define MC_BENCHMARK_MAIN(name) \
  int main(int argc, char** argv) { return ::mc::bench::run_benchmarks(argc, argv, name); }
