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
 *   V vocabulary, N tree capacity (= budget + 1), P path columns (L + 1).
 * The C++ API (difftree/ops.h) is the same operations with TensorView arguments.
 */
#ifndef DIFFTREE_DIFFTREE_H_
#define DIFFTREE_DIFFTREE_H_

#include <stdint.h>

#include "difftree/dlpack.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Bumped on any incompatible change of a declaration in this file. */
#define DIFFTREE_ABI_VERSION 1

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

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* DIFFTREE_DIFFTREE_H_ */
