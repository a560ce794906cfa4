#include "cpu/candidates.h"

#include <cmath>
#include <sstream>

#include "dispatch/checks.h"

namespace difftree::cpu {

void TokenSet::reset(int64_t capacity) {
  size_t n = 16;
  while (n < static_cast<size_t>(2 * capacity)) n <<= 1;
  slots_.assign(n, -1);
  mask_ = n - 1;
}

bool TokenSet::insert(int64_t tok) {
  size_t i = (static_cast<uint64_t>(tok) * 0x9E3779B97F4A7C15ull) >> 20 & mask_;
  while (slots_[i] >= 0) {
    if (slots_[i] == tok) return false;
    i = (i + 1) & mask_;
  }
  slots_[i] = tok;
  return true;
}

Status check_candidates(const TensorView& cand_token, const float* lp, int64_t b, int64_t L,
                        int64_t K, TokenSet& seen) {
  for (int64_t d = 0; d < L; ++d) {
    const float* row = lp + (b * L + d) * K;
    seen.reset(K);
    for (int64_t r = 0; r < K; ++r) {
      const float v = row[r];
      if (!std::isfinite(v) || v > 0.0f || (r > 0 && v > row[r - 1])) {
        std::ostringstream os;
        os << "cand_logprob: expected finite log-probs <= 0, non-increasing along K; "
           << "found " << v << " at [" << b << ", " << d << ", " << r << "]";
        if (r > 0 && v > row[r - 1]) os << " after " << row[r - 1];
        return InvalidValue(os.str());
      }
      const int64_t tok = checks::load_index(cand_token, (b * L + d) * K + r);
      if (tok < 0 || tok > INT32_MAX) {
        std::ostringstream os;
        os << "cand_token: expected token ids in [0, 2^31), found " << tok << " at [" << b << ", " << d
           << ", " << r << "]";
        return InvalidValue(os.str());
      }
      if (!seen.insert(tok)) {
        std::ostringstream os;
        os << "cand_token: expected distinct tokens per depth, token " << tok
           << " appears twice at [" << b << ", " << d << ", :]";
        return InvalidValue(os.str());
      }
    }
  }
  return Status::Ok();
}

}  // namespace difftree::cpu
