// SPDX-License-Identifier: Apache-2.0
// A one-line progress bar for the command-line tools (stderr, redrawn in place), shared so that
// every tool reports progress the same way.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

namespace mc::tools {

/// Draws "[=====     ] done/total <label> <extra>" on stderr; finish() ends the line.
class ProgressBar {
 public:
  ProgressBar(std::int64_t total, std::string label)
      : total_(std::max<std::int64_t>(1, total)), label_(std::move(label)),
        t0_(std::chrono::steady_clock::now()) {}

  /// Redraws with `done` units finished and `extra` text after the counts.
  void update(std::int64_t done, const std::string& extra = "") const {
    constexpr int kWidth = 30;
    const int fill = static_cast<int>(kWidth * std::clamp<std::int64_t>(done, 0, total_) / total_);
    const double s = seconds();
    std::fprintf(stderr, "\r[%s%s] %lld/%lld %s %.1f s %s   ",
                 std::string(static_cast<std::size_t>(fill), '=').c_str(),
                 std::string(static_cast<std::size_t>(kWidth - fill), ' ').c_str(),
                 static_cast<long long>(done), static_cast<long long>(total_), label_.c_str(), s,
                 extra.c_str());
    std::fflush(stderr);
  }

  /// Ends the bar's line.
  void finish() const { std::fprintf(stderr, "\n"); }

  /// Seconds since construction.
  double seconds() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
  }

 private:
  std::int64_t total_;
  std::string label_;
  std::chrono::steady_clock::time_point t0_;
};

}  // namespace mc::tools
