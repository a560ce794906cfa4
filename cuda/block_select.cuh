// Block-wide helpers for the per-row kernels (topk_logprobs, node_select): reductions and an
// exact radix select over unique 64-bit ranking keys (value-ordered bits << 32 | ~id), with an
// ordered variant that resolves a tied boundary value by index order.
//
// Keys are unique (the token id is part of them), so "the n best keys" is a well-defined set,
// {key >= threshold}, whatever the thread count or reduction order: the result is exact by
// construction and equal to a sort-based CPU implementation's.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace difftree::cuda {

constexpr int kRowThreads = 512;
constexpr int kRowWarps = kRowThreads / 32;

struct SelectSmem {
  uint32_t count[256];
  unsigned long long mass[256];
  double dscratch[kRowWarps];
  unsigned long long uscratch[kRowWarps];
  uint64_t prefix;
  uint64_t above_mass;  // weighted: mass of keys above the current prefix
  uint32_t remaining;   // unweighted: keys still to take inside the current prefix
  int shift;
  int done;
};

__device__ __forceinline__ double block_sum_double(double v, SelectSmem& s) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();
  if (lane == 0) s.dscratch[warp] = v;
  __syncthreads();
  double t = 0.0;
  for (int w = 0; w < static_cast<int>(blockDim.x / 32); ++w) t += s.dscratch[w];  // fixed order
  __syncthreads();
  return t;
}

__device__ __forceinline__ unsigned long long block_max_u64(unsigned long long v, SelectSmem& s) {
  for (int o = 16; o > 0; o >>= 1) {
    const unsigned long long u = __shfl_xor_sync(0xffffffffu, v, o);
    v = u > v ? u : v;
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();
  if (lane == 0) s.uscratch[warp] = v;
  __syncthreads();
  unsigned long long t = 0;
  for (int w = 0; w < static_cast<int>(blockDim.x / 32); ++w)
    t = s.uscratch[w] > t ? s.uscratch[w] : t;
  __syncthreads();
  return t;
}

__device__ __forceinline__ unsigned long long block_sum_u64(unsigned long long v, SelectSmem& s) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();
  if (lane == 0) s.uscratch[warp] = v;
  __syncthreads();
  unsigned long long t = 0;
  for (int w = 0; w < static_cast<int>(blockDim.x / 32); ++w) t += s.uscratch[w];
  __syncthreads();
  return t;
}

// Radix select, 8 bits per pass from the top, stopping as soon as the chosen bin is resolved.
//   Unweighted (Weighted = false): the `n` largest keys among {v : pred(v)}; n >= 1 and at most
//     the number of such keys.
//   Weighted: walking the keys in descending order, the first key at which the cumulative
//     weight (inclusive) reaches `thr` (compared as double; the weights are exact integers), or
//     the largest key when thr <= 0; the selected set is that key and everything above it.
//     Requires thr <= the total weight.
// Returns the threshold: the selected set is exactly {v : pred(v) && key(v) >= threshold}.
// All threads must call it; key/pred/weight are evaluated in a grid-stride loop over [0, V).
// stop_shift (unweighted, a multiple of 8): stop once the top 64 - stop_shift bits are resolved;
// s.done then tells whether the boundary bin was taken whole (the threshold is final) or
// s.remaining of its keys are still to choose by the low stop_shift bits.
template <bool Weighted, typename KeyFn, typename PredFn, typename WeightFn>
__device__ uint64_t block_radix_select(int64_t V, KeyFn key, PredFn pred, WeightFn weight,
                                       uint32_t n, double thr, SelectSmem& s, int stop_shift = 0) {
  if (threadIdx.x == 0) {
    s.prefix = 0;
    s.shift = 64;
    s.remaining = n;
    s.above_mass = 0;
    s.done = 0;
  }
  __syncthreads();
  while (true) {
    const int shift = s.shift - 8;
    const uint64_t prefix = s.prefix;
    for (int i = threadIdx.x; i < 256; i += blockDim.x) {
      s.count[i] = 0;
      s.mass[i] = 0;
    }
    __syncthreads();
    for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
      if (!pred(v)) continue;
      const uint64_t k = key(v);
      if (shift + 8 < 64 && (k >> (shift + 8)) != prefix) continue;
      const int bin = static_cast<int>((k >> shift) & 255u);
      atomicAdd(&s.count[bin], 1u);
      if (Weighted) atomicAdd(&s.mass[bin], static_cast<unsigned long long>(weight(v)));
    }
    __syncthreads();
    if (threadIdx.x < 32) {
      // Lane l owns bins 255 - 8l .. 248 - 8l (descending key order).
      const int lane = threadIdx.x;
      uint32_t c = 0;
      unsigned long long m = 0;
      for (int j = 0; j < 8; ++j) {
        c += s.count[255 - 8 * lane - j];
        m += s.mass[255 - 8 * lane - j];
      }
      uint32_t c_incl = c;
      unsigned long long m_incl = m;
      for (int o = 1; o < 32; o <<= 1) {
        const uint32_t cu = __shfl_up_sync(0xffffffffu, c_incl, o);
        const unsigned long long mu = __shfl_up_sync(0xffffffffu, m_incl, o);
        if (lane >= o) c_incl += cu, m_incl += mu;
      }
      const uint32_t c_before = c_incl - c;
      const unsigned long long m_before = m_incl - m;
      bool hit;
      if (Weighted) {
        hit = c > 0 && static_cast<double>(s.above_mass + m_incl) >= thr;
      } else {
        hit = c_incl >= s.remaining;
      }
      const unsigned ballot = __ballot_sync(0xffffffffu, hit);
      // No hit only breaks a precondition (n > candidates, thr > total weight): take the top bin
      // of lane 0 rather than reading garbage.
      const int owner = ballot ? __ffs(ballot) - 1 : 0;
      if (lane == owner) {
        uint32_t cc = c_before;
        unsigned long long mm = s.above_mass + m_before;
        int bin = 255 - 8 * lane;
        uint32_t bin_count = s.count[bin];
        for (int j = 0; j < 8; ++j) {
          const int b = 255 - 8 * lane - j;
          const uint32_t cb = s.count[b];
          const unsigned long long mb = s.mass[b];
          const bool take =
              Weighted ? (cb > 0 && static_cast<double>(mm + mb) >= thr) : (cc + cb >= s.remaining);
          if (take) {
            bin = b;
            bin_count = cb;
            break;
          }
          cc += cb;
          mm += mb;
        }
        s.prefix = (prefix << 8) | static_cast<uint64_t>(bin);
        s.shift = shift;
        if (Weighted) {
          s.above_mass = mm;
          s.done = bin_count <= 1 || shift == 0;
        } else {
          s.remaining -= cc;
          s.done = bin_count == s.remaining || shift == 0;
        }
      }
    }
    __syncthreads();
    if (s.done || s.shift <= stop_shift) break;
  }
  const uint64_t threshold = s.prefix << s.shift;
  __syncthreads();
  return threshold;
}

// Thread t's count plus the counts of threads 0..t-1 before it: the exclusive prefix of `cnt`
// over the block (warp scan, then the warp totals). All threads call; ends with a barrier.
__device__ inline uint32_t block_count_before(uint32_t cnt, SelectSmem& s) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  uint32_t incl = cnt;
  for (int o = 1; o < 32; o <<= 1) {
    const uint32_t u = __shfl_up_sync(0xffffffffu, incl, o);
    if (lane >= o) incl += u;
  }
  __syncthreads();  // s.uscratch may still be read by an earlier helper
  if (lane == 31) s.uscratch[warp] = incl;
  __syncthreads();
  uint32_t before = incl - cnt;
  for (int w = 0; w < warp; ++w) before += static_cast<uint32_t>(s.uscratch[w]);
  __syncthreads();
  return before;
}

// Writes the keys >= threshold among {v : pred(v)} to out[0..) in increasing v (a stable
// compaction: each thread takes a contiguous slice of v). All threads call.
template <typename KeyFn, typename PredFn>
__device__ void block_write_selected_in_order(int64_t V, KeyFn key, PredFn pred, uint64_t threshold,
                                              unsigned long long* out, SelectSmem& s) {
  const int64_t T = blockDim.x, per = (V + T - 1) / T;
  const int64_t begin = min(V, static_cast<int64_t>(threadIdx.x) * per);
  const int64_t end = min(V, begin + per);
  uint32_t cnt = 0;
  for (int64_t v = begin; v < end; ++v) cnt += (pred(v) && key(v) >= threshold) ? 1u : 0u;
  uint32_t at = block_count_before(cnt, s);
  for (int64_t v = begin; v < end; ++v) {
    if (!pred(v)) continue;
    const uint64_t kv = key(v);
    if (kv >= threshold) out[at++] = kv;
  }
}

// The n largest keys of {v : pred(v)} (as block_radix_select<false>) for keys value << 32 | low
// whose low half *decreases as v grows* among equal values (low = ~id, id increasing in v): the
// value half by 4 radix passes at most, then a tie at the boundary value resolved by one ordered
// count instead of 4 more passes over the id bits — bf16/fp16 logits have a few thousand
// distinct values, so the K-th value is usually shared. Among the tied keys the largest are
// those with the smallest v, so the selection takes the first s.remaining of them in v order.
template <typename KeyFn, typename PredFn>
__device__ uint64_t block_radix_select_ordered(int64_t V, KeyFn key, PredFn pred, uint32_t n,
                                               SelectSmem& s) {
  auto none = [](int64_t) { return 0ull; };
  const uint64_t hi_threshold = block_radix_select<false>(V, key, pred, none, n, 0.0, s, 32);
  if (s.done) return hi_threshold;  // (all threads read s.done after the call's last barrier)
  const uint64_t value = hi_threshold >> 32;
  const uint32_t rem = s.remaining;
  // Thread t counts the tied keys of its contiguous slice [begin, end) of v.
  const int64_t T = blockDim.x, per = (V + T - 1) / T;
  const int64_t begin = min(V, static_cast<int64_t>(threadIdx.x) * per);
  const int64_t end = min(V, begin + per);
  auto tied = [&](int64_t v) { return pred(v) && (key(v) >> 32) == value; };
  uint32_t cnt = 0;
  for (int64_t v = begin; v < end; ++v) cnt += tied(v) ? 1u : 0u;
  const uint32_t before = block_count_before(cnt, s);
  // The thread whose slice holds the rem-th tied key (in v order) publishes it: the threshold.
  if (before < rem && before + cnt >= rem) {
    uint32_t seen = before;
    for (int64_t v = begin; v < end; ++v) {
      if (tied(v) && ++seen == rem) {
        s.prefix = key(v);
        break;
      }
    }
  }
  __syncthreads();
  const uint64_t threshold = s.prefix;
  __syncthreads();
  return threshold;
}

}  // namespace difftree::cuda
