// node_select on the device: one CTA per (request, node) row. The procedure is the one of
// sampling_math.h, evaluated with sets and integer sums so it matches the CPU bit for bit:
//   greedy: block max of rank_key(x, id);
//   sampled: z = x / T; top-k = radix select of the top_k-th value (its ties kept); top-p =
//   weighted radix select of the first key whose cumulative integer mass reaches top_p * Q;
//   then the Gumbel-max over the kept keys (Philox uniforms, one Philox block per 4
//   consecutive tokens).
// Per-request parameters are read from device memory (graph-replayable).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <string>

#include "block_select.cuh"
#include "index.cuh"
#include "launchers.h"
#include "sampling_math.h"

namespace difftree::cuda {
namespace {

namespace sm = difftree::sampling;

struct NodeParams {
  const void* logits;
  int64_t N, V;
  const float* temperature;
  const void* top_k;
  bool top_k64;
  const float* top_p;
  const void* seed;
  bool seed64;
  const void* round;
  bool round64;
  int32_t* out;
};

template <typename T>
__device__ __forceinline__ float ld(const T* p, int64_t i);
template <>
__device__ __forceinline__ float ld<float>(const float* p, int64_t i) {
  return __ldg(p + i);
}
template <>
__device__ __forceinline__ float ld<__half>(const __half* p, int64_t i) {
  return __half2float(p[i]);
}
template <>
__device__ __forceinline__ float ld<__nv_bfloat16>(const __nv_bfloat16* p, int64_t i) {
  return __bfloat162float(p[i]);
}

template <typename T>
__global__ void __launch_bounds__(kRowThreads) node_select_kernel(NodeParams p) {
  __shared__ SelectSmem s;
  const int64_t row = blockIdx.x;
  const int64_t b = row / p.N;
  const uint32_t node = static_cast<uint32_t>(row % p.N);
  const int64_t V = p.V;
  const T* x = static_cast<const T*>(p.logits) + row * V;
  const float temp = p.temperature ? p.temperature[b] : 0.0f;

  if (!(temp > 0.0f)) {
    unsigned long long best = 0;
    for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
      const unsigned long long k = sm::rank_key(ld(x, v), static_cast<uint32_t>(v));
      best = k > best ? k : best;
    }
    best = block_max_u64(best, s);
    if (threadIdx.x == 0)
      p.out[row] = static_cast<int32_t>(0xffffffffu - static_cast<uint32_t>(best));
    return;
  }

  const int64_t top_k = p.top_k ? load_index(p.top_k, p.top_k64, b) : 0;
  const float top_p = p.top_p ? p.top_p[b] : 1.0f;
  const uint64_t seed = p.seed ? static_cast<uint64_t>(load_index(p.seed, p.seed64, b)) : 0;
  const uint64_t round = p.round ? static_cast<uint64_t>(load_index(p.round, p.round64, b)) : 0;
  auto zval = [&](int64_t v) { return sm::fdiv(ld(x, v), temp); };
  auto key = [&](int64_t v) { return sm::rank_key(zval(v), static_cast<uint32_t>(v)); };
  auto all = [](int64_t) { return true; };
  auto none = [](int64_t) { return 0ull; };

  unsigned long long mk = 0;
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
    const unsigned long long k = key(v);
    mk = k > mk ? k : mk;
  }
  mk = block_max_u64(mk, s);
  const float m = sm::unordered(static_cast<uint32_t>(mk >> 32));

  uint64_t threshold = 0;
  // Top-k keeps every value tied with the k-th: only the value half of the key (its top 32
  // bits) needs resolving, and {key >= value << 32} is that set. When the select stops early
  // (the boundary bin taken whole, shift >= 32) its threshold has no id bits and the selected
  // bin already holds all the ties, so value_floor changes nothing.
  if (top_k > 0 && top_k < V)
    threshold = sm::value_floor(
        block_radix_select<false>(V, key, all, none, static_cast<uint32_t>(top_k), 0.0, s, 32));
  if (top_p < 1.0f) {
    const uint64_t t0 = threshold;
    auto kept = [&](int64_t v) { return key(v) >= t0; };
    auto mass = [&](int64_t v) { return static_cast<unsigned long long>(sm::mass_q(zval(v), m)); };
    unsigned long long q = 0;
    for (int64_t v = threadIdx.x; v < V; v += blockDim.x)
      if (kept(v)) q += mass(v);
    const unsigned long long Q = block_sum_u64(q, s);
    const double thr = static_cast<double>(top_p) * static_cast<double>(Q);
    // top_p <= 0 keeps the best token alone (the CPU op: the first cumulative mass >= 0); the
    // weighted select needs a positive target mass.
    threshold = thr > 0.0 ? block_radix_select<true>(V, key, kept, mass, 0u, thr, s) : mk;
  }

  const sm::RngKey rk = sm::make_key(seed, round, node);
  unsigned long long best = 0;
  for (int64_t blk = threadIdx.x; blk * 4 < V; blk += blockDim.x) {
    const sm::U32x4 bits = sm::philox_block(rk, static_cast<uint32_t>(blk));
    for (int l = 0; l < 4; ++l) {
      const int64_t v = blk * 4 + l;
      if (v >= V) break;
      const float z = zval(v);
      if (sm::rank_key(z, static_cast<uint32_t>(v)) < threshold) continue;
      const float sc = sm::fadd(z, sm::gumbel_from_bits(bits.v[l]));
      const unsigned long long k = sm::rank_key(sc, static_cast<uint32_t>(v));
      best = k > best ? k : best;
    }
  }
  best = block_max_u64(best, s);
  if (threadIdx.x == 0)
    p.out[row] = static_cast<int32_t>(0xffffffffu - static_cast<uint32_t>(best));
}

}  // namespace

Status node_select(const TensorView& logits, const SamplingViews& params, const TensorView& out,
                   Stream stream) {
  const int64_t rows = logits.shape[0] * logits.shape[1];
  if (rows == 0) return Status::Ok();
  if (rows > INT32_MAX) return InvalidValue("logits: expected B * N < 2^31 rows");
  NodeParams p{};
  p.logits = logits.data;
  p.N = logits.shape[1];
  p.V = logits.shape[2];
  p.temperature = params.temperature ? params.temperature->ptr<const float>() : nullptr;
  p.top_k = params.top_k ? params.top_k->data : nullptr;
  p.top_k64 = params.top_k && params.top_k->dtype == DType::kInt64;
  p.top_p = params.top_p ? params.top_p->ptr<const float>() : nullptr;
  p.seed = params.seed ? params.seed->data : nullptr;
  p.seed64 = params.seed && params.seed->dtype == DType::kInt64;
  p.round = params.round_idx ? params.round_idx->data : nullptr;
  p.round64 = params.round_idx && params.round_idx->dtype == DType::kInt64;
  p.out = out.ptr<int32_t>();
  auto s = static_cast<cudaStream_t>(stream);
  const unsigned grid = static_cast<unsigned>(rows);
  switch (logits.dtype) {
    case DType::kFloat32:
      node_select_kernel<float><<<grid, kRowThreads, 0, s>>>(p);
      break;
    case DType::kFloat16:
      node_select_kernel<__half><<<grid, kRowThreads, 0, s>>>(p);
      break;
    case DType::kBFloat16:
      node_select_kernel<__nv_bfloat16><<<grid, kRowThreads, 0, s>>>(p);
      break;
    default:
      return Internal("node_select: dtype passed validation but has no CUDA path");
  }
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return Internal(std::string("node_select: ") + cudaGetErrorString(err));
  return Status::Ok();
}

}  // namespace difftree::cuda
