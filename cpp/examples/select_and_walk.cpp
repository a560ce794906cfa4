// select_and_walk: one speculative-decoding round of the difftree core, from C++ only.
//
//   random draft logits [1, L=15, V=32000]
//     -> topk_logprobs (K = budget candidates per depth)
//     -> ddtree_select (budget 64: the best 64 prefixes, best-first)
//     -> a simulated target that agrees with the draft's best child down to depth 5
//     -> tree_walk (accepted path + next bonus token)
//     -> kv_commit (move the accepted rows of a toy KV cache into place)
// Exits non-zero on any non-ok Status or an inconsistent result.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "difftree/difftree.hpp"

namespace dt = difftree;

namespace {

// Reports a failed Status and leaves.
void ok_or_die(const dt::Status& s, const char* what) {
  if (s.ok()) return;
  std::fprintf(stderr, "%s failed: %s\n", what, s.message().c_str());
  std::exit(1);
}

void fail(const char* msg) {
  std::fprintf(stderr, "select_and_walk: %s\n", msg);
  std::exit(2);
}

}  // namespace

int main() {
  constexpr int64_t B = 1, L = 15, V = 32000, budget = 64, K = budget, N = budget + 1;
  constexpr int32_t kBonus = 151;  // the previous round's bonus token: the root
  constexpr int kTargetDepth = 5;  // the simulated target agrees this deep

  const dt::BuildInfo& info = dt::build_info();
  std::printf("difftree %s (git %s, %s, CUDA %s)\n", info.version.c_str(), info.git_sha.c_str(),
              info.compiler.c_str(), info.cuda_compiled ? info.cuda_version.c_str() : "off");

  // 1. Draft logits: noise plus a few confident tokens per depth, so the tree has some depth.
  std::mt19937 rng(2024);
  std::normal_distribution<float> noise(0.0f, 1.0f);
  std::vector<float> logits(B * L * V);
  for (float& x : logits) x = noise(rng);
  for (int64_t d = 0; d < L; ++d) {
    const float boost[] = {14.0f, 12.5f, 12.0f, 11.0f};
    for (float b : boost) logits[d * V + rng() % V] += b - 0.3f * static_cast<float>(d);
  }

  // 2. Candidates per depth.
  std::vector<int32_t> cand_token(B * L * K);
  std::vector<float> cand_logprob(B * L * K);
  const dt::TensorView logits_v = dt::make_view(logits.data(), dt::DType::kFloat32, {B, L, V});
  const dt::TensorView tok_v = dt::make_view(cand_token.data(), dt::DType::kInt32, {B, L, K});
  const dt::TensorView lp_v = dt::make_view(cand_logprob.data(), dt::DType::kFloat32, {B, L, K});
  ok_or_die(dt::topk_logprobs(logits_v, K, tok_v, lp_v, /*stream=*/nullptr), "topk_logprobs");

  // 3. The tree (caller-owned arrays, capacity N = budget + 1).
  const int64_t W = dt::anc_words(N);
  std::vector<int32_t> token(N), parent(N), depth(N), first_child(N), next_sibling(N), anc(N * W),
      num_nodes(B);
  std::vector<float> score(N);
  dt::TreeView tree;
  tree.token = dt::make_view(token.data(), dt::DType::kInt32, {B, N});
  tree.parent = dt::make_view(parent.data(), dt::DType::kInt32, {B, N});
  tree.depth = dt::make_view(depth.data(), dt::DType::kInt32, {B, N});
  tree.score = dt::make_view(score.data(), dt::DType::kFloat32, {B, N});
  tree.first_child = dt::make_view(first_child.data(), dt::DType::kInt32, {B, N});
  tree.next_sibling = dt::make_view(next_sibling.data(), dt::DType::kInt32, {B, N});
  tree.anc = dt::make_view(anc.data(), dt::DType::kInt32, {B, N, W});
  tree.num_nodes = dt::make_view(num_nodes.data(), dt::DType::kInt32, {B});
  int32_t root = kBonus;
  const dt::TensorView root_v = dt::make_view(&root, dt::DType::kInt32, {B});
  ok_or_die(dt::ddtree_select(tok_v, lp_v, budget, &root_v, tree, nullptr), "ddtree_select");

  int max_depth = 0;
  for (int32_t i = 0; i < num_nodes[0]; ++i) max_depth = std::max(max_depth, depth[i]);
  std::printf("tree: %d nodes (budget %lld), max depth %d\n", num_nodes[0],
              static_cast<long long>(budget), max_depth);
  std::printf("  node  token  parent  depth     score\n");
  for (int32_t i = 0; i < std::min<int32_t>(num_nodes[0], 10); ++i)
    std::printf("  %4d  %5d  %6d  %5d  %8.4f\n", i, token[i], parent[i], depth[i], score[i]);

  // 4. Simulated target: at every node above kTargetDepth it picks the node's best child (the
  //    first child: siblings are best-first); deeper, a token that is not drafted.
  std::vector<int32_t> node_choice(N);
  for (int32_t i = 0; i < N; ++i) {
    const int32_t c = first_child[i];
    node_choice[i] = (i < num_nodes[0] && depth[i] < kTargetDepth && c >= 0) ? token[c] : 7;
  }
  int expected_accepted = 0;
  for (int32_t i = 0; first_child[i] >= 0 && depth[i] < kTargetDepth; i = first_child[i])
    ++expected_accepted;

  // 5. Walk.
  const int64_t P = L + 1;
  std::vector<int32_t> path(B * P), accepted(B), next_token(B);
  std::vector<uint8_t> done(B);
  const dt::WalkOutputs out{dt::make_view(path.data(), dt::DType::kInt32, {B, P}),
                            dt::make_view(accepted.data(), dt::DType::kInt32, {B}),
                            dt::make_view(next_token.data(), dt::DType::kInt32, {B}),
                            dt::make_view(done.data(), dt::DType::kBool, {B})};
  const dt::TensorView choice_v = dt::make_view(node_choice.data(), dt::DType::kInt32, {B, N});
  ok_or_die(dt::tree_walk(tree, choice_v, nullptr, nullptr, out, nullptr), "tree_walk");
  std::printf("walk: accepted %d draft tokens, next bonus %d, path:", accepted[0], next_token[0]);
  for (int32_t j = 0; j <= accepted[0]; ++j) std::printf(" %d", path[j]);
  std::printf("\n");
  if (accepted[0] != expected_accepted) fail("unexpected number of accepted tokens");
  if (next_token[0] != 7) fail("unexpected next token");

  // 6. A toy KV cache: 2 layers x (K, V), [B, H=2, S, D=8]; verify wrote node i at row base + i.
  constexpr int64_t H = 2, D = 8, base_len = 100, S = base_len + N;
  std::vector<std::vector<float>> caches(4, std::vector<float>(B * H * S * D));
  for (size_t c = 0; c < caches.size(); ++c)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t s = 0; s < S; ++s)
        for (int64_t d = 0; d < D; ++d)
          caches[c][(h * S + s) * D + d] = static_cast<float>(1000 * c + s);
  std::vector<dt::TensorView> cache_v;
  for (auto& c : caches)
    cache_v.push_back(dt::make_view(c.data(), dt::DType::kFloat32, {B, H, S, D}));
  int32_t base = static_cast<int32_t>(base_len);
  ok_or_die(
      dt::kv_commit(cache_v.data(), static_cast<int>(cache_v.size()),
                    dt::make_view(&base, dt::DType::kInt32, {B}), out.path, out.accepted, nullptr),
      "kv_commit");
  for (size_t c = 0; c < caches.size(); ++c)
    for (int64_t h = 0; h < H; ++h)
      for (int32_t j = 0; j <= accepted[0]; ++j)
        if (caches[c][(h * S + base_len + j) * D] !=
            static_cast<float>(1000 * c + base_len + path[j]))
          fail("kv_commit moved the wrong row");
  std::printf("kv_commit: rows of nodes");
  for (int32_t j = 0; j <= accepted[0]; ++j) std::printf(" %d", path[j]);
  std::printf(" now at %lld..%lld; new length %lld\n", static_cast<long long>(base_len),
              static_cast<long long>(base_len + accepted[0]),
              static_cast<long long>(base_len + accepted[0] + 1));
  return 0;
}
