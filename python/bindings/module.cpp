// difftree_rt._C: DLPack capsules in, Status turned into Python exceptions. No logic lives here.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <optional>
#include <vector>

#include "difftree/difftree.hpp"
#include "difftree/dlpack_view.h"

namespace py = pybind11;
using difftree::Status;
using difftree::StatusCode;
using difftree::TensorView;

namespace {

void raise_if_error(const Status& s) {
  switch (s.code()) {
    case StatusCode::kOk:
      return;
    case StatusCode::kInvalidValue:
      throw py::value_error(s.message());
    case StatusCode::kInvalidType:
      throw py::type_error(s.message());
    case StatusCode::kUnsupported:
      PyErr_SetString(PyExc_NotImplementedError, s.message().c_str());
      throw py::error_already_set();
    default:
      throw std::runtime_error(s.message());
  }
}

// Views a "dltensor" capsule without consuming it: the producer keeps ownership and the capsule's
// destructor releases it, while the caller keeps the tensor alive for the duration of the call.
TensorView view(const py::handle& capsule, const char* name) {
  if (!PyCapsule_IsValid(capsule.ptr(), "dltensor"))
    throw py::type_error(std::string(name) + ": expected a DLPack capsule");
  auto* managed = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(capsule.ptr(), "dltensor"));
  TensorView v;
  raise_if_error(difftree::view_from_dlpack(managed->dl_tensor, name, &v));
  return v;
}

std::optional<TensorView> maybe_view(const py::object& capsule, const char* name) {
  if (capsule.is_none()) return std::nullopt;
  return view(capsule, name);
}

const TensorView* ptr(const std::optional<TensorView>& v) { return v ? &*v : nullptr; }

// A tree crosses as the 8-tuple of DESIGN.md §2 in that order.
difftree::TreeView tree_view(const py::tuple& t) {
  if (t.size() != 8)
    throw py::value_error(
        "tree: expected 8 arrays (token, parent, depth, score, first_child, "
        "next_sibling, anc, num_nodes)");
  return {view(t[0], "tree.token"), view(t[1], "tree.parent"),      view(t[2], "tree.depth"),
          view(t[3], "tree.score"), view(t[4], "tree.first_child"), view(t[5], "tree.next_sibling"),
          view(t[6], "tree.anc"),   view(t[7], "tree.num_nodes")};
}

std::vector<TensorView> views(const py::sequence& caps, const char* name) {
  std::vector<TensorView> out;
  out.reserve(caps.size());
  for (size_t i = 0; i < caps.size(); ++i) {
    const std::string n = std::string(name) + "[" + std::to_string(i) + "]";
    out.push_back(view(caps[i], n.c_str()));
  }
  return out;
}

difftree::Stream stream_ptr(uintptr_t s) { return reinterpret_cast<difftree::Stream>(s); }

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "difftree_rt core (C++/CUDA). Use difftree_rt.ops, not this module directly.";

  m.def("build_info", [] {
    const auto& b = difftree::build_info();
    py::dict d;
    d["cuda_compiled"] = b.cuda_compiled;
    d["cuda_architectures"] = b.cuda_architectures;
    d["cuda_version"] = b.cuda_version;
    d["compiler"] = b.compiler;
    d["git_sha"] = b.git_sha;
    d["version"] = b.version;
    return d;
  });
  m.def("set_max_threads", &difftree::cpu::set_max_threads, py::arg("n"));
  m.def("max_threads", &difftree::cpu::max_threads);

  m.def("check_topk_logprobs", [](py::handle logits, int64_t k) {
    raise_if_error(difftree::check_topk_logprobs(view(logits, "logits"), k));
  });
  m.def("topk_logprobs",
        [](py::handle logits, int64_t k, py::handle token, py::handle logprob, uintptr_t stream) {
          raise_if_error(difftree::topk_logprobs(view(logits, "logits"), k, view(token, "token"),
                                                 view(logprob, "logprob"), stream_ptr(stream)));
        });
  m.def("topk_logprobs_flagged", [](py::handle logits, int64_t k, py::handle token,
                                    py::handle logprob, py::object row_error, uintptr_t stream) {
    auto err = maybe_view(row_error, "row_error");
    raise_if_error(difftree::topk_logprobs(view(logits, "logits"), k, view(token, "token"),
                                           view(logprob, "logprob"), ptr(err), stream_ptr(stream)));
  });
  m.def("topk_logprobs_split",
        [](py::handle logits, int64_t k, py::handle token, py::handle logprob, py::object row_error,
           int64_t num_splits, py::object workspace, uintptr_t stream) {
          auto err = maybe_view(row_error, "row_error");
          auto ws = maybe_view(workspace, "workspace");
          raise_if_error(difftree::topk_logprobs(view(logits, "logits"), k, view(token, "token"),
                                                 view(logprob, "logprob"), ptr(err), num_splits,
                                                 ptr(ws), stream_ptr(stream)));
        });
  m.def("topk_logprobs_num_splits", [](int64_t B, int64_t L, int64_t V, int64_t k) {
    return difftree::topk_logprobs_num_splits(B, L, V, k);
  });
  m.def("topk_logprobs_workspace_bytes",
        [](int64_t B, int64_t L, int64_t V, int64_t k, int64_t num_splits) {
          return difftree::topk_logprobs_workspace_bytes(B, L, V, k, num_splits);
        });

  m.def("check_ddtree_select", [](py::handle cand_token, py::handle cand_logprob, int64_t budget,
                                  py::object root_token) {
    auto root = maybe_view(root_token, "root_token");
    raise_if_error(difftree::check_ddtree_select(
        view(cand_token, "cand_token"), view(cand_logprob, "cand_logprob"), budget, ptr(root)));
  });
  m.def(
      "ddtree_select",
      [](py::handle cand_token, py::handle cand_logprob, int64_t budget, py::object root_token,
         py::tuple tree, uintptr_t stream, py::object workspace) {
        auto root = maybe_view(root_token, "root_token");
        auto ws = maybe_view(workspace, "workspace");
        raise_if_error(difftree::ddtree_select(
            view(cand_token, "cand_token"), view(cand_logprob, "cand_logprob"), budget, ptr(root),
            tree_view(tree), ptr(ws), stream_ptr(stream)));
      },
      py::arg("cand_token"), py::arg("cand_logprob"), py::arg("budget"), py::arg("root_token"),
      py::arg("tree"), py::arg("stream"), py::arg("workspace") = py::none());
  m.def("ddtree_select_workspace_bytes", [](int64_t B, int64_t L, int64_t K, int64_t budget) {
    return difftree::ddtree_select_workspace_bytes(B, L, K, budget);
  });

  m.def("check_tree_walk",
        [](py::tuple tree, py::handle node_choice, py::object stop_tokens, py::object remaining) {
          auto stop = maybe_view(stop_tokens, "stop_tokens");
          auto rem = maybe_view(remaining, "remaining");
          raise_if_error(difftree::check_tree_walk(
              tree_view(tree), view(node_choice, "node_choice"), ptr(stop), ptr(rem)));
        });
  m.def("tree_walk", [](py::tuple tree, py::handle node_choice, py::object stop_tokens,
                        py::object remaining, py::handle path, py::handle accepted,
                        py::handle next_token, py::handle done, uintptr_t stream) {
    auto stop = maybe_view(stop_tokens, "stop_tokens");
    auto rem = maybe_view(remaining, "remaining");
    const difftree::WalkOutputs out{view(path, "path"), view(accepted, "accepted"),
                                    view(next_token, "next_token"), view(done, "done")};
    raise_if_error(difftree::tree_walk(tree_view(tree), view(node_choice, "node_choice"), ptr(stop),
                                       ptr(rem), out, stream_ptr(stream)));
  });

  m.def("check_node_select", [](py::handle logits, py::object temperature, py::object top_k,
                                py::object top_p, py::object seed, py::object round_idx) {
    auto t = maybe_view(temperature, "temperature");
    auto k = maybe_view(top_k, "top_k");
    auto p = maybe_view(top_p, "top_p");
    auto s = maybe_view(seed, "seed");
    auto r = maybe_view(round_idx, "round_idx");
    const difftree::SamplingViews params{ptr(t), ptr(k), ptr(p), ptr(s), ptr(r)};
    raise_if_error(difftree::check_node_select(view(logits, "logits"), params));
  });
  m.def("node_select",
        [](py::handle logits, py::object temperature, py::object top_k, py::object top_p,
           py::object seed, py::object round_idx, py::handle out, uintptr_t stream) {
          auto t = maybe_view(temperature, "temperature");
          auto k = maybe_view(top_k, "top_k");
          auto p = maybe_view(top_p, "top_p");
          auto s = maybe_view(seed, "seed");
          auto r = maybe_view(round_idx, "round_idx");
          const difftree::SamplingViews params{ptr(t), ptr(k), ptr(p), ptr(s), ptr(r)};
          raise_if_error(difftree::node_select(view(logits, "logits"), params, view(out, "out"),
                                               stream_ptr(stream)));
        });

  m.def(
      "check_kv_commit",
      [](py::sequence caches, py::handle base_len, py::handle path, py::handle accepted,
         bool ring) {
        auto c = views(caches, "caches");
        raise_if_error(difftree::check_kv_commit(c.data(), static_cast<int>(c.size()),
                                                 view(base_len, "base_len"), view(path, "path"),
                                                 view(accepted, "accepted"), ring));
      },
      py::arg("caches"), py::arg("base_len"), py::arg("path"), py::arg("accepted"),
      py::arg("ring") = false);
  m.def(
      "kv_commit",
      [](py::sequence caches, py::handle base_len, py::handle path, py::handle accepted,
         uintptr_t stream, bool ring) {
        auto c = views(caches, "caches");
        raise_if_error(difftree::kv_commit(c.data(), static_cast<int>(c.size()),
                                           view(base_len, "base_len"), view(path, "path"),
                                           view(accepted, "accepted"), stream_ptr(stream), ring));
      },
      py::arg("caches"), py::arg("base_len"), py::arg("path"), py::arg("accepted"),
      py::arg("stream"), py::arg("ring") = false);

  // ---- caddtree_select / ngram_update / ngram_extend / presto_select (policies) ----
  m.def("check_caddtree_select",
        [](py::handle cand_token, py::handle cand_logprob, int64_t max_budget,
           py::object root_token, py::handle verify_cost, py::handle draft_cost) {
          auto root = maybe_view(root_token, "root_token");
          raise_if_error(difftree::check_caddtree_select(
              view(cand_token, "cand_token"), view(cand_logprob, "cand_logprob"), max_budget,
              ptr(root), view(verify_cost, "verify_cost"), view(draft_cost, "draft_cost")));
        });
  m.def(
      "caddtree_select",
      [](py::handle cand_token, py::handle cand_logprob, int64_t max_budget, py::object root_token,
         py::handle verify_cost, py::handle draft_cost, py::tuple tree, uintptr_t stream,
         py::object workspace) {
        auto root = maybe_view(root_token, "root_token");
        auto ws = maybe_view(workspace, "workspace");
        raise_if_error(difftree::caddtree_select(
            view(cand_token, "cand_token"), view(cand_logprob, "cand_logprob"), max_budget,
            ptr(root), view(verify_cost, "verify_cost"), view(draft_cost, "draft_cost"),
            tree_view(tree), ptr(ws), stream_ptr(stream)));
      },
      py::arg("cand_token"), py::arg("cand_logprob"), py::arg("max_budget"), py::arg("root_token"),
      py::arg("verify_cost"), py::arg("draft_cost"), py::arg("tree"), py::arg("stream"),
      py::arg("workspace") = py::none());
  m.def("ngram_update",
        [](py::handle keys, py::handle counts, py::handle tokens, int64_t start, int64_t order) {
          int64_t fresh = 0;
          raise_if_error(difftree::ngram_update(view(keys, "keys"), view(counts, "counts"),
                                                view(tokens, "tokens"), start, order, &fresh));
          return fresh;
        });
  auto presto_params = [](int64_t order, double alpha, double lam, int64_t vocab) {
    difftree::PrestoParams p;
    p.order = order;
    p.alpha = alpha;
    p.lam = lam;
    p.vocab = vocab;
    return p;
  };
  m.def("check_presto_select",
        [presto_params](py::handle cand_token, py::handle cand_logprob, int64_t budget,
                        py::object root_token, py::handle context, py::handle keys,
                        py::handle counts, int64_t order, double alpha, double lam, int64_t vocab) {
          auto root = maybe_view(root_token, "root_token");
          raise_if_error(difftree::check_presto_select(
              view(cand_token, "cand_token"), view(cand_logprob, "cand_logprob"), budget, ptr(root),
              view(context, "context"), view(keys, "keys"), view(counts, "counts"),
              presto_params(order, alpha, lam, vocab)));
        });
  m.def(
      "presto_select",
      [presto_params](py::handle cand_token, py::handle cand_logprob, int64_t budget,
                      py::object root_token, py::handle context, py::handle keys, py::handle counts,
                      int64_t order, double alpha, double lam, int64_t vocab, py::tuple tree,
                      uintptr_t stream, py::object workspace) {
        auto root = maybe_view(root_token, "root_token");
        auto ws = maybe_view(workspace, "workspace");
        raise_if_error(difftree::presto_select(
            view(cand_token, "cand_token"), view(cand_logprob, "cand_logprob"), budget, ptr(root),
            view(context, "context"), view(keys, "keys"), view(counts, "counts"),
            presto_params(order, alpha, lam, vocab), tree_view(tree), ptr(ws), stream_ptr(stream)));
      },
      py::arg("cand_token"), py::arg("cand_logprob"), py::arg("budget"), py::arg("root_token"),
      py::arg("context"), py::arg("keys"), py::arg("counts"), py::arg("order"), py::arg("alpha"),
      py::arg("lam"), py::arg("vocab"), py::arg("tree"), py::arg("stream"),
      py::arg("workspace") = py::none());
  m.def("presto_select_workspace_bytes",
        [](int64_t B, int64_t L, int64_t K, int64_t budget, int64_t order) {
          return difftree::presto_select_workspace_bytes(B, L, K, budget, order);
        });
  m.def("check_ngram_extend", [](py::handle keys, py::handle counts, py::handle history,
                                 py::handle tokens, py::handle num_tokens, int64_t order) {
    raise_if_error(difftree::check_ngram_extend(view(keys, "keys"), view(counts, "counts"),
                                                view(history, "history"), view(tokens, "tokens"),
                                                view(num_tokens, "num_tokens"), order));
  });
  m.def(
      "ngram_extend",
      [](py::handle keys, py::handle counts, py::handle history, py::handle tokens,
         py::handle num_tokens, int64_t order, py::object overflow, uintptr_t stream) {
        auto of = maybe_view(overflow, "overflow");
        raise_if_error(difftree::ngram_extend(view(keys, "keys"), view(counts, "counts"),
                                              view(history, "history"), view(tokens, "tokens"),
                                              view(num_tokens, "num_tokens"), order, ptr(of),
                                              stream_ptr(stream)));
      },
      py::arg("keys"), py::arg("counts"), py::arg("history"), py::arg("tokens"),
      py::arg("num_tokens"), py::arg("order"), py::arg("overflow"), py::arg("stream"));

  // ---- taps_select (policies; CPU) ----
  m.def("check_taps_select", [](py::handle pool_token, py::handle pool_parent, py::handle pool_size,
                                py::handle log_qc, int64_t budget) {
    raise_if_error(difftree::check_taps_select(
        view(pool_token, "pool_token"), view(pool_parent, "pool_parent"),
        view(pool_size, "pool_size"), view(log_qc, "log_qc"), budget));
  });
  m.def(
      "taps_select",
      [](py::handle pool_token, py::handle pool_parent, py::handle pool_size, py::handle log_qc,
         int64_t budget, py::tuple tree, uintptr_t stream, py::object workspace) {
        auto ws = maybe_view(workspace, "workspace");
        raise_if_error(difftree::taps_select(view(pool_token, "pool_token"),
                                             view(pool_parent, "pool_parent"),
                                             view(pool_size, "pool_size"), view(log_qc, "log_qc"),
                                             budget, tree_view(tree), ptr(ws), stream_ptr(stream)));
      },
      py::arg("pool_token"), py::arg("pool_parent"), py::arg("pool_size"), py::arg("log_qc"),
      py::arg("budget"), py::arg("tree"), py::arg("stream"), py::arg("workspace") = py::none());
  m.def("taps_select_workspace_bytes", [](int64_t B, int64_t P1, int64_t budget) {
    return difftree::taps_select_workspace_bytes(B, P1, budget);
  });

  // ---- d2sd (policies) ----
  m.def("check_d2sd_boundaries", [](py::handle trunk_logprob, py::handle boundary) {
    raise_if_error(difftree::check_d2sd_boundaries(view(trunk_logprob, "trunk_logprob"),
                                                   view(boundary, "boundary")));
  });
  m.def("d2sd_boundaries", [](py::handle trunk_logprob, py::handle boundary, uintptr_t stream) {
    raise_if_error(difftree::d2sd_boundaries(view(trunk_logprob, "trunk_logprob"),
                                             view(boundary, "boundary"), stream_ptr(stream)));
  });
  m.def("check_d2sd_select", [](py::handle trunk_token, py::handle trunk_logprob,
                                py::handle boundary, py::handle branch_token,
                                py::handle branch_logprob, int64_t budget, py::object root_token) {
    auto root = maybe_view(root_token, "root_token");
    raise_if_error(difftree::check_d2sd_select(
        view(trunk_token, "trunk_token"), view(trunk_logprob, "trunk_logprob"),
        view(boundary, "boundary"), view(branch_token, "branch_token"),
        view(branch_logprob, "branch_logprob"), budget, ptr(root)));
  });
  m.def(
      "d2sd_select",
      [](py::handle trunk_token, py::handle trunk_logprob, py::handle boundary,
         py::handle branch_token, py::handle branch_logprob, int64_t budget, py::object root_token,
         py::tuple tree, uintptr_t stream, py::object workspace) {
        auto root = maybe_view(root_token, "root_token");
        auto ws = maybe_view(workspace, "workspace");
        raise_if_error(difftree::d2sd_select(
            view(trunk_token, "trunk_token"), view(trunk_logprob, "trunk_logprob"),
            view(boundary, "boundary"), view(branch_token, "branch_token"),
            view(branch_logprob, "branch_logprob"), budget, ptr(root), tree_view(tree), ptr(ws),
            stream_ptr(stream)));
      },
      py::arg("trunk_token"), py::arg("trunk_logprob"), py::arg("boundary"),
      py::arg("branch_token"), py::arg("branch_logprob"), py::arg("budget"), py::arg("root_token"),
      py::arg("tree"), py::arg("stream"), py::arg("workspace") = py::none());
  m.def("d2sd_select_workspace_bytes",
        [](int64_t B, int64_t L1, int64_t K, int64_t L2, int64_t budget) {
          return difftree::d2sd_select_workspace_bytes(B, L1, K, L2, budget);
        });

  m.def(
      "check_tree_attention",
      [](py::handle q, py::handle k_cache, py::handle v_cache, py::handle prefix_len,
         py::object tree_anc, py::object num_nodes, double scale, bool is_chain, py::object depth,
         int64_t window, py::object sinks, bool ring) {
        auto anc = maybe_view(tree_anc, "tree_anc");
        auto nodes = maybe_view(num_nodes, "num_nodes");
        auto dep = maybe_view(depth, "depth");
        auto snk = maybe_view(sinks, "sinks");
        const difftree::AttentionVariant variant{ptr(dep), ptr(snk), window, ring};
        raise_if_error(difftree::check_tree_attention(
            view(q, "q"), view(k_cache, "k_cache"), view(v_cache, "v_cache"),
            view(prefix_len, "prefix_len"), ptr(anc), ptr(nodes), static_cast<float>(scale),
            is_chain, variant));
      },
      py::arg("q"), py::arg("k_cache"), py::arg("v_cache"), py::arg("prefix_len"),
      py::arg("tree_anc"), py::arg("num_nodes"), py::arg("scale"), py::arg("is_chain"),
      py::arg("depth") = py::none(), py::arg("window") = 0, py::arg("sinks") = py::none(),
      py::arg("ring") = false);
  m.def(
      "tree_attention",
      [](py::handle q, py::handle k_cache, py::handle v_cache, py::handle prefix_len,
         py::object tree_anc, py::object num_nodes, double scale, bool is_chain,
         int64_t num_splits, py::handle out, py::object workspace, uintptr_t stream,
         py::object depth, int64_t window, py::object sinks, bool ring) {
        auto anc = maybe_view(tree_anc, "tree_anc");
        auto nodes = maybe_view(num_nodes, "num_nodes");
        auto ws = maybe_view(workspace, "workspace");
        auto dep = maybe_view(depth, "depth");
        auto snk = maybe_view(sinks, "sinks");
        const difftree::AttentionVariant variant{ptr(dep), ptr(snk), window, ring};
        raise_if_error(difftree::tree_attention(
            view(q, "q"), view(k_cache, "k_cache"), view(v_cache, "v_cache"),
            view(prefix_len, "prefix_len"), ptr(anc), ptr(nodes), static_cast<float>(scale),
            is_chain, num_splits, view(out, "out"), ptr(ws), stream_ptr(stream), variant));
      },
      py::arg("q"), py::arg("k_cache"), py::arg("v_cache"), py::arg("prefix_len"),
      py::arg("tree_anc"), py::arg("num_nodes"), py::arg("scale"), py::arg("is_chain"),
      py::arg("num_splits"), py::arg("out"), py::arg("workspace"), py::arg("stream"),
      py::arg("depth") = py::none(), py::arg("window") = 0, py::arg("sinks") = py::none(),
      py::arg("ring") = false);
  m.def("tree_attention_num_splits",
        [](int64_t B, int64_t H_q, int64_t H_kv, int64_t N, int64_t S_max) {
          return difftree::tree_attention_num_splits(B, H_q, H_kv, N, S_max);
        });
  m.def("tree_attention_workspace_bytes", [](int64_t B, int64_t H_q, int64_t H_kv, int64_t N,
                                             int64_t D, int64_t S_max, int64_t num_splits) {
    return difftree::tree_attention_workspace_bytes(B, H_q, H_kv, N, D, S_max, num_splits);
  });

  // ---- Gated-DeltaNet tree ops ----
  m.def("check_gdn_conv", [](py::handle x, py::handle conv_tail, py::handle weight,
                             py::object bias, py::handle src) {
    auto bv = maybe_view(bias, "bias");
    raise_if_error(difftree::check_gdn_conv(view(x, "x"), view(conv_tail, "conv_tail"),
                                            view(weight, "weight"), ptr(bv), view(src, "src")));
  });
  m.def("gdn_conv", [](py::handle x, py::handle conv_tail, py::handle weight, py::object bias,
                       py::handle src, bool activation, py::handle out, uintptr_t stream) {
    auto bv = maybe_view(bias, "bias");
    raise_if_error(difftree::gdn_conv(view(x, "x"), view(conv_tail, "conv_tail"),
                                      view(weight, "weight"), ptr(bv), view(src, "src"),
                                      activation, view(out, "out"), stream_ptr(stream)));
  });
  m.def("gdn_conv_commit", [](py::handle conv_tail, py::handle x, py::handle src, py::handle path,
                              py::handle accepted, py::object active, uintptr_t stream) {
    auto act = maybe_view(active, "active");
    raise_if_error(difftree::gdn_conv_commit(view(conv_tail, "conv_tail"), view(x, "x"),
                                             view(src, "src"), view(path, "path"),
                                             view(accepted, "accepted"), ptr(act),
                                             stream_ptr(stream)));
  });
  m.def("check_gdn_verify", [](py::handle q, py::handle k, py::handle v, py::handle g,
                               py::handle beta, py::handle state, py::object tree_anc) {
    auto anc = maybe_view(tree_anc, "tree_anc");
    raise_if_error(difftree::check_gdn_verify(view(q, "q"), view(k, "k"), view(v, "v"),
                                              view(g, "g"), view(beta, "beta"),
                                              view(state, "state"), ptr(anc)));
  });
  m.def("gdn_verify",
        [](py::handle q, py::handle k, py::handle v, py::handle g, py::handle beta,
           py::handle state, py::object tree_anc, py::handle out, py::handle k_hat,
           py::handle delta, py::handle gcum, uintptr_t stream) {
          auto anc = maybe_view(tree_anc, "tree_anc");
          raise_if_error(difftree::gdn_verify(
              view(q, "q"), view(k, "k"), view(v, "v"), view(g, "g"), view(beta, "beta"),
              view(state, "state"), ptr(anc), view(out, "out"), view(k_hat, "k_hat"),
              view(delta, "delta"), view(gcum, "gcum"), stream_ptr(stream)));
        });
  m.def("gdn_commit", [](py::handle state, py::handle k_hat, py::handle delta, py::handle gcum,
                         py::handle path, py::handle accepted, py::object active,
                         uintptr_t stream) {
    auto act = maybe_view(active, "active");
    raise_if_error(difftree::gdn_commit(view(state, "state"), view(k_hat, "k_hat"),
                                        view(delta, "delta"), view(gcum, "gcum"),
                                        view(path, "path"), view(accepted, "accepted"), ptr(act),
                                        stream_ptr(stream)));
  });
}
