// Argument checks shared by the dispatch layer. Every message names the argument and what was
// expected, because it reaches the user verbatim as a ValueError / TypeError.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>

#include "difftree/status.h"
#include "difftree/tensor.h"

namespace difftree::checks {

// The descriptor itself, before anything reads its shape: ndim in [0, kMaxDims], no negative
// extent, an element and byte count (every extent counted as at least 1) and a strided byte span
// that fit in int64. ndim, shape and tensor (so every op's first look at an argument) run it.
Status descriptor(const TensorView& t, const char* name);

// An expected extent of `shape` that matches any extent (every other value must match exactly).
constexpr int64_t kAnyDim = INT64_MIN;

// ndim, then each dim; `layout` names the dims, e.g. "[B, L, V]".
Status shape(const TensorView& t, const char* name, std::initializer_list<int64_t> expected,
             const char* layout);
Status ndim(const TensorView& t, const char* name, int expected, const char* layout);
Status dtype(const TensorView& t, const char* name, std::initializer_list<DType> allowed);
Status contiguous(const TensorView& t, const char* name);
Status data_present(const TensorView& t, const char* name);
// Same device (type and index) as the reference argument.
Status same_device(const TensorView& t, const char* name, const TensorView& ref,
                   const char* ref_name);
Status in_range(int64_t value, const char* name, int64_t lo, int64_t hi);

// The common case: the descriptor, dtype, device, contiguity, non-null data.
Status tensor(const TensorView& t, const char* name, std::initializer_list<DType> allowed,
              const TensorView& device_ref, const char* device_ref_name);

// Reads element i of an int32/int64 tensor on the CPU.
inline int64_t load_index(const TensorView& t, int64_t i) {
  return t.dtype == DType::kInt64 ? t.ptr<const int64_t>()[i]
                                  : static_cast<int64_t>(t.ptr<const int32_t>()[i]);
}

}  // namespace difftree::checks
