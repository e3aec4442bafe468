// SPDX-License-Identifier: Apache-2.0
// Byte-level BPE tokenizer: the front of the data flow (text -> token ids -> tree). Ids 0..255
// are raw bytes, merges add ids 256.., special tokens come last. Holds the pre-tokeniser (a
// byte-class splitter), the trainer (incremental pair counts + indexed max-heap), the cached
// encoder, the decoder and the `.mctok` file format (docs/concepts/tokenizer.md).
#pragma once

#include <algorithm>
#include <array>
#include <bit>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <unistd.h>

#include "megacontext/config.hpp"
#include "megacontext/detail/crc32c.hpp"
#include "megacontext/error.hpp"

namespace mc {

static_assert(std::endian::native == std::endian::little,
              "the tokenizer file format is little-endian and this build only supports such hosts");

/// Number of byte tokens; ids [0, 256) decode to the byte of the same value.
inline constexpr TokenId kNumByteTokens = 256;
/// Largest vocabulary (bytes + merges + special tokens) a tokenizer may have.
inline constexpr std::int64_t kMaxVocabSize = std::int64_t{1} << 20;
/// Most special tokens a tokenizer may declare.
inline constexpr std::int64_t kMaxSpecialTokens = 1024;
/// Longest special token text in bytes.
inline constexpr std::size_t kMaxSpecialBytes = 256;
/// Longest pre-tokeniser chunk; longer runs are cut into pieces of this size.
inline constexpr std::size_t kMaxChunkBytes = 128;
/// The first 8 bytes of a `.mctok` file.
inline constexpr std::array<char, 8> kTokenizerMagic = {'M', 'C', 'T', 'O', 'K', 'E', 'N', '\n'};
/// The `.mctok` format version this build writes and reads.
inline constexpr std::uint32_t kTokenizerFormatVersion = 1;
/// Identifier of the pre-tokenisation rules stored in the file (changes if the rules change).
inline constexpr std::uint32_t kPretokenizerVersion = 1;

/// One BPE merge: the pair (left, right) that becomes the token with id 256 + its rank.
struct Merge {
  TokenId left = 0;   ///< id of the left part (a byte or an earlier merge)
  TokenId right = 0;  ///< id of the right part (a byte or an earlier merge)
  friend bool operator==(const Merge&, const Merge&) = default;
};

/// Options of Tokenizer::train().
struct BpeTrainOptions {
  std::int64_t vocab_size = 8192;  ///< total ids: 256 bytes + merges + special tokens
  std::int64_t min_pair_count = 2;  ///< stop early when the best pair occurs fewer times
  std::vector<std::string> special_tokens = {};  ///< e.g. "<|endoftext|>"; ids after the merges
};

namespace detail {

/// Byte classes of the pre-tokeniser.
enum class ByteClass : std::uint8_t { kLetter, kDigit, kSpace, kOtherSpace, kPunct };

/// Class of every byte: ASCII letters and all bytes >= 0x80 are letters (so UTF-8 words stay
/// whole), '0'..'9' digits, ' ' space, \t \n \v \f \r other whitespace, the rest punctuation.
inline constexpr std::array<ByteClass, 256> kByteClasses = [] {
  std::array<ByteClass, 256> t{};
  for (int b = 0; b < 256; ++b) {
    ByteClass c = ByteClass::kPunct;
    if ((b >= 'a' && b <= 'z') || (b >= 'A' && b <= 'Z') || b >= 0x80) c = ByteClass::kLetter;
    else if (b >= '0' && b <= '9') c = ByteClass::kDigit;
    else if (b == ' ') c = ByteClass::kSpace;
    else if (b == '\t' || b == '\n' || b == '\v' || b == '\f' || b == '\r')
      c = ByteClass::kOtherSpace;
    t[static_cast<std::size_t>(b)] = c;
  }
  return t;
}();

/// Class of byte `c`.
inline ByteClass byte_class(char c) {
  return kByteClasses[static_cast<unsigned char>(c)];
}
/// True for the two whitespace classes.
inline bool is_space(ByteClass c) { return c == ByteClass::kSpace || c == ByteClass::kOtherSpace; }

/// Key of an adjacent pair in hash maps.
inline std::uint64_t pair_key(TokenId a, TokenId b) {
  return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(a)) << 32) |
         static_cast<std::uint32_t>(b);
}

/// 64-bit hash of a short byte string, 8 bytes per step (chunks are short).
inline std::uint64_t hash_bytes(std::string_view s) {
  std::uint64_t h = 0x9E3779B97F4A7C15ull ^ (s.size() * 0xC2B2AE3D27D4EB4Full);
  std::size_t i = 0;
  for (; i + 8 <= s.size(); i += 8) {
    std::uint64_t w;
    std::memcpy(&w, s.data() + i, 8);
    h = (h ^ w) * 0xFF51AFD7ED558CCDull;
    h ^= h >> 32;
  }
  if (i < s.size()) {
    std::uint64_t w = 0;
    std::memcpy(&w, s.data() + i, s.size() - i);
    h = (h ^ w) * 0xFF51AFD7ED558CCDull;
  }
  h ^= h >> 29;
  h *= 0xC4CEB9FE1A85EC53ull;
  h ^= h >> 32;
  return h | 1;  // 0 marks an empty cache slot
}

/// Checks a merge list and special tokens; returns "" when valid, else a tagged message.
inline std::string validate_vocab(std::span<const Merge> merges,
                                  std::span<const std::string> special) {
  if (static_cast<std::int64_t>(merges.size()) + static_cast<std::int64_t>(special.size()) +
          kNumByteTokens > kMaxVocabSize)
    return concat("[mc.tokenizer.too_large] ", merges.size(), " merges + ", special.size(),
                  " special tokens exceed the vocabulary limit ", kMaxVocabSize);
  if (static_cast<std::int64_t>(special.size()) > kMaxSpecialTokens)
    return concat("[mc.tokenizer.bad_special] ", special.size(), " special tokens, at most ",
                  kMaxSpecialTokens);
  std::unordered_map<std::uint64_t, std::size_t> seen;
  seen.reserve(merges.size());
  for (std::size_t i = 0; i < merges.size(); ++i) {
    const auto limit = static_cast<std::int64_t>(kNumByteTokens) + static_cast<std::int64_t>(i);
    const Merge m = merges[i];
    if (m.left < 0 || m.right < 0 || m.left >= limit || m.right >= limit)
      return concat("[mc.tokenizer.bad_merge] merge ", i, " (id ", limit, ") = (", m.left, ", ",
                    m.right, ") refers to an id outside [0, ", limit,
                    "); a merge may only use bytes and earlier merges");
    const auto [it, fresh] = seen.emplace(pair_key(m.left, m.right), i);
    if (!fresh)
      return concat("[mc.tokenizer.duplicate_merge] merge ", i, " = (", m.left, ", ", m.right,
                    ") repeats merge ", it->second);
  }
  for (std::size_t i = 0; i < special.size(); ++i) {
    if (special[i].empty() || special[i].size() > kMaxSpecialBytes)
      return concat("[mc.tokenizer.bad_special] special token ", i, " has ", special[i].size(),
                    " bytes, allowed [1, ", kMaxSpecialBytes, "]");
    for (std::size_t j = 0; j < i; ++j)
      if (special[j] == special[i])
        return concat("[mc.tokenizer.duplicate_special] special token ", i, " \"", special[i],
                      "\" repeats special token ", j);
  }
  return {};
}

/// Open-addressing map chunk bytes -> token ids, with its keys and values in two arenas. Grows
/// to `max_entries`, then starts over empty (text with unbounded distinct chunks cannot make it
/// grow without bound).
class ChunkCache {
 public:
  /// An empty cache that holds at most `max_entries` chunks before it starts over.
  explicit ChunkCache(std::size_t max_entries = std::size_t{1} << 18) : max_entries_(max_entries) {
    reset(1024);
  }
  /// The cached ids of `key` (hash `h`), or nullptr.
  const TokenId* find(std::string_view key, std::uint64_t h, std::size_t* num_ids) const {
    for (std::size_t i = h & mask_;; i = (i + 1) & mask_) {
      const Slot& s = slots_[i];
      if (s.hash == 0) return nullptr;
      if (s.hash == h && s.key_len == key.size() &&
          std::memcmp(keys_.data() + s.key_off, key.data(), key.size()) == 0) {
        *num_ids = s.ids_len;
        return ids_.data() + s.ids_off;
      }
    }
  }
  /// Stores `ids` for `key` (which must not be present and be at most kMaxChunkBytes long).
  void insert(std::string_view key, std::uint64_t h, std::span<const TokenId> ids) {
    if (2 * (used_ + 1) > slots_.size()) {
      if (slots_.size() < 2 * max_entries_) grow();
      else reset(slots_.size());
    }
    place(Slot{h, static_cast<std::uint32_t>(keys_.size()), static_cast<std::uint32_t>(ids_.size()),
               static_cast<std::uint16_t>(key.size()), static_cast<std::uint16_t>(ids.size())});
    keys_.append(key);
    ids_.insert(ids_.end(), ids.begin(), ids.end());
  }
  /// Number of cached chunks.
  std::size_t size() const { return used_; }
  /// Drops every entry.
  void clear() { reset(1024); }

 private:
  struct Slot {
    std::uint64_t hash = 0;
    std::uint32_t key_off = 0, ids_off = 0;
    std::uint16_t key_len = 0, ids_len = 0;
  };
  void place(const Slot& s) {
    std::size_t i = s.hash & mask_;
    while (slots_[i].hash != 0) i = (i + 1) & mask_;
    slots_[i] = s;
    ++used_;
  }
  void reset(std::size_t n) {
    slots_.assign(n, Slot{});
    mask_ = n - 1;
    used_ = 0;
    keys_.clear();
    ids_.clear();
  }
  void grow() {
    std::vector<Slot> old = std::move(slots_);
    slots_.assign(old.size() * 2, Slot{});
    mask_ = slots_.size() - 1;
    used_ = 0;
    for (const Slot& s : old)
      if (s.hash != 0) place(s);
  }
  std::vector<Slot> slots_;
  std::size_t mask_ = 0, used_ = 0, max_entries_;
  std::string keys_;
  std::vector<TokenId> ids_;
};

/// Max-heap over pair indices keyed by (count desc, left id asc, right id asc), with positions
/// so a count can move in either direction in O(log n). Ties resolve by the pair's ids, which
/// makes training independent of hash-map iteration order.
class PairHeap {
 public:
  /// Registers pair index `p` (dense, consecutive from 0) with its ids.
  void add_pair(TokenId left, TokenId right) {
    left_.push_back(left);
    right_.push_back(right);
    count_.push_back(0);
    pos_.push_back(-1);
  }
  /// Current count of pair `p`.
  std::int64_t count(std::size_t p) const { return count_[p]; }
  /// Ids of pair `p`.
  Merge pair(std::size_t p) const { return {left_[p], right_[p]}; }
  /// Sets the count of `p`, inserting, moving or removing (count <= 0) its heap entry.
  void set(std::size_t p, std::int64_t c) {
    count_[p] = c;
    if (c <= 0) {
      if (pos_[p] >= 0) remove_at(static_cast<std::size_t>(pos_[p]));
      return;
    }
    if (pos_[p] < 0) {
      pos_[p] = static_cast<std::int64_t>(heap_.size());
      heap_.push_back(static_cast<std::uint32_t>(p));
    }
    const auto i = static_cast<std::size_t>(pos_[p]);
    sift_down(sift_up(i));
  }
  /// True when no pair has a positive count.
  bool empty() const { return heap_.empty(); }
  /// The best pair.
  std::size_t top() const { return heap_.front(); }

 private:
  bool better(std::uint32_t a, std::uint32_t b) const {
    if (count_[a] != count_[b]) return count_[a] > count_[b];
    if (left_[a] != left_[b]) return left_[a] < left_[b];
    return right_[a] < right_[b];
  }
  void put(std::size_t i, std::uint32_t p) {
    heap_[i] = p;
    pos_[p] = static_cast<std::int64_t>(i);
  }
  std::size_t sift_up(std::size_t i) {
    const std::uint32_t p = heap_[i];
    while (i > 0) {
      const std::size_t parent = (i - 1) / 2;
      if (!better(p, heap_[parent])) break;
      put(i, heap_[parent]);
      i = parent;
    }
    put(i, p);
    return i;
  }
  void sift_down(std::size_t i) {
    const std::uint32_t p = heap_[i];
    const std::size_t n = heap_.size();
    for (;;) {
      std::size_t c = 2 * i + 1;
      if (c >= n) break;
      if (c + 1 < n && better(heap_[c + 1], heap_[c])) ++c;
      if (!better(heap_[c], p)) break;
      put(i, heap_[c]);
      i = c;
    }
    put(i, p);
  }
  void remove_at(std::size_t i) {
    const std::uint32_t p = heap_[i];
    pos_[p] = -1;
    const std::uint32_t last = heap_.back();
    heap_.pop_back();
    if (i < heap_.size()) {
      put(i, last);
      sift_down(sift_up(i));
    }
  }
  std::vector<TokenId> left_, right_;
  std::vector<std::int64_t> count_, pos_;
  std::vector<std::uint32_t> heap_;
};

}  // namespace detail

/// Splits `text` into pre-tokeniser chunks and calls `f(std::string_view chunk)` for each, in
/// order; the chunks concatenate to `text`. Rules (docs/concepts/tokenizer.md): a run of one
/// class (letters, digits or punctuation), optionally preceded by one space; a whitespace run
/// followed by non-whitespace leaves its last byte to start the next chunk (a space joins the
/// word, other whitespace stands alone); every chunk is cut to at most kMaxChunkBytes. Works on
/// any bytes, including NUL and invalid UTF-8.
template <class F>
void for_each_chunk(std::string_view text, F&& f) {
  using detail::ByteClass;
  const std::size_t n = text.size();
  std::size_t i = 0;
  while (i < n) {
    const std::size_t begin = i;
    ByteClass c = detail::byte_class(text[i]);
    if (c == ByteClass::kSpace && i + 1 < n && !detail::is_space(detail::byte_class(text[i + 1]))) {
      ++i;  // " word": the space leads the run that follows
      c = detail::byte_class(text[i]);
    }
    if (!detail::is_space(c)) {
      while (i < n && detail::byte_class(text[i]) == c) ++i;
    } else {
      while (i < n && detail::is_space(detail::byte_class(text[i]))) ++i;
      if (i < n && i - begin >= 2) --i;  // leave the last byte to the next chunk
    }
    for (std::size_t b = begin; b < i; b += kMaxChunkBytes)
      f(text.substr(b, std::min(kMaxChunkBytes, i - b)));
  }
}

/// A byte-level BPE vocabulary with its encoder and decoder. Encoding is lossless:
/// `decode(encode(x)) == x` for every byte string x. Special tokens are never produced by
/// encode() (their text is encoded as ordinary bytes); callers insert special_id() themselves.
/// encode() updates an internal chunk cache, so one Tokenizer must not encode on two threads at
/// once (copy it per thread); decode() and the accessors are safe to share.
class Tokenizer {
 public:
  /// A tokenizer with no merges and no special tokens (one token per byte).
  Tokenizer() : Tokenizer(std::vector<Merge>{}) {}

  /// A tokenizer from its merges (merge i creates id 256 + i) and special tokens (ids after the
  /// merges). Throws mc::Error(kInvalidArgument) "[mc.tokenizer.bad_merge]" etc. when invalid.
  explicit Tokenizer(std::vector<Merge> merges, std::vector<std::string> special_tokens = {}) {
    const std::string err = detail::validate_vocab(merges, special_tokens);
    MC_EXPECTS(err.empty(), Errc::kInvalidArgument, err);
    init(std::move(merges), std::move(special_tokens));
  }

  /// Trains on `documents` (chunks never span two documents). Deterministic: the same input and
  /// options give the same merges. Throws mc::Error "[mc.tokenizer.bad_vocab_size]" when
  /// vocab_size is outside [256 + #special, 2^20].
  static Tokenizer train(std::span<const std::string> documents, const BpeTrainOptions& opts = {}) {
    std::vector<std::string_view> views(documents.begin(), documents.end());
    return train_views(views, opts);
  }
  /// Trains on one byte string (see the overload over documents).
  static Tokenizer train(std::string_view corpus, const BpeTrainOptions& opts = {}) {
    return train_views(std::span<const std::string_view>(&corpus, 1), opts);
  }

  /// Token ids of `text`, appended to `out`.
  void encode(std::string_view text, std::vector<TokenId>& out) {
    for_each_chunk(text, [&](std::string_view chunk) {
      if (chunk.size() == 1) {
        out.push_back(static_cast<unsigned char>(chunk[0]));
        return;
      }
      const std::uint64_t h = detail::hash_bytes(chunk);
      std::size_t n = 0;
      if (const TokenId* ids = cache_.find(chunk, h, &n)) {
        out.insert(out.end(), ids, ids + n);
        return;
      }
      const std::size_t first = out.size();
      encode_chunk(chunk, out);
      cache_.insert(chunk, h, std::span<const TokenId>(out.data() + first, out.size() - first));
    });
  }
  /// Token ids of `text`.
  std::vector<TokenId> encode(std::string_view text) {
    std::vector<TokenId> out;
    out.reserve(text.size() / 3 + 16);
    encode(text, out);
    return out;
  }
  /// Token ids of `text` without the chunk cache (the reference the cached path is tested
  /// against; thread-safe).
  std::vector<TokenId> encode_uncached(std::string_view text) const {
    std::vector<TokenId> out;
    for_each_chunk(text, [&](std::string_view chunk) { encode_chunk(chunk, out); });
    return out;
  }

  /// Bytes of `ids` appended to `out`; throws mc::Error "[mc.tokenizer.bad_token]" naming the
  /// first id outside [0, vocab_size()) (nothing is appended then).
  void decode(std::span<const TokenId> ids, std::string& out) const {
    std::size_t bytes = 0;
    for (std::size_t i = 0; i < ids.size(); ++i) {
      MC_EXPECTS(ids[i] >= 0 && ids[i] < vocab_size(), Errc::kOutOfRange,
                 "[mc.tokenizer.bad_token] decode: ids[", i, "] = ", ids[i], " outside [0, ",
                 vocab_size(), ")");
      const auto t = static_cast<std::size_t>(ids[i]);
      bytes += offsets_[t + 1] - offsets_[t];
    }
    out.reserve(out.size() + bytes);
    for (const TokenId id : ids) {
      const auto t = static_cast<std::size_t>(id);
      out.append(bytes_, offsets_[t], offsets_[t + 1] - offsets_[t]);
    }
  }
  /// Bytes of `ids` (see the appending overload).
  std::string decode(std::span<const TokenId> ids) const {
    std::string out;
    decode(ids, out);
    return out;
  }
  /// Bytes of one token; throws "[mc.tokenizer.bad_token]" when out of range.
  std::string_view token_bytes(TokenId id) const {
    MC_EXPECTS(id >= 0 && id < vocab_size(), Errc::kOutOfRange, "[mc.tokenizer.bad_token] id ",
               id, " outside [0, ", vocab_size(), ")");
    const auto t = static_cast<std::size_t>(id);
    return std::string_view(bytes_).substr(offsets_[t], offsets_[t + 1] - offsets_[t]);
  }

  /// Total number of ids: 256 + merges + special tokens.
  TokenId vocab_size() const {
    return static_cast<TokenId>(kNumByteTokens + static_cast<TokenId>(merges_.size()) +
                                static_cast<TokenId>(special_.size()));
  }
  /// The merges in rank order; merge i created id 256 + i.
  const std::vector<Merge>& merges() const { return merges_; }
  /// The special tokens; special token i has id 256 + merges().size() + i.
  const std::vector<std::string>& special_tokens() const { return special_; }
  /// Id of the special token `text`; throws mc::Error "[mc.tokenizer.no_special]" if absent.
  TokenId special_id(std::string_view text) const {
    for (std::size_t i = 0; i < special_.size(); ++i)
      if (special_[i] == text)
        return static_cast<TokenId>(kNumByteTokens + static_cast<TokenId>(merges_.size() + i));
    throw Error(Errc::kInvalidArgument,
                detail::concat("[mc.tokenizer.no_special] no special token \"", text, "\""));
  }
  /// Number of chunks in the encode cache.
  std::size_t cache_size() const { return cache_.size(); }

  /// The `.mctok` bytes of this tokenizer (layout in docs/concepts/tokenizer.md).
  std::vector<unsigned char> to_bytes() const {
    std::size_t size = 24 + 8 * merges_.size() + 4;
    for (const std::string& s : special_) size += 4 + s.size();
    std::vector<unsigned char> out(size);
    std::size_t off = 0;
    auto put = [&](const void* p, std::size_t n) {
      std::memcpy(out.data() + off, p, n);
      off += n;
    };
    auto put32 = [&](std::uint32_t v) { put(&v, 4); };
    put(kTokenizerMagic.data(), kTokenizerMagic.size());
    put32(kTokenizerFormatVersion);
    put32(kPretokenizerVersion);
    put32(static_cast<std::uint32_t>(merges_.size()));
    put32(static_cast<std::uint32_t>(special_.size()));
    for (const Merge& m : merges_) {
      put32(static_cast<std::uint32_t>(m.left));
      put32(static_cast<std::uint32_t>(m.right));
    }
    for (const std::string& s : special_) {
      put32(static_cast<std::uint32_t>(s.size()));
      put(s.data(), s.size());
    }
    put32(detail::crc32c(out.data(), off));
    return out;
  }

  /// Parses `.mctok` bytes; throws mc::FormatError "[mc.tokenizer.<what>]" (truncated,
  /// bad_magic, version, pretokenizer, too_large, checksum, bad_merge, duplicate_merge,
  /// bad_special, duplicate_special, trailing_bytes) naming the problem. `path` is only used in
  /// messages.
  static Tokenizer from_bytes(std::span<const unsigned char> in,
                              const std::filesystem::path& path = "<memory>") {
    auto fail = [&](const std::string& what) {
      return FormatError(what + " in " + path.string(), path);
    };
    auto get32 = [&](std::size_t off) {
      std::uint32_t v;
      std::memcpy(&v, in.data() + off, 4);
      return v;
    };
    constexpr std::size_t kHeader = 24;
    if (in.size() < kHeader + 4)
      throw fail(detail::concat("[mc.tokenizer.truncated] file has ", in.size(),
                                " bytes, the header and checksum alone need ", kHeader + 4));
    if (std::memcmp(in.data(), kTokenizerMagic.data(), kTokenizerMagic.size()) != 0)
      throw fail("[mc.tokenizer.bad_magic] not a MegaContext tokenizer file (wrong magic bytes)");
    if (const auto v = get32(8); v != kTokenizerFormatVersion)
      throw fail(detail::concat("[mc.tokenizer.version] file format version ", v,
                                ", this build reads version ", kTokenizerFormatVersion));
    if (const auto v = get32(12); v != kPretokenizerVersion)
      throw fail(detail::concat("[mc.tokenizer.pretokenizer] pre-tokeniser version ", v,
                                ", this build implements version ", kPretokenizerVersion));
    const std::uint64_t num_merges = get32(16), num_special = get32(20);
    if (num_merges + num_special + kNumByteTokens > static_cast<std::uint64_t>(kMaxVocabSize) ||
        num_special > static_cast<std::uint64_t>(kMaxSpecialTokens))
      throw fail(detail::concat("[mc.tokenizer.too_large] ", num_merges, " merges and ",
                                num_special, " special tokens; the vocabulary limit is ",
                                kMaxVocabSize, " ids with at most ", kMaxSpecialTokens,
                                " special tokens"));
    // Sizes are bounded above, so none of these sums can overflow.
    std::size_t off = kHeader + 8 * num_merges;
    if (in.size() < off + 4)
      throw fail(detail::concat("[mc.tokenizer.truncated] file has ", in.size(), " bytes, ",
                                num_merges, " merges need ", off + 4));
    std::vector<std::string> special(num_special);
    for (std::size_t i = 0; i < num_special; ++i) {
      if (in.size() < off + 4 + 4)
        throw fail(detail::concat("[mc.tokenizer.truncated] file ends in special token ", i,
                                  " at byte ", off));
      const std::uint32_t len = get32(off);
      off += 4;
      if (len == 0 || len > kMaxSpecialBytes)
        throw fail(detail::concat("[mc.tokenizer.bad_special] special token ", i, " has ", len,
                                  " bytes, allowed [1, ", kMaxSpecialBytes, "]"));
      if (in.size() < off + len + 4)
        throw fail(detail::concat("[mc.tokenizer.truncated] file ends in special token ", i,
                                  " at byte ", off));
      special[i].assign(reinterpret_cast<const char*>(in.data() + off), len);
      off += len;
    }
    if (in.size() != off + 4)
      throw fail(detail::concat("[mc.tokenizer.trailing_bytes] ", in.size() - off - 4,
                                " bytes after the last record"));
    const std::uint32_t stored = get32(off), crc = detail::crc32c(in.data(), off);
    if (stored != crc)
      throw fail(detail::concat("[mc.tokenizer.checksum] checksum mismatch: stored 0x", std::hex,
                                stored, ", computed 0x", crc));
    std::vector<Merge> merges(num_merges);
    for (std::size_t i = 0; i < num_merges; ++i) {
      // Ids above 2^31 become negative here and are rejected by validate_vocab.
      merges[i].left = static_cast<TokenId>(get32(kHeader + 8 * i));
      merges[i].right = static_cast<TokenId>(get32(kHeader + 8 * i + 4));
    }
    if (const std::string err = detail::validate_vocab(merges, special); !err.empty())
      throw fail(err);
    Tokenizer t;
    t.init(std::move(merges), std::move(special));
    return t;
  }

  /// Writes the tokenizer to `path` atomically: a temporary file in the same folder is written,
  /// fsynced and renamed over `path`. Throws mc::IoError "[mc.tokenizer.write_failed]" etc.
  void save(const std::filesystem::path& path) const {
    const auto bytes = to_bytes();
    const std::filesystem::path tmp =
        path.string() + ".tmp." + std::to_string(static_cast<long>(::getpid()));
    const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
      throw IoError(detail::concat("[mc.tokenizer.open_failed] cannot create ", tmp.string(),
                                   ": ", std::strerror(errno)), tmp);
    std::size_t done = 0;
    while (done < bytes.size()) {
      const ssize_t w = ::write(fd, bytes.data() + done, bytes.size() - done);
      if (w <= 0) {
        const int e = errno;
        ::close(fd);
        ::unlink(tmp.c_str());
        throw IoError(detail::concat("[mc.tokenizer.write_failed] cannot write ", tmp.string(),
                                     ": ", std::strerror(e)), tmp, static_cast<std::int64_t>(done));
      }
      done += static_cast<std::size_t>(w);
    }
    if (::fsync(fd) != 0 || ::close(fd) != 0) {
      ::unlink(tmp.c_str());
      throw IoError(detail::concat("[mc.tokenizer.sync_failed] cannot fsync ", tmp.string(), ": ",
                                   std::strerror(errno)), tmp);
    }
    if (::rename(tmp.c_str(), path.c_str()) != 0) {
      const int e = errno;
      ::unlink(tmp.c_str());
      throw IoError(detail::concat("[mc.tokenizer.rename_failed] cannot rename ", tmp.string(),
                                   " to ", path.string(), ": ", std::strerror(e)), path);
    }
  }

  /// Reads a tokenizer written by save(); throws mc::IoError "[mc.tokenizer.open_failed]" when
  /// the file cannot be read and mc::FormatError (see from_bytes) when it is corrupt.
  static Tokenizer load(const std::filesystem::path& path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0)
      throw IoError(detail::concat("[mc.tokenizer.open_failed] cannot open ", path.string(), ": ",
                                   std::strerror(errno)), path);
    std::vector<unsigned char> bytes;
    unsigned char buf[1 << 16];
    for (;;) {
      const ssize_t r = ::read(fd, buf, sizeof buf);
      if (r < 0) {
        const int e = errno;
        ::close(fd);
        throw IoError(detail::concat("[mc.tokenizer.read_failed] cannot read ", path.string(),
                                     ": ", std::strerror(e)), path,
                      static_cast<std::int64_t>(bytes.size()));
      }
      if (r == 0) break;
      bytes.insert(bytes.end(), buf, buf + r);
    }
    ::close(fd);
    return from_bytes(bytes, path);
  }

 private:
  void init(std::vector<Merge> merges, std::vector<std::string> special) {
    merges_ = std::move(merges);
    special_ = std::move(special);
    ranks_.clear();
    ranks_.reserve(merges_.size() * 2);
    for (std::size_t i = 0; i < merges_.size(); ++i)
      ranks_.emplace(detail::pair_key(merges_[i].left, merges_[i].right),
                     static_cast<TokenId>(i));
    const auto n = static_cast<std::size_t>(vocab_size());
    bytes_.clear();
    offsets_.assign(1, 0);
    offsets_.reserve(n + 1);
    for (int b = 0; b < kNumByteTokens; ++b) {
      bytes_.push_back(static_cast<char>(b));
      offsets_.push_back(bytes_.size());
    }
    for (const Merge& m : merges_) {
      // Merges only refer to earlier ids (validated), whose bytes are already in place.
      for (const TokenId part : {m.left, m.right}) {
        const auto p = static_cast<std::size_t>(part);
        const std::size_t b = offsets_[p], e = offsets_[p + 1];
        bytes_.append(bytes_, b, e - b);
      }
      offsets_.push_back(bytes_.size());
    }
    for (const std::string& s : special_) {
      bytes_ += s;
      offsets_.push_back(bytes_.size());
    }
    cache_.clear();
  }

  // Classic BPE on one chunk: repeatedly merge every occurrence of the lowest-rank adjacent
  // pair. Chunks are at most kMaxChunkBytes long, so the quadratic scan is bounded.
  void encode_chunk(std::string_view chunk, std::vector<TokenId>& out) const {
    std::array<TokenId, kMaxChunkBytes> parts;
    std::size_t n = chunk.size();
    for (std::size_t i = 0; i < n; ++i) parts[i] = static_cast<unsigned char>(chunk[i]);
    while (n >= 2) {
      TokenId best = -1;
      for (std::size_t i = 0; i + 1 < n; ++i) {
        const auto it = ranks_.find(detail::pair_key(parts[i], parts[i + 1]));
        if (it != ranks_.end() && (best < 0 || it->second < best)) best = it->second;
      }
      if (best < 0) break;
      const Merge m = merges_[static_cast<std::size_t>(best)];
      const TokenId id = kNumByteTokens + best;
      std::size_t w = 0;
      for (std::size_t r = 0; r < n; ++r) {
        if (r + 1 < n && parts[r] == m.left && parts[r + 1] == m.right) {
          parts[w++] = id;
          ++r;
        } else {
          parts[w++] = parts[r];
        }
      }
      n = w;
    }
    out.insert(out.end(), parts.begin(), parts.begin() + static_cast<std::ptrdiff_t>(n));
  }

  static Tokenizer train_views(std::span<const std::string_view> docs,
                               const BpeTrainOptions& opts) {
    const auto num_special = static_cast<std::int64_t>(opts.special_tokens.size());
    MC_EXPECTS(opts.vocab_size >= kNumByteTokens + num_special && opts.vocab_size <= kMaxVocabSize,
               Errc::kInvalidArgument, "[mc.tokenizer.bad_vocab_size] vocab_size = ",
               opts.vocab_size, " outside [", kNumByteTokens + num_special, ", ", kMaxVocabSize,
               "] (256 bytes + ", num_special, " special tokens at least)");
    MC_EXPECTS(opts.min_pair_count >= 1, Errc::kInvalidArgument,
               "[mc.tokenizer.bad_min_pair_count] min_pair_count = ", opts.min_pair_count,
               " must be >= 1");
    const std::string err = detail::validate_vocab({}, opts.special_tokens);
    MC_EXPECTS(err.empty(), Errc::kInvalidArgument, err);
    const std::int64_t max_merges = opts.vocab_size - kNumByteTokens - num_special;

    // 1. Distinct chunks with their frequencies. Single bytes hold no pair and are skipped.
    struct Word {
      std::vector<TokenId> ids;
      std::int64_t count;
    };
    std::vector<Word> words;
    {
      std::unordered_map<std::string_view, std::int64_t> freq;
      for (const std::string_view doc : docs)
        for_each_chunk(doc, [&](std::string_view c) {
          if (c.size() >= 2) ++freq[c];
        });
      std::vector<std::pair<std::string_view, std::int64_t>> sorted(freq.begin(), freq.end());
      std::sort(sorted.begin(), sorted.end());  // a fixed word order, whatever the hash map did
      words.reserve(sorted.size());
      for (const auto& [s, c] : sorted) {
        Word w{std::vector<TokenId>(s.size()), c};
        for (std::size_t i = 0; i < s.size(); ++i) w.ids[i] = static_cast<unsigned char>(s[i]);
        words.push_back(std::move(w));
      }
    }

    // 2. Pair counts, the index pair -> words that contain it, and the heap.
    std::unordered_map<std::uint64_t, std::uint32_t> pair_index;
    std::vector<std::vector<std::uint32_t>> where;  // may hold stale or repeated word ids
    detail::PairHeap heap;
    auto index_of = [&](TokenId a, TokenId b) -> std::uint32_t {
      const auto [it, fresh] =
          pair_index.emplace(detail::pair_key(a, b), static_cast<std::uint32_t>(where.size()));
      if (fresh) {
        where.emplace_back();
        heap.add_pair(a, b);
      }
      return it->second;
    };
    {
      std::vector<std::int64_t> counts;
      for (std::size_t w = 0; w < words.size(); ++w)
        for (std::size_t i = 0; i + 1 < words[w].ids.size(); ++i) {
          const std::uint32_t p = index_of(words[w].ids[i], words[w].ids[i + 1]);
          if (counts.size() <= p) counts.resize(p + 1, 0);
          counts[p] += words[w].count;
          if (where[p].empty() || where[p].back() != w)
            where[p].push_back(static_cast<std::uint32_t>(w));
        }
      for (std::size_t p = 0; p < counts.size(); ++p) heap.set(p, counts[p]);
    }

    // 3. Greedy merges. Each merge rewrites only the words that contain the pair: their old
    // pairs are subtracted and their new pairs added (exact even for overlapping runs like
    // "aaa"), the deltas are summed per pair, and each changed pair moves once in the heap.
    std::vector<Merge> merges;
    merges.reserve(static_cast<std::size_t>(max_merges));
    std::vector<std::int64_t> delta;
    std::vector<std::uint32_t> touched;
    std::vector<std::int64_t> seen_at(words.size(), -1);
    auto add_delta = [&](std::uint32_t p, std::int64_t d) {
      if (delta.size() <= p) delta.resize(static_cast<std::size_t>(p) + 1, 0);
      if (delta[p] == 0) touched.push_back(p);
      delta[p] += d;
    };
    std::vector<TokenId> next;
    while (static_cast<std::int64_t>(merges.size()) < max_merges && !heap.empty()) {
      const std::size_t best = heap.top();
      if (heap.count(best) < opts.min_pair_count) break;
      const Merge m = heap.pair(best);
      const TokenId id = kNumByteTokens + static_cast<TokenId>(merges.size());
      const auto stamp = static_cast<std::int64_t>(merges.size());
      merges.push_back(m);
      std::vector<std::uint32_t> list = std::move(where[best]);
      where[best].clear();
      touched.clear();
      for (const std::uint32_t w : list) {
        if (seen_at[w] == stamp) continue;
        seen_at[w] = stamp;
        Word& word = words[w];
        auto& ids = word.ids;
        next.clear();
        for (std::size_t r = 0; r < ids.size(); ++r) {
          if (r + 1 < ids.size() && ids[r] == m.left && ids[r + 1] == m.right) {
            next.push_back(id);
            ++r;
          } else {
            next.push_back(ids[r]);
          }
        }
        if (next.size() == ids.size()) continue;  // stale entry: the pair is gone from this word
        for (std::size_t i = 0; i + 1 < ids.size(); ++i)
          add_delta(index_of(ids[i], ids[i + 1]), -word.count);
        for (std::size_t i = 0; i + 1 < next.size(); ++i) {
          const std::uint32_t p = index_of(next[i], next[i + 1]);
          add_delta(p, word.count);
          if (next[i] == id || next[i + 1] == id) where[p].push_back(w);
        }
        ids.swap(next);
      }
      for (const std::uint32_t p : touched) {
        if (delta[p] != 0) heap.set(p, heap.count(p) + delta[p]);
        delta[p] = 0;
      }
      heap.set(best, 0);
    }
    Tokenizer t;
    t.init(std::move(merges), opts.special_tokens);
    return t;
  }

  std::vector<Merge> merges_;
  std::vector<std::string> special_;
  std::unordered_map<std::uint64_t, TokenId> ranks_;  // pair -> merge rank
  std::string bytes_;                                 // every token's bytes, back to back
  std::vector<std::size_t> offsets_;                  // token t: bytes_[offsets_[t], offsets_[t+1])
  detail::ChunkCache cache_;
};

}  // namespace mc
