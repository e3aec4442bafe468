// SPDX-License-Identifier: Apache-2.0
// Evaluation helpers: intervals against closed forms and a simulation of their coverage; tasks
// are deterministic per seed, plant their facts where they say, and differ across seeds;
// answered() accepts exactly the expected answer prefix; the report has one line per row.
#include <doctest/doctest.h>

#include <megacontext/eval/report.hpp>
#include <megacontext/eval/stats.hpp>
#include <megacontext/eval/stream_nll.hpp>
#include <megacontext/eval/tasks.hpp>
#include <megacontext/io/json.hpp>

#include <random>
#include <set>

#include "common/random.hpp"

TEST_CASE("eval stats: t and Wilson intervals") {
  // Two samples {0, 2}: mean 1, s = sqrt(2), se = 1, t(1) = 12.706.
  const double x[] = {0.0, 2.0};
  const auto s = mc::eval::mean_interval(x);
  CHECK(s.mean == doctest::Approx(1.0));
  CHECK(s.high - s.mean == doctest::Approx(12.706).epsilon(1e-4));
  CHECK(mc::eval::t_quantile_975(30) == doctest::Approx(2.042).epsilon(1e-3));
  CHECK(mc::eval::t_quantile_975(31) == doctest::Approx(2.0395).epsilon(2e-3));
  CHECK(mc::eval::t_quantile_975(1000) == doctest::Approx(1.9623).epsilon(1e-3));
  // Wilson at 0/10 and 10/10 stays inside [0, 1] with a non-empty interval.
  const auto zero = mc::eval::proportion_interval(0, 10), all = mc::eval::proportion_interval(10, 10);
  CHECK(zero.low == doctest::Approx(0.0));
  CHECK(zero.high == doctest::Approx(0.2775).epsilon(1e-3));
  CHECK(all.high == doctest::Approx(1.0));
  CHECK(all.low == doctest::Approx(0.7225).epsilon(1e-3));
  // Coverage: over 2,000 simulated experiments the t interval of 20 normal draws covers the
  // true mean about 95% of the time.
  auto rng = mc::test::rng(3);
  std::normal_distribution<double> n(5.0, 2.0);
  int covered = 0;
  for (int e = 0; e < 2000; ++e) {
    std::vector<double> v(20);
    for (auto& y : v) y = n(rng);
    const auto r = mc::eval::mean_interval(v);
    covered += r.low <= 5.0 && 5.0 <= r.high;
  }
  CHECK(covered >= 1860);  // 95% ± 3 standard errors of 0.0049
  CHECK(covered <= 1940);
  CHECK_THROWS_WITH_AS(mc::eval::mean_interval({}), doctest::Contains("[mc.eval.bad_samples]"),
                       mc::Error);
  CHECK_THROWS_AS(mc::eval::proportion_interval(3, 2), mc::Error);
}

TEST_CASE("eval tasks: deterministic, facts where they say, answers checked") {
  mc::eval::TaskOptions o;
  o.context_chars = 5000;
  std::set<std::string> answers;
  for (std::uint64_t seed = 0; seed < 50; ++seed) {
    o.seed = seed;
    for (int kind = 0; kind < 3; ++kind) {
      const auto a = kind == 0 ? mc::eval::passkey_trial(o)
                     : kind == 1 ? mc::eval::kv_lookup_trial(o) : mc::eval::multi_hop_trial(o);
      const auto b = kind == 0 ? mc::eval::passkey_trial(o)
                     : kind == 1 ? mc::eval::kv_lookup_trial(o) : mc::eval::multi_hop_trial(o);
      CHECK(a.context == b.context);
      CHECK(a.answer == b.answer);
      CHECK(a.context.size() > 5000);
      CHECK(a.context.find(a.answer) != std::string::npos);  // the answer is in the history
      for (std::size_t off : a.fact_offsets) REQUIRE(off < a.context.size());
      CHECK(mc::eval::answered(a, "  " + a.answer + ". more"));
      CHECK_FALSE(mc::eval::answered(a, " x" + a.answer));
      CHECK_FALSE(mc::eval::answered(a, "   "));
      if (kind == 0) answers.insert(a.answer);
    }
  }
  CHECK(answers.size() >= 45);  // seeds give different keys
  o.seed = 1;
  const auto p = mc::eval::passkey_trial(o);
  CHECK(p.context.substr(p.fact_offsets[0], 16) == "The pass key is ");
  const auto m = mc::eval::multi_hop_trial(o);
  CHECK(m.fact_offsets[0] < m.fact_offsets[1]);
  o.filler = "";
  CHECK_THROWS_WITH_AS(mc::eval::passkey_trial(o), doctest::Contains("[mc.eval.bad_task]"), mc::Error);
}

TEST_CASE("eval: token NLL and the report") {
  const float logits[] = {0.0f, 1.0f, 2.0f};
  const double z = std::log(std::exp(0.0) + std::exp(1.0) + std::exp(2.0));
  CHECK(mc::eval::token_nll(std::span<const float>(logits), 2) == doctest::Approx(z - 2.0));
  CHECK_THROWS_AS(mc::eval::token_nll(std::span<const float>(logits), 3), mc::Error);
  std::vector<mc::eval::ResultRow> rows = {
      {"passkey", "truncation", 512, 8192, "accuracy", mc::eval::proportion_interval(3, 10), 12.5, 0},
      {"passkey", "megacontext", 512, 8192, "accuracy", mc::eval::proportion_interval(9, 10), 20, 1}};
  const std::string md = mc::eval::to_markdown(rows, "t");
  CHECK(md.find("| passkey | megacontext | 512 | 8192 | accuracy | 0.9000 |") != std::string::npos);
  const auto j = mc::io::parse_json(mc::eval::to_json(rows, {{"command", "x \"y\""}}));
  REQUIRE(j.find("rows") != nullptr);
  CHECK(j.find("rows")->items().size() == 2);
  CHECK(j.find("meta")->find("command")->text() == "x \"y\"");
}
