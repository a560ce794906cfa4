// topk_logprobs through the public API: hand-checked rows, an exact f64 oracle on random rows,
// f16 / bf16 inputs from hand-built bit patterns, and argument validation.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "check.h"
#include "difftree/difftree.hpp"

using namespace difftree;

namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

struct Result {
  std::vector<int32_t> token;
  std::vector<float> logprob;
  Status status;
};

// Runs the op on [B, L, V] logits of any dtype (data given as raw bytes of that dtype).
Result run(void* data, DType dtype, int64_t B, int64_t L, int64_t V, int64_t k) {
  Result r;
  r.token.assign(B * L * k, -7);
  r.logprob.assign(B * L * k, 777.0f);
  const TensorView logits = make_view(data, dtype, {B, L, V});
  r.status = topk_logprobs(logits, k, make_view(r.token.data(), DType::kInt32, {B, L, k}),
                           make_view(r.logprob.data(), DType::kFloat32, {B, L, k}), nullptr);
  return r;
}

Result run_f32(std::vector<float> x, int64_t B, int64_t L, int64_t V, int64_t k) {
  return run(x.data(), DType::kFloat32, B, L, V, k);
}

// The oracle, written from the contract in ops.h: the row's log-sum-exp accumulated in f64 and
// rounded to f32 once, logprob = fp32(logit - lse), clamped below at -1e4, sorted descending with
// ties to the lower token id.
void oracle_row(const float* x, int64_t V, int64_t k, int32_t* tok, float* lp) {
  double m = -std::numeric_limits<double>::infinity();
  for (int64_t v = 0; v < V; ++v) m = std::max(m, static_cast<double>(x[v]));
  double sum = 0.0;
  for (int64_t v = 0; v < V; ++v) sum += std::exp(static_cast<double>(x[v]) - m);
  const float lse = static_cast<float>(m + std::log(sum));
  std::vector<float> all(V);
  for (int64_t v = 0; v < V; ++v) all[v] = std::max(x[v] - lse, -1e4f);
  std::vector<int32_t> ids(V);
  std::iota(ids.begin(), ids.end(), 0);
  std::stable_sort(ids.begin(), ids.end(),
                   [&](int32_t a, int32_t b) { return all[a] > all[b]; });  // stable: lower id
  for (int64_t i = 0; i < k; ++i) {
    tok[i] = ids[i];
    lp[i] = all[ids[i]];
  }
}

// Compares one op result against the oracle on f32 values `x` (the decoded input).
void expect_matches_oracle(const Result& r, const std::vector<float>& x, int64_t rows, int64_t V,
                           int64_t k) {
  if (!CHECK_OK(r.status)) return;
  std::vector<int32_t> tok(k);
  std::vector<float> lp(k);
  for (int64_t row = 0; row < rows; ++row) {
    oracle_row(x.data() + row * V, V, k, tok.data(), lp.data());
    for (int64_t i = 0; i < k; ++i) {
      dt_test::Context ctx("row " + std::to_string(row) + ", rank " + std::to_string(i));
      CHECK_EQ(r.token[row * k + i], tok[i]);
      CHECK_EQ(r.logprob[row * k + i], lp[i]);  // bit-exact
      // And within f32 rounding of the true (f64) log-softmax.
      const double m = *std::max_element(x.begin() + row * V, x.begin() + (row + 1) * V);
      double s = 0;
      for (int64_t v = 0; v < V; ++v) s += std::exp(static_cast<double>(x[row * V + v]) - m);
      const double lse = m + std::log(s);
      const double exact = std::max(static_cast<double>(x[row * V + tok[i]]) - lse, -1e4);
      // Two f32 roundings (the lse, then the difference).
      CHECK(std::fabs(r.logprob[row * k + i] - exact) <=
            1.2e-7 * (std::fabs(lse) + std::fabs(exact) + 1.0));
    }
  }
}

// ---- half-precision bit patterns, built here independently of the library ---------------------

// bf16 is the top half of an f32: exact for values whose low 16 mantissa bits are zero.
uint16_t bf16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return static_cast<uint16_t>(u >> 16);
}
float bf16_value(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
// IEEE binary16: sign, 5-bit exponent (bias 15), 10-bit mantissa; decoded with ldexp.
float fp16_value(uint16_t h) {
  const int sign = (h & 0x8000) ? -1 : 1;
  const int exp = (h >> 10) & 0x1f;
  const int mant = h & 0x3ff;
  if (exp == 0x1f) return mant ? std::numeric_limits<float>::quiet_NaN() : sign * kInf;
  if (exp == 0) return sign * std::ldexp(static_cast<float>(mant), -24);
  return sign * std::ldexp(static_cast<float>(1024 + mant), exp - 25);
}

void test_hand_checked() {
  dt_test::Context ctx("hand-checked rows");
  {  // uniform row: every entry -log(4), ties in token order
    Result r = run_f32({0, 0, 0, 0}, 1, 1, 4, 4);
    CHECK_OK(r.status);
    const float want = -static_cast<float>(std::log(4.0));
    for (int i = 0; i < 4; ++i) {
      CHECK_EQ(r.token[i], i);
      CHECK_EQ(r.logprob[i], want);
    }
  }
  {  // ties go to the lower id; -inf entries are clamped to -1e4 and come last, in id order
    Result r = run_f32({1, 3, 3, 2, -kInf, -kInf}, 1, 1, 6, 6);
    CHECK_OK(r.status);
    const std::vector<int32_t> want_tok = {1, 2, 3, 0, 4, 5};
    for (int i = 0; i < 6; ++i) CHECK_EQ(r.token[i], want_tok[i]);
    CHECK_EQ(r.logprob[0], r.logprob[1]);
    CHECK(r.logprob[1] > r.logprob[2] && r.logprob[2] > r.logprob[3]);
    CHECK_EQ(r.logprob[4], -1e4f);
    CHECK_EQ(r.logprob[5], -1e4f);
    // lse = log(e + 2 e^3 + e^2); 3 - lse by hand:
    const double lse = std::log(std::exp(1.0) + 2 * std::exp(3.0) + std::exp(2.0));
    CHECK(std::fabs(r.logprob[0] - (3.0 - lse)) < 1e-6);
    CHECK(std::fabs(r.logprob[3] - (1.0 - lse)) < 1e-6);
  }
  {  // one finite entry: it gets log-prob exactly 0, the rest -1e4 in id order
    Result r = run_f32({-kInf, 5, -kInf, -kInf}, 1, 1, 4, 3);
    CHECK_OK(r.status);
    CHECK_EQ(r.token[0], 1);
    CHECK_EQ(r.logprob[0], 0.0f);
    CHECK_EQ(r.token[1], 0);
    CHECK_EQ(r.token[2], 2);
    CHECK_EQ(r.logprob[1], -1e4f);
    CHECK_EQ(r.logprob[2], -1e4f);
  }
  {  // a finite but tiny log-prob is clamped too; huge logits stay stable
    Result r = run_f32({0, -30000, 1000, 1000}, 1, 2, 2, 2);
    CHECK_OK(r.status);
    CHECK_EQ(r.token[0], 0);
    CHECK_EQ(r.logprob[0], 0.0f);
    CHECK_EQ(r.token[1], 1);
    CHECK_EQ(r.logprob[1], -1e4f);
    CHECK_EQ(r.token[2], 0);  // the second row's ids
    CHECK_EQ(r.token[3], 1);
    // fp32(1000 - fp32(1000 + log 2)): -log 2 up to the rounding of the f32 lse near 1000.
    CHECK_EQ(r.logprob[2], r.logprob[3]);
    CHECK(std::fabs(r.logprob[2] + std::log(2.0)) < 1e-4);
    expect_matches_oracle(r, {0, -30000, 1000, 1000}, 2, 2, 2);
  }
  {  // V = 1, k = 1
    Result r = run_f32({-3.5f}, 1, 1, 1, 1);
    CHECK_OK(r.status);
    CHECK_EQ(r.token[0], 0);
    CHECK_EQ(r.logprob[0], 0.0f);
  }
  {  // k < V keeps only the best; batch rows are independent
    std::vector<float> x = {0.5f, 2.0f, -1.0f, 2.0f, 7.0f, 1.0f, 1.0f, -kInf};
    Result r = run_f32(x, 2, 1, 4, 2);
    CHECK_OK(r.status);
    CHECK_EQ(r.token[0], 1);
    CHECK_EQ(r.token[1], 3);
    CHECK_EQ(r.token[2], 0);
    CHECK_EQ(r.token[3], 1);
    expect_matches_oracle(r, x, 2, 4, 2);
  }
}

void test_random_f32() {
  std::mt19937 rng(1234);
  const int64_t vocab_sizes[] = {1, 2, 3, 7, 33, 257, 1000, 5000};
  for (int c = 0; c < 300; ++c) {
    const int64_t B = 1 + rng() % 3, L = 1 + rng() % 4, V = vocab_sizes[rng() % 8];
    const int64_t k = 1 + rng() % std::min<int64_t>(V, 70);
    const int mode = rng() % 4;
    std::normal_distribution<float> normal(0.0f, mode == 3 ? 30.0f : 3.0f);
    std::vector<float> x(B * L * V);
    for (float& v : x) {
      switch (mode) {
        case 0:  // many exact ties
          v = static_cast<float>(static_cast<int>(rng() % 4)) * 0.5f;
          break;
        case 1:  // some -inf
          v = (rng() % 5 == 0) ? -kInf : normal(rng);
          break;
        default:
          v = normal(rng);
      }
    }
    for (int64_t row = 0; row < B * L; ++row) x[row * V + rng() % V] = normal(rng);  // a finite
    dt_test::Context ctx("random f32 case " + std::to_string(c) + " B=" + std::to_string(B) +
                         " L=" + std::to_string(L) + " V=" + std::to_string(V) +
                         " k=" + std::to_string(k));
    expect_matches_oracle(run_f32(x, B, L, V, k), x, B * L, V, k);
  }
}

void test_half_inputs() {
  dt_test::Context ctx("bf16 / fp16 inputs");
  {  // bf16 by hand: 1.0 = 0x3F80, 3.0 = 0x4040, 2.0 = 0x4000, -inf = 0xFF80, 1.5 = 0x3FC0
    std::vector<uint16_t> h = {0x3F80, 0x4040, 0x4000, 0xFF80, 0x4040, 0x3FC0};
    CHECK_EQ(bf16_value(0x3FC0), 1.5f);
    CHECK_EQ(bf16_bits(3.0f), 0x4040);
    std::vector<float> x = {1.0f, 3.0f, 2.0f, -kInf, 3.0f, 1.5f};
    Result r = run(h.data(), DType::kBFloat16, 1, 1, 6, 6);
    const std::vector<int32_t> want = {1, 4, 2, 5, 0, 3};
    for (int i = 0; i < 6 && r.status.ok(); ++i) CHECK_EQ(r.token[i], want[i]);
    expect_matches_oracle(r, x, 1, 6, 6);
  }
  {  // fp16 by hand: 1.0 = 0x3C00, 2.0 = 0x4000, 0.5 = 0x3800, -2.0 = 0xC000, -inf = 0xFC00,
     // smallest subnormal 0x0001 = 2^-24
    std::vector<uint16_t> h = {0x3C00, 0x4000, 0x3800, 0xC000, 0xFC00, 0x0001};
    CHECK_EQ(fp16_value(0x3800), 0.5f);
    CHECK_EQ(fp16_value(0x0001), std::ldexp(1.0f, -24));
    std::vector<float> x(h.size());
    for (size_t i = 0; i < h.size(); ++i) x[i] = fp16_value(h[i]);
    Result r = run(h.data(), DType::kFloat16, 1, 1, 6, 4);
    const std::vector<int32_t> want = {1, 0, 2, 5};
    for (int i = 0; i < 4 && r.status.ok(); ++i) CHECK_EQ(r.token[i], want[i]);
    expect_matches_oracle(r, x, 1, 6, 4);
  }
  std::mt19937 rng(99);
  for (int c = 0; c < 60; ++c) {
    const int64_t B = 1 + rng() % 2, L = 1 + rng() % 3, V = 1 + rng() % 600;
    const int64_t k = 1 + rng() % std::min<int64_t>(V, 40);
    std::vector<uint16_t> hb(B * L * V), hf(B * L * V);
    std::vector<float> xb(hb.size()), xf(hf.size());
    std::normal_distribution<float> normal(0.0f, 4.0f);
    for (size_t i = 0; i < hb.size(); ++i) {
      hb[i] = (rng() % 11 == 0) ? uint16_t{0xFF80} : bf16_bits(normal(rng));  // truncation
      xb[i] = bf16_value(hb[i]);
      uint16_t f;
      do {  // any finite fp16 pattern with |x| < 2^7, or -inf
        f = static_cast<uint16_t>(rng() & 0xFFFF);
      } while (((f >> 10) & 0x1f) > 21);
      if (rng() % 11 == 0) f = 0xFC00;
      hf[i] = f;
      xf[i] = fp16_value(f);
    }
    for (int64_t row = 0; row < B * L; ++row) {  // at least one finite logit per row
      hb[row * V] = 0x3F80;
      xb[row * V] = 1.0f;
      hf[row * V] = 0x3C00;
      xf[row * V] = 1.0f;
    }
    dt_test::Context c1("random half case " + std::to_string(c));
    {
      dt_test::Context c2("bf16");
      expect_matches_oracle(run(hb.data(), DType::kBFloat16, B, L, V, k), xb, B * L, V, k);
    }
    {
      dt_test::Context c2("fp16");
      expect_matches_oracle(run(hf.data(), DType::kFloat16, B, L, V, k), xf, B * L, V, k);
    }
  }
}

void test_invalid_values() {
  dt_test::Context ctx("NaN / +inf / all -inf");
  const float nan = std::numeric_limits<float>::quiet_NaN();
  CHECK_STATUS(run_f32({0, nan, 1}, 1, 1, 3, 1).status, kInvalidValue, "logits");
  CHECK_STATUS(run_f32({0, kInf, 1}, 1, 1, 3, 1).status, kInvalidValue, "logits");
  CHECK_STATUS(run_f32({0, 1, 2, 3, kInf, 5}, 2, 1, 3, 2).status, kInvalidValue, "logits");
  CHECK_STATUS(run_f32({-kInf, -kInf}, 1, 1, 2, 1).status, kInvalidValue, "logits");
  std::vector<uint16_t> bf_nan = {0x3F80, 0x7FC0}, bf_inf = {0x7F80, 0x3F80};
  std::vector<uint16_t> f16_nan = {0x7E00, 0x3C00}, f16_inf = {0x3C00, 0x7C00};
  CHECK_STATUS(run(bf_nan.data(), DType::kBFloat16, 1, 1, 2, 1).status, kInvalidValue, "logits");
  CHECK_STATUS(run(bf_inf.data(), DType::kBFloat16, 1, 1, 2, 1).status, kInvalidValue, "logits");
  CHECK_STATUS(run(f16_nan.data(), DType::kFloat16, 1, 1, 2, 1).status, kInvalidValue, "logits");
  CHECK_STATUS(run(f16_inf.data(), DType::kFloat16, 1, 1, 2, 1).status, kInvalidValue, "logits");
}

void test_validation() {
  dt_test::Context ctx("argument validation");
  std::vector<float> x(2 * 3 * 5, 0.0f);
  std::vector<int32_t> tok(2 * 3 * 6);
  std::vector<int64_t> tok64(2 * 3 * 6);
  std::vector<float> lp(2 * 3 * 6);
  const TensorView logits = make_view(x.data(), DType::kFloat32, {2, 3, 5});
  auto tok_v = [&](int64_t k) { return make_view(tok.data(), DType::kInt32, {2, 3, k}); };
  auto lp_v = [&](int64_t k) { return make_view(lp.data(), DType::kFloat32, {2, 3, k}); };

  CHECK_OK(check_topk_logprobs(logits, 5));
  CHECK_OK(topk_logprobs(logits, 5, tok_v(5), lp_v(5), nullptr));
  for (int64_t k : {int64_t{0}, int64_t{-1}, int64_t{6}, int64_t{1} << 40}) {
    dt_test::Context c("k = " + std::to_string(k));
    CHECK_STATUS(check_topk_logprobs(logits, k), kInvalidValue, "k");
    CHECK_STATUS(topk_logprobs(logits, k, tok_v(2), lp_v(2), nullptr), kInvalidValue, "k");
  }
  std::vector<int32_t> xi(30);
  CHECK_STATUS(check_topk_logprobs(make_view(xi.data(), DType::kInt32, {2, 3, 5}), 1), kInvalidType,
               "logits");
  CHECK_STATUS(check_topk_logprobs(make_view(x.data(), DType::kFloat32, {6, 5}), 1), kInvalidValue,
               "logits");
  CHECK_STATUS(check_topk_logprobs(make_view(x.data(), DType::kFloat32, {2, 3, 0}), 1),
               kInvalidValue, "logits");
  TensorView strided = logits;
  strided.shape[2] = 2;
  strided.strides[1] = 5;
  strided.strides[0] = 15;  // a [2, 3, 2] slice of [2, 3, 5]: not contiguous
  CHECK_STATUS(topk_logprobs(strided, 1, tok_v(1), lp_v(1), nullptr), kInvalidValue, "logits");
  // outputs
  CHECK_STATUS(
      topk_logprobs(logits, 2, make_view(tok64.data(), DType::kInt64, {2, 3, 2}), lp_v(2), nullptr),
      kInvalidType, "token");
  CHECK_STATUS(topk_logprobs(logits, 2, tok_v(3), lp_v(2), nullptr), kInvalidValue, "token");
  CHECK_STATUS(topk_logprobs(logits, 2, tok_v(2), lp_v(3), nullptr), kInvalidValue, "logprob");
  CHECK_STATUS(
      topk_logprobs(logits, 2, tok_v(2), make_view(tok.data(), DType::kInt32, {2, 3, 2}), nullptr),
      kInvalidType, "logprob");
  CHECK_STATUS(
      topk_logprobs(logits, 2, make_view(nullptr, DType::kInt32, {2, 3, 2}), lp_v(2), nullptr),
      kInvalidValue, "token");
  TensorView other_dev = tok_v(2);
  other_dev.device = DeviceType::kCUDA;
  CHECK_STATUS(topk_logprobs(logits, 2, other_dev, lp_v(2), nullptr), kInvalidValue, "token");
  // Empty batch / depth: valid, nothing to do.
  CHECK_OK(topk_logprobs(make_view(nullptr, DType::kFloat32, {0, 3, 5}), 2,
                         make_view(nullptr, DType::kInt32, {0, 3, 2}),
                         make_view(nullptr, DType::kFloat32, {0, 3, 2}), nullptr));
  CHECK_OK(topk_logprobs(make_view(nullptr, DType::kFloat32, {2, 0, 5}), 2,
                         make_view(nullptr, DType::kInt32, {2, 0, 2}),
                         make_view(nullptr, DType::kFloat32, {2, 0, 2}), nullptr));
  if (!build_info().cuda_compiled) {  // CUDA tensors are refused before any data is touched
    TensorView cl = logits, ct = tok_v(2), cp = lp_v(2);
    cl.device = ct.device = cp.device = DeviceType::kCUDA;
    CHECK_STATUS(topk_logprobs(cl, 2, ct, cp, nullptr), kUnsupported, "topk_logprobs");
  }
}

}  // namespace

int main() {
  test_hand_checked();
  test_random_f32();
  test_half_inputs();
  test_invalid_values();
  test_validation();
  return dt_test::report("topk_logprobs");
}
