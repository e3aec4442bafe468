// SPDX-License-Identifier: Apache-2.0
// Failtest: gists are float or double, so mc::Config<32, 3, int> must stop the build with
// "Scalar must be float or double".
// Built twice (Eigen failtest style): with MC_FAILTEST_SHOULD_FAIL the bad line is active and the
// build must fail with that sentence; without it the same file must compile (the control).
#include <megacontext/config.hpp>

#ifdef MC_FAILTEST_SHOULD_FAIL
using TestConfig = mc::Config<32, 3, int>;
#else
using TestConfig = mc::Config<32, 3, double>;
#endif

// Naming a member instantiates the class, and with it the static_asserts.
int main() { return sizeof(typename TestConfig::Scalar) == 8 ? 0 : 1; }
