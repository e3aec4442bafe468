// SPDX-License-Identifier: Apache-2.0
// Tree behaviour common to every storage policy: gist creation on complete spans, equivalence of
// chunked and single appends, node queries, and argument errors.
#include <doctest/doctest.h>

#include <megacontext/tree.hpp>

#include <random>

#include "common/random.hpp"
#include "common/tree_fixtures.hpp"

namespace {

using mc::test::TempDir;

// Makes an empty tree of either storage with the same calling code.
template <class TreeT>
struct Maker;
template <class C>
struct Maker<mc::MemoryTree<C>> {
  explicit Maker(const char*) {}
  mc::MemoryTree<C> make(std::int64_t dim) { return mc::MemoryTree<C>(dim); }
};
template <class C>
struct Maker<mc::DiskTree<C>> {
  TempDir dir;
  int n = 0;
  explicit Maker(const char* tag) : dir(tag) {}
  mc::DiskTree<C> make(std::int64_t dim) {
    // (std::to_string into a path, not "t" + string: g++ 12 -O3 emits a false -Wrestrict there)
    auto sub = dir.path() / "t";
    sub += std::to_string(n++);
    return mc::DiskTree<C>::create(sub, dim);
  }
};

template <class TreeT>
void check_gists_match_reference(const TreeT& tree, const std::vector<mc::TokenId>& ids,
                                 const mc::MeanPoolGister<typename TreeT::Config>& g) {
  using C = typename TreeT::Config;
  const auto ref = mc::test::reference_levels<C>(ids, g.table());
  for (int l = 1; l <= C::Depth; ++l) {
    INFO("lod = ", l);
    const auto view = tree.gists(l, 0, tree.level_size(l));
    CHECK(mc::test::max_rel_error(view, ref[static_cast<std::size_t>(l)]) <= 1e-5);
  }
}

}  // namespace

TEST_CASE_TEMPLATE("tree: a full block of K tokens creates exactly one LOD1 gist", TreeT,
                   mc::MemoryTree<mc::Config<4, 2>>, mc::DiskTree<mc::Config<4, 2>>) {
  Maker<TreeT> maker("fullblock");
  auto tree = maker.make(3);
  auto g = mc::MeanPoolGister<mc::Config<4, 2>>::random(10, 3, 7);
  const mc::TokenId three[] = {1, 2, 3};
  tree.append(three, g);
  CHECK(tree.num_tokens() == 3);
  CHECK(tree.level_size(1) == 0);
  CHECK_FALSE(tree.contains({1, 0}));
  const mc::TokenId one[] = {4};
  tree.append(one, g);
  CHECK(tree.level_size(1) == 1);
  CHECK(tree.level_size(2) == 0);
  CHECK(tree.contains({1, 0}));
  // The gist is the mean of the four embeddings, computed here independently.
  for (int j = 0; j < 3; ++j) {
    const double want =
        (g.table()(1, j) + g.table()(2, j) + g.table()(3, j) + g.table()(4, j)) / 4.0;
    CHECK(tree.gist({1, 0})(0, j) == doctest::Approx(want).epsilon(1e-6));
  }
  // Twelve more tokens complete four LOD1 gists and so the first LOD2 gist.
  const auto more = mc::test::stream_tokens(4, 16, 10);
  tree.append(more, g);
  CHECK(tree.level_size(1) == 4);
  CHECK(tree.level_size(2) == 1);
}

TEST_CASE_TEMPLATE("tree: appending in random chunk sizes gives exactly the same tree as one append",
                   TreeT, mc::MemoryTree<mc::Config<4, 3>>, mc::DiskTree<mc::Config<4, 3>>,
                   mc::MemoryTree<mc::Config<32, 2>>, mc::DiskTree<mc::Config<32, 2>>,
                   mc::MemoryTree<mc::Config<3, 2, double>>) {
  using C = typename TreeT::Config;
  INFO(mc::test::seed_info());
  auto rng = mc::test::rng(11);
  const std::int64_t vocab = 97, d = 5;
  auto g = mc::MeanPoolGister<C>::random(vocab, d, 3);
  Maker<TreeT> maker("chunks");
  for (std::int64_t n : {std::int64_t{0}, std::int64_t{1}, std::int64_t{C::K - 1},
                         std::int64_t{C::K}, std::int64_t{C::K + 1}, C::span(C::Depth) + 1,
                         3 * C::span(C::Depth) + 2 * C::K + 1}) {
    INFO("n = ", n);
    const auto ids = mc::test::stream_tokens(0, n, vocab);
    auto whole = maker.make(d);
    whole.append(ids, g);
    auto chunked = maker.make(d);
    std::int64_t pos = 0;
    while (pos < n) {
      const std::int64_t max_chunk = std::uniform_int_distribution<int>(0, 2)(rng) == 0 ? 1 : 3 * C::K;
      const std::int64_t len =
          std::min(n - pos, std::uniform_int_distribution<std::int64_t>(0, max_chunk)(rng));
      chunked.append(std::span(ids).subspan(static_cast<std::size_t>(pos),
                                            static_cast<std::size_t>(len)),
                     g);
      pos += len;
    }
    REQUIRE(chunked.num_tokens() == n);
    const auto a = whole.tokens(0, n), b = chunked.tokens(0, n);
    CHECK(std::equal(a.begin(), a.end(), b.begin(), b.end()));
    CHECK(std::equal(a.begin(), a.end(), ids.begin(), ids.end()));
    for (int l = 1; l <= C::Depth; ++l) {
      REQUIRE(whole.level_size(l) == chunked.level_size(l));
      REQUIRE(whole.level_size(l) == mc::Lod<C>::level_size(n, l));
      // Same arithmetic on the same inputs: bit-identical, not just close.
      CHECK(whole.gists(l, 0, whole.level_size(l)) == chunked.gists(l, 0, chunked.level_size(l)));
    }
    check_gists_match_reference(whole, ids, g);
  }
}

TEST_CASE("tree: a million-token append fills every gist (none left as zeros)") {
  using C = mc::Config<16, 3>;
  const std::int64_t n = (1 << 20) + 17;
  auto g = mc::MeanPoolGister<C>::random(256, 4, 5);
  mc::MemoryTree<C> tree(4);
  const auto ids = mc::test::stream_tokens(0, n, 256);
  tree.append(ids, g);
  CHECK(tree.level_size(3) == n / 4096);
  check_gists_match_reference(tree, ids, g);
  for (int l = 1; l <= 3; ++l) {
    const auto v = tree.gists(l, 0, tree.level_size(l));
    // No row is all zeros: an unwritten gist would be.
    CHECK((v.rowwise().squaredNorm().array() > 0).all());
  }
}

TEST_CASE("tree: node queries give spans, parents and children consistent with the LOD maths") {
  using C = mc::Config<4, 2>;
  mc::MemoryTree<C> tree(0);
  tree.append(mc::test::stream_tokens(0, 37, 50));
  CHECK(tree.dim() == 0);
  CHECK(tree.level_size(0) == 37);
  CHECK(tree.level_size(1) == 9);
  CHECK(tree.level_size(2) == 2);
  CHECK(tree.span({1, 8}) == mc::TokenSpan{32, 36});
  CHECK(tree.span({2, 1}) == mc::TokenSpan{16, 32});
  CHECK(tree.parent({0, 31}) == mc::Node{1, 7});
  CHECK(tree.parent({1, 7}) == mc::Node{2, 1});
  CHECK(tree.children({2, 1}) == mc::NodeRange{1, 4, 8});
  CHECK(tree.children({1, 8}) == mc::NodeRange{0, 32, 36});
  CHECK(tree.tokens(3, 6).size() == 3);
  CHECK(tree.tokens(36, 37)[0] == mc::test::stream_token(36, 50));

  SUBCASE("nodes that do not exist yet are refused with their coordinates") {
    CHECK_THROWS_WITH_AS(tree.span({1, 9}), doctest::Contains("node {lod 1, index 9}"), mc::Error);
    CHECK_THROWS_WITH_AS(tree.parent({1, 8}), doctest::Contains("[mc.tree.no_node]"), mc::Error);
    CHECK_THROWS_WITH_AS(tree.parent({2, 0}), doctest::Contains("top level"), mc::Error);
    CHECK_THROWS_WITH_AS(tree.children({0, 3}), doctest::Contains("no children"), mc::Error);
    CHECK_THROWS_WITH_AS(tree.level_size(3), doctest::Contains("level_size(lod = 3)"), mc::Error);
    CHECK_THROWS_WITH_AS(tree.tokens(30, 38), doctest::Contains("tokens(30, 38)"), mc::Error);
    CHECK_THROWS_WITH_AS(tree.gists(1, 0, 1), doctest::Contains("ids only"), mc::Error);
  }
}

TEST_CASE("tree: bad appends throw and leave the tree unchanged") {
  using C = mc::Config<4, 2>;
  auto g = mc::MeanPoolGister<C>::random(10, 3, 1);
  mc::MemoryTree<C> tree(3);
  tree.append(mc::test::stream_tokens(0, 6, 10), g);

  const mc::TokenId negative[] = {1, -5, 2};
  CHECK_THROWS_WITH_AS(tree.append(negative, g), doctest::Contains("token id -5 at position 1"),
                       mc::Error);
  const mc::TokenId outside[] = {1, 2, 10};
  CHECK_THROWS_WITH_AS(tree.append(outside, g), doctest::Contains("token id 10"), mc::Error);
  CHECK_THROWS_WITH_AS(tree.append(outside), doctest::Contains("[mc.tree.needs_gister]"),
                       mc::Error);
  auto wrong_dim = mc::MeanPoolGister<C>::random(10, 4, 1);
  CHECK_THROWS_WITH_AS(tree.append(outside, wrong_dim), doctest::Contains("gister.dim() = 4"),
                       mc::Error);
  CHECK(tree.num_tokens() == 6);
  CHECK(tree.level_size(1) == 1);
  // The failed appends staged bytes past the commit; the next append overwrites them.
  tree.append(mc::test::stream_tokens(6, 16, 10), g);
  CHECK(tree.num_tokens() == 16);
  check_gists_match_reference(tree, mc::test::stream_tokens(0, 16, 10), g);

  CHECK_THROWS_WITH_AS(mc::MemoryTree<C>(-1), doctest::Contains("dim = -1"), mc::Error);
  CHECK_THROWS_WITH_AS(mc::MemoryTree<C>(70000), doctest::Contains("dim = 70000"), mc::Error);
}

namespace {

// A MeanPoolGister that counts the gists it builds per level (to show what truncate keeps).
template <class C>
struct CountingGister {
  mc::MeanPoolGister<C> inner;
  std::vector<std::int64_t> built = std::vector<std::int64_t>(C::Depth + 1, 0);
  std::int64_t dim() const { return inner.dim(); }
  std::int64_t vocab() const { return inner.vocab(); }
  void embed(const mc::TokenId* ids, std::int64_t n, typename C::Scalar* out) {
    inner.embed(ids, n, out);
  }
  void gist(int lod, const typename C::Scalar* in, std::int64_t n, typename C::Scalar* out) {
    built[static_cast<std::size_t>(lod)] += n;
    inner.gist(lod, in, n, out);
  }
};

}  // namespace

TEST_CASE_TEMPLATE("tree: truncate then append equals a tree built from the new content, and "
                   "rebuilds only the gists past the cut",
                   TreeT, mc::MemoryTree<mc::Config<4, 3>>, mc::DiskTree<mc::Config<4, 3>>) {
  using C = typename TreeT::Config;
  INFO(mc::test::seed_info());
  auto rng = mc::test::rng(31);
  const std::int64_t vocab = 50, d = 3;
  CountingGister<C> g{mc::MeanPoolGister<C>::random(vocab, d, 5)};
  Maker<TreeT> maker("truncate");
  for (int trial = 0; trial < 40; ++trial) {
    const std::int64_t n = std::uniform_int_distribution<std::int64_t>(0, 300)(rng);
    const std::int64_t cut = std::uniform_int_distribution<std::int64_t>(0, n)(rng);
    const std::int64_t added = std::uniform_int_distribution<std::int64_t>(0, 200)(rng);
    INFO("n = ", n, ", cut = ", cut, ", added = ", added);
    const auto old_ids = mc::test::stream_tokens(0, n, vocab);
    // The replacement differs from the old stream right from the cut.
    auto new_ids = std::vector<mc::TokenId>(old_ids.begin(), old_ids.begin() + cut);
    const auto tail = mc::test::stream_tokens(1000000 + cut, 1000000 + cut + added, vocab);
    new_ids.insert(new_ids.end(), tail.begin(), tail.end());

    auto tree = maker.make(d);
    tree.append(old_ids, g);
    const std::vector<std::int64_t> before = g.built;
    tree.truncate(cut);
    CHECK(tree.num_tokens() == cut);
    for (int l = 1; l <= C::Depth; ++l) CHECK(tree.level_size(l) == mc::Lod<C>::level_size(cut, l));
    tree.append(tail, g);
    tree.verify();
    for (int l = 1; l <= C::Depth; ++l) {
      // Only the gists whose span reaches past the cut were built again.
      CHECK(g.built[static_cast<std::size_t>(l)] - before[static_cast<std::size_t>(l)] ==
            mc::Lod<C>::level_size(cut + added, l) - mc::Lod<C>::level_size(cut, l));
    }
    auto fresh = maker.make(d);
    fresh.append(new_ids, g);
    REQUIRE(tree.num_tokens() == fresh.num_tokens());
    const auto a = tree.tokens(0, tree.num_tokens()), b = fresh.tokens(0, fresh.num_tokens());
    CHECK(std::equal(a.begin(), a.end(), b.begin(), b.end()));
    for (int l = 1; l <= C::Depth; ++l)
      CHECK(tree.gists(l, 0, tree.level_size(l)) == fresh.gists(l, 0, fresh.level_size(l)));
  }
}

TEST_CASE("tree: a truncated disk tree reopens as truncated and continues") {
  using C = mc::Config<4, 2>;
  TempDir dir("truncate_reopen");
  auto g = mc::MeanPoolGister<C>::random(40, 2, 9);
  const auto ids = mc::test::stream_tokens(0, 500, 40);
  {
    auto tree = mc::DiskTree<C>::create(dir / "t", 2);
    tree.append(ids, g);
    tree.truncate(123);
    CHECK_THROWS_WITH_AS(tree.truncate(124), doctest::Contains("[mc.tree.bad_truncate]"),
                         mc::Error);
    CHECK_THROWS_WITH_AS(tree.truncate(-1), doctest::Contains("[mc.tree.bad_truncate]"),
                         mc::Error);
  }
  {
    auto tree = mc::DiskTree<C>::open(dir / "t");
    tree.verify();
    CHECK(tree.num_tokens() == 123);
    tree.append(std::span(ids).subspan(123), g);
  }
  auto tree = mc::DiskTree<C>::open(dir / "t", {.read_only = true});
  tree.verify();
  CHECK(tree.num_tokens() == 500);
  auto whole = mc::MemoryTree<C>(2);
  whole.append(ids, g);
  for (int l = 1; l <= C::Depth; ++l)
    CHECK(tree.gists(l, 0, tree.level_size(l)) == whole.gists(l, 0, whole.level_size(l)));
}
