#include "cpu/qblocks.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/dtype.h"
#include "core/status.h"

namespace fastlm::cpu {
namespace {

constexpr int kQK = 32;    // elements per block of the legacy quantizations
constexpr int kQKK = 256;  // elements per K-quant super-block

inline float half(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return f16_to_f32(h);
}

// Block layouts (bytes): Q4_0 {f16 d; u8 qs[16]}, Q4_1 {f16 d, m; u8 qs[16]},
// Q5_0 {f16 d; u8 qh[4]; u8 qs[16]}, Q5_1 {f16 d, m; u8 qh[4]; u8 qs[16]}, Q8_0 {f16 d; i8 qs[32]}.
void dequant_q4_0(const uint8_t* b, float* y) {
  const float d = half(b);
  const uint8_t* qs = b + 2;
  for (int j = 0; j < kQK / 2; ++j) {
    y[j] = static_cast<float>((qs[j] & 0x0f) - 8) * d;
    y[j + kQK / 2] = static_cast<float>((qs[j] >> 4) - 8) * d;
  }
}

void dequant_q4_1(const uint8_t* b, float* y) {
  const float d = half(b), m = half(b + 2);
  const uint8_t* qs = b + 4;
  for (int j = 0; j < kQK / 2; ++j) {
    y[j] = static_cast<float>(qs[j] & 0x0f) * d + m;
    y[j + kQK / 2] = static_cast<float>(qs[j] >> 4) * d + m;
  }
}

void dequant_q5(const uint8_t* qh_bytes, const uint8_t* qs, float d, float m, bool has_min,
                float* y) {
  uint32_t qh;
  std::memcpy(&qh, qh_bytes, 4);
  for (int j = 0; j < kQK / 2; ++j) {
    const int xh0 = ((qh >> j) << 4) & 0x10;
    const int xh1 = (qh >> (j + 12)) & 0x10;
    const int x0 = (qs[j] & 0x0f) | xh0;
    const int x1 = (qs[j] >> 4) | xh1;
    if (has_min) {
      y[j] = static_cast<float>(x0) * d + m;
      y[j + kQK / 2] = static_cast<float>(x1) * d + m;
    } else {
      y[j] = static_cast<float>(x0 - 16) * d;
      y[j + kQK / 2] = static_cast<float>(x1 - 16) * d;
    }
  }
}

void dequant_q8_0(const uint8_t* b, float* y) {
  const float d = half(b);
  const int8_t* qs = reinterpret_cast<const int8_t*>(b + 2);
  for (int j = 0; j < kQK; ++j) y[j] = static_cast<float>(qs[j]) * d;
}

// K-quants pack 8 six-bit (scale, min) pairs into 12 bytes.
inline void scale_min_k4(int j, const uint8_t* q, uint8_t* d, uint8_t* m) {
  if (j < 4) {
    *d = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *d = (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4);
    *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

// Q4_K {f16 d, dmin; u8 scales[12]; u8 qs[128]}.
void dequant_q4_k(const uint8_t* b, float* y) {
  const float d = half(b), dmin = half(b + 2);
  const uint8_t* scales = b + 4;
  const uint8_t* q = b + 16;
  int is = 0;
  for (int j = 0; j < kQKK; j += 64) {
    uint8_t sc, m;
    scale_min_k4(is, scales, &sc, &m);
    const float d1 = d * sc, m1 = dmin * m;
    scale_min_k4(is + 1, scales, &sc, &m);
    const float d2 = d * sc, m2 = dmin * m;
    for (int l = 0; l < 32; ++l) *y++ = d1 * static_cast<float>(q[l] & 0x0f) - m1;
    for (int l = 0; l < 32; ++l) *y++ = d2 * static_cast<float>(q[l] >> 4) - m2;
    q += 32;
    is += 2;
  }
}

// Q5_K {f16 d, dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]}.
void dequant_q5_k(const uint8_t* b, float* y) {
  const float d = half(b), dmin = half(b + 2);
  const uint8_t* scales = b + 4;
  const uint8_t* qh = b + 16;
  const uint8_t* ql = b + 48;
  int is = 0;
  uint8_t u1 = 1, u2 = 2;
  for (int j = 0; j < kQKK; j += 64) {
    uint8_t sc, m;
    scale_min_k4(is, scales, &sc, &m);
    const float d1 = d * sc, m1 = dmin * m;
    scale_min_k4(is + 1, scales, &sc, &m);
    const float d2 = d * sc, m2 = dmin * m;
    for (int l = 0; l < 32; ++l) {
      *y++ = d1 * static_cast<float>((ql[l] & 0x0f) + (qh[l] & u1 ? 16 : 0)) - m1;
    }
    for (int l = 0; l < 32; ++l) {
      *y++ = d2 * static_cast<float>((ql[l] >> 4) + (qh[l] & u2 ? 16 : 0)) - m2;
    }
    ql += 32;
    is += 2;
    u1 <<= 2;
    u2 <<= 2;
  }
}

// Q6_K {u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d}.
void dequant_q6_k(const uint8_t* b, float* y) {
  const uint8_t* ql = b;
  const uint8_t* qh = b + 128;
  const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192);
  const float d = half(b + 208);
  for (int n = 0; n < kQKK; n += 128) {
    for (int l = 0; l < 32; ++l) {
      const int is = l / 16;
      const int q1 = static_cast<int8_t>((ql[l] & 0x0f) | (((qh[l] >> 0) & 3) << 4)) - 32;
      const int q2 = static_cast<int8_t>((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) - 32;
      const int q3 = static_cast<int8_t>((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
      const int q4 = static_cast<int8_t>((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
      y[l] = d * sc[is] * static_cast<float>(q1);
      y[l + 32] = d * sc[is + 2] * static_cast<float>(q2);
      y[l + 64] = d * sc[is + 4] * static_cast<float>(q3);
      y[l + 96] = d * sc[is + 6] * static_cast<float>(q4);
    }
    y += 128;
    ql += 64;
    qh += 32;
    sc += 8;
  }
}

inline void put_half(uint8_t* p, float v) {
  const uint16_t h = f32_to_f16(v);
  std::memcpy(p, &h, 2);
}

void quant_q8_0(const float* x, uint8_t* b) {
  float amax = 0.0f;
  for (int j = 0; j < kQK; ++j) amax = std::max(amax, std::fabs(x[j]));
  const float d = amax / 127.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  put_half(b, d);
  auto* qs = reinterpret_cast<int8_t*>(b + 2);
  for (int j = 0; j < kQK; ++j) qs[j] = static_cast<int8_t>(std::nearbyint(x[j] * id));
}

void quant_q4_0(const float* x, uint8_t* b) {
  // The signed extreme maps to -8, so the full [-8, 7] range is used on its side.
  float amax = 0.0f, vmax = 0.0f;
  for (int j = 0; j < kQK; ++j) {
    if (std::fabs(x[j]) > amax) {
      amax = std::fabs(x[j]);
      vmax = x[j];
    }
  }
  const float d = vmax / -8.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  put_half(b, d);
  uint8_t* qs = b + 2;
  for (int j = 0; j < kQK / 2; ++j) {
    const int q0 = std::min(15, static_cast<int>(x[j] * id + 8.5f));
    const int q1 = std::min(15, static_cast<int>(x[j + kQK / 2] * id + 8.5f));
    qs[j] = static_cast<uint8_t>(q0 | (q1 << 4));
  }
}

void quant_q4_1(const float* x, uint8_t* b) {
  float lo = x[0], hi = x[0];
  for (int j = 1; j < kQK; ++j) {
    lo = std::min(lo, x[j]);
    hi = std::max(hi, x[j]);
  }
  const float d = (hi - lo) / 15.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  put_half(b, d);
  put_half(b + 2, lo);
  uint8_t* qs = b + 4;
  for (int j = 0; j < kQK / 2; ++j) {
    const int q0 = std::min(15, static_cast<int>((x[j] - lo) * id + 0.5f));
    const int q1 = std::min(15, static_cast<int>((x[j + kQK / 2] - lo) * id + 0.5f));
    qs[j] = static_cast<uint8_t>(q0 | (q1 << 4));
  }
}

}  // namespace

void dequantize_blocks(QType type, const void* src, float* dst, int64_t n) {
  const auto* s = static_cast<const uint8_t*>(src);
  const int64_t be = qtype_block_elems(type);
  const size_t bb = qtype_block_bytes(type);
  FASTLM_CHECK(n % be == 0, "dequantize: ", n, " elements is not a multiple of ", be);
  const int64_t nb = n / be;
  switch (type) {
    case QType::kQ4_0:
#pragma omp parallel for schedule(static) if (nb > 4096)
      for (int64_t i = 0; i < nb; ++i) dequant_q4_0(s + i * bb, dst + i * be);
      return;
    case QType::kQ4_1:
#pragma omp parallel for schedule(static) if (nb > 4096)
      for (int64_t i = 0; i < nb; ++i) dequant_q4_1(s + i * bb, dst + i * be);
      return;
    case QType::kQ5_0:
#pragma omp parallel for schedule(static) if (nb > 4096)
      for (int64_t i = 0; i < nb; ++i) {
        const uint8_t* b = s + i * bb;
        dequant_q5(b + 2, b + 6, half(b), 0.0f, false, dst + i * be);
      }
      return;
    case QType::kQ5_1:
#pragma omp parallel for schedule(static) if (nb > 4096)
      for (int64_t i = 0; i < nb; ++i) {
        const uint8_t* b = s + i * bb;
        dequant_q5(b + 4, b + 8, half(b), half(b + 2), true, dst + i * be);
      }
      return;
    case QType::kQ8_0:
#pragma omp parallel for schedule(static) if (nb > 4096)
      for (int64_t i = 0; i < nb; ++i) dequant_q8_0(s + i * bb, dst + i * be);
      return;
    case QType::kQ4_K:
#pragma omp parallel for schedule(static) if (nb > 512)
      for (int64_t i = 0; i < nb; ++i) dequant_q4_k(s + i * bb, dst + i * be);
      return;
    case QType::kQ5_K:
#pragma omp parallel for schedule(static) if (nb > 512)
      for (int64_t i = 0; i < nb; ++i) dequant_q5_k(s + i * bb, dst + i * be);
      return;
    case QType::kQ6_K:
#pragma omp parallel for schedule(static) if (nb > 512)
      for (int64_t i = 0; i < nb; ++i) dequant_q6_k(s + i * bb, dst + i * be);
      return;
  }
}

bool can_quantize(QType type) {
  switch (type) {
    case QType::kQ4_0:
    case QType::kQ4_1:
    case QType::kQ8_0:
      return true;
    case QType::kQ5_0:
    case QType::kQ5_1:
    case QType::kQ4_K:
    case QType::kQ5_K:
    case QType::kQ6_K:
      return false;
  }
  return false;
}

void quantize_blocks(QType type, const float* src, void* dst, int64_t n) {
  FASTLM_CHECK_ARG(n % kQK == 0, "quantize: ", n, " elements is not a multiple of ", kQK);
  auto* d = static_cast<uint8_t*>(dst);
  const size_t bb = qtype_block_bytes(type);
  const int64_t nb = n / kQK;
  switch (type) {
    case QType::kQ8_0:
      for (int64_t i = 0; i < nb; ++i) quant_q8_0(src + i * kQK, d + i * bb);
      return;
    case QType::kQ4_0:
      for (int64_t i = 0; i < nb; ++i) quant_q4_0(src + i * kQK, d + i * bb);
      return;
    case QType::kQ4_1:
      for (int64_t i = 0; i < nb; ++i) quant_q4_1(src + i * kQK, d + i * bb);
      return;
    case QType::kQ5_0:
    case QType::kQ5_1:
    case QType::kQ4_K:
    case QType::kQ5_K:
    case QType::kQ6_K:
      break;
  }
  throw InvalidArgument(detail::concat("quantization to ", qtype_name(type), " is not supported"));
}

}  // namespace fastlm::cpu
