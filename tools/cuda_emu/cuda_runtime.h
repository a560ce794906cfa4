// Host emulation of the CUDA subset the selector kernels use (tools/cuda_emu/README.md): one
// block at a time, its threads as cooperative fibers (ucontext) that switch only at barriers
// (__syncthreads, warp shuffles / votes), with shared memory filled with garbage and a
// configurable order of threads between barriers. It checks a kernel's *logic* against the CPU
// oracle without a GPU: barrier placement, indexing, reduction orders, ties. It cannot see
// true concurrency (two threads racing between barriers run one after the other), timing or
// the device's own math library (exp/log here are glibc's).
#pragma once
#include <math.h>
#include <stdint.h>
#include <string.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __restrict__ __restrict

typedef void* cudaStream_t;
typedef int cudaError_t;
#define cudaSuccess 0
#define cudaFuncAttributeMaxDynamicSharedMemorySize 8
template <class K>
inline cudaError_t cudaFuncSetAttribute(K, int, int) {
  return cudaSuccess;
}
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
// The one device query the launchers make (their shared-memory opt-in caches).
inline cudaError_t cudaGetDevice(int* dev) {
  *dev = 0;
  return cudaSuccess;
}
inline const char* cudaGetErrorString(cudaError_t) { return "cuda_emu"; }

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct __attribute__((aligned(16))) int4 {
  int x, y, z, w;
};

namespace emu {
dim3 thread_idx();
dim3 block_idx();
dim3 block_dim();
void syncthreads();
void warp_sync();
void* shfl_slot(int lane);
unsigned char* dyn_smem();
}  // namespace emu

#define threadIdx (::emu::thread_idx())
#define blockIdx (::emu::block_idx())
#define blockDim (::emu::block_dim())
#define __syncthreads() ::emu::syncthreads()

// A warp exchange: every lane publishes v, the warp meets, each lane reads lane `src`'s value.
template <class T>
T emu_shfl_from(T v, int src, bool valid) {
  static_assert(sizeof(T) <= 8, "shuffles move at most 8 bytes");
  const int lane = threadIdx.x % 32;
  memcpy(emu::shfl_slot(lane), &v, sizeof(T));
  emu::warp_sync();
  T r = v;
  if (valid) memcpy(&r, emu::shfl_slot(src), sizeof(T));
  emu::warp_sync();
  return r;
}
template <class T>
T __shfl_xor_sync(unsigned, T v, int o) {
  const int l = threadIdx.x % 32;
  return emu_shfl_from(v, l ^ o, true);
}
template <class T>
T __shfl_down_sync(unsigned, T v, unsigned o) {
  const int l = threadIdx.x % 32;
  return emu_shfl_from(v, l + static_cast<int>(o), l + static_cast<int>(o) < 32);
}
template <class T>
T __shfl_up_sync(unsigned, T v, unsigned o) {
  const int l = threadIdx.x % 32;
  return emu_shfl_from(v, l - static_cast<int>(o), l - static_cast<int>(o) >= 0);
}
template <class T>
T __shfl_sync(unsigned, T v, int src) {
  return emu_shfl_from(v, src, true);
}
inline unsigned __ballot_sync(unsigned, int pred) {
  const int lane = threadIdx.x % 32;
  const unsigned char bit = pred ? 1 : 0;
  memcpy(emu::shfl_slot(lane), &bit, 1);
  emu::warp_sync();
  unsigned out = 0;
  for (int l = 0; l < 32; ++l)
    out |= static_cast<unsigned>(*static_cast<unsigned char*>(emu::shfl_slot(l)) & 1u) << l;
  emu::warp_sync();
  return out;
}
// A block barrier that also ORs a predicate over the block (each thread's value is published
// before the barrier, read after it, then a second barrier frees the slot).
int syncthreads_or_impl(int pred);
inline int __syncthreads_or(int pred) { return syncthreads_or_impl(pred); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __ffs(unsigned x) { return __builtin_ffs(static_cast<int>(x)); }
inline int __clz(unsigned x) { return x == 0 ? 32 : __builtin_clz(x); }

// Threads switch only at barriers, so read-modify-writes are atomic by construction.
template <class T, class U>
T atomicAdd(T* a, U v) {
  T old = *a;
  *a = old + static_cast<T>(v);
  return old;
}
template <class T, class U>
T atomicMax(T* a, U v) {
  T old = *a;
  if (static_cast<T>(v) > old) *a = static_cast<T>(v);
  return old;
}
template <class T, class U>
T atomicMin(T* a, U v) {
  T old = *a;
  if (static_cast<T>(v) < old) *a = static_cast<T>(v);
  return old;
}
template <class T>
T atomicCAS(T* a, T cmp, T v) {
  T old = *a;
  if (old == cmp) *a = v;
  return old;
}

inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline long min(long a, long b) { return a < b ? a : b; }
inline long max(long a, long b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }

// Round-to-nearest intrinsics: the host build uses -ffp-contract=off, so these are exact.
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __ddiv_rn(double a, double b) { return a / b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __double2float_rn(double a) { return static_cast<float>(a); }
inline float __int_as_float(int x) {
  float f;
  memcpy(&f, &x, 4);
  return f;
}
inline int __float_as_int(float f) {
  int x;
  memcpy(&x, &f, 4);
  return x;
}
inline unsigned __float_as_uint(float f) {
  unsigned x;
  memcpy(&x, &f, 4);
  return x;
}
inline float __uint_as_float(unsigned x) {
  float f;
  memcpy(&f, &x, 4);
  return f;
}
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
template <class T>
T __ldg(const T* p) {
  return *p;
}

namespace emu {
// The block size of every launch (0: the kernel's own) and the order threads run between
// barriers: 0 forward, 1 reverse, 2 random.
extern int threads_override;
extern int schedule;
void run_block(void (*body)(void*), void* arg, dim3 grid, dim3 bid, unsigned threads, size_t smem);
// The first failure (a deadlock, a barrier left half-crossed) since the last call, or "": a
// failed launch stops early and leaves its outputs undefined.
std::string take_error();
template <class... P, class... A>
void launch(void (*kernel)(P...), dim3 grid, unsigned block, size_t smem, cudaStream_t,
            A&&... args) {
  struct Arg {
    void (*k)(P...);
    std::tuple<P...> p;
  } a{kernel, std::tuple<P...>(std::forward<A>(args)...)};
  const unsigned threads = threads_override > 0 ? static_cast<unsigned>(threads_override) : block;
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x)
        run_block(
            [](void* v) {
              auto* t = static_cast<Arg*>(v);
              std::apply(t->k, t->p);
            },
            &a, grid, dim3(x, y, z), threads, smem);
}
}  // namespace emu
