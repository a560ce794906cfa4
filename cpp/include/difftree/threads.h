// The process-wide cap on the threads a CPU op may use (the Python package sets it to
// torch.get_num_threads(), so a "1 thread" run of an op is one).
#pragma once

namespace difftree::cpu {

// Caps the threads of every later CPU op at n; n < 1 restores the default
// (std::thread::hardware_concurrency()). Thread-safe; an op already running keeps its split.
void set_max_threads(int n);

// The cap in force (>= 1).
int max_threads();

}  // namespace difftree::cpu
