// SPDX-License-Identifier: Apache-2.0
// mc_train_gpu: trains the reference decoder on the GPU (mc::cuda::DeviceLlama) from text files
// and a tokenizer, mixing in synthetic in-window retrieval sequences (pass key, key-value lookup,
// two-fact questions from eval/tasks.hpp, with training-only seeds) so that a small model learns
// to retrieve inside its window; then long-history retrieval measures MegaContext, not the base
// model. Writes the model (safetensors, BF16 by default, options in the metadata), a loss curve
// (CSV) and the in-window retrieval accuracy.
//
//   mc_train_gpu --train FILE --valid FILE --tokenizer FILE --out DIR [--d-model 384]
//     [--layers 6] [--heads 6] [--d-ff 1024] [--seq-len 1024] [--batch 16] [--steps 3000]
//     [--lr 2e-3] [--lr-min 1e-4] [--warmup 200] [--synthetic 0.15] [--eval-every 250]
//     [--eval-batches 8] [--seed 1] [--dtype bf16|f32]
#include <megacontext/eval/tasks.hpp>
#include <megacontext/reference/llama_io.hpp>
#include <megacontext/tokenizer.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "../cli.hpp"
#include "../progress_bar.hpp"
#include "gpu_trainer.hpp"

namespace {

namespace fs = std::filesystem;

struct Args {
  fs::path train, valid, tokenizer, out;
  std::int64_t d_model = 384, layers = 6, heads = 6, d_ff = 1024, seq_len = 1024, batch = 16;
  std::int64_t steps = 3000, warmup = 200, eval_every = 250, eval_batches = 8;
  double lr = 2e-3, lr_min = 1e-4, synthetic = 0.15;
  std::uint64_t seed = 1;
  std::string dtype = "bf16";
  std::string command;
};

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 0; i < argc; ++i) a.command += (i ? " " : "") + std::string(argv[i]);
  mc::tools::ArgCursor arg(argc, argv);
  while (arg.next()) {
    if (arg.is("--help") || arg.is("-h")) {
      std::cout << "usage: mc_train_gpu --train FILE --valid FILE --tokenizer FILE --out DIR "
                   "[--d-model N] [--layers N] [--heads N] [--d-ff N] [--seq-len N] [--batch N] "
                   "[--steps N] [--lr X] [--lr-min X] [--warmup N] [--synthetic P] "
                   "[--eval-every N] [--eval-batches N] [--seed S] [--dtype bf16|f32]\n";
      std::exit(0);
    }
    if (arg.is("--train")) a.train = arg.value();
    else if (arg.is("--valid")) a.valid = arg.value();
    else if (arg.is("--tokenizer")) a.tokenizer = arg.value();
    else if (arg.is("--out")) a.out = arg.value();
    else if (arg.is("--d-model")) a.d_model = arg.integer();
    else if (arg.is("--layers")) a.layers = arg.integer();
    else if (arg.is("--heads")) a.heads = arg.integer();
    else if (arg.is("--d-ff")) a.d_ff = arg.integer();
    else if (arg.is("--seq-len")) a.seq_len = arg.integer();
    else if (arg.is("--batch")) a.batch = arg.integer();
    else if (arg.is("--steps")) a.steps = arg.integer();
    else if (arg.is("--lr")) a.lr = arg.real();
    else if (arg.is("--lr-min")) a.lr_min = arg.real();
    else if (arg.is("--warmup")) a.warmup = arg.integer();
    else if (arg.is("--synthetic")) a.synthetic = arg.real();
    else if (arg.is("--eval-every")) a.eval_every = arg.integer();
    else if (arg.is("--eval-batches")) a.eval_batches = arg.integer();
    else if (arg.is("--seed")) a.seed = static_cast<std::uint64_t>(arg.integer());
    else if (arg.is("--dtype")) a.dtype = arg.value();
    else arg.unknown();
  }
  MC_EXPECTS(!a.train.empty() && !a.valid.empty() && !a.tokenizer.empty() && !a.out.empty(),
             mc::Errc::kInvalidArgument, "--train, --valid, --tokenizer and --out are required");
  MC_EXPECTS(a.synthetic >= 0 && a.synthetic <= 1, mc::Errc::kInvalidArgument,
             "--synthetic = ", a.synthetic, " must be in [0, 1]");
  MC_EXPECTS(a.dtype == "bf16" || a.dtype == "f32", mc::Errc::kInvalidArgument, "--dtype = ",
             a.dtype, " must be bf16 or f32");
  MC_EXPECTS(a.steps >= 1 && a.eval_every >= 1 && a.eval_batches >= 1, mc::Errc::kInvalidArgument,
             "--steps, --eval-every and --eval-batches must be >= 1");
  return a;
}

// Training-only seeds: evaluation uses seeds below 2^40, training draws above it.
constexpr std::uint64_t kTrainSeedBase = std::uint64_t{1} << 40;

// One synthetic retrieval sequence (question and answer included) of at most `max_tokens`
// tokens; the haystack is a slice of training text. The answer is followed by ".\n".
std::vector<mc::TokenId> synthetic_row(mc::Tokenizer& tok, const std::string& text,
                                       std::mt19937_64& rng, std::int64_t max_tokens,
                                       std::uint64_t seed_base,
                                       std::vector<std::int64_t>* answer_span = nullptr) {
  for (;;) {
    mc::eval::TaskOptions o;
    o.seed = seed_base + (rng() >> 24);  // [base, base + 2^40)
    // ~3.5 bytes per token; leave room for the question.
    const auto max_chars = static_cast<std::size_t>(std::max<std::int64_t>(200, (max_tokens - 48) * 3));
    o.context_chars = 100 + static_cast<std::size_t>(rng() % max_chars);
    if (rng() % 2 == 0) {
      const std::size_t at = static_cast<std::size_t>(rng() % (text.size() - o.context_chars - 1));
      o.filler = text.substr(at, o.context_chars + 1);
    }
    o.num_records = 2 + static_cast<std::int64_t>(rng() % 8);
    const int kind = static_cast<int>(rng() % 3);
    const mc::eval::Trial t = kind == 0   ? mc::eval::passkey_trial(o)
                              : kind == 1 ? mc::eval::kv_lookup_trial(o)
                                          : mc::eval::multi_hop_trial(o);
    std::vector<mc::TokenId> ids = tok.encode(t.context + t.question);
    const auto prompt = static_cast<std::int64_t>(ids.size());
    const auto answer = tok.encode(" " + t.answer + ".\n");
    ids.insert(ids.end(), answer.begin(), answer.end());
    if (static_cast<std::int64_t>(ids.size()) > max_tokens) continue;
    if (answer_span) *answer_span = {prompt, static_cast<std::int64_t>(ids.size()) - 2};
    return ids;
  }
}

// Fills one [seq_len] row of tokens and next-token targets: a window of `corpus`, or (with
// probability p) a synthetic sequence followed by corpus text.
void fill_row(mc::Tokenizer& tok, const std::string& text, const std::vector<mc::TokenId>& corpus,
              std::int64_t seq_len, double p, std::mt19937_64& rng, mc::TokenId* tokens,
              mc::TokenId* targets) {
  std::vector<mc::TokenId> row;
  if (std::uniform_real_distribution<double>(0, 1)(rng) < p)
    row = synthetic_row(tok, text, rng, seq_len + 1, kTrainSeedBase);
  const auto need = static_cast<std::size_t>(seq_len + 1) - row.size();
  const std::size_t at = static_cast<std::size_t>(rng() % (corpus.size() - need));
  row.insert(row.end(), corpus.begin() + static_cast<std::ptrdiff_t>(at),
             corpus.begin() + static_cast<std::ptrdiff_t>(at + need));
  for (std::int64_t i = 0; i < seq_len; ++i) {
    tokens[i] = row[static_cast<std::size_t>(i)];
    targets[i] = row[static_cast<std::size_t>(i + 1)];
  }
}

}  // namespace

int main(int argc, char** argv) try {
  const Args a = parse(argc, argv);
  fs::create_directories(a.out);
  mc::Tokenizer tok = mc::Tokenizer::load(a.tokenizer);
  const std::string train_text = mc::tools::read_file(a.train), valid_text = mc::tools::read_file(a.valid);
  const auto train = tok.encode(train_text);
  const auto valid = tok.encode(valid_text);
  const std::int64_t T = a.seq_len, B = a.batch, rows = B * T;
  MC_EXPECTS(static_cast<std::int64_t>(train.size()) > 4 * T &&
                 static_cast<std::int64_t>(valid.size()) > a.eval_batches * rows + 1,
             mc::Errc::kInvalidArgument, "too little text: ", train.size(), " train and ",
             valid.size(), " valid tokens for ", a.eval_batches, " validation batches of ", rows);
  std::cout << "device: " << mc::tools::GpuTrainer::device_name() << "\n"
            << "tokens: " << train.size() << " train, " << valid.size() << " valid (vocabulary "
            << tok.vocab_size() << ")\n";

  mc::reference::LlamaOptions o;
  o.d_model = a.d_model;
  o.n_layers = a.layers;
  o.n_heads = a.heads;
  o.d_ff = a.d_ff;
  o.n_vocab = tok.vocab_size();
  mc::tools::GpuTrainOptions t;
  t.batch = B;
  t.seq_len = T;
  t.schedule = {a.lr, a.lr_min, a.warmup, a.steps};
  mc::tools::GpuTrainer gpu(o, mc::reference::LlamaWeights<float>::random(o, a.seed), t);
  std::cout << "model: " << gpu.num_parameters() << " parameters, d_model " << o.d_model << ", "
            << o.n_layers << " layers, " << o.n_heads << " heads, d_ff " << o.d_ff
            << "; device memory " << gpu.device_bytes() / (1 << 20) << " MiB\n";

  std::mt19937_64 rng(a.seed * 0x9E3779B97F4A7C15ull + 7);
  std::vector<mc::TokenId> tokens(static_cast<std::size_t>(rows)), targets(tokens.size());
  auto validate = [&] {
    double sum = 0;
    for (std::int64_t b = 0; b < a.eval_batches; ++b) {
      for (std::int64_t i = 0; i < rows; ++i) {
        tokens[static_cast<std::size_t>(i)] = valid[static_cast<std::size_t>(b * rows + i)];
        targets[static_cast<std::size_t>(i)] = valid[static_cast<std::size_t>(b * rows + i + 1)];
      }
      sum += gpu.evaluate(tokens, targets);
    }
    return sum / static_cast<double>(a.eval_batches);
  };

  std::ofstream csv(a.out / "loss.csv");
  csv << "step,tokens,train_loss,valid_loss,lr,grad_norm,seconds\n";
  mc::tools::ProgressBar bar(a.steps, "steps");
  double smooth = 0, last_valid = validate();
  // The weights of the best validation loss so far are what gets saved (the corpus is small
  // enough for a long run to start overfitting).
  double best_valid = last_valid;
  std::int64_t best_step = 0;
  mc::reference::LlamaWeights<float> best = gpu.weights();
  csv << "0,0,," << last_valid << ",0,0,0\n";
  for (std::int64_t s = 1; s <= a.steps; ++s) {
    for (std::int64_t b = 0; b < B; ++b)
      fill_row(tok, train_text, train, T, a.synthetic, rng, tokens.data() + b * T,
               targets.data() + b * T);
    gpu.step(tokens, targets);
    if (s % 25 == 0 || s == a.steps) {
      const double l = gpu.loss();
      smooth = smooth == 0 ? l : 0.9 * smooth + 0.1 * l;
      double lr = 0, gn = 0;
      std::int64_t skipped = 0;
      gpu.scalars(lr, gn, skipped);
      const bool eval_now = s % a.eval_every == 0 || s == a.steps;
      if (eval_now) {
        last_valid = validate();
        if (last_valid < best_valid) {
          best_valid = last_valid;
          best_step = s;
          best = gpu.weights();
        }
      }
      csv << s << ',' << s * rows << ',' << l << ',' << (eval_now ? std::to_string(last_valid) : "")
          << ',' << lr << ',' << gn << ',' << bar.seconds() << '\n';
      char extra[128];
      std::snprintf(extra, sizeof extra, "loss %.3f valid %.3f %.0f tok/s skipped %lld", smooth,
                    last_valid, static_cast<double>(s * rows) / bar.seconds(),
                    static_cast<long long>(skipped));
      bar.update(s, extra);
    }
  }
  bar.finish();
  const double train_seconds = bar.seconds();

  // In-window retrieval: teacher-forced, an answer is right when every answer token is the
  // arg-max at its position. Evaluation seeds (below 2^40) were never trained on.
  std::int64_t right = 0, total = 0;
  std::mt19937_64 eval_rng(424242);
  for (int round = 0; round < 8; ++round) {
    std::vector<std::vector<std::int64_t>> spans(static_cast<std::size_t>(B));
    for (std::int64_t b = 0; b < B; ++b) {
      std::mt19937_64 r(eval_rng());
      auto row = synthetic_row(tok, train_text, r, T + 1, /*seed_base=*/0,
                               &spans[static_cast<std::size_t>(b)]);
      row.resize(static_cast<std::size_t>(T + 1), row.back());
      for (std::int64_t i = 0; i < T; ++i) {
        tokens[static_cast<std::size_t>(b * T + i)] = row[static_cast<std::size_t>(i)];
        targets[static_cast<std::size_t>(b * T + i)] = row[static_cast<std::size_t>(i + 1)];
      }
    }
    gpu.evaluate(tokens, targets);
    const auto logits = gpu.logits();
    const std::int64_t V = o.n_vocab;
    for (std::int64_t b = 0; b < B; ++b) {
      const auto& sp = spans[static_cast<std::size_t>(b)];
      bool ok = true;
      // Positions sp[0]-1 .. sp[1]-1 predict the answer tokens sp[0] .. sp[1].
      for (std::int64_t pos = sp[0] - 1; pos < sp[1] && ok; ++pos) {
        const float* l = logits.data() + (b * T + pos) * V;
        const auto arg = static_cast<mc::TokenId>(std::max_element(l, l + V) - l);
        ok = arg == targets[static_cast<std::size_t>(b * T + pos)];
      }
      right += ok;
      ++total;
    }
  }
  std::printf("in-window retrieval (teacher-forced, %lld trials): %.1f%%\n",
              static_cast<long long>(total), 100.0 * static_cast<double>(right) / static_cast<double>(total));
  std::printf("validation loss %.4f nats/token (perplexity %.2f) after %lld steps, %.1f s; "
              "best %.4f (perplexity %.2f) at step %lld, saved\n",
              last_valid, std::exp(last_valid), static_cast<long long>(a.steps), train_seconds,
              best_valid, std::exp(best_valid), static_cast<long long>(best_step));

  mc::reference::LlamaModel<float> model(o, std::move(best));
  const auto dtype = a.dtype == "bf16" ? mc::io::TensorDtype::kBF16 : mc::io::TensorDtype::kF32;
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.6f", best_valid);
  mc::reference::save_llama(
      a.out / "model.safetensors", model, dtype,
      {{"tokenizer", a.tokenizer.filename().string()}, {"valid_loss", buf},
       {"steps", std::to_string(best_step)}, {"tokens_seen", std::to_string(best_step * rows)},
       {"train_seconds", std::to_string(train_seconds)},
       {"in_window_retrieval", std::to_string(static_cast<double>(right) / static_cast<double>(total))},
       {"device", mc::tools::GpuTrainer::device_name()}, {"command", a.command}});
  fs::copy_file(a.tokenizer, a.out / a.tokenizer.filename(), fs::copy_options::overwrite_existing);
  std::cout << "wrote " << (a.out / "model.safetensors").string() << ", loss.csv and "
            << a.tokenizer.filename().string() << "\n";
  return 0;
} catch (const std::exception& e) {
  std::cerr << "mc_train_gpu: " << e.what() << "\n";
  return 1;
}
