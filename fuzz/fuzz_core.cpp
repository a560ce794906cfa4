// libFuzzer target over the public C++ API and the C ABI: random shapes, dtypes, raw bit patterns
// (NaN, Inf, garbage indices), budgets and corrupted trees, and descriptors no caller should send
// (negative or overflowing extents, bad ndim, NULL data, odd strides; through the C ABI also NULL
// shapes and tensors, vector dtypes, wrapping byte offsets). Every call must return a Status; a
// non-ok one must name an argument. Memory errors are caught by AddressSanitizer / UBSan (build
// with -DDIFFTREE_FUZZ=ON, clang). Run: build/fuzz/fuzz_core -max_total_time=60 fuzz/corpus
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

#include "difftree/difftree.h"
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
  // One in `bad_every` tensors gets a bad descriptor (0: none); set once per input.
  int bad_every = 0;

 private:
  const uint8_t* data_;
  size_t size_, pos_ = 0;
};

struct Buffer {
  std::vector<uint8_t> bytes;
  int64_t n = 0;  // elements the bytes hold (the view's shape may have been made bad)
  TensorView view;
};

// Turns a view into one no op may accept or one that still describes memory inside the buffer
// (a NULL pointer, a stride-0 broadcast or an empty shape), so any crash is the library's fault.
void make_bad(Input& in, TensorView& v) {
  static const int64_t kNegative[] = {-1, -2, INT64_MIN, -(int64_t{1} << 32)};
  static const int64_t kHuge[] = {int64_t{1} << 31, int64_t{1} << 32, int64_t{1} << 62, INT64_MAX};
  static const int64_t kStrides[] = {INT64_MIN, INT64_MAX, int64_t{1} << 62, -1, -2};
  static const int kNdims[] = {-1, -1000, kMaxDims + 1, 1 << 20, INT32_MIN};
  const int d = v.ndim > 0 ? static_cast<int>(in.range(0, v.ndim - 1)) : -1;
  switch (in.range(0, 8)) {
    case 0:
      v.ndim = kNdims[in.range(0, 4)];
      break;
    case 1:  // a negative extent
      if (d >= 0) v.shape[d] = kNegative[in.range(0, 3)];
      break;
    case 2:  // a huge extent over no memory (an empty tensor when another extent is 0)
      if (d >= 0) v.shape[d] = kHuge[in.range(0, 3)];
      v.data = nullptr;
      break;
    case 3:  // element count 2^64: wraps to 0 in a naive product
      if (v.ndim >= 2) v.shape[0] = v.shape[v.ndim - 1] = int64_t{1} << 32;
      break;
    case 4:
      v.data = nullptr;
      break;
    case 5:  // a stride no memory can back (or negative: before the data)
      if (d >= 0 && v.shape[d] > 1) v.strides[d] = kStrides[in.range(0, 4)];
      break;
    case 6:  // a broadcast: stays inside the buffer
      if (d >= 0) v.strides[d] = 0;
      break;
    case 7:
      v.dtype = DType::kOther;
      break;
    default:
      v.device = DeviceType::kOther;
      break;
  }
}

Buffer make(Input& in, DType dtype, std::vector<int64_t> shape, bool random_fill) {
  Buffer b;
  b.n = 1;
  for (int64_t s : shape) b.n *= s;
  b.bytes.resize(static_cast<size_t>(b.n) * dtype_size(dtype) + 16);
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
  if (in.bad_every > 0 && in.range(0, in.bad_every - 1) == 0) make_bad(in, b.view);
  return b;
}

// ---- the C ABI: the same views as raw DLTensor descriptors, with DLPack's own hazards ----------

struct Dl {
  int64_t shape[kMaxDims] = {};
  int64_t strides[kMaxDims] = {};
  DLTensor t{};
  Dl() = default;
  Dl(const Dl&) = delete;
  Dl& operator=(const Dl&) = delete;
};

DLDataType dl_dtype(DType d) {
  switch (d) {
    case DType::kInt32: return {kDLInt, 32, 1};
    case DType::kInt64: return {kDLInt, 64, 1};
    case DType::kUInt8: return {kDLUInt, 8, 1};
    case DType::kBool: return {kDLBool, 8, 1};
    case DType::kFloat32: return {kDLFloat, 32, 1};
    case DType::kFloat16: return {kDLFloat, 16, 1};
    case DType::kBFloat16: return {kDLBfloat, 16, 1};
    default: return {kDLComplex, 64, 1};
  }
}

// v as a DLTensor (strides given or NULL = compact), sometimes with a NULL shape, vector lanes, a
// byte_offset that wraps the address space or an unknown device.
void to_dl(Input& in, const TensorView& v, Dl* d) {
  const int n = std::clamp(v.ndim, 0, kMaxDims);
  for (int i = 0; i < n; ++i) {
    d->shape[i] = v.shape[i];
    d->strides[i] = v.strides[i];
  }
  d->t.data = v.data;
  d->t.device = {v.device == DeviceType::kOther ? 7 : kDLCPU, 0};
  d->t.ndim = v.ndim;
  d->t.dtype = dl_dtype(v.dtype);
  d->t.shape = d->shape;
  d->t.strides = v.is_contiguous() && in.coin() ? nullptr : d->strides;
  d->t.byte_offset = 0;
  if (in.bad_every > 0 && in.range(0, in.bad_every - 1) == 0) {
    switch (in.range(0, 4)) {
      case 0:
        d->t.shape = nullptr;
        break;
      case 1:
        d->t.dtype.lanes = static_cast<uint16_t>(in.range(0, 4));
        break;
      case 2:
        d->t.dtype.bits = static_cast<uint8_t>(in.range(0, 9));
        break;
      case 3:
        d->t.byte_offset = ~uint64_t{0} - static_cast<uint64_t>(in.range(0, 64));
        break;
      default:
        d->t.device.device_type = static_cast<int32_t>(in.range(-1, 20));
        break;
    }
  }
}

// The descriptor or, now and then, NULL.
const DLTensor* dl_or_null(Input& in, const Dl& d) {
  return in.bad_every > 0 && in.range(0, 4 * in.bad_every) == 0 ? nullptr : &d.t;
}

void expect_named_c(difftree_status s) {
  if (s == DIFFTREE_OK) return;
  if (std::strstr(difftree_last_error(), ": ") == nullptr) {
    std::fprintf(stderr, "C ABI status %s without an argument name: %s\n",
                 difftree_status_string(s), difftree_last_error());
    __builtin_trap();
  }
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
  int64_t B = 0, N = 0;  // what the buffers hold (the views' shapes may have been made bad)
  Buffer token, parent, depth, score, first_child, next_sibling, anc, num_nodes;
  TreeView view() const {
    return {token.view,       parent.view,       depth.view, score.view,
            first_child.view, next_sibling.view, anc.view,   num_nodes.view};
  }
};

TreeBufs make_tree(Input& in, int64_t B, int64_t N) {
  TreeBufs t;
  t.B = B;
  t.N = N;
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

// A tree's eight views as one difftree_tree.
struct DlTree {
  Dl f[8];
  difftree_tree tree{};
};

void to_dl_tree(Input& in, const TreeView& v, DlTree* d) {
  const TensorView* views[] = {&v.token,       &v.parent,       &v.depth, &v.score,
                               &v.first_child, &v.next_sibling, &v.anc,   &v.num_nodes};
  for (int i = 0; i < 8; ++i) to_dl(in, *views[i], &d->f[i]);
  d->tree = {d->f[0].t, d->f[1].t, d->f[2].t, d->f[3].t,
             d->f[4].t, d->f[5].t, d->f[6].t, d->f[7].t};
}

const difftree_tree* tree_or_null(Input& in, const DlTree& d) {
  return in.bad_every > 0 && in.range(0, 4 * in.bad_every) == 0 ? nullptr : &d.tree;
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
  if (in.coin()) {
    Dl l, t, p;
    to_dl(in, logits.view, &l);
    to_dl(in, tok.view, &t);
    to_dl(in, lp.view, &p);
    expect_named_c(difftree_topk_logprobs(dl_or_null(in, l), k, dl_or_null(in, t),
                                          dl_or_null(in, p), nullptr));
  }
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
  const Status got = ddtree_select(tok.view, lp.view, budget, in.coin() ? &root.view : nullptr,
                                   tree->view(), nullptr);
  if (in.coin()) {  // the same through the C ABI (the same tree when both succeed)
    Dl t, l, r;
    DlTree dt;
    to_dl(in, tok.view, &t);
    to_dl(in, lp.view, &l);
    to_dl(in, root.view, &r);
    to_dl_tree(in, tree->view(), &dt);
    const difftree_ddtree_params params{budget};
    expect_named_c(difftree_ddtree_select(dl_or_null(in, t), dl_or_null(in, l),
                                          in.coin() ? dl_or_null(in, r) : nullptr,
                                          in.coin() ? &params : nullptr, tree_or_null(in, dt),
                                          nullptr));
  }
  return got;
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
    const int64_t n = a->n;
    if (n == 0) continue;
    reinterpret_cast<int32_t*>(a->bytes.data())[in.u64() % n] =
        static_cast<int32_t>(in.range(-3, static_cast<int>(budget) + 3));
  }
  const int64_t N = tree.N;
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
  if (in.coin()) {
    DlTree dt;
    Dl c, st, rem, pa, ac, ne, dn;
    to_dl_tree(in, tree.view(), &dt);
    to_dl(in, choice.view, &c);
    to_dl(in, stops.view, &st);
    to_dl(in, remaining.view, &rem);
    to_dl(in, path.view, &pa);
    to_dl(in, acc.view, &ac);
    to_dl(in, next.view, &ne);
    to_dl(in, done.view, &dn);
    const difftree_walk_params params{s ? dl_or_null(in, st) : nullptr,
                                      r ? dl_or_null(in, rem) : nullptr};
    expect_named_c(difftree_tree_walk(tree_or_null(in, dt), dl_or_null(in, c),
                                      in.coin() ? &params : nullptr, dl_or_null(in, pa),
                                      dl_or_null(in, ac), dl_or_null(in, ne), dl_or_null(in, dn),
                                      nullptr));
  }
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
  const bool ring = in.coin();  // ring caches: row r in slot r % S, any base_len
  expect_named(check_kv_commit(views.data(), n, base.view, path.view, acc.view, ring));
  expect_named(kv_commit(views.data(), n, base.view, path.view, acc.view, nullptr, ring));
  if (in.coin()) {
    std::vector<Dl> dl_caches(static_cast<size_t>(n));
    std::vector<const DLTensor*> ptrs;
    for (int c = 0; c < n; ++c) {
      to_dl(in, views[c], &dl_caches[c]);
      ptrs.push_back(dl_or_null(in, dl_caches[c]));
    }
    Dl b, p, a;
    to_dl(in, base.view, &b);
    to_dl(in, path.view, &p);
    to_dl(in, acc.view, &a);
    // A count below the array's length (never above: that is the caller's memory error).
    const int32_t count = in.bad_every > 0 && in.coin() ? static_cast<int32_t>(in.range(-3, n)) : n;
    const bool no_array = in.bad_every > 0 && in.range(0, 4 * in.bad_every) == 0;
    if (ring)
      expect_named_c(difftree_kv_commit_ring(no_array ? nullptr : ptrs.data(), count,
                                             dl_or_null(in, b), dl_or_null(in, p),
                                             dl_or_null(in, a), 1, nullptr));
    else
      expect_named_c(difftree_kv_commit(no_array ? nullptr : ptrs.data(), count,
                                        dl_or_null(in, b), dl_or_null(in, p), dl_or_null(in, a),
                                        nullptr));
  }
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
      for (int64_t i = 0; i < branch.n; ++i)
        reinterpret_cast<int64_t*>(branch.bytes.data())[i] = in.range(0, 3);
    if (blp.view.dtype == DType::kFloat32)
      for (int64_t i = 0; i < B * K * L2; ++i)
        reinterpret_cast<float*>(blp.bytes.data())[i] = -static_cast<float>(in.range(0, 40)) / 8.0f;
    if (boundary.view.dtype == DType::kInt32)
      for (int64_t i = 0; i < boundary.n; ++i)
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
  if (in.coin()) {  // the same through the C ABI
    Dl dl, db, dt, dbt, dbl, dr;
    DlTree tr;
    to_dl(in, lp.view, &dl);
    to_dl(in, boundary.view, &db);
    to_dl(in, trunk.view, &dt);
    to_dl(in, branch.view, &dbt);
    to_dl(in, blp.view, &dbl);
    to_dl(in, root.view, &dr);
    to_dl_tree(in, tree.view(), &tr);
    const difftree_d2sd_params params{budget};
    expect_named_c(difftree_d2sd_boundaries(dl_or_null(in, dl), dl_or_null(in, db), nullptr));
    expect_named_c(difftree_d2sd_select(dl_or_null(in, dt), dl_or_null(in, dl), dl_or_null(in, db),
                                        dl_or_null(in, dbt), dl_or_null(in, dbl),
                                        r ? dl_or_null(in, dr) : nullptr,
                                        in.coin() ? &params : nullptr, tree_or_null(in, tr),
                                        nullptr, nullptr));
  }
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
      for (int64_t i = 0; i < history.n; ++i)
        reinterpret_cast<int64_t*>(history.bytes.data())[i] = in.range(-1, 3);
    if (tokens.view.dtype == DType::kInt64)
      for (int64_t i = 0; i < tokens.n; ++i)
        reinterpret_cast<int64_t*>(tokens.bytes.data())[i] = in.range(0, 4);
    if (num.view.dtype == DType::kInt64)
      for (int64_t i = 0; i < num.n; ++i)
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
  if (in.coin()) {  // the same through the C ABI
    Dl dk, dc, dh, dtk, dn, dt, dl, dctx, dr;
    DlTree tr;
    to_dl(in, keys.view, &dk);
    to_dl(in, counts.view, &dc);
    to_dl(in, history.view, &dh);
    to_dl(in, tokens.view, &dtk);
    to_dl(in, num.view, &dn);
    expect_named_c(difftree_ngram_extend(dl_or_null(in, dk), dl_or_null(in, dc),
                                         dl_or_null(in, dh), dl_or_null(in, dtk),
                                         dl_or_null(in, dn), order, nullptr, nullptr));
    to_dl(in, k, &dk);
    to_dl(in, c, &dc);
    to_dl(in, tok.view, &dt);
    to_dl(in, lp.view, &dl);
    to_dl(in, context.view, &dctx);
    to_dl(in, root.view, &dr);
    to_dl_tree(in, tree.view(), &tr);
    const difftree_presto_params p{budget, params.order, params.alpha, params.lam, params.vocab};
    expect_named_c(difftree_presto_select(dl_or_null(in, dt), dl_or_null(in, dl),
                                          r ? dl_or_null(in, dr) : nullptr, dl_or_null(in, dctx),
                                          dl_or_null(in, dk), dl_or_null(in, dc),
                                          in.coin() ? &p : nullptr, tree_or_null(in, tr), nullptr,
                                          nullptr));
  }
}

// The rest of a round through the C++ API and the C ABI: tree attention over a small cache,
// node selection with optional sampling settings, and the CaDDTree and TAPS selectors.
void fuzz_round(Input& in) {
  const int64_t B = in.range(0, 2), N = in.range(0, 5), D = in.range(0, 4), S = in.range(0, 12);
  const int64_t Hkv = in.range(0, 2), Hq = maybe_off(in, Hkv * in.range(1, 2));
  Buffer q = make(in, pick_dtype(in, DType::kFloat32), {B, Hq, N, D}, true);
  Buffer kc = make(in, pick_dtype(in, DType::kFloat32), {B, Hkv, S, D}, true);
  const int64_t Dv = in.coin() ? D : in.range(0, 4);  // D_v may differ from D_k
  Buffer vc = make(in, pick_dtype(in, DType::kFloat32), {B, Hkv, maybe_off(in, S), Dv}, true);
  Buffer out = make(in, pick_dtype(in, DType::kFloat32), {B, Hq, maybe_off(in, N), Dv}, false);
  Buffer plen = make(in, pick_dtype(in, DType::kInt64), {B}, true);
  Buffer anc = make(in, pick_dtype(in, DType::kInt32), {B, N, (N + 31) / 32}, true);
  Buffer nodes = make(in, pick_dtype(in, DType::kInt64), {B}, true);
  if (in.coin() && plen.view.dtype == DType::kInt64 && nodes.view.dtype == DType::kInt64)
    for (int64_t b = 0; b < plen.n && b < nodes.n; ++b) {  // in range, so the kernel runs
      reinterpret_cast<int64_t*>(plen.bytes.data())[b] = in.range(0, std::max<int64_t>(S - N, 0));
      reinterpret_cast<int64_t*>(nodes.bytes.data())[b] = in.range(0, static_cast<int>(N));
    }
  const float scale = in.coin() ? 0.5f : static_cast<float>(static_cast<int32_t>(in.u64()));
  const bool chain = in.coin();
  const int64_t splits = in.range(-1, 3);
  const TensorView* a = in.coin() ? &anc.view : nullptr;
  const TensorView* nn = in.coin() ? &nodes.view : nullptr;
  // The attention variant: a window (sometimes negative or huge), depth (sometimes in range),
  // sinks, a ring.
  Buffer depth = make(in, pick_dtype(in, DType::kInt64), {B, maybe_off(in, N)}, true);
  if (in.coin() && depth.view.dtype == DType::kInt64)
    for (int64_t i = 0; i < depth.n; ++i)
      reinterpret_cast<int64_t*>(depth.bytes.data())[i] = in.range(0, std::max<int64_t>(N - 1, 0));
  Buffer sinks = make(in, pick_dtype(in, DType::kFloat32), {maybe_off(in, Hq)}, true);
  AttentionVariant variant;
  variant.depth = in.coin() ? &depth.view : nullptr;
  variant.sinks = in.coin() ? &sinks.view : nullptr;
  variant.window = in.coin() ? in.range(-1, 8) : static_cast<int64_t>(in.u64());
  variant.ring = in.coin();
  expect_named(
      check_tree_attention(q.view, kc.view, vc.view, plen.view, a, nn, scale, chain, variant));
  expect_named(tree_attention(q.view, kc.view, vc.view, plen.view, a, nn, scale, chain, splits,
                              out.view, nullptr, nullptr, variant));
  {
    Dl dq, dk, dv, dp, da, dn, dout, ddepth, dsinks;
    to_dl(in, depth.view, &ddepth);
    to_dl(in, sinks.view, &dsinks);
    to_dl(in, q.view, &dq);
    to_dl(in, kc.view, &dk);
    to_dl(in, vc.view, &dv);
    to_dl(in, plen.view, &dp);
    to_dl(in, anc.view, &da);
    to_dl(in, nodes.view, &dn);
    to_dl(in, out.view, &dout);
    const difftree_attention_params params{scale,
                                           chain ? 1 : 0,
                                           splits,
                                           variant.window,
                                           variant.ring ? 1 : 0,
                                           variant.depth ? dl_or_null(in, ddepth) : nullptr,
                                           variant.sinks ? dl_or_null(in, dsinks) : nullptr};
    expect_named_c(difftree_tree_attention(
        dl_or_null(in, dq), dl_or_null(in, dk), dl_or_null(in, dv), dl_or_null(in, dp),
        a ? dl_or_null(in, da) : nullptr, nn ? dl_or_null(in, dn) : nullptr,
        in.coin() ? &params : nullptr, dl_or_null(in, dout), nullptr, nullptr));
  }

  const int64_t V = in.range(0, 20);
  Buffer logits = make(in, pick_dtype(in, DType::kFloat32), {B, N, V}, true);
  Buffer choice = make(in, pick_dtype(in, DType::kInt32), {B, maybe_off(in, N)}, false);
  Buffer temp = make(in, pick_dtype(in, DType::kFloat32), {maybe_off(in, B)}, true);
  Buffer top_k = make(in, pick_dtype(in, DType::kInt64), {B}, true);
  Buffer top_p = make(in, pick_dtype(in, DType::kFloat32), {B}, true);
  Buffer seed = make(in, pick_dtype(in, DType::kInt64), {B}, true);
  const SamplingViews sv{in.coin() ? &temp.view : nullptr, in.coin() ? &top_k.view : nullptr,
                         in.coin() ? &top_p.view : nullptr, in.coin() ? &seed.view : nullptr,
                         in.coin() ? &seed.view : nullptr};
  expect_named(check_node_select(logits.view, sv));
  expect_named(node_select(logits.view, sv, choice.view, nullptr));
  {
    Dl dl, dc, dt, dk, dp, ds;
    to_dl(in, logits.view, &dl);
    to_dl(in, choice.view, &dc);
    to_dl(in, temp.view, &dt);
    to_dl(in, top_k.view, &dk);
    to_dl(in, top_p.view, &dp);
    to_dl(in, seed.view, &ds);
    const difftree_sampling_params params{
        sv.temperature ? dl_or_null(in, dt) : nullptr, sv.top_k ? dl_or_null(in, dk) : nullptr,
        sv.top_p ? dl_or_null(in, dp) : nullptr, sv.seed ? dl_or_null(in, ds) : nullptr,
        sv.round_idx ? dl_or_null(in, ds) : nullptr};
    expect_named_c(difftree_node_select(dl_or_null(in, dl), in.coin() ? &params : nullptr,
                                        dl_or_null(in, dc), nullptr));
  }

  // CaDDTree over raw or plausible candidates and costs.
  const int64_t L = in.range(0, 4), K = in.range(0, 4);
  const int64_t budget = in.coin() ? in.range(-1, 20) : static_cast<int64_t>(in.u64() % 5000);
  const int64_t N1 = std::clamp<int64_t>(budget, 0, kMaxBudget) + 1;
  Buffer tok = make(in, pick_dtype(in, DType::kInt32), {B, L, K}, true);
  Buffer lp = make(in, pick_dtype(in, DType::kFloat32), {B, L, K}, true);
  if (in.coin() && lp.view.dtype == DType::kFloat32) sane_candidates(in, tok, lp, B * L, K);
  Buffer root = make(in, pick_dtype(in, DType::kInt64), {B}, true);
  Buffer vcost = make(in, pick_dtype(in, DType::kFloat32), {B, maybe_off(in, N1)}, true);
  Buffer dcost = make(in, pick_dtype(in, DType::kFloat32), {B}, true);
  if (in.coin() && vcost.view.dtype == DType::kFloat32 && dcost.view.dtype == DType::kFloat32) {
    for (int64_t i = 0; i < vcost.n; ++i)
      reinterpret_cast<float*>(vcost.bytes.data())[i] = 1.0f + 0.1f * static_cast<float>(i % N1);
    for (int64_t i = 0; i < dcost.n; ++i) reinterpret_cast<float*>(dcost.bytes.data())[i] = 0.5f;
  }
  TreeBufs ctree = make_tree(in, B, maybe_off(in, N1));
  const TensorView* r = in.coin() ? &root.view : nullptr;
  expect_named(caddtree_select(tok.view, lp.view, budget, r, vcost.view, dcost.view,
                               ctree.view(), nullptr));
  {
    Dl dt, dl, dr, dv, dd;
    DlTree tr;
    to_dl(in, tok.view, &dt);
    to_dl(in, lp.view, &dl);
    to_dl(in, root.view, &dr);
    to_dl(in, vcost.view, &dv);
    to_dl(in, dcost.view, &dd);
    to_dl_tree(in, ctree.view(), &tr);
    const difftree_caddtree_params params{budget};
    expect_named_c(difftree_caddtree_select(
        dl_or_null(in, dt), dl_or_null(in, dl), r ? dl_or_null(in, dr) : nullptr,
        dl_or_null(in, dv), dl_or_null(in, dd), in.coin() ? &params : nullptr,
        tree_or_null(in, tr), nullptr, nullptr));
  }

  // TAPS over a raw or plausible pool.
  const int64_t P1 = in.range(0, 8);
  Buffer ptok = make(in, pick_dtype(in, DType::kInt64), {B, P1}, true);
  Buffer ppar = make(in, pick_dtype(in, DType::kInt64), {B, maybe_off(in, P1)}, true);
  Buffer psize = make(in, pick_dtype(in, DType::kInt64), {B}, true);
  Buffer lqc = make(in, pick_dtype(in, DType::kFloat32), {B, P1}, true);
  if (in.coin() && P1 > 0 && ptok.view.dtype == DType::kInt64 &&
      ppar.view.dtype == DType::kInt64 && psize.view.dtype == DType::kInt64 &&
      lqc.view.dtype == DType::kFloat32) {
    for (int64_t i = 0; i < ptok.n; ++i) reinterpret_cast<int64_t*>(ptok.bytes.data())[i] = i;
    for (int64_t i = 0; i < ppar.n; ++i)
      reinterpret_cast<int64_t*>(ppar.bytes.data())[i] =
          i % P1 == 0 ? -1 : in.range(0, static_cast<int>(i % P1) - 1);
    for (int64_t i = 0; i < psize.n; ++i)
      reinterpret_cast<int64_t*>(psize.bytes.data())[i] = in.range(1, static_cast<int>(P1));
    for (int64_t i = 0; i < lqc.n; ++i)
      reinterpret_cast<float*>(lqc.bytes.data())[i] = -static_cast<float>(in.range(0, 40)) / 8.0f;
  }
  TreeBufs ttree = make_tree(in, B, maybe_off(in, N1));
  expect_named(taps_select(ptok.view, ppar.view, psize.view, lqc.view, budget, ttree.view(),
                           nullptr));
  {
    Dl dt, dp, ds, dq;
    DlTree tr;
    to_dl(in, ptok.view, &dt);
    to_dl(in, ppar.view, &dp);
    to_dl(in, psize.view, &ds);
    to_dl(in, lqc.view, &dq);
    to_dl_tree(in, ttree.view(), &tr);
    const difftree_taps_params params{budget};
    expect_named_c(difftree_taps_select(dl_or_null(in, dt), dl_or_null(in, dp),
                                        dl_or_null(in, ds), dl_or_null(in, dq),
                                        in.coin() ? &params : nullptr, tree_or_null(in, tr),
                                        nullptr, nullptr));
  }
}

// Gated-DeltaNet: conv and its tail commit, verify and its state commit over random shapes and
// dtypes, raw or plausible src / path / accepted values, raw bool masks and NaN / Inf floats.
void fuzz_gdn(Input& in) {
  const int64_t B = in.range(0, 3), N = in.range(0, 6), C = in.range(0, 4), K = in.range(0, 4);
  const DType fdt = pick_dtype(in, DType::kFloat32);
  Buffer x = make(in, fdt, {B, N, C}, true);
  Buffer tail = make(in, pick_dtype(in, fdt), {B, maybe_off(in, C), std::max<int64_t>(K - 1, 0)},
                     true);
  Buffer weight = make(in, pick_dtype(in, fdt), {C, maybe_off(in, K)}, true);
  Buffer bias = make(in, pick_dtype(in, fdt), {maybe_off(in, C)}, true);
  Buffer src = make(in, pick_dtype(in, DType::kInt32), {B, maybe_off(in, N), K}, true);
  if (in.coin() && src.view.dtype == DType::kInt32 && K + N > 1) {  // mostly in range
    auto* s = reinterpret_cast<int32_t*>(src.bytes.data());
    for (int64_t i = 0; i < src.n; ++i)
      s[i] = static_cast<int32_t>(in.range(0, 15) ? in.range(0, K + N - 2) : in.range(-2, 40));
  }
  Buffer out = make(in, pick_dtype(in, fdt), {B, N, maybe_off(in, C)}, false);
  const TensorView* bias_view = in.coin() ? &bias.view : nullptr;
  expect_named(check_gdn_conv(x.view, tail.view, weight.view, bias_view, src.view));
  expect_named(gdn_conv(x.view, tail.view, weight.view, bias_view, src.view, in.coin(), out.view,
                        nullptr));

  const int64_t P = in.range(0, 7);
  const DType idx = pick_dtype(in, DType::kInt64);
  Buffer path = make(in, idx, {B, P}, true), acc = make(in, idx, {B}, true);
  Buffer active = make(in, pick_dtype(in, DType::kBool), {maybe_off(in, B)}, true);
  if (in.coin() && idx == DType::kInt64 && N > 0) {  // root paths that usually pass
    auto* p = reinterpret_cast<int64_t*>(path.bytes.data());
    for (int64_t i = 0; i < B * P; ++i) p[i] = std::min<int64_t>(i % P, N - 1 + in.range(0, 1));
    for (int64_t b = 0; b < B; ++b)
      reinterpret_cast<int64_t*>(acc.bytes.data())[b] = in.range(0, std::max<int64_t>(P - 1, 0));
  }
  const TensorView* active_view = in.coin() ? &active.view : nullptr;
  expect_named(check_gdn_conv_commit(tail.view, x.view, src.view, path.view, acc.view,
                                     active_view));
  expect_named(gdn_conv_commit(tail.view, x.view, src.view, path.view, acc.view, active_view,
                               nullptr));

  const int64_t Hk = in.range(0, 2), Hv = in.range(0, 4), Dk = in.range(0, 3), Dv = in.range(0, 3);
  const DType qdt = pick_dtype(in, DType::kFloat32);
  Buffer q = make(in, qdt, {B, N, Hk, Dk}, true);
  Buffer k = make(in, pick_dtype(in, qdt), {B, N, Hk, maybe_off(in, Dk)}, true);
  Buffer v = make(in, pick_dtype(in, qdt), {B, N, Hv, Dv}, true);
  Buffer g = make(in, pick_dtype(in, DType::kFloat32), {B, N, maybe_off(in, Hv)}, true);
  Buffer beta = make(in, pick_dtype(in, DType::kFloat32), {B, N, Hv}, true);
  Buffer state = make(in, pick_dtype(in, DType::kFloat32), {B, Hv, Dk, maybe_off(in, Dv)}, true);
  Buffer anc = make(in, pick_dtype(in, DType::kInt32), {B, N, maybe_off(in, anc_words(N))}, true);
  Buffer o = make(in, pick_dtype(in, qdt), {B, N, Hv, Dv}, false);
  Buffer k_hat = make(in, pick_dtype(in, DType::kFloat32), {B, N, Hk, Dk}, false);
  Buffer delta = make(in, pick_dtype(in, DType::kFloat32), {B, N, Hv, Dv}, false);
  Buffer gcum = make(in, pick_dtype(in, DType::kFloat32), {B, N, Hv}, false);
  const TensorView* anc_view = in.coin() ? &anc.view : nullptr;
  expect_named(check_gdn_verify(q.view, k.view, v.view, g.view, beta.view, state.view, anc_view));
  expect_named(gdn_verify(q.view, k.view, v.view, g.view, beta.view, state.view, anc_view, o.view,
                          k_hat.view, delta.view, gcum.view, nullptr));
  expect_named(check_gdn_commit(state.view, k_hat.view, delta.view, gcum.view, path.view,
                                acc.view, active_view));
  expect_named(gdn_commit(state.view, k_hat.view, delta.view, gcum.view, path.view, acc.view,
                          active_view, nullptr));
}

}  // namespace

// The sizing functions (C ABI and C++ API) on raw int64 arguments: they must return promptly
// (a loop bounded by the budget, no overflow), whatever a caller passes.
void fuzz_sizing(Input& in) {
  int64_t a[7];
  for (int64_t& x : a) {
    switch (in.range(0, 3)) {
      case 0: x = static_cast<int64_t>(in.u64()); break;
      case 1: x = in.range(-2, 70); break;
      case 2: x = int64_t{1} << in.range(0, 63); break;
      default: x = INT64_MAX - in.range(0, 2); break;
    }
  }
  volatile size_t sink = 0;
  sink += difftree_topk_logprobs_workspace_bytes(a[0], a[1], a[2], a[3], a[4]);
  sink += static_cast<size_t>(difftree_topk_logprobs_num_splits(a[0], a[1], a[2], a[3]));
  sink += difftree_ddtree_select_workspace_bytes(a[0], a[1], a[2], a[3]);
  sink += difftree_presto_select_workspace_bytes(a[0], a[1], a[2], a[3], a[4]);
  sink += difftree_taps_select_workspace_bytes(a[0], a[1], a[2]);
  sink += difftree_d2sd_select_workspace_bytes(a[0], a[1], a[2], a[3], a[4]);
  sink += static_cast<size_t>(difftree_tree_attention_num_splits(a[0], a[1], a[2], a[3], a[4]));
  sink += difftree_tree_attention_workspace_bytes(a[0], a[1], a[2], a[3], a[4], a[5], a[6]);
  (void)sink;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Input in(data, size);
  static const int kBadEvery[] = {0, 0, 32, 12, 4};
  in.bad_every = kBadEvery[in.range(0, 4)];
  switch (in.range(0, 8)) {
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
    case 5:
      fuzz_round(in);
      break;
    case 6:
      fuzz_sizing(in);
      break;
    case 7:
      fuzz_gdn(in);
      break;
    default:
      fuzz_commit(in);
      break;
  }
  return 0;
}
