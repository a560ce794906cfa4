// DDTree: the exact top-`budget` prefixes by cumulative draft log-prob (ALGORITHMS.md §2), by
// best-first expansion with a heap. A candidate is pushed only once its predecessor (previous
// sibling, or parent for a first child) has been popped, and every candidate ranks after its
// predecessor, so pops come out in exactly the global order and parent < child holds.
#include <algorithm>
#include <cstdint>
#include <cmath>
#include <sstream>
#include <vector>

#include "cpu/candidates.h"
#include "cpu/cpu_ops.h"
#include "dispatch/checks.h"

namespace difftree::cpu {
namespace {

struct Candidate {
  float score;
  int32_t depth;   // 1..L
  int32_t parent;  // node index of the parent (admitted earlier)
  int32_t rank;    // index into the depth's candidate list
};

// The normative order: higher score, smaller depth, earlier parent, smaller rank. Ordering by the
// parent's index (its rank among admitted nodes of its depth) instead of by the rank tuple keeps
// the order consistent under fp32 rounding, which the parallel beam form relies on.
inline bool ranks_before(const Candidate& a, const Candidate& b) {
  if (a.score != b.score) return a.score > b.score;
  if (a.depth != b.depth) return a.depth < b.depth;
  if (a.parent != b.parent) return a.parent < b.parent;
  return a.rank < b.rank;
}

}  // namespace

Status ddtree_select(const TensorView& cand_token, const TensorView& cand_logprob, int64_t budget,
                     const TensorView* root_token, const TreeView& tree) {
  const int64_t B = cand_logprob.shape[0], L = cand_logprob.shape[1], K = cand_logprob.shape[2];
  const int64_t N = budget + 1;
  const float* lp = cand_logprob.ptr<const float>();
  TokenSet seen;
  std::vector<Candidate> heap;
  heap.reserve(2 * N + 2);
  auto heap_cmp = [](const Candidate& a, const Candidate& b) { return ranks_before(b, a); };

  for (int64_t b = 0; b < B; ++b) {
    DIFFTREE_RETURN_IF_ERROR(check_candidates(cand_token, lp, b, L, K, seen));
    int32_t* token = tree.token.ptr<int32_t>() + b * N;
    int32_t* parent = tree.parent.ptr<int32_t>() + b * N;
    int32_t* depth = tree.depth.ptr<int32_t>() + b * N;
    float* score = tree.score.ptr<float>() + b * N;
    auto lp_at = [&](int64_t d, int64_t r) { return lp[(b * L + d - 1) * K + r]; };
    auto token_at = [&](int64_t d, int64_t r) {
      return static_cast<int32_t>(checks::load_index(cand_token, (b * L + d - 1) * K + r));
    };

    const int64_t root = root_token ? checks::load_index(*root_token, b) : -1;
    if (root_token && (root < 0 || root > INT32_MAX)) {
      std::ostringstream os;
      os << "root_token: expected token ids in [0, 2^31), found " << root << " at [" << b << "]";
      return InvalidValue(os.str());
    }
    token[0] = static_cast<int32_t>(root);
    parent[0] = -1;
    depth[0] = 0;
    score[0] = 0.0f;
    int32_t n = 1;
    heap.clear();
    if (L > 0 && K > 0) heap.push_back({score[0] + lp_at(1, 0), 1, 0, 0});
    while (n < N && !heap.empty()) {
      std::pop_heap(heap.begin(), heap.end(), heap_cmp);
      const Candidate c = heap.back();
      heap.pop_back();
      const int32_t i = n++;
      token[i] = token_at(c.depth, c.rank);
      parent[i] = c.parent;
      depth[i] = c.depth;
      score[i] = c.score;
      if (c.rank + 1 < K) {
        heap.push_back({score[c.parent] + lp_at(c.depth, c.rank + 1), c.depth, c.parent,
                        c.rank + 1});
        std::push_heap(heap.begin(), heap.end(), heap_cmp);
      }
      if (c.depth < L) {
        heap.push_back({score[i] + lp_at(c.depth + 1, 0), c.depth + 1, i, 0});
        std::push_heap(heap.begin(), heap.end(), heap_cmp);
      }
    }
    tree.num_nodes.ptr<int32_t>()[b] = n;
    finalize_tree(tree, b);
  }
  return Status::Ok();
}

}  // namespace difftree::cpu
