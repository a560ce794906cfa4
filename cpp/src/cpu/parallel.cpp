// The thread cap of parallel_rows (difftree/threads.h).
#include <algorithm>
#include <atomic>
#include <thread>

#include "difftree/threads.h"

namespace difftree::cpu {
namespace {

std::atomic<int> g_cap{0};  // 0: the default

int hardware_threads() {
  // hardware_concurrency() reads /sys on glibc (tens of µs): ask once per process.
  static const int hw = std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  return hw;
}

}  // namespace

void set_max_threads(int n) { g_cap.store(n > 0 ? n : 0, std::memory_order_relaxed); }

int max_threads() {
  const int cap = g_cap.load(std::memory_order_relaxed);
  return cap > 0 ? cap : hardware_threads();
}

}  // namespace difftree::cpu
