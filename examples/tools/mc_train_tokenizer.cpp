// SPDX-License-Identifier: Apache-2.0
// mc_train_tokenizer: trains the byte-level BPE tokenizer (tokenizer.hpp) on a text file and
// writes it as .mctok, printing the compression it reaches on the training and validation text.
//
//   mc_train_tokenizer --train FILE --out FILE.mctok [--valid FILE] [--vocab N] [--max-bytes N]
#include <megacontext/tokenizer.hpp>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>

#include "cli.hpp"

int main(int argc, char** argv) try {
  std::filesystem::path train, valid, out;
  std::int64_t vocab = 8192, max_bytes = 0;
  mc::tools::ArgCursor arg(argc, argv);
  while (arg.next()) {
    const std::string& k = arg.flag();
    if (k == "--help" || k == "-h") {
      std::cout << "usage: mc_train_tokenizer --train FILE --out FILE.mctok [--valid FILE] "
                   "[--vocab N] [--max-bytes N]\n";
      return 0;
    }
    if (k == "--train") train = arg.value();
    else if (k == "--valid") valid = arg.value();
    else if (k == "--out") out = arg.value();
    else if (k == "--vocab") vocab = arg.integer();
    else if (k == "--max-bytes") max_bytes = arg.integer();
    else throw mc::Error(mc::Errc::kInvalidArgument, "unknown argument '" + k + "' (try --help)");
  }
  MC_EXPECTS(!train.empty() && !out.empty(), mc::Errc::kInvalidArgument,
             "--train and --out are required (try --help)");
  const std::string text = mc::tools::read_file(train, max_bytes);
  const auto t0 = std::chrono::steady_clock::now();
  auto tok = mc::Tokenizer::train(std::string_view(text), {.vocab_size = vocab});
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  tok.save(out);
  const auto n = tok.encode(text).size();
  std::cout << "trained a " << tok.vocab_size() << "-id tokenizer on " << text.size()
            << " bytes in " << secs << " s: " << static_cast<double>(text.size()) / static_cast<double>(n)
            << " bytes/token on the training text\n";
  if (!valid.empty()) {
    const std::string v = mc::tools::read_file(valid);
    std::cout << "validation: " << static_cast<double>(v.size()) / static_cast<double>(tok.encode(v).size())
              << " bytes/token\n";
  }
  std::cout << "wrote " << out.string() << "\n";
  return 0;
} catch (const std::exception& e) {
  std::cerr << "mc_train_tokenizer: " << e.what() << "\n";
  return 1;
}
