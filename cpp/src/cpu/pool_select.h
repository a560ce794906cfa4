// Best-first selection over a prefix-closed candidate pool: the one selector behind TAPS (reach
// over a beam pool) and D²SD (the trie of the first draft and its re-drafted branches).
#pragma once

#include <cstdint>
#include <vector>

#include "difftree/ops.h"

namespace difftree::cpu {

// One request's pool: row 0 is the root; parent[i] < i for i >= 1; distinct sibling tokens;
// edge[i] = the score of the edge into row i, finite and <= 0 (edge[0] ignored).
struct Pool {
  std::vector<int32_t> token;
  std::vector<int32_t> parent;
  std::vector<float> edge;
};

// Writes request b of `tree` (capacity N): the root, then the top N - 1 pool rows under the
// normative order (docs/NOTES.md): higher score, smaller depth, earlier parent (its output
// index), smaller pool index; score(i) = fp32(score(parent) + edge[i]), score(root) = 0. Because
// edges are <= 0 a child never ranks before its parent, so the heap (which offers a row once its
// parent is taken) pops exactly the top rows and the result is prefix-closed. Then num_nodes,
// links, anc and padding (finalize_tree).
void pool_select(const Pool& pool, const TreeView& tree, int64_t b);

}  // namespace difftree::cpu
