// Gated-DeltaNet tree ops on the device (reference/gated_delta.py; cpu/gated_delta.cpp is the
// checked oracle). No allocation, no host sync: graph-capturable.
//
// gdn_conv: one thread per (b, i, c), grid-stride, coalesced over c; fp32 accumulation.
// gdn_conv_commit: one thread per (b, c): a channel's K - 1 new tail values come from that
//   channel only, so the thread reads them all into registers before writing (K <= 16).
// gdn_verify: one CTA of kThreads per (D_v tile of kCols columns, h, b). Rows go in chunks of
//   kRows = 32 (one word of the ancestor bitmask). Per chunk I: normalise q / k into smem, the
//   base terms S0ᵀk̂ and S0ᵀq̂ (S0 read from global, coalesced over columns), then for every
//   earlier chunk J holding an ancestor of a row of I the masked decayed Gram tiles
//   e^{G_i-G_j} k̂_i·k̂_j and e^{G_i-G_j} q̂_i·k̂_j (k̂_J rebuilt from k and the cached norms, δ_J
//   read back from the delta output this CTA wrote), and last the diagonal tile, whose forward
//   substitution one warp runs sequentially (lane = column). Columns are independent, so the
//   D_v tiles never talk to each other; each CTA recomputes gcum and the norms (cheap).
//   Shared memory: 4 * (2 N + 3 * 32 * (D_k + 1) + 2 * 32 * 33 + 2 * 32 * 32 + 96) bytes
//   (N = 1024, D_k = 128: ~74 KiB; opted in above 48 KiB). Limits: D_k, D_v <= 256, N <= 4096
//   (Unsupported beyond). k_hat is written by the CTAs with h % (H_v / H_k) == 0 and tile 0,
//   gcum by tile 0.
// gdn_commit: one CTA per (D_k row tile, h, b), each thread owning <= 8 state entries in
//   registers (in place: every entry is read and written by its owner only); the path's
//   nodes and decay weights are staged in smem, kThreads at a time.
// Data-dependent indices (src, path, accepted) are clamped on the device; bits of tree_anc
// above the diagonal or past N are ignored.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <string>

#include "index.cuh"
#include "launchers.h"

namespace difftree::cuda {
namespace {

constexpr int kThreads = 128;
constexpr int kRows = 32;                   // verify rows per chunk (bits per anc word)
constexpr int kCols = 32;                   // verify D_v columns per CTA (one warp's lanes)
constexpr int kGroups = kThreads / kCols;   // row groups (warps) of a verify CTA
constexpr int kPerThread = kRows / kGroups;  // rows per thread in a chunk
constexpr int kMaxConvK = 16;
constexpr int kMaxHeadDim = 256;
constexpr int kMaxRows = 4096;
constexpr int kCommitElems = 8;  // state entries per commit thread
constexpr float kL2Eps = 1e-6f;  // reference.L2NORM_EPS

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }
__device__ __forceinline__ void store_f32(float* p, float x) { *p = x; }
__device__ __forceinline__ void store_f32(__nv_bfloat16* p, float x) { *p = __float2bfloat16_rn(x); }
__device__ __forceinline__ void store_f32(__half* p, float x) { *p = __float2half_rn(x); }

__device__ __forceinline__ int64_t clamp64(int64_t v, int64_t lo, int64_t hi) {
  return v < lo ? lo : (v > hi ? hi : v);
}

// ---- gdn_conv ---------------------------------------------------------------------------------

struct ConvParams {
  const void* x;
  const void* tail;
  const void* weight;
  const void* bias;
  const int32_t* src;
  void* out;
  int64_t B, N, C, K, blocks;
  bool activation;
};

template <typename T>
__global__ void gdn_conv_kernel(ConvParams p) {
  const T* x = static_cast<const T*>(p.x);
  const T* tail = static_cast<const T*>(p.tail);
  const T* w = static_cast<const T*>(p.weight);
  const T* bias = static_cast<const T*>(p.bias);
  const int64_t km1 = p.K - 1, total = p.B * p.N * p.C;
  const int64_t stride = p.blocks * blockDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
       e += stride) {
    const int64_t c = e % p.C, bi = e / p.C, b = bi / p.N;
    float acc = 0.f;
    for (int64_t k = 0; k < p.K; ++k) {
      const int64_t r = clamp64(p.src[bi * p.K + k], 0, km1 + p.N - 1);
      const float s = r < km1 ? to_f32(tail[(b * p.C + c) * km1 + r])
                              : to_f32(x[(b * p.N + r - km1) * p.C + c]);
      acc = acc + to_f32(w[c * p.K + km1 - k]) * s;
    }
    if (bias != nullptr) acc = acc + to_f32(bias[c]);
    if (p.activation) acc = acc / (1.f + expf(-acc));
    store_f32(static_cast<T*>(p.out) + e, acc);
  }
}

// ---- gdn_conv_commit --------------------------------------------------------------------------

struct ConvCommitParams {
  void* tail;
  const void* x;
  const int32_t* src;
  const void* path;
  bool path64;
  const void* accepted;
  bool acc64;
  const uint8_t* active;
  int64_t N, C, K, P;
};

template <typename T>
__global__ void gdn_conv_commit_kernel(ConvCommitParams p) {
  const int64_t b = blockIdx.y, c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= p.C || (p.active != nullptr && p.active[b] == 0)) return;
  const int64_t km1 = p.K - 1;
  const int64_t acc = clamp64(load_index(p.accepted, p.acc64, b), 0, p.P - 1);
  const int64_t last = clamp64(load_index(p.path, p.path64, b * p.P + acc), 0, p.N - 1);
  T* tail = static_cast<T*>(p.tail) + (b * p.C + c) * km1;
  const T* x = static_cast<const T*>(p.x);
  T rows[kMaxConvK - 1];
  for (int64_t e = 0; e < km1; ++e) {  // every read before any write (sources may be tail slots)
    const int64_t r = clamp64(p.src[(b * p.N + last) * p.K + e], 0, km1 + p.N - 1);
    rows[e] = r < km1 ? tail[r] : x[(b * p.N + r - km1) * p.C + c];
  }
  for (int64_t e = 0; e < km1; ++e) tail[km1 - 1 - e] = rows[e];
}

// ---- gdn_verify -------------------------------------------------------------------------------

struct VerifyParams {
  const void* q;
  const void* k;
  const void* v;
  const float* g;
  const float* beta;
  const float* state;
  const int32_t* anc;  // nullptr: causal
  void* out;
  float* k_hat;
  float* delta;
  float* gcum;
  int64_t N, Hk, Hv, Dk, Dv, words;
};

size_t verify_smem_bytes(int64_t N, int64_t Dk) {
  const int64_t floats = 2 * N + 3 * kRows * (Dk + 1) + 2 * kRows * (kRows + 1) +
                         2 * kRows * kCols + 3 * kRows;
  return static_cast<size_t>(floats) * sizeof(float);
}

// The ancestor word `word` of row i (bits j - 32 word), all ones for causal rows.
__device__ __forceinline__ uint32_t anc_word(const VerifyParams& p, int64_t b, int64_t i,
                                             int64_t word) {
  return p.anc == nullptr ? 0xffffffffu
                          : static_cast<uint32_t>(p.anc[(b * p.N + i) * p.words + word]);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) gdn_verify_kernel(VerifyParams p) {
  extern __shared__ __align__(16) float smem[];
  const int64_t N = p.N, Dk = p.Dk, Dv = p.Dv, ks = Dk + 1;
  float* G = smem;               // [N] cumulative log decay
  float* rk = G + N;             // [N] 1 / |k_i| (k̂ rebuilt bit-identically for later chunks)
  float* kI = rk + N;            // [kRows][Dk + 1] k̂ of the chunk
  float* qI = kI + kRows * ks;   // [kRows][Dk + 1] q̂ of the chunk
  float* kJ = qI + kRows * ks;   // [kRows][Dk + 1] k̂ of an earlier chunk
  float* Ck = kJ + kRows * ks;   // [kRows][kRows + 1] e^{G_i-G_j} k̂_i·k̂_j (masked)
  float* Cq = Ck + kRows * (kRows + 1);  // [kRows][kRows + 1] e^{G_i-G_j} q̂_i·k̂_j (masked)
  float* dJ = Cq + kRows * (kRows + 1);  // [kRows][kCols] δ of an earlier chunk
  float* dI = dJ + kRows * kCols;        // [kRows][kCols] δ of the chunk
  float* bI = dI + kRows * kCols;        // [kRows] β of the chunk
  uint32_t* mI = reinterpret_cast<uint32_t*>(bI + kRows);  // [kRows] diagonal mask words
  uint32_t* mw = mI + kRows;                                // [kRows] an earlier chunk's words

  const int64_t b = blockIdx.z, h = blockIdx.y, hk = h / (p.Hv / p.Hk);
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kCols + threadIdx.x % kCols;
  const bool col_ok = col < Dv;
  const int lane = threadIdx.x % kCols, grp = threadIdx.x / kCols;
  const bool write_khat = blockIdx.x == 0 && h % (p.Hv / p.Hk) == 0;
  const T* q = static_cast<const T*>(p.q);
  const T* k = static_cast<const T*>(p.k);
  const T* v = static_cast<const T*>(p.v);
  const float* S0 = p.state + (b * p.Hv + h) * Dk * Dv;
  const float scale = 1.f / sqrtf(static_cast<float>(Dk));

  // gcum: G_i = sum of g over the ancestors of i in id order, then g_i (the reference's
  // G_p + g_i along the path, in the same order). rk holds g meanwhile.
  for (int64_t i = threadIdx.x; i < N; i += blockDim.x) rk[i] = p.g[(b * N + i) * p.Hv + h];
  __syncthreads();
  for (int64_t i = threadIdx.x; i < N; i += blockDim.x) {
    float s = 0.f;
    for (int64_t w = 0; w <= i / 32; ++w) {
      uint32_t bits = anc_word(p, b, i, w);
      if (w == i / 32) bits &= (1u << (i % 32)) - 1u;  // strict ancestors
      while (bits != 0) {
        const int j = __ffs(static_cast<int>(bits)) - 1;
        bits &= bits - 1u;
        s = s + rk[w * 32 + j];
      }
    }
    G[i] = s + rk[i];
  }
  __syncthreads();
  if (blockIdx.x == 0)
    for (int64_t i = threadIdx.x; i < N; i += blockDim.x) p.gcum[(b * N + i) * p.Hv + h] = G[i];

  for (int64_t i0 = 0; i0 < N; i0 += kRows) {
    const int64_t rows = N - i0 < kRows ? N - i0 : kRows;
    const int64_t ic = i0 / kRows;
    // Raw q / k rows of the chunk (zero past N), β, and the diagonal mask words.
    for (int64_t e = threadIdx.x; e < kRows * Dk; e += blockDim.x) {
      const int64_t r = e / Dk, d = e % Dk;
      float kv = 0.f, qv = 0.f;
      if (r < rows) {
        const int64_t at = ((b * N + i0 + r) * p.Hk + hk) * Dk + d;
        kv = to_f32(k[at]);
        qv = to_f32(q[at]);
      }
      kI[r * ks + d] = kv;
      qI[r * ks + d] = qv;
    }
    if (threadIdx.x < kRows) {
      const int64_t r = threadIdx.x;
      bI[r] = r < rows ? p.beta[(b * N + i0 + r) * p.Hv + h] : 0.f;
      mI[r] = r < rows ? anc_word(p, b, i0 + r, ic) : 0u;
    }
    __syncthreads();
    // l2 norms: a warp per row, lane-strided sums reduced by shuffles.
    for (int64_t r = grp; r < rows; r += kGroups) {
      float sk = 0.f, sq = 0.f;
      for (int64_t d = lane; d < Dk; d += kCols) {
        sk += kI[r * ks + d] * kI[r * ks + d];
        sq += qI[r * ks + d] * qI[r * ks + d];
      }
      for (int o = 16; o > 0; o /= 2) {
        sk += __shfl_xor_sync(0xffffffffu, sk, o);
        sq += __shfl_xor_sync(0xffffffffu, sq, o);
      }
      const float nk = rsqrtf(sk + kL2Eps), nq = rsqrtf(sq + kL2Eps);
      for (int64_t d = lane; d < Dk; d += kCols) {
        const float kh = kI[r * ks + d] * nk;
        kI[r * ks + d] = kh;
        qI[r * ks + d] = (qI[r * ks + d] * nq) * scale;
        if (write_khat) p.k_hat[((b * N + i0 + r) * p.Hk + hk) * Dk + d] = kh;
      }
      if (lane == 0) rk[i0 + r] = nk;
    }
    __syncthreads();

    // Base terms S0ᵀk̂_i and S0ᵀq̂_i of this thread's rows r = grp + kGroups * m, column col.
    float u[kPerThread], uq[kPerThread], W[kPerThread], O[kPerThread];
    for (int m = 0; m < kPerThread; ++m) u[m] = uq[m] = W[m] = O[m] = 0.f;
    for (int64_t d = 0; d < Dk; ++d) {
      const float s0 = col_ok ? S0[d * Dv + col] : 0.f;
      for (int m = 0; m < kPerThread; ++m) {
        const int r = grp + kGroups * m;
        u[m] += kI[r * ks + d] * s0;
        uq[m] += qI[r * ks + d] * s0;
      }
    }

    // Earlier chunks: W_i += Σ_j e^{G_i-G_j} (k̂_i·k̂_j) δ_j, O_i += Σ_j e^{G_i-G_j} (q̂_i·k̂_j) δ_j.
    for (int64_t jc = 0; jc < ic; ++jc) {
      const int64_t j0 = jc * kRows;
      uint32_t word = 0;
      if (threadIdx.x < kRows && threadIdx.x < rows) word = anc_word(p, b, i0 + threadIdx.x, jc);
      if (!__syncthreads_or(word != 0)) continue;  // no ancestor of any row here
      if (threadIdx.x < kRows) mw[threadIdx.x] = word;
      for (int64_t e = threadIdx.x; e < kRows * Dk; e += blockDim.x) {
        const int64_t r = e / Dk, d = e % Dk;
        kJ[r * ks + d] = to_f32(k[((b * N + j0 + r) * p.Hk + hk) * Dk + d]) * rk[j0 + r];
      }
      for (int64_t e = threadIdx.x; e < kRows * kCols; e += blockDim.x) {
        const int64_t r = e / kCols, c = blockIdx.x * static_cast<int64_t>(kCols) + e % kCols;
        dJ[e] = c < Dv ? p.delta[((b * N + j0 + r) * p.Hv + h) * Dv + c] : 0.f;
      }
      __syncthreads();
      for (int m = 0; m < kPerThread; ++m) {  // Gram tile: thread (row r, key lane)
        const int r = grp + kGroups * m;
        float ck = 0.f, cq = 0.f;
        if (r < rows && ((mw[r] >> lane) & 1u)) {
          for (int64_t d = 0; d < Dk; ++d) {
            ck += kI[r * ks + d] * kJ[lane * ks + d];
            cq += qI[r * ks + d] * kJ[lane * ks + d];
          }
          const float decay = expf(G[i0 + r] - G[j0 + lane]);
          ck *= decay;
          cq *= decay;
        }
        Ck[r * (kRows + 1) + lane] = ck;
        Cq[r * (kRows + 1) + lane] = cq;
      }
      __syncthreads();
      for (int m = 0; m < kPerThread; ++m) {
        const int r = grp + kGroups * m;
        for (int j = 0; j < kRows; ++j) {
          W[m] += Ck[r * (kRows + 1) + j] * dJ[j * kCols + lane];
          O[m] += Cq[r * (kRows + 1) + j] * dJ[j * kCols + lane];
        }
      }
      __syncthreads();
    }

    // Diagonal tile: strict ancestors for δ, ancestors-or-self for o.
    for (int m = 0; m < kPerThread; ++m) {
      const int r = grp + kGroups * m;
      const bool row_ok = r < rows;
      const uint32_t strict = mI[r] & ((1u << r) - 1u);
      float ck = 0.f, cq = 0.f;
      if (row_ok && lane <= r && (lane == r || ((strict >> lane) & 1u))) {
        for (int64_t d = 0; d < Dk; ++d) {
          ck += kI[r * ks + d] * kI[lane * ks + d];
          cq += qI[r * ks + d] * kI[lane * ks + d];
        }
        const float decay = expf(G[i0 + r] - G[i0 + lane]);
        ck *= decay;
        cq *= decay;
      }
      Ck[r * (kRows + 1) + lane] = lane == r ? 0.f : ck;
      Cq[r * (kRows + 1) + lane] = cq;
      // The right-hand side without the chunk's own ancestors.
      float rhs = 0.f;
      if (row_ok && col_ok) {
        const int64_t i = i0 + r;
        rhs = to_f32(v[((b * N + i) * p.Hv + h) * Dv + col]) - expf(G[i]) * u[m] - W[m];
      }
      dI[r * kCols + lane] = rhs;
    }
    __syncthreads();
    if (grp == 0) {  // forward substitution, lane = column (columns are independent)
      for (int r = 0; r < rows; ++r) {
        float s = 0.f;
        for (int j = 0; j < r; ++j) s += Ck[r * (kRows + 1) + j] * dI[j * kCols + lane];
        dI[r * kCols + lane] = bI[r] * (dI[r * kCols + lane] - s);
      }
    }
    __syncthreads();
    for (int m = 0; m < kPerThread; ++m) {
      const int r = grp + kGroups * m;
      if (r >= rows || !col_ok) continue;
      const int64_t i = i0 + r;
      float o = expf(G[i]) * uq[m] + O[m];
      for (int j = 0; j <= r; ++j) o += Cq[r * (kRows + 1) + j] * dI[j * kCols + lane];
      const int64_t at = ((b * N + i) * p.Hv + h) * Dv + col;
      store_f32(static_cast<T*>(p.out) + at, o);
      p.delta[at] = dI[r * kCols + lane];
    }
    __syncthreads();  // delta of this chunk visible to the next chunks; smem tiles free
  }
}

// ---- gdn_commit -------------------------------------------------------------------------------

struct CommitParams {
  float* state;
  const float* k_hat;
  const float* delta;
  const float* gcum;
  const void* path;
  bool path64;
  const void* accepted;
  bool acc64;
  const uint8_t* active;
  int64_t N, Hk, Hv, Dk, Dv, P, rows;
};

__global__ void __launch_bounds__(kThreads) gdn_commit_kernel(CommitParams p) {
  __shared__ int64_t nodes[kThreads];
  __shared__ float weights[kThreads];
  const int64_t b = blockIdx.z, h = blockIdx.y, hk = h / (p.Hv / p.Hk);
  if (p.active != nullptr && p.active[b] == 0) return;  // whole CTA: no barrier is split
  const int64_t d0 = static_cast<int64_t>(blockIdx.x) * p.rows;
  const int64_t rows = p.Dk - d0 < p.rows ? p.Dk - d0 : p.rows;
  const int64_t acc = clamp64(load_index(p.accepted, p.acc64, b), 0, p.P - 1);
  const int64_t last = clamp64(load_index(p.path, p.path64, b * p.P + acc), 0, p.N - 1);
  const float g_last = p.gcum[(b * p.N + last) * p.Hv + h];
  float* S = p.state + ((b * p.Hv + h) * p.Dk + d0) * p.Dv;
  float s[kCommitElems];
  const float decay = expf(g_last);
  for (int m = 0; m < kCommitElems; ++m) {
    const int64_t e = threadIdx.x + static_cast<int64_t>(m) * kThreads;
    s[m] = e < rows * p.Dv ? S[e] * decay : 0.f;
  }
  for (int64_t j0 = 0; j0 <= acc; j0 += kThreads) {
    const int64_t cnt = acc + 1 - j0 < kThreads ? acc + 1 - j0 : kThreads;
    if (threadIdx.x < cnt) {
      const int64_t n = clamp64(load_index(p.path, p.path64, b * p.P + j0 + threadIdx.x), 0,
                                p.N - 1);
      nodes[threadIdx.x] = n;
      weights[threadIdx.x] = expf(g_last - p.gcum[(b * p.N + n) * p.Hv + h]);
    }
    __syncthreads();
    for (int64_t jj = 0; jj < cnt; ++jj) {
      const int64_t n = nodes[jj];
      const float* kh = p.k_hat + ((b * p.N + n) * p.Hk + hk) * p.Dk + d0;
      const float* dl = p.delta + ((b * p.N + n) * p.Hv + h) * p.Dv;
      for (int m = 0; m < kCommitElems; ++m) {
        const int64_t e = threadIdx.x + static_cast<int64_t>(m) * kThreads;
        if (e < rows * p.Dv) s[m] = s[m] + (weights[jj] * kh[e / p.Dv]) * dl[e % p.Dv];
      }
    }
    __syncthreads();
  }
  for (int m = 0; m < kCommitElems; ++m) {
    const int64_t e = threadIdx.x + static_cast<int64_t>(m) * kThreads;
    if (e < rows * p.Dv) S[e] = s[m];
  }
}

Status launched(const char* op) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return Internal(std::string(op) + ": " + cudaGetErrorString(err));
  return Status::Ok();
}

const uint8_t* active_ptr(const TensorView* active) {
  return active == nullptr ? nullptr : static_cast<const uint8_t*>(active->data);
}

// Opts the verify kernel in to `smem` bytes of dynamic shared memory once per device and size
// high-water mark (the first, eager call of a shape; a later capture then records the launch).
template <typename Kernel>
Status opt_in_smem(Kernel kernel, size_t smem) {
  if (smem <= 48 * 1024) return Status::Ok();
  static std::atomic<size_t> opted[64];
  int dev = 0;
  cudaGetDevice(&dev);
  if (dev >= 0 && dev < 64 && opted[dev].load(std::memory_order_relaxed) >= smem)
    return Status::Ok();
  const cudaError_t e =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
  if (e != cudaSuccess)
    return Internal(std::string("gdn_verify: cudaFuncSetAttribute: ") + cudaGetErrorString(e));
  if (dev >= 0 && dev < 64) {
    size_t cur = opted[dev].load(std::memory_order_relaxed);
    while (cur < smem && !opted[dev].compare_exchange_weak(cur, smem)) {
    }
  }
  return Status::Ok();
}

template <typename T>
Status verify_typed(const VerifyParams& p, int64_t B, cudaStream_t s) {
  auto kernel = gdn_verify_kernel<T>;
  const size_t smem = verify_smem_bytes(p.N, p.Dk);
  DIFFTREE_RETURN_IF_ERROR(opt_in_smem(kernel, smem));
  const dim3 grid(static_cast<unsigned>((p.Dv + kCols - 1) / kCols), static_cast<unsigned>(p.Hv),
                  static_cast<unsigned>(B));
  kernel<<<grid, kThreads, smem, s>>>(p);
  return launched("gdn_verify");
}

}  // namespace

Status gdn_conv(const TensorView& x, const TensorView& conv_tail, const TensorView& weight,
                const TensorView* bias, const TensorView& src, bool activation,
                const TensorView& out, Stream stream) {
  ConvParams p{};
  p.x = x.data;
  p.tail = conv_tail.data;
  p.weight = weight.data;
  p.bias = bias == nullptr ? nullptr : bias->data;
  p.src = static_cast<const int32_t*>(src.data);
  p.out = out.data;
  p.B = x.shape[0];
  p.N = x.shape[1];
  p.C = x.shape[2];
  p.K = weight.shape[1];
  p.activation = activation;
  const int64_t total = p.B * p.N * p.C;
  if (total == 0) return Status::Ok();
  if (p.K < 1) return InvalidValue("gdn_conv: the kernel width must be >= 1");
  const int64_t blocks = (total + kThreads * 4 - 1) / (kThreads * 4) < 65536
                             ? (total + kThreads * 4 - 1) / (kThreads * 4)
                             : 65536;
  auto s = static_cast<cudaStream_t>(stream);
  p.blocks = blocks;
  const dim3 grid(static_cast<unsigned>(blocks));
  switch (x.dtype) {
    case DType::kFloat32:
      gdn_conv_kernel<float><<<grid, kThreads, 0, s>>>(p);
      break;
    case DType::kBFloat16:
      gdn_conv_kernel<__nv_bfloat16><<<grid, kThreads, 0, s>>>(p);
      break;
    case DType::kFloat16:
      gdn_conv_kernel<__half><<<grid, kThreads, 0, s>>>(p);
      break;
    default:
      return InvalidType("gdn_conv: x must be float32, float16 or bfloat16");
  }
  return launched("gdn_conv");
}

Status gdn_conv_commit(const TensorView& conv_tail, const TensorView& x, const TensorView& src,
                       const TensorView& path, const TensorView& accepted,
                       const TensorView* active, Stream stream) {
  ConvCommitParams p{};
  p.tail = conv_tail.data;
  p.x = x.data;
  p.src = static_cast<const int32_t*>(src.data);
  p.path = path.data;
  p.path64 = path.dtype == DType::kInt64;
  p.accepted = accepted.data;
  p.acc64 = accepted.dtype == DType::kInt64;
  p.active = active_ptr(active);
  const int64_t B = conv_tail.shape[0];
  p.C = conv_tail.shape[1];
  p.K = conv_tail.shape[2] + 1;
  p.N = x.shape[1];
  p.P = path.shape[1];
  if (p.K > kMaxConvK)
    return Unsupported("gdn_conv_commit: the CUDA kernel supports a conv width K <= " +
                       std::to_string(kMaxConvK));
  if (B == 0 || p.C == 0 || p.K == 1 || p.N == 0 || p.P == 0) return Status::Ok();
  const dim3 grid(static_cast<unsigned>((p.C + kThreads - 1) / kThreads),
                  static_cast<unsigned>(B));
  auto s = static_cast<cudaStream_t>(stream);
  switch (x.dtype) {
    case DType::kFloat32:
      gdn_conv_commit_kernel<float><<<grid, kThreads, 0, s>>>(p);
      break;
    case DType::kBFloat16:
    case DType::kFloat16:  // a bitwise copy: one 16-bit kernel serves both
      gdn_conv_commit_kernel<__half><<<grid, kThreads, 0, s>>>(p);
      break;
    default:
      return InvalidType("gdn_conv_commit: x must be float32, float16 or bfloat16");
  }
  return launched("gdn_conv_commit");
}

Status gdn_verify(const TensorView& q, const TensorView& k, const TensorView& v,
                  const TensorView& g, const TensorView& beta, const TensorView& state,
                  const TensorView* tree_anc, const TensorView& out, const TensorView& k_hat,
                  const TensorView& delta, const TensorView& gcum, Stream stream) {
  VerifyParams p{};
  p.q = q.data;
  p.k = k.data;
  p.v = v.data;
  p.g = static_cast<const float*>(g.data);
  p.beta = static_cast<const float*>(beta.data);
  p.state = static_cast<const float*>(state.data);
  p.anc = tree_anc == nullptr ? nullptr : static_cast<const int32_t*>(tree_anc->data);
  p.out = out.data;
  p.k_hat = static_cast<float*>(k_hat.data);
  p.delta = static_cast<float*>(delta.data);
  p.gcum = static_cast<float*>(gcum.data);
  const int64_t B = q.shape[0];
  p.N = q.shape[1];
  p.Hk = q.shape[2];
  p.Dk = q.shape[3];
  p.Hv = v.shape[2];
  p.Dv = v.shape[3];
  p.words = (p.N + 31) / 32;
  if (p.Dk > kMaxHeadDim || p.Dv > kMaxHeadDim)
    return Unsupported("gdn_verify: the CUDA kernel supports head dims D_k, D_v <= " +
                       std::to_string(kMaxHeadDim));
  if (p.N > kMaxRows)
    return Unsupported("gdn_verify: the CUDA kernel supports N <= " + std::to_string(kMaxRows) +
                       " rows");
  if (B * p.N * p.Hv * p.Dv == 0) return Status::Ok();
  if (p.Hk <= 0 || p.Dk <= 0 || p.Hv % p.Hk != 0)
    return InvalidValue("gdn_verify: H_v must be a positive multiple of H_k and D_k >= 1");
  auto s = static_cast<cudaStream_t>(stream);
  switch (q.dtype) {
    case DType::kFloat32:
      return verify_typed<float>(p, B, s);
    case DType::kBFloat16:
      return verify_typed<__nv_bfloat16>(p, B, s);
    case DType::kFloat16:
      return verify_typed<__half>(p, B, s);
    default:
      return InvalidType("gdn_verify: q must be float32, float16 or bfloat16");
  }
}

Status gdn_commit(const TensorView& state, const TensorView& k_hat, const TensorView& delta,
                  const TensorView& gcum, const TensorView& path, const TensorView& accepted,
                  const TensorView* active, Stream stream) {
  CommitParams p{};
  p.state = static_cast<float*>(state.data);
  p.k_hat = static_cast<const float*>(k_hat.data);
  p.delta = static_cast<const float*>(delta.data);
  p.gcum = static_cast<const float*>(gcum.data);
  p.path = path.data;
  p.path64 = path.dtype == DType::kInt64;
  p.accepted = accepted.data;
  p.acc64 = accepted.dtype == DType::kInt64;
  p.active = active_ptr(active);
  const int64_t B = state.shape[0];
  p.Hv = state.shape[1];
  p.Dk = state.shape[2];
  p.Dv = state.shape[3];
  p.N = delta.shape[1];
  p.Hk = k_hat.shape[2];
  p.P = path.shape[1];
  if (p.Dv > kThreads * kCommitElems)
    return Unsupported("gdn_commit: the CUDA kernel supports D_v <= " +
                       std::to_string(kThreads * kCommitElems));
  if (B * p.Hv * p.Dk * p.Dv == 0 || p.N == 0 || p.P == 0) return Status::Ok();
  if (p.Hk <= 0 || p.Hv % p.Hk != 0)
    return InvalidValue("gdn_commit: H_v must be a positive multiple of H_k");
  // Rows per CTA: as many as kThreads * kCommitElems entries allow.
  p.rows = kThreads * kCommitElems / p.Dv < p.Dk ? kThreads * kCommitElems / p.Dv : p.Dk;
  const dim3 grid(static_cast<unsigned>((p.Dk + p.rows - 1) / p.rows),
                  static_cast<unsigned>(p.Hv), static_cast<unsigned>(B));
  gdn_commit_kernel<<<grid, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(p);
  return launched("gdn_commit");
}

}  // namespace difftree::cuda
