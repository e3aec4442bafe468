// SPDX-License-Identifier: Apache-2.0
// mc_init_model: writes a randomly initialised reference decoder and a byte-level tokenizer, the
// inputs every tool takes, for trying the tools (and testing them) before a trained model exists.
//
//   mc_init_model --model FILE --tokenizer FILE [--d-model D] [--layers L] [--heads H]
//                 [--d-ff F] [--seed S]
#include <megacontext/reference/llama_io.hpp>
#include <megacontext/tokenizer.hpp>

#include <filesystem>
#include <iostream>
#include <string>

#include "cli.hpp"

int main(int argc, char** argv) try {
  std::string model_path, tok_path;
  mc::reference::LlamaOptions o;
  o.d_model = 64;
  o.n_layers = 2;
  o.n_heads = 2;
  o.d_ff = 128;
  o.n_vocab = mc::kNumByteTokens;
  std::uint64_t seed = 1;
  mc::tools::ArgCursor arg(argc, argv);
  while (arg.next()) {
    const std::string& k = arg.flag();
    if (k == "--model") model_path = arg.value();
    else if (k == "--tokenizer") tok_path = arg.value();
    else if (k == "--d-model") o.d_model = arg.integer();
    else if (k == "--layers") o.n_layers = arg.integer();
    else if (k == "--heads") o.n_heads = arg.integer();
    else if (k == "--d-ff") o.d_ff = arg.integer();
    else if (k == "--seed") seed = static_cast<std::uint64_t>(arg.integer());
    else throw mc::Error(mc::Errc::kInvalidArgument, "unknown argument '" + k + "'");
  }
  MC_EXPECTS(!model_path.empty() && !tok_path.empty(), mc::Errc::kInvalidArgument,
             "--model and --tokenizer are required");
  for (const std::filesystem::path p : {model_path, tok_path})
    if (p.has_parent_path()) std::filesystem::create_directories(p.parent_path());
  mc::reference::save_llama(model_path, mc::reference::LlamaModel<float>::random(o, seed));
  mc::Tokenizer().save(tok_path);
  std::cout << "wrote a random " << o.d_model << "-wide, " << o.n_layers << "-layer model to "
            << model_path << " and a byte tokenizer to " << tok_path << "\n";
  return 0;
} catch (const std::exception& e) {
  std::cerr << "mc_init_model: " << e.what() << "\n";
  return 1;
}
