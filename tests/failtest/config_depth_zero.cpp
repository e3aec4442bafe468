// SPDX-License-Identifier: Apache-2.0
// Failtest: Depth = 0 means no gist level above the tokens, so mc::Config<32, 0> must stop the
// build with "Depth (gist levels above LOD0) must be >= 1".
// Built twice (Eigen failtest style): with MC_FAILTEST_SHOULD_FAIL the bad line is active and the
// build must fail with that sentence; without it the same file must compile (the control).
#include <megacontext/config.hpp>

#ifdef MC_FAILTEST_SHOULD_FAIL
using TestConfig = mc::Config<32, 0>;
#else
using TestConfig = mc::Config<32, 1>;
#endif

// Naming a member instantiates the class, and with it the static_asserts.
int main() { return TestConfig::Depth == 0 ? 1 : 0; }
