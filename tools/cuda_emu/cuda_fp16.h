// cuda_emu stand-in for <cuda_fp16.h>: the storage type and its conversions to and from float.
#pragma once
#include <cstdint>
#include <cstring>

#include "cpu/half.h"

struct __half {
  uint16_t x;
};
inline float __half2float(__half h) { return ::difftree::cpu::fp16_to_float(h.x); }
// Round to nearest even (overflow to inf, subnormals rounded), a NaN stays a NaN.
inline __half __float2half_rn(float f) {
  uint32_t x;
  memcpy(&x, &f, 4);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  x &= 0x7fffffffu;
  if (x >= 0x7f800000u) return __half{static_cast<uint16_t>(sign | (x > 0x7f800000u ? 0x7e00u : 0x7c00u))};
  if (x >= 0x477ff000u) return __half{static_cast<uint16_t>(sign | 0x7c00u)};  // >= 65520: inf
  if (x >= 0x38800000u) {                                                      // normal
    x += 0xfffu + ((x >> 13) & 1u);
    return __half{static_cast<uint16_t>(sign | ((x - 0x38000000u) >> 13))};
  }
  if (x < 0x33000000u) return __half{sign};  // < 2^-25 (2^-25 ties to 0)
  const uint32_t e = x >> 23, m = (x & 0x7fffffu) | 0x800000u, shift = 126 - e;
  uint32_t h = m >> shift;
  const uint32_t rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1);
  if (rem > half || (rem == half && (h & 1u))) ++h;
  return __half{static_cast<uint16_t>(sign | h)};
}
