// CPU implementations of the policy selectors beyond DDTree (CaDDTree, PRESTO) and the n-gram
// count table PRESTO reads. Called by the dispatch layer after argument validation.
#pragma once

#include "difftree/ops.h"

namespace difftree::cpu {

// Draft nodes (root excluded) CaDDTree keeps of a best-first tree with `num_nodes` valid rows:
// the first n at which admitting node n + 1 does not raise θ (ALGORITHMS.md §5).
int32_t caddtree_size(const float* score, int32_t num_nodes, const float* verify_cost,
                      float draft_cost);

Status caddtree_select(const TensorView& cand_token, const TensorView& cand_logprob,
                       int64_t max_budget, const TensorView* root_token,
                       const TensorView& verify_cost, const TensorView& draft_cost,
                       const TreeView& tree);

Status ngram_update(const TensorView& keys, const TensorView& counts, const TensorView& tokens,
                    int64_t start, int64_t order, int64_t* new_keys);

// Validated by the dispatch layer except the token values; fails (InvalidValue) on a bad token or a
// full table (that request's table is then partially updated).
Status ngram_extend(const TensorView& keys, const TensorView& counts, const TensorView& history,
                    const TensorView& tokens, const TensorView& num_tokens, int64_t order);

Status presto_select(const TensorView& cand_token, const TensorView& cand_logprob, int64_t budget,
                     const TensorView* root_token, const TensorView& context,
                     const TensorView& keys, const TensorView& counts, const PrestoParams& params,
                     const TreeView& tree);

Status taps_select(const TensorView& pool_token, const TensorView& pool_parent,
                   const TensorView& pool_size, const TensorView& log_qc, int64_t budget,
                   const TreeView& tree);

Status d2sd_boundaries(const TensorView& trunk_logprob, const TensorView& boundary);

Status d2sd_select(const TensorView& trunk_token, const TensorView& trunk_logprob,
                   const TensorView& boundary, const TensorView& branch_token,
                   const TensorView& branch_logprob, const TensorView* root_token,
                   const TreeView& tree);

}  // namespace difftree::cpu
