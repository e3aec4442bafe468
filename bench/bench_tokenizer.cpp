// SPDX-License-Identifier: Apache-2.0
// Tokenizer benchmarks on real English text: the Debian copyright files
// (/usr/share/doc/*/copyright; every 10th file held out for encoding, the rest for training).
// Encode with a warm and a cold chunk cache, decode, and training an 8192 vocabulary. Baselines
// in the same run: BM_Tokenizer_Pretokenize (the splitter alone, an upper bound for encode) and
// BM_Tokenizer_Encode_ref (classic BPE per chunk with no cache).
#include <benchmark/benchmark.h>

#include "bench_main.hpp"

#include <megacontext/tokenizer.hpp>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace {

std::string read_file(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

struct Corpus {
  std::vector<std::string> train;  ///< 9 of every 10 copyright files
  std::string held_out;            ///< the 10th file of every 10, concatenated
};

const Corpus& corpus() {
  static const Corpus c = [] {
    Corpus r;
    std::vector<std::filesystem::path> files;
    std::error_code ec;
    for (const auto& e : std::filesystem::directory_iterator("/usr/share/doc", ec)) {
      const auto p = e.path() / "copyright";
      if (std::filesystem::is_regular_file(p, ec)) files.push_back(p);
    }
    std::sort(files.begin(), files.end());
    for (std::size_t i = 0; i < files.size(); ++i) {
      if (i % 10 == 0) r.held_out += read_file(files[i]);
      else r.train.push_back(read_file(files[i]));
    }
    return r;
  }();
  return c;
}

/// The first `bytes` of the training documents (whole documents).
std::vector<std::string> training_prefix(std::size_t bytes) {
  std::vector<std::string> docs;
  std::size_t total = 0;
  for (const auto& d : corpus().train) {
    if (total >= bytes) break;
    docs.push_back(d);
    total += d.size();
  }
  return docs;
}

/// An 8192-id tokenizer trained on 8 MB of the training files (built once).
const mc::Tokenizer& tokenizer_8k() {
  static const mc::Tokenizer t = [] {
    mc::BpeTrainOptions o;
    o.vocab_size = 8192;
    o.special_tokens = {"<|endoftext|>"};
    return mc::Tokenizer::train(training_prefix(8u << 20), o);
  }();
  return t;
}

bool have_corpus(benchmark::State& state) {
  if (corpus().held_out.size() < (1u << 16)) {
    state.SkipWithError("no /usr/share/doc/*/copyright files to benchmark on");
    return false;
  }
  return true;
}

void BM_Tokenizer_Pretokenize(benchmark::State& state) {
  if (!have_corpus(state)) return;
  const std::string& text = corpus().held_out;
  for (auto _ : state) {
    std::size_t n = 0;
    mc::for_each_chunk(text, [&](std::string_view c) { n += c.size() > 1; });
    benchmark::DoNotOptimize(n);
  }
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(text.size()));
}

void BM_Tokenizer_Encode_ref(benchmark::State& state) {
  if (!have_corpus(state)) return;
  const auto& t = tokenizer_8k();
  const std::string& text = corpus().held_out;
  std::size_t tokens = 0;
  for (auto _ : state) {
    const auto ids = t.encode_uncached(text);
    tokens = ids.size();
    benchmark::DoNotOptimize(ids.data());
  }
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(text.size()));
  state.SetItemsProcessed(state.iterations() * static_cast<std::int64_t>(tokens));
}

// Warm: the cache persists across iterations (the steady state of a long-running encoder).
void BM_Tokenizer_Encode(benchmark::State& state) {
  if (!have_corpus(state)) return;
  auto t = tokenizer_8k();
  const std::string& text = corpus().held_out;
  std::vector<mc::TokenId> ids;
  for (auto _ : state) {
    ids.clear();
    t.encode(text, ids);
    benchmark::DoNotOptimize(ids.data());
  }
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(text.size()));
  state.SetItemsProcessed(state.iterations() * static_cast<std::int64_t>(ids.size()));
  state.counters["tokens_per_byte"] =
      static_cast<double>(ids.size()) / static_cast<double>(text.size());
  state.counters["cached_chunks"] = static_cast<double>(t.cache_size());
}

// Cold: every iteration starts from an empty cache, so this is the first pass over new text.
void BM_Tokenizer_EncodeCold(benchmark::State& state) {
  if (!have_corpus(state)) return;
  const std::string& text = corpus().held_out;
  std::vector<mc::TokenId> ids;
  for (auto _ : state) {
    state.PauseTiming();
    auto t = tokenizer_8k();
    ids.clear();
    state.ResumeTiming();
    t.encode(text, ids);
    benchmark::DoNotOptimize(ids.data());
  }
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(text.size()));
}

void BM_Tokenizer_Decode(benchmark::State& state) {
  if (!have_corpus(state)) return;
  auto t = tokenizer_8k();
  const std::string& text = corpus().held_out;
  const auto ids = t.encode(text);
  std::string out;
  for (auto _ : state) {
    out.clear();
    t.decode(ids, out);
    benchmark::DoNotOptimize(out.data());
  }
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(text.size()));
  state.SetItemsProcessed(state.iterations() * static_cast<std::int64_t>(ids.size()));
}

// Training an 8192 vocabulary on the first range(0) MB of the training files.
void BM_Tokenizer_Train(benchmark::State& state) {
  if (!have_corpus(state)) return;
  const auto docs = training_prefix(static_cast<std::size_t>(state.range(0)) << 20);
  std::size_t bytes = 0;
  for (const auto& d : docs) bytes += d.size();
  mc::BpeTrainOptions o;
  o.vocab_size = 8192;
  std::size_t merges = 0;
  for (auto _ : state) {
    const auto t = mc::Tokenizer::train(docs, o);
    merges = t.merges().size();
    benchmark::DoNotOptimize(merges);
  }
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(bytes));
  state.counters["corpus_MB"] = static_cast<double>(bytes) / 1e6;
  state.counters["merges"] = static_cast<double>(merges);
}

// A harder training corpus than the (repetitive) copyright files: range(0) MB of words drawn
// from a Zipf(1) law over 500,000 random letter strings, with digits, punctuation and newlines,
// so the trainer sees hundreds of thousands of distinct chunks.
std::string synthetic_text(std::size_t bytes) {
  std::uint64_t x = 88172645463325252ull;
  auto next = [&] {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return x;
  };
  constexpr std::size_t kWords = 500'000;
  std::vector<std::string> words(kWords);
  for (auto& w : words) {
    const std::size_t n = 2 + next() % 11;
    for (std::size_t i = 0; i < n; ++i) w.push_back(static_cast<char>('a' + next() % 26));
  }
  // Zipf(1) by inverse transform over the harmonic CDF.
  std::vector<double> cdf(kWords);
  double h = 0;
  for (std::size_t i = 0; i < kWords; ++i) cdf[i] = (h += 1.0 / static_cast<double>(i + 1));
  std::string out;
  out.reserve(bytes + 64);
  while (out.size() < bytes) {
    const double u = static_cast<double>(next() >> 11) * 0x1.0p-53 * h;
    const auto r = static_cast<std::size_t>(std::lower_bound(cdf.begin(), cdf.end(), u) -
                                            cdf.begin());
    out += ' ';
    out += words[std::min(r, kWords - 1)];
    const auto p = next() % 32;
    if (p == 0) out += std::to_string(next() % 10000);
    else if (p < 4) out += ",.;\n"[p];
  }
  return out;
}

void BM_Tokenizer_TrainSynthetic(benchmark::State& state) {
  const std::string text = synthetic_text(static_cast<std::size_t>(state.range(0)) << 20);
  mc::BpeTrainOptions o;
  o.vocab_size = 8192;
  std::size_t merges = 0;
  for (auto _ : state) {
    const auto t = mc::Tokenizer::train(text, o);
    merges = t.merges().size();
    benchmark::DoNotOptimize(merges);
  }
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(text.size()));
  state.counters["corpus_MB"] = static_cast<double>(text.size()) / 1e6;
  state.counters["merges"] = static_cast<double>(merges);
}

}  // namespace

BENCHMARK(BM_Tokenizer_Pretokenize)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Tokenizer_Encode_ref)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Tokenizer_Encode)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Tokenizer_EncodeCold)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Tokenizer_Decode)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Tokenizer_Train)->Arg(2)->Arg(8)->Arg(32)->Iterations(1)->Unit(benchmark::kSecond);
BENCHMARK(BM_Tokenizer_TrainSynthetic)->Arg(16)->Arg(48)->Iterations(1)->Unit(benchmark::kSecond);

MC_BENCHMARK_MAIN("bench_tokenizer")
