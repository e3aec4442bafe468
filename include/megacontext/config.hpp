// SPDX-License-Identifier: Apache-2.0
// The compile-time configuration every MegaContext template is parameterised on: block size K
// (tokens per LOD1 gist, children per node), Depth (gist levels above LOD0) and the gist Scalar.
// Bad combinations fail here with a sentence that says what to change.
#pragma once

#include <cstdint>
#include <limits>
#include <type_traits>

#include "megacontext/detail/host_device.hpp"

namespace mc {

/// A token id as stored at LOD0 (4 bytes per token on disk).
using TokenId = std::int32_t;

namespace detail {
/// K^e in int64, or -1 on overflow; usable in static_assert.
constexpr std::int64_t checked_pow(std::int64_t k, int e) {
  std::int64_t r = 1;
  for (int i = 0; i < e; ++i) {
    if (r > std::numeric_limits<std::int64_t>::max() / k) return -1;
    r *= k;
  }
  return r;
}
}  // namespace detail

/// Compile-time configuration: K children per node, Depth gist levels above LOD0, gist Scalar.
template <int K_, int Depth_, class Scalar_ = float>
struct Config {
  static_assert(K_ >= 2, "mc::Config: K (tokens per gist) must be >= 2");
  static_assert(K_ <= 4096, "mc::Config: K (tokens per gist) must be <= 4096");
  static_assert(Depth_ >= 1, "mc::Config: Depth (gist levels above LOD0) must be >= 1");
  static_assert(Depth_ <= 15, "mc::Config: Depth must be <= 15 (the tree file has 16 level slots)");
  static_assert(detail::checked_pow(K_, Depth_ + 1) > 0,
                "mc::Config: K^(Depth+1) must fit in int64; use a smaller K or Depth");
  static_assert(std::is_same_v<Scalar_, float> || std::is_same_v<Scalar_, double>,
                "mc::Config: Scalar must be float or double");

  /// Children per node (tokens per LOD1 gist).
  static constexpr int K = K_;
  /// Number of gist levels above LOD0; levels are 0..Depth.
  static constexpr int Depth = Depth_;
  /// Number of levels including LOD0.
  static constexpr int kNumLevels = Depth_ + 1;
  /// Element type of gists.
  using Scalar = Scalar_;

  /// Tokens covered by one node at `lod` (K^lod).
  MC_HOST_DEVICE static constexpr std::int64_t span(int lod) {
    std::int64_t r = 1;
    for (int i = 0; i < lod; ++i) r *= K_;
    return r;
  }
  /// Tokens covered by one node of the top level (K^Depth).
  static constexpr std::int64_t kTopSpan = detail::checked_pow(K_, Depth_);
};

/// The configuration the paper and the examples use: K = 32, three gist levels, float gists.
using DefaultConfig = Config<32, 3>;

/// True for instantiations of mc::Config.
template <class T>
struct is_config : std::false_type {};
template <int K, int D, class S>
struct is_config<Config<K, D, S>> : std::true_type {};

/// Satisfied by mc::Config<K, Depth, Scalar>.
template <class T>
concept ConfigType = is_config<T>::value;

}  // namespace mc
