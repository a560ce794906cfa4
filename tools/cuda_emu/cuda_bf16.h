// cuda_emu stand-in for <cuda_bf16.h>: the storage type and its exact conversion to float.
#pragma once
#include <cstdint>

#include "cpu/half.h"

struct __nv_bfloat16 {
  uint16_t x;
};
inline float __bfloat162float(__nv_bfloat16 h) { return ::difftree::cpu::bf16_to_float(h.x); }
