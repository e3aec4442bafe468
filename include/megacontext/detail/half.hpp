// SPDX-License-Identifier: Apache-2.0
// 16-bit float conversions for weight files (io/safetensors.hpp): IEEE binary16 ("F16") and
// bfloat16 ("BF16") to and from float. Float -> 16 bit rounds to nearest, ties to even, in
// integer arithmetic only (no dependence on the FP environment or -ffast-math); overflow gives
// Inf, NaN stays NaN (quiet, sign and top payload bits kept), Inf stays Inf.
#pragma once

#include <bit>
#include <cstdint>

namespace mc::detail {

/// The float whose bits are the bfloat16 pattern `h` (exact: bf16 is the top half of a float).
constexpr float bf16_to_float(std::uint16_t h) noexcept {
  return std::bit_cast<float>(static_cast<std::uint32_t>(h) << 16);
}

/// `f` rounded to bfloat16, nearest-even; NaN becomes a quiet NaN of the same sign.
constexpr std::uint16_t float_to_bf16(float f) noexcept {
  const std::uint32_t x = std::bit_cast<std::uint32_t>(f);
  if ((x & 0x7FFFFFFFu) > 0x7F800000u)  // NaN: rounding could carry it into Inf, so keep it quiet
    return static_cast<std::uint16_t>((x >> 16) | 0x0040u);
  // Adding 0x7FFF plus the lowest kept bit rounds ties to even; a carry into the exponent is the
  // correct result (the next binade, or Inf past the largest finite bf16).
  const std::uint32_t lsb = (x >> 16) & 1u;
  return static_cast<std::uint16_t>((x + 0x7FFFu + lsb) >> 16);
}

/// The float equal to the IEEE binary16 pattern `h` (exact, subnormals included).
constexpr float f16_to_float(std::uint16_t h) noexcept {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  std::uint32_t exp = (h >> 10) & 0x1Fu;
  std::uint32_t mant = h & 0x3FFu;
  if (exp == 0x1F) return std::bit_cast<float>(sign | 0x7F800000u | (mant << 13));  // Inf, NaN
  if (exp == 0) {
    if (mant == 0) return std::bit_cast<float>(sign);  // +-0
    // Subnormal m * 2^-24: normalise so the leading one becomes the implicit bit.
    exp = 127 - 14;
    while ((mant & 0x400u) == 0) {
      mant <<= 1;
      --exp;
    }
    return std::bit_cast<float>(sign | (exp << 23) | ((mant & 0x3FFu) << 13));
  }
  return std::bit_cast<float>(sign | ((exp + 127 - 15) << 23) | (mant << 13));
}

/// `f` rounded to IEEE binary16, nearest-even; |f| >= 65520 gives Inf, NaN stays NaN (quiet).
constexpr std::uint16_t float_to_f16(float f) noexcept {
  const std::uint32_t bits = std::bit_cast<std::uint32_t>(f);
  const auto sign = static_cast<std::uint16_t>((bits >> 16) & 0x8000u);
  const std::uint32_t x = bits & 0x7FFFFFFFu;
  if (x > 0x7F800000u)  // NaN: quiet bit set, top 9 payload bits kept
    return static_cast<std::uint16_t>(sign | 0x7E00u | ((x >> 13) & 0x3FFu));
  if (x >= 0x47800000u) return static_cast<std::uint16_t>(sign | 0x7C00u);  // >= 2^16 or Inf
  if (x < 0x38800000u) {
    // Below 2^-14: a subnormal half (or zero). Its unit is 2^-24; x's value is m * 2^(e-150),
    // so the result is m >> (126 - e) rounded to nearest-even. At most 2^-25 (a tie) gives 0.
    if (x <= 0x33000000u) return sign;
    const std::uint32_t e = x >> 23;
    const std::uint32_t m = (x & 0x7FFFFFu) | 0x800000u;
    const std::uint32_t shift = 126 - e;  // in [14, 24] here
    std::uint32_t r = m >> shift;
    const std::uint32_t rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (r & 1u))) ++r;  // may carry into the smallest normal: fine
    return static_cast<std::uint16_t>(sign | r);
  }
  // Normal range: rebias the exponent, then round the 13 dropped mantissa bits to nearest-even.
  // A carry out of the mantissa bumps the exponent, up to 0x7C00 (Inf) for [65520, 65536).
  const std::uint32_t lsb = (x >> 13) & 1u;
  const std::uint32_t y = x - ((127u - 15u) << 23) + 0xFFFu + lsb;
  return static_cast<std::uint16_t>(sign | (y >> 13));
}

}  // namespace mc::detail
