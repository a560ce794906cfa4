// The emission rule of an acceptance walk, shared by the CPU op and the CUDA kernel so the two
// cannot drift: emitted tokens are the path's draft tokens 1..acc, then the final choice (the
// next bonus); generation ends after the first stop token or once `cap` tokens are emitted.
#pragma once

#include <cstdint>

#include "common/host_device.h"

namespace difftree {

struct WalkEmit {
  int64_t kept;  // accepted draft nodes after the cut
  int64_t next;  // the token after them, -1 if generation ended first
  bool done;     // a stop token was emitted or the cap reached
};

// token: the request's node tokens; path[1..acc]: accepted node indices; choice: the target's
// token after the last accepted node; cap >= 0; is_stop(tok) -> bool.
template <typename IsStop>
DIFFTREE_HOST_DEVICE inline WalkEmit walk_emit(const int32_t* token, const int32_t* path,
                                               int64_t acc, int64_t choice, int64_t cap,
                                               IsStop is_stop) {
  int64_t emitted = 0, kept = acc;
  bool done = false;
  for (int64_t j = 1; j <= acc && !done; ++j) {
    if (emitted == cap) {
      kept = j - 1;
      done = true;
      break;
    }
    ++emitted;
    if (is_stop(token[path[j]])) {
      kept = j;
      done = true;
    }
  }
  if (done || emitted == cap) return {kept, -1, true};
  ++emitted;
  return {kept, choice, is_stop(choice) || emitted == cap};
}

}  // namespace difftree
