// kv_commit through the public API, against a naive staged copy written here: overlapping
// source/destination rows, the contiguous fast path, several caches and requests with different
// base_len, every cache dtype, random paths; invalid paths leave every cache unchanged. Ring caches
// (row r in slot r % S): random wrap-around commits against the naive copy, the C ABI entry.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "check.h"
#include "difftree/difftree.h"
#include "difftree/difftree.hpp"
#include "test_util.h"

using namespace difftree;

namespace {

// num_caches caches [B, H, S, D] of one dtype, stored as bytes; every byte distinct-ish.
struct Caches {
  int64_t B, H, S, D;
  DType dtype;
  std::vector<std::vector<uint8_t>> data;
  Caches(int n, int64_t b, int64_t h, int64_t s, int64_t d, DType dt, uint32_t seed)
      : B(b), H(h), S(s), D(d), dtype(dt) {
    std::mt19937 rng(seed);
    for (int c = 0; c < n; ++c) {
      data.emplace_back(b * h * s * d * dtype_size(dt));
      for (uint8_t& x : data.back()) x = static_cast<uint8_t>(rng());
    }
  }
  std::vector<TensorView> views() {
    std::vector<TensorView> v;
    for (auto& d : data) v.push_back(make_view(d.data(), dtype, {B, H, S, D}));
    return v;
  }
  size_t row_bytes() const { return static_cast<size_t>(D) * dtype_size(dtype); }
};

// The naive staged copy: read every accepted row of a head into a scratch buffer, then write.
// ring: row r is slot r % S.
void naive_commit(Caches& c, const std::vector<int64_t>& base, const std::vector<int64_t>& path,
                  int64_t P, const std::vector<int64_t>& accepted, bool ring = false) {
  const size_t rb = c.row_bytes();
  auto slot = [&](int64_t b, int64_t r) { return ring ? (base[b] % c.S + r) % c.S : base[b] + r; };
  for (auto& buf : c.data)
    for (int64_t b = 0; b < c.B; ++b)
      for (int64_t h = 0; h < c.H; ++h) {
        uint8_t* head = buf.data() + (b * c.H + h) * c.S * rb;
        std::vector<uint8_t> stage((accepted[b] + 1) * rb);
        for (int64_t j = 0; j <= accepted[b]; ++j)
          std::memcpy(stage.data() + j * rb, head + slot(b, path[b * P + j]) * rb, rb);
        for (int64_t j = 0; j <= accepted[b]; ++j)
          std::memcpy(head + slot(b, j) * rb, stage.data() + j * rb, rb);
      }
}

Status commit(Caches& c, const std::vector<int64_t>& base, const std::vector<int64_t>& path,
              int64_t P, const std::vector<int64_t>& accepted, bool int64_idx, bool ring = false) {
  std::vector<TensorView> v = c.views();
  std::vector<int32_t> b32(base.begin(), base.end()), p32(path.begin(), path.end()),
      a32(accepted.begin(), accepted.end());
  std::vector<int64_t> b64 = base, p64 = path, a64 = accepted;
  const DType dt = int64_idx ? DType::kInt64 : DType::kInt32;
  auto ptr = [&](std::vector<int32_t>& x32, std::vector<int64_t>& x64) -> void* {
    return int64_idx ? static_cast<void*>(x64.data()) : static_cast<void*>(x32.data());
  };
  return kv_commit(v.data(), static_cast<int>(v.size()), make_view(ptr(b32, b64), dt, {c.B}),
                   make_view(ptr(p32, p64), dt, {c.B, P}), make_view(ptr(a32, a64), dt, {c.B}),
                   nullptr, ring);
}

// Runs kv_commit and the naive copy on identical caches and compares every byte.
void expect_same_as_naive(Caches c, const std::vector<int64_t>& base,
                          const std::vector<int64_t>& path, int64_t P,
                          const std::vector<int64_t>& accepted, bool int64_idx, const char* what,
                          bool ring = false) {
  dt_test::Context ctx(what);
  Caches want = c;
  naive_commit(want, base, path, P, accepted, ring);
  if (!CHECK_OK(commit(c, base, path, P, accepted, int64_idx, ring))) return;
  for (size_t i = 0; i < c.data.size(); ++i) {
    dt_test::Context ci("cache " + std::to_string(i));
    CHECK(c.data[i] == want.data[i]);
  }
}

void test_hand_checked() {
  {  // rows as float values we can read: row s of head h holds 100 * h + s in every element
    Caches c(1, 1, 2, 10, 3, DType::kFloat32, 0);
    auto at = [&](int64_t h, int64_t s) {
      return reinterpret_cast<float*>(c.data[0].data()) + (h * 10 + s) * 3;
    };
    for (int64_t h = 0; h < 2; ++h)
      for (int64_t s = 0; s < 10; ++s) std::fill_n(at(h, s), 3, static_cast<float>(100 * h + s));
    // base 2, path 0,2,3,5: rows 4,5,7 -> 3,4,5 (row 4 is read before it is overwritten)
    CHECK_OK(commit(c, {2}, {0, 2, 3, 5, -1}, 5, {3}, false));
    const float want[10] = {0, 1, 2, 4, 5, 7, 6, 7, 8, 9};
    for (int64_t h = 0; h < 2; ++h)
      for (int64_t s = 0; s < 10; ++s) {
        dt_test::Context ctx("head " + std::to_string(h) + " row " + std::to_string(s));
        CHECK_EQ(at(h, s)[0], 100 * h + want[s]);
        CHECK_EQ(at(h, s)[2], 100 * h + want[s]);
      }
  }
  Caches base_caches(4, 2, 3, 16, 5, DType::kFloat32, 1);
  expect_same_as_naive(base_caches, {4, 0}, {0, 2, 3, 5, 0, 1, 3, -1}, 4, {3, 2}, false,
                       "overlapping rows: paths 0,2,3,5 and 0,1,3, base_len 4 and 0, 4 caches");
  expect_same_as_naive(base_caches, {0, 9}, {0, 1, 3, -1, 0, 4, 5, 6}, 4, {2, 3}, true,
                       "int64 indices, base 9 up to row 15");
  expect_same_as_naive(base_caches, {3, 3}, {0, 7, 8, 9, 0, 5, 6, 7}, 4, {0, 1}, false,
                       "accepted 0 and 1: columns past accepted are ignored");
  {
    dt_test::Context ctx("contiguous paths leave memory untouched");
    Caches c = base_caches;
    const Caches before = c;
    CHECK_OK(commit(c, {4, 1}, {0, 1, 2, 3, 0, 1, -1, -1}, 4, {3, 1}, false));
    for (size_t i = 0; i < c.data.size(); ++i) CHECK(c.data[i] == before.data[i]);
    CHECK_OK(commit(c, {0, 12}, {0, 1, 2, 3, 0, 1, 2, 3}, 4, {0, 3}, true));
    for (size_t i = 0; i < c.data.size(); ++i) CHECK(c.data[i] == before.data[i]);
  }
  {
    dt_test::Context ctx("one request contiguous, the other not");
    expect_same_as_naive(base_caches, {2, 2}, {0, 1, 2, -1, 0, 2, 4, -1}, 4, {2, 2}, false,
                         "mixed");
  }
  // Every cache dtype; rows of exactly 4096 bytes.
  const DType dtypes[] = {DType::kFloat16, DType::kBFloat16, DType::kUInt8, DType::kInt32,
                          DType::kFloat32};
  for (DType dt : dtypes) {
    dt_test::Context ctx(std::string("dtype ") + dtype_name(dt));
    expect_same_as_naive(Caches(2, 2, 2, 12, 7, dt, 3), {1, 5}, {0, 3, 4, 6, 0, 2, 6, -1}, 4,
                         {3, 2}, false, "small rows");
    expect_same_as_naive(Caches(2, 1, 1, 8, 4096 / dtype_size(dt), dt, 4), {0}, {0, 2, 3, 7}, 4,
                         {3}, true, "4096-byte rows");
  }
}

void test_random() {
  std::mt19937 rng(31337);
  for (int c = 0; c < 300; ++c) {
    const int64_t B = 1 + rng() % 4, H = 1 + rng() % 3, D = 1 + rng() % 9, S = 4 + rng() % 40;
    const int64_t P = 1 + rng() % 8;
    const int n = 1 + rng() % 5;
    std::vector<int64_t> base(B), path(B * P, -1), acc(B);
    for (int64_t b = 0; b < B; ++b) {
      base[b] = rng() % (S - 1);
      const int64_t room = S - base[b];  // rows base .. S-1 exist
      acc[b] = rng() % std::min(P, room);
      // acc distinct increasing node indices in [1, room) after the root.
      std::vector<int64_t> nodes;
      for (int64_t i = 1; i < room; ++i) nodes.push_back(i);
      std::shuffle(nodes.begin(), nodes.end(), rng);
      nodes.resize(acc[b]);
      if (rng() % 3 == 0)
        for (int64_t j = 0; j < acc[b]; ++j) nodes[j] = j + 1;  // contiguous
      std::sort(nodes.begin(), nodes.end());
      path[b * P] = 0;
      for (int64_t j = 0; j < acc[b]; ++j) path[b * P + j + 1] = nodes[j];
      for (int64_t j = acc[b] + 1; j < P; ++j) path[b * P + j] = rng() % 2 ? -1 : rng() % 99;
    }
    const DType dt = rng() % 2 ? DType::kFloat32 : DType::kBFloat16;
    const std::string what = "random commit case " + std::to_string(c);
    expect_same_as_naive(Caches(n, B, H, S, D, dt, static_cast<uint32_t>(c)), base, path, P, acc,
                         rng() % 2, what.c_str());
  }
}

// An invalid call returns `code` naming `needle` and leaves every cache byte unchanged.
void expect_rejected(Caches c, const std::vector<int64_t>& base, const std::vector<int64_t>& path,
                     int64_t P, const std::vector<int64_t>& accepted, bool int64_idx,
                     const char* needle, const char* what, bool ring = false) {
  dt_test::Context ctx(what);
  const Caches before = c;
  auto fn = [&]() {
    const Status s = commit(c, base, path, P, accepted, int64_idx, ring);
    bool ok =
        s.code() == StatusCode::kInvalidValue && s.message().find(needle) != std::string::npos;
    if (!ok) std::fprintf(stderr, "    got %s\n", dt_test::describe(s).c_str());
    for (size_t i = 0; i < c.data.size(); ++i)
      if (c.data[i] != before.data[i]) {
        std::fprintf(stderr, "    cache %zu was modified\n", i);
        ok = false;
      }
    return ok;
  };
  CHECK_ISOLATED(fn);  // in a child process: an out-of-bounds write must not take the test down
}

void test_invalid_paths() {
  Caches c(3, 2, 2, 10, 4, DType::kFloat32, 7);
  // Request 0 is valid and non-contiguous in every case, so a partial commit would show.
  expect_rejected(c, {0, 0}, {0, 2, 3, 1, 2, 3}, 3, {2, 2}, false, "path",
                  "path not starting at 0");
  expect_rejected(c, {0, 0}, {0, 2, 3, 0, 3, 2}, 3, {2, 2}, false, "path", "path not increasing");
  expect_rejected(c, {0, 0}, {0, 2, 3, 0, 2, 2}, 3, {2, 2}, true, "path", "repeated node");
  expect_rejected(c, {0, 0}, {0, 2, 3, 0, -1, 4}, 3, {2, 2}, false, "path", "negative node");
  expect_rejected(c, {0, 5}, {0, 2, 3, 0, 2, 5}, 3, {2, 2}, false, "path",
                  "last row base_len + path = 10 outside S = 10");
  expect_rejected(c, {0, 0}, {0, 2, 3, 0, 2, 10}, 3, {2, 2}, true, "path", "node past S");
  expect_rejected(c, {0, 10}, {0, 2, 3, 0, 1, 2}, 3, {2, 0}, false, "path",
                  "base_len = S: even the root row is outside");
  expect_rejected(c, {0, 0}, {0, 2, 3, 0, 1, 2}, 3, {2, 3}, false, "accepted", "accepted >= P");
  expect_rejected(c, {0, 0}, {0, 2, 3, 0, 1, 2}, 3, {2, -1}, false, "accepted",
                  "negative accepted");
  expect_rejected(c, {0, -2}, {0, 2, 3, 0, 1, 2}, 3, {2, 2}, false, "base_len",
                  "negative base_len");
  // Values near INT64_MAX must not overflow base_len + path into a "valid" negative row.
  // Regression: the bound check `base + prev >= S` overflowed (signed, UB) for huge int64
  // base_len / path values, returned Ok and wrote outside the cache (e.g. base_len = INT64_MAX - 1,
  // path = [0, 2, 3] wrote the 16 bytes before it). They must be rejected, caches untouched.
  const int64_t big = std::numeric_limits<int64_t>::max();
  expect_rejected(c, {0, big - 1}, {0, 2, 3, 0, 2, 3}, 3, {2, 2}, true, "",
                  "base_len near INT64_MAX (int64)");
  expect_rejected(c, {0, 2}, {0, 2, 3, 0, 1, big}, 3, {2, 2}, true, "",
                  "path entry near INT64_MAX (int64)");
}

void test_ring() {
  dt_test::Context ctx("ring");
  {  // ring of 6 slots, base 10 (= 4 mod 6): rows 12, 14 (slots 0, 2) -> rows 11, 12 (slots 5, 0)
    Caches c(1, 1, 1, 6, 1, DType::kFloat32, 0);
    float* rows = reinterpret_cast<float*>(c.data[0].data());
    for (int64_t s = 0; s < 6; ++s) rows[s] = static_cast<float>(s);
    CHECK_OK(commit(c, {10}, {0, 2, 4}, 3, {2}, false, /*ring=*/true));
    const float want[6] = {2, 1, 2, 3, 4, 0};
    for (int64_t s = 0; s < 6; ++s) CHECK_EQ(rows[s], want[s]);
  }
  std::mt19937 rng(4242);
  for (int c = 0; c < 300; ++c) {
    const int64_t B = 1 + rng() % 4, H = 1 + rng() % 3, D = 1 + rng() % 9, S = 2 + rng() % 30;
    const int64_t P = 1 + rng() % 8;
    const bool int64_idx = c % 2 == 0;
    std::vector<int64_t> base(B), path(B * P, -1), acc(B);
    for (int64_t b = 0; b < B; ++b) {
      // Near INT64_MAX (int64 indices): base % S first, so the slot arithmetic cannot overflow.
      base[b] = int64_idx && c % 7 == 0 ? std::numeric_limits<int64_t>::max() - rng() % 100
                                        : rng() % (40 * S);
      acc[b] = rng() % std::min(P, S);
      std::vector<int64_t> nodes;  // acc distinct node indices in [1, S)
      for (int64_t i = 1; i < S; ++i) nodes.push_back(i);
      std::shuffle(nodes.begin(), nodes.end(), rng);
      nodes.resize(acc[b]);
      std::sort(nodes.begin(), nodes.end());
      path[b * P] = 0;
      for (int64_t j = 0; j < acc[b]; ++j) path[b * P + j + 1] = nodes[j];
    }
    const std::string what = "random ring commit case " + std::to_string(c);
    expect_same_as_naive(Caches(1 + rng() % 4, B, H, S, D, DType::kBFloat16, c), base, path, P,
                         acc, int64_idx, what.c_str(), /*ring=*/true);
  }
  Caches c(2, 2, 2, 10, 4, DType::kFloat32, 7);
  expect_rejected(c, {0, 3}, {0, 2, 3, 0, 2, 10}, 3, {2, 2}, false, "does not fit in the ring",
                  "ring: path entry = S", /*ring=*/true);
  expect_rejected(c, {0, -1}, {0, 2, 3, 0, 1, 2}, 3, {2, 2}, true, "base_len",
                  "ring: negative base_len", /*ring=*/true);
  expect_rejected(c, {0, 0}, {0, 2, 3, 0, 3, 2}, 3, {2, 2}, false, "path",
                  "ring: path not increasing", /*ring=*/true);
  // A full cache rejects what a ring accepts: base_len far past S.
  expect_rejected(c, {0, 100}, {0, 2, 3, 0, 1, 2}, 3, {2, 2}, false, "outside the caches",
                  "full cache: base_len past S");
  expect_same_as_naive(c, {0, 100}, {0, 2, 3, 0, 1, 2}, 3, {2, 2}, false, "ring: base past S",
                       /*ring=*/true);
  // The C ABI: difftree_kv_commit_ring, and difftree_kv_commit is the full-cache form.
  {
    Caches a = c, want = c;
    naive_commit(want, {13, 7}, {0, 4, 9, 0, 1, 2}, 3, {2, 2}, true);
    std::vector<int64_t> base = {13, 7}, path = {0, 4, 9, 0, 1, 2}, acc = {2, 2};
    int64_t shape_b[1] = {2}, shape_p[2] = {2, 3}, shape_c[4] = {2, 2, 10, 4};
    auto dl = [](void* data, DLDataType t, int32_t nd, int64_t* shape) {
      DLTensor x{};
      x.data = data;
      x.device = {kDLCPU, 0};
      x.ndim = nd;
      x.dtype = t;
      x.shape = shape;
      return x;
    };
    const DLDataType i64{kDLInt, 64, 1}, f32{kDLFloat, 32, 1};
    DLTensor tb = dl(base.data(), i64, 1, shape_b), tp = dl(path.data(), i64, 2, shape_p),
             ta = dl(acc.data(), i64, 1, shape_b);
    std::vector<DLTensor> tc;
    for (auto& d : a.data) tc.push_back(dl(d.data(), f32, 4, shape_c));
    std::vector<const DLTensor*> ptrs;
    for (auto& t : tc) ptrs.push_back(&t);
    CHECK_EQ(difftree_kv_commit(ptrs.data(), 2, &tb, &tp, &ta, nullptr), DIFFTREE_INVALID_VALUE);
    CHECK(std::string(difftree_last_error()).find("outside the caches") != std::string::npos);
    CHECK_EQ(difftree_kv_commit_ring(ptrs.data(), 2, &tb, &tp, &ta, 1, nullptr), DIFFTREE_OK);
    for (size_t i = 0; i < a.data.size(); ++i) CHECK(a.data[i] == want.data[i]);
  }
}

void test_validation() {
  dt_test::Context ctx("validation");
  Caches c(2, 2, 2, 10, 4, DType::kFloat32, 9);
  std::vector<TensorView> v = c.views();
  std::vector<int32_t> base = {0, 0}, path = {0, 1, 0, 2}, acc = {1, 1};
  const TensorView bv = make_view(base.data(), DType::kInt32, {2});
  const TensorView pv = make_view(path.data(), DType::kInt32, {2, 2});
  const TensorView av = make_view(acc.data(), DType::kInt32, {2});
  CHECK_OK(check_kv_commit(v.data(), 2, bv, pv, av));
  CHECK_STATUS(check_kv_commit(v.data(), 0, bv, pv, av), kInvalidValue, "caches");
  {
    Caches other(1, 2, 2, 10, 4, DType::kBFloat16, 9);
    std::vector<TensorView> mixed = {v[0], other.views()[0]};
    CHECK_STATUS(check_kv_commit(mixed.data(), 2, bv, pv, av), kInvalidType, "caches[1]");
    Caches shorter(1, 2, 2, 9, 4, DType::kFloat32, 9);
    mixed = {v[0], shorter.views()[0]};
    CHECK_STATUS(check_kv_commit(mixed.data(), 2, bv, pv, av), kInvalidValue, "caches[1]");
    Caches wrong_b(1, 3, 2, 10, 4, DType::kFloat32, 9);
    CHECK_STATUS(check_kv_commit(wrong_b.views().data(), 1, bv, pv, av), kInvalidValue,
                 "caches[0]");
    Caches wide(1, 2, 1, 4, 1025, DType::kFloat32, 9);  // 4100-byte rows
    CHECK_STATUS(check_kv_commit(wide.views().data(), 1, bv, pv, av), kInvalidValue, "caches[0]");
    std::vector<TensorView> odd = {v[0]};
    odd[0].dtype = DType::kInt64;  // not a cache dtype
    CHECK_STATUS(check_kv_commit(odd.data(), 1, bv, pv, av), kInvalidType, "caches[0]");
    odd[0] = v[0];
    odd[0].ndim = 3;
    CHECK_STATUS(check_kv_commit(odd.data(), 1, bv, pv, av), kInvalidValue, "caches[0]");
    odd[0] = v[0];
    odd[0].strides[2] = 8;  // [B, H, S, D] with a padded row stride: not contiguous
    CHECK_STATUS(check_kv_commit(odd.data(), 1, bv, pv, av), kInvalidValue, "caches[0]");
    odd[0] = v[0];
    odd[0].device = DeviceType::kCUDA;
    CHECK_STATUS(check_kv_commit(odd.data(), 1, bv, pv, av), kInvalidValue, "caches[0]");
  }
  std::vector<float> f(4);
  CHECK_STATUS(check_kv_commit(v.data(), 2, bv, make_view(f.data(), DType::kFloat32, {2, 2}), av),
               kInvalidType, "path");
  CHECK_STATUS(check_kv_commit(v.data(), 2, bv, make_view(path.data(), DType::kInt32, {4}), av),
               kInvalidValue, "path");
  CHECK_STATUS(check_kv_commit(v.data(), 2, bv, make_view(path.data(), DType::kInt32, {2, 0}), av),
               kInvalidValue, "path");
  CHECK_STATUS(check_kv_commit(v.data(), 2, make_view(base.data(), DType::kInt32, {1}), pv, av),
               kInvalidValue, "base_len");
  CHECK_STATUS(check_kv_commit(v.data(), 2, make_view(f.data(), DType::kFloat32, {2}), pv, av),
               kInvalidType, "base_len");
  CHECK_STATUS(check_kv_commit(v.data(), 2, bv, pv, make_view(acc.data(), DType::kInt32, {2, 1})),
               kInvalidValue, "accepted");
  if (!build_info().cuda_compiled) {
    std::vector<TensorView> g = v;
    for (TensorView& t : g) t.device = DeviceType::kCUDA;
    TensorView gb = bv, gp = pv, ga = av;
    gb.device = gp.device = ga.device = DeviceType::kCUDA;
    CHECK_STATUS(kv_commit(g.data(), 2, gb, gp, ga, nullptr), kUnsupported, "kv_commit");
  }
}

}  // namespace

int main() {
  test_hand_checked();
  test_random();
  test_invalid_paths();
  test_ring();
  test_validation();
  return dt_test::report("kv_commit");
}
