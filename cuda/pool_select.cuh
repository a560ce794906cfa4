// Best-first selection over a prefix-closed candidate pool on the device: the one selector behind
// TAPS (cuda/taps_select.cu, reach over a beam pool) and D²SD (cuda/d2sd.cu, the trie of the first
// draft and its re-drafted branches); the device counterpart of cpu/pool_select.{h,cpp}, exact and
// bit-identical to it. One CTA per request.
//
// The CPU heap pops the top min(N, pool rows) rows under the total order (score desc, depth asc,
// earlier parent, smaller pool index), "earlier parent" being the parent's output position,
// score(i) = fp32(score(parent) + edge[i]). The order restricted to one depth is (score desc,
// parent's rank within its depth, pool index), so it is computed level by level:
//   1. depth of every row (walk to the root), rows bucketed by depth;
//   2. for depth 1, 2, ...: score = fp32(score(parent) + edge) and the within-depth rank by
//      counting over the unique key ordered(score) << 32 | ~(parent's rank << 16 | row);
//   3. the global key ordered(score) << 32 | ~(depth << 16 | within-depth rank) is unique; an exact
//      radix select keeps the best min(N, pool rows) (the root forced first), rank counting sorts
//      them, and block_finalize_tree derives links, anc and padding.
// Because edges are <= 0 a child never ranks before its parent, so the kept rows are prefix-closed
// and parent < child. Rows (and their within-depth ranks) must fit in 16 bits: pools of at most
// 65536 rows (the dispatch layer checks it).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "block_select.cuh"
#include "sampling_math.h"
#include "scratch_layouts.h"
#include "tree_build.cuh"

namespace difftree::cuda {

constexpr int kPoolThreads = 512;
constexpr int64_t kMaxPoolRows = 65536;

// Static shared memory of the selection (the kernel declares one and passes it).
struct PoolSmem {
  SelectSmem ss;
  int warp_sums[33];
  int maxd, slot;
};

template <typename T>
__device__ __forceinline__ T* at_offset(unsigned char* base, size_t off) {
  return reinterpret_cast<T*>(base + off);
}

// Selects request rows into `o` (row offset applied, o.N = N). The caller has written par[0, n)
// of the layout (par[0] = -1, 0 <= par[i] < i) before calling; edge(i) is row i's edge score
// (<= 0; row 0 ignored), token(i) its token. All threads call; n in [1, P1].
template <typename EdgeFn, typename TokenFn>
__device__ void block_pool_select(unsigned char* base, const PoolLayout& lay, int n, EdgeFn edge,
                                  TokenFn token, const TreeRows& o, PoolSmem& sm) {
  const int tid = threadIdx.x, T = blockDim.x, N = o.N;
  uint64_t* key = at_offset<uint64_t>(base, lay.key);
  uint64_t* sel_key = at_offset<uint64_t>(base, lay.sel_key);
  int* par = at_offset<int>(base, lay.par);
  int* dep = at_offset<int>(base, lay.dep);
  float* reach = at_offset<float>(base, lay.reach);
  int* drank = at_offset<int>(base, lay.drank);
  int* lvl = at_offset<int>(base, lay.lvl);
  int* outpos = at_offset<int>(base, lay.outpos);
  int* dcnt = at_offset<int>(base, lay.dcnt);
  int* dfill = at_offset<int>(base, lay.dfill);
  int* sel_node = at_offset<int>(base, lay.sel_node);
  int* opar = at_offset<int>(base, lay.opar);

  // 1. depths, rows bucketed by depth.
  if (tid == 0) {
    sm.maxd = 0;
    sm.slot = 0;
  }
  for (int i = tid; i < n; i += T) outpos[i] = -1;
  for (int i = tid; i <= n; i += T) dcnt[i] = 0;
  __syncthreads();
  for (int i = tid; i < n; i += T) {
    int d = 0;
    for (int j = i; j > 0; j = par[j]) ++d;
    dep[i] = d;
    atomicMax(&sm.maxd, d);
    atomicAdd(&dcnt[d], 1);
  }
  __syncthreads();
  const int maxd = sm.maxd;
  block_exclusive_scan(dcnt, maxd + 2, sm.warp_sums);  // dcnt[d] := first slot of depth d
  for (int i = tid; i <= maxd + 1; i += T) dfill[i] = dcnt[i];
  __syncthreads();
  for (int i = tid; i < n; i += T) lvl[atomicAdd(&dfill[dep[i]], 1)] = i;
  if (tid == 0) {
    reach[0] = 0.0f;
    drank[0] = 0;
  }
  __syncthreads();

  // 2. scores and the within-depth rank, one depth at a time.
  for (int d = 1; d <= maxd; ++d) {
    const int begin = dcnt[d], end = dcnt[d + 1];
    for (int e = begin + tid; e < end; e += T) {
      const int i = lvl[e], pi = par[i];
      const float r = __fadd_rn(reach[pi], edge(i));
      reach[i] = r;
      key[i] = sampling::rank_key(
          r, (static_cast<uint32_t>(drank[pi]) << 16) | static_cast<uint32_t>(i));
    }
    __syncthreads();
    for (int e = begin + tid; e < end; e += T) {
      const int i = lvl[e];
      const uint64_t k = key[i];
      int before = 0;
      for (int f = begin; f < end; ++f) before += key[lvl[f]] > k;
      drank[i] = before;
    }
    __syncthreads();
  }

  // 3. global keys, the best m rows, sorted.
  for (int i = tid; i < n; i += T) {
    key[i] = i == 0 ? ~0ull
                    : sampling::rank_key(reach[i], (static_cast<uint32_t>(dep[i]) << 16) |
                                                       static_cast<uint32_t>(drank[i]));
  }
  __syncthreads();
  const int m = min(n, N);
  uint64_t threshold = 0;
  if (n > m) {
    auto kf = [&](int64_t v) { return key[v]; };
    auto all = [](int64_t) { return true; };
    auto none = [](int64_t) { return 0ull; };
    threshold = block_radix_select<false>(n, kf, all, none, static_cast<uint32_t>(m), 0.0, sm.ss);
  }
  for (int i = tid; i < n; i += T) {
    if (key[i] >= threshold) {
      const int at = atomicAdd(&sm.slot, 1);
      if (at < m) {
        sel_key[at] = key[i];
        sel_node[at] = i;
      }
    }
  }
  __syncthreads();
  for (int s = tid; s < m; s += T) {
    const uint64_t k = sel_key[s];
    int pos = 0;
    for (int t = 0; t < m; ++t) pos += sel_key[t] > k;
    outpos[sel_node[s]] = pos;
  }
  __syncthreads();

  // 4. output rows.
  for (int s = tid; s < m; s += T) {
    const int i = sel_node[s], pos = outpos[i];
    o.token[pos] = token(i);
    o.depth[pos] = dep[i];
    o.score[pos] = reach[i];
    opar[pos] = i == 0 ? -1 : outpos[par[i]];  // -1 (clamped to 0) only for malformed pools
  }
  __syncthreads();
  LinkScratch ls{at_offset<int>(base, lay.ccount), at_offset<int>(base, lay.coff),
                 at_offset<int>(base, lay.cfill), at_offset<int>(base, lay.ctab),
                 at_offset<int>(base, lay.sidx)};
  block_finalize_tree(opar, m, o, ls, sm.warp_sums);
}

}  // namespace difftree::cuda
