// SPDX-License-Identifier: Apache-2.0
// mc_ingest: the project's main job until the session demo exists. It streams a real text file
// into an on-disk MegaContext tree (bytes as token ids, vocabulary 256, mean-pool gists from a
// seeded random embedding table), reopens the tree read-only, verifies every checksum and prints
// a summary of the levels. Running it again on the same --tree continues appending.
//
//   mc_ingest [--input FILE] [--tree DIR] [--dim D] [--chunk BYTES] [--fresh]
#include <megacontext/megacontext.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "cli.hpp"

namespace {

using C = mc::DefaultConfig;  // K = 32, Depth = 3

struct Args {
  std::string input = "/usr/share/common-licenses/GPL-3";
  std::string tree = "mc_ingest_tree";
  std::int64_t dim = 64;
  std::int64_t chunk = 4096;
  bool fresh = false;
};

Args parse(int argc, char** argv) {
  Args a;
  mc::tools::ArgCursor arg(argc, argv);
  while (arg.next()) {
    const std::string& k = arg.flag();
    if (k == "--input") a.input = arg.value();
    else if (k == "--tree") a.tree = arg.value();
    else if (k == "--dim") a.dim = arg.integer();
    else if (k == "--chunk") a.chunk = arg.integer();
    else if (k == "--fresh") a.fresh = true;
    else if (k == "--help" || k == "-h") {
      std::cout << "usage: mc_ingest [--input FILE] [--tree DIR] [--dim D] [--chunk BYTES] [--fresh]\n";
      std::exit(0);
    } else {
      throw mc::Error(mc::Errc::kInvalidArgument, "unknown argument '" + k + "' (try --help)");
    }
  }
  MC_EXPECTS(a.dim >= 1, mc::Errc::kInvalidArgument, "--dim = ", a.dim, " must be >= 1");
  MC_EXPECTS(a.chunk >= 1, mc::Errc::kInvalidArgument, "--chunk = ", a.chunk, " must be >= 1");
  return a;
}

double cosine(const Eigen::Ref<const Eigen::RowVectorXf>& a,
              const Eigen::Ref<const Eigen::RowVectorXf>& b) {
  return static_cast<double>(a.dot(b) / (a.norm() * b.norm()));
}

}  // namespace

int main(int argc, char** argv) try {
  const Args args = parse(argc, argv);
  std::ifstream in(args.input, std::ios::binary);
  if (!in) throw mc::IoError("cannot read input file " + args.input, args.input);
  const std::vector<unsigned char> bytes{std::istreambuf_iterator<char>(in),
                                         std::istreambuf_iterator<char>()};
  std::vector<mc::TokenId> ids(bytes.begin(), bytes.end());

  // Same seed every run, so a continued tree keeps consistent gists.
  auto gister = mc::MeanPoolGister<C>::random(256, args.dim, 20261123);
  namespace fs = std::filesystem;
  const bool exists = fs::exists(fs::path(args.tree) / mc::DiskStorage::kHeaderName);
  const auto t0 = std::chrono::steady_clock::now();
  std::int64_t before = 0;
  {
    auto tree = (exists && !args.fresh)
                    ? mc::DiskTree<C>::open(args.tree, {}, args.dim)
                    : mc::DiskTree<C>::create(args.tree, args.dim, {.overwrite = true});
    before = tree.num_tokens();
    std::cout << (exists && !args.fresh ? "continuing" : "created") << " tree " << args.tree
              << " (K = " << C::K << ", Depth = " << C::Depth << ", dim = " << args.dim
              << ") holding " << before << " tokens\n";
    std::cout << "ingesting " << args.input << ": " << ids.size() << " bytes as token ids\n";
    for (std::size_t p = 0; p < ids.size(); p += static_cast<std::size_t>(args.chunk)) {
      const std::size_t len = std::min(ids.size() - p, static_cast<std::size_t>(args.chunk));
      tree.append(std::span(ids).subspan(p, len), gister);
    }
  }
  const double ingest_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  // Reopen read-only with the full checksum pass: what a later session would see.
  const auto t1 = std::chrono::steady_clock::now();
  auto tree = mc::DiskTree<C>::open(args.tree, {.read_only = true}, args.dim);
  const double open_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t1).count();
  std::uint64_t disk = 0;
  for (const auto& e : fs::directory_iterator(args.tree)) disk += e.file_size();

  std::cout << "\nappended " << tree.num_tokens() - before << " tokens in " << ingest_s * 1e3
            << " ms; reopened and verified every checksum in " << open_ms << " ms\n";
  std::cout << "tree now holds " << tree.num_tokens() << " tokens (commit "
            << tree.storage().recovery().seq << ")\n\n";
  std::printf("%-6s %-12s %-14s %s\n", "level", "nodes", "tokens/node", "tail at finer detail");
  for (int l = 0; l <= C::Depth; ++l) {
    const std::int64_t covered = tree.level_size(l) * C::span(l);
    std::printf("LOD%-3d %-12lld %-14lld %lld tokens\n", l,
                static_cast<long long>(tree.level_size(l)), static_cast<long long>(C::span(l)),
                static_cast<long long>(tree.num_tokens() - covered));
  }
  std::printf("\ndisk: %llu bytes = %.3f bytes/token (4 B ids + gists + checksums + 4 KiB header)\n",
              static_cast<unsigned long long>(disk),
              static_cast<double>(disk) / static_cast<double>(tree.num_tokens()));

  // A glimpse of what the gists hold: neighbouring LOD1 gists of similar text are closer than
  // distant ones; print the first few LOD1 spans with their similarity to the next one.
  if (tree.level_size(1) >= 4) {
    std::cout << "\nfirst LOD1 gists (mean of 32 byte embeddings) and cosine to the next:\n";
    for (std::int64_t i = 0; i < 3; ++i) {
      const auto span = tree.span({1, i});
      std::string text;
      for (auto t : tree.tokens(span.begin, span.end))
        text += (t >= 32 && t < 127) ? static_cast<char>(t) : ' ';
      std::printf("  [%5lld, %5lld) \"%s\"  cos(next) = %+.3f\n",
                  static_cast<long long>(span.begin), static_cast<long long>(span.end),
                  text.c_str(), cosine(tree.gist({1, i}), tree.gist({1, i + 1})));
    }
  }
  return 0;
} catch (const mc::Error& e) {
  std::cerr << "mc_ingest: " << e.what() << "\n";
  return 2;
}
