// KV commit (ALGORITHMS.md §4): row base + path[j] -> base + j for j = 1..accepted, every cache.
//
// Copying in increasing j is safe in place on one thread: path is strictly increasing with
// path[j] >= j, so destination j can only equal a source path[i] with i < j, already copied.
// (The CUDA kernel copies rows in parallel and therefore stages them first.) In a ring (row r in
// slot r % S) the same holds: path entries are < S, so two rows share a slot only if equal.
#include <cstring>
#include <sstream>

#include "cpu/cpu_ops.h"
#include "dispatch/checks.h"

namespace difftree::cpu {

Status kv_commit(const TensorView* caches, int num_caches, const TensorView& base_len,
                 const TensorView& path, const TensorView& accepted, bool ring) {
  (void)num_caches;
  const int64_t B = path.shape[0], P = path.shape[1];
  // Validate every request's indices before moving anything, so an error leaves caches intact.
  for (int64_t b = 0; b < B; ++b) {
    const int64_t acc = checks::load_index(accepted, b);
    const int64_t base = checks::load_index(base_len, b);
    std::ostringstream os;
    if (acc < 0 || acc >= P) {
      os << "accepted: expected values in [0, " << P - 1 << "] (path has " << P
         << " columns), got " << acc << " for request " << b;
      return InvalidValue(os.str());
    }
    if (base < 0) {
      os << "base_len: expected values >= 0, got " << base << " for request " << b;
      return InvalidValue(os.str());
    }
    // Rows are compared as offsets from base against S - base, which cannot overflow for any
    // int64 inputs (base >= 0 here), unlike base + path.
    const int64_t S = caches[0].shape[2];  // all caches share one shape (dispatch)
    int64_t prev = -1;
    for (int64_t j = 0; j <= acc; ++j) {
      const int64_t a = checks::load_index(path, b * P + j);
      if ((j == 0 && a != 0) || (j > 0 && a <= prev)) {
        os << "path: expected path[" << b << ", 0] = 0 and strictly increasing node indices up "
           << "to accepted, got " << a << " at column " << j;
        return InvalidValue(os.str());
      }
      if (ring && a >= S) {
        os << "path: path[" << b << ", " << j << "] = " << a << " does not fit in the ring of S = "
           << S << " slots (ring caches need path entries < S)";
        return InvalidValue(os.str());
      }
      if (!ring && a >= S - base) {
        os << "path: row base_len + path[" << b << ", " << j << "] = " << base << " + " << a
           << " is outside the caches (S = " << S << ")";
        return InvalidValue(os.str());
      }
      prev = a;
    }
  }
  for (int64_t b = 0; b < B; ++b) {
    const int64_t acc = checks::load_index(accepted, b);
    const int64_t base = checks::load_index(base_len, b);
    bool contiguous = true;
    for (int64_t j = 0; j <= acc && contiguous; ++j)
      contiguous = checks::load_index(path, b * P + j) == j;
    if (contiguous) continue;  // fast path: rows already in place
    for (int c = 0; c < num_caches; ++c) {
      const TensorView& t = caches[c];
      const int64_t H = t.shape[1], S = t.shape[2];
      const size_t row_bytes = static_cast<size_t>(t.shape[3]) * dtype_size(t.dtype);
      char* data = static_cast<char*>(t.data);
      // base % S first: base + path cannot overflow, and a ring row's slot is (base + r) % S.
      const int64_t origin = ring ? base % S : base;
      for (int64_t h = 0; h < H; ++h) {
        char* head = data + ((b * H + h) * S) * row_bytes;
        for (int64_t j = 1; j <= acc; ++j) {
          int64_t src = origin + checks::load_index(path, b * P + j), dst = origin + j;
          if (ring) src %= S, dst %= S;
          if (src != dst) std::memcpy(head + dst * row_bytes, head + src * row_bytes, row_bytes);
        }
      }
    }
  }
  return Status::Ok();
}

}  // namespace difftree::cpu
