// tree_walk through the public API: hand-built trees (branches, no match, stop tokens, the
// remaining-token cap), random trees from ddtree_select against a naive walk, malformed trees
// (must give InvalidValue, never a hang or a crash), and validation.
#include <algorithm>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "check.h"
#include "difftree/difftree.hpp"
#include "test_util.h"

using namespace difftree;
using dt_test::TreeBuf;

namespace {

struct WalkBuf {
  int64_t B, P;
  std::vector<int32_t> path, accepted, next_token;
  std::vector<uint8_t> done;
  WalkBuf(int64_t b, int64_t p)
      : B(b), P(p), path(b * p, -9), accepted(b, -9), next_token(b, -9), done(b, 9) {}
  WalkOutputs view(DType done_dtype = DType::kBool) {
    return WalkOutputs{make_view(path.data(), DType::kInt32, {B, P}),
                       make_view(accepted.data(), DType::kInt32, {B}),
                       make_view(next_token.data(), DType::kInt32, {B}),
                       make_view(done.data(), done_dtype, {B})};
  }
};

// One walk on request 0..B-1 with optional stop tokens and remaining caps (int64 or int32).
struct WalkArgs {
  std::vector<int64_t> choice;  // [B, N]
  std::vector<int64_t> stop;    // empty: no stop tokens
  std::vector<int64_t> remaining;
  bool use_stop = false, use_remaining = false, int64_idx = false;
};

Status walk(TreeBuf& t, const WalkArgs& a, WalkBuf& out, DType done_dtype = DType::kBool) {
  std::vector<int32_t> c32(a.choice.begin(), a.choice.end()), s32(a.stop.begin(), a.stop.end()),
      r32(a.remaining.begin(), a.remaining.end());
  std::vector<int64_t> c64 = a.choice, s64 = a.stop, r64 = a.remaining;
  const DType dt = a.int64_idx ? DType::kInt64 : DType::kInt32;
  void* cp = a.int64_idx ? static_cast<void*>(c64.data()) : c32.data();
  void* sp = a.int64_idx ? static_cast<void*>(s64.data()) : s32.data();
  void* rp = a.int64_idx ? static_cast<void*>(r64.data()) : r32.data();
  const TensorView choice = make_view(cp, dt, {t.B, t.N});
  const TensorView stop = make_view(sp, dt, {static_cast<int64_t>(a.stop.size())});
  const TensorView rem = make_view(rp, dt, {t.B});
  return tree_walk(t.view(), choice, a.use_stop ? &stop : nullptr, a.use_remaining ? &rem : nullptr,
                   out.view(done_dtype), nullptr);
}

// The hand-built tree (N = 8, one padding row):
//   0 (100) ── 1 (10) ── 3 (30) ── 5 (50)
//            │         └ 4 (31)
//            └ 2 (11) ── 6 (32)
TreeBuf hand_tree(int64_t B = 1) {
  TreeBuf t(B, 8);
  for (int64_t b = 0; b < B; ++b)
    t.set_tree(b, {-1, 0, 0, 1, 1, 3, 2}, {100, 10, 11, 30, 31, 50, 32});
  return t;
}

std::vector<int64_t> choices(std::initializer_list<std::pair<int, int64_t>> set) {
  std::vector<int64_t> c(8, 999);  // 999 matches no token
  for (auto [node, tok] : set) c[node] = tok;
  return c;
}

struct Expect {
  std::vector<int32_t> path;  // P = 4 columns
  int32_t accepted, next;
  bool done;
};

void expect_walk(TreeBuf& t, const WalkArgs& a, const Expect& e, const char* what) {
  dt_test::Context ctx(what);
  WalkBuf out(t.B, 4);
  if (!CHECK_OK(walk(t, a, out))) return;
  CHECK(out.path == e.path);
  CHECK_EQ(out.accepted[0], e.accepted);
  CHECK_EQ(out.next_token[0], e.next);
  CHECK_EQ(static_cast<int>(out.done[0]), e.done ? 1 : 0);
}

void test_hand_built() {
  TreeBuf t = hand_tree();
  const auto deep = choices({{0, 10}, {1, 30}, {3, 50}, {5, 7}});  // 0 -> 1 -> 3 -> 5, bonus 7
  WalkArgs a;
  a.choice = choices({{0, 11}, {2, 32}, {6, 77}});
  expect_walk(t, a, {{0, 2, 6, -1}, 2, 77, false}, "greedy choices follow the second branch");
  a.choice = choices({{0, 10}, {1, 31}, {4, 5}});
  expect_walk(t, a, {{0, 1, 4, -1}, 2, 5, false}, "second sibling at depth 2");
  a.choice = deep;
  expect_walk(t, a, {{0, 1, 3, 5}, 3, 7, false}, "full depth");
  a.choice = choices({{0, 12}});
  expect_walk(t, a, {{0, -1, -1, -1}, 0, 12, false}, "root choice matches no child");
  a.choice = choices({{0, 10}, {1, 32}});  // 32 is a token of the tree, but not a child of 1
  expect_walk(t, a, {{0, 1, -1, -1}, 1, 32, false}, "a cousin's token is not a child");
  {  // a negative choice is not a token (it would alias the padding rows' token -1)
    dt_test::Context ctx("negative choice");
    a.choice = choices({{0, -1}});
    WalkBuf out(t.B, 4);
    CHECK_STATUS(walk(t, a, out), kInvalidValue, "node_choice");
  }

  a.choice = deep;
  a.use_stop = true;
  a.stop = {30, 4444};
  expect_walk(t, a, {{0, 1, 3, -1}, 2, -1, true}, "stop token inside the path");
  a.stop = {10};
  expect_walk(t, a, {{0, 1, -1, -1}, 1, -1, true}, "stop token at the first draft");
  a.stop = {7};
  expect_walk(t, a, {{0, 1, 3, 5}, 3, 7, true}, "stop token as the bonus");
  a.stop = {100};  // the root's token is not emitted, so it never stops the walk
  expect_walk(t, a, {{0, 1, 3, 5}, 3, 7, false}, "root token as a stop token");
  a.stop = {};
  expect_walk(t, a, {{0, 1, 3, 5}, 3, 7, false}, "empty stop list");
  a.choice = choices({{0, 12}});
  a.stop = {12};
  expect_walk(t, a, {{0, -1, -1, -1}, 0, 12, true}, "nothing accepted, bonus is a stop token");

  a.choice = deep;
  a.use_stop = false;
  a.use_remaining = true;
  a.remaining = {2};
  expect_walk(t, a, {{0, 1, 3, -1}, 2, -1, true}, "remaining cap mid-path");
  a.remaining = {3};
  expect_walk(t, a, {{0, 1, 3, 5}, 3, -1, true}, "remaining = path length: no bonus");
  a.remaining = {4};
  expect_walk(t, a, {{0, 1, 3, 5}, 3, 7, true}, "remaining cap exactly at the bonus");
  a.remaining = {5};
  expect_walk(t, a, {{0, 1, 3, 5}, 3, 7, false}, "remaining above what is emitted");
  a.remaining = {0};
  expect_walk(t, a, {{0, -1, -1, -1}, 0, -1, true}, "remaining 0");
  a.remaining = {1};
  a.use_stop = true;
  a.stop = {10};
  expect_walk(t, a, {{0, 1, -1, -1}, 1, -1, true}, "cap and stop token on the same token");
  a.int64_idx = true;
  a.remaining = {3};
  a.stop = {50};
  expect_walk(t, a, {{0, 1, 3, 5}, 3, -1, true}, "int64 choices, stop tokens, remaining");

  {  // done as uint8, a batch with different outcomes per request
    TreeBuf tb = hand_tree(3);
    WalkArgs b;
    b.choice = deep;
    const auto c2 = choices({{0, 11}, {2, 32}, {6, 8}});
    const auto c3 = choices({{0, 5}});
    b.choice.insert(b.choice.end(), c2.begin(), c2.end());
    b.choice.insert(b.choice.end(), c3.begin(), c3.end());
    b.use_remaining = true;
    b.remaining = {2, 100, 100};
    b.use_stop = true;
    b.stop = {5};
    WalkBuf out(3, 4);
    CHECK_OK(walk(tb, b, out, DType::kUInt8));
    CHECK(out.path == std::vector<int32_t>({0, 1, 3, -1, 0, 2, 6, -1, 0, -1, -1, -1}));
    CHECK(out.accepted == std::vector<int32_t>({2, 2, 0}));
    CHECK(out.next_token == std::vector<int32_t>({-1, 8, 5}));
    CHECK(out.done == std::vector<uint8_t>({1, 0, 1}));
  }
  {  // path wider than needed: padded with -1; too narrow: InvalidValue naming path
    WalkArgs b;
    b.choice = deep;
    WalkBuf wide(1, 7), narrow(1, 3), one(1, 1);
    CHECK_OK(tree_walk(t.view(), make_view(b.choice.data(), DType::kInt64, {1, 8}), nullptr,
                       nullptr, wide.view(), nullptr));
    CHECK(wide.path == std::vector<int32_t>({0, 1, 3, 5, -1, -1, -1}));
    CHECK_STATUS(tree_walk(t.view(), make_view(b.choice.data(), DType::kInt64, {1, 8}), nullptr,
                           nullptr, narrow.view(), nullptr),
                 kInvalidValue, "path");
    b.choice = choices({{0, 12}});
    CHECK_OK(tree_walk(t.view(), make_view(b.choice.data(), DType::kInt64, {1, 8}), nullptr,
                       nullptr, one.view(), nullptr));
    CHECK_EQ(one.path[0], 0);
    CHECK_EQ(one.next_token[0], 12);
  }
  {  // root-only tree (N = 1)
    TreeBuf r(1, 1);
    r.set_tree(0, {-1}, {5});
    WalkArgs b;
    b.choice = {9};
    WalkBuf out(1, 1);
    CHECK_OK(walk(r, b, out));
    CHECK_EQ(out.accepted[0], 0);
    CHECK_EQ(out.next_token[0], 9);
  }
  {  // negative remaining: no emission budget at all
    WalkArgs b;
    b.choice = deep;
    b.use_remaining = true;
    b.remaining = {-1};
    WalkBuf out(1, 4);
    const Status s = walk(t, b, out);
    // Regression: a negative remaining never equalled the emitted count, so remaining = -1 acted
    // as "no cap". It must be rejected by name (or behave as 0).
    const bool as_zero = s.ok() && out.accepted[0] == 0 && out.next_token[0] == -1 && out.done[0];
    const bool rejected =
        s.code() == StatusCode::kInvalidValue && s.message().find("remaining") != std::string::npos;
    if (!CHECK(as_zero || rejected))
      std::fprintf(stderr, "    remaining=-1 -> %s, accepted %d, next %d, done %d\n",
                   dt_test::describe(s).c_str(), out.accepted[0], out.next_token[0],
                   static_cast<int>(out.done[0]));
  }
}

// ---- random trees from ddtree_select against a naive walk --------------------------------------
void test_random_vs_naive() {
  std::mt19937 rng(777);
  for (int c = 0; c < 400; ++c) {
    const int64_t B = 1 + rng() % 3, L = rng() % 7, K = 1 + rng() % 4, budget = 1 + rng() % 60;
    const int64_t N = budget + 1;
    std::vector<int32_t> ct(B * L * K);
    std::vector<float> cl(B * L * K);
    for (int64_t row = 0; row < B * L; ++row) {
      float lp = 0.0f;
      for (int64_t r = 0; r < K; ++r) {
        ct[row * K + r] = static_cast<int32_t>(r * 3 + rng() % 3);  // distinct, small ids
        lp -= static_cast<float>(rng() % 3) * 0.5f;
        cl[row * K + r] = lp;
      }
    }
    TreeBuf t(B, N);
    std::vector<int32_t> roots(B, 1);
    const TensorView rv = make_view(roots.data(), DType::kInt32, {B});
    dt_test::Context ctx("random walk case " + std::to_string(c));
    if (!CHECK_OK(ddtree_select(make_view(ct.data(), DType::kInt32, {B, L, K}),
                                make_view(cl.data(), DType::kFloat32, {B, L, K}), budget, &rv,
                                t.view(), nullptr)))
      continue;
    WalkArgs a;
    a.choice.resize(B * N);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t i = 0; i < N; ++i) {  // usually a child's token, sometimes anything
        const int32_t fc = t.at(t.first_child, b, i);
        a.choice[b * N + i] =
            (fc >= 0 && rng() % 4 != 0) ? t.at(t.token, b, fc) + (rng() % 2) * 1 : rng() % 12;
      }
    a.use_stop = rng() % 2;
    if (a.use_stop)
      for (int s = rng() % 3; s > 0; --s) a.stop.push_back(rng() % 12);
    a.use_remaining = rng() % 2;
    for (int64_t b = 0; b < B; ++b) a.remaining.push_back(rng() % (L + 3));
    a.int64_idx = rng() % 2;
    const int64_t P = L + 1;
    WalkBuf out(B, P);
    if (!CHECK_OK(walk(t, a, out))) continue;
    for (int64_t b = 0; b < B; ++b) {
      // Naive: children found by scanning parent[], emission then truncated by stop and cap.
      const int64_t n = t.num_nodes[b];
      std::vector<int32_t> path = {0};
      while (true) {
        const int32_t cur = path.back();
        int32_t next = -1;
        for (int64_t j = 1; j < n; ++j)
          if (t.at(t.parent, b, j) == cur && t.at(t.token, b, j) == a.choice[b * N + cur])
            next = static_cast<int32_t>(j);
        if (next < 0) break;
        path.push_back(next);
      }
      const int64_t acc = static_cast<int64_t>(path.size()) - 1;
      std::vector<int64_t> seq;
      for (int64_t j = 1; j <= acc; ++j) seq.push_back(t.at(t.token, b, path[j]));
      seq.push_back(a.choice[b * N + path.back()]);
      const int64_t cap = a.use_remaining ? a.remaining[b] : INT64_MAX;
      std::vector<int64_t> emitted;
      bool stopped = false;
      for (int64_t tok : seq) {
        if (static_cast<int64_t>(emitted.size()) == cap) break;
        emitted.push_back(tok);
        if (std::find(a.stop.begin(), a.stop.end(), tok) != a.stop.end()) {
          stopped = true;
          break;
        }
      }
      const int64_t kept = std::min<int64_t>(static_cast<int64_t>(emitted.size()), acc);
      const int64_t want_next =
          static_cast<int64_t>(emitted.size()) == acc + 1 ? seq.back() : int64_t{-1};
      const bool want_done = stopped || static_cast<int64_t>(emitted.size()) == cap;
      dt_test::Context cb("request " + std::to_string(b));
      CHECK_EQ(out.accepted[b], kept);
      CHECK_EQ(out.next_token[b], want_next);
      CHECK_EQ(static_cast<int>(out.done[b]), want_done ? 1 : 0);
      for (int64_t j = 0; j < P; ++j) CHECK_EQ(out.path[b * P + j], j <= kept ? path[j] : -1);
    }
  }
}

// ---- malformed trees ---------------------------------------------------------------------------
// Each runs in a child process: InvalidValue naming the bad array is expected; a hang or crash
// is reported as such.
void expect_malformed(TreeBuf t, std::vector<int64_t> choice, const char* needle,
                      const char* what) {
  dt_test::Context ctx(what);
  auto fn = [&]() {
    WalkBuf out(t.B, 8);
    const Status s = tree_walk(t.view(), make_view(choice.data(), DType::kInt64, {t.B, t.N}),
                               nullptr, nullptr, out.view(), nullptr);
    if (s.code() == StatusCode::kInvalidValue && s.message().find(needle) != std::string::npos)
      return true;
    std::fprintf(stderr, "    got %s\n", dt_test::describe(s).c_str());
    return false;
  };
  CHECK_ISOLATED(fn);
}

void test_malformed() {
  const auto none = choices({{0, 12}});  // scans every child of the root
  {
    TreeBuf t = hand_tree();
    t.next_sibling[2] = 1;  // 1 -> 2 -> 1 -> ...
    expect_malformed(t, none, "next_sibling", "a cycle in next_sibling");
  }
  {
    TreeBuf t = hand_tree();
    t.next_sibling[1] = 1;
    expect_malformed(t, none, "next_sibling", "next_sibling pointing at itself");
  }
  {
    TreeBuf t = hand_tree();
    t.next_sibling[1] = 1000000;
    expect_malformed(t, none, "next_sibling", "next_sibling far out of range");
  }
  {
    TreeBuf t = hand_tree();
    t.first_child[1] = 0;  // child index < parent
    expect_malformed(t, choices({{0, 10}, {1, 100}}), "first_child", "a child index < parent");
  }
  {
    TreeBuf t = hand_tree();
    t.first_child[0] = 0;
    expect_malformed(t, choices({{0, 100}}), "first_child", "first_child pointing at itself");
  }
  {
    TreeBuf t = hand_tree();
    t.first_child[2] = 7;  // the padding row (num_nodes = 7)
    expect_malformed(t, choices({{0, 11}, {2, 0}}), "first_child", "child in the padding");
  }
  {
    TreeBuf t = hand_tree();
    t.first_child[6] = 1 << 30;
    expect_malformed(t, choices({{0, 11}, {2, 32}, {6, 1}}), "first_child",
                     "first_child far out of range");
  }
  for (int32_t n : {0, -1, 9}) {
    TreeBuf t = hand_tree();
    t.num_nodes[0] = n;
    expect_malformed(t, none, "num_nodes", "num_nodes out of [1, N]");
  }
  {  // well-formed except for a sibling cycle in the second request only
    TreeBuf t = hand_tree(2);
    t.next_sibling[8 + 3] = 3;
    std::vector<int64_t> c = choices({{0, 10}, {1, 99}});
    c.insert(c.end(), c.begin(), c.end());
    expect_malformed(t, c, "next_sibling", "a cycle in request 1 only");
  }
}

void test_validation() {
  dt_test::Context ctx("validation");
  TreeBuf t = hand_tree(2);
  std::vector<int64_t> c(16, 0);
  std::vector<float> cf(16);
  std::vector<int32_t> s2(4), rem(3);
  const TensorView choice = make_view(c.data(), DType::kInt64, {2, 8});
  WalkBuf out(2, 4);
  CHECK_OK(check_tree_walk(t.view(), choice, nullptr, nullptr));
  CHECK_STATUS(
      check_tree_walk(t.view(), make_view(c.data(), DType::kInt64, {2, 7}), nullptr, nullptr),
      kInvalidValue, "node_choice");
  CHECK_STATUS(
      check_tree_walk(t.view(), make_view(cf.data(), DType::kFloat32, {2, 8}), nullptr, nullptr),
      kInvalidType, "node_choice");
  const TensorView stop2d = make_view(s2.data(), DType::kInt32, {2, 2});
  CHECK_STATUS(check_tree_walk(t.view(), choice, &stop2d, nullptr), kInvalidValue, "stop_tokens");
  const TensorView stopf = make_view(cf.data(), DType::kFloat32, {3});
  CHECK_STATUS(check_tree_walk(t.view(), choice, &stopf, nullptr), kInvalidType, "stop_tokens");
  const TensorView rem3 = make_view(rem.data(), DType::kInt32, {3});
  CHECK_STATUS(check_tree_walk(t.view(), choice, nullptr, &rem3), kInvalidValue, "remaining");
  TensorView choice_dev = choice;
  choice_dev.device = DeviceType::kCUDA;
  CHECK_STATUS(check_tree_walk(t.view(), choice_dev, nullptr, nullptr), kInvalidValue,
               "node_choice");
  {
    TreeView v = t.view();
    v.anc.shape[2] = 2;
    CHECK_STATUS(check_tree_walk(v, choice, nullptr, nullptr), kInvalidValue, "tree.anc");
    v = t.view();
    v.token.shape[1] = 0;
    CHECK_STATUS(check_tree_walk(v, choice, nullptr, nullptr), kInvalidValue, "tree.token");
    v = t.view();
    v.first_child.dtype = DType::kInt64;
    CHECK_STATUS(check_tree_walk(v, choice, nullptr, nullptr), kInvalidType, "tree.first_child");
    v = t.view();
    v.next_sibling.strides[0] = 16;
    CHECK_STATUS(check_tree_walk(v, choice, nullptr, nullptr), kInvalidValue, "tree.next_sibling");
  }
  std::vector<int64_t> p64(8);
  WalkOutputs o = out.view();
  o.path = make_view(p64.data(), DType::kInt64, {2, 4});
  CHECK_STATUS(tree_walk(t.view(), choice, nullptr, nullptr, o, nullptr), kInvalidType, "path");
  o = out.view();
  o.path = make_view(out.path.data(), DType::kInt32, {2, 0});
  CHECK_STATUS(tree_walk(t.view(), choice, nullptr, nullptr, o, nullptr), kInvalidValue, "path");
  o = out.view();
  o.accepted = make_view(out.accepted.data(), DType::kInt32, {1});
  CHECK_STATUS(tree_walk(t.view(), choice, nullptr, nullptr, o, nullptr), kInvalidValue,
               "accepted");
  o = out.view();
  o.next_token.dtype = DType::kInt64;
  CHECK_STATUS(tree_walk(t.view(), choice, nullptr, nullptr, o, nullptr), kInvalidType,
               "next_token");
  o = out.view();
  o.done.dtype = DType::kInt32;
  CHECK_STATUS(tree_walk(t.view(), choice, nullptr, nullptr, o, nullptr), kInvalidType, "done");
  if (!build_info().cuda_compiled) {
    TreeView v = t.view();
    for (TensorView* f : {&v.token, &v.parent, &v.depth, &v.score, &v.first_child, &v.next_sibling,
                          &v.anc, &v.num_nodes})
      f->device = DeviceType::kCUDA;
    WalkOutputs g = out.view();
    g.path.device = g.accepted.device = g.next_token.device = g.done.device = DeviceType::kCUDA;
    CHECK_STATUS(tree_walk(v, choice_dev, nullptr, nullptr, g, nullptr), kUnsupported, "tree_walk");
  }
}

}  // namespace

int main() {
  test_hand_built();
  test_random_vs_naive();
  test_malformed();
  test_validation();
  return dt_test::report("tree_walk");
}
