// The C ABI (difftree/difftree.h): DLTensor descriptors -> TensorView, then the C++ API.
// Every entry point runs inside guarded(): no exception may cross into C.
#include "difftree/difftree.h"

#include <exception>
#include <initializer_list>
#include <limits>
#include <string>
#include <vector>

#include "difftree/build_info.h"
#include "difftree/dlpack_view.h"
#include "difftree/ops.h"

namespace {

using difftree::Status;
using difftree::TensorView;
using difftree::TreeView;

thread_local std::string g_last_error;

difftree_status finish(const Status& s) {
  if (s.ok()) return DIFFTREE_OK;
  g_last_error = s.message();
  return static_cast<difftree_status>(s.code());
}

// A required descriptor.
Status view(const DLTensor* t, const char* name, TensorView* out) {
  if (t == nullptr)
    return difftree::InvalidValue(std::string(name) + ": expected a tensor, got NULL");
  return difftree::view_from_dlpack(*t, name, out);
}

// A nullable descriptor, as the C++ API takes it: get() is NULL when the caller passed none.
class OptionalView {
 public:
  Status set(const DLTensor* t, const char* name) {
    present_ = t != nullptr;
    return present_ ? difftree::view_from_dlpack(*t, name, &view_) : Status::Ok();
  }
  const TensorView* get() const { return present_ ? &view_ : nullptr; }

 private:
  TensorView view_;
  bool present_ = false;
};

struct Arg {
  const DLTensor* t;
  const char* name;
  TensorView* out;
};
struct OptionalArg {
  const DLTensor* t;
  const char* name;
  OptionalView* out;
};

// Converts every descriptor of a call, failing on the first bad one (named).
Status views(std::initializer_list<Arg> required,
             std::initializer_list<OptionalArg> optional = {}) {
  for (const Arg& a : required) DIFFTREE_RETURN_IF_ERROR(view(a.t, a.name, a.out));
  for (const OptionalArg& a : optional) DIFFTREE_RETURN_IF_ERROR(a.out->set(a.t, a.name));
  return Status::Ok();
}

Status tree_view(const difftree_tree* t, TreeView* out) {
  if (t == nullptr) return difftree::InvalidValue("tree: expected a tree, got NULL");
  return views({{&t->token, "tree.token", &out->token},
                {&t->parent, "tree.parent", &out->parent},
                {&t->depth, "tree.depth", &out->depth},
                {&t->score, "tree.score", &out->score},
                {&t->first_child, "tree.first_child", &out->first_child},
                {&t->next_sibling, "tree.next_sibling", &out->next_sibling},
                {&t->anc, "tree.anc", &out->anc},
                {&t->num_nodes, "tree.num_nodes", &out->num_nodes}});
}

// NULL params mean the defaults.
template <typename Params>
Params or_default(const Params* params, Params (*defaults)()) {
  return params != nullptr ? *params : defaults();
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

// ---- params defaults ----------------------------------------------------------------------------

difftree_ddtree_params difftree_ddtree_default_params(void) { return difftree_ddtree_params{64}; }

difftree_walk_params difftree_walk_default_params(void) {
  return difftree_walk_params{nullptr, nullptr};
}

difftree_attention_params difftree_attention_default_params(void) {
  return difftree_attention_params{std::numeric_limits<float>::quiet_NaN(), 0, 0, 0, 0, nullptr,
                                   nullptr};
}

difftree_sampling_params difftree_sampling_default_params(void) {
  return difftree_sampling_params{nullptr, nullptr, nullptr, nullptr, nullptr};
}

difftree_caddtree_params difftree_caddtree_default_params(void) {
  return difftree_caddtree_params{64};
}

difftree_presto_params difftree_presto_default_params(void) {
  const difftree::PrestoParams p;
  return difftree_presto_params{64, p.order, p.alpha, p.lam, p.vocab};
}

difftree_taps_params difftree_taps_default_params(void) { return difftree_taps_params{64}; }

difftree_d2sd_params difftree_d2sd_default_params(void) { return difftree_d2sd_params{64}; }

// ---- workspace sizes (pure shape arithmetic) ----------------------------------------------------

int64_t difftree_topk_logprobs_num_splits(int64_t B, int64_t L, int64_t V, int64_t k) {
  return difftree::topk_logprobs_num_splits(B, L, V, k);
}

size_t difftree_topk_logprobs_workspace_bytes(int64_t B, int64_t L, int64_t V, int64_t k,
                                              int64_t num_splits) {
  return difftree::topk_logprobs_workspace_bytes(B, L, V, k, num_splits);
}

size_t difftree_ddtree_select_workspace_bytes(int64_t B, int64_t L, int64_t K, int64_t budget) {
  return difftree::ddtree_select_workspace_bytes(B, L, K, budget);
}

int64_t difftree_tree_attention_num_splits(int64_t B, int64_t H_q, int64_t H_kv, int64_t N,
                                           int64_t S) {
  return difftree::tree_attention_num_splits(B, H_q, H_kv, N, S);
}

size_t difftree_tree_attention_workspace_bytes(int64_t B, int64_t H_q, int64_t H_kv, int64_t N,
                                               int64_t D, int64_t S, int64_t num_splits) {
  return difftree::tree_attention_workspace_bytes(B, H_q, H_kv, N, D, S, num_splits);
}

size_t difftree_presto_select_workspace_bytes(int64_t B, int64_t L, int64_t K, int64_t budget,
                                              int64_t order) {
  return difftree::presto_select_workspace_bytes(B, L, K, budget, order);
}

size_t difftree_taps_select_workspace_bytes(int64_t B, int64_t P1, int64_t budget) {
  return difftree::taps_select_workspace_bytes(B, P1, budget);
}

size_t difftree_d2sd_select_workspace_bytes(int64_t B, int64_t L1, int64_t K, int64_t L2,
                                            int64_t budget) {
  return difftree::d2sd_select_workspace_bytes(B, L1, K, L2, budget);
}

// ---- core ops -----------------------------------------------------------------------------------

difftree_status difftree_topk_logprobs(const DLTensor* logits, int64_t k, const DLTensor* token,
                                       const DLTensor* logprob, void* stream) {
  return guarded([&]() -> Status {
    TensorView l, t, p;
    DIFFTREE_RETURN_IF_ERROR(
        views({{logits, "logits", &l}, {token, "token", &t}, {logprob, "logprob", &p}}));
    return difftree::topk_logprobs(l, k, t, p, stream);
  });
}

difftree_status difftree_topk_logprobs_split(const DLTensor* logits, int64_t k, int64_t num_splits,
                                             const DLTensor* token, const DLTensor* logprob,
                                             const DLTensor* row_error, const DLTensor* workspace,
                                             void* stream) {
  return guarded([&]() -> Status {
    TensorView l, t, p;
    OptionalView err, ws;
    DIFFTREE_RETURN_IF_ERROR(
        views({{logits, "logits", &l}, {token, "token", &t}, {logprob, "logprob", &p}},
              {{row_error, "row_error", &err}, {workspace, "workspace", &ws}}));
    return difftree::topk_logprobs(l, k, t, p, err.get(), num_splits, ws.get(), stream);
  });
}

difftree_status difftree_ddtree_select(const DLTensor* cand_token, const DLTensor* cand_logprob,
                                       const DLTensor* root_token,
                                       const difftree_ddtree_params* params,
                                       const difftree_tree* tree, void* stream) {
  return difftree_ddtree_select_with_workspace(cand_token, cand_logprob, root_token, params, tree,
                                               nullptr, stream);
}

difftree_status difftree_ddtree_select_with_workspace(const DLTensor* cand_token,
                                                      const DLTensor* cand_logprob,
                                                      const DLTensor* root_token,
                                                      const difftree_ddtree_params* params,
                                                      const difftree_tree* tree,
                                                      const DLTensor* workspace, void* stream) {
  return guarded([&]() -> Status {
    TensorView ct, cl;
    OptionalView root, ws;
    TreeView tv;
    const difftree_ddtree_params p = or_default(params, difftree_ddtree_default_params);
    DIFFTREE_RETURN_IF_ERROR(
        views({{cand_token, "cand_token", &ct}, {cand_logprob, "cand_logprob", &cl}},
              {{root_token, "root_token", &root}, {workspace, "workspace", &ws}}));
    DIFFTREE_RETURN_IF_ERROR(tree_view(tree, &tv));
    return difftree::ddtree_select(ct, cl, p.budget, root.get(), tv, ws.get(), stream);
  });
}

difftree_status difftree_tree_walk(const difftree_tree* tree, const DLTensor* node_choice,
                                   const difftree_walk_params* params, const DLTensor* path,
                                   const DLTensor* accepted, const DLTensor* next_token,
                                   const DLTensor* done, void* stream) {
  return guarded([&]() -> Status {
    TreeView tv;
    TensorView choice;
    OptionalView stops, remaining;
    difftree::WalkOutputs out;
    const difftree_walk_params p = or_default(params, difftree_walk_default_params);
    DIFFTREE_RETURN_IF_ERROR(tree_view(tree, &tv));
    DIFFTREE_RETURN_IF_ERROR(views({{node_choice, "node_choice", &choice},
                                    {path, "path", &out.path},
                                    {accepted, "accepted", &out.accepted},
                                    {next_token, "next_token", &out.next_token},
                                    {done, "done", &out.done}},
                                   {{p.stop_tokens, "stop_tokens", &stops},
                                    {p.remaining, "remaining", &remaining}}));
    return difftree::tree_walk(tv, choice, stops.get(), remaining.get(), out, stream);
  });
}

difftree_status difftree_kv_commit(const DLTensor* const* caches, int32_t num_caches,
                                   const DLTensor* base_len, const DLTensor* path,
                                   const DLTensor* accepted, void* stream) {
  return difftree_kv_commit_ring(caches, num_caches, base_len, path, accepted, 0, stream);
}

difftree_status difftree_kv_commit_ring(const DLTensor* const* caches, int32_t num_caches,
                                        const DLTensor* base_len, const DLTensor* path,
                                        const DLTensor* accepted, int32_t ring, void* stream) {
  return guarded([&]() -> Status {
    if (num_caches < 0 || (num_caches > 0 && caches == nullptr))
      return difftree::InvalidValue("caches: expected num_caches >= 0 descriptors, got NULL");
    std::vector<TensorView> cache_views(static_cast<size_t>(num_caches));
    for (int32_t c = 0; c < num_caches; ++c) {
      const std::string name = "caches[" + std::to_string(c) + "]";
      DIFFTREE_RETURN_IF_ERROR(view(caches[c], name.c_str(), &cache_views[c]));
    }
    TensorView b, p, a;
    DIFFTREE_RETURN_IF_ERROR(
        views({{base_len, "base_len", &b}, {path, "path", &p}, {accepted, "accepted", &a}}));
    return difftree::kv_commit(cache_views.data(), num_caches, b, p, a, stream, ring != 0);
  });
}

difftree_status difftree_tree_attention(const DLTensor* q, const DLTensor* k_cache,
                                        const DLTensor* v_cache, const DLTensor* prefix_len,
                                        const DLTensor* tree_anc, const DLTensor* num_nodes,
                                        const difftree_attention_params* params,
                                        const DLTensor* out, const DLTensor* workspace,
                                        void* stream) {
  return guarded([&]() -> Status {
    if (params == nullptr)
      return difftree::InvalidValue(
          "params: expected difftree_attention_params (the scale has no default), got NULL");
    TensorView qv, kv, vv, plen, o;
    OptionalView anc, nodes, ws, depth, sinks;
    DIFFTREE_RETURN_IF_ERROR(views({{q, "q", &qv},
                                    {k_cache, "k_cache", &kv},
                                    {v_cache, "v_cache", &vv},
                                    {prefix_len, "prefix_len", &plen},
                                    {out, "out", &o}},
                                   {{tree_anc, "tree_anc", &anc},
                                    {num_nodes, "num_nodes", &nodes},
                                    {workspace, "workspace", &ws},
                                    {params->depth, "depth", &depth},
                                    {params->sinks, "sinks", &sinks}}));
    difftree::AttentionVariant variant;
    variant.depth = depth.get();
    variant.sinks = sinks.get();
    variant.window = params->window;
    variant.ring = params->ring != 0;
    return difftree::tree_attention(qv, kv, vv, plen, anc.get(), nodes.get(), params->scale,
                                    params->is_chain != 0, params->num_splits, o, ws.get(),
                                    stream, variant);
  });
}

difftree_status difftree_node_select(const DLTensor* logits, const difftree_sampling_params* params,
                                     const DLTensor* out, void* stream) {
  return guarded([&]() -> Status {
    TensorView l, o;
    OptionalView temperature, top_k, top_p, seed, round_idx;
    const difftree_sampling_params p = or_default(params, difftree_sampling_default_params);
    DIFFTREE_RETURN_IF_ERROR(views({{logits, "logits", &l}, {out, "out", &o}},
                                   {{p.temperature, "temperature", &temperature},
                                    {p.top_k, "top_k", &top_k},
                                    {p.top_p, "top_p", &top_p},
                                    {p.seed, "seed", &seed},
                                    {p.round_idx, "round_idx", &round_idx}}));
    const difftree::SamplingViews sampling{temperature.get(), top_k.get(), top_p.get(), seed.get(),
                                           round_idx.get()};
    return difftree::node_select(l, sampling, o, stream);
  });
}

// ---- policy selectors ---------------------------------------------------------------------------

difftree_status difftree_caddtree_select(const DLTensor* cand_token, const DLTensor* cand_logprob,
                                         const DLTensor* root_token, const DLTensor* verify_cost,
                                         const DLTensor* draft_cost,
                                         const difftree_caddtree_params* params,
                                         const difftree_tree* tree, const DLTensor* workspace,
                                         void* stream) {
  return guarded([&]() -> Status {
    TensorView ct, cl, vc, dc;
    OptionalView root, ws;
    TreeView tv;
    const difftree_caddtree_params p = or_default(params, difftree_caddtree_default_params);
    DIFFTREE_RETURN_IF_ERROR(views({{cand_token, "cand_token", &ct},
                                    {cand_logprob, "cand_logprob", &cl},
                                    {verify_cost, "verify_cost", &vc},
                                    {draft_cost, "draft_cost", &dc}},
                                   {{root_token, "root_token", &root},
                                    {workspace, "workspace", &ws}}));
    DIFFTREE_RETURN_IF_ERROR(tree_view(tree, &tv));
    return difftree::caddtree_select(ct, cl, p.max_budget, root.get(), vc, dc, tv, ws.get(),
                                     stream);
  });
}

difftree_status difftree_ngram_update(const DLTensor* keys, const DLTensor* counts,
                                      const DLTensor* tokens, int64_t start, int64_t order,
                                      int64_t* new_keys) {
  return guarded([&]() -> Status {
    TensorView k, c, t;
    DIFFTREE_RETURN_IF_ERROR(
        views({{keys, "keys", &k}, {counts, "counts", &c}, {tokens, "tokens", &t}}));
    return difftree::ngram_update(k, c, t, start, order, new_keys);
  });
}

difftree_status difftree_ngram_extend(const DLTensor* keys, const DLTensor* counts,
                                      const DLTensor* history, const DLTensor* tokens,
                                      const DLTensor* num_tokens, int64_t order,
                                      const DLTensor* overflow, void* stream) {
  return guarded([&]() -> Status {
    TensorView k, c, h, t, n;
    OptionalView of;
    DIFFTREE_RETURN_IF_ERROR(views({{keys, "keys", &k},
                                    {counts, "counts", &c},
                                    {history, "history", &h},
                                    {tokens, "tokens", &t},
                                    {num_tokens, "num_tokens", &n}},
                                   {{overflow, "overflow", &of}}));
    return difftree::ngram_extend(k, c, h, t, n, order, of.get(), stream);
  });
}

difftree_status difftree_presto_select(const DLTensor* cand_token, const DLTensor* cand_logprob,
                                       const DLTensor* root_token, const DLTensor* context,
                                       const DLTensor* keys, const DLTensor* counts,
                                       const difftree_presto_params* params,
                                       const difftree_tree* tree, const DLTensor* workspace,
                                       void* stream) {
  return guarded([&]() -> Status {
    TensorView ct, cl, ctx, k, c;
    OptionalView root, ws;
    TreeView tv;
    const difftree_presto_params p = or_default(params, difftree_presto_default_params);
    DIFFTREE_RETURN_IF_ERROR(views({{cand_token, "cand_token", &ct},
                                    {cand_logprob, "cand_logprob", &cl},
                                    {context, "context", &ctx},
                                    {keys, "keys", &k},
                                    {counts, "counts", &c}},
                                   {{root_token, "root_token", &root},
                                    {workspace, "workspace", &ws}}));
    DIFFTREE_RETURN_IF_ERROR(tree_view(tree, &tv));
    difftree::PrestoParams prior;
    prior.order = p.order;
    prior.alpha = p.alpha;
    prior.lam = p.lam;
    prior.vocab = p.vocab;
    return difftree::presto_select(ct, cl, p.budget, root.get(), ctx, k, c, prior, tv, ws.get(),
                                   stream);
  });
}

difftree_status difftree_taps_select(const DLTensor* pool_token, const DLTensor* pool_parent,
                                     const DLTensor* pool_size, const DLTensor* log_qc,
                                     const difftree_taps_params* params,
                                     const difftree_tree* tree, const DLTensor* workspace,
                                     void* stream) {
  return guarded([&]() -> Status {
    TensorView pt, pp, ps, lq;
    OptionalView ws;
    TreeView tv;
    const difftree_taps_params p = or_default(params, difftree_taps_default_params);
    DIFFTREE_RETURN_IF_ERROR(views({{pool_token, "pool_token", &pt},
                                    {pool_parent, "pool_parent", &pp},
                                    {pool_size, "pool_size", &ps},
                                    {log_qc, "log_qc", &lq}},
                                   {{workspace, "workspace", &ws}}));
    DIFFTREE_RETURN_IF_ERROR(tree_view(tree, &tv));
    return difftree::taps_select(pt, pp, ps, lq, p.budget, tv, ws.get(), stream);
  });
}

difftree_status difftree_d2sd_boundaries(const DLTensor* trunk_logprob, const DLTensor* boundary,
                                         void* stream) {
  return guarded([&]() -> Status {
    TensorView lp, bd;
    DIFFTREE_RETURN_IF_ERROR(
        views({{trunk_logprob, "trunk_logprob", &lp}, {boundary, "boundary", &bd}}));
    return difftree::d2sd_boundaries(lp, bd, stream);
  });
}

difftree_status difftree_d2sd_select(const DLTensor* trunk_token, const DLTensor* trunk_logprob,
                                     const DLTensor* boundary, const DLTensor* branch_token,
                                     const DLTensor* branch_logprob, const DLTensor* root_token,
                                     const difftree_d2sd_params* params,
                                     const difftree_tree* tree, const DLTensor* workspace,
                                     void* stream) {
  return guarded([&]() -> Status {
    TensorView tt, tl, bd, bt, bl;
    OptionalView root, ws;
    TreeView tv;
    const difftree_d2sd_params p = or_default(params, difftree_d2sd_default_params);
    DIFFTREE_RETURN_IF_ERROR(views({{trunk_token, "trunk_token", &tt},
                                    {trunk_logprob, "trunk_logprob", &tl},
                                    {boundary, "boundary", &bd},
                                    {branch_token, "branch_token", &bt},
                                    {branch_logprob, "branch_logprob", &bl}},
                                   {{root_token, "root_token", &root},
                                    {workspace, "workspace", &ws}}));
    DIFFTREE_RETURN_IF_ERROR(tree_view(tree, &tv));
    return difftree::d2sd_select(tt, tl, bd, bt, bl, p.budget, root.get(), tv, ws.get(), stream);
  });
}

}  // extern "C"
