// TensorView: a non-owning description of a strided array (what a DLTensor says, in our types).
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>

namespace difftree {

enum class DType : uint8_t {
  kInt32,
  kInt64,
  kUInt8,
  kBool,  // one byte per element
  kFloat32,
  kFloat16,
  kBFloat16,
  kOther,  // anything else: rejected by the ops, but still describable
};

enum class DeviceType : uint8_t { kCPU, kCUDA, kOther };

// Streams cross the public API as void* so no header needs cuda_runtime.h.
using Stream = void*;

constexpr int kMaxDims = 8;

struct TensorView {
  void* data = nullptr;
  DType dtype = DType::kOther;
  DeviceType device = DeviceType::kCPU;
  int device_id = 0;
  int ndim = 0;
  int64_t shape[kMaxDims] = {};
  int64_t strides[kMaxDims] = {};  // in elements

  // The element count, or -1 for a view no op accepts (ndim outside [0, kMaxDims], a negative
  // extent, or a count that overflows int64), so a NULL data pointer never passes as "empty".
  int64_t numel() const {
    if (ndim < 0 || ndim > kMaxDims) return -1;
    for (int i = 0; i < ndim; ++i) {
      if (shape[i] < 0) return -1;
      if (shape[i] == 0) return 0;
    }
    int64_t n = 1;
    for (int i = 0; i < ndim; ++i) {
      if (n > INT64_MAX / shape[i]) return -1;
      n *= shape[i];
    }
    return n;
  }
  bool is_contiguous() const {
    const int64_t n = numel();
    if (n == 0) return true;  // strides of an empty tensor are arbitrary
    if (n < 0) return false;
    int64_t expected = 1;  // a partial product of a count that fits in int64
    for (int i = ndim - 1; i >= 0; --i) {
      if (shape[i] != 1 && strides[i] != expected) return false;
      expected *= shape[i];
    }
    return true;
  }
  template <typename T>
  T* ptr() const {
    return static_cast<T*>(data);
  }
};

// A contiguous CPU view over caller memory; convenient for C++ users and tests. More than
// kMaxDims dims gives a view with that ndim (which every op rejects) and only kMaxDims extents.
TensorView make_view(void* data, DType dtype, std::initializer_list<int64_t> shape,
                     DeviceType device = DeviceType::kCPU, int device_id = 0);

// Row-major strides (in elements) for t's shape, t.ndim in [0, kMaxDims]; products that
// overflow int64 wrap (such a shape is rejected by the ops before any stride is used).
void set_contiguous_strides(TensorView* t);

int dtype_size(DType dtype);
const char* dtype_name(DType dtype);
const char* device_name(DeviceType device);
std::string shape_string(const TensorView& t);

}  // namespace difftree
