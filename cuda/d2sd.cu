// D²SD on the device (cpu/d2sd.cpp, ALGORITHMS.md §8): d2sd_boundaries and d2sd_select, one CTA
// per request, no host synchronisation.
//
// Boundaries: thread i computes log r(i) = Σ_{j<i} lp[j] + log1mexp(lp[i]) in double exactly as
// the CPU op (the prefix summed in index order, Mächler's log1mexp with the expm1/log and
// exp/log1p branches, one rounding per operation), then its rank under (log r desc, i asc) by
// counting; ranks < K are written. The only arithmetic that can differ from the CPU op is CUDA's
// double expm1/log/exp/log1p (<= 1 ulp from glibc's), so the order can differ only where two
// log r(i) are within about an ulp (docs/NOTES.md). Log-probs are trusted (the CPU op checks them);
// a NaN log r (only from NaN or positive inputs) ranks as -inf so the ranks stay a permutation.
//
// Select: thread 0 builds the trie of the K + 1 rows exactly as the CPU op does (rows in creation
// order, an edge keeps the max log-prob of the rows through it, at most 1 + L1 + K * L2 nodes),
// then the block runs block_pool_select (cuda/pool_select.cuh, shared with taps_select), the device
// form of cpu/pool_select.cpp. Inputs are trusted; malformed data is clamped so that it cannot go
// out of bounds and still yields a valid tree: a boundary outside [0, min(L1, L2) - 1] drops its
// row (as -1 does), a NaN or positive log-prob counts as 0.
#include <cuda_runtime.h>

#include <string>

#include "block_scratch.cuh"
#include "index.cuh"
#include "launchers.h"
#include "pool_select.cuh"

namespace difftree::cuda {
namespace {

constexpr int kBoundaryThreads = 256;

// log(1 - exp(x)) for x <= 0, accurate at both ends; -inf at x = 0 (as cpu/d2sd.cpp).
__device__ __forceinline__ double log1mexp(double x) {
  if (x > -0.6931471805599453) {
    const double e = expm1(x);
    return log(-e);
  }
  const double e = exp(x);
  return log1p(-e);
}

__global__ void __launch_bounds__(kBoundaryThreads)
    d2sd_boundaries_kernel(const float* __restrict__ trunk_logprob, int32_t* __restrict__ boundary,
                           int L, int K) {
  extern __shared__ double lr[];  // [L]
  const int b = blockIdx.x, tid = threadIdx.x, T = blockDim.x;
  const float* lp = trunk_logprob + static_cast<int64_t>(b) * L;
  for (int i = tid; i < L; i += T) {
    double prefix = 0.0;
    for (int j = 0; j < i; ++j) prefix = __dadd_rn(prefix, static_cast<double>(lp[j]));
    const double v = __dadd_rn(prefix, log1mexp(static_cast<double>(lp[i])));
    lr[i] = isnan(v) ? -INFINITY : v;
  }
  __syncthreads();
  for (int i = tid; i < L; i += T) {
    const double v = lr[i];
    int rank = 0;
    for (int j = 0; j < L; ++j) {
      const double u = lr[j];
      rank += (u > v) || (u == v && j < i);
    }
    if (rank < K) boundary[static_cast<int64_t>(b) * K + rank] = i;
  }
}

struct SelectParams {
  const void* trunk_token;
  const float* trunk_logprob;
  const void* boundary;
  const void* branch_token;
  const float* branch_logprob;
  const void* root_token;  // nullable
  bool ttok64, bnd64, btok64, root64;
  TreeOut out;               // the output tree
  unsigned char* workspace;  // nullptr: everything lives in dynamic shared memory
  D2sdLayout lay;
  int L1, K, L2, N, W;
};

// NaN and positive log-probs count as 0 (the CPU op rejects them).
__device__ __forceinline__ float sane_logprob(float v) { return v <= 0.0f ? v : 0.0f; }

__global__ void __launch_bounds__(kPoolThreads, 1) d2sd_select_kernel(SelectParams p) {
  extern __shared__ __align__(16) unsigned char dsmem[];
  __shared__ PoolSmem sm;
  __shared__ int s_rows;
  const int b = blockIdx.x;
  unsigned char* base = p.workspace ? p.workspace + static_cast<size_t>(b) * p.lay.total : dsmem;
  int* par = at_offset<int>(base, p.lay.pool.par);
  int* tok = at_offset<int>(base, p.lay.tok);
  float* edge = at_offset<float>(base, p.lay.edge);
  int* fc = at_offset<int>(base, p.lay.fc);
  int* ns = at_offset<int>(base, p.lay.ns);
  const int L1 = p.L1, K = p.K, L2 = p.L2;
  if (threadIdx.x == 0) {
    tok[0] = p.root_token ? static_cast<int32_t>(load_index(p.root_token, p.root64, b)) : -1;
    par[0] = -1;
    edge[0] = 0.0f;
    fc[0] = -1;
    ns[0] = -1;
    int n = 1;
    // Row 0, the first draft: trie rows 1..L1 are its depths 1..L1 (each a fresh node).
    const int64_t trow = static_cast<int64_t>(b) * L1;
    for (int j = 0; j < L1; ++j, ++n) {
      tok[n] = static_cast<int32_t>(load_index(p.trunk_token, p.ttok64, trow + j));
      par[n] = n - 1;
      edge[n] = sane_logprob(p.trunk_logprob[trow + j]);
      fc[n] = -1;
      ns[n] = -1;
      fc[n - 1] = n;
    }
    const int max_i = min(L1, L2) - 1;
    for (int k = 0; k < K; ++k) {
      const int64_t i = load_index(p.boundary, p.bnd64, static_cast<int64_t>(b) * K + k);
      if (i < 0 || i > max_i) continue;
      int cur = static_cast<int>(i);  // the first-draft node at depth i (the root for i = 0)
      bool fresh = false;             // below a node created by this row: no children to match
      const int64_t brow = (static_cast<int64_t>(b) * K + k) * L2;
      for (int j = static_cast<int>(i); j < L2; ++j) {
        const int32_t t = static_cast<int32_t>(load_index(p.branch_token, p.btok64, brow + j));
        const float e = sane_logprob(p.branch_logprob[brow + j]);
        int c = -1;
        if (!fresh)
          for (c = fc[cur]; c >= 0 && tok[c] != t; c = ns[c]) {
          }
        if (c >= 0) {
          if (edge[c] < e) edge[c] = e;  // std::max(edge, e)
          cur = c;
        } else {
          tok[n] = t;
          par[n] = cur;
          edge[n] = e;
          fc[n] = -1;
          ns[n] = fc[cur];  // sibling order does not matter: pool order is creation order
          fc[cur] = n;
          cur = n++;
          fresh = true;
        }
      }
    }
    s_rows = n;
  }
  __syncthreads();
  const TreeRows o = p.out.rows(b, p.N, p.W);
  block_pool_select(
      base, p.lay.pool, s_rows, [&](int i) { return edge[i]; }, [&](int i) { return tok[i]; }, o,
      sm);
}

}  // namespace

Status d2sd_boundaries(const TensorView& trunk_logprob, const TensorView& boundary, Stream stream) {
  const int64_t B = trunk_logprob.shape[0], L = trunk_logprob.shape[1];
  if (B == 0) return Status::Ok();
  const size_t smem = static_cast<size_t>(L) * sizeof(double);  // <= 32 KB (L <= 4096)
  d2sd_boundaries_kernel<<<static_cast<unsigned>(B), kBoundaryThreads, smem,
                           static_cast<cudaStream_t>(stream)>>>(
      trunk_logprob.ptr<const float>(), boundary.ptr<int32_t>(), static_cast<int>(L),
      static_cast<int>(boundary.shape[1]));
  return launch_status("d2sd_boundaries");
}

Status d2sd_select(const TensorView& trunk_token, const TensorView& trunk_logprob,
                   const TensorView& boundary, const TensorView& branch_token,
                   const TensorView& branch_logprob, int64_t budget, const TensorView* root_token,
                   const TreeView& tree, void* workspace, size_t workspace_bytes, Stream stream) {
  const int64_t B = trunk_logprob.shape[0], L1 = trunk_logprob.shape[1];
  const int64_t K = boundary.shape[1], L2 = branch_logprob.shape[2];
  if (B == 0) return Status::Ok();
  SelectParams p{};
  p.trunk_token = trunk_token.data;
  p.ttok64 = trunk_token.dtype == DType::kInt64;
  p.trunk_logprob = trunk_logprob.ptr<const float>();
  p.boundary = boundary.data;
  p.bnd64 = boundary.dtype == DType::kInt64;
  p.branch_token = branch_token.data;
  p.btok64 = branch_token.dtype == DType::kInt64;
  p.branch_logprob = branch_logprob.ptr<const float>();
  p.root_token = root_token != nullptr ? root_token->data : nullptr;
  p.root64 = root_token != nullptr && root_token->dtype == DType::kInt64;
  p.out = tree_out(tree);
  p.lay = d2sd_layout(d2sd_pool_rows(L1, K, L2), budget + 1);
  p.L1 = static_cast<int>(L1);
  p.K = static_cast<int>(K);
  p.L2 = static_cast<int>(L2);
  p.N = static_cast<int>(budget + 1);
  p.W = static_cast<int>(anc_words(budget + 1));
  size_t smem = 0;
  DIFFTREE_RETURN_IF_ERROR(place_block_scratch(d2sd_select_kernel, "d2sd_select", B, p.lay.total,
                                               workspace, workspace_bytes, &p.workspace, &smem));
  d2sd_select_kernel<<<static_cast<unsigned>(B), kPoolThreads, smem,
                       static_cast<cudaStream_t>(stream)>>>(p);
  return launch_status("d2sd_select");
}

}  // namespace difftree::cuda
