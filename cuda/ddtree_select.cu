// ddtree_select on the device: one CTA per request, the exact parallel form (ALGORITHMS.md §2,
// docs/NOTES.md tie-break), bit-identical to the CPU heap form.
//
// State: R, the running global top-N (N = budget + 1, root first) in the normative order
// (score desc, depth asc, position asc), and beam_{d-1}, the depth-(d-1) nodes still in R, in
// order. Per depth d:
//   1. candidates (q, r) = beam[q] x cand[d][r], score fp32(S_q + lp_r). Only (q+1)(r+1) <= budget
//      can rank in the top N (the rectangle before it is at least as good), and once R is full
//      only scores > R's last score can enter (ties go to the shallower node), so each parent
//      contributes a prefix of ranks whose length is found by binary search;
//   2. the best min(|C|, budget) candidates by (score desc, q asc, r asc) -- an exact radix select
//      over unique keys ordered(score) << 32 | ~(q << 12 | r) -- sorted by rank counting: this is
//      the stable sort of the [beam, K] grid by score, i.e. the exact per-depth beam order;
//   3. merge with R (both sorted; a candidate ranks after an R entry of equal score), keep N.
//      The candidates that entered form a prefix of the sorted list: the next beam.
// An entry of depth d keeps (position in its depth's sorted list, parent's position, rank); at
// the end R ∩ depth d is a prefix of that list, so positions map back to node indices through a
// per-depth offset table, and the children of a node are exactly its ranks 0..c-1 in index
// order, which gives first_child / next_sibling without a serial pass. anc rows are built by
// walking parents per (row, word).
//
// Candidate data is trusted (finite, <= 0, sorted, distinct per depth, as topk_logprobs makes
// them): it cannot be validated without a host sync. Every index is clamped, so malformed data
// yields a malformed tree, never an out-of-bounds access.
#include <cuda_runtime.h>

#include <algorithm>
#include <string>

#include "block_scratch.cuh"
#include "block_select.cuh"
#include "index.cuh"
#include "launchers.h"
#include "sampling_math.h"
#include "tree_build.cuh"

namespace difftree::cuda {
namespace {

constexpr int kThreads = 512;

struct Params {
  const void* cand_token;
  bool tok64;
  const float* cand_lp;
  const void* root;
  bool root64;
  TreeOut out;               // the output tree
  unsigned char* workspace;  // nullptr: everything lives in dynamic shared memory
  DdtreeLayout lay;
  int L, K, budget, keff, leff, W;
};

struct Scratch {
  int total;
  int slot;
  int entered;
  float thr;
  int full;
};

__device__ __forceinline__ float key_score(uint64_t key) {
  return sampling::unordered(static_cast<uint32_t>(key >> 32));
}
__device__ __forceinline__ uint32_t key_slot(uint64_t key) {
  return 0xffffffffu - static_cast<uint32_t>(key);
}

__global__ void __launch_bounds__(kThreads) ddtree_select_kernel(Params p) {
  extern __shared__ __align__(16) unsigned char dsmem[];
  __shared__ SelectSmem ss;
  __shared__ int warp_sums[33];
  __shared__ Scratch sc;
  const int b = blockIdx.x, tid = threadIdx.x, T = blockDim.x;
  unsigned char* base = p.workspace ? p.workspace + static_cast<size_t>(b) * p.lay.total : dsmem;
  const DdtreeLayout& lay = p.lay;
  uint64_t* sel = reinterpret_cast<uint64_t*>(base + lay.sel);
  uint64_t* sorted = reinterpret_cast<uint64_t*>(base + lay.sorted);
  uint64_t* cand = reinterpret_cast<uint64_t*>(base + lay.cand);
  float* lpd = reinterpret_cast<float*>(base + lay.lpd);
  int* pcount = reinterpret_cast<int*>(base + lay.pcount);
  const int budget = p.budget, N = budget + 1, keff = p.keff;
  const float* lp_row = p.cand_lp + static_cast<int64_t>(b) * p.L * p.K;

  int cur = 0, rsize = 1, nbeam = 1;
  if (tid == 0) {
    reinterpret_cast<float*>(base + lay.rscore[0])[0] = 0.0f;
    reinterpret_cast<int*>(base + lay.rdepth[0])[0] = 0;
    reinterpret_cast<int*>(base + lay.rpos[0])[0] = 0;
    reinterpret_cast<int*>(base + lay.rppos[0])[0] = -1;
    reinterpret_cast<int*>(base + lay.rrank[0])[0] = 0;
    sorted[0] = sampling::rank_key(0.0f, 0xffffffffu);  // beam_0: the root, score 0
  }
  __syncthreads();

  for (int d = 1; d <= p.leff && nbeam > 0; ++d) {
    const float* rscore = reinterpret_cast<const float*>(base + lay.rscore[cur]);
    for (int r = tid; r < keff; r += T) lpd[r] = lp_row[static_cast<int64_t>(d - 1) * p.K + r];
    if (tid == 0) {
      sc.full = rsize == N;
      sc.thr = rscore[rsize - 1];
      sc.slot = 0;
      sc.entered = 0;
    }
    __syncthreads();
    // 1. per-parent candidate counts, then offsets.
    const bool full = sc.full;
    const float thr = sc.thr;
    for (int q = tid; q < nbeam; q += T) {
      const float S = key_score(sorted[q]);
      int lim = min(keff, budget / (q + 1));
      if (full) {  // largest c <= lim with fp32(S + lp[c-1]) > thr (scores fall along r)
        int lo = 0, hi = lim;
        while (lo < hi) {
          const int mid = (lo + hi) / 2;
          if (__fadd_rn(S, lpd[mid]) > thr)
            lo = mid + 1;
          else
            hi = mid;
        }
        lim = lo;
      }
      pcount[q] = lim;
    }
    __syncthreads();
    const int total = block_exclusive_scan(pcount, nbeam, warp_sums);  // pcount := offsets
    for (int e = tid; e < total; e += T) {
      int lo = 0, hi = nbeam - 1;  // last q with offset <= e
      while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (pcount[mid] <= e)
          lo = mid;
        else
          hi = mid - 1;
      }
      const int q = lo, r = e - pcount[q];
      const float s = __fadd_rn(key_score(sorted[q]), lpd[r]);
      cand[e] = sampling::rank_key(s, (static_cast<uint32_t>(q) << 12) | static_cast<uint32_t>(r));
    }
    __syncthreads();
    // 2. the best m candidates, sorted.
    const int m = min(total, budget);
    uint64_t threshold = 0;
    if (total > m) {
      auto key = [&](int64_t v) { return static_cast<uint64_t>(cand[v]); };
      auto all = [](int64_t) { return true; };
      // cand[e] is laid out in (q, r) order, so its id half falls as e grows: a tied m-th score
      // is resolved by one ordered count (block_select.cuh).
      threshold = block_radix_select_ordered(total, key, all, static_cast<uint32_t>(m), ss);
    }
    for (int e = tid; e < total; e += T) {
      const uint64_t k = cand[e];
      if (k >= threshold) {
        const int at = atomicAdd(&sc.slot, 1);
        if (at < m) sel[at] = k;
      }
    }
    __syncthreads();
    for (int i = tid; i < m; i += T) {
      const uint64_t k = sel[i];
      int pos = 0;
      for (int j = 0; j < m; ++j) pos += sel[j] > k;
      sorted[pos] = k;
    }
    __syncthreads();
    // 3. merge with R into the other buffer.
    {
      const int nxt = cur ^ 1;
      float* oscore = reinterpret_cast<float*>(base + lay.rscore[nxt]);
      int* odepth = reinterpret_cast<int*>(base + lay.rdepth[nxt]);
      int* opos = reinterpret_cast<int*>(base + lay.rpos[nxt]);
      int* oppos = reinterpret_cast<int*>(base + lay.rppos[nxt]);
      int* orank = reinterpret_cast<int*>(base + lay.rrank[nxt]);
      const int* idepth = reinterpret_cast<const int*>(base + lay.rdepth[cur]);
      const int* ipos = reinterpret_cast<const int*>(base + lay.rpos[cur]);
      const int* ippos = reinterpret_cast<const int*>(base + lay.rppos[cur]);
      const int* irank = reinterpret_cast<const int*>(base + lay.rrank[cur]);
      for (int i = tid; i < m; i += T) {
        const float s = key_score(sorted[i]);
        int lo = 0, hi = rsize;  // R entries with score >= s rank first
        while (lo < hi) {
          const int mid = (lo + hi) / 2;
          if (rscore[mid] >= s)
            lo = mid + 1;
          else
            hi = mid;
        }
        const int out = i + lo;
        if (out < N) {
          const uint32_t slot = key_slot(sorted[i]);
          oscore[out] = s;
          odepth[out] = d;
          opos[out] = i;
          oppos[out] = static_cast<int>(slot >> 12);
          orank[out] = static_cast<int>(slot & 4095u);
          atomicAdd(&sc.entered, 1);
        }
      }
      for (int j = tid; j < rsize; j += T) {
        const float s = rscore[j];
        int lo = 0, hi = m;  // candidates with score > s rank first
        while (lo < hi) {
          const int mid = (lo + hi) / 2;
          if (key_score(sorted[mid]) > s)
            lo = mid + 1;
          else
            hi = mid;
        }
        const int out = j + lo;
        if (out < N) {
          oscore[out] = s;
          odepth[out] = idepth[j];
          opos[out] = ipos[j];
          oppos[out] = ippos[j];
          orank[out] = irank[j];
        }
      }
    }
    __syncthreads();
    rsize = min(N, rsize + m);
    cur ^= 1;
    nbeam = sc.entered;
    __syncthreads();
  }

  // ---- epilogue: node arrays from R ----
  const int n = rsize;
  const float* rscore = reinterpret_cast<const float*>(base + lay.rscore[cur]);
  const int* rdepth = reinterpret_cast<const int*>(base + lay.rdepth[cur]);
  const int* rpos = reinterpret_cast<const int*>(base + lay.rpos[cur]);
  const int* rppos = reinterpret_cast<const int*>(base + lay.rppos[cur]);
  const int* rrank = reinterpret_cast<const int*>(base + lay.rrank[cur]);
  int* dcnt = reinterpret_cast<int*>(base + lay.dcnt);
  int* map = reinterpret_cast<int*>(base + lay.map);
  int* par = reinterpret_cast<int*>(base + lay.par);
  int* ccount = reinterpret_cast<int*>(base + lay.ccount);
  int* coff = reinterpret_cast<int*>(base + lay.coff);
  int* ctab = reinterpret_cast<int*>(base + lay.ctab);
  const int ndepth = p.leff + 1;
  for (int i = tid; i < ndepth; i += T) dcnt[i] = 0;
  for (int i = tid; i < N; i += T) ccount[i] = 0;
  __syncthreads();
  for (int i = tid; i < n; i += T) atomicAdd(&dcnt[min(max(rdepth[i], 0), ndepth - 1)], 1);
  __syncthreads();
  block_exclusive_scan(dcnt, ndepth, warp_sums);
  for (int i = tid; i < n; i += T) {
    const int at = dcnt[rdepth[i]] + rpos[i];
    if (at >= 0 && at < N) map[at] = i;
  }
  __syncthreads();
  for (int i = tid; i < n; i += T) {
    int pi = -1;
    if (i > 0) {
      const int at = dcnt[max(rdepth[i] - 1, 0)] + rppos[i];
      pi = (at >= 0 && at < n) ? map[at] : 0;
      if (pi < 0 || pi >= i) pi = 0;  // only malformed candidates get here
      atomicMax(&ccount[pi], rrank[i] + 1);
    }
    par[i] = pi;
  }
  __syncthreads();
  for (int i = tid; i < N; i += T) coff[i] = ccount[i];
  __syncthreads();
  block_exclusive_scan(coff, N, warp_sums);
  for (int i = tid; i < n; i += T) {
    if (i == 0) continue;
    const int at = coff[par[i]] + rrank[i];
    if (at < N) ctab[at] = i;
  }
  __syncthreads();

  const int64_t row = static_cast<int64_t>(b) * N;
  const int64_t row_tok = static_cast<int64_t>(b) * p.L * p.K;
  const TreeRows rows = p.out.rows(b, N, p.W);
  for (int i = tid; i < N; i += T) {
    if (i < n) {
      int32_t tok;
      if (i == 0) {
        tok = p.root ? static_cast<int32_t>(load_index(p.root, p.root64, b)) : -1;
      } else {
        const int64_t at = row_tok + static_cast<int64_t>(rdepth[i] - 1) * p.K + rrank[i];
        tok = static_cast<int32_t>(load_index(p.cand_token, p.tok64, at));
      }
      p.out.token[row + i] = tok;
      p.out.parent[row + i] = par[i];
      p.out.depth[row + i] = rdepth[i];
      p.out.score[row + i] = rscore[i];
      p.out.first_child[row + i] = ccount[i] > 0 && coff[i] < N ? ctab[coff[i]] : -1;
      int sib = -1;
      if (i > 0) {
        const int pi = par[i], nr = rrank[i] + 1;
        if (nr < ccount[pi] && coff[pi] + nr < N) sib = ctab[coff[pi] + nr];
      }
      p.out.next_sibling[row + i] = sib;
    } else {
      write_padding_row(rows, i);
    }
  }
  const int W = p.W;
  uint32_t* anc = p.out.anc + row * W;
  for (int e = tid; e < N * W; e += T) {
    const int i = e / W, w = e % W;
    uint32_t word = 0;
    if (i >= n) {
      word = (i / 32 == w) ? (1u << (i % 32)) : 0u;
    } else {
      int j = i;
      while (j >= 32 * w) {
        if (j / 32 == w) word |= 1u << (j % 32);
        const int nj = j > 0 ? par[j] : -1;
        if (nj >= j) break;
        j = nj;
        if (j < 0) break;
      }
    }
    anc[e] = word;
  }
  if (tid == 0) p.out.num_nodes[b] = n;
}

}  // namespace

Status ddtree_select(const TensorView& cand_token, const TensorView& cand_logprob, int64_t budget,
                     const TensorView* root_token, const TreeView& tree, void* workspace,
                     size_t workspace_bytes, Stream stream) {
  const int64_t B = cand_logprob.shape[0], L = cand_logprob.shape[1], K = cand_logprob.shape[2];
  if (B == 0) return Status::Ok();
  Params p{};
  p.cand_token = cand_token.data;
  p.tok64 = cand_token.dtype == DType::kInt64;
  p.cand_lp = cand_logprob.ptr<const float>();
  p.root = root_token ? root_token->data : nullptr;
  p.root64 = root_token && root_token->dtype == DType::kInt64;
  p.out = tree_out(tree);
  p.lay = ddtree_layout(L, K, budget);
  p.L = static_cast<int>(L);
  p.K = static_cast<int>(K);
  p.budget = static_cast<int>(budget);
  p.keff = static_cast<int>(std::max<int64_t>(1, std::min(K, budget)));
  p.leff = static_cast<int>(K > 0 ? std::min(L, budget) : 0);
  p.W = static_cast<int>(anc_words(budget + 1));
  size_t smem = 0;
  DIFFTREE_RETURN_IF_ERROR(place_block_scratch(ddtree_select_kernel, "ddtree_select", B,
                                               p.lay.total, workspace, workspace_bytes,
                                               &p.workspace, &smem));
  ddtree_select_kernel<<<static_cast<unsigned>(B), kThreads, smem,
                         static_cast<cudaStream_t>(stream)>>>(p);
  return launch_status("ddtree_select");
}

}  // namespace difftree::cuda
