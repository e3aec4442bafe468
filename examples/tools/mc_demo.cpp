// SPDX-License-Identifier: Apache-2.0
// mc_demo: MegaContext end to end on the CPU. Streams a long document (default: the King James
// Bible) into a session with a progress bar, with a few pass keys planted at random depths, then
// asks for each pass key and for a few verses by their reference (e.g. "Joh11:35"), which only
// the history can answer, prints the answers, the telemetry totals, and writes a focus map (level
// of detail per region of the history over time) as SVG plus the telemetry as JSON lines.
//
//   mc_demo --model FILE --tokenizer FILE [--input FILE] [--w-max N] [--out DIR]
//           [--max-tokens N] [--passkeys N] [--seed S] [--recency TOKENS]
#include <megacontext/megacontext.hpp>
#include <megacontext/reference/llama_io.hpp>

#include <cctype>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "cli.hpp"
#include "progress_bar.hpp"

namespace {

namespace fs = std::filesystem;
using C = mc::DefaultConfig;  // K = 32, Depth = 3
using Model = mc::reference::LlamaModel<float>;
using Gister = mc::MeanPoolGister<C>;
using Scorer = mc::RecencyScorer;
using Session = mc::Session<C, Model, Gister, Scorer, mc::BudgetOptimal, mc::DiskStorage>;

struct Args {
  fs::path model, tokenizer;
  fs::path input = "build/release/demo-corpus/bible.txt";
  fs::path out = "mc_demo_out";
  std::int64_t w_max = 1024, max_tokens = 0, passkeys = 3, chunk = 16384;
  std::uint64_t seed = 20261123;
  double recency = 1024;
};

Args parse(int argc, char** argv) {
  Args a;
  mc::tools::ArgCursor arg(argc, argv);
  while (arg.next()) {
    if (arg.is("--model")) a.model = arg.value();
    else if (arg.is("--tokenizer")) a.tokenizer = arg.value();
    else if (arg.is("--input")) a.input = arg.value();
    else if (arg.is("--out")) a.out = arg.value();
    else if (arg.is("--w-max")) a.w_max = arg.integer();
    else if (arg.is("--max-tokens")) a.max_tokens = arg.integer();
    else if (arg.is("--passkeys")) a.passkeys = arg.integer();
    else if (arg.is("--chunk")) a.chunk = arg.integer();
    else if (arg.is("--seed")) a.seed = static_cast<std::uint64_t>(arg.integer());
    else if (arg.is("--recency")) a.recency = arg.real();
    else if (arg.is("--help") || arg.is("-h")) {
      std::cout << "usage: mc_demo --model FILE --tokenizer FILE [--input FILE] [--w-max N] "
                   "[--out DIR] [--max-tokens N] [--passkeys N] [--seed S] [--recency TOKENS]\n";
      std::exit(0);
    } else {
      arg.unknown();
    }
  }
  MC_EXPECTS(!a.model.empty() && !a.tokenizer.empty(), mc::Errc::kInvalidArgument,
             "--model and --tokenizer are required (try --help)");
  MC_EXPECTS(a.passkeys >= 0 && a.passkeys <= 20, mc::Errc::kInvalidArgument, "--passkeys = ",
             a.passkeys, " must be in [0, 20]");
  MC_EXPECTS(a.max_tokens >= 0 && a.chunk >= 1, mc::Errc::kInvalidArgument,
             "--max-tokens must be >= 0 and --chunk >= 1");
  return a;
}

struct Passkey {
  std::string name, key;
  std::size_t at = 0;  // byte offset where it was planted
};

// Plants `n` pass keys, in the sentence form the bundled model learnt in its window
// (eval/tasks.hpp): the first near the end of the text (it is still inside the working context's
// token window when the question comes), the others at seeded random line starts.
std::vector<Passkey> plant_passkeys(std::string& text, std::int64_t n, std::uint64_t seed) {
  static const char* kNames[] = {"blue", "red", "green", "silver", "golden", "iron", "glass",
                                 "cedar", "stone", "copper", "amber", "ivory", "oak", "salt",
                                 "brass", "linen", "marble", "north", "south", "east"};
  std::mt19937_64 rng(seed);
  std::vector<Passkey> keys;
  for (std::int64_t i = 0; i < n; ++i) {
    Passkey k;
    k.name = kNames[i];
    k.key = std::to_string(10000 + rng() % 90000);
    std::size_t at = i == 0 ? text.size() - std::min<std::size_t>(text.size(), 600)
                            : static_cast<std::size_t>(rng() % std::max<std::size_t>(1, text.size()));
    at = text.find('\n', at);
    at = at == std::string::npos ? text.size() : at + 1;
    const std::string sentence = "The code of " + k.name + " is " + k.key + ". ";
    text.insert(at, sentence);
    for (auto& other : keys)
      if (other.at >= at) other.at += sentence.size();
    k.at = at;
    keys.push_back(k);
  }
  return keys;
}

// A verse label ("Joh11:35") and its text, taken from the document itself.
struct Verse {
  std::string label, text;
};

std::vector<Verse> pick_verses(const std::string& doc, std::size_t count, std::uint64_t seed) {
  std::vector<Verse> out;
  std::mt19937_64 rng(seed ^ 0x5EED);
  for (int tries = 0; tries < 200 && out.size() < count; ++tries) {
    std::size_t at = doc.find('\n', static_cast<std::size_t>(rng() % std::max<std::size_t>(1, doc.size())));
    if (at == std::string::npos) continue;
    const std::size_t end = doc.find('\n', at + 1);
    if (end == std::string::npos) continue;
    const std::string line = doc.substr(at + 1, end - at - 1);
    const std::size_t sp = line.find(' ');
    if (sp == std::string::npos || sp < 3 || line.find(':') > sp || line.size() - sp < 12) continue;
    if (line.rfind("The pass key", 0) == 0) continue;
    out.push_back({line.substr(0, sp), line.substr(sp + 1)});
  }
  return out;
}

// Feeds `prompt` to the session and generates greedily until a newline or `max_tokens`.
std::string ask(Session& s, mc::Tokenizer& tok, const std::string& prompt, std::int64_t max_tokens) {
  s.ingest_text(tok, prompt);
  std::string answer;
  for (std::int64_t i = 0; i < max_tokens; ++i) {
    const mc::TokenId t = s.sample({});
    s.push(t);
    const std::string piece{tok.token_bytes(t)};
    if (piece.find('\n') != std::string::npos) {
      answer += piece.substr(0, piece.find('\n'));
      break;
    }
    answer += piece;
  }
  return answer;
}

std::string digits_of(const std::string& s) {
  std::string d;
  for (char c : s)
    if (std::isdigit(static_cast<unsigned char>(c))) d += c;
    else if (!d.empty()) break;
  return d;
}

}  // namespace

int main(int argc, char** argv) try {
  const Args args = parse(argc, argv);
  Model model = mc::reference::load_llama(args.model);
  mc::Tokenizer tok = mc::Tokenizer::load(args.tokenizer);
  MC_EXPECTS(tok.vocab_size() <= model.dims().n_vocab, mc::Errc::kConfigMismatch,
             "the tokenizer has ", tok.vocab_size(), " ids but the model only ",
             model.dims().n_vocab);
  std::cout << "model " << args.model << ": d_model " << model.dims().d_model << ", "
            << model.options().n_layers << " layers, vocabulary " << model.dims().n_vocab << "\n";

  std::string text = mc::tools::read_file(args.input);
  const auto keys = plant_passkeys(text, args.passkeys, args.seed);
  std::vector<mc::TokenId> ids;
  tok.encode(text, ids);
  if (args.max_tokens > 0 && static_cast<std::int64_t>(ids.size()) > args.max_tokens)
    ids.resize(static_cast<std::size_t>(args.max_tokens));
  MC_EXPECTS(!ids.empty(), mc::Errc::kInvalidArgument, "[mc.session.empty_input] ",
             args.input.string(), " holds no text");

  fs::create_directories(args.out);
  std::ofstream telemetry(args.out / "telemetry.jsonl");
  Gister gister(model.weights().embedding);  // gists: mean of the model's own embeddings
  Scorer scorer{args.recency};
  mc::SessionOptions so;
  so.context.w_max = args.w_max;
  // A clean local window (the model never saw gists): half the budget, or what the protected
  // entries leave (FocusOptions::validate).
  so.focus.recent_tokens = std::max<std::int64_t>(
      0, std::min(args.w_max / 2, args.w_max - so.context.sink_tokens - 3 * C::Depth * C::K));
  so.seed = args.seed;
  Session s(model, gister, scorer, mc::DiskTree<C>::create(args.out / "tree", model.dim(),
                                                          {.overwrite = true}),
            so);
  s.set_telemetry(&telemetry);
  mc::FocusMap<C> map(512);

  std::cout << "ingesting " << args.input << " (" << text.size() << " bytes, " << args.passkeys
            << " pass keys planted): " << ids.size() << " tokens\n";
  mc::tools::ProgressBar bar(static_cast<std::int64_t>(ids.size()), "tokens");
  for (std::size_t p = 0; p < ids.size(); p += static_cast<std::size_t>(args.chunk)) {
    const std::size_t len = std::min(ids.size() - p, static_cast<std::size_t>(args.chunk));
    s.ingest(std::span(ids).subspan(p, len));
    map.record(s.context(), map.rows().size());
    const double tps = static_cast<double>(p + len) / std::max(1e-9, bar.seconds());
    char extra[96];
    std::snprintf(extra, sizeof extra, "%.2f M tok/s, %lld entries", tps / 1e6,
                  static_cast<long long>(s.context().size()));
    bar.update(static_cast<std::int64_t>(p + len), extra);
  }
  bar.finish();

  std::cout << "\nquestions (greedy answers; the history is the only place they can come from):\n";
  int right = 0, asked = 0;
  const std::string ingested = tok.decode(ids);  // the text actually in the history
  for (const auto& k : keys) {
    if (k.at >= ingested.size()) continue;  // cut off by --max-tokens
    const std::string a =
        ask(s, tok, "\nWhat is the code of " + k.name + "? The code of " + k.name + " is", 6);
    const bool ok = digits_of(a) == k.key;
    right += ok;
    ++asked;
    map.record(s.context(), map.rows().size());
    std::cout << "  code of " << k.name << " (planted at byte " << k.at << " of " << ingested.size()
              << "): "
              << (ok ? "RIGHT" : "wrong") << "  answer \"" << a << "\", key " << k.key << "\n";
  }
  for (const auto& v : pick_verses(ingested, 3, args.seed)) {
    const std::string a = ask(s, tok, "\n" + v.label + " ", 24);
    // Right when the first 12 characters of the verse come back.
    const std::size_t n = std::min<std::size_t>(12, v.text.size());
    const bool ok = a.size() >= n && a.compare(0, n, v.text, 0, n) == 0;
    right += ok;
    ++asked;
    map.record(s.context(), map.rows().size());
    std::cout << "  " << v.label << ": " << (ok ? "RIGHT" : "wrong") << "  answer \"" << a
              << "\"\n      verse \"" << v.text.substr(0, 80) << "\"\n";
  }

  const auto& t = s.totals();
  std::cout << "\n" << right << " of " << asked << " answers right\n\ntelemetry totals:\n";
  std::printf("  history %lld tokens, working context %lld entries (W_max %lld, max seen %lld)\n",
              static_cast<long long>(s.tree().num_tokens()), static_cast<long long>(s.context().size()),
              static_cast<long long>(args.w_max), static_cast<long long>(t.max_entries));
  std::printf("  %lld events, %lld refocuses: %lld expansions, %lld collapses, %lld forced "
              "collapses, %lld evictions, %lld restores\n",
              static_cast<long long>(t.events), static_cast<long long>(t.refocuses),
              static_cast<long long>(t.expansions), static_cast<long long>(t.collapses),
              static_cast<long long>(t.forced_collapses), static_cast<long long>(t.evictions),
              static_cast<long long>(t.restores));
  std::printf("  time (s): append %.2f, admit %.2f, assemble %.2f, score %.2f, allocate %.3f, "
              "model %.2f\n",
              t.latency.append_us * 1e-6, t.latency.admit_us * 1e-6, t.latency.assemble_us * 1e-6,
              t.latency.score_us * 1e-6, t.latency.allocate_us * 1e-6, t.latency.forward_us * 1e-6);
  map.write_svg(args.out / "focus_map.svg", "MegaContext focus over " + args.input.filename().string());
  s.save(args.out / "tree" / "session.safetensors");
  std::cout << "\nwrote " << (args.out / "focus_map.svg").string() << ", "
            << (args.out / "telemetry.jsonl").string() << " and the session in "
            << (args.out / "tree").string() << "\n";
  return 0;
} catch (const std::exception& e) {
  std::cerr << "mc_demo: " << e.what() << "\n";
  return 1;
}
