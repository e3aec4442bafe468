// SPDX-License-Identifier: Apache-2.0
// CRC-32C (Castagnoli), the checksum of the tree file format. It uses the SSE4.2 crc32
// instruction when the processor has it (checked once at run time, so the library still builds
// for any x86-64 and runs on processors without it) and a slice-by-8 table otherwise.
// crc32c_extend(crc32c(a), b) == crc32c(a + b), which lets a commit checksum only new bytes.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(__CUDACC__)
#include <nmmintrin.h>
#define MC_CRC32C_HAVE_X86 1
#else
#define MC_CRC32C_HAVE_X86 0
#endif

namespace mc::detail {

/// Slice-by-8 lookup tables for the reflected Castagnoli polynomial 0x82F63B78.
inline const std::array<std::array<std::uint32_t, 256>, 8>& crc32c_tables() {
  static const auto tables = [] {
    std::array<std::array<std::uint32_t, 256>, 8> t{};
    for (std::uint32_t i = 0; i < 256; ++i) {
      std::uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1u)));
      t[0][i] = c;
    }
    for (std::uint32_t i = 0; i < 256; ++i)
      for (int s = 1; s < 8; ++s) t[s][i] = (t[s - 1][i] >> 8) ^ t[0][t[s - 1][i] & 0xFFu];
    return t;
  }();
  return tables;
}

/// Portable CRC-32C update on the raw (pre-/post-inverted) register `c`.
inline std::uint32_t crc32c_raw_portable(std::uint32_t c, const unsigned char* p, std::size_t n) {
  const auto& t = crc32c_tables();
  while (n >= 8) {
    std::uint64_t w;
    std::memcpy(&w, p, 8);
    w ^= c;  // little-endian: the low 4 bytes meet the register
    c = t[7][w & 0xFF] ^ t[6][(w >> 8) & 0xFF] ^ t[5][(w >> 16) & 0xFF] ^
        t[4][(w >> 24) & 0xFF] ^ t[3][(w >> 32) & 0xFF] ^ t[2][(w >> 40) & 0xFF] ^
        t[1][(w >> 48) & 0xFF] ^ t[0][w >> 56];
    p += 8;
    n -= 8;
  }
  while (n--) c = (c >> 8) ^ t[0][(c ^ *p++) & 0xFFu];
  return c;
}

#if MC_CRC32C_HAVE_X86
/// SSE4.2 CRC-32C update, 8 bytes per instruction (about 8 GB/s; far above what appends need).
__attribute__((target("sse4.2"))) inline std::uint32_t crc32c_raw_sse42(std::uint32_t c,
                                                                        const unsigned char* p,
                                                                        std::size_t n) {
  std::uint64_t c0 = c;
  while (n >= 8) {
    std::uint64_t w;
    std::memcpy(&w, p, 8);
    c0 = _mm_crc32_u64(c0, w);
    p += 8;
    n -= 8;
  }
  auto c32 = static_cast<std::uint32_t>(c0);
  while (n--) c32 = _mm_crc32_u8(c32, *p++);
  return c32;
}

inline bool cpu_has_sse42() {
  static const bool has = __builtin_cpu_supports("sse4.2");
  return has;
}
#endif

/// Extends the CRC-32C `crc` of some bytes with `n` more bytes at `data`.
inline std::uint32_t crc32c_extend(std::uint32_t crc, const void* data, std::size_t n) {
  const auto* p = static_cast<const unsigned char*>(data);
  std::uint32_t c = ~crc;
#if MC_CRC32C_HAVE_X86
  if (cpu_has_sse42()) return ~crc32c_raw_sse42(c, p, n);
#endif
  return ~crc32c_raw_portable(c, p, n);
}

/// CRC-32C of `n` bytes at `data` (crc32c("123456789") == 0xE3069283).
inline std::uint32_t crc32c(const void* data, std::size_t n) { return crc32c_extend(0, data, n); }

}  // namespace mc::detail
