// Derived tree arrays (child/sibling links, ancestor bitmask) and padding, from parent[].
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "cpu/cpu_ops.h"

namespace difftree::cpu {

void finalize_tree(const TreeView& tree, int64_t b) {
  const int64_t N = tree.token.shape[1];
  const int64_t W = tree.anc.shape[2];
  const int64_t n = tree.num_nodes.ptr<const int32_t>()[b];
  int32_t* token = tree.token.ptr<int32_t>() + b * N;
  int32_t* parent = tree.parent.ptr<int32_t>() + b * N;
  int32_t* depth = tree.depth.ptr<int32_t>() + b * N;
  float* score = tree.score.ptr<float>() + b * N;
  int32_t* first_child = tree.first_child.ptr<int32_t>() + b * N;
  int32_t* next_sibling = tree.next_sibling.ptr<int32_t>() + b * N;
  uint32_t* anc = reinterpret_cast<uint32_t*>(tree.anc.ptr<int32_t>()) + b * N * W;

  std::memset(anc, 0, sizeof(uint32_t) * N * W);
  for (int64_t i = 0; i < N; ++i) first_child[i] = next_sibling[i] = -1;
  // Nodes are in best-first order, so appending children in index order keeps siblings
  // best-first; remembering each parent's last child keeps the pass O(N).
  std::vector<int32_t> last_child(static_cast<size_t>(n), -1);
  for (int64_t i = 1; i < n; ++i) {
    const int32_t p = parent[i];
    if (last_child[p] < 0) {
      first_child[p] = static_cast<int32_t>(i);
    } else {
      next_sibling[last_child[p]] = static_cast<int32_t>(i);
    }
    last_child[p] = static_cast<int32_t>(i);
  }
  for (int64_t i = 0; i < n; ++i) {
    uint32_t* row = anc + i * W;
    if (i > 0) std::memcpy(row, anc + parent[i] * W, sizeof(uint32_t) * W);
    row[i / 32] |= 1u << (i % 32);
  }
  for (int64_t i = n; i < N; ++i) {
    token[i] = parent[i] = -1;
    depth[i] = 0;
    score[i] = -std::numeric_limits<float>::infinity();
    anc[i * W + i / 32] = 1u << (i % 32);
  }
}

}  // namespace difftree::cpu
