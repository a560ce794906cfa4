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

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }

// Copy n items into shared memory, kUnroll independent loads in flight per thread: the split
// kernels are latency-bound (a few CTAs per SM), and every later pass then reads shared memory
// instead of going back to L2 (the global-memory passes made the split top-K ~65-80 us).
constexpr int kUnroll = 8;
// Largest per-CTA chunk staged in shared memory (the default 48 KiB without an opt-in).
constexpr size_t kStageBytes = 48 * 1024;
template <typename U>
__device__ __forceinline__ void stage_items(const U* __restrict__ g, int64_t n, U* s) {
  const int64_t step = blockDim.x;
  int64_t i = threadIdx.x;
  for (; i + (kUnroll - 1) * step < n; i += kUnroll * step) {
    U r[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) r[u] = g[i + u * step];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) s[i + u * step] = r[u];
  }
  for (; i < n; i += step) s[i] = g[i];
  __syncthreads();
}

__device__ __forceinline__ float clamp_lp(float x, float lse) {
  const float d = __fsub_rn(x, lse);
  return d < kMinLogprob ? kMinLogprob : d;  // std::max(d, kMin): NaN-free here
}

// Block-wide: the max of every thread's `m` (via the ordered bits, a u64 block max) and, in
// *any_bad, whether any thread saw a NaN / +inf. All threads must call it.
__device__ __forceinline__ float block_max_and_bad(float m, bool bad, SelectSmem& s, int* any_bad) {
  const unsigned long long mk = block_max_u64(
      (static_cast<unsigned long long>(sampling::ordered(m)) << 1) | (bad ? 1 : 0), s);
  *any_bad = __syncthreads_or(bad);
  return sampling::unordered(static_cast<uint32_t>(mk >> 1));
}

// A bad row's outputs (err 1: NaN / +inf, 2: all -inf): tokens 0..k-1 at the clamp value, the
// flag in row_error (when given) — the CPU op raises instead, which a kernel cannot.
__device__ __forceinline__ void write_bad_row(int32_t* tok, float* lp, int k, int32_t* row_error,
                                              int64_t row, int err) {
  for (int i = threadIdx.x; i < k; i += blockDim.x) {
    tok[i] = i;
    lp[i] = kMinLogprob;
  }
  if (row_error != nullptr && threadIdx.x == 0) row_error[row] = err;
}

// The output step of both kernels: gather the (at most k) items whose key is >= threshold (key 0
// marks padding, never a real key: its id bits would be 0xffffffff) into `sorted`, bitonic-sort
// the sort_size (a power of two >= k) slots descending, write token ids and clamped log-probs.
template <typename T, typename KeyFn>
__device__ void gather_sort_write(int64_t n, KeyFn key, uint64_t threshold,
                                  unsigned long long* sorted, int sort_size, int k, int* s_slot,
                                  const T* x, int64_t V, float lse, int32_t* tok, float* lp) {
  for (int i = threadIdx.x; i < sort_size; i += blockDim.x) sorted[i] = 0ull;
  if (threadIdx.x == 0) *s_slot = 0;
  __syncthreads();
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const uint64_t kv = key(i);
    if (kv != 0ull && kv >= threshold) {
      const int slot = atomicAdd(s_slot, 1);
      if (slot < k) sorted[slot] = kv;
    }
  }
  __syncthreads();
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
  int any_bad = 0;
  const float mrow = block_max_and_bad(m, bad, s, &any_bad);
  const int err = any_bad ? 1 : (mrow == -INFINITY ? 2 : 0);
  if (err != 0) {
    write_bad_row(tok, lp, k, row_error, row, err);
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
  // Key = value << 32 | ~v: a tied K-th value is resolved in v order (block_select.cuh).
  const uint64_t threshold = block_radix_select_ordered(V, key, all, static_cast<uint32_t>(k), s);

  // 4. gather, sort, write.
  gather_sort_write(V, key, threshold, sorted, sort_size, k, &s_slot, x, V, lse, tok, lp);
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

// ---- split-row path (opt-in, num_splits > 1) ------------------------------------------------
// Row r's V is cut into C chunks of ceil(V / C) (the last ones may be short or empty); three
// launches, each graph-safe (no host sync, no counters to reset):
//   A. grid rows*C: chunk max m_c, bad flag, s_c = Σ_{v in chunk} exp((double)x - m_c) (0 when
//      m_c = -inf or the chunk is bad);
//   B. grid rows*C: the row's lse from the C stats (row_lse, fixed order), then the chunk's exact
//      min(K, chunk length) best keys, same key as the single-CTA kernel, written in id order
//      and padded with key 0;
//   C. grid rows: row_lse again (bit-identical in every CTA), the K best of the C*K keys (key 0
//      = padding is excluded; id-ordered, so a tied K-th value is resolved by one ordered count),
//      bitonic sort, write, row_error — exactly as the one-CTA kernel.
// The chunk top-K cannot be taken in A (before the lse is known): fp32(x - lse) and the -1e4
// clamp merge distinct logits into one log-prob whose tie then goes to the lower id, which a
// selection by logit alone would get wrong.
// lse = fp32(M + log(Σ_c s_c * exp((double)m_c - M))), M = max_c m_c, c ascending: the f64 sum
// differs from the CPU's by a few f64 ulps (per-element exp relative to the chunk max, one extra
// rounding per chunk), ~1e-15 relative — the same class of difference as the one-CTA kernel's.
struct SplitWs {
  unsigned long long* keys;  // [rows, C, K]
  double* sum;               // [rows, C]
  float* max;                // [rows, C]
  int32_t* bad;              // [rows, C]
};

__host__ __device__ inline SplitWs split_ws(void* base, int64_t rows, int64_t C, int64_t K) {
  SplitWs w;
  char* p = static_cast<char*>(base);
  w.keys = reinterpret_cast<unsigned long long*>(p);
  p += sizeof(unsigned long long) * rows * C * K;
  w.sum = reinterpret_cast<double*>(p);
  p += sizeof(double) * rows * C;
  w.max = reinterpret_cast<float*>(p);
  p += sizeof(float) * rows * C;
  w.bad = reinterpret_cast<int32_t*>(p);
  return w;
}

// Thread 0 only: the row's error code (0, 1 NaN/+inf, 2 all -inf) and, when 0, its lse.
__device__ inline int row_lse(const SplitWs& w, int64_t row, int C, float* lse) {
  const int64_t base = row * C;
  float M = -INFINITY;
  int bad = 0;
  for (int c = 0; c < C; ++c) {
    bad |= w.bad[base + c];
    const float mc = w.max[base + c];
    M = mc > M ? mc : M;
  }
  if (bad) return 1;
  if (M == -INFINITY) return 2;
  const double md = M;
  double total = 0.0;
  for (int c = 0; c < C; ++c) {
    const float mc = w.max[base + c];
    if (mc == -INFINITY) continue;
    total += w.sum[base + c] * exp(static_cast<double>(mc) - md);
  }
  *lse = static_cast<float>(md + log(total));
  return 0;
}

template <typename T>
__global__ void __launch_bounds__(kRowThreads)
    topk_split_stats_kernel(const T* __restrict__ logits, int64_t V, int C, int64_t chunk,
                            bool staged, SplitWs w) {
  __shared__ SelectSmem s;
  extern __shared__ __align__(16) unsigned char stage_raw[];  // the chunk when staged
  const int64_t row = blockIdx.x / C;
  const int c = static_cast<int>(blockIdx.x % C);
  const int64_t lo = c * chunk < V ? c * chunk : V;
  const int64_t n = (lo + chunk < V ? lo + chunk : V) - lo;
  const T* src = logits + row * V + lo;
  if (staged) {
    stage_items(src, n, reinterpret_cast<T*>(stage_raw));
    src = reinterpret_cast<const T*>(stage_raw);
  }
  float m = -INFINITY;
  bool bad = false;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const float xv = to_f32(src[i]);
    bad |= (xv != xv) | (xv == INFINITY);
    m = xv > m ? xv : m;
  }
  int any_bad = 0;
  const float mc = block_max_and_bad(m, bad, s, &any_bad);
  double acc = 0.0;
  if (!any_bad && mc != -INFINITY) {
    const double md = mc;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
      acc += exp(static_cast<double>(to_f32(src[i])) - md);
  }
  const double total = block_sum_double(acc, s);  // all threads: it synchronises
  if (threadIdx.x == 0) {
    w.max[blockIdx.x] = any_bad ? 0.0f : mc;
    w.sum[blockIdx.x] = any_bad ? 0.0 : total;
    w.bad[blockIdx.x] = any_bad ? 1 : 0;
  }
}

template <typename T>
__global__ void __launch_bounds__(kRowThreads)
    topk_split_select_kernel(const T* __restrict__ logits, int64_t V, int k, int C, int64_t chunk,
                             bool staged, SplitWs w) {
  __shared__ SelectSmem s;
  extern __shared__ __align__(16) unsigned char stage_raw[];  // the chunk when staged
  __shared__ float s_lse;
  __shared__ int s_err;
  const int64_t row = blockIdx.x / C;
  const int c = static_cast<int>(blockIdx.x % C);
  const int64_t lo = c * chunk < V ? c * chunk : V;
  const int64_t hi = lo + chunk < V ? lo + chunk : V;
  const int64_t n = hi - lo;
  const T* src = logits + row * V + lo;
  unsigned long long* out = w.keys + static_cast<int64_t>(blockIdx.x) * k;
  if (threadIdx.x == 0) {
    float lse = 0.0f;
    s_err = row_lse(w, row, C, &lse);
    s_lse = lse;
  }
  __syncthreads();
  if (s_err != 0) return;  // the merge kernel writes the bad row's outputs
  const float lse = s_lse;
  const int take = n < k ? static_cast<int>(n) : k;
  if (take > 0) {
    if (staged) {
      stage_items(src, n, reinterpret_cast<T*>(stage_raw));
      src = reinterpret_cast<const T*>(stage_raw);
    }
    auto key = [&](int64_t v) {
      return sampling::rank_key(clamp_lp(to_f32(src[v]), lse), static_cast<uint32_t>(lo + v));
    };
    auto all = [](int64_t) { return true; };
    // Key = value << 32 | ~(lo + v): a tied boundary value is resolved in v order.
    const uint64_t threshold =
        block_radix_select_ordered(n, key, all, static_cast<uint32_t>(take), s);
    // In v (= id) order, so the merge's candidates are id-ordered too (its ordered select).
    block_write_selected_in_order(n, key, all, threshold, out, s);
  }
  for (int i = take + threadIdx.x; i < k; i += blockDim.x) out[i] = 0ull;  // padding
}

template <typename T>
__global__ void __launch_bounds__(kRowThreads)
    topk_split_merge_kernel(const T* __restrict__ logits, int64_t V, int k, int C, int sort_size,
                            bool staged, SplitWs w, int32_t* __restrict__ out_token,
                            float* __restrict__ out_lp, int32_t* __restrict__ row_error) {
  __shared__ SelectSmem s;
  __shared__ float s_lse;
  __shared__ int s_err;
  __shared__ int s_slot;
  extern __shared__ unsigned long long sorted[];  // sort_size keys, then the staged candidates
  const int64_t row = blockIdx.x;
  const T* x = logits + row * V;
  int32_t* tok = out_token + row * static_cast<int64_t>(k);
  float* lp = out_lp + row * static_cast<int64_t>(k);
  const unsigned long long* cand = w.keys + row * C * static_cast<int64_t>(k);
  if (threadIdx.x == 0) {
    float lse = 0.0f;
    s_err = row_lse(w, row, C, &lse);
    s_lse = lse;
  }
  __syncthreads();
  const int err = s_err;
  if (err != 0) {
    write_bad_row(tok, lp, k, row_error, row, err);
    return;
  }
  const float lse = s_lse;

  // The K best of the C*K candidate keys (unique; 0 = padding, below every real key).
  const int64_t n = static_cast<int64_t>(C) * k;
  if (staged) {
    stage_items(cand, n, sorted + sort_size);
    cand = sorted + sort_size;
  }
  auto key = [&](int64_t i) { return static_cast<uint64_t>(cand[i]); };
  auto real = [&](int64_t i) { return cand[i] != 0ull; };
  // Chunks in id order, each chunk's keys in id order: the ordered select applies.
  const uint64_t threshold = block_radix_select_ordered(n, key, real, static_cast<uint32_t>(k), s);

  gather_sort_write(n, key, threshold, sorted, sort_size, k, &s_slot, x, V, lse, tok, lp);
  if (row_error != nullptr && threadIdx.x == 0) row_error[row] = 0;
}

template <typename T>
cudaError_t launch_split(const TensorView& logits, int64_t k, int C, const TensorView& token,
                         const TensorView& logprob, const TensorView* row_error, void* workspace,
                         cudaStream_t stream) {
  const int64_t rows = logits.shape[0] * logits.shape[1];
  const int64_t V = logits.shape[2];
  const int64_t chunk = (V + C - 1) / C;
  int sort_size = 1;
  while (sort_size < k) sort_size <<= 1;
  const size_t sort_bytes = sizeof(unsigned long long) * sort_size;
  const size_t cand_bytes = sizeof(unsigned long long) * static_cast<size_t>(C) * k;
  const bool stage_cand = sort_bytes + cand_bytes <= kStageBytes;
  const size_t merge_smem = stage_cand ? sort_bytes + cand_bytes : sort_bytes;
  auto merge = topk_split_merge_kernel<T>;
  if (merge_smem > 48 * 1024) {
    const cudaError_t e = cudaFuncSetAttribute(merge, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                               static_cast<int>(merge_smem));
    if (e != cudaSuccess) return e;
  }
  const size_t chunk_bytes = sizeof(T) * static_cast<size_t>(chunk);
  const bool stage_chunk = chunk_bytes <= kStageBytes;
  const size_t chunk_smem = stage_chunk ? chunk_bytes : 0;
  const SplitWs w = split_ws(workspace, rows, C, k);
  const auto grid = static_cast<unsigned>(rows * C);
  topk_split_stats_kernel<T><<<grid, kRowThreads, chunk_smem, stream>>>(logits.ptr<const T>(), V, C,
                                                                        chunk, stage_chunk, w);
  topk_split_select_kernel<T><<<grid, kRowThreads, chunk_smem, stream>>>(
      logits.ptr<const T>(), V, static_cast<int>(k), C, chunk, stage_chunk, w);
  merge<<<static_cast<unsigned>(rows), kRowThreads, merge_smem, stream>>>(
      logits.ptr<const T>(), V, static_cast<int>(k), C, sort_size, stage_cand, w,
      token.ptr<int32_t>(), logprob.ptr<float>(), row_error ? row_error->ptr<int32_t>() : nullptr);
  return cudaGetLastError();
}

}  // namespace

Status topk_logprobs(const TensorView& logits, int64_t k, const TensorView& token,
                     const TensorView& logprob, const TensorView* row_error, int num_splits,
                     void* workspace, Stream stream) {
  const int64_t rows = logits.shape[0] * logits.shape[1];
  if (rows == 0) return Status::Ok();
  if (rows > INT32_MAX) return InvalidValue("logits: expected B * L < 2^31 rows");
  const int C = num_splits < 1 ? 1 : num_splits;
  if (C > 1 && rows * C > INT32_MAX)
    return InvalidValue("topk_logprobs: expected B * L * num_splits < 2^31");
  if (C > 1 && workspace == nullptr)
    return Internal("topk_logprobs: the split path needs a workspace");
  auto s = static_cast<cudaStream_t>(stream);
  cudaError_t err;
  switch (logits.dtype) {
    case DType::kFloat32:
      err = C > 1 ? launch_split<float>(logits, k, C, token, logprob, row_error, workspace, s)
                  : launch<float>(logits, k, token, logprob, row_error, s);
      break;
    case DType::kFloat16:
      err = C > 1 ? launch_split<__half>(logits, k, C, token, logprob, row_error, workspace, s)
                  : launch<__half>(logits, k, token, logprob, row_error, s);
      break;
    case DType::kBFloat16:
      err = C > 1
                ? launch_split<__nv_bfloat16>(logits, k, C, token, logprob, row_error, workspace, s)
                : launch<__nv_bfloat16>(logits, k, token, logprob, row_error, s);
      break;
    default:
      return Internal("topk_logprobs: dtype passed validation but has no CUDA path");
  }
  if (err != cudaSuccess) return Internal(std::string("topk_logprobs: ") + cudaGetErrorString(err));
  return Status::Ok();
}

Status topk_logprobs(const TensorView& logits, int64_t k, const TensorView& token,
                     const TensorView& logprob, const TensorView* row_error, Stream stream) {
  return topk_logprobs(logits, k, token, logprob, row_error, 1, nullptr, stream);
}

}  // namespace difftree::cuda
