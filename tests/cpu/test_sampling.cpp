// SPDX-License-Identifier: Apache-2.0
// Sampler: greedy is the arg-max; top-k and top-p draw from the renormalised softmax of the kept
// tokens (checked against the closed-form probabilities over many draws); a saved generator
// state continues the same draws; bad options and NaN logits are refused.
#include <doctest/doctest.h>

#include <megacontext/sampling.hpp>

#include <cmath>
#include <map>
#include <vector>

namespace {

// Softmax over `keep` (ids) of logits / t, as a map id -> probability.
std::map<mc::TokenId, double> softmax_of(const std::vector<float>& logits,
                                         const std::vector<mc::TokenId>& keep, double t) {
  double z = 0;
  for (auto id : keep) z += std::exp(logits[static_cast<std::size_t>(id)] / t);
  std::map<mc::TokenId, double> p;
  for (auto id : keep) p[id] = std::exp(logits[static_cast<std::size_t>(id)] / t) / z;
  return p;
}

// Draws `n` samples and checks each kept id's frequency against `want` within 5 standard
// errors, and that no other id ever appears.
void check_frequencies(mc::Sampler& s, const std::vector<float>& logits,
                       const mc::SamplingOptions& o, const std::map<mc::TokenId, double>& want,
                       int n) {
  std::map<mc::TokenId, int> got;
  for (int i = 0; i < n; ++i) ++got[s.sample(std::span<const float>(logits), o)];
  for (const auto& [id, count] : got) {
    INFO("id ", id);
    REQUIRE(want.count(id) == 1);
  }
  for (const auto& [id, p] : want) {
    const double freq = static_cast<double>(got[id]) / n;
    const double se = std::sqrt(p * (1 - p) / n);
    INFO("id ", id, " p ", p, " freq ", freq);
    CHECK(std::abs(freq - p) <= 5 * se + 1e-12);
  }
}

const std::vector<float> kLogits = {0.5f, 2.0f, -1.0f, 1.5f, 1.0f, -3.0f, 0.0f, 1.9f};

}  // namespace

TEST_CASE("Sampler: greedy is the arg-max, ties to the lowest id") {
  mc::Sampler s(1);
  CHECK(s.sample(std::span<const float>(kLogits), {}) == 1);
  const std::vector<float> tie = {0.0f, 3.0f, 3.0f};
  CHECK(s.sample(std::span<const float>(tie), {}) == 1);
}

TEST_CASE("Sampler: top-k draws from the softmax of the k best") {
  mc::Sampler s(2);
  mc::SamplingOptions o{.mode = mc::SamplingOptions::Mode::kTopK, .temperature = 0.7f, .top_k = 3};
  check_frequencies(s, kLogits, o, softmax_of(kLogits, {1, 7, 3}, 0.7), 20000);
  o.top_k = 1;
  for (int i = 0; i < 100; ++i) CHECK(s.sample(std::span<const float>(kLogits), o) == 1);
}

TEST_CASE("Sampler: top-p keeps the smallest prefix reaching p") {
  mc::Sampler s(3);
  // At t = 1 the probabilities in order are ids 1, 7, 3, 4, 0, 6, 2, 5; find the prefix by hand.
  const auto all = softmax_of(kLogits, {0, 1, 2, 3, 4, 5, 6, 7}, 1.0);
  const double p3 = all.at(1) + all.at(7) + all.at(3);
  mc::SamplingOptions o{.mode = mc::SamplingOptions::Mode::kTopP, .top_p = static_cast<float>(p3 - 1e-3)};
  check_frequencies(s, kLogits, o, softmax_of(kLogits, {1, 7, 3}, 1.0), 20000);
  o.top_p = 1.0f;
  check_frequencies(s, kLogits, o, all, 40000);
  o.top_p = 1e-6f;  // below the best token's mass: greedy
  for (int i = 0; i < 100; ++i) CHECK(s.sample(std::span<const float>(kLogits), o) == 1);
}

TEST_CASE("Sampler: a restored state continues the same draws") {
  mc::Sampler a(4);
  const mc::SamplingOptions o{.mode = mc::SamplingOptions::Mode::kTopP, .top_p = 0.99f};
  for (int i = 0; i < 17; ++i) a.sample(std::span<const float>(kLogits), o);
  mc::Sampler b(999);
  b.restore(a.state());
  for (int i = 0; i < 200; ++i)
    CHECK(a.sample(std::span<const float>(kLogits), o) == b.sample(std::span<const float>(kLogits), o));
  CHECK_THROWS_WITH_AS(b.restore("not a state"), doctest::Contains("[mc.sampling.bad_state]"),
                       mc::Error);
}

TEST_CASE("Sampler: bad options and logits are refused") {
  mc::Sampler s;
  const std::vector<float> nan = {0.0f, std::nanf("")};
  CHECK_THROWS_WITH_AS(s.sample(std::span<const float>(nan), {}),
                       doctest::Contains("logit 1 is NaN"), mc::Error);
  CHECK_THROWS_WITH_AS(s.sample(std::span<const float>(), {}),
                       doctest::Contains("[mc.sampling.bad_logits]"), mc::Error);
  mc::SamplingOptions o{.mode = mc::SamplingOptions::Mode::kTopK, .top_k = 0};
  CHECK_THROWS_WITH_AS(s.sample(std::span<const float>(kLogits), o), doctest::Contains("top_k = 0"),
                       mc::Error);
  o = {.mode = mc::SamplingOptions::Mode::kTopP, .top_p = 0.0f};
  CHECK_THROWS_WITH_AS(s.sample(std::span<const float>(kLogits), o), doctest::Contains("top_p = 0"),
                       mc::Error);
  o = {.temperature = 0.0f};
  CHECK_THROWS_WITH_AS(s.sample(std::span<const float>(kLogits), o),
                       doctest::Contains("temperature = 0"), mc::Error);
}
