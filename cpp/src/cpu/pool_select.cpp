#include "cpu/pool_select.h"

#include <queue>

#include "cpu/cpu_ops.h"

namespace difftree::cpu {

namespace {
struct Cand {
  float score;
  int32_t depth;
  int32_t out_parent;  // parent's output index
  int32_t pool_idx;
};
struct Worse {  // priority_queue pops the "largest": the best candidate under the order
  bool operator()(const Cand& a, const Cand& b) const {
    if (a.score != b.score) return a.score < b.score;
    if (a.depth != b.depth) return a.depth > b.depth;
    if (a.out_parent != b.out_parent) return a.out_parent > b.out_parent;
    return a.pool_idx > b.pool_idx;
  }
};
}  // namespace

void pool_select(const Pool& pool, const TreeView& tree, int64_t b) {
  const int64_t N = tree.token.shape[1];
  const int32_t n = static_cast<int32_t>(pool.token.size());
  // Children lists in pool order.
  std::vector<int32_t> first_child(static_cast<size_t>(n), -1);
  std::vector<int32_t> next_sibling(static_cast<size_t>(n), -1);
  for (int32_t i = n - 1; i >= 1; --i) {
    const int32_t p = pool.parent[i];
    next_sibling[i] = first_child[p];
    first_child[p] = i;
  }
  int32_t* tok = tree.token.ptr<int32_t>() + b * N;
  int32_t* par = tree.parent.ptr<int32_t>() + b * N;
  int32_t* dep = tree.depth.ptr<int32_t>() + b * N;
  float* sc = tree.score.ptr<float>() + b * N;
  tok[0] = pool.token[0];
  par[0] = -1;
  dep[0] = 0;
  sc[0] = 0.0f;
  std::priority_queue<Cand, std::vector<Cand>, Worse> heap;
  auto push_children = [&](int32_t out, int32_t row) {
    for (int32_t c = first_child[row]; c >= 0; c = next_sibling[c])
      heap.push({sc[out] + pool.edge[c], dep[out] + 1, out, c});
  };
  push_children(0, 0);
  int32_t m = 1;
  while (m < N && !heap.empty()) {
    const Cand c = heap.top();
    heap.pop();
    tok[m] = pool.token[c.pool_idx];
    par[m] = c.out_parent;
    dep[m] = c.depth;
    sc[m] = c.score;
    push_children(m, c.pool_idx);
    ++m;
  }
  tree.num_nodes.ptr<int32_t>()[b] = m;
  finalize_tree(tree, b);
}

}  // namespace difftree::cpu
