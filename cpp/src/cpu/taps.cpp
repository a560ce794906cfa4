// TAPS (ALGORITHMS.md §6): prefix-closed selection by reach over a candidate pool.
//
// The pool is a prefix-closed tree (pool_parent[i] < i, row 0 the root) built by the caller
// (difftree_rt.policies.taps.taps_pool: a beam over the top-K lattice); log_qc[i] is
// log q_cond(node i | its parent), <= 0. Reach: score(root) = 0, score(i) = fp32(score(parent) +
// log_qc[i]), as DDTree's fp32 sums. Selection is the best-first heap over the pool under the
// normative order (docs/NOTES.md): higher reach, smaller depth, earlier parent (its position in
// the output), smaller pool index. Since log_qc <= 0, fl(s + x) <= s, so a child never ranks
// before its parent (equal reach -> smaller depth first): the top-`budget` nodes by this order
// are prefix-closed and the heap, which only offers a node once its parent was taken, pops
// exactly them. "Adding a node adds its missing ancestors" therefore never has to add anything.
#include <cmath>
#include <queue>
#include <sstream>
#include <unordered_set>
#include <vector>

#include "cpu/cpu_ops.h"
#include "cpu/policy_ops.h"
#include "dispatch/checks.h"

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

Status taps_select(const TensorView& pool_token, const TensorView& pool_parent,
                   const TensorView& pool_size, const TensorView& log_qc, int64_t budget,
                   const TreeView& tree) {
  const int64_t B = pool_token.shape[0];
  const int64_t P1 = pool_token.shape[1];
  const int64_t N = budget + 1;
  const float* lq = log_qc.ptr<const float>();
  // Validate every request first: a bad pool must not leave a half-written tree.
  for (int64_t b = 0; b < B; ++b) {
    const int64_t n = checks::load_index(pool_size, b);
    if (n < 1 || n > P1) {
      std::ostringstream os;
      os << "pool_size: expected values in [1, " << P1 << "], found " << n << " at [" << b << "]";
      return InvalidValue(os.str());
    }
    if (checks::load_index(pool_parent, b * P1) != -1)
      return InvalidValue("pool_parent: expected -1 for the root (row 0) at [" + std::to_string(b) +
                          ", 0]");
    std::unordered_set<int64_t> edges;
    for (int64_t i = 1; i < n; ++i) {
      const int64_t p = checks::load_index(pool_parent, b * P1 + i);
      if (p < 0 || p >= i) {
        std::ostringstream os;
        os << "pool_parent: expected 0 <= parent < node, found " << p << " at [" << b << ", " << i
           << "]";
        return InvalidValue(os.str());
      }
      const int64_t tok = checks::load_index(pool_token, b * P1 + i);
      if (tok < 0 || tok > INT32_MAX) {
        std::ostringstream os;
        os << "pool_token: expected token ids in [0, 2^31), found " << tok << " at [" << b << ", "
           << i << "]";
        return InvalidValue(os.str());
      }
      if (!edges.insert(p * (int64_t{INT32_MAX} + 1) + tok).second) {
        std::ostringstream os;
        os << "pool_token: expected distinct tokens among siblings, token " << tok
           << " appears twice under parent " << p << " at [" << b << ", " << i << "]";
        return InvalidValue(os.str());
      }
      const float v = lq[b * P1 + i];
      if (!std::isfinite(v) || v > 0.0f) {
        std::ostringstream os;
        os << "log_qc: expected finite log-probs <= 0, found " << v << " at [" << b << ", " << i
           << "]";
        return InvalidValue(os.str());
      }
    }
  }
  int32_t* token = tree.token.ptr<int32_t>();
  int32_t* parent = tree.parent.ptr<int32_t>();
  int32_t* depth = tree.depth.ptr<int32_t>();
  float* score = tree.score.ptr<float>();
  int32_t* num_nodes = tree.num_nodes.ptr<int32_t>();
  std::vector<int32_t> first_child, next_sibling;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t n = checks::load_index(pool_size, b);
    // Pool children lists in pool order.
    first_child.assign(static_cast<size_t>(n), -1);
    next_sibling.assign(static_cast<size_t>(n), -1);
    for (int64_t i = n - 1; i >= 1; --i) {
      const int64_t p = checks::load_index(pool_parent, b * P1 + i);
      next_sibling[i] = first_child[p];
      first_child[p] = static_cast<int32_t>(i);
    }
    int32_t* tok = token + b * N;
    int32_t* par = parent + b * N;
    int32_t* dep = depth + b * N;
    float* sc = score + b * N;
    tok[0] = static_cast<int32_t>(checks::load_index(pool_token, b * P1));
    par[0] = -1;
    dep[0] = 0;
    sc[0] = 0.0f;
    std::priority_queue<Cand, std::vector<Cand>, Worse> heap;
    auto push_children = [&](int32_t out, int32_t pool) {
      for (int32_t c = first_child[pool]; c >= 0; c = next_sibling[c])
        heap.push({sc[out] + lq[b * P1 + c], dep[out] + 1, out, c});
    };
    push_children(0, 0);
    int32_t m = 1;
    while (m < N && !heap.empty()) {
      const Cand c = heap.top();
      heap.pop();
      tok[m] = static_cast<int32_t>(checks::load_index(pool_token, b * P1 + c.pool_idx));
      par[m] = c.out_parent;
      dep[m] = c.depth;
      sc[m] = c.score;
      push_children(m, c.pool_idx);
      ++m;
    }
    num_nodes[b] = m;
    finalize_tree(tree, b);
  }
  return Status::Ok();
}

}  // namespace difftree::cpu
