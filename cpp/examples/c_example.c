/* One full speculative-decoding round through the difftree C ABI, in plain C on CPU buffers:
 *   draft logits -> topk_logprobs -> ddtree_select (the draft tree)
 *   -> tree_attention of the tree's rows over a toy K/V cache (prefix + tree, the tree's mask)
 *   -> node_select (greedy) on target logits -> tree_walk (accepted path) -> kv_commit.
 * Every step's result is checked against what it must be; exits non-zero on any failure. */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "difftree/difftree.h"

#define B 1
#define L 6                /* draft depth */
#define V 1000             /* vocabulary */
#define K 8                /* candidates per depth */
#define BUDGET 24          /* draft nodes */
#define N (BUDGET + 1)     /* tree capacity, root included */
#define ANC ((N + 31) / 32) /* ancestor-bit words per row */
#define H 2                /* heads */
#define D 8                /* head dim */
#define S 64               /* cache rows */
#define PREFIX 10          /* committed rows before this round */
#define AGREE 3            /* the toy target agrees with the drafter's best child up to here */

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

static unsigned g_seed = 12345u;
static float uniform01(void) { /* deterministic LCG, [0, 1) */
  g_seed = g_seed * 1664525u + 1013904223u;
  return (float)((g_seed >> 8) % 1000) / 1000.0f;
}

/* The tree: views of these arrays. */
static int32_t token[B * N], parent[B * N], depth[B * N], first_child[B * N],
    next_sibling[B * N], anc[B * N * ANC], num_nodes[B];
static float score[B * N];
static int64_t bn[2] = {B, N}, bna[3] = {B, N, ANC}, b1[1] = {B};

static int draft_tree(difftree_tree* tree) {
  static float logits[B * L * V];
  for (int i = 0; i < B * L * V; ++i) logits[i] = 10.0f * uniform01();
  for (int d = 0; d < L; ++d) logits[d * V + 7 * (d + 1)] = 30.0f; /* a confident draft */
  int64_t logits_shape[3] = {B, L, V}, cand_shape[3] = {B, L, K};
  static int32_t cand_token[B * L * K];
  static float cand_logprob[B * L * K];
  DLTensor t_logits = cpu_tensor(logits, kDLFloat, 32, 3, logits_shape);
  DLTensor t_ctok = cpu_tensor(cand_token, kDLInt, 32, 3, cand_shape);
  DLTensor t_clp = cpu_tensor(cand_logprob, kDLFloat, 32, 3, cand_shape);
  if (check(difftree_topk_logprobs(&t_logits, K, &t_ctok, &t_clp, NULL), "topk_logprobs"))
    return 1;

  tree->token = cpu_tensor(token, kDLInt, 32, 2, bn);
  tree->parent = cpu_tensor(parent, kDLInt, 32, 2, bn);
  tree->depth = cpu_tensor(depth, kDLInt, 32, 2, bn);
  tree->score = cpu_tensor(score, kDLFloat, 32, 2, bn);
  tree->first_child = cpu_tensor(first_child, kDLInt, 32, 2, bn);
  tree->next_sibling = cpu_tensor(next_sibling, kDLInt, 32, 2, bn);
  tree->anc = cpu_tensor(anc, kDLInt, 32, 3, bna);
  tree->num_nodes = cpu_tensor(num_nodes, kDLInt, 32, 1, b1);
  int32_t root[B] = {1}; /* the previous round's bonus token */
  DLTensor t_root = cpu_tensor(root, kDLInt, 32, 1, b1);
  difftree_ddtree_params params = difftree_ddtree_default_params();
  params.budget = BUDGET;
  printf("ddtree_select: CUDA scratch %zu bytes (CPU buffers need none)\n",
         difftree_ddtree_select_workspace_bytes(B, L, K, BUDGET));
  if (check(difftree_ddtree_select(&t_ctok, &t_clp, &t_root, &params, tree, NULL), "select"))
    return 1;
  printf("draft tree: %d nodes; node 1 = token %d (log q %.3f)\n", num_nodes[0], token[1],
         score[1]);
  for (int i = 1; i < num_nodes[0]; ++i)
    if (parent[i] < 0 || parent[i] >= i || depth[i] != depth[parent[i]] + 1) {
      fprintf(stderr, "tree: node %d has parent %d, depth %d\n", i, parent[i], depth[i]);
      return 1;
    }
  return 0;
}

/* The caches [B, H, S, D]: rows [0, PREFIX) are the committed prefix, row PREFIX + i holds tree
 * node i's K/V (as the target's forward writes them). K rows hold their row id; V rows hold
 * (is a tree row, 1, row id, ...). */
static float k_cache[B * H * S * D], v_cache[B * H * S * D];
static int64_t cache_shape[4] = {B, H, S, D};

static float* row(float* cache, int h, int r) { return cache + ((size_t)h * S + r) * D; }

/* A zero query makes every visible key equally likely, so row i's dim 0 is exactly the share of
 * tree keys it sees: (depth + 1) / (PREFIX + depth + 1) when it sees its ancestors and itself. */
static int attend(const difftree_tree* tree) {
  for (int h = 0; h < H; ++h)
    for (int r = 0; r < S; ++r)
      for (int d = 0; d < D; ++d) {
        row(k_cache, h, r)[d] = (float)r;
        row(v_cache, h, r)[d] = d == 0 ? (r >= PREFIX ? 1.0f : 0.0f) : d == 1 ? 1.0f : (float)r;
      }
  static float q[B * H * N * D], out[B * H * N * D];
  int64_t q_shape[4] = {B, H, N, D};
  int64_t prefix_len[B] = {PREFIX};
  DLTensor t_q = cpu_tensor(q, kDLFloat, 32, 4, q_shape);
  DLTensor t_out = cpu_tensor(out, kDLFloat, 32, 4, q_shape);
  DLTensor t_k = cpu_tensor(k_cache, kDLFloat, 32, 4, cache_shape);
  DLTensor t_v = cpu_tensor(v_cache, kDLFloat, 32, 4, cache_shape);
  DLTensor t_prefix = cpu_tensor(prefix_len, kDLInt, 64, 1, b1);
  difftree_attention_params params = difftree_attention_default_params();
  params.scale = 1.0f / sqrtf((float)D);
  printf("tree_attention: CUDA scratch %zu bytes (CPU buffers need none)\n",
         difftree_tree_attention_workspace_bytes(B, H, H, N, D, S, params.num_splits));
  if (check(difftree_tree_attention(&t_q, &t_k, &t_v, &t_prefix, &tree->anc, &tree->num_nodes,
                                    &params, &t_out, NULL, NULL),
            "tree_attention"))
    return 1;
  for (int h = 0; h < H; ++h)
    for (int i = 0; i < num_nodes[0]; ++i) {
      const float* o = out + ((size_t)h * N + i) * D;
      const int seen = PREFIX + depth[i] + 1;
      const double share = (double)(depth[i] + 1) / seen;
      /* A mean of `seen` terms in [0, 1] in fp32: off by at most ~seen ulps of 1. */
      const double tol = 4.0 * seen * FLT_EPSILON;
      if (fabs(o[0] - share) > tol || fabs(o[1] - 1.0) > tol) {
        fprintf(stderr, "attention: head %d row %d gives (%f, %f), expected (%f, 1)\n", h, i, o[0],
                o[1], share);
        return 1;
      }
    }
  printf("tree_attention: every row attends to the %d prefix rows + its own ancestors\n", PREFIX);
  return 0;
}

/* The target's token per node: greedy over logits that vote for the drafter's best child at
 * depths < AGREE (noise elsewhere). */
static int32_t choice[B * N];

static int select_nodes(void) {
  static float logits[B * N * V];
  for (int i = 0; i < N; ++i) {
    for (int v = 0; v < V; ++v) logits[i * V + v] = uniform01();
    if (i < num_nodes[0] && depth[i] < AGREE && first_child[i] >= 0)
      logits[i * V + token[first_child[i]]] += 5.0f;
  }
  int64_t logits_shape[3] = {B, N, V};
  DLTensor t_logits = cpu_tensor(logits, kDLFloat, 32, 3, logits_shape);
  DLTensor t_choice = cpu_tensor(choice, kDLInt, 32, 2, bn);
  if (check(difftree_node_select(&t_logits, NULL /* greedy */, &t_choice, NULL), "node_select"))
    return 1;
  for (int i = 0; i < N; ++i) {
    int best = 0;
    for (int v = 1; v < V; ++v)
      if (logits[i * V + v] > logits[i * V + best]) best = v;
    if (choice[i] != best) {
      fprintf(stderr, "node_select: node %d chose %d, argmax is %d\n", i, choice[i], best);
      return 1;
    }
  }
  return 0;
}

/* The accepted path, walked here by hand: from the root, move to the child the target chose. */
static int expected_walk(int32_t* path_out) {
  int cur = 0, n = 0;
  path_out[0] = 0;
  for (;;) {
    int next = -1;
    for (int c = first_child[cur]; c >= 0; c = next_sibling[c])
      if (token[c] == choice[cur]) next = c;
    if (next < 0) return n;
    path_out[++n] = next;
    cur = next;
  }
}

int main(void) {
  if (difftree_abi_version() != DIFFTREE_ABI_VERSION) {
    fprintf(stderr, "ABI mismatch: library %u, header %u\n", difftree_abi_version(),
            DIFFTREE_ABI_VERSION);
    return 1;
  }
  difftree_tree tree;
  if (draft_tree(&tree) || attend(&tree) || select_nodes()) return 1;

  int32_t path[B * (L + 1)], accepted[B], next_token[B];
  uint8_t done[B];
  int64_t bp[2] = {B, L + 1};
  DLTensor t_choice = cpu_tensor(choice, kDLInt, 32, 2, bn);
  DLTensor t_path = cpu_tensor(path, kDLInt, 32, 2, bp);
  DLTensor t_acc = cpu_tensor(accepted, kDLInt, 32, 1, b1);
  DLTensor t_next = cpu_tensor(next_token, kDLInt, 32, 1, b1);
  DLTensor t_done = cpu_tensor(done, kDLUInt, 8, 1, b1);
  if (check(difftree_tree_walk(&tree, &t_choice, NULL, &t_path, &t_acc, &t_next, &t_done, NULL),
            "tree_walk"))
    return 1;
  int32_t want_path[L + 1];
  const int want = expected_walk(want_path);
  printf("tree_walk: accepted %d draft tokens:", accepted[0]);
  for (int j = 1; j <= accepted[0]; ++j) printf(" %d", token[path[j]]);
  printf(", next token %d\n", next_token[0]);
  if (accepted[0] != want || want < AGREE || next_token[0] != choice[path[accepted[0]]] ||
      done[0]) {
    fprintf(stderr, "walk: accepted %d (expected %d >= %d), next %d, done %d\n", accepted[0], want,
            AGREE, next_token[0], done[0]);
    return 1;
  }
  for (int j = 0; j <= L; ++j)
    if (path[j] != (j <= want ? want_path[j] : -1)) {
      fprintf(stderr, "walk: path[%d] = %d, expected %d\n", j, path[j], want_path[j]);
      return 1;
    }

  /* Commit: the accepted nodes' K/V rows move to PREFIX + 1 .. PREFIX + accepted. */
  DLTensor t_k = cpu_tensor(k_cache, kDLFloat, 32, 4, cache_shape);
  DLTensor t_v = cpu_tensor(v_cache, kDLFloat, 32, 4, cache_shape);
  const DLTensor* caches[2] = {&t_k, &t_v};
  int64_t base[B] = {PREFIX};
  DLTensor t_base = cpu_tensor(base, kDLInt, 64, 1, b1);
  if (check(difftree_kv_commit(caches, 2, &t_base, &t_path, &t_acc, NULL), "kv_commit")) return 1;
  for (int h = 0; h < H; ++h)
    for (int j = 0; j <= accepted[0]; ++j) {
      const float expect = (float)(PREFIX + path[j]); /* the source row's id */
      if (row(k_cache, h, PREFIX + j)[0] != expect || row(v_cache, h, PREFIX + j)[2] != expect) {
        fprintf(stderr, "commit: head %d row %d holds %f, expected %f\n", h, PREFIX + j,
                row(k_cache, h, PREFIX + j)[0], expect);
        return 1;
      }
    }
  printf("kv_commit: %d rows committed (length %d); the next round's root is token %d\n",
         accepted[0] + 1, PREFIX + accepted[0] + 1, next_token[0]);

  /* Bad input gives a named error, not a crash. */
  if (difftree_kv_commit(caches, 2, NULL, &t_path, &t_acc, NULL) != DIFFTREE_INVALID_VALUE ||
      strstr(difftree_last_error(), "base_len") == NULL) {
    fprintf(stderr, "expected a named error for a NULL base_len\n");
    return 1;
  }
  if (difftree_tree_walk(&tree, &t_choice, NULL, &t_path, &t_acc, &t_next, &t_acc, NULL) !=
          DIFFTREE_INVALID_TYPE ||
      strstr(difftree_last_error(), "done") == NULL) {
    fprintf(stderr, "expected a named error for an int32 done\n");
    return 1;
  }
  printf("C ABI example OK\n");
  return 0;
}
