// Gated-DeltaNet tree ops on the CPU: the fallback and the oracle of the CUDA kernels. Inputs are
// widened to fp32, everything accumulates in fp32, and outputs are rounded once to their dtype.
//
// gdn_verify needs no per-node state: along a path, S_i = e^{G_i} S0 + Σ_{j ≤ i} e^{G_i - G_j}
// k̂_j δ_j^T (unrolling S_i = e^{g_i} S_parent + k̂_i δ_i^T), so the reference's
// δ_i = β_i (v_i - (e^{g_i} S_parent)^T k̂_i) and o_i = S_i^T q̂_i become the ancestor-masked
// forward substitution (the WY / UT chunk form with the causal mask replaced by the tree's):
//   δ_i = β_i (v_i - e^{G_i} S0^T k̂_i - Σ_{j strict ancestor} e^{G_i - G_j} (k̂_i·k̂_j) δ_j)
//   o_i = e^{G_i} S0^T q̂_i + Σ_{j ancestor or i} e^{G_i - G_j} (q̂_i·k̂_j) δ_j
// solved in row order (ancestors precede their descendants): O(N D_k D_v + N depth (D_k + D_v))
// per value head instead of the reference's O(N D_k D_v) memory.
//
// A row's parent is read from tree_anc exactly as the reference's parents_from_anc does: its
// largest strict-ancestor bit (-1: none, the row starts from the committed state). Any bit pattern
// is therefore a valid forest; bits at or above the row are ignored.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <sstream>
#include <type_traits>
#include <vector>

#include "cpu/cpu_ops.h"
#include "cpu/half.h"
#include "cpu/parallel.h"
#include "dispatch/checks.h"

namespace difftree::cpu {
namespace {

constexpr float kL2NormEps = 1e-6f;  // inside the rsqrt, as transformers' / FLA's l2norm

inline bool is_active(const TensorView* active, int64_t b) {
  return active == nullptr || active->ptr<const uint8_t>()[b] != 0;
}

// The accepted path of every active request: path[b, 0] = 0, strictly increasing node ids in
// [0, N) up to column accepted[b] in [0, P - 1]. Checked for all requests before any write, so an
// error leaves the state untouched.
Status check_accepted_paths(const TensorView& path, const TensorView& accepted,
                            const TensorView* active, int64_t N) {
  const int64_t B = path.shape[0], P = path.shape[1];
  for (int64_t b = 0; b < B; ++b) {
    if (!is_active(active, b)) continue;
    const int64_t acc = checks::load_index(accepted, b);
    std::ostringstream os;
    if (acc < 0 || acc >= P) {
      os << "accepted: expected values in [0, " << P - 1 << "] (path has " << P
         << " columns), got " << acc << " for request " << b;
      return InvalidValue(os.str());
    }
    int64_t prev = -1;
    for (int64_t j = 0; j <= acc; ++j) {
      const int64_t a = checks::load_index(path, b * P + j);
      if ((j == 0 && a != 0) || (j > 0 && a <= prev) || a >= N) {
        os << "path: expected path[" << b << ", 0] = 0 and strictly increasing node indices in [0, "
           << N << ") up to accepted, got " << a << " at column " << j;
        return InvalidValue(os.str());
      }
      prev = a;
    }
  }
  return Status::Ok();
}

// parent[b * N + i] from tree_anc (null: causal rows).
std::vector<int32_t> parents(const TensorView* tree_anc, int64_t B, int64_t N) {
  std::vector<int32_t> parent(static_cast<size_t>(B * N));
  const int64_t words = anc_words(N);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < N; ++i) {
      int64_t p = i - 1;
      if (tree_anc != nullptr) {
        const int32_t* row = tree_anc->ptr<const int32_t>() + (b * N + i) * words;
        p = -1;
        for (int64_t j = i - 1; j >= 0; --j)
          if ((static_cast<uint32_t>(row[j / 32]) >> (j % 32)) & 1u) {
            p = j;
            break;
          }
      }
      parent[b * N + i] = static_cast<int32_t>(p);
    }
  return parent;
}

// dst = l2norm(row) * scale over D entries (fp32).
void l2norm(const TensorView& t, int64_t off, int64_t D, float scale, float* dst) {
  float ss = 0.0f;
  for (int64_t d = 0; d < D; ++d) {
    dst[d] = load_float(t, off + d);
    ss += dst[d] * dst[d];
  }
  const float r = 1.0f / std::sqrt(ss + kL2NormEps);
  for (int64_t d = 0; d < D; ++d) dst[d] = dst[d] * r * scale;
}

inline float dot(const float* a, const float* b, int64_t D) {
  float s = 0.0f;
  for (int64_t d = 0; d < D; ++d) s += a[d] * b[d];
  return s;
}

// Element types of the conv, so its dtype is dispatched once per call, not per element.
struct F32 {
  using Raw = float;
  static float load(Raw v) { return v; }
  static Raw store(float v) { return v; }
};
struct BF16 {
  using Raw = uint16_t;
  static float load(Raw v) { return bf16_to_float(v); }
  static Raw store(float v) { return float_to_bf16(v); }
};
struct FP16 {
  using Raw = uint16_t;
  static float load(Raw v) { return fp16_to_float(v); }
  static Raw store(float v) { return float_to_fp16(v); }
};

// gdn_conv with src already validated. Every input is first laid out as contiguous fp32 rows of C
// (weight as [K, C] taps in application order, the tail as [B, K - 1, C], x as is when fp32) so
// the loop over channels is unit-stride and vectorises. Per element the sum is the previous one:
// taps e = 0..K-1 in order from 0, then the bias, so fp32 results are unchanged bit for bit.
template <typename T>
void conv_rows(const TensorView& x, const TensorView& conv_tail, const TensorView& weight,
               const TensorView* bias, const int32_t* s, int64_t K, bool activation,
               const TensorView& out) {
  using Raw = typename T::Raw;
  const int64_t B = x.shape[0], N = x.shape[1], C = x.shape[2], T0 = K - 1;
  const Raw* wp = weight.ptr<const Raw>();
  std::vector<float> w(static_cast<size_t>(K * C));  // w[e * C + c] = weight[c, K - 1 - e]
  for (int64_t c = 0; c < C; ++c)
    for (int64_t e = 0; e < K; ++e) w[e * C + c] = T::load(wp[c * K + (K - 1 - e)]);
  std::vector<float> bv(static_cast<size_t>(bias != nullptr ? C : 0));
  if (bias != nullptr)
    for (int64_t c = 0; c < C; ++c) bv[c] = T::load(bias->ptr<const Raw>()[c]);
  // The virtual sequence [tail (K - 1 rows); x (N rows)] of request b, as fp32 rows of C: the
  // tail always transposed here, x converted only when it is not fp32 already.
  constexpr bool kIsF32 = std::is_same_v<T, F32>;
  const int64_t seq_rows = kIsF32 ? T0 : T0 + N;
  std::vector<float> seq(static_cast<size_t>(B * seq_rows * C));
  const Raw* tp = conv_tail.ptr<const Raw>();
  const Raw* xp = x.ptr<const Raw>();
  parallel_rows(B * seq_rows, B * seq_rows * C, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / seq_rows, row = r % seq_rows;
      float* dst = seq.data() + r * C;
      if (row < T0) {
        for (int64_t c = 0; c < C; ++c) dst[c] = T::load(tp[(b * C + c) * T0 + row]);
      } else {
        const Raw* src_row = xp + (b * N + row - T0) * C;
        for (int64_t c = 0; c < C; ++c) dst[c] = T::load(src_row[c]);
      }
    }
  });
  auto seq_row = [&](int64_t b, int64_t row) -> const float* {
    if (kIsF32 && row >= T0) return x.ptr<const float>() + (b * N + row - T0) * C;
    return seq.data() + (b * seq_rows + row) * C;
  };
  Raw* op = out.ptr<Raw>();
  parallel_rows(B * N, B * N * C * K, [&](int64_t begin, int64_t end) {
    std::vector<float> acc(static_cast<size_t>(C));
    float* __restrict a = acc.data();
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / N;
      const int32_t* rs = s + r * K;
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int64_t e = 0; e < K; ++e) {
        const float* __restrict xr = seq_row(b, rs[e]);
        const float* __restrict we = w.data() + e * C;
        for (int64_t c = 0; c < C; ++c) a[c] += we[c] * xr[c];
      }
      if (bias != nullptr)
        for (int64_t c = 0; c < C; ++c) a[c] += bv[c];
      Raw* o = op + r * C;
      if (activation)
        for (int64_t c = 0; c < C; ++c) o[c] = T::store(a[c] / (1.0f + std::exp(-a[c])));
      else
        for (int64_t c = 0; c < C; ++c) o[c] = T::store(a[c]);
    }
  });
}

}  // namespace

// ---- gdn_conv -------------------------------------------------------------------------------

Status gdn_conv(const TensorView& x, const TensorView& conv_tail, const TensorView& weight,
                const TensorView* bias, const TensorView& src, bool activation,
                const TensorView& out) {
  const int64_t B = x.shape[0], N = x.shape[1], K = src.shape[2];
  const int32_t* s = src.ptr<const int32_t>();
  for (int64_t i = 0; i < B * N * K; ++i)
    if (s[i] < 0 || s[i] >= K - 1 + N) {
      std::ostringstream os;
      os << "src: expected values in [0, K - 1 + N) = [0, " << K - 1 + N << "), got " << s[i]
         << " at flat index " << i;
      return InvalidValue(os.str());
    }
  switch (x.dtype) {
    case DType::kFloat32:
      conv_rows<F32>(x, conv_tail, weight, bias, s, K, activation, out);
      break;
    case DType::kBFloat16:
      conv_rows<BF16>(x, conv_tail, weight, bias, s, K, activation, out);
      break;
    default:
      conv_rows<FP16>(x, conv_tail, weight, bias, s, K, activation, out);
      break;
  }
  return Status::Ok();
}

// ---- gdn_conv_commit ------------------------------------------------------------------------

Status gdn_conv_commit(const TensorView& conv_tail, const TensorView& x, const TensorView& src,
                       const TensorView& path, const TensorView& accepted,
                       const TensorView* active) {
  const int64_t B = x.shape[0], N = x.shape[1], C = x.shape[2], K = src.shape[2];
  const int64_t P = path.shape[1];
  DIFFTREE_RETURN_IF_ERROR(check_accepted_paths(path, accepted, active, N));
  const int32_t* s = src.ptr<const int32_t>();
  for (int64_t b = 0; b < B; ++b) {
    if (!is_active(active, b)) continue;
    const int64_t last = checks::load_index(path, b * P + checks::load_index(accepted, b));
    for (int64_t e = 0; e < K - 1; ++e) {
      const int32_t row = s[(b * N + last) * K + e];
      if (row < 0 || row >= K - 1 + N) {
        std::ostringstream os;
        os << "src: expected values in [0, K - 1 + N) = [0, " << K - 1 + N << "), got " << row
           << " at src[" << b << ", " << last << ", " << e << "]";
        return InvalidValue(os.str());
      }
    }
  }
  std::vector<float> rows(static_cast<size_t>((K - 1) * C));  // read before any write
  for (int64_t b = 0; b < B; ++b) {
    if (!is_active(active, b)) continue;
    const int64_t last = checks::load_index(path, b * P + checks::load_index(accepted, b));
    for (int64_t e = 0; e < K - 1; ++e) {
      const int64_t row = s[(b * N + last) * K + e];
      for (int64_t c = 0; c < C; ++c)
        rows[e * C + c] = row < K - 1 ? load_float(conv_tail, (b * C + c) * (K - 1) + row)
                                      : load_float(x, (b * N + row - (K - 1)) * C + c);
    }
    for (int64_t e = 0; e < K - 1; ++e)
      for (int64_t c = 0; c < C; ++c)
        store_float(conv_tail, (b * C + c) * (K - 1) + (K - 2 - e), rows[e * C + c]);
  }
  return Status::Ok();
}

// ---- gdn_verify -----------------------------------------------------------------------------

Status gdn_verify(const TensorView& q, const TensorView& k, const TensorView& v,
                  const TensorView& g, const TensorView& beta, const TensorView& state,
                  const TensorView* tree_anc, const TensorView& out, const TensorView& k_hat,
                  const TensorView& delta, const TensorView& gcum) {
  const int64_t B = q.shape[0], N = q.shape[1], Hk = q.shape[2], Dk = q.shape[3];
  const int64_t Hv = v.shape[2], Dv = v.shape[3], rep = Hv / Hk;
  const std::vector<int32_t> parent = parents(tree_anc, B, N);
  // q̂ (scratch) and k̂ (an output) once per key head.
  std::vector<float> q_hat(static_cast<size_t>(B * N * Hk * Dk));
  float* kh = k_hat.ptr<float>();
  const float q_scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(Dk)));
  parallel_rows(B * N * Hk, B * N * Hk * Dk, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      l2norm(q, r * Dk, Dk, q_scale, q_hat.data() + r * Dk);
      l2norm(k, r * Dk, Dk, 1.0f, kh + r * Dk);
    }
  });
  const float* S0 = state.ptr<const float>();
  const float* gp = g.ptr<const float>();
  const float* bp = beta.ptr<const float>();
  float* G = gcum.ptr<float>();
  float* dl = delta.ptr<float>();
  // Thread sizing only (double: a product of extents may pass int64 before any memory runs out).
  const double flops =
      static_cast<double>(B * Hv) * N * (Dk * Dv + static_cast<double>(N) * (Dk + Dv));
  const int64_t work = static_cast<int64_t>(std::min(flops, 1e18));
  parallel_rows(B * Hv, work, [&](int64_t begin, int64_t end) {
    std::vector<float> acc(static_cast<size_t>(Dv)), mem(static_cast<size_t>(Dv));
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / Hv, h = bh % Hv, hk = h / rep;
      const float* S = S0 + bh * Dk * Dv;
      auto gi = [&](int64_t i) { return (b * N + i) * Hv + h; };     // [B, N, H_v] rows
      auto khat = [&](int64_t i) { return kh + ((b * N + i) * Hk + hk) * Dk; };
      auto qhat = [&](int64_t i) { return q_hat.data() + ((b * N + i) * Hk + hk) * Dk; };
      auto dlt = [&](int64_t i) { return dl + ((b * N + i) * Hv + h) * Dv; };
      for (int64_t i = 0; i < N; ++i) {
        const int32_t p = parent[b * N + i];
        G[gi(i)] = gp[gi(i)] + (p >= 0 ? G[gi(p)] : 0.0f);
        const float Gi = G[gi(i)], decay = std::exp(Gi);
        const float* ki = khat(i);
        const float* qi = qhat(i);
        // mem = S0^T k̂_i, acc = S0^T q̂_i (row-major S0: D_k rows of D_v).
        std::fill(mem.begin(), mem.end(), 0.0f);
        std::fill(acc.begin(), acc.end(), 0.0f);
        for (int64_t a = 0; a < Dk; ++a) {
          const float* Srow = S + a * Dv;
          for (int64_t c = 0; c < Dv; ++c) {
            mem[c] += ki[a] * Srow[c];
            acc[c] += qi[a] * Srow[c];
          }
        }
        for (int64_t c = 0; c < Dv; ++c) {
          mem[c] *= decay;
          acc[c] *= decay;
        }
        for (int64_t j = p; j >= 0; j = parent[b * N + j]) {
          const float w = std::exp(Gi - G[gi(j)]);
          const float ck = w * dot(ki, khat(j), Dk), cq = w * dot(qi, khat(j), Dk);
          const float* dj = dlt(j);
          for (int64_t c = 0; c < Dv; ++c) {
            mem[c] += ck * dj[c];
            acc[c] += cq * dj[c];
          }
        }
        const float bi = bp[gi(i)];
        float* di = dlt(i);
        const int64_t voff = ((b * N + i) * Hv + h) * Dv;
        for (int64_t c = 0; c < Dv; ++c) di[c] = (load_float(v, voff + c) - mem[c]) * bi;
        const float cq = dot(qi, ki, Dk);  // the row's own term, weight e^0 = 1
        for (int64_t c = 0; c < Dv; ++c) store_float(out, voff + c, acc[c] + cq * di[c]);
      }
    }
  });
  return Status::Ok();
}

// ---- gdn_commit -----------------------------------------------------------------------------

Status gdn_commit(const TensorView& state, const TensorView& k_hat, const TensorView& delta,
                  const TensorView& gcum, const TensorView& path, const TensorView& accepted,
                  const TensorView* active) {
  const int64_t B = k_hat.shape[0], N = k_hat.shape[1], Hk = k_hat.shape[2], Dk = k_hat.shape[3];
  const int64_t Hv = delta.shape[2], Dv = delta.shape[3], rep = Hv / Hk, P = path.shape[1];
  DIFFTREE_RETURN_IF_ERROR(check_accepted_paths(path, accepted, active, N));
  const float* kh = k_hat.ptr<const float>();
  const float* dl = delta.ptr<const float>();
  const float* G = gcum.ptr<const float>();
  float* S0 = state.ptr<float>();
  const int64_t work = B * Hv * P * Dk * Dv;
  parallel_rows(B * Hv, work, [&](int64_t begin, int64_t end) {
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / Hv, h = bh % Hv, hk = h / rep;
      if (!is_active(active, b)) continue;
      const int64_t acc = checks::load_index(accepted, b);
      const float g_last = G[(b * N + checks::load_index(path, b * P + acc)) * Hv + h];
      float* S = S0 + bh * Dk * Dv;
      const float decay = std::exp(g_last);
      for (int64_t e = 0; e < Dk * Dv; ++e) S[e] *= decay;
      for (int64_t t = 0; t <= acc; ++t) {
        const int64_t j = checks::load_index(path, b * P + t);
        const float w = std::exp(g_last - G[(b * N + j) * Hv + h]);
        const float* kj = kh + ((b * N + j) * Hk + hk) * Dk;
        const float* dj = dl + ((b * N + j) * Hv + h) * Dv;
        for (int64_t a = 0; a < Dk; ++a) {
          const float wk = w * kj[a];
          for (int64_t c = 0; c < Dv; ++c) S[a * Dv + c] += wk * dj[c];
        }
      }
    }
  });
  return Status::Ok();
}

}  // namespace difftree::cpu
