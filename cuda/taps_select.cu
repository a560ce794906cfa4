// taps_select on the device: one CTA per request, exact and bit-identical to cpu/taps.cpp
// (pool_select's heap over the pool under the normative order of docs/NOTES.md).
//
// The heap pops the top min(N, pool_size) pool rows under the total order (reach desc, depth asc,
// earlier parent, smaller pool index), "earlier parent" being the parent's output position. The
// order restricted to one depth is (reach desc, parent's rank within its depth, pool index), so
// it is computed level by level:
//   1. depth of every row (walk to the root), rows bucketed by depth;
//   2. for depth 1, 2, ...: reach = fp32(reach(parent) + log_qc) and the within-depth rank by
//      counting over the unique key ordered(reach) << 32 | ~(parent's rank << 16 | row);
//   3. the global key ordered(reach) << 32 | ~(depth << 16 | within-depth rank) is unique; an exact
//      radix select keeps the best min(N, pool_size) (the root forced first), rank counting sorts
//      them, and block_finalize_tree derives links, anc and padding.
// Because log_qc <= 0 a child never ranks before its parent, so the kept rows are prefix-closed
// and parent < child. Pool data cannot be validated without a host sync: it is trusted (as the
// CPU op checks it), and parents are clamped so malformed input cannot go out of bounds.
#include <cuda_runtime.h>

#include <algorithm>
#include <string>

#include "block_select.cuh"
#include "index.cuh"
#include "launchers.h"
#include "sampling_math.h"
#include "tree_build.cuh"

namespace difftree::cuda {
namespace {

constexpr int kThreads = 512;
constexpr size_t kMaxSmemBytes = 96 * 1024;

struct Layout {
  size_t key, sel_key;                         // u64
  size_t par, dep, reach, drank, lvl, outpos;  // [P1] i32 / f32
  size_t dcnt, dfill;                          // [P1 + 1] i32
  size_t sel_node, opar;                       // [N] i32
  size_t ccount, coff, cfill, ctab, sidx;      // link scratch
  size_t total;
};

Layout make_layout(int64_t P1, int64_t N) {
  Layout l{};
  size_t off = 0;
  auto take = [&](int64_t count, size_t elem) {
    off = (off + 15) / 16 * 16;
    const size_t at = off;
    off += static_cast<size_t>(count) * elem;
    return at;
  };
  l.key = take(P1, 8);
  l.sel_key = take(N, 8);
  l.par = take(P1, 4);
  l.dep = take(P1, 4);
  l.reach = take(P1, 4);
  l.drank = take(P1, 4);
  l.lvl = take(P1, 4);
  l.outpos = take(P1, 4);
  l.dcnt = take(P1 + 1, 4);
  l.dfill = take(P1 + 1, 4);
  l.sel_node = take(N, 4);
  l.opar = take(N, 4);
  l.ccount = take(N, 4);
  l.coff = take(N + 1, 4);
  l.cfill = take(N, 4);
  l.ctab = take(N, 4);
  l.sidx = take(N, 4);
  l.total = (off + 255) / 256 * 256;
  return l;
}

struct Params {
  const void* pool_token;
  bool tok64;
  const void* pool_parent;
  bool par64;
  const void* pool_size;
  bool size64;
  const float* log_qc;
  int32_t* token;
  int32_t* parent;
  int32_t* depth;
  float* score;
  int32_t* first_child;
  int32_t* next_sibling;
  uint32_t* anc;
  int32_t* num_nodes;
  unsigned char* workspace;  // nullptr: everything lives in dynamic shared memory
  Layout lay;
  int P1, N, W;
};

__global__ void __launch_bounds__(kThreads) taps_select_kernel(Params p) {
  extern __shared__ __align__(16) unsigned char dsmem[];
  __shared__ SelectSmem ss;
  __shared__ int warp_sums[33];
  __shared__ int s_maxd, s_slot;
  const int b = blockIdx.x, tid = threadIdx.x, T = blockDim.x;
  unsigned char* base = p.workspace ? p.workspace + static_cast<size_t>(b) * p.lay.total : dsmem;
  const Layout& lay = p.lay;
  uint64_t* key = reinterpret_cast<uint64_t*>(base + lay.key);
  uint64_t* sel_key = reinterpret_cast<uint64_t*>(base + lay.sel_key);
  int* par = reinterpret_cast<int*>(base + lay.par);
  int* dep = reinterpret_cast<int*>(base + lay.dep);
  float* reach = reinterpret_cast<float*>(base + lay.reach);
  int* drank = reinterpret_cast<int*>(base + lay.drank);
  int* lvl = reinterpret_cast<int*>(base + lay.lvl);
  int* outpos = reinterpret_cast<int*>(base + lay.outpos);
  int* dcnt = reinterpret_cast<int*>(base + lay.dcnt);
  int* dfill = reinterpret_cast<int*>(base + lay.dfill);
  int* sel_node = reinterpret_cast<int*>(base + lay.sel_node);
  int* opar = reinterpret_cast<int*>(base + lay.opar);
  const int P1 = p.P1, N = p.N;
  const int64_t prow = static_cast<int64_t>(b) * P1;
  const int64_t size = load_index(p.pool_size, p.size64, b);
  const int n = static_cast<int>(size < 1 ? 1 : (size > P1 ? P1 : size));
  const float* lq = p.log_qc + prow;

  // 1. parents (clamped), depths, rows bucketed by depth.
  if (tid == 0) {
    s_maxd = 0;
    s_slot = 0;
  }
  for (int i = tid; i < n; i += T) {
    int pi = -1;
    if (i > 0) {
      const int64_t v = load_index(p.pool_parent, p.par64, prow + i);
      pi = (v >= 0 && v < i) ? static_cast<int>(v) : 0;
    }
    par[i] = pi;
    outpos[i] = -1;
  }
  for (int i = tid; i <= n; i += T) dcnt[i] = 0;
  __syncthreads();
  for (int i = tid; i < n; i += T) {
    int d = 0;
    for (int j = i; j > 0; j = par[j]) ++d;
    dep[i] = d;
    atomicMax(&s_maxd, d);
    atomicAdd(&dcnt[d], 1);
  }
  __syncthreads();
  const int maxd = s_maxd;
  block_exclusive_scan(dcnt, maxd + 2, warp_sums);  // dcnt[d] := first slot of depth d
  for (int i = tid; i <= maxd + 1; i += T) dfill[i] = dcnt[i];
  __syncthreads();
  for (int i = tid; i < n; i += T) lvl[atomicAdd(&dfill[dep[i]], 1)] = i;
  if (tid == 0) {
    reach[0] = 0.0f;
    drank[0] = 0;
  }
  __syncthreads();

  // 2. reach and the within-depth rank, one depth at a time.
  for (int d = 1; d <= maxd; ++d) {
    const int begin = dcnt[d], end = dcnt[d + 1];
    for (int e = begin + tid; e < end; e += T) {
      const int i = lvl[e], pi = par[i];
      const float r = __fadd_rn(reach[pi], lq[i]);
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
    threshold = block_radix_select<false>(n, kf, all, none, static_cast<uint32_t>(m), 0.0, ss);
  }
  for (int i = tid; i < n; i += T) {
    if (key[i] >= threshold) {
      const int at = atomicAdd(&s_slot, 1);
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
  const int64_t row = static_cast<int64_t>(b) * N;
  for (int s = tid; s < m; s += T) {
    const int i = sel_node[s], pos = outpos[i];
    p.token[row + pos] = static_cast<int32_t>(load_index(p.pool_token, p.tok64, prow + i));
    p.depth[row + pos] = dep[i];
    p.score[row + pos] = reach[i];
    opar[pos] = i == 0 ? -1 : outpos[par[i]];  // -1 (clamped to 0) only for malformed pools
  }
  __syncthreads();
  TreeRows o{p.token + row,
             p.parent + row,
             p.depth + row,
             p.score + row,
             p.first_child + row,
             p.next_sibling + row,
             p.anc + row * p.W,
             p.num_nodes + b,
             N,
             p.W};
  LinkScratch ls{reinterpret_cast<int*>(base + lay.ccount), reinterpret_cast<int*>(base + lay.coff),
                 reinterpret_cast<int*>(base + lay.cfill), reinterpret_cast<int*>(base + lay.ctab),
                 reinterpret_cast<int*>(base + lay.sidx)};
  block_finalize_tree(opar, m, o, ls, warp_sums);
}

}  // namespace

size_t taps_select_workspace_bytes(int64_t B, int64_t P1, int64_t budget) {
  if (B <= 0 || P1 < 1 || budget < 1) return 0;
  const Layout lay = make_layout(P1, budget + 1);
  return lay.total <= kMaxSmemBytes ? 0 : static_cast<size_t>(B) * lay.total;
}

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
  p.token = tree.token.ptr<int32_t>();
  p.parent = tree.parent.ptr<int32_t>();
  p.depth = tree.depth.ptr<int32_t>();
  p.score = tree.score.ptr<float>();
  p.first_child = tree.first_child.ptr<int32_t>();
  p.next_sibling = tree.next_sibling.ptr<int32_t>();
  p.anc = reinterpret_cast<uint32_t*>(tree.anc.ptr<int32_t>());
  p.num_nodes = tree.num_nodes.ptr<int32_t>();
  p.lay = make_layout(P1, budget + 1);
  p.P1 = static_cast<int>(P1);
  p.N = static_cast<int>(budget + 1);
  p.W = static_cast<int>(anc_words(budget + 1));
  const bool in_smem = p.lay.total <= kMaxSmemBytes;
  size_t smem = 0;
  if (in_smem) {
    smem = p.lay.total;
  } else {
    if (workspace == nullptr || workspace_bytes < static_cast<size_t>(B) * p.lay.total)
      return InvalidValue("workspace: too small for taps_select");
    p.workspace = static_cast<unsigned char*>(workspace);
  }
  if (smem > 48 * 1024) {
    const cudaError_t e = cudaFuncSetAttribute(
        taps_select_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (e != cudaSuccess) return Internal(std::string("taps_select: ") + cudaGetErrorString(e));
  }
  taps_select_kernel<<<static_cast<unsigned>(B), kThreads, smem,
                       static_cast<cudaStream_t>(stream)>>>(p);
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return Internal(std::string("taps_select: ") + cudaGetErrorString(err));
  return Status::Ok();
}

}  // namespace difftree::cuda
