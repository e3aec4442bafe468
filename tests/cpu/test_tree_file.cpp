// SPDX-License-Identifier: Apache-2.0
// The tree file format's pure parts: CRC-32C, header and commit-slot encoding, slot choice.
#include <doctest/doctest.h>

#include <megacontext/io/tree_file.hpp>

#include <random>
#include <string>
#include <vector>

#include "common/random.hpp"

TEST_CASE("crc32c: matches the published check value and the bitwise definition") {
  const std::string check = "123456789";
  CHECK(mc::detail::crc32c(check.data(), check.size()) == 0xE3069283u);
  CHECK(mc::detail::crc32c(nullptr, 0) == 0u);
  // RFC 3720 B.4: 32 bytes of zeros -> 0x8A9136AA, of 0xFF -> 0x62A8AB43.
  std::vector<unsigned char> zeros(32, 0), ones(32, 0xFF);
  CHECK(mc::detail::crc32c(zeros.data(), 32) == 0x8A9136AAu);
  CHECK(mc::detail::crc32c(ones.data(), 32) == 0x62A8AB43u);

  // Bit-at-a-time definition, independent of the tables and of the SSE4.2 path.
  auto bitwise = [](const unsigned char* p, std::size_t n) {
    std::uint32_t c = 0xFFFFFFFFu;
    for (std::size_t i = 0; i < n; ++i) {
      c ^= p[i];
      for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1u)));
    }
    return ~c;
  };
  auto rng = mc::test::rng(3);
  for (std::size_t n : {1u, 7u, 8u, 9u, 63u, 64u, 1000u, 4099u}) {
    std::vector<unsigned char> buf(n);
    for (auto& b : buf) b = static_cast<unsigned char>(rng());
    const auto want = bitwise(buf.data(), n);
    CHECK(mc::detail::crc32c(buf.data(), n) == want);
    CHECK(~mc::detail::crc32c_raw_portable(~0u, buf.data(), n) == want);
    // Extending piecewise equals one pass: what a commit relies on.
    for (std::size_t cut : {std::size_t{0}, n / 3, n - 1, n}) {
      const auto head = mc::detail::crc32c(buf.data(), cut);
      CHECK(mc::detail::crc32c_extend(head, buf.data() + cut, n - cut) == want);
    }
  }
}

TEST_CASE("tree file: header and slot round-trip; every field out of range is named") {
  mc::io::TreeLayout l{32, 3, 256, mc::io::Dtype::kF32, 65536};
  unsigned char buf[3 * mc::io::kRecordBytes] = {};
  mc::io::encode_header(l, buf);
  CHECK(mc::io::decode_header(buf, "x") == l);

  auto corrupt = [&](std::size_t off, std::uint32_t v) {
    unsigned char b[mc::io::kRecordBytes];
    std::memcpy(b, buf, sizeof b);
    std::memcpy(b + off, &v, 4);
    // Re-seal the checksum so the field check itself is exercised.
    const auto crc = mc::detail::crc32c(b, 124);
    std::memcpy(b + 124, &crc, 4);
    return std::vector<unsigned char>(b, b + sizeof b);
  };
  CHECK_THROWS_WITH_AS(mc::io::decode_header(corrupt(16, 1).data(), "x"),
                       doctest::Contains("K = 1"), mc::FormatError);
  CHECK_THROWS_WITH_AS(mc::io::decode_header(corrupt(20, 0).data(), "x"),
                       doctest::Contains("Depth = 0"), mc::FormatError);
  CHECK_THROWS_WITH_AS(mc::io::decode_header(corrupt(32, 9).data(), "x"),
                       doctest::Contains("dtype code 9"), mc::FormatError);
  CHECK_THROWS_WITH_AS(mc::io::decode_header(corrupt(8, 2).data(), "x"),
                       doctest::Contains("version 2"), mc::FormatError);
  CHECK_THROWS_WITH_AS(mc::io::decode_header(corrupt(40, 1000).data(), "x"),
                       doctest::Contains("chunk_bytes = 1000"), mc::FormatError);
  CHECK_THROWS_WITH_AS(mc::io::decode_header(corrupt(24, 0).data(), "x"),
                       doctest::Contains("dim = 0 with dtype code 1"), mc::FormatError);
  unsigned char bad_magic[mc::io::kRecordBytes];
  std::memcpy(bad_magic, buf, sizeof bad_magic);
  bad_magic[0] = 'X';
  CHECK_THROWS_WITH_AS(mc::io::decode_header(bad_magic, "x"), doctest::Contains("wrong magic"),
                       mc::FormatError);
  unsigned char flipped[mc::io::kRecordBytes];
  std::memcpy(flipped, buf, sizeof flipped);
  flipped[17] ^= 0x10;
  CHECK_THROWS_WITH_AS(mc::io::decode_header(flipped, "x"),
                       doctest::Contains("[mc.tree.header_checksum]"), mc::FormatError);
}

TEST_CASE("tree file: the newest valid commit slot wins and a torn one falls back") {
  unsigned char buf[3 * mc::io::kRecordBytes] = {};
  CHECK_THROWS_WITH_AS(mc::io::choose_slot(buf, "x"), doctest::Contains("[mc.tree.no_commit]"),
                       mc::FormatError);
  mc::io::CommitSlot a, b;
  a.seq = 7;
  a.num_tokens = 100;
  a.tail_crc[2] = 0xABCDu;
  b.seq = 8;
  b.num_tokens = 150;
  mc::io::encode_slot(a, buf + mc::io::slot_offset(0));
  auto c = mc::io::choose_slot(buf, "x");
  CHECK(c.slot.seq == 7);
  CHECK(c.slot.tail_crc[2] == 0xABCDu);
  CHECK_FALSE(c.other_valid);
  mc::io::encode_slot(b, buf + mc::io::slot_offset(1));
  c = mc::io::choose_slot(buf, "x");
  CHECK(c.slot.seq == 8);
  CHECK(c.index == 1);
  CHECK(c.other_valid);
  // Tear the newer slot anywhere: the older commit is used, and the tear is reported.
  for (std::size_t i = 0; i < mc::io::kRecordBytes; ++i) {
    unsigned char t[3 * mc::io::kRecordBytes];
    std::memcpy(t, buf, sizeof t);
    t[mc::io::slot_offset(1) + i] ^= 0x01;
    const auto r = mc::io::choose_slot(t, "x");
    CHECK(r.slot.seq == 7);
    CHECK_FALSE(r.other_valid);
  }
  mc::io::CommitSlot huge;
  huge.seq = 9;
  huge.num_tokens = mc::io::kMaxTokens + 1;
  mc::io::encode_slot(huge, buf + mc::io::slot_offset(0));
  CHECK_THROWS_WITH_AS(mc::io::choose_slot(buf, "x"), doctest::Contains("limit 2^40"),
                       mc::FormatError);
}
