// SPDX-License-Identifier: Apache-2.0
// The window-only baselines as layout policies: Truncation (the newest W_max tokens, nothing
// else) and SinksWindow (StreamingLLM: the first S tokens, the context's sinks, plus the newest
// W_max - S). No gists, no scores: what a frozen model sees without MegaContext. See
// docs/concepts/baselines.md.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "megacontext/config.hpp"
#include "megacontext/error.hpp"
#include "megacontext/focus_policy.hpp"

namespace mc {

namespace detail {
// The newest tokens that fit after the sinks, as LOD0 nodes.
template <ConfigType C>
void newest_tokens(const FocusLayoutInput<C>& in, std::vector<Node>& window) {
  const std::int64_t begin = std::max(in.sink_end, in.num_tokens - (in.w_max - in.sink_end));
  for (std::int64_t t = begin; t < in.num_tokens; ++t) window.push_back({0, t});
}
}  // namespace detail

/// StreamingLLM: the context's sinks (WorkingContextOptions::sink_tokens = S) and the newest
/// W_max - S tokens, all LOD0.
struct SinksWindow {
  /// See FocusLayoutPolicy.
  template <ConfigType C>
  void layout(const FocusLayoutInput<C>& in, std::vector<Node>& window) const {
    detail::newest_tokens(in, window);
  }
};

/// Truncation: the newest W_max tokens only. Needs a context made with sink_tokens = 0.
struct Truncation {
  /// See FocusLayoutPolicy.
  template <ConfigType C>
  void layout(const FocusLayoutInput<C>& in, std::vector<Node>& window) const {
    MC_EXPECTS(in.wc->options().sink_tokens == 0, Errc::kInvalidArgument,
               "[mc.focus.truncation_with_sinks] Truncation keeps no sinks, but the context has "
               "sink_tokens = ", in.wc->options().sink_tokens, " (use SinksWindow, or 0)");
    detail::newest_tokens(in, window);
  }
};

}  // namespace mc
