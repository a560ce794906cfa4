// C entry points over the emulated launchers (tools/cuda_emu): ddtree_select, caddtree_select,
// taps_select, d2sd_boundaries, d2sd_select, topk_logprobs, node_select, tree_walk, kv_commit,
// ngram_extend, presto_select and the gdn_* ops. Tensors arrive as
// EmuTensor (host memory marked as CUDA: the launchers only read raw pointers). Built by
// tests/emu/conftest.py with each transformed cuda/*.cu as its own translation unit.
#include <cstdint>
#include <string>
#include <vector>

#include "cuda_runtime.h"
#include "difftree/tensor.h"
#include "launchers_emu.h"

using namespace difftree;

extern "C" {
struct EmuTensor {
  void* data;
  int32_t code;  // 64 int64, 32 int32, 1 float32, 16 float16, 17 bfloat16, 2 bool, 8 uint8
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
    case 16:
      return DType::kFloat16;
    case 17:
      return DType::kBFloat16;
    case 2:
      return DType::kBool;
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
const char* emu_last_error() { return last_error.c_str(); }

// The block size of every launch (0: the kernel's) and the thread order between barriers
// (0 forward, 1 reverse, 2 random).
void emu_config(int threads, int schedule) {
  emu::threads_override = threads;
  emu::schedule = schedule;
}

size_t emu_ddtree_workspace(int64_t B, int64_t L, int64_t K, int64_t budget) {
  return cuda::ddtree_select_workspace_bytes(B, L, K, budget);
}
size_t emu_taps_workspace(int64_t B, int64_t P1, int64_t budget) {
  return cuda::taps_select_workspace_bytes(B, P1, budget);
}
size_t emu_d2sd_workspace(int64_t B, int64_t L1, int64_t K, int64_t L2, int64_t budget) {
  return cuda::d2sd_select_workspace_bytes(B, L1, K, L2, budget);
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
                                      root ? &r : nullptr, tree_view(tree), ws, ws_bytes, nullptr));
}
}

// ---- topk_logprobs, tree_walk, kv_commit
// ---------------------------------------------------------
extern "C" {
// num_splits 1: one CTA per row; > 1: the split-row path with a workspace of ws_bytes (16-byte
// aligned; the size from difftree_rt's topk_logprobs_workspace_bytes).
int emu_topk_logprobs(const EmuTensor* logits, int64_t k, const EmuTensor* token,
                      const EmuTensor* logprob, const EmuTensor* row_error, int num_splits,
                      void* ws) {
  const TensorView err = row_error ? view(*row_error) : TensorView{};
  const TensorView* e = row_error ? &err : nullptr;
  if (num_splits <= 1)
    return report(
        cuda_emu::topk_logprobs(view(*logits), k, view(*token), view(*logprob), e, nullptr));
  return report(cuda_emu::topk_logprobs(view(*logits), k, view(*token), view(*logprob), e,
                                        num_splits, ws, nullptr));
}

int emu_tree_walk(const EmuTensor* tree, const EmuTensor* node_choice, const EmuTensor* stop,
                  const EmuTensor* remaining, const EmuTensor* out /* path, acc, next, done */) {
  const TensorView s = stop ? view(*stop) : TensorView{};
  const TensorView r = remaining ? view(*remaining) : TensorView{};
  const WalkOutputs o{view(out[0]), view(out[1]), view(out[2]), view(out[3])};
  return report(cuda_emu::tree_walk(tree_view(tree), view(*node_choice), stop ? &s : nullptr,
                                    remaining ? &r : nullptr, o, nullptr));
}

int emu_kv_commit(const EmuTensor* caches, int num_caches, const EmuTensor* base_len,
                  const EmuTensor* path, const EmuTensor* accepted, int ring) {
  std::vector<TensorView> views;
  for (int i = 0; i < num_caches; ++i) views.push_back(view(caches[i]));
  return report(cuda_emu::kv_commit(views.data(), num_caches, view(*base_len), view(*path),
                                    view(*accepted), ring != 0, nullptr));
}
}

// ---- node_select
// ---------------------------------------------------------------------------------
extern "C" {
// temperature, top_k, top_p, seed, round_idx: [B] tensors (any may be null: off / greedy).
int emu_node_select(const EmuTensor* logits, const EmuTensor* temperature, const EmuTensor* top_k,
                    const EmuTensor* top_p, const EmuTensor* seed, const EmuTensor* round_idx,
                    const EmuTensor* out) {
  const TensorView t = temperature ? view(*temperature) : TensorView{};
  const TensorView k = top_k ? view(*top_k) : TensorView{};
  const TensorView p = top_p ? view(*top_p) : TensorView{};
  const TensorView sd = seed ? view(*seed) : TensorView{};
  const TensorView r = round_idx ? view(*round_idx) : TensorView{};
  SamplingViews params;
  params.temperature = temperature ? &t : nullptr;
  params.top_k = top_k ? &k : nullptr;
  params.top_p = top_p ? &p : nullptr;
  params.seed = seed ? &sd : nullptr;
  params.round_idx = round_idx ? &r : nullptr;
  return report(cuda_emu::node_select(view(*logits), params, view(*out), nullptr));
}
}

// ---- PRESTO
// --------------------------------------------------------------------------------------
extern "C" {
size_t emu_presto_workspace(int64_t B, int64_t L, int64_t K, int64_t budget, int64_t order) {
  return cuda::presto_select_workspace_bytes(B, L, K, budget, order);
}

int emu_presto_select(const EmuTensor* tok, const EmuTensor* lp, int64_t budget,
                      const EmuTensor* root, const EmuTensor* context, const EmuTensor* keys,
                      const EmuTensor* counts, int64_t order, double alpha, double lam,
                      int64_t vocab, const EmuTensor* tree, void* ws, size_t ws_bytes) {
  const TensorView r = root ? view(*root) : TensorView{};
  PrestoParams params;
  params.order = order;
  params.alpha = alpha;
  params.lam = lam;
  params.vocab = vocab;
  return report(cuda_emu::presto_select(view(*tok), view(*lp), budget, root ? &r : nullptr,
                                        view(*context), view(*keys), view(*counts), params,
                                        tree_view(tree), ws, ws_bytes, nullptr));
}

int emu_ngram_extend(const EmuTensor* keys, const EmuTensor* counts, const EmuTensor* history,
                     const EmuTensor* tokens, const EmuTensor* num_tokens, int64_t order,
                     const EmuTensor* overflow) {
  const TensorView of = overflow ? view(*overflow) : TensorView{};
  return report(cuda_emu::ngram_extend(view(*keys), view(*counts), view(*history), view(*tokens),
                                       view(*num_tokens), order, overflow ? &of : nullptr,
                                       nullptr));
}
}

// ---- Gated-DeltaNet tree ops
// ---------------------------------------------------------------------
extern "C" {
// bias, active, tree_anc may be null (no bias / every request / causal rows).
int emu_gdn_conv(const EmuTensor* x, const EmuTensor* conv_tail, const EmuTensor* weight,
                 const EmuTensor* bias, const EmuTensor* src, int activation,
                 const EmuTensor* out) {
  const TensorView bv = bias ? view(*bias) : TensorView{};
  return report(cuda_emu::gdn_conv(view(*x), view(*conv_tail), view(*weight),
                                   bias ? &bv : nullptr, view(*src), activation != 0, view(*out),
                                   nullptr));
}

int emu_gdn_conv_commit(const EmuTensor* conv_tail, const EmuTensor* x, const EmuTensor* src,
                        const EmuTensor* path, const EmuTensor* accepted,
                        const EmuTensor* active) {
  const TensorView a = active ? view(*active) : TensorView{};
  return report(cuda_emu::gdn_conv_commit(view(*conv_tail), view(*x), view(*src), view(*path),
                                          view(*accepted), active ? &a : nullptr, nullptr));
}

int emu_gdn_verify(const EmuTensor* q, const EmuTensor* k, const EmuTensor* v,
                   const EmuTensor* g, const EmuTensor* beta, const EmuTensor* state,
                   const EmuTensor* tree_anc, const EmuTensor* out /* out, k_hat, delta, gcum */) {
  const TensorView anc = tree_anc ? view(*tree_anc) : TensorView{};
  return report(cuda_emu::gdn_verify(view(*q), view(*k), view(*v), view(*g), view(*beta),
                                     view(*state), tree_anc ? &anc : nullptr, view(out[0]),
                                     view(out[1]), view(out[2]), view(out[3]), nullptr));
}

int emu_gdn_commit(const EmuTensor* state, const EmuTensor* k_hat, const EmuTensor* delta,
                   const EmuTensor* gcum, const EmuTensor* path, const EmuTensor* accepted,
                   const EmuTensor* active) {
  const TensorView a = active ? view(*active) : TensorView{};
  return report(cuda_emu::gdn_commit(view(*state), view(*k_hat), view(*delta), view(*gcum),
                                     view(*path), view(*accepted), active ? &a : nullptr,
                                     nullptr));
}
}
