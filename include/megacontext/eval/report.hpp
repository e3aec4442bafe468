// SPDX-License-Identifier: Apache-2.0
// Evaluation tables: one row per (task, policy, budget, history length) with the metric's mean,
// its 95% interval and the number of trials, plus time per step and peak memory; written as
// Markdown (for docs/RESULTS.md) and as JSON (for tools), from the same rows.
#pragma once

#include <cstdint>
#include <cstdio>
#include <map>
#include <span>
#include <string>

#include "megacontext/eval/stats.hpp"
#include "megacontext/io/json.hpp"

namespace mc::eval {

/// One line of a comparison table.
struct ResultRow {
  std::string task;           ///< e.g. "passkey", "bible_nll"
  std::string policy;         ///< e.g. "megacontext", "truncation"
  std::int64_t budget = 0;    ///< W_max
  std::int64_t length = 0;    ///< history tokens (0 when not applicable)
  std::string metric;         ///< e.g. "accuracy", "nll"
  Summary value;              ///< mean, 95% interval, trials
  double us_per_step = 0;     ///< mean wall time per scored token (microseconds)
  double peak_mib = 0;        ///< peak memory during the row (MiB; 0 when not measured)
};

namespace detail {
inline std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}
}  // namespace detail

/// The rows as a Markdown table under `title` (a "### " heading when non-empty).
inline std::string to_markdown(std::span<const ResultRow> rows, const std::string& title = "") {
  std::string o;
  if (!title.empty()) o += "### " + title + "\n\n";
  o += "| task | policy | W_max | history | metric | mean | 95% interval | n | µs/step | peak MiB |\n";
  o += "| --- | --- | ---: | ---: | --- | ---: | --- | ---: | ---: | ---: |\n";
  for (const ResultRow& r : rows) {
    o += "| " + r.task + " | " + r.policy + " | " + std::to_string(r.budget) + " | " +
         (r.length > 0 ? std::to_string(r.length) : std::string("—")) + " | " + r.metric +
         " | " + detail::fmt("%.4f", r.value.mean) + " | [" + detail::fmt("%.4f", r.value.low) +
         ", " + detail::fmt("%.4f", r.value.high) + "] | " + std::to_string(r.value.n) + " | " +
         detail::fmt("%.1f", r.us_per_step) + " | " + detail::fmt("%.1f", r.peak_mib) + " |\n";
  }
  return o;
}

/// The rows as a JSON document {"meta": {...}, "rows": [...]}; `meta` holds strings such as
/// the command line, the machine and the commit.
inline std::string to_json(std::span<const ResultRow> rows,
                           const std::map<std::string, std::string>& meta = {}) {
  std::string o = "{\"meta\":{";
  bool first = true;
  for (const auto& [k, v] : meta) {
    if (!first) o += ',';
    first = false;
    io::append_json_string(o, k);
    o += ':';
    io::append_json_string(o, v);
  }
  o += "},\"rows\":[";
  for (std::size_t i = 0; i < rows.size(); ++i) {
    const ResultRow& r = rows[i];
    if (i) o += ',';
    o += "{\"task\":";
    io::append_json_string(o, r.task);
    o += ",\"policy\":";
    io::append_json_string(o, r.policy);
    o += ",\"budget\":" + std::to_string(r.budget) + ",\"length\":" + std::to_string(r.length);
    o += ",\"metric\":";
    io::append_json_string(o, r.metric);
    o += ",\"mean\":" + detail::fmt("%.9g", r.value.mean) + ",\"low\":" +
         detail::fmt("%.9g", r.value.low) + ",\"high\":" + detail::fmt("%.9g", r.value.high) +
         ",\"n\":" + std::to_string(r.value.n) + ",\"us_per_step\":" +
         detail::fmt("%.6g", r.us_per_step) + ",\"peak_mib\":" + detail::fmt("%.6g", r.peak_mib) +
         "}";
  }
  o += "]}\n";
  return o;
}

}  // namespace mc::eval
