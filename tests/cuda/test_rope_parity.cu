// SPDX-License-Identifier: Apache-2.0
// CPU/GPU parity of Gaussian RoPE (mc::cuda::apply_gaussian_rope, cuda/megacontext/device_rope.cuh)
// against the fp64 CPU reference mc::apply_gaussian_rope: every compiled d_head, awkward row
// counts, several heads, tokens / LOD1 / LOD2 entries under both policy sets, positions up to 1e7
// tokens, out of place (output poisoned) and in place, a non-default stream and graph replay.
#include <doctest/doctest.h>

#include <megacontext/device_rope.cuh>
#include <megacontext/dispatch.cuh>
#include <megacontext/gaussian_rope.hpp>

#include <cstdint>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "common/random.hpp"
#include "cuda/parity.cuh"

namespace {

using mc::test::GuardedBuffer;
using mc::test::LaunchMode;

constexpr std::int64_t kRows[] = {1, 3, 127, 1000};
constexpr int kHeads[] = {1, 3, 8};

struct RopeCase {
  int d_head = 128;
  std::int64_t n = 1;
  int n_heads = 1;
  double base = 10000.0;
  bool in_place = false;

  std::string vars() const {
    std::ostringstream os;
    os << "d_head=" << d_head << " n=" << n << " n_heads=" << n_heads << " base=" << base
       << (in_place ? " in_place" : " out_of_place");
    return os.str();
  }
  std::uint64_t salt() const {
    return static_cast<std::uint64_t>(d_head) * 7919u + static_cast<std::uint64_t>(n) * 104729u +
           static_cast<std::uint64_t>(n_heads) * 31u + (base > 20000.0 ? 1u : 0u);
  }
  mc::GaussianRopeOptions options() const {
    mc::GaussianRopeOptions o;
    o.d_head = d_head;
    o.base = base;
    return o;
  }
};

// Entry i is a token, an LOD1 (w = 32) or an LOD2 (w = 1024) entry at a random aligned place in
// the first 1e7 tokens, under the default policies (even i) or the POC ones (odd i); entry 0 is
// the token at position 0 (identity rotation).
std::vector<mc::GaussianPosition> make_positions(const RopeCase& c) {
  auto gen = mc::test::rng(c.salt() + 1);
  std::vector<mc::GaussianPosition> pos;
  for (std::int64_t i = 0; i < c.n; ++i) {
    mc::GaussianRopeOptions o = c.options();
    if (i % 2 == 1) {
      o.position = mc::PositionPolicy::kSpanStart;
      o.spread = mc::SpreadPolicy::kWidth;
    }
    const std::int64_t w = std::int64_t{1} << (5 * ((i / 2) % 3));
    std::uniform_int_distribution<std::int64_t> block(0, 10'000'000 / w);
    const std::int64_t begin = i == 0 ? 0 : block(gen) * w;
    pos.push_back(mc::gaussian_position({begin, begin + w}, o));
  }
  return pos;
}

std::vector<float> make_rows(const RopeCase& c) {
  auto gen = mc::test::rng(c.salt() + 2);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(static_cast<std::size_t>(c.n * c.n_heads * c.d_head));
  for (float& v : x) v = normal(gen);
  return x;
}

void check_case(const RopeCase& c, LaunchMode mode, const mc::test::Stream& stream) {
  INFO(c.vars(), " launch=", mc::test::to_string(mode), " ", mc::test::seed_info());
  const std::vector<mc::GaussianPosition> pos = make_positions(c);
  const std::vector<float> x = make_rows(c);

  // Oracle: the fp64 reference on the same fp32 inputs, not rounded.
  std::vector<double> ref(x.begin(), x.end());
  mc::apply_gaussian_rope(ref.data(), ref.data(), pos.data(), c.n, c.n_heads, c.options());

  GuardedBuffer<float> d_x(x.size());
  GuardedBuffer<float> d_y(c.in_place ? 0 : x.size());
  GuardedBuffer<mc::GaussianPosition> d_pos(pos.size());
  d_x.upload(x);
  d_pos.upload(pos);
  float* out = c.in_place ? d_x.data() : d_y.data();
  if (!c.in_place) d_y.poison();
  if (c.in_place && mode == LaunchMode::kGraph) {
    // Two replays in place would rotate twice; compare against the reference applied twice.
    mc::apply_gaussian_rope(ref.data(), ref.data(), pos.data(), c.n, c.n_heads, c.options());
  }
  mc::test::launch(mode, stream, [&](cudaStream_t s) {
    return mc::cuda::apply_gaussian_rope(d_x.data(), out, d_pos.data(), c.n, c.n_heads, c.options(),
                                         s);
  });
  const std::vector<float> gpu = c.in_place ? d_x.download() : d_y.download();
  CHECK_MESSAGE(d_x.guards_intact(), "write outside d_x");
  CHECK_MESSAGE(d_y.guards_intact(), "write outside d_y");
  CHECK_MESSAGE(d_pos.guards_intact(), "write outside d_positions");
  if (!c.in_place) CHECK_MESSAGE(d_x.download() == x, "d_x was modified out of place");
  // fp32 rotation with fp32-rounded factors: |err| <= ~3·2^-24·(|a| + |b|) ≈ 2e-6 for |a|,|b| ~ 6.
  const auto cmp = mc::test::compare_close(gpu, ref, 1e-5, 1e-5, 1e-12);
  CHECK_MESSAGE(cmp.ok, cmp.report);
}

}  // namespace

TEST_CASE("cuda apply_gaussian_rope matches the fp64 CPU reference for every compiled d_head") {
  const mc::test::Stream stream;
  for (const int d_head : mc::HeadDims::values)
    for (const std::int64_t n : kRows)
      for (const int heads : kHeads)
        for (const LaunchMode mode : mc::test::kLaunchModes)
          check_case({d_head, n, heads, 10000.0, false}, mode, stream);
}

TEST_CASE("cuda apply_gaussian_rope in place matches the reference (stream and graph replay)") {
  const mc::test::Stream stream;
  for (const int d_head : mc::HeadDims::values)
    for (const std::int64_t n : {std::int64_t{3}, std::int64_t{1000}})
      for (const LaunchMode mode : mc::test::kLaunchModes)
        check_case({d_head, n, 4, 10000.0, true}, mode, stream);
}

TEST_CASE("cuda apply_gaussian_rope honours the frequency base (Llama 3 uses 500000)") {
  const mc::test::Stream stream;
  for (const int d_head : mc::HeadDims::values)
    check_case({d_head, 127, 2, 500000.0, false}, LaunchMode::kStream, stream);
}

TEST_CASE("cuda apply_gaussian_rope: sigma = 0 rows are plain RoPE on the GPU as well") {
  // Tokens under the default policy: the GPU result must match an undamped rotation.
  const mc::test::Stream stream;
  const int d_head = 128;
  const std::int64_t n = 257;
  mc::GaussianRopeOptions o;
  o.d_head = d_head;
  std::vector<mc::GaussianPosition> pos;
  for (std::int64_t i = 0; i < n; ++i)
    pos.push_back(mc::gaussian_position({i * 7919, i * 7919 + 1}, o));
  for (const auto& p : pos) REQUIRE(p.sigma == 0.0);
  const RopeCase c{d_head, n, 2, 10000.0, false};
  const std::vector<float> x = make_rows(c);
  std::vector<double> ref(x.size());
  for (std::int64_t i = 0; i < n; ++i)
    for (int h = 0; h < 2; ++h)
      for (int j = 0; j < d_head / 2; ++j) {
        const std::size_t a = static_cast<std::size_t>((i * 2 + h) * d_head + j);
        const std::size_t b = a + d_head / 2;
        const double phase = mc::rope_frequency(j, d_head, o.base) * pos[i].t;
        ref[a] = x[a] * std::cos(phase) - x[b] * std::sin(phase);
        ref[b] = x[b] * std::cos(phase) + x[a] * std::sin(phase);
      }
  GuardedBuffer<float> d_x(x.size()), d_y(x.size());
  GuardedBuffer<mc::GaussianPosition> d_pos(pos.size());
  d_x.upload(x);
  d_pos.upload(pos);
  d_y.poison();
  mc::test::launch(LaunchMode::kStream, stream, [&](cudaStream_t s) {
    return mc::cuda::apply_gaussian_rope(d_x.data(), d_y.data(), d_pos.data(), n, 2, o, s);
  });
  const auto cmp = mc::test::compare_close(d_y.download(), ref, 1e-5, 1e-5, 1e-12);
  CHECK_MESSAGE(cmp.ok, cmp.report);
  CHECK(d_y.guards_intact());
}

TEST_CASE("cuda apply_gaussian_rope: n = 0 launches nothing") {
  const mc::test::Stream stream;
  GuardedBuffer<float> d_x(0);
  GuardedBuffer<mc::GaussianPosition> d_pos(0);
  mc::GaussianRopeOptions o;
  for (const LaunchMode mode : mc::test::kLaunchModes) {
    mc::test::launch(mode, stream, [&](cudaStream_t s) {
      return mc::cuda::apply_gaussian_rope(d_x.data(), d_x.data(), d_pos.data(), 0, 4, o, s);
    });
    CHECK(d_x.guards_intact());
  }
}
