// SPDX-License-Identifier: Apache-2.0
// Session end to end on the CPU with a tiny reference decoder: the budget and every working-
// context invariant hold after each of 10,000 generated tokens; the cached decode gives the same
// logits as a full forward over the assembled context; telemetry records agree with the edits
// they report; a session saved and resumed from its disk tree continues bit-identically; bad
// input (empty document, invalid UTF-8, zero budget, a damaged state file) gives a clear error.
// The last case runs the bundled model (examples/models/) through the same checks.
#include <doctest/doctest.h>

#include <megacontext/policies/greedy_threshold.hpp>
#include <megacontext/policies/recency_only.hpp>
#include <megacontext/policies/sliding_window.hpp>
#include <megacontext/reference/llama.hpp>
#include <megacontext/reference/llama_io.hpp>
#include <megacontext/session.hpp>
#include <megacontext/tokenizer.hpp>

#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "common/random.hpp"

namespace {

using C = mc::Config<4, 3>;
using Model = mc::reference::LlamaModel<float>;
using Gister = mc::MeanPoolGister<C>;

mc::reference::LlamaOptions tiny_model() {
  mc::reference::LlamaOptions o;
  o.d_model = 32;
  o.n_layers = 2;
  o.n_heads = 2;
  o.d_ff = 64;
  o.n_vocab = 64;
  o.init_std = 0.2;  // large enough that logits are far from uniform (sampling matters)
  return o;
}

mc::SessionOptions tiny_session(std::int64_t w_max = 64) {
  mc::SessionOptions s;
  s.context.w_max = w_max;
  s.context.sink_tokens = 4;
  s.focus.recent_tokens = 16;
  s.focus.max_edits = 4;
  s.focus.cooldown_steps = 2;
  s.seed = 7;
  return s;
}

std::vector<mc::TokenId> random_ids(std::size_t n, std::uint64_t salt, int vocab = 64) {
  auto rng = mc::test::rng(salt);
  std::uniform_int_distribution<int> id(0, vocab - 1);
  std::vector<mc::TokenId> ids(n);
  for (auto& t : ids) t = id(rng);
  return ids;
}

// A tree whose gists are mean-pooled from the model's own embedding table.
struct Parts {
  Model model = Model::random(tiny_model(), 11);
  Gister gister{model.weights().embedding};
  mc::RecencyScorer scorer{24.0};
};

// Seeded random scores in [-1, 1]: drives many expansions and collapses (property tests).
struct NoiseScorer {
  std::mt19937_64 rng = mc::test::rng(99);
  void score(const mc::AssembledContext<float>&, double, std::span<float> out) {
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    for (auto& x : out) x = u(rng);
  }
};

std::filesystem::path fresh_dir(const std::string& name) {
  const auto dir = std::filesystem::temp_directory_path() /
                   ("mc_test_session_" + name + "_" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  return dir;
}

}  // namespace

TEST_CASE("Session: budget and invariants hold after each of 10,000 generated tokens") {
  INFO(mc::test::seed_info());
  Parts p;
  NoiseScorer noise;
  mc::Session<C, Model, Gister, NoiseScorer> s(p.model, p.gister, noise, mc::MemoryTree<C>(32),
                                               tiny_session());
  s.ingest(random_ids(300, 1));
  mc::SamplingOptions top_k{.mode = mc::SamplingOptions::Mode::kTopK, .top_k = 8};
  std::int64_t max_size = 0;
  for (int i = 0; i < 10000; ++i) {
    s.push(s.sample(top_k));
    REQUIRE(s.context().size() <= 64);
    max_size = std::max(max_size, s.context().size());
    s.context().validate(s.tree().num_tokens());
    REQUIRE(s.context().num_tokens() == s.tree().num_tokens());
    REQUIRE(s.assembled().embeddings.rows() == s.context().size());
  }
  CHECK(s.tree().num_tokens() == 10300);
  CHECK(max_size == 64);  // the budget was actually reached, so it was actually enforced
  const auto& t = s.totals();
  CHECK(t.refocuses >= 10000 / 4);
  CHECK(t.expansions > 0);
  CHECK(t.collapses + t.forced_collapses > 0);
}

TEST_CASE("Session: cached decode with rewinds gives the logits of a full forward") {
  Parts p;
  Model reference = p.model;  // same weights, used without a KV cache
  mc::Session<C, Model, Gister, mc::RecencyScorer> s(p.model, p.gister, p.scorer,
                                                      mc::MemoryTree<C>(32), tiny_session());
  s.ingest(random_ids(200, 2));
  std::vector<float> full;
  mc::SamplingOptions greedy;
  for (int i = 0; i < 120; ++i) {
    const auto logits = s.next_logits();
    const auto& ctx = s.assembled();
    const std::int64_t w = ctx.embeddings.rows(), v = 64;
    full.resize(static_cast<std::size_t>(w * v));
    reference.forward(ctx.embeddings.data(), ctx.positions.data(), w, nullptr, full.data());
    double err = 0, norm = 0;
    for (std::int64_t j = 0; j < v; ++j) {
      const double a = logits[static_cast<std::size_t>(j)], b = full[static_cast<std::size_t>((w - 1) * v + j)];
      REQUIRE(std::isfinite(a));
      err = std::max(err, std::abs(a - b));
      norm = std::max(norm, std::abs(b));
    }
    INFO("token ", i, " entries ", w);
    REQUIRE(err <= 1e-4 * std::max(1.0, norm));
    s.push(s.sample(greedy));
  }
}

TEST_CASE("Session: telemetry records agree with the edits they report") {
  Parts p;
  std::ostringstream log;
  mc::Session<C, Model, Gister, mc::RecencyScorer, mc::GreedyThreshold> s(
      p.model, p.gister, p.scorer, mc::MemoryTree<C>(32), tiny_session());
  s.set_telemetry(&log);
  s.ingest(random_ids(500, 3));
  s.generate(300, {.mode = mc::SamplingOptions::Mode::kTopP, .top_p = 0.8f});
  std::istringstream lines(log.str());
  std::string line;
  std::int64_t records = 0, tokens = 0, expansions = 0, prev_entries = 0;
  constexpr std::int64_t km1 = C::K - 1;
  while (std::getline(lines, line)) {
    const mc::io::JsonValue j = mc::io::parse_json(line);
    auto num = [&](const char* key) {
      const mc::io::JsonValue* v = j.find(key);
      REQUIRE(v != nullptr);
      return std::stod(v->text());
    };
    const std::string event = j.find("event")->text();
    const auto before = static_cast<std::int64_t>(num("entries_before"));
    const auto after = static_cast<std::int64_t>(num("entries"));
    const auto now_tokens = static_cast<std::int64_t>(num("tokens"));
    INFO(line);
    CHECK(before == prev_entries);  // records chain: each starts where the last ended
    CHECK(after <= 64);
    CHECK(num("budget_use") == doctest::Approx(static_cast<double>(after) / 64.0));
    const auto edits = static_cast<std::int64_t>(num("expansions") - num("collapses") -
                                                 num("forced_collapses"));
    const auto moved = static_cast<std::int64_t>(num("restores") - num("evictions"));
    if (event == "refocus") {
      CHECK(now_tokens == tokens);
      CHECK(after - before == km1 * edits + moved);
      CHECK(num("swap_rate") == doctest::Approx(after ? num("fresh_entries") / static_cast<double>(after) : 0.0));
    } else if (event == "ingest") {
      CHECK(now_tokens > tokens);
      CHECK(num("expansions") == 0);
      CHECK(num("us_append") > 0);
    } else {
      REQUIRE(event == "decode");
      CHECK(after == before);
      CHECK(num("model_rows") >= 1);
      CHECK(num("model_rows") <= after);
    }
    tokens = now_tokens;
    prev_entries = after;
    expansions += static_cast<std::int64_t>(num("expansions"));
    ++records;
  }
  CHECK(records == s.totals().events);
  CHECK(expansions == s.totals().expansions);
  CHECK(tokens == 800);
  CHECK(prev_entries == s.context().size());
}

TEST_CASE("Session: a saved session resumed from its disk tree continues bit-identically") {
  const auto dir_a = fresh_dir("a"), dir_b = fresh_dir("b");
  const auto doc = random_ids(700, 4);
  const mc::SamplingOptions sampling{.mode = mc::SamplingOptions::Mode::kTopP, .temperature = 1.3f,
                                     .top_p = 0.95f};
  using S = mc::Session<C, Model, Gister, mc::RecencyScorer, mc::BudgetOptimal, mc::DiskStorage>;
  std::vector<mc::TokenId> continued_a;
  std::vector<mc::WcEntry> entries_a;
  {
    Parts p;
    S a(p.model, p.gister, p.scorer, mc::DiskTree<C>::create(dir_a, 32), tiny_session());
    a.ingest(doc);
    a.generate(37, sampling);  // 37: the save falls between two refocuses
    continued_a = a.generate(90, sampling);
    entries_a.assign(a.context().entries().begin(), a.context().entries().end());
  }
  {
    Parts p;
    S b(p.model, p.gister, p.scorer, mc::DiskTree<C>::create(dir_b, 32), tiny_session());
    b.ingest(doc);
    b.generate(37, sampling);
    b.save(dir_b / "session.safetensors");
  }  // closed: nothing but the files remains
  Parts p;
  S b = S::resume(p.model, p.gister, p.scorer, mc::DiskTree<C>::open(dir_b),
                  dir_b / "session.safetensors", tiny_session());
  CHECK(b.generate(90, sampling) == continued_a);
  CHECK(std::equal(entries_a.begin(), entries_a.end(), b.context().entries().begin(),
                   b.context().entries().end()));
  CHECK(b.tree().num_tokens() == 700 + 37 + 90);
  std::filesystem::remove_all(dir_a);
  std::filesystem::remove_all(dir_b);
}

TEST_CASE("Session: tokens appended after the last save are admitted on resume") {
  const auto dir = fresh_dir("late");
  using S = mc::Session<C, Model, Gister, mc::RecencyScorer, mc::BudgetOptimal, mc::DiskStorage>;
  {
    Parts p;
    S s(p.model, p.gister, p.scorer, mc::DiskTree<C>::create(dir, 32), tiny_session());
    s.ingest(random_ids(300, 5));
    s.save(dir / "session.safetensors");
    s.ingest(random_ids(123, 6));  // committed to the tree, never saved in the state
  }
  Parts p;
  S s = S::resume(p.model, p.gister, p.scorer, mc::DiskTree<C>::open(dir),
                  dir / "session.safetensors", tiny_session());
  CHECK(s.context().num_tokens() == 423);
  s.context().validate(423);
  CHECK(s.context().size() <= 64);
  std::filesystem::remove_all(dir);
}

TEST_CASE("Session: bad input gives a clear error") {
  Parts p;
  using S = mc::Session<C, Model, Gister, mc::RecencyScorer>;
  S s(p.model, p.gister, p.scorer, mc::MemoryTree<C>(32), tiny_session());
  mc::Tokenizer bytes;  // byte-level: ids 0..255, so the model needs no big vocabulary here

  SUBCASE("empty document") {
    CHECK_THROWS_WITH_AS(s.ingest({}), doctest::Contains("[mc.session.empty_input]"), mc::Error);
    CHECK_THROWS_WITH_AS(s.ingest_text(bytes, ""), doctest::Contains("[mc.session.empty_input]"),
                         mc::Error);
  }
  SUBCASE("invalid UTF-8 names the offset") {
    CHECK_THROWS_WITH_AS(s.ingest_text(bytes, std::string("abc\xC3(xyz")),
                         doctest::Contains("offset 3 (byte 0xC3)"), mc::Error);
    CHECK(s.tree().num_tokens() == 0);  // refused before anything was appended
  }
  SUBCASE("zero budget") {
    auto o = tiny_session(0);
    CHECK_THROWS_WITH_AS(S(p.model, p.gister, p.scorer, mc::MemoryTree<C>(32), o),
                         doctest::Contains("w_max = 0"), mc::Error);
  }
  SUBCASE("a budget too small for the protected entries") {
    auto o = tiny_session(30);
    CHECK_THROWS_WITH_AS(S(p.model, p.gister, p.scorer, mc::MemoryTree<C>(32), o),
                         doctest::Contains("[mc.focus.bad_w_max]"), mc::Error);
  }
  SUBCASE("generation before any history") {
    CHECK_THROWS_WITH_AS(s.generate(1, {}), doctest::Contains("[mc.session.empty_history]"),
                         mc::Error);
  }
  SUBCASE("a tree of another width") {
    CHECK_THROWS_WITH_AS(S(p.model, p.gister, p.scorer, mc::MemoryTree<C>(16), tiny_session()),
                         doctest::Contains("[mc.session.dim_mismatch]"), mc::Error);
  }
}

TEST_CASE("Session: a missing or damaged state file is refused") {
  const auto dir = fresh_dir("bad_state");
  using S = mc::Session<C, Model, Gister, mc::RecencyScorer, mc::BudgetOptimal, mc::DiskStorage>;
  std::vector<mc::WcEntry> saved;
  std::vector<float> saved_scores;
  {
    Parts p;
    S s(p.model, p.gister, p.scorer, mc::DiskTree<C>::create(dir, 32), tiny_session());
    s.ingest(random_ids(300, 7));
    s.save(dir / "session.safetensors");
    saved.assign(s.context().entries().begin(), s.context().entries().end());
    saved_scores.assign(s.scores().begin(), s.scores().end());
  }
  Parts p;
  SUBCASE("missing") {
    CHECK_THROWS_AS(S::resume(p.model, p.gister, p.scorer, mc::DiskTree<C>::open(dir),
                              dir / "nope.safetensors", tiny_session()),
                    mc::IoError);
  }
  SUBCASE("every single-byte change in the data is caught") {
    const auto path = dir / "session.safetensors";
    std::ifstream in(path, std::ios::binary);
    const std::string original{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
    in.close();
    int refused = 0;
    for (std::size_t at = 0; at < original.size(); at += 7) {
      std::string bad = original;
      bad[at] = static_cast<char>(bad[at] ^ 0x5A);
      std::ofstream(path, std::ios::binary | std::ios::trunc) << bad;
      try {
        S s = S::resume(p.model, p.gister, p.scorer, mc::DiskTree<C>::open(dir), path,
                        tiny_session());
        // Accepted only if the flip hit header padding: then the state is the original one.
        CHECK(std::equal(saved.begin(), saved.end(), s.context().entries().begin(),
                         s.context().entries().end()));
        CHECK(std::equal(saved_scores.begin(), saved_scores.end(), s.scores().begin(),
                         s.scores().end()));
      } catch (const mc::Error&) {
        ++refused;
      }
    }
    CHECK(refused > 0);
  }
  std::filesystem::remove_all(dir);
}

TEST_CASE("Session: replacing a document rebuilds only what it affects and keeps the rest") {
  INFO(mc::test::seed_info());
  const auto dir = fresh_dir("docs");
  using S = mc::Session<C, Model, Gister, mc::RecencyScorer, mc::BudgetOptimal, mc::DiskStorage>;
  const auto doc0 = random_ids(333, 20), doc1 = random_ids(250, 21), doc2 = random_ids(180, 22);
  const auto doc1_new = random_ids(301, 23);
  Parts p;
  std::vector<std::vector<float>> gists_before(C::Depth + 1);
  std::vector<mc::TokenId> generated;
  {
    S s(p.model, p.gister, p.scorer, mc::DiskTree<C>::create(dir, 32), tiny_session());
    CHECK(s.add_document(doc0) == 0);
    CHECK(s.add_document(doc1) == 1);
    CHECK(s.add_document(doc2) == 2);
    generated = s.generate(20, {});
    for (int l = 1; l <= C::Depth; ++l) {
      const auto g = s.tree().gists(l, 0, s.tree().level_size(l));
      gists_before[static_cast<std::size_t>(l)].assign(g.data(), g.data() + g.size());
    }
    s.replace_document(1, doc1_new);

    // The history is now doc0 + doc1_new + doc2 + the generated tokens, with the spans moved.
    std::vector<mc::TokenId> want = doc0;
    want.insert(want.end(), doc1_new.begin(), doc1_new.end());
    want.insert(want.end(), doc2.begin(), doc2.end());
    want.insert(want.end(), generated.begin(), generated.end());
    const auto got = s.tree().tokens(0, s.tree().num_tokens());
    CHECK(std::equal(got.begin(), got.end(), want.begin(), want.end()));
    const auto docs = s.documents();
    REQUIRE(docs.size() == 3);
    CHECK(docs[0] == mc::DocumentSpan{0, 0, 333});
    CHECK(docs[1] == mc::DocumentSpan{1, 333, 634});
    CHECK(docs[2] == mc::DocumentSpan{2, 634, 814});
    // Gists of spans that end before the changed document are the very same bytes; the whole
    // tree equals one built from scratch from the new content.
    auto fresh = mc::MemoryTree<C>(32);
    fresh.append(want, p.gister);
    for (int l = 1; l <= C::Depth; ++l) {
      INFO("lod ", l);
      const auto g = s.tree().gists(l, 0, s.tree().level_size(l));
      const std::int64_t untouched = 333 / C::span(l);
      CHECK(std::equal(g.data(), g.data() + untouched * 32,
                       gists_before[static_cast<std::size_t>(l)].begin()));
      CHECK(g == fresh.gists(l, 0, fresh.level_size(l)));
    }
    s.context().validate(s.tree().num_tokens());
    CHECK(s.context().size() <= 64);
    s.generate(10, {});
    s.save(dir / "session.safetensors");
    CHECK_THROWS_WITH_AS(s.replace_document(7, doc0), doctest::Contains("[mc.session.no_document]"),
                         mc::Error);
    CHECK_THROWS_WITH_AS(s.replace_document(0, {}), doctest::Contains("[mc.session.empty_input]"),
                         mc::Error);
  }
  S s = S::resume(p.model, p.gister, p.scorer, mc::DiskTree<C>::open(dir),
                  dir / "session.safetensors", tiny_session());
  REQUIRE(s.documents().size() == 3);
  CHECK(s.documents()[2] == mc::DocumentSpan{2, 634, 814});
  s.replace_document(0, random_ids(40, 24));  // the first one: everything after it moves
  CHECK(s.documents()[1] == mc::DocumentSpan{1, 40, 341});
  s.context().validate(s.tree().num_tokens());
  CHECK(s.tree().num_tokens() == 40 + 301 + 180 + 20 + 10);
  std::filesystem::remove_all(dir);
}

TEST_CASE("Session with the bundled model: budget every step, bit-identical resume, missing file") {
  // Sampled generation exercises the decoder and its cache; pushed text then reaches 10,000
  // budget-checked steps in seconds.
  namespace fs = std::filesystem;
  const fs::path models = fs::path(MC_SOURCE_DIR) / "examples" / "models";
  CHECK_THROWS_WITH_AS(mc::reference::load_llama(models / "no-such-model.safetensors"),
                       doctest::Contains("[mc.llama.missing_file]"), mc::IoError);
  auto model = mc::reference::load_llama(models / "megacontext-base.safetensors");
  auto tok = mc::Tokenizer::load(models / "megacontext-base.mctok");
  using D = mc::DefaultConfig;  // K = 32, Depth = 3: the library's defaults
  using G = mc::MeanPoolGister<D>;
  using S = mc::Session<D, Model, G, mc::RecencyScorer, mc::BudgetOptimal, mc::DiskStorage>;
  G gister(model.weights().embedding);
  mc::RecencyScorer scorer{256};
  mc::SessionOptions so;
  so.context.w_max = 512;
  so.focus.recent_tokens = 128;
  so.seed = 3;
#if defined(__SANITIZE_ADDRESS__)
  constexpr int kSteps = 64;  // the sanitizer build runs the decoder ~20x slower
  constexpr int kPushSteps = 1000;
#else
  constexpr int kSteps = 640;
  constexpr int kPushSteps = 10000;
#endif
  const auto dir = fresh_dir("bundled"), copy = fresh_dir("bundled_copy");
  std::ifstream f("/usr/share/common-licenses/GPL-3");
  const std::string text{std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
  const mc::SamplingOptions sampling{.mode = mc::SamplingOptions::Mode::kTopK, .temperature = 0.8f,
                                     .top_k = 20};
  std::vector<mc::TokenId> continued;
  {
    S s(model, gister, scorer, mc::DiskTree<D>::create(dir, model.dim()), so);
    s.ingest_text(tok, text);
    for (int i = 0; i < kSteps; ++i) {
      s.push(s.sample(sampling));
      REQUIRE(s.context().size() <= 512);
      s.context().validate(s.tree().num_tokens());
    }
    s.save(dir / "session.safetensors");
    fs::copy(dir, copy, fs::copy_options::recursive);  // the tree and state as saved
    continued = s.generate(40, sampling);
    CHECK(s.totals().refocuses >= kSteps / 32);
    // 10,000 more steps of pushed text (no sampling, so no decoder forward: the budget and the
    // invariants do not depend on the logits), checked after each.
    const auto more = tok.encode(text);
    for (int i = 0; i < kPushSteps; ++i) {
      s.push(more[static_cast<std::size_t>(i) % more.size()]);
      REQUIRE(s.context().size() <= 512);
      s.context().validate(s.tree().num_tokens());
    }
  }
  S r = S::resume(model, gister, scorer, mc::DiskTree<D>::open(copy), copy / "session.safetensors", so);
  CHECK(r.generate(40, sampling) == continued);
  fs::remove_all(dir);
  fs::remove_all(copy);
}

TEST_CASE("Session with layout baselines: truncation shows the newest tokens, every policy keeps "
          "the budget") {
  Parts p;
  auto ids = random_ids(900, 30);
  {
    auto o = tiny_session();
    o.context.sink_tokens = 0;
    mc::Session<C, Model, Gister, mc::RecencyScorer, mc::Truncation> s(
        p.model, p.gister, p.scorer, mc::MemoryTree<C>(32), o);
    s.ingest(ids);  // ends with a refocus: the window is laid out
    const auto e = s.context().entries();
    REQUIRE(static_cast<std::int64_t>(e.size()) == 64);
    for (std::size_t i = 0; i < e.size(); ++i) {
      CHECK(e[i].lod == 0);
      CHECK(e[i].index == 900 - 64 + static_cast<std::int64_t>(i));
    }
    s.generate(100, {});
    CHECK(s.context().size() <= 64);
    s.context().validate(s.tree().num_tokens());
  }
  auto run = [&](auto policy, std::int64_t sinks) {
    auto o = tiny_session();
    o.context.sink_tokens = sinks;
    mc::Session<C, Model, Gister, mc::RecencyScorer, decltype(policy)> s(
        p.model, p.gister, p.scorer, mc::MemoryTree<C>(32), o, policy);
    s.ingest(ids);
    for (int i = 0; i < 300; ++i) {
      s.push(s.sample({}));
      REQUIRE(s.context().size() <= 64);
      s.context().validate(s.tree().num_tokens());
    }
    return std::vector<mc::WcEntry>(s.context().entries().begin(), s.context().entries().end());
  };
  const auto sinks = run(mc::SinksWindow{}, 4);
  for (int t = 0; t < 4; ++t) CHECK(sinks[static_cast<std::size_t>(t)] == mc::WcEntry{t, 0, sinks[static_cast<std::size_t>(t)].changed_at});
  const auto recency = run(mc::RecencyOnly{}, 4);
  CHECK(recency.back().lod == 0);
  CHECK(std::any_of(recency.begin(), recency.end(), [](const mc::WcEntry& x) { return x.lod > 0; }));
}
