// SPDX-License-Identifier: Apache-2.0
// Seeded, replayable random inputs for tests. The base seed comes from MC_TEST_SEED when set
// (printed on failure through doctest's INFO), and each operand derives its own seed from it.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include <megacontext/gister.hpp>

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

/// A [rows, cols] matrix of normal(0, std_dev) draws from operand `salt`.
inline RowMatrix<double> normal_matrix(Eigen::Index rows, Eigen::Index cols, std::uint64_t salt,
                                       double std_dev = 1.0) {
  auto gen = rng(salt);
  std::normal_distribution<double> normal(0.0, std_dev);
  RowMatrix<double> m(rows, cols);
  for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = normal(gen);
  return m;
}

/// `count` distinct indices of [0, size) in random order (all of them when size <= count).
inline std::vector<Eigen::Index> sample_indices(Eigen::Index size, Eigen::Index count,
                                               std::uint64_t salt) {
  std::vector<Eigen::Index> v(static_cast<std::size_t>(size));
  for (Eigen::Index i = 0; i < size; ++i) v[static_cast<std::size_t>(i)] = i;
  if (size <= count) return v;
  auto gen = rng(salt);
  std::shuffle(v.begin(), v.end(), gen);
  v.resize(static_cast<std::size_t>(count));
  return v;
}

}  // namespace mc::test
