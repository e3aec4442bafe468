// SPDX-License-Identifier: Apache-2.0
// Tests of io/safetensors.hpp, io/json.hpp and detail/half.hpp: 16-bit float conversions checked
// exhaustively, the JSON parser's grammar, a writer/reader round trip, a file written byte for
// byte from the specification, and one test per rule a malformed file can break.
#include <doctest/doctest.h>

#include <megacontext/io/safetensors.hpp>

#include <bit>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "common/random.hpp"
#include "common/tree_fixtures.hpp"

using namespace std::string_literals;

namespace {

using mc::io::SafetensorsFile;
using mc::io::SafetensorsView;
using mc::io::SafetensorsWriter;
using mc::io::TensorDtype;

std::span<const std::byte> as_bytes(const std::string& s) {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}

// A file image: `n` (default: the header's length) as 8 LE bytes, the header, `data_bytes` bytes.
std::string image(const std::string& header, std::size_t data_bytes = 0,
                  std::optional<std::uint64_t> n = std::nullopt) {
  const std::uint64_t len = n.value_or(header.size());
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[static_cast<std::size_t>(i)] = static_cast<char>(len >> (8 * i));
  return out + header + std::string(data_bytes, '\x01');
}

SafetensorsView parse(const std::string& file) { return SafetensorsView::parse(as_bytes(file)); }

std::string tensor(const std::string& name, const std::string& dtype, const std::string& shape,
                   const std::string& offsets) {
  return "\"" + name + "\":{\"dtype\":\"" + dtype + "\",\"shape\":" + shape +
         ",\"data_offsets\":" + offsets + "}";
}

void write_file(const std::filesystem::path& p, const std::string& bytes) {
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::uint32_t bits(float f) { return std::bit_cast<std::uint32_t>(f); }

}  // namespace

// ---------------------------------------------------------------- 16-bit floats

TEST_CASE("half: every bf16 pattern survives bf16 -> float -> bf16 (NaN stays NaN)") {
  int nan = 0;
  for (std::uint32_t h = 0; h < 65536; ++h) {
    const auto x = static_cast<std::uint16_t>(h);
    const float f = mc::detail::bf16_to_float(x);
    const std::uint16_t back = mc::detail::float_to_bf16(f);
    if (std::isnan(f)) {
      ++nan;
      REQUIRE(std::isnan(mc::detail::bf16_to_float(back)));
      REQUIRE((back & 0x8000) == (x & 0x8000));
    } else {
      REQUIRE_MESSAGE(back == x, "bf16 pattern ", h);
    }
  }
  CHECK(nan == 2 * 127);
}

TEST_CASE("half: every f16 pattern survives f16 -> float -> f16 and converts exactly") {
  int nan = 0;
  for (std::uint32_t h = 0; h < 65536; ++h) {
    const auto x = static_cast<std::uint16_t>(h);
    const float f = mc::detail::f16_to_float(x);
    const std::uint16_t back = mc::detail::float_to_f16(f);
    const int exp = (x >> 10) & 31, mant = x & 1023;
    if (exp == 31 && mant != 0) {
      ++nan;
      REQUIRE(std::isnan(f));
      REQUIRE(std::isnan(mc::detail::f16_to_float(back)));
      REQUIRE((back & 0x8000) == (x & 0x8000));
      continue;
    }
    REQUIRE_MESSAGE(back == x, "f16 pattern ", h);
    // The value itself, from the definition of binary16.
    const double mag = exp == 31  ? INFINITY
                       : exp == 0 ? std::ldexp(mant, -24)
                                  : std::ldexp(1024 + mant, exp - 25);
    REQUIRE(static_cast<double>(f) == ((x & 0x8000) ? -mag : mag));
  }
  CHECK(nan == 2 * 1023);
}

TEST_CASE("half: float -> f16 and -> bf16 round to nearest, ties to even, at every midpoint") {
  // Between every pair of adjacent finite 16-bit values a and b, the exact midpoint goes to the
  // even one, and the floats just below and above it go down and up.
  struct Format {
    const char* name;
    float (*to_float)(std::uint16_t);
    std::uint16_t (*from_float)(float);
    std::uint16_t max_finite;
  };
  const Format formats[] = {{"f16", mc::detail::f16_to_float, mc::detail::float_to_f16, 0x7BFF},
                            {"bf16", mc::detail::bf16_to_float, mc::detail::float_to_bf16, 0x7F7F}};
  for (const auto& fmt : formats) {
    CAPTURE(fmt.name);
    for (std::uint32_t sign = 0; sign <= 0x8000; sign += 0x8000) {
      for (std::uint32_t h = 0; h < fmt.max_finite; ++h) {
        const auto lo = static_cast<std::uint16_t>(sign | h);
        const auto hi = static_cast<std::uint16_t>(sign | (h + 1));
        const double a = fmt.to_float(lo), b = fmt.to_float(hi);
        const auto mid = static_cast<float>((a + b) / 2);
        REQUIRE(static_cast<double>(mid) == (a + b) / 2);  // exactly representable
        const std::uint16_t even = (h & 1) ? hi : lo;
        REQUIRE_MESSAGE(fmt.from_float(mid) == even, "midpoint after pattern ", lo);
        const float toward_zero = std::nextafter(mid, 0.0f);
        const float away = std::nextafter(mid, sign ? -INFINITY : INFINITY);
        REQUIRE(fmt.from_float(toward_zero) == lo);
        REQUIRE(fmt.from_float(away) == hi);
        REQUIRE(fmt.from_float(static_cast<float>(a)) == lo);
      }
    }
  }
}

TEST_CASE("half: overflow, underflow, signed zero, Inf and NaN convert as IEEE says") {
  using mc::detail::float_to_bf16;
  using mc::detail::float_to_f16;
  CHECK(float_to_f16(65504.0f) == 0x7BFF);
  CHECK(float_to_f16(std::nextafter(65520.0f, 0.0f)) == 0x7BFF);
  CHECK(float_to_f16(65520.0f) == 0x7C00);  // the tie above the largest finite rounds to Inf
  CHECK(float_to_f16(-1e6f) == 0xFC00);
  CHECK(float_to_f16(INFINITY) == 0x7C00);
  CHECK(float_to_f16(-INFINITY) == 0xFC00);
  CHECK(float_to_f16(std::numeric_limits<float>::max()) == 0x7C00);
  CHECK(float_to_f16(-0.0f) == 0x8000);
  CHECK(float_to_f16(std::ldexp(1.0f, -24)) == 0x0001);  // smallest subnormal
  CHECK(float_to_f16(std::ldexp(1.0f, -25)) == 0x0000);  // tie with zero goes to even (zero)
  CHECK(float_to_f16(std::nextafter(std::ldexp(1.0f, -25), 1.0f)) == 0x0001);
  CHECK(float_to_f16(-std::ldexp(1.0f, -26)) == 0x8000);
  CHECK(float_to_f16(std::numeric_limits<float>::denorm_min()) == 0x0000);
  CHECK(float_to_f16(std::ldexp(1.0f, -14)) == 0x0400);  // smallest normal
  CHECK(float_to_f16(1.0f) == 0x3C00);
  CHECK(float_to_f16(-2.5f) == 0xC100);
  CHECK(std::isnan(mc::detail::f16_to_float(float_to_f16(NAN))));
  CHECK(std::isnan(mc::detail::f16_to_float(float_to_f16(-NAN))));
  CHECK(float_to_bf16(1.0f) == 0x3F80);
  CHECK(float_to_bf16(std::numeric_limits<float>::max()) == 0x7F80);
  CHECK(float_to_bf16(-INFINITY) == 0xFF80);
  CHECK(float_to_bf16(-0.0f) == 0x8000);
  CHECK(float_to_bf16(std::numeric_limits<float>::denorm_min()) == 0x0000);
  // A NaN whose payload sits only in the low 16 bits must not truncate to Inf.
  CHECK(std::isnan(mc::detail::bf16_to_float(float_to_bf16(std::bit_cast<float>(0x7F800001u)))));
  CHECK(std::isnan(mc::detail::f16_to_float(float_to_f16(std::bit_cast<float>(0x7F800001u)))));
}

#ifdef __FLT16_MAX__
TEST_CASE("half: float -> f16 agrees with the compiler's _Float16 on 2^22 random floats") {
  INFO(mc::test::seed_info());
  auto rng = mc::test::rng(16);
  for (int i = 0; i < (1 << 22); ++i) {
    // Mostly floats near the f16 range, some anywhere.
    std::uint32_t x = static_cast<std::uint32_t>(rng());
    if (i % 4 != 0) x = (x & 0x807FFFFFu) | ((0x60u + (x >> 23) % 0x30u) << 23);
    const float f = std::bit_cast<float>(x);
    if (std::isnan(f)) continue;
    const auto ref = static_cast<_Float16>(f);
    std::uint16_t want;
    std::memcpy(&want, &ref, 2);
    REQUIRE_MESSAGE(mc::detail::float_to_f16(f) == want, "float bits 0x", std::hex, x);
  }
}
#endif

// ---------------------------------------------------------------- JSON

TEST_CASE("json: strings decode every escape, \\u escapes and surrogate pairs to UTF-8") {
  const auto v = mc::io::parse_json(
      R"({"k":"a\"b\\c\/d\b\f\n\r\t\u0041\u00e9\u20ac\ud83d\ude00","x":"é€😀"})");
  REQUIRE(v.is_object());
  CHECK(v.find("k")->text() == "a\"b\\c/d\b\f\n\r\tAé€😀");
  CHECK(v.find("x")->text() == "é€😀");
  CHECK(v.find("missing") == nullptr);
}

TEST_CASE("json: malformed texts are refused with the byte offset") {
  struct Bad {
    std::string text;
    std::size_t offset;
  };
  const Bad bad[] = {
      {"", 0},           {"{", 1},           {"{\"a\":}", 5},     {"[1,]", 3},
      {"[1 2]", 3},      {"01", 1},          {"1.", 2},           {"1e", 2},
      {"-", 1},          {"+1", 0},          {".5", 0},           {"\"\\x\"", 1},
      {"\"\\ud800\"", 1}, {"\"\\udc00\"", 1}, {"\"\\ud800\\u0041\"", 1},
      {"\"a\x01\"", 2},  {"\"\xff\"", 1},     {"\"\xc0\xaf\"", 1}, {"\"\xed\xa0\x80\"", 1},
      {"\"\xf4\x90\x80\x80\"", 1},            {"\"\xe2\x82\"", 1}, {"{} x", 3},
      {"tru", 0},        {"nul", 0},         {"{\"a\" 1}", 5},    {"\"abc", 4},
      {"{1:2}", 1},      {"[\"\\u12G4\"]", 6},
  };
  for (const auto& b : bad) {
    CAPTURE(b.text);
    try {
      (void)mc::io::parse_json(b.text);
      FAIL("accepted");
    } catch (const mc::io::JsonError& e) {
      CHECK(e.fault() == mc::io::JsonFault::kSyntax);
      CHECK(e.offset() == b.offset);
      CHECK(std::string(e.what()).find("at byte") != std::string::npos);
    }
  }
}

TEST_CASE("json: depth, size and duplicate keys are bounded") {
  mc::io::JsonLimits lim;
  lim.max_depth = 4;
  lim.max_values = 10;
  CHECK_NOTHROW((void)mc::io::parse_json("[[[[1]]]]", lim));
  try {
    (void)mc::io::parse_json("[[[[[1]]]]]", lim);
    FAIL("accepted");
  } catch (const mc::io::JsonError& e) {
    CHECK(e.fault() == mc::io::JsonFault::kTooDeep);
  }
  try {
    (void)mc::io::parse_json("[1,2,3,4,5,6,7,8,9,10]", lim);
    FAIL("accepted");
  } catch (const mc::io::JsonError& e) {
    CHECK(e.fault() == mc::io::JsonFault::kTooLarge);
  }
  // A deep document with the default limits is refused, not a stack overflow.
  CHECK_THROWS_AS((void)mc::io::parse_json(std::string(100000, '[')), mc::io::JsonError);
  try {
    (void)mc::io::parse_json(R"({"a":1,"b":{"c":1,"c":2}})");
    FAIL("accepted");
  } catch (const mc::io::JsonError& e) {
    CHECK(e.fault() == mc::io::JsonFault::kDuplicateKey);
    CHECK(e.offset() == 18);
    CHECK(e.depth() == 2);
  }
}

TEST_CASE("json: numbers keep their lexeme and to_uint64 accepts only plain integers") {
  const auto v = mc::io::parse_json(
      "[0, 7, 18446744073709551615, 18446744073709551616, -1, -0, 1.0, 1e3, 2E+2, 0.5e-1]");
  const auto& a = v.items();
  REQUIRE(a.size() == 10);
  std::uint64_t x = 0;
  CHECK((a[0].to_uint64(x) && x == 0));
  CHECK((a[1].to_uint64(x) && x == 7));
  CHECK((a[2].to_uint64(x) && x == UINT64_MAX));
  for (std::size_t i = 3; i < a.size(); ++i) {
    CAPTURE(a[i].text());
    CHECK(a[i].is_number());
    CHECK_FALSE(a[i].to_uint64(x));
  }
  CHECK(a[9].text() == "0.5e-1");
  const auto lits = mc::io::parse_json(" [true, false, null, \"s\"] \r\n\t");
  CHECK(lits.items()[0].as_bool());
  CHECK_FALSE(lits.items()[1].as_bool());
  CHECK(lits.items()[2].kind() == mc::io::JsonValue::Kind::kNull);
  CHECK_FALSE(lits.items()[3].to_uint64(x));
}

TEST_CASE("json: append_json_string output parses back to the same string") {
  const std::string s = std::string("q\"b\\s/\x01\x1f\n") + "é😀" + std::string(1, '\0');
  std::string lit;
  mc::io::append_json_string(lit, s);
  CHECK(mc::io::parse_json(lit).text() == s);
  CHECK(mc::io::is_valid_utf8(s));
  CHECK_FALSE(mc::io::is_valid_utf8("\xc3"));
  CHECK_FALSE(mc::io::is_valid_utf8("\xed\xa0\x80"));
}

// ---------------------------------------------------------------- round trip

TEST_CASE("safetensors: F32/F16/BF16 and integer tensors of every shape round-trip with metadata") {
  INFO(mc::test::seed_info());
  mc::test::TempDir dir("st");
  auto rng = mc::test::rng(7);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  struct T {
    std::string name;
    std::vector<std::int64_t> shape;
    TensorDtype dtype;
  };
  const std::vector<T> ts = {
      {"a.weight", {3, 5}, TensorDtype::kF32},   {"b.half", {7}, TensorDtype::kF16},
      {"c.bf", {2, 3, 4}, TensorDtype::kBF16},   {"d.scalar", {}, TensorDtype::kF32},
      {"e.empty", {0}, TensorDtype::kF16},       {"f.empty2", {3, 0, 2}, TensorDtype::kBF16},
      {"g.wide", {1, 1, 1, 9}, TensorDtype::kF64}, {"h.scalar16", {}, TensorDtype::kBF16},
      {"é/😀 \"quoted\"", {2}, TensorDtype::kF32},
  };
  SafetensorsWriter w;
  std::map<std::string, std::vector<float>> want;
  for (const auto& t : ts) {
    std::int64_t n = 1;
    for (auto d : t.shape) n *= d;
    std::vector<float> v(static_cast<std::size_t>(n));
    for (auto& x : v) x = normal(rng);
    w.add(t.name, t.shape, v, t.dtype);
    for (auto& x : v)
      x = t.dtype == TensorDtype::kF16    ? mc::detail::f16_to_float(mc::detail::float_to_f16(x))
          : t.dtype == TensorDtype::kBF16 ? mc::detail::bf16_to_float(mc::detail::float_to_bf16(x))
                                          : x;
    want[t.name] = v;
  }
  const std::vector<std::int32_t> ints = {1, -2, 3, INT32_MIN, INT32_MAX};
  w.add_raw("i32", TensorDtype::kI32, {5}, std::as_bytes(std::span(ints)));
  const std::vector<std::int64_t> longs = {INT64_MIN, 42};
  w.add_raw("i64", TensorDtype::kI64, {2, 1}, std::as_bytes(std::span(longs)));
  const std::vector<std::uint8_t> u8 = {0, 255, 7};
  w.add_raw("u8", TensorDtype::kU8, {3}, std::as_bytes(std::span(u8)));
  mc::io::F32Matrix m(2, 3);
  m << 1, 2, 3, 4, 5, 6;
  w.add_matrix("mat", m, TensorDtype::kBF16);
  w.set_metadata("format", "pt");
  w.set_metadata("we\"ird\n", "é😀\\");
  CHECK(w.size() == ts.size() + 4);

  const auto path = dir / "model.safetensors";
  w.write(path);
  auto f = SafetensorsFile::open(path);
  CHECK(f.size() == ts.size() + 4);
  CHECK(f.metadata() == std::map<std::string, std::string>{{"format", "pt"},
                                                           {"we\"ird\n", "é😀\\"}});
  auto names = f.names();
  CHECK(std::is_sorted(names.begin(), names.end()));
  CHECK(f.view().data_offset() % 8 == 0);
  for (const auto& t : ts) {
    CAPTURE(t.name);
    REQUIRE(f.contains(t.name));
    const auto& info = f.info(t.name);
    CHECK(info.dtype == t.dtype);
    CHECK(info.shape == t.shape);
    CHECK(info.begin % mc::io::dtype_size(t.dtype) == 0);  // aligned by the writer's data order
    const auto got = f.as_f32(t.name);
    const auto& v = want[t.name];
    REQUIRE(static_cast<std::size_t>(got.size()) == v.size());
    const Eigen::Index cols = t.shape.empty() ? 1 : t.shape.back();
    CHECK(got.cols() == cols);
    for (std::size_t i = 0; i < v.size(); ++i) CHECK(bits(got.data()[i]) == bits(v[i]));
  }
  CHECK(f.as_f32("mat") == m);
  const auto raw = f.raw("i32");
  REQUIRE(raw.size() == 20);
  CHECK(std::memcmp(raw.data(), ints.data(), 20) == 0);
  CHECK(std::memcmp(f.raw("i64").data(), longs.data(), 16) == 0);
  CHECK(std::memcmp(f.raw("u8").data(), u8.data(), 3) == 0);
  CHECK(f.info("i64").shape == std::vector<std::int64_t>{2, 1});

  // The in-memory image is byte for byte the file, and a moved-from file keeps its views valid.
  const auto img = w.to_bytes();
  std::ifstream in(path, std::ios::binary);
  const std::string disk((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  REQUIRE(disk.size() == img.size());
  CHECK(std::memcmp(disk.data(), img.data(), img.size()) == 0);
  SafetensorsFile moved = std::move(f);
  CHECK(moved.as_f32("mat") == m);
  // No temporary file is left next to the target.
  int entries = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator(dir.path())) ++entries;
  CHECK(entries == 1);
}

TEST_CASE("safetensors: an empty writer gives a valid file of no tensors, and rewrite replaces") {
  mc::test::TempDir dir("st");
  const auto path = dir / "e.safetensors";
  SafetensorsWriter().write(path);
  auto f = SafetensorsFile::open(path);
  CHECK(f.size() == 0);
  CHECK(f.metadata().empty());
  SafetensorsWriter w;
  const std::vector<float> v = {1, 2};
  w.add("x", {2}, v);
  w.write(path);  // over the existing file, atomically
  auto g = SafetensorsFile::open(path);
  CHECK(g.names() == std::vector<std::string>{"x"});
  CHECK(f.size() == 0);  // the old mapping is unaffected by the rename
}

// ---------------------------------------------------------------- known bytes

TEST_CASE("safetensors: a file written byte for byte from the specification reads correctly") {
  // Hand-made per the spec, not by our writer: unsorted keys, metadata last, an escaped name,
  // whitespace inside the JSON and space padding after it, tensors in non-name order.
  const std::string header =
      "{ \"b\" : {\"dtype\":\"BF16\", \"shape\":[2], \"data_offsets\":[8, 12]},\n"
      "  \"a\":{\"shape\":[1,2],\"dtype\":\"F32\",\"data_offsets\":[0,8]},"
      "\"w\\u00e9\\ud83d\\ude00\":{\"dtype\":\"U8\",\"shape\":[],\"data_offsets\":[12,13]},"
      "\"z\":{\"dtype\":\"F16\",\"shape\":[0,4],\"data_offsets\":[13,13]},"
      "\"__metadata__\":{\"format\":\"pt\",\"note\":\"a\\nb\"}}   ";
  std::string file;
  const std::uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) file += static_cast<char>((n >> (8 * i)) & 0xFF);
  file += header;
  // a = [1.0f, -2.5f] (F32 LE), b = [1.5, -0.5] (BF16 LE: 0x3FC0, 0xBF00), then the U8 7.
  const unsigned char data[] = {0x00, 0x00, 0x80, 0x3F, 0x00, 0x00, 0x20, 0xC0,
                                0xC0, 0x3F, 0x00, 0xBF, 0x07};
  file.append(reinterpret_cast<const char*>(data), sizeof data);
  REQUIRE(file.size() == 8 + header.size() + 13);

  mc::test::TempDir dir("st");
  write_file(dir / "hand.safetensors", file);
  auto f = SafetensorsFile::open(dir / "hand.safetensors");
  CHECK(f.names() == std::vector<std::string>{"a", "b", "wé😀", "z"});
  CHECK(f.metadata() == std::map<std::string, std::string>{{"format", "pt"}, {"note", "a\nb"}});
  const auto a = f.as_f32("a");
  CHECK(a.rows() == 1);
  CHECK(a.cols() == 2);
  CHECK(a(0, 0) == 1.0f);
  CHECK(a(0, 1) == -2.5f);
  const auto b = f.as_f32("b");
  CHECK(b(0, 0) == 1.5f);
  CHECK(b(0, 1) == -0.5f);
  CHECK(f.info("wé😀").shape.empty());
  CHECK(f.info("wé😀").numel() == 1);
  CHECK(static_cast<int>(f.raw("wé😀")[0]) == 7);
  CHECK(f.raw("wé😀").data() == f.view().bytes().data() + 8 + header.size() + 12);
  CHECK(f.info("z").numel() == 0);
  CHECK(f.as_f32("z").size() == 0);
  CHECK(f.view().data_offset() == 8 + header.size());
}

// ---------------------------------------------------------------- malformed files

#define MC_CHECK_REJECTS(file, tag) \
  CHECK_THROWS_WITH_AS((void)parse(file), doctest::Contains(tag), mc::FormatError)

TEST_CASE("safetensors: a header length that is too small, too large or past the end is refused") {
  const std::string ok = "{}";
  CHECK_NOTHROW((void)parse(image(ok)));
  for (std::size_t len = 0; len < 8; ++len)
    MC_CHECK_REJECTS(std::string(len, '\0'), "[mc.safetensors.bad_header_length]");
  MC_CHECK_REJECTS(image(ok, 0, 0), "[mc.safetensors.bad_header_length]");
  MC_CHECK_REJECTS(image(ok, 0, 1), "[mc.safetensors.bad_header_length]");
  MC_CHECK_REJECTS(image(ok, 0, 3), "[mc.safetensors.bad_header_length]");
  MC_CHECK_REJECTS(image(ok, 0, 100'000'001), "[mc.safetensors.bad_header_length]");
  MC_CHECK_REJECTS(image(ok, 0, UINT64_MAX), "[mc.safetensors.bad_header_length]");
  MC_CHECK_REJECTS(image(ok, 0, std::uint64_t{1} << 63), "[mc.safetensors.bad_header_length]");
  MC_CHECK_REJECTS(image(ok).substr(0, 9), "[mc.safetensors.bad_header_length]");
}

TEST_CASE("safetensors: a header that is not well-formed JSON is refused with its byte offset") {
  const std::string t = tensor("a", "F32", "[1]", "[0,4]");
  MC_CHECK_REJECTS(image(" {"s + t + "}", 4), "[mc.safetensors.bad_json]");  // must start with {
  MC_CHECK_REJECTS(image("[1]", 0), "[mc.safetensors.bad_json]");
  MC_CHECK_REJECTS(image("{"s + t + ",}", 4), "[mc.safetensors.bad_json]");
  MC_CHECK_REJECTS(image("{"s + t, 4), "[mc.safetensors.bad_json]");
  MC_CHECK_REJECTS(image("{"s + t + "}\0\0\0"s, 4), "[mc.safetensors.bad_json]");  // NUL padding
  MC_CHECK_REJECTS(image("{"s + t + "}x", 4), "[mc.safetensors.bad_json]");
  MC_CHECK_REJECTS(image("{\"a\\q\":1}"), "[mc.safetensors.bad_json]");
  MC_CHECK_REJECTS(image("{\"\xff\":1}"), "[mc.safetensors.bad_json]");
  MC_CHECK_REJECTS(image("{\"\\ud800\":1}"), "[mc.safetensors.bad_json]");
  MC_CHECK_REJECTS(image("{\"__metadata__\":" + std::string(40, '[') + std::string(40, ']') + "}"),
                   "[mc.safetensors.bad_json]");
  // A duplicate key inside one tensor's entry is a JSON problem, not a duplicate tensor.
  MC_CHECK_REJECTS(image("{\"a\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[1],"
                         "\"data_offsets\":[0,4]}}", 4),
                   "[mc.safetensors.bad_json]");
  // The byte offset counts from the start of the file: the bad byte 'x' is at 8 + 6.
  CHECK_THROWS_WITH_AS((void)parse(image("{\"a\":1x}")),
                       doctest::Contains("at byte 14 of the file"), mc::FormatError);
}

TEST_CASE("safetensors: a repeated tensor name is refused") {
  const std::string h = "{"s + tensor("a", "F32", "[1]", "[0,4]") + "," +
                        tensor("a", "F32", "[1]", "[4,8]") + "}";
  MC_CHECK_REJECTS(image(h, 8), "[mc.safetensors.duplicate_name]");
  // Escapes do not hide a repeat: "\u0061" is "a".
  const std::string h2 = "{"s + tensor("a", "F32", "[1]", "[0,4]") + "," +
                         tensor("\\u0061", "F32", "[1]", "[4,8]") + "}";
  MC_CHECK_REJECTS(image(h2, 8), "[mc.safetensors.duplicate_name]");
}

TEST_CASE("safetensors: an unknown or non-string dtype is refused and named") {
  MC_CHECK_REJECTS(image("{"s + tensor("a", "Q4_K", "[1]", "[0,1]") + "}", 1),
                   "[mc.safetensors.unknown_dtype]");
  CHECK_THROWS_WITH_AS((void)parse(image("{"s + tensor("a", "F4", "[2]", "[0,1]") + "}", 1)),
                       doctest::Contains("\"F4\""), mc::FormatError);
  MC_CHECK_REJECTS(image("{"s + tensor("a", "f32", "[1]", "[0,4]") + "}", 4),
                   "[mc.safetensors.unknown_dtype]");  // case matters
  MC_CHECK_REJECTS(image("{\"a\":{\"dtype\":4,\"shape\":[1],\"data_offsets\":[0,4]}}", 4),
                   "[mc.safetensors.unknown_dtype]");
}

TEST_CASE("safetensors: a tensor entry without its three fields is refused") {
  MC_CHECK_REJECTS(image("{\"a\":[1]}"), "[mc.safetensors.bad_tensor_info]");
  MC_CHECK_REJECTS(image("{\"a\":\"F32\"}"), "[mc.safetensors.bad_tensor_info]");
  MC_CHECK_REJECTS(image("{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4),
                   "[mc.safetensors.bad_tensor_info]");
  MC_CHECK_REJECTS(image("{\"a\":{}}"), "[mc.safetensors.bad_tensor_info]");
  // Unknown extra fields are ignored, as the reference implementation does.
  CHECK_NOTHROW((void)parse(image(
      "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"extra\":[{}]}}", 4)));
}

TEST_CASE("safetensors: a shape that is not a list of non-negative integers is refused") {
  for (const char* shape : {"[-1]", "[1.0]", "[1e0]", "[\"2\"]", "[null]", "2", "{}",
                                  "[9223372036854775808]", "[18446744073709551616]"}) {
    CAPTURE(shape);
    MC_CHECK_REJECTS(image("{"s + tensor("a", "U8", shape, "[0,2]") + "}", 2),
                     "[mc.safetensors.bad_shape]");
  }
  // The byte count overflows 64 bits (2^66 elements, or 2^62 elements of 8 bytes).
  MC_CHECK_REJECTS(image("{"s + tensor("a", "U8", "[4294967296,4294967296,4]", "[0,0]") + "}"),
                   "[mc.safetensors.bad_shape]");
  MC_CHECK_REJECTS(image("{"s + tensor("a", "F64", "[4611686018427387904]", "[0,0]") + "}"),
                   "[mc.safetensors.bad_shape]");
  // Huge dimensions times a zero are an empty tensor, not an overflow.
  const auto v = parse(image("{"s + tensor("a", "F32", "[4294967296,4294967296,4294967296,0]",
                                          "[0,0]") + "}"));
  CHECK(v.info("a").numel() == 0);
  CHECK_THROWS_WITH_AS((void)v.as_f32("a"), doctest::Contains("[mc.safetensors.bad_shape]"),
                       mc::Error);
  CHECK(parse(image("{"s + tensor("a", "F32", "[0,4294967296,4294967296]", "[0,0]") + "}"))
            .as_f32("a")
            .size() == 0);
}

TEST_CASE("safetensors: data_offsets outside, reversed, mis-sized, overlapping or leaving holes "
          "are refused") {
  const auto one = [](const std::string& offsets, std::size_t data) {
    return image("{"s + tensor("a", "F32", "[2]", offsets) + "}", data);
  };
  CHECK_NOTHROW((void)parse(one("[0,8]", 8)));
  for (const char* off : {"[0]", "[0,8,8]", "[]", "8", "[-1,7]", "[0.0,8]", "[0,8.0]",
                                "[\"0\",8]", "[0,18446744073709551616]"}) {
    CAPTURE(off);
    MC_CHECK_REJECTS(one(off, 8), "[mc.safetensors.bad_offsets]");
  }
  MC_CHECK_REJECTS(one("[8,0]", 8), "[mc.safetensors.bad_offsets]");   // begin > end
  MC_CHECK_REJECTS(one("[0,9]", 8), "[mc.safetensors.bad_offsets]");   // past the buffer
  MC_CHECK_REJECTS(one("[0,18446744073709551615]", 8), "[mc.safetensors.bad_offsets]");
  MC_CHECK_REJECTS(one("[0,4]", 4), "[mc.safetensors.bad_offsets]");   // size != shape
  MC_CHECK_REJECTS(one("[0,8]", 9), "[mc.safetensors.bad_offsets]");   // trailing byte
  MC_CHECK_REJECTS(one("[1,9]", 9), "[mc.safetensors.bad_offsets]");   // hole at the start
  const auto two = [](const std::string& a, const std::string& b, std::size_t data) {
    return image("{"s + tensor("a", "F32", "[1]", a) + "," + tensor("b", "U8", "[2]", b) + "}",
                 data);
  };
  CHECK_NOTHROW((void)parse(two("[2,6]", "[0,2]", 6)));
  MC_CHECK_REJECTS(two("[0,4]", "[3,5]", 5), "[mc.safetensors.bad_offsets]");  // overlap
  MC_CHECK_REJECTS(two("[0,4]", "[0,2]", 4), "[mc.safetensors.bad_offsets]");  // overlap
  MC_CHECK_REJECTS(two("[0,4]", "[5,7]", 7), "[mc.safetensors.bad_offsets]");  // hole between
  CHECK_THROWS_WITH_AS((void)parse(two("[0,4]", "[5,7]", 7)),
                       doctest::Contains("bytes [4, 5) belong to no tensor"), mc::FormatError);
  // Zero-byte tensors may sit at any boundary, but not inside another tensor.
  const auto with_empty = [](const std::string& e) {
    return image("{"s + tensor("a", "F32", "[1]", "[0,4]") + "," + tensor("e", "F16", "[0]", e) +
                     "}",
                 4);
  };
  CHECK_NOTHROW((void)parse(with_empty("[0,0]")));
  CHECK_NOTHROW((void)parse(with_empty("[4,4]")));
  MC_CHECK_REJECTS(with_empty("[2,2]"), "[mc.safetensors.bad_offsets]");
  MC_CHECK_REJECTS(with_empty("[5,5]"), "[mc.safetensors.bad_offsets]");
  // No tensors at all but data bytes: the buffer is not covered.
  MC_CHECK_REJECTS(image("{}", 3), "[mc.safetensors.bad_offsets]");
}

TEST_CASE("safetensors: __metadata__ must map strings to strings") {
  CHECK(parse(image("{\"__metadata__\":{}}")).metadata().empty());
  MC_CHECK_REJECTS(image("{\"__metadata__\":[]}"), "[mc.safetensors.bad_metadata]");
  MC_CHECK_REJECTS(image("{\"__metadata__\":\"x\"}"), "[mc.safetensors.bad_metadata]");
  MC_CHECK_REJECTS(image("{\"__metadata__\":{\"a\":1}}"), "[mc.safetensors.bad_metadata]");
  MC_CHECK_REJECTS(image("{\"__metadata__\":{\"a\":{\"b\":\"c\"}}}"),
                   "[mc.safetensors.bad_metadata]");
  MC_CHECK_REJECTS(image("{\"__metadata__\":{},\"__metadata__\":{}}"),
                   "[mc.safetensors.duplicate_name]");
}

TEST_CASE("safetensors: files that cannot be opened are IoError, bad contents FormatError") {
  mc::test::TempDir dir("st");
  CHECK_THROWS_WITH_AS((void)SafetensorsFile::open(dir / "missing.safetensors"),
                       doctest::Contains("[mc.safetensors.open_failed]"), mc::IoError);
  CHECK_THROWS_WITH_AS((void)SafetensorsFile::open(dir.path()),
                       doctest::Contains("[mc.safetensors.open_failed]"), mc::IoError);
  write_file(dir / "empty", "");
  CHECK_THROWS_WITH_AS((void)SafetensorsFile::open(dir / "empty"),
                       doctest::Contains("[mc.safetensors.bad_header_length]"), mc::FormatError);
  write_file(dir / "bad", image("{"s + tensor("a", "F32", "[1]", "[0,4]") + "}", 3));
  try {
    (void)SafetensorsFile::open(dir / "bad");
    FAIL("accepted");
  } catch (const mc::FormatError& e) {
    CHECK(e.code() == mc::Errc::kFormat);
    CHECK(e.path() == dir / "bad");
    CHECK(std::string(e.what()).find((dir / "bad").string()) != std::string::npos);
  }
  SafetensorsWriter w;
  CHECK_THROWS_WITH_AS(w.write(dir / "no_such_dir" / "x.safetensors"),
                       doctest::Contains("[mc.safetensors.write_failed]"), mc::IoError);
}

TEST_CASE("safetensors: reader and writer misuse throws mc::Error naming the value") {
  const auto v = parse(image("{"s + tensor("i", "I32", "[1]", "[0,4]") + "}", 4));
  CHECK_THROWS_WITH_AS((void)v.info("nope"), doctest::Contains("[mc.safetensors.no_such_tensor]"),
                       mc::Error);
  CHECK_THROWS_WITH_AS((void)v.raw("nope"), doctest::Contains("\"nope\""), mc::Error);
  CHECK_THROWS_WITH_AS((void)v.as_f32("i"), doctest::Contains("[mc.safetensors.dtype_mismatch]"),
                       mc::Error);
  std::vector<float> out(2);
  CHECK_THROWS_WITH_AS(v.to_f32("i", out), doctest::Contains("[mc.safetensors.bad_size]"),
                       mc::Error);

  SafetensorsWriter w;
  const std::vector<float> x = {1, 2, 3};
  w.add("x", {3}, x);
  CHECK_THROWS_WITH_AS(w.add("x", {3}, x), doctest::Contains("[mc.safetensors.duplicate_name]"),
                       mc::Error);
  CHECK_THROWS_WITH_AS(w.add("y", {2, 2}, x), doctest::Contains("[mc.safetensors.bad_size]"),
                       mc::Error);
  CHECK_THROWS_WITH_AS(w.add("y", {-3}, x), doctest::Contains("[mc.safetensors.bad_shape]"),
                       mc::Error);
  CHECK_THROWS_WITH_AS(w.add("y", {1LL << 62, 4}, x),
                       doctest::Contains("[mc.safetensors.bad_shape]"), mc::Error);
  CHECK_THROWS_WITH_AS(w.add("", {3}, x), doctest::Contains("[mc.safetensors.bad_name]"),
                       mc::Error);
  CHECK_THROWS_WITH_AS(w.add("__metadata__", {3}, x),
                       doctest::Contains("[mc.safetensors.bad_name]"), mc::Error);
  CHECK_THROWS_WITH_AS(w.add("\xff", {3}, x), doctest::Contains("[mc.safetensors.bad_name]"),
                       mc::Error);
  CHECK_THROWS_WITH_AS(w.add("y", {3}, x, TensorDtype::kI32),
                       doctest::Contains("[mc.safetensors.dtype_mismatch]"), mc::Error);
  CHECK_THROWS_WITH_AS(w.add_raw("y", TensorDtype::kI64, {1}, std::as_bytes(std::span(x))),
                       doctest::Contains("[mc.safetensors.bad_size]"), mc::Error);
  CHECK_THROWS_WITH_AS(w.set_metadata("k", "\xc3"), doctest::Contains("[mc.safetensors.bad_name]"),
                       mc::Error);
  CHECK(w.size() == 1);
}

TEST_CASE("safetensors: every dtype name maps to itself and its size") {
  int n = 0;
  for (int i = 0; i <= static_cast<int>(TensorDtype::kF64); ++i, ++n) {
    const auto t = static_cast<TensorDtype>(i);
    CHECK(mc::io::dtype_from_string(mc::io::to_string(t)) == t);
    CHECK(mc::io::dtype_size(t) >= 1);
  }
  CHECK(n == 15);
  CHECK_FALSE(mc::io::dtype_from_string("F8_E8M0").has_value());
}
