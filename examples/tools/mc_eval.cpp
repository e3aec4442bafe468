// SPDX-License-Identifier: Apache-2.0
// mc_eval: the evaluation tables of docs/RESULTS.md, each one command, on the CPU reference path
// (the GPU runtime comes later; big settings are slow here, small ones run in minutes).
//
//   mc_eval window  --model F --tokenizer F [--valid FILE] [--trials N] [--context T]
//       in-window retrieval (teacher-forced: every answer token is the arg-max) of the base
//       model on the three synthetic tasks, and its validation NLL at context T
//   mc_eval retrieval --model F --tokenizer F [--tasks passkey,kv_lookup,multi_hop]
//                   [--lengths 8192,32768] [--budgets 512,1024] [--trials N] [--policies ...]
//       retrieval through a Session at each history length and W_max (`passkey` is the same
//       with --tasks passkey)
//   mc_eval stream  --model F --tokenizer F --input FILE [--budgets ...] [--max-tokens N]
//                   [--warmup N] [--policies ...]
//       long-document NLL through a Session (eval/stream_nll.hpp)
// Policies (the same seeds for each): recency (MegaContext with the RecencyScorer over
// mean-pooled gists, BudgetOptimal), recency_only (the layout ablation), truncation (the newest
// W_max tokens), sinks (StreamingLLM: 4 sinks + the newest tokens). Layout policies are laid out
// at every refocus (every K tokens); docs/concepts/baselines.md.
// Every subcommand takes --out PREFIX (writes PREFIX.md and PREFIX.json) and --seed S; the same
// seeds are used for every policy.
#include <megacontext/eval/report.hpp>
#include <megacontext/eval/stats.hpp>
#include <megacontext/eval/stream_nll.hpp>
#include <megacontext/eval/tasks.hpp>
#include <megacontext/megacontext.hpp>
#include <megacontext/reference/llama_io.hpp>

#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "cli.hpp"
#include "progress_bar.hpp"

namespace {

namespace fs = std::filesystem;
using C = mc::DefaultConfig;
// mc_eval_gpu.cu compiles this file again with MC_EVAL_GPU: the same tables with the decoder
// on the GPU (cuda/megacontext/device_llama_model.cuh), everything else unchanged.
#ifdef MC_EVAL_GPU
using Model = mc::cuda::DeviceLlamaModel;
#else
using Model = mc::reference::LlamaModel<float>;
#endif
using Gister = mc::MeanPoolGister<C>;

struct Args {
  std::string cmd;
  fs::path model, tokenizer, valid = "build/corpus/valid.txt", input, out = "mc_eval";
  std::vector<std::int64_t> lengths = {8192}, budgets = {512};
  std::vector<std::string> policies = {"recency", "truncation"};
  std::vector<std::string> tasks = {"passkey"};
  std::int64_t trials = 20, context = 1024, max_tokens = 0, warmup = 2048;
  std::uint64_t seed = 1;
  std::string command;
};

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string x; std::getline(ss, x, ',');)
    if (!x.empty()) out.push_back(x);
  return out;
}

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 0; i < argc; ++i) a.command += (i ? " " : "") + std::string(argv[i]);
  MC_EXPECTS(argc >= 2, mc::Errc::kInvalidArgument,
             "usage: mc_eval window|passkey|stream --model F --tokenizer F [options]");
  a.cmd = argv[1];
  mc::tools::ArgCursor arg(argc, argv, 2);
  auto integers = [&] {
    std::vector<std::int64_t> xs;
    for (const auto& x : split(arg.value())) {
      std::size_t used = 0;
      long long v = 0;
      try {
        v = std::stoll(x, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      MC_EXPECTS(used != 0 && used == x.size(), mc::Errc::kInvalidArgument, arg.flag(), ": '", x,
                 "' is not an integer");
      xs.push_back(v);
    }
    return xs;
  };
  while (arg.next()) {
    if (arg.is("--model")) a.model = arg.value();
    else if (arg.is("--tokenizer")) a.tokenizer = arg.value();
    else if (arg.is("--valid")) a.valid = arg.value();
    else if (arg.is("--input")) a.input = arg.value();
    else if (arg.is("--out")) a.out = arg.value();
    else if (arg.is("--trials")) a.trials = arg.integer();
    else if (arg.is("--context")) a.context = arg.integer();
    else if (arg.is("--max-tokens")) a.max_tokens = arg.integer();
    else if (arg.is("--warmup")) a.warmup = arg.integer();
    else if (arg.is("--seed")) a.seed = static_cast<std::uint64_t>(arg.integer());
    else if (arg.is("--policies")) a.policies = split(arg.value());
    else if (arg.is("--tasks")) a.tasks = split(arg.value());
    else if (arg.is("--lengths")) a.lengths = integers();
    else if (arg.is("--budgets")) a.budgets = integers();
    else arg.unknown();
  }
  MC_EXPECTS(a.cmd == "window" || a.cmd == "passkey" || a.cmd == "retrieval" ||
                 a.cmd == "stream",
             mc::Errc::kInvalidArgument, "unknown subcommand '", a.cmd,
             "'; use window, retrieval, passkey or stream");
  if (a.cmd == "passkey") a.tasks = {"passkey"};
  for (const auto& t : a.tasks)
    MC_EXPECTS(t == "passkey" || t == "kv_lookup" || t == "multi_hop", mc::Errc::kInvalidArgument,
               "unknown task '", t, "'; available: passkey, kv_lookup, multi_hop");
  MC_EXPECTS(!a.model.empty() && !a.tokenizer.empty(), mc::Errc::kInvalidArgument,
             "--model and --tokenizer are required");
  MC_EXPECTS(a.trials >= 1 && a.context >= 16, mc::Errc::kInvalidArgument,
             "--trials must be >= 1 and --context >= 16");
  for (const auto& p : a.policies)
    MC_EXPECTS(p == "recency" || p == "recency_only" || p == "truncation" || p == "sinks",
               mc::Errc::kInvalidArgument, "unknown policy '", p,
               "'; available: recency, recency_only, truncation, sinks");
  return a;
}

// Session options for a policy at budget w: the newest quarter of the budget stays as tokens
// (protected), truncation keeps no sinks.
mc::SessionOptions session_options(const std::string& policy, std::int64_t w) {
  mc::SessionOptions so;
  so.context.w_max = w;
  so.context.sink_tokens = policy == "truncation" ? 0 : 4;
  so.focus.recent_tokens = w / 4;
  return so;
}

template <class P>
using Session = mc::Session<C, Model, Gister, mc::RecencyScorer, P>;

// Calls f(policy object) with the policy type named `name`.
template <class F>
void with_policy(const std::string& name, F&& f) {
  if (name == "recency") f(mc::BudgetOptimal{});
  else if (name == "recency_only") f(mc::RecencyOnly{});
  else if (name == "truncation") f(mc::Truncation{});
  else f(mc::SinksWindow{});
}

// Peak resident memory of the process so far, in MiB (getrusage).
double peak_mib() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_maxrss) / 1024.0;
}

std::map<std::string, std::string> meta(const Args& a) {
  return {{"command", a.command}, {"model", a.model.string()}, {"seed", std::to_string(a.seed)}};
}

void write(const Args& a, const std::vector<mc::eval::ResultRow>& rows, const std::string& title) {
  const std::string md = mc::eval::to_markdown(rows, title);
  std::cout << "\n" << md;
  std::ofstream(a.out.string() + ".md") << md << "\nCommand: `" << a.command << "`\n";
  std::ofstream(a.out.string() + ".json") << mc::eval::to_json(rows, meta(a));
}

// Teacher-forced: every answer token is the arg-max of the model's logits at its position.
bool teacher_forced(Model& m, const std::vector<mc::TokenId>& ids, std::int64_t answer_begin) {
  const auto n = static_cast<std::int64_t>(ids.size());
  const std::int64_t d = m.dims().d_model, v = m.dims().n_vocab;
  std::vector<float> emb(static_cast<std::size_t>(n * d)), logits(static_cast<std::size_t>(n * v));
  m.embed(ids.data(), n, emb.data());
  std::vector<mc::GaussianPosition> pos(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) pos[static_cast<std::size_t>(i)] = {static_cast<double>(i), 0.0};
  m.forward(emb.data(), pos.data(), n, nullptr, logits.data());
  for (std::int64_t p = answer_begin - 1; p < n - 1; ++p) {
    const float* l = logits.data() + p * v;
    if (std::max_element(l, l + v) - l != ids[static_cast<std::size_t>(p + 1)]) return false;
  }
  return true;
}

int window(const Args& a, Model& model, mc::Tokenizer& tok) {
  std::vector<mc::eval::ResultRow> rows;
  const char* names[] = {"passkey", "kv_lookup", "multi_hop"};
  for (int kind = 0; kind < 3; ++kind) {
    std::int64_t right = 0;
    mc::tools::ProgressBar bar(a.trials, names[kind]);
    const auto t0 = std::chrono::steady_clock::now();
    for (std::int64_t i = 0; i < a.trials; ++i) {
      mc::eval::TaskOptions o;
      o.seed = a.seed * 1000003 + static_cast<std::uint64_t>(i);  // below 2^40: never trained on
      // At most `context` tokens in all: shrink the haystack until the trial fits.
      std::vector<mc::TokenId> ids;
      std::int64_t begin = 0;
      for (o.context_chars = static_cast<std::size_t>((a.context - 48) * 3);;
           o.context_chars = o.context_chars * 9 / 10) {
        const auto t = kind == 0 ? mc::eval::passkey_trial(o)
                       : kind == 1 ? mc::eval::kv_lookup_trial(o) : mc::eval::multi_hop_trial(o);
        ids = tok.encode(t.context + t.question);
        begin = static_cast<std::int64_t>(ids.size());
        const auto ans = tok.encode(" " + t.answer);
        ids.insert(ids.end(), ans.begin(), ans.end());
        if (static_cast<std::int64_t>(ids.size()) <= a.context) break;
        MC_EXPECTS(o.context_chars > 16, mc::Errc::kInvalidArgument, "--context = ", a.context,
                   " tokens cannot hold a ", names[kind], " trial");
      }
      right += teacher_forced(model, ids, begin);
      bar.update(i + 1);
    }
    bar.finish();
    const double us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
    rows.push_back({std::string(names[kind]) + "_in_window", "base model", a.context, a.context,
                    "accuracy", mc::eval::proportion_interval(right, a.trials),
                    us / static_cast<double>(a.trials), 0});
  }
  // Validation NLL in windows of `context` tokens.
  const auto valid = tok.encode(mc::tools::read_file(a.valid));
  std::vector<double> nll;
  const std::int64_t n = std::min<std::int64_t>(a.trials, static_cast<std::int64_t>(valid.size()) / a.context);
  const std::int64_t d = model.dims().d_model, v = model.dims().n_vocab;
  for (std::int64_t w = 0; w < n; ++w) {
    std::vector<float> emb(static_cast<std::size_t>(a.context * d)), logits(static_cast<std::size_t>(a.context * v));
    model.embed(valid.data() + w * a.context, a.context, emb.data());
    std::vector<mc::GaussianPosition> pos(static_cast<std::size_t>(a.context));
    for (std::int64_t i = 0; i < a.context; ++i) pos[static_cast<std::size_t>(i)] = {static_cast<double>(i), 0.0};
    model.forward(emb.data(), pos.data(), a.context, nullptr, logits.data());
    double s = 0;
    for (std::int64_t i = 0; i + 1 < a.context; ++i)
      s += mc::eval::token_nll(std::span<const float>(logits.data() + i * v, static_cast<std::size_t>(v)),
                               valid[static_cast<std::size_t>(w * a.context + i + 1)]);
    nll.push_back(s / static_cast<double>(a.context - 1));
  }
  rows.push_back({"valid_nll", "base model", a.context, a.context, "nats/token",
                  mc::eval::mean_interval(nll), 0, 0});
  write(a, rows, "In-window retrieval and validation NLL of the base model");
  return 0;
}

int retrieval(const Args& a, Model& model, const Gister& gister_table, mc::Tokenizer& tok) {
  std::vector<mc::eval::ResultRow> rows;
  Gister gister = gister_table;
  mc::RecencyScorer scorer{1024};
  for (const auto& task : a.tasks)
    for (const std::int64_t len : a.lengths)
      for (const std::int64_t w : a.budgets)
        for (const auto& policy : a.policies) {
          std::int64_t right = 0;
          double us = 0;
          mc::tools::ProgressBar bar(a.trials, task + " " + policy + " W=" + std::to_string(w) +
                                                   " " + std::to_string(len));
          for (std::int64_t i = 0; i < a.trials; ++i) {
            mc::eval::TaskOptions o;
            o.seed = a.seed * 1000003 + static_cast<std::uint64_t>(i);  // same trials per policy
            o.context_chars = static_cast<std::size_t>(len * 3);
            const auto t = task == "passkey"     ? mc::eval::passkey_trial(o)
                           : task == "kv_lookup" ? mc::eval::kv_lookup_trial(o)
                                                 : mc::eval::multi_hop_trial(o);
            with_policy(policy, [&](auto p) {
              Session<decltype(p)> s(model, gister, scorer, mc::MemoryTree<C>(model.dim()),
                                     session_options(policy, w), p);
              s.ingest_text(tok, t.context);
              const auto t0 = std::chrono::steady_clock::now();
              s.ingest_text(tok, t.question);
              std::string answer;
              for (int k = 0; k < 6; ++k) {
                const mc::TokenId id = s.sample({});
                s.push(id);
                answer += tok.token_bytes(id);
              }
              us += std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0)
                        .count() / 6;
              right += mc::eval::answered(t, answer);
            });
            bar.update(i + 1);
          }
          bar.finish();
          rows.push_back({task, policy, w, len, "accuracy",
                          mc::eval::proportion_interval(right, a.trials),
                          us / static_cast<double>(a.trials), peak_mib()});
        }
  write(a, rows, "Retrieval through a Session (mean-pooled gists; answers greedy)");
  return 0;
}

int stream(const Args& a, Model& model, const Gister& gister_table, mc::Tokenizer& tok) {
  MC_EXPECTS(!a.input.empty(), mc::Errc::kInvalidArgument, "stream needs --input FILE");
  auto ids = tok.encode(mc::tools::read_file(a.input));
  if (a.max_tokens > 0 && static_cast<std::int64_t>(ids.size()) > a.max_tokens)
    ids.resize(static_cast<std::size_t>(a.max_tokens));
  std::vector<mc::eval::ResultRow> rows;
  Gister gister = gister_table;
  mc::RecencyScorer scorer{1024};
  for (const std::int64_t w : a.budgets)
    for (const auto& policy : a.policies)
      with_policy(policy, [&](auto p) {
        Session<decltype(p)> s(model, gister, scorer, mc::MemoryTree<C>(model.dim()),
                               session_options(policy, w), p);
        const auto r = mc::eval::stream_nll(s, ids, a.warmup);
        rows.push_back({"stream_nll " + a.input.filename().string(), policy, w,
                        static_cast<std::int64_t>(ids.size()), "nats/token", r.summary,
                        1e6 * r.seconds / static_cast<double>(r.tokens), peak_mib()});
        std::cerr << policy << " W=" << w << ": " << r.summary.mean << " nats/token over "
                  << r.tokens << " tokens in " << r.seconds << " s\n";
      });
  write(a, rows, "Long-document NLL through a Session");
  return 0;
}

}  // namespace

int main(int argc, char** argv) try {
  const Args a = parse(argc, argv);
  auto cpu = mc::reference::load_llama(a.model);
  mc::Tokenizer tok = mc::Tokenizer::load(a.tokenizer);
  MC_EXPECTS(tok.vocab_size() <= cpu.dims().n_vocab, mc::Errc::kConfigMismatch,
             "the tokenizer has ", tok.vocab_size(), " ids, the model ", cpu.dims().n_vocab);
  const Gister gister(cpu.weights().embedding);  // gists: mean of the model's own embeddings
#ifdef MC_EVAL_GPU
  std::int64_t rows = a.context;
  for (std::int64_t w : a.budgets) rows = std::max(rows, w);
  Model model(cpu.options(), cpu.weights(), rows);
  std::cerr << "decoder on the GPU (" << rows << " rows per forward)\n";
#else
  Model& model = cpu;
#endif
  if (a.cmd == "window") return window(a, model, tok);
  if (a.cmd == "passkey" || a.cmd == "retrieval") return retrieval(a, model, gister, tok);
  return stream(a, model, gister, tok);
} catch (const std::exception& e) {
  std::cerr << "mc_eval: " << e.what() << "\n";
  return 1;
}
