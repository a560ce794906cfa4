// Device helpers shared by the kernels.
#pragma once

#include <cstdint>

namespace difftree::cuda {

// Index tensors may be int32 or int64; kernels read them through this to avoid a template
// instantiation per combination.
__device__ __forceinline__ int64_t load_index(const void* p, bool is64, int64_t i) {
  return is64 ? static_cast<const int64_t*>(p)[i] : static_cast<int64_t>(static_cast<const int32_t*>(p)[i]);
}

}  // namespace difftree::cuda
