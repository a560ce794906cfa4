// caddtree_select on the device: the CUDA ddtree_select at max_budget, then a cut kernel that
// applies cpu/caddtree.cpp's θ rule and leaves the tree exactly as the CPU op does.
//
// The cut (one CTA per request): δ_j = exp(score_j) in parallel, Φ(n) = Σ_{j<=n} δ_j summed by
// one thread in index order (the CPU's order; double addition is not associative), θ(n) =
// (1 + Φ(n)) / (C_d + C_v(n)) in parallel (θ(0) = 1 / (C_d + C_v(0))), and n* = the first n with
// !(θ(n + 1) > θ(n)) (num_nodes - 1 when θ always improves). Every value is double with the same
// operations as the CPU loop; exp is CUDA's double exp (<= 1 ulp from libm's, which can flip a
// comparison only when two θ values are within an ulp: see docs/NOTES.md).
// The CPU op then re-runs finalize_tree on the kept prefix: rows < n* + 1 keep token, parent,
// depth, score and anc (ancestors precede a node), lose links to cut rows (children and later
// siblings have larger indices, so a link >= n* + 1 becomes -1); rows past the cut become padding.
// Costs are trusted on the device (the CPU op validates them; that needs a host sync here).
#include <cuda_runtime.h>

#include <string>

#include "launchers.h"
#include "tree_build.cuh"

namespace difftree::cuda {
namespace {

constexpr int kCutThreads = 256;

struct CutParams {
  const float* verify_cost;  // [B, N]
  const float* draft_cost;   // [B]
  TreeOut out;               // the output tree
  int N, W;
};

__global__ void __launch_bounds__(kCutThreads) caddtree_cut_kernel(CutParams p) {
  extern __shared__ double phi[];  // [N]: δ_j, then Φ(j), then θ(j)
  __shared__ int s_cut;
  const int b = blockIdx.x, tid = threadIdx.x, T = blockDim.x, N = p.N;
  const int64_t row = static_cast<int64_t>(b) * N;
  const float* score = p.out.score + row;
  const float* cv = p.verify_cost + row;
  const double cd = static_cast<double>(p.draft_cost[b]);
  const int num = min(max(p.out.num_nodes[b], 1), N);
  for (int j = 1 + tid; j < num; j += T) phi[j] = exp(static_cast<double>(score[j]));
  if (tid == 0) s_cut = num - 1;
  __syncthreads();
  if (tid == 0) {
    double acc = 0.0;
    phi[0] = acc;
    for (int j = 1; j < num; ++j) {
      const double next_phi = acc + phi[j];
      acc = next_phi;
      phi[j] = next_phi;
    }
  }
  __syncthreads();
  for (int j = tid; j < num; j += T) {
    const double den = cd + static_cast<double>(cv[j]);
    if (j == 0) {
      phi[0] = 1.0 / den;
    } else {
      const double nm = 1.0 + phi[j];
      phi[j] = nm / den;
    }
  }
  __syncthreads();
  for (int j = tid; j + 1 < num; j += T)
    if (!(phi[j + 1] > phi[j])) atomicMin(&s_cut, j);
  __syncthreads();
  const int n = s_cut + 1;  // rows kept, root included
  const TreeRows rows = p.out.rows(b, N, p.W);
  for (int i = tid; i < N; i += T) {
    if (i < n) {
      if (p.out.first_child[row + i] >= n) p.out.first_child[row + i] = -1;
      if (p.out.next_sibling[row + i] >= n) p.out.next_sibling[row + i] = -1;
    } else {
      write_padding_row(rows, i);
    }
  }
  const int W = p.W;
  uint32_t* anc = p.out.anc + row * W;
  for (int e = n * W + tid; e < N * W; e += T) {
    const int i = e / W, w = e % W;
    anc[e] = (i / 32 == w) ? (1u << (i % 32)) : 0u;
  }
  if (tid == 0) p.out.num_nodes[b] = n;
}

}  // namespace

Status caddtree_select(const TensorView& cand_token, const TensorView& cand_logprob,
                       int64_t max_budget, const TensorView* root_token,
                       const TensorView& verify_cost, const TensorView& draft_cost,
                       const TreeView& tree, void* workspace, size_t workspace_bytes,
                       Stream stream) {
  const int64_t B = cand_logprob.shape[0];
  if (B == 0) return Status::Ok();
  DIFFTREE_RETURN_IF_ERROR(ddtree_select(cand_token, cand_logprob, max_budget, root_token, tree,
                                         workspace, workspace_bytes, stream));
  CutParams p{};
  p.verify_cost = verify_cost.ptr<const float>();
  p.draft_cost = draft_cost.ptr<const float>();
  p.out = tree_out(tree);
  p.N = static_cast<int>(max_budget + 1);
  p.W = static_cast<int>(anc_words(max_budget + 1));
  const size_t smem = static_cast<size_t>(p.N) * sizeof(double);  // <= 32.8 KB (N <= 4097)
  caddtree_cut_kernel<<<static_cast<unsigned>(B), kCutThreads, smem,
                        static_cast<cudaStream_t>(stream)>>>(p);
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    return Internal(std::string("caddtree_select: ") + cudaGetErrorString(err));
  return Status::Ok();
}

}  // namespace difftree::cuda
