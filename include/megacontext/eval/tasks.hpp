// SPDX-License-Identifier: Apache-2.0
// Long-context evaluation tasks as text: a haystack of filler with planted facts, a question at
// the end, and the expected answer. Every task is a pure function of its options and seed, so
// every policy in a comparison sees exactly the same trials.
//  - passkey: one 5-digit key at a random depth (issue #7's retrieval test);
//  - kv_lookup: several "key: value" records spread through the text, one asked;
//  - multi_hop: two facts planted far apart that must be combined.
// The filler is given by the caller (repeated sentences or corpus text), in characters; the
// caller converts its target length in tokens with its tokenizer.
#pragma once

#include <algorithm>
#include <cstdint>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "megacontext/error.hpp"

namespace mc::eval {

/// One trial: `context` (history, facts planted), `question` (appended after it), the expected
/// `answer` (a string the generated text must start with, ignoring leading spaces) and the
/// character offsets of the planted facts in `context`.
struct Trial {
  std::string context;
  std::string question;
  std::string answer;
  std::vector<std::size_t> fact_offsets;
};

/// The classic pass-key filler (Mohtashami & Jaggi 2023), one sentence group.
inline constexpr std::string_view kPasskeyFiller =
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. ";

/// Shared options of the tasks.
struct TaskOptions {
  std::size_t context_chars = 32768;  ///< length of the haystack in characters (before facts)
  std::string filler = std::string(kPasskeyFiller);  ///< repeated (or sliced) to that length
  std::int64_t num_records = 8;       ///< kv_lookup: records planted
  std::uint64_t seed = 0;             ///< trial seed

  /// Throws mc::Error ([mc.eval.bad_task]) for an empty filler or haystack.
  void validate() const {
    MC_EXPECTS(!filler.empty() && context_chars >= 1, Errc::kInvalidArgument,
               "[mc.eval.bad_task] filler of ", filler.size(), " chars, context_chars = ",
               context_chars, "; both must be >= 1");
    MC_EXPECTS(num_records >= 1 && num_records <= 1000, Errc::kInvalidArgument,
               "[mc.eval.bad_task] num_records = ", num_records, "; must be in [1, 1000]");
  }
};

namespace detail {

// `chars` characters of filler: the filler repeated, or a slice of it at a seeded offset when it
// is longer (corpus text), cut at sentence ends where possible.
inline std::string haystack(const TaskOptions& o, std::mt19937_64& rng) {
  std::string h;
  h.reserve(o.context_chars + o.filler.size());
  if (o.filler.size() > o.context_chars) {
    const std::size_t start = rng() % (o.filler.size() - o.context_chars + 1);
    h = o.filler.substr(start, o.context_chars);
  } else {
    while (h.size() < o.context_chars) h += o.filler;
    h.resize(o.context_chars);
  }
  return h;
}

// Inserts `fact` at the sentence boundary at or after `at` (or at the end), returns where.
inline std::size_t plant(std::string& text, std::size_t at, const std::string& fact) {
  std::size_t p = text.find(". ", std::min(at, text.size()));
  p = p == std::string::npos ? text.size() : p + 2;
  text.insert(p, fact);
  return p;
}

inline std::string digits(std::mt19937_64& rng, int n) {
  std::string s;
  for (int i = 0; i < n; ++i) s += static_cast<char>('0' + (i == 0 ? 1 + rng() % 9 : rng() % 10));
  return s;
}

inline std::string word(std::mt19937_64& rng) {
  static constexpr const char* kSyll[] = {"ka", "lo", "mi", "re", "su", "ta", "vo", "ne",
                                          "pi", "da", "zu", "fe", "go", "ri", "ba", "xe"};
  std::string s;
  for (int i = 0; i < 3; ++i) s += kSyll[rng() % 16];
  return s;
}

}  // namespace detail

/// A pass key at a uniformly random depth of the haystack; the question asks for it.
inline Trial passkey_trial(const TaskOptions& o) {
  o.validate();
  std::mt19937_64 rng(o.seed);
  Trial t;
  t.context = detail::haystack(o, rng);
  const std::string key = detail::digits(rng, 5);
  const std::size_t depth = static_cast<std::size_t>(rng() % (t.context.size() + 1));
  t.fact_offsets.push_back(detail::plant(
      t.context, depth, "The pass key is " + key + ". Remember it. " + key + " is the pass key. "));
  t.question = "\nWhat is the pass key? The pass key is";
  t.answer = key;
  return t;
}

/// `num_records` records "The code of <word> is <digits>." at random depths; one is asked.
inline Trial kv_lookup_trial(const TaskOptions& o) {
  o.validate();
  std::mt19937_64 rng(o.seed ^ 0x6B76ull);
  Trial t;
  t.context = detail::haystack(o, rng);
  std::vector<std::string> keys, values;
  while (static_cast<std::int64_t>(keys.size()) < o.num_records) {
    std::string k = detail::word(rng);
    if (std::find(keys.begin(), keys.end(), k) != keys.end()) continue;
    keys.push_back(k);
    values.push_back(detail::digits(rng, 4));
  }
  std::vector<std::size_t> depths(keys.size());
  for (auto& d : depths) d = static_cast<std::size_t>(rng() % (t.context.size() + 1));
  // Plant from the back so earlier offsets stay valid; record offsets afterwards.
  std::vector<std::size_t> order(keys.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return depths[a] > depths[b]; });
  for (std::size_t i : order)
    detail::plant(t.context, depths[i], "The code of " + keys[i] + " is " + values[i] + ". ");
  for (std::size_t i = 0; i < keys.size(); ++i)
    t.fact_offsets.push_back(t.context.find("The code of " + keys[i] + " is "));
  const std::size_t asked = static_cast<std::size_t>(rng() % keys.size());
  t.question = "\nWhat is the code of " + keys[asked] + "? The code of " + keys[asked] + " is";
  t.answer = values[asked];
  return t;
}

/// Two facts far apart ("<person> lives in <city>." in the first third, "The one who lives in
/// <city> keeps a <thing>." in the last third); the question asks what the person keeps.
inline Trial multi_hop_trial(const TaskOptions& o) {
  o.validate();
  std::mt19937_64 rng(o.seed ^ 0x6D68ull);
  static constexpr const char* kThings[] = {"lantern", "violin", "compass", "falcon", "anvil",
                                            "kettle", "ledger", "hammer", "mirror", "saddle"};
  Trial t;
  t.context = detail::haystack(o, rng);
  const std::string person = detail::word(rng), city = detail::word(rng);
  const std::string thing = kThings[rng() % 10];
  const std::size_t n = t.context.size();
  const std::size_t late = 2 * n / 3 + static_cast<std::size_t>(rng() % (n / 3 + 1));
  const std::size_t early = static_cast<std::size_t>(rng() % (n / 3 + 1));
  detail::plant(t.context, late, "The one who lives in " + city + " keeps a " + thing + ". ");
  detail::plant(t.context, early, person + " lives in " + city + ". ");
  t.fact_offsets = {t.context.find(person + " lives in "), t.context.find("The one who lives in ")};
  t.question = "\nWhat does " + person + " keep? " + person + " keeps a";
  t.answer = thing;
  return t;
}

/// True when `generated` answers `t`: after leading spaces it starts with the answer.
inline bool answered(const Trial& t, std::string_view generated) {
  const std::size_t b = generated.find_first_not_of(' ');
  if (b == std::string_view::npos) return false;
  return generated.substr(b).starts_with(t.answer);
}

}  // namespace mc::eval
