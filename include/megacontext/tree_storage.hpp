// SPDX-License-Identifier: Apache-2.0
// Where a Tree keeps its bytes. A storage policy holds one append-only byte stream per level
// (LOD0 token ids, then the gists of each level) and a commit: the token count up to which
// every level is complete and durable. The Tree does the maths; the storage only keeps bytes.
// This header holds the TreeStorage concept and the in-memory policy; disk_storage.hpp the file one.
#pragma once

#include <algorithm>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "megacontext/error.hpp"
#include "megacontext/io/tree_file.hpp"

namespace mc {

/// What a Tree needs from its storage policy (see MemoryStorage for the reference model).
///  - `layout()`: K, Depth, dim, dtype of the stored tree;
///  - `committed_tokens()`: the token count of the last commit;
///  - `data(lod)`: base of level `lod`'s bytes (valid until the next `reserve` of that level);
///  - `reserve(lod, bytes)`: make room for `bytes` bytes in level `lod`, return its base;
///  - `commit(num_tokens)`: make the first `num_tokens` tokens and all their complete gists the
///    state that survives a crash; bytes written past a commit are ignored until the next one;
///  - `rollback(num_tokens)`: make a shorter prefix of the commit the commit (Tree::truncate);
///  - `verify()`: check the committed bytes (checksums where the storage has them);
///  - `read_only()`: whether `reserve` and `commit` are refused.
template <class S>
concept TreeStorage = requires(S& s, const S& cs, int lod, std::uint64_t n) {
  { cs.layout() } -> std::convertible_to<io::TreeLayout>;
  { cs.committed_tokens() } -> std::convertible_to<std::uint64_t>;
  { cs.data(lod) } -> std::same_as<const std::byte*>;
  { s.reserve(lod, n) } -> std::same_as<std::byte*>;
  s.commit(n);
  s.rollback(n);
  cs.verify();
  { cs.read_only() } -> std::convertible_to<bool>;
};

/// Storage policy that keeps every level in process memory (std::vector); nothing persists.
class MemoryStorage {
 public:
  /// An empty in-memory tree of the given layout.
  explicit MemoryStorage(const io::TreeLayout& layout)
      : layout_(layout), levels_(layout.depth + 1) {}

  /// K, Depth, dim and dtype.
  const io::TreeLayout& layout() const { return layout_; }
  /// Tokens of the last commit.
  std::uint64_t committed_tokens() const { return committed_; }
  /// Base of level `lod`; valid until the next reserve() of that level.
  const std::byte* data(int lod) const { return levels_[static_cast<std::size_t>(lod)].data(); }
  /// Grows level `lod` to hold `bytes` bytes (amortised doubling) and returns its base.
  std::byte* reserve(int lod, std::uint64_t bytes) {
    auto& v = levels_[static_cast<std::size_t>(lod)];
    if (v.size() < bytes) {
      if (v.capacity() < bytes) v.reserve(std::max<std::size_t>(bytes, 2 * v.capacity()));
      v.resize(bytes);
    }
    return v.data();
  }
  /// Records `num_tokens` as committed (memory needs no ordering beyond program order).
  void commit(std::uint64_t num_tokens) { committed_ = num_tokens; }
  /// Makes the first `num_tokens` (at most the commit) the commit; later appends overwrite.
  void rollback(std::uint64_t num_tokens) {
    MC_EXPECTS(num_tokens <= committed_, Errc::kInvalidArgument,
               "[mc.tree.bad_truncate] rollback to ", num_tokens, " tokens is above the commit (",
               committed_, ")");
    committed_ = num_tokens;
  }
  /// Checks that every level holds the bytes the commit needs.
  void verify() const {
    for (std::uint32_t l = 0; l <= layout_.depth; ++l) {
      const auto need = layout_.level_bytes(static_cast<int>(l), committed_);
      MC_EXPECTS(levels_[l].size() >= need, Errc::kFormat, "[mc.tree.truncated] level ", l,
                 " holds ", levels_[l].size(), " bytes, commit needs ", need);
    }
  }
  /// Memory storage is always writable.
  bool read_only() const { return false; }

 private:
  io::TreeLayout layout_;
  std::vector<std::vector<std::byte>> levels_;
  std::uint64_t committed_ = 0;
};

static_assert(TreeStorage<MemoryStorage>);

}  // namespace mc
