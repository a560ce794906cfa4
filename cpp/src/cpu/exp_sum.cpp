#include "cpu/exp_sum.h"

#include <cstring>

namespace difftree::cpu {
namespace {

inline double exp_nonpositive(double x) {
  constexpr double kMagic = 6755399441055744.0;  // 1.5 * 2^52: rounds to an integer in place
  // Below -708 the result is < 1e-307: irrelevant next to the row max's exp(0) = 1.
  x = x < -708.0 ? -708.0 : x;
  const double t = x * 1.4426950408889634 + kMagic;
  const double n = t - kMagic;
  const double r = (x - n * 6.93147180369123816490e-01) - n * 1.90821492927058770002e-10;
  double p = 1.0 / 6227020800.0;
  p = p * r + 1.0 / 479001600.0;
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  p = p * r + 1.0;
  p = p * r + 1.0;
  int64_t bits;
  std::memcpy(&bits, &t, sizeof(bits));
  const int64_t scale_bits = (bits - 0x4338000000000000LL + 1023) << 52;  // 2^n
  double scale;
  std::memcpy(&scale, &scale_bits, sizeof(scale));
  return p * scale;
}

}  // namespace

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
// One build runs fast on every x86-64 machine: the loader picks the widest supported clone.
__attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
#endif
double sum_exp_shifted(const float* x, int64_t n, double m) {
  // Eight independent accumulators let the loop vectorise without reassociating a single sum.
  double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t v = 0;
  for (; v + 8 <= n; v += 8)
    for (int l = 0; l < 8; ++l) acc[l] += exp_nonpositive(static_cast<double>(x[v + l]) - m);
  double s = 0.0;
  for (int l = 0; l < 8; ++l) s += acc[l];
  for (; v < n; ++v) s += exp_nonpositive(static_cast<double>(x[v]) - m);
  return s;
}

}  // namespace difftree::cpu
