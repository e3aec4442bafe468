// SPDX-License-Identifier: Apache-2.0
// A ten-line user of the installed package: constexpr LOD maths and the error type.
#include <megacontext/config.hpp>
#include <megacontext/error.hpp>
#include <megacontext/lod.hpp>
#ifdef MC_CONSUMER_CUDA
#include <cuda_runtime_api.h>  // reached through megacontext::cuda -> CUDA::cudart
#endif

int main() {
  using L = mc::Lod<mc::Config<32, 3>>;
  static_assert(L::span(2) == 1024);
  if (L::span(2) != 1024 || L::parent({1, 70}) != mc::Node{2, 2}) return 1;
  try {
    MC_EXPECTS(L::lod_of_width(33) >= 0, mc::Errc::kInvalidArgument, "width ", 33, " is not K^l");
    return 2;  // MC_EXPECTS did not throw
  } catch (const mc::Error& e) {
    if (e.code() != mc::Errc::kInvalidArgument) return 3;
  }
#ifdef MC_CONSUMER_CUDA
  int version = 0;  // needs the runtime library, not a GPU
  if (cudaRuntimeGetVersion(&version) != cudaSuccess || version <= 0) return 4;
#endif
  return 0;
}
