// tree_attention on the device: FlashAttention-2-style forward for tree verification.
//
// One CTA = one (request b, KV head, 64-row query tile, KV split). The G = H_q / H_kv query heads
// of a KV head are packed into the query rows node-major (row r = node i * G + head g), so a
// 64-row tile holds 64 / G consecutive nodes and K/V tiles are read once for the whole GQA group.
// Keys are streamed in tiles of 64 rows through a 2-stage cp.async pipeline:
//   1. the committed keys the tile can see (a split handles one chunk of them): positions
//      [0, prefix_len[b]), or with a window W only [prefix_len[b] + min_pos - W + 1, prefix_len[b])
//      (min_pos: the smallest row position in the tile), masked per row where the window starts;
//   2. then (last split only) the tree rows prefix_len[b] + j, j <= the tile's largest node,
//      under the ancestor bitmask (or `j <= i` for chains: no bitmask reads) and the window.
// Row r lives in slot r of a full cache, slot r % S of a ring. One online softmax (fp32, log2
// domain) runs across both phases. S = Q K^T and O += P V use mma.sync.m16n8k16 (bf16 / fp16 in,
// fp32 accumulate; mma.cuh), fragments loaded with ldmatrix; each of the 4 warps owns 16 query
// rows. K and V head sizes may differ (D_k for Q K^T, D_v for P V). With num_splits > 1 every
// split writes its normalised partial output and log-sum-exp to the caller's workspace and a small
// kernel combines them. An attention sink (one extra logit per query head in the denominator)
// enters once, at the final normalisation: the epilogue of the single pass or the combine.
//
// Per-round values (prefix_len, num_nodes, anc, depth, sinks) are read from device memory and the
// grid depends only on shapes, so a captured CUDA graph replays with new values. Out-of-range
// prefix_len is clamped to [0, S - N] on the device for a full cache and to >= 0 for a ring (the
// CPU path reports it).
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <string>

#include "index.cuh"
#include "launchers.h"
#include "mma.cuh"

namespace difftree::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kTileM = kWarps * 16;  // query rows per CTA
constexpr int kTileN = 64;           // keys per tile
constexpr float kLog2e = 1.4426950408889634f;
// Row depths are clamped to +-2^31 when read, so position arithmetic stays far from overflow.
constexpr int64_t kPosLimit = int64_t{1} << 31;

struct AttnParams {
  const void* q;
  const void* k;
  const void* v;
  void* out;
  int64_t q_s[3];  // strides (elements) of q over b, h, n (d is contiguous)
  int64_t k_s[3];  // strides of k_cache over b, h, s
  int64_t v_s[3];
  int64_t o_s[3];
  const void* prefix_len;
  bool prefix64;
  const int32_t* anc;     // [B, N, anc_words] or null (chain)
  const void* num_nodes;  // [B] or null (all N valid)
  bool nodes64;
  const void* depth;    // [B, N] row positions relative to prefix_len, or null (row i at i)
  bool depth64;
  const float* sinks;   // [H_q] or null
  int64_t window;       // W (0: none)
  bool ring;            // slot = row % S
  int B, Hq, Hkv, G, N, anc_words;
  int64_t S;         // cache rows (slots)
  float scale_log2;  // softmax scale * log2(e)
  int num_splits;
  float* ws_o;    // [splits, B, Hq, N, D_v] (num_splits > 1)
  float* ws_lse;  // [splits, B, Hq, N]
};

__device__ __forceinline__ int clamp_nodes(const AttnParams& p, int b) {
  if (p.num_nodes == nullptr) return p.N;
  const int64_t n = load_index(p.num_nodes, p.nodes64, b);
  return static_cast<int>(n < 0 ? 0 : (n > p.N ? p.N : n));
}

// pos(i): the row's position relative to prefix_len (depth[b, i], or i for causal rows).
__device__ __forceinline__ int64_t row_pos(const AttnParams& p, int b, int i) {
  if (p.depth == nullptr) return i;
  const int64_t d = load_index(p.depth, p.depth64, static_cast<int64_t>(b) * p.N + i);
  return d < -kPosLimit ? -kPosLimit : (d > kPosLimit ? kPosLimit : d);
}

// ---- the attention kernel -----------------------------------------------------------------------

template <typename T, int DK, int DV, bool kChain, bool kWindow>
__global__ void __launch_bounds__(kThreads) tree_attention_kernel(const AttnParams p) {
  constexpr int kStrideK = DK + 8;  // smem row strides (elements): conflict-free ldmatrix
  constexpr int kStrideV = DV + 8;
  constexpr int kChunksK = DK / 8;  // 16-byte chunks per row
  constexpr int kChunksV = DV / 8;
  constexpr int kKSteps = DK / 16;  // k-steps of S = Q K^T
  constexpr int kDTiles = DV / 8;   // n8 tiles of O
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);
  T* sK = sQ + kTileM * kStrideK;      // [2][kTileN][kStrideK]
  T* sV = sK + 2 * kTileN * kStrideK;  // [2][kTileN][kStrideV]
  // [2][kTileN] positions of a tree tile's keys (kWindow)
  int64_t* sPos = reinterpret_cast<int64_t*>(sV + 2 * kTileN * kStrideV);

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int m0 = blockIdx.x * kTileM;
  const int kvh = blockIdx.y / p.num_splits;
  const int split = blockIdx.y % p.num_splits;
  const int b = blockIdx.z;
  const int rows_total = p.G * p.N;

  // Per-request values from device memory.
  int64_t P = load_index(p.prefix_len, p.prefix64, b);
  if (P < 0) P = 0;
  if (!(kWindow && p.ring) && P > p.S - p.N) P = p.S - p.N;
  const int n_valid = clamp_nodes(p, b);
  const int i_first = m0 / p.G;
  const int i_max = min(p.N - 1, (min(m0 + kTileM, rows_total) - 1) / p.G);

  // Committed keys this tile can see: [pre_lo, P). A window starts them at the smallest row
  // position's window; a ring holds only the last S positions.
  int64_t pre_lo = 0;
  if (kWindow) {
    int64_t min_pos = kPosLimit;
    if (p.depth == nullptr) {
      min_pos = i_first;
    } else {
      for (int i = i_first; i <= i_max; ++i) {
        const int64_t d = row_pos(p, b, i);
        min_pos = d < min_pos ? d : min_pos;
      }
    }
    // At most W - 1 - min_pos positions before P (computed without forming P + x: a ring's
    // prefix_len may be any int64).
    int64_t back = p.window - 1 - min_pos;
    back = back < 0 ? 0 : (back > P ? P : back);
    if (p.ring && back > p.S) back = p.S;
    pre_lo = P - back;
  }

  // This split's chunk [lo, hi) of them, tile-aligned and balanced on the actual length.
  const int64_t pre_len = P - pre_lo;
  int64_t chunk = (pre_len + p.num_splits - 1) / p.num_splits;
  chunk = (chunk + kTileN - 1) / kTileN * kTileN;
  const int64_t off = static_cast<int64_t>(split) * chunk;  // offsets into [pre_lo, P)
  const int64_t off_hi = off + chunk < pre_len ? off + chunk : pre_len;
  const int64_t lo = pre_lo + (off < pre_len ? off : pre_len), hi = pre_lo + off_hi;
  const int n_pre = hi > lo ? static_cast<int>((hi - lo + kTileN - 1) / kTileN) : 0;
  // Tree keys [tree_lo, tree_keys): only the last split; a node only sees itself and earlier
  // nodes, and causal rows without depth only the W - 1 rows before them.
  const bool owns_tree = split == p.num_splits - 1;
  const int tree_keys = owns_tree ? i_max + 1 : 0;
  int tree_lo = 0;
  if (kWindow && p.depth == nullptr && static_cast<int64_t>(i_first) >= p.window)
    tree_lo = static_cast<int>((i_first - p.window + 1) / 32 * 32);  // word-aligned
  const int n_tree = tree_keys > tree_lo ? (tree_keys - tree_lo + kTileN - 1) / kTileN : 0;
  const int n_tiles = n_pre + n_tree;

  const T* qg = static_cast<const T*>(p.q);
  const T* kg = static_cast<const T*>(p.k) + b * p.k_s[0] + kvh * p.k_s[1];
  const T* vg = static_cast<const T*>(p.v) + b * p.v_s[0] + kvh * p.v_s[1];

  // Rows owned by this thread in the mma accumulator layout: r_lo and r_lo + 8 of the tile.
  const int r_lo = m0 + warp * 16 + (lane >> 2);
  const int r_hi = r_lo + 8;

  if (n_tiles == 0) {
    // An empty split (fewer visible committed keys than the split count covers): contributes
    // nothing.
    if (p.num_splits > 1 && (lane & 3) == 0) {
      const int rs[2] = {r_lo, r_hi};
      for (int e = 0; e < 2; ++e) {
        if (rs[e] >= rows_total) continue;
        const int i = rs[e] / p.G, h = kvh * p.G + rs[e] % p.G;
        const int64_t row = (static_cast<int64_t>(b) * p.Hq + h) * p.N + i;
        p.ws_lse[static_cast<int64_t>(split) * p.B * p.Hq * p.N + row] = -INFINITY;
      }
    }
    return;
  }

  // Q tile -> shared (zero rows past the end).
  for (int c = tid; c < kTileM * kChunksK; c += kThreads) {
    const int r = c / kChunksK, col = (c % kChunksK) * 8;
    const int R = m0 + r;
    const bool ok = R < rows_total;
    const int i = ok ? R / p.G : 0, h = ok ? kvh * p.G + R % p.G : 0;
    const T* src = qg + b * p.q_s[0] + h * p.q_s[1] + i * p.q_s[2] + col;
    cp_async16(sQ + r * kStrideK + col, ok ? src : qg, ok);
  }

  // K/V tile t -> stage. Keys of a tile are consecutive rows (wrapping in a ring).
  auto load_tile = [&](int t, int stage) {
    int64_t slot0;  // the slot of the tile's first key
    int valid;
    if (t < n_pre) {
      const int64_t row0 = lo + static_cast<int64_t>(t) * kTileN;
      valid = static_cast<int>(min(static_cast<int64_t>(kTileN), hi - row0));
      slot0 = kWindow && p.ring ? row0 % p.S : row0;
    } else {
      const int j0 = tree_lo + (t - n_pre) * kTileN;
      valid = min(kTileN, tree_keys - j0);
      slot0 = kWindow && p.ring ? (P % p.S + j0) % p.S : P + j0;
      if (kWindow && tid < kTileN)
        sPos[stage * kTileN + tid] = j0 + tid < p.N ? row_pos(p, b, j0 + tid) : 0;
    }
    T* dk = sK + stage * kTileN * kStrideK;
    T* dv = sV + stage * kTileN * kStrideV;
    for (int c = tid; c < kTileN * kChunksK; c += kThreads) {
      const int r = c / kChunksK, col = (c % kChunksK) * 8;
      const bool ok = r < valid;
      int64_t s = slot0 + r;
      if (kWindow && p.ring && s >= p.S) s %= p.S;
      cp_async16(dk + r * kStrideK + col, kg + (ok ? s : 0) * p.k_s[2] + col, ok);
    }
    for (int c = tid; c < kTileN * kChunksV; c += kThreads) {
      const int r = c / kChunksV, col = (c % kChunksV) * 8;
      const bool ok = r < valid;
      int64_t s = slot0 + r;
      if (kWindow && p.ring && s >= p.S) s %= p.S;
      cp_async16(dv + r * kStrideV + col, vg + (ok ? s : 0) * p.v_s[2] + col, ok);
    }
  };

  load_tile(0, 0);
  cp_async_commit();

  uint32_t qf[kKSteps][4];
  float o[kDTiles][4];
#pragma unroll
  for (int d = 0; d < kDTiles; ++d) o[d][0] = o[d][1] = o[d][2] = o[d][3] = 0.f;
  float m_run[2] = {-INFINITY, -INFINITY};
  float l_run[2] = {0.f, 0.f};

  const int i_lo = r_lo / p.G, i_hi = r_hi / p.G;  // node of each owned row (>= N: tile padding)
  const int t4 = lane & 3;
  // Positions of the owned rows (relative to P) and the first committed position each sees.
  int64_t qpos[2] = {0, 0}, first_key[2] = {0, 0};
  if (kWindow) {
    const int is[2] = {i_lo, i_hi};
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      qpos[h] = is[h] < p.N ? row_pos(p, b, is[h]) : 0;
      int64_t back = p.window - 1 - qpos[h];  // P + qpos - W + 1 without forming P + qpos
      back = back < 0 ? 0 : (back > P ? P : back);
      first_key[h] = P - back;
    }
  }

  for (int t = 0; t < n_tiles; ++t) {
    if (t + 1 < n_tiles) load_tile(t + 1, (t + 1) & 1);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    if (t == 0) {
#pragma unroll
      for (int kk = 0; kk < kKSteps; ++kk)
        ldmatrix_x4(qf[kk], sQ + (warp * 16 + (lane & 15)) * kStrideK + kk * 16 + (lane >> 4) * 8);
    }
    const T* tK = sK + (t & 1) * kTileN * kStrideK;
    const T* tV = sV + (t & 1) * kTileN * kStrideV;

    // S = Q K^T for this warp's 16 rows x 64 keys.
    float s[kTileN / 8][4];
#pragma unroll
    for (int n = 0; n < kTileN / 8; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < kKSteps; ++kk) {
#pragma unroll
      for (int np = 0; np < kTileN / 16; ++np) {
        uint32_t kb[4];
        ldmatrix_x4(kb, tK + ((np * 2 + (lane >> 4)) * 8 + (lane & 7)) * kStrideK + kk * 16 +
                            ((lane >> 3) & 1) * 8);
        Mma<T>::run(s[2 * np], qf[kk], kb[0], kb[1]);
        Mma<T>::run(s[2 * np + 1], qf[kk], kb[2], kb[3]);
      }
    }

    // Scale and mask. s[n][e]: row (e < 2 ? r_lo : r_hi), key n * 8 + 2 * t4 + (e & 1).
    if (t < n_pre) {
      const int64_t row0 = lo + static_cast<int64_t>(t) * kTileN;
      const int valid = static_cast<int>(min(static_cast<int64_t>(kTileN), hi - row0));
      // Keys before first_key[h] are out of row h's window (as tile offsets, clamped).
      int start[2] = {0, 0};
      if (kWindow) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int64_t d = first_key[h] - row0;
          start[h] = d < 0 ? 0 : (d > kTileN ? kTileN : static_cast<int>(d));
        }
      }
#pragma unroll
      for (int n = 0; n < kTileN / 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int key = n * 8 + 2 * t4 + (e & 1);
          s[n][e] = key < valid && key >= start[e >> 1] ? s[n][e] * p.scale_log2 : -INFINITY;
        }
    } else {
      const int j0 = tree_lo + (t - n_pre) * kTileN;
      uint32_t words[2][2] = {{0u, 0u}, {0u, 0u}};
      if (!kChain) {
        const int is[2] = {i_lo, i_hi};
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int i = is[h];
          if (i < n_valid) {
            const int32_t* row = p.anc + (static_cast<int64_t>(b) * p.N + i) * p.anc_words;
            const int w0 = j0 / 32;
            words[h][0] = static_cast<uint32_t>(row[w0]);
            words[h][1] = w0 + 1 < p.anc_words ? static_cast<uint32_t>(row[w0 + 1]) : 0u;
          }
        }
      }
      const int64_t* kpos = sPos + (t & 1) * kTileN;  // the keys' positions
#pragma unroll
      for (int n = 0; n < kTileN / 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int jl = n * 8 + 2 * t4 + (e & 1);
          const int j = j0 + jl;
          const int i = e < 2 ? i_lo : i_hi;
          bool vis;
          if (kChain) {
            vis = j <= i;
          } else if (i < n_valid && j < n_valid) {
            vis = j <= i && ((words[e >> 1][jl >> 5] >> (jl & 31)) & 1u);
          } else {
            vis = i == j;
          }
          // The window over tree rows: pos(i) - pos(j) < W (i itself always passes).
          if (kWindow && vis && j != i) vis = j < p.N && qpos[e >> 1] - kpos[jl] < p.window;
          s[n][e] = vis ? s[n][e] * p.scale_log2 : -INFINITY;
        }
    }

    // Online softmax update (two rows per thread; a row lives in the 4 lanes of a quad).
    float alpha[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float mx = -INFINITY;
#pragma unroll
      for (int n = 0; n < kTileN / 8; ++n) mx = fmaxf(mx, fmaxf(s[n][2 * h], s[n][2 * h + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float m_new = fmaxf(m_run[h], mx);
      const float m_use = m_new == -INFINITY ? 0.f : m_new;  // nothing visible yet: no NaN
      alpha[h] = exp2f(m_run[h] - m_use);
      m_run[h] = m_new;
      float sum = 0.f;
#pragma unroll
      for (int n = 0; n < kTileN / 8; ++n) {
        s[n][2 * h] = exp2f(s[n][2 * h] - m_use);
        s[n][2 * h + 1] = exp2f(s[n][2 * h + 1] - m_use);
        sum += s[n][2 * h] + s[n][2 * h + 1];
      }
      l_run[h] = l_run[h] * alpha[h] + sum;  // per-lane partial; reduced over the quad at the end
    }
#pragma unroll
    for (int d = 0; d < kDTiles; ++d) {
      o[d][0] *= alpha[0];
      o[d][1] *= alpha[0];
      o[d][2] *= alpha[1];
      o[d][3] *= alpha[1];
    }

    // O += P V: the S accumulators of key tiles 2ks, 2ks+1 are the A fragment of k-step ks.
#pragma unroll
    for (int ks = 0; ks < kTileN / 16; ++ks) {
      const uint32_t pa[4] = {Mma<T>::pack(s[2 * ks][0], s[2 * ks][1]),
                              Mma<T>::pack(s[2 * ks][2], s[2 * ks][3]),
                              Mma<T>::pack(s[2 * ks + 1][0], s[2 * ks + 1][1]),
                              Mma<T>::pack(s[2 * ks + 1][2], s[2 * ks + 1][3])};
#pragma unroll
      for (int dp = 0; dp < kDTiles / 2; ++dp) {
        uint32_t vb[4];
        ldmatrix_x4_trans(vb, tV + (ks * 16 + ((lane >> 3) & 1) * 8 + (lane & 7)) * kStrideV +
                                  (dp * 2 + (lane >> 4)) * 8);
        Mma<T>::run(o[2 * dp], pa, vb[0], vb[1]);
        Mma<T>::run(o[2 * dp + 1], pa, vb[2], vb[3]);
      }
    }
    __syncthreads();  // the next iteration overwrites this stage
  }
  cp_async_wait<0>();

  // Epilogue: normalise and store (or store the partial + LSE for the combine kernel).
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    float l = l_run[h];
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    const int r = h == 0 ? r_lo : r_hi;
    if (r >= rows_total) continue;
    const int i = r / p.G, hq = kvh * p.G + r % p.G;
    if (p.num_splits == 1) {
      float inv = l > 0.f ? 1.f / l : 0.f;
      if (p.sinks != nullptr) {
        // One more term e^{sink} in the denominator, against the running max in log2 units.
        const float sink = p.sinks[hq] * kLog2e;
        const float m = fmaxf(m_run[h], sink);
        const float a = m_run[h] == -INFINITY ? 0.f : exp2f(m_run[h] - m);
        const float denom = l * a + exp2f(sink - m);
        inv = denom > 0.f ? a / denom : 0.f;
      }
      T* dst = static_cast<T*>(p.out) + b * p.o_s[0] + hq * p.o_s[1] + i * p.o_s[2];
#pragma unroll
      for (int d = 0; d < kDTiles; ++d) {
        const uint32_t v = Mma<T>::pack(o[d][2 * h] * inv, o[d][2 * h + 1] * inv);
        *reinterpret_cast<uint32_t*>(dst + d * 8 + 2 * t4) = v;
      }
    } else {
      const float inv = l > 0.f ? 1.f / l : 0.f;
      const int64_t row = (static_cast<int64_t>(b) * p.Hq + hq) * p.N + i;
      const int64_t srow = static_cast<int64_t>(split) * p.B * p.Hq * p.N + row;
      float* dst = p.ws_o + srow * DV;
#pragma unroll
      for (int d = 0; d < kDTiles; ++d)
        store2(dst + d * 8 + 2 * t4, o[d][2 * h] * inv, o[d][2 * h + 1] * inv);
      if (t4 == 0) p.ws_lse[srow] = l > 0.f ? m_run[h] + log2f(l) : -INFINITY;
    }
  }
}

// ---- split combine: one warp per output row ---------------------------------------------------

template <typename T, int DV>
__global__ void __launch_bounds__(128) tree_attention_combine_kernel(const AttnParams p) {
  constexpr int kPerLane = DV / 32;
  const int64_t rows = static_cast<int64_t>(p.B) * p.Hq * p.N;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * 4 + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (row >= rows) return;
  const int i = static_cast<int>(row % p.N);
  const int64_t bh = row / p.N;
  const int hq = static_cast<int>(bh % p.Hq), b = static_cast<int>(bh / p.Hq);
  // The sink is one more "split" with an empty output and log-sum-exp sinks[hq] (log2 units).
  const float sink = p.sinks != nullptr ? p.sinks[hq] * kLog2e : -INFINITY;
  float m = sink;
  for (int s = 0; s < p.num_splits; ++s) m = fmaxf(m, p.ws_lse[s * rows + row]);
  float acc[kPerLane] = {};
  float wsum = 0.f;
  if (m != -INFINITY) {
    for (int s = 0; s < p.num_splits; ++s) {
      const float lse = p.ws_lse[s * rows + row];
      if (lse == -INFINITY) continue;
      const float w = exp2f(lse - m);
      wsum += w;
      const float* src = p.ws_o + (s * rows + row) * DV;
#pragma unroll
      for (int e = 0; e < kPerLane; ++e) acc[e] += w * src[lane + 32 * e];
    }
    if (sink != -INFINITY) wsum += exp2f(sink - m);
  }
  const float inv = wsum > 0.f ? 1.f / wsum : 0.f;
  T* dst = static_cast<T*>(p.out) + b * p.o_s[0] + hq * p.o_s[1] + i * p.o_s[2];
#pragma unroll
  for (int e = 0; e < kPerLane; ++e) {
    store(dst + lane + 32 * e, acc[e] * inv);
  }
}

constexpr size_t smem_bytes(int DK, int DV) {
  return (static_cast<size_t>(kTileM + 2 * kTileN) * (DK + 8) +
          static_cast<size_t>(2 * kTileN) * (DV + 8)) * 2 +
         2 * kTileN * sizeof(int64_t);
}

template <typename T, int DK, int DV, bool kChain, bool kWindow>
Status launch_typed(const AttnParams& p, cudaStream_t stream) {
  auto kernel = tree_attention_kernel<T, DK, DV, kChain, kWindow>;
  const size_t smem = smem_bytes(DK, DV);
  if (smem > 48 * 1024) {
    // Opt in to > 48 KiB of shared memory once per device (the first, eager call; a later
    // capture then records only the launch).
    static std::atomic<uint64_t> opted_in{0};
    int dev = 0;
    cudaGetDevice(&dev);
    const uint64_t bit = dev < 64 ? (uint64_t{1} << dev) : 0;
    if (bit == 0 || (opted_in.load(std::memory_order_relaxed) & bit) == 0) {
      const cudaError_t e = cudaFuncSetAttribute(
          kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
      if (e != cudaSuccess)
        return Internal(std::string("tree_attention: cudaFuncSetAttribute: ") +
                        cudaGetErrorString(e));
      opted_in.fetch_or(bit, std::memory_order_relaxed);
    }
  }
  const int m_tiles = (p.G * p.N + kTileM - 1) / kTileM;
  const dim3 grid(static_cast<unsigned>(m_tiles), static_cast<unsigned>(p.Hkv * p.num_splits),
                  static_cast<unsigned>(p.B));
  kernel<<<grid, kThreads, smem, stream>>>(p);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    return Internal(std::string("tree_attention: ") + cudaGetErrorString(err));
  if (p.num_splits > 1) {
    const int64_t rows = static_cast<int64_t>(p.B) * p.Hq * p.N;
    auto combine = tree_attention_combine_kernel<T, DV>;
    combine<<<static_cast<unsigned>((rows + 3) / 4), 128, 0, stream>>>(p);
    err = cudaGetLastError();
    if (err != cudaSuccess)
      return Internal(std::string("tree_attention (combine): ") + cudaGetErrorString(err));
  }
  return Status::Ok();
}

// The window (and ring) code is compiled only into the kWindow kernels, so plain tree attention
// keeps its registers (occupancy).
template <typename T, int DK, int DV>
Status launch_chain(const AttnParams& p, bool chain, cudaStream_t s) {
  if (p.window > 0)
    return chain ? launch_typed<T, DK, DV, true, true>(p, s)
                 : launch_typed<T, DK, DV, false, true>(p, s);
  return chain ? launch_typed<T, DK, DV, true, false>(p, s)
               : launch_typed<T, DK, DV, false, false>(p, s);
}

// The compiled head sizes (D_k, D_v): 64/64, 128/128 and DeepSeek-V3 latent attention's 192/128.
bool supported_dims(int64_t dk, int64_t dv) {
  return (dk == 64 && dv == 64) || (dk == 128 && dv == 128) || (dk == 192 && dv == 128);
}

template <typename T>
Status launch_dtype(const AttnParams& p, int dk, int dv, bool chain, cudaStream_t s) {
  (void)dv;
  if (dk == 64) return launch_chain<T, 64, 64>(p, chain, s);
  if (dk == 128) return launch_chain<T, 128, 128>(p, chain, s);
  return launch_chain<T, 192, 128>(p, chain, s);
}

bool aligned16(const TensorView& t) {
  if (reinterpret_cast<uintptr_t>(t.data) % 16 != 0) return false;
  for (int d = 0; d < t.ndim - 1; ++d)
    if (t.shape[d] > 1 && t.strides[d] % 8 != 0) return false;
  return true;
}

}  // namespace

Status tree_attention(const TensorView& q, const TensorView& k_cache, const TensorView& v_cache,
                      const TensorView& prefix_len, const TensorView* tree_anc,
                      const TensorView* num_nodes, float scale, bool is_chain,
                      const AttentionVariant& variant, int num_splits, const TensorView& out,
                      void* workspace, Stream stream) {
  const int64_t B = q.shape[0], Hq = q.shape[1], N = q.shape[2], Dk = q.shape[3];
  const int64_t Hkv = k_cache.shape[1], Dv = v_cache.shape[3];
  if (q.dtype != DType::kBFloat16 && q.dtype != DType::kFloat16)
    return Unsupported("tree_attention: the CUDA kernel supports bfloat16 and float16, got " +
                       std::string(dtype_name(q.dtype)));
  if (!supported_dims(Dk, Dv))
    return Unsupported(
        "tree_attention: the CUDA kernel supports head_dim (D_k, D_v) in {(64, 64), (128, 128), "
        "(192, 128)}, got (" +
        std::to_string(Dk) + ", " + std::to_string(Dv) + ")");
  if (!aligned16(q) || !aligned16(k_cache) || !aligned16(v_cache) || !aligned16(out))
    return InvalidValue(
        "tree_attention: the CUDA kernel needs 16-byte aligned q/k_cache/v_cache/out with "
        "strides that are multiples of 8 elements (call .contiguous())");
  if (B == 0 || Hq == 0) return Status::Ok();
  if (B > 65535) return Unsupported("tree_attention: the CUDA kernel supports B <= 65535");
  AttnParams p{};
  p.q = q.data;
  p.k = k_cache.data;
  p.v = v_cache.data;
  p.out = out.data;
  for (int d = 0; d < 3; ++d) {
    p.q_s[d] = q.strides[d];
    p.k_s[d] = k_cache.strides[d];
    p.v_s[d] = v_cache.strides[d];
    p.o_s[d] = out.strides[d];
  }
  p.prefix_len = prefix_len.data;
  p.prefix64 = prefix_len.dtype == DType::kInt64;
  p.anc = (is_chain || tree_anc == nullptr) ? nullptr : tree_anc->ptr<const int32_t>();
  p.num_nodes = num_nodes != nullptr ? num_nodes->data : nullptr;
  p.nodes64 = num_nodes != nullptr && num_nodes->dtype == DType::kInt64;
  // The window's positions need depth only when given; without a window depth is unused.
  p.window = variant.window > 0 ? variant.window : 0;
  p.depth = p.window > 0 && variant.depth != nullptr ? variant.depth->data : nullptr;
  p.depth64 = variant.depth != nullptr && variant.depth->dtype == DType::kInt64;
  p.sinks = variant.sinks != nullptr ? variant.sinks->ptr<const float>() : nullptr;
  p.ring = variant.ring;
  p.B = static_cast<int>(B);
  p.Hq = static_cast<int>(Hq);
  p.Hkv = static_cast<int>(Hkv);
  p.G = static_cast<int>(Hq / Hkv);
  p.N = static_cast<int>(N);
  p.anc_words = static_cast<int>((N + 31) / 32);
  p.S = k_cache.shape[2];
  p.scale_log2 = scale * kLog2e;
  p.num_splits = num_splits < 1 ? 1 : num_splits;
  if (Hkv * p.num_splits > 65535)
    return Unsupported("tree_attention: H_kv * num_splits must be <= 65535 (grid limit), got " +
                       std::to_string(Hkv * p.num_splits));
  if (p.num_splits > 1) {
    p.ws_o = static_cast<float*>(workspace);
    p.ws_lse = p.ws_o + static_cast<int64_t>(p.num_splits) * B * Hq * N * Dv;
  }
  const bool chain = p.anc == nullptr;
  auto s = static_cast<cudaStream_t>(stream);
  if (q.dtype == DType::kBFloat16)
    return launch_dtype<__nv_bfloat16>(p, int(Dk), int(Dv), chain, s);
  return launch_dtype<__half>(p, int(Dk), int(Dv), chain, s);
}

}  // namespace difftree::cuda
