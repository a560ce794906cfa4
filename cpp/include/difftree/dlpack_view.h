// DLTensor -> TensorView, the one conversion every foreign entry point (pybind11, C ABI) uses.
#pragma once

#include "difftree/dlpack.h"
#include "difftree/status.h"
#include "difftree/tensor.h"

namespace difftree {

// Fails (with `name` in the message) on more than kMaxDims dims or vector lanes; unknown dtypes
// and devices map to kOther so the ops report them with the argument's name.
Status view_from_dlpack(const DLTensor& t, const char* name, TensorView* out);

}  // namespace difftree
