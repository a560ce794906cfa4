// Scalar fp16 / bf16 <-> fp32 conversions (widening exact, narrowing round to nearest even), so
// the CPU path needs no compiler extensions.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "difftree/tensor.h"

namespace difftree::cpu {

inline float bits_to_float(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

inline float bf16_to_float(uint16_t h) { return bits_to_float(static_cast<uint32_t>(h) << 16); }

inline float fp16_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  if (exp == 0x1f) return bits_to_float(sign | 0x7f800000u | (mant << 13));  // inf / nan
  if (exp != 0) return bits_to_float(sign | ((exp + 112u) << 23) | (mant << 13));
  if (mant == 0) return bits_to_float(sign);  // +-0
  // Subnormal: normalise the mantissa.
  int e = -1;
  do {
    ++e;
    mant <<= 1;
  } while ((mant & 0x400u) == 0);
  return bits_to_float(sign | ((112u - e) << 23) | ((mant & 0x3ffu) << 13));
}

inline uint16_t float_to_bf16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, sizeof(x));
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);  // NaN
  x += 0x7fffu + ((x >> 16) & 1u);
  return static_cast<uint16_t>(x >> 16);
}

inline uint16_t float_to_fp16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, sizeof(x));
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t a = x & 0x7fffffffu;
  if (a >= 0x7f800000u) return static_cast<uint16_t>(sign | (a > 0x7f800000u ? 0x7e00u : 0x7c00u));
  if (a >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds to inf
  if (a < 0x38800000u) {  // fp16 subnormal (or zero): multiples of 2^-24
    float af;
    std::memcpy(&af, &a, sizeof(af));
    return static_cast<uint16_t>(sign | static_cast<uint32_t>(std::nearbyint(af * 16777216.0f)));
  }
  uint32_t h = (((a >> 23) - 112u) << 10) | ((a & 0x7fffffu) >> 13);
  const uint32_t rem = a & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;  // a carry into the exponent is right
  return static_cast<uint16_t>(sign | h);
}


// Element `off` of a float tensor (fp32 / bf16 / fp16) as fp32, and the store back (rounded to
// nearest even): the per-element access of the CPU ops that take any of the three.
inline float load_float(const TensorView& t, int64_t off) {
  switch (t.dtype) {
    case DType::kFloat32:
      return t.ptr<const float>()[off];
    case DType::kBFloat16:
      return bf16_to_float(t.ptr<const uint16_t>()[off]);
    default:
      return fp16_to_float(t.ptr<const uint16_t>()[off]);
  }
}

inline void store_float(const TensorView& t, int64_t off, float x) {
  switch (t.dtype) {
    case DType::kFloat32:
      t.ptr<float>()[off] = x;
      break;
    case DType::kBFloat16:
      t.ptr<uint16_t>()[off] = float_to_bf16(x);
      break;
    default:
      t.ptr<uint16_t>()[off] = float_to_fp16(x);
      break;
  }
}

}  // namespace difftree::cpu
