// The cuda_emu runtime: runs one block's threads as ucontext fibers that yield at barriers.
#include <setjmp.h>
#include <ucontext.h>

#include <algorithm>
#include <memory>
#include <random>
#include <string>

#include "cuda_runtime.h"

namespace emu {
int threads_override = 0;
int schedule = 0;
namespace {
// A fiber starts through ucontext (makecontext + swapcontext, once per launch) and afterwards
// switches with _setjmp/_longjmp, which, unlike swapcontext, save no signal mask: no system call
// per switch. Stacks are allocated once and reused by every block.
constexpr size_t kStack = 128 * 1024;
struct Fiber {
  ucontext_t ctx;
  jmp_buf jb;
  std::unique_ptr<char[]> stack;
  bool started = false;
  bool done = false;
  int wait = 0;  // 0 runnable, 1 block barrier, 2 warp barrier
  unsigned long gen = 0;
};
ucontext_t sched_ctx;
jmp_buf sched_jb;
std::vector<Fiber> fibers;
int cur = -1;
unsigned g_threads = 0;
dim3 g_bid;
unsigned long block_gen = 0;
unsigned block_count = 0;
std::vector<unsigned long> warp_gen;
std::vector<unsigned> warp_count;
std::vector<unsigned char> smem_buf;
unsigned char slots[64][32][8];  // per warp, per lane: the value a shuffle publishes
void (*g_body)(void*);
void* g_arg;
std::mt19937 rng(1234);
std::string g_error;  // the first failure since take_error()

void fail(const std::string& what) {
  if (g_error.empty()) g_error = "cuda_emu: " + what;
}

// Back to the scheduler; returns when the scheduler resumes this fiber.
void yield() {
  if (_setjmp(fibers[cur].jb) == 0) _longjmp(sched_jb, 1);
}

void trampoline() {
  g_body(g_arg);
  fibers[cur].done = true;
  _longjmp(sched_jb, 1);
}
}  // namespace

dim3 thread_idx() { return dim3(static_cast<unsigned>(cur), 0, 0); }
dim3 block_idx() { return g_bid; }
dim3 block_dim() { return dim3(g_threads, 1, 1); }
unsigned char* dyn_smem() { return smem_buf.data(); }
void* shfl_slot(int lane) { return slots[cur / 32][lane]; }

void syncthreads() {
  Fiber& f = fibers[cur];
  f.gen = block_gen;
  if (++block_count == g_threads) {
    block_count = 0;
    ++block_gen;
    return;
  }
  f.wait = 1;
  yield();
}

}  // namespace emu

namespace {
int g_or_acc = 0;  // the running OR of the current __syncthreads_or
}  // namespace

int syncthreads_or_impl(int pred) {
  if (pred) g_or_acc = 1;
  ::emu::syncthreads();
  const int out = g_or_acc;
  ::emu::syncthreads();
  if (threadIdx.x == 0) g_or_acc = 0;
  ::emu::syncthreads();
  return out;
}

namespace emu {
void warp_sync() {
  Fiber& f = fibers[cur];
  const int w = cur / 32;
  f.gen = warp_gen[w];
  const unsigned width = std::min<unsigned>(32, g_threads - 32 * w);
  if (++warp_count[w] == width) {
    warp_count[w] = 0;
    ++warp_gen[w];
    return;
  }
  f.wait = 2;
  yield();
}

void run_block(void (*body)(void*), void* arg, dim3 grid, dim3 bid, unsigned threads, size_t smem) {
  (void)grid;
  if (!g_error.empty()) return;  // an earlier block failed: the launch is void
  if (threads == 0 || threads > 64 * 32) {
    fail("unsupported block size " + std::to_string(threads));
    return;
  }
  g_body = body;
  g_arg = arg;
  g_bid = bid;
  g_threads = threads;
  smem_buf.assign(smem + 16, 0xCD);  // garbage, as real shared memory
  if (fibers.size() < threads) fibers.resize(threads);
  block_gen = 0;
  block_count = 0;
  warp_gen.assign((threads + 31) / 32, 0);
  warp_count.assign((threads + 31) / 32, 0);
  for (unsigned t = 0; t < threads; ++t) {
    Fiber& f = fibers[t];
    if (!f.stack) f.stack.reset(new char[kStack]);
    f.started = f.done = false;
    f.wait = 0;
    f.gen = 0;
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack.get();
    f.ctx.uc_stack.ss_size = kStack;
    f.ctx.uc_link = nullptr;
    makecontext(&f.ctx, trampoline, 0);
  }
  std::vector<int> order(threads);
  for (;;) {
    for (unsigned t = 0; t < threads; ++t) order[t] = static_cast<int>(t);
    if (schedule == 1) std::reverse(order.begin(), order.end());
    if (schedule == 2) std::shuffle(order.begin(), order.end(), rng);
    bool progress = false, all_done = true;
    for (int t : order) {
      Fiber& f = fibers[t];
      if (f.done) continue;
      all_done = false;
      if (f.wait == 1 && f.gen == block_gen) continue;
      if (f.wait == 2 && f.gen == warp_gen[t / 32]) continue;
      f.wait = 0;
      cur = t;
      if (_setjmp(sched_jb) == 0) {
        if (f.started) _longjmp(f.jb, 1);
        f.started = true;
        swapcontext(&sched_ctx, &f.ctx);  // first entry only; it returns here via sched_jb
      }
      progress = true;
    }
    if (all_done) break;
    if (!progress) {  // the waiting fibers are abandoned (their stacks are reused)
      fail("deadlock: a barrier some threads of block " + std::to_string(bid.x) + " skip");
      return;
    }
  }
  if (block_count != 0)
    fail("block " + std::to_string(bid.x) + " ended with " + std::to_string(block_count) +
         " threads inside a barrier");
}

std::string take_error() {
  std::string e;
  e.swap(g_error);
  return e;
}
}  // namespace emu
