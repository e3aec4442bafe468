// SPDX-License-Identifier: Apache-2.0
// Run-time → compile-time dispatch (FlashInfer's DISPATCH_HEAD_DIM as one C++20 helper): a
// kernel is instantiated for a short list of values, and a run-time value outside the list fails
// with an mc::Error that names it. Each axis's values live in one ValueList below, which the
// facades, the tests that walk every value and any instantiation files all read.
#pragma once

#include <array>
#include <cstddef>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>

#include "megacontext/error.hpp"

namespace mc {

/// The compile-time values one dispatch axis is instantiated for.
template <int... Vs>
struct ValueList {
  static_assert(sizeof...(Vs) > 0, "mc::ValueList: a dispatch axis needs at least one value");

  /// The values, in order.
  static constexpr std::array<int, sizeof...(Vs)> values{Vs...};
  /// Number of values.
  static constexpr std::size_t size = sizeof...(Vs);

  /// True when `v` is compiled in.
  static constexpr bool contains(int v) { return ((v == Vs) || ...); }

  /// The values as text, e.g. "{64, 128, 256}".
  static std::string text() {
    std::ostringstream os;
    os << '{';
    std::size_t i = 0;
    ((os << (i++ ? ", " : "") << Vs), ...);
    os << '}';
    return os.str();
  }
};

/// Head dims (d_head) the per-head kernels are compiled for (device_rope.cuh).
using HeadDims = ValueList<64, 128, 256>;
/// The head-dim list as a value, for mc::dispatch(kHeadDims, "d_head", d_head, f).
inline constexpr HeadDims kHeadDims{};

/// Block sizes K that mean pooling unrolls fully (device_gist_pool.cuh); other K still work
/// through the generic kernel, so this list is a speed choice, not a restriction.
using PoolBlockSizes = ValueList<16, 32, 64>;
/// The pooled-K list as a value.
inline constexpr PoolBlockSizes kPoolBlockSizes{};

namespace detail {

/// Throws "[mc.dispatch.not_compiled] `name = value` is not compiled in; supported: {…}".
[[noreturn]] inline void throw_not_compiled(std::string_view name, int value,
                                            const std::string& supported) {
  throw Error(Errc::kInvalidArgument, concat("[mc.dispatch.not_compiled] `", name, " = ", value,
                                             "` is not compiled in; supported: ", supported,
                                             " (cuda/megacontext/dispatch.cuh)"));
}

template <class List, int V, int... Rest, class F>
decltype(auto) dispatch_step(std::string_view name, int value, F& f) {
  if (value == V) return f.template operator()<V>();
  if constexpr (sizeof...(Rest) > 0) {
    return dispatch_step<List, Rest...>(name, value, f);
  } else {
    throw_not_compiled(name, value, List::text());
  }
}

}  // namespace detail

/// Calls `f.template operator()<V>()` for the V in Vs equal to `value` and returns its result;
/// throws mc::Error (kInvalidArgument) naming `name`, `value` and the supported set otherwise.
/// Use: `mc::dispatch<64, 128, 256>("d_head", d_head, [&]<int D>() { launch<D>(…); });`
template <int... Vs, class F>
decltype(auto) dispatch(std::string_view name, int value, F&& f) {
  return detail::dispatch_step<ValueList<Vs...>, Vs...>(name, value, f);
}

/// As above for a value without a name (the message says "value = …").
template <int... Vs, class F>
decltype(auto) dispatch(int value, F&& f) {
  return detail::dispatch_step<ValueList<Vs...>, Vs...>("value", value, f);
}

/// As above over a ValueList: `mc::dispatch(mc::kHeadDims, "d_head", d_head, f)`.
template <int... Vs, class F>
decltype(auto) dispatch(ValueList<Vs...>, std::string_view name, int value, F&& f) {
  return detail::dispatch_step<ValueList<Vs...>, Vs...>(name, value, f);
}

/// Calls `f.template operator()<V>()` once for every V of the list, in order (tests walk axes).
template <int... Vs, class F>
void for_each_value(ValueList<Vs...>, F&& f) {
  (f.template operator()<Vs>(), ...);
}

}  // namespace mc
