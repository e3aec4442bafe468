// SPDX-License-Identifier: Apache-2.0
// Host-side argument checks shared by the decoder facades (device_rmsnorm.cuh, device_swiglu.cuh,
// device_cross_entropy.cuh, ...): whether two device byte ranges overlap.
#pragma once

#include <cstddef>
#include <cstdint>

namespace mc::cuda::detail {

/// True when [a, a + a_bytes) and [b, b + b_bytes) share a byte (empty ranges share none).
inline bool overlaps(const void* a, std::size_t a_bytes, const void* b, std::size_t b_bytes) {
  if (a_bytes == 0 || b_bytes == 0) return false;
  const auto a0 = reinterpret_cast<std::uintptr_t>(a);
  const auto b0 = reinterpret_cast<std::uintptr_t>(b);
  return a0 < b0 + b_bytes && b0 < a0 + a_bytes;
}

}  // namespace mc::cuda::detail
