// The Gated-DeltaNet tree ops through the public API: small hand-checked cases (a conv over a
// tree and its tail commit; verify of a star-shaped tree against the per-row recurrence run in
// double here; the commit of an accepted path against the same recurrence) and the invalid-input
// statuses, including bad index values that must leave the states unchanged.
#include <cmath>
#include <cstdint>
#include <vector>

#include "check.h"
#include "difftree/difftree.hpp"

using namespace difftree;

namespace {

constexpr double kEps = 1e-6;  // the l2norm epsilon

bool near(double got, double want, double tol = 1e-5) {
  return std::fabs(got - want) <= tol * (1.0 + std::fabs(want));
}

// ---- gdn_conv / gdn_conv_commit -----------------------------------------------------------------

void test_conv() {
  dt_test::Context ctx("gdn_conv: K = 2, a root with two children, C = 1");
  // seq = [tail 10; x 1, 2, 4]; row i reads itself (weight[:, 1]) and its parent (weight[:, 0]),
  // the root's parent being the tail.
  std::vector<float> x = {1, 2, 4}, tail = {10}, weight = {0.5f, 1.0f}, bias = {0.25f};
  std::vector<int32_t> src = {1, 0, 2, 1, 3, 1};
  std::vector<float> out(3, -7.0f);
  const TensorView xv = make_view(x.data(), DType::kFloat32, {1, 3, 1});
  const TensorView tv = make_view(tail.data(), DType::kFloat32, {1, 1, 1});
  const TensorView wv = make_view(weight.data(), DType::kFloat32, {1, 2});
  const TensorView bv = make_view(bias.data(), DType::kFloat32, {1});
  const TensorView sv = make_view(src.data(), DType::kInt32, {1, 3, 2});
  const TensorView ov = make_view(out.data(), DType::kFloat32, {1, 3, 1});
  CHECK_OK(check_gdn_conv(xv, tv, wv, &bv, sv));
  CHECK_OK(gdn_conv(xv, tv, wv, &bv, sv, false, ov, nullptr));
  CHECK_EQ(out[0], 1.0f + 5.0f + 0.25f);
  CHECK_EQ(out[1], 2.0f + 0.5f + 0.25f);
  CHECK_EQ(out[2], 4.0f + 0.5f + 0.25f);
  CHECK_OK(gdn_conv(xv, tv, wv, nullptr, sv, true, ov, nullptr));
  const double pre = 4.0 + 0.5;
  CHECK(near(out[2], pre / (1.0 + std::exp(-pre))));

  // Invalid inputs.
  std::vector<int32_t> bad = src;
  bad[3] = 4;  // K - 1 + N = 4 rows
  const TensorView badv = make_view(bad.data(), DType::kInt32, {1, 3, 2});
  CHECK_STATUS(gdn_conv(xv, tv, wv, &bv, badv, true, ov, nullptr), kInvalidValue, "src: ");
  bad[3] = -1;
  CHECK_STATUS(gdn_conv(xv, tv, wv, &bv, badv, true, ov, nullptr), kInvalidValue, "src: ");
  CHECK_STATUS(check_gdn_conv(xv, tv, make_view(weight.data(), DType::kFloat32, {2, 1}), &bv, sv),
               kInvalidValue, "weight: ");
  CHECK_STATUS(check_gdn_conv(xv, tv, make_view(weight.data(), DType::kFloat16, {1, 2}), &bv, sv),
               kInvalidType, "weight: ");
  CHECK_STATUS(check_gdn_conv(xv, make_view(tail.data(), DType::kFloat32, {1, 1, 2}), wv, &bv, sv),
               kInvalidValue, "conv_tail: ");
  CHECK_STATUS(check_gdn_conv(xv, tv, wv, &bv, make_view(src.data(), DType::kInt32, {1, 3, 1})),
               kInvalidValue, "conv_tail: ");  // K = 1 from src: the tail must be [1, 1, 0]
  CHECK_STATUS(gdn_conv(xv, tv, wv, &bv, sv, true,
                        make_view(out.data(), DType::kFloat32, {1, 1, 3}), nullptr),
               kInvalidValue, "out: ");
}

void test_conv_commit() {
  dt_test::Context ctx("gdn_conv_commit: K = 3, accept the root and its second child");
  // seq = [tail -1, -2; x 1, 2, 3], tree parents [-1, 0, 0]: src rows (self, parent, grandparent)
  // node 0: (2, 1, 0), node 1: (3, 2, 1), node 2: (4, 2, 1).
  std::vector<float> x = {1, 2, 3}, tail = {-1, -2};
  std::vector<int32_t> src = {2, 1, 0, 3, 2, 1, 4, 2, 1};
  std::vector<int64_t> path = {0, 2, -1}, accepted = {1};
  const TensorView xv = make_view(x.data(), DType::kFloat32, {1, 3, 1});
  const TensorView tv = make_view(tail.data(), DType::kFloat32, {1, 1, 2});
  const TensorView sv = make_view(src.data(), DType::kInt32, {1, 3, 3});
  const TensorView pv = make_view(path.data(), DType::kInt64, {1, 3});
  const TensorView av = make_view(accepted.data(), DType::kInt64, {1});
  CHECK_OK(gdn_conv_commit(tv, xv, sv, pv, av, nullptr, nullptr));
  CHECK_EQ(tail[0], 1.0f);  // the root's row, then the accepted child's (oldest first)
  CHECK_EQ(tail[1], 3.0f);

  // An inactive request keeps its tail; bad values leave it unchanged.
  bool inactive = false;
  const TensorView act = make_view(&inactive, DType::kBool, {1});
  tail = {-1, -2};
  CHECK_OK(gdn_conv_commit(tv, xv, sv, pv, av, &act, nullptr));
  CHECK_EQ(tail[0], -1.0f);
  path = {0, 3, -1};  // node 3 >= N
  CHECK_STATUS(gdn_conv_commit(tv, xv, sv, pv, av, nullptr, nullptr), kInvalidValue, "path: ");
  path = {1, 2, -1};  // not from the root
  CHECK_STATUS(gdn_conv_commit(tv, xv, sv, pv, av, nullptr, nullptr), kInvalidValue, "path: ");
  path = {0, 2, -1};
  accepted = {3};
  CHECK_STATUS(gdn_conv_commit(tv, xv, sv, pv, av, nullptr, nullptr), kInvalidValue,
               "accepted: ");
  accepted = {1};
  src[7] = 9;
  CHECK_STATUS(gdn_conv_commit(tv, xv, sv, pv, av, nullptr, nullptr), kInvalidValue, "src: ");
  CHECK_EQ(tail[0], -1.0f);
  CHECK_EQ(tail[1], -2.0f);
  int32_t flag = 1;
  const TensorView not_bool = make_view(&flag, DType::kInt32, {1});
  CHECK_STATUS(gdn_conv_commit(tv, xv, sv, pv, av, &not_bool, nullptr), kInvalidType, "active: ");
}

// ---- gdn_verify / gdn_commit --------------------------------------------------------------------

// One key head, two value heads (H_v = 2 H_k), D_k = 2, D_v = 1; a star: rows 1 and 2 are
// children of row 0. The recurrence of the reference, per row along its own path, in double.
struct Case {
  static constexpr int64_t N = 3, Hk = 1, Hv = 2, Dk = 2, Dv = 1;
  std::vector<float> q = {1, 2, -1, 0.5f, 0.25f, 3};
  std::vector<float> k = {2, -1, 1, 1, -0.5f, 2};
  std::vector<float> v = {1, -2, 0.5f, 3, 2, -1};
  std::vector<float> g = {-0.1f, -0.7f, -0.3f, -0.2f, -1.0f, -0.05f};
  std::vector<float> beta = {0.9f, 0.4f, 0.5f, 0.6f, 0.7f, 0.2f};
  std::vector<float> state = {0.5f, -1, 2, 0.25f};  // [H_v, D_k, D_v]
  std::vector<int32_t> anc = {0b001, 0b011, 0b101};
  std::vector<int32_t> parent = {-1, 0, 0};

  // The state of head h after row i's path, and o_i, δ_i, G_i.
  void run(int64_t i, int64_t h, double S[Dk], double* o, double* d, double* G) const {
    std::vector<int64_t> path;
    for (int64_t j = i; j >= 0; j = parent[j]) path.insert(path.begin(), j);
    for (int64_t a = 0; a < Dk; ++a) S[a] = state[h * Dk + a];
    *G = 0;
    for (int64_t j : path) {
      double kh[Dk], qh[Dk], kk = 0, qq = 0;
      for (int64_t a = 0; a < Dk; ++a) {
        kk += double(k[j * Dk + a]) * k[j * Dk + a];
        qq += double(q[j * Dk + a]) * q[j * Dk + a];
      }
      for (int64_t a = 0; a < Dk; ++a) {
        kh[a] = k[j * Dk + a] / std::sqrt(kk + kEps);
        qh[a] = q[j * Dk + a] / std::sqrt(qq + kEps) / std::sqrt(double(Dk));
      }
      const double gj = g[j * Hv + h];
      *G += gj;
      double mem = 0;
      for (int64_t a = 0; a < Dk; ++a) {
        S[a] *= std::exp(gj);
        mem += S[a] * kh[a];
      }
      *d = beta[j * Hv + h] * (v[j * Hv + h] - mem);
      *o = 0;
      for (int64_t a = 0; a < Dk; ++a) {
        S[a] += kh[a] * *d;
        *o += S[a] * qh[a];
      }
    }
  }
};

void test_verify_and_commit() {
  dt_test::Context ctx("gdn_verify / gdn_commit: a three-row star, H_v = 2 H_k");
  Case c;
  const int64_t N = Case::N, Hk = Case::Hk, Hv = Case::Hv, Dk = Case::Dk, Dv = Case::Dv;
  std::vector<float> out(N * Hv * Dv), k_hat(N * Hk * Dk), delta(N * Hv * Dv), gcum(N * Hv);
  const TensorView qv = make_view(c.q.data(), DType::kFloat32, {1, N, Hk, Dk});
  const TensorView kv = make_view(c.k.data(), DType::kFloat32, {1, N, Hk, Dk});
  const TensorView vv = make_view(c.v.data(), DType::kFloat32, {1, N, Hv, Dv});
  const TensorView gv = make_view(c.g.data(), DType::kFloat32, {1, N, Hv});
  const TensorView bv = make_view(c.beta.data(), DType::kFloat32, {1, N, Hv});
  const TensorView sv = make_view(c.state.data(), DType::kFloat32, {1, Hv, Dk, Dv});
  const TensorView av = make_view(c.anc.data(), DType::kInt32, {1, N, 1});
  const TensorView ov = make_view(out.data(), DType::kFloat32, {1, N, Hv, Dv});
  const TensorView khv = make_view(k_hat.data(), DType::kFloat32, {1, N, Hk, Dk});
  const TensorView dv = make_view(delta.data(), DType::kFloat32, {1, N, Hv, Dv});
  const TensorView gcv = make_view(gcum.data(), DType::kFloat32, {1, N, Hv});
  CHECK_OK(check_gdn_verify(qv, kv, vv, gv, bv, sv, &av));
  CHECK_OK(gdn_verify(qv, kv, vv, gv, bv, sv, &av, ov, khv, dv, gcv, nullptr));
  for (int64_t i = 0; i < N; ++i)
    for (int64_t h = 0; h < Hv; ++h) {
      double S[Dk], o = 0, d = 0, G = 0;
      c.run(i, h, S, &o, &d, &G);
      CHECK(near(out[i * Hv + h], o));
      CHECK(near(delta[i * Hv + h], d));
      CHECK(near(gcum[i * Hv + h], G));
    }
  CHECK(near(k_hat[0], 2.0 / std::sqrt(5.0 + kEps)));

  // Commit the path 0 -> 2 for both heads: the state after row 2's path.
  std::vector<float> committed = c.state;
  const TensorView cv = make_view(committed.data(), DType::kFloat32, {1, Hv, Dk, Dv});
  std::vector<int32_t> path = {0, 2};
  std::vector<int32_t> accepted = {1};
  const TensorView pv = make_view(path.data(), DType::kInt32, {1, 2});
  const TensorView acv = make_view(accepted.data(), DType::kInt32, {1});
  CHECK_OK(gdn_commit(cv, khv, dv, gcv, pv, acv, nullptr, nullptr));
  for (int64_t h = 0; h < Hv; ++h) {
    double S[Dk], o = 0, d = 0, G = 0;
    c.run(2, h, S, &o, &d, &G);
    for (int64_t a = 0; a < Dk; ++a) CHECK(near(committed[h * Dk + a], S[a]));
  }

  // Bad values leave the state unchanged; bad shapes and dtypes are named.
  std::vector<float> before = committed;
  path = {0, 3};
  CHECK_STATUS(gdn_commit(cv, khv, dv, gcv, pv, acv, nullptr, nullptr), kInvalidValue, "path: ");
  path = {0, 0};
  CHECK_STATUS(gdn_commit(cv, khv, dv, gcv, pv, acv, nullptr, nullptr), kInvalidValue, "path: ");
  path = {0, 2};
  accepted = {2};
  CHECK_STATUS(gdn_commit(cv, khv, dv, gcv, pv, acv, nullptr, nullptr), kInvalidValue,
               "accepted: ");
  CHECK(committed == before);
  CHECK_STATUS(check_gdn_verify(qv, kv, make_view(c.v.data(), DType::kFloat32, {1, N, 0, 1}), gv,
                                bv, sv, &av),
               kInvalidValue, "v: expected H_v a positive multiple of H_k");
  CHECK_STATUS(check_gdn_verify(qv, kv, vv, make_view(c.g.data(), DType::kFloat16, {1, N, Hv}),
                                bv, sv, &av),
               kInvalidType, "g: ");
  const TensorView wide_anc = make_view(c.anc.data(), DType::kInt32, {1, N, 2});
  CHECK_STATUS(check_gdn_verify(qv, kv, vv, gv, bv, sv, &wide_anc), kInvalidValue, "tree_anc: ");
  CHECK_STATUS(gdn_verify(qv, kv, vv, gv, bv, sv, &av, ov, khv, dv,
                          make_view(gcum.data(), DType::kFloat32, {1, N, 1}), nullptr),
               kInvalidValue, "gcum: ");
  CHECK_STATUS(check_gdn_commit(cv, khv, dv, gcv, make_view(path.data(), DType::kInt32, {1, 0}),
                                acv, nullptr),
               kInvalidValue, "path: ");
}

}  // namespace

int main() {
  test_conv();
  test_conv_commit();
  test_verify_and_commit();
  return dt_test::report("gated_delta");
}
