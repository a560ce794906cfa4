// The PRESTO n-gram count table's hashing and probing, and the normative summation order of
// its normaliser, shared by the CPU ops (cpu/presto.cpp) and the CUDA kernels (cuda/presto.cu)
// so that tables and trees agree across the two.
//
// Table: keys int64 [H] and counts int32 [H] (H a power of two; key 0 marks an empty slot),
// open addressing with linear probing from slot(key). Every n-gram of length m = 1..order is
// stored twice: (h, t) -> c(h, t) and (h, ⊥) -> c(h) = Σ_t c(h, t), where h holds the m - 1
// tokens before t. Lookups find a key wherever concurrent inserts placed it (no deletions), so
// tables built in different insertion orders give the same counts.
#pragma once

#include <cstdint>

#include "common/host_device.h"

namespace difftree::ngram {

constexpr uint32_t kContextTotal = 0xFFFFFFFFu;  // the "⊥" token of c(h)

// Lanes of the normaliser's sum: Z = Σ_r w_r is accumulated as 32 sequential partial sums
// (partial[l] over r = l, l + 32, ... in increasing r, from 0.0), then folded pairwise
// (partial[l] += partial[l + o] for o = 16, 8, 4, 2, 1 and l < o): the order of one warp's
// shuffle reduction, so the CPU and the GPU round identically.
constexpr int kSumLanes = 32;

DIFFTREE_HOST_DEVICE inline uint64_t mix64(uint64_t z) {  // splitmix64 finaliser
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Key of the n-gram (h[0..len), t) of length len + 1; never 0. `h(i)` returns the i-th context
// token (int32 bits).
template <typename Hist>
DIFFTREE_HOST_DEVICE inline int64_t key(Hist h, int64_t len, uint32_t t) {
  uint64_t k = mix64(0x9E3779B97F4A7C15ull * static_cast<uint64_t>(len + 1));
  for (int64_t i = 0; i < len; ++i)
    k = mix64(k ^ (static_cast<uint64_t>(static_cast<uint32_t>(h(i))) + 0x632BE59BD9B4E019ull));
  k = mix64(k ^ (static_cast<uint64_t>(t) + 0x632BE59BD9B4E019ull));
  return k == 0 ? 1 : static_cast<int64_t>(k);
}

DIFFTREE_HOST_DEVICE inline uint64_t home_slot(int64_t key, uint64_t mask) {
  const uint64_t k = static_cast<uint64_t>(key);
  return (k ^ (k >> 29)) & mask;
}

// c for `key` in one table (0 when absent).
DIFFTREE_HOST_DEVICE inline int32_t lookup(const int64_t* keys, const int32_t* counts,
                                           uint64_t mask, int64_t key) {
  uint64_t i = home_slot(key, mask);
  for (uint64_t probes = 0; probes <= mask; ++probes, i = (i + 1) & mask) {
    if (keys[i] == key) return counts[i];
    if (keys[i] == 0) return 0;
  }
  return 0;
}

}  // namespace difftree::ngram
