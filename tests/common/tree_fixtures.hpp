// SPDX-License-Identifier: Apache-2.0
// Shared helpers for the tree tests: a temporary directory, a deterministic token stream
// (token i depends only on i, so an append continued after a crash is predictable), and an
// independent reference for every gist, built level by level in double precision.
#pragma once

#include <doctest/doctest.h>

#include <megacontext/gister.hpp>
#include <megacontext/lod.hpp>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include <unistd.h>

namespace mc::test {

/// A fresh directory under the system temp folder, removed with its contents on destruction.
class TempDir {
 public:
  explicit TempDir(const std::string& tag) {
    static int counter = 0;
    path_ = std::filesystem::temp_directory_path() /
            ("mc_test_" + tag + "_" + std::to_string(::getpid()) + "_" +
             std::to_string(counter++));
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& s) const { return path_ / s; }

 private:
  std::filesystem::path path_;
};

/// Token at position i of the deterministic test stream (splitmix64 of i, modulo vocab).
inline TokenId stream_token(std::int64_t i, std::int64_t vocab) {
  std::uint64_t z = static_cast<std::uint64_t>(i) + 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return static_cast<TokenId>(z % static_cast<std::uint64_t>(vocab));
}

/// Tokens [begin, end) of the stream.
inline std::vector<TokenId> stream_tokens(std::int64_t begin, std::int64_t end,
                                          std::int64_t vocab) {
  std::vector<TokenId> v;
  v.reserve(static_cast<std::size_t>(end - begin));
  for (std::int64_t i = begin; i < end; ++i) v.push_back(stream_token(i, vocab));
  return v;
}

/// Reference gists of every level for `ids`, computed in double from the embedding table with
/// plain loops: levels[l] is [level_size(l), d] row-major, levels[0] the token embeddings.
template <class C>
std::vector<std::vector<double>> reference_levels(const std::vector<TokenId>& ids,
                                                  const RowMatrix<typename C::Scalar>& table) {
  const auto d = static_cast<std::size_t>(table.cols());
  std::vector<std::vector<double>> levels(C::Depth + 1);
  for (TokenId id : ids)
    for (std::size_t j = 0; j < d; ++j)
      levels[0].push_back(static_cast<double>(table(id, static_cast<Eigen::Index>(j))));
  for (int l = 1; l <= C::Depth; ++l) {
    const auto& below = levels[static_cast<std::size_t>(l - 1)];
    const std::size_t n_below = below.size() / d;
    for (std::size_t g = 0; g + C::K <= n_below; g += C::K)
      for (std::size_t j = 0; j < d; ++j) {
        double s = 0;
        for (std::size_t c = 0; c < static_cast<std::size_t>(C::K); ++c) s += below[(g + c) * d + j];
        levels[static_cast<std::size_t>(l)].push_back(s / C::K);
      }
  }
  return levels;
}

/// Largest |a - b| / (1 + |b|) between a stored gist level and its reference; NaN-proof
/// (a NaN anywhere returns +inf so that `err <= tol` fails).
template <class View>
double max_rel_error(const View& got, const std::vector<double>& ref) {
  double worst = 0;
  const auto n = static_cast<std::size_t>(got.size());
  if (ref.size() != n) return INFINITY;
  for (std::size_t i = 0; i < n; ++i) {
    const double g = static_cast<double>(got.data()[i]);
    const double e = std::abs(g - ref[i]) / (1.0 + std::abs(ref[i]));
    if (!(e <= worst)) worst = std::isnan(e) ? INFINITY : e;
  }
  return worst;
}

}  // namespace mc::test
