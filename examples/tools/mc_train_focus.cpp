// SPDX-License-Identifier: Apache-2.0
// mc_train_focus: trains GistNet and LensNet on the CPU through a frozen base decoder (from
// mc_train_base) with the alternating schedule: each round N GistNet steps on ΔNLL@H, then the
// LensNet targets (expansion gains of every gist of sampled contexts) are rebuilt with the
// current gists, then M LensNet steps. --lens-steps 0 trains GistNet alone, --gist-steps 0
// LensNet alone (over GistNet's initial gists). Progress bar, held-out evaluation after every
// round (ΔNLL@H vs mean pooling; Spearman ρ of LensNet vs a random scorer), and resumable
// safetensors checkpoints OUT/gist.safetensors + OUT/lens.safetensors (bit-identical resume).
//
//   mc_train_focus --base FILE --tokenizer FILE [--train FILE] [--valid FILE] [--out DIR]
//                  [--d-model N] [--layers N] [--heads N] [--d-ff N]   (must match --base)
//                  [--gist-layers N] [--gist-d-ff N] [--lens-layers N] [--lens-d-model N]
//                  [--gist-steps N] [--lens-steps M] [--rounds R] [--contexts N]
//                  [--max-train-bytes N] [--seed S] [--stop-after R] [--resume]
// --rounds is the length of the whole run (the learning-rate schedules span it); --stop-after R
// ends this invocation after round R, as an interruption would.
#include <megacontext/gist_net.hpp>
#include <megacontext/lens_net.hpp>
#include <megacontext/reference/llama.hpp>
#include <megacontext/tokenizer.hpp>
#include <megacontext/train/alternating.hpp>
#include <megacontext/train/checkpoint.hpp>
#include <megacontext/train/lens_training.hpp>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <sstream>
#include <string>

#include "cli.hpp"

namespace {

namespace fs = std::filesystem;
using C = mc::Config<8, 1>;  // one LOD1 gist per 8 tokens
using Model = mc::reference::LlamaModel<float>;

struct Args {
  fs::path base, tokenizer, train = "build/corpus/train.txt", valid = "build/corpus/valid.txt";
  fs::path out = "build/focus";
  std::optional<std::int64_t> d_model, layers, heads, d_ff;  // default: the base file's metadata
  std::int64_t gist_layers = 2, gist_d_ff = 128, lens_layers = 2, lens_d_model = 64;
  std::int64_t gist_steps = 100, lens_steps = 200, rounds = 4, contexts = 256;
  std::int64_t stop_after = 0;  // > 0: exit after this many rounds (an interruption, for tests)
  std::int64_t max_train_bytes = 2'000'000;
  std::uint64_t seed = 1;
  bool resume = false;
};

Args parse(int argc, char** argv) {
  Args a;
  mc::tools::ArgCursor arg(argc, argv);
  while (arg.next()) {
    const std::string& k = arg.flag();
    if (k == "--base") a.base = arg.value();
    else if (k == "--tokenizer") a.tokenizer = arg.value();
    else if (k == "--train") a.train = arg.value();
    else if (k == "--valid") a.valid = arg.value();
    else if (k == "--out") a.out = arg.value();
    else if (k == "--d-model") a.d_model = arg.integer();
    else if (k == "--layers") a.layers = arg.integer();
    else if (k == "--heads") a.heads = arg.integer();
    else if (k == "--d-ff") a.d_ff = arg.integer();
    else if (k == "--gist-layers") a.gist_layers = arg.integer();
    else if (k == "--gist-d-ff") a.gist_d_ff = arg.integer();
    else if (k == "--lens-layers") a.lens_layers = arg.integer();
    else if (k == "--lens-d-model") a.lens_d_model = arg.integer();
    else if (k == "--gist-steps") a.gist_steps = arg.integer();
    else if (k == "--lens-steps") a.lens_steps = arg.integer();
    else if (k == "--rounds") a.rounds = arg.integer();
    else if (k == "--stop-after") a.stop_after = arg.integer();
    else if (k == "--contexts") a.contexts = arg.integer();
    else if (k == "--max-train-bytes") a.max_train_bytes = arg.integer();
    else if (k == "--seed") a.seed = static_cast<std::uint64_t>(arg.integer());
    else if (k == "--resume") a.resume = true;
    else if (k == "--help" || k == "-h") {
      std::cout << "usage: mc_train_focus --base FILE --tokenizer FILE [--train FILE] [--valid FILE]\n"
                   "  [--out DIR] [--d-model N] [--layers N] [--heads N] [--d-ff N]\n"
                   "  [--gist-layers N] [--gist-d-ff N] [--lens-layers N] [--lens-d-model N]\n"
                   "  [--gist-steps N] [--lens-steps M] [--rounds R] [--contexts N]\n"
                   "  [--max-train-bytes N] [--seed S] [--stop-after R] [--resume]\n";
      std::exit(0);
    } else {
      throw mc::Error(mc::Errc::kInvalidArgument, "unknown argument '" + k + "' (try --help)");
    }
  }
  MC_EXPECTS(!a.base.empty() && !a.tokenizer.empty(), mc::Errc::kInvalidArgument,
             "[mc.train.no_base] --base (a checkpoint of mc_train_base) and --tokenizer are required");
  return a;
}

std::string read_text(const fs::path& p, std::int64_t max_bytes) {
  std::ifstream f(p, std::ios::binary);
  if (!f) throw mc::IoError("[mc.train.no_text] cannot read " + p.string(), p);
  std::string s(static_cast<std::size_t>(max_bytes), '\0');
  f.read(s.data(), max_bytes);
  s.resize(static_cast<std::size_t>(f.gcount()));
  return s;
}

// The base decoder's options: each from its flag or the file's metadata; a flag that disagrees
// with the metadata, or a tokenizer of another vocabulary, is an error naming both values.
mc::reference::LlamaOptions base_options(const Args& a, const mc::Tokenizer& tok) {
  const auto meta = mc::io::SafetensorsFile::open(a.base).metadata();
  const auto field = [&](const char* key, const char* flag, const std::optional<std::int64_t>& v) {
    const auto it = meta.find(key);
    if (it == meta.end()) {
      MC_EXPECTS(v.has_value(), mc::Errc::kConfigMismatch, "[mc.train.base_mismatch] ",
                 a.base.string(), " has no '", key, "' metadata; pass ", flag);
      return *v;
    }
    const std::int64_t stored = std::stoll(it->second);
    MC_EXPECTS(!v || *v == stored, mc::Errc::kConfigMismatch, "[mc.train.base_mismatch] ",
               a.base.string(), " was trained with ", key, " = ", stored, "; this run says ", flag,
               " ", v.value_or(0));
    return stored;
  };
  mc::reference::LlamaOptions o;
  o.d_model = field("d_model", "--d-model", a.d_model);
  o.n_layers = field("n_layers", "--layers", a.layers);
  o.n_heads = field("n_heads", "--heads", a.heads);
  o.d_ff = field("d_ff", "--d-ff", a.d_ff);
  o.n_vocab = field("n_vocab", "--tokenizer", std::optional<std::int64_t>(tok.vocab_size()));
  return o;
}

void progress(std::int64_t round, std::int64_t rounds, char kind, std::int64_t step,
              std::int64_t steps, double loss, double secs) {
  const int width = 24;
  const int fill = static_cast<int>(width * step / std::max<std::int64_t>(1, steps));
  std::fprintf(stderr, "\rround %lld/%lld %s [%s%s] %lld/%lld loss %.4f %.1fs   ",
               static_cast<long long>(round), static_cast<long long>(rounds),
               kind == 'g' ? "GistNet" : "LensNet",
               std::string(static_cast<std::size_t>(fill), '=').c_str(),
               std::string(static_cast<std::size_t>(width - fill), ' ').c_str(),
               static_cast<long long>(step), static_cast<long long>(steps), loss, secs);
  std::fflush(stderr);
}

}  // namespace

int main(int argc, char** argv) try {
  const Args a = parse(argc, argv);
  mc::Tokenizer tok = mc::Tokenizer::load(a.tokenizer);
  const auto bo = base_options(a, tok);
  auto model = Model::random(bo, 0);
  mc::train::load_checkpoint<float>(a.base, model.weights(), nullptr);  // names a misfit tensor
  const auto train = tok.encode(read_text(a.train, a.max_train_bytes));
  const auto valid = tok.encode(read_text(a.valid, std::max<std::int64_t>(a.max_train_bytes / 10, 20'000)));
  std::cerr << "base " << a.base.string() << ": d_model " << bo.d_model << ", " << bo.n_layers
            << " layers; tokens " << train.size() << " train, " << valid.size() << " valid\n";

  mc::GistNetOptions go;
  go.d_model = bo.d_model;
  go.n_layers = a.gist_layers;
  go.n_heads = 4;
  go.d_attn = bo.d_model;
  go.d_ff = a.gist_d_ff;
  go.d_pool = bo.d_model;
  go.out_gain = std::sqrt(static_cast<double>(model.weights().embedding.squaredNorm()) /
                          static_cast<double>(model.weights().embedding.size()));
  mc::LensNetOptions lo;
  lo.d_in = bo.d_model;
  lo.d_model = a.lens_d_model;
  lo.n_layers = a.lens_layers;
  lo.n_heads = 4;
  lo.d_ff = 2 * a.lens_d_model;
  lo.num_query = 16;
  lo.max_lod = 1;
  auto gist = mc::GistNet<C>::random(go, a.seed);
  auto lens = mc::LensNet<float>::random(lo, a.seed + 1);

  const auto total = [](std::int64_t per_round, std::int64_t rounds) {
    const std::int64_t t = std::max<std::int64_t>(per_round * rounds, 2);
    return mc::train::WarmupCosine{1e-3, 1e-4, std::min<std::int64_t>(20, t / 10), t};
  };
  mc::train::GistTrainOptions gt;
  gt.prefix = 32;
  gt.horizon = 16;
  gt.batch = 8;
  gt.schedule = total(a.gist_steps, a.rounds);
  gt.seed = a.seed + 2;
  mc::train::LensTrainOptions lt;
  lt.loss = mc::train::LensLoss::kPreference;
  lt.schedule = total(a.lens_steps, a.rounds);
  lt.seed = a.seed + 3;
  // Contexts: 64 tokens of history (the first 48 as six LOD1 gists, the last 16 at LOD0, which
  // are LensNet's query), then 16 upcoming tokens scored.
  const auto contexts = [&](std::span<const mc::TokenId> tokens, std::int64_t n, std::uint64_t seed) {
    return [&, tokens, n, seed](mc::GistNet<C>& net) {
      mc::GistNetGister<C, Model> g(model, net);
      return mc::train::stream_lens_examples<C>(tokens, model, g, 64, 16, 16, n, seed);
    };
  };
  mc::train::AlternatingTrainer<C, Model> trainer(gist, lens, model, gt, lt,
                                                  {a.gist_steps, a.lens_steps, a.rounds},
                                                  contexts(train, a.contexts, a.seed + 4));
  if (a.resume && fs::exists(a.out / "gist.safetensors")) {
    trainer.load(a.out);
    std::cerr << "resumed from " << a.out.string() << " after round " << trainer.rounds_done() << "\n";
  }

  const auto t0 = std::chrono::steady_clock::now();
  const auto secs = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  while (!trainer.done() && (a.stop_after <= 0 || trainer.rounds_done() < a.stop_after)) {
    const std::int64_t r = trainer.rounds_done() + 1;
    const auto rep = trainer.round(train, [&](char kind, std::int64_t s, double loss) {
      progress(r, a.rounds, kind, s, kind == 'g' ? a.gist_steps : a.lens_steps, loss, secs());
    });
    const auto delta = mc::train::evaluate_delta_nll(gist, model, valid, gt, 64, a.seed + 5);
    std::fprintf(stderr, "\nround %lld: GistNet loss %.4f, held-out ΔNLL@%lld %.4f (mean pool %.4f)",
                 static_cast<long long>(r), rep.gist_loss, static_cast<long long>(gt.horizon),
                 delta.gist, delta.mean_pool);
    if (a.lens_steps > 0) {
      const auto held_out = contexts(valid, 64, a.seed + 6)(gist);
      const auto rank = mc::train::evaluate_lens_ranking<float>(lens, held_out, a.seed + 7);
      std::fprintf(stderr, "; LensNet loss %.4f, held-out rho %.3f (random %.3f), gain RMS %.4f",
                   rep.lens_loss, rank.rho, rank.rho_random, rank.gain_rms);
    }
    std::fprintf(stderr, "\n");
    trainer.save(a.out);
  }
  std::fprintf(stderr, "checkpoints: %s, %s\n", (a.out / "gist.safetensors").c_str(),
               (a.out / "lens.safetensors").c_str());
  return 0;
} catch (const mc::Error& e) {
  std::cerr << "\nmc_train_focus: " << e.what() << "\n";
  return 2;
} catch (const std::exception& e) {  // e.g. std::stoll on a malformed number
  std::cerr << "\nmc_train_focus: " << e.what() << "\n";
  return 2;
}
