// SPDX-License-Identifier: Apache-2.0
// Fuzz-style robustness of io/safetensors.hpp: 12,000 mutated or truncated copies of a valid file
// (bit flips, random header bytes, truncation, extreme header lengths, JSON token swaps, garbage)
// are parsed. Each must be rejected with mc::Error or open with every tensor view inside the file;
// every byte of every tensor is then read, so ASan (CI runs this under ASan/UBSan) sees overreads:
// in-memory copies live in heap blocks of exactly the file's size.
#include <doctest/doctest.h>

#include <megacontext/io/safetensors.hpp>

#include <cctype>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "common/random.hpp"
#include "common/tree_fixtures.hpp"

namespace {

using mc::io::SafetensorsView;
using mc::io::TensorDtype;

std::vector<char> seed_file() {
  mc::io::SafetensorsWriter w;
  auto rng = mc::test::rng(99);
  std::normal_distribution<float> normal;
  auto values = [&](std::size_t n) {
    std::vector<float> v(n);
    for (auto& x : v) x = normal(rng);
    return v;
  };
  w.add("embed.weight", {6, 4}, values(24), TensorDtype::kF32);
  w.add("gist.w1", {4, 3}, values(12), TensorDtype::kF16);
  w.add("gist.b1", {3}, values(3), TensorDtype::kBF16);
  w.add("lens.scale", {}, values(1), TensorDtype::kF32);
  w.add("lens.empty", {0, 5}, values(0), TensorDtype::kBF16);
  const std::vector<std::int32_t> ids = {3, 1, 4, 1, 5};
  w.add_raw("vocab.ids", TensorDtype::kI32, {5}, std::as_bytes(std::span(ids)));
  const std::vector<std::uint8_t> mask = {1, 0, 1};
  w.add_raw("mask", TensorDtype::kU8, {3}, std::as_bytes(std::span(mask)));
  w.set_metadata("format", "pt");
  w.set_metadata("note", "é\"\\\n");
  const auto b = w.to_bytes();
  std::vector<char> out(b.size());
  std::memcpy(out.data(), b.data(), b.size());
  return out;
}

// Splits a JSON header into tokens (strings, numbers/literals, single punctuation bytes), so
// mutations can swap, drop or replace whole tokens and still reach the semantic checks.
std::vector<std::string> tokenize(const std::string& h) {
  std::vector<std::string> t;
  for (std::size_t i = 0; i < h.size();) {
    const char c = h[i];
    std::size_t j = i + 1;
    if (c == '"') {
      while (j < h.size() && h[j] != '"') j += h[j] == '\\' ? 2 : 1;
      j = std::min(h.size(), j + 1);
    } else if (std::isalnum(static_cast<unsigned char>(c)) || c == '-') {
      while (j < h.size() && (std::isalnum(static_cast<unsigned char>(h[j])) || h[j] == '.' ||
                              h[j] == '-' || h[j] == '+'))
        ++j;
    }
    t.push_back(h.substr(i, j - i));
    i = j;
  }
  return t;
}

// Applies one random mutation to `f` (a complete file image).
void mutate(std::vector<char>& f, std::mt19937_64& rng) {
  if (f.size() < 16) {  // already cut to pieces by an earlier mutation: just grow it
    f.push_back(static_cast<char>(rng()));
    return;
  }
  std::uint64_t n = 0;
  std::memcpy(&n, f.data(), 8);
  const std::size_t header_end =
      static_cast<std::size_t>(std::min<std::uint64_t>(n, f.size() - 8)) + 8;
  const int kind = static_cast<int>(rng() % 8);
  if (kind == 0) {  // flip bits, mostly in the header
    for (int k = 0, m = 1 + static_cast<int>(rng() % 3); k < m; ++k) {
      const std::size_t at = rng() % 4 ? rng() % header_end : rng() % f.size();
      f[at] = static_cast<char>(f[at] ^ (1 << (rng() % 8)));
    }
  } else if (kind == 1) {  // random bytes in the header (or printable ones, to survive UTF-8)
    for (int k = 0, m = 1 + static_cast<int>(rng() % 6); k < m; ++k) {
      const std::size_t at = header_end > 8 ? 8 + rng() % (header_end - 8) : rng() % f.size();
      f[at] = rng() % 2 ? static_cast<char>(rng()) : static_cast<char>(' ' + rng() % 95);
    }
  } else if (kind == 2) {  // truncate
    f.resize(rng() % f.size());
  } else if (kind == 3) {  // overwrite the header length with an extreme or near-miss value
    const std::uint64_t vals[] = {0,     1,         2,         7,         n - 1,
                                  n + 1, f.size() - 8, f.size() - 7, 1ull << 63, ~0ull,
                                  100'000'001, 0xFFFFFFFFull, n + 8, n - 8};
    const std::uint64_t v = vals[rng() % std::size(vals)];
    std::memcpy(f.data(), &v, 8);
  } else if (kind == 4 || kind == 5) {  // JSON token edits; the header length is kept consistent
    std::string h(f.data() + 8, header_end - 8);
    if (h.empty()) return;
    auto t = tokenize(h);
    const std::size_t a = rng() % t.size(), b = rng() % t.size();
    static const char* const kReplacements[] = {
        "18446744073709551615", "18446744073709551616", "-1", "0", "1e3", "4294967296",
        "9223372036854775807", "1.5", "\"F16\"", "\"BF16\"", "\"I64\"", "\"F4\"", "\"\\ud800\"",
        "\"\\u00e9\"", "[]", "{}", "[0,0]", "null", "\"__metadata__\"", "\"embed.weight\"", ","};
    switch (rng() % 5) {
      case 0: std::swap(t[a], t[b]); break;
      case 1: t.erase(t.begin() + static_cast<std::ptrdiff_t>(a)); break;
      case 2: t.insert(t.begin() + static_cast<std::ptrdiff_t>(a), t[b]); break;
      default: t[a] = kReplacements[rng() % std::size(kReplacements)]; break;
    }
    std::string nh;
    for (const auto& s : t) nh += s;
    const std::uint64_t nn = nh.size();
    std::vector<char> g(8);
    std::memcpy(g.data(), &nn, 8);
    g.insert(g.end(), nh.begin(), nh.end());
    g.insert(g.end(), f.begin() + static_cast<std::ptrdiff_t>(header_end), f.end());
    f = std::move(g);
  } else if (kind == 6) {  // append garbage (data bytes nobody indexes)
    for (int k = 0, m = 1 + static_cast<int>(rng() % 64); k < m; ++k)
      f.push_back(static_cast<char>(rng()));
  } else {  // a data_offsets number nudged by one (the subtle off-by-one corruptions)
    std::string h(f.data() + 8, header_end - 8);
    if (h.empty()) return;
    const std::size_t at = h.find("data_offsets", rng() % h.size());
    if (at != std::string::npos) {
      std::size_t d = h.find_first_of("0123456789", at);
      const std::size_t pos = d == std::string::npos ? f.size() : 8 + d + (rng() % 2 ? 0 : 2);
      if (pos < header_end) f[pos] = static_cast<char>(f[pos] + (rng() % 2 ? 1 : -1));
    }
  }
}

// Reads every byte of every tensor and checks its view lies inside [base, base + size).
std::uint64_t touch_all(const SafetensorsView& v, const std::byte* base, std::size_t size) {
  std::uint64_t sum = 0;
  for (const auto& name : v.names()) {
    const auto& info = v.info(name);
    const auto raw = v.raw(name);
    REQUIRE(raw.size() == info.num_bytes());
    REQUIRE(static_cast<std::uint64_t>(info.numel()) * mc::io::dtype_size(info.dtype) ==
            raw.size());
    if (!raw.empty()) {
      REQUIRE(raw.data() >= base);
      REQUIRE(raw.data() + raw.size() <= base + size);
    }
    for (std::byte b : raw) sum += static_cast<std::uint64_t>(b);
    if (info.dtype == TensorDtype::kF32 || info.dtype == TensorDtype::kF16 ||
        info.dtype == TensorDtype::kBF16 || info.dtype == TensorDtype::kF64) {
      try {
        const auto m = v.as_f32(name);
        REQUIRE(m.size() == info.numel());
      } catch (const mc::Error&) {
        // Only an empty tensor with more rows than Eigen can index may refuse to be a matrix.
        REQUIRE(info.numel() == 0);
      }
    }
  }
  return sum;
}

}  // namespace

TEST_CASE("safetensors fuzz: 12,000 mutated or truncated files are rejected or read in bounds") {
  INFO(mc::test::seed_info());
  const std::vector<char> original = seed_file();
  {
    const auto v = SafetensorsView::parse(
        std::span(reinterpret_cast<const std::byte*>(original.data()), original.size()));
    REQUIRE(v.size() == 7);
  }
  mc::test::TempDir dir("st_fuzz");
  const auto path = dir / "f.safetensors";
  auto rng = mc::test::rng(4242);
  int rejected = 0, opened = 0, via_file = 0;
  std::uint64_t checksum = 0;
  std::map<std::string, int> tags;
  for (int iter = 0; iter < 12'000; ++iter) {
    std::vector<char> f = original;
    for (int k = 0, m = rng() % 4 == 0 ? 2 : 1; k < m && !f.empty(); ++k) mutate(f, rng);
    CAPTURE(iter);
    try {
      if (iter % 20 == 0) {  // the mmap path: open() on a real file
        ++via_file;
        {
          std::ofstream out(path, std::ios::binary | std::ios::trunc);
          out.write(f.data(), static_cast<std::streamsize>(f.size()));
        }
        const auto file = mc::io::SafetensorsFile::open(path);
        checksum += touch_all(file.view(), file.view().bytes().data(), f.size());
      } else {  // a heap block of exactly the file's size, so ASan flags any overread
        const std::size_t size = f.size();
        std::unique_ptr<std::byte[]> buf(new std::byte[size == 0 ? 1 : size]);
        if (size) std::memcpy(buf.get(), f.data(), size);
        const auto v = SafetensorsView::parse(std::span<const std::byte>(buf.get(), size));
        checksum += touch_all(v, buf.get(), size);
      }
      ++opened;
    } catch (const mc::Error& e) {
      ++rejected;
      const std::string what = e.what();
      tags[what.substr(0, what.find(']') + 1)]++;
    } catch (const std::exception& e) {
      FAIL("iteration ", iter, " threw a non-mc exception: ", e.what());
    }
  }
  std::string summary;
  for (const auto& [tag, count] : tags) summary += " " + tag + "x" + std::to_string(count);
  MESSAGE("12,000 mutations (", via_file, " through files): ", rejected,
          " rejected with mc::Error, ", opened, " opened; checksum ", checksum, "; tags:", summary);
  CHECK(rejected + opened == 12'000);
  CHECK(rejected > 6000);
  CHECK(opened > 100);
  CHECK(tags.size() >= 8);  // the mutations reach many different checks
}
