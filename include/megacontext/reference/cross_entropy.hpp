// SPDX-License-Identifier: Apache-2.0
// Next-token cross-entropy for training through a BaseModel: the loss at logits row i is scored
// against targets[i], so callers pass the NEXT token of row i (next_token_targets builds that).
// The Python proof of concept scored row i against token i, an off-by-one that trains a copier.
#pragma once

#include "megacontext/detail/eigen.hpp"

#include <cmath>
#include <cstdint>
#include <vector>

#include "megacontext/config.hpp"
#include "megacontext/error.hpp"
#include "megacontext/gister.hpp"

namespace mc::reference {

/// A target that contributes no loss (for rows with no next token, or not part of the loss).
inline constexpr TokenId kIgnoreTarget = -1;

/// Targets for next-token prediction over `ids` [n]: targets[i] = ids[i + 1], and the last row
/// gets kIgnoreTarget (nothing follows it).
inline std::vector<TokenId> next_token_targets(const TokenId* ids, std::int64_t n) {
  MC_EXPECTS(n >= 0 && (n == 0 || ids != nullptr), Errc::kInvalidArgument,
             "[mc.cross_entropy.bad_shape] n = ", n, "; must be >= 0 with non-null ids");
  std::vector<TokenId> t(static_cast<std::size_t>(n), kIgnoreTarget);
  for (std::int64_t i = 0; i + 1 < n; ++i) t[static_cast<std::size_t>(i)] = ids[i + 1];
  return t;
}

/// Mean negative log-likelihood (nats) of `targets` [n] under `logits` [n, V]: row i is scored
/// against targets[i], which must be the token that FOLLOWS row i's input (see
/// next_token_targets). Rows with kIgnoreTarget are skipped; the mean is over the other rows
/// (0 when there are none). When `dlogits` is not null it receives dL/dlogits [n, V]
/// (softmax − one-hot, divided by the number of counted rows; 0 on skipped rows).
template <class Scalar>
double cross_entropy(const RowMatrix<Scalar>& logits, const TokenId* targets,
                     RowMatrix<Scalar>* dlogits) {
  const Eigen::Index n = logits.rows(), v = logits.cols();
  MC_EXPECTS(n == 0 || targets != nullptr, Errc::kInvalidArgument,
             "[mc.cross_entropy.bad_shape] targets is null with n = ", n);
  std::int64_t count = 0;
  for (Eigen::Index i = 0; i < n; ++i) {
    MC_EXPECTS(targets[i] == kIgnoreTarget || (targets[i] >= 0 && targets[i] < v),
               Errc::kInvalidArgument, "[mc.cross_entropy.bad_target] targets[", i,
               "] = ", targets[i], "; must be in [0, ", v, ") or kIgnoreTarget (-1)");
    if (targets[i] != kIgnoreTarget) ++count;
  }
  if (dlogits != nullptr) dlogits->setZero(n, v);
  if (count == 0) return 0.0;
  double loss = 0.0;
  for (Eigen::Index i = 0; i < n; ++i) {
    if (targets[i] == kIgnoreTarget) continue;
    // Log-sum-exp in fp64 around the row maximum.
    const double mx = static_cast<double>(logits.row(i).maxCoeff());
    double sum = 0.0;
    for (Eigen::Index j = 0; j < v; ++j) sum += std::exp(static_cast<double>(logits(i, j)) - mx);
    const double lse = mx + std::log(sum);
    loss += lse - static_cast<double>(logits(i, targets[i]));
    if (dlogits != nullptr) {
      const double inv = 1.0 / static_cast<double>(count);
      for (Eigen::Index j = 0; j < v; ++j)
        (*dlogits)(i, j) =
            static_cast<Scalar>(std::exp(static_cast<double>(logits(i, j)) - lse) * inv);
      (*dlogits)(i, targets[i]) -= static_cast<Scalar>(inv);
    }
  }
  return loss / static_cast<double>(count);
}

}  // namespace mc::reference
