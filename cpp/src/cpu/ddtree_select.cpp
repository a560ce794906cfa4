// DDTree: the exact top-`budget` prefixes by cumulative draft log-prob (ALGORITHMS.md §2), by
// best-first expansion with a heap. A candidate is pushed only once its predecessor (previous
// sibling, or parent for a first child) has been popped, and every candidate ranks after its
// predecessor, so pops come out in exactly the global order and parent < child holds.
#include <algorithm>
#include <cstdint>
#include <cmath>
#include <sstream>
#include <vector>

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

// Open-addressing set of token ids for the per-depth distinctness check: O(K) per depth, where
// sorting a copy was the dominant cost of a 1024-node selection.
class TokenSet {
 public:
  void reset(int64_t capacity) {
    size_t n = 16;
    while (n < static_cast<size_t>(2 * capacity)) n <<= 1;
    slots_.assign(n, -1);
    mask_ = n - 1;
  }
  // Returns false if `tok` (>= 0) was already present.
  bool insert(int64_t tok) {
    size_t i = (static_cast<uint64_t>(tok) * 0x9E3779B97F4A7C15ull) >> 20 & mask_;
    while (slots_[i] >= 0) {
      if (slots_[i] == tok) return false;
      i = (i + 1) & mask_;
    }
    slots_[i] = tok;
    return true;
  }

 private:
  std::vector<int64_t> slots_;
  size_t mask_ = 0;
};

Status check_candidates(const TensorView& cand_token, const float* lp, int64_t b, int64_t L,
                        int64_t K, TokenSet& seen) {
  for (int64_t d = 0; d < L; ++d) {
    const float* row = lp + (b * L + d) * K;
    seen.reset(K);
    for (int64_t r = 0; r < K; ++r) {
      const float v = row[r];
      if (!std::isfinite(v) || v > 0.0f || (r > 0 && v > row[r - 1])) {
        std::ostringstream os;
        os << "cand_logprob: expected finite log-probs <= 0, non-increasing along K; "
           << "found " << v << " at [" << b << ", " << d << ", " << r << "]";
        if (r > 0 && v > row[r - 1]) os << " after " << row[r - 1];
        return InvalidValue(os.str());
      }
      const int64_t tok = checks::load_index(cand_token, (b * L + d) * K + r);
      if (tok < 0 || tok > INT32_MAX) {
        std::ostringstream os;
        os << "cand_token: expected token ids in [0, 2^31), found " << tok << " at [" << b << ", " << d
           << ", " << r << "]";
        return InvalidValue(os.str());
      }
      if (!seen.insert(tok)) {
        std::ostringstream os;
        os << "cand_token: expected distinct tokens per depth, token " << tok
           << " appears twice at [" << b << ", " << d << ", :]";
        return InvalidValue(os.str());
      }
    }
  }
  return Status::Ok();
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
