// C entry points over the emulated PRESTO launchers (tools/cuda_emu), for tests/emu via ctypes.
// Built by tests/emu/conftest.py together with the transformed cuda/presto.cu.
#include "cuda_runtime.h"
#include "difftree/tensor.h"
#include "presto.cu.cpp"

using namespace difftree;

namespace {
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
// Views over host memory marked as CUDA: the launchers only read raw pointers.
TensorView view(void* p, int code, std::initializer_list<int64_t> shape) {
  return make_view(p, dtype_of(code), shape, DeviceType::kCUDA);
}
thread_local std::string last_error;

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
const char* emu_last_error() { return last_error.c_str(); }

void emu_config(int threads, int schedule) {
  emu::threads_override = threads;
  emu::schedule = schedule;
}

size_t emu_presto_workspace(int64_t B, int64_t L, int64_t K, int64_t budget, int64_t order) {
  return cuda_emu::presto_select_workspace_bytes(B, L, K, budget, order);
}

int emu_presto_select(void* tok, int tok_code, void* lp, int64_t B, int64_t L, int64_t K,
                      int64_t budget, void* root, int root_code, void* ctx, int ctx_code,
                      void* keys, void* counts, int keys_ndim, int64_t H, int64_t order,
                      double alpha, double lam, int64_t vocab, void* const* tree, void* ws,
                      size_t ws_bytes) {
  const int64_t N = budget + 1, W = (N + 31) / 32;
  const TensorView root_view = view(root, root_code, {B});
  const TreeView out{view(tree[0], 32, {B, N}),    view(tree[1], 32, {B, N}),
                     view(tree[2], 32, {B, N}),    view(tree[3], 1, {B, N}),
                     view(tree[4], 32, {B, N}),    view(tree[5], 32, {B, N}),
                     view(tree[6], 32, {B, N, W}), view(tree[7], 32, {B})};
  PrestoParams params;
  params.order = order;
  params.alpha = alpha;
  params.lam = lam;
  params.vocab = vocab;
  const TensorView k = keys_ndim == 2 ? view(keys, 64, {B, H}) : view(keys, 64, {H});
  const TensorView c = keys_ndim == 2 ? view(counts, 32, {B, H}) : view(counts, 32, {H});
  return report(cuda_emu::presto_select(view(tok, tok_code, {B, L, K}), view(lp, 1, {B, L, K}),
                                        budget, root != nullptr ? &root_view : nullptr,
                                        view(ctx, ctx_code, {B, order - 1}), k, c, params, out, ws,
                                        ws_bytes, nullptr));
}

int emu_ngram_extend(void* keys, void* counts, int64_t B, int64_t H, void* history, int64_t order,
                     void* tokens, int tok_code, int64_t T, void* num, int num_code,
                     void* overflow) {
  const TensorView of = view(overflow, 32, {B});
  return report(cuda_emu::ngram_extend(view(keys, 64, {B, H}), view(counts, 32, {B, H}),
                                       view(history, 64, {B, order - 1}),
                                       view(tokens, tok_code, {B, T}), view(num, num_code, {B}),
                                       order, overflow != nullptr ? &of : nullptr, nullptr));
}
}
