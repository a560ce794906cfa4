// Dispatch: validate every argument once, then route to the CPU implementation or a CUDA
// launcher. Nothing below this layer re-checks shapes, dtypes or devices. An empty batch returns
// before the CPU implementation: there is nothing to write, and its scratch is sized by extents
// that no memory backs (e.g. [0, 2^31] log-probs), which must not become a 16 GiB allocation.
#include "difftree/ops.h"

#include <cmath>
#include <sstream>
#include <string>

#include "cpu/cpu_ops.h"
#include "cpu/policy_ops.h"
#include "dispatch/checks.h"
#include "dispatch/route.h"
// The CUDA launchers are declared in every build: the CUDA paths compile everywhere and are only
// instantiated (so only linked) when the kernels are (dispatch::route).
#include "launchers.h"
#include "scratch_layouts.h"  // the CUDA selectors' workspace sizes, in every build

namespace difftree {
namespace cpu {
Status node_select(const TensorView& logits, const SamplingViews& params, const TensorView& out);
}  // namespace cpu
namespace {

using checks::kAnyDim;
using dispatch::checked_workspace;
using dispatch::route;

Status index_tensor(const TensorView& t, const char* name, const TensorView& ref,
                    const char* ref_name) {
  return checks::tensor(t, name, {DType::kInt32, DType::kInt64}, ref, ref_name);
}

// The sizing functions answer for requests a CUDA launch can take; anything else (a negative
// or beyond-int32 extent, a budget or order the op rejects) gets no workspace and one split, so
// their arithmetic neither overflows nor loops for long. The op rejects such requests itself.
bool launchable(std::initializer_list<int64_t> dims) {
  for (int64_t d : dims)
    if (d < 0 || d > INT32_MAX) return false;
  return true;
}

Status check_tree(const TreeView& tree) {
  DIFFTREE_RETURN_IF_ERROR(checks::ndim(tree.token, "tree.token", 2, "[B, N]"));
  const int64_t B = tree.token.shape[0], N = tree.token.shape[1];
  if (N < 1) return InvalidValue("tree.token: expected N >= 1 (the root), got N = 0");
  const TensorView& ref = tree.token;
  struct Field {
    const TensorView& t;
    const char* name;
    DType dtype;
  };
  const Field fields[] = {{tree.token, "tree.token", DType::kInt32},
                          {tree.parent, "tree.parent", DType::kInt32},
                          {tree.depth, "tree.depth", DType::kInt32},
                          {tree.score, "tree.score", DType::kFloat32},
                          {tree.first_child, "tree.first_child", DType::kInt32},
                          {tree.next_sibling, "tree.next_sibling", DType::kInt32}};
  for (const Field& f : fields) {
    DIFFTREE_RETURN_IF_ERROR(checks::shape(f.t, f.name, {B, N}, "[B, N]"));
    DIFFTREE_RETURN_IF_ERROR(checks::tensor(f.t, f.name, {f.dtype}, ref, "tree.token"));
  }
  DIFFTREE_RETURN_IF_ERROR(
      checks::shape(tree.anc, "tree.anc", {B, N, anc_words(N)}, "[B, N, ceil(N / 32)]"));
  DIFFTREE_RETURN_IF_ERROR(
      checks::tensor(tree.anc, "tree.anc", {DType::kInt32}, ref, "tree.token"));
  DIFFTREE_RETURN_IF_ERROR(checks::shape(tree.num_nodes, "tree.num_nodes", {B}, "[B]"));
  return checks::tensor(tree.num_nodes, "tree.num_nodes", {DType::kInt32}, ref, "tree.token");
}

}  // namespace

// ---- topk_logprobs --------------------------------------------------------------------------

Status check_topk_logprobs(const TensorView& logits, int64_t k) {
  DIFFTREE_RETURN_IF_ERROR(checks::ndim(logits, "logits", 3, "[B, L, V]"));
  DIFFTREE_RETURN_IF_ERROR(checks::tensor(
      logits, "logits", {DType::kFloat32, DType::kFloat16, DType::kBFloat16}, logits, "logits"));
  const int64_t V = logits.shape[2];
  if (V < 1) return InvalidValue("logits: expected a vocabulary V >= 1, got V = 0");
  if (V > INT32_MAX) return InvalidValue("logits: V must fit in int32 token ids");
  return checks::in_range(k, "k", 1, V);
}

Status topk_logprobs(const TensorView& logits, int64_t k, const TensorView& token,
                     const TensorView& logprob, Stream stream) {
  return topk_logprobs(logits, k, token, logprob, nullptr, stream);
}

Status topk_logprobs(const TensorView& logits, int64_t k, const TensorView& token,
                     const TensorView& logprob, const TensorView* row_error, Stream stream) {
  return topk_logprobs(logits, k, token, logprob, row_error, 1, nullptr, stream);
}

int64_t topk_logprobs_num_splits(int64_t B, int64_t L, int64_t V, int64_t k) {
  if (!launchable({B, L, V, k}) || B < 1 || L < 1 || V < 1 || k < 1) return 1;
  const int64_t rows = B * L;
  // ~2 waves of a 132-SM GPU, each chunk keeping >= 4096 logits and >= 4 K of them, and at
  // least enough chunks that one fits the kernel's shared-memory stage (12288 fp32 logits).
  const int64_t want = (264 + rows - 1) / rows;
  const int64_t min_chunk = 4 * k > 4096 ? 4 * k : 4096;
  const int64_t by_len = V / min_chunk;
  int64_t splits = want < by_len ? want : by_len;
  const int64_t to_stage = (V + 12287) / 12288;
  if (V > 4096 && splits < to_stage) splits = to_stage;
  splits = splits < 64 ? splits : 64;
  return splits < 1 ? 1 : splits;
}

size_t topk_logprobs_workspace_bytes(int64_t B, int64_t L, int64_t V, int64_t k,
                                     int64_t num_splits) {
  if (!launchable({B, L, V, k, num_splits})) return 0;
  const int64_t splits = num_splits > 0 ? num_splits : topk_logprobs_num_splits(B, L, V, k);
  if (splits <= 1 || B < 1 || L < 1 || V < 1 || k < 1) return 0;
  // Per row and chunk: k uint64 candidate keys, then an f64 sum, an f32 max and an int32 flag
  // (the layout of cuda/topk_logprobs.cu's split_ws).
  return static_cast<size_t>(B) * static_cast<size_t>(L) * static_cast<size_t>(splits) *
         (8 * static_cast<size_t>(k) + 8 + 4 + 4);
}

Status topk_logprobs(const TensorView& logits, int64_t k, const TensorView& token,
                     const TensorView& logprob, const TensorView* row_error, int64_t num_splits,
                     const TensorView* workspace, Stream stream) {
  DIFFTREE_RETURN_IF_ERROR(check_topk_logprobs(logits, k));
  DIFFTREE_RETURN_IF_ERROR(checks::in_range(num_splits, "num_splits", 0, 256));
  const int64_t B = logits.shape[0], L = logits.shape[1];
  DIFFTREE_RETURN_IF_ERROR(checks::shape(token, "token", {B, L, k}, "[B, L, K]"));
  DIFFTREE_RETURN_IF_ERROR(checks::tensor(token, "token", {DType::kInt32}, logits, "logits"));
  DIFFTREE_RETURN_IF_ERROR(checks::shape(logprob, "logprob", {B, L, k}, "[B, L, K]"));
  DIFFTREE_RETURN_IF_ERROR(checks::tensor(logprob, "logprob", {DType::kFloat32}, logits, "logits"));
  if (row_error != nullptr) {
    DIFFTREE_RETURN_IF_ERROR(checks::shape(*row_error, "row_error", {B, L}, "[B, L]"));
    DIFFTREE_RETURN_IF_ERROR(
        checks::tensor(*row_error, "row_error", {DType::kInt32}, logits, "logits"));
  }
  return route(
      "topk_logprobs", logits, B * L == 0,
      [&]() -> Status {
        if (k > kMaxCudaTopK)
          return Unsupported("topk_logprobs: the CUDA kernel supports k <= 4096, got k = " +
                             std::to_string(k));
        const int64_t V = logits.shape[2];
        const int64_t splits = num_splits > 0 ? num_splits : topk_logprobs_num_splits(B, L, V, k);
        const size_t need = topk_logprobs_workspace_bytes(B, L, V, k, splits);
        void* ws = nullptr;
        DIFFTREE_RETURN_IF_ERROR(checked_workspace(
            workspace, need, logits, "logits",
            {"topk_logprobs", "topk_logprobs_workspace_bytes", splits, /*aligned16=*/true}, &ws));
        return cuda::topk_logprobs(logits, k, token, logprob, row_error,
                                   need > 0 ? static_cast<int>(splits) : 1, ws, stream);
      },
      [&]() -> Status {
        DIFFTREE_RETURN_IF_ERROR(cpu::topk_logprobs(logits, k, token, logprob));
        if (row_error != nullptr) {
          int32_t* e = row_error->ptr<int32_t>();
          for (int64_t i = 0; i < B * L; ++i) e[i] = 0;
        }
        return Status::Ok();
      });
}

// ---- ddtree_select --------------------------------------------------------------------------

Status check_ddtree_select(const TensorView& cand_token, const TensorView& cand_logprob,
                           int64_t budget, const TensorView* root_token) {
  DIFFTREE_RETURN_IF_ERROR(checks::ndim(cand_logprob, "cand_logprob", 3, "[B, L, K]"));
  DIFFTREE_RETURN_IF_ERROR(checks::tensor(cand_logprob, "cand_logprob", {DType::kFloat32},
                                          cand_logprob, "cand_logprob"));
  const int64_t B = cand_logprob.shape[0], L = cand_logprob.shape[1], K = cand_logprob.shape[2];
  DIFFTREE_RETURN_IF_ERROR(checks::shape(cand_token, "cand_token", {B, L, K}, "[B, L, K]"));
  DIFFTREE_RETURN_IF_ERROR(index_tensor(cand_token, "cand_token", cand_logprob, "cand_logprob"));
  if (L > 0 && K < 1) return InvalidValue("cand_logprob: expected K >= 1 candidates per depth");
  if (L > kMaxBudget) return InvalidValue("cand_logprob: expected L <= 4096 draft depths");
  DIFFTREE_RETURN_IF_ERROR(checks::in_range(budget, "budget", 1, kMaxBudget));
  if (root_token != nullptr) {
    DIFFTREE_RETURN_IF_ERROR(checks::shape(*root_token, "root_token", {B}, "[B]"));
    DIFFTREE_RETURN_IF_ERROR(index_tensor(*root_token, "root_token", cand_logprob, "cand_logprob"));
  }
  return Status::Ok();
}

Status ddtree_select(const TensorView& cand_token, const TensorView& cand_logprob, int64_t budget,
                     const TensorView* root_token, const TreeView& tree, Stream stream) {
  return ddtree_select(cand_token, cand_logprob, budget, root_token, tree, nullptr, stream);
}

size_t ddtree_select_workspace_bytes(int64_t B, int64_t L, int64_t K, int64_t budget) {
  if (!launchable({B, L, K}) || budget > kMaxBudget) return 0;
  return cuda::ddtree_select_workspace_bytes(B, L, K, budget);
}

Status ddtree_select(const TensorView& cand_token, const TensorView& cand_logprob, int64_t budget,
                     const TensorView* root_token, const TreeView& tree,
                     const TensorView* workspace, Stream stream) {
  DIFFTREE_RETURN_IF_ERROR(check_ddtree_select(cand_token, cand_logprob, budget, root_token));
  DIFFTREE_RETURN_IF_ERROR(check_tree(tree));
  const int64_t B = cand_logprob.shape[0];
  if (tree.token.shape[0] != B || tree.token.shape[1] != budget + 1) {
    std::ostringstream os;
    os << "tree.token: expected shape [B, budget + 1] = [" << B << ", " << budget + 1 << "], got "
       << shape_string(tree.token);
    return InvalidValue(os.str());
  }
  DIFFTREE_RETURN_IF_ERROR(
      checks::same_device(tree.token, "tree.token", cand_logprob, "cand_logprob"));
  return route(
      "ddtree_select", cand_logprob, B == 0,
      [&]() -> Status {
        const int64_t L = cand_logprob.shape[1], K = cand_logprob.shape[2];
        const size_t need = cuda::ddtree_select_workspace_bytes(B, L, K, budget);
        void* ws = nullptr;
        DIFFTREE_RETURN_IF_ERROR(
            checked_workspace(workspace, need, cand_logprob, "cand_logprob",
                              {"ddtree_select", "ddtree_select_workspace_bytes"}, &ws));
        return cuda::ddtree_select(cand_token, cand_logprob, budget, root_token, tree, ws, need,
                                   stream);
      },
      [&] { return cpu::ddtree_select(cand_token, cand_logprob, budget, root_token, tree); });
}

// ---- tree_walk ------------------------------------------------------------------------------

Status check_tree_walk(const TreeView& tree, const TensorView& node_choice,
                       const TensorView* stop_tokens, const TensorView* remaining) {
  DIFFTREE_RETURN_IF_ERROR(check_tree(tree));
  const int64_t B = tree.token.shape[0], N = tree.token.shape[1];
  DIFFTREE_RETURN_IF_ERROR(checks::shape(node_choice, "node_choice", {B, N}, "[B, N]"));
  DIFFTREE_RETURN_IF_ERROR(index_tensor(node_choice, "node_choice", tree.token, "tree.token"));
  if (stop_tokens != nullptr) {
    DIFFTREE_RETURN_IF_ERROR(checks::ndim(*stop_tokens, "stop_tokens", 1, "[S]"));
    DIFFTREE_RETURN_IF_ERROR(index_tensor(*stop_tokens, "stop_tokens", tree.token, "tree.token"));
  }
  if (remaining != nullptr) {
    DIFFTREE_RETURN_IF_ERROR(checks::shape(*remaining, "remaining", {B}, "[B]"));
    DIFFTREE_RETURN_IF_ERROR(index_tensor(*remaining, "remaining", tree.token, "tree.token"));
  }
  return Status::Ok();
}

Status tree_walk(const TreeView& tree, const TensorView& node_choice, const TensorView* stop_tokens,
                 const TensorView* remaining, const WalkOutputs& out, Stream stream) {
  DIFFTREE_RETURN_IF_ERROR(check_tree_walk(tree, node_choice, stop_tokens, remaining));
  const int64_t B = tree.token.shape[0];
  DIFFTREE_RETURN_IF_ERROR(checks::shape(out.path, "path", {B, kAnyDim}, "[B, P]"));
  if (out.path.shape[1] < 1) return InvalidValue("path: expected at least one column (the root)");
  DIFFTREE_RETURN_IF_ERROR(
      checks::tensor(out.path, "path", {DType::kInt32}, tree.token, "tree.token"));
  DIFFTREE_RETURN_IF_ERROR(checks::shape(out.accepted, "accepted", {B}, "[B]"));
  DIFFTREE_RETURN_IF_ERROR(
      checks::tensor(out.accepted, "accepted", {DType::kInt32}, tree.token, "tree.token"));
  DIFFTREE_RETURN_IF_ERROR(checks::shape(out.next_token, "next_token", {B}, "[B]"));
  DIFFTREE_RETURN_IF_ERROR(
      checks::tensor(out.next_token, "next_token", {DType::kInt32}, tree.token, "tree.token"));
  DIFFTREE_RETURN_IF_ERROR(checks::shape(out.done, "done", {B}, "[B]"));
  DIFFTREE_RETURN_IF_ERROR(
      checks::tensor(out.done, "done", {DType::kBool, DType::kUInt8}, tree.token, "tree.token"));
  return route(
      "tree_walk", tree.token, B == 0,
      [&] { return cuda::tree_walk(tree, node_choice, stop_tokens, remaining, out, stream); },
      [&] { return cpu::tree_walk(tree, node_choice, stop_tokens, remaining, out); });
}

// ---- kv_commit ------------------------------------------------------------------------------

Status check_kv_commit(const TensorView* caches, int num_caches, const TensorView& base_len,
                       const TensorView& path, const TensorView& accepted, bool ring) {
  (void)ring;  // a ring changes only the data-dependent row checks (cpu/kv_commit.cpp)
  DIFFTREE_RETURN_IF_ERROR(checks::ndim(path, "path", 2, "[B, P]"));
  const int64_t B = path.shape[0];
  if (path.shape[1] < 1) return InvalidValue("path: expected at least one column (the root)");
  DIFFTREE_RETURN_IF_ERROR(index_tensor(path, "path", path, "path"));
  DIFFTREE_RETURN_IF_ERROR(checks::shape(base_len, "base_len", {B}, "[B]"));
  DIFFTREE_RETURN_IF_ERROR(index_tensor(base_len, "base_len", path, "path"));
  DIFFTREE_RETURN_IF_ERROR(checks::shape(accepted, "accepted", {B}, "[B]"));
  DIFFTREE_RETURN_IF_ERROR(index_tensor(accepted, "accepted", path, "path"));
  if (num_caches < 1) return InvalidValue("caches: expected at least one cache tensor");
  // Every layer's K and V share one shape and dtype, so one launch can move them all.
  DIFFTREE_RETURN_IF_ERROR(
      checks::shape(caches[0], "caches[0]", {B, kAnyDim, kAnyDim, kAnyDim}, "[B, H, S, D]"));
  const TensorView& c0 = caches[0];
  for (int c = 0; c < num_caches; ++c) {
    const std::string name = "caches[" + std::to_string(c) + "]";
    DIFFTREE_RETURN_IF_ERROR(checks::shape(caches[c], name.c_str(),
                                           {B, c0.shape[1], c0.shape[2], c0.shape[3]},
                                           "[B, H, S, D] (as caches[0])"));
    DIFFTREE_RETURN_IF_ERROR(checks::tensor(caches[c], name.c_str(), {c0.dtype}, path, "path"));
  }
  DIFFTREE_RETURN_IF_ERROR(checks::dtype(
      c0, "caches[0]",
      {DType::kFloat32, DType::kFloat16, DType::kBFloat16, DType::kUInt8, DType::kInt32}));
  if (c0.shape[3] * dtype_size(c0.dtype) > 4096)
    return InvalidValue(
        "caches[0]: expected rows of at most 4096 bytes (H * D layouts with "
        "D * element size <= 4096)");
  return Status::Ok();
}

Status kv_commit(const TensorView* caches, int num_caches, const TensorView& base_len,
                 const TensorView& path, const TensorView& accepted, Stream stream, bool ring) {
  DIFFTREE_RETURN_IF_ERROR(check_kv_commit(caches, num_caches, base_len, path, accepted, ring));
  return route(
      "kv_commit", path, path.shape[0] == 0,
      [&] { return cuda::kv_commit(caches, num_caches, base_len, path, accepted, ring, stream); },
      [&] { return cpu::kv_commit(caches, num_caches, base_len, path, accepted, ring); });
}

// ---- node_select ----------------------------------------------------------------------------

Status check_node_select(const TensorView& logits, const SamplingViews& params) {
  DIFFTREE_RETURN_IF_ERROR(checks::ndim(logits, "logits", 3, "[B, N, V]"));
  DIFFTREE_RETURN_IF_ERROR(checks::tensor(
      logits, "logits", {DType::kFloat32, DType::kFloat16, DType::kBFloat16}, logits, "logits"));
  const int64_t B = logits.shape[0], V = logits.shape[2];
  if (V < 1) return InvalidValue("logits: expected a vocabulary V >= 1, got V = 0");
  if (V > INT32_MAX) return InvalidValue("logits: V must fit in int32 token ids");
  struct Param {
    const TensorView* t;
    const char* name;
    bool is_float;
  };
  const Param ps[] = {{params.temperature, "temperature", true},
                      {params.top_k, "top_k", false},
                      {params.top_p, "top_p", true},
                      {params.seed, "seed", false},
                      {params.round_idx, "round_idx", false}};
  for (const Param& p : ps) {
    if (p.t == nullptr) continue;
    DIFFTREE_RETURN_IF_ERROR(checks::shape(*p.t, p.name, {B}, "[B]"));
    if (p.is_float) {
      DIFFTREE_RETURN_IF_ERROR(checks::tensor(*p.t, p.name, {DType::kFloat32}, logits, "logits"));
    } else {
      DIFFTREE_RETURN_IF_ERROR(index_tensor(*p.t, p.name, logits, "logits"));
    }
  }
  return Status::Ok();
}

Status node_select(const TensorView& logits, const SamplingViews& params, const TensorView& out,
                   Stream stream) {
  DIFFTREE_RETURN_IF_ERROR(check_node_select(logits, params));
  const int64_t B = logits.shape[0], N = logits.shape[1];
  DIFFTREE_RETURN_IF_ERROR(checks::shape(out, "out", {B, N}, "[B, N]"));
  DIFFTREE_RETURN_IF_ERROR(checks::tensor(out, "out", {DType::kInt32}, logits, "logits"));
  return route(
      "node_select", logits, B * N == 0,
      [&] { return cuda::node_select(logits, params, out, stream); },
      [&] { return cpu::node_select(logits, params, out); });
}

// ---- caddtree_select / ngram_update / ngram_extend / presto_select ------------------------

namespace {
Status tree_for_budget(const TreeView& tree, const TensorView& cand_logprob, int64_t budget) {
  DIFFTREE_RETURN_IF_ERROR(check_tree(tree));
  const int64_t B = cand_logprob.shape[0];
  if (tree.token.shape[0] != B || tree.token.shape[1] != budget + 1) {
    std::ostringstream os;
    os << "tree.token: expected shape [B, budget + 1] = [" << B << ", " << budget + 1 << "], got "
       << shape_string(tree.token);
    return InvalidValue(os.str());
  }
  return checks::same_device(tree.token, "tree.token", cand_logprob, "cand_logprob");
}

Status cpu_only(const TensorView& t, const char* op) {
  if (t.device == DeviceType::kCUDA)
    return Unsupported(std::string(op) +
                       ": no CUDA kernel yet; pass CPU tensors (the candidates are small)");
  return Status::Ok();
}

// keys int64 / counts int32, [H] (one table) or [B, H] (request b's table in row b), H a power
// of two.
Status count_table(const TensorView& keys, const TensorView& counts, const TensorView& ref,
                   const char* ref_name, int64_t B, bool per_request_only) {
  if (per_request_only) {
    DIFFTREE_RETURN_IF_ERROR(checks::ndim(keys, "keys", 2, "[B, H]"));
  } else if (keys.ndim != 1 && keys.ndim != 2) {
    return InvalidValue("keys: expected [H] (one table) or [B, H] (one per request), got " +
                        shape_string(keys));
  }
  DIFFTREE_RETURN_IF_ERROR(checks::tensor(keys, "keys", {DType::kInt64}, ref, ref_name));
  const int64_t H = keys.shape[keys.ndim - 1];
  if (H < 1 || (H & (H - 1)) != 0)
    return InvalidValue("keys: expected a power-of-two table size H, got " + std::to_string(H));
  if (keys.ndim == 2) {
    if (keys.shape[0] != B) {
      std::ostringstream os;
      os << "keys: expected one table per request, [B, H] with B = " << B << ", got "
         << shape_string(keys);
      return InvalidValue(os.str());
    }
    DIFFTREE_RETURN_IF_ERROR(checks::shape(counts, "counts", {B, H}, "[B, H] (as keys)"));
  } else {
    DIFFTREE_RETURN_IF_ERROR(checks::shape(counts, "counts", {H}, "[H] (as keys)"));
  }
  return checks::tensor(counts, "counts", {DType::kInt32}, ref, ref_name);
}
}  // namespace

Status check_caddtree_select(const TensorView& cand_token, const TensorView& cand_logprob,
                             int64_t max_budget, const TensorView* root_token,
                             const TensorView& verify_cost, const TensorView& draft_cost) {
  DIFFTREE_RETURN_IF_ERROR(check_ddtree_select(cand_token, cand_logprob, max_budget, root_token));
  const int64_t B = cand_logprob.shape[0];
  DIFFTREE_RETURN_IF_ERROR(
      checks::shape(verify_cost, "verify_cost", {B, max_budget + 1}, "[B, max_budget + 1]"));
  DIFFTREE_RETURN_IF_ERROR(
      checks::tensor(verify_cost, "verify_cost", {DType::kFloat32}, cand_logprob, "cand_logprob"));
  DIFFTREE_RETURN_IF_ERROR(checks::shape(draft_cost, "draft_cost", {B}, "[B]"));
  DIFFTREE_RETURN_IF_ERROR(
      checks::tensor(draft_cost, "draft_cost", {DType::kFloat32}, cand_logprob, "cand_logprob"));
  return Status::Ok();
}

Status caddtree_select(const TensorView& cand_token, const TensorView& cand_logprob,
                       int64_t max_budget, const TensorView* root_token,
                       const TensorView& verify_cost, const TensorView& draft_cost,
                       const TreeView& tree, Stream stream) {
  return caddtree_select(cand_token, cand_logprob, max_budget, root_token, verify_cost, draft_cost,
                         tree, nullptr, stream);
}

Status caddtree_select(const TensorView& cand_token, const TensorView& cand_logprob,
                       int64_t max_budget, const TensorView* root_token,
                       const TensorView& verify_cost, const TensorView& draft_cost,
                       const TreeView& tree, const TensorView* workspace, Stream stream) {
  DIFFTREE_RETURN_IF_ERROR(check_caddtree_select(cand_token, cand_logprob, max_budget, root_token,
                                                 verify_cost, draft_cost));
  DIFFTREE_RETURN_IF_ERROR(tree_for_budget(tree, cand_logprob, max_budget));
  const int64_t B = cand_logprob.shape[0], L = cand_logprob.shape[1], K = cand_logprob.shape[2];
  return route(
      "caddtree_select", cand_logprob, B == 0,
      [&]() -> Status {
        const size_t need = cuda::ddtree_select_workspace_bytes(B, L, K, max_budget);
        void* ws = nullptr;
        DIFFTREE_RETURN_IF_ERROR(checked_workspace(
            workspace, need, cand_logprob, "cand_logprob",
            {"caddtree_select", "ddtree_select_workspace_bytes(B, L, K, max_budget)"}, &ws));
        return cuda::caddtree_select(cand_token, cand_logprob, max_budget, root_token, verify_cost,
                                     draft_cost, tree, ws, need, stream);
      },
      [&] {
        return cpu::caddtree_select(cand_token, cand_logprob, max_budget, root_token, verify_cost,
                                    draft_cost, tree);
      });
}

Status check_ngram_update(const TensorView& keys, const TensorView& counts,
                          const TensorView& tokens, int64_t start, int64_t order) {
  DIFFTREE_RETURN_IF_ERROR(checks::ndim(tokens, "tokens", 1, "[T]"));
  DIFFTREE_RETURN_IF_ERROR(index_tensor(tokens, "tokens", tokens, "tokens"));
  DIFFTREE_RETURN_IF_ERROR(count_table(keys, counts, tokens, "tokens", 1, false));
  DIFFTREE_RETURN_IF_ERROR(checks::ndim(keys, "keys", 1, "[H]"));
  DIFFTREE_RETURN_IF_ERROR(checks::in_range(order, "order", 1, 8));
  DIFFTREE_RETURN_IF_ERROR(checks::in_range(start, "start", 0, tokens.shape[0]));
  return cpu_only(tokens, "ngram_update");
}

Status ngram_update(const TensorView& keys, const TensorView& counts, const TensorView& tokens,
                    int64_t start, int64_t order, int64_t* new_keys) {
  DIFFTREE_RETURN_IF_ERROR(check_ngram_update(keys, counts, tokens, start, order));
  int64_t fresh = 0;
  DIFFTREE_RETURN_IF_ERROR(cpu::ngram_update(keys, counts, tokens, start, order, &fresh));
  if (new_keys != nullptr) *new_keys = fresh;
  return Status::Ok();
}

Status check_presto_select(const TensorView& cand_token, const TensorView& cand_logprob,
                           int64_t budget, const TensorView* root_token, const TensorView& context,
                           const TensorView& keys, const TensorView& counts,
                           const PrestoParams& params) {
  DIFFTREE_RETURN_IF_ERROR(check_ddtree_select(cand_token, cand_logprob, budget, root_token));
  DIFFTREE_RETURN_IF_ERROR(checks::in_range(params.order, "order", 1, 8));
  if (!(params.alpha > 0.0) || !std::isfinite(params.alpha))
    return InvalidValue("alpha: expected a finite smoothing mass > 0");
  if (!(params.lam >= 0.0) || !std::isfinite(params.lam))
    return InvalidValue("lam: expected a finite weight >= 0");
  DIFFTREE_RETURN_IF_ERROR(checks::in_range(params.vocab, "vocab", 1, INT32_MAX));
  const int64_t B = cand_logprob.shape[0];
  DIFFTREE_RETURN_IF_ERROR(
      checks::shape(context, "context", {B, params.order - 1}, "[B, order - 1]"));
  DIFFTREE_RETURN_IF_ERROR(index_tensor(context, "context", cand_logprob, "cand_logprob"));
  return count_table(keys, counts, cand_logprob, "cand_logprob", B, false);
}

Status presto_select(const TensorView& cand_token, const TensorView& cand_logprob, int64_t budget,
                     const TensorView* root_token, const TensorView& context,
                     const TensorView& keys, const TensorView& counts, const PrestoParams& params,
                     const TreeView& tree, Stream stream) {
  return presto_select(cand_token, cand_logprob, budget, root_token, context, keys, counts, params,
                       tree, nullptr, stream);
}

Status presto_select(const TensorView& cand_token, const TensorView& cand_logprob, int64_t budget,
                     const TensorView* root_token, const TensorView& context,
                     const TensorView& keys, const TensorView& counts, const PrestoParams& params,
                     const TreeView& tree, const TensorView* workspace, Stream stream) {
  DIFFTREE_RETURN_IF_ERROR(check_presto_select(cand_token, cand_logprob, budget, root_token,
                                               context, keys, counts, params));
  DIFFTREE_RETURN_IF_ERROR(tree_for_budget(tree, cand_logprob, budget));
  const int64_t B = cand_logprob.shape[0], L = cand_logprob.shape[1], K = cand_logprob.shape[2];
  return route(
      "presto_select", cand_logprob, B == 0,
      [&]() -> Status {
        const size_t need = cuda::presto_select_workspace_bytes(B, L, K, budget, params.order);
        void* ws = nullptr;
        DIFFTREE_RETURN_IF_ERROR(checked_workspace(
            workspace, need, cand_logprob, "cand_logprob",
            {"presto_select", "presto_select_workspace_bytes(B, L, K, budget, order)"}, &ws));
        return cuda::presto_select(cand_token, cand_logprob, budget, root_token, context, keys,
                                   counts, params, tree, ws, need, stream);
      },
      [&] {
        return cpu::presto_select(cand_token, cand_logprob, budget, root_token, context, keys,
                                  counts, params, tree);
      });
}

size_t presto_select_workspace_bytes(int64_t B, int64_t L, int64_t K, int64_t budget,
                                     int64_t order) {
  if (!launchable({B, L, K}) || budget > kMaxBudget || order < 1 || order > 8) return 0;
  return cuda::presto_select_workspace_bytes(B, L, K, budget, order);
}

Status check_ngram_extend(const TensorView& keys, const TensorView& counts,
                          const TensorView& history, const TensorView& tokens,
                          const TensorView& num_tokens, int64_t order) {
  DIFFTREE_RETURN_IF_ERROR(checks::in_range(order, "order", 1, 8));
  DIFFTREE_RETURN_IF_ERROR(checks::ndim(tokens, "tokens", 2, "[B, T]"));
  DIFFTREE_RETURN_IF_ERROR(index_tensor(tokens, "tokens", tokens, "tokens"));
  const int64_t B = tokens.shape[0];
  DIFFTREE_RETURN_IF_ERROR(checks::shape(num_tokens, "num_tokens", {B}, "[B]"));
  DIFFTREE_RETURN_IF_ERROR(index_tensor(num_tokens, "num_tokens", tokens, "tokens"));
  DIFFTREE_RETURN_IF_ERROR(checks::shape(history, "history", {B, order - 1}, "[B, order - 1]"));
  DIFFTREE_RETURN_IF_ERROR(checks::tensor(history, "history", {DType::kInt64}, tokens, "tokens"));
  return count_table(keys, counts, tokens, "tokens", B, true);
}

Status ngram_extend(const TensorView& keys, const TensorView& counts, const TensorView& history,
                    const TensorView& tokens, const TensorView& num_tokens, int64_t order,
                    const TensorView* overflow, Stream stream) {
  DIFFTREE_RETURN_IF_ERROR(check_ngram_extend(keys, counts, history, tokens, num_tokens, order));
  if (overflow != nullptr) {
    DIFFTREE_RETURN_IF_ERROR(checks::shape(*overflow, "overflow", {tokens.shape[0]}, "[B]"));
    DIFFTREE_RETURN_IF_ERROR(
        checks::tensor(*overflow, "overflow", {DType::kInt32}, tokens, "tokens"));
  }
  return route(
      "ngram_extend", tokens, tokens.shape[0] == 0,
      [&] {
        return cuda::ngram_extend(keys, counts, history, tokens, num_tokens, order, overflow,
                                  stream);
      },
      [&] { return cpu::ngram_extend(keys, counts, history, tokens, num_tokens, order); });
}

// ---- taps_select (CPU only for now) ---------------------------------------------------------

Status check_taps_select(const TensorView& pool_token, const TensorView& pool_parent,
                         const TensorView& pool_size, const TensorView& log_qc, int64_t budget) {
  DIFFTREE_RETURN_IF_ERROR(checks::ndim(log_qc, "log_qc", 2, "[B, P1]"));
  DIFFTREE_RETURN_IF_ERROR(checks::tensor(log_qc, "log_qc", {DType::kFloat32}, log_qc, "log_qc"));
  const int64_t B = log_qc.shape[0];
  const int64_t P1 = log_qc.shape[1];
  if (P1 < 1) return InvalidValue("log_qc: expected at least one pool row (the root)");
  DIFFTREE_RETURN_IF_ERROR(checks::shape(pool_token, "pool_token", {B, P1}, "[B, P1] (as log_qc)"));
  DIFFTREE_RETURN_IF_ERROR(index_tensor(pool_token, "pool_token", log_qc, "log_qc"));
  DIFFTREE_RETURN_IF_ERROR(
      checks::shape(pool_parent, "pool_parent", {B, P1}, "[B, P1] (as log_qc)"));
  DIFFTREE_RETURN_IF_ERROR(index_tensor(pool_parent, "pool_parent", log_qc, "log_qc"));
  DIFFTREE_RETURN_IF_ERROR(checks::shape(pool_size, "pool_size", {B}, "[B]"));
  DIFFTREE_RETURN_IF_ERROR(index_tensor(pool_size, "pool_size", log_qc, "log_qc"));
  DIFFTREE_RETURN_IF_ERROR(checks::in_range(budget, "budget", 1, kMaxBudget));
  if (log_qc.device == DeviceType::kCUDA && P1 > 65536)
    return InvalidValue("log_qc: the CUDA taps_select supports pools of at most 65536 rows, got " +
                        std::to_string(P1));
  return Status::Ok();
}

size_t taps_select_workspace_bytes(int64_t B, int64_t P1, int64_t budget) {
  if (!launchable({B, P1}) || budget > kMaxBudget) return 0;
  return cuda::taps_select_workspace_bytes(B, P1, budget);
}

Status taps_select(const TensorView& pool_token, const TensorView& pool_parent,
                   const TensorView& pool_size, const TensorView& log_qc, int64_t budget,
                   const TreeView& tree, Stream stream) {
  return taps_select(pool_token, pool_parent, pool_size, log_qc, budget, tree, nullptr, stream);
}

Status taps_select(const TensorView& pool_token, const TensorView& pool_parent,
                   const TensorView& pool_size, const TensorView& log_qc, int64_t budget,
                   const TreeView& tree, const TensorView* workspace, Stream stream) {
  DIFFTREE_RETURN_IF_ERROR(check_taps_select(pool_token, pool_parent, pool_size, log_qc, budget));
  DIFFTREE_RETURN_IF_ERROR(tree_for_budget(tree, log_qc, budget));
  return route(
      "taps_select", log_qc, log_qc.shape[0] == 0,
      [&]() -> Status {
        const size_t need =
            cuda::taps_select_workspace_bytes(log_qc.shape[0], log_qc.shape[1], budget);
        void* ws = nullptr;
        DIFFTREE_RETURN_IF_ERROR(
            checked_workspace(workspace, need, log_qc, "log_qc",
                              {"taps_select", "taps_select_workspace_bytes(B, P1, budget)"}, &ws));
        return cuda::taps_select(pool_token, pool_parent, pool_size, log_qc, budget, tree, ws, need,
                                 stream);
      },
      [&] { return cpu::taps_select(pool_token, pool_parent, pool_size, log_qc, budget, tree); });
}

// ---- d2sd -----------------------------------------------------------------------------------

Status check_d2sd_boundaries(const TensorView& trunk_logprob, const TensorView& boundary) {
  DIFFTREE_RETURN_IF_ERROR(checks::ndim(trunk_logprob, "trunk_logprob", 2, "[B, L]"));
  DIFFTREE_RETURN_IF_ERROR(checks::tensor(trunk_logprob, "trunk_logprob", {DType::kFloat32},
                                          trunk_logprob, "trunk_logprob"));
  const int64_t B = trunk_logprob.shape[0], L = trunk_logprob.shape[1];
  if (L < 1) return InvalidValue("trunk_logprob: expected L >= 1 draft depths");
  DIFFTREE_RETURN_IF_ERROR(checks::shape(boundary, "boundary", {B, kAnyDim}, "[B, K]"));
  DIFFTREE_RETURN_IF_ERROR(
      checks::tensor(boundary, "boundary", {DType::kInt32}, trunk_logprob, "trunk_logprob"));
  if (boundary.shape[1] < 1 || boundary.shape[1] > L) {
    std::ostringstream os;
    os << "boundary: expected K in [1, L = " << L << "] boundaries, got K = " << boundary.shape[1];
    return InvalidValue(os.str());
  }
  if (trunk_logprob.device == DeviceType::kCUDA && L > kMaxBudget)
    return InvalidValue("trunk_logprob: the CUDA d2sd_boundaries supports L <= 4096, got L = " +
                        std::to_string(L));
  return Status::Ok();
}

Status d2sd_boundaries(const TensorView& trunk_logprob, const TensorView& boundary, Stream stream) {
  DIFFTREE_RETURN_IF_ERROR(check_d2sd_boundaries(trunk_logprob, boundary));
  return route(
      "d2sd_boundaries", trunk_logprob, trunk_logprob.shape[0] == 0,
      [&] { return cuda::d2sd_boundaries(trunk_logprob, boundary, stream); },
      [&] { return cpu::d2sd_boundaries(trunk_logprob, boundary); });
}

Status check_d2sd_select(const TensorView& trunk_token, const TensorView& trunk_logprob,
                         const TensorView& boundary, const TensorView& branch_token,
                         const TensorView& branch_logprob, int64_t budget,
                         const TensorView* root_token) {
  DIFFTREE_RETURN_IF_ERROR(checks::ndim(trunk_logprob, "trunk_logprob", 2, "[B, L1]"));
  DIFFTREE_RETURN_IF_ERROR(checks::tensor(trunk_logprob, "trunk_logprob", {DType::kFloat32},
                                          trunk_logprob, "trunk_logprob"));
  const int64_t B = trunk_logprob.shape[0], L1 = trunk_logprob.shape[1];
  if (L1 < 1) return InvalidValue("trunk_logprob: expected L1 >= 1 draft depths");
  if (L1 > kMaxBudget) return InvalidValue("trunk_logprob: expected L1 <= 4096 draft depths");
  DIFFTREE_RETURN_IF_ERROR(checks::shape(trunk_token, "trunk_token", {B, L1}, "[B, L1]"));
  DIFFTREE_RETURN_IF_ERROR(
      index_tensor(trunk_token, "trunk_token", trunk_logprob, "trunk_logprob"));
  DIFFTREE_RETURN_IF_ERROR(checks::shape(boundary, "boundary", {B, kAnyDim}, "[B, K]"));
  DIFFTREE_RETURN_IF_ERROR(index_tensor(boundary, "boundary", trunk_logprob, "trunk_logprob"));
  const int64_t K = boundary.shape[1];
  DIFFTREE_RETURN_IF_ERROR(checks::shape(branch_logprob, "branch_logprob", {B, K, kAnyDim},
                                         "[B, K, L2] (K as boundary)"));
  DIFFTREE_RETURN_IF_ERROR(checks::tensor(branch_logprob, "branch_logprob", {DType::kFloat32},
                                          trunk_logprob, "trunk_logprob"));
  const int64_t L2 = branch_logprob.shape[2];
  if (L2 < 1) return InvalidValue("branch_logprob: expected L2 >= 1 draft depths");
  if (L2 > kMaxBudget) return InvalidValue("branch_logprob: expected L2 <= 4096 draft depths");
  DIFFTREE_RETURN_IF_ERROR(
      checks::shape(branch_token, "branch_token", {B, K, L2}, "[B, K, L2] (as branch_logprob)"));
  DIFFTREE_RETURN_IF_ERROR(
      index_tensor(branch_token, "branch_token", trunk_logprob, "trunk_logprob"));
  DIFFTREE_RETURN_IF_ERROR(checks::in_range(budget, "budget", 1, kMaxBudget));
  if (root_token != nullptr) {
    DIFFTREE_RETURN_IF_ERROR(checks::shape(*root_token, "root_token", {B}, "[B]"));
    DIFFTREE_RETURN_IF_ERROR(
        index_tensor(*root_token, "root_token", trunk_logprob, "trunk_logprob"));
  }
  if (trunk_logprob.device == DeviceType::kCUDA && 1 + L1 + K * L2 > 65536) {
    std::ostringstream os;
    os << "branch_logprob: the CUDA d2sd_select supports tries of at most 65536 rows (1 + L1 + K "
          "* L2), got "
       << 1 + L1 + K * L2;
    return InvalidValue(os.str());
  }
  return Status::Ok();
}

size_t d2sd_select_workspace_bytes(int64_t B, int64_t L1, int64_t K, int64_t L2, int64_t budget) {
  if (!launchable({B, L1, K, L2}) || budget > kMaxBudget) return 0;
  return cuda::d2sd_select_workspace_bytes(B, L1, K, L2, budget);
}

Status d2sd_select(const TensorView& trunk_token, const TensorView& trunk_logprob,
                   const TensorView& boundary, const TensorView& branch_token,
                   const TensorView& branch_logprob, int64_t budget, const TensorView* root_token,
                   const TreeView& tree, Stream stream) {
  return d2sd_select(trunk_token, trunk_logprob, boundary, branch_token, branch_logprob, budget,
                     root_token, tree, nullptr, stream);
}

Status d2sd_select(const TensorView& trunk_token, const TensorView& trunk_logprob,
                   const TensorView& boundary, const TensorView& branch_token,
                   const TensorView& branch_logprob, int64_t budget, const TensorView* root_token,
                   const TreeView& tree, const TensorView* workspace, Stream stream) {
  DIFFTREE_RETURN_IF_ERROR(check_d2sd_select(trunk_token, trunk_logprob, boundary, branch_token,
                                             branch_logprob, budget, root_token));
  DIFFTREE_RETURN_IF_ERROR(tree_for_budget(tree, trunk_logprob, budget));
  return route(
      "d2sd_select", trunk_logprob, trunk_logprob.shape[0] == 0,
      [&]() -> Status {
        const size_t need =
            cuda::d2sd_select_workspace_bytes(trunk_logprob.shape[0], trunk_logprob.shape[1],
                                              boundary.shape[1], branch_logprob.shape[2], budget);
        void* ws = nullptr;
        DIFFTREE_RETURN_IF_ERROR(checked_workspace(
            workspace, need, trunk_logprob, "trunk_logprob",
            {"d2sd_select", "d2sd_select_workspace_bytes(B, L1, K, L2, budget)"}, &ws));
        return cuda::d2sd_select(trunk_token, trunk_logprob, boundary, branch_token, branch_logprob,
                                 budget, root_token, tree, ws, need, stream);
      },
      [&] {
        return cpu::d2sd_select(trunk_token, trunk_logprob, boundary, branch_token, branch_logprob,
                                root_token, tree);
      });
}

// ---- tree_attention -------------------------------------------------------------------------

namespace {
// dtype, device and data like checks::tensor, but only the last dim must be contiguous.
Status attn_tensor(const TensorView& t, const char* name, std::initializer_list<DType> allowed,
                   const TensorView& ref, const char* ref_name) {
  DIFFTREE_RETURN_IF_ERROR(checks::dtype(t, name, allowed));
  DIFFTREE_RETURN_IF_ERROR(checks::data_present(t, name));
  DIFFTREE_RETURN_IF_ERROR(checks::same_device(t, name, ref, ref_name));
  if (t.numel() > 0 && t.shape[t.ndim - 1] > 1 && t.strides[t.ndim - 1] != 1)
    return InvalidValue(std::string(name) +
                        ": expected a contiguous last dimension (stride 1), got shape " +
                        shape_string(t));
  for (int d = 0; d < t.ndim; ++d)
    if (t.strides[d] < 0) return InvalidValue(std::string(name) + ": negative strides");
  return Status::Ok();
}
}  // namespace

Status check_tree_attention(const TensorView& q, const TensorView& k_cache,
                            const TensorView& v_cache, const TensorView& prefix_len,
                            const TensorView* tree_anc, const TensorView* num_nodes, float scale,
                            bool is_chain, const AttentionVariant& variant) {
  DIFFTREE_RETURN_IF_ERROR(checks::ndim(q, "q", 4, "[B, H_q, N, D_k]"));
  DIFFTREE_RETURN_IF_ERROR(
      attn_tensor(q, "q", {DType::kFloat32, DType::kFloat16, DType::kBFloat16}, q, "q"));
  const int64_t B = q.shape[0], Hq = q.shape[1], N = q.shape[2], D = q.shape[3];
  if (N < 1) return InvalidValue("q: expected N >= 1 query rows, got N = 0");
  if (D < 1) return InvalidValue("q: expected head_dim D_k >= 1, got D_k = 0");
  if (Hq < 1) return InvalidValue("q: expected H_q >= 1 heads, got H_q = 0");
  DIFFTREE_RETURN_IF_ERROR(checks::shape(k_cache, "k_cache", {B, kAnyDim, kAnyDim, D},
                                         "[B, H_kv, S, D_k] (B, D_k as q)"));
  DIFFTREE_RETURN_IF_ERROR(attn_tensor(k_cache, "k_cache", {q.dtype}, q, "q"));
  const int64_t Hkv = k_cache.shape[1], S = k_cache.shape[2];
  DIFFTREE_RETURN_IF_ERROR(checks::shape(v_cache, "v_cache", {B, Hkv, S, kAnyDim},
                                         "[B, H_kv, S, D_v] (B, H_kv, S as k_cache)"));
  DIFFTREE_RETURN_IF_ERROR(attn_tensor(v_cache, "v_cache", {q.dtype}, q, "q"));
  if (v_cache.shape[3] < 1) return InvalidValue("v_cache: expected head_dim D_v >= 1, got 0");
  if (Hkv < 1 || Hq % Hkv != 0)
    return InvalidValue("k_cache: expected H_kv >= 1 dividing H_q = " + std::to_string(Hq) +
                        ", got H_kv = " + std::to_string(Hkv));
  if (S < N)
    return InvalidValue("k_cache: S = " + std::to_string(S) + " rows cannot hold the N = " +
                        std::to_string(N) + " tree rows");
  if (Hkv > 65535 || Hq / Hkv * N > INT32_MAX / 2 || S > INT32_MAX)
    return InvalidValue("q: shape too large for tree_attention");
  DIFFTREE_RETURN_IF_ERROR(checks::shape(prefix_len, "prefix_len", {B}, "[B]"));
  DIFFTREE_RETURN_IF_ERROR(index_tensor(prefix_len, "prefix_len", q, "q"));
  const bool tree = tree_anc != nullptr && !is_chain;
  if (tree) {
    DIFFTREE_RETURN_IF_ERROR(
        checks::shape(*tree_anc, "tree_anc", {B, N, anc_words(N)}, "[B, N, ceil(N / 32)]"));
    DIFFTREE_RETURN_IF_ERROR(checks::tensor(*tree_anc, "tree_anc", {DType::kInt32}, q, "q"));
  }
  if (num_nodes != nullptr) {
    DIFFTREE_RETURN_IF_ERROR(checks::shape(*num_nodes, "num_nodes", {B}, "[B]"));
    DIFFTREE_RETURN_IF_ERROR(index_tensor(*num_nodes, "num_nodes", q, "q"));
  }
  // x - x is NaN for NaN and +-inf.
  if (!(scale - scale == 0.0f)) return InvalidValue("scale: expected a finite softmax scale");
  // The variant (DESIGN.md §7).
  const int64_t W = variant.window;
  if (W < 0 || W > INT32_MAX)
    return InvalidValue("window: expected 0 (no sliding window) or a window W in [1, 2^31 - 1], "
                        "got " + std::to_string(W));
  if (variant.depth != nullptr) {
    DIFFTREE_RETURN_IF_ERROR(checks::shape(*variant.depth, "depth", {B, N}, "[B, N]"));
    DIFFTREE_RETURN_IF_ERROR(index_tensor(*variant.depth, "depth", q, "q"));
  } else if (W > 0 && tree) {
    return InvalidValue(
        "depth: a sliding window over a tree (tree_anc given, is_chain false) needs the rows' "
        "depth [B, N], got none");
  }
  if (variant.sinks != nullptr) {
    DIFFTREE_RETURN_IF_ERROR(checks::shape(*variant.sinks, "sinks", {Hq}, "[H_q]"));
    DIFFTREE_RETURN_IF_ERROR(checks::tensor(*variant.sinks, "sinks", {DType::kFloat32}, q, "q"));
  }
  if (variant.ring) {
    if (W < 1)
      return InvalidValue("ring: a ring cache needs a sliding window (window >= 1), got window = " +
                          std::to_string(W));
    if (S < W - 1 + N)
      return InvalidValue("ring: a ring of S = " + std::to_string(S) +
                          " slots cannot hold the window and the tree: expected S >= window - 1 "
                          "+ N = " + std::to_string(W - 1 + N));
  }
  return Status::Ok();
}

int64_t tree_attention_num_splits(int64_t B, int64_t H_q, int64_t H_kv, int64_t N, int64_t S_max) {
  if (!launchable({B, H_q, H_kv, N, S_max}) || B < 1 || H_kv < 1 || H_q < H_kv || N < 1) return 1;
  // Enough CTAs for ~2 waves of a 132-SM GPU, each split keeping >= 512 prefix keys.
  const int64_t m_tiles = (H_q / H_kv * N + 63) / 64;
  int64_t base = 0;
  if (__builtin_mul_overflow(B * H_kv, m_tiles, &base)) return 1;
  const int64_t want = (264 + base - 1) / base;
  const int64_t by_len = (S_max - N) / 512;
  int64_t splits = want < by_len ? want : by_len;
  splits = splits < 64 ? splits : 64;
  return splits < 1 ? 1 : splits;
}

size_t tree_attention_workspace_bytes(int64_t B, int64_t H_q, int64_t H_kv, int64_t N, int64_t D,
                                      int64_t S_max, int64_t num_splits) {
  if (!launchable({B, H_q, H_kv, N, D, S_max, num_splits})) return 0;
  const int64_t splits =
      num_splits > 0 ? num_splits : tree_attention_num_splits(B, H_q, H_kv, N, S_max);
  if (splits <= 1 || B < 1 || H_q < 1 || N < 1 || D < 1) return 0;
  return static_cast<size_t>(splits) * B * H_q * N * (D + 1) * sizeof(float);
}

Status tree_attention(const TensorView& q, const TensorView& k_cache, const TensorView& v_cache,
                      const TensorView& prefix_len, const TensorView* tree_anc,
                      const TensorView* num_nodes, float scale, bool is_chain, int64_t num_splits,
                      const TensorView& out, const TensorView* workspace, Stream stream,
                      const AttentionVariant& variant) {
  DIFFTREE_RETURN_IF_ERROR(check_tree_attention(q, k_cache, v_cache, prefix_len, tree_anc,
                                                num_nodes, scale, is_chain, variant));
  const int64_t B = q.shape[0], Hq = q.shape[1], N = q.shape[2], Dv = v_cache.shape[3];
  DIFFTREE_RETURN_IF_ERROR(
      checks::shape(out, "out", {B, Hq, N, Dv}, "[B, H_q, N, D_v] (D_v as v_cache)"));
  DIFFTREE_RETURN_IF_ERROR(attn_tensor(out, "out", {q.dtype}, q, "q"));
  DIFFTREE_RETURN_IF_ERROR(checks::in_range(num_splits, "num_splits", 0, 256));
  const bool chain = is_chain || tree_anc == nullptr;
  return route(
      "tree_attention", q, B == 0,
      [&]() -> Status {
        const int64_t Hkv = k_cache.shape[1], S = k_cache.shape[2];
        const int64_t splits =
            num_splits > 0 ? num_splits : tree_attention_num_splits(B, Hq, Hkv, N, S);
        const size_t need = tree_attention_workspace_bytes(B, Hq, Hkv, N, Dv, S, splits);
        void* ws = nullptr;
        DIFFTREE_RETURN_IF_ERROR(checked_workspace(
            workspace, need, q, "q",
            {"tree_attention", "tree_attention_workspace_bytes", splits, /*aligned16=*/true}, &ws));
        return cuda::tree_attention(q, k_cache, v_cache, prefix_len, chain ? nullptr : tree_anc,
                                    num_nodes, scale, chain, variant, static_cast<int>(splits),
                                    out, ws, stream);
      },
      [&] {
        return cpu::tree_attention(q, k_cache, v_cache, prefix_len, chain ? nullptr : tree_anc,
                                   num_nodes, scale, chain, variant, out);
      });
}

}  // namespace difftree
