// tree_walk on the device: one thread per request (a walk is sequential and at most L steps).
// Malformed links end the walk instead of being reported: reporting would need a host sync.
#include <cuda_runtime.h>

#include "common/walk_emit.h"
#include "index.cuh"
#include "launchers.h"

namespace difftree::cuda {
namespace {

struct WalkParams {
  const int32_t* token;
  const int32_t* first_child;
  const int32_t* next_sibling;
  const int32_t* num_nodes;
  const void* choice;
  bool choice64;
  const void* stop;
  bool stop64;
  int64_t num_stop;
  const void* remaining;  // nullptr: no cap
  bool remaining64;
  int32_t* path;
  int32_t* accepted;
  int32_t* next_token;
  uint8_t* done;
  int64_t B, N, P;
};

__device__ bool is_stop(const WalkParams& p, int64_t tok) {
  for (int64_t s = 0; s < p.num_stop; ++s)
    if (load_index(p.stop, p.stop64, s) == tok) return true;
  return false;
}

__global__ void tree_walk_kernel(WalkParams p) {
  const int64_t b = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (b >= p.B) return;
  const int32_t* token = p.token + b * p.N;
  const int32_t* first_child = p.first_child + b * p.N;
  const int32_t* next_sibling = p.next_sibling + b * p.N;
  const int64_t n = min(static_cast<int64_t>(p.num_nodes[b]), p.N);
  int32_t* path = p.path + b * p.P;

  int64_t cur = 0, acc = 0;
  path[0] = 0;
  int64_t choice = load_index(p.choice, p.choice64, b * p.N);
  while (acc + 1 < p.P) {
    int64_t c = first_child[cur];
    if (c <= cur || c >= n) break;
    while (c > cur && c < n && token[c] != choice) {
      const int64_t s = next_sibling[c];
      c = (s > c) ? s : -1;
    }
    if (c <= cur || c >= n) break;
    path[++acc] = static_cast<int32_t>(c);
    cur = c;
    choice = load_index(p.choice, p.choice64, b * p.N + cur);
  }

  const int64_t cap = p.remaining ? load_index(p.remaining, p.remaining64, b) : INT64_MAX;
  const WalkEmit e =
      walk_emit(token, path, acc, choice, cap, [&](int64_t tok) { return is_stop(p, tok); });
  for (int64_t j = e.kept + 1; j < p.P; ++j) path[j] = -1;
  p.accepted[b] = static_cast<int32_t>(e.kept);
  p.next_token[b] = static_cast<int32_t>(e.next);
  p.done[b] = e.done ? 1 : 0;
}

}  // namespace

Status tree_walk(const TreeView& tree, const TensorView& node_choice,
                 const TensorView* stop_tokens, const TensorView* remaining,
                 const WalkOutputs& out, Stream stream) {
  WalkParams p{};
  p.token = tree.token.ptr<const int32_t>();
  p.first_child = tree.first_child.ptr<const int32_t>();
  p.next_sibling = tree.next_sibling.ptr<const int32_t>();
  p.num_nodes = tree.num_nodes.ptr<const int32_t>();
  p.choice = node_choice.data;
  p.choice64 = node_choice.dtype == DType::kInt64;
  p.stop = stop_tokens ? stop_tokens->data : nullptr;
  p.stop64 = stop_tokens && stop_tokens->dtype == DType::kInt64;
  p.num_stop = stop_tokens ? stop_tokens->shape[0] : 0;
  p.remaining = remaining ? remaining->data : nullptr;
  p.remaining64 = remaining && remaining->dtype == DType::kInt64;
  p.path = out.path.ptr<int32_t>();
  p.accepted = out.accepted.ptr<int32_t>();
  p.next_token = out.next_token.ptr<int32_t>();
  p.done = out.done.ptr<uint8_t>();
  p.B = tree.token.shape[0];
  p.N = tree.token.shape[1];
  p.P = out.path.shape[1];
  if (p.B == 0) return Status::Ok();
  const int threads = 128;
  const unsigned blocks = static_cast<unsigned>((p.B + threads - 1) / threads);
  tree_walk_kernel<<<blocks, threads, 0, static_cast<cudaStream_t>(stream)>>>(p);
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return Internal(std::string("tree_walk: ") + cudaGetErrorString(err));
  return Status::Ok();
}

}  // namespace difftree::cuda
