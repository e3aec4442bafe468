// SPDX-License-Identifier: Apache-2.0
// A ten-line user that vendors the source tree: constexpr LOD maths and the error type.
#include <megacontext/config.hpp>
#include <megacontext/error.hpp>
#include <megacontext/lod.hpp>

int main() {
  using L = mc::Lod<mc::Config<32, 3>>;
  static_assert(L::span(2) == 1024);
  if (L::span(2) != 1024 || L::child({2, 1}, 3) != mc::Node{1, 35}) return 1;
  try {
    MC_EXPECTS(L::is_valid({4, 0}), mc::Errc::kOutOfRange, "lod ", 4, " > Depth ", L::Depth);
    return 2;  // MC_EXPECTS did not throw
  } catch (const mc::Error& e) {
    if (e.code() != mc::Errc::kOutOfRange) return 3;
  }
  return 0;
}
