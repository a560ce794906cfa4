// cuda_emu stand-in for <cuda_fp16.h>: the storage type and its exact conversion to float.
#pragma once
#include <cstdint>

#include "cpu/half.h"

struct __half {
  uint16_t x;
};
inline float __half2float(__half h) { return ::difftree::cpu::fp16_to_float(h.x); }
