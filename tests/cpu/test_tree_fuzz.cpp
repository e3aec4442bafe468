// SPDX-License-Identifier: Apache-2.0
// Fuzz-style robustness: 10,000 mutated or truncated copies of a real tree are opened. Each must
// either be rejected with mc::Error or open to a state that is a prefix of the original tree
// (same ids, same gists); nothing may crash, hang or surface another exception type. CI runs this
// under ASan/UBSan as well.
#include <doctest/doctest.h>

#include <megacontext/tree.hpp>

#include <fstream>
#include <map>
#include <random>

#include "common/random.hpp"
#include "common/tree_fixtures.hpp"

namespace {

using C = mc::Config<4, 2>;

std::vector<char> read_all(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}
void write_all(const std::filesystem::path& p, const std::vector<char>& bytes) {
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

}  // namespace

TEST_CASE("tree fuzz: 10,000 mutated or truncated tree files are rejected or open consistently") {
  INFO(mc::test::seed_info());
  mc::test::TempDir dir("fuzz");
  const auto path = dir / "t";
  const std::int64_t n = 700;
  auto g = mc::MeanPoolGister<C>::random(50, 3, 4);
  {
    mc::DiskCreateOptions o;
    o.chunk_bytes = 64;  // many checksum chunks, so mutations land in all kinds of places
    auto t = mc::DiskTree<C>::create(path, 3, o);
    for (std::int64_t p = 0; p < n; p += 23)
      t.append(mc::test::stream_tokens(p, std::min(n, p + 23), 50), g);
  }
  mc::MemoryTree<C> original(3);
  original.append(mc::test::stream_tokens(0, n, 50), g);

  std::map<std::string, std::vector<char>> files;
  for (const auto& e : std::filesystem::directory_iterator(path))
    files[e.path().filename().string()] = read_all(e.path());
  std::vector<std::string> names;
  for (const auto& [name, bytes] : files) names.push_back(name);

  auto rng = mc::test::rng(2024);
  int rejected = 0, opened = 0, opened_shorter = 0;
  std::map<std::string, int> tags;
  for (int iter = 0; iter < 10'000; ++iter) {
    // Mutate one or two files; the header file is picked more often since it has more structure.
    std::vector<std::string> touched;
    const int n_files = rng() % 4 == 0 ? 2 : 1;
    for (int f = 0; f < n_files; ++f) {
      const std::string& name = rng() % 3 == 0 ? std::string("tree.mct") : names[rng() % names.size()];
      auto bytes = files[name];
      const int kind = static_cast<int>(rng() % 6);
      const std::size_t size = bytes.size();
      if (kind == 0 && size > 0) {  // flip one bit
        bytes[rng() % size] ^= static_cast<char>(1 << (rng() % 8));
      } else if (kind == 1 && size > 0) {  // a few random bytes, biased to the records
        const std::size_t span = name == "tree.mct" ? std::min<std::size_t>(size, 384) : size;
        for (int k = 0, m = 1 + static_cast<int>(rng() % 8); k < m; ++k)
          bytes[rng() % span] = static_cast<char>(rng());
      } else if (kind == 2) {  // truncate
        bytes.resize(size == 0 ? 0 : rng() % size);
      } else if (kind == 3) {  // append garbage
        for (int k = 0, m = static_cast<int>(rng() % 200); k < m; ++k)
          bytes.push_back(static_cast<char>(rng()));
      } else if (kind == 4 && size > 8) {  // overwrite an aligned 8-byte field with an extreme value
        const std::uint64_t vals[] = {0, ~0ull, 1ull << 63, 1ull << 40, 0x7FFFFFFFull};
        const std::size_t off = (rng() % (std::min<std::size_t>(size, 384) / 8)) * 8;
        std::memcpy(bytes.data() + off, &vals[rng() % 5], 8);
      } else {  // zero a region
        if (size > 0) {
          const std::size_t b = rng() % size, e = std::min(size, b + 1 + rng() % 64);
          std::fill(bytes.begin() + static_cast<std::ptrdiff_t>(b),
                    bytes.begin() + static_cast<std::ptrdiff_t>(e), 0);
        }
      }
      write_all(path / name, bytes);
      touched.push_back(name);
    }
    try {
      auto t = mc::DiskTree<C>::open(path, {.read_only = true});
      ++opened;
      // Opened: it must be a prefix of the original, with identical ids and gists.
      const std::int64_t m = t.num_tokens();
      REQUIRE_MESSAGE(m <= n, "iteration ", iter, " opened with ", m, " tokens");
      if (m < n) ++opened_shorter;
      const auto ids = t.tokens(0, m), want = original.tokens(0, m);
      REQUIRE_MESSAGE(std::equal(ids.begin(), ids.end(), want.begin(), want.end()),
                      "iteration ", iter, ": ids differ from the original");
      for (int l = 1; l <= 2; ++l)
        REQUIRE_MESSAGE(t.gists(l, 0, t.level_size(l)) == original.gists(l, 0, t.level_size(l)),
                        "iteration ", iter, ": gists of level ", l, " differ");
    } catch (const mc::Error& e) {
      ++rejected;
      const std::string what = e.what();
      tags[what.substr(0, what.find(']') + 1)]++;
    }
    for (const auto& name : touched) write_all(path / name, files[name]);
  }
  std::string summary;
  for (const auto& [tag, count] : tags) summary += " " + tag + "x" + std::to_string(count);
  MESSAGE("10,000 mutations: ", rejected, " rejected with mc::Error, ", opened, " opened (",
          opened_shorter, " at an older commit); tags:", summary);
  CHECK(rejected > 5000);
  CHECK(opened > 100);
}
