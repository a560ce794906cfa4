// DLTensor -> TensorView, the one conversion every foreign entry point (pybind11, C ABI) uses.
#pragma once

#include "difftree/dlpack.h"
#include "difftree/status.h"
#include "difftree/tensor.h"

namespace difftree {

// Fails (with `name` in the message) on ndim outside [0, kMaxDims], a NULL shape or a byte_offset
// that wraps the address space; vector lanes, unknown dtypes and devices map to kOther so the ops
// report them with the argument's name, as they report negative or overflowing extents.
Status view_from_dlpack(const DLTensor& t, const char* name, TensorView* out);

}  // namespace difftree
