// Per-request scratch of the selectors launched one CTA per request (ddtree_select, taps_select,
// d2sd_select, presto_select): the byte offsets the kernels use and the workspace sizes they imply.
// Plain host arithmetic with no CUDA header, so the dispatch layer of every build (CUDA compiled
// or not) reports the CUDA path's workspace size from the very layout the kernels use.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>

namespace difftree::cuda {

// Dynamic shared memory a request's scratch may use before it moves to the workspace.
constexpr size_t kMaxScratchSmemBytes = 96 * 1024;

// Workspace bytes B requests need for `per_request` bytes of scratch each (0: shared memory).
inline size_t block_scratch_workspace_bytes(int64_t B, size_t per_request) {
  return per_request <= kMaxScratchSmemBytes ? 0 : static_cast<size_t>(B) * per_request;
}

// Byte offsets into one request's scratch (dynamic shared memory, or a global workspace slice).
struct ScratchAlloc {
  size_t off = 0;
  size_t take(int64_t count, size_t elem) {
    off = (off + 15) / 16 * 16;
    const size_t at = off;
    off += static_cast<size_t>(count) * elem;
    return at;
  }
  size_t total() const { return (off + 255) / 256 * 256; }
};

// ---- pool selection (taps_select, d2sd_select; cuda/pool_select.cuh) -------------------------

struct PoolLayout {
  size_t key, sel_key;                         // u64
  size_t par, dep, reach, drank, lvl, outpos;  // [P1] i32 / f32
  size_t dcnt, dfill;                          // [P1 + 1] i32
  size_t sel_node, opar;                       // [N] i32
  size_t ccount, coff, cfill, ctab, sidx;      // link scratch
};

inline PoolLayout pool_layout(int64_t P1, int64_t N, ScratchAlloc& a) {
  PoolLayout l{};
  l.key = a.take(P1, 8);
  l.sel_key = a.take(N, 8);
  l.par = a.take(P1, 4);
  l.dep = a.take(P1, 4);
  l.reach = a.take(P1, 4);
  l.drank = a.take(P1, 4);
  l.lvl = a.take(P1, 4);
  l.outpos = a.take(P1, 4);
  l.dcnt = a.take(P1 + 1, 4);
  l.dfill = a.take(P1 + 1, 4);
  l.sel_node = a.take(N, 4);
  l.opar = a.take(N, 4);
  l.ccount = a.take(N, 4);
  l.coff = a.take(N + 1, 4);
  l.cfill = a.take(N, 4);
  l.ctab = a.take(N, 4);
  l.sidx = a.take(N, 4);
  return l;
}

struct TapsLayout {
  PoolLayout pool;
  size_t total;
};

inline TapsLayout taps_layout(int64_t P1, int64_t N) {
  ScratchAlloc a;
  TapsLayout l{};
  l.pool = pool_layout(P1, N, a);
  l.total = a.total();
  return l;
}

inline size_t taps_select_workspace_bytes(int64_t B, int64_t P1, int64_t budget) {
  if (B <= 0 || P1 < 1 || budget < 1) return 0;
  return block_scratch_workspace_bytes(B, taps_layout(P1, budget + 1).total);
}

struct D2sdLayout {
  PoolLayout pool;
  size_t tok, edge, fc, ns;  // the trie: token, edge score, first child, next sibling ([P1])
  size_t total;
};

inline D2sdLayout d2sd_layout(int64_t P1, int64_t N) {
  ScratchAlloc a;
  D2sdLayout l{};
  l.pool = pool_layout(P1, N, a);
  l.tok = a.take(P1, 4);
  l.edge = a.take(P1, 4);
  l.fc = a.take(P1, 4);
  l.ns = a.take(P1, 4);
  l.total = a.total();
  return l;
}

// Rows of d2sd_select's trie pool: the root, the first draft, K branches.
inline int64_t d2sd_pool_rows(int64_t L1, int64_t K, int64_t L2) { return 1 + L1 + K * L2; }

inline size_t d2sd_select_workspace_bytes(int64_t B, int64_t L1, int64_t K, int64_t L2,
                                          int64_t budget) {
  if (B <= 0 || L1 < 1 || K < 0 || L2 < 1 || budget < 1) return 0;
  return block_scratch_workspace_bytes(B, d2sd_layout(d2sd_pool_rows(L1, K, L2), budget + 1).total);
}

// ---- ddtree_select (cuda/ddtree_select.cu) -----------------------------------------------------

struct DdtreeLayout {
  size_t sel, sorted, cand;                       // u64
  size_t rscore[2];                               // f32
  size_t rdepth[2], rpos[2], rppos[2], rrank[2];  // i32
  size_t lpd;                                     // f32
  size_t pcount, poff;                            // i32
  size_t dcnt, map, par, ccount, coff, ctab;      // i32
  size_t total;
};

// Capacity of the candidate buffer.
inline int64_t ddtree_max_candidates(int64_t budget, int64_t keff) {
  int64_t m = 0;
  for (int64_t q = 0; q < budget; ++q) m += std::min(keff, budget / (q + 1));
  return std::max<int64_t>(m, 1);
}

inline DdtreeLayout ddtree_layout(int64_t L, int64_t K, int64_t budget) {
  const int64_t N = budget + 1, keff = std::max<int64_t>(1, std::min(K, budget));
  const int64_t leff = std::min(L, budget);
  DdtreeLayout l{};
  ScratchAlloc a;
  l.sel = a.take(budget, 8);
  l.sorted = a.take(budget, 8);
  l.cand = a.take(ddtree_max_candidates(budget, keff), 8);
  for (int i = 0; i < 2; ++i) {
    l.rscore[i] = a.take(N, 4);
    l.rdepth[i] = a.take(N, 4);
    l.rpos[i] = a.take(N, 4);
    l.rppos[i] = a.take(N, 4);
    l.rrank[i] = a.take(N, 4);
  }
  l.lpd = a.take(keff, 4);
  l.pcount = a.take(budget + 1, 4);
  l.poff = a.take(budget + 1, 4);
  l.dcnt = a.take(leff + 2, 4);
  l.map = a.take(N, 4);
  l.par = a.take(N, 4);
  l.ccount = a.take(N, 4);
  l.coff = a.take(N + 1, 4);
  l.ctab = a.take(N, 4);
  l.total = a.total();
  return l;
}

inline size_t ddtree_select_workspace_bytes(int64_t B, int64_t L, int64_t K, int64_t budget) {
  if (B <= 0 || budget < 1) return 0;
  return block_scratch_workspace_bytes(B, ddtree_layout(L, K, budget).total);
}

// ---- presto_select (cuda/presto.cu) ------------------------------------------------------------

constexpr int kMaxOrder = 8;  // PrestoParams::order <= 8 (checked by the dispatch layer)

struct PrestoLayout {
  size_t fkey, ekey, sfirst;               // u64: [N], [N], [leff]
  size_t logz, p1, wbuf, qbuf, tlbuf;      // f64: [N], [leff K], [K] x 3
  size_t sedge, score, pscore;             // f32: [leff K], [N], [N]
  size_t dep, par, tok, top, ctx, hist;    // i32: [N] x 4, [N * 8], [N * C]
  size_t ccount, coff, cfill, ctab, sidx;  // i32: block_finalize_tree's scratch
  size_t total;
};

inline PrestoLayout presto_layout(int64_t L, int64_t K, int64_t budget, int64_t order) {
  const int64_t N = budget + 1, leff = std::min(L, budget), C = std::max<int64_t>(order - 1, 0);
  const int64_t lk = leff * K;
  ScratchAlloc a;
  PrestoLayout l{};
  l.fkey = a.take(N, 8);
  l.ekey = a.take(N, 8);
  l.sfirst = a.take(leff, 8);
  l.logz = a.take(N, 8);
  l.p1 = a.take(lk, 8);
  l.wbuf = a.take(K, 8);
  l.qbuf = a.take(K, 8);
  l.tlbuf = a.take(K, 8);
  l.sedge = a.take(lk, 4);
  l.score = a.take(N, 4);
  l.pscore = a.take(N, 4);
  l.dep = a.take(N, 4);
  l.par = a.take(N, 4);
  l.tok = a.take(N, 4);
  l.top = a.take(N, 4);
  l.ctx = a.take(N * kMaxOrder, 4);
  l.hist = a.take(N * C, 4);
  l.ccount = a.take(N, 4);
  l.coff = a.take(N + 1, 4);
  l.cfill = a.take(N, 4);
  l.ctab = a.take(N, 4);
  l.sidx = a.take(N, 4);
  l.total = a.total();
  return l;
}

inline size_t presto_select_workspace_bytes(int64_t B, int64_t L, int64_t K, int64_t budget,
                                            int64_t order) {
  if (B <= 0 || budget < 1 || L < 0 || K < 0) return 0;
  return block_scratch_workspace_bytes(B, presto_layout(L, K, budget, order).total);
}

}  // namespace difftree::cuda
