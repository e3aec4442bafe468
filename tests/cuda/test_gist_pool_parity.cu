// SPDX-License-Identifier: Apache-2.0
// CPU/GPU parity of K-block mean pooling (mc::cuda::mean_pool,
// cuda/megacontext/device_gist_pool.cuh) against a plain fp64 Eigen reference: small-integer inputs
// bit-exact, normal inputs within atol + rtol per element and NMSE, awkward shapes, misaligned
// buffers (scalar path), a non-default stream and CUDA-graph replay, outputs poisoned with NaN and
// guard regions checked.
#include <doctest/doctest.h>

#include <megacontext/detail/eigen.hpp>
#include <megacontext/device_gist_pool.cuh>

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
using RowMatrixD = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using RowMatrixF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// Shapes from STYLE §5.8: 1, small primes, a large prime, sizes around the float4 width.
constexpr std::int64_t kNumBlocks[] = {1, 3, 127, 1000};
constexpr std::int64_t kDims[] = {1, 3, 64, 256, 257};
// Powers of two, K − 1 / K / K + 1 around the default K = 32, and K = 1 (the identity).
constexpr int kBlockSizes[] = {1, 2, 3, 31, 32, 33, 64};

struct PoolCase {
  std::int64_t num_blocks = 1;
  int K = 32;
  std::int64_t d = 256;
  bool exact = false;              // small-integer inputs, compared bit for bit
  std::size_t misalign_bytes = 0;  // shift both buffers off 16-byte alignment

  std::string vars() const {
    std::ostringstream os;
    os << "num_blocks=" << num_blocks << " K=" << K << " d=" << d
       << " mode=" << (exact ? "exact" : "real") << " misalign=" << misalign_bytes;
    return os.str();
  }
  std::uint64_t salt() const {
    return static_cast<std::uint64_t>(num_blocks) * 1000003u +
           static_cast<std::uint64_t>(K) * 1009u + static_cast<std::uint64_t>(d) * 7u +
           (exact ? 1u : 0u);
  }
};

// Inputs [num_blocks·K, d]: nonzero integers in [−8, 8] (every fp32 sum of ≤ 64 of them is exact)
// or standard normal values, from a seed derived from the case.
std::vector<float> make_input(const PoolCase& c) {
  auto gen = mc::test::rng(c.salt());
  std::vector<float> x(static_cast<std::size_t>(c.num_blocks * c.K * c.d));
  if (c.exact) {
    std::uniform_int_distribution<int> mag(1, 8);
    std::bernoulli_distribution neg(0.5);
    for (float& v : x) v = static_cast<float>(neg(gen) ? -mag(gen) : mag(gen));
  } else {
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (float& v : x) v = normal(gen);
  }
  return x;
}

// The oracle: the mean of each block of K rows, summed and divided in fp64.
RowMatrixD mean_pool_reference(const std::vector<float>& in, const PoolCase& c) {
  const Eigen::Map<const RowMatrixF> x(in.data(), c.num_blocks * c.K, c.d);
  RowMatrixD y(c.num_blocks, c.d);
  for (std::int64_t b = 0; b < c.num_blocks; ++b)
    y.row(b) = x.middleRows(b * c.K, c.K).cast<double>().colwise().sum() / double(c.K);
  return y;
}

// Runs one case on the GPU in `mode` and returns the output; checks guards and that the input
// was left untouched.
std::vector<float> run_gpu(const PoolCase& c, const std::vector<float>& in, LaunchMode mode,
                           const mc::test::Stream& stream) {
  GuardedBuffer<float> d_in(in.size(), c.misalign_bytes);
  GuardedBuffer<float> d_out(static_cast<std::size_t>(c.num_blocks * c.d), c.misalign_bytes);
  d_in.upload(in);
  d_out.poison();
  mc::test::launch(mode, stream, [&](cudaStream_t s) {
    return mc::cuda::mean_pool(d_in.data(), c.num_blocks, c.K, c.d, d_out.data(), s);
  });
  CHECK_MESSAGE(d_out.guards_intact(), "write outside d_out");
  CHECK_MESSAGE(d_in.guards_intact(), "write outside d_in");
  CHECK_MESSAGE(d_in.download() == in, "d_in was modified");
  return d_out.download();
}

// Runs `c` in every launch mode and compares with the reference.
void check_case(const PoolCase& c, const mc::test::Stream& stream) {
  const std::vector<float> in = make_input(c);
  REQUIRE(Eigen::Map<const Eigen::VectorXf>(in.data(), Eigen::Index(in.size())).norm() > 0.0f);
  const RowMatrixD ref = mean_pool_reference(in, c);
  for (const LaunchMode mode : mc::test::kLaunchModes) {
    INFO(c.vars(), " launch=", mc::test::to_string(mode), " ", mc::test::seed_info());
    const std::vector<float> gpu = run_gpu(c, in, mode, stream);
    if (c.exact) {
      // Integer sums are exact in fp32, and one correctly rounded division gives the same bits
      // as fp64 division rounded to fp32 (double rounding is harmless for p = 53 >= 2·24 + 2),
      // so this holds for every K, not only powers of two.
      const RowMatrixF ref_f = ref.cast<float>();
      const auto cmp = mc::test::compare_exact(
          gpu, std::vector<float>(ref_f.data(), ref_f.data() + ref_f.size()));
      CHECK_MESSAGE(cmp.ok, cmp.report);
    } else {
      const auto cmp = mc::test::compare_close(
          gpu, std::vector<double>(ref.data(), ref.data() + ref.size()), 2e-6, 1e-5, 1e-10);
      CHECK_MESSAGE(cmp.ok, cmp.report);
    }
  }
}

}  // namespace

TEST_CASE("cuda mean_pool: small-integer inputs are pooled bit-exactly for every shape") {
  const mc::test::Stream stream;
  for (const std::int64_t nb : kNumBlocks)
    for (const int K : kBlockSizes)
      for (const std::int64_t d : kDims) check_case({nb, K, d, true, 0}, stream);
}

TEST_CASE("cuda mean_pool: normal inputs match the fp64 reference within atol + rtol and NMSE") {
  const mc::test::Stream stream;
  for (const std::int64_t nb : kNumBlocks)
    for (const int K : kBlockSizes)
      for (const std::int64_t d : kDims) check_case({nb, K, d, false, 0}, stream);
}

TEST_CASE("cuda mean_pool: misaligned buffers take the scalar path and give the same bits") {
  const mc::test::Stream stream;
  for (const std::int64_t d : {std::int64_t{4}, std::int64_t{64}, std::int64_t{256}}) {
    for (const int K : {3, 32}) {
      const PoolCase aligned{127, K, d, false, 0};
      const PoolCase shifted{127, K, d, false, 4};
      check_case({127, K, d, true, 4}, stream);
      check_case(shifted, stream);
      // float4 and scalar kernels sum every element in the same order: identical bits.
      const std::vector<float> in = make_input(aligned);
      INFO(aligned.vars(), " ", mc::test::seed_info());
      const auto cmp = mc::test::compare_exact(run_gpu(shifted, in, LaunchMode::kStream, stream),
                                               run_gpu(aligned, in, LaunchMode::kStream, stream));
      CHECK_MESSAGE(cmp.ok, cmp.report);
    }
  }
}

TEST_CASE("cuda mean_pool: results are deterministic across runs and launch modes") {
  const mc::test::Stream stream;
  const PoolCase c{1000, 32, 256, false, 0};
  const std::vector<float> in = make_input(c);
  INFO(c.vars(), " ", mc::test::seed_info());
  const std::vector<float> first = run_gpu(c, in, LaunchMode::kStream, stream);
  for (int run = 0; run < 3; ++run) {
    const auto cmp =
        mc::test::compare_exact(run_gpu(c, in, mc::test::kLaunchModes[run % 2], stream), first);
    CHECK_MESSAGE(cmp.ok, cmp.report);
  }
}

TEST_CASE("cuda mean_pool: num_blocks = 0 launches nothing and writes nothing") {
  const mc::test::Stream stream;
  GuardedBuffer<float> d_in(32 * 8);
  GuardedBuffer<float> d_out(0);
  for (const LaunchMode mode : mc::test::kLaunchModes) {
    mc::test::launch(mode, stream, [&](cudaStream_t s) {
      return mc::cuda::mean_pool(d_in.data(), 0, 32, 8, d_out.data(), s);
    });
    CHECK(d_out.guards_intact());
  }
  CHECK(mc::cuda::mean_pool(nullptr, 0, 32, 8, nullptr, stream.get()) == cudaSuccess);
}

TEST_CASE("cuda mean_pool: the default stream works too") {
  const PoolCase c{127, 32, 256, true, 0};
  const std::vector<float> in = make_input(c);
  GuardedBuffer<float> d_in(in.size());
  GuardedBuffer<float> d_out(static_cast<std::size_t>(c.num_blocks * c.d));
  d_in.upload(in);
  d_out.poison();
  REQUIRE(mc::cuda::mean_pool(d_in.data(), c.num_blocks, c.K, c.d, d_out.data()) == cudaSuccess);
  MC_CUDA_TRY(cudaDeviceSynchronize());
  const RowMatrixF ref = mean_pool_reference(in, c).cast<float>();
  const auto cmp = mc::test::compare_exact(d_out.download(),
                                           std::vector<float>(ref.data(), ref.data() + ref.size()));
  CHECK_MESSAGE(cmp.ok, cmp.report);
  CHECK(d_out.guards_intact());
}
