// topk_logprobs on the device: one CTA per row of [B*L, V].
//   1. max over the row and NaN/+inf detection (flagged in row_error, never reported by a sync);
//   2. Σ exp((double)x - m) in f64 (CUDA's correctly-rounded-to-1-ulp exp), lse = fp32(m + log);
//   3. exact radix select of the K best keys (ordered(lp) << 32 | ~id: log-prob desc, then lower
//      id), lp = max(fp32(x - lse), -1e4) exactly as the CPU computes it;
//   4. the K winners are gathered in shared memory, bitonic-sorted by key and written out, the
//      log-prob recomputed from x so its bits (even -0.0) equal the CPU's.
// The f64 sum's order differs from the CPU's by ~1e-16 relative, far below one f32 ulp of the
// log-sum-exp (docs/NOTES.md); everything else is exact by construction.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <string>

#include "block_select.cuh"
#include "launchers.h"
#include "sampling_math.h"

namespace difftree::cuda {
namespace {

template <typename T>
__device__ __forceinline__ float load_f32(const T* p, int64_t i);
template <>
__device__ __forceinline__ float load_f32<float>(const float* p, int64_t i) {
  return __ldg(p + i);
}
template <>
__device__ __forceinline__ float load_f32<__half>(const __half* p, int64_t i) {
  return __half2float(p[i]);
}
template <>
__device__ __forceinline__ float load_f32<__nv_bfloat16>(const __nv_bfloat16* p, int64_t i) {
  return __bfloat162float(p[i]);
}

__device__ __forceinline__ float clamp_lp(float x, float lse) {
  const float d = __fsub_rn(x, lse);
  return d < kMinLogprob ? kMinLogprob : d;  // std::max(d, kMin): NaN-free here
}

template <typename T>
__global__ void __launch_bounds__(kRowThreads)
    topk_logprobs_kernel(const T* __restrict__ logits, int64_t V, int k, int sort_size,
                         int32_t* __restrict__ out_token, float* __restrict__ out_lp,
                         int32_t* __restrict__ row_error) {
  __shared__ SelectSmem s;
  __shared__ float s_lse;
  __shared__ int s_slot;
  extern __shared__ unsigned long long sorted[];  // sort_size keys
  const int64_t row = blockIdx.x;
  const T* x = logits + row * V;
  int32_t* tok = out_token + row * static_cast<int64_t>(k);
  float* lp = out_lp + row * static_cast<int64_t>(k);

  // 1. max and bad-value detection.
  float m = -INFINITY;
  bool bad = false;
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
    const float xv = load_f32(x, v);
    bad |= (xv != xv) | (xv == INFINITY);
    m = xv > m ? xv : m;
  }
  // Max via the ordered bits (a u64 block max), plus a bad flag.
  const unsigned long long mk = block_max_u64(
      (static_cast<unsigned long long>(sampling::ordered(m)) << 1) | (bad ? 1 : 0), s);
  const int any_bad = __syncthreads_or(bad);
  uint32_t mo = static_cast<uint32_t>(mk >> 1);
  const float mrow =
      sampling::bits_float((mo & 0x80000000u) ? (mo & 0x7fffffffu) : ~mo);  // invert ordered()
  const int err = any_bad ? 1 : (mrow == -INFINITY ? 2 : 0);
  if (err != 0) {
    for (int i = threadIdx.x; i < k; i += blockDim.x) {
      tok[i] = i;
      lp[i] = kMinLogprob;
    }
    if (row_error != nullptr && threadIdx.x == 0) row_error[row] = err;
    return;
  }

  // 2. the log-sum-exp in f64, rounded to f32 once.
  const double md = mrow;
  double acc = 0.0;
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x)
    acc += exp(static_cast<double>(load_f32(x, v)) - md);
  const double total = block_sum_double(acc, s);
  if (threadIdx.x == 0) s_lse = static_cast<float>(md + log(total));
  __syncthreads();
  const float lse = s_lse;

  // 3. the K best keys.
  auto key = [&](int64_t v) {
    return sampling::rank_key(clamp_lp(load_f32(x, v), lse), static_cast<uint32_t>(v));
  };
  auto all = [](int64_t) { return true; };
  auto no_weight = [](int64_t) { return 0ull; };
  const uint64_t threshold =
      block_radix_select<false>(V, key, all, no_weight, static_cast<uint32_t>(k), 0.0, s);

  // 4. gather, sort, write.
  for (int i = threadIdx.x; i < sort_size; i += blockDim.x) sorted[i] = 0ull;
  if (threadIdx.x == 0) s_slot = 0;
  __syncthreads();
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
    const uint64_t kv = key(v);
    if (kv >= threshold) {
      const int slot = atomicAdd(&s_slot, 1);
      if (slot < k) sorted[slot] = kv;
    }
  }
  __syncthreads();
  // Bitonic sort, descending.
  for (int size = 2; size <= sort_size; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int i = threadIdx.x; i < sort_size / 2; i += blockDim.x) {
        const int lo = 2 * i - (i & (stride - 1));
        const int hi = lo + stride;
        const bool desc = (lo & size) == 0;
        const unsigned long long a = sorted[lo], b = sorted[hi];
        if ((a < b) == desc) {
          sorted[lo] = b;
          sorted[hi] = a;
        }
      }
      __syncthreads();
    }
  }
  for (int i = threadIdx.x; i < k; i += blockDim.x) {
    const uint32_t id = 0xffffffffu - static_cast<uint32_t>(sorted[i]);
    const uint32_t safe = id < V ? id : 0u;  // only a broken invariant could make it >= V
    tok[i] = static_cast<int32_t>(safe);
    lp[i] = clamp_lp(load_f32(x, safe), lse);
  }
  if (row_error != nullptr && threadIdx.x == 0) row_error[row] = 0;
}

template <typename T>
cudaError_t launch(const TensorView& logits, int64_t k, const TensorView& token,
                   const TensorView& logprob, const TensorView* row_error, cudaStream_t stream) {
  const int64_t rows = logits.shape[0] * logits.shape[1];
  const int64_t V = logits.shape[2];
  int sort_size = 1;
  while (sort_size < k) sort_size <<= 1;
  const size_t smem = sizeof(unsigned long long) * sort_size;
  auto kernel = topk_logprobs_kernel<T>;
  if (smem > 48 * 1024) {
    const cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                               static_cast<int>(smem));
    if (e != cudaSuccess) return e;
  }
  kernel<<<static_cast<unsigned>(rows), kRowThreads, smem, stream>>>(
      logits.ptr<const T>(), V, static_cast<int>(k), sort_size, token.ptr<int32_t>(),
      logprob.ptr<float>(), row_error ? row_error->ptr<int32_t>() : nullptr);
  return cudaGetLastError();
}

}  // namespace

Status topk_logprobs(const TensorView& logits, int64_t k, const TensorView& token,
                     const TensorView& logprob, const TensorView* row_error, Stream stream) {
  const int64_t rows = logits.shape[0] * logits.shape[1];
  if (rows == 0) return Status::Ok();
  if (rows > INT32_MAX) return InvalidValue("logits: expected B * L < 2^31 rows");
  auto s = static_cast<cudaStream_t>(stream);
  cudaError_t err;
  switch (logits.dtype) {
    case DType::kFloat32:
      err = launch<float>(logits, k, token, logprob, row_error, s);
      break;
    case DType::kFloat16:
      err = launch<__half>(logits, k, token, logprob, row_error, s);
      break;
    case DType::kBFloat16:
      err = launch<__nv_bfloat16>(logits, k, token, logprob, row_error, s);
      break;
    default:
      return Internal("topk_logprobs: dtype passed validation but has no CUDA path");
  }
  if (err != cudaSuccess) return Internal(std::string("topk_logprobs: ") + cudaGetErrorString(err));
  return Status::Ok();
}

}  // namespace difftree::cuda
