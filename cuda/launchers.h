// CUDA launchers, called by the dispatch layer for CUDA tensors after validation.
// Raw views + stream in, Status out; they never allocate, synchronise or copy to the host.
// Data-dependent problems (malformed indices) are clamped/skipped on the device rather than
// reported, because reporting would need a host sync; the CPU path is the checked oracle.
#pragma once

#include "difftree/ops.h"

namespace difftree::cuda {

Status tree_walk(const TreeView& tree, const TensorView& node_choice,
                 const TensorView* stop_tokens, const TensorView* remaining,
                 const WalkOutputs& out, Stream stream);
Status kv_commit(const TensorView* caches, int num_caches, const TensorView& base_len,
                 const TensorView& path, const TensorView& accepted, Stream stream);

Status topk_logprobs(const TensorView& logits, int64_t k, const TensorView& token,
                     const TensorView& logprob, const TensorView* row_error, Stream stream);
size_t ddtree_select_workspace_bytes(int64_t B, int64_t L, int64_t K, int64_t budget);
Status ddtree_select(const TensorView& cand_token, const TensorView& cand_logprob, int64_t budget,
                     const TensorView* root_token, const TreeView& tree, void* workspace,
                     size_t workspace_bytes, Stream stream);
Status node_select(const TensorView& logits, const SamplingViews& params, const TensorView& out,
                   Stream stream);

}  // namespace difftree::cuda
