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
//
// The attention variant (ops.h, DESIGN.md §7): row i sits at position qp = prefix_len + pos(i)
// (pos = depth, or i); a window W > 0 keeps committed p with qp - p < W and tree keys with
// pos(i) - pos(j) < W; a ring stores row r at slot r % S; a sink adds exp(sinks[h] - m) to the
// denominator. K and V may have different head dims (D_k, D_v).
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

inline int64_t index_at(const TensorView& t, int64_t i) {
  return t.dtype == DType::kInt64 ? t.ptr<const int64_t>()[i]
                                  : static_cast<int64_t>(t.ptr<const int32_t>()[i]);
}

}  // namespace

Status tree_attention(const TensorView& q, const TensorView& k_cache, const TensorView& v_cache,
                      const TensorView& prefix_len, const TensorView* tree_anc,
                      const TensorView* num_nodes, float scale, bool is_chain,
                      const AttentionVariant& variant, const TensorView& out) {
  const int64_t B = q.shape[0], Hq = q.shape[1], N = q.shape[2], D = q.shape[3];
  const int64_t Hkv = k_cache.shape[1], S = k_cache.shape[2], Dv = v_cache.shape[3];
  const int64_t G = Hq / Hkv, words = (N + 31) / 32;
  const int64_t W = variant.window;
  const bool chain = is_chain || tree_anc == nullptr, ring = variant.ring;
  std::vector<int64_t> plen(B), nval(B), pos(static_cast<size_t>(B * N));
  for (int64_t b = 0; b < B; ++b) {
    plen[b] = index_at(prefix_len, b);
    if (ring ? plen[b] < 0 : (plen[b] < 0 || plen[b] > S - N))
      return InvalidValue("prefix_len: request " + std::to_string(b) +
                          " has prefix_len = " + std::to_string(plen[b]) +
                          (ring ? std::string(", expected prefix_len >= 0")
                                : ", expected 0 <= prefix_len <= S - N = " + std::to_string(S - N) +
                                      " (the N tree rows must fit in the cache)"));
    nval[b] = num_nodes != nullptr ? index_at(*num_nodes, b) : N;
    if (nval[b] < 0 || nval[b] > N)
      return InvalidValue("num_nodes: request " + std::to_string(b) +
                          " has num_nodes = " + std::to_string(nval[b]) +
                          ", expected 0 <= num_nodes <= N = " + std::to_string(N));
    for (int64_t i = 0; i < N; ++i) {
      const int64_t d = variant.depth != nullptr ? index_at(*variant.depth, b * N + i) : i;
      if (d < 0 || d >= N)
        return InvalidValue("depth: depth[" + std::to_string(b) + ", " + std::to_string(i) +
                            "] = " + std::to_string(d) + ", expected 0 <= depth < N = " +
                            std::to_string(N));
      pos[b * N + i] = d;
    }
  }
  const int32_t* anc = chain ? nullptr : tree_anc->ptr<const int32_t>();
  const float* sinks = variant.sinks != nullptr ? variant.sinks->ptr<const float>() : nullptr;
  // Committed positions some row can see: [lo, P) with lo = P - W + 1 under a window (the row
  // nearest the prefix sits at position >= P). In a ring these slots are never the tree's: the
  // tree's slots are P + j (mod S) and S >= W - 1 + N keeps the two ranges apart.
  // A ring's prefix_len may be any int64 >= 0: slots and distances are computed without ever
  // forming prefix_len + i (which could overflow).
  auto first_visible = [&](int64_t P) { return W > 0 ? std::max<int64_t>(0, P - W + 1) : 0; };

  int64_t work = 0;
  for (int64_t b = 0; b < B; ++b) work += Hq * N * (plen[b] - first_visible(plen[b]) + N) * (D + Dv);
  parallel_rows(B * Hkv, work, [&](int64_t begin, int64_t end) {
    std::vector<float> kf, vf, qf(D), score, acc(Dv);
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / Hkv, kvh = bh % Hkv;
      const int64_t P = plen[b], lo = first_visible(P), C = P - lo, n = nval[b], keys = C + N;
      const int64_t* rpos = &pos[b * N];
      // Widen this head's visible K/V rows once: committed positions lo..P-1, then the N tree
      // rows (positions P..P+N-1 as cache rows), each at its slot.
      kf.resize(static_cast<size_t>(keys * D));
      vf.resize(static_cast<size_t>(keys * Dv));
      const int64_t tree_slot0 = ring ? P % S : P;  // slot of tree row 0
      for (int64_t r = 0; r < keys; ++r) {
        int64_t s = r < C ? lo + r : tree_slot0 + (r - C);
        if (ring) s %= S;
        const int64_t ko = b * k_cache.strides[0] + kvh * k_cache.strides[1] + s * k_cache.strides[2];
        const int64_t vo = b * v_cache.strides[0] + kvh * v_cache.strides[1] + s * v_cache.strides[2];
        for (int64_t d = 0; d < D; ++d) kf[r * D + d] = load_float(k_cache, ko + d);
        for (int64_t d = 0; d < Dv; ++d) vf[r * Dv + d] = load_float(v_cache, vo + d);
      }
      score.resize(static_cast<size_t>(keys));
      for (int64_t g = 0; g < G; ++g) {
        const int64_t h = kvh * G + g;
        for (int64_t i = 0; i < N; ++i) {
          const int64_t qo = b * q.strides[0] + h * q.strides[1] + i * q.strides[2];
          for (int64_t d = 0; d < D; ++d) qf[d] = load_float(q, qo + d);
          const int32_t* row = anc != nullptr ? anc + (b * N + i) * words : nullptr;
          const int64_t dist0 = C + rpos[i];  // qp - p for committed key r is dist0 - r
          float mx = -INFINITY;
          for (int64_t r = 0; r < keys; ++r) {
            bool vis;
            if (r < C) {
              vis = W == 0 || dist0 - r < W;  // transformers' kv_idx > q_idx - W
            } else {
              const int64_t j = r - C;
              if (chain) {
                vis = j <= i;
              } else if (i < n && j < n) {
                vis = j <= i && ((static_cast<uint32_t>(row[j / 32]) >> (j % 32)) & 1u);
              } else {
                vis = j == i;
              }
              vis = vis && (W == 0 || rpos[i] - rpos[j] < W);
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
          // The self key is always visible (also under a window), so mx is finite for finite
          // inputs. A sink joins the max and the denominator only (gpt-oss s_aux).
          const float sink = sinks != nullptr ? sinks[h] : -INFINITY;
          mx = std::max(mx, sink);
          std::fill(acc.begin(), acc.end(), 0.f);
          float l = sinks != nullptr ? std::exp(sink - mx) : 0.f;
          for (int64_t r = 0; r < keys; ++r) {
            if (score[r] == -INFINITY) continue;
            const float p = std::exp(score[r] - mx);
            l += p;
            const float* vr = &vf[r * Dv];
            for (int64_t d = 0; d < Dv; ++d) acc[d] += p * vr[d];
          }
          const float inv = l > 0.f ? 1.f / l : 0.f;
          const int64_t oo = b * out.strides[0] + h * out.strides[1] + i * out.strides[2];
          for (int64_t d = 0; d < Dv; ++d) store_float(out, oo + d, acc[d] * inv);
        }
      }
    }
  });
  return Status::Ok();
}

}  // namespace difftree::cpu
