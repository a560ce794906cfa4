// Host side of the selectors launched one CTA per request with per-request scratch
// (ddtree_select, taps_select, d2sd_select): the scratch lives in dynamic shared memory when it
// fits, else in B slices of a caller-provided global workspace (sized by the ops'
// *_workspace_bytes functions of scratch_layouts.h, pure arithmetic so graph capture can size it
// ahead).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "difftree/status.h"
#include "scratch_layouts.h"

namespace difftree::cuda {

// Chooses where the scratch goes: *smem = per_request (and *global untouched) when it fits in
// shared memory, else *smem = 0 and *global = the workspace after checking its size; opts
// `kernel` in to more than 48 KiB of dynamic shared memory when needed.
template <typename Kernel>
Status place_block_scratch(Kernel kernel, const char* op, int64_t B, size_t per_request,
                           void* workspace, size_t workspace_bytes, unsigned char** global,
                           size_t* smem) {
  *smem = 0;
  if (per_request <= kMaxScratchSmemBytes) {
    *smem = per_request;
  } else {
    if (workspace == nullptr || workspace_bytes < static_cast<size_t>(B) * per_request)
      return InvalidValue(std::string("workspace: too small for ") + op);
    *global = static_cast<unsigned char*>(workspace);
  }
  if (*smem > 48 * 1024) {
    const cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                               static_cast<int>(*smem));
    if (e != cudaSuccess) return Internal(std::string(op) + ": " + cudaGetErrorString(e));
  }
  return Status::Ok();
}

// The status of the last launch, named after `op`.
inline Status launch_status(const char* op) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return Internal(std::string(op) + ": " + cudaGetErrorString(err));
  return Status::Ok();
}

}  // namespace difftree::cuda
