// TreeView: the draft tree of DESIGN.md §2 as views over caller-owned arrays.
//
// Capacity N = budget + 1 per request; node 0 is the root (the previous round's bonus token).
// Nodes are in best-first order, parent[i] < i, so every prefix [0, n) is itself a valid tree.
// Rows >= num_nodes[b] are padding: token = parent = first_child = next_sibling = -1,
// depth = 0, score = -inf, anc = only the row's own bit (so attention over them is well defined).
#pragma once

#include "difftree/tensor.h"

namespace difftree {

struct TreeView {
  TensorView token;         // int32 [B, N]
  TensorView parent;        // int32 [B, N], -1 for the root
  TensorView depth;         // int32 [B, N], 0 for the root
  TensorView score;         // float32 [B, N], selector's ranking score (DDTree: cum. log-prob)
  TensorView first_child;   // int32 [B, N], -1 for none
  TensorView next_sibling;  // int32 [B, N], -1 for none; siblings in best-first order
  TensorView anc;           // int32 holding u32 bits [B, N, W], W = ceil(N / 32):
                            // bit j of row i set iff j is i or an ancestor of i
  TensorView num_nodes;     // int32 [B]
};

inline int64_t anc_words(int64_t num_nodes_capacity) { return (num_nodes_capacity + 31) / 32; }

}  // namespace difftree
