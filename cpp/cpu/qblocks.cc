#include "cpu/qblocks.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/dtype.h"
#include "core/status.h"
#include "cpu/qformats.h"

namespace fastlm::cpu {
namespace {

using qfmt::kQK;

// Element j of a 32-block with value v and scales (d, m).
template <class F>
float value(float v, int j, float d, float m) {
  if constexpr (F::kHalfScales) return (j < kQK / 2 ? d : m) * v;
  if constexpr (F::kMin) return d * v + m;
  return d * v;
}

// The 32-blocks [b0, b1) of contiguous packed blocks -> floats, w = d * q (+ m), element by
// element as the format's traits describe it.
template <class F>
void dequant_32blocks(const uint8_t* src, float* dst, int64_t b0, int64_t b1) {
  uint8_t q[kQK];
  for (int64_t b = b0; b < b1; ++b) {
    float d, m;
    F::scales(src, b, &d, &m);
    F::values_scalar(src, b, q);
    float* y = dst + b * kQK;
    for (int j = 0; j < kQK; ++j) {
      const float v =
          F::kSigned ? static_cast<float>(static_cast<int8_t>(q[j])) : static_cast<float>(q[j]);
      y[j] = value<F>(v, j, d, m);
    }
  }
}

inline void put_half(uint8_t* p, float v) {
  const uint16_t h = f32_to_f16(v);
  std::memcpy(p, &h, 2);
}

// Element j -> min(15, int((x[j] - lo) * id + round)): low nibbles 0..15, high 16..31.
void pack_nibbles(const float* x, float lo, float id, float round, uint8_t* qs) {
  const auto q = [&](float v) { return std::min(15, static_cast<int>((v - lo) * id + round)); };
  for (int j = 0; j < kQK / 2; ++j)
    qs[j] = static_cast<uint8_t>(q(x[j]) | (q(x[j + kQK / 2]) << 4));
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
  pack_nibbles(x, 0.0f, id, 8.5f, b + 2);
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
  pack_nibbles(x, lo, id, 0.5f, b + 4);
}

}  // namespace

void dequantize_blocks(QType type, const void* src, float* dst, int64_t n) {
  const auto* s = static_cast<const uint8_t*>(src);
  const int64_t be = qtype_block_elems(type);
  FASTLM_CHECK(n % be == 0, "dequantize: ", n, " elements is not a multiple of ", be);
  const int64_t nb = n / kQK;
  qfmt::visit(type, [&](auto f) {
    using F = decltype(f);
#pragma omp parallel if (nb > 4096)
    {
      // Whole stored blocks per thread.
      const int64_t per = F::kPer, nt = omp_get_num_threads(), t = omp_get_thread_num();
      const int64_t chunk = (nb / per + nt - 1) / nt * per;
      dequant_32blocks<F>(s, dst, std::min(nb, t * chunk), std::min(nb, (t + 1) * chunk));
    }
  });
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
    case QType::kQ3_K:
    case QType::kIQ4_NL:
    case QType::kIQ4_XS:
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
    case QType::kQ3_K:
    case QType::kIQ4_NL:
    case QType::kIQ4_XS:
      break;
  }
  throw InvalidArgument(detail::concat("quantization to ", qtype_name(type), " is not supported"));
}

}  // namespace fastlm::cpu
