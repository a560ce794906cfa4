// The C ABI (difftree/difftree.h) against the C++ API: every entry point on the same inputs gives
// the same bytes, NULL params mean the defaults, workspace sizes match, and bad arguments (NULL
// tensors or params, wrong dtype or shape) come back as a status + a message naming the argument.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "check.h"
#include "difftree/difftree.h"
#include "difftree/difftree.hpp"
#include "test_util.h"

using namespace difftree;
using dt_test::TreeBuf;

namespace {

template <typename T>
constexpr DType dtype_of() {
  if (std::is_same_v<T, int32_t>) return DType::kInt32;
  if (std::is_same_v<T, int64_t>) return DType::kInt64;
  if (std::is_same_v<T, uint8_t>) return DType::kUInt8;
  return DType::kFloat32;
}

DLDataType dl_dtype(DType d) {
  switch (d) {
    case DType::kInt32: return {kDLInt, 32, 1};
    case DType::kInt64: return {kDLInt, 64, 1};
    case DType::kUInt8: return {kDLUInt, 8, 1};
    default: return {kDLFloat, 32, 1};
  }
}

// A contiguous CPU array seen both ways: as a DLTensor (C ABI) and a TensorView (C++ API).
// Not copyable: the descriptor points into the object.
template <typename T>
struct Arr {
  std::vector<T> data;
  std::vector<int64_t> shape;
  DLTensor dl{};

  Arr(std::vector<int64_t> s, T fill = T()) : shape(std::move(s)) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    data.assign(static_cast<size_t>(n), fill);
  }
  Arr(const Arr&) = delete;
  Arr& operator=(const Arr&) = delete;

  DLTensor* c() {
    dl = DLTensor{};
    dl.data = data.data();
    dl.device = {kDLCPU, 0};
    dl.ndim = static_cast<int32_t>(shape.size());
    dl.dtype = dl_dtype(dtype_of<T>());
    dl.shape = shape.data();
    return &dl;
  }
  TensorView v() {
    TensorView t;
    t.data = data.data();
    t.dtype = dtype_of<T>();
    t.ndim = static_cast<int>(shape.size());
    int64_t stride = 1;
    for (int d = t.ndim - 1; d >= 0; --d) {
      t.shape[d] = shape[d];
      t.strides[d] = stride;
      stride *= shape[d];
    }
    return t;
  }
};

// A TreeBuf's arrays as the C ABI's difftree_tree. Not copyable (points into itself).
struct CTree {
  int64_t bn[2], bnw[3], b[1];
  difftree_tree tree{};
  explicit CTree(TreeBuf& t) : bn{t.B, t.N}, bnw{t.B, t.N, t.W}, b{t.B} {
    auto dl = [](void* data, DType d, int nd, int64_t* shape) {
      DLTensor x{};
      x.data = data;
      x.device = {kDLCPU, 0};
      x.ndim = nd;
      x.dtype = dl_dtype(d);
      x.shape = shape;
      return x;
    };
    tree.token = dl(t.token.data(), DType::kInt32, 2, bn);
    tree.parent = dl(t.parent.data(), DType::kInt32, 2, bn);
    tree.depth = dl(t.depth.data(), DType::kInt32, 2, bn);
    tree.score = dl(t.score.data(), DType::kFloat32, 2, bn);
    tree.first_child = dl(t.first_child.data(), DType::kInt32, 2, bn);
    tree.next_sibling = dl(t.next_sibling.data(), DType::kInt32, 2, bn);
    tree.anc = dl(t.anc.data(), DType::kInt32, 3, bnw);
    tree.num_nodes = dl(t.num_nodes.data(), DType::kInt32, 1, b);
  }
  CTree(const CTree&) = delete;
  CTree& operator=(const CTree&) = delete;
};

template <typename T>
bool same_bytes(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

bool same_tree(const TreeBuf& a, const TreeBuf& b) {
  return same_bytes(a.token, b.token) && same_bytes(a.parent, b.parent) &&
         same_bytes(a.depth, b.depth) && same_bytes(a.score, b.score) &&
         same_bytes(a.first_child, b.first_child) && same_bytes(a.next_sibling, b.next_sibling) &&
         same_bytes(a.anc, b.anc) && same_bytes(a.num_nodes, b.num_nodes);
}

// The C call returned `code` and named `needle` in difftree_last_error().
bool c_status_is(difftree_status s, difftree_status code, const char* needle, const char* file,
                 int line, const char* expr) {
  const std::string msg = difftree_last_error();
  return dt_test::record(s == code && msg.find(needle) != std::string::npos, file, line,
                         std::string(expr) + " -> " + difftree_status_string(s) + ": " + msg +
                             "; expected " + difftree_status_string(code) + " mentioning \"" +
                             needle + "\"");
}
#define CHECK_C_OK(expr) CHECK_C_STATUS(expr, DIFFTREE_OK, "")
#define CHECK_C_STATUS(expr, code, needle) \
  c_status_is((expr), (code), (needle), __FILE__, __LINE__, #expr)

void fill_uniform(std::vector<float>& v, std::mt19937& rng, float lo, float hi) {
  std::uniform_real_distribution<float> u(lo, hi);
  for (float& x : v) x = u(rng);
}

constexpr int64_t B = 2, L = 5, V = 50, K = 4;

// Candidates [B, L, K] from random logits, through the C++ API.
struct Candidates {
  Arr<int32_t> token{{B, L, K}};
  Arr<float> logprob{{B, L, K}};
  Arr<int32_t> root{{B}};
  TensorView root_v;
  explicit Candidates(uint32_t seed) {
    std::mt19937 rng(seed);
    Arr<float> logits({B, L, V});
    fill_uniform(logits.data, rng, -4.0f, 4.0f);
    CHECK_OK(topk_logprobs(logits.v(), K, token.v(), logprob.v(), nullptr));
    root.data = {7, 11};
    root_v = root.v();
  }
};

void test_sizes() {
  dt_test::Context ctx("workspace sizes and split counts");
  CHECK_EQ(difftree_topk_logprobs_num_splits(1, 15, 151936, 32),
           topk_logprobs_num_splits(1, 15, 151936, 32));
  CHECK_EQ(difftree_topk_logprobs_workspace_bytes(1, 15, 151936, 32, 0),
           topk_logprobs_workspace_bytes(1, 15, 151936, 32, 0));
  CHECK(difftree_topk_logprobs_workspace_bytes(1, 15, 151936, 32, 0) > 0);
  CHECK_EQ(difftree_tree_attention_num_splits(2, 8, 2, 65, 8192),
           tree_attention_num_splits(2, 8, 2, 65, 8192));
  CHECK_EQ(difftree_tree_attention_workspace_bytes(2, 8, 2, 65, 128, 8192, 4),
           tree_attention_workspace_bytes(2, 8, 2, 65, 128, 8192, 4));
  CHECK(difftree_tree_attention_workspace_bytes(2, 8, 2, 65, 128, 8192, 4) > 0);
  CHECK_EQ(difftree_ddtree_select_workspace_bytes(4, 16, 64, 4096),
           ddtree_select_workspace_bytes(4, 16, 64, 4096));
  CHECK_EQ(difftree_presto_select_workspace_bytes(2, 15, 64, 1024, 3),
           presto_select_workspace_bytes(2, 15, 64, 1024, 3));
  CHECK_EQ(difftree_taps_select_workspace_bytes(2, 20000, 1024),
           taps_select_workspace_bytes(2, 20000, 1024));
  CHECK_EQ(difftree_d2sd_select_workspace_bytes(2, 16, 8, 16, 1024),
           d2sd_select_workspace_bytes(2, 16, 8, 16, 1024));
}

void test_topk_split_and_ddtree_workspace() {
  dt_test::Context ctx("topk_logprobs_split, ddtree_select_with_workspace");
  std::mt19937 rng(1);
  Arr<float> logits({B, L, V});
  fill_uniform(logits.data, rng, -3.0f, 3.0f);
  Arr<int32_t> tok_cpp({B, L, K}), tok_c({B, L, K}), err({B, L}, 9);
  Arr<float> lp_cpp({B, L, K}), lp_c({B, L, K});
  CHECK_OK(topk_logprobs(logits.v(), K, tok_cpp.v(), lp_cpp.v(), nullptr));
  CHECK_C_OK(difftree_topk_logprobs_split(logits.c(), K, 0, tok_c.c(), lp_c.c(), err.c(), nullptr,
                                          nullptr));
  CHECK(same_bytes(tok_cpp.data, tok_c.data));
  CHECK(same_bytes(lp_cpp.data, lp_c.data));
  CHECK(same_bytes(err.data, std::vector<int32_t>(B * L, 0)));
  Arr<float> float_err({B, L});
  CHECK_C_STATUS(difftree_topk_logprobs_split(logits.c(), K, 0, tok_c.c(), lp_c.c(), float_err.c(),
                                              nullptr, nullptr),
                 DIFFTREE_INVALID_TYPE, "row_error");

  Candidates cand(2);
  const int64_t budget = 9;
  TreeBuf a(B, budget + 1), b(B, budget + 1);
  CTree cb(b);
  Arr<uint8_t> ws({64});
  CHECK_OK(ddtree_select(cand.token.v(), cand.logprob.v(), budget, &cand.root_v, a.view(),
                         nullptr));
  difftree_ddtree_params p = difftree_ddtree_default_params();
  CHECK_EQ(p.budget, 64);
  p.budget = budget;
  CHECK_C_OK(difftree_ddtree_select_with_workspace(cand.token.c(), cand.logprob.c(),
                                                   cand.root.c(), &p, &cb.tree, ws.c(), nullptr));
  CHECK(same_tree(a, b));
  p.budget = budget + 1;  // the tree's capacity no longer fits
  CHECK_C_STATUS(difftree_ddtree_select_with_workspace(cand.token.c(), cand.logprob.c(),
                                                       cand.root.c(), &p, &cb.tree, ws.c(),
                                                       nullptr),
                 DIFFTREE_INVALID_VALUE, "tree.token");
}

void test_tree_attention() {
  dt_test::Context ctx("tree_attention");
  const int64_t Hq = 4, Hkv = 2, D = 8, S = 40, budget = 11, N = budget + 1;
  Candidates cand(3);
  TreeBuf tree(B, N);
  CHECK_OK(ddtree_select(cand.token.v(), cand.logprob.v(), budget, &cand.root_v, tree.view(),
                         nullptr));
  tree.num_nodes[1] = 7;  // padding rows in request 1
  std::mt19937 rng(4);
  Arr<float> q({B, Hq, N, D}), kc({B, Hkv, S, D}), vc({B, Hkv, S, D});
  fill_uniform(q.data, rng, -1, 1);
  fill_uniform(kc.data, rng, -1, 1);
  fill_uniform(vc.data, rng, -1, 1);
  Arr<int64_t> prefix({B});
  prefix.data = {5, 20};
  Arr<int32_t> anc({B, N, tree.W}), nodes({B});
  anc.data = tree.anc;
  nodes.data = tree.num_nodes;
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));

  difftree_attention_params p = difftree_attention_default_params();
  CHECK(std::isnan(p.scale));
  CHECK_EQ(p.is_chain, 0);
  CHECK_EQ(p.num_splits, 0);
  p.scale = scale;
  for (int variant = 0; variant < 3; ++variant) {
    dt_test::Context v(variant == 0 ? "tree" : variant == 1 ? "is_chain" : "no tree_anc");
    const bool chain = variant == 1;
    const bool with_anc = variant != 2;
    p.is_chain = chain ? 1 : 0;
    Arr<float> out_cpp({B, Hq, N, D}), out_c({B, Hq, N, D}, 7.0f);
    const TensorView anc_v = anc.v(), nodes_v = nodes.v();
    CHECK_OK(tree_attention(q.v(), kc.v(), vc.v(), prefix.v(), with_anc ? &anc_v : nullptr,
                            &nodes_v, scale, chain, 0, out_cpp.v(), nullptr, nullptr));
    CHECK_C_OK(difftree_tree_attention(q.c(), kc.c(), vc.c(), prefix.c(),
                                       with_anc ? anc.c() : nullptr, nodes.c(), &p, out_c.c(),
                                       nullptr, nullptr));
    CHECK(same_bytes(out_cpp.data, out_c.data));
  }
  // The tree mask matters: a row's output differs between tree and chain masks somewhere.
  {
    Arr<float> tree_out({B, Hq, N, D}), chain_out({B, Hq, N, D});
    p.is_chain = 0;
    CHECK_C_OK(difftree_tree_attention(q.c(), kc.c(), vc.c(), prefix.c(), anc.c(), nodes.c(), &p,
                                       tree_out.c(), nullptr, nullptr));
    p.is_chain = 1;
    CHECK_C_OK(difftree_tree_attention(q.c(), kc.c(), vc.c(), prefix.c(), anc.c(), nodes.c(), &p,
                                       chain_out.c(), nullptr, nullptr));
    CHECK(!same_bytes(tree_out.data, chain_out.data));
  }
  // Errors: params are required, the scale must be set, names for dtype and shape.
  Arr<float> out({B, Hq, N, D}), bad_out({B, Hq, N + 1, D});
  Arr<float> float_prefix({B});
  CHECK_C_STATUS(difftree_tree_attention(q.c(), kc.c(), vc.c(), prefix.c(), anc.c(), nodes.c(),
                                         nullptr, out.c(), nullptr, nullptr),
                 DIFFTREE_INVALID_VALUE, "params");
  difftree_attention_params unset = difftree_attention_default_params();
  CHECK_C_STATUS(difftree_tree_attention(q.c(), kc.c(), vc.c(), prefix.c(), anc.c(), nodes.c(),
                                         &unset, out.c(), nullptr, nullptr),
                 DIFFTREE_INVALID_VALUE, "scale");
  CHECK_C_STATUS(difftree_tree_attention(q.c(), kc.c(), vc.c(), float_prefix.c(), anc.c(),
                                         nodes.c(), &p, out.c(), nullptr, nullptr),
                 DIFFTREE_INVALID_TYPE, "prefix_len");
  CHECK_C_STATUS(difftree_tree_attention(q.c(), kc.c(), vc.c(), prefix.c(), anc.c(), nodes.c(),
                                         &p, bad_out.c(), nullptr, nullptr),
                 DIFFTREE_INVALID_VALUE, "out");
  CHECK_C_STATUS(difftree_tree_attention(q.c(), nullptr, vc.c(), prefix.c(), anc.c(), nodes.c(),
                                         &p, out.c(), nullptr, nullptr),
                 DIFFTREE_INVALID_VALUE, "k_cache");

  // The attention variant (ABI 2): off by default; the C ABI equals the C++ API with a window
  // over the tree (depth), sinks and D_v != D_k, on a full cache and on a ring, and changes the
  // output; bad variant arguments are named.
  CHECK_EQ(unset.window, 0);
  CHECK_EQ(unset.ring, 0);
  CHECK(unset.depth == nullptr && unset.sinks == nullptr);
  const int64_t Dv = 5, W = 3;
  Arr<float> vc5({B, Hkv, S, Dv}), sinks({Hq});
  fill_uniform(vc5.data, rng, -1, 1);
  fill_uniform(sinks.data, rng, -1, 1);
  Arr<int32_t> depth({B, N});
  depth.data = tree.depth;
  const TensorView anc_v = anc.v(), nodes_v = nodes.v(), depth_v = depth.v(), sinks_v = sinks.v();
  for (int ring = 0; ring < 2; ++ring) {
    dt_test::Context v(ring ? "variant on a ring" : "variant");
    Arr<int64_t> plen({B});
    plen.data = ring ? std::vector<int64_t>{70, 3} : prefix.data;  // a ring takes any prefix
    AttentionVariant var;
    var.depth = &depth_v;
    var.sinks = &sinks_v;
    var.window = W;
    var.ring = ring != 0;
    difftree_attention_params pv = difftree_attention_default_params();
    pv.scale = scale;
    pv.window = W;
    pv.ring = ring;
    pv.depth = depth.c();
    pv.sinks = sinks.c();
    Arr<float> out_cpp({B, Hq, N, Dv}), out_c({B, Hq, N, Dv}, 7.0f), plain({B, Hq, N, Dv});
    CHECK_OK(tree_attention(q.v(), kc.v(), vc5.v(), plen.v(), &anc_v, &nodes_v, scale, false, 0,
                            out_cpp.v(), nullptr, nullptr, var));
    CHECK_C_OK(difftree_tree_attention(q.c(), kc.c(), vc5.c(), plen.c(), anc.c(), nodes.c(), &pv,
                                       out_c.c(), nullptr, nullptr));
    CHECK(same_bytes(out_cpp.data, out_c.data));
    if (!ring) {
      CHECK_OK(tree_attention(q.v(), kc.v(), vc5.v(), plen.v(), &anc_v, &nodes_v, scale, false, 0,
                              plain.v(), nullptr, nullptr));
      CHECK(!same_bytes(out_cpp.data, plain.data));
    }
  }
  Arr<float> out5({B, Hq, N, Dv}), short_sinks({Hq - 1});
  Arr<int64_t> int64_sinks({Hq});
  difftree_attention_params bad = difftree_attention_default_params();
  auto expect_bad = [&](const char* needle, difftree_status code = DIFFTREE_INVALID_VALUE) {
    CHECK_C_STATUS(difftree_tree_attention(q.c(), kc.c(), vc5.c(), prefix.c(), anc.c(),
                                           nodes.c(), &bad, out5.c(), nullptr, nullptr),
                   code, needle);
    bad = difftree_attention_default_params();
    bad.scale = scale;
  };
  bad.scale = scale;
  bad.window = -1;
  expect_bad("window");
  bad.ring = 1;  // a ring without a window
  expect_bad("ring");
  bad.window = 40;  // S = 40 < W - 1 + N
  bad.ring = 1;
  bad.depth = depth.c();
  expect_bad("ring");
  bad.window = W;  // a window over a tree without depth
  expect_bad("depth");
  bad.sinks = short_sinks.c();
  expect_bad("sinks");
  bad.sinks = int64_sinks.c();
  expect_bad("sinks", DIFFTREE_INVALID_TYPE);
  CHECK_C_STATUS(difftree_tree_attention(q.c(), kc.c(), vc5.c(), prefix.c(), anc.c(), nodes.c(),
                                         &p, out.c(), nullptr, nullptr),
                 DIFFTREE_INVALID_VALUE, "out");  // out must be D_v wide
}

void test_node_select() {
  dt_test::Context ctx("node_select");
  const int64_t N = 6;
  std::mt19937 rng(5);
  Arr<float> logits({B, N, V});
  fill_uniform(logits.data, rng, -2, 2);
  // Greedy: NULL params and the default params are both argmax.
  Arr<int32_t> greedy_cpp({B, N}), greedy_c({B, N}, -9), greedy_d({B, N}, -9);
  CHECK_OK(node_select(logits.v(), SamplingViews{}, greedy_cpp.v(), nullptr));
  CHECK_C_OK(difftree_node_select(logits.c(), nullptr, greedy_c.c(), nullptr));
  const difftree_sampling_params defaults = difftree_sampling_default_params();
  CHECK_C_OK(difftree_node_select(logits.c(), &defaults, greedy_d.c(), nullptr));
  CHECK(same_bytes(greedy_cpp.data, greedy_c.data));
  CHECK(same_bytes(greedy_cpp.data, greedy_d.data));
  for (int64_t r = 0; r < B * N; ++r) {
    int64_t best = 0;
    for (int64_t v = 1; v < V; ++v)
      if (logits.data[r * V + v] > logits.data[r * V + best]) best = v;
    CHECK_EQ(greedy_c.data[r], best);
  }
  // Sampling with every setting, per request.
  Arr<float> temperature({B}), top_p({B});
  Arr<int64_t> top_k({B}), seed({B}), round_idx({B});
  temperature.data = {0.8f, 1.3f};
  top_p.data = {0.9f, 1.0f};
  top_k.data = {10, 0};
  seed.data = {123, 456};
  round_idx.data = {3, 4};
  const TensorView tv = temperature.v(), kv = top_k.v(), pv = top_p.v(), sv = seed.v(),
                   rv = round_idx.v();
  Arr<int32_t> sampled_cpp({B, N}), sampled_c({B, N}, -9);
  CHECK_OK(node_select(logits.v(), SamplingViews{&tv, &kv, &pv, &sv, &rv}, sampled_cpp.v(),
                       nullptr));
  difftree_sampling_params sp = difftree_sampling_default_params();
  sp.temperature = temperature.c();
  sp.top_k = top_k.c();
  sp.top_p = top_p.c();
  sp.seed = seed.c();
  sp.round_idx = round_idx.c();
  CHECK_C_OK(difftree_node_select(logits.c(), &sp, sampled_c.c(), nullptr));
  CHECK(same_bytes(sampled_cpp.data, sampled_c.data));
  CHECK(!same_bytes(sampled_c.data, greedy_c.data));  // these seeds draw off the argmax
  // Errors.
  Arr<int32_t> int_logits({B, N, V}), bad_out({B, N + 1});
  Arr<int32_t> int_temperature({B});
  CHECK_C_STATUS(difftree_node_select(int_logits.c(), nullptr, greedy_c.c(), nullptr),
                 DIFFTREE_INVALID_TYPE, "logits");
  CHECK_C_STATUS(difftree_node_select(logits.c(), nullptr, bad_out.c(), nullptr),
                 DIFFTREE_INVALID_VALUE, "out");
  CHECK_C_STATUS(difftree_node_select(logits.c(), nullptr, nullptr, nullptr),
                 DIFFTREE_INVALID_VALUE, "out");
  sp.temperature = int_temperature.c();
  CHECK_C_STATUS(difftree_node_select(logits.c(), &sp, greedy_c.c(), nullptr),
                 DIFFTREE_INVALID_TYPE, "temperature");
}

void test_caddtree() {
  dt_test::Context ctx("caddtree_select");
  Candidates cand(6);
  const int64_t max_budget = 12, N = max_budget + 1;
  Arr<float> verify({B, N}), draft({B});
  for (int64_t b = 0; b < B; ++b)
    for (int64_t n = 0; n < N; ++n) verify.data[b * N + n] = 1.0f + 0.15f * (b + 1) * n;
  draft.data = {0.5f, 0.25f};
  TreeBuf a(B, N), c(B, N);
  CTree cc(c);
  CHECK_OK(caddtree_select(cand.token.v(), cand.logprob.v(), max_budget, &cand.root_v,
                           verify.v(), draft.v(), a.view(), nullptr));
  difftree_caddtree_params p = difftree_caddtree_default_params();
  CHECK_EQ(p.max_budget, 64);
  p.max_budget = max_budget;
  CHECK_C_OK(difftree_caddtree_select(cand.token.c(), cand.logprob.c(), cand.root.c(),
                                      verify.c(), draft.c(), &p, &cc.tree, nullptr, nullptr));
  CHECK(same_tree(a, c));
  CHECK(a.num_nodes[0] < N || a.num_nodes[1] < N);  // the cost model cut something
  Arr<float> bad_verify({B, N + 1});
  CHECK_C_STATUS(difftree_caddtree_select(cand.token.c(), cand.logprob.c(), cand.root.c(),
                                          bad_verify.c(), draft.c(), &p, &cc.tree, nullptr,
                                          nullptr),
                 DIFFTREE_INVALID_VALUE, "verify_cost");
  CHECK_C_STATUS(difftree_caddtree_select(cand.token.c(), cand.logprob.c(), cand.root.c(),
                                          verify.c(), draft.c(), &p, nullptr, nullptr, nullptr),
                 DIFFTREE_INVALID_VALUE, "tree");
  // NULL params are the defaults (max_budget 64).
  const int64_t N64 = 65;
  Arr<float> verify64({B, N64});
  for (int64_t i = 0; i < B * N64; ++i) verify64.data[i] = 1.0f + 0.01f * (i % N64);
  TreeBuf a64(B, N64), c64(B, N64);
  CTree cc64(c64);
  CHECK_OK(caddtree_select(cand.token.v(), cand.logprob.v(), 64, &cand.root_v, verify64.v(),
                           draft.v(), a64.view(), nullptr));
  CHECK_C_OK(difftree_caddtree_select(cand.token.c(), cand.logprob.c(), cand.root.c(),
                                      verify64.c(), draft.c(), nullptr, &cc64.tree, nullptr,
                                      nullptr));
  CHECK(same_tree(a64, c64));
}

void test_ngram_and_presto() {
  dt_test::Context ctx("ngram_update, ngram_extend, presto_select");
  const int64_t H = 256, order = 2, T = 12;
  std::mt19937 rng(7);
  Arr<int64_t> stream({T});
  for (int64_t& t : stream.data) t = static_cast<int64_t>(rng() % 10);  // few tokens: repeats
  Arr<int64_t> keys_cpp({H}), keys_c({H});
  Arr<int32_t> counts_cpp({H}), counts_c({H});
  int64_t fresh_cpp = -1, fresh_c = -1;
  CHECK_OK(ngram_update(keys_cpp.v(), counts_cpp.v(), stream.v(), 0, order, &fresh_cpp));
  CHECK_C_OK(difftree_ngram_update(keys_c.c(), counts_c.c(), stream.c(), 0, order, &fresh_c));
  CHECK_EQ(fresh_cpp, fresh_c);
  CHECK(fresh_c > 0);
  CHECK(same_bytes(keys_cpp.data, keys_c.data));
  CHECK(same_bytes(counts_cpp.data, counts_c.data));
  CHECK_C_OK(difftree_ngram_update(keys_c.c(), counts_c.c(), stream.c(), T, order, nullptr));
  CHECK_C_STATUS(difftree_ngram_update(keys_c.c(), counts_c.c(), stream.c(), 0, 9, nullptr),
                 DIFFTREE_INVALID_VALUE, "order");

  // Per-request tables, extended by one round of tokens.
  Arr<int64_t> bkeys_cpp({B, H}), bkeys_c({B, H}), hist_cpp({B, order - 1}, -1),
      hist_c({B, order - 1}, -1);
  Arr<int32_t> bcounts_cpp({B, H}), bcounts_c({B, H}), overflow({B}, 5);
  Arr<int32_t> tokens({B, 4}), num_tokens({B});
  tokens.data = {1, 2, 1, 2, 3, 3, 4, 9};
  num_tokens.data = {4, 3};
  for (int round = 0; round < 2; ++round) {
    CHECK_OK(ngram_extend(bkeys_cpp.v(), bcounts_cpp.v(), hist_cpp.v(), tokens.v(),
                          num_tokens.v(), order, nullptr, nullptr));
    CHECK_C_OK(difftree_ngram_extend(bkeys_c.c(), bcounts_c.c(), hist_c.c(), tokens.c(),
                                     num_tokens.c(), order, overflow.c(), nullptr));
  }
  CHECK(same_bytes(bkeys_cpp.data, bkeys_c.data));
  CHECK(same_bytes(bcounts_cpp.data, bcounts_c.data));
  CHECK(same_bytes(hist_cpp.data, hist_c.data));
  CHECK_EQ(hist_c.data[1], 4);  // request 1's last token
  Arr<int32_t> bad_num({B + 1});
  CHECK_C_STATUS(difftree_ngram_extend(bkeys_c.c(), bcounts_c.c(), hist_c.c(), tokens.c(),
                                       bad_num.c(), order, nullptr, nullptr),
                 DIFFTREE_INVALID_VALUE, "num_tokens");

  // PRESTO over the [B, H] tables with non-default settings.
  Candidates cand(8);
  const int64_t budget = 10, N = budget + 1;
  Arr<int64_t> context({B, order - 1});
  context.data = {cand.root.data[0], cand.root.data[1]};
  PrestoParams prior;
  prior.order = order;
  prior.alpha = 0.5;
  prior.lam = 0.7;
  prior.vocab = V;
  TreeBuf a(B, N), c(B, N);
  CTree cc(c);
  CHECK_OK(presto_select(cand.token.v(), cand.logprob.v(), budget, &cand.root_v, context.v(),
                         bkeys_cpp.v(), bcounts_cpp.v(), prior, a.view(), nullptr));
  difftree_presto_params p = difftree_presto_default_params();
  const PrestoParams cpp_defaults;
  CHECK_EQ(p.budget, 64);
  CHECK_EQ(p.order, cpp_defaults.order);
  CHECK_EQ(p.alpha, cpp_defaults.alpha);
  CHECK_EQ(p.lam, cpp_defaults.lam);
  CHECK_EQ(p.vocab, cpp_defaults.vocab);
  p.budget = budget;
  p.order = order;
  p.alpha = 0.5;
  p.lam = 0.7;
  p.vocab = V;
  CHECK_C_OK(difftree_presto_select(cand.token.c(), cand.logprob.c(), cand.root.c(), context.c(),
                                    bkeys_c.c(), bcounts_c.c(), &p, &cc.tree, nullptr, nullptr));
  CHECK(same_tree(a, c));
  Arr<int64_t> bad_context({B, order});
  CHECK_C_STATUS(difftree_presto_select(cand.token.c(), cand.logprob.c(), cand.root.c(),
                                        bad_context.c(), bkeys_c.c(), bcounts_c.c(), &p,
                                        &cc.tree, nullptr, nullptr),
                 DIFFTREE_INVALID_VALUE, "context");
  Arr<float> float_counts({B, H});
  CHECK_C_STATUS(difftree_presto_select(cand.token.c(), cand.logprob.c(), cand.root.c(),
                                        context.c(), bkeys_c.c(), float_counts.c(), &p, &cc.tree,
                                        nullptr, nullptr),
                 DIFFTREE_INVALID_TYPE, "counts");
}

void test_taps() {
  dt_test::Context ctx("taps_select");
  const int64_t P1 = 30, budget = 8, N = budget + 1;
  std::mt19937 rng(9);
  Arr<int32_t> token({B, P1}), parent({B, P1}), size({B});
  Arr<float> log_qc({B, P1});
  fill_uniform(log_qc.data, rng, -3.0f, 0.0f);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < P1; ++i) {
      parent.data[b * P1 + i] = i == 0 ? -1 : static_cast<int32_t>(rng() % i);
      token.data[b * P1 + i] = static_cast<int32_t>(100 + i);  // distinct, so siblings differ
    }
  size.data = {static_cast<int32_t>(P1), 20};
  TreeBuf a(B, N), c(B, N);
  CTree cc(c);
  CHECK_OK(taps_select(token.v(), parent.v(), size.v(), log_qc.v(), budget, a.view(), nullptr));
  difftree_taps_params p = difftree_taps_default_params();
  CHECK_EQ(p.budget, 64);
  p.budget = budget;
  CHECK_C_OK(difftree_taps_select(token.c(), parent.c(), size.c(), log_qc.c(), &p, &cc.tree,
                                  nullptr, nullptr));
  CHECK(same_tree(a, c));
  Arr<int32_t> bad_size({B, 1});
  CHECK_C_STATUS(difftree_taps_select(token.c(), parent.c(), bad_size.c(), log_qc.c(), &p,
                                      &cc.tree, nullptr, nullptr),
                 DIFFTREE_INVALID_VALUE, "pool_size");
  CHECK_C_STATUS(difftree_taps_select(token.c(), nullptr, size.c(), log_qc.c(), &p, &cc.tree,
                                      nullptr, nullptr),
                 DIFFTREE_INVALID_VALUE, "pool_parent");
}

void test_d2sd() {
  dt_test::Context ctx("d2sd_boundaries, d2sd_select");
  const int64_t L1 = 6, L2 = 6, KB = 3, budget = 12, N = budget + 1;
  std::mt19937 rng(10);
  Arr<float> trunk_lp({B, L1});
  fill_uniform(trunk_lp.data, rng, -2.0f, -0.01f);
  Arr<int32_t> bd_cpp({B, KB}), bd_c({B, KB}, -9);
  CHECK_OK(d2sd_boundaries(trunk_lp.v(), bd_cpp.v(), nullptr));
  CHECK_C_OK(difftree_d2sd_boundaries(trunk_lp.c(), bd_c.c(), nullptr));
  CHECK(same_bytes(bd_cpp.data, bd_c.data));
  Arr<int32_t> bad_bd({B, L1 + 1});
  CHECK_C_STATUS(difftree_d2sd_boundaries(trunk_lp.c(), bad_bd.c(), nullptr),
                 DIFFTREE_INVALID_VALUE, "boundary");

  Arr<int32_t> trunk_tok({B, L1}), branch_tok({B, KB, L2}), root({B});
  Arr<float> branch_lp({B, KB, L2});
  for (int32_t& t : trunk_tok.data) t = static_cast<int32_t>(rng() % 20);
  for (int32_t& t : branch_tok.data) t = static_cast<int32_t>(20 + rng() % 20);
  fill_uniform(branch_lp.data, rng, -2.5f, -0.01f);
  root.data = {3, 4};
  TreeBuf a(B, N), c(B, N);
  CTree cc(c);
  const TensorView root_v = root.v();
  CHECK_OK(d2sd_select(trunk_tok.v(), trunk_lp.v(), bd_c.v(), branch_tok.v(), branch_lp.v(),
                       budget, &root_v, a.view(), nullptr));
  difftree_d2sd_params p = difftree_d2sd_default_params();
  CHECK_EQ(p.budget, 64);
  p.budget = budget;
  CHECK_C_OK(difftree_d2sd_select(trunk_tok.c(), trunk_lp.c(), bd_c.c(), branch_tok.c(),
                                  branch_lp.c(), root.c(), &p, &cc.tree, nullptr, nullptr));
  CHECK(same_tree(a, c));
  Arr<int32_t> wrong_branch_tok({B, KB, L2 + 1});
  CHECK_C_STATUS(difftree_d2sd_select(trunk_tok.c(), trunk_lp.c(), bd_c.c(), wrong_branch_tok.c(),
                                      branch_lp.c(), root.c(), &p, &cc.tree, nullptr, nullptr),
                 DIFFTREE_INVALID_VALUE, "branch_token");
  CHECK_C_STATUS(difftree_d2sd_select(trunk_tok.c(), branch_lp.c(), bd_c.c(), branch_tok.c(),
                                      branch_lp.c(), root.c(), &p, &cc.tree, nullptr, nullptr),
                 DIFFTREE_INVALID_VALUE, "trunk_logprob");
}

// `p`, or NULL when `name` is the argument under test.
template <typename T>
T* unless(const char* null_arg, const char* name, T* p) {
  return std::strcmp(null_arg, name) == 0 ? nullptr : p;
}

// Every required argument of every new entry point, NULL in turn: INVALID_VALUE naming it (the
// descriptors are converted before any check, so the other arguments need only be valid views).
void test_null_arguments() {
  dt_test::Context ctx("NULL required arguments");
  Arr<float> x({1});
  TreeBuf tb(1, 2);
  CTree ct(tb);
  difftree_attention_params ap = difftree_attention_default_params();
  ap.scale = 1.0f;
  struct Case {
    std::vector<const char*> args;
    std::function<difftree_status(const char*)> call;
  };
  const std::vector<Case> cases = {
      {{"logits", "token", "logprob"},
       [&](const char* n) {
         return difftree_topk_logprobs_split(unless(n, "logits", x.c()), 1, 0,
                                             unless(n, "token", x.c()),
                                             unless(n, "logprob", x.c()), nullptr, nullptr,
                                             nullptr);
       }},
      {{"cand_token", "cand_logprob", "tree"},
       [&](const char* n) {
         return difftree_ddtree_select_with_workspace(
             unless(n, "cand_token", x.c()), unless(n, "cand_logprob", x.c()), nullptr, nullptr,
             unless(n, "tree", &ct.tree), nullptr, nullptr);
       }},
      {{"q", "k_cache", "v_cache", "prefix_len", "out", "params"},
       [&](const char* n) {
         return difftree_tree_attention(unless(n, "q", x.c()), unless(n, "k_cache", x.c()),
                                        unless(n, "v_cache", x.c()),
                                        unless(n, "prefix_len", x.c()), nullptr, nullptr,
                                        unless(n, "params", &ap), unless(n, "out", x.c()),
                                        nullptr, nullptr);
       }},
      {{"logits", "out"},
       [&](const char* n) {
         return difftree_node_select(unless(n, "logits", x.c()), nullptr, unless(n, "out", x.c()),
                                     nullptr);
       }},
      {{"cand_token", "cand_logprob", "verify_cost", "draft_cost", "tree"},
       [&](const char* n) {
         return difftree_caddtree_select(
             unless(n, "cand_token", x.c()), unless(n, "cand_logprob", x.c()), nullptr,
             unless(n, "verify_cost", x.c()), unless(n, "draft_cost", x.c()), nullptr,
             unless(n, "tree", &ct.tree), nullptr, nullptr);
       }},
      {{"keys", "counts", "tokens"},
       [&](const char* n) {
         return difftree_ngram_update(unless(n, "keys", x.c()), unless(n, "counts", x.c()),
                                      unless(n, "tokens", x.c()), 0, 1, nullptr);
       }},
      {{"keys", "counts", "history", "tokens", "num_tokens"},
       [&](const char* n) {
         return difftree_ngram_extend(unless(n, "keys", x.c()), unless(n, "counts", x.c()),
                                      unless(n, "history", x.c()), unless(n, "tokens", x.c()),
                                      unless(n, "num_tokens", x.c()), 1, nullptr, nullptr);
       }},
      {{"cand_token", "cand_logprob", "context", "keys", "counts", "tree"},
       [&](const char* n) {
         return difftree_presto_select(
             unless(n, "cand_token", x.c()), unless(n, "cand_logprob", x.c()), nullptr,
             unless(n, "context", x.c()), unless(n, "keys", x.c()), unless(n, "counts", x.c()),
             nullptr, unless(n, "tree", &ct.tree), nullptr, nullptr);
       }},
      {{"pool_token", "pool_parent", "pool_size", "log_qc", "tree"},
       [&](const char* n) {
         return difftree_taps_select(unless(n, "pool_token", x.c()),
                                     unless(n, "pool_parent", x.c()),
                                     unless(n, "pool_size", x.c()), unless(n, "log_qc", x.c()),
                                     nullptr, unless(n, "tree", &ct.tree), nullptr, nullptr);
       }},
      {{"trunk_logprob", "boundary"},
       [&](const char* n) {
         return difftree_d2sd_boundaries(unless(n, "trunk_logprob", x.c()),
                                         unless(n, "boundary", x.c()), nullptr);
       }},
      {{"trunk_token", "trunk_logprob", "boundary", "branch_token", "branch_logprob", "tree"},
       [&](const char* n) {
         return difftree_d2sd_select(
             unless(n, "trunk_token", x.c()), unless(n, "trunk_logprob", x.c()),
             unless(n, "boundary", x.c()), unless(n, "branch_token", x.c()),
             unless(n, "branch_logprob", x.c()), nullptr, nullptr, unless(n, "tree", &ct.tree),
             nullptr, nullptr);
       }},
  };
  for (const Case& c : cases)
    for (const char* arg : c.args) {
      dt_test::Context a(std::string("NULL ") + arg);
      CHECK_C_STATUS(c.call(arg), DIFFTREE_INVALID_VALUE, arg);
      CHECK(std::string(difftree_last_error()).find("NULL") != std::string::npos);
    }
}

// A failing call sets the message, a succeeding one clears it; no exception escapes.
void test_last_error() {
  dt_test::Context ctx("difftree_last_error");
  Arr<float> lp({B, 3});
  Arr<int32_t> bd({B, 2});
  CHECK_C_STATUS(difftree_d2sd_boundaries(nullptr, bd.c(), nullptr), DIFFTREE_INVALID_VALUE,
                 "trunk_logprob");
  CHECK_C_OK(difftree_d2sd_boundaries(lp.c(), bd.c(), nullptr));
  CHECK_EQ(std::string(difftree_last_error()), std::string(""));
}

}  // namespace

int main() {
  test_sizes();
  test_topk_split_and_ddtree_workspace();
  test_tree_attention();
  test_node_select();
  test_caddtree();
  test_ngram_and_presto();
  test_taps();
  test_d2sd();
  test_null_arguments();
  test_last_error();
  return dt_test::report("c_api");
}
