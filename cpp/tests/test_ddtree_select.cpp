// ddtree_select through the public API: an independent brute-force oracle over the whole K^L
// candidate lattice, tree invariants on every result, hand-checked trees, and validation.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "check.h"
#include "difftree/difftree.hpp"
#include "test_util.h"

using namespace difftree;
using dt_test::TreeBuf;

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Candidates of one batch: tokens and log-probs [B, L, K].
struct Cands {
  int64_t B, L, K;
  std::vector<int64_t> token;  // stored as int64; passed as int32 or int64
  std::vector<float> lp;
  int64_t idx(int64_t b, int64_t d, int64_t r) const { return (b * L + d) * K + r; }
};

struct Run {
  TreeBuf tree;
  Status status;
};

Run run_select(const Cands& c, int64_t budget, bool int64_tokens, const int64_t* root_tokens) {
  Run r{TreeBuf(c.B, budget + 1), Status()};
  std::vector<int32_t> tok32(c.token.begin(), c.token.end());
  std::vector<int64_t> tok64 = c.token;
  const TensorView ct = int64_tokens ? make_view(tok64.data(), DType::kInt64, {c.B, c.L, c.K})
                                     : make_view(tok32.data(), DType::kInt32, {c.B, c.L, c.K});
  std::vector<float> lp = c.lp;
  const TensorView cl = make_view(lp.data(), DType::kFloat32, {c.B, c.L, c.K});
  std::vector<int64_t> root(c.B);
  TensorView rv;
  if (root_tokens) {
    root.assign(root_tokens, root_tokens + c.B);
    rv = make_view(root.data(), DType::kInt64, {c.B});
  }
  r.status = ddtree_select(ct, cl, budget, root_tokens ? &rv : nullptr, r.tree.view(), nullptr);
  return r;
}

// ---- the oracle -------------------------------------------------------------------------------
// Every path of the lattice, scored in fp32 the same way (score(parent) + logprob, parent first).
// The normative order needs the parent's position among admitted nodes; parents are one depth up
// and, within a depth, the global order is the depth's own order, so sort depth by depth:
// (score desc, parent's position in its depth asc, rank asc), then merge the depths by
// (score desc, depth asc, position in depth asc) and keep the first `budget`.
struct OracleTree {
  int32_t num_nodes;
  std::vector<int32_t> token, parent, depth;
  std::vector<float> score;
};

OracleTree oracle(const Cands& c, int64_t b, int64_t budget, int32_t root_token) {
  struct Node {
    float score;
    int32_t parent_pos;  // position of the parent within depth d-1
    int32_t rank;
    int32_t global;  // index in the output, or -1
  };
  std::vector<std::vector<Node>> level(c.L + 1);
  level[0].push_back({0.0f, -1, 0, 0});
  for (int64_t d = 1; d <= c.L; ++d) {
    const std::vector<Node>& up = level[d - 1];
    for (size_t p = 0; p < up.size(); ++p)
      for (int64_t r = 0; r < c.K; ++r)
        level[d].push_back({up[p].score + c.lp[c.idx(b, d - 1, r)], static_cast<int32_t>(p),
                            static_cast<int32_t>(r), -1});
    std::sort(level[d].begin(), level[d].end(), [](const Node& x, const Node& y) {
      if (x.score != y.score) return x.score > y.score;
      if (x.parent_pos != y.parent_pos) return x.parent_pos < y.parent_pos;
      return x.rank < y.rank;
    });
  }
  struct Ref {
    int32_t d, pos;
  };
  std::vector<Ref> all;
  for (int64_t d = 1; d <= c.L; ++d)
    for (size_t p = 0; p < level[d].size(); ++p)
      all.push_back({static_cast<int32_t>(d), static_cast<int32_t>(p)});
  std::sort(all.begin(), all.end(), [&](const Ref& x, const Ref& y) {
    const float sx = level[x.d][x.pos].score, sy = level[y.d][y.pos].score;
    if (sx != sy) return sx > sy;
    if (x.d != y.d) return x.d < y.d;
    return x.pos < y.pos;
  });
  OracleTree t;
  const int64_t n = std::min<int64_t>(budget, static_cast<int64_t>(all.size())) + 1;
  t.num_nodes = static_cast<int32_t>(n);
  t.token = {root_token};
  t.parent = {-1};
  t.depth = {0};
  t.score = {0.0f};
  for (int64_t i = 1; i < n; ++i) {
    const Ref& ref = all[i - 1];
    Node& node = level[ref.d][ref.pos];
    node.global = static_cast<int32_t>(i);
    t.token.push_back(static_cast<int32_t>(c.token[c.idx(b, ref.d - 1, node.rank)]));
    t.parent.push_back(level[ref.d - 1][node.parent_pos].global);  // -1 would break closure
    t.depth.push_back(ref.d);
    t.score.push_back(node.score);
  }
  return t;
}

// ---- invariants (tree.h / DESIGN.md §2) --------------------------------------------------------
void check_invariants(TreeBuf& t, int64_t b) {
  const int64_t N = t.N, n = t.num_nodes[b];
  dt_test::Context ctx("invariants of request " + std::to_string(b));
  if (!CHECK(n >= 1 && n <= N)) return;
  CHECK_EQ(t.at(t.parent, b, 0), -1);
  CHECK_EQ(t.at(t.depth, b, 0), 0);
  CHECK_EQ(t.score[b * N], 0.0f);
  for (int64_t i = 1; i < n; ++i) {
    const int32_t p = t.at(t.parent, b, i);
    if (!CHECK(p >= 0 && p < i)) return;  // parent < child, and so prefix closure
    CHECK_EQ(t.at(t.depth, b, i), t.at(t.depth, b, p) + 1);
    CHECK(t.score[b * N + i] <= t.score[b * N + i - 1]);  // best-first, non-increasing
    CHECK(t.score[b * N + i] <= t.score[b * N + p]);
  }
  // Children via links == children via parent[], in increasing index order; distinct tokens.
  std::vector<std::vector<int32_t>> children(n);
  for (int64_t j = 1; j < n; ++j) children[t.at(t.parent, b, j)].push_back(static_cast<int32_t>(j));
  for (int64_t i = 0; i < n; ++i) {
    const std::vector<int32_t>& want = children[i];
    std::vector<int32_t> got;
    for (int32_t c = t.at(t.first_child, b, i); c >= 0 && got.size() <= want.size();
         c = t.at(t.next_sibling, b, c)) {
      if (!CHECK(c < n)) break;
      got.push_back(c);
    }
    if (got != want) {
      dt_test::Context r("children of node " + std::to_string(i));
      CHECK(got == want);
    }
    std::vector<int32_t> toks;
    for (int32_t c : want) toks.push_back(t.at(t.token, b, c));
    std::sort(toks.begin(), toks.end());
    CHECK(std::adjacent_find(toks.begin(), toks.end()) == toks.end());
  }
  // anc: bit j of row i iff j is i or an ancestor (so row i = row parent | own bit); padding rows
  // hold only their own bit; no stray bits past N.
  std::vector<uint32_t> want(N * t.W, 0u);
  for (int64_t i = 0; i < N; ++i) {
    if (i > 0 && i < n)
      std::copy_n(want.begin() + t.at(t.parent, b, i) * t.W, t.W, want.begin() + i * t.W);
    want[i * t.W + i / 32] |= 1u << (i % 32);
    bool same = true;
    for (int64_t w = 0; w < t.W; ++w) same &= t.anc_word(b, i, w) == want[i * t.W + w];
    if (!same) {
      dt_test::Context r("anc row " + std::to_string(i));
      CHECK(same);
    }
  }
  // Padding rows.
  for (int64_t i = n; i < N; ++i) {
    const bool pad = t.at(t.token, b, i) == -1 && t.at(t.parent, b, i) == -1 &&
                     t.at(t.first_child, b, i) == -1 && t.at(t.next_sibling, b, i) == -1 &&
                     t.at(t.depth, b, i) == 0 && t.score[b * N + i] == kNegInf;
    if (!pad) {
      dt_test::Context r("padding row " + std::to_string(i));
      CHECK_EQ(t.at(t.token, b, i), -1);
      CHECK_EQ(t.at(t.parent, b, i), -1);
      CHECK_EQ(t.at(t.first_child, b, i), -1);
      CHECK_EQ(t.at(t.next_sibling, b, i), -1);
      CHECK_EQ(t.at(t.depth, b, i), 0);
      CHECK_EQ(t.score[b * N + i], kNegInf);
    }
  }
}

void compare_with_oracle(TreeBuf& t, const Cands& c, int64_t b, int64_t budget,
                         int32_t root_token) {
  const OracleTree o = oracle(c, b, budget, root_token);
  if (!CHECK_EQ(t.num_nodes[b], o.num_nodes)) return;
  for (int64_t i = 0; i < o.num_nodes; ++i) {
    dt_test::Context ctx("node " + std::to_string(i));
    // Evaluate every check (no short-circuit) so a failure reports all fields of the node.
    const bool ok[] = {CHECK_EQ(t.at(t.token, b, i), o.token[i]),
                       CHECK_EQ(t.at(t.parent, b, i), o.parent[i]),
                       CHECK_EQ(t.at(t.depth, b, i), o.depth[i]),
                       CHECK_EQ(t.score[b * t.N + i], o.score[i])};
    if (!(ok[0] && ok[1] && ok[2] && ok[3])) return;  // one divergence shifts everything after it
  }
}

// Random candidates. Log-probs come from a small set (exact ties, dyadic or not) or a continuum.
Cands random_cands(std::mt19937& rng, int64_t B, int64_t L, int64_t K, int lp_mode) {
  Cands c{B, L, K, std::vector<int64_t>(B * L * K), std::vector<float>(B * L * K)};
  static const float dyadic[] = {0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f};
  static const float decimal[] = {-0.1f, -0.2f, -0.3f, -0.7f, -1.1f};
  std::uniform_real_distribution<float> uni(-6.0f, 0.0f);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t d = 0; d < L; ++d) {
      std::vector<int64_t> toks;
      const int64_t range = (rng() % 2) ? 2 * K : 100000;
      while (static_cast<int64_t>(toks.size()) < K) {
        const int64_t t = rng() % range;
        if (std::find(toks.begin(), toks.end(), t) == toks.end()) toks.push_back(t);
      }
      std::vector<float> lps(K);
      for (float& v : lps)
        v = lp_mode == 0 ? dyadic[rng() % 6] : lp_mode == 1 ? decimal[rng() % 5] : uni(rng);
      std::sort(lps.begin(), lps.end(), [](float x, float y) { return x > y; });
      for (int64_t r = 0; r < K; ++r) {
        c.token[c.idx(b, d, r)] = toks[r];
        c.lp[c.idx(b, d, r)] = lps[r];
      }
    }
  return c;
}

void test_random_vs_oracle() {
  std::mt19937 rng(20240601);
  // (L, K) with small lattices: sum_{d<=L} K^d <= a few thousand.
  const int64_t shapes[][2] = {{0, 1}, {0, 4}, {1, 1}, {1, 5}, {1, 40}, {2, 2}, {2, 7},  {3, 3},
                               {3, 6}, {4, 2}, {4, 4}, {5, 3}, {6, 2},  {8, 2}, {10, 1}, {7, 3}};
  int cases = 0;
  for (int c = 0; c < 1500; ++c) {
    const auto& s = shapes[rng() % (sizeof(shapes) / sizeof(shapes[0]))];
    const int64_t L = s[0], K = s[1], B = 1 + rng() % 3;
    int64_t lattice = 0, pw = 1;
    for (int64_t d = 1; d <= L; ++d) lattice += (pw *= K);
    const int64_t budget =
        (rng() % 8 == 0) ? 1 + rng() % 4096 : 1 + static_cast<int64_t>(rng() % (lattice + 3));
    const int lp_mode = rng() % 3;
    const Cands cands = random_cands(rng, B, L, K, lp_mode);
    const bool int64_tokens = rng() % 2;
    std::vector<int64_t> roots(B);
    for (int64_t& r : roots) r = rng() % 1000;
    const bool with_root = rng() % 2;
    dt_test::Context ctx("random case " + std::to_string(c) + ": B=" + std::to_string(B) +
                         " L=" + std::to_string(L) + " K=" + std::to_string(K) + " budget=" +
                         std::to_string(budget) + " lp_mode=" + std::to_string(lp_mode));
    Run r = run_select(cands, budget, int64_tokens, with_root ? roots.data() : nullptr);
    if (!CHECK_OK(r.status)) continue;
    for (int64_t b = 0; b < B; ++b) {
      dt_test::Context cb("request " + std::to_string(b));
      check_invariants(r.tree, b);
      compare_with_oracle(r.tree, cands, b, budget,
                          with_root ? static_cast<int32_t>(roots[b]) : -1);
    }
    ++cases;
  }
  CHECK(cases > 1000);
}

Cands make_cands(int64_t L, int64_t K, const std::vector<float>& lp,
                 const std::vector<int64_t>& tok) {
  return Cands{1, L, K, tok, lp};
}

void test_hand_checked() {
  {
    dt_test::Context ctx("chain (K = 1)");
    Cands c = make_cands(4, 1, {-0.25f, -0.5f, -1.0f, -2.0f}, {7, 8, 9, 10});
    const int64_t root = 3;
    Run r = run_select(c, 10, false, &root);
    CHECK_OK(r.status);
    CHECK_EQ(r.tree.num_nodes[0], 5);
    const float scores[] = {0.0f, -0.25f, -0.75f, -1.75f, -3.75f};
    const int32_t toks[] = {3, 7, 8, 9, 10};
    for (int i = 0; i < 5; ++i) {
      CHECK_EQ(r.tree.token[i], toks[i]);
      CHECK_EQ(r.tree.parent[i], i - 1);
      CHECK_EQ(r.tree.depth[i], i);
      CHECK_EQ(r.tree.score[i], scores[i]);
      CHECK_EQ(r.tree.first_child[i], i < 4 ? i + 1 : -1);
      CHECK_EQ(r.tree.next_sibling[i], -1);
      CHECK_EQ(r.tree.anc_word(0, i, 0), (2u << i) - 1);
    }
    check_invariants(r.tree, 0);
  }
  {
    dt_test::Context ctx("star (L = 1), budget below K");
    Cands c = make_cands(1, 5, {-0.1f, -0.2f, -0.2f, -0.9f, -3.0f}, {50, 40, 30, 20, 10});
    Run r = run_select(c, 3, true, nullptr);
    CHECK_OK(r.status);
    CHECK_EQ(r.tree.num_nodes[0], 4);
    const int32_t toks[] = {-1, 50, 40, 30};
    for (int i = 0; i < 4; ++i) {
      CHECK_EQ(r.tree.token[i], toks[i]);
      CHECK_EQ(r.tree.parent[i], i - 1 < 0 ? -1 : 0);
      CHECK_EQ(r.tree.depth[i], i == 0 ? 0 : 1);
    }
    CHECK_EQ(r.tree.first_child[0], 1);
    CHECK_EQ(r.tree.next_sibling[1], 2);
    CHECK_EQ(r.tree.next_sibling[2], 3);
    CHECK_EQ(r.tree.next_sibling[3], -1);
    CHECK_EQ(r.tree.anc_word(0, 3, 0), 0x9u);
    check_invariants(r.tree, 0);
  }
  {
    dt_test::Context ctx("budget 1");
    Cands c = make_cands(3, 2, {-1, -2, -0.5f, -0.6f, -0.1f, -5}, {1, 2, 3, 4, 5, 6});
    Run r = run_select(c, 1, false, nullptr);
    CHECK_OK(r.status);
    CHECK_EQ(r.tree.num_nodes[0], 2);
    CHECK_EQ(r.tree.token[1], 1);
    CHECK_EQ(r.tree.parent[1], 0);
    CHECK_EQ(r.tree.score[1], -1.0f);
    CHECK_EQ(r.tree.first_child[0], 1);
    CHECK_EQ(r.tree.first_child[1], -1);
    check_invariants(r.tree, 0);
  }
  {
    dt_test::Context ctx("L = 0: root only");
    Cands c = make_cands(0, 3, {}, {});
    const int64_t root = 42;
    Run r = run_select(c, 5, false, &root);
    CHECK_OK(r.status);
    CHECK_EQ(r.tree.num_nodes[0], 1);
    CHECK_EQ(r.tree.token[0], 42);
    CHECK_EQ(r.tree.first_child[0], -1);
    check_invariants(r.tree, 0);
    Cands c0 = make_cands(0, 0, {}, {});  // K = 0 is fine when there is no depth
    Run r0 = run_select(c0, 1, true, nullptr);
    CHECK_OK(r0.status);
    CHECK_EQ(r0.tree.num_nodes[0], 1);
  }
  {
    dt_test::Context ctx("exact ties: breadth before depth, then parent index, then rank");
    // depth 1: [-1, -1]; depth 2: [-1, -1]. Scores: n1=(0) -1, n2=(1) -1, then four -2 nodes
    // ordered by parent (1 before 2) then rank.
    Cands c = make_cands(2, 2, {-1, -1, -1, -1}, {10, 11, 20, 21});
    Run r = run_select(c, 6, false, nullptr);
    CHECK_OK(r.status);
    const int32_t toks[] = {-1, 10, 11, 20, 21, 20, 21};
    const int32_t par[] = {-1, 0, 0, 1, 1, 2, 2};
    for (int i = 0; i < 7; ++i) {
      CHECK_EQ(r.tree.token[i], toks[i]);
      CHECK_EQ(r.tree.parent[i], par[i]);
    }
    check_invariants(r.tree, 0);
  }
  {
    // The normative tie-break of ops.h compares the parent's node index, which here differs from
    // comparing rank tuples: (1,0) scores -2.5 and is admitted before (0,1) at -3, so at -3 its
    // child (1,0,1) comes before (0,1,0) although (0,1,0) < (1,0,1) lexicographically.
    dt_test::Context ctx("ties ordered by the parent's node index");
    Cands c = make_cands(3, 2, {-1, -1.5f, -1, -2, 0, -0.5f}, {1, 2, 3, 4, 5, 6});
    Run r = run_select(c, 10, false, nullptr);
    CHECK_OK(r.status);
    // 0 root; 1=(0) -1; 2=(1) -1.5; 3=(0,0) -2; 4=(0,0,0) -2; 5=(1,0) -2.5; 6=(0,0,1) -2.5;
    // 7=(1,0,0) -2.5; 8=(0,1) -3; 9=(1,0,1) -3; 10=(0,1,0) -3.
    const int32_t toks[] = {-1, 1, 2, 3, 5, 3, 6, 5, 4, 6, 5};
    const int32_t par[] = {-1, 0, 0, 1, 3, 2, 3, 5, 1, 5, 8};
    const float sc[] = {0, -1, -1.5f, -2, -2, -2.5f, -2.5f, -2.5f, -3, -3, -3};
    for (int i = 0; i < 11; ++i) {
      dt_test::Context n("node " + std::to_string(i));
      CHECK_EQ(r.tree.token[i], toks[i]);
      CHECK_EQ(r.tree.parent[i], par[i]);
      CHECK_EQ(r.tree.score[i], sc[i]);
    }
    check_invariants(r.tree, 0);
    compare_with_oracle(r.tree, c, 0, 10, -1);
  }
  {
    dt_test::Context ctx("budget 40, star: N = 41, anc has 2 words");
    std::vector<float> lp(40);
    std::vector<int64_t> tok(40);
    for (int i = 0; i < 40; ++i) {
      lp[i] = -0.01f * static_cast<float>(i);
      tok[i] = 1000 - i;
    }
    Run r = run_select(make_cands(1, 40, lp, tok), 40, false, nullptr);
    CHECK_OK(r.status);
    CHECK_EQ(r.tree.W, 2);
    CHECK_EQ(r.tree.num_nodes[0], 41);
    CHECK_EQ(r.tree.anc_word(0, 35, 0), 0x1u);
    CHECK_EQ(r.tree.anc_word(0, 35, 1), 0x8u);
    CHECK_EQ(r.tree.anc_word(0, 31, 0), 0x80000001u);
    CHECK_EQ(r.tree.anc_word(0, 31, 1), 0x0u);
    CHECK_EQ(r.tree.next_sibling[39], 40);
    CHECK_EQ(r.tree.next_sibling[40], -1);
    check_invariants(r.tree, 0);
  }
  {
    dt_test::Context ctx("budget 70, chain: N = 71, anc has 3 words");
    std::vector<float> lp(75, -0.125f);
    std::vector<int64_t> tok(75);
    for (int i = 0; i < 75; ++i) tok[i] = i;
    Run r = run_select(make_cands(75, 1, lp, tok), 70, false, nullptr);
    CHECK_OK(r.status);
    CHECK_EQ(r.tree.W, 3);
    CHECK_EQ(r.tree.num_nodes[0], 71);
    CHECK_EQ(r.tree.depth[70], 70);
    CHECK_EQ(r.tree.score[70], -8.75f);
    CHECK_EQ(r.tree.anc_word(0, 70, 0), 0xFFFFFFFFu);
    CHECK_EQ(r.tree.anc_word(0, 70, 1), 0xFFFFFFFFu);
    CHECK_EQ(r.tree.anc_word(0, 70, 2), 0x7Fu);
    CHECK_EQ(r.tree.anc_word(0, 40, 1), 0x1FFu);
    CHECK_EQ(r.tree.anc_word(0, 40, 2), 0x0u);
    check_invariants(r.tree, 0);
  }
  {
    dt_test::Context ctx("budget 70 larger than the lattice: padding up to N = 71");
    Cands c = make_cands(2, 3, {-0.1f, -0.2f, -0.3f, -1, -2, -3}, {1, 2, 3, 4, 5, 6});
    Run r = run_select(c, 70, false, nullptr);
    CHECK_OK(r.status);
    CHECK_EQ(r.tree.num_nodes[0], 13);  // 3 + 9 nodes + root
    CHECK_EQ(r.tree.anc_word(0, 69, 2), 0x20u);
    CHECK_EQ(r.tree.anc_word(0, 69, 0), 0x0u);
    check_invariants(r.tree, 0);
    compare_with_oracle(r.tree, c, 0, 70, -1);
  }
  {
    dt_test::Context ctx("batch rows are independent; int32 and int64 tokens agree");
    std::mt19937 rng(5);
    Cands c = random_cands(rng, 4, 5, 3, 0);
    const int64_t roots[] = {1, 2, 3, 4};
    Run a = run_select(c, 50, false, roots), b = run_select(c, 50, true, roots);
    CHECK_OK(a.status);
    CHECK_OK(b.status);
    CHECK(a.tree.token == b.tree.token && a.tree.parent == b.tree.parent &&
          a.tree.anc == b.tree.anc && a.tree.score == b.tree.score);
    for (int64_t i = 0; i < 4; ++i) {
      Cands one{1, 5, 3,
                std::vector<int64_t>(c.token.begin() + i * 15, c.token.begin() + (i + 1) * 15),
                std::vector<float>(c.lp.begin() + i * 15, c.lp.begin() + (i + 1) * 15)};
      Run s = run_select(one, 50, false, &roots[i]);
      CHECK(std::equal(s.tree.token.begin(), s.tree.token.end(), a.tree.token.begin() + i * 51));
      CHECK(std::equal(s.tree.anc.begin(), s.tree.anc.end(), a.tree.anc.begin() + i * 51 * 2));
    }
  }
}

void test_validation() {
  dt_test::Context ctx("validation");
  const int64_t B = 2, L = 3, K = 4, budget = 9;
  std::vector<int32_t> tok(B * L * K);
  std::vector<float> lp(B * L * K);
  for (int64_t i = 0; i < B * L * K; ++i) {
    tok[i] = static_cast<int32_t>(i % K);
    lp[i] = -0.5f * static_cast<float>(i % K);
  }
  const TensorView ct = make_view(tok.data(), DType::kInt32, {B, L, K});
  const TensorView cl = make_view(lp.data(), DType::kFloat32, {B, L, K});
  TreeBuf t(B, budget + 1);
  CHECK_OK(check_ddtree_select(ct, cl, budget, nullptr));
  CHECK_OK(ddtree_select(ct, cl, budget, nullptr, t.view(), nullptr));

  // budget
  for (int64_t bad : {int64_t{0}, int64_t{-3}, int64_t{4097}}) {
    dt_test::Context c("budget " + std::to_string(bad));
    CHECK_STATUS(check_ddtree_select(ct, cl, bad, nullptr), kInvalidValue, "budget");
  }
  {
    TreeBuf big(B, 4097);
    CHECK_OK(ddtree_select(ct, cl, 4096, nullptr, big.view(), nullptr));
    TreeBuf small(B, 1);
    CHECK_STATUS(ddtree_select(ct, cl, 0, nullptr, small.view(), nullptr), kInvalidValue, "budget");
  }
  // dtypes
  std::vector<uint16_t> half(B * L * K);
  CHECK_STATUS(
      check_ddtree_select(ct, make_view(half.data(), DType::kFloat16, {B, L, K}), budget, nullptr),
      kInvalidType, "cand_logprob");
  CHECK_STATUS(
      check_ddtree_select(make_view(lp.data(), DType::kFloat32, {B, L, K}), cl, budget, nullptr),
      kInvalidType, "cand_token");
  std::vector<float> rootf(B);
  TensorView rf = make_view(rootf.data(), DType::kFloat32, {B});
  CHECK_STATUS(check_ddtree_select(ct, cl, budget, &rf), kInvalidType, "root_token");
  {
    TreeBuf t2(B, budget + 1);
    TreeView v = t2.view();
    v.score.dtype = DType::kInt32;
    CHECK_STATUS(ddtree_select(ct, cl, budget, nullptr, v, nullptr), kInvalidType, "tree.score");
    v = t2.view();
    v.parent.dtype = DType::kInt64;
    CHECK_STATUS(ddtree_select(ct, cl, budget, nullptr, v, nullptr), kInvalidType, "tree.parent");
  }
  // shapes
  CHECK_STATUS(
      check_ddtree_select(make_view(tok.data(), DType::kInt32, {B, L, K - 1}), cl, budget, nullptr),
      kInvalidValue, "cand_token");
  CHECK_STATUS(
      check_ddtree_select(make_view(tok.data(), DType::kInt32, {B * L * K}), cl, budget, nullptr),
      kInvalidValue, "cand_token");
  CHECK_STATUS(
      check_ddtree_select(ct, make_view(lp.data(), DType::kFloat32, {B, L * K}), budget, nullptr),
      kInvalidValue, "cand_logprob");
  CHECK_STATUS(
      check_ddtree_select(make_view(tok.data(), DType::kInt32, {B, 0, L * K}),
                          make_view(lp.data(), DType::kFloat32, {B, L * K, 0}), budget, nullptr),
      kInvalidValue, "cand_token");
  CHECK_STATUS(
      check_ddtree_select(make_view(tok.data(), DType::kInt32, {B, L, 0}),
                          make_view(lp.data(), DType::kFloat32, {B, L, 0}), budget, nullptr),
      kInvalidValue, "cand_logprob");
  std::vector<int32_t> roots(B + 1);
  TensorView rv = make_view(roots.data(), DType::kInt32, {B + 1});
  CHECK_STATUS(check_ddtree_select(ct, cl, budget, &rv), kInvalidValue, "root_token");
  {
    TreeBuf wrong_n(B, budget);  // N must be budget + 1
    CHECK_STATUS(ddtree_select(ct, cl, budget, nullptr, wrong_n.view(), nullptr), kInvalidValue,
                 "tree.token");
    TreeBuf wrong_b(B + 1, budget + 1);
    CHECK_STATUS(ddtree_select(ct, cl, budget, nullptr, wrong_b.view(), nullptr), kInvalidValue,
                 "tree.token");
    TreeBuf t3(B, budget + 1);
    TreeView v = t3.view();
    v.anc.shape[2] = 2;  // ceil(10 / 32) = 1 word
    CHECK_STATUS(ddtree_select(ct, cl, budget, nullptr, v, nullptr), kInvalidValue, "tree.anc");
    v = t3.view();
    v.num_nodes.shape[0] = B + 1;
    CHECK_STATUS(ddtree_select(ct, cl, budget, nullptr, v, nullptr), kInvalidValue,
                 "tree.num_nodes");
    v = t3.view();
    v.depth.shape[1] = budget;
    CHECK_STATUS(ddtree_select(ct, cl, budget, nullptr, v, nullptr), kInvalidValue, "tree.depth");
    v = t3.view();
    v.first_child.data = nullptr;
    CHECK_STATUS(ddtree_select(ct, cl, budget, nullptr, v, nullptr), kInvalidValue,
                 "tree.first_child");
    v = t3.view();
    v.next_sibling.device = DeviceType::kCUDA;
    CHECK_STATUS(ddtree_select(ct, cl, budget, nullptr, v, nullptr), kInvalidValue,
                 "tree.next_sibling");
  }
  // data: unsorted, positive, non-finite log-probs; duplicate or negative tokens
  auto with_lp = [&](int64_t i, float v) {
    std::vector<float> l2 = lp;
    l2[i] = v;
    TreeBuf t2(B, budget + 1);
    return ddtree_select(ct, make_view(l2.data(), DType::kFloat32, {B, L, K}), budget, nullptr,
                         t2.view(), nullptr);
  };
  CHECK_STATUS(with_lp(1 * L * K + 2 * K + 2, 0.0f), kInvalidValue, "cand_logprob");  // unsorted
  CHECK_STATUS(with_lp(0, 0.5f), kInvalidValue, "cand_logprob");                      // positive
  CHECK_STATUS(with_lp(5, std::numeric_limits<float>::quiet_NaN()), kInvalidValue, "cand_logprob");
  CHECK_STATUS(with_lp(K - 1, kNegInf), kInvalidValue, "cand_logprob");
  auto with_tok = [&](int64_t i, int32_t v) {
    std::vector<int32_t> t2 = tok;
    t2[i] = v;
    TreeBuf tr(B, budget + 1);
    return ddtree_select(make_view(t2.data(), DType::kInt32, {B, L, K}), cl, budget, nullptr,
                         tr.view(), nullptr);
  };
  CHECK_STATUS(with_tok(L * K + K + 3, 1), kInvalidValue, "cand_token");  // duplicate at a depth
  CHECK_STATUS(with_tok(2, -5), kInvalidValue, "cand_token");
  CHECK_OK(with_tok(K, 0 + 100));  // same id at two different depths is fine

  // int64 token ids that do not fit the int32 tree.token: 5 and 2^32 + 5 are distinct int64
  // ids but the same int32, so silently narrowing them breaks "distinct sibling tokens".
  {
    std::vector<int64_t> t64(tok.begin(), tok.end());
    t64[1] = (int64_t{1} << 32) + t64[0];
    TreeBuf tr(B, budget + 1);
    // Regression: int64 cand_token values >= 2^31 were narrowed to int32, so tokens 0 and 2^32 at
    // one depth became two sibling nodes with token 0. They must be rejected by name.
    CHECK_STATUS(ddtree_select(make_view(t64.data(), DType::kInt64, {B, L, K}), cl, budget, nullptr,
                               tr.view(), nullptr),
                 kInvalidValue, "cand_token");
  }
  // Empty batch: nothing to do.
  {
    TreeBuf t0(0, budget + 1);
    CHECK_OK(ddtree_select(make_view(nullptr, DType::kInt32, {0, L, K}),
                           make_view(nullptr, DType::kFloat32, {0, L, K}), budget, nullptr,
                           t0.view(), nullptr));
  }
  if (!build_info().cuda_compiled) {
    TensorView gt = ct, gl = cl;
    gt.device = gl.device = DeviceType::kCUDA;
    TreeView v = t.view();
    for (TensorView* f : {&v.token, &v.parent, &v.depth, &v.score, &v.first_child, &v.next_sibling,
                          &v.anc, &v.num_nodes})
      f->device = DeviceType::kCUDA;
    CHECK_STATUS(ddtree_select(gt, gl, budget, nullptr, v, nullptr), kUnsupported, "ddtree_select");
  }
}

}  // namespace

int main() {
  test_hand_checked();
  test_random_vs_oracle();
  test_validation();
  return dt_test::report("ddtree_select");
}
