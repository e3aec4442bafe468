// SPDX-License-Identifier: Apache-2.0
// Session telemetry: one record per runtime event (an ingest chunk, a refocus, a decoded row
// batch), with the latency of each stage and what the focus allocator did, written as one JSON
// object per line so that logs can be streamed, grepped and loaded by any tool. The Session
// fills the records; this header only defines them and their JSON form.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <ostream>
#include <string>
#include <string_view>

#include "megacontext/focus_allocator.hpp"
#include "megacontext/io/json.hpp"

namespace mc {

/// Microseconds spent per runtime stage in one event (0 when the stage did not run).
struct StageLatency {
  double append_us = 0;    ///< Tree::append: token ids plus every gist the append completed
  double admit_us = 0;     ///< FocusAllocator::admit: new entries in, budget restored
  double assemble_us = 0;  ///< assemble / assemble_patch of the model input
  double score_us = 0;     ///< the FocusScorer (LensNet) over the working context
  double allocate_us = 0;  ///< FocusAllocator::step
  double forward_us = 0;   ///< the base model (prefill of changed rows or decode steps)
};

/// One telemetry event.
struct TelemetryRecord {
  std::string_view event;          ///< "ingest", "refocus" or "decode"
  std::int64_t tokens = 0;         ///< history tokens after the event
  std::int64_t entries_before = 0; ///< working-context entries before the event
  std::int64_t model_rows = 0;     ///< rows the base model ran over ("decode": rows fed)
  StageLatency latency;            ///< per-stage time
  FocusReport focus;               ///< the allocator's report (admit for "ingest", step for
                                   ///< "refocus"; zero edits for "decode")
};

namespace detail {

inline void json_field(std::string& out, std::string_view key, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.6g", v);
  out += ",\"";
  out += key;
  out += "\":";
  out += buf;
}

inline void json_field(std::string& out, std::string_view key, std::int64_t v) {
  out += ",\"";
  out += key;
  out += "\":";
  out += std::to_string(v);
}

}  // namespace detail

/// The record as one line of JSON (no trailing newline). Keys: event, step, tokens,
/// entries_before, entries, w_max, budget_use, expansions, collapses, forced_collapses,
/// evictions, restores, fresh_entries, swap_rate, residency_mean, residency_p95, model_rows,
/// and us_{append,admit,assemble,score,allocate,forward}.
inline std::string to_json_line(const TelemetryRecord& r) {
  std::string out = "{\"event\":";
  io::append_json_string(out, r.event);
  const FocusReport& f = r.focus;
  detail::json_field(out, "step", std::int64_t{f.step});
  detail::json_field(out, "tokens", r.tokens);
  detail::json_field(out, "entries_before", r.entries_before);
  detail::json_field(out, "entries", f.size);
  detail::json_field(out, "w_max", f.w_max);
  detail::json_field(out, "budget_use", f.budget_use);
  detail::json_field(out, "expansions", std::int64_t{f.expansions});
  detail::json_field(out, "collapses", std::int64_t{f.collapses});
  detail::json_field(out, "forced_collapses", std::int64_t{f.forced_collapses});
  detail::json_field(out, "evictions", std::int64_t{f.evictions});
  detail::json_field(out, "restores", std::int64_t{f.restores});
  detail::json_field(out, "fresh_entries", f.fresh_entries);
  detail::json_field(out, "swap_rate", f.swap_rate);
  detail::json_field(out, "residency_mean", f.residency_mean);
  detail::json_field(out, "residency_p95", f.residency_p95);
  detail::json_field(out, "model_rows", r.model_rows);
  const StageLatency& l = r.latency;
  detail::json_field(out, "us_append", l.append_us);
  detail::json_field(out, "us_admit", l.admit_us);
  detail::json_field(out, "us_assemble", l.assemble_us);
  detail::json_field(out, "us_score", l.score_us);
  detail::json_field(out, "us_allocate", l.allocate_us);
  detail::json_field(out, "us_forward", l.forward_us);
  out += '}';
  return out;
}

/// Totals over a session's events (what the demo prints at the end).
struct TelemetryTotals {
  std::int64_t events = 0;            ///< records seen
  std::int64_t refocuses = 0;         ///< "refocus" records
  std::int64_t expansions = 0;        ///< score-driven expansions
  std::int64_t collapses = 0;         ///< score-driven collapses
  std::int64_t forced_collapses = 0;  ///< collapses made to keep the budget
  std::int64_t evictions = 0;         ///< entries that left the window
  std::int64_t restores = 0;          ///< evicted history brought back
  std::int64_t fresh_entries = 0;     ///< rows re-assembled
  std::int64_t max_entries = 0;       ///< largest working context seen after an event
  StageLatency latency;               ///< summed per stage

  /// Adds one record.
  void add(const TelemetryRecord& r) {
    ++events;
    if (r.event == "refocus") ++refocuses;
    expansions += r.focus.expansions;
    collapses += r.focus.collapses;
    forced_collapses += r.focus.forced_collapses;
    evictions += r.focus.evictions;
    restores += r.focus.restores;
    fresh_entries += r.focus.fresh_entries;
    max_entries = std::max(max_entries, r.focus.size);
    latency.append_us += r.latency.append_us;
    latency.admit_us += r.latency.admit_us;
    latency.assemble_us += r.latency.assemble_us;
    latency.score_us += r.latency.score_us;
    latency.allocate_us += r.latency.allocate_us;
    latency.forward_us += r.latency.forward_us;
  }
};

/// Wall-clock microseconds since construction (steady clock).
class StageClock {
 public:
  StageClock() : t0_(std::chrono::steady_clock::now()) {}
  /// Microseconds since construction or the previous lap(), and restarts.
  double lap() {
    const auto t = std::chrono::steady_clock::now();
    const double us = std::chrono::duration<double, std::micro>(t - t0_).count();
    t0_ = t;
    return us;
  }

 private:
  std::chrono::steady_clock::time_point t0_;
};

}  // namespace mc
