// Block-wide helpers that build the derived tree arrays on the device (one CTA per request):
// an exclusive scan, and the finalisation shared by the selectors that produce parent[] in
// best-first order (TAPS, PRESTO): first_child / next_sibling / anc and the padding rows, with the
// same definitions as cpu/finalize_tree.cpp (children in index order; padding rows token = parent
// = first_child = next_sibling = -1, depth 0, score -inf, anc = own bit).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "difftree/tree.h"

namespace difftree::cuda {

// In-place exclusive scan of a[0, n) (n <= a few thousand); returns the total. All threads call;
// warp_sums holds 33 ints of shared memory.
__device__ inline int block_exclusive_scan(int* a, int n, int* warp_sums) {
  const int T = blockDim.x, tid = threadIdx.x;
  const int per = (n + T - 1) / T;
  const int begin = min(n, tid * per), end = min(n, begin + per);
  int local = 0;
  for (int i = begin; i < end; ++i) local += a[i];
  const int lane = tid % 32, warp = tid / 32;
  int incl = local;
  for (int o = 1; o < 32; o <<= 1) {
    const int u = __shfl_up_sync(0xffffffffu, incl, o);
    if (lane >= o) incl += u;
  }
  if (lane == 31) warp_sums[warp] = incl;
  __syncthreads();
  if (warp == 0) {
    const int nw = T / 32;
    int v = lane < nw ? warp_sums[lane] : 0;
    int vi = v;
    for (int o = 1; o < 32; o <<= 1) {
      const int u = __shfl_up_sync(0xffffffffu, vi, o);
      if (lane >= o) vi += u;
    }
    if (lane < nw) warp_sums[lane] = vi - v;  // exclusive warp offsets
    if (lane == nw - 1) warp_sums[32] = vi;   // total
  }
  __syncthreads();
  int run = warp_sums[warp] + incl - local;
  for (int i = begin; i < end; ++i) {
    const int v = a[i];
    a[i] = run;
    run += v;
  }
  const int total = warp_sums[32];
  __syncthreads();
  return total;
}

// One request's output rows (row offset already applied).
struct TreeRows {
  int32_t* token;
  int32_t* parent;
  int32_t* depth;
  float* score;
  int32_t* first_child;
  int32_t* next_sibling;
  uint32_t* anc;       // [N, W]
  int32_t* num_nodes;  // this request's entry
  int N, W;
};

// A batch's output tree as device pointers (TreeView's eight arrays), shared by the selector
// launchers; rows(b, N, W) is request b's slice.
struct TreeOut {
  int32_t* token;
  int32_t* parent;
  int32_t* depth;
  float* score;
  int32_t* first_child;
  int32_t* next_sibling;
  uint32_t* anc;       // [B, N, W]
  int32_t* num_nodes;  // [B]

  __device__ TreeRows rows(int64_t b, int N, int W) const {
    const int64_t row = b * N;
    return TreeRows{
        token + row,        parent + row,  depth + row,   score + row, first_child + row,
        next_sibling + row, anc + row * W, num_nodes + b, N,           W};
  }
};

inline TreeOut tree_out(const TreeView& tree) {
  return TreeOut{tree.token.ptr<int32_t>(),
                 tree.parent.ptr<int32_t>(),
                 tree.depth.ptr<int32_t>(),
                 tree.score.ptr<float>(),
                 tree.first_child.ptr<int32_t>(),
                 tree.next_sibling.ptr<int32_t>(),
                 reinterpret_cast<uint32_t*>(tree.anc.ptr<int32_t>()),
                 tree.num_nodes.ptr<int32_t>()};
}

// Scratch for block_finalize_tree: int arrays of N (ccount, cfill, ctab, sidx) and N + 1 (coff).
// Row i >= num_nodes of a request's tree: token = parent = first_child = next_sibling = -1,
// depth 0, score -inf (docs/NOTES.md "Padding rows"; anc is written with the other rows).
__device__ inline void write_padding_row(const TreeRows& o, int i) {
  o.token[i] = -1;
  o.parent[i] = -1;
  o.depth[i] = 0;
  o.score[i] = -INFINITY;
  o.first_child[i] = -1;
  o.next_sibling[i] = -1;
}

struct LinkScratch {
  int* ccount;
  int* coff;
  int* cfill;
  int* ctab;
  int* sidx;
};

// par[0, n): the parents of the n valid rows in best-first order (par[0] = -1, 0 <= par[i] < i
// for valid trees; anything else is clamped to 0 so malformed input cannot go out of bounds).
// Writes parent, first_child, next_sibling and anc of rows < n, every array of the padding rows
// >= n, and num_nodes = n. The caller writes token, depth and score of rows < n. All threads call.
__device__ inline void block_finalize_tree(const int* par, int n, const TreeRows& o,
                                           const LinkScratch& s, int* warp_sums) {
  const int T = blockDim.x, tid = threadIdx.x, N = o.N, W = o.W;
  auto parent_of = [&](int i) {
    const int p = par[i];
    return (p >= 0 && p < i) ? p : 0;
  };
  for (int i = tid; i < N; i += T) {
    s.ccount[i] = 0;
    s.cfill[i] = 0;
  }
  __syncthreads();
  for (int i = 1 + tid; i < n; i += T) atomicAdd(&s.ccount[parent_of(i)], 1);
  __syncthreads();
  for (int i = tid; i < N; i += T) s.coff[i] = s.ccount[i];
  __syncthreads();
  block_exclusive_scan(s.coff, N, warp_sums);
  // Children grouped by parent (in arrival order), then each child's position among its
  // siblings = how many of them have a smaller index (siblings are best-first = index order).
  for (int i = 1 + tid; i < n; i += T) {
    const int p = parent_of(i);
    s.ctab[s.coff[p] + atomicAdd(&s.cfill[p], 1)] = i;
  }
  __syncthreads();
  for (int i = 1 + tid; i < n; i += T) {
    const int p = parent_of(i), begin = s.coff[p], cnt = s.ccount[p];
    int before = 0;
    for (int k = 0; k < cnt; ++k) before += s.ctab[begin + k] < i;
    s.sidx[i] = before;
  }
  __syncthreads();
  for (int i = 1 + tid; i < n; i += T) s.ctab[s.coff[parent_of(i)] + s.sidx[i]] = i;
  __syncthreads();
  for (int i = tid; i < N; i += T) {
    if (i < n) {
      o.parent[i] = i == 0 ? -1 : parent_of(i);
      o.first_child[i] = s.ccount[i] > 0 ? s.ctab[s.coff[i]] : -1;
      int sib = -1;
      if (i > 0) {
        const int p = parent_of(i), nx = s.sidx[i] + 1;
        if (nx < s.ccount[p]) sib = s.ctab[s.coff[p] + nx];
      }
      o.next_sibling[i] = sib;
    } else {
      write_padding_row(o, i);
    }
  }
  // anc: bit j of row i for j = i and each ancestor; one (row, word) per thread.
  for (int e = tid; e < N * W; e += T) {
    const int i = e / W, w = e % W;
    uint32_t word = 0;
    if (i >= n) {
      word = (i / 32 == w) ? (1u << (i % 32)) : 0u;
    } else {
      int j = i;
      while (j >= 32 * w) {
        if (j / 32 == w) word |= 1u << (j % 32);
        if (j == 0) break;
        j = parent_of(j);
      }
    }
    o.anc[e] = word;
  }
  if (tid == 0) *o.num_nodes = n;
}

}  // namespace difftree::cuda
