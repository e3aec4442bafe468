// SPDX-License-Identifier: Apache-2.0
// The disk-backed tree: reopen and continue, exact size on disk, locking, readers, and a clear
// mc::Error for every kind of wrong or damaged file.
#include <doctest/doctest.h>

#include <megacontext/tree.hpp>

#include <fstream>
#include <map>

#include "common/random.hpp"
#include "common/tree_fixtures.hpp"

namespace {

using C = mc::Config<4, 2>;
using mc::test::TempDir;

void flip_byte(const std::filesystem::path& p, std::uint64_t offset) {
  std::fstream f(p, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(static_cast<std::streamoff>(offset));
  char c = 0;
  f.read(&c, 1);
  c = static_cast<char>(c ^ 0x5A);
  f.seekp(static_cast<std::streamoff>(offset));
  f.write(&c, 1);
}

// A closed tree of n stream tokens with mean-pool gists of dim 3 and small checksum chunks.
void make_tree(const std::filesystem::path& dir, std::int64_t n, std::int64_t chunk = 4) {
  auto g = mc::MeanPoolGister<C>::random(50, 3, 9);
  mc::DiskCreateOptions o;
  o.chunk_bytes = 64;
  auto t = mc::DiskTree<C>::create(dir, 3, o);
  for (std::int64_t p = 0; p < n; p += chunk)
    t.append(mc::test::stream_tokens(p, std::min(n, p + chunk), 50), g);
}

}  // namespace

TEST_CASE("disk tree: save, reopen, compare; reopen and continue appending") {
  TempDir dir("reopen");
  auto g = mc::MeanPoolGister<C>::random(50, 3, 9);
  const auto ids = mc::test::stream_tokens(0, 1000, 50);
  {
    auto t = mc::DiskTree<C>::create(dir / "t", 3);
    t.append(std::span(ids).first(333), g);
  }
  {
    auto t = mc::DiskTree<C>::open(dir / "t");
    CHECK(t.num_tokens() == 333);
    CHECK(t.storage().recovery().seq == 2);
    CHECK_FALSE(t.storage().recovery().torn_slot);
    t.append(std::span(ids).subspan(333), g);
  }
  auto t = mc::DiskTree<C>::open(dir / "t", {.read_only = true}, 3);
  mc::MemoryTree<C> mem(3);
  mem.append(ids, g);
  REQUIRE(t.num_tokens() == 1000);
  const auto a = t.tokens(0, 1000);
  CHECK(std::equal(a.begin(), a.end(), ids.begin(), ids.end()));
  for (int l = 1; l <= 2; ++l) CHECK(t.gists(l, 0, t.level_size(l)) == mem.gists(l, 0, mem.level_size(l)));
  CHECK_NOTHROW(t.verify());
}

TEST_CASE("disk tree: a closed tree takes 4 B per token plus its gists, checksums and header") {
  TempDir dir("size");
  using C32 = mc::Config<32, 2>;
  const std::int64_t n = 100'000, d = 8;
  {
    auto g = mc::MeanPoolGister<C32>::random(256, d, 1);
    auto t = mc::DiskTree<C32>::create(dir / "t", d);
    t.append(mc::test::stream_tokens(0, n, 256), g);
  }
  std::uint64_t total = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir / "t")) total += e.file_size();
  const std::uint64_t ids = 4 * n, lod1 = (n / 32) * d * 4, lod2 = (n / 1024) * d * 4;
  const std::uint64_t crcs = 4 * (ids / 65536 + lod1 / 65536 + lod2 / 65536);
  CHECK(total == ids + lod1 + lod2 + crcs + 4096);
}

TEST_CASE("disk tree: a wrong K, Depth, Scalar or dim is refused with both values named") {
  TempDir dir("mismatch");
  make_tree(dir / "t", 40);
  CHECK_THROWS_WITH_AS((mc::DiskTree<mc::Config<8, 2>>::open(dir / "t")),
                       doctest::Contains("written with K = 4, this Tree has K = 8"), mc::Error);
  CHECK_THROWS_WITH_AS((mc::DiskTree<mc::Config<4, 3>>::open(dir / "t")),
                       doctest::Contains("Depth = 2, this Tree has Depth = 3"), mc::Error);
  CHECK_THROWS_WITH_AS((mc::DiskTree<mc::Config<4, 2, double>>::open(dir / "t")),
                       doctest::Contains("dtype code 1"), mc::Error);
  CHECK_THROWS_WITH_AS(mc::DiskTree<C>::open(dir / "t", {}, 16),
                       doctest::Contains("dim = 3, expected dim = 16"), mc::Error);
  try {
    mc::DiskTree<mc::Config<8, 2>>::open(dir / "t");
  } catch (const mc::Error& e) {
    CHECK(e.code() == mc::Errc::kConfigMismatch);
  }
  CHECK_THROWS_WITH_AS(mc::DiskTree<C>::open(dir / "missing"), doctest::Contains("[mc.tree.not_found]"),
                       mc::IoError);
  CHECK_THROWS_WITH_AS(mc::DiskTree<C>::create(dir / "t", 3), doctest::Contains("[mc.tree.exists]"),
                       mc::Error);
}

TEST_CASE("disk tree: damaged files give FormatError naming the file, chunk and checksums") {
  TempDir dir("damage");
  make_tree(dir / "t", 301);
  const auto t = dir / "t";
  SUBCASE("a flipped byte in token ids") {
    flip_byte(t / "lod0.bin", 70);
    CHECK_THROWS_WITH_AS(mc::DiskTree<C>::open(t), doctest::Contains("lod0.bin chunk 1 (bytes 64..128)"),
                         mc::FormatError);
    // Opening without the full check succeeds; verify() then finds the damage.
    auto tree = mc::DiskTree<C>::open(t, {.read_only = true, .verify = mc::Verify::kCommitOnly});
    CHECK_THROWS_WITH_AS(tree.verify(), doctest::Contains("[mc.tree.checksum]"), mc::FormatError);
  }
  SUBCASE("a flipped byte in the last partial chunk of a gist level") {
    flip_byte(t / "lod1.bin", std::filesystem::file_size(t / "lod1.bin") - 1);
    CHECK_THROWS_WITH_AS(mc::DiskTree<C>::open(t), doctest::Contains("lod1.bin chunk"),
                         mc::FormatError);
  }
  SUBCASE("a flipped byte in a checksum table") {
    flip_byte(t / "lod0.crc", 5);
    CHECK_THROWS_WITH_AS(mc::DiskTree<C>::open(t), doctest::Contains("stored CRC-32C"),
                         mc::FormatError);
  }
  SUBCASE("a truncated level file") {
    std::filesystem::resize_file(t / "lod2.bin", 8);
    CHECK_THROWS_WITH_AS(mc::DiskTree<C>::open(t), doctest::Contains("lod2.bin holds 8 bytes"),
                         mc::FormatError);
  }
  SUBCASE("a truncated header") {
    std::filesystem::resize_file(t / "tree.mct", 100);
    CHECK_THROWS_WITH_AS(mc::DiskTree<C>::open(t), doctest::Contains("holds 100 bytes"),
                         mc::FormatError);
  }
  SUBCASE("a wrong magic") {
    flip_byte(t / "tree.mct", 0);
    CHECK_THROWS_WITH_AS(mc::DiskTree<C>::open(t), doctest::Contains("wrong magic"), mc::FormatError);
  }
  SUBCASE("a missing level file") {
    std::filesystem::remove(t / "lod1.crc");
    CHECK_THROWS_WITH_AS(mc::DiskTree<C>::open(t), doctest::Contains("lod1.crc"), mc::IoError);
  }
  SUBCASE("both commit slots damaged") {
    flip_byte(t / "tree.mct", 130);
    flip_byte(t / "tree.mct", 260);
    CHECK_THROWS_WITH_AS(mc::DiskTree<C>::open(t), doctest::Contains("[mc.tree.no_commit]"),
                         mc::FormatError);
  }
}

TEST_CASE("disk tree: a torn newest commit slot falls back to the previous commit") {
  TempDir dir("torn");
  make_tree(dir / "t", 40);  // 10 commits of 4 tokens: seq 11 is newest
  const auto t = dir / "t";
  std::uint64_t newest_slot = 0;
  {
    auto tree = mc::DiskTree<C>::open(t, {.read_only = true});
    CHECK(tree.num_tokens() == 40);
    newest_slot = tree.storage().recovery().seq % 2 == 1 ? 0 : 1;  // seq 1 was slot 0
  }
  flip_byte(t / "tree.mct", mc::io::slot_offset(static_cast<int>(newest_slot)) + 9);
  auto tree = mc::DiskTree<C>::open(t);
  CHECK(tree.num_tokens() == 36);
  CHECK(tree.storage().recovery().torn_slot);
  // The writer carries on from the surviving commit.
  auto g = mc::MeanPoolGister<C>::random(50, 3, 9);
  tree.append(mc::test::stream_tokens(36, 48, 50), g);
  CHECK(tree.num_tokens() == 48);
  CHECK_NOTHROW(tree.verify());
}

TEST_CASE("disk tree: one writer at a time; readers can open beside it and refresh") {
  TempDir dir("lock");
  auto g = mc::MeanPoolGister<C>::random(50, 3, 9);
  auto w = mc::DiskTree<C>::create(dir / "t", 3);
  w.append(mc::test::stream_tokens(0, 10, 50), g);
  CHECK_THROWS_WITH_AS(mc::DiskTree<C>::open(dir / "t"), doctest::Contains("[mc.tree.locked]"),
                       mc::Error);
  auto r = mc::DiskTree<C>::open(dir / "t", {.read_only = true});
  CHECK(r.num_tokens() == 10);
  CHECK_THROWS_WITH_AS(r.append(mc::test::stream_tokens(10, 12, 50), g),
                       doctest::Contains("[mc.tree.read_only]"), mc::Error);
  w.append(mc::test::stream_tokens(10, 70, 50), g);
  CHECK(r.num_tokens() == 10);  // a snapshot until refreshed
  CHECK(r.storage().refresh());
  CHECK(r.num_tokens() == 70);
  CHECK(r.gists(2, 0, 4) == w.gists(2, 0, 4));
  CHECK_FALSE(r.storage().refresh());
}

TEST_CASE("disk tree: power-loss durability and ids-only trees work the same way") {
  TempDir dir("durable");
  {
    mc::DiskCreateOptions o;
    o.durability = mc::Durability::kPowerLoss;
    auto t = mc::DiskTree<C>::create(dir / "t", 0, o);
    for (int i = 0; i < 5; ++i) t.append(mc::test::stream_tokens(i * 7, i * 7 + 7, 50));
  }
  auto t = mc::DiskTree<C>::open(dir / "t", {.read_only = true});
  CHECK(t.num_tokens() == 35);
  CHECK(t.dim() == 0);
  CHECK(t.level_size(2) == 2);
  CHECK(t.tokens(34, 35)[0] == mc::test::stream_token(34, 50));
}

TEST_CASE("disk tree: a writer whose open fails leaves every file exactly as it was") {
  TempDir dir("failed_open");
  make_tree(dir / "t", 301);
  const auto t = dir / "t";
  flip_byte(t / "lod0.bin", 70);
  std::map<std::string, std::uintmax_t> sizes;
  for (const auto& e : std::filesystem::directory_iterator(t)) sizes[e.path().filename()] = e.file_size();
  CHECK_THROWS_AS(mc::DiskTree<C>::open(t), mc::FormatError);
  for (const auto& e : std::filesystem::directory_iterator(t))
    CHECK(sizes[e.path().filename()] == e.file_size());
  // The commit is still readable without the checksum pass (the damage is in the data only).
  auto r = mc::DiskTree<C>::open(t, {.read_only = true, .verify = mc::Verify::kCommitOnly});
  CHECK(r.num_tokens() == 301);
}
