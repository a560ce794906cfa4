/* A C program using the difftree C ABI on CPU buffers: per-depth top-k, DDTree selection, a
 * greedy walk and a KV commit. Exits non-zero on any failure. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "difftree/difftree.h"

#define B 1
#define L 6
#define V 1000
#define BUDGET 24
#define N (BUDGET + 1)
#define W ((N + 31) / 32)
#define H 2
#define S 64
#define D 8

static DLTensor cpu_tensor(void* data, uint8_t code, uint8_t bits, int32_t ndim, int64_t* shape) {
  DLTensor t;
  memset(&t, 0, sizeof(t));
  t.data = data;
  t.device.device_type = kDLCPU;
  t.ndim = ndim;
  t.dtype.code = code;
  t.dtype.bits = bits;
  t.dtype.lanes = 1;
  t.shape = shape;
  t.strides = NULL; /* compact row-major */
  return t;
}

static int check(difftree_status s, const char* what) {
  if (s == DIFFTREE_OK) return 0;
  fprintf(stderr, "%s failed: %s: %s\n", what, difftree_status_string(s), difftree_last_error());
  return 1;
}

int main(void) {
  if (difftree_abi_version() != DIFFTREE_ABI_VERSION) {
    fprintf(stderr, "ABI mismatch: library %u, header %u\n", difftree_abi_version(),
            DIFFTREE_ABI_VERSION);
    return 1;
  }
  static float logits[B * L * V];
  unsigned seed = 12345u;
  for (int i = 0; i < B * L * V; ++i) {
    seed = seed * 1664525u + 1013904223u;
    logits[i] = (float)((seed >> 8) % 1000) / 100.0f; /* 0 .. 10 */
  }
  for (int d = 0; d < L; ++d) logits[d * V + 7 * (d + 1)] = 30.0f; /* a confident draft */

  int64_t logits_shape[3] = {B, L, V}, cand_shape[3] = {B, L, BUDGET};
  static int32_t cand_token[B * L * BUDGET];
  static float cand_logprob[B * L * BUDGET];
  DLTensor t_logits = cpu_tensor(logits, kDLFloat, 32, 3, logits_shape);
  DLTensor t_ctok = cpu_tensor(cand_token, kDLInt, 32, 3, cand_shape);
  DLTensor t_clp = cpu_tensor(cand_logprob, kDLFloat, 32, 3, cand_shape);
  if (check(difftree_topk_logprobs(&t_logits, BUDGET, &t_ctok, &t_clp, NULL), "topk_logprobs"))
    return 1;

  static int32_t token[B * N], parent[B * N], depth[B * N], first_child[B * N],
      next_sibling[B * N], anc[B * N * W], num_nodes[B];
  static float score[B * N];
  int64_t bn[2] = {B, N}, bnw[3] = {B, N, W}, b1[1] = {B};
  difftree_tree tree;
  tree.token = cpu_tensor(token, kDLInt, 32, 2, bn);
  tree.parent = cpu_tensor(parent, kDLInt, 32, 2, bn);
  tree.depth = cpu_tensor(depth, kDLInt, 32, 2, bn);
  tree.score = cpu_tensor(score, kDLFloat, 32, 2, bn);
  tree.first_child = cpu_tensor(first_child, kDLInt, 32, 2, bn);
  tree.next_sibling = cpu_tensor(next_sibling, kDLInt, 32, 2, bn);
  tree.anc = cpu_tensor(anc, kDLInt, 32, 3, bnw);
  tree.num_nodes = cpu_tensor(num_nodes, kDLInt, 32, 1, b1);
  int32_t root[B] = {1};
  DLTensor t_root = cpu_tensor(root, kDLInt, 32, 1, b1);
  difftree_ddtree_params params = difftree_ddtree_default_params();
  params.budget = BUDGET;
  if (check(difftree_ddtree_select(&t_ctok, &t_clp, &t_root, &params, &tree, NULL), "select"))
    return 1;
  printf("tree: %d nodes; node 1 = token %d (log q %.3f)\n", num_nodes[0], token[1], score[1]);

  /* The "target" agrees with the drafter's best child at every node. */
  static int64_t choice[B * N];
  for (int i = 0; i < N; ++i) choice[i] = first_child[i] >= 0 ? token[first_child[i]] : 0;
  int32_t path[B * (L + 1)], accepted[B], next_token[B];
  uint8_t done[B];
  int64_t bp[2] = {B, L + 1};
  DLTensor t_choice = cpu_tensor(choice, kDLInt, 64, 2, bn);
  DLTensor t_path = cpu_tensor(path, kDLInt, 32, 2, bp);
  DLTensor t_acc = cpu_tensor(accepted, kDLInt, 32, 1, b1);
  DLTensor t_next = cpu_tensor(next_token, kDLInt, 32, 1, b1);
  DLTensor t_done = cpu_tensor(done, kDLUInt, 8, 1, b1);
  if (check(difftree_tree_walk(&tree, &t_choice, NULL, &t_path, &t_acc, &t_next, &t_done, NULL),
            "tree_walk"))
    return 1;
  printf("accepted %d draft tokens, next token %d\n", accepted[0], next_token[0]);
  if (accepted[0] != L) {
    fprintf(stderr, "expected the full depth %d to be accepted\n", L);
    return 1;
  }

  static float k_cache[B * H * S * D], v_cache[B * H * S * D];
  for (int i = 0; i < B * H * S * D; ++i) k_cache[i] = v_cache[i] = (float)(i / D); /* row id */
  int64_t cache_shape[4] = {B, H, S, D};
  DLTensor t_k = cpu_tensor(k_cache, kDLFloat, 32, 4, cache_shape);
  DLTensor t_v = cpu_tensor(v_cache, kDLFloat, 32, 4, cache_shape);
  const DLTensor* caches[2] = {&t_k, &t_v};
  int64_t base[B] = {10};
  DLTensor t_base = cpu_tensor(base, kDLInt, 64, 1, b1);
  if (check(difftree_kv_commit(caches, 2, &t_base, &t_path, &t_acc, NULL), "kv_commit")) return 1;
  for (int j = 0; j <= accepted[0]; ++j) {
    const float expect = (float)(base[0] + path[j]); /* head 0: row id == position */
    if (k_cache[(base[0] + j) * D] != expect || v_cache[(base[0] + j) * D] != expect) {
      fprintf(stderr, "commit: row %d holds %f, expected %f\n", j, k_cache[(base[0] + j) * D],
              expect);
      return 1;
    }
  }
  /* Bad input gives a named error, not a crash. */
  if (difftree_kv_commit(caches, 2, NULL, &t_path, &t_acc, NULL) != DIFFTREE_INVALID_VALUE ||
      strstr(difftree_last_error(), "base_len") == NULL) {
    fprintf(stderr, "expected a named error for a NULL base_len\n");
    return 1;
  }
  printf("C ABI example OK\n");
  return 0;
}
