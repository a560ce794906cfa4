// Deterministic sampling arithmetic shared by the CPU node_select (cpp/src/cpu/node_select.cpp)
// and the CUDA kernel (cuda/node_select.cu), and mirrored op for op by
// difftree_rt.reference.node_select. Everything here is built from single IEEE operations
// (add, mul, div, floor, exact bit manipulation) so every implementation rounds identically:
// no libm calls (whose last bits differ between glibc and CUDA) and no fused multiply-add
// (on the device the _rn intrinsics forbid contraction; on the host keep -ffp-contract off).
//
// Procedure (normative for node_select, "exact by construction"):
//   z_v   = fp32(x_v / T)                                  (T > 0; T <= 0 means greedy on x)
//   order = (z desc, id asc); key_v = ord(z_v) << 32 | (0xffffffff - v), larger ranks first
//   top-k : keep v iff ord(z_v) >= ord(z_k), z_k the z of the top_k-th key (top_k <= 0 or >= V:
//           off): ties with the k-th value are kept, so more than top_k tokens may stay
//           (transformers' TopKLogitsWarper: scores < topk(scores, k).values[..., -1] removed);
//           ord() makes -0 == +0. A k-th value of -inf keeps the whole row: the -inf tokens have
//           no top-p mass (q = 0) and fp32(-inf + g) = -inf loses to every finite score, so
//           they are drawn only in an all -inf row (then the lowest id)
//   top-p : w_v = det_exp(z_v - m) (m = max z), q_v = u64(w_v * 2^32) (exact truncation),
//           Q = Σ_kept q over the top-k kept set (integer, order-free); walking that set in
//           key order, keep v iff Σ_{kept u before v} q_u < top_p * Q (double product);
//           top_p >= 1: off. The first token is always kept.
//   draw  : u_v = Philox4x32-10(key = seed, counter = (v / 4, node, round_lo, round_hi))[v % 4],
//           mapped to the odd multiples of 2^-24 in (0, 1); g_v = -det_log(-det_log(u_v));
//           the sample is argmax over kept v of fp32(z_v + g_v), ties to the lower id
//           (Gumbel-max: exact in distribution, and an argmax is independent of reduction order).
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define DT_HD __host__ __device__ __forceinline__
#else
#define DT_HD inline
#endif

#if !defined(__CUDACC__) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=off")
#endif
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

namespace difftree::sampling {

DT_HD float fmul(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
DT_HD float fadd(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
DT_HD float fsub(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}
DT_HD float fdiv(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}

DT_HD float ffloor(float a) {
#if defined(__CUDA_ARCH__)
  return floorf(a);
#else
  return __builtin_floorf(a);
#endif
}

DT_HD uint32_t float_bits(float f) {
#if defined(__CUDA_ARCH__)
  return static_cast<uint32_t>(__float_as_int(f));
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
#endif
}
DT_HD float bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __int_as_float(static_cast<int>(u));
#else
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
#endif
}

// Monotone map float -> uint32 (larger float, larger key); -0 and +0 map to the same key.
// NaN maps to 0 (never ranks first): callers treat it like -inf.
DT_HD uint32_t ordered(float f) {
  if (f != f) return 0u;
  f = fadd(f, 0.0f);  // -0 -> +0
  const uint32_t u = float_bits(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// Inverse of ordered() (for keys of non-NaN values).
DT_HD float unordered(uint32_t o) { return bits_float((o & 0x80000000u) ? (o & 0x7fffffffu) : ~o); }

// Unique ranking key: higher value first, then lower token id.
DT_HD uint64_t rank_key(float f, uint32_t id) {
  return (static_cast<uint64_t>(ordered(f)) << 32) | (0xffffffffu - id);
}

// The smallest key of f's value: {key >= value_floor(rank_key(f, id))} holds every token whose
// value ties with f (the top-k threshold, ties with the k-th value kept).
DT_HD uint64_t value_floor(uint64_t key) { return key & 0xffffffff00000000ull; }

// 2^n for -126 <= n <= 127, exactly.
DT_HD float pow2i(int n) { return bits_float(static_cast<uint32_t>(n + 127) << 23); }

// exp(t) for t <= 0 from single-rounded operations (|rel err| ~ 1e-7); 0 below -87.
DT_HD float det_exp(float t) {
  if (!(t >= -87.0f)) return 0.0f;
  const float n = ffloor(fadd(fmul(t, 1.44269504f), 0.5f));
  float r = fsub(t, fmul(n, 0.693359375f));  // Cody-Waite: ln2 high part, exact product
  r = fsub(r, fmul(n, -2.12194440e-4f));     // ln2 low part
  float p = 1.0f / 720.0f;
  p = fadd(fmul(p, r), 1.0f / 120.0f);
  p = fadd(fmul(p, r), 1.0f / 24.0f);
  p = fadd(fmul(p, r), 1.0f / 6.0f);
  p = fadd(fmul(p, r), 0.5f);
  p = fadd(fmul(p, r), 1.0f);
  p = fadd(fmul(p, r), 1.0f);
  return fmul(p, pow2i(static_cast<int>(n)));
}

// log(x) for positive normal x from single-rounded operations (|abs err| ~ 1e-7).
DT_HD float det_log(float x) {
  const uint32_t u = float_bits(x);
  int e = static_cast<int>((u >> 23) & 0xffu) - 127;
  float mant = bits_float((u & 0x007fffffu) | 0x3f800000u);  // [1, 2)
  if (mant > 1.41421356f) {
    mant = fmul(mant, 0.5f);
    e += 1;
  }
  const float f = fdiv(fsub(mant, 1.0f), fadd(mant, 1.0f));  // |f| <= 0.172
  const float s = fmul(f, f);
  float p = 2.0f / 11.0f;
  p = fadd(fmul(p, s), 2.0f / 9.0f);
  p = fadd(fmul(p, s), 2.0f / 7.0f);
  p = fadd(fmul(p, s), 2.0f / 5.0f);
  p = fadd(fmul(p, s), 2.0f / 3.0f);
  const float lm = fadd(fmul(f, 2.0f), fmul(fmul(f, s), p));  // 2 atanh(f)
  return fadd(fmul(static_cast<float>(e), 0.693147182f), lm);
}

// ---- Philox-4x32-10 (Salmon et al., Random123) ----------------------------------------------

struct U32x4 {
  uint32_t v[4];
};

DT_HD void mulhilo(uint32_t a, uint32_t b, uint32_t* hi, uint32_t* lo) {
  const uint64_t p = static_cast<uint64_t>(a) * b;
  *hi = static_cast<uint32_t>(p >> 32);
  *lo = static_cast<uint32_t>(p);
}

DT_HD U32x4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0,
                          uint32_t k1) {
  for (int r = 0; r < 10; ++r) {
    if (r > 0) {
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo(0xD2511F53u, c0, &hi0, &lo0);
    mulhilo(0xCD9E8D57u, c2, &hi1, &lo1);
    const uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
  }
  return U32x4{{c0, c1, c2, c3}};
}

// Uniform in (0, 1): the odd multiples of 2^-24, exactly representable.
DT_HD float bits_to_unit(uint32_t bits) {
  return fmul(static_cast<float>(((bits >> 9) << 1) | 1u), 5.96046448e-08f /* 2^-24 */);
}

// The Gumbel noise of token v at (seed, round, node); `block` is Philox(v / 4, ...).
DT_HD float gumbel_from_bits(uint32_t bits) {
  const float u = bits_to_unit(bits);
  return fsub(0.0f, det_log(fsub(0.0f, det_log(u))));
}

struct RngKey {
  uint32_t k0, k1, node, round_lo, round_hi;
};

DT_HD RngKey make_key(uint64_t seed, uint64_t round, uint32_t node) {
  return RngKey{static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32), node,
                static_cast<uint32_t>(round), static_cast<uint32_t>(round >> 32)};
}

DT_HD U32x4 philox_block(const RngKey& k, uint32_t block) {
  return philox4x32_10(block, k.node, k.round_lo, k.round_hi, k.k0, k.k1);
}

// Mass quantum of token v for top-p: q = floor(w * 2^32), w = det_exp(z - m) in [0, 1].
DT_HD uint64_t mass_q(float z, float m) {
  const float w = det_exp(fsub(z, m));
  return static_cast<uint64_t>(fmul(w, 4294967296.0f));
}

}  // namespace difftree::sampling
