// Shared helpers for the C++ tests: owning buffers behind TreeView, hand-built trees, and a way
// to run a call in a child process so that a crash or a hang is reported instead of killing the
// test.
#pragma once

#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <vector>

#include "check.h"
#include "difftree/difftree.hpp"

#if defined(__unix__) || defined(__APPLE__)
#include <sys/wait.h>
#include <unistd.h>
#define DT_TEST_HAVE_FORK 1
#endif

namespace dt_test {

using difftree::DType;
using difftree::make_view;
using difftree::TensorView;
using difftree::TreeView;

// Garbage every output buffer starts with, so a test notices an entry the op did not write.
constexpr int32_t kGarbage = 0x5a5a5a5a;

// Owning storage for a batch of trees, [B, N] (anc [B, N, W]).
struct TreeBuf {
  int64_t B, N, W;
  std::vector<int32_t> token, parent, depth, first_child, next_sibling, anc, num_nodes;
  std::vector<float> score;

  TreeBuf(int64_t b, int64_t n)
      : B(b),
        N(n),
        W(difftree::anc_words(n)),
        token(b * n, kGarbage),
        parent(b * n, kGarbage),
        depth(b * n, kGarbage),
        first_child(b * n, kGarbage),
        next_sibling(b * n, kGarbage),
        anc(b * n * difftree::anc_words(n), kGarbage),
        num_nodes(b, kGarbage),
        score(b * n, 12345.0f) {}

  TreeView view() {
    TreeView t;
    t.token = make_view(token.data(), DType::kInt32, {B, N});
    t.parent = make_view(parent.data(), DType::kInt32, {B, N});
    t.depth = make_view(depth.data(), DType::kInt32, {B, N});
    t.score = make_view(score.data(), DType::kFloat32, {B, N});
    t.first_child = make_view(first_child.data(), DType::kInt32, {B, N});
    t.next_sibling = make_view(next_sibling.data(), DType::kInt32, {B, N});
    t.anc = make_view(anc.data(), DType::kInt32, {B, N, W});
    t.num_nodes = make_view(num_nodes.data(), DType::kInt32, {B});
    return t;
  }

  int32_t& at(std::vector<int32_t>& v, int64_t b, int64_t i) { return v[b * N + i]; }
  uint32_t anc_word(int64_t b, int64_t i, int64_t w) const {
    return static_cast<uint32_t>(anc[(b * N + i) * W + w]);
  }
  bool anc_bit(int64_t b, int64_t i, int64_t j) const {
    return (anc_word(b, i, j / 32) >> (j % 32)) & 1u;
  }

  // Writes request b from parent[] and token[] (nodes in index order, parent[i] < i), deriving
  // depth, links (children in index order), anc and padding rows exactly as tree.h specifies.
  void set_tree(int64_t b, const std::vector<int32_t>& parents,
                const std::vector<int32_t>& tokens) {
    const int64_t n = static_cast<int64_t>(parents.size());
    num_nodes[b] = static_cast<int32_t>(n);
    for (int64_t i = 0; i < N; ++i) {
      at(token, b, i) = i < n ? tokens[i] : -1;
      at(parent, b, i) = i < n ? parents[i] : -1;
      at(depth, b, i) = i < n && i > 0 ? at(depth, b, parents[i]) + 1 : 0;
      score[b * N + i] =
          i < n ? -static_cast<float>(at(depth, b, i)) : -std::numeric_limits<float>::infinity();
      at(first_child, b, i) = at(next_sibling, b, i) = -1;
      for (int64_t w = 0; w < W; ++w) anc[(b * N + i) * W + w] = 0;
    }
    std::vector<int32_t> last(n, -1);
    for (int64_t i = 1; i < n; ++i) {
      const int32_t p = parents[i];
      if (last[p] < 0)
        at(first_child, b, p) = static_cast<int32_t>(i);
      else
        at(next_sibling, b, last[p]) = static_cast<int32_t>(i);
      last[p] = static_cast<int32_t>(i);
    }
    for (int64_t i = 0; i < N; ++i) {
      for (int64_t j = i; j >= 0; j = (i < n && j > 0) ? parents[j] : -1) {
        anc[(b * N + i) * W + j / 32] |= static_cast<int32_t>(1u << (j % 32));
        if (i >= n) break;  // padding rows: only their own bit
      }
    }
  }
};

// Result of running a call in a child process.
enum class Isolated { kReturnedTrue, kReturnedFalse, kCrashed, kHung, kNotIsolated };

// Runs fn in a forked child (where available) with a time limit, so a crash or an endless loop
// in the library becomes a reported failure. fn's bool result is passed back via the exit code.
inline Isolated run_isolated(const std::function<bool()>& fn, unsigned timeout_s = 5) {
#ifdef DT_TEST_HAVE_FORK
  std::fflush(stdout);
  std::fflush(stderr);
  const pid_t pid = fork();
  if (pid == 0) {
    alarm(timeout_s);
    const bool r = fn();
    _exit(r ? 0 : 3);
  }
  if (pid > 0) {
    int st = 0;
    if (waitpid(pid, &st, 0) == pid) {
      if (WIFEXITED(st))
        return WEXITSTATUS(st) == 0 ? Isolated::kReturnedTrue : Isolated::kReturnedFalse;
      if (WIFSIGNALED(st) && WTERMSIG(st) == SIGALRM) return Isolated::kHung;
      return Isolated::kCrashed;
    }
  }
#endif
  return fn() ? Isolated::kReturnedTrue : Isolated::kReturnedFalse;
}

inline const char* isolated_name(Isolated r) {
  switch (r) {
    case Isolated::kReturnedTrue:
      return "returned the expected status";
    case Isolated::kReturnedFalse:
      return "returned an unexpected status";
    case Isolated::kCrashed:
      return "CRASHED";
    case Isolated::kHung:
      return "HUNG";
    default:
      return "?";
  }
}

// fn returns true when the op answered as expected; a crash, hang or wrong answer fails.
#define CHECK_ISOLATED(fn)                                                                    \
  [&](::dt_test::Isolated dt_r_) {                                                            \
    return ::dt_test::record(dt_r_ == ::dt_test::Isolated::kReturnedTrue, __FILE__, __LINE__, \
                             std::string(#fn) + ": " + ::dt_test::isolated_name(dt_r_));      \
  }(::dt_test::run_isolated(fn))

}  // namespace dt_test
