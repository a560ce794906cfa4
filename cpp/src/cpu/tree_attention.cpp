// tree_attention on the CPU: the fallback and the oracle of the CUDA kernel. Inputs are widened to
// fp32, scores, softmax and the weighted sum are accumulated in fp32, and the result is rounded
// once to the output dtype (round to nearest even).
//
// Visibility for query row i of request b (its K/V at cache row prefix_len[b] + i), with
// n = num_nodes[b] (N when absent):
//   prefix keys [0, prefix_len[b])  : always;
//   tree key j (row prefix_len + j) : chain: j <= i;
//                                     tree:  i < n and j < n: j <= i and bit j of anc[b, i];
//                                            otherwise (padding): j == i.
// For a well-formed tree (ancestors precede their descendants; padding rows hold only their own
// bit) this is exactly "bit j of anc[b, i]", the reference's rule.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "cpu/half.h"
#include "cpu/parallel.h"
#include "difftree/ops.h"

namespace difftree::cpu {
namespace {

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

inline float load(const TensorView& t, int64_t off) {
  switch (t.dtype) {
    case DType::kFloat32:
      return t.ptr<const float>()[off];
    case DType::kBFloat16:
      return bf16_to_float(t.ptr<const uint16_t>()[off]);
    default:
      return fp16_to_float(t.ptr<const uint16_t>()[off]);
  }
}

inline void store(const TensorView& t, int64_t off, float x) {
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

inline int64_t index_at(const TensorView& t, int64_t i) {
  return t.dtype == DType::kInt64 ? t.ptr<const int64_t>()[i]
                                  : static_cast<int64_t>(t.ptr<const int32_t>()[i]);
}

}  // namespace

Status tree_attention(const TensorView& q, const TensorView& k_cache, const TensorView& v_cache,
                      const TensorView& prefix_len, const TensorView* tree_anc,
                      const TensorView* num_nodes, float scale, bool is_chain,
                      const AttentionVariant& variant, const TensorView& out) {
  if (variant.window != 0 || variant.sinks != nullptr || variant.ring ||
      v_cache.shape[3] != q.shape[3])
    return Unsupported("tree_attention: the CPU op does not support attention variants yet");
  const int64_t B = q.shape[0], Hq = q.shape[1], N = q.shape[2], D = q.shape[3];
  const int64_t Hkv = k_cache.shape[1], S = k_cache.shape[2];
  const int64_t G = Hq / Hkv, W = (N + 31) / 32;
  const bool chain = is_chain || tree_anc == nullptr;
  std::vector<int64_t> plen(B), nval(B);
  for (int64_t b = 0; b < B; ++b) {
    plen[b] = index_at(prefix_len, b);
    if (plen[b] < 0 || plen[b] > S - N)
      return InvalidValue("prefix_len: request " + std::to_string(b) +
                          " has prefix_len = " + std::to_string(plen[b]) +
                          ", expected 0 <= prefix_len <= S_max - N = " + std::to_string(S - N) +
                          " (the N tree rows must fit in the cache)");
    nval[b] = num_nodes != nullptr ? index_at(*num_nodes, b) : N;
    if (nval[b] < 0 || nval[b] > N)
      return InvalidValue("num_nodes: request " + std::to_string(b) +
                          " has num_nodes = " + std::to_string(nval[b]) +
                          ", expected 0 <= num_nodes <= N = " + std::to_string(N));
  }
  const int32_t* anc = chain ? nullptr : tree_anc->ptr<const int32_t>();

  int64_t work = 0;
  for (int64_t b = 0; b < B; ++b) work += Hq * N * (plen[b] + N) * D;
  parallel_rows(B * Hkv, work, [&](int64_t begin, int64_t end) {
    std::vector<float> kf, vf, qf(D), score, acc(D);
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / Hkv, kvh = bh % Hkv;
      const int64_t P = plen[b], n = nval[b], keys = P + N;
      // Widen this head's K/V rows [0, P + N) once.
      kf.resize(static_cast<size_t>(keys * D));
      vf.resize(static_cast<size_t>(keys * D));
      for (int64_t r = 0; r < keys; ++r) {
        const int64_t ko =
            b * k_cache.strides[0] + kvh * k_cache.strides[1] + r * k_cache.strides[2];
        const int64_t vo =
            b * v_cache.strides[0] + kvh * v_cache.strides[1] + r * v_cache.strides[2];
        for (int64_t d = 0; d < D; ++d) {
          kf[r * D + d] = load(k_cache, ko + d);
          vf[r * D + d] = load(v_cache, vo + d);
        }
      }
      score.resize(static_cast<size_t>(keys));
      for (int64_t g = 0; g < G; ++g) {
        const int64_t h = kvh * G + g;
        for (int64_t i = 0; i < N; ++i) {
          const int64_t qo = b * q.strides[0] + h * q.strides[1] + i * q.strides[2];
          for (int64_t d = 0; d < D; ++d) qf[d] = load(q, qo + d);
          const int32_t* row = anc != nullptr ? anc + (b * N + i) * W : nullptr;
          float mx = -INFINITY;
          for (int64_t r = 0; r < keys; ++r) {
            bool vis = true;
            if (r >= P) {
              const int64_t j = r - P;
              if (chain) {
                vis = j <= i;
              } else if (i < n && j < n) {
                vis = j <= i && ((static_cast<uint32_t>(row[j / 32]) >> (j % 32)) & 1u);
              } else {
                vis = j == i;
              }
            }
            if (!vis) {
              score[r] = -INFINITY;
              continue;
            }
            float s = 0.f;
            const float* kr = &kf[r * D];
            for (int64_t d = 0; d < D; ++d) s += qf[d] * kr[d];
            score[r] = s * scale;
            mx = std::max(mx, score[r]);
          }
          // The self key is always visible, so mx is finite for finite inputs.
          std::fill(acc.begin(), acc.end(), 0.f);
          float l = 0.f;
          for (int64_t r = 0; r < keys; ++r) {
            if (score[r] == -INFINITY) continue;
            const float p = std::exp(score[r] - mx);
            l += p;
            const float* vr = &vf[r * D];
            for (int64_t d = 0; d < D; ++d) acc[d] += p * vr[d];
          }
          const float inv = l > 0.f ? 1.f / l : 0.f;
          const int64_t oo = b * out.strides[0] + h * out.strides[1] + i * out.strides[2];
          for (int64_t d = 0; d < D; ++d) store(out, oo + d, acc[d] * inv);
        }
      }
    }
  });
  return Status::Ok();
}

}  // namespace difftree::cpu
