// The C ABI (difftree/difftree.h): DLTensor descriptors -> TensorView, then the C++ API.
// Every entry point catches everything: no exception may cross into C.
#include "difftree/difftree.h"

#include <exception>
#include <string>
#include <vector>

#include "difftree/build_info.h"
#include "difftree/dlpack_view.h"
#include "difftree/ops.h"

namespace {

using difftree::Status;
using difftree::TensorView;

thread_local std::string g_last_error;

difftree_status finish(const Status& s) {
  if (s.ok()) return DIFFTREE_OK;
  g_last_error = s.message();
  return static_cast<difftree_status>(s.code());
}

// Converts a required (or, with `optional`, nullable) descriptor.
Status view(const DLTensor* t, const char* name, TensorView* out, bool optional = false) {
  if (t == nullptr) {
    if (optional) return Status::Ok();
    return difftree::InvalidValue(std::string(name) + ": expected a tensor, got NULL");
  }
  return difftree::view_from_dlpack(*t, name, out);
}

Status tree_view(const difftree_tree* t, difftree::TreeView* out) {
  if (t == nullptr) return difftree::InvalidValue("tree: expected a tree, got NULL");
  DIFFTREE_RETURN_IF_ERROR(view(&t->token, "tree.token", &out->token));
  DIFFTREE_RETURN_IF_ERROR(view(&t->parent, "tree.parent", &out->parent));
  DIFFTREE_RETURN_IF_ERROR(view(&t->depth, "tree.depth", &out->depth));
  DIFFTREE_RETURN_IF_ERROR(view(&t->score, "tree.score", &out->score));
  DIFFTREE_RETURN_IF_ERROR(view(&t->first_child, "tree.first_child", &out->first_child));
  DIFFTREE_RETURN_IF_ERROR(view(&t->next_sibling, "tree.next_sibling", &out->next_sibling));
  DIFFTREE_RETURN_IF_ERROR(view(&t->anc, "tree.anc", &out->anc));
  return view(&t->num_nodes, "tree.num_nodes", &out->num_nodes);
}

template <typename Fn>
difftree_status guarded(Fn&& fn) {
  try {
    g_last_error.clear();
    return finish(fn());
  } catch (const std::exception& e) {
    g_last_error = std::string("internal error: ") + e.what();
  } catch (...) {
    g_last_error = "internal error: unknown exception";
  }
  return DIFFTREE_INTERNAL;
}

}  // namespace

extern "C" {

uint32_t difftree_abi_version(void) { return DIFFTREE_ABI_VERSION; }

const char* difftree_status_string(difftree_status status) {
  switch (status) {
    case DIFFTREE_OK: return "DIFFTREE_OK";
    case DIFFTREE_INVALID_VALUE: return "DIFFTREE_INVALID_VALUE";
    case DIFFTREE_INVALID_TYPE: return "DIFFTREE_INVALID_TYPE";
    case DIFFTREE_UNSUPPORTED: return "DIFFTREE_UNSUPPORTED";
    case DIFFTREE_INTERNAL: return "DIFFTREE_INTERNAL";
  }
  return "DIFFTREE_UNKNOWN_STATUS";
}

const char* difftree_last_error(void) { return g_last_error.c_str(); }

int difftree_build_has_cuda(void) { return difftree::build_info().cuda_compiled ? 1 : 0; }

difftree_ddtree_params difftree_ddtree_default_params(void) { return difftree_ddtree_params{64}; }

difftree_walk_params difftree_walk_default_params(void) {
  return difftree_walk_params{nullptr, nullptr};
}

difftree_status difftree_topk_logprobs(const DLTensor* logits, int64_t k, const DLTensor* token,
                                       const DLTensor* logprob, void* stream) {
  return guarded([&]() -> Status {
    TensorView l, t, p;
    DIFFTREE_RETURN_IF_ERROR(view(logits, "logits", &l));
    DIFFTREE_RETURN_IF_ERROR(view(token, "token", &t));
    DIFFTREE_RETURN_IF_ERROR(view(logprob, "logprob", &p));
    return difftree::topk_logprobs(l, k, t, p, stream);
  });
}

difftree_status difftree_ddtree_select(const DLTensor* cand_token, const DLTensor* cand_logprob,
                                       const DLTensor* root_token,
                                       const difftree_ddtree_params* params,
                                       const difftree_tree* tree, void* stream) {
  return guarded([&]() -> Status {
    TensorView ct, cl, root;
    difftree::TreeView tv;
    DIFFTREE_RETURN_IF_ERROR(view(cand_token, "cand_token", &ct));
    DIFFTREE_RETURN_IF_ERROR(view(cand_logprob, "cand_logprob", &cl));
    DIFFTREE_RETURN_IF_ERROR(view(root_token, "root_token", &root, /*optional=*/true));
    DIFFTREE_RETURN_IF_ERROR(tree_view(tree, &tv));
    const difftree_ddtree_params p = params ? *params : difftree_ddtree_default_params();
    return difftree::ddtree_select(ct, cl, p.budget, root_token ? &root : nullptr, tv, stream);
  });
}

difftree_status difftree_tree_walk(const difftree_tree* tree, const DLTensor* node_choice,
                                   const difftree_walk_params* params, const DLTensor* path,
                                   const DLTensor* accepted, const DLTensor* next_token,
                                   const DLTensor* done, void* stream) {
  return guarded([&]() -> Status {
    difftree::TreeView tv;
    TensorView choice, stops, remaining;
    difftree::WalkOutputs out;
    const difftree_walk_params p = params ? *params : difftree_walk_default_params();
    DIFFTREE_RETURN_IF_ERROR(tree_view(tree, &tv));
    DIFFTREE_RETURN_IF_ERROR(view(node_choice, "node_choice", &choice));
    DIFFTREE_RETURN_IF_ERROR(view(p.stop_tokens, "stop_tokens", &stops, true));
    DIFFTREE_RETURN_IF_ERROR(view(p.remaining, "remaining", &remaining, true));
    DIFFTREE_RETURN_IF_ERROR(view(path, "path", &out.path));
    DIFFTREE_RETURN_IF_ERROR(view(accepted, "accepted", &out.accepted));
    DIFFTREE_RETURN_IF_ERROR(view(next_token, "next_token", &out.next_token));
    DIFFTREE_RETURN_IF_ERROR(view(done, "done", &out.done));
    return difftree::tree_walk(tv, choice, p.stop_tokens ? &stops : nullptr,
                               p.remaining ? &remaining : nullptr, out, stream);
  });
}

difftree_status difftree_kv_commit(const DLTensor* const* caches, int32_t num_caches,
                                   const DLTensor* base_len, const DLTensor* path,
                                   const DLTensor* accepted, void* stream) {
  return guarded([&]() -> Status {
    if (num_caches < 0 || (num_caches > 0 && caches == nullptr))
      return difftree::InvalidValue("caches: expected num_caches >= 0 descriptors, got NULL");
    std::vector<TensorView> views(static_cast<size_t>(num_caches));
    for (int32_t c = 0; c < num_caches; ++c) {
      const std::string name = "caches[" + std::to_string(c) + "]";
      DIFFTREE_RETURN_IF_ERROR(view(caches[c], name.c_str(), &views[c]));
    }
    TensorView b, p, a;
    DIFFTREE_RETURN_IF_ERROR(view(base_len, "base_len", &b));
    DIFFTREE_RETURN_IF_ERROR(view(path, "path", &p));
    DIFFTREE_RETURN_IF_ERROR(view(accepted, "accepted", &a));
    return difftree::kv_commit(views.data(), num_caches, b, p, a, stream);
  });
}

}  // extern "C"
