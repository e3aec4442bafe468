// SPDX-License-Identifier: Apache-2.0
// Failtest: a Config with K = 1 has no tree (every level would be one token wide), so
// mc::Config<1, 3> must stop the build with "K (tokens per gist) must be >= 2".
// Built twice (Eigen failtest style): with MC_FAILTEST_SHOULD_FAIL the bad line is active and the
// build must fail with that sentence; without it the same file must compile (the control).
#include <megacontext/config.hpp>

#ifdef MC_FAILTEST_SHOULD_FAIL
using TestConfig = mc::Config<1, 3>;
#else
using TestConfig = mc::Config<2, 3>;
#endif

// Naming a member instantiates the class, and with it the static_asserts.
int main() { return TestConfig::K == 0 ? 1 : 0; }
