// A tiny assertion helper for the C++ tests (no external framework).
//
// CHECK* macros count failures and print each with file:line and the current context (see
// Context); a test's main() ends with `return dt_test::report("name");`, which prints a summary
// and returns non-zero when anything failed.
#pragma once

#include <cstdio>
#include <sstream>
#include <string>
#include <vector>

#include "difftree/difftree.hpp"

namespace dt_test {

struct Counters {
  long checks = 0;
  long failures = 0;
  std::vector<std::string> context;
};

inline Counters& counters() {
  static Counters c;
  return c;
}

// Failure messages beyond this many are counted but not printed (a broken oracle comparison can
// otherwise flood the log).
constexpr long kMaxPrinted = 60;

inline void fail(const char* file, int line, const std::string& what) {
  Counters& c = counters();
  ++c.failures;
  if (c.failures > kMaxPrinted) return;
  std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", file, line, what.c_str());
  for (const std::string& ctx : c.context) std::fprintf(stderr, "    while: %s\n", ctx.c_str());
  if (c.failures == kMaxPrinted)
    std::fprintf(stderr, "(further failures are counted but not printed)\n");
}

inline bool record(bool ok, const char* file, int line, const std::string& what) {
  ++counters().checks;
  if (!ok) fail(file, line, what);
  return ok;
}

// Pushes a description of what is being tested for the lifetime of the object; printed under
// every failure, e.g. Context ctx("seed " + std::to_string(seed)).
class Context {
 public:
  explicit Context(std::string what) { counters().context.push_back(std::move(what)); }
  ~Context() { counters().context.pop_back(); }
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;
};

template <typename T>
std::string to_str(const T& v) {
  std::ostringstream os;
  os.precision(9);
  os << v;
  return os.str();
}
inline std::string to_str(signed char v) { return std::to_string(static_cast<int>(v)); }
inline std::string to_str(unsigned char v) { return std::to_string(static_cast<int>(v)); }

inline const char* code_name(difftree::StatusCode code) {
  switch (code) {
    case difftree::StatusCode::kOk:
      return "Ok";
    case difftree::StatusCode::kInvalidValue:
      return "InvalidValue";
    case difftree::StatusCode::kInvalidType:
      return "InvalidType";
    case difftree::StatusCode::kUnsupported:
      return "Unsupported";
    case difftree::StatusCode::kInternal:
      return "Internal";
  }
  return "?";
}

inline std::string describe(const difftree::Status& s) {
  return std::string(code_name(s.code())) + (s.message().empty() ? "" : ": " + s.message());
}

// The status has `code` and its message contains `needle` (e.g. the argument's name).
inline bool status_is(const difftree::Status& s, difftree::StatusCode code, const char* needle,
                      const char* file, int line, const char* expr) {
  const bool ok = s.code() == code && s.message().find(needle) != std::string::npos;
  return record(ok, file, line,
                std::string(expr) + " -> " + describe(s) + "; expected " + code_name(code) +
                    " mentioning \"" + needle + "\"");
}

inline int report(const char* name) {
  const Counters& c = counters();
  if (c.failures == 0) {
    std::printf("[%s] all %ld checks passed\n", name, c.checks);
    return 0;
  }
  std::printf("[%s] %ld of %ld checks FAILED\n", name, c.failures, c.checks);
  return 1;
}

}  // namespace dt_test

#define CHECK(cond) ::dt_test::record(static_cast<bool>(cond), __FILE__, __LINE__, #cond)

#define CHECK_EQ(a, b)                                                                            \
  [&](const auto& dt_a_, const auto& dt_b_) {                                                     \
    return ::dt_test::record(dt_a_ == dt_b_, __FILE__, __LINE__,                                  \
                             std::string(#a " == " #b " (") + ::dt_test::to_str(dt_a_) + " vs " + \
                                 ::dt_test::to_str(dt_b_) + ")");                                 \
  }((a), (b))

#define CHECK_OK(expr)                                                                  \
  [&](const ::difftree::Status& dt_s_) {                                                \
    return ::dt_test::record(dt_s_.ok(), __FILE__, __LINE__,                            \
                             std::string(#expr) + " -> " + ::dt_test::describe(dt_s_)); \
  }((expr))

// CHECK_STATUS(op(...), kInvalidValue, "budget"): the code and a substring of the message.
#define CHECK_STATUS(expr, code, needle) \
  ::dt_test::status_is((expr), ::difftree::StatusCode::code, (needle), __FILE__, __LINE__, #expr)
