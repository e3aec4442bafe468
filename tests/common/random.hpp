// SPDX-License-Identifier: Apache-2.0
// Seeded, replayable random inputs for tests. The base seed comes from MC_TEST_SEED when set
// (printed on failure through doctest's INFO), and each operand derives its own seed from it.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <random>
#include <string>

namespace mc::test {

/// The base seed: MC_TEST_SEED from the environment, or a fixed default so CI is reproducible.
inline std::uint64_t base_seed() {
  if (const char* s = std::getenv("MC_TEST_SEED")) return std::strtoull(s, nullptr, 0);
  return 20261123ull;
}

/// A generator for one operand: base seed + a per-operand salt (CUTLASS's seed + 2019 habit).
inline std::mt19937_64 rng(std::uint64_t salt) { return std::mt19937_64(base_seed() + salt); }

/// Text to INFO() so a failing test prints how to replay it.
inline std::string seed_info() {
  return "replay with MC_TEST_SEED=" + std::to_string(base_seed());
}

}  // namespace mc::test
