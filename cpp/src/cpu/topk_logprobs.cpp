// Per-row top-K of the fp32 log-softmax.
//
// Exactness across implementations: the log-sum-exp is accumulated in f64 (so summation order
// changes it by ~1e-16 relative, far below one f32 ulp) and rounded to f32 once; each log-prob is
// then the single f32 operation fp32(logit - lse), which every implementation rounds identically.
#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>
#include <vector>

#include "cpu/cpu_ops.h"
#include "cpu/exp_sum.h"
#include "cpu/half.h"
#include "cpu/parallel.h"

namespace difftree::cpu {
namespace {

struct Entry {
  float lp;
  int32_t id;
};

// "a ranks before b": higher log-prob, then lower token id.
inline bool ranks_before(const Entry& a, const Entry& b) {
  return a.lp > b.lp || (a.lp == b.lp && a.id < b.id);
}

template <typename LoadFn>
Status topk_row(LoadFn load, int64_t V, int64_t k, int64_t row, std::vector<float>& x,
                std::vector<Entry>& heap, int32_t* out_token, float* out_lp) {
  // Pass 1: convert, find the max, and flag NaN/+inf without a branch per element.
  x.resize(V);
  float m = -std::numeric_limits<float>::infinity();
  bool bad = false;
  for (int64_t v = 0; v < V; ++v) {
    const float xv = load(v);
    bad |= (xv != xv) | (xv == std::numeric_limits<float>::infinity());
    x[v] = xv;
    m = xv > m ? xv : m;
  }
  if (bad) {
    for (int64_t v = 0; v < V; ++v) {
      if (std::isnan(x[v]) || x[v] == std::numeric_limits<float>::infinity()) {
        std::ostringstream os;
        os << "logits: expected finite values or -inf, found "
           << (std::isnan(x[v]) ? "NaN" : "+inf") << " at flat row " << row << ", token " << v;
        return InvalidValue(os.str());
      }
    }
  }
  if (m == -std::numeric_limits<float>::infinity()) {
    std::ostringstream os;
    os << "logits: every entry of flat row " << row << " is -inf; a distribution needs at least "
       << "one finite logit";
    return InvalidValue(os.str());
  }
  // Pass 2: the log-sum-exp in f64, rounded to f32 once.
  const double md = m;
  const float lse = static_cast<float>(md + std::log(sum_exp_shifted(x.data(), V, md)));

  // Pass 3: bounded min-heap of the K best (its front is the worst kept). Tokens arrive in
  // increasing id, so an equal log-prob never displaces a kept entry: ties go to the lower id.
  // lp is non-decreasing in x, so x <= the worst kept x can never enter: skip it cheaply.
  heap.clear();
  auto worse_on_top = [](const Entry& a, const Entry& b) { return ranks_before(a, b); };
  float worst_x = -std::numeric_limits<float>::infinity();
  for (int64_t v = 0; v < V; ++v) {
    const float xv = x[v];
    if (static_cast<int64_t>(heap.size()) == k && xv <= worst_x) continue;
    const float lp = std::max(xv - lse, kMinLogprob);
    if (static_cast<int64_t>(heap.size()) < k) {
      heap.push_back({lp, static_cast<int32_t>(v)});
      std::push_heap(heap.begin(), heap.end(), worse_on_top);
    } else if (lp > heap.front().lp) {
      std::pop_heap(heap.begin(), heap.end(), worse_on_top);
      heap.back() = {lp, static_cast<int32_t>(v)};
      std::push_heap(heap.begin(), heap.end(), worse_on_top);
    } else {
      continue;
    }
    if (static_cast<int64_t>(heap.size()) == k) worst_x = x[heap.front().id];
  }
  std::sort(heap.begin(), heap.end(), ranks_before);
  for (int64_t i = 0; i < k; ++i) {
    out_token[i] = heap[i].id;
    out_lp[i] = heap[i].lp;
  }
  return Status::Ok();
}

}  // namespace

Status topk_logprobs(const TensorView& logits, int64_t k, const TensorView& token,
                     const TensorView& logprob) {
  const int64_t rows = logits.shape[0] * logits.shape[1];
  const int64_t V = logits.shape[2];
  int32_t* tok = token.ptr<int32_t>();
  float* lp = logprob.ptr<float>();
  // Rows are independent; each chunk keeps its own scratch and reports its first error.
  std::vector<Status> errors(static_cast<size_t>(rows));
  parallel_rows(rows, rows * V, [&](int64_t begin, int64_t end) {
    std::vector<float> x;
    std::vector<Entry> heap;
    heap.reserve(k);
    for (int64_t r = begin; r < end; ++r) {
      Status s;
      switch (logits.dtype) {
        case DType::kFloat32: {
          const float* p = logits.ptr<const float>() + r * V;
          s = topk_row([p](int64_t v) { return p[v]; }, V, k, r, x, heap, tok + r * k,
                       lp + r * k);
          break;
        }
        case DType::kBFloat16: {
          const uint16_t* p = logits.ptr<const uint16_t>() + r * V;
          s = topk_row([p](int64_t v) { return bf16_to_float(p[v]); }, V, k, r, x, heap,
                       tok + r * k, lp + r * k);
          break;
        }
        case DType::kFloat16: {
          const uint16_t* p = logits.ptr<const uint16_t>() + r * V;
          s = topk_row([p](int64_t v) { return fp16_to_float(p[v]); }, V, k, r, x, heap,
                       tok + r * k, lp + r * k);
          break;
        }
        default:
          s = Internal("topk_logprobs: dtype passed validation but has no CPU path");
      }
      if (!s.ok()) {
        errors[r] = s;
        return;
      }
    }
  });
  for (const Status& s : errors) DIFFTREE_RETURN_IF_ERROR(s);
  return Status::Ok();
}

}  // namespace difftree::cpu
