// libFuzzer target over the public C++ API: random shapes, dtypes, raw bit patterns (NaN, Inf,
// garbage indices), budgets and corrupted trees. Every call must return a Status; a non-ok one must
// name an argument. Memory errors are caught by AddressSanitizer / UBSan (build with
// -DDIFFTREE_FUZZ=ON, clang). Run: build/fuzz/fuzz_core -max_total_time=60 fuzz/corpus
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

#include "difftree/difftree.hpp"

using namespace difftree;

namespace {

// Reads integers and raw bytes from the fuzzer's input; zeros once it is exhausted.
class Input {
 public:
  Input(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  uint64_t u64() {
    uint64_t v = 0;
    const size_t n = std::min<size_t>(8, size_ - pos_);
    std::memcpy(&v, data_ + pos_, n);
    pos_ += n;
    return v;
  }
  int64_t range(int64_t lo, int64_t hi) {  // inclusive
    const uint8_t b = byte();
    return lo + static_cast<int64_t>(b % static_cast<uint64_t>(hi - lo + 1));
  }
  uint8_t byte() { return pos_ < size_ ? data_[pos_++] : 0; }
  bool coin() { return byte() & 1; }
  void fill(void* dst, size_t bytes) {
    auto* out = static_cast<uint8_t*>(dst);
    for (size_t i = 0; i < bytes; ++i) out[i] = byte();
  }

 private:
  const uint8_t* data_;
  size_t size_, pos_ = 0;
};

struct Buffer {
  std::vector<uint8_t> bytes;
  TensorView view;
};

Buffer make(Input& in, DType dtype, std::vector<int64_t> shape, bool random_fill) {
  Buffer b;
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  b.bytes.resize(static_cast<size_t>(n) * dtype_size(dtype) + 16);
  if (random_fill) in.fill(b.bytes.data(), b.bytes.size());
  b.view.data = b.bytes.data();
  b.view.dtype = dtype;
  b.view.ndim = static_cast<int>(shape.size());
  int64_t stride = 1;
  for (int d = b.view.ndim - 1; d >= 0; --d) {
    b.view.shape[d] = shape[d];
    b.view.strides[d] = stride;
    stride *= shape[d];
  }
  return b;
}

DType pick_dtype(Input& in, DType usual) {
  static const DType all[] = {DType::kInt32,   DType::kInt64,   DType::kUInt8,   DType::kBool,
                              DType::kFloat32, DType::kFloat16, DType::kBFloat16};
  return in.range(0, 3) ? usual : all[in.range(0, 6)];
}

// Occasionally perturbs a dimension so output-shape validation gets exercised too.
int64_t maybe_off(Input& in, int64_t dim) { return in.range(0, 15) == 0 ? dim + 1 : dim; }

void expect_named(const Status& s) {
  if (s.ok()) return;
  if (s.message().find(": ") == std::string::npos) {
    std::fprintf(stderr, "status without an argument name: %s\n", s.message().c_str());
    __builtin_trap();
  }
}

struct TreeBufs {
  Buffer token, parent, depth, score, first_child, next_sibling, anc, num_nodes;
  TreeView view() const {
    return {token.view,       parent.view,       depth.view, score.view,
            first_child.view, next_sibling.view, anc.view,   num_nodes.view};
  }
};

TreeBufs make_tree(Input& in, int64_t B, int64_t N) {
  TreeBufs t;
  t.token = make(in, DType::kInt32, {B, N}, false);
  t.parent = make(in, DType::kInt32, {B, N}, false);
  t.depth = make(in, DType::kInt32, {B, N}, false);
  t.score = make(in, DType::kFloat32, {B, N}, false);
  t.first_child = make(in, DType::kInt32, {B, N}, false);
  t.next_sibling = make(in, DType::kInt32, {B, N}, false);
  t.anc = make(in, DType::kInt32, {B, N, anc_words(N)}, false);
  t.num_nodes = make(in, DType::kInt32, {B}, false);
  return t;
}

// Candidates that usually pass validation (sorted, <= 0, distinct) so selection itself runs.
void sane_candidates(Input& in, Buffer& tok, Buffer& lp, int64_t rows, int64_t K) {
  for (int64_t r = 0; r < rows; ++r) {
    float* l = reinterpret_cast<float*>(lp.bytes.data()) + r * K;
    for (int64_t k = 0; k < K; ++k) l[k] = -static_cast<float>(in.range(0, 40)) / 4.0f;
    std::sort(l, l + K, [](float a, float b) { return a > b; });
    if (tok.view.dtype == DType::kInt32) {
      int32_t* t = reinterpret_cast<int32_t*>(tok.bytes.data()) + r * K;
      for (int64_t k = 0; k < K; ++k) t[k] = static_cast<int32_t>(k * 3 + in.range(0, 2));
    }
  }
}

void fuzz_topk(Input& in) {
  const int64_t B = in.range(0, 3), L = in.range(0, 4), V = in.range(0, 40);
  const int64_t k = in.range(-2, static_cast<int>(V) + 2);
  Buffer logits = make(in, pick_dtype(in, DType::kFloat32), {B, L, V}, true);
  const int64_t K = std::max<int64_t>(k, 0);
  Buffer tok = make(in, pick_dtype(in, DType::kInt32), {B, L, maybe_off(in, K)}, false);
  Buffer lp = make(in, pick_dtype(in, DType::kFloat32), {B, maybe_off(in, L), K}, false);
  expect_named(check_topk_logprobs(logits.view, k));
  expect_named(topk_logprobs(logits.view, k, tok.view, lp.view, nullptr));
}

Status select_into(Input& in, int64_t B, int64_t L, int64_t K, int64_t budget, bool sane,
                   TreeBufs* tree) {
  Buffer tok = make(in, pick_dtype(in, DType::kInt32), {B, L, K}, true);
  Buffer lp = make(in, pick_dtype(in, DType::kFloat32), {B, L, maybe_off(in, K)}, true);
  if (sane && lp.view.dtype == DType::kFloat32 && lp.view.shape[2] == K)
    sane_candidates(in, tok, lp, B * L, K);
  Buffer root = make(in, pick_dtype(in, DType::kInt64), {B}, true);
  const int64_t N = std::clamp<int64_t>(budget, 0, kMaxBudget) + 1;
  *tree = make_tree(in, B, maybe_off(in, N));
  expect_named(check_ddtree_select(tok.view, lp.view, budget, in.coin() ? &root.view : nullptr));
  return ddtree_select(tok.view, lp.view, budget, in.coin() ? &root.view : nullptr, tree->view(),
                       nullptr);
}

void fuzz_select(Input& in) {
  const int64_t B = in.range(0, 3), L = in.range(0, 6), K = in.range(0, 8);
  const int64_t budget = in.coin() ? in.range(-2, 60) : static_cast<int64_t>(in.u64() % 5000);
  TreeBufs tree;
  expect_named(select_into(in, B, L, K, budget, in.range(0, 3) != 0, &tree));
}

void fuzz_walk(Input& in) {
  const int64_t B = in.range(1, 3), L = in.range(0, 5), K = in.range(1, 4);
  const int64_t budget = in.range(1, 40);
  TreeBufs tree;
  if (!select_into(in, B, L, K, budget, true, &tree).ok()) return;
  // Corrupt a few entries of the tree with raw values.
  const int corruptions = static_cast<int>(in.range(0, 4));
  Buffer* arrays[] = {&tree.token,        &tree.parent, &tree.depth,    &tree.first_child,
                      &tree.next_sibling, &tree.anc,    &tree.num_nodes};
  for (int c = 0; c < corruptions; ++c) {
    Buffer* a = arrays[in.range(0, 6)];
    const int64_t n = a->view.numel();
    if (n == 0) continue;
    reinterpret_cast<int32_t*>(a->bytes.data())[in.u64() % n] =
        static_cast<int32_t>(in.range(-3, static_cast<int>(budget) + 3));
  }
  const int64_t N = tree.token.view.shape[1];
  Buffer choice = make(in, pick_dtype(in, DType::kInt64), {B, N}, true);
  if (in.coin()) {  // mostly small tokens so walks go deep
    for (int64_t i = 0; i < B * N && choice.view.dtype == DType::kInt64; ++i)
      reinterpret_cast<int64_t*>(choice.bytes.data())[i] = in.range(0, 12);
  }
  Buffer stops = make(in, pick_dtype(in, DType::kInt64), {in.range(0, 3)}, true);
  Buffer remaining = make(in, pick_dtype(in, DType::kInt32), {B}, true);
  const int64_t P = in.range(0, 8);
  Buffer path = make(in, DType::kInt32, {B, P}, false);
  Buffer acc = make(in, DType::kInt32, {B}, false);
  Buffer next = make(in, DType::kInt32, {B}, false);
  Buffer done = make(in, DType::kBool, {B}, false);
  const TensorView* s = in.coin() ? &stops.view : nullptr;
  const TensorView* r = in.coin() ? &remaining.view : nullptr;
  expect_named(check_tree_walk(tree.view(), choice.view, s, r));
  expect_named(tree_walk(tree.view(), choice.view, s, r,
                         {path.view, acc.view, next.view, done.view}, nullptr));
}

void fuzz_commit(Input& in) {
  const int64_t B = in.range(0, 3), H = in.range(0, 3), S = in.range(0, 24), D = in.range(0, 5);
  const int n = static_cast<int>(in.range(0, 3));
  std::vector<Buffer> caches;
  std::vector<TensorView> views;
  for (int c = 0; c < n; ++c) {
    caches.push_back(make(in, pick_dtype(in, DType::kFloat32), {B, H, maybe_off(in, S), D}, true));
  }
  for (auto& c : caches) views.push_back(c.view);
  const int64_t P = in.range(0, 8);
  const DType idx = pick_dtype(in, DType::kInt64);
  Buffer base = make(in, idx, {B}, true), path = make(in, idx, {B, P}, true);
  Buffer acc = make(in, idx, {B}, true);
  if (in.coin() && idx == DType::kInt64) {  // plausible values reach the copy loop
    auto* p = reinterpret_cast<int64_t*>(path.bytes.data());
    for (int64_t i = 0; i < B * P; ++i) p[i] = (i % P) * in.range(0, 3);
    for (int64_t b = 0; b < B; ++b) {
      reinterpret_cast<int64_t*>(base.bytes.data())[b] = in.range(0, 20);
      reinterpret_cast<int64_t*>(acc.bytes.data())[b] = in.range(0, static_cast<int>(P));
    }
  }
  expect_named(check_kv_commit(views.data(), n, base.view, path.view, acc.view));
  expect_named(kv_commit(views.data(), n, base.view, path.view, acc.view, nullptr));
}

// D²SD: boundaries over raw log-probs, then the joint tree over plausible or raw rows.
void fuzz_d2sd(Input& in) {
  const int64_t B = in.range(0, 3), L1 = in.range(0, 6), L2 = in.range(0, 6), K = in.range(0, 5);
  Buffer lp = make(in, pick_dtype(in, DType::kFloat32), {B, L1}, true);
  const bool sane = in.coin() && lp.view.dtype == DType::kFloat32;
  if (sane)
    for (int64_t i = 0; i < B * L1; ++i)
      reinterpret_cast<float*>(lp.bytes.data())[i] = -static_cast<float>(in.range(0, 40)) / 8.0f;
  Buffer boundary = make(in, pick_dtype(in, DType::kInt32), {B, maybe_off(in, K)}, true);
  expect_named(check_d2sd_boundaries(lp.view, boundary.view));
  const Status got = d2sd_boundaries(lp.view, boundary.view, nullptr);
  expect_named(got);
  Buffer trunk = make(in, pick_dtype(in, DType::kInt64), {B, L1}, true);
  Buffer branch = make(in, pick_dtype(in, DType::kInt64), {B, K, maybe_off(in, L2)}, true);
  Buffer blp = make(in, pick_dtype(in, DType::kFloat32), {B, K, L2}, true);
  if (sane && in.coin()) {  // plausible rows so the trie and the selection run
    if (trunk.view.dtype == DType::kInt64)
      for (int64_t i = 0; i < B * L1; ++i)
        reinterpret_cast<int64_t*>(trunk.bytes.data())[i] = in.range(0, 3);
    if (branch.view.dtype == DType::kInt64)
      for (int64_t i = 0; i < branch.view.numel(); ++i)
        reinterpret_cast<int64_t*>(branch.bytes.data())[i] = in.range(0, 3);
    if (blp.view.dtype == DType::kFloat32)
      for (int64_t i = 0; i < B * K * L2; ++i)
        reinterpret_cast<float*>(blp.bytes.data())[i] = -static_cast<float>(in.range(0, 40)) / 8.0f;
    if (boundary.view.dtype == DType::kInt32)
      for (int64_t i = 0; i < boundary.view.numel(); ++i)
        reinterpret_cast<int32_t*>(boundary.bytes.data())[i] =
            static_cast<int32_t>(in.range(-1, std::max<int64_t>(std::min(L1, L2) - 1, -1)));
  }
  Buffer root = make(in, pick_dtype(in, DType::kInt64), {B}, true);
  const int64_t budget = in.coin() ? in.range(-2, 40) : static_cast<int64_t>(in.u64() % 5000);
  TreeBufs tree = make_tree(in, B, maybe_off(in, std::clamp<int64_t>(budget, 0, kMaxBudget) + 1));
  const TensorView* r = in.coin() ? &root.view : nullptr;
  expect_named(
      check_d2sd_select(trunk.view, lp.view, boundary.view, branch.view, blp.view, budget, r));
  expect_named(d2sd_select(trunk.view, lp.view, boundary.view, branch.view, blp.view, budget, r,
                           tree.view(), nullptr));
}

// PRESTO: per-request n-gram tables extended from raw or plausible tokens (tiny tables fill up),
// then the selection over them with raw or plausible candidates.
void fuzz_presto(Input& in) {
  const int64_t B = in.range(0, 3), T = in.range(0, 6), order = in.range(0, 9);
  const int64_t H = in.coin() ? int64_t{1} << in.range(0, 6) : in.range(0, 40);
  Buffer keys = make(in, pick_dtype(in, DType::kInt64), {maybe_off(in, B), H}, false);
  Buffer counts = make(in, pick_dtype(in, DType::kInt32), {B, maybe_off(in, H)}, false);
  const int64_t C = std::max<int64_t>(order - 1, 0);
  Buffer history = make(in, pick_dtype(in, DType::kInt64), {B, maybe_off(in, C)}, true);
  Buffer tokens = make(in, pick_dtype(in, DType::kInt64), {B, T}, true);
  Buffer num = make(in, pick_dtype(in, DType::kInt64), {maybe_off(in, B)}, true);
  if (in.coin()) {  // plausible values reach the inserts
    if (history.view.dtype == DType::kInt64)
      for (int64_t i = 0; i < history.view.numel(); ++i)
        reinterpret_cast<int64_t*>(history.bytes.data())[i] = in.range(-1, 3);
    if (tokens.view.dtype == DType::kInt64)
      for (int64_t i = 0; i < tokens.view.numel(); ++i)
        reinterpret_cast<int64_t*>(tokens.bytes.data())[i] = in.range(0, 4);
    if (num.view.dtype == DType::kInt64)
      for (int64_t i = 0; i < num.view.numel(); ++i)
        reinterpret_cast<int64_t*>(num.bytes.data())[i] = in.range(0, static_cast<int>(T));
  }
  expect_named(
      check_ngram_extend(keys.view, counts.view, history.view, tokens.view, num.view, order));
  expect_named(ngram_extend(keys.view, counts.view, history.view, tokens.view, num.view, order,
                            nullptr, nullptr));

  const int64_t L = in.range(0, 4), K = in.range(0, 5);
  Buffer tok = make(in, pick_dtype(in, DType::kInt64), {B, L, K}, true);
  Buffer lp = make(in, pick_dtype(in, DType::kFloat32), {B, L, maybe_off(in, K)}, true);
  if (in.coin() && tok.view.dtype == DType::kInt64 && lp.view.dtype == DType::kFloat32) {
    for (int64_t i = 0; i < B * L * K; ++i) {  // distinct per depth, sorted log-probs
      reinterpret_cast<int64_t*>(tok.bytes.data())[i] = i % std::max<int64_t>(K, 1);
      reinterpret_cast<float*>(lp.bytes.data())[i] = -static_cast<float>(i % K + 1) / 4.0f;
    }
  }
  Buffer context = make(in, pick_dtype(in, DType::kInt64), {B, C}, true);
  Buffer root = make(in, pick_dtype(in, DType::kInt64), {B}, true);
  PrestoParams params;
  params.order = order;
  params.alpha = in.coin() ? 1.0 : static_cast<double>(static_cast<int64_t>(in.u64())) * 1e-18;
  params.lam = in.coin() ? 0.2 : -static_cast<double>(in.range(0, 2));
  params.vocab = in.range(-1, 8);
  const int64_t budget = in.coin() ? in.range(-2, 20) : static_cast<int64_t>(in.u64() % 5000);
  TreeBufs tree = make_tree(in, B, maybe_off(in, std::clamp<int64_t>(budget, 0, kMaxBudget) + 1));
  const TensorView* r = in.coin() ? &root.view : nullptr;
  // One shared [H] table or the per-request ones.
  TensorView k = keys.view, c = counts.view;
  if (in.coin() && H > 0) {
    k.ndim = c.ndim = 1;
    k.shape[0] = c.shape[0] = H;
    k.strides[0] = c.strides[0] = 1;
  }
  expect_named(check_presto_select(tok.view, lp.view, budget, r, context.view, k, c, params));
  expect_named(presto_select(tok.view, lp.view, budget, r, context.view, k, c, params, tree.view(),
                             nullptr));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Input in(data, size);
  switch (in.range(0, 5)) {
    case 0:
      fuzz_topk(in);
      break;
    case 1:
      fuzz_select(in);
      break;
    case 2:
      fuzz_walk(in);
      break;
    case 3:
      fuzz_d2sd(in);
      break;
    case 4:
      fuzz_presto(in);
      break;
    default:
      fuzz_commit(in);
      break;
  }
  return 0;
}
