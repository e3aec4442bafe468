// SPDX-License-Identifier: Apache-2.0
// The focus allocator: turns LensNet's per-entry scores into legal edits of the working context
// under the budget W_max. It owns the rules every policy obeys (the newest `recent_tokens` and
// the sinks stay at LOD0, hysteresis through separate thresholds plus a cooldown, at most
// `max_edits` score-driven edits per step, only complete aligned sibling groups collapse, never
// more than W_max entries) and delegates the choice among legal edits to a FocusPolicy.
// Data flow: Tree -> WorkingContext -> LensNet scores -> FocusAllocator::step -> WorkingContext.
#pragma once

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <span>
#include <vector>

// The candidate pass's SIMD kernels: SSE2 (the x86-64 baseline) always, and AVX-512 or AVX chosen
// at run time where the CPU has them (GCC/Clang target attributes, so no compile flag is needed). Other
// compilers and architectures use the portable loop; all paths give identical masks (tested).
#if defined(__SSE2__) && !defined(__CUDA_ARCH__)
#include <immintrin.h>
#define MC_DETAIL_FOCUS_SSE2 1
#if defined(__GNUC__)
#define MC_DETAIL_FOCUS_AVX 1
#endif
#endif

#include "megacontext/config.hpp"
#include "megacontext/error.hpp"
#include "megacontext/focus_policy.hpp"
#include "megacontext/lod.hpp"
#include "megacontext/working_context.hpp"

namespace mc {

namespace detail {

/// One bit per working-context entry (bit i % 64 of word i / 64), built in one pass over the
/// scores and the entry flags; the candidate pass then touches only entries whose bits say so.
struct FocusMasks {
  std::vector<std::uint64_t> above;     ///< score > expand threshold
  std::vector<std::uint64_t> negative;  ///< sign bit of the score set (score < 0, or -0)
  std::vector<std::uint64_t> gist;      ///< kWcGist
  std::vector<std::uint64_t> group;     ///< kWcGroupStart
};

/// Where one scan writes: word w of each mask (raw pointers, so stores alias nothing else).
struct MaskWords {
  std::uint64_t* above;
  std::uint64_t* negative;
  std::uint64_t* gist;
  std::uint64_t* group;
};

// 64 bytes, each 0 or 1, as the bits of a word (byte j -> bit j).
inline std::uint64_t gather_bits(const std::uint8_t* b) {
  std::uint64_t out = 0;
  if constexpr (std::endian::native == std::endian::little) {
    // Byte j of x times 2^(56 - 7j) lands on bit 56 + j; no two products share a bit.
    for (int k = 0; k < 8; ++k) {
      std::uint64_t x;
      std::memcpy(&x, b + 8 * k, 8);
      out |= ((x * 0x0102040810204080ull) >> 56) << (8 * k);
    }
  } else {
    for (int j = 0; j < 64; ++j) out |= std::uint64_t{b[j]} << j;
  }
  return out;
}

// Entries [0, count) of mask word w, count <= 64; false when a score is outside [-1, 1] or NaN.
inline bool scan_word_scalar(const float* s, const std::uint8_t* f, int count, float hi,
                             const MaskWords& m, std::size_t w) {
  // Branch-free, in two passes so a compiler can vectorise the first on any architecture:
  // compare into bytes (0 or 1), then gather 8 bytes into 8 bits with one multiply.
  std::uint8_t a[64] = {}, n[64] = {}, g[64] = {}, c[64] = {};
  std::uint32_t bad = 0;
  for (int j = 0; j < count; ++j) {
    const float x = s[j];
    const std::uint32_t bits = std::bit_cast<std::uint32_t>(x);
    bad |= (bits & 0x7fffffffu) > 0x3f800000u;  // |x| > 1, Inf or NaN
    a[j] = x > hi;
    n[j] = static_cast<std::uint8_t>(bits >> 31);
    g[j] = (f[j] & kWcGist) != 0;
    c[j] = (f[j] & kWcGroupStart) != 0;
  }
  m.above[w] = gather_bits(a);
  m.negative[w] = gather_bits(n);
  m.gist[w] = gather_bits(g);
  m.group[w] = gather_bits(c);
  return bad == 0;
}

#ifdef MC_DETAIL_FOCUS_SSE2
// Stores 16 mask bits as piece q (bits [16q, 16q + 16)) of word w; x86 is little-endian.
inline void put_bits16(std::uint64_t* mask, std::size_t w, int q, int bits) {
  const auto v = static_cast<std::uint16_t>(bits);
  std::memcpy(reinterpret_cast<unsigned char*>(mask + w) + 2 * q, &v, 2);
}

// The WcFlag bits of 64 entries: kWcGist is bit 7 and kWcGroupStart bit 6 of each flag byte.
inline void scan_flags_sse2(const std::uint8_t* f, const MaskWords& m, std::size_t w) {
  for (int q = 0; q < 4; ++q) {
    const __m128i fl = _mm_loadu_si128(reinterpret_cast<const __m128i*>(f + 16 * q));
    put_bits16(m.gist, w, q, _mm_movemask_epi8(fl));
    put_bits16(m.group, w, q, _mm_movemask_epi8(_mm_slli_epi16(fl, 1)));
  }
}

// 64 entries with SSE2: 16 scores -> 16 bits per byte movemask after two saturating packs.
inline bool scan_word_sse2(const float* s, const std::uint8_t* f, float hi, const MaskWords& m,
                           std::size_t w) {
  const __m128 hv = _mm_set1_ps(hi);
  const __m128i abs_mask = _mm_set1_epi32(0x7fffffff), past_one = _mm_set1_epi32(0x3f800001);
  // Valid iff |bits| - (bits(1.0f) + 1) < 0 as int32 (NaN and Inf have larger |bits|): the AND
  // of those differences keeps a lane's sign bit only if every score in it was valid.
  __m128i ok = _mm_set1_epi32(-1);
  for (int q = 0; q < 4; ++q) {
    const float* p = s + 16 * q;
    const __m128 x0 = _mm_loadu_ps(p), x1 = _mm_loadu_ps(p + 4), x2 = _mm_loadu_ps(p + 8),
                 x3 = _mm_loadu_ps(p + 12);
    const __m128i i0 = _mm_castps_si128(x0), i1 = _mm_castps_si128(x1),
                  i2 = _mm_castps_si128(x2), i3 = _mm_castps_si128(x3);
    ok = _mm_and_si128(ok, _mm_sub_epi32(_mm_and_si128(i0, abs_mask), past_one));
    ok = _mm_and_si128(ok, _mm_sub_epi32(_mm_and_si128(i1, abs_mask), past_one));
    ok = _mm_and_si128(ok, _mm_sub_epi32(_mm_and_si128(i2, abs_mask), past_one));
    ok = _mm_and_si128(ok, _mm_sub_epi32(_mm_and_si128(i3, abs_mask), past_one));
    const __m128i a01 = _mm_packs_epi32(_mm_castps_si128(_mm_cmpgt_ps(x0, hv)),
                                        _mm_castps_si128(_mm_cmpgt_ps(x1, hv)));
    const __m128i a23 = _mm_packs_epi32(_mm_castps_si128(_mm_cmpgt_ps(x2, hv)),
                                        _mm_castps_si128(_mm_cmpgt_ps(x3, hv)));
    put_bits16(m.above, w, q, _mm_movemask_epi8(_mm_packs_epi16(a01, a23)));
    // Signed saturating packs keep the sign of the float's bits.
    const __m128i n = _mm_packs_epi16(_mm_packs_epi32(i0, i1), _mm_packs_epi32(i2, i3));
    put_bits16(m.negative, w, q, _mm_movemask_epi8(n));
  }
  scan_flags_sse2(f, m, w);
  return _mm_movemask_ps(_mm_castsi128_ps(ok)) == 0xf;
}
#endif

#ifdef MC_DETAIL_FOCUS_AVX
// Words [0, words) (64 entries each) with AVX: a float compare and vmovmskps give 8 mask bits
// directly. One call for all words: a target("avx") function is not inlined into its caller.
__attribute__((target("avx"))) inline bool scan_words_avx(const float* s, const std::uint8_t* f,
                                                          std::size_t words, float hi,
                                                          const MaskWords& m) {
  const __m256 hv = _mm256_set1_ps(hi), one = _mm256_set1_ps(1.0f);
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  __m256 bad = _mm256_setzero_ps();
  for (std::size_t w = 0; w < words; ++w) {
    const float* p = s + 64 * w;
    std::uint64_t above = 0, negative = 0;
    for (int k = 0; k < 8; ++k) {
      const __m256 x = _mm256_loadu_ps(p + 8 * k);
      // |x| > 1 or unordered (NaN).
      bad = _mm256_or_ps(bad, _mm256_cmp_ps(_mm256_and_ps(x, abs_mask), one, _CMP_NLE_UQ));
      above |= std::uint64_t(static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(x, hv, _CMP_GT_OQ))))
               << (8 * k);
      negative |= std::uint64_t(static_cast<unsigned>(_mm256_movemask_ps(x))) << (8 * k);
    }
    m.above[w] = above;
    m.negative[w] = negative;
    scan_flags_sse2(f + 64 * w, m, w);
  }
  return _mm256_movemask_ps(bad) == 0;
}

// Words [0, words) with AVX-512: a compare writes 16 mask bits into a mask register, and one
// byte movemask gives the 64 flag bits of a word.
__attribute__((target("avx512f,avx512bw"))) inline bool scan_words_avx512(
    const float* s, const std::uint8_t* f, std::size_t words, float hi, const MaskWords& m) {
  const __m512 hv = _mm512_set1_ps(hi);
  const __m512i abs_mask = _mm512_set1_epi32(0x7fffffff), one = _mm512_set1_epi32(0x3f800000);
  const __m512i zero = _mm512_setzero_si512();
  // The largest |bits| seen, compared with bits(1.0f) once at the end (|x| > 1, Inf and NaN all
  // have larger |bits|): one vector max per 16 scores instead of a mask compare.
  __m512i top = zero;
  for (std::size_t w = 0; w < words; ++w) {
    const float* p = s + 64 * w;
    std::uint64_t above = 0, negative = 0;
    for (int k = 0; k < 4; ++k) {
      const __m512 x = _mm512_loadu_ps(p + 16 * k);
      const __m512i xi = _mm512_castps_si512(x);
      above |= std::uint64_t{_mm512_cmp_ps_mask(x, hv, _CMP_GT_OQ)} << (16 * k);
      negative |= std::uint64_t{_mm512_cmplt_epi32_mask(xi, zero)} << (16 * k);
      // (maskz: GCC 12 warns about the undefined pass-through of the unmasked form.)
      top = _mm512_maskz_max_epu32(0xffff, top, _mm512_and_si512(xi, abs_mask));
    }
    m.above[w] = above;
    m.negative[w] = negative;
    const __m512i fl = _mm512_loadu_si512(f + 64 * w);
    m.gist[w] = _mm512_movepi8_mask(fl);
    m.group[w] = _mm512_movepi8_mask(_mm512_add_epi8(fl, fl));
  }
  return _mm512_cmpgt_epu32_mask(top, one) == 0;
}

inline bool cpu_has_avx() {
  static const bool has = __builtin_cpu_supports("avx");
  return has;
}
inline bool cpu_has_avx512() {
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
  return has;
}
#endif

/// Which scan kernel to use; kBest picks the widest the CPU runs (tests force each one).
enum class ScanPath { kBest, kPortable, kSse2, kAvx, kAvx512 };

/// True when `path` can run here.
inline bool scan_path_available(ScanPath path) {
  switch (path) {
    case ScanPath::kBest:
    case ScanPath::kPortable:
      return true;
    case ScanPath::kSse2:
#ifdef MC_DETAIL_FOCUS_SSE2
      return true;
#else
      return false;
#endif
    case ScanPath::kAvx:
#ifdef MC_DETAIL_FOCUS_AVX
      return cpu_has_avx();
#else
      return false;
#endif
    case ScanPath::kAvx512:
#ifdef MC_DETAIL_FOCUS_AVX
      return cpu_has_avx512();
#else
      return false;
#endif
  }
  return false;
}

/// The kernel ScanPath::kBest runs on this CPU: "avx512", "avx", "sse2" or "portable".
inline const char* best_scan_path_name() {
#ifdef MC_DETAIL_FOCUS_AVX
  if (cpu_has_avx512()) return "avx512";
  if (cpu_has_avx()) return "avx";
#endif
#ifdef MC_DETAIL_FOCUS_SSE2
  return "sse2";
#else
  return "portable";
#endif
}

/// Fills `m` for n entries (scores `s`, WcFlag bytes `f`); returns false when a score is outside
/// [-1, 1] or NaN. A `path` that cannot run here falls back to the portable loop.
inline bool scan_scores(const float* s, const std::uint8_t* f, std::int64_t n, float hi,
                        FocusMasks& fm, ScanPath path = ScanPath::kBest) {
  const auto words = static_cast<std::size_t>((n + 63) / 64);
  fm.above.resize(words);
  fm.negative.resize(words);
  fm.gist.resize(words);
  fm.group.resize(words);
  const MaskWords m{fm.above.data(), fm.negative.data(), fm.gist.data(), fm.group.data()};
  [[maybe_unused]] const auto full = static_cast<std::size_t>(n / 64);
  bool ok = true;
  std::size_t w = 0;
#ifdef MC_DETAIL_FOCUS_AVX
  if ((path == ScanPath::kBest || path == ScanPath::kAvx512) && cpu_has_avx512()) {
    ok = scan_words_avx512(s, f, full, hi, m);
    w = full;
  } else if ((path == ScanPath::kBest || path == ScanPath::kAvx) && cpu_has_avx()) {
    ok = scan_words_avx(s, f, full, hi, m);
    w = full;
  }
#endif
#ifdef MC_DETAIL_FOCUS_SSE2
  if (path == ScanPath::kBest || path == ScanPath::kSse2) {
    for (; w < full; ++w) ok &= scan_word_sse2(s + 64 * w, f + 64 * w, hi, m, w);
  }
#endif
  for (; w < words; ++w) {
    const auto count = static_cast<int>(std::min<std::int64_t>(64, n - 64 * static_cast<std::int64_t>(w)));
    ok &= scan_word_scalar(s + 64 * w, f + 64 * w, count, hi, m, w);
  }
  return ok;
}

/// Calls fn(i) for every i in [begin, end) whose bit is set in word(i / 64), in increasing order.
template <class Word, class Fn>
inline void for_each_bit(std::int64_t begin, std::int64_t end, Word word, Fn fn) {
  if (begin >= end) return;
  const std::int64_t w_first = begin >> 6, w_last = (end - 1) >> 6;
  for (std::int64_t w = w_first; w <= w_last; ++w) {
    std::uint64_t bits = word(static_cast<std::size_t>(w));
    if (w == w_first) bits &= ~std::uint64_t{0} << (begin & 63);
    if (w == w_last) bits &= ~std::uint64_t{0} >> (63 - ((end - 1) & 63));
    while (bits != 0) {
      fn((w << 6) + std::countr_zero(bits));
      bits &= bits - 1;
    }
  }
}

/// Calls fn(bits) with the bits of `mask` that lie in [begin, end), one word at a time.
template <class Fn>
inline void for_each_word_part(const std::uint64_t* mask, std::int64_t begin, std::int64_t end,
                               Fn fn) {
  if (begin >= end) return;
  const std::int64_t w_first = begin >> 6, w_last = (end - 1) >> 6;
  for (std::int64_t w = w_first; w <= w_last; ++w) {
    std::uint64_t bits = mask[w];
    if (w == w_first) bits &= ~std::uint64_t{0} << (begin & 63);
    if (w == w_last) bits &= ~std::uint64_t{0} >> (63 - ((end - 1) & 63));
    fn(bits);
  }
}

/// Set bits of x. Inline SWAR: without -mpopcnt, std::popcount is a libgcc call.
inline int popcount64(std::uint64_t x) {
  x -= (x >> 1) & 0x5555555555555555ull;
  x = (x & 0x3333333333333333ull) + ((x >> 2) & 0x3333333333333333ull);
  x = (x + (x >> 4)) & 0x0f0f0f0f0f0f0f0full;
  return static_cast<int>((x * 0x0101010101010101ull) >> 56);
}

/// Number of set bits of `mask` in [begin, end).
inline int count_bits(const std::uint64_t* mask, std::int64_t begin, std::int64_t end) {
  int n = 0;
  for_each_word_part(mask, begin, end, [&n](std::uint64_t bits) { n += popcount64(bits); });
  return n;
}

/// Bits [i, i + Width) of `mask` as the low bits of a word (Width <= 64; the bits must exist).
template <int Width>
inline std::uint64_t window_bits(const std::uint64_t* mask, std::int64_t i) {
  static_assert(Width >= 1 && Width <= 64);
  const auto w = static_cast<std::size_t>(i >> 6);
  const int b = static_cast<int>(i & 63);
  std::uint64_t bits = mask[w] >> b;
  if (b + Width > 64) bits |= mask[w + 1] << (64 - b);
  if constexpr (Width < 64) bits &= (std::uint64_t{1} << Width) - 1;
  return bits;
}

/// True when a bit of `mask` in [begin, end) is set.
inline bool any_bit(const std::uint64_t* mask, std::int64_t begin, std::int64_t end) {
  std::uint64_t any = 0;
  for_each_word_part(mask, begin, end, [&any](std::uint64_t bits) { any |= bits; });
  return any != 0;
}

/// Writes to `out` the collapse-group starts i in [begin, end) (bits of `group`) with no bit of
/// `above` and at least `min_negative` bits of `negative` in [i, i + Width); returns how many.
/// Branch-free: whether a group passes is noise to a branch predictor. `out` needs room for
/// every group start in the range (groups do not overlap: (end - begin) / Width + 1).
template <int Width>
inline std::size_t filter_groups_portable(const std::uint64_t* group, const std::uint64_t* above,
                                          const std::uint64_t* negative, std::int64_t begin,
                                          std::int64_t end, int min_negative, std::int64_t* out) {
  std::size_t kept = 0;
  for_each_bit(begin, end, [group](std::size_t w) { return group[w]; }, [&](std::int64_t i) {
    out[kept] = i;
    kept += (window_bits<Width>(above, i) == 0) &
            (popcount64(window_bits<Width>(negative, i)) >= min_negative);
  });
  return kept;
}

#ifdef MC_DETAIL_FOCUS_AVX
// The same with the popcnt and BMI instructions, for CPUs that have them.
template <int Width>
__attribute__((target("popcnt,bmi,bmi2"))) inline std::size_t filter_groups_bmi(
    const std::uint64_t* group, const std::uint64_t* above, const std::uint64_t* negative,
    std::int64_t begin, std::int64_t end, int min_negative, std::int64_t* out) {
  std::size_t kept = 0;
  if (begin >= end) return 0;
  const std::int64_t w_first = begin >> 6, w_last = (end - 1) >> 6;
  for (std::int64_t w = w_first; w <= w_last; ++w) {
    std::uint64_t bits = group[w];
    if (w == w_first) bits &= ~std::uint64_t{0} << (begin & 63);
    if (w == w_last) bits &= ~std::uint64_t{0} >> (63 - ((end - 1) & 63));
    while (bits != 0) {
      const std::int64_t i = (w << 6) + __builtin_ctzll(bits);
      bits &= bits - 1;
      const auto iw = static_cast<std::size_t>(i >> 6);
      const int b = static_cast<int>(i & 63);
      std::uint64_t a = above[iw] >> b, n = negative[iw] >> b;
      if (b + Width > 64) {
        a |= above[iw + 1] << (64 - b);
        n |= negative[iw + 1] << (64 - b);
      }
      if constexpr (Width < 64) {
        a &= (std::uint64_t{1} << Width) - 1;
        n &= (std::uint64_t{1} << Width) - 1;
      }
      out[kept] = i;
      kept += (a == 0) & (__builtin_popcountll(n) >= min_negative);
    }
  }
  return kept;
}

inline bool cpu_has_bmi() {
  static const bool has = __builtin_cpu_supports("popcnt") && __builtin_cpu_supports("bmi") &&
                          __builtin_cpu_supports("bmi2");
  return has;
}
#endif

/// filter_groups_portable, or its popcnt/BMI version where the CPU has those instructions.
template <int Width>
inline std::size_t filter_groups(const std::uint64_t* group, const std::uint64_t* above,
                                 const std::uint64_t* negative, std::int64_t begin,
                                 std::int64_t end, int min_negative, std::int64_t* out) {
#ifdef MC_DETAIL_FOCUS_AVX
  if (cpu_has_bmi())
    return filter_groups_bmi<Width>(group, above, negative, begin, end, min_negative, out);
#endif
  return filter_groups_portable<Width>(group, above, negative, begin, end, min_negative, out);
}

}  // namespace detail

/// Run-time options of a FocusAllocator.
struct FocusOptions {
  std::int64_t recent_tokens = 128;     ///< newest tokens that always stay at LOD0
  float expand_threshold = 0.25f;       ///< expand a gist whose score is above this
  float collapse_threshold = -0.25f;    ///< collapse siblings whose mean score is below this
  std::int32_t cooldown_steps = 4;      ///< steps before an entry that changed may change again
  std::int32_t max_edits = 16;          ///< most score-driven edits per step
  std::int64_t restore_headroom = -1;   ///< free entries needed to bring evicted history back
                                        ///< (-1: 2*K); keeps restore/evict from alternating
  bool residency_stats = true;          ///< compute residency mean/p95 in every report (O(W))

  /// Throws mc::Error naming the first bad field; `wc` and K, Depth bound what is possible.
  void validate(const WorkingContextOptions& wc, int k, int depth) const {
    MC_EXPECTS(recent_tokens >= 0, Errc::kInvalidArgument,
               "[mc.focus.bad_recent_tokens] recent_tokens = ", recent_tokens, " must be >= 0");
    MC_EXPECTS(std::isfinite(expand_threshold) && std::isfinite(collapse_threshold) &&
                   collapse_threshold < expand_threshold,
               Errc::kInvalidArgument, "[mc.focus.bad_thresholds] collapse_threshold = ",
               collapse_threshold, " must be below expand_threshold = ", expand_threshold,
               " (hysteresis)");
    MC_EXPECTS(collapse_threshold < 0 && expand_threshold > 0, Errc::kInvalidArgument,
               "[mc.focus.bad_thresholds] need collapse_threshold < 0 < expand_threshold, got ",
               collapse_threshold, " and ", expand_threshold);
    MC_EXPECTS(cooldown_steps >= 0, Errc::kInvalidArgument,
               "[mc.focus.bad_cooldown] cooldown_steps = ", cooldown_steps, " must be >= 0");
    MC_EXPECTS(max_edits >= 0, Errc::kInvalidArgument, "[mc.focus.bad_max_edits] max_edits = ",
               max_edits, " must be >= 0");
    // The protected entries (sinks, recent tokens, and up to K-1 incomplete siblings per level
    // at both ends of the window) must fit, or no sequence of edits can respect w_max.
    const std::int64_t need = wc.sink_tokens + recent_tokens + 3 * std::int64_t{depth} * k;
    MC_EXPECTS(wc.w_max >= need, Errc::kInvalidArgument, "[mc.focus.bad_w_max] w_max = ",
               wc.w_max, " is below sink_tokens + recent_tokens + 3*Depth*K = ", need);
  }
};

/// What one admit() or step() did, for telemetry.
struct FocusReport {
  std::int32_t step = 0;              ///< allocator step number
  std::int32_t expansions = 0;        ///< score-driven expansions
  std::int32_t collapses = 0;         ///< score-driven collapses
  std::int32_t forced_collapses = 0;  ///< collapses made to restore the budget
  std::int32_t evictions = 0;         ///< oldest entries that left the window
  std::int32_t restores = 0;          ///< evicted nodes brought back
  std::int64_t size = 0;              ///< entries after the step
  std::int64_t w_max = 0;             ///< budget
  std::int64_t fresh_entries = 0;     ///< entries the step created (rows to re-assemble)
  double budget_use = 0;              ///< size / w_max
  double swap_rate = 0;               ///< fresh_entries / size
  double residency_mean = 0;          ///< mean steps an entry has stayed unchanged
  double residency_p95 = 0;           ///< 95th percentile of the same
};

/// Applies a FocusPolicy to a WorkingContext of Config C under the rules in FocusOptions. A
/// FocusLayoutPolicy (a baseline that names the window's tiling) is accepted too; see step().
template <ConfigType C, class Policy>
  requires FocusPolicy<Policy> || FocusLayoutPolicy<Policy, C>
class FocusAllocator {
 public:
  static constexpr int K = C::K;
  static constexpr int Depth = C::Depth;
  using L = Lod<C>;

  /// An allocator for contexts built with `wc_opts`; validates both option sets.
  FocusAllocator(const FocusOptions& opts, const WorkingContextOptions& wc_opts,
                 Policy policy = {})
      : opts_(opts), wc_opts_(wc_opts), policy_(std::move(policy)) {
    wc_opts_.validate();
    opts_.validate(wc_opts_, K, Depth);
    if (opts_.restore_headroom < 0) opts_.restore_headroom = 2 * K;
    // A group's float sum (K scores in [-1, 1], added in order) is within K * gamma_{K-1} of
    // the exact sum, and the exact sum is at least -(number of negative scores). So a group
    // with at most `bound` negative scores cannot have a float mean below the collapse
    // threshold, and the candidate pass skips its sum (twice the error bound, for margin).
    const double u = 0x1p-24, m = K - 1.0;
    const double bound = -double{K} * double{opts_.collapse_threshold} - 2.0 * K * m * u / (1.0 - m * u);
    min_negative_ = bound < 0 ? 0 : static_cast<int>(std::floor(bound)) + 1;
  }

  /// The options in force.
  const FocusOptions& options() const { return opts_; }
  /// Number of the next step.
  std::int32_t step_number() const { return step_; }
  /// Continues the step numbering of a saved session at `step` (cooldowns compare it with the
  /// entries' changed_at, so a resumed session must restore both).
  void resume_at(std::int32_t step) {
    MC_EXPECTS(step >= 0, Errc::kInvalidArgument, "[mc.focus.bad_step] resume_at(", step,
               "); must be >= 0");
    step_ = step;
  }
  /// The policy object.
  Policy& policy() { return policy_; }

  /// Covers a history grown to `num_tokens` and restores the budget: new tokens enter as LOD0
  /// when recent and as the coarsest complete nodes otherwise; while over w_max, the collapse
  /// groups with the lowest `scores` (the last LensNet scores of the current entries; missing
  /// ones count as 0) are collapsed, and only when none is left the oldest entries are evicted.
  FocusReport admit(WorkingContext<C>& wc, std::int64_t num_tokens,
                    std::span<const float> scores = {}) {
    check_context(wc);
    wc.begin_patch();
    FocusReport r = start_report();
    wc.extend(num_tokens, num_tokens - opts_.recent_tokens, step_);
    scratch_scores_.assign(scores.begin(), scores.end());
    scratch_scores_.resize(static_cast<std::size_t>(wc.size()), 0.0f);
    enforce_budget(wc, r);
    return finish(wc, r);
  }

  /// One refocus: `scores[i]` (in [-1, 1], one per entry) says whether entry i wants more detail
  /// (> 0) or less (< 0). Collects the legal edits, lets the policy choose, applies them in one
  /// pass, and brings evicted history back when there is room.
  ///
  /// Evicted history returns when focus asks for it: `restore_score` is the score of the newest
  /// evicted node (the runtime can show LensNet that node's gist beside the context; NaN = no
  /// request). Above the expand threshold, that node comes back before the window, paid for if
  /// needed by collapsing the least wanted sibling group whose mean score is below it.
  FocusReport step(WorkingContext<C>& wc, std::span<const float> scores,
                   float restore_score = std::numeric_limits<float>::quiet_NaN()) {
    check_context(wc);
    MC_EXPECTS(static_cast<std::int64_t>(scores.size()) == wc.size(), Errc::kInvalidArgument,
               "[mc.focus.bad_scores] got ", scores.size(), " scores for ", wc.size(),
               " entries");
    wc.begin_patch();
    FocusReport r = start_report();
    if constexpr (FocusLayoutPolicy<Policy, C>) {
      (void)restore_score;  // the layout says which history the window holds
      return layout_step(wc, scores, r);
    } else {
      return plan_step(wc, scores, restore_score, r);
    }
  }

 private:
  // A FocusPolicy's step: candidates under the rules, the policy's choice, one apply.
  FocusReport plan_step(WorkingContext<C>& wc, std::span<const float> scores, float restore_score,
                        FocusReport& r) {
    if (wc.size() > wc_opts_.w_max) {  // extended without admit(): restore the budget first
      scratch_scores_.assign(scores.begin(), scores.end());
      enforce_budget(wc, r);
      scores = scratch_scores_;
    }
    std::int32_t cap = opts_.max_edits;
    if (restore_score > opts_.expand_threshold && cap > 0 && wc.window_begin() > wc.sink_end()) {
      scratch_scores_.assign(scores.begin(), scores.end());
      if (restore_requested(wc, restore_score, r)) {
        scores = scratch_scores_;
        --cap;
      }
    }
    collect(wc, scores, /*forced=*/false);
    chosen_.clear();
    FocusPlanInput in{std::span(expansions_).first(num_expansions_), collapses_,
                      wc_opts_.w_max - wc.size(), cap, K};
    policy_.plan(in, chosen_);
    // A user policy is code we do not control: check what it chose before touching anything.
    std::int64_t net = 0;
    for (const auto& c : chosen_) net += c.edit.kind == FocusEdit::kExpand ? 1 : -1;
    MC_EXPECTS(static_cast<std::int64_t>(chosen_.size()) <= cap &&
                   net * (K - 1) <= in.free_entries,
               Errc::kState, "[mc.focus.policy_broke_rules] the policy chose ", chosen_.size(),
               " edits (max ", opts_.max_edits, ") adding ", net * (K - 1), " entries (free ",
               in.free_entries, ")");
    edits_.clear();
    for (const auto& c : chosen_) {
      edits_.push_back(c.edit);
      (c.edit.kind == FocusEdit::kExpand ? r.expansions : r.collapses)++;
    }
    std::sort(edits_.begin(), edits_.end(),
              [](const FocusEdit& a, const FocusEdit& b) { return a.pos < b.pos; });
    wc.apply(edits_, step_);
    // Evicted history returns, coarsest first, while there is room to spare (bounded per step
    // like the other edits, since each restore shifts the window).
    while (r.restores < std::max(1, cap) &&
           wc_opts_.w_max - wc.size() >= opts_.restore_headroom && wc.restore(step_))
      ++r.restores;
    return finish(wc, r);
  }

  void check_context(const WorkingContext<C>& wc) const {
    MC_EXPECTS(wc.options().w_max == wc_opts_.w_max &&
                   wc.options().sink_tokens == wc_opts_.sink_tokens,
               Errc::kInvalidArgument, "[mc.focus.context_mismatch] the working context has w_max = ",
               wc.options().w_max, ", sink_tokens = ", wc.options().sink_tokens,
               "; this allocator was made for ", wc_opts_.w_max, ", ", wc_opts_.sink_tokens);
  }

  // A layout policy's step: it names the window; every rule is checked before the context moves.
  FocusReport layout_step(WorkingContext<C>& wc, std::span<const float> scores, FocusReport& r) {
    for (std::size_t i = 0; i < scores.size(); ++i)
      if (!(scores[i] >= -1.0f && scores[i] <= 1.0f))
        throw Error(Errc::kInvalidArgument,
                    detail::concat("[mc.focus.bad_scores] score of entry ", i, " is ", scores[i],
                                   "; scores must lie in [-1, 1] (NaN is refused)"));
    layout_.clear();
    const FocusLayoutInput<C> in{&wc, scores, wc.num_tokens(), wc_opts_.w_max, wc.sink_end(),
                                 opts_.recent_tokens};
    policy_.layout(in, layout_);
    const std::int64_t recent_from = wc.num_tokens() - opts_.recent_tokens;
    const auto total = wc.sink_end() + static_cast<std::int64_t>(layout_.size());
    MC_EXPECTS(total <= wc_opts_.w_max, Errc::kState, "[mc.focus.policy_broke_rules] the layout has ",
               total, " entries with the sinks, over w_max = ", wc_opts_.w_max);
    const std::int64_t begin = layout_.empty() ? wc.num_tokens() : L::tokens(layout_.front()).begin;
    MC_EXPECTS(begin <= std::max(recent_from, wc.sink_end()), Errc::kState,
               "[mc.focus.policy_broke_rules] the layout starts at token ", begin,
               ", after the newest recent_tokens (from ", recent_from, ")");
    for (const Node& x : layout_)
      MC_EXPECTS(x.lod == 0 || L::tokens(x).end <= recent_from, Errc::kState,
                 "[mc.focus.policy_broke_rules] the layout shows recent tokens [",
                 L::tokens(x).begin, ", ", L::tokens(x).end, ") at lod ", x.lod);
    wc.assign_window(layout_, step_);  // checks the tiling itself
    return finish(wc, r);
  }

  FocusReport start_report() const {
    FocusReport r;
    r.step = step_;
    r.w_max = wc_opts_.w_max;
    return r;
  }

  // Gathers legal expansions and collapse groups. Not forced: thresholds and cooldown apply.
  // Forced (budget restore): every unprotected complete group is a candidate, cooldown ignored.
  // This is the allocator's hot path. One SIMD pass over the scores and the entry flags builds
  // bit masks (detail::scan_scores); the scalar work then visits only gists above the expand
  // threshold and the starts of sibling groups, and sums a group's scores only when no sibling
  // vetoes it and enough siblings are negative for its mean to fall below the threshold.
  void collect(const WorkingContext<C>& wc, std::span<const float> scores, bool forced) {
    num_expansions_ = 0;
    collapses_.clear();
    const std::int64_t n = wc.size();
    const float hi = opts_.expand_threshold, lo = opts_.collapse_threshold;
    // Every score is checked, protected ones too: a NaN anywhere means a broken scorer.
    if (!detail::scan_scores(scores.data(), wc.entry_flags().data(), n, hi, masks_)) {
      for (std::int64_t i = 0; i < n; ++i) {
        const float x = scores[static_cast<std::size_t>(i)];
        if (!(x >= -1.0f && x <= 1.0f))
          throw Error(Errc::kInvalidArgument,
                      detail::concat("[mc.focus.bad_scores] score of entry ", i, " is ", x,
                                     "; scores must lie in [-1, 1] (NaN is refused)"));
      }
    }
    // Entries from `protect_pos` on overlap the newest recent_tokens. Span ends grow with the
    // position after the sinks, so it is the first one there that ends past protect_from.
    const std::int64_t protect_from = wc.num_tokens() - opts_.recent_tokens;
    const std::int64_t first = wc.first_window_pos();
    std::int64_t protect_pos = first, past = n;
    while (protect_pos < past) {
      const std::int64_t mid = protect_pos + (past - protect_pos) / 2;
      if (wc.span(mid).end > protect_from) past = mid;
      else protect_pos = mid + 1;
    }
    const std::int32_t cooled = step_ - opts_.cooldown_steps;  // changed_at <= cooled: eligible
    const WcEntry* entries = wc.entries().data();
    const float* sc = scores.data();
    const std::uint64_t* above = masks_.above.data();
    if (!forced) {
      if (expansions_.size() < static_cast<std::size_t>(n)) expansions_.resize(static_cast<std::size_t>(n));
      const std::uint64_t* gist = masks_.gist.data();
      detail::for_each_bit(first, protect_pos, [&](std::size_t w) { return above[w] & gist[w]; },
                           [&](std::int64_t i) {
                             // Written in place into a buffer that only grows: push_back
                             // (a call per candidate, plus a store-forwarding stall on the
                             // copied temporary) cost 4x the whole pass with ~800 of them.
                             FocusCandidate& c = expansions_[num_expansions_];
                             c.score = sc[i];
                             c.edit = {FocusEdit::kExpand, i};
                             num_expansions_ += entries[i].changed_at <= cooled;
                           });
    }
    // A collapse group (kWcGroupStart, see WorkingContext::can_collapse) must be unprotected.
    // First the groups worth summing, without branches on the data (their outcome is noise to
    // the branch predictor): no sibling above the expand threshold (which vetoes the collapse
    // and keeps collapse groups disjoint from expansion candidates) and enough negative scores
    // for the mean to fall below the collapse threshold (see min_negative_).
    const std::uint64_t* group = masks_.group.data();
    const std::uint64_t* negative = masks_.negative.data();
    group_pos_.resize(static_cast<std::size_t>(n / K + 2));
    std::int64_t* out = group_pos_.data();
    std::size_t kept = 0;
    if constexpr (K <= 64) {
      if (!forced)
        kept = detail::filter_groups<K>(group, above, negative, first, protect_pos - K + 1,
                                        min_negative_, out);
    }
    if (forced || K > 64) {
      detail::for_each_bit(first, protect_pos - K + 1, [&](std::size_t w) { return group[w]; },
                           [&](std::int64_t i) {
                             out[kept] = i;
                             kept += forced || (!detail::any_bit(above, i, i + K) &&
                                                detail::count_bits(negative, i, i + K) >=
                                                    min_negative_);
                           });
    }
    for (std::size_t g = 0; g < kept; ++g) {
      const std::int64_t i = out[g];
      float sum = 0;
      for (std::int64_t j = i; j < i + K; ++j) sum += sc[j];
      const float mean = sum / static_cast<float>(K);
      if (!forced) {
        if (!(mean < lo)) continue;
        bool cool = true;
        for (std::int64_t j = i; j < i + K; ++j) cool = cool && entries[j].changed_at <= cooled;
        if (!cool) continue;
      }
      FocusCandidate& c = collapses_.emplace_back();
      c.score = mean;
      c.edit = {FocusEdit::kCollapse, i};
    }
  }

  void enforce_budget(WorkingContext<C>& wc, FocusReport& r) {
    while (wc.size() > wc_opts_.w_max) {
      collect(wc, scratch_scores_, /*forced=*/true);
      if (collapses_.empty()) {
        // Nothing left to collapse: the oldest history leaves the window (it stays in the tree).
        while (wc.size() > wc_opts_.w_max && wc.evict_oldest()) {
          ++r.evictions;
          scratch_scores_.erase(scratch_scores_.begin() + wc.first_window_pos());
        }
        MC_EXPECTS(wc.size() <= wc_opts_.w_max, Errc::kState,
                   "[mc.focus.over_budget] cannot bring ", wc.size(), " entries under w_max = ",
                   wc_opts_.w_max);
        break;
      }
      // Least wanted first; take just enough to fit.
      std::sort(collapses_.begin(), collapses_.end(), [](const auto& a, const auto& b) {
        return a.score != b.score ? a.score < b.score : a.edit.pos < b.edit.pos;
      });
      const std::int64_t over = wc.size() - wc_opts_.w_max;
      const auto take = static_cast<std::size_t>(
          std::min<std::int64_t>((over + K - 2) / (K - 1), static_cast<std::int64_t>(collapses_.size())));
      edits_.clear();
      for (std::size_t i = 0; i < take; ++i) edits_.push_back(collapses_[i].edit);
      std::sort(edits_.begin(), edits_.end(),
                [](const FocusEdit& a, const FocusEdit& b) { return a.pos < b.pos; });
      // Scores follow their entries: a collapsed group keeps its mean.
      rebuild_scores(edits_);
      wc.apply(edits_, step_);
      r.forced_collapses += static_cast<std::int32_t>(take);
    }
  }

  // Restores the newest evicted node for a request scored `want`, collapsing the least wanted
  // cool group first when the context is full. Keeps scratch_scores_ aligned with the entries.
  bool restore_requested(WorkingContext<C>& wc, float want, FocusReport& r) {
    if (wc.size() >= wc_opts_.w_max) {
      collect(wc, scratch_scores_, /*forced=*/true);
      const std::int32_t cooled = step_ - opts_.cooldown_steps;
      const FocusCandidate* best = nullptr;
      for (const auto& c : collapses_) {
        bool cool = true;
        for (std::int64_t j = c.edit.pos; j < c.edit.pos + K; ++j)
          cool = cool && wc[j].changed_at <= cooled;
        if (cool && c.score < want && (!best || c.score < best->score)) best = &c;
      }
      if (!best) return false;
      const FocusEdit e = best->edit;
      rebuild_scores(std::span(&e, 1));
      wc.apply(std::span(&e, 1), step_);
      ++r.collapses;
    }
    if (!wc.restore(step_)) return false;
    scratch_scores_.insert(scratch_scores_.begin() + wc.first_window_pos(), want);
    ++r.restores;
    return true;
  }

  void rebuild_scores(std::span<const FocusEdit> edits) {
    std::vector<float>& out = score_tmp_;
    out.clear();
    std::int64_t src = 0;
    for (const FocusEdit& e : edits) {
      out.insert(out.end(), scratch_scores_.begin() + src, scratch_scores_.begin() + e.pos);
      float sum = 0;
      for (std::int64_t j = e.pos; j < e.pos + K; ++j) sum += scratch_scores_[static_cast<std::size_t>(j)];
      out.push_back(sum / static_cast<float>(K));
      src = e.pos + K;
    }
    out.insert(out.end(), scratch_scores_.begin() + src, scratch_scores_.end());
    scratch_scores_.swap(out);
  }

  FocusReport finish(const WorkingContext<C>& wc, FocusReport& r) {
    r.size = wc.size();
    r.budget_use = static_cast<double>(r.size) / static_cast<double>(wc_opts_.w_max);
    r.fresh_entries = wc.fresh_entries();
    r.swap_rate = r.size > 0 ? static_cast<double>(r.fresh_entries) / static_cast<double>(r.size) : 0;
    if (opts_.residency_stats && r.size > 0) {
      residency_.resize(static_cast<std::size_t>(r.size));
      double sum = 0;
      for (std::int64_t i = 0; i < r.size; ++i) {
        const auto age = static_cast<std::int32_t>(step_ - wc[i].changed_at);
        residency_[static_cast<std::size_t>(i)] = age;
        sum += age;
      }
      r.residency_mean = sum / static_cast<double>(r.size);
      const auto k = static_cast<std::size_t>(std::ceil(0.95 * static_cast<double>(r.size))) - 1;
      std::nth_element(residency_.begin(), residency_.begin() + static_cast<std::ptrdiff_t>(k),
                       residency_.end());
      r.residency_p95 = residency_[k];
    }
    ++step_;
    return r;
  }

  FocusOptions opts_;
  WorkingContextOptions wc_opts_;
  Policy policy_;
  std::int32_t step_ = 1;
  std::vector<FocusCandidate> expansions_, collapses_, chosen_;
  std::size_t num_expansions_ = 0;  // expansions_[0, num_expansions_) are this step's candidates
  std::vector<FocusEdit> edits_;
  std::vector<float> scratch_scores_, score_tmp_;
  std::vector<std::int32_t> residency_;
  detail::FocusMasks masks_;
  std::vector<Node> layout_;
  std::vector<std::int64_t> group_pos_;  // collect(): collapse groups that passed the filters
  int min_negative_ = 0;  // fewest negative scores a group needs to be worth summing
};

}  // namespace mc
