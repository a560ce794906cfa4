// taps_select on the device: one CTA per request, exact and bit-identical to cpu/taps.cpp
// (pool_select's heap over the pool under the normative order of docs/NOTES.md).
//
// The selection is block_pool_select (cuda/pool_select.cuh, shared with d2sd_select) with the
// edge scores log_qc. Pool data cannot be validated without a host sync: it is trusted (as the
// CPU op checks it), and parents are clamped so malformed input cannot go out of bounds.
#include <cuda_runtime.h>

#include <algorithm>
#include <string>

#include "block_scratch.cuh"
#include "index.cuh"
#include "launchers.h"
#include "pool_select.cuh"

namespace difftree::cuda {
namespace {

struct Params {
  const void* pool_token;
  bool tok64;
  const void* pool_parent;
  bool par64;
  const void* pool_size;
  bool size64;
  const float* log_qc;
  TreeOut out;               // the output tree
  unsigned char* workspace;  // nullptr: everything lives in dynamic shared memory
  TapsLayout lay;
  int P1, N, W;
};

__global__ void __launch_bounds__(kPoolThreads) taps_select_kernel(Params p) {
  extern __shared__ __align__(16) unsigned char dsmem[];
  __shared__ PoolSmem sm;
  const int b = blockIdx.x, tid = threadIdx.x, T = blockDim.x;
  unsigned char* base = p.workspace ? p.workspace + static_cast<size_t>(b) * p.lay.total : dsmem;
  int* par = at_offset<int>(base, p.lay.pool.par);
  const int P1 = p.P1, N = p.N;
  const int64_t prow = static_cast<int64_t>(b) * P1;
  const int64_t size = load_index(p.pool_size, p.size64, b);
  const int n = static_cast<int>(size < 1 ? 1 : (size > P1 ? P1 : size));
  const float* lq = p.log_qc + prow;
  for (int i = tid; i < n; i += T) {  // parents, clamped
    int pi = -1;
    if (i > 0) {
      const int64_t v = load_index(p.pool_parent, p.par64, prow + i);
      pi = (v >= 0 && v < i) ? static_cast<int>(v) : 0;
    }
    par[i] = pi;
  }
  const TreeRows o = p.out.rows(b, N, p.W);
  block_pool_select(
      base, p.lay.pool, n, [&](int i) { return lq[i]; },
      [&](int i) { return static_cast<int32_t>(load_index(p.pool_token, p.tok64, prow + i)); }, o,
      sm);
}

}  // namespace

Status taps_select(const TensorView& pool_token, const TensorView& pool_parent,
                   const TensorView& pool_size, const TensorView& log_qc, int64_t budget,
                   const TreeView& tree, void* workspace, size_t workspace_bytes, Stream stream) {
  const int64_t B = log_qc.shape[0], P1 = log_qc.shape[1];
  if (B == 0) return Status::Ok();
  Params p{};
  p.pool_token = pool_token.data;
  p.tok64 = pool_token.dtype == DType::kInt64;
  p.pool_parent = pool_parent.data;
  p.par64 = pool_parent.dtype == DType::kInt64;
  p.pool_size = pool_size.data;
  p.size64 = pool_size.dtype == DType::kInt64;
  p.log_qc = log_qc.ptr<const float>();
  p.out = tree_out(tree);
  p.lay = taps_layout(P1, budget + 1);
  p.P1 = static_cast<int>(P1);
  p.N = static_cast<int>(budget + 1);
  p.W = static_cast<int>(anc_words(budget + 1));
  size_t smem = 0;
  DIFFTREE_RETURN_IF_ERROR(place_block_scratch(taps_select_kernel, "taps_select", B, p.lay.total,
                                               workspace, workspace_bytes, &p.workspace, &smem));
  taps_select_kernel<<<static_cast<unsigned>(B), kPoolThreads, smem,
                       static_cast<cudaStream_t>(stream)>>>(p);
  return launch_status("taps_select");
}

}  // namespace difftree::cuda
