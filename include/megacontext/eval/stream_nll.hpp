// SPDX-License-Identifier: Apache-2.0
// Long-document NLL through a Session: the first `warmup` tokens are ingested, then every later
// token is scored from the working context as it is at that moment (the logits of next_logits())
// and pushed, so refocusing happens exactly as in generation. The NLL of each window of
// `window` tokens is one sample for the interval (neighbouring tokens are far from independent;
// window means are closer to it).
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <limits>
#include <span>
#include <vector>

#include "megacontext/config.hpp"
#include "megacontext/error.hpp"
#include "megacontext/eval/stats.hpp"

namespace mc::eval {

/// What stream_nll measured.
struct StreamNll {
  std::vector<double> window_nll;  ///< mean NLL (nats/token) of each complete window
  Summary summary;                 ///< over the windows
  std::int64_t tokens = 0;         ///< tokens scored
  double seconds = 0;              ///< wall time of the scored part (model + runtime)
};

/// NLL in nats of token `target` under `logits` (log-sum-exp in double precision).
template <class Scalar>
double token_nll(std::span<const Scalar> logits, TokenId target) {
  MC_EXPECTS(target >= 0 && static_cast<std::size_t>(target) < logits.size(),
             Errc::kInvalidArgument, "[mc.eval.bad_token] target ", target, " outside [0, ",
             logits.size(), ")");
  double m = -std::numeric_limits<double>::infinity();
  for (Scalar l : logits) m = std::max(m, static_cast<double>(l));
  double z = 0;
  for (Scalar l : logits) z += std::exp(static_cast<double>(l) - m);
  return m + std::log(z) - static_cast<double>(logits[static_cast<std::size_t>(target)]);
}

/// Streams `ids` through `session` (any mc::Session): ingests ids[0, warmup), then scores and
/// pushes each later token. Throws mc::Error ([mc.eval.bad_stream]) when fewer than `window`
/// tokens would be scored.
template <class Session>
StreamNll stream_nll(Session& session, std::span<const TokenId> ids, std::int64_t warmup,
                     std::int64_t window = 256) {
  const auto n = static_cast<std::int64_t>(ids.size());
  MC_EXPECTS(warmup >= 1 && window >= 1 && n - warmup >= window, Errc::kInvalidArgument,
             "[mc.eval.bad_stream] ", n, " tokens with warmup ", warmup, " leave fewer than one ",
             "window of ", window, " to score");
  session.ingest(ids.first(static_cast<std::size_t>(warmup)));
  StreamNll r;
  const auto t0 = std::chrono::steady_clock::now();
  double acc = 0;
  std::int64_t in_window = 0;
  for (std::int64_t i = warmup; i < n; ++i) {
    const TokenId t = ids[static_cast<std::size_t>(i)];
    acc += token_nll(session.next_logits(), t);
    session.push(t);
    if (++in_window == window) {
      r.window_nll.push_back(acc / static_cast<double>(window));
      acc = 0;
      in_window = 0;
    }
    ++r.tokens;
  }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  r.summary = mean_interval(r.window_nll);
  return r;
}

}  // namespace mc::eval
