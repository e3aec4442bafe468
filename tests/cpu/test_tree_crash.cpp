// SPDX-License-Identifier: Apache-2.0
// Crash safety under real process death: a forked writer appends at random and is killed with
// SIGKILL at random instants; after every kill the tree must reopen, pass the full checksum
// check, hold at least every token of every append that returned, and continue. A reader that
// opens the tree while a writer appends must always see a consistent prefix.
#include <doctest/doctest.h>

#include <megacontext/tree.hpp>

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <random>
#include <thread>

#include "common/random.hpp"
#include "common/tree_fixtures.hpp"

namespace {

using C = mc::Config<4, 3>;
constexpr std::int64_t kVocab = 61;
constexpr std::int64_t kDim = 3;

mc::MeanPoolGister<C> gister() { return mc::MeanPoolGister<C>::random(kVocab, kDim, 17); }

// Child body: append random-sized chunks of the stream forever, reporting each returned append's
// token count on `ack_fd`. Never returns; exits 3 on any error so the parent can tell.
[[noreturn]] void writer_child(const std::filesystem::path& dir, int ack_fd, std::uint64_t seed,
                               std::int64_t max_tokens) {
  try {
    auto g = gister();
    auto tree = mc::DiskTree<C>::open(dir, {.verify = mc::Verify::kCommitOnly});
    std::mt19937_64 rng(seed);
    std::int64_t n = tree.num_tokens();
    while (n < max_tokens) {
      // Mostly small appends (many commits, so kills land inside them), sometimes large ones
      // (file growth and multi-level gist builds).
      const std::int64_t len = rng() % 8 == 0 ? static_cast<std::int64_t>(rng() % 3000)
                                              : static_cast<std::int64_t>(1 + rng() % 40);
      tree.append(mc::test::stream_tokens(n, n + len, kVocab), g);
      n += len;
      if (::write(ack_fd, &n, sizeof n) != sizeof n) ::_exit(4);
    }
    ::_exit(0);
  } catch (...) {
    ::_exit(3);
  }
}

// Checks the tree against the stream: ids of [from, n) and every gist over [from, n).
void check_tree_content(const mc::DiskTree<C>& tree, std::int64_t from) {
  const std::int64_t n = tree.num_tokens();
  const auto ids = tree.tokens(0, n);
  for (std::int64_t i = from; i < n; ++i)
    if (ids[static_cast<std::size_t>(i)] != mc::test::stream_token(i, kVocab)) {
      FAIL("token ", i, " is ", ids[static_cast<std::size_t>(i)], ", expected ",
           mc::test::stream_token(i, kVocab));
    }
  // Reference gists for the region that changed (aligned down to the top span).
  const std::int64_t top = C::span(C::Depth);
  const std::int64_t begin = (from / top) * top;
  const auto g = gister();
  const auto ref = mc::test::reference_levels<C>(mc::test::stream_tokens(begin, n, kVocab), g.table());
  for (int l = 1; l <= C::Depth; ++l) {
    const std::int64_t b = begin / C::span(l), e = tree.level_size(l);
    const double err = mc::test::max_rel_error(tree.gists(l, b, e), ref[static_cast<std::size_t>(l)]);
    if (!(err <= 1e-5)) FAIL("gists of level ", l, " [", b, ", ", e, ") differ by ", err);
  }
}

}  // namespace

TEST_CASE("tree crash: 200 SIGKILLs at random instants never lose an append that returned") {
  // Rounds continue until 200 kills have landed while a writer was running (a writer that
  // finishes its quota first, or a loaded machine, can make a round end without one).
  INFO(mc::test::seed_info());
  mc::test::TempDir dir("crash");
  const auto path = dir / "t";
  { auto t = mc::DiskTree<C>::create(path, kDim); }
  auto rng = mc::test::rng(99);
  std::int64_t verified = 0;
  int kills_mid_run = 0, torn = 0;
  int round = 0;
  for (; kills_mid_run < 200 && round < 600; ++round) {
    int fds[2];
    REQUIRE(::pipe(fds) == 0);
    const std::uint64_t seed = rng();
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      ::close(fds[0]);
      writer_child(path, fds[1], seed, verified + 2'000'000);
    }
    ::close(fds[1]);
    // Kill after a random delay: 0 to ~8 ms, skewed short so some kills hit the open itself.
    const auto delay = std::chrono::microseconds(rng() % 4 == 0 ? rng() % 300 : rng() % 8000);
    std::this_thread::sleep_for(delay);
    ::kill(pid, SIGKILL);
    int status = 0;
    ::waitpid(pid, &status, 0);
    REQUIRE_MESSAGE(!(WIFEXITED(status) && WEXITSTATUS(status) != 0),
                    "writer failed with exit code ", WEXITSTATUS(status));
    if (WIFSIGNALED(status)) ++kills_mid_run;
    std::int64_t acked = verified, v = 0;
    while (::read(fds[0], &v, sizeof v) == sizeof v) acked = std::max(acked, v);
    ::close(fds[0]);

    auto tree = mc::DiskTree<C>::open(path, {.read_only = true});  // full checksum check
    torn += tree.storage().recovery().torn_slot ? 1 : 0;
    INFO("round ", round, ": acknowledged ", acked, ", reopened with ", tree.num_tokens());
    REQUIRE(tree.num_tokens() >= acked);
    check_tree_content(tree, verified);
    verified = tree.num_tokens();
  }
  MESSAGE(round, " rounds: ", kills_mid_run, " SIGKILLs landed while the writer ran; ", torn,
          " left a torn commit slot; final tree holds ", verified, " tokens");
  CHECK(kills_mid_run == 200);
  // The surviving tree still accepts appends from where it stopped.
  auto tree = mc::DiskTree<C>::open(path);
  auto g = gister();
  tree.append(mc::test::stream_tokens(verified, verified + 100, kVocab), g);
  check_tree_content(tree, verified);
}

TEST_CASE("tree crash: a reader opening while a writer appends always sees a consistent prefix") {
  mc::test::TempDir dir("reader");
  const auto path = dir / "t";
  { auto t = mc::DiskTree<C>::create(path, kDim); }
  int fds[2];
  REQUIRE(::pipe(fds) == 0);
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::close(fds[0]);
    writer_child(path, fds[1], 5, 3'000'000);
  }
  ::close(fds[1]);
  ::fcntl(fds[0], F_SETFL, O_NONBLOCK);
  std::int64_t last = 0, opens = 0, refreshes = 0;
  const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(1500);
  std::int64_t v = 0;
  while (std::chrono::steady_clock::now() < until) {
    // Drain acknowledgements first: anything acknowledged before the open must be visible.
    std::int64_t acked = 0;
    while (::read(fds[0], &v, sizeof v) == sizeof v) acked = v;
    auto tree = mc::DiskTree<C>::open(path, {.read_only = true});
    ++opens;
    REQUIRE(tree.num_tokens() >= last);
    REQUIRE(tree.num_tokens() >= acked);
    check_tree_content(tree, last);
    for (int i = 0; i < 3; ++i) {
      const std::int64_t before = tree.num_tokens();
      refreshes += tree.storage().refresh() ? 1 : 0;
      REQUIRE(tree.num_tokens() >= before);
      check_tree_content(tree, before);
    }
    last = tree.num_tokens();
  }
  ::kill(pid, SIGKILL);
  ::waitpid(pid, nullptr, 0);
  ::close(fds[0]);
  MESSAGE(opens, " read-only opens and ", refreshes, " refreshes saw growing consistent prefixes up to ",
          last, " tokens");
  CHECK(opens >= 20);
  CHECK(last > 0);
}

namespace {

// Child body for the truncation test: appends and truncations of the same stream (so the content
// is always a prefix of it). Before a truncate it sends the target as -(target + 1) (an intent:
// a kill may land before or after it takes effect), after any returned call the new count.
[[noreturn]] void truncating_child(const std::filesystem::path& dir, int ack_fd,
                                   std::uint64_t seed) {
  try {
    auto g = gister();
    auto tree = mc::DiskTree<C>::open(dir, {.verify = mc::Verify::kCommitOnly});
    std::mt19937_64 rng(seed);
    for (;;) {
      std::int64_t n = tree.num_tokens();
      if (rng() % 3 == 0 && n > 0) {
        const std::int64_t target = n - static_cast<std::int64_t>(rng() % std::min<std::int64_t>(n + 1, 200));
        const std::int64_t intent = -(target + 1);
        if (::write(ack_fd, &intent, sizeof intent) != sizeof intent) ::_exit(4);
        tree.truncate(target);
        n = target;
      } else if (n < 40'000) {
        const std::int64_t len = static_cast<std::int64_t>(1 + rng() % 90);
        tree.append(mc::test::stream_tokens(n, n + len, kVocab), g);
        n += len;
      }
      if (::write(ack_fd, &n, sizeof n) != sizeof n) ::_exit(4);
    }
  } catch (...) {
    ::_exit(3);
  }
}

}  // namespace

TEST_CASE("tree crash: SIGKILLs during truncations leave the old or the truncated tree") {
  INFO(mc::test::seed_info());
  mc::test::TempDir dir("crash_truncate");
  const auto path = dir / "t";
  { auto t = mc::DiskTree<C>::create(path, kDim); }
  auto rng = mc::test::rng(123);
  int kills = 0, round = 0;
  for (; kills < 60 && round < 200; ++round) {
    int fds[2];
    REQUIRE(::pipe(fds) == 0);
    const std::uint64_t seed = rng();
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      ::close(fds[0]);
      truncating_child(path, fds[1], seed);
    }
    ::close(fds[1]);
    std::this_thread::sleep_for(std::chrono::microseconds(rng() % 6000));
    ::kill(pid, SIGKILL);
    int status = 0;
    ::waitpid(pid, &status, 0);
    REQUIRE_MESSAGE(!(WIFEXITED(status) && WEXITSTATUS(status) != 0),
                    "writer failed with exit code ", WEXITSTATUS(status));
    if (WIFSIGNALED(status)) ++kills;
    // The tree may hold no fewer tokens than the last returned call left, except that a
    // truncation in flight may have landed.
    std::int64_t floor = -1, v = 0;
    while (::read(fds[0], &v, sizeof v) == sizeof v) floor = v >= 0 ? v : std::min(floor, -v - 1);
    ::close(fds[0]);
    auto tree = mc::DiskTree<C>::open(path, {.read_only = true});  // full checksum check
    INFO("round ", round, ": floor ", floor, ", reopened with ", tree.num_tokens());
    REQUIRE(tree.num_tokens() >= floor);
    check_tree_content(tree, 0);
  }
  MESSAGE(round, " rounds, ", kills, " SIGKILLs landed while the writer ran");
  CHECK(kills == 60);
}
