// CPU implementations: the fallback and the oracle the CUDA kernels are tested against.
// Called by the dispatch layer after argument validation; they check only data-dependent
// conditions (NaN logits, malformed trees, out-of-range indices) and report them as Status.
#pragma once

#include "difftree/ops.h"

namespace difftree::cpu {

Status topk_logprobs(const TensorView& logits, int64_t k, const TensorView& token,
                     const TensorView& logprob);
Status ddtree_select(const TensorView& cand_token, const TensorView& cand_logprob, int64_t budget,
                     const TensorView* root_token, const TreeView& tree);
Status tree_walk(const TreeView& tree, const TensorView& node_choice,
                 const TensorView* stop_tokens, const TensorView* remaining,
                 const WalkOutputs& out);
// ring: row r of every cache lives in slot r % S.
Status kv_commit(const TensorView* caches, int num_caches, const TensorView& base_len,
                 const TensorView& path, const TensorView& accepted, bool ring);
Status tree_attention(const TensorView& q, const TensorView& k_cache, const TensorView& v_cache,
                      const TensorView& prefix_len, const TensorView* tree_anc,
                      const TensorView* num_nodes, float scale, bool is_chain,
                      const AttentionVariant& variant, const TensorView& out);
// Gated-DeltaNet tree ops (ops.h); src / path / accepted values are checked here.
Status gdn_conv(const TensorView& x, const TensorView& conv_tail, const TensorView& weight,
                const TensorView* bias, const TensorView& src, bool activation,
                const TensorView& out);
Status gdn_conv_commit(const TensorView& conv_tail, const TensorView& x, const TensorView& src,
                       const TensorView& path, const TensorView& accepted,
                       const TensorView* active);
Status gdn_verify(const TensorView& q, const TensorView& k, const TensorView& v,
                  const TensorView& g, const TensorView& beta, const TensorView& state,
                  const TensorView* tree_anc, const TensorView& out, const TensorView& k_hat,
                  const TensorView& delta, const TensorView& gcum);
Status gdn_commit(const TensorView& state, const TensorView& k_hat, const TensorView& delta,
                  const TensorView& gcum, const TensorView& path, const TensorView& accepted,
                  const TensorView* active);

// Fills first_child, next_sibling and anc of request b from parent[b, :num_nodes[b]], and the
// padding rows of every array. Shared by all selectors so the derived arrays have one definition.
void finalize_tree(const TreeView& tree, int64_t b);

}  // namespace difftree::cpu
