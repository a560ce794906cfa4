// Status: how every difftree operation reports success or a clear, named error.
#pragma once

#include <string>
#include <utility>

namespace difftree {

// Codes map onto Python exceptions in the bindings (see python/bindings/module.cpp).
enum class StatusCode : int {
  kOk = 0,
  kInvalidValue = 1,  // bad shape, range or data (ValueError)
  kInvalidType = 2,   // bad dtype (TypeError)
  kUnsupported = 3,   // valid request this build cannot serve, e.g. CUDA not compiled
  kInternal = 4,      // a bug or a failed device call
};

class Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status Ok() { return Status(); }
  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

inline Status InvalidValue(std::string msg) { return Status(StatusCode::kInvalidValue, std::move(msg)); }
inline Status InvalidType(std::string msg) { return Status(StatusCode::kInvalidType, std::move(msg)); }
inline Status Unsupported(std::string msg) { return Status(StatusCode::kUnsupported, std::move(msg)); }
inline Status Internal(std::string msg) { return Status(StatusCode::kInternal, std::move(msg)); }

}  // namespace difftree

// Propagates a non-ok Status to the caller.
#define DIFFTREE_RETURN_IF_ERROR(expr)        \
  do {                                        \
    ::difftree::Status _dt_status = (expr);   \
    if (!_dt_status.ok()) return _dt_status;  \
  } while (0)
