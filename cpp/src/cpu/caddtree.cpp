// CaDDTree (ALGORITHMS.md §5): the DDTree order, cut at the size that maximises the estimated
// throughput θ(n) = (1 + Φ(n)) / (C_d + C_v(n)), Φ(n) = Σ_{j<=n} exp(score_j).
//
// The selection itself is the DDTree heap at the maximum budget (one tested selector); the cut
// only changes num_nodes and re-derives links, anc and padding, so capacity stays max_budget + 1.
// Arithmetic is in double, one operation per statement, in the order the Python reference uses,
// so both pick the same n bit for bit (exp/log come from the same libm).
#include <cmath>
#include <sstream>

#include "cpu/cpu_ops.h"
#include "cpu/policy_ops.h"

namespace difftree::cpu {

int32_t caddtree_size(const float* score, int32_t num_nodes, const float* verify_cost,
                      float draft_cost) {
  const double cd = static_cast<double>(draft_cost);
  double phi = 0.0;
  double best = 1.0 / (cd + static_cast<double>(verify_cost[0]));
  int32_t n = 0;
  // With C_v nondecreasing convex and exp(score) nonincreasing θ is unimodal, so the first
  // non-improvement is the global optimum; for any other input this is still well defined.
  while (n + 1 < num_nodes) {
    const double delta = std::exp(static_cast<double>(score[n + 1]));
    const double next_phi = phi + delta;
    const double num = 1.0 + next_phi;
    const double den = cd + static_cast<double>(verify_cost[n + 1]);
    const double theta = num / den;
    if (!(theta > best)) break;
    phi = next_phi;
    best = theta;
    ++n;
  }
  return n;
}

Status caddtree_select(const TensorView& cand_token, const TensorView& cand_logprob,
                       int64_t max_budget, const TensorView* root_token,
                       const TensorView& verify_cost, const TensorView& draft_cost,
                       const TreeView& tree) {
  const int64_t B = cand_logprob.shape[0];
  const int64_t N = max_budget + 1;
  const float* cv = verify_cost.ptr<const float>();
  const float* cd = draft_cost.ptr<const float>();
  // Costs first: a bad table must not leave a half-written tree that looks valid.
  for (int64_t b = 0; b < B; ++b) {
    if (!std::isfinite(cd[b]) || cd[b] < 0.0f) {
      std::ostringstream os;
      os << "draft_cost: expected finite costs >= 0, found " << cd[b] << " at [" << b << "]";
      return InvalidValue(os.str());
    }
    for (int64_t n = 0; n < N; ++n) {
      const float v = cv[b * N + n];
      if (!std::isfinite(v) || v < 0.0f || !(static_cast<double>(v) + cd[b] > 0.0)) {
        std::ostringstream os;
        os << "verify_cost: expected finite costs >= 0 with draft_cost + verify_cost > 0, "
           << "found " << v << " at [" << b << ", " << n << "]";
        return InvalidValue(os.str());
      }
    }
  }
  DIFFTREE_RETURN_IF_ERROR(ddtree_select(cand_token, cand_logprob, max_budget, root_token, tree));
  int32_t* num_nodes = tree.num_nodes.ptr<int32_t>();
  const float* score = tree.score.ptr<const float>();
  for (int64_t b = 0; b < B; ++b) {
    const int32_t n = caddtree_size(score + b * N, num_nodes[b], cv + b * N, cd[b]);
    if (n + 1 != num_nodes[b]) {
      num_nodes[b] = n + 1;
      finalize_tree(tree, b);  // links of the kept prefix, padding after it
    }
  }
  return Status::Ok();
}

}  // namespace difftree::cpu
