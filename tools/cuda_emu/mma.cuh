// cuda_emu stand-in for cuda/mma.cuh: cp.async, ldmatrix and mma.sync.m16n8k16 emulated on the
// host with the PTX fragment layouts, so the attention kernel's tile math runs unchanged.
// A warp-collective op publishes each lane's operand address in its shuffle slot, meets the warp,
// reads the other lanes' operands (their fibers are parked at the barrier, so their registers --
// stack locals here -- are intact), and meets again before anyone reuses them.
// cp.async copies at once (commit/wait are no-ops): the pipeline's barriers still order the
// stages, which is what the emulator can check. Products and sums are fp32 (the tensor core's
// own summation order differs: compare with a tolerance, not bit for bit).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>

namespace difftree::cuda {
namespace mma_emu {

inline uint32_t bits(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}

// float -> bf16 / fp16 bits, round to nearest even (NaN stays NaN).
inline uint16_t to_bf16(float f) {
  uint32_t u = bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
inline uint16_t to_fp16(float f) {
  uint32_t x = bits(f);
  const uint32_t sign = (x >> 16) & 0x8000u;
  x &= 0x7fffffffu;
  if (x >= 0x7f800000u) return static_cast<uint16_t>(sign | (x > 0x7f800000u ? 0x7e00u : 0x7c00u));
  if (x >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // >= 65520: inf
  if (x >= 0x38800000u) {                                              // normal (>= 2^-14)
    x += 0xfffu + ((x >> 13) & 1u);
    return static_cast<uint16_t>(sign | ((x - 0x38000000u) >> 13));
  }
  if (x < 0x33000000u) return static_cast<uint16_t>(sign);  // < 2^-25 (2^-25 ties to 0)
  const uint32_t e = x >> 23, m = (x & 0x7fffffu) | 0x800000u, shift = 126 - e;
  uint32_t h = m >> shift;
  const uint32_t rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1);
  if (rem > half || (rem == half && (h & 1u))) ++h;
  return static_cast<uint16_t>(sign | h);
}

template <typename T>
float to_float(uint16_t h);
template <>
inline float to_float<__nv_bfloat16>(uint16_t h) {
  return __bfloat162float(__nv_bfloat16{h});
}
template <>
inline float to_float<__half>(uint16_t h) {
  return __half2float(__half{h});
}

inline int lane_id() { return static_cast<int>(threadIdx.x % 32); }

// Publishes p for the warp; after the call every lane's pointer is readable through peer().
inline void publish(const void* p) {
  memcpy(::emu::shfl_slot(lane_id()), &p, sizeof(p));
  ::emu::warp_sync();
}
inline const void* peer(int lane) {
  const void* p;
  memcpy(&p, ::emu::shfl_slot(lane), sizeof(p));
  return p;
}
inline uint16_t b16_at(const void* row, int elem) {
  uint16_t h;
  memcpy(&h, static_cast<const unsigned char*>(row) + 2 * elem, 2);
  return h;
}
inline uint32_t pair(uint16_t lo, uint16_t hi) {
  return static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16);
}

}  // namespace mma_emu

inline void cp_async16(void* dst, const void* src, bool pred) {
  if (pred)
    memcpy(dst, src, 16);
  else
    memset(dst, 0, 16);
}
inline void cp_async_commit() {}
template <int N>
inline void cp_async_wait() {}

// Lane l receives, of matrix m (rows from lanes 8m..8m+7): row l / 4, columns 2 (l % 4) + {0, 1}.
inline void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  using namespace mma_emu;
  publish(p);
  const int l = lane_id(), g = l >> 2, t = l & 3;
  for (int m = 0; m < 4; ++m) {
    const void* row = peer(8 * m + g);
    r[m] = pair(b16_at(row, 2 * t), b16_at(row, 2 * t + 1));
  }
  ::emu::warp_sync();
}
// Transposed: row g of the transpose = column g: rows 2 (l % 4) + {0, 1}, column l / 4.
inline void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
  using namespace mma_emu;
  publish(p);
  const int l = lane_id(), g = l >> 2, t = l & 3;
  for (int m = 0; m < 4; ++m)
    r[m] = pair(b16_at(peer(8 * m + 2 * t), g), b16_at(peer(8 * m + 2 * t + 1), g));
  ::emu::warp_sync();
}

template <typename T>
struct Mma {
  // d += A (16x16, row) * B (16x8, col) in the m16n8k16 fragment layouts (g = lane / 4,
  // t = lane % 4): a0 (g, 2t..), a1 (g + 8, 2t..), a2 (g, 2t + 8..), a3 (g + 8, 2t + 8..);
  // b0 (k 2t.., n g), b1 (k 2t + 8.., n g); d0, d1 (g, 2t..), d2, d3 (g + 8, 2t..).
  static void run(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    using namespace mma_emu;
    struct Operands {
      uint32_t a[4], b[2];
    } mine{{a[0], a[1], a[2], a[3]}, {b0, b1}};
    publish(&mine);
    const int l = lane_id(), g = l >> 2, t = l & 3;
    auto A = [](int row, int k) {
      const auto* o = static_cast<const Operands*>(peer(4 * (row & 7) + (k & 7) / 2));
      const uint32_t w = o->a[(row >> 3) + 2 * (k >> 3)];
      return to_float<T>(static_cast<uint16_t>(k & 1 ? w >> 16 : w & 0xffffu));
    };
    auto B = [](int k, int n) {
      const auto* o = static_cast<const Operands*>(peer(4 * n + (k & 7) / 2));
      const uint32_t w = o->b[k >> 3];
      return to_float<T>(static_cast<uint16_t>(k & 1 ? w >> 16 : w & 0xffffu));
    };
    float out[4];
    for (int e = 0; e < 4; ++e) {
      const int row = g + 8 * (e >> 1), col = 2 * t + (e & 1);
      float acc = d[e];
      for (int k = 0; k < 16; ++k) acc += A(row, k) * B(k, col);
      out[e] = acc;
    }
    ::emu::warp_sync();  // every lane has read the operands
    for (int e = 0; e < 4; ++e) d[e] = out[e];
  }
  static uint32_t pack(float lo, float hi);
};

template <>
inline uint32_t Mma<__nv_bfloat16>::pack(float lo, float hi) {
  return mma_emu::pair(mma_emu::to_bf16(lo), mma_emu::to_bf16(hi));
}
template <>
inline uint32_t Mma<__half>::pack(float lo, float hi) {
  return mma_emu::pair(mma_emu::to_fp16(lo), mma_emu::to_fp16(hi));
}

inline void store(__nv_bfloat16* p, float x) { p->x = mma_emu::to_bf16(x); }
inline void store(__half* p, float x) { p->x = mma_emu::to_fp16(x); }
inline void store2(float* p, float a, float b) {
  p[0] = a;
  p[1] = b;
}

}  // namespace difftree::cuda
