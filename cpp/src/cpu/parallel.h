// A minimal parallel-for over independent rows for the CPU ops. Threads are only worth their
// start-up cost (~tens of µs) on large inputs, so small calls stay on the calling thread, and
// never use more than max_threads() (difftree/threads.h) so the caller's thread budget holds.
#pragma once

#include <algorithm>
#include <cstdint>
#include <thread>
#include <vector>

#include "difftree/threads.h"

namespace difftree::cpu {

// Runs fn(begin, end) over [0, rows) split into contiguous chunks; fn must be thread-safe across
// chunks. `work` is the total element count, used to decide whether threads pay off.
template <typename Fn>
void parallel_rows(int64_t rows, int64_t work, Fn&& fn) {
  constexpr int64_t kMinWorkPerThread = 1 << 19;
  if (rows <= 1 || work < 2 * kMinWorkPerThread) {  // the common small call: no thread query
    fn(int64_t{0}, rows);
    return;
  }
  const int64_t cap = max_threads();
  const int64_t threads = std::min({cap, rows, std::max<int64_t>(1, work / kMinWorkPerThread)});
  if (threads <= 1) {
    fn(int64_t{0}, rows);
    return;
  }
  std::vector<std::thread> pool;
  pool.reserve(threads - 1);
  const int64_t chunk = (rows + threads - 1) / threads;
  for (int64_t t = 1; t < threads; ++t) {
    const int64_t begin = t * chunk, end = std::min(rows, begin + chunk);
    if (begin < end) pool.emplace_back([&fn, begin, end] { fn(begin, end); });
  }
  fn(int64_t{0}, std::min(rows, chunk));
  for (auto& th : pool) th.join();
}

}  // namespace difftree::cpu
