// Descriptors no caller can be trusted with, through the C ABI (DLTensor) and the C++ API
// (TensorView): NULL shape or tensor pointers, bad ndim, negative extents, extents whose element
// or byte count overflows, NULL data, odd strides and byte offsets, vector dtypes. Each must come
// back as a non-OK status whose message starts with the argument's name. Also: empty batches with
// huge unbacked extents run (as no-ops), and the sizing functions take any int64 arguments. Every
// case runs in a child process so a crash or a hang is a reported failure, not a dead binary.
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <initializer_list>
#include <string>
#include <vector>

#include "check.h"
#include "difftree/difftree.h"
#include "difftree/difftree.hpp"
#include "test_util.h"

using namespace difftree;
using dt_test::TreeBuf;

namespace {

constexpr int64_t k2e32 = int64_t{1} << 32;

// The status has `code` and a message that starts with "<arg>:"; prints what came back if not.
bool rejects(const Status& s, StatusCode code, const std::string& arg) {
  if (s.code() == code && s.message().rfind(arg + ":", 0) == 0) return true;
  std::fprintf(stderr, "    expected %s naming \"%s\", got %s\n", dt_test::code_name(code),
               arg.c_str(), dt_test::describe(s).c_str());
  return false;
}

bool rejects_c(difftree_status s, difftree_status code, const std::string& arg) {
  const std::string msg = difftree_last_error();
  if (s == code && msg.rfind(arg + ":", 0) == 0) return true;
  std::fprintf(stderr, "    expected %s naming \"%s\", got %s: %s\n", difftree_status_string(code),
               arg.c_str(), difftree_status_string(s), msg.c_str());
  return false;
}

void run_case(const std::string& what, const std::function<bool()>& fn, int line) {
  const dt_test::Isolated r = dt_test::run_isolated(fn);
  dt_test::record(r == dt_test::Isolated::kReturnedTrue, __FILE__, line,
                  what + ": " + dt_test::isolated_name(r));
}
#define CASE(what, ...) run_case(what, __VA_ARGS__, __LINE__)

// Scratch memory that every well-formed view in these cases fits in (and that no rejected call
// may touch).
struct Scratch {
  std::vector<uint8_t> bytes = std::vector<uint8_t>(1 << 16, 0xab);
  void* p() { return bytes.data(); }
  bool untouched() const {
    for (uint8_t b : bytes)
      if (b != 0xab) return false;
    return true;
  }
};

// ---- C ABI descriptors ----------------------------------------------------------------------

constexpr DLDataType kI32{kDLInt, 32, 1}, kI64{kDLInt, 64, 1}, kF32{kDLFloat, 32, 1},
    kBool{kDLBool, 8, 1};

// A DLTensor owning its shape / strides arrays (so it must not be copied).
struct Dl {
  int64_t shape[16] = {};
  int64_t strides[16] = {};
  DLTensor t{};
  Dl(void* data, DLDataType dtype, std::initializer_list<int64_t> dims) {
    t.data = data;
    t.device = DLDevice{kDLCPU, 0};
    t.ndim = static_cast<int32_t>(dims.size());
    t.dtype = dtype;
    int i = 0;
    for (int64_t d : dims) shape[i++] = d;
    t.shape = shape;
    t.strides = nullptr;
    t.byte_offset = 0;
  }
  Dl(const Dl&) = delete;
  Dl& operator=(const Dl&) = delete;
  void set_strides(std::initializer_list<int64_t> s) {
    int i = 0;
    for (int64_t d : s) strides[i++] = d;
    t.strides = strides;
  }
};

// A difftree_tree of [B, N] descriptors over one data pointer (NULL or scratch).
struct CTree {
  Dl token, parent, depth, score, first_child, next_sibling, anc, num_nodes;
  CTree(void* data, int64_t B, int64_t N)
      : token(data, kI32, {B, N}),
        parent(data, kI32, {B, N}),
        depth(data, kI32, {B, N}),
        score(data, kF32, {B, N}),
        first_child(data, kI32, {B, N}),
        next_sibling(data, kI32, {B, N}),
        anc(data, kI32, {B, N, anc_words(N)}),
        num_nodes(data, kI32, {B}) {}
  // Views a TreeBuf's arrays.
  explicit CTree(TreeBuf& b)
      : token(b.token.data(), kI32, {b.B, b.N}),
        parent(b.parent.data(), kI32, {b.B, b.N}),
        depth(b.depth.data(), kI32, {b.B, b.N}),
        score(b.score.data(), kF32, {b.B, b.N}),
        first_child(b.first_child.data(), kI32, {b.B, b.N}),
        next_sibling(b.next_sibling.data(), kI32, {b.B, b.N}),
        anc(b.anc.data(), kI32, {b.B, b.N, b.W}),
        num_nodes(b.num_nodes.data(), kI32, {b.B}) {}
  difftree_tree tree() const {
    return {token.t, parent.t, depth.t, score.t, first_child.t, next_sibling.t, anc.t, num_nodes.t};
  }
};

// A C++ TreeView of [B, N] views over one data pointer.
TreeView tree_over(void* data, int64_t B, int64_t N) {
  TreeView t;
  t.token = make_view(data, DType::kInt32, {B, N});
  t.parent = make_view(data, DType::kInt32, {B, N});
  t.depth = make_view(data, DType::kInt32, {B, N});
  t.score = make_view(data, DType::kFloat32, {B, N});
  t.first_child = make_view(data, DType::kInt32, {B, N});
  t.next_sibling = make_view(data, DType::kInt32, {B, N});
  t.anc = make_view(data, DType::kInt32, {B, N, anc_words(N)});
  t.num_nodes = make_view(data, DType::kInt32, {B});
  return t;
}

// A valid one-request tree of capacity 5: 0 -> 1 -> 2, 0 -> 3.
TreeBuf small_tree() {
  TreeBuf t(1, 5);
  t.set_tree(0, {-1, 0, 1, 0}, {100, 10, 20, 11});
  return t;
}

// ---- kv_commit: caches [1, 2, 32, -1], path [0, 2, 5] ---------------------------------------

void test_kv_commit_negative_extent() {
  CASE("kv_commit caches [1, 2, 32, -1] (C++)", [] {
    Scratch s;
    int64_t base[] = {0}, path[] = {0, 2, 5}, acc[] = {2};
    const TensorView caches[] = {make_view(s.p(), DType::kFloat32, {1, 2, 32, -1})};
    const Status st =
        kv_commit(caches, 1, make_view(base, DType::kInt64, {1}),
                  make_view(path, DType::kInt64, {1, 3}), make_view(acc, DType::kInt64, {1}),
                  nullptr);
    return rejects(st, StatusCode::kInvalidValue, "caches[0]") && s.untouched();
  });
  CASE("kv_commit caches [1, 2, 32, -1] (C ABI)", [] {
    Scratch s;
    int64_t base[] = {0}, path[] = {0, 2, 5}, acc[] = {2};
    Dl cache(s.p(), kF32, {1, 2, 32, -1});
    Dl b(base, kI64, {1}), p(path, kI64, {1, 3}), a(acc, kI64, {1});
    const DLTensor* caches[] = {&cache.t};
    const difftree_status st = difftree_kv_commit(caches, 1, &b.t, &p.t, &a.t, nullptr);
    return rejects_c(st, DIFFTREE_INVALID_VALUE, "caches[0]") && s.untouched();
  });
  CASE("kv_commit a NULL cache descriptor (C ABI)", [] {
    Scratch s;
    int64_t base[] = {0}, path[] = {0, 1}, acc[] = {1};
    Dl cache(s.p(), kF32, {1, 1, 4, 2});
    Dl b(base, kI64, {1}), p(path, kI64, {1, 2}), a(acc, kI64, {1});
    const DLTensor* caches[] = {&cache.t, nullptr};
    return rejects_c(difftree_kv_commit(caches, 2, &b.t, &p.t, &a.t, nullptr),
                     DIFFTREE_INVALID_VALUE, "caches[1]") &&
           s.untouched();
  });
  CASE("kv_commit num_caches = -1 (C ABI)", [] {
    int64_t base[] = {0}, path[] = {0, 1}, acc[] = {1};
    Dl b(base, kI64, {1}), p(path, kI64, {1, 2}), a(acc, kI64, {1});
    return rejects_c(difftree_kv_commit(nullptr, -1, &b.t, &p.t, &a.t, nullptr),
                     DIFFTREE_INVALID_VALUE, "caches");
  });
}

// ---- ddtree_select with B = -1 --------------------------------------------------------------

void test_ddtree_select_negative_batch() {
  CASE("ddtree_select B = -1 (C++)", [] {
    Scratch s;
    const Status st = ddtree_select(make_view(s.p(), DType::kInt32, {-1, 2, 2}),
                                    make_view(s.p(), DType::kFloat32, {-1, 2, 2}), 4, nullptr,
                                    tree_over(s.p(), -1, 5), nullptr);
    return rejects(st, StatusCode::kInvalidValue, "cand_logprob") && s.untouched();
  });
  CASE("ddtree_select B = -1 (C ABI)", [] {
    Scratch s;
    Dl tok(s.p(), kI32, {-1, 2, 2}), lp(s.p(), kF32, {-1, 2, 2});
    CTree tree(s.p(), -1, 5);
    const difftree_ddtree_params params{4};
    const difftree_tree t = tree.tree();
    return rejects_c(difftree_ddtree_select(&tok.t, &lp.t, nullptr, &params, &t, nullptr),
                     DIFFTREE_INVALID_VALUE, "cand_logprob") &&
           s.untouched();
  });
}

// ---- tree_walk: B = -1, stop tokens [-2], [2^32, 2^32] with NULL data -----------------------

void test_tree_walk_descriptors() {
  CASE("tree_walk B = -1 (C++)", [] {
    Scratch s;
    const WalkOutputs out{make_view(s.p(), DType::kInt32, {-1, 3}),
                          make_view(s.p(), DType::kInt32, {-1}),
                          make_view(s.p(), DType::kInt32, {-1}),
                          make_view(s.p(), DType::kBool, {-1})};
    const Status st = tree_walk(tree_over(s.p(), -1, 5), make_view(s.p(), DType::kInt32, {-1, 5}),
                                nullptr, nullptr, out, nullptr);
    return rejects(st, StatusCode::kInvalidValue, "tree.token") && s.untouched();
  });
  CASE("tree_walk B = -1 (C ABI)", [] {
    Scratch s;
    CTree tree(s.p(), -1, 5);
    Dl choice(s.p(), kI32, {-1, 5}), path(s.p(), kI32, {-1, 3}), acc(s.p(), kI32, {-1}),
        next(s.p(), kI32, {-1}), done(s.p(), kBool, {-1});
    const difftree_tree t = tree.tree();
    return rejects_c(difftree_tree_walk(&t, &choice.t, nullptr, &path.t, &acc.t, &next.t, &done.t,
                                        nullptr),
                     DIFFTREE_INVALID_VALUE, "tree.token") &&
           s.untouched();
  });
  CASE("tree_walk stop_tokens [-2] (C++)", [] {
    TreeBuf tree = small_tree();
    int64_t choice[5] = {10, 20, 0, 0, 0}, stops[2] = {20, 30};
    int32_t path[3], acc[1], next[1];
    uint8_t done[1];
    const TensorView stop = make_view(stops, DType::kInt64, {-2});
    const WalkOutputs out{make_view(path, DType::kInt32, {1, 3}),
                          make_view(acc, DType::kInt32, {1}), make_view(next, DType::kInt32, {1}),
                          make_view(done, DType::kBool, {1})};
    return rejects(tree_walk(tree.view(), make_view(choice, DType::kInt64, {1, 5}), &stop, nullptr,
                             out, nullptr),
                   StatusCode::kInvalidValue, "stop_tokens");
  });
  CASE("tree_walk stop_tokens [-2] (C ABI)", [] {
    TreeBuf tree = small_tree();
    CTree ct(tree);
    int64_t choice[5] = {10, 20, 0, 0, 0}, stops[2] = {20, 30};
    int32_t path[3], acc[1], next[1];
    uint8_t done[1];
    Dl c(choice, kI64, {1, 5}), st(stops, kI64, {-2}), p(path, kI32, {1, 3}), a(acc, kI32, {1}),
        n(next, kI32, {1}), d(done, kBool, {1});
    difftree_walk_params params = difftree_walk_default_params();
    params.stop_tokens = &st.t;
    const difftree_tree t = ct.tree();
    return rejects_c(difftree_tree_walk(&t, &c.t, &params, &p.t, &a.t, &n.t, &d.t, nullptr),
                     DIFFTREE_INVALID_VALUE, "stop_tokens");
  });
  // The [B, N] tensors' element count wraps to 0, so their NULL data looked like an empty tensor;
  // the [B] ones and the path point at (far too small) memory.
  CASE("tree_walk [2^32, 2^32] with NULL data (C++)", [] {
    Scratch s;
    TreeView tree = tree_over(nullptr, k2e32, k2e32);
    tree.num_nodes.data = s.p();
    const WalkOutputs out{make_view(s.p(), DType::kInt32, {k2e32, 3}),
                          make_view(s.p(), DType::kInt32, {k2e32}),
                          make_view(s.p(), DType::kInt32, {k2e32}),
                          make_view(s.p(), DType::kBool, {k2e32})};
    return rejects(tree_walk(tree, make_view(nullptr, DType::kInt32, {k2e32, k2e32}), nullptr,
                             nullptr, out, nullptr),
                   StatusCode::kInvalidValue, "tree.token") &&
           s.untouched();
  });
  CASE("tree_walk [2^32, 2^32] with NULL data (C ABI)", [] {
    Scratch s;
    CTree tree(nullptr, k2e32, k2e32);
    tree.num_nodes.t.data = s.p();
    Dl choice(nullptr, kI32, {k2e32, k2e32}), path(s.p(), kI32, {k2e32, 3}),
        acc(s.p(), kI32, {k2e32}), next(s.p(), kI32, {k2e32}), done(s.p(), kBool, {k2e32});
    const difftree_tree t = tree.tree();
    return rejects_c(difftree_tree_walk(&t, &choice.t, nullptr, &path.t, &acc.t, &next.t, &done.t,
                                        nullptr),
                     DIFFTREE_INVALID_VALUE, "tree.token") &&
           s.untouched();
  });
  CASE("tree_walk a NULL tree and a NULL node_choice (C ABI)", [] {
    TreeBuf tree = small_tree();
    CTree ct(tree);
    int32_t path[3], acc[1], next[1];
    uint8_t done[1];
    Dl p(path, kI32, {1, 3}), a(acc, kI32, {1}), n(next, kI32, {1}), d(done, kBool, {1});
    const difftree_tree t = ct.tree();
    return rejects_c(difftree_tree_walk(nullptr, &p.t, nullptr, &p.t, &a.t, &n.t, &d.t, nullptr),
                     DIFFTREE_INVALID_VALUE, "tree") &&
           rejects_c(difftree_tree_walk(&t, nullptr, nullptr, &p.t, &a.t, &n.t, &d.t, nullptr),
                     DIFFTREE_INVALID_VALUE, "node_choice");
  });
  CASE("tree_walk tree.anc with a NULL shape (C ABI)", [] {
    TreeBuf tree = small_tree();
    CTree ct(tree);
    ct.anc.t.shape = nullptr;
    int64_t choice[5] = {10, 20, 0, 0, 0};
    int32_t path[3], acc[1], next[1];
    uint8_t done[1];
    Dl c(choice, kI64, {1, 5}), p(path, kI32, {1, 3}), a(acc, kI32, {1}), n(next, kI32, {1}),
        d(done, kBool, {1});
    const difftree_tree t = ct.tree();
    return rejects_c(difftree_tree_walk(&t, &c.t, nullptr, &p.t, &a.t, &n.t, &d.t, nullptr),
                     DIFFTREE_INVALID_VALUE, "tree.anc");
  });
}

// ---- topk_logprobs: the descriptor fields one at a time -------------------------------------

// logits [1, 2, 4]: row 0 = 0, 1, 2, 3; row 1 = 3, 2, 1, 0 (k = 2).
struct TopkCase {
  float logits[12] = {9, 9, 9, 9, 0, 1, 2, 3, 3, 2, 1, 0};  // 4 leading floats for byte_offset
  int32_t token[4] = {-7, -7, -7, -7};
  float logprob[4] = {};
  float* data() { return logits + 4; }
};

difftree_status topk_c(const DLTensor* logits, TopkCase& c) {
  Dl tok(c.token, kI32, {1, 2, 2}), lp(c.logprob, kF32, {1, 2, 2});
  return difftree_topk_logprobs(logits, 2, &tok.t, &lp.t, nullptr);
}

Status topk_cpp(const TensorView& logits, TopkCase& c) {
  return topk_logprobs(logits, 2, make_view(c.token, DType::kInt32, {1, 2, 2}),
                       make_view(c.logprob, DType::kFloat32, {1, 2, 2}), nullptr);
}

bool topk_right(const TopkCase& c) {
  const int32_t want[4] = {3, 2, 0, 1};
  return std::memcmp(c.token, want, sizeof want) == 0;
}

void test_topk_descriptors() {
  CASE("logits with a NULL shape (C ABI)", [] {
    TopkCase c;
    Dl l(c.data(), kF32, {1, 2, 4});
    l.t.shape = nullptr;
    return rejects_c(topk_c(&l.t, c), DIFFTREE_INVALID_VALUE, "logits");
  });
  CASE("a NULL logits descriptor (C ABI)", [] {
    TopkCase c;
    return rejects_c(topk_c(nullptr, c), DIFFTREE_INVALID_VALUE, "logits");
  });
  for (int ndim : {-1, -2147483647 - 1, 9, 64}) {
    CASE("logits ndim = " + std::to_string(ndim) + " (C ABI)", [ndim] {
      TopkCase c;
      Dl l(c.data(), kF32, {1, 2, 4});
      l.t.ndim = ndim;
      return rejects_c(topk_c(&l.t, c), DIFFTREE_INVALID_VALUE, "logits");
    });
    CASE("logits ndim = " + std::to_string(ndim) + " (C++)", [ndim] {
      TopkCase c;
      TensorView l = make_view(c.data(), DType::kFloat32, {1, 2, 4});
      l.ndim = ndim;
      return rejects(topk_cpp(l, c), StatusCode::kInvalidValue, "logits");
    });
  }
  CASE("make_view with 9 dims (C++)", [] {
    TopkCase c;
    const TensorView l = make_view(c.data(), DType::kFloat32, {1, 1, 1, 1, 1, 1, 1, 2, 4});
    return rejects(topk_cpp(l, c), StatusCode::kInvalidValue, "logits");
  });
  CASE("NULL strides are compact row-major; explicit compact strides too (C ABI)", [] {
    TopkCase a, b;
    Dl la(a.data(), kF32, {1, 2, 4}), lb(b.data(), kF32, {1, 2, 4});
    lb.set_strides({8, 4, 1});
    return topk_c(&la.t, a) == DIFFTREE_OK && topk_c(&lb.t, b) == DIFFTREE_OK && topk_right(a) &&
           topk_right(b);
  });
  CASE("byte_offset is honoured (C ABI)", [] {
    TopkCase c;
    Dl l(c.logits, kF32, {1, 2, 4});
    l.t.byte_offset = 4 * sizeof(float);
    return topk_c(&l.t, c) == DIFFTREE_OK && topk_right(c);
  });
  CASE("byte_offset past the end of the address space (C ABI)", [] {
    TopkCase c;
    Dl l(c.data(), kF32, {1, 2, 4});
    l.t.byte_offset = ~uint64_t{0} - 3;
    return rejects_c(topk_c(&l.t, c), DIFFTREE_INVALID_VALUE, "logits");
  });
  CASE("non-row-major strides (C ABI)", [] {
    TopkCase c;
    Dl l(c.data(), kF32, {1, 2, 4});
    l.set_strides({8, 1, 2});
    return rejects_c(topk_c(&l.t, c), DIFFTREE_INVALID_VALUE, "logits");
  });
  CASE("a negative stride (C ABI)", [] {
    TopkCase c;
    Dl l(c.data() + 3, kF32, {1, 2, 4});
    l.set_strides({8, 4, -1});
    return rejects_c(topk_c(&l.t, c), DIFFTREE_INVALID_VALUE, "logits");
  });
  CASE("a negative stride (C++)", [] {
    TopkCase c;
    TensorView l = make_view(c.data() + 3, DType::kFloat32, {1, 2, 4});
    l.strides[2] = -1;
    return rejects(topk_cpp(l, c), StatusCode::kInvalidValue, "logits");
  });
  CASE("an INT64_MIN stride (C ABI)", [] {
    TopkCase c;
    Dl l(c.data(), kF32, {1, 2, 4});
    l.set_strides({8, INT64_MIN, 1});
    return rejects_c(topk_c(&l.t, c), DIFFTREE_INVALID_VALUE, "logits");
  });
  CASE("vector lanes = 4 (C ABI)", [] {
    TopkCase c;
    Dl l(c.data(), DLDataType{kDLFloat, 32, 4}, {1, 2, 1});
    return rejects_c(topk_c(&l.t, c), DIFFTREE_INVALID_TYPE, "logits");
  });
  CASE("lanes = 0, bits = 0 (C ABI)", [] {
    TopkCase c;
    Dl l(c.data(), DLDataType{kDLFloat, 0, 0}, {1, 2, 4});
    return rejects_c(topk_c(&l.t, c), DIFFTREE_INVALID_TYPE, "logits");
  });
  CASE("NULL data for a non-empty tensor (C ABI)", [] {
    TopkCase c;
    Dl l(nullptr, kF32, {1, 2, 4});
    return rejects_c(topk_c(&l.t, c), DIFFTREE_INVALID_VALUE, "logits");
  });
  CASE("NULL data for a non-empty tensor (C++)", [] {
    TopkCase c;
    return rejects(topk_cpp(make_view(nullptr, DType::kFloat32, {1, 2, 4}), c),
                   StatusCode::kInvalidValue, "logits");
  });
  CASE("NULL data, [2^32, 2^32, 4] (element count wraps to 0) (C++)", [] {
    TopkCase c;
    return rejects(topk_cpp(make_view(nullptr, DType::kFloat32, {k2e32, k2e32, 4}), c),
                   StatusCode::kInvalidValue, "logits");
  });
  CASE("NULL data, [2^32, 2^32, 4] (element count wraps to 0) (C ABI)", [] {
    TopkCase c;
    Dl l(nullptr, kF32, {k2e32, k2e32, 4});
    return rejects_c(topk_c(&l.t, c), DIFFTREE_INVALID_VALUE, "logits");
  });
  CASE("stride 0, [2^31, 2^31, 1] f32 (byte count overflows int64) (C ABI)", [] {
    TopkCase c;
    Dl l(c.data(), kF32, {int64_t{1} << 31, int64_t{1} << 31, 1});
    l.set_strides({0, 0, 1});
    return rejects_c(topk_c(&l.t, c), DIFFTREE_INVALID_VALUE, "logits");
  });
  CASE("a negative extent in an output (C++)", [] {
    TopkCase c;
    const Status st =
        topk_logprobs(make_view(c.data(), DType::kFloat32, {1, 2, 4}), 2,
                      make_view(c.token, DType::kInt32, {1, 2, 2}),
                      make_view(c.logprob, DType::kFloat32, {1, -2, -2}), nullptr);
    return rejects(st, StatusCode::kInvalidValue, "logprob");
  });
}

// ---- tree_attention: strided views must not hide negative or overflowing strides ------------

void test_attention_strides() {
  CASE("tree_attention k_cache with an INT64_MIN stride (C++)", [] {
    std::vector<float> q(2 * 4, 0.5f), k(1 * 4 * 4, 0.25f), v(1 * 4 * 4, 1.0f), out(2 * 4, 0.0f);
    int64_t prefix[] = {1};
    TensorView kc = make_view(k.data(), DType::kFloat32, {1, 1, 4, 4});
    kc.strides[2] = INT64_MIN;
    const Status st = tree_attention(
        make_view(q.data(), DType::kFloat32, {1, 1, 2, 4}), kc,
        make_view(v.data(), DType::kFloat32, {1, 1, 4, 4}), make_view(prefix, DType::kInt64, {1}),
        nullptr, nullptr, 0.5f, true, 0, make_view(out.data(), DType::kFloat32, {1, 1, 2, 4}),
        nullptr, nullptr);
    return rejects(st, StatusCode::kInvalidValue, "k_cache");
  });
}

// ---- empty batches: extents no memory backs must not size the CPU's scratch ------------------

void test_empty_batch() {
  constexpr int64_t k2e40 = int64_t{1} << 40;
  CASE("d2sd_boundaries trunk_logprob [0, 2^40] (C++)", [] {
    const Status st = d2sd_boundaries(make_view(nullptr, DType::kFloat32, {0, k2e40}),
                                      make_view(nullptr, DType::kInt32, {0, 1}), nullptr);
    return st.ok();
  });
  CASE("presto_select cand_logprob [0, 2, 2^40] (C++)", [] {
    PrestoParams params;
    params.vocab = 8;
    const Status st = presto_select(
        make_view(nullptr, DType::kInt32, {0, 2, k2e40}),
        make_view(nullptr, DType::kFloat32, {0, 2, k2e40}), 4, nullptr,
        make_view(nullptr, DType::kInt64, {0, 2}), make_view(nullptr, DType::kInt64, {0, 8}),
        make_view(nullptr, DType::kInt32, {0, 8}), params, tree_over(nullptr, 0, 5), nullptr);
    return st.ok();
  });
}

// ---- sizing functions: any int64 arguments return promptly, without overflow ----------------

void test_sizing_arguments() {
  static const int64_t kOdd[] = {-1, INT64_MIN, INT64_MAX, int64_t{1} << 40};
  for (int64_t x : kOdd) {
    CASE("workspace sizing with " + std::to_string(x), [x] {
      // Sizes of requests no op accepts are 0 (1 split); the calls must not loop for long.
      return ddtree_select_workspace_bytes(1, 15, 64, x) == 0 &&
             presto_select_workspace_bytes(1, 15, 64, x, 3) == 0 &&
             presto_select_workspace_bytes(2, 15, x, 1024, 3) == 0 &&
             taps_select_workspace_bytes(3, x, 4096) == 0 &&
             d2sd_select_workspace_bytes(2, 100, x, 300, 4096) == 0 &&
             topk_logprobs_num_splits(x, x, 151936, 64) == 1 &&
             topk_logprobs_workspace_bytes(x, x, 151936, 64, 8) == 0 &&
             tree_attention_num_splits(x, 32, 8, x, 1 << 20) == 1 &&
             tree_attention_workspace_bytes(1, 32, 8, 64, x, 1 << 20, 4) == 0 &&
             difftree_ddtree_select_workspace_bytes(1, 15, 64, x) == 0;
    });
  }
}

}  // namespace

int main() {
  test_kv_commit_negative_extent();
  test_ddtree_select_negative_batch();
  test_tree_walk_descriptors();
  test_topk_descriptors();
  test_attention_strides();
  test_empty_batch();
  test_sizing_arguments();
  return dt_test::report("descriptors");
}
