// Validation of a candidate lattice shared by the selectors that read one (DDTree, CaDDTree,
// PRESTO): finite log-probs <= 0, non-increasing along K, distinct token ids in [0, 2^31).
#pragma once

#include <cstdint>
#include <vector>

#include "difftree/ops.h"

namespace difftree::cpu {

// Open-addressing set of token ids for the per-depth distinctness check: O(K) per depth, where
// sorting a copy was the dominant cost of a 1024-node selection.
class TokenSet {
 public:
  void reset(int64_t capacity);
  // Returns false if `tok` (>= 0) was already present.
  bool insert(int64_t tok);

 private:
  std::vector<int64_t> slots_;
  size_t mask_ = 0;
};

// Checks request b's candidates (cand_token [B, L, K] int32/int64, lp = cand_logprob data).
Status check_candidates(const TensorView& cand_token, const float* lp, int64_t b, int64_t L,
                        int64_t K, TokenSet& seen);

}  // namespace difftree::cpu
