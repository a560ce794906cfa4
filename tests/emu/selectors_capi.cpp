// C entry points over the emulated selector launchers (tools/cuda_emu): ddtree_select,
// caddtree_select, taps_select, d2sd_boundaries, d2sd_select. Tensors arrive as EmuTensor
// (host memory marked as CUDA: the launchers only read raw pointers). Built by
// tests/emu/conftest.py with each transformed cuda/*.cu as its own translation unit.
#include <cstdint>
#include <string>

#include "cuda_runtime.h"
#include "difftree/tensor.h"
#include "launchers_emu.h"

using namespace difftree;

extern "C" {
struct EmuTensor {
  void* data;
  int32_t code;  // 64 int64, 32 int32, 1 float32, 8 uint8
  int32_t ndim;
  int64_t shape[4];
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
    default:
      return DType::kUInt8;
  }
}

TensorView view(const EmuTensor& t) {
  TensorView v;
  v.data = t.data;
  v.dtype = dtype_of(t.code);
  v.device = DeviceType::kCUDA;
  v.ndim = t.ndim;
  int64_t stride = 1;
  for (int d = t.ndim - 1; d >= 0; --d) {
    v.shape[d] = t.shape[d];
    v.strides[d] = stride;
    stride *= t.shape[d];
  }
  return v;
}

TreeView tree_view(const EmuTensor* t) {
  return TreeView{view(t[0]), view(t[1]), view(t[2]), view(t[3]),
                  view(t[4]), view(t[5]), view(t[6]), view(t[7])};
}

int report(const Status& s) {
  const std::string emu_error = emu::take_error();
  if (!emu_error.empty()) {
    last_error = emu_error;
    return 2;
  }
  if (s.ok()) return 0;
  last_error = s.message();
  return 1;
}
}  // namespace

extern "C" {
const char* emu_sel_last_error() { return last_error.c_str(); }

size_t emu_ddtree_workspace(int64_t B, int64_t L, int64_t K, int64_t budget) {
  return cuda_emu::ddtree_select_workspace_bytes(B, L, K, budget);
}
size_t emu_taps_workspace(int64_t B, int64_t P1, int64_t budget) {
  return cuda_emu::taps_select_workspace_bytes(B, P1, budget);
}
size_t emu_d2sd_workspace(int64_t B, int64_t L1, int64_t K, int64_t L2, int64_t budget) {
  return cuda_emu::d2sd_select_workspace_bytes(B, L1, K, L2, budget);
}

int emu_ddtree_select(const EmuTensor* tok, const EmuTensor* lp, int64_t budget,
                      const EmuTensor* root, const EmuTensor* tree, void* ws, size_t ws_bytes) {
  const TensorView r = root ? view(*root) : TensorView{};
  return report(cuda_emu::ddtree_select(view(*tok), view(*lp), budget, root ? &r : nullptr,
                                        tree_view(tree), ws, ws_bytes, nullptr));
}

int emu_caddtree_select(const EmuTensor* tok, const EmuTensor* lp, int64_t max_budget,
                        const EmuTensor* root, const EmuTensor* verify, const EmuTensor* draft,
                        const EmuTensor* tree, void* ws, size_t ws_bytes) {
  const TensorView r = root ? view(*root) : TensorView{};
  return report(cuda_emu::caddtree_select(view(*tok), view(*lp), max_budget, root ? &r : nullptr,
                                          view(*verify), view(*draft), tree_view(tree), ws,
                                          ws_bytes, nullptr));
}

int emu_taps_select(const EmuTensor* token, const EmuTensor* parent, const EmuTensor* size,
                    const EmuTensor* log_qc, int64_t budget, const EmuTensor* tree, void* ws,
                    size_t ws_bytes) {
  return report(cuda_emu::taps_select(view(*token), view(*parent), view(*size), view(*log_qc),
                                      budget, tree_view(tree), ws, ws_bytes, nullptr));
}

int emu_d2sd_boundaries(const EmuTensor* trunk_logprob, const EmuTensor* boundary) {
  return report(cuda_emu::d2sd_boundaries(view(*trunk_logprob), view(*boundary), nullptr));
}

int emu_d2sd_select(const EmuTensor* trunk_token, const EmuTensor* trunk_logprob,
                    const EmuTensor* boundary, const EmuTensor* branch_token,
                    const EmuTensor* branch_logprob, int64_t budget, const EmuTensor* root,
                    const EmuTensor* tree, void* ws, size_t ws_bytes) {
  const TensorView r = root ? view(*root) : TensorView{};
  return report(cuda_emu::d2sd_select(view(*trunk_token), view(*trunk_logprob), view(*boundary),
                                      view(*branch_token), view(*branch_logprob), budget,
                                      root ? &r : nullptr, tree_view(tree), ws, ws_bytes,
                                      nullptr));
}
}
