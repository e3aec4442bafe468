// SPDX-License-Identifier: Apache-2.0
// Tests of the byte-level BPE tokenizer (include/megacontext/tokenizer.hpp): pre-tokeniser rules,
// a merge sequence computed by hand, lossless round trips on random bytes and real text,
// deterministic training, compression on held-out text, the `.mctok` file (save/load, every
// loader error, and thousands of mutated files that must be rejected or load consistently).
#include <doctest/doctest.h>

#include <megacontext/tokenizer.hpp>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "common/random.hpp"
#include "common/tree_fixtures.hpp"

namespace {

std::string read_file(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

/// The Debian license texts, one document per distinct file, sorted by name (empty if missing).
const std::map<std::string, std::string>& licenses() {
  static const auto docs = [] {
    std::map<std::string, std::string> m;
    const std::filesystem::path dir = "/usr/share/common-licenses";
    std::error_code ec;
    if (!std::filesystem::is_directory(dir, ec)) return m;
    std::map<std::filesystem::path, std::string> by_target;  // GPL -> GPL-3 etc. count once
    for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
      const auto target = std::filesystem::canonical(e.path(), ec);
      if (ec || !std::filesystem::is_regular_file(target)) continue;
      by_target.emplace(target, e.path().filename().string());
    }
    for (const auto& [target, name] : by_target) m[target.filename().string()] = read_file(target);
    return m;
  }();
  return docs;
}

/// The licenses except `held_out`, as training documents.
std::vector<std::string> training_docs(const std::string& held_out) {
  std::vector<std::string> docs;
  for (const auto& [name, text] : licenses())
    if (name != held_out) docs.push_back(text);
  return docs;
}

/// A vocab-2048 tokenizer trained on every license but Apache-2.0 (built once).
const mc::Tokenizer& license_tokenizer() {
  static const mc::Tokenizer t = [] {
    mc::BpeTrainOptions o;
    o.vocab_size = 2048;
    o.special_tokens = {"<|endoftext|>"};
    return mc::Tokenizer::train(training_docs("Apache-2.0"), o);
  }();
  return t;
}

std::vector<std::string> chunks_of(std::string_view text) {
  std::vector<std::string> out;
  mc::for_each_chunk(text, [&](std::string_view c) { out.emplace_back(c); });
  return out;
}

/// A random byte string of one of several kinds: uniform bytes, ASCII text, long runs, NULs.
std::string random_bytes(std::mt19937_64& rng) {
  const std::size_t n = rng() % 5 == 0 ? rng() % 4000 : rng() % 64;
  std::string s;
  s.reserve(n);
  const int kind = static_cast<int>(rng() % 5);
  const char* alphabet = "etaoin shrdlu\n\t.,'\"0123456789";
  while (s.size() < n) {
    if (kind == 0) {
      s.push_back(static_cast<char>(rng()));
    } else if (kind == 1) {
      s.push_back(alphabet[rng() % 30]);
    } else if (kind == 2) {  // long runs of one byte, including space and NUL
      const char c = "a \0\n.\xff"[rng() % 6];
      s.append(std::min<std::size_t>(n - s.size(), 1 + rng() % 700), c);
    } else if (kind == 3) {  // invalid and valid UTF-8 fragments
      const char* frags[] = {"\xc3\xa9", "\xe2\x80\x9c", "\xc3", "\x80\x80", "\xf0\x9f\x98\x80",
                             "\xfe\xff", "the ", "\0"};
      const auto f = rng() % 8;
      s.append(f == 7 ? std::string(1, '\0') : std::string(frags[f]));
    } else {
      s.push_back(static_cast<char>(rng() % 4 == 0 ? 0 : 'a' + rng() % 3));
    }
  }
  s.resize(n);
  return s;
}

/// `.mctok` bytes from raw fields, with a correct checksum unless `crc` is given.
std::vector<unsigned char> make_file(std::uint32_t version, std::uint32_t pretok,
                                     const std::vector<std::uint32_t>& merge_ids,
                                     const std::vector<std::string>& special,
                                     std::uint32_t num_merges_field = ~0u) {
  std::vector<unsigned char> b(mc::kTokenizerMagic.begin(), mc::kTokenizerMagic.end());
  auto put = [&](std::uint32_t v) {
    for (int i = 0; i < 4; ++i) b.push_back(static_cast<unsigned char>(v >> (8 * i)));
  };
  put(version);
  put(pretok);
  put(num_merges_field != ~0u ? num_merges_field
                              : static_cast<std::uint32_t>(merge_ids.size() / 2));
  put(static_cast<std::uint32_t>(special.size()));
  for (auto v : merge_ids) put(v);
  for (const auto& s : special) {
    put(static_cast<std::uint32_t>(s.size()));
    b.insert(b.end(), s.begin(), s.end());
  }
  put(mc::detail::crc32c(b.data(), b.size()));
  return b;
}

/// Recomputes the trailing checksum of `b` (so a mutation reaches the semantic checks).
void fix_crc(std::vector<unsigned char>& b) {
  if (b.size() < 4) return;
  const std::uint32_t c = mc::detail::crc32c(b.data(), b.size() - 4);
  std::memcpy(b.data() + b.size() - 4, &c, 4);
}

}  // namespace

TEST_CASE("tokenizer: the pre-tokeniser splits by byte class and its chunks rebuild the input") {
  using V = std::vector<std::string>;
  CHECK(chunks_of("Hello world  foo\n\nbar 123!? x") ==
        V{"Hello", " world", " ", " foo", "\n", "\n", "bar", " 123", "!?", " x"});
  CHECK(chunks_of("  \nfoo") == V{"  ", "\n", "foo"});
  CHECK(chunks_of("a  ") == V{"a", "  "});
  CHECK(chunks_of(" ") == V{" "});
  CHECK(chunks_of("caf\xc3\xa9 na\xefve") == V{"caf\xc3\xa9", " na\xefve"});
  CHECK(chunks_of(std::string("a\0b\0\0", 5)) ==
        V{"a", std::string(1, '\0'), "b", std::string(2, '\0')});
  CHECK(chunks_of("x2y, (z)") == V{"x", "2", "y", ",", " (", "z", ")"});
  CHECK(chunks_of("").empty());
  // A long run is cut into kMaxChunkBytes pieces.
  const auto long_run = chunks_of(std::string(300, 'a'));
  REQUIRE(long_run.size() == 3);
  CHECK(long_run[0].size() == mc::kMaxChunkBytes);
  CHECK(long_run[2].size() == 300 - 2 * mc::kMaxChunkBytes);

  INFO(mc::test::seed_info());
  auto rng = mc::test::rng(401);
  for (int iter = 0; iter < 2000; ++iter) {
    const std::string s = random_bytes(rng);
    std::string joined;
    bool sizes_ok = true;
    mc::for_each_chunk(s, [&](std::string_view c) {
      sizes_ok = sizes_ok && !c.empty() && c.size() <= mc::kMaxChunkBytes;
      joined.append(c);
    });
    REQUIRE_MESSAGE(sizes_ok, "iteration ", iter);
    REQUIRE_MESSAGE(joined == s, "iteration ", iter);
  }
}

TEST_CASE("tokenizer: training on aaabdaaabac gives the merges computed by hand") {
  // Pair counts in "aaabdaaabac" (one chunk, all letters): aa 4, ab 2, bd 1, da 1, ba 1, ac 1.
  //   merge 0: (a, a) -> 256            text: 256 a b d 256 a b a c
  //   counts: (256,a) 2, (a,b) 2, rest 1; tie on count 2 -> the smaller pair (a, b) = (97, 98)
  //   merge 1: (a, b) -> 257            text: 256 257 d 256 257 a c
  //   merge 2: (256, 257) -> 258        text: 258 d 258 a c; every pair now occurs once, so
  // with min_pair_count = 2 training stops after 3 merges even though 300 ids were allowed.
  const std::vector<mc::Merge> want = {{'a', 'a'}, {'a', 'b'}, {256, 257}};
  mc::BpeTrainOptions o;
  o.vocab_size = 300;
  auto t = mc::Tokenizer::train("aaabdaaabac", o);
  CHECK(t.merges() == want);
  CHECK(t.vocab_size() == 259);
  CHECK(t.token_bytes(258) == "aaab");
  CHECK(t.encode("aaabdaaabac") == std::vector<mc::TokenId>{258, 'd', 258, 'a', 'c'});
  CHECK(t.decode(std::vector<mc::TokenId>{258, 'd', 258, 'a', 'c'}) == "aaabdaaabac");

  o.vocab_size = 258;  // the vocabulary limit stops it first
  CHECK(mc::Tokenizer::train("aaabdaaabac", o).merges() ==
        std::vector<mc::Merge>{want[0], want[1]});
  // Chunks never merge across a boundary: "ab ab" has chunks "ab" and " ab".
  o.vocab_size = 300;
  CHECK(mc::Tokenizer::train("ab ab", o).merges() == std::vector<mc::Merge>{{'a', 'b'}});
}

TEST_CASE("tokenizer: encode then decode returns any byte string unchanged") {
  INFO(mc::test::seed_info());
  auto rng = mc::test::rng(402);
  // A tokenizer trained on random data too, so odd merges (NUL, 0xFF, spaces) exist.
  std::string noise;
  for (int i = 0; i < 200; ++i) noise += random_bytes(rng);
  mc::BpeTrainOptions o;
  o.vocab_size = 600;
  auto noisy = mc::Tokenizer::train(noise, o);
  CHECK(noisy.merges().size() > 100);
  auto text = license_tokenizer();  // a copy: encode() updates the copy's cache
  std::int64_t bytes = 0;
  for (int iter = 0; iter < 3000; ++iter) {
    const std::string s = random_bytes(rng);
    bytes += static_cast<std::int64_t>(s.size());
    for (mc::Tokenizer* t : {&noisy, &text}) {
      const auto ids = t->encode(s);
      REQUIRE_MESSAGE(t->decode(ids) == s, "iteration ", iter, ", ", s.size(), " bytes");
      REQUIRE_MESSAGE(ids == t->encode_uncached(s), "iteration ", iter, ": cache differs");
    }
  }
  MESSAGE("3000 random strings, ", bytes, " bytes, round trip exact with two tokenizers");
  CHECK(text.cache_size() > 0);
  // The appending overload adds to what is there.
  std::vector<mc::TokenId> appended = {7};
  text.encode("Licensed under", appended);
  text.encode(" the License", appended);
  auto want = std::vector<mc::TokenId>{7};
  for (const auto* part : {"Licensed under", " the License"})
    for (const auto id : text.encode_uncached(part)) want.push_back(id);
  CHECK(appended == want);
  mc::Tokenizer bytes_only;
  CHECK(bytes_only.encode("ab\0c") == std::vector<mc::TokenId>{'a', 'b'});  // literal stops at NUL
  const std::string nul("\0\0x", 3);
  CHECK(bytes_only.encode(nul) == std::vector<mc::TokenId>{0, 0, 'x'});
}

TEST_CASE("tokenizer: real text round trips and held-out text compresses below 0.3 tokens/byte") {
  if (licenses().size() < 3) {
    MESSAGE("SKIPPED: /usr/share/common-licenses is missing, no real text to test on");
    return;
  }
  REQUIRE(licenses().count("Apache-2.0") == 1);
  auto t = license_tokenizer();
  CHECK(t.vocab_size() == 2048);
  CHECK(t.special_tokens() == std::vector<std::string>{"<|endoftext|>"});
  for (const auto& [name, text] : licenses()) {
    const auto ids = t.encode(text);
    CHECK_MESSAGE(t.decode(ids) == text, name);
    CHECK_MESSAGE(ids == t.encode_uncached(text), name);
  }
  const std::string& held_out = licenses().at("Apache-2.0");
  const auto ids = t.encode(held_out);
  const double ratio = static_cast<double>(ids.size()) / static_cast<double>(held_out.size());
  MESSAGE("held-out Apache-2.0: ", held_out.size(), " bytes -> ", ids.size(), " tokens (",
          ratio, " tokens/byte) at vocab 2048");
  CHECK(ratio < 0.3);
}

namespace {

/// Reference trainer: recounts every pair from scratch before each merge (the definition of
/// greedy BPE, quadratic but obviously right): the most frequent pair wins, ties go to the
/// smallest (left, right), and training stops below a count of 2.
std::vector<mc::Merge> naive_train(const std::vector<std::string>& docs, std::size_t max_merges) {
  std::map<std::string, std::int64_t> freq;
  for (const auto& d : docs)
    mc::for_each_chunk(d, [&](std::string_view c) { ++freq[std::string(c)]; });
  std::vector<std::pair<std::vector<mc::TokenId>, std::int64_t>> words;
  for (const auto& [w, c] : freq)
    words.push_back({std::vector<mc::TokenId>(w.begin(), w.end()), c});
  for (auto& [ids, c] : words)
    for (auto& id : ids) id &= 0xFF;  // chars may be signed
  std::vector<mc::Merge> merges;
  while (merges.size() < max_merges) {
    std::map<std::pair<mc::TokenId, mc::TokenId>, std::int64_t> counts;
    for (const auto& [ids, c] : words)
      for (std::size_t i = 0; i + 1 < ids.size(); ++i) counts[{ids[i], ids[i + 1]}] += c;
    std::pair<mc::TokenId, mc::TokenId> best{};
    std::int64_t best_count = 0;
    for (const auto& [p, c] : counts)  // std::map iterates pairs in increasing order
      if (c > best_count) best = p, best_count = c;
    if (best_count < 2) break;
    const auto id = static_cast<mc::TokenId>(256 + merges.size());
    merges.push_back({best.first, best.second});
    for (auto& [ids, c] : words) {
      std::vector<mc::TokenId> next;
      for (std::size_t i = 0; i < ids.size(); ++i) {
        if (i + 1 < ids.size() && ids[i] == best.first && ids[i + 1] == best.second) {
          next.push_back(id);
          ++i;
        } else {
          next.push_back(ids[i]);
        }
      }
      ids = std::move(next);
    }
  }
  return merges;
}

}  // namespace

TEST_CASE("tokenizer: the incremental trainer picks the same merges as a full recount") {
  INFO(mc::test::seed_info());
  auto rng = mc::test::rng(404);
  std::vector<std::vector<std::string>> corpora;
  for (int k = 0; k < 3; ++k) {  // random documents: overlapping runs ("aaaa") stress the updates
    std::vector<std::string> docs;
    for (int d = 0; d < 40; ++d) docs.push_back(random_bytes(rng));
    corpora.push_back(docs);
  }
  std::vector<std::string> real;
  for (const auto& [name, text] : licenses()) real.push_back(text.substr(0, 6000));
  if (!real.empty()) corpora.push_back(real);
  for (std::size_t k = 0; k < corpora.size(); ++k) {
    mc::BpeTrainOptions o;
    o.vocab_size = 256 + 300;
    const auto got = mc::Tokenizer::train(corpora[k], o).merges();
    const auto want = naive_train(corpora[k], 300);
    CHECK_MESSAGE(got.size() == want.size(), "corpus ", k);
    std::size_t same = 0;
    while (same < std::min(got.size(), want.size()) && got[same] == want[same]) ++same;
    CHECK_MESSAGE(same == want.size(), "corpus ", k, ": first difference at merge ", same);
  }
}

TEST_CASE("tokenizer: training is deterministic and merges only refer to earlier ids") {
  if (licenses().size() < 3) {
    MESSAGE("SKIPPED: /usr/share/common-licenses is missing");
    return;
  }
  mc::BpeTrainOptions o;
  o.vocab_size = 1024;
  const auto docs = training_docs("");
  const auto a = mc::Tokenizer::train(docs, o);
  const auto b = mc::Tokenizer::train(docs, o);
  CHECK(a.merges() == b.merges());
  CHECK(a.to_bytes() == b.to_bytes());
  REQUIRE(a.merges().size() == 1024 - 256);
  for (std::size_t i = 0; i < a.merges().size(); ++i) {
    const auto limit = static_cast<mc::TokenId>(256 + i);
    REQUIRE(a.merges()[i].left < limit);
    REQUIRE(a.merges()[i].right < limit);
  }
  // Training on the concatenation differs only where chunks would cross documents, so the
  // first merges (frequent inside-word pairs) agree; " t" / "th" / "he"-like pairs come first.
  std::string all;
  for (const auto& d : docs) all += d;
  const auto c = mc::Tokenizer::train(all, o);
  CHECK(std::equal(a.merges().begin(), a.merges().begin() + 20, c.merges().begin()));
}

TEST_CASE("tokenizer: special tokens get the ids after the merges and decode to their text") {
  mc::BpeTrainOptions o;
  o.vocab_size = 262;
  o.special_tokens = {"<|endoftext|>", "<|pad|>"};
  auto t = mc::Tokenizer::train("aaabdaaabac", o);
  CHECK(t.merges().size() == 3);
  CHECK(t.vocab_size() == 261);
  CHECK(t.special_id("<|endoftext|>") == 259);
  CHECK(t.special_id("<|pad|>") == 260);
  CHECK(t.decode(std::vector<mc::TokenId>{'a', 259, 260}) == "a<|endoftext|><|pad|>");
  // encode() never produces a special id: its text is ordinary bytes.
  const auto ids = t.encode("<|endoftext|>");
  CHECK(std::none_of(ids.begin(), ids.end(), [](mc::TokenId i) { return i >= 259; }));
  CHECK_THROWS_WITH_AS(t.special_id("<|eos|>"), doctest::Contains("[mc.tokenizer.no_special]"),
                       mc::Error);
}

TEST_CASE("tokenizer: invalid arguments throw tagged mc::Error") {
  mc::BpeTrainOptions o;
  o.vocab_size = 255;
  CHECK_THROWS_WITH_AS(mc::Tokenizer::train("abc", o),
                       doctest::Contains("[mc.tokenizer.bad_vocab_size] vocab_size = 255"),
                       mc::Error);
  o.vocab_size = 257;
  o.special_tokens = {"a", "b"};
  CHECK_THROWS_WITH_AS(mc::Tokenizer::train("abc", o),
                       doctest::Contains("[mc.tokenizer.bad_vocab_size]"), mc::Error);
  o.vocab_size = 300;
  o.special_tokens = {"a", "a"};
  CHECK_THROWS_WITH_AS(mc::Tokenizer::train("abc", o),
                       doctest::Contains("[mc.tokenizer.duplicate_special]"), mc::Error);
  o.special_tokens = {""};
  CHECK_THROWS_WITH_AS(mc::Tokenizer::train("abc", o),
                       doctest::Contains("[mc.tokenizer.bad_special]"), mc::Error);
  o.special_tokens = {};
  o.min_pair_count = 0;
  CHECK_THROWS_WITH_AS(mc::Tokenizer::train("abc", o),
                       doctest::Contains("[mc.tokenizer.bad_min_pair_count]"), mc::Error);
  CHECK_THROWS_WITH_AS(mc::Tokenizer(std::vector<mc::Merge>{{'a', 256}}),
                       doctest::Contains("[mc.tokenizer.bad_merge] merge 0 (id 256) = (97, 256)"),
                       mc::Error);
  CHECK_THROWS_WITH_AS(mc::Tokenizer(std::vector<mc::Merge>{{'a', 'b'}, {'a', 'b'}}),
                       doctest::Contains("[mc.tokenizer.duplicate_merge] merge 1"), mc::Error);
  mc::Tokenizer t(std::vector<mc::Merge>{{'a', 'b'}});
  CHECK(t.decode(std::vector<mc::TokenId>{256, 'c'}) == "abc");
  CHECK_THROWS_WITH_AS(t.decode(std::vector<mc::TokenId>{'a', 257}),
                       doctest::Contains("[mc.tokenizer.bad_token] decode: ids[1] = 257"),
                       mc::Error);
  CHECK_THROWS_WITH_AS(t.decode(std::vector<mc::TokenId>{-1}),
                       doctest::Contains("[mc.tokenizer.bad_token]"), mc::Error);
}

TEST_CASE("tokenizer: save and load round trip through an atomically written file") {
  mc::test::TempDir dir("tokenizer");
  const auto path = dir / "vocab.mctok";
  mc::BpeTrainOptions o;
  o.vocab_size = 700;
  o.special_tokens = {"<|endoftext|>"};
  std::string corpus;
  for (const auto& [name, text] : licenses()) corpus += text;
  if (corpus.empty()) corpus = "the quick brown fox jumps over the lazy dog, the end. " + corpus;
  const auto t = mc::Tokenizer::train(corpus, o);
  t.save(path);
  t.save(path);  // replacing an existing file works too
  auto u = mc::Tokenizer::load(path);
  CHECK(u.merges() == t.merges());
  CHECK(u.special_tokens() == t.special_tokens());
  CHECK(u.vocab_size() == t.vocab_size());
  CHECK(u.to_bytes() == t.to_bytes());
  CHECK(u.encode(corpus) == t.encode_uncached(corpus));
  // Only the final file is left behind.
  int files = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator(dir.path())) ++files;
  CHECK(files == 1);
  CHECK_THROWS_WITH_AS(mc::Tokenizer::load(dir / "missing.mctok"),
                       doctest::Contains("[mc.tokenizer.open_failed]"), mc::IoError);
  CHECK_THROWS_WITH_AS(t.save(dir / "no_such_dir" / "x.mctok"),
                       doctest::Contains("[mc.tokenizer.open_failed]"), mc::IoError);
}

TEST_CASE("tokenizer: every loader error is a FormatError with a tag naming the problem") {
  auto check = [](const std::vector<unsigned char>& b, const char* tag) {
    CHECK_THROWS_WITH_AS(mc::Tokenizer::from_bytes(b, "x.mctok"), doctest::Contains(tag),
                         mc::FormatError);
  };
  const std::vector<std::uint32_t> ok_merges = {'a', 'b', 256, 'c'};
  const auto good = make_file(1, 1, ok_merges, {"<|endoftext|>"});
  const auto t = mc::Tokenizer::from_bytes(good);
  CHECK(t.vocab_size() == 259);
  CHECK(t.token_bytes(257) == "abc");
  CHECK(t.to_bytes() == good);

  SUBCASE("truncated") {
    check({}, "[mc.tokenizer.truncated]");
    check(std::vector<unsigned char>(good.begin(), good.begin() + 20), "[mc.tokenizer.truncated]");
    for (std::size_t n : {28ul, 40ul, 44ul, 50ul, good.size() - 1})
      check(std::vector<unsigned char>(good.begin(), good.begin() + static_cast<long>(n)),
            "[mc.tokenizer.truncated]");
    check(make_file(1, 1, ok_merges, {}, 5), "[mc.tokenizer.truncated]");
  }
  SUBCASE("bad_magic") {
    auto b = good;
    b[0] = 'X';
    check(b, "[mc.tokenizer.bad_magic]");
  }
  SUBCASE("version") {
    check(make_file(2, 1, ok_merges, {}), "[mc.tokenizer.version] file format version 2");
  }
  SUBCASE("pretokenizer") { check(make_file(1, 7, ok_merges, {}), "[mc.tokenizer.pretokenizer]"); }
  SUBCASE("too_large") {
    check(make_file(1, 1, {}, {}, 1u << 20), "[mc.tokenizer.too_large]");
    check(make_file(1, 1, {}, {}, 0xFFFFFFFFu - 1), "[mc.tokenizer.too_large]");
  }
  SUBCASE("checksum") {
    auto b = good;
    b[26] ^= 1;
    check(b, "[mc.tokenizer.checksum]");
  }
  SUBCASE("bad_merge: refers to its own or a later id") {
    check(make_file(1, 1, {'a', 256}, {}), "[mc.tokenizer.bad_merge] merge 0 (id 256) = (97, 256)");
    check(make_file(1, 1, {'a', 'b', 300, 'c'}, {}), "[mc.tokenizer.bad_merge] merge 1");
  }
  SUBCASE("bad_merge: out of range id") {
    check(make_file(1, 1, {0x80000000u, 'b'}, {}), "[mc.tokenizer.bad_merge]");
    check(make_file(1, 1, {'a', 0xFFFFFFFFu}, {}), "[mc.tokenizer.bad_merge]");
  }
  SUBCASE("duplicate_merge") {
    check(make_file(1, 1, {'a', 'b', 'a', 'b'}, {}), "[mc.tokenizer.duplicate_merge]");
  }
  SUBCASE("bad_special") {
    check(make_file(1, 1, ok_merges, {""}), "[mc.tokenizer.bad_special]");
    check(make_file(1, 1, ok_merges, {std::string(257, 'x')}), "[mc.tokenizer.bad_special]");
  }
  SUBCASE("duplicate_special") {
    check(make_file(1, 1, ok_merges, {"<a>", "<a>"}), "[mc.tokenizer.duplicate_special]");
  }
  SUBCASE("trailing_bytes") {
    auto b = good;
    b.insert(b.end() - 4, 0);
    fix_crc(b);
    check(b, "[mc.tokenizer.trailing_bytes]");
  }
}

TEST_CASE("tokenizer fuzz: 4,000 mutated tokenizer files are rejected or load consistently") {
  INFO(mc::test::seed_info());
  mc::BpeTrainOptions o;
  o.vocab_size = 400;
  o.special_tokens = {"<|endoftext|>", "<|pad|>"};
  std::string corpus;
  for (const auto& [name, text] : licenses()) corpus += text.substr(0, 20000);
  if (corpus.empty()) corpus = std::string(1000, 'a') + " the cat sat on the mat, the end";
  const auto original = mc::Tokenizer::train(corpus, o).to_bytes();
  const std::string sample = corpus.substr(0, 3000) + std::string("\0\xff\xfe<|pad|>", 11);

  auto rng = mc::test::rng(403);
  int rejected = 0, loaded = 0;
  std::map<std::string, int> tags;
  for (int iter = 0; iter < 4000; ++iter) {
    auto b = original;
    const int kind = static_cast<int>(rng() % 6);
    const std::size_t size = b.size();
    if (kind == 0) {
      b[rng() % size] ^= static_cast<unsigned char>(1u << (rng() % 8));
    } else if (kind == 1) {
      for (int k = 0, m = 1 + static_cast<int>(rng() % 8); k < m; ++k)
        b[rng() % size] = static_cast<unsigned char>(rng());
    } else if (kind == 2) {
      b.resize(rng() % size);
    } else if (kind == 3) {
      for (int k = 0, m = static_cast<int>(rng() % 64); k < m; ++k)
        b.insert(b.begin() + static_cast<long>(rng() % (b.size() + 1)),
                 static_cast<unsigned char>(rng()));
    } else if (kind == 4) {  // an extreme 4-byte field at an aligned offset
      const std::uint32_t vals[] = {0, ~0u, 1u << 31, 255, 256, 0xFFFF, 1u << 20};
      const std::size_t off = (rng() % (size / 4)) * 4;
      std::memcpy(b.data() + off, &vals[rng() % 7], 4);
    } else {  // swap two merges: a forward reference unless they are independent
      const std::size_t n = (size - 28) / 8, i = rng() % 100, j = rng() % 100;
      if (i < n && j < n)
        for (int k = 0; k < 8; ++k) std::swap(b[24 + 8 * i + k], b[24 + 8 * j + k]);
    }
    if (rng() % 2 == 0) fix_crc(b);  // half the mutations get past the checksum
    try {
      auto t = mc::Tokenizer::from_bytes(b);
      ++loaded;
      // Loaded: a consistent tokenizer that still round trips and re-serialises to these bytes.
      REQUIRE_MESSAGE(t.decode(t.encode(sample)) == sample, "iteration ", iter);
      REQUIRE_MESSAGE(t.to_bytes() == b, "iteration ", iter);
    } catch (const mc::FormatError& e) {
      ++rejected;
      const std::string what = e.what();
      tags[what.substr(0, what.find(']') + 1)]++;
    }
  }
  std::string summary;
  for (const auto& [tag, count] : tags) summary += " " + tag + "x" + std::to_string(count);
  MESSAGE("4,000 mutations: ", rejected, " rejected with mc::FormatError, ", loaded,
          " loaded; tags:", summary);
  CHECK(rejected > 2000);
  CHECK(tags.size() >= 6);
}
