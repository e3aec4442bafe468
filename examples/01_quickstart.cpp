// SPDX-License-Identifier: Apache-2.0
// Quickstart: the README's example, compiled and run by the tests. Builds an on-disk tree from a
// few thousand token ids, lets the focus allocator keep a 512-entry working context over it,
// assembles the model input and reopens the tree as a reader.
#include <megacontext/megacontext.hpp>

#include <cstdio>
#include <filesystem>
#include <vector>

int main() try {
  const auto dir = std::filesystem::temp_directory_path() / "mc_quickstart";
  std::filesystem::remove_all(dir);
  std::vector<mc::TokenId> ids(5000);
  for (std::size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<mc::TokenId>((i * 7919) % 256);

  // example-begin quickstart
  using C = mc::Config<32, 3>;                                  // K = 32, Depth = 3, float gists
  auto gister = mc::MeanPoolGister<C>::random(/*vocab*/ 256, /*dim*/ 64, /*seed*/ 1);
  auto tree = mc::DiskTree<C>::create(dir, /*dim*/ 64);         // or mc::MemoryTree<C>(64)
  tree.append(ids, gister);           // commits: survives a crash once it returns
  auto lod1 = tree.gists(/*lod*/ 1, 0, tree.level_size(1));    // zero-copy [n, 64] Eigen view

  mc::WorkingContextOptions wo{/*w_max*/ 512, /*sink_tokens*/ 4};
  mc::FocusAllocator<C, mc::BudgetOptimal> focus(mc::FocusOptions{}, wo);
  mc::WorkingContext<C> wc(wo);
  focus.admit(wc, tree.num_tokens());                           // cover the history, within budget
  std::vector<float> scores(static_cast<std::size_t>(wc.size()), 0.0f);  // LensNet's, in [-1, 1]
  const mc::FocusReport report = focus.step(wc, scores);        // refocus: expand / collapse
  mc::AssembledContext<float> input;
  mc::assemble(wc, tree, gister, input);                        // embeddings [W, 64], (t, sigma)
  // example-end quickstart

  wc.validate(tree.num_tokens());
  auto reader = mc::DiskTree<C>::open(dir, {.read_only = true});  // a consistent snapshot
  std::printf("tree: %lld tokens, %lld LOD1 gists (first gist norm %.3f)\n",
              static_cast<long long>(reader.num_tokens()), static_cast<long long>(lod1.rows()),
              static_cast<double>(lod1.row(0).norm()));
  std::printf("working context: %lld entries (w_max %lld), budget use %.2f, input %lld x %lld\n",
              static_cast<long long>(wc.size()), static_cast<long long>(wo.w_max),
              report.budget_use, static_cast<long long>(input.embeddings.rows()),
              static_cast<long long>(input.embeddings.cols()));
  std::filesystem::remove_all(dir);
  return reader.num_tokens() == 5000 && wc.size() <= 512 ? 0 : 1;
} catch (const mc::Error& e) {
  std::fprintf(stderr, "quickstart: %s\n", e.what());
  return 2;
}
