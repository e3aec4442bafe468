// SPDX-License-Identifier: Apache-2.0
// Level-of-detail index arithmetic, shared by host and device code. A node {lod, index} covers
// the tokens [index * K^lod, (index + 1) * K^lod); its parent is {lod + 1, index / K} and its
// children are {lod - 1, index * K + j} for j in [0, K). Everything here is constexpr, so with
// K a compile-time constant the divisions fold to shifts when K is a power of two.
#pragma once

#include <cstdint>

#include "megacontext/config.hpp"
#include "megacontext/detail/host_device.hpp"

namespace mc {

/// A node of the tree: level of detail (0 = token) and index within that level.
struct Node {
  std::int32_t lod = 0;    ///< level of detail, 0 = token
  std::int64_t index = 0;  ///< position within the level, in time order

  friend constexpr bool operator==(const Node&, const Node&) = default;
};

/// A half-open range [begin, end) of token positions.
struct TokenSpan {
  std::int64_t begin = 0;  ///< first token position covered
  std::int64_t end = 0;    ///< one past the last token position covered

  /// Number of tokens in the span.
  MC_HOST_DEVICE constexpr std::int64_t size() const { return end - begin; }
  friend constexpr bool operator==(const TokenSpan&, const TokenSpan&) = default;
};

/// Index maths for one compile-time Config; every function is constexpr and host/device.
template <ConfigType C>
struct Lod {
  static constexpr int K = C::K;
  static constexpr int Depth = C::Depth;

  /// Tokens covered by one node at `lod` (K^lod); `lod` in [0, Depth].
  MC_HOST_DEVICE static constexpr std::int64_t span(int lod) { return C::span(lod); }

  /// Token range covered by `n`.
  MC_HOST_DEVICE static constexpr TokenSpan tokens(Node n) {
    const std::int64_t w = span(n.lod);
    return {n.index * w, (n.index + 1) * w};
  }

  /// The node one level up that contains `n`; requires n.lod < Depth.
  MC_HOST_DEVICE static constexpr Node parent(Node n) { return {n.lod + 1, n.index / K}; }

  /// The ancestor of `n` at level `lod` >= n.lod.
  MC_HOST_DEVICE static constexpr Node ancestor(Node n, int lod) {
    return {lod, n.index / (span(lod) / span(n.lod))};
  }

  /// The j-th child (j in [0, K)) of `n`; requires n.lod >= 1.
  MC_HOST_DEVICE static constexpr Node child(Node n, int j) {
    return {n.lod - 1, n.index * K + j};
  }

  /// Index of the first child of `n` within level n.lod - 1.
  MC_HOST_DEVICE static constexpr std::int64_t first_child(Node n) { return n.index * K; }

  /// Position of `n` among its K siblings, in [0, K).
  MC_HOST_DEVICE static constexpr int sibling_rank(Node n) {
    return static_cast<int>(n.index % K);
  }

  /// The node at level `lod` whose span contains token position `token`.
  MC_HOST_DEVICE static constexpr Node node_at(int lod, std::int64_t token) {
    return {lod, token / span(lod)};
  }

  /// Number of complete nodes at `lod` in a history of `num_tokens` tokens.
  MC_HOST_DEVICE static constexpr std::int64_t level_size(std::int64_t num_tokens, int lod) {
    return num_tokens / span(lod);
  }

  /// The level whose node width is `width` tokens, or -1 when `width` is not K^l, l <= Depth.
  MC_HOST_DEVICE static constexpr int lod_of_width(std::int64_t width) {
    for (int l = 0; l <= Depth; ++l)
      if (span(l) == width) return l;
    return -1;
  }

  /// True when a node at `lod` may start at token `begin` (begin is a multiple of K^lod).
  MC_HOST_DEVICE static constexpr bool is_aligned(int lod, std::int64_t begin) {
    return begin >= 0 && begin % span(lod) == 0;
  }

  /// True when `n` names a valid level and a non-negative index.
  MC_HOST_DEVICE static constexpr bool is_valid(Node n) {
    return n.lod >= 0 && n.lod <= Depth && n.index >= 0;
  }
};

}  // namespace mc
