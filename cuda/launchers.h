// CUDA launchers, called by the dispatch layer for CUDA tensors after validation.
// Raw views + stream in, Status out; they never allocate, synchronise or copy to the host.
// Data-dependent problems (malformed indices) are clamped/skipped on the device rather than
// reported, because reporting would need a host sync; the CPU path is the checked oracle.
#pragma once

#include "difftree/ops.h"
#include "scratch_layouts.h"  // the selectors' *_workspace_bytes

namespace difftree::cuda {

Status tree_walk(const TreeView& tree, const TensorView& node_choice, const TensorView* stop_tokens,
                 const TensorView* remaining, const WalkOutputs& out, Stream stream);
// ring: row r of every cache lives in slot r % S.
Status kv_commit(const TensorView* caches, int num_caches, const TensorView& base_len,
                 const TensorView& path, const TensorView& accepted, bool ring, Stream stream);

Status topk_logprobs(const TensorView& logits, int64_t k, const TensorView& token,
                     const TensorView& logprob, const TensorView* row_error, Stream stream);
// Split-row path (num_splits > 1): each row's V over num_splits CTAs, then a per-row merge; needs
// a 16-byte aligned workspace of topk_logprobs_workspace_bytes(B, L, V, k, num_splits) bytes.
Status topk_logprobs(const TensorView& logits, int64_t k, const TensorView& token,
                     const TensorView& logprob, const TensorView* row_error, int num_splits,
                     void* workspace, Stream stream);
Status ddtree_select(const TensorView& cand_token, const TensorView& cand_logprob, int64_t budget,
                     const TensorView* root_token, const TreeView& tree, void* workspace,
                     size_t workspace_bytes, Stream stream);
Status node_select(const TensorView& logits, const SamplingViews& params, const TensorView& out,
                   Stream stream);

// Policy selectors (cpu/caddtree.cpp, cpu/taps.cpp on the device, bit-identical). caddtree_select
// takes the ddtree_select workspace; taps_select a workspace of taps_select_workspace_bytes.
Status caddtree_select(const TensorView& cand_token, const TensorView& cand_logprob,
                       int64_t max_budget, const TensorView* root_token,
                       const TensorView& verify_cost, const TensorView& draft_cost,
                       const TreeView& tree, void* workspace, size_t workspace_bytes,
                       Stream stream);
Status taps_select(const TensorView& pool_token, const TensorView& pool_parent,
                   const TensorView& pool_size, const TensorView& log_qc, int64_t budget,
                   const TreeView& tree, void* workspace, size_t workspace_bytes, Stream stream);
// D²SD (cpu/d2sd.cpp on the device): boundaries need L <= 4096, select a pool of at most 65536
// trie rows (1 + L1 + K * L2) and a workspace of d2sd_select_workspace_bytes when that is > 0.
Status d2sd_boundaries(const TensorView& trunk_logprob, const TensorView& boundary, Stream stream);
Status d2sd_select(const TensorView& trunk_token, const TensorView& trunk_logprob,
                   const TensorView& boundary, const TensorView& branch_token,
                   const TensorView& branch_logprob, int64_t budget, const TensorView* root_token,
                   const TreeView& tree, void* workspace, size_t workspace_bytes, Stream stream);

// PRESTO (cpu/presto.cpp on the device; common/ngram_key.h shared): ngram_extend with one CTA per
// request (atomic inserts, so slot positions may differ from the CPU's, counts do not); a full
// table drops the insert and sets overflow[b] (when given). presto_select: one CTA per request,
// the same tree as the CPU op; workspace of presto_select_workspace_bytes bytes when > 0.
Status ngram_extend(const TensorView& keys, const TensorView& counts, const TensorView& history,
                    const TensorView& tokens, const TensorView& num_tokens, int64_t order,
                    const TensorView* overflow, Stream stream);
Status presto_select(const TensorView& cand_token, const TensorView& cand_logprob, int64_t budget,
                     const TensorView* root_token, const TensorView& context,
                     const TensorView& keys, const TensorView& counts, const PrestoParams& params,
                     const TreeView& tree, void* workspace, size_t workspace_bytes, Stream stream);

// tree_attention: bf16/fp16, head dims (D_k, D_v) in {(64, 64), (128, 128), (192, 128)}, every
// AttentionVariant (window by position, sinks, ring caches); num_splits >= 1 resolved by the
// dispatch, with a workspace of tree_attention_workspace_bytes(...) (D = D_v) when num_splits > 1.
Status tree_attention(const TensorView& q, const TensorView& k_cache, const TensorView& v_cache,
                      const TensorView& prefix_len, const TensorView* tree_anc,
                      const TensorView* num_nodes, float scale, bool is_chain,
                      const AttentionVariant& variant, int num_splits,
                      const TensorView& out, void* workspace, Stream stream);

// Gated-DeltaNet tree ops (reference/gated_delta.py; cpu/gated_delta.cpp is the checked oracle).
// x / conv_tail / weight / bias / out share one float dtype; q / k / v / out one float dtype; g,
// beta, state, k_hat, delta, gcum are fp32; src int32; path / accepted int32 or int64; active
// bool. tree_anc == nullptr: causal rows. The commits run in place (read before write).
Status gdn_conv(const TensorView& x, const TensorView& conv_tail, const TensorView& weight,
                const TensorView* bias, const TensorView& src, bool activation,
                const TensorView& out, Stream stream);
Status gdn_conv_commit(const TensorView& conv_tail, const TensorView& x, const TensorView& src,
                       const TensorView& path, const TensorView& accepted,
                       const TensorView* active, Stream stream);
Status gdn_verify(const TensorView& q, const TensorView& k, const TensorView& v,
                  const TensorView& g, const TensorView& beta, const TensorView& state,
                  const TensorView* tree_anc, const TensorView& out, const TensorView& k_hat,
                  const TensorView& delta, const TensorView& gcum, Stream stream);
Status gdn_commit(const TensorView& state, const TensorView& k_hat, const TensorView& delta,
                  const TensorView& gcum, const TensorView& path, const TensorView& accepted,
                  const TensorView* active, Stream stream);

}  // namespace difftree::cuda
