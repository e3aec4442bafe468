// SPDX-License-Identifier: Apache-2.0
// The doctest main shared by every CPU test binary.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
