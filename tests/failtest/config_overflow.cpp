// SPDX-License-Identifier: Apache-2.0
// Failtest: K^(Depth+1) must fit in int64. 4096^6 = 2^72 does not, while K = 4096 and Depth = 5
// pass every other check, so mc::Config<4096, 5> must stop the build with
// "K^(Depth+1) must fit in int64"; the control 4096^5 = 2^60 fits.
// Built twice (Eigen failtest style): with MC_FAILTEST_SHOULD_FAIL the bad line is active and the
// build must fail with that sentence; without it the same file must compile (the control).
#include <megacontext/config.hpp>

#ifdef MC_FAILTEST_SHOULD_FAIL
using TestConfig = mc::Config<4096, 5>;
#else
using TestConfig = mc::Config<4096, 4>;
#endif

// Naming a member instantiates the class, and with it the static_asserts.
int main() { return TestConfig::kTopSpan > 0 ? 0 : 1; }
