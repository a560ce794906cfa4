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

}  // namespace difftree::cuda
