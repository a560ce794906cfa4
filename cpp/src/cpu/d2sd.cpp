// D²SD (ALGORITHMS.md §8): rejection-boundary posterior over a first draft, and the joint tree of
// the first draft and its re-drafted branches.
//
// Boundaries: log r(i) = Σ_{j<i} lp[j] + log(1 - exp(lp[i])), i = 0..L-1 (0-based lp: lp[j] is
// depth j + 1), in double with one operation per statement in the order the Python reference
// uses, exp/log from the same libm, so both rank the same boundaries bit for bit.
//
// Select: the rows (row 0 = the first draft, row k = branch k: the first-draft tokens at depths
// 1..i_k, its own tokens below) are merged into a trie, so shared trunks are verified once; a trie
// edge scores the max log-prob of the rows through it (the rows that agree there share the
// prefix, so any of them may be the one the target follows). Pool order = creation order, row by
// row, so a node's pool index ranks it by the first row through it. The tree is then the pool
// selector's best-first top-budget (cpu/pool_select.h), the order every selector uses.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <sstream>
#include <vector>

#include "cpu/policy_ops.h"
#include "cpu/pool_select.h"
#include "dispatch/checks.h"

namespace difftree::cpu {

namespace {

// log(1 - exp(x)) for x <= 0, accurate at both ends (Mächler's log1mexp); -inf at x = 0.
double log1mexp(double x) {
  if (x > -0.6931471805599453) {
    const double e = std::expm1(x);
    return std::log(-e);
  }
  const double e = std::exp(x);
  return std::log1p(-e);
}

Status bad_logprob(const char* name, float v, int64_t b, int64_t j) {
  std::ostringstream os;
  os << name << ": expected finite log-probs <= 0, found " << v << " at [" << b << ", " << j << "]";
  return InvalidValue(os.str());
}

Status bad_token(const char* name, int64_t tok, const std::string& where) {
  std::ostringstream os;
  os << name << ": expected token ids in [0, 2^31), found " << tok << " at " << where;
  return InvalidValue(os.str());
}

}  // namespace

Status d2sd_boundaries(const TensorView& trunk_logprob, const TensorView& boundary) {
  const int64_t B = trunk_logprob.shape[0], L = trunk_logprob.shape[1];
  const int64_t K = boundary.shape[1];
  const float* lp = trunk_logprob.ptr<const float>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j < L; ++j) {
      const float v = lp[b * L + j];
      if (!std::isfinite(v) || v > 0.0f) return bad_logprob("trunk_logprob", v, b, j);
    }
  std::vector<double> lr(static_cast<size_t>(L));
  std::vector<int32_t> order(static_cast<size_t>(L));
  int32_t* out = boundary.ptr<int32_t>();
  for (int64_t b = 0; b < B; ++b) {
    double prefix = 0.0;
    for (int64_t i = 0; i < L; ++i) {
      const double x = static_cast<double>(lp[b * L + i]);
      const double tail = log1mexp(x);
      lr[i] = prefix + tail;
      prefix = prefix + x;
    }
    std::iota(order.begin(), order.end(), 0);
    // Higher r first, then the shorter boundary (-inf == -inf ties fall to i as well).
    std::stable_sort(order.begin(), order.end(),
                     [&](int32_t a, int32_t c) { return lr[a] > lr[c]; });
    for (int64_t k = 0; k < K; ++k) out[b * K + k] = order[k];
  }
  return Status::Ok();
}

Status d2sd_select(const TensorView& trunk_token, const TensorView& trunk_logprob,
                   const TensorView& boundary, const TensorView& branch_token,
                   const TensorView& branch_logprob, const TensorView* root_token,
                   const TreeView& tree) {
  const int64_t B = trunk_logprob.shape[0], L1 = trunk_logprob.shape[1];
  const int64_t K = boundary.shape[1], L2 = branch_logprob.shape[2];
  const int64_t max_i = std::min(L1, L2) - 1;
  const float* tlp = trunk_logprob.ptr<const float>();
  const float* blp = branch_logprob.ptr<const float>();
  // Validate every request first: bad input must not leave a half-written tree.
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t j = 0; j < L1; ++j) {
      const int64_t tok = checks::load_index(trunk_token, b * L1 + j);
      if (tok < 0 || tok > INT32_MAX)
        return bad_token("trunk_token", tok,
                         "[" + std::to_string(b) + ", " + std::to_string(j) + "]");
      const float v = tlp[b * L1 + j];
      if (!std::isfinite(v) || v > 0.0f) return bad_logprob("trunk_logprob", v, b, j);
    }
    for (int64_t k = 0; k < K; ++k) {
      const int64_t i = checks::load_index(boundary, b * K + k);
      if (i < -1 || i > max_i) {
        std::ostringstream os;
        os << "boundary: expected -1 (unused) or a visible-prefix length in [0, min(L1, L2) - 1 = "
           << max_i << "], found " << i << " at [" << b << ", " << k << "]";
        return InvalidValue(os.str());
      }
      for (int64_t j = std::max<int64_t>(i, 0); i >= 0 && j < L2; ++j) {
        const int64_t at = (b * K + k) * L2 + j;
        const int64_t tok = checks::load_index(branch_token, at);
        if (tok < 0 || tok > INT32_MAX)
          return bad_token(
              "branch_token", tok,
              "[" + std::to_string(b) + ", " + std::to_string(k) + ", " + std::to_string(j) + "]");
        const float v = blp[at];
        if (!std::isfinite(v) || v > 0.0f) {
          std::ostringstream os;
          os << "branch_logprob: expected finite log-probs <= 0 after the boundary, found " << v
             << " at [" << b << ", " << k << ", " << j << "]";
          return InvalidValue(os.str());
        }
      }
    }
  }
  Pool pool;
  std::vector<int32_t> first_child, next_sibling;
  auto add = [&](int32_t parent, int32_t tok, float edge) {
    for (int32_t c = first_child[parent]; c >= 0; c = next_sibling[c])
      if (pool.token[c] == tok) {
        pool.edge[c] = std::max(pool.edge[c], edge);
        return c;
      }
    const int32_t id = static_cast<int32_t>(pool.token.size());
    pool.token.push_back(tok);
    pool.parent.push_back(parent);
    pool.edge.push_back(edge);
    first_child.push_back(-1);
    next_sibling.push_back(-1);
    // Append at the end of the parent's list: siblings stay in creation (pool) order.
    if (first_child[parent] < 0) {
      first_child[parent] = id;
    } else {
      int32_t c = first_child[parent];
      while (next_sibling[c] >= 0) c = next_sibling[c];
      next_sibling[c] = id;
    }
    return id;
  };
  for (int64_t b = 0; b < B; ++b) {
    const int32_t root =
        root_token != nullptr ? static_cast<int32_t>(checks::load_index(*root_token, b)) : -1;
    pool.token.assign(1, root);
    pool.parent.assign(1, -1);
    pool.edge.assign(1, 0.0f);
    first_child.assign(1, -1);
    next_sibling.assign(1, -1);
    // Row 0, the first draft: trie rows 1..L1 are its depths 1..L1.
    int32_t cur = 0;
    for (int64_t j = 0; j < L1; ++j)
      cur = add(cur, static_cast<int32_t>(checks::load_index(trunk_token, b * L1 + j)),
                tlp[b * L1 + j]);
    for (int64_t k = 0; k < K; ++k) {
      const int64_t i = checks::load_index(boundary, b * K + k);
      if (i < 0) continue;
      cur = static_cast<int32_t>(i);  // the first-draft node at depth i (the root for i = 0)
      for (int64_t j = i; j < L2; ++j) {
        const int64_t at = (b * K + k) * L2 + j;
        cur = add(cur, static_cast<int32_t>(checks::load_index(branch_token, at)), blp[at]);
      }
    }
    pool_select(pool, tree, b);
  }
  return Status::Ok();
}

}  // namespace difftree::cpu
