// SPDX-License-Identifier: Apache-2.0
// The on-disk format of a MegaContext tree (docs/formats.md): the fixed header of `tree.mct`
// and its two commit slots, encoded and decoded here with every field checked, so that the
// storage code never trusts a byte it has not validated. Pure functions over byte buffers:
// they are what the fuzz test drives.
#pragma once

#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <optional>
#include <string>

#include "megacontext/detail/crc32c.hpp"
#include "megacontext/error.hpp"

namespace mc::io {

static_assert(std::endian::native == std::endian::little,
              "the tree file format is little-endian and this build only supports such hosts");

/// The first 8 bytes of `tree.mct`.
inline constexpr std::array<char, 8> kTreeMagic = {'M', 'C', 'T', 'R', 'E', 'E', '\r', '\n'};
/// The format version this build writes and reads.
inline constexpr std::uint32_t kTreeFormatVersion = 1;
/// Size of `tree.mct` in bytes: header (128) + two commit slots (128 each) + reserved.
inline constexpr std::uint32_t kHeaderFileBytes = 4096;
/// Bytes of the header record and of each commit slot.
inline constexpr std::size_t kRecordBytes = 128;
/// Byte offset of commit slot `i` (0 or 1) in `tree.mct`.
constexpr std::size_t slot_offset(int i) { return kRecordBytes * static_cast<std::size_t>(1 + i); }
/// Levels a file can describe (LOD0 plus at most 15 gist levels).
inline constexpr int kMaxLevels = 16;
/// Default checksum granularity: one CRC-32C per this many bytes of level data.
inline constexpr std::uint64_t kDefaultChunkBytes = 64 * 1024;
/// Largest token count a commit may claim (2^40: far beyond any history, catches garbage, and
/// with dim <= 2^16 keeps every byte count below 2^63).
inline constexpr std::uint64_t kMaxTokens = std::uint64_t{1} << 40;
/// Largest gist dimension a file may declare.
inline constexpr std::uint64_t kMaxDim = std::uint64_t{1} << 16;

/// Element type of the gists in a file.
enum class Dtype : std::uint32_t { kNone = 0, kF32 = 1, kF64 = 2 };

/// Bytes per element of `t` (0 for kNone).
constexpr std::uint64_t dtype_bytes(Dtype t) {
  return t == Dtype::kF32 ? 4 : t == Dtype::kF64 ? 8 : 0;
}

/// The Dtype of a C++ scalar type.
template <class Scalar>
constexpr Dtype dtype_of() {
  return sizeof(Scalar) == 8 ? Dtype::kF64 : Dtype::kF32;
}

/// What a tree file is: block size, depth, gist dimension and element type.
struct TreeLayout {
  std::uint32_t k = 0;             ///< children per node
  std::uint32_t depth = 0;         ///< gist levels above LOD0
  std::uint64_t dim = 0;           ///< gist dimension; 0 = ids only, no gist payload
  Dtype dtype = Dtype::kF32;       ///< gist element type
  std::uint64_t chunk_bytes = kDefaultChunkBytes;  ///< checksum granularity in bytes

  /// Bytes of one row at `lod`: 4 for token ids, dim * element bytes for gists.
  std::uint64_t row_bytes(int lod) const { return lod == 0 ? 4 : dim * dtype_bytes(dtype); }
  /// K^lod in tokens.
  std::uint64_t span(int lod) const {
    std::uint64_t r = 1;
    for (int i = 0; i < lod; ++i) r *= k;
    return r;
  }
  /// Bytes of level `lod` in a tree of `num_tokens` tokens (complete nodes only).
  std::uint64_t level_bytes(int lod, std::uint64_t num_tokens) const {
    return (num_tokens / span(lod)) * row_bytes(lod);
  }
  friend bool operator==(const TreeLayout&, const TreeLayout&) = default;
};

/// A commit: the token count it makes durable and the CRC-32C of each level's last partial chunk.
struct CommitSlot {
  std::uint64_t seq = 0;         ///< increases by one per commit; the larger valid slot wins
  std::uint64_t num_tokens = 0;  ///< tokens committed; every level's size follows from it
  std::array<std::uint32_t, kMaxLevels> tail_crc{};  ///< CRC of bytes past the last full chunk
};

namespace detail {
template <class T>
void put(unsigned char* p, std::size_t off, T v) {
  std::memcpy(p + off, &v, sizeof(T));
}
template <class T>
T get(const unsigned char* p, std::size_t off) {
  T v;
  std::memcpy(&v, p + off, sizeof(T));
  return v;
}
// Header record offsets.
inline constexpr std::size_t kOffVersion = 8, kOffHeaderBytes = 12, kOffK = 16, kOffDepth = 20,
                             kOffDim = 24, kOffDtype = 32, kOffIdBytes = 36, kOffChunk = 40,
                             kOffCrc = 124;
// Commit slot offsets.
inline constexpr std::size_t kOffSeq = 0, kOffTokens = 8, kOffTail = 16;
}  // namespace detail

/// Writes the header record of `layout` into `out[0, 128)`.
inline void encode_header(const TreeLayout& layout, unsigned char* out) {
  using namespace detail;
  std::memset(out, 0, kRecordBytes);
  std::memcpy(out, kTreeMagic.data(), kTreeMagic.size());
  put<std::uint32_t>(out, kOffVersion, kTreeFormatVersion);
  put<std::uint32_t>(out, kOffHeaderBytes, kHeaderFileBytes);
  put<std::uint32_t>(out, kOffK, layout.k);
  put<std::uint32_t>(out, kOffDepth, layout.depth);
  put<std::uint64_t>(out, kOffDim, layout.dim);
  put<std::uint32_t>(out, kOffDtype, static_cast<std::uint32_t>(layout.dtype));
  put<std::uint32_t>(out, kOffIdBytes, 4);
  put<std::uint64_t>(out, kOffChunk, layout.chunk_bytes);
  put<std::uint32_t>(out, kOffCrc, mc::detail::crc32c(out, kOffCrc));
}

/// Parses and validates the header record `in[0, 128)`; throws FormatError naming the bad field.
inline TreeLayout decode_header(const unsigned char* in, const std::filesystem::path& path) {
  using namespace detail;
  auto fail = [&](const std::string& what) -> FormatError {
    return FormatError(what + " in " + path.string(), path);
  };
  if (std::memcmp(in, kTreeMagic.data(), kTreeMagic.size()) != 0)
    throw fail("[mc.tree.bad_magic] not a MegaContext tree file (wrong magic bytes)");
  const auto version = get<std::uint32_t>(in, kOffVersion);
  if (version != kTreeFormatVersion)
    throw fail(mc::detail::concat("[mc.tree.version] file format version ", version,
                                  ", this build reads version ", kTreeFormatVersion));
  const auto stored_crc = get<std::uint32_t>(in, kOffCrc);
  const auto crc = mc::detail::crc32c(in, kOffCrc);
  if (stored_crc != crc)
    throw fail(mc::detail::concat("[mc.tree.header_checksum] header checksum mismatch: stored 0x",
                                  std::hex, stored_crc, ", computed 0x", crc));
  TreeLayout l;
  l.k = get<std::uint32_t>(in, kOffK);
  l.depth = get<std::uint32_t>(in, kOffDepth);
  l.dim = get<std::uint64_t>(in, kOffDim);
  const auto dtype = get<std::uint32_t>(in, kOffDtype);
  l.chunk_bytes = get<std::uint64_t>(in, kOffChunk);
  const auto header_bytes = get<std::uint32_t>(in, kOffHeaderBytes);
  const auto id_bytes = get<std::uint32_t>(in, kOffIdBytes);
  // A valid checksum over nonsense is still nonsense: check every field's range too.
  if (header_bytes != kHeaderFileBytes)
    throw fail(mc::detail::concat("[mc.tree.bad_header] header_bytes = ", header_bytes,
                                  ", expected ", kHeaderFileBytes));
  if (l.k < 2 || l.k > 4096)
    throw fail(mc::detail::concat("[mc.tree.bad_header] K = ", l.k, " outside [2, 4096]"));
  if (l.depth < 1 || l.depth >= static_cast<std::uint32_t>(kMaxLevels))
    throw fail(mc::detail::concat("[mc.tree.bad_header] Depth = ", l.depth, " outside [1, 15]"));
  if (dtype > 2)
    throw fail(mc::detail::concat("[mc.tree.bad_header] unknown dtype code ", dtype));
  l.dtype = static_cast<Dtype>(dtype);
  if (l.dim > kMaxDim)
    throw fail(mc::detail::concat("[mc.tree.bad_header] dim = ", l.dim, " exceeds 2^16"));
  if ((l.dim == 0) != (l.dtype == Dtype::kNone))
    throw fail(mc::detail::concat("[mc.tree.bad_header] dim = ", l.dim, " with dtype code ",
                                  dtype, " (ids-only trees have dim 0 and dtype none)"));
  if (id_bytes != 4)
    throw fail(mc::detail::concat("[mc.tree.bad_header] token id bytes = ", id_bytes,
                                  ", expected 4"));
  if (l.chunk_bytes < 64 || l.chunk_bytes > (std::uint64_t{1} << 30) ||
      (l.chunk_bytes & (l.chunk_bytes - 1)) != 0)
    throw fail(mc::detail::concat("[mc.tree.bad_header] chunk_bytes = ", l.chunk_bytes,
                                  " is not a power of two in [64, 2^30]"));
  return l;
}

/// Writes commit slot `s` into `out[0, 128)`; its last 4 bytes are a CRC of the first 124.
inline void encode_slot(const CommitSlot& s, unsigned char* out) {
  using namespace detail;
  std::memset(out, 0, kRecordBytes);
  put<std::uint64_t>(out, kOffSeq, s.seq);
  put<std::uint64_t>(out, kOffTokens, s.num_tokens);
  for (int l = 0; l < kMaxLevels; ++l)
    put<std::uint32_t>(out, kOffTail + 4 * static_cast<std::size_t>(l), s.tail_crc[l]);
  put<std::uint32_t>(out, kOffCrc, mc::detail::crc32c(out, kOffCrc));
}

/// Parses a commit slot; nullopt when its CRC fails (a torn or never-written slot).
inline std::optional<CommitSlot> decode_slot(const unsigned char* in) {
  using namespace detail;
  if (get<std::uint32_t>(in, kOffCrc) != mc::detail::crc32c(in, kOffCrc)) return std::nullopt;
  CommitSlot s;
  s.seq = get<std::uint64_t>(in, kOffSeq);
  s.num_tokens = get<std::uint64_t>(in, kOffTokens);
  for (int l = 0; l < kMaxLevels; ++l)
    s.tail_crc[l] = get<std::uint32_t>(in, kOffTail + 4 * static_cast<std::size_t>(l));
  if (s.seq == 0) return std::nullopt;  // seq 0 marks a slot that was never written
  return s;
}

/// The valid slot with the larger sequence number among the two in `header_file[0, 384)`, and
/// whether the other slot was unusable (a torn commit). Throws FormatError when neither is valid.
struct SlotChoice {
  CommitSlot slot;         ///< the commit in force
  int index = 0;           ///< which slot (0 or 1) holds it
  bool other_valid = true;  ///< false when the other slot failed its checksum
};

/// Picks the commit in force from the bytes of `tree.mct`; see SlotChoice.
inline SlotChoice choose_slot(const unsigned char* header_file, const std::filesystem::path& path) {
  const auto a = decode_slot(header_file + slot_offset(0));
  const auto b = decode_slot(header_file + slot_offset(1));
  if (!a && !b)
    throw FormatError("[mc.tree.no_commit] both commit slots fail their checksum in " +
                          path.string(),
                      path);
  SlotChoice c;
  if (a && (!b || a->seq > b->seq)) {
    c = {*a, 0, b.has_value()};
  } else {
    c = {*b, 1, a.has_value()};
  }
  if (c.slot.num_tokens > kMaxTokens)
    throw FormatError(mc::detail::concat("[mc.tree.bad_commit] commit ", c.slot.seq, " claims ",
                                         c.slot.num_tokens, " tokens (limit 2^40) in ",
                                         path.string()),
                      path);
  return c;
}

}  // namespace mc::io
