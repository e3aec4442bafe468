// SPDX-License-Identifier: Apache-2.0
// The MegaContext tree: the whole history at every level of detail. LOD0 holds token ids; a gist
// at level l summarises K nodes of level l-1 (K^l tokens) and exists only once its whole span is
// complete, so the incomplete tail stays at finer detail. It is append-only and sits at the start
// of the data flow: tokens -> Tree::append -> gists -> WorkingContext.
#pragma once

#include "megacontext/detail/eigen.hpp"

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <span>
#include <type_traits>
#include <utility>
#include <vector>

#include "megacontext/config.hpp"
#include "megacontext/disk_storage.hpp"
#include "megacontext/error.hpp"
#include "megacontext/gister.hpp"
#include "megacontext/io/tree_file.hpp"
#include "megacontext/lod.hpp"
#include "megacontext/tree_storage.hpp"

namespace mc {

/// A contiguous run of nodes of one level: indices [begin, end).
struct NodeRange {
  std::int32_t lod = 0;    ///< level of every node in the range
  std::int64_t begin = 0;  ///< first index
  std::int64_t end = 0;    ///< one past the last index
  /// Number of nodes.
  std::int64_t size() const { return end - begin; }
  friend bool operator==(const NodeRange&, const NodeRange&) = default;
};

/// Append-only multi-level history of Config C kept by Storage (MemoryStorage or DiskStorage).
template <ConfigType C, TreeStorage Storage = MemoryStorage>
class Tree {
 public:
  using Config = C;
  using Scalar = typename C::Scalar;
  using L = Lod<C>;
  /// Read-only row-major view of gists [rows, dim] living in the tree's storage.
  using GistView = Eigen::Map<const RowMatrix<Scalar>>;

  static constexpr int K = C::K;
  static constexpr int Depth = C::Depth;
  /// Gist groups handed to the gister per call: bounds the scratch of a huge append.
  static constexpr std::int64_t kGistBatch = 256;

  /// An empty in-memory tree whose gists have dimension `dim` (0: ids only, no gists stored).
  explicit Tree(std::int64_t dim)
    requires std::is_same_v<Storage, MemoryStorage>
      : storage_(make_layout(dim)) {}

  /// Creates an empty tree of gist dimension `dim` in directory `dir` and opens it for writing.
  static Tree create(const std::filesystem::path& dir, std::int64_t dim,
                     const DiskCreateOptions& opts = {})
    requires std::is_same_v<Storage, DiskStorage>
  {
    return Tree(DiskStorage::create(dir, make_layout(dim), opts));
  }

  /// Opens the tree in `dir`. Throws mc::Error(kConfigMismatch) when the file was written with a
  /// different K, Depth or Scalar, or with a dim other than `expected_dim` (when >= 0).
  static Tree open(const std::filesystem::path& dir, const DiskOpenOptions& opts = {},
                   std::int64_t expected_dim = -1)
    requires std::is_same_v<Storage, DiskStorage>
  {
    DiskStorage s = DiskStorage::open(dir, opts);
    const io::TreeLayout& l = s.layout();
    const auto where = dir.string();
    MC_EXPECTS(l.k == static_cast<std::uint32_t>(K), Errc::kConfigMismatch,
               "[mc.tree.config_mismatch] ", where, " was written with K = ", l.k,
               ", this Tree has K = ", K);
    MC_EXPECTS(l.depth == static_cast<std::uint32_t>(Depth), Errc::kConfigMismatch,
               "[mc.tree.config_mismatch] ", where, " was written with Depth = ", l.depth,
               ", this Tree has Depth = ", Depth);
    MC_EXPECTS(l.dim == 0 || l.dtype == io::dtype_of<Scalar>(), Errc::kConfigMismatch,
               "[mc.tree.config_mismatch] ", where, " stores gists as dtype code ",
               static_cast<int>(l.dtype), ", this Tree's Scalar is dtype code ",
               static_cast<int>(io::dtype_of<Scalar>()));
    MC_EXPECTS(expected_dim < 0 || l.dim == static_cast<std::uint64_t>(expected_dim),
               Errc::kConfigMismatch, "[mc.tree.config_mismatch] ", where,
               " was written with dim = ", l.dim, ", expected dim = ", expected_dim);
    return Tree(std::move(s));
  }

  /// Gist dimension (0 for an ids-only tree).
  std::int64_t dim() const { return static_cast<std::int64_t>(storage_.layout().dim); }
  /// Tokens in the tree (all committed).
  std::int64_t num_tokens() const { return static_cast<std::int64_t>(storage_.committed_tokens()); }
  /// Complete nodes at level `lod`.
  std::int64_t level_size(int lod) const {
    check_lod(lod, "level_size");
    return L::level_size(num_tokens(), lod);
  }
  /// True when node `n` exists (its whole span has been appended).
  bool contains(Node n) const {
    return L::is_valid(n) && n.index < L::level_size(num_tokens(), n.lod);
  }
  /// Token range of node `n`; throws when it does not exist.
  TokenSpan span(Node n) const {
    check_node(n, "span");
    return L::tokens(n);
  }
  /// Parent of `n`; throws when `n` is at the top level or the parent is not complete yet.
  Node parent(Node n) const {
    check_node(n, "parent");
    MC_EXPECTS(n.lod < Depth, Errc::kOutOfRange, "[mc.tree.no_parent] node {lod ", n.lod,
               ", index ", n.index, "} is at the top level (Depth = ", Depth, ")");
    const Node p = L::parent(n);
    check_node(p, "parent");
    return p;
  }
  /// The K children of `n` (lod >= 1); they always exist when `n` does.
  NodeRange children(Node n) const {
    check_node(n, "children");
    MC_EXPECTS(n.lod >= 1, Errc::kOutOfRange, "[mc.tree.no_children] node {lod 0, index ",
               n.index, "} is a token and has no children");
    return {n.lod - 1, L::first_child(n), L::first_child(n) + K};
  }

  /// Token ids [begin, end) (zero-copy; valid until the next append).
  std::span<const TokenId> tokens(std::int64_t begin, std::int64_t end) const {
    check_range(0, begin, end, "tokens");
    const auto* p = reinterpret_cast<const TokenId*>(storage_.data(0));
    return {p + begin, static_cast<std::size_t>(end - begin)};
  }
  /// Gists [begin, end) of level `lod` >= 1 as a [end - begin, dim] row-major view (zero-copy;
  /// valid until the next append).
  GistView gists(int lod, std::int64_t begin, std::int64_t end) const {
    MC_EXPECTS(lod >= 1 && lod <= Depth, Errc::kOutOfRange, "[mc.tree.bad_lod] gists(lod = ",
               lod, "): gist levels are 1..", Depth);
    MC_EXPECTS(dim() > 0, Errc::kState,
               "[mc.tree.no_gists] this tree stores ids only (dim = 0); it has no gist vectors");
    check_range(lod, begin, end, "gists");
    const auto* p = reinterpret_cast<const Scalar*>(storage_.data(lod));
    return GistView(p + begin * dim(), end - begin, dim());
  }
  /// The gist of node `n` (lod >= 1) as a [1, dim] view.
  GistView gist(Node n) const { return gists(n.lod, n.index, n.index + 1); }

  /// Appends token ids to an ids-only tree (dim = 0) and commits them.
  void append(std::span<const TokenId> ids) {
    MC_EXPECTS(dim() == 0, Errc::kInvalidArgument, "[mc.tree.needs_gister] this tree stores ",
               "gists of dim = ", dim(), "; call append(ids, gister)");
    append_ids(ids);
    storage_.commit(static_cast<std::uint64_t>(num_tokens_staged_));
  }

  /// Appends token ids, builds every gist whose span becomes complete with `gister`, and
  /// commits. When this returns, all appended tokens survive a crash; when it throws, none do.
  template <class G>
    requires Gister<G, C>
  void append(std::span<const TokenId> ids, G& gister) {
    MC_EXPECTS(static_cast<std::int64_t>(gister.dim()) == dim(), Errc::kInvalidArgument,
               "[mc.tree.gister_dim] gister.dim() = ", gister.dim(), " but the tree stores dim = ",
               dim());
    // A bad id in an incomplete block would only surface when that block completes, in a later
    // append that could then never succeed: check against the vocabulary before staging.
    if constexpr (requires { gister.vocab(); }) {
      const auto vocab = static_cast<std::int64_t>(gister.vocab());
      const auto bad =
          std::find_if(ids.begin(), ids.end(), [&](TokenId t) { return t >= vocab; });
      MC_EXPECTS(bad == ids.end(), Errc::kOutOfRange, "[mc.tree.bad_token] token id ",
                 bad == ids.end() ? 0 : *bad, " at position ", bad - ids.begin(),
                 " is outside the gister's vocabulary [0, ", vocab, ")");
    }
    const std::int64_t old_n = num_tokens();
    append_ids(ids);
    const std::int64_t new_n = num_tokens_staged_;
    if (dim() > 0) build_gists(old_n, new_n, gister);
    storage_.commit(static_cast<std::uint64_t>(new_n));
  }

  /// Drops the tokens from `num_tokens` on and every gist whose span reaches past them, and
  /// commits that; gists of spans that end before the cut are kept untouched, so appending
  /// again rebuilds only the gists the change affects. Crash-safe like append(): after a kill
  /// the tree holds either the old or the truncated history. Throws mc::Error
  /// ([mc.tree.bad_truncate]) for a count outside [0, num_tokens()].
  void truncate(std::int64_t num_tokens) {
    MC_EXPECTS(!storage_.read_only(), Errc::kState,
               "[mc.tree.read_only] cannot truncate: the tree was opened read-only");
    MC_EXPECTS(num_tokens >= 0 && num_tokens <= this->num_tokens(), Errc::kInvalidArgument,
               "[mc.tree.bad_truncate] truncate(", num_tokens, ") outside [0, ",
               this->num_tokens(), "]");
    storage_.rollback(static_cast<std::uint64_t>(num_tokens));
    num_tokens_staged_ = num_tokens;
  }

  /// Checks the committed state: storage checksums (disk) and level sizes.
  void verify() const { storage_.verify(); }

  /// The storage policy object (e.g. DiskStorage::recovery(), DiskStorage::refresh()).
  const Storage& storage() const { return storage_; }
  /// Mutable storage access (readers call storage().refresh() through this).
  Storage& storage() { return storage_; }

 private:
  explicit Tree(Storage s) : storage_(std::move(s)), num_tokens_staged_(num_tokens()) {}

  static io::TreeLayout make_layout(std::int64_t dim) {
    MC_EXPECTS(dim >= 0 && static_cast<std::uint64_t>(dim) <= io::kMaxDim, Errc::kInvalidArgument,
               "[mc.tree.bad_dim] dim = ", dim, " must be in [0, 65536]");
    io::TreeLayout l;
    l.k = K;
    l.depth = Depth;
    l.dim = static_cast<std::uint64_t>(dim);
    l.dtype = dim == 0 ? io::Dtype::kNone : io::dtype_of<Scalar>();
    return l;
  }

  void check_lod(int lod, const char* fn) const {
    MC_EXPECTS(lod >= 0 && lod <= Depth, Errc::kOutOfRange, "[mc.tree.bad_lod] ", fn, "(lod = ",
               lod, "): levels are 0..", Depth);
  }
  void check_node(Node n, const char* fn) const {
    check_lod(n.lod, fn);
    MC_EXPECTS(n.index >= 0 && n.index < L::level_size(num_tokens(), n.lod), Errc::kOutOfRange,
               "[mc.tree.no_node] ", fn, ": node {lod ", n.lod, ", index ", n.index,
               "} does not exist; level ", n.lod, " has ", L::level_size(num_tokens(), n.lod),
               " complete nodes");
  }
  void check_range(int lod, std::int64_t begin, std::int64_t end, const char* fn) const {
    const std::int64_t size = L::level_size(num_tokens(), lod);
    MC_EXPECTS(0 <= begin && begin <= end && end <= size, Errc::kOutOfRange, "[mc.tree.bad_range] ",
               fn, "(", begin, ", ", end, ") at level ", lod, " outside [0, ", size, "]");
  }

  void append_ids(std::span<const TokenId> ids) {
    MC_EXPECTS(!storage_.read_only(), Errc::kState,
               "[mc.tree.read_only] cannot append: the tree was opened read-only");
    // Whatever a failed append staged past the commit is overwritten from the commit on.
    num_tokens_staged_ = num_tokens();
    const auto n = static_cast<std::int64_t>(ids.size());
    MC_EXPECTS(static_cast<std::uint64_t>(num_tokens() + n) <= io::kMaxTokens,
               Errc::kInvalidArgument, "[mc.tree.too_many_tokens] appending ", n, " tokens to ",
               num_tokens(), " exceeds the 2^40 limit");
    const auto bad = std::find_if(ids.begin(), ids.end(), [](TokenId t) { return t < 0; });
    MC_EXPECTS(bad == ids.end(), Errc::kInvalidArgument, "[mc.tree.bad_token] token id ",
               bad == ids.end() ? 0 : *bad, " at position ", bad - ids.begin(),
               " is negative");
    if (n == 0) return;
    const std::uint64_t end_bytes = static_cast<std::uint64_t>(num_tokens() + n) * 4;
    std::byte* base = storage_.reserve(0, end_bytes);
    std::memcpy(base + num_tokens() * 4, ids.data(), static_cast<std::size_t>(n) * 4);
    num_tokens_staged_ = num_tokens() + n;
  }

  template <class G>
  void build_gists(std::int64_t old_n, std::int64_t new_n, G& gister) {
    const std::int64_t d = dim();
    const auto row_bytes = static_cast<std::uint64_t>(d) * sizeof(Scalar);
    for (int lod = 1; lod <= Depth; ++lod) {
      const std::int64_t first = L::level_size(old_n, lod), last = L::level_size(new_n, lod);
      if (first == last) break;  // no new node here means none above either
      auto* out_base = reinterpret_cast<Scalar*>(
          storage_.reserve(lod, static_cast<std::uint64_t>(last) * row_bytes));
      // Children of level lod-1 are already contiguous in storage: pass them zero-copy.
      const auto* below = reinterpret_cast<const Scalar*>(storage_.data(lod - 1));
      const auto* ids = reinterpret_cast<const TokenId*>(storage_.data(0));
      for (std::int64_t b = first; b < last; b += kGistBatch) {
        const std::int64_t n = std::min(kGistBatch, last - b);
        const Scalar* in = nullptr;
        if (lod == 1) {
          scratch_.resize(static_cast<std::size_t>(n * K * d));
          gister.embed(ids + b * K, n * K, scratch_.data());
          in = scratch_.data();
        } else {
          in = below + b * K * d;
        }
        gister.gist(lod, in, n, out_base + b * d);
      }
    }
  }

  Storage storage_;
  std::int64_t num_tokens_staged_ = 0;
  std::vector<Scalar> scratch_;
};

/// A tree kept in process memory.
template <ConfigType C>
using MemoryTree = Tree<C, MemoryStorage>;
/// A tree kept in a directory of memory-mapped files.
template <ConfigType C>
using DiskTree = Tree<C, DiskStorage>;

}  // namespace mc
