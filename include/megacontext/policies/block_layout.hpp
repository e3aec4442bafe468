// SPDX-License-Identifier: Apache-2.0
// The window tiling that the block-selecting baselines share (recency-only, InfLLM-style block
// retrieval, Quest, the oracle): history at the coarsest aligned complete nodes, except that
// chosen LOD1 blocks show as their K tokens (splitting the coarser nodes above them), and the
// newest tokens as LOD0. The policies differ only in how they rank blocks. See
// docs/concepts/baselines.md. Layout policies plug into FocusAllocator (FocusLayoutPolicy).
#pragma once

#include <algorithm>
#include <cstdint>
#include <span>
#include <vector>

#include "megacontext/config.hpp"
#include "megacontext/focus_policy.hpp"
#include "megacontext/lod.hpp"

namespace mc {

/// Keeps the best `keep` candidate blocks by score, best first (ties: older first); blocks
/// >= num_scored have no score and are dropped. O(n + keep log keep).
inline void rank_blocks(std::vector<std::int64_t>& blocks, std::int64_t num_scored,
                        std::span<const double> score, std::size_t keep) {
  std::erase_if(blocks, [num_scored](std::int64_t b) { return b >= num_scored; });
  const auto better = [&](std::int64_t a, std::int64_t b) {
    const double x = score[static_cast<std::size_t>(a)], y = score[static_cast<std::size_t>(b)];
    return x != y ? x > y : a < b;
  };
  if (blocks.size() > keep) {
    std::nth_element(blocks.begin(), blocks.begin() + static_cast<std::ptrdiff_t>(keep),
                     blocks.end(), better);
    blocks.resize(keep);
  }
  std::sort(blocks.begin(), blocks.end(), better);
}

/// Tilings of the window [begin, end) with chosen LOD1 blocks as tokens.
template <ConfigType C>
struct BlockLayout {
  static constexpr int K = C::K;
  static constexpr int Depth = C::Depth;
  using L = Lod<C>;

  /// Appends (emit = true) or counts the tiling of [begin, end): [tail, end) as tokens; before
  /// tail, the coarsest aligned complete nodes containing no block of `blocks` (LOD1 indices,
  /// sorted), and each such block as K tokens. Returns the number of nodes.
  static std::int64_t tile(std::int64_t begin, std::int64_t tail, std::int64_t end,
                           std::span<const std::int64_t> blocks, std::vector<Node>* out) {
    std::int64_t count = 0, t = begin;
    tail = std::clamp(tail, begin, end);
    while (t < tail) {
      int lod = Depth;
      while (lod > 0 && (t % L::span(lod) != 0 || t + L::span(lod) > tail ||
                         contains(blocks, t / K, (t + L::span(lod)) / K)))
        --lod;
      if (out) out->push_back({lod, t / L::span(lod)});
      ++count;
      t += L::span(lod);
    }
    if (out)
      for (; t < end; ++t) out->push_back({0, t});
    return count + (end - tail);
  }

  /// Where the window can start so that its coarsest tiling fits `room` nodes: `floor` if it
  /// fits, else the earliest multiple of K^Depth that does (older history leaves the window).
  static std::int64_t fit_begin(std::int64_t floor, std::int64_t tail, std::int64_t end,
                                std::int64_t room) {
    if (tile(floor, tail, end, {}, nullptr) <= room) return floor;
    const std::int64_t top = L::span(Depth);
    // Over starts aligned to K^Depth the node count only falls as the start moves later.
    std::int64_t lo = (floor + top - 1) / top, hi = std::max(lo, std::max(floor, tail) / top);
    while (lo < hi) {
      const std::int64_t mid = lo + (hi - lo) / 2;
      if (tile(mid * top, tail, end, {}, nullptr) <= room) hi = mid;
      else lo = mid + 1;
    }
    return std::max(floor, lo * top);
  }

  /// The largest m such that the first m blocks of `ranked` (a priority order) fit `room` nodes
  /// in the tiling of [begin, end); the chosen blocks go to `chosen`, sorted. Adding a block
  /// never lowers the node count, so m is found by doubling, then bisection.
  static std::size_t fit_blocks(std::int64_t begin, std::int64_t tail, std::int64_t end,
                                std::int64_t room, std::span<const std::int64_t> ranked,
                                std::vector<std::int64_t>& chosen) {
    const auto fits = [&](std::size_t m) {
      chosen.assign(ranked.begin(), ranked.begin() + static_cast<std::ptrdiff_t>(m));
      std::sort(chosen.begin(), chosen.end());
      return tile(begin, tail, end, chosen, nullptr) <= room;
    };
    std::size_t lo = 0, hi = 1;
    while (hi <= ranked.size() && fits(hi)) {
      lo = hi;
      hi *= 2;
    }
    hi = std::min(hi, ranked.size() + 1) - 1;  // the largest m not yet known to fail
    while (lo < hi) {
      const std::size_t mid = lo + (hi - lo + 1) / 2;
      if (fits(mid)) lo = mid;
      else hi = mid - 1;
    }
    fits(lo);
    return lo;
  }

  /// The LOD1 blocks wholly inside [begin, tail): the ones a policy may show as tokens.
  static void candidates(std::int64_t begin, std::int64_t tail, std::vector<std::int64_t>& out) {
    out.clear();
    for (std::int64_t b = (begin + K - 1) / K; (b + 1) * K <= tail; ++b) out.push_back(b);
  }

  /// The frame every block policy starts from: the window start that keeps the most history
  /// at the coarsest tiling, and where the recent tokens begin.
  struct Frame {
    std::int64_t begin = 0, tail = 0, end = 0, room = 0;
  };
  /// See Frame.
  static Frame frame(const FocusLayoutInput<C>& in) {
    Frame f;
    f.end = in.num_tokens;
    f.room = in.w_max - in.sink_end;
    const std::int64_t recent_from = std::max(in.sink_end, in.num_tokens - in.recent_tokens);
    f.begin = fit_begin(in.sink_end, recent_from, f.end, f.room);
    f.tail = std::max(f.begin, recent_from);
    return f;
  }

  /// More blocks than this never fit: each shown block adds at least K - 1 nodes.
  static std::size_t most_blocks(const Frame& f) {
    return static_cast<std::size_t>(std::max<std::int64_t>(0, f.room) / (K - 1) + 1);
  }

  /// Shows the first blocks of `ranked` that fit (at most `max_blocks` when >= 0) as tokens.
  static void lay_out(const Frame& f, std::span<const std::int64_t> ranked, std::int64_t max_blocks,
                      std::vector<std::int64_t>& chosen, std::vector<Node>& window) {
    if (max_blocks >= 0 && static_cast<std::int64_t>(ranked.size()) > max_blocks)
      ranked = ranked.first(static_cast<std::size_t>(max_blocks));
    fit_blocks(f.begin, f.tail, f.end, f.room, ranked, chosen);
    tile(f.begin, f.tail, f.end, chosen, &window);
  }

 private:
  // True when a block of the sorted list lies in [first, last).
  static bool contains(std::span<const std::int64_t> blocks, std::int64_t first, std::int64_t last) {
    const auto it = std::lower_bound(blocks.begin(), blocks.end(), first);
    return it != blocks.end() && *it < last;
  }
};

}  // namespace mc
