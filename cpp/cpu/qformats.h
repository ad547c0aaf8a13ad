#pragma once
// The packed weight formats (core/qtype.h) seen one 32-element block at a time: one traits
// struct per layout, shared by the quantized GEMM (cpu/qgemm_cpu.cc) and the block dequantizer
// (cpu/qblocks.cc), so the bit layouts are written once.
//
// Each format F provides kSigned (values are int8, else u8 with a block minimum: w = d * q + m),
// kMin, kHalfScales (Q6_K: one scale per 16 elements, in d and m), kBytes / kPer (bytes and
// 32-blocks per stored block), scales(row, b, &d, &m) and values_scalar(row, b, q[32]) for the
// 32-block b of a row; on x86 also values16(row, b, &lo, &hi) (elements 0..15 and 16..31 as
// int16) and scales4(row, b) -> {d, m, 0, 0}, through the wrapper scales4<F> below (for the formats
// that have no faster way than scales()).
#include <cstdint>
#include <cstring>

#include "core/dtype.h"
#include "core/qtype.h"
#include "core/status.h"
#include "cpu/simd.h"

#ifndef FASTLM_INLINE  // simd.h defines it on x86 only
#define FASTLM_INLINE inline
#endif

namespace fastlm::cpu::qfmt {

constexpr int kQK = 32;  // elements per 32-block (and per legacy weight block)

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

#if defined(__x86_64__)
// The nibble formats' 32 values in "pairs" order: 16-bit lane j holds element j (the low nibble
// of qs[j]) in its low byte and element j + 16 (the high nibble) in its high byte, so the two
// halves widen inside their lanes (split_pairs). Widening 32 bytes in element order takes an
// extract and two lane-crossing vpmovsx/zx instead: Q5_0's GEMV was bound by those (Zen 3).
FASTLM_INLINE __m256i nibble_pairs(const uint8_t* qs) {
  const __m256i q = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(qs)));
  return _mm256_and_si256(_mm256_or_si256(q, _mm256_slli_epi16(q, 4)), _mm256_set1_epi16(0x0f0f));
}
// Bit j of the 32-bit qh as 0xff in byte j of pairs order (0 where clear): byte 2i of a 128-bit
// lane takes byte 0 (low lane; 1 in the high lane) of the mask, byte 2i + 1 byte 2 (3), both keep
// bit i % 8. The mask is broadcast straight from memory (one load, no vmovd + shuffle).
FASTLM_INLINE __m256i high_bit_pairs(const uint8_t* qh) {
  const __m256i bits = _mm256_broadcastd_epi32(_mm_loadu_si32(qh));
  const __m256i v =
      _mm256_shuffle_epi8(bits, _mm256_set_epi64x(0x0301030103010301, 0x0301030103010301,
                                                  0x0200020002000200, 0x0200020002000200));
  const __m256i sel = _mm256_set_epi64x(
      static_cast<int64_t>(0x8080404020201010ull), static_cast<int64_t>(0x0808040402020101ull),
      static_cast<int64_t>(0x8080404020201010ull), static_cast<int64_t>(0x0808040402020101ull));
  return _mm256_cmpeq_epi8(_mm256_and_si256(v, sel), sel);
}
// Pairs order -> int16 elements 0..15 (lo) and 16..31 (hi), zero- or sign-extended in-lane.
template <bool Signed>
FASTLM_INLINE void split_pairs(__m256i v, __m256i* lo, __m256i* hi) {
  if constexpr (Signed) {
    *lo = _mm256_srai_epi16(_mm256_slli_epi16(v, 8), 8);
    *hi = _mm256_srai_epi16(v, 8);
  } else {
    *lo = _mm256_and_si256(v, _mm256_set1_epi16(0x00ff));
    *hi = _mm256_srli_epi16(v, 8);
  }
}
// {h0, h1, 0, 0} from two adjacent f16 values (vcvtph2ps is exact, as half()).
FASTLM_INLINE __m128 half_pair(const uint8_t* p) {
  uint32_t u;
  std::memcpy(&u, p, 4);
  return _mm_cvtph_ps(_mm_cvtsi32_si128(static_cast<int>(u)));
}
// {h, m * h, 0, 0} for the formats whose minimum is a fixed multiple of the scale (exact: m is
// a power of two or 0).
FASTLM_INLINE __m128 half_times(const uint8_t* p, float m) {
  uint16_t u;
  std::memcpy(&u, p, 2);
  const __m128 h = _mm_cvtph_ps(_mm_cvtsi32_si128(u));
  return _mm_mul_ps(_mm_broadcastss_ps(h), _mm_setr_ps(1.0f, m, 0.0f, 0.0f));
}
// 32 bytes -> int16 halves, zero- or sign-extended.
template <bool Signed>
FASTLM_INLINE void widen(__m256i v, __m256i* lo, __m256i* hi) {
  const __m128i a = _mm256_castsi256_si128(v), b = _mm256_extracti128_si256(v, 1);
  *lo = Signed ? _mm256_cvtepi8_epi16(a) : _mm256_cvtepu8_epi16(a);
  *hi = Signed ? _mm256_cvtepi8_epi16(b) : _mm256_cvtepu8_epi16(b);
}
#endif

// Legacy 32-blocks {f16 d; [f16 m]; [u8 qh[4]]; u8 qs[16 | 32]}: Bits 4 (nibbles: elements
// 0..15 low, 16..31 high) or 5 (plus bit j of qh as 0x10 of element j), unsigned with the
// minimum m stored (Q4_1, Q5_1), or read as signed q - 2^(Bits-1) (Q4_0, Q5_0: w = d * that,
// exactly ggml's value); Bits 8 (Q8_0) is int8. The signed ones carry no minimum term.
template <int Bits, bool StoredMin>
struct Legacy {
  static constexpr bool kSigned = !StoredMin, kMin = StoredMin, kHalfScales = false;
  static constexpr bool kStoredMin = StoredMin;
  static constexpr size_t kQh = StoredMin ? 4 : 2;  // offset of qh (Bits 5) or qs
  static constexpr size_t kQs = kQh + (Bits == 5 ? 4 : 0);
  static constexpr size_t kBytes = kQs + (Bits == 8 ? 32 : 16);
  static constexpr int64_t kPer = 1;
  // Subtracted from the stored unsigned values of the signed formats.
  static constexpr int kOffset = StoredMin || Bits == 8 ? 0 : 1 << (Bits - 1);

  static FASTLM_INLINE void scales(const uint8_t* row, int64_t b, float* d, float* m) {
    const uint8_t* p = row + b * kBytes;
    *d = half(p);
    *m = StoredMin ? half(p + 2) : 0.0f;
  }
  static void values_scalar(const uint8_t* row, int64_t b, uint8_t* q) {
    const uint8_t* p = row + b * kBytes;
    if constexpr (Bits == 8) {
      std::memcpy(q, p + kQs, kQK);
    } else {
      for (int j = 0; j < 16; ++j) {
        q[j] = p[kQs + j] & 0x0f;
        q[j + 16] = p[kQs + j] >> 4;
      }
      if constexpr (Bits == 5) {
        uint32_t bits;
        std::memcpy(&bits, p + kQh, 4);
        for (int j = 0; j < kQK; ++j) q[j] |= ((bits >> j) & 1u) << 4;
      }
      for (int j = 0; j < kQK; ++j) q[j] = static_cast<uint8_t>(q[j] - kOffset);
    }
  }
#if defined(__x86_64__)
  static FASTLM_INLINE __m128 scales4(const uint8_t* row, int64_t b) {
    return StoredMin ? half_pair(row + b * kBytes) : half_times(row + b * kBytes, 0.0f);
  }
  static FASTLM_INLINE void values16(const uint8_t* row, int64_t b, __m256i* lo, __m256i* hi) {
    const uint8_t* p = row + b * kBytes;
    if constexpr (Bits == 4) {
      const __m256i v =
          _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + kQs)));
      *lo = _mm256_and_si256(v, _mm256_set1_epi16(0x0f));
      *hi = _mm256_srli_epi16(v, 4);
      if constexpr (kOffset != 0) {
        *lo = _mm256_sub_epi16(*lo, _mm256_set1_epi16(kOffset));
        *hi = _mm256_sub_epi16(*hi, _mm256_set1_epi16(kOffset));
      }
    } else if constexpr (Bits == 5) {
      const __m256i nib = nibble_pairs(p + kQs), set = high_bit_pairs(p + kQh);
      if constexpr (kOffset != 0) {
        // nib + 16 * bit - 16 as int8: nib where the bit is set, nib - 16 = nib | 0xf0 where not.
        split_pairs<true>(_mm256_or_si256(nib, _mm256_andnot_si256(set, _mm256_set1_epi8(-16))), lo,
                          hi);
      } else {
        split_pairs<false>(_mm256_or_si256(nib, _mm256_and_si256(set, _mm256_set1_epi8(0x10))), lo,
                           hi);
      }
    } else {
      const auto* q = reinterpret_cast<const __m128i*>(p + kQs);
      *lo = _mm256_cvtepi8_epi16(_mm_loadu_si128(q));
      *hi = _mm256_cvtepi8_epi16(_mm_loadu_si128(q + 1));
    }
  }
#endif
};

// K-quant super-blocks of 256 {f16 d, dmin; u8 scales[12]; [u8 qh[32]]; u8 qs[128]} hold 8
// sub-blocks of 32, each with a 6-bit scale and minimum (8 pairs packed in 12 bytes):
// w = d * sc * q - dmin * mn. Sub-blocks 2i and 2i+1 are the low and high nibbles of the same
// 32 bytes of qs; Q5_K adds bit (b % 8) of qh[j] as the fifth bit of element j.
template <bool Five>
struct KQuant {
  static constexpr bool kSigned = false, kMin = true, kHalfScales = false;
  static constexpr size_t kQs = Five ? 48 : 16;
  static constexpr size_t kBytes = kQs + 128;
  static constexpr int64_t kPer = 8;

  static FASTLM_INLINE void scales(const uint8_t* row, int64_t b, float* d, float* m) {
    const uint8_t* sb = row + (b / 8) * kBytes;
    const uint8_t* s = sb + 4;
    const int j = static_cast<int>(b % 8);
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
  static void values_scalar(const uint8_t* row, int64_t b, uint8_t* q) {
    const uint8_t* sb = row + (b / 8) * kBytes;
    const uint8_t* qs = sb + kQs + (b % 8) / 2 * 32;
    const int shift = (b % 2) * 4, bit = static_cast<int>(b % 8);
    for (int j = 0; j < kQK; ++j) {
      q[j] = (qs[j] >> shift) & 0x0f;
      if constexpr (Five) q[j] |= ((sb[16 + j] >> bit) & 1) << 4;
    }
  }
#if defined(__x86_64__)
  // Every block's scales of the super-block at sb, as scales() returns them for block j:
  // dm[dm_index(j, 0)] = d, dm[dm_index(j, 1)] = m (the same products, 8 lanes at once).
  static constexpr int dm_index(int j, int second) { return second ? 8 + j : j; }
  static FASTLM_INLINE void super_scales(const uint8_t* sb, float* dm) {
    // 12 bytes s: sc[j] = s[j] & 63, mn[j] = s[j + 4] & 63 (j < 4); for j >= 4 the low four
    // bits come from s[j + 4] (sc: low nibble, mn: high) and the top two from bits 6..7 of
    // s[j - 4] (sc) and s[j] (mn). Four bytes at a time in 32-bit words.
    uint32_t a, b, c;
    std::memcpy(&a, sb + 4, 4);
    std::memcpy(&b, sb + 8, 4);
    std::memcpy(&c, sb + 12, 4);
    const uint32_t sc_lo = a & 0x3f3f3f3fu, mn_lo = b & 0x3f3f3f3fu;
    const uint32_t sc_hi = (c & 0x0f0f0f0fu) | ((a >> 2) & 0x30303030u);
    const uint32_t mn_hi = ((c >> 4) & 0x0f0f0f0fu) | ((b >> 2) & 0x30303030u);
    const __m128i v = _mm_setr_epi32(static_cast<int>(sc_lo), static_cast<int>(sc_hi),
                                     static_cast<int>(mn_lo), static_cast<int>(mn_hi));
    const __m256 sc = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v));
    const __m256 mn = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_unpackhi_epi64(v, v)));
    _mm256_storeu_ps(dm, _mm256_mul_ps(_mm256_set1_ps(half(sb)), sc));
    _mm256_storeu_ps(dm + 8, _mm256_mul_ps(_mm256_set1_ps(-half(sb + 2)), mn));
  }
  // values16 of block J of the super-block at sb, with the block's place known at compile time.
  template <int J>
  static FASTLM_INLINE void block16(const uint8_t* sb, __m256i* lo, __m256i* hi) {
    const uint8_t* qs = sb + kQs + J / 2 * 32;
    if constexpr (!Five) {
      // Widen the 32 bytes first (each 16 bytes straight into 16-bit lanes), then take the
      // nibble: 4 instructions instead of a byte mask, a shift and a widening of 3.
      const auto nibble = [](__m128i b) {
        const __m256i v = _mm256_cvtepu8_epi16(b);
        return J % 2 ? _mm256_srli_epi16(v, 4) : _mm256_and_si256(v, _mm256_set1_epi16(0x0f));
      };
      *lo = nibble(_mm_loadu_si128(reinterpret_cast<const __m128i*>(qs)));
      *hi = nibble(_mm_loadu_si128(reinterpret_cast<const __m128i*>(qs + 16)));
      return;
    }
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qs));
    __m256i q = _mm256_and_si256(J % 2 ? _mm256_srli_epi16(v, 4) : v, _mm256_set1_epi8(0x0f));
    if constexpr (Five) {
      const __m256i bit = _mm256_set1_epi8(static_cast<char>(1 << J));
      const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(sb + 16));
      q = _mm256_or_si256(q, _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(qh, bit), bit),
                                              _mm256_set1_epi8(0x10)));
    }
    widen<false>(q, lo, hi);
  }
  static FASTLM_INLINE void values16(const uint8_t* row, int64_t b, __m256i* lo, __m256i* hi) {
    const uint8_t* sb = row + (b / 8) * kBytes;
    const __m256i v =
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(sb + kQs + (b % 8) / 2 * 32));
    __m256i q =
        _mm256_and_si256(_mm256_srl_epi16(v, _mm_cvtsi32_si128(static_cast<int>(b % 2) * 4)),
                         _mm256_set1_epi8(0x0f));
    if constexpr (Five) {
      const __m256i bit = _mm256_set1_epi8(static_cast<char>(1 << (b % 8)));
      const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(sb + 16));
      q = _mm256_or_si256(q, _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(qh, bit), bit),
                                              _mm256_set1_epi8(0x10)));
    }
    widen<false>(q, lo, hi);
  }
#endif
};

// Q6_K {u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d}: 6-bit values q - 32 (signed, no minimum)
// with one scale per 16 elements, so a 32-block has two: `scales` returns d * sc for elements
// 0..15 in *d and for 16..31 in *m (kHalfScales).
// Sub-block j = 4h + g of a super-block: low bits from ql[64h + 32(g & 1) ..] (nibble g >> 1),
// high two bits from qh[32h ..] >> 2g, scales sc[8h + 2g], sc[8h + 2g + 1].
struct Q6K {
  static constexpr bool kSigned = true, kMin = false, kHalfScales = true;
  static constexpr size_t kBytes = 210;
  static constexpr int64_t kPer = 8;
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
  // Every block's two scales of the super-block at sb, as scales() returns them for block j:
  // dm[dm_index(j, 0 or 1)] = d * sc[2j or 2j + 1], i.e. the 16 scales in order.
  static constexpr int dm_index(int j, int second) { return 2 * j + second; }
  static FASTLM_INLINE void super_scales(const uint8_t* sb, float* dm) {
    const __m256 d = _mm256_set1_ps(half(sb + 208));
    const __m128i sc = _mm_loadu_si128(reinterpret_cast<const __m128i*>(sb + 192));
    _mm256_storeu_ps(dm, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(sc))));
    _mm256_storeu_ps(
        dm + 8,
        _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_unpackhi_epi64(sc, sc)))));
  }
  template <int J>
  static FASTLM_INLINE void block16(const uint8_t* sb, __m256i* lo, __m256i* hi) {
    constexpr int h = J / 4, g = J % 4;
    const __m256i ql =
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(sb + 64 * h + 32 * (g & 1)));
    const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(sb + 128 + 32 * h));
    const __m256i l4 =
        _mm256_and_si256(g >> 1 ? _mm256_srli_epi16(ql, 4) : ql, _mm256_set1_epi8(0x0f));
    const __m256i h2 =
        _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2 * g), _mm256_set1_epi8(3)), 4);
    widen<true>(_mm256_sub_epi8(_mm256_or_si256(l4, h2), _mm256_set1_epi8(32)), lo, hi);
  }
  static FASTLM_INLINE void values16(const uint8_t* row, int64_t b, __m256i* lo, __m256i* hi) {
    const uint8_t* sb = row + (b / 8) * kBytes;
    const int j = static_cast<int>(b % 8), h = j / 4, g = j % 4;
    const __m256i ql =
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(sb + 64 * h + 32 * (g & 1)));
    const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(sb + 128 + 32 * h));
    const __m256i l4 = _mm256_and_si256(_mm256_srl_epi16(ql, _mm_cvtsi32_si128(4 * (g >> 1))),
                                        _mm256_set1_epi8(0x0f));
    const __m256i h2 = _mm256_slli_epi16(
        _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * g)), _mm256_set1_epi8(3)), 4);
    widen<true>(_mm256_sub_epi8(_mm256_or_si256(l4, h2), _mm256_set1_epi8(32)), lo, hi);
  }
#endif
};

// Q3_K super-blocks of 256 {u8 hmask[32]; u8 qs[64]; u8 scales[12]; f16 d}: one 6-bit scale
// per 16 elements (sc - 32, signed), so like Q6_K a 32-block has two (kHalfScales), and values
// q in -4..3: two low bits plus the hmask bit as 4, minus 4. Sub-block j takes its low bits from
// qs[32 (j / 4) ..] >> 2 (j % 4) and its high bit from bit j of hmask[0 .. 31]. Scale i: low
// nibble of scales[i % 8] (the high one for i >= 8), high two bits from scales[8 + i % 4] >>
// 2 (i / 4).
struct Q3K {
  static constexpr bool kSigned = true, kMin = false, kHalfScales = true;
  static constexpr size_t kBytes = 110;
  static constexpr int64_t kPer = 8;
  // The 16 scales sc - 32 as int8 bytes, in order, packed in four 32-bit words.
  static FASTLM_INLINE void scale_words(const uint8_t* sb, uint32_t w[4]) {
    uint32_t a0, a1, t;
    std::memcpy(&a0, sb + 96, 4);
    std::memcpy(&a1, sb + 100, 4);
    std::memcpy(&t, sb + 104, 4);
    constexpr uint32_t kLow = 0x0f0f0f0fu, kTwo = 0x03030303u;
    const uint32_t v[4] = {(a0 & kLow) | ((t & kTwo) << 4), (a1 & kLow) | (((t >> 2) & kTwo) << 4),
                           ((a0 >> 4) & kLow) | (((t >> 4) & kTwo) << 4),
                           ((a1 >> 4) & kLow) | (((t >> 6) & kTwo) << 4)};
    // Each byte v in 0..63 -> v - 32 as int8: v + 0x60 stays below 0x100 (no carry into the
    // next byte), and flipping bit 7 takes the 0x80 back off modulo 256.
    for (int i = 0; i < 4; ++i) w[i] = (v[i] + 0x60606060u) ^ 0x80808080u;
  }
  static FASTLM_INLINE void scales(const uint8_t* row, int64_t b, float* d, float* m) {
    const uint8_t* sb = row + (b / 8) * kBytes;
    const int j = static_cast<int>(b % 8);
    uint32_t w[4];
    scale_words(sb, w);
    int8_t sc[16];
    std::memcpy(sc, w, 16);
    const float dd = half(sb + 108);
    *d = dd * static_cast<float>(sc[2 * j]);
    *m = dd * static_cast<float>(sc[2 * j + 1]);
  }
  static void values_scalar(const uint8_t* row, int64_t b, uint8_t* q) {
    const uint8_t* sb = row + (b / 8) * kBytes;
    const int j = static_cast<int>(b % 8);
    const uint8_t* qs = sb + 32 + 32 * (j / 4);
    for (int l = 0; l < kQK; ++l) {
      const int v = ((qs[l] >> (2 * (j % 4))) & 3) | (((sb[l] >> j) & 1) << 2);
      q[l] = static_cast<uint8_t>(static_cast<int8_t>(v - 4));
    }
  }
#if defined(__x86_64__)
  static constexpr int dm_index(int j, int second) { return 2 * j + second; }
  static FASTLM_INLINE void super_scales(const uint8_t* sb, float* dm) {
    uint32_t w[4];
    scale_words(sb, w);
    const __m128i sc = _mm_setr_epi32(static_cast<int>(w[0]), static_cast<int>(w[1]),
                                      static_cast<int>(w[2]), static_cast<int>(w[3]));
    const __m256 d = _mm256_set1_ps(half(sb + 108));
    _mm256_storeu_ps(dm, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(sc))));
    _mm256_storeu_ps(
        dm + 8,
        _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_unpackhi_epi64(sc, sc)))));
  }
  // The 32 values of sub-block j (shift counts in registers when j is not a constant).
  static FASTLM_INLINE __m256i bytes(const uint8_t* sb, int j) {
    const __m256i qs = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(sb + 32 + 32 * (j / 4)));
    const __m256i hm = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(sb));
    const __m256i low =
        _mm256_and_si256(_mm256_srl_epi16(qs, _mm_cvtsi32_si128(2 * (j % 4))), _mm256_set1_epi8(3));
    // Bit j of each byte to bit 0 (the neighbour byte's bits that the 16-bit shift brings in
    // are masked), then to bit 2.
    const __m256i high = _mm256_slli_epi16(
        _mm256_and_si256(_mm256_srl_epi16(hm, _mm_cvtsi32_si128(j)), _mm256_set1_epi8(1)), 2);
    return _mm256_sub_epi8(_mm256_or_si256(low, high), _mm256_set1_epi8(4));
  }
  template <int J>
  static FASTLM_INLINE void block16(const uint8_t* sb, __m256i* lo, __m256i* hi) {
    widen<true>(bytes(sb, J), lo, hi);
  }
  static FASTLM_INLINE void values16(const uint8_t* row, int64_t b, __m256i* lo, __m256i* hi) {
    widen<true>(bytes(row + (b / 8) * kBytes, static_cast<int>(b % 8)), lo, hi);
  }
#endif
};

// IQ4_NL blocks of 32 {f16 d; u8 qs[16]} and IQ4_XS super-blocks of 256 {f16 d; u16 scales_h;
// u8 scales_l[4]; u8 qs[128]}: 4-bit indices (nibbles as Q4_0's, 16 bytes per 32-block) into 16
// non-linear int8 levels, w = d * level; IQ4_XS scales each 32-block j by ls - 32, ls a 6-bit
// value: low four bits from scales_l[j / 2] >> 4 (j % 2), high two from scales_h >> 2 j.
inline constexpr int8_t kIq4Levels[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                          1,    13,   25,  38,  53,  69,  89,  113};

template <bool XS>
struct IQ4 {
  static constexpr bool kSigned = true, kMin = false, kHalfScales = false, kStoredMin = false;
  static constexpr size_t kBytes = XS ? 136 : 18;
  static constexpr int64_t kPer = XS ? 8 : 1;
  static FASTLM_INLINE const uint8_t* indices(const uint8_t* row, int64_t b) {
    return XS ? row + (b / 8) * kBytes + 8 + 16 * (b % 8) : row + b * kBytes + 2;
  }
  // Block j's scale factor ls - 32 of the super-block at sb.
  static FASTLM_INLINE int xs_scale(const uint8_t* sb, int j) {
    uint16_t h;
    std::memcpy(&h, sb + 2, 2);
    return (((sb[4 + j / 2] >> (4 * (j % 2))) & 0x0f) | (((h >> (2 * j)) & 3) << 4)) - 32;
  }
  static FASTLM_INLINE void scales(const uint8_t* row, int64_t b, float* d, float* m) {
    if constexpr (XS) {
      const uint8_t* sb = row + (b / 8) * kBytes;
      *d = half(sb) * static_cast<float>(xs_scale(sb, static_cast<int>(b % 8)));
    } else {
      *d = half(row + b * kBytes);
    }
    *m = 0.0f;
  }
  static void values_scalar(const uint8_t* row, int64_t b, uint8_t* q) {
    const uint8_t* qs = indices(row, b);
    for (int j = 0; j < kQK / 2; ++j) {
      q[j] = static_cast<uint8_t>(kIq4Levels[qs[j] & 0x0f]);
      q[j + kQK / 2] = static_cast<uint8_t>(kIq4Levels[qs[j] >> 4]);
    }
  }
#if defined(__x86_64__)
  static FASTLM_INLINE void levels16(const uint8_t* qs, __m256i* lo, __m256i* hi) {
    const __m256i table =
        _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kIq4Levels)));
    split_pairs<true>(_mm256_shuffle_epi8(table, nibble_pairs(qs)), lo, hi);
  }
  static FASTLM_INLINE void values16(const uint8_t* row, int64_t b, __m256i* lo, __m256i* hi) {
    levels16(indices(row, b), lo, hi);
  }
  // IQ4_XS: the 8 blocks' d * (ls - 32) at dm[j] (no minima: dm[8 + j] = 0).
  static constexpr int dm_index(int j, int second) { return second ? 8 + j : j; }
  static FASTLM_INLINE void super_scales(const uint8_t* sb, float* dm)
    requires XS
  {
    uint16_t h;
    uint32_t l;
    std::memcpy(&h, sb + 2, 2);
    std::memcpy(&l, sb + 4, 4);
    // Byte j = ls_j: nibble j of scales_l in bits 0..3, bits 2j, 2j + 1 of scales_h in 4..5.
    const uint64_t ls = _pdep_u64(l, 0x0f0f0f0f0f0f0f0full) | _pdep_u64(h, 0x3030303030303030ull);
    const __m256i v = _mm256_sub_epi32(
        _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(static_cast<int64_t>(ls))), _mm256_set1_epi32(32));
    _mm256_storeu_ps(dm, _mm256_mul_ps(_mm256_set1_ps(half(sb)), _mm256_cvtepi32_ps(v)));
    _mm256_storeu_ps(dm + 8, _mm256_setzero_ps());
  }
  template <int J>
  static FASTLM_INLINE void block16(const uint8_t* sb, __m256i* lo, __m256i* hi)
    requires XS
  {
    levels16(sb + 8 + 16 * J, lo, hi);
  }
#endif
};

#if defined(__x86_64__)
// A format's 32-blocks decoded once for reuse by many rows of x (qgemm's blocked path): per
// block kBytes = 96 bytes, the 32 values as int16 (values16's lo, hi) then scales4's {d, m} as
// two floats (kHalfScales: the two half-block scales). Reading them back gives the tiles the very
// values and scales the packed format does, so the arithmetic (and every bit) is the same.
template <class F>
struct Decoded {
  static constexpr bool kSigned = F::kSigned, kMin = F::kMin, kHalfScales = F::kHalfScales;
  static constexpr size_t kBytes = 96;
  static constexpr int64_t kPer = 1;
  static FASTLM_INLINE __m128 scales4(const uint8_t* row, int64_t b) {
    return _mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(row + b * kBytes + 64)));
  }
  static FASTLM_INLINE void values16(const uint8_t* row, int64_t b, __m256i* lo, __m256i* hi) {
    const auto* p = reinterpret_cast<const __m256i*>(row + b * kBytes);
    *lo = _mm256_load_si256(p);
    *hi = _mm256_load_si256(p + 1);
  }
};
#endif

using Q4_0 = Legacy<4, false>;
using Q4_1 = Legacy<4, true>;
using Q5_0 = Legacy<5, false>;
using Q5_1 = Legacy<5, true>;
using Q8_0 = Legacy<8, false>;
using Q4_K = KQuant<false>;
using Q5_K = KQuant<true>;

#if defined(__x86_64__)
template <class F>
FASTLM_INLINE __m128 scales4(const uint8_t* row, int64_t b) {
  if constexpr (requires { F::scales4(row, b); }) {
    return F::scales4(row, b);
  } else {
    float d, m;
    F::scales(row, b, &d, &m);
    return _mm_setr_ps(d, m, 0.0f, 0.0f);
  }
}
#endif

// fn(F{}) for the traits of `type`.
template <class Fn>
decltype(auto) visit(QType type, Fn&& fn) {
  switch (type) {
    case QType::kQ4_0:
      return fn(Q4_0{});
    case QType::kQ4_1:
      return fn(Q4_1{});
    case QType::kQ5_0:
      return fn(Q5_0{});
    case QType::kQ5_1:
      return fn(Q5_1{});
    case QType::kQ8_0:
      return fn(Q8_0{});
    case QType::kQ4_K:
      return fn(Q4_K{});
    case QType::kQ5_K:
      return fn(Q5_K{});
    case QType::kQ6_K:
      return fn(Q6K{});
    case QType::kQ3_K:
      return fn(Q3K{});
    case QType::kIQ4_NL:
      return fn(IQ4<false>{});
    case QType::kIQ4_XS:
      return fn(IQ4<true>{});
  }
  throw InvalidArgument("unknown packed weight format");
}

}  // namespace fastlm::cpu::qfmt
