// SPDX-License-Identifier: Apache-2.0
// The doctest main of every GPU test binary. It answers doctest's listing flags first, without
// touching CUDA, because doctest_discover_tests runs the binary at build time (on machines
// without a GPU) and a non-zero exit there is a fatal CMake error. Otherwise it probes for a
// device and exits with 77 (CTest's SKIP_RETURN_CODE) when there is none: skipped, not passed.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cuda_runtime_api.h>

#include <cstdio>
#include <string_view>

namespace {

// True when the command line only asks doctest to list or describe tests (any "-x", "--x" or
// "--dt-x" spelling, with or without "=value"); such runs never need a device.
bool is_listing_request(int argc, char** argv) {
  constexpr std::string_view kFlags[] = {"list-test-cases",
                                         "ltc",
                                         "list-test-suites",
                                         "lts",
                                         "list-reporters",
                                         "lr",
                                         "help",
                                         "h",
                                         "?",
                                         "version",
                                         "v",
                                         "count",
                                         "c"};
  for (int i = 1; i < argc; ++i) {
    std::string_view a = argv[i];
    if (a.size() < 2 || a[0] != '-') continue;
    a.remove_prefix(a[1] == '-' ? 2 : 1);
    if (a.starts_with("dt-")) a.remove_prefix(3);
    a = a.substr(0, a.find('='));
    for (const std::string_view f : kFlags)
      if (a == f) return true;
  }
  return false;
}

}  // namespace

int main(int argc, char** argv) {
  doctest::Context context(argc, argv);
  if (!is_listing_request(argc, argv)) {
    int devices = 0;
    const cudaError_t status = cudaGetDeviceCount(&devices);
    if (status != cudaSuccess || devices == 0) {
      std::printf("no CUDA device: skipping (%s)\n",
                  status != cudaSuccess ? cudaGetErrorName(status) : "0 devices");
      (void)cudaGetLastError();
      return 77;
    }
    cudaDeviceProp prop{};
    int device = 0;
    if (cudaGetDevice(&device) == cudaSuccess &&
        cudaGetDeviceProperties(&prop, device) == cudaSuccess)
      std::printf("GPU tests on device %d: %s (sm_%d%d)\n", device, prop.name, prop.major,
                  prop.minor);
  }
  return context.run();
}
