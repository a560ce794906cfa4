// Acceptance walk (ALGORITHMS.md §3): follow the target's choice from the root while it names a
// child, then apply stop tokens and the remaining-token cap to the emitted sequence.
#include <cstdint>
#include <sstream>

#include "common/walk_emit.h"
#include "cpu/cpu_ops.h"
#include "dispatch/checks.h"

namespace difftree::cpu {
namespace {

bool is_stop(const TensorView* stop_tokens, int64_t tok) {
  if (stop_tokens == nullptr) return false;
  for (int64_t s = 0; s < stop_tokens->shape[0]; ++s)
    if (checks::load_index(*stop_tokens, s) == tok) return true;
  return false;
}

Status malformed(const char* name, int64_t b, int64_t i, int64_t value, const char* expected) {
  std::ostringstream os;
  os << "tree." << name << ": malformed tree at [" << b << ", " << i << "]: got " << value
     << ", expected " << expected;
  return InvalidValue(os.str());
}

}  // namespace

Status tree_walk(const TreeView& tree, const TensorView& node_choice, const TensorView* stop_tokens,
                 const TensorView* remaining, const WalkOutputs& out) {
  const int64_t B = tree.token.shape[0], N = tree.token.shape[1];
  const int64_t P = out.path.shape[1];
  for (int64_t b = 0; b < B; ++b) {
    const int32_t* token = tree.token.ptr<const int32_t>() + b * N;
    const int32_t* first_child = tree.first_child.ptr<const int32_t>() + b * N;
    const int32_t* next_sibling = tree.next_sibling.ptr<const int32_t>() + b * N;
    const int64_t n = tree.num_nodes.ptr<const int32_t>()[b];
    if (n < 1 || n > N) return malformed("num_nodes", b, 0, n, "a value in [1, N]");
    int32_t* path = out.path.ptr<int32_t>() + b * P;

    // 1. The walk. Children have larger indices than their parent and siblings increase, which
    //    both the tree contract guarantees and this loop enforces, so it always terminates.
    int64_t cur = 0, acc = 0;
    path[0] = 0;
    auto load_choice = [&](int64_t node, int64_t* out) -> Status {
      *out = checks::load_index(node_choice, b * N + node);
      if (*out >= 0 && *out <= INT32_MAX) return Status::Ok();
      std::ostringstream os;
      os << "node_choice: expected token ids in [0, 2^31), got " << *out << " at [" << b << ", "
         << node << "]";
      return InvalidValue(os.str());
    };
    int64_t choice = 0;
    DIFFTREE_RETURN_IF_ERROR(load_choice(cur, &choice));
    while (true) {
      int64_t c = first_child[cur];
      if (c >= 0 && (c <= cur || c >= n))
        return malformed("first_child", b, cur, c, "(node, num_nodes)");
      while (c >= 0 && token[c] != choice) {
        const int64_t s = next_sibling[c];
        if (s >= 0 && (s <= c || s >= n))
          return malformed("next_sibling", b, c, s, "(node, num_nodes)");
        c = s;
      }
      if (c < 0) break;
      if (acc + 1 >= P) {
        std::ostringstream os;
        os << "path: has " << P << " columns but request " << b
           << " accepts a longer path; give path max_depth + 1 columns";
        return InvalidValue(os.str());
      }
      path[++acc] = static_cast<int32_t>(c);
      cur = c;
      DIFFTREE_RETURN_IF_ERROR(load_choice(cur, &choice));
    }

    // 2. Emit path tokens then the final choice, ending after a stop token or at the cap.
    const int64_t cap = remaining ? checks::load_index(*remaining, b) : INT64_MAX;
    if (cap < 0) {
      std::ostringstream os;
      os << "remaining: expected values >= 0, got " << cap << " for request " << b;
      return InvalidValue(os.str());
    }
    const WalkEmit e = walk_emit(token, path, acc, choice, cap,
                                 [&](int64_t tok) { return is_stop(stop_tokens, tok); });
    for (int64_t j = e.kept + 1; j < P; ++j) path[j] = -1;
    out.accepted.ptr<int32_t>()[b] = static_cast<int32_t>(e.kept);
    out.next_token.ptr<int32_t>()[b] = static_cast<int32_t>(e.next);
    out.done.ptr<uint8_t>()[b] = e.done ? 1 : 0;
  }
  return Status::Ok();
}

}  // namespace difftree::cpu
