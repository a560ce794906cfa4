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
#include <sstream>
#include <unordered_set>
#include <vector>

#include "cpu/cpu_ops.h"
#include "cpu/policy_ops.h"
#include "cpu/pool_select.h"
#include "dispatch/checks.h"

namespace difftree::cpu {

Status taps_select(const TensorView& pool_token, const TensorView& pool_parent,
                   const TensorView& pool_size, const TensorView& log_qc, int64_t budget,
                   const TreeView& tree) {
  const int64_t B = pool_token.shape[0];
  const int64_t P1 = pool_token.shape[1];
  (void)budget;  // the output capacity budget + 1 was checked by the dispatch layer
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
  Pool pool;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t n = checks::load_index(pool_size, b);
    pool.token.resize(static_cast<size_t>(n));
    pool.parent.resize(static_cast<size_t>(n));
    pool.edge.resize(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      pool.token[i] = static_cast<int32_t>(checks::load_index(pool_token, b * P1 + i));
      pool.parent[i] = static_cast<int32_t>(checks::load_index(pool_parent, b * P1 + i));
      pool.edge[i] = lq[b * P1 + i];
    }
    pool_select(pool, tree, b);
  }
  return Status::Ok();
}

}  // namespace difftree::cpu
