// kv_commit on the device, all layers in one launch: block (b*H + h, cache chunk) moves the
// accepted rows of one head of one request. Rows are staged through shared memory in chunks of
// kStageRows: a chunk's destinations j can only alias sources path[i] with i <= j (path[i] >= i),
// which are already read, so read-all-then-write per chunk is safe with parallel threads. A ring
// (row r in slot r % S) keeps this: path entries are < S, so rows share a slot only if equal.
#include <cuda_runtime.h>

#include "index.cuh"
#include "launchers.h"

namespace difftree::cuda {
namespace {

constexpr int kMaxCachesPerLaunch = 256;
constexpr int kStageRows = 8;
constexpr int kThreads = 128;

struct CommitParams {
  char* caches[kMaxCachesPerLaunch];
  int num_caches;
  const void* base_len;
  bool base64;
  const void* path;
  bool path64;
  const void* accepted;
  bool acc64;
  int64_t H, S, P;
  int64_t row_bytes;
  bool ring;
};

template <typename Vec>
__global__ void kv_commit_kernel(CommitParams p) {
  extern __shared__ __align__(16) unsigned char stage_raw[];
  Vec* stage = reinterpret_cast<Vec*>(stage_raw);
  const int64_t bh = blockIdx.x;
  const int64_t b = bh / p.H;
  const int c = blockIdx.y;
  if (c >= p.num_caches) return;
  const int64_t acc = load_index(p.accepted, p.acc64, b);
  // A ring's rows are slots (base % S + r) % S; base % S first so nothing overflows.
  const int64_t base = p.ring ? load_index(p.base_len, p.base64, b) % p.S
                              : load_index(p.base_len, p.base64, b);
  bool contiguous = true;
  for (int64_t j = 1; j <= acc; ++j) contiguous &= load_index(p.path, p.path64, b * p.P + j) == j;
  if (contiguous) return;  // fast path: the accepted rows are already in place

  const int64_t vecs = p.row_bytes / static_cast<int64_t>(sizeof(Vec));
  Vec* head = reinterpret_cast<Vec*>(p.caches[c] + bh * p.S * p.row_bytes);
  for (int64_t j0 = 1; j0 <= acc; j0 += kStageRows) {
    const int64_t rows = min(static_cast<int64_t>(kStageRows), acc - j0 + 1);
    for (int64_t e = threadIdx.x; e < rows * vecs; e += blockDim.x) {
      const int64_t r = e / vecs, v = e % vecs;
      int64_t src = base + load_index(p.path, p.path64, b * p.P + j0 + r);
      if (p.ring) src %= p.S;
      stage[e] = head[src * vecs + v];
    }
    __syncthreads();
    for (int64_t e = threadIdx.x; e < rows * vecs; e += blockDim.x) {
      const int64_t r = e / vecs, v = e % vecs;
      const int64_t dst = p.ring ? (base + j0 + r) % p.S : base + j0 + r;
      head[dst * vecs + v] = stage[e];
    }
    __syncthreads();
  }
}

}  // namespace

Status kv_commit(const TensorView* caches, int num_caches, const TensorView& base_len,
                 const TensorView& path, const TensorView& accepted, bool ring, Stream stream) {
  const TensorView& t0 = caches[0];
  CommitParams p{};
  p.ring = ring;
  p.base_len = base_len.data;
  p.base64 = base_len.dtype == DType::kInt64;
  p.path = path.data;
  p.path64 = path.dtype == DType::kInt64;
  p.accepted = accepted.data;
  p.acc64 = accepted.dtype == DType::kInt64;
  p.H = t0.shape[1];
  p.S = t0.shape[2];
  p.P = path.shape[1];
  p.row_bytes = t0.shape[3] * dtype_size(t0.dtype);
  const int64_t B = t0.shape[0];
  if (B * p.H == 0 || p.row_bytes == 0) return Status::Ok();
  bool aligned16 = p.row_bytes % 16 == 0;
  for (int c = 0; c < num_caches; ++c)
    aligned16 &= reinterpret_cast<uintptr_t>(caches[c].data) % 16 == 0;
  const size_t smem = static_cast<size_t>(kStageRows * p.row_bytes);
  for (int first = 0; first < num_caches; first += kMaxCachesPerLaunch) {
    p.num_caches = std::min(kMaxCachesPerLaunch, num_caches - first);
    for (int c = 0; c < p.num_caches; ++c) p.caches[c] = static_cast<char*>(caches[first + c].data);
    const dim3 grid(static_cast<unsigned>(B * p.H), static_cast<unsigned>(p.num_caches));
    auto s = static_cast<cudaStream_t>(stream);
    if (aligned16) {
      kv_commit_kernel<int4><<<grid, kThreads, smem, s>>>(p);
    } else {
      kv_commit_kernel<unsigned char><<<grid, kThreads, smem, s>>>(p);
    }
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return Internal(std::string("kv_commit: ") + cudaGetErrorString(err));
  }
  return Status::Ok();
}

}  // namespace difftree::cuda
