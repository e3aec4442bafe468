// SPDX-License-Identifier: Apache-2.0
// mc_train_base: trains the base decoder (the frozen model MegaContext wraps) as a next-token LM
// on the CPU, with a progress bar, periodic validation, and resumable safetensors checkpoints.
// Text comes from the corpus built by scripts/build_corpus.sh (build/corpus/{train,valid}.txt),
// or from any two text files. The tokenizer is trained on the training text unless given.
//
//   mc_train_base [--train FILE] [--valid FILE] [--out DIR] [--vocab N] [--tokenizer FILE]
//                 [--d-model N] [--layers N] [--heads N] [--d-ff N] [--seq-len N] [--batch N]
//                 [--steps N] [--lr X] [--eval-every N] [--max-train-bytes N] [--resume]
#include <megacontext/reference/llama.hpp>
#include <megacontext/tokenizer.hpp>
#include <megacontext/train/base_lm.hpp>
#include <megacontext/train/checkpoint.hpp>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <string>

#include "cli.hpp"

namespace {

namespace fs = std::filesystem;

struct Args {
  fs::path train = "build/corpus/train.txt", valid = "build/corpus/valid.txt", out = "build/base_lm";
  fs::path tokenizer;
  std::int64_t vocab = 4096, d_model = 128, layers = 4, heads = 4, d_ff = 344, seq_len = 128;
  std::int64_t batch = 8, steps = 2000, eval_every = 200, max_train_bytes = 8'000'000;
  double lr = 1e-3;
  bool resume = false;
};

Args parse(int argc, char** argv) {
  Args a;
  mc::tools::ArgCursor arg(argc, argv);
  while (arg.next()) {
    const std::string& k = arg.flag();
    if (k == "--train") a.train = arg.value();
    else if (k == "--valid") a.valid = arg.value();
    else if (k == "--out") a.out = arg.value();
    else if (k == "--tokenizer") a.tokenizer = arg.value();
    else if (k == "--vocab") a.vocab = arg.integer();
    else if (k == "--d-model") a.d_model = arg.integer();
    else if (k == "--layers") a.layers = arg.integer();
    else if (k == "--heads") a.heads = arg.integer();
    else if (k == "--d-ff") a.d_ff = arg.integer();
    else if (k == "--seq-len") a.seq_len = arg.integer();
    else if (k == "--batch") a.batch = arg.integer();
    else if (k == "--steps") a.steps = arg.integer();
    else if (k == "--eval-every") a.eval_every = arg.integer();
    else if (k == "--max-train-bytes") a.max_train_bytes = arg.integer();
    else if (k == "--lr") a.lr = std::stod(arg.value());
    else if (k == "--resume") a.resume = true;
    else if (k == "--help" || k == "-h") {
      std::cout << "usage: mc_train_base [--train FILE] [--valid FILE] [--out DIR] [--vocab N]\n"
                   "  [--tokenizer FILE] [--d-model N] [--layers N] [--heads N] [--d-ff N]\n"
                   "  [--seq-len N] [--batch N] [--steps N] [--lr X] [--eval-every N]\n"
                   "  [--max-train-bytes N] [--resume]\n";
      std::exit(0);
    } else {
      throw mc::Error(mc::Errc::kInvalidArgument, "unknown argument '" + k + "' (try --help)");
    }
  }
  return a;
}

void progress(std::int64_t step, std::int64_t total, double loss, double lr, double tok_per_s) {
  const int width = 30;
  const int fill = static_cast<int>(width * step / std::max<std::int64_t>(1, total));
  std::fprintf(stderr, "\r[%s%s] %lld/%lld loss %.3f lr %.2e %.0f tok/s   ",
               std::string(static_cast<std::size_t>(fill), '=').c_str(),
               std::string(static_cast<std::size_t>(width - fill), ' ').c_str(),
               static_cast<long long>(step), static_cast<long long>(total), loss, lr, tok_per_s);
  std::fflush(stderr);
}

}  // namespace

int main(int argc, char** argv) try {
  const Args a = parse(argc, argv);
  fs::create_directories(a.out);
  for (const fs::path& p : {a.train, a.valid})
    if (!fs::is_regular_file(p))
      throw mc::IoError("[mc.train.no_text] cannot read " + p.string() +
                            " (build the corpus with scripts/build_corpus.sh, or pass --train/--valid)",
                        p);
  const std::string train_text = mc::tools::read_file(a.train, a.max_train_bytes);
  const std::string valid_text = mc::tools::read_file(a.valid, a.max_train_bytes / 10);

  const fs::path tok_path = a.tokenizer.empty() ? a.out / "tokenizer.mctok" : a.tokenizer;
  mc::Tokenizer tok = [&] {
    if (fs::exists(tok_path)) return mc::Tokenizer::load(tok_path);
    std::cerr << "training a " << a.vocab << "-token BPE tokenizer on " << train_text.size()
              << " bytes...\n";
    auto t = mc::Tokenizer::train(std::string_view(train_text), {.vocab_size = a.vocab});
    t.save(tok_path);
    return t;
  }();
  const auto train = tok.encode(train_text);
  const auto valid = tok.encode(valid_text);
  std::cerr << "tokens: " << train.size() << " train, " << valid.size() << " valid (vocab "
            << tok.vocab_size() << ")\n";

  mc::reference::LlamaOptions o;
  o.d_model = a.d_model;
  o.n_layers = a.layers;
  o.n_heads = a.heads;
  o.d_ff = a.d_ff;
  o.n_vocab = tok.vocab_size();
  auto model = mc::reference::LlamaModel<float>::random(o, 1);
  mc::train::BaseLmOptions t;
  t.seq_len = a.seq_len;
  t.batch = a.batch;
  t.schedule = {a.lr, a.lr / 10, std::min<std::int64_t>(100, a.steps / 10), a.steps};
  mc::train::BaseLmTrainer<float> trainer(model, t);
  const fs::path ckpt = a.out / "checkpoint.safetensors";
  if (a.resume && fs::exists(ckpt)) {
    const auto info = mc::train::load_checkpoint<float>(ckpt, model.weights(), &trainer.optimizer());
    std::cerr << "resumed from " << ckpt << " at step " << info.step << "\n";
  }
  const std::map<std::string, std::string> meta = {
      {"d_model", std::to_string(o.d_model)}, {"n_layers", std::to_string(o.n_layers)},
      {"n_heads", std::to_string(o.n_heads)}, {"d_ff", std::to_string(o.d_ff)},
      {"n_vocab", std::to_string(o.n_vocab)}, {"tokenizer", tok_path.string()}};
  const double unigram = mc::train::unigram_nll(train, valid, o.n_vocab);
  std::cerr << "unigram baseline on valid: " << unigram << " nats/token\n";

  auto t0 = std::chrono::steady_clock::now();
  double smooth = 0;
  for (std::int64_t s = trainer.optimizer().step_count() + 1; s <= a.steps; ++s) {
    const double loss = trainer.step(train);
    smooth = smooth == 0 ? loss : 0.95 * smooth + 0.05 * loss;
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    progress(s, a.steps, smooth, t.schedule(s),
             static_cast<double>(t.batch * t.seq_len) * static_cast<double>(s) / std::max(secs, 1e-9));
    if (s % a.eval_every == 0 || s == a.steps) {
      const double v = mc::train::evaluate_nll(model, valid, t.seq_len, 64);
      std::fprintf(stderr, "\nstep %lld: valid NLL %.4f nats/token (ppl %.1f; unigram %.4f)\n",
                   static_cast<long long>(s), v, std::exp(v), unigram);
      mc::train::save_checkpoint<float>(ckpt, model.weights(), &trainer.optimizer(), meta);
    }
  }
  std::fprintf(stderr, "\ncheckpoint: %s\n", ckpt.c_str());
  return 0;
} catch (const mc::Error& e) {
  std::cerr << "\nmc_train_base: " << e.what() << "\n";
  return 2;
}
