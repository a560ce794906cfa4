// C entry point over the emulated tree_attention launcher (cuda/tree_attention.cu through
// tools/cuda_emu, its tensor-core tile math through tools/cuda_emu/mma.cuh). Built by
// tests/emu/test_emu_tree_attention.py as its own library (the other kernels' library,
// tests/emu/conftest.py, does not carry the attention kernel's ~24 instantiations). Tensors
// arrive as StridedTensor (host memory marked as CUDA, with strides: the launcher reads raw
// pointers and strides only).
#include <cstdint>
#include <string>

#include "cuda_runtime.h"
#include "difftree/tensor.h"
#include "launchers_emu.h"

using namespace difftree;

extern "C" {
struct StridedTensor {
  void* data;
  int32_t code;  // 64 int64, 32 int32, 1 float32, 16 float16, 17 bfloat16
  int32_t ndim;
  int64_t shape[4];
  int64_t strides[4];  // elements
};
}

namespace {
thread_local std::string last_error;

DType dtype_of(int code) {
  switch (code) {
    case 64:
      return DType::kInt64;
    case 32:
      return DType::kInt32;
    case 1:
      return DType::kFloat32;
    case 16:
      return DType::kFloat16;
    default:
      return DType::kBFloat16;
  }
}

TensorView view(const StridedTensor& t) {
  TensorView v;
  v.data = t.data;
  v.dtype = dtype_of(t.code);
  v.device = DeviceType::kCUDA;
  v.ndim = t.ndim;
  for (int d = 0; d < t.ndim; ++d) {
    v.shape[d] = t.shape[d];
    v.strides[d] = t.strides[d];
  }
  return v;
}
}  // namespace

extern "C" {
const char* emu_attn_last_error() { return last_error.c_str(); }

void emu_attn_config(int schedule) { emu::schedule = schedule; }

// Optional tensors are NULL. Returns 0 (ok), 1 (a Status error) or 2 (an emulator failure, such
// as a barrier some threads skip); the message is emu_attn_last_error().
int emu_tree_attention(const StridedTensor* q, const StridedTensor* k, const StridedTensor* v,
                       const StridedTensor* prefix_len, const StridedTensor* anc,
                       const StridedTensor* num_nodes, float scale, int is_chain,
                       const StridedTensor* depth, const StridedTensor* sinks, int64_t window,
                       int ring, int num_splits, const StridedTensor* out, void* workspace) {
  const TensorView a = anc ? view(*anc) : TensorView{};
  const TensorView n = num_nodes ? view(*num_nodes) : TensorView{};
  const TensorView d = depth ? view(*depth) : TensorView{};
  const TensorView s = sinks ? view(*sinks) : TensorView{};
  AttentionVariant variant;
  variant.depth = depth ? &d : nullptr;
  variant.sinks = sinks ? &s : nullptr;
  variant.window = window;
  variant.ring = ring != 0;
  const Status st = cuda_emu::tree_attention(view(*q), view(*k), view(*v), view(*prefix_len),
                                             anc ? &a : nullptr, num_nodes ? &n : nullptr, scale,
                                             is_chain != 0, variant, num_splits, view(*out),
                                             workspace, nullptr);
  const std::string emu_error = emu::take_error();
  if (!emu_error.empty()) {
    last_error = emu_error;
    return 2;
  }
  if (st.ok()) return 0;
  last_error = st.message();
  return 1;
}
}
