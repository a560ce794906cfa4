// PRESTO on the device (cpu/presto.cpp, ALGORITHMS.md §7): ngram_extend and presto_select, one
// CTA per request, no host synchronisation (both are captured in CUDA graphs). The n-gram key
// layout, probing and the normaliser's lane order are shared with the CPU ops through
// common/ngram_key.h.
//
// ngram_extend: the (position, order) pairs of the new tokens are spread over the block; each
// adds 1 to c(h, t) and to c(h, ⊥) with a lock-free insert (atomicCAS claims an empty slot or
// finds the key, then atomicAdd). Slot positions depend on the arrival order, the counts do not:
// lookups probe until the key or an empty slot, and there are no deletions. An insert that finds
// the table full is dropped and sets overflow[b] (the CPU op raises instead). The history row is
// rewritten after a __syncthreads, once every thread has read the old one.
//
// presto_select: the CPU heap's best-first loop, one admission per step, each step block-wide.
// The heap holds at most one entry per admitted node u (its best child not admitted yet), so the
// next node is the argmin over admitted u of the unique key
//   ~ordered(score(u) + edge) << 32 | (depth(u) + 1) << 13 | u     (score desc, depth asc, u asc),
// kept per node in fkey[]. A node's children follow its edge list in the order (edge desc, rank
// asc) = ascending ekey = ~ordered(edge) << 32 | rank, so "the next child" is the smallest ekey
// above the current one (a block argmin over the K candidates). Edge lists are either the shared
// list of a depth (no context of order >= 2 seen: computed once, stored) or the node's own, which
// is recomputed from (log-prob, prior, log Z(u)) when needed, so memory stays O(L K + N) rather
// than O(N K): per node only log Z, the orders in use (top) and their context counts are kept.
// Per step:
//   1. argmin over fkey -> the parent u and the child's depth d; the new node i = n gets
//      token = cand[d][rank of u's current ekey], score = its precomputed child score;
//   2. node i's history (u's shifted left, the token appended) and its context counts c(h) of
//      orders 2..order (one thread per order), which give top (the CPU's first unavailable or
//      unseen order ends the recursion);
//   3. u's next child: the smallest ekey above the current one; i's own list: prior, q and
//      w = q p^λ per candidate, the two normaliser sums by one warp in the lane order of
//      ngram::kSumLanes (lane l sums r = l, l + 32, ... sequentially, then a shuffle fold), then
//      its edges and its best child.
// Arithmetic mirrors the CPU op statement by statement: doubles with the _rn intrinsics (no FMA
// contraction), fp32 path scores fp32(score(parent) + edge). The one source of difference is
// CUDA's double exp/log (<= 1-2 ulp from glibc's): after rounding an edge to fp32 it can only
// matter when the double value lies within a few ulp of an fp32 rounding boundary (docs/NOTES.md).
//
// Candidates, context and the table are trusted (the CPU op checks them); every index is clamped
// or bounded, so malformed data yields a malformed tree, never an out-of-bounds access.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "block_scratch.cuh"
#include "common/ngram_key.h"
#include "index.cuh"
#include "launchers.h"
#include "pool_select.cuh"
#include "sampling_math.h"
#include "tree_build.cuh"

namespace difftree::cuda {
namespace {

using ngram::kContextTotal;
static_assert(ngram::kSumLanes == 32, "the normaliser's lane order is one warp's");

constexpr int kExtendThreads = 256;
constexpr int kSelectThreads = 256;
constexpr uint64_t kNone = ~0ull;
constexpr unsigned kFullMask = 0xffffffffu;

// ---- ngram_extend ----------------------------------------------------------------------------

struct ExtendParams {
  int64_t* keys;     // [B, H]
  int32_t* counts;   // [B, H]
  int64_t* history;  // [B, C]
  const void* tokens;
  bool tok64;
  const void* num_tokens;
  bool num64;
  int32_t* overflow;  // [B] or nullptr
  int64_t H, T;
  int C, order;
};

// Adds 1 to `key` in one table; false when all H slots hold other keys.
__device__ __forceinline__ bool table_add(int64_t* keys, int32_t* counts, uint64_t mask,
                                          int64_t key) {
  const unsigned long long k = static_cast<unsigned long long>(key);
  uint64_t i = ngram::home_slot(key, mask);
  for (uint64_t probes = 0; probes <= mask; ++probes, i = (i + 1) & mask) {
    const unsigned long long old =
        atomicCAS(reinterpret_cast<unsigned long long*>(keys + i), 0ull, k);
    if (old == 0ull || old == k) {
      atomicAdd(counts + i, 1);
      return true;
    }
  }
  return false;
}

__global__ void __launch_bounds__(kExtendThreads, 1) ngram_extend_kernel(ExtendParams p) {
  const int b = blockIdx.x, tid = threadIdx.x;
  const int C = p.C, order = p.order;
  const int64_t T = p.T;
  const int64_t nt = load_index(p.num_tokens, p.num64, b);
  const int64_t n = nt < 0 ? 0 : (nt > T ? T : nt);
  int64_t* hist = p.history + static_cast<int64_t>(b) * C;
  const int64_t trow = static_cast<int64_t>(b) * T;
  // The stream's continuation: seq = history[b, 0..C) ++ tokens[b, 0..n), as int32 (as the CPU).
  auto seq = [&](int64_t k) -> int32_t {
    return k < C ? static_cast<int32_t>(hist[k])
                 : static_cast<int32_t>(load_index(p.tokens, p.tok64, trow + (k - C)));
  };
  // The new history, read before any thread rewrites the row.
  int32_t new_hist = 0;
  if (tid < C) new_hist = seq(n + tid);

  const uint64_t mask = static_cast<uint64_t>(p.H) - 1;
  int64_t* keys = p.keys + static_cast<int64_t>(b) * p.H;
  int32_t* counts = p.counts + static_cast<int64_t>(b) * p.H;
  bool dropped = false;
  const int64_t items = n * order;  // (new position j, n-gram length m)
  for (int64_t e = tid; e < items; e += blockDim.x) {
    const int64_t j = C + e / order;
    const int m = 1 + static_cast<int>(e % order);
    const int64_t start = j - m + 1;
    if (start < 0) continue;
    // The CPU stops at the first m whose first token is unavailable (< 0): m is added iff
    // seq[j - m' + 1] >= 0 for every m' <= m.
    bool ok = true;
    for (int64_t k = start; k <= j; ++k) ok = ok && seq(k) >= 0;
    if (!ok) continue;
    auto h = [&](int64_t k) { return seq(start + k); };
    const uint32_t t = static_cast<uint32_t>(seq(j));
    if (!table_add(keys, counts, mask, ngram::key(h, m - 1, t))) dropped = true;
    if (!table_add(keys, counts, mask, ngram::key(h, m - 1, kContextTotal))) dropped = true;
  }
  if (dropped && p.overflow != nullptr) p.overflow[b] = 1;
  __syncthreads();
  if (tid < C) hist[tid] = static_cast<int64_t>(new_hist);
}

// ---- presto_select ---------------------------------------------------------------------------

struct SelectParams {
  const void* cand_token;
  bool tok64;
  const float* cand_lp;
  const void* root;  // nullable
  bool root64;
  const void* context;
  bool ctx64;
  const int64_t* keys;
  const int32_t* counts;
  int64_t H;
  bool per_request;  // keys [B, H] (row b) rather than one [H] table
  double alpha, lam, uniform;
  TreeOut out;               // the output tree
  unsigned char* workspace;  // nullptr: everything lives in dynamic shared memory
  PrestoLayout lay;
  int L, K, N, W, C, order, leff;
};

struct PrestoSmem {
  unsigned long long red[kSelectThreads / 32];
  int warp_sums[33];
  int ctxc[kMaxOrder];  // node i's c(h) of order m at [m - 2] (0: unavailable or unseen)
  double total;
  double logz;
};

// Block-wide minimum (all threads call; returns it to all). Ends with a barrier, and starts
// with one after the warp stage, so writes before the call are visible after it.
__device__ __forceinline__ uint64_t block_min_u64(uint64_t v, PrestoSmem& sm) {
  for (int o = 16; o > 0; o >>= 1) {
    const uint64_t w = __shfl_xor_sync(kFullMask, v, o);
    v = w < v ? w : v;
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) sm.red[warp] = v;
  __syncthreads();
  uint64_t r = kNone;
  for (int w = 0; w < static_cast<int>(blockDim.x / 32); ++w) r = sm.red[w] < r ? sm.red[w] : r;
  __syncthreads();
  return r;
}

__device__ __forceinline__ uint64_t warp_min_u64(uint64_t v) {
  for (int o = 16; o > 0; o >>= 1) {
    const uint64_t w = __shfl_xor_sync(kFullMask, v, o);
    v = w < v ? w : v;
  }
  return v;
}

// log Z from the lanes' partial sums of w (tilted) and q (mass), lane l holding the sequential
// sum over r = l, l + 32, ...: the fold partial[l] += partial[l + o] for o = 16, ..., 1 (cpu
// lane_sum), then Z = tilted + max(0, 1 - mass). The whole warp calls; all lanes get log Z.
__device__ __forceinline__ double warp_log_z(double pw, double pq) {
  for (int o = ngram::kSumLanes / 2; o >= 1; o /= 2) {
    pw = __dadd_rn(pw, __shfl_down_sync(kFullMask, pw, o));
    pq = __dadd_rn(pq, __shfl_down_sync(kFullMask, pq, o));
  }
  const double tilted = __shfl_sync(kFullMask, pw, 0);
  const double mass = __shfl_sync(kFullMask, pq, 0);
  const double rest = __dsub_rn(1.0, mass);
  const double z = rest > 0.0 ? __dadd_rn(tilted, rest) : tilted;
  return log(z);
}

// e = fp32(lp + tl - log Z) clamped to [kMinLogprob, 0] (cpu make_edges, λ != 0).
__device__ __forceinline__ float edge_of(float lp, double tl, double log_z) {
  const double raw = __dadd_rn(static_cast<double>(lp), tl);
  const double e = __dsub_rn(raw, log_z);
  float ef = __double2float_rn(e);
  if (ef > 0.0f) ef = 0.0f;
  if (ef < kMinLogprob) ef = kMinLogprob;
  return ef;
}

// Position key in an edge list: ascending = (edge desc, rank asc).
__device__ __forceinline__ uint64_t edge_key(float edge, int r) {
  return (static_cast<uint64_t>(~sampling::ordered(edge)) << 32) | static_cast<uint32_t>(r);
}
// The edge of a position key (exact: ordered() is a bijection on non-NaN floats up to the sign
// of zero, and scores are never -0, so fp32(score + edge) is unchanged).
__device__ __forceinline__ float key_edge(uint64_t k) {
  return sampling::unordered(~static_cast<uint32_t>(k >> 32));
}
// Frontier key of node u whose best pending child has score s and depth d: ascending = the
// CPU heap's order (score desc, depth asc, parent asc); d <= 4096 and u < 4097 fit 13 bits.
__device__ __forceinline__ uint64_t frontier_key(float s, int d, int u) {
  return (static_cast<uint64_t>(~sampling::ordered(s)) << 32) | (static_cast<uint64_t>(d) << 13) |
         static_cast<uint64_t>(u);
}

__global__ void __launch_bounds__(kSelectThreads, 1) presto_select_kernel(SelectParams p) {
  extern __shared__ __align__(16) unsigned char dsmem[];
  __shared__ PrestoSmem sm;
  const int b = blockIdx.x, tid = threadIdx.x, T = blockDim.x;
  const int warp = tid / 32, lane = tid % 32, nwarps = T / 32;
  unsigned char* base = p.workspace ? p.workspace + static_cast<size_t>(b) * p.lay.total : dsmem;
  const PrestoLayout& lay = p.lay;
  uint64_t* fkey = at_offset<uint64_t>(base, lay.fkey);
  uint64_t* ekey = at_offset<uint64_t>(base, lay.ekey);
  uint64_t* sfirst = at_offset<uint64_t>(base, lay.sfirst);
  double* logz = at_offset<double>(base, lay.logz);
  double* p1 = at_offset<double>(base, lay.p1);
  double* wbuf = at_offset<double>(base, lay.wbuf);
  double* qbuf = at_offset<double>(base, lay.qbuf);
  double* tlbuf = at_offset<double>(base, lay.tlbuf);
  float* sedge = at_offset<float>(base, lay.sedge);
  float* score = at_offset<float>(base, lay.score);
  float* pscore = at_offset<float>(base, lay.pscore);
  int* dep = at_offset<int>(base, lay.dep);
  int* par = at_offset<int>(base, lay.par);
  int* tok = at_offset<int>(base, lay.tok);
  int* top = at_offset<int>(base, lay.top);
  int* ctx = at_offset<int>(base, lay.ctx);
  int* hist = at_offset<int>(base, lay.hist);

  const int L = p.L, K = p.K, N = p.N, C = p.C, order = p.order, leff = p.leff;
  const double lam = p.lam, alpha = p.alpha;
  const int64_t* keys = p.keys + (p.per_request ? static_cast<int64_t>(b) * p.H : 0);
  const int32_t* counts = p.counts + (p.per_request ? static_cast<int64_t>(b) * p.H : 0);
  const uint64_t mask = static_cast<uint64_t>(p.H) - 1;
  auto lookup = [&](int64_t key) { return ngram::lookup(keys, counts, mask, key); };
  auto no_context = [](int64_t) { return 0; };  // the empty history (never read)
  const int64_t crow = static_cast<int64_t>(b) * L * K;
  // Candidate r of depth dd (1-based).
  auto lp_at = [&](int dd, int r) {
    return p.cand_lp[crow + static_cast<int64_t>(dd - 1) * K + r];
  };
  auto token_at = [&](int dd, int r) {
    return static_cast<int32_t>(
        load_index(p.cand_token, p.tok64, crow + static_cast<int64_t>(dd - 1) * K + r));
  };
  // Prior of candidate r of depth dd under a node's history h (C entries) with orders 2..top in
  // use, their context counts cc[m - 2]: the CPU's recursion from the unigram prior p1.
  auto own_prior = [&](const int* h, int tp, const int* cc, int dd, int r) {
    const uint32_t t = static_cast<uint32_t>(token_at(dd, r));
    double q = p1[static_cast<int64_t>(dd - 1) * K + r];
    for (int m = 2; m <= tp; ++m) {
      const int len = m - 1;
      const int* hc = h + (C - len);
      const double c_ht =
          static_cast<double>(lookup(ngram::key([hc](int64_t k) { return hc[k]; }, len, t)));
      const double num = __dadd_rn(c_ht, __dmul_rn(alpha, q));
      const double den = __dadd_rn(static_cast<double>(cc[m - 2]), alpha);
      q = __ddiv_rn(num, den);
    }
    return q;
  };

  // ---- the root, c(⊥), and the unigram prior of every candidate ----
  if (tid == 0) {
    sm.total = static_cast<double>(lookup(ngram::key(no_context, 0, kContextTotal)));
    tok[0] = p.root ? static_cast<int32_t>(load_index(p.root, p.root64, b)) : -1;
    par[0] = -1;
    dep[0] = 0;
    score[0] = 0.0f;
  }
  for (int j = tid; j < C; j += T)
    hist[j] = static_cast<int32_t>(load_index(p.context, p.ctx64, static_cast<int64_t>(b) * C + j));
  __syncthreads();
  const double total = sm.total;
  const int64_t lk = static_cast<int64_t>(leff) * K;
  if (lam != 0.0) {  // (λ = 0 never reads a prior)
    for (int64_t e = tid; e < lk; e += T) {
      const int dd = 1 + static_cast<int>(e / K), r = static_cast<int>(e % K);
      double q = p.uniform;
      if (order >= 1 && total > 0.0) {
        const uint32_t t = static_cast<uint32_t>(token_at(dd, r));
        const double c_ht = static_cast<double>(lookup(ngram::key(no_context, 0, t)));
        const double num = __dadd_rn(c_ht, __dmul_rn(alpha, q));
        const double den = __dadd_rn(total, alpha);
        q = __ddiv_rn(num, den);
      }
      p1[e] = q;
    }
    __syncthreads();
  }

  // ---- the shared edge list of every depth (one warp per depth) and its best entry ----
  for (int dd = 1 + warp; dd <= leff; dd += nwarps) {
    const int64_t row = static_cast<int64_t>(dd - 1) * K;
    double log_z = 0.0;
    if (lam != 0.0) {
      double pw = 0.0, pq = 0.0;
      for (int r = lane; r < K; r += 32) {
        const double q = exp(static_cast<double>(lp_at(dd, r)));
        const double lpa = log(p1[row + r]);
        const double tl = __dmul_rn(lam, lpa);
        const double w = __dmul_rn(q, exp(tl));
        pw = __dadd_rn(pw, w);
        pq = __dadd_rn(pq, q);
      }
      log_z = warp_log_z(pw, pq);
    }
    uint64_t best = kNone;
    for (int r = lane; r < K; r += 32) {
      float ef;
      if (lam == 0.0) {
        ef = lp_at(dd, r);  // DDTree: the raw log-prob, no clamp (as the CPU)
      } else {
        const double lpa = log(p1[row + r]);
        const double tl = __dmul_rn(lam, lpa);
        ef = edge_of(lp_at(dd, r), tl, log_z);
      }
      sedge[row + r] = ef;
      const uint64_t k = edge_key(ef, r);
      best = k < best ? k : best;
    }
    best = warp_min_u64(best);
    if (lane == 0) sfirst[dd - 1] = best;
  }
  __syncthreads();

  // ---- best-first admission ----
  const bool prior_possible = lam != 0.0 && order >= 2 && total != 0.0;
  int n = 0;   // admitted nodes before this step
  int u = -1;  // the parent of the node admitted in this step (-1: the root)
  int d = 0;   // its depth
  for (;;) {
    const int i = n;
    int32_t tok_i;
    if (u >= 0) {
      const int rank = static_cast<int>(static_cast<uint32_t>(ekey[u]));
      tok_i = token_at(d, rank);
      if (tid == 0) {
        tok[i] = tok_i;
        par[i] = u;
        dep[i] = d;
        score[i] = pscore[u];
      }
      for (int j = tid; j < C; j += T) hist[i * C + j] = j + 1 < C ? hist[u * C + j + 1] : tok_i;
    } else {
      tok_i = tok[0];
    }
    // Node i's history entry k, readable before the barrier that publishes hist[i].
    auto hv = [&](int k) -> int32_t {
      if (u < 0) return hist[k];
      return k + 1 < C ? hist[u * C + k + 1] : tok_i;
    };
    // A leaf, or the tree is full after i: no list (the CPU's push_first_child).
    const bool grow = d < L && K >= 1 && i + 1 < N;
    const bool prior_on = grow && prior_possible;
    if (prior_on) {
      if (tid < order - 1) {
        const int m = tid + 2, len = m - 1;
        int c = 0;
        if (len <= C && hv(C - len) >= 0) {
          const int base_k = C - len;
          c = lookup(ngram::key([&](int64_t k) { return hv(base_k + static_cast<int>(k)); }, len,
                                kContextTotal));
        }
        sm.ctxc[m - 2] = c;
      }
    }
    __syncthreads();  // hist[i], sm.ctxc
    int top_i = 1;
    if (prior_on) {
      for (int m = 2; m <= order; ++m) {
        if (sm.ctxc[m - 2] == 0) break;
        top_i = m;
      }
    }
    const bool own_i = top_i >= 2;
    if (tid == 0) {
      top[i] = top_i;
      for (int m = 2; m <= top_i; ++m) ctx[i * kMaxOrder + m - 2] = sm.ctxc[m - 2];
    }

    // u's next child (smallest position key above its current one) and i's own-list terms.
    uint64_t pnext = kNone;
    if (u >= 0 || own_i) {
      uint64_t local = kNone;
      if (u >= 0) {
        const uint64_t cur = ekey[u];
        const int tp = top[u];
        const double lz = logz[u];
        const int64_t row = static_cast<int64_t>(d - 1) * K;
        for (int r = tid; r < K; r += T) {
          float ef;
          if (tp >= 2) {
            const double pr = own_prior(hist + u * C, tp, ctx + u * kMaxOrder, d, r);
            const double lpa = log(pr);
            const double tl = __dmul_rn(lam, lpa);
            ef = edge_of(lp_at(d, r), tl, lz);
          } else {
            ef = sedge[row + r];
          }
          const uint64_t k = edge_key(ef, r);
          if (k > cur && k < local) local = k;
        }
      }
      if (own_i) {
        for (int r = tid; r < K; r += T) {
          const double pr = own_prior(hist + i * C, top_i, sm.ctxc, d + 1, r);
          const double q = exp(static_cast<double>(lp_at(d + 1, r)));
          const double lpa = log(pr);
          const double tl = __dmul_rn(lam, lpa);
          const double w = __dmul_rn(q, exp(tl));
          wbuf[r] = w;
          qbuf[r] = q;
          tlbuf[r] = tl;
        }
      }
      pnext = block_min_u64(local, sm);  // (its barriers publish wbuf / qbuf / tlbuf)
    }

    // i's best child.
    uint64_t ifirst = kNone;
    if (own_i) {
      if (warp == 0) {
        double pw = 0.0, pq = 0.0;
        for (int r = lane; r < K; r += 32) {
          pw = __dadd_rn(pw, wbuf[r]);
          pq = __dadd_rn(pq, qbuf[r]);
        }
        const double lz = warp_log_z(pw, pq);
        if (lane == 0) {
          sm.logz = lz;
          logz[i] = lz;
        }
      }
      __syncthreads();
      const double lz = sm.logz;
      uint64_t local = kNone;
      for (int r = tid; r < K; r += T) {
        const uint64_t k = edge_key(edge_of(lp_at(d + 1, r), tlbuf[r], lz), r);
        local = k < local ? k : local;
      }
      ifirst = block_min_u64(local, sm);
    } else if (grow) {
      ifirst = sfirst[d];  // the shared list of depth d + 1
    }

    if (tid == 0) {
      if (u >= 0) {
        if (pnext == kNone) {
          fkey[u] = kNone;  // every candidate of u admitted
        } else {
          ekey[u] = pnext;
          const float s = __fadd_rn(score[u], key_edge(pnext));
          pscore[u] = s;
          fkey[u] = frontier_key(s, d, u);
        }
      }
      if (ifirst == kNone) {
        fkey[i] = kNone;
      } else {
        ekey[i] = ifirst;
        const float s = __fadd_rn(score[i], key_edge(ifirst));
        pscore[i] = s;
        fkey[i] = frontier_key(s, d + 1, i);
      }
    }
    __syncthreads();
    n = i + 1;
    if (n >= N) break;

    // The next admission: the best pending child over the admitted nodes.
    uint64_t local = kNone;
    for (int j = tid; j < n; j += T) local = fkey[j] < local ? fkey[j] : local;
    const uint64_t best = block_min_u64(local, sm);
    if (best == kNone) break;  // every node is a leaf or exhausted: a smaller tree
    u = static_cast<int>(best & 0x1fffu);
    d = static_cast<int>((best >> 13) & 0x1fffu);
  }

  // ---- output ----
  const TreeRows o = p.out.rows(b, N, p.W);
  for (int j = tid; j < n; j += T) {
    o.token[j] = tok[j];
    o.depth[j] = dep[j];
    o.score[j] = score[j];
  }
  const LinkScratch ls{at_offset<int>(base, lay.ccount), at_offset<int>(base, lay.coff),
                       at_offset<int>(base, lay.cfill), at_offset<int>(base, lay.ctab),
                       at_offset<int>(base, lay.sidx)};
  block_finalize_tree(par, n, o, ls, sm.warp_sums);
}

}  // namespace

Status ngram_extend(const TensorView& keys, const TensorView& counts, const TensorView& history,
                    const TensorView& tokens, const TensorView& num_tokens, int64_t order,
                    const TensorView* overflow, Stream stream) {
  const int64_t B = tokens.shape[0];
  if (B == 0) return Status::Ok();
  ExtendParams p{};
  p.keys = keys.ptr<int64_t>();
  p.counts = counts.ptr<int32_t>();
  p.history = history.ptr<int64_t>();
  p.tokens = tokens.data;
  p.tok64 = tokens.dtype == DType::kInt64;
  p.num_tokens = num_tokens.data;
  p.num64 = num_tokens.dtype == DType::kInt64;
  p.overflow = overflow != nullptr ? overflow->ptr<int32_t>() : nullptr;
  p.H = keys.shape[keys.ndim - 1];
  p.T = tokens.shape[1];
  p.C = static_cast<int>(history.shape[1]);
  p.order = static_cast<int>(order);
  ngram_extend_kernel<<<static_cast<unsigned>(B), kExtendThreads, 0,
                        static_cast<cudaStream_t>(stream)>>>(p);
  return launch_status("ngram_extend");
}

Status presto_select(const TensorView& cand_token, const TensorView& cand_logprob, int64_t budget,
                     const TensorView* root_token, const TensorView& context,
                     const TensorView& keys, const TensorView& counts, const PrestoParams& params,
                     const TreeView& tree, void* workspace, size_t workspace_bytes, Stream stream) {
  const int64_t B = cand_logprob.shape[0], L = cand_logprob.shape[1], K = cand_logprob.shape[2];
  if (B == 0) return Status::Ok();
  SelectParams p{};
  p.cand_token = cand_token.data;
  p.tok64 = cand_token.dtype == DType::kInt64;
  p.cand_lp = cand_logprob.ptr<const float>();
  p.root = root_token != nullptr ? root_token->data : nullptr;
  p.root64 = root_token != nullptr && root_token->dtype == DType::kInt64;
  p.context = context.data;
  p.ctx64 = context.dtype == DType::kInt64;
  p.keys = keys.ptr<const int64_t>();
  p.counts = counts.ptr<const int32_t>();
  p.H = keys.shape[keys.ndim - 1];
  p.per_request = keys.ndim == 2;
  p.alpha = params.alpha;
  p.lam = params.lam;
  p.uniform = 1.0 / static_cast<double>(params.vocab);
  p.out = tree_out(tree);
  p.lay = presto_layout(L, K, budget, params.order);
  p.L = static_cast<int>(L);
  p.K = static_cast<int>(K);
  p.N = static_cast<int>(budget + 1);
  p.W = static_cast<int>(anc_words(budget + 1));
  p.C = static_cast<int>(std::max<int64_t>(params.order - 1, 0));
  p.order = static_cast<int>(params.order);
  p.leff = static_cast<int>(std::min(L, budget));
  size_t smem = 0;
  DIFFTREE_RETURN_IF_ERROR(place_block_scratch(presto_select_kernel, "presto_select", B,
                                               p.lay.total, workspace, workspace_bytes,
                                               &p.workspace, &smem));
  presto_select_kernel<<<static_cast<unsigned>(B), kSelectThreads, smem,
                         static_cast<cudaStream_t>(stream)>>>(p);
  return launch_status("presto_select");
}

}  // namespace difftree::cuda
