// Σ exp(x[v] - m) over a row, in f64, fast: the core of the exact log-sum-exp.
//
// exp is evaluated by range reduction (x = n ln2 + r, |r| <= ln2/2) and a degree-13 Taylor
// polynomial, accurate to ~2e-16 relative, written branch-free so the compiler vectorises it.
// Differences from another implementation's exp or summation order stay ~1e-15 relative, far
// below the f32 rounding of the final log-sum-exp (see topk_logprobs.cpp).
#pragma once

#include <cstdint>

namespace difftree::cpu {

// Returns Σ_v exp((double)x[v] - m); requires x[v] <= m (m = the row max), x may hold -inf.
double sum_exp_shifted(const float* x, int64_t n, double m);

}  // namespace difftree::cpu
