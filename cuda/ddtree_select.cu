#include <cuda_runtime.h>

#include "launchers.h"

namespace difftree::cuda {
size_t ddtree_select_workspace_bytes(int64_t, int64_t, int64_t, int64_t) { return 0; }
Status ddtree_select(const TensorView&, const TensorView&, int64_t, const TensorView*,
                     const TreeView&, void*, size_t, Stream) {
  return Unsupported("ddtree_select: CUDA kernel in progress");
}
}  // namespace difftree::cuda
