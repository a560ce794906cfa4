// node_select on the CPU: greedy argmax or the keyed Gumbel-max draw of cuda/sampling_math.h,
// one node row at a time. Defined by sets and integer sums (never by a reduction order), so the
// CUDA kernel reproduces it bit for bit.
#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>
#include <vector>

#include "cpu/half.h"
#include "cpu/parallel.h"
#include "difftree/ops.h"
#include "dispatch/checks.h"
#include "sampling_math.h"

namespace difftree::cpu {
namespace {

namespace sm = difftree::sampling;

struct RowParams {
  float temperature;
  int64_t top_k;
  float top_p;
  uint64_t seed, round;
};

RowParams row_params(const SamplingViews& p, int64_t b) {
  RowParams r{0.0f, 0, 1.0f, 0, 0};
  if (p.temperature) r.temperature = p.temperature->ptr<const float>()[b];
  if (p.top_k) r.top_k = checks::load_index(*p.top_k, b);
  if (p.top_p) r.top_p = p.top_p->ptr<const float>()[b];
  if (p.seed) r.seed = static_cast<uint64_t>(checks::load_index(*p.seed, b));
  if (p.round_idx) r.round = static_cast<uint64_t>(checks::load_index(*p.round_idx, b));
  return r;
}

// One row: x holds the fp32 logits. Returns the chosen token id.
int32_t select_row(const std::vector<float>& x, const RowParams& rp, uint32_t node,
                   std::vector<uint64_t>& keys, std::vector<float>& z) {
  const int64_t V = static_cast<int64_t>(x.size());
  if (!(rp.temperature > 0.0f)) {  // greedy: argmax, ties to the lowest id
    uint64_t best = 0;
    int32_t arg = 0;
    for (int64_t v = 0; v < V; ++v) {
      const uint64_t k = sm::rank_key(x[v], static_cast<uint32_t>(v));
      if (k > best) best = k, arg = static_cast<int32_t>(v);
    }
    return arg;
  }
  z.resize(V);
  keys.resize(V);
  for (int64_t v = 0; v < V; ++v) {
    z[v] = sm::fdiv(x[v], rp.temperature);
    keys[v] = sm::rank_key(z[v], static_cast<uint32_t>(v));
  }
  // The kept set is always {key >= threshold}: the best keys in (z desc, id asc) order. Top-k
  // keeps every value tied with the k-th (value_floor), so `kept` may exceed top_k.
  uint64_t threshold = 0;
  int64_t kept = V;
  const bool use_top_k = rp.top_k > 0 && rp.top_k < V;
  const bool use_top_p = rp.top_p < 1.0f;
  std::vector<uint64_t> order;
  if (use_top_p) {
    order = keys;
    std::sort(order.begin(), order.end(), std::greater<uint64_t>());
    if (use_top_k) {
      threshold = sm::value_floor(order[rp.top_k - 1]);
      kept = rp.top_k;
      while (kept < V && order[kept] >= threshold) ++kept;
    }
    order.resize(kept);
  } else if (use_top_k) {
    order = keys;
    std::nth_element(order.begin(), order.begin() + (rp.top_k - 1), order.end(),
                     std::greater<uint64_t>());
    threshold = sm::value_floor(order[rp.top_k - 1]);
  }
  if (use_top_p) {
    const uint32_t best_id = 0xffffffffu - static_cast<uint32_t>(order[0]);
    const float m = z[best_id];
    uint64_t Q = 0;
    std::vector<uint64_t> q(kept);
    for (int64_t r = 0; r < kept; ++r) {
      const uint32_t id = 0xffffffffu - static_cast<uint32_t>(order[r]);
      q[r] = sm::mass_q(z[id], m);
      Q += q[r];
    }
    const double thr = static_cast<double>(rp.top_p) * static_cast<double>(Q);
    // Last kept: the first token whose inclusive cumulative mass reaches thr.
    uint64_t cum = 0;
    int64_t last = kept - 1;
    for (int64_t r = 0; r < kept; ++r) {
      cum += q[r];
      if (static_cast<double>(cum) >= thr) {
        last = r;
        break;
      }
    }
    threshold = order[last];
  }
  // Gumbel-max over the kept tokens.
  const sm::RngKey key = sm::make_key(rp.seed, rp.round, node);
  uint64_t best = 0;
  int32_t arg = 0;
  sm::U32x4 block{};
  int64_t block_id = -1;
  for (int64_t v = 0; v < V; ++v) {
    if (keys[v] < threshold) continue;
    if ((v >> 2) != block_id) {
      block_id = v >> 2;
      block = sm::philox_block(key, static_cast<uint32_t>(block_id));
    }
    const float s = sm::fadd(z[v], sm::gumbel_from_bits(block.v[v & 3]));
    const uint64_t k = sm::rank_key(s, static_cast<uint32_t>(v));
    if (k > best) best = k, arg = static_cast<int32_t>(v);
  }
  return arg;
}

// Logit v of row r as fp32.
float load_logit(const TensorView& logits, int64_t i) {
  switch (logits.dtype) {
    case DType::kFloat32:
      return logits.ptr<const float>()[i];
    case DType::kBFloat16:
      return bf16_to_float(logits.ptr<const uint16_t>()[i]);
    default:
      return fp16_to_float(logits.ptr<const uint16_t>()[i]);
  }
}

Status bad_logit(float x, int64_t r, int64_t N, int64_t v) {
  std::ostringstream os;
  os << "logits: expected finite values or -inf, found " << (std::isnan(x) ? "NaN" : "+inf")
     << " at [" << r / N << ", " << r % N << ", " << v << "]";
  return InvalidValue(os.str());
}

bool is_bad(float x) { return std::isnan(x) || x == std::numeric_limits<float>::infinity(); }

// Greedy rows read the logits in place (no fp32 copy), one dtype-specialised pass: the first
// maximum (ties to the lowest id; -0 ties +0, as in the rank keys), the first NaN / +inf an
// error. Plain float comparisons: the same argmax select_row's keys give.
template <typename Load>
Status greedy_row(Load load, int64_t r, int64_t N, int64_t V, int32_t& arg) {
  float best = -std::numeric_limits<float>::infinity();
  int64_t at = 0;
  for (int64_t v = 0; v < V; ++v) {
    const float x = load(v);
    if (x > best) {
      if (x == std::numeric_limits<float>::infinity()) return bad_logit(x, r, N, v);
      best = x, at = v;
    } else if (x != x) {
      return bad_logit(x, r, N, v);
    }
  }
  arg = static_cast<int32_t>(at);
  return Status::Ok();
}

Status greedy_row(const TensorView& logits, int64_t r, int64_t N, int64_t V, int32_t& arg) {
  switch (logits.dtype) {
    case DType::kFloat32: {
      const float* p = logits.ptr<const float>() + r * V;
      return greedy_row([p](int64_t v) { return p[v]; }, r, N, V, arg);
    }
    case DType::kBFloat16: {
      const uint16_t* p = logits.ptr<const uint16_t>() + r * V;
      return greedy_row([p](int64_t v) { return bf16_to_float(p[v]); }, r, N, V, arg);
    }
    default: {
      const uint16_t* p = logits.ptr<const uint16_t>() + r * V;
      return greedy_row([p](int64_t v) { return fp16_to_float(p[v]); }, r, N, V, arg);
    }
  }
}

}  // namespace

Status node_select(const TensorView& logits, const SamplingViews& params, const TensorView& out) {
  const int64_t B = logits.shape[0], N = logits.shape[1], V = logits.shape[2];
  int32_t* dst = out.ptr<int32_t>();
  std::vector<Status> errors(static_cast<size_t>(B * N));
  parallel_rows(B * N, B * N * V * 4, [&](int64_t begin, int64_t end) {
    std::vector<float> x, z;
    std::vector<uint64_t> keys;
    for (int64_t r = begin; r < end; ++r) {
      const RowParams rp = row_params(params, r / N);
      if (!(rp.temperature > 0.0f)) {
        errors[r] = greedy_row(logits, r, N, V, dst[r]);
        if (!errors[r].ok()) return;
        continue;
      }
      x.resize(V);
      for (int64_t v = 0; v < V; ++v) {
        x[v] = load_logit(logits, r * V + v);
        if (is_bad(x[v])) {
          errors[r] = bad_logit(x[v], r, N, v);
          return;
        }
      }
      dst[r] = select_row(x, rp, static_cast<uint32_t>(r % N), keys, z);
    }
  });
  for (const Status& s : errors) DIFFTREE_RETURN_IF_ERROR(s);
  return Status::Ok();
}

}  // namespace difftree::cpu
