// SPDX-License-Identifier: Apache-2.0
// MegaPrediction (issue #9): cosine and MSE gist losses with their gradients to the prediction and
// the target; the combined loss scores the right rows (next token at wLOD0, next same-level gist
// at wLOD1/2, nothing for a level's last row) with per-level weights; its gradients match central
// differences alone and end to end through MegaAttention (leaves, GistNet and decoder weights),
// with the targets as constants (default) or differentiated; a kCausal mask is refused.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <megacontext/gist_net.hpp>
#include <megacontext/mega_attention.hpp>
#include <megacontext/mega_prediction.hpp>
#include <megacontext/reference/cross_entropy.hpp>
#include <megacontext/reference/llama.hpp>
#include <random>
#include <string>
#include <vector>

#include "common/gradcheck.hpp"
#include "common/random.hpp"

namespace {

using Mat = mc::RowMatrix<double>;
using C3d = mc::Config<3, 2, double>;

Mat random_normal(Eigen::Index rows, Eigen::Index cols, std::uint64_t salt, double std_dev = 1.0) {
  return mc::test::normal_matrix(rows, cols, salt, std_dev);
}
using mc::test::sample_indices;

std::vector<mc::TokenId> random_ids(std::int64_t n, std::int64_t vocab, std::uint64_t salt) {
  auto gen = mc::test::rng(salt);
  std::uniform_int_distribution<mc::TokenId> pick(0, static_cast<mc::TokenId>(vocab - 1));
  std::vector<mc::TokenId> ids(static_cast<std::size_t>(n));
  for (auto& t : ids) t = pick(gen);
  return ids;
}

mc::PyramidMaskOptions mask_options(std::int32_t r, std::int32_t window, std::int32_t levels) {
  mc::PyramidMaskOptions o;
  o.r = r;
  o.window = window;
  o.num_levels = levels;
  return o;
}

}  // namespace

TEST_CASE("mega_prediction: cosine and MSE gist losses have the textbook values") {
  Mat p(4, 3), t(4, 3);
  p << 1, 2, 3, 1, 0, 0, 0, 0, 0, 2, 0, 0;
  t << 2, 4, 6, 0, 1, 0, 1, 1, 1, -1, 0, 0;
  // Rows: same direction (0), orthogonal (1), zero prediction (1: cosine 0, finite), opposite (2).
  Mat gp, gt;
  const double cos = mc::gist_prediction_loss<double>(p, t, mc::GistLoss::kCosine, &gp, &gt);
  CHECK(cos == doctest::Approx((0.0 + 1.0 + 1.0 + 2.0) / 4.0).epsilon(1e-12));
  CHECK(gp.allFinite());
  CHECK(gt.allFinite());
  const double mse = mc::gist_prediction_loss<double>(p, t, mc::GistLoss::kMse, nullptr, nullptr);
  const double want = ((1 + 4 + 9) + (1 + 1 + 0) + (1 + 1 + 1) + (9 + 0 + 0)) / 3.0 / 4.0;
  CHECK(mse == doctest::Approx(want).epsilon(1e-12));
  const Mat empty(0, 3);
  CHECK(mc::gist_prediction_loss<double>(empty, empty, mc::GistLoss::kMse, &gp, nullptr) == 0.0);
}

TEST_CASE("mega_prediction: gist loss gradients match central differences") {
  INFO(mc::test::seed_info());
  for (const auto kind : {mc::GistLoss::kCosine, mc::GistLoss::kMse}) {
    Mat p = random_normal(5, 7, 1), t = random_normal(5, 7, 2);
    Mat gp, gt;
    auto loss = [&] { return mc::gist_prediction_loss<double>(p, t, kind, nullptr, nullptr); };
    mc::gist_prediction_loss<double>(p, t, kind, &gp, &gt);
    const double ep =
        mc::test::grad_check("pred", loss, p.data(), gp.data(), sample_indices(p.size(), 35, 3));
    const double et =
        mc::test::grad_check("target", loss, t.data(), gt.data(), sample_indices(t.size(), 35, 4));
    CHECK(ep < 1e-7);
    CHECK(et < 1e-7);
  }
}

TEST_CASE(
    "mega_prediction: the combined loss scores the next token at wLOD0 and the next gist above") {
  INFO(mc::test::seed_info());
  // N = 29, r = 3: levels of 29, 9 and 3 rows.
  const mc::PyramidMask mask(mask_options(3, 4, 2), 29);
  const std::int64_t s = mask.seq_len(), v = 11, d = 6;
  REQUIRE(s == 41);
  const Mat logits = random_normal(s, v, 11), hidden = random_normal(s, d, 12);
  const Mat seq = random_normal(s, d, 13);
  auto targets = random_ids(29, v, 14);
  targets[28] = mc::reference::kIgnoreTarget;  // nothing known after the last leaf
  for (const auto kind : {mc::GistLoss::kCosine, mc::GistLoss::kMse}) {
    mc::MegaPredictionOptions o;
    o.level_weights = {1.0, 0.5, 0.25};
    o.gist_loss = kind;
    Mat dl, dh, ds;
    const auto got = mc::mega_prediction_loss<double>(mask, logits, hidden, seq, targets.data(), o,
                                                      &dl, &dh, &ds);
    // Level 0: cross-entropy of the leaf rows against their next tokens.
    const double ce =
        mc::reference::cross_entropy<double>(Mat(logits.topRows(29)), targets.data(), nullptr);
    CHECK(got.level[0] == doctest::Approx(ce).epsilon(1e-14));
    CHECK(got.count == std::vector<std::int64_t>{28, 8, 2});
    // Level 1: rows 29..36 predict rows 30..37; level 2: rows 38, 39 predict 39, 40.
    const double l1 = mc::gist_prediction_loss<double>(
        Mat(hidden.middleRows(29, 8)), Mat(seq.middleRows(30, 8)), kind, nullptr, nullptr);
    const double l2 = mc::gist_prediction_loss<double>(
        Mat(hidden.middleRows(38, 2)), Mat(seq.middleRows(39, 2)), kind, nullptr, nullptr);
    CHECK(got.level[1] == doctest::Approx(l1).epsilon(1e-14));
    CHECK(got.level[2] == doctest::Approx(l2).epsilon(1e-14));
    CHECK(got.total == doctest::Approx(ce + 0.5 * l1 + 0.25 * l2).epsilon(1e-14));
    // Gradients land only where a loss reads: logits of leaves, hidden of summaries that have a
    // next gist; the sequence gets none unless target_gradient is set.
    CHECK(dl.bottomRows(s - 29).cwiseAbs().maxCoeff() == 0.0);
    CHECK(dl.row(28).cwiseAbs().maxCoeff() == 0.0);
    CHECK(dh.topRows(29).cwiseAbs().maxCoeff() == 0.0);
    CHECK(dh.row(37).cwiseAbs().maxCoeff() == 0.0);
    CHECK(dh.row(40).cwiseAbs().maxCoeff() == 0.0);
    CHECK(dh.row(36).cwiseAbs().maxCoeff() > 0.0);
    CHECK(ds.cwiseAbs().maxCoeff() == 0.0);
  }
}

TEST_CASE(
    "mega_prediction: combined-loss gradients to logits, hidden states and targets match central "
    "differences") {
  INFO(mc::test::seed_info());
  const mc::PyramidMask mask(mask_options(3, 4, 2), 20);
  const std::int64_t s = mask.seq_len(), v = 7, d = 5;
  Mat logits = random_normal(s, v, 21), hidden = random_normal(s, d, 22),
      seq = random_normal(s, d, 23);
  const auto targets = random_ids(20, v, 24);
  for (const auto kind : {mc::GistLoss::kCosine, mc::GistLoss::kMse}) {
    mc::MegaPredictionOptions o;
    o.level_weights = {0.7, 1.3, 0.4};
    o.gist_loss = kind;
    o.target_gradient = true;
    auto loss = [&] {
      return mc::mega_prediction_loss<double>(mask, logits, hidden, seq, targets.data(), o, nullptr,
                                              nullptr, nullptr)
          .total;
    };
    Mat dl, dh, ds;
    mc::mega_prediction_loss<double>(mask, logits, hidden, seq, targets.data(), o, &dl, &dh, &ds);
    CHECK(mc::test::grad_check("logits", loss, logits.data(), dl.data(),
                               sample_indices(logits.size(), 60, 25)) < 1e-7);
    CHECK(mc::test::grad_check("hidden", loss, hidden.data(), dh.data(),
                               sample_indices(hidden.size(), 60, 26)) < 1e-7);
    CHECK(mc::test::grad_check("sequence", loss, seq.data(), ds.data(),
                               sample_indices(seq.size(), 60, 27)) < 1e-7);
  }
}

TEST_CASE("mega_prediction: end to end through MegaAttention, targets constant or differentiated") {
  INFO(mc::test::seed_info());
  mc::reference::LlamaOptions lo;
  lo.d_model = 8;
  lo.n_layers = 2;
  lo.n_heads = 2;
  lo.d_ff = 12;
  lo.n_vocab = 9;
  lo.rope_base = 20.0;
  lo.init_std = 0.4;
  auto model = mc::reference::LlamaModel<double>::random(lo, mc::test::base_seed() + 31);
  mc::GistNetOptions go;
  go.d_model = 8;
  go.n_layers = 1;
  go.n_heads = 2;
  go.d_attn = 8;
  go.d_ff = 10;
  go.d_pool = 6;
  go.num_weight_sets = 2;
  go.init_std = 0.5;
  auto net = mc::GistNet<C3d>::random(go, mc::test::base_seed() + 32);
  // N = 19 leaves: levels of 19, 6 and 2 rows, so every level has a next-gist pair.
  const std::int64_t n = 19;
  mc::MegaAttentionOptions mo;
  mo.mask = mask_options(3, 3, 2);
  mc::MegaAttention<double> mega(mo, n);
  const auto ids = random_ids(n + 1, lo.n_vocab, 33);
  Mat leaves(n, 8);
  model.embed(ids.data(), n, leaves.data());
  leaves += random_normal(n, 8, 34, 0.3);  // so leaves are not only table rows
  const auto targets = std::vector<mc::TokenId>(ids.begin() + 1, ids.end());
  const auto spans = mc::token_spans(n);

  for (const bool differentiate_targets : {false, true}) {
    for (const auto kind : {mc::GistLoss::kCosine, mc::GistLoss::kMse}) {
      INFO("target_gradient = ", differentiate_targets, ", loss = ", static_cast<int>(kind));
      mc::MegaPredictionOptions o;
      o.level_weights = {1.0, 0.6, 0.3};
      o.gist_loss = kind;
      o.target_gradient = differentiate_targets;
      // With constant targets the loss to differentiate numerically freezes the targets at the
      // values of the unperturbed forward (a stop-gradient).
      mega.forward(model, net, leaves, spans);
      const Mat frozen = mega.sequence().embeddings;
      auto loss = [&] {
        const Mat logits = mega.forward(model, net, leaves, spans);
        const Mat& seq = differentiate_targets ? mega.sequence().embeddings : frozen;
        return mc::mega_prediction_loss<double>(mega.mask(), logits, model.activations().hf, seq,
                                                targets.data(), o, nullptr, nullptr, nullptr)
            .total;
      };
      const Mat logits = mega.forward(model, net, leaves, spans);
      Mat dl, dh, ds, dleaves;
      mc::mega_prediction_loss<double>(mega.mask(), logits, model.activations().hf,
                                       mega.sequence().embeddings, targets.data(), o, &dl, &dh,
                                       &ds);
      auto mg = mc::reference::LlamaWeights<double>::zeros(lo);
      auto gg = mc::GistNetWeights<double>::zeros(go);
      mega.backward(model, net, dl, &dh, &ds, &dleaves, &mg, &gg);
      double worst = mc::test::grad_check("leaves", loss, leaves.data(), dleaves.data(),
                                          sample_indices(leaves.size(), 60, 35));
      std::vector<double*> gp;
      gg.for_each_parameter([&](const std::string&, double* p, Eigen::Index) { gp.push_back(p); });
      std::size_t t = 0;
      net.weights().for_each_parameter([&](const std::string& name, double* p, Eigen::Index size) {
        worst = std::max(worst, mc::test::grad_check("gist_net." + name, loss, p, gp[t],
                                                     sample_indices(size, 4, 36 + t)));
        ++t;
      });
      std::vector<double*> mp;
      mg.for_each_parameter([&](const std::string&, double* p, Eigen::Index) { mp.push_back(p); });
      t = 0;
      model.weights().for_each_parameter(
          [&](const std::string& name, double* p, Eigen::Index size) {
            worst = std::max(worst, mc::test::grad_check("decoder." + name, loss, p, mp[t],
                                                         sample_indices(size, 4, 70 + t)));
            ++t;
          });
      MESSAGE("target_gradient = ", differentiate_targets, ", gist loss ", static_cast<int>(kind),
              ": worst relative error ", worst);
      CHECK(worst < 1e-6);
    }
  }
}

TEST_CASE("mega_prediction: bad options and a kCausal mask are refused by name") {
  const Mat x = Mat::Zero(4, 3);
  CHECK_THROWS_WITH_AS(
      mc::gist_prediction_loss<double>(x, Mat::Zero(3, 3), mc::GistLoss::kMse, nullptr, nullptr),
      doctest::Contains("bad_shape"), mc::Error);
  CHECK_THROWS_WITH_AS(
      mc::gist_prediction_loss<double>(x, x, static_cast<mc::GistLoss>(5), nullptr, nullptr),
      doctest::Contains("bad_loss"), mc::Error);
  auto po = mask_options(3, 4, 2);
  const mc::PyramidMask strict(po, 10);
  const Mat logits = Mat::Zero(strict.seq_len(), 5), h = Mat::Zero(strict.seq_len(), 3);
  const std::vector<mc::TokenId> targets(10, 0);
  mc::MegaPredictionOptions o;
  o.level_weights = {1.0, -0.1};
  CHECK_THROWS_WITH_AS(mc::mega_prediction_loss<double>(strict, logits, h, h, targets.data(), o,
                                                        nullptr, nullptr, nullptr),
                       doctest::Contains("bad_weights"), mc::Error);
  o = {};
  CHECK_THROWS_WITH_AS(
      mc::mega_prediction_loss<double>(strict, Mat(logits.topRows(10)), h, h, targets.data(), o,
                                       nullptr, nullptr, nullptr),
      doctest::Contains("bad_shape"), mc::Error);
  po.causality = mc::Causality::kCausal;
  const mc::PyramidMask causal(po, 10);
  CHECK_THROWS_WITH_AS(mc::mega_prediction_loss<double>(causal, logits, h, h, targets.data(), o,
                                                        nullptr, nullptr, nullptr),
                       doctest::Contains("leaky_mask"), mc::Error);
}
