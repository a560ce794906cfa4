// The two steps every dispatching op shares once its arguments are validated: routing to the CUDA
// launcher or the CPU implementation, and checking a caller-provided CUDA scratch buffer.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "difftree/status.h"
#include "difftree/tensor.h"
#include "dispatch/checks.h"

namespace difftree::dispatch {

#ifdef DIFFTREE_WITH_CUDA
inline constexpr bool kCudaBuilt = true;
#else
inline constexpr bool kCudaBuilt = false;
#endif

inline Status cuda_not_compiled(const char* op) {
  return Unsupported(std::string(op) +
                     ": got CUDA tensors but this build of difftree_rt has no CUDA kernels "
                     "(rebuild with DIFFTREE_CUDA=ON, see difftree_rt.build_info())");
}

// `on_cuda()` for CUDA tensors (the device of `ref`), `on_cpu()` otherwise. An empty batch
// (`empty`) returns before the CPU implementation: there is nothing to write, and its scratch is
// sized by extents no memory backs. Without CUDA kernels, `on_cuda` is compiled (so both paths
// are type-checked in every build) but never instantiated, so no launcher symbol is needed.
template <class OnCuda, class OnCpu>
Status route(const char* op, const TensorView& ref, bool empty, OnCuda&& on_cuda, OnCpu&& on_cpu) {
  if (ref.device == DeviceType::kCUDA) {
    if constexpr (kCudaBuilt) {
      return on_cuda();
    } else {
      (void)on_cuda;
      return cuda_not_compiled(op);
    }
  }
  if (empty) return Status::Ok();
  return on_cpu();
}

// What a CUDA op asks of its scratch buffer, for the messages: "the CUDA <op>[ with <splits>
// splits] needs a workspace of <n> bytes (see <size_fn>)".
struct WorkspaceSpec {
  const char* op;
  const char* size_fn;
  int64_t splits = 0;      // > 0: named in the message (split-count dependent sizes)
  bool aligned16 = false;  // the kernel reads the buffer with 16-byte vector loads
};

// A caller-provided CUDA scratch buffer of at least `need` bytes: a 1-D uint8 tensor on ref's
// device. Sets *data to its data, or to nullptr when nothing is needed (need == 0).
inline Status checked_workspace(const TensorView* workspace, size_t need, const TensorView& ref,
                                const char* ref_name, const WorkspaceSpec& spec, void** data) {
  *data = nullptr;
  if (need == 0) return Status::Ok();
  if (workspace == nullptr) {
    std::string what = spec.op;
    if (spec.splits > 0) what += " with " + std::to_string(spec.splits) + " splits";
    return InvalidValue("workspace: the CUDA " + what + " needs a workspace of " +
                        std::to_string(need) + " bytes (see " + spec.size_fn + ")");
  }
  DIFFTREE_RETURN_IF_ERROR(checks::ndim(*workspace, "workspace", 1, "[bytes]"));
  DIFFTREE_RETURN_IF_ERROR(checks::tensor(*workspace, "workspace", {DType::kUInt8}, ref, ref_name));
  if (static_cast<size_t>(workspace->shape[0]) < need)
    return InvalidValue("workspace: expected at least " + std::to_string(need) + " bytes, got " +
                        std::to_string(workspace->shape[0]));
  if (spec.aligned16 && reinterpret_cast<uintptr_t>(workspace->data) % 16 != 0)
    return InvalidValue("workspace: expected a 16-byte aligned buffer");
  *data = workspace->data;
  return Status::Ok();
}

}  // namespace difftree::dispatch
