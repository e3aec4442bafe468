// SPDX-License-Identifier: Apache-2.0
// How a Tree turns K children into one gist. A gister embeds token ids (LOD0 -> vectors of dim d)
// and maps groups of K child vectors to one vector per group; the Tree calls it in batches when
// blocks complete. MeanPoolGister is the reference gister (an embedding table and a mean); the
// learned GistNet plugs in through the same concept.
#pragma once

#include "megacontext/detail/eigen.hpp"

#include <concepts>
#include <cstdint>
#include <random>

#include "megacontext/config.hpp"
#include "megacontext/error.hpp"

namespace mc {

/// A row-major matrix of gists or embeddings, one row per entry.
template <class Scalar>
using RowMatrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// What a Tree needs to build gists of Config C:
///  - `g.dim()`: the gist dimension d;
///  - `g.embed(ids, n, out)`: writes the embeddings of `n` token ids to `out` [n, d] (row-major);
///  - `g.gist(lod, in, n, out)`: for n groups of K consecutive rows of `in` [n*K, d], writes one
///    gist per group to `out` [n, d]; `lod` (>= 1) is the level of the gists produced.
/// `in` and `out` never alias. Optional: `g.vocab()`; when present, Tree::append refuses ids
/// >= vocab() before staging anything (a bad id in an incomplete block would otherwise surface
/// only when that block completes, in a later append).
template <class G, class C>
concept Gister = ConfigType<C> && requires(G& g, const TokenId* ids, const typename C::Scalar* in,
                                           typename C::Scalar* out, std::int64_t n, int lod) {
  { g.dim() } -> std::convertible_to<std::int64_t>;
  g.embed(ids, n, out);
  g.gist(lod, in, n, out);
};

/// Reference gister: embeddings from a table [vocab, d] and gists as the mean of the K children.
template <ConfigType C>
class MeanPoolGister {
 public:
  using Scalar = typename C::Scalar;

  /// Uses `table` [vocab, d] as the token embedding table.
  explicit MeanPoolGister(RowMatrix<Scalar> table) : table_(std::move(table)) {
    MC_EXPECTS(table_.rows() > 0 && table_.cols() > 0, Errc::kInvalidArgument,
               "[mc.gister.empty_table] embedding table is ", table_.rows(), " x ",
               table_.cols(), "; both must be > 0");
  }

  /// A table of `vocab` x `dim` standard-normal entries from a fixed seed (tests, demos).
  static MeanPoolGister random(std::int64_t vocab, std::int64_t dim, std::uint64_t seed) {
    MC_EXPECTS(vocab > 0 && dim > 0, Errc::kInvalidArgument, "[mc.gister.bad_shape] vocab = ",
               vocab, ", dim = ", dim, "; both must be > 0");
    RowMatrix<Scalar> t(vocab, dim);
    std::mt19937_64 rng(seed);
    std::normal_distribution<double> normal(0.0, 1.0);
    for (Eigen::Index i = 0; i < t.size(); ++i) t.data()[i] = static_cast<Scalar>(normal(rng));
    return MeanPoolGister(std::move(t));
  }

  /// Gist dimension d.
  std::int64_t dim() const { return table_.cols(); }
  /// Vocabulary size of the table.
  std::int64_t vocab() const { return table_.rows(); }
  /// The embedding table [vocab, d].
  const RowMatrix<Scalar>& table() const { return table_; }

  /// Rows of the table for `n` ids into `out` [n, d]; an id outside [0, vocab) throws.
  void embed(const TokenId* ids, std::int64_t n, Scalar* out) const {
    const std::int64_t d = dim();
    for (std::int64_t i = 0; i < n; ++i) {
      const TokenId id = ids[i];
      MC_EXPECTS(id >= 0 && id < vocab(), Errc::kOutOfRange, "[mc.gister.bad_token] token id ",
                 id, " at position ", i, " is outside the vocabulary [0, ", vocab(), ")");
      Eigen::Map<Eigen::Matrix<Scalar, 1, Eigen::Dynamic>>(out + i * d, d) = table_.row(id);
    }
  }

  /// Mean of each group of K rows of `in` [n*K, d] into `out` [n, d].
  void gist(int /*lod*/, const Scalar* in, std::int64_t n, Scalar* out) const {
    const std::int64_t d = dim();
    const Eigen::Map<const RowMatrix<Scalar>> x(in, n * C::K, d);
    Eigen::Map<RowMatrix<Scalar>> y(out, n, d);
    const Scalar inv_k = Scalar(1) / Scalar(C::K);
    for (std::int64_t i = 0; i < n; ++i)
      y.row(i) = x.middleRows(i * C::K, C::K).colwise().sum() * inv_k;
  }

 private:
  RowMatrix<Scalar> table_;
};

}  // namespace mc
