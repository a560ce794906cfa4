// Dispatch: validate every argument once, then route to the CPU implementation or a CUDA
// launcher. Nothing below this layer re-checks shapes, dtypes or devices.
#include "difftree/ops.h"

#include <sstream>
#include <string>

#include "cpu/cpu_ops.h"
#include "dispatch/checks.h"
#ifdef DIFFTREE_WITH_CUDA
#include "launchers.h"
#endif

namespace difftree {
namespace cpu {
Status node_select(const TensorView& logits, const SamplingViews& params, const TensorView& out);
}  // namespace cpu
namespace {

Status index_tensor(const TensorView& t, const char* name, const TensorView& ref,
                    const char* ref_name) {
  return checks::tensor(t, name, {DType::kInt32, DType::kInt64}, ref, ref_name);
}

#ifndef DIFFTREE_WITH_CUDA
Status cuda_not_compiled(const char* op) {
  return Unsupported(std::string(op) +
                     ": got CUDA tensors but this build of difftree_rt has no CUDA kernels "
                     "(rebuild with DIFFTREE_CUDA=ON, see difftree_rt.build_info())");
}
#endif

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
  DIFFTREE_RETURN_IF_ERROR(checks::tensor(tree.anc, "tree.anc", {DType::kInt32}, ref, "tree.token"));
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
  DIFFTREE_RETURN_IF_ERROR(check_topk_logprobs(logits, k));
  const int64_t B = logits.shape[0], L = logits.shape[1];
  DIFFTREE_RETURN_IF_ERROR(checks::shape(token, "token", {B, L, k}, "[B, L, K]"));
  DIFFTREE_RETURN_IF_ERROR(checks::tensor(token, "token", {DType::kInt32}, logits, "logits"));
  DIFFTREE_RETURN_IF_ERROR(checks::shape(logprob, "logprob", {B, L, k}, "[B, L, K]"));
  DIFFTREE_RETURN_IF_ERROR(
      checks::tensor(logprob, "logprob", {DType::kFloat32}, logits, "logits"));
  if (row_error != nullptr) {
    DIFFTREE_RETURN_IF_ERROR(checks::shape(*row_error, "row_error", {B, L}, "[B, L]"));
    DIFFTREE_RETURN_IF_ERROR(
        checks::tensor(*row_error, "row_error", {DType::kInt32}, logits, "logits"));
  }
  if (logits.device == DeviceType::kCUDA) {
#ifdef DIFFTREE_WITH_CUDA
    if (k > kMaxCudaTopK)
      return Unsupported("topk_logprobs: the CUDA kernel supports k <= 4096, got k = " +
                         std::to_string(k));
    return cuda::topk_logprobs(logits, k, token, logprob, row_error, stream);
#else
    (void)stream;
    return cuda_not_compiled("topk_logprobs");
#endif
  }
  (void)stream;
  DIFFTREE_RETURN_IF_ERROR(cpu::topk_logprobs(logits, k, token, logprob));
  if (row_error != nullptr) {
    int32_t* e = row_error->ptr<int32_t>();
    for (int64_t i = 0; i < B * L; ++i) e[i] = 0;
  }
  return Status::Ok();
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
#ifdef DIFFTREE_WITH_CUDA
  return cuda::ddtree_select_workspace_bytes(B, L, K, budget);
#else
  (void)B, (void)L, (void)K, (void)budget;
  return 0;
#endif
}

Status ddtree_select(const TensorView& cand_token, const TensorView& cand_logprob, int64_t budget,
                     const TensorView* root_token, const TreeView& tree,
                     const TensorView* workspace, Stream stream) {
  DIFFTREE_RETURN_IF_ERROR(check_ddtree_select(cand_token, cand_logprob, budget, root_token));
  DIFFTREE_RETURN_IF_ERROR(check_tree(tree));
  const int64_t B = cand_logprob.shape[0];
  if (tree.token.shape[0] != B || tree.token.shape[1] != budget + 1) {
    std::ostringstream os;
    os << "tree.token: expected shape [B, budget + 1] = [" << B << ", " << budget + 1
       << "], got " << shape_string(tree.token);
    return InvalidValue(os.str());
  }
  DIFFTREE_RETURN_IF_ERROR(
      checks::same_device(tree.token, "tree.token", cand_logprob, "cand_logprob"));
  if (cand_logprob.device == DeviceType::kCUDA) {
#ifdef DIFFTREE_WITH_CUDA
    const int64_t L = cand_logprob.shape[1], K = cand_logprob.shape[2];
    const size_t need = cuda::ddtree_select_workspace_bytes(B, L, K, budget);
    if (need > 0) {
      if (workspace == nullptr)
        return InvalidValue("workspace: the CUDA ddtree_select needs a workspace of " +
                            std::to_string(need) +
                            " bytes (see ddtree_select_workspace_bytes)");
      DIFFTREE_RETURN_IF_ERROR(checks::ndim(*workspace, "workspace", 1, "[bytes]"));
      DIFFTREE_RETURN_IF_ERROR(checks::tensor(*workspace, "workspace", {DType::kUInt8},
                                              cand_logprob, "cand_logprob"));
      if (static_cast<size_t>(workspace->shape[0]) < need)
        return InvalidValue("workspace: expected at least " + std::to_string(need) +
                            " bytes, got " + std::to_string(workspace->shape[0]));
    }
    return cuda::ddtree_select(cand_token, cand_logprob, budget, root_token, tree,
                               need > 0 ? workspace->data : nullptr, need, stream);
#else
    (void)workspace;
    (void)stream;
    return cuda_not_compiled("ddtree_select");
#endif
  }
  (void)workspace;
  (void)stream;
  return cpu::ddtree_select(cand_token, cand_logprob, budget, root_token, tree);
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

Status tree_walk(const TreeView& tree, const TensorView& node_choice,
                 const TensorView* stop_tokens, const TensorView* remaining,
                 const WalkOutputs& out, Stream stream) {
  DIFFTREE_RETURN_IF_ERROR(check_tree_walk(tree, node_choice, stop_tokens, remaining));
  const int64_t B = tree.token.shape[0];
  DIFFTREE_RETURN_IF_ERROR(checks::shape(out.path, "path", {B, -1}, "[B, P]"));
  if (out.path.shape[1] < 1) return InvalidValue("path: expected at least one column (the root)");
  DIFFTREE_RETURN_IF_ERROR(checks::tensor(out.path, "path", {DType::kInt32}, tree.token, "tree.token"));
  DIFFTREE_RETURN_IF_ERROR(checks::shape(out.accepted, "accepted", {B}, "[B]"));
  DIFFTREE_RETURN_IF_ERROR(
      checks::tensor(out.accepted, "accepted", {DType::kInt32}, tree.token, "tree.token"));
  DIFFTREE_RETURN_IF_ERROR(checks::shape(out.next_token, "next_token", {B}, "[B]"));
  DIFFTREE_RETURN_IF_ERROR(
      checks::tensor(out.next_token, "next_token", {DType::kInt32}, tree.token, "tree.token"));
  DIFFTREE_RETURN_IF_ERROR(checks::shape(out.done, "done", {B}, "[B]"));
  DIFFTREE_RETURN_IF_ERROR(
      checks::tensor(out.done, "done", {DType::kBool, DType::kUInt8}, tree.token, "tree.token"));
  if (tree.token.device == DeviceType::kCUDA) {
#ifdef DIFFTREE_WITH_CUDA
    return cuda::tree_walk(tree, node_choice, stop_tokens, remaining, out, stream);
#else
    return cuda_not_compiled("tree_walk");
#endif
  }
  (void)stream;
  return cpu::tree_walk(tree, node_choice, stop_tokens, remaining, out);
}

// ---- kv_commit ------------------------------------------------------------------------------

Status check_kv_commit(const TensorView* caches, int num_caches, const TensorView& base_len,
                       const TensorView& path, const TensorView& accepted) {
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
  DIFFTREE_RETURN_IF_ERROR(checks::shape(caches[0], "caches[0]", {B, -1, -1, -1}, "[B, H, S, D]"));
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
    return InvalidValue("caches[0]: expected rows of at most 4096 bytes (H * D layouts with "
                        "D * element size <= 4096)");
  return Status::Ok();
}

Status kv_commit(const TensorView* caches, int num_caches, const TensorView& base_len,
                 const TensorView& path, const TensorView& accepted, Stream stream) {
  DIFFTREE_RETURN_IF_ERROR(check_kv_commit(caches, num_caches, base_len, path, accepted));
  if (path.device == DeviceType::kCUDA) {
#ifdef DIFFTREE_WITH_CUDA
    return cuda::kv_commit(caches, num_caches, base_len, path, accepted, stream);
#else
    return cuda_not_compiled("kv_commit");
#endif
  }
  (void)stream;
  return cpu::kv_commit(caches, num_caches, base_len, path, accepted);
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
  if (logits.device == DeviceType::kCUDA) {
#ifdef DIFFTREE_WITH_CUDA
    return cuda::node_select(logits, params, out, stream);
#else
    (void)stream;
    return cuda_not_compiled("node_select");
#endif
  }
  (void)stream;
  return cpu::node_select(logits, params, out);
}

}  // namespace difftree
