// SPDX-License-Identifier: Apache-2.0
// Focus map: where the working context spent its detail, over time. Each snapshot divides the
// history into equal bins and records, per bin, the finest level of detail present (0 = some
// tokens shown as tokens; Depth = only the coarsest gists; -1 = evicted, not in the window). The
// SVG draws one row per snapshot (time downwards) and one column per bin (history left to
// right), so a reader sees focus follow the cursor and jump back to what was asked about.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <span>
#include <sstream>
#include <string>
#include <vector>

#include "megacontext/config.hpp"
#include "megacontext/error.hpp"
#include "megacontext/lod.hpp"
#include "megacontext/working_context.hpp"

namespace mc {

/// One snapshot of a working context over a fixed number of history bins.
struct FocusSnapshot {
  std::int64_t step = 0;           ///< caller's label (e.g. the allocator step)
  std::int64_t tokens = 0;         ///< history length at the snapshot
  std::vector<std::int8_t> level;  ///< per bin: finest lod present, -1 if nothing (evicted)
};

/// Snapshots of a working context, and their SVG rendering.
template <ConfigType C>
class FocusMap {
 public:
  /// A map of `bins` columns over the history; throws for bins < 1.
  explicit FocusMap(std::int64_t bins = 256) : bins_(bins) {
    MC_EXPECTS(bins >= 1 && bins <= (1 << 16), Errc::kInvalidArgument,
               "[mc.focus_map.bad_bins] bins = ", bins, "; must be in [1, 65536]");
  }

  /// Records `wc` (covering wc.num_tokens() tokens) as the next row.
  void record(const WorkingContext<C>& wc, std::int64_t step) {
    FocusSnapshot s;
    s.step = step;
    s.tokens = wc.num_tokens();
    s.level.assign(static_cast<std::size_t>(bins_), -1);
    if (s.tokens > 0) {
      for (const WcEntry& e : wc.entries()) {
        const TokenSpan sp = Lod<C>::tokens(e.node());
        // Bin b covers the real interval [b·N/bins, (b+1)·N/bins); bins [b0, b1] overlap the
        // entry's span [begin, end).
        const std::int64_t b0 = sp.begin * bins_ / s.tokens;
        const std::int64_t b1 = std::min(bins_ - 1, (sp.end * bins_ + s.tokens - 1) / s.tokens - 1);
        for (std::int64_t b = b0; b <= b1; ++b) {
          auto& l = s.level[static_cast<std::size_t>(b)];
          l = l < 0 ? static_cast<std::int8_t>(e.lod) : std::min(l, static_cast<std::int8_t>(e.lod));
        }
      }
    }
    rows_.push_back(std::move(s));
  }

  /// The snapshots so far.
  std::span<const FocusSnapshot> rows() const { return rows_; }
  /// Bins per snapshot.
  std::int64_t bins() const { return bins_; }

  /// The map as an SVG document: one `cell_w` x `cell_h` rectangle per bin and snapshot, dark
  /// for fine detail, light for coarse, grey-striped for evicted; a legend below.
  std::string svg(int cell_w = 3, int cell_h = 3, const std::string& title = "focus map") const {
    MC_EXPECTS(cell_w >= 1 && cell_h >= 1, Errc::kInvalidArgument,
               "[mc.focus_map.bad_cell] cell size ", cell_w, " x ", cell_h, "; both must be >= 1");
    const std::int64_t w = bins_ * cell_w, h = static_cast<std::int64_t>(rows_.size()) * cell_h;
    const std::int64_t margin = 40, legend = 40;
    std::ostringstream o;
    o << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << w + 2 * margin << "\" height=\""
      << h + 2 * margin + legend << "\" font-family=\"sans-serif\" font-size=\"12\">\n";
    o << "<text x=\"" << margin << "\" y=\"24\">" << escape(title) << " (history left to right, "
      << "time downwards; " << rows_.size() << " snapshots)</text>\n";
    o << "<g transform=\"translate(" << margin << "," << margin << ")\" shape-rendering=\"crispEdges\">\n";
    for (std::size_t r = 0; r < rows_.size(); ++r) {
      // Runs of one colour become one rectangle (smaller files for wide maps).
      const auto& lv = rows_[r].level;
      for (std::int64_t b = 0; b < bins_;) {
        std::int64_t e = b + 1;
        while (e < bins_ && lv[static_cast<std::size_t>(e)] == lv[static_cast<std::size_t>(b)]) ++e;
        o << "<rect x=\"" << b * cell_w << "\" y=\"" << static_cast<std::int64_t>(r) * cell_h
          << "\" width=\"" << (e - b) * cell_w << "\" height=\"" << cell_h << "\" fill=\""
          << colour(lv[static_cast<std::size_t>(b)]) << "\"/>\n";
        b = e;
      }
    }
    o << "</g>\n";
    const std::int64_t ly = margin + h + 16;
    for (int l = -1; l <= C::Depth; ++l) {
      const std::int64_t lx = margin + (l + 1) * 110;
      o << "<rect x=\"" << lx << "\" y=\"" << ly << "\" width=\"14\" height=\"14\" fill=\""
        << colour(static_cast<std::int8_t>(l)) << "\" stroke=\"#000\"/>";
      o << "<text x=\"" << lx + 20 << "\" y=\"" << ly + 12 << "\">"
        << (l < 0 ? std::string("evicted") : "LOD" + std::to_string(l)) << "</text>\n";
    }
    o << "</svg>\n";
    return o.str();
  }

  /// Writes svg(...) to `path`; throws IoError when it cannot.
  void write_svg(const std::filesystem::path& path, const std::string& title = "focus map") const {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    if (!f) throw IoError("[mc.focus_map.write_failed] cannot write " + path.string(), path);
    f << svg(3, 3, title);
    if (!f) throw IoError("[mc.focus_map.write_failed] cannot write " + path.string(), path);
  }

 private:
  static std::string colour(std::int8_t lod) {
    if (lod < 0) return "#d9d9d9";
    // Dark blue (tokens) to pale yellow (coarsest), evenly over 0..Depth.
    static constexpr int kFine[3] = {8, 48, 107}, kCoarse[3] = {255, 247, 188};
    const double f = C::Depth > 0 ? static_cast<double>(lod) / C::Depth : 0.0;
    char buf[8];
    int c[3];
    for (int i = 0; i < 3; ++i) c[i] = static_cast<int>(kFine[i] + f * (kCoarse[i] - kFine[i]) + 0.5);
    std::snprintf(buf, sizeof buf, "#%02x%02x%02x", c[0], c[1], c[2]);
    return buf;
  }

  static std::string escape(const std::string& s) {
    std::string out;
    for (char ch : s) {
      if (ch == '<') out += "&lt;";
      else if (ch == '>') out += "&gt;";
      else if (ch == '&') out += "&amp;";
      else if (ch == '"') out += "&quot;";
      else out += ch;
    }
    return out;
  }

  std::int64_t bins_;
  std::vector<FocusSnapshot> rows_;
};

}  // namespace mc
