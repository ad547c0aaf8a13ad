#include "cpu/qgemm_cpu.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/dtype.h"
#include "core/status.h"
#include "cpu/isa.h"
#include "cpu/simd.h"

#ifndef FASTLM_INLINE  // simd.h defines it on x86 only
#define FASTLM_INLINE inline
#endif

namespace fastlm::cpu {

namespace {

constexpr int kQK = 32;  // elements per activation block (and per legacy weight block)

// One activation block of 32 elements as int16: x ~= d * q with d = amax / 32767, so the
// integer products carry 16 bits of each activation (finer than bf16's 8; int8 activations,
// amax / 127, cost 0.002 of logits cosine on the default model). s4 = {0, d * sum(q), 0, 0}:
// lane 1 is the factor of a weight block's minimum, lined up with the {dw, mw} scale pair.
struct alignas(32) XBlock {
  int16_t q[kQK];
  float d;
  float s4[4];
};

// x rows -> activation blocks. Scalar on purpose: the same code on every ISA path, so the
// quantized activations (and hence the integer products) never depend on the path.
void quantize_x_row(const float* x, XBlock* out, int64_t nb) {
  for (int64_t b = 0; b < nb; ++b) {
    const float* v = x + b * kQK;
    float amax = 0.0f;
    for (int j = 0; j < kQK; ++j) amax = std::max(amax, std::fabs(v[j]));
    const float d = amax / 32767.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    int sum = 0;
    for (int j = 0; j < kQK; ++j) {
      const int q = static_cast<int>(std::clamp(std::nearbyint(v[j] * id), -32767.0f, 32767.0f));
      out[b].q[j] = static_cast<int16_t>(q);
      sum += q;
    }
    out[b].d = d;
    out[b].s4[0] = out[b].s4[2] = out[b].s4[3] = 0.0f;
    out[b].s4[1] = d * static_cast<float>(sum);
  }
}

// f16 -> f32 is exact, so the F16C instruction and the portable conversion agree bit for bit.
FASTLM_INLINE float half(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
#if defined(__F16C__)
  return _cvtsh_ss(h);
#else
  return f16_to_f32(h);
#endif
}

// ---- weight block formats, seen one 32-element block at a time ----
// Each provides kSigned (values are int8, else u8 with a block minimum: w = d * q + m), kMin,
// scales(row, b, &d, &m), values_scalar(row, b, q[32]) and, on x86, values(row, b) -> 32 bytes;
// formats with a faster way provide scales4(row, b) -> {d, m, 0, 0} and values16(row, b, &lo,
// &hi) (elements 0..15 and 16..31 as int16), which scales4<F> / values16<F> fall back to.

// The 4-bit nibbles of 16 bytes: elements 0..15 low, 16..31 high.
inline void nibbles_scalar(const uint8_t* qs, uint8_t* q) {
  for (int j = 0; j < 16; ++j) {
    q[j] = qs[j] & 0x0f;
    q[j + 16] = qs[j] >> 4;
  }
}
// Bit j of the 32-bit mask qh as 0x10 in byte j.
inline void high_bits_scalar(const uint8_t* qh, uint8_t* q) {
  uint32_t bits;
  std::memcpy(&bits, qh, 4);
  for (int j = 0; j < 32; ++j) q[j] |= ((bits >> j) & 1u) << 4;
}

#if defined(__x86_64__)
FASTLM_INLINE __m256i nibbles(const uint8_t* qs) {
  const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
  return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(v, 4), v), _mm256_set1_epi8(0x0f));
}
FASTLM_INLINE __m256i high_bits(const uint8_t* qh) {
  uint32_t bits;
  std::memcpy(&bits, qh, 4);
  // Byte j takes byte j / 8 of the mask, keeps bit j % 8, and becomes 0x10 where it is set.
  __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32(static_cast<int>(bits)),
                                  _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202,
                                                    0x0101010101010101, 0x0000000000000000));
  const __m256i sel = _mm256_set1_epi64x(static_cast<int64_t>(0x8040201008040201ull));
  v = _mm256_cmpeq_epi8(_mm256_and_si256(v, sel), sel);
  return _mm256_and_si256(v, _mm256_set1_epi8(0x10));
}
FASTLM_INLINE __m128 scale_pair(float d, float m) { return _mm_setr_ps(d, m, 0.0f, 0.0f); }
// {h0, h1, 0, 0} from two adjacent f16 values (vcvtph2ps is exact, as half()).
FASTLM_INLINE __m128 half_pair(const uint8_t* p) {
  uint32_t u;
  std::memcpy(&u, p, 4);
  return _mm_cvtph_ps(_mm_cvtsi32_si128(static_cast<int>(u)));
}
// {h, m * h, 0, 0} for the formats whose minimum is a fixed multiple of the scale (exact: m is
// a power of two).
FASTLM_INLINE __m128 half_times(const uint8_t* p, float m) {
  uint16_t u;
  std::memcpy(&u, p, 2);
  const __m128 h = _mm_cvtph_ps(_mm_cvtsi32_si128(u));
  return _mm_mul_ps(_mm_broadcastss_ps(h), _mm_setr_ps(1.0f, m, 0.0f, 0.0f));
}
FASTLM_INLINE void widen_u8(__m256i v, __m256i* lo, __m256i* hi) {
  *lo = _mm256_cvtepu8_epi16(_mm256_castsi256_si128(v));
  *hi = _mm256_cvtepu8_epi16(_mm256_extracti128_si256(v, 1));
}
FASTLM_INLINE void widen_i8(__m256i v, __m256i* lo, __m256i* hi) {
  *lo = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(v));
  *hi = _mm256_cvtepi8_epi16(_mm256_extracti128_si256(v, 1));
}
// 16 bytes of nibbles -> elements 0..15 (low nibbles) and 16..31 (high) as int16.
FASTLM_INLINE void nibbles16(const uint8_t* qs, __m256i* lo, __m256i* hi) {
  const __m256i v = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(qs)));
  *lo = _mm256_and_si256(v, _mm256_set1_epi16(0x0f));
  *hi = _mm256_srli_epi16(v, 4);
}
#endif

struct FmtQ4_0 {
  static constexpr bool kSigned = false, kMin = true, kHalfScales = false;
  static constexpr size_t kBytes = 18;
  static constexpr int64_t kPer = 1;  // 32-blocks per stored block
  static FASTLM_INLINE void scales(const uint8_t* row, int64_t b, float* d, float* m) {
    *d = half(row + b * kBytes);
    *m = -8.0f * *d;
  }
  static void values_scalar(const uint8_t* row, int64_t b, uint8_t* q) {
    nibbles_scalar(row + b * kBytes + 2, q);
  }
#if defined(__x86_64__)
  static FASTLM_INLINE __m128 scales4(const uint8_t* row, int64_t b) {
    return half_times(row + b * kBytes, -8.0f);
  }
  static FASTLM_INLINE void values16(const uint8_t* row, int64_t b, __m256i* lo, __m256i* hi) {
    nibbles16(row + b * kBytes + 2, lo, hi);
  }
#endif
};

struct FmtQ4_1 {
  static constexpr bool kSigned = false, kMin = true, kHalfScales = false;
  static constexpr size_t kBytes = 20;
  static constexpr int64_t kPer = 1;  // 32-blocks per stored block
  static FASTLM_INLINE void scales(const uint8_t* row, int64_t b, float* d, float* m) {
    *d = half(row + b * kBytes);
    *m = half(row + b * kBytes + 2);
  }
  static void values_scalar(const uint8_t* row, int64_t b, uint8_t* q) {
    nibbles_scalar(row + b * kBytes + 4, q);
  }
#if defined(__x86_64__)
  static FASTLM_INLINE __m128 scales4(const uint8_t* row, int64_t b) {
    return half_pair(row + b * kBytes);
  }
  static FASTLM_INLINE void values16(const uint8_t* row, int64_t b, __m256i* lo, __m256i* hi) {
    nibbles16(row + b * kBytes + 4, lo, hi);
  }
#endif
};

struct FmtQ5_0 {
  static constexpr bool kSigned = false, kMin = true, kHalfScales = false;
  static constexpr size_t kBytes = 22;
  static constexpr int64_t kPer = 1;  // 32-blocks per stored block
  static FASTLM_INLINE void scales(const uint8_t* row, int64_t b, float* d, float* m) {
    *d = half(row + b * kBytes);
    *m = -16.0f * *d;
  }
  static void values_scalar(const uint8_t* row, int64_t b, uint8_t* q) {
    nibbles_scalar(row + b * kBytes + 6, q);
    high_bits_scalar(row + b * kBytes + 2, q);
  }
#if defined(__x86_64__)
  static FASTLM_INLINE __m256i values(const uint8_t* row, int64_t b) {
    return _mm256_or_si256(nibbles(row + b * kBytes + 6), high_bits(row + b * kBytes + 2));
  }
  static FASTLM_INLINE __m128 scales4(const uint8_t* row, int64_t b) {
    return half_times(row + b * kBytes, -16.0f);
  }
#endif
};

struct FmtQ5_1 {
  static constexpr bool kSigned = false, kMin = true, kHalfScales = false;
  static constexpr size_t kBytes = 24;
  static constexpr int64_t kPer = 1;  // 32-blocks per stored block
  static FASTLM_INLINE void scales(const uint8_t* row, int64_t b, float* d, float* m) {
    *d = half(row + b * kBytes);
    *m = half(row + b * kBytes + 2);
  }
  static void values_scalar(const uint8_t* row, int64_t b, uint8_t* q) {
    nibbles_scalar(row + b * kBytes + 8, q);
    high_bits_scalar(row + b * kBytes + 4, q);
  }
#if defined(__x86_64__)
  static FASTLM_INLINE __m256i values(const uint8_t* row, int64_t b) {
    return _mm256_or_si256(nibbles(row + b * kBytes + 8), high_bits(row + b * kBytes + 4));
  }
  static FASTLM_INLINE __m128 scales4(const uint8_t* row, int64_t b) {
    return half_pair(row + b * kBytes);
  }
#endif
};

struct FmtQ8_0 {
  static constexpr bool kSigned = true, kMin = false, kHalfScales = false;
  static constexpr size_t kBytes = 34;
  static constexpr int64_t kPer = 1;  // 32-blocks per stored block
  static FASTLM_INLINE void scales(const uint8_t* row, int64_t b, float* d, float* m) {
    *d = half(row + b * kBytes);
    *m = 0.0f;
  }
  static void values_scalar(const uint8_t* row, int64_t b, uint8_t* q) {
    std::memcpy(q, row + b * kBytes + 2, kQK);
  }
#if defined(__x86_64__)
  static FASTLM_INLINE __m256i values(const uint8_t* row, int64_t b) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + b * kBytes + 2));
  }
  static FASTLM_INLINE __m128 scales4(const uint8_t* row, int64_t b) {
    return half_times(row + b * kBytes, 0.0f);
  }
  static FASTLM_INLINE void values16(const uint8_t* row, int64_t b, __m256i* lo, __m256i* hi) {
    const auto* q = reinterpret_cast<const __m128i*>(row + b * kBytes + 2);
    *lo = _mm256_cvtepi8_epi16(_mm_loadu_si128(q));
    *hi = _mm256_cvtepi8_epi16(_mm_loadu_si128(q + 1));
  }
#endif
};

// K-quant super-blocks of 256 hold 8 sub-blocks of 32, each with a 6-bit scale and minimum
// (packed 8 pairs in 12 bytes): w = d * sc * q - dmin * mn.
FASTLM_INLINE void k_scales(const uint8_t* sb, int j, float* d, float* m) {
  const uint8_t* s = sb + 4;
  int sc, mn;
  if (j < 4) {
    sc = s[j] & 63;
    mn = s[j + 4] & 63;
  } else {
    sc = (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4);
    mn = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
  *d = half(sb) * static_cast<float>(sc);
  *m = -half(sb + 2) * static_cast<float>(mn);
}

struct FmtQ4_K {
  static constexpr bool kSigned = false, kMin = true, kHalfScales = false;
  static constexpr size_t kBytes = 144;
  static constexpr int64_t kPer = 8;  // 32-blocks per stored block
  static FASTLM_INLINE void scales(const uint8_t* row, int64_t b, float* d, float* m) {
    k_scales(row + (b / 8) * kBytes, static_cast<int>(b % 8), d, m);
  }
  // Sub-blocks 2i and 2i+1 are the low and high nibbles of the same 32 bytes.
  static void values_scalar(const uint8_t* row, int64_t b, uint8_t* q) {
    const uint8_t* qs = row + (b / 8) * kBytes + 16 + (b % 8) / 2 * 32;
    const int shift = (b % 2) * 4;
    for (int j = 0; j < kQK; ++j) q[j] = (qs[j] >> shift) & 0x0f;
  }
#if defined(__x86_64__)
  static FASTLM_INLINE __m256i values(const uint8_t* row, int64_t b) {
    const uint8_t* qs = row + (b / 8) * kBytes + 16 + (b % 8) / 2 * 32;
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qs));
    return _mm256_and_si256(_mm256_srl_epi16(v, _mm_cvtsi32_si128(static_cast<int>(b % 2) * 4)),
                            _mm256_set1_epi8(0x0f));
  }
#endif
};

struct FmtQ5_K {
  static constexpr bool kSigned = false, kMin = true, kHalfScales = false;
  static constexpr size_t kBytes = 176;
  static constexpr int64_t kPer = 8;  // 32-blocks per stored block
  static FASTLM_INLINE void scales(const uint8_t* row, int64_t b, float* d, float* m) {
    k_scales(row + (b / 8) * kBytes, static_cast<int>(b % 8), d, m);
  }
  // As Q4_K, plus bit (b % 8) of qh[j] as the fifth bit of element j.
  static void values_scalar(const uint8_t* row, int64_t b, uint8_t* q) {
    const uint8_t* sb = row + (b / 8) * kBytes;
    const uint8_t* qs = sb + 48 + (b % 8) / 2 * 32;
    const int shift = (b % 2) * 4, bit = static_cast<int>(b % 8);
    for (int j = 0; j < kQK; ++j)
      q[j] = ((qs[j] >> shift) & 0x0f) | (((sb[16 + j] >> bit) & 1) << 4);
  }
#if defined(__x86_64__)
  static FASTLM_INLINE __m256i values(const uint8_t* row, int64_t b) {
    const uint8_t* sb = row + (b / 8) * kBytes;
    const __m256i v =
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(sb + 48 + (b % 8) / 2 * 32));
    const __m256i lo =
        _mm256_and_si256(_mm256_srl_epi16(v, _mm_cvtsi32_si128(static_cast<int>(b % 2) * 4)),
                         _mm256_set1_epi8(0x0f));
    const __m256i bit = _mm256_set1_epi8(static_cast<char>(1 << (b % 8)));
    const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(sb + 16));
    const __m256i hi =
        _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(qh, bit), bit), _mm256_set1_epi8(0x10));
    return _mm256_or_si256(lo, hi);
  }
#endif
};

// Q6_K {u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d}: 6-bit values q - 32 (signed, no minimum)
// with one scale per 16 elements, so a 32-block has two: `scales` returns d * sc for elements
// 0..15 in *d and for 16..31 in *m (kHalfScales).
// Sub-block j = 4h + g of a super-block: low bits from ql[64h + 32(g & 1) ..] (nibble g >> 1),
// high two bits from qh[32h ..] >> 2g, scales sc[8h + 2g], sc[8h + 2g + 1].
struct FmtQ6_K {
  static constexpr bool kSigned = true, kMin = false, kHalfScales = true;
  static constexpr size_t kBytes = 210;
  static constexpr int64_t kPer = 8;  // 32-blocks per stored block
  static FASTLM_INLINE void scales(const uint8_t* row, int64_t b, float* d, float* m) {
    const uint8_t* sb = row + (b / 8) * kBytes;
    const int j = static_cast<int>(b % 8);
    const auto* sc = reinterpret_cast<const int8_t*>(sb + 192) + 8 * (j / 4) + 2 * (j % 4);
    const float dd = half(sb + 208);
    *d = dd * static_cast<float>(sc[0]);
    *m = dd * static_cast<float>(sc[1]);
  }
  static void values_scalar(const uint8_t* row, int64_t b, uint8_t* q) {
    const uint8_t* sb = row + (b / 8) * kBytes;
    const int j = static_cast<int>(b % 8), h = j / 4, g = j % 4;
    const uint8_t* ql = sb + 64 * h + 32 * (g & 1);
    const uint8_t* qh = sb + 128 + 32 * h;
    for (int l = 0; l < kQK; ++l) {
      const int v = ((ql[l] >> (4 * (g >> 1))) & 0x0f) | (((qh[l] >> (2 * g)) & 3) << 4);
      q[l] = static_cast<uint8_t>(static_cast<int8_t>(v - 32));
    }
  }
#if defined(__x86_64__)
  static FASTLM_INLINE __m256i values(const uint8_t* row, int64_t b) {
    const uint8_t* sb = row + (b / 8) * kBytes;
    const int j = static_cast<int>(b % 8), h = j / 4, g = j % 4;
    const __m256i ql =
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(sb + 64 * h + 32 * (g & 1)));
    const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(sb + 128 + 32 * h));
    const __m256i lo = _mm256_and_si256(_mm256_srl_epi16(ql, _mm_cvtsi32_si128(4 * (g >> 1))),
                                        _mm256_set1_epi8(0x0f));
    const __m256i hi = _mm256_slli_epi16(
        _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * g)), _mm256_set1_epi8(3)), 4);
    return _mm256_sub_epi8(_mm256_or_si256(lo, hi), _mm256_set1_epi8(32));
  }
#endif
};

#if defined(__x86_64__)
template <class F>
FASTLM_INLINE __m128 scales4(const uint8_t* row, int64_t b) {
  if constexpr (requires { F::scales4(row, b); }) {
    return F::scales4(row, b);
  } else {
    float d, m;
    F::scales(row, b, &d, &m);
    return scale_pair(d, m);
  }
}
template <class F>
FASTLM_INLINE void values16(const uint8_t* row, int64_t b, __m256i* lo, __m256i* hi) {
  if constexpr (requires { F::values16(row, b, lo, hi); }) {
    F::values16(row, b, lo, hi);
  } else if constexpr (F::kSigned) {
    widen_i8(F::values(row, b), lo, hi);
  } else {
    widen_u8(F::values(row, b), lo, hi);
  }
}
#endif

// ---- portable path: the documented order, lane by lane ----
template <class F>
void qcols_scalar(const XBlock* x, int64_t ldx, int64_t m, const uint8_t* w, size_t row_bytes,
                  int64_t nb, const float* bias, float* y, int64_t ldy, int64_t n0, int64_t n1) {
  uint8_t q[kQK];
  for (int64_t c = n0; c < n1; ++c) {
    const uint8_t* row = w + c * row_bytes;
    for (int64_t r = 0; r < m; ++r) {
      float acc[8] = {};
      float summ = 0.0f;
      for (int64_t b = 0; b < nb; ++b) {
        float dw, mw;
        F::scales(row, b, &dw, &mw);
        F::values_scalar(row, b, q);
        const XBlock& xb = x[r * ldx + b];
        const auto wv = [&](int t) {
          return F::kSigned ? static_cast<int>(static_cast<int8_t>(q[t])) : static_cast<int>(q[t]);
        };
        for (int l = 0; l < 8; ++l) {
          // Lane l: elements 2l, 2l + 1 of each half.
          const int32_t lo = wv(2 * l) * xb.q[2 * l] + wv(2 * l + 1) * xb.q[2 * l + 1];
          const int32_t hi = wv(16 + 2 * l) * xb.q[16 + 2 * l] + wv(17 + 2 * l) * xb.q[17 + 2 * l];
          if (F::kHalfScales) {
            acc[l] = std::fma(dw * xb.d, static_cast<float>(lo), acc[l]);
            acc[l] = std::fma(mw * xb.d, static_cast<float>(hi), acc[l]);
          } else {
            acc[l] = std::fma(dw * xb.d, static_cast<float>(lo + hi), acc[l]);
          }
        }
        if (F::kMin) summ = std::fma(mw, xb.s4[1], summ);
      }
      const float s =
          ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
      y[r * ldy + c] = s + summ + (bias ? bias[c] : 0.0f);
    }
  }
}

// A tile: y[r * ldy + c] for MR rows of x and `cols` weight rows (a multiple of NR).
using QTileFn = void (*)(const XBlock* x, int64_t ldx, const uint8_t* w, size_t row_bytes,
                         int64_t nb, const float* bias, float* y, int64_t ldy, int64_t cols);
constexpr int kMaxMR = 4;

#if defined(__x86_64__)
// Tiles prefetch the weight rows this many rows ahead (two tiles of 4 at decode): without it the
// Q8_0 lm_head streamed at ~2 GB/s on the EPYC, with it 2.5x faster.
constexpr int64_t kAhead = 8;

namespace avx2 {
FASTLM_INLINE __m256i dot(__m256i w, __m256i x) { return _mm256_madd_epi16(w, x); }
FASTLM_INLINE __m256i dot2(__m256i wl, __m256i xl, __m256i wh, __m256i xh) {
  return _mm256_add_epi32(_mm256_madd_epi16(wl, xl), _mm256_madd_epi16(wh, xh));
}
#define FASTLM_QTILE_TARGET
#include "cpu/qgemm_tile.h"
#undef FASTLM_QTILE_TARGET
}  // namespace avx2

// vpdpwssd on 256-bit registers (AVX512-VNNI + VL): the same exact int32 lanes as madd + add,
// hence the same floats as the AVX2 path, bit for bit.
namespace vnni {
#define FASTLM_QTILE_TARGET __attribute__((target("avx512f,avx512vl,avx512vnni")))
FASTLM_QTILE_TARGET FASTLM_INLINE __m256i dot(__m256i w, __m256i x) {
  return _mm256_dpwssd_epi32(_mm256_setzero_si256(), w, x);
}
FASTLM_QTILE_TARGET FASTLM_INLINE __m256i dot2(__m256i wl, __m256i xl, __m256i wh, __m256i xh) {
  return _mm256_dpwssd_epi32(_mm256_dpwssd_epi32(_mm256_setzero_si256(), wl, xl), wh, xh);
}
#include "cpu/qgemm_tile.h"
#undef FASTLM_QTILE_TARGET
}  // namespace vnni

// Tiles per MR: the wide one (NR columns a pass) and the one-column remainder.
struct QTiles {
  QTileFn wide;
  int nr;
  QTileFn one;
};
using QTileTable = QTiles[kMaxMR];
#define FASTLM_QROW(ns, F, mr, nr) {&ns::qtile<F, mr, nr>, nr, &ns::qtile<F, mr, 1>}
#define FASTLM_QTABLE(ns, F)                                                     \
  {FASTLM_QROW(ns, F, 1, 4), FASTLM_QROW(ns, F, 2, 4), FASTLM_QROW(ns, F, 3, 2), \
   FASTLM_QROW(ns, F, 4, 2)}

template <class F>
const QTileTable* tiles(bool vnni) {
  static constexpr QTileTable kAvx2 = FASTLM_QTABLE(avx2, F);
  static constexpr QTileTable kVnni = FASTLM_QTABLE(vnni, F);
  return vnni ? &kVnni : &kAvx2;
}
#undef FASTLM_QTABLE
#undef FASTLM_QROW

bool cpu_has_vnni() {
  static const bool has =
      __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vl");
  return has;
}
#endif

enum class Path { kScalar, kAvx2, kVnni };

Path pick_path() {
  switch (active_isa()) {
    case Isa::kAvx512Bf16:
    case Isa::kAvx512:
#if defined(__x86_64__)
      if (cpu_has_vnni()) return Path::kVnni;
#endif
      [[fallthrough]];
    case Isa::kAvx2:
#if defined(__x86_64__)
      return Path::kAvx2;
#endif
      [[fallthrough]];
    case Isa::kScalar:
      return Path::kScalar;
  }
  return Path::kScalar;
}

// Bytes of packed weight rows per cache block of the tiled path (stays in L2 while every tile
// of x rows passes over it).
constexpr int64_t kBlockBytes = 96 << 10;
// Up to this many rows of x run as one pass over the weights (decode and small batches).
constexpr int64_t kStreamRows = kMaxMR;

template <class F>
void run_cols(Path path, const XBlock* x, int64_t ldx, int64_t m, const uint8_t* w,
              size_t row_bytes, int64_t nb, const float* bias, float* y, int64_t n, int64_t n0,
              int64_t n1) {
  if (path == Path::kScalar)
    return qcols_scalar<F>(x, ldx, m, w, row_bytes, nb, bias, y, n, n0, n1);
#if defined(__x86_64__)
  const QTileTable& t = *tiles<F>(path == Path::kVnni);
  const auto span = [&](int64_t mr, int64_t m0, int64_t c0, int64_t c1) {
    const QTiles& tt = t[mr - 1];
    const int64_t full = (c1 - c0) / tt.nr * tt.nr;
    if (full > 0)
      tt.wide(x + m0 * ldx, ldx, w + c0 * row_bytes, row_bytes, nb, bias ? bias + c0 : nullptr,
              y + m0 * n + c0, n, full);
    if (c0 + full < c1)
      tt.one(x + m0 * ldx, ldx, w + (c0 + full) * row_bytes, row_bytes, nb,
             bias ? bias + c0 + full : nullptr, y + m0 * n + c0 + full, n, c1 - c0 - full);
  };
  if (m <= kStreamRows) return span(m, 0, n0, n1);
  const int64_t block = std::max<int64_t>(4, kBlockBytes / static_cast<int64_t>(row_bytes) / 4 * 4);
  for (int64_t c = n0; c < n1; c += block) {
    const int64_t ce = std::min(n1, c + block);
    for (int64_t m0 = 0; m0 < m;) {
      const int64_t left = m - m0;
      // The last two tiles share the rows evenly (6 = 3 + 3, not 4 + 2).
      const int64_t mr =
          left > kMaxMR && left < 2 * kMaxMR ? (left + 1) / 2 : std::min<int64_t>(kMaxMR, left);
      span(mr, m0, c, ce);
      m0 += mr;
    }
  }
#endif
}

using RunFn = void (*)(Path, const XBlock*, int64_t, int64_t, const uint8_t*, size_t, int64_t,
                       const float*, float*, int64_t, int64_t, int64_t);

RunFn runner(QType type) {
  switch (type) {
    case QType::kQ4_0:
      return &run_cols<FmtQ4_0>;
    case QType::kQ4_1:
      return &run_cols<FmtQ4_1>;
    case QType::kQ5_0:
      return &run_cols<FmtQ5_0>;
    case QType::kQ5_1:
      return &run_cols<FmtQ5_1>;
    case QType::kQ8_0:
      return &run_cols<FmtQ8_0>;
    case QType::kQ4_K:
      return &run_cols<FmtQ4_K>;
    case QType::kQ5_K:
      return &run_cols<FmtQ5_K>;
    case QType::kQ6_K:
      return &run_cols<FmtQ6_K>;
  }
  return nullptr;
}

int64_t round_up(int64_t v, int64_t to) { return (v + to - 1) / to * to; }

}  // namespace

bool qgemm_supports(QType type) { return runner(type) != nullptr; }

const char* qgemm_path() {
  switch (pick_path()) {
    case Path::kScalar:
      return "scalar";
    case Path::kAvx2:
      return "avx2";
    case Path::kVnni:
      return "vnni";
  }
  return "?";
}

void qgemm(const float* x, const void* w, QType type, const float* bias, float* y, int64_t m,
           int64_t n, int64_t k) {
  const RunFn run = runner(type);
  FASTLM_CHECK_ARG(run != nullptr, "qgemm: no kernel for ", qtype_name(type));
  FASTLM_CHECK_ARG(k % qtype_block_elems(type) == 0, "qgemm: K = ", k, " is not a multiple of the ",
                   qtype_name(type), " block size");
  if (m == 0 || n == 0) return;
  const int64_t nb = k / kQK;
  thread_local std::vector<XBlock> xq;
  xq.resize(static_cast<size_t>(m * nb));
  XBlock* xs = xq.data();  // the thread_local names each thread's own copy inside omp
#pragma omp parallel for schedule(static) if (m * k >= (1 << 16))
  for (int64_t r = 0; r < m; ++r) quantize_x_row(x + r * k, xs + r * nb, nb);

  const Path path = pick_path();
  const auto* wb = static_cast<const uint8_t*>(w);
  const size_t row_bytes = qtype_row_bytes(type, k);
  const int threads = omp_get_max_threads();
  const int64_t work = n * static_cast<int64_t>(row_bytes) * (1 + m);
  if (threads <= 1 || work < (64 << 10))
    return run(path, xs, nb, m, wb, row_bytes, nb, bias, y, n, 0, n);
  // Threads split the weight rows (output columns) only, in multiples of 16 rows.
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num();
    const int nt = omp_get_num_threads();
    const int64_t chunk = round_up((n + nt - 1) / nt, 16);
    const int64_t begin = std::min<int64_t>(n, t * chunk);
    const int64_t end = std::min<int64_t>(n, begin + chunk);
    if (begin < end) run(path, xs, nb, m, wb, row_bytes, nb, bias, y, n, begin, end);
  }
}

}  // namespace fastlm::cpu
