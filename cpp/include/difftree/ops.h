// The difftree core operations (C++ API). Each op validates its arguments once, here, and then
// runs the CPU implementation or the CUDA launcher for the arguments' device.
//
// Every op comes as a pair: check_<op>(inputs) validates the inputs and parameters only (so a
// caller can size its outputs), <op>(inputs, outputs, stream) validates everything and runs.
// Outputs are caller-allocated; ops never allocate device memory and never synchronise. The
// *_workspace_bytes functions are shape arithmetic giving the CUDA path's scratch size in every
// build, CUDA compiled or not (the CPU path ignores workspaces).
// Vocabulary: B batch, L depth, K candidates per depth, V vocabulary, N tree capacity.
#pragma once

#include <cstddef>
#include <cstdint>

#include "difftree/status.h"
#include "difftree/tensor.h"
#include "difftree/tree.h"

namespace difftree {

// Log-probs below this are clamped so that no -inf arithmetic happens downstream.
constexpr float kMinLogprob = -1e4f;
constexpr int64_t kMaxBudget = 4096;

// ---- topk_logprobs --------------------------------------------------------------------------
// logits [B, L, V] (f32/f16/bf16, finite or -inf) -> token int32 [B, L, K], logprob f32 [B, L, K]:
// the K best entries of each row's fp32 log-softmax, descending, ties to the lower token id,
// clamped below at kMinLogprob. The row's log-sum-exp is accumulated in f64 and rounded to f32;
// logprob = fp32(logit - lse) so every implementation rounds identically.
Status check_topk_logprobs(const TensorView& logits, int64_t k);
Status topk_logprobs(const TensorView& logits, int64_t k, const TensorView& token,
                     const TensorView& logprob, Stream stream);
// The same, with an optional int32 [B, L] `row_error` output: 0 for a good row, 1 when the row
// holds NaN or +inf, 2 when every entry is -inf. The CPU path still returns InvalidValue for such
// rows (and writes 0s otherwise); the CUDA path cannot report without a host sync, so it writes
// the flag instead, and the bad row's outputs are token = 0..K-1, logprob = kMinLogprob (harmless
// downstream). CUDA limit: k <= kMaxCudaTopK.
constexpr int64_t kMaxCudaTopK = 4096;
Status topk_logprobs(const TensorView& logits, int64_t k, const TensorView& token,
                     const TensorView& logprob, const TensorView* row_error, Stream stream);
// Split-row CUDA path: num_splits = 1 (the default of every other overload) is the
// one-CTA-per-row kernel; num_splits > 1 cuts each row's V into that many chunks (one CTA each,
// then a per-row merge) and needs a caller-provided uint8 device `workspace` of at least
// topk_logprobs_workspace_bytes(B, L, V, k, num_splits) bytes (16-byte aligned); 0 = automatic
// (topk_logprobs_num_splits; the Python op's default: ~9x faster than one CTA per row at
// V = 151936 on an H100, docs/NOTES.md). Same tokens; the
// log-probs equal the CPU's except when the f64 log-sum-exp (summed in another order) lies within
// ~1e-15 relative of an f32 rounding boundary, where the lse and so the log-probs may differ by
// one f32 ulp (docs/NOTES.md). The CPU path ignores num_splits and workspace. Both sizing
// functions are pure shape arithmetic (graph-safe).
int64_t topk_logprobs_num_splits(int64_t B, int64_t L, int64_t V, int64_t k);
size_t topk_logprobs_workspace_bytes(int64_t B, int64_t L, int64_t V, int64_t k,
                                     int64_t num_splits);
Status topk_logprobs(const TensorView& logits, int64_t k, const TensorView& token,
                     const TensorView& logprob, const TensorView* row_error, int64_t num_splits,
                     const TensorView* workspace, Stream stream);

// ---- ddtree_select --------------------------------------------------------------------------
// cand_token [B, L, K] (int32/int64), cand_logprob f32 [B, L, K] (finite, <= 0, non-increasing
// along K, distinct tokens per depth) -> the exact top-`budget` prefixes by cumulative log-prob,
// best-first. Score of a node = fp32(score(parent) + logprob). Tie-break (normative):
// higher score, then smaller depth, then earlier parent (smaller node index), then smaller rank.
// root_token (optional, [B] int32/int64) fills token[:, 0]; without it the root token is -1.
// Output capacity N = budget + 1.
Status check_ddtree_select(const TensorView& cand_token, const TensorView& cand_logprob,
                           int64_t budget, const TensorView* root_token);
Status ddtree_select(const TensorView& cand_token, const TensorView& cand_logprob, int64_t budget,
                     const TensorView* root_token, const TreeView& tree, Stream stream);
// The CUDA path needs scratch: a caller-provided uint8 `workspace` on the candidates' device of at
// least ddtree_select_workspace_bytes(B, L, K, budget) bytes (the CPU path ignores it; passing
// none to the CUDA path is an InvalidValue). The CUDA path cannot validate candidate data without
// a host sync: it trusts candidates as produced by topk_logprobs (finite, <= 0, sorted, distinct)
// and only clamps indices so that malformed data can never read or write out of bounds.
size_t ddtree_select_workspace_bytes(int64_t B, int64_t L, int64_t K, int64_t budget);
Status ddtree_select(const TensorView& cand_token, const TensorView& cand_logprob, int64_t budget,
                     const TensorView* root_token, const TreeView& tree,
                     const TensorView* workspace, Stream stream);

// ---- tree_walk ------------------------------------------------------------------------------
// Greedy or sampled acceptance walk. node_choice [B, N] (int32/int64): the target's token at each
// node. From the root, move to the child whose token equals the choice; emit the path's tokens
// and then the last choice (the next bonus token). stop_tokens ([S], optional) end generation
// after the first emitted stop token; remaining ([B], optional) caps the emitted count.
// Outputs: path int32 [B, P] (node indices, path[:, 0] = 0, -1 after the accepted nodes),
// accepted int32 [B] (accepted draft nodes), next_token int32 [B] (-1 when generation ended
// before it), done bool [B] (a stop token was emitted or the cap reached).
struct WalkOutputs {
  TensorView path;
  TensorView accepted;
  TensorView next_token;
  TensorView done;
};
Status check_tree_walk(const TreeView& tree, const TensorView& node_choice,
                       const TensorView* stop_tokens, const TensorView* remaining);
Status tree_walk(const TreeView& tree, const TensorView& node_choice, const TensorView* stop_tokens,
                 const TensorView* remaining, const WalkOutputs& out, Stream stream);

// ---- kv_commit ------------------------------------------------------------------------------
// caches: num_caches contiguous [B, H, S, D] tensors (every layer's K and V), same device and B.
// For each request b and j = 1..accepted[b]: row base_len[b] + path[b, j] moves to
// base_len[b] + j in every cache. path must start at 0 and increase strictly; a path that is
// already 0, 1, ..., accepted is a no-op. Overlapping source/destination rows are safe.
// ring: the caches are rings (a sliding-window layer, DESIGN.md §7): row r lives in slot r % S,
// any base_len >= 0 is valid and the path's entries must be < S (the tree fits in the ring)
// instead of base_len + path < S. All caches of one call share one shape (group by shape).
Status check_kv_commit(const TensorView* caches, int num_caches, const TensorView& base_len,
                       const TensorView& path, const TensorView& accepted, bool ring = false);
Status kv_commit(const TensorView* caches, int num_caches, const TensorView& base_len,
                 const TensorView& path, const TensorView& accepted, Stream stream,
                 bool ring = false);

// ---- node_select ----------------------------------------------------------------------------
// One target token per tree node (ALGORITHMS.md §3). logits [B, N, V] (f32/f16/bf16) -> out
// int32 [B, N]. Per-request parameters are [B] tensors on the logits' device (all optional, read
// from device memory so a captured graph replays with new values):
//   temperature f32: <= 0 (or absent) -> greedy argmax, ties to the lowest id;
//   top_k int32/int64: <= 0 or >= V (or absent) -> off;  top_p f32: >= 1 (or absent) -> off;
//   seed, round_idx int32/int64 (absent -> 0): the draw of node i is keyed by (seed, round, i).
// Sampling is Gumbel-max over the temperature-scaled, top-k- then top-p-filtered logits with
// Philox-4x32-10 uniforms; the procedure is defined op for op in cuda/sampling_math.h so the
// reference, CPU and CUDA draws are bit-identical. The CPU rejects NaN/+inf logits; the CUDA path
// ranks NaN lowest instead.
struct SamplingViews {
  const TensorView* temperature = nullptr;
  const TensorView* top_k = nullptr;
  const TensorView* top_p = nullptr;
  const TensorView* seed = nullptr;
  const TensorView* round_idx = nullptr;
};
Status check_node_select(const TensorView& logits, const SamplingViews& params);
Status node_select(const TensorView& logits, const SamplingViews& params, const TensorView& out,
                   Stream stream);

// ---- caddtree_select (CPU) ------------------------------------------------------------------
// CaDDTree (ALGORITHMS.md §5): the DDTree tree at `max_budget`, cut at the first n at which
// admitting node n + 1 does not raise θ(n) = (1 + Φ(n)) / (C_d + C_v(n)), Φ(n) = Σ_{j<=n}
// exp(score_j) in best-first order. verify_cost f32 [B, max_budget + 1]: C_v(n) = the cost of
// verifying 1 + n tokens (root included) at each request's context, already interpolated from
// a cost table; draft_cost f32 [B]: C_d. Costs finite, >= 0, C_d + C_v(n) > 0. Output: a tree
// of capacity max_budget + 1 whose num_nodes is 1 + the chosen n (rows past it padding). θ is
// evaluated in double (exp from libm), one operation at a time, as the Python reference does.
// CUDA: the CUDA ddtree_select, then a cut kernel with the same double arithmetic (CUDA's exp,
// <= 1 ulp from libm's); costs are trusted there (validating them needs a host sync).
Status check_caddtree_select(const TensorView& cand_token, const TensorView& cand_logprob,
                             int64_t max_budget, const TensorView* root_token,
                             const TensorView& verify_cost, const TensorView& draft_cost);
Status caddtree_select(const TensorView& cand_token, const TensorView& cand_logprob,
                       int64_t max_budget, const TensorView* root_token,
                       const TensorView& verify_cost, const TensorView& draft_cost,
                       const TreeView& tree, Stream stream);
// The CUDA path needs the ddtree_select workspace: ddtree_select_workspace_bytes(B, L, K,
// max_budget) bytes (0 for most sizes; the CPU path ignores it).
Status caddtree_select(const TensorView& cand_token, const TensorView& cand_logprob,
                       int64_t max_budget, const TensorView* root_token,
                       const TensorView& verify_cost, const TensorView& draft_cost,
                       const TreeView& tree, const TensorView* workspace, Stream stream);

// ---- ngram_update / ngram_extend / presto_select ------------------------------------------
// PRESTO (ALGORITHMS.md §7). The n-gram prior is a count table in two caller-owned tensors:
// keys int64 and counts int32, [H] (one table) or [B, H] (request b's table in row b), H a power
// of two, key 0 = empty slot (src/common/ngram_key.h has the key layout; a load below 1/2 keeps
// probing short: each token adds at most 2 * order keys).
//
// ngram_update (CPU, one [H] table): adds the n-grams (lengths 1..order) ending at positions
// start..T-1 of tokens [T] (int32/int64; tokens before `start` are history only) in place and
// reports how many slots it newly used; InvalidValue when the table is full.
Status check_ngram_update(const TensorView& keys, const TensorView& counts,
                          const TensorView& tokens, int64_t start, int64_t order);
Status ngram_update(const TensorView& keys, const TensorView& counts, const TensorView& tokens,
                    int64_t start, int64_t order, int64_t* new_keys);

// ngram_extend (CPU and CUDA, [B, H] tables): the incremental per-request form the engine uses
// every round. Request b's stream continues with tokens[b, :num_tokens[b]] (tokens [B, T],
// num_tokens [B], int32/int64); history [B, order - 1] int64 holds its last order - 1 tokens
// (-1 = none yet, on the left only). The n-grams ending at the new tokens are added to table b
// and history is updated in place to the stream's new last order - 1 tokens. CPU: bad tokens and
// a full table are InvalidValue. CUDA: no host sync; values are trusted, and an insert that
// finds the table full is dropped and sets overflow[b] = 1 (optional int32 [B]; size the table
// so it cannot happen: H >= 4 * order * stream length).
Status check_ngram_extend(const TensorView& keys, const TensorView& counts,
                          const TensorView& history, const TensorView& tokens,
                          const TensorView& num_tokens, int64_t order);
Status ngram_extend(const TensorView& keys, const TensorView& counts, const TensorView& history,
                    const TensorView& tokens, const TensorView& num_tokens, int64_t order,
                    const TensorView* overflow, Stream stream);

// Smoothing and weighting of the prior: p_0 = 1/vocab, p_m = (c(h, t) + alpha p_{m-1}) /
// (c(h) + alpha) for m = 1..order; edge score log q + lam log p_a - log Z(parent).
struct PrestoParams {
  int64_t order = 3;   // n of the n-gram (1..8)
  double alpha = 1.0;  // additive smoothing mass (> 0)
  double lam = 0.2;    // λ (>= 0); 0 gives DDTree exactly
  int64_t vocab = 1;   // V of the uniform base distribution (>= 1)
};
// Best-first selection with PRESTO edge scores over the candidate lattice (as ddtree_select's
// inputs). context [B, order - 1] int32/int64: the last order - 1 tokens of each request's
// stream ending with the root token, left-padded with -1 when the stream is shorter. Order:
// higher score, smaller depth, earlier parent, then position in the parent's edge list (edge
// score descending, rank ascending). Output capacity N = budget + 1. CUDA: one CTA per request,
// the same tree (candidates and the table trusted, as for ddtree_select); it needs a workspace of
// presto_select_workspace_bytes(B, L, K, budget, order) bytes when that is > 0.
Status check_presto_select(const TensorView& cand_token, const TensorView& cand_logprob,
                           int64_t budget, const TensorView* root_token, const TensorView& context,
                           const TensorView& keys, const TensorView& counts,
                           const PrestoParams& params);
Status presto_select(const TensorView& cand_token, const TensorView& cand_logprob, int64_t budget,
                     const TensorView* root_token, const TensorView& context,
                     const TensorView& keys, const TensorView& counts, const PrestoParams& params,
                     const TreeView& tree, Stream stream);
Status presto_select(const TensorView& cand_token, const TensorView& cand_logprob, int64_t budget,
                     const TensorView* root_token, const TensorView& context,
                     const TensorView& keys, const TensorView& counts, const PrestoParams& params,
                     const TreeView& tree, const TensorView* workspace, Stream stream);
size_t presto_select_workspace_bytes(int64_t B, int64_t L, int64_t K, int64_t budget,
                                     int64_t order);

// ---- taps_select (CPU) ----------------------------------------------------------------------
// TAPS (ALGORITHMS.md §6): prefix-closed selection by reach over a candidate pool. The pool is a
// tree of P1 rows (row 0 the root): pool_token, pool_parent [B, P1] int32/int64 with
// pool_parent[0] = -1, 0 <= pool_parent[i] < i and distinct sibling tokens for i < pool_size[b]
// (pool_size [B] int32/int64 in [1, P1]; later rows ignored); log_qc f32 [B, P1]: log q_cond(i |
// parent), finite and <= 0 (row 0 ignored). Reach score(i) = fp32(score(parent) + log_qc[i]),
// root 0. Output: the top-budget nodes under (reach desc, depth asc, earlier parent, smaller
// pool index), prefix-closed and best-first, capacity budget + 1, num_nodes = min(budget + 1,
// pool_size). CUDA: one CTA per request, bit-identical; the pool is trusted there (parents are
// clamped so malformed pools cannot go out of bounds).
Status check_taps_select(const TensorView& pool_token, const TensorView& pool_parent,
                         const TensorView& pool_size, const TensorView& log_qc, int64_t budget);
Status taps_select(const TensorView& pool_token, const TensorView& pool_parent,
                   const TensorView& pool_size, const TensorView& log_qc, int64_t budget,
                   const TreeView& tree, Stream stream);
// The CUDA path needs a uint8 workspace of taps_select_workspace_bytes(B, P1, budget) bytes when
// that is > 0 (large pools; the CPU path ignores it).
size_t taps_select_workspace_bytes(int64_t B, int64_t P1, int64_t budget);
Status taps_select(const TensorView& pool_token, const TensorView& pool_parent,
                   const TensorView& pool_size, const TensorView& log_qc, int64_t budget,
                   const TreeView& tree, const TensorView* workspace, Stream stream);

// ---- d2sd -----------------------------------------------------------------------------------
// D²SD (ALGORITHMS.md §8). d2sd_boundaries: trunk_logprob f32 [B, L] = log c_j, the first draft's
// top-1 log-prob per depth (finite, <= 0) -> boundary int32 [B, K] (1 <= K <= L): the K most
// likely numbers of accepted drafts i = 0..L-1 under r(i) = (Π_{j<=i} c_j)(1 - c_{i+1}), ranked
// by log r(i) in double (higher first, ties -> smaller i). CUDA (L <= 4096): the same double
// arithmetic with CUDA's exp/log (<= 1 ulp from libm's); log-probs trusted, not validated.
Status check_d2sd_boundaries(const TensorView& trunk_logprob, const TensorView& boundary);
Status d2sd_boundaries(const TensorView& trunk_logprob, const TensorView& boundary, Stream stream);

// d2sd_select: the joint tree of the first draft (trunk_token [B, L1] int32/int64, trunk_logprob
// f32 [B, L1]) and K re-drafted branches: branch k keeps the first boundary[b, k] first-draft
// tokens and continues with branch_token[b, k, j] (log-prob branch_logprob[b, k, j]) at depth
// j + 1 for j >= boundary[b, k]; boundary int32/int64 [B, K] in [0, min(L1, L2) - 1], or -1 for an
// unused row; branch_token [B, K, L2], branch_logprob f32 [B, K, L2] (entries before the boundary
// ignored). Rows are merged into a trie (shared prefixes once; an edge scores the max log-prob of
// the rows through it); output: the top-budget trie nodes best-first under (score desc, depth
// asc, earlier parent, earlier row), capacity budget + 1, depth <= max(L1, L2). CUDA: one CTA
// per request, bit-identical, pools of at most 65536 trie rows (1 + L1 + K * L2); data trusted
// (a boundary out of range drops its row, a NaN or positive log-prob counts as 0).
Status check_d2sd_select(const TensorView& trunk_token, const TensorView& trunk_logprob,
                         const TensorView& boundary, const TensorView& branch_token,
                         const TensorView& branch_logprob, int64_t budget,
                         const TensorView* root_token);
Status d2sd_select(const TensorView& trunk_token, const TensorView& trunk_logprob,
                   const TensorView& boundary, const TensorView& branch_token,
                   const TensorView& branch_logprob, int64_t budget, const TensorView* root_token,
                   const TreeView& tree, Stream stream);
// The CUDA path needs a uint8 workspace of d2sd_select_workspace_bytes(B, L1, K, L2, budget)
// bytes when that is > 0 (large pools; the CPU path ignores it).
size_t d2sd_select_workspace_bytes(int64_t B, int64_t L1, int64_t K, int64_t L2, int64_t budget);
Status d2sd_select(const TensorView& trunk_token, const TensorView& trunk_logprob,
                   const TensorView& boundary, const TensorView& branch_token,
                   const TensorView& branch_logprob, int64_t budget, const TensorView* root_token,
                   const TreeView& tree, const TensorView* workspace, Stream stream);

// ---- tree_attention -------------------------------------------------------------------------
// Attention of a draft tree's N query rows over the committed prefix + the tree (DESIGN.md §3.4).
// q [B, H_q, N, D_k]; k_cache [B, H_kv, S, D_k], v_cache [B, H_kv, S, D_v] (H_q a multiple of
// H_kv; D_v may differ from D_k), the tree's K/V already written at rows prefix_len[b] + i; q,
// caches and out may be strided but their last dim must be contiguous. prefix_len [B]
// int32/int64 (full cache: 0 <= prefix_len <= S - N; ring: any prefix_len >= 0). Query row i of
// request b sees every key in [0, prefix_len[b]) and tree key j iff
//   chain (is_chain, or tree_anc absent): j <= i;
//   tree: i, j < n: j <= i and bit j of tree_anc[b, i] (int32 [B, N, ceil(N/32)]); otherwise
//         (padding rows/keys, i or j >= n): j == i;
// with n = num_nodes[b] ([B] int32/int64, optional: N), narrowed by the variant below. One
// softmax over all visible keys, fp32 accumulation; out [B, H_q, N, D_v] in q's dtype
// (f32/f16/bf16; the CUDA kernel: f16/bf16 with D in {64, 128}, 16-byte aligned rows). The CPU
// path reports out-of-range prefix_len/num_nodes/depth; the CUDA path clamps them (no host sync).
//
// Attention variant of one layer (DESIGN.md §7); the defaults are plain tree attention.
// Row i sits at position qp = prefix_len[b] + pos(i), pos(i) = depth[b, i] (i without depth).
// window W > 0: committed position p is visible iff qp - p < W (transformers' sliding rule
// kv_idx > q_idx - W), tree key j iff also pos(i) - pos(j) < W; depth is required for a window
// over a tree (tree_anc given, not is_chain). sinks: one extra logit sinks[h] in head h's softmax
// denominator (gpt-oss). ring: row r lives in slot r % S (needs W >= 1 and S >= W - 1 + N).
struct AttentionVariant {
  const TensorView* depth = nullptr;  // [B, N] int32/int64 row depths (a window over a tree)
  const TensorView* sinks = nullptr;  // [H_q] float32 per-head sink logits (gpt-oss)
  int64_t window = 0;                 // W >= 0: keys at positions less than W before the row's
  bool ring = false;                  // the caches are rings: row r in slot r % S
};
Status check_tree_attention(const TensorView& q, const TensorView& k_cache,
                            const TensorView& v_cache, const TensorView& prefix_len,
                            const TensorView* tree_anc, const TensorView* num_nodes, float scale,
                            bool is_chain, const AttentionVariant& variant = {});
// Split-KV: the CUDA kernel splits the prefix into num_splits chunks (0 = automatic, see
// tree_attention_num_splits) and, when that is > 1, needs a caller-provided uint8 workspace on the
// device of at least tree_attention_workspace_bytes(...) bytes (partial outputs + LSE, fp32; pass
// D_v as D: the partial outputs are D_v wide). The CPU path ignores both. Both functions are pure
// shape arithmetic (graph-safe sizing).
int64_t tree_attention_num_splits(int64_t B, int64_t H_q, int64_t H_kv, int64_t N, int64_t S_max);
size_t tree_attention_workspace_bytes(int64_t B, int64_t H_q, int64_t H_kv, int64_t N, int64_t D,
                                      int64_t S_max, int64_t num_splits);
Status tree_attention(const TensorView& q, const TensorView& k_cache, const TensorView& v_cache,
                      const TensorView& prefix_len, const TensorView* tree_anc,
                      const TensorView* num_nodes, float scale, bool is_chain, int64_t num_splits,
                      const TensorView& out, const TensorView* workspace, Stream stream,
                      const AttentionVariant& variant = {});

// ---- Gated-DeltaNet tree ops ----------------------------------------------------------------
// A linear-attention layer (Qwen3.5 / Qwen3-Next) verifying a draft tree and committing its
// accepted path (ALGORITHMS.md "Gated-DeltaNet trees"; the plain-PyTorch reference is
// difftree_rt/reference/gated_delta.py). C conv channels, K conv width (>= 1), H_k / H_v key /
// value heads (H_v a multiple of H_k: value head h reads key head h / (H_v / H_k)), D_k / D_v head
// dims, P path columns. Float model tensors are f32/f16/bf16; everything is computed in fp32.
//
// gdn_conv: depthwise causal conv along each row's path, + SiLU when `activation`:
//   out[b, i, c] = act(bias[c] + sum_e weight[c, K - 1 - e] * seq[b, src[b, i, e], c])
// with seq = [conv_tail^T (K - 1 rows, oldest first); x (N rows)]. x [B, N, C], conv_tail
// [B, C, K - 1], weight [C, K], bias [C] (optional) and out [B, N, C] share one dtype; src
// [B, N, K] int32 (the reference's conv_sources), entries in [0, K - 1 + N) (CPU: InvalidValue
// otherwise; CUDA: trusted).
Status check_gdn_conv(const TensorView& x, const TensorView& conv_tail, const TensorView& weight,
                      const TensorView* bias, const TensorView& src);
Status gdn_conv(const TensorView& x, const TensorView& conv_tail, const TensorView& weight,
                const TensorView* bias, const TensorView& src, bool activation,
                const TensorView& out, Stream stream);
// gdn_conv_commit, in place: conv_tail[b, :, K - 2 - e] = seq[b, src[b, last, e]] for e < K - 1,
// last = path[b, accepted[b]] (every row read before any write), for requests with active[b]
// (bool [B], optional: all). path [B, P] int32/int64 with path[b, 0] = 0 and strictly increasing
// node ids in [0, N) up to accepted [B] int32/int64 in [0, P - 1] (checked for active requests on
// the CPU; trusted by CUDA).
Status check_gdn_conv_commit(const TensorView& conv_tail, const TensorView& x,
                             const TensorView& src, const TensorView& path,
                             const TensorView& accepted, const TensorView* active);
Status gdn_conv_commit(const TensorView& conv_tail, const TensorView& x, const TensorView& src,
                       const TensorView& path, const TensorView& accepted,
                       const TensorView* active, Stream stream);
// gdn_verify: the gated delta rule of every row along its own root-to-row path from the committed
// state, without per-node states. q̂ = l2norm(q) / sqrt(D_k), k̂ = l2norm(k) (fp32, x *
// rsqrt(sum x^2 + 1e-6)); a row's parent is its largest strict ancestor in tree_anc (int32
// [B, N, ceil(N / 32)] ancestor-or-self bits; null: causal rows, parent i - 1), G_i = G_parent +
// g_i; in row order, with j over i's ancestors:
//   δ_i = β_i (v_i - e^{G_i} S0^T k̂_i - Σ_{j strict} e^{G_i - G_j} (k̂_i·k̂_j) δ_j)
//   o_i = e^{G_i} S0^T q̂_i + Σ_{j or i} e^{G_i - G_j} (q̂_i·k̂_j) δ_j
// q, k [B, N, H_k, D_k], v [B, N, H_v, D_v], out [B, N, H_v, D_v] one dtype; g (log decay), beta
// [B, N, H_v] f32; state [B, H_v, D_k, D_v] f32 (read only). Outputs for gdn_commit: k_hat
// [B, N, H_k, D_k], delta [B, N, H_v, D_v], gcum (G) [B, N, H_v], all f32.
Status check_gdn_verify(const TensorView& q, const TensorView& k, const TensorView& v,
                        const TensorView& g, const TensorView& beta, const TensorView& state,
                        const TensorView* tree_anc);
Status gdn_verify(const TensorView& q, const TensorView& k, const TensorView& v,
                  const TensorView& g, const TensorView& beta, const TensorView& state,
                  const TensorView* tree_anc, const TensorView& out, const TensorView& k_hat,
                  const TensorView& delta, const TensorView& gcum, Stream stream);
// gdn_commit, in place: the state after the accepted path, from gdn_verify's outputs,
//   S <- e^{G_last} S + Σ_{j = path[b, 0..accepted[b]]} e^{G_last - G_j} k̂_j δ_j^T,
// last = path[b, accepted[b]], for requests with active[b]. path / accepted / active as in
// gdn_conv_commit (N = k_hat's dim 1).
Status check_gdn_commit(const TensorView& state, const TensorView& k_hat, const TensorView& delta,
                        const TensorView& gcum, const TensorView& path, const TensorView& accepted,
                        const TensorView* active);
Status gdn_commit(const TensorView& state, const TensorView& k_hat, const TensorView& delta,
                  const TensorView& gcum, const TensorView& path, const TensorView& accepted,
                  const TensorView* active, Stream stream);

}  // namespace difftree
