/* difftree C ABI: the core operations for serving stacks that embed difftree without Python.
 *
 * - Versioned: check difftree_abi_version() == DIFFTREE_ABI_VERSION at start-up.
 * - Tensors are DLPack DLTensor descriptors (difftree/dlpack.h); all tensors of one call live on
 *   one device (CPU, or CUDA when difftree_build_has_cuda()); outputs are caller-allocated.
 * - Streams are `void*` (a cudaStream_t for CUDA tensors, ignored on the CPU).
 * - Every function returns a difftree_status; on failure difftree_last_error() holds a message
 *   naming the argument (thread-local, valid until the thread's next call). No C++ exception
 *   crosses this boundary.
 * - Shapes use the project vocabulary: B batch, L draft depth, K candidates per depth,
 *   V vocabulary, N tree capacity (= budget + 1), P path columns (L + 1), H heads, D head dim,
 *   S cache rows.
 * - Options live in params structs; start from difftree_<op>_default_params() and set fields.
 *   A NULL params pointer means the defaults (except where a function says it is required).
 * - Where the CUDA path needs scratch memory, difftree_<op>_workspace_bytes() (pure shape
 *   arithmetic, graph-safe) gives its size: pass a uint8 [bytes] descriptor on the op's device of
 *   at least that many bytes (16-byte aligned) as `workspace`, or NULL when it is 0. The CPU path
 *   ignores workspaces.
 * - A whole round: topk_logprobs -> a selector (ddtree, caddtree, presto, taps, d2sd) -> target
 *   forward with tree_attention -> node_select -> tree_walk -> kv_commit
 *   (cpp/examples/c_example.c runs one on CPU buffers).
 * The C++ API (difftree/ops.h) is the same operations with TensorView arguments; each function
 * here converts its descriptors and calls it.
 */
#ifndef DIFFTREE_DIFFTREE_H_
#define DIFFTREE_DIFFTREE_H_

#include <stddef.h>
#include <stdint.h>

#include "difftree/dlpack.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Bumped on any incompatible change of a declaration in this file. Adding functions and types is
 * compatible and keeps the version. */
#define DIFFTREE_ABI_VERSION 2

typedef enum difftree_status {
  DIFFTREE_OK = 0,
  DIFFTREE_INVALID_VALUE = 1, /* bad shape, range or data */
  DIFFTREE_INVALID_TYPE = 2,  /* bad dtype */
  DIFFTREE_UNSUPPORTED = 3,   /* valid, but not in this build (e.g. CUDA not compiled) */
  DIFFTREE_INTERNAL = 4       /* a bug, an allocation failure or a failed device call */
} difftree_status;

/* The ABI version this library implements (compare with DIFFTREE_ABI_VERSION). */
uint32_t difftree_abi_version(void);
/* A static name for a status code, e.g. "DIFFTREE_INVALID_VALUE". */
const char* difftree_status_string(difftree_status status);
/* The message of this thread's last failing call ("" if none). */
const char* difftree_last_error(void);
/* 1 if the CUDA kernels are compiled into this library. */
int difftree_build_has_cuda(void);

/* A draft tree (DESIGN.md §2): views of caller-owned arrays, batch first. */
typedef struct difftree_tree {
  DLTensor token;        /* int32 [B, N]: token per node (root = bonus token) */
  DLTensor parent;       /* int32 [B, N]: -1 for the root; parent[i] < i */
  DLTensor depth;        /* int32 [B, N]: 0 for the root */
  DLTensor score;        /* float32 [B, N]: the selector's ranking score */
  DLTensor first_child;  /* int32 [B, N]: -1 for none */
  DLTensor next_sibling; /* int32 [B, N]: -1 for none; siblings best-first */
  DLTensor anc;          /* int32 [B, N, ceil(N/32)]: u32 bits, bit j of row i = j is i or an ancestor */
  DLTensor num_nodes;    /* int32 [B]: valid nodes (root included); later rows are padding */
} difftree_tree;

/* Options of difftree_ddtree_select. Start from difftree_ddtree_default_params(). */
typedef struct difftree_ddtree_params {
  int64_t budget; /* draft nodes, 1..4096; the tree's capacity is N = budget + 1 (default 64) */
} difftree_ddtree_params;
difftree_ddtree_params difftree_ddtree_default_params(void);

/* Options of difftree_tree_walk. Start from difftree_walk_default_params(). */
typedef struct difftree_walk_params {
  const DLTensor* stop_tokens; /* optional int32/int64 [S]: generation ends after one of these */
  const DLTensor* remaining;   /* optional int32/int64 [B]: cap on tokens still to emit */
} difftree_walk_params;
difftree_walk_params difftree_walk_default_params(void);

/* logits [B, L, V] f32/f16/bf16 -> token int32 [B, L, k], logprob f32 [B, L, k]: per-depth top-k
 * of the fp32 log-softmax, descending, ties to the lower token id, clamped below at -1e4. */
difftree_status difftree_topk_logprobs(const DLTensor* logits, int64_t k, const DLTensor* token,
                                       const DLTensor* logprob, void* stream);

/* DDTree: the exact top-budget prefixes of the candidate lattice, best-first, into `tree`
 * (capacity N = budget + 1). cand_token int32/int64 [B, L, K]; cand_logprob f32 [B, L, K]
 * (finite, <= 0, non-increasing along K); root_token optional int32/int64 [B] (NULL: -1). */
difftree_status difftree_ddtree_select(const DLTensor* cand_token, const DLTensor* cand_logprob,
                                       const DLTensor* root_token,
                                       const difftree_ddtree_params* params,
                                       const difftree_tree* tree, void* stream);

/* Acceptance walk: node_choice int32/int64 [B, N] (the target's token per node) -> path int32
 * [B, P] (node indices, -1 after the accepted ones), accepted int32 [B], next_token int32 [B]
 * (-1 if the sequence ended first), done bool/uint8 [B]. params may be NULL (no stops, no cap). */
difftree_status difftree_tree_walk(const difftree_tree* tree, const DLTensor* node_choice,
                                   const difftree_walk_params* params, const DLTensor* path,
                                   const DLTensor* accepted, const DLTensor* next_token,
                                   const DLTensor* done, void* stream);

/* KV commit: caches[0..num_caches) contiguous [B, H, S, D] (every layer's K and V, one shape and
 * dtype); row base_len + path[j] -> base_len + j for j = 1..accepted, in place, overlap-safe.
 * base_len, accepted int32/int64 [B]; path int32/int64 [B, P]. */
difftree_status difftree_kv_commit(const DLTensor* const* caches, int32_t num_caches,
                                   const DLTensor* base_len, const DLTensor* path,
                                   const DLTensor* accepted, void* stream);
/* The same over ring caches when ring != 0 (a sliding-window layer, DESIGN.md §7): row r lives in
 * slot r % S, any base_len >= 0 is valid and path entries must be < S. ring == 0 is
 * difftree_kv_commit. */
difftree_status difftree_kv_commit_ring(const DLTensor* const* caches, int32_t num_caches,
                                        const DLTensor* base_len, const DLTensor* path,
                                        const DLTensor* accepted, int32_t ring, void* stream);

/* ---- workspace-aware forms of the ops above ------------------------------------------------ */

/* Split-row top-k: as difftree_topk_logprobs; the CUDA path cuts each row's V into num_splits
 * chunks (0 = automatic, difftree_topk_logprobs_num_splits; 1 = one CTA per row, no workspace)
 * and then needs a workspace of difftree_topk_logprobs_workspace_bytes(B, L, V, k, num_splits)
 * bytes. row_error optional int32 [B, L]: 0 good row, 1 NaN/+inf, 2 all -inf (the CPU path also
 * fails on such rows; the CUDA path only flags them). CUDA limit: k <= 4096. */
int64_t difftree_topk_logprobs_num_splits(int64_t B, int64_t L, int64_t V, int64_t k);
size_t difftree_topk_logprobs_workspace_bytes(int64_t B, int64_t L, int64_t V, int64_t k,
                                              int64_t num_splits);
difftree_status difftree_topk_logprobs_split(const DLTensor* logits, int64_t k, int64_t num_splits,
                                             const DLTensor* token, const DLTensor* logprob,
                                             const DLTensor* row_error, const DLTensor* workspace,
                                             void* stream);

/* difftree_ddtree_select with the CUDA path's scratch: ddtree_select_workspace_bytes(B, L, K,
 * budget) bytes (0 for most sizes; without a workspace a size that needs one is an error). */
size_t difftree_ddtree_select_workspace_bytes(int64_t B, int64_t L, int64_t K, int64_t budget);
difftree_status difftree_ddtree_select_with_workspace(const DLTensor* cand_token,
                                                      const DLTensor* cand_logprob,
                                                      const DLTensor* root_token,
                                                      const difftree_ddtree_params* params,
                                                      const difftree_tree* tree,
                                                      const DLTensor* workspace, void* stream);

/* ---- tree attention ------------------------------------------------------------------------ */

/* Options of difftree_tree_attention. params is required: the scale has no default. The last four
 * fields are the layer's attention variant (DESIGN.md §7; ABI version 2). */
typedef struct difftree_attention_params {
  float scale;        /* softmax scale, finite, usually 1/sqrt(D_k) (default NaN: must be set) */
  int32_t is_chain;   /* 1: causal over the N rows, tree_anc ignored (default 0) */
  int64_t num_splits; /* CUDA split-KV chunks of the prefix; 0 = automatic (default 0) */
  int64_t window;     /* sliding window W >= 0: keys less than W positions before the row's (0) */
  int32_t ring;       /* 1: the caches are rings, row r in slot r % S (needs window >= 1) (0) */
  const DLTensor* depth; /* int32/int64 [B, N] row depths; needed for a window over a tree (NULL) */
  const DLTensor* sinks; /* float32 [H_q] per-head sink logits (gpt-oss) (NULL) */
} difftree_attention_params;
difftree_attention_params difftree_attention_default_params(void);

/* Attention of a tree's N query rows over the committed prefix + the tree. q [B, H_q, N, D_k];
 * k_cache [B, H_kv, S, D_k], v_cache [B, H_kv, S, D_v] (H_q a multiple of H_kv) with the tree's
 * K/V already written at rows prefix_len[b] + i; q, caches and out may be strided but their last
 * dim is contiguous. prefix_len int32/int64 [B] (0 <= prefix_len <= S - N; a ring: any >= 0).
 * Row i sees keys [0, prefix_len) and tree key j iff j is i or an ancestor of i (bit j of
 * tree_anc, int32 [B, N, ceil(N/32)]; NULL = chain j <= i); a padding row i >= num_nodes[b]
 * (num_nodes int32/int64 [B], NULL = N) sees the prefix and itself. With a window W > 0 only
 * keys whose positions are less than W before the row's (position prefix_len + depth[b, i], or
 * prefix_len + i without depth); sinks add exp(sinks[h]) to head h's softmax denominator.
 * out [B, H_q, N, D_v] in q's dtype (f32/f16/bf16; CUDA: f16/bf16, D in {64, 128}). Pass a tree's
 * `anc` and `num_nodes`. The CUDA path needs difftree_tree_attention_workspace_bytes(B, H_q,
 * H_kv, N, D_v, S, num_splits) bytes when that is > 0. */
int64_t difftree_tree_attention_num_splits(int64_t B, int64_t H_q, int64_t H_kv, int64_t N,
                                           int64_t S);
size_t difftree_tree_attention_workspace_bytes(int64_t B, int64_t H_q, int64_t H_kv, int64_t N,
                                               int64_t D, int64_t S, int64_t num_splits);
difftree_status difftree_tree_attention(const DLTensor* q, const DLTensor* k_cache,
                                        const DLTensor* v_cache, const DLTensor* prefix_len,
                                        const DLTensor* tree_anc, const DLTensor* num_nodes,
                                        const difftree_attention_params* params,
                                        const DLTensor* out, const DLTensor* workspace,
                                        void* stream);

/* ---- node selection (the target's token per node) ------------------------------------------ */

/* Per-request sampling settings, each an optional [B] tensor on the logits' device (read there,
 * so a captured graph replays with new values). All NULL (the default): greedy argmax. */
typedef struct difftree_sampling_params {
  const DLTensor* temperature; /* f32: <= 0 (or NULL) -> greedy argmax, ties to the lowest id */
  const DLTensor* top_k;       /* int32/int64: <= 0 or >= V (or NULL) -> off */
  const DLTensor* top_p;       /* f32: >= 1 (or NULL) -> off */
  const DLTensor* seed;        /* int32/int64 (NULL -> 0): node i's draw is keyed by */
                               /* (seed, round_idx, i) */
  const DLTensor* round_idx;   /* int32/int64 (NULL -> 0) */
} difftree_sampling_params;
difftree_sampling_params difftree_sampling_default_params(void);

/* logits [B, N, V] f32/f16/bf16 -> out int32 [B, N]: one token per node, greedy or Gumbel-max
 * over the temperature-scaled, top-k then top-p filtered logits (Philox draws, bit-identical on
 * CPU and CUDA). Feed out to difftree_tree_walk as node_choice. */
difftree_status difftree_node_select(const DLTensor* logits, const difftree_sampling_params* params,
                                     const DLTensor* out, void* stream);

/* ---- policy selectors ---------------------------------------------------------------------- */

/* Options of difftree_caddtree_select. */
typedef struct difftree_caddtree_params {
  int64_t max_budget; /* largest tree, 1..4096; capacity N = max_budget + 1 (default 64) */
} difftree_caddtree_params;
difftree_caddtree_params difftree_caddtree_default_params(void);

/* CaDDTree: the DDTree tree at max_budget cut where admitting one more node stops raising the
 * expected tokens per unit cost. Candidates as difftree_ddtree_select; verify_cost f32
 * [B, max_budget + 1] (C_v(n): verifying 1 + n tokens), draft_cost f32 [B] (C_d), finite, >= 0.
 * Output tree of capacity N = max_budget + 1, num_nodes = 1 + the chosen n. The CUDA path needs
 * difftree_ddtree_select_workspace_bytes(B, L, K, max_budget) bytes when that is > 0. */
difftree_status difftree_caddtree_select(const DLTensor* cand_token, const DLTensor* cand_logprob,
                                         const DLTensor* root_token, const DLTensor* verify_cost,
                                         const DLTensor* draft_cost,
                                         const difftree_caddtree_params* params,
                                         const difftree_tree* tree, const DLTensor* workspace,
                                         void* stream);

/* PRESTO's n-gram prior: a count table in keys int64 + counts int32, [H] (one table) or [B, H]
 * (request b's in row b), H a power of two (here H counts table slots), key 0 = empty. */

/* CPU, one [H] table: adds the n-grams (lengths 1..order) ending at positions start..T-1 of
 * tokens int32/int64 [T]; *new_keys (optional) = slots newly used. A full table is an error. */
difftree_status difftree_ngram_update(const DLTensor* keys, const DLTensor* counts,
                                      const DLTensor* tokens, int64_t start, int64_t order,
                                      int64_t* new_keys);

/* Per round, [B, H] tables: request b's stream continues with tokens[b, :num_tokens[b]] (tokens
 * int32/int64 [B, T], num_tokens int32/int64 [B]); history int64 [B, order - 1] (its last
 * order - 1 tokens, -1 = none yet) is updated in place. overflow optional int32 [B]: the CUDA
 * path sets 1 where an insert found the table full (the CPU path fails instead). */
difftree_status difftree_ngram_extend(const DLTensor* keys, const DLTensor* counts,
                                      const DLTensor* history, const DLTensor* tokens,
                                      const DLTensor* num_tokens, int64_t order,
                                      const DLTensor* overflow, void* stream);

/* Options of difftree_presto_select; the prior's defaults are the C++ PrestoParams'. */
typedef struct difftree_presto_params {
  int64_t budget; /* draft nodes, 1..4096; capacity N = budget + 1 (default 64) */
  int64_t order;  /* n of the n-gram, 1..8 (default 3) */
  double alpha;   /* additive smoothing mass, > 0 (default 1) */
  double lam;     /* weight of the prior, >= 0; 0 gives DDTree exactly (default 0.2) */
  int64_t vocab;  /* V of the uniform base distribution, >= 1 (set it to V; default 1) */
} difftree_presto_params;
difftree_presto_params difftree_presto_default_params(void);

/* PRESTO: best-first selection over the candidate lattice (inputs as difftree_ddtree_select)
 * with edge scores log q + lam log p_ngram - log Z(parent). context int32/int64 [B, order - 1]:
 * each stream's last order - 1 tokens ending with the root token, left-padded with -1; keys,
 * counts: the prior, [H] or [B, H]. Output capacity N = budget + 1. The CUDA path needs
 * difftree_presto_select_workspace_bytes(B, L, K, budget, order) bytes when that is > 0. */
size_t difftree_presto_select_workspace_bytes(int64_t B, int64_t L, int64_t K, int64_t budget,
                                              int64_t order);
difftree_status difftree_presto_select(const DLTensor* cand_token, const DLTensor* cand_logprob,
                                       const DLTensor* root_token, const DLTensor* context,
                                       const DLTensor* keys, const DLTensor* counts,
                                       const difftree_presto_params* params,
                                       const difftree_tree* tree, const DLTensor* workspace,
                                       void* stream);

/* Options of difftree_taps_select. */
typedef struct difftree_taps_params {
  int64_t budget; /* draft nodes, 1..4096; capacity N = budget + 1 (default 64) */
} difftree_taps_params;
difftree_taps_params difftree_taps_default_params(void);

/* TAPS: the top-budget nodes by reach over a candidate pool of P1 rows (row 0 the root), prefix-
 * closed and best-first. pool_token, pool_parent int32/int64 [B, P1] (pool_parent[0] = -1,
 * 0 <= pool_parent[i] < i, distinct sibling tokens); pool_size int32/int64 [B] in [1, P1];
 * log_qc f32 [B, P1]: log q(i | parent), finite, <= 0. Output capacity N = budget + 1. The CUDA
 * path needs difftree_taps_select_workspace_bytes(B, P1, budget) bytes when that is > 0. */
size_t difftree_taps_select_workspace_bytes(int64_t B, int64_t P1, int64_t budget);
difftree_status difftree_taps_select(const DLTensor* pool_token, const DLTensor* pool_parent,
                                     const DLTensor* pool_size, const DLTensor* log_qc,
                                     const difftree_taps_params* params,
                                     const difftree_tree* tree, const DLTensor* workspace,
                                     void* stream);

/* D²SD boundaries: trunk_logprob f32 [B, L] (the first draft's top-1 log-prob per depth, finite,
 * <= 0) -> boundary int32 [B, K] (1 <= K <= L): the K likeliest numbers of accepted drafts. */
difftree_status difftree_d2sd_boundaries(const DLTensor* trunk_logprob, const DLTensor* boundary,
                                         void* stream);

/* Options of difftree_d2sd_select. */
typedef struct difftree_d2sd_params {
  int64_t budget; /* draft nodes, 1..4096; capacity N = budget + 1 (default 64) */
} difftree_d2sd_params;
difftree_d2sd_params difftree_d2sd_default_params(void);

/* D²SD: the joint tree of the first draft (trunk_token int32/int64 [B, L1], trunk_logprob f32
 * [B, L1]) and K re-drafted branches: branch k keeps boundary[b, k] trunk tokens, then continues
 * with branch_token [B, K, L2] (int32/int64; branch_logprob f32 [B, K, L2]) from depth
 * boundary + 1. boundary int32/int64 [B, K] in [0, min(L1, L2) - 1], -1 = unused row.
 * root_token optional int32/int64 [B]. Output capacity N = budget + 1. The CUDA path needs
 * difftree_d2sd_select_workspace_bytes(B, L1, K, L2, budget) bytes when that is > 0. */
size_t difftree_d2sd_select_workspace_bytes(int64_t B, int64_t L1, int64_t K, int64_t L2,
                                            int64_t budget);
difftree_status difftree_d2sd_select(const DLTensor* trunk_token, const DLTensor* trunk_logprob,
                                     const DLTensor* boundary, const DLTensor* branch_token,
                                     const DLTensor* branch_logprob, const DLTensor* root_token,
                                     const difftree_d2sd_params* params,
                                     const difftree_tree* tree, const DLTensor* workspace,
                                     void* stream);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* DIFFTREE_DIFFTREE_H_ */
